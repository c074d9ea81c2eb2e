#include "core/tensor.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <sstream>
#include <unordered_map>
#include <vector>

#include "core/error.h"
#include "core/host_cache.h"

namespace dnns {

std::string shape_str(const std::vector<int64_t>& shape) {
  std::ostringstream os;
  os << "(";
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  os << ")";
  return os.str();
}

void check_shape(const std::vector<int64_t>& got, const std::vector<int64_t>& expected,
                 const std::string& where) {
  if (got != expected)
    throw Error(where + ": expected shape " + shape_str(expected) + ", got " + shape_str(got));
}

const char* device_name(Device d) { return d == Device::CPU ? "cpu" : "cuda"; }

Device parse_device(const std::string& s) {
  if (s == "cpu") return Device::CPU;
  if (s == "cuda") return Device::CUDA;
  throw Error("unknown device '" + s + "' (expected cpu or cuda)");
}

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) {
    if (d < 0) throw Error("negative dimension in shape " + shape_str(s));
    n *= d;
  }
  return n;
}

static DeviceAllocator* g_allocators[2] = {nullptr, nullptr};

void register_device_allocator(Device d, DeviceAllocator* alloc) {
  g_allocators[static_cast<int>(d)] = alloc;
}
DeviceAllocator* device_allocator(Device d) { return g_allocators[static_cast<int>(d)]; }

static DeviceAllocator* need_allocator(Device d) {
  DeviceAllocator* a = device_allocator(d);
  if (!a)
    throw Error(std::string("device '") + device_name(d) +
                "' is not available (this build has no backend for it, or no device was found)");
  return a;
}

// Host blocks are cached by size once freed: a training step allocates the same activation
// and gradient sizes every step, and fresh pages from the OS cost a page fault each (they
// dominated a ResNet-20 step before this cache). Bounded; release_host_cache() empties it.
namespace {
constexpr size_t kHostCacheLimit = size_t(2) << 30;  // bytes kept for reuse at most
struct HostCache {
  std::mutex mu;
  std::unordered_map<size_t, std::vector<void*>> free_blocks;  // rounded size -> blocks
  size_t cached = 0;
};
HostCache& host_cache() {
  static HostCache* c = new HostCache;  // never destroyed: tensors may outlive static destructors
  return *c;
}
size_t round_host(size_t bytes) { return (bytes + 63) / 64 * 64; }  // aligned_alloc's rule

void* host_allocate(size_t bytes) {
  size_t rounded = round_host(bytes);
  HostCache& c = host_cache();
  {
    std::lock_guard<std::mutex> lock(c.mu);
    auto it = c.free_blocks.find(rounded);
    if (it != c.free_blocks.end() && !it->second.empty()) {
      void* p = it->second.back();
      it->second.pop_back();
      c.cached -= rounded;
      return p;
    }
  }
  void* p = std::aligned_alloc(64, rounded);
  if (!p) throw Error("out of host memory allocating " + std::to_string(bytes) + " bytes");
  return p;
}

void host_free(void* p, size_t bytes) {
  size_t rounded = round_host(bytes);
  HostCache& c = host_cache();
  {
    std::lock_guard<std::mutex> lock(c.mu);
    if (c.cached + rounded <= kHostCacheLimit) {
      c.free_blocks[rounded].push_back(p);
      c.cached += rounded;
      return;
    }
  }
  std::free(p);
}
}  // namespace

void release_host_cache() {
  HostCache& c = host_cache();
  std::lock_guard<std::mutex> lock(c.mu);
  for (auto& [size, blocks] : c.free_blocks)
    for (void* p : blocks) std::free(p);
  c.free_blocks.clear();
  c.cached = 0;
}

void fill_host_cache(unsigned char byte) {
  HostCache& c = host_cache();
  std::lock_guard<std::mutex> lock(c.mu);
  for (auto& [size, blocks] : c.free_blocks)
    for (void* p : blocks) std::memset(p, byte, size);
}

size_t host_cache_bytes() {
  HostCache& c = host_cache();
  std::lock_guard<std::mutex> lock(c.mu);
  return c.cached;
}

