// SSIM CPU kernels, included twice by ssim_cpu.cpp: once for the baseline ISA and once under
// `#pragma GCC target("avx2,fma")` (chosen at run time), each inside its own namespace. Only
// this op's own templates live here; std and common.h helpers come from outside the pragma.
// No include guard on purpose.

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

// One padded row of a plane into contiguous scratch: dst[0..Wp) (dst[pc] = src(colmap[pc])).
// base: the plane's first element; sh, sw: element strides of rows and columns.
template <typename T, typename A>
inline void load_row(const T* base, int64_t sh, int64_t sw, int64_t row, const Geom& g, const int64_t* colmap,
                     A* dst) {
  const T* p = base + row * sh;
  A* d = dst + g.off;
  if (sw == 1) {
    for (int64_t q = 0; q < g.W; ++q) d[q] = load_as<A>(p, q);
  } else {
    for (int64_t q = 0; q < g.W; ++q) d[q] = load_as<A>(p, q * sw);
  }
  for (int64_t pc = 0; pc < g.off; ++pc) {
    const int64_t a = colmap[pc], b = colmap[g.off + g.W + pc];
    dst[pc] = a < 0 ? A(0) : d[a];
    dst[g.off + g.W + pc] = b < 0 ? A(0) : d[b];
  }
}

// Scratch for the forward stream of one plane band: the ring of horizontally filtered
// statistic rows ([K][5][Wo]), the padded row products ([5][Wp]) and the vertical sum ([5][Wo]).
template <typename A>
struct Stream {
  const Geom& g;
  const A* w;
  std::vector<A> ring, prod, v;
  Stream(const Geom& g_, const A* w_) : g(g_), w(w_), ring(g_.K * 5 * g_.Wo), prod(5 * g_.Wp), v(5 * g_.Wo) {}

  // Horizontally filter padded row pr of the plane into its ring slot.
  template <typename T>
  void push(const T* xb, int64_t sxh, int64_t sxw, const T* yb, int64_t syh, int64_t syw, int64_t pr,
            const int64_t* colmap) {
    const int64_t Wo = g.Wo, Wp = g.Wp, K = g.K;
    A* slot = ring.data() + (pr % K) * 5 * Wo;
    const int64_t s = src_index(pr, g.H, g.off, g.mode);
    if (s < 0) {  // a zero-pad row: all five statistics are zero
      std::fill(slot, slot + 5 * Wo, A(0));
      return;
    }
    A* px = prod.data();
    A* py = px + Wp;
    A* pxx = py + Wp;
    A* pyy = pxx + Wp;
    A* pxy = pyy + Wp;
    load_row(xb, sxh, sxw, s, g, colmap, px);
    load_row(yb, syh, syw, s, g, colmap, py);
    for (int64_t j = 0; j < Wp; ++j) {
      pxx[j] = px[j] * px[j];
      pyy[j] = py[j] * py[j];
      pxy[j] = px[j] * py[j];
    }
    for (int st = 0; st < 5; ++st) {
      const A* in = prod.data() + st * Wp;
      A* out = slot + st * Wo;
      const A w0 = w[0];
      for (int64_t j = 0; j < Wo; ++j) out[j] = w0 * in[j];
      for (int64_t k = 1; k < K; ++k) {
        const A wk = w[k];
        const A* ink = in + k;
        for (int64_t j = 0; j < Wo; ++j) out[j] += wk * ink[j];
      }
    }
  }

  // v = vertical combination for output row i (needs padded rows i .. i+K-1 pushed).
  void vertical(int64_t i) {
    const int64_t n = 5 * g.Wo, K = g.K;
    A* vv = v.data();
    const A* r0 = ring.data() + (i % K) * n;
    const A w0 = w[0];
    for (int64_t j = 0; j < n; ++j) vv[j] = w0 * r0[j];
    for (int64_t k = 1; k < K; ++k) {
      const A* rk = ring.data() + ((i + k) % K) * n;
      const A wk = w[k];
      for (int64_t j = 0; j < n; ++j) vv[j] += wk * rk[j];
    }
  }
};

