#include "kernels/ops.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <map>
#include <mutex>
#include <string>

#include "core/error.h"
#include "kernels/cpu/cpu.h"
#include "kernels/ref/ref.h"
#ifdef DNNS_HAVE_CUDA
#include "kernels/cuda/cuda.h"
#endif

namespace dnns {

void check_conv_params(const Conv2dParams& p, const char* op) {
  check(p.N >= 0 && p.C >= 1 && p.H >= 1 && p.W >= 1 && p.K >= 1 && p.R >= 1 && p.S >= 1 && p.stride >= 1 &&
            p.pad >= 0 && p.H + 2 * p.pad >= p.R && p.W + 2 * p.pad >= p.S,
        [&] {
          return std::string(op) + ": invalid shape N=" + std::to_string(p.N) + " C=" + std::to_string(p.C) +
                 " H=" + std::to_string(p.H) + " W=" + std::to_string(p.W) + " K=" + std::to_string(p.K) +
                 " R=" + std::to_string(p.R) + " S=" + std::to_string(p.S) + " stride=" + std::to_string(p.stride) +
                 " pad=" + std::to_string(p.pad) +
                 " (need positive sizes, stride >= 1, pad >= 0, kernel no larger than the padded input)";
        });
}

static std::atomic<CpuBackend> g_cpu_backend{CpuBackend::Optimized};
void set_cpu_backend(CpuBackend b) { g_cpu_backend = b; }
CpuBackend cpu_backend() { return g_cpu_backend; }

bool cuda_available() {
#ifdef DNNS_HAVE_CUDA
  return cuda::device_count() > 0;
#else
  return false;
#endif
}

void device_synchronize(Device d) {
#ifdef DNNS_HAVE_CUDA
  if (d == Device::CUDA) cuda::synchronize();
#else
  (void)d;
#endif
}

namespace ops {
namespace {

// All tensors of one call must live on one device; returns it.
Device common_device(const char* op, std::initializer_list<const Tensor*> ts) {
  bool first = true;
  Device d = Device::CPU;
  for (const Tensor* t : ts) {
    if (!t || !t->defined()) continue;
    if (first) d = t->device(), first = false;
    else if (t->device() != d)
      throw Error(std::string(op) + ": tensors on different devices (" + device_name(d) + " and " +
                  device_name(t->device()) + "); copy them explicitly with Tensor::to");
  }
  return d;
}

const float* ptr_or_null(const Tensor& t) { return t.defined() && t.numel() ? t.data() : nullptr; }
float* ptr_or_null(Tensor& t) { return t.defined() && t.numel() ? t.data() : nullptr; }

std::atomic<bool> g_profiling{false};
std::mutex g_profile_mutex;
std::map<std::string, OpTime>& profile_totals() {
  static std::map<std::string, OpTime> totals;
  return totals;
}

}  // namespace

void set_profiling(bool on) { g_profiling.store(on, std::memory_order_relaxed); }

OpTimer::OpTimer(const char* op, Device d) : op_(op), dev_(d), on_(g_profiling.load(std::memory_order_relaxed)) {
  if (!on_) return;
  device_synchronize(dev_);
  t0_ = std::chrono::steady_clock::now();
}

OpTimer::~OpTimer() {
  if (!on_) return;
  device_synchronize(dev_);
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0_).count();
  std::lock_guard<std::mutex> lock(g_profile_mutex);
  OpTime& t = profile_totals()[op_];
  t.op = op_;
  t.calls += 1;
  t.ms += ms;
}

std::vector<OpTime> take_profile() {
  std::lock_guard<std::mutex> lock(g_profile_mutex);
  std::vector<OpTime> out;
  for (auto& [name, t] : profile_totals()) out.push_back(t);
  profile_totals().clear();
  std::sort(out.begin(), out.end(), [](const OpTime& a, const OpTime& b) { return a.ms > b.ms; });
  return out;
}

// DISPATCH(op, device, args...) calls op on the backend that owns `device`.
#ifdef DNNS_HAVE_CUDA
#define DNNS_CUDA_CALL(op, ...) return cuda::op(__VA_ARGS__)
#else
#define DNNS_CUDA_CALL(op, ...) throw Error(std::string(#op) + ": this build has no CUDA backend")
#endif
#define DISPATCH(op, dev, ...)                                          \
  do {                                                                  \
    OpTimer op_timer_(#op, (dev));                                      \
    if ((dev) == Device::CUDA) { DNNS_CUDA_CALL(op, __VA_ARGS__); }     \
    if (g_cpu_backend.load() == CpuBackend::Reference) return ref::op(__VA_ARGS__); \
    return cpu::op(__VA_ARGS__);                                        \
  } while (0)

void conv2d_forward(const Conv2dParams& p, const Tensor& x, const Tensor& w, const Tensor& b, Tensor& y) {
  check_shape(x.shape(), {p.N, p.C, p.H, p.W}, "conv2d_forward input");
  check_shape(w.shape(), {p.K, p.C, p.R, p.S}, "conv2d_forward weight");
  if (b.defined() && b.numel()) check_shape(b.shape(), {p.K}, "conv2d_forward bias");
  check_shape(y.shape(), {p.N, p.K, p.P(), p.Q()}, "conv2d_forward output");
  Device d = common_device("conv2d_forward", {&x, &w, &b, &y});
  DISPATCH(conv2d_forward, d, p, x.data(), w.data(), ptr_or_null(b), y.data());
}

void conv2d_forward_relu(const Conv2dParams& p, const Tensor& x, const Tensor& w, const Tensor& b, Tensor& y) {
  Device d = common_device("conv2d_forward_relu", {&x, &w, &b, &y});
  if (d == Device::CPU && g_cpu_backend.load() == CpuBackend::Optimized) {
    check_shape(x.shape(), {p.N, p.C, p.H, p.W}, "conv2d_forward_relu input");
    check_shape(w.shape(), {p.K, p.C, p.R, p.S}, "conv2d_forward_relu weight");
    if (b.defined() && b.numel()) check_shape(b.shape(), {p.K}, "conv2d_forward_relu bias");
    check_shape(y.shape(), {p.N, p.K, p.P(), p.Q()}, "conv2d_forward_relu output");
    OpTimer op_timer_("conv2d_forward_relu", d);
    return cpu::conv2d_forward_relu(p, x.data(), w.data(), ptr_or_null(b), y.data());
  }
  conv2d_forward(p, x, w, b, y);
  relu_forward(y, y);
}

void conv2d_backward_data(const Conv2dParams& p, const Tensor& dy, const Tensor& w, Tensor& dx) {
  check_shape(dy.shape(), {p.N, p.K, p.P(), p.Q()}, "conv2d_backward_data output gradient");
  check_shape(w.shape(), {p.K, p.C, p.R, p.S}, "conv2d_backward_data weight");
  check_shape(dx.shape(), {p.N, p.C, p.H, p.W}, "conv2d_backward_data input gradient");
  Device d = common_device("conv2d_backward_data", {&dy, &w, &dx});
  DISPATCH(conv2d_backward_data, d, p, dy.data(), w.data(), dx.data());
}

void conv2d_backward_weights(const Conv2dParams& p, const Tensor& x, const Tensor& dy, Tensor& dw, Tensor& db) {
  check_shape(x.shape(), {p.N, p.C, p.H, p.W}, "conv2d_backward_weights input");
  check_shape(dy.shape(), {p.N, p.K, p.P(), p.Q()}, "conv2d_backward_weights output gradient");
  check_shape(dw.shape(), {p.K, p.C, p.R, p.S}, "conv2d_backward_weights weight gradient");
  if (db.defined() && db.numel()) check_shape(db.shape(), {p.K}, "conv2d_backward_weights bias gradient");
  Device d = common_device("conv2d_backward_weights", {&x, &dy, &dw, &db});
  DISPATCH(conv2d_backward_weights, d, p, x.data(), dy.data(), dw.data(), ptr_or_null(db));
}

void linear_forward(const Tensor& x, const Tensor& w, const Tensor& b, Tensor& y) {
  check(x.ndim() == 2 && w.ndim() == 2, "linear_forward: expected 2-D input and weight, got " +
                                            shape_str(x.shape()) + " and " + shape_str(w.shape()));
  int N = x.dim(0), I = x.dim(1), O = w.dim(0);
  check_shape(w.shape(), {O, I}, "linear_forward weight");
  if (b.defined() && b.numel()) check_shape(b.shape(), {O}, "linear_forward bias");
  check_shape(y.shape(), {N, O}, "linear_forward output");
  Device d = common_device("linear_forward", {&x, &w, &b, &y});
  DISPATCH(linear_forward, d, N, I, O, x.data(), w.data(), ptr_or_null(b), y.data());
}

void linear_backward_data(const Tensor& dy, const Tensor& w, Tensor& dx) {
  check(dy.ndim() == 2 && w.ndim() == 2, "linear_backward_data: expected 2-D tensors");
  int N = dy.dim(0), O = w.dim(0), I = w.dim(1);
  check_shape(dy.shape(), {N, O}, "linear_backward_data output gradient");
  check_shape(dx.shape(), {N, I}, "linear_backward_data input gradient");
  Device d = common_device("linear_backward_data", {&dy, &w, &dx});
  DISPATCH(linear_backward_data, d, N, I, O, dy.data(), w.data(), dx.data());
}

void linear_backward_weights(const Tensor& x, const Tensor& dy, Tensor& dw, Tensor& db) {
  check(x.ndim() == 2 && dy.ndim() == 2, "linear_backward_weights: expected 2-D tensors");
  int N = x.dim(0), I = x.dim(1), O = dy.dim(1);
  check_shape(dy.shape(), {N, O}, "linear_backward_weights output gradient");
  check_shape(dw.shape(), {O, I}, "linear_backward_weights weight gradient");
  if (db.defined() && db.numel()) check_shape(db.shape(), {O}, "linear_backward_weights bias gradient");
  Device d = common_device("linear_backward_weights", {&x, &dy, &dw, &db});
  DISPATCH(linear_backward_weights, d, N, I, O, x.data(), dy.data(), dw.data(), ptr_or_null(db));
}

static void check_bn(const BatchNormParams& p, const Tensor& x, const char* op) {
  check(x.numel() == int64_t(p.N) * p.C * p.HW && x.ndim() >= 2 && x.dim(0) == p.N && x.dim(1) == p.C,
        std::string(op) + ": input " + shape_str(x.shape()) + " does not match N=" + std::to_string(p.N) +
            " C=" + std::to_string(p.C) + " HW=" + std::to_string(p.HW));
}

void batchnorm_forward_train(const BatchNormParams& p, const Tensor& x, const Tensor& gamma,
                             const Tensor& beta, Tensor& running_mean, Tensor& running_var, Tensor& y,
                             Tensor& save_mean, Tensor& save_invstd) {
  check_bn(p, x, "batchnorm_forward_train");
  for (const Tensor* t : std::initializer_list<const Tensor*>{&gamma, &beta, &running_mean, &running_var,
                                                             &save_mean, &save_invstd})
    check_shape(t->shape(), {p.C}, "batchnorm_forward_train per-channel tensor");
  check_shape(y.shape(), x.shape(), "batchnorm_forward_train output");
  Device d = common_device("batchnorm_forward_train", {&x, &gamma, &beta, &running_mean, &running_var, &y});
  DISPATCH(batchnorm_forward_train, d, p, x.data(), gamma.data(), beta.data(), running_mean.data(),
           running_var.data(), y.data(), save_mean.data(), save_invstd.data());
}

void batchnorm_forward_eval(const BatchNormParams& p, const Tensor& x, const Tensor& gamma,
                            const Tensor& beta, const Tensor& running_mean, const Tensor& running_var,
                            Tensor& y) {
  check_bn(p, x, "batchnorm_forward_eval");
  for (const Tensor* t : {&gamma, &beta, &running_mean, &running_var})
    check_shape(t->shape(), {p.C}, "batchnorm_forward_eval per-channel tensor");
  check_shape(y.shape(), x.shape(), "batchnorm_forward_eval output");
  Device d = common_device("batchnorm_forward_eval", {&x, &gamma, &beta, &running_mean, &running_var, &y});
  DISPATCH(batchnorm_forward_eval, d, p, x.data(), gamma.data(), beta.data(), running_mean.data(),
           running_var.data(), y.data());
}

void batchnorm_backward(const BatchNormParams& p, const Tensor& x, const Tensor& dy, const Tensor& gamma,
                        const Tensor& save_mean, const Tensor& save_invstd, Tensor& dx, Tensor& dgamma,
                        Tensor& dbeta) {
  check_bn(p, x, "batchnorm_backward");
  check_shape(dy.shape(), x.shape(), "batchnorm_backward output gradient");
  check_shape(dx.shape(), x.shape(), "batchnorm_backward input gradient");
  for (const Tensor* t : std::initializer_list<const Tensor*>{&gamma, &save_mean, &save_invstd, &dgamma, &dbeta})
    check_shape(t->shape(), {p.C}, "batchnorm_backward per-channel tensor");
  Device d = common_device("batchnorm_backward", {&x, &dy, &gamma, &dx, &dgamma, &dbeta});
  DISPATCH(batchnorm_backward, d, p, x.data(), dy.data(), gamma.data(), save_mean.data(),
           save_invstd.data(), dx.data(), dgamma.data(), dbeta.data());
}

// HOST_DISPATCH(op, device, args...): DISPATCH for the ops only the host backends have
// (kernels/host_api.inc).
#define HOST_DISPATCH(op, dev, ...)                                                         \
  do {                                                                                      \
    if ((dev) == Device::CUDA) throw Error(std::string(#op) + ": CPU tensors only (the CUDA " \
                                           "backend runs the fused ops apart)");             \
    OpTimer op_timer_(#op, (dev));                                                          \
    if (g_cpu_backend.load() == CpuBackend::Reference) return ref::op(__VA_ARGS__);         \
    return cpu::op(__VA_ARGS__);                                                            \
  } while (0)

void batchnorm_forward_train_relu(const BatchNormParams& p, const Tensor& x, const Tensor& gamma,
                                  const Tensor& beta, Tensor& running_mean, Tensor& running_var, Tensor& y,
                                  Tensor& save_mean, Tensor& save_invstd) {
  check_bn(p, x, "batchnorm_forward_train_relu");
  for (const Tensor* t : std::initializer_list<const Tensor*>{&gamma, &beta, &running_mean, &running_var,
                                                             &save_mean, &save_invstd})
    check_shape(t->shape(), {p.C}, "batchnorm_forward_train_relu per-channel tensor");
  check_shape(y.shape(), x.shape(), "batchnorm_forward_train_relu output");
  Device d = common_device("batchnorm_forward_train_relu",
                           {&x, &gamma, &beta, &running_mean, &running_var, &y, &save_mean, &save_invstd});
  HOST_DISPATCH(batchnorm_forward_train_relu, d, p, x.data(), gamma.data(), beta.data(), running_mean.data(),
                running_var.data(), y.data(), save_mean.data(), save_invstd.data());
}

void batchnorm_backward_relu(const BatchNormParams& p, const Tensor& x, const Tensor& dy, const Tensor& gamma,
                             const Tensor& beta, const Tensor& save_mean, const Tensor& save_invstd, Tensor& dx,
                             Tensor& dgamma, Tensor& dbeta) {
  check_bn(p, x, "batchnorm_backward_relu");
  check_shape(dy.shape(), x.shape(), "batchnorm_backward_relu output gradient");
  check_shape(dx.shape(), x.shape(), "batchnorm_backward_relu input gradient");
  for (const Tensor* t :
       std::initializer_list<const Tensor*>{&gamma, &beta, &save_mean, &save_invstd, &dgamma, &dbeta})
    check_shape(t->shape(), {p.C}, "batchnorm_backward_relu per-channel tensor");
  Device d = common_device("batchnorm_backward_relu",
                           {&x, &dy, &gamma, &beta, &save_mean, &save_invstd, &dx, &dgamma, &dbeta});
  HOST_DISPATCH(batchnorm_backward_relu, d, p, x.data(), dy.data(), gamma.data(), beta.data(), save_mean.data(),
                save_invstd.data(), dx.data(), dgamma.data(), dbeta.data());
}

void relu_forward(const Tensor& x, Tensor& y) {
  check_shape(y.shape(), x.shape(), "relu_forward output");
  Device d = common_device("relu_forward", {&x, &y});
  DISPATCH(relu_forward, d, x.numel(), x.data(), y.data());
}

void relu_backward(const Tensor& y, const Tensor& dy, Tensor& dx) {
  check_shape(dy.shape(), y.shape(), "relu_backward output gradient");
  check_shape(dx.shape(), y.shape(), "relu_backward input gradient");
  Device d = common_device("relu_backward", {&y, &dy, &dx});
  DISPATCH(relu_backward, d, y.numel(), y.data(), dy.data(), dx.data());
}

void add_forward(const Tensor& a, const Tensor& b, Tensor& y) {
  check_shape(b.shape(), a.shape(), "add: second operand");
  check_shape(y.shape(), a.shape(), "add: output");
  Device d = common_device("add_forward", {&a, &b, &y});
  DISPATCH(add_forward, d, a.numel(), a.data(), b.data(), y.data());
}

void add_relu_forward(const Tensor& a, const Tensor& b, Tensor& y) {
  check_shape(b.shape(), a.shape(), "add_relu_forward: second operand");
  check_shape(y.shape(), a.shape(), "add_relu_forward: output");
  Device d = common_device("add_relu_forward", {&a, &b, &y});
  HOST_DISPATCH(add_relu_forward, d, a.numel(), a.data(), b.data(), y.data());
}

void relu_backward_sum(const Tensor& y, const Tensor& dy1, const Tensor& dy2, Tensor& dx) {
  check_shape(dy1.shape(), y.shape(), "relu_backward_sum output gradient");
  check_shape(dy2.shape(), y.shape(), "relu_backward_sum output gradient (second part)");
  check_shape(dx.shape(), y.shape(), "relu_backward_sum input gradient");
  Device d = common_device("relu_backward_sum", {&y, &dy1, &dy2, &dx});
  HOST_DISPATCH(relu_backward_sum, d, y.numel(), y.data(), dy1.data(), dy2.data(), dx.data());
}

void accumulate(const Tensor& a, Tensor& y) {
  check(a.numel() == y.numel(), "accumulate: sizes differ: " + shape_str(a.shape()) + " vs " + shape_str(y.shape()));
  Device d = common_device("accumulate", {&a, &y});
  DISPATCH(accumulate, d, a.numel(), a.data(), y.data());
}

void maxpool_forward(const Pool2dParams& p, const Tensor& x, Tensor& y) {
  check_shape(x.shape(), {p.N, p.C, p.H, p.W}, "maxpool input");
  check_shape(y.shape(), {p.N, p.C, p.P(), p.Q()}, "maxpool output");
  Device d = common_device("maxpool_forward", {&x, &y});
  DISPATCH(maxpool_forward, d, p, x.data(), y.data());
}

void maxpool_backward(const Pool2dParams& p, const Tensor& x, const Tensor& dy, Tensor& dx) {
  check_shape(x.shape(), {p.N, p.C, p.H, p.W}, "maxpool_backward input");
  check_shape(dy.shape(), {p.N, p.C, p.P(), p.Q()}, "maxpool_backward output gradient");
  check_shape(dx.shape(), x.shape(), "maxpool_backward input gradient");
  Device d = common_device("maxpool_backward", {&x, &dy, &dx});
  DISPATCH(maxpool_backward, d, p, x.data(), dy.data(), dx.data());
}

void avgpool_forward(const Pool2dParams& p, const Tensor& x, Tensor& y) {
  check_shape(x.shape(), {p.N, p.C, p.H, p.W}, "avgpool input");
  check_shape(y.shape(), {p.N, p.C, p.P(), p.Q()}, "avgpool output");
  Device d = common_device("avgpool_forward", {&x, &y});
  DISPATCH(avgpool_forward, d, p, x.data(), y.data());
}

void avgpool_backward(const Pool2dParams& p, const Tensor& dy, Tensor& dx) {
  check_shape(dy.shape(), {p.N, p.C, p.P(), p.Q()}, "avgpool_backward output gradient");
  check_shape(dx.shape(), {p.N, p.C, p.H, p.W}, "avgpool_backward input gradient");
  Device d = common_device("avgpool_backward", {&dy, &dx});
  DISPATCH(avgpool_backward, d, p, dy.data(), dx.data());
}

void global_avgpool_forward(const Tensor& x, Tensor& y) {
  check(x.ndim() == 4, "global_avgpool: expected (N, C, H, W), got " + shape_str(x.shape()));
  int N = x.dim(0), C = x.dim(1), HW = x.dim(2) * x.dim(3);
  check_shape(y.shape(), {N, C}, "global_avgpool output");
  Device d = common_device("global_avgpool_forward", {&x, &y});
  DISPATCH(global_avgpool_forward, d, N, C, HW, x.data(), y.data());
}

void global_avgpool_backward(const Tensor& dy, Tensor& dx) {
  check(dx.ndim() == 4, "global_avgpool_backward: expected (N, C, H, W), got " + shape_str(dx.shape()));
  int N = dx.dim(0), C = dx.dim(1), HW = dx.dim(2) * dx.dim(3);
  check_shape(dy.shape(), {N, C}, "global_avgpool_backward output gradient");
  Device d = common_device("global_avgpool_backward", {&dy, &dx});
  DISPATCH(global_avgpool_backward, d, N, C, HW, dy.data(), dx.data());
}

float softmax_cross_entropy(const Tensor& logits, const Tensor& labels, float smoothing,
                            Tensor* dlogits, int* correct) {
  check(logits.ndim() == 2, "softmax_cross_entropy: expected logits (N, K), got " + shape_str(logits.shape()));
  int N = logits.dim(0), K = logits.dim(1);
  check_shape(labels.shape(), {N}, "softmax_cross_entropy labels");
  check(smoothing >= 0.0f && smoothing < 1.0f, "label smoothing must be in [0, 1), got " + std::to_string(smoothing));
  float* dl = nullptr;
  if (dlogits && dlogits->defined()) {
    check_shape(dlogits->shape(), logits.shape(), "softmax_cross_entropy logit gradient");
    dl = dlogits->data();
  }
  Device d = common_device("softmax_cross_entropy", {&logits, &labels, dlogits});
  DISPATCH(softmax_cross_entropy, d, N, K, logits.data(), labels.data(), smoothing, dl, correct);
}

void sgd_update(const SgdParams& p, Tensor& w, const Tensor& g, Tensor& buf) {
  check_shape(g.shape(), w.shape(), "sgd_update gradient");
  check_shape(buf.shape(), w.shape(), "sgd_update momentum buffer");
  Device d = common_device("sgd_update", {&w, &g, &buf});
  DISPATCH(sgd_update, d, p, w.numel(), w.data(), g.data(), buf.data());
}

void mask_apply(Tensor& w, const Tensor& mask) {
  check_shape(mask.shape(), w.shape(), "mask_apply mask");
  Device d = common_device("mask_apply", {&w, &mask});
  DISPATCH(mask_apply, d, w.numel(), w.data(), mask.data());
}

}  // namespace ops
}  // namespace dnns
