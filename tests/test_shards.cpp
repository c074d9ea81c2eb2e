// Data-parallel input: the shards of a loader are exactly the rows of the unsharded loader's
// global batches (same order, same augmentation), and a single-process build of
// nn/distributed is one rank whose collectives change nothing.
#include <doctest/doctest.h>

#include <cstring>

#include "core/error.h"
#include "datasets/dataset.h"
#include "datasets/loader.h"
#include "nn/distributed.h"
#include "nn/model.h"

using namespace dnns;

namespace {

Dataset small_set(int64_t n) {
  SyntheticSpec s;
  s.num_examples = n;
  s.height = s.width = 8;
  s.seed = 5;
  return make_synthetic(s);
}

bool same_rows(const Tensor& whole, int64_t row0, const Tensor& part) {
  const int64_t row = whole.numel() / whole.dim(0);
  return std::memcmp(whole.data() + row0 * row, part.data(), part.bytes()) == 0;
}

}  // namespace

TEST_CASE("the shards of each global batch are its rows, in order, augmented as in one process") {
  auto data = std::make_shared<const Dataset>(small_set(77));  // 77 = 4 x 16 + 13: a short last batch
  for (int shards : {2, 3, 5}) {
    LoaderOptions o;
    o.batch_size = 16;
    o.augment = true;
    o.seed = 9;
    Loader whole(data, o);
    std::vector<std::unique_ptr<Loader>> parts;
    for (int k = 0; k < shards; ++k) {
      LoaderOptions ok = o;
      ok.shard = k, ok.shards = shards;
      ok.prefetch = k % 2 ? 0 : 2;  // with and without the background thread
      parts.push_back(std::make_unique<Loader>(data, ok));
      CHECK(parts.back()->shards() == shards);
      CHECK(parts.back()->batches_per_epoch() == whole.batches_per_epoch());
    }
    for (int64_t epoch : {0, 3}) {
      whole.start_epoch(epoch, 1);  // from batch 1: a resumed epoch shards the same way
      for (auto& p : parts) p->start_epoch(epoch, 1);
      Batch w, b;
      int batches = 0;
      while (whole.next(w)) {
        ++batches;
        int64_t row = 0;
        for (int k = 0; k < shards; ++k) {
          REQUIRE(parts[k]->next(b));
          CHECK(b.global_size == w.size());
          CHECK(b.size() == w.size() * (k + 1) / shards - w.size() * k / shards);
          CHECK_MESSAGE(same_rows(w.images, row, b.images), "shard " << k << " of " << shards << ", epoch " << epoch);
          CHECK(same_rows(w.labels, row, b.labels));
          row += b.size();
        }
      }
      CHECK(batches == whole.batches_per_epoch() - 1);
      for (auto& p : parts) CHECK_FALSE(p->next(b));
    }
  }
}

TEST_CASE("a shard that does not exist is refused") {
  auto data = std::make_shared<const Dataset>(small_set(10));
  LoaderOptions o;
  o.shard = 2, o.shards = 2;
  CHECK_THROWS_WITH_AS(Loader(data, o), doctest::Contains("shard 2 of 2 does not exist"), Error);
}

TEST_CASE("without an MPI launcher the process is one rank and the collectives are identities") {
  // ctest starts this program without mpirun: init() must leave MPI alone.
  dist::init(nullptr, nullptr);
  CHECK(dist::size() == 1);
  CHECK(dist::rank() == 0);
  CHECK(dist::is_root());
  double v[2] = {1.5, -2.0};
  dist::allreduce_sum(v, 2);
  CHECK(v[0] == 1.5);
  CHECK(v[1] == -2.0);
  double g[2];
  dist::allgather(v, 2, g);
  CHECK(g[0] == 1.5);
  CHECK(g[1] == -2.0);
  CHECK_NOTHROW(dist::check_same(42, "a value"));
  Tensor t = Tensor::from({3}, {1, 2, 3});
  CHECK(dist::fingerprint(t) != dist::fingerprint(Tensor::from({3}, {1, 2, 4})));
  CHECK(dist::fingerprint(t) == dist::fingerprint(t.clone()));
  dist::finalize();
}
