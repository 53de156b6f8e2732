// Recursive-descent parser for the supported Jinja subset (grammar and precedence as in Jinja 3).

#include "dpserve/chat_template/parser.h"

#include <cstdlib>
#include <initializer_list>

#include "dpserve/chat_template/builtins.h"
#include "dpserve/common/errors.h"

namespace dpserve::jinja {

namespace {

class Parser {
 public:
  explicit Parser(const std::vector<Token>& tokens) : t_(tokens) {}

  Program run() {
    Program p;
    p.body = parse_body({}, nullptr, cur());
    return p;
  }

 private:
  const Token& cur() const { return t_[i_]; }
  const Token& peek(size_t n = 1) const { return t_[std::min(i_ + n, t_.size() - 1)]; }
  const Token& next() { return t_[i_ < t_.size() - 1 ? i_++ : i_]; }

  bool is_op(const char* s) const { return cur().type == TokenType::Op && cur().text == s; }
  bool is_name(const char* s) const { return cur().type == TokenType::Name && cur().text == s; }

  [[noreturn]] void error(const Token& at, const std::string& what) const {
    throw_error("chat template syntax error at line {}, column {}: {}", at.line, at.column, what);
  }

  static std::string describe(const Token& t) {
    switch (t.type) {
      case TokenType::Text:
        return "template text";
      case TokenType::VarBegin:
        return "'{{'";
      case TokenType::VarEnd:
        return "'}}'";
      case TokenType::BlockBegin:
        return "'{%'";
      case TokenType::BlockEnd:
        return "'%}'";
      case TokenType::End:
        return "end of template";
      case TokenType::String:
        return "string literal";
      default:
        return "'" + t.text + "'";
    }
  }

  void expect_op(const char* s) {
    if (!is_op(s)) error(cur(), std::string("expected '") + s + "', got " + describe(cur()));
    next();
  }

  std::string expect_name() {
    if (cur().type != TokenType::Name) error(cur(), "expected a name, got " + describe(cur()));
    return next().text;
  }

  void expect_block_end() {
    if (cur().type != TokenType::BlockEnd) error(cur(), "expected '%}', got " + describe(cur()));
    next();
  }

  ExprPtr make(ExprKind kind, const Token& at) {
    auto e = std::make_unique<Expr>();
    e->kind = kind;
    e->line = at.line;
    e->column = at.column;
    return e;
  }

  StmtPtr make_stmt(StmtKind kind, const Token& at) {
    auto s = std::make_unique<Stmt>();
    s->kind = kind;
    s->line = at.line;
    s->column = at.column;
    return s;
  }

  // Statements until a block tag named in `ends`; stores its name in *found, cursor after it.
  Body parse_body(std::initializer_list<const char*> ends, std::string* found,
                  const Token& opener) {
    Body body;
    while (true) {
      const Token& tok = cur();
      switch (tok.type) {
        case TokenType::Text: {
          auto s = make_stmt(StmtKind::Text, tok);
          s->text = tok.text;
          body.push_back(std::move(s));
          next();
          break;
        }
        case TokenType::VarBegin: {
          next();
          auto s = make_stmt(StmtKind::Output, tok);
          s->expr = parse_expression();
          if (cur().type != TokenType::VarEnd)
            error(cur(), "expected '}}', got " + describe(cur()));
          next();
          body.push_back(std::move(s));
          break;
        }
        case TokenType::BlockBegin: {
          next();
          const Token& name_tok = cur();
          const std::string name = expect_name();
          for (const char* e : ends) {
            if (name == e) {
              *found = name;
              return body;
            }
          }
          body.push_back(parse_statement(name, name_tok));
          break;
        }
        case TokenType::End:
          if (ends.size() > 0) {
            error(opener, "tag opened here is never closed (expected {% " +
                              std::string(*(ends.end() - 1)) + " %})");
          }
          return body;
        default:
          error(tok, "unexpected " + describe(tok));
      }
    }
  }

