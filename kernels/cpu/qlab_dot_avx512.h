/*
 * AVX-512 (F/BW/VL/DQ/VNNI) paths: qlab_rows_x86.h instantiated with the suffix _avx512 (VNNI on 256-bit
 * registers), Q6_K and the four-row Q4_K kernel on 512-bit registers.
 * Part of the single translation unit qlab_cpu.c (included there, in order); not a standalone header.
 */
/* ------------------------------------------------------------------ AVX-512 paths (two 32-blocks per zmm) */
#ifdef QLAB_X86

#define QLAB_INLINE static inline __attribute__((always_inline))

#define QR_ATTR QLAB_AVX512
#define QR_VNNI 1
#define QR(name) name##_avx512
#include "qlab_rows_x86.h"
#undef QR_ATTR
#undef QR_VNNI
#undef QR

/* Q6_K: 64 codes per zmm (two 32-chunks), high bits merged by per-half masks and variable shifts. */
QLAB_AVX512 QLAB_INLINE void q6_K_avx512_rows(const uint8_t *x0, int64_t rb, const bq8_K *y, int64_t nb, int R,
                                              float *out) {
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    const __m512i m15 = _mm512_set1_epi8(15);
    const __m512i maskA = _mm512_inserti64x4(_mm512_set1_epi8(3), _mm256_set1_epi8(12), 1);
    const __m512i shA = _mm512_inserti64x4(_mm512_set1_epi16(4), _mm256_set1_epi16(2), 1);
    const __m512i maskB = _mm512_inserti64x4(_mm512_set1_epi8(48), _mm256_set1_epi8((char)0xC0), 1);
    const __m512i shB = _mm512_inserti64x4(_mm512_set1_epi16(0), _mm256_set1_epi16(2), 1);
    /* int16 lane t of a zmm covers bytes 2t, 2t+1: scale index 8j + t/8 (codes A) or 8j + 4 + t/8 (codes B) */
    static const int16_t sidx[2][2][32] = {
        {{0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3},
         {4, 4, 4, 4, 4, 4, 4, 4, 5, 5, 5, 5, 5, 5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 6, 7, 7, 7, 7, 7, 7, 7, 7}},
        {{8, 8, 8, 8, 8, 8, 8, 8, 9, 9, 9, 9, 9, 9, 9, 9, 10, 10, 10, 10, 10, 10, 10, 10, 11, 11, 11, 11, 11, 11, 11, 11},
         {12, 12, 12, 12, 12, 12, 12, 12, 13, 13, 13, 13, 13, 13, 13, 13, 14, 14, 14, 14, 14, 14, 14, 14, 15, 15, 15,
          15, 15, 15, 15, 15}}};
    for (int64_t i = 0; i < nb; i++) {
        __m512i ya[2], yb[2];
        #pragma GCC unroll 4
        for (int j = 0; j < 2; j++) {
            ya[j] = _mm512_loadu_si512((const void *)(y[i].qs + 128 * j));
            yb[j] = _mm512_loadu_si512((const void *)(y[i].qs + 128 * j + 64));
        }
        #pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            const bq6_K *x = (const bq6_K *)(x0 + r * rb) + i;
            for (int c = 0; c < 4; c++) _mm_prefetch((const char *)x + 1024 + 64 * c, _MM_HINT_T0); /* 1 KiB ahead */
            const float d = y[i].d * f16tab[x->d];
            const __m512i s16 = _mm512_castsi256_si512(_mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)x->scales)));
            __m512i sumi = _mm512_setzero_si512();
            #pragma GCC unroll 4
            for (int j = 0; j < 2; j++) {
                const __m512i l = _mm512_loadu_si512((const void *)(x->ql + 64 * j));
                const __m512i h = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(x->qh + 32 * j)));
                /* (l & 15) | high bits, one ternary-logic op (0xEC: (A & C) | B) */
                const __m512i qa = _mm512_ternarylogic_epi32(l, _mm512_sllv_epi16(_mm512_and_si512(h, maskA), shA), m15, 0xEC);
                const __m512i qb = _mm512_ternarylogic_epi32(_mm512_srli_epi16(l, 4),
                                                             _mm512_srlv_epi16(_mm512_and_si512(h, maskB), shB), m15, 0xEC);
                const __m512i sa = _mm512_permutexvar_epi16(_mm512_loadu_si512((const void *)sidx[j][0]), s16);
                const __m512i sb = _mm512_permutexvar_epi16(_mm512_loadu_si512((const void *)sidx[j][1]), s16);
                sumi = _mm512_dpwssd_epi32(sumi, sa, _mm512_maddubs_epi16(qa, ya[j])); /* VNNI: madd + add */
                sumi = _mm512_dpwssd_epi32(sumi, sb, _mm512_maddubs_epi16(qb, yb[j]));
            }
            __m256i s8 = _mm256_add_epi32(_mm512_castsi512_si256(sumi), _mm512_extracti64x4_epi64(sumi, 1));
            s8 = _mm256_sub_epi32(s8, q6k_offset(x, &y[i]));
            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(s8), acc[r]);
        }
    }
    for (int r = 0; r < R; r++) out[r] = hsum_ps8(acc[r]);
}

