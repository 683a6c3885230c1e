/* The shufflenet deploy engine: a whole network run as one C call on NHWC float32 buffers.

   The plan (built in shufflenet/deploy/engine.py) is a list of operations, each a fixed-size row of
   int64 fields; weights live in one float arena and index tables in one int32 arena. Channel
   shuffles, splits and concatenations cost nothing here: a pointwise conv reads its input channels
   through an index table (any order, any subset) and writes its outputs at any channel offset of any
   buffer, so the planner turns every data-movement op of the papers' units into addressing.

   Compiled for AVX2 + FMA (x86-64): cc -O3 -mavx2 -mfma -shared -fPIC. */

#include <immintrin.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

enum {
    OP_PAD_INPUT = 0,  /* NCHW input -> zero-bordered NCHW copy (the stem conv reads it by index) */
    OP_POINTWISE = 1,  /* grouped GEMM over pixels: 1x1 convs, the stem conv, the classifier */
    OP_DEPTHWISE = 2,  /* 3x3 depthwise conv, stride 1 or 2, padding 1 */
    OP_MAXPOOL = 3,    /* 3x3 stride-2 max pool, padding 1 */
    OP_AVGPOOL = 4,    /* 3x3 stride-2 average pool, padding 1, zero padding counted */
    OP_COPY = 5,       /* per-pixel copy of channel runs */
    OP_GLOBAL_AVG = 6, /* mean over pixels */
};

enum { FIELDS = 24 };

#ifndef CHUNK_INPUT_BYTES
#define CHUNK_INPUT_BYTES 8192
#endif
#ifndef CHUNK_WEIGHT_BYTES
#define CHUNK_WEIGHT_BYTES 262144
#endif

static inline __attribute__((always_inline)) __m256i tail_mask(int count) {
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(count), lanes);
}

static inline __attribute__((always_inline)) __m256 load_lanes(const float* p, int count) {
    return count >= 8 ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, tail_mask(count));
}

