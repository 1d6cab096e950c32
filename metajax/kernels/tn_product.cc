// c[p] = a[p]^T b[p] for a: (P, R, C), b: (P, R, O) float32, c: (P, C, O):
// the kernel-gradient product of a convolution (contracted over its R output
// positions), which XLA's CPU backend runs at a third of its forward
// products' rate (docs/RESULTS.md). Built on first use by metajax/kernels/__init__.py.
//
// A block of c (8 x 32 with AVX-512, 6 x 16 with AVX2) is kept in registers
// (GCC/clang vector extensions: AVX-512, AVX2, SSE or NEON, whatever the
// compiler targets) while R runs in chunks that stay in cache. Items of work
// (products, or ranges of R of a product) are shared between the calling
// thread and XLA's intra-op thread pool (parallel.h).
#include <algorithm>
#include <cstdint>
#include <vector>

#include "parallel.h"
#include "vec.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using namespace metajax;   // vec.h: the vector type and the register block's rows

constexpr int kChunk = 256;   // rows of R per pass over the blocks of c

// c[c0:c0+CB, o0:o0+kLanes*NV] += a[r0:r1, c0:c0+CB]^T b[r0:r1, o0:o0+kLanes*NV]
template <int CB, int NV>
inline void block(const float* a, const float* b, float* c, int64_t r0, int64_t r1,
                  int64_t C, int64_t O, int64_t c0, int64_t o0) {
  vec acc[CB][NV];
  for (int i = 0; i < CB; ++i)
    for (int j = 0; j < NV; ++j) acc[i][j] = vec{};
  for (int64_t r = r0; r < r1; ++r) {
    const float* ar = a + r * C + c0;
    const float* br = b + r * O + o0;
    vec bv[NV];
    for (int j = 0; j < NV; ++j) bv[j] = load(br + kLanes * j);
    for (int i = 0; i < CB; ++i) {
      vec ai = splat(ar[i]);
      for (int j = 0; j < NV; ++j) acc[i][j] += ai * bv[j];
    }
  }
  for (int i = 0; i < CB; ++i)
    for (int j = 0; j < NV; ++j) {
      float* cp = c + (c0 + i) * O + o0 + kLanes * j;
      store(cp, load(cp) + acc[i][j]);
    }
}

// The last O - o0 < kLanes columns: b's are copied into a zero-padded vector
// per row and only they are written.
template <int CB>
void tail(const float* a, const float* b, float* c, int64_t r0, int64_t r1, int64_t C,
          int64_t O, int64_t c0, int64_t o0) {
  const int64_t width = O - o0;
  vec acc[CB];
  for (int i = 0; i < CB; ++i) acc[i] = vec{};
  for (int64_t r = r0; r < r1; ++r) {
    const float* ar = a + r * C + c0;
    vec bv = vec{};
    for (int64_t j = 0; j < width; ++j) bv[j] = b[r * O + o0 + j];
    for (int i = 0; i < CB; ++i) acc[i] += splat(ar[i]) * bv;
  }
  for (int i = 0; i < CB; ++i)
    for (int64_t j = 0; j < width; ++j) c[(c0 + i) * O + o0 + j] += acc[i][j];
}

template <int CB>
void rows(const float* a, const float* b, float* c, int64_t r0, int64_t r1, int64_t C,
          int64_t O, int64_t c0) {
  int64_t o0 = 0;
  for (; o0 + 2 * kLanes <= O; o0 += 2 * kLanes) block<CB, 2>(a, b, c, r0, r1, C, O, c0, o0);
  for (; o0 + kLanes <= O; o0 += kLanes) block<CB, 1>(a, b, c, r0, r1, C, O, c0, o0);
  if (o0 < O) tail<CB>(a, b, c, r0, r1, C, O, c0, o0);
}

