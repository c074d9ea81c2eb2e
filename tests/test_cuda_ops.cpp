// CUDA backend vs the reference kernels: every op on random inputs, odd shapes, stride 2,
// padding, the conv chunking paths, determinism, the caching allocator and Tensor transfers.
//
// Tolerances (max |cuda - ref| <= tol * max(1, max |ref|)):
//   conv, linear (cuBLAS FP32, other summation order than the double reference): 1e-3
//   the same with TF32 enabled: 1e-2
//   batchnorm, softmax cross-entropy, global average pool (double math in both, other
//   summation order): 1e-5
//   SGD: 1e-6 (the host compiler may fuse multiply-adds in the reference)
//   relu, add, accumulate, mask, max/avg pooling: exact (same operations in the same order)
#include <doctest/doctest.h>

#include "tests/test_util.h"

#ifndef DNNS_HAVE_CUDA

TEST_CASE("cuda: backend") { dnns::testing::skip_part("the CUDA op tests: this build has no CUDA (no nvcc found)"); }

#else

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "core/tensor.h"
#include "kernels/cuda/cuda.h"
#include "kernels/ops.h"
#include "kernels/ref/ref.h"
#include "nn/model.h"
#include "nn/models/zoo.h"
#include "nn/optim.h"
#include "prune/compact.h"
#include "prune/mask.h"

