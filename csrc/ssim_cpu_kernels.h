// SSIM CPU kernels, included twice by ssim_cpu.cpp: once for the baseline ISA and once under
// `#pragma GCC target("avx2,fma")` (chosen at run time), each inside its own namespace. Only
// this op's own templates live here; std and common.h helpers come from outside the pragma.
// No include guard on purpose.
//
// Vectors are GCC/Clang vector extensions of 32 bytes (8 floats, 4 doubles): one AVX register
// in the AVX2 build, a pair of SSE registers in the baseline build, so both builds run the same
// arithmetic in the same order (FMA contraction aside). The filter passes keep the window taps
// in registers and their accumulators in registers (a load per tap, a store per output vector),
// fold mirrored taps of symmetric windows, and produce two output rows per vertical pass; the
// window length is a template argument for the usual sizes (3..15), other lengths and
// asymmetric windows take run-time loops. Ring buffers of rows are laid out so that the rows
// read together do not share L1 sets (ring_stride).

enum Pad : int { kValid = 0, kZeros = 1, kReflect = 2, kReplicate = 3, kCircular = 4 };

struct Geom {
  int64_t H, W, K, r, Ho, Wo, Hp, Wp, off;  // off: where source index 0 sits in padded coordinates
  int mode;
  Geom(int64_t H_, int64_t W_, int64_t K_, int mode_) : H(H_), W(W_), K(K_), mode(mode_) {
    r = K / 2;
    off = mode == kValid ? 0 : r;
    Ho = mode == kValid ? H - K + 1 : H;
    Wo = mode == kValid ? W - K + 1 : W;
    Hp = Ho + K - 1;
    Wp = Wo + K - 1;
  }
};

// Source index of padded position p (0 <= p < n + 2 off), -1 for a zero pad. Needs off < n.
inline int64_t src_index(int64_t p, int64_t n, int64_t off, int mode) {
  const int64_t q = p - off;
  if (q >= 0 && q < n) return q;
  switch (mode) {
    case kZeros: return -1;
    case kReflect: return q < 0 ? -q : 2 * (n - 1) - q;
    case kReplicate: return q < 0 ? 0 : n - 1;
    default: return ((q % n) + n) % n;  // circular
  }
}

// ---- vectors ------------------------------------------------------------------------------

template <typename A>
struct VecOf {
  typedef A type __attribute__((vector_size(32), aligned(sizeof(A)), may_alias));
};
template <typename A>
using Vec = typename VecOf<A>::type;
template <typename A>
constexpr int64_t lanes() { return 32 / static_cast<int64_t>(sizeof(A)); }
template <typename A>
inline Vec<A> vld(const A* p) { return *reinterpret_cast<const Vec<A>*>(p); }
template <typename A>
inline void vst(A* p, Vec<A> v) { *reinterpret_cast<Vec<A>*>(p) = v; }
template <typename A>
inline Vec<A> vset(A s) { return Vec<A>{} + s; }
template <typename V>  // V: a Vec<A> (a template parameter of its own: Vec<A> does not deduce A)
inline auto vsum(V v) {
  auto s = v[0];
  for (size_t l = 1; l < sizeof(V) / sizeof(s); ++l) s += v[l];
  return s;
}
template <typename V>
inline V vabs(V v) { return v < 0 ? -v : v; }

// ---- separable filter passes --------------------------------------------------------------
//
// corr: out[j] = sum_k w[k] in[j + k], j in [0, n) (in holds n + K - 1 values): the horizontal
// pass. comb: out[j] = sum_k w[k] rows[k][j]: the vertical pass over ring rows. comb2: two
// consecutive output rows from K + 1 ring rows, out0 from rows[0..K), out1 from rows[1..K].
// The last partial vector of a row is recomputed overlapping (outputs never alias inputs), so
// only rows shorter than a vector run scalar.

template <typename A>
void corr_scalar(const A* in, A* out, int64_t j, int64_t n, const A* w, int64_t K) {
  for (; j < n; ++j) {
    A s = 0;
    for (int64_t k = 0; k < K; ++k) s += w[k] * in[j + k];
    out[j] = s;
  }
}

template <typename A>
void comb_scalar(const A* const* rows, A* out, int64_t j, int64_t n, const A* w, int64_t K) {
  for (; j < n; ++j) {
    A s = 0;
    for (int64_t k = 0; k < K; ++k) s += w[k] * rows[k][j];
    out[j] = s;
  }
}

// Any window (run-time K, taps loaded per use): two output vectors per broadcast tap.
template <typename A>
void corr_any(const A* __restrict in, A* __restrict out, int64_t n, const A* __restrict w, int64_t K) {
  constexpr int64_t L = lanes<A>();
  if (n < L) return corr_scalar(in, out, 0, n, w, K);
  int64_t j = 0;
  for (; j + 2 * L <= n; j += 2 * L) {
    Vec<A> a0 = {}, a1 = {};
    for (int64_t k = 0; k < K; ++k) {
      const Vec<A> wk = vset(w[k]);
      a0 += wk * vld(in + j + k);
      a1 += wk * vld(in + j + L + k);
    }
    vst(out + j, a0);
    vst(out + j + L, a1);
  }
  auto at = [&](int64_t c) {
    Vec<A> acc = {};
    for (int64_t k = 0; k < K; ++k) acc += vset(w[k]) * vld(in + c + k);
    vst(out + c, acc);
  };
  for (; j + L <= n; j += L) at(j);
  if (j < n) at(n - L);
}

