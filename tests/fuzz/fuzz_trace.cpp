// libFuzzer target: the shifter's trace readers (parse_trace_csv / parse_trace_json,
// prune/shifter.h). The first byte picks the format (even: CSV, odd: JSON), the rest is the
// text. Seeds: tests/fuzz/trace/.
#include "core/error.h"
#include "prune/shifter.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string text(reinterpret_cast<const char*>(data) + 1, size - 1);
  try {
    std::vector<dnns::TracePhase> phases =
        data[0] % 2 ? dnns::parse_trace_json(text, "fuzz.json") : dnns::parse_trace_csv(text, "fuzz.csv");
    // The documented contract: times >= 0 and increasing.
    for (size_t i = 0; i < phases.size(); ++i)
      if (!(phases[i].time_s >= 0) || (i > 0 && !(phases[i].time_s > phases[i - 1].time_s))) std::abort();
  } catch (const dnns::Error&) {
  }
  return 0;
}
