// c[p] = a[p] b[p] for a: (P, R, C), b: (P, C, O) float32, c: (P, R, O): the
// forward products of metajax/tn_product.py's matmul (a convolution's patches
// or Winograd's tiles times its kernel, and their input gradients), which
// XLA's CPU backend ran at about half its rate at the inner loop's sizes
// (R ~ 1000 rows, C and O 64 to 576; docs/RESULTS.md). Built on first use by
// metajax/kernels/__init__.py.
//
// b is packed per product into panels of kCols columns (zero-padded), each
// contiguous over C, so that a register block of c (8 x 32 with AVX-512,
// 6 x 16 with AVX2) runs over C from L1 and L2 with unit-stride loads; a's
// rows are read directly. With transpose_b, b is given as (P, O, C) and
// packed from that layout (an input gradient's g bᵀ needs no transpose of
// its own). Items (products, or ranges of a product's rows) are shared
// between the calling thread and XLA's intra-op thread pool (parallel.h).
#include <algorithm>
#include <cstdint>
#include <vector>

#include "parallel.h"
#include "vec.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using namespace metajax;   // vec.h: the vector type and the register block's rows

constexpr int kCols = 2 * kLanes;   // columns of c per register block

// panels[ob][k][j] = b[k][ob * kCols + j] (b[ob * kCols + j][k] if transposed),
// zero past O.
void pack(const float* b, float* panels, int64_t C, int64_t O, bool transposed) {
  for (int64_t o0 = 0; o0 < O; o0 += kCols) {
    const int64_t width = std::min<int64_t>(kCols, O - o0);
    float* panel = panels + (o0 / kCols) * C * kCols;
    for (int64_t k = 0; k < C; ++k) {
      float* dst = panel + k * kCols;
      for (int64_t j = 0; j < width; ++j)
        dst[j] = transposed ? b[(o0 + j) * C + k] : b[k * O + o0 + j];
      std::fill(dst + width, dst + kCols, 0.f);
    }
  }
}

// c[0:RB, 0:width] = a[0:RB, :] panel (C x kCols); rows of a and c are C and O apart.
template <int RB>
inline void block(const float* a, const float* panel, float* c, int64_t C, int64_t O,
                  int64_t width) {
  vec acc[RB][2];
  for (int i = 0; i < RB; ++i) acc[i][0] = acc[i][1] = vec{};
  for (int64_t k = 0; k < C; ++k) {
    const vec b0 = load(panel + k * kCols), b1 = load(panel + k * kCols + kLanes);
    for (int i = 0; i < RB; ++i) {
      const vec ai = splat(a[i * C + k]);
      acc[i][0] += ai * b0;
      acc[i][1] += ai * b1;
    }
  }
  if (width == kCols) {
    for (int i = 0; i < RB; ++i) {
      store(c + i * O, acc[i][0]);
      store(c + i * O + kLanes, acc[i][1]);
    }
  } else {
    for (int i = 0; i < RB; ++i)
      for (int64_t j = 0; j < width; ++j)
        c[i * O + j] = j < kLanes ? acc[i][0][j] : acc[i][1][j - kLanes];
  }
}

// c[r0:r1] = a[r0:r1] b, b as packed panels.
void rows(const float* a, const float* panels, float* c, int64_t r0, int64_t r1, int64_t C,
          int64_t O) {
  for (int64_t r = r0; r < r1; r += kRows) {
    const float* ar = a + r * C;
    for (int64_t o0 = 0; o0 < O; o0 += kCols) {
      const float* panel = panels + (o0 / kCols) * C * kCols;
      float* cr = c + r * O + o0;
      const int64_t width = std::min<int64_t>(kCols, O - o0);
      with_rows(std::min<int64_t>(kRows, r1 - r), [&](auto rb) {
        block<decltype(rb)::value>(ar, panel, cr, C, O, width);
      });
    }
  }
}

ffi::Error MatmulImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b,
                      ffi::ResultBuffer<ffi::F32> c, bool transpose_b) {
  // (P, R, C) and (P, C, O) [(P, O, C) transposed], or rank 2 for P = 1.
  auto ad = a.dimensions(), bd = b.dimensions(), cd = c->dimensions();
  const size_t rank = ad.size();
  const auto shapes_error = ffi::Error::InvalidArgument(
      "matmul: a (P, R, C), b (P, C, O) or (P, O, C) with transpose_b, c (P, R, O); or rank 2");
  if ((rank != 3 && rank != 2) || bd.size() != rank || cd.size() != rank) return shapes_error;
  const int64_t C = ad[rank - 1];
  const int64_t O = transpose_b ? bd[rank - 2] : bd[rank - 1];
  if ((rank == 3 && (ad[0] != bd[0] || cd[0] != ad[0])) ||
      (transpose_b ? bd[rank - 1] : bd[rank - 2]) != C || cd[rank - 2] != ad[rank - 2] ||
      cd[rank - 1] != O)
    return shapes_error;
  const int64_t P = rank == 3 ? ad[0] : 1, R = ad[rank - 2];
  const float* ap = a.typed_data(); const float* bp = b.typed_data();
  float* cp = c->typed_data();
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  // At least four items per thread where there are rows enough (at most ~48 rows
  // an item): a few products' rows are split into ranges of whole register blocks.
  const int64_t splits = std::max<int64_t>(
      1, std::min((4 * threads + P - 1) / std::max<int64_t>(P, 1), (R + 47) / 48));
  const int64_t per = ((R + splits - 1) / splits + kRows - 1) / kRows * kRows;
  const int64_t panel_floats = (O + kCols - 1) / kCols * kCols * C;
  metajax::parallel_for(pool, P * splits, [&](int64_t i) {
    const int64_t p = i / splits, r0 = std::min(R, (i % splits) * per),
                  r1 = std::min(R, r0 + per);
    if (r0 >= r1) return;
    // Each item packs its product's b (C x O, small beside its rows' work).
    thread_local std::vector<float> panels;
    if (panels.size() < static_cast<size_t>(panel_floats)) panels.resize(panel_floats);
    pack(bp + p * C * O, panels.data(), C, O, transpose_b);
    rows(ap + p * R * C, panels.data(), cp + p * R * O, r0, r1, C, O);
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(MetajaxMatmul, MatmulImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<bool>("transpose_b"));
