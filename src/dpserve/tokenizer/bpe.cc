// BPE merge loop: a linked list of symbols and a min-heap of candidate merges keyed by
// (rank, position), so a word of n symbols costs O(n log n).

#include "dpserve/tokenizer/bpe.h"

#include <mutex>
#include <queue>

#include <fmt/format.h>

#include "dpserve/tokenizer/unicode.h"

namespace dpserve {

BpeModel::BpeModel(TokenIdMap vocab, const std::vector<std::pair<std::string, std::string>>& merges,
                   BpeOptions options)
    : vocab_(std::move(vocab)), options_(std::move(options)) {
  int32_t max_id = -1;
  for (const auto& [tok, id] : vocab_) max_id = std::max(max_id, id);
  id_to_token_.resize(static_cast<size_t>(max_id + 1));
  for (const auto& [tok, id] : vocab_) {
    if (id >= 0) id_to_token_[static_cast<size_t>(id)] = tok;
  }
  merges_.reserve(merges.size());
  std::string joined;
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const auto& [a, b] = merges[rank];
    auto ia = vocab_.find(a), ib = vocab_.find(b);
    joined = a + b;
    auto ij = vocab_.find(joined);
    if (ia == vocab_.end() || ib == vocab_.end() || ij == vocab_.end()) continue;
    merges_.try_emplace(pair_key(ia->second, ib->second),
                        Merge{static_cast<int32_t>(rank), ij->second});
  }
  for (int b = 0; b < 256; ++b) {
    auto it = vocab_.find(fmt::format("<0x{:02X}>", b));
    byte_ids_[static_cast<size_t>(b)] = it == vocab_.end() ? -1 : it->second;
  }
  if (options_.unk_token) {
    auto it = vocab_.find(*options_.unk_token);
    if (it != vocab_.end()) unk_id_ = it->second;
  }
}

std::optional<int32_t> BpeModel::token_to_id(std::string_view token) const {
  auto it = vocab_.find(token);
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

const std::string* BpeModel::id_to_token(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= id_to_token_.size()) return nullptr;
  const std::string& s = id_to_token_[static_cast<size_t>(id)];
  return s.empty() ? nullptr : &s;
}

void BpeModel::encode_word(std::string_view word, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  if (options_.ignore_merges) {
    if (auto it = vocab_.find(word); it != vocab_.end()) {
      out.push_back(it->second);
      return;
    }
  }
  const bool cacheable = word.size() < kMaxCachedWord;
  if (cacheable) {
    std::shared_lock lock(cache_mu_);
    if (auto it = cache_.find(word); it != cache_.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const size_t start = out.size();
  merge_word(word, out);
  if (cacheable) {
    std::unique_lock lock(cache_mu_);
    if (cache_.size() >= kMaxCacheEntries) cache_.clear();
    cache_.try_emplace(std::string(word), out.begin() + static_cast<std::ptrdiff_t>(start),
                       out.end());
  }
}

void BpeModel::merge_word(std::string_view word, std::vector<int32_t>& out) const {
  struct Symbol {
    int32_t id;
    int32_t prev;  // index of the previous live symbol, -1 at the start
    int32_t next;  // index of the next live symbol, -1 at the end
    bool alive;
  };
  std::vector<Symbol> syms;
  syms.reserve(word.size());
  auto push = [&](int32_t id) {
    const auto n = static_cast<int32_t>(syms.size());
    syms.push_back({id, n - 1, -1, true});
    if (n > 0) syms[static_cast<size_t>(n - 1)].next = n;
  };

  // Initial symbols: one per character, or its bytes / unk when it is not in the vocabulary.
  size_t pos = 0;
  bool prev_unk = false;
  while (pos < word.size()) {
    const size_t begin = pos;
    pos += std::min(utf8_seq_len(static_cast<unsigned char>(word[pos])), word.size() - pos);
    const std::string_view ch = word.substr(begin, pos - begin);
    if (auto it = vocab_.find(ch); it != vocab_.end()) {
      push(it->second);
      prev_unk = false;
      continue;
    }
    if (options_.byte_fallback) {
      bool all = true;
      for (unsigned char b : ch) all = all && byte_ids_[b] >= 0;
      if (all) {
        for (unsigned char b : ch) push(byte_ids_[b]);
        prev_unk = false;
        continue;
      }
    }
    if (unk_id_ >= 0 && !(options_.fuse_unk && prev_unk)) push(unk_id_);
    prev_unk = true;
  }

  struct Candidate {
    int32_t rank;
    int32_t left;  // index of the left symbol (== its position in the word: ties go leftmost)
    int32_t left_id, right_id, new_id;
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : left > o.left;
    }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> heap;
  auto consider = [&](int32_t left) {
    if (left < 0) return;
    const Symbol& l = syms[static_cast<size_t>(left)];
    if (l.next < 0) return;
    const Symbol& r = syms[static_cast<size_t>(l.next)];
    auto it = merges_.find(pair_key(l.id, r.id));
    if (it != merges_.end()) heap.push({it->second.rank, left, l.id, r.id, it->second.new_id});
  };
  for (int32_t i = 0; i + 1 < static_cast<int32_t>(syms.size()); ++i) consider(i);

  while (!heap.empty()) {
    const Candidate c = heap.top();
    heap.pop();
    Symbol& l = syms[static_cast<size_t>(c.left)];
    if (!l.alive || l.id != c.left_id || l.next < 0) continue;
    Symbol& r = syms[static_cast<size_t>(l.next)];
    if (r.id != c.right_id) continue;
    // Merge r into l.
    l.id = c.new_id;
    r.alive = false;
    l.next = r.next;
    if (r.next >= 0) syms[static_cast<size_t>(r.next)].prev = c.left;
    consider(l.prev);
    consider(c.left);
  }
  for (int32_t i = syms.empty() ? -1 : 0; i >= 0; i = syms[static_cast<size_t>(i)].next) {
    out.push_back(syms[static_cast<size_t>(i)].id);
  }
}

}  // namespace dpserve
