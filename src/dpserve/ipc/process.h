#pragma once
// Processes of dpserve's layout: a private runtime directory for ipc:// sockets, child processes
// spawned from the same binary with an internal role flag, a readiness pipe, and shutdown.
//
// Parent side:
//   RuntimeDir dir;                                    // /run/user/1000/dpserve-XXXXXX, 0700
//   ChildProcess sched({.role = "scheduler", .args = {...}});
//   nlohmann::json info = sched.wait_ready(Millis(600'000));   // e.g. {"max_total_tokens": ...}
//   ...
//   sched.terminate();                                 // SIGTERM, SIGKILL after the grace period
// Child side (first thing in main):
//   if (auto child = ChildContext::from_argv(argc, argv)) {
//     try { ...; child->signal_ready({{"max_total_tokens", n}}); run(); }
//     catch (const std::exception& e) { child->signal_error(e.what()); return 1; }
//   }
//
// Children die with their parent: PR_SET_PDEATHSIG(SIGKILL) is set between fork and exec, and a
// child whose parent died before that (getppid() changed) exits at once. Linux sends the death
// signal when the *thread* that forked exits, so spawn from a thread that lives as long as the
// child (the main thread). ChildProcess is not thread-safe.

#include <sys/types.h>

#include <chrono>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace dpserve {

// A timeout in milliseconds; negative waits forever.
using Millis = std::chrono::milliseconds;

// A private directory (mode 0700) for ipc:// sockets: mkdtemp of "<prefix>-XXXXXX" under
// $XDG_RUNTIME_DIR when it is a writable directory, else $TMPDIR, else /tmp. It is removed by the
// destructor, at exit() (only by the process that created it, not by forked children), and on
// SIGINT / SIGTERM / SIGHUP / SIGQUIT once install_cleanup_signal_handlers() was called. A
// SIGKILL leaves it behind (nothing can run then).
class RuntimeDir {
 public:
  // Creates the directory; throws dpserve::Error when it cannot.
  explicit RuntimeDir(std::string_view prefix = "dpserve");
  ~RuntimeDir();
  RuntimeDir(const RuntimeDir&) = delete;
  RuntimeDir& operator=(const RuntimeDir&) = delete;

  // The directory's absolute path.
  const std::string& path() const { return path_; }
  // "ipc://<path>/<name>" (see ipc_endpoint in zmq_socket.h for the length check).
  std::string endpoint(std::string_view name) const;
  // Removes the directory and everything in it now (idempotent).
  void remove();

 private:
  std::string path_;
  int slot_ = -1;  // index in the registry used by exit and signal cleanup
};

// Installs handlers for SIGINT, SIGTERM, SIGHUP and SIGQUIT that remove every live RuntimeDir of
// this process and then die of the signal as before. Signals whose disposition is not the default
// are left alone (a server with its own SIGTERM handler calls cleanup_runtime_dirs itself).
void install_cleanup_signal_handlers();

// Removes every live RuntimeDir of this process. Async-signal-safe (it only unlinks the
// directory's entries and the directory), for use from signal handlers.
void cleanup_runtime_dirs();

// For a child process: SIGTERM ends it (with the default action) only when its parent sent it,
// as ChildProcess::terminate does. A SIGTERM from anyone else (`kill -TERM -<pgid>`, a service
// manager signalling the whole group) is ignored: the parent gets it too, lets in-flight work
// finish and then stops its children itself.
void accept_sigterm_only_from_parent();

// How a child ended.
struct ExitStatus {
  int code = -1;   // exit code when it exited, else -1
  int signal = 0;  // the signal that killed it, else 0
  // "exit status 3", "killed by signal 9 (Killed)", or "status unknown" when reaped elsewhere.
  std::string describe() const;
  // Field-wise equality.
  bool operator==(const ExitStatus&) const = default;
};

// What to run in a child.
struct ChildSpec {
  std::string role{};                         // internal role, e.g. "scheduler"
  std::vector<std::string> args{};            // arguments after the internal flags
  std::string name{};                         // for logs and errors; empty = role
  std::string executable = "/proc/self/exe";  // the binary to run (tests use a helper)
};

// A child process spawned with a readiness pipe. The destructor terminates a child that still
// runs and reaps it.
class ChildProcess {
 public:
  // Forks and execs `spec.executable --dpserve-internal-role=<role> --dpserve-ready-fd=3
  // --dpserve-parent-pid=<pid> args...`; throws dpserve::Error when fork or pipe fail (a failed
  // exec shows as exit status 127 in wait_ready).
  explicit ChildProcess(const ChildSpec& spec);
  ~ChildProcess();
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  // Waits for the child's readiness message and returns its payload. Throws dpserve::Error naming
  // the child and its pid when it reports an error (with its message), exits or closes the pipe
  // first (with its exit status), or stays silent past `timeout` (it keeps running then).
  nlohmann::json wait_ready(Millis timeout);

  // Reaps the child if it has exited; nullopt while it runs.
  std::optional<ExitStatus> poll_exit();
  // Waits up to `timeout` for the child to exit and reaps it; nullopt if it still runs.
  std::optional<ExitStatus> wait_exit(Millis timeout);
  // SIGTERM, then SIGKILL if it has not exited after `grace`; reaps it. Returns at once with the
  // known status when it already exited.
  ExitStatus terminate(Millis grace = Millis(5000));
  // Sends `sig` to the child (no-op once reaped).
  void kill(int sig);

  // The child's pid.
  pid_t pid() const { return pid_; }
  // The readiness pipe (polls readable when the child reported or died), or -1 once read; for
  // launchers that wait on several children at once.
  int ready_fd() const { return ready_fd_; }
  // The name used in logs and errors.
  const std::string& name() const { return name_; }
  // A file descriptor that polls readable when the child exits (a pidfd), or -1 if the kernel
  // has none; for event loops that watch the scheduler.
  int exit_fd() const { return pidfd_; }
  // The exit status once reaped.
  const std::optional<ExitStatus>& exit_status() const { return status_; }

 private:
  std::optional<ExitStatus> reap(bool block);
  [[noreturn]] void fail_not_ready(const std::string& why);

  std::string name_;
  pid_t pid_ = -1;
  int ready_fd_ = -1;  // read end of the readiness pipe; -1 once read or closed
  int pidfd_ = -1;
  std::optional<ExitStatus> status_;
};

// The child's side: the parsed internal flags and the readiness pipe.
class ChildContext {
 public:
  // Returns nullopt unless argv[1] is --dpserve-internal-role=...; otherwise parses the internal
  // flags, checks that the parent still lives (exits with status 1 if not) and hides the pipe from
  // the child's own children. Throws dpserve::Error on malformed internal flags.
  static std::optional<ChildContext> from_argv(int argc, char** argv);
  ChildContext(ChildContext&& other) noexcept;
  ChildContext& operator=(ChildContext&& other) noexcept;
  ~ChildContext();

  // The role the parent asked for.
  const std::string& role() const { return role_; }
  // The arguments after the internal flags.
  const std::vector<std::string>& args() const { return args_; }
  // The spawning parent's pid.
  pid_t parent_pid() const { return parent_pid_; }

  // Tells the parent the child is ready, with a JSON payload (e.g. its KV capacity); once.
  void signal_ready(const nlohmann::json& payload = nlohmann::json::object());
  // Tells the parent the child failed to start; its wait_ready throws with `message`.
  void signal_error(const std::string& message);

 private:
  ChildContext() = default;
  void send(const nlohmann::json& msg);

  std::string role_;
  std::vector<std::string> args_;
  pid_t parent_pid_ = 0;
  int ready_fd_ = -1;
};

}  // namespace dpserve
