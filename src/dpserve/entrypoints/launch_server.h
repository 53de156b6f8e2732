#pragma once
// `dpserve serve`: the launch flow of one node with dp_size == 1 (SGLang's launch_server and
// _launch_subprocesses). The main process binds the ZeroMQ sockets in a private runtime
// directory, spawns the scheduler child from the same binary, waits for its readiness (with its
// KV capacity), builds the TokenizerManager and the HTTP server, and only then opens the port.
// It then waits for SIGINT / SIGTERM (graceful shutdown: stop accepting, abort in-flight
// requests, let responses finish, stop the child, remove the runtime directory, exit 0) or for
// the scheduler's death (logged, exit 1).

#include <string>
#include <vector>

#include "dpserve/server/server_args.h"

namespace dpserve {

// Runs the server until it is stopped; returns the process exit code. `serve_args` are the
// command-line arguments after "serve", handed to the scheduler child as they are. Throws
// dpserve::Error for startup failures (the scheduler's error included).
int launch_server(const ServerArgs& args, const std::vector<std::string>& serve_args);

}  // namespace dpserve
