/* CPython binding of the CABAC core (cabac.c): one tensor per call, numpy arrays (or any buffer)
 * in and out, the GIL released while coding so that tensors can be coded on several threads.
 * The buffer protocol is used instead of the numpy C-API so the module builds without numpy
 * headers and cannot be broken by numpy ABI changes. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <string.h>

#include "cabac.h"

static PyObject *CabacError;

static const char *status_message(nnr_status st) {
    switch (st) {
    case NNR_ERR_ARGUMENT: return "inconsistent tensor parameters (dimensions, unary length or qp density out of range)";
    case NNR_ERR_LEVEL_RANGE: return "a quantisation level is out of range (|level| > 2^28, NaN, or not on the DQ grid)";
    case NNR_ERR_OUTPUT_FULL: return "internal error: CABAC output buffer too small";
    case NNR_ERR_TRUNCATED: return "the CABAC payload is truncated (the decoder ran past its end)";
    case NNR_ERR_CORRUPT: return "the CABAC payload is corrupt (impossible level or missing end of payload)";
    default: return "unknown CABAC error";
    }
}

/* A C-contiguous buffer of `n` items of the given struct format ('i' int32, 'f' float32, 'B' bytes,
 * 'Q' uint64). */
static int get_buffer(PyObject *obj, Py_buffer *view, char format, int writable, Py_ssize_t n, const char *what) {
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) < 0) return -1;
    const char *f = view->format ? view->format : "B";
    if (*f == '<' || *f == '=' || *f == '@') f++;
    Py_ssize_t itemsize = format == 'B' ? 1 : format == 'Q' ? 8 : 4;
    int ok = view->itemsize == itemsize &&
             (format == 'B'   ? (*f == 'B' || *f == 'b' || *f == 'c')
              : format == 'i' ? (*f == 'i' || *f == 'l')
              : format == 'Q' ? (*f == 'Q' || *f == 'L')
                              : *f == 'f');
    if (!ok || (n >= 0 && view->len != n * itemsize)) {
        PyErr_Format(PyExc_TypeError, "%s must be a C-contiguous %s buffer%s", what,
                     format == 'i' ? "int32" : format == 'f' ? "float32" : format == 'Q' ? "uint64" : "byte",
                     n < 0             ? ""
                     : format == 'Q'   ? " with one entry point per block row after the first"
                                       : " with one element per weight");
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static int fill_params(nnr_tensor_params *p, unsigned long rows, unsigned long width, int dq, int profile,
                       unsigned long ngtx, int qp_density, int scan_order) {
    memset(p, 0, sizeof(*p));
    if (rows == 0 || width == 0 || rows > 0xffffffffUL || width > 0xffffffffUL ||
        (unsigned long long)rows * width > 0x7fffffffULL) {
        PyErr_SetString(CabacError, "tensor dimensions are zero or too large (at most 2^31 - 1 weights)");
        return -1;
    }
    if (ngtx < 1 || ngtx > NNR_MAX_GTX_FLAGS || qp_density < 0 || qp_density > 7 || dq < 0 || dq > 1 || profile < 0 ||
        profile > 1 || scan_order < 0 || scan_order > 4) {
        PyErr_SetString(CabacError, status_message(NNR_ERR_ARGUMENT));
        return -1;
    }
    p->rows = (uint32_t)rows;
    p->width = (uint32_t)width;
    p->dq = (uint8_t)dq;
    p->profile = (uint8_t)profile;
    p->num_gtx_flags = (uint32_t)ngtx;
    p->qp_density = (uint8_t)qp_density;
    p->scan_order = (uint8_t)scan_order;
    return 0;
}

/* The entry-point array a tensor with several block rows needs (None otherwise); ep->obj NULL when none. */
static int get_entry_points(PyObject *obj, Py_buffer *ep, nnr_tensor_params *p, int writable) {
    ep->obj = NULL;
    Py_ssize_t count = (Py_ssize_t)nnr_block_rows(p) - 1;
    if (count == 0) return 0;
    if (obj == Py_None) {
        PyErr_Format(PyExc_TypeError, "a block scan of %zd block rows needs entry_points", count + 1);
        return -1;
    }
    if (get_buffer(obj, ep, 'Q', writable, count, "entry_points") < 0) {
        ep->obj = NULL;
        return -1;
    }
    p->entry_points = (uint64_t *)ep->buf;
    return 0;
}

static void release_entry_points(Py_buffer *ep) {
    if (ep->obj) PyBuffer_Release(ep);
}

PyDoc_STRVAR(block_rows_doc,
             "block_rows(rows, scan_order) -> int\n\n"
             "Block rows of a tensor with `rows` rows in this scan order (entry points + 1).");

static PyObject *py_block_rows(PyObject *self, PyObject *args) {
    unsigned long rows;
    int scan_order;
    if (!PyArg_ParseTuple(args, "ki", &rows, &scan_order)) return NULL;
    nnr_tensor_params p;
    if (fill_params(&p, rows, 1, 0, 0, 1, 0, scan_order) < 0) return NULL;
    return PyLong_FromUnsignedLong(nnr_block_rows(&p));
}

PyDoc_STRVAR(encode_doc,
             "encode(levels, rows, width, *, dq, profile=1, row_skip=True, estimator_search=False, num_gtx_flags=11,\n"
             "       qp_offset=None, qp_density=2, scan_order=0, entry_points=None) -> (payload, bins)\n\n"
             "CABAC payload of one NDU holding one tensor, and the number of bins it codes (regular and bypass: the\n"
             "unit of the coder's cost). `levels` are int32 reconstruction indices. With a block\n"
             "scan of several block rows, `entry_points` (writable uint64, block_rows - 1) receives NNCodec's packed\n"
             "entry points.");

static PyObject *py_encode(PyObject *self, PyObject *args, PyObject *kw) {
    static char *names[] = {"levels", "rows", "width", "dq", "profile", "row_skip", "estimator_search",
                            "num_gtx_flags", "qp_offset", "qp_density", "scan_order", "entry_points", NULL};
    PyObject *levels_obj, *qp_obj = Py_None, *eps_obj = Py_None;
    unsigned long rows, width, ngtx = 11;
    int dq = 0, profile = 1, row_skip = 1, search = 0, qp_density = 2, scan_order = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Okk|$ppppkOiiO", names, &levels_obj, &rows, &width, &dq, &profile,
                                     &row_skip, &search, &ngtx, &qp_obj, &qp_density, &scan_order, &eps_obj))
        return NULL;
    nnr_tensor_params p;
    if (fill_params(&p, rows, width, dq, profile, ngtx, qp_density, scan_order) < 0) return NULL;
    p.row_skip = (uint8_t)row_skip;
    p.estimator_search = (uint8_t)search;
    if (qp_obj != Py_None) {
        long qp = PyLong_AsLong(qp_obj);
        if (qp == -1 && PyErr_Occurred()) return NULL;
        long limit = 1L << (5 + qp_density);
        if (qp < -limit || qp >= limit) {
            PyErr_Format(CabacError, "qp offset %ld does not fit %d bits", qp, 6 + qp_density);
            return NULL;
        }
        p.has_qp_offset = 1;
        p.qp_offset = (int32_t)qp;
    }
    Py_buffer ep;
    if (get_entry_points(eps_obj, &ep, &p, 1) < 0) return NULL;
    Py_buffer lv;
    if (get_buffer(levels_obj, &lv, 'i', 0, (Py_ssize_t)(rows * width), "levels") < 0) {
        release_entry_points(&ep);
        return NULL;
    }
    const int32_t *levels = (const int32_t *)lv.buf;
    size_t bound, out_len = 0;
    Py_BEGIN_ALLOW_THREADS
    bound = nnr_encode_bound(levels, &p);
    Py_END_ALLOW_THREADS
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)bound);
    if (!out) {
        PyBuffer_Release(&lv);
        release_entry_points(&ep);
        return NULL;
    }
    nnr_status st;
    uint8_t *dst = (uint8_t *)PyBytes_AS_STRING(out);
    Py_BEGIN_ALLOW_THREADS
    st = nnr_encode_tensor(levels, &p, dst, bound, &out_len);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&lv);
    release_entry_points(&ep);
    if (st != NNR_OK) {
        Py_DECREF(out);
        PyErr_SetString(CabacError, status_message(st));
        return NULL;
    }
    if (_PyBytes_Resize(&out, (Py_ssize_t)out_len) < 0) return NULL;
    return Py_BuildValue("(NK)", out, (unsigned long long)p.bins);
}

