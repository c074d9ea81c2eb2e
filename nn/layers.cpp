#include "nn/layers.h"

#include <cstdint>
#include "nn/distributed.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/parallel.h"
#include "kernels/cpu/sparse_train.h"
#include "kernels/ops.h"

namespace dnns {

const char* layer_kind_name(LayerKind k) {
  switch (k) {
    case LayerKind::Conv: return "conv";
    case LayerKind::BatchNorm: return "batchnorm";
    case LayerKind::ReLU: return "relu";
    case LayerKind::MaxPool: return "maxpool";
    case LayerKind::AvgPool: return "avgpool";
    case LayerKind::GlobalAvgPool: return "global_avgpool";
    case LayerKind::Flatten: return "flatten";
    case LayerKind::Linear: return "linear";
    case LayerKind::Add: return "add";
  }
  return "?";
}

LayerKind parse_layer_kind(const std::string& s) {
  for (LayerKind k : {LayerKind::Conv, LayerKind::BatchNorm, LayerKind::ReLU, LayerKind::MaxPool,
                      LayerKind::AvgPool, LayerKind::GlobalAvgPool, LayerKind::Flatten, LayerKind::Linear,
                      LayerKind::Add})
    if (s == layer_kind_name(k)) return k;
  throw Error("unknown layer kind '" + s + "'");
}

void Layer::to(Device dev) {
  for (Param* p : params()) {
    if (!p->value.defined()) continue;  // a released weight (Conv2d/Linear::to rebuild it off the CPU)
    if (p->value.device() == dev && (!p->grad.defined() || p->grad.device() == dev)) continue;
    p->value = p->value.to(dev);
    if (p->grad.defined()) p->grad = p->grad.to(dev);
  }
  for (auto& [name, t] : buffers())
    if (t->device() != dev) *t = t->to(dev);
}

static void need_rank(const Shape& s, int rank, const char* layer) {
  check(static_cast<int>(s.size()) == rank,
        [&] { return std::string(layer) + ": expected a " + std::to_string(rank) + "-D input, got " + shape_str(s); });
}

// ---------------------------------------------------------------- Conv2d

Conv2d::Conv2d(int in_c, int out_c, int kh, int kw, int stride_, int pad_, bool bias_, bool fused, int ph, int pw,
               bool zero_weight)
    : in_channels(in_c), out_channels(out_c), kernel_h(kh), kernel_w(kw), stride(stride_), pad(pad_),
      has_bias(bias_), fused_relu(fused), pos_h(ph), pos_w(pw) {
  check(in_c >= 0 && out_c >= 0 && kh > 0 && kw > 0 && stride > 0 && pad >= 0 && ph >= 0 && pw >= 0 &&
            (ph > 0) == (pw > 0),
        [&] {
          return "conv: invalid configuration in=" + std::to_string(in_c) + " out=" + std::to_string(out_c) +
                 " kernel=" + std::to_string(kh) + "x" + std::to_string(kw) + " stride=" + std::to_string(stride) +
                 " pad=" + std::to_string(pad);
        });
  weight = {"weight", zero_weight ? Tensor({out_c, in_c, kh, kw}) : Tensor::uninit({out_c, in_c, kh, kw}), Tensor(),
            true};
  if (has_bias) bias = {"bias", Tensor({out_c}), Tensor(), false};
  if (pos_h > 0) {  // one class per row and column: a full (K, P, Q) map
    std::vector<int32_t> rows(ph), cols(pw);
    for (int p = 0; p < ph; ++p) rows[p] = p;
    for (int q = 0; q < pw; ++q) cols[q] = q;
    set_border_table(std::move(rows), std::move(cols));
  }
}

void Conv2d::set_border_table(std::vector<int32_t> rows, std::vector<int32_t> cols) {
  auto classes = [&](const std::vector<int32_t>& v, const char* what) {
    check(!v.empty(), std::string("conv: empty border-table ") + what + " classes");
    for (int32_t c : v)
      check(c >= 0 && c < static_cast<int32_t>(v.size()), [&] {
        return std::string("conv: border-table ") + what + " class " + std::to_string(c) + " out of range [0, " +
               std::to_string(v.size()) + ")";
      });
    return class_count(v);
  };
  const int rh = classes(rows, "row"), rw = classes(cols, "column");
  pos_h = static_cast<int>(rows.size()), pos_w = static_cast<int>(cols.size());
  pos_rows = std::move(rows), pos_cols = std::move(cols);
  pos_bias = {"pos_bias", Tensor({out_channels, rh, rw}), Tensor(), false};
}

int32_t class_count(const std::vector<int32_t>& v) {
  int32_t top = -1;
  for (int32_t c : v) top = std::max(top, c);
  return top + 1;
}

std::vector<double> merge_equal_classes(std::vector<double> table, int K, std::vector<int32_t>& rows,
                                        std::vector<int32_t>& cols, int along) {
  const int R = class_count(rows), C = class_count(cols);
  const int n = along == 0 ? R : C;
  auto at = [&](int k, int r, int c) { return table[(int64_t(k) * R + r) * C + c]; };
  auto same = [&](int x, int y) {
    for (int k = 0; k < K; ++k)
      for (int t = 0; t < (along == 0 ? C : R); ++t)
        if (along == 0 ? at(k, x, t) != at(k, y, t) : at(k, t, x) != at(k, t, y)) return false;
    return true;
  };
  std::vector<int32_t> to(n, -1), first;  // old class -> new class; new class -> an old one
  for (int x = 0; x < n; ++x) {
    for (size_t y = 0; y < first.size() && to[x] < 0; ++y)
      if (same(x, first[y])) to[x] = static_cast<int32_t>(y);
    if (to[x] < 0) to[x] = static_cast<int32_t>(first.size()), first.push_back(x);
  }
  std::vector<int32_t>& v = along == 0 ? rows : cols;
  for (int32_t& c : v) c = to[c];
  const int m = static_cast<int>(first.size());
  const int NR = along == 0 ? m : R, NC = along == 0 ? C : m;
  std::vector<double> out(size_t(K) * NR * NC);
  for (int k = 0; k < K; ++k)
    for (int r = 0; r < NR; ++r)
      for (int c = 0; c < NC; ++c)
        out[(int64_t(k) * NR + r) * NC + c] = along == 0 ? at(k, first[r], c) : at(k, r, first[c]);
  return out;
}

// "0,1,1,2" for a class list.
static std::string join_ints(const std::vector<int32_t>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) {
    if (i) s += ',';
    s += std::to_string(v[i]);
  }
  return s;
}

static bool is_identity(const std::vector<int32_t>& v) {
  for (size_t i = 0; i < v.size(); ++i)
    if (v[i] != static_cast<int32_t>(i)) return false;
  return true;
}

