#include "prune/portfolio.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "core/archive.h"
#include "core/error.h"
#include "core/fs.h"
#include "core/json.h"
#include "core/rng.h"
#include "core/threading.h"
#include "prune/compact.h"
#include "prune/imp.h"
#include "prune/infer.h"
#include "prune/mask.h"

namespace dnns {

using Clock = std::chrono::steady_clock;

double nearest_rank_percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const double rank = std::ceil(std::clamp(p, 0.0, 1.0) * static_cast<double>(v.size()));
  size_t i = rank < 1 ? 0 : static_cast<size_t>(rank) - 1;
  return v[std::min(i, v.size() - 1)];
}

std::string cpu_model_name() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("model name", 0) == 0) {
      size_t c = line.find(':');
      if (c != std::string::npos && c + 2 <= line.size()) return line.substr(c + 2);
    }
  return "unknown CPU";
}

uint32_t model_file_crc32(const std::string& path, int64_t* bytes) {
  constexpr int64_t kTrailer = 12;  // u32 CRC-32 + "ENDSHIFT"
  std::error_code ec;
  const auto size = std::filesystem::file_size(path, ec);
  check(!ec, path + ": cannot read (" + ec.message() + ")");
  check(static_cast<int64_t>(size) > kTrailer, path + ": too short for a model archive");
  std::ifstream f(path, std::ios::binary);
  check(f.good(), path + ": cannot open");
  std::vector<char> buf(1 << 20);
  uint32_t crc = 0;
  int64_t left = static_cast<int64_t>(size) - kTrailer;
  while (left > 0) {
    const std::streamsize want = static_cast<std::streamsize>(std::min<int64_t>(left, static_cast<int64_t>(buf.size())));
    f.read(buf.data(), want);
    check(f.gcount() == want, path + ": read error");
    crc = crc32_update(crc, buf.data(), static_cast<size_t>(want));
    left -= want;
  }
  unsigned char trailer[kTrailer];
  f.read(reinterpret_cast<char*>(trailer), kTrailer);
  check(f.gcount() == kTrailer && std::memcmp(trailer + 4, "ENDSHIFT", 8) == 0,
        path + ": not a model archive (no end marker)");
  const uint32_t stored = uint32_t(trailer[0]) | uint32_t(trailer[1]) << 8 | uint32_t(trailer[2]) << 16 |
                          uint32_t(trailer[3]) << 24;
  check(stored == crc, path + ": checksum mismatch (file corrupt)");
  if (bytes) *bytes = static_cast<int64_t>(size);
  return crc;
}

// ---------------------------------------------------------------- manifest text

namespace {

std::string number_array(const std::vector<double>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + json_number(v[i]);
  return s + "]";
}

std::string variant_json(const VariantInfo& v) {
  Json j;
  j
      .add("name", v.name)
      .add("level", v.level)
      .add("file", v.file)
      .add("file_bytes", v.file_bytes)
      .add("crc32", static_cast<int64_t>(v.crc32))
      .add("params", v.params)
      .add("unpruned_params", v.unpruned_params)
      .add("compression", v.compression)
      .add("flops", v.flops)
      .add("accuracy", v.accuracy)
      .add("test_examples", v.test_examples)
      .add("imp_accuracy", v.imp_accuracy)
      .add("latency_ms_p50_b1", v.latency_ms_p50_b1)
      .add("latency_ms_p99_b1", v.latency_ms_p99_b1)
      .add("latency_ms_p50_batch", v.latency_ms_p50_batch)
      .add("latency_ms_p99_batch", v.latency_ms_p99_batch)
      .add("memory_bytes_b1", v.memory_bytes_b1)
      .add("memory_bytes_batch", v.memory_bytes_batch)
      .add("resident_bytes", v.resident_bytes)
      .add("max_logit_diff", v.max_logit_diff)
      .add("verified_images", v.verified_images);
  if (v.planned_layers >= 0)
    j.add("planned_layers", v.planned_layers)
        .add("sparse_layers_b1", v.sparse_layers_b1)
        .add("sparse_layers_batch", v.sparse_layers_batch);
  return j.str();
}

// A model file name must stay inside the portfolio folder.
bool safe_file_name(const std::string& f) {
  return !f.empty() && f[0] != '.' && f.find('/') == std::string::npos && f.find('\\') == std::string::npos;
}

}  // namespace

