#pragma once
// Built-in filters, tests, attribute/method lookup and subscripts of the template engine.

#include <string>

#include "dpserve/chat_template/value.h"

namespace dpserve::jinja {

// A filter: `input | name(args)`.
using FilterFn = Value (*)(const Value& input, const Args& args);
// A test: `value is name(args)`.
using TestFn = bool (*)(const Value& value, const Args& args);

// The filter named `name`, or nullptr.
FilterFn find_filter(const std::string& name);
// The test named `name`, or nullptr.
TestFn find_test(const std::string& name);

// `obj.name`: string/dict methods bound to obj, dict keys, namespace attributes; else undefined.
Value get_attribute(const Value& obj, const std::string& name);
// `obj[key]`: list/string index (negative from the end), dict key; else undefined.
Value get_item(const Value& obj, const Value& key);
// `obj[start:stop:step]` of a list or string (undefined bounds are omitted ones).
Value slice_value(const Value& obj, const Value& start, const Value& stop, const Value& step);

}  // namespace dpserve::jinja