  StmtPtr parse_statement(const std::string& name, const Token& at) {
    if (name == "if") return parse_if(at);
    if (name == "for") return parse_for(at);
    if (name == "set") return parse_set(at);
    if (name == "macro") return parse_macro(at);
    if (name == "filter") return parse_filter_block(at);
    if (name == "generation") {
      // transformers' {% generation %} marks assistant text; it renders its body unchanged.
      expect_block_end();
      auto s = make_stmt(StmtKind::FilterBlock, at);
      std::string found;
      s->body = parse_body({"endgeneration"}, &found, at);
      expect_block_end();
      return s;
    }
    if (name == "break" || name == "continue") {
      if (loop_depth_ == 0) error(at, "'" + name + "' outside of a for loop");
      expect_block_end();
      return make_stmt(name == "break" ? StmtKind::Break : StmtKind::Continue, at);
    }
    if (name.rfind("end", 0) == 0 || name == "elif" || name == "else") {
      error(at, "unexpected '" + name + "' tag");
    }
    error(at, "unsupported template tag '" + name + "'");
  }

  StmtPtr parse_if(const Token& at) {
    auto s = make_stmt(StmtKind::If, at);
    ExprPtr cond = parse_expression();
    expect_block_end();
    while (true) {
      std::string found;
      Body body = parse_body({"elif", "else", "endif"}, &found, at);
      s->branches.emplace_back(std::move(cond), std::move(body));
      if (found == "elif") {
        cond = parse_expression();
        expect_block_end();
        continue;
      }
      if (found == "else") {
        expect_block_end();
        s->else_body = parse_body({"endif"}, &found, at);
      }
      expect_block_end();
      return s;
    }
  }

  std::vector<std::string> parse_target_names() {
    std::vector<std::string> names;
    const bool paren = is_op("(");
    if (paren) next();
    names.push_back(expect_name());
    while (is_op(",")) {
      next();
      if (cur().type != TokenType::Name) break;
      names.push_back(expect_name());
    }
    if (paren) expect_op(")");
    return names;
  }

  StmtPtr parse_for(const Token& at) {
    auto s = make_stmt(StmtKind::For, at);
    s->targets = parse_target_names();
    if (!is_name("in")) error(cur(), "expected 'in' in for loop, got " + describe(cur()));
    next();
    s->expr = parse_tuple(false);
    if (is_name("if")) {
      next();
      s->filter = parse_expression();
    }
    if (is_name("recursive")) error(cur(), "recursive for loops are not supported");
    expect_block_end();
    ++loop_depth_;
    std::string found;
    s->body = parse_body({"else", "endfor"}, &found, at);
    --loop_depth_;
    if (found == "else") {
      expect_block_end();
      s->else_body = parse_body({"endfor"}, &found, at);
    }
    expect_block_end();
    return s;
  }

  StmtPtr parse_set(const Token& at) {
    std::vector<std::string> targets;
    bool attr = false;
    if (cur().type == TokenType::Name && peek().type == TokenType::Op && peek().text == ".") {
      targets.push_back(expect_name());
      next();
      targets.push_back(expect_name());
      attr = true;
    } else {
      targets = parse_target_names();
    }
    if (is_op("=")) {
      next();
      auto s = make_stmt(StmtKind::Set, at);
      s->targets = std::move(targets);
      s->attr_target = attr;
      s->expr = parse_tuple(true);
      expect_block_end();
      return s;
    }
    if (targets.size() != 1 && !attr) error(at, "block set takes a single name");
    auto s = make_stmt(StmtKind::SetBlock, at);
    s->targets = std::move(targets);
    s->attr_target = attr;
    while (is_op("|")) {
      next();
      s->filters.push_back(parse_filter_call(nullptr));
    }
    expect_block_end();
    std::string found;
    s->body = parse_body({"endset"}, &found, at);
    expect_block_end();
    return s;
  }

