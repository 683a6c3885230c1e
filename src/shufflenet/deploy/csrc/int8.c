/* The engine's int8 kernels (included by engine.c): uint8 maps with per-channel scales and zero points,
   int8 weights, int32 sums, float32 requantization. shufflenet/deploy/quantize.py defines what each
   computes and checks these kernels bit for bit: every float step is one IEEE single operation in the
   same order (the build turns off contraction into FMAs) and rounding is half to even. */

typedef uint8_t u8;

/* The per-channel arrays of one operation (engine.h's INT8_ record), indexed by channel. */
typedef struct {
    const float *multipliers, *lows, *highs, *residual_multipliers, *gate_table;
    const int32_t *zeros, *input_zeros, *residual_zeros, *folded_bias;
    const int8_t* tap_rows;
} Requant;

static Requant requant_of(const float* floats, const int32_t* ints, int64_t record) {
    const int32_t* at = ints + record;
    return (Requant){floats + at[INT8_MULTIPLIERS],  floats + at[INT8_LOWS],         floats + at[INT8_HIGHS],
                     floats + at[INT8_RESIDUAL_MULTIPLIERS], floats + at[INT8_GATE_TABLE], ints + at[INT8_ZEROS],
                     ints + at[INT8_INPUT_ZEROS],   ints + at[INT8_RESIDUAL_ZEROS], ints + at[INT8_FOLDED_BIAS],
                     (const int8_t*)(ints + at[INT8_TAP_ROWS])};
}

/* Whether every channel's lower bound rounds to -zero: then nothing clamps there but 0..255 itself, and
   the VNNI kernels clamp from above only and narrow with saturation (finish_packed_row). */
static int saturates(Requant r, int channels) {
    for (int c = 0; c < channels; c++)
        if (!(fabsf(r.lows[c] + (float)r.zeros[c]) < 0.5f)) return 0;
    return 1;
}

static inline float clamp_to(float t, float low, float high) {
    t = t < low ? low : t;
    return t > high ? high : t;
}

/* One output byte from t (steps of the output's scale): clamped to the channel's bounds, which keep the
   result in 0..255, rounded half to even, plus the zero point. */
static inline u8 requantize_one(Requant r, int c, float t) {
    return (u8)((int32_t)nearbyintf(clamp_to(t, r.lows[c], r.highs[c])) + r.zeros[c]);
}

/* Padded rows [row_begin, row_end) (row c * (H + 2) + y) of the quantized, zero-point-bordered image. */
static void quantize_input(const float* in, int H, int W, u8* out, const float* inverse, const int32_t* zeros,
                           int row_begin, int row_end) {
    const int Hp = H + 2, Wp = W + 2;
    for (int row = row_begin; row < row_end; row++) {
        const int c = row / Hp, y = row % Hp - 1;
        const int32_t zero = zeros[c];
        u8* o = out + (size_t)row * Wp;
        if (y < 0 || y >= H) {
            memset(o, zero, (size_t)Wp);
            continue;
        }
        const float* x = in + ((size_t)c * H + y) * W;
        const float low = (float)-zero, high = (float)(255 - zero), scale = inverse[c];
        o[0] = o[W + 1] = (u8)zero;
        for (int i = 0; i < W; i++) o[i + 1] = (u8)((int32_t)nearbyintf(clamp_to(x[i] * scale, low, high)) + zero);
    }
}

/* The int8 pointwise conv's operands, resolved once per call. */
typedef struct {
    const PointwiseOp* o;
    const u8* in;
    const int32_t *line_starts, *index, *bias;
    const int8_t* weights;
    Requant r;
    const u8* residual;
    void* out;
    int saturating; /* saturates() and float maps out */
} PointwiseInt8;

/* Output channel c (g * N + n) of output pixel ``out_pixel`` (input pixel ``pixel``, for the residual). */
static inline void finish_int8(const PointwiseInt8* k, int c, size_t pixel, size_t out_pixel, int32_t sum) {
    const PointwiseOp* o = k->o;
    float t = (float)sum * k->r.multipliers[c];
    if (k->residual) {
        const int32_t q = k->residual[pixel * o->residual_stride + o->residual_offset + c];
        t = t + (float)(q - k->r.residual_zeros[c]) * k->r.residual_multipliers[c];
    }
    const size_t at = out_pixel * o->target_stride + o->target_offset + c;
    if (o->real_output)
        ((float*)k->out)[at] = clamp_to(t, k->r.lows[c], k->r.highs[c]);
    else
        ((u8*)k->out)[at] = requantize_one(k->r, c, t);
}

/* Output channels [n_begin, n_end) of group g for ``count`` pixels from p0 of ``line``, one value at a
   time: the plain-C kernel, and every ISA's remainder. */
static void pointwise_int8_plain(const PointwiseInt8* k, int g, int line, int p0, int count, int n_begin,
                                 int n_end) {
    const PointwiseOp* o = k->o;
    const int N = (int)o->n_per_group, Q = (int)o->k_per_group, panels = (int)o->n_padded / 16;
    const size_t pitch = o->target_pitch ? (size_t)o->target_pitch : (size_t)o->line_length;
    for (int p = p0; p < p0 + count; p++) {
        const u8* x = k->in + k->line_starts[line] + (size_t)p * o->step;
        const int32_t* index = k->index + (size_t)g * Q;
        for (int n = n_begin; n < n_end; n++) {
            const int8_t* w = k->weights + (((size_t)g * panels + n / 16) * Q * 16 + n % 16) * 4;
            int32_t sum = k->bias[g * N + n];
            for (int j = 0; j < Q; j++) {
                const u8* b = x + index[j];
                const int8_t* wj = w + (size_t)j * 64;
                sum += b[0] * wj[0] + b[1] * wj[1] + b[2] * wj[2] + b[3] * wj[3];
            }
            finish_int8(k, g * N + n, (size_t)line * o->line_length + p, (size_t)line * pitch + p, sum);
        }
    }
}

#if defined(__AVX512F__)
/* AVX512_VNNI's vpdpbusd: 64 multiply-adds of uint8 inputs by int8 weights per instruction, 4 per lane.
   Compiled into the AVX-512 build for the CPUs that have it, chosen at run time. */
#define VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))
#define INT8_ROWS 6

/* The low bytes of 16 int32 lanes stored (the ``mask``ed ones). Narrowed in a register, then stored:
   vpmovdb straight to memory is microcoded on AMD Zen 4, several times slower. */
