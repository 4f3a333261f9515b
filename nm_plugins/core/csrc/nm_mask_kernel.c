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
 * Two codes for the mask, the same results: a portable one that ranks tiles of gathered groups, and, on
 * x86-64 CPUs with AVX2 (checked at run time), float weights with M = 4 or 8 ranked straight from the
 * weight, eight groups per register (kernels of 8+ positions; M = 4 also for 1x1 and Linear).
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
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define HAVE_AVX2_PATH 1
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

/* One thread's share of the items with the tiled code above; returns 1 when it met a NaN/inf weight. */
CLONES static int run_tiled(const job_t *job) {
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

#ifdef HAVE_AVX2_PATH
/* AVX2, float, M = 4 or 8, straight from the weight (no tile): eight lanes are eight groups; a lane's
 * rank is the number of group members that beat it, computed as in RANK_TILE (ties: lower t wins). The
 * masked value is w * 1.0f or w * 0.0f, as in the tiled code (same signed zeros). */
#define AVX2 __attribute__((target("avx2"), always_inline)) static inline

/* keep[t] (all-ones / zero lanes) for the magnitudes a[0..m); returns the lanes that are finite. */
AVX2 __m256 rank_lanes(const __m256 *v, __m256 *keep, int n, const int m) {
    const __m256 sign = _mm256_set1_ps(-0.0f), big = _mm256_set1_ps(FLT_MAX);
    __m256 a[8], finite = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
    __m256i rank[8];
    for (int t = 0; t < m; ++t) {
        a[t] = _mm256_andnot_ps(sign, v[t]);
        finite = _mm256_and_ps(finite, _mm256_cmp_ps(a[t], big, _CMP_LE_OQ));
        rank[t] = _mm256_set1_epi32(m - 1 - t); /* every later s beats t unless t >= s */
    }
    for (int t = 0; t < m; ++t)
        for (int s = t + 1; s < m; ++s) {
            const __m256i t_wins = _mm256_castps_si256(_mm256_cmp_ps(a[t], a[s], _CMP_GE_OQ)); /* -1 / 0 */
            rank[t] = _mm256_add_epi32(rank[t], t_wins);
            rank[s] = _mm256_sub_epi32(rank[s], t_wins);
        }
    const __m256i nv = _mm256_set1_epi32(n);
    for (int t = 0; t < m; ++t) keep[t] = _mm256_castsi256_ps(_mm256_cmpgt_epi32(nv, rank[t]));
    return finite;
}

/* Store eight lanes: flags as 0/1 bytes, masked values as w * keep. */
AVX2 void store_lanes(__m256 v, __m256 keep, uint8_t *dst, float *mdst) {
    const __m256i flags = _mm256_srli_epi32(_mm256_castps_si256(keep), 31); /* 1 / 0 per lane */
    const __m128i words = _mm_packs_epi32(_mm256_castsi256_si128(flags), _mm256_extracti128_si256(flags, 1));
    _mm_storel_epi64((__m128i *)dst, _mm_packus_epi16(words, words));
    if (mdst) _mm256_storeu_ps(mdst, _mm256_mul_ps(v, _mm256_and_ps(keep, _mm256_set1_ps(1.0f))));
}

/* Kernel positions [0, limit) of the block at `base` (channel t's row at t*K), eight at a time; when limit
 * is not a multiple of 8 a last, overlapping chunk ends at limit (writing the same values twice). */
AVX2 __m256 block_chunks(const job_t *job, int64_t base, int64_t limit, const int m) {
    const float *w = (const float *)job->w;
    float *masked = (float *)job->masked;
    const int64_t K = job->K;
    __m256 finite = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
    for (int64_t k = 0; k < limit; k += 8) {
        const int64_t at = base + (k + 8 <= limit ? k : limit - 8);
        __m256 v[8], keep[8];
        for (int t = 0; t < m; ++t) v[t] = _mm256_loadu_ps(w + at + t * K);
        finite = _mm256_and_ps(finite, rank_lanes(v, keep, job->n, m));
        for (int t = 0; t < m; ++t)
            store_lanes(v[t], keep[t], job->mask + at + t * K, masked ? masked + at + t * K : NULL);
    }
    return finite;
}

/* The last kernel position of the eight blocks from p: lane j is block p + j (gathered; written back one by one). */
AVX2 __m256 last_position_of_8_blocks(const job_t *job, int64_t p, const int m) {
    const int64_t K = job->K, stride = m * K, at = p * stride + K - 1;
    const __m256i lanes = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32((int)stride));
    __m256 v[8], keep[8];
    for (int t = 0; t < m; ++t) v[t] = _mm256_i32gather_ps((const float *)job->w + at + t * K, lanes, 4);
    const __m256 finite = rank_lanes(v, keep, job->n, m);
    float *masked = (float *)job->masked;
    for (int t = 0; t < m; ++t) {
        uint8_t flags[16];
        float values[8];
        store_lanes(v[t], keep[t], flags, values);
        for (int j = 0; j < 8; ++j) {
            job->mask[at + t * K + j * stride] = flags[j];
            if (masked) masked[at + t * K + j * stride] = values[j];
        }
    }
    return finite;
}

/* K >= 8: the lanes are eight consecutive kernel positions of one block. For K = 8i + 1 (3x3, 5x5, 7x7) the
 * last position is not redone as an overlapping chunk: it is ranked for eight blocks at once. */
