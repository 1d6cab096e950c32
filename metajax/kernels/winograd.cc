// Winograd F(2x2, 3x3)'s output transform, adjoint, for metajax/winograd.py
// (built with the other kernels here by metajax/kernels/__init__.py).
//
// dm[g, 4p + q, n, i, j, :] = sum over the tile's 2 x 2 outputs (hr, wc) of
// a[wc][p] a[hr][q] dy[g, n, 2i + hr, 2j + wc, :], with a[0] = (1, 1, 1, 0)
// and a[1] = (0, 1, -1, -1) (metajax/winograd.py's _a_t): dy (G, N, 2T, 2U, O)
// -> dm (G, 16, N, T, U, O). A custom call so that XLA computes dy once: its
// own fusions of this adjoint recomputed dy's producer (batch norm's and the
// pool's backward) in each group of the 16 outputs.
#include <cstdint>

#include "parallel.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

struct OutAdjoint {
  const float* dy; float* dm;
  int64_t G, N, T, U, O;

  void image(int64_t g, int64_t n) const {    // one image of group g
    const int64_t plane = N * T * U * O, row = 2 * U * O;
    for (int64_t i = 0; i < T; ++i)
      for (int64_t j = 0; j < U; ++j) {
        const float* d00 = dy + (((g * N + n) * 2 * T + 2 * i) * 2 * U + 2 * j) * O;
        const float* d01 = d00 + O;
        const float* d10 = d00 + row;
        const float* d11 = d10 + O;
        float* out = dm + g * 16 * plane + ((n * T + i) * U + j) * O;
        for (int64_t o = 0; o < O; ++o) {
          // Along W (p), for each H offset: (d0, d0 + d1, d0 - d1, -d1).
          const float e0[4] = {d00[o], d00[o] + d01[o], d00[o] - d01[o], -d01[o]};
          const float e1[4] = {d10[o], d10[o] + d11[o], d10[o] - d11[o], -d11[o]};
          for (int p = 0; p < 4; ++p) {  // then along H (q)
            float* base = out + 4 * p * plane + o;
            base[0] = e0[p];
            base[plane] = e0[p] + e1[p];
            base[2 * plane] = e0[p] - e1[p];
            base[3 * plane] = -e1[p];
          }
        }
      }
  }
};

ffi::Error OutAdjointImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> dy,
                          ffi::ResultBuffer<ffi::F32> dm) {
  auto d = dy.dimensions(), m = dm->dimensions();
  if (d.size() != 5 || d[2] % 2 || d[3] % 2 || m.size() != 6 || m[0] != d[0] || m[1] != 16 ||
      m[2] != d[1] || m[3] != d[2] / 2 || m[4] != d[3] / 2 || m[5] != d[4])
    return ffi::Error::InvalidArgument(
        "winograd_output_adjoint: dy (G, N, 2T, 2U, O) and dm (G, 16, N, T, U, O) expected");
  const OutAdjoint work{dy.typed_data(), dm->typed_data(), d[0], d[1], d[2] / 2, d[3] / 2, d[4]};
  metajax::parallel_for(pool, work.G * work.N,
                        [&work](int64_t k) { work.image(k / work.N, k % work.N); });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(MetajaxWinogradOutAdjoint, OutAdjointImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
