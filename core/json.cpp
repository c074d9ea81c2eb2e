#include "core/json.h"

#include <cmath>
#include <cstdio>

namespace dnns {

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

}  // namespace dnns