#define STORE_BYTES(p, mask, v)                                                 \
    do {                                                                        \
        const __m128i bytes_ = _mm512_cvtepi32_epi8(v);                         \
        if ((mask) == 0xffff)                                                   \
            _mm_storeu_si128((__m128i*)(p), bytes_);                            \
        else                                                                    \
            _mm_mask_storeu_epi8((p), (mask), bytes_);                          \
    } while (0)
#define INT8_VECS 4

static int has_vnni(void) {
    static int known = -1;
    if (known < 0) known = __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw");
    return known;
}

/* R pixels x V panels of 16 output channels (from channel n0 of group g, ``valid`` of them real), the
   accumulators in named registers: GCC keeps an array of vectors partly on the stack and copies it every
   step (vpdpbusd overwrites its accumulator). They start at the bias. */
/* vpdpbusd in place: through the intrinsic GCC gives every step a fresh register and copies it back,
   and a 512-bit register copy costs as much as the multiply-adds on AMD Zen 4 (it halved their rate). */
#define DPBUSD(acc, in, w) __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(in), "v"(w))
#define I8_INIT(r) __m512i a##r##0 = b0, a##r##1 = b1, a##r##2 = b2, a##r##3 = b3;
#define I8_DOT(r)                                                                        \
    if (R > r) {                                                                         \
        int32_t word;                                                                    \
        memcpy(&word, p + r * step, sizeof(word));                                       \
        const __m512i in = _mm512_set1_epi32(word);                                      \
        DPBUSD(a##r##0, in, w0);                                  \
        if (V > 1) DPBUSD(a##r##1, in, w1);                       \
        if (V > 2) DPBUSD(a##r##2, in, w2);                       \
        if (V > 3) DPBUSD(a##r##3, in, w3);                       \
    }
#define I8_FINISH_0(r) if (R > r) finish_int8_vector(k, &par, line, p0 + r, c, a##r##0);
#define I8_FINISH_1(r) if (R > r) finish_int8_vector(k, &par, line, p0 + r, c, a##r##1);
#define I8_FINISH_2(r) if (R > r) finish_int8_vector(k, &par, line, p0 + r, c, a##r##2);
#define I8_FINISH_3(r) if (R > r) finish_int8_vector(k, &par, line, p0 + r, c, a##r##3);
/* Panel v's requantization loaded once for the tile's rows. */
#define I8_FINISH_PANEL(v)                                              \
    if (V > v) {                                                        \
        const int c = c0 + 16 * v;                                      \
        const Finish par = finish_params(k, c, valid - 16 * v);         \
        I8_ROWS(I8_FINISH_##v)                                          \
    }
#define I8_ROWS(M) M(0) M(1) M(2) M(3) M(4) M(5)

/* The requantization of 16 channels (``mask``: those that exist). */
typedef struct {
    __mmask16 mask;
    __m512 multiplier, low, high, residual_multiplier;
    __m512i zero, residual_zero;
} Finish;

/* Channels [c, c + lanes) of ``r`` (with its residual's arrays where ``residual``). */
VNNI static inline __attribute__((always_inline)) Finish requant_vector(Requant r, int residual, int c, int lanes) {
    Finish f;
    f.mask = lanes >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << lanes) - 1);
    f.multiplier = _mm512_maskz_loadu_ps(f.mask, r.multipliers + c);
    f.low = _mm512_maskz_loadu_ps(f.mask, r.lows + c);
    f.high = _mm512_maskz_loadu_ps(f.mask, r.highs + c);
    f.zero = _mm512_maskz_loadu_epi32(f.mask, r.zeros + c);
    f.residual_multiplier = f.multiplier;
    f.residual_zero = f.zero;
    if (residual) {
        f.residual_multiplier = _mm512_maskz_loadu_ps(f.mask, r.residual_multipliers + c);
        f.residual_zero = _mm512_maskz_loadu_epi32(f.mask, r.residual_zeros + c);
    }
    return f;
}

VNNI static inline __attribute__((always_inline)) Finish finish_params(const PointwiseInt8* k, int c, int lanes) {
    return requant_vector(k->r, k->residual != 0, c, lanes);
}

/* Channels [c, c + 16) (those in f->mask) of output pixel p of ``line`` from their int32 sums. */
VNNI static inline __attribute__((always_inline)) void finish_int8_vector(const PointwiseInt8* k, const Finish* f,
                                                                         int line, int p, int c, __m512i sum) {
    const PointwiseOp* o = k->o;
    __m512 t = _mm512_mul_ps(_mm512_cvtepi32_ps(sum), f->multiplier);
    if (k->residual) {
        const size_t pixel = (size_t)line * o->line_length + p;
        const u8* rp = k->residual + pixel * o->residual_stride + o->residual_offset + c;
        const __m512i q = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(f->mask, rp));
        const __m512 centred = _mm512_cvtepi32_ps(_mm512_sub_epi32(q, f->residual_zero));
        t = _mm512_add_ps(t, _mm512_mul_ps(centred, f->residual_multiplier));
    }
    t = _mm512_min_ps(_mm512_max_ps(t, f->low), f->high);
    const size_t pitch = o->target_pitch ? (size_t)o->target_pitch : (size_t)o->line_length;
    const size_t at = ((size_t)line * pitch + p) * o->target_stride + o->target_offset + c;
    if (o->real_output)
        _mm512_mask_storeu_ps((float*)k->out + at, f->mask, t);
    else
        STORE_BYTES((u8*)k->out + at, f->mask, _mm512_add_epi32(_mm512_cvtps_epi32(t), f->zero));
}

/* The tile's 4 panels' requantization for the packed epilogue. */
typedef struct {
    __m512 multiplier[4], high[4], residual_multiplier[4];
    __m512i residual_zero[4], zeros_01, zeros_23, order;
    __mmask16 lanes[4];
    __mmask64 mask;
} Packed;

VNNI static inline __attribute__((always_inline)) Packed packed_params(Requant r, int residual, int c0, int valid,
                                                                      const int V) {
    Packed f;
    __m512i zero[4];
    for (int v = 0; v < 4; v++) {
        const Finish one = requant_vector(r, residual, c0 + 16 * v, V > v ? valid - 16 * v : 0);
        f.multiplier[v] = one.multiplier;
        f.high[v] = one.high;
        f.residual_multiplier[v] = one.residual_multiplier;
        f.residual_zero[v] = one.residual_zero;
        f.lanes[v] = one.mask;
        zero[v] = one.zero;
    }
    /* The zero points as the 16-bit words the first pack makes of the rounded values (same lane order). */
    f.zeros_01 = _mm512_packs_epi32(zero[0], zero[1]);
    f.zeros_23 = _mm512_packs_epi32(zero[2], zero[3]);
    /* vpackssdw and vpackuswb interleave their sources' 4-byte groups within each 128-bit lane: dword 4L + v
       holds panel v's channels 4L..4L+3; this gathers each panel's 16 bytes back together. */
    f.order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    f.mask = valid >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << valid) - 1);
    return f;
}

