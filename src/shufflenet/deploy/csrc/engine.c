/* The shufflenet deploy engine: a whole network run as one C call on NHWC float32 buffers.

   The plan (built in shufflenet/deploy/engine.py) is a list of operations, typed in engine.h;
   weights live in one float arena and index tables in one int32 arena. Channel
   shuffles, splits and concatenations cost nothing here: a pointwise conv reads its input channels
   through an index table (any order, any subset) and writes its outputs at any channel offset of any
   buffer, so the planner turns every data-movement op of the papers' units into addressing.

   The kernels are written once over the vector layer of vector.h, compiled for AVX-512, AVX2 + FMA,
   NEON (aarch64) or plain C: engine.py picks the widest the CPU has. runner.c wraps the same kernels in
   a program that runs a saved plan, for CPUs that cannot load the library into Python (an aarch64
   build under emulation, a device without Python). */

#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "engine.h"


#ifndef CHUNK_INPUT_BYTES
#define CHUNK_INPUT_BYTES 8192
#endif
#ifndef WEIGHT_PREFETCH_ROWS
#define WEIGHT_PREFETCH_ROWS 32
#endif
#ifndef CHUNK_WEIGHT_BYTES
#define CHUNK_WEIGHT_BYTES 262144
#endif
/* A bfloat16 conv's packed input chunk (words, on the stack): at least one pixel of K <= 2 * PACK_WORDS. */
#define PACK_WORDS 8192

#include "vector.h"

/* The lanes of this build: engine.py packs weight panels for it. */
int shufflenet_engine_lanes(void) { return LANES; }

/* The plan's layout (engine.py checks it before the first run): the ABI version; *op_size = sizeof(Op). */
int64_t shufflenet_engine_abi(int64_t* op_size) {
    *op_size = (int64_t)sizeof(Op);
    return SHUFFLENET_ENGINE_ABI;
}

INLINE vec v_activate(vec y, int act) {
    if (act) y = v_max(y, v_zero());
    if (act == ACT_RELU6) y = v_min(y, v_set1(6.0f));
    return y;
}

INLINE hvec h_activate(hvec y, int act) {
    if (act) y = h_max(y, h_zero());
    if (act == ACT_RELU6) y = h_min(y, h_set1(6.0f));
    return y;
}

/* Kernels store many vectors with one activation: each activation is its own copy of the stores, chosen
   once (a branch per store would share ports with the FMAs). */
#define WITH_ACTIVATION(act, STORES)            \
    do {                                        \
        if ((act) == ACT_RELU6) {               \
            const int ACT = ACT_RELU6;          \
            STORES;                             \
        } else if ((act) == ACT_RELU) {         \
            const int ACT = ACT_RELU;           \
            STORES;                             \
        } else {                                \
            const int ACT = ACT_NONE;           \
            STORES;                             \
        }                                       \
    } while (0)

/* One register tile of the pointwise GEMM: ROWS pixels x (VECS * LANES + HALF * LANES / 2) output
   channels, in named registers (GCC keeps an array of vectors on the stack). The half-width part serves
   panel remainders (on AMD Zen 1 a 128-bit FMA costs half a 256-bit one, so it wastes nothing). Pixel r's
   input starts at a + r * step (a fixed step: a few base registers cover all rows, where a pointer per row
   would spill); idx[k] is the offset of input channel k within it. The tile's weights are K rows of its
   panel's stride. With BF16, the input is packed bfloat16 pairs (pack_bf16): K pair words per pixel, read
   in order, and the weights K rows of pair words. */
#if defined(__AVX512F__)
/* bfloat16 dot products (engine.h: PointwiseOp's ``bfloat16``): vdpbf16ps adds to each float lane the
   products of its two bfloat16 halves. Inline assembly needs no compiler flag for it (the build runs it only
   where the CPU has AVX512_BF16, has_bf16) and updates the accumulator in place (see DPBUSD in int8.c). */
#define BF16_KERNELS 1
#define DPBF16(acc, x, w) __asm__("vdpbf16ps %2, %1, %0" : "+v"(acc) : "v"(x), "v"(w))
/* acc += x * w: an FMA (fma: v_fma or h_fma), or with BF16 a bfloat16 dot product */
#define MAC_BY(fma, acc, x, w)           \
    do {                                 \
        if (BF16)                        \
            DPBF16(acc, x, w);           \
        else                             \
            acc = fma(x, w, acc);        \
    } while (0)
#define MAC(acc, x, w) MAC_BY(v_fma, acc, x, w)
#define HMAC(acc, x, w) MAC_BY(h_fma, acc, x, w)

static int has_bf16(void) {
    static int known = -1;
    if (known < 0) known = __builtin_cpu_supports("avx512bf16");
    return known;
}
#else
#define BF16_KERNELS 0
#define MAC(acc, x, w) acc = v_fma(x, w, acc)
#define HMAC(acc, x, w) acc = h_fma(x, w, acc)
#endif

/* Whether this build on this CPU runs bfloat16 pointwise convs (PointwiseOp's ``bfloat16``). */
int shufflenet_engine_bf16(void) {
#if BF16_KERNELS
    return has_bf16();
#else
    return 0;
#endif
}

