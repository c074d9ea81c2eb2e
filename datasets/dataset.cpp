// Dataset's own methods, the synthetic set and the --data dispatcher.
#include "datasets/dataset.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <numeric>

#include "core/error.h"
#include "core/rng.h"

namespace fs = std::filesystem;

namespace dnns {

void Dataset::validate() const {
  const std::string who = "data set '" + name + "'";
  check(channels > 0 && height > 0 && width > 0,
        who + ": image size must be positive, got " + std::to_string(channels) + "x" +
            std::to_string(height) + "x" + std::to_string(width));
  check(num_classes > 0, who + ": num_classes must be positive, got " + std::to_string(num_classes));
  check(class_names.empty() || static_cast<int>(class_names.size()) == num_classes,
        who + ": " + std::to_string(class_names.size()) + " class names for " +
            std::to_string(num_classes) + " classes");
  check(static_cast<int64_t>(pixels.size()) == size() * image_bytes(),
        who + ": " + std::to_string(pixels.size()) + " pixel bytes for " + std::to_string(size()) +
            " images of " + std::to_string(image_bytes()) + " bytes");
  for (int64_t i = 0; i < size(); ++i)
    check(labels[i] >= 0 && labels[i] < num_classes,
          who + ": label " + std::to_string(labels[i]) + " of example " + std::to_string(i) +
              " is outside [0, " + std::to_string(num_classes) + ")");
}

std::vector<int64_t> Dataset::class_counts() const {
  std::vector<int64_t> counts(num_classes, 0);
  for (int32_t l : labels)
    if (l >= 0 && l < num_classes) ++counts[l];
  return counts;
}

Dataset Dataset::take(const std::vector<int64_t>& indices) const {
  Dataset out;
  out.name = name;
  out.channels = channels;
  out.height = height;
  out.width = width;
  out.num_classes = num_classes;
  out.class_names = class_names;
  const int64_t ib = image_bytes();
  out.pixels.resize(indices.size() * ib);
  out.labels.resize(indices.size());
  for (size_t k = 0; k < indices.size(); ++k) {
    const int64_t i = indices[k];
    check(i >= 0 && i < size(), "data set '" + name + "': subset index " + std::to_string(i) +
                                    " is outside [0, " + std::to_string(size()) + ")");
    std::copy(image(i), image(i) + ib, out.pixels.begin() + k * ib);
    out.labels[k] = labels[i];
  }
  return out;
}

Dataset Dataset::first_per_class(int64_t n) const {
  check(n >= 0, "first_per_class: n must be >= 0, got " + std::to_string(n));
  std::vector<int64_t> seen(num_classes, 0), keep;
  for (int64_t i = 0; i < size(); ++i) {
    const int32_t l = labels[i];
    if (l >= 0 && l < num_classes && seen[l] < n) {
      ++seen[l];
      keep.push_back(i);
    }
  }
  Dataset out = take(keep);
  out.name = name + "[first " + std::to_string(n) + "/class]";
  return out;
}

Dataset Dataset::sample(int64_t n, uint64_t seed) const {
  check(n >= 0 && n <= size(), "data set '" + name + "': cannot sample " + std::to_string(n) +
                                   " of " + std::to_string(size()) + " examples");
  // Partial Fisher-Yates: the first n slots become a uniform sample without replacement.
  std::vector<int64_t> idx(size());
  std::iota(idx.begin(), idx.end(), 0);
  Rng rng(mix_seed(seed, 0x5a3b1e));
  for (int64_t i = 0; i < n; ++i) {
    const int64_t j = i + static_cast<int64_t>(rng.below(static_cast<uint32_t>(size() - i)));
    std::swap(idx[i], idx[j]);
  }
  idx.resize(n);
  std::sort(idx.begin(), idx.end());
  Dataset out = take(idx);
  out.name = name + "[sample " + std::to_string(n) + " seed " + std::to_string(seed) + "]";
  return out;
}

Dataset make_synthetic(const SyntheticSpec& spec) {
  check(spec.num_examples > 0 && spec.num_classes > 0 && spec.channels > 0 && spec.height > 0 &&
            spec.width > 0,
        "make_synthetic: sizes must be positive (examples " + std::to_string(spec.num_examples) +
            ", classes " + std::to_string(spec.num_classes) + ", image " +
            std::to_string(spec.channels) + "x" + std::to_string(spec.height) + "x" +
            std::to_string(spec.width) + ")");
  check(spec.noise >= 0.0f, "make_synthetic: noise must be >= 0");
  const int K = spec.num_classes, C = spec.channels, H = spec.height, W = spec.width;

  // Per class: a colour and a centre (fractions of the image), drawn once from the seed.
  std::vector<float> colour(size_t(K) * C), cy(K), cx(K);
  Rng class_rng(mix_seed(spec.seed, 0xc1a55));
  for (int k = 0; k < K; ++k) {
    for (int c = 0; c < C; ++c) colour[size_t(k) * C + c] = class_rng.uniform(0.0f, 1.0f);
    cy[k] = class_rng.uniform(0.3f, 0.7f);
    cx[k] = class_rng.uniform(0.3f, 0.7f);
  }

  Dataset d;
  d.name = "synthetic(seed " + std::to_string(spec.seed) + ")";
  d.channels = C;
  d.height = H;
  d.width = W;
  d.num_classes = K;
  for (int k = 0; k < K; ++k) d.class_names.push_back("class" + std::to_string(k));
  d.labels.resize(spec.num_examples);
  d.pixels.resize(spec.num_examples * d.image_bytes());

  for (int64_t i = 0; i < spec.num_examples; ++i) {
    const int k = static_cast<int>(i % K);
    d.labels[i] = k;
    // Each example has its own stream, so the set is the same however it is generated.
    Rng rng(mix_seed(spec.seed, 0xe8a3, spec.split, static_cast<uint64_t>(i)));
    const float y0 = (cy[k] + rng.uniform(-0.15f, 0.15f)) * H;
    const float x0 = (cx[k] + rng.uniform(-0.15f, 0.15f)) * W;
    const float radius = rng.uniform(0.18f, 0.3f) * std::min(H, W);
    const float brightness = rng.uniform(0.7f, 1.1f);
    const float background = rng.uniform(0.3f, 0.6f);
    uint8_t* img = d.pixels.data() + i * d.image_bytes();  // (C, H, W)
    for (int y = 0; y < H; ++y)
      for (int x = 0; x < W; ++x) {
        const float r2 = ((y - y0) * (y - y0) + (x - x0) * (x - x0)) / (radius * radius);
        const float weight = std::exp(-r2 * r2);  // soft-edged disc
        for (int c = 0; c < C; ++c) {
          float v = weight * colour[size_t(k) * C + c] * brightness + (1.0f - weight) * background;
          v += spec.noise * rng.normal();
          img[(size_t(c) * H + y) * W + x] =
              static_cast<uint8_t>(std::lround(std::clamp(v, 0.0f, 1.0f) * 255.0f));
        }
      }
  }
  return d;
}

// ---- load_dataset --------------------------------------------------------------------------

static bool has_file(const fs::path& dir, const char* name) {
  std::error_code ec;
  return fs::is_regular_file(dir / name, ec);
}

static bool has_dir(const fs::path& dir, const char* name) {
  std::error_code ec;
  return fs::is_directory(dir / name, ec);
}

// "<dir>/<stem>" or "<dir>/<stem>.gz", whichever exists ("" if neither).
static std::string plain_or_gz(const fs::path& dir, const std::string& stem) {
  if (has_file(dir, stem.c_str())) return (dir / stem).string();
  if (has_file(dir, (stem + ".gz").c_str())) return (dir / (stem + ".gz")).string();
  return "";
}

static Dataset load_directory(const fs::path& dir, bool train, const DatasetOptions& o) {
  if (has_file(dir, "data_batch_1.bin") || has_file(dir, "test_batch.bin"))
    return load_cifar10_binary(dir.string(), train);
  if (has_file(dir, "train.bin") || has_file(dir, "test.bin"))
    return load_cifar100_binary(dir.string(), train, o.cifar100_coarse);
  if (has_dir(dir, "cifar-10-batches-bin")) return load_directory(dir / "cifar-10-batches-bin", train, o);
  if (has_dir(dir, "cifar-100-binary")) return load_directory(dir / "cifar-100-binary", train, o);
  if (has_dir(dir, "train") && has_dir(dir, "test")) {
    return load_image_folder((dir / (train ? "train" : "test")).string(), o.height, o.width,
                             o.channels, o.image_folder);
  }
  const std::string prefix = train ? "train" : "t10k";
  const std::string images = plain_or_gz(dir, prefix + "-images-idx3-ubyte");
  if (!images.empty()) {
    const std::string labels = plain_or_gz(dir, prefix + "-labels-idx1-ubyte");
    check(!labels.empty(), "--data " + dir.string() + ": found " + images + " but no " + prefix +
                               "-labels-idx1-ubyte[.gz] beside it");
    return load_idx(images, labels);
  }
  throw Error("--data " + dir.string() +
              ": not a recognised data set folder (expected CIFAR-10 data_batch_1.bin/test_batch.bin, "
              "CIFAR-100 train.bin/test.bin, train/ and test/ folders of class folders, or "
              "{train,t10k}-images-idx3-ubyte[.gz] IDX files)");
}

Dataset load_dataset(const std::string& spec, bool train, const DatasetOptions& options) {
  if (spec == "synthetic") {
    SyntheticSpec s = options.synthetic;
    if (!train) {  // same classes, other examples
      s.num_examples = options.synthetic_test_examples;
      s.split = s.split + 1;
    }
    Dataset d = make_synthetic(s);
    d.name += train ? ":train" : ":test";
    return d;
  }
  if (spec == "fashion-mnist") return load_fashion_mnist(kFashionMnistDir, train);
  std::error_code ec;
  check(fs::is_directory(spec, ec), "--data " + spec +
                                        ": no such folder (give a data set folder, "
                                        "'fashion-mnist' or 'synthetic')");
  return load_directory(fs::path(spec), train, options);
}

}  // namespace dnns
