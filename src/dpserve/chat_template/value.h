#pragma once
// Dynamically typed values of the chat template engine (a Jinja subset with Python semantics).

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

namespace dpserve::jinja {

class Value;
class Dict;
struct Args;

// A failure while evaluating; the interpreter adds the template line and column.
class Failure : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Throws Failure with a formatted message.
[[noreturn]] void fail(std::string message);

// Largest string one operation may build (`*`, indent, tojson, join, the output): a runaway
// template fails instead of exhausting memory.
inline constexpr size_t kMaxGeneratedBytes = size_t{1} << 24;

// The work one render may do, in units: one per expression evaluated, one per item iterated (8
// per character of an iterated string), 4 n log n per sort of n items, one per 256 bytes of
// string built, 20 per loop iteration (about a second of rendering in all). The real Qwen3 and
// Llama 3 templates spend under 1,000,000 on a 4000-message conversation of 8 MB (far past any
// context); a runaway one (nested loops over large ranges, a string joined into itself) fails with
// an error instead of holding a server thread for minutes. Fuzz builds use a tighter budget so that
// such inputs end fast under ASan.
#ifdef FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION
inline constexpr int64_t kMaxRenderWork = 200'000;
#else
inline constexpr int64_t kMaxRenderWork = 5'000'000;
#endif

// Charges `units` of work to the render running on this thread (no-op outside a render); fails
// once kMaxRenderWork is spent.
void charge_work(int64_t units);

// The work budget of one render on this thread, from construction to destruction.
class RenderBudget {
 public:
  RenderBudget();
  ~RenderBudget();
  RenderBudget(const RenderBudget&) = delete;
  RenderBudget& operator=(const RenderBudget&) = delete;

 private:
  int64_t saved_;  // the enclosing budget's remaining work (-1: none)
};

// The elements of a list value.
using List = std::vector<Value>;

// A callable value: a built-in function, a bound method or a macro.
struct Function {
  std::string name;                  // shown in error messages
  std::function<Value(Args&)> call;  // the implementation
};

// The dynamic type of a Value.
enum class Kind : uint8_t {
  Undefined,
  None,
  Bool,
  Int,
  Float,
  String,
  List,
  Dict,
  Namespace,
  Function
};

// A template value. Lists and dicts are shared and immutable once built, except namespace objects,
// whose attributes `{% set ns.x = ... %}` assigns.
class Value {
 public:
  // An undefined value.
  Value() = default;
  // Undefined with a description of what was looked up.
  static Value undefined(std::string hint);
  // Python None.
  static Value none();
  // Python bool.
  static Value boolean(bool b);
  // Python int (64-bit).
  static Value integer(int64_t i);
  // Python float.
  static Value number(double d);
  // Python str (UTF-8).
  static Value string(std::string s);
  // Python list.
  static Value list(List items);
  // Python tuple (a list that prints with parentheses).
  static Value tuple(List items);
  // Python dict (string keys, insertion order).
  static Value dict(Dict d);
  // A namespace() object.
  static Value name_space(Dict d);
  // A callable.
  static Value function(std::string name, std::function<Value(Args&)> call);
  // Converts JSON (key order kept) into values.
  static Value from_json(const nlohmann::ordered_json& j);

  // The dynamic type.
  Kind kind() const { return kind_; }
  // True for undefined.
  bool is_undefined() const { return kind_ == Kind::Undefined; }
  // True for None.
  bool is_none() const { return kind_ == Kind::None; }
  // True for str.
  bool is_string() const { return kind_ == Kind::String; }
  // True for int or float (bool excluded).
  bool is_number() const { return kind_ == Kind::Int || kind_ == Kind::Float; }
  // True for list (and tuple).
  bool is_list() const { return kind_ == Kind::List; }
  // True for a tuple.
  bool is_tuple() const { return tuple_; }
  // True for dict (namespace excluded).
  bool is_dict() const { return kind_ == Kind::Dict; }
  // True for callables.
  bool is_function() const { return kind_ == Kind::Function; }

  // The bool (only for Bool).
  bool as_bool() const { return std::get<bool>(data_); }
  // The integer (Int, or Bool as 0/1).
  int64_t as_int() const;
  // The number as double (Int, Float or Bool).
  double as_double() const;
  // The string (only for String).
  const std::string& as_string() const { return std::get<std::string>(data_); }
  // For undefined values: what was looked up (e.g. "'foo' is undefined").
  std::string undefined_hint() const;
  // The list (only for List).
  const List& as_list() const { return *std::get<std::shared_ptr<List>>(data_); }
  // The dict (Dict or Namespace).
  const Dict& as_dict() const { return *std::get<std::shared_ptr<Dict>>(data_); }
  // The namespace's attributes, writable (only for Namespace).
  Dict& namespace_dict() const { return *std::get<std::shared_ptr<Dict>>(data_); }
  // The callable (only for Function).
  const Function& as_function() const { return *std::get<std::shared_ptr<const Function>>(data_); }

  // Python truthiness.
  bool truthy() const;
  // Python str() of the value (undefined prints as "").
  std::string to_str() const;
  // Python repr() of the value.
  std::string repr() const;
  // Python-like type name for error messages ("str", "int", "dict", "undefined", ...).
  std::string type_name() const;

 private:
  Kind kind_ = Kind::Undefined;
  bool tuple_ = false;  // a List built from a tuple literal or a dict item
  std::variant<std::monostate, bool, int64_t, double, std::string, std::shared_ptr<List>,
               std::shared_ptr<Dict>, std::shared_ptr<const Function>>
      data_;
};

// An insertion-ordered dict with string keys.
class Dict {
 public:
  // The value for `key`, or nullptr.
  const Value* find(const std::string& key) const;
  // Inserts or replaces (a replaced key keeps its position).
  void set(const std::string& key, Value v);
  // Number of entries.
  size_t size() const { return items_.size(); }
  // Entries in insertion order.
  const std::vector<std::pair<std::string, Value>>& items() const { return items_; }

 private:
  std::vector<std::pair<std::string, Value>> items_;
  std::unordered_map<std::string, size_t> index_;
};

// Arguments of a call: positional then keyword.
struct Args {
  std::vector<Value> positional;                        // in order
  std::vector<std::pair<std::string, Value>> keywords;  // name=value
};

// One parameter of a built-in: its name and default (undefined default = required).
struct Param {
  const char* name;     // keyword name
  Value default_value;  // used when not passed; Kind::Undefined means required
  bool required = false;
};

// Binds args to params Python-style; fails on extra, unknown, duplicate or missing arguments.
std::vector<Value> bind_args(const Args& args, std::string_view fn_name,
                             const std::vector<Param>& params);

// Python ==.
bool values_equal(const Value& a, const Value& b);
// Python <, > etc.: returns <0, 0, >0; fails on incomparable types.
int compare_values(const Value& a, const Value& b);

// Binary arithmetic: op is one of + - * / // % **.
Value binary_op(const std::string& op, const Value& a, const Value& b);
// `a in b` (substring, list element, dict key).
bool contains(const Value& container, const Value& item);
// Elements iterated by `for` (list items, dict keys, string characters); undefined is empty.
List iterate(const Value& v);
// Python len(); fails on values without length.
int64_t length(const Value& v);

// json.dumps of a value the way transformers' tojson calls it.
std::string to_json(const Value& v, int indent, const std::string& item_sep,
                    const std::string& key_sep, bool sort_keys, bool ensure_ascii);

}  // namespace dpserve::jinja
