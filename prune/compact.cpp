#include "prune/compact.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>

#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>

#include "core/error.h"
#include "kernels/ops.h"

namespace dnns {

namespace {

int find_root(std::vector<int>& parent, int x) {
  while (parent[x] != x) x = parent[x] = parent[parent[x]];
  return x;
}

// For a weight viewed as (K, C, slice): per (k, c), whether any value is nonzero. For a conv
// slice = R*S; for a linear after a flatten slice = H*W. This is the one full pass over the
// weights, so it works on the bit patterns (any bit but the sign set = nonzero, so -0.0
// counts as zero) in a loop the compiler vectorises.
struct SliceStats {
  int K = 0, C = 0;
  std::vector<uint8_t> nonzero;  // (K, C)
  std::vector<uint8_t> read;     // (C) some k reads channel c
  std::vector<uint8_t> row_any;  // (K) filter k has a nonzero weight
  bool nz(int k, int c) const { return nonzero[size_t(k) * C + c]; }
};

// Whether any of the `S` floats at p is nonzero (a compile-time S unrolls fully). Floats are
// read in pairs as 64-bit words: half the loads of a float-by-float scan.
template <int S>
inline bool any_nonzero_fixed(const float* p) {
  constexpr uint64_t kNoSigns = 0x7fffffff7fffffffull;
  uint64_t any = 0;
  for (int j = 0; j + 1 < S; j += 2) {
    uint64_t bits;
    std::memcpy(&bits, p + j, sizeof bits);
    any |= bits;
  }
  if (S % 2) {
    uint32_t last;
    std::memcpy(&last, p + S - 1, sizeof last);
    any |= last;
  }
  return (any & kNoSigns) != 0;
}

inline bool any_nonzero(const float* p, int64_t n) {
  uint32_t any = 0;
  for (int64_t j = 0; j < n; ++j) {
    uint32_t bits;
    std::memcpy(&bits, p + j, sizeof bits);
    any |= bits & 0x7fffffffu;
  }
  return any != 0;
}

SliceStats slice_stats(const float* w, int K, int C, int64_t slice) {
  SliceStats s;
  s.K = K, s.C = C;
  s.nonzero.assign(size_t(K) * C, 0);
  tbb::parallel_for(tbb::blocked_range<int>(0, K, 16), [&](const tbb::blocked_range<int>& r) {
    for (int k = r.begin(); k < r.end(); ++k) {
      const float* row = w + int64_t(k) * C * slice;  // (C, slice)
      uint8_t* out = s.nonzero.data() + size_t(k) * C;
      if (slice == 9)
        for (int c = 0; c < C; ++c) out[c] = any_nonzero_fixed<9>(row + c * 9);
      else if (slice == 1)
        for (int c = 0; c < C; ++c) out[c] = any_nonzero_fixed<1>(row + c);
      else
        for (int c = 0; c < C; ++c) out[c] = any_nonzero(row + c * slice, slice);
    }
  });
  s.read.assign(C, 0);
  s.row_any.assign(K, 0);
  for (int k = 0; k < K; ++k) {
    const uint8_t* nz = s.nonzero.data() + size_t(k) * C;  // (C)
    uint8_t any = 0;
    for (int c = 0; c < C; ++c) s.read[c] |= nz[c], any |= nz[c];
    s.row_any[k] = any;
  }
  return s;
}

bool is(const Node& n, LayerKind k) { return n.layer && n.layer->kind() == k; }

// Everything the analysis computes, kept for the builder.
struct Analysis {
  ChannelAnalysis pub;
  std::vector<Shape> shapes;               // (nodes) output shape for a batch of 1
  std::vector<SliceStats> stats;           // (nodes) for conv and linear nodes
  std::vector<std::vector<int>> consumers;
};

int channels_of(const Shape& s, int fpc) { return s.size() == 4 ? int(s[1]) : int(s[1] / fpc); }

Analysis analyze(const Model& m) {
  const auto& nodes = m.nodes();
  const int n = static_cast<int>(nodes.size());
  Analysis a;
  ChannelAnalysis& ca = a.pub;
  a.shapes = m.infer_shapes(1);
  a.consumers = m.consumers();
  ca.features_per_channel.assign(n, 1);

  // Channel spaces: union a node with its inputs when it keeps their channel index.
  std::vector<int> parent(n);
  for (int i = 0; i < n; ++i) parent[i] = i;
  for (int i = 1; i < n; ++i) {
    LayerKind k = nodes[i].layer->kind();
    if (k == LayerKind::Conv || k == LayerKind::Linear) continue;
    for (int j : nodes[i].inputs) parent[find_root(parent, i)] = find_root(parent, j);
    int j = nodes[i].inputs[0];
    if (k == LayerKind::Flatten && a.shapes[j].size() == 4)
      ca.features_per_channel[i] = int(a.shapes[j][2] * a.shapes[j][3]);
    else if (k != LayerKind::GlobalAvgPool)
      ca.features_per_channel[i] = ca.features_per_channel[j];
  }
  std::vector<int> space_id(n, -1);
  ca.space.assign(n, -1);
  int spaces = 0;
  for (int i = 0; i < n; ++i) {
    int r = find_root(parent, i);
    if (space_id[r] < 0) space_id[r] = spaces++;
    ca.space[i] = space_id[r];
  }
  ca.space_channels.assign(spaces, -1);
  for (int i = 0; i < n; ++i) {
    int c = channels_of(a.shapes[i], ca.features_per_channel[i]);
    int& sc = ca.space_channels[ca.space[i]];
    check(sc < 0 || sc == c, "compaction: node '" + nodes[i].name + "' has " + std::to_string(c) +
                                 " channels but is joined to tensors of " + std::to_string(sc));
    sc = c;
  }

  // Slice statistics of every conv and linear weight (the one full pass over the weights).
  a.stats.resize(n);
  for (int i = 1; i < n; ++i) {
    if (auto* c = dynamic_cast<const Conv2d*>(nodes[i].layer.get())) {
      check(c->weight.value.is_cpu(), "compaction runs on CPU models; move the model with to(Device::CPU)");
      if (c->in_channels > 0)
        a.stats[i] = slice_stats(c->weight.value.data(), c->out_channels, c->in_channels, int64_t(c->kernel_h) * c->kernel_w);
      else
        a.stats[i] = slice_stats(nullptr, c->out_channels, 0, 0);
    } else if (auto* l = dynamic_cast<const Linear*>(nodes[i].layer.get())) {
      int fpc = ca.features_per_channel[nodes[i].inputs[0]];
      a.stats[i] = slice_stats(l->weight.value.data(), l->out_features, l->in_features / fpc, fpc);
    }
  }

  // Input-independent channels, in eval mode and topological order. A filter with all-zero
  // weights emits its bias; batchnorm, ReLU, pooling and adds of such channels stay
  // input-independent; a conv or linear output is input-independent when every channel it
  // reads is. Each node's batch-1 map holds those channels' exact values (zero elsewhere),
  // computed with the layers themselves on the sub-network of fixed channels.
  ca.fixed.assign(n, {});
  ca.maps.assign(n, Tensor());
  for (int i = 0; i < n; ++i) {
    int C = channels_of(a.shapes[i], ca.features_per_channel[i]);
    auto& fx = ca.fixed[i];
    fx.assign(C, 0);
    if (i == 0) continue;  // the images
    Layer& L = const_cast<Layer&>(*nodes[i].layer);
    const int j = nodes[i].inputs[0];
    const auto& fin = ca.fixed[j];
    if (L.kind() == LayerKind::Conv || L.kind() == LayerKind::Linear) {
      const SliceStats& st = a.stats[i];
      std::vector<int> rows, cols;
      const bool any_fixed_input = std::find(fin.begin(), fin.end(), 1) != fin.end();
      for (int k = 0; k < st.K; ++k) {
        bool ok = !st.row_any[k];  // a dead filter emits its bias
        ca.dead_filters += ok;
        if (!ok && any_fixed_input) {
          ok = true;
          const uint8_t* nz = st.nonzero.data() + size_t(k) * st.C;  // (C)
          for (int c = 0; c < st.C && ok; ++c) ok = !nz[c] || fin[c];
        }
        if (ok) rows.push_back(k), fx[k] = 1;
      }
      if (!rows.empty()) {
        std::vector<uint8_t> read(st.C, 0);
        for (int k : rows) {
          const uint8_t* nz = st.nonzero.data() + size_t(k) * st.C;
          for (int c = 0; c < st.C; ++c) read[c] |= nz[c];
        }
        for (int c = 0; c < st.C; ++c)
          if (read[c] && ca.map_nonzero(j, c)) cols.push_back(c);
      }
      if (rows.empty()) continue;
      // The sub-layer of the fixed rows and the nonzero fixed inputs they read.
      const int Kf = static_cast<int>(rows.size()), Cf = static_cast<int>(cols.size());
      const Shape& is = a.shapes[j];
      const int64_t plane = ca.features_per_channel[j] * (is.size() == 4 ? is[2] * is[3] : 1);
      Tensor sub_in(is.size() == 4 ? Shape{1, Cf, is[2], is[3]} : Shape{1, Cf * plane});
      for (int q = 0; q < Cf; ++q)
        std::copy_n(ca.maps[j].data() + cols[q] * plane, plane, sub_in.data() + q * plane);
      std::unique_ptr<Layer> sub;
      const Tensor* W;
      int64_t slice;
      if (auto* cv = dynamic_cast<Conv2d*>(&L)) {
        auto sc = std::make_unique<Conv2d>(Cf, Kf, cv->kernel_h, cv->kernel_w, cv->stride, cv->pad, cv->has_bias,
                                           cv->fused_relu, cv->pos_h, cv->pos_w);
        const int64_t op = cv->pos_h * cv->pos_w;
        for (int r = 0; r < Kf; ++r) {
          if (cv->has_bias) sc->bias.value[r] = cv->bias.value[rows[r]];
          if (op) std::copy_n(cv->pos_bias.value.data() + rows[r] * op, op, sc->pos_bias.value.data() + r * op);
        }
        W = &cv->weight.value, slice = int64_t(cv->kernel_h) * cv->kernel_w;
        for (int r = 0; r < Kf; ++r)
          for (int q = 0; q < Cf; ++q)
            std::copy_n(W->data() + (int64_t(rows[r]) * st.C + cols[q]) * slice, slice,
                        sc->weight.value.data() + (int64_t(r) * Cf + q) * slice);
        sub = std::move(sc);
      } else {
        auto& ln = static_cast<Linear&>(L);
        auto sl = std::make_unique<Linear>(int(Cf * plane), Kf, ln.has_bias);
        for (int r = 0; r < Kf; ++r)
          if (ln.has_bias) sl->bias.value[r] = ln.bias.value[rows[r]];
        W = &ln.weight.value, slice = plane;
        for (int r = 0; r < Kf; ++r)
          for (int q = 0; q < Cf; ++q)
            std::copy_n(W->data() + (int64_t(rows[r]) * st.C + cols[q]) * slice, slice,
                        sl->weight.value.data() + (int64_t(r) * Cf + q) * slice);
        sub = std::move(sl);
      }
      Tensor sub_out(sub->output_shape({sub_in.shape()}));
      sub->forward({&sub_in}, sub_out, false);
      Shape os = a.shapes[i];
      Tensor map(os);
      const int64_t oplane = map.numel() / C;
      for (int r = 0; r < Kf; ++r) std::copy_n(sub_out.data() + r * oplane, oplane, map.data() + rows[r] * oplane);
      ca.maps[i] = map;
      continue;
    }
    bool any = false;
    for (int c = 0; c < C; ++c) {
      fx[c] = fin[c];
      if (L.kind() == LayerKind::Add) fx[c] &= ca.fixed[nodes[i].inputs[1]][c];
      any |= fx[c];
    }
    if (!any) continue;
    std::vector<Tensor> in_maps;
    std::vector<const Tensor*> ins;
    for (int q : nodes[i].inputs) in_maps.push_back(ca.maps[q].defined() ? ca.maps[q] : Tensor(a.shapes[q]));
    for (auto& t : in_maps) ins.push_back(&t);
    Tensor out(a.shapes[i]);
    L.forward(ins, out, false);
    // Channels that are not fixed hold meaningless values in `out`: zero them.
    const int64_t oplane = out.numel() / C;
    for (int c = 0; c < C; ++c)
      if (!fx[c]) std::fill_n(out.data() + c * oplane, oplane, 0.0f);
    ca.maps[i] = out;
  }

  // Keep decisions per space: a channel goes when no consumer needs it live. A consumer's
  // removed output rows read nothing, so removals propagate backwards: iterate to a fixpoint
  // (keep only ever shrinks, so this ends within the graph's depth).
  ca.keep.assign(spaces, {});
  std::vector<uint8_t> pinned(spaces, 0);
  pinned[ca.space[0]] = 1;                // the input images
  pinned[ca.space[m.output_node()]] = 1;  // the logits
  for (int s = 0; s < spaces; ++s) ca.keep[s].assign(ca.space_channels[s], 1);
  for (bool changed = true; changed;) {
    changed = false;
    std::vector<std::vector<uint8_t>> next(spaces);
    for (int s = 0; s < spaces; ++s) next[s].assign(ca.space_channels[s], pinned[s]);
    for (int i = 1; i < n; ++i) {
      LayerKind k = nodes[i].layer->kind();
      if (k != LayerKind::Conv && k != LayerKind::Linear) continue;
      const int j = nodes[i].inputs[0];
      const SliceStats& st = a.stats[i];
      const auto& rows_kept = ca.keep[ca.space[i]];
      auto& keep = next[ca.space[j]];
      const uint8_t* fixed = ca.fixed[j].data();  // (C)
      uint8_t* kp = keep.data();                   // (C)
      for (int r = 0; r < st.K; ++r) {
        if (!rows_kept[r]) continue;
        const uint8_t* nz = st.nonzero.data() + size_t(r) * st.C;  // (C)
        for (int c = 0; c < st.C; ++c) kp[c] |= nz[c] & (fixed[c] ^ 1);
      }
    }
    if (next != ca.keep) ca.keep = std::move(next), changed = true;
  }
  return a;
}

std::vector<int> kept_indices(const std::vector<uint8_t>& keep) {
  std::vector<int> out;
  for (int c = 0; c < static_cast<int>(keep.size()); ++c)
    if (keep[c]) out.push_back(c);
  return out;
}

// Batchnorm as a per-channel affine map y = scale * x + shift (eval mode).
void bn_affine(const BatchNorm2d& bn, std::vector<double>& scale, std::vector<double>& shift) {
  std::vector<float> g = bn.gamma.value.to_vector(), b = bn.beta.value.to_vector(), mu = bn.running_mean.to_vector(),
                     var = bn.running_var.to_vector();
  scale.resize(bn.channels);
  shift.resize(bn.channels);
  for (int c = 0; c < bn.channels; ++c) {
    scale[c] = g[c] / std::sqrt(double(var[c]) + bn.eps);
    shift[c] = b[c] - mu[c] * scale[c];
  }
}

}  // namespace

bool ChannelAnalysis::map_nonzero(int i, int c) const {
  if (!fixed[i][c] || !maps[i].defined()) return false;
  const int64_t plane = maps[i].numel() / static_cast<int64_t>(fixed[i].size());
  const float* p = maps[i].data() + c * plane;
  for (int64_t q = 0; q < plane; ++q)
    if (p[q] != 0.0f) return true;
  return false;
}

ChannelAnalysis analyze_channels(const Model& masked) { return analyze(masked).pub; }

Model compact_model(const Model& masked_in, CompactReport* report) {
  auto t0 = std::chrono::steady_clock::now();
  check(masked_in.device() == Device::CPU, "compaction runs on CPU models; move the model with to(Device::CPU)");
  const Model& m = masked_in;
  Analysis a = analyze(m);
  const ChannelAnalysis& ca = a.pub;
  const auto& nodes = m.nodes();
  const int n = static_cast<int>(nodes.size());
  const int out_node = m.output_node();
  CompactReport rep;
  rep.constants_folded = 0;

  // Which batchnorms fold into the conv before them, and which ReLUs fuse into it.
  std::vector<int> bn_of(n, -1), relu_of(n, -1);
  std::vector<uint8_t> absorbed(n, 0);
  for (int i = 1; i < n; ++i) {
    auto* conv = dynamic_cast<const Conv2d*>(nodes[i].layer.get());
    if (!conv || conv->fused_relu || i == out_node) continue;
    int t = i;
    if (a.consumers[i].size() == 1 && is(nodes[a.consumers[i][0]], LayerKind::BatchNorm)) {
      bn_of[i] = t = a.consumers[i][0];
      absorbed[t] = 1;
    }
    if (t != out_node && a.consumers[t].size() == 1 && is(nodes[a.consumers[t][0]], LayerKind::ReLU)) {
      relu_of[i] = a.consumers[t][0];
      absorbed[relu_of[i]] = 1;
    }
  }

  std::vector<std::vector<int>> kept(ca.keep.size());
  for (size_t s = 0; s < ca.keep.size(); ++s) kept[s] = kept_indices(ca.keep[s]);
  for (size_t s = 0; s < ca.keep.size(); ++s) rep.channels_removed += ca.space_channels[s] - int64_t(kept[s].size());

  Model c;
  c.arch = m.arch.empty() ? "compact" : m.arch + "-compact";
  std::vector<int> map(n, -1);
  map[0] = c.add_input(m.input_shape(), nodes[0].name);
  for (int i = 1; i < n; ++i) {
    if (absorbed[i]) continue;
    const Node& node = nodes[i];
    std::vector<int> ins;
    for (int j : node.inputs) ins.push_back(map[j]);
    const Layer& L = *node.layer;

    if (L.kind() == LayerKind::Conv || L.kind() == LayerKind::Linear) {
      const auto* conv = dynamic_cast<const Conv2d*>(&L);
      const auto* lin = dynamic_cast<const Linear*>(&L);
      const int j = node.inputs[0];
      const std::vector<int>& in_keep = kept[ca.space[j]];
      const std::vector<int>& out_keep = kept[ca.space[i]];
      const SliceStats& st = a.stats[i];
      const int Cold = st.C, Kn = static_cast<int>(out_keep.size()), Cn = static_cast<int>(in_keep.size());
      const int64_t slice = conv ? int64_t(conv->kernel_h) * conv->kernel_w : ca.features_per_channel[j];
      const Tensor& W = conv ? conv->weight.value : lin->weight.value;  // (K, Cold, slice)
      const Tensor& B = conv ? conv->bias.value : lin->bias.value;
      bool had_bias = conv ? conv->has_bias : lin->has_bias;

      // Bias in double, and a per-position part when a padded conv folds a nonzero constant.
      std::vector<double> bias(Kn, 0.0);
      if (had_bias)
        for (int k = 0; k < Kn; ++k) bias[k] = B[out_keep[k]];
      std::vector<int> removed_const;  // removed input channels read with a nonzero fixed map
      {
        std::vector<uint8_t> in_kept(Cold, 0);
        for (int ch : in_keep) in_kept[ch] = 1;
        for (int ch = 0; ch < Cold; ++ch)
          if (!in_kept[ch] && st.read[ch] && ca.map_nonzero(j, ch)) {
            check(ca.fixed[j][ch], "internal: a removed channel that is read depends on the input");
            removed_const.push_back(ch);
          }
      }
      rep.constants_folded += static_cast<int64_t>(removed_const.size());
      Tensor pos;  // (Kn, P, Q) or empty
      const Shape& os = a.shapes[i];
      const int Cr = static_cast<int>(removed_const.size());
      if (Cr > 0 && lin) {
        // bias[o] += sum over removed channels and their features of W * value
        const float* map = ca.maps[j].data();  // (1, Cold * slice)
        for (int k = 0; k < Kn; ++k)
          for (int ch : removed_const) {
            const float* wr = W.data() + (int64_t(out_keep[k]) * Cold + ch) * slice;
            for (int64_t q = 0; q < slice; ++q) bias[k] += double(wr[q]) * map[ch * slice + q];
          }
      } else if (Cr > 0) {
        // The exact contribution: convolve the removed channels' fixed maps (zero padded).
        // Channels of constant value v share one input plane of ones with the collapsed
        // kernel sum_r v_r W[k, r] (cheap even when hundreds of channels are removed); other
        // fixed maps get a plane each.
        const Shape& is = a.shapes[j];
        const int64_t iplane = is[2] * is[3];
        std::vector<int> uniform_ch, map_ch;
        for (int ch : removed_const) {
          const float* mp = ca.maps[j].data() + ch * iplane;
          bool u = std::all_of(mp, mp + iplane, [&](float v) { return v == mp[0]; });
          (u ? uniform_ch : map_ch).push_back(ch);
        }
        const int planes = 1 + static_cast<int>(map_ch.size());
        Tensor img({1, planes, is[2], is[3]});  // (1, planes, H, W)
        std::fill_n(img.data(), iplane, 1.0f);
        for (size_t r = 0; r < map_ch.size(); ++r)
          std::copy_n(ca.maps[j].data() + map_ch[r] * iplane, iplane, img.data() + (r + 1) * iplane);
        Tensor wr({Kn, planes, conv->kernel_h, conv->kernel_w});  // (Kn, planes, R, S)
        tbb::parallel_for(tbb::blocked_range<int>(0, Kn, 16), [&](const tbb::blocked_range<int>& rr) {
          for (int k = rr.begin(); k < rr.end(); ++k) {
            float* dst = wr.data() + int64_t(k) * planes * slice;
            for (int ch : uniform_ch) {
              const float v = ca.maps[j][ch * iplane];
              const float* src = W.data() + (int64_t(out_keep[k]) * Cold + ch) * slice;
              for (int64_t q = 0; q < slice; ++q) dst[q] += v * src[q];
            }
            for (size_t r = 0; r < map_ch.size(); ++r)
              std::copy_n(W.data() + (int64_t(out_keep[k]) * Cold + map_ch[r]) * slice, slice, dst + (r + 1) * slice);
          }
        });
        Conv2dParams p{1, planes, int(is[2]), int(is[3]), Kn, conv->kernel_h, conv->kernel_w, conv->stride, conv->pad};
        Tensor corr({1, Kn, os[2], os[3]});
        if (Kn > 0) ops::conv2d_forward(p, img, wr, Tensor(), corr);
        const int64_t plane = os[2] * os[3];
        bool uniform = true;
        for (int k = 0; k < Kn && uniform; ++k)
          for (int64_t q = 1; q < plane; ++q)
            if (corr[k * plane + q] != corr[k * plane]) {
              uniform = false;
              break;
            }
        if (uniform) {
          for (int k = 0; k < Kn; ++k) bias[k] += corr[k * plane];
        } else {
          pos = corr.reshape({Kn, os[2], os[3]});
          ++rep.position_bias_layers;
        }
      }
      if (conv && conv->pos_h > 0) {  // compacting an already compacted model
        Tensor keep_pos({Kn, os[2], os[3]});
        const int64_t plane = os[2] * os[3];
        for (int k = 0; k < Kn; ++k)
          std::copy_n(conv->pos_bias.value.data() + out_keep[k] * plane, plane, keep_pos.data() + k * plane);
        if (pos.defined()) ops::accumulate(keep_pos, pos);
        else pos = keep_pos;
      }

      // Batchnorm folded in: W' = scale * W, b' = scale * b + shift, pos' = scale * pos.
      std::vector<double> scale(Kn, 1.0), shift(Kn, 0.0);
      if (bn_of[i] >= 0) {
        std::vector<double> sc, sh;
        bn_affine(static_cast<const BatchNorm2d&>(*nodes[bn_of[i]].layer), sc, sh);
        for (int k = 0; k < Kn; ++k) scale[k] = sc[out_keep[k]], shift[k] = sh[out_keep[k]];
      }
      bool need_bias = had_bias || bn_of[i] >= 0 || !removed_const.empty();

      std::unique_ptr<Layer> layer;
      Tensor* Wn;
      Tensor* Bn = nullptr;
      if (conv) {
        auto nc = std::make_unique<Conv2d>(Cn, Kn, conv->kernel_h, conv->kernel_w, conv->stride, conv->pad, need_bias,
                                           conv->fused_relu || relu_of[i] >= 0, pos.defined() ? int(os[2]) : 0,
                                           pos.defined() ? int(os[3]) : 0);
        if (pos.defined()) {
          const int64_t plane = os[2] * os[3];
          for (int k = 0; k < Kn; ++k)
            for (int64_t q = 0; q < plane; ++q) pos[k * plane + q] = static_cast<float>(pos[k * plane + q] * scale[k]);
          nc->pos_bias.value = pos;
        }
        Wn = &nc->weight.value, Bn = need_bias ? &nc->bias.value : nullptr;
        layer = std::move(nc);
      } else {
        auto nl = std::make_unique<Linear>(Cn * int(slice), Kn, need_bias);
        Wn = &nl->weight.value, Bn = need_bias ? &nl->bias.value : nullptr;
        layer = std::move(nl);
      }
      // Copy the kept (output, input) slices, scaled by the folded batchnorm.
      const float* w = W.data();
      float* wn = Wn->data();
      tbb::parallel_for(tbb::blocked_range<int>(0, Kn, 8), [&](const tbb::blocked_range<int>& r) {
        for (int k = r.begin(); k < r.end(); ++k) {
          const float s = static_cast<float>(scale[k]);
          for (int ci = 0; ci < Cn; ++ci) {
            const float* src = w + (int64_t(out_keep[k]) * Cold + in_keep[ci]) * slice;
            float* dst = wn + (int64_t(k) * Cn + ci) * slice;
            if (bn_of[i] >= 0)
              for (int64_t q = 0; q < slice; ++q) dst[q] = src[q] * s;
            else
              std::copy_n(src, slice, dst);
          }
        }
      });
      if (Bn)
        for (int k = 0; k < Kn; ++k) (*Bn)[k] = static_cast<float>(bias[k] * scale[k] + shift[k]);
      // The pruning mask follows the kept slices (for further training of the compact model).
      auto mit = m.masks.find(node.name + ".weight");
      Tensor new_mask;
      if (mit != m.masks.end()) {
        new_mask = Tensor(Wn->shape());
        for (int k = 0; k < Kn; ++k)
          for (int ci = 0; ci < Cn; ++ci)
            std::copy_n(mit->second.data() + (int64_t(out_keep[k]) * Cold + in_keep[ci]) * slice, slice,
                        new_mask.data() + (int64_t(k) * Cn + ci) * slice);
      }
      LayerChannels lc;
      lc.name = node.name;
      lc.in_before = Cold, lc.in_after = Cn, lc.out_before = st.K, lc.out_after = Kn;
      rep.layers.push_back(lc);
      int id = c.add(node.name, std::move(layer), ins);
      if (new_mask.defined()) c.masks[node.name + ".weight"] = new_mask;
      map[i] = id;
      if (bn_of[i] >= 0) map[bn_of[i]] = id;
      if (relu_of[i] >= 0) map[relu_of[i]] = id;
      continue;
    }

    if (L.kind() == LayerKind::BatchNorm) {  // not folded: keep its channels' statistics
      const auto& bn = static_cast<const BatchNorm2d&>(L);
      const std::vector<int>& keep = kept[ca.space[i]];
      auto nb = std::make_unique<BatchNorm2d>(static_cast<int>(keep.size()), bn.eps, bn.momentum);
      for (size_t q = 0; q < keep.size(); ++q) {
        nb->gamma.value[q] = bn.gamma.value[keep[q]];
        nb->beta.value[q] = bn.beta.value[keep[q]];
        nb->running_mean[q] = bn.running_mean[keep[q]];
        nb->running_var[q] = bn.running_var[keep[q]];
      }
      map[i] = c.add(node.name, std::move(nb), ins);
      continue;
    }
    // Pooling, flatten, ReLU, add: no parameters, the channel count follows the inputs.
    map[i] = c.add(node.name, L.clone(), ins);
  }
  c.set_output(map[out_node]);
  rep.milliseconds = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  c.infer_shapes(1);

  if (report) {
    rep.params_before = m.num_params();
    rep.params_after = c.num_params();
    rep.macs_before = m.forward_macs();
    rep.macs_after = c.forward_macs();
    for (int i = 1; i < n; ++i)
      for (Param* p : const_cast<Layer&>(*nodes[i].layer).params()) {
        if (!p->prunable) {
          rep.nonzero_before += p->value.numel();
          continue;
        }
        const float* v = p->value.data();
        for (int64_t q = 0; q < p->value.numel(); ++q) rep.nonzero_before += v[q] != 0.0f;
      }
  }
  if (report) *report = std::move(rep);
  return c;
}

float max_logit_difference(Model& a, Model& b, const Tensor& x) {
  Tensor ya = a.forward(x.device() == a.device() ? x : x.to(a.device()), false);
  Tensor yb = b.forward(x.device() == b.device() ? x : x.to(b.device()), false);
  return max_abs_diff(ya, yb);
}

}  // namespace dnns
