/* N:M magnitude mask in one pass over a weight [O, C, K] (K = product of kernel dims, 1 for Linear).
 * Groups are M consecutive input channels at fixed (o, k); in each group the N largest |w| are kept,
 * ties keeping the lower channel. Output: one byte per weight, in the weight's own layout.
 * Plain C with pthreads, loaded through ctypes (no Python or torch headers). Returns 1 when a weight is
 * NaN/inf (the mask is then not to be used), else 0. */
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

/* Local restrict pointers: byte stores through job->out would otherwise force reloads of everything. */
#define BODY(T, ABS)                                                                  \
    const T *restrict w = (const T *)job->w;                                          \
    uint8_t *restrict out = job->out;                                                 \
    for (int64_t p = job->first; p < job->last; ++p) {                                \
        const int64_t o = p / groups_per_row, g = p % groups_per_row;                 \
        const int64_t base = o * C * K + g * m * K;                                   \
        for (int64_t k = 0; k < K; ++k) {                                             \
            T v[MAX_M];                                                               \
            int finite = 1;                                                           \
            for (int t = 0; t < m; ++t) {                                             \
                v[t] = ABS(w[base + t * K + k]);                                      \
                finite &= isfinite(v[t]) != 0;                                        \
            }                                                                         \
            if (!finite) { job->nonfinite = 1; return NULL; }                         \
            for (int t = 0; t < m; ++t) {                                             \
                int rank = 0;                                                         \
                for (int s = 0; s < t; ++s) rank += v[s] >= v[t];                     \
                for (int s = t + 1; s < m; ++s) rank += v[s] > v[t];                  \
                out[base + t * K + k] = (uint8_t)(rank < n);                          \
            }                                                                         \
        }                                                                             \
    }

static void *run(void *arg) {
    job_t *job = (job_t *)arg;
    const int m = job->m, n = job->n;
    const int64_t C = job->C, K = job->K, groups_per_row = C / m;
    if (job->is_double) {
        BODY(double, fabs)
    } else if (m == 4) {
        const int m = 4; /* a constant M lets the compiler unroll the rank loops */
        BODY(float, fabsf)
    } else if (m == 8) {
        const int m = 8;
        BODY(float, fabsf)
    } else {
        BODY(float, fabsf)
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
