// Helpers shared by the test programs.
#pragma once
#include <doctest/doctest.h>
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "core/batch.h"
#include "core/error.h"
#include "core/rng.h"
#include "core/threading.h"
#include "kernels/cpu/isa.h"
#include "kernels/params.h"
#include "nn/model.h"
#include "nn/models/zoo.h"

extern char** environ;

namespace dnns::testing {

// Four classes of 8x8 RGB images (a bright quadrant on noise); the order of epoch e is a
// seeded shuffle of (seed, e), as the real loader's.
class QuadrantData : public BatchSource {
 public:
  QuadrantData(int n, int batch, uint64_t seed) : n_(n), batch_(batch), seed_(seed), images_({n, 3, 8, 8}) {
    Rng rng(seed);
    for (int i = 0; i < n; ++i) {
      labels_.push_back(static_cast<int>(rng.below(4)));
      for (int k = 0; k < 192; ++k) {
        int y = (k % 64) / 8, x = k % 8;
        bool lit = (y / 4) * 2 + (x / 4) == labels_.back();
        images_[int64_t(i) * 192 + k] = (lit ? 1.0f : 0.0f) + 0.5f * rng.normal();
      }
    }
  }
  int64_t num_examples() const override { return n_; }
  int64_t batches_per_epoch() const override { return (n_ + batch_ - 1) / batch_; }
  int num_classes() const override { return 4; }
  Shape image_shape() const override { return {3, 8, 8}; }
  void start_epoch(int64_t epoch, int64_t first_batch) override {
    order_.resize(n_);
    for (int i = 0; i < n_; ++i) order_[i] = i;
    Rng rng(mix_seed(seed_, static_cast<uint64_t>(epoch)));
    for (int i = n_ - 1; i > 0; --i) std::swap(order_[i], order_[rng.below(i + 1)]);
    pos_ = static_cast<int>(first_batch) * batch_;
  }
  bool next(Batch& out) override {
    if (pos_ >= n_) return false;
    int b = std::min(batch_, n_ - pos_);
    out.images = Tensor({b, 3, 8, 8});
    out.labels = Tensor({b});
    for (int k = 0; k < b; ++k) {
      int i = order_[pos_ + k];
      std::copy(images_.data() + int64_t(i) * 192, images_.data() + int64_t(i + 1) * 192,
                out.images.data() + int64_t(k) * 192);
      out.labels[k] = static_cast<float>(labels_[i]);
    }
    pos_ += b;
    return true;
  }

