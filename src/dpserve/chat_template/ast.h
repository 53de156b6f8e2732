#pragma once
// Syntax tree of a parsed template: expressions and statements with their source positions.

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "dpserve/chat_template/value.h"

namespace dpserve::jinja {

struct Expr;
struct Stmt;
using ExprPtr = std::unique_ptr<Expr>;
using StmtPtr = std::unique_ptr<Stmt>;
using Body = std::vector<StmtPtr>;

// Expression node kinds; which Expr fields each uses is noted.
enum class ExprKind {
  Literal,   // literal
  Name,      // name
  ListLit,   // args: elements
  TupleLit,  // args: elements (evaluates to a list)
  DictLit,   // args: key0, value0, key1, value1, ...
  Attr,      // object, name
  Item,      // object, args[0]: the index
  Slice,     // object, args: start, stop, step (null when omitted)
  Call,      // object: the callee, args, kwargs
  Filter,    // object: the input, name, args, kwargs
  Test,      // object: the tested value, name, args, kwargs, negated
  Unary,     // op ("-", "+", "not"), object
  Binary,    // op (+ - * / // % ** ~), args: left, right
  And,       // args: left, right
  Or,        // args: left, right
  Compare,   // args: operands; ops: the operators between them (== != < > <= >= in notin)
  Cond,      // args: condition, then-value, else-value (null: undefined)
};

// One expression node.
struct Expr {
  ExprKind kind;              // which kind of node
  int line = 0;               // 1-based source line
  int column = 0;             // 1-based source column
  Value literal;              // Literal
  std::string name;           // Name, Attr, Filter, Test
  std::string op;             // Unary, Binary
  ExprPtr object;             // Attr, Item, Slice, Call, Filter, Test, Unary
  std::vector<ExprPtr> args;  // operands / arguments
  std::vector<std::pair<std::string, ExprPtr>> kwargs;  // keyword arguments
  std::vector<std::string> ops;                         // Compare
  bool negated = false;                                 // Test: `is not`
};

// Statement node kinds.
enum class StmtKind { Text, Output, If, For, Set, SetBlock, Macro, FilterBlock, Break, Continue };

// One statement node.
struct Stmt {
  StmtKind kind;                     // which kind of node
  int line = 0;                      // 1-based source line
  int column = 0;                    // 1-based source column
  std::string text;                  // Text: the literal text; Macro: the macro name
  ExprPtr expr;                      // Output, For: iterable, Set: value
  std::vector<std::string> targets;  // For / Set / SetBlock: assigned names; Set ns.x: {ns, x}
  bool attr_target = false;          // Set / SetBlock: targets are {namespace, attribute}
  ExprPtr filter;                    // For: loop filter (`if`), or null
  std::vector<std::pair<ExprPtr, Body>> branches;       // If: (condition, body) for if and elifs
  Body body;                                            // For / SetBlock / Macro / FilterBlock body
  Body else_body;                                       // If / For else
  std::vector<std::pair<std::string, ExprPtr>> params;  // Macro: name and default (may be null)
  std::vector<ExprPtr> filters;  // SetBlock / FilterBlock: Filter nodes with a null object
};

// A parsed template: its top-level statements.
struct Program {
  Body body;  // top-level statements
};

}  // namespace dpserve::jinja
