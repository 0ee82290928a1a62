#include "vrwkv/atomic_file.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "vrwkv/error.hpp"

namespace vrwkv {

AtomicFile::AtomicFile(std::string path) : path_(std::move(path)) {
  const std::size_t slash = path_.rfind('/');
  const std::string dir = slash == std::string::npos ? "." : path_.substr(0, slash + 1);
  const std::string base = slash == std::string::npos ? path_ : path_.substr(slash + 1);
  std::string tmpl = (slash == std::string::npos ? "" : dir) + "." + base + ".tmp.XXXXXX";
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  const int fd = mkstemp(buf.data());
  if (fd < 0) input_error(path_, ": cannot create output file (", std::strerror(errno), ")");
  tmp_path_ = buf.data();
  file_ = fdopen(fd, "wb");
  if (!file_) {
    close(fd);
    unlink(tmp_path_.c_str());
    runtime_error(path_, ": cannot open output file (", std::strerror(errno), ")");
  }
}

AtomicFile::~AtomicFile() {
  if (file_) std::fclose(file_);
  if (!committed_) unlink(tmp_path_.c_str());
}

void AtomicFile::write(const void* data, std::size_t size) {
  if (size && std::fwrite(data, 1, size, file_) != size)
    runtime_error(path_, ": write failed (", std::strerror(errno), ")");
}

void AtomicFile::commit() {
  const bool ok = std::fflush(file_) == 0 && fsync(fileno(file_)) == 0;
  const int saved = errno;
  std::fclose(file_);
  file_ = nullptr;
  if (!ok) runtime_error(path_, ": write failed (", std::strerror(saved), ")");
  // mkstemp creates the file 0600; give it the permissions of a normally created file.
  const mode_t mask = umask(0);
  umask(mask);
  chmod(tmp_path_.c_str(), 0666 & ~mask);
  if (std::rename(tmp_path_.c_str(), path_.c_str()) != 0)
    runtime_error(path_, ": cannot move the finished file into place (", std::strerror(errno), ")");
  committed_ = true;
}

}  // namespace vrwkv