template <typename A>
void comb_any(const A* const* __restrict rows, A* __restrict out, int64_t n, const A* __restrict w, int64_t K) {
  constexpr int64_t L = lanes<A>();
  int64_t j = 0;
  for (; j + L <= n; j += L) {
    Vec<A> acc = {};
    for (int64_t k = 0; k < K; ++k) acc += vset(w[k]) * vld(rows[k] + j);
    vst(out + j, acc);
  }
  comb_scalar(rows, out, j, n, w, K);
}

template <typename A>
void comb2_any(const A* const* rows, A* out0, A* out1, int64_t n, const A* w, int64_t K) {
  comb_any(rows, out0, n, w, K);
  comb_any(rows + 1, out1, n, w, K);
}

// Symmetric windows (w[k] == w[KT-1-k], every Gaussian and box window) of a compile-time length:
// taps in registers, w[k] * (a + b) for each mirrored pair (the adds run on the FP add ports,
// beside the FMAs), two accumulators per output to shorten the dependency chains.
template <typename A, int KT>
void corr_sym(const A* __restrict in, A* __restrict out, int64_t n, const A* __restrict w, int64_t K) {
  constexpr int64_t L = lanes<A>();
  constexpr int R = KT / 2;
  if (n < L) return corr_scalar(in, out, 0, n, w, K);
  Vec<A> wv[R + 1];
#pragma GCC unroll 16
  for (int k = 0; k <= R; ++k) wv[k] = vset(w[k]);
  auto at = [&](int64_t c) {
    const A* p = in + c;
    Vec<A> acc[2] = {wv[R] * vld(p + R), Vec<A>{}};
#pragma GCC unroll 16
    for (int k = 0; k < R; ++k) acc[k % 2] += wv[k] * (vld(p + k) + vld(p + KT - 1 - k));
    vst(out + c, acc[0] + acc[1]);
  };
  int64_t j = 0;
  for (; j + L <= n; j += L) at(j);
  if (j < n) at(n - L);
}

template <typename A, int KT>
void comb_sym(const A* const* __restrict rows, A* __restrict out, int64_t n, const A* __restrict w, int64_t K) {
  constexpr int64_t L = lanes<A>();
  constexpr int R = KT / 2;
  if (n < L) return comb_scalar(rows, out, 0, n, w, K);
  Vec<A> wv[R + 1];
  const A* rp[KT];
#pragma GCC unroll 16
  for (int k = 0; k <= R; ++k) wv[k] = vset(w[k]);
#pragma GCC unroll 16
  for (int k = 0; k < KT; ++k) rp[k] = rows[k];
  auto at = [&](int64_t c) {
    Vec<A> acc[2] = {wv[R] * vld(rp[R] + c), Vec<A>{}};
#pragma GCC unroll 16
    for (int k = 0; k < R; ++k) acc[k % 2] += wv[k] * (vld(rp[k] + c) + vld(rp[KT - 1 - k] + c));
    vst(out + c, acc[0] + acc[1]);
  };
  int64_t j = 0;
  for (; j + L <= n; j += L) at(j);
  if (j < n) at(n - L);
}

// Pins a loaded vector in a register: GCC otherwise re-loads a value used twice from memory as
// an operand of its second use, which doubles the loads of comb2_sym.
template <typename V>
inline void keep(V& v) {
#if defined(__AVX__)
  asm("" : "+x"(v));
#else
  (void)v;
#endif
}

