/* The shufflenet engine's plan: the one definition of its operations, shared by engine.c and by
   shufflenet/deploy/engine.py, which builds its ctypes structures from this file and checks them against
   the compiled library (shufflenet_engine_abi) before it hands over a plan.

   Rules that keep this file readable from Python: every field is an int64_t on a line of its own; the
   operation with code OP_FOO_BAR has the fields of struct FooBarOp and is the union member foo_bar of Op.
   Buffers are indices into the run's buffer table (-1: none); "floats" and "ints" fields are offsets
   into the float and int32 arenas; offsets and strides within a buffer count floats. Change a field or
   a code and bump SHUFFLENET_ENGINE_ABI. */

#ifndef SHUFFLENET_ENGINE_H
#define SHUFFLENET_ENGINE_H

#include <stdint.h>

#define SHUFFLENET_ENGINE_ABI 9

enum {
    OP_PAD_INPUT = 0,      /* NCHW input -> zero-bordered NCHW copy (the stem conv reads it by index) */
    OP_POINTWISE = 1,      /* grouped GEMM over pixels: 1x1 convs, the stem conv, the classifier */
    OP_DEPTHWISE = 2,      /* 3x3 depthwise conv, stride 1 or 2, padding 1 */
    OP_POOL = 3,           /* 3x3 stride-2 pools with padding 1, or 2x2 stride-2 average pools */
    OP_COPY = 4,           /* per-pixel copy of channel runs */
    OP_GLOBAL_AVERAGE = 5, /* mean over pixels */
    OP_SCALE = 6,          /* squeeze-and-excitation's gate: channels times sigmoid(gate), + residual, act */
    OP_GATHER = 7,         /* per-pixel copy of channels read through an index table (a shift made real) */
    OP_EXPAND_DEPTHWISE = 8, /* the next two or three operations (1x1 conv, depthwise conv, 1x1 conv), fused */
};

/* Operations on uint8 maps (``value_bytes`` 1; shufflenet/deploy/quantize.py says what they compute): per-
   channel scales and zero points, int8 weights, int32 sums, float32 requantization. */

/* Activations applied in an operation's epilogue. */
enum { ACT_NONE = 0, ACT_RELU = 1, ACT_RELU6 = 2 };

/* Pool windows. */
enum { POOL_MAX_3X3 = 0, POOL_AVERAGE_3X3 = 1, POOL_AVERAGE_2X2 = 2 };

/* ``value_bytes`` 4: the image copied. 1: quantized, q = round(clamp(x * multipliers[c], -zeros[c], 255 -
   zeros[c])) + zeros[c] (multipliers: the inverse scales), and the border holds zeros[c]. */
typedef struct {
    int64_t source;
    int64_t channels;
    int64_t height;
    int64_t width;
    int64_t target;
    int64_t value_bytes;
    int64_t integers;
} PadInputOp;

/* out[p, target_offset + g*n + j] = act(bias + sum_k in[pixel p + index[g*k_per_group + k]] * w[g][k][j]
   (+ residual)). Pixels come in ``lines`` lines of ``line_length``; pixel i of line l starts at
   in + line_starts[l] + i * step; output line l starts at pixel l * target_pitch (0: line_length). 
   ``value_bytes`` 4: float maps (the fields after it unused). 1: uint8 maps, offsets in bytes, the input
   read 4 bytes at a time: ``index`` holds groups * k_per_group byte offsets, each the start of 4
   consecutive bytes (channels or taps) of the pixel. sum = bias[n] + sum_j sum_b in[pixel + index[j] + b] *
   w[n][j][b]: the input zero points are folded into the bias, bytes read but not used have weight 0.
   Weights int8 and bias int32 in the int arena, per group panels of 16 output channels, each k_per_group
   x 16 x 4 bytes; n_padded: channels per group rounded up to 16. Requantization arrays indexed by
   g * n_per_group + n. The residual (uint8, its own zero points and multipliers) adds float(q -
   residual_zeros[n]) * residual_multipliers[n] before the clamp. With ``real_output`` the target is float32 and
   gets the clamped t itself (the logits). With ``bfloat16`` 1 (float maps, the AVX-512 build on a CPU with
   AVX512_BF16): the inputs are rounded to bfloat16 (nearest even) as they are read and the weights are
   bfloat16 pairs: per group, panels as for floats but (k_per_group + 1) / 2 rows, each word of a row two
   bfloat16 weights (input channel 2j low, 2j + 1 high) of one output channel; sums in float32. */
