// Tree-walking evaluation of statements and expressions with Python/Jinja semantics.

#include "dpserve/chat_template/interpreter.h"

#include <limits>

#include <fmt/format.h>

#include "dpserve/chat_template/builtins.h"
#include "dpserve/common/errors.h"

namespace dpserve::jinja {

const Value* Scope::lookup(const std::string& name) const {
  for (const Scope* s = this; s; s = s->parent.get()) {
    auto it = s->vars.find(name);
    if (it != s->vars.end()) return &it->second;
  }
  return nullptr;
}

namespace {

constexpr int kMaxCallDepth = 200;
// What one loop iteration costs of the render budget beyond the evaluations in its body: its
// scope and `loop` object take about as long as 20 simple evaluations.
constexpr int64_t kLoopIterationWork = 20;

enum class Flow { Normal, Break, Continue };

class Interpreter {
 public:
  explicit Interpreter(std::string* out) : out_(out) {}

  Flow exec_body(const Body& body, const ScopePtr& scope) {
    for (const auto& s : body) {
      const Flow f = exec(*s, scope);
      if (f != Flow::Normal) return f;
    }
    return Flow::Normal;
  }

  // Renders `body` into a string instead of the current output.
  std::string capture(const Body& body, const ScopePtr& scope) {
    std::string buf;
    std::string* saved = out_;
    out_ = &buf;
    try {
      exec_body(body, scope);
    } catch (...) {
      out_ = saved;
      throw;
    }
    out_ = saved;
    return buf;
  }

  Flow exec(const Stmt& s, const ScopePtr& scope) {
    try {
      return exec_inner(s, scope);
    } catch (const Failure& f) {
      throw_error("chat template error at line {}, column {}: {}", s.line, s.column, f.what());
    }
  }

  Value eval(const Expr& e, const ScopePtr& scope) {
    try {
      charge_work(1);
      return eval_inner(e, scope);
    } catch (const Failure& f) {
      throw_error("chat template error at line {}, column {}: {}", e.line, e.column, f.what());
    }
  }

 private:
  // The text rendered so far (or captured by a block) stays within kMaxGeneratedBytes.
  void check_output() const {
    if (out_->size() > kMaxGeneratedBytes) {
      fail(fmt::format("template output too large (more than {} bytes)", kMaxGeneratedBytes));
    }
  }

  Flow exec_inner(const Stmt& s, const ScopePtr& scope) {
    switch (s.kind) {
      case StmtKind::Text:
        out_->append(s.text);
        check_output();
        return Flow::Normal;
      case StmtKind::Output:
        out_->append(eval(*s.expr, scope).to_str());
        check_output();
        return Flow::Normal;
      case StmtKind::If:
        for (const auto& [cond, body] : s.branches) {
          if (eval(*cond, scope).truthy()) return exec_body(body, scope);
        }
        return exec_body(s.else_body, scope);
      case StmtKind::For:
        return exec_for(s, scope);
      case StmtKind::Set: {
        Value v = eval(*s.expr, scope);
        assign(s, scope, std::move(v));
        return Flow::Normal;
      }
      case StmtKind::SetBlock: {
        Value v = Value::string(capture(s.body, scope));
        for (const auto& f : s.filters) v = apply_filter(*f, std::move(v), scope);
        assign(s, scope, std::move(v));
        return Flow::Normal;
      }
      case StmtKind::Macro:
        scope->vars[s.text] = make_macro(s, scope);
        return Flow::Normal;
      case StmtKind::FilterBlock: {
        if (s.filters.empty()) return exec_body(s.body, scope);
        Value v = Value::string(capture(s.body, scope));
        for (const auto& f : s.filters) v = apply_filter(*f, std::move(v), scope);
        out_->append(v.to_str());
        check_output();
        return Flow::Normal;
      }
      case StmtKind::Break:
        return Flow::Break;
      case StmtKind::Continue:
        return Flow::Continue;
    }
    return Flow::Normal;
  }

  static void bind_targets(Scope& scope, const std::vector<std::string>& targets, const Value& v) {
    if (targets.size() == 1) {
      scope.vars[targets[0]] = v;
      return;
    }
    if (!v.is_list() && !v.is_string()) {
      fail(fmt::format("cannot unpack non-sequence {}", v.type_name()));
    }
    const List items = iterate(v);
    if (items.size() != targets.size()) {
      fail(fmt::format("cannot unpack {} values into {} names", items.size(), targets.size()));
    }
    for (size_t i = 0; i < items.size(); ++i) scope.vars[targets[i]] = items[i];
  }

