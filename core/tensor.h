// Tensor: float32, NCHW, contiguous, 64-byte aligned storage, tagged with a device.
// Copies are explicit (`clone`, `to`). A tensor shares its storage on copy-construction,
// like a handle; `reshape` returns a view over the same storage.
#pragma once
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

namespace dnns {

enum class Device { CPU, CUDA };
const char* device_name(Device d);
Device parse_device(const std::string& s);  // "cpu" | "cuda"; throws Error otherwise

using Shape = std::vector<int64_t>;
int64_t shape_numel(const Shape& s);

// Raw memory for one device. CPU memory comes from the aligned host allocator; CUDA memory
// from the allocator the CUDA backend registers (core knows nothing about CUDA itself).
struct DeviceAllocator {
  virtual ~DeviceAllocator() = default;
  virtual void* allocate(size_t bytes) = 0;
  virtual void deallocate(void* p, size_t bytes) = 0;
  // Copies between host and this device; `to_device` chooses the direction.
  virtual void copy(void* dst, const void* src, size_t bytes, bool to_device) = 0;
  virtual void copy_on_device(void* dst, const void* src, size_t bytes) = 0;
  virtual void fill(float* dst, size_t n, float value) = 0;
};
void register_device_allocator(Device d, DeviceAllocator* alloc);  // CUDA backend calls this
// Freed host blocks are kept (up to 2 GiB) for reuse by the next tensor of the same size.
void release_host_cache();   // returns them to the system
size_t host_cache_bytes();   // bytes currently kept
DeviceAllocator* device_allocator(Device d);                       // nullptr if none

class Storage {
 public:
  Storage(size_t bytes, Device dev, bool zero_fill = true);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  Device device() const { return device_; }

 private:
  void* data_ = nullptr;
  size_t bytes_ = 0;
  Device device_;
};

class Tensor {
 public:
  Tensor() = default;  // empty: no storage, numel() == 0
  explicit Tensor(Shape shape, Device dev = Device::CPU);  // zero-filled
  static Tensor zeros(Shape shape, Device dev = Device::CPU) { return Tensor(std::move(shape), dev); }
  // Uninitialised storage, for outputs a kernel overwrites completely (saves a memset).
  static Tensor uninit(Shape shape, Device dev = Device::CPU);
  static Tensor full(Shape shape, float value, Device dev = Device::CPU);
  static Tensor from(Shape shape, const std::vector<float>& values);  // CPU tensor

  const Shape& shape() const { return shape_; }
  int64_t dim(int i) const;  // negative i counts from the end
  int ndim() const { return static_cast<int>(shape_.size()); }
  int64_t numel() const { return numel_; }
  size_t bytes() const { return static_cast<size_t>(numel_) * sizeof(float); }
  bool empty() const { return numel_ == 0; }
  bool defined() const { return storage_ != nullptr; }
  Device device() const { return storage_ ? storage_->device() : Device::CPU; }
  bool is_cpu() const { return device() == Device::CPU; }

  float* data() { return static_cast<float*>(storage_ ? storage_->data() : nullptr); }
  const float* data() const { return static_cast<const float*>(storage_ ? storage_->data() : nullptr); }
  // Element access for CPU tensors (bounds are not checked; use in tests and host code).
  float& operator[](int64_t i) { return data()[i]; }
  float operator[](int64_t i) const { return data()[i]; }

  Tensor clone() const;                // deep copy on the same device
  Tensor to(Device dev) const;         // deep copy onto `dev` (a clone if already there)
  Tensor reshape(Shape shape) const;   // same storage, new shape (numel must match)
  void fill(float value);
  void zero() { fill(0.0f); }
  void copy_from(const Tensor& src);   // same numel; any pair of devices
  std::vector<float> to_vector() const;  // host copy of the values

  bool same_storage(const Tensor& o) const { return storage_ == o.storage_; }

 private:
  Shape shape_;
  int64_t numel_ = 0;
  std::shared_ptr<Storage> storage_;
};

// Maximum absolute elementwise difference of two tensors of equal numel (copied to host).
float max_abs_diff(const Tensor& a, const Tensor& b);

}  // namespace dnns
