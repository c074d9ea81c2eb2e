#include "nn/optim.h"

#include <cmath>

#include "core/error.h"
#include "kernels/ops.h"

namespace dnns {

float LrSchedule::lr_at(int64_t step) const {
  double lr = base_lr;
  if (warmup_steps > 0 && step < warmup_steps) lr *= static_cast<double>(step) / warmup_steps;
  switch (kind) {
    case Kind::Constant: break;
    case Kind::MultiStep:
      for (int64_t m : milestones)
        if (step >= m) lr *= gamma;
      break;
    case Kind::Cosine:
      if (total_steps > 0) {
        double t = std::min<double>(1.0, static_cast<double>(step) / total_steps);
        lr *= 0.5 * (1.0 + std::cos(3.14159265358979323846 * t));
      }
      break;
  }
  return static_cast<float>(lr);
}

void Sgd::step(Model& m, float lr) {
  check(std::isfinite(lr) && lr >= 0.0f, "sgd: learning rate must be finite and >= 0, got " + std::to_string(lr));
  m.apply_masks_to_grads();
  SgdParams p = hyper_;
  p.lr = lr;
  for (auto& np : m.params()) {
    Param& prm = *np.param;
    check(prm.grad.defined(), "sgd: parameter '" + np.name + "' has no gradient (no backward before step?)");
    Tensor& buf = buffers_[np.name];
    if (!buf.defined() || buf.device() != prm.value.device()) buf = Tensor::zeros(prm.value.shape(), prm.value.device());
    ops::sgd_update(p, prm.value, prm.grad, buf);
  }
  m.apply_masks();
}

void Sgd::save_to(Archive& a) const {
  for (const auto& [name, buf] : buffers_) a.tensors["optim:" + name] = buf.is_cpu() ? buf : buf.to(Device::CPU);
}

void Sgd::load_from(const Archive& a, Model& m, const std::string& where) {
  buffers_.clear();
  for (auto& np : m.params()) {
    auto it = a.tensors.find("optim:" + np.name);
    if (it == a.tensors.end()) continue;  // not yet stepped when saved
    check(it->second.shape() == np.param->value.shape(),
          where + ": momentum buffer of '" + np.name + "' has shape " + shape_str(it->second.shape()));
    buffers_[np.name] = it->second.to(m.device());
  }
}

}  // namespace dnns
