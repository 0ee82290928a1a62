#include "vrwkv/atomic_file.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <mutex>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "vrwkv/error.hpp"

namespace vrwkv {

namespace {

// The registry of this process's temporary files: fixed storage, walked
// without allocating by the thread that takes the signals. A slot is free
// (0), being filled (1) or holds a live temporary file (2).
constexpr int kSlots = 64;
constexpr std::size_t kPathMax = 4096;
struct Slot {
  std::atomic<int> state{0};
  char path[kPathMax];
};
Slot g_slots[kSlots];
// Held while a temporary file is created and registered, and while they are removed.
std::mutex g_creating;

int register_temporary(const std::string& path) {
  if (path.size() >= kPathMax) return -1;
  for (int i = 0; i < kSlots; ++i) {
    int expected = 0;
    if (g_slots[i].state.compare_exchange_strong(expected, 1)) {
      std::memcpy(g_slots[i].path, path.c_str(), path.size() + 1);
      g_slots[i].state.store(2);
      return i;
    }
  }
  return -1;  // more than 64 outputs open at once: still removed by the destructor
}

void unregister_temporary(int slot) {
  if (slot >= 0) g_slots[slot].state.store(0);
}

std::string dir_of(const std::string& path) {
  const std::size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

std::string base_of(const std::string& path) {
  const std::size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

// The file a write to `path` ends in: symlinks followed (a dangling link
// names the file to create). Throws Error(Input) for a link loop.
std::string resolve(const std::string& path) {
  std::string p = path;
  for (int hops = 0; hops < 40; ++hops) {
    struct stat st;
    if (lstat(p.c_str(), &st) != 0 || !S_ISLNK(st.st_mode)) return p;
    std::vector<char> buf(kPathMax);
    const ssize_t n = readlink(p.c_str(), buf.data(), buf.size() - 1);
    if (n < 0) input_error(path, ": cannot read the symbolic link (", std::strerror(errno), ")");
    const std::string target(buf.data(), static_cast<std::size_t>(n));
    p = target.starts_with('/') ? target : dir_of(p) + "/" + target;
  }
  input_error(path, ": too many levels of symbolic links");
}

// Temporary files are named .BASE.tmp.PID.XXXXXX; those whose process is gone
// are left over from a crash.
std::string temporary_prefix(const std::string& base) { return "." + base + ".tmp."; }

void remove_stale_temporaries(const std::string& dir, const std::string& base) {
  DIR* d = opendir(dir.c_str());
  if (!d) return;
  const std::string prefix = temporary_prefix(base);
  while (const dirent* e = readdir(d)) {
    const std::string name = e->d_name;
    if (!name.starts_with(prefix)) continue;
    const std::string rest = name.substr(prefix.size());
    const std::size_t dot = rest.find('.');
    if (dot == std::string::npos || dot == 0) continue;
    char* end = nullptr;
    const long pid = std::strtol(rest.c_str(), &end, 10);
    if (end != rest.c_str() + dot || pid <= 0) continue;
    if (kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH) unlink((dir + "/" + name).c_str());
  }
  closedir(d);
}

}  // namespace

void remove_temporary_files() {
  const std::lock_guard<std::mutex> lock(g_creating);  // no file half created
  for (Slot& s : g_slots)
    if (s.state.load() == 2) unlink(s.path);
}

void check_output_path(const std::string& path, const std::string& option, bool stdout_ok) {
  if (path.empty()) input_error(option, ": expected a file name, got an empty one");
  if (path == "-") {
    if (!stdout_ok) input_error(option, ": this output cannot go to standard output ('-'); give a file name");
    return;
  }
  const std::string target = resolve(path);
  struct stat st;
  if (stat(target.c_str(), &st) == 0) {
    if (S_ISDIR(st.st_mode)) input_error(option, ": ", path, " is a directory, expected a file name");
    if (!S_ISREG(st.st_mode)) return;  // a device, FIFO or socket: written directly
  }
  const std::string dir = dir_of(target);
  if (stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
    input_error(option, ": ", path, ": the directory ", dir, " does not exist");
  if (access(dir.c_str(), W_OK | X_OK) != 0)
    input_error(option, ": ", path, ": the directory ", dir, " is not writable");
}

void check_not_an_input(const std::string& output, const std::vector<std::string>& inputs,
                        const std::string& option) {
  struct stat out;
  if (output == "-" || stat(output.c_str(), &out) != 0 || !S_ISREG(out.st_mode)) return;
  for (const std::string& input : inputs) {
    struct stat in;
    if (!input.empty() && stat(input.c_str(), &in) == 0 && in.st_dev == out.st_dev && in.st_ino == out.st_ino)
      input_error(option, ": ", output, " is the input ", input, " (writing it would destroy the input)");
  }
}

AtomicFile::AtomicFile(std::string path) : path_(std::move(path)) {
  check_output_path(path_, "output");
  if (path_ == "-") {
    file_ = stdout, direct_ = true, target_ = path_;
    return;
  }
  target_ = resolve(path_);
  struct stat st;
  if (stat(target_.c_str(), &st) == 0 && !S_ISREG(st.st_mode)) {
    // A device, FIFO or socket: written in place (opening a FIFO waits for its reader).
    const int fd = open(target_.c_str(), O_WRONLY | O_CLOEXEC);
    if (fd < 0 || !(file_ = fdopen(fd, "wb"))) {
      if (fd >= 0) close(fd);
      input_error(path_, ": cannot open for writing (", std::strerror(errno), ")");
    }
    direct_ = true;
    return;
  }
  const std::string dir = dir_of(target_), base = base_of(target_);
  remove_stale_temporaries(dir, base);
  std::string tmpl = dir + "/" + temporary_prefix(base) + std::to_string(getpid()) + ".XXXXXX";
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  // Created and registered at once: remove_temporary_files() sees every temporary file.
  int fd = -1, saved = 0;
  {
    const std::lock_guard<std::mutex> lock(g_creating);
    fd = mkstemp(buf.data());
    saved = errno;
    if (fd >= 0) tmp_path_ = buf.data(), slot_ = register_temporary(tmp_path_);
  }
  if (fd < 0) input_error(path_, ": cannot create output file (", std::strerror(saved), ")");
  file_ = fdopen(fd, "wb");
  if (!file_) {
    close(fd);
    unlink(tmp_path_.c_str());
    unregister_temporary(slot_);
    runtime_error(path_, ": cannot open output file (", std::strerror(errno), ")");
  }
}

AtomicFile::~AtomicFile() {
  if (file_ && file_ != stdout) std::fclose(file_);
  if (!direct_ && !committed_) unlink(tmp_path_.c_str());
  unregister_temporary(slot_);
}

void AtomicFile::write(const void* data, std::size_t size) {
  if (size && std::fwrite(data, 1, size, file_) != size)
    runtime_error(path_, ": write failed (", std::strerror(errno), ")");
}

void AtomicFile::write_at(std::uint64_t offset, const void* data, std::size_t size) {
  if (direct_) runtime_error(path_, ": cannot write at an offset of a stream");
  if (std::fflush(file_) != 0) runtime_error(path_, ": write failed (", std::strerror(errno), ")");
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t n = pwrite(fileno(file_), p, size, static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) runtime_error(path_, ": write failed (", std::strerror(errno), ")");
    p += n, size -= static_cast<std::size_t>(n), offset += static_cast<std::uint64_t>(n);
  }
}

void AtomicFile::commit() {
  if (direct_) {
    const bool ok = std::fflush(file_) == 0 && !std::ferror(file_);
    const int saved = errno;
    if (file_ != stdout) std::fclose(file_);
    file_ = nullptr;
    if (!ok) runtime_error(path_, ": write failed (", std::strerror(saved), ")");
    committed_ = true;
    return;
  }
  const bool ok = std::fflush(file_) == 0 && fsync(fileno(file_)) == 0;
  const int saved = errno;
  // The file replaced keeps its mode and, where permitted, its owner; a new
  // one gets the mode of a normally created file (mkstemp makes it 0600).
  struct stat old;
  if (stat(target_.c_str(), &old) == 0 && S_ISREG(old.st_mode)) {
    // The owner only where permitted (root, or a group of one's own); the mode regardless.
    const int owner_kept = fchown(fileno(file_), old.st_uid, old.st_gid);
    (void)owner_kept;
    fchmod(fileno(file_), old.st_mode & 07777);
  } else {
    const mode_t mask = umask(0);
    umask(mask);
    fchmod(fileno(file_), 0666 & ~mask);
  }
  std::fclose(file_);
  file_ = nullptr;
  if (!ok) runtime_error(path_, ": write failed (", std::strerror(saved), ")");
  if (std::rename(tmp_path_.c_str(), target_.c_str()) != 0)
    runtime_error(path_, ": cannot move the finished file into place (", std::strerror(errno), ")");
  committed_ = true;
  unregister_temporary(slot_);
  slot_ = -1;
}

}  // namespace vrwkv
