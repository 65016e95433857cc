// CUDA kernels of pyaeplus::ssim_stats (forward) and pyaeplus::ssim_stats_backward.
//
// METHOD (prediction before measurement, H100 SXM 3.35 TB/s, fp32 5x3x1080x1920, K=11):
//   One CTA per (n, c) plane tile; the tile plus its halo is gathered into shared memory
//   through the padding index map (reflect / replicate / circular / zeros / valid, so every
//   mode runs the same code), the separable window runs as a horizontal then a vertical pass
//   in shared memory, and each CTA writes ONE partial per sum (ssim, cs, |x-y|); the second
//   stage is a fixed-order torch.sum over the partials: deterministic, no float atomics.
//   Backward recomputes the statistics (nothing saved but x, y), forms the four derivative
//   maps on the tile's centres, and applies the transposed window with per-source-pixel
//   "folded" weights (reflect / replicate borders), producing dx AND dy in one pass.
//   - forward (32x32 outputs per CTA, halo factor (42/32)^2 = 1.7, mostly L2 hits): each
//     thread owns 4 outputs down a column and reuses the vertical window in registers, so
//     ~53 shared loads + ~150 FMA per output -> shared-memory bound, predicted ~0.20-0.28 ms
//     for 249 MB of compulsory traffic: ~30-40 % of copy bandwidth.
//   - backward (16x32 sources per CTA, halo 2(K-1); statistics recomputed on 26x42 centres,
//     transposed window along H first (16 rows, 4-row register blocking) then along W):
//     ~230 shared loads per source pixel, ~3x the forward's shared traffic, predicted
//     ~0.6-0.9 ms for 498 MB (x, y read; dx, dy written): ~17-25 % of copy bandwidth.
//   Where the GPU session finds these low, the next steps are: a larger backward tile (halo
//   recompute is (26*42)/(16*32) = 2.1x of the centres), 2-wide horizontal register blocking,
//   and float2 shared loads.
//   fp16/bf16 inputs halve the compulsory bytes but not the shared-memory work (fp32 inside).
//   K in {7, 11} is compiled with the window length as a constant (unrolled taps); other odd
//   K use the same kernels with a run-time length.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <type_traits>

#include "../registry.h"
#include "common.cuh"

namespace py = pybind11;