/* Up to 64 rounded values (4 vectors of panel order) plus their zero points, saturated to 0..255, stored as
   bytes at ``at`` (the lanes in f->mask). */
VNNI static inline __attribute__((always_inline)) void store_packed(u8* at, const Packed* f, const __m512i rounded[4]) {
    const __m512i words_01 = _mm512_adds_epi16(_mm512_packs_epi32(rounded[0], rounded[1]), f->zeros_01);
    const __m512i words_23 = _mm512_adds_epi16(_mm512_packs_epi32(rounded[2], rounded[3]), f->zeros_23);
    const __m512i bytes = _mm512_permutexvar_epi32(f->order, _mm512_packus_epi16(words_01, words_23));
    if (f->mask == ~(__mmask64)0)
        _mm512_storeu_si512(at, bytes);
    else
        _mm512_mask_storeu_epi8(at, f->mask, bytes);
}

/* requantize_one for up to 64 channels of one output pixel (4 panels' sums), exactly: t is clamped from
   above only, rounded, and the zero point added with saturation to 0..255 in 16-bit words, which is
   the lower clamp where that bound rounds to -zero (k->saturating); a t too negative for int32 rounds to
   INT_MIN and still saturates to 0. Two saturating packs and one permutation narrow 64 values. */
VNNI static inline __attribute__((always_inline)) void finish_packed_row(const PointwiseInt8* k, const Packed* f,
                                                                        int line, int p, int c0, const int V,
                                                                        __m512i s0, __m512i s1, __m512i s2,
                                                                        __m512i s3) {
    const PointwiseOp* o = k->o;
    const __m512i sums[4] = {s0, s1, s2, s3};
    __m512i rounded[4];
    for (int v = 0; v < 4; v++) {
        if (V <= v) {
            rounded[v] = _mm512_setzero_si512();
            continue;
        }
        __m512 t = _mm512_mul_ps(_mm512_cvtepi32_ps(sums[v]), f->multiplier[v]);
        if (k->residual) {
            const size_t pixel = (size_t)line * o->line_length + p;
            const u8* rp = k->residual + pixel * o->residual_stride + o->residual_offset + c0 + 16 * v;
            const __m512i q = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(f->lanes[v], rp));
            const __m512 centred = _mm512_cvtepi32_ps(_mm512_sub_epi32(q, f->residual_zero[v]));
            t = _mm512_add_ps(t, _mm512_mul_ps(centred, f->residual_multiplier[v]));
        }
        rounded[v] = _mm512_cvtps_epi32(_mm512_min_ps(t, f->high[v]));
    }
    const size_t pitch = o->target_pitch ? (size_t)o->target_pitch : (size_t)o->line_length;
    store_packed((u8*)k->out + ((size_t)line * pitch + p) * o->target_stride + o->target_offset + c0, f, rounded);
}
#define I8_PACKED(r) \
    if (R > r) finish_packed_row(k, &packed, line, p0 + r, c0, V, a##r##0, a##r##1, a##r##2, a##r##3);

VNNI static inline __attribute__((always_inline)) void pointwise_int8_tile(const PointwiseInt8* k, const int R,
                                                                          const int V, int g, int line, int p0,
                                                                          int n0, int valid) {
    const PointwiseOp* o = k->o;
    const int N = (int)o->n_per_group, Q = (int)o->k_per_group, panels = (int)o->n_padded / 16;
    const size_t step = (size_t)o->step;
    const u8* x = k->in + k->line_starts[line] + (size_t)p0 * step;
    const int32_t* index = k->index + (size_t)g * Q;
    const int8_t* w = k->weights + ((size_t)g * panels + n0 / 16) * Q * 64;
    const int c0 = g * N + n0;
    const __m512i b0 = _mm512_maskz_loadu_epi32(valid >= 16 ? 0xffff : (__mmask16)((1u << valid) - 1), k->bias + c0);
    const __m512i b1 = V > 1 ? _mm512_maskz_loadu_epi32(valid >= 32 ? 0xffff : (__mmask16)((1u << (valid - 16)) - 1), k->bias + c0 + 16) : b0;
    const __m512i b2 = V > 2 ? _mm512_maskz_loadu_epi32(valid >= 48 ? 0xffff : (__mmask16)((1u << (valid - 32)) - 1), k->bias + c0 + 32) : b0;
    const __m512i b3 = V > 3 ? _mm512_maskz_loadu_epi32(valid >= 64 ? 0xffff : (__mmask16)((1u << (valid - 48)) - 1), k->bias + c0 + 48) : b0;
    I8_ROWS(I8_INIT)
    const size_t panel = (size_t)Q * 64;
    for (int j = 0; j < Q; j++) {
        const int8_t* wj = w + (size_t)j * 64;
        const __m512i w0 = _mm512_loadu_si512(wj);
        const __m512i w1 = V > 1 ? _mm512_loadu_si512(wj + panel) : w0;
        const __m512i w2 = V > 2 ? _mm512_loadu_si512(wj + 2 * panel) : w0;
        const __m512i w3 = V > 3 ? _mm512_loadu_si512(wj + 3 * panel) : w0;
        const u8* p = x + index[j];
        I8_ROWS(I8_DOT)
    }
    if (k->saturating) {
        const Packed packed = packed_params(k->r, k->residual != 0, c0, valid, V);
        I8_ROWS(I8_PACKED)
        return;
    }
    I8_FINISH_PANEL(0) I8_FINISH_PANEL(1) I8_FINISH_PANEL(2) I8_FINISH_PANEL(3)
}

#define INT8_TILE(R, V) pointwise_int8_tile(k, R, V, g, line, p0, n0, valid)
#define INT8_VECS_CASES(R) \
    switch (vecs) { case 4: INT8_TILE(R, 4); break; case 3: INT8_TILE(R, 3); break; \
                    case 2: INT8_TILE(R, 2); break; default: INT8_TILE(R, 1); break; }

/* The VNNI kernel over a part: pixels in tiles of up to INT8_ROWS, channels in up to 4 panels. */
VNNI static void pointwise_int8_vnni(const PointwiseInt8* k, int g, int line, int p_begin, int p_end, int n_begin,
                                     int n_end) {
    for (int p0 = p_begin, rows; p0 < p_end; p0 += rows) {
        const int tiles = (p_end - p0 + INT8_ROWS - 1) / INT8_ROWS;
        rows = (p_end - p0 + tiles - 1) / tiles;
        for (int n0 = n_begin, valid; n0 < n_end; n0 += valid) {
            valid = n_end - n0 < 16 * INT8_VECS ? n_end - n0 : 16 * INT8_VECS;
            const int vecs = (valid + 15) / 16;
            switch (rows) {
            case 6: INT8_VECS_CASES(6) break;
            case 5: INT8_VECS_CASES(5) break;
            case 4: INT8_VECS_CASES(4) break;
            case 3: INT8_VECS_CASES(3) break;
            case 2: INT8_VECS_CASES(2) break;
            default: INT8_VECS_CASES(1) break;
            }
        }
    }
}
#endif

#if defined(__AVX2__)
/* Without VNNI: vpmaddwd on the bytes widened to 16 bits (exact: no 16-bit saturation, unlike vpmaddubsw).
   A 4-byte run broadcast and widened is [x0 x1 x2 x3] four times; 4 channels' int8 weights widened are
   [w(c,0..3)] for c = 0..3; their vpmaddwd holds each channel's two pair sums side by side, added up once
   at the end. R pixels x 8 output channels (from channel n0 of group g, ``valid`` of them real). */
#define AVX2_INT8_ROWS 3

/* 8 int32 lanes, each in 0..255, stored as 8 bytes. */
static inline __attribute__((always_inline)) void store_bytes_avx2(u8* out, __m256i q) {
    const __m128i words = _mm_packus_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
    _mm_storel_epi64((__m128i*)out, _mm_packus_epi16(words, words));
}

/* finish_int8 for channels [c, c + 8) of one pixel at once (sums without the bias). */
static inline __attribute__((always_inline)) void finish_int8_avx2(const PointwiseInt8* k, int c, size_t pixel,
                                                                  size_t out_pixel, __m256i sums) {
    const PointwiseOp* o = k->o;
    const __m256i total = _mm256_add_epi32(sums, _mm256_loadu_si256((const __m256i*)(k->bias + c)));
    __m256 t = _mm256_mul_ps(_mm256_cvtepi32_ps(total), _mm256_loadu_ps(k->r.multipliers + c));
    if (k->residual) {
        const u8* rp = k->residual + pixel * o->residual_stride + o->residual_offset + c;
        const __m256i q = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)rp));
        const __m256i zero = _mm256_loadu_si256((const __m256i*)(k->r.residual_zeros + c));
        const __m256 centred = _mm256_cvtepi32_ps(_mm256_sub_epi32(q, zero));
        t = _mm256_add_ps(t, _mm256_mul_ps(centred, _mm256_loadu_ps(k->r.residual_multipliers + c)));
    }
    t = _mm256_min_ps(_mm256_max_ps(t, _mm256_loadu_ps(k->r.lows + c)), _mm256_loadu_ps(k->r.highs + c));
    const size_t at = out_pixel * o->target_stride + o->target_offset + c;
    if (o->real_output) {
        _mm256_storeu_ps((float*)k->out + at, t);
        return;
    }
    store_bytes_avx2((u8*)k->out + at,
                     _mm256_add_epi32(_mm256_cvtps_epi32(t), _mm256_loadu_si256((const __m256i*)(k->r.zeros + c))));
}
static inline __attribute__((always_inline)) void pointwise_int8_tile_avx2(const PointwiseInt8* k, const int R,
                                                                          int g, int line, int p0, int n0,
                                                                          int valid) {
    const PointwiseOp* o = k->o;
    const int N = (int)o->n_per_group, Q = (int)o->k_per_group, panels = (int)o->n_padded / 16;
    const size_t step = (size_t)o->step;
    const u8* x = k->in + k->line_starts[line] + (size_t)p0 * step;
    const int32_t* index = k->index + (size_t)g * Q;
    const int8_t* w = k->weights + (((size_t)g * panels + n0 / 16) * Q * 16 + n0 % 16) * 4;
    /* Named registers, as in the VNNI tile: GCC copies an array of accumulators every step. */
    __m256i l0 = _mm256_setzero_si256(), h0 = l0, l1 = l0, h1 = l0, l2 = l0, h2 = l0;
#define AVX2_DOT(r)                                                                   \
    if (R > r) {                                                                      \
        int32_t word;                                                                 \
        memcpy(&word, b + r * step, sizeof(word));                                    \
        const __m256i in = _mm256_cvtepu8_epi16(_mm_set1_epi32(word));                \
        l##r = _mm256_add_epi32(l##r, _mm256_madd_epi16(in, w_low));                  \
        h##r = _mm256_add_epi32(h##r, _mm256_madd_epi16(in, w_high));                 \
    }
    for (int j = 0; j < Q; j++) {
        const int8_t* wj = w + (size_t)j * 64;
        const __m256i w_low = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)wj));
        const __m256i w_high = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)(wj + 16)));
        const u8* b = x + index[j];
        AVX2_DOT(0) AVX2_DOT(1) AVX2_DOT(2)
    }