  StmtPtr parse_macro(const Token& at) {
    auto s = make_stmt(StmtKind::Macro, at);
    s->text = expect_name();
    expect_op("(");
    while (!is_op(")")) {
      std::string pname = expect_name();
      ExprPtr dflt;
      if (is_op("=")) {
        next();
        dflt = parse_expression();
      }
      s->params.emplace_back(std::move(pname), std::move(dflt));
      if (!is_op(")")) expect_op(",");
    }
    next();
    expect_block_end();
    const int saved = loop_depth_;
    loop_depth_ = 0;
    std::string found;
    s->body = parse_body({"endmacro"}, &found, at);
    loop_depth_ = saved;
    if (cur().type == TokenType::Name) next();  // {% endmacro name %}
    expect_block_end();
    return s;
  }

  StmtPtr parse_filter_block(const Token& at) {
    auto s = make_stmt(StmtKind::FilterBlock, at);
    s->filters.push_back(parse_filter_call(nullptr));
    while (is_op("|")) {
      next();
      s->filters.push_back(parse_filter_call(nullptr));
    }
    expect_block_end();
    std::string found;
    s->body = parse_body({"endfilter"}, &found, at);
    expect_block_end();
    return s;
  }

  // ---- expressions ----

  // An expression, or a tuple of them separated by commas (set / for iterables).
  ExprPtr parse_tuple(bool with_condexpr) {
    const Token& at = cur();
    ExprPtr first = with_condexpr ? parse_expression() : parse_or();
    if (!is_op(",")) return first;
    auto t = make(ExprKind::TupleLit, at);
    t->args.push_back(std::move(first));
    while (is_op(",")) {
      next();
      if (cur().type == TokenType::BlockEnd || cur().type == TokenType::VarEnd) break;
      t->args.push_back(with_condexpr ? parse_expression() : parse_or());
    }
    return t;
  }

  ExprPtr parse_expression() {
    const Token& at = cur();
    ExprPtr e = parse_or();
    while (is_name("if")) {
      next();
      auto c = make(ExprKind::Cond, at);
      c->args.push_back(parse_or());
      c->args.push_back(std::move(e));
      if (is_name("else")) {
        next();
        c->args.push_back(parse_expression());
      } else {
        c->args.push_back(nullptr);
      }
      e = std::move(c);
    }
    return e;
  }

  ExprPtr binary(ExprKind kind, const Token& at, ExprPtr l, ExprPtr r, std::string op = "") {
    auto e = make(kind, at);
    e->op = std::move(op);
    e->args.push_back(std::move(l));
    e->args.push_back(std::move(r));
    return e;
  }

  ExprPtr parse_or() {
    ExprPtr e = parse_and();
    while (is_name("or")) {
      const Token& at = next();
      e = binary(ExprKind::Or, at, std::move(e), parse_and());
    }
    return e;
  }

  ExprPtr parse_and() {
    ExprPtr e = parse_not();
    while (is_name("and")) {
      const Token& at = next();
      e = binary(ExprKind::And, at, std::move(e), parse_not());
    }
    return e;
  }

  ExprPtr parse_not() {
    if (is_name("not")) {
      const Token& at = next();
      auto e = make(ExprKind::Unary, at);
      e->op = "not";
      e->object = parse_not();
      return e;
    }
    return parse_compare();
  }

  ExprPtr parse_compare() {
    const Token& at = cur();
    ExprPtr first = parse_math1();
    ExprPtr cmp;
    while (true) {
      std::string op;
      if (cur().type == TokenType::Op &&
          (cur().text == "==" || cur().text == "!=" || cur().text == "<" || cur().text == ">" ||
           cur().text == "<=" || cur().text == ">=")) {
        op = next().text;
      } else if (is_name("in")) {
        next();
        op = "in";
      } else if (is_name("not") && peek().type == TokenType::Name && peek().text == "in") {
        next();
        next();
        op = "notin";
      } else {
        break;
      }
      if (!cmp) {
        cmp = make(ExprKind::Compare, at);
        cmp->args.push_back(std::move(first));
      }
      cmp->ops.push_back(op);
      cmp->args.push_back(parse_math1());
    }
    return cmp ? std::move(cmp) : std::move(first);
  }

  ExprPtr parse_math1() {
    ExprPtr e = parse_concat();
    while (is_op("+") || is_op("-")) {
      const Token& at = next();
      e = binary(ExprKind::Binary, at, std::move(e), parse_concat(), at.text);
    }
    return e;
  }

