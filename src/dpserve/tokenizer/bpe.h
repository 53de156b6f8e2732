#pragma once
// A byte-pair-encoding model: vocabulary, ranked merges, and the merge loop that turns one
// pre-tokenized word into token ids.

#include <array>
#include <cstdint>
#include <functional>
#include <optional>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace dpserve {

// Hash for heterogeneous lookup of std::string keys by std::string_view.
struct StringHash {
  using is_transparent = void;
  // Hashes the characters of `s`.
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

// A string -> id map that can be queried with a std::string_view.
using TokenIdMap = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;

// Options of a BPE model as stored in tokenizer.json's "model" object.
struct BpeOptions {
  bool byte_fallback = false;            // unknown characters become <0xNN> byte tokens
  bool ignore_merges = false;            // a word found whole in the vocabulary is one token
  bool fuse_unk = false;                 // consecutive unknown characters give one unk token
  std::optional<std::string> unk_token;  // token for unknown characters (none: they are dropped)
};

class BpeModel {
 public:
  // vocab: token -> id; merges: pairs of tokens in rank order (earlier = merged first).
  // Merges whose parts or result are not in the vocabulary are ignored.
  BpeModel(TokenIdMap vocab, const std::vector<std::pair<std::string, std::string>>& merges,
           BpeOptions options);

  // Appends the ids of `word` (a pre-token, already in the vocabulary's alphabet) to `out`.
  void encode_word(std::string_view word, std::vector<int32_t>& out) const;

  // Id of a vocabulary token.
  std::optional<int32_t> token_to_id(std::string_view token) const;

  // Vocabulary string of `id`, or nullptr when the model has no such id.
  const std::string* id_to_token(int32_t id) const;

  // One past the largest id of the vocabulary.
  int64_t size() const { return static_cast<int64_t>(id_to_token_.size()); }

  // Number of merges in use.
  size_t num_merges() const { return merges_.size(); }

 private:
  struct Merge {
    int32_t rank;    // priority: lower merges first
    int32_t new_id;  // id of the merged token
  };
  static uint64_t pair_key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }
  void merge_word(std::string_view word, std::vector<int32_t>& out) const;

  TokenIdMap vocab_;
  std::vector<std::string> id_to_token_;
  std::unordered_map<uint64_t, Merge> merges_;
  BpeOptions options_;
  std::array<int32_t, 256> byte_ids_;  // id of <0xNN>, or -1
  int32_t unk_id_ = -1;

  // Cache of recent words -> ids (words shorter than kMaxCachedWord bytes).
  static constexpr size_t kMaxCachedWord = 256;
  static constexpr size_t kMaxCacheEntries = 1 << 17;
  mutable std::shared_mutex cache_mu_;
  mutable std::unordered_map<std::string, std::vector<int32_t>, StringHash, std::equal_to<>> cache_;
};

}  // namespace dpserve