// Two output rows share all but two of their K + 1 input rows: each input vector is loaded once.
// The mirrored pairs of both outputs form two chains through the rows (A: 0, K-1, 2, K-3, ...;
// B: K, 1, K-2, 3, ...) in which consecutive elements are a pair of out0 or out1 in turn, so
// only two loaded vectors per chain are live at a time: K + 1 loads for two output vectors.
template <typename A, int KT>
void comb2_sym(const A* const* __restrict rows, A* __restrict out0, A* __restrict out1, int64_t n,
               const A* __restrict w, int64_t K) {
  constexpr int64_t L = lanes<A>();
  constexpr int R = KT / 2;
  if (n < L) return comb_scalar(rows, out0, 0, n, w, K), comb_scalar(rows + 1, out1, 0, n, w, K);
  Vec<A> wv[R + 1];
  const A* rp[KT + 1];
#pragma GCC unroll 16
  for (int k = 0; k <= R; ++k) wv[k] = vset(w[k]);
#pragma GCC unroll 17
  for (int k = 0; k <= KT; ++k) rp[k] = rows[k];
  auto at = [&](int64_t c) {
    Vec<A> acc[4] = {};  // [out0 chain A, out1 chain A, out0 chain B, out1 chain B]
    Vec<A> pa = vld(rp[0] + c), pb = vld(rp[KT] + c);
    keep(pa), keep(pb);
#pragma GCC unroll 16
    for (int t = 0; t < R; ++t) {
      const int ia = (t + 1) % 2 == 0 ? t + 1 : KT - (t + 1);
      const int ib = (t + 1) % 2 == 0 ? KT - (t + 1) : t + 1;
      Vec<A> ca = vld(rp[ia] + c), cb = vld(rp[ib] + c);
      keep(ca), keep(cb);
      acc[t % 2] += wv[t] * (pa + ca);       // chain A: pair t belongs to out (t % 2)
      acc[3 - t % 2] += wv[t] * (pb + cb);   // chain B: to the other output
      pa = ca, pb = cb;
    }
    acc[R % 2] += wv[R] * pa;  // the middle taps: out1's (row R + 1) or out0's (row R)
    acc[3 - R % 2] += wv[R] * pb;
    vst(out0 + c, acc[0] + acc[2]);
    vst(out1 + c, acc[1] + acc[3]);
  };
  int64_t j = 0;
  for (; j + L <= n; j += L) at(j);
  if (j < n) at(n - L);
}

template <typename A>
struct Filters {
  void (*corr)(const A*, A*, int64_t, const A*, int64_t);
  void (*comb)(const A* const*, A*, int64_t, const A*, int64_t);
  void (*comb2)(const A* const*, A*, A*, int64_t, const A*, int64_t);
};

template <typename A, int KT>
constexpr Filters<A> sym_filters() { return {corr_sym<A, KT>, comb_sym<A, KT>, comb2_sym<A, KT>}; }

// The passes for window w of length K: the register-resident symmetric kernels when w is
// symmetric (exactly) and K is one of the usual lengths, else the run-time loops.
template <typename A>
Filters<A> filters_for(const A* w, int64_t K) {
  bool sym = true;
  for (int64_t k = 0; k < K; ++k) sym = sym && w[k] == w[K - 1 - k];
  if (sym) {
    switch (K) {
      case 3: return sym_filters<A, 3>();
      case 5: return sym_filters<A, 5>();
      case 7: return sym_filters<A, 7>();
      case 9: return sym_filters<A, 9>();
      case 11: return sym_filters<A, 11>();
      case 13: return sym_filters<A, 13>();
      case 15: return sym_filters<A, 15>();
      default: break;
    }
  }
  return {corr_any<A>, comb_any<A>, comb2_any<A>};
}

// ---- rows in and out ----------------------------------------------------------------------

// Row `row` of a strided plane (base, element strides sh, sw) into dst[0..W), converted to A.
template <typename T, typename A>
inline void load_src_row(const T* base, int64_t sh, int64_t sw, int64_t row, int64_t W, A* dst) {
  const T* p = base + row * sh;
  if (sw == 1) {
    for (int64_t q = 0; q < W; ++q) dst[q] = load_as<A>(p, q);
  } else {
    for (int64_t q = 0; q < W; ++q) dst[q] = load_as<A>(p, q * sw);
  }
}

// One padded row of a plane into contiguous scratch: dst[0..Wp) (dst[pc] = src(colmap[pc])).
// base: the plane's first element; sh, sw: element strides of rows and columns.
template <typename T, typename A>
inline void load_row(const T* base, int64_t sh, int64_t sw, int64_t row, const Geom& g, const int64_t* colmap,
                     A* dst) {
  A* d = dst + g.off;
  load_src_row(base, sh, sw, row, g.W, d);
  for (int64_t pc = 0; pc < g.off; ++pc) {
    const int64_t a = colmap[pc], b = colmap[g.off + g.W + pc];
    dst[pc] = a < 0 ? A(0) : d[a];
    dst[g.off + g.W + pc] = b < 0 ? A(0) : d[b];
  }
}

// src[0..W) into row `row` of a strided plane (base, element strides sh, sw), converting to T.
template <typename T, typename A>
inline void store_row(T* base, int64_t sh, int64_t sw, int64_t row, const A* src, int64_t W) {
  T* p = base + row * sh;
  if (sw == 1) {
    for (int64_t q = 0; q < W; ++q) store_from<T, A>(p, q, src[q]);
  } else {
    for (int64_t q = 0; q < W; ++q) store_from<T, A>(p, q * sw, src[q]);
  }
}

std::vector<int64_t> make_colmap(const Geom& g) {
  std::vector<int64_t> m(g.Wp);
  for (int64_t pc = 0; pc < g.Wp; ++pc) m[pc] = src_index(pc, g.W, g.off, g.mode);
  return m;
}

