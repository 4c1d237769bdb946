/* Layer norm over trailing axes (see common.h). */

#include "common.h"

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