namespace pyaeplus {
namespace {

constexpr int kThreads = 256;
constexpr int kFwdTH = 32, kFwdTW = 32;  // outputs per forward CTA
constexpr int kBwdTH = 16, kBwdTW = 32;  // source pixels per backward CTA

// Element strides of one (N, C, H, W) tensor.
struct Strides4 {
  int64_t n, c, h, w;
};

// Source index of raw (possibly out-of-range) index `raw` along an axis of length n under the
// padding mode (0 valid, 1 zeros, 2 reflect, 3 replicate, 4 circular); false when the
// padded value is zero (or the position is not part of the padded image at all).
__device__ __forceinline__ bool src_index(int raw, int n, int P, int pad, int& idx) {
  switch (pad) {
    case 2: {  // reflect, edge not repeated (F.pad 'reflect')
      if (raw < -P || raw >= n + P) return false;
      int i = raw < 0 ? -raw : raw;
      if (i >= n) i = 2 * (n - 1) - i;
      if (i < 0 || i >= n) return false;
      idx = i;
      return true;
    }
    case 3:  // replicate
      if (raw < -P || raw >= n + P) return false;
      idx = raw < 0 ? 0 : (raw >= n ? n - 1 : raw);
      return true;
    case 4: {  // circular
      int i = raw % n;
      idx = i < 0 ? i + n : i;
      return true;
    }
    default:  // valid / zeros
      if (raw < 0 || raw >= n) return false;
      idx = raw;
      return true;
  }
}

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t load_acc(const scalar_t* p) {
  if constexpr (std::is_same<scalar_t, double>::value) {
    return *p;
  } else {
    return static_cast<acc_t>(to_f32<scalar_t>(*p));
  }
}

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ scalar_t store_cast(acc_t v) {
  if constexpr (std::is_same<scalar_t, double>::value) {
    return v;
  } else {
    return from_f32<scalar_t>(static_cast<float>(v));
  }
}

template <typename acc_t>
__device__ __forceinline__ acc_t block_sum(acc_t v, acc_t* red /* [kThreads / 32] */) {
  // Fixed reduction order: the result is identical from run to run.
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();  // red may still be read by a previous call
  if (lane == 0) red[warp] = v;
  __syncthreads();
  acc_t s = 0;
  if (threadIdx.x == 0)
    for (int i = 0; i < kThreads / 32; ++i) s += red[i];
  return s;  // valid in thread 0
}

// Gathers the padded region rows [rh0, rh0 + RH) x cols [rw0, rw0 + RW) of x and y into
// shared memory (zeros where the padded image is zero).
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void load_region(const scalar_t* __restrict__ xb, Strides4 xs,
                                            const scalar_t* __restrict__ yb, Strides4 ys, int rh0, int rw0,
                                            int RH, int RW, int H, int W, int P, int pad, acc_t* sx, acc_t* sy) {
  for (int e = threadIdx.x; e < RH * RW; e += kThreads) {
    const int i = e / RW, j = e - (e / RW) * RW;
    int ih, iw;
    acc_t vx = 0, vy = 0;
    if (src_index(rh0 + i, H, P, pad, ih) && src_index(rw0 + j, W, P, pad, iw)) {
      vx = load_acc<scalar_t, acc_t>(xb + ih * xs.h + iw * xs.w);
      vy = load_acc<scalar_t, acc_t>(yb + ih * ys.h + iw * ys.w);
    }
    sx[e] = vx;
    sy[e] = vy;
  }
}

// Horizontal pass: hs[m][i][j] = sum_o w[o] f_m(x, y)[i][j + o] for i < RH, j < CW
// (m: x, y, xx, yy, xy); sx, sy: [RH][RW].
template <typename acc_t, int KT>
__device__ __forceinline__ void horizontal5(const acc_t* sx, const acc_t* sy, const acc_t* sw, int K, int RH,
                                            int RW, int CW, acc_t* hs) {
  const int plane = RH * CW;
  for (int e = threadIdx.x; e < plane; e += kThreads) {
    const int i = e / CW, j = e - (e / CW) * CW;
    const acc_t* px = sx + i * RW + j;
    const acc_t* py = sy + i * RW + j;
    acc_t a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0;
#pragma unroll
    for (int o = 0; o < (KT > 0 ? KT : K); ++o) {
      const acc_t w = sw[o], vx = px[o], vy = py[o];
      const acc_t wx = w * vx, wy = w * vy;
      a0 += wx;
      a1 += wy;
      a2 += wx * vx;
      a3 += wy * vy;
      a4 += wx * vy;
    }
    hs[e] = a0;
    hs[plane + e] = a1;
    hs[2 * plane + e] = a2;
    hs[3 * plane + e] = a3;
    hs[4 * plane + e] = a4;
  }
}

// Vertical pass at centre (i, j): the five window statistics from hs ([5][RH][CW]).
template <typename acc_t, int KT>
__device__ __forceinline__ void vertical5(const acc_t* hs, const acc_t* sw, int K, int RH, int CW, int i, int j,
                                          acc_t st[5]) {
  const int plane = RH * CW;
#pragma unroll
  for (int m = 0; m < 5; ++m) st[m] = 0;
  const acc_t* p = hs + i * CW + j;
#pragma unroll
  for (int o = 0; o < (KT > 0 ? KT : K); ++o) {
    const acc_t w = sw[o];
#pragma unroll
    for (int m = 0; m < 5; ++m) st[m] += w * p[m * plane + o * CW];
  }
}

// Vertical pass for the 4 centres (i0 .. i0 + 3, j): each hs value is loaded once and used by
// every centre whose window covers it (4 + K - 1 loads per statistic instead of 4 K). Rows
// i0 + o >= RH are never needed by a valid centre and are not read. Same summation order as
// vertical5 (taps ascending), so the two give bit-identical results.
template <typename acc_t, int KT>
__device__ __forceinline__ void vertical5_x4(const acc_t* hs, const acc_t* sw, int RH, int CW, int i0, int j,
                                             acc_t st[4][5]) {
  static_assert(KT > 0, "vertical5_x4 needs a compile-time window length");
  const int plane = RH * CW;
#pragma unroll
  for (int k = 0; k < 4; ++k)
#pragma unroll
    for (int m = 0; m < 5; ++m) st[k][m] = 0;
  const acc_t* p = hs + i0 * CW + j;
#pragma unroll
  for (int o = 0; o < KT + 3; ++o) {
    if (i0 + o >= RH) break;
    acc_t v[5];
#pragma unroll
    for (int m = 0; m < 5; ++m) v[m] = p[m * plane + o * CW];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const int tap = o - k;
      if (tap >= 0 && tap < KT) {
        const acc_t w = sw[tap];
#pragma unroll
        for (int m = 0; m < 5; ++m) st[k][m] += w * v[m];
      }
    }
  }
}

// ---- forward ------------------------------------------------------------------------------
// grid: (N*C*n_tiles); CTA = kFwdTH x kFwdTW outputs of one plane.
template <typename scalar_t, typename acc_t, int KT>
__global__ void __launch_bounds__(kThreads) ssim_fwd_kernel(
    const scalar_t* __restrict__ x, Strides4 xs,  // x: [N, C, H, W]
    const scalar_t* __restrict__ y, Strides4 ys,  // y: [N, C, H, W]
    const acc_t* __restrict__ win, int K_rt,      // window: [K]
    int C, int H, int W, int Ho, int Wo, int pad, acc_t c1, acc_t c2,
    acc_t* __restrict__ map,   // map: contiguous [N, C, Ho, Wo] or nullptr
    acc_t* __restrict__ part,  // partials: contiguous [3, N*C, n_tiles]
    int n_th, int n_tw, int64_t NC) {
  const int K = KT > 0 ? KT : K_rt;
  const int P = K / 2;
  const int RH = kFwdTH + 2 * P, RW = kFwdTW + 2 * P;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  acc_t* sw = reinterpret_cast<acc_t*>(smem_raw);  // [K] (padded to 8)
  acc_t* red = sw + ((K + 7) / 8) * 8;             // [8]
  acc_t* sx = red + 8;                             // [RH][RW]
  acc_t* sy = sx + RH * RW;                        // [RH][RW]
  acc_t* hs = sy + RH * RW;                        // [5][RH][kFwdTW]

  const int64_t n_tiles = static_cast<int64_t>(n_th) * n_tw;
  const int64_t nc = blockIdx.x / n_tiles;
  const int tile = static_cast<int>(blockIdx.x - nc * n_tiles);
  const int th = tile / n_tw, tw = tile - (tile / n_tw) * n_tw;
  const int64_t n = nc / C, c = nc - (nc / C) * C;
  const scalar_t* xb = x + n * xs.n + c * xs.c;
  const scalar_t* yb = y + n * ys.n + c * ys.c;
  const int oh0 = th * kFwdTH, ow0 = tw * kFwdTW;
  const int cshift = pad == 0 ? P : 0;  // output o is centred on source o + cshift
  const int rh0 = oh0 + cshift - P, rw0 = ow0 + cshift - P;

  for (int k = threadIdx.x; k < K; k += kThreads) sw[k] = win[k];
  load_region<scalar_t, acc_t>(xb, xs, yb, ys, rh0, rw0, RH, RW, H, W, P, pad, sx, sy);
  __syncthreads();
  horizontal5<acc_t, KT>(sx, sy, sw, K, RH, RW, kFwdTW, hs);
  __syncthreads();

  acc_t sum_s = 0, sum_c = 0, sum_l1 = 0;
  auto ssim_at = [&](int oh, int ow, const acc_t st[5]) {
    const acc_t mx = st[0], my = st[1];
    const acc_t sxx = st[2] - mx * mx, syy = st[3] - my * my, sxy = st[4] - mx * my;
    const acc_t cs = (2 * sxy + c2) / (sxx + syy + c2);
    const acc_t s = (2 * mx * my + c1) / (mx * mx + my * my + c1) * cs;
    if (map != nullptr) map[(nc * Ho + oh) * Wo + ow] = s;
    sum_s += s;
    sum_c += cs;
  };
  if constexpr (KT > 0) {
    // 256 threads = 32 columns x 8 groups of 4 rows: the whole 32 x 32 tile, one pass.
    static_assert(kFwdTW == 32 && kFwdTH == 4 * (kThreads / 32), "forward tile / thread layout");
    const int j = threadIdx.x & 31, i0 = (threadIdx.x >> 5) * 4;
    acc_t st[4][5];
    vertical5_x4<acc_t, KT>(hs, sw, RH, kFwdTW, i0, j, st);
#pragma unroll
    for (int k = 0; k < 4; ++k)
      if (oh0 + i0 + k < Ho && ow0 + j < Wo) ssim_at(oh0 + i0 + k, ow0 + j, st[k]);
  } else {
    for (int e = threadIdx.x; e < kFwdTH * kFwdTW; e += kThreads) {
      const int i = e / kFwdTW, j = e % kFwdTW;
      if (oh0 + i >= Ho || ow0 + j >= Wo) continue;
      acc_t st[5];
      vertical5<acc_t, KT>(hs, sw, K, RH, kFwdTW, i, j, st);
      ssim_at(oh0 + i, ow0 + j, st);
    }
  }
  // |x - y| over every source pixel once: the CTA owns the sources at its output centres,
  // the first / last tile also the border rows and columns that are nobody's centre (valid mode).
  {
    const int lo_h = th == 0 ? 0 : oh0 + cshift;
    const int hi_h = th == n_th - 1 ? H : min(oh0 + cshift + kFwdTH, H);
    const int lo_w = tw == 0 ? 0 : ow0 + cshift;
    const int hi_w = tw == n_tw - 1 ? W : min(ow0 + cshift + kFwdTW, W);
    const int nh = hi_h - lo_h, nw = hi_w - lo_w;
    for (int e = threadIdx.x; e < nh * nw; e += kThreads) {
      const int i = e / nw, j = e - (e / nw) * nw;
      const int li = lo_h + i - rh0, lj = lo_w + j - rw0;  // inside the region: see tile sizes
      const acc_t d = sx[li * RW + lj] - sy[li * RW + lj];
      sum_l1 += d < 0 ? -d : d;
    }
  }
  const int64_t slot = nc * n_tiles + tile;
  const acc_t ts = block_sum(sum_s, red);
  if (threadIdx.x == 0) part[slot] = ts;
  const acc_t tc = block_sum(sum_c, red);
  if (threadIdx.x == 0) part[NC * n_tiles + slot] = tc;
  const acc_t tl = block_sum(sum_l1, red);
  if (threadIdx.x == 0) part[2 * NC * n_tiles + slot] = tl;
}

// ---- backward -----------------------------------------------------------------------------
// Coefficient of the derivative map at centre s - P + e (e in [0, K)) on source pixel s of an
// axis of length n: sum_o w[o] [src(centre + o - P) == s]. Away from reflect / replicate
// borders this is w[K - 1 - e] (the transposed window).
__device__ __forceinline__ bool folds(int s, int n, int P, int pad) {
  return (pad == 2 || pad == 3) && (s <= P || s >= n - 1 - P);
}

template <typename acc_t>
__device__ void fold_weights(const acc_t* sw, int K, int P, int pad, int s, int n, acc_t* out /* [K] */) {
  if (s >= n) {
    for (int e = 0; e < K; ++e) out[e] = 0;
    return;
  }
  if (!folds(s, n, P, pad)) {
    for (int e = 0; e < K; ++e) out[e] = sw[K - 1 - e];
    return;
  }
  for (int e = 0; e < K; ++e) {
    const int ctr = s - P + e;
    acc_t v = 0;
    if (ctr >= 0 && ctr < n) {
      for (int o = 0; o < K; ++o) {
        int idx;
        if (src_index(ctr + o - P, n, P, pad, idx) && idx == s) v += sw[o];
      }
    }
    out[e] = v;
  }
}

// grid: (N*C*n_tiles); CTA = kBwdTH x kBwdTW source pixels of one plane.
template <typename scalar_t, typename acc_t, int KT>
__global__ void __launch_bounds__(kThreads) ssim_bwd_kernel(
    const scalar_t* __restrict__ x, Strides4 xs,  // x: [N, C, H, W]
    const scalar_t* __restrict__ y, Strides4 ys,  // y: [N, C, H, W]
    scalar_t* __restrict__ dx, Strides4 dxs,      // dx: [N, C, H, W] (strides of empty_like(x))
    scalar_t* __restrict__ dy, Strides4 dys,      // dy: [N, C, H, W]
    const acc_t* __restrict__ win, int K_rt,      // window: [K]
    const acc_t* __restrict__ gs, const acc_t* __restrict__ gc, const acc_t* __restrict__ gl,  // [N*C]
    const acc_t* __restrict__ gmap,               // grad_map: contiguous [N, C, Ho, Wo] or nullptr
    int C, int H, int W, int Ho, int Wo, int pad, acc_t c1, acc_t c2, int n_th, int n_tw) {
  const int K = KT > 0 ? KT : K_rt;
  const int P = K / 2;
  const int RH = kBwdTH + 4 * P, RW = kBwdTW + 4 * P;  // gathered region
  const int CH = kBwdTH + 2 * P, CW = kBwdTW + 2 * P;  // centres whose window touches the tile
  extern __shared__ __align__(16) unsigned char smem_raw[];
  acc_t* sw = reinterpret_cast<acc_t*>(smem_raw);  // [K] (padded to 8)
  acc_t* weh = sw + ((K + 7) / 8) * 8;             // [kBwdTH][K] folded weights of the rows
  acc_t* wew = weh + kBwdTH * K;                   // [kBwdTW][K] folded weights of the columns
  acc_t* sx = wew + kBwdTW * K;                    // [RH][RW]
  acc_t* sy = sx + RH * RW;                        // [RH][RW]
  acc_t* hs = sy + RH * RW;                        // [5][RH][CW]; later td: [4][CH][kBwdTW]
  acc_t* sd = hs + 5 * RH * CW;                    // [4][CH][CW] derivative maps

  const int64_t n_tiles = static_cast<int64_t>(n_th) * n_tw;
  const int64_t nc = blockIdx.x / n_tiles;
  const int tile = static_cast<int>(blockIdx.x - nc * n_tiles);
  const int th = tile / n_tw, tw = tile - (tile / n_tw) * n_tw;
  const int64_t n = nc / C, c = nc - (nc / C) * C;
  const scalar_t* xb = x + n * xs.n + c * xs.c;
  const scalar_t* yb = y + n * ys.n + c * ys.c;
  const int sh0 = th * kBwdTH, sw0 = tw * kBwdTW;
  const int rh0 = sh0 - 2 * P, rw0 = sw0 - 2 * P;  // first gathered raw row / col
  const int ch0 = sh0 - P, cw0 = sw0 - P;          // first centre row / col
  const int cshift = pad == 0 ? P : 0;             // output o is centred on source o + cshift

  for (int k = threadIdx.x; k < K; k += kThreads) sw[k] = win[k];
  load_region<scalar_t, acc_t>(xb, xs, yb, ys, rh0, rw0, RH, RW, H, W, P, pad, sx, sy);
  __syncthreads();
  for (int a = threadIdx.x; a < kBwdTH + kBwdTW; a += kThreads) {
    if (a < kBwdTH) fold_weights(sw, K, P, pad, sh0 + a, H, weh + a * K);
    else fold_weights(sw, K, P, pad, sw0 + (a - kBwdTH), W, wew + (a - kBwdTH) * K);
  }
  horizontal5<acc_t, KT>(sx, sy, sw, K, RH, RW, CW, hs);
  __syncthreads();

  // Derivative maps at the centres (zero where the centre has no output).
  const acc_t gsn = gs[nc], gcn = gc[nc];
  const int cplane = CH * CW;
  // d(i, j, st): the four derivative maps at centre (i, j) of the tile from its statistics.
  auto dmaps = [&](int i, int j, const acc_t* st) {
    const int e = i * CW + j;
    int ohh = ch0 + i - cshift, oww = cw0 + j - cshift;
    bool valid;
    if (pad == 4) {  // circular: every centre exists (modulo the size)
      ohh %= Ho;
      ohh += ohh < 0 ? Ho : 0;
      oww %= Wo;
      oww += oww < 0 ? Wo : 0;
      valid = true;
    } else {
      valid = ohh >= 0 && ohh < Ho && oww >= 0 && oww < Wo;
    }
    acc_t d_mx = 0, d_my = 0, d_xx = 0, d_xy = 0;
    if (valid) {
      const acc_t mx = st[0], my = st[1];
      const acc_t sxx = st[2] - mx * mx, syy = st[3] - my * my, sxy = st[4] - mx * my;
      const acc_t a1 = 2 * mx * my + c1, b1 = mx * mx + my * my + c1;
      const acc_t a2 = 2 * sxy + c2, b2 = sxx + syy + c2;
      const acc_t inv_b1 = acc_t(1) / b1, inv_b2 = acc_t(1) / b2;
      const acc_t lum = a1 * inv_b1, cs = a2 * inv_b2;
      const acc_t gsm = gmap != nullptr ? gsn + gmap[(nc * Ho + ohh) * Wo + oww] : gsn;
      // loss = sum gsm * lum * cs + gc * cs, differentiated by the five window statistics.
      const acc_t g = gsm * lum + gcn;  // d loss / d cs
      const acc_t hl = gsm * cs;        // d loss / d lum
      d_xy = 2 * g * inv_b2;
      d_xx = -g * a2 * inv_b2 * inv_b2;  // also d / d E[yy]
      const acc_t t1 = a1 * inv_b1 * inv_b1;
      d_mx = 2 * hl * (my * inv_b1 - mx * t1) - 2 * mx * d_xx - my * d_xy;
      d_my = 2 * hl * (mx * inv_b1 - my * t1) - 2 * my * d_xx - mx * d_xy;
    }
    sd[e] = d_mx;
    sd[cplane + e] = d_my;
    sd[2 * cplane + e] = d_xx;
    sd[3 * cplane + e] = d_xy;
  };
  if constexpr (KT > 0) {
    // Groups of 4 centres down a column share their vertical window loads.
    const int ngroups = (CH + 3) / 4;
    for (int e = threadIdx.x; e < ngroups * CW; e += kThreads) {
      const int g = e / CW, j = e - (e / CW) * CW;
      acc_t st[4][5];
      vertical5_x4<acc_t, KT>(hs, sw, RH, CW, 4 * g, j, st);
#pragma unroll
      for (int k = 0; k < 4; ++k)
        if (4 * g + k < CH) dmaps(4 * g + k, j, st[k]);
    }
  } else {
    for (int e = threadIdx.x; e < cplane; e += kThreads) {
      const int i = e / CW, j = e - (e / CW) * CW;
      acc_t st[5];
      vertical5<acc_t, KT>(hs, sw, K, RH, CW, i, j, st);
      dmaps(i, j, st);
    }
  }
  __syncthreads();

  // Transposed window along H with the folded row weights: td[m][a][j], a a source row of the
  // tile, j a centre column. Along H first: it runs on kBwdTH rows (not CH) of centres.
  acc_t* td = hs;
  const int tplane = kBwdTH * CW;
  if constexpr (KT > 0) {
    // Groups of 4 source rows down a column share their loads of the derivative maps.
    static_assert(kBwdTH % 4 == 0, "backward tile rows must be a multiple of 4");
    for (int e = threadIdx.x; e < (kBwdTH / 4) * CW; e += kThreads) {
      const int a0 = 4 * (e / CW), j = e - (e / CW) * CW;
      acc_t t[4][4];
#pragma unroll
      for (int r = 0; r < 4; ++r)
#pragma unroll
        for (int m = 0; m < 4; ++m) t[r][m] = 0;
      const acc_t* p = sd + a0 * CW + j;
#pragma unroll
      for (int o = 0; o < KT + 3; ++o) {  // centre row a0 + o
        acc_t v[4];
#pragma unroll
        for (int m = 0; m < 4; ++m) v[m] = p[m * cplane + o * CW];
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          const int k = o - r;
          if (k >= 0 && k < KT) {
            const acc_t w = weh[(a0 + r) * KT + k];
#pragma unroll
            for (int m = 0; m < 4; ++m) t[r][m] += w * v[m];
          }
        }
      }
#pragma unroll
      for (int r = 0; r < 4; ++r)
#pragma unroll
        for (int m = 0; m < 4; ++m) td[m * tplane + (a0 + r) * CW + j] = t[r][m];
    }
  } else {
    for (int e = threadIdx.x; e < tplane; e += kThreads) {
      const int a = e / CW, j = e - (e / CW) * CW;
      const acc_t* wa = weh + a * K;
      const acc_t* p = sd + a * CW + j;
      acc_t t0 = 0, t1 = 0, t2 = 0, t3 = 0;
      for (int k = 0; k < K; ++k) {
        const acc_t w = wa[k];
        t0 += w * p[k * CW];
        t1 += w * p[cplane + k * CW];
        t2 += w * p[2 * cplane + k * CW];
        t3 += w * p[3 * cplane + k * CW];
      }
      td[e] = t0;
      td[tplane + e] = t1;
      td[2 * tplane + e] = t2;
      td[3 * tplane + e] = t3;
    }
  }
  __syncthreads();