std::string portfolio_manifest_json(const Portfolio& p) {
  std::vector<double> shape(p.input_shape.begin(), p.input_shape.end());
  std::string variants = "[";
  for (size_t i = 0; i < p.variants.size(); ++i) variants += std::string(i ? "," : "") + "\n    " + variant_json(p.variants[i]);
  variants += "\n  ]";
  // Shared fields one per line, the variants one per line: readable and diffable.
  std::vector<std::pair<std::string, std::string>> fields = {
      {"format", json_escape(kPortfolioFormat)},
      {"format_version", std::to_string(kPortfolioFormatVersion)},
      {"arch", json_escape(p.arch)},
      {"input_shape", number_array(shape)},
      {"num_classes", std::to_string(p.num_classes)},
      {"dense_params", std::to_string(p.dense_params)},
      {"latency_batch", std::to_string(p.latency_batch)},
      {"normalize_mean", number_array(p.normalize_mean)},
      {"normalize_std", number_array(p.normalize_std)},
      {"data", json_escape(p.data)},
      {"source_run", json_escape(p.source_run)},
      {"machine", json_escape(p.machine)},
      {"threads", std::to_string(p.threads)},
      {"execution", json_escape(p.execution)},
      {"variants", variants},
  };
  std::string out = "{";
  for (size_t i = 0; i < fields.size(); ++i)
    out += std::string(i ? "," : "") + "\n  " + json_escape(fields[i].first) + ": " + fields[i].second;
  return out + "\n}\n";
}