// Bands of rows per plane so that few large planes still keep every thread busy: the fewest
// bands for which the tasks split evenly over the threads (or are plenty), each at least
// `min_rows` high (a band re-reads a halo of rows).
inline int64_t band_count(int64_t P, int64_t rows, int64_t min_rows) {
  const int64_t nt = max_threads(), nbmax = std::max<int64_t>(1, rows / min_rows);
  int64_t nb = 1;
  while (nb < nbmax && (P * nb) % nt != 0 && P * nb < 4 * nt) ++nb;
  return nb;
}

// Element stride of ring slots holding n values: an odd number of 64-byte lines, so that the
// K + 1 slots read together at the same offset fall into different L1 sets (slots 4 KiB apart,
// e.g. 4 x 256 floats, all map to one set of the 8-way L1 and evict each other).
template <typename A>
inline int64_t ring_stride(int64_t n) {
  constexpr int64_t line = 64 / static_cast<int64_t>(sizeof(A));
  int64_t lines = (n + line - 1) / line;
  lines += (lines % 2 == 0);
  return lines * line;
}

// ---- forward ------------------------------------------------------------------------------

// The forward stream of one plane band: each padded row's four statistics (x, y, x*x + y*y,
// x*y) filtered horizontally into a ring of K + 1 rows ([K + 1][4][Wo]); output rows are
// vertical combinations of the ring, two at a time (v: [2][4][Wo]). The statistics exx and eyy
// only ever enter SSIM as their sum, so they are filtered as one.
template <typename A>
struct Stream {
  const Geom& g;
  const A* w;
  Filters<A> f;
  int64_t ns, ss;  // ring slots, slot stride
  std::vector<A> ring, prod, v;
  std::vector<const A*> rows;
  Stream(const Geom& g_, const A* w_)
      : g(g_), w(w_), f(filters_for<A>(w_, g_.K)), ns(g_.K + 1), ss(ring_stride<A>(4 * g_.Wo)), ring(ns * ss),
        prod(4 * g_.Wp), v(8 * g_.Wo), rows(g_.K + 1) {}

  // Horizontally filter padded row pr of the plane into its ring slot. With `l1`, returns
  // sum |x - y| over the row's source pixels (0 for a padded copy).
  template <typename T>
  A push(const T* xb, int64_t sxh, int64_t sxw, const T* yb, int64_t syh, int64_t syw, int64_t pr,
         const int64_t* colmap, bool l1) {
    constexpr int64_t L = lanes<A>();
    const int64_t Wo = g.Wo, Wp = g.Wp;
    A* slot = ring.data() + (pr % ns) * ss;
    const int64_t s = src_index(pr, g.H, g.off, g.mode);
    if (s < 0) {  // a zero-pad row: all statistics are zero
      std::fill(slot, slot + 4 * Wo, A(0));
      return A(0);
    }
    A* __restrict px = prod.data();
    A* __restrict py = px + Wp;
    A* __restrict pss = py + Wp;
    A* __restrict pxy = pss + Wp;
    load_row(xb, sxh, sxw, s, g, colmap, px);
    load_row(yb, syh, syw, s, g, colmap, py);
    int64_t j = 0;
    for (; j + L <= Wp; j += L) {
      const Vec<A> a = vld(px + j), b = vld(py + j);
      vst(pss + j, a * a + b * b);
      vst(pxy + j, a * b);
    }
    for (; j < Wp; ++j) pss[j] = px[j] * px[j] + py[j] * py[j], pxy[j] = px[j] * py[j];
    for (int st = 0; st < 4; ++st) f.corr(prod.data() + st * Wp, slot + st * Wo, Wo, w, g.K);
    if (!l1 || pr - g.off != s) return A(0);
    Vec<A> acc = {};
    const A* ix = px + g.off;
    const A* iy = py + g.off;
    int64_t q = 0;
    for (; q + L <= g.W; q += L) acc += vabs(vld(ix + q) - vld(iy + q));
    A t = vsum(acc);
    for (; q < g.W; ++q) t += std::abs(ix[q] - iy[q]);
    return t;
  }

  // v[0..4 Wo) = vertical combination for output row i (needs padded rows i .. i+K-1 pushed);
  // with `two`, also v[4 Wo..8 Wo) for row i + 1 (needs row i + K too).
  void vertical(int64_t i, bool two) {
    const int64_t n = 4 * g.Wo;
    for (int64_t k = 0; k < g.K + two; ++k) rows[k] = ring.data() + ((i + k) % ns) * ss;
    if (two) {
      f.comb2(rows.data(), v.data(), v.data() + n, n, w, g.K);
    } else {
      f.comb(rows.data(), v.data(), n, w, g.K);
    }
  }
};

