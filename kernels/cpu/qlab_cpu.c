/*
 * qlab CPU kernels: dot products of GGUF weight blocks with Q8 activation blocks, GEMV/GEMM over rows.
 *
 * Types (ggml ids):  Q4_0 (2) x Q8_0, Q8_0 (8) x Q8_0, Q4_K (12) x Q8_K, Q6_K (14) x Q8_K.
 * Paths: scalar (portable reference), AVX2+FMA+F16C, AVX-512 (F/BW/VL/DQ/VNNI) chosen at run time by cpuid,
 * NEON (Q4_0/Q8_0, compiled only under __ARM_NEON; cross-compiled with aarch64-linux-gnu-gcc 12, not run).
 * QLAB_CPU_PATH (scalar/avx2/avx512/neon) forces a path when the caller asks for "auto" (0).
 * With -DQLAB_PYEXT the same file is also the CPython module qlab_pyfast (at the end).
 *
 * One summation order for every path (and the same as ggml's AVX2 kernels): each block yields eight int32
 * "lanes" (lane l = exact integer sum over 4 consecutive bytes l of the 32-byte chunk, folded over the chunks
 * of a super-block); the float accumulator of lane l is acc_l = fma(d_block, (float)lane_l, acc_l), block
 * after block; the result is the 8-lane horizontal sum ((a0+a4)+(a2+a6)) + ((a1+a5)+(a3+a7)).
 * Integer lanes are exact, so every path gives the same float, bit for bit.
 */
#include <math.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#if (defined(__x86_64__) || defined(__i386__)) && !defined(QLAB_NO_SIMD) /* -DQLAB_NO_SIMD: portable build */
#include <immintrin.h>
#define QLAB_X86 1
#define QLAB_AVX2 __attribute__((target("avx2,fma,f16c")))
#define QLAB_AVX512 __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")))
#endif
#if defined(__ARM_NEON) && defined(__aarch64__) && !defined(QLAB_NO_SIMD)
#include <arm_neon.h>
#define QLAB_NEON 1
#endif

#define QK8 32
#define QKK 256

typedef struct { uint16_t d; uint8_t qs[16]; } bq4_0;
typedef struct { uint16_t d; int8_t qs[32]; } bq8_0;
typedef struct { uint16_t d; uint16_t dmin; uint8_t scales[12]; uint8_t qs[128]; } bq4_K;
typedef struct { uint8_t ql[128]; uint8_t qh[64]; int8_t scales[16]; uint16_t d; } bq6_K;
typedef struct { float d; int8_t qs[256]; int16_t bsums[16]; } bq8_K;

_Static_assert(sizeof(bq4_0) == 18, "q4_0 size");
_Static_assert(sizeof(bq8_0) == 34, "q8_0 size");
_Static_assert(sizeof(bq4_K) == 144, "q4_K size");
_Static_assert(sizeof(bq6_K) == 210, "q6_K size");
_Static_assert(sizeof(bq8_K) == 292, "q8_K size");

enum { T_Q4_0 = 2, T_Q8_0 = 8, T_Q4_K = 12, T_Q6_K = 14, T_Q8_K = 15 };
enum { P_AUTO = 0, P_SCALAR = 1, P_AVX2 = 2, P_AVX512 = 3, P_NEON = 4 };
enum { E_OK = 0, E_ARG = -1, E_PATH = -2, E_MEM = -3, E_ENVPATH = -4, E_ALIGN = -5 };

/* ------------------------------------------------------------------ fp16 <-> fp32 (round to nearest even) */

static inline float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1f, m = h & 0x3ffu, bits;
    float f;
    if (e == 0) {
        f = ldexpf((float)m, -24);
        memcpy(&bits, &f, 4);
        bits |= sign;
    } else if (e == 31) {
        bits = sign | 0x7f800000u | (m << 13);
    } else {
        bits = sign | ((e + 112) << 23) | (m << 13);
    }
    memcpy(&f, &bits, 4);
    return f;
}

static inline uint16_t f32_to_f16(float f) {
    uint32_t x, ax, sign;
    memcpy(&x, &f, 4);
    sign = (x >> 16) & 0x8000u;
    ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) return (uint16_t)(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0u));
    if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* >= 65520 rounds to inf */
    if (ax < 0x38800000u) {                                   /* below 2^-14: subnormal or zero */
        float v, t;
        int32_t ti;
        memcpy(&v, &ax, 4);
        t = v * 16777216.0f + 12582912.0f; /* exact scaling by 2^24, then round half even */
        memcpy(&ti, &t, 4);
        return (uint16_t)(sign | (uint32_t)((ti & 0x007fffff) - 0x00400000));
    }
    {
        uint32_t h = (((ax >> 23) - 112) << 10) | ((ax & 0x7fffffu) >> 13), rem = ax & 0x1fffu;
        if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++;
        return (uint16_t)(sign | h);
    }
}

/* fp16 -> fp32 for all 65536 codes (filled once by qlab_cpu_features; exact, same values as f16_to_f32). */
static float f16tab[65536];
static pthread_once_t f16tab_once = PTHREAD_ONCE_INIT;
static void f16tab_fill(void) {
    for (uint32_t i = 0; i < 65536; i++) f16tab[i] = f16_to_f32((uint16_t)i);
}

/* ggml's nearest_int: round half to even by the 1.5*2^23 trick (|v| <= 2^22). */
static inline int nearest_int(float v) {
    float t = v + 12582912.f;
    int32_t i;
    memcpy(&i, &t, 4);
    return (i & 0x007fffff) - 0x00400000;
}

/* ------------------------------------------------------------------ activation quantizers (byte-exact) */

