// Unit tests of the Jinja-subset engine; expected values follow Python Jinja 3 semantics with
// transformers' settings (trim_blocks, lstrip_blocks, tojson with ensure_ascii=False).

#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "dpserve/chat_template/chat_template.h"
#include "dpserve/chat_template/template.h"
#include "dpserve/chat_template/text.h"
#include "dpserve/chat_template/value.h"

namespace dpserve::jinja {
namespace {

using nlohmann::ordered_json;

std::string render(const std::string& src, const ordered_json& vars = ordered_json::object()) {
  return Template(src).render(Value::from_json(vars).as_dict());
}

TEST(JinjaText, PlainTextAndComments) {
  EXPECT_EQ(render("hello"), "hello");
  EXPECT_EQ(render("a{# note #}b"), "ab");
  EXPECT_EQ(render("line\n"), "line");  // one trailing newline dropped
  EXPECT_EQ(render("line\n\n"), "line\n");
  EXPECT_EQ(render("a\r\nb"), "a\nb");
  EXPECT_EQ(render("{% raw %}{{ not }}{% endraw %}"), "{{ not }}");
}

TEST(JinjaText, WhitespaceControl) {
  EXPECT_EQ(render("a  {{- 'b' -}}  c"), "abc");
  EXPECT_EQ(render("a\n  {%- if true -%}\n  b\n{%- endif %}"), "ab");
  EXPECT_EQ(render("x {{ 'y' }} z"), "x y z");
  EXPECT_EQ(render("{{ 'a' }}\n{{ 'b' }}"), "a\nb");  // no trim after }}
}

TEST(JinjaText, TrimAndLstripBlocks) {
  // The block tag's line disappears entirely.
  EXPECT_EQ(render("<\n  {% if true %}\n  x\n  {% endif %}\n>"), "<\n  x\n>");
  // lstrip only applies when the tag starts the line.
  EXPECT_EQ(render("a  {% if true %}b{% endif %}"), "a  b");
  // {%+ keeps the indentation, +%} keeps the newline.
  EXPECT_EQ(render("  {%+ if true %}x{% endif %}"), "  x");
  EXPECT_EQ(render("{% if true +%}\nx{% endif %}"), "\nx");
  // Comments are trimmed like blocks.
  EXPECT_EQ(render("  {# c #}\nx"), "x");
  // Expressions are not lstripped.
  EXPECT_EQ(render("  {{ 'x' }}"), "  x");
}

TEST(JinjaText, LexOptionsOff) {
  LexOptions plain{false, false, true};
  EXPECT_EQ(Template("  {% if true %}\nx\n{% endif %}\n", plain).render({}), "  \nx\n\n");
}

TEST(JinjaExpr, Literals) {
  EXPECT_EQ(render("{{ 42 }}|{{ -7 }}|{{ 1.5 }}|{{ 2.0 }}|{{ 1e20 }}|{{ 1_000 }}"),
            "42|-7|1.5|2.0|1e+20|1000");
  EXPECT_EQ(render("{{ true }}|{{ False }}|{{ none }}|{{ undefined_thing }}"), "True|False|None|");
  EXPECT_EQ(render("{{ 'a' 'b' }}|{{ \"q\\\"\" }}|{{ 'tab\\there' }}|{{ '\\u00e9' }}"),
            "ab|q\"|tab\there|\xc3\xa9");
  EXPECT_EQ(render("{{ [1, 'a', none, true] }}"), "[1, 'a', None, True]");
  EXPECT_EQ(render("{{ {'k': 'v', 'n': [1.5]} }}"), "{'k': 'v', 'n': [1.5]}");
  EXPECT_EQ(render("{{ (1, 2) | length }}|{{ () | length }}"), "2|0");
  EXPECT_EQ(render("{{ \"it's\" }}|{{ [\"it's\"] }}"), "it's|[\"it's\"]");
}

TEST(JinjaExpr, Arithmetic) {
  // Jinja parses ** left-associatively (unlike Python).
  EXPECT_EQ(render("{{ 1 + 2 * 3 }}|{{ (1 + 2) * 3 }}|{{ 2 ** 3 ** 2 }}|{{ 10 - 2 - 3 }}"),
            "7|9|64|5");
  EXPECT_EQ(render("{{ 7 / 2 }}|{{ 4 / 2 }}|{{ 7 // 2 }}|{{ -7 // 2 }}|{{ -7 % 3 }}|{{ 7 % -3 }}"),
            "3.5|2.0|3|-4|2|-2");
  EXPECT_EQ(render("{{ 0.1 + 0.2 }}|{{ 1 / 3 }}|{{ 2.5 * 2 }}|{{ 7.5 // 2 }}"),
            "0.30000000000000004|0.3333333333333333|5.0|3.0");
  EXPECT_EQ(render("{{ 'ab' + 'cd' }}|{{ 'ab' * 2 }}|{{ 2 * 'x' }}|{{ [1] + [2] }}|{{ [0] * 2 }}"),
            "abcd|abab|xx|[1, 2]|[0, 0]");
  EXPECT_EQ(render("{{ 'a' ~ 1 ~ none ~ undefined_var ~ 2.0 }}"), "a1None2.0");
  EXPECT_EQ(render("{{ -(3) }}|{{ +4 }}|{{ true + 1 }}"), "-3|4|2");
}

TEST(JinjaExpr, ComparisonsAndLogic) {
  EXPECT_EQ(render("{{ 1 < 2 }}|{{ 1 < 2 < 3 }}|{{ 3 > 2 > 2 }}|{{ 1 == 1.0 }}|{{ 'a' != 'b' }}"),
            "True|True|False|True|True");
  EXPECT_EQ(
      render("{{ 'b' in 'abc' }}|{{ 4 not in [1, 2] }}|{{ 'k' in {'k': 1} }}|{{ none == none }}"),
      "True|True|True|True");
  EXPECT_EQ(render("{{ 0 or 'x' }}|{{ 'a' and 'b' }}|{{ '' and 'b' }}|{{ not 0 }}|{{ not 'x' }}"),
            "x|b||True|False");
  EXPECT_EQ(render("{{ 'y' if 1 else 'n' }}|{{ 'y' if 0 else 'n' }}|[{{ 'y' if 0 }}]"), "y|n|[]");
  EXPECT_EQ(render("{{ 'a' if false else 'b' if true else 'c' }}"), "b");
  EXPECT_EQ(render("{{ [1, 2] == [1, 2] }}|{{ {'a': 1} == {'a': 1} }}|{{ 'abc' < 'abd' }}"),
            "True|True|True");
  // `not` binds looser than comparisons, tests bind tighter than everything.
  EXPECT_EQ(render("{{ not 1 == 2 }}|{{ not x is defined }}"), "True|True");
}

TEST(JinjaExpr, MemberAccessAndSlicing) {
  const ordered_json vars = {{"m", {{"role", "user"}, {"items", 3}}}, {"xs", {1, 2, 3, 4, 5}}};
  EXPECT_EQ(render("{{ m.role }}|{{ m['role'] }}|{{ xs[0] }}|{{ xs[-1] }}|{{ xs.1 }}", vars),
            "user|user|1|5|2");
  EXPECT_EQ(render("{{ xs[::-1] }}|{{ xs[1:] }}|{{ xs[:-2] }}|{{ xs[1:4:2] }}|{{ xs[10:] }}", vars),
            "[5, 4, 3, 2, 1]|[2, 3, 4, 5]|[1, 2, 3]|[2, 4]|[]");
  EXPECT_EQ(
      render("{{ 'héllo'[::-1] }}|{{ 'héllo'[1] }}|{{ 'héllo'[-4:-1] }}|{{ 'héllo'|length }}"),
      "olléh|é|éll|5");
  // Missing keys and out-of-range indexes are undefined (print as empty).
  EXPECT_EQ(render("[{{ m.nope }}][{{ xs[9] }}][{{ m['nope'] }}]", vars), "[][][]");
  // m.items is the dict method; m['items'] the key.
  EXPECT_EQ(render("{{ m['items'] }}|{{ m.items() | length }}", vars), "3|2");
}

TEST(JinjaExpr, StringMethods) {
  EXPECT_EQ(render("{{ 'a,b,,c'.split(',') }}|{{ ' a  b '.split() }}|{{ 'a b c'.split(' ', 1) }}"),
            "['a', 'b', '', 'c']|['a', 'b']|['a', 'b c']");
  EXPECT_EQ(render("{{ 'a.b.c'.rsplit('.', 1) }}"), "['a.b', 'c']");
  EXPECT_EQ(render("[{{ '\\n x \\n'.strip() }}][{{ 'xxhixx'.strip('x') }}][{{ '  l'.lstrip() }}]"
                   "[{{ 'r\\n\\n'.rstrip('\\n') }}]"),
            "[x][hi][l][r]");
  EXPECT_EQ(render("{{ 'abc'.startswith('ab') }}|{{ 'abc'.endswith('bc') }}|"
                   "{{ 'abc'.startswith(('x', 'a')) }}|{{ 'abc'.endswith('a') }}"),
            "True|True|True|False");
  EXPECT_EQ(render("{{ 'Hi'.upper() }}|{{ 'Hi'.lower() }}|{{ 'aaa'.replace('a', 'b', 2) }}|"
                   "{{ \"they're 1st\".title() }}|{{ 'hELLO'.capitalize() }}"),
            "HI|hi|bba|They'Re 1St|Hello");
  EXPECT_EQ(render("{{ '-'.join(['a', 'b']) }}|{{ 'hello'.find('l') }}|{{ 'hello'.count('l') }}"),
            "a-b|2|2");
  EXPECT_EQ(render("{{ 'grün'.upper() }}|{{ 'ÀÉÎ'.lower() }}|{{ 'αβγ'.upper() }}"), "GRÜN|àéî|ΑΒΓ");
}

TEST(JinjaExpr, DictMethods) {
  const ordered_json vars = {{"d", {{"b", 1}, {"a", "x"}}}};
  EXPECT_EQ(render("{{ d.get('a') }}|{{ d.get('z') }}|{{ d.get('z', 5) }}", vars), "x|None|5");
  EXPECT_EQ(render("{{ d.keys() }}|{{ d.values() }}|{{ d.items() }}", vars),
            "['b', 'a']|[1, 'x']|[('b', 1), ('a', 'x')]");
  EXPECT_EQ(render("{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}", vars), "b=1;a=x;");
}

TEST(JinjaFilters, Basic) {
  EXPECT_EQ(render("[{{ '  x  ' | trim }}][{{ 'xxa' | trim('x') }}][{{ 'aB' | upper }}][{{ 'aB' | "
                   "lower }}]"),
            "[x][a][AB][ab]");
  EXPECT_EQ(render("{{ 'hELLO wORLD' | capitalize }}|{{ 'hello big-world (x)' | title }}"),
            "Hello world|Hello Big-World (X)");
  EXPECT_EQ(render("{{ [1, 2, 3] | length }}|{{ 'héllo' | count }}|{{ {'a': 1} | length }}"),
            "3|5|1");
  EXPECT_EQ(render("{{ x | default('d') }}|{{ '' | default('d') }}|{{ '' | default('d', true) "
                   "}}|{{ 0 | d(1) }}"),
            "d||d|0");
  EXPECT_EQ(render("{{ [1, 2] | join }}|{{ [1, 2] | join(', ') }}|{{ [{'n': 'a'}, {'n': 'b'}] | "
                   "join('+', attribute='n') }}"),
            "12|1, 2|a+b");
  EXPECT_EQ(
      render("{{ [3, 1] | first }}|{{ [3, 1] | last }}|{{ 'abc' | first }}|[{{ [] | first }}]"),
      "3|1|a|[]");
  EXPECT_EQ(render("{{ 'ab' | list }}|{{ {'k': 1} | list }}|{{ 5 | string }}|{{ none | string }}"),
            "['a', 'b']|['k']|5|None");
  EXPECT_EQ(render("{{ {'a': 1, 'b': 2} | items }}|{{ undefined_var | items }}"),
            "[('a', 1), ('b', 2)]|[]");
  EXPECT_EQ(render("{{ 'a-b-c' | replace('-', '') }}|{{ 'aaa' | replace('a', 'b', 1) }}"),
            "abc|baa");
  EXPECT_EQ(render("{{ [3, 1, 2] | reverse | list }}|{{ 'abc' | reverse }}"), "[2, 1, 3]|cba");
  EXPECT_EQ(render("{{ ['b', 'A', 'c'] | sort }}|{{ [3, 1, 2] | sort(reverse=true) }}"),
            "['A', 'b', 'c']|[3, 2, 1]");
  EXPECT_EQ(render("{{ [1, 2, 1, 3] | unique | list }}|{{ -3 | abs }}|{{ '42' | int + 1 }}|{{ 'x' "
                   "| int }}|{{ '2.5' | float }}"),
            "[1, 2, 3]|3|43|0|2.5");
  EXPECT_EQ(render("{{ [1, 2, 3] | sum }}|{{ [2, 5, 1] | max }}|{{ [2, 5, 1] | min }}"), "6|5|1");
  EXPECT_EQ(render("{{ 'a\\nb\\n\\nc' | indent(2) }}|{{ 'a\\nb' | indent(2, true) }}"),
            "a\n  b\n\n  c|  a\n  b");
  EXPECT_EQ(render("{{ '<a & \"b\">' | e }}|{{ 'x' | safe }}"), "&lt;a &amp; &#34;b&#34;&gt;|x");
}

TEST(JinjaFilters, SelectAndMap) {
  const ordered_json vars = {
      {"users",
       {{{"name", "ann"}, {"admin", true}, {"age", 30}},
        {{"name", "bob"}, {"admin", false}, {"age", 17}},
        {{"name", "cy"}, {"role", "x"}, {"age", 45}}}},
      {"msgs", {{{"role", "system"}}, {{"role", "user"}}, {{"role", "user"}}}}};
  EXPECT_EQ(render("{{ users | selectattr('admin') | map(attribute='name') | join(',') }}", vars),
            "ann");
  EXPECT_EQ(render("{{ users | rejectattr('admin') | map(attribute='name') | join(',') }}", vars),
            "bob,cy");
  EXPECT_EQ(render("{{ msgs | selectattr('role', 'equalto', 'user') | list | length }}", vars),
            "2");
  EXPECT_EQ(
      render("{{ users | selectattr('role', 'defined') | map(attribute='name') | first }}", vars),
      "cy");
  EXPECT_EQ(
      render("{{ users | selectattr('age', 'gt', 18) | map(attribute='name') | join(',') }}", vars),
      "ann,cy");
  EXPECT_EQ(render("{{ ['a', 'b'] | map('upper') | join }}|{{ [1, 0, 2] | select | list }}|{{ [1, "
                   "2, 3] | reject('odd') | list }}"),
            "AB|[1, 2]|[2]");
  EXPECT_EQ(render("{{ users | map(attribute='role', default='-') | join(',') }}", vars), "-,-,x");
}

TEST(JinjaFilters, ToJson) {
  const ordered_json vars =
      ordered_json::parse(R"({"o": {"b": 1, "a": [true, null, 2.5, "é\n\"/"], "e": {}, "l": []}})");
  EXPECT_EQ(render("{{ o | tojson }}", vars),
            "{\"b\": 1, \"a\": [true, null, 2.5, \"\xc3\xa9\\n\\\"/\"], \"e\": {}, \"l\": []}");
  EXPECT_EQ(
      render("{{ o | tojson(indent=2) }}", vars),
      "{\n  \"b\": 1,\n  \"a\": [\n    true,\n    null,\n    2.5,\n    \"\xc3\xa9\\n\\\"/\"\n  ],\n"
      "  \"e\": {},\n  \"l\": []\n}");
  EXPECT_EQ(render("{{ o.a | tojson(ensure_ascii=true) }}", vars),
            "[true, null, 2.5, \"\\u00e9\\n\\\"/\"]");
  EXPECT_EQ(render("{{ {'b': 1, 'a': 2} | tojson(sort_keys=true) }}"), "{\"a\": 2, \"b\": 1}");
  EXPECT_EQ(render("{{ [1, 2] | tojson(separators=(',', ':')) }}"), "[1,2]");
  EXPECT_EQ(
      render("{{ 1.0 | tojson }}|{{ '\\x01' | tojson }}|{{ '😀' | tojson(ensure_ascii=true) }}"),
      "1.0|\"\\u0001\"|\"\\ud83d\\ude00\"");
}

