// Seeded random numbers. One generator (xoshiro256**) whose whole state can be saved and
// restored, so a resumed run draws exactly the numbers the uninterrupted run would have.
#pragma once
#include <array>
#include <cstdint>

namespace dnns {

class Rng {
 public:
  explicit Rng(uint64_t seed = 0) { seed_with(seed); }
  void seed_with(uint64_t seed);

  uint64_t next_u64();
  uint32_t below(uint32_t n);             // uniform in [0, n), unbiased
  float uniform();                        // uniform in [0, 1)
  float uniform(float lo, float hi) { return lo + (hi - lo) * uniform(); }
  float normal();                         // standard normal (Box-Muller, no cached spare)
  float normal(float mean, float stddev) { return mean + stddev * normal(); }

  using State = std::array<uint64_t, 4>;
  State state() const { return s_; }
  void set_state(const State& s) { s_ = s; }

 private:
  State s_{};
};

// A seed derived from several values (splitmix64 mixing): independent streams for
// (seed, epoch, sample) without sharing a generator across threads.
uint64_t mix_seed(uint64_t a, uint64_t b = 0, uint64_t c = 0, uint64_t d = 0);

}  // namespace dnns
