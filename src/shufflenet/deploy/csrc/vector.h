/* The engine's vector layer: every kernel in engine.c is written once over ``vec`` (LANES floats) and
   ``hvec`` (half as many: the narrow part of a GEMM tile), and this file maps them onto one instruction
   set, chosen by the compiler flags of the build:

   - AVX-512 (-mavx512f -mavx512vl): 512/256-bit vectors, mask registers for partial loads and stores;
   - AVX2 + FMA (-mavx2 -mfma): 256/128-bit vectors, partial stores in 4/2/1 pieces (AVX2's masked store,
     vmaskmovps, is microcoded on AMD Zen);
   - NEON (any aarch64 compiler): 128/64-bit vectors;
   - plain C (no flags): arrays of 8 and 4 floats, for any other CPU; correct, not fast.

   A partial load fills the lanes past ``count`` with zeros; a partial store writes ``count`` floats. A
   kernel that stores many vectors of one width makes the width's ``vpart`` once (v_part(count)) and
   passes it to v_load_part / v_store_part: on AVX-512 a mask register, so the stores take no branches
   (they would share ports with the FMAs); elsewhere the count itself. */

#ifndef SHUFFLENET_VECTOR_H
#define SHUFFLENET_VECTOR_H

#include <string.h>

#define INLINE static inline __attribute__((always_inline))

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#define VECTOR_ISA_X86 1
#elif defined(__aarch64__) && defined(__ARM_NEON) && !defined(SHUFFLENET_PLAIN_C)
#include <arm_neon.h>
#endif

