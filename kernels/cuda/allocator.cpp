// The caching device allocator behind Tensor(..., Device::CUDA) and the ops' scratch buffers.
//
// cudaMalloc and cudaFree are slow and cudaFree synchronises the whole device, so freed blocks
// are kept in free lists, one per size class, and handed out again. Sizes are rounded up to a
// class (four classes per power of two, so at most 25% is wasted) to make reuse likely when
// shapes vary a little. Blocks are only returned to the driver on empty_cache() or when
// cudaMalloc runs out of memory.
//
// Reuse needs no events: all device work runs on the backend's one stream, so work queued by
// the next owner of a block always runs after the work queued by its previous owner.
#include <cmath>
#include <cstdio>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/error.h"
#include "core/tensor.h"
#include "kernels/cuda/common.h"

namespace dnns::cuda {
namespace {

// Bytes rounded up to the allocator's size class.
size_t size_class(size_t bytes) {
  const size_t min_step = 512;  // cudaMalloc aligns to 256 bytes anyway; avoid tiny classes
  size_t top = 1;               // largest power of two <= bytes
  while (top <= bytes / 2) top *= 2;
  size_t step = top / 4 > min_step ? top / 4 : min_step;
  return (bytes + step - 1) / step * step;
}

class CachingAllocator final : public DeviceAllocator {
 public:
  void* allocate(size_t bytes) override { return alloc(bytes, "Tensor allocation"); }
  void deallocate(void* p, size_t /*bytes*/) override { release(p); }

  void copy(void* dst, const void* src, size_t bytes, bool to_device) override {
    if (bytes == 0) return;
    const char* op = to_device ? "copy host to device" : "copy device to host";
    cudaStream_t s = stream();
    DNNS_CUDA_CHECK(op, cudaMemcpyAsync(dst, src, bytes,
                                        to_device ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToHost,
                                        s));
    // The interface is synchronous: the host buffer may be reused or read the moment we
    // return (it may be pinned, in which case the copy above does not wait for it).
    DNNS_CUDA_CHECK(op, cudaStreamSynchronize(s));
  }

  void copy_on_device(void* dst, const void* src, size_t bytes) override {
    if (bytes == 0) return;
    DNNS_CUDA_CHECK("copy on device",
                    cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream()));
  }

  void fill(float* dst, size_t n, float value) override {
    if (n == 0) return;
    if (value == 0.0f && !std::signbit(value))  // +0.0f is all zero bytes
      DNNS_CUDA_CHECK("fill", cudaMemsetAsync(dst, 0, n * sizeof(float), stream()));
    else
      fill_device(dst, static_cast<int64_t>(n), value, "fill");
  }

  void* alloc(size_t bytes, const char* op) {
    if (bytes == 0) return nullptr;
    stream();  // creates the context; throws a clear error when there is no device
    const size_t cls = size_class(bytes);
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = free_.find(cls);
    if (it != free_.end() && !it->second.empty()) {
      void* p = it->second.back();
      it->second.pop_back();
      live_[p] = cls;
      stats_.cache_hits++;
      stats_.bytes_cached -= cls;
      stats_.blocks_cached--;
      stats_.bytes_in_use += cls;
      stats_.blocks_in_use++;
      return p;
    }
    void* p = nullptr;
    cudaError_t err = cudaMalloc(&p, cls);
    if (err == cudaErrorMemoryAllocation) {
      cudaGetLastError();  // clear it; retry once with the cache handed back to the driver
      release_cached_locked(op);
      err = cudaMalloc(&p, cls);
    }
    if (err != cudaSuccess) {
      cudaGetLastError();
      throw Error("CUDA op " + std::string(op) + ": cudaMalloc of " + std::to_string(cls) +
                  " bytes failed: " + cudaGetErrorName(err) + ": " + cudaGetErrorString(err) +
                  " (" + std::to_string(stats_.bytes_in_use) + " bytes in use by live tensors)");
    }
    live_[p] = cls;
    stats_.device_mallocs++;
    stats_.bytes_in_use += cls;
    stats_.blocks_in_use++;
    return p;
  }

  // Called from destructors: must not throw.
  void release(void* p) noexcept {
    if (!p) return;
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = live_.find(p);
    if (it == live_.end()) {
      std::fprintf(stderr, "dnnshifter CUDA allocator: free of unknown pointer %p ignored\n", p);
      return;
    }
    const size_t cls = it->second;
    live_.erase(it);
    free_[cls].push_back(p);
    stats_.bytes_in_use -= cls;
    stats_.blocks_in_use--;
    stats_.bytes_cached += cls;
    stats_.blocks_cached++;
  }

  void empty_cache() {
    std::lock_guard<std::mutex> lock(mutex_);
    release_cached_locked("empty_cache");
  }

  AllocatorStats stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    return stats_;
  }

 private:
  // Frees every cached block. Queued work may still use them, so wait for the stream first.
  void release_cached_locked(const char* op) {
    if (free_.empty()) return;
    DNNS_CUDA_CHECK(op, cudaStreamSynchronize(stream()));
    for (auto& [cls, blocks] : free_)
      for (void* p : blocks) DNNS_CUDA_CHECK(op, cudaFree(p));
    free_.clear();
    stats_.bytes_cached = 0;
    stats_.blocks_cached = 0;
  }

  std::mutex mutex_;
  std::map<size_t, std::vector<void*>> free_;  // size class -> free blocks of that size
  std::unordered_map<void*, size_t> live_;     // live block -> its size class
  AllocatorStats stats_;
};

// Never destroyed (see context.cpp): tensors may be freed during static destruction.
CachingAllocator& the_allocator() {
  static CachingAllocator* a = new CachingAllocator();
  return *a;
}

// Registers the allocator at program start-up. init() touches no driver state, so this is
// harmless on a machine without a GPU.
struct Registrar {
  Registrar() { init(); }
} g_registrar;

}  // namespace

void init() {
  static std::once_flag once;
  std::call_once(once, [] { register_device_allocator(Device::CUDA, &the_allocator()); });
}

void* device_alloc(size_t bytes, const char* op) { return the_allocator().alloc(bytes, op); }
void device_free(void* p) noexcept { the_allocator().release(p); }

AllocatorStats allocator_stats() { return the_allocator().stats(); }
void empty_cache() {
  if (device_count() == 0) return;
  the_allocator().empty_cache();
}

}  // namespace dnns::cuda
