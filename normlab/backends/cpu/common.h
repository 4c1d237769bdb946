/* normlab's CPU kernels (common.h: what slices.c, rows.c and affine.c share): group,
 * instance, layer and batch norm of float32, bfloat16 and float16 data,
 * forward and backward,
 * each reading its input once for the statistics and once to apply them,
 * with the shift of normlab.backends.policy folded into both reads (no
 * centered copy).
 *
 * Layouts (all contiguous, row-major):
 *   nl_slices_*: x is (N, S, C); the statistics are per sample n and group
 *     of C / G consecutive channels, over the S positions (group and
 *     instance norm on channels-last data; batch norm with N = 1, G = C).
 *   nl_rows_*: x is (R, W); the statistics are per row, a row being W / P
 *     channels of P consecutive values whose parameters repeat every G
 *     rows (layer norm over trailing axes: G = P = 1; group norm of (N, C)
 *     data; group and instance norm of channels-first data: P = S).
 *   nl_planes_*: x is (N, C, S); the statistics are per channel, over the
 *     N samples and S positions (batch norm of channels-first data).
 *   nl_affine_*: x is (O, C, I); the statistics are given per channel
 *     (batch norm in inference, with the moving averages: channels-last
 *     data as (N * S, C, 1), channels-first as (N, C, S)); nothing is
 *     reduced forward, and no shift is needed: x - mean is formed first.
 *
 * Numerics: the residual d = x - shift (shift a per-slice subsample mean,
 * computed by the caller: its offset ratio is bounded, see policy.py) is
 * summed in float over blocks of at most BLOCK rows (or BLOCK * LANES
 * values of a row) and the block sums in double, so the one-pass variance
 * E[d^2] - E[d]^2 loses at most a factor 1 + MAX_SHIFT_RATIO in float32 and
 * no length of reduction adds error beyond a block's. The output is
 * ((x - shift) - mean) * rstd * gamma + beta, never the folded
 * x * a + b, which rounds at the scale of the offset.
 *
 * Threads: each call splits its work into tasks run on up to `threads`
 * OpenMP threads. A task's sums are complete within it (in a work-space
 * slot of its own, or of its thread while it runs) and tasks' sums are
 * combined in a fixed order, so a result depends on the thread count only
 * through the task split, which the caller fixes by the shape alone.
 *
 * Types: x, dy, y and dx are of the element type `elem`, chosen by NL_DTYPE
 * (0: float32, 1: bfloat16, 2: float16), and each source is compiled once
 * per type, its entry points named with the type's suffix (NL_FN:
 * nl_rows_forward_bf16, ...). Everything else (shift, parameters,
 * statistics, their gradients, work space) is float32 or double. An
 * element is widened to float32 as it is read (LD) and rounded to nearest
 * even once, as it is written (CV): half-precision data is normalized in
 * float32 arithmetic throughout, as if converted to float32 first, without
 * the converted copy. Both half types are converted with integer and
 * float32 operations (not the compiler's _Float16, whose conversions GCC
 * 12 does not vectorize), bit for bit as PyTorch converts them.
 *
 * Every buffer is the caller's; nothing here allocates. */

#ifndef NORMLAB_CPU_COMMON_H
#define NORMLAB_CPU_COMMON_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

typedef int64_t i64;

/* A float32's bits and back (memcpy: no aliasing; compiled to nothing). */
static inline float bits_float(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}
static inline uint32_t float_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

#ifndef NL_DTYPE
#define NL_DTYPE 0
#endif
#if NL_DTYPE == 0
typedef float elem;
#define LD(p, i) ((p)[i])
#define CV(v) (v)
#define NL_FN(name) name##_f32
#elif NL_DTYPE == 1
typedef uint16_t elem; /* bfloat16: the upper half of a float32 */
static inline float bf16_to_float(uint16_t h) { return bits_float((uint32_t)h << 16); }
/* Rounded to nearest even; NaN as PyTorch writes it (0x7fc0). */
static inline uint16_t float_to_bf16(float f) {
    uint32_t u = float_bits(f), r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    return (uint16_t)((u & 0x7fffffffu) > 0x7f800000u ? 0x7fc0u : r);
}
#define LD(p, i) bf16_to_float((p)[i])
#define CV(v) float_to_bf16(v)
#define NL_FN(name) name##_bf16
#elif NL_DTYPE == 2
typedef uint16_t elem; /* float16, converted in integer and float32 arithmetic (which vectorizes) */
/* Exact. With the sign shifted out, a normal value's exponent and mantissa
 * are realigned to float32's and the exponent rebased by a multiplication
 * by 2^-112 (infinities and NaNs stay so); a subnormal's mantissa is
 * placed below 0.5's and 0.5 subtracted. */
static inline float f16_to_float(uint16_t h) {
    uint32_t w = (uint32_t)h << 16, sign = w & 0x80000000u, mag = w << 1;
    float normal = bits_float((mag >> 4) + (0xe0u << 23)) * 0x1.0p-112f;
    float subnormal = bits_float((mag >> 17) | (126u << 23)) - 0.5f;
    return bits_float(sign | (mag < (1u << 27) ? float_bits(subnormal) : float_bits(normal)));
}
/* Rounded to nearest even by a float32 addition: |f|, scaled so that values
 * beyond float16's range become infinite, is added to a power of two
 * chosen by f's exponent such that the sum keeps exactly float16's 10
 * mantissa bits (at least those of its smallest subnormal), and the sum's
 * bits are float16's exponent and mantissa. NaN as 0x7e00. */