namespace {

using namespace dnns;
using dnns::testing::conv;
using dnns::testing::conv_str;
using Vec = std::vector<float>;

bool gpu_present() {
  static const bool present = cuda::device_count() > 0;
  static bool reported = false;
  if (!present && !reported) {
    dnns::testing::skip_part("the CUDA op tests: no CUDA device present");
    reported = true;
  }
  return present;
}

Vec random_vec(Rng& rng, int64_t n, float lo = -1.0f, float hi = 1.0f) {
  Vec v(static_cast<size_t>(n));
  for (float& x : v) x = rng.uniform(lo, hi);
  return v;
}

// A device copy of host values (a flat CUDA tensor).
Tensor dev(const Vec& v) { return Tensor::from({int64_t(v.size())}, v).to(Device::CUDA); }
// A device buffer pre-filled with garbage, so a kernel that skips an element is caught.
Tensor dev_garbage(int64_t n) { return Tensor::full({n}, 777.0f, Device::CUDA); }

// max |got - want| <= rtol * max(1, max |want|)
// The largest |got - want| and where, with NaN sticky: a NaN anywhere makes the error NaN and
// stays the worst element, whatever finite differences come after it.
struct MaxError {
  double err = 0.0, scale = 1.0;
  size_t worst = 0;
  bool nan = false;
};
MaxError max_error(const Vec& got, const Vec& want) {
  MaxError m;
  for (size_t i = 0; i < want.size() && i < got.size(); i++) {
    m.scale = std::max(m.scale, double(std::fabs(want[i])));
    const double d = std::fabs(double(got[i]) - double(want[i]));
    if (m.nan) continue;
    if (std::isnan(d)) {
      m.nan = true, m.err = d, m.worst = i;
    } else if (d > m.err) {
      m.err = d, m.worst = i;
    }
  }
  return m;
}

void check_close(const std::string& what, const Vec& got, const Vec& want, double rtol) {
  REQUIRE_MESSAGE(got.size() == want.size(), what << ": size " << got.size() << " vs " << want.size());
  const MaxError m = max_error(got, want);
  const double tol = rtol * m.scale;
  CHECK_MESSAGE((!m.nan && m.err <= tol), what << ": max |cuda - ref| = " << m.err << " at " << m.worst << " (cuda "
                                               << (got.empty() ? 0.f : got[m.worst]) << ", ref "
                                               << (want.empty() ? 0.f : want[m.worst]) << "), tolerance " << tol);
}

void check_equal(const std::string& what, const Vec& got, const Vec& want) {
  REQUIRE_MESSAGE(got.size() == want.size(), what << ": size " << got.size() << " vs " << want.size());
  size_t bad = 0, first = 0;
  for (size_t i = 0; i < want.size(); i++)
    if (!(got[i] == want[i])) {
      if (bad == 0) first = i;
      bad++;
    }
  CHECK_MESSAGE(bad == 0, what << ": " << bad << " values differ, first at " << first << " (cuda "
                               << got[first] << ", ref " << want[first] << ")");
}

bool bitwise_equal(const Vec& a, const Vec& b) {
  return a.size() == b.size() &&
         std::equal(a.begin(), a.end(), b.begin(), [](float x, float y) {
           return std::memcmp(&x, &y, sizeof(float)) == 0;
         });
}

// The three conv ops through both backends, compared with `rtol`.
void check_conv_ops(const Conv2dParams& p, bool bias, uint64_t seed, double rtol) {
  INFO(conv_str(p) << (bias ? " with bias" : " without bias"));
  Rng rng(seed);
  const int64_t nx = int64_t(p.N) * p.C * p.H * p.W, nw = int64_t(p.K) * p.C * p.R * p.S;
  const int64_t ny = int64_t(p.N) * p.K * p.P() * p.Q();
  const Vec x = random_vec(rng, nx), w = random_vec(rng, nw), b = random_vec(rng, p.K);
  const Vec dy = random_vec(rng, ny);

  Vec y_ref(ny), dx_ref(nx), dw_ref(nw), db_ref(p.K);
  ref::conv2d_forward(p, x.data(), w.data(), bias ? b.data() : nullptr, y_ref.data());
  ref::conv2d_backward_data(p, dy.data(), w.data(), dx_ref.data());
  ref::conv2d_backward_weights(p, x.data(), dy.data(), dw_ref.data(), bias ? db_ref.data() : nullptr);

  Tensor dx_ = dev(x), dw_ = dev(w), db_ = dev(b), ddy = dev(dy);
  Tensor y = dev_garbage(ny), gx = dev_garbage(nx), gw = dev_garbage(nw), gb = dev_garbage(p.K);
  cuda::conv2d_forward(p, dx_.data(), dw_.data(), bias ? db_.data() : nullptr, y.data());
  cuda::conv2d_backward_data(p, ddy.data(), dw_.data(), gx.data());
  cuda::conv2d_backward_weights(p, dx_.data(), ddy.data(), gw.data(), bias ? gb.data() : nullptr);

  check_close("conv2d_forward y", y.to_vector(), y_ref, rtol);
  check_close("conv2d_backward_data dx", gx.to_vector(), dx_ref, rtol);
  check_close("conv2d_backward_weights dw", gw.to_vector(), dw_ref, rtol);
  if (bias) check_close("conv2d_backward_weights db", gb.to_vector(), db_ref, rtol);
}

struct LinearShape { int N, I, O; };
std::vector<LinearShape> linear_shapes() {
  return {LinearShape{5, 7, 3}, LinearShape{1, 1, 1}, LinearShape{33, 65, 17}, LinearShape{128, 256, 10}};
}

// Forward, backward data and backward weights of one linear shape against the reference.
void check_linear_ops(const LinearShape s, bool bias, uint64_t seed, double rtol) {
  INFO("linear N=" << s.N << " I=" << s.I << " O=" << s.O << (bias ? " with bias" : ""));
  Rng rng(seed);
  const Vec x = random_vec(rng, int64_t(s.N) * s.I), w = random_vec(rng, int64_t(s.O) * s.I);
  const Vec b = random_vec(rng, s.O), dy = random_vec(rng, int64_t(s.N) * s.O);
  Vec y_ref(size_t(s.N) * s.O), dx_ref(size_t(s.N) * s.I), dw_ref(size_t(s.O) * s.I), db_ref(s.O);
  ref::linear_forward(s.N, s.I, s.O, x.data(), w.data(), bias ? b.data() : nullptr, y_ref.data());
  ref::linear_backward_data(s.N, s.I, s.O, dy.data(), w.data(), dx_ref.data());
  ref::linear_backward_weights(s.N, s.I, s.O, x.data(), dy.data(), dw_ref.data(), bias ? db_ref.data() : nullptr);

  Tensor dx_ = dev(x), dw_ = dev(w), db_ = dev(b), ddy = dev(dy);
  Tensor y = dev_garbage(int64_t(y_ref.size())), gx = dev_garbage(int64_t(dx_ref.size()));
  Tensor gw = dev_garbage(int64_t(dw_ref.size())), gb = dev_garbage(s.O);
  cuda::linear_forward(s.N, s.I, s.O, dx_.data(), dw_.data(), bias ? db_.data() : nullptr, y.data());
  cuda::linear_backward_data(s.N, s.I, s.O, ddy.data(), dw_.data(), gx.data());
  cuda::linear_backward_weights(s.N, s.I, s.O, dx_.data(), ddy.data(), gw.data(), bias ? gb.data() : nullptr);
  check_close("linear_forward y", y.to_vector(), y_ref, rtol);
  check_close("linear_backward_data dx", gx.to_vector(), dx_ref, rtol);
  check_close("linear_backward_weights dw", gw.to_vector(), dw_ref, rtol);
  if (bias) check_close("linear_backward_weights db", gb.to_vector(), db_ref, rtol);
}

std::vector<Conv2dParams> conv_shapes() {
  return {
      conv(2, 3, 7, 5, 4, 3, 3, 1, 1),     // odd sizes, padding
      conv(3, 5, 9, 8, 6, 3, 3, 2, 1),     // stride 2
      conv(2, 8, 5, 6, 7, 1, 1, 1, 0),     // 1x1 stride 1: the pointwise fast path
      conv(2, 4, 7, 7, 3, 1, 1, 2, 0),     // 1x1 stride 2: im2col path
      conv(1, 2, 6, 11, 5, 5, 3, 3, 2),    // rectangular window, stride 3, padding 2
      conv(2, 3, 4, 4, 2, 4, 4, 1, 0),     // window = image: one output position
      conv(4, 16, 8, 8, 32, 3, 3, 1, 1),   // more channels than the others
      conv(8, 16, 32, 32, 16, 3, 3, 1, 1), // >1M column entries: grid-stride loops wrap
  };
}

}  // namespace