Storage::Storage(size_t bytes, Device dev, bool zero_fill) : bytes_(bytes), device_(dev) {
  if (bytes == 0) return;
  if (dev == Device::CPU) {
    data_ = host_allocate(bytes);
    if (zero_fill) std::memset(data_, 0, bytes);
  } else {
    DeviceAllocator* a = need_allocator(dev);
    data_ = a->allocate(bytes);
    if (zero_fill) a->fill(static_cast<float*>(data_), bytes / sizeof(float), 0.0f);
  }
}

Storage::~Storage() {
  if (!data_) return;
  if (device_ == Device::CPU) host_free(data_, bytes_);
  else if (DeviceAllocator* a = device_allocator(device_)) a->deallocate(data_, bytes_);
}

Tensor::Tensor(Shape shape, Device dev) : shape_(std::move(shape)) {
  numel_ = shape_numel(shape_);
  storage_ = std::make_shared<Storage>(bytes(), dev);
}

Tensor Tensor::uninit(Shape shape, Device dev) {
  Tensor t;
  t.shape_ = std::move(shape);
  t.numel_ = shape_numel(t.shape_);
  t.storage_ = std::make_shared<Storage>(t.bytes(), dev, false);
  return t;
}

Tensor Tensor::full(Shape shape, float value, Device dev) {
  Tensor t(std::move(shape), dev);
  t.fill(value);
  return t;
}

Tensor Tensor::from(Shape shape, const std::vector<float>& values) {
  Tensor t(std::move(shape));
  check(static_cast<int64_t>(values.size()) == t.numel(),
        "Tensor::from: " + std::to_string(values.size()) + " values for shape " + shape_str(t.shape()));
  std::copy(values.begin(), values.end(), t.data());
  return t;
}

int64_t Tensor::dim(int i) const {
  int n = ndim();
  if (i < 0) i += n;
  check(i >= 0 && i < n, "Tensor::dim(" + std::to_string(i) + ") out of range for shape " + shape_str(shape_));
  return shape_[i];
}

Tensor Tensor::clone() const { return to(device()); }

Tensor Tensor::to(Device dev) const {
  Tensor t(shape_, dev);
  t.copy_from(*this);
  return t;
}

Tensor Tensor::reshape(Shape shape) const {
  check(shape_numel(shape) == numel_,
        "reshape: cannot view " + shape_str(shape_) + " as " + shape_str(shape));
  Tensor t = *this;
  t.shape_ = std::move(shape);
  return t;
}

void Tensor::fill(float value) {
  if (numel_ == 0) return;
  if (is_cpu()) std::fill(data(), data() + numel_, value);
  else need_allocator(device())->fill(data(), numel_, value);
}

void Tensor::copy_from(const Tensor& src) {
  check(src.numel() == numel_, "copy_from: source " + shape_str(src.shape()) +
                                   " and destination " + shape_str(shape_) + " differ in size");
  if (numel_ == 0 || src.data() == data()) return;
  Device s = src.device(), d = device();
  if (s == Device::CPU && d == Device::CPU) std::memcpy(data(), src.data(), bytes());
  else if (s == Device::CPU) need_allocator(d)->copy(data(), src.data(), bytes(), true);
  else if (d == Device::CPU) need_allocator(s)->copy(data(), src.data(), bytes(), false);
  else need_allocator(d)->copy_on_device(data(), src.data(), bytes());
}

std::vector<float> Tensor::to_vector() const {
  std::vector<float> v(numel_);
  if (numel_ == 0) return v;
  if (is_cpu()) std::memcpy(v.data(), data(), bytes());
  else need_allocator(device())->copy(v.data(), data(), bytes(), false);
  return v;
}

float max_abs_diff(const Tensor& a, const Tensor& b) {
  check(a.numel() == b.numel(), "max_abs_diff: sizes differ: " + shape_str(a.shape()) + " vs " +
                                    shape_str(b.shape()));
  std::vector<float> x = a.to_vector(), y = b.to_vector();
  float m = 0.0f;
  for (size_t i = 0; i < x.size(); ++i) {
    float d = std::fabs(x[i] - y[i]);
    if (std::isnan(d)) return NAN;
    m = std::max(m, d);
  }
  return m;
}

}  // namespace dnns
