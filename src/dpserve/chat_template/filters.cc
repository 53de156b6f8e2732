// Built-in filters and tests (Jinja 3 semantics; tojson as transformers defines it).

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>
#include <map>
#include <optional>

#include <fmt/format.h>

#include "dpserve/chat_template/builtins.h"
#include "dpserve/chat_template/text.h"

namespace dpserve::jinja {

namespace {

using P = std::vector<Param>;

// Looks up a dotted attribute path ("function.name", "items.0") like Jinja's attrgetter.
Value attr_path(const Value& obj, const Value& path) {
  if (path.kind() == Kind::Int) return get_item(obj, path);
  if (!path.is_string()) fail("attribute must be a string or an integer");
  Value cur = obj;
  size_t start = 0;
  const std::string& p = path.as_string();
  while (true) {
    const size_t dot = p.find('.', start);
    const std::string part =
        p.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    const bool digits = !part.empty() && std::all_of(part.begin(), part.end(), ::isdigit);
    if (cur.is_undefined()) return cur;
    cur = digits ? get_item(cur, Value::integer(std::stoll(part)))
                 : get_item(cur, Value::string(part));
    if (dot == std::string::npos) return cur;
    start = dot + 1;
  }
}

Value f_trim(const Value& v, const Args& a) {
  auto p = bind_args(a, "trim", P{{"chars", Value::none()}});
  const std::string* chars = p[0].is_string() ? &p[0].as_string() : nullptr;
  return Value::string(py_strip(v.to_str(), chars, true, true));
}

Value f_tojson(const Value& v, const Args& a) {
  auto p = bind_args(a, "tojson",
                     P{{"ensure_ascii", Value::boolean(false)},
                       {"indent", Value::none()},
                       {"separators", Value::none()},
                       {"sort_keys", Value::boolean(false)}});
  int indent = -1;
  if (p[1].kind() == Kind::Int) {
    // Capped before the cast (a larger one would wrap); output size is capped by to_json.
    indent = static_cast<int>(std::clamp<int64_t>(p[1].as_int(), 0, 1 << 16));
  } else if (!p[1].is_none()) {
    fail("indent must be an integer or None");
  }
  std::string item_sep = indent >= 0 ? "," : ", ", key_sep = ": ";
  if (!p[2].is_none()) {
    if (!p[2].is_list() || p[2].as_list().size() != 2 || !p[2].as_list()[0].is_string() ||
        !p[2].as_list()[1].is_string()) {
      fail("separators must be a pair of strings");
    }
    item_sep = p[2].as_list()[0].as_string();
    key_sep = p[2].as_list()[1].as_string();
  }
  return Value::string(to_json(v, indent, item_sep, key_sep, p[3].truthy(), p[0].truthy()));
}

Value f_length(const Value& v, const Args& a) {
  bind_args(a, "length", {});
  return Value::integer(length(v));
}

Value f_upper(const Value& v, const Args& a) {
  bind_args(a, "upper", {});
  return Value::string(py_upper(v.to_str()));
}

Value f_lower(const Value& v, const Args& a) {
  bind_args(a, "lower", {});
  return Value::string(py_lower(v.to_str()));
}

Value f_capitalize(const Value& v, const Args& a) {
  bind_args(a, "capitalize", {});
  return Value::string(py_capitalize(v.to_str()));
}

// Jinja's title filter: upper-cases the first letter after whitespace, '-', '(', '{', '[' or '<'.
Value f_title(const Value& v, const Args& a) {
  bind_args(a, "title", {});
  std::u32string cps = utf8_decode(v.to_str());
  bool word_start = true;
  for (auto& c : cps) {
    const bool sep = is_py_space(c) || c == '-' || c == '(' || c == '{' || c == '[' || c == '<';
    if (sep) {
      word_start = true;
      continue;
    }
    c = word_start ? to_upper_cp(c) : to_lower_cp(c);
    word_start = false;
  }
  return Value::string(utf8_encode(cps));
}

Value f_default(const Value& v, const Args& a) {
  auto p = bind_args(a, "default",
                     P{{"default_value", Value::string("")}, {"boolean", Value::boolean(false)}});
  if (v.is_undefined() || (p[1].truthy() && !v.truthy())) return p[0];
  return v;
}

Value f_join(const Value& v, const Args& a) {
  auto p = bind_args(a, "join", P{{"d", Value::string("")}, {"attribute", Value::none()}});
  std::string out;
  bool first = true;
  const std::string sep = p[0].to_str();
  for (const auto& e : iterate(v)) {
    if (!first) out += sep;
    first = false;
    out += (p[1].is_none() ? e : attr_path(e, p[1])).to_str();
    if (out.size() > kMaxGeneratedBytes) fail("join() result too large");
  }
  return Value::string(std::move(out));
}

Value f_first(const Value& v, const Args& a) {
  bind_args(a, "first", {});
  List items = iterate(v);
  return items.empty() ? Value::undefined("no first item, sequence was empty") : items.front();
}

Value f_last(const Value& v, const Args& a) {
  bind_args(a, "last", {});
  List items = iterate(v);
  return items.empty() ? Value::undefined("no last item, sequence was empty") : items.back();
}

Value f_list(const Value& v, const Args& a) {
  bind_args(a, "list", {});
  return Value::list(iterate(v));
}

Value f_string(const Value& v, const Args& a) {
  bind_args(a, "string", {});
  return Value::string(v.to_str());
}

Value f_safe(const Value& v, const Args& a) {
  bind_args(a, "safe", {});
  return v;
}

Value f_items(const Value& v, const Args& a) {
  bind_args(a, "items", {});
  if (v.is_undefined()) return Value::list({});
  if (!v.is_dict())
    fail(fmt::format("can only get item pairs from a mapping, not {}", v.type_name()));
  List out;
  for (const auto& [k, e] : v.as_dict().items()) out.push_back(Value::tuple({Value::string(k), e}));
  return Value::list(std::move(out));
}

Value f_replace(const Value& v, const Args& a) {
  auto p = bind_args(a, "replace",
                     P{{"old", Value(), true}, {"new", Value(), true}, {"count", Value::none()}});
  Args m;
  m.positional = {Value::string(p[0].to_str()), Value::string(p[1].to_str())};
  if (!p[2].is_none()) m.positional.push_back(p[2]);
  return get_attribute(Value::string(v.to_str()), "replace").as_function().call(m);
}

Value f_reverse(const Value& v, const Args& a) {
  bind_args(a, "reverse", {});
  if (v.is_string()) {
    std::u32string cps = utf8_decode(v.as_string());
    std::reverse(cps.begin(), cps.end());
    return Value::string(utf8_encode(cps));
  }
  List items = iterate(v);
  std::reverse(items.begin(), items.end());
  return Value::list(std::move(items));
}

// Sort/unique key: strings lower-cased unless case-sensitive.
Value sort_key(const Value& e, const Value& attribute, bool case_sensitive) {
  Value k = attribute.is_none() ? e : attr_path(e, attribute);
  if (!case_sensitive && k.is_string()) return Value::string(py_lower(k.as_string()));
  return k;
}

Value f_sort(const Value& v, const Args& a) {
  auto p = bind_args(a, "sort",
                     P{{"reverse", Value::boolean(false)},
                       {"case_sensitive", Value::boolean(false)},
                       {"attribute", Value::none()}});
  List items = iterate(v);
  const auto n = static_cast<int64_t>(items.size());
  // n log n comparisons of values, each worth a few evaluations
  charge_work(4 * n * std::bit_width(static_cast<uint64_t>(n)));
  std::vector<std::pair<Value, Value>> keyed;
  for (auto& e : items) keyed.emplace_back(sort_key(e, p[2], p[1].truthy()), e);
  const bool rev = p[0].truthy();
  std::stable_sort(keyed.begin(), keyed.end(), [rev](const auto& x, const auto& y) {
    return rev ? compare_values(y.first, x.first) < 0 : compare_values(x.first, y.first) < 0;
  });
  List out;
  for (auto& [k, e] : keyed) out.push_back(std::move(e));
  return Value::list(std::move(out));
}

Value f_unique(const Value& v, const Args& a) {
  auto p = bind_args(a, "unique",
                     P{{"case_sensitive", Value::boolean(false)}, {"attribute", Value::none()}});
  List out, seen;
  for (const auto& e : iterate(v)) {
    Value k = sort_key(e, p[1], p[0].truthy());
    if (std::none_of(seen.begin(), seen.end(),
                     [&](const Value& s) { return values_equal(s, k); })) {
      seen.push_back(k);
      out.push_back(e);
    }
  }
  return Value::list(std::move(out));
}

Value f_abs(const Value& v, const Args& a) {
  bind_args(a, "abs", {});
  if (v.kind() == Kind::Float) return Value::number(std::fabs(v.as_double()));
  if (v.kind() == Kind::Int || v.kind() == Kind::Bool) {
    if (v.as_int() == std::numeric_limits<int64_t>::min()) {
      fail("integer overflow in abs() (template integers are 64-bit)");
    }
    return Value::integer(std::llabs(v.as_int()));
  }
  fail(fmt::format("bad operand type for abs(): '{}'", v.type_name()));
}

// A float truncated to an integer; NaN gives nullopt, a value outside int64 fails (Python's
// int(inf) raises; its larger ints do not exist here).
std::optional<int64_t> truncate_to_int(double d) {
  if (std::isnan(d)) return std::nullopt;
  if (!(d >= -9223372036854775808.0 && d < 9223372036854775808.0)) {
    fail(fmt::format("cannot convert {} to a 64-bit integer", d));
  }
  return static_cast<int64_t>(d);
}

Value f_int(const Value& v, const Args& a) {
  auto p = bind_args(a, "int", P{{"default", Value::integer(0)}});
  if (v.kind() == Kind::Int || v.kind() == Kind::Bool) return Value::integer(v.as_int());
  if (v.kind() == Kind::Float) {
    const std::optional<int64_t> i = truncate_to_int(v.as_double());
    return i ? Value::integer(*i) : p[0];
  }
  if (v.is_string()) {
    const std::string s = py_strip(v.as_string(), nullptr, true, true);
    char* end = nullptr;
    errno = 0;
    const long long i = std::strtoll(s.c_str(), &end, 10);
    if (!s.empty() && *end == '\0' && errno == 0) return Value::integer(i);
    const double d = std::strtod(s.c_str(), &end);
    if (!s.empty() && *end == '\0' && std::isfinite(d)) {
      const std::optional<int64_t> i = truncate_to_int(d);
      if (i) return Value::integer(*i);
    }
  }
  return p[0];
}

Value f_float(const Value& v, const Args& a) {
  auto p = bind_args(a, "float", P{{"default", Value::number(0.0)}});
  if (v.is_number() || v.kind() == Kind::Bool) return Value::number(v.as_double());
  if (v.is_string()) {
    const std::string s = py_strip(v.as_string(), nullptr, true, true);
    char* end = nullptr;
    const double d = std::strtod(s.c_str(), &end);
    if (!s.empty() && *end == '\0') return Value::number(d);
  }
  return p[0];
}

Value f_indent(const Value& v, const Args& a) {
  auto p = bind_args(a, "indent",
                     P{{"width", Value::integer(4)},
                       {"first", Value::boolean(false)},
                       {"blank", Value::boolean(false)}});
  const std::string s = v.to_str();
  // Python: ' ' * width ('' for a negative width); the result is capped like `*`.
  const int64_t width = p[0].is_string() ? 0 : std::max<int64_t>(0, p[0].as_int());
  const auto lines = static_cast<size_t>(std::count(s.begin(), s.end(), '\n')) + 1;
  const size_t pad_size = p[0].is_string() ? p[0].as_string().size() : static_cast<size_t>(width);
  if (pad_size > 0 && (pad_size > kMaxGeneratedBytes || s.size() > kMaxGeneratedBytes ||
                       lines > (kMaxGeneratedBytes - s.size()) / pad_size)) {
    fail("indent() result too large");
  }
  const std::string pad = p[0].is_string() ? p[0].as_string() : std::string(pad_size, ' ');
  std::string out;
  size_t start = 0;
  bool first_line = true;
  while (start <= s.size()) {
    const size_t nl = s.find('\n', start);
    const std::string line =
        s.substr(start, nl == std::string::npos ? std::string::npos : nl - start);
    const bool indent_it = first_line ? p[1].truthy() : (p[2].truthy() || !line.empty());
    if (indent_it) out += pad;
    out += line;
    if (nl == std::string::npos) break;
    out += '\n';
    start = nl + 1;
    first_line = false;
  }
  return Value::string(std::move(out));
}

Value f_escape(const Value& v, const Args& a) {
  bind_args(a, "escape", {});
  std::string out;
  for (char c : v.to_str()) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&#34;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out.push_back(c);
    }
  }
  return Value::string(std::move(out));
}