std::map<std::string, std::string> Conv2d::attrs() const {
  std::map<std::string, std::string> a = {
      {"in", std::to_string(in_channels)}, {"out", std::to_string(out_channels)}, {"kh", std::to_string(kernel_h)},
      {"kw", std::to_string(kernel_w)},    {"stride", std::to_string(stride)},    {"pad", std::to_string(pad)},
      {"bias", has_bias ? "1" : "0"},      {"relu", fused_relu ? "1" : "0"}};
  if (pos_h > 0) {
    a["pos_h"] = std::to_string(pos_h), a["pos_w"] = std::to_string(pos_w);
    // A table with one class per row and column is written as before the tables existed.
    if (!is_identity(pos_rows) || !is_identity(pos_cols)) a["pos_rows"] = join_ints(pos_rows), a["pos_cols"] = join_ints(pos_cols);
  }
  return a;
}

Conv2dParams Conv2d::conv_params(const Shape& x) const {
  Conv2dParams p;
  p.N = x[0], p.C = x[1], p.H = x[2], p.W = x[3];
  p.K = out_channels, p.R = kernel_h, p.S = kernel_w, p.stride = stride, p.pad = pad;
  return p;
}

Shape Conv2d::output_shape(const std::vector<Shape>& in) const {
  const Shape& x = in.at(0);
  need_rank(x, 4, "conv");
  check(x[1] == in_channels,
        [&] { return "conv: expected " + std::to_string(in_channels) + " input channels, got " + shape_str(x); });
  check(x[2] + 2 * pad >= kernel_h && x[3] + 2 * pad >= kernel_w,
        [&] {
          return "conv: input " + shape_str(x) + " smaller than its " + std::to_string(kernel_h) + "x" +
                 std::to_string(kernel_w) + " kernel";
        });
  Conv2dParams p = conv_params(x);
  check(pos_h == 0 || (p.P() == pos_h && p.Q() == pos_w),
        [&] {
          return "conv: its border table covers " + std::to_string(pos_h) + "x" + std::to_string(pos_w) +
                 " but the output would be " + std::to_string(p.P()) + "x" + std::to_string(p.Q());
        });
  return {x[0], out_channels, p.P(), p.Q()};
}

bool SparseExecution::runs_sparse(int64_t batch) const {
  if (always) return true;
  const Choice* best = nullptr;
  double best_gap = 0;
  for (const Choice& c : choices) {  // the nearest planned batch on a log scale; ties: the smaller
    const double gap = std::fabs(std::log(double(std::max<int64_t>(batch, 1))) - std::log(double(c.batch)));
    if (!best || gap < best_gap) best = &c, best_gap = gap;
  }
  return best && best->sparse;
}

bool SparseExecution::sparse_at_every_batch() const {
  if (weight.rows == 0) return false;
  if (always) return true;
  return !choices.empty() &&
         std::all_of(choices.begin(), choices.end(), [](const Choice& c) { return c.sparse; });
}

// ---- released dense weights (the shared part of Conv2d's and Linear's)

// Drops w's value when the plan runs sparse at every batch and the weight is on the CPU.
static bool release_weight(Param& w, const std::shared_ptr<const SparseExecution>& plan) {
  if (!w.value.defined() || !w.value.is_cpu() || !plan || !plan->sparse_at_every_batch()) return false;
  w.value = Tensor();
  w.grad = Tensor();
  return true;
}

// The dense weight rebuilt from the plan's sparse form: every nonzero where it was, +0.0 elsewhere.
static Tensor rebuilt_weight(const std::shared_ptr<const SparseExecution>& plan, const Shape& shape,
                             const std::string& layer) {
  check(plan && plan->weight.rows > 0 && int64_t(plan->weight.rows) * plan->weight.cols == shape_numel(shape),
        [&] { return layer + ": its dense weight was released and no sparse form of " + shape_str(shape) +
                     " is left to rebuild it from (release_dense_weight keeps the plan; restore before dropping it)"; });
  return Tensor::from(shape, sparse_to_dense(plan->weight));
}

// An eval forward about to run the dense kernel: the weight must be held.
static void need_dense_weight(const Param& w, const std::string& layer) {
  check(w.value.defined(), [&] {
    return layer + ": the dense weight was released (Model::release_dense_weights) and this forward would run "
                   "the dense kernel: restore_dense_weights first";
  });
}

int64_t SparseExecution::bytes() const {
  return (weight.rows ? weight.bytes() : 0) + (runs ? cpu::sparse_conv_runs_bytes(*runs) : 0);
}

const SparseExecution::Choice* SparseExecution::choice_for(int64_t batch) const {
  for (const Choice& c : choices)
    if (c.batch == batch) return &c;
  return nullptr;
}

// y[n, k, p, q] += table[k, rows[p], cols[q]] for every image n. Other devices go through the
// host: border tables only appear in compacted inference graphs, on few layers.
static void add_border_table(const Tensor& table, const std::vector<int32_t>& rows, const std::vector<int32_t>& cols,
                             Tensor& out) {
  const int64_t N = out.dim(0), K = out.dim(1), P = out.dim(2), Q = out.dim(3);
  const int64_t TR = table.dim(1), TC = table.dim(2);
  Tensor host = out.is_cpu() ? out : out.to(Device::CPU);
  Tensor tb = table.is_cpu() ? table : table.to(Device::CPU);
  float* y = host.data();       // (N, K, P, Q)
  const float* t = tb.data();   // (K, TR, TC)
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k)
      for (int64_t p = 0; p < P; ++p) {
        const float* trow = t + (k * TR + rows[p]) * TC;  // (TC)
        float* yrow = y + ((n * K + k) * P + p) * Q;       // (Q)
        for (int64_t q = 0; q < Q; ++q) yrow[q] += trow[cols[q]];
      }
  if (!out.is_cpu()) out.copy_from(host);
}

std::unique_ptr<Layer> Conv2d::clone() const {
  auto c = std::make_unique<Conv2d>(*this);
  if (sparse_train) c->sparse_train = std::make_shared<SparseTrainPattern>(*sparse_train);
  return c;
}

bool Conv2d::release_dense_weight() { return release_weight(weight, sparse_exec); }

void Conv2d::restore_dense_weight() {
  if (weight_released()) weight.value = dense_weight();
}

Tensor Conv2d::dense_weight() const {
  if (!weight_released()) return weight.value;
  return rebuilt_weight(sparse_exec, weight_shape(), "conv " + shape_str(weight_shape()));
}

void Conv2d::to(Device dev) {
  if (dev != Device::CPU) restore_dense_weight();  // the sparse kernels run on the CPU only
  Layer::to(dev);
}

// Whether a training pass runs the sparse kernels: a pattern is set, the layer is one they
// cover (on the CPU, no border table, input channels left) and the optimized backend runs (the
// sparse training kernels have no reference version: a plan made before set_cpu_backend
// (Reference) trains dense there, as plan_training_execution would have planned it).
static bool trains_sparse(const Conv2d& c, const Tensor& t) {
  return c.sparse_train && t.is_cpu() && c.pos_h == 0 && c.in_channels > 0 && cpu_backend() == CpuBackend::Optimized;
}
static bool trains_sparse(const Linear& l, const Tensor& t) {
  return l.sparse_train && t.is_cpu() && l.in_features > 0 && cpu_backend() == CpuBackend::Optimized;
}

