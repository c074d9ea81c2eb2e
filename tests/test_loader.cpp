// The loader: epoch order, batching, determinism under restarts and prefetching, the
// augmentation's statistics, normalisation, and errors from the background thread.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <numeric>
#include <set>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "core/threading.h"
#include "datasets/loader.h"

using namespace dnns;

namespace {

// N examples of (C, H, W) random pixels in 1..255 (so the black padding is recognisable),
// each its own class: a batch's labels say exactly which examples it holds.
std::shared_ptr<Dataset> numbered_set(int64_t n, int C = 3, int H = 8, int W = 6, uint64_t seed = 5) {
  auto d = std::make_shared<Dataset>();
  d->name = "numbered";
  d->channels = C;
  d->height = H;
  d->width = W;
  d->num_classes = static_cast<int>(n);
  Rng rng(seed);
  d->pixels.resize(n * d->image_bytes());
  for (auto& p : d->pixels) p = static_cast<uint8_t>(1 + rng.below(255));
  d->labels.resize(n);
  std::iota(d->labels.begin(), d->labels.end(), 0);
  return d;
}

// Normalisation that leaves pixel / 255, so raw values can be read back exactly.
ChannelStats identity_stats(int C) { return {std::vector<float>(C, 0.0f), std::vector<float>(C, 1.0f)}; }

std::vector<Batch> drain(Loader& loader) {
  std::vector<Batch> out;
  Batch b;
  while (loader.next(b)) out.push_back(b);
  return out;
}

std::vector<Batch> epoch(Loader& loader, int64_t e, int64_t first_batch = 0) {
  loader.start_epoch(e, first_batch);
  return drain(loader);
}

void check_same(const std::vector<Batch>& a, const std::vector<Batch>& b) {
  REQUIRE(a.size() == b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    CAPTURE(i);
    CHECK(a[i].images.shape() == b[i].images.shape());
    CHECK(a[i].images.to_vector() == b[i].images.to_vector());
    CHECK(a[i].labels.to_vector() == b[i].labels.to_vector());
  }
}

std::vector<int64_t> labels_of(const std::vector<Batch>& batches) {
  std::vector<int64_t> out;
  for (const Batch& b : batches)
    for (float l : b.labels.to_vector()) out.push_back(static_cast<int64_t>(l));
  return out;
}

LoaderOptions options(int64_t batch, bool augment, int prefetch, uint64_t seed = 11) {
  LoaderOptions o;
  o.batch_size = batch;
  o.augment = augment;
  o.prefetch = prefetch;
  o.seed = seed;
  return o;
}

}  // namespace

TEST_CASE("Loader: sizes, every example once per epoch, the last partial batch") {
  auto data = numbered_set(50);
  Loader loader(data, options(16, false, 2));
  CHECK(loader.num_examples() == 50);
  CHECK(loader.batches_per_epoch() == 4);
  CHECK(loader.num_classes() == 50);
  CHECK(loader.image_shape() == Shape{3, 8, 6});

  for (int64_t e = 0; e < 3; ++e) {
    const auto batches = epoch(loader, e);
    REQUIRE(batches.size() == 4);
    CHECK(batches[0].images.shape() == Shape{16, 3, 8, 6});
    CHECK(batches[3].images.shape() == Shape{2, 3, 8, 6});
    CHECK(batches[3].size() == 2);
    const auto seen = labels_of(batches);
    CHECK(seen == loader.epoch_order(e));  // the batches follow the epoch's order
    CHECK(std::set<int64_t>(seen.begin(), seen.end()).size() == 50);
  }
  Batch b;
  CHECK_FALSE(loader.next(b));  // stays at the end
  CHECK_FALSE(loader.next(b));

  LoaderOptions o = options(16, false, 2);
  o.drop_last = true;
  Loader dropping(data, o);
  CHECK(dropping.batches_per_epoch() == 3);
  const auto batches = epoch(dropping, 0);
  REQUIRE(batches.size() == 3);
  const auto seen = labels_of(batches);
  CHECK(std::set<int64_t>(seen.begin(), seen.end()).size() == 48);

  o = options(16, false, 0);
  o.shuffle = false;
  Loader ordered(data, o);
  std::vector<int64_t> identity(50);
  std::iota(identity.begin(), identity.end(), 0);
  CHECK(labels_of(epoch(ordered, 0)) == identity);
  CHECK(labels_of(epoch(ordered, 7)) == identity);
}

