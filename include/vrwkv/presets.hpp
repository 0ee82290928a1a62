// The released model shapes (VRWKV.md 4) and their initialisation (1.9).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "vrwkv/model.hpp"

namespace vrwkv {

// "vrwkv_t", "vrwkv_s", "vrwkv_b", "vrwkv_l"; throws Error(Input) otherwise.
Config preset_config(const std::string& name);
std::vector<std::string> preset_names();

// Parameters as the official code initialises them (VRWKV.md 1.9): fancy init
// of decay, first and the μ ramps; every Linear TruncNormal(std 0.02), bias 0;
// LayerNorms (1, 0); the patch convolution with PyTorch's default uniform
// init; pos_embed 0; layer-scale gammas at `init_values`. Deterministic for a
// seed. (Depth 1 takes r01 = 0 where the official code divides by zero.) The
// rules are the parameter table's (src/model/params.hpp).
TensorMap initial_parameters(const Architecture& arch, std::uint64_t seed, double init_values = 1e-5);

}  // namespace vrwkv
