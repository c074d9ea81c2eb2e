// dnns_portable_test: the portable runtime's own test, framework-free so that it builds and runs
// wherever the runtime does (cross-compiled, under qemu, on a board).
//
//   dnns_portable_test               kernels against the definitions, the memory planner, the
//                                    model-file reader (valid and damaged files), error paths
//   dnns_portable_test --refs DIR    also every case of DIR/manifest.txt: a model file saved by
//                                    the full build, input images and the full build's logits
//                                    (written by tests/test_export.cpp, see scripts/cross_test.sh)
//
// Prints one line per failed check and a closing "N passed, M failed"; exits 1 on any failure.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "dnns_runtime.h"

using namespace dnns::rt;

namespace {

int g_passed = 0, g_failed = 0;

void expect(bool ok, const char* what, const std::string& detail = "") {
  if (ok) {
    ++g_passed;
    return;
  }
  ++g_failed;
  std::printf("FAILED: %s%s%s\n", what, detail.empty() ? "" : ": ", detail.c_str());
}

// Deterministic values in [-1, 1) (a 32-bit LCG), the same on every target.
struct Lcg {
  uint32_t s;
  float next() {
    s = s * 1664525u + 1013904223u;
    return float(s >> 8) / float(1 << 23) - 1.0f;
  }
  std::vector<float> fill(size_t n) {
    std::vector<float> v(n);
    for (float& x : v) x = next();
    return v;
  }
};

float max_abs_diff(const float* a, const float* b, size_t n) {
  float d = 0.0f;
  for (size_t i = 0; i < n; ++i) d = std::fmax(d, std::fabs(a[i] - b[i]));
  return d;
}

// Runs a graph held in a vector of nodes at batch N; returns the outputs (empty on failure).
std::vector<float> run(const std::vector<Node>& nodes, int output, int c, int h, int w, const std::vector<float>& x,
                       int N, Status* status = nullptr, std::string* message = nullptr) {
  Graph g{nodes.data(), int32_t(nodes.size()), output, c, h, w};
  std::vector<NodePlan> plan(nodes.size());
  int64_t per_image = 0;
  char err[256] = "";
  Status s = plan_graph(g, plan.data(), &per_image, err, sizeof err);
  std::vector<float> arena(size_t(per_image * N) + 1);
  Engine e;
  if (s == kOk) s = engine_init(&e, &g, plan.data(), arena.data(), per_image * N, N);
  std::vector<float> y;
  if (s == kOk) {
    y.resize(size_t(engine_output_size(&e) * N));
    s = engine_run(&e, x.data(), N, y.data());
    if (s != kOk) y.clear();
  }
  if (status) *status = s;
  if (message) *message = s == kOk ? "" : (err[0] ? err : e.error);
  return y;
}

Node input_node() { return Node{"input", Op::Input, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0.0f, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, 0, 0, nullptr, nullptr, 0, 0, nullptr, 0}; }

Node conv_node(const char* name, int in, int C, int K, int R, int S, int stride, int pad, bool relu, const float* w,
               const float* b, int pos_h = 0, int pos_w = 0, const float* pb = nullptr) {
  return Node{name, Op::Conv, in, -1, C, K, R, S, stride, pad, relu ? 1 : 0, pos_h, pos_w, 0.0f, w, b, pb, nullptr, nullptr, nullptr, nullptr, 0, 0, nullptr, nullptr, 0, 0, nullptr, 0};
}

Node simple_node(const char* name, Op op, int in0, int in1 = -1) {
  return Node{name, op, in0, in1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0.0f, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, 0, 0, nullptr, nullptr, 0, 0, nullptr, 0};
}

// The definition of a convolution, in double: the test's independent reference.
std::vector<float> conv_reference(const std::vector<float>& x, const std::vector<float>& w, const float* b, int N,
                                  int C, int H, int W, int K, int R, int S, int stride, int pad) {
  const int P = (H + 2 * pad - R) / stride + 1, Q = (W + 2 * pad - S) / stride + 1;
  std::vector<float> y(size_t(N) * K * P * Q);
  for (int n = 0; n < N; ++n)
    for (int k = 0; k < K; ++k)
      for (int p = 0; p < P; ++p)
        for (int q = 0; q < Q; ++q) {
          double acc = b ? b[k] : 0.0;
          for (int c = 0; c < C; ++c)
            for (int r = 0; r < R; ++r)
              for (int s = 0; s < S; ++s) {
                const int ih = p * stride - pad + r, iw = q * stride - pad + s;
                if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
                acc += double(w[((size_t(k) * C + c) * R + r) * S + s]) * x[((size_t(n) * C + c) * H + ih) * W + iw];
              }
          y[((size_t(n) * K + k) * P + p) * Q + q] = float(acc);
        }
  return y;
}

void test_conv_against_definition() {
  struct Case {
    int C, H, W, K, R, S, stride, pad;
  };
  const Case cases[] = {{3, 8, 8, 4, 3, 3, 1, 1}, {2, 9, 7, 3, 3, 3, 2, 1}, {5, 6, 6, 2, 1, 1, 1, 0},
                        {4, 7, 9, 3, 1, 1, 2, 0}, {2, 5, 5, 3, 5, 5, 1, 2}, {3, 6, 8, 2, 3, 1, 1, 2},
                        {1, 3, 3, 2, 3, 3, 3, 0}, {2, 4, 4, 2, 3, 3, 1, 3}};
  Lcg rng{7};
  for (const Case& c : cases) {
    const int N = 2;
    std::vector<float> x = rng.fill(size_t(N) * c.C * c.H * c.W);
    std::vector<float> w = rng.fill(size_t(c.K) * c.C * c.R * c.S);
    std::vector<float> b = rng.fill(size_t(c.K));
    for (size_t i = 0; i < w.size(); i += 3) w[i] = 0.0f;  // pruned weights are skipped
    std::vector<Node> nodes = {input_node(),
                               conv_node("conv", 0, c.C, c.K, c.R, c.S, c.stride, c.pad, false, w.data(), b.data())};
    std::vector<float> y = run(nodes, 1, c.C, c.H, c.W, x, N);
    std::vector<float> ref = conv_reference(x, w, b.data(), N, c.C, c.H, c.W, c.K, c.R, c.S, c.stride, c.pad);
    char what[160];
    std::snprintf(what, sizeof what, "conv C=%d %dx%d K=%d kernel %dx%d stride %d pad %d matches its definition", c.C,
                  c.H, c.W, c.K, c.R, c.S, c.stride, c.pad);
    const bool same_size = y.size() == ref.size();
    expect(same_size && max_abs_diff(y.data(), ref.data(), ref.size()) <= 1e-5f, what,
           same_size ? "max diff " + std::to_string(max_abs_diff(y.data(), ref.data(), ref.size())) : "wrong size");
  }
}

void test_conv_extras() {
  // 3x3 all-ones kernel, pad 1, on a 3x3 image of ones: each output counts its in-image taps.
  const float ones[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
  const float bias[1] = {-4.5f};
  const float pos[9] = {0, 0, 0, 0, 0, 0, 0, 0, 10};
  std::vector<Node> nodes = {input_node(), conv_node("c", 0, 1, 1, 3, 3, 1, 1, true, ones, bias, 3, 3, pos)};
  std::vector<float> y = run(nodes, 1, 1, 3, 3, std::vector<float>(ones, ones + 9), 1);
  // taps 4 6 4 / 6 9 6 / 4 6 4, minus 4.5, plus the per-position bias, then ReLU
  const float want[9] = {0, 1.5f, 0, 1.5f, 4.5f, 1.5f, 0, 1.5f, 10 - 0.5f};
  expect(y.size() == 9 && max_abs_diff(y.data(), want, 9) == 0.0f, "conv with per-position bias and fused ReLU");

  // Every input channel removed by compaction: the output is the bias and the per-position
  // bias alone; every output channel removed: an empty output that still feeds a linear layer.
  const float b2[2] = {0.25f, -1.0f};
  const float pb2[2 * 2 * 2] = {1, 2, 3, 4, 0, 0, 0, 3};
  const float fc_b[3] = {7, 8, 9};
  std::vector<Node> g2 = {input_node(),
                          conv_node("c0", 0, 1, 0, 3, 3, 1, 1, false, nullptr, nullptr),  // K = 0
                          conv_node("c1", 1, 0, 2, 3, 3, 1, 1, true, nullptr, b2, 2, 2, pb2),  // C = 0
                          simple_node("flat", Op::Flatten, 1),
                          Node{"fc", Op::Linear, 3, -1, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0.0f, nullptr, fc_b, nullptr, nullptr, nullptr, nullptr, nullptr, 0, 0, nullptr, nullptr, 0, 0, nullptr, 0},
                          simple_node("flat2", Op::Flatten, 2)};
  std::vector<float> x = {1, 2, 3, 4, 5, 6, 7, 8};  // two 1x2x2 images
  std::vector<float> y2 = run(g2, 5, 1, 2, 2, x, 2);
  const float want2[16] = {1.25f, 2.25f, 3.25f, 4.25f, 0, 0, 0, 2, 1.25f, 2.25f, 3.25f, 4.25f, 0, 0, 0, 2};
  expect(y2.size() == 16 && max_abs_diff(y2.data(), want2, 16) == 0.0f, "conv with no input channels gives its biases");
  std::vector<float> y3 = run(g2, 4, 1, 2, 2, x, 2);
  const float want3[6] = {7, 8, 9, 7, 8, 9};
  expect(y3.size() == 6 && max_abs_diff(y3.data(), want3, 6) == 0.0f, "linear with no input features gives its bias");
}

void test_other_kernels() {
  // One 2x4x4 image through batchnorm, relu, max/avg pool, global pool, add, flatten, linear.
  std::vector<float> x(32);
  for (int i = 0; i < 32; ++i) x[i] = float(i % 7) - 3.0f + (i >= 16 ? 0.5f : 0.0f);
  const float gamma[2] = {2.0f, 0.5f}, beta[2] = {1.0f, -1.0f}, mean[2] = {1.0f, 0.0f}, var[2] = {3.0f, 0.0f};
  Node bn{"bn", Op::BatchNorm, 0, -1, 2, 2, 0, 0, 0, 0, 0, 0, 0, 1.0f, gamma, beta, nullptr, mean, var, nullptr, nullptr, 0, 0, nullptr, nullptr, 0, 0, nullptr, 0};
  Node mp = simple_node("mp", Op::MaxPool, 2);
  mp.kernel_h = mp.kernel_w = 2, mp.stride = 2;
  Node ap = simple_node("ap", Op::AvgPool, 2);
  ap.kernel_h = ap.kernel_w = 3, ap.stride = 1;
  const float w[2 * 8] = {1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
  const float b[2] = {0.5f, -0.5f};
  std::vector<Node> g = {input_node(),
                         bn,
                         simple_node("relu", Op::ReLU, 1),
                         mp,
                         ap,
                         simple_node("sum", Op::Add, 3, 4),
                         simple_node("flat", Op::Flatten, 5),
                         Node{"fc", Op::Linear, 6, -1, 8, 2, 0, 0, 0, 0, 0, 0, 0, 0.0f, w, b, nullptr, nullptr, nullptr, nullptr, nullptr, 0, 0, nullptr, nullptr, 0, 0, nullptr, 0},
                         simple_node("gap", Op::GlobalAvgPool, 2)};
  // The expected values straight from the definitions.
  float bnr[32], mpv[8], apv[8], sum[8];
  for (int c = 0; c < 2; ++c)
    for (int i = 0; i < 16; ++i) {
      const float v = gamma[c] * (x[c * 16 + i] - mean[c]) / std::sqrt(var[c] + 1.0f) + beta[c];
      bnr[c * 16 + i] = v > 0 ? v : 0;
    }
  for (int c = 0; c < 2; ++c)
    for (int i = 0; i < 2; ++i)
      for (int j = 0; j < 2; ++j) {
        float m = -1e30f, s = 0;
        for (int r = 0; r < 2; ++r)
          for (int t = 0; t < 2; ++t) m = std::fmax(m, bnr[c * 16 + (2 * i + r) * 4 + 2 * j + t]);
        for (int r = 0; r < 3; ++r)
          for (int t = 0; t < 3; ++t) s += bnr[c * 16 + (i + r) * 4 + j + t];
        mpv[c * 4 + i * 2 + j] = m;
        apv[c * 4 + i * 2 + j] = s / 9;
        sum[c * 4 + i * 2 + j] = m + s / 9;
      }
  const float fc_want[2] = {sum[0] + 0.5f, sum[7] - 0.5f};
  float gap_want[2] = {0, 0};
  for (int i = 0; i < 32; ++i) gap_want[i / 16] += bnr[i] / 16;
  std::vector<float> y = run(g, 7, 2, 4, 4, x, 1);
  expect(y.size() == 2 && max_abs_diff(y.data(), fc_want, 2) <= 1e-5f, "batchnorm, relu, pools, add, flatten, linear");
  std::vector<float> yg = run(g, 8, 2, 4, 4, x, 1);
  expect(yg.size() == 2 && max_abs_diff(yg.data(), gap_want, 2) <= 1e-5f, "global average pool");
  std::vector<float> ym = run(g, 3, 2, 4, 4, x, 1);
  expect(ym.size() == 8 && max_abs_diff(ym.data(), mpv, 8) == 0.0f, "max pool");
  std::vector<float> ya = run(g, 4, 2, 4, 4, x, 1);
  expect(ya.size() == 8 && max_abs_diff(ya.data(), apv, 8) <= 1e-6f, "average pool");
}

void test_planner() {
  // A residual chain: buffers alive at the same time must not share memory, and the arena is
  // smaller than the sum of all outputs (memory is reused).
  Lcg rng{3};
  std::vector<float> w = rng.fill(8 * 8 * 9);
  std::vector<Node> g = {input_node()};
  int x = 0;
  for (int block = 0; block < 4; ++block) {
    static const char* names[] = {"a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l"};
    const int in_ch = block == 0 ? 3 : 8;
    g.push_back(conv_node(names[block * 3], x, in_ch, 8, 3, 3, 1, 1, true, w.data(), nullptr));
    const int a = int(g.size()) - 1;
    g.push_back(conv_node(names[block * 3 + 1], a, 8, 8, 3, 3, 1, 1, false, w.data(), nullptr));
    g.push_back(simple_node(names[block * 3 + 2], Op::Add, a, int(g.size()) - 1));
    x = int(g.size()) - 1;
  }
  Graph graph{g.data(), int32_t(g.size()), x, 3, 6, 6};
  std::vector<NodePlan> plan(g.size());
  int64_t per_image = 0;
  char err[256];
  expect(plan_graph(graph, plan.data(), &per_image, err, sizeof err) == kOk, "plan a residual chain", err);
  int64_t sum = 0;
  bool disjoint = true;
  for (size_t i = 1; i < g.size(); ++i) {
    const int64_t size_i = int64_t(plan[i].c) * plan[i].h * plan[i].w;
    sum += size_i;
    for (size_t j = 1; j < i; ++j) {
      const int64_t size_j = int64_t(plan[j].c) * plan[j].h * plan[j].w;
      const bool both_alive = plan[j].last_use >= int(i);
      const bool overlap = plan[i].offset < plan[j].offset + size_j && plan[j].offset < plan[i].offset + size_i;
      // An elementwise node may write over an input it is the last reader of.
      const bool in_place = g[i].op == Op::Add && (g[i].in0 == int(j) || g[i].in1 == int(j)) &&
                            plan[j].last_use == int(i) && plan[i].offset == plan[j].offset;
      if (both_alive && overlap && !in_place) disjoint = false;
    }
  }
  expect(disjoint, "buffers alive at the same time do not overlap");
  expect(per_image < sum, "the arena reuses memory", std::to_string(per_image) + " vs " + std::to_string(sum));
  expect(per_image <= 3 * 8 * 36, "the arena holds at most three live maps", std::to_string(per_image));

  // conv -> batchnorm -> relu -> conv: batchnorm and relu run in place, so two maps suffice.
  const float ones[8] = {1, 1, 1, 1, 1, 1, 1, 1}, zeros[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  std::vector<Node> chain = {input_node(), conv_node("c1", 0, 3, 8, 3, 3, 1, 1, false, w.data(), nullptr),
                             Node{"bn", Op::BatchNorm, 1, -1, 8, 8, 0, 0, 0, 0, 0, 0, 0, 1e-5f, ones, zeros, nullptr,
                                  zeros, ones, nullptr, nullptr, 0, 0, nullptr, nullptr, 0, 0, nullptr, 0},
                             simple_node("relu", Op::ReLU, 2),
                             conv_node("c2", 3, 8, 8, 3, 3, 1, 1, false, w.data(), nullptr)};
  Graph cg{chain.data(), int32_t(chain.size()), 4, 3, 6, 6};
  std::vector<NodePlan> cplan(chain.size());
  expect(plan_graph(cg, cplan.data(), &per_image, err, sizeof err) == kOk && per_image == 2 * 8 * 36 &&
             cplan[2].offset == cplan[1].offset && cplan[3].offset == cplan[1].offset,
         "batchnorm and relu overwrite their input", std::to_string(per_image));

  // Batched runs equal single-image runs.
  std::vector<float> img = rng.fill(3 * 36 * 3);
  std::vector<float> y3 = run(g, x, 3, 6, 6, img, 3);
  bool same = y3.size() == 3 * 8 * 36;
  for (int n = 0; n < 3 && same; ++n) {
    std::vector<float> one(img.begin() + n * 108, img.begin() + (n + 1) * 108);
    std::vector<float> y1 = run(g, x, 3, 6, 6, one, 1);
    same = y1.size() == 288 && max_abs_diff(y1.data(), y3.data() + n * 288, 288) == 0.0f;
  }
  expect(same, "a batch of 3 gives each image's single-image result");
}

void test_errors() {
  const float w[27] = {0};
  std::vector<Node> g = {input_node(), conv_node("conv1", 0, 4, 1, 3, 3, 1, 1, false, w, nullptr)};
  Status s;
  std::string msg;
  run(g, 1, 3, 5, 5, std::vector<float>(75), 1, &s, &msg);
  expect(s == kErrGraph && msg.find("conv1") != std::string::npos && msg.find("4 input channels") != std::string::npos,
         "a channel mismatch is refused naming the node", msg);
  std::vector<Node> g2 = {input_node(), conv_node("conv1", 0, 3, 1, 3, 3, 1, 1, false, w, nullptr)};
  Graph graph{g2.data(), 2, 1, 3, 5, 5};
  NodePlan plan[2];
  float arena[8];
  Engine e;
  expect(engine_init(&e, &graph, plan, arena, 8, 1) == kErrMemory && std::strstr(e.error, "arena"),
         "a too small arena is refused", e.error);
  float big[40];  // one 5x5 output (rounded to 28 floats) fits, two do not
  expect(engine_init(&e, &graph, plan, big, 40, 2) == kErrMemory, "an arena too small for the batch is refused");
  expect(engine_init(&e, &graph, plan, big, 40, 1) == kOk, "an arena of the planned size is accepted", e.error);
  float out[25];
  std::vector<float> x(75 * 2);
  expect(engine_run(&e, x.data(), 2, out) == kErrArgument, "a batch above max_batch is refused");
  std::vector<Node> g3 = {input_node(), simple_node("fc", Op::Linear, 0)};
  run(g3, 1, 3, 5, 5, std::vector<float>(75), 1, &s, &msg);
  expect(s == kErrGraph && msg.find("fc") != std::string::npos, "a linear layer on a map is refused", msg);
}

// ---------------------------------------------------------------- model files

// Writes the archive format of core/archive.h, as the full build does.
struct ArchiveBuilder {
  std::vector<unsigned char> b;
  void u32(uint32_t v) {
    for (int i = 0; i < 4; ++i) b.push_back((unsigned char)(v >> (8 * i)));
  }
  void u64(uint64_t v) {
    for (int i = 0; i < 8; ++i) b.push_back((unsigned char)(v >> (8 * i)));
  }
  void str32(const std::string& s) {
    u32(uint32_t(s.size()));
    b.insert(b.end(), s.begin(), s.end());
  }
  void str64(const std::string& s) {
    u64(s.size());
    b.insert(b.end(), s.begin(), s.end());
  }
  struct T {
    std::string name;
    std::vector<int64_t> shape;
    std::vector<float> data;
  };
  // tensors must be sorted by name (the format's order; the reader does not depend on it).
  std::vector<unsigned char> build(const std::string& kind, const std::string& spec, const std::vector<T>& tensors,
                                   uint32_t version = 1) {
    b.clear();
    const char magic[] = "DNNSHIFT";
    b.insert(b.end(), magic, magic + 8);
    u32(version);
    u32(0);
    str32(kind);
    u64(2);
    str32("arch");
    str64("custom");
    str32("graph");
    str64(spec);
    u64(tensors.size());
    for (const T& t : tensors) {
      str32(t.name);
      u32(uint32_t(t.shape.size()));
      for (int64_t d : t.shape) u64(uint64_t(d));
      for (float v : t.data) {
        uint32_t bits;
        std::memcpy(&bits, &v, 4);
        u32(bits);
      }
    }
    u32(crc32_update(0, b.data(), b.size()));
    const char end[] = "ENDSHIFT";
    b.insert(b.end(), end, end + 8);
    return b;
  }
};

void test_model_file() {
  const std::string spec =
      "dnnshifter-graph 1\n"
      "input input shape=2,5,5\n"
      "conv conv1 inputs=input bias=1 in=2 kh=3 kw=3 out=3 pad=1 pos_h=5 pos_w=5 relu=1 stride=1\n"
      "conv conv2 inputs=conv1 bias=0 in=3 kh=3 kw=3 out=4 pad=0 relu=0 stride=2\n"
      "batchnorm bn inputs=conv2 channels=4 eps=1e-05 momentum=0.1\n"
      "relu relu inputs=bn\n"
      "global_avgpool pool inputs=relu\n"
      "linear fc inputs=pool bias=1 in=4 out=3\n"
      "output fc\n";
  Lcg rng{11};
  std::vector<ArchiveBuilder::T> tensors = {
      {"bn.bias", {4}, rng.fill(4)},
      {"bn.running_mean", {4}, rng.fill(4)},
      {"bn.running_var", {4}, {0.5f, 1.0f, 1.5f, 2.0f}},
      {"bn.weight", {4}, rng.fill(4)},
      {"conv1.bias", {3}, rng.fill(3)},
      {"conv1.pos_bias", {3, 5, 5}, rng.fill(75)},
      {"conv1.weight", {3, 2, 3, 3}, rng.fill(54)},
      {"conv2.weight", {4, 3, 3, 3}, rng.fill(108)},
      {"fc.bias", {3}, rng.fill(3)},
      {"fc.weight", {3, 4}, rng.fill(12)},
      {"mask:conv2.weight", {4, 3, 3, 3}, std::vector<float>(108, 1.0f)},
  };
  ArchiveBuilder ab;
  std::vector<unsigned char> file = ab.build("model", spec, tensors);
  LoadedModel m;
  Status s = load_model_memory(file.data(), file.size(), "tiny.dnns", &m);
  expect(s == kOk, "a valid model file loads", m.error);
  if (s != kOk) return;
  expect(m.graph.num_nodes == 7 && m.graph.output == 6 && m.graph.in_c == 2 && m.graph.in_h == 5,
         "the graph spec is parsed");
  // Same result as the node table written by hand with the same weights.
  auto find = [&](const char* name) -> const std::vector<float>& {
    for (const auto& t : tensors)
      if (t.name == name) return t.data;
    static std::vector<float> none;
    return none;
  };
  std::vector<Node> g = {
      input_node(),
      conv_node("conv1", 0, 2, 3, 3, 3, 1, 1, true, find("conv1.weight").data(), find("conv1.bias").data(), 5, 5,
                find("conv1.pos_bias").data()),
      conv_node("conv2", 1, 3, 4, 3, 3, 2, 0, false, find("conv2.weight").data(), nullptr),
      Node{"bn", Op::BatchNorm, 2, -1, 4, 4, 0, 0, 0, 0, 0, 0, 0, 1e-5f, find("bn.weight").data(), find("bn.bias").data(),
           nullptr, find("bn.running_mean").data(), find("bn.running_var").data(), nullptr, nullptr, 0, 0, nullptr, nullptr, 0, 0, nullptr, 0},
      simple_node("relu", Op::ReLU, 3),
      simple_node("pool", Op::GlobalAvgPool, 4),
      Node{"fc", Op::Linear, 5, -1, 4, 3, 0, 0, 0, 0, 0, 0, 0, 0.0f, find("fc.weight").data(), find("fc.bias").data(),
           nullptr, nullptr, nullptr, nullptr, nullptr, 0, 0, nullptr, nullptr, 0, 0, nullptr, 0}};
  std::vector<float> x = rng.fill(2 * 50);
  std::vector<float> want = run(g, 6, 2, 5, 5, x, 2);
  std::vector<Node> loaded(m.graph.nodes, m.graph.nodes + m.graph.num_nodes);
  std::vector<float> got = run(loaded, m.graph.output, 2, 5, 5, x, 2);
  expect(got.size() == 6 && want.size() == 6 && max_abs_diff(got.data(), want.data(), 6) == 0.0f,
         "the loaded model computes what its weights define");
  free_model(&m);

  // A border table: conv1's correction as a (3, 3, 3) table over row and column classes
  // 0,1,1,1,2; it computes what the same table spread to a full (3, 5, 5) map computes.
  {
    std::string table_spec = spec;
    table_spec.replace(table_spec.find("pos_h=5 pos_w=5"), 15,
                       "pos_h=5 pos_w=5 pos_rows=0,1,1,1,2 pos_cols=0,1,1,1,2");
    std::vector<float> table = rng.fill(27);  // (3, 3, 3)
    const int cls[5] = {0, 1, 1, 1, 2};
    std::vector<float> spread(75);  // (3, 5, 5)
    for (int k = 0; k < 3; ++k)
      for (int p = 0; p < 5; ++p)
        for (int q = 0; q < 5; ++q) spread[(k * 5 + p) * 5 + q] = table[(k * 3 + cls[p]) * 3 + cls[q]];
    std::vector<ArchiveBuilder::T> table_tensors = tensors;
    for (auto& e : table_tensors)
      if (e.name == "conv1.pos_bias") e.shape = {3, 3, 3}, e.data = table;
    std::vector<unsigned char> tf = ArchiveBuilder().build("model", table_spec, table_tensors);
    LoadedModel tm;
    Status ts = load_model_memory(tf.data(), tf.size(), "table.dnns", &tm);
    expect(ts == kOk && tm.nodes[1].pos_rows == 3 && tm.nodes[1].pos_cols == 3 && tm.nodes[1].pos_row_class &&
               tm.nodes[1].pos_row_class[4] == 2,
           "a model file with a border table loads", tm.error);
    if (ts == kOk) {
      std::vector<Node> full = g;
      full[1].pos_bias = spread.data();
      std::vector<float> want_t = run(full, 6, 2, 5, 5, x, 2);
      std::vector<Node> tn(tm.graph.nodes, tm.graph.nodes + tm.graph.num_nodes);
      std::vector<float> got_t = run(tn, tm.graph.output, 2, 5, 5, x, 2);
      expect(got_t.size() == 6 && want_t.size() == 6 && max_abs_diff(got_t.data(), want_t.data(), 6) == 0.0f,
             "a border table adds its value at every position of its classes");
    }
    free_model(&tm);
    // Class lists that do not fit the conv are refused.
    for (const char* bad_classes : {"pos_rows=0,1,1,2 pos_cols=0,1,1,1,2", "pos_rows=0,1,1,1,5 pos_cols=0,1,1,1,2",
                                    "pos_rows=0,1,1,1,2", "pos_rows=0,1,x,1,2 pos_cols=0,1,1,1,2"}) {
      std::string bs = spec;
      bs.replace(bs.find("pos_h=5 pos_w=5"), 15, std::string("pos_h=5 pos_w=5 ") + bad_classes);
      std::vector<unsigned char> bf = ArchiveBuilder().build("model", bs, table_tensors);
      LoadedModel bm;
      Status st = load_model_memory(bf.data(), bf.size(), "bad.dnns", &bm);
      expect(st == kErrGraph && std::strstr(bm.error, "pos_rows") && bm.nodes == nullptr,
             (std::string("border-table classes '") + bad_classes + "' are refused").c_str(), bm.error);
      free_model(&bm);
    }
  }

  // Damaged and foreign files are refused with the right status and a message naming them.
  struct Bad {
    const char* what;
    std::vector<unsigned char> bytes;
    Status status;
    const char* message_part;
  };
  std::vector<unsigned char> flipped = file;
  flipped[file.size() / 2] ^= 0x10;
  std::vector<unsigned char> truncated(file.begin(), file.begin() + long(file.size()) - 20);
  std::vector<unsigned char> magic = file;
  magic[0] = 'X';
  std::vector<unsigned char> trailing = file;
  trailing.push_back(0);
  auto without = [&](const char* name) {
    std::vector<ArchiveBuilder::T> t;
    for (const auto& e : tensors)
      if (e.name != name) t.push_back(e);
    return ArchiveBuilder().build("model", spec, t);
  };
  auto with_shape = [&](const char* name, std::vector<int64_t> shape, size_t n) {
    std::vector<ArchiveBuilder::T> t = tensors;
    for (auto& e : t)
      if (e.name == name) e.shape = shape, e.data.assign(n, 0.5f);
    return ArchiveBuilder().build("model", spec, t);
  };
  std::vector<ArchiveBuilder::T> extra = tensors;
  extra.push_back({"stray.weight", {1}, {1.0f}});
  std::string bad_spec = spec;
  bad_spec.replace(bad_spec.find("relu relu"), 9, "gelu relu");
  std::string mismatch_spec = spec;
  mismatch_spec.replace(mismatch_spec.find("channels=4"), 10, "channels=5");
  std::string chain_spec = spec;
  chain_spec.replace(chain_spec.find("in=3 kh=3"), 9, "in=2 kh=3");
  std::vector<ArchiveBuilder::T> chain_tensors = tensors;
  for (auto& e : chain_tensors)
    if (e.name == "conv2.weight" || e.name == "mask:conv2.weight") e.shape = {4, 2, 3, 3}, e.data.resize(72);
  std::vector<unsigned char> chain_bad = ArchiveBuilder().build("model", chain_spec, chain_tensors);
  std::vector<Bad> bad = {
      {"a flipped bit", flipped, kErrChecksum, "checksum mismatch"},
      {"a truncated file", truncated, kErrFormat, "truncated"},
      {"a foreign file", magic, kErrFormat, "bad magic"},
      {"trailing bytes", trailing, kErrFormat, "end marker"},
      {"a newer format version", ArchiveBuilder().build("model", spec, tensors, 3), kErrFormat, "version 3"},
      {"a checkpoint instead of a model", ArchiveBuilder().build("checkpoint", spec, tensors), kErrFormat, "'checkpoint'"},
      {"a missing tensor", without("conv2.weight"), kErrFormat, "'conv2.weight' is missing"},
      {"a tensor of the wrong shape", with_shape("fc.weight", {4, 3}, 12), kErrFormat, "'fc.weight' has shape (4, 3)"},
      {"a tensor the graph does not use", ArchiveBuilder().build("model", spec, extra), kErrFormat, "'stray.weight'"},
      {"an unknown layer kind", ArchiveBuilder().build("model", bad_spec, tensors), kErrGraph, "'gelu'"},
      {"parameters that disagree with the graph", ArchiveBuilder().build("model", mismatch_spec, tensors), kErrFormat,
       "'bn.weight' has shape (4), the graph expects (5)"},
      {"layers whose channels do not chain", chain_bad,
       kErrGraph, "node 'conv2' (conv): expected 2 input channels"},
      {"an empty file", {}, kErrFormat, "empty"},
  };
  for (const Bad& b : bad) {
    LoadedModel bm;
    Status bs = load_model_memory(b.bytes.data(), b.bytes.size(), "bad.dnns", &bm);
    const bool ok = bs == b.status && std::strstr(bm.error, "bad.dnns") && std::strstr(bm.error, b.message_part) &&
                    bm.nodes == nullptr && bm.weights == nullptr;
    expect(ok, (std::string(b.what) + " is refused").c_str(), std::string(status_name(bs)) + ": " + bm.error);
    free_model(&bm);
  }
  // Every truncation and every flipped byte is refused (and, under a sanitizer, read nothing
  // out of bounds).
  bool all_refused = true;
  for (size_t len = 0; len < file.size(); ++len) {
    LoadedModel bm;
    if (load_model_memory(file.data(), len, "cut.dnns", &bm) == kOk) all_refused = false;
    free_model(&bm);
  }
  expect(all_refused, "a file cut at any length is refused");
  all_refused = true;
  for (size_t at = 0; at < file.size(); ++at) {
    std::vector<unsigned char> damaged = file;
    damaged[at] ^= 0x5A;
    LoadedModel bm;
    if (load_model_memory(damaged.data(), damaged.size(), "flip.dnns", &bm) == kOk) all_refused = false;
    free_model(&bm);
  }
  expect(all_refused, "a file with any one byte changed is refused");

  LoadedModel none;
  expect(load_model_file("/nonexistent/model.dnns", &none) == kErrIo && std::strstr(none.error, "/nonexistent/model.dnns"),
         "a missing file is refused naming it", none.error);
}

// ---------------------------------------------------------------- reference cases

bool read_file(const std::string& path, std::vector<float>* out) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) return false;
  std::vector<unsigned char> raw;
  unsigned char buf[65536];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) raw.insert(raw.end(), buf, buf + n);
  std::fclose(f);
  if (raw.size() % 4) return false;
  out->resize(raw.size() / 4);
  for (size_t i = 0; i < out->size(); ++i) {
    const unsigned char* p = raw.data() + 4 * i;
    const uint32_t bits = uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
    std::memcpy(out->data() + i, &bits, 4);
  }
  return true;
}

// manifest.txt: one case per line, "NAME MODEL INPUT EXPECTED TOLERANCE" (paths relative to DIR).
void test_references(const std::string& dir) {
  std::FILE* f = std::fopen((dir + "/manifest.txt").c_str(), "r");
  expect(f != nullptr, "the reference manifest exists", dir + "/manifest.txt");
  if (!f) return;
  char name[256], model_file[512], input_file[512], expected_file[512];
  double tol = 0;
  int cases = 0;
  while (std::fscanf(f, "%255s %511s %511s %511s %lf", name, model_file, input_file, expected_file, &tol) == 5) {
    ++cases;
    LoadedModel m;
    Status s = load_model_file((dir + "/" + model_file).c_str(), &m);
    expect(s == kOk, (std::string(name) + ": the model loads").c_str(), m.error);
    if (s != kOk) continue;
    std::vector<float> x, want;
    const bool have = read_file(dir + "/" + input_file, &x) && read_file(dir + "/" + expected_file, &want);
    expect(have, (std::string(name) + ": input and expected logits are readable").c_str());
    const int64_t image = int64_t(m.graph.in_c) * m.graph.in_h * m.graph.in_w;
    if (!have || x.empty() || x.size() % size_t(image)) {
      free_model(&m);
      continue;
    }
    const int N = int(x.size() / size_t(image));
    std::vector<Node> nodes(m.graph.nodes, m.graph.nodes + m.graph.num_nodes);
    std::string msg;
    std::vector<float> got = run(nodes, m.graph.output, m.graph.in_c, m.graph.in_h, m.graph.in_w, x, N, &s, &msg);
    float scale = 1.0f;
    for (float v : want) scale = std::fmax(scale, std::fabs(v));
    const float diff = got.size() == want.size() ? max_abs_diff(got.data(), want.data(), want.size()) : INFINITY;
    std::printf("%-24s %2d image(s), %3d nodes: max |logit diff| %.3g at logit scale %.3g (relative %.2g, tolerance %.2g)\n",
                name, N, m.graph.num_nodes, double(diff), double(scale), double(diff / scale), tol);
    expect(s == kOk && diff <= float(tol) * scale, (std::string(name) + ": logits match the full build").c_str(), msg);
    free_model(&m);
  }
  std::fclose(f);
  expect(cases > 0, "the manifest lists reference cases");
}

// The two index codings, written here from the format's definition (docs/file-formats.md) and
// independently of the full build's encoder: the kept positions of `w` (nonzero), their values.
std::vector<uint8_t> encode_index(const std::vector<float>& w, int32_t coding, std::vector<float>* values) {
  std::vector<uint8_t> out;
  values->clear();
  const size_t n = w.size();
  if (coding == kBitmapIndex) {
    out.assign((n + 7) / 8, 0);
    for (size_t i = 0; i < n; ++i)
      if (w[i] != 0.0f) out[i / 8] |= uint8_t(1u << (i % 8)), values->push_back(w[i]);
    return out;
  }
  size_t pos = 0;
  for (size_t i = 0; i < n; ++i) {
    if (w[i] == 0.0f) continue;
    for (; i - pos >= 255; pos += 255) out.push_back(255);
    out.push_back(uint8_t(i - pos));
    values->push_back(w[i]);
    pos = i + 1;
  }
  for (; n - pos >= 255; pos += 255) out.push_back(255);
  return out;
}

Node sparse(Node nd, int32_t coding, const std::vector<float>& values, const std::vector<uint8_t>& index) {
  nd.weight = values.data();
  nd.weight_coding = coding;
  nd.weight_count = int64_t(values.size());
  nd.weight_index = index.data();
  nd.weight_index_bytes = int64_t(index.size());
  return nd;
}

// Sparse conv and linear weights (kept values + bitmap or gap8 index) run directly, and give the
// dense kernels' results within float rounding, from 50% to 99.9% sparsity, empty filters and
// an all-zero weight included; an index that does not list its count of positions is refused.
void test_sparse_weights() {
  struct Case {
    int C, H, W, K, R, S, stride, pad;
  };
  // 3x3 padded, strided, 1x1, a wide kernel, and narrow maps (the dense kernel's dot-product path).
  const Case cases[] = {{8, 8, 8, 6, 3, 3, 1, 1}, {5, 9, 7, 4, 3, 3, 2, 1}, {16, 6, 6, 5, 1, 1, 1, 0},
                        {4, 7, 9, 3, 1, 1, 2, 0}, {3, 5, 5, 3, 5, 5, 1, 2}, {32, 4, 4, 8, 3, 3, 1, 1},
                        {24, 2, 2, 7, 3, 3, 1, 1}};
  const float densities[] = {0.5f, 0.1f, 0.01f, 0.001f, 0.0f};
  Lcg rng{41};
  int compared = 0, gap8_long = 0;
  for (const Case& c : cases)
    for (float density : densities)
      for (int32_t coding : {int32_t(kBitmapIndex), int32_t(kGap8Index)}) {
        const int N = 2;
        std::vector<float> x = rng.fill(size_t(N) * c.C * c.H * c.W);
        std::vector<float> w = rng.fill(size_t(c.K) * c.C * c.R * c.S), b = rng.fill(size_t(c.K));
        for (float& v : w)
          if ((rng.next() + 1.0f) * 0.5f >= density) v = 0.0f;
        for (size_t i = 0; i < size_t(c.C) * c.R * c.S; ++i) w[i] = 0.0f;  // filter 0 empty
        std::vector<float> values;
        const std::vector<uint8_t> index = encode_index(w, coding, &values);
        for (uint8_t byte : index) gap8_long += coding == kGap8Index && byte == 255;
        const Node dense = conv_node("conv", 0, c.C, c.K, c.R, c.S, c.stride, c.pad, true, w.data(), b.data());
        std::vector<float> want = run({input_node(), dense}, 1, c.C, c.H, c.W, x, N);
        Status st = kOk;
        std::string msg;
        std::vector<float> got = run({input_node(), sparse(dense, coding, values, index)}, 1, c.C, c.H, c.W, x, N, &st, &msg);
        char what[200];
        std::snprintf(what, sizeof what, "sparse conv (%s) C=%d %dx%d K=%d kernel %dx%d stride %d pad %d, density %g",
                      coding == kBitmapIndex ? "bitmap" : "gap8", c.C, c.H, c.W, c.K, c.R, c.S, c.stride, c.pad,
                      double(density));
        const bool same = st == kOk && got.size() == want.size() && !want.empty() &&
                          max_abs_diff(got.data(), want.data(), want.size()) <= 1e-5f;
        expect(same, what, st != kOk ? msg : "max diff " + std::to_string(max_abs_diff(got.data(), want.data(), want.size())));
        ++compared;
      }
  // Linear layers: (O, I) weights.
  for (float density : densities)
    for (int32_t coding : {int32_t(kBitmapIndex), int32_t(kGap8Index)}) {
      const int I = 700, O = 9, N = 3;
      std::vector<float> x = rng.fill(size_t(N) * I), w = rng.fill(size_t(O) * I), b = rng.fill(size_t(O));
      for (float& v : w)
        if ((rng.next() + 1.0f) * 0.5f >= density) v = 0.0f;
      std::vector<float> values;
      const std::vector<uint8_t> index = encode_index(w, coding, &values);
      for (uint8_t byte : index) gap8_long += coding == kGap8Index && byte == 255;
      Node fc{"fc", Op::Linear, 0, -1, I, O, 0, 0, 0, 0, 0, 0, 0, 0.0f, w.data(), b.data(), nullptr, nullptr,
              nullptr, nullptr, nullptr, 0, 0, nullptr, nullptr, 0, 0, nullptr, 0};
      std::vector<Node> flat = {input_node(), simple_node("flat", Op::Flatten, 0), fc};
      flat[2].in0 = 1;
      std::vector<float> want = run(flat, 2, I, 1, 1, x, N);
      flat[2] = sparse(flat[2], coding, values, index);
      std::vector<float> got = run(flat, 2, I, 1, 1, x, N);
      char what[120];
      std::snprintf(what, sizeof what, "sparse linear (%s) %dx%d, density %g", coding == kBitmapIndex ? "bitmap" : "gap8",
                    O, I, double(density));
      expect(got.size() == want.size() && !want.empty() && max_abs_diff(got.data(), want.data(), want.size()) <= 1e-5f,
             what);
      ++compared;
    }
  expect(compared == 80 && gap8_long > 0, "sparse cases ran, long gap8 skips among them");

  // Indices that do not describe their weights are refused by the planner.
  std::vector<float> w(2 * 3 * 3 * 3, 0.0f), values;
  w[0] = 1.0f, w[20] = -2.0f, w[53] = 0.5f;
  std::vector<uint8_t> bitmap = encode_index(w, kBitmapIndex, &values), gap8 = encode_index(w, kGap8Index, &values);
  const Node dense = conv_node("conv", 0, 3, 2, 3, 3, 1, 1, false, w.data(), nullptr);
  struct Bad {
    const char* what;
    int32_t coding;
    std::vector<uint8_t> index;
    int64_t count;
  };
  std::vector<uint8_t> past_end = bitmap, short_gap8 = gap8, long_gap8 = gap8;
  past_end.back() |= 0x80;  // 54 weights: bits 54.. of the last byte lie past the end
  short_gap8.pop_back();    // loses the last kept position
  long_gap8.push_back(0);   // a position past the end
  const Bad bads[] = {{"a count above the bitmap's", kBitmapIndex, bitmap, 4},
                      {"a count below the bitmap's", kBitmapIndex, bitmap, 2},
                      {"a bit past the end", kBitmapIndex, past_end, 4},
                      {"a bitmap one byte short", kBitmapIndex, std::vector<uint8_t>(bitmap.begin(), bitmap.end() - 1), 3},
                      {"a gap8 stream one position short", kGap8Index, short_gap8, 3},
                      {"a gap8 stream past the end", kGap8Index, long_gap8, 4},
                      {"an unknown coding", 3, gap8, 3}};
  for (const Bad& bad : bads) {
    Status st = kOk;
    std::string msg;
    std::vector<float> vals(size_t(bad.count > 0 ? bad.count : 1), 1.0f);
    Node nd = sparse(dense, bad.coding, vals, bad.index);
    nd.weight_count = bad.count;
    run({input_node(), nd}, 1, 3, 4, 4, std::vector<float>(48, 1.0f), 1, &st, &msg);
    expect(st == kErrGraph && (msg.find("sparse weights") != std::string::npos || msg.find("coding") != std::string::npos),
           bad.what, msg);
  }
  {
    Status st = kOk;
    Node nd = sparse(dense, kGap8Index, values, gap8);
    run({input_node(), nd}, 1, 3, 4, 4, std::vector<float>(48, 1.0f), 1, &st);
    expect(st == kOk, "the valid gap8 index of the cases above is accepted");
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::string refs;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--refs") && i + 1 < argc) {
      refs = argv[++i];
    } else {
      std::fprintf(stderr, "usage: dnns_portable_test [--refs DIR]\n");
      return 2;
    }
  }
  test_conv_against_definition();
  test_conv_extras();
  test_other_kernels();
  test_planner();
  test_errors();
  test_model_file();
  test_sparse_weights();
  if (!refs.empty()) test_references(refs);
  std::printf("dnns_portable_test (%d-bit %s): %d passed, %d failed\n", int(sizeof(void*) * 8),
#if defined(__aarch64__)
              "aarch64",
#elif defined(__arm__)
              "arm",
#elif defined(__x86_64__)
              "x86-64",
#else
              "cpu",
#endif
              g_passed, g_failed);
  return g_failed == 0 ? 0 : 1;
}
