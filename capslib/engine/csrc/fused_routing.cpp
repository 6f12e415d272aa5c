// Fused dynamic routing for capsule layers (capslib.fused_routing), forward and backward.
//
// One routing problem n (an image for ClassCaps, an image x output location for ConvCaps) has
// K child capsules u[n, k, :] (Din dims) that vote for J parents through one Dout x Din matrix per
// (child, parent):
//
//     u_hat[j, k, :] = W[k, j] u[n, k]                      votes, (J, K, Dout)
//     c = softmax_j(b),  s_j = sum_k c_jk u_hat[j, k] (+ bias_j),  v_j = squash(s_j),  b_jk += u_hat[j, k] . v_j
//
// with two remedies of capslib.routing.dynamic_routing, both off by default: a parent bias (J, Dout)
// added to s_j before the squash of every iteration (ModelConfig.squash_bias), and the squash either
// Sabour et al.'s, f(q) s with f(q) = q / ((1 + q) sqrt(q + eps)), or Efficient-CapsNet's,
// f(q) s with f(q) = (1 - e^-n) / n, n = sqrt(q + eps) (ModelConfig.squash_fn = "efficient"); q = |s|^2.
// Without a bias and with Sabour's squash the kernel runs exactly the ops it ran before the remedies.
//
// The PyTorch path materialises u_hat for the whole batch (4 MB per image per ConvCaps layer of
// CapsNet[20, 8, I]) and streams it from main memory 6 times in the forward pass and about 14 times
// in the backward pass. Here the votes of a small block of problems are computed into a buffer that
// stays in cache, routed there, and dropped: the forward pass writes only v, and the backward pass
// recomputes the votes of each block, runs the routing again (saving the small c_r, s_r, v_r),
// differentiates it into a cached grad u_hat and contracts that at once into grad u and grad W.
// Nothing of vote size ever reaches main memory, so the layer is bound by arithmetic, not traffic.
//
// The gradient is the one of capslib.routing._RoutingFunction (same formulas, same order of the
// routing terms); numbers agree with the PyTorch path to floating-point rounding.
//
// Every hot loop runs over the Dout dims of one vote as one SIMD vector (GCC/Clang vector
// extensions: no intrinsics, any x86-64 or ARM target). The caller pads Dout to P in {4, 8, 16,
// 32} with zero rows of W (and zeros in the bias); zero components stay exactly zero through votes,
// bias, squash and all gradients, so padding changes no number.
//
// Plain C ABI (called through ctypes, which releases the GIL): the caller splits the problems
// [0, n) into ranges and calls one range per thread; every call owns its workspace, and the
// backward pass accumulates grad W (and grad bias) into per-call buffers that the caller sums.
// Layouts (all contiguous, row-major; P = padded Dout):
//   u   (n, K, Din)        Wt (K, J, Din, P) = W (K, J, Dout, Din) transposed per matrix, padded
//   v   (n, J, P)          gv (n, J, P)          gu (n, K, Din)       gWt (K, J, Din, P)
//   bias (J, P) or null, zero in the padded dims    gbias (J, P) or null: += sum over problems and iterations of
//   grad s_j (the bias enters every iteration's s_j)
// ABI 3 (capslib_route_*3_*) takes the bias and the squash kind (kSabour, kEfficient). The ABI 2 entry
// points (no bias, Sabour's squash) stay, and the default path calls them, so capslib.engine.fused_routing
// drives a kernel built from an older source (ABI 2, as benchmarks/bench_wide_votes.py builds) as well.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

// exp for the softmax. float: a Cephes-style expf (range reduction to [-ln2/2, ln2/2], degree-6
// polynomial, exponent by bit assembly), relative error ~1e-7; arguments are <= 0 here (logits
// minus their maximum), and below -87 the result is 0. double: std::exp for the scalar tail; the
// SIMD path (exp_lanes) uses the same scheme with a degree-12 Taylor polynomial, relative error
// ~3e-16, clamped below at -708 (a result of ~3e-308 where std::exp would give 0 or a subnormal).
inline float fast_exp(float x) {
  x = std::max(x, -87.0f);
  x = std::min(x, 88.0f);
  const float log2e = 1.44269504088896341f;
  const float shifter = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  float t = x * log2e + shifter;
  float nf = t - shifter;
  float r = x - nf * 0.693359375f;
  r = r + nf * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  int32_t bits = (static_cast<int32_t>(nf) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(float));
  return p * scale;
}
inline double fast_exp(double x) { return std::exp(x); }

