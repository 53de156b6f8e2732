#include "dpserve/distributed/coordinator_store.h"

#include <utility>

namespace dpserve {

CoordinatorStore::CoordinatorStore(CoordinatorClient& client, std::string prefix,
                                   Millis default_timeout)
    : client_(client), prefix_(std::move(prefix)), default_timeout_(default_timeout) {}

std::string CoordinatorStore::full_key(const std::string& key) const {
  return prefix_.empty() ? key : prefix_ + "/" + key;
}

void CoordinatorStore::set(const std::string& key, const std::vector<char>& data) {
  client_.set(full_key(key), std::string(data.begin(), data.end()));
}

std::vector<char> CoordinatorStore::get(const std::string& key) {
  const std::string value = client_.get(full_key(key), default_timeout_);
  return std::vector<char>(value.begin(), value.end());
}

void CoordinatorStore::wait(const std::vector<std::string>& keys) { wait(keys, default_timeout_); }

void CoordinatorStore::wait(const std::vector<std::string>& keys,
                            const std::chrono::milliseconds& timeout) {
  std::vector<std::string> full;
  full.reserve(keys.size());
  for (const std::string& k : keys) full.push_back(full_key(k));
  client_.wait(full, timeout);
}

}  // namespace dpserve
