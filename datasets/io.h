// Small file helpers shared by the readers (internal to datasets/).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace dnns::detail {

// The whole file, or Error "<path>: cannot open (<reason>)" / "...: read error".
std::vector<uint8_t> read_file(const std::string& path);

// The file's bytes, decompressed when it starts with the gzip magic 1f 8b. A damaged or
// truncated gzip stream throws Error naming the file.
std::vector<uint8_t> read_maybe_gzip(const std::string& path);

}  // namespace dnns::detail
