// Attribute and item access: string and dict methods, dict keys, indexing and slicing.

#include <fmt/format.h>

#include "dpserve/chat_template/builtins.h"
#include "dpserve/chat_template/text.h"

namespace dpserve::jinja {

namespace {

std::vector<std::string> split_whitespace(const std::string& s, int64_t maxsplit, bool from_right) {
  std::u32string cps = utf8_decode(s);
  std::vector<std::u32string> parts;
  if (!from_right) {
    size_t i = 0;
    while (i < cps.size()) {
      while (i < cps.size() && is_py_space(cps[i])) ++i;
      if (i == cps.size()) break;
      if (maxsplit >= 0 && static_cast<int64_t>(parts.size()) == maxsplit) {
        size_t e = cps.size();
        while (e > i && is_py_space(cps[e - 1])) --e;
        parts.push_back(cps.substr(i, e - i));
        break;
      }
      size_t j = i;
      while (j < cps.size() && !is_py_space(cps[j])) ++j;
      parts.push_back(cps.substr(i, j - i));
      i = j;
    }
  } else {
    size_t i = cps.size();
    while (i > 0) {
      while (i > 0 && is_py_space(cps[i - 1])) --i;
      if (i == 0) break;
      if (maxsplit >= 0 && static_cast<int64_t>(parts.size()) == maxsplit) {
        size_t b = 0;
        while (b < i && is_py_space(cps[b])) ++b;
        parts.push_back(cps.substr(b, i - b));
        break;
      }
      size_t j = i;
      while (j > 0 && !is_py_space(cps[j - 1])) --j;
      parts.push_back(cps.substr(j, i - j));
      i = j;
    }
    std::reverse(parts.begin(), parts.end());
  }
  std::vector<std::string> out;
  for (const auto& p : parts) out.push_back(utf8_encode(p));
  return out;
}

std::vector<std::string> split_sep(const std::string& s, const std::string& sep, int64_t maxsplit,
                                   bool from_right) {
  if (sep.empty()) fail("empty separator");
  std::vector<std::string> out;
  if (!from_right) {
    size_t start = 0;
    while (maxsplit < 0 || static_cast<int64_t>(out.size()) < maxsplit) {
      const size_t at = s.find(sep, start);
      if (at == std::string::npos) break;
      out.push_back(s.substr(start, at - start));
      start = at + sep.size();
    }
    out.push_back(s.substr(start));
  } else {
    size_t end = s.size();
    while (maxsplit < 0 || static_cast<int64_t>(out.size()) < maxsplit) {
      if (end < sep.size()) break;
      const size_t at = s.rfind(sep, end - sep.size());
      if (at == std::string::npos) break;
      out.push_back(s.substr(at + sep.size(), end - at - sep.size()));
      end = at;
    }
    out.push_back(s.substr(0, end));
    std::reverse(out.begin(), out.end());
  }
  return out;
}

Value string_list(const std::vector<std::string>& parts) {
  List out;
  for (const auto& p : parts) out.push_back(Value::string(p));
  return Value::list(std::move(out));
}

const std::string* opt_string(const Value& v, const char* fn) {
  if (v.is_undefined() || v.is_none()) return nullptr;
  if (!v.is_string()) fail(fmt::format("{}() argument must be str or None", fn));
  return &v.as_string();
}

bool affix_match(const std::string& s, const Value& affix, bool prefix, const char* fn) {
  auto one = [&](const Value& a) {
    if (!a.is_string()) fail(fmt::format("{}() argument must be str or a tuple of str", fn));
    const std::string& x = a.as_string();
    if (x.size() > s.size()) return false;
    return prefix ? s.compare(0, x.size(), x) == 0
                  : s.compare(s.size() - x.size(), x.size(), x) == 0;
  };
  if (affix.is_list()) {
    for (const auto& a : affix.as_list()) {
      if (one(a)) return true;
    }
    return false;
  }
  return one(affix);
}

std::string replace_all(const std::string& s, const std::string& old, const std::string& repl,
                        int64_t count) {
  if (old.empty()) {
    std::u32string cps = utf8_decode(s);
    std::string out;
    int64_t done = 0;
    for (size_t i = 0; i <= cps.size(); ++i) {
      if (count < 0 || done < count) {
        out += repl;
        ++done;
      }
      if (i < cps.size()) out += utf8_encode(std::u32string(1, cps[i]));
    }
    return out;
  }
  std::string out;
  size_t start = 0;
  int64_t done = 0;
  while (count < 0 || done < count) {
    const size_t at = s.find(old, start);
    if (at == std::string::npos) break;
    out.append(s, start, at - start);
    out += repl;
    start = at + old.size();
    ++done;
  }
  out.append(s, start, std::string::npos);
  return out;
}

Value string_method(const std::string& s, const std::string& name) {
  using P = std::vector<Param>;
  auto method = [&](auto fn) { return Value::function("str." + name, fn); };
  if (name == "startswith" || name == "endswith") {
    const bool prefix = name == "startswith";
    return method([s, prefix](Args& a) {
      auto p = bind_args(a, prefix ? "startswith" : "endswith", P{{"prefix", Value(), true}});
      return Value::boolean(affix_match(s, p[0], prefix, prefix ? "startswith" : "endswith"));
    });
  }
  if (name == "split" || name == "rsplit") {
    const bool right = name == "rsplit";
    return method([s, right](Args& a) {
      auto p = bind_args(a, right ? "rsplit" : "split",
                         P{{"sep", Value::none()}, {"maxsplit", Value::integer(-1)}});
      if (p[1].kind() != Kind::Int) fail("maxsplit must be an integer");
      const std::string* sep = opt_string(p[0], "split");
      return string_list(sep ? split_sep(s, *sep, p[1].as_int(), right)
                             : split_whitespace(s, p[1].as_int(), right));
    });
  }
  if (name == "strip" || name == "lstrip" || name == "rstrip") {
    const bool left = name != "rstrip", right = name != "lstrip";
    return method([s, left, right, name](Args& a) {
      auto p = bind_args(a, name, P{{"chars", Value::none()}});
      return Value::string(py_strip(s, opt_string(p[0], name.c_str()), left, right));
    });
  }
  if (name == "upper" || name == "lower" || name == "title" || name == "capitalize") {
    return method([s, name](Args& a) {
      bind_args(a, name, {});
      if (name == "upper") return Value::string(py_upper(s));
      if (name == "lower") return Value::string(py_lower(s));
      if (name == "title") return Value::string(py_title(s));
      return Value::string(py_capitalize(s));
    });
  }
  if (name == "replace") {
    return method([s](Args& a) {
      auto p = bind_args(
          a, "replace",
          P{{"old", Value(), true}, {"new", Value(), true}, {"count", Value::integer(-1)}});
      if (!p[0].is_string() || !p[1].is_string()) fail("replace() arguments must be str");
      if (p[2].kind() != Kind::Int) fail("replace() count must be an integer");
      return Value::string(replace_all(s, p[0].as_string(), p[1].as_string(), p[2].as_int()));
    });
  }
  if (name == "join") {
    return method([s](Args& a) {
      auto p = bind_args(a, "join", P{{"iterable", Value(), true}});
      std::string out;
      bool first = true;
      for (const auto& e : iterate(p[0])) {
        if (!e.is_string()) fail(fmt::format("join() expected str items, found {}", e.type_name()));
        if (!first) out += s;
        first = false;
        out += e.as_string();
      }
      return Value::string(std::move(out));
    });
  }
  if (name == "find" || name == "count") {
    const bool find = name == "find";
    return method([s, find](Args& a) {
      auto p = bind_args(a, find ? "find" : "count", P{{"sub", Value(), true}});
      if (!p[0].is_string()) fail("argument must be str");
      const std::string& sub = p[0].as_string();
      if (find) {
        const size_t at = s.find(sub);
        if (at == std::string::npos) return Value::integer(-1);
        return Value::integer(utf8_length(std::string_view(s).substr(0, at)));
      }
      if (sub.empty()) return Value::integer(utf8_length(s) + 1);
      int64_t n = 0;
      for (size_t at = s.find(sub); at != std::string::npos; at = s.find(sub, at + sub.size())) ++n;
      return Value::integer(n);
    });
  }
  return Value::undefined(fmt::format("'str object' has no attribute '{}'", name));
}

Value dict_method(const Value& d, const std::string& name) {
  using P = std::vector<Param>;
  if (name == "get") {
    return Value::function("dict.get", [d](Args& a) {
      auto p = bind_args(a, "get", P{{"key", Value(), true}, {"default", Value::none()}});
      if (!p[0].is_string()) return p[1];
      const Value* v = d.as_dict().find(p[0].as_string());
      return v ? *v : p[1];
    });
  }
  if (name == "items" || name == "keys" || name == "values") {
    return Value::function("dict." + name, [d, name](Args& a) {
      bind_args(a, name, {});
      List out;
      for (const auto& [k, v] : d.as_dict().items()) {
        if (name == "items") {
          out.push_back(Value::tuple({Value::string(k), v}));
        } else {
          out.push_back(name == "keys" ? Value::string(k) : v);
        }
      }
      return Value::list(std::move(out));
    });
  }
  return Value();
}

// Python's slice index normalization for a sequence of length n.
void adjust_slice(int64_t n, const Value& start, const Value& stop, const Value& step, int64_t& b,
                  int64_t& e, int64_t& st) {
  auto omitted = [](const Value& v) { return v.is_undefined() || v.is_none(); };
  for (const Value* v : {&start, &stop, &step}) {
    if (!omitted(*v) && v->kind() != Kind::Int && v->kind() != Kind::Bool) {
      fail("slice indices must be integers or None");
    }
  }
  st = omitted(step) ? 1 : step.as_int();
  if (st == 0) fail("slice step cannot be zero");
  auto clamp = [&](const Value& v, int64_t dflt) {
    if (omitted(v)) return dflt;
    int64_t i = v.as_int();
    if (i < 0) {
      i += n;
      if (i < 0) i = st < 0 ? -1 : 0;
    } else if (i >= n) {
      i = st < 0 ? n - 1 : n;
    }
    return i;
  };
  b = clamp(start, st < 0 ? n - 1 : 0);
  e = clamp(stop, st < 0 ? -1 : n);
}

}  // namespace

Value get_attribute(const Value& obj, const std::string& name) {
  switch (obj.kind()) {
    case Kind::String:
      return string_method(obj.as_string(), name);
    case Kind::Dict: {
      Value m = dict_method(obj, name);
      if (m.is_function()) return m;
      if (const Value* v = obj.as_dict().find(name)) return *v;
      return Value::undefined(fmt::format("'dict object' has no attribute '{}'", name));
    }
    case Kind::Namespace:
      if (const Value* v = obj.as_dict().find(name)) return *v;
      return Value::undefined(fmt::format("namespace has no attribute '{}'", name));
    default:
      return Value::undefined(
          fmt::format("'{} object' has no attribute '{}'", obj.type_name(), name));
  }
}

Value get_item(const Value& obj, const Value& key) {
  const bool int_key = key.kind() == Kind::Int || key.kind() == Kind::Bool;
  if ((obj.is_list() || obj.is_string()) && int_key) {
    const int64_t n = length(obj);
    int64_t i = key.as_int();
    if (i < 0) i += n;
    if (i < 0 || i >= n) {
      return Value::undefined(
          fmt::format("{} index {} out of range", obj.type_name(), key.as_int()));
    }
    if (obj.is_list()) return obj.as_list()[static_cast<size_t>(i)];
    const std::u32string cps = utf8_decode(obj.as_string());
    return Value::string(utf8_encode(std::u32string(1, cps[static_cast<size_t>(i)])));
  }
  if ((obj.is_dict() || obj.kind() == Kind::Namespace) && key.is_string()) {
    if (const Value* v = obj.as_dict().find(key.as_string())) return *v;
  }
  if (key.is_string()) return get_attribute(obj, key.as_string());
  return Value::undefined(fmt::format("'{} object' has no item {}", obj.type_name(), key.repr()));
}

Value slice_value(const Value& obj, const Value& start, const Value& stop, const Value& step) {
  if (!obj.is_list() && !obj.is_string()) {
    fail(fmt::format("'{}' object is not subscriptable with a slice", obj.type_name()));
  }
  int64_t b, e, st;
  if (obj.is_list()) {
    const List& items = obj.as_list();
    adjust_slice(static_cast<int64_t>(items.size()), start, stop, step, b, e, st);
    List out;
    for (int64_t i = b; st > 0 ? i < e : i > e; i += st)
      out.push_back(items[static_cast<size_t>(i)]);
    return Value::list(std::move(out));
  }
  const std::u32string cps = utf8_decode(obj.as_string());
  adjust_slice(static_cast<int64_t>(cps.size()), start, stop, step, b, e, st);
  std::u32string out;
  for (int64_t i = b; st > 0 ? i < e : i > e; i += st) out.push_back(cps[static_cast<size_t>(i)]);
  return Value::string(utf8_encode(out));
}

}  // namespace dpserve::jinja