TEST(JinjaTests, TypeTests) {
  const ordered_json vars = {{"s", "x"}, {"n", nullptr}, {"d", {{"k", 1}}}, {"l", {1}},
                             {"i", 3},   {"f", 1.5},     {"t", true},       {"fa", false}};
  EXPECT_EQ(render("{{ s is string }}{{ n is none }}{{ d is mapping }}{{ l is iterable }}{{ l is "
                   "sequence }}",
                   vars),
            "TrueTrueTrueTrueTrue");
  EXPECT_EQ(
      render(
          "{{ i is number }}{{ f is number }}{{ s is number }}{{ i is integer }}{{ f is float }}",
          vars),
      "TrueTrueFalseTrueTrue");
  EXPECT_EQ(
      render("{{ t is true }}{{ fa is false }}{{ 1 is true }}{{ 0 is false }}{{ t is boolean }}",
             vars),
      "TrueTrueFalseFalseTrue");
  EXPECT_EQ(
      render("{{ x is defined }}{{ x is undefined }}{{ s is defined }}{{ n is not none }}", vars),
      "FalseTrueTrueFalse");
  EXPECT_EQ(
      render("{{ d.k is defined }}{{ d.z is defined }}{{ s is not mapping }}{{ d is iterable }}",
             vars),
      "TrueFalseTrueTrue");
  EXPECT_EQ(render("{{ 3 is odd }}{{ 4 is even }}{{ 9 is divisibleby 3 }}{{ 2 is in [1, 2] }}{{ "
                   "'a' is eq('a') }}"),
            "TrueTrueTrueTrueTrue");
  EXPECT_EQ(
      render(
          "{{ range is callable }}{{ 'ab' is lower }}{{ 'AB' is upper }}{{ none is sameas none }}"),
      "TrueTrueTrueTrue");
}