Portfolio parse_portfolio_manifest(const std::string& json, const std::string& where) {
  JsonValue root = parse_json(json, where);
  check(root.type == JsonValue::Type::Object, where + ": expected a JSON object at the top level");
  auto field = [&](const char* key) -> const JsonValue& { return json_field(root, key, where); };
  auto at = [&](const char* key) { return where + ": field '" + std::string(key) + "'"; };

  std::string format = json_string(field("format"), at("format"));
  check(format == kPortfolioFormat, where + ": not a portfolio manifest (format '" + format + "', expected '" +
                                        kPortfolioFormat + "')");
  int64_t version = json_int(field("format_version"), at("format_version"));
  check(version == kPortfolioFormatVersion, where + ": format version " + std::to_string(version) +
                                                " is not supported (this program reads version " +
                                                std::to_string(kPortfolioFormatVersion) + ")");
  Portfolio p;
  p.arch = json_string(field("arch"), at("arch"));
  for (const JsonValue& d : json_array(field("input_shape"), at("input_shape"))) {
    int64_t v = json_int(d, at("input_shape"));
    check(v > 0, at("input_shape") + ": dimensions must be positive");
    p.input_shape.push_back(v);
  }
  check(p.input_shape.size() == 3, at("input_shape") + ": expected [C, H, W]");
  int64_t classes = json_int(field("num_classes"), at("num_classes"));
  check(classes > 0 && classes < (1 << 24), at("num_classes") + ": must be positive");
  p.num_classes = static_cast<int>(classes);
  p.dense_params = json_int(field("dense_params"), at("dense_params"));
  check(p.dense_params > 0, at("dense_params") + ": must be positive");
  p.latency_batch = json_int(field("latency_batch"), at("latency_batch"));
  check(p.latency_batch > 0, at("latency_batch") + ": must be positive");
  for (const JsonValue& d : json_array(field("normalize_mean"), at("normalize_mean")))
    p.normalize_mean.push_back(json_double(d, at("normalize_mean")));
  for (const JsonValue& d : json_array(field("normalize_std"), at("normalize_std"))) {
    double s = json_double(d, at("normalize_std"));
    check(s > 0, at("normalize_std") + ": must be positive");
    p.normalize_std.push_back(s);
  }
  check(static_cast<int64_t>(p.normalize_mean.size()) == p.input_shape[0] &&
            p.normalize_std.size() == p.normalize_mean.size(),
        where + ": normalize_mean and normalize_std need one value per input channel (" +
            std::to_string(p.input_shape[0]) + ")");
  p.data = json_string(field("data"), at("data"));
  p.source_run = json_string(field("source_run"), at("source_run"));
  p.machine = json_string(field("machine"), at("machine"));
  int64_t threads = json_int(field("threads"), at("threads"));
  check(threads > 0 && threads <= 4096, at("threads") + ": must be positive");
  p.threads = static_cast<int>(threads);
  if (root.find("execution")) {  // absent before sparse execution: everything ran dense
    p.execution = json_string(field("execution"), at("execution"));
    parse_execution(p.execution, at("execution"));
  }

  const auto& entries = json_array(field("variants"), at("variants"));
  check(!entries.empty(), where + ": the portfolio has no variants");
  std::set<std::string> names, files;
  for (size_t i = 0; i < entries.size(); ++i) {
    const JsonValue& e = entries[i];
    std::string w = where + ": variant entry " + std::to_string(i);
    check(e.type == JsonValue::Type::Object, w + ": expected an object");
    VariantInfo v;
    v.name = json_string(json_field(e, "name", w), w + ": field 'name'");
    w = where + ": variant '" + v.name + "' (entry " + std::to_string(i) + ")";
    check(!v.name.empty(), w + ": empty name");
    check(names.insert(v.name).second, w + ": the name is used by an earlier entry");
    auto f = [&](const char* key) -> const JsonValue& { return json_field(e, key, w); };
    auto fw = [&](const char* key) { return w + ": field '" + std::string(key) + "'"; };
    auto count = [&](const char* key, int64_t min) {
      int64_t x = json_int(f(key), fw(key));
      check(x >= min, fw(key) + ": must be >= " + std::to_string(min) + ", got " + std::to_string(x));
      return x;
    };
    auto real = [&](const char* key, double lo, double hi) {
      double x = json_double(f(key), fw(key));
      check(x >= lo && x <= hi, fw(key) + ": " + json_number(x) + " is outside [" + json_number(lo) + ", " +
                                    json_number(hi) + "]");
      return x;
    };
    v.level = static_cast<int>(count("level", 0));
    v.file = json_string(f("file"), fw("file"));
    check(safe_file_name(v.file), fw("file") + ": '" + v.file + "' must be a plain file name inside the portfolio folder");
    check(files.insert(v.file).second, fw("file") + ": '" + v.file + "' is used by an earlier entry");
    v.file_bytes = count("file_bytes", 1);
    int64_t crc = count("crc32", 0);
    check(crc <= 0xFFFFFFFFll, fw("crc32") + ": not a 32-bit value");
    v.crc32 = static_cast<uint32_t>(crc);
    v.params = count("params", 1);
    v.unpruned_params = count("unpruned_params", 1);
    v.compression = real("compression", 1e-9, 1e12);
    v.flops = count("flops", 0);
    v.accuracy = real("accuracy", 0, 1);
    v.test_examples = count("test_examples", 0);
    v.imp_accuracy = real("imp_accuracy", -1, 1);
    v.latency_ms_p50_b1 = real("latency_ms_p50_b1", 0, 1e9);
    v.latency_ms_p99_b1 = real("latency_ms_p99_b1", 0, 1e9);
    v.latency_ms_p50_batch = real("latency_ms_p50_batch", 0, 1e9);
    v.latency_ms_p99_batch = real("latency_ms_p99_batch", 0, 1e9);
    check(v.latency_ms_p99_b1 >= v.latency_ms_p50_b1 && v.latency_ms_p99_batch >= v.latency_ms_p50_batch,
          w + ": a p99 latency is below its p50");
    v.memory_bytes_b1 = count("memory_bytes_b1", 1);
    v.memory_bytes_batch = count("memory_bytes_batch", 1);
    v.resident_bytes = count("resident_bytes", 1);
    v.max_logit_diff = real("max_logit_diff", 0, 1e30);
    v.verified_images = count("verified_images", 0);
    if (e.find("planned_layers")) {
      v.planned_layers = static_cast<int>(count("planned_layers", 0));
      v.sparse_layers_b1 = static_cast<int>(count("sparse_layers_b1", 0));
      v.sparse_layers_batch = static_cast<int>(count("sparse_layers_batch", 0));
      check(v.sparse_layers_b1 <= v.planned_layers && v.sparse_layers_batch <= v.planned_layers,
            w + ": more sparse layers than planned layers");
    }
    check(v.params <= p.dense_params, w + ": " + std::to_string(v.params) + " parameters, more than the dense " +
                                          std::to_string(p.dense_params));
    p.variants.push_back(std::move(v));
  }
  return p;
}

