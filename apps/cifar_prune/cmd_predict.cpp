// cifar_prune predict MODEL IMAGE...: the top classes of each image, with probabilities.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>

#include "apps/cifar_prune/commands.h"
#include "apps/cifar_prune/common.h"
#include "core/error.h"
#include "core/json.h"
#include "core/threading.h"
#include "datasets/loader.h"
#include "nn/execution.h"

namespace dnns::app {

int cmd_predict(int argc, char** argv) {
  Flags f("cifar_prune predict MODEL IMAGE...",
          "Classifies image files (JPEG, PNG, BMP, GIF, TGA, PPM/PGM; read with stb_image) with a model file\n"
          "and prints the top classes with their softmax probabilities.\n"
          "Each image is prepared as training prepared its data: converted to the model's channels (RGB,\n"
          "or luminance for a 1-channel model, alpha dropped), resized to the model's input size the way\n"
          "the image-folder reader resizes (per axis: area average where the image shrinks, bilinear\n"
          "interpolation with half-pixel centres and clamped edges where it grows; the aspect ratio is\n"
          "not kept, nothing is cropped), then normalised as x = (pixel/255 - mean[c]) / std[c] with the\n"
          "mean/std the model file records. A file without them (written before they were recorded)\n"
          "gets, as in eval, the statistics of --data's training split (as `cifar_prune train` computes\n"
          "them); with no --data either, CIFAR-10's for RGB and Fashion-MNIST's for gray inputs (the same\n"
          "numbers for those data sets); and class indices instead of names; predict says so on stderr\n"
          "and in the JSON (\"assumed\"). --mean/--std give the normalisation of a model trained elsewhere.");
  f.add("top", "5", "how many classes to show per image (at most the model's classes)");
  f.add_bool("json", "print one JSON object on stdout: every image's top classes and all probabilities");
  f.add("data", "",
        "data set whose training split normalises the images when the model file records no normalisation "
        "(as for eval); default: the one the model file records");
  add_normalization_flags(f);
  add_system_flags(f);
  f.add("execution", "auto", "conv/linear layers: dense, sparse, or auto (per layer, whichever measures faster)");
  if (!f.parse(argc, argv, 1, 1 << 20)) return 0;
  check(f.positional().size() >= 2, "cifar_prune predict: give a model file and at least one image (see --help)");
  const Device dev = setup_system(f);
  const std::string path = f.positional()[0];
  const int64_t top_flag = f.integer("top");
  check(top_flag > 0, "--top must be positive, got " + std::to_string(top_flag));
  const Execution execution = parse_execution(f.str("execution"));

  Model model = Model::load(path);
  model.to(dev);
  plan_execution(model, execution, {1});  // one image per forward
  const DataInfo& info = model.data_info;
  const Shape in = model.input_shape();  // (C, H, W)
  const int C = static_cast<int>(in[0]), H = static_cast<int>(in[1]), W = static_cast<int>(in[2]);
  check(C == 1 || C == 3, path + ": predict reads images as RGB or gray; the model takes " + std::to_string(C) +
                              " channels");
  const int64_t K = model.infer_shapes(1)[model.output_node()].back();
  const int64_t top = std::min(top_flag, K);

  DatasetOptions dopt;
  dopt.channels = C, dopt.height = H, dopt.width = W;
  const InputNormalization norm = input_normalization(f, model, f.str("data").empty() ? info.dataset : f.str("data"), dopt);
  const ChannelStats& stats = norm.stats;
  std::vector<std::string> assumed;
  if (norm.assumed) assumed.push_back("input normalisation " + norm.source);
  std::vector<std::string> names = info.class_names;
  if (names.empty()) {
    for (int64_t k = 0; k < K; ++k) names.push_back(std::to_string(k));
    assumed.push_back("class names assumed: the model file records none; classes are shown by index");
  }
  for (const std::string& a : assumed) std::fprintf(stderr, "note: %s: %s\n", path.c_str(), a.c_str());

  std::string predictions = "[";
  for (size_t i = 1; i < f.positional().size(); ++i) {
    const std::string& image = f.positional()[i];
    // One image as a one-example data set through the training loader: the same normalisation.
    Dataset d;
    d.name = image;
    d.channels = C, d.height = H, d.width = W;
    d.num_classes = static_cast<int>(K);
    int ih = 0, iw = 0;
    d.pixels = load_image_file(image, C, H, W, &ih, &iw);  // (C, H, W)
    d.labels = {0};
    LoaderOptions lo;
    lo.batch_size = 1, lo.shuffle = false, lo.augment = false, lo.prefetch = 0, lo.normalize = stats;
    Loader loader(std::move(d), lo);
    Batch b;
    loader.start_epoch(0);
    check(loader.next(b), image + ": no batch");
    Tensor logits = model.forward(b.images.to(dev), false).to(Device::CPU);  // (1, K)
    std::vector<double> prob(K);
    const double zmax = *std::max_element(logits.data(), logits.data() + K);
    double sum = 0;
    for (int64_t k = 0; k < K; ++k) sum += prob[k] = std::exp(double(logits[k]) - zmax);
    for (double& p : prob) p /= sum;
    std::vector<int64_t> order(K);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t c) { return prob[a] > prob[c]; });

    if (f.flag("json")) {
      std::string tops = "[";
      for (int64_t r = 0; r < top; ++r) {
        tops += r ? "," : "";
        tops += Json().add("class", order[r]).add("name", names[order[r]]).add("probability", prob[order[r]]).str();
      }
      tops += "]";
      predictions += i > 1 ? "," : "";
      predictions += Json()
                         .add("image", image)
                         .add("width", iw)
                         .add("height", ih)
                         .add_raw("top", tops)
                         .add("probabilities", prob)
                         .str();
    } else {
      std::printf("%s (%dx%d%s):\n", image.c_str(), iw, ih,
                  iw == W && ih == H ? "" : (", resized to " + std::to_string(W) + "x" + std::to_string(H)).c_str());
      for (int64_t r = 0; r < top; ++r)
        std::printf("  %2lld. %-20s %7.3f%%\n", (long long)r + 1, names[order[r]].c_str(), 100 * prob[order[r]]);
    }
  }
  predictions += "]";
  if (f.flag("json")) {
    std::printf("%s\n", Json()
                            .add("model", path)
                            .add("arch", model.arch)
                            .add("dataset", info.dataset)
                            .add("input", shape_str(in))
                            .add_raw("classes", json_strings(names))
                            .add_raw("assumed", json_strings(assumed))
                            .add_raw("predictions", predictions)
                            .str()
                            .c_str());
  }
  return 0;
}

}  // namespace dnns::app
