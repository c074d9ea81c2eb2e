#include "datasets/loader.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <numeric>

#include "core/error.h"
#include "core/parallel.h"
#include "core/rng.h"

namespace dnns {

// Stream tags, so the permutation and the augmentation draws never share a stream.
static constexpr uint64_t kOrderTag = 0x0dde5;
static constexpr uint64_t kAugmentTag = 0xa06e;

ChannelStats channel_stats(const Dataset& data) {
  check(data.size() > 0 && data.channels > 0,
        "channel_stats: data set '" + data.name + "' is empty");
  const int C = data.channels;
  const int64_t plane = int64_t(data.height) * data.width;
  // Histograms make the statistics exact and cheap: 256 bins per channel.
  std::vector<std::array<int64_t, 256>> hist(C);
  for (auto& h : hist) h.fill(0);
  for (int64_t i = 0; i < data.size(); ++i)
    for (int c = 0; c < C; ++c) {
      const uint8_t* p = data.image(i) + c * plane;  // (H, W)
      for (int64_t k = 0; k < plane; ++k) ++hist[c][p[k]];
    }
  ChannelStats s;
  for (int c = 0; c < C; ++c) {
    double n = 0, sum = 0, sum2 = 0;
    for (int v = 0; v < 256; ++v) {
      const double x = v / 255.0, cnt = static_cast<double>(hist[c][v]);
      n += cnt;
      sum += cnt * x;
      sum2 += cnt * x * x;
    }
    const double mean = sum / n;
    s.mean.push_back(static_cast<float>(mean));
    s.std.push_back(static_cast<float>(std::sqrt(std::max(0.0, sum2 / n - mean * mean))));
  }
  return s;
}

ChannelStats cifar10_stats() { return {{0.4914f, 0.4822f, 0.4465f}, {0.2470f, 0.2435f, 0.2616f}}; }

Loader::Loader(std::shared_ptr<const Dataset> data, const LoaderOptions& options)
    : data_(std::move(data)), opt_(options) {
  check(data_ != nullptr, "Loader: no data set");
  data_->validate();
  const std::string who = "Loader over '" + data_->name + "'";
  check(data_->size() > 0, who + ": the data set is empty");
  check(opt_.batch_size > 0, who + ": batch size must be positive, got " + std::to_string(opt_.batch_size));
  check(!opt_.drop_last || opt_.batch_size <= data_->size(),
        who + ": batch size " + std::to_string(opt_.batch_size) + " with drop_last leaves no batch of " +
            std::to_string(data_->size()) + " examples");
  check(opt_.pad >= 0, who + ": pad must be >= 0");
  check(opt_.prefetch >= 0, who + ": prefetch must be >= 0");
  check(opt_.shards >= 1 && opt_.shard >= 0 && opt_.shard < opt_.shards,
        who + ": shard " + std::to_string(opt_.shard) + " of " + std::to_string(opt_.shards) + " does not exist");
  stats_ = opt_.normalize.mean.empty() && opt_.normalize.std.empty() ? channel_stats(*data_) : opt_.normalize;
  const int C = data_->channels;
  check(static_cast<int>(stats_.mean.size()) == C && static_cast<int>(stats_.std.size()) == C,
        who + ": normalisation needs " + std::to_string(C) + " means and stds, got " +
            std::to_string(stats_.mean.size()) + " and " + std::to_string(stats_.std.size()));
  lut_.resize(size_t(C) * 256);
  for (int c = 0; c < C; ++c) {
    // A constant channel has std 0; dividing by 1 then keeps it finite (and centred).
    const float sd = stats_.std[c] > 1e-12f ? stats_.std[c] : 1.0f;
    for (int v = 0; v < 256; ++v) lut_[size_t(c) * 256 + v] = (v / 255.0f - stats_.mean[c]) / sd;
  }
}

Loader::~Loader() { stop_worker(); }

int64_t Loader::batches_per_epoch() const {
  const int64_t n = data_->size(), b = opt_.batch_size;
  return opt_.drop_last ? n / b : (n + b - 1) / b;
}

std::vector<int64_t> Loader::epoch_order(int64_t epoch) const {
  check(epoch >= 0, "Loader: epoch must be >= 0, got " + std::to_string(epoch));
  std::vector<int64_t> order(data_->size());
  std::iota(order.begin(), order.end(), 0);
  if (!opt_.shuffle) return order;
  Rng rng(mix_seed(opt_.seed, static_cast<uint64_t>(epoch), kOrderTag));
  for (int64_t i = static_cast<int64_t>(order.size()) - 1; i > 0; --i)  // Fisher-Yates
    std::swap(order[i], order[rng.below(static_cast<uint32_t>(i + 1))]);
  return order;
}

Batch Loader::assemble(int64_t epoch, int64_t batch, const std::vector<int64_t>& order, bool parallel) const {
  const Dataset& d = *data_;
  const int C = d.channels, H = d.height, W = d.width, pad = opt_.pad;
  // This shard's rows [lo, hi) of the global batch at positions [batch*B, batch*B + global).
  const int64_t global = std::min<int64_t>(opt_.batch_size, d.size() - batch * opt_.batch_size);
  const int64_t lo = global * opt_.shard / opt_.shards, hi = global * (opt_.shard + 1) / opt_.shards;
  const int64_t first = batch * opt_.batch_size + lo;
  const int64_t count = hi - lo;
  Batch out;
  if (opt_.shards > 1) out.global_size = global;
  out.images = Tensor({count, C, H, W});  // (B, C, H, W)
  out.labels = Tensor({count});           // (B)
  for (int64_t k = 0; k < count; ++k) {
    const int64_t ex = order[first + k];
    const int32_t label = d.labels[ex];
    check(label >= 0 && label < d.num_classes,
          "data set '" + d.name + "': example " + std::to_string(ex) + " has label " +
              std::to_string(label) + " outside [0, " + std::to_string(d.num_classes) + ")");
    out.labels[k] = static_cast<float>(label);
  }

  float* images = out.images.data();
  const float* lut = lut_.data();
  auto one = [&](int64_t k) {
    const int64_t pos = first + k;
    const uint8_t* src = d.image(order[pos]);     // (C, H, W) raw
    float* dst = images + k * d.image_bytes();    // (C, H, W) normalised
    if (!opt_.augment) {
      for (int c = 0; c < C; ++c) {
        const float* l = lut + size_t(c) * 256;
        for (int64_t p = 0; p < int64_t(H) * W; ++p) dst[c * H * W + p] = l[src[c * H * W + p]];
      }
      return;
    }
    Rng rng(mix_seed(opt_.seed, static_cast<uint64_t>(epoch), static_cast<uint64_t>(pos), kAugmentTag));
    const int dy = static_cast<int>(rng.below(2 * pad + 1));
    const int dx = static_cast<int>(rng.below(2 * pad + 1));
    const bool flip = rng.below(2) == 1;
    for (int c = 0; c < C; ++c) {
      const float* l = lut + size_t(c) * 256;
      const float border = l[0];  // the zero padding, normalised
      for (int y = 0; y < H; ++y) {
        const int sy = y + dy - pad;
        float* row = dst + (size_t(c) * H + y) * W;  // (W)
        if (sy < 0 || sy >= H) {
          std::fill(row, row + W, border);
          continue;
        }
        const uint8_t* srow = src + (size_t(c) * H + sy) * W;  // (W)
        for (int x = 0; x < W; ++x) {
          // Crop, then mirror: output x reads crop column W-1-x when flipped.
          const int sx = (flip ? W - 1 - x : x) + dx - pad;
          row[x] = (sx < 0 || sx >= W) ? border : l[srow[sx]];
        }
      }
    }
  };
  if (parallel) {
    parallel_for(int64_t(0), count, one);
  } else {
    for (int64_t k = 0; k < count; ++k) one(k);
  }
  return out;
}

void Loader::stop_worker() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    cancel_ = true;
  }
  cv_.notify_all();
  if (worker_.joinable()) worker_.join();
  std::lock_guard<std::mutex> lock(mu_);
  ready_.clear();
  cancel_ = false;
}

