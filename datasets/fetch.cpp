#include "datasets/fetch.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "core/error.h"
#include "core/fs.h"
#include "core/md5.h"
#include "datasets/dataset.h"

extern char** environ;

namespace dnns {

namespace fs = std::filesystem;

const std::vector<FetchSource>& fetch_sources() {
  // MD5s: CIFAR from the data set page https://www.cs.toronto.edu/~kriz/cifar.html (its table
  // of versions; torchvision publishes only the python versions' MD5s, not the binary ones
  // read here); Fashion-MNIST from its README (github.com/zalandoresearch/fashion-mnist, the
  // table of files), the same values torchvision.datasets.FashionMNIST checks.
  static const std::vector<FetchSource> sources = {
      {"cifar10",
       "https://www.cs.toronto.edu/~kriz",
       {{"cifar-10-binary.tar.gz", "c32a1d4ab5d03f1284b67883e8d87530"}},
       true,
       "cifar-10-batches-bin",
       {"data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin", "data_batch_5.bin",
        "test_batch.bin"}},
      {"cifar100",
       "https://www.cs.toronto.edu/~kriz",
       {{"cifar-100-binary.tar.gz", "03b5dce01913d631647c71ecec9e9cb8"}},
       true,
       "cifar-100-binary",
       {"train.bin", "test.bin"}},
      {"fashion-mnist",
       "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com",
       {{"train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"},
        {"train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"},
        {"t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"},
        {"t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"}},
       false,
       "fashion-mnist",
       {"train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz"}},
  };
  return sources;
}

const FetchSource& fetch_source(const std::string& name) {
  std::string known;
  for (const FetchSource& s : fetch_sources()) {
    if (s.name == name) return s;
    known += (known.empty() ? "" : ", ") + s.name;
  }
  throw Error("data fetch: unknown data set '" + name + "' (known: " + known + ")");
}

namespace {

// Runs `args` (found on PATH), stdout and stderr into `log`; returns the exit status, 127 when
// the program cannot be started.
int run_program(const std::vector<std::string>& args, const std::string& log) {
  std::vector<char*> argv;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  pid_t pid = -1;
  const int rc = posix_spawnp(&pid, argv[0], &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) return 127;
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}

std::string last_line(const std::string& path) {
  std::string text;
  try {
    text = read_text(path);
  } catch (const Error&) {
    return "";
  }
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.pop_back();
  const size_t nl = text.find_last_of("\r\n");
  return nl == std::string::npos ? text : text.substr(nl + 1);
}

void download(const std::string& url, const std::string& to, const std::string& log) {
  // --fail: an HTTP error is an error, not a saved error page.
  const int rc = run_program({"curl", "--fail", "--silent", "--show-error", "--location", "--connect-timeout", "30",
                              "--retry", "2", "--output", to, url},
                             log);
  if (rc == 0) return;
  check(rc != 127, "data fetch: cannot run `curl` (not installed? Debian: apt-get install curl)");
  std::string why = last_line(log);
  std::string hint;
  if (rc == 6 || rc == 7 || rc == 28 || rc == 35)
    hint = " (no network? the server down? behind a proxy, set https_proxy)";
  else if (rc == 22)
    hint = " (the server has no such file: check --url-base)";
  throw Error("data fetch: cannot download " + url + ": " + (why.empty() ? "curl exit status " + std::to_string(rc) : why) +
              hint);
}

}  // namespace

std::string fetch_dataset(const std::string& name, const FetchOptions& opt) {
  const FetchSource& src = fetch_source(name);
  check(!opt.dir.empty(), "data fetch: --dir must not be empty");
  for (const auto& [file, md5] : opt.md5) {
    bool known = false;
    for (const FetchFile& f : src.files) known |= f.name == file;
    check(known, "data fetch: --md5 names '" + file + "', which is not a file of " + name);
    check(md5.size() == 32 && md5.find_first_not_of("0123456789abcdef") == std::string::npos,
          "data fetch: --md5 " + file + "=" + md5 + ": expected 32 lowercase hex digits");
  }
  const std::string final_dir = (fs::path(opt.dir) / src.folder).string();
  std::error_code ec;
  if (fs::exists(final_dir, ec)) {
    if (opt.verbose) std::fprintf(stderr, "%s: already there; nothing fetched (delete it to fetch again)\n", final_dir.c_str());
    return final_dir;
  }
  make_dirs(opt.dir);
  // A fetch killed midway (Ctrl-C) leaves its hidden temporary folder: remove those whose
  // process is gone (a fetch running now in another process keeps its own).
  const std::string stale_prefix = ".fetch-" + name + ".";
  for (const auto& e : fs::directory_iterator(opt.dir, ec)) {
    const std::string fn = e.path().filename().string();
    if (fn.rfind(stale_prefix, 0) != 0) continue;
    const long pid = std::strtol(fn.c_str() + stale_prefix.size(), nullptr, 10);
    if (pid > 0 && ::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH) {
      std::error_code rm;
      fs::remove_all(e.path(), rm);
      if (opt.verbose) std::fprintf(stderr, "removed %s, left by an interrupted fetch\n", e.path().c_str());
    }
  }
  const fs::path tmp = fs::path(opt.dir) / (".fetch-" + name + "." + std::to_string(::getpid()));
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp, ec);
  check(!ec, tmp.string() + ": cannot create (" + ec.message() + ")");
  try {
    const std::string base = opt.url_base.empty() ? src.url_base : opt.url_base;
    const fs::path unpacked = tmp / "unpacked";
    fs::create_directories(unpacked / (src.untar ? "" : src.folder));
    for (const FetchFile& f : src.files) {
      const std::string url = (base.back() == '/' ? base : base + "/") + f.name;
      const std::string file = (tmp / f.name).string();
      if (opt.verbose) std::fprintf(stderr, "downloading %s ...\n", url.c_str());
      download(url, file, (tmp / "curl.log").string());
      const std::string expected = opt.md5.count(f.name) ? opt.md5.at(f.name) : f.md5;
      const std::string got = md5_file(file);
      check(got == expected, "data fetch: " + url + ": MD5 " + got + " differs from the " +
                                 (opt.md5.count(f.name) ? "expected (--md5) " : "published ") + expected + " (" +
                                 std::to_string(fs::file_size(file, ec)) +
                                 " bytes received): a damaged download or not the official file; nothing was kept");
      if (opt.verbose) std::fprintf(stderr, "  %s: MD5 %s verified\n", f.name.c_str(), got.c_str());
      if (src.untar) {
        const int rc = run_program({"tar", "-xzf", file, "-C", unpacked.string(), "--no-same-owner"},
                                   (tmp / "tar.log").string());
        check(rc != 127, "data fetch: cannot run `tar`");
        check(rc == 0, "data fetch: " + f.name + ": cannot unpack: " + last_line((tmp / "tar.log").string()));
        fs::remove(file, ec);  // the archive is not needed once unpacked
      } else {
        fs::rename(file, unpacked / src.folder / f.name, ec);
        check(!ec, "data fetch: cannot move " + file + " (" + ec.message() + ")");
      }
    }
    const fs::path staged = unpacked / src.folder;
    for (const std::string& m : src.must_hold)
      check(fs::is_regular_file(staged / m, ec),
            "data fetch: " + name + ": the archive does not hold " + src.folder + "/" + m + " (not the official layout)");
    // Read both splits once: what lands in --dir must load.
    for (bool train : {true, false}) {
      Dataset d = load_dataset(staged.string(), train);
      if (opt.verbose)
        std::fprintf(stderr, "  %s split: %lld images %dx%dx%d, %d classes\n", train ? "train" : "test",
                     (long long)d.size(), d.channels, d.height, d.width, d.num_classes);
    }
    fs::rename(staged, final_dir, ec);
    check(!ec, "data fetch: cannot move the data set to " + final_dir + " (" + ec.message() + ")");
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }
  fs::remove_all(tmp, ec);
  return final_dir;
}

}  // namespace dnns
