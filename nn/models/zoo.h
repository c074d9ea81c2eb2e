// The model zoo: open_lth's CIFAR definitions (VGG-11/13/16/19, ResNet-20/32/44/56/110)
// plus the common CIFAR ResNet-18, with open_lth's initialisation.
#pragma once
#include <string>
#include <vector>

#include "core/rng.h"
#include "nn/model.h"

namespace dnns {

std::vector<std::string> zoo_names();  // "vgg11", ..., "resnet110", "resnet18"
bool is_zoo_name(const std::string& name);

// Builds the named architecture for images of shape `input_chw` and `num_classes` outputs.
// Parameters are zero until `init_model`. Throws Error on an unknown name.
Model build_model(const std::string& name, int num_classes = 10, const Shape& input_chw = {3, 32, 32});

// open_lth's initialisation: kaiming normal (fan-in, gain sqrt 2) for conv and linear
// weights; PyTorch's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for their biases; batchnorm
// gamma ~ U[0, 1), beta = 0; running statistics reset to (0, 1).
void init_model(Model& m, Rng& rng);

}  // namespace dnns