Value f_sum(const Value& v, const Args& a) {
  auto p = bind_args(a, "sum", P{{"attribute", Value::none()}, {"start", Value::integer(0)}});
  Value total = p[1];
  for (const auto& e : iterate(v))
    total = binary_op("+", total, p[0].is_none() ? e : attr_path(e, p[0]));
  return total;
}

Value min_max(const Value& v, const Args& a, bool want_max) {
  auto p = bind_args(a, want_max ? "max" : "min",
                     P{{"case_sensitive", Value::boolean(false)}, {"attribute", Value::none()}});
  List items = iterate(v);
  if (items.empty()) return Value::undefined("no items in the sequence");
  size_t best = 0;
  for (size_t i = 1; i < items.size(); ++i) {
    const int c = compare_values(sort_key(items[i], p[1], p[0].truthy()),
                                 sort_key(items[best], p[1], p[0].truthy()));
    if (want_max ? c > 0 : c < 0) best = i;
  }
  return items[best];
}

Value f_min(const Value& v, const Args& a) { return min_max(v, a, false); }
Value f_max(const Value& v, const Args& a) { return min_max(v, a, true); }

// Applies the test named by args[skip] (with the remaining args) to `e`.
bool run_test(const Value& e, const Args& a, size_t skip, const char* fn) {
  if (a.positional.size() <= skip) return e.truthy();
  const Value& name = a.positional[skip];
  if (!name.is_string()) fail(fmt::format("{}: test name must be a string", fn));
  TestFn t = find_test(name.as_string());
  if (!t) fail(fmt::format("{}: unsupported test '{}'", fn, name.as_string()));
  Args rest;
  rest.positional.assign(a.positional.begin() + static_cast<long>(skip) + 1, a.positional.end());
  rest.keywords = a.keywords;
  return t(e, rest);
}