static std::string conv_name(const Conv2d& c) {
  return "conv (" + std::to_string(c.out_channels) + ", " + std::to_string(c.in_channels) + ", " +
         std::to_string(c.kernel_h) + ", " + std::to_string(c.kernel_w) + ")";
}

void Conv2d::forward(const std::vector<const Tensor*>& in, Tensor& out, bool train) {
  if (out.numel() == 0) return;  // every output channel was removed
  if (train) restore_dense_weight();  // training reads and changes the dense weight
  if (train && trains_sparse(*this, out)) {
    sparse_train_gather(*sparse_train, weight.value.data(), weight.value.numel(), conv_name(*this).c_str());
    ops::sparse_conv2d_forward(conv_params(in[0]->shape()), *in[0], sparse_train->w, bias.value, fused_relu, out);
    return;
  }
  if (!train && in_channels > 0 && sparse_exec && out.is_cpu() && sparse_exec->runs_sparse(out.dim(0))) {
    // The ReLU fuses into the kernel unless the border table must be added before it.
    const bool relu_in_kernel = fused_relu && pos_h == 0;
    ops::sparse_conv2d_forward(conv_params(in[0]->shape()), *in[0], sparse_exec->weight, bias.value,
                               relu_in_kernel, out, sparse_exec->runs.get());
    if (pos_h > 0) add_border_table(pos_bias.value, pos_rows, pos_cols, out);
    if (fused_relu && !relu_in_kernel) ops::relu_forward(out, out);
    return;
  }
  need_dense_weight(weight, "conv " + shape_str(weight_shape()));
  if (in_channels == 0) {
    // Every input channel was removed: the output is the bias (what they folded into).
    std::vector<float> b = has_bias ? bias.value.to_vector() : std::vector<float>(out_channels, 0.0f);
    const int64_t n = out.dim(0), plane = out.dim(2) * out.dim(3);
    Tensor host = Tensor::uninit(out.shape());
    for (int64_t i = 0; i < n; ++i)
      for (int k = 0; k < out_channels; ++k)
        std::fill(host.data() + (i * out_channels + k) * plane, host.data() + (i * out_channels + k + 1) * plane, b[k]);
    out.copy_from(host);
  } else if (fused_relu && pos_h == 0) {  // ReLU in the convolution's output pass
    ops::conv2d_forward_relu(conv_params(in[0]->shape()), *in[0], weight.value, bias.value, out);
    return;
  } else {
    ops::conv2d_forward(conv_params(in[0]->shape()), *in[0], weight.value, bias.value, out);
  }
  if (pos_h > 0) add_border_table(pos_bias.value, pos_rows, pos_cols, out);
  if (fused_relu) ops::relu_forward(out, out);
}

bool Conv2d::folds_batchnorm(const Shape& x) const {
  if (!weight.value.defined() || !weight.value.is_cpu() || pos_h > 0 || in_channels == 0 || out_channels == 0 ||
      fused_relu)
    return false;
  const Conv2dParams p = conv_params(x);
  if (sparse_exec && sparse_exec->runs_sparse(p.N)) return false;
  return int64_t(p.N) * p.P() * p.Q() >= kMinFoldOutputs;
}

void Conv2d::forward_folded(const Tensor& x, const BatchNorm2d& bn, bool relu, Tensor& out) const {
  check(folds_batchnorm(x.shape()), "internal: conv folded with a batchnorm where it cannot be");
  check(bn.channels == out_channels, "internal: folding a batchnorm of " + std::to_string(bn.channels) +
                                         " channels into a conv of " + std::to_string(out_channels));
  const int64_t K = out_channels, per_filter = weight.value.numel() / K;
  Tensor w = Tensor::uninit(weight.value.shape()), b = Tensor::uninit({K});
  const float* src = weight.value.data();
  std::vector<double> scale, shift;
  bn.eval_affine(scale, shift);
  for (int64_t k = 0; k < K; ++k) {
    const double bias_k = has_bias ? double(bias.value[k]) : 0.0;
    b[k] = float(bias_k * scale[k] + shift[k]);
    for (int64_t j = 0; j < per_filter; ++j) w[k * per_filter + j] = float(double(src[k * per_filter + j]) * scale[k]);
  }
  const Conv2dParams p = conv_params(x.shape());
  if (relu) ops::conv2d_forward_relu(p, x, w, b, out);
  else ops::conv2d_forward(p, x, w, b, out);
}

void Conv2d::backward(const std::vector<const Tensor*>& in, const Tensor& out, const Tensor& dout,
                      const std::vector<Tensor*>& din) {
  restore_dense_weight();  // from the sparse form, before it goes
  sparse_exec.reset();  // training changes the weight the sparse form was made from
  Conv2dParams p = conv_params(in[0]->shape());
  const Tensor* dy = &dout;
  Tensor masked;
  if (fused_relu) {  // gradient through the fused ReLU first
    masked = Tensor::uninit(dout.shape(), dout.device());
    ops::relu_backward(out, dout, masked);
    dy = &masked;
  }
  if (!weight.grad.defined()) weight.grad = Tensor::uninit(weight.value.shape(), weight.value.device());
  if (has_bias && !bias.grad.defined()) bias.grad = Tensor::uninit(bias.value.shape(), bias.value.device());
  if (pos_h > 0) {
    // d pos_bias[k, r, c] = sum of dy over the batch and the positions of row class r, column class c.
    std::vector<float> g = dy->to_vector();  // (N, K, P, Q)
    const int64_t N = dy->dim(0), K = out_channels, TR = table_rows(), TC = table_cols();
    Tensor acc({K, TR, TC});
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k)
        for (int p = 0; p < pos_h; ++p)
          for (int q = 0; q < pos_w; ++q)
            acc[(k * TR + pos_rows[p]) * TC + pos_cols[q]] += g[((n * K + k) * pos_h + p) * pos_w + q];
    pos_bias.grad = acc.to(pos_bias.value.device());
  }
  if (out_channels == 0 || dy->numel() == 0) {  // nothing flows: every gradient is zero
    if (din[0]) din[0]->zero();
    weight.grad.zero();
    if (has_bias) bias.grad.zero();
    return;
  }
  if (in_channels == 0) {
    // No weights to learn; the bias gradient is the sum of dy over batch and positions.
    if (has_bias) {
      std::vector<float> g = dy->to_vector();
      const int64_t n = dy->dim(0), plane = dy->dim(2) * dy->dim(3);
      Tensor db({out_channels});
      for (int64_t i = 0; i < n; ++i)
        for (int k = 0; k < out_channels; ++k)
          for (int64_t j = 0; j < plane; ++j) db[k] += g[(i * out_channels + k) * plane + j];
      bias.grad = db.to(bias.value.device());
    }
    return;
  }
  if (trains_sparse(*this, *dy)) {
    // The pattern holds the values the training forward gathered: the weight does not change
    // between a forward and its backward.
    ops::sparse_conv2d_backward_weights(p, *in[0], *dy, *sparse_train, weight.grad, bias.grad);
    if (din[0]) ops::sparse_conv2d_backward_data(p, *dy, *sparse_train, *din[0]);
    return;
  }
  ops::conv2d_backward_weights(p, *in[0], *dy, weight.grad, bias.grad);
  if (din[0]) ops::conv2d_backward_data(p, *dy, weight.value, *din[0]);
}

