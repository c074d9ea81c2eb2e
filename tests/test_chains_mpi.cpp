// Independent IMP chains spread over MPI ranks (`mpirun -np 2 cifar_prune imp --seeds 1,2
// --random-baseline`: two groups of one rank, 1 thread per rank; rank 0 trains the magnitude
// chains of seeds 1 and 2, rank 1 their random chains, each level as soon as the magnitude level
// it follows is there):
//   - each chain is bit-identical to the run `imp --seed S --random-baseline` makes alone in one
//     process, whichever rank ran it (--seeds 1,2 and 2,1 give the same files);
//   - a rank killed mid-level, then --resume: the finished levels are not redone, and every chain
//     ends bit-identical to the uninterrupted run;
//   - one chain on 2 ranks is one data-parallel group;
//   - a failing chain stops the other rank with a message naming the chain, instead of hanging.
// Skipped (exit 77) where the build has no MPI or no mpirun was found. In one process:
// tests/test_chains.cpp.
#include <doctest/doctest.h>

#include "core/fs.h"
#include "tests/mpi_util.h"

using namespace dnns;
using namespace dnns::mpi_test;

namespace {

// As in test_chains.cpp: ResNet-20, 64 synthetic images, 2 epochs of 2 steps per level, the
// dense level and one pruned level rewound to step 1, one thread.
std::vector<std::string> imp_args(const std::string& out) {
  return {kBin,       "imp",         "--data",       "synthetic", "--model",  "resnet20", "--train-subset",
          "64",       "--test-subset", "32",         "--batch-size", "32",    "--epochs", "2",
          "--milestones", "100",     "--lr",         "0.01",      "--levels", "1",        "--rewind-step",
          "1",        "--threads",   "1",            "--out",     out};
}

const char* kModels[] = {"/level_0/model.dnns", "/level_1/model.dnns"};
const char* kRandomModel = "/random/level_1/model.dnns";

// levels.csv without its timing columns (train_seconds, wall_seconds).
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

TEST_CASE("imp --seeds over 2 ranks: chains equal to the runs made alone; kill and resume; a failing chain") {
  skip_without_mpi();
  REQUIRE_MESSAGE(file_exists(kBin), kBin << " is missing: build the cifar_prune target first");
  static TmpDir dir("chains_mpi");
  const std::string alone = dir / "alone", two = dir / "two";
  // The references, once (doctest runs this body again for every subcase).
  static const Exit ea = run(concat(imp_args(alone), {"--seed", "2", "--random-baseline"}), kQuiet, dir / "alone.log", 300);
  REQUIRE_MESSAGE(ea.code == 0, ea.log);
  static const Exit e2 = run(concat(mpirun(2, {}), concat(imp_args(two), {"--seeds", "1,2", "--random-baseline"})),
                             kQuiet, dir / "two.log", 300);
  REQUIRE_MESSAGE(e2.code == 0, e2.log);

  SUBCASE("seed 2's magnitude chain (rank 0) and random chain (rank 1) equal the run made alone bit for bit") {
    CHECK_MESSAGE(e2.log.find("chains: 4 (seeds 1,2, magnitude and random each) over 2 group(s) of 1 rank(s)") !=
                      std::string::npos,
                  e2.log);
    for (const char* m : {kModels[0], kModels[1], kRandomModel}) {
      CHECK_MESSAGE(file_bytes(alone + m) == file_bytes(two + "/seed_2" + m), m);
      CHECK_MESSAGE(file_bytes(two + "/seed_1" + m) != file_bytes(two + "/seed_2" + m), m);
    }
    CHECK(file_bytes(alone + kModels[1]) != file_bytes(alone + kRandomModel));
    // The random chain's rank wrote the seed's reports once both chains were there.
    CHECK(levels_without_times(read_text(alone + "/levels.csv")) ==
          levels_without_times(read_text(two + "/seed_2/levels.csv")));
    // Every chain in the summary gathered by rank 0, in each seed's levels.csv order.
    const std::string csv = read_text(two + "/chains.csv");
    for (const char* row : {"\n1,magnitude,0,", "\n1,magnitude,1,", "\n1,random,1,", "\n2,magnitude,1,", "\n2,random,1,"})
      CHECK_MESSAGE(csv.find(row) != std::string::npos, row);
    std::istringstream is(levels_without_times(read_text(two + "/seed_2/levels.csv")));
    std::string line, seed2;
    std::getline(is, line);  // header
    while (std::getline(is, line)) seed2 += "\n2," + line;
    CHECK(levels_without_times(csv).find(seed2 + "\n") != std::string::npos);
    CHECK(read_text(two + "/chains.md").find("| seed 1 | seed 2 | mean ± sd | random, seed 1 | random, seed 2 | random mean ± sd |") !=
          std::string::npos);
  }

  SUBCASE("--seeds 2,1 (seed 1 on rank 1) killed in level 1, then --resume: same files, level 0 not redone") {
    const std::string killed = dir / "killed";
    // Rank 1 runs chain seed 1 here; step 2 is reached first in level 0, then again in level 1
    // (after the rewind to step 1 and the epoch ending at step 2, whose checkpoint is written).
    Exit k = run(concat(mpirun(2, {"DNNS_FAULT_INJECT"}), concat(imp_args(killed), {"--seeds", "2,1"})),
                 {"DNNS_FAULT_INJECT=1:2:kill:2"}, dir / "killed.log", 300);
    CHECK_FALSE(k.timed_out);
    CHECK_MESSAGE(k.code != 0, k.log);
    CHECK_MESSAGE(k.log.find("rank 1 kills itself at step 2") != std::string::npos, k.log);
    REQUIRE(file_exists(killed + "/seed_1/level_0/metrics.json"));
    REQUIRE(file_exists(killed + "/seed_1/level_1/checkpoint.dnns"));
    CHECK_FALSE(file_exists(killed + "/seed_1/level_1/metrics.json"));
    const std::string level0 = read_text(killed + "/seed_1/level_0/metrics.json");

    Exit r = run(concat(mpirun(2, {}), concat(imp_args(killed), {"--seeds", "2,1", "--resume"})), kQuiet,
                 dir / "resumed.log", 300);
    REQUIRE_MESSAGE(r.code == 0, r.log);
    CHECK_MESSAGE(r.log.find("seed 1: level 1/1: resumed") != std::string::npos, r.log);
    CHECK(read_text(killed + "/seed_1/level_0/metrics.json") == level0);  // read back, not retrained
    for (const std::string seed : {"/seed_1", "/seed_2"})
      for (const char* m : kModels) CHECK_MESSAGE(file_bytes(two + seed + m) == file_bytes(killed + seed + m), seed << m);
  }

  SUBCASE("one chain on 2 ranks: one group, data-parallel") {
    const std::string one = dir / "one";
    Exit e = run(concat(mpirun(2, {}), concat(imp_args(one), {"--seeds", "3", "--levels", "0"})), kQuiet,
                 dir / "one.log", 300);
    REQUIRE_MESSAGE(e.code == 0, e.log);
    CHECK_MESSAGE(e.log.find("chains: 1 (seeds 3) over 1 group(s) of 2 rank(s)") != std::string::npos, e.log);
    CHECK(e.log.find("2 ranks, comm") != std::string::npos);
    CHECK(read_text(one + "/seed_3/level_0/log.jsonl").find("\"ranks\": 2") != std::string::npos);
    CHECK(read_text(one + "/chains.csv").find("\n3,magnitude,0,") != std::string::npos);
  }

  SUBCASE("a chain that fails stops the other rank with a message naming the chain") {
    const std::string failed = dir / "failed";
    Exit f = run(concat(mpirun(2, {"DNNS_FAULT_INJECT"}), concat(imp_args(failed), {"--seeds", "1,2"})),
                 {"DNNS_FAULT_INJECT=1:1:error"}, dir / "failed.log", 120);
    CHECK_FALSE_MESSAGE(f.timed_out, "the other rank hung: " << f.log);
    CHECK(f.code != 0);
    CHECK_MESSAGE(f.log.find("chain seed 2 (" + failed + "/seed_2, rank 1) failed: DNNS_FAULT_INJECT: rank 1 fails at step 1") !=
                      std::string::npos,
                  f.log);
    CHECK_MESSAGE(f.log.find("rank 1 of 2 failed: stopping all ranks") != std::string::npos, f.log);
    CHECK_FALSE(file_exists(failed + "/chains.csv"));
  }
}
