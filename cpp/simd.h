// Which kernel set runs (layer 2 of STYLE.md).
//
// The processor is inspected once (CPUID for the instruction sets, XGETBV for the
// operating system's consent to use the wider registers); the chosen level can then be
// lowered or raised to any level the processor supports. Every scan reads the level once,
// at its start, so a change never mixes kernel sets inside one search.
#pragma once

#include <string>
#include <vector>

#include "asym.h"
#include "kernels.h"

namespace cofisearch {

const char* simd_level_name(SimdLevel level);

// Throws std::invalid_argument for a name that is not a level.
SimdLevel parse_simd_level(const std::string& name);

bool simd_level_supported(SimdLevel level);

// Levels this processor can run, from scalar upwards.
std::vector<SimdLevel> available_simd_levels();

SimdLevel current_simd_level();

// Throws std::invalid_argument when the processor lacks the level.
void set_simd_level(SimdLevel level);

const KernelSet& kernels_for(SimdLevel level);

// The level's asymmetric kernels (asym.h), kept beside KernelSet.
const AsymKernelSet& asym_kernels_for(SimdLevel level);

}  // namespace cofisearch