QLAB_AVX512 static void q6_K_rows4_avx512(const uint8_t *x, int64_t rb, const bq8_K *y, int64_t nb, float *o) {
    q6_K_avx512_rows(x, rb, y, nb, 4, o);
}
QLAB_AVX512 static void q6_K_rows1_avx512(const uint8_t *x, int64_t rb, const bq8_K *y, int64_t nb, float *o) {
    q6_K_avx512_rows(x, rb, y, nb, 1, o);
}

/* Q4_K x Q8_K, four rows per pass on 512-bit registers. One 16-byte load per row takes the block header
 * (d, dmin, 12 scale bytes); the four headers share one zmm, so the 6-bit scale/min unpacking, the fp16
 * conversions of d and dmin (vcvtph2ps, exact) and the mins' float accumulation run once for four rows.
 * Codes: one 64-byte load = two 32-byte chunks; its low nibbles are sub-blocks 2j, 2j+2 and its high
 * nibbles 2j+1, 2j+3 (the activation codes are pre-permuted to match). maddubs (u8 nibble x s8 code, pairs)
 * then VNNI dpwssd (x int16 scale, pairs, accumulate): int32 lane l of each 256-bit half gets the 4 bytes
 * 4l..4l+3 of its chunks; the two halves are added at the end, so lane l is exactly the scalar path's. */
QLAB_AVX512 static void q4_K_rows4_avx512v(const uint8_t *x0, int64_t rb, const bq8_K *y, const prep8 *p, int64_t nb,
                                           float *out) {
    const __m512i m4 = _mm512_set1_epi8(0xF);
    const __m512i shv = _mm512_set4_epi32(4, 0, 0, 0);
    const __m512i mlow = _mm512_set4_epi32(0x0f0f0f0f, 0x3f3f3f3f, 0x0f0f0f0f, 0x3f3f3f3f);
    const __m512i m30 = _mm512_set4_epi32(0x30303030, 0, 0x30303030, 0);
    /* fp16 words of the header zmm: d of row r is word 8r, dmin word 8r + 1 */
    const __m512i idx_d = _mm512_set_epi16(24, 24, 24, 24, 24, 24, 24, 24, 16, 16, 16, 16, 16, 16, 16, 16,
                                           8, 8, 8, 8, 8, 8, 8, 8, 0, 0, 0, 0, 0, 0, 0, 0);
    const __m512i idx_m = _mm512_set_epi16(25, 25, 25, 25, 25, 25, 25, 25, 25, 25, 25, 25, 25, 25, 25, 25,
                                           25, 25, 25, 25, 17, 17, 17, 17, 9, 9, 9, 9, 1, 1, 1, 1);
    /* byte shuffles: scale s as an int16 (odd bytes zeroed by 0x80); lanes 0-1 scale a, lanes 2-3 scale b */
#define QK_CTL(a, b) _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi16((short)(0x8000 | (a)))), \
                                        _mm256_set1_epi16((short)(0x8000 | (b))), 1)
    const __m512i c0 = QK_CTL(0, 2), c1 = QK_CTL(1, 3), c2 = QK_CTL(4, 6), c3 = QK_CTL(5, 7);
