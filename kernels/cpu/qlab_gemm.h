/*
 * The GEMV/GEMM row driver: activations quantized (and prepared) once per call, rows split over threads, and
 * the public entry points qlab_vec_dot, qlab_gemm and qlab_gemm_foreign.
 * Part of the single translation unit qlab_cpu.c (included there, in order); not a standalone header.
 */
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