// The widest SIMD register this build targets, in bytes. A GCC vector type wider than that is lowered
// element by element through memory (measured: float P = 16 and double P = 8, 64 bytes on an AVX2
// machine, ran ~10x slower per flop than 32-byte vectors), so a vote wider than one register is held
// as an array of register-wide vectors (Lanes) with the same operators.
#if defined(__AVX512F__)
constexpr int kSimdBytes = 64;
#elif defined(__AVX__)
constexpr int kSimdBytes = 32;
#else
constexpr int kSimdBytes = 16;
#endif

// exp of every lane of a register-wide vector x (arguments <= 0: logits minus their maximum).
template <typename T, typename N>
inline N exp_lanes(N x) {
  constexpr int L = sizeof(N) / sizeof(T);
  if constexpr (sizeof(T) == 4) {  // fast_exp's algorithm
    typedef int32_t NI __attribute__((vector_size(sizeof(int32_t) * L)));
    x = x < T(-87) ? T(-87) : x;
    x = x > T(88) ? T(88) : x;
    const N nf = (x * T(1.44269504088896341) + T(12582912.0)) - T(12582912.0);
    N r = x - nf * T(0.693359375);
    r = r + nf * T(2.12194440e-4);
    N p = T(1.9875691500e-4) + N{};
    p = p * r + T(1.3981999507e-3);
    p = p * r + T(8.3334519073e-3);
    p = p * r + T(4.1665795894e-2);
    p = p * r + T(1.6666665459e-1);
    p = p * r + T(5.0000001201e-1);
    p = p * r * r + r + T(1);
    const NI bits = (__builtin_convertvector(nf, NI) + 127) << 23;
    N scale;
    std::memcpy(&scale, &bits, sizeof(N));
    return p * scale;
  } else {  // double: x = n ln2 + r (Cody-Waite, two parts of ln2), |r| <= ln2/2, e^r by Horner
    typedef int64_t NI __attribute__((vector_size(sizeof(int64_t) * L)));
    x = x < T(-708) ? T(-708) : x;
    x = x > T(709) ? T(709) : x;
    const N nf = (x * T(1.4426950408889634074) + T(6755399441055744.0)) - T(6755399441055744.0);
    const N r = (x - nf * T(0.693145751953125)) - nf * T(1.42860682030941723212e-6);
    N p = T(1.0 / 479001600.0) + N{};  // 1/12!
    p = p * r + T(1.0 / 39916800.0);
    p = p * r + T(1.0 / 3628800.0);
    p = p * r + T(1.0 / 362880.0);
    p = p * r + T(1.0 / 40320.0);
    p = p * r + T(1.0 / 5040.0);
    p = p * r + T(1.0 / 720.0);
    p = p * r + T(1.0 / 120.0);
    p = p * r + T(1.0 / 24.0);
    p = p * r + T(1.0 / 6.0);
    p = p * r + T(0.5);
    p = p * r * r + r + T(1);
    const NI bits = (__builtin_convertvector(nf, NI) + 1023) << 52;
    N scale;
    std::memcpy(&scale, &bits, sizeof(N));
    return p * scale;
  }
}

// P lanes as C register-wide vectors N: the arithmetic of a GCC vector, chunk by chunk.
template <typename T, typename N, int C>
struct Lanes {
  N c[C];
  friend Lanes operator+(Lanes a, const Lanes& b) { for (int i = 0; i < C; ++i) a.c[i] += b.c[i]; return a; }
  friend Lanes operator-(Lanes a, const Lanes& b) { for (int i = 0; i < C; ++i) a.c[i] -= b.c[i]; return a; }
  friend Lanes operator*(Lanes a, const Lanes& b) { for (int i = 0; i < C; ++i) a.c[i] *= b.c[i]; return a; }
  friend Lanes operator*(T s, Lanes a) { for (int i = 0; i < C; ++i) a.c[i] *= s; return a; }
  friend Lanes operator*(Lanes a, T s) { for (int i = 0; i < C; ++i) a.c[i] *= s; return a; }
  friend Lanes operator/(T s, Lanes a) { for (int i = 0; i < C; ++i) a.c[i] = s / a.c[i]; return a; }
  Lanes& operator+=(const Lanes& b) { for (int i = 0; i < C; ++i) c[i] += b.c[i]; return *this; }
};