  void assign(const Stmt& s, const ScopePtr& scope, Value v) {
    if (!s.attr_target) {
      bind_targets(*scope, s.targets, v);
      return;
    }
    const Value* ns = scope->lookup(s.targets[0]);
    if (!ns || ns->kind() != Kind::Namespace) {
      fail(fmt::format("cannot assign attribute '{}' on '{}': not a namespace() object",
                       s.targets[1], s.targets[0]));
    }
    ns->namespace_dict().set(s.targets[1], std::move(v));
  }

  Flow exec_for(const Stmt& s, const ScopePtr& scope) {
    const Value seq = eval(*s.expr, scope);
    if (seq.kind() == Kind::None || seq.kind() == Kind::Namespace || seq.is_function() ||
        seq.is_number() || seq.kind() == Kind::Bool) {
      fail(fmt::format("'{}' object is not iterable", seq.type_name()));
    }
    List items = iterate(seq);
    if (s.filter) {
      List kept;
      for (auto& item : items) {
        auto tmp = std::make_shared<Scope>();
        tmp->parent = scope;
        bind_targets(*tmp, s.targets, item);
        if (eval(*s.filter, tmp).truthy()) kept.push_back(std::move(item));
      }
      items = std::move(kept);
    }
    if (items.empty()) return exec_body(s.else_body, scope);
    const auto n = static_cast<int64_t>(items.size());
    for (int64_t i = 0; i < n; ++i) {
      charge_work(kLoopIterationWork);
      auto iter_scope = std::make_shared<Scope>();
      iter_scope->parent = scope;
      bind_targets(*iter_scope, s.targets, items[i]);
      Dict loop;
      loop.set("index", Value::integer(i + 1));
      loop.set("index0", Value::integer(i));
      loop.set("revindex", Value::integer(n - i));
      loop.set("revindex0", Value::integer(n - i - 1));
      loop.set("first", Value::boolean(i == 0));
      loop.set("last", Value::boolean(i == n - 1));
      loop.set("length", Value::integer(n));
      loop.set("depth", Value::integer(1));
      loop.set("depth0", Value::integer(0));
      loop.set("previtem", i > 0 ? items[i - 1] : Value::undefined("there is no previous item"));
      loop.set("nextitem", i + 1 < n ? items[i + 1] : Value::undefined("there is no next item"));
      loop.set("cycle", Value::function("loop.cycle", [i](Args& a) {
                 if (!a.keywords.empty() || a.positional.empty()) {
                   fail("loop.cycle() takes one or more positional arguments");
                 }
                 return a.positional[static_cast<size_t>(i) % a.positional.size()];
               }));
      iter_scope->vars["loop"] = Value::dict(std::move(loop));
      if (exec_body(s.body, iter_scope) == Flow::Break) break;
    }
    return Flow::Normal;
  }

  Value make_macro(const Stmt& s, const ScopePtr& scope) {
    const Stmt* node = &s;
    // The defining scope is held weakly: the macro is stored in it, so a strong pointer would
    // cycle.
    std::weak_ptr<Scope> weak_scope = scope;
    return Value::function(s.text, [this, node, weak_scope](Args& args) {
      ScopePtr scope = weak_scope.lock();
      if (!scope) fail(fmt::format("macro '{}' called after its scope ended", node->text));
      if (args.positional.size() > node->params.size()) {
        fail(fmt::format("macro '{}' takes not more than {} argument(s)", node->text,
                         node->params.size()));
      }
      auto call_scope = std::make_shared<Scope>();
      call_scope->parent = scope;
      std::vector<bool> given(node->params.size(), false);
      for (size_t i = 0; i < args.positional.size(); ++i) {
        call_scope->vars[node->params[i].first] = args.positional[i];
        given[i] = true;
      }
      for (auto& [key, v] : args.keywords) {
        size_t i = 0;
        while (i < node->params.size() && node->params[i].first != key) ++i;
        if (i == node->params.size()) {
          fail(fmt::format("macro '{}' takes no keyword argument '{}'", node->text, key));
        }
        if (given[i]) fail(fmt::format("macro '{}' got multiple values for '{}'", node->text, key));
        call_scope->vars[key] = v;
        given[i] = true;
      }
      for (size_t i = 0; i < node->params.size(); ++i) {
        if (given[i]) continue;
        const auto& [pname, dflt] = node->params[i];
        call_scope->vars[pname] = dflt ? eval(*dflt, call_scope)
                                       : Value::undefined(fmt::format(
                                             "'{}' is undefined (missing macro argument)", pname));
      }
      if (++depth_ > kMaxCallDepth) {
        --depth_;
        fail("maximum macro recursion depth exceeded");
      }
      std::string text;
      try {
        text = capture(node->body, call_scope);
      } catch (...) {
        --depth_;
        throw;
      }
      --depth_;
      return Value::string(std::move(text));
    });
  }

