#include <cmath>
#include <cstdio>

#include "apps/cifar_prune/commands.h"
#include "core/cli.h"
#include "core/error.h"
#include "core/rng.h"
#include "nn/export/export.h"
#include "prune/compact.h"

namespace dnns::app {

int cmd_export(int argc, char** argv) {
  Flags f("cifar_prune export MODEL",
          "Exports a model file for edge deployment (eval-mode inference graph):\n"
          "  --format onnx --out FILE.onnx   ONNX (opset 13), batchnorm folded into the convs\n"
          "  --format c    --out DIR         a header of constant arrays and a static node table, an\n"
          "                                  example main and the portable runtime sources: compile with\n"
          "                                  `c++ -std=c++17 -O2 DIR/*.cpp` (no file system or library needed)\n"
          "--compact first turns a masked (pruned) model into its exact compact form.");
  f.add("format", "onnx", "onnx or c");
  f.add("out", "", "output file (onnx) or folder (c)");
  f.add("name", "dnns_model", "c: the C identifier of the exported model (file and symbol names)");
  f.add_bool("compact", "compact the masked model before exporting");
  if (!f.parse(argc, argv, 1, 1)) return 0;
  check(f.positional().size() == 1, "export: give the model file to export (cifar_prune export MODEL --out ...)");
  check(!f.str("out").empty(), "export: --out is required");
  const std::string path = f.positional()[0], format = f.str("format"), out = f.str("out");
  check(format == "onnx" || format == "c", "export: --format must be onnx or c, got '" + format + "'");

  Model model = Model::load(path);
  std::printf("loaded %s: %s, %lld parameters, %zu nodes\n", path.c_str(), model.arch.c_str(),
              (long long)model.num_params(), model.nodes().size());
  if (f.flag("compact")) {
    model.apply_masks();
    CompactReport rep;
    model = compact_model(model, &rep);
    std::printf("compacted: %lld -> %lld parameters, %lld -> %lld MACs per image, %lld channels removed\n",
                (long long)rep.params_before, (long long)rep.params_after, (long long)rep.macs_before,
                (long long)rep.macs_after, (long long)rep.channels_removed);
  }

  if (format == "onnx") {
    OnnxExportInfo info;
    export_onnx(model, out, &info);
    std::printf("wrote %s: %lld bytes, %d ONNX nodes, %d initializers, %d batchnorms folded, %d constant layers\n",
                out.c_str(), (long long)info.bytes, info.nodes, info.initializers, info.folded_batchnorms,
                info.constant_layers);
    return 0;
  }

  CExportInfo info = export_c(model, out, f.str("name"));
  // What the exported code computes, checked against the full build on random images.
  Rng rng(1);
  const Shape& in = model.input_shape();
  Tensor x({2, in[0], in[1], in[2]});
  for (int64_t i = 0; i < x.numel(); ++i) x[i] = rng.normal();
  Tensor a = model.forward(x, false), b = run_portable(model, x);
  float scale = 1.0f;
  for (int64_t i = 0; i < a.numel(); ++i) scale = std::max(scale, std::fabs(a[i]));
  const float diff = max_abs_diff(a, b);
  for (const std::string& file : info.files) std::printf("wrote %s\n", file.c_str());
  std::printf("%lld weights (%.1f KiB) + %.1f KiB of sparse weight indices, arena %.1f KiB per image; portable "
              "runtime vs this build on 2 random images: max |output diff| %.3g at scale %.3g\n",
              (long long)info.weight_floats, info.weight_floats * 4 / 1024.0, info.index_bytes / 1024.0,
              info.arena_floats_per_image * 4 / 1024.0, double(diff), double(scale));
  check(diff <= 1e-4f * scale, "export: the portable runtime's outputs differ from this build's by " +
                                   std::to_string(diff) + " (scale " + std::to_string(scale) + ")");
  std::printf("build: c++ -std=c++17 -O2 -o %s %s/%s_main.cpp %s/dnns_runtime.cpp\n", f.str("name").c_str(),
              out.c_str(), f.str("name").c_str(), out.c_str());
  return 0;
}

}  // namespace dnns::app
