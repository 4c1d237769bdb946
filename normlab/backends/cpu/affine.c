/* Batch norm with given statistics (inference: the moving averages), on
 * channels-last or channels-first data (see common.h).
 *
 * x is (O, C, I): channel j of outer index o holds the I consecutive
 * values at (o * C + j) * I. Channels-last data (N, S, C) is (N * S, C, 1),
 * channels-first (N, C, S) is (N, C, S). With a = rsqrt(var + eps) * gamma
 * per channel, the forward is y = (x - mean) * a + beta, one read and one
 * write, x - mean formed first (exact at any offset, as the general path);
 * the backward is dx = dy * a, dgamma = rstd * sum(dy * (x - mean)) and
 * dbeta = sum(dy) over every axis but C.
 *
 * Tasks: units are rows of C values (I == 1) or planes of I values
 * (I > 1), split into `tasks` contiguous ranges (a function of the shape,
 * chosen by the caller). The backward's sums are complete within a task,
 * in float over blocks of BLOCK rows (BLOCK * LANES values of a plane) and
 * in double over blocks, and the tasks' sums are added in task order. */

#include "common.h"

struct affine {
    const elem *x, *dy;
    elem *y, *dx;
    const float *mean;
    const float *coef; /* (2, C): forward a, beta; backward a, rstd */
    i64 o, c, in, tasks;
    double *part;   /* backward: (tasks, 2, C), sums of dy and dy * (x - mean) */
    float *scratch; /* backward: (tasks, 2, C), their float blocks */
};

static i64 units_of(const struct affine *a) { return a->in == 1 ? a->o : a->o * a->c; }

static void forward_task(const void *ctx, i64 t) {
    const struct affine *a = ctx;
    i64 c = a->c, in = a->in, u = units_of(a);
    i64 u0 = u * t / a->tasks, u1 = u * (t + 1) / a->tasks;
    const float *restrict m = a->mean, *restrict sc = a->coef, *restrict b = sc + c;
    if (in == 1) {
        i64 k = tile_rows(c), tw = k * c, r = u0;
        if (k > 1) { /* rows of few channels, k at a time (common.h) */
            float mt[TILE_MAX], st[TILE_MAX], bt[TILE_MAX];
            tile(mt, m, c, k, 0.0f);
            tile(st, sc, c, k, 0.0f);
            tile(bt, b, c, k, 0.0f);
            for (; r + k <= u1; r += k) {
                const elem *restrict xr = a->x + r * c;
                elem *restrict yr = a->y + r * c;
#pragma omp simd
                for (i64 t = 0; t < tw; t++) yr[t] = CV((LD(xr, t) - mt[t]) * st[t] + bt[t]);
            }
        }
        for (; r < u1; r++) {
            const elem *restrict xr = a->x + r * c;
            elem *restrict yr = a->y + r * c;
#pragma omp simd
            for (i64 j = 0; j < c; j++) yr[j] = CV((LD(xr, j) - m[j]) * sc[j] + b[j]);
        }
        return;
    }
    for (i64 p = u0; p < u1; p++) {
        i64 j = p % c;
        float mj = m[j], aj = sc[j], bj = b[j];
        const elem *restrict xp = a->x + p * in;
        elem *restrict yp = a->y + p * in;
#pragma omp simd
        for (i64 k = 0; k < in; k++) yp[k] = CV((LD(xp, k) - mj) * aj + bj);
    }
}