TEST_CASE("Loader: images carry the example's pixels, normalised") {
  auto data = numbered_set(10);
  LoaderOptions o = options(4, false, 1);
  o.normalize = {{0.1f, 0.5f, 0.9f}, {0.5f, 0.25f, 2.0f}};
  Loader loader(data, o);
  for (const Batch& b : epoch(loader, 2)) {
    const auto x = b.images.to_vector();
    for (int64_t k = 0; k < b.size(); ++k) {
      const uint8_t* img = data->image(static_cast<int64_t>(b.labels[k]));
      for (int c = 0; c < 3; ++c)
        for (int p = 0; p < 48; ++p) {
          const float want = (img[c * 48 + p] / 255.0f - o.normalize.mean[c]) / o.normalize.std[c];
          REQUIRE(std::abs(x[(k * 3 + c) * 48 + p] - want) < 1e-5f);
        }
    }
  }
}

TEST_CASE("Loader: determinism across loaders, epochs, seeds and restarts") {
  auto data = numbered_set(70);
  Loader a(data, options(16, true, 2)), b(data, options(16, true, 2));
  const auto a0 = epoch(a, 0), a1 = epoch(a, 1);
  check_same(a0, epoch(b, 0));
  check_same(a1, epoch(b, 1));
  check_same(a0, epoch(a, 0));  // replaying an epoch
  CHECK(labels_of(a0) != labels_of(a1));

  Loader other_seed(data, options(16, true, 2, /*seed=*/12));
  CHECK(labels_of(epoch(other_seed, 0)) != labels_of(a0));

  SUBCASE("start_epoch(e, b) equals the tail of the full epoch") {
    for (int64_t first = 0; first <= a.batches_per_epoch(); ++first) {
      CAPTURE(first);
      const auto tail = epoch(b, 1, first);
      check_same(tail, std::vector<Batch>(a1.begin() + first, a1.end()));
    }
  }
  SUBCASE("restarting mid-epoch, with batches still being prefetched") {
    Loader c(data, options(16, true, 3));
    c.start_epoch(1);
    Batch batch;
    REQUIRE(c.next(batch));
    REQUIRE(c.next(batch));
    c.start_epoch(1, 1);  // rewind by one batch while the worker runs ahead
    check_same(drain(c), std::vector<Batch>(a1.begin() + 1, a1.end()));
    c.start_epoch(0, 2);
    REQUIRE(c.next(batch));
    c.start_epoch(1, 3);
    check_same(drain(c), std::vector<Batch>(a1.begin() + 3, a1.end()));
  }
  SUBCASE("next() before any start_epoch begins epoch 0") {
    Loader c(data, options(16, true, 2));
    check_same(drain(c), a0);
  }
  SUBCASE("out-of-range restarts are refused") {
    CHECK_THROWS_WITH_AS(a.start_epoch(0, a.batches_per_epoch() + 1),
                         doctest::Contains("first batch 6 is outside [0, 5]"), Error);
    CHECK_THROWS_WITH_AS(a.start_epoch(-1), doctest::Contains("epoch must be >= 0, got -1"), Error);
    CHECK_NOTHROW(a.start_epoch(0, a.batches_per_epoch()));  // the end itself is a valid place to resume
  }
}

TEST_CASE("Loader: prefetching and thread count do not change the batches") {
  auto data = numbered_set(45);
  Loader sync(data, options(8, true, 0));
  const auto want0 = epoch(sync, 0), want3 = epoch(sync, 3);
  for (int prefetch : {1, 2, 5}) {
    CAPTURE(prefetch);
    Loader l(data, options(8, true, prefetch));
    check_same(epoch(l, 0), want0);
    check_same(epoch(l, 3), want3);
  }
  set_num_threads(1);
  Loader one(data, options(8, true, 2));
  const auto single = epoch(one, 3);
  set_num_threads(2);
  check_same(single, want3);
}

