/*
 * GGUF block layouts (ggml ids), fp16 <-> fp32, rounding, and the scalar reference dot products that every
 * SIMD path reproduces bit for bit.
 * Part of the single translation unit qlab_cpu.c (included there, in order); not a standalone header.
 */
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

/* ggml's type ids (enum ggml_type) of the weight and activation types the kernels handle */
enum { T_Q4_0 = 2, T_Q8_0 = 8, T_Q4_K = 12, T_Q6_K = 14, T_Q8_K = 15 };

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
