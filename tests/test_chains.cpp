// Independent IMP chains in one process (`cifar_prune imp --seeds`, apps/cifar_prune/chains.h):
// the chains run one after the other, each bit-identical to the run `imp --seed S` makes alone;
// --resume reads finished chains back without retraining them; a failing chain stops the run
// naming itself; bad --seeds / --chain-groups are refused before any training. Over MPI ranks:
// tests/test_chains_mpi.cpp.
#include <doctest/doctest.h>

#include "core/fs.h"
#include "tests/mpi_util.h"

using namespace dnns;
using namespace dnns::mpi_test;

namespace {

// ResNet-20 on 64 synthetic 32x32 images, batches of 32, 2 epochs (4 steps) per level, the dense
// level and one pruned level rewound to step 1, one thread.
std::vector<std::string> imp_args(const std::string& out) {
  return {kBin,       "imp",         "--data",       "synthetic", "--model",  "resnet20", "--train-subset",
          "64",       "--test-subset", "32",         "--batch-size", "32",    "--epochs", "2",
          "--milestones", "100",     "--lr",         "0.01",      "--levels", "1",        "--rewind-step",
          "1",        "--threads",   "1",            "--out",     out};
}

// levels.csv without its timing columns (train_seconds, wall_seconds): the columns a rerun
// reproduces.
std::string levels_without_times(const std::string& csv) {
  std::istringstream is(csv);
  std::string line, out;
  while (std::getline(is, line)) {
    size_t cut = line.size();
    for (int i = 0; i < 2; ++i) cut = line.rfind(',', cut - 1);
    out += line.substr(0, cut) + "\n";
  }
  return out;
}

}  // namespace

TEST_CASE("imp --seeds in one process: each chain is the run made alone; resume; a failing chain names itself") {
  REQUIRE_MESSAGE(file_exists(kBin), kBin << " is missing: build the cifar_prune target first");
  static TmpDir dir("chains");
  const std::string alone = dir / "alone", chains = dir / "chains";
  static const Exit ea = run(concat(imp_args(alone), {"--seed", "2"}), {}, dir / "alone.log", 300);
  REQUIRE_MESSAGE(ea.code == 0, ea.log);
  static const Exit ec = run(concat(imp_args(chains), {"--seeds", "1,2"}), {}, dir / "chains.log", 300);
  REQUIRE_MESSAGE(ec.code == 0, ec.log);

  SUBCASE("chain seed 2 equals `imp --seed 2` bit for bit; the chains differ from each other") {
    for (int level : {0, 1}) {
      const std::string l = "/level_" + std::to_string(level) + "/model.dnns";
      CHECK_MESSAGE(file_bytes(alone + l) == file_bytes(chains + "/seed_2" + l), "level " << level);
      CHECK_MESSAGE(file_bytes(chains + "/seed_1" + l) != file_bytes(chains + "/seed_2" + l), "level " << level);
    }
    CHECK(levels_without_times(read_text(alone + "/levels.csv")) ==
          levels_without_times(read_text(chains + "/seed_2/levels.csv")));
    CHECK(read_text(alone + "/hparams.json") == read_text(chains + "/seed_2/hparams.json"));
  }

  SUBCASE("the summary: chains.csv holds every level of every chain, chains.md the table") {
    const std::string csv = read_text(chains + "/chains.csv");
    // seed 2's rows are seed 2's levels.csv rows with the seed in front
    std::istringstream is(levels_without_times(read_text(chains + "/seed_2/levels.csv")));
    std::string line;
    std::getline(is, line);  // header
    int rows = 0;
    while (std::getline(is, line)) {
      CHECK_MESSAGE(levels_without_times(csv).find("\n2," + line + "\n") != std::string::npos, line);
      ++rows;
    }
    CHECK(rows == 2);
    CHECK(csv.find("\n1,magnitude,1,") != std::string::npos);
    const std::string md = read_text(chains + "/chains.md");
    CHECK(md.find("| level | % remaining | seed 1 | seed 2 | mean ± sd |") != std::string::npos);
    CHECK(md.find("| 1 | 80.00 |") != std::string::npos);
    CHECK(ec.log.find("| 1 | 80.00 |") != std::string::npos);  // printed too
    CHECK(read_text(chains + "/chains.json").find("\"seeds\": \"1,2\"") != std::string::npos);
  }

  SUBCASE("again without --resume is refused; with --resume nothing is retrained") {
    const std::string m0 = read_text(chains + "/seed_1/level_1/metrics.json");
    Exit again = run(concat(imp_args(chains), {"--seeds", "1,2"}), {}, dir / "again.log", 300);
    CHECK(again.code == 1);
    CHECK_MESSAGE(again.log.find("already holds chain seed 1; pass --resume") != std::string::npos, again.log);
    Exit resumed = run(concat(imp_args(chains), {"--seeds", "1,2", "--resume"}), {}, dir / "resumed.log", 300);
    REQUIRE_MESSAGE(resumed.code == 0, resumed.log);
    CHECK(resumed.log.find("epoch") == std::string::npos);  // no epoch trained
    CHECK(read_text(chains + "/seed_1/level_1/metrics.json") == m0);
    CHECK(resumed.log.find("| 1 | 80.00 |") != std::string::npos);
  }

  SUBCASE("a chain that fails stops the run, naming the chain; the next chain does not start") {
    const std::string failed = dir / "failed";
    Exit f = run(concat(imp_args(failed), {"--seeds", "5,6"}), {"DNNS_FAULT_INJECT=0:2:error"}, dir / "failed.log", 300);
    CHECK(f.code == 1);
    CHECK_MESSAGE(f.log.find("chain seed 5 (" + failed + "/seed_5, rank 0) failed: DNNS_FAULT_INJECT: rank 0 fails at step 2") !=
                      std::string::npos,
                  f.log);
    CHECK_FALSE(file_exists(failed + "/seed_6"));
    CHECK_FALSE(file_exists(failed + "/chains.csv"));
  }

  SUBCASE("bad --seeds and --chain-groups are refused before any training") {
    struct Bad {
      std::vector<std::string> flags;
      std::string message;
    };
    const std::vector<Bad> bad = {
        {{"--seeds", "1,1"}, "--seeds names seed 1 twice"},
        {{"--seeds", "1,x"}, "--seeds expects comma-separated integers >= 0, got '1,x'"},
        {{"--seeds", "-3"}, "--seeds expects integers >= 0, got -3"},
        {{"--seeds", "1,2", "--seed", "3"}, "--seed and --seeds exclude each other"},
        {{"--seeds", "1,2", "--chain-groups", "2"}, "--chain-groups 2 does not divide the 1 rank(s) of this job"},
        {{"--seeds", "1,2", "--chain-groups", "3"}, "--chain-groups 3 is more than the 2 chain(s) of --seeds"},
        {{"--seeds", "1,2", "--chain-groups", "two"}, "--chain-groups expects 'auto' or a positive integer"},
    };
    for (const Bad& b : bad) {
      Exit e = run(concat(imp_args(dir / "bad"), b.flags), {}, dir / "bad.log", 60);
      CHECK(e.code == 1);
      CHECK_MESSAGE(e.log.find(b.message) != std::string::npos, e.log);
      CHECK(e.log.find("epoch") == std::string::npos);
    }
    // A folder that holds a single IMP run is not a folder of chains.
    Exit e = run(concat(imp_args(alone), {"--seeds", "1"}), {}, dir / "bad.log", 60);
    CHECK(e.code == 1);
    CHECK_MESSAGE(e.log.find("holds a single IMP run") != std::string::npos, e.log);
  }
}
