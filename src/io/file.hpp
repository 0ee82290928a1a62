// Whole-file reading with errors that name the file.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace vrwkv {

// Throws Error(Input) "PATH: cannot open (No such file or directory)" and the like.
std::vector<std::uint8_t> read_file(const std::string& path);
// At most the first `max_bytes` bytes (fewer if the file is shorter), with the same errors.
std::vector<std::uint8_t> read_file_head(const std::string& path, std::size_t max_bytes);

}  // namespace vrwkv
