// vrwkv: a restricted, non-executing unpickler for PyTorch checkpoints (the data.pkl of a .pth).
//
// It understands the Python pickle opcodes that state dicts are made of (protocols 2 to 5) and
// turns the byte stream into a graph of plain values held in one Document. Globals are checked
// against a short allowlist at the GLOBAL / STACK_GLOBAL opcode; anything else (os.system,
// builtins.eval, ...) is refused there. Nothing is ever called: REDUCE, NEWOBJ and BUILD only
// record (callable, arguments, state) so that the .pth reader can recognise tensor rebuilds.
//
// Hostile input gives Error(Input), never a crash: every length is checked against the bytes
// left, stack / mark / memo underflow are errors, and the number of values and the nesting depth
// are bounded. The interpreter is a loop, and values refer to each other by index, so neither
// reading nor destroying a Document recurses (reference cycles built with the memo are harmless).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "vrwkv/tensor.hpp"

namespace vrwkv::pickle {

using ValueId = std::uint32_t;
inline constexpr ValueId kNoValue = 0xffffffffu;

enum class Kind : std::uint8_t {
  None,
  Bool,
  Int,     // fits in int64
  BigInt,  // a Python int beyond int64: kept opaque, its digits are not needed
  Float,
  String,  // str (or a protocol-2 byte string), raw bytes as stored
  Bytes,
  Tuple,
  List,
  Dict,  // dict or collections.OrderedDict
  Set,
  Global,        // an allowlisted module.name, see Role
  Object,        // the recorded result of REDUCE / NEWOBJ on a Global that is not OrderedDict
  PersistentId,  // BINPERSID: items[0] is the persistent id (for torch, a storage tuple)
};

// What an allowlisted global stands for. Object values carry the role of their callable.
enum class Role : std::uint8_t {
  NotGlobal,
  OrderedDict,
  RebuildTensorV2,   // torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)
  RebuildTensor,     // torch._utils._rebuild_tensor(storage, offset, size, stride)
  RebuildParameter,  // torch._utils._rebuild_parameter(tensor, requires_grad, hooks)
  Storage,           // torch.FloatStorage, ...: `dtype` says which
  TorchDType,        // torch.float32, ...: `dtype` says which
  Inert,             // data-only metadata types (numpy scalars, ...): opaque, never looked into
};

struct Value {
  Kind kind = Kind::None;
  Role role = Role::NotGlobal;  // Global, Object
  DType dtype = DType::F32;     // Global with role Storage or TorchDType
  std::uint32_t depth = 1;      // nesting depth when built (bounded by Limits::max_depth)
  std::int64_t integer = 0;     // Bool (0 or 1), Int
  double number = 0.0;          // Float
  std::string text;             // String, Bytes; Global: "module.name"
  // Tuple, List, Set: the elements. Dict: key0, value0, key1, value1, ... in insertion order.
  // Object: items added by SETITEMS / APPENDS (e.g. a dict subclass). PersistentId: {pid}.
  std::vector<ValueId> items;
  ValueId callable = kNoValue;  // Object: the Global it was made from
  ValueId args = kNoValue;      // Object: the argument tuple
  ValueId state = kNoValue;     // Dict, Object: the argument of BUILD (e.g. OrderedDict._metadata)
};

struct Limits {
  std::size_t max_values = std::size_t{1} << 22;  // a large state dict with optimizer state needs ~1e5
  std::uint32_t max_depth = 1000;
  std::size_t max_marks = 1000;
};

// The unpickled value graph. Ids index into values(); every id inside a Value is valid.
class Document {
 public:
  ValueId root() const { return root_; }
  const Value& at(ValueId id) const;
  std::size_t size() const { return values_.size(); }

  // The value of `key` in a Dict (the last one, as in Python, if a key repeats), or kNoValue.
  ValueId dict_get(ValueId dict, std::string_view key) const;
  bool is_string(ValueId id, std::string_view text) const;

 private:
  friend class Unpickler;
  std::vector<Value> values_;
  ValueId root_ = kNoValue;
};

// Unpickles `bytes`. Errors are Error(Input) whose message starts with "<source>: ".
Document unpickle(std::span<const std::uint8_t> bytes, const std::string& source, const Limits& limits = {});

const char* kind_name(Kind kind);
// Bytes from a file made safe for a one-line message: non-printable bytes escaped, long text cut.
std::string printable(std::string_view text, std::size_t max_chars = 80);
// The pickletools name of an opcode byte ("BINUNICODE"), or nullptr for a byte that is no opcode.
const char* opcode_name(std::uint8_t opcode);

}  // namespace vrwkv::pickle