#undef AVX2_DOT
    const __m256i low[AVX2_INT8_ROWS] = {l0, l1, l2}, high[AVX2_INT8_ROWS] = {h0, h1, h2};
    const int c0 = g * N + n0;
    const size_t pitch = o->target_pitch ? (size_t)o->target_pitch : (size_t)o->line_length;
#pragma GCC unroll 3
    for (int r = 0; r < R; r++) {
        /* [c0 c1 c4 c5 | c2 c3 c6 c7] -> channel order */
        const __m256i sums = _mm256_permute4x64_epi64(_mm256_hadd_epi32(low[r], high[r]), 0xD8);
        const size_t pixel = (size_t)line * o->line_length + p0 + r, out_pixel = (size_t)line * pitch + p0 + r;
        if (valid == 8)
            finish_int8_avx2(k, c0, pixel, out_pixel, sums);
        else {
            int32_t each[8];
            _mm256_storeu_si256((__m256i*)each, sums);
            for (int c = 0; c < valid; c++) finish_int8(k, c0 + c, pixel, out_pixel, each[c] + k->bias[c0 + c]);
        }
    }
}

static void pointwise_int8_avx2(const PointwiseInt8* k, int g, int line, int p_begin, int p_end, int n_begin,
                                int n_end) {
    for (int p0 = p_begin, rows; p0 < p_end; p0 += rows) {
        rows = p_end - p0 < AVX2_INT8_ROWS ? p_end - p0 : AVX2_INT8_ROWS;
        for (int n0 = n_begin; n0 < n_end; n0 += 8) {
            const int valid = n_end - n0 < 8 ? n_end - n0 : 8;
            switch (rows) {
            case 3: pointwise_int8_tile_avx2(k, 3, g, line, p0, n0, valid); break;
            case 2: pointwise_int8_tile_avx2(k, 2, g, line, p0, n0, valid); break;
            default: pointwise_int8_tile_avx2(k, 1, g, line, p0, n0, valid); break;
            }
        }
    }
}
#endif

