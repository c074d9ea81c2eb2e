// Iterative magnitude pruning with weight rewinding (Frankle et al.; open_lth's lottery
// branch, the sparse models DNNShifter starts from).
//
//   level 0: train the dense network to the end of the schedule, keeping its full training
//            state at iteration K (the rewind point: weights, batchnorm parameters and running
//            statistics, step).
//   level L = 1..N: prune `fraction` of the surviving weights from level L-1's final weights
//            (prune/magnitude.h), rewind the survivors, the batchnorm parameters and
//            statistics, the LR schedule and the data order to iteration K, start a fresh
//            optimizer (no momentum carried over), and retrain to the end of the schedule.
//   random baseline (optional): a second chain whose level L keeps, layer by layer, as many
//            weights as magnitude level L, chosen at random among random level L-1's
//            survivors; rewound and retrained the same way.
//
// The run directory explains itself and resumes:
//   hparams.json            the run's identity (written by the caller, see prepare_run_dir)
//   imp.json                the resolved IMP settings (levels, K, fraction, ignore list, ...)
//   rewind.dnns             the training checkpoint at iteration K
//   level_L/                model.dnns (final weights with the mask inside), sparsity.json,
//                           sparsity.txt, log.jsonl (one line per epoch), metrics.json (written
//                           last, atomically: its presence marks the level finished) and
//                           checkpoint.dnns while the level is in progress
//   random/level_L/         the same for the random chain (L >= 1; level 0 is shared)
//   levels.csv, report.md, accuracy_vs_sparsity.svg   the results of every finished level
//
// Resuming skips finished levels and continues the level in progress from its last finished
// epoch; the result is bit-identical to an uninterrupted run. Resuming a finished run with a
// larger number of levels (or with the random baseline added) extends it.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/archive.h"
#include "core/batch.h"
#include "nn/model.h"
#include "nn/trainer.h"
#include "prune/magnitude.h"
#include "prune/mask.h"
#include "prune/report.h"

namespace dnns {

// Which chains of a run this process trains. Both: the magnitude chain and, with
// random_baseline, the random chain, level by level. MagnitudeOnly / RandomOnly split one run
// (with random_baseline) between two groups of ranks working on the same folder at once
// (cifar_prune imp --seeds): the random part waits for each magnitude level it needs (its
// metrics.json, polled without spinning), and alone writes the reports (levels.csv, report.md,
// the plot) once every level of both chains is there. Each level's result is the same as with
// Both.
enum class ImpPart { Both, MagnitudeOnly, RandomOnly };

struct ImpOptions {
  int levels = 20;                 // pruning levels after the dense level 0
  int64_t rewind_step = 0;         // K: the iteration survivors are rewound to (< total steps)
  double prune_fraction = 0.2;     // of the surviving weights, per level
  PruneStrategy strategy = PruneStrategy::Global;
  std::vector<std::string> ignore; // prunable layers kept dense (node or weight names)
  bool random_baseline = false;    // also run the random-pruning chain
  uint64_t seed = 1;               // draws of the random baseline
  bool resume = false;             // continue the run found in the directory
  bool progress = true;            // progress lines on stderr
  std::string label;               // put before the progress lines' level names ("seed 2: ")
  ImpPart part = ImpPart::Both;     // RandomOnly needs random_baseline
};

// open_lth's rewind points, as DNNShifter uses them: 2000 iterations for VGG, 500 for ResNets.
// Throws Error for another architecture (pass the step explicitly).
int64_t default_rewind_step(const std::string& arch);

// Where a level lives: "<out>/level_L" (chain "magnitude") or "<out>/random/level_L".
std::string imp_level_dir(const std::string& out, const std::string& chain, int level);

// Rewinds `trainer` to a rewind point and installs a mask: the model takes every weight,
// batchnorm parameter and running statistic of `rewind_point` (a training checkpoint, kind
// "checkpoint"), the trainer its step, the optimizer starts afresh (no momentum), and the
// pruned weights are zeroed. Throws Error (naming `where`) on a checkpoint of another graph.
void rewind_to(Trainer& trainer, const Archive& rewind_point, const MaskSet& masks, const std::string& where);

// Runs or resumes IMP in `out` (created if missing). `initial`: the initialised dense network
// on the device to train on. `cfg`: the training of every level (the schedule's length is
// cfg.epochs x train.batches_per_epoch()). Returns the records of every level, both chains,
// and writes the reports (with ImpPart::MagnitudeOnly: the magnitude levels, and no reports).
// Throws Error when `out` already holds levels and opt.resume is not set, when the rewind step is
// not before the end of training, or on an inconsistent folder.
std::vector<LevelRecord> run_imp(const Model& initial, const TrainConfig& cfg, BatchSource& train, BatchSource& test,
                                 const std::string& out, const ImpOptions& opt);

}  // namespace dnns