Portfolio load_portfolio_manifest(const std::string& dir) {
  const std::string path = dir + "/manifest.json";
  check(file_exists(path), "portfolio " + dir + ": manifest.json not found (not a portfolio folder, or its build "
                                                 "did not finish)");
  return parse_portfolio_manifest(read_text(path), path);
}

std::shared_ptr<Model> load_variant_model(const std::string& dir, const Portfolio& p, int index,
                                                Execution execution, const std::vector<int64_t>& batches) {
  check(index >= 0 && index < static_cast<int>(p.variants.size()),
        "portfolio " + dir + ": no variant " + std::to_string(index));
  const VariantInfo& v = p.variants[index];
  const std::string path = dir + "/" + v.file;
  const std::string w = dir + "/manifest.json: variant '" + v.name + "'";
  check(file_exists(path), w + ": model file " + path + " is missing");
  std::error_code ec;
  const int64_t bytes = static_cast<int64_t>(std::filesystem::file_size(path, ec));
  check(!ec && bytes == v.file_bytes, w + ": " + path + " has " + std::to_string(ec ? -1 : bytes) +
                                          " bytes, the manifest says " + std::to_string(v.file_bytes));
  uint32_t crc = 0;
  try {
    crc = model_file_crc32(path);
  } catch (const Error& e) {
    throw Error(w + ": " + e.what());
  }
  char hex[64];
  std::snprintf(hex, sizeof hex, "0x%08x, the manifest says 0x%08x", crc, v.crc32);
  check(crc == v.crc32, w + ": checksum mismatch: " + path + " has CRC-32 " + hex + " (file altered or corrupt)");
  Model m;
  try {
    m = Model::load(path);
  } catch (const Error& e) {
    throw Error(w + ": " + e.what());
  }
  auto disagree = [&](const std::string& what, int64_t file_value, int64_t manifest_value) {
    return w + ": " + what + " of the model in " + v.file + " is " + std::to_string(file_value) +
           ", the manifest says " + std::to_string(manifest_value);
  };
  check(m.num_params() == v.params, disagree("parameter count", m.num_params(), v.params));
  check(2 * m.forward_macs() == v.flops, disagree("FLOPs", 2 * m.forward_macs(), v.flops));
  check(model_resident_bytes(m) == v.resident_bytes, disagree("resident bytes", model_resident_bytes(m), v.resident_bytes));
  check(m.input_shape() == p.input_shape, w + ": the model in " + v.file + " takes input " + shape_str(m.input_shape()) +
                                              ", the manifest says " + shape_str(p.input_shape));
  const Shape out = m.infer_shapes(1)[m.output_node()];
  check(out.size() == 2 && out[1] == p.num_classes,
        w + ": the model in " + v.file + " outputs " + shape_str(out) + ", the manifest says " +
            std::to_string(p.num_classes) + " classes");
  if (execution != Execution::Dense)
    plan_execution(m, execution, batches.empty() ? std::vector<int64_t>{1, p.latency_batch} : batches);
  return std::make_shared<Model>(std::move(m));
}

LoadedPortfolio load_portfolio(const std::string& dir, Execution execution, const std::vector<int64_t>& batches) {
  LoadedPortfolio lp;
  lp.dir = dir;
  lp.manifest = load_portfolio_manifest(dir);
  for (int i = 0; i < static_cast<int>(lp.manifest.variants.size()); ++i)
    lp.models.push_back(load_variant_model(dir, lp.manifest, i, execution, batches));
  return lp;
}

// ---------------------------------------------------------------- building