/* ggml-cpu quantize_row_q8_0 (the from_float used in matmuls): d = amax/127, q = rne(x * (127/amax)). */
void qlab_quantize_q8_0_scalar(const float *x, void *vy, int64_t k) {
    bq8_0 *y = (bq8_0 *)vy;
    for (int64_t i = 0; i < k / QK8; i++) {
        const float *xb = x + i * QK8;
        float amax = 0.0f;
        for (int j = 0; j < QK8; j++) {
            float a = fabsf(xb[j]);
            amax = a > amax ? a : amax;
        }
        const float d = amax / 127.f;
        const float id = amax != 0.0f ? 127.f / amax : 0.0f;
        y[i].d = f32_to_f16(d);
        for (int j = 0; j < QK8; j++) {
            int q = nearest_int(xb[j] * id);
            y[i].qs[j] = (int8_t)(q > 127 ? 127 : (q < -128 ? -128 : q));
        }
    }
}

#ifdef QLAB_X86
/* The same quantizer with AVX2 (as ggml-cpu's own): max |x|, x * (127/amax), round half even, pack. */
__attribute__((target("avx2,fma,f16c"))) static void quantize_q8_0_avx2(const float *x, void *vy, int64_t k) {
    bq8_0 *y = (bq8_0 *)vy;
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int64_t i = 0; i < k / QK8; i++) {
        __m256 v[4];
        for (int j = 0; j < 4; j++) v[j] = _mm256_loadu_ps(x + i * QK8 + 8 * j);
        __m256 mx = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1])),
                                  _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3])));
        __m128 m4 = _mm_max_ps(_mm256_extractf128_ps(mx, 1), _mm256_castps256_ps128(mx));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        const float amax = _mm_cvtss_f32(m4);
        y[i].d = f32_to_f16(amax / 127.f);
        const __m256 id = _mm256_set1_ps(amax != 0.0f ? 127.f / amax : 0.0f);
        __m256i q[4];
        for (int j = 0; j < 4; j++)
            q[j] = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v[j], id), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
        p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256((__m256i *)y[i].qs, p);
    }
}
#endif

void qlab_quantize_q8_0_scalar(const float *x, void *vy, int64_t k);
int qlab_cpu_features(void);

void qlab_quantize_q8_0(const float *x, void *vy, int64_t k) {
#ifdef QLAB_X86
    if (qlab_cpu_features() & (1 << 2)) {
        quantize_q8_0_avx2(x, vy, k);
        return;
    }
#endif
    qlab_quantize_q8_0_scalar(x, vy, k);
}

/* ggml quantize_row_q8_K_ref: iscale = -127/max (max = signed value of largest magnitude), d = 1/iscale. */
void qlab_quantize_q8_K(const float *x, void *vy, int64_t k) {
    bq8_K *y = (bq8_K *)vy;
    for (int64_t i = 0; i < k / QKK; i++) {
        const float *xb = x + i * QKK;
        float max = 0, amax = 0;
        for (int j = 0; j < QKK; j++) {
            float ax = fabsf(xb[j]);
            if (ax > amax) {
                amax = ax;
                max = xb[j];
            }
        }
        if (!amax) {
            y[i].d = 0;
            memset(y[i].qs, 0, QKK);
            memset(y[i].bsums, 0, sizeof(y[i].bsums));
            continue;
        }
        const float iscale = -127.f / max;
        for (int j = 0; j < QKK; j++) {
            int v = nearest_int(iscale * xb[j]);
            y[i].qs[j] = (int8_t)(v < 127 ? v : 127);
        }
        for (int j = 0; j < QKK / 16; j++) {
            int s = 0;
            for (int t = 0; t < 16; t++) s += y[i].qs[j * 16 + t];
            y[i].bsums[j] = (int16_t)s;
        }
        y[i].d = 1 / iscale;
    }
}

