// core/: tensors (shapes, views, copies), the host block cache, errors, the RNG.
#include <doctest/doctest.h>

#include "core/cli.h"
#include "core/error.h"
#include "core/rng.h"
#include "core/tensor.h"

using namespace dnns;

TEST_CASE("tensors: shape, zero fill, views share storage, clones do not") {
  Tensor t({2, 3, 4});
  CHECK(t.numel() == 24);
  CHECK(t.dim(-1) == 4);
  for (int64_t i = 0; i < t.numel(); ++i) CHECK(t[i] == 0.0f);
  CHECK(reinterpret_cast<uintptr_t>(t.data()) % 64 == 0);
  Tensor v = t.reshape({6, 4});
  v[5] = 7.0f;
  CHECK(t[5] == 7.0f);
  Tensor c = t.clone();
  c[5] = 1.0f;
  CHECK(t[5] == 7.0f);
  CHECK_THROWS_WITH_AS(t.reshape({5, 5}), doctest::Contains("cannot view (2, 3, 4) as (5, 5)"), Error);
  CHECK_THROWS_WITH_AS(Tensor::from({2}, {1, 2, 3}), doctest::Contains("3 values for shape (2)"), Error);
  CHECK_THROWS_WITH_AS(check_shape({1, 2}, {1, 3}, "layer x"), doctest::Contains("layer x: expected shape (1, 3), got (1, 2)"),
                       Error);
}

TEST_CASE("host block cache: freed blocks are reused, zero-filled when asked, and released") {
  release_host_cache();
  CHECK(host_cache_bytes() == 0);
  const float* first;
  {
    Tensor a = Tensor::full({1000, 100}, 3.0f);
    first = a.data();
  }
  CHECK(host_cache_bytes() >= 1000 * 100 * sizeof(float));
  Tensor b({1000, 100});  // same size: the cached block, zero-filled again
  CHECK(b.data() == first);
  for (int64_t i = 0; i < b.numel(); i += 997) CHECK(b[i] == 0.0f);
  CHECK(host_cache_bytes() == 0);
  { Tensor c = Tensor::uninit({10, 10}); }
  CHECK(host_cache_bytes() > 0);
  release_host_cache();
  CHECK(host_cache_bytes() == 0);
}

TEST_CASE("rng: same seed, same stream; saved state resumes the stream") {
  Rng a(42), b(42), c(43);
  for (int i = 0; i < 100; ++i) CHECK(a.next_u64() == b.next_u64());
  CHECK(a.next_u64() != c.next_u64());
  Rng::State s = a.state();
  uint64_t x = a.next_u64();
  Rng d;
  d.set_state(s);
  CHECK(d.next_u64() == x);
  int counts[5] = {0};
  for (int i = 0; i < 50000; ++i) ++counts[a.below(5)];
  for (int k = 0; k < 5; ++k) CHECK(std::abs(counts[k] - 10000) < 500);
  double sum = 0, sq = 0;
  for (int i = 0; i < 50000; ++i) {
    double z = a.normal();
    sum += z, sq += z * z;
  }
  CHECK(std::abs(sum / 50000) < 0.02);
  CHECK(std::abs(sq / 50000 - 1.0) < 0.03);
}

TEST_CASE("flags: set_default yields to the command line and reads switches as parse does") {
  Flags f("prog", "test");
  f.add("epochs", "10", "epochs");
  f.add("lr", "0.1", "learning rate");
  f.add_bool("nesterov", "switch");
  f.add_bool("augment", "switch");
  std::vector<std::string> args = {"prog", "--lr", "0.5", "--augment=false"};
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  REQUIRE(f.parse(static_cast<int>(argv.size()), argv.data()));
  f.set_default("epochs", "3");  // not given: the stored value wins
  f.set_default("lr", "0.9");    // given: the command line wins
  f.set_default("nesterov", "true");
  f.set_default("augment", "true");
  CHECK(f.integer("epochs") == 3);
  CHECK(f.number("lr") == 0.5);
  CHECK(f.flag("nesterov"));
  CHECK_FALSE(f.flag("augment"));
  f.set_default("nesterov", "0");
  CHECK_FALSE(f.flag("nesterov"));
  CHECK_THROWS_WITH_AS(f.set_default("nesterov", "yes"), doctest::Contains("--nesterov is a switch"), Error);
  CHECK_THROWS_WITH_AS(f.set_default("momentum", "0.9"), doctest::Contains("undeclared flag --momentum"), Error);
}
