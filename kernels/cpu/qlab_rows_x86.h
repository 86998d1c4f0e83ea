/*
 * Multi-row x86 kernels, included twice: by qlab_dot_avx2.h for AVX2 (QR_VNNI 0) and by qlab_dot_avx512.h for AVX-512
 * (QR_VNNI 1: VNNI dpbusd on 256-bit EVEX registers). R rows (4 or 1) are processed together so that R
 * independent fma chains hide the latency of each row's strictly ordered float accumulation; the integer
 * lanes and the float order of every row are those of the scalar path.
 * Needs: QR(name) (suffix), QR_ATTR (target attribute), QR_VNNI (0/1).
 * Q4_0/Q8_0 prefetch the weight rows QR_PREFETCH bytes ahead: with 4 interleaved row streams the hardware
 * prefetcher alone can leave 5-25% of the speed unused on large matrices (4096 x 4096, 4096 x 11008), most when
 * other work competes for memory bandwidth (benchmarks/cpu_kernels.py measures it).
 */
#ifndef QR_PREFETCH
#define QR_PREFETCH 512
#endif

/* Q4_0: (q - 8) * y = q * y - 8 * y; the negated 8 * lane sums of y (prepared once per activation row) start
 * the integer accumulation. d_w * d_x: fp16 table load broadcast from memory (no vector ALU slot) times d_x. */
QR_ATTR static inline __attribute__((always_inline)) void QR(q4_0_rows)(const uint8_t *x0, int64_t rb,
                                                                        const prep8 *p, int64_t nb, int R, float *out) {
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    const __m256i m4 = _mm256_set1_epi8(0xF);
#if !QR_VNNI
    const __m256i ones = _mm256_set1_epi16(1);
#endif
    for (int64_t b = 0; b < nb; b++) {
        const __m256i qy = _mm256_loadu_si256((const __m256i *)(p->qs + 32 * b));
        const __m256i nls = _mm256_loadu_si256((const __m256i *)(p->nlsum + 8 * b));
        const __m256 dy = _mm256_broadcast_ss(&p->d[b]);
        if ((b & 3) == 0) /* one cache line per row every 4 blocks (72 bytes), QR_PREFETCH bytes ahead */
            for (int r = 0; r < R; r++) _mm_prefetch((const char *)(x0 + r * rb + 18 * b + QR_PREFETCH), _MM_HINT_T0);
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            const bq4_0 *x = (const bq4_0 *)(x0 + r * rb) + b;
            const __m128i t = _mm_loadu_si128((const __m128i *)x->qs);
            const __m256i qx = _mm256_and_si256(_mm256_inserti128_si256(_mm256_castsi128_si256(t), _mm_srli_epi16(t, 4), 1), m4);
#if QR_VNNI
            const __m256i s = _mm256_dpbusd_epi32(nls, qx, qy);
#else
            const __m256i s = _mm256_add_epi32(_mm256_madd_epi16(_mm256_maddubs_epi16(qx, qy), ones), nls);
#endif
            const __m256 d = _mm256_mul_ps(_mm256_broadcast_ss(&f16tab[x->d]), dy);
            acc[r] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(s), acc[r]);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; r++) out[r] = hsum_ps8(acc[r]);
}

/* Q8_0. VNNI: (x + 128) as u8 times y, plus the negated 128 * lane sums of y. AVX2: |x| * sign(y, x) by
 * maddubs (|x|, |y| <= 127: no int16 saturation). */
QR_ATTR static inline __attribute__((always_inline)) void QR(q8_0_rows)(const uint8_t *x0, int64_t rb,
                                                                        const prep8 *p, int64_t nb, int R, float *out) {
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
#if QR_VNNI
    const __m256i flip = _mm256_set1_epi8((char)0x80);
#else
    const __m256i ones = _mm256_set1_epi16(1);
#endif
    for (int64_t b = 0; b < nb; b++) {
        const __m256i qy = _mm256_loadu_si256((const __m256i *)(p->qs + 32 * b));
#if QR_VNNI
        const __m256i nls = _mm256_loadu_si256((const __m256i *)(p->nlsum + 8 * b));
#endif
        if ((b & 1) == 0) /* one cache line per row every 2 blocks (68 bytes) */
            for (int r = 0; r < R; r++) _mm_prefetch((const char *)(x0 + r * rb + 34 * b + QR_PREFETCH), _MM_HINT_T0);
        const __m256 dy = _mm256_broadcast_ss(&p->d[b]);
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            const bq8_0 *x = (const bq8_0 *)(x0 + r * rb) + b;
            const __m256i qx = _mm256_loadu_si256((const __m256i *)x->qs);
#if QR_VNNI
            const __m256i s = _mm256_dpbusd_epi32(nls, _mm256_xor_si256(qx, flip), qy);
#else
            const __m256i s = _mm256_madd_epi16(
                _mm256_maddubs_epi16(_mm256_sign_epi8(qx, qx), _mm256_sign_epi8(qy, qx)), ones);
#endif
            const __m256 d = _mm256_mul_ps(_mm256_broadcast_ss(&f16tab[x->d]), dy);
            acc[r] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(s), acc[r]);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; r++) out[r] = hsum_ps8(acc[r]);
}

