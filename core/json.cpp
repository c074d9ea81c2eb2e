#include "core/json.h"

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <set>

#include "core/error.h"

namespace dnns {

// ---- writing ----------------------------------------------------------------------------

std::string json_escape(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      case '\r': out += "\\r"; break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  return out + "\"";
}

std::string json_number(double v) {
  if (!std::isfinite(v)) return "null";
  char buf[32];
  for (int prec = 6; prec <= 17; ++prec) {
    std::snprintf(buf, sizeof buf, "%.*g", prec, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  return buf;
}

void Json::key(const std::string& k) {
  if (!body_.empty()) body_ += ", ";
  body_ += json_escape(k) + ": ";
}

Json& Json::add(const std::string& k, const std::string& v) {
  key(k);
  body_ += json_escape(v);
  return *this;
}
Json& Json::add(const std::string& k, double v) {
  key(k);
  body_ += json_number(v);
  return *this;
}
Json& Json::add(const std::string& k, int64_t v) {
  key(k);
  body_ += std::to_string(v);
  return *this;
}
Json& Json::add(const std::string& k, bool v) {
  key(k);
  body_ += v ? "true" : "false";
  return *this;
}
Json& Json::add_raw(const std::string& k, const std::string& json) {
  key(k);
  body_ += json;
  return *this;
}
Json& Json::add(const std::string& k, const std::vector<double>& v) {
  std::string arr = "[";
  for (size_t i = 0; i < v.size(); ++i) arr += (i ? ", " : "") + json_number(v[i]);
  return add_raw(k, arr + "]");
}

// ---- reading ----------------------------------------------------------------------------

const JsonValue* JsonValue::find(const std::string& key) const {
  if (type != Type::Object) return nullptr;
  for (const auto& [k, v] : members)
    if (k == key) return &v;
  return nullptr;
}

const char* json_type_name(JsonValue::Type t) {
  switch (t) {
    case JsonValue::Type::Null: return "null";
    case JsonValue::Type::Bool: return "boolean";
    case JsonValue::Type::Number: return "number";
    case JsonValue::Type::String: return "string";
    case JsonValue::Type::Array: return "array";
    case JsonValue::Type::Object: return "object";
  }
  return "?";
}

namespace {

constexpr int kMaxDepth = 200;

class Parser {
 public:
  Parser(const std::string& s, const std::string& where) : s_(s), where_(where) {}

  JsonValue parse_document() {
    skip_space();
    JsonValue v = value(0);
    skip_space();
    if (pos_ != s_.size()) fail("unexpected text after the JSON value");
    return v;
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    // Line and column of pos_, both counted from 1.
    size_t line = 1, col = 1;
    for (size_t i = 0; i < pos_ && i < s_.size(); ++i) {
      if (s_[i] == '\n') ++line, col = 1;
      else ++col;
    }
    throw Error(where_ + ": line " + std::to_string(line) + ", column " + std::to_string(col) + ": " + what);
  }

  bool at_end() const { return pos_ >= s_.size(); }
  char peek() const { return at_end() ? '\0' : s_[pos_]; }

  void skip_space() {
    while (!at_end() && (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n' || s_[pos_] == '\r')) ++pos_;
  }

  void expect_word(const char* w) {
    for (const char* p = w; *p; ++p, ++pos_)
      if (peek() != *p) fail(std::string("invalid literal (expected '") + w + "')");
  }

  JsonValue value(int depth) {
    if (depth > kMaxDepth) fail("nesting deeper than " + std::to_string(kMaxDepth) + " levels");
    if (at_end()) fail("unexpected end of input (a value was expected)");
    JsonValue v;
    char c = peek();
    if (c == '{') {
      v.type = JsonValue::Type::Object;
      ++pos_;
      skip_space();
      if (peek() == '}') {
        ++pos_;
        return v;
      }
      std::set<std::string> keys;
      for (;;) {
        skip_space();
        if (peek() != '"') fail("expected a string key in the object");
        size_t key_pos = pos_;
        std::string key = string_literal();
        if (!keys.insert(key).second) {
          pos_ = key_pos;
          fail("duplicate key \"" + key + "\"");
        }
        skip_space();
        if (peek() != ':') fail("expected ':' after the key \"" + key + "\"");
        ++pos_;
        skip_space();
        v.members.push_back({std::move(key), value(depth + 1)});
        skip_space();
        if (peek() == ',') {
          ++pos_;
          continue;
        }
        if (peek() == '}') {
          ++pos_;
          return v;
        }
        fail("expected ',' or '}' in the object");
      }
    }
    if (c == '[') {
      v.type = JsonValue::Type::Array;
      ++pos_;
      skip_space();
      if (peek() == ']') {
        ++pos_;
        return v;
      }
      for (;;) {
        skip_space();
        v.items.push_back(value(depth + 1));
        skip_space();
        if (peek() == ',') {
          ++pos_;
          continue;
        }
        if (peek() == ']') {
          ++pos_;
          return v;
        }
        fail("expected ',' or ']' in the array");
      }
    }
    if (c == '"') {
      v.type = JsonValue::Type::String;
      v.text = string_literal();
      return v;
    }
    if (c == 't') {
      expect_word("true");
      v.type = JsonValue::Type::Bool;
      v.boolean = true;
      return v;
    }
    if (c == 'f') {
      expect_word("false");
      v.type = JsonValue::Type::Bool;
      return v;
    }
    if (c == 'n') {
      expect_word("null");
      return v;
    }
    if (c == '-' || (c >= '0' && c <= '9')) return number_literal();
    fail(std::string("unexpected character '") + c + "'");
  }

  // RFC 8259 number grammar: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
  JsonValue number_literal() {
    size_t start = pos_;
    auto digits = [&] {
      size_t d = pos_;
      while (!at_end() && s_[pos_] >= '0' && s_[pos_] <= '9') ++pos_;
      return pos_ - d;
    };
    if (peek() == '-') ++pos_;
    if (peek() == '0') {
      ++pos_;
      if (peek() >= '0' && peek() <= '9') fail("a number must not have leading zeros");
    } else if (digits() == 0) {
      fail("a digit was expected");
    }
    if (peek() == '.') {
      ++pos_;
      if (digits() == 0) fail("a digit was expected after the decimal point");
    }
    if (peek() == 'e' || peek() == 'E') {
      ++pos_;
      if (peek() == '+' || peek() == '-') ++pos_;
      if (digits() == 0) fail("a digit was expected in the exponent");
    }
    JsonValue v;
    v.type = JsonValue::Type::Number;
    v.text = s_.substr(start, pos_ - start);
    v.number = std::strtod(v.text.c_str(), nullptr);
    if (!std::isfinite(v.number)) {
      pos_ = start;
      fail("number " + v.text + " is out of range");
    }
    return v;
  }

  unsigned hex4() {
    unsigned u = 0;
    for (int i = 0; i < 4; ++i, ++pos_) {
      char h = peek();
      u <<= 4;
      if (h >= '0' && h <= '9') u |= unsigned(h - '0');
      else if (h >= 'a' && h <= 'f') u |= unsigned(h - 'a' + 10);
      else if (h >= 'A' && h <= 'F') u |= unsigned(h - 'A' + 10);
      else fail("expected four hex digits after \\u");
    }
    return u;
  }

  static void append_utf8(std::string& out, unsigned cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }

  std::string string_literal() {
    ++pos_;  // the opening quote
    std::string out;
    for (;;) {
      if (at_end()) fail("unterminated string");
      unsigned char c = static_cast<unsigned char>(s_[pos_]);
      if (c == '"') {
        ++pos_;
        return out;
      }
      if (c < 0x20) fail("control character inside a string (escape it)");
      if (c != '\\') {
        out += static_cast<char>(c);
        ++pos_;
        continue;
      }
      ++pos_;
      char e = peek();
      ++pos_;
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          unsigned cp = hex4();
          if (cp >= 0xD800 && cp <= 0xDBFF) {  // a high surrogate: its low half must follow
            if (peek() != '\\' || pos_ + 1 >= s_.size() || s_[pos_ + 1] != 'u') fail("unpaired UTF-16 surrogate");
            pos_ += 2;
            unsigned lo = hex4();
            if (lo < 0xDC00 || lo > 0xDFFF) fail("unpaired UTF-16 surrogate");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
            fail("unpaired UTF-16 surrogate");
          }
          append_utf8(out, cp);
          break;
        }
        default:
          --pos_;
          fail(std::string("invalid escape '\\") + e + "'");
      }
    }
  }

  const std::string& s_;
  const std::string& where_;
  size_t pos_ = 0;
};

[[noreturn]] void wrong_type(const JsonValue& v, const char* wanted, const std::string& where) {
  throw Error(where + ": expected " + wanted + ", got " + json_type_name(v.type) +
              (v.type == JsonValue::Type::Number || v.type == JsonValue::Type::String ? " '" + v.text + "'" : ""));
}

}  // namespace

JsonValue parse_json(const std::string& text, const std::string& where) { return Parser(text, where).parse_document(); }

const JsonValue& json_field(const JsonValue& object, const std::string& key, const std::string& where) {
  if (object.type != JsonValue::Type::Object) wrong_type(object, "an object", where);
  const JsonValue* v = object.find(key);
  check(v != nullptr, where + ": missing field '" + key + "'");
  return *v;
}

double json_double(const JsonValue& v, const std::string& where) {
  if (v.type != JsonValue::Type::Number) wrong_type(v, "a number", where);
  return v.number;
}

int64_t json_int(const JsonValue& v, const std::string& where) {
  if (v.type != JsonValue::Type::Number) wrong_type(v, "an integer", where);
  check(v.text.find_first_of(".eE") == std::string::npos, where + ": expected an integer, got " + v.text);
  errno = 0;
  char* end = nullptr;
  long long x = std::strtoll(v.text.c_str(), &end, 10);
  check(errno == 0 && end && *end == '\0', where + ": integer " + v.text + " is out of range");
  return static_cast<int64_t>(x);
}

std::string json_string(const JsonValue& v, const std::string& where) {
  if (v.type != JsonValue::Type::String) wrong_type(v, "a string", where);
  return v.text;
}

bool json_bool(const JsonValue& v, const std::string& where) {
  if (v.type != JsonValue::Type::Bool) wrong_type(v, "true or false", where);
  return v.boolean;
}

const std::vector<JsonValue>& json_array(const JsonValue& v, const std::string& where) {
  if (v.type != JsonValue::Type::Array) wrong_type(v, "an array", where);
  return v.items;
}

std::string json_strings(const std::vector<std::string>& v) {
  std::string out = "[";
  for (size_t i = 0; i < v.size(); ++i) {
    if (i) out += ',';
    out += json_escape(v[i]);
  }
  out += ']';
  return out;
}

std::map<std::string, std::string> parse_flat_json(const std::string& json, const std::string& where) {
  JsonValue v;
  try {
    v = parse_json(json, where);
  } catch (const Error& e) {
    throw Error(where + ": malformed JSON (" + e.what() + ")");
  }
  check(v.type == JsonValue::Type::Object, where + ": malformed JSON: expected an object");
  std::map<std::string, std::string> out;
  for (const auto& [key, value] : v.members) {
    switch (value.type) {
      case JsonValue::Type::String:
      case JsonValue::Type::Number: out[key] = value.text; break;  // unescaped text / literal as written
      case JsonValue::Type::Bool: out[key] = value.boolean ? "true" : "false"; break;
      case JsonValue::Type::Null: out[key] = "null"; break;
      default: throw Error(where + ": key '" + key + "' holds a nested " + json_type_name(value.type) + " (flat object expected)");
    }
  }
  return out;
}

}  // namespace dnns
