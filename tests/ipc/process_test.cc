// Child processes and the runtime directory: readiness payload, a child's error message, exits and
// crashes before ready, a readiness timeout, SIGTERM then SIGKILL, children dying with their
// parent, and the runtime directory going away at exit and on signals.

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "dpserve/common/errors.h"
#include "dpserve/ipc/process.h"

namespace dpserve {
namespace {

using ::testing::HasSubstr;
using ::testing::MatchesRegex;
using Clock = std::chrono::steady_clock;

ChildSpec helper(std::string role, std::vector<std::string> args = {}) {
  return ChildSpec{
      .role = std::move(role), .args = std::move(args), .name = "", .executable = IPC_TEST_CHILD};
}

std::string ready_error(ChildProcess& child, Millis timeout) {
  try {
    child.wait_ready(timeout);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(Process, ReadyPayloadArrives) {
  ChildProcess child(helper("ready", {"--model-path", "/m"}));
  EXPECT_GT(child.pid(), 0);
  const nlohmann::json payload = child.wait_ready(Millis(10000));
  EXPECT_EQ(payload["kv_tokens"], 4096);
  EXPECT_EQ(payload["args"], nlohmann::json({"--model-path", "/m"}));
  EXPECT_FALSE(child.poll_exit().has_value());  // still running
  const ExitStatus st = child.terminate(Millis(5000));
  EXPECT_EQ(st.signal, SIGTERM);
  EXPECT_EQ(st.describe(), "killed by signal 15 (Terminated)");
  EXPECT_EQ(child.terminate(), st);  // idempotent
}

TEST(Process, ErrorMessageAndExitStatusAreReported) {
  ChildProcess child({.role = "fail",
                      .args = {"no config.json in /m"},
                      .name = "scheduler",
                      .executable = IPC_TEST_CHILD});
  const std::string err = ready_error(child, Millis(10000));
  EXPECT_THAT(err, MatchesRegex("scheduler \\(pid [0-9]+\\) failed to start: no config.json in "
                                "/m \\(exit status 3\\)"));
  ASSERT_TRUE(child.exit_status().has_value());
  EXPECT_EQ(child.exit_status()->code, 3);
}

TEST(Process, ExitBeforeReadyIsReported) {
  ChildProcess child(helper("exit", {"7"}));
  EXPECT_THAT(ready_error(child, Millis(10000)),
              HasSubstr("exited before it was ready: exit status 7"));
}

TEST(Process, CrashBeforeReadyIsReported) {
  ChildProcess child(helper("crash"));
  EXPECT_THAT(ready_error(child, Millis(10000)),
              HasSubstr("exited before it was ready: killed by signal 6"));
}

TEST(Process, MissingExecutableIsReported) {
  ChildProcess child({.role = "x", .executable = "/nonexistent/dpserve"});
  EXPECT_THAT(ready_error(child, Millis(10000)), HasSubstr("exit status 127"));
}

TEST(Process, SilentChildTimesOut) {
  ChildProcess child(helper("hang"));
  const auto t0 = Clock::now();
  EXPECT_THAT(ready_error(child, Millis(300)), HasSubstr("did not report ready within 0.3 s"));
  EXPECT_GE(Clock::now() - t0, Millis(290));
  EXPECT_FALSE(child.poll_exit().has_value());
  EXPECT_EQ(child.terminate(Millis(5000)).signal, SIGTERM);
}

TEST(Process, SigkillAfterTheGracePeriod) {
  ChildProcess child(helper("ignore-term"));
  child.wait_ready(Millis(10000));
  const auto t0 = Clock::now();
  const ExitStatus st = child.terminate(Millis(200));
  EXPECT_EQ(st.signal, SIGKILL);
  EXPECT_GE(Clock::now() - t0, Millis(190));
}

TEST(Process, DestructorTerminatesARunningChild) {
  pid_t pid;
  {
    ChildProcess child(helper("ready"));
    child.wait_ready(Millis(10000));
    pid = child.pid();
  }
  // Reaped by the destructor: the pid is no longer our child.
  EXPECT_EQ(waitpid(pid, nullptr, WNOHANG), -1);
  EXPECT_EQ(errno, ECHILD);
}

TEST(Process, ExitFdBecomesReadableOnExit) {
  ChildProcess child(helper("ready"));
  child.wait_ready(Millis(10000));
  if (child.exit_fd() < 0) GTEST_SKIP() << "no pidfd on this kernel";
  pollfd p{child.exit_fd(), POLLIN, 0};
  EXPECT_EQ(poll(&p, 1, 0), 0);
  child.kill(SIGKILL);
  EXPECT_EQ(poll(&p, 1, 10000), 1);
  EXPECT_EQ(child.wait_exit(Millis(5000))->signal, SIGKILL);
}

// The grandchild must die when its parent (the spawner) is SIGKILLed. This test process becomes
// a subreaper so that the orphaned grandchild is re-parented to it and can be waited for.
TEST(Process, ChildrenDieWithTheirParent) {
  ASSERT_EQ(prctl(PR_SET_CHILD_SUBREAPER, 1), 0);
  ChildProcess spawner(helper("spawner"));
  const nlohmann::json payload = spawner.wait_ready(Millis(10000));
  const pid_t grandchild = payload["grandchild_pid"].get<pid_t>();
  ASSERT_GT(grandchild, 0);
  ASSERT_EQ(kill(grandchild, 0), 0);  // alive

  spawner.kill(SIGKILL);
  EXPECT_EQ(spawner.wait_exit(Millis(10000))->signal, SIGKILL);

  // waitpid blocks until the grandchild dies; a watchdog thread kills it if PDEATHSIG failed,
  // so that a failure shows as a wrong status, not a hung test.
  std::atomic<bool> done{false};
  std::thread watchdog([&] {
    const auto until = Clock::now() + std::chrono::seconds(10);
    while (!done && Clock::now() < until) std::this_thread::sleep_for(Millis(10));
    if (!done) kill(grandchild, SIGTERM);
  });
  int status = 0;
  pid_t r;
  do {
    r = waitpid(grandchild, &status, 0);
  } while (r < 0 && errno == EINTR);
  done = true;
  watchdog.join();
  prctl(PR_SET_CHILD_SUBREAPER, 0);
  ASSERT_EQ(r, grandchild);
  ASSERT_TRUE(WIFSIGNALED(status));
  EXPECT_EQ(WTERMSIG(status), SIGKILL);  // PDEATHSIG, not the watchdog's SIGTERM
}

TEST(Process, ChildInheritsNoStrayDescriptors) {
  // Descriptors without O_CLOEXEC, as a careless library would leave them.
  std::vector<int> leaked;
  for (int i = 0; i < 5; ++i) leaked.push_back(fcntl(STDERR_FILENO, F_DUPFD, 10));
  ChildProcess child(helper("list-fds"));
  const std::vector<int> fds = child.wait_ready(Millis(10000))["fds"];
  for (int fd : leaked) close(fd);
  // 0-2, the readiness pipe (3) and the directory listing's own descriptor.
  int above_three = 0;
  for (int fd : fds) above_three += fd > 3 ? 1 : 0;
  EXPECT_LE(above_three, 1) << nlohmann::json(fds).dump();
}

TEST(Process, ChildContextIgnoresOrdinaryCommandLines) {
  char a0[] = "dpserve", a1[] = "serve", a2[] = "--port";
  char* argv[] = {a0, a1, a2, nullptr};
  EXPECT_FALSE(ChildContext::from_argv(3, argv).has_value());
  EXPECT_FALSE(ChildContext::from_argv(1, argv).has_value());
  char b1[] = "--dpserve-internal-role=scheduler", b2[] = "--bogus";
  char* bad[] = {a0, b1, b2, nullptr};
  EXPECT_THROW(ChildContext::from_argv(3, bad), Error);
}

bool exists(const std::string& path) {
  struct stat st {};
  return stat(path.c_str(), &st) == 0;
}

TEST(RuntimeDirTest, PrivateAndRemovedByTheDestructor) {
  std::string path;
  {
    RuntimeDir dir;
    path = dir.path();
    struct stat st {};
    ASSERT_EQ(stat(path.c_str(), &st), 0);
    EXPECT_TRUE(S_ISDIR(st.st_mode));
    EXPECT_EQ(st.st_mode & 0777, 0700u);
    EXPECT_THAT(path, HasSubstr("/dpserve-"));
    std::ofstream(path + "/file") << "x";
    std::filesystem::create_directory(path + "/sub");
    std::ofstream(path + "/sub/file") << "x";
    EXPECT_EQ(dir.endpoint("scheduler_input"), "ipc://" + path + "/scheduler_input");
  }
  EXPECT_FALSE(exists(path));
}

TEST(RuntimeDirTest, UsesXdgRuntimeDir) {
  RuntimeDir base;  // a writable directory to point XDG_RUNTIME_DIR at
  const char* old = std::getenv("XDG_RUNTIME_DIR");
  const std::string saved = old ? old : "";
  setenv("XDG_RUNTIME_DIR", base.path().c_str(), 1);
  {
    RuntimeDir dir("x");
    EXPECT_EQ(std::filesystem::path(dir.path()).parent_path(), base.path());
  }
  if (old) {
    setenv("XDG_RUNTIME_DIR", saved.c_str(), 1);
  } else {
    unsetenv("XDG_RUNTIME_DIR");
  }
}

TEST(RuntimeDirTest, RemovedAtExit) {
  ChildProcess child(helper("runtime-dir-exit"));
  const std::string path = child.wait_ready(Millis(10000))["path"];
  EXPECT_EQ(child.wait_exit(Millis(10000))->code, 0);
  EXPECT_FALSE(exists(path)) << path;
}

TEST(RuntimeDirTest, RemovedOnSigterm) {
  ChildProcess child(helper("runtime-dir"));
  const std::string path = child.wait_ready(Millis(10000))["path"];
  EXPECT_TRUE(exists(path + "/sock"));  // the bound ipc socket
  const ExitStatus st = child.terminate(Millis(10000));
  EXPECT_EQ(st.signal, SIGTERM);  // the handler re-raised it: the exit status is unchanged
  EXPECT_FALSE(exists(path)) << path;
}

}  // namespace
}  // namespace dpserve