TEST_CASE("cuda: the tolerance checker itself: NaN is sticky, the worst element is found") {
  // Runs without a device: every op check below rests on max_error.
  const Vec want = {1.0f, 2.0f, 3.0f, 4.0f};
  MaxError m = max_error({1.0f, NAN, 3.5f, 4.0f}, want);  // a finite error after the NaN
  CHECK(m.nan);
  CHECK(m.worst == 1);
  m = max_error({NAN, 2.0f, 3.0f, 4.0f}, want);
  CHECK(m.nan);
  CHECK(m.worst == 0);
  m = max_error({1.0f, 2.0f, 3.0f, INFINITY}, want);
  CHECK(!m.nan);
  CHECK(std::isinf(m.err));
  m = max_error({1.0f, 2.25f, 3.0f, 3.5f}, want);
  CHECK(!m.nan);
  CHECK(m.err == 0.5);
  CHECK(m.worst == 3);
  CHECK(m.scale == 4.0);
}

TEST_CASE("cuda: the conv shape check refuses what ref and cpu refuse (before touching the device)") {
  // Stride 2 with a kernel one larger than the padded input: P() rounds to 1, but the window
  // never fits. ref and cpu refuse it; so must the CUDA kernels.
  const Conv2dParams p = conv(1, 2, 4, 4, 3, 5, 5, 2, 0);
  REQUIRE(p.P() >= 1);
  CHECK_THROWS_AS(ref::conv2d_forward(p, nullptr, nullptr, nullptr, nullptr), Error);
  CHECK_THROWS_WITH_AS(cuda::conv2d_forward(p, nullptr, nullptr, nullptr, nullptr),
                       doctest::Contains("kernel no larger than the padded input"), Error);
  CHECK_THROWS_AS(cuda::conv2d_backward_data(p, nullptr, nullptr, nullptr), Error);
  CHECK_THROWS_AS(cuda::conv2d_backward_weights(p, nullptr, nullptr, nullptr, nullptr), Error);
}

TEST_CASE("cuda: whole-model SGD steps match the CPU from the same weights and batches") {
  // Where a host read of a device tensor, a missed copy or a wrong stream would show: the
  // whole training step (forward in train mode, loss, backward, masks, SGD with momentum and
  // weight decay) of zoo models, on the GPU and on the CPU, from one initialisation.
  if (!gpu_present()) return;
  for (const char* name : {"resnet20", "vgg11"}) {
    INFO("model " << name);
    Model cpu = build_model(name);
    Rng init(7);
    init_model(cpu, init);
    MaskSet masks = ones_masks(cpu);  // prune every third weight: the masks must hold on the GPU too
    for (auto& [weight, mask] : masks) {
      Vec v = mask.to_vector();
      for (size_t i = 0; i < v.size(); i += 3) v[i] = 0.0f;
      mask = Tensor::from(mask.shape(), v);
    }
    set_masks(cpu, masks);
    Model gpu = cpu.clone();
    gpu.to(Device::CUDA);
    SgdParams hp;
    hp.momentum = 0.9f, hp.weight_decay = 5e-4f;
    Sgd sgd_cpu(hp), sgd_gpu(hp);
    Rng data(8);
    const int N = 16;
    for (int step = 0; step < 3; step++) {
      INFO("step " << step);
      const Tensor x = Tensor::from({N, 3, 32, 32}, random_vec(data, int64_t(N) * 3 * 32 * 32, -2.0f, 2.0f));
      Vec labels(N);
      for (float& l : labels) l = float(data.below(10));
      const Tensor y = Tensor::from({N}, labels);
      Tensor lc = cpu.forward(x, true);
      Tensor dlc = Tensor::uninit(lc.shape(), Device::CPU);
      const float loss_c = ops::softmax_cross_entropy(lc, y, 0.0f, &dlc, nullptr);
      cpu.backward(dlc);
      sgd_cpu.step(cpu, 0.05f);
      Tensor lg = gpu.forward(x.to(Device::CUDA), true);
      Tensor dlg = Tensor::uninit(lg.shape(), Device::CUDA);
      const float loss_g = ops::softmax_cross_entropy(lg, y.to(Device::CUDA), 0.0f, &dlg, nullptr);
      gpu.backward(dlg);
      sgd_gpu.step(gpu, 0.05f);
      CHECK(std::isfinite(loss_g));
      CHECK(std::fabs(double(loss_g) - double(loss_c)) <= 1e-3 * std::max(1.0, double(std::fabs(loss_c))));
      check_close("logits", lg.to(Device::CPU).to_vector(), lc.to_vector(), 1e-3);
    }
    // Every parameter and buffer (running statistics too), and the masked weights still zero.
    auto sc = cpu.state();
    auto sg = gpu.state();
    REQUIRE(sc.size() == sg.size());
    for (size_t i = 0; i < sc.size(); i++) {
      REQUIRE(sc[i].first == sg[i].first);
      REQUIRE(sg[i].second->device() == Device::CUDA);
      check_close(sc[i].first, sg[i].second->to(Device::CPU).to_vector(), sc[i].second->to_vector(), 2e-3);
    }
    for (auto& np : gpu.params())
      if (np.param->prunable) {
        const Vec v = np.param->value.to(Device::CPU).to_vector();
        bool zeros_kept = true;
        for (size_t i = 0; i < v.size(); i += 3) zeros_kept = zeros_kept && v[i] == 0.0f;
        CHECK_MESSAGE(zeros_kept, np.name << ": a masked weight moved on the GPU");
      }
  }
}

