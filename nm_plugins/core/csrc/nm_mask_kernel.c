/* N:M magnitude mask in one pass over a weight [O, C, K] (K = product of kernel dims, 1 for Linear).
 * Groups are M consecutive input channels at fixed (o, k); in each group the N largest |w| are kept,
 * ties keeping the lower channel. Output: one byte per weight, in the weight's own layout.
 * Plain C with pthreads, loaded through ctypes (no Python or torch headers). Returns 1 when a weight is
 * NaN/inf (the mask is then not to be used), else 0. */
#include <float.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>

#define MAX_M 64

typedef struct {
    const void *w;
    uint8_t *out;
    int64_t C, K, first, last; /* work items are (o, channel group) pairs [first, last) */
    int n, m, is_double, nonfinite;
} job_t;

/* Work item p = (output o, channel group g); a group is the M weights at base(p) + t*K + k, t < M, for each
 * kernel position k < K. A tile of up to TILE groups is gathered into per-channel columns, so that the rank
 * loops (how many weights of its group beat each weight) run over contiguous memory and vectorise; then
 * the keep flags are scattered back to the weight's layout. Local restrict pointers: byte stores would
 * otherwise force reloads. */
#define TILE 64
/* Ranks of a gathered tile: keep[t][j] = fewer than N weights of group j beat channel t (ties: lower t wins). */
#define RANK_TILE()                                                                   \
    for (int t = 0; t < m; ++t) {                                                     \
        uint8_t rank[TILE] = {0};                                                     \
        for (int s = 0; s < t; ++s)                                                   \
            for (int j = 0; j < TILE; ++j) rank[j] += col[s][j] >= col[t][j];         \
        for (int s = t + 1; s < m; ++s)                                               \
            for (int j = 0; j < TILE; ++j) rank[j] += col[s][j] > col[t][j];          \
        for (int j = 0; j < TILE; ++j) keep[t][j] = rank[j] < n;                      \
    }

/* Linear and 1x1 convs (K == 1): group p is simply the M contiguous weights at p*M. */
#define BODY_K1(T, ABS, MAXV)                                                         \
    const T *restrict w = (const T *)job->w;                                          \
    uint8_t *restrict out = job->out;                                                 \
    T col[MAX_M][TILE];                                                               \
    uint8_t keep[MAX_M][TILE];                                                        \
    for (int64_t p0 = job->first; p0 < job->last; p0 += TILE) {                       \
        const int cnt = (int)((job->last - p0) < TILE ? (job->last - p0) : TILE);     \
        const T *restrict src = w + p0 * m;                                           \
        int finite = 1;                                                               \
        for (int j = 0; j < cnt; ++j)                                                 \
            for (int t = 0; t < m; ++t) col[t][j] = ABS(src[j * m + t]);              \
        for (int t = 0; t < m; ++t)                                                   \
            for (int j = 0; j < cnt; ++j) finite &= col[t][j] <= MAXV;                \
        if (!finite) { job->nonfinite = 1; return NULL; }                             \
        RANK_TILE()                                                                   \
        uint8_t *restrict dst = out + p0 * m;                                         \
        for (int j = 0; j < cnt; ++j)                                                 \
            for (int t = 0; t < m; ++t) dst[j * m + t] = keep[t][j];                  \
    }

#define BODY(T, ABS, MAXV)                                                            \
    const T *restrict w = (const T *)job->w;                                          \
    uint8_t *restrict out = job->out;                                                 \
    T col[MAX_M][TILE];                                                               \
    uint8_t keep[MAX_M][TILE];                                                        \
    int64_t base[TILE];                                                               \
    int64_t p = job->first, k = 0, block = 0;                                         \
    while (p < job->last) {                                                           \
        int cnt = 0;                                                                  \
        for (; cnt < TILE && p < job->last; ++cnt) {                                  \
            if (k == 0) block = (p / groups_per_row) * C * K + (p % groups_per_row) * m * K; \
            base[cnt] = block + k;                                                    \
            if (++k == K) { k = 0; ++p; }                                             \
        }                                                                             \
        int finite = 1;                                                               \
        for (int j = 0; j < cnt; ++j)                                                 \
            for (int t = 0; t < m; ++t) col[t][j] = ABS(w[base[j] + t * K]);          \
        for (int t = 0; t < m; ++t)                                                   \
            for (int j = 0; j < cnt; ++j) finite &= col[t][j] <= MAXV;                \
        if (!finite) { job->nonfinite = 1; return NULL; }                             \
        RANK_TILE()                                                                   \
        for (int j = 0; j < cnt; ++j)                                                 \
            for (int t = 0; t < m; ++t) out[base[j] + t * K] = keep[t][j];            \
    }

static void *run(void *arg) {
    job_t *job = (job_t *)arg;
    const int m = job->m, n = job->n;
    const int64_t C = job->C, K = job->K, groups_per_row = C / m;
    if (job->is_double) {
        if (K == 1) { BODY_K1(double, fabs, DBL_MAX) } else { BODY(double, fabs, DBL_MAX) }
    } else if (m == 4) {
        const int m = 4; /* a constant M lets the compiler unroll the rank loops */
        if (K == 1) { BODY_K1(float, fabsf, FLT_MAX) } else { BODY(float, fabsf, FLT_MAX) }
    } else if (m == 8) {
        const int m = 8;
        if (K == 1) { BODY_K1(float, fabsf, FLT_MAX) } else { BODY(float, fabsf, FLT_MAX) }
    } else {
        if (K == 1) { BODY_K1(float, fabsf, FLT_MAX) } else { BODY(float, fabsf, FLT_MAX) }
    }
    return NULL;
}

int nm_mask_kernel(const void *w, uint8_t *out, int64_t O, int64_t C, int64_t K, int n, int m,
                   int is_double, int threads) {
    if (m < 1 || m > MAX_M || C % m != 0) return -1;
    int64_t items = O * (C / m);
    if (threads < 1) threads = 1;
    if (threads > 64) threads = 64;
    if (items < 4096 * threads) threads = 1;
    job_t jobs[64];
    pthread_t tids[64];
    for (int i = 0; i < threads; ++i) {
        jobs[i] = (job_t){w, out, C, K, items * i / threads, items * (i + 1) / threads, n, m, is_double, 0};
    }
    for (int i = 1; i < threads; ++i) pthread_create(&tids[i], NULL, run, &jobs[i]);
    run(&jobs[0]);
    int bad = jobs[0].nonfinite;
    for (int i = 1; i < threads; ++i) {
        pthread_join(tids[i], NULL);
        bad |= jobs[i].nonfinite;
    }
    return bad;
}