// Vec<T, P>::type: one vote of P lanes; a GCC vector when it fits one register, else Lanes.
template <typename T, int P, bool Fits = (P * (int)sizeof(T) <= kSimdBytes)>
struct Vec {
  typedef T type __attribute__((vector_size(sizeof(T) * P)));
  static inline type load(const T* p) {
    type v;
    std::memcpy(&v, p, sizeof(type));
    return v;
  }
  static inline void store(T* p, type v) { std::memcpy(p, &v, sizeof(type)); }
  static inline type max(type a, type b) { return a > b ? a : b; }
  static inline type exp(type x) { return exp_lanes<T, type>(x); }
  static inline T sum(type v) {  // pairwise: log2(P) dependent adds instead of P
    T a[P];
    std::memcpy(a, &v, sizeof(type));
    for (int w = P / 2; w >= 1; w /= 2)
      for (int i = 0; i < w; ++i) a[i] += a[i + w];
    return a[0];
  }
};
template <typename T, int P>
struct Vec<T, P, false> {
  static constexpr int L = kSimdBytes / sizeof(T), C = P / L;
  typedef typename Vec<T, L>::type N;
  typedef Lanes<T, N, C> type;
  // chunk by chunk: one memcpy of the whole value compiles to narrow moves that stall the wide loads
  static inline type load(const T* p) {
    type v;
    for (int i = 0; i < C; ++i) v.c[i] = Vec<T, L>::load(p + i * L);
    return v;
  }
  static inline void store(T* p, const type& v) { for (int i = 0; i < C; ++i) Vec<T, L>::store(p + i * L, v.c[i]); }
  static inline type max(type a, const type& b) { for (int i = 0; i < C; ++i) a.c[i] = Vec<T, L>::max(a.c[i], b.c[i]); return a; }
  static inline type exp(type x) { for (int i = 0; i < C; ++i) x.c[i] = Vec<T, L>::exp(x.c[i]); return x; }
  static inline T sum(const type& v) {
    N a = v.c[0];
    for (int i = 1; i < C; ++i) a += v.c[i];
    return Vec<T, L>::sum(a);
  }
};

enum Squash { kSabour = 0, kEfficient = 1 };

// S(n) = sum_m 2 (-1)^m (m + 1) / (m + 2)! n^m = 1 - 2n/3 + n^2/4 - n^3/15 + ..., the series of Efficient-
// CapsNet's f'(q) = -S(n) / (4n) (see Router::squash_df); kSeries[m] is its coefficient of n^m.
constexpr int kSeriesTerms = 16;  // the first term left out is < 1e-19 of S at n = 1/2
struct SeriesTable {
  double c[kSeriesTerms];
  constexpr SeriesTable() : c() {
    double fact = 2;  // (m + 2)!
    for (int m = 0; m < kSeriesTerms; ++m) {
      c[m] = (m % 2 ? -2.0 : 2.0) * (m + 1) / fact;
      fact *= m + 3;
    }
  }
};
constexpr SeriesTable kSeries;

template <typename T, int P>
struct Router {
  typedef typename Vec<T, P>::type V;  // one vote: P dims as SIMD values

  static inline V ld(const T* p) { return Vec<T, P>::load(p); }
  static inline void st(T* p, const V& v) { Vec<T, P>::store(p, v); }
  static inline T hsum(const V& v) { return Vec<T, P>::sum(v); }

  int64_t K, J;
  int din, iters;
  T eps;
  const T* bias;  // (J, P) parent bias added to every s_j, or null
  int squash;     // kSabour or kEfficient

  Router(int64_t K_, int64_t J_, int din_, int iters_, T eps_, const T* bias_, int squash_)
      : K(K_), J(J_), din(din_), iters(iters_), eps(eps_), bias(bias_), squash(squash_) {}

  int64_t vote_size() const { return J * K * P; }

  // Problems per block: the votes of a block stay within ~1 MB (L2/L3), at least 1.
  int64_t block(int64_t n) const {
    int64_t per = vote_size() * (int64_t)sizeof(T);
    int64_t nb = std::max<int64_t>(1, (int64_t(1) << 20) / std::max<int64_t>(per, 1));
    return std::min<int64_t>(nb, std::max<int64_t>(n, 1));
  }

