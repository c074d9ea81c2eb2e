// A minimal JSON writer for logs, reports and manifests (JSON lines, metrics files).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace dnns {

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

}  // namespace dnns
