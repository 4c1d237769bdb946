/* normlab's CPU kernels (common.h: what slices.c and rows.c share): group,
 * instance, layer and batch norm of float32 data, forward and backward,
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
 * Every buffer is the caller's; nothing here allocates. */

#ifndef NORMLAB_CPU_COMMON_H
#define NORMLAB_CPU_COMMON_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#ifdef _OPENMP
#include <omp.h>
#endif

typedef int64_t i64;

#define BLOCK 64
#define LANES 16

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

/* dgamma and dbeta (either may be NULL) from per-slot partial sums laid
 * out (slots, 2, width), added in slot order. */
static inline void parameter_sums(const double *parts, i64 slots, i64 width, float *dgamma, float *dbeta) {
    for (i64 j = 0; j < width; j++) {
        double sg = 0.0, sb = 0.0;
        for (i64 k = 0; k < slots; k++) {
            sg += parts[k * 2 * width + j];
            sb += parts[k * 2 * width + width + j];
        }
        if (dgamma) dgamma[j] = (float)sg;
        if (dbeta) dbeta[j] = (float)sb;
    }
}

#endif
