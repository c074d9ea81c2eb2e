// Shared plumbing of the cifar_prune subcommands: data, model and hyper-parameter flags,
// and run-directory bookkeeping.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "core/cli.h"
#include "datasets/dataset.h"
#include "datasets/loader.h"
#include "nn/models/zoo.h"
#include "nn/trainer.h"

namespace dnns::app {

// Declares --data, --model, --epochs, --batch-size, --lr, ... (the training flags).
void add_training_flags(Flags& f);
void add_system_flags(Flags& f);  // --threads, --device, --seed
// Applies --threads; returns the device.
Device setup_system(const Flags& f);

struct DataPair {
  std::unique_ptr<Loader> train, test;
  std::string description;
  DataInfo info;  // what training records in the model file (data set, classes, normalisation)
};
// Loads --data (train and test splits, with --train-subset/--test-subset) into loaders.
// `shard_over_ranks` (train, imp): under mpirun each rank's loaders yield its shard of every
// global batch; otherwise every rank reads whole batches.
DataPair load_data(const Flags& f, bool shard_over_ranks = false);

// --train-execution dense|sparse|auto (nn/train_execution.h), for the commands that train;
// training_config reads it where it is declared (dense elsewhere).
void add_train_execution_flag(Flags& f);
TrainConfig training_config(const Flags& f, int64_t batches_per_epoch);
// Built for the data's input shape and classes, initialised from --seed, data.info recorded.
Model make_model(const Flags& f, const DataPair& data);

// --mean / --std: an input normalisation given on the command line (a model trained elsewhere,
// or one whose recorded statistics should be overridden). Declares the flags.
void add_normalization_flags(Flags& f);
// True with `out` set when --mean and --std were given (both, `channels` values each, std > 0);
// throws Error naming the flag otherwise; false when neither was given.
bool normalization_from_flags(const Flags& f, int channels, ChannelStats* out);

// The input normalisation eval and predict give a model file's inputs, and where it came from.
struct InputNormalization {
  ChannelStats stats;
  std::string source;    // "given by --mean/--std", "recorded in the model file", or "assumed: ..."
  bool assumed = false;  // neither given nor recorded: say so (stderr, JSON)
};
// --mean/--std when given; else what the model file records; else (a file written before it was
// recorded) the per-channel statistics of the training split of `data_spec` (--data, or the data
// set the file records), as `cifar_prune train` computes them: `train_split` when the caller
// holds that split already, else loaded with `dopt`; else, with no data set named at all, those
// of CIFAR-10 (3 channels) or Fashion-MNIST (1 channel), the same numbers for those two.
InputNormalization input_normalization(const Flags& f, const Model& model, const std::string& data_spec,
                                       const DatasetOptions& dopt, const Dataset* train_split = nullptr);

// The items of a comma-separated list flag, in order; empty items kept ("a,,b" has three, "" none).
std::vector<std::string> split_list(const std::string& s);

// The portfolio's levels as `flag` (portfolio --levels, run --portfolio-levels) gives them:
// "auto" (empty: the default choice) or comma-separated levels >= 0, none twice; throws Error
// naming the flag otherwise.
std::vector<int> parse_portfolio_levels(const std::string& s, const std::string& flag);

// The hyper-parameters that define a run, as JSON; a resumed run must have the same.
std::string hparams_json(const Flags& f, const std::string& command);
// Creates `dir` for a new run, or checks it belongs to the same run when resuming. Refuses
// to touch a folder holding a different or a finished run unless told so.
// A run stored with fewer flags (made before some flag existed) is the same run when each flag
// it lacks holds its default now: `f` gives those defaults.
void prepare_run_dir(const std::string& dir, const std::string& hparams, bool resume, const Flags& f);

}  // namespace dnns::app
