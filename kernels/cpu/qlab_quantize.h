/*
 * Row quantizers, byte-exact with ggml: Q8_0 / Q8_K activations (scalar and AVX2), Q4_0 / Q8_0 weights; and the
 * activation rows prepared once for the SIMD paths (prep8).
 * Part of the single translation unit qlab_cpu.c (included there, in order); not a standalone header.
 */
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

/* The signed value of the element of largest magnitude (the first one on ties), as ggml's reference quantizers pick. */
static float signed_absmax(const float *x, int n) {
    float max = 0.0f, amax = 0.0f;
    for (int j = 0; j < n; j++) {
        if (fabsf(x[j]) > amax) {
            amax = fabsf(x[j]);
            max = x[j];
        }
    }
    return max;
}

/* ggml quantize_row_q8_K_ref: iscale = -127/max (max = signed value of largest magnitude), d = 1/iscale. */
void qlab_quantize_q8_K(const float *x, void *vy, int64_t k) {
    bq8_K *y = (bq8_K *)vy;
    for (int64_t i = 0; i < k / QKK; i++) {
        const float *xb = x + i * QKK;
        const float max = signed_absmax(xb, QKK), amax = fabsf(max);
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
        const float max = signed_absmax(xb, QK8);
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

/* ------------------------------------------------------------------ prepared activation rows */

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
