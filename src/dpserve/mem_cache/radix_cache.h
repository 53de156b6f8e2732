#pragma once
// Radix prefix cache (SGLang's RadixCache / RadixAttention): a radix tree with compressed edges
// from token-id sequences to the KV slots that hold their K/V, so that a request whose prompt
// shares a prefix with earlier ones computes only the new part.
//
// Ownership. Slots in the tree belong to the tree: it frees them to the PagedAllocator when it
// evicts. A request locks the path to its matched prefix (`inc_lock_ref` on the last node counts on
// every node up to the root), and locked nodes are never evicted. Eviction takes the least recently
// used unlocked leaf first (logical clock: every match and insert touches its whole path), then the
// parents that become unlocked leaves.
//
// Pages. With page_size > 1 only whole pages are matched and inserted: keys are truncated to a
// multiple of page_size, every edge is a whole number of pages, and children are keyed by their
// first page of tokens. A partially filled last page stays with its request and is freed by it.
//
// Disabled mode (`--disable-radix-cache`): the same API as a pass-through, so the scheduler's code
// does not change: nothing is ever cached, matches return nothing (the root), locks on the root are
// no-ops, and finished requests free all their slots.
//
// Request flow for the scheduler, around CacheReq:
//   match_and_lock(req, max)   on admission: req.kv_slots = cached prefix (locked), prefix_len set
//   (allocate req.kv_slots for the new tokens, run the forward)
//   cache_unfinished_req(req)  after a prefill chunk: the computed part goes into the tree, re-lock
//   cache_finished_req(req)    when done: everything page-aligned is cached, the rest freed
//   release_req(req)           on abort or retraction: own slots freed, nothing cached
//
// Not thread-safe: one scheduler thread owns the cache and its allocator. Destroying the cache
// does not return its slots to the allocator (call reset() first when the allocator lives on).

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "dpserve/mem_cache/paged_allocator.h"

namespace dpserve {

// A tree node; opaque outside radix_cache.cc, handed out as a handle for locking.
struct RadixNode;

// The answer of match_prefix.
struct PrefixMatch {
  std::vector<int32_t> slots;      // KV slots of the longest cached prefix, one per token
  RadixNode* last_node = nullptr;  // node ending exactly at that prefix (root if nothing matched)
};

// The cache-related state of one request, owned by the scheduler and updated by the helpers.
struct CacheReq {
  // Tokens so far (prompt, then outputs). The first kv_slots.size() of them have their K/V
  // computed; a just-sampled token may not have a slot yet.
  std::vector<int32_t> token_ids;
  // KV slot of each computed token, in order; page-contiguous from a page boundary.
  std::vector<int32_t> kv_slots;
  // kv_slots[0, prefix_len) belong to the tree (locked through last_node); the rest to the request.
  int64_t prefix_len = 0;
  // The node this request holds a lock on; nullptr when it holds none.
  RadixNode* last_node = nullptr;
};

class RadixCache {
 public:
  // allocator: where evicted and freed slots go (its page_size is the cache's); disabled: the
  // pass-through mode of --disable-radix-cache.
  explicit RadixCache(PagedAllocator& allocator, bool disabled = false);
  ~RadixCache();
  RadixCache(const RadixCache&) = delete;
  RadixCache& operator=(const RadixCache&) = delete;

  // True in the --disable-radix-cache pass-through mode.
  bool disabled() const { return disabled_; }
  // Tokens per page; matches and inserts are truncated to multiples of it.
  int64_t page_size() const { return page_size_; }
  // The root handle (the last_node of an empty match).
  RadixNode* root() const;

  // Longest cached page-aligned prefix of tokens: its slots and the node ending exactly there
  // (an edge is split if the match ends inside it). Touches the matched path (LRU). The scheduler
  // passes at most prompt_len - 1 tokens so that the last token is always computed for logits.
  PrefixMatch match_prefix(std::span<const int32_t> tokens);
  // Inserts the page-aligned part of tokens with their slots (slots.size() >= aligned length) and
  // returns how many leading tokens were already cached. For those the tree keeps its own slots:
  // the caller's slots[i] for i in [p, returned) are duplicates it must free, where p is the
  // length of the prefix it got from the tree (its slots there are the tree's own). The slots of
  // the newly inserted part now belong to the tree; slots past the aligned length stay the
  // caller's. Touches the path. Not allowed in disabled mode.
  int64_t insert(std::span<const int32_t> tokens, std::span<const int32_t> slots);