  // Transposed window along W, then d/dx = T_mx + 2 x T_xx + y T_xy (and the mirror for y).
  const acc_t gln = gl[nc];
  scalar_t* dxb = dx + n * dxs.n + c * dxs.c;
  scalar_t* dyb = dy + n * dys.n + c * dys.c;
  for (int e = threadIdx.x; e < kBwdTH * kBwdTW; e += kThreads) {
    const int a = e / kBwdTW, j = e % kBwdTW;
    const int s_h = sh0 + a, s_w = sw0 + j;
    if (s_h >= H || s_w >= W) continue;
    const acc_t* wj = wew + j * K;
    const acc_t* p = td + a * CW + j;
    acc_t t0 = 0, t1 = 0, t2 = 0, t3 = 0;
#pragma unroll
    for (int k = 0; k < (KT > 0 ? KT : K); ++k) {
      const acc_t w = wj[k];
      t0 += w * p[k];
      t1 += w * p[tplane + k];
      t2 += w * p[2 * tplane + k];
      t3 += w * p[3 * tplane + k];
    }
    const int li = (a + 2 * P) * RW + j + 2 * P;
    const acc_t xv = sx[li], yv = sy[li];
    const acc_t diff = xv - yv;
    const acc_t l1g = diff > 0 ? gln : (diff < 0 ? -gln : acc_t(0));
    const acc_t gx = t0 + 2 * xv * t2 + yv * t3 + l1g;
    const acc_t gy = t1 + 2 * yv * t2 + xv * t3 - l1g;
    dxb[s_h * dxs.h + s_w * dxs.w] = store_cast<scalar_t, acc_t>(gx);
    dyb[s_h * dys.h + s_w * dys.w] = store_cast<scalar_t, acc_t>(gy);
  }
}

