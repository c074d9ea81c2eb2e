// libFuzzer target: the JSON reader (parse_json, core/json.h) and its typed accessors.
// Seeds: tests/fuzz/json/.
#include "core/error.h"
#include "core/json.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

// Calls every accessor on every value, as the manifest and trace readers do.
void walk(const dnns::JsonValue& v, int depth) {
  using dnns::json_type_name;
  try { dnns::json_double(v, "v"); } catch (const dnns::Error&) {}
  try { dnns::json_int(v, "v"); } catch (const dnns::Error&) {}
  try { dnns::json_string(v, "v"); } catch (const dnns::Error&) {}
  try { dnns::json_bool(v, "v"); } catch (const dnns::Error&) {}
  try { dnns::json_array(v, "v"); } catch (const dnns::Error&) {}
  if (json_type_name(v.type) == nullptr) std::abort();
  for (const auto& item : v.items) walk(item, depth + 1);
  for (const auto& [key, member] : v.members) {
    if (v.find(key) == nullptr) std::abort();
    try { dnns::json_field(v, key, "v"); } catch (const dnns::Error&) {}
    walk(member, depth + 1);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    walk(dnns::parse_json(text, "fuzz.json"), 0);
  } catch (const dnns::Error&) {
  }
  return 0;
}
