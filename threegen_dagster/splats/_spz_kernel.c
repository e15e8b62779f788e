/* The SPZ decoder's inner loop in C: the version-2 payload fields of a block of gaussians written
 * as the float32 rows of pyspz's PLY body, a row at a time.
 *
 * An optional extension (spz_unpack.KERNEL): where it is not built (no C compiler), numpy writers
 * do the same work, and the tests check that both give the same bytes. numpy spends most of a
 * decode in strided passes over the rows, one per column; here each row is built once, in a small
 * stage that stays in L1, and copied out a stage at a time.
 *
 * The values are spz_unpack's, bit for bit. Every byte-to-float mapping is a table that
 * spz_unpack.KERNEL_TABLES passes in (spz_arith's, replaying pyspz's float32 arithmetic, and the SH
 * values as numpy's writer computes them); the only arithmetic here is
 *   position  (float)(24-bit signed fixed point) * scale                     scale = 2^-fractional_bits
 *   rot w     sqrtf(max(0, 1 - (float)(z_square[z] + (float)(x*x + y*y))))  x*x in double, y*y in float
 * where (float)((double)x*x + y*y) is pyspz's fma(x, x, y*y) for all 65536 byte pairs (test_spz_arith
 * checks them all) and the outer sum is spz_unpack's. So no multiply and add may be fused
 * (-ffp-contract=off), float arithmetic must be done in float (FLT_EVAL_METHOD 0: SSE, not x87), and
 * signed shifts must be arithmetic (GCC and Clang).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#if FLT_EVAL_METHOD != 0
#error "the SPZ kernel needs float arithmetic evaluated in float (FLT_EVAL_METHOD 0)"
#endif
#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the SPZ kernel reads the payload's little-endian positions as native integers"
#endif

#define KERNEL_VERSION 1 /* spz_unpack refuses a build of another version (a stale build) */

typedef struct { /* spz_unpack.KERNEL_TABLES, in this order */
    float alpha[256], color[256], scale[256], rotation[256], sh[256];
    double z_square[256];
} Tables;

typedef struct {
    const uint8_t *pos, *alpha, *color, *scale, *rot, *sh;
    const Tables *t;
    float fixed_scale;
} Fields;

/* Always inlined into a call with constant k and normals, so the row layout is known at compile
 * time and the stage copy is a few wide moves. */
static inline __attribute__((always_inline)) void unpack_rows(Py_ssize_t m, const int k, const int normals,
                                                                const Fields *f, char *out) {
    enum { STAGE = 4096, MIN_WIDTH = 14 }; /* floats: 16 KiB */
    const int width = 14 + 3 * k + (normals ? 3 : 0), dc = normals ? 6 : 3, op = dc + 3 + 3 * k,
              block = STAGE / width;
    const Tables *t = f->t;
    const float fixed_scale = f->fixed_scale;
    float stage[STAGE], w[STAGE / MIN_WIDTH];
    for (Py_ssize_t lo = 0; lo < m; lo += block) {
        const int count = m - lo < block ? (int)(m - lo) : block;
        const uint8_t *rot = f->rot + 3 * lo;
        for (int r = 0; r < count; r++) { /* rot w first, in loops of their own that pipeline well */
            const double x = t->rotation[rot[3 * r]];
            const float y = t->rotation[rot[3 * r + 1]], inner = (float)(x * x + (double)(y * y));
            const float sum = 1.0f - (float)(t->z_square[rot[3 * r + 2]] + (double)inner);
            w[r] = sum > 0.0f ? sum : 0.0f;
        }
        for (int r = 0; r < count; r++)
            w[r] = sqrtf(w[r]);
        for (int r = 0; r < count; r++) {
            const Py_ssize_t i = lo + r;
            float *row = stage + r * width;
            /* each coordinate read as the 4 little-endian bytes that end at its top byte (x: that start
             * at its low byte, and the extra byte shifted out), then sign-extended by an arithmetic shift */
            const uint8_t *p = f->pos + 9 * i;
            uint32_t x, y, z;
            memcpy(&x, p, 4);
            memcpy(&y, p + 2, 4);
            memcpy(&z, p + 5, 4);
            row[0] = (float)((int32_t)(x << 8) >> 8) * fixed_scale;
            row[1] = (float)((int32_t)y >> 8) * fixed_scale;
            row[2] = (float)((int32_t)z >> 8) * fixed_scale;
            if (normals)
                row[3] = row[4] = row[5] = 0.0f;
            const uint8_t *cb = f->color + 3 * i, *sb = f->scale + 3 * i, *rb = f->rot + 3 * i;
            for (int c = 0; c < 3; c++) {
                row[dc + c] = t->color[cb[c]];
                row[op + 1 + c] = t->scale[sb[c]];
                row[op + 5 + c] = t->rotation[rb[c]];
            }
            const uint8_t *sh = f->sh + (Py_ssize_t)3 * k * i; /* coefficient-major, channel innermost */
            for (int j = 0; j < k; j++)
                for (int ch = 0; ch < 3; ch++)
                    row[dc + 3 + ch * k + j] = t->sh[sh[3 * j + ch]];
            row[op] = t->alpha[f->alpha[i]];
            row[op + 4] = w[r];
        }
        memcpy(out + (Py_ssize_t)4 * width * lo, stage, (size_t)4 * width * count); /* out need not be aligned */
    }
}

