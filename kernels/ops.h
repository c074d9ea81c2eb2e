// The op set on tensors. Each function checks shapes, then dispatches by the tensors' device
// to one backend: CUDA tensors to kernels/cuda, CPU tensors to kernels/cpu (or to the
// reference kernels when `set_cpu_backend(CpuBackend::Reference)` was chosen). This is the
// only place that chooses a backend.
#pragma once
#include <chrono>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "kernels/params.h"

namespace dnns {

enum class CpuBackend { Optimized, Reference };
void set_cpu_backend(CpuBackend b);
CpuBackend cpu_backend();
bool cuda_available();  // built with CUDA and a device is present
// Waits until the work queued on device `d` has finished (CUDA: the backend's stream; nothing to
// wait for on the CPU). For memory handed to a library that does not use that stream (MPI).
void device_synchronize(Device d);

namespace ops {

// x (N,C,H,W), w (K,C,R,S), b (K) or empty -> y (N,K,P,Q) (allocated by the caller)
void conv2d_forward(const Conv2dParams& p, const Tensor& x, const Tensor& w, const Tensor& b, Tensor& y);
// y = relu(conv(x) + b): on the optimized CPU backend the ReLU is applied in the convolution's
// output pass where its kernel allows (no second pass over y); elsewhere conv then ReLU.
void conv2d_forward_relu(const Conv2dParams& p, const Tensor& x, const Tensor& w, const Tensor& b, Tensor& y);
void conv2d_backward_data(const Conv2dParams& p, const Tensor& dy, const Tensor& w, Tensor& dx);
void conv2d_backward_weights(const Conv2dParams& p, const Tensor& x, const Tensor& dy, Tensor& dw, Tensor& db);

void linear_forward(const Tensor& x, const Tensor& w, const Tensor& b, Tensor& y);  // x (N,I) w (O,I)
void linear_backward_data(const Tensor& dy, const Tensor& w, Tensor& dx);
void linear_backward_weights(const Tensor& x, const Tensor& dy, Tensor& dw, Tensor& db);

void batchnorm_forward_train(const BatchNormParams& p, const Tensor& x, const Tensor& gamma,
                             const Tensor& beta, Tensor& running_mean, Tensor& running_var, Tensor& y,
                             Tensor& save_mean, Tensor& save_invstd);
void batchnorm_forward_eval(const BatchNormParams& p, const Tensor& x, const Tensor& gamma,
                            const Tensor& beta, const Tensor& running_mean, const Tensor& running_var,
                            Tensor& y);
void batchnorm_backward(const BatchNormParams& p, const Tensor& x, const Tensor& dy, const Tensor& gamma,
                        const Tensor& save_mean, const Tensor& save_invstd, Tensor& dx, Tensor& dgamma,
                        Tensor& dbeta);

// Batchnorm then ReLU in training, fused (kernels/host_api.inc): CPU tensors only (an error
// names the op for CUDA ones). y = relu(batchnorm(x)); the backward takes the gradient of y.
void batchnorm_forward_train_relu(const BatchNormParams& p, const Tensor& x, const Tensor& gamma,
                                  const Tensor& beta, Tensor& running_mean, Tensor& running_var, Tensor& y,
                                  Tensor& save_mean, Tensor& save_invstd);
void batchnorm_backward_relu(const BatchNormParams& p, const Tensor& x, const Tensor& dy, const Tensor& gamma,
                             const Tensor& beta, const Tensor& save_mean, const Tensor& save_invstd, Tensor& dx,
                             Tensor& dgamma, Tensor& dbeta);

void relu_forward(const Tensor& x, Tensor& y);
void relu_backward(const Tensor& y, const Tensor& dy, Tensor& dx);
void add_forward(const Tensor& a, const Tensor& b, Tensor& y);
void accumulate(const Tensor& a, Tensor& y);  // y += a
// A residual add then a ReLU, fused (kernels/host_api.inc): CPU tensors only. y = relu(a + b);
// dx = relu_backward(y, dy1 + dy2) for a gradient that arrived in two parts. y may alias a or
// b, dx dy1 or dy2.
void add_relu_forward(const Tensor& a, const Tensor& b, Tensor& y);
void relu_backward_sum(const Tensor& y, const Tensor& dy1, const Tensor& dy2, Tensor& dx);

void maxpool_forward(const Pool2dParams& p, const Tensor& x, Tensor& y);
void maxpool_backward(const Pool2dParams& p, const Tensor& x, const Tensor& dy, Tensor& dx);
void avgpool_forward(const Pool2dParams& p, const Tensor& x, Tensor& y);
void avgpool_backward(const Pool2dParams& p, const Tensor& dy, Tensor& dx);
void global_avgpool_forward(const Tensor& x, Tensor& y);   // (N,C,H,W) -> (N,C)
void global_avgpool_backward(const Tensor& dy, Tensor& dx);

// Returns the mean loss; fills dlogits when it is defined; *correct (if given) receives the
// number of rows whose argmax equals the label.
float softmax_cross_entropy(const Tensor& logits, const Tensor& labels, float smoothing,
                            Tensor* dlogits, int* correct);

void sgd_update(const SgdParams& p, Tensor& w, const Tensor& g, Tensor& buf);
void mask_apply(Tensor& w, const Tensor& mask);  // w = mask != 0 ? w : +0.0

// Op profile (`bench train --profile`): while on, every call above is timed (elapsed time; a
// CUDA op waits for its stream before and after, so its time is its own) and summed per op
// name. Off by default, when it costs one relaxed atomic load per call.
struct OpTime {
  std::string op;
  int64_t calls = 0;
  double ms = 0.0;
};
void set_profiling(bool on);
// Times the op call it is declared in while profiling is on: every op entry point (here and in
// kernels/sparse.h) declares one.
class OpTimer {
 public:
  OpTimer(const char* op, Device d);
  ~OpTimer();
  OpTimer(const OpTimer&) = delete;
  OpTimer& operator=(const OpTimer&) = delete;

 private:
  const char* op_;
  Device dev_;
  bool on_;
  std::chrono::steady_clock::time_point t0_;
};
// The totals since the last call, longest first; resets them. Turning profiling on does not
// reset them: callers take (and drop) a profile first.
std::vector<OpTime> take_profile();

}  // namespace ops
}  // namespace dnns