// SSIM and cs of one output row from v = [mx, my, E[x^2 + y^2], E[xy]] ([4][n]): adds their
// row sums to s_ssim, s_cs; writes the SSIM values to mrow when it is not null.
template <typename A>
void ssim_row(const A* __restrict v, int64_t n, A c1, A c2, A* __restrict mrow, double& s_ssim, double& s_cs) {
  constexpr int64_t L = lanes<A>();
  const A* mx = v;
  const A* my = v + n;
  const A* ss = v + 2 * n;
  const A* sp = v + 3 * n;
  Vec<A> as = {}, ac = {};
  int64_t j = 0;
  for (; j + L <= n; j += L) {
    const Vec<A> a = vld(mx + j), b = vld(my + j), ab = a * b, m2 = a * a + b * b;
    const Vec<A> lum = (ab + ab + c1) / (m2 + c1);
    const Vec<A> d = vld(sp + j) - ab;
    const Vec<A> cs = (d + d + c2) / ((vld(ss + j) - m2) + c2);
    const Vec<A> sm = lum * cs;
    as += sm;
    ac += cs;
    if (mrow) vst(mrow + j, sm);
  }
  A rs = vsum(as), rc = vsum(ac);
  for (; j < n; ++j) {
    const A a = mx[j], b = my[j], ab = a * b, m2 = a * a + b * b;
    const A lum = (2 * ab + c1) / (m2 + c1);
    const A cs = (2 * (sp[j] - ab) + c2) / ((ss[j] - m2) + c2);
    rs += lum * cs;
    rc += cs;
    if (mrow) mrow[j] = lum * cs;
  }
  s_ssim += rs;
  s_cs += rc;
}

template <typename T>
void forward_impl(const T* x, int64_t sxn, int64_t sxc, int64_t sxh, int64_t sxw, const T* y, int64_t syn,
                  int64_t syc, int64_t syh, int64_t syw, int64_t N, int64_t C, int64_t H, int64_t W, int64_t Kw,
                  int mode, const acc_t<T>* w, double c1d, double c2d, acc_t<T>* smap, acc_t<T>* ssim_sum,
                  acc_t<T>* cs_sum, acc_t<T>* l1_sum) {
  using A = acc_t<T>;
  const Geom g(H, W, Kw, mode);
  const A c1 = static_cast<A>(c1d), c2 = static_cast<A>(c2d);
  const int64_t P = N * C;
  const int64_t nb = band_count(P, g.Ho, 32);  // bands of output rows; each re-reads K-1 halo rows
  std::vector<double> part(P * nb * 3);
  const std::vector<int64_t> colmap = make_colmap(g);

  // Small problems stay on one thread: waking a team costs more than the work.
  const int64_t task_work = (g.Ho / nb + g.K) * g.Wp * g.K;
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 18) / std::max<int64_t>(1, task_work));
  parallel_for(P * nb, grain, [&](int64_t tb, int64_t te) {
    Stream<A> st(g, w);
    for (int64_t t = tb; t < te; ++t) {
      const int64_t p = t / nb, b = t % nb, n = p / C, c = p % C;
      const T* xb = x + n * sxn + c * sxc;
      const T* yb = y + n * syn + c * syc;
      const int64_t i0 = b * g.Ho / nb, i1 = (b + 1) * g.Ho / nb;
      // |x - y| of source rows whose padded row is in [i0, i1) (the last band: up to Hp).
      const int64_t l1_end = b + 1 == nb ? g.Hp : i1;
      double s_ssim = 0, s_cs = 0, s_l1 = 0;
      int64_t pf = i0;  // next padded row to push
      for (int64_t i = i0; i < i1; i += 2) {
        const bool two = i + 1 < i1;
        for (; pf < i + g.K + two; ++pf) s_l1 += st.push(xb, sxh, sxw, yb, syh, syw, pf, colmap.data(), pf < l1_end);
        st.vertical(i, two);
        for (int64_t r = 0; r <= two; ++r) {
          A* mrow = smap ? smap + (p * g.Ho + i + r) * g.Wo : nullptr;
          ssim_row<A>(st.v.data() + r * 4 * g.Wo, g.Wo, c1, c2, mrow, s_ssim, s_cs);
        }
      }
      part[t * 3 + 0] = s_ssim;
      part[t * 3 + 1] = s_cs;
      part[t * 3 + 2] = s_l1;
    }
  });
  for (int64_t p = 0; p < P; ++p) {  // fixed order: deterministic
    double a = 0, b = 0, c = 0;
    for (int64_t k = 0; k < nb; ++k) {
      a += part[(p * nb + k) * 3];
      b += part[(p * nb + k) * 3 + 1];
      c += part[(p * nb + k) * 3 + 2];
    }
    ssim_sum[p] = static_cast<A>(a);
    cs_sum[p] = static_cast<A>(b);
    l1_sum[p] = static_cast<A>(c);
  }
}

// ---- backward -----------------------------------------------------------------------------

