// libFuzzer target: the checkpoint archive reader (core/archive.cpp) and, for archives of kind
// "model", the model loader behind it (Model::from_archive: graph spec, tensor shapes, masks).
// Mutated inputs are re-sealed with a fresh CRC (fuzz_util.h), so the structure parsers behind
// the checksum are reached. Seeds: tests/fuzz/archive/.
#include "core/error.h"
#include "nn/model.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" size_t LLVMFuzzerCustomMutator(uint8_t* data, size_t size, size_t max_size, unsigned int seed) {
  return dnns::fuzz::mutate_archive(data, size, max_size, seed);
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = dnns::fuzz::scratch_dir() + "/input.dnns";
  dnns::fuzz::write_file(path, data, size);
  try {
    dnns::Archive meta = dnns::load_archive_meta(path);
    dnns::Archive a = dnns::load_archive(path);
    // Both views of one file must agree (the meta reader skips the tensors it does not keep).
    if (meta.kind != a.kind || meta.meta != a.meta) std::abort();
    if (a.kind == "model") dnns::Model::from_archive(a, path);
  } catch (const dnns::Error&) {
  }
  return 0;
}