TEST(JinjaStatements, IfElifElse) {
  const std::string t = "{% if x > 2 %}big{% elif x > 0 %}small{% else %}none{% endif %}";
  EXPECT_EQ(render(t, {{"x", 5}}), "big");
  EXPECT_EQ(render(t, {{"x", 1}}), "small");
  EXPECT_EQ(render(t, {{"x", 0}}), "none");
  EXPECT_EQ(render("{% if [] %}a{% endif %}{% if {} %}b{% endif %}{% if 'x' %}c{% endif %}"), "c");
}

TEST(JinjaStatements, ForLoops) {
  EXPECT_EQ(
      render("{% for x in 'abc' %}{{ loop.index }}{{ x }}{{ ',' if not loop.last }}{% endfor %}"),
      "1a,2b,3c");
  EXPECT_EQ(
      render("{% for x in [1, 2, 3] %}{{ loop.revindex }}{{ loop.revindex0 }}{{ loop.length }}"
             "{{ loop.first }}{% endfor %}"),
      "323True213False103False");
  EXPECT_EQ(render("{% for x in [] %}x{% else %}empty{% endfor %}|{% for x in undefined_var %}x{% "
                   "endfor %}"),
            "empty|");
  EXPECT_EQ(render("{% for x in range(10) if x is odd %}{{ x }}{{ loop.length }} {% endfor %}"),
            "15 35 55 75 95 ");
  EXPECT_EQ(render("{% for a, b in [[1, 2], [3, 4]] %}{{ a + b }} {% endfor %}"), "3 7 ");
  EXPECT_EQ(
      render("{% for x in [1, 2] %}{% for y in 'ab' %}{{ loop.index }}{{ x }}{{ y }} {% endfor %}"
             "{{ loop.index }}|{% endfor %}"),
      "11a 21b 1|12a 22b 2|");
  EXPECT_EQ(render("{% for x in [1, 2, 3, 4] %}{% if x == 2 %}{% continue %}{% endif %}"
                   "{% if x == 4 %}{% break %}{% endif %}{{ x }}{% endfor %}"),
            "13");
  EXPECT_EQ(render("{% for x in [1, 2, 3] %}{{ loop.previtem }}-{{ loop.nextitem }} {% endfor %}"),
            "-2 1-3 2- ");
  EXPECT_EQ(render("{% for x in range(4) %}{{ loop.cycle('a', 'b') }}{% endfor %}"), "abab");
  EXPECT_EQ(render("{% for x in range(1, 10, 3) %}{{ x }}{% endfor %}|{% for x in range(3, 0, -1) "
                   "%}{{ x }}{% endfor %}"),
            "147|321");
}