#define ROW_INIT(r) vec c##r##0 = b0, c##r##1 = b1, c##r##2 = b2; hvec q##r = bq;
#define ROW_FMA(r)                                                       \
    if (ROWS > r) {                                                      \
        if (VECS > 0) {                                                  \
            const vec x = v_broadcast(p + r * step);                     \
            MAC(c##r##0, x, w0);                                         \
            if (VECS > 1) MAC(c##r##1, x, w1);                           \
            if (VECS > 2) MAC(c##r##2, x, w2);                           \
            if (HALF) HMAC(q##r, h_low(x), wq);                          \
        } else {                                                         \
            HMAC(q##r, h_broadcast(p + r * step), wq);                   \
        }                                                                \
    }
#define ROW_STORE(r)                                                                                 \
    if (ROWS > r) {                                                                                  \
        float* o = out + (size_t)r * out_stride;                                                     \
        if (res) {                                                                                   \
            const float* rr = res + (size_t)r * res_stride;                                          \
            if (VECS > 0) c##r##0 = v_add(c##r##0, v_load_part(rr, part0));                          \
            if (VECS > 1) c##r##1 = v_add(c##r##1, v_load_part(rr + LANES, part1));                  \
            if (VECS > 2) c##r##2 = v_add(c##r##2, v_load_part(rr + 2 * LANES, part2));              \
            if (HALF) q##r = h_add(q##r, h_load_part(rr + LANES * VECS, half_part));                 \
        }                                                                                            \
        if (VECS > 0) v_store_part(o, v_activate(c##r##0, ACT), part0);                              \
        if (VECS > 1) v_store_part(o + LANES, v_activate(c##r##1, ACT), part1);                      \
        if (VECS > 2) v_store_part(o + 2 * LANES, v_activate(c##r##2, ACT), part2);                  \
        if (HALF) h_store_part(o + LANES * VECS, h_activate(q##r, ACT), half_part);                  \
    }
#define ROWS_0_TO_15(M) M(0) M(1) M(2) M(3) M(4) M(5) M(6) M(7) M(8) M(9) M(10) M(11) M(12) M(13) M(14) M(15)

INLINE void pointwise_tile(const int BF16, const int ROWS, const int VECS, const int HALF, const float* a, size_t step,
                           const int32_t* idx, int K, const float* w, int panel, const float* bias, float* out,
                           size_t out_stride, const float* res, size_t res_stride, int valid, int act,
                           const char* ahead, int ahead_step) {
    const vec b0 = VECS > 0 ? v_load(bias) : v_zero();
    const vec b1 = VECS > 1 ? v_load(bias + LANES) : b0;
    const vec b2 = VECS > 2 ? v_load(bias + 2 * LANES) : b0;
    const hvec bq = HALF ? h_load(bias + LANES * VECS) : h_zero();
    ROWS_0_TO_15(ROW_INIT)
    /* Two steps per iteration: the loop's own instructions (index load, counters, branch) are shared. */
#pragma GCC unroll 2
    for (int k = 0; k < K; k++) {
        const float* p = BF16 ? a + k : a + idx[k];
        const float* wk = w + (size_t)k * panel;
        /* Weights asked for ahead of use (pointwise says which): a row's first two cache lines a step */
        __builtin_prefetch(ahead, 0, 3);
        if (VECS > 1) __builtin_prefetch(ahead + 64, 0, 3);
        ahead += ahead_step;
        const vec w0 = VECS > 0 ? v_load(wk) : b0;
        const vec w1 = VECS > 1 ? v_load(wk + LANES) : w0;
        const vec w2 = VECS > 2 ? v_load(wk + 2 * LANES) : w0;
        const hvec wq = HALF ? h_load(wk + LANES * VECS) : bq;
        ROWS_0_TO_15(ROW_FMA)
    }
    const vpart part0 = v_part(valid), part1 = v_part(valid - LANES), part2 = v_part(valid - 2 * LANES);
    const hpart half_part = h_part(valid - LANES * VECS);
    WITH_ACTIVATION(act, ROWS_0_TO_15(ROW_STORE));
}

/* Tile shapes: (rows, full vectors, half vector), each with at most 12 (AVX2: 16 registers) or 28
   (AVX-512: 32 registers) accumulators. */
typedef struct {
    int rows, vecs, half;
} Shape;

/* Output channels are cut into panels of 2 vectors (AVX2 16 channels, AVX-512 32), except that 2.5 or 3
   vectors' worth remaining make one panel (a 4 x 20 or 4 x 24 AVX2 tile beats 16 plus a narrow remainder
   tile: fewer broadcasts per FMA). Each panel is stored K rows of its stride: its width rounded up to a
   half vector, at least 16 floats (rows stay 64-byte aligned; NEON: at least 8, two of its vectors, so
   that only a last panel is ever padded). engine.py packs the weights by the same
   rules. */
static int panel_width(int remaining) {
    return remaining == 5 * LANES / 2 || remaining == 3 * LANES || remaining < 2 * LANES ? remaining : 2 * LANES;
}

static int panel_stride(int valid) {
    const int rounded = (valid + LANES / 2 - 1) / (LANES / 2) * (LANES / 2);
    const int least = 2 * LANES < 16 ? 2 * LANES : 16;
    return rounded > least ? rounded : least;
}

/* Tile rows for 2.5-3 vectors, 1.5-2 and 0.5-1. Chunks of pixels are a multiple of the widest and the
   narrowest tiles' rows (a chunk's tiles are made equal in any case). 32 registers: 14 rows of 2 vectors
   leave 2 for the weights and 1 for the broadcast input. */
#if LANES == 16 || defined(__aarch64__) /* 32 vector registers */
#define ROWS_WIDE 8
#define ROWS_MID 14
#define ROWS_NARROW 16
#define CHUNK_ROWS 48
#else
#define ROWS_WIDE 4
#define ROWS_MID 6
#define ROWS_NARROW 8
#define CHUNK_ROWS 24
#endif

/* The tile for a panel of ``valid`` channels: the narrowest that covers it. */
static Shape panel_shape(int valid) {
    if (valid > 5 * LANES / 2) return (Shape){ROWS_WIDE, 3, 0};
    if (valid > 2 * LANES) return (Shape){ROWS_WIDE, 2, 1};
    if (valid > 3 * LANES / 2) return (Shape){ROWS_MID, 2, 0};
    if (valid > LANES) return (Shape){ROWS_MID, 1, 1};
    if (valid > LANES / 2) return (Shape){ROWS_NARROW, 1, 0};
    return (Shape){ROWS_NARROW, 0, 1};
}

#define TILE(R, V, Q) \
    pointwise_tile(BF16, R, V, Q, a, step, idx, K, w, panel, bias, out, out_stride, res, res_stride, valid, act, \
                   ahead, ahead_step)
/* Row counts up to each shape's own: every case is a separate specialised kernel. */
#define ROWS_UP_TO_4(V, Q)                                                                     \
    case 4: TILE(4, V, Q); break; case 3: TILE(3, V, Q); break; case 2: TILE(2, V, Q); break; \
    default: TILE(1, V, Q); break;
#define ROWS_UP_TO_6(V, Q) case 6: TILE(6, V, Q); break; case 5: TILE(5, V, Q); break; ROWS_UP_TO_4(V, Q)
#define ROWS_UP_TO_8(V, Q) case 8: TILE(8, V, Q); break; case 7: TILE(7, V, Q); break; ROWS_UP_TO_6(V, Q)
#define ROWS_UP_TO_12(V, Q)                                                                       \
    case 12: TILE(12, V, Q); break; case 11: TILE(11, V, Q); break; case 10: TILE(10, V, Q); break; \
    case 9: TILE(9, V, Q); break; ROWS_UP_TO_8(V, Q)
#define ROWS_UP_TO_14(V, Q) case 14: TILE(14, V, Q); break; case 13: TILE(13, V, Q); break; ROWS_UP_TO_12(V, Q)
#define ROWS_UP_TO_16(V, Q)                                                                       \
    case 16: TILE(16, V, Q); break; case 15: TILE(15, V, Q); break; ROWS_UP_TO_14(V, Q)
#define ROWS_UP_TO(n) ROWS_UP_TO_EXPAND(n)
#define ROWS_UP_TO_EXPAND(n) ROWS_UP_TO_##n

/* Dispatch to a tile specialised for its shape (constants after inlining). */
INLINE void pointwise_rows_as(const int BF16, Shape shape, int rows, const float* a, size_t step,
                              const int32_t* idx, int K, const float* w, int panel, const float* bias, float* out,
                              size_t out_stride, const float* res, size_t res_stride, int valid, int act,
                              const char* ahead, int ahead_step) {
    if (shape.vecs == 2 && !shape.half) {
        switch (rows) { ROWS_UP_TO(ROWS_MID)(2, 0) }
    } else if (shape.vecs == 3) {
        switch (rows) { ROWS_UP_TO(ROWS_WIDE)(3, 0) }
    } else if (shape.vecs == 2) {
        switch (rows) { ROWS_UP_TO(ROWS_WIDE)(2, 1) }
    } else if (shape.vecs == 1 && shape.half) {
        switch (rows) { ROWS_UP_TO(ROWS_MID)(1, 1) }
    } else if (shape.vecs == 1) {
        switch (rows) { ROWS_UP_TO(ROWS_NARROW)(1, 0) }
    } else {
        switch (rows) { ROWS_UP_TO(ROWS_NARROW)(0, 1) }
    }
}

#define ROWS_ARGUMENTS                                                                                        \
    Shape shape, int rows, const float *a, size_t step, const int32_t *idx, int K, const float *w, int panel, \
        const float *bias, float *out, size_t out_stride, const float *res, size_t res_stride, int valid, int act, \
        const char *ahead, int ahead_step
#define ROWS_PASSED \
    shape, rows, a, step, idx, K, w, panel, bias, out, out_stride, res, res_stride, valid, act, ahead, ahead_step
static void pointwise_rows(ROWS_ARGUMENTS) { pointwise_rows_as(0, ROWS_PASSED); }

#if BF16_KERNELS
static void pointwise_rows_bf16(ROWS_ARGUMENTS) { pointwise_rows_as(1, ROWS_PASSED); }

/* ``count`` pixels (pixel i at in + i * step, its K channels at idx) as bfloat16 pairs, rounded to nearest
   even: (K + 1) / 2 words per pixel from out, the last one's high half 0 for an odd K. ``contiguous``:
   idx[k] = idx[0] + k (loads, not gathers). */
static void pack_bf16(const float* in, size_t step, const int32_t* idx, int K, int contiguous, int count,
                      uint32_t* out) {
    const int pairs = (K + 1) / 2;
    for (int i = 0; i < count; i++) {
        const float* x = in + (size_t)i * step;
        uint32_t* o = out + (size_t)i * pairs;
        for (int k = 0; k < K; k += 32) {
            const int left = K - k;
            const __mmask16 low_mask = v_mask(left >= LANES ? LANES : left);
            const __mmask16 high_mask = left > LANES ? v_mask(left >= 2 * LANES ? LANES : left - LANES) : 0;
            __m512 low, high, packed;
            if (contiguous) {
                low = _mm512_maskz_loadu_ps(low_mask, x + idx[0] + k);
                high = _mm512_maskz_loadu_ps(high_mask, x + idx[0] + k + LANES);
            } else {
                const __m512 zero = _mm512_setzero_ps();
                low = _mm512_mask_i32gather_ps(zero, low_mask, _mm512_maskz_loadu_epi32(low_mask, idx + k), x, 4);
                high = _mm512_mask_i32gather_ps(zero, high_mask, _mm512_maskz_loadu_epi32(high_mask, idx + k + LANES),
                                                x, 4);
            }
            /* vcvtne2ps2bf16: the second source's floats become the low 16 bfloat16 */
            __asm__("vcvtne2ps2bf16 %2, %1, %0" : "=v"(packed) : "v"(high), "v"(low));
            const int words = left >= 2 * LANES ? LANES : (left + 1) / 2;
            _mm512_mask_storeu_epi32(o + k / 2, v_mask(words), _mm512_castps_si512(packed));
        }
    }
}
#endif

/* out[p, out_offset + g*N + n] = act(bias + sum_k in[pixel p + idx[g*K + k]] * w[g][k][n] (+ res[...]))
   (output line l starts at pixel l * out_pitch, or l * line_len where out_pitch is 0)
   The pixels come in lines of line_len; pixel j of line l starts at in + line_base[l] + j * step (a 1x1
   conv: one line, step = the input's channel stride; the stem conv: one line per output row, reading its
   3x3 windows from a zero-bordered NCHW image through idx). Output and residual pixels are consecutive.
   Weights are packed per group in panels of output channels (widths by panel_width), each panel K rows
   of its panel_stride (only a last partial panel is wider than its channels, padded with zeros), so a
   panel is one contiguous stream; biases as n_pad floats per group (n_pad: the panels' strides summed). */
/* A thread's share of a pointwise conv: lines [line_begin, line_end), pixels [pixel_begin, pixel_end) of
   each line, output channels [channel_begin, channel_end) of each group (panel boundaries). */
typedef struct {
    int line_begin, line_end, pixel_begin, pixel_end, channel_begin, channel_end;
} Part;

static void pointwise(const float* in, const int32_t* line_base, int line_len, int step,
                      const int32_t* idx, int groups, int K, int N, int n_pad, const float* w, const float* bias,
                      float* out, int out_stride, int out_offset, const float* res, int res_stride,
                      int res_offset, int act, int out_pitch, int bf16, Part part) {
    /* Weight rows per panel and input bytes per pixel: K floats, or (K + 1) / 2 bfloat16 pairs. */
    const int rows_k = bf16 ? (K + 1) / 2 : K;
    /* Pixels in chunks whose inputs stay in L1 while every weight panel passes over them, unless the
       weights are too big to re-read per chunk (the head conv, the classifier): then whole lines. */
    int chunk = line_len;
    if ((size_t)rows_k * n_pad * sizeof(float) <= CHUNK_WEIGHT_BYTES) {
        chunk = (int)(CHUNK_INPUT_BYTES / ((size_t)rows_k * sizeof(float))) / CHUNK_ROWS * CHUNK_ROWS;
        if (chunk < CHUNK_ROWS) chunk = CHUNK_ROWS;
    }
#if BF16_KERNELS
    /* bfloat16: each chunk's pixels packed here first (the planner keeps K within it) */
    uint32_t packed[PACK_WORDS];
    if (bf16 && chunk > PACK_WORDS / rows_k) chunk = PACK_WORDS / rows_k;
#endif
    for (int g = 0; g < groups; g++) {
        const int32_t* gidx = idx + (size_t)g * K;
        const float* gw = w + (size_t)g * rows_k * n_pad;
#if BF16_KERNELS
        /* bfloat16 packing loads runs where the channels read lie side by side (no shuffle, no split) */
        int contiguous = bf16;
        for (int k = 1; k < K && contiguous; k++) contiguous = gidx[k] == gidx[0] + k;
#endif
        for (int line = part.line_begin; line < part.line_end; line++) {
            const float* line_in = in + line_base[line];
            const size_t first = (size_t)line * line_len;
            /* Output lines out_pitch pixels apart: a map with a zero border that a shift reads around. */
            const size_t out_first = (size_t)line * (out_pitch ? (size_t)out_pitch : (size_t)line_len);
            /* Chunks and tiles of equal size rather than full ones and a remainder: 49 pixels as tiles of
               10, 10, 10, 10 and 9 rows, not 12, 12, 12, 12 and 1 (a one-row tile has too few
               accumulators to keep the FMA units busy). */
            for (int c0 = part.pixel_begin, c1; c0 < part.pixel_end; c0 = c1) {
                const int left = part.pixel_end - c0, chunks = (left + chunk - 1) / chunk;
                c1 = c0 + (left + chunks - 1) / chunks;
                const float* chunk_in = line_in + (size_t)c0 * step;
                size_t chunk_step = (size_t)step;
#if BF16_KERNELS
                if (bf16) {
                    pack_bf16(chunk_in, chunk_step, gidx, K, contiguous, c1 - c0, packed);
                    chunk_in = (const float*)packed;
                    chunk_step = (size_t)rows_k;
                }
#endif
                for (int n0 = part.channel_begin, valid; n0 < part.channel_end; n0 += valid) {
                    valid = panel_width(N - n0);
                    const Shape shape = panel_shape(valid);
                    const size_t channel = (size_t)out_offset + (size_t)g * N + n0;
                    /* Weight prefetches. The first chunk of a line reads the weights from L3 or memory
                       (a network's exceed L2): there each of a panel's tiles asks for its share of the
                       next panel's (past the last panel, the next operation's), so memory is asked at the
                       pace of all the panel's tiles, not of its first. Later chunks find them in L2 and
                       ask WEIGHT_PREFETCH_ROWS rows ahead in their own panel. */
                    const char* panel_w = (const char*)(gw + (size_t)n0 * rows_k);
                    const size_t row_bytes = (size_t)panel_stride(valid) * sizeof(float);
                    const int panel_tiles = (c1 - c0 + shape.rows - 1) / shape.rows;
                    const int share = c0 == part.pixel_begin && panel_tiles > 1 ? panel_tiles : 0;
                    const int ahead_step = (int)(share ? row_bytes / share : row_bytes);
                    for (int p0 = c0, rows, tile = 0; p0 < c1; p0 += rows, tile++) {
                        const int tiles = (c1 - p0 + shape.rows - 1) / shape.rows;
                        const char* ahead = share ? panel_w + rows_k * row_bytes + (size_t)tile * rows_k * ahead_step
                                                  : panel_w + WEIGHT_PREFETCH_ROWS * row_bytes;
                        rows = (c1 - p0 + tiles - 1) / tiles;
                        const size_t pixel = first + p0;
                        const float* r0 =
                            res ? res + pixel * res_stride + res_offset + (size_t)g * N + n0 : 0;
                        /* Panels before the last are unpadded: this one starts n0 * rows_k floats in. */
                        const float* tile_in = chunk_in + (size_t)(p0 - c0) * chunk_step;
                        const float* tile_w = gw + (size_t)n0 * rows_k;
                        float* tile_out = out + (out_first + p0) * out_stride + channel;
#if BF16_KERNELS
                        if (bf16) {
                            pointwise_rows_bf16(shape, rows, tile_in, chunk_step, gidx, rows_k, tile_w,
                                                panel_stride(valid), bias + g * n_pad + n0, tile_out, out_stride,
                                                r0, res_stride, valid, act, ahead, ahead_step);
                            continue;
                        }
#endif
                        pointwise_rows(shape, rows, tile_in, chunk_step, gidx, K, tile_w, panel_stride(valid),
                                       bias + g * n_pad + n0, tile_out, out_stride, r0, res_stride, valid, act, ahead,
                                       ahead_step);
                    }
                }
            }
        }
    }
}

/* The rows [ky0, ky1) and columns [kx0, kx1) of the 3x3 window at (iy0, ix0) that lie inside an H x W
   map. */
static inline void window_range(int H, int W, int iy0, int ix0, int* ky0, int* ky1, int* kx0, int* kx1) {
    *ky0 = iy0 < 0 ? -iy0 : 0;
    *ky1 = iy0 + 3 > H ? H - iy0 : 3;
    *kx0 = ix0 < 0 ? -ix0 : 0;
    *kx1 = ix0 + 3 > W ? W - ix0 : 3;
}

/* The 9 taps of one channel block with the window rows that fall outside the map zeroed: a border row of
   outputs then runs the interior code, its outside rows reading a row inside the map (clamped) and adding
   0 times it. */
typedef struct {
    vec k[9];
} Taps;

INLINE Taps taps_inside(const Taps* all, int row_inside[3]) {
    Taps taps;
    for (int t = 0; t < 9; t++) taps.k[t] = row_inside[t / 3] ? all->k[t] : v_zero();
    return taps;
}

/* Where window row (column) 0, 1, 2 at input row (column) ``first`` is read: clamped into [0, size), with
   ``inside[i]`` saying whether it really is there. */
INLINE void window_lines(int first, int size, int inside[3], int line[3]) {
    for (int i = 0; i < 3; i++) {
        const int at = first + i;
        inside[i] = at >= 0 && at < size;
        line[i] = at < 0 ? 0 : at >= size ? size - 1 : at;
    }
}

/* Up to DEPTHWISE_BLOCK (stride 1) or DEPTHWISE_BLOCK_STRIDED (stride 2) neighbouring outputs of a row at
   once: 9 taps, the block's accumulators and one input vector in registers (AVX2: 16 of them). */
#if LANES == 16 || defined(__aarch64__) /* 32 vector registers */
#define DEPTHWISE_BLOCK 8
#define DEPTHWISE_BLOCK_STRIDED 8
#else
#define DEPTHWISE_BLOCK 4
#define DEPTHWISE_BLOCK_STRIDED 4
#endif

/* N neighbouring outputs of one channel block, stride S: each input column of a window row is loaded once
   and feeds every output whose window holds it (N + 2 loads per row at stride 1, not 3 N), the N
   accumulators independent FMA chains. ``p``: the first output's window centre in the top row; the column
   left of the map (``skip_first``) or right of it (``skip_last``) is not read: its taps add nothing. */
INLINE void depthwise_block(const int S, const int N, const float* p, size_t in_stride, ptrdiff_t row1,
                            ptrdiff_t row2, const Taps* taps, vec b, float* o, size_t out_stride, int skip_first,
                            int skip_last, int act, vpart part) {
    vec acc[N];
#pragma GCC unroll 8
    for (int j = 0; j < N; j++) acc[j] = b;
#pragma GCC unroll 3
    for (int ky = 0; ky < 3; ky++) {
        const float* row = p + (ky == 0 ? 0 : ky == 1 ? row1 : row2);
#pragma GCC unroll 20
        for (int col = 0; col < S * (N - 1) + 3; col++) {
            if ((col == 0 && skip_first) || (col == S * (N - 1) + 2 && skip_last)) continue;
            const vec x = v_load(row + ((ptrdiff_t)col - 1) * (ptrdiff_t)in_stride);
#pragma GCC unroll 8
            for (int j = 0; j < N; j++) {
                const int kx = col - S * j;
                if (kx >= 0 && kx < 3) acc[j] = v_fma(x, taps->k[ky * 3 + kx], acc[j]);
            }
        }
    }
#define STORE_OUTPUTS                                                                           \
    _Pragma("GCC unroll 8") for (int j = 0; j < N; j++)                                         \
        v_store_part(o + (size_t)j * out_stride, v_activate(acc[j], ACT), part)
    WITH_ACTIVATION(act, STORE_OUTPUTS);
#undef STORE_OUTPUTS
}

/* Each block size is its own specialised kernel. */
#define BLOCK(S, N) \
    depthwise_block(S, N, p, in_stride, row1, row2, &taps, b, o, out_stride, skip_first, skip_last, act, part)
#define BLOCKS_UP_TO_4(S) \
    case 4: BLOCK(S, 4); break; case 3: BLOCK(S, 3); break; case 2: BLOCK(S, 2); break; default: BLOCK(S, 1); break;
#define BLOCKS_UP_TO_8(S) \
    case 8: BLOCK(S, 8); break; case 7: BLOCK(S, 7); break; case 6: BLOCK(S, 6); break; \
    case 5: BLOCK(S, 5); break; BLOCKS_UP_TO_4(S)
#define BLOCKS_UP_TO(n, S) BLOCKS_UP_TO_EXPAND(n, S)
#define BLOCKS_UP_TO_EXPAND(n, S) BLOCKS_UP_TO_##n(S)

/* One output row of a 3x3 depthwise conv, padding 1, over C channels (C a multiple of 8; the planner pads
   it) in blocks of LANES channels, the last block of an AVX-512 build possibly half full. ``top``,
   ``middle`` and ``bottom`` are the window's three input rows (a row outside the map: any row inside it,
   with ``row_inside`` 0; they need not be evenly spaced, so the rows may come from a ring of a few rows).
   Loads are whole vectors: lanes past the channels read the next pixel, the next tap row or the 16-float
   slack of every buffer and arena block, and are dropped by the exact store. Weights: 9 rows (taps) of C
   floats. The outputs go in blocks of equal size (14 as 7 + 7, not 8 + 6: fewer, fuller blocks), the
   first and last blocks skipping the columns outside the map. */
static void depthwise_row(const float* top, const float* middle, const float* bottom, int row_inside[3], int W,
                          int in_stride, int C, int stride, const float* w, const float* bias, float* row_out,
                          int Wo, int out_stride, int act) {
    const ptrdiff_t row1 = middle - top, row2 = bottom - top;
    const int most = stride == 1 ? DEPTHWISE_BLOCK : DEPTHWISE_BLOCK_STRIDED;
    for (int c0 = 0; c0 < C; c0 += LANES) {
        const vpart part = v_part(C - c0);
        Taps all;
        for (int t = 0; t < 9; t++) all.k[t] = v_load(w + t * C + c0);
        const Taps taps = taps_inside(&all, row_inside);
        const vec b = v_load(bias + c0);
        for (int ox0 = 0, n; ox0 < Wo; ox0 += n) {
            const int blocks = (Wo - ox0 + most - 1) / most;
            n = (Wo - ox0 + blocks - 1) / blocks;
            const float* p = top + c0 + (size_t)ox0 * stride * in_stride;
            float* o = row_out + c0 + (size_t)ox0 * out_stride;
            const int skip_first = ox0 == 0, skip_last = (ox0 + n - 1) * stride + 1 >= W;
            if (stride == 1) {
                switch (n) { BLOCKS_UP_TO(DEPTHWISE_BLOCK, 1) }
            } else {
                switch (n) { BLOCKS_UP_TO(DEPTHWISE_BLOCK_STRIDED, 2) }
            }
        }
    }
}

/* Output rows [oy_begin, oy_end) of a 3x3 depthwise conv over a whole H x W map (see depthwise_row). Rows
   outermost: the three input rows a row of outputs needs stay in cache across channel blocks. */
static void depthwise(const float* in, int H, int W, int in_stride, int C, int stride, const float* w,
                      const float* bias, float* out, int Wo, int out_stride, int out_offset, int act, int oy_begin,
                      int oy_end) {
    const size_t row = (size_t)W * in_stride;
    for (int oy = oy_begin; oy < oy_end; oy++) {
        int row_inside[3], rows[3];
        window_lines(oy * stride - 1, H, row_inside, rows);
        depthwise_row(in + rows[0] * row, in + rows[1] * row, in + rows[2] * row, row_inside, W, in_stride, C,
                      stride, w, bias, out + (size_t)oy * Wo * out_stride + out_offset, Wo, out_stride, act);
    }
}

/* Output rows [oy_begin, oy_end) of depthwise conv ``d`` over the map that pointwise conv ``p`` writes, the
   map's rows computed as the windows reach them into a ring of three rows (row r in slot r % 3: a window's
   rows are consecutive, so the row a new one replaces is behind every later window). Each map row is read
   back while in L2, never written out: the maps that MobileNet V2's expansions write (a 112x112x96 map is
   4.6 MB) do not stay in cache between two whole-map operations. With ``q``, each output row goes to one
   more row of scratch (after the ring), and pointwise conv ``q`` makes its own output row from it at once. */
static void expand_depthwise(const PointwiseOp* p, const DepthwiseOp* d, const PointwiseOp* q, float* const* buffers,
                             const float* floats, const int32_t* ints, float* ring, int oy_begin, int oy_end) {
    const int H = (int)d->height, W = (int)d->width, Wo = (int)d->out_width;
    const size_t row_floats = (size_t)W * d->source_stride;
    float* depthwise_out = ring + 3 * row_floats;
    const int32_t* line_starts = ints + p->line_starts;
    const int32_t zero = 0;
    const Part row_part = {0, 1, 0, W, 0, (int)p->n_per_group};
    /* Map row r: pixels [r W, r W + W) of the conv's one line, or its line r (the stem reads an image line
       per output row). */
    const int one_line = p->lines == 1;
    int held[3] = {-1, -1, -1};
    for (int oy = oy_begin; oy < oy_end; oy++) {
        int row_inside[3], rows[3];
        window_lines(oy * (int)d->stride - 1, H, row_inside, rows);
        for (int i = 0; i < 3; i++) {
            const int r = rows[i], slot = r % 3;
            if (held[slot] == r) continue;
            pointwise(buffers[p->source] + (one_line ? (size_t)r * W * p->step : 0), line_starts + (one_line ? 0 : r),
                      W, (int)p->step, ints + p->index, (int)p->groups, (int)p->k_per_group, (int)p->n_per_group,
                      (int)p->n_padded, floats + p->weights, floats + p->bias, ring + slot * row_floats,
                      (int)p->target_stride, 0, 0, 0, 0, (int)p->activation, 0, (int)p->bfloat16, row_part);
            held[slot] = r;
        }
        float* out = q ? depthwise_out : buffers[d->target] + (size_t)oy * Wo * d->target_stride;
        depthwise_row(ring + (rows[0] % 3) * row_floats, ring + (rows[1] % 3) * row_floats,
                      ring + (rows[2] % 3) * row_floats, row_inside, W, (int)d->source_stride, (int)d->channels,
                      (int)d->stride, floats + d->weights, floats + d->bias, out + d->target_offset, Wo,
                      (int)d->target_stride, (int)d->activation);
        if (!q) continue;
        const size_t first = (size_t)oy * Wo;
        const Part project_part = {0, 1, 0, Wo, 0, (int)q->n_per_group};
        pointwise(depthwise_out, &zero, Wo, (int)q->step, ints + q->index, (int)q->groups, (int)q->k_per_group,
                  (int)q->n_per_group, (int)q->n_padded, floats + q->weights, floats + q->bias,
                  buffers[q->target] + first * q->target_stride, (int)q->target_stride, (int)q->target_offset,
                  q->residual >= 0 ? buffers[q->residual] + first * q->residual_stride : 0, (int)q->residual_stride,
                  (int)q->residual_offset, (int)q->activation, 0, (int)q->bfloat16, project_part);
    }
}

/* One pooled vector on the map's border. */
static inline vec pool_border(int average, const float* in, int H, int W, int in_stride, int c0, int iy0,
                              int ix0) {
    vec acc = average ? v_zero() : v_set1(-__builtin_inff());
    int ky0, ky1, kx0, kx1;
    window_range(H, W, iy0, ix0, &ky0, &ky1, &kx0, &kx1);
    for (int ky = ky0; ky < ky1; ky++)
        for (int kx = kx0; kx < kx1; kx++) {
            const vec x = v_load(in + ((size_t)(iy0 + ky) * W + ix0 + kx) * in_stride + c0);
            acc = average ? v_add(acc, x) : v_max(acc, x);
        }
    return acc;
}

/* 3x3 stride-2 pooling with padding 1: max, or the mean over all 9 taps (zero padding counted, as
   AvgPool2d's count_include_pad). Interior windows skip the bounds checks and reduce as a tree. Loads are
   whole vectors (AVX2's masked load is slow on AMD Zen): lanes past the last channel read the next pixel
   or the buffer's 16-float slack and are dropped by the exact store. */
static void pool(int average, const float* in, int H, int W, int in_stride, int C, float* out, int Wo,
                 int out_stride, int out_offset, int oy_begin, int oy_end) {
    const vec ninth = v_set1(1.0f / 9.0f);
    const int ox_end = (W - 2) / 2 + 1 < Wo ? (W - 2) / 2 + 1 : Wo; /* windows inside the map: ox in [1, end) */
    for (int oy = oy_begin; oy < oy_end; oy++) {
        const int iy0 = oy * 2 - 1;
        const int inside = iy0 >= 0 && iy0 + 2 < H;
        for (int ox = 0; ox < Wo; ox++) {
            const int ix0 = ox * 2 - 1;
            float* o = out + ((size_t)oy * Wo + ox) * out_stride + out_offset;
            for (int c0 = 0; c0 < C; c0 += LANES) {
                vec acc;
                if (inside && ox >= 1 && ox < ox_end) {
                    const float* p = in + ((size_t)iy0 * W + ix0) * in_stride + c0;
                    const size_t row = (size_t)W * in_stride;
                    vec t[9];
                    for (int ky = 0; ky < 3; ky++)
                        for (int kx = 0; kx < 3; kx++) t[ky * 3 + kx] = v_load(p + ky * row + (size_t)kx * in_stride);
                    if (average) {
                        acc = v_add(v_add(v_add(t[0], t[1]), v_add(t[2], t[3])),
                                    v_add(v_add(t[4], t[5]), v_add(t[6], t[7])));
                        acc = v_add(acc, t[8]);
                    } else {
                        acc = v_max(v_max(v_max(t[0], t[1]), v_max(t[2], t[3])),
                                    v_max(v_max(t[4], t[5]), v_max(t[6], t[7])));
                        acc = v_max(acc, t[8]);
                    }
                } else {
                    acc = pool_border(average, in, H, W, in_stride, c0, iy0, ix0);
                }
                if (average) acc = v_mul(acc, ninth);
                v_store_n(o + c0, acc, C - c0);
            }
        }
    }
}

/* 2x2 windows, stride 2, no padding: a trailing odd row or column is dropped, as in PyTorch. */
static void pool2(const float* in, int W, int in_stride, int C, float* out, int Wo, int out_stride,
                  int out_offset, int oy_begin, int oy_end) {
    const vec quarter = v_set1(0.25f);
    const size_t row = (size_t)W * in_stride;
    for (int oy = oy_begin; oy < oy_end; oy++) {
        for (int ox = 0; ox < Wo; ox++) {
            const float* p = in + ((size_t)(2 * oy) * W + 2 * ox) * in_stride;
            float* o = out + ((size_t)oy * Wo + ox) * out_stride + out_offset;
            for (int c0 = 0; c0 < C; c0 += LANES) {
                const int n = C - c0;
                const vec top = v_add(v_load_n(p + c0, n), v_load_n(p + in_stride + c0, n));
                const vec bottom = v_add(v_load_n(p + row + c0, n), v_load_n(p + row + in_stride + c0, n));
                v_store_n(o + c0, v_mul(v_add(top, bottom), quarter), n);
            }
        }
    }
}

/* Per pixel, copy channel runs: runs holds (source offset, target offset, length) triples, in values of
   ``bytes`` bytes. */
static void copy_runs(const void* in, int in_stride, void* out, int out_stride, const int32_t* runs, int n_runs,
                      int bytes, int p_begin, int p_end) {
    for (int p = p_begin; p < p_end; p++) {
        const char* source = (const char*)in + (size_t)p * in_stride * bytes;
        char* target = (char*)out + (size_t)p * out_stride * bytes;
        for (int r = 0; r < n_runs; r++)
            memcpy(target + (size_t)runs[3 * r + 1] * bytes, source + (size_t)runs[3 * r] * bytes,
                   (size_t)runs[3 * r + 2] * bytes);
    }
}

/* The mean over pixels of channels [c_begin, c_end). */
static void global_average(const float* in, int npix, int in_stride, float* out, int c_begin, int c_end) {
    for (int c = c_begin; c < c_end; c++) out[c] = 0.0f;
    for (int p = 0; p < npix; p++)
        for (int c = c_begin; c < c_end; c++) out[c] += in[(size_t)p * in_stride + c];
    const float scale = 1.0f / (float)npix;
    for (int c = c_begin; c < c_end; c++) out[c] *= scale;
}

/* out[p, c] = act(in[p, c] * sigmoid(gate[c]) (+ res[p, c])) for pixels [p_begin, p_end); every thread
   takes the sigmoids itself (C of them: less than one pixel's work), so no thread writes the gate. */
static void scale_channels(const float* in, int in_stride, int C, const float* logits, float* out,
                           int out_stride, const float* res, int res_stride, int act, int p_begin, int p_end) {
    float gate[C + LANES];
    for (int c = 0; c < C; c++) gate[c] = 1.0f / (1.0f + expf(-logits[c]));
    for (int p = p_begin; p < p_end; p++) {
        const float* x = in + (size_t)p * in_stride;
        const float* r = res ? res + (size_t)p * res_stride : 0;
        float* o = out + (size_t)p * out_stride;
        for (int c0 = 0; c0 < C; c0 += LANES) {
            const int n = C - c0;
            vec y = v_mul(v_load_n(x + c0, n), v_load_n(gate + c0, n));
            if (r) y = v_add(y, v_load_n(r + c0, n));
            v_store_n(o + c0, v_activate(y, act), n);
        }
    }
}

/* Lines [l_begin, l_end) of a gather: channel c of pixel i of line l from in + line_base[l] + i * step +
   idx[c] (in values of ``bytes`` bytes); outputs consecutive. */
static void gather(const void* in, const int32_t* line_base, int line_len, int step, const int32_t* idx, int C,
                   void* out, int out_stride, int out_offset, int out_pitch, int bytes, int l_begin, int l_end) {
    const size_t pitch = out_pitch ? (size_t)out_pitch : (size_t)line_len;
    for (int l = l_begin; l < l_end; l++)
        for (int i = 0; i < line_len; i++) {
            const size_t source = (size_t)line_base[l] + (size_t)i * step;
            const size_t target = ((size_t)l * pitch + i) * out_stride + out_offset;
            if (bytes == 1)
                for (int c = 0; c < C; c++) ((uint8_t*)out)[target + c] = ((const uint8_t*)in)[source + idx[c]];
            else
                for (int c = 0; c < C; c++) ((float*)out)[target + c] = ((const float*)in)[source + idx[c]];
        }
}

/* Copy image rows [row_begin, row_end) (row c * H + y: row y of channel c) of an NCHW image into the
   interior of a zero-bordered (H+2) x (W+2) NCHW buffer. */
static void pad_input(const float* in, int H, int W, float* out, int row_begin, int row_end) {
    const int Wp = W + 2;
    for (int row = row_begin; row < row_end; row++) {
        const int c = row / H, y = row % H;
        memcpy(out + ((size_t)c * (H + 2) + y + 1) * Wp + 1, in + (size_t)row * W, sizeof(float) * W);
    }
}

static double seconds_now(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)now.tv_sec + 1e-9 * (double)now.tv_nsec;
}

/* [begin, end) of ``total`` items for thread t of T: near-equal shares, boundaries on multiples of
   ``align``. */
static void share(int total, int align, int t, int T, int* begin, int* end) {
    const int units = (total + align - 1) / align;
    const int first = (int)((int64_t)units * t / T), last = (int)((int64_t)units * (t + 1) / T);
    *begin = first * align < total ? first * align : total;
    *end = last * align < total ? last * align : total;
}

/* A pointwise conv's share for thread t of T: whole lines where there are several (the stem, strided and
   shifted reads), else pixels in runs of whole chunks, else (a few pixels: the classifier, the SE convs)
   whole weight panels of output channels. */
static Part pointwise_part(const PointwiseOp* o, int t, int T) {
    Part part = {0, (int)o->lines, 0, (int)o->line_length, 0, (int)o->n_per_group};
    if (T == 1) return part;
    if (o->lines >= 2 * T) {
        share((int)o->lines, 1, t, T, &part.line_begin, &part.line_end);
        return part;
    }
    if (o->lines * o->line_length >= CHUNK_ROWS * T) {
        share((int)o->line_length, CHUNK_ROWS, t, T, &part.pixel_begin, &part.pixel_end);
        return part;
    }
    int panels = 0;
    for (int n0 = 0; n0 < o->n_per_group; n0 += panel_width((int)o->n_per_group - n0)) panels++;
    if (panels % T != 0 && o->lines * o->line_length >= ROWS_NARROW * T) {
        /* Panels would not split evenly (MobileNet V2's 7x7 convs to 160 channels: 5 panels, 3 + 2) while
           there are pixels enough for full tiles: each thread takes all panels over its pixels. */
        share((int)o->line_length, 1, t, T, &part.pixel_begin, &part.pixel_end);
    } else {
        int begin, end;
        share(panels, 1, t, T, &begin, &end);
        part.channel_begin = part.channel_end = (int)o->n_per_group;
        for (int n0 = 0, panel = 0; n0 < o->n_per_group; n0 += panel_width((int)o->n_per_group - n0), panel++) {
            if (panel == begin) part.channel_begin = n0;
            if (panel == end) part.channel_end = n0;
        }
    }
    return part;
}

#include "int8.c"

/* Thread t of T runs its share of one operation (``scratch``: the thread's own). */
static void run_share(const Op* op, float* const* buffers, const float* floats, const int32_t* ints, int t, int T,
                      float* scratch) {
    int begin, end;
    switch (op->code) {
    case OP_EXPAND_DEPTHWISE: {
        if (!scratch) break; /* no scratch: the operations after this one run as planned */
        const DepthwiseOp* d = &op[2].as.depthwise;
        const PointwiseOp* q = op->as.expand_depthwise.project ? &op[3].as.pointwise : 0;
        share((int)d->out_height, 1, t, T, &begin, &end);
        expand_depthwise(&op[1].as.pointwise, d, q, buffers, floats, ints, scratch, begin, end);
        break;
    }
    case OP_PAD_INPUT: {
        const PadInputOp* o = &op->as.pad_input;
        if (o->value_bytes == 1) { /* padded rows, the border included */
            const Requant r = requant_of(floats, ints, o->integers);
            share((int)(o->channels * (o->height + 2)), 1, t, T, &begin, &end);
            quantize_input(buffers[o->source], (int)o->height, (int)o->width, (uint8_t*)buffers[o->target],
                           r.multipliers, r.zeros, begin, end);
            break;
        }
        share((int)(o->channels * o->height), 1, t, T, &begin, &end); /* rows: 3 channels split unevenly */
        pad_input(buffers[o->source], (int)o->height, (int)o->width, buffers[o->target], begin, end);
        break;
    }
    case OP_POINTWISE: {
        const PointwiseOp* o = &op->as.pointwise;
        if (o->value_bytes == 1) {
            pointwise_int8(o, buffers, floats, ints, pointwise_int8_part(o, t, T));
            break;
        }
        pointwise(buffers[o->source], ints + o->line_starts, (int)o->line_length, (int)o->step,
                  ints + o->index, (int)o->groups, (int)o->k_per_group, (int)o->n_per_group, (int)o->n_padded,
                  floats + o->weights, floats + o->bias, buffers[o->target], (int)o->target_stride,
                  (int)o->target_offset, o->residual >= 0 ? buffers[o->residual] : 0, (int)o->residual_stride,
                  (int)o->residual_offset, (int)o->activation, (int)o->target_pitch, (int)o->bfloat16,
                  pointwise_part(o, t, T));
        break;
    }
    case OP_DEPTHWISE: {
        const DepthwiseOp* o = &op->as.depthwise;
        share((int)o->out_height, 1, t, T, &begin, &end);
        if (o->value_bytes == 1) {
            depthwise_int8(o, (const uint8_t*)buffers[o->source], (uint8_t*)buffers[o->target], floats + o->weights,
                           ints + o->bias, requant_of(floats, ints, o->integers), begin, end);
            break;
        }
        depthwise(buffers[o->source], (int)o->height, (int)o->width, (int)o->source_stride, (int)o->channels,
                  (int)o->stride, floats + o->weights, floats + o->bias, buffers[o->target], (int)o->out_width,
                  (int)o->target_stride, (int)o->target_offset, (int)o->activation, begin, end);
        break;
    }
    case OP_POOL: {
        const PoolOp* o = &op->as.pool;
        share((int)o->out_height, 1, t, T, &begin, &end);
        if (o->value_bytes == 1)
            pool_int8(o, (const uint8_t*)buffers[o->source], (uint8_t*)buffers[o->target],
                      requant_of(floats, ints, o->integers), begin, end);
        else if (o->window == POOL_AVERAGE_2X2)
            pool2(buffers[o->source], (int)o->width, (int)o->source_stride, (int)o->channels, buffers[o->target],
                  (int)o->out_width, (int)o->target_stride, (int)o->target_offset, begin, end);
        else
            pool(o->window == POOL_AVERAGE_3X3, buffers[o->source], (int)o->height, (int)o->width,
                 (int)o->source_stride, (int)o->channels, buffers[o->target], (int)o->out_width,
                 (int)o->target_stride, (int)o->target_offset, begin, end);
        break;
    }
    case OP_SCALE: {
        const ScaleOp* o = &op->as.scale;
        share((int)o->pixels, 1, t, T, &begin, &end);
        if (o->value_bytes == 1) {
            scale_channels_int8(o, (const uint8_t*)buffers[o->source] + o->source_offset, (const uint8_t*)buffers[o->gate],
                                (uint8_t*)buffers[o->target] + o->target_offset,
                                o->residual >= 0 ? (const uint8_t*)buffers[o->residual] + o->residual_offset : 0, floats,
                                ints, begin, end);
            break;
        }
        scale_channels(buffers[o->source] + o->source_offset, (int)o->source_stride, (int)o->channels,
                       buffers[o->gate], buffers[o->target] + o->target_offset, (int)o->target_stride,
                       o->residual >= 0 ? buffers[o->residual] + o->residual_offset : 0, (int)o->residual_stride,
                       (int)o->activation, begin, end);
        break;
    }
    case OP_COPY: {
        const CopyOp* o = &op->as.copy;
        share((int)o->pixels, 1, t, T, &begin, &end);
        copy_runs(buffers[o->source], (int)o->source_stride, buffers[o->target], (int)o->target_stride,
                  ints + o->runs, (int)o->run_count, (int)o->value_bytes, begin, end);
        break;
    }
    case OP_GATHER: {
        const GatherOp* o = &op->as.gather;
        share((int)o->lines, 1, t, T, &begin, &end);
        gather(buffers[o->source], ints + o->line_starts, (int)o->line_length, (int)o->step, ints + o->index,
               (int)o->channels, buffers[o->target], (int)o->target_stride, (int)o->target_offset,
               (int)o->target_pitch, (int)o->value_bytes, begin, end);
        break;
    }
    case OP_GLOBAL_AVERAGE: {
        const GlobalAverageOp* o = &op->as.global_average;
        share((int)o->channels, 16, t, T, &begin, &end); /* whole cache lines per thread */
        if (o->value_bytes == 1) {
            global_average_int8(o, (const uint8_t*)buffers[o->source], (uint8_t*)buffers[o->target],
                                requant_of(floats, ints, o->integers), begin, end);
            break;
        }
        global_average(buffers[o->source], (int)o->pixels, (int)o->source_stride, buffers[o->target], begin, end);
        break;
    }
    }
}

/* The thread pool: T - 1 workers and the caller run every operation of a network together, each its share
   (run_share), meeting at a barrier after each operation. Workers sleep on a condition variable between
   runs; at the barriers they spin briefly, then yield the core (a shared or oversubscribed machine). */
typedef struct {
    int threads;
    pthread_t* workers;
    pthread_mutex_t lock;
    pthread_cond_t wake;
    int64_t generation; /* runs started; a worker runs each once */
    int stop;
    /* the run in progress */
    int n_ops;
    const Op* ops;
    float* const* buffers;
    const float* floats;
    const int32_t* ints;
    double* seconds;
    /* the barrier */
    atomic_int arrived;
    atomic_int phase;
    /* each thread's scratch (fused operations' rings): ``scratch_floats`` floats from scratch + t * that */
    float* scratch;
    int64_t scratch_floats;
} Pool;

typedef struct {
    Pool* pool;
    int index;
} Worker;

static void barrier(Pool* pool) {
    if (pool->threads == 1) return;
    const int phase = atomic_load_explicit(&pool->phase, memory_order_acquire);
    if (atomic_fetch_add_explicit(&pool->arrived, 1, memory_order_acq_rel) == pool->threads - 1) {
        atomic_store_explicit(&pool->arrived, 0, memory_order_relaxed);
        atomic_store_explicit(&pool->phase, phase + 1, memory_order_release);
        return;
    }
    for (int spins = 0; atomic_load_explicit(&pool->phase, memory_order_acquire) == phase; spins++)
        if (spins > 4000) sched_yield();
}

/* Multiply-adds (or moves) in an operation: one below SERIAL_WORK runs on thread 0 alone, as splitting it
   would cost more in barriers than it saves. */
#ifndef SERIAL_WORK
#define SERIAL_WORK 16384
#endif
static int64_t work_of(const Op* op) {
    switch (op->code) {
    case OP_POINTWISE: {
        const PointwiseOp* o = &op->as.pointwise;
        const int64_t values = o->value_bytes == 1 ? 4 : 1; /* int8: k_per_group counts 4-byte runs */
        return o->lines * o->line_length * o->groups * o->k_per_group * o->n_per_group * values;
    }
    case OP_DEPTHWISE: return 9 * op->as.depthwise.out_height * op->as.depthwise.out_width * op->as.depthwise.channels;
    case OP_POOL: return 9 * op->as.pool.out_height * op->as.pool.out_width * op->as.pool.channels;
    case OP_SCALE: return op->as.scale.pixels * op->as.scale.channels;
    case OP_GLOBAL_AVERAGE: return op->as.global_average.pixels * op->as.global_average.channels;
    case OP_PAD_INPUT: return op->as.pad_input.channels * op->as.pad_input.height * op->as.pad_input.width;
    case OP_COPY: return op->as.copy.pixels * op->as.copy.source_stride;
    case OP_GATHER: return op->as.gather.lines * op->as.gather.line_length * op->as.gather.channels;
    case OP_EXPAND_DEPTHWISE:
        return work_of(op + 1) + work_of(op + 2) + (op->as.expand_depthwise.project ? work_of(op + 3) : 0);
    }
    return 0;
}

static int is_split(const Pool* pool, int i) { return pool->threads > 1 && work_of(pool->ops + i) >= SERIAL_WORK; }

/* Operations that ``ops[i]`` stands for: a fused run's marker with scratch to run it stands for the two or
   three operations after it too. */
static int span_of(const Pool* pool, int i) {
    const Op* op = pool->ops + i;
    if (op->code != OP_EXPAND_DEPTHWISE || !pool->scratch) return 1;
    return op->as.expand_depthwise.project ? 4 : 3;
}

/* Thread t's part of a run: its share of every split operation; thread 0 runs the small ones alone. A
   barrier follows each operation unless it and the next both run on thread 0 alone (then program order
   suffices), and ends the run. Thread 0 keeps the profile (a fused pair's time on its marker). */
static void run_all(Pool* pool, int t) {
    double start = pool->seconds && t == 0 ? seconds_now() : 0.0;
    float* scratch = pool->scratch ? pool->scratch + (size_t)t * pool->scratch_floats : 0;
    int split = pool->n_ops > 0 && is_split(pool, 0);
    for (int i = 0, after; i < pool->n_ops; i = after) {
        after = i + span_of(pool, i);
        if (split)
            run_share(pool->ops + i, pool->buffers, pool->floats, pool->ints, t, pool->threads, scratch);
        else if (t == 0)
            run_share(pool->ops + i, pool->buffers, pool->floats, pool->ints, 0, 1, scratch);
        const int next = after < pool->n_ops && is_split(pool, after);
        if (split || next || after == pool->n_ops) barrier(pool);
        split = next;
        if (pool->seconds && t == 0) {
            const double end = seconds_now();
            pool->seconds[i] += end - start;
            start = end;
        }
    }
}

static void* work(void* argument) {
    Worker* worker = argument;
    Pool* pool = worker->pool;
    int64_t done = 0;
    for (;;) {
        pthread_mutex_lock(&pool->lock);
        while (pool->generation == done && !pool->stop) pthread_cond_wait(&pool->wake, &pool->lock);
        const int stop = pool->stop;
        done = pool->generation;
        pthread_mutex_unlock(&pool->lock);
        if (stop) break;
        run_all(pool, worker->index);
    }
    free(worker);
    return NULL;
}

void shufflenet_pool_destroy(void* handle);

/* A pool of ``threads`` threads (the caller's included), or NULL if the system refuses them. */
void* shufflenet_pool_create(int threads) {
    Pool* pool = calloc(1, sizeof(Pool));
    if (!pool) return NULL;
    pool->threads = threads < 1 ? 1 : threads;
    pthread_mutex_init(&pool->lock, NULL);
    pthread_cond_init(&pool->wake, NULL);
    pool->workers = calloc((size_t)pool->threads, sizeof(pthread_t));
    if (!pool->workers) {
        free(pool);
        return NULL;
    }
    for (int t = 1; t < pool->threads; t++) {
        Worker* worker = malloc(sizeof(Worker));
        if (worker) *worker = (Worker){pool, t};
        if (!worker || pthread_create(&pool->workers[t], NULL, work, worker) != 0) {
            free(worker);
            pool->threads = t; /* the workers started so far, joined by destroy */
            shufflenet_pool_destroy(pool);
            return NULL;
        }
    }
    return pool;
}

void shufflenet_pool_destroy(void* handle) {
    Pool* pool = handle;
    if (!pool) return;
    pthread_mutex_lock(&pool->lock);
    pool->stop = 1;
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->lock);
    for (int t = 1; t < pool->threads; t++) pthread_join(pool->workers[t], NULL);
    pthread_mutex_destroy(&pool->lock);
    pthread_cond_destroy(&pool->wake);
    free(pool->scratch);
    free(pool->workers);
    free(pool);
}

/* Run ``n_ops`` operations over ``buffers`` on ``pool``'s threads; ``floats``/``ints`` are the arenas. With
   ``seconds`` non-null, each operation's wall time is added to seconds[i] (the per-op profile). One run at
   a time per pool. */
void shufflenet_engine_run(void* handle, int n_ops, const Op* ops, float* const* buffers, const float* floats,
                           const int32_t* ints, double* seconds) {
    Pool* pool = handle;
    /* Scratch for the largest fused pair, per thread, while the workers sleep (64-byte aligned, with a
       vector's slack); none to be had, the pairs run unfused. */
    int64_t need = 0;
    for (int i = 0; i < n_ops; i++)
        if (ops[i].code == OP_EXPAND_DEPTHWISE && ops[i].as.expand_depthwise.ring_floats > need)
            need = ops[i].as.expand_depthwise.ring_floats;
    if (need > pool->scratch_floats) {
        const int64_t floats_each = (need + 16 + 15) / 16 * 16;
        free(pool->scratch);
        const size_t bytes = (size_t)floats_each * pool->threads * sizeof(float);
        pool->scratch = aligned_alloc(64, bytes);
        /* Zeros: the lanes past a 1x1 conv's channels, which the depthwise conv reads and drops, are
           never NaN. */
        if (pool->scratch) memset(pool->scratch, 0, bytes);
        pool->scratch_floats = pool->scratch ? floats_each : 0;
    }
    pthread_mutex_lock(&pool->lock);
    pool->n_ops = n_ops;
    pool->ops = ops;
    pool->buffers = buffers;
    pool->floats = floats;
    pool->ints = ints;
    pool->seconds = seconds;
    pool->generation++;
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->lock);
    run_all(pool, 0);
}