TEST_CASE("cuda: without a device the backend reports it and refuses CUDA tensors") {
  if (cuda::device_count() > 0) return;  // the other cases cover a present device
  CHECK(!cuda_available());
  CHECK(cuda::device_name() == "no CUDA device");
  CHECK_NOTHROW(cuda::synchronize());
  CHECK_NOTHROW(cuda::set_tf32(false));
  CHECK_NOTHROW(cuda::empty_cache());
  CHECK_THROWS_WITH_AS(Tensor({4}, Device::CUDA), doctest::Contains("no CUDA device"), Error);
  CHECK_THROWS_AS(Tensor::from({2}, {1.0f, 2.0f}).to(Device::CUDA), Error);
  CHECK(cuda::allocator_stats().blocks_in_use == 0);
}

TEST_CASE("cuda: device, Tensor transfers and fill") {
  if (!gpu_present()) return;
  const std::string name = cuda::device_name();
  MESSAGE("CUDA device: " << name);
  CHECK(name != "no CUDA device");
  CHECK(cuda_available());

  Rng rng(1);
  const Vec v = random_vec(rng, 3 * 5 * 7);
  const Tensor h = Tensor::from({3, 5, 7}, v);
  const Tensor d = h.to(Device::CUDA);
  CHECK(d.device() == Device::CUDA);
  CHECK(d.shape() == h.shape());
  check_equal("to(CUDA) then to(CPU)", d.to(Device::CPU).to_vector(), v);

  const Tensor c = d.clone();  // device to device
  CHECK(c.device() == Device::CUDA);
  CHECK(!c.same_storage(d));
  check_equal("clone on device", c.to_vector(), v);

  Tensor z = Tensor::zeros({1001}, Device::CUDA);
  check_equal("zeros on device", z.to_vector(), Vec(1001, 0.0f));
  z.fill(-2.5f);
  check_equal("fill on device", z.to_vector(), Vec(1001, -2.5f));
  z.copy_from(Tensor::full({1001}, 4.0f));  // host to device
  check_equal("copy_from host", z.to_vector(), Vec(1001, 4.0f));
  CHECK(max_abs_diff(d, h) == 0.0f);
  cuda::synchronize();
}

TEST_CASE("cuda: the caching allocator reuses freed blocks") {
  if (!gpu_present()) return;
  const int64_t n = 12345;  // an unusual size, unlikely to collide with other tests' blocks
  void* first = nullptr;
  {
    Tensor t({n}, Device::CUDA);
    first = t.data();
  }
  const cuda::AllocatorStats before = cuda::allocator_stats();
  {
    Tensor t({n}, Device::CUDA);
    CHECK(t.data() == first);
  }
  const cuda::AllocatorStats after = cuda::allocator_stats();
  CHECK(after.device_mallocs == before.device_mallocs);
  CHECK(after.cache_hits == before.cache_hits + 1);
  CHECK(after.bytes_in_use == before.bytes_in_use);
  CHECK(after.blocks_cached == before.blocks_cached);

  // A slightly different size falls in the same size class and reuses the block too.
  {
    Tensor t({n - 3}, Device::CUDA);
    CHECK(t.data() == first);
  }
  cuda::empty_cache();
  const cuda::AllocatorStats emptied = cuda::allocator_stats();
  CHECK(emptied.bytes_cached == 0);
  CHECK(emptied.blocks_cached == 0);
  Tensor again({n}, Device::CUDA);  // works after the cache was handed back
  check_equal("allocation after empty_cache", again.to_vector(), Vec(n, 0.0f));
}

TEST_CASE("cuda: conv2d forward, backward data, backward weights") {
  if (!gpu_present()) return;
  uint64_t seed = 10;
  for (const Conv2dParams& p : conv_shapes()) {
    check_conv_ops(p, true, seed++, 1e-3);
    check_conv_ops(p, false, seed++, 1e-3);
  }
}

TEST_CASE("cuda: conv2d in chunks of images (small workspace)") {
  if (!gpu_present()) return;
  const size_t saved = cuda::conv_workspace_limit();
  // Room for two images' columns of the stride-2 shape: chunks of 2 + 1 for N = 3.
  const Conv2dParams p = conv(3, 5, 9, 8, 6, 3, 3, 2, 1);
  cuda::set_conv_workspace_limit(size_t(2) * p.C * p.R * p.S * p.P() * p.Q() * sizeof(float));
  check_conv_ops(p, true, 100, 1e-3);
  cuda::set_conv_workspace_limit(1);  // one image at a time
  check_conv_ops(p, true, 101, 1e-3);
  check_conv_ops(conv(4, 16, 8, 8, 32, 3, 3, 1, 1), false, 102, 1e-3);
  cuda::set_conv_workspace_limit(saved);
  CHECK(cuda::conv_workspace_limit() == saved);
}

TEST_CASE("cuda: conv2d and linear with TF32 enabled") {
  if (!gpu_present()) return;
  cuda::set_tf32(true);
  CHECK(cuda::tf32());
  check_conv_ops(conv(4, 16, 8, 8, 32, 3, 3, 1, 1), true, 200, 1e-2);
  check_conv_ops(conv(2, 8, 5, 6, 7, 1, 1, 1, 0), true, 201, 1e-2);
  uint64_t seed = 210;
  for (const LinearShape s : linear_shapes()) check_linear_ops(s, true, seed++, 1e-2);
  cuda::set_tf32(false);
  CHECK(!cuda::tf32());
  check_conv_ops(conv(4, 16, 8, 8, 32, 3, 3, 1, 1), true, 202, 1e-3);
}