  // uh[b] (J, K, P) = votes of problems n0 .. n0+nb-1. W[k] (J·Din·P) is reused across the block;
  // four parents at a time give four independent FMA chains.
  void votes(const T* __restrict u, const T* __restrict Wt, int64_t n0, int64_t nb, T* __restrict uh) const {
    const int64_t vs = vote_size(), KP = K * P, JS = (int64_t)din * P;
    for (int64_t k = 0; k < K; ++k) {
      const T* Wk = Wt + k * J * JS;
      for (int64_t b = 0; b < nb; ++b) {
        const T* uk = u + ((n0 + b) * K + k) * din;
        T* out = uh + b * vs + k * P;
        int64_t j = 0;
        for (; j + 4 <= J; j += 4) {
          const T* w = Wk + j * JS;
          V a0 = {}, a1 = {}, a2 = {}, a3 = {};
          for (int e = 0; e < din; ++e) {
            const T ue = uk[e];
            a0 += ue * ld(w + e * P);
            a1 += ue * ld(w + JS + e * P);
            a2 += ue * ld(w + 2 * JS + e * P);
            a3 += ue * ld(w + 3 * JS + e * P);
          }
          st(out + j * KP, a0);
          st(out + (j + 1) * KP, a1);
          st(out + (j + 2) * KP, a2);
          st(out + (j + 3) * KP, a3);
        }
        for (; j < J; ++j) {
          const T* w = Wk + j * JS;
          V a = {};
          for (int e = 0; e < din; ++e) a += uk[e] * ld(w + e * P);
          st(out + j * KP, a);
        }
      }
    }
  }

  // sum_k c[k] x[k] over the K votes x (K, P) of one parent; four partial sums.
  inline V weighted_sum(const T* __restrict c, const T* __restrict x) const {
    V a0 = {}, a1 = {}, a2 = {}, a3 = {};
    int64_t k = 0;
    for (; k + 4 <= K; k += 4) {
      a0 += c[k] * ld(x + k * P);
      a1 += c[k + 1] * ld(x + (k + 1) * P);
      a2 += c[k + 2] * ld(x + (k + 2) * P);
      a3 += c[k + 3] * ld(x + (k + 3) * P);
    }
    for (; k < K; ++k) a0 += c[k] * ld(x + k * P);
    return (a0 + a1) + (a2 + a3);
  }

  // c (J, K) = softmax over j of b (J, K): P children at a time as one SIMD value, then the tail.
  void softmax(const T* __restrict b, T* __restrict c, T* __restrict, T* __restrict) const {
    int64_t k = 0;
    for (; k + P <= K; k += P) {
      V mx = ld(b + k);
      for (int64_t j = 1; j < J; ++j) {
        const V x = ld(b + j * K + k);
        mx = Vec<T, P>::max(x, mx);
      }
      V sm = {};
      for (int64_t j = 0; j < J; ++j) {
        const V e = Vec<T, P>::exp(ld(b + j * K + k) - mx);
        st(c + j * K + k, e);
        sm += e;
      }
      const V inv = T(1) / sm;
      for (int64_t j = 0; j < J; ++j) st(c + j * K + k, ld(c + j * K + k) * inv);
    }
    for (; k < K; ++k) {
      T mx = b[k];
      for (int64_t j = 1; j < J; ++j) mx = std::max(mx, b[j * K + k]);
      T sm = 0;
      for (int64_t j = 0; j < J; ++j) {
        const T e = fast_exp(b[j * K + k] - mx);
        c[j * K + k] = e;
        sm += e;
      }
      const T inv = T(1) / sm;
      for (int64_t j = 0; j < J; ++j) c[j * K + k] *= inv;
    }
  }

