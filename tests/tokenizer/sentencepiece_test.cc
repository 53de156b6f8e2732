// tokenizer.model (libsentencepiece) tests: llama.cpp's test vectors for the Llama SentencePiece
// vocabulary, and agreement with the tokenizer.json path on the same vocabulary.

#include <sstream>
#include <string>

#include <gtest/gtest.h>

#include "dpserve/tokenizer/sentencepiece_tokenizer.h"
#include "dpserve/tokenizer/tokenizer.h"
#include "test_util.h"

namespace dpserve {
namespace {

std::vector<std::string> split_inputs(const std::string& all) {
  const std::string sep = "\n__ggml_vocab_test__\n";
  std::vector<std::string> out;
  size_t pos = 0;
  for (size_t hit; (hit = all.find(sep, pos)) != std::string::npos; pos = hit + sep.size()) {
    out.push_back(all.substr(pos, hit - pos));
  }
  return out;  // the file ends with a separator
}

std::vector<std::vector<int32_t>> parse_outputs(const std::string& all) {
  std::vector<std::vector<int32_t>> out;
  std::istringstream lines(all);
  for (std::string line; std::getline(lines, line);) {
    std::istringstream nums(line);
    std::vector<int32_t> ids;
    for (int32_t id; nums >> id;) ids.push_back(id);
    out.push_back(std::move(ids));
  }
  return out;
}

// llama.cpp's expected ids (no BOS) for its llama-spm vocabulary, which is the Llama 2 32k
// tokenizer.model; llama.cpp prepends a space as SentencePiece's add_dummy_prefix does.
TEST(tokenizer_SentencePiece, LlamaCppVocabVectors) {
  const std::string base =
      test::shared_path("models/llamacpp-vocab-tests/ggml-vocab-llama-spm.gguf");
  const auto inputs = split_inputs(test::read_file(base + ".inp"));
  const auto outputs = parse_outputs(test::read_file(base + ".out"));
  ASSERT_GT(inputs.size(), 30u);
  ASSERT_EQ(inputs.size(), outputs.size());
  auto tok = load_tokenizer(test::shared_path("models/llama2-tokenizer-32k"));
  EXPECT_EQ(tok->vocab_size(), 32000);
  EXPECT_EQ(tok->bos_token_id(), 1);
  EXPECT_EQ(tok->eos_token_ids(), std::vector<int32_t>{2});
  for (size_t i = 0; i < inputs.size(); ++i) {
    const auto ids = tok->encode(inputs[i], false);
    EXPECT_EQ(ids, outputs[i]) << "input " << i << ": " << nlohmann::json(inputs[i]).dump();
    // Decoding drops exactly the dummy-prefix space, so the text round-trips.
    EXPECT_EQ(tok->decode(ids), inputs[i]) << "input " << i;
  }
  // With special tokens (no tokenizer_config.json: BOS by default).
  EXPECT_EQ(tok->encode("Hello world"), (std::vector<int32_t>{1, 15043, 3186}));
  EXPECT_EQ(tok->decode({1, 15043, 3186}), "<s> Hello world");
  EXPECT_EQ(tok->decode({1, 15043, 3186, 2}, true), "Hello world");
}

// stories260K ships both tokenizer.model and tokenizer.json: both paths must agree with the
// reference fixture on text without special tokens.
TEST(tokenizer_SentencePiece, ModelAgreesWithTokenizerJsonFixture) {
  const std::string dir = test::shared_path("models/stories260K");
  SentencePieceTokenizer sp(dir + "/tokenizer.model",
                            read_tokenizer_config(dir + "/tokenizer_config.json"));
  EXPECT_EQ(sp.vocab_size(), 512);
  EXPECT_EQ(sp.bos_token(), "<s>");
  const auto fixture = test::read_json(test::fixture_path("stories260K.json"));
  int checked = 0;
  for (const auto& c : fixture["cases"]) {
    const std::string text = c["text"];
    const auto ids = c["ids"].get<std::vector<int32_t>>();
    if (text.find('<') == std::string::npos) {
      EXPECT_EQ(sp.encode(text, true), ids) << nlohmann::json(text).dump();
      ++checked;
    }
    EXPECT_EQ(sp.decode(ids), c["decoded"].get<std::string>()) << nlohmann::json(text).dump();
    EXPECT_EQ(sp.decode(ids, true), c["decoded_skip_special"].get<std::string>());
  }
  EXPECT_GT(checked, 30);
}

}  // namespace
}  // namespace dpserve
