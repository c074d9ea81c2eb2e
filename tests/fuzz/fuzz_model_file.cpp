// libFuzzer target: the portable runtime's model reader (kernels/portable/model_file.cpp,
// load_model_memory) and, for a model it accepts, its planner and one forward pass of a zero
// image (kernels/portable/dnns_runtime.cpp) when the activations are small. Mutated inputs are
// re-sealed with a fresh CRC (fuzz_util.h). Seeds: tests/fuzz/model_file/ (model archives).
#include <vector>

#include "dnns_runtime.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" size_t LLVMFuzzerCustomMutator(uint8_t* data, size_t size, size_t max_size, unsigned int seed) {
  return dnns::fuzz::mutate_archive(data, size, max_size, seed);
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace rt = dnns::rt;
  rt::LoadedModel m;
  if (rt::load_model_memory(data, size, "fuzz-input", &m) != rt::kOk) {
    if (m.error[0] == '\0') std::abort();  // a refusal always says why
    return 0;
  }
  std::vector<rt::NodePlan> plan(m.graph.num_nodes);
  int64_t per_image = 0;
  char err[256];
  if (rt::plan_graph(m.graph, plan.data(), &per_image, err, sizeof err) == rt::kOk && per_image <= (1 << 14)) {
    std::vector<float> arena(per_image), input(int64_t(m.graph.in_c) * m.graph.in_h * m.graph.in_w, 0.0f);
    rt::Engine e;
    if (rt::engine_init(&e, &m.graph, plan.data(), arena.data(), per_image, 1) == rt::kOk) {
      std::vector<float> out(rt::engine_output_size(&e));
      rt::engine_run(&e, input.data(), 1, out.data());
    }
  }
  rt::free_model(&m);
  return 0;
}