  // squash factor f(q) of q = |s|^2 (v = f(q) s), and f'(q).
  // Sabour: f(q) = q / ((1 + q) sqrt(q + eps)).
  // Efficient: f(q) = (1 - e^-n) / n with n = sqrt(q + eps), as capslib.routing.efficient_squash:
  // -expm1(-n) / n, every digit of a short n kept.
  inline T squash_f(T q) const {
    if (squash == kEfficient) {
      const T n = std::sqrt(q + eps);
      return -std::expm1(-n) / n;
    }
    return q / ((T(1) + q) * std::sqrt(q + eps));
  }
  // Efficient: dn/dq = 1 / (2n) and df/dn = (n e^-n - (1 - e^-n)) / n^2, so
  //     f'(q) = (n e^-n - (1 - e^-n)) / (2 n^3).
  // As n -> 0 the numerator (1 + n) e^-n - 1 = -n^2/2 + n^3/3 - n^4/8 + ... is the difference of two numbers
  // near n (relative rounding error ~ 2 ulp / n: all of float32's digits at n ~ 1e-7), so below n = 1/2 it
  // is the series: (1 + n) e^-n - 1 = sum_{k>=2} (-1)^k (1 - k) / k! n^k, i.e. f'(q) = -S(n) / (4n), S of
  // kSeries, by Horner (no cancellation: S(n) in [0.7, 1] there). Above 1/2 the closed form loses a few ulp at most.
  inline T squash_df(T q) const {
    if (squash == kEfficient) {
      const T n = std::sqrt(q + eps);
      if (n < T(0.5)) {
        T S = T(kSeries.c[kSeriesTerms - 1]);
        for (int m = kSeriesTerms - 2; m >= 0; --m) S = S * n + T(kSeries.c[m]);
        return -S / (T(4) * n);
      }
      return (n * std::exp(-n) + std::expm1(-n)) / (T(2) * n) / (n * n);
    }
    T a = T(1) / ((T(1) + q) * std::sqrt(q + eps));
    return a * (T(1) - q / (T(1) + q) - q / (T(2) * (q + eps)));
  }

  // Routing of one problem with votes uh (J, K, P). Writes v_out (J, P). If cs/ss/vs are given
  // (backward), saves c_r (J, K), s_r (with the bias) and v_r (J, P) of every iteration r.
  void route(const T* __restrict uh, T* __restrict v_out, T* __restrict bl, T* __restrict c,
             T* __restrict mx, T* __restrict sm, T* cs, T* ss, T* vs) const {
    const int64_t JK = J * K;
    for (int r = 0; r < iters; ++r) {
      T* cr = cs ? cs + r * JK : c;
      if (r == 0) {
        const T c0 = T(1) / T(J);
        for (int64_t i = 0; i < JK; ++i) cr[i] = c0;
      } else {
        softmax(bl, cr, mx, sm);
      }
      const bool last = r == iters - 1;
      for (int64_t j = 0; j < J; ++j) {
        const T* uj = uh + j * K * P;
        V s = weighted_sum(cr + j * K, uj);
        if (bias) s += ld(bias + j * P);  // s_j + b_j before every squash
        const V v = squash_f(hsum(s * s)) * s;
        if (ss) st(ss + (r * J + j) * P, s);
        st(vs ? vs + (r * J + j) * P : v_out + j * P, v);
        if (last) continue;
        T* bj = bl + j * K;  // agreement: b_jk += u_hat[j, k] . v_j
        if (r == 0)
          for (int64_t k = 0; k < K; ++k) bj[k] = hsum(ld(uj + k * P) * v);
        else
          for (int64_t k = 0; k < K; ++k) bj[k] += hsum(ld(uj + k * P) * v);
      }
      if (vs && last) std::memcpy(v_out, vs + r * J * P, sizeof(T) * J * P);
    }
  }

  void forward(const T* u, const T* Wt, T* v, int64_t n0, int64_t n1) const {
    const int64_t nb_max = block(n1 - n0), vs_ = vote_size(), JK = J * K;
    std::vector<T> uh(nb_max * vs_), bl(JK), c(JK), mx(K), sm(K);
    for (int64_t n = n0; n < n1; n += nb_max) {
      const int64_t nb = std::min(nb_max, n1 - n);
      votes(u, Wt, n, nb, uh.data());
      for (int64_t b = 0; b < nb; ++b)
        route(uh.data() + b * vs_, v + (n + b) * J * P, bl.data(), c.data(), mx.data(), sm.data(), nullptr,
              nullptr, nullptr);
    }
  }

