#include "core/cli.h"

#include <cmath>
#include <cstdio>
#include <sstream>

#include "core/error.h"

namespace dnns {

void Flags::add(const std::string& name, const std::string& def, const std::string& help) {
  order_.push_back(name);
  specs_[name] = {def, help, false};
  values_[name] = def;
}

void Flags::add_bool(const std::string& name, const std::string& help) {
  order_.push_back(name);
  specs_[name] = {"", help, true};
  values_[name] = std::string(1, '0');  // (not = "0": GCC 12 warns falsely, PR105329)
}

bool Flags::parse(int argc, char** argv, int first, int max_positional) {
  for (int i = first; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::fputs(help().c_str(), stdout);
      return false;
    }
    if (a.rfind("--", 0) != 0) {
      check(static_cast<int>(positional_.size()) < max_positional,
            program_ + ": unexpected argument '" + a + "' (see --help)");
      positional_.push_back(a);
      continue;
    }
    const std::string body = a.substr(2);
    const size_t eq = body.find('=');
    const bool has_value = eq != std::string::npos;
    const std::string name = has_value ? body.substr(0, eq) : body;
    std::string value = has_value ? body.substr(eq + 1) : std::string();
    auto it = specs_.find(name);
    check(it != specs_.end(), program_ + ": unknown flag --" + name + " (see --help)");
    if (it->second.boolean) {
      check(!has_value || value == "0" || value == "1" || value == "true" || value == "false",
            program_ + ": --" + name + " takes no value");
      values_[name].assign(1, !has_value || value == "1" || value == "true" ? '1' : '0');
    } else {
      if (!has_value) {
        check(i + 1 < argc, program_ + ": --" + name + " needs a value");
        value = argv[++i];
      }
      values_[name] = value;
    }
    given_[name] = true;
  }
  return true;
}

std::string Flags::default_of(const std::string& name) const {
  auto it = specs_.find(name);
  check(it != specs_.end(), program_ + ": undeclared flag --" + name);
  return it->second.boolean ? "0" : it->second.def;
}

std::string Flags::str(const std::string& name) const {
  auto it = values_.find(name);
  check(it != values_.end(), program_ + ": internal: undeclared flag --" + name);
  return it->second;
}

int64_t Flags::integer(const std::string& name) const {
  std::string v = str(name);
  try {
    size_t used = 0;
    long long x = std::stoll(v, &used);
    if (used == v.size()) return x;
  } catch (...) {
  }
  throw Error(program_ + ": --" + name + " expects an integer, got '" + v + "'");
}

double Flags::number(const std::string& name) const {
  std::string v = str(name);
  size_t used = 0;
  double x = 0;
  try {
    x = std::stod(v, &used);
  } catch (...) {
    used = 0;
  }
  if (used == 0 || used != v.size()) throw Error(program_ + ": --" + name + " expects a number, got '" + v + "'");
  // inf and nan parse, but no flag means them: refused here, not hours later in training.
  if (!std::isfinite(x)) throw Error(program_ + ": --" + name + " expects a finite number, got '" + v + "'");
  return x;
}

bool Flags::flag(const std::string& name) const { return str(name) == "1"; }

bool Flags::given(const std::string& name) const { return given_.count(name) > 0; }

void Flags::set_default(const std::string& name, const std::string& value) {
  auto it = specs_.find(name);
  check(it != specs_.end(), program_ + ": internal: undeclared flag --" + name);
  if (given(name)) return;
  if (it->second.boolean) {  // as parse() reads --name=value
    check(value == "0" || value == "1" || value == "true" || value == "false",
          program_ + ": --" + name + " is a switch (0, 1, true or false), got '" + value + "'");
    values_[name].assign(1, value == "1" || value == "true" ? '1' : '0');
    return;
  }
  values_[name] = value;
}

void Flags::set(const std::string& name, const std::string& value) {
  given_.erase(name);
  set_default(name, value);
  given_[name] = true;
}

std::string Flags::help() const {
  std::ostringstream os;
  os << "usage: " << program_ << " [flags]\n" << summary_ << "\n\nflags:\n";
  for (const std::string& n : order_) {
    const Spec& s = specs_.at(n);
    std::string left = "  --" + n + (s.boolean ? "" : " VALUE");
    os << left;
    if (left.size() < 26) os << std::string(26 - left.size(), ' ');
    else os << "\n" << std::string(26, ' ');
    os << s.help;
    if (!s.boolean && !s.def.empty()) os << " (default: " << s.def << ")";
    os << "\n";
  }
  os << "  --help                  show this help\n";
  return os.str();
}

}  // namespace dnns