TEST_CASE("Loader: augmentation crops are exact shifted copies; flips and offsets uniform") {
  const int C = 3, H = 8, W = 6, pad = 4, n = 64, epochs = 40;
  auto data = numbered_set(n, C, H, W);
  LoaderOptions o = options(32, true, 2);
  o.normalize = identity_stats(C);
  Loader loader(data, o);

  // Raw value of the padded image at (c, y, x) in padded coordinates.
  auto padded = [&](int64_t ex, int c, int y, int x) -> int {
    const int sy = y - pad, sx = x - pad;
    if (sy < 0 || sy >= H || sx < 0 || sx >= W) return 0;
    return data->image(ex)[(c * H + sy) * W + sx];
  };

  std::vector<int64_t> dy_count(2 * pad + 1, 0), dx_count(2 * pad + 1, 0);
  int64_t flips = 0, draws = 0;
  for (int e = 0; e < epochs; ++e)
    for (const Batch& b : epoch(loader, e)) {
      const auto x = b.images.to_vector();
      for (int64_t k = 0; k < b.size(); ++k) {
        const int64_t ex = static_cast<int64_t>(b.labels[k]);
        std::vector<int> raw(C * H * W);  // (C, H, W) the output, back in 0..255
        for (int i = 0; i < C * H * W; ++i) {
          const float v = x[k * C * H * W + i] * 255.0f;
          raw[i] = static_cast<int>(std::lround(v));
          REQUIRE(std::abs(v - raw[i]) < 1e-3f);
        }
        // The (dy, dx, flip) whose crop of the padded image equals the output: exactly one.
        int matches = 0, mdy = -1, mdx = -1, mflip = -1;
        for (int dy = 0; dy <= 2 * pad; ++dy)
          for (int dx = 0; dx <= 2 * pad; ++dx)
            for (int flip = 0; flip < 2; ++flip) {
              bool same = true;
              for (int c = 0; c < C && same; ++c)
                for (int y = 0; y < H && same; ++y)
                  for (int xx = 0; xx < W && same; ++xx)
                    same = raw[(c * H + y) * W + xx] == padded(ex, c, y + dy, (flip ? W - 1 - xx : xx) + dx);
              if (same) ++matches, mdy = dy, mdx = dx, mflip = flip;
            }
        REQUIRE(matches == 1);
        ++dy_count[mdy];
        ++dx_count[mdx];
        flips += mflip;
        ++draws;
      }
    }
  REQUIRE(draws == int64_t(n) * epochs);
  const double rate = double(flips) / draws;
  MESSAGE("flip rate " << rate << " over " << draws << " draws");
  CHECK(std::abs(rate - 0.5) < 0.05);  // 5 standard deviations at n = 2560
  // Chi-square against uniform over the 9 offsets (8 degrees of freedom): 26.1 is p = 0.001.
  for (const auto* counts : {&dy_count, &dx_count}) {
    const double expected = double(draws) / counts->size();
    double chi2 = 0;
    for (int64_t c : *counts) chi2 += (c - expected) * (c - expected) / expected;
    MESSAGE("offset chi-square " << chi2);
    CHECK(chi2 < 26.1);
  }
}

TEST_CASE("Loader: normalised training set has mean 0 and std 1 per channel") {
  SyntheticSpec spec;
  spec.num_examples = 300;
  spec.height = 10;
  spec.width = 12;
  auto data = std::make_shared<const Dataset>(make_synthetic(spec));
  Loader loader(data, options(64, false, 2));
  std::vector<double> sum(3, 0), sum2(3, 0);
  double count = 0;
  for (const Batch& b : epoch(loader, 0)) {
    const auto x = b.images.to_vector();
    for (int64_t k = 0; k < b.size(); ++k)
      for (int c = 0; c < 3; ++c)
        for (int p = 0; p < 120; ++p) {
          const double v = x[(k * 3 + c) * 120 + p];
          sum[c] += v;
          sum2[c] += v * v;
        }
    count += b.size() * 120;
  }
  for (int c = 0; c < 3; ++c) {
    const double mean = sum[c] / count, sd = std::sqrt(sum2[c] / count - mean * mean);
    CAPTURE(c);
    CHECK(std::abs(mean) < 1e-4);
    CHECK(std::abs(sd - 1.0) < 1e-4);
  }

  // channel_stats against a direct two-pass computation.
  const ChannelStats s = channel_stats(*data);
  for (int c = 0; c < 3; ++c) {
    double m = 0, v = 0;
    const int64_t plane = 120;
    for (int64_t i = 0; i < data->size(); ++i)
      for (int64_t p = 0; p < plane; ++p) m += data->image(i)[c * plane + p] / 255.0;
    m /= data->size() * plane;
    for (int64_t i = 0; i < data->size(); ++i)
      for (int64_t p = 0; p < plane; ++p) v += std::pow(data->image(i)[c * plane + p] / 255.0 - m, 2);
    v /= data->size() * plane;
    CHECK(std::abs(s.mean[c] - m) < 1e-6);
    CHECK(std::abs(s.std[c] - std::sqrt(v)) < 1e-6);
  }
  const ChannelStats cifar = cifar10_stats();
  CHECK(cifar.mean == std::vector<float>{0.4914f, 0.4822f, 0.4465f});
  CHECK(cifar.std == std::vector<float>{0.2470f, 0.2435f, 0.2616f});
}

