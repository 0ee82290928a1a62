// vrwkv: the restricted unpickler of pickle.hpp.
//
// Opcode semantics follow CPython's pickle machine (Lib/pickletools.py documents each opcode):
// a value stack, a stack of marks that fence it, and a memo. Unlike CPython, a call (REDUCE,
// NEWOBJ) never runs: it becomes an Object value that remembers the callable and its arguments.
#include "io/pickle.hpp"

#include <algorithm>
#include <array>
#include <bit>
#include <cstdio>
#include <cstring>
#include <unordered_map>

#include "vrwkv/error.hpp"

namespace vrwkv::pickle {

namespace {

struct AllowedGlobal {
  std::string_view module;
  std::string_view name;
  Role role;
  DType dtype = DType::F32;
};

// Everything a state dict is made of, plus a few data-only types that training frameworks put in
// their metadata. These are recorded, never called, and the .pth reader never looks into them.
constexpr AllowedGlobal kAllowedGlobals[] = {
    {"collections", "OrderedDict", Role::OrderedDict},
    {"torch._utils", "_rebuild_tensor_v2", Role::RebuildTensorV2},
    {"torch._utils", "_rebuild_tensor", Role::RebuildTensor},
    {"torch._utils", "_rebuild_parameter", Role::RebuildParameter},
    {"torch", "FloatStorage", Role::Storage, DType::F32},
    {"torch", "DoubleStorage", Role::Storage, DType::F64},
    {"torch", "HalfStorage", Role::Storage, DType::F16},
    {"torch", "BFloat16Storage", Role::Storage, DType::BF16},
    {"torch", "LongStorage", Role::Storage, DType::I64},
    {"torch", "IntStorage", Role::Storage, DType::I32},
    {"torch", "ShortStorage", Role::Storage, DType::I16},
    {"torch", "CharStorage", Role::Storage, DType::I8},
    {"torch", "ByteStorage", Role::Storage, DType::U8},
    {"torch", "BoolStorage", Role::Storage, DType::Bool},
    {"torch", "float32", Role::TorchDType, DType::F32},
    {"torch", "float", Role::TorchDType, DType::F32},
    {"torch", "float64", Role::TorchDType, DType::F64},
    {"torch", "double", Role::TorchDType, DType::F64},
    {"torch", "float16", Role::TorchDType, DType::F16},
    {"torch", "half", Role::TorchDType, DType::F16},
    {"torch", "bfloat16", Role::TorchDType, DType::BF16},
    {"torch", "int64", Role::TorchDType, DType::I64},
    {"torch", "long", Role::TorchDType, DType::I64},
    {"torch", "int32", Role::TorchDType, DType::I32},
    {"torch", "int", Role::TorchDType, DType::I32},
    {"torch", "int16", Role::TorchDType, DType::I16},
    {"torch", "short", Role::TorchDType, DType::I16},
    {"torch", "int8", Role::TorchDType, DType::I8},
    {"torch", "uint8", Role::TorchDType, DType::U8},
    {"torch", "bool", Role::TorchDType, DType::Bool},
    {"numpy.core.multiarray", "scalar", Role::Inert},
    {"numpy._core.multiarray", "scalar", Role::Inert},
    {"numpy.core.multiarray", "_reconstruct", Role::Inert},
    {"numpy._core.multiarray", "_reconstruct", Role::Inert},
    {"numpy", "ndarray", Role::Inert},
    {"numpy", "dtype", Role::Inert},
    {"_codecs", "encode", Role::Inert},
    {"argparse", "Namespace", Role::Inert},  // DeiT-style 'args' entries
    {"yacs.config", "CfgNode", Role::Inert},  // InternImage's 'config' entry
};

const AllowedGlobal* find_allowed(std::string_view module, std::string_view name) {
  for (const AllowedGlobal& g : kAllowedGlobals)
    if (g.module == module && g.name == name) return &g;
  return nullptr;
}

}  // namespace

std::string printable(std::string_view text, std::size_t max_chars) {
  std::string out;
  for (std::size_t i = 0; i < text.size() && i < max_chars; ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out += static_cast<char>(c);
    } else {
      static const char kHex[] = "0123456789abcdef";
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  if (text.size() > max_chars) out += "...";
  return out;
}

namespace {

enum Op : std::uint8_t {
  MARK = 0x28, EMPTY_TUPLE = 0x29, STOP = 0x2e, POP = 0x30, POP_MARK = 0x31, DUP = 0x32,
  BINBYTES = 0x42, SHORT_BINBYTES = 0x43, FLOAT = 0x46, BINFLOAT = 0x47, INT = 0x49, BININT = 0x4a,
  BININT1 = 0x4b, LONG = 0x4c, BININT2 = 0x4d, NONE = 0x4e, PERSID = 0x50, BINPERSID = 0x51,
  REDUCE = 0x52, STRING = 0x53, BINSTRING = 0x54, SHORT_BINSTRING = 0x55, UNICODE = 0x56,
  BINUNICODE = 0x58, EMPTY_LIST = 0x5d, APPEND = 0x61, BUILD = 0x62, GLOBAL = 0x63, DICT = 0x64,
  APPENDS = 0x65, GET = 0x67, BINGET = 0x68, INST = 0x69, LONG_BINGET = 0x6a, LIST = 0x6c, OBJ = 0x6f,
  PUT = 0x70, BINPUT = 0x71, LONG_BINPUT = 0x72, SETITEM = 0x73, TUPLE = 0x74, SETITEMS = 0x75,
  EMPTY_DICT = 0x7d, PROTO = 0x80, NEWOBJ = 0x81, EXT1 = 0x82, EXT2 = 0x83, EXT4 = 0x84, TUPLE1 = 0x85,
  TUPLE2 = 0x86, TUPLE3 = 0x87, NEWTRUE = 0x88, NEWFALSE = 0x89, LONG1 = 0x8a, LONG4 = 0x8b,
  SHORT_BINUNICODE = 0x8c, BINUNICODE8 = 0x8d, BINBYTES8 = 0x8e, EMPTY_SET = 0x8f, ADDITEMS = 0x90,
  FROZENSET = 0x91, NEWOBJ_EX = 0x92, STACK_GLOBAL = 0x93, MEMOIZE = 0x94, FRAME = 0x95,
  BYTEARRAY8 = 0x96, NEXT_BUFFER = 0x97, READONLY_BUFFER = 0x98,
};

struct OpcodeName {
  std::uint8_t code;
  const char* name;
};

constexpr OpcodeName kOpcodeNames[] = {
    {MARK, "MARK"}, {EMPTY_TUPLE, "EMPTY_TUPLE"}, {STOP, "STOP"}, {POP, "POP"}, {POP_MARK, "POP_MARK"},
    {DUP, "DUP"}, {BINBYTES, "BINBYTES"}, {SHORT_BINBYTES, "SHORT_BINBYTES"}, {FLOAT, "FLOAT"},
    {BINFLOAT, "BINFLOAT"}, {INT, "INT"}, {BININT, "BININT"}, {BININT1, "BININT1"}, {LONG, "LONG"},
    {BININT2, "BININT2"}, {NONE, "NONE"}, {PERSID, "PERSID"}, {BINPERSID, "BINPERSID"},
    {REDUCE, "REDUCE"}, {STRING, "STRING"}, {BINSTRING, "BINSTRING"}, {SHORT_BINSTRING, "SHORT_BINSTRING"},
    {UNICODE, "UNICODE"}, {BINUNICODE, "BINUNICODE"}, {EMPTY_LIST, "EMPTY_LIST"}, {APPEND, "APPEND"},
    {BUILD, "BUILD"}, {GLOBAL, "GLOBAL"}, {DICT, "DICT"}, {APPENDS, "APPENDS"}, {GET, "GET"},
    {BINGET, "BINGET"}, {INST, "INST"}, {LONG_BINGET, "LONG_BINGET"}, {LIST, "LIST"}, {OBJ, "OBJ"},
    {PUT, "PUT"}, {BINPUT, "BINPUT"}, {LONG_BINPUT, "LONG_BINPUT"}, {SETITEM, "SETITEM"}, {TUPLE, "TUPLE"},
    {SETITEMS, "SETITEMS"}, {EMPTY_DICT, "EMPTY_DICT"}, {PROTO, "PROTO"}, {NEWOBJ, "NEWOBJ"},
    {EXT1, "EXT1"}, {EXT2, "EXT2"}, {EXT4, "EXT4"}, {TUPLE1, "TUPLE1"}, {TUPLE2, "TUPLE2"},
    {TUPLE3, "TUPLE3"}, {NEWTRUE, "NEWTRUE"}, {NEWFALSE, "NEWFALSE"}, {LONG1, "LONG1"}, {LONG4, "LONG4"},
    {SHORT_BINUNICODE, "SHORT_BINUNICODE"}, {BINUNICODE8, "BINUNICODE8"}, {BINBYTES8, "BINBYTES8"},
    {EMPTY_SET, "EMPTY_SET"}, {ADDITEMS, "ADDITEMS"}, {FROZENSET, "FROZENSET"}, {NEWOBJ_EX, "NEWOBJ_EX"},
    {STACK_GLOBAL, "STACK_GLOBAL"}, {MEMOIZE, "MEMOIZE"}, {FRAME, "FRAME"}, {BYTEARRAY8, "BYTEARRAY8"},
    {NEXT_BUFFER, "NEXT_BUFFER"}, {READONLY_BUFFER, "READONLY_BUFFER"},
};

// A Python int stored as little-endian two's complement (LONG1 / LONG4).
Value make_long(std::string_view bytes) {
  Value v;
  v.kind = Kind::Int;
  if (bytes.empty()) return v;
  const auto byte = [&](std::size_t i) { return static_cast<std::uint8_t>(bytes[i]); };
  const bool negative = (byte(bytes.size() - 1) & 0x80) != 0;
  const std::uint8_t fill = negative ? 0xff : 0x00;
  // Drop sign-extension bytes so that e.g. a 9-byte encoding of 2**63-1 still fits.
  std::size_t n = bytes.size();
  while (n > 1 && byte(n - 1) == fill && ((byte(n - 2) & 0x80) == (fill & 0x80))) --n;
  if (n > 8) {
    v.kind = Kind::BigInt;
    return v;
  }
  std::uint64_t u = 0;
  for (std::size_t i = 0; i < n; ++i) u |= std::uint64_t{byte(i)} << (8 * i);
  if (negative && n < 8) u |= ~std::uint64_t{0} << (8 * n);
  v.integer = static_cast<std::int64_t>(u);
  return v;
}

}  // namespace

const char* opcode_name(std::uint8_t opcode) {
  for (const OpcodeName& o : kOpcodeNames)
    if (o.code == opcode) return o.name;
  return nullptr;
}

const char* kind_name(Kind kind) {
  switch (kind) {
    case Kind::None: return "None";
    case Kind::Bool: return "bool";
    case Kind::Int: return "int";
    case Kind::BigInt: return "int";
    case Kind::Float: return "float";
    case Kind::String: return "str";
    case Kind::Bytes: return "bytes";
    case Kind::Tuple: return "tuple";
    case Kind::List: return "list";
    case Kind::Dict: return "dict";
    case Kind::Set: return "set";
    case Kind::Global: return "global";
    case Kind::Object: return "object";
    case Kind::PersistentId: return "persistent id";
  }
  return "?";
}

const Value& Document::at(ValueId id) const {
  if (id >= values_.size()) runtime_error("pickle document: value id ", id, " out of range");
  return values_[id];
}

ValueId Document::dict_get(ValueId dict, std::string_view key) const {
  const Value& d = at(dict);
  if (d.kind != Kind::Dict) return kNoValue;
  for (std::size_t i = d.items.size(); i >= 2; i -= 2)
    if (is_string(d.items[i - 2], key)) return d.items[i - 1];
  return kNoValue;
}

bool Document::is_string(ValueId id, std::string_view text) const {
  const Value& v = at(id);
  return v.kind == Kind::String && v.text == text;
}

class Unpickler {
 public:
  Unpickler(std::span<const std::uint8_t> in, const std::string& source, const Limits& limits)
      : in_(in), source_(source), limits_(limits) {}

  Document run() {
    while (pos_ < in_.size()) {
      op_pos_ = pos_;
      op_ = in_[pos_++];
      if (!step()) return finish();
    }
    op_pos_ = pos_;
    op_ = 0;
    fail("the data ends without a STOP opcode (truncated?)");
  }

 private:
  template <class... Args>
  [[noreturn]] void fail(Args&&... args) const {
    const char* name = op_ ? opcode_name(op_) : nullptr;
    input_error(source_, ": invalid pickle at byte ", op_pos_, name ? " (" : "", name ? name : "",
                name ? ")" : "", ": ", std::forward<Args>(args)...);
  }

  // ---- reading the input ----
  std::size_t remaining() const { return in_.size() - pos_; }

  std::string_view read_bytes(std::uint64_t n) {
    if (n > remaining()) fail("needs ", n, " bytes but only ", remaining(), " remain (truncated?)");
    std::string_view out(reinterpret_cast<const char*>(in_.data() + pos_), static_cast<std::size_t>(n));
    pos_ += static_cast<std::size_t>(n);
    return out;
  }

  std::uint64_t read_le(int nbytes) {
    const std::string_view b = read_bytes(static_cast<std::uint64_t>(nbytes));
    std::uint64_t u = 0;
    for (int i = 0; i < nbytes; ++i) u |= std::uint64_t{static_cast<std::uint8_t>(b[i])} << (8 * i);
    return u;
  }

  // A signed 4-byte length (BINSTRING, LONG4): negative is malformed.
  std::uint64_t read_signed_length() {
    const auto n = static_cast<std::int32_t>(static_cast<std::uint32_t>(read_le(4)));
    if (n < 0) fail("negative length ", n);
    return static_cast<std::uint64_t>(n);
  }

  std::string_view read_line() {
    const auto* begin = in_.data() + pos_;
    const auto* end = static_cast<const std::uint8_t*>(std::memchr(begin, '\n', remaining()));
    if (!end) fail("a text argument has no terminating newline (truncated?)");
    const std::string_view line(reinterpret_cast<const char*>(begin), static_cast<std::size_t>(end - begin));
    pos_ += line.size() + 1;
    return line;
  }

  // ---- values ----
  ValueId add(Value v) {
    // Ids are 32-bit; kNoValue itself is reserved.
    const std::size_t max_values = std::min<std::size_t>(limits_.max_values, kNoValue);
    if (values_.size() >= max_values) fail("more than ", max_values, " values");
    if (v.depth > limits_.max_depth) fail("values nested deeper than ", limits_.max_depth, " levels");
    values_.push_back(std::move(v));
    return static_cast<ValueId>(values_.size() - 1);
  }

  ValueId add_scalar(Kind kind, std::int64_t integer = 0) {
    Value v;
    v.kind = kind;
    v.integer = integer;
    return add(std::move(v));
  }

  ValueId add_text(Kind kind, std::string_view text) {
    Value v;
    v.kind = kind;
    v.text = std::string(text);
    return add(std::move(v));
  }

  std::uint32_t depth_over(const std::vector<ValueId>& items) const {
    std::uint32_t d = 0;
    for (ValueId id : items) d = std::max(d, values_[id].depth);
    return d + 1;
  }

  ValueId add_container(Kind kind, std::vector<ValueId> items) {
    Value v;
    v.kind = kind;
    v.depth = depth_over(items);
    v.items = std::move(items);
    return add(std::move(v));
  }

  // Grows a container in place (APPEND, SETITEMS, ...); its depth follows what it now holds.
  void extend(ValueId target, const std::vector<ValueId>& items) {
    const std::uint32_t depth = std::max(values_[target].depth, depth_over(items));
    if (depth > limits_.max_depth) fail("values nested deeper than ", limits_.max_depth, " levels");
    Value& t = values_[target];
    t.depth = depth;
    t.items.insert(t.items.end(), items.begin(), items.end());
  }

  // ---- the stack ----
  std::size_t fence() const { return marks_.empty() ? 0 : marks_.back(); }

  void push(ValueId id) { stack_.push_back(id); }

  ValueId top() const {
    if (stack_.size() <= fence()) fail("stack underflow");
    return stack_.back();
  }

  ValueId pop() {
    const ValueId id = top();
    stack_.pop_back();
    return id;
  }

  std::vector<ValueId> pop_to_mark() {
    if (marks_.empty()) fail("no MARK to collect items from");
    const std::size_t mark = marks_.back();
    marks_.pop_back();
    std::vector<ValueId> items(stack_.begin() + static_cast<std::ptrdiff_t>(mark), stack_.end());
    stack_.resize(mark);
    return items;
  }

  std::vector<ValueId> pop_n(std::size_t n) {
    if (stack_.size() < fence() + n) fail("stack underflow");
    std::vector<ValueId> items(stack_.end() - static_cast<std::ptrdiff_t>(n), stack_.end());
    stack_.resize(stack_.size() - n);
    return items;
  }

  // Target of APPEND(S) / SETITEM(S) / ADDITEMS / BUILD: the value below the items just popped.
  ValueId target(std::initializer_list<Kind> kinds) {
    const ValueId id = top();
    const Kind k = values_[id].kind;
    if (std::find(kinds.begin(), kinds.end(), k) == kinds.end())
      fail("cannot add items to a ", kind_name(k));
    return id;
  }

  // ---- memo ----
  void memo_put(std::uint64_t index) { memo_[index] = top(); }

  ValueId memo_get(std::uint64_t index) const {
    const auto it = memo_.find(index);
    if (it == memo_.end()) fail("memo index ", index, " is not defined");
    return it->second;
  }

  // ---- globals and calls ----
  ValueId global(std::string_view module, std::string_view name) {
    const AllowedGlobal* g = find_allowed(module, name);
    if (!g)
      input_error(source_, ": refusing to load: the pickle references ", printable(module), ".", printable(name),
                  ", which is not part of a state dict");
    Value v;
    v.kind = Kind::Global;
    v.role = g->role;
    v.dtype = g->dtype;
    v.text = std::string(module) + "." + std::string(name);
    return add(std::move(v));
  }

  ValueId call(ValueId callable, ValueId args) {
    const Value& c = values_[callable];
    if (c.kind != Kind::Global) fail("can only call a global, not a ", kind_name(c.kind));
    const Value& a = values_[args];
    if (a.kind != Kind::Tuple) fail("call arguments must be a tuple, not a ", kind_name(a.kind));
    if (c.role == Role::OrderedDict) {
      if (!a.items.empty()) fail("collections.OrderedDict with arguments is not supported");
      return add_container(Kind::Dict, {});
    }
    Value v;
    v.kind = Kind::Object;
    v.role = c.role;
    v.callable = callable;
    v.args = args;
    v.depth = std::max(c.depth, a.depth) + 1;
    return add(std::move(v));
  }

  void build() {
    const ValueId state = pop();
    const ValueId obj = top();
    Value& o = values_[obj];
    if (o.kind != Kind::Dict && o.kind != Kind::Object) fail("cannot set the state of a ", kind_name(o.kind));
    const std::uint32_t depth = std::max(o.depth, values_[state].depth + 1);
    if (depth > limits_.max_depth) fail("values nested deeper than ", limits_.max_depth, " levels");
    o.depth = depth;
    o.state = state;
  }

  void new_object_ex() {
    const ValueId kwargs = pop();
    const ValueId args = pop();
    const ValueId cls = pop();
    const Value& k = values_[kwargs];
    if (k.kind != Kind::Dict || !k.items.empty()) fail("keyword arguments are not supported");
    push(call(cls, args));
  }

  void mark() {
    if (marks_.size() >= limits_.max_marks) fail("more than ", limits_.max_marks, " nested MARKs");
    marks_.push_back(stack_.size());
  }

  // POP removes the top value, or the mark when nothing was pushed since it (as CPython does).
  void pop_value_or_mark() {
    if (!marks_.empty() && marks_.back() == stack_.size())
      marks_.pop_back();
    else
      pop();
  }

  Document finish() {
    if (!marks_.empty()) fail("STOP with ", marks_.size(), " MARKs still open");
    if (stack_.size() != 1) fail("STOP with ", stack_.size(), " values on the stack (expected 1)");
    Document doc;
    doc.values_ = std::move(values_);
    doc.root_ = stack_.back();
    return doc;
  }

  // Executes opcode op_; returns false at STOP.
  bool step() {
    switch (op_) {
      case PROTO: {
        const auto protocol = read_le(1);
        if (protocol > 5) fail("unsupported pickle protocol ", protocol);
        break;
      }
      case FRAME: {
        const std::uint64_t length = read_le(8);
        if (length > remaining()) fail("frame of ", length, " bytes but only ", remaining(), " remain (truncated?)");
        break;
      }
      case STOP: return false;
      case MARK: mark(); break;
      case POP: pop_value_or_mark(); break;
      case POP_MARK: pop_to_mark(); break;
      case DUP: push(top()); break;
      case NONE: push(add_scalar(Kind::None)); break;
      case NEWTRUE: push(add_scalar(Kind::Bool, 1)); break;
      case NEWFALSE: push(add_scalar(Kind::Bool, 0)); break;
      case BININT:
        push(add_scalar(Kind::Int, static_cast<std::int32_t>(static_cast<std::uint32_t>(read_le(4)))));
        break;
      case BININT1: push(add_scalar(Kind::Int, static_cast<std::int64_t>(read_le(1)))); break;
      case BININT2: push(add_scalar(Kind::Int, static_cast<std::int64_t>(read_le(2)))); break;
      case LONG1: push(add(make_long(read_bytes(read_le(1))))); break;
      case LONG4: push(add(make_long(read_bytes(read_signed_length())))); break;
      case BINFLOAT: {
        const std::string_view b = read_bytes(8);
        std::uint64_t u = 0;
        for (int i = 0; i < 8; ++i) u = (u << 8) | static_cast<std::uint8_t>(b[i]);  // big-endian
        Value v;
        v.kind = Kind::Float;
        v.number = std::bit_cast<double>(u);
        push(add(std::move(v)));
        break;
      }
      case SHORT_BINUNICODE: push(add_text(Kind::String, read_bytes(read_le(1)))); break;
      case BINUNICODE: push(add_text(Kind::String, read_bytes(read_le(4)))); break;
      case BINUNICODE8: push(add_text(Kind::String, read_bytes(read_le(8)))); break;
      case SHORT_BINSTRING: push(add_text(Kind::String, read_bytes(read_le(1)))); break;
      case BINSTRING: push(add_text(Kind::String, read_bytes(read_signed_length()))); break;
      case SHORT_BINBYTES: push(add_text(Kind::Bytes, read_bytes(read_le(1)))); break;
      case BINBYTES: push(add_text(Kind::Bytes, read_bytes(read_le(4)))); break;
      case BINBYTES8:
      case BYTEARRAY8: push(add_text(Kind::Bytes, read_bytes(read_le(8)))); break;
      case EMPTY_DICT: push(add_container(Kind::Dict, {})); break;
      case EMPTY_LIST: push(add_container(Kind::List, {})); break;
      case EMPTY_TUPLE: push(add_container(Kind::Tuple, {})); break;
      case EMPTY_SET: push(add_container(Kind::Set, {})); break;
      case TUPLE: push(add_container(Kind::Tuple, pop_to_mark())); break;
      case TUPLE1: push(add_container(Kind::Tuple, pop_n(1))); break;
      case TUPLE2: push(add_container(Kind::Tuple, pop_n(2))); break;
      case TUPLE3: push(add_container(Kind::Tuple, pop_n(3))); break;
      case LIST: push(add_container(Kind::List, pop_to_mark())); break;
      case FROZENSET: push(add_container(Kind::Set, pop_to_mark())); break;
      case DICT: {
        std::vector<ValueId> items = pop_to_mark();
        if (items.size() % 2) fail("odd number of items for a dict");
        push(add_container(Kind::Dict, std::move(items)));
        break;
      }
      case APPEND: {
        const std::vector<ValueId> item = pop_n(1);
        extend(target({Kind::List, Kind::Object}), item);
        break;
      }
      case APPENDS: {
        const std::vector<ValueId> items = pop_to_mark();
        extend(target({Kind::List, Kind::Object}), items);
        break;
      }
      case SETITEM: {
        const std::vector<ValueId> pair = pop_n(2);
        extend(target({Kind::Dict, Kind::Object}), pair);
        break;
      }
      case SETITEMS: {
        const std::vector<ValueId> items = pop_to_mark();
        if (items.size() % 2) fail("odd number of items for a dict");
        extend(target({Kind::Dict, Kind::Object}), items);
        break;
      }
      case ADDITEMS: {
        const std::vector<ValueId> items = pop_to_mark();
        extend(target({Kind::Set}), items);
        break;
      }
      case BINPUT: memo_put(read_le(1)); break;
      case LONG_BINPUT: memo_put(read_le(4)); break;
      case MEMOIZE: memo_put(memo_.size()); break;
      case BINGET: push(memo_get(read_le(1))); break;
      case LONG_BINGET: push(memo_get(read_le(4))); break;
      case GLOBAL: {
        const std::string_view module = read_line();
        const std::string_view name = read_line();
        push(global(module, name));
        break;
      }
      case STACK_GLOBAL: {
        const ValueId name = pop();
        const ValueId module = pop();
        if (values_[name].kind != Kind::String || values_[module].kind != Kind::String)
          fail("STACK_GLOBAL needs two strings");
        push(global(values_[module].text, values_[name].text));
        break;
      }
      case REDUCE:
      case NEWOBJ: {
        const ValueId args = pop();
        const ValueId callable = pop();
        push(call(callable, args));
        break;
      }
      case NEWOBJ_EX: new_object_ex(); break;
      case BUILD: build(); break;
      case BINPERSID: {
        Value v;
        v.kind = Kind::PersistentId;
        v.items.push_back(pop());
        v.depth = values_[v.items[0]].depth + 1;
        push(add(std::move(v)));
        break;
      }
      default: {
        if (opcode_name(op_)) fail("this opcode is not supported in a state dict");
        char hex[8];
        std::snprintf(hex, sizeof hex, "0x%02x", op_);
        fail("unknown opcode ", hex);
      }
    }
    return true;
  }

  std::span<const std::uint8_t> in_;
  const std::string& source_;
  const Limits limits_;
  std::size_t pos_ = 0;
  std::size_t op_pos_ = 0;
  std::uint8_t op_ = 0;
  std::vector<Value> values_;
  std::vector<ValueId> stack_;
  std::vector<std::size_t> marks_;
  std::unordered_map<std::uint64_t, ValueId> memo_;
};

Document unpickle(std::span<const std::uint8_t> bytes, const std::string& source, const Limits& limits) {
  return Unpickler(bytes, source, limits).run();
}

}  // namespace vrwkv::pickle
