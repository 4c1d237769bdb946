/* Group, instance and batch norm of channels-last data (see common.h). */

#include "common.h"

/* ------------------------------------------------------------------------ */
/* Slices: x (N, S, C), G groups of C / G channels. Two schedules:
 *   fused (chunks == 1): a task per sample, which sums it, finishes its
 *     statistics and applies them while the sample is still in cache; its
 *     work space (sums, float blocks, coefficients) is its thread's;
 *   split (chunks > 1): a task per sample and chunk of positions, for
 *     few samples (batch norm: N = 1), the chunks' sums combined between
 *     two passes; work space per task (sums) and per sample (coefficients).
 * (Tasks over blocks of channels, a sample's columns, were measured
 * slower than either: every row is then a short strided read.) */

struct slices {
    const elem *x, *dy;
    const float *shift, *gamma, *beta; /* shift: (N, C), constant over a group */
    elem *y, *dx;
    float *mean, *var, *rstd; /* statistics: (N, G) */
    float *coef;                                /* (slots, 4, C): forward m, a, b; backward m, p, q, r */
    i64 n, s, c, g, chunks;
    double epsilon;
    double *part;   /* (slots, 2, C): sums per channel */
    float *scratch; /* (slots, 2, C): their float blocks */
    double *acc;    /* backward: (N, 2, C), each sample's parameter-gradient sums */
};