size_t fwd_smem_elems(int K) {
  const int P = K / 2;
  const size_t RH = kFwdTH + 2 * P, RW = kFwdTW + 2 * P;
  return ((K + 7) / 8) * 8 + 8 + 2 * RH * RW + 5 * RH * kFwdTW;
}

size_t bwd_smem_elems(int K) {
  const int P = K / 2;
  const size_t RH = kBwdTH + 4 * P, RW = kBwdTW + 4 * P, CH = kBwdTH + 2 * P, CW = kBwdTW + 2 * P;
  return ((K + 7) / 8) * 8 + (kBwdTH + kBwdTW) * K + 2 * RH * RW + 5 * RH * CW + 4 * CH * CW;
}

// Raises (rather than failing the launch) when the tile does not fit in shared memory.
template <typename Kernel>
void prepare_smem(Kernel kernel, size_t bytes, const char* what, int K) {
  int dev = 0, optin = 0;
  PYAEPLUS_CUDA_CHECK(cudaGetDevice(&dev));
  PYAEPLUS_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  if (bytes > static_cast<size_t>(optin))
    fail(std::string(what) + ": window size " + std::to_string(K) + " needs " + std::to_string(bytes) +
         " bytes of shared memory per block, the device allows " + std::to_string(optin) +
         "; use a smaller window or the 'triton' backend");
  if (bytes > 48 * 1024)
    PYAEPLUS_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             static_cast<int>(bytes)));
}

