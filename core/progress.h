// A progress line for long work: "epoch 3/160 step 120/391 loss 1.234 acc 55.1% 412 img/s
// ETA 2:13:05". Rewritten in place on a terminal, printed every few seconds otherwise (logs).
#pragma once
#include <chrono>
#include <string>

namespace dnns {

class ProgressLine {
 public:
  explicit ProgressLine(double min_interval_s = 2.0);
  // Shows `text` (and an ETA from `done`/`total` work units when total > 0). Throttled
  // unless `force`.
  void update(const std::string& text, double done = 0, double total = 0, bool force = false);
  void finish(const std::string& text);  // final line for this task, always printed

 private:
  bool tty_;
  double min_interval_;
  std::chrono::steady_clock::time_point start_, last_;
  bool printed_ = false;
};

std::string format_duration(double seconds);  // "1:02:03" or "4:05"

}  // namespace dnns