Value select_impl(const Value& v, const Args& a, bool by_attr, bool keep, const char* fn) {
  if (by_attr && a.positional.empty()) fail(fmt::format("{}() needs an attribute name", fn));
  List out;
  for (const auto& e : iterate(v)) {
    const Value subject = by_attr ? attr_path(e, a.positional[0]) : e;
    if (run_test(subject, a, by_attr ? 1 : 0, fn) == keep) out.push_back(e);
  }
  return Value::list(std::move(out));
}

Value f_select(const Value& v, const Args& a) { return select_impl(v, a, false, true, "select"); }
Value f_reject(const Value& v, const Args& a) { return select_impl(v, a, false, false, "reject"); }
Value f_selectattr(const Value& v, const Args& a) {
  return select_impl(v, a, true, true, "selectattr");
}
Value f_rejectattr(const Value& v, const Args& a) {
  return select_impl(v, a, true, false, "rejectattr");
}

Value f_map(const Value& v, const Args& a) {
  const Value* attribute = nullptr;
  const Value* dflt = nullptr;
  for (const auto& [k, e] : a.keywords) {
    if (k == "attribute") {
      attribute = &e;
    } else if (k == "default") {
      dflt = &e;
    } else if (a.positional.empty()) {
      fail(fmt::format("map() got an unexpected keyword argument '{}'", k));
    }
  }
  List out;
  if (attribute) {
    if (!a.positional.empty()) fail("map() takes either attribute= or a filter name");
    for (const auto& e : iterate(v)) {
      Value r = attr_path(e, *attribute);
      out.push_back(r.is_undefined() && dflt ? *dflt : r);
    }
    return Value::list(std::move(out));
  }
  if (a.positional.empty() || !a.positional[0].is_string())
    fail("map() needs a filter name or attribute=");
  FilterFn f = find_filter(a.positional[0].as_string());
  if (!f) fail(fmt::format("map(): unsupported filter '{}'", a.positional[0].as_string()));
  Args rest;
  rest.positional.assign(a.positional.begin() + 1, a.positional.end());
  rest.keywords = a.keywords;
  for (const auto& e : iterate(v)) out.push_back(f(e, rest));
  return Value::list(std::move(out));
}

