/* normlab's CPU kernels: group, instance, layer and batch norm of float32
 * data, forward and backward, each reading its input once for the
 * statistics and once to apply them, with the shift of
 * normlab.backends.policy folded into both reads (no centered copy).
 *
 * Layouts (all contiguous, row-major):
 *   nl_slices_*: x is (N, S, C); the statistics are per sample n and group of
 *     C / G consecutive channels, over the S positions (group and instance
 *     norm on channels-last data; batch norm with N = 1 and G = C).
 *   nl_rows_*: x is (R, W); the statistics are per row (layer norm over
 *     trailing axes), the affine parameters per column.
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
 * OpenMP threads. The partial sums of a task go to its own slot of the
 * caller's `part` buffer and are combined in a fixed order, so a result
 * depends on the thread count only through the task split, which the
 * caller fixes.
 *
 * Every buffer is the caller's; nothing here allocates.
 */

#include <math.h>
#include <stdint.h>
#include <string.h>

typedef int64_t i64;

#define BLOCK 64
#define LANES 16

/* ------------------------------------------------------------------------ */
/* Threads: OpenMP, so that a process that already has an OpenMP runtime
 * (PyTorch's libgomp.so.1) runs these tasks on the same pool of threads
 * rather than on new ones that compete with its waiting workers. */

typedef void (*task_fn)(const void *ctx, i64 task);

static void parallel_for(task_fn fn, const void *ctx, i64 tasks, i64 threads) {
    if (threads > tasks) threads = tasks;
    if (threads <= 1) {
        for (i64 t = 0; t < tasks; t++) fn(ctx, t);
        return;
    }
#pragma omp parallel for num_threads(threads) schedule(static)
    for (i64 t = 0; t < tasks; t++) fn(ctx, t);
}

/* ------------------------------------------------------------------------ */
/* Slices: x (N, S, C), G groups of C / G channels. Two schedules:
 *   fused (chunks == 1): a task per sample, which sums it, finishes its
 *     statistics and applies them while the sample is still in cache;
 *   split (chunks > 1): a task per sample and chunk of positions, for
 *     few samples (batch norm: N = 1), the chunks' sums combined between
 *     two passes.
 * (Tasks over blocks of channels, a sample's columns, were measured
 * slower than either: every row is then a short strided read.) */

struct slices {
    const float *x, *dy, *shift, *gamma, *beta; /* shift: (N, C), constant over a group */
    float *y, *dx, *mean, *var, *rstd;          /* statistics: (N, G) */
    float *coef;                                /* (N, 4, C): forward m, a, b; backward m, p, q, r */
    i64 n, s, c, g, chunks;
    double epsilon;
    double *part;   /* (N * chunks, 2, C): per task, sums per channel */
    float *scratch; /* (N * chunks, 2, C): their float blocks */
    double *acc;    /* backward: (N, 2, C), each sample's parameter-gradient sums */
};

struct range {
    i64 n, k, r0, r1;
};

/* Task t of a pass: (sample, chunk of positions). */
static struct range range_of(const struct slices *a, i64 t) {
    struct range q;
    q.k = t % a->chunks;
    q.n = t / a->chunks;
    q.r0 = a->s * q.k / a->chunks;
    q.r1 = a->s * (q.k + 1) / a->chunks;
    return q;
}

static double *part_of(const struct slices *a, struct range q) { return a->part + (q.n * a->chunks + q.k) * 2 * a->c; }

/* part (2, C) of the task = (sum of u, sum of u * v) per channel over its
 * positions: u = d = x - shift and v = d in the forward, u = dy and
 * v = d - m in the backward (grad). */