std::vector<ImpLevel> list_imp_levels(const std::string& run_dir, const std::string& chain) {
  check(chain == "magnitude" || chain == "random", "chain must be 'magnitude' or 'random', got '" + chain + "'");
  const std::string dense_file = imp_level_dir(run_dir, "magnitude", 0) + "/model.dnns";
  check(file_exists(dense_file), run_dir + ": no finished IMP level 0 (" + dense_file + " is missing)");
  Archive meta = load_archive_meta(dense_file);
  check(meta.meta.count("graph"), dense_file + ": holds no graph spec (not a model file?)");
  const int64_t dense = Model::from_spec(meta.meta.at("graph")).num_params();
  std::vector<ImpLevel> out;
  for (int L = 0;; ++L) {
    std::string dir = imp_level_dir(run_dir, L == 0 ? "magnitude" : chain, L);
    if (!file_exists(dir)) break;
    std::string metrics = dir + "/metrics.json", model = dir + "/model.dnns";
    if (!file_exists(metrics) || !file_exists(model)) break;  // the level in progress; later ones cannot exist
    ImpLevel lv;
    lv.level = L;
    lv.dir = dir;
    lv.record = parse_level_record(read_text(metrics), metrics);
    check(lv.record.total > 0 && lv.record.remaining > 0 && lv.record.remaining <= lv.record.total &&
              lv.record.total <= dense,
          metrics + ": weight counts " + std::to_string(lv.record.remaining) + "/" + std::to_string(lv.record.total) +
              " do not fit a network of " + std::to_string(dense) + " parameters");
    lv.unpruned_params = lv.record.remaining + (dense - lv.record.total);
    lv.compression = static_cast<double>(dense) / static_cast<double>(lv.unpruned_params);
    out.push_back(lv);
  }
  check(!out.empty(), run_dir + ": no finished IMP level");
  return out;
}

std::vector<int> default_portfolio_levels(const std::vector<ImpLevel>& levels, int max_power) {
  std::set<int> chosen;
  for (const ImpLevel& l : levels)
    if (l.level == 0) chosen.insert(0);
  for (int k = 1; k <= max_power; ++k) {
    const double target = std::log(std::ldexp(1.0, k));
    const ImpLevel* best = nullptr;
    double best_dist = 0;
    for (const ImpLevel& l : levels) {
      double d = std::fabs(std::log(l.compression) - target);
      if (!best || d < best_dist) best = &l, best_dist = d;  // ties keep the lower level
    }
    if (best && best_dist <= 0.5 * std::log(2.0) + 1e-12) chosen.insert(best->level);
  }
  return {chosen.begin(), chosen.end()};
}

namespace {

double ms_since(Clock::time_point t0) { return std::chrono::duration<double, std::milli>(Clock::now() - t0).count(); }

int64_t argmax_row(const Tensor& y, int64_t r) {
  const int64_t k = y.dim(1);
  int64_t best = 0;
  for (int64_t j = 1; j < k; ++j)
    if (y[r * k + j] > y[r * k + best]) best = j;
  return best;
}

Tensor random_input(int64_t n, const Shape& chw, Rng& rng) {
  Tensor x({n, chw[0], chw[1], chw[2]});  // (N, C, H, W)
  for (int64_t i = 0; i < x.numel(); ++i) x[i] = rng.normal();
  return x;
}

}  // namespace

