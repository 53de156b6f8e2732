// load_tokenizer: picks the implementation for a model directory.

#include "dpserve/tokenizer/tokenizer.h"

#include <filesystem>

#include "dpserve/common/errors.h"
#include "dpserve/tokenizer/hf_tokenizer.h"
#include "dpserve/tokenizer/sentencepiece_tokenizer.h"
#include "dpserve/tokenizer/tokenizer_config.h"

namespace dpserve {

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& dir) {
  namespace fs = std::filesystem;
  if (!fs::is_directory(dir)) throw_error("{}: tokenizer directory does not exist", dir);
  const fs::path base(dir);
  const TokenizerConfig config = read_tokenizer_config((base / "tokenizer_config.json").string());
  const fs::path json = base / "tokenizer.json";
  if (fs::exists(json)) return std::make_unique<HfTokenizer>(json.string(), config);
  const fs::path model = base / "tokenizer.model";
  if (fs::exists(model)) return std::make_unique<SentencePieceTokenizer>(model.string(), config);
  throw_error("{}: no tokenizer.json or tokenizer.model in this directory", dir);
}

}  // namespace dpserve
