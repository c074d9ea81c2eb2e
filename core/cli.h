// Command-line flags for the apps: long options only (`--name value` or `--name=value`),
// each declared with its default and help text, so `--help` documents every flag and an
// unknown or malformed flag is refused by name.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace dnns {

class Flags {
 public:
  Flags(std::string program, std::string summary) : program_(std::move(program)), summary_(std::move(summary)) {}
  // Declares a flag; `def` is its default as text ("" for none). Boolean flags take no value.
  void add(const std::string& name, const std::string& def, const std::string& help);
  void add_bool(const std::string& name, const std::string& help);
  // Parses argv[first..]; returns false when --help was given (help already printed).
  // Throws Error on an unknown flag, a missing value, or a stray positional argument when
  // `max_positional` is exceeded.
  bool parse(int argc, char** argv, int first = 1, int max_positional = 0);

  std::string str(const std::string& name) const;
  int64_t integer(const std::string& name) const;   // throws naming the flag if not an integer
  double number(const std::string& name) const;     // throws naming the flag if not a number
  bool flag(const std::string& name) const;
  bool given(const std::string& name) const;        // set on the command line (not the default)
  // Replaces a flag's value unless it was given on the command line (e.g. a stored run's
  // setting); a switch takes 0, 1, true or false as on the command line. Throws Error for an
  // undeclared flag or a switch given another value.
  void set_default(const std::string& name, const std::string& value);
  // Sets a flag's value as if given on the command line (a run derived from this one, e.g. one
  // chain of several); a switch takes 0, 1, true or false. Throws Error for an undeclared flag.
  void set(const std::string& name, const std::string& value);
  // The declared default of a flag ("" for a switch, which defaults to off); throws for an
  // undeclared flag.
  std::string default_of(const std::string& name) const;
  const std::vector<std::string>& positional() const { return positional_; }
  std::string help() const;
  // The parsed values, for writing a run's hyper-parameters next to its results.
  const std::map<std::string, std::string>& values() const { return values_; }

 private:
  struct Spec {
    std::string def, help;
    bool boolean = false;
  };
  std::string program_, summary_;
  std::vector<std::string> order_;
  std::map<std::string, Spec> specs_;
  std::map<std::string, std::string> values_;
  std::map<std::string, bool> given_;
  std::vector<std::string> positional_;
};

}  // namespace dnns
