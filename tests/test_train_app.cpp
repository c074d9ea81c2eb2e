// `cifar_prune train` as a user runs it: a run killed with SIGKILL mid-epoch and resumed ends
// with the same weights as an uninterrupted run; bad flags and a different run in --out are
// refused with clear errors.
#include <doctest/doctest.h>

#include "tests/test_util.h"

#include <signal.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "core/archive.h"
#include "core/fs.h"

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
  CHECK_FALSE(fs::exists(dir / "o"));  // a refused command leaves no run folder behind
}

TEST_CASE("train --resume: a run stored before a flag existed is the same run when that flag holds its default") {
  REQUIRE(fs::exists(kBin));
  TempDir dir("trainapp_hp");
  const std::string out = dir / "r", log = dir / "log", err = dir / "log.err";
  std::vector<std::string> args = {kBin, "train", "--data", "synthetic", "--model", "resnet20", "--epochs", "1",
                                   "--train-subset", "128", "--test-subset", "64", "--threads", "2", "--out", out};
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