AVX2 int blocks_k8(const job_t *job, const int m) {
    const int64_t K = job->K;
    __m256 finite = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
    int64_t p = job->first;
    if (K % 8 == 1 && 8 * m * K < INT32_MAX)
        for (; p + 8 <= job->last; p += 8) {
            for (int64_t q = p; q < p + 8; ++q) finite = _mm256_and_ps(finite, block_chunks(job, q * m * K, K - 1, m));
            finite = _mm256_and_ps(finite, last_position_of_8_blocks(job, p, m));
        }
    for (; p < job->last; ++p) finite = _mm256_and_ps(finite, block_chunks(job, p * m * K, K, m));
    return _mm256_movemask_ps(finite) != 0xFF;
}

/* Transpose the 4x4 blocks of four registers within each 128-bit half (its own inverse). */
AVX2 void transpose4(__m256 *r) {
    const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    r[0] = _mm256_shuffle_ps(t0, t2, 0x44);
    r[1] = _mm256_shuffle_ps(t0, t2, 0xEE);
    r[2] = _mm256_shuffle_ps(t1, t3, 0x44);
    r[3] = _mm256_shuffle_ps(t1, t3, 0xEE);
}

/* K == 1, M == 4: 32 contiguous weights are eight whole groups; transposed, lane j of register t is
 * member t of one of them. Returns the first block not done (the rest, fewer than 8, go to the tiled code). */
AVX2 int64_t blocks_k1_m4(const job_t *job, int *bad) {
    const float *w = (const float *)job->w;
    float *masked = (float *)job->masked;
    __m256 finite = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
    int64_t p = job->first;
    for (; p + 8 <= job->last; p += 8) {
        __m256 rows[4], v[4], keep[4];
        for (int i = 0; i < 4; ++i) rows[i] = v[i] = _mm256_loadu_ps(w + p * 4 + 8 * i);
        transpose4(v);
        finite = _mm256_and_ps(finite, rank_lanes(v, keep, job->n, 4));
        transpose4(keep);
        for (int i = 0; i < 4; ++i)
            store_lanes(rows[i], keep[i], job->mask + p * 4 + 8 * i, masked ? masked + p * 4 + 8 * i : NULL);
    }
    *bad = _mm256_movemask_ps(finite) != 0xFF;
    return p;
}

__attribute__((target("avx2"))) static int run_avx2(const job_t *job) {
    if (job->K == 1) {
        int bad;
        job_t rest = *job;
        rest.first = blocks_k1_m4(job, &bad);
        return bad | (rest.first < rest.last ? run_tiled(&rest) : 0);
    }
    return job->m == 4 ? blocks_k8(job, 4) : blocks_k8(job, 8);
}

static int use_avx2(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") != 0;
}

/* The AVX2 code covers float weights with M = 4 or 8 and kernels of 8+ positions, and M = 4 at K = 1. */
static int avx2_covers(const job_t *job) {
    return (job->m == 4 && job->K == 1) || ((job->m == 4 || job->m == 8) && job->K >= 8);
}
#endif

/* One thread's share of the items; returns 1 when it met a NaN/inf weight. */
static int run(const job_t *job, int avx2) {
#ifdef HAVE_AVX2_PATH
    if (avx2 && avx2_covers(job)) return run_avx2(job);
#endif
    (void)avx2;
    return run_tiled(job);
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
    int avx2 = 0;
#ifdef HAVE_AVX2_PATH
    avx2 = use_avx2();
#endif
    int bad = 0;
#pragma omp parallel num_threads(threads) reduction(| : bad)
    {
        int tid = 0, nt = 1;
#ifdef _OPENMP
        tid = omp_get_thread_num();
        nt = omp_get_num_threads();
#endif
        const job_t job = {w, mask, masked, K, items * tid / nt, items * (tid + 1) / nt, n, m};
        bad |= is_double ? run_double(&job) : run(&job, avx2);
    }
    return bad;
}

/* One thread's range [lo, hi) of the gradient pass (vectorised with AVX2 where the CPU has it). */
#define GRAD_RANGE(NAME, T)                                                           \
    CLONES static void NAME(T *restrict g, const T *restrict x, const uint8_t *restrict keep, \
                            int64_t lo, int64_t hi, T lam, int mode) {                 \
        if (mode == 0)                                                                \
            for (int64_t i = lo; i < hi; ++i) g[i] = g[i] + lam * x[i] * (T)(1 - keep[i]); \
        else                                                                          \
            for (int64_t i = lo; i < hi; ++i) g[i] = g[i] * (T)keep[i];               \
    }
GRAD_RANGE(grad_range_float, float)
GRAD_RANGE(grad_range_double, double)

/* mode 0 (SR-STE): grad += decay * w * (1 - keep); mode 1 (fixed mask): grad *= keep. In place. */
int nm_grad_kernel(void *grad, const void *w, const uint8_t *keep, int64_t numel, double decay, int mode,
                   int is_double, int threads) {
    if (mode != 0 && mode != 1) return -1;
    threads = clamp_threads(threads, numel, MIN_ELEMS_PER_THREAD);
#pragma omp parallel num_threads(threads)
    {
        int tid = 0, nt = 1;
#ifdef _OPENMP
        tid = omp_get_thread_num();
        nt = omp_get_num_threads();
#endif
        const int64_t lo = numel * tid / nt, hi = numel * (tid + 1) / nt;
        if (is_double)
            grad_range_double((double *)grad, (const double *)w, keep, lo, hi, decay, mode);
        else
            grad_range_float((float *)grad, (const float *)w, keep, lo, hi, (float)decay, mode);
    }
    return 0;
}

