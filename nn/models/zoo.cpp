#include "nn/models/zoo.h"

#include <cmath>

#include "core/error.h"

namespace dnns {

namespace {

const std::vector<std::string> kNames = {"vgg11",    "vgg13",    "vgg16",    "vgg19",     "resnet20", "resnet32",
                                         "resnet44", "resnet56", "resnet110", "resnet18"};

// VGG plans from open_lth (models/cifar_vgg.py): numbers are conv widths, 0 a 2x2 max-pool.
std::vector<int> vgg_plan(int depth) {
  switch (depth) {
    case 11: return {64, 0, 128, 0, 256, 256, 0, 512, 512, 0, 512, 512};
    case 13: return {64, 64, 0, 128, 128, 0, 256, 256, 0, 512, 512, 0, 512, 512};
    case 16: return {64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512};
    case 19: return {64, 64, 0, 128, 128, 0, 256, 256, 256, 256, 0, 512, 512, 512, 512, 0, 512, 512, 512, 512};
  }
  throw Error("no VGG of depth " + std::to_string(depth));
}

std::unique_ptr<Layer> conv3x3(int in, int out, int stride, bool bias) {
  return std::make_unique<Conv2d>(in, out, 3, 3, stride, 1, bias);
}

Model build_vgg(int depth, int classes, const Shape& chw) {
  Model m;
  int x = m.add_input(chw);
  int channels = static_cast<int>(chw[0]);
  int64_t size = chw[1];
  int conv_i = 0, pool_i = 0;
  for (int width : vgg_plan(depth)) {
    if (width == 0) {
      x = m.add("pool" + std::to_string(pool_i++), std::make_unique<Pool2d>(true, 2, 2), {x});
      size /= 2;
      continue;
    }
    std::string p = "conv" + std::to_string(conv_i++);
    x = m.add(p, conv3x3(channels, width, 1, true), {x});
    x = m.add(p + ".bn", std::make_unique<BatchNorm2d>(width), {x});
    x = m.add(p + ".relu", std::make_unique<ReLU>(), {x});
    channels = width;
  }
  // open_lth ends with AvgPool2d(2) on the 2x2 map of a 32x32 input; other input sizes
  // average the whole final map instead (the same thing when the map is 2x2).
  if (size == 2 && chw[1] == chw[2]) {
    x = m.add("avgpool", std::make_unique<Pool2d>(false, 2, 2), {x});
    x = m.add("flatten", std::make_unique<Flatten>(), {x});
  } else {
    x = m.add("avgpool", std::make_unique<GlobalAvgPool>(), {x});
  }
  m.add("fc", std::make_unique<Linear>(channels, classes, true), {x});
  m.arch = "vgg" + std::to_string(depth);
  return m;
}

// A basic block: conv3x3(stride) bn relu conv3x3 bn, plus the shortcut, then add and relu.
// The shortcut is a 1x1 conv + bn when the shape changes, the identity otherwise.
int basic_block(Model& m, const std::string& p, int x, int in, int out, int stride) {
  int y = m.add(p + ".conv1", conv3x3(in, out, stride, false), {x});
  y = m.add(p + ".bn1", std::make_unique<BatchNorm2d>(out), {y});
  y = m.add(p + ".relu1", std::make_unique<ReLU>(), {y});
  y = m.add(p + ".conv2", conv3x3(out, out, 1, false), {y});
  y = m.add(p + ".bn2", std::make_unique<BatchNorm2d>(out), {y});
  int s = x;
  if (stride != 1 || in != out) {
    s = m.add(p + ".shortcut.conv", std::make_unique<Conv2d>(in, out, 1, 1, stride, 0, false), {x});
    s = m.add(p + ".shortcut.bn", std::make_unique<BatchNorm2d>(out), {s});
  }
  y = m.add(p + ".add", std::make_unique<Add>(), {y, s});
  return m.add(p + ".relu2", std::make_unique<ReLU>(), {y});
}

// open_lth models/cifar_resnet.py: depth 6n+2, stages of n blocks with widths 16, 32, 64.
Model build_cifar_resnet(int depth, int classes, const Shape& chw) {
  check((depth - 2) % 6 == 0 && depth >= 8, "resnet depth must be 6n+2, got " + std::to_string(depth));
  int n = (depth - 2) / 6;
  Model m;
  int x = m.add_input(chw);
  x = m.add("conv", conv3x3(static_cast<int>(chw[0]), 16, 1, false), {x});
  x = m.add("bn", std::make_unique<BatchNorm2d>(16), {x});
  x = m.add("relu", std::make_unique<ReLU>(), {x});
  int in = 16, block = 0;
  for (int stage = 0; stage < 3; ++stage) {
    int width = 16 << stage;
    for (int b = 0; b < n; ++b) {
      int stride = (stage > 0 && b == 0) ? 2 : 1;
      x = basic_block(m, "blocks." + std::to_string(block++), x, in, width, stride);
      in = width;
    }
  }
  x = m.add("pool", std::make_unique<GlobalAvgPool>(), {x});
  m.add("fc", std::make_unique<Linear>(in, classes, true), {x});
  m.arch = "resnet" + std::to_string(depth);
  return m;
}

// The common CIFAR ResNet-18: 64-wide 3x3 stem, four stages of two blocks (64, 128, 256,
// 512; strides 1, 2, 2, 2), global average pool, linear.
Model build_resnet18(int classes, const Shape& chw) {
  Model m;
  int x = m.add_input(chw);
  x = m.add("conv", conv3x3(static_cast<int>(chw[0]), 64, 1, false), {x});
  x = m.add("bn", std::make_unique<BatchNorm2d>(64), {x});
  x = m.add("relu", std::make_unique<ReLU>(), {x});
  int in = 64, block = 0;
  for (int stage = 0; stage < 4; ++stage) {
    int width = 64 << stage;
    for (int b = 0; b < 2; ++b) {
      int stride = (stage > 0 && b == 0) ? 2 : 1;
      x = basic_block(m, "blocks." + std::to_string(block++), x, in, width, stride);
      in = width;
    }
  }
  x = m.add("pool", std::make_unique<GlobalAvgPool>(), {x});
  m.add("fc", std::make_unique<Linear>(in, classes, true), {x});
  m.arch = "resnet18";
  return m;
}

}  // namespace

std::vector<std::string> zoo_names() { return kNames; }

bool is_zoo_name(const std::string& name) {
  for (const auto& n : kNames)
    if (n == name) return true;
  return false;
}

Model build_model(const std::string& name, int num_classes, const Shape& chw) {
  check(num_classes > 0, "build_model: num_classes must be positive");
  check(chw.size() == 3, "build_model: input shape must be (C, H, W)");
  Model m;
  if (name == "resnet18") m = build_resnet18(num_classes, chw);
  else if (name.rfind("vgg", 0) == 0 && is_zoo_name(name)) m = build_vgg(std::stoi(name.substr(3)), num_classes, chw);
  else if (name.rfind("resnet", 0) == 0 && is_zoo_name(name))
    m = build_cifar_resnet(std::stoi(name.substr(6)), num_classes, chw);
  else {
    std::string all;
    for (const auto& n : kNames) all += (all.empty() ? "" : ", ") + n;
    throw Error("unknown model '" + name + "' (the zoo has: " + all + ")");
  }
  m.infer_shapes(1);  // fails here, with the node's name, if the input is too small
  return m;
}

void init_model(Model& m, Rng& rng) {
  for (Node& n : m.nodes()) {
    if (!n.layer) continue;
    Layer& l = *n.layer;
    Param* w = nullptr;
    Param* b = nullptr;
    int64_t fan_in = 0;
    if (auto* c = dynamic_cast<Conv2d*>(&l)) {
      w = &c->weight, b = c->has_bias ? &c->bias : nullptr;
      fan_in = int64_t(c->in_channels) * c->kernel_h * c->kernel_w;
    } else if (auto* f = dynamic_cast<Linear*>(&l)) {
      w = &f->weight, b = f->has_bias ? &f->bias : nullptr;
      fan_in = f->in_features;
    } else if (auto* bn = dynamic_cast<BatchNorm2d*>(&l)) {
      Tensor g({bn->channels}), z({bn->channels}), one = Tensor::full({bn->channels}, 1.0f);
      for (int i = 0; i < bn->channels; ++i) g[i] = rng.uniform();
      bn->gamma.value.copy_from(g);
      bn->beta.value.copy_from(z);
      bn->running_mean.copy_from(z);
      bn->running_var.copy_from(one);
      continue;
    }
    if (!w) continue;
    Tensor host(w->value.shape());
    float stddev = fan_in > 0 ? std::sqrt(2.0f / static_cast<float>(fan_in)) : 0.0f;
    for (int64_t i = 0; i < host.numel(); ++i) host[i] = rng.normal() * stddev;
    w->value.copy_from(host);
    if (b) {
      Tensor hb(b->value.shape());
      float bound = fan_in > 0 ? 1.0f / std::sqrt(static_cast<float>(fan_in)) : 0.0f;
      for (int64_t i = 0; i < hb.numel(); ++i) hb[i] = rng.uniform(-bound, bound);
      b->value.copy_from(hb);
    }
  }
}

}  // namespace dnns
