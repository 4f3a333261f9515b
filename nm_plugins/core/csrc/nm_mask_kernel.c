/* N:M magnitude masks and the SR-STE gradient pass, for weights [O, C, K] (K = product of the kernel
 * dims, 1 for Linear) in the standard contiguous layout.
 *
 * nm_mask_kernel: groups are M consecutive input channels at fixed (o, k); in each group the N largest
 * |w| are kept, ties keeping the lower channel. Writes one byte per weight and, when `masked` is not
 * NULL, the masked weight w * keep, both in the weight's own layout; one pass over the weight.
 * nm_grad_kernel: in place on a gradient of the same layout, the straight-through gradient's extras:
 * SR-STE decay g + decay * w * (1 - keep), or the fixed-mask gradient g * keep; the same arithmetic, in
 * the same order, as torch.addcmul / torch.mul (built with -ffp-contract=off, so bit-identical).
 *
 * Plain C, loaded through ctypes (no Python or torch headers). Threads come from OpenMP: linked against
 * libgomp.so.1, which torch has already loaded, so the kernels run on torch's own thread team instead of
 * competing with its spinning workers. Built without OpenMP they run on one thread. */
#include <float.h>
#include <math.h>
#include <stdint.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define MAX_M 64
#define TILE 128     /* groups ranked together; the rank loops vectorise over a tile */
#define MIN_ITEMS_PER_THREAD 4096
#define MIN_ELEMS_PER_THREAD 65536

typedef struct {
    const void *w;
    uint8_t *mask;
    void *masked;
    int64_t K, first, last; /* work items are blocks p = (o, channel group) [first, last) */
    int n, m;
} job_t;

/* Ranks of a gathered tile: keep[t][j] = fewer than N weights of group j beat channel t (ties: lower t wins). */
#define RANK_TILE()                                                                   \
    {                                                                                 \
        int32_t rank[MAX_M][TILE];                                                    \
        for (int t = 0; t < m; ++t)                                                   \
            for (int j = 0; j < TILE; ++j) rank[t][j] = 0;                            \
        for (int t = 0; t < m; ++t)                                                   \
            for (int s = t + 1; s < m; ++s)                                           \
                for (int j = 0; j < TILE; ++j) {                                      \
                    const int32_t t_wins = col[t][j] >= col[s][j];                    \
                    rank[s][j] += t_wins;                                             \
                    rank[t][j] += 1 - t_wins;                                         \
                }                                                                     \
        for (int t = 0; t < m; ++t)                                                   \
            for (int j = 0; j < TILE; ++j) keep[t][j] = rank[t][j] < n;               \
    }

#define CHECK_FINITE(MAXV, CNT)                                                       \
    {                                                                                 \
        int finite = 1;                                                               \
        for (int t = 0; t < m; ++t)                                                   \
            for (int j = 0; j < (CNT); ++j) finite &= col[t][j] <= MAXV;              \
        if (!finite) return 1;                                                        \
    }

/* K > TILE (large kernels): group (p, k) is the M weights at p*M*K + t*K + k. A tile is filled with
 * runs of consecutive kernel positions k of one block, so each channel's values are copied from
 * contiguous memory; runs are remembered to write the flags back. */
