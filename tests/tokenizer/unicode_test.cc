// UTF-8 helpers and NFC against JavaScript's String.prototype.normalize (fixture nfc.json).

#include <gtest/gtest.h>

#include "dpserve/tokenizer/unicode.h"
#include "test_util.h"

namespace dpserve {
namespace {

TEST(tokenizer_Unicode, NfcMatchesReference) {
  const auto fixture = test::read_json(test::fixture_path("nfc.json"));
  ASSERT_GT(fixture["cases"].size(), 20u);
  for (const auto& c : fixture["cases"]) {
    const std::string text = c["text"], expected = c["nfc"];
    EXPECT_EQ(nfc_normalize(text), expected) << nlohmann::json(text).dump();
  }
}

TEST(tokenizer_Unicode, NfcBasics) {
  EXPECT_EQ(nfc_normalize(""), "");
  EXPECT_EQ(nfc_normalize("plain ascii"), "plain ascii");
  EXPECT_EQ(nfc_normalize("e\xCC\x81"), "\xC3\xA9");                       // e + U+0301 -> é
  EXPECT_EQ(nfc_normalize("\xE1\x84\x80\xE1\x85\xA1\xE1\x86\xA8"), "각");  // Hangul L V T
  EXPECT_EQ(nfc_normalize("日本語 😀"), "日本語 😀");
}

TEST(tokenizer_Unicode, Utf8Helpers) {
  EXPECT_TRUE(is_valid_utf8("héllo 😀"));
  EXPECT_TRUE(is_valid_utf8("\xEF\xBF\xBD"));
  EXPECT_FALSE(is_valid_utf8("\xff"));
  EXPECT_FALSE(is_valid_utf8("\xC3"));
  EXPECT_FALSE(is_valid_utf8("\xED\xA0\x80"));  // surrogate
  EXPECT_EQ(sanitize_utf8("a\xffz"), "a\xEF\xBF\xBDz");
  EXPECT_EQ(sanitize_utf8("a\xF0\x9F\x98"), "a\xEF\xBF\xBD");  // truncated 4-byte sequence
  EXPECT_EQ(incomplete_utf8_suffix("ab"), 0u);
  EXPECT_EQ(incomplete_utf8_suffix("a\xF0\x9F\x98"), 3u);
  EXPECT_EQ(incomplete_utf8_suffix("a\xF0\x9F\x98\x80"), 0u);
  EXPECT_EQ(incomplete_utf8_suffix("\xC3"), 1u);
  EXPECT_TRUE(ends_with_replacement_char("x\xEF\xBF\xBD"));
  EXPECT_FALSE(ends_with_replacement_char("x"));
}

}  // namespace
}  // namespace dpserve
