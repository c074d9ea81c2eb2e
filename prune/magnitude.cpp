#include "prune/magnitude.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>

#include "core/error.h"

namespace dnns {

PruneStrategy parse_prune_strategy(const std::string& s) {
  if (s == "global") return PruneStrategy::Global;
  if (s == "layerwise") return PruneStrategy::LayerWise;
  throw Error("prune strategy must be 'global' or 'layerwise', got '" + s + "'");
}

const char* prune_strategy_name(PruneStrategy s) { return s == PruneStrategy::Global ? "global" : "layerwise"; }

int64_t prune_count(double fraction, int64_t remaining) {
  return static_cast<int64_t>(std::ceil(fraction * static_cast<double>(remaining)));
}

namespace {

// One layer taking part in a pruning step: its weights and mask as host copies.
struct LayerView {
  std::string name;
  std::vector<float> weight;  // (numel) values of the weight tensor
  Tensor mask;                // CPU, same shape; updated in place
};

// The sort key of a surviving weight: |w| in the high 32 bits (the IEEE bits of a
// non-negative float order as the floats do), its position in the (layer, index)
// concatenation in the low 32 bits. Keys are unique, so "the n smallest" is one set,
// whatever algorithm selects it.
inline uint64_t magnitude_key(float w, uint64_t position) {
  float a = std::fabs(w);
  uint32_t bits;
  std::memcpy(&bits, &a, sizeof bits);
  return (static_cast<uint64_t>(bits) << 32) | position;
}

// Zeroes in `layers` the mask entries of the `n` smallest keys of `keys` (keys built with
// positions offset by `offsets[layer]`).
void remove_smallest(std::vector<uint64_t>& keys, int64_t n, const std::vector<uint64_t>& offsets,
                     std::vector<LayerView*>& layers) {
  if (n <= 0) return;
  std::nth_element(keys.begin(), keys.begin() + (n - 1), keys.end());
  for (int64_t i = 0; i < n; ++i) {
    uint64_t pos = keys[i] & 0xFFFFFFFFull;
    // The layer holding `pos`: the last offset <= pos.
    size_t l = std::upper_bound(offsets.begin(), offsets.end(), pos) - offsets.begin() - 1;
    layers[l]->mask[static_cast<int64_t>(pos - offsets[l])] = 0.0f;
  }
}

// Surviving weights of the layers, keyed; `offsets` receives each layer's start position.
std::vector<uint64_t> survivor_keys(const std::vector<LayerView*>& layers, std::vector<uint64_t>& offsets) {
  std::vector<uint64_t> keys;
  uint64_t offset = 0;
  offsets.clear();
  for (const LayerView* l : layers) {
    offsets.push_back(offset);
    const float* mask = l->mask.data();
    for (size_t i = 0; i < l->weight.size(); ++i) {
      if (mask[i] == 0.0f) continue;
      if (!std::isfinite(l->weight[i]))
        throw Error("magnitude pruning: weight '" + l->name + "' holds a non-finite value (" +
                    std::to_string(l->weight[i]) + ") at index " + std::to_string(i));
      keys.push_back(magnitude_key(l->weight[i], offset + i));
    }
    offset += l->weight.size();
  }
  check(offset <= 0xFFFFFFFFull, "magnitude pruning: more than 2^32 - 1 prunable weights in one ranking");
  return keys;
}

}  // namespace

MaskSet prune_by_magnitude(Model& m, double fraction, PruneStrategy strategy, const std::vector<std::string>& ignore) {
  check(fraction > 0.0 && fraction < 1.0, "prune fraction must be in (0, 1), got " + std::to_string(fraction));
  check_prune_ignore(m, ignore);
  MaskSet masks = current_masks(m);
  std::vector<LayerView> views;
  for (Model::NamedParam& p : prunable_weights(m)) {
    if (is_ignored(p.name, ignore)) continue;
    views.push_back({p.name, p.param->value.to_vector(), masks.at(p.name)});
  }
  std::vector<LayerView*> all;
  for (LayerView& v : views) all.push_back(&v);
  std::vector<uint64_t> offsets;
  if (strategy == PruneStrategy::Global) {
    std::vector<uint64_t> keys = survivor_keys(all, offsets);
    remove_smallest(keys, prune_count(fraction, static_cast<int64_t>(keys.size())), offsets, all);
  } else {
    for (LayerView* v : all) {
      std::vector<LayerView*> one{v};
      std::vector<uint64_t> keys = survivor_keys(one, offsets);
      remove_smallest(keys, prune_count(fraction, static_cast<int64_t>(keys.size())), offsets, one);
    }
  }
  return masks;  // the views' masks share storage with these
}

MaskSet prune_randomly_like(const Model& m, const MaskSet& current, const MaskSet& reference, Rng& rng) {
  MaskSet out;
  for (Model::NamedParam& p : prunable_weights(const_cast<Model&>(m))) {  // names and shapes only
    auto cur = current.find(p.name), ref = reference.find(p.name);
    check(cur != current.end(), "random pruning: the current masks lack '" + p.name + "'");
    check(ref != reference.end(), "random pruning: the reference masks lack '" + p.name + "'");
    check_shape(cur->second.shape(), p.param->value.shape(), "random pruning: current mask of '" + p.name + "'");
    check_shape(ref->second.shape(), p.param->value.shape(), "random pruning: reference mask of '" + p.name + "'");
    Tensor mask = cur->second.to(Device::CPU);  // a copy
    const int64_t have = mask_count(mask), want = mask_count(ref->second);
    check(want <= have, "random pruning: the reference keeps " + std::to_string(want) + " weights of '" + p.name +
                            "' but only " + std::to_string(have) + " survive in the current mask");
    check(mask.numel() <= 0xFFFFFFFFll, "random pruning: weight '" + p.name + "' is too large");
    std::vector<int64_t> alive;  // (have) indices of the surviving weights
    alive.reserve(static_cast<size_t>(have));
    for (int64_t i = 0; i < mask.numel(); ++i)
      if (mask[i] != 0.0f) alive.push_back(i);
    // Partial Fisher-Yates: the first `have - want` entries become a uniform random subset.
    const int64_t remove = have - want;
    for (int64_t i = 0; i < remove; ++i) {
      int64_t j = i + rng.below(static_cast<uint32_t>(have - i));
      std::swap(alive[i], alive[j]);
      mask[alive[i]] = 0.0f;
    }
    out[p.name] = mask;
  }
  for (const auto& [name, t] : reference)
    check(out.count(name), "random pruning: the reference mask '" + name + "' names no prunable weight");
  return out;
}

MaskSet imp_like_masks(const Model& m, double density, Rng& rng) {
  check(density >= 0.0 && density <= 1.0,
        "imp_like_masks: density must be in [0, 1], got " + std::to_string(density));
  std::vector<Model::NamedParam> weights = prunable_weights(const_cast<Model&>(m));  // read only
  std::vector<float> scores;  // (total) every prunable weight's score, in graph order
  for (const Model::NamedParam& p : weights) {
    const std::vector<float> w = p.param->value.to_vector();
    const int64_t rows = p.param->value.dim(0), per = rows > 0 ? int64_t(w.size()) / rows : 0;
    for (int64_t k = 0; k < rows; ++k) {
      const float importance = std::exp(2.0f * rng.normal());
      for (int64_t q = 0; q < per; ++q) scores.push_back(std::fabs(w[size_t(k * per + q)]) * importance);
    }
  }
  const int64_t total = static_cast<int64_t>(scores.size());
  const int64_t keep = std::llround(density * static_cast<double>(total));
  // The keep-th highest score is the threshold: every score above it survives, and of those
  // equal to it only as many (the first ones) as fill the count.
  float threshold = 0.0f;
  int64_t equal_quota = 0;
  if (keep > 0) {
    std::vector<float> sorted = scores;
    std::nth_element(sorted.begin(), sorted.begin() + (keep - 1), sorted.end(), std::greater<float>());
    threshold = sorted[size_t(keep - 1)];
    int64_t above = 0;
    for (float s : scores) above += s > threshold;
    equal_quota = keep - above;
  }
  MaskSet out;
  size_t at = 0;
  for (const Model::NamedParam& p : weights) {
    Tensor mask(p.param->value.shape());  // (shape of the weight) 0/1
    for (int64_t i = 0; i < mask.numel(); ++i, ++at) {
      bool alive = keep > 0 && scores[at] > threshold;
      if (keep > 0 && scores[at] == threshold && equal_quota > 0) alive = true, --equal_quota;
      mask[i] = alive ? 1.0f : 0.0f;
    }
    out[p.name] = std::move(mask);
  }
  return out;
}

}  // namespace dnns