// c (C x O) = a[r0:r1] (R x C)^T b[r0:r1] (R x O). Over R in chunks, so that
// each chunk of a and b is read from memory once and reused from cache by
// every block of c.
void product(const float* a, const float* b, float* c, int64_t r_begin, int64_t r_end,
             int64_t C, int64_t O) {
  std::fill(c, c + C * O, 0.f);
  for (int64_t r0 = r_begin; r0 < r_end; r0 += kChunk) {
    const int64_t r1 = std::min(r_end, r0 + kChunk);
    for (int64_t c0 = 0; c0 < C; c0 += kRows) {
      with_rows(std::min<int64_t>(kRows, C - c0), [&](auto cb) {
        rows<decltype(cb)::value>(a, b, c, r0, r1, C, O, c0);
      });
    }
  }
}

// One call's work: P products, each over R split into `splits` ranges (so
// that a few long products still use every thread); an item is one range of
// one product. Items write c directly, or (split or transposed) a partial
// result in `scratch` that finish() sums into c.
struct Work {
  const float* a; const float* b; float* c;
  int64_t P, R, C, O, splits, items;
  bool transposed;               // computed as c[p]^T = b[p]^T a[p]
  std::vector<float> scratch;    // items x C x O, unless written directly

  void item(int64_t i) {
    const int64_t p = i / splits, s = i % splits;
    const int64_t r0 = R * s / splits, r1 = R * (s + 1) / splits;
    const float* ap = a + p * R * C; const float* bp = b + p * R * O;
    if (scratch.empty()) product(ap, bp, c + p * C * O, r0, r1, C, O);
    else if (!transposed) product(ap, bp, &scratch[i * C * O], r0, r1, C, O);
    else product(bp, ap, &scratch[i * C * O], r0, r1, O, C);
  }

  void finish() {
    if (scratch.empty()) return;
    for (int64_t p = 0; p < P; ++p) {
      float* cp = c + p * C * O;
      std::fill(cp, cp + C * O, 0.f);
      for (int64_t s = 0; s < splits; ++s) {
        const float* t = &scratch[(p * splits + s) * C * O];
        if (!transposed) {
          for (int64_t k = 0; k < C * O; ++k) cp[k] += t[k];
        } else {
          for (int64_t o = 0; o < O; ++o)
            for (int64_t k = 0; k < C; ++k) cp[k * O + o] += t[o * C + k];
        }
      }
    }
  }
};

ffi::Error TnProductImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> a,
                         ffi::Buffer<ffi::F32> b, ffi::ResultBuffer<ffi::F32> c) {
  // (P, R, C) and (P, R, O), or (R, C) and (R, O) for P = 1 (see tn_product.py).
  auto ad = a.dimensions(), bd = b.dimensions();
  const size_t rank = ad.size();
  if ((rank != 3 && rank != 2) || bd.size() != rank || c->dimensions().size() != rank ||
      (rank == 3 && ad[0] != bd[0]) || ad[rank - 2] != bd[rank - 2])
    return ffi::Error::InvalidArgument(
        "tn_product: a (P, R, C) and b (P, R, O), or a (R, C) and b (R, O), expected");
  Work work;
  work.a = a.typed_data(); work.b = b.typed_data(); work.c = c->typed_data();
  const int64_t P = rank == 3 ? ad[0] : 1, R = ad[rank - 2], C = ad[rank - 1],
                O = bd[rank - 1];
  work.P = P; work.R = R; work.C = C; work.O = O;
  // Vectorised along c's columns, or along its rows (computed transposed)
  // where they fill vectors better: a multiple of kLanes rows and not of
  // columns, or fewer than kLanes columns and at least kLanes rows.
  work.transposed = (O % kLanes != 0 && C % kLanes == 0) || (O < kLanes && C >= kLanes);
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  // At least two items per thread, splitting R where there are fewer products.
  work.splits = std::max<int64_t>(1, std::min((2 * threads + P - 1) / std::max<int64_t>(P, 1),
                                              (R + kChunk - 1) / kChunk));
  work.items = P * work.splits;
  if (work.splits > 1 || work.transposed) work.scratch.resize(work.items * C * O);
  metajax::parallel_for(pool, work.items, [&work](int64_t i) { work.item(i); });
  work.finish();
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(MetajaxTnProduct, TnProductImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
