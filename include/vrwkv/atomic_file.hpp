// Safe file output (ENGINEERING.md "Files and interfaces").
//
// A regular file (or a new one) is written to a temporary file beside it,
// which replaces it by rename() only when commit() is called: an interrupted
// or failed write leaves any previous file untouched and no partial file
// behind, and the replaced file keeps its mode (and owner, where permitted).
// A symlink is followed: the temporary file is made beside the real target,
// and the link stays a link. A target that exists and is not a regular file
// (a device such as /dev/null, a FIFO, a socket) is written directly, never
// renamed over. "-" writes to standard output.
//
// The temporary files of the running process are known to
// remove_temporary_files(), which a thread that waits for signals calls
// (vrwkv's program blocks SIGINT/SIGTERM and takes them in such a thread);
// temporaries left by processes that died are removed when the next one
// writes the same file.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

namespace vrwkv {

class AtomicFile {
 public:
  // Throws Error(Input) for a path that cannot be written (a directory, a
  // missing or read-only directory, an empty name).
  explicit AtomicFile(std::string path);
  ~AtomicFile();  // removes the temporary file unless committed
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, std::size_t size);
  // Whether write_at() is possible: false for standard output, devices, FIFOs, sockets.
  bool seekable() const { return !direct_; }
  // Writes at a byte offset of the output (a seekable one), independent of write()'s position.
  void write_at(std::uint64_t offset, const void* data, std::size_t size);
  void commit();

 private:
  std::string path_, target_, tmp_path_;  // as given, the file written in the end, the temporary one
  std::FILE* file_ = nullptr;
  bool direct_ = false;  // stdout, a device, a FIFO, a socket: no temporary file
  int slot_ = -1;        // in the registry of temporary files
  bool committed_ = false;
};

// Checks, before any work, that `path` can be written as an output: not
// empty, not a directory, in an existing writable directory (or "-" when
// `stdout_ok`). Throws Error(Input) naming `option` and the path.
void check_output_path(const std::string& path, const std::string& option, bool stdout_ok = true);

// Throws Error(Input) when `output` is the same file as one of `inputs` (by
// device and inode, so links and other spellings count).
void check_not_an_input(const std::string& output, const std::vector<std::string>& inputs,
                        const std::string& option);

// Removes every temporary file this process has open (from a normal thread,
// not a signal handler: it takes a lock).
void remove_temporary_files();

}  // namespace vrwkv
