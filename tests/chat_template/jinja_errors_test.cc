// Errors: unsupported constructs and failures must raise dpserve::Error naming the template line,
// never render a silently wrong prompt. Also tokenizer_config loading variants.

#include <filesystem>
#include <fstream>
#include <string>

#include <gtest/gtest.h>
#include <unistd.h>
#include <nlohmann/json.hpp>

#include "dpserve/chat_template/chat_template.h"
#include "dpserve/chat_template/template.h"
#include "dpserve/common/errors.h"

namespace dpserve {
namespace {

using nlohmann::ordered_json;

// The message of the dpserve::Error that parsing or rendering `src` throws ("" if none).
std::string error_of(const std::string& src, const ordered_json& vars = ordered_json::object()) {
  try {
    ChatTemplate t(src);
    ChatTemplateOptions opts;
    opts.extra = vars;
    t.render(ordered_json::array(), opts);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

#define EXPECT_ERROR_HAS(src, ...)                              \
  do {                                                          \
    const std::string msg = error_of(src);                      \
    for (const char* part : {__VA_ARGS__})                      \
      EXPECT_NE(msg.find(part), std::string::npos)              \
          << "message: '" << msg << "' lacks '" << part << "'"; \
  } while (0)

TEST(JinjaErrors, UnsupportedTagsNameTheLine) {
  EXPECT_ERROR_HAS("ok\n{% include 'x.j2' %}", "line 2", "unsupported template tag 'include'");
  EXPECT_ERROR_HAS("a\nb\n  {% extends 'base' %}", "line 3", "column 6", "'extends'");
  EXPECT_ERROR_HAS("{% call foo() %}{% endcall %}", "line 1", "'call'");
  EXPECT_ERROR_HAS("{% for x in y recursive %}{% endfor %}", "line 1", "recursive");
  EXPECT_ERROR_HAS("{% do x.append(1) %}", "line 1", "'do'");
}

TEST(JinjaErrors, UnsupportedFiltersAndTests) {
  EXPECT_ERROR_HAS("\n\n{{ x | wordwrap }}", "line 3", "unsupported filter 'wordwrap'");
  EXPECT_ERROR_HAS("{% if x is\n  prime %}{% endif %}", "line 2", "unsupported test 'prime'");
  EXPECT_ERROR_HAS("{{ 'a' | map('nofilter') | list }}", "line 1", "nofilter");
}

TEST(JinjaErrors, SyntaxErrors) {
  EXPECT_ERROR_HAS("{% if x %}never closed", "line 1", "never closed");
  EXPECT_ERROR_HAS("x\n{% endif %}", "line 2", "unexpected 'endif'");
  EXPECT_ERROR_HAS("{{ 'unterminated }}", "line 1", "unterminated string");
  EXPECT_ERROR_HAS("line1\n{{ a + }}", "line 2", "unexpected");
  EXPECT_ERROR_HAS("{{ x", "line 1", "unclosed");
  EXPECT_ERROR_HAS("{# open comment", "line 1", "unclosed comment");
  EXPECT_ERROR_HAS("{% break %}", "line 1", "outside of a for loop");
  EXPECT_ERROR_HAS("{{ f(*args) }}", "line 1", "not supported");
  EXPECT_ERROR_HAS("{{ a ? b }}", "line 1", "unexpected character '?'");
  EXPECT_ERROR_HAS("{% for x in %}{% endfor %}", "line 1");
}

TEST(JinjaErrors, RuntimeErrorsNameTheLine) {
  EXPECT_ERROR_HAS("\n{{ raise_exception('Conversation roles must alternate') }}", "line 2",
                   "Conversation roles must alternate");
  EXPECT_ERROR_HAS("{{ 'a' + 1 }}", "line 1", "unsupported operand type(s) for +: 'str' and 'int'");
  EXPECT_ERROR_HAS("a\n\n{{ missing.attr }}", "line 3", "'missing' is undefined");
  EXPECT_ERROR_HAS("{{ missing() }}", "'missing' is undefined");
  EXPECT_ERROR_HAS("{{ 'abc'.nomethod() }}", "has no attribute 'nomethod'");
  EXPECT_ERROR_HAS("{{ 1 / 0 }}", "division by zero");
  EXPECT_ERROR_HAS("{% for x in 5 %}{% endfor %}", "not iterable");
  EXPECT_ERROR_HAS("{% set x = 1 %}{% set x.y = 2 %}", "not a namespace");
  EXPECT_ERROR_HAS("{{ 1 < 'a' }}", "not supported between");
  EXPECT_ERROR_HAS("{{ '%s' % 1 }}", "not supported");
  EXPECT_ERROR_HAS("{{ x | tojson }}", "not JSON serializable");
  EXPECT_ERROR_HAS("{{ 'a' | trim(1, 2) }}", "filter 'trim'", "at most");
  EXPECT_ERROR_HAS("{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}", "recursion");
  EXPECT_ERROR_HAS("{% for a, b in [[1, 2, 3]] %}{% endfor %}", "cannot unpack");
  // The failing line inside a multi-line template.
  EXPECT_ERROR_HAS(
      "{% for m in messages %}\n{% endfor %}\n{% if true %}\n  {{ none.x.y }}\n{% endif %}",
      "line 4");
}

TEST(JinjaErrors, RenderInputValidation) {
  ChatTemplate t("x");
  EXPECT_THROW(t.render(ordered_json::object()), Error);
  ChatTemplateOptions opts;
  opts.tools = ordered_json::object();
  EXPECT_THROW(t.render(ordered_json::array(), opts), Error);
  // Absurdly deep JSON (e.g. from a request) is refused instead of overflowing the stack.
  const std::string deep = std::string(1000, '[') + std::string(1000, ']');
  const ordered_json msgs = ordered_json::parse(R"([{"role": "user", "content": )" + deep + "}]");
  try {
    t.render(msgs);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("nested deeper"), std::string::npos) << e.what();
  }
}

// Found by fuzz/fuzz_jinja (UBSan / ASan): 64-bit integer overflow in arithmetic, unary minus,
// abs, // and int(); x86's trap on INT64_MIN % -1; `**` looping once per unit of the exponent;
// range() stepping past INT64_MAX; indent(-1) throwing std::length_error; and `*`, indent and
// tojson(indent=...) asking for terabytes. Each is now a dpserve::Error or Python's answer.
TEST(JinjaErrors, IntegerOverflowAndRunawaySizes) {
  EXPECT_ERROR_HAS("{{ 9223372036854775807 + 1 }}", "line 1", "integer overflow in '+'");
  EXPECT_ERROR_HAS("{{ -9223372036854775807 - 2 }}", "integer overflow in '-'");
  EXPECT_ERROR_HAS("{{ 4294967296 * 4294967296 }}", "integer overflow in '*'");
  EXPECT_ERROR_HAS("{{ 2 ** 63 }}", "integer overflow in '**'");
  EXPECT_ERROR_HAS("{{ 3 ** 9223372036854775807 }}", "integer overflow in '**'");  // no hang
  EXPECT_ERROR_HAS("{{ (-9223372036854775807 - 1) // -1 }}", "integer overflow in '//'");
  EXPECT_ERROR_HAS("{{ -(-9223372036854775807 - 1) }}", "integer overflow in unary -");
  EXPECT_ERROR_HAS("{{ (-9223372036854775807 - 1) | abs }}", "integer overflow in abs()");
  EXPECT_ERROR_HAS("{{ '99999999999999999999999' | int }}", "cannot convert");
  EXPECT_ERROR_HAS("{{ ('1e400' | float) | int }}", "cannot convert");
  EXPECT_ERROR_HAS("{{ 'ab' * 100000000 }}", "repetition too large");
  EXPECT_ERROR_HAS("{{ [1, 2] * 9223372036854775807 }}", "repetition too large");
  EXPECT_ERROR_HAS("{{ 'a\nb' | indent(1000000000000) }}", "indent() result too large");
  EXPECT_ERROR_HAS("{{ range(300) | list | tojson(indent=4294967297) }}",
                   "tojson output too large");

  auto render = [](const std::string& src) {
    return ChatTemplate(src).render(ordered_json::array());
  };
  EXPECT_EQ(render("{{ (-9223372036854775807 - 1) % -1 }}"), "0");
  EXPECT_EQ(render("{{ (-2) ** 63 }} {{ 2 ** 62 }} {{ 1 ** 9223372036854775807 }} {{ 0 ** 0 }}"),
            "-9223372036854775808 4611686018427387904 1 1");
  EXPECT_EQ(render("{{ range(9223372036854775800, 9223372036854775807, 3) | list }}"),
            "[9223372036854775800, 9223372036854775803, 9223372036854775806]");
  EXPECT_EQ(render("{{ 'a\nb' | indent(-1) }}|{{ 'a\nb' | indent(2) }}"), "a\nb|a\n  b");
  EXPECT_EQ(render("{{ [1] | tojson(indent=2) }}"), "[\n  1\n]");
}

// Found by fuzz/fuzz_jinja in CI: an undefined variable passed to range() was taken for "not
// passed" and read as an integer (std::bad_variant_access, which ends the process).
TEST(JinjaErrors, RangeOfAnUndefinedVariable) {
  EXPECT_ERROR_HAS("{{ range(nope) | list }}", "line 1",
                   "range() arguments must be integers, got undefined");
  EXPECT_ERROR_HAS("{{ range(1, nope) | list }}", "got undefined");
  EXPECT_ERROR_HAS("{{ range(0, 4, nope) | list }}", "got undefined");
  EXPECT_ERROR_HAS("{{ range('3') | list }}", "got str");
}

// Found by fuzz/fuzz_jinja (a 25 s timeout): joining a string with a long separator multiplies
// its length, and `sort` then sorted 21 million characters. Runaway templates now end with an
// error: strings and output above 16 MiB, and more than kMaxRenderWork steps per render.
TEST(JinjaErrors, RunawayTemplatesRunOutOfBudget) {
  const std::string sep(300, 'x');
  EXPECT_ERROR_HAS("{{ 'abcdefghijklmnopqrst' | join('" + sep + "') | join('" + sep +
                       "') | join('" + sep + "') | sort | first }}",
                   "line 1");
  // The 10-minute run's slow input (24 s): two joins, then a sort of 140,000 characters.
  EXPECT_ERROR_HAS("{{ 'abcdefg' | join('" + std::string(100, 'y') + "') | join('" + sep +
                       "') | sort | first }}",
                   "the template does too much work");
  EXPECT_ERROR_HAS(
      "{% set ns = namespace(s='ab') %}{% for i in range(64) %}"
      "{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
      "string too large");
  EXPECT_ERROR_HAS(
      "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}"
      "{% endfor %}",
      "the template does too much work");
  EXPECT_ERROR_HAS("{% for i in range(1000000) %}{% set x = 'x' * 1000 %}{% endfor %}",
                   "the template does too much work");
  EXPECT_ERROR_HAS("{% for i in range(100) %}{{ 'x' * 16000000 }}{% endfor %}",
                   "template output too large");
  // The budget is per render: the next render of the same template starts afresh.
  const ChatTemplate t("{% for i in range(100000) %}{% endfor %}ok");
  for (int i = 0; i < 20; ++i) EXPECT_EQ(t.render(ordered_json::array()), "ok");
}

class TokenizerConfigTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("dpserve_chat_template_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string write(const std::string& name, const std::string& text) {
    std::ofstream(dir_ / name) << text;
    return (dir_ / name).string();
  }
  std::filesystem::path dir_;
};

TEST_F(TokenizerConfigTest, NamedTemplateList) {
  ordered_json config = {
      {"bos_token", {{"content", "<s>"}, {"lstrip", false}}},
      {"eos_token", "</s>"},
      {"chat_template",
       {{{"name", "default"}, {"template", "D{{ bos_token }}{{ messages | length }}"}},
        {{"name", "tool_use"}, {"template", "T{{ tools | length }}{{ eos_token }}"}}}}};
  const ChatTemplate t =
      ChatTemplate::from_tokenizer_config(write("tokenizer_config.json", config.dump()));
  EXPECT_EQ(t.template_names(), (std::vector<std::string>{"default", "tool_use"}));
  EXPECT_EQ(t.source(), "D{{ bos_token }}{{ messages | length }}");
  const ordered_json msgs = ordered_json::parse(R"([{"role": "user", "content": "hi"}])");
  EXPECT_EQ(t.render(msgs), "D<s>1");
  ChatTemplateOptions opts;
  opts.tools = ordered_json::parse(R"([{"type": "function"}, {"type": "function"}])");
  EXPECT_EQ(t.render(msgs, opts), "T2</s>");
  opts.eos_token = "<end>";
  EXPECT_EQ(t.render(msgs, opts), "T2<end>");
}

TEST_F(TokenizerConfigTest, JinjaFileFallbackAndErrors) {
  const std::string path = write("tokenizer_config.json", R"({"eos_token": "E"})");
  EXPECT_THROW(ChatTemplate::from_tokenizer_config(path), Error);
  write("chat_template.jinja",
        "{% for m in messages %}{{ m.content }}{% endfor %}{{ eos_token }}\n");
  const ChatTemplate t = ChatTemplate::from_tokenizer_config(path);
  EXPECT_EQ(t.render(ordered_json::parse(R"([{"role": "user", "content": "x"}])")), "xE");
  EXPECT_THROW(ChatTemplate::from_tokenizer_config((dir_ / "nope.json").string()), Error);
  const std::string bad = write("bad.json", R"({"chat_template": "{% if %}"})");
  try {
    ChatTemplate::from_tokenizer_config(bad);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("line 1"), std::string::npos) << e.what();
  }
}

TEST(ChatTemplateApi, ToolKeyOrderIsKept) {
  // ordered_json keeps the caller's key order for tojson.
  ChatTemplate t("{{ tools[0] | tojson }}");
  ChatTemplateOptions opts;
  opts.tools = ordered_json::parse(
      R"([{"type": "function", "function": {"name": "f", "description": "d"}}])");
  EXPECT_EQ(t.render(ordered_json::array(), opts),
            R"({"type": "function", "function": {"name": "f", "description": "d"}})");
}

}  // namespace
}  // namespace dpserve
