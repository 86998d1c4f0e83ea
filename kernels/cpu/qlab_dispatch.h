/*
 * Run-time dispatch: CPU features (cpuid), the path to run (argument, QLAB_CPU_PATH or the best available), and
 * the kernel for one or four rows of a given type on that path.
 * Part of the single translation unit qlab_cpu.c (included there, in order); not a standalone header.
 */
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

/* The weight types this build has a dot product for: 0 and the block geometry (weights, bytes) of ggml type id t,
 * E_ARG for any other id. The Python front checks it against the GGUF type registry. */
int qlab_type_info(int t, int64_t *block, int64_t *size) {
    if (type_size(t) == 0) return E_ARG;
    *block = type_block(t);
    *size = type_size(t);
    return E_OK;
}

#ifdef QLAB_X86
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

static float row1_x86(int t, int path, const void *x, const void *y, const prep8 *p, int64_t nb) {
    float o;
    x86_rows(t, path, (const uint8_t *)x, 0, y, p, nb, 1, &o);
    return o;
}
#endif /* QLAB_X86 */

/* One row dot product. For Q4_0/Q8_0 `p` holds the prepared activation row (SIMD paths), `y` the blocks. */
static float row_dot(int t, int path, const void *x, const void *y, const prep8 *p, int64_t nb) {
    (void)path;
    (void)p;
#ifdef QLAB_X86
    if (path == P_AVX512 || path == P_AVX2) return row1_x86(t, path, x, y, p, nb); /* every type */
#endif
    switch (t) {
        case T_Q4_0:
#ifdef QLAB_NEON
            if (path == P_NEON) return dot_q4_0_neon((const bq4_0 *)x, (const bq8_0 *)y, nb);
#endif
            return dot_q4_0_scalar((const bq4_0 *)x, (const bq8_0 *)y, nb);
        case T_Q8_0:
#ifdef QLAB_NEON
            if (path == P_NEON) return dot_q8_0_neon((const bq8_0 *)x, (const bq8_0 *)y, nb);
#endif
            return dot_q8_0_scalar((const bq8_0 *)x, (const bq8_0 *)y, nb);
        case T_Q4_K:
            return dot_q4_K_scalar((const bq4_K *)x, (const bq8_K *)y, nb);
        default:
            return dot_q6_K_scalar((const bq6_K *)x, (const bq8_K *)y, nb);
    }
}