/* Weight quantizers (ggml's reference quantize_row_q4_0_ref / q8_0_ref, for building GGUF blocks fast). */
void qlab_quantize_w_q4_0(const float *x, void *vy, int64_t k) {
    bq4_0 *y = (bq4_0 *)vy;
    for (int64_t i = 0; i < k / QK8; i++) {
        const float *xb = x + i * QK8;
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < QK8; j++) {
            if (amax < fabsf(xb[j])) {
                amax = fabsf(xb[j]);
                max = xb[j];
            }
        }
        const float d = max / -8;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = f32_to_f16(d);
        for (int j = 0; j < 16; j++) {
            const float x0 = xb[j] * id, x1 = xb[16 + j] * id;
            int q0 = (int8_t)(x0 + 8.5f), q1 = (int8_t)(x1 + 8.5f);
            q0 = q0 < 15 ? q0 : 15;
            q1 = q1 < 15 ? q1 : 15;
            y[i].qs[j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

void qlab_quantize_w_q8_0(const float *x, void *vy, int64_t k) {
    bq8_0 *y = (bq8_0 *)vy;
    for (int64_t i = 0; i < k / QK8; i++) {
        const float *xb = x + i * QK8;
        float amax = 0.0f;
        for (int j = 0; j < QK8; j++) amax = amax > fabsf(xb[j]) ? amax : fabsf(xb[j]);
        const float d = amax / 127;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = f32_to_f16(d);
        for (int j = 0; j < QK8; j++) y[i].qs[j] = (int8_t)roundf(xb[j] * id);
    }
}

/* ------------------------------------------------------------------ shared helpers */

static inline float hsum8(const float a[8]) {
    float r0 = a[4] + a[0], r1 = a[5] + a[1], r2 = a[6] + a[2], r3 = a[7] + a[3];
    return (r0 + r2) + (r1 + r3);
}

static inline void q4k_scales(const uint8_t *q, uint8_t sc[8], uint8_t mn[8]) {
    for (int j = 0; j < 8; j++) {
        if (j < 4) {
            sc[j] = q[j] & 63;
            mn[j] = q[j + 4] & 63;
        } else {
            sc[j] = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
            mn[j] = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
        }
    }
}

/* The 12 scale bytes of a Q4_K super-block -> u[0..1] = 8 6-bit scales (bytes), u[2..3] = 8 6-bit mins. */
static inline void q4k_unpack(const uint8_t *q, uint32_t u[4]) {
    const uint32_t k1 = 0x3f3f3f3f, k2 = 0x0f0f0f0f, k3 = 0x03030303;
    uint32_t a[3];
    memcpy(a, q, 12);
    u[0] = a[0] & k1;                                 /* scales 0..3: low 6 bits of bytes 0..3 */
    u[1] = (a[2] & k2) | (((a[0] >> 6) & k3) << 4);   /* scales 4..7: low nibbles of 8..11 + top bits of 0..3 */
    u[2] = a[1] & k1;                                 /* mins 0..3: low 6 bits of bytes 4..7 */
    u[3] = ((a[2] >> 4) & k2) | (((a[1] >> 6) & k3) << 4); /* mins 4..7: high nibbles of 8..11 + top of 4..7 */
}

/* Q8_0 activations prepared once per row for the SIMD paths: contiguous codes, scales in float and
 * per-lane sums of 4 codes pre-multiplied by the weight offset (8 for Q4_0, 128 for Q8_0 as u8). */
typedef struct {
    const bq8_0 *blocks;
    int8_t *qs;
    float *d;
    int32_t *lsum;  /* mult * (sum of 4 codes) per lane */
    int32_t *nlsum; /* its negation (the start value of VNNI accumulations) */
    /* Q8_K rows for the AVX-512 Q4_K kernel: codes with the 2nd and 3rd 32-byte chunk of every 128 swapped
     * (so one 64-byte load pairs with the low or the high nibbles of 64 weight bytes), and the pairwise sums
     * of the 16 block sums (int16, as ggml's hadd_epi16) */
    int8_t *kqs;
    int16_t *q8s;
} prep8;

static void prepK_fill(prep8 *p, const bq8_K *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++) {
        for (int h = 0; h < 2; h++) {
            const int8_t *src = y[i].qs + 128 * h;
            int8_t *dst = p->kqs + 256 * i + 128 * h;
            memcpy(dst, src, 32);
            memcpy(dst + 32, src + 64, 32);
            memcpy(dst + 64, src + 32, 32);
            memcpy(dst + 96, src + 96, 32);
        }
        for (int k = 0; k < 8; k++) p->q8s[8 * i + k] = (int16_t)(y[i].bsums[2 * k] + y[i].bsums[2 * k + 1]);
    }
}

static void prep8_fill(prep8 *p, const bq8_0 *y, int64_t nb, int mult) {
    p->blocks = y;
    for (int64_t b = 0; b < nb; b++) {
        memcpy(p->qs + b * 32, y[b].qs, 32);
        p->d[b] = f16_to_f32(y[b].d);
        for (int l = 0; l < 8; l++) {
            const int8_t *q = y[b].qs + 4 * l;
            p->lsum[b * 8 + l] = mult * (q[0] + q[1] + q[2] + q[3]);
            p->nlsum[b * 8 + l] = -p->lsum[b * 8 + l];
        }
    }
}

/* ------------------------------------------------------------------ scalar reference paths */

static float dot_q8_0_scalar(const bq8_0 *x, const bq8_0 *y, int64_t nb) {
    float acc[8] = {0};
    for (int64_t b = 0; b < nb; b++) {
        const float d = f16_to_f32(x[b].d) * f16_to_f32(y[b].d);
        for (int l = 0; l < 8; l++) {
            int s = 0;
            for (int t = 0; t < 4; t++) s += x[b].qs[4 * l + t] * y[b].qs[4 * l + t];
            acc[l] = fmaf(d, (float)s, acc[l]);
        }
    }
    return hsum8(acc);
}

static float dot_q4_0_scalar(const bq4_0 *x, const bq8_0 *y, int64_t nb) {
    float acc[8] = {0};
    for (int64_t b = 0; b < nb; b++) {
        const float d = f16_to_f32(x[b].d) * f16_to_f32(y[b].d);
        for (int l = 0; l < 8; l++) {
            int s = 0;
            for (int t = 0; t < 4; t++) {
                int e = 4 * l + t;
                int q = e < 16 ? (x[b].qs[e] & 15) : (x[b].qs[e - 16] >> 4);
                s += (q - 8) * y[b].qs[e];
            }
            acc[l] = fmaf(d, (float)s, acc[l]);
        }
    }
    return hsum8(acc);
}

static float dot_q4_K_scalar(const bq4_K *x, const bq8_K *y, int64_t nb) {
    float acc[8] = {0}, accm[4] = {0};
    for (int64_t i = 0; i < nb; i++) {
        const float d = y[i].d * f16_to_f32(x[i].d);
        const float dmin = -y[i].d * f16_to_f32(x[i].dmin);
        uint8_t sc[8], mn[8];
        q4k_scales(x[i].scales, sc, mn);
        int q8s[8];
        for (int k = 0; k < 8; k++) q8s[k] = (int16_t)(y[i].bsums[2 * k] + y[i].bsums[2 * k + 1]);
        for (int k = 0; k < 4; k++) {
            int prod = mn[2 * k] * q8s[2 * k] + mn[2 * k + 1] * q8s[2 * k + 1];
            accm[k] = fmaf(dmin, (float)prod, accm[k]);
        }
        int sumi[8] = {0};
        #pragma GCC unroll 4
        for (int j = 0; j < 4; j++) {
            const uint8_t *q4 = x[i].qs + 32 * j;
            const int8_t *q8 = y[i].qs + 64 * j;
            for (int l = 0; l < 8; l++) {
                int lo = 0, hi = 0;
                for (int t = 0; t < 4; t++) {
                    lo += (q4[4 * l + t] & 15) * q8[4 * l + t];
                    hi += (q4[4 * l + t] >> 4) * q8[32 + 4 * l + t];
                }
                sumi[l] += sc[2 * j] * lo + sc[2 * j + 1] * hi;
            }
        }
        for (int l = 0; l < 8; l++) acc[l] = fmaf(d, (float)sumi[l], acc[l]);
    }
    return hsum8(acc) + ((accm[0] + accm[2]) + (accm[1] + accm[3]));
}

static float dot_q6_K_scalar(const bq6_K *x, const bq8_K *y, int64_t nb) {
    float acc[8] = {0};
    for (int64_t i = 0; i < nb; i++) {
        const float d = y[i].d * f16_to_f32(x[i].d);
        int sumi[8] = {0};
        #pragma GCC unroll 4
        for (int j = 0; j < 2; j++) {
            const uint8_t *ql = x[i].ql + 64 * j, *qh = x[i].qh + 32 * j;
            for (int c = 0; c < 4; c++) {
                const int8_t *q8 = y[i].qs + 128 * j + 32 * c;
                for (int l = 0; l < 8; l++) {
                    int s = 0;
                    for (int t = 0; t < 4; t++) {
                        int e = 4 * l + t, q;
                        switch (c) {
                            case 0: q = (ql[e] & 15) | ((qh[e] & 3) << 4); break;
                            case 1: q = (ql[32 + e] & 15) | (((qh[e] >> 2) & 3) << 4); break;
                            case 2: q = (ql[e] >> 4) | (((qh[e] >> 4) & 3) << 4); break;
                            default: q = (ql[32 + e] >> 4) | (((qh[e] >> 6) & 3) << 4); break;
                        }
                        s += q * q8[e];
                    }
                    sumi[l] += x[i].scales[8 * j + 2 * c + (l >= 4)] * s;
                }
            }
        }
        for (int l = 0; l < 8; l++) {
            int sub = 32 * (y[i].bsums[2 * l] * x[i].scales[2 * l] + y[i].bsums[2 * l + 1] * x[i].scales[2 * l + 1]);
            acc[l] = fmaf(d, (float)(sumi[l] - sub), acc[l]);
        }
    }
    return hsum8(acc);
}

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
#define QR_ATTR QLAB_AVX512
#define QR_VNNI 1
#define QR(name) name##_avx512
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

/* ------------------------------------------------------------------ AVX-512 paths (two 32-blocks per zmm) */

#define QLAB_INLINE static inline __attribute__((always_inline))

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
static void q6_K_rows4_avx2(const uint8_t *x, int64_t rb, const bq8_K *y, int64_t nb, float *o) {
    for (int r = 0; r < 4; r++) o[r] = dot_q6_K_avx2((const bq6_K *)(x + r * rb), y, nb);
}
static void q6_K_rows1_avx2(const uint8_t *x, int64_t rb, const bq8_K *y, int64_t nb, float *o) {
    (void)rb;
    o[0] = dot_q6_K_avx2((const bq6_K *)x, y, nb);
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

/* R rows (R = 4 or 1) starting at x, row stride rb bytes, on the AVX2 or AVX-512 path. */
static void x86_rows(int t, int path, const uint8_t *x, int64_t rb, const void *y, const prep8 *p, int64_t nb,
                     int R, float *o) {
    const int w = path == P_AVX512;
    switch (t) {
        case T_Q4_0:
            (w ? (R == 4 ? q4_0_rows4_avx512 : q4_0_rows1_avx512) : (R == 4 ? q4_0_rows4_avx2 : q4_0_rows1_avx2))(x, rb, p, nb, o);
            break;
        case T_Q8_0:
            (w ? (R == 4 ? q8_0_rows4_avx512 : q8_0_rows1_avx512) : (R == 4 ? q8_0_rows4_avx2 : q8_0_rows1_avx2))(x, rb, p, nb, o);
            break;
        case T_Q4_K:
            if (w && p && p->kqs) {
                float o4[4];
                q4_K_rows4_avx512v(x, R == 4 ? rb : 0, (const bq8_K *)y, p, nb, o4); /* R = 1: the row four times */
                for (int r = 0; r < R; r++) o[r] = o4[r];
                break;
            }
            (w ? (R == 4 ? q4_K_rows4_avx512 : q4_K_rows1_avx512) : (R == 4 ? q4_K_rows4_avx2 : q4_K_rows1_avx2))(
                x, rb, (const bq8_K *)y, nb, o);
            break;
        default:
            (w ? (R == 4 ? q6_K_rows4_avx512 : q6_K_rows1_avx512) : (R == 4 ? q6_K_rows4_avx2 : q6_K_rows1_avx2))(
                x, rb, (const bq8_K *)y, nb, o);
            break;
    }
}
#endif /* QLAB_X86 */

/* ------------------------------------------------------------------ NEON paths (Q4_0, Q8_0) */
#ifdef QLAB_NEON
static inline int32x4_t neon_lanes4(int8x16_t a, int8x16_t b) {
    const int32x4_t lo = vpaddlq_s16(vmull_s8(vget_low_s8(a), vget_low_s8(b)));
    const int32x4_t hi = vpaddlq_s16(vmull_s8(vget_high_s8(a), vget_high_s8(b)));
    return vpaddq_s32(lo, hi);
}

static inline float neon_hsum(float32x4_t lo, float32x4_t hi) {
    const float32x4_t r = vaddq_f32(hi, lo);
    return (vgetq_lane_f32(r, 0) + vgetq_lane_f32(r, 2)) + (vgetq_lane_f32(r, 1) + vgetq_lane_f32(r, 3));
}

static float dot_q8_0_neon(const bq8_0 *x, const bq8_0 *y, int64_t nb) {
    float32x4_t a0 = vdupq_n_f32(0), a1 = vdupq_n_f32(0);
    for (int64_t b = 0; b < nb; b++) {
        const float32x4_t d = vdupq_n_f32(f16_to_f32(x[b].d) * f16_to_f32(y[b].d));
        a0 = vfmaq_f32(a0, d, vcvtq_f32_s32(neon_lanes4(vld1q_s8(x[b].qs), vld1q_s8(y[b].qs))));
        a1 = vfmaq_f32(a1, d, vcvtq_f32_s32(neon_lanes4(vld1q_s8(x[b].qs + 16), vld1q_s8(y[b].qs + 16))));
    }
    return neon_hsum(a0, a1);
}

static float dot_q4_0_neon(const bq4_0 *x, const bq8_0 *y, int64_t nb) {
    float32x4_t a0 = vdupq_n_f32(0), a1 = vdupq_n_f32(0);
    const uint8x16_t m4 = vdupq_n_u8(0xF);
    const int8x16_t s8 = vdupq_n_s8(8);
    for (int64_t b = 0; b < nb; b++) {
        const uint8x16_t v = vld1q_u8(x[b].qs);
        const int8x16_t lo = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(v, m4)), s8);
        const int8x16_t hi = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(v, 4)), s8);
        const float32x4_t d = vdupq_n_f32(f16_to_f32(x[b].d) * f16_to_f32(y[b].d));
        a0 = vfmaq_f32(a0, d, vcvtq_f32_s32(neon_lanes4(lo, vld1q_s8(y[b].qs))));
        a1 = vfmaq_f32(a1, d, vcvtq_f32_s32(neon_lanes4(hi, vld1q_s8(y[b].qs + 16))));
    }
    return neon_hsum(a0, a1);
}
#endif