template <typename scalar_t, typename acc_t, int KT>
void launch_fwd(uintptr_t x, Strides4 xs, uintptr_t y, Strides4 ys, uintptr_t win, int K, int64_t N, int64_t C,
                int H, int W, int Ho, int Wo, int pad, double c1, double c2, uintptr_t map, uintptr_t part,
                cudaStream_t stream) {
  const int n_th = static_cast<int>(ceil_div(Ho, kFwdTH)), n_tw = static_cast<int>(ceil_div(Wo, kFwdTW));
  const int64_t blocks = N * C * n_th * n_tw;
  PYAEPLUS_CHECK(blocks <= 0x7fffffffLL, "ssim_forward: too many tiles for one launch");
  const size_t bytes = fwd_smem_elems(K) * sizeof(acc_t);
  auto kernel = ssim_fwd_kernel<scalar_t, acc_t, KT>;
  prepare_smem(kernel, bytes, "ssim_forward", K);
  kernel<<<static_cast<unsigned>(blocks), kThreads, bytes, stream>>>(
      as_ptr<const scalar_t>(x), xs, as_ptr<const scalar_t>(y), ys, as_ptr<const acc_t>(win), K,
      static_cast<int>(C), H, W, Ho, Wo, pad, static_cast<acc_t>(c1), static_cast<acc_t>(c2),
      as_ptr<acc_t>(map), as_ptr<acc_t>(part), n_th, n_tw, N * C);
  PYAEPLUS_CUDA_CHECK_LAUNCH();
}

