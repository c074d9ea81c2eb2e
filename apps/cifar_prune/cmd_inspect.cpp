// cifar_prune inspect FILE: what a model or checkpoint file holds; with --plan, how its conv and
// linear layers would run here (dense or sparse, measured).
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "apps/cifar_prune/commands.h"
#include "core/archive.h"
#include "core/cli.h"
#include "core/error.h"
#include "core/fs.h"
#include "core/threading.h"
#include "nn/execution.h"
#include "nn/model.h"
#include "prune/mask.h"
#include "prune/portfolio.h"

namespace dnns::app {

int cmd_inspect(int argc, char** argv) {
  Flags f("cifar_prune inspect FILE", "Shows the graph, parameters and masks of a model or checkpoint file.");
  f.add("spec-out", "", "also write the graph spec (text) to this file");
  f.add_bool("graph", "print the graph spec");
  f.add_bool("plan", "measure and print the execution plan: per conv/linear layer its shape, density, and "
                     "dense vs sparse time at each --batch on this machine, and the faster one");
  f.add("batch", "1,32", "--plan: batch sizes, comma-separated");
  f.add("execution", "auto", "--plan: dense, sparse or auto (auto measures; the others show the forced plan)");
  f.add("threads", "0", "--plan: worker threads (0 = all cores)");
  if (!f.parse(argc, argv, 1, 1)) return 0;
  check(f.positional().size() == 1, "cifar_prune inspect: give a model or checkpoint file (see --help)");
  const std::string path = f.positional()[0];
  const Execution execution = parse_execution(f.str("execution"));
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
    if (f.flag("plan")) {
      set_num_threads(static_cast<int>(f.integer("threads")));
      std::vector<int64_t> batches;
      const std::string list = f.str("batch");
      for (size_t pos = 0; pos <= list.size();) {
        const size_t comma = std::min(list.find(',', pos), list.size());
        const std::string item = list.substr(pos, comma - pos);
        char* end = nullptr;
        const long long b = std::strtoll(item.c_str(), &end, 10);
        check(!item.empty() && *end == '\0' && b > 0, "--batch: expected comma-separated positive integers, got '" + list + "'");
        batches.push_back(b);
        pos = comma + 1;
      }
      std::sort(batches.begin(), batches.end());
      batches.erase(std::unique(batches.begin(), batches.end()), batches.end());
      const ExecutionPlan plan = plan_execution(m, execution, batches);
      std::printf("\nexecution plan (%s, %d threads, %s):\n%s", execution_name(plan.mode), num_threads(),
                  cpu_model_name().c_str(), execution_plan_table(plan).c_str());
      for (int64_t b : batches)
        std::printf("batch %lld: %d of %zu conv/linear layers sparse\n", (long long)b, plan.sparse_layers(b),
                    plan.layers.size() / batches.size());
    }
    if (!f.str("spec-out").empty()) write_text_atomic(f.str("spec-out"), m.spec());
  }
  return 0;
}

}  // namespace dnns::app