/* Work-space slot of the calling thread (fused schedule). */
static inline i64 thread_slot(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

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

/* Slots: the thread's (fused), else the task's for sums and the sample's
 * for coefficients; a sample's combined sums are in its chunk 0's slot. */
static i64 task_slot(const struct slices *a, struct range q) {
    return a->chunks == 1 ? thread_slot() : q.n * a->chunks + q.k;
}
static double *sums_of(const struct slices *a, i64 n) {
    return a->part + (a->chunks == 1 ? thread_slot() : n * a->chunks) * 2 * a->c;
}
static float *coef_of(const struct slices *a, i64 n) {
    return a->coef + (a->chunks == 1 ? thread_slot() : n) * 4 * a->c;
}

/* part (2, C) of the task = (sum of u, sum of u * v) per channel over its
 * positions: u = d = x - shift and v = d in the forward, u = dy and
 * v = d - m in the backward (grad). Rows of few channels are read in
 * tiles of k rows (tile_rows), whose lane sums are folded per channel at
 * the end of each block. */
static void sums(const struct slices *a, struct range q, int grad) {
    i64 c = a->c, w = c, k = tile_rows(c), tw = k * c;
    const float *restrict sh = a->shift + q.n * c, *restrict m = coef_of(a, q.n);
    double *restrict t1 = a->part + task_slot(a, q) * 2 * c, *restrict t2 = t1 + c;
    float *restrict f1 = a->scratch + task_slot(a, q) * 2 * c, *restrict f2 = f1 + c;
    float sht[TILE_MAX], mt[TILE_MAX], g1[TILE_MAX], g2[TILE_MAX];
    if (k > 1) {
        tile(sht, sh, c, k, 0.0f);
        tile(mt, grad ? m : NULL, c, k, 0.0f);
    }
    for (i64 j = 0; j < w; j++) t1[j] = t2[j] = 0.0;
    for (i64 r = q.r0; r < q.r1; r += BLOCK) {
        i64 e = r + BLOCK < q.r1 ? r + BLOCK : q.r1, i = r;
        for (i64 j = 0; j < w; j++) f1[j] = f2[j] = 0.0f;
        if (k > 1 && e - r >= k) {
            for (i64 t = 0; t < tw; t++) g1[t] = g2[t] = 0.0f;
            for (; i + k <= e; i += k) {
                const elem *restrict xr = a->x + (q.n * a->s + i) * c;
                if (grad) {
                    const elem *restrict dyr = a->dy + (q.n * a->s + i) * c;
#pragma omp simd
                    for (i64 t = 0; t < tw; t++) {
                        float dyt = LD(dyr, t);
                        g1[t] += dyt;
                        g2[t] += dyt * ((LD(xr, t) - sht[t]) - mt[t]);
                    }
                } else {
#pragma omp simd
                    for (i64 t = 0; t < tw; t++) {
                        float d = LD(xr, t) - sht[t];
                        g1[t] += d;
                        g2[t] += d * d;
                    }
                }
            }
            fold(f1, g1, c, k);
            fold(f2, g2, c, k);
        }
        for (; i < e; i++) {
            const elem *restrict xr = a->x + (q.n * a->s + i) * c;
            if (grad) {
                const elem *restrict dyr = a->dy + (q.n * a->s + i) * c;
#pragma omp simd
                for (i64 j = 0; j < w; j++) {
                    float dyj = LD(dyr, j);
                    f1[j] += dyj;
                    f2[j] += dyj * ((LD(xr, j) - sh[j]) - m[j]);
                }
            } else {
#pragma omp simd
                for (i64 j = 0; j < w; j++) {
                    float d = LD(xr, j) - sh[j];
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

/* The forward's statistics of sample q.n's groups from its sums, and its
 * coef (m, a, b). */
static void finish_forward(const struct slices *a, struct range q) {
    i64 c = a->c, per = c / a->g;
    double count = (double)a->s * (double)per;
    const double *t1 = sums_of(a, q.n), *t2 = t1 + c;
    float *m = coef_of(a, q.n), *sc = m + c, *b = sc + c;
    for (i64 k = 0; k < a->g; k++) {
        double s1 = 0.0, s2 = 0.0;
        for (i64 j = k * per; j < (k + 1) * per; j++) {
            s1 += t1[j];
            s2 += t2[j];
        }
        i64 at = q.n * a->g + k;
        double rs = store_stats(s1, s2, count, a->epsilon, a->mean, a->var, a->rstd, at);
        for (i64 j = k * per; j < (k + 1) * per; j++) {
            m[j] = a->mean[at];
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
    const double *t1 = sums_of(a, q.n), *t2 = t1 + c;
    float *pp = coef_of(a, q.n) + c, *qq = pp + c, *rr = qq + c;
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

/* y = ((x - shift) - m) * a + b, or dx = p * dy + q * ((x - shift) - m) + r
 * (grad); rows of few channels in tiles of k rows (tile_rows). */
static void apply(const struct slices *a, struct range q, int grad) {
    i64 c = a->c, w = c, k = tile_rows(c), tw = k * c, i = q.r0;
    const float *restrict sh = a->shift + q.n * c;
    const float *restrict m = coef_of(a, q.n), *restrict u = m + c, *restrict v = u + c, *restrict z = v + c;
    if (k > 1) {
        float sht[TILE_MAX], mt[TILE_MAX], ut[TILE_MAX], vt[TILE_MAX], zt[TILE_MAX];
        tile(sht, sh, c, k, 0.0f);
        tile(mt, m, c, k, 0.0f);
        tile(ut, u, c, k, 0.0f);
        tile(vt, v, c, k, 0.0f);
        tile(zt, grad ? z : NULL, c, k, 0.0f);
        for (; i + k <= q.r1; i += k) {
            i64 at = (q.n * a->s + i) * c;
            const elem *restrict xr = a->x + at;
            if (grad) {
                const elem *restrict dyr = a->dy + at;
                elem *restrict dxr = a->dx + at;
#pragma omp simd
                for (i64 t = 0; t < tw; t++)
                    dxr[t] = CV(ut[t] * LD(dyr, t) + vt[t] * ((LD(xr, t) - sht[t]) - mt[t]) + zt[t]);
            } else {
                elem *restrict yr = a->y + at;
#pragma omp simd
                for (i64 t = 0; t < tw; t++) yr[t] = CV(((LD(xr, t) - sht[t]) - mt[t]) * ut[t] + vt[t]);
            }
        }
    }
    for (; i < q.r1; i++) {
        i64 at = (q.n * a->s + i) * c;
        const elem *restrict xr = a->x + at;
        if (grad) {
            const elem *restrict dyr = a->dy + at;
            elem *restrict dxr = a->dx + at;
#pragma omp simd
            for (i64 j = 0; j < w; j++)
                dxr[j] = CV(u[j] * LD(dyr, j) + v[j] * ((LD(xr, j) - sh[j]) - m[j]) + z[j]);
        } else {
            elem *restrict yr = a->y + at;
#pragma omp simd
            for (i64 j = 0; j < w; j++) yr[j] = CV(((LD(xr, j) - sh[j]) - m[j]) * u[j] + v[j]);
        }
    }
}

static void fused_forward_task(const void *p, i64 t) {
    struct range q = range_of(p, t);
    sums(p, q, 0);
    finish_forward(p, q);
    apply(p, q, 0);
}

/* The forward's mean of sample n, per channel, into its coef's m. */
static void mean_per_channel(const struct slices *a, i64 n) {
    float *m = coef_of(a, n);
    i64 per = a->c / a->g;
    for (i64 k = 0; k < a->g; k++)
        for (i64 j = k * per; j < (k + 1) * per; j++) m[j] = a->mean[n * a->g + k];
}

static void fused_backward_task(const void *p, i64 t) {
    const struct slices *a = p;
    struct range q = range_of(p, t);
    mean_per_channel(a, q.n);
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
 * variance). Work space: part (slots, 2, C), scratch (slots, 2, C) and
 * coef (slots, 4, C), where slots is `threads` if chunks == 1, else
 * N * chunks (and coef's N). */
void NL_FN(nl_slices_forward)(const elem *x, const float *shift, const float *gamma, const float *beta, elem *y,
                              float *mean, float *var, float *rstd, i64 n, i64 s, i64 c, i64 g, i64 chunks,
                              double epsilon, double *part, float *scratch, float *coef, i64 threads) {
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
 * be NULL (not wanted); part, scratch and coef as in the forward; acc:
 * (N, 2, C) work space. */
void NL_FN(nl_slices_backward)(const elem *dy, const elem *x, const float *shift, const float *mean,
                               const float *rstd, const float *gamma, elem *dx, float *dgamma, float *dbeta, i64 n,
                               i64 s, i64 c, i64 g, i64 chunks, double *part, float *scratch, float *coef, double *acc,
                               i64 threads) {
    struct slices a = {.x = x, .dy = dy, .shift = shift, .gamma = gamma, .dx = dx, .mean = (float *)mean,
                       .rstd = (float *)rstd, .coef = coef, .n = n, .s = s, .c = c, .g = g, .chunks = chunks,
                       .part = part, .scratch = scratch, .acc = acc};
    if (chunks == 1) {
        parallel_for(fused_backward_task, &a, n, threads);
    } else {
        for (i64 i = 0; i < n; i++) mean_per_channel(&a, i);
        parallel_for(grad_sums_task, &a, n * chunks, threads);
        combine_chunks(&a);
        for (i64 i = 0; i < n; i++) finish_backward(&a, whole_sample(&a, i));
        if (dx) parallel_for(input_grad_task, &a, n * chunks, threads);
    }
    parameter_sums(acc, n, c, dgamma, dbeta);
}
