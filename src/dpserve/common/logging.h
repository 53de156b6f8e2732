#pragma once
// Logging setup: spdlog to stderr, one line per event.

#include <string>

namespace dpserve {

// Sets the global log level from a name ("debug", "info", "warning", "error"); throws
// dpserve::Error on an unknown name.
void init_logging(const std::string& level);

}  // namespace dpserve
