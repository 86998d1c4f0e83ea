/*
 * Roofline probes: read bandwidth and compute peak, timed from Python.
 * Part of the single translation unit qlab_cpu.c (included there, in order); not a standalone header.
 */
/* ------------------------------------------------------------------ roofline probes (timed from Python) */

/* Read bandwidth: sum of the 64-bit words of buf, four independent accumulators (vectorised by the compiler). */
#ifdef QLAB_X86
QLAB_AVX2 static uint64_t read_sum_avx2(const uint8_t *p, int64_t n) {
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = 0;
    for (; i + 128 <= n; i += 128) {
        a0 = _mm256_add_epi64(a0, _mm256_loadu_si256((const __m256i *)(p + i)));
        a1 = _mm256_add_epi64(a1, _mm256_loadu_si256((const __m256i *)(p + i + 32)));
        a2 = _mm256_add_epi64(a2, _mm256_loadu_si256((const __m256i *)(p + i + 64)));
        a3 = _mm256_add_epi64(a3, _mm256_loadu_si256((const __m256i *)(p + i + 96)));
    }
    uint64_t o[4];
    _mm256_storeu_si256((__m256i *)o, _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3)));
    uint64_t s = o[0] + o[1] + o[2] + o[3];
    for (; i < n; i++) s += p[i];
    return s;
}
#endif

uint64_t qlab_read_sum(const void *buf, int64_t nbytes) {
    const uint8_t *p = (const uint8_t *)buf;
#ifdef QLAB_X86
    if (qlab_cpu_features() & (1 << P_AVX2)) return read_sum_avx2(p, nbytes);
#endif
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0, w[4];
    int64_t i = 0;
    for (; i + 32 <= nbytes; i += 32) {
        memcpy(w, p + i, 32);
        s0 += w[0];
        s1 += w[1];
        s2 += w[2];
        s3 += w[3];
    }
    for (; i < nbytes; i++) s0 += p[i];
    return s0 + s1 + s2 + s3;
}

/* Compute peak: `iters` rounds of 8 independent 256-bit operations. kind 0: fp32 FMA (16 flop per op),
 * kind 1: int8 maddubs + madd (64 int ops per pair), kind 2: VNNI dpbusd (64 int ops per op). Returns a value
 * that depends on every result (so nothing is optimised away), or -1 if the CPU lacks the instructions. */
#ifdef QLAB_X86
QLAB_AVX2 static double peak_fma(int64_t iters) {
    __m256 a[8], m = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
    for (int k = 0; k < 8; k++) a[k] = _mm256_set1_ps((float)k);
    for (int64_t i = 0; i < iters; i++)
#pragma GCC unroll 8
        for (int k = 0; k < 8; k++) a[k] = _mm256_fmadd_ps(a[k], m, c);
    float o[8];
    __m256 s = a[0];
    for (int k = 1; k < 8; k++) s = _mm256_add_ps(s, a[k]);
    _mm256_storeu_ps(o, s);
    return o[0];
}

QLAB_AVX2 static double peak_maddubs(int64_t iters) {
    __m256i a[8], x = _mm256_set1_epi8(3), y = _mm256_set1_epi8(-2), ones = _mm256_set1_epi16(1);
    for (int k = 0; k < 8; k++) a[k] = _mm256_set1_epi32(k);
    for (int64_t i = 0; i < iters; i++)
#pragma GCC unroll 8
        for (int k = 0; k < 8; k++) a[k] = _mm256_add_epi32(a[k], _mm256_madd_epi16(_mm256_maddubs_epi16(x, y), ones));
    __m256i s = a[0];
    for (int k = 1; k < 8; k++) s = _mm256_add_epi32(s, a[k]);
    return (double)_mm256_extract_epi32(s, 0);
}

QLAB_AVX512 static double peak_vnni(int64_t iters) {
    __m256i a[8], x = _mm256_set1_epi8(3), y = _mm256_set1_epi8(-2);
    for (int k = 0; k < 8; k++) a[k] = _mm256_set1_epi32(k);
    for (int64_t i = 0; i < iters; i++)
#pragma GCC unroll 8
        for (int k = 0; k < 8; k++) a[k] = _mm256_dpbusd_epi32(a[k], x, y);
    __m256i s = a[0];
    for (int k = 1; k < 8; k++) s = _mm256_add_epi32(s, a[k]);
    return (double)_mm256_extract_epi32(s, 0);
}
#endif

double qlab_peak_probe(int kind, int64_t iters) {
    const int f = qlab_cpu_features();
#ifdef QLAB_X86
    if (kind == 0 && (f & (1 << P_AVX2))) return peak_fma(iters);
    if (kind == 1 && (f & (1 << P_AVX2))) return peak_maddubs(iters);
    if (kind == 2 && (f & (1 << P_AVX512))) return peak_vnni(iters);
#endif
    (void)f;
    (void)iters;
    (void)kind;
    return -1.0;
}
