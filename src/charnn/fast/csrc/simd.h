// The vector layer under the compiled kernels: 16 floats at a time (`V16`), and the int8 dot
// products of a block of 16 hidden units, on AVX-512, AVX2 with FMA, or ARM NEON. Which one a
// build gets is decided by its compiler flags (charnn/fast/build.py): -mavx512f, else -mavx2
// -mfma, else an ARM compiler. Plain C++ with no PyTorch, so that the kernels' cores build and
// run alone (csrc/core_test.cpp, also under QEMU for ARM).
//
// Every path does the same float operations in the same order (fused multiply-adds where the
// others have them, correctly rounded divisions, exp as 2^n times a polynomial), so a gate's
// value does not depend on the instruction set; only the order of a long sum may (`sum`).
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__AVX512F__)
#define CHARNN_AVX512 1
#include <immintrin.h>
#elif defined(__AVX2__) && defined(__FMA__)
#define CHARNN_AVX2 1
#include <immintrin.h>
#elif defined(__ARM_NEON)
#define CHARNN_NEON 1
#include <arm_neon.h>
#else
#error "charnn's kernels need AVX-512, AVX2 with FMA, or ARM NEON"
#endif

namespace charnn {

// bfloat16 as stored: the top 16 bits of an fp32 (at::BFloat16 has the same layout).
struct Bf16 {
  uint16_t bits;
};

#if CHARNN_AVX512
inline const char* isa_name() { return "avx512"; }
struct V16 {
  __m512 v;
};
inline V16 load(const float* p) { return {_mm512_loadu_ps(p)}; }
inline void store(float* p, V16 a) { _mm512_storeu_ps(p, a.v); }
inline V16 set1(float x) { return {_mm512_set1_ps(x)}; }
inline V16 operator+(V16 a, V16 b) { return {_mm512_add_ps(a.v, b.v)}; }
inline V16 operator-(V16 a, V16 b) { return {_mm512_sub_ps(a.v, b.v)}; }
inline V16 operator*(V16 a, V16 b) { return {_mm512_mul_ps(a.v, b.v)}; }
inline V16 operator/(V16 a, V16 b) { return {_mm512_div_ps(a.v, b.v)}; }
inline V16 fmadd(V16 a, V16 b, V16 c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }    // a b + c
inline V16 fnmadd(V16 a, V16 b, V16 c) { return {_mm512_fnmadd_ps(a.v, b.v, c.v)}; }  // c - a b
inline V16 fmsub(V16 a, V16 b, V16 c) { return {_mm512_fmsub_ps(a.v, b.v, c.v)}; }    // a b - c
inline V16 min(V16 a, V16 b) { return {_mm512_min_ps(a.v, b.v)}; }
inline V16 max(V16 a, V16 b) { return {_mm512_max_ps(a.v, b.v)}; }
inline V16 round_even(V16 a) { return {_mm512_roundscale_ps(a.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)}; }
inline V16 scale2(V16 a, V16 n) { return {_mm512_scalef_ps(a.v, n.v)}; }  // a 2^n, n integral in [-126, 126]
inline float sum(V16 a) { return _mm512_reduce_add_ps(a.v); }
inline V16 from_int(const int32_t* p) { return {_mm512_cvtepi32_ps(_mm512_loadu_si512(p))}; }
inline V16 load(const Bf16* p) {  // bf16 is the top half of an fp32
  const __m256i half = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return {_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(half), 16))};
}
inline void store(Bf16* p, V16 a) {  // rounded to nearest, ties to even, as PyTorch rounds
  __m512i bits = _mm512_castps_si512(a.v);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  bits = _mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7FFF)));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(_mm512_srli_epi32(bits, 16)));
}
inline void pause() { _mm_pause(); }

