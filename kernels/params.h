// Shapes and hyper-parameters of the ops. Every backend (ref, cpu, cuda) takes the same
// structs, so a test can run the same call through two backends and compare.
#pragma once
#include <cstdint>

namespace dnns {

// 2-D convolution, zero padding, no dilation, no groups.
//   x: (N, C, H, W)   w: (K, C, R, S)   b: (K)   y: (N, K, P, Q)
//   P = (H + 2*pad - R) / stride + 1,  Q = (W + 2*pad - S) / stride + 1
struct Conv2dParams {
  int N = 0, C = 0, H = 0, W = 0;  // input
  int K = 0, R = 0, S = 0;         // output channels, kernel height, kernel width
  int stride = 1, pad = 0;
  int P() const { return (H + 2 * pad - R) / stride + 1; }
  int Q() const { return (W + 2 * pad - S) / stride + 1; }
};

// Refuses shapes the conv kernels cannot handle (a zero stride, an empty output), naming `op`;
// the message is built only on failure (every conv call passes through here).
void check_conv_params(const Conv2dParams& p, const char* op);

// Max/average pooling, square window, no padding.
//   x: (N, C, H, W)   y: (N, C, P, Q),  P = (H - k) / stride + 1,  Q = (W - k) / stride + 1
struct Pool2dParams {
  int N = 0, C = 0, H = 0, W = 0;
  int k = 2, stride = 2;
  int P() const { return (H - k) / stride + 1; }
  int Q() const { return (W - k) / stride + 1; }
};

// Batchnorm over (N, C, HW): statistics per channel over N*HW values.
struct BatchNormParams {
  int N = 0, C = 0, HW = 0;
  float eps = 1e-5f;
  float momentum = 0.1f;  // running = (1 - momentum) * running + momentum * batch (PyTorch convention)
};

// SGD with momentum (PyTorch semantics, dampening 0):
//   g' = g + weight_decay * w
//   buf = momentum * buf + g'            (buf starts at zero)
//   step = nesterov ? g' + momentum * buf : buf
//   w -= lr * step
struct SgdParams {
  float lr = 0.1f;
  float momentum = 0.9f;
  float weight_decay = 0.0f;
  bool nesterov = false;
};

}  // namespace dnns