static void sums(const struct slices *a, struct range q, int grad) {
    i64 c = a->c, w = c;
    const float *restrict sh = a->shift + q.n * c, *restrict m = a->coef + q.n * 4 * c;
    double *restrict t1 = part_of(a, q), *restrict t2 = t1 + c;
    float *restrict f1 = a->scratch + (q.n * a->chunks + q.k) * 2 * c, *restrict f2 = f1 + c;
    for (i64 j = 0; j < w; j++) t1[j] = t2[j] = 0.0;
    for (i64 r = q.r0; r < q.r1; r += BLOCK) {
        i64 e = r + BLOCK < q.r1 ? r + BLOCK : q.r1;
        for (i64 j = 0; j < w; j++) f1[j] = f2[j] = 0.0f;
        for (i64 i = r; i < e; i++) {
            const float *restrict xr = a->x + (q.n * a->s + i) * c;
            if (grad) {
                const float *restrict dyr = a->dy + (q.n * a->s + i) * c;
#pragma omp simd
                for (i64 j = 0; j < w; j++) {
                    f1[j] += dyr[j];
                    f2[j] += dyr[j] * ((xr[j] - sh[j]) - m[j]);
                }
            } else {
#pragma omp simd
                for (i64 j = 0; j < w; j++) {
                    float d = xr[j] - sh[j];
                    f1[j] += d;
                    f2[j] += d * d;
                }
            }
        }
        for (i64 j = 0; j < w; j++) {
            t1[j] += f1[j];
            t2[j] += f2[j];
        }
    }
}

/* The forward's statistics of sample q.n's groups from its sums (chunk
 * 0's part, all chunks combined), and its coef (m, a, b). */
static void finish_forward(const struct slices *a, struct range q) {
    i64 c = a->c, per = c / a->g;
    double count = (double)a->s * (double)per;
    const double *t1 = a->part + q.n * a->chunks * 2 * c, *t2 = t1 + c;
    float *m = a->coef + q.n * 4 * c, *sc = m + c, *b = sc + c;
    for (i64 k = 0; k < a->g; k++) {
        double s1 = 0.0, s2 = 0.0;
        for (i64 j = k * per; j < (k + 1) * per; j++) {
            s1 += t1[j];
            s2 += t2[j];
        }
        double mu = s1 / count, v = s2 / count - mu * mu;
        if (v < 0.0) v = 0.0;
        double rs = 1.0 / sqrt(v + a->epsilon);
        i64 at = q.n * a->g + k;
        a->mean[at] = (float)mu;
        a->var[at] = (float)v;
        a->rstd[at] = (float)rs;
        for (i64 j = k * per; j < (k + 1) * per; j++) {
            m[j] = (float)mu;
            sc[j] = (float)(a->gamma ? rs * a->gamma[j] : rs);
            b[j] = a->beta ? a->beta[j] : 0.0f;
        }
    }
}

/* The backward's coef (p, q, r) of sample q.n's groups and its
 * parameter-gradient sums (acc), from its sums. */
static void finish_backward(const struct slices *a, struct range q) {
    i64 c = a->c, per = c / a->g;
    double count = (double)a->s * (double)per;
    const double *t1 = a->part + q.n * a->chunks * 2 * c, *t2 = t1 + c;
    float *pp = a->coef + q.n * 4 * c + c, *qq = pp + c, *rr = qq + c;
    double *dg = a->acc + q.n * 2 * c, *db = dg + c;
    for (i64 k = 0; k < a->g; k++) {
        double rs = a->rstd[q.n * a->g + k], sa = 0.0, sb = 0.0;
        for (i64 j = k * per; j < (k + 1) * per; j++) {
            double w = a->gamma ? a->gamma[j] : 1.0;
            sa += w * t1[j];
            sb += w * t2[j];
            dg[j] = t2[j] * rs;
            db[j] = t1[j];
        }
        for (i64 j = k * per; j < (k + 1) * per; j++) {
            pp[j] = (float)(a->gamma ? rs * a->gamma[j] : rs);
            qq[j] = (float)(-rs * rs * rs * sb / count);
            rr[j] = (float)(-rs * sa / count);
        }
    }
}

/* y = ((x - shift) - m) * a + b, or dx = p * dy + q * ((x - shift) - m) + r (grad). */
static void apply(const struct slices *a, struct range q, int grad) {
    i64 c = a->c, w = c;
    const float *restrict sh = a->shift + q.n * c;
    const float *restrict m = a->coef + q.n * 4 * c, *restrict u = m + c, *restrict v = u + c, *restrict z = v + c;
    for (i64 i = q.r0; i < q.r1; i++) {
        i64 at = (q.n * a->s + i) * c;
        const float *restrict xr = a->x + at;
        if (grad) {
            const float *restrict dyr = a->dy + at;
            float *restrict dxr = a->dx + at;
#pragma omp simd
            for (i64 j = 0; j < w; j++) dxr[j] = u[j] * dyr[j] + v[j] * ((xr[j] - sh[j]) - m[j]) + z[j];
        } else {
            float *restrict yr = a->y + at;
#pragma omp simd
            for (i64 j = 0; j < w; j++) yr[j] = ((xr[j] - sh[j]) - m[j]) * u[j] + v[j];
        }
    }
}