/* A thread's share of an int8 pointwise conv: lines, else pixels, else whole panels of 16 channels. */
static Part pointwise_int8_part(const PointwiseOp* o, int t, int T) {
    Part part = {0, (int)o->lines, 0, (int)o->line_length, 0, (int)o->n_per_group};
    if (T == 1) return part;
    if (o->lines >= 2 * T)
        share((int)o->lines, 1, t, T, &part.line_begin, &part.line_end);
    else if (o->lines * o->line_length >= 24 * T)
        share((int)o->line_length, 6, t, T, &part.pixel_begin, &part.pixel_end);
    else
        share((int)o->n_per_group, 16, t, T, &part.channel_begin, &part.channel_end);
    return part;
}

static void pointwise_int8(const PointwiseOp* o, float* const* buffers, const float* floats,
                           const int32_t* ints, Part part) {
    const Requant r = requant_of(floats, ints, o->integers);
    const int saturating = !o->real_output && saturates(r, (int)(o->groups * o->n_per_group));
    const PointwiseInt8 k = {
        o,
        (const u8*)buffers[o->source],
        ints + o->line_starts,
        ints + o->index,
        ints + o->bias,
        (const int8_t*)(ints + o->weights),
        r,
        o->residual >= 0 ? (const u8*)buffers[o->residual] : 0,
        buffers[o->target],
        saturating,
    };
    for (int g = 0; g < o->groups; g++)
        for (int line = part.line_begin; line < part.line_end; line++) {
#if defined(__AVX512F__)
            if (has_vnni()) {
                pointwise_int8_vnni(&k, g, line, part.pixel_begin, part.pixel_end, part.channel_begin,
                                    part.channel_end);
                continue;
            }
#endif
#if defined(__AVX2__)
            pointwise_int8_avx2(&k, g, line, part.pixel_begin, part.pixel_end, part.channel_begin,
                                part.channel_end);
            continue;
#endif
            pointwise_int8_plain(&k, g, line, part.pixel_begin, part.pixel_end - part.pixel_begin,
                                 part.channel_begin, part.channel_end);
        }
}

#if defined(__AVX512F__)
/* 16 requantized values to bytes: the vector form of requantize_one. */
VNNI static inline __attribute__((always_inline)) __m512i requantize_vector(__m512 t, __m512 low, __m512 high,
                                                                           __m512i zero) {
    return _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(t, low), high)), zero);
}

/* requantize_row 16 channels at a time. */
VNNI static void requantize_row_avx512(const float* sums, int Wo, int Cp, int C, const int32_t* bias, Requant r,
                                       u8* out, size_t out_stride) {
    for (int c0 = 0; c0 < C; c0 += 16) {
        const __mmask16 mask = C - c0 >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (C - c0)) - 1);
        const __m512i b = _mm512_maskz_loadu_epi32(mask, bias + c0), zero = _mm512_maskz_loadu_epi32(mask, r.zeros + c0);
        const __m512 multiplier = _mm512_maskz_loadu_ps(mask, r.multipliers + c0);
        const __m512 low = _mm512_maskz_loadu_ps(mask, r.lows + c0), high = _mm512_maskz_loadu_ps(mask, r.highs + c0);
        for (int ox = 0; ox < Wo; ox++) {
            const __m512i sum = _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_maskz_loadu_ps(mask, sums + (size_t)ox * Cp + c0)), b);
            const __m512 t = _mm512_mul_ps(_mm512_cvtepi32_ps(sum), multiplier);
            STORE_BYTES(out + ox * out_stride + c0, mask, requantize_vector(t, low, high, zero));
        }
    }
}
#endif

/* One map row of C channels (pixels ``in_stride`` bytes apart) as floats q - zero, Cp apart per pixel, the
   lanes past the channels 0. */
#if defined(__AVX512F__)
VNNI static void centre_row_avx512(const u8* in, int W, size_t in_stride, int C, int Cp, const int32_t* zeros,
                                   float* out) {
    for (int c0 = 0; c0 < Cp; c0 += 16) {
        const int lanes = C - c0 >= 16 ? 16 : C - c0 > 0 ? C - c0 : 0;
        const __mmask16 mask = (__mmask16)((1u << lanes) - 1), store = Cp - c0 >= 16 ? 0xffff : 0xff;
        const __m512i zero = _mm512_maskz_loadu_epi32(mask, zeros + c0);
        for (int x = 0; x < W; x++) {
            const __m512i q = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(mask, in + x * in_stride + c0));
            _mm512_mask_storeu_ps(out + (size_t)x * Cp + c0, store, _mm512_cvtepi32_ps(_mm512_sub_epi32(q, zero)));
        }
    }
}
#endif

static void centre_row(const u8* in, int W, size_t in_stride, int C, int Cp, const int32_t* zeros, float* out) {
#if defined(__AVX512F__)
    if (has_vnni()) {
        centre_row_avx512(in, W, in_stride, C, Cp, zeros, out);
        return;
    }
#endif
    int whole = 0;
#if defined(__AVX2__)
    whole = C / 8 * 8;
    for (int x = 0; x < W; x++)
        for (int c = 0; c < whole; c += 8) {
            const __m256i q = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)(in + x * in_stride + c)));
            const __m256i centred = _mm256_sub_epi32(q, _mm256_loadu_si256((const __m256i*)(zeros + c)));
            _mm256_storeu_ps(out + (size_t)x * Cp + c, _mm256_cvtepi32_ps(centred));
        }