void Loader::start_epoch(int64_t epoch, int64_t first_batch) {
  check(epoch >= 0, "Loader: epoch must be >= 0, got " + std::to_string(epoch));
  check(first_batch >= 0 && first_batch <= batches_per_epoch(),
        "Loader: first batch " + std::to_string(first_batch) + " is outside [0, " +
            std::to_string(batches_per_epoch()) + "]");
  stop_worker();
  if (epoch != epoch_ || order_.empty()) order_ = epoch_order(epoch);
  epoch_ = epoch;
  next_batch_ = first_batch;
  error_ = nullptr;
  if (opt_.prefetch > 0 && first_batch < batches_per_epoch())
    worker_ = std::thread(&Loader::produce, this, epoch, first_batch);
}

void Loader::produce(int64_t epoch, int64_t first_batch) {
  const int64_t nb = batches_per_epoch();
  for (int64_t b = first_batch; b < nb; ++b) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return cancel_ || static_cast<int>(ready_.size()) < opt_.prefetch; });
      if (cancel_) return;
    }
    Slot slot;
    try {
      slot.batch = assemble(epoch, b, order_, false);
    } catch (...) {
      slot.error = std::current_exception();
    }
    const bool failed = slot.error != nullptr;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (cancel_) return;
      ready_.push_back(std::move(slot));
    }
    cv_.notify_all();
    if (failed) return;  // next() reports it; nothing after it is assembled
  }
}

bool Loader::next(Batch& out) {
  if (epoch_ < 0) start_epoch(0);
  if (error_) std::rethrow_exception(error_);
  if (next_batch_ >= batches_per_epoch()) return false;
  if (opt_.prefetch == 0) {
    try {
      out = assemble(epoch_, next_batch_, order_, true);
    } catch (...) {
      error_ = std::current_exception();
      throw;
    }
    ++next_batch_;
    return true;
  }
  Slot slot;
  {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return !ready_.empty(); });
    slot = std::move(ready_.front());
    ready_.pop_front();
  }
  cv_.notify_all();
  if (slot.error) {
    error_ = slot.error;
    std::rethrow_exception(error_);
  }
  out = std::move(slot.batch);
  ++next_batch_;
  return true;
}

}  // namespace dnns
