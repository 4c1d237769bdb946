/* Rows and planes (see common.h): layer norm over trailing axes, group and
 * instance norm of channels-first data, batch norm of channels-first data. */

#include "common.h"

/* ------------------------------------------------------------------------ */
/* Rows: x (R, W), statistics per row; each row is W / P channels of P
 * consecutive values, and the parameters (G * W / P) are per channel of
 * each of G consecutive rows: layer norm over trailing axes (G = P = 1),
 * group norm of (N, C) data (rows of C / G channels, G per sample, P = 1),
 * group and instance norm of channels-first (N, C, S) data (rows of C / G
 * channels of P = S positions). A task per chunk of rows.
 *
 * Uncentered (centered = 0, RMS norm): no shift (NULL) and no mean, the
 * "variance" is the mean square, y = x * rstd * gamma + beta, and the
 * input gradient drops the mean of g = dy * gamma:
 * dx = rstd * (g - xhat * mean(g * xhat)).
 *
 * The forward takes each row's shift from `shift`, or with head > 0 forms
 * it itself, the mean of the row's first head values (a subsample mean, see
 * normlab/backends/policy.py: the row is read from cache just after), and
 * writes it to `shift` for the backward. */

struct rows {
    const elem *x, *dy;
    const float *shift, *gamma, *beta; /* shift: (R,); gamma, beta: (G * W,) */
    elem *y, *dx;
    float *mean, *var, *rstd;
    float *shift_out; /* the forward's shifts where it forms them (head > 0), else NULL */
    i64 r, w, g, p, centered, chunks; /* row i takes the parameters from (i % g) * W / P */
    i64 head;
    double epsilon;
    double *part;   /* (chunks, 2, G * W / P): the parameters' gradients */
    float *scratch; /* (chunks, 2, G * W / P) */
};

/* Sums over a row of w values of d and d * d, d = x - s (row_moments), or
 * of u and u * ((x - s) - m), u = dy * gamma (row_grad_sums): in float
 * over blocks of ROW_BLOCK values (the reduction in vector lanes, which
 * the simd pragma allows), the block sums in double. */
#define ROW_BLOCK (BLOCK * LANES)

static void row_moments(const elem *restrict xr, float s, i64 w, double *t1, double *t2) {
    double d1 = 0.0, d2 = 0.0;
    for (i64 j0 = 0; j0 < w; j0 += ROW_BLOCK) {
        i64 e = j0 + ROW_BLOCK < w ? j0 + ROW_BLOCK : w;
        float f1 = 0.0f, f2 = 0.0f;
#pragma omp simd reduction(+ : f1, f2)
        for (i64 j = j0; j < e; j++) {
            float d = LD(xr, j) - s;
            f1 += d;
            f2 += d * d;
        }
        d1 += f1;
        d2 += f2;
    }
    *t1 = d1;
    *t2 = d2;
}

static void row_grad_sums(const elem *restrict dyr, const elem *restrict xr, const float *restrict gamma, float s,
                          float m, i64 w, double *t1, double *t2) {
    double d1 = 0.0, d2 = 0.0;
    for (i64 j0 = 0; j0 < w; j0 += ROW_BLOCK) {
        i64 e = j0 + ROW_BLOCK < w ? j0 + ROW_BLOCK : w;
        float f1 = 0.0f, f2 = 0.0f;
        if (gamma) {
#pragma omp simd reduction(+ : f1, f2)
            for (i64 j = j0; j < e; j++) {
                float u = LD(dyr, j) * gamma[j];
                f1 += u;
                f2 += u * ((LD(xr, j) - s) - m);
            }
        } else {
#pragma omp simd reduction(+ : f1, f2)
            for (i64 j = j0; j < e; j++) {
                float dyj = LD(dyr, j);
                f1 += dyj;
                f2 += dyj * ((LD(xr, j) - s) - m);
            }
        }
        d1 += f1;
        d2 += f2;
    }
    *t1 = d1;
    *t2 = d2;
}

/* The mean of a row's first k values (k is a 16th of the row), taken about
 * the row's first value (x0 + mean(x - x0)): a head of equal values gives
 * that value exactly, where a sum of the values themselves rounds at k times
 * their scale (a constant row at 1e6 got a shift 0.31 off, which the folded
 * apply step then amplified by rstd: 2.4e-4 at epsilon 1e-9). Summed as
 * row_moments sums; a few values (short rows: many of them) in a plain loop,
 * which a vectorized reduction's set-up would outweigh. */