/* ------------------------------------------------------------------ dispatch */

int qlab_cpu_features(void) {
    int f = 1 << P_SCALAR;
    pthread_once(&f16tab_once, f16tab_fill);
#ifdef QLAB_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) f |= 1 << P_AVX2;
    if ((f & (1 << P_AVX2)) && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vnni"))
        f |= 1 << P_AVX512;
#endif
#ifdef QLAB_NEON
    f |= 1 << P_NEON;
#endif
    return f;
}

/* QLAB_CPU_PATH forces a path when the caller asks for P_AUTO (-4 if it names none). */
static int env_path(void) {
    static const char *names[] = {"auto", "scalar", "avx2", "avx512", "neon"};
    const char *e = getenv("QLAB_CPU_PATH");
    if (!e || !*e) return P_AUTO;
    for (int i = 0; i < 5; i++)
        if (!strcasecmp(e, names[i])) return i;
    return E_ENVPATH;
}

static int resolve_path(int path) {
    const int f = qlab_cpu_features();
    if (path == P_AUTO) path = env_path();
    if (path < 0) return path;
    if (path == P_AUTO) {
        if (f & (1 << P_AVX512)) return P_AVX512;
        if (f & (1 << P_AVX2)) return P_AVX2;
        if (f & (1 << P_NEON)) return P_NEON;
        return P_SCALAR;
    }
    if (path < P_SCALAR || path > P_NEON || !(f & (1 << path))) return E_PATH;
    return path;
}

static int64_t type_block(int t) { return (t == T_Q4_0 || t == T_Q8_0) ? QK8 : QKK; }
static int64_t type_size(int t) {
    switch (t) {
        case T_Q4_0: return 18;
        case T_Q8_0: return 34;
        case T_Q4_K: return 144;
        case T_Q6_K: return 210;
        default: return 0;
    }
}

#ifdef QLAB_X86
static float row1_x86(int t, int path, const void *x, const void *y, const prep8 *p, int64_t nb) {
    float o;
    x86_rows(t, path, (const uint8_t *)x, 0, y, p, nb, 1, &o);
    return o;
}
#endif

/* One row dot product. For Q4_0/Q8_0 `p` holds the prepared activation row (SIMD paths), `y` the blocks. */
static float row_dot(int t, int path, const void *x, const void *y, const prep8 *p, int64_t nb) {
    (void)path;
    (void)p;
    switch (t) {
        case T_Q4_0:
#ifdef QLAB_X86
            if (path == P_AVX512 || path == P_AVX2) return row1_x86(t, path, x, y, p, nb);
#endif
#ifdef QLAB_NEON
            if (path == P_NEON) return dot_q4_0_neon((const bq4_0 *)x, (const bq8_0 *)y, nb);
#endif
            return dot_q4_0_scalar((const bq4_0 *)x, (const bq8_0 *)y, nb);
        case T_Q8_0:
#ifdef QLAB_X86
            if (path == P_AVX512 || path == P_AVX2) return row1_x86(t, path, x, y, p, nb);
#endif
#ifdef QLAB_NEON
            if (path == P_NEON) return dot_q8_0_neon((const bq8_0 *)x, (const bq8_0 *)y, nb);
#endif
            return dot_q8_0_scalar((const bq8_0 *)x, (const bq8_0 *)y, nb);
        case T_Q4_K:
#ifdef QLAB_X86
            if (path == P_AVX512 || path == P_AVX2) return row1_x86(t, path, x, y, p, nb);
#endif
            return dot_q4_K_scalar((const bq4_K *)x, (const bq8_K *)y, nb);
        default:
#ifdef QLAB_X86
            if (path == P_AVX512 || path == P_AVX2) return row1_x86(t, path, x, y, p, nb);
#endif
            return dot_q6_K_scalar((const bq6_K *)x, (const bq8_K *)y, nb);
    }
}

/* Activations of M rows quantized (and prepared) once per call. */
typedef struct {
    int t, path;
    int64_t nb, M;
    uint8_t *yq;     /* M rows of Q8_0 / Q8_K blocks */
    int64_t ystride; /* bytes per activation row */
    prep8 *preps;    /* M prepared rows (Q4_0 / Q8_0 only) */
    void *pmem;
} acts;

static void acts_free(acts *a) {
    free(a->yq);
    free(a->preps);
    free(a->pmem);
}

static int acts_build(acts *a, int t, int path, const void *yq, const float *X, int64_t M, int64_t K) {
    memset(a, 0, sizeof(*a));
    a->t = t;
    a->path = path;
    a->M = M;
    a->nb = K / type_block(t);
    const int small = (t == T_Q4_0 || t == T_Q8_0);
    a->ystride = small ? a->nb * 34 : a->nb * 292;
    a->yq = (uint8_t *)malloc((size_t)(a->ystride * M) + 64);
    if (!a->yq) return E_MEM;
    for (int64_t m = 0; m < M; m++) {
        if (yq)
            memcpy(a->yq + m * a->ystride, (const uint8_t *)yq + m * a->ystride, (size_t)a->ystride);
        else if (small)
            qlab_quantize_q8_0(X + m * K, a->yq + m * a->ystride, K);
        else
            qlab_quantize_q8_K(X + m * K, a->yq + m * a->ystride, K);
    }
    if (small) {
        const int64_t per = a->nb * (32 + 4 + 32 + 32);
        a->preps = (prep8 *)calloc((size_t)M, sizeof(prep8));
        a->pmem = malloc((size_t)(per * M) + 64);
        if (!a->preps || !a->pmem) return E_MEM;
        for (int64_t m = 0; m < M; m++) {
            uint8_t *base = (uint8_t *)a->pmem + m * per;
            a->preps[m].qs = (int8_t *)base;
            a->preps[m].d = (float *)(base + a->nb * 32);
            a->preps[m].lsum = (int32_t *)(base + a->nb * 36);
            a->preps[m].nlsum = (int32_t *)(base + a->nb * 68);
            prep8_fill(&a->preps[m], (const bq8_0 *)(a->yq + m * a->ystride), a->nb, t == T_Q4_0 ? 8 : 128);
        }
    } else if (t == T_Q4_K && path == P_AVX512) {
        const int64_t per = (a->nb * (256 + 16) + 63) / 64 * 64; /* every row's codes 64-byte aligned */
        a->preps = (prep8 *)calloc((size_t)M, sizeof(prep8));
        if (!a->preps || posix_memalign(&a->pmem, 64, (size_t)(per * M) + 64)) return E_MEM;
        for (int64_t m = 0; m < M; m++) {
            uint8_t *base = (uint8_t *)a->pmem + m * per;
            a->preps[m].kqs = (int8_t *)base;
            a->preps[m].q8s = (int16_t *)(base + a->nb * 256);
            prepK_fill(&a->preps[m], (const bq8_K *)(a->yq + m * a->ystride), a->nb);
        }
    }
    return E_OK;
}

/* y blocks: one row of Q8_0 (Q4_0/Q8_0 weights) or Q8_K (Q4_K/Q6_K weights) blocks, already quantized. */
int qlab_vec_dot(int t, int path, int64_t n, const void *x, const void *y, float *out) {
    if (!type_size(t) || n <= 0 || n % type_block(t) || !x || !y || !out) return E_ARG;
    path = resolve_path(path);
    if (path < 0) return path;
    acts a;
    int rc = acts_build(&a, t, path, y, NULL, 1, n);
    if (rc == E_OK) *out = row_dot(t, path, x, a.yq, a.preps, a.nb);
    acts_free(&a);
    return rc;
}

typedef struct {
    const acts *a;
    const uint8_t *W;
    int64_t row_bytes, n0, n1, N;
    float *Y;
} job;

static void run_job(const job *j) {
    const acts *a = j->a;
    int64_t n = j->n0;
#ifdef QLAB_X86
    if (a->path == P_AVX512 || a->path == P_AVX2) {
        float o[4];
        for (; n + 4 <= j->n1; n += 4)
            for (int64_t m = 0; m < a->M; m++) {
                x86_rows(a->t, a->path, j->W + n * j->row_bytes, j->row_bytes, a->yq + m * a->ystride,
                            a->preps ? &a->preps[m] : NULL, a->nb, 4, o);
                for (int r = 0; r < 4; r++) j->Y[m * j->N + n + r] = o[r];
            }
    }
#endif
    for (; n < j->n1; n++) {
        const uint8_t *row = j->W + n * j->row_bytes;
        for (int64_t m = 0; m < a->M; m++)
            j->Y[m * j->N + n] = row_dot(a->t, a->path, row, a->yq + m * a->ystride, a->preps ? &a->preps[m] : NULL, a->nb);
    }
}

static void *thread_main(void *arg) {
    run_job((const job *)arg);
    return NULL;
}

#define QLAB_MAX_THREADS 64

/* A persistent pool of worker threads (created on first use, then asleep on a condition variable between
 * calls): starting threads per call costs ~10 us, as much as a whole 576 x 1536 GEMV. One caller at a time
 * uses the pool (a concurrent caller, e.g. another Python thread with the GIL released, starts its own
 * threads as before); a forked child starts with an empty pool. */
typedef void *(*task_fn)(void *);
static pthread_mutex_t pool_busy = PTHREAD_MUTEX_INITIALIZER; /* held by the caller using the pool */
static pthread_mutex_t pool_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t pool_go = PTHREAD_COND_INITIALIZER, pool_done = PTHREAD_COND_INITIALIZER;
static int pool_n = 0, pool_ntasks = 0, pool_pending = 0; /* workers started; tasks 1..ntasks; unfinished */
static uint64_t pool_gen = 0;                                  /* one more per dispatch */
static task_fn pool_fn;
static uint8_t *pool_tasks;
static size_t pool_task_size;
static struct { int k; uint64_t gen0; } pool_arg[QLAB_MAX_THREADS];
static pthread_once_t pool_once = PTHREAD_ONCE_INIT;

static void pool_child_reset(void) {
    pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t c = PTHREAD_COND_INITIALIZER;
    pool_busy = m;
    pool_mu = m;
    pool_go = c;
    pool_done = c;
    pool_n = pool_ntasks = pool_pending = 0;
}
static void pool_init(void) { pthread_atfork(NULL, NULL, pool_child_reset); }

static void *pool_worker(void *arg) {
    const int k = ((const int *)arg)[0];
    pthread_mutex_lock(&pool_mu);
    uint64_t seen = pool_arg[k].gen0; /* the generation before the dispatch that created this worker */
    for (;;) {
        while (pool_gen == seen) pthread_cond_wait(&pool_go, &pool_mu);
        seen = pool_gen;
        if (k <= pool_ntasks) {
            const task_fn fn = pool_fn;
            void *task = pool_tasks + (size_t)k * pool_task_size;
            pthread_mutex_unlock(&pool_mu);
            fn(task);
            pthread_mutex_lock(&pool_mu);
            if (--pool_pending == 0) pthread_cond_signal(&pool_done);
        }
    }
    return NULL;
}

/* Run fn on tasks[0..n) (task k at tasks + k * size): the caller runs task 0, n - 1 pool workers (or, if the
 * pool is in use or cannot grow, freshly started threads) the others. */
static void run_tasks(task_fn fn, void *tasks, size_t size, int n) {
    uint8_t *t = (uint8_t *)tasks;
    if (n > 1) {
        pthread_once(&pool_once, pool_init);
        if (pthread_mutex_trylock(&pool_busy) == 0) {
            int ok = 1;
            pthread_mutex_lock(&pool_mu);
            while (pool_n < n - 1) {
                const int k = pool_n + 1;
                pthread_t th;
                pthread_attr_t at;
                pool_arg[k].k = k;
                pool_arg[k].gen0 = pool_gen;
                pthread_attr_init(&at);
                pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
                const int rc = pthread_create(&th, &at, pool_worker, &pool_arg[k].k);
                pthread_attr_destroy(&at);
                if (rc != 0) {
                    ok = 0;
                    break;
                }
                pool_n = k;
            }
            if (ok) {
                pool_fn = fn;
                pool_tasks = t;
                pool_task_size = size;
                pool_ntasks = pool_pending = n - 1;
                pool_gen++;
                pthread_cond_broadcast(&pool_go);
            }
            pthread_mutex_unlock(&pool_mu);
            if (ok) {
                fn(t);
                pthread_mutex_lock(&pool_mu);
                while (pool_pending > 0) pthread_cond_wait(&pool_done, &pool_mu);
                pthread_mutex_unlock(&pool_mu);
                pthread_mutex_unlock(&pool_busy);
                return;
            }
            pthread_mutex_unlock(&pool_busy);
        }
    }
    pthread_t th[QLAB_MAX_THREADS];
    int started[QLAB_MAX_THREADS] = {0};
    for (int k = 1; k < n; k++) started[k] = pthread_create(&th[k], NULL, fn, t + (size_t)k * size) == 0;
    fn(t);
    for (int k = 1; k < n; k++) {
        if (started[k])
            pthread_join(th[k], NULL);
        else
            fn(t + (size_t)k * size);
    }
}

/* Split rows [0, N) over n_threads (the calling thread takes the first share). */
static int run_rows(const acts *a, const uint8_t *W, int64_t row_bytes, int64_t N, float *Y, int n_threads) {
    if (n_threads < 1) n_threads = 1;
    if (n_threads > QLAB_MAX_THREADS) n_threads = QLAB_MAX_THREADS;
    if (n_threads > N) n_threads = (int)N;
    job jobs[QLAB_MAX_THREADS];
    for (int k = 0; k < n_threads; k++) {
        jobs[k].a = a;
        jobs[k].W = W;
        jobs[k].row_bytes = row_bytes;
        jobs[k].N = N;
        jobs[k].Y = Y;
        jobs[k].n0 = N * k / n_threads;
        jobs[k].n1 = N * (k + 1) / n_threads;
    }
    run_tasks(thread_main, jobs, sizeof(job), n_threads);
    return E_OK;
}

/* Y[M, N] = X[M, K] @ W[N, K]^T with W in GGUF blocks (row n = row_bytes bytes), X float32 quantized to Q8. */
int qlab_gemm(int t, int path, const void *W, int64_t N, int64_t K, const float *X, int64_t M, float *Y,
              int n_threads) {
    if (!type_size(t) || N <= 0 || M <= 0 || K <= 0 || K % type_block(t) || !W || !X || !Y) return E_ARG;
    path = resolve_path(path);
    if (path < 0) return path;
    acts a;
    int rc = acts_build(&a, t, path, NULL, X, M, K);
    if (rc == E_OK) rc = run_rows(&a, (const uint8_t *)W, K / type_block(t) * type_size(t), N, Y, n_threads);
    acts_free(&a);
    return rc;
}

/* ------------------------------------------------------------------ a foreign vec_dot looped over rows
 * (for benchmarks against ggml: its from_float and vec_dot function pointers, same threading as qlab_gemm). */
typedef void (*vec_dot_fn)(int n, float *s, size_t bs, const void *x, size_t bx, const void *y, size_t by, int nrc);
typedef void (*from_float_fn)(const float *x, void *y, int64_t k);

typedef struct {
    vec_dot_fn dot;
    const uint8_t *W, *yq;
    int64_t row_bytes, ystride, n0, n1, N, M, K;
    float *Y;
} fjob;

static void *fthread(void *arg) {
    const fjob *j = (const fjob *)arg;
    for (int64_t n = j->n0; n < j->n1; n++)
        for (int64_t m = 0; m < j->M; m++)
            j->dot((int)j->K, &j->Y[m * j->N + n], 0, j->W + n * j->row_bytes, 0, j->yq + m * j->ystride, 0, 1);
    return NULL;
}

int qlab_gemm_foreign(void *dot, void *from_float, int64_t row_bytes, int64_t ystride, const void *W, int64_t N,
                      int64_t K, const float *X, int64_t M, float *Y, int n_threads) {
    if (!dot || !from_float || !W || !X || !Y || N <= 0 || M <= 0 || K <= 0) return E_ARG;
    uint8_t *yq = (uint8_t *)malloc((size_t)(ystride * M) + 64);
    if (!yq) return E_MEM;
    for (int64_t m = 0; m < M; m++) ((from_float_fn)from_float)(X + m * K, yq + m * ystride, K);
    if (n_threads < 1) n_threads = 1;
    if (n_threads > QLAB_MAX_THREADS) n_threads = QLAB_MAX_THREADS;
    if (n_threads > N) n_threads = (int)N;
    fjob jobs[QLAB_MAX_THREADS];
    for (int k = 0; k < n_threads; k++) {
        fjob jb = {(vec_dot_fn)dot, (const uint8_t *)W, yq, row_bytes, ystride, N * k / n_threads,
                   N * (k + 1) / n_threads, N, M, K, Y};
        jobs[k] = jb;
    }
    run_tasks(fthread, jobs, sizeof(fjob), n_threads);
    free(yq);
    return E_OK;
}

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

/* ------------------------------------------------------------------ CPython entry point (optional)
 * Built a second time with -DQLAB_PYEXT and Python's headers into the module qlab_pyfast: gemm() without
 * ctypes' per-call cost (METH_FASTCALL, no argtypes conversion objects). kernels/cpu/__init__.py falls back
 * to ctypes when this module cannot be built.
 *   gemm(t, path, W, N, K, X, M, Y, n_threads) -> rc    W, X, Y: an int address or a C-contiguous buffer
 * A W address not 16-byte aligned gives rc E_ALIGN (the caller then copies). The GIL is released while the
 * kernel runs. */
#ifdef QLAB_PYEXT
#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* An address from an int or a buffer; *held tells whether view must be released. */
static int address_of(PyObject *o, void **p, Py_buffer *view, int *held, int writable) {
    *held = 0;
    if (PyLong_Check(o)) {
        *p = PyLong_AsVoidPtr(o);
        return (*p == NULL && PyErr_Occurred()) ? -1 : 0;
    }
    if (PyObject_GetBuffer(o, view, (writable ? PyBUF_WRITABLE : 0) | PyBUF_C_CONTIGUOUS) < 0) return -1;
    *held = 1;
    *p = view->buf;
    return 0;
}

static PyObject *py_gemm(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 9) {
        PyErr_SetString(PyExc_TypeError, "gemm takes 9 arguments (t, path, W, N, K, X, M, Y, n_threads)");
        return NULL;
    }
    const long t = PyLong_AsLong(args[0]), path = PyLong_AsLong(args[1]), threads = PyLong_AsLong(args[8]);
    const long long N = PyLong_AsLongLong(args[3]), K = PyLong_AsLongLong(args[4]), M = PyLong_AsLongLong(args[6]);
    if (PyErr_Occurred()) return NULL;
    Py_buffer vw, vx, vy;
    int hw = 0, hx = 0, hy = 0, rc;
    void *w = NULL, *x = NULL, *y = NULL;
    if (address_of(args[2], &w, &vw, &hw, 0) < 0 || address_of(args[5], &x, &vx, &hx, 0) < 0 ||
        address_of(args[7], &y, &vy, &hy, 1) < 0) {
        rc = -100;
    } else if (((uintptr_t)w % 16) != 0) {
        rc = E_ALIGN;
    } else {
        Py_BEGIN_ALLOW_THREADS
        rc = qlab_gemm((int)t, (int)path, w, (int64_t)N, (int64_t)K, (const float *)x, (int64_t)M, (float *)y, (int)threads);
        Py_END_ALLOW_THREADS
    }
    if (hw) PyBuffer_Release(&vw);
    if (hx) PyBuffer_Release(&vx);
    if (hy) PyBuffer_Release(&vy);
    if (rc == -100) return NULL;
    return PyLong_FromLong(rc);
}

static PyMethodDef py_methods[] = {
    {"gemm", (PyCFunction)(void (*)(void))py_gemm, METH_FASTCALL, "gemm(t, path, W, N, K, X, M, Y, n_threads) -> rc"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef py_module = {PyModuleDef_HEAD_INIT, "qlab_pyfast", NULL, -1, py_methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit_qlab_pyfast(void) { return PyModule_Create(&py_module); }
#endif /* QLAB_PYEXT */
