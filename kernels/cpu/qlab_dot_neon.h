/*
 * NEON paths (Q4_0, Q8_0; compiled only under __ARM_NEON on aarch64).
 * Part of the single translation unit qlab_cpu.c (included there, in order); not a standalone header.
 */
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
