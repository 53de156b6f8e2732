#include "dpserve/ipc/process.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <thread>

#include <spdlog/spdlog.h>

#include "dpserve/common/errors.h"
#include "dpserve/ipc/zmq_socket.h"

namespace dpserve {

namespace {

using Clock = std::chrono::steady_clock;

constexpr std::string_view kRoleFlag = "--dpserve-internal-role=";
constexpr std::string_view kReadyFdFlag = "--dpserve-ready-fd=";
constexpr std::string_view kParentPidFlag = "--dpserve-parent-pid=";
constexpr int kChildReadyFd = 3;              // where the child finds the pipe's write end
constexpr size_t kMaxReadyMessage = 1 << 20;  // bytes of readiness JSON accepted
constexpr Millis kStatusWait = Millis(2000);  // how long to wait for the exit of a failed child

// ---- Registry of live runtime directories, readable from signal handlers. ----

constexpr int kMaxDirs = 16;
struct DirSlot {
  std::atomic<pid_t> owner{0};  // pid of the creating process; 0 = free
  char path[PATH_MAX] = {};     // the directory
};
DirSlot g_dirs[kMaxDirs];
std::mutex g_dirs_mu;  // serializes registration (never taken in signal handlers)

// Unlinks the entries of `path` (one level of empty subdirectories too) and the directory itself,
// using only async-signal-safe calls.
void remove_dir_signal_safe(const char* path) {
  for (int pass = 0; pass < 3; ++pass) {
    const int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return;
    alignas(8) char buf[4096];
    while (true) {
      const ssize_t n = getdents64(fd, buf, sizeof(buf));
      if (n <= 0) break;
      for (ssize_t off = 0; off < n;) {
        const auto* d = reinterpret_cast<const struct dirent64*>(buf + off);
        off += d->d_reclen;
        const char* name = d->d_name;
        if (std::strcmp(name, ".") == 0 || std::strcmp(name, "..") == 0) continue;
        if (unlinkat(fd, name, 0) != 0 && errno == EISDIR) unlinkat(fd, name, AT_REMOVEDIR);
      }
    }
    close(fd);
    if (rmdir(path) == 0 || errno == ENOENT) return;
  }
}

int register_dir(const std::string& path) {
  std::lock_guard<std::mutex> lock(g_dirs_mu);
  static std::once_flag at_exit;
  std::call_once(at_exit, [] { std::atexit(cleanup_runtime_dirs); });
  for (int i = 0; i < kMaxDirs; ++i) {
    if (g_dirs[i].owner.load() == 0) {
      std::snprintf(g_dirs[i].path, sizeof(g_dirs[i].path), "%s", path.c_str());
      g_dirs[i].owner.store(getpid());
      return i;
    }
  }
  spdlog::warn("more than {} runtime directories; {} is not removed on signals", kMaxDirs, path);
  return -1;
}

void cleanup_signal_handler(int sig) {
  const int saved_errno = errno;
  cleanup_runtime_dirs();
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  sigaction(sig, &dfl, nullptr);
  raise(sig);  // delivered with the default action once the handler returns
  errno = saved_errno;
}

// A usable base directory for runtime dirs: writable and short enough for socket paths.
std::string runtime_base() {
  for (const char* env : {"XDG_RUNTIME_DIR", "TMPDIR"}) {
    const char* v = std::getenv(env);
    if (v == nullptr || *v == '\0' || std::strlen(v) > 64) continue;
    struct stat st {};
    if (stat(v, &st) == 0 && S_ISDIR(st.st_mode) && access(v, W_OK | X_OK) == 0) return v;
  }
  return "/tmp";
}

}  // namespace

// ---- RuntimeDir ----

RuntimeDir::RuntimeDir(std::string_view prefix) {
  std::string templ = runtime_base() + "/" + std::string(prefix) + "-XXXXXX";
  if (mkdtemp(templ.data()) == nullptr) {
    throw_error("cannot create a runtime directory {}: {}", templ, std::strerror(errno));
  }
  path_ = templ;
  slot_ = register_dir(path_);
}

RuntimeDir::~RuntimeDir() { remove(); }

std::string RuntimeDir::endpoint(std::string_view name) const { return ipc_endpoint(path_, name); }

void RuntimeDir::remove() {
  if (path_.empty()) return;
  if (slot_ >= 0) {
    std::lock_guard<std::mutex> lock(g_dirs_mu);
    g_dirs[slot_].owner.store(0);
    slot_ = -1;
  }
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
  if (ec) spdlog::warn("cannot remove runtime directory {}: {}", path_, ec.message());
  path_.clear();
}

void install_cleanup_signal_handlers() {
  for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGQUIT}) {
    struct sigaction old {};
    if (sigaction(sig, nullptr, &old) != 0) continue;
    if ((old.sa_flags & SA_SIGINFO) != 0 || old.sa_handler != SIG_DFL) continue;
    struct sigaction sa {};
    sa.sa_handler = cleanup_signal_handler;
    sigemptyset(&sa.sa_mask);
    sigaction(sig, &sa, nullptr);
  }
}

