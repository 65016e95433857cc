// sparse_decode CPU kernels, included twice by sparse_decode_cpu.cpp: once for the baseline ISA
// and once under `#pragma GCC target("avx2,fma")` (chosen at run time), each inside its own
// namespace, so that the wheel stays portable while the row sweeps run 8 floats per
// instruction where the CPU has AVX2 (fbgemm's embedding_bag is AVX2/AVX-512). Only this op's
// templates live here; std and common.h helpers come from outside the pragma. No include guard
// on purpose.

// acc[n] += v * w[n] for one weight row (vectorizable for float/double storage).
template <typename T, typename A>
inline void axpy_row(A* __restrict acc, A v, const T* __restrict w, int64_t N) {
#pragma omp simd
  for (int64_t n = 0; n < N; ++n) acc[n] += v * load_as<A>(w, n);
}

// Four rows at once: a quarter of the loads/stores of acc.
template <typename T, typename A>
inline void axpy_row4(A* __restrict acc, A v0, const T* __restrict w0, A v1, const T* __restrict w1,
                      A v2, const T* __restrict w2, A v3, const T* __restrict w3, int64_t N) {
#pragma omp simd
  for (int64_t n = 0; n < N; ++n)
    acc[n] += v0 * load_as<A>(w0, n) + v1 * load_as<A>(w1, n) + v2 * load_as<A>(w2, n) +
              v3 * load_as<A>(w3, n);
}

template <typename A, typename T>
inline A dot_row(const A* __restrict x, const T* __restrict w, int64_t N) {
  A s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t n = 0; n < N; ++n) s += x[n] * load_as<A>(w, n);
  return s;
}

// Touch the weight rows that batch row `idx` (K indices) will gather, so that they stream in
// while the current row is computed (the gathers are random, the hardware prefetcher only
// follows each row after its first lines).
template <typename T, typename I>
inline void prefetch_rows(const T* weight, const I* idx, int64_t K, int64_t D, int64_t N) {
  constexpr int64_t kLine = 64 / static_cast<int64_t>(sizeof(T));
  for (int64_t j = 0; j < K; ++j) {
    const int64_t i = idx[j];
    if (i < 0 || i >= D) continue;
    const T* row = weight + i * N;
    for (int64_t n = 0; n < N; n += kLine) __builtin_prefetch(row + n, 0, 1);
  }
}

// The forward prefetches the weight row of the entry this many entries ahead (across batch
// rows), one cache line per line it sweeps, as fbgemm's embedding kernels do: the gathers of the
// next entries are in flight while the current rows are summed. (A burst of all the next batch
// row's lines before each row, 32 rows x 48 lines, overfills the miss buffers and then leaves the
// sweep after it with nothing in flight: 1.6x slower on random rows.)
constexpr int64_t kPrefetchAhead = 16;

// Weight row of flat entry e (clamped to the last entry and to a valid row: a prefetch never
// faults, but the pointer must stay inside weight).
template <typename T, typename I>
inline const T* ahead_row(const T* weight, const I* indices, int64_t e, int64_t E, int64_t D, int64_t N) {
  const int64_t i = indices[std::min(e, E - 1)];
  return weight + (i >= 0 && i < D ? i : 0) * N;
}

// axpy_row4 line by line, each line's sweep issuing the prefetch of the same line of rows pf[0..4).
template <typename T, typename A>
inline void axpy_row4_pf(A* __restrict acc, const A* v, const T* const* w, const T* const* pf, int64_t N) {
  constexpr int64_t kLine = 64 / static_cast<int64_t>(sizeof(T));
  int64_t n = 0;
  for (; n + kLine <= N; n += kLine) {
    for (int q = 0; q < 4; ++q) __builtin_prefetch(pf[q] + n, 0, 3);
    axpy_row4<T, A>(acc + n, v[0], w[0] + n, v[1], w[1] + n, v[2], w[2] + n, v[3], w[3] + n, kLine);
  }
  if (n < N) axpy_row4<T, A>(acc + n, v[0], w[0] + n, v[1], w[1] + n, v[2], w[2] + n, v[3], w[3] + n, N - n);
}