#if defined(__AVX512F__)
#define LANES 16
typedef __m512 vec;
typedef __m256 hvec;
INLINE vec v_load(const float* p) { return _mm512_loadu_ps(p); }
INLINE vec v_broadcast(const float* p) { return _mm512_set1_ps(*p); }
INLINE vec v_set1(float x) { return _mm512_set1_ps(x); }
INLINE vec v_fma(vec a, vec b, vec c) { return _mm512_fmadd_ps(a, b, c); }
INLINE vec v_add(vec a, vec b) { return _mm512_add_ps(a, b); }
INLINE vec v_mul(vec a, vec b) { return _mm512_mul_ps(a, b); }
INLINE vec v_max(vec a, vec b) { return _mm512_max_ps(a, b); }
INLINE vec v_min(vec a, vec b) { return _mm512_min_ps(a, b); }
INLINE __mmask16 v_mask(int count) { return (__mmask16)((1u << count) - 1); }
INLINE vec v_load_n(const float* p, int count) {
    return count >= LANES ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(v_mask(count), p);
}
INLINE void v_store_n(float* p, vec v, int count) {
    if (count >= LANES)
        _mm512_storeu_ps(p, v);
    else
        _mm512_mask_storeu_ps(p, v_mask(count), v);
}
typedef __mmask16 vpart;
typedef __mmask8 hpart;
INLINE vpart v_part(int count) { return v_mask(count < 0 ? 0 : count > LANES ? LANES : count); }
INLINE vec v_load_part(const float* p, vpart part) { return _mm512_maskz_loadu_ps(part, p); }
INLINE void v_store_part(float* p, vec v, vpart part) { _mm512_mask_storeu_ps(p, part, v); }
INLINE hpart h_part(int count) { return (hpart)v_mask(count < 0 ? 0 : count > LANES / 2 ? LANES / 2 : count); }
INLINE hvec h_load_part(const float* p, hpart part) { return _mm256_maskz_loadu_ps(part, p); }
INLINE void h_store_part(float* p, hvec v, hpart part) { _mm256_mask_storeu_ps(p, part, v); }
INLINE hvec h_load(const float* p) { return _mm256_loadu_ps(p); }
INLINE hvec h_broadcast(const float* p) { return _mm256_broadcast_ss(p); }
INLINE hvec h_low(vec v) { return _mm512_castps512_ps256(v); }
INLINE hvec h_fma(hvec a, hvec b, hvec c) { return _mm256_fmadd_ps(a, b, c); }
INLINE hvec h_add(hvec a, hvec b) { return _mm256_add_ps(a, b); }
INLINE hvec h_max(hvec a, hvec b) { return _mm256_max_ps(a, b); }
INLINE hvec h_min(hvec a, hvec b) { return _mm256_min_ps(a, b); }
INLINE hvec h_set1(float x) { return _mm256_set1_ps(x); }
INLINE hvec h_zero(void) { return _mm256_setzero_ps(); }
INLINE hvec h_load_n(const float* p, int count) {
    return count >= LANES / 2 ? _mm256_loadu_ps(p) : _mm256_maskz_loadu_ps((__mmask8)v_mask(count), p);
}
INLINE void h_store_n(float* p, hvec v, int count) {
    if (count >= LANES / 2)
        _mm256_storeu_ps(p, v);
    else
        _mm256_mask_storeu_ps(p, (__mmask8)v_mask(count), v);
}
#elif defined(__AVX2__) && defined(__FMA__)
#define LANES 8
typedef __m256 vec;
typedef __m128 hvec;
INLINE vec v_load(const float* p) { return _mm256_loadu_ps(p); }
INLINE vec v_broadcast(const float* p) { return _mm256_broadcast_ss(p); }
INLINE vec v_set1(float x) { return _mm256_set1_ps(x); }
INLINE vec v_fma(vec a, vec b, vec c) { return _mm256_fmadd_ps(a, b, c); }
INLINE vec v_add(vec a, vec b) { return _mm256_add_ps(a, b); }
INLINE vec v_mul(vec a, vec b) { return _mm256_mul_ps(a, b); }
INLINE vec v_max(vec a, vec b) { return _mm256_max_ps(a, b); }
INLINE vec v_min(vec a, vec b) { return _mm256_min_ps(a, b); }
INLINE vec v_load_n(const float* p, int count) {
    if (count >= LANES) return _mm256_loadu_ps(p);
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_maskload_ps(p, _mm256_cmpgt_epi32(_mm256_set1_epi32(count), lanes));
}
INLINE hvec h_load(const float* p) { return _mm_loadu_ps(p); }
INLINE hvec h_broadcast(const float* p) { return _mm_broadcast_ss(p); }
INLINE hvec h_low(vec v) { return _mm256_castps256_ps128(v); }
INLINE hvec h_fma(hvec a, hvec b, hvec c) { return _mm_fmadd_ps(a, b, c); }
INLINE hvec h_add(hvec a, hvec b) { return _mm_add_ps(a, b); }
INLINE hvec h_max(hvec a, hvec b) { return _mm_max_ps(a, b); }
INLINE hvec h_min(hvec a, hvec b) { return _mm_min_ps(a, b); }
INLINE hvec h_set1(float x) { return _mm_set1_ps(x); }
INLINE hvec h_zero(void) { return _mm_setzero_ps(); }
INLINE hvec h_load_n(const float* p, int count) {
    if (count >= 4) return _mm_loadu_ps(p);
    const __m128i lanes = _mm_setr_epi32(0, 1, 2, 3);
    return _mm_maskload_ps(p, _mm_cmpgt_epi32(_mm_set1_epi32(count), lanes));
}
INLINE void h_store_n(float* p, hvec v, int count) {
    if (count >= 4) {
        _mm_storeu_ps(p, v);
        return;
    }
    if (count >= 2) {
        _mm_storel_pi((__m64*)p, v);
        v = _mm_movehl_ps(v, v);
        p += 2;
        count -= 2;
    }
    if (count) _mm_store_ss(p, v);
}
INLINE void v_store_n(float* p, vec v, int count) {
    if (count >= LANES) {
        _mm256_storeu_ps(p, v);
    } else if (count > 4) {
        _mm_storeu_ps(p, _mm256_castps256_ps128(v));
        h_store_n(p + 4, _mm256_extractf128_ps(v, 1), count - 4);
    } else {
        h_store_n(p, _mm256_castps256_ps128(v), count);
    }
}
#elif defined(__aarch64__) && defined(__ARM_NEON) && !defined(SHUFFLENET_PLAIN_C)
#define LANES 4
typedef float32x4_t vec;
typedef float32x2_t hvec;
INLINE vec v_load(const float* p) { return vld1q_f32(p); }
INLINE vec v_broadcast(const float* p) { return vld1q_dup_f32(p); }
INLINE vec v_set1(float x) { return vdupq_n_f32(x); }
INLINE vec v_fma(vec a, vec b, vec c) { return vfmaq_f32(c, a, b); }
INLINE vec v_add(vec a, vec b) { return vaddq_f32(a, b); }
INLINE vec v_mul(vec a, vec b) { return vmulq_f32(a, b); }
INLINE vec v_max(vec a, vec b) { return vmaxq_f32(a, b); }
INLINE vec v_min(vec a, vec b) { return vminq_f32(a, b); }
INLINE vec v_load_n(const float* p, int count) {
    if (count >= LANES) return vld1q_f32(p);
    float lanes[LANES] = {0.0f, 0.0f, 0.0f, 0.0f};
    memcpy(lanes, p, sizeof(float) * (size_t)(count > 0 ? count : 0));
    return vld1q_f32(lanes);
}
INLINE void v_store_n(float* p, vec v, int count) {
    if (count >= LANES) {
        vst1q_f32(p, v);
        return;
    }
    float lanes[LANES];
    vst1q_f32(lanes, v);
    memcpy(p, lanes, sizeof(float) * (size_t)(count > 0 ? count : 0));
}
INLINE hvec h_load(const float* p) { return vld1_f32(p); }
INLINE hvec h_broadcast(const float* p) { return vld1_dup_f32(p); }
INLINE hvec h_low(vec v) { return vget_low_f32(v); }
INLINE hvec h_fma(hvec a, hvec b, hvec c) { return vfma_f32(c, a, b); }
INLINE hvec h_add(hvec a, hvec b) { return vadd_f32(a, b); }
INLINE hvec h_max(hvec a, hvec b) { return vmax_f32(a, b); }
INLINE hvec h_min(hvec a, hvec b) { return vmin_f32(a, b); }
INLINE hvec h_set1(float x) { return vdup_n_f32(x); }
INLINE hvec h_zero(void) { return vdup_n_f32(0.0f); }
INLINE hvec h_load_n(const float* p, int count) {
    if (count >= 2) return vld1_f32(p);
    return count == 1 ? vset_lane_f32(p[0], vdup_n_f32(0.0f), 0) : vdup_n_f32(0.0f);
}
INLINE void h_store_n(float* p, hvec v, int count) {
    if (count >= 2)
        vst1_f32(p, v);
    else if (count == 1)
        vst1_lane_f32(p, v, 0);
}
#else
#define LANES 8
typedef struct {
    float f[8];
} vec;
typedef struct {
    float f[4];
} hvec;
#define EACH_LANE(n) for (int i = 0; i < (n); i++)
INLINE vec v_load(const float* p) { vec v; memcpy(v.f, p, sizeof v.f); return v; }
INLINE vec v_set1(float x) { vec v; EACH_LANE(8) v.f[i] = x; return v; }
INLINE vec v_broadcast(const float* p) { return v_set1(*p); }
INLINE vec v_fma(vec a, vec b, vec c) { EACH_LANE(8) c.f[i] += a.f[i] * b.f[i]; return c; }
INLINE vec v_add(vec a, vec b) { EACH_LANE(8) a.f[i] += b.f[i]; return a; }
INLINE vec v_mul(vec a, vec b) { EACH_LANE(8) a.f[i] *= b.f[i]; return a; }
INLINE vec v_max(vec a, vec b) { EACH_LANE(8) a.f[i] = a.f[i] > b.f[i] ? a.f[i] : b.f[i]; return a; }
INLINE vec v_min(vec a, vec b) { EACH_LANE(8) a.f[i] = a.f[i] < b.f[i] ? a.f[i] : b.f[i]; return a; }
INLINE vec v_load_n(const float* p, int count) {
    vec v = v_set1(0.0f);
    memcpy(v.f, p, sizeof(float) * (size_t)(count < 0 ? 0 : count > 8 ? 8 : count));
    return v;
}
INLINE void v_store_n(float* p, vec v, int count) {
    memcpy(p, v.f, sizeof(float) * (size_t)(count < 0 ? 0 : count > 8 ? 8 : count));
}
INLINE hvec h_load(const float* p) { hvec v; memcpy(v.f, p, sizeof v.f); return v; }
INLINE hvec h_set1(float x) { hvec v; EACH_LANE(4) v.f[i] = x; return v; }
INLINE hvec h_broadcast(const float* p) { return h_set1(*p); }
INLINE hvec h_low(vec v) { hvec h; memcpy(h.f, v.f, sizeof h.f); return h; }
INLINE hvec h_fma(hvec a, hvec b, hvec c) { EACH_LANE(4) c.f[i] += a.f[i] * b.f[i]; return c; }
INLINE hvec h_add(hvec a, hvec b) { EACH_LANE(4) a.f[i] += b.f[i]; return a; }
INLINE hvec h_max(hvec a, hvec b) { EACH_LANE(4) a.f[i] = a.f[i] > b.f[i] ? a.f[i] : b.f[i]; return a; }
INLINE hvec h_min(hvec a, hvec b) { EACH_LANE(4) a.f[i] = a.f[i] < b.f[i] ? a.f[i] : b.f[i]; return a; }
INLINE hvec h_zero(void) { return h_set1(0.0f); }
INLINE hvec h_load_n(const float* p, int count) {
    hvec v = h_zero();
    memcpy(v.f, p, sizeof(float) * (size_t)(count < 0 ? 0 : count > 4 ? 4 : count));
    return v;
}
INLINE void h_store_n(float* p, hvec v, int count) {
    memcpy(p, v.f, sizeof(float) * (size_t)(count < 0 ? 0 : count > 4 ? 4 : count));
}
#undef EACH_LANE
#endif
#if !defined(__AVX512F__)
typedef int vpart;
typedef int hpart;
INLINE vpart v_part(int count) { return count; }
INLINE vec v_load_part(const float* p, vpart part) { return v_load_n(p, part); }
INLINE void v_store_part(float* p, vec v, vpart part) { v_store_n(p, v, part); }
INLINE hpart h_part(int count) { return count; }
INLINE hvec h_load_part(const float* p, hpart part) { return h_load_n(p, part); }
INLINE void h_store_part(float* p, hvec v, hpart part) { h_store_n(p, v, part); }
#endif
INLINE vec v_zero(void) { return v_set1(0.0f); }

#endif