static void fused_forward_task(const void *p, i64 t) {
    struct range q = range_of(p, t);
    sums(p, q, 0);
    finish_forward(p, q);
    apply(p, q, 0);
}

static void fused_backward_task(const void *p, i64 t) {
    const struct slices *a = p;
    struct range q = range_of(p, t);
    sums(a, q, 1);
    finish_backward(a, q);
    if (a->dx) apply(a, q, 1);
}

static void sums_task(const void *p, i64 t) { sums(p, range_of(p, t), 0); }
static void grad_sums_task(const void *p, i64 t) { sums(p, range_of(p, t), 1); }
static void apply_task(const void *p, i64 t) { apply(p, range_of(p, t), 0); }
static void input_grad_task(const void *p, i64 t) { apply(p, range_of(p, t), 1); }

/* Split schedule: each sample's chunk sums, added into its chunk 0. */
static void combine_chunks(const struct slices *a) {
    i64 c = a->c;
    for (i64 n = 0; n < a->n; n++) {
        double *t = a->part + n * a->chunks * 2 * c;
        for (i64 k = 1; k < a->chunks; k++)
            for (i64 j = 0; j < 2 * c; j++) t[j] += t[k * 2 * c + j];
    }
}

static struct range whole_sample(const struct slices *a, i64 n) {
    struct range q = {n, 0, 0, a->s};
    return q;
}

/* Forward. mean, var, rstd: (N, G) outputs (mean of x - shift, biased
 * variance); coef: (N, 4, C), part (N * chunks, 2, C) and scratch
 * (N * chunks, 2, C) work space. */
void nl_slices_forward(const float *x, const float *shift, const float *gamma, const float *beta, float *y,
                       float *mean, float *var, float *rstd, i64 n, i64 s, i64 c, i64 g, i64 chunks, double epsilon, double *part, float *scratch, float *coef, i64 threads) {
    struct slices a = {.x = x, .shift = shift, .gamma = gamma, .beta = beta, .y = y, .mean = mean, .var = var,
                       .rstd = rstd, .coef = coef, .n = n, .s = s, .c = c, .g = g, .chunks = chunks,
                       .epsilon = epsilon, .part = part, .scratch = scratch};
    if (chunks == 1) {
        parallel_for(fused_forward_task, &a, n, threads);
        return;
    }
    parallel_for(sums_task, &a, n * chunks, threads);
    combine_chunks(&a);
    for (i64 i = 0; i < n; i++) finish_forward(&a, whole_sample(&a, i));
    parallel_for(apply_task, &a, n * chunks, threads);
}

/* Backward, with the forward's mean and rstd. dx, dgamma, dbeta may each
 * be NULL (not wanted); coef, part, scratch as in the forward; acc:
 * (N, 2, C) work space. */
void nl_slices_backward(const float *dy, const float *x, const float *shift, const float *mean, const float *rstd,
                        const float *gamma, float *dx, float *dgamma, float *dbeta, i64 n, i64 s, i64 c, i64 g,
                        i64 chunks, double *part, float *scratch, float *coef, double *acc,
                        i64 threads) {
    struct slices a = {.x = x, .dy = dy, .shift = shift, .gamma = gamma, .dx = dx, .mean = (float *)mean,
                       .rstd = (float *)rstd, .coef = coef, .n = n, .s = s, .c = c, .g = g, .chunks = chunks,
                       .part = part, .scratch = scratch, .acc = acc};
    i64 per = c / g;
    for (i64 i = 0; i < n; i++)
        for (i64 j = 0; j < c; j++) coef[i * 4 * c + j] = mean[i * g + j / per];
    if (chunks == 1) {
        parallel_for(fused_backward_task, &a, n, threads);
    } else {
        parallel_for(grad_sums_task, &a, n * chunks, threads);
        combine_chunks(&a);
        for (i64 i = 0; i < n; i++) finish_backward(&a, whole_sample(&a, i));
        if (dx) parallel_for(input_grad_task, &a, n * chunks, threads);
    }
    for (i64 j = 0; j < c; j++) {
        double sg = 0.0, sb = 0.0;
        for (i64 i = 0; i < n; i++) {
            sg += acc[i * 2 * c + j];
            sb += acc[i * 2 * c + c + j];
        }
        if (dgamma) dgamma[j] = (float)sg;
        if (dbeta) dbeta[j] = (float)sb;
    }
}