#endif
    for (int x = 0; x < W; x++)
        for (int c = whole; c < C; c++) out[(size_t)x * Cp + c] = (float)((int32_t)in[x * in_stride + c] - zeros[c]);
}

/* A row of depthwise sums (exact integers held as floats, Cp apart per pixel) plus the integer bias,
   requantized into ``out``. */
static void requantize_row(const float* sums, int Wo, int Cp, int C, const int32_t* bias, Requant r, u8* out,
                           size_t out_stride) {
#if defined(__AVX512F__)
    if (has_vnni()) {
        requantize_row_avx512(sums, Wo, Cp, C, bias, r, out, out_stride);
        return;
    }
#endif
    int whole = 0;
#if defined(__AVX2__)
    whole = C / 8 * 8;
    for (int c = 0; c < whole; c += 8) {
        const __m256i b = _mm256_loadu_si256((const __m256i*)(bias + c));
        const __m256i zero = _mm256_loadu_si256((const __m256i*)(r.zeros + c));
        const __m256 multiplier = _mm256_loadu_ps(r.multipliers + c);
        const __m256 low = _mm256_loadu_ps(r.lows + c), high = _mm256_loadu_ps(r.highs + c);
        for (int ox = 0; ox < Wo; ox++) {
            const __m256i sum = _mm256_add_epi32(_mm256_cvtps_epi32(_mm256_loadu_ps(sums + (size_t)ox * Cp + c)), b);
            __m256 t = _mm256_mul_ps(_mm256_cvtepi32_ps(sum), multiplier);
            t = _mm256_min_ps(_mm256_max_ps(t, low), high);
            store_bytes_avx2(out + ox * out_stride + c, _mm256_add_epi32(_mm256_cvtps_epi32(t), zero));
        }
    }
#endif
    for (int ox = 0; ox < Wo; ox++)
        for (int c = whole; c < C; c++) {
            const int32_t sum = (int32_t)sums[(size_t)ox * Cp + c] + bias[c];
            out[ox * out_stride + c] = requantize_one(r, c, (float)sum * r.multipliers[c]);
        }
}

#if defined(__AVX512F__)
/* AVX512_VBMI's vpermb arranges the depthwise kernel's bytes (AMD Zen 4, Intel Ice Lake and later). */
#define VNNI_VBMI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi")))

static int has_vbmi(void) {
    static int known = -1;
    if (known < 0) known = has_vnni() && __builtin_cpu_supports("avx512vbmi");
    return known;
}

/* Input row ``row`` (W pixels ``pixel`` bytes apart; NULL: a row outside the map) as the VNNI depthwise
   kernel reads it: for output column ox (input column x = stride * ox) and channel c, the 4 bytes q[x - 1][c],
   q[x][c], q[x + 1][c], q[x + 1][c] (their taps' weights: kx = 0, 1, 2 and 0); outside the map, the
   channel's zero point (``zero_pixel``); Cv (C rounded up to 16) channels per column. */
VNNI_VBMI static void window_row_bytes(const u8* row, int W, size_t pixel, int C, int Cv, int stride, int Wo,
                                       const u8* zero_pixel, u8* out) {
    /* byte 4i + j of a column's 16 channels: byte i of its j-th 16-byte source (left, centre, right, right) */
    const __m512i order = _mm512_set_epi32(0x2f2f1f0f, 0x2e2e1e0e, 0x2d2d1d0d, 0x2c2c1c0c, 0x2b2b1b0b, 0x2a2a1a0a,
                                           0x29291909, 0x28281808, 0x27271707, 0x26261606, 0x25251505, 0x24241404,
                                           0x23231303, 0x22221202, 0x21211101, 0x20201000);
    for (int ox = 0; ox < Wo; ox++) {
        const int x = stride * ox;
        const u8* left = row && x > 0 ? row + (size_t)(x - 1) * pixel : zero_pixel;
        const u8* centre = row ? row + (size_t)x * pixel : zero_pixel;
        const u8* right = row && x + 1 < W ? row + (size_t)(x + 1) * pixel : zero_pixel;
        for (int c0 = 0; c0 < Cv; c0 += 16) {
            const __mmask16 mask = C - c0 >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (C - c0)) - 1);
            __m512i three = _mm512_castsi128_si512(_mm_maskz_loadu_epi8(mask, left + c0));
            three = _mm512_inserti32x4(three, _mm_maskz_loadu_epi8(mask, centre + c0), 1);
            three = _mm512_inserti32x4(three, _mm_maskz_loadu_epi8(mask, right + c0), 2);
            _mm512_storeu_si512(out + ((size_t)ox * Cv + c0) * 4, _mm512_permutexvar_epi8(order, three));
        }
    }
}

/* Output columns of one row for channels [c0, c0 + 16 V): per channel vector, the folded bias plus 3
   vpdpbusd (one per window row, its 3 taps at once), requantized 64 channels per store. */
VNNI_VBMI static inline __attribute__((always_inline)) void depthwise_vnni_columns(
    const int V, const u8* const rows[3], int Wo, int Cv, int c0, int valid, Requant r, u8* out, size_t out_stride) {
    const Packed f = packed_params(r, 0, c0, valid, V);
    __m512i w[3][4], bias[4];
    for (int v = 0; v < 4; v++) {
        bias[v] = V > v ? _mm512_maskz_loadu_epi32(f.lanes[v], r.folded_bias + c0 + 16 * v) : _mm512_setzero_si512();
        for (int i = 0; i < 3; i++)
            w[i][v] = V > v ? _mm512_loadu_si512(r.tap_rows + ((size_t)i * Cv + c0 + 16 * v) * 4) : bias[v];
    }
    for (int ox = 0; ox < Wo; ox++) {
        __m512i acc[4], rounded[4];
        for (int v = 0; v < 4; v++) {
            if (V <= v) {
                rounded[v] = _mm512_setzero_si512();
                continue;
            }
            acc[v] = bias[v];
            for (int i = 0; i < 3; i++) {
                const __m512i in = _mm512_loadu_si512(rows[i] + ((size_t)ox * Cv + c0 + 16 * v) * 4);
                DPBUSD(acc[v], in, w[i][v]);
            }
            const __m512 t = _mm512_mul_ps(_mm512_cvtepi32_ps(acc[v]), f.multiplier[v]);
            rounded[v] = _mm512_cvtps_epi32(_mm512_min_ps(t, f.high[v]));
        }
        store_packed(out + (size_t)ox * out_stride + c0, &f, rounded);
    }
}

