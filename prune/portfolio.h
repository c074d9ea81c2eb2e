// The portfolio: compact variants of one network, made from chosen levels of an IMP run,
// each verified against the masked model it came from and measured (accuracy, size, FLOPs,
// latency, working memory), stored as a folder the shifter (prune/shifter.h) loads.
//
// Folder layout (format version 1):
//   manifest.json     {"format": "dnnshifter-portfolio", "format_version": 1, what the
//                     variants share (architecture, input shape, classes, input normalisation,
//                     test data, machine, latency batch), "variants": [one entry per variant]}
//                     written last and atomically: its presence marks a complete portfolio
//   level_L.dnns      the compact model of IMP level L (a model archive, core/archive.h);
//                     inference-only: the masks are dropped (every weight they zeroed is gone
//                     or still zero)
//
// A variant entry holds: name, level, file, file_bytes, crc32 (model_file_crc32),
// params, unpruned_params, compression, flops, accuracy, test_examples, imp_accuracy,
// latency_ms_p50_b1, latency_ms_p99_b1, latency_ms_p50_batch, latency_ms_p99_batch,
// memory_bytes_b1, memory_bytes_batch, resident_bytes, max_logit_diff, verified_images
// (meanings in VariantInfo), and optionally (absent in manifests from before sparse
// execution: read as not recorded) planned_layers, sparse_layers_b1, sparse_layers_batch.
// The manifest's optional "execution" says how the latencies were measured (dense, sparse,
// or auto: each conv/linear layer dense or sparse, whichever measured faster; nn/execution.h). Loading refuses, naming the variant: a missing or malformed
// field, a missing file, a size or checksum mismatch, and metadata that disagrees with the
// model in the file (parameters, FLOPs, resident bytes, input shape, classes).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/batch.h"
#include "nn/execution.h"
#include "nn/model.h"
#include "prune/report.h"