  // Gradient of one problem's routing: guh (J, K, P) from gv (J, P) and the saved iterations; adds
  // every iteration's grad s to gbias (J, P) if given (s_j = sum_k c_jk u_hat[j, k] + b_j).
  void route_backward(const T* __restrict uh, const T* __restrict gv, const T* __restrict cs,
                      const T* __restrict ss, const T* __restrict vs, T* __restrict guh,
                      T* __restrict gbn, T* __restrict gc, T* __restrict tmp, T* __restrict gbias) const {
    const int64_t JK = J * K;
    for (int r = iters - 1; r >= 0; --r) {
      const T* cr = cs + r * JK;
      const bool first = r == iters - 1;  // the first step writes guh, later ones add to it
      for (int64_t j = 0; j < J; ++j) {
        const T* uj = uh + j * K * P;
        T* gj = guh + j * K * P;
        V g_v;
        if (first) {
          g_v = ld(gv + j * P);
        } else {  // b_{r+1} = b_r + u_hat . v_r: dL/dv_r = sum_k gbn_jk u_hat[j, k]; grad u_hat += gbn_jk v_r
          const V vr = ld(vs + (r * J + j) * P);
          const T* gb = gbn + j * K;
          V a0 = {}, a1 = {};
          int64_t k = 0;
          for (; k + 2 <= K; k += 2) {
            a0 += gb[k] * ld(uj + k * P);
            a1 += gb[k + 1] * ld(uj + (k + 1) * P);
            st(gj + k * P, ld(gj + k * P) + gb[k] * vr);
            st(gj + (k + 1) * P, ld(gj + (k + 1) * P) + gb[k + 1] * vr);
          }
          for (; k < K; ++k) {
            a0 += gb[k] * ld(uj + k * P);
            st(gj + k * P, ld(gj + k * P) + gb[k] * vr);
          }
          g_v = a0 + a1;
        }
        // squash backward: v = f(q) s, so g_s = f g_v + 2 f'(q) (s . g_v) s
        const V s = ld(ss + (r * J + j) * P);
        const T q = hsum(s * s), sg = hsum(s * g_v);
        const V g_s = squash_f(q) * g_v + (T(2) * squash_df(q) * sg) * s;
        if (gbias) st(gbias + j * P, ld(gbias + j * P) + g_s);
        // s_j = sum_k c_jk u_hat[j, k]: grad u_hat += c_jk g_s; dL/dc_jk = u_hat[j, k] . g_s
        const T* cj = cr + j * K;
        T* gcj = gc + j * K;
        for (int64_t k = 0; k < K; ++k) {
          const V add = cj[k] * g_s;
          st(gj + k * P, first ? add : ld(gj + k * P) + add);
          gcj[k] = hsum(ld(uj + k * P) * g_s);
        }
      }
      if (r == 0) break;  // b_0 = 0: the chain ends
      // softmax over j: g_b = c (g_c - sum_j g_c c); gbn += g_b
      for (int64_t k = 0; k < K; ++k) tmp[k] = 0;
      for (int64_t j = 0; j < J; ++j)
        for (int64_t k = 0; k < K; ++k) tmp[k] += gc[j * K + k] * cr[j * K + k];
      for (int64_t j = 0; j < J; ++j)
        for (int64_t k = 0; k < K; ++k) {
          const T g = cr[j * K + k] * (gc[j * K + k] - tmp[k]);
          gbn[j * K + k] = (first ? T(0) : gbn[j * K + k]) + g;
        }
    }
  }

