// cifar_prune eval MODEL: accuracy, loss, per-class accuracy and the confusion matrix of a
// model file (masked, compact or imported) on a data set, with the throughput of the pass.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <sstream>

#include "apps/cifar_prune/commands.h"
#include "apps/cifar_prune/common.h"
#include "core/error.h"
#include "core/fs.h"
#include "core/json.h"
#include "core/threading.h"
#include "nn/execution.h"
#include "prune/report.h"

namespace dnns::app {

namespace {

// "| true \ predicted | a | b |" rows: counts, true classes down, predicted across.
std::string confusion_markdown(const std::vector<int64_t>& cm, const std::vector<std::string>& names) {
  const size_t K = names.size();
  auto cell = [](std::string s) {  // a '|' would end the cell
    for (char& c : s)
      if (c == '|') c = '/';
    return s;
  };
  std::ostringstream os;
  os << "| true \\ predicted |";
  for (const std::string& n : names) os << " " << cell(n) << " |";
  os << " accuracy |\n|---|";
  for (size_t k = 0; k <= K; ++k) os << "---:|";
  os << "\n";
  for (size_t t = 0; t < K; ++t) {
    int64_t row = 0;
    os << "| **" << cell(names[t]) << "** |";
    for (size_t p = 0; p < K; ++p) os << " " << cm[t * K + p] << " |", row += cm[t * K + p];
    char acc[32];
    if (row)
      std::snprintf(acc, sizeof acc, "%.2f%%", 100.0 * double(cm[t * K + t]) / double(row));
    else
      std::snprintf(acc, sizeof acc, "-");
    os << " " << acc << " |\n";
  }
  return os.str();
}

}  // namespace

int cmd_eval(int argc, char** argv) {
  Flags f("cifar_prune eval MODEL",
          "Evaluates a model file (from train, imp, compact, portfolio or import) on a data set: accuracy,\n"
          "mean loss, per-class accuracy, the confusion matrix and images/s of the pass (eval mode).\n"
          "The input is normalised with the mean/std the model file records (what training used); a\n"
          "file without them (older versions) gets the statistics of --data's training split, as\n"
          "training computes them, and eval says so; --mean/--std override both (a model trained\n"
          "elsewhere). Image folders are read at the model's input size. A data set with some of the\n"
          "model's classes only (a test/ folder lacking one) has its labels mapped to the model's by name.\n"
          "--out writes eval.json, confusion.md and confusion.svg (a heat map, rows = true classes,\n"
          "shaded by the share of the row).");
  f.add("data", "", "data set (as for train); default: the one the model file records");
  f.add("split", "test", "which split: test or train");
  f.add("subset", "0",
        "evaluate only this many examples (0 = all), drawn as train's --test-subset/--train-subset with --seed");
  f.add("batch-size", "256", "images per forward pass");
  f.add("out", "", "folder for eval.json, confusion.md and confusion.svg ('' = none)");
  f.add_bool("json", "print the results as one JSON object on stdout (progress and notes stay on stderr)");
  f.add("execution", "auto",
        "conv/linear layers: dense, sparse, or auto (per layer, whichever measures faster at --batch-size)");
  add_normalization_flags(f);
  add_system_flags(f);
  if (!f.parse(argc, argv, 1, 1)) return 0;
  check(f.positional().size() == 1, "cifar_prune eval: give one model file (see --help)");
  Device dev = setup_system(f);
  const std::string path = f.positional()[0];
  const std::string split = f.str("split");
  check(split == "test" || split == "train", "--split must be test or train, got '" + split + "'");
  const int64_t batch = f.integer("batch-size"), subset = f.integer("subset");
  check(batch > 0, "--batch-size must be positive");
  check(subset >= 0, "--subset must be >= 0");
  const Execution execution = parse_execution(f.str("execution"));

  Model model = Model::load(path);
  const DataInfo& info = model.data_info;
  std::string spec = f.str("data");
  if (spec.empty()) {
    check(!info.dataset.empty(), path + ": the model file records no data set; give --data");
    spec = info.dataset;
  }
  const Shape in = model.input_shape();  // (C, H, W)
  const int64_t K = model.infer_shapes(1)[model.output_node()].back();

  DatasetOptions dopt;
  dopt.channels = static_cast<int>(in[0]);
  dopt.height = static_cast<int>(in[1]);
  dopt.width = static_cast<int>(in[2]);
  const bool train_split = split == "train";
  Dataset data = load_dataset(spec, train_split, dopt);
  const uint64_t seed = static_cast<uint64_t>(f.integer("seed"));
  if (subset > 0 && subset < data.size()) data = data.sample(subset, train_split ? seed : seed + 1);
  check(data.channels == in[0] && data.height == in[1] && data.width == in[2],
        spec + ": images are " + std::to_string(data.channels) + "x" + std::to_string(data.height) + "x" +
            std::to_string(data.width) + ", the model " + path + " takes " + shape_str(in));
  check(data.num_classes <= K, spec + ": " + std::to_string(data.num_classes) + " classes, the model " + path +
                                   " has only " + std::to_string(K) + " outputs");

  LoaderOptions lo;
  lo.batch_size = batch;
  lo.shuffle = false;
  lo.augment = false;
  const InputNormalization norm = input_normalization(f, model, spec, dopt, train_split ? &data : nullptr);
  lo.normalize = norm.stats;
  const std::string normalization = norm.source;
  if (norm.assumed) std::fprintf(stderr, "note: %s: input normalisation %s\n", path.c_str(), norm.source.c_str());
  // Class names: the model's; else the data set's; else indices.
  std::vector<std::string> names = info.class_names;
  if (names.empty()) {
    for (int64_t k = 0; k < K; ++k)
      names.push_back(k < static_cast<int64_t>(data.class_names.size()) ? data.class_names[k] : std::to_string(k));
  } else if (!data.class_names.empty() &&
             !std::equal(data.class_names.begin(), data.class_names.end(), names.begin())) {
    // A split with some of the model's classes only (a test/ folder without one class folder)
    // numbers them from 0 in its own list: its labels are mapped to the model's classes by name.
    std::vector<int32_t> to_model;
    for (const std::string& name : data.class_names) {
      const auto it = std::find(names.begin(), names.end(), name);
      if (it == names.end()) break;
      to_model.push_back(static_cast<int32_t>(it - names.begin()));
    }
    if (to_model.size() == data.class_names.size()) {
      for (int32_t& label : data.labels) label = to_model[static_cast<size_t>(label)];
      data.num_classes = static_cast<int>(K);
      data.class_names = names;
      std::fprintf(stderr, "note: %s holds %zu of the model's %lld classes: its labels are mapped to the model's "
                           "classes by name\n", spec.c_str(), to_model.size(), (long long)K);
    } else {
      std::fprintf(stderr, "note: the class names of %s differ from the model's (its labels are taken as the model's "
                           "class indices)\n", spec.c_str());
    }
  }
  const std::string data_name = data.name;
  const int64_t n = data.size();
  Loader loader(std::move(data), lo);
  model.to(dev);
  plan_execution(model, execution, {batch});

  std::vector<int64_t> cm;  // (K, K) true x predicted
  auto t0 = std::chrono::steady_clock::now();
  EvalStats st = evaluate(model, loader, 0.0f, &cm);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  check(st.examples == n, "eval: evaluated " + std::to_string(st.examples) + " of " + std::to_string(n) + " images");
  const double ips = n / std::max(seconds, 1e-9);

  std::vector<int64_t> per_count(K, 0), per_correct(K, 0);
  std::vector<double> per_acc(K, 0);
  for (int64_t t = 0; t < K; ++t) {
    for (int64_t p = 0; p < K; ++p) per_count[t] += cm[t * K + p];
    per_correct[t] = cm[t * K + t];
    per_acc[t] = per_count[t] ? double(per_correct[t]) / double(per_count[t]) : 0.0;
  }

  const std::string names_json = json_strings(names);
  std::string counts_json = "[", correct_json = "[", cm_json = "[";
  for (int64_t k = 0; k < K; ++k) {
    counts_json += k ? "," : "";
    counts_json += std::to_string(per_count[k]);
    correct_json += k ? "," : "";
    correct_json += std::to_string(per_correct[k]);
    cm_json += k ? ",[" : "[";
    for (int64_t p = 0; p < K; ++p) {
      cm_json += p ? "," : "";
      cm_json += std::to_string(cm[k * K + p]);
    }
    cm_json += "]";
  }
  counts_json += "]", correct_json += "]", cm_json += "]";
  const std::string json = Json()
                               .add("model", path)
                               .add("arch", model.arch)
                               .add("parameters", model.num_params())
                               .add("data", spec)
                               .add("split", split)
                               .add("examples", st.examples)
                               .add("correct", st.correct)
                               .add("accuracy", st.accuracy)
                               .add("loss", st.loss)
                               .add("seconds", seconds)
                               .add("images_per_sec", ips)
                               .add("batch_size", batch)
                               .add("threads", static_cast<int64_t>(num_threads()))
                               .add("device", device_name(dev))
                               .add("normalization", normalization)
                               .add_raw("classes", names_json)
                               .add_raw("per_class_examples", counts_json)
                               .add_raw("per_class_correct", correct_json)
                               .add("per_class_accuracy", per_acc)
                               .add_raw("confusion", cm_json)
                               .str();
  const std::string md = confusion_markdown(cm, names);

  if (!f.str("out").empty()) {
    const std::string out = f.str("out");
    make_dirs(out);
    write_text_atomic(out + "/eval.json", json + "\n");
    std::ostringstream doc;
    char head[256];
    std::snprintf(head, sizeof head, "accuracy %.2f%% (%lld of %lld), mean loss %.4f\n\n", 100 * st.accuracy,
                  (long long)st.correct, (long long)st.examples, st.loss);
    doc << "# " << path << " on " << spec << " (" << split << ")\n\n" << head << md;
    write_text_atomic(out + "/confusion.md", doc.str());
    HeatMap hm;
    hm.title = "confusion matrix: " + model.arch + " on " + spec + " (" + split + ")";
    hm.x_label = "predicted class";
    hm.y_label = "true class";
    hm.row_labels = hm.col_labels = names;
    for (int64_t t = 0; t < K; ++t)
      for (int64_t p = 0; p < K; ++p) {
        hm.shade.push_back(per_count[t] ? double(cm[t * K + p]) / double(per_count[t]) : 0.0);
        hm.text.push_back(std::to_string(cm[t * K + p]));
      }
    write_text_atomic(out + "/confusion.svg", render_heatmap_svg(hm));
  }

  if (f.flag("json")) {
    std::printf("%s\n", json.c_str());
    return 0;
  }
  std::printf("%s (%s, %lld parameters) on %s, %s split (%s): %lld images\n", path.c_str(), model.arch.c_str(),
              (long long)model.num_params(), spec.c_str(), split.c_str(), data_name.c_str(), (long long)n);
  std::printf("accuracy %.2f%% (%lld of %lld), mean loss %.4f, %.0f images/s (batch %lld, %d threads, %s)\n",
              100 * st.accuracy, (long long)st.correct, (long long)st.examples, st.loss, ips, (long long)batch,
              num_threads(), device_name(dev));
  std::printf("normalisation: %s\n\nper class:\n", normalization.c_str());
  for (int64_t k = 0; k < K; ++k)
    std::printf("  %-20s %7.2f%%  (%lld of %lld)\n", names[k].c_str(), 100 * per_acc[k], (long long)per_correct[k],
                (long long)per_count[k]);
  if (K <= 20)
    std::printf("\nconfusion matrix (rows: true class, columns: predicted):\n\n%s", md.c_str());
  else
    std::printf("\n(%lld classes: the confusion matrix is written with --out)\n", (long long)K);
  if (!f.str("out").empty())
    std::printf("\nwritten: %s/eval.json, confusion.md, confusion.svg\n", f.str("out").c_str());
  return 0;
}

}  // namespace dnns::app
