// cifar_prune inspect FILE: what a model or checkpoint file holds.
#include <cstdio>
#include <filesystem>

#include "apps/cifar_prune/commands.h"
#include "core/archive.h"
#include "core/cli.h"
#include "core/error.h"
#include "core/fs.h"
#include "nn/model.h"
#include "prune/mask.h"

namespace dnns::app {

int cmd_inspect(int argc, char** argv) {
  Flags f("cifar_prune inspect FILE", "Shows the graph, parameters and masks of a model or checkpoint file.");
  f.add("spec-out", "", "also write the graph spec (text) to this file");
  f.add_bool("graph", "print the graph spec");
  if (!f.parse(argc, argv, 1, 1)) return 0;
  check(f.positional().size() == 1, "cifar_prune inspect: give a model or checkpoint file (see --help)");
  const std::string path = f.positional()[0];
  Archive a = load_archive(path);
  std::error_code ec;
  const uintmax_t bytes = std::filesystem::file_size(path, ec);
  std::printf("%s: %s, format version %u (%s), %zu tensors, %.1f KiB\n", path.c_str(), a.kind.c_str(),
              a.format_version, a.format_version >= 2 ? "sparse records" : "all dense", a.tensors.size(),
              ec ? 0.0 : double(bytes) / 1024.0);
  if (a.meta.count("graph")) {
    Archive model_part = a;
    for (auto it = model_part.tensors.begin(); it != model_part.tensors.end();)
      it = it->first.rfind("optim:", 0) == 0 ? model_part.tensors.erase(it) : std::next(it);
    Model m = Model::from_archive(model_part, path);
    int64_t masked = 0, total = 0;
    for (const auto& [name, mask] : m.masks) {
      total += mask.numel();
      masked += mask.numel() - mask_count(mask);
    }
    std::printf("arch %s, %zu nodes, %lld parameters, %lld forward FLOPs (one image)\n", m.arch.c_str(),
                m.nodes().size(), (long long)m.num_params(), (long long)(2 * m.forward_macs()));
    if (total)
      std::printf("masks on %zu weights: %lld of %lld masked (%.2f%% remaining)\n", m.masks.size(), (long long)masked,
                  (long long)total, 100.0 * (total - masked) / total);
    const DataInfo& d = m.data_info;
    if (d.empty()) {
      std::printf("data: not recorded (a file from before models recorded their data set)\n");
    } else {
      std::printf("data: %s, input %s %s", d.dataset.empty() ? "(unnamed)" : d.dataset.c_str(),
                  shape_str(m.input_shape()).c_str(), d.channel_order.c_str());
      for (size_t c = 0; c < d.mean.size(); ++c) std::printf("%s%.4f/%.4f", c ? " " : ", mean/std ", d.mean[c], d.std[c]);
      std::printf("\n");
      if (!d.class_names.empty()) {
        std::printf("classes (%zu):", d.class_names.size());
        for (size_t k = 0; k < d.class_names.size(); ++k) std::printf("%s%s", k ? ", " : " ", d.class_names[k].c_str());
        std::printf("\n");
      }
    }
    if (a.meta.count("step")) std::printf("training step %s\n", a.meta.at("step").c_str());
    if (f.flag("graph")) std::printf("\n%s", m.spec().c_str());
    if (!f.str("spec-out").empty()) write_text_atomic(f.str("spec-out"), m.spec());
  }
  return 0;
}

}  // namespace dnns::app
