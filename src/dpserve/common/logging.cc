#include "dpserve/common/logging.h"

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "dpserve/common/errors.h"

namespace dpserve {

void init_logging(const std::string& level) {
  spdlog::level::level_enum lvl;
  if (level == "debug") {
    lvl = spdlog::level::debug;
  } else if (level == "info") {
    lvl = spdlog::level::info;
  } else if (level == "warning" || level == "warn") {
    lvl = spdlog::level::warn;
  } else if (level == "error") {
    lvl = spdlog::level::err;
  } else if (level == "critical") {
    lvl = spdlog::level::critical;
  } else {
    throw_error("--log-level: unknown level '{}' (debug, info, warning, error, critical)", level);
  }
  auto logger = spdlog::stderr_color_mt("dpserve");
  spdlog::set_default_logger(logger);
  spdlog::set_pattern("[%Y-%m-%d %H:%M:%S.%e] [%^%l%$] %v");
  spdlog::set_level(lvl);
}

}  // namespace dpserve
