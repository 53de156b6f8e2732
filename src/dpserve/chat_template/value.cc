// Values of the chat template engine: construction, Python semantics of operators, str/repr/json.

#include "dpserve/chat_template/value.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include <fmt/format.h>

#include "dpserve/chat_template/text.h"

namespace dpserve::jinja {

void fail(std::string message) { throw Failure(std::move(message)); }

Value Value::undefined(std::string hint) {
  Value v;
  v.data_ = std::move(hint);
  return v;
}

Value Value::none() {
  Value v;
  v.kind_ = Kind::None;
  return v;
}

Value Value::boolean(bool b) {
  Value v;
  v.kind_ = Kind::Bool;
  v.data_ = b;
  return v;
}

Value Value::integer(int64_t i) {
  Value v;
  v.kind_ = Kind::Int;
  v.data_ = i;
  return v;
}

Value Value::number(double d) {
  Value v;
  v.kind_ = Kind::Float;
  v.data_ = d;
  return v;
}

namespace {
thread_local int64_t render_work_left = -1;  // -1: no render on this thread
}  // namespace

void charge_work(int64_t units) {
  if (render_work_left < 0) return;
  render_work_left -= units;
  if (render_work_left < 0) {
    render_work_left = 0;  // the error unwinds through code that may charge again
    fail(
        fmt::format("the template does too much work (more than {} steps: evaluations, items "
                    "iterated, bytes built / 256)",
                    kMaxRenderWork));
  }
}

RenderBudget::RenderBudget() : saved_(render_work_left) { render_work_left = kMaxRenderWork; }

RenderBudget::~RenderBudget() { render_work_left = saved_; }

Value Value::string(std::string s) {
  if (s.size() > kMaxGeneratedBytes) {
    fail(fmt::format("string too large ({} bytes; the limit is {})", s.size(), kMaxGeneratedBytes));
  }
  charge_work(static_cast<int64_t>(s.size() / 256));
  Value v;
  v.kind_ = Kind::String;
  v.data_ = std::move(s);
  return v;
}

Value Value::list(List items) {
  Value v;
  v.kind_ = Kind::List;
  v.data_ = std::make_shared<List>(std::move(items));
  return v;
}

Value Value::tuple(List items) {
  Value v = list(std::move(items));
  v.tuple_ = true;
  return v;
}

Value Value::dict(Dict d) {
  Value v;
  v.kind_ = Kind::Dict;
  v.data_ = std::make_shared<Dict>(std::move(d));
  return v;
}

Value Value::name_space(Dict d) {
  Value v;
  v.kind_ = Kind::Namespace;
  v.data_ = std::make_shared<Dict>(std::move(d));
  return v;
}

Value Value::function(std::string name, std::function<Value(Args&)> call) {
  Value v;
  v.kind_ = Kind::Function;
  v.data_ = std::make_shared<const Function>(Function{std::move(name), std::move(call)});
  return v;
}

namespace {

// Deeper JSON (e.g. from a request) is refused rather than risking the stack.
constexpr int kMaxJsonDepth = 256;

Value json_to_value(const nlohmann::ordered_json& j, int depth) {
  if (depth > kMaxJsonDepth) fail(fmt::format("JSON nested deeper than {} levels", kMaxJsonDepth));
  switch (j.type()) {
    case nlohmann::ordered_json::value_t::null:
      return Value::none();
    case nlohmann::ordered_json::value_t::boolean:
      return Value::boolean(j.get<bool>());
    case nlohmann::ordered_json::value_t::number_integer:
      return Value::integer(j.get<int64_t>());
    case nlohmann::ordered_json::value_t::number_unsigned: {
      const auto u = j.get<uint64_t>();
      if (u > static_cast<uint64_t>(INT64_MAX)) return Value::number(static_cast<double>(u));
      return Value::integer(static_cast<int64_t>(u));
    }
    case nlohmann::ordered_json::value_t::number_float:
      return Value::number(j.get<double>());
    case nlohmann::ordered_json::value_t::string:
      return Value::string(j.get<std::string>());
    case nlohmann::ordered_json::value_t::array: {
      List items;
      items.reserve(j.size());
      for (const auto& e : j) items.push_back(json_to_value(e, depth + 1));
      return Value::list(std::move(items));
    }
    case nlohmann::ordered_json::value_t::object: {
      Dict d;
      for (const auto& [k, e] : j.items()) d.set(k, json_to_value(e, depth + 1));
      return Value::dict(std::move(d));
    }
    default:
      fail("unsupported JSON value (binary)");
  }
}

}  // namespace

Value Value::from_json(const nlohmann::ordered_json& j) { return json_to_value(j, 0); }

std::string Value::undefined_hint() const {
  if (const auto* s = std::get_if<std::string>(&data_)) return *s;
  return "value is undefined";
}

int64_t Value::as_int() const {
  if (kind_ == Kind::Bool) return as_bool() ? 1 : 0;
  return std::get<int64_t>(data_);
}

double Value::as_double() const {
  if (kind_ == Kind::Float) return std::get<double>(data_);
  return static_cast<double>(as_int());
}

bool Value::truthy() const {
  switch (kind_) {
    case Kind::Undefined:
    case Kind::None:
      return false;
    case Kind::Bool:
      return as_bool();
    case Kind::Int:
      return as_int() != 0;
    case Kind::Float:
      return as_double() != 0.0;
    case Kind::String:
      return !as_string().empty();
    case Kind::List:
      return !as_list().empty();
    case Kind::Dict:
      return as_dict().size() > 0;
    case Kind::Namespace:
    case Kind::Function:
      return true;
  }
  return false;
}

std::string Value::to_str() const {
  switch (kind_) {
    case Kind::Undefined:
      return "";
    case Kind::String:
      return as_string();
    default:
      return repr();
  }
}

std::string Value::repr() const {
  switch (kind_) {
    case Kind::Undefined:
      return "Undefined";
    case Kind::None:
      return "None";
    case Kind::Bool:
      return as_bool() ? "True" : "False";
    case Kind::Int:
      return std::to_string(as_int());
    case Kind::Float:
      return py_float_repr(as_double());
    case Kind::String:
      return py_string_repr(as_string());
    case Kind::List: {
      std::string out = tuple_ ? "(" : "[";
      bool first = true;
      for (const auto& e : as_list()) {
        if (!first) out += ", ";
        first = false;
        out += e.repr();
      }
      if (tuple_ && as_list().size() == 1) out += ",";
      return out + (tuple_ ? ")" : "]");
    }
    case Kind::Dict:
    case Kind::Namespace: {
      std::string out = "{";
      bool first = true;
      for (const auto& [k, e] : as_dict().items()) {
        if (!first) out += ", ";
        first = false;
        out += py_string_repr(k) + ": " + e.repr();
      }
      out += "}";
      return kind_ == Kind::Namespace ? "<Namespace " + out + ">" : out;
    }
    case Kind::Function:
      return "<function " + as_function().name + ">";
  }
  return "";
}

std::string Value::type_name() const {
  switch (kind_) {
    case Kind::Undefined:
      return "undefined";
    case Kind::None:
      return "NoneType";
    case Kind::Bool:
      return "bool";
    case Kind::Int:
      return "int";
    case Kind::Float:
      return "float";
    case Kind::String:
      return "str";
    case Kind::List:
      return "list";
    case Kind::Dict:
      return "dict";
    case Kind::Namespace:
      return "Namespace";
    case Kind::Function:
      return "function";
  }
  return "?";
}

const Value* Dict::find(const std::string& key) const {
  auto it = index_.find(key);
  return it == index_.end() ? nullptr : &items_[it->second].second;
}

void Dict::set(const std::string& key, Value v) {
  auto it = index_.find(key);
  if (it != index_.end()) {
    items_[it->second].second = std::move(v);
    return;
  }
  index_.emplace(key, items_.size());
  items_.emplace_back(key, std::move(v));
}

std::vector<Value> bind_args(const Args& args, std::string_view fn_name,
                             const std::vector<Param>& params) {
  if (args.positional.size() > params.size()) {
    fail(fmt::format("{}() takes at most {} argument(s) ({} given)", fn_name, params.size(),
                     args.positional.size()));
  }
  std::vector<Value> out(params.size());
  std::vector<bool> given(params.size(), false);
  for (size_t i = 0; i < args.positional.size(); ++i) {
    out[i] = args.positional[i];
    given[i] = true;
  }
  for (const auto& [name, v] : args.keywords) {
    size_t i = 0;
    while (i < params.size() && name != params[i].name) ++i;
    if (i == params.size()) {
      fail(fmt::format("{}() got an unexpected keyword argument '{}'", fn_name, name));
    }
    if (given[i]) fail(fmt::format("{}() got multiple values for argument '{}'", fn_name, name));
    out[i] = v;
    given[i] = true;
  }
  for (size_t i = 0; i < params.size(); ++i) {
    if (given[i]) continue;
    if (params[i].required) {
      fail(fmt::format("{}() missing required argument '{}'", fn_name, params[i].name));
    }
    out[i] = params[i].default_value;
  }
  return out;
}

namespace {

bool is_numeric(const Value& v) {
  return v.kind() == Kind::Int || v.kind() == Kind::Float || v.kind() == Kind::Bool;
}

[[noreturn]] void bad_operands(const std::string& op, const Value& a, const Value& b) {
  fail(fmt::format("unsupported operand type(s) for {}: '{}' and '{}'", op, a.type_name(),
                   b.type_name()));
}

// Integers are 64-bit (Python's are unbounded): a result that does not fit is an error.
[[noreturn]] void int_overflow(const char* op) {
  fail(fmt::format("integer overflow in '{}' (template integers are 64-bit)", op));
}

int64_t checked_add(int64_t a, int64_t b) {
  int64_t r;
  if (__builtin_add_overflow(a, b, &r)) int_overflow("+");
  return r;
}

int64_t checked_sub(int64_t a, int64_t b) {
  int64_t r;
  if (__builtin_sub_overflow(a, b, &r)) int_overflow("-");
  return r;
}

int64_t checked_mul(int64_t a, int64_t b) {
  int64_t r;
  if (__builtin_mul_overflow(a, b, &r)) int_overflow("*");
  return r;
}

// a ** b for b >= 0 by squaring; |a| <= 1 never overflows, any other base within 63 steps.
int64_t checked_pow(int64_t a, int64_t b) {
  if (a == 0 || a == 1) return b == 0 ? 1 : a;
  if (a == -1) return b % 2 == 0 ? 1 : -1;
  int64_t r = 1;
  while (b > 0) {
    if (b & 1) {
      if (__builtin_mul_overflow(r, a, &r)) int_overflow("**");
    }
    b >>= 1;
    if (b > 0 && __builtin_mul_overflow(a, a, &a)) int_overflow("**");
  }
  return r;
}

int64_t floor_div(int64_t a, int64_t b) {
  if (a == std::numeric_limits<int64_t>::min() && b == -1) int_overflow("//");
  int64_t q = a / b;
  if ((a % b != 0) && ((a < 0) != (b < 0))) --q;
  return q;
}

int64_t py_mod(int64_t a, int64_t b) {
  if (b == -1) return 0;  // INT64_MIN % -1 traps on x86
  int64_t r = a % b;
  if (r != 0 && ((r < 0) != (b < 0))) r += b;
  return r;
}

double py_fmod(double a, double b) {
  double r = std::fmod(a, b);
  if (r != 0 && ((r < 0) != (b < 0))) r += b;
  return r;
}

// Largest list (items) that `*` builds, like range()'s limit; strings: kMaxGeneratedBytes.
constexpr int64_t kMaxRepeatItems = 1000000;

Value repeat(const Value& seq, int64_t n) {
  const int64_t unit = seq.is_string() ? static_cast<int64_t>(seq.as_string().size())
                                       : static_cast<int64_t>(seq.as_list().size());
  const int64_t limit =
      seq.is_string() ? static_cast<int64_t>(kMaxGeneratedBytes) : kMaxRepeatItems;
  if (n > 0 && unit > 0 && n > limit / unit) {
    fail(fmt::format("sequence repetition too large ({} x {})", unit, n));
  }
  if (seq.is_string()) {
    std::string out;
    for (int64_t i = 0; i < n; ++i) out += seq.as_string();
    return Value::string(std::move(out));
  }
  List out;
  for (int64_t i = 0; i < n; ++i) out.insert(out.end(), seq.as_list().begin(), seq.as_list().end());
  return Value::list(std::move(out));
}

}  // namespace

bool values_equal(const Value& a, const Value& b) {
  if (is_numeric(a) && is_numeric(b)) {
    if (a.kind() == Kind::Float || b.kind() == Kind::Float) return a.as_double() == b.as_double();
    return a.as_int() == b.as_int();
  }
  if (a.kind() != b.kind()) return false;
  switch (a.kind()) {
    case Kind::Undefined:
    case Kind::None:
      return true;
    case Kind::String:
      return a.as_string() == b.as_string();
    case Kind::List: {
      const auto& x = a.as_list();
      const auto& y = b.as_list();
      if (x.size() != y.size()) return false;
      for (size_t i = 0; i < x.size(); ++i) {
        if (!values_equal(x[i], y[i])) return false;
      }
      return true;
    }
    case Kind::Dict: {
      const auto& x = a.as_dict();
      const auto& y = b.as_dict();
      if (x.size() != y.size()) return false;
      for (const auto& [k, v] : x.items()) {
        const Value* o = y.find(k);
        if (!o || !values_equal(v, *o)) return false;
      }
      return true;
    }
    case Kind::Namespace:
      return &a.as_dict() == &b.as_dict();
    case Kind::Function:
      return &a.as_function() == &b.as_function();
    default:
      return false;
  }
}

int compare_values(const Value& a, const Value& b) {
  if (is_numeric(a) && is_numeric(b)) {
    if (a.kind() == Kind::Float || b.kind() == Kind::Float) {
      const double x = a.as_double(), y = b.as_double();
      return x < y ? -1 : (x > y ? 1 : 0);
    }
    const int64_t x = a.as_int(), y = b.as_int();
    return x < y ? -1 : (x > y ? 1 : 0);
  }
  if (a.is_string() && b.is_string()) {
    const int c = a.as_string().compare(b.as_string());
    return c < 0 ? -1 : (c > 0 ? 1 : 0);
  }
  if (a.is_list() && b.is_list()) {
    const auto& x = a.as_list();
    const auto& y = b.as_list();
    for (size_t i = 0; i < x.size() && i < y.size(); ++i) {
      if (!values_equal(x[i], y[i])) return compare_values(x[i], y[i]);
    }
    return x.size() < y.size() ? -1 : (x.size() > y.size() ? 1 : 0);
  }
  fail(fmt::format("ordering not supported between instances of '{}' and '{}'", a.type_name(),
                   b.type_name()));
}

Value binary_op(const std::string& op, const Value& a, const Value& b) {
  const bool nums = is_numeric(a) && is_numeric(b);
  const bool floats = nums && (a.kind() == Kind::Float || b.kind() == Kind::Float);
  if (op == "+") {
    if (nums) {
      return floats ? Value::number(a.as_double() + b.as_double())
                    : Value::integer(checked_add(a.as_int(), b.as_int()));
    }
    if (a.is_string() && b.is_string()) return Value::string(a.as_string() + b.as_string());
    if (a.is_list() && b.is_list()) {
      List out = a.as_list();
      out.insert(out.end(), b.as_list().begin(), b.as_list().end());
      return Value::list(std::move(out));
    }
  } else if (op == "-") {
    if (nums) {
      return floats ? Value::number(a.as_double() - b.as_double())
                    : Value::integer(checked_sub(a.as_int(), b.as_int()));
    }
  } else if (op == "*") {
    if (nums) {
      return floats ? Value::number(a.as_double() * b.as_double())
                    : Value::integer(checked_mul(a.as_int(), b.as_int()));
    }
    const bool a_int = a.kind() == Kind::Int || a.kind() == Kind::Bool;
    const bool b_int = b.kind() == Kind::Int || b.kind() == Kind::Bool;
    if ((a.is_string() || a.is_list()) && b_int) return repeat(a, b.as_int());
    if ((b.is_string() || b.is_list()) && a_int) return repeat(b, a.as_int());
  } else if (op == "/") {
    if (nums) {
      if (b.as_double() == 0.0) fail("division by zero");
      return Value::number(a.as_double() / b.as_double());
    }
  } else if (op == "//") {
    if (nums) {
      if (b.as_double() == 0.0) fail("integer division or modulo by zero");
      if (floats) return Value::number(std::floor(a.as_double() / b.as_double()));
      return Value::integer(floor_div(a.as_int(), b.as_int()));
    }
  } else if (op == "%") {
    if (nums) {
      if (b.as_double() == 0.0) fail("integer division or modulo by zero");
      if (floats) return Value::number(py_fmod(a.as_double(), b.as_double()));
      return Value::integer(py_mod(a.as_int(), b.as_int()));
    }
    if (a.is_string()) fail("printf-style string formatting with % is not supported");
  } else if (op == "**") {
    if (nums) {
      if (!floats && b.as_int() >= 0) return Value::integer(checked_pow(a.as_int(), b.as_int()));
      return Value::number(std::pow(a.as_double(), b.as_double()));
    }
  }
  bad_operands(op, a, b);
}

bool contains(const Value& container, const Value& item) {
  switch (container.kind()) {
    case Kind::String:
      if (!item.is_string()) {
        fail(
            fmt::format("'in <string>' requires string as left operand, not {}", item.type_name()));
      }
      return container.as_string().find(item.as_string()) != std::string::npos;
    case Kind::List:
      for (const auto& e : container.as_list()) {
        if (values_equal(e, item)) return true;
      }
      return false;
    case Kind::Dict:
      return item.is_string() && container.as_dict().find(item.as_string()) != nullptr;
    case Kind::Undefined:
      return false;
    default:
      fail(fmt::format("argument of type '{}' is not iterable", container.type_name()));
  }
}

List iterate(const Value& v) {
  switch (v.kind()) {
    case Kind::List:
      charge_work(static_cast<int64_t>(v.as_list().size()));
      return v.as_list();
    case Kind::Dict: {
      List out;
      for (const auto& [k, e] : v.as_dict().items()) out.push_back(Value::string(k));
      charge_work(static_cast<int64_t>(out.size()));
      return out;
    }
    case Kind::String: {
      // A value per character: about 8 evaluations' worth each (a byte is at most a character).
      charge_work(8 * static_cast<int64_t>(v.as_string().size()));
      List out;
      for (char32_t c : utf8_decode(v.as_string())) {
        out.push_back(Value::string(utf8_encode(std::u32string(1, c))));
      }
      return out;
    }
    case Kind::Undefined:
      return {};
    default:
      fail(fmt::format("'{}' object is not iterable", v.type_name()));
  }
}

int64_t length(const Value& v) {
  switch (v.kind()) {
    case Kind::String:
      return utf8_length(v.as_string());
    case Kind::List:
      return static_cast<int64_t>(v.as_list().size());
    case Kind::Dict:
      return static_cast<int64_t>(v.as_dict().size());
    case Kind::Undefined:
      return 0;
    default:
      fail(fmt::format("object of type '{}' has no len()", v.type_name()));
  }
}

namespace {

void json_into(std::string& out, const Value& v, int indent, int depth, const std::string& item_sep,
               const std::string& key_sep, bool sort_keys, bool ensure_ascii) {
  auto newline = [&](int d) {
    const size_t pad = static_cast<size_t>(indent) * static_cast<size_t>(d);
    if (out.size() + pad > kMaxGeneratedBytes) fail("tojson output too large");
    out.push_back('\n');
    out.append(pad, ' ');
  };
  switch (v.kind()) {
    case Kind::None:
      out += "null";
      return;
    case Kind::Bool:
      out += v.as_bool() ? "true" : "false";
      return;
    case Kind::Int:
      out += std::to_string(v.as_int());
      return;
    case Kind::Float: {
      const double d = v.as_double();
      if (std::isnan(d)) {
        out += "NaN";
      } else if (std::isinf(d)) {
        out += d < 0 ? "-Infinity" : "Infinity";
      } else {
        out += py_float_repr(d);
      }
      return;
    }
    case Kind::String:
      out += json_quote(v.as_string(), ensure_ascii);
      return;
    case Kind::List: {
      const auto& items = v.as_list();
      if (items.empty()) {
        out += "[]";
        return;
      }
      out.push_back('[');
      for (size_t i = 0; i < items.size(); ++i) {
        if (i > 0) out += item_sep;
        if (indent >= 0) newline(depth + 1);
        json_into(out, items[i], indent, depth + 1, item_sep, key_sep, sort_keys, ensure_ascii);
      }
      if (indent >= 0) newline(depth);
      out.push_back(']');
      return;
    }
    case Kind::Dict: {
      std::vector<const std::pair<std::string, Value>*> entries;
      for (const auto& e : v.as_dict().items()) entries.push_back(&e);
      if (entries.empty()) {
        out += "{}";
        return;
      }
      if (sort_keys) {
        std::stable_sort(entries.begin(), entries.end(),
                         [](const auto* x, const auto* y) { return x->first < y->first; });
      }
      out.push_back('{');
      for (size_t i = 0; i < entries.size(); ++i) {
        if (i > 0) out += item_sep;
        if (indent >= 0) newline(depth + 1);
        out += json_quote(entries[i]->first, ensure_ascii);
        out += key_sep;
        json_into(out, entries[i]->second, indent, depth + 1, item_sep, key_sep, sort_keys,
                  ensure_ascii);
      }
      if (indent >= 0) newline(depth);
      out.push_back('}');
      return;
    }
    default:
      fail(fmt::format("Object of type {} is not JSON serializable", v.type_name()));
  }
}

}  // namespace

std::string to_json(const Value& v, int indent, const std::string& item_sep,
                    const std::string& key_sep, bool sort_keys, bool ensure_ascii) {
  std::string out;
  json_into(out, v, indent, 0, item_sep, key_sep, sort_keys, ensure_ascii);
  return out;
}

}  // namespace dpserve::jinja