std::vector<Param*> Conv2d::params() {
  std::vector<Param*> out = {&weight};
  if (has_bias) out.push_back(&bias);
  if (pos_h > 0) out.push_back(&pos_bias);
  return out;
}

// ---------------------------------------------------------------- BatchNorm2d

BatchNorm2d::BatchNorm2d(int c, float eps_, float momentum_) : channels(c), eps(eps_), momentum(momentum_) {
  check(c >= 0, "batchnorm: negative channel count");
  gamma = {"weight", Tensor::full({c}, 1.0f), Tensor(), false};
  beta = {"bias", Tensor({c}), Tensor(), false};
  running_mean = Tensor({c});
  running_var = Tensor::full({c}, 1.0f);
}

std::map<std::string, std::string> BatchNorm2d::attrs() const {
  char e[32], m[32];
  std::snprintf(e, sizeof e, "%.9g", eps);
  std::snprintf(m, sizeof m, "%.9g", momentum);
  return {{"channels", std::to_string(channels)}, {"eps", e}, {"momentum", m}};
}

Shape BatchNorm2d::output_shape(const std::vector<Shape>& in) const {
  const Shape& x = in.at(0);
  check(x.size() >= 2 && x[1] == channels,
        [&] { return "batchnorm: expected " + std::to_string(channels) + " channels, got " + shape_str(x); });
  return x;
}

BatchNormParams BatchNorm2d::bn_params(const Shape& x) const {
  BatchNormParams p;
  p.N = x[0], p.C = x[1];
  p.HW = 1;
  for (size_t i = 2; i < x.size(); ++i) p.HW *= x[i];
  p.eps = eps, p.momentum = momentum;
  return p;
}

std::vector<std::pair<std::string, Tensor*>> BatchNorm2d::buffers() {
  return {{"running_mean", &running_mean}, {"running_var", &running_var}};
}

void BatchNorm2d::to(Device dev) {
  Layer::to(dev);
  if (save_mean.defined()) save_mean = save_mean.to(dev), save_invstd = save_invstd.to(dev);
}

std::unique_ptr<Layer> BatchNorm2d::clone() const { return std::make_unique<BatchNorm2d>(*this); }

void BatchNorm2d::forward(const std::vector<const Tensor*>& in, Tensor& out, bool train) {
  BatchNormParams p = bn_params(in[0]->shape());
  if (train) {
    Device d = in[0]->device();
    if (!save_mean.defined() || save_mean.device() != d) {
      save_mean = Tensor({channels}, d);
      save_invstd = Tensor({channels}, d);
    }
    synced_forward_ = sync_stats && dist::size() > 1;
    if (synced_forward_) {
      forward_synced(p, *in[0], out);
      return;
    }
    if (relu_fused) {
      check(fusable_with_relu(*in[0]), "internal: batchnorm fused with a ReLU where it cannot run fused");
      ops::batchnorm_forward_train_relu(p, *in[0], gamma.value, beta.value, running_mean, running_var, out,
                                        save_mean, save_invstd);
      return;
    }
    ops::batchnorm_forward_train(p, *in[0], gamma.value, beta.value, running_mean, running_var, out, save_mean,
                                 save_invstd);
  } else {
    ops::batchnorm_forward_eval(p, *in[0], gamma.value, beta.value, running_mean, running_var, out);
  }
}

void BatchNorm2d::backward(const std::vector<const Tensor*>& in, const Tensor&, const Tensor& dout,
                           const std::vector<Tensor*>& din) {
  check(save_mean.defined(), "batchnorm backward called without a training forward");
  if (!gamma.grad.defined()) gamma.grad = Tensor::uninit({channels}, gamma.value.device());
  if (!beta.grad.defined()) beta.grad = Tensor::uninit({channels}, beta.value.device());
  Tensor scratch;
  Tensor* dx = din[0];
  if (!dx) {  // the input needs no gradient, but gamma and beta do
    scratch = Tensor::uninit(in[0]->shape(), in[0]->device());
    dx = &scratch;
  }
  if (synced_forward_) {
    backward_synced(bn_params(in[0]->shape()), *in[0], dout, din[0] ? dx : nullptr);
    return;
  }
  if (relu_fused) {
    ops::batchnorm_backward_relu(bn_params(in[0]->shape()), *in[0], dout, gamma.value, beta.value, save_mean,
                                 save_invstd, *dx, gamma.grad, beta.grad);
    return;
  }
  ops::batchnorm_backward(bn_params(in[0]->shape()), *in[0], dout, gamma.value, save_mean, save_invstd, *dx,
                          gamma.grad, beta.grad);
}

void BatchNorm2d::eval_affine(std::vector<double>& scale, std::vector<double>& shift) const {
  const std::vector<float> g = gamma.value.to_vector(), b = beta.value.to_vector(), mu = running_mean.to_vector(),
                           var = running_var.to_vector();
  scale.resize(channels);
  shift.resize(channels);
  for (int c = 0; c < channels; ++c) {
    scale[c] = g[c] / std::sqrt(double(var[c]) + double(eps));
    shift[c] = b[c] - mu[c] * scale[c];
  }
}

bool BatchNorm2d::fusable_with_relu(const Tensor& x) const { return x.is_cpu() && !(sync_stats && dist::size() > 1); }