  Args eval_args(const Expr& e, const ScopePtr& scope) {
    Args a;
    for (const auto& arg : e.args) a.positional.push_back(eval(*arg, scope));
    for (const auto& [k, arg] : e.kwargs) a.keywords.emplace_back(k, eval(*arg, scope));
    return a;
  }

  Value apply_filter(const Expr& f, Value input, const ScopePtr& scope) {
    Args a = eval_args(f, scope);
    try {
      return find_filter(f.name)(input, a);
    } catch (const Failure& err) {
      throw_error("chat template error at line {}, column {}: filter '{}': {}", f.line, f.column,
                  f.name, err.what());
    }
  }

  static void require_defined(const Value& v) {
    if (v.is_undefined()) fail(v.undefined_hint());
  }

  Value eval_inner(const Expr& e, const ScopePtr& scope) {
    switch (e.kind) {
      case ExprKind::Literal:
        return e.literal;
      case ExprKind::Name: {
        const Value* v = scope->lookup(e.name);
        return v ? *v : Value::undefined(fmt::format("'{}' is undefined", e.name));
      }
      case ExprKind::ListLit:
      case ExprKind::TupleLit: {
        List items;
        for (const auto& a : e.args) items.push_back(eval(*a, scope));
        return e.kind == ExprKind::TupleLit ? Value::tuple(std::move(items))
                                            : Value::list(std::move(items));
      }
      case ExprKind::DictLit: {
        Dict d;
        for (size_t i = 0; i + 1 < e.args.size(); i += 2) {
          Value k = eval(*e.args[i], scope);
          if (!k.is_string()) fail("only string keys are supported in dict literals");
          d.set(k.as_string(), eval(*e.args[i + 1], scope));
        }
        return Value::dict(std::move(d));
      }
      case ExprKind::Attr: {
        Value obj = eval(*e.object, scope);
        require_defined(obj);
        return get_attribute(obj, e.name);
      }
      case ExprKind::Item: {
        Value obj = eval(*e.object, scope);
        require_defined(obj);
        return get_item(obj, eval(*e.args[0], scope));
      }
      case ExprKind::Slice: {
        Value obj = eval(*e.object, scope);
        require_defined(obj);
        Value parts[3];
        for (int i = 0; i < 3; ++i) {
          if (e.args[i]) parts[i] = eval(*e.args[i], scope);
        }
        return slice_value(obj, parts[0], parts[1], parts[2]);
      }
      case ExprKind::Call: {
        Value callee = eval(*e.object, scope);
        require_defined(callee);
        if (!callee.is_function())
          fail(fmt::format("'{}' object is not callable", callee.type_name()));
        Args a = eval_args(e, scope);
        return callee.as_function().call(a);
      }
      case ExprKind::Filter:
        return apply_filter(e, eval(*e.object, scope), scope);
      case ExprKind::Test: {
        Value v = eval(*e.object, scope);
        Args a = eval_args(e, scope);
        return Value::boolean(find_test(e.name)(v, a) != e.negated);
      }
      case ExprKind::Unary: {
        Value v = eval(*e.object, scope);
        if (e.op == "not") return Value::boolean(!v.truthy());
        require_defined(v);
        if (v.kind() == Kind::Float)
          return Value::number(e.op == "-" ? -v.as_double() : v.as_double());
        if (v.kind() == Kind::Int || v.kind() == Kind::Bool) {
          if (e.op == "-" && v.as_int() == std::numeric_limits<int64_t>::min()) {
            fail("integer overflow in unary - (template integers are 64-bit)");
          }
          return Value::integer(e.op == "-" ? -v.as_int() : v.as_int());
        }
        fail(fmt::format("bad operand type for unary {}: '{}'", e.op, v.type_name()));
      }
      case ExprKind::Binary: {
        Value l = eval(*e.args[0], scope);
        Value r = eval(*e.args[1], scope);
        if (e.op == "~") return Value::string(l.to_str() + r.to_str());
        require_defined(l);
        require_defined(r);
        return binary_op(e.op, l, r);
      }
      case ExprKind::And: {
        Value l = eval(*e.args[0], scope);
        return l.truthy() ? eval(*e.args[1], scope) : l;
      }
      case ExprKind::Or: {
        Value l = eval(*e.args[0], scope);
        return l.truthy() ? l : eval(*e.args[1], scope);
      }
      case ExprKind::Compare: {
        Value left = eval(*e.args[0], scope);
        for (size_t i = 0; i < e.ops.size(); ++i) {
          Value right = eval(*e.args[i + 1], scope);
          const std::string& op = e.ops[i];
          bool ok;
          if (op == "==") {
            ok = values_equal(left, right);
          } else if (op == "!=") {
            ok = !values_equal(left, right);
          } else if (op == "in" || op == "notin") {
            require_defined(left);
            ok = contains(right, left) == (op == "in");
          } else {
            require_defined(left);
            require_defined(right);
            const int c = compare_values(left, right);
            ok = op == "<" ? c < 0 : op == ">" ? c > 0 : op == "<=" ? c <= 0 : c >= 0;
          }
          if (!ok) return Value::boolean(false);
          left = std::move(right);
        }
        return Value::boolean(true);
      }
      case ExprKind::Cond: {
        if (eval(*e.args[0], scope).truthy()) return eval(*e.args[1], scope);
        if (e.args[2]) return eval(*e.args[2], scope);
        return Value::undefined("the condition was false and there is no else");
      }
    }
    fail("unknown expression");
  }

