// cifar_prune import MODEL.onnx --out MODEL.dnns: a CNN trained (and pruned) elsewhere, read
// from ONNX into a model file; its exact zeros become the masks (nn/import/onnx_import.h).
#include <cstdio>

#include "apps/cifar_prune/commands.h"
#include "core/cli.h"
#include "core/error.h"
#ifdef DNNS_HAVE_ONNX_IMPORT
#include "nn/import/onnx_import.h"
#endif

namespace dnns::app {

int cmd_import(int argc, char** argv) {
  Flags f("cifar_prune import MODEL.onnx",
          "Imports a CNN from ONNX (e.g. torch.onnx.export of a VGG or ResNet) into a model file.\n"
          "Supported: Conv, BatchNormalization, Relu, MaxPool, AveragePool, GlobalAveragePool,\n"
          "Flatten/Reshape, Gemm/MatMul, Add, Identity, Dropout and the shape arithmetic PyTorch\n"
          "puts before a Reshape; anything else is refused by name. Weights that are exactly zero\n"
          "become the masks, so a model pruned in PyTorch compacts here (cifar_prune export --compact).");
  f.add("out", "", "the model file to write (required)");
  f.add_bool("graph", "print the imported graph spec");
  if (!f.parse(argc, argv, 1, 1)) return 0;
  check(f.positional().size() == 1, "import: give the ONNX file to import (cifar_prune import MODEL.onnx --out M.dnns)");
  check(!f.str("out").empty(), "import: --out is required");
#ifdef DNNS_HAVE_ONNX_IMPORT
  const std::string path = f.positional()[0], out = f.str("out");
  OnnxImportInfo info;
  Model m = import_onnx(path, &info);
  const Shape& in = m.input_shape();
  const auto shapes = m.infer_shapes(1);
  std::printf("read %s: %s, opset %lld, %d ONNX nodes (%d constants evaluated, %d folded adds, %d aliases)\n",
              path.c_str(), info.producer.empty() ? "unknown producer" : info.producer.c_str(), (long long)info.opset,
              info.onnx_nodes, info.constant_nodes, info.folded_adds, info.aliases);
  std::printf("model: %zu layers, input (%lld, %lld, %lld), output %s per image, %lld parameters, %lld MACs per image\n",
              m.nodes().size() - 1, (long long)in[0], (long long)in[1], (long long)in[2],
              shape_str(Shape(shapes[m.output_node()].begin() + 1, shapes[m.output_node()].end())).c_str(),
              (long long)m.num_params(), (long long)m.forward_macs());
  std::printf("masks: %lld of %lld conv/linear weights are zero (%.2f%% remaining)\n", (long long)info.zero_weights,
              (long long)info.weights,
              info.weights ? 100.0 * double(info.weights - info.zero_weights) / double(info.weights) : 100.0);
  if (f.flag("graph")) std::printf("\n%s\n", m.spec().c_str());
  m.save(out);
  std::printf("wrote %s\n", out.c_str());
  return 0;
#else
  throw Error("this build has no ONNX import: libonnx-dev and libprotobuf-dev were not found when it was configured "
              "(install them, e.g. with scripts/setup.sh, and configure again)");
#endif
}

}  // namespace dnns::app
