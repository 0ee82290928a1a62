// vrwkv: the one error type of the library.
//
// Every failure caused by what a user gave us (a file, a shape, an option) is an
// Error of kind Input; failures while running on good input are kind Runtime.
// The CLI maps Input to exit code 2 and Runtime to 1. The library never aborts
// on user input.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace vrwkv {

class Error : public std::runtime_error {
 public:
  enum class Kind { Input, Runtime };
  Error(Kind kind, const std::string& message) : std::runtime_error(message), kind_(kind) {}
  Kind kind() const { return kind_; }

 private:
  Kind kind_;
};

// Concatenates anything streamable: cat("tensor ", name, " has ", n, " elements").
template <class... Args>
std::string cat(Args&&... args) {
  std::ostringstream s;
  (s << ... << std::forward<Args>(args));
  return s.str();
}

template <class... Args>
[[noreturn]] void input_error(Args&&... args) {
  throw Error(Error::Kind::Input, cat(std::forward<Args>(args)...));
}

template <class... Args>
[[noreturn]] void runtime_error(Args&&... args) {
  throw Error(Error::Kind::Runtime, cat(std::forward<Args>(args)...));
}

}  // namespace vrwkv
