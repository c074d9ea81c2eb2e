#include "core/progress.h"

#include <unistd.h>

#include <cstdio>

namespace dnns {

std::string format_duration(double s) {
  if (s < 0 || s > 1e8) return "?";
  long t = static_cast<long>(s + 0.5);
  char buf[32];
  if (t >= 3600) std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", t / 3600, (t / 60) % 60, t % 60);
  else std::snprintf(buf, sizeof buf, "%ld:%02ld", t / 60, t % 60);
  return buf;
}

ProgressLine::ProgressLine(double min_interval_s)
    : tty_(::isatty(STDERR_FILENO)), min_interval_(tty_ ? 0.2 : min_interval_s),
      start_(std::chrono::steady_clock::now()), last_(start_) {}

void ProgressLine::update(const std::string& text, double done, double total, bool force) {
  auto now = std::chrono::steady_clock::now();
  double since = std::chrono::duration<double>(now - last_).count();
  if (!force && printed_ && since < min_interval_) return;
  if (!force && !printed_ && std::chrono::duration<double>(now - start_).count() < min_interval_ && !tty_) return;
  std::string line = text;
  if (total > 0 && done > 0) {
    double elapsed = std::chrono::duration<double>(now - start_).count();
    line += "  ETA " + format_duration(elapsed * (total - done) / done);
  }
  if (tty_) std::fprintf(stderr, "\r\033[K%s", line.c_str());
  else std::fprintf(stderr, "%s\n", line.c_str());
  std::fflush(stderr);
  last_ = now;
  printed_ = true;
}

void ProgressLine::finish(const std::string& text) {
  if (tty_) std::fprintf(stderr, "\r\033[K%s\n", text.c_str());
  else std::fprintf(stderr, "%s\n", text.c_str());
  std::fflush(stderr);
  printed_ = false;
  start_ = last_ = std::chrono::steady_clock::now();
}

}  // namespace dnns
