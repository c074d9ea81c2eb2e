// The loader: shuffles a Dataset, cuts it into batches, augments and normalises them, and
// assembles the next few batches on a background thread while the caller trains.
//
// Determinism: the order of epoch e is a permutation drawn from (seed, e) alone, and the
// augmentation of the example at position i of epoch e from Rng(mix_seed(seed, e, i, tag)),
// so batches do not depend on the thread count, on prefetching, or on where an epoch was
// (re)started: start_epoch(e, b) yields exactly the batches b, b+1, ... of an uninterrupted
// epoch e.
#pragma once
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "core/batch.h"
#include "datasets/dataset.h"

namespace dnns {

// Per-channel mean and standard deviation of the pixel values scaled to [0, 1].
struct ChannelStats {
  std::vector<float> mean;  // (C)
  std::vector<float> std;   // (C)
};
// Exact (from per-channel histograms) population statistics of every pixel of the set.
ChannelStats channel_stats(const Dataset& data);
// The CIFAR-10 training set's statistics (R, G, B): mean 0.4914 0.4822 0.4465,
// std 0.2470 0.2435 0.2616.
ChannelStats cifar10_stats();

struct LoaderOptions {
  int64_t batch_size = 128;
  bool shuffle = true;      // false: data set order every epoch
  bool augment = false;     // standard CIFAR augmentation, drawn per image (see below)
  bool drop_last = false;   // true: drop the last batch when it would be smaller
  uint64_t seed = 0;
  ChannelStats normalize;   // empty: channel_stats() of the data set
  int pad = 4;              // augmentation: zero border around the image before the crop
  int prefetch = 2;         // batches assembled ahead on a background thread; 0: inside next()
  // Data-parallel training: shard `shard` of `shards` holds rows [k*B/shards, (k+1)*B/shards)
  // of each global batch of B rows (k = shard). Every global batch and the epoch order are
  // those of the unsharded loader, so the union of the shards is exactly its batch.
  int shard = 0, shards = 1;
};

// Augmentation (when on): the image is padded with `pad` black (raw 0) pixels on each side,
// a H x W window is cropped at offsets (dy, dx), each uniform in [0, 2*pad], then the crop is
// mirrored left-right with probability 1/2. The draws, in this order: dy, dx, flip.
//
// Normalisation: x = (pixel / 255 - mean[c]) / std[c], so padding becomes -mean[c]/std[c].
//
// The loader shares ownership of the data set; the set must not change while the loader
// lives (a label found out of range while assembling a batch is reported by next()).
class Loader : public BatchSource {
 public:
  Loader(std::shared_ptr<const Dataset> data, const LoaderOptions& options);
  Loader(Dataset data, const LoaderOptions& options)
      : Loader(std::make_shared<const Dataset>(std::move(data)), options) {}
  ~Loader() override;
  Loader(const Loader&) = delete;
  Loader& operator=(const Loader&) = delete;

  int64_t num_examples() const override { return data_->size(); }
  int64_t batches_per_epoch() const override;
  int num_classes() const override { return data_->num_classes; }
  Shape image_shape() const override { return {data_->channels, data_->height, data_->width}; }
  int shards() const override { return opt_.shards; }
  // Stops any batches being prefetched for the previous epoch, then begins (epoch,
  // first_batch); first_batch may equal batches_per_epoch() (nothing left). next() before
  // any start_epoch begins epoch 0.
  void start_epoch(int64_t epoch, int64_t first_batch = 0) override;
  // The next batch of the current epoch; false at its end. An error met while assembling a
  // batch (in the background or not) is thrown here, and again on every call until the next
  // start_epoch.
  bool next(Batch& out) override;

  const Dataset& dataset() const { return *data_; }
  const ChannelStats& stats() const { return stats_; }
  const LoaderOptions& options() const { return opt_; }
  // (N) the example index at each position of epoch `epoch`.
  std::vector<int64_t> epoch_order(int64_t epoch) const;

 private:
  // One batch; `parallel` spreads its images over the worker threads (inside next()). The
  // background thread assembles on its own: a batch takes ~1 ms against a training step's
  // ~100+ ms, and its loops would otherwise take the training's worker threads away.
  Batch assemble(int64_t epoch, int64_t batch, const std::vector<int64_t>& order, bool parallel) const;
  void produce(int64_t epoch, int64_t first_batch);  // the background thread's loop
  void stop_worker();

  std::shared_ptr<const Dataset> data_;
  LoaderOptions opt_;
  ChannelStats stats_;
  std::vector<float> lut_;  // (C, 256) normalised value of each raw byte per channel

  // Consumer state (the caller's thread).
  int64_t epoch_ = -1;             // -1: no epoch started yet
  int64_t next_batch_ = 0;         // index of the batch next() returns next
  std::vector<int64_t> order_;     // (N) order of epoch_; read-only while the worker runs
  std::exception_ptr error_;       // sticky until start_epoch

  // Shared with the worker, guarded by mu_.
  struct Slot {
    Batch batch;
    std::exception_ptr error;
  };
  std::thread worker_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Slot> ready_;  // assembled batches, in order, at most opt_.prefetch of them
  bool cancel_ = false;
};

}  // namespace dnns
