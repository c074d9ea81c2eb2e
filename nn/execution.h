// The execution plan of an inference model: for each conv and linear layer, whether an
// eval-mode forward on the CPU runs the dense kernel or the sparse one (kernels/sparse.h).
// Compaction removes whole dead filters and channels; the sparse kernel skips the zeros that
// remain inside the live ones. Which is faster depends on the layer's shape, its density, the
// batch and the machine, so `auto` measures both on the layer's real input shape, here, and
// keeps the faster. The choice changes float summation order only: outputs agree with the
// dense model within rounding (tests/test_sparse.cpp).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "nn/model.h"

namespace dnns {

enum class Execution { Dense, Sparse, Auto };
// "dense", "sparse" or "auto"; throws Error naming `flag` ("--execution") otherwise.
Execution parse_execution(const std::string& s, const std::string& flag = "--execution");
const char* execution_name(Execution e);

// One layer at one batch size, as planned.
struct LayerExecution {
  std::string node;        // the node's name
  std::string kind;        // "conv" or "linear"
  Shape weight_shape;      // (K, C, R, S) or (O, I)
  Shape input_shape;       // (N, C, H, W) or (N, I) at `batch`
  int64_t batch = 1;
  double density = 1;      // nonzero weights / weights
  bool sparse = false;     // the execution chosen
  double dense_ms = -1;    // measured layer forward times behind an `auto` choice (minimum
  double sparse_ms = -1;   // of the timed runs); -1 when not measured (a forced choice)
  bool cached = false;     // an earlier plan_execution on this model measured it
};

struct ExecutionPlan {
  Execution mode = Execution::Dense;
  std::vector<LayerExecution> layers;  // (conv/linear layers x batches) in graph order, then batch
  int sparse_layers(int64_t batch) const;  // entries at `batch` that run sparse
};

// Sets how every conv and linear layer of `m` runs in eval mode on the CPU:
//   dense   drops any sparse form (every layer runs the dense kernel);
//   sparse  every layer with a weight runs the sparse kernel at every batch size;
//   auto    for each batch in `batches`, times the layer's eval forward both ways on random
//           inputs of its real input shape (`runs` timed runs each after one warm-up,
//           alternated, the minimum kept; one run when a warm-up took over 50 ms) and keeps
//           the faster. A batch a layer was already planned at (an earlier call on this
//           model) is not measured again. A batch that was not planned at all follows the
//           nearest planned one (log scale).
// On a CUDA model `auto` and `dense` plan every layer dense; `sparse` throws Error. The plan
// is kept in the layers (Conv2d/Linear::sparse_exec): `infer` and Model::forward use it, and
// it is dropped by a backward pass. A dense weight released by Model::release_dense_weights is
// rebuilt first (release again after planning). Returns what was planned, for printing.
ExecutionPlan plan_execution(Model& m, Execution mode, const std::vector<int64_t>& batches, int runs = 3);

// Auto's choice for one layer and batch from its measured times: the faster one, except that a
// sparse form larger than the dense weight (above about two thirds of the weights left: 6 bytes
// a nonzero, its value and 16-bit column, against 4 a weight; above half for a layer of more
// than 65,535 columns, whose columns take 32 bits) must measure faster by as much as
// it is larger, and at least kBulkySparseMargin times. Memory for speed, on purpose: a ready
// variant holds that form beside the weight (or instead of it), and gains of 5-30% at such
// densities come and go from one plan to the next: they come from a dense kernel weak on the
// shape (ResNet-20's 64-channel 7x7 layers at batch 1 on Fashion-MNIST run im2col + sgemm),
// since the sparse kernel runs about half the dense multiply-add rate. Measured on the quick
// start's portfolio (README): its dense level 0 planned 4 to 12 of 22 layers sparse at batch 1
// with a flat 1.25x margin.
constexpr double kBulkySparseMargin = 1.25;
bool auto_runs_sparse(double dense_ms, double sparse_ms, int64_t sparse_form_bytes, int64_t dense_weight_bytes);

// One form per layer, the smaller, for a model about to hold only what it runs
// (Model::release_dense_weights: the shifter's ready variants, the portfolio's memory figures).
// A layer whose auto plan runs dense at some or all of its planned batches holds its dense
// weight (and, when sparse at others, its sparse form too). When its sparse form is smaller than
// the dense weight and measured at most as many times the dense time, at every batch planned
// dense, as it is smaller (the size ratio: 1.33 at half the weights, 1.67 at 40%), clamped to
// [max_slowdown, kSettleMaxSlowdown], the layer is planned sparse at every batch (its sparse
// form made from the weight if the plan had none), so that its dense weight can go. Plans with a clearer dense win,
// unmeasured choices (forced or restored plans) and forms not smaller than the weight stay as
// they are. Returns the layers changed; `plan` (or nullptr), what plan_execution returned for m,
// gets their entries marked sparse. Why: at 40% of the weights left a layer's two kernels are a
// few percent apart, so plans made on a loaded machine flip: the quick start's level 1 planned
// 5 to 12 of its 22 layers dense at one batch or both, holding up to 0.35 MB of dense weights:
// 50.6% of the ensemble where idle plans hold 49% (README). Then the dense kernels got faster
// on its 14x14 layers at half the weights (1.2-1.33x the sparse ones at batch 32), and up to 10
// of them held both forms again: 52.7%. The size ratio is the same trade auto makes the other
// way (auto_runs_sparse: a bigger sparse form must be faster by its size ratio).
constexpr double kSettleSlowdown = 1.10;
constexpr double kSettleMaxSlowdown = 1.5;
int settle_sparse_plans(Model& m, ExecutionPlan* plan = nullptr, double max_slowdown = kSettleSlowdown);
int settleable_sparse_plans(const Model& m, double max_slowdown = kSettleSlowdown);  // what it would change

// A text table of a plan: layer, weight shape, density, batch, chosen execution, measured times.
std::string execution_plan_table(const ExecutionPlan& p);

// Bytes of the sparse weight copies a model's plan keeps (SparseRows::bytes() of every conv
// and linear layer that runs sparse at some batch, and a conv's prepared runs): memory on top
// of the tensors the model holds (model_resident_bytes, prune/infer.h: without the dense
// weights Model::release_dense_weights released).
int64_t sparse_execution_bytes(const Model& m);

// A model's plan without its sparse weights: what a packed model (prune/shifter.h) keeps so
// that its unpacked copy runs as planned, without holding the nonzeros twice.
struct SavedLayerPlan {
  std::string node;  // a conv or linear node with a plan
  bool always = false;
  std::vector<SparseExecution::Choice> choices;
  int64_t bytes() const { return int64_t(node.size() + choices.size() * sizeof(SparseExecution::Choice)) + 1; }
};
std::vector<SavedLayerPlan> save_execution_plan(const Model& m);
// Gives `m` (the same graph, its weights as when saved) that plan again, the sparse weights
// rebuilt from its dense ones (only for layers that run sparse at some batch). Throws Error
// naming the node when the graph has no such conv/linear node.
void restore_execution_plan(Model& m, const std::vector<SavedLayerPlan>& plan);

}  // namespace dnns
