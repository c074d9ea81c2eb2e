#include "core/fs.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"

namespace dnns {

std::string read_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  check(f.good(), path + ": cannot open (" + std::strerror(errno) + ")");
  std::ostringstream os;
  os << f.rdbuf();
  return os.str();
}

static void write_all(int fd, const std::string& data, const std::string& path) {
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      std::string why = std::strerror(errno);
      ::close(fd);
      throw Error(path + ": write failed (" + why + ")");
    }
    done += static_cast<size_t>(n);
  }
}

static bool g_file_writer = true;
void set_file_writer(bool writes) { g_file_writer = writes; }
bool is_file_writer() { return g_file_writer; }

void write_text_atomic(const std::string& path, const std::string& content) {
  if (!g_file_writer) return;
  std::string tmp = path + ".tmp." + std::to_string(::getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  check(fd >= 0, path + ": cannot write (" + std::strerror(errno) + ")");
  write_all(fd, content, path);
  ::fsync(fd);
  ::close(fd);
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::string why = std::strerror(errno);
    std::remove(tmp.c_str());
    throw Error(path + ": cannot replace (" + why + ")");
  }
}

void append_line(const std::string& path, const std::string& line) {
  if (!g_file_writer) return;
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  check(fd >= 0, path + ": cannot append (" + std::strerror(errno) + ")");
  write_all(fd, line + "\n", path);
  ::fsync(fd);
  ::close(fd);
}

bool file_exists(const std::string& path) {
  std::error_code ec;
  return std::filesystem::exists(path, ec);
}

void make_dirs(const std::string& path) {
  std::error_code ec;
  std::filesystem::create_directories(path, ec);
  check(!ec, path + ": cannot create folder (" + ec.message() + ")");
}

}  // namespace dnns
