// A training run on disk: trains to a target step, evaluating after every epoch, writing
// one JSON line per epoch and a checkpoint per epoch (atomically), so that an interrupted
// run resumes from its last finished epoch. Used by `cifar_prune train` and by every IMP level.
#pragma once
#include <cstdint>
#include <functional>
#include <string>

#include "core/batch.h"
#include "nn/trainer.h"

namespace dnns {

struct RunOptions {
  std::string checkpoint_path;  // written after every epoch ("" = none)
  std::string log_path;         // JSON lines, one per epoch ("" = none)
  std::string label;            // shown in progress lines and logs ("train", "level 3")
  int64_t total_steps = 0;      // train until the trainer reaches this step
  // Optional snapshot of the full training state at one step (IMP's rewind point), written
  // once when the run passes `capture_step` (a step already passed is not captured again).
  int64_t capture_step = -1;
  std::string capture_path;
  bool progress = true;         // progress line on stderr
};

struct RunResult {
  EvalStats test;               // after the last epoch
  double train_loss = 0, train_accuracy = 0;  // of the last epoch (none ran: the log's last line)
  double seconds = 0;           // wall time of this call
  int64_t epochs_run = 0;
};

RunResult run_training(Trainer& trainer, BatchSource& train, BatchSource& test, const RunOptions& opt);

}  // namespace dnns