// ---- tests ----

bool t_defined(const Value& v, const Args&) { return !v.is_undefined(); }
bool t_undefined(const Value& v, const Args&) { return v.is_undefined(); }
bool t_none(const Value& v, const Args&) { return v.is_none(); }
bool t_string(const Value& v, const Args&) { return v.is_string(); }
bool t_mapping(const Value& v, const Args&) { return v.is_dict(); }
bool t_iterable(const Value& v, const Args&) {
  return v.is_string() || v.is_list() || v.is_dict() || v.is_undefined();
}
bool t_number(const Value& v, const Args&) { return v.is_number() || v.kind() == Kind::Bool; }
bool t_integer(const Value& v, const Args&) { return v.kind() == Kind::Int; }
bool t_float(const Value& v, const Args&) { return v.kind() == Kind::Float; }
bool t_boolean(const Value& v, const Args&) { return v.kind() == Kind::Bool; }
bool t_true(const Value& v, const Args&) { return v.kind() == Kind::Bool && v.as_bool(); }
bool t_false(const Value& v, const Args&) { return v.kind() == Kind::Bool && !v.as_bool(); }
bool t_callable(const Value& v, const Args&) { return v.is_function(); }

int64_t int_arg(const Value& v, const char* test) {
  if (v.kind() != Kind::Int && v.kind() != Kind::Bool)
    fail(fmt::format("'{}' test needs an integer", test));
  return v.as_int();
}