VariantInfo make_variant(const Model& masked_in, const std::string& name, int level, BatchSource& test,
                         const std::string& out_dir, const PortfolioOptions& opt) {
  check(safe_file_name(name + ".dnns"), "portfolio: variant name '" + name + "' is not usable as a file name");
  check(opt.latency_batch > 0 && opt.latency_runs > 0 && opt.latency_batch_runs > 0,
        "portfolio: latency batch and run counts must be positive");
  const auto t_start = Clock::now();
  Model masked = masked_in.clone();
  masked.to(Device::CPU);
  masked.apply_masks();
  CompactReport rep;
  Model compact = compact_model(masked, &rep);
  compact.masks.clear();  // inference only: the compact weights already hold the zeros

  VariantInfo v;
  v.name = name;
  v.level = level;
  v.file = name + ".dnns";
  v.params = compact.num_params();
  int64_t pruned = 0;
  for (const auto& [w, mask] : masked.masks) pruned += mask.numel() - mask_count(mask);
  const int64_t dense = masked.num_params();
  v.unpruned_params = dense - pruned;
  check(v.unpruned_params > 0, "portfolio: variant '" + name + "': its mask prunes every parameter");
  v.compression = static_cast<double>(dense) / static_cast<double>(v.unpruned_params);
  v.flops = 2 * compact.forward_macs();

  // One pass over the test set: accuracy of the compact model on every image (through infer,
  // the path the shifter serves), and its logits against the masked model's on the first
  // verify_images images.
  test.start_epoch(0);
  Batch b;
  Tensor probe;  // a few test images, to check the saved file reproduces these logits
  int64_t correct = 0, examples = 0;
  float max_diff = 0;
  while (test.next(b)) {
    check(b.images.is_cpu(), "portfolio: test batches must be on the CPU");
    Tensor y = infer(compact, b.images);
    if (!probe.defined()) probe = b.images;
    if (v.verified_images < opt.verify_images) {
      Tensor ym = masked.forward(b.images, false);
      float scale = 1.0f;
      for (int64_t i = 0; i < ym.numel(); ++i) scale = std::max(scale, std::fabs(ym[i]));
      const float diff = max_abs_diff(ym, y), bound = opt.logit_tolerance * scale;
      check(diff <= bound, "portfolio: variant '" + name + "': compaction is not exact: max |logit difference| " +
                               json_number(diff) + " > tolerance " + json_number(bound) + "; refusing it");
      for (int64_t r = 0; r < ym.dim(0); ++r) {
        int64_t pm = argmax_row(ym, r), pc = argmax_row(y, r);
        const int64_t k = ym.dim(1);
        check(pm == pc || std::fabs(ym[r * k + pm] - ym[r * k + pc]) <= bound,
              "portfolio: variant '" + name + "': the compact model predicts class " + std::to_string(pc) +
                  " where the masked model predicts " + std::to_string(pm) + " (test image " +
                  std::to_string(examples + r) + "); refusing it");
      }
      max_diff = std::max(max_diff, diff);
      v.verified_images += ym.dim(0);
    }
    for (int64_t r = 0; r < y.dim(0); ++r) correct += argmax_row(y, r) == static_cast<int64_t>(b.labels[r]);
    examples += y.dim(0);
  }
  check(examples > 0, "portfolio: the test set is empty");
  v.accuracy = static_cast<double>(correct) / static_cast<double>(examples);
  v.test_examples = examples;
  v.max_logit_diff = max_diff;

  // Save, then prove the file holds the same network: its logits must equal bit for bit.
  const std::string path = out_dir + "/" + v.file;
  compact.save(path);
  {
    Model back = Model::load(path);
    Tensor x = probe.dim(0) > 8 ? Tensor::from({8, probe.dim(1), probe.dim(2), probe.dim(3)},
                                               std::vector<float>(probe.data(), probe.data() + 8 * probe.numel() / probe.dim(0)))
                                : probe;
    check(max_abs_diff(infer(back, x), infer(compact, x)) == 0.0f,
          path + ": the saved compact model does not reproduce its logits");
  }
  v.crc32 = model_file_crc32(path, &v.file_bytes);
  v.resident_bytes = model_resident_bytes(compact);

  v.memory_bytes_b1 = inference_memory(compact, 1).total();
  v.memory_bytes_batch = inference_memory(compact, opt.latency_batch).total();

  if (opt.progress)
    std::fprintf(stderr,
                 "portfolio: %-9s %10lld params (%.2fx), %.2f MFLOPs, accuracy %.2f%%, memory %.2f MB all dense, "
                 "max |dlogit| %.2g on %lld images, %.1f s\n",
                 name.c_str(), (long long)v.params, v.compression, v.flops / 1e6, 100.0 * v.accuracy,
                 v.memory_bytes_b1 / 1e6, v.max_logit_diff, (long long)v.verified_images, ms_since(t_start) / 1000.0);
  return v;
}