template <typename scalar_t, typename acc_t, int KT>
void launch_bwd(uintptr_t x, Strides4 xs, uintptr_t y, Strides4 ys, uintptr_t dx, Strides4 dxs, uintptr_t dy,
                Strides4 dys, uintptr_t win, int K, uintptr_t gs, uintptr_t gc, uintptr_t gl, uintptr_t gmap,
                int64_t N, int64_t C, int H, int W, int Ho, int Wo, int pad, double c1, double c2,
                cudaStream_t stream) {
  const int n_th = static_cast<int>(ceil_div(H, kBwdTH)), n_tw = static_cast<int>(ceil_div(W, kBwdTW));
  const int64_t blocks = N * C * n_th * n_tw;
  PYAEPLUS_CHECK(blocks <= 0x7fffffffLL, "ssim_backward: too many tiles for one launch");
  const size_t bytes = bwd_smem_elems(K) * sizeof(acc_t);
  auto kernel = ssim_bwd_kernel<scalar_t, acc_t, KT>;
  prepare_smem(kernel, bytes, "ssim_backward", K);
  kernel<<<static_cast<unsigned>(blocks), kThreads, bytes, stream>>>(
      as_ptr<const scalar_t>(x), xs, as_ptr<const scalar_t>(y), ys, as_ptr<scalar_t>(dx), dxs,
      as_ptr<scalar_t>(dy), dys, as_ptr<const acc_t>(win), K, as_ptr<const acc_t>(gs), as_ptr<const acc_t>(gc),
      as_ptr<const acc_t>(gl), as_ptr<const acc_t>(gmap), static_cast<int>(C), H, W, Ho, Wo, pad,
      static_cast<acc_t>(c1), static_cast<acc_t>(c2), n_th, n_tw);
  PYAEPLUS_CUDA_CHECK_LAUNCH();
}