TEST_CASE("cuda: results are deterministic run to run") {
  if (!gpu_present()) return;
  Rng rng(300);
  const Conv2dParams p = conv(8, 16, 16, 16, 32, 3, 3, 1, 1);
  const int64_t nx = int64_t(p.N) * p.C * p.H * p.W, ny = int64_t(p.N) * p.K * p.P() * p.Q();
  const int64_t nw = int64_t(p.K) * p.C * p.R * p.S;
  Tensor x = dev(random_vec(rng, nx)), dy = dev(random_vec(rng, ny));
  Tensor dw1 = dev_garbage(nw), dw2 = dev_garbage(nw), db1 = dev_garbage(p.K), db2 = dev_garbage(p.K);
  cuda::conv2d_backward_weights(p, x.data(), dy.data(), dw1.data(), db1.data());
  cuda::conv2d_backward_weights(p, x.data(), dy.data(), dw2.data(), db2.data());
  CHECK(bitwise_equal(dw1.to_vector(), dw2.to_vector()));
  CHECK(bitwise_equal(db1.to_vector(), db2.to_vector()));

  BatchNormParams bp;
  bp.N = 16, bp.C = 8, bp.HW = 300;
  const int64_t n = int64_t(bp.N) * bp.C * bp.HW;
  Tensor bx = dev(random_vec(rng, n, -3.0f, 5.0f)), bdy = dev(random_vec(rng, n));
  Tensor gamma = dev(random_vec(rng, bp.C)), beta = dev(random_vec(rng, bp.C));
  Vec outs[2][4];
  for (int run = 0; run < 2; run++) {
    Tensor rm = Tensor::zeros({bp.C}, Device::CUDA), rv = Tensor::full({bp.C}, 1.0f, Device::CUDA);
    Tensor y = dev_garbage(n), sm = dev_garbage(bp.C), si = dev_garbage(bp.C);
    Tensor dx = dev_garbage(n), dg = dev_garbage(bp.C), dbt = dev_garbage(bp.C);
    cuda::batchnorm_forward_train(bp, bx.data(), gamma.data(), beta.data(), rm.data(), rv.data(),
                                  y.data(), sm.data(), si.data());
    cuda::batchnorm_backward(bp, bx.data(), bdy.data(), gamma.data(), sm.data(), si.data(), dx.data(),
                             dg.data(), dbt.data());
    outs[run][0] = y.to_vector(), outs[run][1] = rv.to_vector();
    outs[run][2] = dx.to_vector(), outs[run][3] = dg.to_vector();
  }
  for (int i = 0; i < 4; i++) CHECK(bitwise_equal(outs[0][i], outs[1][i]));

  const int N = 300, K = 100;
  Tensor logits = dev(random_vec(rng, int64_t(N) * K, -4.0f, 4.0f));
  Vec labels(N);
  for (float& l : labels) l = float(rng.below(K));
  Tensor dl = dev(labels);
  const float l1 = cuda::softmax_cross_entropy(N, K, logits.data(), dl.data(), 0.1f, nullptr, nullptr);
  const float l2 = cuda::softmax_cross_entropy(N, K, logits.data(), dl.data(), 0.1f, nullptr, nullptr);
  CHECK(std::memcmp(&l1, &l2, sizeof(float)) == 0);
}

TEST_CASE("cuda: linear forward and backward") {
  if (!gpu_present()) return;
  uint64_t seed = 400;
  for (const LinearShape s : linear_shapes())
    for (bool bias : {true, false}) check_linear_ops(s, bias, seed++, 1e-3);
}

