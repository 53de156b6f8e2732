// Added-token matching.

#include "dpserve/tokenizer/added_tokens.h"

#include <algorithm>

namespace dpserve {
namespace {

bool is_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

}  // namespace

int32_t AddedTokenMatcher::child(int32_t node, unsigned char b) const {
  for (const auto& [byte, next] : nodes_[static_cast<size_t>(node)].children) {
    if (byte == b) return next;
  }
  return -1;
}

void AddedTokenMatcher::add(const AddedToken& token) {
  if (token.content.empty()) return;
  int32_t node = 0;
  for (unsigned char b : token.content) {
    int32_t next = child(node, b);
    if (next < 0) {
      next = static_cast<int32_t>(nodes_.size());
      nodes_.push_back(Node{});
      nodes_[static_cast<size_t>(node)].children.emplace_back(b, next);
    }
    node = next;
  }
  Node& n = nodes_[static_cast<size_t>(node)];
  if (n.token >= 0) {
    tokens_[static_cast<size_t>(n.token)] = token;
  } else {
    n.token = static_cast<int32_t>(tokens_.size());
    tokens_.push_back(token);
  }
  first_byte_[static_cast<unsigned char>(token.content[0])] = true;
}

std::vector<TextSegment> AddedTokenMatcher::split(std::string_view text) const {
  std::vector<TextSegment> segs;
  size_t plain_start = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    if (!first_byte_[static_cast<unsigned char>(text[pos])]) {
      ++pos;
      continue;
    }
    // Longest match starting at pos.
    int32_t node = 0, best = -1;
    size_t best_end = 0;
    for (size_t i = pos; i < text.size(); ++i) {
      node = child(node, static_cast<unsigned char>(text[i]));
      if (node < 0) break;
      if (nodes_[static_cast<size_t>(node)].token >= 0) {
        best = nodes_[static_cast<size_t>(node)].token;
        best_end = i + 1;
      }
    }
    if (best < 0) {
      ++pos;
      continue;
    }
    const AddedToken& tok = tokens_[static_cast<size_t>(best)];
    size_t plain_end = pos;
    if (tok.lstrip) {
      while (plain_end > plain_start && is_space(text[plain_end - 1])) --plain_end;
    }
    if (plain_end > plain_start) {
      segs.push_back({text.substr(plain_start, plain_end - plain_start), -1});
    }
    segs.push_back({text.substr(pos, best_end - pos), tok.id});
    pos = best_end;
    if (tok.rstrip) {
      while (pos < text.size() && is_space(text[pos])) ++pos;
    }
    plain_start = pos;
  }
  if (plain_start < text.size()) segs.push_back({text.substr(plain_start), -1});
  return segs;
}

}  // namespace dpserve