  ExprPtr parse_concat() {
    ExprPtr e = parse_math2();
    while (is_op("~")) {
      const Token& at = next();
      e = binary(ExprKind::Binary, at, std::move(e), parse_math2(), "~");
    }
    return e;
  }

  ExprPtr parse_math2() {
    ExprPtr e = parse_pow();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      const Token& at = next();
      e = binary(ExprKind::Binary, at, std::move(e), parse_pow(), at.text);
    }
    return e;
  }

  ExprPtr parse_pow() {
    ExprPtr e = parse_unary(true);
    while (is_op("**")) {
      const Token& at = next();
      e = binary(ExprKind::Binary, at, std::move(e), parse_unary(true), "**");
    }
    return e;
  }

  ExprPtr parse_unary(bool with_filter) {
    ExprPtr e;
    if (is_op("-") || is_op("+")) {
      const Token& at = next();
      e = make(ExprKind::Unary, at);
      e->op = at.text;
      e->object = parse_unary(false);
    } else {
      e = parse_primary();
    }
    e = parse_postfix(std::move(e));
    if (with_filter) e = parse_filter_expr(std::move(e));
    return e;
  }

  ExprPtr parse_primary() {
    const Token& tok = cur();
    switch (tok.type) {
      case TokenType::Name: {
        next();
        if (tok.text == "true" || tok.text == "True") return literal(tok, Value::boolean(true));
        if (tok.text == "false" || tok.text == "False") return literal(tok, Value::boolean(false));
        if (tok.text == "none" || tok.text == "None") return literal(tok, Value::none());
        auto e = make(ExprKind::Name, tok);
        e->name = tok.text;
        return e;
      }
      case TokenType::String: {
        std::string s;
        while (cur().type == TokenType::String) s += next().text;  // adjacent literals join
        return literal(tok, Value::string(std::move(s)));
      }
      case TokenType::Int: {
        next();
        errno = 0;
        const long long v = std::strtoll(tok.text.c_str(), nullptr, 10);
        if (errno == ERANGE) error(tok, "integer literal out of range");
        return literal(tok, Value::integer(v));
      }
      case TokenType::Float:
        next();
        return literal(tok, Value::number(std::strtod(tok.text.c_str(), nullptr)));
      case TokenType::Op:
        if (tok.text == "(") return parse_paren();
        if (tok.text == "[") return parse_list();
        if (tok.text == "{") return parse_dict();
        break;
      default:
        break;
    }
    error(tok, "unexpected " + describe(tok) + " in expression");
  }

  ExprPtr literal(const Token& at, Value v) {
    auto e = make(ExprKind::Literal, at);
    e->literal = std::move(v);
    return e;
  }

  ExprPtr parse_paren() {
    const Token& at = next();
    if (is_op(")")) {
      next();
      return make(ExprKind::TupleLit, at);
    }
    ExprPtr e = parse_expression();
    if (is_op(")")) {
      next();
      return e;
    }
    auto t = make(ExprKind::TupleLit, at);
    t->args.push_back(std::move(e));
    while (is_op(",")) {
      next();
      if (is_op(")")) break;
      t->args.push_back(parse_expression());
    }
    expect_op(")");
    return t;
  }

  ExprPtr parse_list() {
    auto e = make(ExprKind::ListLit, next());
    while (!is_op("]")) {
      e->args.push_back(parse_expression());
      if (!is_op("]")) expect_op(",");
    }
    next();
    return e;
  }

  ExprPtr parse_dict() {
    auto e = make(ExprKind::DictLit, next());
    while (!is_op("}")) {
      e->args.push_back(parse_expression());
      expect_op(":");
      e->args.push_back(parse_expression());
      if (!is_op("}")) expect_op(",");
    }
    next();
    return e;
  }