void measure_latency(const std::vector<const Model*>& models, std::vector<VariantInfo>& infos,
                     const PortfolioOptions& opt) {
  check(models.size() == infos.size() && !models.empty(), "measure_latency: one entry per model needed");
  check(opt.latency_batch > 0 && opt.latency_runs > 0 && opt.latency_batch_runs > 0,
        "portfolio: latency batch and run counts must be positive");
  const size_t n = models.size();
  Rng rng(0x4C4154 /* "LAT" */);
  const Tensor x1 = random_input(1, models[0]->input_shape(), rng);                  // (1, C, H, W)
  const Tensor xb = random_input(opt.latency_batch, models[0]->input_shape(), rng);  // (B, C, H, W)
  // Round-robin: call r of every variant before call r + 1 of any, so a change in the machine's
  // load (other processes, frequency) affects every variant alike.
  auto run = [&](const Tensor& x, int warmup, int runs, double VariantInfo::*p50, double VariantInfo::*p99) {
    for (int w = 0; w < warmup; ++w)
      for (const Model* m : models) infer(*m, x);
    std::vector<std::vector<double>> t(n);
    for (int r = 0; r < runs; ++r)
      for (size_t i = 0; i < n; ++i) {
        auto t0 = Clock::now();
        infer(*models[i], x);
        t[i].push_back(ms_since(t0));
      }
    for (size_t i = 0; i < n; ++i) {
      infos[i].*p50 = nearest_rank_percentile(t[i], 0.5);
      infos[i].*p99 = nearest_rank_percentile(t[i], 0.99);
    }
  };
  run(x1, 3, opt.latency_runs, &VariantInfo::latency_ms_p50_b1, &VariantInfo::latency_ms_p99_b1);
  run(xb, 1, opt.latency_batch_runs, &VariantInfo::latency_ms_p50_batch, &VariantInfo::latency_ms_p99_batch);
}

Portfolio build_portfolio(const std::string& run_dir, const std::string& out_dir, BatchSource& test,
                          const PortfolioOptions& opt) {
  std::vector<ImpLevel> levels = list_imp_levels(run_dir, opt.chain);
  std::vector<int> chosen = opt.levels.empty() ? default_portfolio_levels(levels) : opt.levels;
  check(!chosen.empty(), run_dir + ": no level chosen for the portfolio");
  std::string available;
  for (const ImpLevel& l : levels) {
    if (!available.empty()) available += ',';
    available += std::to_string(l.level);
  }
  std::set<int> seen;
  for (int L : chosen) {
    check(seen.insert(L).second, "portfolio: level " + std::to_string(L) + " is listed twice");
    bool found = std::any_of(levels.begin(), levels.end(), [&](const ImpLevel& l) { return l.level == L; });
    check(found, run_dir + ": level " + std::to_string(L) + " is not a finished level of the " + opt.chain +
                     " chain (finished: " + available + ")");
  }
  // Built in a staging folder and moved in once every variant is verified and measured: a build
  // that fails (a damaged level, an inexact compaction, an interruption) leaves the portfolio
  // already in out_dir as it was.
  const std::string stage = out_dir + "/.building";
  std::error_code ec;
  std::filesystem::remove_all(stage, ec);  // left by an interrupted build
  make_dirs(stage);

  Portfolio p;
  p.source_run = run_dir;
  p.latency_batch = opt.latency_batch;
  p.normalize_mean = opt.normalize_mean;
  p.normalize_std = opt.normalize_std;
  p.data = opt.data;
  p.machine = cpu_model_name();
  p.threads = num_threads();
  for (int L : chosen) {
    const ImpLevel& lv = *std::find_if(levels.begin(), levels.end(), [&](const ImpLevel& l) { return l.level == L; });
    Model masked = Model::load(lv.dir + "/model.dnns");
    if (p.variants.empty()) {
      p.arch = masked.arch;
      p.input_shape = masked.input_shape();
      p.dense_params = masked.num_params();
      p.num_classes = static_cast<int>(masked.infer_shapes(1)[masked.output_node()].back());
      check(p.normalize_mean.size() == static_cast<size_t>(p.input_shape[0]) &&
                p.normalize_std.size() == p.normalize_mean.size(),
            "portfolio: the input normalisation needs one mean and one std per input channel (" +
                std::to_string(p.input_shape[0]) + ")");
    }
    check(masked.num_params() == p.dense_params && masked.input_shape() == p.input_shape,
          lv.dir + "/model.dnns: another network than level " + std::to_string(chosen.front()));
    VariantInfo v = make_variant(masked, "level_" + std::to_string(L), L, test, stage, opt);
    v.imp_accuracy = lv.record.test_accuracy;
    p.variants.push_back(std::move(v));
  }
  // Latency last, from the saved files, every variant measured in the same stretch of time.
  std::vector<Model> compact;
  std::vector<const Model*> ptrs;
  for (const VariantInfo& v : p.variants) compact.push_back(Model::load(stage + "/" + v.file));
  p.execution = execution_name(opt.execution);
  for (size_t i = 0; i < compact.size(); ++i) {
    ExecutionPlan plan = plan_execution(compact[i], opt.execution, {1, opt.latency_batch});
    // As the shifter holds the variant ready (prune/shifter.cpp): one form per layer where the
    // plan allows it.
    settle_sparse_plans(compact[i], &plan);
    VariantInfo& v = p.variants[i];
    v.planned_layers = static_cast<int>(plan.layers.size() / (opt.latency_batch == 1 ? 1 : 2));
    v.sparse_layers_b1 = plan.sparse_layers(1);
    v.sparse_layers_batch = plan.sparse_layers(opt.latency_batch);
    // Memory as the shifter holds the variant ready: the dense weights of the layers that run
    // sparse at both batches released, the plan's sparse copies counted.
    compact[i].release_dense_weights();
    v.memory_bytes_b1 = inference_memory(compact[i], 1).total();
    v.memory_bytes_batch = inference_memory(compact[i], opt.latency_batch).total();
    if (opt.progress)
      std::fprintf(stderr,
                   "portfolio: %-9s execution %s: %d of %d conv/linear layers sparse at batch 1, %d at batch %lld; "
                   "%d hold only their sparse form; memory %.2f MB at batch 1\n",
                   v.name.c_str(), p.execution.c_str(), v.sparse_layers_b1, v.planned_layers, v.sparse_layers_batch,
                   (long long)opt.latency_batch, compact[i].released_weights(), v.memory_bytes_b1 / 1e6);
  }
  for (const Model& m : compact) ptrs.push_back(&m);
  if (opt.progress)
    std::fprintf(stderr, "portfolio: timing %zu variants, %d calls at batch 1 and %d at batch %lld each, interleaved\n",
                 ptrs.size(), opt.latency_runs, opt.latency_batch_runs, (long long)opt.latency_batch);
  measure_latency(ptrs, p.variants, opt);
  // Moved in: the old manifest goes first, so no manifest ever lists a file that is not its own.
  std::remove((out_dir + "/manifest.json").c_str());
  for (const VariantInfo& v : p.variants) {
    std::filesystem::rename(stage + "/" + v.file, out_dir + "/" + v.file, ec);
    check(!ec, out_dir + "/" + v.file + ": cannot move the new variant in from " + stage + " (" + ec.message() + ")");
  }
  write_text_atomic(out_dir + "/manifest.json", portfolio_manifest_json(p));
  std::filesystem::remove_all(stage, ec);
  return p;
}