static inline uint16_t float_to_f16(float f) {
    uint32_t w = float_bits(f), sign = w & 0x80000000u, mag = w << 1;
    uint32_t bias = mag & 0xff000000u;
    if (bias < 0x71000000u) bias = 0x71000000u;
    float sum = bits_float((bias >> 1) + 0x07800000u) + (fabsf(f) * 0x1.0p+112f) * 0x1.0p-110f;
    uint32_t b = float_bits(sum);
    uint32_t magnitude = ((b >> 13) & 0x7c00u) + (b & 0x0fffu);
    return (uint16_t)((sign >> 16) | (mag > 0xff000000u ? 0x7e00u : magnitude));
}
#define LD(p, i) f16_to_float((p)[i])
#define CV(v) float_to_f16(v)
#define NL_FN(name) name##_f16
#endif

#define BLOCK 64
#define LANES 16

/* Rows of fewer than 32 channels (not a multiple of 16, a vector of
 * float32 on AVX-512) are read k at a time as one contiguous tile of
 * k * c values (tiles: the caller's per-channel arrays repeated k times),
 * so that the vector loops run over whole vectors rather than a short,
 * masked row each: k * c is lcm(c, 16), doubled up to 64 values at
 * least, at most TILE_MAX; k is a power of two that divides BLOCK.
 * Measured on an AMD EPYC (AVX-512) VM, group norm of (32, 676, 10):
 * forward+backward 2.3x slower than with 16 channels before. 1: rows
 * are read one at a time. The kernels write the tile loop and the row
 * loop out separately: one inline helper serving both measured 7-15%
 * slower on rows of 16 to 256 channels (GCC 12, one thread). */
#define TILE_MAX 512

static inline i64 tile_rows(i64 c) {
    if (c >= 32 || c % 16 == 0) return 1;
    i64 k = 16 / (c & -c); /* c & -c: the lowest set bit of c, gcd(c, 16) here */
    while (k * c < 64) k *= 2;
    return k;
}

/* out[r * c + j] = in[j] for r < k (in may be NULL: fill with `none`). */
static inline void tile(float *out, const float *in, i64 c, i64 k, float none) {
    for (i64 r = 0; r < k; r++)
        for (i64 j = 0; j < c; j++) out[r * c + j] = in ? in[j] : none;
}

/* f[j] += g[r * c + j] over the k rows of a tile, in row order. */
static inline void fold(float *f, const float *g, i64 c, i64 k) {
    for (i64 r = 0; r < k; r++)
        for (i64 j = 0; j < c; j++) f[j] += g[r * c + j];
}

/* ------------------------------------------------------------------------ */
/* Threads: OpenMP, so that a process that already has an OpenMP runtime
 * (PyTorch's libgomp.so.1) runs these tasks on the same pool of threads
 * rather than on new ones that compete with its waiting workers. */

typedef void (*task_fn)(const void *ctx, i64 task);

static inline void parallel_for(task_fn fn, const void *ctx, i64 tasks, i64 threads) {
    if (threads > tasks) threads = tasks;
    if (threads <= 1) {
        for (i64 t = 0; t < tasks; t++) fn(ctx, t);
        return;
    }
#pragma omp parallel for num_threads(threads) schedule(static)
    for (i64 t = 0; t < tasks; t++) fn(ctx, t);
}

/* A slice's statistics from its sums t1 = sum(d), t2 = sum(d * d) over
 * count values (d = x - shift): its mean (of d), variance (clamped at 0)
 * and rstd, stored at index i; returns rstd in double. */
static inline double store_stats(double t1, double t2, double count, double epsilon, float *mean, float *var,
                                 float *rstd, i64 i) {
    double mu = t1 / count, v = t2 / count - mu * mu;
    if (v < 0.0) v = 0.0;
    double rs = 1.0 / sqrt(v + epsilon);
    mean[i] = (float)mu;
    var[i] = (float)v;
    rstd[i] = (float)rs;
    return rs;
}

/* Per-slot partial sums laid out (slots, size) added in slot order into
 * the first slot, a slot at a time (contiguous reads; a value at a time
 * across the slots, their strided reads measured slower). */
static inline void add_slots(double *parts, i64 slots, i64 size) {
    double *restrict acc = parts;
    for (i64 k = 1; k < slots; k++) {
        const double *restrict pk = parts + k * size;
#pragma omp simd
        for (i64 j = 0; j < size; j++) acc[j] += pk[j];
    }
}

/* dgamma and dbeta (either may be NULL) from per-slot partial sums laid
 * out (slots, 2, width), added in slot order (the first slot then holds the totals). */
static inline void parameter_sums(double *parts, i64 slots, i64 width, float *dgamma, float *dbeta) {
    add_slots(parts, slots, 2 * width);
    for (i64 j = 0; j < width; j++) {
        if (dgamma) dgamma[j] = (float)parts[j];
        if (dbeta) dbeta[j] = (float)parts[width + j];
    }
}

#endif