bool t_odd(const Value& v, const Args&) { return int_arg(v, "odd") % 2 != 0; }
bool t_even(const Value& v, const Args&) { return int_arg(v, "even") % 2 == 0; }
bool t_divisibleby(const Value& v, const Args& a) {
  auto p = bind_args(a, "divisibleby", P{{"num", Value(), true}});
  const int64_t d = int_arg(p[0], "divisibleby");
  if (d == 0) fail("divisibleby zero");
  return int_arg(v, "divisibleby") % d == 0;
}

Value other(const Args& a, const char* test) {
  return bind_args(a, test, P{{"other", Value(), true}})[0];
}

bool t_eq(const Value& v, const Args& a) { return values_equal(v, other(a, "eq")); }
bool t_ne(const Value& v, const Args& a) { return !values_equal(v, other(a, "ne")); }
bool t_lt(const Value& v, const Args& a) { return compare_values(v, other(a, "lt")) < 0; }
bool t_le(const Value& v, const Args& a) { return compare_values(v, other(a, "le")) <= 0; }
bool t_gt(const Value& v, const Args& a) { return compare_values(v, other(a, "gt")) > 0; }
bool t_ge(const Value& v, const Args& a) { return compare_values(v, other(a, "ge")) >= 0; }
bool t_in(const Value& v, const Args& a) {
  return contains(bind_args(a, "in", P{{"seq", Value(), true}})[0], v);
}
bool t_sameas(const Value& v, const Args& a) {
  const Value o = other(a, "sameas");
  if (v.kind() != o.kind()) return false;
  switch (v.kind()) {
    case Kind::None:
    case Kind::Undefined:
      return true;
    case Kind::Bool:
      return v.as_bool() == o.as_bool();
    case Kind::List:
      return &v.as_list() == &o.as_list();
    case Kind::Dict:
    case Kind::Namespace:
      return &v.as_dict() == &o.as_dict();
    default:
      return values_equal(v, o);
  }
}
bool t_lower(const Value& v, const Args&) {
  const std::string s = v.to_str();
  return py_lower(s) == s && py_upper(s) != s;
}
bool t_upper(const Value& v, const Args&) {
  const std::string s = v.to_str();
  return py_upper(s) == s && py_lower(s) != s;
}
bool t_sequence(const Value& v, const Args& a) { return t_iterable(v, a); }

}  // namespace