static int need(const Py_buffer *buf, Py_ssize_t size, const char *what) {
    if (buf->len >= size)
        return 1;
    PyErr_Format(PyExc_ValueError, "%s: %zd bytes given, %zd needed", what, buf->len, size);
    return 0;
}

PyDoc_STRVAR(unpack_doc,
"unpack(rows, positions, alphas, colors, scales, rotations, sh, tables, k, normals, fixed_scale)\n\n"
"Fill ``rows``, a writable buffer of m float32 rows of pyspz's PLY layout (k SH coefficients per\n"
"channel, normals or not), from the version-2 payload fields of those m gaussians. ``tables`` is\n"
"spz_unpack.KERNEL_TABLES; ``fixed_scale`` is 2^-fractional_bits as a float32. Releases the GIL.");

static PyObject *unpack(PyObject *Py_UNUSED(module), PyObject *args) {
    Py_buffer rows, pos, alpha, color, scale, rot, sh, tables;
    int k, normals;
    float fixed_scale;
    if (!PyArg_ParseTuple(args, "w*y*y*y*y*y*y*y*ipf:unpack", &rows, &pos, &alpha, &color, &scale, &rot, &sh,
                          &tables, &k, &normals, &fixed_scale))
        return NULL;
    PyObject *result = NULL;
    const int width = 14 + 3 * k + (normals ? 3 : 0);
    const Py_ssize_t m = width > 0 ? rows.len / (4 * width) : 0;
    if (k != 0 && k != 3 && k != 8 && k != 15)
        PyErr_Format(PyExc_ValueError, "k = %d SH coefficients per channel, expected 0, 3, 8 or 15", k);
    else if (rows.len % (4 * width))
        PyErr_Format(PyExc_ValueError, "rows: %zd bytes is not a whole number of %d-float rows", rows.len, width);
    else if (need(&pos, 9 * m, "positions") && need(&alpha, m, "alphas") && need(&color, 3 * m, "colors") &&
             need(&scale, 3 * m, "scales") && need(&rot, 3 * m, "rotations") && need(&sh, 3 * k * m, "sh") &&
             need(&tables, sizeof(Tables), "tables")) {
        if ((uintptr_t)tables.buf % _Alignof(Tables)) {
            PyErr_SetString(PyExc_ValueError, "tables: not aligned for float64");
        } else {
            const Fields f = {pos.buf, alpha.buf, color.buf, scale.buf, rot.buf, sh.buf, tables.buf, fixed_scale};
            Py_BEGIN_ALLOW_THREADS
            switch (k << 1 | normals) { /* SH degrees 0 to 3, with and without normals */
#define CASE(K, N) case K << 1 | N: unpack_rows(m, K, N, &f, rows.buf); break;
                CASE(0, 0) CASE(0, 1) CASE(3, 0) CASE(3, 1) CASE(8, 0) CASE(8, 1) CASE(15, 0) CASE(15, 1)
#undef CASE
            }
            Py_END_ALLOW_THREADS
            result = Py_NewRef(Py_None);
        }
    }
    PyBuffer_Release(&rows);
    PyBuffer_Release(&pos);
    PyBuffer_Release(&alpha);
    PyBuffer_Release(&color);
    PyBuffer_Release(&scale);
    PyBuffer_Release(&rot);
    PyBuffer_Release(&sh);
    PyBuffer_Release(&tables);
    return result;
}

static PyMethodDef methods[] = {
    {"unpack", unpack, METH_VARARGS, unpack_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "_spz_kernel",
    .m_doc = "The SPZ decoder's inner loop in C (see spz_unpack).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__spz_kernel(void) {
    PyObject *mod = PyModule_Create(&module);
    if (mod && (PyModule_AddIntConstant(mod, "VERSION", KERNEL_VERSION) < 0 ||
                PyModule_AddIntConstant(mod, "TABLES_BYTES", sizeof(Tables)) < 0)) {
        Py_DECREF(mod);
        return NULL;
    }
    return mod;
}
