// Atomic file output (ENGINEERING.md "Files and interfaces"): data goes to a
// temporary file in the destination's directory, which replaces the destination
// by rename() only when commit() is called. An interrupted or failed write
// leaves any previous file untouched and no partial file behind.
#pragma once

#include <cstddef>
#include <cstdio>
#include <string>

namespace vrwkv {

class AtomicFile {
 public:
  explicit AtomicFile(std::string path);  // throws Error(Input) if the directory is not writable
  ~AtomicFile();                          // removes the temporary file unless committed
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, std::size_t size);
  void commit();

 private:
  std::string path_, tmp_path_;
  std::FILE* file_ = nullptr;
  bool committed_ = false;
};

}  // namespace vrwkv