// d loss / d (mx, my, E[x^2 + y^2], E[xy]) at each pixel of one output row, from v ([4][n], as
// in ssim_row), the per-pixel weight of the SSIM term (gs0, plus gmr[j] when gmr is not null)
// and the weight gc of the cs term. Writes the four maps to G + m * gst, m = 0..3.
template <typename A>
void grad_row(const A* __restrict v, int64_t n, const A* __restrict gmr, A gs0, A gc, A c1, A c2,
              A* __restrict G, int64_t gst) {
  constexpr int64_t L = lanes<A>();
  const A* mx = v;
  const A* my = v + n;
  const A* ss = v + 2 * n;
  const A* sp = v + 3 * n;
  auto one = [&](auto a, auto b, auto s, auto p, auto gs, auto& gmx, auto& gmy, auto& ge, auto& gxy) {
    const auto ab = a * b, m2 = a * a + b * b;
    const auto r1 = A(1) / (m2 + c1), r2 = A(1) / ((s - m2) + c2);
    const auto lum = (ab + ab + c1) * r1;
    const auto d = p - ab;
    const auto cs = (d + d + c2) * r2;
    const auto d_cs = gs * lum + gc;
    ge = -d_cs * cs * r2;
    gxy = (d_cs + d_cs) * r2;
    const auto t1 = A(2) * (gs * cs) * r1;
    gmx = t1 * (b - lum * a) - A(2) * a * ge - b * gxy;
    gmy = t1 * (a - lum * b) - A(2) * b * ge - a * gxy;
  };
  int64_t j = 0;
  for (; j + L <= n; j += L) {
    const Vec<A> gs = gmr ? vld(gmr + j) + gs0 : vset(gs0);
    Vec<A> gmx, gmy, ge, gxy;
    one(vld(mx + j), vld(my + j), vld(ss + j), vld(sp + j), gs, gmx, gmy, ge, gxy);
    vst(G + j, gmx);
    vst(G + gst + j, gmy);
    vst(G + 2 * gst + j, ge);
    vst(G + 3 * gst + j, gxy);
  }
  for (; j < n; ++j) {
    A gmx, gmy, ge, gxy;
    one(mx[j], my[j], ss[j], sp[j], gmr ? gmr[j] + gs0 : gs0, gmx, gmy, ge, gxy);
    G[j] = gmx, G[gst + j] = gmy, G[2 * gst + j] = ge, G[3 * gst + j] = gxy;
  }
}

// dx, dy of source row s from its folded gradient rows f4 = [T_mx, T_my, T_s, T_xy][W]:
// dx = T_mx + 2x T_s + y T_xy + gl sign(x - y), dy likewise with x and y swapped, -gl sign.
// xs, ys, dxs, dys: scratch of W each.
template <typename T, typename A>
void finish_row(const T* xb, int64_t sxh, int64_t sxw, const T* yb, int64_t syh, int64_t syw, T* dxb,
                int64_t dxh, int64_t dxw, T* dyb, int64_t dyh, int64_t dyw, int64_t W, int64_t s,
                const A* __restrict f4, A gl, A* __restrict xs, A* __restrict ys, A* __restrict dxs,
                A* __restrict dys) {
  constexpr int64_t L = lanes<A>();
  load_src_row(xb, sxh, sxw, s, W, xs);
  load_src_row(yb, syh, syw, s, W, ys);
  const A* tmx = f4;
  const A* tmy = f4 + W;
  const A* ts = f4 + 2 * W;
  const A* txy = f4 + 3 * W;
  int64_t q = 0;
  for (; q + L <= W; q += L) {
    const Vec<A> xv = vld(xs + q), yv = vld(ys + q), t2 = vld(ts + q) * A(2), tp = vld(txy + q);
    const Vec<A> sg = gl * (__builtin_convertvector(xv < yv, Vec<A>) - __builtin_convertvector(xv > yv, Vec<A>));
    vst(dxs + q, vld(tmx + q) + xv * t2 + yv * tp + sg);
    vst(dys + q, vld(tmy + q) + yv * t2 + xv * tp - sg);
  }
  for (; q < W; ++q) {
    const A xv = xs[q], yv = ys[q];
    const A sg = gl * static_cast<A>((xv > yv) - (xv < yv));
    dxs[q] = tmx[q] + 2 * xv * ts[q] + yv * txy[q] + sg;
    dys[q] = tmy[q] + 2 * yv * ts[q] + xv * txy[q] - sg;
  }
  store_row(dxb, dxh, dxw, s, dxs, W);
  store_row(dyb, dyh, dyw, s, dys, W);
}

// Column fold of one padded gradient row t4 ([4][Wp]) onto the W source columns f4 ([4][W]).
template <typename A>
void fold_columns(const A* t4, const Geom& g, const int64_t* colmap, A* f4) {
  const int64_t W = g.W, Wp = g.Wp;
  for (int k = 0; k < 4; ++k) {
    const A* tk = t4 + k * Wp;
    A* fk = f4 + k * W;
    std::copy(tk + g.off, tk + g.off + W, fk);
    for (int64_t pc = 0; pc < g.off; ++pc) {
      const int64_t a = colmap[pc], b = colmap[g.off + W + pc];
      if (a >= 0) fk[a] += tk[pc];
      if (b >= 0) fk[b] += tk[g.off + W + pc];
    }
  }
}

