// What the trainer consumes: batches of images and labels from some source. datasets/
// implements it (the loader); tests implement it with synthetic data.
#pragma once
#include <cstdint>

#include "core/tensor.h"

namespace dnns {

struct Batch {
  Tensor images;  // (B, C, H, W), normalised float
  Tensor labels;  // (B), class indices stored as floats
  // A sharded source (data-parallel training) yields this process's rows of a global batch
  // of `global_size` examples; 0 when the batch is the whole global batch.
  int64_t global_size = 0;
  int64_t size() const { return labels.numel(); }
  int64_t global() const { return global_size ? global_size : size(); }
};

class BatchSource {
 public:
  virtual ~BatchSource() = default;
  virtual int64_t num_examples() const = 0;
  virtual int64_t batches_per_epoch() const = 0;
  virtual int num_classes() const = 0;
  virtual Shape image_shape() const = 0;  // (C, H, W)
  // Data-parallel training: a source split into shards() parts yields, in every process,
  // only that process's rows of each global batch (the global batches and their order are
  // those of the unsplit source). The trainer then sums over the processes.
  virtual int shards() const { return 1; }
  // Begins epoch `epoch` at batch `first_batch`. The order of examples depends only on the
  // source's seed and `epoch`, so a run rewound or resumed to (epoch, batch) sees exactly the
  // batches an uninterrupted run saw from there on.
  virtual void start_epoch(int64_t epoch, int64_t first_batch = 0) = 0;
  // Fills `out` with the next batch (fresh tensors, owned by the caller); false at epoch end.
  virtual bool next(Batch& out) = 0;
};

}  // namespace dnns