// values, indices: [B, K]; weight: [D, N]; bias: [N] or null; out: [B, N]. All contiguous.
template <typename T, typename I>
void forward_impl(const T* values, const I* indices, const T* weight, const T* bias, T* out, int64_t B,
                  int64_t K, int64_t D, int64_t N) {
  using A = acc_t<T>;
  std::atomic<bool> bad{false};
  // ~K*N multiply-adds per row: a few rows are enough to be worth a thread.
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, K * N));
  parallel_for(B, grain, [&](int64_t b0, int64_t b1) {
    std::vector<A> acc(N);
    for (int64_t b = b0; b < b1; ++b) {
      if (bias) {
        for (int64_t n = 0; n < N; ++n) acc[n] = load_as<A>(bias, n);
      } else {
        std::fill(acc.begin(), acc.end(), A(0));
      }
      const I* idx = indices + b * K;
      const T* val = values + b * K;
      int64_t j = 0;
      bool row_bad = false;
      for (; j + 4 <= K; j += 4) {
        const int64_t i0 = idx[j], i1 = idx[j + 1], i2 = idx[j + 2], i3 = idx[j + 3];
        if ((i0 | i1 | i2 | i3) < 0 || i0 >= D || i1 >= D || i2 >= D || i3 >= D) {
          row_bad = true;
          break;
        }
        const int64_t e = b * K + j + kPrefetchAhead;
        const T* pf[4] = {ahead_row(weight, indices, e, B * K, D, N), ahead_row(weight, indices, e + 1, B * K, D, N),
                          ahead_row(weight, indices, e + 2, B * K, D, N), ahead_row(weight, indices, e + 3, B * K, D, N)};
        const A v[4] = {load_as<A>(val, j), load_as<A>(val, j + 1), load_as<A>(val, j + 2), load_as<A>(val, j + 3)};
        const T* w[4] = {weight + i0 * N, weight + i1 * N, weight + i2 * N, weight + i3 * N};
        axpy_row4_pf<T, A>(acc.data(), v, w, pf, N);
      }
      for (; !row_bad && j < K; ++j) {
        const int64_t i = idx[j];
        if (i < 0 || i >= D) {
          row_bad = true;
          break;
        }
        axpy_row<T, A>(acc.data(), load_as<A>(val, j), weight + i * N, N);
      }
      if (row_bad) bad.store(true, std::memory_order_relaxed);
      T* o = out + b * N;
      for (int64_t n = 0; n < N; ++n) store_from<T, A>(o, n, acc[n]);
    }
  });
  PYAEPLUS_CHECK(!bad.load(), "sparse_decode: an index is out of range [0, D)");
}

// grad_out: [B, N]; indices: [B, K]; weight: [D, N]; grad_values: [B, K]. All contiguous.
template <typename T, typename I>
void grad_values_impl(const T* grad_out, const I* indices, const T* weight, T* grad_values, int64_t B,
                      int64_t K, int64_t D, int64_t N) {
  using A = acc_t<T>;
  std::atomic<bool> bad{false};
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, K * N));
  parallel_for(B, grain, [&](int64_t b0, int64_t b1) {
    std::vector<A> g(N);  // grad_out row in the accumulation type, converted once per row
    for (int64_t b = b0; b < b1; ++b) {
      for (int64_t n = 0; n < N; ++n) g[n] = load_as<A>(grad_out + b * N, n);
      const I* idx = indices + b * K;
      if (b + 1 < b1) prefetch_rows(weight, idx + K, K, D, N);
      for (int64_t j = 0; j < K; ++j) {
        const int64_t i = idx[j];
        A s = 0;
        if (i < 0 || i >= D) {
          bad.store(true, std::memory_order_relaxed);
        } else {
          s = dot_row<A, T>(g.data(), weight + i * N, N);
        }
        store_from<T, A>(grad_values + b * K, j, s);
      }
    }
  });
  PYAEPLUS_CHECK(!bad.load(), "sparse_decode: an index is out of range [0, D)");
}

// acc[n] += v * g[n] and returns <g, w> in one sweep (the fused backward: g = grad_out[b] is
// loaded once for both gradients, w = weight[i] stays in L1 for all of row i's entries).
template <typename T, typename A>
inline A axpy_dot_row(A* __restrict acc, A v, const T* __restrict g, const T* __restrict w, int64_t N) {
  A s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t n = 0; n < N; ++n) {
    const A gn = load_as<A>(g, n);
    acc[n] += v * gn;
    s += gn * load_as<A>(w, n);
  }
  return s;
}

template <typename T, typename A>
inline void axpy_dot_row4(A* __restrict acc, const A* v, const T* const* g, const T* __restrict w, A* s_out,
                          int64_t N) {
  A s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  const T* __restrict g0 = g[0];
  const T* __restrict g1 = g[1];
  const T* __restrict g2 = g[2];
  const T* __restrict g3 = g[3];
  const A v0 = v[0], v1 = v[1], v2 = v[2], v3 = v[3];
#pragma omp simd reduction(+ : s0, s1, s2, s3)
  for (int64_t n = 0; n < N; ++n) {
    const A a0 = load_as<A>(g0, n), a1 = load_as<A>(g1, n), a2 = load_as<A>(g2, n), a3 = load_as<A>(g3, n);
    const A wn = load_as<A>(w, n);
    acc[n] += v0 * a0 + v1 * a1 + v2 * a2 + v3 * a3;
    s0 += a0 * wn;
    s1 += a1 * wn;
    s2 += a2 * wn;
    s3 += a3 * wn;
  }
  s_out[0] = s0;
  s_out[1] = s1;
  s_out[2] = s2;
  s_out[3] = s3;
}