PyDoc_STRVAR(decode_doc,
             "decode(payload, out, rows, width, *, dq, profile=1, num_gtx_flags=11, has_qp_offset=True,\n"
             "       qp_density=2, scan_order=0, entry_points=None, block_rows=None) -> (qp_offset or None, consumed)\n\n"
             "Decode one tensor's CABAC payload into `out` (writable int32, rows*width reconstruction indices).\n"
             "With entry points, block_rows=(first, end) decodes only those block rows (the GIL is released, so\n"
             "threads can decode disjoint ranges into one array); consumed is 0 unless the range ends the tensor.\n"
             "Raises CabacError on truncated or corrupt input; never reads outside `payload`.");

static PyObject *py_decode(PyObject *self, PyObject *args, PyObject *kw) {
    static char *names[] = {"payload", "out", "rows", "width", "dq", "profile", "num_gtx_flags", "has_qp_offset",
                            "qp_density", "scan_order", "entry_points", "block_rows", NULL};
    PyObject *payload_obj, *out_obj, *eps_obj = Py_None, *range_obj = Py_None;
    unsigned long rows, width, ngtx = 11;
    int dq = 0, profile = 1, has_qp = 1, qp_density = 2, scan_order = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOkk|$ppkpiiOO", names, &payload_obj, &out_obj, &rows, &width, &dq,
                                     &profile, &ngtx, &has_qp, &qp_density, &scan_order, &eps_obj, &range_obj))
        return NULL;
    nnr_tensor_params p;
    if (fill_params(&p, rows, width, dq, profile, ngtx, qp_density, scan_order) < 0) return NULL;
    p.has_qp_offset = (uint8_t)has_qp;
    if (range_obj != Py_None) {
        unsigned int first, end;
        if (!PyArg_ParseTuple(range_obj, "II", &first, &end)) return NULL;
        if (first >= end || end > nnr_block_rows(&p)) {
            PyErr_SetString(PyExc_ValueError, "block_rows must be (first, end) with first < end <= block rows");
            return NULL;
        }
        p.first_block_row = first;
        p.end_block_row = end;
    }
    Py_buffer pl, ov, ep;
    if (get_entry_points(eps_obj, &ep, &p, 0) < 0) return NULL;
    if (get_buffer(payload_obj, &pl, 'B', 0, -1, "payload") < 0) {
        release_entry_points(&ep);
        return NULL;
    }
    if (get_buffer(out_obj, &ov, 'i', 1, (Py_ssize_t)(rows * width), "out") < 0) {
        PyBuffer_Release(&pl);
        release_entry_points(&ep);
        return NULL;
    }
    nnr_status st;
    size_t consumed = 0;
    Py_BEGIN_ALLOW_THREADS
    st = nnr_decode_tensor((const uint8_t *)pl.buf, (size_t)pl.len, &p, (int32_t *)ov.buf, &consumed);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&pl);
    PyBuffer_Release(&ov);
    release_entry_points(&ep);
    if (st != NNR_OK) {
        PyErr_SetString(CabacError, status_message(st));
        return NULL;
    }
    if (has_qp) return Py_BuildValue("(in)", (int)p.qp_offset, (Py_ssize_t)consumed);
    return Py_BuildValue("(On)", Py_None, (Py_ssize_t)consumed);
}

