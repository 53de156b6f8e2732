// libsentencepiece-backed tokenizer.

#include "dpserve/tokenizer/sentencepiece_tokenizer.h"

#include <sentencepiece_processor.h>

#include "dpserve/common/errors.h"
#include "dpserve/tokenizer/unicode.h"

namespace dpserve {
namespace {

constexpr std::string_view kSpaceMark = "\xE2\x96\x81";  // U+2581, SentencePiece's space

}  // namespace

SentencePieceTokenizer::SentencePieceTokenizer(const std::string& model_path,
                                               const TokenizerConfig& config)
    : sp_(std::make_unique<sentencepiece::SentencePieceProcessor>()) {
  const auto status = sp_->Load(model_path);
  if (!status.ok())
    throw_error("{}: cannot load SentencePiece model: {}", model_path, status.ToString());
  const int n = sp_->GetPieceSize();
  for (int id = 0; id < n; ++id) {
    if (sp_->IsControl(id) || sp_->IsUnknown(id)) {
      special_ids_.insert(id);
      if (sp_->IsControl(id) && !sp_->IdToPiece(id).empty()) {
        added_.add(AddedToken{id, sp_->IdToPiece(id), true});
      }
    }
  }
  for (const AddedToken& tok : config.added_tokens) {
    if (tok.id < 0) continue;
    added_.add(tok);
    if (tok.id >= n) added_by_id_[tok.id] = tok.content;
    if (tok.special) special_ids_.insert(tok.id);
  }
  bos_token_id_ = sp_->bos_id();
  if (bos_token_id_ >= 0) bos_token_ = sp_->IdToPiece(bos_token_id_);
  if (sp_->eos_id() >= 0) {
    eos_token_ = sp_->IdToPiece(sp_->eos_id());
    eos_token_ids_ = {sp_->eos_id()};
  }
  if (config.bos_token) {
    bos_token_ = *config.bos_token;
    bos_token_id_ = token_to_id(bos_token_).value_or(-1);
  }
  if (config.eos_token) {
    eos_token_ = *config.eos_token;
    eos_token_ids_.clear();
    if (auto id = token_to_id(eos_token_)) eos_token_ids_.push_back(*id);
  }
  add_bos_ = config.add_bos_token.value_or(true);
  add_eos_ = config.add_eos_token.value_or(false);
}

SentencePieceTokenizer::~SentencePieceTokenizer() = default;

std::vector<int32_t> SentencePieceTokenizer::encode(std::string_view text,
                                                    bool add_special_tokens) const {
  std::string sanitized;
  if (!is_valid_utf8(text)) {
    sanitized = sanitize_utf8(text);
    text = sanitized;
  }
  std::vector<int32_t> ids;
  if (add_special_tokens && add_bos_ && bos_token_id_ >= 0) ids.push_back(bos_token_id_);
  std::vector<int> piece_ids;
  for (const TextSegment& seg : added_.split(text)) {
    if (seg.token_id >= 0) {
      ids.push_back(seg.token_id);
      continue;
    }
    piece_ids.clear();
    const auto status = sp_->Encode(seg.text, &piece_ids);
    if (!status.ok()) throw_error("SentencePiece encode failed: {}", status.ToString());
    ids.insert(ids.end(), piece_ids.begin(), piece_ids.end());
  }
  if (add_special_tokens && add_eos_ && !eos_token_ids_.empty()) ids.push_back(eos_token_ids_[0]);
  return ids;
}

std::string SentencePieceTokenizer::decode(const std::vector<int32_t>& ids,
                                           bool skip_special_tokens) const {
  std::string out;
  std::string bytes;  // pending <0xNN> pieces
  auto flush = [&]() {
    if (bytes.empty()) return;
    if (is_valid_utf8(bytes)) {
      out += bytes;
    } else {
      for (size_t i = 0; i < bytes.size(); ++i) out += "\xEF\xBF\xBD";
    }
    bytes.clear();
  };
  const int n = sp_->GetPieceSize();
  for (int32_t id : ids) {
    if (skip_special_tokens && is_special(id)) continue;
    if (id < 0 || id >= n) {
      if (auto it = added_by_id_.find(id); it != added_by_id_.end()) {
        flush();
        out += it->second;
      }
      continue;
    }
    if (sp_->IsByte(id)) {
      const std::string piece = sp_->IdToPiece(id);  // "<0xNN>"
      bytes.push_back(static_cast<char>(std::stoi(piece.substr(3, 2), nullptr, 16)));
      continue;
    }
    flush();
    const std::string piece = sp_->IdToPiece(id);
    size_t pos = 0;
    for (size_t hit; (hit = piece.find(kSpaceMark, pos)) != std::string::npos;
         pos = hit + kSpaceMark.size()) {
      out.append(piece, pos, hit - pos);
      out.push_back(' ');
    }
    out.append(piece, pos);
  }
  flush();
  if (!out.empty() && out[0] == ' ') out.erase(0, 1);
  return out;
}

int64_t SentencePieceTokenizer::vocab_size() const {
  int64_t n = sp_->GetPieceSize();
  for (const auto& [id, content] : added_by_id_) n = std::max<int64_t>(n, int64_t{id} + 1);
  return n;
}

std::optional<int32_t> SentencePieceTokenizer::token_to_id(std::string_view token) const {
  for (const auto& [id, content] : added_by_id_) {
    if (content == token) return id;
  }
  const int id = sp_->PieceToId(token);
  // PieceToId answers unk for unknown pieces; only accept it when the piece really is unk.
  if (id == sp_->unk_id() && sp_->IdToPiece(id) != token) return std::nullopt;
  return id;
}

std::string SentencePieceTokenizer::id_to_token(int32_t id) const {
  if (auto it = added_by_id_.find(id); it != added_by_id_.end()) return it->second;
  if (id < 0 || id >= sp_->GetPieceSize()) return {};
  return sp_->IdToPiece(id);
}

}  // namespace dpserve
