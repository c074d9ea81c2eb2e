// cifar_prune portfolio: the compact variants of an IMP run, verified and measured, as a folder
// the shifter loads (prune/portfolio.h).
#include <cstdio>
#include <vector>

#include "apps/cifar_prune/commands.h"
#include "apps/cifar_prune/common.h"
#include "core/error.h"
#include "core/fs.h"
#include "core/threading.h"
#include "prune/portfolio.h"
#include "prune/report.h"
#include "prune/shifter.h"

namespace dnns::app {

namespace {

void declare(Flags& f) {
  add_training_flags(f);
  add_system_flags(f);
  f.add("run", "", "the IMP run folder (cifar_prune imp --out)");
  f.add("out", "", "portfolio folder (default: <run>/portfolio)");
  f.add("levels", "auto", "levels to include, comma-separated (auto: 0 and the level nearest each compression "
                          "2x, 4x, ..., 256x of the parameter count)");
  f.add("chain", "magnitude", "magnitude or random (the IMP chain to take levels from)");
  f.add("latency-batch", "32", "the second batch size latency and memory are measured at (besides 1)");
  f.add("latency-runs", "50", "timed calls at batch 1 per variant (after 3 warm-up calls)");
  f.add("latency-batch-runs", "10", "timed calls at --latency-batch per variant");
  f.add("verify-images", "256", "test images on which compact and masked logits must agree");
  f.add("logit-tolerance", "1e-4", "largest |logit difference| accepted, relative to max(1, max |logit|)");
  f.add("execution", "auto",
        "how latencies are measured: dense, sparse, or auto (each conv/linear layer dense or sparse, whichever "
        "measures faster here at that batch)");
}

}  // namespace

int cmd_portfolio(int argc, char** argv) {
  const char* summary =
      "Builds the portfolio of an IMP run: each chosen level is compacted (exact structural compaction),\n"
      "checked against its masked model on test images (refused if the logits differ beyond\n"
      "--logit-tolerance or a prediction changes), and measured: test accuracy, parameters, file size,\n"
      "FLOPs, latency p50/p99 at batch 1 and --latency-batch on this machine (each conv/linear layer run\n"
      "dense or sparse as --execution says; auto: whichever measured faster), working memory of one\n"
      "inference (computed from the graph: parameters + peak live activations + conv workspace).\n"
      "--out gets level_L.dnns per variant, manifest.json (checksums, all metadata; loaded by `shifter`),\n"
      "portfolio.md (the table) and front.svg (latency vs accuracy).\n"
      "The data flags default to the run's hparams.json, so accuracy is measured on the run's test set\n"
      "with its normalisation.";
  Flags f("cifar_prune portfolio", summary);
  declare(f);
  if (!f.parse(argc, argv)) return 0;
  const std::string run = f.str("run");
  check(!run.empty(), "cifar_prune portfolio: --run is required (an IMP run folder)");

  // Flags not given on the command line take the run's values (data, subsets, seed, ...).
  const std::string hp_path = run + "/hparams.json";
  if (file_exists(hp_path)) {
    for (const auto& [key, value] : parse_flat_json(read_text(hp_path), hp_path))
      if (f.values().count(key) && key != "run" && key != "out") f.set_default(key, value);
  } else {
    std::fprintf(stderr, "portfolio: %s not found; the data flags keep their defaults\n", hp_path.c_str());
  }
  setup_system(f);

  PortfolioOptions opt;
  opt.levels = parse_portfolio_levels(f.str("levels"), "--levels");
  opt.chain = f.str("chain");
  opt.latency_batch = f.integer("latency-batch");
  opt.latency_runs = static_cast<int>(f.integer("latency-runs"));
  opt.latency_batch_runs = static_cast<int>(f.integer("latency-batch-runs"));
  opt.verify_images = f.integer("verify-images");
  opt.logit_tolerance = static_cast<float>(f.number("logit-tolerance"));
  opt.execution = parse_execution(f.str("execution"));
  check(opt.latency_batch > 0 && opt.latency_runs > 0 && opt.latency_batch_runs > 0,
        "--latency-batch, --latency-runs and --latency-batch-runs must be positive");
  check(opt.verify_images >= 0 && opt.logit_tolerance >= 0, "--verify-images and --logit-tolerance must be >= 0");
  const std::string out = f.str("out").empty() ? run + "/portfolio" : f.str("out");

  DataPair data = load_data(f);
  std::fprintf(stderr, "data: %s\n", data.description.c_str());
  const ChannelStats& stats = data.test->stats();
  opt.normalize_mean.assign(stats.mean.begin(), stats.mean.end());
  opt.normalize_std.assign(stats.std.begin(), stats.std.end());
  opt.data = f.str("data");
  std::fprintf(stderr, "portfolio: %s -> %s, %d threads on %s\n", run.c_str(), out.c_str(), num_threads(),
               cpu_model_name().c_str());

  Portfolio p = build_portfolio(run, out, *data.test, opt);
  write_text_atomic(out + "/portfolio.md", portfolio_table(p));
  write_text_atomic(out + "/front.svg", portfolio_front_svg(p, {}, LatencyBasis::Batch1, LatencyStat::P50));
  std::printf("\n%s\n%zu variants of %s (%lld parameters dense) in %s/manifest.json\n", portfolio_table(p).c_str(),
              p.variants.size(), p.arch.c_str(), (long long)p.dense_params, out.c_str());
  return 0;
}

}  // namespace dnns::app
