#include "io/file.hpp"

#include <sys/stat.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>

#include "vrwkv/error.hpp"

namespace vrwkv {

std::vector<std::uint8_t> read_file(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) input_error(path, ": cannot open (", std::strerror(errno), ")");
  if (S_ISDIR(st.st_mode)) input_error(path, ": is a directory, expected a file");
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> f(std::fopen(path.c_str(), "rb"), std::fclose);
  if (!f) input_error(path, ": cannot open (", std::strerror(errno), ")");
  std::vector<std::uint8_t> bytes;
  std::uint8_t chunk[1 << 16];
  std::size_t n;
  while ((n = std::fread(chunk, 1, sizeof chunk, f.get())) > 0) bytes.insert(bytes.end(), chunk, chunk + n);
  if (std::ferror(f.get())) input_error(path, ": read error (", std::strerror(errno), ")");
  return bytes;
}

}  // namespace vrwkv