#elif CHARNN_AVX2
inline const char* isa_name() { return "avx2"; }
struct V16 {
  __m256 lo, hi;
};
inline V16 load(const float* p) { return {_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; }
inline void store(float* p, V16 a) {
  _mm256_storeu_ps(p, a.lo);
  _mm256_storeu_ps(p + 8, a.hi);
}
inline V16 set1(float x) { return {_mm256_set1_ps(x), _mm256_set1_ps(x)}; }
#define CHARNN_BINARY(op, f) \
  inline V16 op(V16 a, V16 b) { return {f(a.lo, b.lo), f(a.hi, b.hi)}; }
CHARNN_BINARY(operator+, _mm256_add_ps)
CHARNN_BINARY(operator-, _mm256_sub_ps)
CHARNN_BINARY(operator*, _mm256_mul_ps)
CHARNN_BINARY(operator/, _mm256_div_ps)
CHARNN_BINARY(min, _mm256_min_ps)
CHARNN_BINARY(max, _mm256_max_ps)
#undef CHARNN_BINARY
inline V16 fmadd(V16 a, V16 b, V16 c) { return {_mm256_fmadd_ps(a.lo, b.lo, c.lo), _mm256_fmadd_ps(a.hi, b.hi, c.hi)}; }
inline V16 fnmadd(V16 a, V16 b, V16 c) {
  return {_mm256_fnmadd_ps(a.lo, b.lo, c.lo), _mm256_fnmadd_ps(a.hi, b.hi, c.hi)};
}
inline V16 fmsub(V16 a, V16 b, V16 c) { return {_mm256_fmsub_ps(a.lo, b.lo, c.lo), _mm256_fmsub_ps(a.hi, b.hi, c.hi)}; }
inline V16 round_even(V16 a) {
  constexpr int kMode = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  return {_mm256_round_ps(a.lo, kMode), _mm256_round_ps(a.hi, kMode)};
}
inline __m256 pow2(__m256 n) {  // 2^n for integral n in [-126, 126]: the exponent bits alone
  const __m256i e = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
  return _mm256_castsi256_ps(_mm256_slli_epi32(e, 23));
}
inline V16 scale2(V16 a, V16 n) { return {_mm256_mul_ps(a.lo, pow2(n.lo)), _mm256_mul_ps(a.hi, pow2(n.hi))}; }
inline float sum(V16 a) {
  const __m256 s = _mm256_add_ps(a.lo, a.hi);
  __m128 x = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
  x = _mm_add_ps(x, _mm_movehl_ps(x, x));
  return _mm_cvtss_f32(_mm_add_ss(x, _mm_movehdup_ps(x)));
}
inline V16 from_int(const int32_t* p) {
  return {_mm256_cvtepi32_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))),
          _mm256_cvtepi32_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 8)))};
}
inline __m256 widen8(const Bf16* p) {
  const __m128i half = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(half), 16));
}
inline V16 load(const Bf16* p) { return {widen8(p), widen8(p + 8)}; }
inline __m256i round_bits(__m256 v) {  // the top 16 bits after rounding to nearest even, in the low half
  __m256i bits = _mm256_castps_si256(v);
  const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
  bits = _mm256_add_epi32(bits, _mm256_add_epi32(odd, _mm256_set1_epi32(0x7FFF)));
  return _mm256_srli_epi32(bits, 16);
}
inline void store(Bf16* p, V16 a) {
  // packus works within 128-bit lanes: (lo0 hi0 lo1 hi1) -> reorder the 64-bit pieces to (lo0 lo1 hi0 hi1)
  const __m256i packed = _mm256_packus_epi32(round_bits(a.lo), round_bits(a.hi));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm256_permute4x64_epi64(packed, 0xD8));
}
inline void pause() { _mm_pause(); }

#else  // NEON
inline const char* isa_name() {
#if defined(__ARM_FEATURE_DOTPROD)
  return "neon-dotprod";
#else
  return "neon";
#endif
}
struct V16 {
  float32x4_t q[4];
};
#define CHARNN_EACH(expr) \
  V16 r;                  \
  for (int i = 0; i < 4; ++i) r.q[i] = expr; \
  return r