  std::string* out_;
  int depth_ = 0;
};

Value range_fn(Args& a) {
  auto p = bind_args(a, "range", {{"start", Value(), true}, {"stop", Value()}, {"step", Value()}});
  // An undefined variable passed as an argument is refused too (Jinja raises TypeError): below,
  // undefined means "not passed".
  auto check = [](const Value& v) {
    if (v.kind() != Kind::Int) {
      fail(fmt::format("range() arguments must be integers, got {}", v.type_name()));
    }
  };
  for (const auto& v : a.positional) check(v);
  for (const auto& kv : a.keywords) check(kv.second);
  int64_t start = 0, stop, step = 1;
  if (p[1].is_undefined()) {
    stop = p[0].as_int();
  } else {
    start = p[0].as_int();
    stop = p[1].as_int();
    if (!p[2].is_undefined()) step = p[2].as_int();
  }
  if (step == 0) fail("range() step must not be zero");
  List out;
  for (int64_t i = start; step > 0 ? i < stop : i > stop;) {
    if (out.size() >= 1000000) fail("range() too large");
    out.push_back(Value::integer(i));
    if (__builtin_add_overflow(i, step, &i)) break;  // past INT64_MAX / MIN: stop is passed
  }
  return Value::list(std::move(out));
}

Dict kwargs_dict(Args& a, const char* fn) {
  Dict d;
  if (a.positional.size() > 1) fail(fmt::format("{}() takes at most one positional argument", fn));
  if (a.positional.size() == 1) {
    const Value& init = a.positional[0];
    if (!init.is_dict()) fail(fmt::format("{}() positional argument must be a dict", fn));
    for (const auto& [k, v] : init.as_dict().items()) d.set(k, v);
  }
  for (const auto& [k, v] : a.keywords) d.set(k, v);
  return d;
}

}  // namespace

void add_default_globals(Scope& scope) {
  scope.vars["range"] = Value::function("range", range_fn);
  scope.vars["namespace"] = Value::function(
      "namespace", [](Args& a) { return Value::name_space(kwargs_dict(a, "namespace")); });
  scope.vars["dict"] =
      Value::function("dict", [](Args& a) { return Value::dict(kwargs_dict(a, "dict")); });
  scope.vars["raise_exception"] = Value::function("raise_exception", [](Args& a) -> Value {
    auto p = bind_args(a, "raise_exception", {{"message", Value(), true}});
    fail("template raised an exception: " + p[0].to_str());
  });
}

std::string render_program(const Program& program, const ScopePtr& globals) {
  RenderBudget budget;
  std::string out;
  Interpreter interp(&out);
  auto root = std::make_shared<Scope>();
  root->parent = globals;
  interp.exec_body(program.body, root);
  return out;
}

}  // namespace dpserve::jinja
