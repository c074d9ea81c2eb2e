// The gradient allreduce and the broadcast on CUDA device buffers, over 2 ranks sharing the GPU
// (`mpirun -np 2` on this program itself: the "worker" case): through a CUDA-aware MPI where
// dist::cuda_aware() says so, staged through host memory otherwise; the gradients are written
// by a kernel still queued on the device's stream when the reducer takes them, so a missing wait
// shows as wrong sums. Skipped (exit 77) with a message where the build has no MPI, no mpirun was
// found, or no CUDA device is present.
#include <doctest/doctest.h>

#include <cstdlib>

#include "core/error.h"
#include "kernels/ops.h"
#include "nn/distributed.h"
#include "nn/model.h"
#include "tests/mpi_util.h"

using namespace dnns;
using namespace dnns::mpi_test;

namespace {

const std::string kSelf = DNNS_BINARY_DIR "/tests/test_mpi_cuda";

// conv bn relu gap fc, then a wide linear layer (2M weights: several 1 MiB buckets, and kernels
// that take a while).
Model net() {
  Model m;
  int x = m.add_input({3, 6, 6});
  x = m.add("conv", std::make_unique<Conv2d>(3, 4, 3, 3, 1, 1, false), {x});
  x = m.add("bn", std::make_unique<BatchNorm2d>(4), {x});
  x = m.add("relu", std::make_unique<ReLU>(), {x});
  x = m.add("gap", std::make_unique<GlobalAvgPool>(), {x});
  x = m.add("fc", std::make_unique<Linear>(4, 2048, true), {x});
  m.add("wide", std::make_unique<Linear>(2048, 1024, true), {x});
  return m;
}

// Rank r's gradient value i: (r + 1) * (i % 1000 + 1) / 4, exact in float, as are sums of two.
float grad_value(int rank, int64_t i) { return float((rank + 1) * (i % 1000 + 1)) * 0.25f; }

}  // namespace

TEST_CASE("worker: device-buffer gradient buckets and broadcast on every rank") {
  if (!under_mpirun()) return;
  [[maybe_unused]] static const bool started = [] {  // once per process
    dist::init(nullptr, nullptr);
    std::atexit([] { dist::finalize(); });
    return true;
  }();
  REQUIRE(dist::size() == 2);
  REQUIRE(cuda_available());
  const int me = dist::rank();
  MESSAGE("rank " << me << ": CUDA-aware MPI: " << std::string(dist::cuda_aware() ? "yes (device buffers to MPI)" : "no (host staging)"));

  for (size_t bucket_bytes : {size_t(64), size_t(1) << 20, size_t(64) << 20}) {
    Model m = net();
    m.to(Device::CUDA);
    std::vector<std::vector<float>> want;
    for (auto& np : m.params()) {
      Param& p = *np.param;
      Tensor half(p.value.shape());
      std::vector<float> w(size_t(half.numel()));
      for (int64_t i = 0; i < half.numel(); ++i) half[i] = 0.5f * grad_value(me, i), w[size_t(i)] = grad_value(0, i) + grad_value(1, i);
      Tensor half_dev = half.to(Device::CUDA);
      p.grad = Tensor(p.value.shape(), Device::CUDA);
      ops::add_forward(half_dev, half_dev, p.grad);  // queued: may still run when the reducer starts
      want.push_back(w);
    }
    dist::GradientReducer red(bucket_bytes);
    red.begin(m);
    for (int i = static_cast<int>(m.nodes().size()) - 1; i >= 1; --i) red.layer_done(*m.nodes()[i].layer);
    red.finish();
    CHECK(red.bytes_per_step() == m.num_params() * 4);
    size_t k = 0;
    for (auto& np : m.params()) CHECK_MESSAGE(np.param->grad.to_vector() == want[k++], np.name << ", buckets of " << bucket_bytes << " bytes");
  }

  // broadcast: rank 0's device tensor, written by a queued kernel, reaches rank 1's.
  Tensor src(Shape{1 << 20});
  for (int64_t i = 0; i < src.numel(); ++i) src[i] = grad_value(0, i);
  Tensor half = src.to(Device::CUDA);
  Tensor t(Shape{1 << 20}, Device::CUDA);
  if (me == 0) {
    Tensor h(Shape{1 << 20});
    for (int64_t i = 0; i < h.numel(); ++i) h[i] = 0.5f * grad_value(0, i);
    Tensor hd = h.to(Device::CUDA);
    ops::add_forward(hd, hd, t);
  }
  dist::broadcast(t);
  CHECK(t.to_vector() == src.to_vector());
}

TEST_CASE("the device-buffer allreduce passes on 2 ranks (skipped without MPI or without a CUDA device)") {
  if (under_mpirun()) return;
  skip_without_mpi();
  if (!cuda_available()) {
    MESSAGE("no CUDA device present (or a build without CUDA): the device-buffer allreduce test is skipped");
    std::exit(77);
  }
  TmpDir dir("mpi_cuda");
  Exit e = run(concat(mpirun(2, {"DNNS_MPI_ALL_STDOUT"}), {kSelf, "-tc=worker*"}), {"DNNS_MPI_ALL_STDOUT=1"},
               dir / "worker.log", 300);
  MESSAGE(e.log);
  CHECK_FALSE(e.timed_out);
  CHECK(e.code == 0);
  size_t n = 0;  // doctest's summary once per rank: both ranks ran the assertions
  for (size_t at = e.log.find("SUCCESS!"); at != std::string::npos; at = e.log.find("SUCCESS!", at + 1)) ++n;
  CHECK(n == 2);
}
