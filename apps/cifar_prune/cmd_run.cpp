// cifar_prune run: the whole pipeline in one command. Train the dense network with its rewind
// point, run the IMP levels, compact every level exactly, build the portfolio with its
// measurements, and write a final report. Each stage is the corresponding subcommand run on
// the same folder, so each resumes (--resume) or can be rerun on its own.
#include <cstdlib>
#include <cstdio>
#include <exception>
#include <algorithm>
#include <string>
#include <vector>

#include "apps/cifar_prune/chains.h"
#include "apps/cifar_prune/commands.h"
#include "apps/cifar_prune/common.h"
#include "nn/execution.h"
#include "core/error.h"
#include "core/fs.h"
#include "core/threading.h"
#include "nn/distributed.h"

namespace dnns::app {

namespace {

int call(int (*cmd)(int, char**), std::vector<std::string> args) {
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  return cmd(static_cast<int>(args.size()), argv.data());
}

std::string section(const std::string& title, const std::string& path) {
  if (!file_exists(path)) return "";
  return "## " + title + "\n\n" + read_text(path) + "\n";
}

const char* kHelp =
    "usage: cifar_prune run [flags]\n"
    "The whole pipeline in one command, into --out:\n"
    "  1. train the dense model, keeping its state at the rewind step   (cifar_prune imp, level 0)\n"
    "  2. IMP levels 1..N: prune 20%, rewind, retrain                 (cifar_prune imp)\n"
    "  3. exact compaction of every level, verified on the test set     (cifar_prune compact)\n"
    "  4. the portfolio of compact variants, measured on this machine    (cifar_prune portfolio)\n"
    "  5. REPORT.md with the tables and links to the SVG plots\n"
    "Every flag of `cifar_prune imp` is accepted (see `cifar_prune imp --help`: --data, --model,\n"
    "--epochs, --levels, --rewind-step, --random-baseline, --threads, --device, --out, --resume, ...).\n"
    "--resume continues an interrupted pipeline: finished IMP levels are kept, the level in\n"
    "progress continues from its last epoch, and the later stages are redone.\n"
    "With --seeds S1,S2,... (independent chains, spread over the ranks under mpirun: see `imp --help`)\n"
    "stages 3-5 run for each chain in --out/seed_S/, and --out/chains.md compares the chains.\n"
    "Flags of the later stages:\n"
    "  --portfolio-levels VALUE  levels in the portfolio (default: auto, the dense model and the level\n"
    "                            nearest each power-of-two compression)\n"
    "  --latency-batch VALUE     second batch size for portfolio latencies (default: 32)\n"
    "  --execution VALUE         how the portfolio's latencies are measured: dense, sparse, or auto\n"
    "                            (default: each conv/linear layer the faster of the two, measured)\n";

void write_report(const std::string& out) {
  std::string report = "# dnnshifter pipeline report\n\nRun folder: `" + out + "`. Settings: `hparams.json`, `imp.json`.\n\n";
  report += "![accuracy vs weights remaining](accuracy_vs_sparsity.svg)\n\n";
  report += section("IMP levels (test accuracy against weights remaining)", out + "/report.md");
  report += section("Exact compaction (masked vs compact model, on the test set)", out + "/compaction.md");
  report += section("Portfolio (compact variants measured on this machine)", out + "/portfolio/portfolio.md");
  report += "![portfolio latency-accuracy front](portfolio/front.svg)\n\n";
  report += "Use the portfolio at run time with `shifter` (see `shifter --help`): `" + out + "/portfolio`.\n";
  write_text_atomic(out + "/REPORT.md", report);
}

}  // namespace

int cmd_run(int argc, char** argv) {
  std::vector<std::string> imp_args = {"imp"};
  std::string out = "runs/imp", threads = "0", portfolio_levels = "auto", latency_batch = "32", seeds,
              execution = "auto";
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::fputs(kHelp, stdout);
      return 0;
    }
    auto value = [&](const std::string& name) -> std::string {
      if (a.rfind(name + "=", 0) == 0) return a.substr(name.size() + 1);
      check(i + 1 < argc, "cifar_prune run: " + name + " needs a value");
      return argv[++i];
    };
    if (a == "--portfolio-levels" || a.rfind("--portfolio-levels=", 0) == 0) {
      portfolio_levels = value("--portfolio-levels");
      continue;
    }
    if (a == "--latency-batch" || a.rfind("--latency-batch=", 0) == 0) {
      latency_batch = value("--latency-batch");
      continue;
    }
    if (a == "--execution" || a.rfind("--execution=", 0) == 0) {
      execution = value("--execution");
      continue;
    }
    // Remember the folder and thread count for the later stages, and pass everything on.
    if (a == "--out" || a.rfind("--out=", 0) == 0) {
      out = value("--out");
      imp_args.push_back("--out=" + out);
      continue;
    }
    if (a == "--seeds" || a.rfind("--seeds=", 0) == 0) {
      seeds = value("--seeds");
      imp_args.push_back("--seeds=" + seeds);
      continue;
    }
    if (a == "--threads" || a.rfind("--threads=", 0) == 0) {
      threads = value("--threads");
      imp_args.push_back("--threads=" + threads);
      continue;
    }
    imp_args.push_back(a);
  }
  if (std::find(imp_args.begin(), imp_args.end(), "--out=" + out) == imp_args.end()) imp_args.push_back("--out=" + out);
  // The later stages' flags are checked now, not after hours of training.
  try {
    size_t used = 0;
    long long b = std::stoll(latency_batch, &used);
    check(used == latency_batch.size() && b > 0, "");
  } catch (...) {
    throw Error("cifar_prune run: --latency-batch expects a positive integer, got '" + latency_batch + "'");
  }
  parse_execution(execution, "cifar_prune run: --execution");
  // As the portfolio stage will read them, and each a level the IMP stage makes (with --levels
  // given; the default 20 is refused by imp itself when too few).
  const std::vector<int> chosen = parse_portfolio_levels(portfolio_levels, "cifar_prune run: --portfolio-levels");
  for (size_t i = 1; i < imp_args.size(); ++i) {
    const std::string& a = imp_args[i];
    std::string levels;
    if (a.rfind("--levels=", 0) == 0) levels = a.substr(9);
    else if (a == "--levels" && i + 1 < imp_args.size()) levels = imp_args[i + 1];
    else continue;
    char* end = nullptr;
    const long long n = std::strtoll(levels.c_str(), &end, 10);
    if (levels.empty() || *end != '\0') continue;  // imp refuses it by name
    for (int L : chosen)
      check(L <= n, "cifar_prune run: --portfolio-levels names level " + std::to_string(L) + ", but --levels " +
                        levels + " makes levels 0.." + std::to_string(n));
  }

  // The folders of the later stages: --out, or each chain's.
  std::vector<std::string> dirs;
  if (seeds.empty()) {
    dirs.push_back(out);
  } else {
    for (int64_t s : parse_seeds(seeds)) dirs.push_back(chain_dir(out, s));
  }

  std::fprintf(stderr, "== pipeline 1-2/5: dense training and IMP levels into %s\n", out.c_str());
  if (int rc = call(cmd_imp, imp_args)) return rc;
  // Under mpirun the later stages are rank 0's alone (the portfolio measures latencies: the
  // other ranks wait without spinning, so they leave it the cores).
  if (!dist::is_root()) {
    dist::wait_idle();
    return 0;
  }
  struct ReleaseRanks {
    ~ReleaseRanks() {
      if (!std::uncaught_exceptions()) dist::wait_idle();  // on an error, main stops them all
    }
  } release_ranks;
  // Rank 0 works alone now: "all cores" is the whole machine again, not its share.
  if (threads == "0" && dist::local_size() > 1) threads = std::to_string(hardware_threads());
  for (const std::string& dir : dirs) {
    std::fprintf(stderr, "\n== pipeline 3/5: exact compaction of every level of %s\n", dir.c_str());
    if (int rc = call(cmd_compact, {"compact", dir, "--threads=" + threads})) return rc;
    std::fprintf(stderr, "\n== pipeline 4/5: portfolio of %s\n", dir.c_str());
    if (int rc = call(cmd_portfolio, {"portfolio", "--run=" + dir, "--threads=" + threads,
                                      "--levels=" + portfolio_levels, "--latency-batch=" + latency_batch,
                                      "--execution=" + execution}))
      return rc;
    std::fprintf(stderr, "\n== pipeline 5/5: report of %s\n", dir.c_str());
    write_report(dir);
    std::printf("pipeline finished: %s/REPORT.md\n", dir.c_str());
  }
  return 0;
}

}  // namespace dnns::app
