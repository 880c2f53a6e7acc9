#include "simd.h"

#include <atomic>
#include <limits>
#include <stdexcept>

#if defined(COFISEARCH_X86)
#include <cpuid.h>
#endif

namespace cofisearch {
namespace {

#if defined(COFISEARCH_X86)
unsigned long long xgetbv0() {
  unsigned eax, edx;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (static_cast<unsigned long long>(edx) << 32) | eax;
}

SimdLevel detect() {
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return SimdLevel::scalar;
  const bool osxsave = c & (1u << 27), avx = c & (1u << 28), fma = c & (1u << 12),
             popcnt = c & (1u << 23);
  if (!(osxsave && avx && fma && popcnt)) return SimdLevel::scalar;
  const unsigned long long xcr0 = xgetbv0();
  if ((xcr0 & 0x6) != 0x6) return SimdLevel::scalar;  // XMM and YMM state
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return SimdLevel::scalar;
  if (!(b & (1u << 5))) return SimdLevel::scalar;  // AVX2
  // F, DQ, BW, VL, VPOPCNTDQ and BITALG (VPOPCNTB). Every processor with BW and
  // VPOPCNTDQ has BITALG too (Ice Lake and later, Zen 4 and later); the one with
  // VPOPCNTDQ and not BITALG, Knights Mill, lacks BW and never ran this level.
  const bool avx512 = (b & (1u << 16)) && (b & (1u << 17)) && (b & (1u << 30)) &&
                      (b & (1u << 31)) && (c & (1u << 14)) && (c & (1u << 12));
  const bool zmm_state = (xcr0 & 0xE6) == 0xE6;                // opmask, ZMM hi256, hi16
  return avx512 && zmm_state ? SimdLevel::avx512 : SimdLevel::avx2;
}
#else
SimdLevel detect() { return SimdLevel::scalar; }
#endif

// Each level's kernels. Packing only moves data, so AVX2 shares the portable loop.
//
// The panels pay only where their micro-kernels beat reading rows as stored: at AVX-512
// from 9 queries (measured in search.cpp, DotScan::path); at AVX2 and scalar never, so
// those levels scan rows as stored at every batch size and run their panel kernels only
// in tests. Measured, one thread, d = 512, 20k rows (stream / query panel / row panel):
// AVX2 10 queries 18 / 36 / 69 ms, 100 queries 110 / 333 / 228, 1000 queries 1227 /
// 2274 / 1460; scalar 10 queries 41 / 124 / 129, 1000 queries 4247 / 11643 / 9061.
constexpr std::size_t kNoPanels = std::numeric_limits<std::size_t>::max();

// Code panels pay once their per-query saving over the level's stored-codes kernel covers
// packing each block. Measured, one thread, k = 10, 200k codes (AVX-512) and 100k (AVX2),
// time of the panel over codes as stored: AVX-512 16 bytes 1.1 at 8 queries, 0.93 at 32,
// 0.87 at 1,000; 32 bytes 1.06 / 1.0 at 8 / 32, 0.81 at 1,000; 64 bytes 1.0 / 0.78 at 4 /
// 8; 128 bytes 1.06 / 0.6 at 4 / 16; 24 and 48 bytes 0.9 at 3 queries, 0.5 to 0.9 at 4.
// AVX2 counts codes of up to 32 bytes with the scalar POPCNT, which the panel's nibble
// lookup never beats (1.2 to 1.5 at 500 queries); wider codes 0.6 to 0.9 from 4 queries.
// 8-byte codes as stored already are a panel (one word per code, 8 codes per register),
// so they are never packed.
std::size_t hamming_panels_never(std::size_t) { return kNoPanels; }

std::size_t hamming_panels_avx2(std::size_t nbytes) { return nbytes <= 32 ? kNoPanels : 4; }

std::size_t hamming_panels_avx512(std::size_t nbytes) {
  if (nbytes == 8) return kNoPanels;
  if (nbytes == 16 || nbytes == 32) return 32;
  return nbytes % 64 == 0 ? 8 : 4;
}

// Rows of byte distances (search.cpp, hamming_dense) pay where the admissions of a
// streaming top-k cost more than counting whole rows. Measured, one thread, k = 10,
// random codes, 2,000 queries, G codes/s of dense / the better of stream and panel:
// AVX-512 64 bits 5k 4.3 / 2.5, 12k 4.5 / 2.8, 25k 4.9 / 4.0; 128 bits 5k 3.0 / 1.3, 25k
// 3.3 / 3.2; 256 bits 5k 2.2 / 1.1, 12k 1.4 / 1.2, 25k 1.4 / 1.7. The AVX2 and scalar
// rows are written a byte at a time and never paid (AVX2 64 bits 5k 0.72 / 0.96).
// Wider codes are left to the selectors: the distances past a byte that they reach
// would send queries back to an exact search.
std::size_t hamming_dense_never(std::size_t) { return 0; }

std::size_t hamming_dense_avx512(std::size_t nbytes) {
  return nbytes <= 16 ? 32768 : nbytes <= 32 ? 16384 : 0;
}

constexpr KernelSet kScalar = {hamming_b8_scan_scalar,     hamming_b8_pack_scalar,
                               hamming_b8_scan_packed_scalar, hamming_panels_never,
                               hamming_b8_pack_groups_scalar, hamming_b8_dist_packed_scalar, hamming_u8_count_scalar,
                               hamming_u8_collect_scalar,  hamming_dense_never,
                               dot_f32_scan_scalar,
                               dot_f32_gather_scalar,      dot_f32_pack_scalar,
                               dot_f32_scan_packed_scalar, dot_f32_scan_qpanel_scalar,
                               kNoPanels};
#if defined(COFISEARCH_X86)
constexpr KernelSet kAvx2 = {hamming_b8_scan_avx2,     hamming_b8_pack_scalar,
                             hamming_b8_scan_packed_avx2, hamming_panels_avx2,
                             hamming_b8_pack_groups_scalar, hamming_b8_dist_packed_avx2, hamming_u8_count_avx2,
                             hamming_u8_collect_avx2,  hamming_dense_never,
                             dot_f32_scan_avx2,
                             dot_f32_gather_avx2,      dot_f32_pack_scalar,
                             dot_f32_scan_packed_avx2, dot_f32_scan_qpanel_avx2,
                             kNoPanels};
constexpr KernelSet kAvx512 = {hamming_b8_scan_avx512,     hamming_b8_pack_avx512,
                               hamming_b8_scan_packed_avx512, hamming_panels_avx512,
                               hamming_b8_pack_planes_scalar, hamming_b8_dist_packed_avx512, hamming_u8_count_avx512,
                               hamming_u8_collect_avx512,  hamming_dense_avx512,
                               dot_f32_scan_avx512,
                               dot_f32_gather_avx512,      dot_f32_pack_avx512,
                               dot_f32_scan_packed_avx512, dot_f32_scan_qpanel_avx512,
                               9};
#endif

// Every kernel at every level: the driver never checks for a missing one.
constexpr bool complete(const KernelSet& k) {
  return k.hamming_scan && k.hamming_pack && k.hamming_scan_packed &&
         k.hamming_panel_min_queries && k.hamming_dense_pack && k.hamming_dist && k.hamming_count &&
         k.hamming_collect && k.hamming_dense_max_rows && k.dot_scan && k.dot_gather && k.dot_pack && k.dot_scan_packed &&
         k.dot_scan_qpanel && k.dot_panel_min_queries > 0;
}
static_assert(complete(kScalar), "scalar kernel set incomplete");
#if defined(COFISEARCH_X86)
static_assert(complete(kAvx2), "AVX2 kernel set incomplete");
static_assert(complete(kAvx512), "AVX-512 kernel set incomplete");
#endif

SimdLevel best() {
  static const SimdLevel level = detect();
  return level;
}

std::atomic<int>& current() {
  static std::atomic<int> level{static_cast<int>(best())};
  return level;
}

}  // namespace

const char* simd_level_name(SimdLevel level) {
  switch (level) {
    case SimdLevel::avx2: return "avx2";
    case SimdLevel::avx512: return "avx512";
    default: return "scalar";
  }
}

SimdLevel parse_simd_level(const std::string& name) {
  if (name == "scalar") return SimdLevel::scalar;
  if (name == "avx2") return SimdLevel::avx2;
  if (name == "avx512") return SimdLevel::avx512;
  throw std::invalid_argument("unknown SIMD level '" + name +
                              "'; expected one of 'scalar', 'avx2', 'avx512'");
}

bool simd_level_supported(SimdLevel level) {
  return static_cast<int>(level) <= static_cast<int>(best());
}

std::vector<SimdLevel> available_simd_levels() {
  std::vector<SimdLevel> out;
  for (int l = 0; l <= static_cast<int>(best()); ++l) out.push_back(static_cast<SimdLevel>(l));
  return out;
}

SimdLevel current_simd_level() { return static_cast<SimdLevel>(current().load()); }

void set_simd_level(SimdLevel level) {
  if (!simd_level_supported(level))
    throw std::invalid_argument(std::string("SIMD level '") + simd_level_name(level) +
                                "' is not supported by this processor; the best it runs is '" +
                                simd_level_name(best()) + "'");
  current().store(static_cast<int>(level));
}

const AsymKernelSet& asym_kernels_for(SimdLevel level) {
  static constexpr AsymKernelSet scalar{asym_b1_scan_scalar};
#if defined(COFISEARCH_X86)
  static constexpr AsymKernelSet avx2{asym_b1_scan_avx2};
  static constexpr AsymKernelSet avx512{asym_b1_scan_avx512};
  if (level == SimdLevel::avx512) return avx512;
  if (level == SimdLevel::avx2) return avx2;
#endif
  (void)level;
  return scalar;
}

const KernelSet& kernels_for(SimdLevel level) {
#if defined(COFISEARCH_X86)
  if (level == SimdLevel::avx512) return kAvx512;
  if (level == SimdLevel::avx2) return kAvx2;
#endif
  (void)level;
  return kScalar;
}

}  // namespace cofisearch
