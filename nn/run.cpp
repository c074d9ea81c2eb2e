#include "nn/run.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>

#include "core/archive.h"
#include "core/error.h"
#include "core/fs.h"
#include "core/json.h"
#include "core/progress.h"
#include "nn/distributed.h"

namespace dnns {

// The train loss and accuracy of the last epoch logged in `log_path`, into `res` (left as they
// are when there is no such line).
static void last_logged_train_stats(const std::string& log_path, RunResult& res) {
  if (log_path.empty() || !file_exists(log_path)) return;
  std::istringstream is(read_text(log_path));
  std::string line, last;
  while (std::getline(is, line))
    if (!line.empty()) last = line;
  if (last.empty()) return;
  const auto m = parse_flat_json(last, log_path + " (last line)");
  if (m.count("train_loss")) res.train_loss = std::strtod(m.at("train_loss").c_str(), nullptr);
  if (m.count("train_accuracy")) res.train_accuracy = std::strtod(m.at("train_accuracy").c_str(), nullptr);
}

RunResult run_training(Trainer& trainer, BatchSource& train, BatchSource& test, const RunOptions& opt) {
  RunResult res;
  const int64_t bpe = train.batches_per_epoch();
  check(bpe > 0, "run_training: the training data yields no batches");
  const int64_t total_epochs = (opt.total_steps + bpe - 1) / bpe;
  auto t0 = std::chrono::steady_clock::now();
  ProgressLine progress;
  const int ranks = dist::size();
  const bool progress_on = opt.progress && dist::is_root();  // one progress line, rank 0's
  char buf[384];
  while (trainer.step() < opt.total_steps) {
    const int64_t epoch = trainer.step() / bpe;
    auto on_step = [&](const StepInfo& s) {
      if (!progress_on) return;
      int n = std::snprintf(buf, sizeof buf, "%s epoch %lld/%lld step %lld/%lld loss %.4f acc %.1f%% lr %.4g %.0f img/s",
                            opt.label.c_str(), (long long)s.epoch + 1, (long long)total_epochs, (long long)s.batch,
                            (long long)s.batches, s.epoch_loss, 100.0 * s.epoch_accuracy, s.lr, s.images_per_sec);
      if (ranks > 1 && n > 0 && n < int(sizeof buf))
        std::snprintf(buf + n, sizeof buf - n, " (%d ranks, comm %.1f ms/step)", ranks, 1e3 * s.comm_seconds);
      progress.update(buf, double(s.step), double(opt.total_steps));
    };
    int64_t epoch_end = std::min((epoch + 1) * bpe, opt.total_steps);
    EpochStats st;
    if (opt.capture_step >= 0 && trainer.step() <= opt.capture_step && opt.capture_step < epoch_end) {
      // Stop at the capture step, snapshot, then finish the epoch from there.
      EpochStats a = trainer.train_epoch(train, on_step, opt.capture_step);
      save_archive(opt.capture_path, trainer.checkpoint());
      EpochStats b = trainer.train_epoch(train, on_step, epoch_end);
      st = b;
      st.examples = a.examples + b.examples;
      if (st.examples) {
        st.loss = (a.loss * a.examples + b.loss * b.examples) / st.examples;
        st.accuracy = (a.accuracy * a.examples + b.accuracy * b.examples) / st.examples;
      }
      st.seconds = a.seconds + b.seconds;
      st.steps = a.steps + b.steps;
      st.comm_seconds = a.comm_seconds + b.comm_seconds;
      st.data_wait_seconds = a.data_wait_seconds + b.data_wait_seconds;
      st.images_per_sec = st.examples / std::max(1e-9, st.seconds);
    } else {
      st = trainer.train_epoch(train, on_step, epoch_end);
    }
    EvalStats ev = evaluate(trainer.model(), test, trainer.config().label_smoothing);
    res.test = ev;
    res.train_loss = st.loss, res.train_accuracy = st.accuracy;
    ++res.epochs_run;
    std::snprintf(buf, sizeof buf,
                  "%s epoch %lld/%lld  train loss %.4f acc %.2f%%  test loss %.4f acc %.2f%%  %.1f s (%.0f img/s)",
                  opt.label.c_str(), (long long)epoch + 1, (long long)total_epochs, st.loss, 100 * st.accuracy,
                  ev.loss, 100 * ev.accuracy, st.seconds, st.images_per_sec);
    if (st.data_wait_seconds >= 0.01 * st.seconds) {  // the loader held training back
      const size_t n = std::strlen(buf);
      std::snprintf(buf + n, sizeof buf - n, "  waited %.1f s for data", st.data_wait_seconds);
    }
    if (ranks > 1) {
      const size_t n = std::strlen(buf);
      std::snprintf(buf + n, sizeof buf - n, "  %d ranks, comm %.1f ms/step", ranks,
                    1e3 * st.comm_seconds / std::max<int64_t>(1, st.steps));
    }
    if (progress_on) progress.finish(buf);
    // Checkpoint first, then the log line: a log line always has its checkpoint behind it.
    if (!opt.checkpoint_path.empty()) trainer.save_checkpoint(opt.checkpoint_path);
    if (!opt.log_path.empty())
      append_line(opt.log_path, Json()
                                    .add("label", opt.label)
                                    .add("epoch", epoch + 1)
                                    .add("step", trainer.step())
                                    .add("train_loss", st.loss)
                                    .add("train_accuracy", st.accuracy)
                                    .add("test_loss", ev.loss)
                                    .add("test_accuracy", ev.accuracy)
                                    .add("seconds", st.seconds)
                                    .add("images_per_sec", st.images_per_sec)
                                    .add("data_wait_seconds", st.data_wait_seconds)
                                    .add("ranks", static_cast<int64_t>(ranks))
                                    .add("comm_seconds_per_step", st.comm_seconds / std::max<int64_t>(1, st.steps))
                                    .str());
  }
  if (res.epochs_run == 0) {
    // Nothing left to train (a run resumed after its last epoch, stopped before its results were
    // written): the test figures are measured again, the train figures are the log's last epoch.
    res.test = evaluate(trainer.model(), test, trainer.config().label_smoothing);
    last_logged_train_stats(opt.log_path, res);
  }
  res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return res;
}

}  // namespace dnns
