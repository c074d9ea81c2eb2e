// Unstructured magnitude pruning (open_lth's sparse_global, and a layer-wise variant) and a
// random-pruning baseline. Each function reads the model's current weights and masks and
// returns the next masks (CPU tensors, one per prunable weight); the model is not changed.
//
// Counts follow open_lth's rule: a pruning step removes ceil(fraction x remaining) of the
// weights still alive, so after L steps of fraction f the survivors number exactly
//   remaining_L = remaining_{L-1} - ceil(f * remaining_{L-1}).
// Unlike open_lth's threshold (which removes every weight tied with the threshold value, so
// it can remove more), exactly that many go: the weights with the smallest |w|, ties broken
// by layer order (graph order) then by index within the tensor, the earlier first. The result
// is deterministic and independent of thread count.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/rng.h"
#include "nn/model.h"
#include "prune/mask.h"

namespace dnns {

enum class PruneStrategy {
  Global,     // one ranking over every prunable, non-ignored weight
  LayerWise,  // each layer loses ceil(fraction x its own remaining)
};
PruneStrategy parse_prune_strategy(const std::string& s);  // "global" | "layerwise"
const char* prune_strategy_name(PruneStrategy s);

// Number of weights a step of `fraction` removes from `remaining` survivors:
// ceil(fraction x remaining), computed as open_lth does (in double precision).
int64_t prune_count(double fraction, int64_t remaining);

// The masks after removing, by magnitude, a `fraction` (0 < fraction < 1) of the surviving
// weights of the prunable layers not on `ignore`; ignored layers keep their masks. A weight
// that is already pruned stays pruned. Throws Error on a bad fraction, an ignore entry that
// names no prunable weight, or a non-finite surviving weight (named with its layer).
MaskSet prune_by_magnitude(Model& m, double fraction, PruneStrategy strategy, const std::vector<std::string>& ignore);

// The random baseline: for every prunable weight, removes from `current` (a mask set with
// one mask per prunable weight of `m`) as many surviving weights as `reference` has fewer
// ones than `current` in that layer, chosen uniformly among the survivors with `rng`. Used
// with reference = the magnitude masks of the same level, it prunes the same number of
// weights per layer at random. Throws Error when a layer of `reference` has more ones than
// `current`, or the two do not cover the same weights with the same shapes.
MaskSet prune_randomly_like(const Model& m, const MaskSet& current, const MaskSet& reference, Rng& rng);

// Masks that look like a trained IMP run's, for benchmarks and tests without the training:
// every prunable weight is scored |w| times a random importance of its filter (row), drawn as
// exp(2 N(0, 1)) from `rng` in graph order, and the round(density x total) highest scores
// over all prunable weights survive (ties: the earlier in graph order, then in the tensor).
// At high sparsity whole filters die, as in IMP masks, so compaction has channels to remove.
// density 0 masks every weight, 1 none; the model is not changed (install with set_masks).
// Throws Error when density is not in [0, 1].
MaskSet imp_like_masks(const Model& m, double density, Rng& rng);

}  // namespace dnns
