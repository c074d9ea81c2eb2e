// JSON, both ways, in one module: a minimal writer for logs, reports and manifests (JSON lines,
// metrics files) and a strict reader for the files we read back (the portfolio manifest, the
// shifter's condition traces, run records).
//
// Reader: strict RFC 8259: one value, no comments, no trailing commas, no NaN; a duplicate key
// in an object is refused (a manifest must not be ambiguous). Errors name the source, the line
// and the column. The typed accessors (`json_field`, `json_int`, ...) take a `where` that says
// which value is read ("manifest.json: variants[2].params"), so a bad file is refused with a
// message that names the entry and the field.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace dnns {

// ---- writing ----------------------------------------------------------------------------

std::string json_escape(const std::string& s);  // with the surrounding quotes

// Builds one JSON object, keys in insertion order: Json().add("epoch", 3).add("acc", 0.91).str()
class Json {
 public:
  Json& add(const std::string& key, const std::string& v);
  Json& add(const std::string& key, const char* v) { return add(key, std::string(v)); }
  Json& add(const std::string& key, double v);
  Json& add(const std::string& key, int64_t v);
  Json& add(const std::string& key, int v) { return add(key, static_cast<int64_t>(v)); }
  Json& add(const std::string& key, bool v);
  Json& add_raw(const std::string& key, const std::string& json);  // an already-encoded value
  Json& add(const std::string& key, const std::vector<double>& v);
  std::string str() const { return "{" + body_ + "}"; }

 private:
  void key(const std::string& k);
  std::string body_;
};

std::string json_number(double v);  // shortest round-trip form; NaN/inf become null
std::string json_strings(const std::vector<std::string>& v);  // ["a","b"]: a JSON array of strings

// ---- reading ----------------------------------------------------------------------------

struct JsonValue {
  enum class Type { Null, Bool, Number, String, Array, Object };
  Type type = Type::Null;
  bool boolean = false;
  double number = 0;
  std::string text;  // String: the unescaped UTF-8 value; Number: the literal as written
  std::vector<JsonValue> items;                            // Array
  struct Member;                                           // {key, value}, defined below
  std::vector<Member> members;                             // Object, in file order

  // The member `key` of an object; nullptr when absent (or when this is not an object).
  const JsonValue* find(const std::string& key) const;
};

// A named struct, not std::pair<std::string, JsonValue>: a pair of the type being defined is
// instantiated too early by clang with libstdc++ (the fuzz build, scripts/fuzz.sh).
struct JsonValue::Member {
  std::string key;
  JsonValue value;
};

const char* json_type_name(JsonValue::Type t);  // "null", "boolean", "number", ...

// Parses `text`; throws Error "<where>: line L, column C: <problem>". Nesting deeper than 200
// levels is refused.
JsonValue parse_json(const std::string& text, const std::string& where);

// Typed access. Each throws Error starting with `where` when the value has another type or is
// out of range.
const JsonValue& json_field(const JsonValue& object, const std::string& key, const std::string& where);
double json_double(const JsonValue& v, const std::string& where);    // a finite number
int64_t json_int(const JsonValue& v, const std::string& where);      // an integer literal within int64
std::string json_string(const JsonValue& v, const std::string& where);
bool json_bool(const JsonValue& v, const std::string& where);
const std::vector<JsonValue>& json_array(const JsonValue& v, const std::string& where);

// Parses one flat JSON object (values: strings, numbers, true/false/null; no nesting) into
// key -> value text (strings unescaped, others as written): run records, hparams.json. Throws
// Error naming `where`.
std::map<std::string, std::string> parse_flat_json(const std::string& json, const std::string& where);

}  // namespace dnns
