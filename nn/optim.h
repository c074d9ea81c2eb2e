// SGD with momentum (PyTorch semantics) and learning-rate schedules measured in iterations.
#pragma once
#include <map>
#include <string>
#include <vector>

#include "core/archive.h"
#include "kernels/params.h"
#include "nn/model.h"

namespace dnns {

// lr(step) = base_lr * warmup(step) * decay(step)
//   warmup: step / warmup_steps while step < warmup_steps, else 1 (open_lth's linear warm-up)
//   decay:  multistep: gamma ^ (number of milestones <= step)
//           cosine:    0.5 * (1 + cos(pi * step / total_steps))
//           constant:  1
struct LrSchedule {
  enum class Kind { Constant, MultiStep, Cosine };
  Kind kind = Kind::MultiStep;
  float base_lr = 0.1f;
  std::vector<int64_t> milestones;  // iterations
  float gamma = 0.1f;
  int64_t total_steps = 0;          // cosine only
  int64_t warmup_steps = 0;
  float lr_at(int64_t step) const;
};

class Sgd {
 public:
  explicit Sgd(SgdParams hyper) : hyper_(hyper) {}
  // One update of every parameter from its gradient with learning rate `lr`. Masked weights
  // get masked gradients first and are re-masked after, so they stay exactly zero.
  void step(Model& m, float lr);
  void reset() { buffers_.clear(); }  // a fresh optimizer (IMP starts one per level)
  const SgdParams& hyper() const { return hyper_; }
  // Momentum buffers go into / come out of a checkpoint as "optim:<param name>".
  void save_to(Archive& a) const;
  void load_from(const Archive& a, Model& m, const std::string& where);

 private:
  SgdParams hyper_;
  std::map<std::string, Tensor> buffers_;
};

}  // namespace dnns
