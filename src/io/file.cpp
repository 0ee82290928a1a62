#include "io/file.hpp"

#include <sys/stat.h>

#include <cerrno>
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>

#include "vrwkv/error.hpp"

namespace vrwkv {

std::vector<std::uint8_t> read_file(const std::string& path) { return read_file_head(path, SIZE_MAX); }

std::vector<std::uint8_t> read_file_head(const std::string& path, std::size_t max_bytes) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) input_error(path, ": cannot open (", std::strerror(errno), ")");
  if (S_ISDIR(st.st_mode)) input_error(path, ": is a directory, expected a file");
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> f(std::fopen(path.c_str(), "rb"), std::fclose);
  if (!f) input_error(path, ": cannot open (", std::strerror(errno), ")");
  std::vector<std::uint8_t> bytes;
  std::uint8_t chunk[1 << 16];
  std::size_t n;
  while (bytes.size() < max_bytes &&
         (n = std::fread(chunk, 1, std::min(sizeof chunk, max_bytes - bytes.size()), f.get())) > 0)
    bytes.insert(bytes.end(), chunk, chunk + n);
  if (std::ferror(f.get())) input_error(path, ": read error (", std::strerror(errno), ")");
  return bytes;
}

}  // namespace vrwkv