// Global-batch statistics from every rank's (count m_r, mean_r, M2_r: the sum of squared
// deviations from mean_r) per channel, each computed here in double with two passes over the
// rank's rows, and combined in rank order (Chan et al.'s pairwise update, in double), so
// every rank computes the same bits. The input is normalised once, with the global mean and
// 1/sqrt(var + eps): the eval kernel with gamma * invstd as its scale, variance 1 and eps 0,
// which is exactly what the training kernel computes from the same mean and invstd. The
// running averages take the unbiased variance over the global batch, as the kernel does; a
// global batch of one value per channel is refused as the kernel refuses it, on every rank.
void BatchNorm2d::forward_synced(const BatchNormParams& p, const Tensor& x, Tensor& out) {
  const int C = channels, R = dist::size();
  const size_t per_rank = 1 + 2 * size_t(C);  // count, then C means, then C M2s
  std::vector<double> mine(per_rank), all(size_t(R) * per_rank);
  const int64_t m = int64_t(p.N) * p.HW;  // this rank's values per channel
  mine[0] = double(m);
  if (m > 0) {
    Tensor host = x.is_cpu() ? x : x.to(Device::CPU);
    const float* xp = host.data();  // (N, C, HW)
    parallel_for(0, C, 1, [&](int c0, int c1) {
      for (int c = c0; c < c1; ++c) {
        double sum = 0.0, m2 = 0.0;
        for (int n = 0; n < p.N; ++n) {
          const float* xc = xp + (int64_t(n) * C + c) * p.HW;  // (HW)
          for (int64_t i = 0; i < p.HW; ++i) sum += xc[i];
        }
        const double mean = sum / double(m);
        for (int n = 0; n < p.N; ++n) {
          const float* xc = xp + (int64_t(n) * C + c) * p.HW;  // (HW)
          for (int64_t i = 0; i < p.HW; ++i) m2 += (xc[i] - mean) * (xc[i] - mean);
        }
        mine[1 + c] = mean, mine[1 + C + c] = m2;
      }
    });
  }
  dist::allgather(mine.data(), static_cast<int>(mine.size()), all.data());
  double count = 0;
  for (int r = 0; r < R; ++r) count += all[size_t(r) * per_rank];
  // Every rank sees the same gathered counts: all of them refuse, none waits for the others.
  check(count > 1, [&] {
    return "batchnorm: need more than 1 value per channel to train, got " + std::to_string(int64_t(count)) +
           " over all " + std::to_string(R) + " ranks";
  });
  const std::vector<float> g = gamma.value.to_vector();
  std::vector<float> mean(C), invstd(C), scale(C), ones(C, 1.0f), run_mean = running_mean.to_vector(),
      run_var = running_var.to_vector();
  for (int c = 0; c < C; ++c) {
    double n = 0, mu = 0, m2 = 0;  // m2: sum of squared deviations so far
    for (int r = 0; r < R; ++r) {
      const double* a = all.data() + size_t(r) * per_rank;  // (1 + 2C)
      const double nr = a[0];
      if (nr == 0) continue;  // a rank without rows adds nothing
      const double delta = a[1 + c] - mu, total = n + nr;
      mu += delta * nr / total;
      m2 += a[1 + C + c] + delta * delta * n * nr / total;
      n = total;
    }
    const double is = 1.0 / std::sqrt(m2 / n + double(eps));  // biased variance normalises the batch
    mean[c] = float(mu);
    invstd[c] = float(is);
    scale[c] = float(double(g[c]) * is);
    run_mean[c] = float((1.0 - momentum) * run_mean[c] + momentum * mu);
    run_var[c] = float((1.0 - momentum) * run_var[c] + momentum * (m2 / (n - 1)));
  }
  global_count_ = static_cast<int64_t>(count);
  const Device d = x.device();
  save_mean.copy_from(Tensor::from({C}, mean));
  save_invstd.copy_from(Tensor::from({C}, invstd));
  running_mean.copy_from(Tensor::from({C}, run_mean));
  running_var.copy_from(Tensor::from({C}, run_var));
  BatchNormParams q = p;
  q.eps = 0.0f;  // (x - mean) * scale / sqrt(1 + 0) + beta
  ops::batchnorm_forward_eval(q, x, Tensor::from({C}, scale).to(d), beta.value, save_mean, Tensor::from({C}, ones).to(d),
                              out);
}

// Backward over the global batch: with S1 = sum(dy), S2 = sum(dy * xhat) over all M values of
// a channel on every rank, dx = gamma * invstd * (dy - S1/M - xhat * S2/M). The kernel gives
// this rank's sums s1, s2 (as dbeta, dgamma) and dx with its own m values in place of M:
//   dx = dx_kernel + gamma*invstd*(s1/m - S1/M) + gamma*invstd^2*(s2/m - S2/M) * (x - mean),
// an affine map of x per channel, applied with the eval kernel (mean, variance 1, eps 0).
// dgamma and dbeta stay this rank's sums: the gradient allreduce adds them up.
void BatchNorm2d::backward_synced(const BatchNormParams& p, const Tensor& x, const Tensor& dout, Tensor* dx) {
  const int C = channels, R = dist::size();
  Tensor scratch;
  Tensor& dxk = dx ? *dx : (scratch = Tensor::uninit(x.shape(), x.device()));
  ops::batchnorm_backward(p, x, dout, gamma.value, save_mean, save_invstd, dxk, gamma.grad, beta.grad);
  const std::vector<float> s1 = beta.grad.to_vector(), s2 = gamma.grad.to_vector();  // (C)
  std::vector<double> mine(1 + 2 * size_t(C)), all(size_t(R) * (1 + 2 * size_t(C)));
  mine[0] = double(p.N) * p.HW;
  for (int c = 0; c < C; ++c) mine[1 + c] = s1[c], mine[1 + C + c] = s2[c];
  dist::allgather(mine.data(), static_cast<int>(mine.size()), all.data());
  if (!dx) return;
  const std::vector<float> g = gamma.value.to_vector(), is = save_invstd.to_vector();
  std::vector<float> shift(C), slope(C), ones(C, 1.0f);
  const double m = mine[0], M = double(global_count_);
  for (int c = 0; c < C; ++c) {
    double S1 = 0, S2 = 0;
    for (int r = 0; r < R; ++r) {
      const double* a = all.data() + size_t(r) * (1 + 2 * size_t(C));
      S1 += a[1 + c], S2 += a[1 + C + c];
    }
    shift[c] = float(double(g[c]) * is[c] * (s1[c] / m - S1 / M));
    slope[c] = float(double(g[c]) * is[c] * is[c] * (s2[c] / m - S2 / M));
  }
  Device d = x.device();
  BatchNormParams q = p;
  q.eps = 0.0f;
  Tensor correction = Tensor::uninit(x.shape(), d);
  ops::batchnorm_forward_eval(q, x, Tensor::from({C}, slope).to(d), Tensor::from({C}, shift).to(d), save_mean,
                              Tensor::from({C}, ones).to(d), correction);
  ops::accumulate(correction, *dx);
}

// ---------------------------------------------------------------- ReLU

void ReLU::forward(const std::vector<const Tensor*>& in, Tensor& out, bool) { ops::relu_forward(*in[0], out); }

void ReLU::backward(const std::vector<const Tensor*>&, const Tensor& out, const Tensor& dout,
                    const std::vector<Tensor*>& din) {
  if (din[0]) ops::relu_backward(out, dout, *din[0]);
}

// ---------------------------------------------------------------- Pool2d

std::map<std::string, std::string> Pool2d::attrs() const {
  return {{"kernel", std::to_string(kernel)}, {"stride", std::to_string(stride)}};
}

Pool2dParams Pool2d::pool_params(const Shape& x) const {
  Pool2dParams p;
  p.N = x[0], p.C = x[1], p.H = x[2], p.W = x[3], p.k = kernel, p.stride = stride;
  return p;
}

Shape Pool2d::output_shape(const std::vector<Shape>& in) const {
  const Shape& x = in.at(0);
  need_rank(x, 4, is_max ? "maxpool" : "avgpool");
  check(kernel > 0 && stride > 0 && x[2] >= kernel && x[3] >= kernel,
        [&] {
          return std::string(is_max ? "maxpool" : "avgpool") + ": input " + shape_str(x) + " smaller than the " +
                 std::to_string(kernel) + "x" + std::to_string(kernel) + " window";
        });
  Pool2dParams p = pool_params(x);
  return {x[0], x[1], p.P(), p.Q()};
}

