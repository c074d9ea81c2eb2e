// Every op except convolution and linear: the optimized CPU kernels against the reference on
// seeded random inputs (odd shapes, ties, shapes large enough to be split across threads), and
// the reference against hand-computed values and finite differences.
//
// Tolerances (|got - want| <= atol + rtol * |want|, per element):
//   elementwise, mask, maxpool fwd/bwd, argmax counts: exact (same float operations)
//   sgd: rtol 1e-6 (the compiler may contract a*b+c into an FMA in one backend only)
//   avg/global pooling: 1e-6 abs+rel (float vs double sums of <= 9 or HW values)
//   batchnorm outputs, dx, saved/running statistics: 1e-5 abs + 1e-5 rel (O(1) values, float
//     rounding only); dgamma/dbeta: 1e-5 * sqrt(N*HW) abs + 1e-5 rel (sums in double in both)
//   softmax CE: loss 1e-6 rel, dlogits 1e-7 abs + 1e-5 rel
//   reference vs hand / finite differences: stated at each check.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "kernels/cpu/cpu.h"
#include "kernels/cpu/isa.h"
#include "kernels/ops.h"
#include "kernels/ref/ref.h"
#include "tests/test_util.h"

using namespace dnns;
using dnns::testing::randn;
using Vec = std::vector<float>;

