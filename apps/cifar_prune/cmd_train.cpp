#include <cstdio>

#include "apps/cifar_prune/commands.h"
#include "apps/cifar_prune/common.h"
#include "core/error.h"
#include "core/fs.h"
#include "core/json.h"
#include "nn/run.h"

namespace dnns::app {

int cmd_train(int argc, char** argv) {
  Flags f("cifar_prune train",
          "Trains a zoo model (open_lth defaults: SGD lr 0.1, momentum 0.9, weight decay 1e-4, batch 128,\n"
          "160 epochs, LR x0.1 at epochs 80 and 120). Writes hparams.json, log.jsonl (one line per\n"
          "epoch), checkpoint.dnns (after every epoch), model.dnns and metrics.json into --out.");
  add_training_flags(f);
  add_train_execution_flag(f);
  add_system_flags(f);
  f.add("out", "runs/train", "run directory");
  f.add_bool("resume", "continue the run in --out from its last checkpoint");
  if (!f.parse(argc, argv)) return 0;
  Device dev = setup_system(f);
  std::string out = f.str("out");
  std::string hp = hparams_json(f, "train");

  DataPair data = load_data(f, /*shard_over_ranks=*/true);
  std::fprintf(stderr, "data: %s\n", data.description.c_str());
  TrainConfig cfg = training_config(f, data.train->batches_per_epoch());
  Model model = make_model(f, data);
  model.to(dev);  // fails here, before any folder is made, when the device is missing
  prepare_run_dir(out, hp, f.flag("resume"), f);
  if (file_exists(out + "/metrics.json")) {
    // A finished run: its results stay as they are.
    std::printf("%s: this run is already finished; its results: %s/metrics.json\n", out.c_str(), out.c_str());
    return 0;
  }
  Trainer trainer(model, cfg);
  std::string ckpt = out + "/checkpoint.dnns";
  if (f.flag("resume") && file_exists(ckpt)) {
    trainer.load_checkpoint(ckpt);
    std::fprintf(stderr, "resumed %s at step %lld\n", ckpt.c_str(), (long long)trainer.step());
  } else if (file_exists(out + "/log.jsonl")) {
    // Interrupted before its first checkpoint: start again with a fresh log.
    std::remove((out + "/log.jsonl").c_str());
  }
  std::fprintf(stderr, "model: %s, %lld parameters, device %s\n", f.str("model").c_str(),
               (long long)model.num_params(), device_name(dev));

  RunOptions ro;
  ro.checkpoint_path = ckpt;
  ro.log_path = out + "/log.jsonl";
  ro.label = "train";
  ro.total_steps = cfg.epochs * data.train->batches_per_epoch();
  RunResult r = run_training(trainer, *data.train, *data.test, ro);

  Model final_model = model.clone();
  final_model.to(Device::CPU);
  final_model.save(out + "/model.dnns");
  write_text_atomic(out + "/metrics.json", Json()
                                               .add("model", f.str("model"))
                                               .add("data", f.str("data"))
                                               .add("epochs", cfg.epochs)
                                               .add("steps", trainer.step())
                                               .add("test_accuracy", r.test.accuracy)
                                               .add("test_loss", r.test.loss)
                                               .add("test_examples", r.test.examples)
                                               .add("train_accuracy", r.train_accuracy)
                                               .add("train_loss", r.train_loss)
                                               .add("parameters", model.num_params())
                                               .str() +
                                               "\n");
  std::printf("test accuracy %.2f%% (%lld examples) after %lld epochs; results in %s\n", 100 * r.test.accuracy,
              (long long)r.test.examples, (long long)cfg.epochs, out.c_str());
  return 0;
}

}  // namespace dnns::app
