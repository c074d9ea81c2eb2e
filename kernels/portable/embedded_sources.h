// The portable runtime's sources as text, compiled into the full build (the file is generated
// from kernels/portable/ by embed_sources.cmake), so that a C-array export can write them next
// to the model it exports without needing the source tree.
#pragma once
#include <cstddef>

namespace dnns::rt {

struct EmbeddedFile {
  const char* name;  // "dnns_runtime.h", "dnns_runtime.cpp"
  const char* text;
  size_t size;
};

const EmbeddedFile* embedded_runtime_files(int* count);

}  // namespace dnns::rt