#define BODY(T, ABS, MAXV)                                                            \
    const T *restrict w = (const T *)job->w;                                          \
    uint8_t *restrict mask = job->mask;                                               \
    T *restrict masked = (T *)job->masked;                                            \
    T col[MAX_M][TILE];                                                               \
    uint8_t keep[MAX_M][TILE];                                                        \
    int64_t run_base[TILE];                                                           \
    int run_at[TILE + 1];                                                             \
    int64_t p = job->first, k = 0;                                                    \
    while (p < job->last) {                                                           \
        int cnt = 0, runs = 0;                                                        \
        while (cnt < TILE && p < job->last) {                                         \
            const int64_t left = K - k;                                               \
            const int len = (int)(left < TILE - cnt ? left : TILE - cnt);             \
            const int64_t base = p * m * K + k;                                       \
            const T *restrict src = w + base;                                         \
            for (int t = 0; t < m; ++t)                                               \
                for (int r = 0; r < len; ++r) col[t][cnt + r] = ABS(src[t * K + r]);  \
            run_base[runs] = base;                                                    \
            run_at[runs++] = cnt;                                                     \
            cnt += len;                                                               \
            k += len;                                                                 \
            if (k == K) { k = 0; ++p; }                                               \
        }                                                                             \
        run_at[runs] = cnt;                                                           \
        CHECK_FINITE(MAXV, cnt)                                                       \
        RANK_TILE()                                                                   \
        for (int q = 0; q < runs; ++q) {                                              \
            const int at = run_at[q], len = run_at[q + 1] - at;                       \
            uint8_t *restrict dst = mask + run_base[q];                               \
            for (int t = 0; t < m; ++t)                                               \
                for (int r = 0; r < len; ++r) dst[t * K + r] = keep[t][at + r];       \
            if (masked) {                                                             \
                const T *restrict src = w + run_base[q];                              \
                T *restrict mdst = masked + run_base[q];                              \
                for (int t = 0; t < m; ++t)                                           \
                    for (int r = 0; r < len; ++r)                                     \
                        mdst[t * K + r] = src[t * K + r] * (T)keep[t][at + r];        \
            }                                                                         \
        }                                                                             \
    }                                                                                 \
    return 0;

/* K <= TILE: the weight is a sequence of blocks of M*K contiguous values, block p = (o, channel group)
 * holding channel t's K kernel positions at t*K. A tile of whole blocks is split into per-channel
 * columns (runs of K contiguous values), ranked, and the flags and masked values written back into the
 * same contiguous range. */
#define BODY_WHOLE(T, ABS, MAXV)                                                      \
    const T *restrict w = (const T *)job->w;                                          \
    T col[MAX_M][TILE], val[MAX_M][TILE];                                             \
    uint8_t keep[MAX_M][TILE];                                                        \
    const int per_tile = (int)(TILE / K);                                             \
    for (int64_t p0 = job->first; p0 < job->last; p0 += per_tile) {                   \
        const int blocks = (int)(job->last - p0 < per_tile ? job->last - p0 : per_tile); \
        const int cnt = blocks * (int)K;                                              \
        const T *restrict src = w + p0 * m * K;                                       \
        for (int b = 0; b < blocks; ++b)                                              \
            for (int t = 0; t < m; ++t)                                               \
                for (int r = 0; r < K; ++r) val[t][b * K + r] = src[(b * m + t) * K + r]; \
        for (int t = 0; t < m; ++t)                                                   \
            for (int j = 0; j < TILE; ++j) col[t][j] = ABS(val[t][j]);                \
        CHECK_FINITE(MAXV, cnt)                                                       \
        RANK_TILE()                                                                   \
        uint8_t *restrict dst = job->mask + p0 * m * K;                               \
        for (int b = 0; b < blocks; ++b)                                              \
            for (int t = 0; t < m; ++t)                                               \
                for (int r = 0; r < K; ++r) dst[(b * m + t) * K + r] = keep[t][b * K + r]; \
        if (job->masked) {                                                            \
            T *restrict mdst = (T *)job->masked + p0 * m * K;                         \
            for (int t = 0; t < m; ++t)                                               \
                for (int j = 0; j < TILE; ++j) val[t][j] *= (T)keep[t][j];            \
            for (int b = 0; b < blocks; ++b)                                          \
                for (int t = 0; t < m; ++t)                                           \
                    for (int r = 0; r < K; ++r) mdst[(b * m + t) * K + r] = val[t][b * K + r]; \
        }                                                                             \
    }                                                                                 \
    return 0;