static float head_mean(const elem *restrict xr, i64 k) {
    const float x0 = LD(xr, 0);
    if (k <= LANES) {
        float f = 0.0f;
        for (i64 j = 0; j < k; j++) f += LD(xr, j) - x0;
        return x0 + f / (float)k;
    }
    double t = 0.0;
    for (i64 j0 = 0; j0 < k; j0 += ROW_BLOCK) {
        i64 e = j0 + ROW_BLOCK < k ? j0 + ROW_BLOCK : k;
        float f = 0.0f;
#pragma omp simd reduction(+ : f)
        for (i64 j = j0; j < e; j++) f += LD(xr, j) - x0;
        t += f;
    }
    return x0 + (float)(t / (double)k);
}

/* y = ((x - s) - m) * (rs * gamma) + beta over a row of channels of p values each. */
static void apply_channels(const elem *restrict xr, elem *restrict yr, float s, float m, float rs,
                           const float *restrict gm, const float *restrict bt, i64 channels, i64 p) {
    for (i64 c = 0; c < channels; c++) {
        float sc = gm ? rs * gm[c] : rs, b = bt ? bt[c] : 0.0f;
        const elem *restrict xc = xr + c * p;
        elem *restrict yc = yr + c * p;
#pragma omp simd
        for (i64 j = 0; j < p; j++) yc[j] = CV(((LD(xc, j) - s) - m) * sc + b);
    }
}

/* The backward of a row of channels of p values each: its input gradient
 * (if dx) and each channel's parameter-gradient sums added to pg, pb. */
static void backward_channels(const elem *restrict dyr, const elem *restrict xr, elem *restrict dxr,
                              const float *restrict gm, float s, float m, float rs, i64 channels, i64 p,
                              i64 centered, double *restrict pg, double *restrict pb) {
    double t1 = 0.0, t2 = 0.0;
    for (i64 c = 0; c < channels; c++) {
        double sa, sb;
        row_grad_sums(dyr + c * p, xr + c * p, NULL, s, m, p, &sa, &sb);
        double w = gm ? gm[c] : 1.0;
        t1 += w * sa;
        t2 += w * sb;
        pg[c] += sb * rs;
        pb[c] += sa;
    }
    if (!dxr) return;
    double count = (double)channels * (double)p;
    float q = (float)(-(double)rs * rs * rs * t2 / count), rr = centered ? (float)(-(double)rs * t1 / count) : 0.0f;
    for (i64 c = 0; c < channels; c++) {
        float pc = gm ? rs * gm[c] : rs;
        const elem *restrict xc = xr + c * p, *restrict dyc = dyr + c * p;
        elem *restrict dxc = dxr + c * p;
#pragma omp simd
        for (i64 j = 0; j < p; j++) dxc[j] = CV(pc * LD(dyc, j) + q * ((LD(xc, j) - s) - m) + rr);
    }
}

static void rows_forward_task(const void *p, i64 task) {
    const struct rows *a = p;
    i64 w = a->w, r0 = a->r * task / a->chunks, r1 = a->r * (task + 1) / a->chunks;
    for (i64 i = r0; i < r1; i++) {
        const elem *restrict xr = a->x + i * w;
        elem *restrict yr = a->y + i * w;
        float s;
        if (a->shift_out)
            s = a->shift_out[i] = head_mean(xr, a->head);
        else
            s = a->shift ? a->shift[i] : 0.0f;
        double t1, t2;
        row_moments(xr, s, w, &t1, &t2);
        store_stats(a->centered ? t1 : 0.0, t2, (double)w, a->epsilon, a->mean, a->var, a->rstd, i);
        float m = a->mean[i], rsf = a->rstd[i];
        i64 at = (i % a->g) * (w / a->p);
        const float *restrict gm = a->gamma ? a->gamma + at : NULL, *restrict bt = a->beta ? a->beta + at : NULL;
        /* xhat = (x - s) * rstd - mean * rstd: one multiply-add after the shift
         * (every caller's shift is a subsample mean, its own or the hook's,
         * about which |mean * rstd| <= 4, so the rounding of mean * rstd is
         * within a few units of xhat's last place, as that of (x - s) - mean). */
        float c0 = -m * rsf;
        if (a->p > 1)
            apply_channels(xr, yr, s, m, rsf, gm, bt, w / a->p, a->p);
        else if (gm && bt)
#pragma omp simd
            for (i64 j = 0; j < w; j++) yr[j] = CV(((LD(xr, j) - s) * rsf + c0) * gm[j] + bt[j]);
        else if (gm)
#pragma omp simd
            for (i64 j = 0; j < w; j++) yr[j] = CV(((LD(xr, j) - s) * rsf + c0) * gm[j]);
        else if (bt)
#pragma omp simd
            for (i64 j = 0; j < w; j++) yr[j] = CV((LD(xr, j) - s) * rsf + c0 + bt[j]);
        else
#pragma omp simd
            for (i64 j = 0; j < w; j++) yr[j] = CV((LD(xr, j) - s) * rsf + c0);
    }
}

