#include <cstdio>

#include "apps/cifar_prune/chains.h"
#include "apps/cifar_prune/commands.h"
#include "apps/cifar_prune/common.h"
#include "core/error.h"
#include "core/fs.h"
#include "core/json.h"
#include "prune/imp.h"

namespace dnns::app {

namespace {

// The run's identity for prepare_run_dir: every flag that changes the result of some level.
// --levels and --random-baseline only say how far the run goes, so a finished run can be
// extended with --resume and more levels or the random chain (they are recorded in imp.json).
// --seeds and --chain-groups say which runs a job makes and where: one chain of them is the run
// `imp --seed S` makes alone. --train-execution changes float rounding only (as --threads does).
std::string imp_identity_json(const Flags& f) {
  Json j;
  j.add("command", "imp");
  for (const auto& [k, v] : f.values())
    if (k != "threads" && k != "resume" && k != "out" && k != "device" && k != "levels" && k != "random-baseline" &&
        k != "seeds" && k != "chain-groups" && k != "train-execution")
      j.add(k, v);
  return j.str();
}

// One IMP run (or one chain of several) into --out, on this rank's group of ranks.
std::vector<LevelRecord> imp_run(const Flags& f, const std::string& label, ImpPart part) {
  Device dev = setup_system(f);
  const std::string out = f.str("out");

  ImpOptions opt;
  const int64_t levels = f.integer("levels");
  check(levels >= 0 && levels <= 1000, "--levels must be between 0 and 1000, got " + std::to_string(levels));
  opt.levels = static_cast<int>(levels);
  opt.prune_fraction = f.number("prune-fraction");
  check(opt.prune_fraction > 0 && opt.prune_fraction < 1,
        "--prune-fraction must be in (0, 1), got " + f.str("prune-fraction"));
  opt.strategy = parse_prune_strategy(f.str("prune-strategy"));
  opt.random_baseline = f.flag("random-baseline");
  opt.seed = static_cast<uint64_t>(f.integer("seed"));
  opt.resume = f.flag("resume");
  opt.label = label;
  opt.part = part;

  DataPair data = load_data(f, /*shard_over_ranks=*/true);
  std::fprintf(stderr, "%sdata: %s\n", label.c_str(), data.description.c_str());
  TrainConfig cfg = training_config(f, data.train->batches_per_epoch());
  Model model = make_model(f, data);
  opt.ignore = parse_prune_ignore(f.str("prune-ignore"), model.arch);
  check_prune_ignore(model, opt.ignore);
  opt.rewind_step = f.str("rewind-step") == "auto" ? default_rewind_step(model.arch) : f.integer("rewind-step");
  const int64_t total = cfg.epochs * data.train->batches_per_epoch();
  check(opt.rewind_step >= 0 && opt.rewind_step < total,
        "--rewind-step " + std::to_string(opt.rewind_step) + (f.str("rewind-step") == "auto" ? " (the default for " + model.arch + ")" : std::string()) +
            " is not before the end of training (" + std::to_string(cfg.epochs) + " epochs x " +
            std::to_string(data.train->batches_per_epoch()) + " batches = " + std::to_string(total) +
            " steps); pass a smaller --rewind-step or train longer");
  model.to(dev);
  if (part == ImpPart::RandomOnly) {
    // The magnitude part (another group of ranks, or earlier in this one) makes the folder; the
    // random part joins it, as a resumed run of the same settings.
    wait_for_file(out + "/hparams.json", label + "the random chain");
    opt.resume = true;
  }
  prepare_run_dir(out, imp_identity_json(f), opt.resume, f);
  std::fprintf(stderr, "%smodel: %s, %lld parameters, device %s; %d levels, rewind to step %lld of %lld\n",
               label.c_str(), f.str("model").c_str(), (long long)model.num_params(), device_name(dev), opt.levels,
               (long long)opt.rewind_step, (long long)total);
  return run_imp(model, cfg, *data.train, *data.test, out, opt);
}

}  // namespace

int cmd_imp(int argc, char** argv) {
  Flags f("cifar_prune imp",
          "Iterative magnitude pruning with weight rewinding (lottery tickets, open_lth's protocol).\n"
          "Level 0 trains the dense network and keeps its state at iteration --rewind-step K. Each level\n"
          "L = 1..--levels removes --prune-fraction of the surviving conv and linear weights with the\n"
          "smallest |w| (globally or per layer), rewinds the survivors, batchnorm state, LR schedule and\n"
          "data order to iteration K, and retrains with a fresh optimizer to the end of the schedule.\n"
          "--random-baseline also runs a chain that prunes the same number of weights per layer at random.\n"
          "\n"
          "--out holds hparams.json, imp.json, rewind.dnns, level_L/ (model.dnns with its mask,\n"
          "sparsity.json/.txt, metrics.json, log.jsonl), random/level_L/, levels.csv, report.md and\n"
          "accuracy_vs_sparsity.svg. --resume continues an interrupted run from the last finished epoch\n"
          "of the level in progress, and extends a finished run given more --levels or --random-baseline.\n"
          "\n"
          "--seeds S1,S2,... runs one independent chain per seed instead (each the run `imp --seed S`\n"
          "makes alone), in --out/seed_S/, and writes chains.csv and chains.md (test accuracy per level\n"
          "per chain) into --out. Under mpirun the chains are spread over --chain-groups groups of ranks,\n"
          "each training its chains one after the other, data-parallel over its ranks.");
  add_training_flags(f);
  add_train_execution_flag(f);
  add_system_flags(f);
  f.add("levels", "20", "pruning levels after the dense level 0 (0.8^20 = 1.2% of weights remain)");
  f.add("rewind-step", "auto", "iteration K the survivors are rewound to (auto: 2000 for VGG, 500 for ResNets)");
  f.add("prune-fraction", "0.2", "fraction of the surviving weights removed at each level");
  f.add("prune-strategy", "global", "global (one ranking over all layers) or layerwise (each layer by itself)");
  f.add("prune-ignore", "auto", "layers kept dense, comma-separated node or weight names; auto: 'fc' for VGG, "
                                "none for ResNets; 'none' prunes every conv and linear layer");
  f.add_bool("random-baseline", "also run the random-pruning chain (same counts per layer, random survivors)");
  f.add("out", "runs/imp", "run directory");
  f.add_bool("resume", "continue (or extend) the run in --out");
  add_chain_flags(f);
  if (!f.parse(argc, argv)) return 0;
  if (!f.str("seeds").empty()) return run_chains(f, imp_run);
  const std::string out = f.str("out");
  std::vector<LevelRecord> records = imp_run(f, "", ImpPart::Both);
  std::printf("\n%s\nresults in %s (report.md, levels.csv, accuracy_vs_sparsity.svg)\n",
              levels_markdown(records).c_str(), out.c_str());
  return 0;
}

}  // namespace dnns::app
