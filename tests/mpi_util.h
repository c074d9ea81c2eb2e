// Helpers of the tests that run processes under mpirun (test_mpi, test_chains_mpi) and of the
// tests that compare the files of runs (test_chains): a temporary folder, a file's bytes, a
// process run with a timeout in its own process group, and the mpirun command line.
#pragma once
#include <doctest/doctest.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "core/fs.h"
#include "nn/distributed.h"

#ifndef DNNS_MPIEXEC
#define DNNS_MPIEXEC ""
#endif

namespace dnns::mpi_test {

namespace fs = std::filesystem;

inline const std::string kBin = DNNS_BINARY_DIR "/bin/cifar_prune";

inline bool under_mpirun() { return std::getenv("OMPI_COMM_WORLD_SIZE") || std::getenv("PMI_SIZE"); }

inline void skip_without_mpi() {
  if (!dist::built_with_mpi()) {
    MESSAGE("built without MPI (DNNS_MPI=OFF or no MPI found): MPI tests skipped");
    std::exit(77);
  }
  if (std::string(DNNS_MPIEXEC).empty() || !file_exists(DNNS_MPIEXEC)) {
    MESSAGE("no mpirun found at configure time: MPI tests skipped");
    std::exit(77);
  }
}

struct TmpDir {
  fs::path path;
  explicit TmpDir(const std::string& tag) {
    path = fs::temp_directory_path() / ("dnns_mpi_" + tag + "_" + std::to_string(::getpid()));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TmpDir() { fs::remove_all(path); }
  std::string operator/(const std::string& name) const { return (path / name).string(); }
};

inline std::string file_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

struct Exit {
  int code = -1;       // exit status; -1 when killed by a signal or timed out
  bool timed_out = false;
  std::string log;     // stdout and stderr
};

// Runs `args` (args[0] a path) with `env` added, in its own process group; kills the group
// after `timeout_s` (a hang is a failure, not a stuck test).
inline Exit run(const std::vector<std::string>& args, const std::vector<std::string>& env, const std::string& log,
         int timeout_s = 120) {
  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::setpgid(0, 0);
    int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) ::dup2(fd, 1), ::dup2(fd, 2);
    for (const std::string& e : env) ::putenv(const_cast<char*>(e.c_str()));
    std::vector<char*> argv;
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  ::setpgid(pid, pid);
  Exit e;
  auto t0 = std::chrono::steady_clock::now();
  int status = 0;
  for (;;) {
    pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) break;
    if (std::chrono::steady_clock::now() - t0 > std::chrono::seconds(timeout_s)) {
      ::kill(-pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      e.timed_out = true;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  if (!e.timed_out && WIFEXITED(status)) e.code = WEXITSTATUS(status);
  e.log = file_exists(log) ? read_text(log) : "";
  return e;
}

// mpirun -np N with one thread per rank; as root it needs the two allow flags.
inline std::vector<std::string> mpirun(int ranks, const std::vector<std::string>& env_names) {
  std::vector<std::string> a = {DNNS_MPIEXEC, "-np", std::to_string(ranks), "--oversubscribe", "--bind-to", "none"};
  if (::geteuid() == 0) a.push_back("--allow-run-as-root");
  for (const std::string& n : env_names) a.push_back("-x"), a.push_back(n);
  return a;
}

inline const std::vector<std::string> kQuiet = {"OMPI_MCA_btl_base_warn_component_unused=0"};

inline std::vector<std::string> concat(std::vector<std::string> a, const std::vector<std::string>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

}  // namespace dnns::mpi_test