  // Locks the path from node to the root so that none of it can be evicted (no-op on the root).
  void inc_lock_ref(RadixNode* node);
  // Undoes one inc_lock_ref(node); a lock count below zero is an invariant failure.
  void dec_lock_ref(RadixNode* node);

  // Evicts unlocked leaves, least recently used first, until at least num_tokens tokens are freed
  // or nothing is evictable; returns the tokens freed. The freed slots go to the allocator and,
  // if `freed` is given, are appended to it.
  int64_t evict(int64_t num_tokens, std::vector<int32_t>* freed = nullptr);
  // Evicts until the allocator has at least num_tokens available (whole free pages); returns
  // whether it does now.
  bool make_room(int64_t num_tokens);

  // Cached tokens no request locks (what evict can free).
  int64_t evictable_size() const { return evictable_size_; }
  // Cached tokens locked by running requests.
  int64_t protected_size() const { return protected_size_; }
  // All cached tokens.
  int64_t total_size() const { return evictable_size_ + protected_size_; }
  // Nodes in the tree, the root excluded (for stats and tests).
  int64_t num_nodes() const { return num_nodes_; }

  // Admission: sets req.kv_slots to the cached prefix of req.token_ids (at most max_prefix_len
  // tokens), locks it, and returns its length (the request's cached_tokens). The request must
  // hold no slots and no lock.
  int64_t match_and_lock(CacheReq& req, int64_t max_prefix_len);
  // After a prefill chunk: inserts the page-aligned computed part, frees the request's duplicates
  // of what was already cached, switches req.kv_slots to the tree's slots there and moves the lock
  // to the new last node (prefix_len = aligned length). The unaligned tail stays the request's.
  // No-op in disabled mode (the request keeps all its slots).
  void cache_unfinished_req(CacheReq& req);
  // On finish: inserts the page-aligned computed part, frees duplicates and the unaligned tail,
  // unlocks, and clears req's slots and lock. Disabled mode frees every slot.
  void cache_finished_req(CacheReq& req);
  // On abort or retraction: frees the request's own slots (kv_slots[prefix_len..]), unlocks and
  // clears req's slots and lock; nothing is inserted.
  void release_req(CacheReq& req);

  // Drops the whole tree and frees its slots to the allocator (flush_cache). Requires that no node
  // is locked.
  void reset();
  // Walks the tree and checks every invariant: sizes match the locks, lock refs non-negative and
  // monotone toward the root, edges non-empty and page-aligned, child keys, access times monotone
  // toward the root, each node's slots page-contiguous, every slot live in the allocator and in
  // the tree once. Aborts on a violation.
  void check_invariants() const;
  // A readable dump of the tree: one line per node with its tokens, slots, lock and access time.
  std::string pretty_print(int64_t max_tokens_per_node = 16) const;

 private:
  using Node = RadixNode;
  // Common prefix length of a node's key and tokens, rounded down to whole pages.
  int64_t match_len(const Node& node, std::span<const int32_t> tokens) const;
  // Splits `child` after its first `len` tokens; returns the new upper node.
  Node* split(Node* child, int64_t len);
  // Removes an unlocked leaf, freeing its slots; appends them to freed if given.
  void delete_leaf(Node* leaf, std::vector<int32_t>* freed);
  // Truncates a length to whole pages.
  int64_t aligned(int64_t n) const { return n / page_size_ * page_size_; }

  PagedAllocator& allocator_;
  int64_t page_size_;
  bool disabled_;
  Node* root_;
  uint64_t clock_ = 0;
  uint64_t next_id_ = 1;
  int64_t evictable_size_ = 0;
  int64_t protected_size_ = 0;
  int64_t num_nodes_ = 0;
};

}  // namespace dpserve
