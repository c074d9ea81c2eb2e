// Shared helpers of the libFuzzer targets (tests/fuzz/fuzz_*.cpp; scripts/fuzz.sh runs them).
//
// The contract every target checks: whatever the bytes, a reader either returns a value or
// throws dnns::Error. Any other exception escapes the target and libFuzzer reports it as a
// crash, as it does for memory errors (ASan), undefined behaviour (UBSan), leaks, hangs and
// allocations beyond -rss_limit_mb.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <unistd.h>

#include "core/archive.h"

namespace dnns::fuzz {

// A private folder for the files a target writes (the readers under test take paths), made
// once per process under $TMPDIR (tmpfs /dev/shm when present, to keep the disk out of the
// loop) and removed at exit.
inline const std::string& scratch_dir() {
  static const std::string dir = [] {
    const char* base = std::getenv("TMPDIR");
    std::string root = base && *base ? base : (access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp");
    std::string tmpl = root + "/dnns-fuzz-XXXXXX";
    if (!mkdtemp(tmpl.data())) {
      std::perror("fuzz: mkdtemp");
      std::abort();
    }
    static std::string to_remove;
    to_remove = tmpl;
    std::atexit([] { std::system(("rm -rf '" + to_remove + "'").c_str()); });
    return tmpl;
  }();
  return dir;
}

// Writes `n` bytes to `path` (replacing it); aborts on failure, which is the harness's, not
// the reader's.
inline void write_file(const std::string& path, const uint8_t* data, size_t n) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f || (n && std::fwrite(data, 1, n, f) != n) || std::fclose(f) != 0) {
    std::perror(("fuzz: cannot write " + path).c_str());
    std::abort();
  }
}

// The archive format (core/archive.h) ends with a CRC-32 of every byte before it and the end
// marker "ENDSHIFT". Random mutations break the CRC, and a reader refuses the file at its
// checksum before the parsers behind it see anything, so the custom mutators below re-seal
// most mutated files: when the end marker is in place, the CRC slot gets the CRC of the body.
// Returns whether it did.
inline bool reseal_archive(uint8_t* data, size_t size) {
  constexpr size_t kTrailer = 4 + 8;
  if (size < 16 + kTrailer || std::memcmp(data + size - 8, "ENDSHIFT", 8) != 0) return false;
  uint32_t crc = crc32_update(0, data, size - kTrailer);
  for (int i = 0; i < 4; ++i) data[size - kTrailer + i] = static_cast<uint8_t>(crc >> (8 * i));
  return true;
}

// Mutates an archive-format input with libFuzzer's own mutator, then re-seals it (7 times in
// 8, so that damaged checksums stay covered too). For LLVMFuzzerCustomMutator.
extern "C" size_t LLVMFuzzerMutate(uint8_t* data, size_t size, size_t max_size);
inline size_t mutate_archive(uint8_t* data, size_t size, size_t max_size, unsigned int seed) {
  size = LLVMFuzzerMutate(data, size, max_size);
  if (seed % 8 != 0) reseal_archive(data, size);
  return size;
}

}  // namespace dnns::fuzz
