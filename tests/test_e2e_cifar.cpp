// End to end on real data: ResNet-20 trained on CPU on a subset of the real CIFAR-10 (JPEG
// copy) must reach a test accuracy far above chance (10%). Skipped with a message when the
// shared data folder is absent.
#include <doctest/doctest.h>

#include <cstdlib>
#include <filesystem>

#include "datasets/dataset.h"
#include "datasets/loader.h"
#include "nn/models/zoo.h"
#include "nn/trainer.h"

using namespace dnns;

TEST_CASE("ResNet-20 learns real CIFAR-10 (JPEG copy)") {
  std::string dir = std::string(DNNS_SHARED_DATA) + "/cifar10-jpeg";
  if (!std::filesystem::exists(dir + "/train")) {
    MESSAGE("CIFAR-10 JPEG copy not found at " << dir << ": end-to-end test skipped");
    std::exit(77);  // CTest reports exit code 77 as "skipped" (SKIP_RETURN_CODE), not as a pass
  }
  ImageFolderOptions io;
  io.cache_dir = std::string(DNNS_BINARY_DIR) + "/cache";
  // 600 images per class for training (6,000), 100 per class for testing (1,000).
  Dataset train = load_image_folder(dir + "/train", 32, 32, 3, io).first_per_class(600);
  Dataset test = load_image_folder(dir + "/test", 32, 32, 3, io).first_per_class(100);
  LoaderOptions lo;
  lo.batch_size = 128;
  lo.augment = true;
  lo.seed = 1;
  lo.normalize = cifar10_stats();
  LoaderOptions to = lo;
  to.shuffle = false, to.augment = false, to.batch_size = 250;
  Loader train_loader(std::move(train), lo), test_loader(std::move(test), to);

  Model m = build_model("resnet20");
  Rng rng(1);
  init_model(m, rng);
  TrainConfig cfg;
  cfg.epochs = 4;
  cfg.schedule.kind = LrSchedule::Kind::MultiStep;
  cfg.schedule.base_lr = 0.1f;
  cfg.schedule.milestones = {3 * train_loader.batches_per_epoch()};
  cfg.sgd = {0.1f, 0.9f, 1e-4f, false};
  Trainer t(m, cfg);
  for (int e = 0; e < cfg.epochs; ++e) {
    EpochStats s = t.train_epoch(train_loader);
    MESSAGE("epoch " << e + 1 << ": train loss " << s.loss << ", accuracy " << s.accuracy << ", " << s.images_per_sec
                     << " img/s");
  }
  EvalStats ev = evaluate(m, test_loader);
  MESSAGE("ResNet-20, 6,000 CIFAR-10 (JPEG copy) training images, 4 epochs: test accuracy " << ev.accuracy << " on "
                                                                                          << ev.examples << " images");
  // Measured: ~0.45 (see the README). A broken gradient or augmentation stays near 0.10-0.25.
  CHECK(ev.accuracy > 0.35);
}