void cleanup_runtime_dirs() {
  const pid_t self = getpid();
  for (DirSlot& slot : g_dirs) {
    pid_t expected = self;
    // Only the creating process removes a directory; claiming the slot makes removal happen once.
    if (slot.owner.compare_exchange_strong(expected, 0)) remove_dir_signal_safe(slot.path);
  }
}

namespace {

void sigterm_from_parent_handler(int sig, siginfo_t* info, void*) {
  if (info == nullptr || info->si_pid != getppid()) return;  // not the parent: ignored
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  sigaction(sig, &dfl, nullptr);
  raise(sig);  // delivered with the default action once the handler returns
}

}  // namespace

void accept_sigterm_only_from_parent() {
  struct sigaction sa {};
  sa.sa_sigaction = sigterm_from_parent_handler;
  sa.sa_flags = SA_SIGINFO | SA_RESTART;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, nullptr);
}

// ---- ExitStatus ----

std::string ExitStatus::describe() const {
  if (signal != 0) return fmt::format("killed by signal {} ({})", signal, strsignal(signal));
  if (code >= 0) return fmt::format("exit status {}", code);
  return "status unknown";
}

// ---- ChildProcess ----

ChildProcess::ChildProcess(const ChildSpec& spec)
    : name_(spec.name.empty() ? spec.role : spec.name) {
  const pid_t parent = getpid();
  std::vector<std::string> argv_s = {spec.executable, std::string(kRoleFlag) + spec.role,
                                     fmt::format("{}{}", kReadyFdFlag, kChildReadyFd),
                                     fmt::format("{}{}", kParentPidFlag, parent)};
  argv_s.insert(argv_s.end(), spec.args.begin(), spec.args.end());
  std::vector<char*> argv;
  for (std::string& s : argv_s) argv.push_back(s.data());
  argv.push_back(nullptr);
  const std::string exec_failed =
      fmt::format("dpserve: cannot execute {} for {}\n", spec.executable, name_);

  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) {
    throw_error("cannot create a pipe for {}: {}", name_, std::strerror(errno));
  }
  const pid_t pid = fork();
  if (pid < 0) {
    const int err = errno;
    close(fds[0]);
    close(fds[1]);
    throw_error("cannot fork {}: {}", name_, std::strerror(err));
  }
  if (pid == 0) {
    // The child, until exec: async-signal-safe calls only.
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(1);  // the parent died before prctl
    if (fds[1] == kChildReadyFd) {
      fcntl(kChildReadyFd, F_SETFD, 0);
    } else if (dup2(fds[1], kChildReadyFd) < 0) {
      _exit(127);
    }
#ifdef SYS_close_range
    syscall(SYS_close_range, kChildReadyFd + 1, ~0u, 0u);  // no stray descriptors
#endif
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGCHLD}) sigaction(sig, &dfl, nullptr);
    execv(argv[0], argv.data());
    ssize_t ignored = write(STDERR_FILENO, exec_failed.data(), exec_failed.size());
    (void)ignored;
    _exit(127);
  }
  close(fds[1]);
  pid_ = pid;
  ready_fd_ = fds[0];
#ifdef SYS_pidfd_open
  pidfd_ = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
  if (pidfd_ >= 0) fcntl(pidfd_, F_SETFD, FD_CLOEXEC);
#endif
  spdlog::debug("started {} (pid {})", name_, pid_);
}

ChildProcess::~ChildProcess() {
  if (pid_ > 0 && !status_) terminate();
  if (ready_fd_ >= 0) close(ready_fd_);
  if (pidfd_ >= 0) close(pidfd_);
}