namespace dnns {

constexpr int kPortfolioFormatVersion = 1;
inline constexpr const char* kPortfolioFormat = "dnnshifter-portfolio";

struct VariantInfo {
  std::string name;              // "level_3"; unique in the portfolio
  int level = 0;                 // the IMP level it was made from (0 = the dense network)
  std::string file;              // the model file, a plain name inside the portfolio folder
  int64_t file_bytes = 0;        // size of that file
  uint32_t crc32 = 0;            // model_file_crc32 of that file
  int64_t params = 0;            // parameters of the compact model
  int64_t unpruned_params = 0;   // parameters of the masked model its mask keeps
  double compression = 1;        // dense parameters / unpruned_params
  int64_t flops = 0;             // 2 x multiply-accumulates for one image
  double accuracy = 0;           // test accuracy of the compact model, in [0, 1]
  int64_t test_examples = 0;     // images that accuracy was measured on
  double imp_accuracy = -1;      // the IMP run's test accuracy of the masked model (-1: none)
  double latency_ms_p50_b1 = 0, latency_ms_p99_b1 = 0;        // one image per call
  double latency_ms_p50_batch = 0, latency_ms_p99_batch = 0;  // Portfolio::latency_batch per call
  // Working memory of one call (InferenceMemory::total) with the variant held as the shifter
  // holds it ready: its execution plan's sparse copies counted, the dense weights of layers
  // that run sparse at every batch released (Model::release_dense_weights). (Manifests from
  // before 2026-11-30 counted the dense weights and not the sparse copies.)
  int64_t memory_bytes_b1 = 0;      // batch 1
  int64_t memory_bytes_batch = 0;   // the same at Portfolio::latency_batch
  int64_t resident_bytes = 0;       // bytes of the tensors the loaded model holds (as in its file)
  double max_logit_diff = 0;        // max |compact - masked| logit on the verified images
  int64_t verified_images = 0;
  // The execution plan the latencies were measured with (-1: not recorded, an older manifest):
  int planned_layers = -1;          // conv and linear layers with weights
  int sparse_layers_b1 = -1;        // of them, run sparse at batch 1
  int sparse_layers_batch = -1;     // run sparse at Portfolio::latency_batch
};

struct Portfolio {
  std::string arch;                 // "resnet20", ...
  Shape input_shape;                // (C, H, W)
  int num_classes = 0;
  int64_t dense_params = 0;         // parameters of the uncompacted network
  int64_t latency_batch = 1;        // the batch of the *_batch latency and memory figures
  std::vector<double> normalize_mean, normalize_std;  // (C) x = (pixel/255 - mean) / std
  std::string data;                 // the data set accuracy was measured on (--data)
  std::string source_run;           // the IMP run folder
  std::string machine;              // CPU model the latencies were measured on
  int threads = 1;                  // worker threads during the measurement
  std::string execution = "dense";  // how conv/linear layers ran when timed: dense, sparse or auto
  std::vector<VariantInfo> variants;
};

// ---- manifest text --------------------------------------------------------------------

std::string portfolio_manifest_json(const Portfolio& p);
// Parses and checks a manifest (types, ranges, unique names and files, safe file names);
// `where` names it in errors: "<where>: variant 'level_3' (entry 2): missing field 'params'".
Portfolio parse_portfolio_manifest(const std::string& json, const std::string& where);
// Reads <dir>/manifest.json with parse_portfolio_manifest (metadata only; no model is read).
Portfolio load_portfolio_manifest(const std::string& dir);

// ---- loading with every model ----------------------------------------------------------

struct LoadedPortfolio {
  std::string dir;
  Portfolio manifest;
  // (variants) on the CPU. Not const so that a Shifter given the only references may release
  // their dense weights in place (prune/shifter.h); nothing else changes them.
  std::vector<std::shared_ptr<Model>> models;
};
// Loads the manifest and every model file, and checks each against its entry (file present,
// size, CRC-32, a valid model archive, parameters, FLOPs, resident bytes, input shape and
// classes). Throws Error naming the variant and the problem; nothing is half-loaded.
// `execution` other than dense gives each model its execution plan (plan_execution at
// `batches`; empty: batch 1 and the manifest's latency_batch) before it is shared: auto
// measures each layer here, once, at load.
LoadedPortfolio load_portfolio(const std::string& dir, Execution execution = Execution::Dense,
                               const std::vector<int64_t>& batches = {});
// One variant's model, checked against its entry in the same way (and planned likewise).
std::shared_ptr<Model> load_variant_model(const std::string& dir, const Portfolio& p, int index,
                                          Execution execution = Execution::Dense,
                                          const std::vector<int64_t>& batches = {});

// The checksum the manifest keeps of a model file: CRC-32 (zlib's) of every byte before the
// archive's 12-byte trailer (its own CRC-32 field and the end marker, core/archive.h). The CRC
// of a whole archive is useless: a message followed by its own CRC always has the same CRC, so
// every valid archive would share one value. Also checks that the stored field agrees. Throws
// Error naming the path when the file cannot be read or is not a well-formed archive; `bytes`
// receives the file size.
uint32_t model_file_crc32(const std::string& path, int64_t* bytes = nullptr);

// ---- building from an IMP run ------------------------------------------------------------

struct ImpLevel {
  int level = 0;
  std::string dir;               // <run>/level_L or <run>/random/level_L
  LevelRecord record;            // its metrics.json
  int64_t unpruned_params = 0;   // parameters its mask keeps (pruned weights subtracted)
  double compression = 1;        // dense parameters / unpruned_params
};
// Every finished level (metrics.json and model.dnns present) of `chain` ("magnitude" or
// "random"; level 0 is shared), in level order. Throws Error when there is none.
std::vector<ImpLevel> list_imp_levels(const std::string& run_dir, const std::string& chain = "magnitude");

// DNNShifter's choice: the dense level 0 and, for each compression 2x, 4x, ..., 2^max_power x,
// the level whose compression is nearest to it on a log scale; a target further than a
// factor sqrt(2) from every level is skipped (the run did not reach it). Sorted, no repeats.
std::vector<int> default_portfolio_levels(const std::vector<ImpLevel>& levels, int max_power = 8);

struct PortfolioOptions {
  std::vector<int> levels;          // empty: default_portfolio_levels
  std::string chain = "magnitude";
  int64_t latency_batch = 32;       // the second latency/memory batch size (besides 1)
  int latency_runs = 50;            // timed calls at batch 1 (after 3 warm-up calls)
  int latency_batch_runs = 10;      // timed calls at latency_batch
  int64_t verify_images = 256;      // test images on which compact and masked logits are compared
  // Compaction is refused when max |logit difference| exceeds tolerance x max(1, max |logit|),
  // or when a prediction differs where the masked model's top two logits are not tied
  // (within that same bound).
  float logit_tolerance = 1e-4f;
  std::vector<double> normalize_mean, normalize_std;  // recorded in the manifest (the loader's)
  std::string data;                 // recorded in the manifest
  bool progress = true;             // a line per variant on stderr
  Execution execution = Execution::Auto;  // how the latencies are measured (plan_execution)
};

// Makes one variant: compacts `masked` (its weights must be masked), verifies it on the first
// opt.verify_images images of `test`, measures accuracy on all of `test` and working memory,
// saves it as <out_dir>/<name>.dnns and fills the entry except the latencies (measure_latency);
// its memory figures are the model's with every layer dense (build_portfolio then measures them
// planned and held as the shifter holds a ready variant).
// Throws Error naming `name` when the compaction is not exact.
// The masked model's own parameter count is the dense count the compression is taken against.
VariantInfo make_variant(const Model& masked, const std::string& name, int level, BatchSource& test,
                         const std::string& out_dir, const PortfolioOptions& opt);

// Fills the latency fields of `infos` (one per model): p50 and p99 of opt.latency_runs calls
// of `infer` at batch 1 and opt.latency_batch_runs at opt.latency_batch, on random inputs,
// taken round-robin over the models so that a change in the machine's load hits all alike.
// Each model runs with the execution plan it holds (plan_execution; none: dense).
void measure_latency(const std::vector<const Model*>& models, std::vector<VariantInfo>& infos,
                     const PortfolioOptions& opt);

// Builds the portfolio of `run_dir` into `out_dir` (created if missing): the chosen levels
// made with make_variant in out_dir/.building, moved into out_dir once all are verified and
// measured, then manifest.json; a build that fails leaves out_dir's previous portfolio as it
// was. Returns the manifest.
Portfolio build_portfolio(const std::string& run_dir, const std::string& out_dir, BatchSource& test,
                          const PortfolioOptions& opt);

// The CPU model name from /proc/cpuinfo ("unknown CPU" when absent).
std::string cpu_model_name();

// Nearest-rank percentile (p in [0, 1]) of `v`; 0 for an empty vector.
double nearest_rank_percentile(std::vector<double> v, double p);

// A Markdown table of the variants (level, params, compression, FLOPs, accuracy, latency, memory).
std::string portfolio_table(const Portfolio& p);

}  // namespace dnns
