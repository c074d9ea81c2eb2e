// `cifar_prune train` as a user runs it: a run killed with SIGKILL mid-epoch and resumed ends
// with the same weights as an uninterrupted run; a run stopped after its last epoch keeps that
// epoch's figures; bad flags, a different run in --out and a data set whose test split lacks a
// class are refused with clear errors (and `eval` maps such a split's labels by class name);
// `run` checks its later stages' --portfolio-levels, and `compact` its --level, before any work.
#include <doctest/doctest.h>

#include "tests/test_util.h"

#include <signal.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "core/archive.h"
#include "core/fs.h"
#include "core/json.h"

using namespace dnns;
using dnns::testing::spawn;
using dnns::testing::TempDir;
using dnns::testing::wait_exit;
namespace fs = std::filesystem;

namespace {

const std::string kBin = std::string(DNNS_BINARY_DIR) + "/bin/cifar_prune";

std::vector<std::string> train_args(const std::string& out) {
  return {kBin, "train", "--data", "synthetic", "--model", "resnet20", "--epochs", "3", "--batch-size", "64",
          "--train-subset", "512", "--test-subset", "128", "--milestones", "2", "--threads", "2", "--out", out};
}

// One short epoch of synthetic data into `out`.
std::vector<std::string> one_epoch_args(const std::string& out) {
  return {kBin, "train", "--data", "synthetic", "--model", "resnet20", "--epochs", "1",
          "--train-subset", "128", "--test-subset", "64", "--threads", "2", "--out", out};
}

}  // namespace

TEST_CASE("train: SIGKILL mid-epoch, then --resume, ends with the uninterrupted run's weights") {
  REQUIRE(fs::exists(kBin));
  TempDir dir("trainapp");
  const std::string a = dir / "a", b = dir / "b", log = dir / "log", err = dir / "log.err";

  REQUIRE(wait_exit(spawn(train_args(a), log, err)) == 0);

  // Interrupted: wait for the first epoch's checkpoint, let it get into epoch 2, kill it.
  pid_t pid = spawn(train_args(b), log, err);
  auto t0 = std::chrono::steady_clock::now();
  while (!fs::exists(b + "/checkpoint.dnns") && std::chrono::steady_clock::now() - t0 < std::chrono::seconds(300))
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  REQUIRE(fs::exists(b + "/checkpoint.dnns"));
  // A quarter of the time the first epoch took (start-up included) lands inside the second
  // whatever the machine's speed: a fixed 1.5 s outlived the whole run once training got faster.
  std::this_thread::sleep_for((std::chrono::steady_clock::now() - t0) / 4);
  kill(pid, SIGKILL);
  wait_exit(pid);
  CHECK_FALSE(fs::exists(b + "/model.dnns"));  // it really was interrupted

  // Without --resume the folder is refused, naming it; with it the run continues.
  CHECK(wait_exit(spawn(train_args(b), log, err)) == 1);
  CHECK(read_text(err).find("pass --resume") != std::string::npos);
  auto args = train_args(b);
  args.push_back("--resume");
  REQUIRE(wait_exit(spawn(args, log, err)) == 0);
  CHECK(read_text(err).find("resumed") != std::string::npos);

  Archive ma = load_archive(a + "/model.dnns"), mb = load_archive(b + "/model.dnns");
  REQUIRE(ma.tensors.size() == mb.tensors.size());
  for (const auto& [name, t] : ma.tensors) {
    CAPTURE(name);
    REQUIRE(mb.tensors.count(name));
    CHECK(t.to_vector() == mb.tensors.at(name).to_vector());
  }
  // The per-epoch log has one line per epoch of the run, none duplicated by the resume.
  std::string lg = read_text(b + "/log.jsonl");
  CHECK(std::count(lg.begin(), lg.end(), '\n') == 3);
}