void ChildProcess::fail_not_ready(const std::string& why) {
  if (ready_fd_ >= 0) {
    close(ready_fd_);
    ready_fd_ = -1;
  }
  throw_error("{} (pid {}) {}", name_, pid_, why);
}

nlohmann::json ChildProcess::wait_ready(Millis timeout) {
  if (ready_fd_ < 0) throw_error("{} (pid {}): readiness was already read", name_, pid_);
  const auto deadline = Clock::now() + timeout;
  std::string buf;
  while (buf.find('\n') == std::string::npos) {
    int wait_ms = -1;
    if (timeout.count() >= 0) {
      const auto left = std::chrono::ceil<Millis>(deadline - Clock::now()).count();
      wait_ms = static_cast<int>(std::max<int64_t>(left, 0));
    }
    pollfd p{ready_fd_, POLLIN, 0};
    const int rc = poll(&p, 1, wait_ms);
    if (rc < 0) {
      if (errno == EINTR) continue;
      throw_error("{} (pid {}): poll on the readiness pipe failed: {}", name_, pid_,
                  std::strerror(errno));
    }
    if (rc == 0) {
      // The timeout is not the child's last word: a child that died shows its status instead.
      if (auto st = poll_exit())
        fail_not_ready(fmt::format("exited before it was ready: {}", st->describe()));
      fail_not_ready(fmt::format("did not report ready within {:.1f} s",
                                 std::chrono::duration<double>(timeout).count()));
    }
    char chunk[4096];
    const ssize_t n = read(ready_fd_, chunk, sizeof(chunk));
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      throw_error("{} (pid {}): read on the readiness pipe failed: {}", name_, pid_,
                  std::strerror(errno));
    }
    if (n == 0) {  // EOF: the child exited, or closed the pipe, without a message
      const auto st = wait_exit(kStatusWait);
      fail_not_ready(st ? fmt::format("exited before it was ready: {}", st->describe())
                        : std::string("closed its readiness pipe without reporting"));
    }
    buf.append(chunk, static_cast<size_t>(n));
    if (buf.size() > kMaxReadyMessage) fail_not_ready("sent an oversized readiness message");
  }
  close(ready_fd_);
  ready_fd_ = -1;
  buf.resize(buf.find('\n'));
  nlohmann::json msg = nlohmann::json::parse(buf, nullptr, /*allow_exceptions=*/false);
  if (!msg.is_object() || !msg.contains("status") || !msg["status"].is_string()) {
    fail_not_ready(fmt::format("sent an unreadable readiness message: {}", buf.substr(0, 200)));
  }
  if (msg["status"] == "ready") {
    return msg.contains("payload") ? msg["payload"] : nlohmann::json::object();
  }
  std::string message = msg.value("message", std::string("(no message)"));
  const auto st = wait_exit(kStatusWait);
  fail_not_ready(fmt::format("failed to start: {}{}", message,
                             st ? " (" + st->describe() + ")" : std::string()));
}

std::optional<ExitStatus> ChildProcess::reap(bool block) {
  if (status_) return status_;
  int st = 0;
  pid_t r;
  do {
    r = waitpid(pid_, &st, block ? 0 : WNOHANG);
  } while (r < 0 && errno == EINTR);
  if (r == 0) return std::nullopt;
  ExitStatus es;
  if (r == pid_) {
    if (WIFEXITED(st)) es.code = WEXITSTATUS(st);
    if (WIFSIGNALED(st)) es.signal = WTERMSIG(st);
  }  // else ECHILD: reaped elsewhere (SIGCHLD ignored); the status is unknown
  status_ = es;
  if (pidfd_ >= 0) {
    close(pidfd_);
    pidfd_ = -1;
  }
  spdlog::debug("{} (pid {}) ended: {}", name_, pid_, es.describe());
  return status_;
}

std::optional<ExitStatus> ChildProcess::poll_exit() { return reap(false); }

std::optional<ExitStatus> ChildProcess::wait_exit(Millis timeout) {
  if (timeout.count() < 0) return reap(true);
  const auto deadline = Clock::now() + timeout;
  while (true) {
    if (auto st = reap(false)) return st;
    const auto left = std::chrono::ceil<Millis>(deadline - Clock::now()).count();
    if (left <= 0) return std::nullopt;
    if (pidfd_ >= 0) {
      pollfd p{pidfd_, POLLIN, 0};
      poll(&p, 1, static_cast<int>(left));  // readable on exit; EINTR just loops
    } else {
      std::this_thread::sleep_for(std::min<Millis>(Millis(5), Millis(left)));
    }
  }
}

