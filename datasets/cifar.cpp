// CIFAR-10 and CIFAR-100 in the official binary releases.
#include <filesystem>

#include "core/error.h"
#include "datasets/dataset.h"
#include "datasets/io.h"

namespace fs = std::filesystem;

namespace dnns {

static constexpr int kCifarSide = 32;
static constexpr int kCifarPixels = 3 * kCifarSide * kCifarSide;  // 3072: R, G, B planes

const std::vector<std::string>& cifar10_class_names() {
  static const std::vector<std::string> names = {"airplane", "automobile", "bird",  "cat",  "deer",
                                                 "dog",      "frog",       "horse", "ship", "truck"};
  return names;
}

const std::vector<std::string>& cifar100_class_names(bool coarse) {
  static const std::vector<std::string> fine = {
      "apple",      "aquarium_fish", "baby",         "bear",       "beaver",      "bed",
      "bee",        "beetle",        "bicycle",      "bottle",     "bowl",        "boy",
      "bridge",     "bus",           "butterfly",    "camel",      "can",         "castle",
      "caterpillar", "cattle",       "chair",        "chimpanzee", "clock",       "cloud",
      "cockroach",  "couch",         "crab",         "crocodile",  "cup",         "dinosaur",
      "dolphin",    "elephant",      "flatfish",     "forest",     "fox",         "girl",
      "hamster",    "house",         "kangaroo",     "keyboard",   "lamp",        "lawn_mower",
      "leopard",    "lion",          "lizard",       "lobster",    "man",         "maple_tree",
      "motorcycle", "mountain",      "mouse",        "mushroom",   "oak_tree",    "orange",
      "orchid",     "otter",         "palm_tree",    "pear",       "pickup_truck", "pine_tree",
      "plain",      "plate",         "poppy",        "porcupine",  "possum",      "rabbit",
      "raccoon",    "ray",           "road",         "rocket",     "rose",        "sea",
      "seal",       "shark",         "shrew",        "skunk",      "skyscraper",  "snail",
      "snake",      "spider",        "squirrel",     "streetcar",  "sunflower",   "sweet_pepper",
      "table",      "tank",          "telephone",    "television", "tiger",       "tractor",
      "train",      "trout",         "tulip",        "turtle",     "wardrobe",    "whale",
      "willow_tree", "wolf",         "woman",        "worm"};
  static const std::vector<std::string> superclasses = {
      "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
      "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
      "large_man-made_outdoor_things", "large_natural_outdoor_scenes",
      "large_omnivores_and_herbivores", "medium_mammals", "non-insect_invertebrates", "people",
      "reptiles", "small_mammals", "trees", "vehicles_1", "vehicles_2"};
  return coarse ? superclasses : fine;
}

// Appends the records of one file. A record is one label byte per entry of `label_limits`
// (each must be below its limit), then 3072 pixels; the label kept is byte `label_index`.
static void append_records(const std::string& path, const std::vector<int>& label_limits,
                           int label_index, Dataset& d) {
  std::error_code ec;
  check(fs::is_regular_file(path, ec), path + ": missing (expected a CIFAR binary batch file)");
  const std::vector<uint8_t> bytes = detail::read_file(path);
  const size_t label_bytes = label_limits.size();
  const size_t record = label_bytes + kCifarPixels;
  check(!bytes.empty(), path + ": empty file");
  check(bytes.size() % record == 0,
        path + ": size " + std::to_string(bytes.size()) + " bytes is not a multiple of the " +
            std::to_string(record) + "-byte record (truncated or not a CIFAR" +
            (label_bytes == 1 ? "-10" : "-100") + " binary file)");
  const size_t n = bytes.size() / record;
  const size_t first = d.labels.size();
  d.labels.resize(first + n);
  d.pixels.resize((first + n) * kCifarPixels);
  for (size_t r = 0; r < n; ++r) {
    const uint8_t* rec = bytes.data() + r * record;
    for (size_t j = 0; j < label_bytes; ++j)
      check(rec[j] < label_limits[j],
            path + ": record " + std::to_string(r) + " has " +
                (label_bytes == 1 ? std::string("label ") : j == 0 ? "coarse label " : "fine label ") +
                std::to_string(rec[j]) + ", expected < " + std::to_string(label_limits[j]));
    d.labels[first + r] = rec[label_index];
    // The file's layout (R, G, B planes of 32x32) is already our (C, H, W).
    std::copy(rec + label_bytes, rec + record, d.pixels.begin() + (first + r) * kCifarPixels);
  }
}

static Dataset cifar_shell(const std::string& name, const std::vector<std::string>& classes) {
  Dataset d;
  d.name = name;
  d.channels = 3;
  d.height = kCifarSide;
  d.width = kCifarSide;
  d.num_classes = static_cast<int>(classes.size());
  d.class_names = classes;
  return d;
}

Dataset load_cifar10_binary(const std::string& dir, bool train) {
  std::error_code ec;
  check(fs::is_directory(dir, ec), dir + ": CIFAR-10 folder not found");
  Dataset d = cifar_shell(std::string("cifar10:") + (train ? "train" : "test"), cifar10_class_names());
  if (train) {
    for (int b = 1; b <= 5; ++b)
      append_records((fs::path(dir) / ("data_batch_" + std::to_string(b) + ".bin")).string(), {10},
                     0, d);
  } else {
    append_records((fs::path(dir) / "test_batch.bin").string(), {10}, 0, d);
  }
  return d;
}

Dataset load_cifar100_binary(const std::string& dir, bool train, bool coarse) {
  std::error_code ec;
  check(fs::is_directory(dir, ec), dir + ": CIFAR-100 folder not found");
  const auto& classes = cifar100_class_names(coarse);
  Dataset d = cifar_shell(std::string(coarse ? "cifar100-coarse:" : "cifar100:") +
                              (train ? "train" : "test"),
                          classes);
  append_records((fs::path(dir) / (train ? "train.bin" : "test.bin")).string(), {20, 100},
                 coarse ? 0 : 1, d);
  return d;
}

}  // namespace dnns
