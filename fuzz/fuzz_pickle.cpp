// libFuzzer target: raw bytes straight into the restricted unpickler (io/pickle.hpp).
//
// The .pth target reaches the unpickler only through a zip archive, which coverage-guided
// mutation rarely keeps valid; this one fuzzes the opcode interpreter directly. Any input must
// give a Document or Error(Input); the resulting value graph is then walked (iteratively, with
// a visited set, since the memo can build cycles) to check that every id in it is valid.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <span>
#include <vector>

#include "io/pickle.hpp"
#include "vrwkv/error.hpp"

namespace {

void check_ids(const vrwkv::pickle::Document& doc) {
  using vrwkv::pickle::kNoValue;
  using vrwkv::pickle::ValueId;
  std::vector<bool> seen(doc.size(), false);
  std::vector<ValueId> todo{doc.root()};
  const auto visit = [&](ValueId id) {
    if (id == kNoValue) return;
    if (id >= doc.size()) std::abort();
    if (!seen[id]) todo.push_back(id);
  };
  while (!todo.empty()) {
    const ValueId id = todo.back();
    todo.pop_back();
    if (seen[id]) continue;
    seen[id] = true;
    const vrwkv::pickle::Value& v = doc.at(id);
    for (ValueId item : v.items) visit(item);
    visit(v.callable);
    visit(v.args);
    visit(v.state);
    if (v.kind == vrwkv::pickle::Kind::Dict && v.items.size() % 2) std::abort();
  }
  (void)doc.dict_get(doc.root(), "state_dict");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    check_ids(vrwkv::pickle::unpickle(std::span(data, size), "fuzz"));
  } catch (const vrwkv::Error& e) {
    if (e.kind() != vrwkv::Error::Kind::Input) std::abort();
    if (std::strncmp(e.what(), "fuzz: ", 6) != 0 || std::strchr(e.what(), '\n')) std::abort();
  }
  return 0;
}