inline V16 load(const float* p) { CHARNN_EACH(vld1q_f32(p + 4 * i)); }
inline void store(float* p, V16 a) {
  for (int i = 0; i < 4; ++i) vst1q_f32(p + 4 * i, a.q[i]);
}
inline V16 set1(float x) { CHARNN_EACH(vdupq_n_f32(x)); }
inline V16 operator+(V16 a, V16 b) { CHARNN_EACH(vaddq_f32(a.q[i], b.q[i])); }
inline V16 operator-(V16 a, V16 b) { CHARNN_EACH(vsubq_f32(a.q[i], b.q[i])); }
inline V16 operator*(V16 a, V16 b) { CHARNN_EACH(vmulq_f32(a.q[i], b.q[i])); }
inline V16 operator/(V16 a, V16 b) { CHARNN_EACH(vdivq_f32(a.q[i], b.q[i])); }
inline V16 fmadd(V16 a, V16 b, V16 c) { CHARNN_EACH(vfmaq_f32(c.q[i], a.q[i], b.q[i])); }
inline V16 fnmadd(V16 a, V16 b, V16 c) { CHARNN_EACH(vfmsq_f32(c.q[i], a.q[i], b.q[i])); }
inline V16 fmsub(V16 a, V16 b, V16 c) { CHARNN_EACH(vnegq_f32(vfmsq_f32(c.q[i], a.q[i], b.q[i]))); }
inline V16 min(V16 a, V16 b) { CHARNN_EACH(vminq_f32(a.q[i], b.q[i])); }
inline V16 max(V16 a, V16 b) { CHARNN_EACH(vmaxq_f32(a.q[i], b.q[i])); }
inline V16 round_even(V16 a) { CHARNN_EACH(vrndnq_f32(a.q[i])); }
inline V16 scale2(V16 a, V16 n) {
  CHARNN_EACH(vmulq_f32(a.q[i], vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(vcvtnq_s32_f32(n.q[i]), vdupq_n_s32(127)), 23))));
}
inline float sum(V16 a) { return vaddvq_f32(vaddq_f32(vaddq_f32(a.q[0], a.q[1]), vaddq_f32(a.q[2], a.q[3]))); }
inline V16 from_int(const int32_t* p) { CHARNN_EACH(vcvtq_f32_s32(vld1q_s32(p + 4 * i))); }
inline V16 load(const Bf16* p) {
  CHARNN_EACH(vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(reinterpret_cast<const uint16_t*>(p) + 4 * i), 16)));
}
inline void store(Bf16* p, V16 a) {
  for (int i = 0; i < 4; ++i) {
    uint32x4_t bits = vreinterpretq_u32_f32(a.q[i]);
    const uint32x4_t odd = vandq_u32(vshrq_n_u32(bits, 16), vdupq_n_u32(1));
    bits = vaddq_u32(bits, vaddq_u32(odd, vdupq_n_u32(0x7FFF)));
    vst1_u16(reinterpret_cast<uint16_t*>(p) + 4 * i, vshrn_n_u32(bits, 16));
  }
}
#undef CHARNN_EACH
inline void pause() { __asm__ __volatile__("yield"); }
#endif

// exp(x) to about 2e-7 relative error: 2^n times a degree-6 polynomial on [-ln2/2, ln2/2].
inline V16 exp16(V16 x) {
  x = min(max(x, set1(-87.0f)), set1(87.0f));
  const V16 n = round_even(x * set1(1.44269504f));
  V16 r = fnmadd(n, set1(0.693145752f), x);
  r = fnmadd(n, set1(1.42860677e-6f), r);
  V16 p = set1(1.0f / 720);
  p = fmadd(p, r, set1(1.0f / 120));
  p = fmadd(p, r, set1(1.0f / 24));
  p = fmadd(p, r, set1(1.0f / 6));
  p = fmadd(p, r, set1(0.5f));
  p = fmadd(p, r, set1(1.0f));
  p = fmadd(p, r, set1(1.0f));
  return scale2(p, n);
}

inline V16 sigmoid16(V16 x) { return set1(1.0f) / (set1(1.0f) + exp16(set1(0.0f) - x)); }

inline V16 tanh16(V16 x) { return fmsub(set1(2.0f), sigmoid16(set1(2.0f) * x), set1(1.0f)); }  // 2 sigmoid(2x) - 1

}  // namespace charnn
