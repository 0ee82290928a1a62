// The WKV attention's options: a vocabulary shared by the ops and the model
// configuration. The two semantics of the bidirectional WKV (VRWKV.md 2.2,
// 2.3), and the ablation's direction and decay (ABLATION.md B.3).
#pragma once

#include <string>

namespace vrwkv {

// Paper: the closed form of VRWKV.md 2.2. Official: what the official CUDA
// kernel computes, chunked over S chunks (2.3).
enum class WkvSemantics { Paper, Official };

std::string to_string(WkvSemantics s);               // "paper", "official"
WkvSemantics wkv_from_string(const std::string& s);  // throws Error(Input)

// Bi: every token attends to all tokens. Uni: the same formula restricted to
// the tokens before it and itself (the causal RWKV attention; the paper
// convention, so the semantics above do not apply).
enum class WkvDirection { Bi, Uni };
// The operands w, u the attention takes from spatial_decay and spatial_first:
// Vrwkv: w = spatial_decay/T, u = spatial_first/T (VRWKV.md 1.6); Rwkv4:
// w = exp(spatial_decay), u = spatial_first (RWKV-4's, uni direction only).
enum class WkvDecay { Vrwkv, Rwkv4 };

std::string to_string(WkvDirection d);                          // "bi", "uni"
std::string to_string(WkvDecay d);                              // "vrwkv", "rwkv4"
WkvDirection wkv_direction_from_string(const std::string& s);  // these throw Error(Input)
WkvDecay wkv_decay_from_string(const std::string& s);

}  // namespace vrwkv
