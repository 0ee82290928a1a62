// Short lists for one-line messages: the first few names, then "and N more".
#pragma once

#include <string>
#include <vector>

namespace vrwkv::cli {

inline std::string list_some(const std::vector<std::string>& names, std::size_t shown = 5) {
  std::string out;
  for (std::size_t i = 0; i < names.size() && i < shown; ++i) out += (i ? ", " : "") + names[i];
  if (names.size() > shown) out += " and " + std::to_string(names.size() - shown) + " more";
  return out;
}

}  // namespace vrwkv::cli