#undef QK_CTL
    __m512 acc01 = _mm512_setzero_ps(), acc23 = _mm512_setzero_ps(), accm = _mm512_setzero_ps();
    for (int64_t i = 0; i < nb; i++) {
        const int8_t *yq = p->kqs + 256 * i;
        const __m512i y0 = _mm512_load_si512((const void *)yq), y1 = _mm512_load_si512((const void *)(yq + 64));
        const __m512i y2 = _mm512_load_si512((const void *)(yq + 128)), y3 = _mm512_load_si512((const void *)(yq + 192));
        const __m512i q8s = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(p->q8s + 8 * i)));
        const __m512 yd = _mm512_set1_ps(y[i].d), nyd = _mm512_set1_ps(-y[i].d);
        const uint8_t *xb = x0 + 144 * i;
        for (int r = 0; r < 4; r++) /* the next rows' blocks, 1 KiB ahead (~25% faster under memory contention) */
            for (int c = 0; c < 3; c++) _mm_prefetch((const char *)(xb + r * rb + 1024 + 64 * c), _MM_HINT_T0);
        __m512i H = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)xb));
        H = _mm512_inserti32x4(H, _mm_loadu_si128((const __m128i *)(xb + rb)), 1);
        H = _mm512_inserti32x4(H, _mm_loadu_si128((const __m128i *)(xb + 2 * rb)), 2);
        H = _mm512_inserti32x4(H, _mm_loadu_si128((const __m128i *)(xb + 3 * rb)), 3);
        /* per 128-bit lane, dwords a0 a1 a2 = scale bytes 0-3, 4-7, 8-11 -> bytes sc0..7, mn0..7 */
        const __m512i P = _mm512_shuffle_epi32(H, _MM_SHUFFLE(3, 2, 3, 1)); /* a0 a2 a1 a2 */
        const __m512i Q = _mm512_shuffle_epi32(H, _MM_SHUFFLE(2, 2, 1, 1)); /* a0 a0 a1 a1 */
        const __m512i low = _mm512_and_si512(_mm512_srlv_epi32(P, shv), mlow);
        const __m512i U = _mm512_ternarylogic_epi32(low, _mm512_srli_epi32(Q, 2), m30, 0xF8); /* low | (Q>>2 & m30) */
        /* mins: fma(-d_y * dmin, mins . pairwise bsums, accm), four lanes per row */
        const __m512i prod = _mm512_madd_epi16(_mm512_unpackhi_epi8(U, _mm512_setzero_si512()), q8s);
        const __m512 dmin = _mm512_cvtph_ps(_mm512_castsi512_si256(_mm512_permutexvar_epi16(idx_m, H)));
        accm = _mm512_fmadd_ps(_mm512_mul_ps(nyd, dmin), _mm512_cvtepi32_ps(prod), accm);
        __m512i s[4];
#pragma GCC unroll 4
        for (int r = 0; r < 4; r++) {
            const __m512i Ur = _mm512_shuffle_i32x4(U, U, 0x55 * r);
            const __m512i b0 = _mm512_loadu_si512((const void *)(xb + r * rb + 16));
            const __m512i b1 = _mm512_loadu_si512((const void *)(xb + r * rb + 80));
            __m512i t = _mm512_dpwssd_epi32(_mm512_setzero_si512(), _mm512_shuffle_epi8(Ur, c0),
                                            _mm512_maddubs_epi16(_mm512_and_si512(b0, m4), y0));
            t = _mm512_dpwssd_epi32(t, _mm512_shuffle_epi8(Ur, c1),
                                    _mm512_maddubs_epi16(_mm512_and_si512(_mm512_srli_epi16(b0, 4), m4), y1));
            t = _mm512_dpwssd_epi32(t, _mm512_shuffle_epi8(Ur, c2), _mm512_maddubs_epi16(_mm512_and_si512(b1, m4), y2));
            s[r] = _mm512_dpwssd_epi32(t, _mm512_shuffle_epi8(Ur, c3),
                                       _mm512_maddubs_epi16(_mm512_and_si512(_mm512_srli_epi16(b1, 4), m4), y3));
        }
        const __m512i s01 = _mm512_add_epi32(_mm512_shuffle_i64x2(s[0], s[1], 0x44), _mm512_shuffle_i64x2(s[0], s[1], 0xEE));
        const __m512i s23 = _mm512_add_epi32(_mm512_shuffle_i64x2(s[2], s[3], 0x44), _mm512_shuffle_i64x2(s[2], s[3], 0xEE));
        const __m512i dh = _mm512_permutexvar_epi16(idx_d, H);
        acc01 = _mm512_fmadd_ps(_mm512_mul_ps(yd, _mm512_cvtph_ps(_mm512_castsi512_si256(dh))), _mm512_cvtepi32_ps(s01), acc01);
        acc23 = _mm512_fmadd_ps(_mm512_mul_ps(yd, _mm512_cvtph_ps(_mm512_extracti64x4_epi64(dh, 1))),
                                _mm512_cvtepi32_ps(s23), acc23);
    }
    out[0] = q4k_finish(_mm512_castps512_ps256(acc01), _mm512_extractf32x4_ps(accm, 0));
    out[1] = q4k_finish(_mm512_extractf32x8_ps(acc01, 1), _mm512_extractf32x4_ps(accm, 1));
    out[2] = q4k_finish(_mm512_castps512_ps256(acc23), _mm512_extractf32x4_ps(accm, 2));
    out[3] = q4k_finish(_mm512_extractf32x8_ps(acc23, 1), _mm512_extractf32x4_ps(accm, 3));
}
#endif /* QLAB_X86 */