typedef struct {
    int64_t source;
    int64_t line_starts;
    int64_t lines;
    int64_t line_length;
    int64_t step;
    int64_t index;
    int64_t groups;
    int64_t k_per_group;
    int64_t n_per_group;
    int64_t n_padded;
    int64_t weights;
    int64_t bias;
    int64_t target;
    int64_t target_stride;
    int64_t target_offset;
    int64_t residual;
    int64_t residual_stride;
    int64_t residual_offset;
    int64_t activation;
    int64_t target_pitch;
    int64_t value_bytes;
    int64_t integers;
    int64_t real_output;
    int64_t bfloat16;
} PointwiseOp;

/* Weights: 9 rows (taps) of ``channels`` floats; channels a multiple of 8. With ``value_bytes`` 1, on uint8
   maps: sum = bias[c] + sum over the taps inside the map of (q - input_zeros[c]) * weights[tap][c] (weights:
   9 rows of the channels rounded up to 8, integers held as floats; bias int32 in the int arena; any
   channel count), requantized per channel. */
typedef struct {
    int64_t source;
    int64_t height;
    int64_t width;
    int64_t source_stride;
    int64_t channels;
    int64_t stride;
    int64_t weights;
    int64_t bias;
    int64_t target;
    int64_t out_height;
    int64_t out_width;
    int64_t target_stride;
    int64_t target_offset;
    int64_t activation;
    int64_t value_bytes;
    int64_t integers;
} DepthwiseOp;

/* ``value_bytes`` 4: float maps. 1: uint8 maps, where a max pool moves bytes (the output keeps the input's
   parameters) and an average pool requantizes the window's sum of q - input_zeros[c] (padding counted as
   zero, as PyTorch); the requantization arrays are unused in float maps. */
typedef struct {
    int64_t window;
    int64_t source;
    int64_t height;
    int64_t width;
    int64_t source_stride;
    int64_t channels;
    int64_t target;
    int64_t out_height;
    int64_t out_width;
    int64_t target_stride;
    int64_t target_offset;
    int64_t value_bytes;
    int64_t integers;
} PoolOp;

/* ``runs``: (source offset, target offset, length) triples in the int arena; values of ``value_bytes``
   bytes (4: float32, 1: uint8). */
typedef struct {
    int64_t source;
    int64_t source_stride;
    int64_t pixels;
    int64_t target;
    int64_t target_stride;
    int64_t runs;
    int64_t run_count;
    int64_t value_bytes;
} CopyOp;

/* With ``value_bytes`` 1: the sum over pixels of q - input_zeros[c], requantized (the multipliers hold
   scale_in / (pixels * scale_out)). */
typedef struct {
    int64_t source;
    int64_t pixels;
    int64_t source_stride;
    int64_t channels;
    int64_t target;
    int64_t value_bytes;
    int64_t integers;
} GlobalAverageOp;

/* The gate buffer holds ``channels`` logits; they become sigmoids in place. With ``value_bytes`` 1, on uint8
   maps (quantize.py's QuantizedSqueeze): the gate buffer holds logit bytes, gate_table (256 floats) their
   sigmoids, and out = requantized float(q - input_zeros[c]) * (gate * multipliers[c]) (+ the residual's
   float(q - residual_zeros[c]) * residual_multipliers[c]). */
typedef struct {
    int64_t source;
    int64_t source_offset;
    int64_t pixels;
    int64_t source_stride;
    int64_t channels;
    int64_t gate;
    int64_t target;
    int64_t target_offset;
    int64_t target_stride;
    int64_t residual;
    int64_t residual_offset;
    int64_t residual_stride;
    int64_t activation;
    int64_t value_bytes;
    int64_t integers;
} ScaleOp;

