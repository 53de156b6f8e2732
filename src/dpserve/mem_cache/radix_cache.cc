#include "dpserve/mem_cache/radix_cache.h"

#include <algorithm>
#include <map>
#include <memory>
#include <queue>
#include <unordered_set>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "dpserve/common/errors.h"

namespace dpserve {

namespace {

// Orders child keys (a first page of tokens) and lets the map be searched with a span.
struct PageKeyLess {
  using is_transparent = void;
  bool operator()(std::span<const int32_t> a, std::span<const int32_t> b) const {
    return std::lexicographical_compare(a.begin(), a.end(), b.begin(), b.end());
  }
};

}  // namespace

struct RadixNode {
  std::vector<int32_t> key;    // token ids on the edge from the parent (whole pages, non-empty)
  std::vector<int32_t> value;  // KV slot of each token in key
  RadixNode* parent = nullptr;
  // Children keyed by the first page of their key.
  std::map<std::vector<int32_t>, std::unique_ptr<RadixNode>, PageKeyLess> children;
  int64_t lock_ref = 0;      // requests whose locked path goes through this node
  uint64_t last_access = 0;  // logical time of the last match or insert through this node
  uint64_t id = 0;           // creation order; breaks LRU ties deterministically
};

namespace {

// Deletes a subtree iteratively (a long chain would overflow the stack recursively).
void destroy_subtree(std::unique_ptr<RadixNode> top) {
  std::vector<std::unique_ptr<RadixNode>> stack;
  stack.push_back(std::move(top));
  while (!stack.empty()) {
    std::unique_ptr<RadixNode> n = std::move(stack.back());
    stack.pop_back();
    for (auto& [k, c] : n->children) stack.push_back(std::move(c));
    n->children.clear();
  }
}

}  // namespace

RadixCache::RadixCache(PagedAllocator& allocator, bool disabled)
    : allocator_(allocator), page_size_(allocator.page_size()), disabled_(disabled) {
  root_ = new RadixNode();
  root_->lock_ref = 1;  // the root is never evicted
}

RadixCache::~RadixCache() { destroy_subtree(std::unique_ptr<RadixNode>(root_)); }

RadixNode* RadixCache::root() const { return root_; }

int64_t RadixCache::match_len(const Node& node, std::span<const int32_t> tokens) const {
  const int64_t n =
      std::min<int64_t>(static_cast<int64_t>(node.key.size()), static_cast<int64_t>(tokens.size()));
  int64_t i = 0;
  while (i < n && node.key[i] == tokens[i]) ++i;
  return aligned(i);
}

RadixNode* RadixCache::split(Node* child, int64_t len) {
  DPSERVE_CHECK(len > 0 && len < static_cast<int64_t>(child->key.size()) && len % page_size_ == 0,
                "bad split at {} of an edge of {} tokens", len, child->key.size());
  Node* parent = child->parent;
  auto it = parent->children.find(std::span<const int32_t>(child->key.data(), page_size_));
  DPSERVE_CHECK(it != parent->children.end() && it->second.get() == child,
                "node {} missing from its parent's children", child->id);
  std::unique_ptr<Node> owned = std::move(it->second);
  auto upper = std::make_unique<Node>();
  upper->key.assign(child->key.begin(), child->key.begin() + len);
  upper->value.assign(child->value.begin(), child->value.begin() + len);
  upper->parent = parent;
  upper->lock_ref = child->lock_ref;
  upper->last_access = child->last_access;
  upper->id = next_id_++;
  child->key.erase(child->key.begin(), child->key.begin() + len);
  child->value.erase(child->value.begin(), child->value.begin() + len);
  child->parent = upper.get();
  Node* up = upper.get();
  up->children.emplace(std::vector<int32_t>(child->key.begin(), child->key.begin() + page_size_),
                       std::move(owned));
  it->second = std::move(upper);  // same first page, so the parent's map key is unchanged
  ++num_nodes_;
  return up;
}

PrefixMatch RadixCache::match_prefix(std::span<const int32_t> tokens) {
  PrefixMatch out{{}, root_};
  if (disabled_) return out;
  tokens = tokens.first(aligned(static_cast<int64_t>(tokens.size())));
  const uint64_t now = ++clock_;
  Node* node = root_;
  node->last_access = now;
  size_t pos = 0;
  while (pos < tokens.size()) {
    auto it = node->children.find(tokens.subspan(pos, page_size_));
    if (it == node->children.end()) break;
    Node* child = it->second.get();
    const int64_t m = match_len(*child, tokens.subspan(pos));
    DPSERVE_CHECK(m >= page_size_, "child found by its first page matched only {} tokens", m);
    if (m < static_cast<int64_t>(child->key.size())) child = split(child, m);
    child->last_access = now;
    out.slots.insert(out.slots.end(), child->value.begin(), child->value.end());
    pos += m;
    node = child;
  }
  out.last_node = node;
  return out;
}

int64_t RadixCache::insert(std::span<const int32_t> tokens, std::span<const int32_t> slots) {
  DPSERVE_CHECK(!disabled_, "insert into a disabled radix cache");
  const int64_t len = aligned(static_cast<int64_t>(tokens.size()));
  DPSERVE_CHECK(static_cast<int64_t>(slots.size()) >= len, "insert of {} tokens with {} slots", len,
                slots.size());
  tokens = tokens.first(len);
  const uint64_t now = ++clock_;
  Node* node = root_;
  node->last_access = now;
  int64_t pos = 0;
  while (pos < len) {
    auto it = node->children.find(tokens.subspan(pos, page_size_));
    if (it == node->children.end()) {
      auto leaf = std::make_unique<Node>();
      leaf->key.assign(tokens.begin() + pos, tokens.end());
      leaf->value.assign(slots.begin() + pos, slots.begin() + len);
      for (int32_t s : leaf->value) {
        DPSERVE_CHECK(allocator_.is_live(s), "inserting KV slot {}, which is not allocated", s);
      }
      leaf->parent = node;
      leaf->last_access = now;
      leaf->id = next_id_++;
      evictable_size_ += len - pos;
      ++num_nodes_;
      node->children.emplace(
          std::vector<int32_t>(tokens.begin() + pos, tokens.begin() + pos + page_size_),
          std::move(leaf));
      return pos;
    }
    Node* child = it->second.get();
    const int64_t m = match_len(*child, tokens.subspan(pos));
    DPSERVE_CHECK(m >= page_size_, "child found by its first page matched only {} tokens", m);
    if (m < static_cast<int64_t>(child->key.size())) child = split(child, m);
    child->last_access = now;
    pos += m;
    node = child;
  }
  return pos;
}

void RadixCache::inc_lock_ref(RadixNode* node) {
  DPSERVE_CHECK(node != nullptr, "lock of a null node");
  for (; node != root_; node = node->parent) {
    if (node->lock_ref == 0) {
      const auto n = static_cast<int64_t>(node->key.size());
      evictable_size_ -= n;
      protected_size_ += n;
    }
    ++node->lock_ref;
  }
}

void RadixCache::dec_lock_ref(RadixNode* node) {
  DPSERVE_CHECK(node != nullptr, "unlock of a null node");
  for (; node != root_; node = node->parent) {
    DPSERVE_CHECK(node->lock_ref > 0, "lock ref of node {} would go below zero", node->id);
    if (--node->lock_ref == 0) {
      const auto n = static_cast<int64_t>(node->key.size());
      evictable_size_ += n;
      protected_size_ -= n;
    }
  }
}

void RadixCache::delete_leaf(Node* leaf, std::vector<int32_t>* freed) {
  DPSERVE_CHECK(leaf != root_ && leaf->children.empty() && leaf->lock_ref == 0,
                "evicting node {} that is not an unlocked leaf", leaf->id);
  allocator_.free(leaf->value);
  if (freed) freed->insert(freed->end(), leaf->value.begin(), leaf->value.end());
  evictable_size_ -= static_cast<int64_t>(leaf->key.size());
  --num_nodes_;
  Node* parent = leaf->parent;
  auto it = parent->children.find(std::span<const int32_t>(leaf->key.data(), page_size_));
  DPSERVE_CHECK(it != parent->children.end() && it->second.get() == leaf,
                "node {} missing from its parent's children", leaf->id);
  parent->children.erase(it);
}

int64_t RadixCache::evict(int64_t num_tokens, std::vector<int32_t>* freed) {
  if (disabled_ || num_tokens <= 0) return 0;
  // Min-heap of unlocked leaves by (last access, id).
  auto later = [](const Node* a, const Node* b) {
    return a->last_access != b->last_access ? a->last_access > b->last_access : a->id > b->id;
  };
  std::priority_queue<Node*, std::vector<Node*>, decltype(later)> heap(later);
  std::vector<Node*> stack{root_};
  while (!stack.empty()) {
    Node* n = stack.back();
    stack.pop_back();
    if (n != root_ && n->children.empty() && n->lock_ref == 0) heap.push(n);
    for (auto& [k, c] : n->children) stack.push_back(c.get());
  }
  int64_t done = 0;
  while (done < num_tokens && !heap.empty()) {
    Node* leaf = heap.top();
    heap.pop();
    Node* parent = leaf->parent;
    done += static_cast<int64_t>(leaf->key.size());
    delete_leaf(leaf, freed);
    if (parent != root_ && parent->children.empty() && parent->lock_ref == 0) heap.push(parent);
  }
  return done;
}

bool RadixCache::make_room(int64_t num_tokens) {
  const int64_t missing = num_tokens - allocator_.available_tokens();
  if (missing > 0) evict(missing);
  return allocator_.available_tokens() >= num_tokens;
}

int64_t RadixCache::match_and_lock(CacheReq& req, int64_t max_prefix_len) {
  DPSERVE_CHECK(req.last_node == nullptr && req.kv_slots.empty() && req.prefix_len == 0,
                "match_and_lock on a request that still holds {} slots", req.kv_slots.size());
  const int64_t n = std::clamp<int64_t>(max_prefix_len, 0, req.token_ids.size());
  PrefixMatch m = match_prefix(std::span<const int32_t>(req.token_ids).first(n));
  inc_lock_ref(m.last_node);
  req.kv_slots = std::move(m.slots);
  req.prefix_len = static_cast<int64_t>(req.kv_slots.size());
  req.last_node = m.last_node;
  return req.prefix_len;
}

void RadixCache::cache_unfinished_req(CacheReq& req) {
  if (disabled_) return;
  DPSERVE_CHECK(req.last_node != nullptr, "cache_unfinished_req on a request holding no lock");
  const auto n = static_cast<int64_t>(req.kv_slots.size());
  DPSERVE_CHECK(n <= static_cast<int64_t>(req.token_ids.size()), "{} slots for {} tokens", n,
                req.token_ids.size());
  const int64_t len = aligned(n);
  if (len <= req.prefix_len) return;  // no new whole page to share
  const std::span<const int32_t> tokens = std::span<const int32_t>(req.token_ids).first(len);
  const std::span<int32_t> slots = std::span<int32_t>(req.kv_slots).first(len);
  const int64_t present = insert(tokens, slots);
  DPSERVE_CHECK(present >= req.prefix_len, "locked prefix of {} tokens not found in the tree ({})",
                req.prefix_len, present);
  allocator_.free(slots.subspan(req.prefix_len, present - req.prefix_len));
  PrefixMatch m = match_prefix(tokens);
  DPSERVE_CHECK(static_cast<int64_t>(m.slots.size()) == len,
                "just inserted {} tokens but matched {}", len, m.slots.size());
  std::copy(m.slots.begin(), m.slots.end(), slots.begin());
  inc_lock_ref(m.last_node);
  dec_lock_ref(req.last_node);
  req.last_node = m.last_node;
  req.prefix_len = len;
}

void RadixCache::cache_finished_req(CacheReq& req) {
  const auto n = static_cast<int64_t>(req.kv_slots.size());
  DPSERVE_CHECK(n <= static_cast<int64_t>(req.token_ids.size()), "{} slots for {} tokens", n,
                req.token_ids.size());
  if (disabled_) {
    release_req(req);
    return;
  }
  DPSERVE_CHECK(req.last_node != nullptr, "cache_finished_req on a request holding no lock");
  const int64_t len = aligned(n);
  const std::span<const int32_t> slots(req.kv_slots);
  const int64_t present = insert(std::span<const int32_t>(req.token_ids).first(len), slots);
  DPSERVE_CHECK(present >= req.prefix_len, "locked prefix of {} tokens not found in the tree ({})",
                req.prefix_len, present);
  allocator_.free(slots.subspan(req.prefix_len, present - req.prefix_len));
  allocator_.free(slots.subspan(len));
  dec_lock_ref(req.last_node);
  req.kv_slots.clear();
  req.prefix_len = 0;
  req.last_node = nullptr;
}

void RadixCache::release_req(CacheReq& req) {
  DPSERVE_CHECK(req.prefix_len <= static_cast<int64_t>(req.kv_slots.size()),
                "prefix {} longer than the {} slots", req.prefix_len, req.kv_slots.size());
  allocator_.free(std::span<const int32_t>(req.kv_slots).subspan(req.prefix_len));
  if (req.last_node != nullptr) dec_lock_ref(req.last_node);
  req.kv_slots.clear();
  req.prefix_len = 0;
  req.last_node = nullptr;
}

void RadixCache::reset() {
  DPSERVE_CHECK(protected_size_ == 0, "reset of a radix cache with {} locked tokens",
                protected_size_);
  std::vector<Node*> stack{root_};
  while (!stack.empty()) {
    Node* n = stack.back();
    stack.pop_back();
    if (n != root_) allocator_.free(n->value);
    for (auto& [k, c] : n->children) stack.push_back(c.get());
  }
  for (auto& [k, c] : root_->children) destroy_subtree(std::move(c));
  root_->children.clear();
  evictable_size_ = 0;
  num_nodes_ = 0;
}

void RadixCache::check_invariants() const {
  DPSERVE_CHECK(root_->lock_ref == 1 && root_->key.empty(), "root changed");
  DPSERVE_CHECK(evictable_size_ >= 0 && protected_size_ >= 0, "sizes {} / {} negative",
                evictable_size_, protected_size_);
  if (disabled_) {
    DPSERVE_CHECK(root_->children.empty() && total_size() == 0, "disabled cache holds tokens");
    return;
  }
  int64_t evictable = 0, prot = 0, nodes = 0;
  std::unordered_set<int32_t> seen;
  std::vector<const Node*> stack{root_};
  while (!stack.empty()) {
    const Node* n = stack.back();
    stack.pop_back();
    for (const auto& [k, c] : n->children) {
      DPSERVE_CHECK(c->parent == n, "node {} has a wrong parent", c->id);
      const auto len = static_cast<int64_t>(c->key.size());
      DPSERVE_CHECK(len > 0 && len % page_size_ == 0, "node {} edge of {} tokens", c->id, len);
      DPSERVE_CHECK(c->value.size() == c->key.size(), "node {}: {} tokens but {} slots", c->id, len,
                    c->value.size());
      DPSERVE_CHECK(std::equal(k.begin(), k.end(), c->key.begin()) &&
                        static_cast<int64_t>(k.size()) == page_size_,
                    "node {} filed under a key that is not its first page", c->id);
      DPSERVE_CHECK(c->lock_ref >= 0, "node {} lock ref {}", c->id, c->lock_ref);
      DPSERVE_CHECK(n == root_ || c->lock_ref <= n->lock_ref,
                    "node {} locked {} times under a parent locked {}", c->id, c->lock_ref,
                    n->lock_ref);
      DPSERVE_CHECK(c->last_access <= n->last_access || n == root_,
                    "node {} accessed after its parent", c->id);
      for (int64_t i = 0; i < len; ++i) {
        const int32_t s = c->value[i];
        DPSERVE_CHECK(allocator_.is_live(s), "slot {} of node {} is free in the allocator", s,
                      c->id);
        DPSERVE_CHECK(seen.insert(s).second, "slot {} twice in the tree", s);
        DPSERVE_CHECK(
            s % page_size_ == i % page_size_ && (i % page_size_ == 0 || s == c->value[i - 1] + 1),
            "node {} slots not page-contiguous at {}", c->id, i);
      }
      (c->lock_ref == 0 ? evictable : prot) += len;
      ++nodes;
      stack.push_back(c.get());
    }
  }
  DPSERVE_CHECK(evictable == evictable_size_ && prot == protected_size_,
                "sizes say evictable {} protected {}, the tree has {} and {}", evictable_size_,
                protected_size_, evictable, prot);
  DPSERVE_CHECK(nodes == num_nodes_, "{} nodes counted, {} recorded", nodes, num_nodes_);
}

std::string RadixCache::pretty_print(int64_t max_tokens_per_node) const {
  std::string out =
      fmt::format("radix cache: {} tokens ({} evictable, {} protected), {} nodes{}\n", total_size(),
                  evictable_size_, protected_size_, num_nodes_, disabled_ ? ", disabled" : "");
  std::vector<std::pair<const Node*, int>> stack;
  for (auto it = root_->children.rbegin(); it != root_->children.rend(); ++it) {
    stack.emplace_back(it->second.get(), 1);
  }
  while (!stack.empty()) {
    auto [n, depth] = stack.back();
    stack.pop_back();
    const auto shown = std::min<int64_t>(max_tokens_per_node, n->key.size());
    const char* more = shown < static_cast<int64_t>(n->key.size()) ? " ..." : "";
    out += fmt::format("{:{}}#{} len={} lock={} t={} tokens=[{}{}] slots=[{}{}]\n", "", 2 * depth,
                       n->id, n->key.size(), n->lock_ref, n->last_access,
                       fmt::join(n->key.begin(), n->key.begin() + shown, ","), more,
                       fmt::join(n->value.begin(), n->value.begin() + shown, ","), more);
    for (auto it = n->children.rbegin(); it != n->children.rend(); ++it) {
      stack.emplace_back(it->second.get(), depth + 1);
    }
  }
  return out;
}

}  // namespace dpserve
