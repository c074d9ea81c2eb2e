// Helpers shared by the test programs.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#include <string>

#include "core/batch.h"
#include "core/rng.h"
#include "nn/model.h"

namespace dnns::testing {

// Four classes of 8x8 RGB images (a bright quadrant on noise); the order of epoch e is a
// seeded shuffle of (seed, e), as the real loader's.
class QuadrantData : public BatchSource {
 public:
  QuadrantData(int n, int batch, uint64_t seed) : n_(n), batch_(batch), seed_(seed), images_({n, 3, 8, 8}) {
    Rng rng(seed);
    for (int i = 0; i < n; ++i) {
      labels_.push_back(static_cast<int>(rng.below(4)));
      for (int k = 0; k < 192; ++k) {
        int y = (k % 64) / 8, x = k % 8;
        bool lit = (y / 4) * 2 + (x / 4) == labels_.back();
        images_[int64_t(i) * 192 + k] = (lit ? 1.0f : 0.0f) + 0.5f * rng.normal();
      }
    }
  }
  int64_t num_examples() const override { return n_; }
  int64_t batches_per_epoch() const override { return (n_ + batch_ - 1) / batch_; }
  int num_classes() const override { return 4; }
  Shape image_shape() const override { return {3, 8, 8}; }
  void start_epoch(int64_t epoch, int64_t first_batch) override {
    order_.resize(n_);
    for (int i = 0; i < n_; ++i) order_[i] = i;
    Rng rng(mix_seed(seed_, static_cast<uint64_t>(epoch)));
    for (int i = n_ - 1; i > 0; --i) std::swap(order_[i], order_[rng.below(i + 1)]);
    pos_ = static_cast<int>(first_batch) * batch_;
  }
  bool next(Batch& out) override {
    if (pos_ >= n_) return false;
    int b = std::min(batch_, n_ - pos_);
    out.images = Tensor({b, 3, 8, 8});
    out.labels = Tensor({b});
    for (int k = 0; k < b; ++k) {
      int i = order_[pos_ + k];
      std::copy(images_.data() + int64_t(i) * 192, images_.data() + int64_t(i + 1) * 192,
                out.images.data() + int64_t(k) * 192);
      out.labels[k] = static_cast<float>(labels_[i]);
    }
    pos_ += b;
    return true;
  }

 private:
  int n_, batch_;
  uint64_t seed_;
  Tensor images_;
  std::vector<int> labels_, order_;
  int pos_ = 0;
};

inline bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// (n, C, H, W) standard-normal images.
inline Tensor random_images(int64_t n, const Shape& chw, Rng& rng) {
  Tensor x({n, chw[0], chw[1], chw[2]});
  for (int64_t i = 0; i < x.numel(); ++i) x[i] = rng.normal();
  return x;
}

// Random eval-mode batchnorm statistics, so that folding is tested on something other than
// the identity; beta spread around zero so dead filters give positive and negative constants.
inline void randomize_batchnorm(Model& m, Rng& rng) {
  for (Node& n : m.nodes())
    if (auto* bn = dynamic_cast<BatchNorm2d*>(n.layer.get()))
      for (int c = 0; c < bn->channels; ++c) {
        bn->gamma.value[c] = rng.uniform(0.5f, 1.5f);
        bn->beta.value[c] = rng.uniform(-0.5f, 0.5f);
        bn->running_mean[c] = rng.uniform(-0.2f, 0.2f);
        bn->running_var[c] = rng.uniform(0.5f, 2.0f);
      }
}

// Masks every prunable weight: a fraction of whole filters dead (except the final "fc"), and
// unstructured zeros at `weight_density` in the rest; applies the masks.
inline void random_masks(Model& m, Rng& rng, float dead_filter_fraction, float weight_density) {
  for (auto& p : m.params()) {
    if (!p.param->prunable) continue;
    Tensor mask = Tensor::full(p.param->value.shape(), 1.0f);
    int64_t rows = mask.dim(0), per = mask.numel() / rows;
    for (int64_t k = 0; k < rows; ++k) {
      bool dead = rng.uniform() < dead_filter_fraction && p.name != "fc.weight";
      for (int64_t q = 0; q < per; ++q)
        if (dead || rng.uniform() > weight_density) mask[k * per + q] = 0.0f;
    }
    m.masks[p.name] = mask;
  }
  m.apply_masks();
}

}  // namespace dnns::testing