// Scratch of one backward task: the forward stream; the gradient maps of one output row with
// K-1 zeros on both sides ([4][Wo + 2K - 2]); their transposed horizontal filter in a ring of
// K + 1 rows ([K + 1][4][Wp]); two padded gradient rows ([2][4][Wp]), a fold ([4][W]), row scratch.
template <typename A>
struct BackScratch {
  Stream<A> st;
  int64_t gw, hs;  // gpad row length, hring slot stride
  std::vector<A> gpad, hring, zero, t4, f4, rows4;
  std::vector<const A*> rows;
  std::vector<A> wflip;
  BackScratch(const Geom& g, const A* w)
      : st(g, w), gw(g.Wo + 2 * (g.K - 1)), hs(ring_stride<A>(4 * g.Wp)), gpad(4 * gw, A(0)), hring((g.K + 1) * hs),
        zero(4 * g.Wp, A(0)), t4(2 * hs), f4(4 * g.W), rows4(4 * g.W), rows(g.K + 1), wflip(w, w + g.K) {
    std::reverse(wflip.begin(), wflip.end());
  }
};

// One padded gradient row t4 ([4][Wp]) of padded row pr: fold its columns onto the source
// columns, then finish its source row, or add it to the row's pending sum (pend: [np][4][W]).
template <typename T>
void fold_and_finish(BackScratch<acc_t<T>>& sc, const Geom& g, const int64_t* colmap, const int64_t* pend_slot,
                     acc_t<T>* pend, const T* xb, int64_t sxh, int64_t sxw, const T* yb, int64_t syh, int64_t syw,
                     T* dxb, int64_t dxh, int64_t dxw, T* dyb, int64_t dyh, int64_t dyw, acc_t<T> gl, int64_t pr,
                     const acc_t<T>* t4) {
  using A = acc_t<T>;
  const int64_t W = g.W;
  const int64_t s = src_index(pr, g.H, g.off, g.mode);
  if (s < 0) return;
  const A* f = t4;
  if (g.off > 0) fold_columns(t4, g, colmap, sc.f4.data()), f = sc.f4.data();
  if (pend_slot[s] >= 0) {
    A* pk = pend + pend_slot[s] * 4 * W;
    for (int64_t q = 0; q < 4 * W; ++q) pk[q] += f[q];
    return;
  }
  A* r = sc.rows4.data();
  finish_row<T, A>(xb, sxh, sxw, yb, syh, syw, dxb, dxh, dxw, dyb, dyh, dyw, W, s, f, gl, r, r + W, r + 2 * W, r + 3 * W);
}

// Gradient of one plane band: padded rows [p0, p1) of the plane (their gradient needs output
// rows p0-K+1 .. p1-1, whose statistics need padded rows p0-K+1 .. p1+K-2). Output rows go in
// pairs: the statistics of two rows from one vertical pass, and the padded gradient rows
// T[pr] = sum_k w[k] Gh[pr - k] of two rows from another.
template <typename T>
void backward_band(BackScratch<acc_t<T>>& sc, const Geom& g, const int64_t* colmap, const int64_t* pend_slot,
                   acc_t<T>* pend, const T* xb, int64_t sxh, int64_t sxw, const T* yb, int64_t syh, int64_t syw,
                   T* dxb, int64_t dxh, int64_t dxw, T* dyb, int64_t dyh, int64_t dyw, const acc_t<T>* gm,
                   acc_t<T> gs0, acc_t<T> gc, acc_t<T> gl, acc_t<T> c1, acc_t<T> c2, int64_t p0, int64_t p1) {
  using A = acc_t<T>;
  const int64_t K = g.K, Wo = g.Wo, Wp = g.Wp, ns = K + 1;
  const int64_t ilo = std::max<int64_t>(0, p0 - (K - 1)), ihi = std::min<int64_t>(g.Ho, p1);
  Stream<A>& st = sc.st;
  auto hrow = [&](int64_t i) { return (i >= ilo && i < ihi) ? sc.hring.data() + (i % ns) * sc.hs : sc.zero.data(); };
  // Padded rows pr (and pr + 1 with `two`), whose Gh rows are all in the ring.
  auto emit = [&](int64_t pr, bool two) {
    for (int64_t k = 0; k < K + two; ++k) sc.rows[k] = hrow(pr + two - k);
    A* t = sc.t4.data();
    if (two) {
      st.f.comb2(sc.rows.data(), t + sc.hs, t, 4 * Wp, st.w, K);  // out0: T[pr + 1], out1: T[pr]
    } else {
      st.f.comb(sc.rows.data(), t, 4 * Wp, st.w, K);
    }
    for (int64_t r = 0; r <= two; ++r)
      fold_and_finish<T>(sc, g, colmap, pend_slot, pend, xb, sxh, sxw, yb, syh, syw, dxb, dxh, dxw, dyb, dyh, dyw,
                         gl, pr + r, t + r * sc.hs);
  };
  auto emit_range = [&](int64_t a, int64_t b) {  // padded rows [a, b) ∩ [p0, p1)
    a = std::max(a, p0), b = std::min(b, p1);
    for (; a < b; a += 2) emit(a, a + 1 < b);
  };
  int64_t pf = ilo;  // next padded row of the forward stream
  for (int64_t i = ilo; i < ihi; i += 2) {
    const bool two = i + 1 < ihi;
    for (; pf < i + K + two; ++pf) st.push(xb, sxh, sxw, yb, syh, syw, pf, colmap, false);
    st.vertical(i, two);
    for (int64_t r = 0; r <= two; ++r) {
      A* G = sc.gpad.data() + (K - 1);
      grad_row<A>(st.v.data() + r * 4 * Wo, Wo, gm ? gm + (i + r) * Wo : nullptr, gs0, gc, c1, c2, G, sc.gw);
      A* h = sc.hring.data() + ((i + r) % ns) * sc.hs;
      for (int m = 0; m < 4; ++m) st.f.corr(sc.gpad.data() + m * sc.gw, h + m * Wp, Wp, sc.wflip.data(), K);
    }
    emit_range(i, i + 1 + two);
  }
  emit_range(ihi, p1);
}