static void rows_backward_task(const void *p, i64 task) {
    const struct rows *a = p;
    i64 w = a->w, channels = w / a->p, width = a->g * channels;
    i64 r0 = a->r * task / a->chunks, r1 = a->r * (task + 1) / a->chunks;
    double *restrict pg = a->part + task * 2 * width, *restrict pb = pg + width;
    float *restrict sg = a->scratch + task * 2 * width, *restrict sb = sg + width;
    for (i64 j = 0; j < width; j++) pg[j] = pb[j] = 0.0;
    for (i64 r = r0; r < r1; r += BLOCK) {
        i64 e = r + BLOCK < r1 ? r + BLOCK : r1;
        for (i64 j = 0; j < width; j++) sg[j] = sb[j] = 0.0f;
        for (i64 i = r; i < e; i++) {
            const elem *restrict xr = a->x + i * w;
            const elem *restrict dyr = a->dy + i * w;
            i64 at = (i % a->g) * channels;
            const float *restrict gm = a->gamma ? a->gamma + at : NULL;
            float *restrict fg = sg + at, *restrict fb = sb + at;
            float s = a->shift ? a->shift[i] : 0.0f, m = a->mean[i], rs = a->rstd[i];
            if (a->p > 1) {
                backward_channels(dyr, xr, a->dx ? a->dx + i * w : NULL, gm, s, m, rs, channels, a->p, a->centered,
                                  pg + at, pb + at);
            } else if (a->dx) {
                double t1, t2;
                row_grad_sums(dyr, xr, gm, s, m, w, &t1, &t2);
                float q = (float)(-(double)rs * rs * rs * t2 / (double)w);
                float rr = a->centered ? (float)(-(double)rs * t1 / (double)w) : 0.0f;
                elem *restrict dxr = a->dx + i * w;
                if (gm) {
#pragma omp simd
                    for (i64 j = 0; j < w; j++) {
                        float d = (LD(xr, j) - s) - m, dyj = LD(dyr, j);
                        dxr[j] = CV(rs * (gm[j] * dyj) + q * d + rr);
                        fg[j] += dyj * (d * rs);
                        fb[j] += dyj;
                    }
                } else {
#pragma omp simd
                    for (i64 j = 0; j < w; j++) {
                        float d = (LD(xr, j) - s) - m, dyj = LD(dyr, j);
                        dxr[j] = CV(rs * dyj + q * d + rr);
                        fg[j] += dyj * (d * rs);
                        fb[j] += dyj;
                    }
                }
            } else {
#pragma omp simd
                for (i64 j = 0; j < w; j++) {
                    float dyj = LD(dyr, j);
                    fg[j] += dyj * (((LD(xr, j) - s) - m) * rs);
                    fb[j] += dyj;
                }
            }
        }
        for (i64 j = 0; j < width; j++) {
            pg[j] += sg[j];
            pb[j] += sb[j];
        }
    }
}

/* shift: the rows' shifts, or with head > 0 where the forward writes them. */
void NL_FN(nl_rows_forward)(const elem *x, float *shift, const float *gamma, const float *beta, elem *y,
                            float *mean, float *var, float *rstd, i64 r, i64 w, i64 g, i64 p, i64 centered,
                            i64 head, i64 chunks, double epsilon, i64 threads) {
    struct rows a = {.x = x, .shift = shift, .gamma = gamma, .beta = beta, .y = y, .mean = mean, .var = var,
                     .rstd = rstd, .shift_out = head > 0 ? shift : NULL, .r = r, .w = w, .g = g, .p = p,
                     .centered = centered, .chunks = chunks, .head = head, .epsilon = epsilon};
    parallel_for(rows_forward_task, &a, chunks, threads);
}

void NL_FN(nl_rows_backward)(const elem *dy, const elem *x, const float *shift, const float *mean,
                             const float *rstd, const float *gamma, elem *dx, float *dgamma, float *dbeta, i64 r,
                             i64 w, i64 g, i64 p, i64 centered, i64 chunks, double *part, float *scratch,
                             i64 threads) {
    struct rows a = {.x = x, .dy = dy, .shift = shift, .gamma = gamma, .dx = dx, .mean = (float *)mean,
                     .rstd = (float *)rstd, .r = r, .w = w, .g = g, .p = p, .centered = centered, .chunks = chunks,
                     .part = part, .scratch = scratch};
    parallel_for(rows_backward_task, &a, chunks, threads);
    parameter_sums(part, chunks, g * (w / p), dgamma, dbeta);
}

