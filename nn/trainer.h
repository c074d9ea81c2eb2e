// The trainer: epochs over a BatchSource with SGD and an LR schedule, evaluation, and a
// checkpoint that resumes bit-exactly (weights, buffers, masks, momentum, step).
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/archive.h"
#include "core/batch.h"
#include "nn/model.h"
#include "nn/optim.h"

namespace dnns {

struct TrainConfig {
  int64_t epochs = 160;
  SgdParams sgd{0.1f, 0.9f, 1e-4f, false};
  LrSchedule schedule;  // in iterations; base_lr is taken from here
  float label_smoothing = 0.0f;
};

struct StepInfo {
  int64_t epoch = 0, step = 0;          // global step, counted from 0
  int64_t batch = 0, batches = 0;       // position within the epoch
  float loss = 0, lr = 0;
  double epoch_loss = 0, epoch_accuracy = 0;  // running means over the epoch so far
  double images_per_sec = 0;
};

struct EpochStats {
  int64_t epoch = 0;
  double loss = 0, accuracy = 0;
  int64_t examples = 0;
  double seconds = 0, images_per_sec = 0;
};

struct EvalStats {
  double loss = 0, accuracy = 0;
  int64_t examples = 0, correct = 0;
};

// Mean loss and accuracy of `m` in eval mode over one pass of `data`. With `confusion`, also
// the confusion matrix (K, K), K = the model's outputs: confusion[t * K + p] counts the
// examples of true class t predicted as p (the first largest logit, as the accuracy counts).
EvalStats evaluate(Model& m, BatchSource& data, float label_smoothing = 0.0f,
                   std::vector<int64_t>* confusion = nullptr);

class Trainer {
 public:
  Trainer(Model& model, TrainConfig cfg);

  int64_t step() const { return step_; }
  void set_step(int64_t s) { step_ = s; }
  Sgd& optimizer() { return sgd_; }
  Model& model() { return model_; }
  const TrainConfig& config() const { return cfg_; }

  // Trains from the current step to the end of its epoch. `on_step` runs after every
  // step; `stop_at` (>= 0) ends the epoch early once that global step is reached (IMP
  // captures its rewind point this way). Throws Error on a non-finite loss, before the
  // optimizer step (the batchnorm running statistics have seen that batch already: reload
  // the last checkpoint to go on).
  EpochStats train_epoch(BatchSource& data, const std::function<void(const StepInfo&)>& on_step = {},
                         int64_t stop_at = -1);

  // The whole training state as an archive (kind "checkpoint") and back.
  Archive checkpoint() const;
  void restore(const Archive& a, const std::string& where);
  void save_checkpoint(const std::string& path) const { save_archive(path, checkpoint()); }
  void load_checkpoint(const std::string& path);

 private:
  Model& model_;
  TrainConfig cfg_;
  Sgd sgd_;
  int64_t step_ = 0;
};

}  // namespace dnns
