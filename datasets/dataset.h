// In-memory image classification data sets and the readers that fill them.
//
// A Dataset holds raw uint8 pixels (N, C, H, W) and int32 labels (N): the loader
// (datasets/loader.h) turns them into normalised float batches. Every reader validates what
// it reads and throws dnns::Error naming the offending file and the problem.
//
// Formats:
//   - CIFAR-10 binary   (cifar-10-batches-bin/: data_batch_1..5.bin, test_batch.bin)
//   - CIFAR-100 binary  (cifar-100-binary/: train.bin, test.bin)
//   - image folders     (<dir>/<class>/<image>.{jpg,jpeg,png,bmp,gif,tga,ppm,pgm}) decoded
//                       with stb_image, cached decoded in a binary file
//   - IDX               (MNIST-style, plain or gzip), e.g. Fashion-MNIST
//   - synthetic         (seeded blobs of colour, for tests)
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace dnns {

struct Dataset {
  std::string name;                     // e.g. "cifar10-jpeg:train"
  int channels = 0, height = 0, width = 0;
  int num_classes = 0;
  std::vector<std::string> class_names;  // (num_classes)
  std::vector<uint8_t> pixels;           // (N, C, H, W) raw 0..255
  std::vector<int32_t> labels;           // (N) in [0, num_classes)

  int64_t size() const { return static_cast<int64_t>(labels.size()); }
  int64_t image_bytes() const { return int64_t(channels) * height * width;  }
  const uint8_t* image(int64_t i) const { return pixels.data() + i * image_bytes(); }

  // Throws Error (naming the data set) unless the fields agree with each other: positive
  // dimensions, pixels.size() == N*C*H*W, labels in range, class_names empty or num_classes long.
  void validate() const;
  std::vector<int64_t> class_counts() const;  // (num_classes) examples of each class

  // Deterministic subsets; examples keep their relative order.
  Dataset take(const std::vector<int64_t>& indices) const;  // these examples, in this order
  Dataset first_per_class(int64_t n) const;  // the first n examples of every class
  Dataset sample(int64_t n, uint64_t seed) const;  // n examples drawn without replacement
};

// ---- CIFAR -------------------------------------------------------------------------------
// `dir` holds the official binary release. Train = data_batch_1..5.bin (all five required),
// test = test_batch.bin. Record: 1 label byte + 3072 pixel bytes (R, G, B planes of 32x32).
Dataset load_cifar10_binary(const std::string& dir, bool train);
// `dir` holds train.bin / test.bin. Record: coarse label byte, fine label byte, 3072 pixel
// bytes. `coarse` picks the 20 superclasses instead of the 100 classes.
Dataset load_cifar100_binary(const std::string& dir, bool train, bool coarse = false);
const std::vector<std::string>& cifar10_class_names();
const std::vector<std::string>& cifar100_class_names(bool coarse);

// ---- image folders -----------------------------------------------------------------------
struct ImageFolderOptions {
  // Where decoded sets are cached; "" = default_cache_dir(). Caching is an optimisation: a
  // cache that cannot be written or read is reported, never an error.
  std::string cache_dir;
  bool use_cache = true;
};

// What a load did (for tests, logs and progress lines).
struct ImageFolderReport {
  bool cache_hit = false;       // the set came from the cache file, nothing was decoded
  bool cache_written = false;   // a fresh cache file was written
  std::string cache_path;       // the cache file used or written ("" with use_cache off)
  std::string cache_problem;    // why an existing cache file was not used, or not written
  int64_t images_decoded = 0;
};

// One sub-folder per class, sorted by name (= label order); inside each, image files sorted
// by name. Hidden files and files without an image extension are ignored. Images of another
// size are resized to height x width (area average when shrinking, bilinear when growing);
// grayscale/RGB/RGBA are converted to `channels` (1 = luminance, 3 = RGB, alpha dropped).
// height = width = 0 takes the size of the first image. Decoding runs in parallel (oneTBB);
// the result does not depend on the thread count.
//
// Cache: <cache_dir>/<hash of folder path, size, channels>.dnnsimg, holding a fingerprint of
// the folder (sorted relative names, sizes and mtimes of the images). Any change to the folder
// invalidates it; it is written atomically (tmp + rename) and checked on read (magic, sizes,
// CRC-32); a corrupt or stale file is decoded afresh and rewritten.
Dataset load_image_folder(const std::string& dir, int height, int width, int channels = 3,
                          const ImageFolderOptions& options = {},
                          ImageFolderReport* report = nullptr);

// One image file decoded (stb_image: JPEG, PNG, BMP, GIF, TGA, PPM/PGM) the way
// load_image_folder decodes each image: converted to `channels` (1 = luminance, 3 = RGB),
// resized to height x width with resize_image. Returns (C, H, W); the file's own size goes to
// native_h / native_w. Throws Error "<path>: cannot decode image (<reason>)".
std::vector<uint8_t> load_image_file(const std::string& path, int channels, int height, int width,
                                     int* native_h = nullptr, int* native_w = nullptr);

// $DNNS_CACHE_DIR, else ~/.cache/dnnshifter, else /tmp/dnnshifter-cache (HOME unset or not
// writable).
std::string default_cache_dir();

// Resizes one image (C, sh, sw) -> (C, dh, dw), channel-major uint8. Area average per axis
// where the axis shrinks, bilinear (half-pixel centres, clamped edges) where it grows.
void resize_image(const uint8_t* src, int channels, int sh, int sw, uint8_t* dst, int dh, int dw);

// ---- IDX (MNIST-style) -------------------------------------------------------------------
// images: magic 0x00000803, dims (N, rows, cols) big-endian, then N*rows*cols bytes.
// labels: magic 0x00000801, dim (N), then N bytes. Each file plain or gzip (detected by its
// first two bytes 1f 8b). num_classes = max label + 1; class names "0", "1", ...
Dataset load_idx(const std::string& images_path, const std::string& labels_path);
// Fashion-MNIST (`dir` holds {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]); the default
// is where Debian's dataset-fashion-mnist installs it.
inline constexpr const char* kFashionMnistDir = "/usr/share/datasets/fashion-mnist";
Dataset load_fashion_mnist(const std::string& dir = kFashionMnistDir, bool train = true);
const std::vector<std::string>& fashion_mnist_class_names();

// ---- synthetic ---------------------------------------------------------------------------
struct SyntheticSpec {
  int64_t num_examples = 1024;
  int num_classes = 10;
  int channels = 3, height = 32, width = 32;
  float noise = 0.15f;  // stddev of per-pixel noise, in units of the full 0..255 range
  uint64_t seed = 1;   // fixes the classes (colours, places) and, with split, the examples
  uint64_t split = 0;  // which examples: splits of one seed share classes, not examples
};
// Class k is a soft disc of colour k at a class-specific place, jittered in position, size
// and brightness per example, on a noisy background: learnable, but not by one pixel.
// Labels cycle 0, 1, ..., K-1 so every class has N/K (+1) examples. Same spec -> same bytes.
Dataset make_synthetic(const SyntheticSpec& spec);

// ---- one entry point for the apps --------------------------------------------------------
struct DatasetOptions {
  int height = 0, width = 0;  // image folders only: 0 = native size of the images
  int channels = 3;           // image folders only
  bool cifar100_coarse = false;
  ImageFolderOptions image_folder;
  SyntheticSpec synthetic;                // "synthetic": the training split
  int64_t synthetic_test_examples = 512;  // "synthetic": test split size (split + 1)
};

// `spec` (the apps' --data) is one of:
//   "synthetic"        make_synthetic(options.synthetic); the test split has
//                      synthetic_test_examples examples of the next split (same classes)
//   "fashion-mnist"    load_fashion_mnist(kFashionMnistDir, train)
//   a directory, recognised by what it holds:
//     data_batch_1.bin or test_batch.bin         -> CIFAR-10 binary
//     train.bin or test.bin                      -> CIFAR-100 binary
//     cifar-10-batches-bin/ or cifar-100-binary/ -> that sub-folder, as above
//     train/ and test/ folders of class folders  -> image folder train/ or test/
//     {train,t10k}-images-idx3-ubyte[.gz]        -> IDX with the matching labels file
// Anything else throws Error listing what was expected.
Dataset load_dataset(const std::string& spec, bool train, const DatasetOptions& options = {});

}  // namespace dnns
