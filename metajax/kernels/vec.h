// The vector type and register blocks that the kernels here (metajax/kernels/*.cc)
// share, for whatever the compiler targets: AVX-512, AVX2, SSE or NEON.
#pragma once

#include <cstdint>
#include <type_traits>

namespace metajax {

// The widest vectors, and the rows of a register block that fit the target's
// registers: a block of kRows x 2 accumulators plus 2 vectors of one operand
// and one broadcast of the other (AVX-512 and AArch64 have 32 registers; AVX2
// and SSE 16, where 8 rows would spill).
#if defined(__AVX512F__)
constexpr int kBytes = 64, kRows = 8;
#elif defined(__AVX__)
constexpr int kBytes = 32, kRows = 6;
#elif defined(__aarch64__)
constexpr int kBytes = 16, kRows = 8;
#else
constexpr int kBytes = 16, kRows = 6;
#endif
constexpr int kLanes = kBytes / 4;

// aligned(4), __may_alias__: loads and stores through vec pointers may be
// unaligned and alias the float buffers.
typedef float vec __attribute__((vector_size(kBytes), aligned(4), __may_alias__));

inline vec load(const float* p) { return *reinterpret_cast<const vec*>(p); }
inline void store(float* p, vec v) { *reinterpret_cast<vec*>(p) = v; }
// x - 0 is x for every x (-0 included), so this compiles to a bare broadcast;
// 0 + x is not (-0 + 0 = +0), and costs a scalar add and a register
// broadcast per use: ~20% of the tn kernel's rate on an AVX2 host.
inline vec splat(float x) { return x - vec{}; }

// f(std::integral_constant<int, n>{}) for n in 1..8 (n <= 1 as 1): a block of
// n rows, with n a compile-time constant so its accumulators stay in registers.
template <typename F>
inline void with_rows(int64_t n, F&& f) {
  switch (n) {
    case 8: f(std::integral_constant<int, 8>{}); break;
    case 7: f(std::integral_constant<int, 7>{}); break;
    case 6: f(std::integral_constant<int, 6>{}); break;
    case 5: f(std::integral_constant<int, 5>{}); break;
    case 4: f(std::integral_constant<int, 4>{}); break;
    case 3: f(std::integral_constant<int, 3>{}); break;
    case 2: f(std::integral_constant<int, 2>{}); break;
    default: f(std::integral_constant<int, 1>{}); break;
  }
}

}  // namespace metajax
