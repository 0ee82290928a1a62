// The two semantics of the bidirectional WKV (VRWKV.md 2.2, 2.3): a
// vocabulary type shared by the ops and the model configuration.
#pragma once

#include <string>

namespace vrwkv {

// Paper: the closed form of VRWKV.md 2.2. Official: what the official CUDA
// kernel computes, chunked over S chunks (2.3).
enum class WkvSemantics { Paper, Official };

std::string to_string(WkvSemantics s);               // "paper", "official"
WkvSemantics wkv_from_string(const std::string& s);  // throws Error(Input)

}  // namespace vrwkv
