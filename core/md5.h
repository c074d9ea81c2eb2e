// MD5 (RFC 1321), for checking downloads against the checksums data sets publish. Not for
// anything that needs collision resistance.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace dnns {

class Md5 {
 public:
  Md5();
  void update(const void* data, size_t n);
  std::string hex();  // 32 lowercase hex digits; ends the computation (call once)

 private:
  void block(const uint8_t* p);  // one 64-byte block
  uint32_t h_[4];
  uint8_t buf_[64];
  size_t buffered_ = 0;
  uint64_t total_ = 0;  // bytes seen
};

std::string md5_hex(const std::string& bytes);
// The MD5 of a file, read in chunks; throws Error "<path>: cannot open ..." / "read error".
std::string md5_file(const std::string& path);

}  // namespace dnns