void check_args(int64_t N, int64_t C, int64_t H, int64_t W, int K, int pad, const char* what) {
  PYAEPLUS_CHECK(K >= 3 && K % 2 == 1, std::string(what) + ": window length must be odd and >= 3");
  PYAEPLUS_CHECK(pad >= 0 && pad <= 4, std::string(what) + ": padding code must be in 0..4");
  PYAEPLUS_CHECK(N >= 0 && C >= 0 && H >= K && W >= K, std::string(what) + ": H and W must be >= the window");
  PYAEPLUS_CHECK(H < (1LL << 30) && W < (1LL << 30), std::string(what) + ": H and W must be < 2^30");
}

// x, y: [N, C, H, W] (strides in elements); window: [K] contiguous acc dtype;
// map: contiguous [N, C, Ho, Wo] acc dtype or 0; part: contiguous [3, N*C, n_tiles] acc dtype.
void ssim_forward(uintptr_t x, int64_t sxn, int64_t sxc, int64_t sxh, int64_t sxw, uintptr_t y, int64_t syn,
                  int64_t syc, int64_t syh, int64_t syw, int64_t N, int64_t C, int64_t H, int64_t W, uintptr_t win,
                  int64_t K, double c1, double c2, int64_t pad, uintptr_t map, uintptr_t part, int dtype,
                  uintptr_t stream) {
  check_args(N, C, H, W, static_cast<int>(K), static_cast<int>(pad), "ssim_forward");
  if (N * C == 0) return;
  const int Hi = static_cast<int>(H), Wi = static_cast<int>(W), Ki = static_cast<int>(K), pi = static_cast<int>(pad);
  const int Ho = pad == 0 ? Hi - Ki + 1 : Hi, Wo = pad == 0 ? Wi - Ki + 1 : Wi;
  const Strides4 xs{sxn, sxc, sxh, sxw}, ys{syn, syc, syh, syw};
  PYAEPLUS_CUDA_DISPATCH_FLOATING(dtype, "ssim_forward", [&] {
    using acc_t = typename cuda_acc<scalar_t>::type;
    switch (Ki) {
      case 7: return launch_fwd<scalar_t, acc_t, 7>(x, xs, y, ys, win, Ki, N, C, Hi, Wi, Ho, Wo, pi, c1, c2, map, part, as_stream(stream));
      case 11: return launch_fwd<scalar_t, acc_t, 11>(x, xs, y, ys, win, Ki, N, C, Hi, Wi, Ho, Wo, pi, c1, c2, map, part, as_stream(stream));
      default: return launch_fwd<scalar_t, acc_t, 0>(x, xs, y, ys, win, Ki, N, C, Hi, Wi, Ho, Wo, pi, c1, c2, map, part, as_stream(stream));
    }
  });
}