TEST(JinjaStatements, SetAndScoping) {
  EXPECT_EQ(render("{% set x = 1 %}{% set y = x + 1 %}{{ x }}{{ y }}"), "12");
  EXPECT_EQ(render("{% set a, b = [1, 2] %}{{ b }}{{ a }}|{% set t = 1, 2 %}{{ t }}|{{ (1,) }}"),
            "21|(1, 2)|(1,)");
  // Assignments inside a loop do not leak; namespace attributes do.
  EXPECT_EQ(
      render(
          "{% set c = 0 %}{% set ns = namespace(c=0) %}{% for i in range(3) %}{% set c = c + 1 %}"
          "{% set ns.c = ns.c + 1 %}{% endfor %}{{ c }}{{ ns.c }}"),
      "03");
  EXPECT_EQ(render("{% set ns = namespace(a=1, b='x') %}{{ ns.a }}{{ ns.b }}{% set ns.a = [ns.a] "
                   "%}{{ ns.a }}"),
            "1x[1]");
  EXPECT_EQ(render("{% set block %}  Hi {{ 'there' }}  {% endset %}[{{ block }}]"),
            "[  Hi there  ]");
  EXPECT_EQ(render("{% set block | trim | upper %}  Hi  {% endset %}[{{ block }}]"), "[HI]");
  EXPECT_EQ(render("{% if true %}{% set inner = 'v' %}{% endif %}{{ inner }}"),
            "v");  // if has no scope
  EXPECT_EQ(render("{% set d = dict(a=1, b=2) %}{{ d.b }}{{ d | length }}"), "22");
}