TEST_CASE("cuda: batchnorm train, eval and backward") {
  if (!gpu_present()) return;
  struct Shape { int N, C, HW; };
  uint64_t seed = 500;
  for (const Shape s : {Shape{4, 3, 25}, Shape{2, 5, 1}, Shape{8, 16, 64}, Shape{3, 2, 1000}}) {
    INFO("batchnorm N=" << s.N << " C=" << s.C << " HW=" << s.HW);
    Rng rng(seed++);
    BatchNormParams p;
    p.N = s.N, p.C = s.C, p.HW = s.HW, p.eps = 1e-5f, p.momentum = 0.1f;
    const int64_t n = int64_t(s.N) * s.C * s.HW;
    Vec x(n);
    for (float& v : x) v = 3.0f + 2.0f * rng.normal();  // an offset mean: cancellation-prone
    const Vec gamma = random_vec(rng, s.C, 0.5f, 1.5f), beta = random_vec(rng, s.C);
    const Vec rm0 = random_vec(rng, s.C), rv0 = random_vec(rng, s.C, 0.5f, 1.5f);
    const Vec dy = random_vec(rng, n);

    Vec y_ref(n), rm_ref = rm0, rv_ref = rv0, sm_ref(s.C), si_ref(s.C);
    ref::batchnorm_forward_train(p, x.data(), gamma.data(), beta.data(), rm_ref.data(), rv_ref.data(),
                                 y_ref.data(), sm_ref.data(), si_ref.data());
    Vec ye_ref(n);
    ref::batchnorm_forward_eval(p, x.data(), gamma.data(), beta.data(), rm_ref.data(), rv_ref.data(),
                                ye_ref.data());
    Vec dx_ref(n), dg_ref(s.C), db_ref(s.C);
    ref::batchnorm_backward(p, x.data(), dy.data(), gamma.data(), sm_ref.data(), si_ref.data(),
                            dx_ref.data(), dg_ref.data(), db_ref.data());

    Tensor dx_ = dev(x), dg_ = dev(gamma), dbt_ = dev(beta), rm = dev(rm0), rv = dev(rv0), ddy = dev(dy);
    Tensor y = dev_garbage(n), sm = dev_garbage(s.C), si = dev_garbage(s.C);
    cuda::batchnorm_forward_train(p, dx_.data(), dg_.data(), dbt_.data(), rm.data(), rv.data(), y.data(),
                                  sm.data(), si.data());
    check_close("batchnorm_forward_train y", y.to_vector(), y_ref, 1e-5);
    check_close("batchnorm_forward_train running_mean", rm.to_vector(), rm_ref, 1e-5);
    check_close("batchnorm_forward_train running_var", rv.to_vector(), rv_ref, 1e-5);
    check_close("batchnorm_forward_train save_mean", sm.to_vector(), sm_ref, 1e-5);
    check_close("batchnorm_forward_train save_invstd", si.to_vector(), si_ref, 1e-5);

    // Eval and backward from the reference's statistics, so each op is checked on its own.
    Tensor rm_r = dev(rm_ref), rv_r = dev(rv_ref), sm_r = dev(sm_ref), si_r = dev(si_ref);
    Tensor ye = dev_garbage(n);
    cuda::batchnorm_forward_eval(p, dx_.data(), dg_.data(), dbt_.data(), rm_r.data(), rv_r.data(), ye.data());
    check_close("batchnorm_forward_eval y", ye.to_vector(), ye_ref, 1e-5);

    Tensor gx = dev_garbage(n), gg = dev_garbage(s.C), gb = dev_garbage(s.C);
    cuda::batchnorm_backward(p, dx_.data(), ddy.data(), dg_.data(), sm_r.data(), si_r.data(), gx.data(),
                             gg.data(), gb.data());
    check_close("batchnorm_backward dx", gx.to_vector(), dx_ref, 1e-5);
    check_close("batchnorm_backward dgamma", gg.to_vector(), dg_ref, 1e-5);
    check_close("batchnorm_backward dbeta", gb.to_vector(), db_ref, 1e-5);
  }

  // One value per channel has no variance to estimate: refused, as by the reference.
  BatchNormParams one;
  one.N = 1, one.C = 2, one.HW = 1;
  Tensor t = Tensor::zeros({2}, Device::CUDA);
  CHECK_THROWS_AS(cuda::batchnorm_forward_train(one, t.data(), t.data(), t.data(), t.data(), t.data(),
                                                t.data(), t.data(), t.data()),
                  Error);
}

TEST_CASE("cuda: elementwise ops are exact") {
  if (!gpu_present()) return;
  Rng rng(600);
  for (int64_t n : {int64_t(1), int64_t(1001), int64_t(3) << 20}) {
    INFO("n = " << n);
    Vec a = random_vec(rng, n), b = random_vec(rng, n);
    for (int64_t i = 0; i < n; i += 7) a[i] = 0.0f;  // relu at exactly zero
    Vec y_ref(n), dx_ref(n), add_ref(n), acc_ref = b;
    ref::relu_forward(n, a.data(), y_ref.data());
    ref::relu_backward(n, y_ref.data(), b.data(), dx_ref.data());
    ref::add_forward(n, a.data(), b.data(), add_ref.data());
    ref::accumulate(n, a.data(), acc_ref.data());

    Tensor da = dev(a), db = dev(b), y = dev_garbage(n);
    cuda::relu_forward(n, da.data(), y.data());
    check_equal("relu_forward", y.to_vector(), y_ref);
    Tensor g = dev(b);  // dx aliases dy, as the contract allows
    cuda::relu_backward(n, y.data(), g.data(), g.data());
    check_equal("relu_backward (in place)", g.to_vector(), dx_ref);
    Tensor s = dev(a);  // y aliases a
    cuda::add_forward(n, s.data(), db.data(), s.data());
    check_equal("add_forward (in place)", s.to_vector(), add_ref);
    Tensor acc = dev(b);
    cuda::accumulate(n, da.data(), acc.data());
    check_equal("accumulate", acc.to_vector(), acc_ref);

    Vec mask(n), w_ref = a;
    for (float& m : mask) m = rng.uniform() < 0.3f ? 0.0f : 1.0f;
    ref::mask_apply(n, w_ref.data(), mask.data());
    Tensor w = dev(a), dm = dev(mask);
    cuda::mask_apply(n, w.data(), dm.data());
    check_equal("mask_apply", w.to_vector(), w_ref);
  }
}

