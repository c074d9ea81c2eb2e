#include "datasets/io.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>

#include <zlib.h>

#include "core/error.h"

namespace dnns::detail {

std::vector<uint8_t> read_file(const std::string& path) {
  std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (!f) throw Error(path + ": cannot open (" + std::strerror(errno) + ")");
  std::vector<uint8_t> bytes;
  uint8_t chunk[1 << 16];
  size_t n;
  while ((n = std::fread(chunk, 1, sizeof chunk, f.get())) > 0) bytes.insert(bytes.end(), chunk, chunk + n);
  if (std::ferror(f.get())) throw Error(path + ": read error (" + std::strerror(errno) + ")");
  return bytes;
}

std::vector<uint8_t> read_maybe_gzip(const std::string& path) {
  std::vector<uint8_t> raw = read_file(path);
  if (raw.size() < 2 || raw[0] != 0x1f || raw[1] != 0x8b) return raw;
  raw.clear();
  raw.shrink_to_fit();

  gzFile gz = gzopen(path.c_str(), "rb");
  if (!gz) throw Error(path + ": cannot open as gzip (" + std::strerror(errno) + ")");
  std::vector<uint8_t> out;
  std::vector<uint8_t> chunk(1 << 16);
  int errnum = Z_OK;
  for (;;) {
    const int n = gzread(gz, chunk.data(), static_cast<unsigned>(chunk.size()));
    if (n < 0) break;
    if (n == 0) break;
    out.insert(out.end(), chunk.begin(), chunk.begin() + n);
  }
  // zlib reports a stream cut short as Z_BUF_ERROR with an ordinary end of data, so the
  // error state is checked whatever gzread returned.
  const char* msg = gzerror(gz, &errnum);
  const std::string reason = msg ? msg : "";
  const int close_status = gzclose_r(gz);
  if (errnum != Z_OK && errnum != Z_STREAM_END)
    throw Error(path + ": corrupt or truncated gzip data (" + reason + ")");
  if (close_status != Z_OK) throw Error(path + ": corrupt or truncated gzip data (close failed)");
  return out;
}

}  // namespace dnns::detail