void Pool2d::forward(const std::vector<const Tensor*>& in, Tensor& out, bool) {
  Pool2dParams p = pool_params(in[0]->shape());
  if (is_max) ops::maxpool_forward(p, *in[0], out);
  else ops::avgpool_forward(p, *in[0], out);
}

void Pool2d::backward(const std::vector<const Tensor*>& in, const Tensor&, const Tensor& dout,
                      const std::vector<Tensor*>& din) {
  if (!din[0]) return;
  Pool2dParams p = pool_params(din[0]->shape());
  if (is_max) ops::maxpool_backward(p, *in[0], dout, *din[0]);
  else ops::avgpool_backward(p, dout, *din[0]);
}

// ---------------------------------------------------------------- GlobalAvgPool, Flatten

Shape GlobalAvgPool::output_shape(const std::vector<Shape>& in) const {
  need_rank(in.at(0), 4, "global_avgpool");
  return {in[0][0], in[0][1]};
}

void GlobalAvgPool::forward(const std::vector<const Tensor*>& in, Tensor& out, bool) {
  ops::global_avgpool_forward(*in[0], out);
}

void GlobalAvgPool::backward(const std::vector<const Tensor*>&, const Tensor&, const Tensor& dout,
                             const std::vector<Tensor*>& din) {
  if (din[0]) ops::global_avgpool_backward(dout, *din[0]);
}

Shape Flatten::output_shape(const std::vector<Shape>& in) const {
  const Shape& x = in.at(0);
  check(!x.empty(), "flatten: scalar input");
  int64_t n = 1;
  for (size_t i = 1; i < x.size(); ++i) n *= x[i];
  return {x[0], n};
}

void Flatten::forward(const std::vector<const Tensor*>& in, Tensor& out, bool) { out.copy_from(*in[0]); }

void Flatten::backward(const std::vector<const Tensor*>&, const Tensor&, const Tensor& dout,
                       const std::vector<Tensor*>& din) {
  if (din[0]) din[0]->copy_from(dout);
}

// ---------------------------------------------------------------- Linear

Linear::Linear(int in_f, int out_f, bool bias_, bool zero_weight)
    : in_features(in_f), out_features(out_f), has_bias(bias_) {
  check(in_f >= 0 && out_f >= 0,
        [&] { return "linear: invalid configuration in=" + std::to_string(in_f) + " out=" + std::to_string(out_f); });
  weight = {"weight", zero_weight ? Tensor({out_f, in_f}) : Tensor::uninit({out_f, in_f}), Tensor(), true};
  if (has_bias) bias = {"bias", Tensor({out_f}), Tensor(), false};
}

std::map<std::string, std::string> Linear::attrs() const {
  return {{"in", std::to_string(in_features)}, {"out", std::to_string(out_features)},
          {"bias", has_bias ? "1" : "0"}};
}

Shape Linear::output_shape(const std::vector<Shape>& in) const {
  const Shape& x = in.at(0);
  check(x.size() == 2 && x[1] == in_features,
        [&] { return "linear: expected input (N, " + std::to_string(in_features) + "), got " + shape_str(x); });
  return {x[0], out_features};
}

std::unique_ptr<Layer> Linear::clone() const {
  auto l = std::make_unique<Linear>(*this);
  if (sparse_train) l->sparse_train = std::make_shared<SparseTrainPattern>(*sparse_train);
  return l;
}

static std::string linear_name(const Linear& l) {
  return "linear (" + std::to_string(l.out_features) + ", " + std::to_string(l.in_features) + ")";
}

bool Linear::release_dense_weight() { return release_weight(weight, sparse_exec); }

void Linear::restore_dense_weight() {
  if (weight_released()) weight.value = dense_weight();
}

Tensor Linear::dense_weight() const {
  if (!weight_released()) return weight.value;
  return rebuilt_weight(sparse_exec, weight_shape(), linear_name(*this));
}

void Linear::to(Device dev) {
  if (dev != Device::CPU) restore_dense_weight();  // the sparse kernels run on the CPU only
  Layer::to(dev);
}

void Linear::forward(const std::vector<const Tensor*>& in, Tensor& out, bool train) {
  if (out.numel() == 0) return;  // every output feature was removed by compaction
  if (train) restore_dense_weight();  // training reads and changes the dense weight
  if (train && trains_sparse(*this, out)) {
    sparse_train_gather(*sparse_train, weight.value.data(), weight.value.numel(), linear_name(*this).c_str());
    ops::sparse_linear_forward(*in[0], sparse_train->w, bias.value, false, out);
    return;
  }
  if (!train && in_features > 0 && sparse_exec && out.is_cpu() && sparse_exec->runs_sparse(out.dim(0))) {
    ops::sparse_linear_forward(*in[0], sparse_exec->weight, bias.value, false, out);
    return;
  }
  need_dense_weight(weight, linear_name(*this));
  if (in_features == 0) {
    // Every input feature was removed by compaction: each row of the output is the bias
    // (the constant the removed features folded into it).
    std::vector<float> b = has_bias ? bias.value.to_vector() : std::vector<float>(out_features, 0.0f);
    Tensor host = Tensor::uninit(out.shape());
    for (int64_t n = 0; n < out.dim(0); ++n)
      for (int o = 0; o < out_features; ++o) host[n * out_features + o] = b[o];
    out.copy_from(host);
    return;
  }
  ops::linear_forward(*in[0], weight.value, bias.value, out);
}

void Linear::backward(const std::vector<const Tensor*>& in, const Tensor&, const Tensor& dout,
                      const std::vector<Tensor*>& din) {
  restore_dense_weight();  // from the sparse form, before it goes
  sparse_exec.reset();  // training changes the weight the sparse form was made from
  if (!weight.grad.defined()) weight.grad = Tensor::uninit(weight.value.shape(), weight.value.device());
  if (has_bias && !bias.grad.defined()) bias.grad = Tensor::uninit(bias.value.shape(), bias.value.device());
  check(in_features > 0, "linear: a layer with no input features cannot be trained");
  if (out_features == 0) {  // no outputs: nothing reaches the input
    if (din[0]) din[0]->zero();
    return;
  }
  if (trains_sparse(*this, dout)) {  // the values the training forward gathered, as in Conv2d
    ops::sparse_linear_backward_weights(*in[0], dout, *sparse_train, weight.grad, bias.grad);
    if (din[0]) ops::sparse_linear_forward(dout, sparse_train->wt, Tensor(), false, *din[0]);
    return;
  }
  ops::linear_backward_weights(*in[0], dout, weight.grad, bias.grad);
  if (din[0]) ops::linear_backward_data(dout, weight.value, *din[0]);
}

std::vector<Param*> Linear::params() {
  if (has_bias) return {&weight, &bias};
  return {&weight};
}

// ---------------------------------------------------------------- Add

