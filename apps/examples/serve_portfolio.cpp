// Example: serving requests through the shifter while conditions change. Loads a portfolio
// (`cifar_prune portfolio --out DIR`) or builds a tiny one in --out (a ResNet-20 for 16x16 images
// trained for an epoch on synthetic data, pruned level by level, each level compacted). A client
// thread sends requests while the main thread shifts; every answer is checked against the variant
// that served it (exit status 1 if one differs).
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <thread>

#include "core/cli.h"
#include "core/error.h"
#include "core/fs.h"
#include "core/threading.h"
#include "datasets/loader.h"
#include "nn/models/zoo.h"
#include "nn/trainer.h"
#include "prune/infer.h"
#include "prune/magnitude.h"
#include "prune/shifter.h"

using namespace dnns;

// Levels 0..levels of one trained network, 60% of the surviving weights removed per level.
void build_tiny_portfolio(const std::string& dir, int levels) {
  SyntheticSpec spec{.num_examples = 2048, .height = 16, .width = 16};
  Dataset train = make_synthetic(spec);
  spec.split = 1, spec.num_examples = 256;
  LoaderOptions lo{.batch_size = 32, .normalize = channel_stats(train)};
  Loader train_data(train, lo), test_data(make_synthetic(spec), (lo.shuffle = false, lo));
  Model m = build_model("resnet20", 10, {3, 16, 16});
  Rng rng(1);
  init_model(m, rng);
  TrainConfig cfg;  // one epoch at a constant learning rate
  cfg.sgd.lr = cfg.schedule.base_lr = 0.05f, cfg.schedule.kind = LrSchedule::Kind::Constant;
  Trainer(m, cfg).train_epoch(train_data);
  PortfolioOptions opt;  // few timing calls: this is about serving, not measuring
  opt.latency_batch = 8, opt.latency_runs = 10, opt.latency_batch_runs = 3, opt.progress = false;
  Portfolio p;
  p.arch = m.arch, p.input_shape = m.input_shape(), p.num_classes = 10, p.machine = cpu_model_name();
  p.dense_params = m.num_params(), p.latency_batch = opt.latency_batch, p.threads = num_threads(), p.data = "synthetic";
  p.normalize_mean.assign(lo.normalize.mean.begin(), lo.normalize.mean.end());
  p.normalize_std.assign(lo.normalize.std.begin(), lo.normalize.std.end());
  std::vector<Model> compact(levels + 1);  // the saved variants, timed together at the end
  std::vector<const Model*> ptrs;
  for (int level = 0; level <= levels; ++level) {
    if (level > 0) set_masks(m, prune_by_magnitude(m, 0.6, PruneStrategy::Global, default_prune_ignore(m.arch)));
    p.variants.push_back(make_variant(m, "level_" + std::to_string(level), level, test_data, dir, opt));
    ptrs.push_back(&(compact[level] = Model::load(dir + "/" + p.variants.back().file)));
  }
  measure_latency(ptrs, p.variants, opt);
  write_text_atomic(dir + "/manifest.json", portfolio_manifest_json(p));
}

int main(int argc, char** argv) {
  Flags flags("example_serve_portfolio", "Serve requests through the shifter while conditions change.");
  flags.add("portfolio", "", "portfolio folder to serve (empty: build a tiny one in --out)");
  flags.add("out", "example_portfolio", "where the tiny portfolio is built");
  try {
    if (!flags.parse(argc, argv)) return 0;
    std::string dir = flags.str("portfolio");
    if (dir.empty()) make_dirs(dir = flags.str("out")), build_tiny_portfolio(dir, 5);
    Shifter shifter(load_portfolio(dir));  // every model file checked against the manifest
    const std::vector<VariantInfo>& v = shifter.portfolio().variants;
    std::printf("%s", portfolio_table(shifter.portfolio()).c_str());
    double least = v[0].memory_bytes_b1, most = 0;  // the least working memory, the best accuracy
    for (const auto& e : v) least = std::min<double>(least, e.memory_bytes_b1), most = std::max(most, e.accuracy);
    std::vector<Conditions> phases(4);  // no budget; the least memory; the best accuracy; the least memory
    phases[1].memory_bytes = phases[3].memory_bytes = static_cast<int64_t>(least);
    phases[2].min_accuracy = most;
    std::atomic<int64_t> served{0}, wrong{0}, shifted{0};  // 50 requests after each shift
    std::thread client([&, rng = Rng(7), in = shifter.portfolio().input_shape]() mutable {  // random images
      while (served < 50 * static_cast<int64_t>(phases.size())) {
        if (served == 50 * shifted) { std::this_thread::yield(); continue; }  // wait for the next shift
        Tensor x({1, in[0], in[1], in[2]});
        for (int64_t i = 0; i < x.numel(); ++i) x[i] = rng.normal();
        Answer a = shifter.infer(x);
        Tensor ref = infer(*shifter.model(a.variant), x);  // the variant that answered, alone
        wrong += !std::equal(ref.data(), ref.data() + ref.numel(), a.logits.data());
        ++served;
      }
    });
    std::vector<int> chosen;  // the variant active in each phase
    for (size_t i = 0; i < phases.size(); ++i) {
      ShiftResult r = shifter.shift(phases[i]);
      chosen.push_back(r.active), ++shifted;
      std::printf("%s -> %s (%s, swap %.1f us)\n", phases[i].str().c_str(),
                  explain_selection(v, phases[i], r.selection).c_str(), r.swapped ? "swapped" : "kept", r.swap_us);
      while (served < 50 * static_cast<int64_t>(i + 1)) std::this_thread::yield();
    }
    client.join();
    const bool ok = wrong == 0 && (chosen[1] == chosen[2] || shifter.swaps() >= 2);  // one variant may fit all
    std::printf("%lld requests, %lld swaps, %lld answers differing from their variant's\n", (long long)served,
                (long long)shifter.swaps(), (long long)wrong);
    return std::printf("%s\n", ok ? "OK" : "FAILED"), ok ? 0 : 1;
  } catch (const Error& e) {
    return std::fprintf(stderr, "example_serve_portfolio: %s\n", e.what()), 1;
  }
}
