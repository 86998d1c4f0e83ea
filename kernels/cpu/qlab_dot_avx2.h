/*
 * AVX2 (+FMA, F16C) paths: 256-bit helpers, the multi-row Q4_0/Q8_0/Q4_K kernels of qlab_rows_x86.h
 * instantiated with the suffix _avx2, and Q6_K.
 * Part of the single translation unit qlab_cpu.c (included there, in order); not a standalone header.
 */
/* ------------------------------------------------------------------ AVX2 paths */
#ifdef QLAB_X86

QLAB_AVX2 static inline float hsum_ps8(__m256 x) {
    __m128 r = _mm_add_ps(_mm256_extractf128_ps(x, 1), _mm256_castps256_ps128(x));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}

/* 16 packed bytes of nibbles -> 32 bytes: low nibbles (weights 0..15) then high nibbles (16..31). */
QLAB_AVX2 static inline __m256i nibbles32(const uint8_t *p) {
    const __m128i t = _mm_loadu_si128((const __m128i *)p);
    return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(t, 4), t), _mm256_set1_epi8(0xF));
}

QLAB_AVX2 static inline float q4k_finish(__m256 acc, __m128 accm) {
    accm = _mm_add_ps(accm, _mm_movehl_ps(accm, accm));
    accm = _mm_add_ss(accm, _mm_movehdup_ps(accm));
    return hsum_ps8(acc) + _mm_cvtss_f32(accm);
}

/* Q4_K scale bytes unpacked in SIMD: lanes [u0 u1 u2 u3] of q4k_unpack from one 16-byte load. */
QLAB_AVX2 static inline __m128i q4k_unpack_simd(const uint8_t *scales) {
    const __m128i v = _mm_loadu_si128((const __m128i *)scales); /* a0 a1 a2 (+4 bytes of qs, unused) */
    const __m128i P = _mm_shuffle_epi32(v, _MM_SHUFFLE(2, 1, 2, 0)); /* a0 a2 a1 a2 */
    const __m128i Q = _mm_shuffle_epi32(v, _MM_SHUFFLE(1, 1, 0, 0)); /* a0 a0 a1 a1 */
    const __m128i low = _mm_and_si128(_mm_srlv_epi32(P, _mm_setr_epi32(0, 0, 0, 4)),
                                      _mm_setr_epi32(0x3f3f3f3f, 0x0f0f0f0f, 0x3f3f3f3f, 0x0f0f0f0f));
    const __m128i top = _mm_slli_epi32(_mm_and_si128(_mm_srli_epi32(Q, 6), _mm_setr_epi32(0, 0x03030303, 0, 0x03030303)), 4);
    return _mm_or_si128(low, top);
}

#define QR_ATTR QLAB_AVX2
#define QR_VNNI 0
#define QR(name) name##_avx2
#include "qlab_rows_x86.h"
#undef QR_ATTR
#undef QR_VNNI
#undef QR

/* Q6_K: 32 * sum(scale * bsum) per lane, as the -32 offset of the 6-bit codes. */
QLAB_AVX2 static inline __m256i q6k_offset(const bq6_K *x, const bq8_K *y) {
    const __m256i bs = _mm256_loadu_si256((const __m256i *)y->bsums);
    const __m256i s16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)x->scales));
    return _mm256_slli_epi32(_mm256_madd_epi16(bs, s16), 5);
}

QLAB_AVX2 static float dot_q6_K_avx2(const bq6_K *x, const bq8_K *y, int64_t nb) {
    __m256 acc = _mm256_setzero_ps();
    const __m256i m3 = _mm256_set1_epi8(3), m15 = _mm256_set1_epi8(15);
    for (int64_t i = 0; i < nb; i++) {
        const float d = y[i].d * _cvtsh_ss(x[i].d);
        const __m128i sc8 = _mm_loadu_si128((const __m128i *)x[i].scales);
        __m256i sumi = _mm256_setzero_si256();
        #pragma GCC unroll 4
        for (int j = 0; j < 2; j++) {
            const __m256i l1 = _mm256_loadu_si256((const __m256i *)(x[i].ql + 64 * j));
            const __m256i l2 = _mm256_loadu_si256((const __m256i *)(x[i].ql + 64 * j + 32));
            const __m256i h = _mm256_loadu_si256((const __m256i *)(x[i].qh + 32 * j));
            __m256i q[4];
            q[0] = _mm256_or_si256(_mm256_and_si256(l1, m15), _mm256_slli_epi16(_mm256_and_si256(h, m3), 4));
            q[1] = _mm256_or_si256(_mm256_and_si256(l2, m15),
                                   _mm256_slli_epi16(_mm256_and_si256(h, _mm256_set1_epi8(12)), 2));
            q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m15),
                                   _mm256_and_si256(h, _mm256_set1_epi8(48)));
            q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l2, 4), m15),
                                   _mm256_srli_epi16(_mm256_and_si256(h, _mm256_set1_epi8((char)0xC0)), 2));
            for (int c = 0; c < 4; c++) {
                const __m256i yv = _mm256_loadu_si256((const __m256i *)(y[i].qs + 128 * j + 32 * c));
                const int is = 8 * j + 2 * c; /* bytes [is x 8, is+1 x 8] of the 16 scales, sign-extended to int16 */
                const __m256i s = _mm256_cvtepi8_epi16(
                    _mm_shuffle_epi8(sc8, _mm_set_epi64x((long long)(0x0101010101010101ULL * (uint64_t)(is + 1)),
                                                         (long long)(0x0101010101010101ULL * (uint64_t)is))));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(s, _mm256_maddubs_epi16(q[c], yv)));
            }
        }
        sumi = _mm256_sub_epi32(sumi, q6k_offset(&x[i], &y[i]));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    return hsum_ps8(acc);
}

static void q6_K_rows4_avx2(const uint8_t *x, int64_t rb, const bq8_K *y, int64_t nb, float *o) {
    for (int r = 0; r < 4; r++) o[r] = dot_q6_K_avx2((const bq6_K *)(x + r * rb), y, nb);
}
static void q6_K_rows1_avx2(const uint8_t *x, int64_t rb, const bq8_K *y, int64_t nb, float *o) {
    (void)rb;
    o[0] = dot_q6_K_avx2((const bq6_K *)x, y, nb);
}
#endif /* QLAB_X86 */