Add::Add(int channels_, std::vector<int32_t> map0, std::vector<int32_t> map1, bool bias_)
    : channels(channels_), map{std::move(map0), std::move(map1)}, has_bias(bias_) {
  check(channels > 0, [&] { return "add: a mapped add needs a positive channel count, got " + std::to_string(channels); });
  for (int i = 0; i < 2; ++i)
    for (size_t c = 0; c < map[i].size(); ++c)
      check(map[i][c] >= 0 && map[i][c] < channels && (c == 0 || map[i][c] > map[i][c - 1]), [&] {
        return "add: channel map " + std::to_string(i) + " must list ascending channels in [0, " +
               std::to_string(channels) + "), got " + join_ints(map[i]);
      });
  if (has_bias) bias = {"bias", Tensor({channels}), Tensor(), false};
}

std::map<std::string, std::string> Add::attrs() const {
  if (!mapped()) return {};
  std::map<std::string, std::string> a = {{"channels", std::to_string(channels)}, {"bias", has_bias ? "1" : "0"}};
  for (int i = 0; i < 2; ++i)
    if (!map[i].empty()) a[i == 0 ? "map0" : "map1"] = join_ints(map[i]);
  return a;
}

std::vector<Param*> Add::params() {
  if (has_bias) return {&bias};
  return {};
}

Shape Add::output_shape(const std::vector<Shape>& in) const {
  check(in.size() == 2, "add: expected two inputs");
  if (!mapped()) {
    check(in[0] == in[1], [&] { return "add: operand shapes differ: " + shape_str(in[0]) + " vs " + shape_str(in[1]); });
    return in[0];
  }
  Shape out = in[0];
  check(out.size() >= 2, "add: expected (N, C, ...) inputs");
  out[1] = channels;
  for (int i = 0; i < 2; ++i) {
    Shape expect = out;
    expect[1] = map[i].empty() ? channels : static_cast<int64_t>(map[i].size());
    check(in[i] == expect, [&] {
      return "add: input " + std::to_string(i) + " is " + shape_str(in[i]) + ", its channel map expects " +
             shape_str(expect);
    });
  }
  return out;
}

void Add::forward(const std::vector<const Tensor*>& in, Tensor& out, bool) {
  if (!mapped()) {
    ops::add_forward(*in[0], *in[1], out);
    return;
  }
  // On the host: mapped adds appear only in compacted inference graphs. y = bias, then each
  // input added into its channels (an unmapped input first, so that with a zero bias the sum
  // is the plain add's, a + b).
  const int64_t N = out.dim(0), plane = N > 0 && channels > 0 ? out.numel() / (N * channels) : 0;
  // The sum goes straight into a host `out` that is no input, else into the kept scratch.
  const bool direct = out.is_cpu() && out.data() != in[0]->data() && out.data() != in[1]->data();
  Tensor& y = direct ? out : scratch(out.shape());  // (N, channels, plane)
  const float* b = nullptr;                         // (channels)
  Tensor bias_host;
  if (has_bias) {
    bias_host = bias.value.is_cpu() ? bias.value : bias.value.to(Device::CPU);
    b = bias_host.data();
  }
  for (int64_t n = 0; n < N; ++n)
    for (int k = 0; k < channels; ++k) std::fill_n(y.data() + (n * channels + k) * plane, plane, b ? b[k] : 0.0f);
  for (int i : {map[0].empty() ? 0 : 1, map[0].empty() ? 1 : 0}) {
    Tensor x = in[i]->is_cpu() ? *in[i] : in[i]->to(Device::CPU);
    const int64_t C = x.dim(1);
    const float* xp = x.data();  // (N, C, plane)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t c = 0; c < C; ++c) {
        const int64_t k = map[i].empty() ? c : map[i][c];
        float* yk = y.data() + (n * channels + k) * plane;
        const float* xc = xp + (n * C + c) * plane;
        for (int64_t q = 0; q < plane; ++q) yk[q] += xc[q];
      }
  }
  if (!direct) out.copy_from(y);
}

Tensor& Add::scratch(const Shape& shape) {
  if (!scratch_.defined() || scratch_.shape() != shape) scratch_ = Tensor::uninit(shape);
  return scratch_;
}

void Add::backward(const std::vector<const Tensor*>&, const Tensor&, const Tensor& dout,
                   const std::vector<Tensor*>& din) {
  if (!mapped()) {
    for (Tensor* d : din)
      if (d) d->copy_from(dout);
    return;
  }
  Tensor g = dout.is_cpu() ? dout : dout.to(Device::CPU);  // (N, channels, plane)
  const int64_t N = g.dim(0), plane = N > 0 ? g.numel() / (N * channels) : 0;
  for (int i = 0; i < 2; ++i) {
    if (!din[i]) continue;
    const int64_t C = din[i]->dim(1);
    // Gathered straight into a host din that is not dout, else through the kept scratch.
    const bool direct = din[i]->is_cpu() && din[i]->data() != g.data();
    Tensor& d = direct ? *din[i] : scratch(din[i]->shape());  // (N, C, plane)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t c = 0; c < C; ++c) {
        const int64_t k = map[i].empty() ? c : map[i][c];
        std::copy_n(g.data() + (n * channels + k) * plane, plane, d.data() + (n * C + c) * plane);
      }
    if (!direct) din[i]->copy_from(d);
  }
  if (has_bias) {
    // db[k] = sum of dy over the batch and the positions of channel k; summed in the kept
    // gradient tensor where it is a host one of the right shape.
    const bool keep = bias.grad.defined() && bias.grad.is_cpu() && bias.grad.shape() == bias.value.shape();
    Tensor db = keep ? bias.grad : Tensor({channels});
    if (keep) db.zero();
    for (int64_t n = 0; n < N; ++n)
      for (int k = 0; k < channels; ++k)
        for (int64_t q = 0; q < plane; ++q) db[k] += g[(n * channels + k) * plane + q];
    if (!keep) bias.grad = db.to(bias.value.device());
  }
}

// ---------------------------------------------------------------- factory

static int attr_int(const std::map<std::string, std::string>& a, const char* key, const char* layer) {
  auto it = a.find(key);
  check(it != a.end(), std::string(layer) + ": missing attribute '" + key + "'");
  try {
    size_t used = 0;
    int v = std::stoi(it->second, &used);
    check(used == it->second.size(), "");
    return v;
  } catch (...) {
    throw Error(std::string(layer) + ": attribute '" + key + "' is not an integer: '" + it->second + "'");
  }
}

static float attr_float(const std::map<std::string, std::string>& a, const char* key, const char* layer,
                        float def) {
  auto it = a.find(key);
  if (it == a.end()) return def;
  try {
    size_t used = 0;
    float v = std::stof(it->second, &used);
    if (used == it->second.size()) return v;
  } catch (...) {
  }
  throw Error(std::string(layer) + ": attribute '" + key + "' is not a number: '" + it->second + "'");
}