// grad_out: [B, N]; values, indices: [B, K]; weight: [D, N]; grad_weight: [D, N] (every row
// written); grad_values: [B, K] or null. With grad_values, each entry's <grad_out[b], weight[i]>
// is taken in the same sweep over grad_out[b] that accumulates grad_weight[i]. Contiguous.
template <typename T, typename I>
void grad_weight_impl(const T* grad_out, const T* values, const I* indices, const T* weight, T* grad_weight,
                      T* grad_values, int64_t B, int64_t K, int64_t D, int64_t N) {
  using A = acc_t<T>;
  const int64_t E = B * K;
  // Reverse index by a counting sort (stable: entries of a row stay in increasing b*K+j order).
  std::vector<int64_t> indptr(D + 1, 0);
  for (int64_t e = 0; e < E; ++e) {
    const int64_t i = indices[e];
    PYAEPLUS_CHECK(i >= 0 && i < D, "sparse_decode: an index is out of range [0, D)");
    ++indptr[i + 1];
  }
  for (int64_t i = 0; i < D; ++i) indptr[i + 1] += indptr[i];
  std::vector<int64_t> order(E);
  {
    std::vector<int64_t> pos(indptr.begin(), indptr.end() - 1);
    for (int64_t e = 0; e < E; ++e) order[pos[indices[e]]++] = e;
  }
  // Split the weight rows so that each thread gets about the same cost: every row is written
  // (N stores) and each of its entries is N multiply-adds. cost(prefix of i rows) = indptr[i] + i.
  const int nt = static_cast<int>(std::max<int64_t>(
      1, std::min<int64_t>(max_threads(), (E + D) * N / 65536 + 1)));
  const int64_t total = E + D;
  auto row_at_cost = [&](int64_t c) {  // first row whose prefix cost reaches c
    int64_t lo = 0, hi = D;
    while (lo < hi) {
      const int64_t mid = (lo + hi) / 2;
      if (indptr[mid] + mid < c) lo = mid + 1; else hi = mid;
    }
    return lo;
  };
  parallel_for(nt, 1, [&](int64_t t0, int64_t t1) {
    std::vector<A> acc(N);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t r0 = row_at_cost(total * t / nt), r1 = row_at_cost(total * (t + 1) / nt);
      for (int64_t i = r0; i < r1; ++i) {
        std::fill(acc.begin(), acc.end(), A(0));
        int64_t p = indptr[i];
        const int64_t end = indptr[i + 1];
        if (grad_values != nullptr) {
          const T* w = weight + i * N;
          for (; p + 4 <= end; p += 4) {
            const int64_t e[4] = {order[p], order[p + 1], order[p + 2], order[p + 3]};
            const A v[4] = {load_as<A>(values, e[0]), load_as<A>(values, e[1]), load_as<A>(values, e[2]),
                            load_as<A>(values, e[3])};
            const T* g[4] = {grad_out + (e[0] / K) * N, grad_out + (e[1] / K) * N, grad_out + (e[2] / K) * N,
                             grad_out + (e[3] / K) * N};
            A s[4];
            axpy_dot_row4<T, A>(acc.data(), v, g, w, s, N);
            for (int q = 0; q < 4; ++q) store_from<T, A>(grad_values, e[q], s[q]);
          }
          for (; p < end; ++p) {
            const int64_t e = order[p];
            const A s = axpy_dot_row<T, A>(acc.data(), load_as<A>(values, e), grad_out + (e / K) * N, w, N);
            store_from<T, A>(grad_values, e, s);
          }
        }
        for (; p + 4 <= end; p += 4) {
          const int64_t e0 = order[p], e1 = order[p + 1], e2 = order[p + 2], e3 = order[p + 3];
          axpy_row4<T, A>(acc.data(), load_as<A>(values, e0), grad_out + (e0 / K) * N, load_as<A>(values, e1),
                          grad_out + (e1 / K) * N, load_as<A>(values, e2), grad_out + (e2 / K) * N,
                          load_as<A>(values, e3), grad_out + (e3 / K) * N, N);
        }
        for (; p < end; ++p) {
          const int64_t e = order[p];
          axpy_row<T, A>(acc.data(), load_as<A>(values, e), grad_out + (e / K) * N, N);
        }
        T* g = grad_weight + i * N;
        for (int64_t n = 0; n < N; ++n) store_from<T, A>(g, n, acc[n]);
      }
    }
  });
}