namespace {

// Checks |got - want| <= atol + rtol * |want| everywhere; reports the worst element.
void check_close(const Vec& got, const Vec& want, double atol, double rtol, const std::string& what) {
  REQUIRE(got.size() == want.size());
  double worst = 0.0;
  size_t worst_i = 0;
  bool ok = true;
  for (size_t i = 0; i < got.size(); i++) {
    const double err = std::fabs(double(got[i]) - double(want[i]));
    const double excess = err - (atol + rtol * std::fabs(double(want[i])));
    if (!(excess <= 0.0)) ok = false;  // also catches NaN
    if (!(excess <= worst)) worst = excess, worst_i = i;
  }
  INFO(what << ": worst element " << worst_i << " got " << got[worst_i] << " want " << want[worst_i]);
  CHECK(ok);
}

void check_equal(const Vec& got, const Vec& want, const std::string& what) {
  check_close(got, want, 0.0, 0.0, what);
}

bool bitwise_equal(const Vec& a, const Vec& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// Double-precision batchnorm forward (training mode) for finite differences: y (N, C, HW).
std::vector<double> bn_forward_double(int N, int C, int HW, double eps, const std::vector<double>& x,
                                      const std::vector<double>& gamma, const std::vector<double>& beta) {
  std::vector<double> y(x.size());
  const double M = double(N) * HW;
  for (int c = 0; c < C; c++) {
    double mean = 0.0, var = 0.0;
    for (int n = 0; n < N; n++)
      for (int i = 0; i < HW; i++) mean += x[(size_t(n) * C + c) * HW + i];
    mean /= M;
    for (int n = 0; n < N; n++)
      for (int i = 0; i < HW; i++) {
        const double d = x[(size_t(n) * C + c) * HW + i] - mean;
        var += d * d;
      }
    var /= M;
    for (int n = 0; n < N; n++)
      for (int i = 0; i < HW; i++) {
        const size_t at = (size_t(n) * C + c) * HW + i;
        y[at] = gamma[c] * (x[at] - mean) / std::sqrt(var + eps) + beta[c];
      }
  }
  return y;
}

}  // namespace

// ------------------------------------------------------------------------------------------
// elementwise, masks
// ------------------------------------------------------------------------------------------

TEST_CASE("elementwise ops: cpu equals ref, including aliasing and sizes split across threads") {
  Rng rng(1);
  for (int64_t n : {int64_t(1), int64_t(35), int64_t(1000), int64_t(100003)}) {
    CAPTURE(n);
    Vec x = randn(rng, n), dy = randn(rng, n), b = randn(rng, n);
    x[0] = 0.0f;  // relu at exactly zero: output 0, gradient blocked

    Vec y_ref(n), y_cpu(n);
    ref::relu_forward(n, x.data(), y_ref.data());
    cpu::relu_forward(n, x.data(), y_cpu.data());
    check_equal(y_cpu, y_ref, "relu_forward");
    for (int64_t i = 0; i < n; i++) REQUIRE(y_ref[i] == std::max(x[i], 0.0f));

    Vec dx_ref(n), dx_cpu(n);
    ref::relu_backward(n, y_ref.data(), dy.data(), dx_ref.data());
    cpu::relu_backward(n, y_ref.data(), dy.data(), dx_cpu.data());
    check_equal(dx_cpu, dx_ref, "relu_backward");
    CHECK(dx_ref[0] == 0.0f);
    for (int64_t i = 0; i < n; i++) REQUIRE(dx_ref[i] == (x[i] > 0.0f ? dy[i] : 0.0f));
    Vec inplace = dy;  // dx aliasing dy
    cpu::relu_backward(n, y_ref.data(), inplace.data(), inplace.data());
    check_equal(inplace, dx_ref, "relu_backward in place (cpu)");
    inplace = dy;
    ref::relu_backward(n, y_ref.data(), inplace.data(), inplace.data());
    check_equal(inplace, dx_ref, "relu_backward in place (ref)");

    Vec s_ref(n), s_cpu(n);
    ref::add_forward(n, x.data(), b.data(), s_ref.data());
    cpu::add_forward(n, x.data(), b.data(), s_cpu.data());
    check_equal(s_cpu, s_ref, "add_forward");
    for (int64_t i = 0; i < n; i++) REQUIRE(s_ref[i] == x[i] + b[i]);
    Vec alias_a = x, alias_b = b;  // y aliasing a, then y aliasing b
    cpu::add_forward(n, alias_a.data(), b.data(), alias_a.data());
    cpu::add_forward(n, x.data(), alias_b.data(), alias_b.data());
    check_equal(alias_a, s_ref, "add_forward y == a");
    check_equal(alias_b, s_ref, "add_forward y == b");

    Vec acc_ref = b, acc_cpu = b;
    ref::accumulate(n, x.data(), acc_ref.data());
    cpu::accumulate(n, x.data(), acc_cpu.data());
    check_equal(acc_cpu, acc_ref, "accumulate");
    check_equal(acc_ref, s_ref, "accumulate vs add");

    // The residual fusions: add then ReLU in one pass; a ReLU's backward of a two-part gradient.
    Vec r_ref(n), r_cpu(n);
    ref::add_relu_forward(n, x.data(), b.data(), r_ref.data());
    cpu::add_relu_forward(n, x.data(), b.data(), r_cpu.data());
    check_equal(r_cpu, r_ref, "add_relu_forward");
    for (int64_t i = 0; i < n; i++) REQUIRE(r_ref[i] == std::max(x[i] + b[i], 0.0f));
    Vec ra = x, rb = b;  // y aliasing a, then b
    cpu::add_relu_forward(n, ra.data(), b.data(), ra.data());
    cpu::add_relu_forward(n, x.data(), rb.data(), rb.data());
    check_equal(ra, r_ref, "add_relu_forward y == a");
    check_equal(rb, r_ref, "add_relu_forward y == b");
    Vec g_ref(n), g_cpu(n);
    ref::relu_backward_sum(n, r_ref.data(), dy.data(), b.data(), g_ref.data());
    cpu::relu_backward_sum(n, r_ref.data(), dy.data(), b.data(), g_cpu.data());
    check_equal(g_cpu, g_ref, "relu_backward_sum");
    for (int64_t i = 0; i < n; i++) REQUIRE(g_ref[i] == (r_ref[i] > 0.0f ? dy[i] + b[i] : 0.0f));
    Vec g2 = b;  // dx aliasing the second part, as Model::backward calls it
    cpu::relu_backward_sum(n, r_ref.data(), dy.data(), g2.data(), g2.data());
    check_equal(g2, g_ref, "relu_backward_sum dx == dy2");
    Vec g1 = dy;  // dx aliasing the first part
    cpu::relu_backward_sum(n, r_ref.data(), g1.data(), b.data(), g1.data());
    check_equal(g1, g_ref, "relu_backward_sum dx == dy1");
  }
}

TEST_CASE("mask_apply: cpu equals ref and zeroes exactly the masked weights") {
  Rng rng(2);
  for (int64_t n : {int64_t(7), int64_t(70001)}) {
    Vec w = randn(rng, n), mask(n);
    for (auto& m : mask) m = rng.uniform() < 0.3f ? 0.0f : 1.0f;
    Vec w_ref = w, w_cpu = w;
    ref::mask_apply(n, w_ref.data(), mask.data());
    cpu::mask_apply(n, w_cpu.data(), mask.data());
    check_equal(w_cpu, w_ref, "mask_apply");
    for (int64_t i = 0; i < n; i++) {
      REQUIRE(w_ref[i] == (mask[i] != 0.0f ? w[i] : 0.0f));
      // A pruned weight is +0.0, never -0.0 (sparse storage keeps only the +0.0 implicit).
      if (mask[i] == 0.0f) REQUIRE((!std::signbit(w_ref[i]) && !std::signbit(w_cpu[i])));
    }
  }
}

// ------------------------------------------------------------------------------------------
// SGD
// ------------------------------------------------------------------------------------------

TEST_CASE("sgd_update: cpu matches ref over several steps for every option") {
  Rng rng(3);
  const int64_t n = 100003;
  for (float momentum : {0.0f, 0.9f})
    for (bool nesterov : {false, true})
      for (float wd : {0.0f, 5e-4f}) {
        CAPTURE(momentum);
        CAPTURE(nesterov);
        CAPTURE(wd);
        SgdParams p;
        p.lr = 0.05f, p.momentum = momentum, p.nesterov = nesterov, p.weight_decay = wd;
        Vec w = randn(rng, n), buf(n, 0.0f);
        Vec w_ref = w, w_cpu = w, b_ref = buf, b_cpu = buf;
        for (int step = 0; step < 4; step++) {
          Vec g = randn(rng, n);
          ref::sgd_update(p, n, w_ref.data(), g.data(), b_ref.data());
          cpu::sgd_update(p, n, w_cpu.data(), g.data(), b_cpu.data());
        }
        check_close(w_cpu, w_ref, 0.0, 1e-6, "sgd weights");
        check_close(b_cpu, b_ref, 0.0, 1e-6, "sgd momentum buffer");
      }
}

TEST_CASE("sgd_update: reference follows PyTorch's rule, checked against hand-computed steps") {
  // One weight, w0 = 1, constant gradient 0.5, lr 0.1; expected values worked out by hand from
  // buf = m*buf + g', step = nesterov ? g' + m*buf : buf, w -= lr*step. Tolerance 1e-6.
  struct Case {
    float momentum, wd;
    bool nesterov;
    float g;
    double w[3];
  };
  const Case cases[] = {
      // plain momentum: buf 0.5, 0.95, 1.355 -> w 0.95, 0.855, 0.7195
      {0.9f, 0.0f, false, 0.5f, {0.95, 0.855, 0.7195}},
      // nesterov: steps 0.95, 1.355, 1.7195 -> w 0.905, 0.7695, 0.59755
      {0.9f, 0.0f, true, 0.5f, {0.905, 0.7695, 0.59755}},
      // weight decay alone (g = 0, no momentum): w *= (1 - lr*wd) = 0.99 each step
      {0.0f, 0.1f, false, 0.0f, {0.99, 0.9801, 0.970299}},
      // momentum + decay: g' = 0.6, buf 0.6, w 0.94; g' = 0.594, buf 1.134, w 0.8266;
      // g' = 0.58266, buf 1.60326, w 0.666274
      {0.9f, 0.1f, false, 0.5f, {0.94, 0.8266, 0.666274}},
  };
  for (const Case& c : cases) {
    SgdParams p;
    p.lr = 0.1f, p.momentum = c.momentum, p.weight_decay = c.wd, p.nesterov = c.nesterov;
    for (int backend = 0; backend < 2; backend++) {
      CAPTURE(backend);
      float w = 1.0f, buf = 0.0f;
      for (int step = 0; step < 3; step++) {
        if (backend == 0) ref::sgd_update(p, 1, &w, &c.g, &buf);
        else cpu::sgd_update(p, 1, &w, &c.g, &buf);
        CHECK(w == doctest::Approx(c.w[step]).epsilon(1e-6));
      }
    }
  }
}

// ------------------------------------------------------------------------------------------
// batchnorm
// ------------------------------------------------------------------------------------------

TEST_CASE("batchnorm: cpu matches ref on every ISA path (train forward, running stats over steps, eval, backward)") {
  const testing::ScopedKernelChoice restore;
  Rng rng(4);
  struct Shape {
    int N, C, HW;
  };
  for (int isa = (int)cpu::best_cpu_isa(); isa >= 0; --isa) {
    cpu::set_cpu_isa((cpu::Isa)isa);
    INFO("isa " << std::string(cpu::isa_name((cpu::Isa)isa)));
    // odd shapes (rows of 35 and 13: whole 8-float chunks and a tail); the last two are large
    // enough to be split across threads
    for (Shape s : {Shape{1, 3, 35}, Shape{5, 3, 35}, Shape{8, 4, 1}, Shape{3, 2, 13}, Shape{4, 16, 64},
                    Shape{16, 8, 1024}}) {
      CAPTURE(s.N);
      CAPTURE(s.C);
      CAPTURE(s.HW);
      BatchNormParams p;
      p.N = s.N, p.C = s.C, p.HW = s.HW;
      const int64_t n = int64_t(s.N) * s.C * s.HW;
      Vec gamma = randn(rng, s.C, 1.0f, 0.3f), beta = randn(rng, s.C, 0.0f, 0.5f);
      Vec rm_ref(s.C, 0.0f), rv_ref(s.C, 1.0f), rm_cpu = rm_ref, rv_cpu = rv_ref;
      Vec x, y_ref(n), y_cpu(n), sm_ref(s.C), si_ref(s.C), sm_cpu(s.C), si_cpu(s.C);
      for (int step = 0; step < 3; step++) {
        // off-centre so the mean matters; one step with a variance near eps so eps matters
        x = randn(rng, n, 0.7f, step == 1 ? 0.01f : 2.0f);
        ref::batchnorm_forward_train(p, x.data(), gamma.data(), beta.data(), rm_ref.data(), rv_ref.data(),
                                     y_ref.data(), sm_ref.data(), si_ref.data());
        cpu::batchnorm_forward_train(p, x.data(), gamma.data(), beta.data(), rm_cpu.data(), rv_cpu.data(),
                                     y_cpu.data(), sm_cpu.data(), si_cpu.data());
        check_close(y_cpu, y_ref, 1e-5, 1e-5, "batchnorm train y");
        check_close(sm_cpu, sm_ref, 1e-5, 1e-5, "batchnorm save_mean");
        check_close(si_cpu, si_ref, 1e-5, 1e-5, "batchnorm save_invstd");
      }
      check_close(rm_cpu, rm_ref, 1e-5, 1e-5, "batchnorm running_mean after 3 steps");
      check_close(rv_cpu, rv_ref, 1e-5, 1e-5, "batchnorm running_var after 3 steps");

      Vec e_ref(n), e_cpu(n);
      BatchNormParams pe = p;
      pe.eps = 0.1f;  // large enough that dropping or misplacing eps would show
      ref::batchnorm_forward_eval(pe, x.data(), gamma.data(), beta.data(), rm_ref.data(), rv_ref.data(), e_ref.data());
      cpu::batchnorm_forward_eval(pe, x.data(), gamma.data(), beta.data(), rm_ref.data(), rv_ref.data(), e_cpu.data());
      check_close(e_cpu, e_ref, 1e-5, 1e-5, "batchnorm eval y");

      Vec dy = randn(rng, n);
      Vec dx_ref(n), dx_cpu(n), dg_ref(s.C), db_ref(s.C), dg_cpu(s.C), db_cpu(s.C);
      ref::batchnorm_backward(p, x.data(), dy.data(), gamma.data(), sm_ref.data(), si_ref.data(), dx_ref.data(),
                              dg_ref.data(), db_ref.data());
      cpu::batchnorm_backward(p, x.data(), dy.data(), gamma.data(), sm_ref.data(), si_ref.data(), dx_cpu.data(),
                              dg_cpu.data(), db_cpu.data());
      check_close(dx_cpu, dx_ref, 1e-5, 1e-5, "batchnorm dx");
      // dgamma, dbeta are sums of N*HW terms of size O(1): tolerance relative to sqrt(N*HW)
      const double sum_tol = 1e-5 * std::sqrt(double(s.N) * s.HW) + 1e-6;
      check_close(dg_cpu, dg_ref, sum_tol, 1e-5, "batchnorm dgamma");
      check_close(db_cpu, db_ref, sum_tol, 1e-5, "batchnorm dbeta");

      // Deterministic for a fixed thread count: a second run is bit-identical.
      Vec dx2(n), dg2(s.C), db2(s.C), y2(n), sm2(s.C), si2(s.C), rm2 = rm_cpu, rv2 = rv_cpu;
      cpu::batchnorm_backward(p, x.data(), dy.data(), gamma.data(), sm_ref.data(), si_ref.data(), dx2.data(),
                              dg2.data(), db2.data());
      CHECK(bitwise_equal(dx2, dx_cpu));
      CHECK(bitwise_equal(dg2, dg_cpu));
      Vec rm3 = rm_cpu, rv3 = rv_cpu, y3(n), sm3(s.C), si3(s.C);
      cpu::batchnorm_forward_train(p, x.data(), gamma.data(), beta.data(), rm2.data(), rv2.data(), y2.data(),
                                   sm2.data(), si2.data());
      cpu::batchnorm_forward_train(p, x.data(), gamma.data(), beta.data(), rm3.data(), rv3.data(), y3.data(),
                                   sm3.data(), si3.data());
      CHECK(bitwise_equal(y2, y3));
      CHECK(bitwise_equal(rv2, rv3));
    }
  }
}

// The fused batchnorm + ReLU of training: on every ISA path, the optimized kernels against the
// reference pair and against the unfused composition (batchnorm, then ReLU; ReLU backward,
// then batchnorm backward); masked elements get exactly zero gradient through the ReLU.
TEST_CASE("batchnorm + ReLU fused: every ISA path matches ref and the unfused ops") {
  const testing::ScopedKernelChoice restore;
  Rng rng(41);
  struct Shape {
    int N, C, HW;
  };
  for (int isa = (int)cpu::best_cpu_isa(); isa >= 0; --isa) {
    cpu::set_cpu_isa((cpu::Isa)isa);
    INFO("isa " << std::string(cpu::isa_name((cpu::Isa)isa)));
    for (Shape s : {Shape{1, 3, 35}, Shape{5, 3, 13}, Shape{4, 16, 64}, Shape{16, 8, 1024}}) {
      CAPTURE(s.N);
      CAPTURE(s.C);
      CAPTURE(s.HW);
      BatchNormParams p;
      p.N = s.N, p.C = s.C, p.HW = s.HW;
      const int64_t n = int64_t(s.N) * s.C * s.HW;
      // beta around 0 so that both sides of the ReLU are well populated in every channel
      Vec gamma = randn(rng, s.C, 1.0f, 0.3f), beta = randn(rng, s.C, 0.0f, 0.5f);
      Vec x = randn(rng, n, 0.7f, 2.0f), dy = randn(rng, n);
      Vec rm_f(s.C, 0.0f), rv_f(s.C, 1.0f), rm_u = rm_f, rv_u = rv_f, rm_r = rm_f, rv_r = rv_f;
      Vec y_f(n), y_u(n), y_r(n), sm_f(s.C), si_f(s.C), sm_u(s.C), si_u(s.C), sm_r(s.C), si_r(s.C);
      cpu::batchnorm_forward_train_relu(p, x.data(), gamma.data(), beta.data(), rm_f.data(), rv_f.data(), y_f.data(),
                                        sm_f.data(), si_f.data());
      ref::batchnorm_forward_train_relu(p, x.data(), gamma.data(), beta.data(), rm_r.data(), rv_r.data(), y_r.data(),
                                        sm_r.data(), si_r.data());
      cpu::batchnorm_forward_train(p, x.data(), gamma.data(), beta.data(), rm_u.data(), rv_u.data(), y_u.data(),
                                   sm_u.data(), si_u.data());
      cpu::relu_forward(n, y_u.data(), y_u.data());
      check_close(y_f, y_r, 1e-5, 1e-5, "fused y vs ref");
      check_close(y_f, y_u, 1e-5, 1e-5, "fused y vs unfused");
      int64_t zeros = 0;
      for (float v : y_f) zeros += v == 0.0f;
      CHECK(zeros > n / 5);  // the ReLU did cut (the test data straddles zero)
      CHECK(zeros < n * 4 / 5);
      check_equal(sm_f, sm_u, "fused save_mean");
      check_equal(si_f, si_u, "fused save_invstd");
      check_equal(rm_f, rm_u, "fused running_mean");
      check_equal(rv_f, rv_u, "fused running_var");

      Vec dx_f(n), dx_r(n), dx_u(n), g(n), dg_f(s.C), db_f(s.C), dg_r(s.C), db_r(s.C), dg_u(s.C), db_u(s.C);
      cpu::batchnorm_backward_relu(p, x.data(), dy.data(), gamma.data(), beta.data(), sm_f.data(), si_f.data(),
                                   dx_f.data(), dg_f.data(), db_f.data());
      ref::batchnorm_backward_relu(p, x.data(), dy.data(), gamma.data(), beta.data(), sm_f.data(), si_f.data(),
                                   dx_r.data(), dg_r.data(), db_r.data());
      cpu::relu_backward(n, y_f.data(), dy.data(), g.data());  // the mask from the fused forward's output
      cpu::batchnorm_backward(p, x.data(), g.data(), gamma.data(), sm_f.data(), si_f.data(), dx_u.data(),
                              dg_u.data(), db_u.data());
      const double sum_tol = 1e-5 * std::sqrt(double(s.N) * s.HW) + 1e-6;
      check_close(dx_f, dx_r, 1e-5, 1e-5, "fused dx vs ref");
      check_close(dg_f, dg_r, sum_tol, 1e-5, "fused dgamma vs ref");
      check_close(db_f, db_r, sum_tol, 1e-5, "fused dbeta vs ref");
      // Against the unfused pair fed the fused forward's own mask: the same arithmetic, so
      // only the order of the double sums can differ.
      check_close(dx_f, dx_u, 1e-6, 1e-6, "fused dx vs unfused");
      check_close(dg_f, dg_u, sum_tol, 1e-6, "fused dgamma vs unfused");
      check_close(db_f, db_u, sum_tol, 1e-6, "fused dbeta vs unfused");
    }
  }
}

TEST_CASE("batchnorm reference: hand-computed example and running statistics") {
  // One channel holding 1, 2 (image 0) and 3, 4 (image 1): mean 2.5, biased var 1.25,
  // unbiased var 5/3. eps = 0 so the output is exactly (x - 2.5) / sqrt(1.25).
  BatchNormParams p;
  p.N = 2, p.C = 1, p.HW = 2, p.eps = 0.0f, p.momentum = 0.1f;
  const Vec x = {1, 2, 3, 4};
  const float gamma = 1.0f, beta = 0.0f;
  for (int backend = 0; backend < 2; backend++) {
    CAPTURE(backend);
    float rm = 0.0f, rv = 1.0f, sm, si;
    Vec y(4);
    auto train = backend == 0 ? ref::batchnorm_forward_train : cpu::batchnorm_forward_train;
    train(p, x.data(), &gamma, &beta, &rm, &rv, y.data(), &sm, &si);
    for (int i = 0; i < 4; i++) CHECK(y[i] == doctest::Approx((x[i] - 2.5) / std::sqrt(1.25)).epsilon(1e-6));
    CHECK(sm == doctest::Approx(2.5).epsilon(1e-7));
    CHECK(si == doctest::Approx(1.0 / std::sqrt(1.25)).epsilon(1e-6));
    CHECK(rm == doctest::Approx(0.25).epsilon(1e-6));               // 0.9*0 + 0.1*2.5
    CHECK(rv == doctest::Approx(0.9 + 0.1 * 5.0 / 3.0).epsilon(1e-6));  // unbiased
    // Training with one value per channel has no variance: refused, as PyTorch does.
    BatchNormParams one = p;
    one.N = 1, one.HW = 1;
    CHECK_THROWS_WITH_AS(train(one, x.data(), &gamma, &beta, &rm, &rv, y.data(), &sm, &si),
                         doctest::Contains("need more than 1 value per channel to train, got N*HW = 1"), Error);
  }
}

TEST_CASE("batchnorm reference: zero mean / unit variance per channel, running stats over steps") {
  Rng rng(5);
  BatchNormParams p;
  p.N = 5, p.C = 3, p.HW = 35, p.momentum = 0.1f;
  const int M = p.N * p.HW;
  const int64_t n = int64_t(M) * p.C;
  Vec gamma(p.C, 1.0f), beta(p.C, 0.0f), rm(p.C, 0.0f), rv(p.C, 1.0f), y(n), sm(p.C), si(p.C);
  std::vector<double> want_rm(p.C, 0.0), want_rv(p.C, 1.0);
  for (int step = 0; step < 4; step++) {
    Vec x = randn(rng, n, 3.0f, 2.5f);
    ref::batchnorm_forward_train(p, x.data(), gamma.data(), beta.data(), rm.data(), rv.data(), y.data(),
                                 sm.data(), si.data());
    for (int c = 0; c < p.C; c++) {
      double xs = 0, xss = 0, ys = 0, yss = 0;
      for (int b = 0; b < p.N; b++)
        for (int i = 0; i < p.HW; i++) {
          const int64_t at = (int64_t(b) * p.C + c) * p.HW + i;
          xs += x[at], xss += double(x[at]) * x[at], ys += y[at], yss += double(y[at]) * y[at];
        }
      const double mean = xs / M, var_biased = xss / M - mean * mean;
      // normalised output: mean 0 (1e-5), biased variance var/(var+eps) ~ 1 (1e-4)
      CHECK(std::fabs(ys / M) < 1e-5);
      CHECK(yss / M - (ys / M) * (ys / M) == doctest::Approx(var_biased / (var_biased + p.eps)).epsilon(1e-4));
      want_rm[c] = 0.9 * want_rm[c] + 0.1 * mean;
      want_rv[c] = 0.9 * want_rv[c] + 0.1 * var_biased * M / (M - 1);
    }
  }
  for (int c = 0; c < p.C; c++) {
    CHECK(rm[c] == doctest::Approx(want_rm[c]).epsilon(1e-5));
    CHECK(rv[c] == doctest::Approx(want_rv[c]).epsilon(1e-5));
  }
}

TEST_CASE("batchnorm reference backward equals finite differences of a scalar loss in double") {
  // L = sum(r * y) with fixed random r; central differences (h = 1e-5) of a double-precision
  // forward against the float backward: tolerance 1e-5 abs + 1e-4 rel.
  Rng rng(6);
  const int N = 3, C = 2, HW = 5;
  const int64_t n = int64_t(N) * C * HW;
  BatchNormParams p;
  p.N = N, p.C = C, p.HW = HW, p.eps = 1e-5f;
  Vec x = randn(rng, n, 0.5f, 1.5f), r = randn(rng, n), gamma = randn(rng, C, 1.0f, 0.5f), beta = randn(rng, C);
  std::vector<double> xd(x.begin(), x.end()), gd(gamma.begin(), gamma.end()), bd(beta.begin(), beta.end());
  auto loss = [&](const std::vector<double>& xv, const std::vector<double>& gv, const std::vector<double>& bv) {
    const std::vector<double> y = bn_forward_double(N, C, HW, double(p.eps), xv, gv, bv);
    double L = 0.0;
    for (int64_t i = 0; i < n; i++) L += double(r[i]) * y[i];
    return L;
  };
  const double h = 1e-5;
  auto fd = [&](std::vector<double>& v, size_t i) {
    const double keep = v[i];
    v[i] = keep + h;
    const double up = loss(xd, gd, bd);
    v[i] = keep - h;
    const double down = loss(xd, gd, bd);
    v[i] = keep;
    return float((up - down) / (2 * h));
  };

  Vec rm(C, 0.0f), rv(C, 1.0f), y(n), sm(C), si(C), dx(n), dg(C), db(C);
  ref::batchnorm_forward_train(p, x.data(), gamma.data(), beta.data(), rm.data(), rv.data(), y.data(), sm.data(),
                               si.data());
  ref::batchnorm_backward(p, x.data(), r.data(), gamma.data(), sm.data(), si.data(), dx.data(), dg.data(), db.data());
  Vec dx_fd(n), dg_fd(C), db_fd(C);
  for (int64_t i = 0; i < n; i++) dx_fd[i] = fd(xd, size_t(i));
  for (int c = 0; c < C; c++) dg_fd[c] = fd(gd, c), db_fd[c] = fd(bd, c);
  check_close(dx, dx_fd, 1e-5, 1e-4, "batchnorm dx vs finite differences");
  check_close(dg, dg_fd, 1e-5, 1e-4, "batchnorm dgamma vs finite differences");
  check_close(db, db_fd, 1e-5, 1e-4, "batchnorm dbeta vs finite differences");
}

// ------------------------------------------------------------------------------------------
// pooling
// ------------------------------------------------------------------------------------------

TEST_CASE("pooling: cpu matches ref for k2s2, k3s2, k2s1, odd sizes, ties, and threads") {
  Rng rng(7);
  struct Cfg {
    int N, C, H, W, k, s;
  };
  const Cfg cfgs[] = {{1, 3, 8, 8, 2, 2},  {5, 3, 7, 5, 2, 2},  {3, 2, 6, 9, 2, 2},
                      {2, 3, 9, 7, 3, 2},  {2, 3, 7, 5, 2, 1},  {1, 1, 3, 3, 3, 2},
                      {8, 16, 32, 32, 2, 2}, {4, 16, 15, 15, 3, 2}};
  for (const Cfg& c : cfgs)
    for (bool ties : {false, true}) {
      CAPTURE(c.N);
      CAPTURE(c.C);
      CAPTURE(c.H);
      CAPTURE(c.W);
      CAPTURE(c.k);
      CAPTURE(c.s);
      CAPTURE(ties);
      Pool2dParams p;
      p.N = c.N, p.C = c.C, p.H = c.H, p.W = c.W, p.k = c.k, p.stride = c.s;
      const int64_t nx = int64_t(c.N) * c.C * c.H * c.W, ny = int64_t(c.N) * c.C * p.P() * p.Q();
      Vec x = randn(rng, nx), dy = randn(rng, ny);
      if (ties)  // three values only: most windows hold several maxima
        for (auto& v : x) v = float(rng.below(3));

      Vec y_ref(ny), y_cpu(ny);
      ref::maxpool_forward(p, x.data(), y_ref.data());
      cpu::maxpool_forward(p, x.data(), y_cpu.data());
      check_equal(y_cpu, y_ref, "maxpool_forward");
      Vec dx_ref(nx, 7.0f), dx_cpu(nx, 7.0f);  // garbage in dx: backward must overwrite
      ref::maxpool_backward(p, x.data(), dy.data(), dx_ref.data());
      cpu::maxpool_backward(p, x.data(), dy.data(), dx_cpu.data());
      check_equal(dx_cpu, dx_ref, "maxpool_backward");

      // adjoint identity <pool(x), dy> == <x, pool_backward(dy)> in double (Approx 1e-5)
      auto dot = [](const Vec& a, const Vec& b) {
        double s = 0.0;
        for (size_t i = 0; i < a.size(); i++) s += double(a[i]) * b[i];
        return s;
      };
      CHECK(dot(x, dx_ref) == doctest::Approx(dot(y_ref, dy)).epsilon(1e-5));

      ref::avgpool_forward(p, x.data(), y_ref.data());
      cpu::avgpool_forward(p, x.data(), y_cpu.data());
      check_close(y_cpu, y_ref, 1e-6, 1e-6, "avgpool_forward");
      std::fill(dx_ref.begin(), dx_ref.end(), 7.0f), std::fill(dx_cpu.begin(), dx_cpu.end(), 7.0f);
      ref::avgpool_backward(p, dy.data(), dx_ref.data());
      cpu::avgpool_backward(p, dy.data(), dx_cpu.data());
      check_close(dx_cpu, dx_ref, 1e-6, 1e-6, "avgpool_backward");
      CHECK(dot(x, dx_ref) == doctest::Approx(dot(y_ref, dy)).epsilon(1e-5));
    }
}

TEST_CASE("maxpool: the gradient goes to the first maximum in row-major window order") {
  // x (1,1,3,3), k=2 s=1, overlapping windows with ties:
  //   1 3 3      window (0,0): 1 3 / 3 0 -> first max at (0,1)
  //   3 0 1      window (0,1): 3 3 / 0 1 -> first max at (0,1)
  //   2 3 3      window (1,0): 3 0 / 2 3 -> (1,0);  window (1,1): 0 1 / 3 3 -> (2,1)
  Pool2dParams p;
  p.N = 1, p.C = 1, p.H = 3, p.W = 3, p.k = 2, p.stride = 1;
  const Vec x = {1, 3, 3, 3, 0, 1, 2, 3, 3}, dy = {1, 2, 4, 8};
  const Vec want_dx = {0, 3, 0, 4, 0, 0, 0, 8, 0};
  // k=2 s=2 (the cpu backend's own loop), x (1,1,2,8), four windows:
  //   1 3 | 2 2 | 0 0 | 4 4     -> (0,1): 3 beats 1, ties with 3s after it
  //   3 3 | 5 5 | 0 7 | 4 4        (1,2): first 5;  (1,5): 7;  (0,6): all tied, first
  Pool2dParams q;
  q.N = 1, q.C = 1, q.H = 2, q.W = 8, q.k = 2, q.stride = 2;
  const Vec x22 = {1, 3, 2, 2, 0, 0, 4, 4, 3, 3, 5, 5, 0, 7, 4, 4}, g = {1, 2, 3, 4};
  const Vec want22 = {0, 1, 0, 0, 0, 0, 4, 0, 0, 0, 2, 0, 0, 3, 0, 0};
  for (int backend = 0; backend < 2; backend++) {
    CAPTURE(backend);
    Vec y(4), dx(9, -1.0f), dx22(16, -1.0f), y22(4);
    (backend == 0 ? ref::maxpool_forward : cpu::maxpool_forward)(p, x.data(), y.data());
    check_equal(y, {3, 3, 3, 3}, "maxpool hand forward");
    (backend == 0 ? ref::maxpool_backward : cpu::maxpool_backward)(p, x.data(), dy.data(), dx.data());
    check_equal(dx, want_dx, "maxpool hand backward");
    (backend == 0 ? ref::maxpool_forward : cpu::maxpool_forward)(q, x22.data(), y22.data());
    check_equal(y22, {3, 5, 7, 4}, "maxpool k2s2 hand forward");
    (backend == 0 ? ref::maxpool_backward : cpu::maxpool_backward)(q, x22.data(), g.data(), dx22.data());
    check_equal(dx22, want22, "maxpool k2s2 hand backward");
  }
}

TEST_CASE("avgpool and global avgpool: hand-computed values, cpu matches ref") {
  Pool2dParams p;
  p.N = 1, p.C = 1, p.H = 3, p.W = 3, p.k = 2, p.stride = 1;
  const Vec x = {1, 2, 3, 4, 5, 6, 7, 8, 9}, dy = {1, 2, 3, 4};
  for (int backend = 0; backend < 2; backend++) {
    CAPTURE(backend);
    Vec y(4), dx(9);
    (backend == 0 ? ref::avgpool_forward : cpu::avgpool_forward)(p, x.data(), y.data());
    check_close(y, {3, 4, 6, 7}, 1e-6, 0, "avgpool hand forward");
    (backend == 0 ? ref::avgpool_backward : cpu::avgpool_backward)(p, dy.data(), dx.data());
    // each input receives dy/4 from every window covering it
    check_close(dx, {0.25f, 0.75f, 0.5f, 1.0f, 2.5f, 1.5f, 0.75f, 1.75f, 1.0f}, 1e-6, 0, "avgpool hand backward");

    Vec gy(2), gdx(18);
    const Vec gx = {1, 2, 3, 4, 5, 6, 7, 8, 9, -1, -1, -1, -1, -1, -1, -1, -1, 8};  // (1, 2, 9)
    (backend == 0 ? ref::global_avgpool_forward : cpu::global_avgpool_forward)(1, 2, 9, gx.data(), gy.data());
    check_close(gy, {5, 0}, 1e-6, 0, "global avgpool hand forward");
    const Vec gdy = {9, -18};
    (backend == 0 ? ref::global_avgpool_backward : cpu::global_avgpool_backward)(1, 2, 9, gdy.data(), gdx.data());
    for (int i = 0; i < 18; i++) CHECK(gdx[i] == doctest::Approx(i < 9 ? 1.0 : -2.0).epsilon(1e-7));
  }

  Rng rng(8);
  struct Shape {
    int N, C, HW;
  };
  for (Shape s : {Shape{1, 3, 35}, Shape{5, 3, 35}, Shape{128, 64, 64}, Shape{2, 5, 1}}) {
    CAPTURE(s.N);
    CAPTURE(s.C);
    CAPTURE(s.HW);
    const int64_t nx = int64_t(s.N) * s.C * s.HW, ny = int64_t(s.N) * s.C;
    Vec x = randn(rng, nx, 0.3f), dy = randn(rng, ny);
    Vec y_ref(ny), y_cpu(ny), dx_ref(nx), dx_cpu(nx);
    ref::global_avgpool_forward(s.N, s.C, s.HW, x.data(), y_ref.data());
    cpu::global_avgpool_forward(s.N, s.C, s.HW, x.data(), y_cpu.data());
    check_close(y_cpu, y_ref, 1e-6, 1e-6, "global_avgpool_forward");
    ref::global_avgpool_backward(s.N, s.C, s.HW, dy.data(), dx_ref.data());
    cpu::global_avgpool_backward(s.N, s.C, s.HW, dy.data(), dx_cpu.data());
    check_close(dx_cpu, dx_ref, 1e-7, 1e-6, "global_avgpool_backward");
  }
}

// ------------------------------------------------------------------------------------------
// softmax cross-entropy
// ------------------------------------------------------------------------------------------

TEST_CASE("softmax cross-entropy: cpu matches ref (smoothing 0 and 0.1, sizes split across threads)") {
  Rng rng(9);
  struct Shape {
    int N, K;
  };
  for (Shape s : {Shape{1, 10}, Shape{5, 3}, Shape{128, 10}, Shape{3000, 10}, Shape{257, 100}})
    for (float smoothing : {0.0f, 0.1f}) {
      CAPTURE(s.N);
      CAPTURE(s.K);
      CAPTURE(smoothing);
      Vec logits = randn(rng, int64_t(s.N) * s.K, 0.0f, 3.0f), labels(s.N);
      for (auto& l : labels) l = float(rng.below(uint32_t(s.K)));
      // row 0 is all ties with label 0: counted correct only under the first-maximum rule
      std::fill(logits.begin(), logits.begin() + s.K, 0.0f);
      labels[0] = 0.0f;
      Vec d_ref(logits.size()), d_cpu(logits.size());
      int c_ref = -1, c_cpu = -1;
      const float l_ref = ref::softmax_cross_entropy(s.N, s.K, logits.data(), labels.data(), smoothing,
                                                     d_ref.data(), &c_ref);
      const float l_cpu = cpu::softmax_cross_entropy(s.N, s.K, logits.data(), labels.data(), smoothing,
                                                     d_cpu.data(), &c_cpu);
      CHECK(l_cpu == doctest::Approx(l_ref).epsilon(1e-6));
      CHECK(c_cpu == c_ref);
      check_close(d_cpu, d_ref, 1e-7, 1e-5, "softmax_cross_entropy dlogits");
      // no gradient requested: same loss and count
      int c_nograd = -1;
      CHECK(cpu::softmax_cross_entropy(s.N, s.K, logits.data(), labels.data(), smoothing, nullptr, &c_nograd) ==
            l_cpu);
      CHECK(c_nograd == c_cpu);
      CHECK(ref::softmax_cross_entropy(s.N, s.K, logits.data(), labels.data(), smoothing, nullptr, nullptr) == l_ref);

      // reference: every gradient row sums to zero (sum p = sum t = 1), within 1e-6 / N
      for (int nrow = 0; nrow < s.N; nrow++) {
        double row = 0.0;
        for (int k = 0; k < s.K; k++) row += d_ref[int64_t(nrow) * s.K + k];
        REQUIRE(std::fabs(row) < 1e-6 / s.N);
      }
    }
}

TEST_CASE("softmax cross-entropy reference: hand-computed loss, gradient, accuracy, stability") {
  // row 0: logits (1, 2, 3), label 2: loss = log(e + e^2 + e^3) - 3 = 0.40760596,
  //        softmax = (0.09003057, 0.24472847, 0.66524096)
  // row 1: logits (0, 0, 0), label 0: loss = log 3, softmax = 1/3 each; the argmax is the
  //        first maximum, 0, so the row counts as correct
  const Vec logits = {1, 2, 3, 0, 0, 0}, labels = {2, 0};
  const double sm0[3] = {0.09003057, 0.24472847, 0.66524096};
  for (int backend = 0; backend < 2; backend++) {
    CAPTURE(backend);
    auto ce = backend == 0 ? ref::softmax_cross_entropy : cpu::softmax_cross_entropy;
    Vec d(6);
    int correct = -1;
    float loss = ce(2, 3, logits.data(), labels.data(), 0.0f, d.data(), &correct);
    CHECK(loss == doctest::Approx((0.40760596 + std::log(3.0)) / 2).epsilon(1e-6));
    CHECK(correct == 2);
    for (int k = 0; k < 3; k++) {
      CHECK(d[k] == doctest::Approx((sm0[k] - (k == 2)) / 2).epsilon(1e-6));
      CHECK(d[3 + k] == doctest::Approx((1.0 / 3 - (k == 0)) / 2).epsilon(1e-6));
    }
    // smoothing 0.1, K = 3: target row 0 = (1/30, 1/30, 0.9 + 1/30)
    //   loss = 3.40760596 - (1 + 2)/30 - 3*0.9 = 0.50760596; row 1 is still log 3
    loss = ce(2, 3, logits.data(), labels.data(), 0.1f, d.data(), nullptr);
    CHECK(loss == doctest::Approx((0.50760596 + std::log(3.0)) / 2).epsilon(1e-6));
    for (int k = 0; k < 3; k++) CHECK(d[k] == doctest::Approx((sm0[k] - 0.1 / 3 - 0.9 * (k == 2)) / 2).epsilon(1e-6));

    // huge logits: log-sum-exp keeps everything finite
    const Vec big = {1000, 0, -1000, 1000, 0, 0}, big_labels = {0, 1};
    Vec dbig(6);
    loss = ce(2, 3, big.data(), big_labels.data(), 0.0f, dbig.data(), &correct);
    CHECK(loss == doctest::Approx(500.0).epsilon(1e-6));  // (0 + 1000) / 2
    CHECK(correct == 1);
    for (float v : dbig) CHECK(std::isfinite(v));
    CHECK(dbig[3] == doctest::Approx(0.5).epsilon(1e-6));
    CHECK(dbig[4] == doctest::Approx(-0.5).epsilon(1e-6));

    // labels outside [0, K) or not whole numbers are refused, in any row, naming the row
    const Vec bad1 = {3, 0}, bad2 = {0, -1}, bad3 = {0.5f, 0}, bad4 = {0, 2.5f};
    CHECK_THROWS_WITH_AS(ce(2, 3, logits.data(), bad1.data(), 0.0f, nullptr, nullptr),
                         doctest::Contains("label of row 0 is 3.000000, expected a class index in [0, 3)"), Error);
    CHECK_THROWS_WITH_AS(ce(2, 3, logits.data(), bad2.data(), 0.0f, nullptr, nullptr),
                         doctest::Contains("label of row 1 is -1.000000"), Error);
    CHECK_THROWS_WITH_AS(ce(2, 3, logits.data(), bad3.data(), 0.0f, nullptr, nullptr),
                         doctest::Contains("label of row 0 is 0.500000"), Error);
    CHECK_THROWS_WITH_AS(ce(2, 3, logits.data(), bad4.data(), 0.0f, d.data(), nullptr),
                         doctest::Contains("label of row 1 is 2.500000"), Error);
  }
}

TEST_CASE("op profile: counts and times every dispatched op while on, nothing while off") {
  Tensor x({4, 5}), y({4, 5});
  for (int64_t i = 0; i < x.numel(); ++i) x[i] = static_cast<float>(i) - 9.0f;
  ops::take_profile();  // drop anything an earlier test left
  ops::relu_forward(x, y);  // profiling off: not recorded
  ops::set_profiling(true);
  ops::relu_forward(x, y);
  ops::relu_forward(x, y);
  ops::add_forward(x, y, y);
  ops::set_profiling(false);
  ops::add_forward(x, y, y);  // off again: not recorded
  const std::vector<ops::OpTime> p = ops::take_profile();
  REQUIRE(p.size() == 2);
  int64_t relu_calls = -1, add_calls = -1;
  for (const ops::OpTime& t : p) {
    CHECK(t.ms >= 0.0);
    if (t.op == "relu_forward") relu_calls = t.calls;
    if (t.op == "add_forward") add_calls = t.calls;
  }
  CHECK(relu_calls == 2);
  CHECK(add_calls == 1);
  CHECK(p[0].ms >= p[1].ms);              // longest first
  CHECK(ops::take_profile().empty());     // take resets the totals
  CHECK(y[0] == -18.0f);  // every call did its work, timed or not: relu(-9) = 0, then += x twice
  CHECK(y[19] == 30.0f);  // relu(10) = 10, then += 10 twice

  // Longest first, checked where the order by time differs from the order by name: a ReLU over
  // 4 Mi floats outlasts an add of 20, whose name comes first (a profile left in name order
  // fails this; above, two ops of a few floats each are in either order by chance).
  Tensor big({int64_t(1) << 22}), big_y({int64_t(1) << 22});
  for (int64_t i = 0; i < big.numel(); ++i) big[i] = float(i % 7) - 3.0f;
  ops::set_profiling(true);
  ops::add_forward(x, x, y);
  ops::relu_forward(big, big_y);
  ops::set_profiling(false);
  const std::vector<ops::OpTime> q = ops::take_profile();
  REQUIRE(q.size() == 2);
  CHECK(q[0].ms >= q[1].ms);
}
