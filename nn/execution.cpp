#include "nn/execution.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <tuple>

#include "core/error.h"
#include "core/rng.h"

namespace dnns {

Execution parse_execution(const std::string& s, const std::string& flag) {
  if (s == "dense") return Execution::Dense;
  if (s == "sparse") return Execution::Sparse;
  if (s == "auto") return Execution::Auto;
  throw Error(flag + ": expected dense, sparse or auto, got '" + s + "'");
}

const char* execution_name(Execution e) {
  switch (e) {
    case Execution::Dense: return "dense";
    case Execution::Sparse: return "sparse";
    case Execution::Auto: return "auto";
  }
  return "?";
}

int ExecutionPlan::sparse_layers(int64_t batch) const {
  int n = 0;
  for (const LayerExecution& l : layers) n += l.batch == batch && l.sparse;
  return n;
}

namespace {

using Clock = std::chrono::steady_clock;

// The layer's plan slot and weight, for the two kinds that have one (else nullptr).
struct Plannable {
  std::shared_ptr<const SparseExecution>* exec = nullptr;
  const Tensor* weight = nullptr;
  const char* kind = "";
};

// A conv's sparse weight prepared for its input size (x: the input shape at any batch).
void prepare_runs(Layer& layer, const Shape& x, SparseExecution& e) {
  if (auto* c = dynamic_cast<Conv2d*>(&layer); c && e.weight.rows)
    e.runs = cpu::prepare_sparse_conv2d(c->conv_params(x), e.weight);
}

// A released dense weight (Model::release_dense_weights) rebuilt: planning reads the weight
// and may drop the sparse form it would be rebuilt from.
void restore_weight(Layer& layer) {
  if (auto* c = dynamic_cast<Conv2d*>(&layer)) c->restore_dense_weight();
  if (auto* l = dynamic_cast<Linear*>(&layer)) l->restore_dense_weight();
}

Plannable plannable(Layer& layer) {
  if (auto* c = dynamic_cast<Conv2d*>(&layer))
    if (c->in_channels > 0 && c->out_channels > 0) return {&c->sparse_exec, &c->weight.value, "conv"};
  if (auto* l = dynamic_cast<Linear*>(&layer))
    if (l->in_features > 0 && l->out_features > 0) return {&l->sparse_exec, &l->weight.value, "linear"};
  return {};
}

// Milliseconds of one eval forward of `layer` on x.
double time_forward(Layer& layer, const Tensor& x, Tensor& out) {
  const auto t0 = Clock::now();
  layer.forward({&x}, out, false);
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

// Times the layer dense and sparse on its input shape; returns {dense_ms, sparse_ms}. The layer
// alone: where the model's eval forward folds a following batchnorm (and ReLU) into a dense conv
// (Model::forward, infer), dense also saves that batchnorm's pass, which this does not count,
// so a close call leans towards sparse by up to one elementwise pass over the output.
std::pair<double, double> measure(Layer& layer, std::shared_ptr<const SparseExecution>& slot,
                                  const std::shared_ptr<const SparseExecution>& forced, const Shape& in_shape,
                                  const Shape& out_shape, int runs) {
  Rng rng(7);
  Tensor x = Tensor::uninit(in_shape);
  for (int64_t i = 0; i < x.numel(); ++i) x[i] = rng.normal();
  Tensor out = Tensor::uninit(out_shape);
  double best_dense, best_sparse;
  slot = nullptr;
  best_dense = time_forward(layer, x, out);  // warm-ups
  slot = forced;
  best_sparse = time_forward(layer, x, out);
  if (std::max(best_dense, best_sparse) > 50.0) runs = 1;
  for (int r = 0; r < runs; ++r) {
    slot = nullptr;
    best_dense = std::min(best_dense, time_forward(layer, x, out));
    slot = forced;
    best_sparse = std::min(best_sparse, time_forward(layer, x, out));
  }
  return {best_dense, best_sparse};
}

}  // namespace

ExecutionPlan plan_execution(Model& m, Execution mode, const std::vector<int64_t>& batches, int runs) {
  check(!batches.empty(), "plan_execution: no batch size to plan for");
  for (int64_t b : batches) check(b > 0, "plan_execution: batch sizes must be positive, got " + std::to_string(b));
  check(runs >= 1, "plan_execution: runs must be at least 1");
  const bool on_cpu = m.device() == Device::CPU;
  check(on_cpu || mode != Execution::Sparse,
        "--execution sparse: sparse kernels run on the CPU only; this model is on " + std::string(device_name(m.device())));
  std::vector<int64_t> sorted = batches;
  std::sort(sorted.begin(), sorted.end());
  sorted.erase(std::unique(sorted.begin(), sorted.end()), sorted.end());
  std::vector<std::vector<Shape>> shapes;  // (batches, nodes)
  for (int64_t b : sorted) shapes.push_back(m.infer_shapes(b));

  ExecutionPlan plan;
  plan.mode = mode;
  auto& nodes = m.nodes();
  for (size_t i = 1; i < nodes.size(); ++i) {
    Node& node = nodes[i];
    Plannable pl = plannable(*node.layer);
    if (!pl.exec) continue;
    restore_weight(*node.layer);
    std::shared_ptr<const SparseExecution> old = *pl.exec;
    auto fresh = std::make_shared<SparseExecution>();
    if (on_cpu && mode != Execution::Dense) {
      try {
        fresh->weight = old && old->weight.rows ? old->weight : sparse_from_dense(*pl.weight);
      } catch (const Error& e) {
        throw Error("plan_execution: node '" + node.name + "': " + e.what());
      }
    }
    double density = fresh->weight.density();
    if (!fresh->weight.rows) {  // dense plan: count the nonzeros only
      const std::vector<float> w = pl.weight->to_vector();
      density = double(std::count_if(w.begin(), w.end(), [](float v) { return v != 0.0f; })) / double(w.size());
    }
    auto forced = std::make_shared<SparseExecution>();
    if (mode == Execution::Auto && on_cpu) {
      forced->weight = fresh->weight;
      forced->always = true;
      prepare_runs(*node.layer, shapes[0][node.inputs[0]], *forced);
    }
    for (size_t bi = 0; bi < sorted.size(); ++bi) {
      LayerExecution le;
      le.node = node.name;
      le.kind = pl.kind;
      le.weight_shape = pl.weight->shape();
      le.input_shape = shapes[bi][node.inputs[0]];
      le.batch = sorted[bi];
      le.density = density;
      if (mode == Execution::Sparse) {
        le.sparse = true;
      } else if (mode == Execution::Auto && on_cpu) {
        const SparseExecution::Choice* had = old ? old->choice_for(le.batch) : nullptr;
        SparseExecution::Choice c;
        if (had) {
          c = *had;
          le.cached = true;
        } else {
          c.batch = le.batch;
          std::tie(c.dense_ms, c.sparse_ms) =
              measure(*node.layer, *pl.exec, forced, le.input_shape, shapes[bi][i], runs);
          c.sparse = auto_runs_sparse(c.dense_ms, c.sparse_ms, forced->bytes(), pl.weight->numel() * int64_t(sizeof(float)));
        }
        le.sparse = c.sparse;
        le.dense_ms = c.dense_ms;
        le.sparse_ms = c.sparse_ms;
        fresh->choices.push_back(c);
      }
      plan.layers.push_back(le);
    }
    if (mode == Execution::Auto && on_cpu && old)  // keep the batches planned before and not asked now
      for (const SparseExecution::Choice& c : old->choices)
        if (!fresh->choice_for(c.batch)) fresh->choices.push_back(c);
    std::sort(fresh->choices.begin(), fresh->choices.end(),
              [](const auto& a, const auto& b) { return a.batch < b.batch; });
    fresh->always = mode == Execution::Sparse;
    const bool any_sparse = fresh->always || std::any_of(fresh->choices.begin(), fresh->choices.end(),
                                                         [](const auto& c) { return c.sparse; });
    // A layer that never runs sparse keeps its choices (the cache), not the sparse weight.
    if (!any_sparse) fresh->weight = SparseRows{};
    prepare_runs(*node.layer, shapes[0][node.inputs[0]], *fresh);
    if (mode == Execution::Dense || !on_cpu) *pl.exec = nullptr;
    else if (mode == Execution::Sparse || any_sparse || !fresh->choices.empty()) *pl.exec = fresh;
  }
  return plan;
}

namespace {
// Whether settle_sparse_plans changes the plan of a layer whose dense weight is w (see
// nn/execution.h).
bool settles(const SparseExecution& e, const Tensor& w, double max_slowdown) {
  if (e.always || e.choices.empty() || e.sparse_at_every_batch() || !w.defined() || !w.is_cpu()) return false;
  int64_t form = e.weight.bytes();
  if (e.weight.rows == 0) {  // dense at every batch: what its sparse form would take
    const int64_t rows = w.dim(0), cols = w.numel() / std::max<int64_t>(1, rows);
    int64_t nnz = 0;
    for (int64_t i = 0; i < w.numel(); ++i) nnz += w[i] != 0.0f;
    form = nnz * (cols > 65536 ? 8 : 6) + (rows + 1) * int64_t(sizeof(int64_t));
  }
  const int64_t dense = w.numel() * int64_t(sizeof(float));
  if (form >= dense) return false;
  // The smaller form may cost as much time as it saves memory (the size ratio), at least
  // max_slowdown and at most kSettleMaxSlowdown.
  const double allowed = std::clamp(double(dense) / double(std::max<int64_t>(1, form)), max_slowdown,
                                    std::max(max_slowdown, kSettleMaxSlowdown));
  return std::all_of(e.choices.begin(), e.choices.end(), [&](const SparseExecution::Choice& c) {
    return c.sparse || (c.dense_ms > 0 && c.sparse_ms > 0 && c.sparse_ms <= allowed * c.dense_ms);
  });
}
}  // namespace

int settleable_sparse_plans(const Model& m, double max_slowdown) {
  int n = 0;
  for (const Node& node : m.nodes()) {
    if (!node.layer) continue;
    const Plannable pl = plannable(const_cast<Layer&>(*node.layer));  // only read
    n += pl.exec && *pl.exec && settles(**pl.exec, *pl.weight, max_slowdown);
  }
  return n;
}

int settle_sparse_plans(Model& m, ExecutionPlan* plan, double max_slowdown) {
  int changed = 0;
  const std::vector<Shape> shapes = m.infer_shapes(1);
  auto& nodes = m.nodes();
  for (size_t i = 1; i < nodes.size(); ++i) {
    Plannable pl = plannable(*nodes[i].layer);
    if (!pl.exec || !*pl.exec || !settles(**pl.exec, *pl.weight, max_slowdown)) continue;
    const SparseExecution& e = **pl.exec;
    // A fresh plan object (the old one may be shared by clones), its runs made for its own form.
    auto settled = std::make_shared<SparseExecution>();
    try {
      settled->weight = e.weight.rows ? e.weight : sparse_from_dense(*pl.weight);
    } catch (const Error& err) {
      throw Error("settle_sparse_plans: node '" + nodes[i].name + "': " + err.what());
    }
    settled->choices = e.choices;
    for (SparseExecution::Choice& c : settled->choices) c.sparse = true;
    prepare_runs(*nodes[i].layer, shapes[nodes[i].inputs[0]], *settled);
    *pl.exec = settled;
    if (plan)
      for (LayerExecution& le : plan->layers)
        if (le.node == nodes[i].name) le.sparse = true;
    ++changed;
  }
  return changed;
}

bool auto_runs_sparse(double dense_ms, double sparse_ms, int64_t sparse_form_bytes, int64_t dense_weight_bytes) {
  if (sparse_form_bytes > dense_weight_bytes)
    return sparse_ms * std::max(kBulkySparseMargin, double(sparse_form_bytes) / double(dense_weight_bytes)) < dense_ms;
  return sparse_ms < dense_ms;
}

int64_t sparse_execution_bytes(const Model& m) {
  int64_t total = 0;
  for (const Node& node : m.nodes()) {
    if (!node.layer) continue;
    const Plannable pl = plannable(const_cast<Layer&>(*node.layer));  // only read
    if (!pl.exec || !*pl.exec) continue;
    total += (*pl.exec)->bytes();
  }
  return total;
}

std::vector<SavedLayerPlan> save_execution_plan(const Model& m) {
  std::vector<SavedLayerPlan> out;
  for (const Node& node : m.nodes()) {
    if (!node.layer) continue;
    const Plannable pl = plannable(const_cast<Layer&>(*node.layer));  // only read
    if (!pl.exec || !*pl.exec) continue;
    out.push_back({node.name, (*pl.exec)->always, (*pl.exec)->choices});
  }
  return out;
}

void restore_execution_plan(Model& m, const std::vector<SavedLayerPlan>& plan) {
  if (plan.empty()) return;
  const std::vector<Shape> shapes = m.infer_shapes(1);
  for (const SavedLayerPlan& saved : plan) {
    const int i = m.find(saved.node);
    Plannable pl = i > 0 ? plannable(*m.nodes()[size_t(i)].layer) : Plannable{};
    check(pl.exec != nullptr, "restore_execution_plan: the model has no conv or linear node '" + saved.node + "'");
    restore_weight(*m.nodes()[size_t(i)].layer);
    auto e = std::make_shared<SparseExecution>();
    e->always = saved.always;
    e->choices = saved.choices;
    const bool any_sparse =
        e->always || std::any_of(e->choices.begin(), e->choices.end(), [](const auto& c) { return c.sparse; });
    if (any_sparse) {
      try {
        e->weight = sparse_from_dense(*pl.weight);
      } catch (const Error& err) {
        throw Error("restore_execution_plan: node '" + saved.node + "': " + err.what());
      }
      prepare_runs(*m.nodes()[size_t(i)].layer, shapes[size_t(m.nodes()[size_t(i)].inputs[0])], *e);
    }
    *pl.exec = std::move(e);
  }
}

std::string execution_plan_table(const ExecutionPlan& p) {
  std::string out;
  char line[512];
  std::snprintf(line, sizeof line, "%-24s %-6s %-18s %-18s %8s %6s %-7s %10s %10s %7s\n", "layer", "kind",
                "weight", "input", "density", "batch", "exec", "dense ms", "sparse ms", "speedup");
  out += line;
  for (const LayerExecution& l : p.layers) {
    char dense[32] = "-", sparse[32] = "-", ratio[32] = "-";
    if (l.dense_ms >= 0) {
      std::snprintf(dense, sizeof dense, "%.3f", l.dense_ms);
      std::snprintf(sparse, sizeof sparse, "%.3f", l.sparse_ms);
      std::snprintf(ratio, sizeof ratio, "%.2fx", l.dense_ms / std::max(l.sparse_ms, 1e-9));
    }
    std::snprintf(line, sizeof line, "%-24s %-6s %-18s %-18s %7.2f%% %6lld %-7s %10s %10s %7s\n", l.node.c_str(),
                  l.kind.c_str(), shape_str(l.weight_shape).c_str(), shape_str(l.input_shape).c_str(),
                  100.0 * l.density, (long long)l.batch, l.sparse ? "sparse" : "dense", dense, sparse, ratio);
    out += line;
  }
  return out;
}

}  // namespace dnns