TEST_CASE("cuda: max and average pooling are exact") {
  if (!gpu_present()) return;
  struct Shape { int N, C, H, W, k, stride; };
  uint64_t seed = 700;
  for (const Shape s : {Shape{2, 3, 6, 6, 2, 2}, Shape{2, 2, 7, 9, 3, 2}, Shape{1, 3, 5, 5, 3, 1},
                        Shape{2, 2, 5, 7, 2, 3}, Shape{4, 8, 32, 32, 2, 2}}) {
    INFO("pool N=" << s.N << " C=" << s.C << " H=" << s.H << " W=" << s.W << " k=" << s.k
                   << " stride=" << s.stride);
    Rng rng(seed++);
    Pool2dParams p;
    p.N = s.N, p.C = s.C, p.H = s.H, p.W = s.W, p.k = s.k, p.stride = s.stride;
    const int64_t nx = int64_t(s.N) * s.C * s.H * s.W, ny = int64_t(s.N) * s.C * p.P() * p.Q();
    Vec x(nx);
    for (float& v : x) v = float(rng.below(4));  // few distinct values: many tied maxima
    const Vec dy = random_vec(rng, ny);

    Vec y_ref(ny), dx_ref(nx), ya_ref(ny), dxa_ref(nx);
    ref::maxpool_forward(p, x.data(), y_ref.data());
    ref::maxpool_backward(p, x.data(), dy.data(), dx_ref.data());
    ref::avgpool_forward(p, x.data(), ya_ref.data());
    ref::avgpool_backward(p, dy.data(), dxa_ref.data());

    Tensor dx_ = dev(x), ddy = dev(dy);
    Tensor y = dev_garbage(ny), gx = dev_garbage(nx), ya = dev_garbage(ny), gxa = dev_garbage(nx);
    cuda::maxpool_forward(p, dx_.data(), y.data());
    cuda::maxpool_backward(p, dx_.data(), ddy.data(), gx.data());
    cuda::avgpool_forward(p, dx_.data(), ya.data());
    cuda::avgpool_backward(p, ddy.data(), gxa.data());
    check_equal("maxpool_forward", y.to_vector(), y_ref);
    check_equal("maxpool_backward (first maximum wins)", gx.to_vector(), dx_ref);
    check_equal("avgpool_forward", ya.to_vector(), ya_ref);
    check_equal("avgpool_backward", gxa.to_vector(), dxa_ref);
  }
}

TEST_CASE("cuda: global average pooling") {
  if (!gpu_present()) return;
  struct Shape { int N, C, HW; };
  uint64_t seed = 800;
  for (const Shape s : {Shape{2, 3, 1}, Shape{3, 5, 49}, Shape{16, 64, 64}, Shape{2, 2, 1000}}) {
    INFO("global_avgpool N=" << s.N << " C=" << s.C << " HW=" << s.HW);
    Rng rng(seed++);
    const int64_t nx = int64_t(s.N) * s.C * s.HW, ny = int64_t(s.N) * s.C;
    const Vec x = random_vec(rng, nx), dy = random_vec(rng, ny);
    Vec y_ref(ny), dx_ref(nx);
    ref::global_avgpool_forward(s.N, s.C, s.HW, x.data(), y_ref.data());
    ref::global_avgpool_backward(s.N, s.C, s.HW, dy.data(), dx_ref.data());
    Tensor dx_ = dev(x), ddy = dev(dy), y = dev_garbage(ny), gx = dev_garbage(nx);
    cuda::global_avgpool_forward(s.N, s.C, s.HW, dx_.data(), y.data());
    cuda::global_avgpool_backward(s.N, s.C, s.HW, ddy.data(), gx.data());
    check_close("global_avgpool_forward", y.to_vector(), y_ref, 1e-5);
    check_equal("global_avgpool_backward", gx.to_vector(), dx_ref);
  }
}

TEST_CASE("cuda: softmax cross-entropy") {
  if (!gpu_present()) return;
  struct Shape { int N, K; };
  uint64_t seed = 900;
  for (const Shape s : {Shape{37, 10}, Shape{5, 1}, Shape{64, 100}, Shape{3, 1000}}) {
    for (float smoothing : {0.0f, 0.1f}) {
      INFO("softmax_cross_entropy N=" << s.N << " K=" << s.K << " smoothing=" << smoothing);
      Rng rng(seed++);
      Vec z = random_vec(rng, int64_t(s.N) * s.K, -6.0f, 6.0f);
      Vec labels(s.N);
      for (int n = 0; n < s.N; n++) {
        labels[n] = float(rng.below(uint32_t(s.K)));
        if (s.K > 7 && n % 3 == 0) {  // a tied maximum: the first one is the argmax
          z[size_t(n) * s.K + 2] = 9.0f;
          z[size_t(n) * s.K + 7] = 9.0f;
          labels[n] = (n % 2) ? 2.0f : 7.0f;
        }
      }
      Vec dz_ref(z.size());
      int correct_ref = -1;
      const float loss_ref = ref::softmax_cross_entropy(s.N, s.K, z.data(), labels.data(), smoothing,
                                                        dz_ref.data(), &correct_ref);
      Tensor dz_ = dev(z), dl = dev(labels), dz = dev_garbage(int64_t(z.size()));
      int correct = -1;
      const float loss = cuda::softmax_cross_entropy(s.N, s.K, dz_.data(), dl.data(), smoothing,
                                                     dz.data(), &correct);
      CHECK(correct == correct_ref);
      check_close("softmax_cross_entropy loss", {loss}, {loss_ref}, 1e-5);
      check_close("softmax_cross_entropy dlogits", dz.to_vector(), dz_ref, 1e-5);
      // Without the optional outputs.
      const float loss2 = cuda::softmax_cross_entropy(s.N, s.K, dz_.data(), dl.data(), smoothing,
                                                      nullptr, nullptr);
      CHECK(loss2 == loss);
    }
  }

  // Labels that are not class indices are refused with an error naming the row.
  Tensor z = dev(Vec(3 * 4, 0.5f));
  for (float bad : {4.0f, -1.0f, 1.5f}) {
    Tensor labels = dev({0.0f, bad, 1.0f});
    CHECK_THROWS_WITH_AS(cuda::softmax_cross_entropy(3, 4, z.data(), labels.data(), 0.0f, nullptr, nullptr),
                         doctest::Contains("row 1"), Error);
  }
}