/* Partial stores in 4/2/1-float pieces: AVX2's masked store (vmaskmovps) is microcoded on AMD Zen. */
static inline __attribute__((always_inline)) void store_quarter(float* p, __m128 v, int count) {
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

static inline __attribute__((always_inline)) void store_lanes(float* p, __m256 v, int count) {
    if (count >= 8) {
        _mm256_storeu_ps(p, v);
    } else if (count > 4) {
        _mm_storeu_ps(p, _mm256_castps256_ps128(v));
        store_quarter(p + 4, _mm256_extractf128_ps(v, 1), count - 4);
    } else {
        store_quarter(p, _mm256_castps256_ps128(v), count);
    }
}

static inline __attribute__((always_inline)) __m128 load_quarter(const float* p, int count) {
    if (count >= 4) return _mm_loadu_ps(p);
    const __m128i lanes = _mm_setr_epi32(0, 1, 2, 3);
    return _mm_maskload_ps(p, _mm_cmpgt_epi32(_mm_set1_epi32(count), lanes));
}

static inline __attribute__((always_inline)) void finish(float* out, const float* res, __m256 y, int lanes,
                                                         int relu) {
    if (res) y = _mm256_add_ps(y, load_lanes(res, lanes));
    if (relu) y = _mm256_max_ps(y, _mm256_setzero_ps());
    store_lanes(out, y, lanes);
}

static inline __attribute__((always_inline)) void finish_quarter(float* out, const float* res, __m128 y,
                                                                 int lanes, int relu) {
    if (res) y = _mm_add_ps(y, load_quarter(res, lanes));
    if (relu) y = _mm_max_ps(y, _mm_setzero_ps());
    store_quarter(out, y, lanes);
}

/* One register tile of the pointwise GEMM: ROWS pixels x (VECS * 8 + QUARTER * 4) output channels, in
   named registers (GCC keeps an array of vectors on the stack). The 4-wide part serves panel remainders:
   on AMD Zen 1 a 128-bit FMA costs half a 256-bit one, so it wastes nothing. Pixel r's input starts at
   a + r * step (a fixed step: two base registers cover six rows, where six row pointers would spill);
   idx[k] is the offset of input channel k within it. The tile's weights are K rows of its panel's width. */
#define ROW_INIT(r) __m256 c##r##0 = b0, c##r##1 = b1, c##r##2 = b2; __m128 q##r = bq;
#define ROW_FMA(r)                                                                  \
    if (ROWS > r) {                                                                 \
        if (VECS > 0) {                                                             \
            const __m256 x = _mm256_broadcast_ss(p + r * step);                     \
            c##r##0 = _mm256_fmadd_ps(x, w0, c##r##0);                              \
            if (VECS > 1) c##r##1 = _mm256_fmadd_ps(x, w1, c##r##1);                \
            if (VECS > 2) c##r##2 = _mm256_fmadd_ps(x, w2, c##r##2);                \
            if (QUARTER) q##r = _mm_fmadd_ps(_mm256_castps256_ps128(x), wq, q##r);  \
        } else {                                                                    \
            q##r = _mm_fmadd_ps(_mm_broadcast_ss(p + r * step), wq, q##r);          \
        }                                                                           \
    }
#define ROW_STORE(r)                                                                                   \
    if (ROWS > r) {                                                                                    \
        float* o = out + (size_t)r * out_stride;                                                       \
        const float* rr = res ? res + (size_t)r * res_stride : 0;                                      \
        if (VECS > 0) finish(o, rr, c##r##0, valid, relu);                                             \
        if (VECS > 1) finish(o + 8, rr ? rr + 8 : 0, c##r##1, valid - 8, relu);                        \
        if (VECS > 2) finish(o + 16, rr ? rr + 16 : 0, c##r##2, valid - 16, relu);                     \
        if (QUARTER) finish_quarter(o + 8 * VECS, rr ? rr + 8 * VECS : 0, q##r, valid - 8 * VECS, relu); \
    }

static inline __attribute__((always_inline)) void pointwise_tile(
    const int ROWS, const int VECS, const int QUARTER, const float* a, size_t step, const int32_t* idx, int K,
    const float* w, const float* bias, float* out, size_t out_stride, const float* res, size_t res_stride,
    int valid, int relu) {
    const __m256 b0 = VECS > 0 ? _mm256_loadu_ps(bias) : _mm256_setzero_ps();
    const __m256 b1 = VECS > 1 ? _mm256_loadu_ps(bias + 8) : b0;
    const __m256 b2 = VECS > 2 ? _mm256_loadu_ps(bias + 16) : b0;
    const __m128 bq = QUARTER ? _mm_loadu_ps(bias + 8 * VECS) : _mm_setzero_ps();
    ROW_INIT(0) ROW_INIT(1) ROW_INIT(2) ROW_INIT(3) ROW_INIT(4) ROW_INIT(5)
    ROW_INIT(6) ROW_INIT(7) ROW_INIT(8) ROW_INIT(9) ROW_INIT(10) ROW_INIT(11)
    const int width = VECS * 8 + QUARTER * 4, panel = width > 16 ? width : 16;
    for (int k = 0; k < K; k++) {
        const float* p = a + idx[k];
        const float* wk = w + (size_t)k * panel;
        const __m256 w0 = VECS > 0 ? _mm256_loadu_ps(wk) : b0;
        const __m256 w1 = VECS > 1 ? _mm256_loadu_ps(wk + 8) : w0;
        const __m256 w2 = VECS > 2 ? _mm256_loadu_ps(wk + 16) : w0;
        const __m128 wq = QUARTER ? _mm_loadu_ps(wk + 8 * VECS) : bq;
        ROW_FMA(0) ROW_FMA(1) ROW_FMA(2) ROW_FMA(3) ROW_FMA(4) ROW_FMA(5)
        ROW_FMA(6) ROW_FMA(7) ROW_FMA(8) ROW_FMA(9) ROW_FMA(10) ROW_FMA(11)
    }
    ROW_STORE(0) ROW_STORE(1) ROW_STORE(2) ROW_STORE(3) ROW_STORE(4) ROW_STORE(5)
    ROW_STORE(6) ROW_STORE(7) ROW_STORE(8) ROW_STORE(9) ROW_STORE(10) ROW_STORE(11)
}

/* Tile shapes: (rows, 8-wide vectors, 4-wide part), each with at most 12 accumulators. */
typedef struct {
    int rows, vecs, quarter;
} Shape;

/* Output channels are cut into panels of 16, except that 20 or 24 remaining channels make one panel
   (a 4 x 20 or 4 x 24 tile beats 16 plus a narrow remainder tile: fewer broadcasts per FMA); a last
   panel under 16 is padded to 16 (rows stay 64-byte aligned). engine.py packs the weights by the same
   rule. */
static int panel_width(int remaining) {
    return remaining == 20 || remaining == 24 || remaining < 16 ? remaining : 16;
}

/* The tile for a panel of ``valid`` channels: the narrowest that covers it. */
static Shape panel_shape(int valid) {
    if (valid > 20) return (Shape){4, 3, 0};
    if (valid > 16) return (Shape){4, 2, 1};
    if (valid > 12) return (Shape){6, 2, 0};
    if (valid > 8) return (Shape){6, 1, 1};
    if (valid > 4) return (Shape){8, 1, 0};
    return (Shape){8, 0, 1};
}

#define TILE(R, V, Q) \
    pointwise_tile(R, V, Q, a, step, idx, K, w, bias, out, out_stride, res, res_stride, valid, relu)
/* Row counts up to each shape's own (6 or 8): every case is a separate specialised kernel. */
#define ROWS_UP_TO_6(V, Q)                                                                               \
    case 6: TILE(6, V, Q); break; case 5: TILE(5, V, Q); break; case 4: TILE(4, V, Q); break;            \
    case 3: TILE(3, V, Q); break; case 2: TILE(2, V, Q); break; default: TILE(1, V, Q); break;
#define ROWS_UP_TO_8(V, Q) case 8: TILE(8, V, Q); break; case 7: TILE(7, V, Q); break; ROWS_UP_TO_6(V, Q)
#define ROWS_UP_TO_4(V, Q)                                                                               \
    case 4: TILE(4, V, Q); break; case 3: TILE(3, V, Q); break; case 2: TILE(2, V, Q); break;            \
    default: TILE(1, V, Q); break;

/* Dispatch to a tile specialised for its shape (constants after inlining). */
static void pointwise_rows(Shape shape, int rows, const float* a, size_t step, const int32_t* idx, int K,
                           const float* w, const float* bias, float* out, size_t out_stride, const float* res,
                           size_t res_stride, int valid, int relu) {
    if (shape.vecs == 2 && !shape.quarter) {
        switch (rows) { ROWS_UP_TO_6(2, 0) }
    } else if (shape.vecs == 3) {
        switch (rows) { ROWS_UP_TO_4(3, 0) }
    } else if (shape.vecs == 2) {
        switch (rows) { ROWS_UP_TO_4(2, 1) }
    } else if (shape.vecs == 1 && shape.quarter) {
        switch (rows) { ROWS_UP_TO_6(1, 1) }
    } else if (shape.vecs == 1) {
        switch (rows) { ROWS_UP_TO_8(1, 0) }
    } else {
        switch (rows) { ROWS_UP_TO_8(0, 1) }
    }
}

/* out[p, out_offset + g*N + n] = act(bias + sum_k in[pixel p + idx[g*K + k]] * w[g][k][n] (+ res[...]))
   The pixels come in lines of line_len; pixel j of line l starts at in + line_base[l] + j * step (a 1x1
   conv: one line, step = the input's channel stride; the stem conv: one line per output row, reading its
   3x3 windows from a zero-bordered NCHW image through idx). Output and residual pixels are consecutive.
   Weights are packed per group in panels of output channels (widths by panel_width), each panel K rows
   of its width (a last partial panel padded with zeros to 16), so a panel is one contiguous stream;
   biases as n_pad floats per group (n_pad: the panels' widths summed). */
static void pointwise(const float* in, const int32_t* line_base, int lines, int line_len, int step,
                      const int32_t* idx, int groups, int K, int N, int n_pad, const float* w, const float* bias,
                      float* out, int out_stride, int out_offset, const float* res, int res_stride,
                      int res_offset, int relu) {
    /* Pixels in chunks whose inputs stay in L1 while every weight panel passes over them, unless the
       weights are too big to re-read per chunk (the head conv, the classifier): then whole lines. */
    int chunk = line_len;
    if ((size_t)K * n_pad * sizeof(float) <= CHUNK_WEIGHT_BYTES) {
        chunk = (int)(CHUNK_INPUT_BYTES / ((size_t)K * sizeof(float))) / 24 * 24;
        if (chunk < 24) chunk = 24;
    }
    for (int g = 0; g < groups; g++) {
        const int32_t* gidx = idx + (size_t)g * K;
        const float* gw = w + (size_t)g * K * n_pad;
        for (int line = 0; line < lines; line++) {
            const float* line_in = in + line_base[line];
            const size_t first = (size_t)line * line_len;
            for (int c0 = 0; c0 < line_len; c0 += chunk) {
                const int c1 = c0 + chunk < line_len ? c0 + chunk : line_len;
                for (int n0 = 0, valid; n0 < N; n0 += valid) {
                    valid = panel_width(N - n0);
                    const Shape shape = panel_shape(valid);
                    const size_t channel = (size_t)out_offset + (size_t)g * N + n0;
                    for (int p0 = c0; p0 < c1; p0 += shape.rows) {
                        const int rows = c1 - p0 < shape.rows ? c1 - p0 : shape.rows;
                        const size_t pixel = first + p0;
                        const float* r0 =
                            res ? res + pixel * res_stride + res_offset + (size_t)g * N + n0 : 0;
                        pointwise_rows(shape, rows, line_in + (size_t)p0 * step, step, gidx, K,
                                       gw + (size_t)n0 * K, bias + g * n_pad + n0,
                                       out + pixel * out_stride + channel, out_stride, r0, res_stride, valid,
                                       relu);
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

/* One output vector of the depthwise conv at a pixel the 4-pixel path does not cover (the map's border,
   or the last interior columns): the taps inside the map, one FMA chain per window row so the FMA
   latency overlaps. */
static inline __m256 depthwise_pixel(const float* in, int H, int W, int in_stride, int c0, int iy0, int ix0,
                                     const __m256* k, __m256 acc) {
    int ky0, ky1, kx0, kx1;
    window_range(H, W, iy0, ix0, &ky0, &ky1, &kx0, &kx1);
    __m256 rows[3] = {acc, _mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int ky = ky0; ky < ky1; ky++) {
        const float* p = in + ((size_t)(iy0 + ky) * W + ix0) * in_stride + c0;
        for (int kx = kx0; kx < kx1; kx++)
            rows[ky] = _mm256_fmadd_ps(_mm256_loadu_ps(p + (size_t)kx * in_stride), k[ky * 3 + kx], rows[ky]);
    }
    return _mm256_add_ps(_mm256_add_ps(rows[0], rows[1]), rows[2]);
}

static inline void store_activated(float* out, __m256 y, int relu) {
    _mm256_storeu_ps(out, relu ? _mm256_max_ps(y, _mm256_setzero_ps()) : y);
}

/* ``blocks`` runs of four neighbouring interior outputs of one 8-channel block, the 9 taps held in named
   registers (with the four accumulators, the bias and a load: 15 of AVX2's 16; a tap array would live on
   the stack and cost a second load per FMA). Four independent FMA chains hide the FMA latency. ``p``:
   the first window's top-left input; neighbours are ``step`` apart, window rows ``row``, columns ``col``. */
static inline __attribute__((always_inline)) void depthwise_span(const float* p, size_t step, size_t row,
                                                                 size_t col, const float* w, size_t C,
                                                                 __m256 b, float* o, size_t out_stride,
                                                                 int blocks, int relu) {
    const __m256 k0 = _mm256_loadu_ps(w), k1 = _mm256_loadu_ps(w + C), k2 = _mm256_loadu_ps(w + 2 * C);
    const __m256 k3 = _mm256_loadu_ps(w + 3 * C), k4 = _mm256_loadu_ps(w + 4 * C);
    const __m256 k5 = _mm256_loadu_ps(w + 5 * C), k6 = _mm256_loadu_ps(w + 6 * C);
    const __m256 k7 = _mm256_loadu_ps(w + 7 * C), k8 = _mm256_loadu_ps(w + 8 * C);
    for (int i = 0; i < blocks; i++, p += 4 * step, o += 4 * out_stride) {
        __m256 a0 = b, a1 = b, a2 = b, a3 = b;
#define TAP(k, offset)                                                   \
    {                                                                    \
        const float* q = p + (offset);                                   \
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q), k, a0);                 \
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + step), k, a1);          \
        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(q + 2 * step), k, a2);      \
        a3 = _mm256_fmadd_ps(_mm256_loadu_ps(q + 3 * step), k, a3);      \
    }
        TAP(k0, 0) TAP(k1, col) TAP(k2, 2 * col)
        TAP(k3, row) TAP(k4, row + col) TAP(k5, row + 2 * col)
        TAP(k6, 2 * row) TAP(k7, 2 * row + col) TAP(k8, 2 * row + 2 * col)
#undef TAP
        store_activated(o, a0, relu);
        store_activated(o + out_stride, a1, relu);
        store_activated(o + 2 * out_stride, a2, relu);
        store_activated(o + 3 * out_stride, a3, relu);
    }
}

/* 3x3 depthwise conv, padding 1, over C channels in whole 8-lane blocks (C a multiple of 8; the planner
   pads it: lanes past a map's channels read the next pixel or the buffer's slack, meet zero filters and
   land in the output's padding). Weights: 9 rows (taps) of C floats. Interior pixels go four at a time
   (depthwise_span), the rest one at a time. */
static void depthwise(const float* in, int H, int W, int in_stride, int C, int stride, const float* w,
                      const float* bias, float* out, int Ho, int Wo, int out_stride, int out_offset, int relu) {
    /* Output columns whose 3 input columns are all inside the map: [1, ox_end). */
    const int ox_end = (W - 2) / stride + 1 < Wo ? (W - 2) / stride + 1 : Wo;
    const int blocks = ox_end > 1 ? (ox_end - 1) / 4 : 0;
    const size_t row = (size_t)W * in_stride, step = (size_t)stride * in_stride;
    /* Rows outermost: the three input rows a row of outputs needs stay in cache across channel blocks
       (the stride-2 maps of the first stages exceed L2, so a channel-block-outer sweep would re-stream
       them from L3 once per block). */
    for (int oy = 0; oy < Ho; oy++) {
        const int iy0 = oy * stride - 1;
        const int inside = iy0 >= 0 && iy0 + 2 < H;
        for (int c0 = 0; c0 < C; c0 += 8) {
            __m256 k[9];
            for (int t = 0; t < 9; t++) k[t] = _mm256_loadu_ps(w + t * C + c0);
            const __m256 b = _mm256_loadu_ps(bias + c0);
            float* row_out = out + (size_t)oy * Wo * out_stride + out_offset + c0;
            int ox = 0;
            if (inside && blocks) {
                const __m256 left = depthwise_pixel(in, H, W, in_stride, c0, iy0, -1, k, b);
                store_activated(row_out, left, relu);
                const float* p = in + ((size_t)iy0 * W + stride - 1) * in_stride + c0;
                depthwise_span(p, step, row, in_stride, w + c0, C, b, row_out + out_stride, out_stride, blocks,
                               relu);
                ox = 1 + 4 * blocks;
            }
            for (; ox < Wo; ox++) {
                const __m256 acc = depthwise_pixel(in, H, W, in_stride, c0, iy0, ox * stride - 1, k, b);
                store_activated(row_out + (size_t)ox * out_stride, acc, relu);
            }
        }
    }
}

/* One pooled vector on the map's border. */
static inline __m256 pool_border(int average, const float* in, int H, int W, int in_stride, int c0, int iy0,
                                 int ix0) {
    __m256 acc = average ? _mm256_setzero_ps() : _mm256_set1_ps(-__builtin_inff());
    int ky0, ky1, kx0, kx1;
    window_range(H, W, iy0, ix0, &ky0, &ky1, &kx0, &kx1);
    for (int ky = ky0; ky < ky1; ky++)
        for (int kx = kx0; kx < kx1; kx++) {
            const __m256 x = _mm256_loadu_ps(in + ((size_t)(iy0 + ky) * W + ix0 + kx) * in_stride + c0);
            acc = average ? _mm256_add_ps(acc, x) : _mm256_max_ps(acc, x);
        }
    return acc;
}

/* 3x3 stride-2 pooling with padding 1: max, or the mean over all 9 taps (zero padding counted, as
   AvgPool2d's count_include_pad). Interior windows skip the bounds checks and reduce as a tree. Loads are
   whole 8-lane vectors (AVX2's masked load is slow on AMD Zen): lanes past the last channel read the next
   pixel or the buffer's 16-float slack and are dropped by the exact store. */
static void pool(int average, const float* in, int H, int W, int in_stride, int C, float* out, int Ho, int Wo,
                 int out_stride, int out_offset) {
    const __m256 ninth = _mm256_set1_ps(1.0f / 9.0f);
    const int ox_end = (W - 2) / 2 + 1 < Wo ? (W - 2) / 2 + 1 : Wo; /* windows inside the map: ox in [1, end) */
    for (int oy = 0; oy < Ho; oy++) {
        const int iy0 = oy * 2 - 1;
        const int inside = iy0 >= 0 && iy0 + 2 < H;
        for (int ox = 0; ox < Wo; ox++) {
            const int ix0 = ox * 2 - 1;
            float* o = out + ((size_t)oy * Wo + ox) * out_stride + out_offset;
            for (int c0 = 0; c0 < C; c0 += 8) {
                const int lanes = C - c0;
                __m256 acc;
                if (inside && ox >= 1 && ox < ox_end) {
                    const float* p = in + ((size_t)iy0 * W + ix0) * in_stride + c0;
                    const size_t row = (size_t)W * in_stride;
                    __m256 t[9];
                    for (int ky = 0; ky < 3; ky++)
                        for (int kx = 0; kx < 3; kx++)
                            t[ky * 3 + kx] = _mm256_loadu_ps(p + ky * row + (size_t)kx * in_stride);
                    if (average) {
                        acc = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(t[0], t[1]), _mm256_add_ps(t[2], t[3])),
                                            _mm256_add_ps(_mm256_add_ps(t[4], t[5]), _mm256_add_ps(t[6], t[7])));
                        acc = _mm256_add_ps(acc, t[8]);
                    } else {
                        acc = _mm256_max_ps(_mm256_max_ps(_mm256_max_ps(t[0], t[1]), _mm256_max_ps(t[2], t[3])),
                                            _mm256_max_ps(_mm256_max_ps(t[4], t[5]), _mm256_max_ps(t[6], t[7])));
                        acc = _mm256_max_ps(acc, t[8]);
                    }
                } else {
                    acc = pool_border(average, in, H, W, in_stride, c0, iy0, ix0);
                }
                if (average) acc = _mm256_mul_ps(acc, ninth);
                store_lanes(o + c0, acc, lanes);
            }
        }
    }
}

/* Per pixel, copy channel runs: runs holds (source offset, target offset, length) triples. */
static void copy_runs(const float* in, int in_stride, int npix, float* out, int out_stride, const int32_t* runs,
                      int n_runs) {
    for (int p = 0; p < npix; p++) {
        const float* source = in + (size_t)p * in_stride;
        float* target = out + (size_t)p * out_stride;
        for (int r = 0; r < n_runs; r++) {
            const float* from = source + runs[3 * r];
            float* to = target + runs[3 * r + 1];
            for (int j = 0; j < runs[3 * r + 2]; j++) to[j] = from[j];
        }
    }
}

static void global_average(const float* in, int npix, int in_stride, int C, float* out) {
    for (int c = 0; c < C; c++) out[c] = 0.0f;
    for (int p = 0; p < npix; p++)
        for (int c = 0; c < C; c++) out[c] += in[(size_t)p * in_stride + c];
    const float scale = 1.0f / (float)npix;
    for (int c = 0; c < C; c++) out[c] *= scale;
}

/* Copy an NCHW image into the interior of a zero-bordered (H+2) x (W+2) NCHW buffer. */
static void pad_input(const float* in, int C, int H, int W, float* out) {
    const int Wp = W + 2;
    for (int c = 0; c < C; c++)
        for (int y = 0; y < H; y++)
            memcpy(out + ((size_t)c * (H + 2) + y + 1) * Wp + 1, in + ((size_t)c * H + y) * W, sizeof(float) * W);
}

static double seconds_now(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)now.tv_sec + 1e-9 * (double)now.tv_nsec;
}

/* Run ``n_ops`` operations (rows of FIELDS int64) over ``buffers``; ``floats``/``ints`` are the arenas.
   With ``seconds`` non-null, each operation's wall time is added to seconds[i] (the per-op profile). */
void shufflenet_engine_run(int n_ops, const int64_t* ops, float* const* buffers, const float* floats,
                           const int32_t* ints, double* seconds) {
    double start = seconds ? seconds_now() : 0.0;
    for (int i = 0; i < n_ops; i++) {
        const int64_t* f = ops + (size_t)i * FIELDS;
        switch (f[0]) {
        case OP_PAD_INPUT:
            pad_input(buffers[f[1]], (int)f[2], (int)f[3], (int)f[4], buffers[f[5]]);
            break;
        case OP_POINTWISE:
            pointwise(buffers[f[1]], ints + f[2], (int)f[3], (int)f[4], (int)f[5], ints + f[6], (int)f[7],
                      (int)f[8], (int)f[9], (int)f[10], floats + f[11], floats + f[12], buffers[f[13]],
                      (int)f[14], (int)f[15], f[16] >= 0 ? buffers[f[16]] : 0, (int)f[17], (int)f[18],
                      (int)f[19]);
            break;
        case OP_DEPTHWISE:
            depthwise(buffers[f[1]], (int)f[2], (int)f[3], (int)f[4], (int)f[5], (int)f[6], floats + f[7],
                      floats + f[8], buffers[f[9]], (int)f[10], (int)f[11], (int)f[12], (int)f[13], (int)f[14]);
            break;
        case OP_MAXPOOL:
        case OP_AVGPOOL:
            pool(f[0] == OP_AVGPOOL, buffers[f[1]], (int)f[2], (int)f[3], (int)f[4], (int)f[5], buffers[f[6]],
                 (int)f[7], (int)f[8], (int)f[9], (int)f[10]);
            break;
        case OP_COPY:
            copy_runs(buffers[f[1]], (int)f[2], (int)f[3], buffers[f[4]], (int)f[5], ints + f[6], (int)f[7]);
            break;
        case OP_GLOBAL_AVG:
            global_average(buffers[f[1]], (int)f[2], (int)f[3], (int)f[4], buffers[f[5]]);
            break;
        }
        if (seconds) {
            const double end = seconds_now();
            seconds[i] += end - start;
            start = end;
        }
    }
}