/* depthwise_int8 on CPUs with VNNI and VBMI, where every channel saturates(): each input row the windows
   reach is arranged once into window_row_bytes (a ring of three), then each output is the folded bias plus
   sum q * w over the window with a zero-point border (= bias + sum (q - zero) * w over the taps inside). */
VNNI_VBMI static void depthwise_int8_vnni(const DepthwiseOp* o, const u8* in, u8* out, Requant r, int oy_begin,
                                          int oy_end) {
    const int H = (int)o->height, W = (int)o->width, C = (int)o->channels, Cv = (C + 15) / 16 * 16;
    const int Wo = (int)o->out_width, stride = (int)o->stride;
    const size_t pixel = (size_t)o->source_stride, row_bytes = (size_t)Wo * Cv * 4;
    u8 ring[3 * row_bytes], zero_pixel[Cv];
    for (int c = 0; c < Cv; c++) zero_pixel[c] = c < C ? (u8)r.input_zeros[c] : 0;
    int held[3] = {INT32_MIN, INT32_MIN, INT32_MIN};
    for (int oy = oy_begin; oy < oy_end; oy++) {
        const u8* rows[3];
        for (int i = 0; i < 3; i++) {
            const int y = stride * oy - 1 + i, slot = (y % 3 + 3) % 3;
            if (held[slot] != y) {
                const u8* source = y >= 0 && y < H ? in + (size_t)y * W * pixel : NULL;
                window_row_bytes(source, W, pixel, C, Cv, stride, Wo, zero_pixel, ring + slot * row_bytes);
                held[slot] = y;
            }
            rows[i] = ring + slot * row_bytes;
        }
        u8* out_row = out + (size_t)oy * Wo * o->target_stride + o->target_offset;
        for (int c0 = 0; c0 < C; c0 += 64) {
            const int valid = C - c0 < 64 ? C - c0 : 64;
            switch ((valid + 15) / 16) {
            case 4: depthwise_vnni_columns(4, rows, Wo, Cv, c0, valid, r, out_row, (size_t)o->target_stride); break;
            case 3: depthwise_vnni_columns(3, rows, Wo, Cv, c0, valid, r, out_row, (size_t)o->target_stride); break;
            case 2: depthwise_vnni_columns(2, rows, Wo, Cv, c0, valid, r, out_row, (size_t)o->target_stride); break;
            default: depthwise_vnni_columns(1, rows, Wo, Cv, c0, valid, r, out_row, (size_t)o->target_stride); break;
            }
        }
    }
}
#endif

/* Output rows [oy_begin, oy_end) of a 3x3 depthwise conv (padding 1) on a uint8 map. Each input row the
   windows reach becomes floats once (q - zero: small integers), in a ring of three rows as in
   expand_depthwise; the float kernel (depthwise_row) sums them with the integer taps held as floats, which
   is exact (every sum stays below 2^24); each output row is then requantized with the integer bias. */
static void depthwise_int8(const DepthwiseOp* o, const u8* in, u8* out, const float* taps, const int32_t* bias,
                           Requant r, int oy_begin, int oy_end) {
#if defined(__AVX512F__)
    if (has_vbmi() && saturates(r, (int)o->channels)) {
        depthwise_int8_vnni(o, in, out, r, oy_begin, oy_end);
        return;
    }
#endif
    const int H = (int)o->height, W = (int)o->width, C = (int)o->channels, Cp = (C + 7) / 8 * 8;
    const int Wo = (int)o->out_width;
    const size_t row_floats = (size_t)W * Cp;
    float ring[3 * row_floats + 16], sums[(size_t)Wo * Cp + 16], no_bias[Cp + 16];
    memset(ring, 0, sizeof(ring)); /* the lanes past the channels stay 0 */
    memset(no_bias, 0, sizeof(no_bias));
    int held[3] = {-1, -1, -1};
    for (int oy = oy_begin; oy < oy_end; oy++) {
        int row_inside[3], rows[3];
        window_lines(oy * (int)o->stride - 1, H, row_inside, rows);
        for (int i = 0; i < 3; i++) {
            const int y = rows[i], slot = y % 3;
            if (held[slot] == y) continue;
            centre_row(in + (size_t)y * W * o->source_stride, W, (size_t)o->source_stride, C, Cp, r.input_zeros,
                       ring + slot * row_floats);
            held[slot] = y;
        }
        depthwise_row(ring + (rows[0] % 3) * row_floats, ring + (rows[1] % 3) * row_floats,
                      ring + (rows[2] % 3) * row_floats, row_inside, W, Cp, Cp, (int)o->stride, taps, no_bias, sums,
                      Wo, Cp, ACT_NONE);
        requantize_row(sums, Wo, Cp, C, bias, r, out + (size_t)oy * Wo * o->target_stride + o->target_offset,
                       (size_t)o->target_stride);
    }
}

#if defined(__AVX512F__)
/* The 3x3 stride-2 pools 16 channels at a time: the max of the bytes (ShuffleNet's stem pool), or the
   requantized sum of q - zero over the taps inside the map (ShuffleNet V1's shortcut). */