/* out[p, target_offset + c] = in[line_starts[l] + i * step + index[c]] for pixel i of line l: the
   pointwise conv's addressing without the GEMM (a shift read by an operation that is not a 1x1 conv, a
   map copied into a zero-bordered one for a dense 3x3 conv). Output line l starts at pixel
   l * target_pitch (0: line_length). */
typedef struct {
    int64_t source;
    int64_t line_starts;
    int64_t lines;
    int64_t line_length;
    int64_t step;
    int64_t index;
    int64_t channels;
    int64_t target;
    int64_t target_stride;
    int64_t target_offset;
    int64_t target_pitch;
    int64_t value_bytes;
} GatherOp;

/* The pointwise conv right after this operation writes a map that only the depthwise conv after it
   reads: run the two row by row, the map's rows in a ring of three rows of the thread's scratch, never
   written to the map's buffer. With ``project`` 1, the pointwise conv after the depthwise conv reads
   its map (which nothing else reads) row by row too, each row from one more row of scratch. Scratch:
   ``ring_floats`` floats, the ring first. Where no scratch can be had, the operations run as planned. */
typedef struct {
    int64_t ring_floats;
    int64_t project;
} ExpandDepthwiseOp;

/* An operation on uint8 maps (``value_bytes`` 1) finds its per-channel arrays through ``integers``: the
   offset in the int arena of INT8_FIELDS int32 values, each the arena offset of one array (unused ones 0).
   Requantization (quantize.py): t = float(sum) * multipliers[c], clamped to [lows[c], highs[c]], rounded
   half to even, plus zeros[c]; the sums are of q - input_zeros[c]. Float arrays: multipliers, lows,
   highs, residual_multipliers, gate_table; int arrays: zeros, input_zeros, residual_zeros. A depthwise conv
   also has its taps as bytes, tap_rows: 3 rows (ky) of the channels rounded up to 16, 4 bytes each (the
   int8 taps kx = 0, 1, 2 and a 0), and folded_bias: bias[c] - input_zeros[c] * (the sum of its 9 taps). */
enum {
    INT8_MULTIPLIERS = 0,
    INT8_LOWS = 1,
    INT8_HIGHS = 2,
    INT8_ZEROS = 3,
    INT8_INPUT_ZEROS = 4,
    INT8_RESIDUAL_MULTIPLIERS = 5,
    INT8_RESIDUAL_ZEROS = 6,
    INT8_GATE_TABLE = 7,
    INT8_TAP_ROWS = 8,
    INT8_FOLDED_BIAS = 9,
    INT8_FIELDS = 10,
};

typedef struct {
    int64_t code;
    union {
        PadInputOp pad_input;
        PointwiseOp pointwise;
        DepthwiseOp depthwise;
        PoolOp pool;
        CopyOp copy;
        GlobalAverageOp global_average;
        ScaleOp scale;
        GatherOp gather;
        ExpandDepthwiseOp expand_depthwise;
    } as;
} Op;

/* A saved plan (runner.c reads it; engine.py's Plan.save writes it), little-endian: this header, then
   int64 buffer_floats[buffers] (each buffer's size), int64 output_positions[outputs] (where each logit
   lies in the output buffer), Op ops[ops], float floats[floats], int32_t ints[ints]. */
#define SHUFFLENET_PLAN_MAGIC 0x4e414c5045464e53LL /* "SNFEPLAN" */

typedef struct {
    int64_t magic;
    int64_t abi;
    int64_t op_size;
    int64_t lanes;
    int64_t ops;
    int64_t floats;
    int64_t ints;
    int64_t buffers;
    int64_t input_buffer;
    int64_t input_channels;
    int64_t input_height;
    int64_t input_width;
    int64_t output_buffer;
    int64_t outputs;
} PlanFile;

/* The library's entry points: a pool of threads (the caller's included) runs plans. */
int64_t shufflenet_engine_abi(int64_t* op_size);
int shufflenet_engine_lanes(void);
int shufflenet_engine_bf16(void);
void* shufflenet_pool_create(int threads);
void shufflenet_pool_destroy(void* pool);
void shufflenet_engine_run(void* pool, int n_ops, const Op* ops, float* const* buffers, const float* floats,
                           const int32_t* ints, double* seconds);

#endif