FilterFn find_filter(const std::string& name) {
  static const std::map<std::string, FilterFn> kFilters = {
      {"abs", f_abs},
      {"capitalize", f_capitalize},
      {"count", f_length},
      {"d", f_default},
      {"default", f_default},
      {"e", f_escape},
      {"escape", f_escape},
      {"first", f_first},
      {"float", f_float},
      {"indent", f_indent},
      {"int", f_int},
      {"items", f_items},
      {"join", f_join},
      {"last", f_last},
      {"length", f_length},
      {"list", f_list},
      {"lower", f_lower},
      {"map", f_map},
      {"max", f_max},
      {"min", f_min},
      {"reject", f_reject},
      {"rejectattr", f_rejectattr},
      {"replace", f_replace},
      {"reverse", f_reverse},
      {"safe", f_safe},
      {"select", f_select},
      {"selectattr", f_selectattr},
      {"sort", f_sort},
      {"string", f_string},
      {"sum", f_sum},
      {"title", f_title},
      {"tojson", f_tojson},
      {"trim", f_trim},
      {"unique", f_unique},
      {"upper", f_upper},
  };
  auto it = kFilters.find(name);
  return it == kFilters.end() ? nullptr : it->second;
}

TestFn find_test(const std::string& name) {
  static const std::map<std::string, TestFn> kTests = {
      {"defined", t_defined},
      {"undefined", t_undefined},
      {"none", t_none},
      {"string", t_string},
      {"mapping", t_mapping},
      {"iterable", t_iterable},
      {"sequence", t_sequence},
      {"number", t_number},
      {"integer", t_integer},
      {"float", t_float},
      {"boolean", t_boolean},
      {"true", t_true},
      {"false", t_false},
      {"callable", t_callable},
      {"odd", t_odd},
      {"even", t_even},
      {"divisibleby", t_divisibleby},
      {"eq", t_eq},
      {"equalto", t_eq},
      {"==", t_eq},
      {"ne", t_ne},
      {"!=", t_ne},
      {"lt", t_lt},
      {"lessthan", t_lt},
      {"<", t_lt},
      {"le", t_le},
      {"<=", t_le},
      {"gt", t_gt},
      {"greaterthan", t_gt},
      {">", t_gt},
      {"ge", t_ge},
      {">=", t_ge},
      {"in", t_in},
      {"sameas", t_sameas},
      {"lower", t_lower},
      {"upper", t_upper},
  };
  auto it = kTests.find(name);
  return it == kTests.end() ? nullptr : it->second;
}

}  // namespace dpserve::jinja