/* ------------------------------------------------------------------------ */
/* Rows: x (R, W), statistics per row, parameters per column; a task per
 * chunk of rows. */

struct rows {
    const float *x, *dy, *shift, *gamma, *beta; /* shift: (R,) */
    float *y, *dx, *mean, *var, *rstd;
    i64 r, w, chunks;
    double epsilon;
    double *part;   /* (chunks, 2, W): the parameters' gradients */
    float *scratch; /* (chunks, 2, W) */
};

/* Sums over a row of w values of d and d * d, d = x - s (row_moments), or
 * of u and u * ((x - s) - m), u = dy * gamma (row_grad_sums): in float
 * over blocks of ROW_BLOCK values (the reduction in vector lanes, which
 * the simd pragma allows), the block sums in double. */
#define ROW_BLOCK (BLOCK * LANES)

static void row_moments(const float *restrict xr, float s, i64 w, double *t1, double *t2) {
    double d1 = 0.0, d2 = 0.0;
    for (i64 j0 = 0; j0 < w; j0 += ROW_BLOCK) {
        i64 e = j0 + ROW_BLOCK < w ? j0 + ROW_BLOCK : w;
        float f1 = 0.0f, f2 = 0.0f;
#pragma omp simd reduction(+ : f1, f2)
        for (i64 j = j0; j < e; j++) {
            float d = xr[j] - s;
            f1 += d;
            f2 += d * d;
        }
        d1 += f1;
        d2 += f2;
    }
    *t1 = d1;
    *t2 = d2;
}

static void row_grad_sums(const float *restrict dyr, const float *restrict xr, const float *restrict gamma, float s,
                          float m, i64 w, double *t1, double *t2) {
    double d1 = 0.0, d2 = 0.0;
    for (i64 j0 = 0; j0 < w; j0 += ROW_BLOCK) {
        i64 e = j0 + ROW_BLOCK < w ? j0 + ROW_BLOCK : w;
        float f1 = 0.0f, f2 = 0.0f;
        if (gamma) {
#pragma omp simd reduction(+ : f1, f2)
            for (i64 j = j0; j < e; j++) {
                float u = dyr[j] * gamma[j];
                f1 += u;
                f2 += u * ((xr[j] - s) - m);
            }
        } else {
#pragma omp simd reduction(+ : f1, f2)
            for (i64 j = j0; j < e; j++) {
                f1 += dyr[j];
                f2 += dyr[j] * ((xr[j] - s) - m);
            }
        }
        d1 += f1;
        d2 += f2;
    }
    *t1 = d1;
    *t2 = d2;
}

static void rows_forward_task(const void *p, i64 task) {
    const struct rows *a = p;
    i64 w = a->w, r0 = a->r * task / a->chunks, r1 = a->r * (task + 1) / a->chunks;
    for (i64 i = r0; i < r1; i++) {
        const float *restrict xr = a->x + i * w;
        float *restrict yr = a->y + i * w;
        float s = a->shift[i];
        double t1, t2;
        row_moments(xr, s, w, &t1, &t2);
        double mu = t1 / (double)w, v = t2 / (double)w - mu * mu;
        if (v < 0.0) v = 0.0;
        double rs = 1.0 / sqrt(v + a->epsilon);
        float m = (float)mu, rsf = (float)rs;
        a->mean[i] = m;
        a->var[i] = (float)v;
        a->rstd[i] = rsf;
        const float *restrict gm = a->gamma, *restrict bt = a->beta;
        if (gm && bt)
#pragma omp simd
            for (i64 j = 0; j < w; j++) yr[j] = ((xr[j] - s) - m) * rsf * gm[j] + bt[j];
        else if (gm)
#pragma omp simd
            for (i64 j = 0; j < w; j++) yr[j] = ((xr[j] - s) - m) * rsf * gm[j];
        else if (bt)
#pragma omp simd
            for (i64 j = 0; j < w; j++) yr[j] = ((xr[j] - s) - m) * rsf + bt[j];
        else
#pragma omp simd
            for (i64 j = 0; j < w; j++) yr[j] = ((xr[j] - s) - m) * rsf;
    }
}

