/*
 * The persistent worker thread pool behind qlab_gemm / qlab_gemm_foreign (run_tasks).
 * Part of the single translation unit qlab_cpu.c (included there, in order); not a standalone header.
 */
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