/* dx where wanted, and with part set, the task's sums. */
static void backward_task(const void *ctx, i64 t) {
    const struct affine *a = ctx;
    i64 c = a->c, in = a->in, u = units_of(a);
    i64 u0 = u * t / a->tasks, u1 = u * (t + 1) / a->tasks;
    const float *restrict m = a->mean, *restrict sc = a->coef;
    double *restrict t1 = a->part ? a->part + t * 2 * c : NULL, *restrict t2 = t1 ? t1 + c : NULL;
    if (t1)
        for (i64 j = 0; j < 2 * c; j++) t1[j] = 0.0;
    if (in == 1) {
        float *restrict f1 = a->scratch + t * 2 * c, *restrict f2 = f1 + c;
        i64 k = tile_rows(c), tw = k * c;
        float mt[TILE_MAX], st[TILE_MAX], g1[TILE_MAX], g2[TILE_MAX];
        if (k > 1) {
            tile(mt, m, c, k, 0.0f);
            tile(st, sc, c, k, 0.0f);
        }
        for (i64 r = u0; r < u1; r += BLOCK) {
            i64 e = r + BLOCK < u1 ? r + BLOCK : u1, i = r;
            if (t1)
                for (i64 j = 0; j < c; j++) f1[j] = f2[j] = 0.0f;
            if (k > 1 && e - r >= k) { /* rows of few channels, k at a time (common.h) */
                for (i64 q = 0; q < tw; q++) g1[q] = g2[q] = 0.0f;
                for (; i + k <= e; i += k) {
                    const elem *restrict dyr = a->dy + i * c, *restrict xr = a->x + i * c;
                    if (a->dx) {
                        elem *restrict dxr = a->dx + i * c;
#pragma omp simd
                        for (i64 q = 0; q < tw; q++) dxr[q] = CV(LD(dyr, q) * st[q]);
                    }
                    if (t1) {
#pragma omp simd
                        for (i64 q = 0; q < tw; q++) {
                            float g = LD(dyr, q);
                            g1[q] += g;
                            g2[q] += g * (LD(xr, q) - mt[q]);
                        }
                    }
                }
                if (t1) {
                    fold(f1, g1, c, k);
                    fold(f2, g2, c, k);
                }
            }
            for (; i < e; i++) {
                const elem *restrict dyr = a->dy + i * c, *restrict xr = a->x + i * c;
                if (a->dx) {
                    elem *restrict dxr = a->dx + i * c;
#pragma omp simd
                    for (i64 j = 0; j < c; j++) dxr[j] = CV(LD(dyr, j) * sc[j]);
                }
                if (t1) {
#pragma omp simd
                    for (i64 j = 0; j < c; j++) {
                        float g = LD(dyr, j);
                        f1[j] += g;
                        f2[j] += g * (LD(xr, j) - m[j]);
                    }
                }
            }
            if (t1)
                for (i64 j = 0; j < c; j++) {
                    t1[j] += f1[j];
                    t2[j] += f2[j];
                }
        }
        return;
    }
    for (i64 p = u0; p < u1; p++) {
        i64 j = p % c;
        float mj = m[j], aj = sc[j];
        const elem *restrict dyp = a->dy + p * in, *restrict xp = a->x + p * in;
        if (a->dx) {
            elem *restrict dxp = a->dx + p * in;
#pragma omp simd
            for (i64 k = 0; k < in; k++) dxp[k] = CV(LD(dyp, k) * aj);
        }
        if (!t1) continue;
        double s1 = 0.0, s2 = 0.0;
        for (i64 k0 = 0; k0 < in; k0 += BLOCK * LANES) {
            i64 k1 = k0 + BLOCK * LANES < in ? k0 + BLOCK * LANES : in;
            float f1 = 0.0f, f2 = 0.0f;
#pragma omp simd reduction(+ : f1, f2)
            for (i64 k = k0; k < k1; k++) {
                float g = LD(dyp, k);
                f1 += g;
                f2 += g * (LD(xp, k) - mj);
            }
            s1 += f1;
            s2 += f2;
        }
        t1[j] += s1;
        t2[j] += s2;
    }
}

/* coef (2, C): a = rsqrt(var + eps) * gamma, then beta (forward) or rstd (backward). */
static void coefficients(const float *var, const float *gamma, const float *beta, double epsilon, i64 c,
                         int backward, float *coef) {
    for (i64 j = 0; j < c; j++) {
        float rs = 1.0f / sqrtf(var[j] + (float)epsilon);
        coef[j] = gamma ? rs * gamma[j] : rs;
        coef[c + j] = backward ? rs : (beta ? beta[j] : 0.0f);
    }
}

void NL_FN(nl_affine_forward)(const elem *x, const float *mean, const float *var, const float *gamma,
                              const float *beta, elem *y, i64 o, i64 c, i64 in, i64 tasks, double epsilon,
                              float *coef, i64 threads) {
    coefficients(var, gamma, beta, epsilon, c, 0, coef);
    struct affine a = {x, NULL, y, NULL, mean, coef, o, c, in, tasks, NULL, NULL};
    parallel_for(forward_task, &a, tasks, threads);
}

/* dx, dgamma and dbeta may each be NULL (not wanted). */
void NL_FN(nl_affine_backward)(const elem *dy, const elem *x, const float *mean, const float *var,
                               const float *gamma, elem *dx, float *dgamma, float *dbeta, i64 o, i64 c, i64 in,
                               i64 tasks, double epsilon, float *coef, double *part, float *scratch,
                               i64 threads) {
    coefficients(var, gamma, NULL, epsilon, c, 1, coef);
    int sums = dgamma != NULL || dbeta != NULL;
    struct affine a = {x, dy, NULL, dx, mean, coef, o, c, in, tasks, sums ? part : NULL, scratch};
    parallel_for(backward_task, &a, tasks, threads);
    if (!sums) return;
    const float *rstd = coef + c;
    add_slots(part, tasks, 2 * c);
    for (i64 j = 0; j < c; j++) {
        if (dgamma) dgamma[j] = (float)(part[c + j] * rstd[j]);
        if (dbeta) dbeta[j] = (float)part[j];
    }
}