TEST(JinjaStatements, Macros) {
  EXPECT_EQ(render("{% macro greet(name, punct='!') %}Hi {{ name }}{{ punct }}{% endmacro %}"
                   "{{ greet('a') }}|{{ greet('b', '?') }}|{{ greet(punct='.', name='c') }}"),
            "Hi a!|Hi b?|Hi c.");
  // Macros see the variables of their defining scope; missing arguments are undefined.
  EXPECT_EQ(render("{% set suffix = '#' %}{% macro m(x, y) %}{{ x }}{{ y }}{{ suffix }}{% endmacro "
                   "%}{{ m(1) }}"),
            "1#");
  // Recursion.
  EXPECT_EQ(
      render("{% macro fact(n) %}{% if n <= 1 %}1{% else %}{{ n * fact(n - 1) | int }}{% endif %}"
             "{% endmacro %}{{ fact(5) }}"),
      "120");
  EXPECT_EQ(render("{% filter upper %}abc {{ 'd' }}{% endfilter %}"), "ABC D");
  EXPECT_EQ(render("{% generation %}kept{% endgeneration %}"), "kept");
}

TEST(JinjaGlobals, NamespaceRangeStrftime) {
  EXPECT_EQ(render("{{ range(3) | list }}|{{ range(2, 4) | list }}"), "[0, 1, 2]|[2, 3]");
  ChatTemplate t("{{ strftime_now('%d %b %Y') }}|{{ strftime_now('%A %H:%M') }}");
  ChatTemplateOptions opts;
  std::tm tm{};
  tm.tm_year = 124;
  tm.tm_mon = 0;
  tm.tm_mday = 2;
  tm.tm_wday = 2;
  tm.tm_hour = 13;
  tm.tm_min = 7;
  opts.now = tm;
  EXPECT_EQ(t.render(ordered_json::array(), opts), "02 Jan 2024|Tuesday 13:07");
  // Without an override it formats the current time.
  EXPECT_EQ(ChatTemplate("{{ strftime_now('%Y') | length }}").render(ordered_json::array()), "4");
}

TEST(JinjaText, FloatRepr) {
  EXPECT_EQ(py_float_repr(0.0), "0.0");
  EXPECT_EQ(py_float_repr(-0.5), "-0.5");
  EXPECT_EQ(py_float_repr(1e16), "1e+16");
  EXPECT_EQ(py_float_repr(1234567890123456.0), "1234567890123456.0");
  EXPECT_EQ(py_float_repr(0.0001), "0.0001");
  EXPECT_EQ(py_float_repr(0.00001), "1e-05");
  EXPECT_EQ(py_float_repr(1.5e-7), "1.5e-07");
  EXPECT_EQ(py_float_repr(123.456), "123.456");
}

}  // namespace
}  // namespace dpserve::jinja
