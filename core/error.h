// Errors that carry their context: which file, which layer, which shape was expected.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace dnns {

// The one exception type of the project. `what()` is a complete, human-readable sentence:
// "checkpoint runs/x/level_1.dnns: checksum mismatch (file corrupt)".
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& msg) : std::runtime_error(msg) {}
};

std::string shape_str(const std::vector<int64_t>& shape);  // "(128, 3, 32, 32)"

// Throws Error with `msg` when `cond` is false. Use for checks on user input and contracts.
inline void check(bool cond, const std::string& msg) {
  if (!cond) throw Error(msg);
}
inline void check(bool cond, const char* msg) {  // a literal: no string is built unless it fails
  if (!cond) throw Error(msg);
}

// The same with the message built only on failure, for checks on hot paths (every forward,
// every layer construction): check(x == y, [&] { return "expected " + std::to_string(y); }).
template <class MakeMsg, class = decltype(std::string(std::declval<MakeMsg&>()()))>
inline void check(bool cond, MakeMsg&& make_msg) {
  if (!cond) throw Error(make_msg());
}

// Throws "<where>: expected shape (a, b), got (c, d)" when the shapes differ.
void check_shape(const std::vector<int64_t>& got, const std::vector<int64_t>& expected,
                 const std::string& where);

}  // namespace dnns
