// Example: a network defined in code, trained for one epoch on a subset of Fashion-MNIST,
// pruned by weight magnitude, fine-tuned for one epoch with its masks, then compacted exactly
// into a slimmer dense network. Exit status 0 only when the compact model is smaller, gives the
// masked model's logits and accuracy, and that accuracy is well above chance (10%).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>

#include "core/cli.h"
#include "core/error.h"
#include "datasets/dataset.h"
#include "datasets/loader.h"
#include "nn/models/zoo.h"
#include "nn/trainer.h"
#include "prune/compact.h"
#include "prune/magnitude.h"

using namespace dnns;

// Two conv 3x3 -> batchnorm -> ReLU -> max-pool blocks, then a linear layer on the flattened map.
Model make_network(int classes) {
  Model m;
  int h = m.add_input({1, 28, 28});
  auto block = [&m](const std::string& name, int in, int out, int from) {
    int c = m.add(name + ".conv", std::make_unique<Conv2d>(in, out, 3, 3, 1, 1, false), {from});
    int b = m.add(name + ".bn", std::make_unique<BatchNorm2d>(out), {c});
    int r = m.add(name + ".relu", std::make_unique<ReLU>(), {b});
    return m.add(name + ".pool", std::make_unique<Pool2d>(true, 2, 2), {r});
  };
  h = block("block1", 1, 16, h);                                // (16, 14, 14)
  h = block("block2", 16, 32, h);                               // (32, 7, 7)
  h = m.add("flatten", std::make_unique<Flatten>(), {h});       // (1568)
  m.add("fc", std::make_unique<Linear>(32 * 7 * 7, classes), {h});  // (classes)
  m.arch = "custom";
  return m;
}

int main(int argc, char** argv) {
  Flags flags("example_custom_network", "Train, prune and compact a network defined in code (Fashion-MNIST).");
  flags.add("data", kFashionMnistDir, "Fashion-MNIST folder ({train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz])");
  flags.add("train-images", "2000", "training images drawn from the training set");
  flags.add("test-images", "1000", "test images drawn from the test set");
  flags.add("prune", "0.95", "fraction of the weights to remove (0 < f < 1)");
  flags.add("strategy", "global", "magnitude ranking: global or layerwise");
  flags.add("seed", "1", "seed of the subsets, the initialisation and the data order");
  try {
    if (!flags.parse(argc, argv)) return 0;
    const uint64_t seed = flags.integer("seed");
    Dataset train = load_fashion_mnist(flags.str("data"), true).sample(flags.integer("train-images"), seed);
    Dataset test = load_fashion_mnist(flags.str("data"), false).sample(flags.integer("test-images"), seed);
    LoaderOptions lo;
    lo.batch_size = 64, lo.seed = seed;
    lo.normalize = channel_stats(train);  // the test set is normalised as the training set
    Loader train_data(train, lo);
    lo.shuffle = false;
    Loader test_data(test, lo);

    Model m = make_network(train.num_classes);
    Rng rng(seed);
    init_model(m, rng);  // kaiming normal weights, as the zoo models get
    TrainConfig cfg;
    cfg.sgd = {0.05f, 0.9f, 5e-4f, false};  // lr, momentum, weight decay, nesterov
    cfg.schedule.kind = LrSchedule::Kind::Constant, cfg.schedule.base_lr = 0.05f;
    Trainer trainer(m, cfg);
    trainer.train_epoch(train_data);
    const double dense = evaluate(m, test_data).accuracy;

    set_masks(m, prune_by_magnitude(m, flags.number("prune"), parse_prune_strategy(flags.str("strategy")), {}));
    const double pruned = evaluate(m, test_data).accuracy;
    trainer.train_epoch(train_data);  // fine-tune: masked weights stay exactly zero
    const double tuned = evaluate(m, test_data).accuracy;

    CompactReport report;
    Model small = compact_model(m, &report);
    const double compact = evaluate(small, test_data).accuracy;
    Batch batch;  // the first test batch, for the logits
    test_data.start_epoch(0), test_data.next(batch);
    Tensor logits = m.forward(batch.images, false);
    float scale = 1;
    for (int64_t i = 0; i < logits.numel(); ++i) scale = std::max(scale, std::fabs(logits[i]));
    const float diff = max_logit_difference(m, small, batch.images) / scale;

    std::printf("accuracy: dense %.2f%%, pruned %.2f%%, fine-tuned %.2f%%, compact %.2f%% (%lld test images)\n",
                100 * dense, 100 * pruned, 100 * tuned, 100 * compact, static_cast<long long>(test.size()));
    std::printf("parameters: dense %lld, unpruned %lld, compact %lld (%lld channels removed)\n",
                static_cast<long long>(report.params_before), static_cast<long long>(report.nonzero_before),
                static_cast<long long>(report.params_after), static_cast<long long>(report.channels_removed));
    for (const LayerChannels& l : report.layers)
      std::printf("  %-12s in %3d -> %3d, out %3d -> %3d\n", l.name.c_str(), l.in_before, l.in_after,
                  l.out_before, l.out_after);
    std::printf("max |compact - masked| logit / max |logit|: %.3g\n", diff);
    const bool ok = diff <= 1e-4f && compact == tuned && tuned > 0.2 && report.params_after < report.params_before;
    std::printf("%s\n", ok ? "OK" : "FAILED: compaction not exact, nothing removed, or accuracy at chance");
    return ok ? 0 : 1;
  } catch (const Error& e) {
    return std::fprintf(stderr, "example_custom_network: %s\n", e.what()), 1;
  }
}