TEST_CASE("train: bad input is refused with a clear error") {
  TempDir dir("trainapp");
  const std::string log = dir / "log", err = dir / "log.err";
  auto run = [&](std::vector<std::string> args) {
    int rc = wait_exit(spawn(args, log, err));
    return std::make_pair(rc, read_text(err));
  };
  auto [rc1, e1] = run({kBin, "train", "--epochs", "ten", "--out", dir / "o"});
  CHECK(rc1 == 1);
  CHECK(e1.find("--epochs expects an integer") != std::string::npos);
  auto [rc2, e2] = run({kBin, "train", "--no-such-flag", "--out", dir / "o"});
  CHECK(rc2 == 1);
  CHECK(e2.find("unknown flag --no-such-flag") != std::string::npos);
  auto [rc3, e3] = run({kBin, "train", "--data", dir / "missing", "--out", dir / "o"});
  CHECK(rc3 == 1);
  CHECK(e3.find("missing") != std::string::npos);
  auto [rc4, e4] = run({kBin, "train", "--model", "resnet21", "--data", "synthetic", "--out", dir / "o"});
  CHECK(rc4 == 1);
  CHECK(e4.find("unknown model 'resnet21'") != std::string::npos);
  // Flags that would fail only later (--gamma at the first milestone, hours in) or train nonsense
  // are refused before anything runs; each of these runs would otherwise finish or fail late.
  const std::vector<std::string> quick = {kBin, "train", "--data", "synthetic", "--train-subset", "64",
                                          "--test-subset", "32", "--epochs", "1", "--batch-size", "64",
                                          "--threads", "2", "--out", dir / "o"};
  auto with = [&](std::vector<std::string> extra) {
    std::vector<std::string> a = quick;
    a.insert(a.end(), extra.begin(), extra.end());
    return run(a);
  };
  auto [rc5, e5] = with({"--gamma", "-0.1"});
  CHECK(rc5 == 1);
  CHECK(e5.find("--gamma must be positive") != std::string::npos);
  auto [rc6, e6] = with({"--lr", "inf"});
  CHECK(rc6 == 1);
  CHECK(e6.find("--lr expects a finite number, got 'inf'") != std::string::npos);
  auto [rc7, e7] = with({"--warmup-steps", "-5"});
  CHECK(rc7 == 1);
  CHECK(e7.find("--warmup-steps must be >= 0") != std::string::npos);
  CHECK_FALSE(fs::exists(dir / "o"));  // a refused command leaves no run folder behind
}

TEST_CASE("train --resume after the last epoch (stopped before metrics.json): the last epoch's figures") {
  REQUIRE(fs::exists(kBin));
  TempDir dir("trainapp_done");
  const std::string out = dir / "r", log = dir / "log", err = dir / "log.err";
  std::vector<std::string> args = one_epoch_args(out);
  REQUIRE(wait_exit(spawn(args, log, err)) == 0);
  const auto before = parse_flat_json(read_text(out + "/metrics.json"), "metrics.json");
  // As if stopped between model.dnns and metrics.json: the checkpoint is at the last step.
  fs::remove(out + "/metrics.json");
  args.push_back("--resume");
  REQUIRE(wait_exit(spawn(args, log, err)) == 0);
  const auto after = parse_flat_json(read_text(out + "/metrics.json"), "metrics.json");
  CHECK(std::strtod(before.at("train_loss").c_str(), nullptr) > 0);
  for (const char* key : {"train_loss", "train_accuracy", "test_loss", "test_accuracy", "steps"}) {
    CAPTURE(key);
    CHECK(after.at(key) == before.at(key));
  }
}

namespace {

// An image folder data set of 8x8 gray PGM images, 4 per class, each class its own shade.
void write_pgm_split(const fs::path& split, const std::vector<std::string>& classes) {
  for (const std::string& c : classes) {
    fs::create_directories(split / c);
    const int shade = c == "ant" ? 20 : c == "bee" ? 120 : 230;
    for (int i = 0; i < 4; ++i) {
      std::string pgm = "P5\n8 8\n255\n", name = "x0.pgm";  // (no "x" + ...: GCC 12 warns falsely, PR105329)
      pgm.append(64, static_cast<char>(shade + 5 * i));
      name[1] = static_cast<char>('0' + i);
      write_text_atomic((split / c / name).string(), pgm);
    }
  }
}

}  // namespace

