/* Runs a saved engine plan (engine.py's Plan.save) without Python: on a CPU whose build cannot be
   loaded into this Python (an aarch64 build under qemu-aarch64), or on a device with only a C compiler.

   usage: runner PLAN INPUT OUTPUT [REPEATS [THREADS]]
     INPUT   float32 NCHW images, N x C x H x W as planned (N from the file's size)
     OUTPUT  float32 logits, N x classes (written whole: a temporary file, then renamed)
     REPEATS with REPEATS > 0, also run the batch that many more times and print the mean milliseconds
             per image on stderr
     THREADS threads to run each image on (default 1)

   Build: cc -O3 -pthread [the instruction set's flags] runner.c engine.c -lm -o runner */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine.h"

static int fail(const char* what, const char* path) {
    fprintf(stderr, "runner: %s: %s\n", path, what);
    return 1;
}

/* The whole file in a 64-byte-aligned block (the arenas must start on cache lines), or NULL. */
static char* read_file(const char* path, size_t* size) {
    FILE* file = fopen(path, "rb");
    if (!file) return NULL;
    fseek(file, 0, SEEK_END);
    const long length = ftell(file);
    fseek(file, 0, SEEK_SET);
    char* data = length >= 0 ? aligned_alloc(64, ((size_t)length + 64) / 64 * 64) : NULL;
    if (data && fread(data, 1, (size_t)length, file) != (size_t)length) {
        free(data);
        data = NULL;
    }
    fclose(file);
    *size = (size_t)length;
    return data;
}

/* A zeroed, 64-byte-aligned copy of ``bytes`` bytes of ``source`` (bordered maps need zero borders). */
static void* aligned_copy(const void* source, size_t bytes) {
    char* block = aligned_alloc(64, (bytes + 64 + 63) / 64 * 64);
    if (!block) return NULL;
    memset(block, 0, (bytes + 64 + 63) / 64 * 64);
    if (source) memcpy(block, source, bytes);
    return block;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

int main(int argc, char** argv) {
    if (argc < 4 || argc > 6) {
        fprintf(stderr, "usage: %s PLAN INPUT OUTPUT [REPEATS [THREADS]]\n", argv[0]);
        return 2;
    }
    size_t plan_size, input_size;
    char* plan = read_file(argv[1], &plan_size);
    if (!plan) return fail("cannot read the plan", argv[1]);
    PlanFile head;
    if (plan_size < sizeof head) return fail("not an engine plan (too short)", argv[1]);
    memcpy(&head, plan, sizeof head);
    int64_t op_size;
    const int64_t abi = shufflenet_engine_abi(&op_size);
    if (head.magic != SHUFFLENET_PLAN_MAGIC) return fail("not an engine plan", argv[1]);
    if (head.abi != abi || head.op_size != op_size)
        return fail("a plan of another engine version: plan it again with this package", argv[1]);
    if (head.lanes != shufflenet_engine_lanes())
        return fail("planned for another vector width: plan it for this build's instruction set", argv[1]);
    const size_t expected = sizeof head + 8 * (size_t)(head.buffers + head.outputs) +
                            sizeof(Op) * (size_t)head.ops + 4 * (size_t)(head.floats + head.ints);
    if (plan_size != expected) return fail("truncated or corrupt plan", argv[1]);

    const int64_t* buffer_floats = (const int64_t*)(plan + sizeof head);
    const int64_t* positions = buffer_floats + head.buffers;
    const Op* ops = (const Op*)(positions + head.outputs);
    for (int64_t i = 0; i < head.ops; i++)
        if (ops[i].code == OP_POINTWISE && ops[i].as.pointwise.bfloat16 && !shufflenet_engine_bf16())
            return fail("a bfloat16 plan: this CPU lacks AVX512_BF16; plan it in fp32 or int8", argv[1]);
    const float* floats = aligned_copy(ops + head.ops, 4 * (size_t)head.floats);
    const int32_t* ints = aligned_copy((const char*)(ops + head.ops) + 4 * (size_t)head.floats, 4 * (size_t)head.ints);
    float** buffers = calloc((size_t)head.buffers, sizeof(float*));
    if (!floats || !ints || !buffers) return fail("out of memory", argv[1]);
    for (int64_t b = 0; b < head.buffers; b++) {
        buffers[b] = aligned_copy(NULL, 4 * (size_t)buffer_floats[b]);
        if (!buffers[b]) return fail("out of memory", argv[1]);
    }

    const size_t image = (size_t)(head.input_channels * head.input_height * head.input_width);
    float* input = (float*)read_file(argv[2], &input_size);
    if (!input) return fail("cannot read the input", argv[2]);
    if (input_size == 0 || input_size % (4 * image))
        return fail("not a whole number of float32 images of the planned size", argv[2]);
    const size_t batch = input_size / (4 * image);
    float* logits = malloc(4 * batch * (size_t)head.outputs);
    if (!logits) return fail("out of memory", argv[2]);
    const int repeats = argc >= 5 ? atoi(argv[4]) : 0;
    void* pool = shufflenet_pool_create(argc == 6 ? atoi(argv[5]) : 1);
    if (!pool) return fail("cannot start the threads", argv[1]);
    double start = 0.0;
    for (int pass = 0; pass <= repeats; pass++) {
        if (pass == 1) start = now();
        for (size_t n = 0; n < batch; n++) {
            buffers[head.input_buffer] = input + n * image;
            shufflenet_engine_run(pool, (int)head.ops, ops, buffers, floats, ints, NULL);
            for (int64_t k = 0; k < head.outputs; k++)
                logits[n * (size_t)head.outputs + (size_t)k] = buffers[head.output_buffer][positions[k]];
        }
    }
    shufflenet_pool_destroy(pool);
    if (repeats > 0) fprintf(stderr, "%.4f ms per image\n", 1e3 * (now() - start) / ((double)repeats * batch));

    char temporary[4096];
    snprintf(temporary, sizeof temporary, "%s.partial", argv[3]);
    FILE* out = fopen(temporary, "wb");
    if (!out) return fail("cannot write the output", argv[3]);
    const size_t written = fwrite(logits, 4, batch * (size_t)head.outputs, out);
    if (fclose(out) != 0 || written != batch * (size_t)head.outputs || rename(temporary, argv[3]) != 0) {
        remove(temporary);
        return fail("cannot write the output", argv[3]);
    }
    return 0;
}