// A comma-separated list of integers ("0,1,1,2").
static std::vector<int32_t> attr_ints(const std::map<std::string, std::string>& a, const char* key) {
  const std::string& s = a.at(key);
  std::vector<int32_t> out;
  size_t at = 0;
  while (at <= s.size()) {
    size_t comma = s.find(',', at);
    if (comma == std::string::npos) comma = s.size();
    std::string part = s.substr(at, comma - at);
    // Plain digits only (class and channel indices are never negative; no '+', no spaces), as
    // the portable runtime's reader takes them.
    bool digits = !part.empty();
    int64_t v = 0;
    for (char ch : part) {
      digits = digits && ch >= '0' && ch <= '9' && v <= INT32_MAX;
      if (digits) v = v * 10 + (ch - '0');
    }
    if (!digits || v > INT32_MAX)
      throw Error(std::string("attribute '") + key + "' is not a list of non-negative integers: '" + s + "'");
    out.push_back(static_cast<int32_t>(v));
    at = comma + 1;
  }
  return out;
}

int64_t declared_params(LayerKind kind, const std::map<std::string, std::string>& a) {
  constexpr int64_t kOver = kMaxSpecParams + 1;
  auto product = [&](std::initializer_list<int64_t> factors) {  // saturating; 0 for a non-positive factor
    int64_t p = 1;
    for (int64_t f : factors) {
      if (f <= 0) return int64_t(0);
      p = p > kOver / f ? kOver : p * f;
    }
    return p;
  };
  auto sum = [&](int64_t x, int64_t y) { return std::min(kOver, x + y); };
  switch (kind) {
    case LayerKind::Conv: {
      const int64_t out = attr_int(a, "out", "conv");
      int64_t n = product({out, attr_int(a, "in", "conv"), attr_int(a, "kh", "conv"), attr_int(a, "kw", "conv")});
      if (attr_int(a, "bias", "conv") != 0) n = sum(n, std::max<int64_t>(out, 0));
      if (a.count("pos_h") && a.count("pos_w")) {  // the border table: (K, row classes, column classes)
        const int64_t rows = a.count("pos_rows") ? class_count(attr_ints(a, "pos_rows")) : attr_int(a, "pos_h", "conv");
        const int64_t cols = a.count("pos_cols") ? class_count(attr_ints(a, "pos_cols")) : attr_int(a, "pos_w", "conv");
        n = sum(n, product({out, rows, cols}));
      }
      return n;
    }
    case LayerKind::BatchNorm: return product({4, attr_int(a, "channels", "batchnorm")});  // gamma, beta, mean, var
    case LayerKind::Linear: {
      const int64_t out = attr_int(a, "out", "linear");
      int64_t n = product({out, attr_int(a, "in", "linear")});
      if (attr_int(a, "bias", "linear") != 0) n = sum(n, std::max<int64_t>(out, 0));
      return n;
    }
    case LayerKind::Add:  // a compacted residual join's bias (nn/layers.h Add)
      return a.count("bias") && attr_int(a, "bias", "add") != 0 ? product({attr_int(a, "channels", "add")}) : 0;
    default: return 0;
  }
}

std::unique_ptr<Layer> make_layer(LayerKind kind, const std::map<std::string, std::string>& a) {
  // An attribute this build does not know would change the layer's meaning: refuse it.
  static const std::map<LayerKind, std::vector<std::string>> known = {
      {LayerKind::Conv, {"in", "out", "kh", "kw", "stride", "pad", "bias", "relu", "pos_h", "pos_w", "pos_rows", "pos_cols"}},
      {LayerKind::BatchNorm, {"channels", "eps", "momentum"}},
      {LayerKind::MaxPool, {"kernel", "stride"}},
      {LayerKind::AvgPool, {"kernel", "stride"}},
      {LayerKind::Linear, {"in", "out", "bias"}},
      {LayerKind::Add, {"channels", "map0", "map1", "bias"}}};
  for (const auto& [key, value] : a) {
    auto it = known.find(kind);
    bool ok = it != known.end() && std::find(it->second.begin(), it->second.end(), key) != it->second.end();
    check(ok, std::string(layer_kind_name(kind)) + ": unknown attribute '" + key + "'");
  }
  switch (kind) {
    case LayerKind::Conv: {
      check(a.count("pos_rows") == a.count("pos_cols"), "conv: 'pos_rows' and 'pos_cols' come together");
      const int pos_h = a.count("pos_h") ? attr_int(a, "pos_h", "conv") : 0;
      const int pos_w = a.count("pos_w") ? attr_int(a, "pos_w", "conv") : 0;
      // With class lists, the table is (K, row classes, column classes): built from them, never
      // as the full (K, pos_h, pos_w) map the constructor would allocate first.
      const bool classes = a.count("pos_rows") > 0;
      auto c = std::make_unique<Conv2d>(attr_int(a, "in", "conv"), attr_int(a, "out", "conv"),
                                      attr_int(a, "kh", "conv"), attr_int(a, "kw", "conv"),
                                      attr_int(a, "stride", "conv"), attr_int(a, "pad", "conv"),
                                      attr_int(a, "bias", "conv") != 0,
                                      a.count("relu") ? attr_int(a, "relu", "conv") != 0 : false,
                                      classes ? 0 : pos_h, classes ? 0 : pos_w);
      if (classes) {
        std::vector<int32_t> rows = attr_ints(a, "pos_rows"), cols = attr_ints(a, "pos_cols");
        check(static_cast<int>(rows.size()) == pos_h && static_cast<int>(cols.size()) == pos_w, [&] {
          return "conv: border-table classes for " + std::to_string(rows.size()) + "x" + std::to_string(cols.size()) +
                 " positions, but pos_h=" + std::to_string(pos_h) + " pos_w=" + std::to_string(pos_w);
        });
        c->set_border_table(std::move(rows), std::move(cols));
      }
      return c;
    }
    case LayerKind::BatchNorm:
      return std::make_unique<BatchNorm2d>(attr_int(a, "channels", "batchnorm"),
                                           attr_float(a, "eps", "batchnorm", 1e-5f),
                                           attr_float(a, "momentum", "batchnorm", 0.1f));
    case LayerKind::ReLU: return std::make_unique<ReLU>();
    case LayerKind::MaxPool:
    case LayerKind::AvgPool:
      return std::make_unique<Pool2d>(kind == LayerKind::MaxPool, attr_int(a, "kernel", "pool"),
                                      attr_int(a, "stride", "pool"));
    case LayerKind::GlobalAvgPool: return std::make_unique<GlobalAvgPool>();
    case LayerKind::Flatten: return std::make_unique<Flatten>();
    case LayerKind::Linear:
      return std::make_unique<Linear>(attr_int(a, "in", "linear"), attr_int(a, "out", "linear"),
                                      attr_int(a, "bias", "linear") != 0);
    case LayerKind::Add:
      if (a.empty()) return std::make_unique<Add>();
      return std::make_unique<Add>(attr_int(a, "channels", "add"), a.count("map0") ? attr_ints(a, "map0") : std::vector<int32_t>(),
                                   a.count("map1") ? attr_ints(a, "map1") : std::vector<int32_t>(),
                                   a.count("bias") ? attr_int(a, "bias", "add") != 0 : false);
  }
  throw Error("make_layer: unknown kind");
}

}  // namespace dnns