static void rows_backward_task(const void *p, i64 task) {
    const struct rows *a = p;
    i64 w = a->w, r0 = a->r * task / a->chunks, r1 = a->r * (task + 1) / a->chunks;
    double *restrict pg = a->part + task * 2 * w, *restrict pb = pg + w;
    float *restrict fg = a->scratch + task * 2 * w, *restrict fb = fg + w;
    for (i64 j = 0; j < w; j++) pg[j] = pb[j] = 0.0;
    for (i64 r = r0; r < r1; r += BLOCK) {
        i64 e = r + BLOCK < r1 ? r + BLOCK : r1;
        for (i64 j = 0; j < w; j++) fg[j] = fb[j] = 0.0f;
        for (i64 i = r; i < e; i++) {
            const float *restrict xr = a->x + i * w;
            const float *restrict dyr = a->dy + i * w;
            float s = a->shift[i], m = a->mean[i], rs = a->rstd[i];
            if (a->dx) {
                double t1, t2;
                row_grad_sums(dyr, xr, a->gamma, s, m, w, &t1, &t2);
                float q = (float)(-(double)rs * rs * rs * t2 / (double)w);
                float rr = (float)(-(double)rs * t1 / (double)w);
                float *restrict dxr = a->dx + i * w;
                const float *restrict gm = a->gamma;
                if (gm) {
#pragma omp simd
                    for (i64 j = 0; j < w; j++) {
                        float d = (xr[j] - s) - m;
                        dxr[j] = rs * (gm[j] * dyr[j]) + q * d + rr;
                        fg[j] += dyr[j] * (d * rs);
                        fb[j] += dyr[j];
                    }
                } else {
#pragma omp simd
                    for (i64 j = 0; j < w; j++) {
                        float d = (xr[j] - s) - m;
                        dxr[j] = rs * dyr[j] + q * d + rr;
                        fg[j] += dyr[j] * (d * rs);
                        fb[j] += dyr[j];
                    }
                }
            } else {
#pragma omp simd
                for (i64 j = 0; j < w; j++) {
                    fg[j] += dyr[j] * (((xr[j] - s) - m) * rs);
                    fb[j] += dyr[j];
                }
            }
        }
        for (i64 j = 0; j < w; j++) {
            pg[j] += fg[j];
            pb[j] += fb[j];
        }
    }
}

void nl_rows_forward(const float *x, const float *shift, const float *gamma, const float *beta, float *y, float *mean,
                     float *var, float *rstd, i64 r, i64 w, i64 chunks, double epsilon, i64 threads) {
    struct rows a = {.x = x, .shift = shift, .gamma = gamma, .beta = beta, .y = y, .mean = mean, .var = var,
                     .rstd = rstd, .r = r, .w = w, .chunks = chunks, .epsilon = epsilon};
    parallel_for(rows_forward_task, &a, chunks, threads);
}

void nl_rows_backward(const float *dy, const float *x, const float *shift, const float *mean, const float *rstd,
                      const float *gamma, float *dx, float *dgamma, float *dbeta, i64 r, i64 w, i64 chunks,
                      double *part, float *scratch, i64 threads) {
    struct rows a = {.x = x, .dy = dy, .shift = shift, .gamma = gamma, .dx = dx, .mean = (float *)mean,
                     .rstd = (float *)rstd, .r = r, .w = w, .chunks = chunks, .part = part, .scratch = scratch};
    parallel_for(rows_backward_task, &a, chunks, threads);
    for (i64 j = 0; j < w; j++) {
        double g = 0.0, b = 0.0;
        for (i64 k = 0; k < chunks; k++) {
            g += part[k * 2 * w + j];
            b += part[k * 2 * w + w + j];
        }
        if (dgamma) dgamma[j] = (float)g;
        if (dbeta) dbeta[j] = (float)b;
    }
}