TEST_CASE("a data set whose test split lacks a class: train refuses it by name, eval maps labels by name") {
  REQUIRE(fs::exists(kBin));
  TempDir dir("trainapp_classes");
  const testing::ScopedEnv cache("DNNS_CACHE_DIR", dir / "cache");  // the spawned programs' decode cache
  const std::string full = dir / "full", gap = dir / "gap", log = dir / "log", err = dir / "log.err";
  write_pgm_split(fs::path(full) / "train", {"ant", "bee", "cat"});
  write_pgm_split(fs::path(full) / "test", {"ant", "bee", "cat"});
  write_pgm_split(fs::path(gap) / "train", {"ant", "bee", "cat"});
  write_pgm_split(fs::path(gap) / "test", {"ant", "cat"});  // 'cat' would be read as label 1, 'bee'
  auto train = [&](const std::string& data, const std::string& out) {
    return wait_exit(spawn({kBin, "train", "--data", data, "--model", "resnet20", "--epochs", "1", "--batch-size",
                            "4", "--threads", "2", "--out", out},
                           log, err));
  };
  CHECK(train(gap, dir / "refused") == 1);
  CHECK(read_text(err).find("missing from the test split: 'bee'") != std::string::npos);
  CHECK_FALSE(fs::exists(dir / "refused"));

  REQUIRE(train(full, dir / "m") == 0);
  REQUIRE(wait_exit(spawn({kBin, "eval", dir / "m/model.dnns", "--data", gap, "--json", "--threads", "2"}, log, err)) ==
          0);
  const std::string json = read_text(log);
  CAPTURE(json);
  CHECK(json.find("\"per_class_examples\": [4,0,4]") != std::string::npos);
  CHECK(read_text(err).find("mapped to the model's classes by name") != std::string::npos);
}

TEST_CASE("train --resume: a run stored before a flag existed is the same run when that flag holds its default") {
  REQUIRE(fs::exists(kBin));
  TempDir dir("trainapp_hp");
  const std::string out = dir / "r", log = dir / "log", err = dir / "log.err";
  std::vector<std::string> args = one_epoch_args(out);
  REQUIRE(wait_exit(spawn(args, log, err)) == 0);
  const std::string hp = out + "/hparams.json", stored = read_text(hp);
  auto without = [&](const std::string& text, const std::string& key) {  // drops `"key": "value", `
    const size_t at = text.find("\"" + key + "\": ");
    REQUIRE(at != std::string::npos);
    const size_t end = text.find(", ", at);
    return text.substr(0, at) + text.substr(end + 2);
  };
  args.push_back("--resume");
  // Older build: no --sync-bn (default on): the same run.
  write_text_atomic(hp, without(stored, "sync-bn"));
  CHECK(wait_exit(spawn(args, log, err)) == 0);
  // A stored run without --epochs (default 160) is not this run of 1 epoch.
  write_text_atomic(hp, without(stored, "epochs"));
  CHECK(wait_exit(spawn(args, log, err)) == 1);
  CHECK(read_text(err).find("other hyper-parameters") != std::string::npos);
  // A stored value that differs is refused as before.
  std::string other = stored;
  const size_t lr = other.find("\"lr\": \"0.1\"");
  REQUIRE(lr != std::string::npos);
  other.replace(lr, 11, "\"lr\": \"0.2\"");
  write_text_atomic(hp, other);
  CHECK(wait_exit(spawn(args, log, err)) == 1);
  CHECK(read_text(err).find("other hyper-parameters") != std::string::npos);
}

TEST_CASE("run and compact: a later stage's bad flag is refused before any training") {
  REQUIRE(fs::exists(kBin));
  TempDir dir("trainapp_stages");
  const std::string log = dir / "log", err = dir / "log.err";
  auto pipeline = [&](const std::string& levels, const std::string& portfolio_levels) {
    return wait_exit(spawn({kBin, "run", "--data", "synthetic", "--model", "resnet20", "--train-subset", "64",
                            "--test-subset", "32", "--batch-size", "64", "--epochs", "1", "--levels", levels,
                            "--rewind-step", "0", "--prune-fraction", "0.5", "--threads", "2",
                            "--portfolio-levels", portfolio_levels, "--latency-batch", "2", "--out", dir / "run"},
                           log, err));
  };
  // Before: each trained every level and failed in the portfolio stage, minutes to hours later.
  CHECK(pipeline("1", "0,1,1") == 1);
  CHECK(read_text(err).find("--portfolio-levels names level 1 twice") != std::string::npos);
  CHECK(pipeline("1", ",") == 1);
  CHECK(read_text(err).find("--portfolio-levels expects 'auto' or comma-separated levels") != std::string::npos);
  CHECK(pipeline("1", "0,3") == 1);
  CHECK(read_text(err).find("--portfolio-levels names level 3, but --levels 1 makes levels 0..1") != std::string::npos);
  CHECK_FALSE(fs::exists(dir / "run"));

  // compact --level -1 on the magnitude chain was "the random chain starts at level 1".
  make_dirs(dir / "imp");
  write_text_atomic(dir / "imp/hparams.json", "{\"command\": \"imp\"}\n");
  CHECK(wait_exit(spawn({kBin, "compact", dir / "imp", "--level", "-1"}, log, err)) == 1);
  CHECK(read_text(err).find("--level must be >= 0, got -1") != std::string::npos);
}