PyDoc_STRVAR(quantize_doc,
             "quantize(weights, out, step, *, dq, rdoq=0.0, num_gtx_flags=11) -> None\n\n"
             "float32 weights -> int32 reconstruction indices: round(w/step), the 8-state DQ trellis, or (rdoq > 0,\n"
             "no DQ) rate-distortion optimised uniform quantisation with lambda scale `rdoq`.");

static PyObject *py_quantize(PyObject *self, PyObject *args, PyObject *kw) {
    static char *names[] = {"weights", "out", "step", "dq", "rdoq", "num_gtx_flags", NULL};
    PyObject *w_obj, *out_obj;
    double step, rdoq = 0.0;
    int dq = 0;
    unsigned long ngtx = 11;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOd|$pdk", names, &w_obj, &out_obj, &step, &dq, &rdoq, &ngtx))
        return NULL;
    if (rdoq > 0.0 && dq) {
        PyErr_SetString(CabacError, "RDOQ is implemented for uniform quantisation only: disable DQ to use it");
        return NULL;
    }
    Py_buffer wv, ov;
    if (get_buffer(w_obj, &wv, 'f', 0, -1, "weights") < 0) return NULL;
    Py_ssize_t n = wv.len / 4;
    if (get_buffer(out_obj, &ov, 'i', 1, n, "out") < 0) {
        PyBuffer_Release(&wv);
        return NULL;
    }
    uint8_t *scratch = NULL;
    if (dq && n > 0) {
        scratch = (uint8_t *)PyMem_RawMalloc(nnr_trellis_scratch_size((size_t)n));
        if (!scratch) {
            PyBuffer_Release(&wv);
            PyBuffer_Release(&ov);
            return PyErr_NoMemory();
        }
    }
    nnr_status st;
    Py_BEGIN_ALLOW_THREADS
    if (rdoq > 0.0)
        st = nnr_quantize_rdoq((const float *)wv.buf, (size_t)n, (float)step, rdoq, (uint32_t)ngtx, (int32_t *)ov.buf);
    else
        st = nnr_quantize((const float *)wv.buf, (size_t)n, (float)step, (uint8_t)dq, (int32_t *)ov.buf, scratch);
    Py_END_ALLOW_THREADS
    PyMem_RawFree(scratch);
    PyBuffer_Release(&wv);
    PyBuffer_Release(&ov);
    if (st != NNR_OK) {
        PyErr_SetString(CabacError, status_message(st));
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *py_step_size(PyObject *self, PyObject *args) {
    int qp, density;
    if (!PyArg_ParseTuple(args, "ii", &qp, &density)) return NULL;
    if (density < 0 || density > 7) {
        PyErr_SetString(CabacError, "qp_density must be 0..7");
        return NULL;
    }
    return PyFloat_FromDouble((double)nnr_step_size(qp, (uint32_t)density));
}

static PyMethodDef methods[] = {
    {"encode", (PyCFunction)(void (*)(void))py_encode, METH_VARARGS | METH_KEYWORDS, encode_doc},
    {"decode", (PyCFunction)(void (*)(void))py_decode, METH_VARARGS | METH_KEYWORDS, decode_doc},
    {"quantize", (PyCFunction)(void (*)(void))py_quantize, METH_VARARGS | METH_KEYWORDS, quantize_doc},
    {"block_rows", py_block_rows, METH_VARARGS, block_rows_doc},
    {"step_size", py_step_size, METH_VARARGS, "step_size(qp, qp_density) -> float32 step as NNC defines it"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_cabac", "MPEG-NNR CABAC core (C).", -1, methods};

PyMODINIT_FUNC PyInit__cabac(void) {
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    CabacError = PyErr_NewException("edgeprune.nnr._cabac.CabacError", PyExc_ValueError, NULL);
    if (!CabacError || PyModule_AddObject(m, "CabacError", CabacError) < 0) {
        Py_XDECREF(CabacError);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(CabacError);
    PyModule_AddIntConstant(m, "MAX_GTX_FLAGS", NNR_MAX_GTX_FLAGS);
    PyModule_AddIntConstant(m, "MAX_ABS_LEVEL", NNR_MAX_ABS_LEVEL);
    return m;
}