/* ------------------------------------------------------------------------ */
/* Planes: x (N, C, S), statistics per channel over the N samples and S
 * positions (batch norm of channels-first data): N runs of S values a
 * channel, each reduced as a row. A task per chunk of channels; a
 * channel's sums are complete within its task, so no partial sums are
 * combined across tasks and the result does not depend on the split. */

struct planes {
    const elem *x, *dy;
    const float *shift, *gamma, *beta; /* shift, gamma, beta: (C,) */
    elem *y, *dx;
    float *mean, *var, *rstd, *dgamma, *dbeta;
    i64 n, c, s, chunks;
    double epsilon;
};

static void planes_forward_task(const void *p, i64 task) {
    const struct planes *a = p;
    i64 n = a->n, c = a->c, s = a->s, c0 = c * task / a->chunks, c1 = c * (task + 1) / a->chunks;
    double count = (double)n * (double)s;
    for (i64 ch = c0; ch < c1; ch++) {
        float sh = a->shift[ch];
        double t1 = 0.0, t2 = 0.0;
        for (i64 i = 0; i < n; i++) {
            double r1, r2;
            row_moments(a->x + (i * c + ch) * s, sh, s, &r1, &r2);
            t1 += r1;
            t2 += r2;
        }
        store_stats(t1, t2, count, a->epsilon, a->mean, a->var, a->rstd, ch);
        float m = a->mean[ch], rsf = a->rstd[ch];
        for (i64 i = 0; i < n; i++) {
            i64 at = (i * c + ch) * s;
            apply_channels(a->x + at, a->y + at, sh, m, rsf, a->gamma ? a->gamma + ch : NULL,
                           a->beta ? a->beta + ch : NULL, 1, s);
        }
    }
}

static void planes_backward_task(const void *p, i64 task) {
    const struct planes *a = p;
    i64 n = a->n, c = a->c, s = a->s, c0 = c * task / a->chunks, c1 = c * (task + 1) / a->chunks;
    double count = (double)n * (double)s;
    for (i64 ch = c0; ch < c1; ch++) {
        float sh = a->shift[ch], m = a->mean[ch], rs = a->rstd[ch];
        double t1 = 0.0, t2 = 0.0; /* sum(dy), sum(dy * (x - shift - mean)) */
        for (i64 i = 0; i < n; i++) {
            i64 at = (i * c + ch) * s;
            double r1, r2;
            row_grad_sums(a->dy + at, a->x + at, NULL, sh, m, s, &r1, &r2);
            t1 += r1;
            t2 += r2;
        }
        if (a->dgamma) a->dgamma[ch] = (float)(t2 * rs);
        if (a->dbeta) a->dbeta[ch] = (float)t1;
        if (!a->dx) continue;
        double w = a->gamma ? a->gamma[ch] : 1.0;
        float pc = (float)(w * rs), q = (float)(-w * rs * rs * rs * t2 / count), rr = (float)(-w * rs * t1 / count);
        for (i64 i = 0; i < n; i++) {
            i64 at = (i * c + ch) * s;
            const elem *restrict xc = a->x + at, *restrict dyc = a->dy + at;
            elem *restrict dxc = a->dx + at;
#pragma omp simd
            for (i64 j = 0; j < s; j++) dxc[j] = CV(pc * LD(dyc, j) + q * ((LD(xc, j) - sh) - m) + rr);
        }
    }
}

void NL_FN(nl_planes_forward)(const elem *x, const float *shift, const float *gamma, const float *beta, elem *y,
                              float *mean, float *var, float *rstd, i64 n, i64 c, i64 s, i64 chunks, double epsilon,
                              i64 threads) {
    struct planes a = {.x = x, .shift = shift, .gamma = gamma, .beta = beta, .y = y, .mean = mean, .var = var,
                       .rstd = rstd, .n = n, .c = c, .s = s, .chunks = chunks, .epsilon = epsilon};
    parallel_for(planes_forward_task, &a, chunks, threads);
}

void NL_FN(nl_planes_backward)(const elem *dy, const elem *x, const float *shift, const float *mean,
                               const float *rstd, const float *gamma, elem *dx, float *dgamma, float *dbeta, i64 n,
                               i64 c, i64 s, i64 chunks, i64 threads) {
    struct planes a = {.x = x, .dy = dy, .shift = shift, .gamma = gamma, .dx = dx, .mean = (float *)mean,
                       .rstd = (float *)rstd, .dgamma = dgamma, .dbeta = dbeta, .n = n, .c = c, .s = s,
                       .chunks = chunks};
    parallel_for(planes_backward_task, &a, chunks, threads);
}
