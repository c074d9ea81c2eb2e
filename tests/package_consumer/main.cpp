// Uses the installed headers and libraries: builds a tiny model with known weights, prunes one
// filter, compacts it, and checks the logits against values computed by hand. Exit status 0
// and "package consumer: OK" only when every check holds.
#include <cstdio>
#include <memory>

#include "core/json.h"
#include "nn/layers.h"
#include "nn/model.h"
#include "prune/compact.h"

using namespace dnns;

int main() {
  // (1, 2, 2) -> conv 1x1, 2 filters -> ReLU -> flatten (8) -> linear (2)
  Model m;
  int x = m.add_input({1, 2, 2});
  int c = m.add("conv", std::make_unique<Conv2d>(1, 2, 1, 1, 1, 0, true), {x});
  int r = m.add("relu", std::make_unique<ReLU>(), {c});
  int f = m.add("flat", std::make_unique<Flatten>(), {r});
  m.add("fc", std::make_unique<Linear>(8, 2), {f});
  auto& conv = static_cast<Conv2d&>(*m.nodes()[c].layer);
  auto& fc = static_cast<Linear&>(*m.nodes().back().layer);
  conv.weight.value = Tensor::from({2, 1, 1, 1}, {2.0f, 3.0f});
  conv.bias.value = Tensor::from({2}, {0.0f, 0.5f});
  fc.weight.value = Tensor::from({2, 8}, {1, 1, 1, 1, 1, 1, 1, 1,  //
                                          1, -1, 0, 0, 0, 0, 0, 2});
  fc.bias.value = Tensor::from({2}, {0.0f, 1.0f});
  // Prune filter 1: it then emits relu(0.5) = 0.5 everywhere, a constant compaction folds.
  m.masks["conv.weight"] = Tensor::from({2, 1, 1, 1}, {1.0f, 0.0f});
  m.apply_masks();

  // relu(2x) = (2, 0, 6, 8), then 0.5 x 4: logits (2 + 6 + 8 + 2, 2 - 0 + 1 + 1) = (18, 4).
  Tensor in = Tensor::from({1, 1, 2, 2}, {1, -2, 3, 4});
  Tensor masked = m.forward(in, false);
  Model small = compact_model(m);
  Tensor compact = small.forward(in, false);
  int failures = 0;
  auto expect = [&](bool ok, const char* what) {
    if (!ok) std::fprintf(stderr, "package consumer: FAILED: %s\n", what), ++failures;
  };
  expect(masked.shape() == Shape{1, 2} && compact.shape() == Shape{1, 2}, "logits of shape (1, 2)");
  expect(masked[0] == 18.0f && masked[1] == 4.0f, "masked logits (18, 4)");
  expect(compact[0] == 18.0f && compact[1] == 4.0f, "compact logits (18, 4)");
  // Compact: conv 1 filter (1 + 1) + linear 4 -> 2 (8 + 2) = 12 parameters, from 22.
  expect(m.num_params() == 22 && small.num_params() == 12, "22 -> 12 parameters");
  std::string line = Json().add("params", small.num_params()).add("logit0", compact[0]).str();
  expect(json_int(json_field(parse_json(line, "json"), "params", "json"), "params") == 12, "JSON round trip");
  if (failures) return 1;
  std::printf("package consumer: OK (logits %g %g, %lld -> %lld parameters)\n", compact[0], compact[1],
              static_cast<long long>(m.num_params()), static_cast<long long>(small.num_params()));
  return 0;
}
