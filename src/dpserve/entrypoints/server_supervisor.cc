#include "dpserve/entrypoints/server_supervisor.h"

#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstring>
#include <sstream>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include "dpserve/common/errors.h"
#include "dpserve/distributed/coordinator_types.h"

namespace dpserve {

namespace {

using Clock = std::chrono::steady_clock;

constexpr auto kStableAfter = std::chrono::seconds(60);  // service that resets the restart count
constexpr auto kMaxBackoff = std::chrono::seconds(30);
constexpr auto kAbortGrace = std::chrono::seconds(5);  // after the abort, for the last responses
// After a controller's death, how long its last dispatch notices (already sent) may take to be
// read before the requests it never dispatched are failed.
constexpr auto kNoticeGrace = std::chrono::milliseconds(300);
// The Retry-After estimate of a controller's start (it binds sockets; no model to load).
constexpr auto kControllerStartup = std::chrono::seconds(1);

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

}  // namespace

ServerSupervisor::ServerSupervisor(const ServerArgs& args, RankLauncher& launcher,
                                   TokenizerManager& tm, int signal_fd,
                                   std::chrono::milliseconds startup)
    : args_(args), launcher_(launcher), tm_(tm), signal_fd_(signal_fd), startup_(startup) {
  plain_dp_ = args.dp_size > 1 && !args.enable_dp_attention;
  world_size_ = args.tp_size * (plain_dp_ ? args.dp_size : 1);
  const std::vector<int> local = launcher_.local_ranks();
  const auto now = Clock::now();
  if (plain_dp_) {
    // One unit per replica, also for those on other nodes: their launchers restart the ranks
    // named in the generation node 0 publishes (lifecycle_restart_key).
    for (int32_t k = 0; k < args.dp_size; ++k) {
      Unit u;
      for (int r = k * args.tp_size; r < (k + 1) * args.tp_size; ++r) {
        const bool here = std::find(local.begin(), local.end(), r) != local.end();
        (here ? u.ranks : u.remote_ranks).push_back(r);
      }
      u.dp_groups = {k};
      u.description = fmt::format("DP group {}", k);
      units_.push_back(std::move(u));
    }
  } else {
    // One collective group, possibly over several nodes: the other nodes' launchers restart
    // their ranks when node 0 publishes the generation (lifecycle_restart_key).
    Unit u;
    u.ranks = local;
    for (int r = 0; r < world_size_; ++r) {
      if (std::find(local.begin(), local.end(), r) == local.end()) u.remote_ranks.push_back(r);
    }
    for (int32_t k = 0; args.dp_size > 1 && k < args.dp_size; ++k) u.dp_groups.push_back(k);
    u.whole_server = true;
    u.description = world_size_ > 1 ? "the scheduler ranks" : "the scheduler process";
    units_.push_back(std::move(u));
  }
  for (Unit& u : units_) u.up_since = now;
  controller_.up_since = now;
  if (ChildProcess* c = launcher_.controller()) controller_pid_ = c->pid();
  for (int r : local) pids_.push_back(launcher_.child(r).pid());
  unit_states_.assign(units_.size(), UnitState::kServing);
  unit_restarts_.assign(units_.size(), 0);
}

std::string lifecycle_restart_key(int generation) {
  return fmt::format("lifecycle/restart/g{}", generation);
}

std::string lifecycle_exit_key(int rank, int generation) {
  return fmt::format("lifecycle/exit/r{}/g{}", rank, generation);
}

std::string lifecycle_ready_key(int rank, int generation) {
  return fmt::format("lifecycle/ready/r{}/g{}", rank, generation);
}

std::string format_rank_list(const std::vector<int>& ranks) {
  return fmt::format("{}", fmt::join(ranks, " "));
}

std::vector<int> parse_rank_list(const std::string& text) {
  std::vector<int> out;
  std::istringstream in(text);
  for (std::string word; in >> word;) {
    int r = 0;
    auto [end, ec] = std::from_chars(word.data(), word.data() + word.size(), r);
    if (ec == std::errc() && end == word.data() + word.size()) out.push_back(r);
  }
  return out;
}

std::string rank_exit_cause(const ExitStatus& st) {
  if (st.signal != 0) return fmt::format("died ({})", st.describe());
  if (st.code == 3) {
    return "exited with status 3: its watchdog found a step hung for longer than "
           "--watchdog-timeout";
  }
  if (st.code == 1) return "exited with status 1 (an error, or a peer rank's failure)";
  return fmt::format("exited unexpectedly ({})", st.describe());
}

int ServerSupervisor::unit_of(int rank) const {
  for (size_t i = 0; i < units_.size(); ++i) {
    const auto& rs = units_[i].ranks;
    const auto& remote = units_[i].remote_ranks;
    if (std::find(rs.begin(), rs.end(), rank) != rs.end() ||
        std::find(remote.begin(), remote.end(), rank) != remote.end()) {
      return static_cast<int>(i);
    }
  }
  return -1;
}

int32_t ServerSupervisor::dp_group_of(int rank) const {
  if (args_.dp_size <= 1) return -1;
  if (plain_dp_) return rank / args_.tp_size;
  return args_.enable_dp_attention ? rank / (args_.tp_size / args_.dp_size) : -1;
}

std::string ServerSupervisor::rank_name(int rank, int node, int64_t pid) const {
  const int32_t g = dp_group_of(rank);
  return fmt::format("{} (node {}, pid {}{})",
                     world_size_ > 1 ? fmt::format("scheduler rank {}", rank)
                                     : std::string("the scheduler process"),
                     node, pid, g >= 0 ? fmt::format(", DP group {}", g) : "");
}

void ServerSupervisor::set_unit_state(int unit, UnitState state) {
  units_[static_cast<size_t>(unit)].state = state;
  std::lock_guard<std::mutex> lock(mu_);
  unit_states_[static_cast<size_t>(unit)] = state;
  unit_restarts_[static_cast<size_t>(unit)] = units_[static_cast<size_t>(unit)].restarts;
}

bool ServerSupervisor::all_units_down() const {
  return std::none_of(units_.begin(), units_.end(),
                      [](const Unit& u) { return u.state == UnitState::kServing; });
}

int ServerSupervisor::run() {
  for (;;) {
    std::vector<pollfd> fds = {{signal_fd_, POLLIN, 0}, {launcher_.dead_ranks_fd(), POLLIN, 0}};
    for (int fd : launcher_.exit_fds()) fds.push_back({fd, POLLIN, 0});
    std::vector<std::pair<int, int>> ready_at;  // (fds index, rank) of starting ranks
    for (const Unit& u : units_) {
      if (u.state != UnitState::kStarting) continue;
      for (size_t i = 0; i < u.ranks.size(); ++i) {
        const int fd = u.ready[i] ? -1 : launcher_.child(u.ranks[i]).ready_fd();
        if (fd < 0) continue;
        ready_at.emplace_back(static_cast<int>(fds.size()), u.ranks[i]);
        fds.push_back({fd, POLLIN, 0});
      }
    }
    int controller_ready_at = -1;  // fds index of a restarting controller's readiness pipe
    if (controller_.state == UnitState::kStarting && launcher_.controller() != nullptr &&
        launcher_.controller()->ready_fd() >= 0) {
      controller_ready_at = static_cast<int>(fds.size());
      fds.push_back({launcher_.controller()->ready_fd(), POLLIN, 0});
    }
    const int rc = ::poll(fds.data(), fds.size(), 100);
    if (rc < 0 && errno != EINTR) throw_error("poll: {}", std::strerror(errno));

    if (rc > 0 && (fds[0].revents & POLLIN) != 0) on_signal();
    if (forced_) return 0;
    handle_dead_ranks();
    handle_exits();
    for (size_t u = 0; u < units_.size(); ++u) poll_remote(static_cast<int>(u));
    std::vector<std::vector<int>> readable(units_.size());
    for (const auto& [idx, rank] : ready_at) {
      if ((fds[static_cast<size_t>(idx)].revents & (POLLIN | POLLHUP | POLLERR)) != 0) {
        const int u = unit_of(rank);
        if (u >= 0) readable[static_cast<size_t>(u)].push_back(rank);
      }
    }
    for (size_t u = 0; u < units_.size(); ++u) {
      if (!readable[u].empty()) poll_ready(static_cast<int>(u), readable[u]);
    }
    if (controller_ready_at >= 0 && (fds[static_cast<size_t>(controller_ready_at)].revents &
                                     (POLLIN | POLLHUP | POLLERR)) != 0) {
      poll_controller_ready();
    }
    const auto now = Clock::now();
    controller_timers(now);
    for (size_t u = 0; u < units_.size() && !fatal_ && !draining_; ++u) {
      if (units_[u].state == UnitState::kBackoff && now >= units_[u].restart_at) {
        start_unit(static_cast<int>(u));
      }
    }
    if (fatal_) {
      spdlog::critical("{}", *fatal_);
      tm_.set_scheduler_dead(*fatal_);
      return 1;
    }
    if (draining_ && drain_step()) return 0;
  }
}

void ServerSupervisor::on_signal() {
  unsigned char b = 0;
  while (::read(signal_fd_, &b, 1) == 1) {
    if (!draining_) {
      draining_ = true;
      drain_deadline_ = Clock::now() + std::chrono::milliseconds(
                                           static_cast<int64_t>(args_.shutdown_timeout * 1000));
      tm_.stop_accepting();
      spdlog::info(
          "received {}: shutting down gracefully: draining {} requests in flight for up to "
          "{:.0f} s (--shutdown-timeout); new requests get 503; a second signal stops at once",
          strsignal(b), tm_.num_live_requests(), args_.shutdown_timeout);
    } else if (!forced_) {
      forced_ = true;
      spdlog::warn("received {} again: stopping now ({} requests in flight fail)", strsignal(b),
                   tm_.num_live_requests());
      tm_.set_scheduler_dead("the server was stopped");
    }
  }
}

bool ServerSupervisor::drain_step() {
  if (tm_.num_open_handles() == 0) {
    spdlog::info("shutdown: every response is complete");
    return true;
  }
  const auto now = Clock::now();
  if (!aborted_ && now >= drain_deadline_) {
    aborted_ = true;
    spdlog::warn("shutdown: --shutdown-timeout ({:.0f} s) passed; aborting {} requests",
                 args_.shutdown_timeout, tm_.num_live_requests());
    tm_.abort_all();
  }
  if (aborted_ && now >= drain_deadline_ + kAbortGrace) {
    spdlog::warn("shutdown: {} responses still open; closing them", tm_.num_open_handles());
    tm_.set_scheduler_dead("the server is shutting down");
    return true;
  }
  return false;
}

void ServerSupervisor::handle_dead_ranks() {
  for (const RankState& st : launcher_.take_dead_ranks()) {
    const int r = st.info.global_rank;
    const std::string cause =
        fmt::format("missed heartbeats for {:.1f} s (hung or stopped; --heartbeat-timeout {})",
                    st.last_heartbeat_age_s, args_.heartbeat_timeout);
    const int u = unit_of(r);
    if (u < 0) continue;
    if (st.info.node_rank != args_.node_rank) {
      // Its own launcher kills it when node 0 publishes the restart.
      on_failure(u, r, st.info.node_rank, st.info.pid, cause);
      continue;
    }
    ChildProcess& c = launcher_.child(r);
    if (c.exit_status() || c.pid() != st.info.pid) continue;  // an incarnation already replaced
    on_failure(u, r, args_.node_rank, c.pid(), cause + "; killed");
  }
}

void ServerSupervisor::handle_exits() {
  std::vector<RankExit> exits = launcher_.poll_exits();
  // Ranks killed by a signal first: their peers then exit 1 on the broken collective, and the log
  // should name the cause, not the consequence.
  std::stable_sort(exits.begin(), exits.end(), [](const RankExit& a, const RankExit& b) {
    return (a.status.signal != 0) > (b.status.signal != 0);
  });
  for (const RankExit& e : exits) {
    if (e.rank < 0) {
      on_controller_failure(
          e.pid, fmt::format("{} ({})", e.status.signal != 0 ? "died" : "exited unexpectedly",
                             e.status.describe()));
      continue;
    }
    const int u = unit_of(e.rank);
    if (u < 0) continue;
    on_failure(u, e.rank, args_.node_rank, e.pid, rank_exit_cause(e.status));
  }
}

void ServerSupervisor::fatal(const std::string& message) {
  if (!fatal_) fatal_ = message;
}

std::optional<std::chrono::milliseconds> ServerSupervisor::restart_delay(int restarts,
                                                                         const std::string& what) {
  if (draining_) return std::nullopt;
  if (args_.max_restarts == 0) {
    fatal(fmt::format("{}; --max-restarts is 0: the server exits", what));
    return std::nullopt;
  }
  if (restarts >= args_.max_restarts) {
    fatal(fmt::format(
        "{}; giving up after {} restarts in a row (--max-restarts {}): the server exits", what,
        restarts, args_.max_restarts));
    return std::nullopt;
  }
  return std::min<std::chrono::milliseconds>(
      std::chrono::seconds(int64_t{1} << std::min(restarts, 5)), kMaxBackoff);
}

void ServerSupervisor::on_failure(int unit, int rank, int node, int64_t pid,
                                  const std::string& cause) {
  Unit& u = units_[static_cast<size_t>(unit)];
  if (u.state == UnitState::kBackoff || u.state == UnitState::kDown) return;  // handled already
  const auto now = Clock::now();
  const bool was_serving = u.state == UnitState::kServing;
  if (was_serving && now - u.up_since >= kStableAfter) u.restarts = 0;
  u.failed_at = now;
  const std::string what = fmt::format("{} {}", rank_name(rank, node, pid), cause);
  const std::string why = fmt::format("rank {} {}", rank, cause);
  launcher_.kill_ranks(u.ranks, why);
  if (Coordinator* c = launcher_.coordinator()) {
    for (int r : u.remote_ranks) c->declare_dead(r, why);  // they may register again
  }

  // What the unit's clients are told, and when to come back.
  std::string action;
  int retry_after = 0;
  const std::optional<std::chrono::milliseconds> delay = restart_delay(u.restarts, what);
  if (!delay && !draining_) return;  // fatal
  const bool can_restart = delay.has_value();
  if (can_restart) {
    ++u.restarts;
    u.restart_at = now + *delay;
    retry_after =
        static_cast<int>(std::ceil(std::chrono::duration<double>(*delay + startup_).count()));
    action =
        fmt::format("restarting {} in {:.0f} s (restart {} of {})", u.description,
                    std::chrono::duration<double>(*delay).count(), u.restarts, args_.max_restarts);
    set_unit_state(unit, UnitState::kBackoff);
  } else {
    action = "not restarted: the server is shutting down";
    set_unit_state(unit, UnitState::kDown);
  }
  spdlog::error("{}; {}", what, action);

  const std::string reason = fmt::format(
      "{} {}; {}",
      world_size_ > 1 ? fmt::format("scheduler rank {}", rank) : "the scheduler process", cause,
      can_restart ? fmt::format("restarting {}, retry in {} s", u.description, retry_after)
                  : std::string("the server is shutting down"));
  if (u.whole_server || all_units_down()) {
    tm_.set_recovering(reason, retry_after);  // new requests: 503 + Retry-After
  }
  for (int32_t g : u.dp_groups) tm_.set_dp_group_down(g, reason, retry_after);
  if (u.whole_server) tm_.fail_requests(-1, reason, retry_after);
}

void ServerSupervisor::start_unit(int unit) {
  Unit& u = units_[static_cast<size_t>(unit)];
  ++generation_;
  u.generation = generation_;
  try {
    if (args_.nnodes > 1) {
      // Every generation, so that the other nodes' launchers (which poll for the next one) never
      // miss one; each kills and starts again those of its ranks the value lists.
      std::vector<int> all = u.ranks;
      all.insert(all.end(), u.remote_ranks.begin(), u.remote_ranks.end());
      std::sort(all.begin(), all.end());
      launcher_.coordinator()->set(lifecycle_restart_key(generation_), format_rank_list(all));
      if (!u.remote_ranks.empty()) {
        spdlog::info("asked the other nodes to restart ranks {} (generation {})",
                     format_rank_list(u.remote_ranks), generation_);
      }
    }
    launcher_.respawn(u.ranks, generation_);
  } catch (const Error& e) {
    fatal(fmt::format("cannot restart {}: {}", u.description, e.what()));
    return;
  }
  u.ready.assign(u.ranks.size(), false);
  u.remote_ready.assign(u.remote_ranks.size(), false);
  set_unit_state(unit, UnitState::kStarting);
  std::lock_guard<std::mutex> lock(mu_);
  const std::vector<int> local = launcher_.local_ranks();
  for (size_t i = 0; i < local.size(); ++i) pids_[i] = launcher_.child(local[i]).pid();
}

void ServerSupervisor::poll_ready(int unit, const std::vector<int>& readable_ranks) {
  Unit& u = units_[static_cast<size_t>(unit)];
  if (u.state != UnitState::kStarting) return;
  for (int r : readable_ranks) {
    ChildProcess& c = launcher_.child(r);
    try {
      c.wait_ready(std::chrono::seconds(5));
    } catch (const Error& e) {
      on_failure(unit, r, args_.node_rank, c.pid(), fmt::format("failed to start: {}", e.what()));
      return;
    }
    const size_t i =
        static_cast<size_t>(std::find(u.ranks.begin(), u.ranks.end(), r) - u.ranks.begin());
    u.ready[i] = true;
  }
  check_ready(unit);
}

void ServerSupervisor::check_ready(int unit) {
  const Unit& u = units_[static_cast<size_t>(unit)];
  const auto all = [](const std::vector<bool>& v) {
    return std::all_of(v.begin(), v.end(), [](bool b) { return b; });
  };
  if (u.state == UnitState::kStarting && all(u.ready) && all(u.remote_ready)) on_unit_ready(unit);
}

void ServerSupervisor::poll_remote(int unit) {
  Unit& u = units_[static_cast<size_t>(unit)];
  Coordinator* coord = launcher_.coordinator();
  if (u.remote_ranks.empty() || coord == nullptr) return;
  if (u.state != UnitState::kServing && u.state != UnitState::kStarting) return;
  // An exit of the current generation (a key of an older one is about a process already
  // replaced).
  for (int r : u.remote_ranks) {
    const std::optional<std::string> exit = coord->value(lifecycle_exit_key(r, u.generation));
    if (!exit) continue;
    const nlohmann::json j = nlohmann::json::parse(*exit, nullptr, false);
    const bool ok = j.is_object();
    on_failure(unit, r, ok ? j.value("node", -1) : -1, ok ? j.value("pid", int64_t{0}) : 0,
               ok ? j.value("cause", std::string("exited")) : std::string("exited"));
    return;
  }
  if (u.state != UnitState::kStarting) return;
  for (size_t i = 0; i < u.remote_ranks.size(); ++i) {
    if (!u.remote_ready[i]) {
      u.remote_ready[i] =
          coord->value(lifecycle_ready_key(u.remote_ranks[i], u.generation)).has_value();
    }
  }
  check_ready(unit);
}

void ServerSupervisor::on_unit_ready(int unit) {
  Unit& u = units_[static_cast<size_t>(unit)];
  const bool was_all_down = all_units_down();
  u.up_since = Clock::now();
  set_unit_state(unit, UnitState::kServing);
  for (int32_t g : u.dp_groups) tm_.set_dp_group_up(g);
  if (u.whole_server || was_all_down) tm_.set_recovering(std::nullopt);
  spdlog::info("{} back in service {:.1f} s after the failure (generation {}, restart {} of {})",
               u.description, seconds_since(u.failed_at), u.generation, u.restarts,
               args_.max_restarts);
}

void ServerSupervisor::set_controller_state(UnitState state, int64_t pid) {
  controller_.state = state;
  std::lock_guard<std::mutex> lock(mu_);
  controller_state_ = state;
  controller_restarts_ = controller_.restarts;
  controller_pid_ = pid;
}

void ServerSupervisor::on_controller_failure(int64_t pid, const std::string& cause) {
  Controller& c = controller_;
  if (c.state == UnitState::kBackoff || c.state == UnitState::kDown) return;  // handled already
  const auto now = Clock::now();
  if (c.state == UnitState::kServing && now - c.up_since >= kStableAfter) c.restarts = 0;
  c.failed_at = now;
  const std::string what =
      fmt::format("the data parallel controller (node {}, pid {}) {}", args_.node_rank, pid, cause);
  const std::optional<std::chrono::milliseconds> delay = restart_delay(c.restarts, what);
  if (!delay && !draining_) return;  // fatal
  if (delay) {
    ++c.restarts;
    c.restart_at = now + *delay;
    c.retry_after = static_cast<int>(
        std::ceil(std::chrono::duration<double>(*delay + kControllerStartup).count()));
    c.reason =
        fmt::format("the data parallel controller is restarting: it (pid {}) {}; retry in {} s",
                    pid, cause, c.retry_after);
    spdlog::error("{}; restarting it in {:.0f} s (restart {} of {})", what,
                  std::chrono::duration<double>(*delay).count(), c.restarts, args_.max_restarts);
    set_controller_state(UnitState::kBackoff, 0);
  } else {
    c.retry_after = 0;
    c.reason = fmt::format("the data parallel controller (pid {}) {}; the server is shutting down",
                           pid, cause);
    spdlog::error("{}; not restarted: the server is shutting down", what);
    set_controller_state(UnitState::kDown, 0);
  }
  tm_.set_controller_down(c.reason, c.retry_after);
  // Its dispatch notices sent before it died are still being read: fail the rest a bit later.
  c.fail_undispatched_at = now + kNoticeGrace;
}

void ServerSupervisor::controller_timers(Clock::time_point now) {
  Controller& c = controller_;
  if (c.fail_undispatched_at && now >= *c.fail_undispatched_at) {
    c.fail_undispatched_at.reset();
    tm_.fail_undispatched(c.reason, c.retry_after);
  }
  if (c.state == UnitState::kBackoff && now >= c.restart_at && !fatal_ && !draining_) {
    start_controller();
  }
}

void ServerSupervisor::start_controller() {
  if (controller_.fail_undispatched_at) {  // the grace must end before a new controller serves
    controller_.fail_undispatched_at.reset();
    tm_.fail_undispatched(controller_.reason, controller_.retry_after);
  }
  try {
    launcher_.respawn_controller();
  } catch (const Error& e) {
    fatal(fmt::format("cannot restart the data parallel controller: {}", e.what()));
    return;
  }
  set_controller_state(UnitState::kStarting, launcher_.controller()->pid());
}

void ServerSupervisor::poll_controller_ready() {
  if (controller_.state != UnitState::kStarting) return;  // it died meanwhile (handle_exits)
  const int64_t pid = launcher_.controller()->pid();
  try {
    launcher_.controller_ready(std::chrono::seconds(5));
  } catch (const Error& e) {
    on_controller_failure(pid, fmt::format("failed to start: {}", e.what()));
    return;
  }
  // The same socket as the requests: the new controller hears which groups are down first.
  tm_.set_controller_up();
  controller_.up_since = Clock::now();
  set_controller_state(UnitState::kServing, pid);
  spdlog::info(
      "the data parallel controller (pid {}) back in service {:.1f} s after the failure (restart "
      "{} of {})",
      pid, seconds_since(controller_.failed_at), controller_.restarts, args_.max_restarts);
}

void ServerSupervisor::add_server_info(nlohmann::json& info) const {
  const std::vector<RankState> coord =
      launcher_.coordinator() ? launcher_.coordinator()->rank_states() : std::vector<RankState>{};
  const std::vector<int> local = launcher_.local_ranks();
  std::lock_guard<std::mutex> lock(mu_);
  const HealthStatus h = tm_.health();
  std::string state = h.state;
  if (h.ok && std::any_of(unit_states_.begin(), unit_states_.end(),
                          [](UnitState s) { return s != UnitState::kServing; })) {
    state = "degraded";  // plain DP: some groups restart, the others serve
  }
  info["server_state"] = state;
  const nlohmann::json* groups = nullptr;
  if (info.contains("internal_states") && info["internal_states"].is_array() &&
      !info["internal_states"].empty() && info["internal_states"][0].contains("dp_groups")) {
    groups = &info["internal_states"][0]["dp_groups"];
  }
  nlohmann::json ranks = nlohmann::json::array();
  for (int r = 0; r < world_size_; ++r) {
    nlohmann::json j = {{"rank", r}};
    const auto cs = std::find_if(coord.begin(), coord.end(),
                                 [r](const RankState& s) { return s.info.global_rank == r; });
    const auto li = std::find(local.begin(), local.end(), r);
    int64_t pid = cs != coord.end() ? cs->info.pid : 0;
    std::string st = cs != coord.end() ? std::string(liveness_name(cs->state)) : "unknown";
    j["node"] = cs != coord.end() ? cs->info.node_rank : args_.node_rank;
    const int u = unit_of(r);
    if (li != local.end()) pid = pids_[static_cast<size_t>(li - local.begin())];
    if (u >= 0) {
      const UnitState us = unit_states_[static_cast<size_t>(u)];
      if (us == UnitState::kBackoff) st = "restarting";
      // A remote rank's new pid is unknown here until it registers: starting until ready.
      if (us == UnitState::kStarting &&
          (li == local.end() || cs == coord.end() || cs->info.pid != pid)) {
        st = "starting";
      }
      if (us == UnitState::kDown) st = "dead";
      j["restarts"] = unit_restarts_[static_cast<size_t>(u)];
    }
    j["pid"] = pid;
    j["state"] = st;
    const bool current = cs != coord.end() && cs->info.pid == pid;
    j["seconds_since_heartbeat"] =
        current ? nlohmann::json(cs->last_heartbeat_age_s) : nlohmann::json(nullptr);
    const int32_t g = dp_group_of(r);
    if (g >= 0) {
      j["dp_group"] = g;
      if (groups != nullptr && g < static_cast<int32_t>(groups->size()) &&
          (*groups)[static_cast<size_t>(g)].contains("load")) {
        j["load"] = (*groups)[static_cast<size_t>(g)]["load"];
      }
    }
    ranks.push_back(std::move(j));
  }
  info["ranks"] = std::move(ranks);
  if (controller_pid_ != 0 || controller_state_ != UnitState::kServing) {
    const char* cs = controller_state_ == UnitState::kServing    ? "alive"
                     : controller_state_ == UnitState::kBackoff  ? "restarting"
                     : controller_state_ == UnitState::kStarting ? "starting"
                                                                 : "dead";
    info["data_parallel_controller"] = {
        {"pid", controller_pid_ != 0 ? nlohmann::json(controller_pid_) : nlohmann::json(nullptr)},
        {"state", cs},
        {"restarts", controller_restarts_}};
  }
  if (!pids_.empty()) info["scheduler_pid"] = pids_.front();
}

}  // namespace dpserve