 private:
  int n_, batch_;
  uint64_t seed_;
  Tensor images_;
  std::vector<int> labels_, order_;
  int pos_ = 0;
};

inline bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// A part of this test program that cannot run on this machine (no CUDA device, a tool that is
// not installed): `what` says which part and why. The program still runs everything else; when
// that all passes it exits 77, which CTest reports as "skipped" with the list, so a missing
// device or tool never reads as a pass (tests/test_main.cpp). Parts that depend on an optional
// tool run as CTest tests of their own (tests/CMakeLists.txt), so the rest still counts.
void skip_part(const std::string& what);

// A fresh folder under the system temp folder (mkdtemp: unique across processes and within
// one), removed with everything in it at scope exit. `tag` only names it, for a reader of /tmp.
struct TempDir {
  std::filesystem::path path;
  explicit TempDir(const std::string& tag = "test") {
    std::string tmpl = (std::filesystem::temp_directory_path() / ("dnns_" + tag + "_XXXXXX")).string();
    REQUIRE_MESSAGE(::mkdtemp(tmpl.data()) != nullptr, "mkdtemp " << tmpl << ": " << std::strerror(errno));
    path = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string str() const { return path.string(); }
  std::string operator/(const std::string& name) const { return (path / name).string(); }
  // The names of the entries directly inside, sorted.
  std::vector<std::string> entries() const {
    std::vector<std::string> names;
    for (const auto& e : std::filesystem::directory_iterator(path)) names.push_back(e.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
  }
};

// The message of the dnns::Error that `f` throws, "" when it throws nothing. Any other
// exception escapes and fails the test: a refusal must be a dnns::Error.
inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// Starts the program argv[0] with arguments argv[1..], its stdout into the file `log` and its
// stderr there too, or into `err_log` when one is given; returns its pid (posix_spawn: safe in
// a test that already runs threads).
inline pid_t spawn(const std::vector<std::string>& argv, const std::string& log, const std::string& err_log = "") {
  REQUIRE(!argv.empty());
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (err_log.empty())
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
  else
    posix_spawn_file_actions_addopen(&fa, 2, err_log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  pid_t pid = -1;
  const int rc = ::posix_spawn(&pid, argv[0].c_str(), &fa, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  REQUIRE_MESSAGE(rc == 0, "cannot start " << argv[0] << ": " << std::strerror(rc));
  return pid;
}

// Waits for `pid`; its exit status, or -1 when a signal ended it.
inline int wait_exit(pid_t pid) {
  int status = 0;
  if (::waitpid(pid, &status, 0) != pid) return -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// Sets the worker thread count for a scope and puts the previous one back at its end, also when
// an assertion ends the test case early: a test that pins the count does not leak it into the
// test cases after it in the same program.
struct ScopedThreads {
  explicit ScopedThreads(int n) : saved(num_threads()) { set_num_threads(n); }
  ~ScopedThreads() { set_num_threads(saved); }
  ScopedThreads(const ScopedThreads&) = delete;
  ScopedThreads& operator=(const ScopedThreads&) = delete;
  const int saved;
};

// Sets (or, with nullopt, unsets) an environment variable for a scope and puts the previous
// value back at its end, also when an assertion ends the test case early: programs a later test
// case spawns do not inherit it.
struct ScopedEnv {
  ScopedEnv(const char* name, std::optional<std::string> value) : name(name) {
    if (const char* v = std::getenv(name)) saved = v;
    set(value);
  }
  ~ScopedEnv() { set(saved); }
  void set(const std::optional<std::string>& value) const {
    if (value) ::setenv(name, value->c_str(), 1);
    else ::unsetenv(name);
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;
  const char* name;
  std::optional<std::string> saved;
};

// Puts the CPU kernels' instruction-set path and convolution algorithm back as they were at
// scope end: a test that walks the ISA paths or forces an algorithm does not leak its choice
// into the test cases after it, also when an assertion ends it early.
struct ScopedKernelChoice {
  ScopedKernelChoice() : isa(cpu::cpu_isa()), algo(cpu::conv_algo()) {}
  ~ScopedKernelChoice() {
    cpu::set_cpu_isa(isa);
    cpu::set_conv_algo(algo);
  }
  ScopedKernelChoice(const ScopedKernelChoice&) = delete;
  ScopedKernelChoice& operator=(const ScopedKernelChoice&) = delete;
  const cpu::Isa isa;
  const cpu::ConvAlgo algo;
};

// A conv problem, and its description for failure messages.
inline Conv2dParams conv(int N, int C, int H, int W, int K, int R, int S, int stride, int pad) {
  Conv2dParams p;
  p.N = N, p.C = C, p.H = H, p.W = W, p.K = K, p.R = R, p.S = S, p.stride = stride, p.pad = pad;
  return p;
}
inline std::string conv_str(const Conv2dParams& p) {
  return "conv N=" + std::to_string(p.N) + " C=" + std::to_string(p.C) + " H=" + std::to_string(p.H) +
         " W=" + std::to_string(p.W) + " K=" + std::to_string(p.K) + " R=" + std::to_string(p.R) +
         " S=" + std::to_string(p.S) + " stride=" + std::to_string(p.stride) + " pad=" + std::to_string(p.pad);
}

// Same shape and the same bytes (NaN payloads and signed zeros included); device tensors are
// compared through host copies.
inline bool same_bits(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape()) return false;
  const std::vector<float> x = a.to_vector(), y = b.to_vector();
  return x.size() == y.size() && (x.empty() || std::memcmp(x.data(), y.data(), x.size() * sizeof(float)) == 0);
}

// The scale logit tolerances are relative to: max(1, max |logit|).
inline float logit_scale(const Tensor& logits) {
  float s = 1.0f;
  for (int64_t i = 0; i < logits.numel(); ++i) s = std::max(s, std::fabs(logits[i]));
  return s;
}

// n floats drawn from N(mean, stddev^2).
inline std::vector<float> randn(Rng& rng, int64_t n, float mean = 0.0f, float stddev = 1.0f) {
  std::vector<float> v(static_cast<size_t>(n));
  for (float& f : v) f = rng.normal(mean, stddev);
  return v;
}

// A (rows, cols) 0/1 mask keeping each entry with probability `density`; rows listed in
// `empty` keep none (dead filters).
inline std::vector<float> random_mask(Rng& rng, int rows, int cols, double density, const std::vector<int>& empty = {}) {
  std::vector<float> m(size_t(rows) * size_t(cols), 0.0f);
  for (int i = 0; i < rows; ++i) {
    if (std::find(empty.begin(), empty.end(), i) != empty.end()) continue;
    for (int j = 0; j < cols; ++j) m[size_t(i) * cols + j] = rng.uniform() < density ? 1.0f : 0.0f;
  }
  return m;
}

// Kernel results against ground truth: max|got - want| <= 1e-4 * max(1, max|want|) (float sums
// in another order than the reference's double accumulation), and no NaN or Inf in `got`.
inline void check_close(const std::vector<float>& got, const std::vector<float>& want, const std::string& what) {
  REQUIRE(got.size() == want.size());
  double max_want = 0.0, err = 0.0;
  bool finite = true;
  for (size_t i = 0; i < got.size(); ++i) {
    max_want = std::max(max_want, double(std::fabs(want[i])));
    if (!std::isfinite(got[i])) finite = false;
    err = std::max(err, double(std::fabs(got[i] - want[i])));
  }
  INFO(what << ": max|got - want| = " << err << ", max|want| = " << max_want);
  CHECK(finite);
  CHECK(err <= 1e-4 * std::max(1.0, max_want));
}

// (n, C, H, W) standard-normal images.
inline Tensor random_images(int64_t n, const Shape& chw, Rng& rng) {
  Tensor x({n, chw[0], chw[1], chw[2]});
  for (int64_t i = 0; i < x.numel(); ++i) x[i] = rng.normal();
  return x;
}

// Random eval-mode batchnorm statistics, so that folding is tested on something other than
// the identity; beta spread around zero so dead filters give positive and negative constants.
inline void randomize_batchnorm(Model& m, Rng& rng) {
  for (Node& n : m.nodes())
    if (auto* bn = dynamic_cast<BatchNorm2d*>(n.layer.get()))
      for (int c = 0; c < bn->channels; ++c) {
        bn->gamma.value[c] = rng.uniform(0.5f, 1.5f);
        bn->beta.value[c] = rng.uniform(-0.5f, 0.5f);
        bn->running_mean[c] = rng.uniform(-0.2f, 0.2f);
        bn->running_var[c] = rng.uniform(0.5f, 2.0f);
      }
}

// Masks every prunable weight: a fraction of whole filters dead (except the final "fc"), and
// unstructured zeros at `weight_density` in the rest; applies the masks.
inline void random_masks(Model& m, Rng& rng, float dead_filter_fraction, float weight_density) {
  for (auto& p : m.params()) {
    if (!p.param->prunable) continue;
    Tensor mask = Tensor::full(p.param->value.shape(), 1.0f);
    int64_t rows = mask.dim(0), per = mask.numel() / rows;
    for (int64_t k = 0; k < rows; ++k) {
      bool dead = rng.uniform() < dead_filter_fraction && p.name != "fc.weight";
      for (int64_t q = 0; q < per; ++q)
        if (dead || rng.uniform() > weight_density) mask[k * per + q] = 0.0f;
    }
    m.masks[p.name] = mask;
  }
  m.apply_masks();
}

// A small hand-built graph with every node kind, a batchnorm that cannot be folded (its conv
// feeds another node too), average pooling and flatten.
inline Model every_kind_model() {
  Model m;
  int x = m.add_input({3, 12, 12});
  int c1 = m.add("c1", std::make_unique<Conv2d>(3, 6, 3, 3, 1, 1, true), {x});
  int bn = m.add("bn", std::make_unique<BatchNorm2d>(6), {c1});
  int sum = m.add("sum", std::make_unique<Add>(), {c1, bn});
  int relu = m.add("relu", std::make_unique<ReLU>(), {sum});
  int c2 = m.add("c2", std::make_unique<Conv2d>(6, 4, 3, 3, 2, 0, false, true), {relu});  // fused ReLU, stride 2
  int mp = m.add("mp", std::make_unique<Pool2d>(true, 2, 1), {c2});
  int ap = m.add("ap", std::make_unique<Pool2d>(false, 2, 2), {mp});
  int fl = m.add("flat", std::make_unique<Flatten>(), {ap});
  m.add("fc", std::make_unique<Linear>(16, 5, true), {fl});
  Rng rng(5);
  init_model(m, rng);
  randomize_batchnorm(m, rng);
  return m;
}

}  // namespace dnns::testing