  void backward(const T* u, const T* Wt, const T* gv, T* gu, T* gWt, T* gbias, int64_t n0, int64_t n1) const {
    const int64_t nb_max = block(n1 - n0), vs_ = vote_size(), JK = J * K, JS = (int64_t)din * P;
    std::vector<T> uh(nb_max * vs_), guh(nb_max * vs_), bl(JK), c(JK), mx(K), sm(K);
    std::vector<T> cs(iters * JK), ss(iters * J * P), vsv(iters * J * P), v(J * P);
    std::vector<T> gbn(JK), gc(JK), tmp(K);
    for (int64_t n = n0; n < n1; n += nb_max) {
      const int64_t nb = std::min(nb_max, n1 - n);
      votes(u, Wt, n, nb, uh.data());
      for (int64_t b = 0; b < nb; ++b) {
        const T* uhb = uh.data() + b * vs_;
        route(uhb, v.data(), bl.data(), c.data(), mx.data(), sm.data(), cs.data(), ss.data(), vsv.data());
        route_backward(uhb, gv + (n + b) * J * P, cs.data(), ss.data(), vsv.data(), guh.data() + b * vs_,
                       gbn.data(), gc.data(), tmp.data(), gbias);
      }
      // u_hat[j, k] = W[k, j] u[k]:  gWt[k, j, e] += sum_b u_b[k, e] g_bj;  gu_b[k, e] = sum_j Wt[k, j, e] . g_bj
      // (g_bj = grad u_hat of problem b, parent j, child k). grad W sums over the block in registers;
      // both contractions run four input dims at a time: four independent FMA chains.
      for (int64_t k = 0; k < K; ++k) {
        const T* Wk = Wt + k * J * JS;
        T* gWk = gWt + k * J * JS;
        const T* gk = guh.data() + k * P;  // + b * vs_ + j * K * P
        for (int64_t j = 0; j < J; ++j) {
          const T* gkj = gk + j * K * P;
          T* gw = gWk + j * JS;
          int e = 0;
          for (; e + 4 <= din; e += 4) {
            V a0 = ld(gw + e * P), a1 = ld(gw + (e + 1) * P), a2 = ld(gw + (e + 2) * P), a3 = ld(gw + (e + 3) * P);
            for (int64_t b = 0; b < nb; ++b) {
              const V g = ld(gkj + b * vs_);
              const T* uk = u + ((n + b) * K + k) * din + e;
              a0 += uk[0] * g;
              a1 += uk[1] * g;
              a2 += uk[2] * g;
              a3 += uk[3] * g;
            }
            st(gw + e * P, a0);
            st(gw + (e + 1) * P, a1);
            st(gw + (e + 2) * P, a2);
            st(gw + (e + 3) * P, a3);
          }
          for (; e < din; ++e) {
            V a = ld(gw + e * P);
            for (int64_t b = 0; b < nb; ++b) a += u[((n + b) * K + k) * din + e] * ld(gkj + b * vs_);
            st(gw + e * P, a);
          }
        }
        for (int64_t b = 0; b < nb; ++b) {
          const T* gkb = gk + b * vs_;
          T* guk = gu + ((n + b) * K + k) * din;
          int e = 0;
          for (; e + 4 <= din; e += 4) {
            V a0 = {}, a1 = {}, a2 = {}, a3 = {};
            for (int64_t j = 0; j < J; ++j) {
              const V g = ld(gkb + j * K * P);
              const T* w = Wk + j * JS + e * P;
              a0 += ld(w) * g;
              a1 += ld(w + P) * g;
              a2 += ld(w + 2 * P) * g;
              a3 += ld(w + 3 * P) * g;
            }
            guk[e] = hsum(a0);
            guk[e + 1] = hsum(a1);
            guk[e + 2] = hsum(a2);
            guk[e + 3] = hsum(a3);
          }
          for (; e < din; ++e) {
            V a = {};
            for (int64_t j = 0; j < J; ++j) a += ld(Wk + j * JS + e * P) * ld(gkb + j * K * P);
            guk[e] = hsum(a);
          }
        }
      }
    }
  }
};

template <typename T, int P>
void run(int fwd, const T* u, const T* Wt, const T* bias, const T* gv, T* out, T* gWt, T* gbias, int64_t n0,
         int64_t n1, int64_t K, int64_t J, int din, int iters, double eps, int squash) {
  Router<T, P> R(K, J, din, iters, static_cast<T>(eps), bias, squash);
  if (fwd)
    R.forward(u, Wt, out, n0, n1);
  else
    R.backward(u, Wt, gv, out, gWt, gbias, n0, n1);
}

template <typename T>
int dispatch(int fwd, const T* u, const T* Wt, const T* bias, const T* gv, T* out, T* gWt, T* gbias, int64_t n0,
             int64_t n1, int64_t K, int64_t J, int din, int P, int iters, double eps, int squash) {
  if (din < 1 || iters < 1 || K < 1 || J < 1 || n0 < 0 || n1 < n0) return 1;
  if (squash != kSabour && squash != kEfficient) return 3;
#define CAPSLIB_RUN(PP) run<T, PP>(fwd, u, Wt, bias, gv, out, gWt, gbias, n0, n1, K, J, din, iters, eps, squash)
  switch (P) {
    case 4: CAPSLIB_RUN(4); return 0;
    case 8: CAPSLIB_RUN(8); return 0;
    case 16: CAPSLIB_RUN(16); return 0;
    case 32: CAPSLIB_RUN(32); return 0;
    default: return 2;  // the caller pads Dout to a power of two in [4, 32]
  }
#undef CAPSLIB_RUN
}

}  // namespace

