// cifar_prune compact RUN_DIR: exact compaction of the levels of an IMP run, verified on the
// run's test set (identical predictions, maximum logit difference), with parameters (weights,
// biases, border tables), bytes, FLOPs, the portable runtime's arena per image and per-layer
// channel counts before and after, as a table and JSON.
#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>

#include "apps/cifar_prune/commands.h"
#include "apps/cifar_prune/common.h"
#include "core/error.h"
#include "core/fs.h"
#include "core/json.h"
#include "nn/export/export.h"
#include "prune/compact.h"
#include "prune/imp.h"
#include "prune/report.h"

namespace dnns::app {

namespace {

int64_t file_bytes(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 ? static_cast<int64_t>(st.st_size) : -1;
}

struct LevelCompaction {
  int level = 0;
  CompactReport rep;
  double acc_masked = 0, acc_compact = 0;
  int64_t examples = 0, prediction_mismatches = 0;
  float max_logit_diff = 0, logit_scale = 0;
  int64_t bytes_masked = 0, bytes_compact = 0;
  int64_t arena_masked = 0, arena_compact = 0;  // portable runtime activation bytes per image
};

// Runs both models over the test set; counts differing predictions and the largest logit gap.
void verify_on(BatchSource& test, Model& masked, Model& compact, LevelCompaction& r) {
  test.start_epoch(0, 0);
  Batch b;
  int64_t correct_a = 0, correct_b = 0;
  while (test.next(b)) {
    Tensor la = masked.forward(b.images, false), lb = compact.forward(b.images, false);
    const float d = max_abs_diff(la, lb);  // NaN when either model produced one: kept, and refused below
    if (std::isnan(d) || d > r.max_logit_diff) r.max_logit_diff = d;
    const int64_t n = la.dim(0), k = la.dim(1);
    for (int64_t i = 0; i < n; ++i) {
      int64_t pa = 0, pb = 0;
      for (int64_t c = 0; c < k; ++c) {
        r.logit_scale = std::max(r.logit_scale, std::fabs(la[i * k + c]));
        if (la[i * k + c] > la[i * k + pa]) pa = c;
        if (lb[i * k + c] > lb[i * k + pb]) pb = c;
      }
      const int label = static_cast<int>(b.labels[i]);
      correct_a += pa == label;
      correct_b += pb == label;
      r.prediction_mismatches += pa != pb;
    }
    r.examples += n;
  }
  r.acc_masked = r.examples ? double(correct_a) / r.examples : 0;
  r.acc_compact = r.examples ? double(correct_b) / r.examples : 0;
}

std::string layers_json(const CompactReport& rep) {
  std::string s = "[";
  for (size_t i = 0; i < rep.layers.size(); ++i) {
    const LayerChannels& l = rep.layers[i];
    s += (i ? ", " : "") + Json()
                               .add("layer", l.name)
                               .add("in_before", l.in_before)
                               .add("in_after", l.in_after)
                               .add("out_before", l.out_before)
                               .add("out_after", l.out_after)
                               .str();
  }
  return s + "]";
}

}  // namespace

int cmd_compact(int argc, char** argv) {
  Flags f("cifar_prune compact RUN_DIR",
          "Compacts the levels of an IMP run into dense models (exact: batchnorm folded, dead channels\n"
          "removed, their constants folded), verifies them on the run's test set and reports parameters\n"
          "(weights, biases, border tables), bytes, FLOPs, the portable runtime's activation arena per image\n"
          "and channels before and after. Writes level_L/compact.dnns and compact.json per\n"
          "level, and compaction.md / compaction.json in the run directory.");
  f.add("level", "", "compact this level only (default: every finished level)");
  f.add("chain", "magnitude", "magnitude or random (the baseline chain)");
  add_training_flags(f);  // data flags default to the run's own (hparams.json)
  add_system_flags(f);
  if (!f.parse(argc, argv, 1, 1)) return 0;
  check(f.positional().size() == 1, "cifar_prune compact: give the run directory (see --help)");
  const std::string run = f.positional()[0];
  std::string hp_path = run + "/hparams.json";
  check(file_exists(hp_path), run + ": not a run directory (no hparams.json)");
  for (const auto& [k, v] : parse_flat_json(read_text(hp_path), hp_path))
    if (f.values().count(k) && k != "threads" && k != "device") f.set_default(k, v);
  setup_system(f);
  std::string chain = f.str("chain");
  check(chain == "magnitude" || chain == "random", "--chain must be magnitude or random");

  std::vector<int> levels;
  if (!f.str("level").empty()) {
    levels.push_back(static_cast<int>(f.integer("level")));
  } else {
    // Level 0 (the dense network) belongs to the magnitude chain; the random chain starts at 1.
    for (int l = chain == "random" ? 1 : 0;; ++l) {
      if (!file_exists(imp_level_dir(run, chain, l) + "/metrics.json")) break;
      levels.push_back(l);
    }
  }
  check(!levels.empty(), run + ": no finished level to compact");
  for (int level : levels) {
    check(level >= 0, "--level must be >= 0, got " + std::to_string(level));
    check(level >= 1 || chain != "random", "--level 0: the random chain starts at level 1 (level 0, the dense "
                                           "network, is the magnitude chain's)");
  }

  DataPair data = load_data(f);
  std::fprintf(stderr, "verifying on %s\n", data.description.c_str());
  std::vector<LevelCompaction> results;
  for (int level : levels) {
    std::string dir = imp_level_dir(run, chain, level);
    std::string path = dir + "/model.dnns";
    check(file_exists(path), path + ": missing (level " + std::to_string(level) + " not finished?)");
    Model masked = Model::load(path);
    masked.apply_masks();
    LevelCompaction r;
    r.level = level;
    Model compact = compact_model(masked, &r.rep);
    verify_on(*data.test, masked, compact, r);
    // Refuse before writing anything: a compact model that is not exact must not be left
    // where later stages would pick it up.
    check(r.prediction_mismatches == 0 && !std::isnan(r.max_logit_diff),
          path + ": the compact model's predictions differ from the masked model's on " +
              std::to_string(r.prediction_mismatches) + " test images (max logit difference " +
              std::to_string(r.max_logit_diff) + "): compaction is not exact here, please report it");
    std::string out_path = dir + "/compact.dnns";
    compact.save(out_path);  // atomic: temporary file, then rename
    r.bytes_masked = file_bytes(path);
    r.bytes_compact = file_bytes(out_path);
    r.arena_masked = portable_arena_bytes(masked);
    r.arena_compact = portable_arena_bytes(compact);
    write_text_atomic(dir + "/compact.json",
                      Json()
                          .add("level", level)
                          .add("chain", chain)
                          .add("compact_ms", r.rep.milliseconds)
                          .add("params_before", r.rep.params_before)
                          .add("params_after", r.rep.params_after)
                          .add("weights_before", r.rep.split_before.weights)
                          .add("biases_before", r.rep.split_before.biases)
                          .add("tables_before", r.rep.split_before.tables)
                          .add("weights_after", r.rep.split_after.weights)
                          .add("biases_after", r.rep.split_after.biases)
                          .add("tables_after", r.rep.split_after.tables)
                          .add("arena_bytes_per_image_before", r.arena_masked)
                          .add("arena_bytes_per_image_after", r.arena_compact)
                          .add("nonzero_weights_before", r.rep.nonzero_before)
                          .add("flops_before", 2 * r.rep.macs_before)
                          .add("flops_after", 2 * r.rep.macs_after)
                          .add("bytes_before", r.bytes_masked)
                          .add("bytes_after", r.bytes_compact)
                          .add("channels_removed", r.rep.channels_removed)
                          .add("constants_folded", r.rep.constants_folded)
                          .add("position_bias_layers", r.rep.position_bias_layers)
                          .add("branch_filters_dropped", r.rep.branch_rows_dropped)
                          .add("test_examples", r.examples)
                          .add("test_accuracy_masked", r.acc_masked)
                          .add("test_accuracy_compact", r.acc_compact)
                          .add("prediction_mismatches", r.prediction_mismatches)
                          .add("max_logit_difference", double(r.max_logit_diff))
                          .add("logit_scale", double(r.logit_scale))
                          .add_raw("layers", layers_json(r.rep))
                          .str() +
                          "\n");
    results.push_back(r);
    std::fprintf(stderr,
                 "level %d: %lld -> %lld parameters (%lld weights, %lld biases, %lld in border tables) in %.2f ms, "
                 "arena %.1f -> %.1f KiB per image, max logit difference %.3g\n",
                 level, (long long)r.rep.params_before, (long long)r.rep.params_after, (long long)r.rep.split_after.weights,
                 (long long)r.rep.split_after.biases, (long long)r.rep.split_after.tables, r.rep.milliseconds,
                 r.arena_masked / 1024.0, r.arena_compact / 1024.0, r.max_logit_diff);
  }

  // The summary table, also written as compaction.md.
  std::ostringstream md;
  md << "| level | params | surviving weights | compact params | weights | biases | tables | x smaller | FLOPs | "
        "compact FLOPs | file bytes | compact bytes | arena/image | compact arena/image | test acc masked | "
        "test acc compact | max logit diff | compact ms |\n"
     << "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
  std::string json = "[";
  char buf[512];
  // The summary covers every compacted level on disk, not only those of this call.
  std::vector<LevelCompaction> all;
  for (int l = chain == "random" ? 1 : 0;; ++l) {
    auto it = std::find_if(results.begin(), results.end(), [&](const LevelCompaction& r) { return r.level == l; });
    if (it != results.end()) {
      all.push_back(*it);
      continue;
    }
    const std::string cj = imp_level_dir(run, chain, l) + "/compact.json";
    if (!file_exists(imp_level_dir(run, chain, l) + "/metrics.json")) break;
    if (!file_exists(cj)) continue;
    const JsonValue kv = parse_json(read_text(cj), cj);
    auto num = [&](const char* key) { return json_double(json_field(kv, key, cj), cj + ": " + key); };
    LevelCompaction r;
    r.level = l;
    r.rep.params_before = static_cast<int64_t>(num("params_before"));
    r.rep.nonzero_before = static_cast<int64_t>(num("nonzero_weights_before"));
    r.rep.params_after = static_cast<int64_t>(num("params_after"));
    // Files written before the split and the arena were reported: "-" in the table.
    auto opt = [&](const char* key) { return kv.find(key) ? static_cast<int64_t>(num(key)) : int64_t(-1); };
    r.rep.split_after.weights = opt("weights_after");
    r.rep.split_after.biases = opt("biases_after");
    r.rep.split_after.tables = opt("tables_after");
    r.arena_masked = opt("arena_bytes_per_image_before");
    r.arena_compact = opt("arena_bytes_per_image_after");
    r.rep.macs_before = static_cast<int64_t>(num("flops_before")) / 2;
    r.rep.macs_after = static_cast<int64_t>(num("flops_after")) / 2;
    r.rep.milliseconds = num("compact_ms");
    r.bytes_masked = static_cast<int64_t>(num("bytes_before"));
    r.bytes_compact = static_cast<int64_t>(num("bytes_after"));
    r.acc_masked = num("test_accuracy_masked");
    r.acc_compact = num("test_accuracy_compact");
    r.max_logit_diff = static_cast<float>(num("max_logit_difference"));
    all.push_back(r);
  }
  for (size_t i = 0; i < all.size(); ++i) {
    const LevelCompaction& r = all[i];
    auto count = [](int64_t v) { return v < 0 ? std::string("-") : std::to_string(v); };
    auto kib = [](int64_t v) {
      char t[32];
      std::snprintf(t, sizeof t, "%.1f KiB", v / 1024.0);
      return v < 0 ? std::string("-") : std::string(t);
    };
    std::snprintf(buf, sizeof buf,
                  "| %d | %lld | %lld | %lld | %s | %s | %s | %.2f | %lld | %lld | %lld | %lld | %s | %s | %.2f%% | %.2f%% | "
                  "%.2g | %.2f |\n",
                  r.level, (long long)r.rep.params_before, (long long)r.rep.nonzero_before, (long long)r.rep.params_after,
                  count(r.rep.split_after.weights).c_str(), count(r.rep.split_after.biases).c_str(),
                  count(r.rep.split_after.tables).c_str(),
                  double(r.rep.params_before) / std::max<int64_t>(1, r.rep.params_after),
                  (long long)(2 * r.rep.macs_before), (long long)(2 * r.rep.macs_after), (long long)r.bytes_masked,
                  (long long)r.bytes_compact, kib(r.arena_masked).c_str(), kib(r.arena_compact).c_str(),
                  100 * r.acc_masked, 100 * r.acc_compact, double(r.max_logit_diff), r.rep.milliseconds);
    md << buf;
    if (i) json += ",\n ";
    json += read_text(imp_level_dir(run, chain, r.level) + "/compact.json");
    if (!json.empty() && json.back() == '\n') json.pop_back();
  }
  json += "]\n";
  std::string prefix = chain == "random" ? "/compaction_random" : "/compaction";
  write_text_atomic(run + prefix + ".md", md.str());
  write_text_atomic(run + prefix + ".json", json);
  std::printf("%s", md.str().c_str());
  if (results.size() == 1) {
    std::printf("\nchannels per layer (in -> in', out -> out'):\n");
    for (const LayerChannels& l : results[0].rep.layers)
      std::printf("  %-28s %5d -> %-5d %5d -> %-5d\n", l.name.c_str(), l.in_before, l.in_after, l.out_before, l.out_after);
  }
  return 0;
}

}  // namespace dnns::app