// grad_ssim, grad_cs, grad_l1: contiguous [N*C] acc dtype; grad_map: contiguous [N, C, Ho, Wo] or 0;
// x, y, dx, dy: [N, C, H, W] with their own strides.
void ssim_backward(uintptr_t gs, uintptr_t gc, uintptr_t gl, uintptr_t gmap, uintptr_t x, int64_t sxn, int64_t sxc,
                   int64_t sxh, int64_t sxw, uintptr_t y, int64_t syn, int64_t syc, int64_t syh, int64_t syw,
                   uintptr_t dx, int64_t dxn, int64_t dxc, int64_t dxh, int64_t dxw, uintptr_t dy, int64_t dyn,
                   int64_t dyc, int64_t dyh, int64_t dyw, int64_t N, int64_t C, int64_t H, int64_t W, uintptr_t win,
                   int64_t K, double c1, double c2, int64_t pad, int dtype, uintptr_t stream) {
  check_args(N, C, H, W, static_cast<int>(K), static_cast<int>(pad), "ssim_backward");
  if (N * C == 0) return;
  const int Hi = static_cast<int>(H), Wi = static_cast<int>(W), Ki = static_cast<int>(K), pi = static_cast<int>(pad);
  const int Ho = pad == 0 ? Hi - Ki + 1 : Hi, Wo = pad == 0 ? Wi - Ki + 1 : Wi;
  const Strides4 xs{sxn, sxc, sxh, sxw}, ys{syn, syc, syh, syw}, dxs{dxn, dxc, dxh, dxw}, dys{dyn, dyc, dyh, dyw};
  PYAEPLUS_CUDA_DISPATCH_FLOATING(dtype, "ssim_backward", [&] {
    using acc_t = typename cuda_acc<scalar_t>::type;
    switch (Ki) {
      case 7: return launch_bwd<scalar_t, acc_t, 7>(x, xs, y, ys, dx, dxs, dy, dys, win, Ki, gs, gc, gl, gmap, N, C, Hi, Wi, Ho, Wo, pi, c1, c2, as_stream(stream));
      case 11: return launch_bwd<scalar_t, acc_t, 11>(x, xs, y, ys, dx, dxs, dy, dys, win, Ki, gs, gc, gl, gmap, N, C, Hi, Wi, Ho, Wo, pi, c1, c2, as_stream(stream));
      default: return launch_bwd<scalar_t, acc_t, 0>(x, xs, y, ys, dx, dxs, dy, dys, win, Ki, gs, gc, gl, gmap, N, C, Hi, Wi, Ho, Wo, pi, c1, c2, as_stream(stream));
    }
  });
}

// Number of forward tiles per plane (the Python side sizes the partials buffer with it).
int64_t ssim_forward_tiles(int64_t H, int64_t W, int64_t K, int64_t pad) {
  const int64_t Ho = pad == 0 ? H - K + 1 : H, Wo = pad == 0 ? W - K + 1 : W;
  return ceil_div(Ho, kFwdTH) * ceil_div(Wo, kFwdTW);
}

void bind_ssim(py::module_& m) {
  m.def("ssim_forward", &ssim_forward, py::call_guard<py::gil_scoped_release>(),
        "SSIM statistics: per-(n, c) partial sums of ssim, cs and |x-y| per tile (+ optional map)");
  m.def("ssim_backward", &ssim_backward, py::call_guard<py::gil_scoped_release>(),
        "SSIM backward by recomputation: dx and dy in one pass");
  m.def("ssim_forward_tiles", &ssim_forward_tiles, "forward tiles per (n, c) plane");
}

}  // namespace

PYAEPLUS_REGISTER(ssim, bind_ssim);

}  // namespace pyaeplus
