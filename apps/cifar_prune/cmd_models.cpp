#include <cstdio>

#include "apps/cifar_prune/commands.h"
#include "core/cli.h"
#include "core/error.h"
#include "nn/models/zoo.h"

namespace dnns::app {

int cmd_models(int argc, char** argv) {
  Flags f("cifar_prune models", "Lists the model zoo: parameters and forward cost of one image.");
  f.add("classes", "10", "number of classes");
  f.add("input", "3,32,32", "input shape C,H,W");
  if (!f.parse(argc, argv)) return 0;
  int classes = static_cast<int>(f.integer("classes"));
  Shape in;
  {
    std::string s = f.str("input");
    size_t a = s.find(','), b = s.rfind(',');
    check(a != std::string::npos && b != a, "--input expects C,H,W, got '" + s + "'");
    in = {std::stoll(s.substr(0, a)), std::stoll(s.substr(a + 1, b - a - 1)), std::stoll(s.substr(b + 1))};
  }
  std::printf("%-10s %14s %14s %14s %8s\n", "model", "parameters", "MACs", "FLOPs", "layers");
  for (const std::string& name : zoo_names()) {
    Model m = build_model(name, classes, in);
    int layers = 0;
    for (const Node& n : m.nodes())
      if (n.layer && (n.layer->kind() == LayerKind::Conv || n.layer->kind() == LayerKind::Linear)) ++layers;
    int64_t macs = m.forward_macs();
    std::printf("%-10s %14lld %14lld %14lld %8d\n", name.c_str(), (long long)m.num_params(), (long long)macs,
                (long long)(2 * macs), layers);
  }
  std::printf("\nFLOPs = 2 x multiply-accumulates of the conv and linear layers, one %lldx%lldx%lld image.\n",
              (long long)in[0], (long long)in[1], (long long)in[2]);
  return 0;
}

}  // namespace dnns::app