/* Q4_K: per 64-weight chunk, low nibbles x scale 2j and high nibbles x scale 2j+1 by maddubs + madd; mins
 * against the pairwise sums of the Q8_K block sums, in four float lanes. (The AVX-512 path normally runs
 * q4_K_rows4_avx512v of qlab_dot_avx512.h instead: 512-bit, four rows' scales unpacked together, VNNI dpwssd.) */
QR_ATTR static inline __attribute__((always_inline)) void QR(q4_K_rows)(const uint8_t *x0, int64_t rb,
                                                                        const bq8_K *y, int64_t nb, int R, float *out) {
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    __m128 accm[4] = {_mm_setzero_ps(), _mm_setzero_ps(), _mm_setzero_ps(), _mm_setzero_ps()};
    const __m256i m4 = _mm256_set1_epi8(0xF);
    __m256i sh[8]; /* byte shuffles putting int16 scale k of an 8 x int16 vector into every int16 lane */
    for (int k = 0; k < 8; k++) sh[k] = _mm256_set1_epi16((short)(((2 * k + 1) << 8) | (2 * k)));
    for (int64_t i = 0; i < nb; i++) {
        const __m256i bs = _mm256_loadu_si256((const __m256i *)y[i].bsums);
        const __m128i q8s = _mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1));
        const __m256 vyd = _mm256_broadcast_ss(&y[i].d);
        const float nyd = -y[i].d;
        const __m128 vnyd = _mm_broadcast_ss(&nyd);
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            const bq4_K *x = (const bq4_K *)(x0 + r * rb) + i;
            const __m128i scm = q4k_unpack_simd(x->scales);
            const __m128i prod = _mm_madd_epi16(_mm_cvtepu8_epi16(_mm_unpackhi_epi64(scm, scm)), q8s);
            const __m128 dmin = _mm_mul_ps(vnyd, _mm_broadcast_ss(&f16tab[x->dmin]));
            accm[r] = _mm_fmadd_ps(dmin, _mm_cvtepi32_ps(prod), accm[r]);
            const __m256i sc16 = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(scm));
            __m256i sumi = _mm256_setzero_si256();
#pragma GCC unroll 4
            for (int j = 0; j < 4; j++) {
                const __m256i bits = _mm256_loadu_si256((const __m256i *)(x->qs + 32 * j));
                const __m256i lo = _mm256_and_si256(bits, m4), hi = _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4);
                const __m256i yl = _mm256_loadu_si256((const __m256i *)(y[i].qs + 64 * j));
                const __m256i yh = _mm256_loadu_si256((const __m256i *)(y[i].qs + 64 * j + 32));
                const __m256i pl = _mm256_madd_epi16(_mm256_shuffle_epi8(sc16, sh[2 * j]), _mm256_maddubs_epi16(lo, yl));
                const __m256i ph = _mm256_madd_epi16(_mm256_shuffle_epi8(sc16, sh[2 * j + 1]), _mm256_maddubs_epi16(hi, yh));
                sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(pl, ph));
            }
            const __m256 d = _mm256_mul_ps(vyd, _mm256_broadcast_ss(&f16tab[x->d]));
            acc[r] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi), acc[r]);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; r++) out[r] = q4k_finish(acc[r], accm[r]);
}

QR_ATTR static void QR(q4_0_rows4)(const uint8_t *x, int64_t rb, const prep8 *p, int64_t nb, float *o) {
    QR(q4_0_rows)(x, rb, p, nb, 4, o);
}
QR_ATTR static void QR(q4_0_rows1)(const uint8_t *x, int64_t rb, const prep8 *p, int64_t nb, float *o) {
    QR(q4_0_rows)(x, rb, p, nb, 1, o);
}
QR_ATTR static void QR(q8_0_rows4)(const uint8_t *x, int64_t rb, const prep8 *p, int64_t nb, float *o) {
    QR(q8_0_rows)(x, rb, p, nb, 4, o);
}
QR_ATTR static void QR(q8_0_rows1)(const uint8_t *x, int64_t rb, const prep8 *p, int64_t nb, float *o) {
    QR(q8_0_rows)(x, rb, p, nb, 1, o);
}
QR_ATTR static void QR(q4_K_rows4)(const uint8_t *x, int64_t rb, const bq8_K *y, int64_t nb, float *o) {
    QR(q4_K_rows)(x, rb, y, nb, 4, o);
}
QR_ATTR static void QR(q4_K_rows1)(const uint8_t *x, int64_t rb, const bq8_K *y, int64_t nb, float *o) {
    QR(q4_K_rows)(x, rb, y, nb, 1, o);
}