std::vector<int64_t> make_colmap(const Geom& g) {
  std::vector<int64_t> m(g.Wp);
  for (int64_t pc = 0; pc < g.Wp; ++pc) m[pc] = src_index(pc, g.W, g.off, g.mode);
  return m;
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
  // Bands of output rows so that few large planes still use every thread; each band
  // re-reads K-1 halo rows, so bands stay at least 32 rows high.
  const int64_t want = (4 * max_threads() + P - 1) / P;
  const int64_t nb = std::max<int64_t>(1, std::min<int64_t>(want, g.Ho / 32));
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
      double s_ssim = 0, s_cs = 0, s_l1 = 0;
      for (int64_t pr = i0; pr < i1 + g.K - 1; ++pr) {
        st.push(xb, sxh, sxw, yb, syh, syw, pr, colmap.data());
        const int64_t i = pr - (g.K - 1);
        if (i < i0) continue;
        st.vertical(i);
        const int64_t Wo = g.Wo;
        const A* mx = st.v.data();
        const A* my = mx + Wo;
        const A* exx = my + Wo;
        const A* eyy = exx + Wo;
        const A* exy = eyy + Wo;
        A* mrow = smap ? smap + (p * g.Ho + i) * Wo : nullptr;
        A row_s = 0, row_c = 0;
        for (int64_t j = 0; j < Wo; ++j) {
          const A a = mx[j], bb = my[j];
          const A lum = (2 * a * bb + c1) / (a * a + bb * bb + c1);
          const A cs = (2 * (exy[j] - a * bb) + c2) / ((exx[j] - a * a) + (eyy[j] - bb * bb) + c2);
          row_s += lum * cs;
          row_c += cs;
          if (mrow) mrow[j] = lum * cs;
        }
        s_ssim += row_s;
        s_cs += row_c;
      }
      // |x - y| over this band's share of the source rows.
      const int64_t h0 = b * g.H / nb, h1 = (b + 1) * g.H / nb;
      for (int64_t h = h0; h < h1; ++h) {
        A acc = 0;
        for (int64_t q = 0; q < g.W; ++q) acc += std::abs(load_as<A>(xb, h * sxh + q * sxw) - load_as<A>(yb, h * syh + q * syw));
        s_l1 += acc;
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

// d loss / d (mx, my, exx = eyy, exy) at each pixel of one output row, from the five filtered
// statistics, the per-pixel weight gs of the SSIM term and the weight gc of the cs term.
template <typename A>
void ssim_grad_row(const A* __restrict mx, const A* __restrict my, const A* __restrict exx, const A* __restrict eyy,
                   const A* __restrict exy, const A* __restrict gsr, A gc, A c1, A c2, int64_t Wo,
                   A* __restrict g_mx, A* __restrict g_my, A* __restrict g_e, A* __restrict g_xy) {
  for (int64_t j = 0; j < Wo; ++j) {
    const A a = mx[j], b = my[j];
    const A B1 = a * a + b * b + c1;
    const A lum = (2 * a * b + c1) / B1;
    const A B2 = (exx[j] - a * a) + (eyy[j] - b * b) + c2;
    const A cs = (2 * (exy[j] - a * b) + c2) / B2;
    const A gs = gsr[j];
    const A d_l = gs * cs;
    const A d_cs = gs * lum + gc;
    const A ge = -d_cs * cs / B2;
    const A gxy = 2 * d_cs / B2;
    const A t1 = 2 * d_l / B1;
    g_mx[j] = t1 * (b - lum * a) - 2 * a * ge - b * gxy;
    g_my[j] = t1 * (a - lum * b) - 2 * b * ge - a * gxy;
    g_e[j] = ge;
    g_xy[j] = gxy;
  }
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
  const int64_t P = N * C, K = g.K, Wo = g.Wo, Wp = g.Wp, W = g.W, H = g.H;
  const std::vector<int64_t> colmap = make_colmap(g);
  // Source rows that padded rows copy (reflect: 1..r and H-1-r..H-2, ...) receive several
  // padded rows; they are accumulated in `pend` and finished after the plane.
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

  // One plane per task: the fold of padded rows onto source rows stays inside the task.
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 18) / std::max<int64_t>(1, g.Hp * g.Wp * K));
  parallel_for(P, grain, [&](int64_t tb, int64_t te) {
    Stream<A> st(g, w);
    std::vector<A> G(4 * Wo), gsv(Wo), h(4 * Wp), T4(K * 4 * Wp), f(4 * W), pend(std::max<int64_t>(1, np) * 4 * W);
    for (int64_t p = tb; p < te; ++p) {
      const int64_t n = p / C, c = p % C;
      const T* xb = x + n * sxn + c * sxc;
      const T* yb = y + n * syn + c * syc;
      T* dxb = dx + n * dxn + c * dxc;
      T* dyb = dy + n * dyn + c * dyc;
      const A gs0 = gss[p], gc = gcs[p], gl = gl1[p];
      const A* gm = gmap ? gmap + p * g.Ho * Wo : nullptr;
      std::fill(T4.begin(), T4.end(), A(0));
      std::fill(pend.begin(), pend.end(), A(0));

      // dx, dy of source row s from its folded gradient rows f4 = [T_mx, T_my, T_e, T_exy][W].
      auto finish = [&](int64_t s, const A* f4) {
        const A* tmx = f4;
        const A* tmy = f4 + W;
        const A* te_ = f4 + 2 * W;
        const A* txy = f4 + 3 * W;
        for (int64_t q = 0; q < W; ++q) {
          const A xv = load_as<A>(xb, s * sxh + q * sxw), yv = load_as<A>(yb, s * syh + q * syw);
          const A sg = gl * static_cast<A>((xv > yv) - (xv < yv));
          store_from<T, A>(dxb, s * dxh + q * dxw, tmx[q] + 2 * xv * te_[q] + yv * txy[q] + sg);
          store_from<T, A>(dyb, s * dyh + q * dyw, tmy[q] + 2 * yv * te_[q] + xv * txy[q] - sg);
        }
      };
      // Padded row pr is complete: fold its columns, then finish its source row or park it.
      auto emit = [&](int64_t pr) {
        A* t = T4.data() + (pr % K) * 4 * Wp;
        const int64_t s = src_index(pr, H, g.off, g.mode);
        if (s >= 0) {
          for (int k = 0; k < 4; ++k) {
            const A* tk = t + k * Wp;
            A* fk = f.data() + k * W;
            for (int64_t q = 0; q < W; ++q) fk[q] = tk[g.off + q];
            for (int64_t pc = 0; pc < g.off; ++pc) {
              const int64_t a = colmap[pc], b = colmap[g.off + W + pc];
              if (a >= 0) fk[a] += tk[pc];
              if (b >= 0) fk[b] += tk[g.off + W + pc];
            }
          }
          const int64_t slot = pend_slot[s];
          if (slot < 0) {
            finish(s, f.data());
          } else {
            A* pk = pend.data() + slot * 4 * W;
            for (int64_t q = 0; q < 4 * W; ++q) pk[q] += f[q];
          }
        }
        std::fill(t, t + 4 * Wp, A(0));  // the slot is reused by padded row pr + K
      };

      for (int64_t pr = 0; pr < g.Hp; ++pr) {
        st.push(xb, sxh, sxw, yb, syh, syw, pr, colmap.data());
        const int64_t i = pr - (K - 1);
        if (i < 0) continue;
        st.vertical(i);
        const A* __restrict mx = st.v.data();
        const A* __restrict my = mx + Wo;
        const A* __restrict exx = my + Wo;
        const A* __restrict eyy = exx + Wo;
        const A* __restrict exy = eyy + Wo;
        // Per-pixel weight of the SSIM term (a separate pass keeps the loop below branch-free).
        A* __restrict gsr = gsv.data();
        if (gm) {
          const A* gmr = gm + i * Wo;
          for (int64_t j = 0; j < Wo; ++j) gsr[j] = gs0 + gmr[j];
        } else {
          std::fill(gsr, gsr + Wo, gs0);
        }
        A* __restrict g_mx = G.data();
        A* __restrict g_my = g_mx + Wo;
        A* __restrict g_e = g_my + Wo;
        A* __restrict g_xy = g_e + Wo;
        ssim_grad_row<A>(mx, my, exx, eyy, exy, gsr, gc, c1, c2, Wo, g_mx, g_my, g_e, g_xy);
        // Transposed horizontal filter onto the padded width, then scatter to padded rows i..i+K-1.
        std::fill(h.begin(), h.end(), A(0));
        for (int k4 = 0; k4 < 4; ++k4) {
          const A* gk = G.data() + k4 * Wo;
          A* hk = h.data() + k4 * Wp;
          for (int64_t k = 0; k < K; ++k) {
            const A wk = w[k];
            A* hkk = hk + k;
            for (int64_t j = 0; j < Wo; ++j) hkk[j] += wk * gk[j];
          }
        }
        for (int64_t k = 0; k < K; ++k) {
          A* tk = T4.data() + ((i + k) % K) * 4 * Wp;
          const A wk = w[k];
          const A* hh = h.data();
          for (int64_t q = 0; q < 4 * Wp; ++q) tk[q] += wk * hh[q];
        }
        emit(i);
      }
      for (int64_t pr = g.Ho; pr < g.Hp; ++pr) emit(pr);
      for (int64_t sl = 0; sl < np; ++sl) finish(pend_rows[sl], pend.data() + sl * 4 * W);
    }
  });
}

