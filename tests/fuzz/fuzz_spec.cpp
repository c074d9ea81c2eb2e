// libFuzzer target: the graph spec parser (Model::from_spec, nn/model.cpp) and the layer
// factory behind it (make_layer's attribute parsing, shape inference). A spec that parses must
// print back to a spec that parses to the same text. Seeds: tests/fuzz/spec/.
#include "core/error.h"
#include "nn/model.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  std::string printed;
  try {
    printed = dnns::Model::from_spec(text).spec();
  } catch (const dnns::Error&) {
    return 0;
  }
  // Outside the try: a printed spec the parser refuses is a bug, not bad input.
  if (dnns::Model::from_spec(printed).spec() != printed) std::abort();
  return 0;
}
