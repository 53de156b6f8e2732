#pragma once
// Helpers for the process-group tests: run one function per rank in forked processes (the parent
// never creates anything Gloo-related, so forking is safe), a FileStore in a fresh temp dir, and a
// REQUIRE that throws from inside a child (gtest assertions do not cross fork()).

#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <gloo/rendezvous/file_store.h>

// Throws std::runtime_error with the condition and a formatted message when cond is false.
#define REQUIRE(cond, ...)                                                                      \
  do {                                                                                          \
    if (!(cond)) {                                                                              \
      throw std::runtime_error(fmt::format("{}:{}: REQUIRE({}) failed: {}", __FILE__, __LINE__, \
                                           #cond, fmt::format("" __VA_ARGS__)));                \
    }                                                                                           \
  } while (0)

namespace dpserve::testing {

// A fresh directory under $TMPDIR (or /tmp), removed with everything in it on destruction.
class TempDir {
 public:
  TempDir() {
    const char* base = std::getenv("TMPDIR");
    std::string tmpl = std::string(base && *base ? base : "/tmp") + "/dpserve_gloo_XXXXXX";
    if (mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  // The directory.
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// A FileStore in `dir` (to be created inside a child, after fork).
inline std::shared_ptr<gloo::rendezvous::Store> file_store(const std::string& dir) {
  return std::make_shared<gloo::rendezvous::FileStore>(dir);
}

// How one forked rank ended.
struct RankExit {
  bool exited = false;     // exited normally (then `code` holds the exit status)
  int code = -1;           // exit status
  int signal = 0;          // killing signal when !exited
  bool timed_out = false;  // still running at the deadline: killed by the parent
};

// Forks n processes running fn(rank); each exits 0 when fn returns, 1 when it throws (the message
// goes to stderr), and dies with the parent (PR_SET_PDEATHSIG). Waits at most `deadline`, then
// SIGKILLs the rest. Every child is reaped before returning: no orphans, no zombies.
inline std::vector<RankExit> run_ranks(
    int n, const std::function<void(int)>& fn,
    std::chrono::milliseconds deadline = std::chrono::seconds(30)) {
  std::fflush(nullptr);
  const pid_t parent = getpid();
  std::vector<pid_t> pids;
  for (int r = 0; r < n; ++r) {
    const pid_t pid = fork();
    if (pid < 0) throw std::runtime_error("fork failed");
    if (pid == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (getppid() != parent) _exit(3);
      int code = 0;
      try {
        fn(r);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "[rank %d] %s\n", r, e.what());
        code = 1;
      } catch (...) {
        std::fprintf(stderr, "[rank %d] unknown exception\n", r);
        code = 1;
      }
      std::fflush(nullptr);
      _exit(code);
    }
    pids.push_back(pid);
  }
  std::vector<RankExit> exits(static_cast<size_t>(n));
  std::vector<bool> done(static_cast<size_t>(n), false);
  int left = n;
  const auto end = std::chrono::steady_clock::now() + deadline;
  while (left > 0) {
    for (int r = 0; r < n; ++r) {
      if (done[r]) continue;
      int status = 0;
      if (waitpid(pids[r], &status, WNOHANG) == pids[r]) {
        done[r] = true;
        --left;
        if (WIFEXITED(status)) {
          exits[r].exited = true;
          exits[r].code = WEXITSTATUS(status);
        } else if (WIFSIGNALED(status)) {
          exits[r].signal = WTERMSIG(status);
        }
      }
    }
    if (left == 0) break;
    if (std::chrono::steady_clock::now() > end) {
      for (int r = 0; r < n; ++r) {
        if (done[r]) continue;
        kill(pids[r], SIGKILL);
        int status = 0;
        waitpid(pids[r], &status, 0);
        exits[r].timed_out = true;
        exits[r].signal = SIGKILL;
        done[r] = true;
      }
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return exits;
}

// "rank 0: exit 0, rank 1: signal 9 ..." for assertion messages.
inline std::string describe(const std::vector<RankExit>& exits) {
  std::string s;
  for (size_t r = 0; r < exits.size(); ++r) {
    const auto& e = exits[r];
    s += fmt::format("rank {}: {}{}; ", r,
                     e.exited ? fmt::format("exit {}", e.code) : fmt::format("signal {}", e.signal),
                     e.timed_out ? " (timed out)" : "");
  }
  return s;
}

// True when every rank exited with status 0.
inline bool all_ok(const std::vector<RankExit>& exits) {
  for (const auto& e : exits) {
    if (!e.exited || e.code != 0) return false;
  }
  return true;
}

// True when this process has no child left (every forked rank was reaped).
inline bool no_children_left() {
  int status = 0;
  return waitpid(-1, &status, WNOHANG) == -1 && errno == ECHILD;
}

}  // namespace dpserve::testing
