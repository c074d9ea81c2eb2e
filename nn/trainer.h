// The trainer: epochs over a BatchSource with SGD and an LR schedule, evaluation, and a
// checkpoint that resumes bit-exactly (weights, buffers, masks, momentum, step).
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/archive.h"
#include "core/batch.h"
#include "nn/execution.h"
#include "nn/model.h"
#include "nn/optim.h"

namespace dnns {

namespace dist {
class GradientReducer;
}

struct TrainConfig {
  int64_t epochs = 160;
  SgdParams sgd{0.1f, 0.9f, 1e-4f, false};
  LrSchedule schedule;  // in iterations; base_lr is taken from here
  float label_smoothing = 0.0f;
  // Data-parallel training (a sharded BatchSource, one shard per MPI rank; nn/distributed.h):
  // batchnorm normalises over the global batch, so N ranks train the model one process
  // trains with the same global batch. Off: each rank normalises its own rows.
  bool sync_batchnorm = true;
  size_t bucket_bytes = size_t(1) << 20;  // gradient allreduce bucket size
  // How masked conv/linear layers train (nn/train_execution.h), planned from the model's
  // masks at the start of every train_epoch.
  Execution train_execution = Execution::Dense;
};

struct StepInfo {
  int64_t epoch = 0, step = 0;          // global step, counted from 0
  int64_t batch = 0, batches = 0;       // position within the epoch
  float loss = 0, lr = 0;
  double epoch_loss = 0, epoch_accuracy = 0;  // running means over the epoch so far
  double images_per_sec = 0;
  double comm_seconds = 0;              // this step's time in communication (0 in one process)
};

struct EpochStats {
  int64_t epoch = 0;
  double loss = 0, accuracy = 0;
  int64_t examples = 0;
  double seconds = 0, images_per_sec = 0;
  int64_t steps = 0;
  double comm_seconds = 0;  // communication time of all its steps (data-parallel training)
  double data_wait_seconds = 0;  // time the steps waited for their batch (the loader's lag)
};

struct EvalStats {
  double loss = 0, accuracy = 0;
  int64_t examples = 0, correct = 0;
};

// Mean loss and accuracy of `m` in eval mode over one pass of `data` (summed over the ranks
// when `data` is sharded). With `confusion`, also the confusion matrix (K, K), K = the model's
// outputs: confusion[t * K + p] counts the examples of true class t predicted as p (the first
// largest logit, as the accuracy counts).
EvalStats evaluate(Model& m, BatchSource& data, float label_smoothing = 0.0f,
                   std::vector<int64_t>* confusion = nullptr);

class Trainer {
 public:
  Trainer(Model& model, TrainConfig cfg);
  ~Trainer();

  int64_t step() const { return step_; }
  void set_step(int64_t s) { step_ = s; }
  Sgd& optimizer() { return sgd_; }
  Model& model() { return model_; }
  const TrainConfig& config() const { return cfg_; }

  // Trains from the current step to the end of its epoch. `on_step` runs after every
  // step; `stop_at` (>= 0) ends the epoch early once that global step is reached (IMP
  // captures its rewind point this way). With a sharded `data` (one shard per MPI rank) every
  // rank trains on its rows of each global batch, the gradients summed over the ranks; the
  // ranks hold the same weights at every step (checked at the end of the call). Throws Error
  // on a non-finite loss (of the global batch: on every rank at once), before the
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
  std::unique_ptr<dist::GradientReducer> reducer_;
};

}  // namespace dnns
