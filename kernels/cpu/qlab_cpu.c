/*
 * qlab CPU kernels: dot products of GGUF weight blocks with Q8 activation blocks, GEMV/GEMM over rows.
 *
 * Types (ggml ids):  Q4_0 (2) x Q8_0, Q8_0 (8) x Q8_0, Q4_K (12) x Q8_K, Q6_K (14) x Q8_K; qlab_type_info tells
 * which ids this build multiplies, and the Python front (kernels/cpu/__init__.py) takes ids and sizes from the GGUF
 * type registry (qlab/gguf/types.py); tests/test_cpu_kernels.py checks the two agree.
 * Paths: scalar (portable reference), AVX2+FMA+F16C, AVX-512 (F/BW/VL/DQ/VNNI) chosen at run time by cpuid,
 * NEON (Q4_0/Q8_0, compiled only under __ARM_NEON; the tests cross-compile it for aarch64 where such a compiler
 * is installed, but do not run it).
 * QLAB_CPU_PATH (scalar/avx2/avx512/neon) forces a path when the caller asks for "auto" (0).
 * qlab_pyfast.c includes this file and adds the CPython module qlab_pyfast (a second build product).
 *
 * One summation order for every path (and the same as ggml's AVX2 kernels): each block yields eight int32
 * "lanes" (lane l = exact integer sum over 4 consecutive bytes l of the 32-byte chunk, folded over the chunks
 * of a super-block); the float accumulator of lane l is acc_l = fma(d_block, (float)lane_l, acc_l), block
 * after block; the result is the 8-lane horizontal sum ((a0+a4)+(a2+a6)) + ((a1+a5)+(a3+a7)).
 * Integer lanes are exact, so every path gives the same float, bit for bit.
 *
 * One translation unit: build.py compiles only this file (or qlab_pyfast.c, which includes it); its parts,
 * #included below in this order:
 *   qlab_blocks.h       block layouts, fp16 conversion, scalar reference dot products
 *   qlab_quantize.h     row quantizers (Q8_0/Q8_K activations, Q4_0/Q8_0 weights), prepared activation rows
 *   qlab_dot_avx2.h     AVX2 paths (with qlab_rows_x86.h instantiated for AVX2)
 *   qlab_dot_avx512.h   AVX-512 paths (with qlab_rows_x86.h instantiated for AVX-512 VNNI)
 *   qlab_dot_neon.h     NEON paths
 *   qlab_dispatch.h     run-time CPU detection, path choice, one row's dot product per type and path
 *   qlab_pool.h         the persistent worker thread pool
 *   qlab_gemm.h         activations quantized once per call, the GEMV/GEMM row driver, public entry points
 *   qlab_probes.h       roofline probes (read bandwidth, compute peak)
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

/* Path ids (the `path` argument, QLAB_CPU_PATH) and return codes of the public functions. */
enum { P_AUTO = 0, P_SCALAR = 1, P_AVX2 = 2, P_AVX512 = 3, P_NEON = 4 };
enum { E_OK = 0, E_ARG = -1, E_PATH = -2, E_MEM = -3, E_ENVPATH = -4, E_ALIGN = -5 };

#include "qlab_blocks.h"
#include "qlab_quantize.h"
#include "qlab_dot_avx2.h"
#include "qlab_dot_avx512.h"
#include "qlab_dot_neon.h"
#include "qlab_dispatch.h"
#include "qlab_pool.h"
#include "qlab_gemm.h"
#include "qlab_probes.h"
