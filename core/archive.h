// Checkpoint archives: the one binary file format for models, masks, optimizer state and run
// state. An archive is a kind, text entries (meta) and named float32 tensors. Saving is atomic
// (a temporary file in the same folder, fsync, rename), and loading validates everything, so a
// crash never leaves a half-written file and a wrong, truncated or corrupt file is refused with
// a message that names the file and the problem; nothing is silently loaded.
//
// File layout, format version 2 (version 1, the same without the per-tensor encoding byte and
// with every tensor dense, is still read, and written on request). All integers are
// little-endian; strings are raw bytes (any byte, '\0' included) with a length prefix and no
// terminator.
//
//   offset  size        field
//   0       8           magic "DNNSHIFT"
//   8       4           u32 format version (2; 1 is read too)
//   12      4           u32 flags (0; any other value is refused)
//   16      4 + n       kind: u32 n (<= 4096), n bytes
//           8           u64 number of meta entries, then per entry, sorted by key:
//                         u32 key length (<= 4096), key bytes,
//                         u64 value length, value bytes
//           8           u64 number of tensors, then per tensor, sorted by name:
//                         u32 name length (<= 4096), name bytes,
//                         u32 ndim (<= 8), ndim x i64 dims (each in [0, 2^40]),
//                         u8 encoding (version 2 only; version 1: always dense), then
//                           0 dense:  product(dims) x f32, row-major (no padding or alignment)
//                           1 sparse: u8 index coding (1 bitmap, 2 gap8: core/sparse.h), u64 count,
//                                     u64 index length L, L index bytes, count x f32 values (the
//                                     kept positions' values, ascending); every other value +0.0
//                           2 ones:   as sparse without the values: 1.0 at the kept positions
//                           3 ones at the support of another tensor: u32 length, its name; that
//                                     tensor is a sparse record of the same shape, and lends its
//                                     support to at most one such record (how a mask is stored
//                                     beside its weight)
//           4           u32 CRC-32 (IEEE 802.3: reflected polynomial 0xEDB88320, initial value
//                       and final xor 0xFFFFFFFF, the zlib crc32) of every byte before it
//           8           end marker "ENDSHIFT"
//   The end marker is the last byte of the file; anything after it is refused.
//
// A 0-d tensor (shape ()) holds one value; a tensor with a zero dimension holds none. Loaded
// tensors are dense whatever their encoding, bit for bit what was saved (-0.0 included).
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>

#include "core/tensor.h"

namespace dnns {

constexpr uint32_t kArchiveFormatVersion = 2;       // written by default: sparse records
constexpr uint32_t kArchiveFormatVersionDense = 1;  // every tensor dense; read, and written on request

// The name prefix of a weight's mask ("mask:conv1.weight"): save_archive stores such a mask as
// the support of its weight's sparse record when the weight is +0.0 wherever the mask is 0.
constexpr const char* kMaskPrefix = "mask:";

struct Archive {
  std::string kind;                         // what the file holds: "model", "checkpoint", "mask", ...
  std::map<std::string, std::string> meta;  // text entries: graph spec, hyper-parameters (JSON text), run state
  std::map<std::string, Tensor> tensors;    // named float32 tensors with shapes (CPU tensors when loaded)
  uint32_t format_version = 0;              // the file's, set by load_archive (save_archive ignores it)
};

// Writes atomically: to "<path>.tmp.<pid>" in the same folder, fsync, rename over `path`, so a
// crash never leaves a half-written file; CUDA tensors are copied to host to write. Throws Error
// (message starting with `path`) when the folder does not exist, the disk is full, a name is
// longer than 4096 bytes, a tensor has more than 8 dimensions or is undefined (default-
// constructed; leave such tensors out of the archive) or the format version is not 1 or 2; the
// temporary file is removed then.
// Two threads of one process must not save to the same path at the same time.
// Format version 2 stores each tensor in its smallest encoding: dense, or its values that are not
// +0.0 with their positions (sparse; "ones" when they are all 1.0), or a mask as the support of
// its weight (kMaskPrefix); bytes on disk then follow the surviving weights of a pruned model.
// format_version 1 writes the old all-dense layout, for readers that predate version 2.
struct ArchiveWriteOptions {
  uint32_t format_version = kArchiveFormatVersion;
};
void save_archive(const std::string& path, const Archive& a, const ArchiveWriteOptions& options = {});

// Reads and validates everything; throws Error whose message starts with `path` and says what
// is wrong: missing or unreadable file, bad magic, unsupported version, truncation (section and
// offset), checksum mismatch, malformed entry (a sparse index that does not describe exactly
// its count of positions inside the tensor among them), trailing bytes. A dense tensor is never
// larger than the file; a sparse one is bounded by its index (core/sparse.h: at most ~1000x its
// bytes), whatever the file claims.
Archive load_archive(const std::string& path);

// Reads only kind and meta (tensors stays empty), for quick inspection; the whole file is still
// read to validate its structure and checksum.
Archive load_archive_meta(const std::string& path);

// CRC-32 (IEEE, as in zlib's crc32) of `n` bytes, continuing from `crc` (0 to start).
uint32_t crc32_update(uint32_t crc, const void* data, size_t n);

// Run state in meta, stored as text that round-trips exactly. The getters throw Error naming the
// key when it is missing or does not hold a number of that type.
// Integers are stored in decimal; doubles as hex floats ("0x1.999999999999ap-4"), which keep
// every bit, -0.0 and infinities included, and NaNs as "nan:0x<64-bit pattern>" to keep their
// payload. meta_get_f64 also reads decimal text ("0.05", "-1e-3", "inf") written by hand.
void meta_set_u64(Archive& a, const std::string& key, uint64_t v);
uint64_t meta_get_u64(const Archive& a, const std::string& key);
void meta_set_f64(Archive& a, const std::string& key, double v);
double meta_get_f64(const Archive& a, const std::string& key);

// The tensor `name` of `a`; throws "<path_for_errors>: tensor 'name' ..." when it is missing or
// its shape differs from `expected_shape`.
const Tensor& archive_tensor(const Archive& a, const std::string& name, const Shape& expected_shape,
                             const std::string& path_for_errors);

}  // namespace dnns