VNNI static void pool_int8_avx512(const PoolOp* o, const u8* in, u8* out, Requant r,
                                  int oy_begin, int oy_end) {
    const int H = (int)o->height, W = (int)o->width, C = (int)o->channels, average = o->window != POOL_MAX_3X3;
    const ptrdiff_t pixel = (ptrdiff_t)o->source_stride, row = (ptrdiff_t)W * pixel;
    for (int oy = oy_begin; oy < oy_end; oy++)
        for (int ox = 0; ox < o->out_width; ox++) {
            int ky0, ky1, kx0, kx1;
            window_range(H, W, 2 * oy - 1, 2 * ox - 1, &ky0, &ky1, &kx0, &kx1);
            const u8* corner = in + (ptrdiff_t)(2 * oy - 1) * row + (ptrdiff_t)(2 * ox - 1) * pixel;
            u8* y = out + ((size_t)oy * o->out_width + ox) * o->target_stride + o->target_offset;
            const int taps = (ky1 - ky0) * (kx1 - kx0);
            if (!average) { /* bytes, 32 channels at a time */
                for (int c0 = 0; c0 < C; c0 += 32) {
                    const __mmask32 mask = C - c0 >= 32 ? 0xffffffffu : (__mmask32)((1u << (C - c0)) - 1);
                    __m256i best = _mm256_setzero_si256();
                    for (int ky = ky0; ky < ky1; ky++)
                        for (int kx = kx0; kx < kx1; kx++)
                            best = _mm256_max_epu8(best, _mm256_maskz_loadu_epi8(mask, corner + ky * row + kx * pixel + c0));
                    _mm256_mask_storeu_epi8(y + c0, mask, best);
                }
                continue;
            }
            for (int c0 = 0; c0 < C; c0 += 16) {
                const __mmask16 mask = C - c0 >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (C - c0)) - 1);
                __m512i acc = _mm512_setzero_si512();
                for (int ky = ky0; ky < ky1; ky++)
                    for (int kx = kx0; kx < kx1; kx++) {
                        const __m512i q = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(mask, corner + ky * row + kx * pixel + c0));
                        acc = _mm512_add_epi32(acc, q);
                    }
                {
                    const __m512i zero_in = _mm512_maskz_loadu_epi32(mask, r.input_zeros + c0);
                    acc = _mm512_sub_epi32(acc, _mm512_mullo_epi32(zero_in, _mm512_set1_epi32(taps)));
                    const __m512 t = _mm512_mul_ps(_mm512_cvtepi32_ps(acc), _mm512_maskz_loadu_ps(mask, r.multipliers + c0));
                    acc = requantize_vector(t, _mm512_maskz_loadu_ps(mask, r.lows + c0),
                                            _mm512_maskz_loadu_ps(mask, r.highs + c0),
                                            _mm512_maskz_loadu_epi32(mask, r.zeros + c0));
                }
                STORE_BYTES(y + c0, mask, acc);
            }
        }
}
#endif

/* Output rows [oy_begin, oy_end) of a pool on a uint8 map (PoolOp with value_bytes 1). */
static void pool_int8(const PoolOp* o, const u8* in, u8* out, Requant r,
                      int oy_begin, int oy_end) {
    const int H = (int)o->height, W = (int)o->width, C = (int)o->channels;
    const int two = o->window == POOL_AVERAGE_2X2, average = o->window != POOL_MAX_3X3;
#if defined(__AVX512F__)
    if (!two && has_vnni()) {
        pool_int8_avx512(o, in, out, r, oy_begin, oy_end);
        return;
    }
#endif
    int32_t sums[C];
    for (int oy = oy_begin; oy < oy_end; oy++)
        for (int ox = 0; ox < o->out_width; ox++) {
            const int iy0 = two ? 2 * oy : 2 * oy - 1, ix0 = two ? 2 * ox : 2 * ox - 1;
            int ky0 = 0, ky1 = 2, kx0 = 0, kx1 = 2;
            if (!two) window_range(H, W, iy0, ix0, &ky0, &ky1, &kx0, &kx1);
            u8* y = out + ((size_t)oy * o->out_width + ox) * o->target_stride + o->target_offset;
            if (!average) {
                int whole = 0;
#if defined(__AVX2__)
                whole = C / 16 * 16;
                for (int c = 0; c < whole; c += 16) {
                    __m128i best = _mm_setzero_si128();
                    for (int ky = ky0; ky < ky1; ky++)
                        for (int kx = kx0; kx < kx1; kx++)
                            best = _mm_max_epu8(best, _mm_loadu_si128((const __m128i*)(
                                in + ((size_t)(iy0 + ky) * W + ix0 + kx) * o->source_stride + c)));
                    _mm_storeu_si128((__m128i*)(y + c), best);
                }
#endif
                for (int c = whole; c < C; c++) y[c] = 0;
                for (int ky = ky0; ky < ky1; ky++)
                    for (int kx = kx0; kx < kx1; kx++) {
                        const u8* x = in + ((size_t)(iy0 + ky) * W + ix0 + kx) * o->source_stride;
                        for (int c = whole; c < C; c++) y[c] = x[c] > y[c] ? x[c] : y[c];
                    }
                continue;
            }
            for (int c = 0; c < C; c++) sums[c] = 0;
            for (int ky = ky0; ky < ky1; ky++)
                for (int kx = kx0; kx < kx1; kx++) {
                    const u8* x = in + ((size_t)(iy0 + ky) * W + ix0 + kx) * o->source_stride;
                    for (int c = 0; c < C; c++) sums[c] += (int32_t)x[c] - r.input_zeros[c];
                }
            for (int c = 0; c < C; c++) y[c] = requantize_one(r, c, (float)sums[c] * r.multipliers[c]);
        }
}

/* Channels [c_begin, c_end) of the global average of a uint8 map (pixels outer: the channel loop
   vectorises). */
static void global_average_int8(const GlobalAverageOp* o, const u8* in, u8* out, Requant r, int c_begin,
                                int c_end) {
    int32_t sums[c_end - c_begin + 1];
    for (int c = c_begin; c < c_end; c++) sums[c - c_begin] = 0;
    for (int64_t p = 0; p < o->pixels; p++) {
        const u8* x = in + p * o->source_stride;
        for (int c = c_begin; c < c_end; c++) sums[c - c_begin] += x[c];
    }
    for (int c = c_begin; c < c_end; c++) {
        const int32_t sum = sums[c - c_begin] - (int32_t)o->pixels * r.input_zeros[c];
        out[c] = requantize_one(r, c, (float)sum * r.multipliers[c]);
    }
}

/* Pixels [p_begin, p_end) of a squeeze-excite's scaling on uint8 maps (ScaleOp with value_bytes 1). */
static void scale_channels_int8(const ScaleOp* o, const u8* in, const u8* logits, u8* out, const u8* res,
                                const float* floats, const int32_t* ints, int p_begin, int p_end) {
    const int C = (int)o->channels;
    const Requant r = requant_of(floats, ints, o->integers);
    const float *table = r.gate_table, *residual_multipliers = r.residual_multipliers;
    const int32_t *input_zeros = r.input_zeros, *residual_zeros = r.residual_zeros;
    float factor[C];
    for (int c = 0; c < C; c++) factor[c] = table[logits[c]] * r.multipliers[c];
    for (int p = p_begin; p < p_end; p++) {
        const u8* x = in + (size_t)p * o->source_stride;
        u8* y = out + (size_t)p * o->target_stride;
        for (int c = 0; c < C; c++) {
            float t = (float)((int32_t)x[c] - input_zeros[c]) * factor[c];
            if (res) {
                const int32_t q = res[(size_t)p * o->residual_stride + c];
                t = t + (float)(q - residual_zeros[c]) * residual_multipliers[c];
            }
            y[c] = requantize_one(r, c, t);
        }
    }
}