extern "C" {

int capslib_routing_abi_version() { return 3; }

// ABI 2: Sabour's squash, no bias.
int capslib_route_forward_f32(const float* u, const float* Wt, float* v, int64_t n0, int64_t n1, int64_t K,
                              int64_t J, int din, int P, int iters, double eps) {
  return dispatch<float>(1, u, Wt, nullptr, nullptr, v, nullptr, nullptr, n0, n1, K, J, din, P, iters, eps, kSabour);
}
int capslib_route_forward_f64(const double* u, const double* Wt, double* v, int64_t n0, int64_t n1, int64_t K,
                              int64_t J, int din, int P, int iters, double eps) {
  return dispatch<double>(1, u, Wt, nullptr, nullptr, v, nullptr, nullptr, n0, n1, K, J, din, P, iters, eps,
                          kSabour);
}
int capslib_route_backward_f32(const float* u, const float* Wt, const float* gv, float* gu, float* gWt, int64_t n0,
                               int64_t n1, int64_t K, int64_t J, int din, int P, int iters, double eps) {
  return dispatch<float>(0, u, Wt, nullptr, gv, gu, gWt, nullptr, n0, n1, K, J, din, P, iters, eps, kSabour);
}
int capslib_route_backward_f64(const double* u, const double* Wt, const double* gv, double* gu, double* gWt,
                               int64_t n0, int64_t n1, int64_t K, int64_t J, int din, int P, int iters,
                               double eps) {
  return dispatch<double>(0, u, Wt, nullptr, gv, gu, gWt, nullptr, n0, n1, K, J, din, P, iters, eps, kSabour);
}

// ABI 3: bias (J, P) or null; gbias (J, P) or null (accumulated into); squash = kSabour or kEfficient.
int capslib_route_forward3_f32(const float* u, const float* Wt, const float* bias, float* v, int64_t n0,
                               int64_t n1, int64_t K, int64_t J, int din, int P, int iters, double eps,
                               int squash) {
  return dispatch<float>(1, u, Wt, bias, nullptr, v, nullptr, nullptr, n0, n1, K, J, din, P, iters, eps, squash);
}
int capslib_route_forward3_f64(const double* u, const double* Wt, const double* bias, double* v, int64_t n0,
                               int64_t n1, int64_t K, int64_t J, int din, int P, int iters, double eps,
                               int squash) {
  return dispatch<double>(1, u, Wt, bias, nullptr, v, nullptr, nullptr, n0, n1, K, J, din, P, iters, eps, squash);
}
int capslib_route_backward3_f32(const float* u, const float* Wt, const float* bias, const float* gv, float* gu,
                                float* gWt, float* gbias, int64_t n0, int64_t n1, int64_t K, int64_t J, int din,
                                int P, int iters, double eps, int squash) {
  return dispatch<float>(0, u, Wt, bias, gv, gu, gWt, gbias, n0, n1, K, J, din, P, iters, eps, squash);
}
int capslib_route_backward3_f64(const double* u, const double* Wt, const double* bias, const double* gv,
                                double* gu, double* gWt, double* gbias, int64_t n0, int64_t n1, int64_t K,
                                int64_t J, int din, int P, int iters, double eps, int squash) {
  return dispatch<double>(0, u, Wt, bias, gv, gu, gWt, gbias, n0, n1, K, J, din, P, iters, eps, squash);
}

// f(q) and f'(q) of a squash (out[0], out[1]), as the kernel computes them: for the tests.
void capslib_squash_factor_f32(float q, double eps, int squash, float* out) {
  const Router<float, 4> R(1, 1, 1, 1, static_cast<float>(eps), nullptr, squash);
  out[0] = R.squash_f(q);
  out[1] = R.squash_df(q);
}
void capslib_squash_factor_f64(double q, double eps, int squash, double* out) {
  const Router<double, 4> R(1, 1, 1, 1, eps, nullptr, squash);
  out[0] = R.squash_f(q);
  out[1] = R.squash_df(q);
}

}  // extern "C"