TEST_CASE("cuda: SGD update") {
  if (!gpu_present()) return;
  Rng rng(1000);
  const int64_t n = 1001;
  SgdParams configs[4];
  configs[0].lr = 0.1f, configs[0].momentum = 0.9f, configs[0].weight_decay = 5e-4f, configs[0].nesterov = false;
  configs[1].lr = 0.05f, configs[1].momentum = 0.9f, configs[1].weight_decay = 1e-3f, configs[1].nesterov = true;
  configs[2].lr = 0.01f, configs[2].momentum = 0.0f, configs[2].weight_decay = 0.0f, configs[2].nesterov = false;
  configs[3].lr = 0.2f, configs[3].momentum = 0.5f, configs[3].weight_decay = 0.0f, configs[3].nesterov = true;
  for (const SgdParams& p : configs) {
    INFO("sgd lr=" << p.lr << " momentum=" << p.momentum << " wd=" << p.weight_decay
                   << " nesterov=" << p.nesterov);
    Vec w_ref = random_vec(rng, n), buf_ref(n, 0.0f);
    Tensor w = dev(w_ref), buf = Tensor::zeros({n}, Device::CUDA);
    for (int step = 0; step < 3; step++) {
      const Vec g = random_vec(rng, n);
      ref::sgd_update(p, n, w_ref.data(), g.data(), buf_ref.data());
      Tensor dg = dev(g);
      cuda::sgd_update(p, n, w.data(), dg.data(), buf.data());
    }
    check_close("sgd_update w", w.to_vector(), w_ref, 1e-6);
    check_close("sgd_update momentum buffer", buf.to_vector(), buf_ref, 1e-6);
  }
}

TEST_CASE("cuda: ops dispatch CUDA tensors to the CUDA backend") {
  if (!gpu_present()) return;
  Rng rng(1100);
  const Conv2dParams p = conv(2, 3, 7, 5, 4, 3, 3, 2, 1);
  const Tensor x = Tensor::from({p.N, p.C, p.H, p.W}, random_vec(rng, int64_t(p.N) * p.C * p.H * p.W));
  const Tensor w = Tensor::from({p.K, p.C, p.R, p.S}, random_vec(rng, int64_t(p.K) * p.C * p.R * p.S));
  const Tensor b = Tensor::from({p.K}, random_vec(rng, p.K));
  Tensor y_ref({p.N, p.K, p.P(), p.Q()});
  ref::conv2d_forward(p, x.data(), w.data(), b.data(), y_ref.data());
  Tensor y({p.N, p.K, p.P(), p.Q()}, Device::CUDA);
  ops::conv2d_forward(p, x.to(Device::CUDA), w.to(Device::CUDA), b.to(Device::CUDA), y);
  check_close("ops::conv2d_forward on CUDA tensors", y.to_vector(), y_ref.to_vector(), 1e-3);
  Tensor r({p.N, p.K, p.P(), p.Q()}, Device::CUDA);
  ops::relu_forward(y, r);
  Tensor r_ref({p.N, p.K, p.P(), p.Q()});
  ref::relu_forward(r_ref.numel(), y.to(Device::CPU).data(), r_ref.data());
  check_equal("ops::relu_forward on CUDA tensors", r.to_vector(), r_ref.to_vector());
}

TEST_CASE("cuda: a compact ResNet (border tables, channel-mapped adds) gives the CPU's logits") {
  if (!gpu_present()) return;
  Rng rng(9);
  Model m = build_model("resnet20");
  init_model(m, rng);
  dnns::testing::randomize_batchnorm(m, rng);
  dnns::testing::random_masks(m, rng, 0.4f, 0.5f);
  Model c = compact_model(m);
  int tables = 0, mapped = 0;
  for (const Node& n : c.nodes()) {
    if (auto* cv = dynamic_cast<const Conv2d*>(n.layer.get())) tables += cv->pos_h > 0;
    if (auto* a = dynamic_cast<const Add*>(n.layer.get())) mapped += a->mapped();
  }
  REQUIRE(tables > 0);
  REQUIRE(mapped > 0);
  Tensor x = dnns::testing::random_images(3, {3, 32, 32}, rng);
  Tensor want = c.forward(x, false);
  c.to(Device::CUDA);
  Tensor got = c.forward(x.to(Device::CUDA), false).to(Device::CPU);
  CHECK(max_abs_diff(want, got) <= 1e-4f);
}

#endif  // DNNS_HAVE_CUDA