template <typename T>
void backward_impl(const acc_t<T>* gss, const acc_t<T>* gcs, const acc_t<T>* gl1, const acc_t<T>* gmap, const T* x,
                   int64_t sxn, int64_t sxc, int64_t sxh, int64_t sxw, const T* y, int64_t syn, int64_t syc,
                   int64_t syh, int64_t syw, T* dx, int64_t dxn, int64_t dxc, int64_t dxh, int64_t dxw, T* dy,
                   int64_t dyn, int64_t dyc, int64_t dyh, int64_t dyw, int64_t N, int64_t C, int64_t H_, int64_t W_,
                   int64_t Kw, int mode, const acc_t<T>* w, double c1d, double c2d) {
  using A = acc_t<T>;
  const Geom g(H_, W_, Kw, mode);
  const A c1 = static_cast<A>(c1d), c2 = static_cast<A>(c2d);
  const int64_t P = N * C, W = g.W, H = g.H;
  const std::vector<int64_t> colmap = make_colmap(g);
  // Source rows that several padded rows copy (reflect: 1..r and H-1-r..H-2, ...) are summed
  // per band in `pend` and finished after all bands, in band order (deterministic).
  std::vector<int64_t> pend_slot(H, -1), pend_rows;
  for (int64_t pr = 0; pr < g.Hp; ++pr) {
    if (pr >= g.off && pr < g.off + H) continue;
    const int64_t s = src_index(pr, H, g.off, g.mode);
    if (s >= 0 && pend_slot[s] < 0) {
      pend_slot[s] = static_cast<int64_t>(pend_rows.size());
      pend_rows.push_back(s);
    }
  }
  const int64_t np = static_cast<int64_t>(pend_rows.size());
  const int64_t nb = band_count(P, g.Hp, 64);  // bands of padded rows; each recomputes ~2K halo rows
  std::vector<A> pend(P * nb * np * 4 * W, A(0));
  auto plane = [&](int64_t p, auto& px, auto& py, auto& pdx, auto& pdy) {
    const int64_t n = p / C, c = p % C;
    px = x + n * sxn + c * sxc, py = y + n * syn + c * syc, pdx = dx + n * dxn + c * dxc, pdy = dy + n * dyn + c * dyc;
  };
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 18) / std::max<int64_t>(1, g.Hp / nb * g.Wp * g.K));
  parallel_for(P * nb, grain, [&](int64_t tb, int64_t te) {
    BackScratch<A> sc(g, w);
    for (int64_t t = tb; t < te; ++t) {
      const int64_t p = t / nb, b = t % nb;
      const T *xb, *yb;
      T *dxb, *dyb;
      plane(p, xb, yb, dxb, dyb);
      backward_band<T>(sc, g, colmap.data(), pend_slot.data(), pend.data() + t * np * 4 * W, xb, sxh, sxw, yb, syh,
                       syw, dxb, dxh, dxw, dyb, dyh, dyw, gmap ? gmap + p * g.Ho * g.Wo : nullptr, gss[p], gcs[p],
                       gl1[p], c1, c2, b * g.Hp / nb, (b + 1) * g.Hp / nb);
    }
  });
  if (np == 0) return;
  parallel_for(P * np, std::max<int64_t>(1, 65536 / (W * nb)), [&](int64_t tb, int64_t te) {
    std::vector<A> f(4 * W), r(4 * W);
    for (int64_t t = tb; t < te; ++t) {
      const int64_t p = t / np, sl = t % np;
      std::fill(f.begin(), f.end(), A(0));
      for (int64_t b = 0; b < nb; ++b) {
        const A* pk = pend.data() + ((p * nb + b) * np + sl) * 4 * W;
        for (int64_t q = 0; q < 4 * W; ++q) f[q] += pk[q];
      }
      const T *xb, *yb;
      T *dxb, *dyb;
      plane(p, xb, yb, dxb, dyb);
      finish_row<T, A>(xb, sxh, sxw, yb, syh, syw, dxb, dxh, dxw, dyb, dyh, dyw, W, pend_rows[sl],
                       f.data(), gl1[p], r.data(), r.data() + W, r.data() + 2 * W, r.data() + 3 * W);
    }
  });
}