void ChildProcess::kill(int sig) {
  if (pid_ > 0 && !status_) ::kill(pid_, sig);
}

ExitStatus ChildProcess::terminate(Millis grace) {
  if (status_) return *status_;
  kill(SIGTERM);
  if (auto st = wait_exit(grace)) return *st;
  spdlog::warn("{} (pid {}) did not exit {:.1f} s after SIGTERM; sending SIGKILL", name_, pid_,
               std::chrono::duration<double>(grace).count());
  kill(SIGKILL);
  return *reap(true);
}

// ---- ChildContext ----

std::optional<ChildContext> ChildContext::from_argv(int argc, char** argv) {
  if (argc < 2 || !std::string_view(argv[1]).starts_with(kRoleFlag)) return std::nullopt;
  if (argc < 4 || !std::string_view(argv[2]).starts_with(kReadyFdFlag) ||
      !std::string_view(argv[3]).starts_with(kParentPidFlag)) {
    throw_error("{}: expected {} and {} after it (internal flags, set by dpserve itself)", argv[1],
                kReadyFdFlag, kParentPidFlag);
  }
  ChildContext c;
  c.role_ = std::string(std::string_view(argv[1]).substr(kRoleFlag.size()));
  try {
    c.ready_fd_ = std::stoi(std::string(std::string_view(argv[2]).substr(kReadyFdFlag.size())));
    c.parent_pid_ = static_cast<pid_t>(
        std::stol(std::string(std::string_view(argv[3]).substr(kParentPidFlag.size()))));
  } catch (const std::exception&) {
    throw_error("malformed internal flags {} {}", argv[2], argv[3]);
  }
  if (fcntl(c.ready_fd_, F_GETFD) < 0) {
    const int fd = c.ready_fd_;
    c.ready_fd_ = -1;
    throw_error("{}{}: not an open file descriptor", kReadyFdFlag, fd);
  }
  fcntl(c.ready_fd_, F_SETFD, FD_CLOEXEC);  // not inherited by this child's own children
  for (int i = 4; i < argc; ++i) c.args_.emplace_back(argv[i]);
  // Set before exec by ChildProcess; again here for a child started some other way.
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != c.parent_pid_) {
    std::fprintf(stderr, "dpserve %s: the parent process %d is gone; exiting\n", c.role_.c_str(),
                 static_cast<int>(c.parent_pid_));
    std::_Exit(1);
  }
  return c;
}

ChildContext::ChildContext(ChildContext&& other) noexcept
    : role_(std::move(other.role_)),
      args_(std::move(other.args_)),
      parent_pid_(other.parent_pid_),
      ready_fd_(std::exchange(other.ready_fd_, -1)) {}

ChildContext& ChildContext::operator=(ChildContext&& other) noexcept {
  if (this != &other) {
    if (ready_fd_ >= 0) close(ready_fd_);
    role_ = std::move(other.role_);
    args_ = std::move(other.args_);
    parent_pid_ = other.parent_pid_;
    ready_fd_ = std::exchange(other.ready_fd_, -1);
  }
  return *this;
}

ChildContext::~ChildContext() {
  if (ready_fd_ >= 0) close(ready_fd_);
}

void ChildContext::send(const nlohmann::json& msg) {
  if (ready_fd_ < 0) {
    spdlog::warn("{}: readiness was already reported", role_);
    return;
  }
  const std::string line =
      msg.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  size_t done = 0;
  while (done < line.size()) {
    const ssize_t n = write(ready_fd_, line.data() + done, line.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      spdlog::warn("{}: cannot report readiness to the parent: {}", role_, std::strerror(errno));
      break;
    }
    done += static_cast<size_t>(n);
  }
  close(ready_fd_);
  ready_fd_ = -1;
}

void ChildContext::signal_ready(const nlohmann::json& payload) {
  send({{"status", "ready"}, {"payload", payload}});
}

void ChildContext::signal_error(const std::string& message) {
  send({{"status", "error"}, {"message", message}});
}

}  // namespace dpserve
