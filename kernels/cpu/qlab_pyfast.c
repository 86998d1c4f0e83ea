/*
 * The CPython module qlab_pyfast, a second build product: the kernels (qlab_cpu.c, included whole: one translation
 * unit) plus this entry point. build.py compiles it with -DQLAB_PYEXT and Python's headers; gemm() without
 * ctypes' per-call cost (METH_FASTCALL, no argtypes conversion objects). kernels/cpu/__init__.py falls back
 * to ctypes when this module cannot be built.
 *   gemm(t, path, W, N, K, X, M, Y, n_threads) -> rc    W, X, Y: an int address or a C-contiguous buffer
 * A W address not 16-byte aligned gives rc E_ALIGN (the caller then copies). The GIL is released while the
 * kernel runs. */
#include "qlab_cpu.c"

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