/* Dispatch on K: a constant K (Linear and 1x1, 3x3 kernels) lets the compiler unroll the copy loops. */
#define DISPATCH_K(T, ABS, MAXV)                                                      \
    if (K == 1) { const int64_t K = 1; BODY_WHOLE(T, ABS, MAXV) }                     \
    else if (K == 9) { const int64_t K = 9; BODY_WHOLE(T, ABS, MAXV) }                \
    else if (K <= TILE) { BODY_WHOLE(T, ABS, MAXV) }                                  \
    else { BODY(T, ABS, MAXV) }

#if defined(__x86_64__) && defined(__GNUC__)
#define CLONES __attribute__((target_clones("avx2", "default"))) /* AVX2 where the CPU has it */
#else
#define CLONES
#endif

/* One thread's share of the items; returns 1 when it met a NaN/inf weight. */
CLONES static int run(const job_t *job) {
    const int n = job->n;
    const int64_t K = job->K;
    if (job->m == 4) {
        const int m = 4; /* a constant M lets the compiler unroll the rank loops */
        DISPATCH_K(float, fabsf, FLT_MAX)
    } else if (job->m == 8) {
        const int m = 8;
        DISPATCH_K(float, fabsf, FLT_MAX)
    } else {
        const int m = job->m;
        DISPATCH_K(float, fabsf, FLT_MAX)
    }
}

static int run_double(const job_t *job) {
    const int n = job->n, m = job->m;
    const int64_t K = job->K;
    DISPATCH_K(double, fabs, DBL_MAX)
}

static int clamp_threads(int threads, int64_t work, int64_t per_thread) {
    if (threads < 1) threads = 1;
    if (work < per_thread * threads) threads = (int)(work / per_thread) > 1 ? (int)(work / per_thread) : 1;
    return threads;
}

/* Returns 0, 1 when a weight is NaN/inf (the outputs are then not to be used), -1 on bad arguments. */
int nm_mask_kernel(const void *w, uint8_t *mask, void *masked, int64_t O, int64_t C, int64_t K, int n, int m,
                   int is_double, int threads) {
    if (m < 1 || m > MAX_M || n < 0 || n > m || C % m != 0) return -1;
    const int64_t items = O * (C / m);
    threads = clamp_threads(threads, items, MIN_ITEMS_PER_THREAD);
    int bad = 0;
#pragma omp parallel num_threads(threads) reduction(| : bad)
    {
        int tid = 0, nt = 1;
#ifdef _OPENMP
        tid = omp_get_thread_num();
        nt = omp_get_num_threads();
#endif
        const job_t job = {w, mask, masked, K, items * tid / nt, items * (tid + 1) / nt, n, m};
        bad |= is_double ? run_double(&job) : run(&job);
    }
    return bad;
}

#define GRAD_LOOP(T)                                                                  \
    {                                                                                 \
        T *restrict g = (T *)grad;                                                    \
        const T *restrict x = (const T *)w;                                           \
        const T lam = (T)decay;                                                       \
        if (mode == 0) {                                                              \
            _Pragma("omp parallel for simd num_threads(threads) schedule(static)")    \
            for (int64_t i = 0; i < numel; ++i) g[i] = g[i] + lam * x[i] * (T)(1 - keep[i]); \
        } else {                                                                      \
            _Pragma("omp parallel for simd num_threads(threads) schedule(static)")    \
            for (int64_t i = 0; i < numel; ++i) g[i] = g[i] * (T)keep[i];             \
        }                                                                             \
    }

/* mode 0 (SR-STE): grad += decay * w * (1 - keep); mode 1 (fixed mask): grad *= keep. In place. */
int nm_grad_kernel(void *grad, const void *w, const uint8_t *keep, int64_t numel, double decay, int mode,
                   int is_double, int threads) {
    if (mode != 0 && mode != 1) return -1;
    threads = clamp_threads(threads, numel, MIN_ELEMS_PER_THREAD);
    if (is_double) GRAD_LOOP(double) else GRAD_LOOP(float)
    return 0;
}