  ExprPtr parse_postfix(ExprPtr e) {
    while (true) {
      if (is_op(".")) {
        const Token& at = next();
        auto a = make(ExprKind::Attr, at);
        if (cur().type == TokenType::Int) {
          // `x.0` is item access with an integer.
          a->kind = ExprKind::Item;
          a->args.push_back(
              literal(cur(), Value::integer(std::strtoll(cur().text.c_str(), nullptr, 10))));
          next();
        } else {
          a->name = expect_name();
        }
        a->object = std::move(e);
        e = std::move(a);
      } else if (is_op("[")) {
        e = parse_subscript(std::move(e));
      } else if (is_op("(")) {
        auto c = make(ExprKind::Call, cur());
        c->object = std::move(e);
        parse_call_args(*c);
        e = std::move(c);
      } else {
        return e;
      }
    }
  }

  ExprPtr parse_subscript(ExprPtr obj) {
    const Token& at = next();  // '['
    ExprPtr start;
    if (!is_op(":")) start = parse_expression();
    if (is_op("]")) {
      next();
      auto e = make(ExprKind::Item, at);
      e->object = std::move(obj);
      e->args.push_back(std::move(start));
      return e;
    }
    if (is_op(",")) error(cur(), "tuple subscripts are not supported");
    expect_op(":");
    auto e = make(ExprKind::Slice, at);
    e->object = std::move(obj);
    e->args.push_back(std::move(start));
    ExprPtr stop, step;
    if (!is_op(":") && !is_op("]")) stop = parse_expression();
    if (is_op(":")) {
      next();
      if (!is_op("]")) step = parse_expression();
    }
    expect_op("]");
    e->args.push_back(std::move(stop));
    e->args.push_back(std::move(step));
    return e;
  }

  // Parses `( positional..., name=value... )` into e.args / e.kwargs.
  void parse_call_args(Expr& e) {
    expect_op("(");
    while (!is_op(")")) {
      if (is_op("*") || is_op("**")) error(cur(), "*args / **kwargs in calls are not supported");
      if (cur().type == TokenType::Name && peek().type == TokenType::Op && peek().text == "=") {
        std::string key = next().text;
        next();
        e.kwargs.emplace_back(std::move(key), parse_expression());
      } else {
        if (!e.kwargs.empty()) error(cur(), "positional argument follows keyword argument");
        e.args.push_back(parse_expression());
      }
      if (!is_op(")")) expect_op(",");
    }
    next();
  }

  // `name` or `name(args)` after a `|`; `input` may be null (filter blocks).
  ExprPtr parse_filter_call(ExprPtr input) {
    const Token& at = cur();
    auto f = make(ExprKind::Filter, at);
    f->name = expect_name();
    if (!find_filter(f->name)) error(at, "unsupported filter '" + f->name + "'");
    f->object = std::move(input);
    if (is_op("(")) parse_call_args(*f);
    return f;
  }

  ExprPtr parse_filter_expr(ExprPtr e) {
    while (true) {
      if (is_op("|")) {
        next();
        e = parse_filter_call(std::move(e));
      } else if (is_name("is")) {
        next();
        const Token& at = cur();
        auto t = make(ExprKind::Test, at);
        if (is_name("not")) {
          next();
          t->negated = true;
        }
        const Token& name_tok = cur();
        t->name = expect_name();
        if (!find_test(t->name)) error(name_tok, "unsupported test '" + t->name + "'");
        t->object = std::move(e);
        if (is_op("(")) {
          parse_call_args(*t);
        } else if ((cur().type == TokenType::Name || cur().type == TokenType::String ||
                    cur().type == TokenType::Int || cur().type == TokenType::Float || is_op("[") ||
                    is_op("{")) &&
                   !is_name("else") && !is_name("or") && !is_name("and") && !is_name("if") &&
                   !is_name("in") && !is_name("not")) {
          t->args.push_back(parse_postfix(parse_primary()));
        }
        e = std::move(t);
      } else if (is_op("(")) {
        auto c = make(ExprKind::Call, cur());
        c->object = std::move(e);
        parse_call_args(*c);
        e = std::move(c);
      } else {
        return e;
      }
    }
  }

  const std::vector<Token>& t_;
  size_t i_ = 0;
  int loop_depth_ = 0;
};

}  // namespace

Program parse(const std::vector<Token>& tokens) { return Parser(tokens).run(); }

}  // namespace dpserve::jinja