std::string portfolio_table(const Portfolio& p) {
  std::ostringstream os;
  char buf[512];
  os << "| # | variant | params | compression | MFLOPs | accuracy | p50 / p99 ms (batch 1) | p50 / p99 ms (batch "
     << p.latency_batch << ") | sparse layers (batch 1 / " << p.latency_batch
     << ") | memory MB (batch 1) | file MB |\n";
  os << "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
  for (size_t i = 0; i < p.variants.size(); ++i) {
    const VariantInfo& v = p.variants[i];
    char sparse[64] = "not recorded";
    if (v.planned_layers >= 0)
      std::snprintf(sparse, sizeof sparse, "%d / %d of %d", v.sparse_layers_b1, v.sparse_layers_batch, v.planned_layers);
    std::snprintf(buf, sizeof buf, "| %zu | %s | %lld | %.2fx | %.2f | %.2f%% | %.3f / %.3f | %.3f / %.3f | %s | %.3f | %.3f |\n",
                  i, v.name.c_str(), (long long)v.params, v.compression, v.flops / 1e6, 100.0 * v.accuracy,
                  v.latency_ms_p50_b1, v.latency_ms_p99_b1, v.latency_ms_p50_batch, v.latency_ms_p99_batch, sparse,
                  v.memory_bytes_b1 / 1e6, v.file_bytes / 1e6);
    os << buf;
  }
  return os.str();
}

}  // namespace dnns