TEST_CASE("Loader: errors while assembling reach the caller of next()") {
  auto data = numbered_set(40);
  for (int prefetch : {0, 2}) {
    CAPTURE(prefetch);
    LoaderOptions o = options(16, true, prefetch);
    o.shuffle = false;
    Loader loader(data, o);  // validated here: the labels are fine
    data->labels[35] = 40;   // now out of range (the set is shared, and changed behind its back)
    loader.start_epoch(0);
    Batch b;
    REQUIRE(loader.next(b));  // examples 0..15
    REQUIRE(loader.next(b));  // 16..31
    bool thrown = false;
    try {
      loader.next(b);
    } catch (const Error& e) {
      thrown = true;
      CHECK(std::string(e.what()).find("example 35 has label 40 outside [0, 40)") != std::string::npos);
    }
    CHECK(thrown);
    CHECK_THROWS_AS(loader.next(b), Error);  // sticky until the next start_epoch
    data->labels[35] = 35;
    loader.start_epoch(0, 2);
    REQUIRE(loader.next(b));
    CHECK(b.labels[3] == 35.0f);
    CHECK_FALSE(loader.next(b));
  }
}

TEST_CASE("Loader: refuses bad configurations and shuts down cleanly mid-epoch") {
  auto data = numbered_set(10);
  // Each refusal by its message: a CHECK_THROWS_AS alone passes on any Error, for any reason.
  CHECK_THROWS_WITH_AS(Loader(data, options(0, false, 2)), doctest::Contains("batch size must be positive, got 0"),
                       Error);
  LoaderOptions o = options(11, false, 2);
  o.drop_last = true;
  CHECK_THROWS_WITH_AS(Loader(data, o), doctest::Contains("batch size 11 with drop_last leaves no batch of 10 examples"),
                       Error);
  o.batch_size = 10;
  CHECK_NOTHROW(Loader(data, o));  // exactly one full batch is fine
  o = options(4, false, 2);
  o.normalize = {{0.5f}, {0.2f}};
  CHECK_THROWS_WITH_AS(Loader(data, o), doctest::Contains("normalisation needs 3 means and stds, got 1 and 1"), Error);
  auto empty = std::make_shared<Dataset>(*data);
  empty->pixels.clear();
  empty->labels.clear();
  CHECK_THROWS_WITH_AS(Loader(empty, options(4, false, 2)), doctest::Contains("the data set is empty"), Error);
  auto broken = std::make_shared<Dataset>(*data);
  broken->labels[0] = -1;
  CHECK_THROWS_WITH_AS(Loader(broken, options(4, false, 2)),
                       doctest::Contains("label -1 of example 0 is outside [0, 10)"), Error);
  o = options(4, false, 2);
  o.shards = 2, o.shard = 2;
  CHECK_THROWS_WITH_AS(Loader(data, o), doctest::Contains("shard 2 of 2 does not exist"), Error);

  // Destroyed with a worker blocked on a full queue, and restarted many times over.
  for (int i = 0; i < 20; ++i) {
    Loader l(data, options(1, true, 3));
    l.start_epoch(i % 3);
    Batch b;
    REQUIRE(l.next(b));
    l.start_epoch(i % 5, i % 4);
  }
  Loader owned(Dataset(*data), options(3, false, 1));  // owning constructor
  CHECK(drain(owned).size() == 4);
}
