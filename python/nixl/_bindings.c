/* nixl._bindings — the native layer of the `nixl` Python package.

   A CPython extension written against the CPython C API only (no pybind11,
   no C++, no numpy headers: numpy arrays come in through the buffer
   protocol). It compiles nixl.h, nixl_ucx.h and nixl_verbs.h with
   NIXL_IMPLEMENTATION and offers NIXL's binding-layer names: descriptor
   lists (nixlXferDList, nixlRegDList, nixlRemoteDList), nixlAgentConfig,
   nixlAgent with NIXL's camelCase methods, the segment/op/status constants,
   the typed exceptions and nixlXferTelemetry. nixl/_api.py builds NIXL's
   `nixl_agent` on top of it.

   SECTIONS
       >>errors      status codes become typed exceptions
       >>dlist       descriptor lists (a C array; numpy N x 3 copies in one go)
       >>handles     transfer and prepared-list handles, and their table
       >>config      nixlAgentConfig
       >>agent       nixlAgent: backends, memory, metadata, transfers, notifs
       >>module      constants, types, module init

   THREADS AND THE GIL
   Every call that can wait or take long releases the GIL around the nixl
   call. nixl never calls back into Python (the default logger writes to
   stderr), so holding the GIL while nixl takes its agent lock cannot
   deadlock. What the GIL no longer protects while it is released:
   - a descriptor list passed in: it is marked exported and refuses changes
     until the call returns (like a bytearray with a live memoryview);
   - a handle: its table entry counts users; a release that finds users
     only marks it, and the last user releases it. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#define NIXL_IMPLEMENTATION
#include "nixl.h"
#include "nixl_ucx.h"
#include "nixl_verbs.h"
#include "nixl_posix.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define _PYNIXL_NSTATUS 13 /* SUCCESS(0) .. NO_TELEMETRY(-12) */

/* ------------------------------------------------------------------------ */
// >>errors
/* ------------------------------------------------------------------------ */

static PyObject *_pynixl_exc[_PYNIXL_NSTATUS];
static const char *const _pynixl_exc_names[_PYNIXL_NSTATUS] = {
    NULL,
    "nixlNotPostedError",
    "nixlInvalidParamError",
    "nixlBackendError",
    "nixlNotFoundError",
    "nixlMismatchError",
    "nixlNotAllowedError",
    "nixlRepostActiveError",
    "nixlUnknownError",
    "nixlNotSupportedError",
    "nixlRemoteDisconnectError",
    "nixlCancelledError",
    "nixlNoTelemetryError",
};

static PyObject *_pynixl_exc_of(nixl_status_t st) {
    int i = -(int)st;
    return i > 0 && i < _PYNIXL_NSTATUS ? _pynixl_exc[i] : _pynixl_exc[-(int)NIXL_ERR_UNKNOWN];
}

/* Raises the exception of st: "NIXL_ERR_NOT_FOUND: <what>"; returns NULL. */
static PyObject *_pynixl_raise(nixl_status_t st, const char *what) {
    PyErr_Format(_pynixl_exc_of(st), "%s: %s", nixl_status_str(st), what);
    return NULL;
}

/* IN_PROG and SUCCESS come back as ints; an error raises. */
static PyObject *_pynixl_status(nixl_status_t st, const char *what) {
    if (st < 0) return _pynixl_raise(st, what);
    return PyLong_FromLong((long)st);
}

/* ------------------------------------------------------------------------ */
// >>dlist
/* ------------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    int mem;
    int sorted;
    int exports;      /* > 0 while a nixl call without the GIL reads d */
    nixl_desc_t *d;
    Py_ssize_t n, cap;
    PyObject **meta;  /* nixlRegDList only: one bytes object per descriptor */
} _pynixl_dlist;

static PyTypeObject _pynixl_xfer_dlist_type, _pynixl_reg_dlist_type, _pynixl_remote_dlist_type;

static int _pynixl_is_reg(const _pynixl_dlist *l) {
    return PyObject_TypeCheck((PyObject *)l, &_pynixl_reg_dlist_type);
}

static int _pynixl_dlist_is(PyObject *o) {
    return PyObject_TypeCheck(o, &_pynixl_xfer_dlist_type) || PyObject_TypeCheck(o, &_pynixl_reg_dlist_type);
}

static int _pynixl_check_mem(long mem) {
    if (mem >= 0 && mem < NIXL_MEM_COUNT) return 0;
    PyErr_Format(_pynixl_exc[2], "NIXL_ERR_INVALID_PARAM: unknown memory type %ld", mem);
    return -1;
}

static int _pynixl_dlist_mutable(const _pynixl_dlist *l) {
    if (!l->exports) return 0;
    PyErr_SetString(PyExc_BufferError, "descriptor list is in use by a nixl call on another thread");
    return -1;
}

static int _pynixl_dlist_reserve(_pynixl_dlist *l, Py_ssize_t want) {
    Py_ssize_t cap = l->cap ? l->cap : 8;
    nixl_desc_t *d;
    if (want <= l->cap) return 0;
    while (cap < want) cap *= 2;
    if (!l->cap && want > 8) cap = want; /* a list made whole at once (numpy): its exact size */
    d = (nixl_desc_t *)PyMem_Realloc(l->d, (size_t)cap * sizeof *d);
    if (!d) {
        PyErr_NoMemory();
        return -1;
    }
    l->d = d;
    if (_pynixl_is_reg(l)) {
        PyObject **m = (PyObject **)PyMem_Realloc(l->meta, (size_t)cap * sizeof *m);
        if (!m) {
            PyErr_NoMemory();
            return -1;
        }
        memset(m + l->cap, 0, (size_t)(cap - l->cap) * sizeof *m);
        l->meta = m;
    }
    l->cap = cap;
    return 0;
}

static void _pynixl_dlist_drop_meta(_pynixl_dlist *l, Py_ssize_t from) {
    Py_ssize_t i;
    if (!l->meta) return;
    for (i = from; i < l->n; i++) Py_CLEAR(l->meta[i]);
}

/* meta of a registration descriptor, kept as bytes (NIXL 0.6+): bytes, or
   str encoded as UTF-8 */
static PyObject *_pynixl_meta_of(PyObject *o) {
    if (!o || o == Py_None) return PyBytes_FromStringAndSize("", 0);
    if (PyBytes_Check(o)) {
        Py_INCREF(o);
        return o;
    }
    if (PyUnicode_Check(o)) return PyUnicode_AsUTF8String(o);
    PyErr_SetString(_pynixl_exc[2], "NIXL_ERR_INVALID_PARAM: a descriptor's meta must be str or bytes");
    return NULL;
}

/* One descriptor from a tuple (addr, len, dev[, meta]). */
static int _pynixl_desc_from_tuple(PyObject *t, int reg, nixl_desc_t *d, PyObject **meta) {
    PyObject *seq = PySequence_Fast(t, "a descriptor must be a tuple (addr, len, dev_id)");
    Py_ssize_t n;
    unsigned long long v[3];
    int i, rc = -1;
    if (!seq) {
        PyErr_SetString(_pynixl_exc[2], "NIXL_ERR_INVALID_PARAM: a descriptor must be a tuple (addr, len, dev_id)");
        return -1;
    }
    n = PySequence_Fast_GET_SIZE(seq);
    if (n != 3 && !(reg && n == 4)) {
        PyErr_Format(_pynixl_exc[2], "NIXL_ERR_INVALID_PARAM: a descriptor has %s fields, not %zd",
                     reg ? "3 or 4 (addr, len, dev_id, meta)" : "3 (addr, len, dev_id)", n);
        goto out;
    }
    for (i = 0; i < 3; i++) {
        PyObject *x = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyLong_Check(x) && !PyIndex_Check(x)) {
            PyErr_Format(_pynixl_exc[2], "NIXL_ERR_INVALID_PARAM: descriptor field %d is not an integer", i);
            goto out;
        }
        x = PyNumber_Index(x);
        if (!x) goto out;
        v[i] = PyLong_AsUnsignedLongLong(x);
        Py_DECREF(x);
        if (PyErr_Occurred()) {
            PyErr_Clear();
            PyErr_Format(_pynixl_exc[2], "NIXL_ERR_INVALID_PARAM: descriptor field %d is negative or over 64 bits", i);
            goto out;
        }
    }
    d->addr = (uintptr_t)v[0];
    d->len = (size_t)v[1];
    d->dev_id = (uint64_t)v[2];
    if (reg && !(*meta = _pynixl_meta_of(n == 4 ? PySequence_Fast_GET_ITEM(seq, 3) : NULL))) goto out;
    rc = 0;
out:
    Py_DECREF(seq);
    return rc;
}

static int _pynixl_dlist_add(_pynixl_dlist *l, PyObject *t) {
    PyObject *meta = NULL;
    if (_pynixl_dlist_mutable(l) || _pynixl_dlist_reserve(l, l->n + 1)) return -1;
    if (_pynixl_desc_from_tuple(t, _pynixl_is_reg(l), &l->d[l->n], &meta)) return -1;
    if (l->meta) l->meta[l->n] = meta;
    l->n++;
    l->sorted = 0;
    return 0;
}

/* An integer buffer's element (signed or unsigned, 1..8 bytes) as u64;
   -1 with an exception for a negative value. */
static int _pynixl_buf_u64(const char *p, const Py_buffer *b, unsigned long long *out) {
    char f = b->format ? b->format[strlen(b->format) - 1] : 'B';
    long long s;
    switch (b->itemsize) {
    case 8: {
        uint64_t u;
        memcpy(&u, p, 8);
        s = (long long)u;
        if (strchr("QLN", f)) {
            *out = u;
            return 0;
        }
        break;
    }
    case 4: {
        uint32_t u;
        memcpy(&u, p, 4);
        if (strchr("ILN", f)) {
            *out = u;
            return 0;
        }
        s = (int32_t)u;
        break;
    }
    case 2: {
        uint16_t u;
        memcpy(&u, p, 2);
        if (f == 'H') {
            *out = u;
            return 0;
        }
        s = (int16_t)u;
        break;
    }
    default:
        if (f == 'B') {
            *out = (unsigned char)*p;
            return 0;
        }
        s = (signed char)*p;
    }
    if (s < 0) return -1;
    *out = (unsigned long long)s;
    return 0;
}

static int _pynixl_buf_is_int(const Py_buffer *b) {
    const char *f = b->format ? b->format : "B";
    if (*f == '@' || *f == '=' || *f == '<') f++;
    return strlen(f) == 1 && strchr("bBhHiIlLqQnN", *f) && (b->itemsize == 1 || b->itemsize == 2 ||
                                                          b->itemsize == 4 || b->itemsize == 8);
}

/* An N x 3 integer array (numpy, memoryview...): one pass, a plain copy
   when it is C-contiguous 64-bit (the layout of nixl_desc_t). */
static int _pynixl_dlist_from_buffer(_pynixl_dlist *l, const Py_buffer *b) {
    Py_ssize_t n, i;
    int j;
    if (b->ndim != 2 || b->shape[1] != 3 || !_pynixl_buf_is_int(b)) {
        PyErr_SetString(_pynixl_exc[2], "NIXL_ERR_INVALID_PARAM: an array of descriptors must be N x 3 integers "
                                        "(addr, len, dev_id)");
        return -1;
    }
    n = b->shape[0];
    if (_pynixl_dlist_reserve(l, l->n + n)) return -1;
    if (b->itemsize == 8 && sizeof(nixl_desc_t) == 24 && PyBuffer_IsContiguous(b, 'C') &&
        !strchr(b->format ? b->format : "", 'q') && !strchr(b->format ? b->format : "", 'l')) {
        memcpy(l->d + l->n, b->buf, (size_t)n * sizeof(nixl_desc_t)); /* unsigned: no sign to check */
    } else {
        for (i = 0; i < n; i++) {
            unsigned long long v[3];
            for (j = 0; j < 3; j++) {
                const char *p = (const char *)b->buf + i * b->strides[0] + j * b->strides[1];
                if (_pynixl_buf_u64(p, b, &v[j])) {
                    PyErr_Format(_pynixl_exc[2], "NIXL_ERR_INVALID_PARAM: row %zd of the descriptor array has a "
                                 "negative value", i);
                    return -1;
                }
            }
            l->d[l->n + i].addr = (uintptr_t)v[0];
            l->d[l->n + i].len = (size_t)v[1];
            l->d[l->n + i].dev_id = (uint64_t)v[2];
        }
    }
    if (l->meta)
        for (i = 0; i < n; i++)
            if (!(l->meta[l->n + i] = PyBytes_FromStringAndSize("", 0))) return -1;
    l->n += n;
    return 0;
}

static int _pynixl_dlist_extend(_pynixl_dlist *l, PyObject *descs) {
    PyObject *seq;
    Py_ssize_t i, n;
    if (!descs || descs == Py_None) return 0;
    if (_pynixl_dlist_is(descs)) {
        _pynixl_dlist *o = (_pynixl_dlist *)descs;
        if (_pynixl_dlist_reserve(l, l->n + o->n)) return -1;
        memcpy(l->d + l->n, o->d, (size_t)o->n * sizeof *o->d);
        for (i = 0; l->meta && i < o->n; i++)
            if (!(l->meta[l->n + i] = o->meta && o->meta[i] ? Py_NewRef(o->meta[i]) : PyBytes_FromStringAndSize("", 0)))
                return -1;
        l->n += o->n;
        return 0;
    }
    if (PyObject_CheckBuffer(descs) && !PyBytes_Check(descs)) {
        Py_buffer b;
        int rc;
        if (PyObject_GetBuffer(descs, &b, PyBUF_RECORDS_RO) != 0) return -1;
        rc = _pynixl_dlist_from_buffer(l, &b);
        PyBuffer_Release(&b);
        return rc;
    }
    seq = PySequence_Fast(descs, "descriptors must be a list of tuples or an N x 3 integer array");
    if (!seq) {
        PyErr_Clear();
        PyErr_SetString(_pynixl_exc[2],
                        "NIXL_ERR_INVALID_PARAM: descriptors must be a list of tuples or an N x 3 integer array");
        return -1;
    }
    n = PySequence_Fast_GET_SIZE(seq);
    if (_pynixl_dlist_reserve(l, l->n + n)) goto fail;
    for (i = 0; i < n; i++)
        if (_pynixl_dlist_add(l, PySequence_Fast_GET_ITEM(seq, i))) goto fail;
    Py_DECREF(seq);
    return 0;
fail:
    Py_DECREF(seq);
    return -1;
}

static int _pynixl_dlist_init(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kws[] = {"type", "descs", "sorted", NULL};
    _pynixl_dlist *l = (_pynixl_dlist *)self;
    long mem = 0;
    PyObject *descs = NULL;
    int sorted = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "l|Op:nixlDList", kws, &mem, &descs, &sorted)) return -1;
    if (_pynixl_check_mem(mem) || _pynixl_dlist_mutable(l)) return -1;
    _pynixl_dlist_drop_meta(l, 0);
    l->n = 0;
    l->mem = (int)mem;
    if (_pynixl_dlist_extend(l, descs)) return -1;
    l->sorted = sorted;
    return 0;
}

static void _pynixl_dlist_dealloc(PyObject *self) {
    _pynixl_dlist *l = (_pynixl_dlist *)self;
    _pynixl_dlist_drop_meta(l, 0);
    PyMem_Free(l->meta);
    PyMem_Free(l->d);
    Py_TYPE(self)->tp_free(self);
}

static Py_ssize_t _pynixl_dlist_len(PyObject *self) { return ((_pynixl_dlist *)self)->n; }

static int _pynixl_dlist_index_ok(const _pynixl_dlist *l, Py_ssize_t *i) {
    if (*i < 0) *i += l->n;
    if (*i >= 0 && *i < l->n) return 0;
    PyErr_SetString(PyExc_IndexError, "descriptor index out of range");
    return -1;
}

static PyObject *_pynixl_dlist_item(PyObject *self, Py_ssize_t i) {
    _pynixl_dlist *l = (_pynixl_dlist *)self;
    const nixl_desc_t *d;
    if (_pynixl_dlist_index_ok(l, &i)) return NULL;
    d = &l->d[i];
    if (l->meta)
        return Py_BuildValue("(KKKO)", (unsigned long long)d->addr, (unsigned long long)d->len,
                             (unsigned long long)d->dev_id, l->meta[i] ? l->meta[i] : Py_None);
    return Py_BuildValue("(KKK)", (unsigned long long)d->addr, (unsigned long long)d->len,
                         (unsigned long long)d->dev_id);
}

static int _pynixl_dlist_ass_item(PyObject *self, Py_ssize_t i, PyObject *v) {
    _pynixl_dlist *l = (_pynixl_dlist *)self;
    nixl_desc_t d;
    PyObject *meta = NULL;
    if (!v) {
        PyErr_SetString(PyExc_TypeError, "use remDesc(i) to remove a descriptor");
        return -1;
    }
    if (_pynixl_dlist_mutable(l) || _pynixl_dlist_index_ok(l, &i)) return -1;
    if (_pynixl_desc_from_tuple(v, l->meta != NULL, &d, &meta)) return -1;
    l->d[i] = d;
    if (l->meta) Py_XSETREF(l->meta[i], meta);
    l->sorted = 0;
    return 0;
}

static PyObject *_pynixl_dlist_add_desc(PyObject *self, PyObject *t) {
    if (_pynixl_dlist_add((_pynixl_dlist *)self, t)) return NULL;
    Py_RETURN_NONE;
}

static PyObject *_pynixl_dlist_rem_desc(PyObject *self, PyObject *arg) {
    _pynixl_dlist *l = (_pynixl_dlist *)self;
    Py_ssize_t i = PyNumber_AsSsize_t(arg, PyExc_IndexError);
    if ((i == -1 && PyErr_Occurred()) || _pynixl_dlist_mutable(l) || _pynixl_dlist_index_ok(l, &i)) return NULL;
    memmove(l->d + i, l->d + i + 1, (size_t)(l->n - i - 1) * sizeof *l->d);
    if (l->meta) {
        Py_CLEAR(l->meta[i]);
        memmove(l->meta + i, l->meta + i + 1, (size_t)(l->n - i - 1) * sizeof *l->meta);
        l->meta[l->n - 1] = NULL;
    }
    l->n--;
    Py_RETURN_NONE;
}

static PyObject *_pynixl_dlist_clear(PyObject *self, PyObject *unused) {
    _pynixl_dlist *l = (_pynixl_dlist *)self;
    (void)unused;
    if (_pynixl_dlist_mutable(l)) return NULL;
    _pynixl_dlist_drop_meta(l, 0);
    l->n = 0;
    Py_RETURN_NONE;
}

/* trim: the descriptors without their meta, as a nixlXferDList (a copy) */
static PyObject *_pynixl_dlist_trim(PyObject *self, PyObject *unused) {
    _pynixl_dlist *l = (_pynixl_dlist *)self, *r;
    (void)unused;
    r = (_pynixl_dlist *)PyObject_CallFunction((PyObject *)&_pynixl_xfer_dlist_type, "(i)", l->mem);
    if (!r) return NULL;
    if (_pynixl_dlist_reserve(r, l->n)) {
        Py_DECREF(r);
        return NULL;
    }
    if (l->n) memcpy(r->d, l->d, (size_t)l->n * sizeof *l->d);
    r->n = l->n;
    r->sorted = l->sorted;
    return (PyObject *)r;
}

/* index of the first descriptor equal to (addr, len, dev) (meta ignored) */
static PyObject *_pynixl_dlist_index(PyObject *self, PyObject *t) {
    _pynixl_dlist *l = (_pynixl_dlist *)self;
    nixl_desc_t d;
    PyObject *meta = NULL;
    Py_ssize_t i;
    if (_pynixl_desc_from_tuple(t, 1, &d, &meta)) return NULL;
    Py_XDECREF(meta);
    for (i = 0; i < l->n; i++)
        if (l->d[i].addr == d.addr && l->d[i].len == d.len && l->d[i].dev_id == d.dev_id) return PyLong_FromSsize_t(i);
    return _pynixl_raise(NIXL_ERR_NOT_FOUND, "no such descriptor in the list");
}

static int _pynixl_desc_cmp(const nixl_desc_t *a, const nixl_desc_t *b) {
    if (a->dev_id != b->dev_id) return a->dev_id < b->dev_id ? -1 : 1;
    if (a->addr != b->addr) return a->addr < b->addr ? -1 : 1;
    return a->len < b->len ? -1 : a->len > b->len;
}

static PyObject *_pynixl_dlist_verify_sorted(PyObject *self, PyObject *unused) {
    _pynixl_dlist *l = (_pynixl_dlist *)self;
    Py_ssize_t i;
    (void)unused;
    for (i = 1; i < l->n; i++)
        if (_pynixl_desc_cmp(&l->d[i - 1], &l->d[i]) > 0) Py_RETURN_FALSE;
    l->sorted = 1;
    Py_RETURN_TRUE;
}

static PyObject *_pynixl_dlist_get_type(PyObject *self, PyObject *unused) {
    (void)unused;
    return PyLong_FromLong(((_pynixl_dlist *)self)->mem);
}
static PyObject *_pynixl_dlist_count(PyObject *self, PyObject *unused) {
    (void)unused;
    return PyLong_FromSsize_t(((_pynixl_dlist *)self)->n);
}
static PyObject *_pynixl_dlist_is_empty(PyObject *self, PyObject *unused) {
    (void)unused;
    return PyBool_FromLong(((_pynixl_dlist *)self)->n == 0);
}
static PyObject *_pynixl_dlist_is_sorted(PyObject *self, PyObject *unused) {
    (void)unused;
    return PyBool_FromLong(((_pynixl_dlist *)self)->sorted);
}

static PyObject *_pynixl_dlist_repr(PyObject *self) {
    _pynixl_dlist *l = (_pynixl_dlist *)self;
    return PyUnicode_FromFormat("%s(%s, %zd descriptors)", Py_TYPE(self)->tp_name, nixl_mem_str((nixl_mem_t)l->mem),
                                l->n);
}

static PyObject *_pynixl_dlist_print(PyObject *self, PyObject *unused) {
    _pynixl_dlist *l = (_pynixl_dlist *)self;
    Py_ssize_t i;
    (void)unused;
    PySys_WriteStdout("%s: %zd descriptors of %s\n", Py_TYPE(self)->tp_name, l->n, nixl_mem_str((nixl_mem_t)l->mem));
    for (i = 0; i < l->n; i++)
        PySys_WriteStdout("  [%zd] addr=0x%llx len=%llu dev=%llu\n", i, (unsigned long long)l->d[i].addr,
                          (unsigned long long)l->d[i].len, (unsigned long long)l->d[i].dev_id);
    Py_RETURN_NONE;
}

static int _pynixl_meta_equal(const _pynixl_dlist *a, const _pynixl_dlist *b) {
    Py_ssize_t i;
    if (!a->meta || !b->meta) return 1;
    for (i = 0; i < a->n; i++) {
        int r = PyObject_RichCompareBool(a->meta[i], b->meta[i], Py_EQ);
        if (r <= 0) return r;
    }
    return 1;
}

static PyObject *_pynixl_dlist_richcmp(PyObject *a, PyObject *b, int op) {
    const _pynixl_dlist *x = (const _pynixl_dlist *)a, *y = (const _pynixl_dlist *)b;
    int eq;
    if ((op != Py_EQ && op != Py_NE) || !_pynixl_dlist_is(b) || _pynixl_is_reg(x) != _pynixl_is_reg(y))
        Py_RETURN_NOTIMPLEMENTED; /* a registration list never equals a transfer list */
    eq = x->mem == y->mem && x->n == y->n && (!x->n || memcmp(x->d, y->d, (size_t)x->n * sizeof *x->d) == 0);
    if (eq && (eq = _pynixl_meta_equal(x, y)) < 0) return NULL;
    return PyBool_FromLong(op == Py_EQ ? eq : !eq);
}

/* pickling: (type, (mem,), (raw descriptors, metas or None, sorted)) */
static PyObject *_pynixl_dlist_reduce(PyObject *self, PyObject *unused) {
    _pynixl_dlist *l = (_pynixl_dlist *)self;
    PyObject *raw, *metas = Py_None, *r;
    Py_ssize_t i;
    (void)unused;
    raw = PyBytes_FromStringAndSize((const char *)l->d, l->n * (Py_ssize_t)sizeof *l->d);
    if (!raw) return NULL;
    if (l->meta) {
        if (!(metas = PyTuple_New(l->n))) {
            Py_DECREF(raw);
            return NULL;
        }
        for (i = 0; i < l->n; i++) PyTuple_SET_ITEM(metas, i, Py_NewRef(l->meta[i] ? l->meta[i] : Py_None));
    } else {
        Py_INCREF(metas);
    }
    r = Py_BuildValue("(O(i)(NNi))", (PyObject *)Py_TYPE(self), l->mem, raw, metas, l->sorted);
    return r;
}

static PyObject *_pynixl_dlist_setstate(PyObject *self, PyObject *state) {
    _pynixl_dlist *l = (_pynixl_dlist *)self;
    PyObject *raw, *metas;
    int sorted;
    Py_ssize_t n, i;
    if (!PyArg_ParseTuple(state, "SOi:__setstate__", &raw, &metas, &sorted)) return NULL;
    if (PyBytes_GET_SIZE(raw) % (Py_ssize_t)sizeof(nixl_desc_t)) return _pynixl_raise(NIXL_ERR_INVALID_PARAM,
                                                                                      "a pickled list of bad size");
    n = PyBytes_GET_SIZE(raw) / (Py_ssize_t)sizeof(nixl_desc_t);
    if (_pynixl_dlist_mutable(l)) return NULL;
    _pynixl_dlist_drop_meta(l, 0);
    l->n = 0;
    if (_pynixl_dlist_reserve(l, n)) return NULL;
    if (n) memcpy(l->d, PyBytes_AS_STRING(raw), (size_t)n * sizeof(nixl_desc_t));
    for (i = 0; l->meta && i < n; i++) {
        PyObject *m = PyTuple_Check(metas) && i < PyTuple_GET_SIZE(metas) ? PyTuple_GET_ITEM(metas, i) : NULL;
        if (!(l->meta[i] = _pynixl_meta_of(m))) return NULL;
    }
    l->n = n;
    l->sorted = sorted;
    Py_RETURN_NONE;
}

static PyMethodDef _pynixl_dlist_methods[] = {
    {"descCount", _pynixl_dlist_count, METH_NOARGS, "number of descriptors"},
    {"isEmpty", _pynixl_dlist_is_empty, METH_NOARGS, "no descriptors"},
    {"isSorted", _pynixl_dlist_is_sorted, METH_NOARGS, "marked sorted"},
    {"verifySorted", _pynixl_dlist_verify_sorted, METH_NOARGS, "checks order by (dev, addr, len); marks it"},
    {"getType", _pynixl_dlist_get_type, METH_NOARGS, "memory type (DRAM_SEG...)"},
    {"addDesc", _pynixl_dlist_add_desc, METH_O, "appends (addr, len, dev[, meta])"},
    {"append", _pynixl_dlist_add_desc, METH_O, "appends (addr, len, dev[, meta])"},
    {"remDesc", _pynixl_dlist_rem_desc, METH_O, "removes descriptor i"},
    {"clear", _pynixl_dlist_clear, METH_NOARGS, "removes every descriptor"},
    {"trim", _pynixl_dlist_trim, METH_NOARGS, "the descriptors without meta, as a nixlXferDList"},
    {"index", _pynixl_dlist_index, METH_O, "position of a descriptor"},
    {"print", _pynixl_dlist_print, METH_NOARGS, "prints the descriptors"},
    {"__reduce__", _pynixl_dlist_reduce, METH_NOARGS, NULL},
    {"__setstate__", _pynixl_dlist_setstate, METH_O, NULL},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods _pynixl_dlist_seq = {
    .sq_length = _pynixl_dlist_len,
    .sq_item = _pynixl_dlist_item,
    .sq_ass_item = _pynixl_dlist_ass_item,
};

#define _PYNIXL_DLIST_TYPE(var, pyname, doc)                                                                   \
    static PyTypeObject var = {                                                                                \
        PyVarObject_HEAD_INIT(NULL, 0).tp_name = "nixl._bindings." pyname,                                     \
        .tp_basicsize = sizeof(_pynixl_dlist),                                                                 \
        .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,                                                  \
        .tp_doc = doc,                                                                                         \
        .tp_new = PyType_GenericNew,                                                                           \
        .tp_init = _pynixl_dlist_init,                                                                         \
        .tp_dealloc = _pynixl_dlist_dealloc,                                                                   \
        .tp_repr = _pynixl_dlist_repr,                                                                         \
        .tp_as_sequence = &_pynixl_dlist_seq,                                                                  \
        .tp_richcompare = _pynixl_dlist_richcmp,                                                               \
        .tp_methods = _pynixl_dlist_methods,                                                                   \
    }
_PYNIXL_DLIST_TYPE(_pynixl_xfer_dlist_type, "nixlXferDList",
                   "nixlXferDList(type, descs=None, sorted=False): descriptors (addr, len, dev_id) of one memory "
                   "type for transfers; descs is a list of tuples or an N x 3 integer array");
_PYNIXL_DLIST_TYPE(_pynixl_reg_dlist_type, "nixlRegDList",
                   "nixlRegDList(type, descs=None, sorted=False): descriptors (addr, len, dev_id, meta) to "
                   "register");
_PYNIXL_DLIST_TYPE(_pynixl_remote_dlist_type, "nixlRemoteDList",
                   "nixlRemoteDList(type, descs=None, sorted=False): a peer's descriptors (a nixlXferDList)");

/* an exported list: nixl reads it without the GIL */
typedef struct {
    _pynixl_dlist *l;
    nixl_dlist_t v;
} _pynixl_view;

static int _pynixl_view_open(PyObject *o, _pynixl_view *v, int want_reg, const char *what) {
    if (!_pynixl_dlist_is(o) || (want_reg && !PyObject_TypeCheck(o, &_pynixl_reg_dlist_type))) {
        PyErr_Format(_pynixl_exc[2], "NIXL_ERR_INVALID_PARAM: %s must be a %s", what,
                     want_reg ? "nixlRegDList" : "descriptor list");
        return -1;
    }
    v->l = (_pynixl_dlist *)o;
    v->l->exports++;
    v->v.mem = (nixl_mem_t)v->l->mem;
    v->v.descs = v->l->d;
    v->v.count = (size_t)v->l->n;
    return 0;
}

static void _pynixl_view_close(_pynixl_view *v) {
    if (v->l) v->l->exports--;
    v->l = NULL;
}

/* ------------------------------------------------------------------------ */
// >>handles
/* ------------------------------------------------------------------------ */

enum { _PYNIXL_H_XFER = 1, _PYNIXL_H_DLIST = 2 };

typedef struct {
    uintptr_t key;   /* the nixl pointer; 0 = empty, 1 = removed */
    unsigned char kind;
    unsigned char doomed; /* released while in use: the last user releases */
    int busy;
    void *owner; /* the nixlHandle object that speaks for it (borrowed; NULL once it went) */
} _pynixl_hent;

typedef struct {
    _pynixl_hent *v;
    size_t cap, used; /* used counts removed slots too */
} _pynixl_htab;

static size_t _pynixl_hash(uintptr_t k) {
    uint64_t x = (uint64_t)k;
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    return (size_t)x;
}

static _pynixl_hent *_pynixl_hfind(const _pynixl_htab *t, uintptr_t key) {
    size_t i;
    if (!t->cap) return NULL;
    for (i = _pynixl_hash(key) & (t->cap - 1);; i = (i + 1) & (t->cap - 1)) {
        if (t->v[i].key == key) return &t->v[i];
        if (t->v[i].key == 0) return NULL;
    }
}

static int _pynixl_hgrow(_pynixl_htab *t) {
    size_t cap = t->cap ? t->cap * 2 : 64, i;
    _pynixl_hent *v = (_pynixl_hent *)PyMem_Calloc(cap, sizeof *v), *old = t->v;
    if (!v) return -1;
    for (i = 0; i < t->cap; i++) {
        size_t j;
        if (old[i].key <= 1) continue;
        for (j = _pynixl_hash(old[i].key) & (cap - 1); v[j].key; j = (j + 1) & (cap - 1)) {
        }
        v[j] = old[i];
    }
    PyMem_Free(old);
    t->v = v;
    t->used = 0;
    for (i = 0; i < cap; i++) t->used += v[i].key > 1;
    t->cap = cap;
    return 0;
}

static _pynixl_hent *_pynixl_hadd(_pynixl_htab *t, uintptr_t key, int kind) {
    size_t i;
    if ((t->used + 1) * 2 > t->cap && _pynixl_hgrow(t)) {
        PyErr_NoMemory();
        return NULL;
    }
    for (i = _pynixl_hash(key) & (t->cap - 1); t->v[i].key > 1; i = (i + 1) & (t->cap - 1)) {
    }
    if (t->v[i].key == 0) t->used++;
    memset(&t->v[i], 0, sizeof t->v[i]);
    t->v[i].key = key;
    t->v[i].kind = (unsigned char)kind;
    return &t->v[i];
}

static void _pynixl_hdel(_pynixl_hent *e) { e->key = 1; }

/* ------------------------------------------------------------------------ */
// >>config
/* ------------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    int prog_thread, listen_thread, port, sync_mode, capture_telemetry;
    unsigned num_workers;
    unsigned long long pthr_delay_us, lthr_delay_us;
    PyObject *listen_addr, *auth_token; /* str or None (ours: NIXL has no such fields) */
} _pynixl_config;

static int _pynixl_config_init(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kws[] = {"enable_prog_thread", "enable_listen_thread", "port", "sync_mode", "num_workers",
                          "pthr_delay_us", "lthr_delay_us", "capture_telemetry", "listen_addr", "auth_token", NULL};
    _pynixl_config *c = (_pynixl_config *)self;
    PyObject *addr = Py_None, *tok = Py_None;
    c->prog_thread = 1;
    c->num_workers = 1;
    c->lthr_delay_us = 100000;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|ppiiIKKpOO:nixlAgentConfig", kws, &c->prog_thread,
                                     &c->listen_thread, &c->port, &c->sync_mode, &c->num_workers,
                                     &c->pthr_delay_us, &c->lthr_delay_us, &c->capture_telemetry, &addr, &tok))
        return -1;
    if (c->port < 0 || c->port > 65535) {
        PyErr_Format(_pynixl_exc[2], "NIXL_ERR_INVALID_PARAM: port %d is not a TCP port", c->port);
        return -1;
    }
    if ((addr != Py_None && !PyUnicode_Check(addr)) || (tok != Py_None && !PyUnicode_Check(tok))) {
        PyErr_SetString(_pynixl_exc[2], "NIXL_ERR_INVALID_PARAM: listen_addr and auth_token are str or None");
        return -1;
    }
    Py_XSETREF(c->listen_addr, Py_NewRef(addr));
    Py_XSETREF(c->auth_token, Py_NewRef(tok));
    return 0;
}

static void _pynixl_config_dealloc(PyObject *self) {
    _pynixl_config *c = (_pynixl_config *)self;
    Py_XDECREF(c->listen_addr);
    Py_XDECREF(c->auth_token);
    Py_TYPE(self)->tp_free(self);
}

static PyMemberDef _pynixl_config_members[] = {
    {"useProgThread", T_INT, offsetof(_pynixl_config, prog_thread), 0, NULL},
    {"useListenThread", T_INT, offsetof(_pynixl_config, listen_thread), 0, NULL},
    {"listenPort", T_INT, offsetof(_pynixl_config, port), 0, NULL},
    {"syncMode", T_INT, offsetof(_pynixl_config, sync_mode), 0, NULL},
    {"numWorkers", T_UINT, offsetof(_pynixl_config, num_workers), 0, NULL},
    {"pthrDelay", T_ULONGLONG, offsetof(_pynixl_config, pthr_delay_us), 0, NULL},
    {"lthrDelay", T_ULONGLONG, offsetof(_pynixl_config, lthr_delay_us), 0, NULL},
    {"captureTelemetry", T_INT, offsetof(_pynixl_config, capture_telemetry), 0, NULL},
    {"listenAddr", T_OBJECT, offsetof(_pynixl_config, listen_addr), READONLY, NULL},
    {"authToken", T_OBJECT, offsetof(_pynixl_config, auth_token), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject _pynixl_config_type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "nixl._bindings.nixlAgentConfig",
    .tp_basicsize = sizeof(_pynixl_config),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "nixlAgentConfig(enable_prog_thread=True, enable_listen_thread=False, port=0, sync_mode=0, "
              "num_workers=1, pthr_delay_us=0, lthr_delay_us=100000, capture_telemetry=False, listen_addr=None, "
              "auth_token=None)",
    .tp_new = PyType_GenericNew,
    .tp_init = _pynixl_config_init,
    .tp_dealloc = _pynixl_config_dealloc,
    .tp_members = _pynixl_config_members,
};

/* ------------------------------------------------------------------------ */
// >>agent
/* ------------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    nixl_agent_t *a;
    PyObject *name;
    nixl_backend_t *be[NIXL_MAX_BACKENDS];
    int nbe;
    _pynixl_htab h;
    nixl_xfer_req_t **parked; /* releases the backend refused (in flight): retried */
    size_t nparked, capparked;
    int telemetry;
    int has_token; /* an auth token (config or NIXL_AUTH_TOKEN) */
} _pynixl_agent;

typedef struct {
    PyObject_HEAD
    _pynixl_agent *agent;
    uintptr_t key;
    int kind;
    int released;
} _pynixl_handle;

static PyTypeObject _pynixl_agent_type, _pynixl_handle_type;
static PyTypeObject _pynixl_telemetry_type;

static int _pynixl_agent_live(_pynixl_agent *self) {
    if (self->a) return 0;
    PyErr_SetString(_pynixl_exc[2], "NIXL_ERR_INVALID_PARAM: the agent is not initialised");
    return -1;
}

/* A name argument: str or bytes (NUL-free). Borrowed UTF-8 while o lives. */
static const char *_pynixl_name(PyObject *o, const char *what) {
    const char *s = NULL;
    Py_ssize_t n = 0;
    if (PyUnicode_Check(o)) s = PyUnicode_AsUTF8AndSize(o, &n);
    else if (PyBytes_Check(o)) PyBytes_AsStringAndSize(o, (char **)&s, &n);
    if (!s) {
        PyErr_Clear();
        PyErr_Format(_pynixl_exc[2], "NIXL_ERR_INVALID_PARAM: %s must be str or bytes", what);
        return NULL;
    }
    if (strlen(s) != (size_t)n) {
        PyErr_Format(_pynixl_exc[2], "NIXL_ERR_INVALID_PARAM: %s contains a NUL byte", what);
        return NULL;
    }
    return s;
}

/* A message argument: bytes, bytearray or str (UTF-8). None -> NULL, 0. */
static int _pynixl_msg(PyObject *o, const void **p, Py_ssize_t *n) {
    *p = NULL;
    *n = 0;
    if (!o || o == Py_None) return 0;
    if (PyBytes_Check(o)) {
        *p = PyBytes_AS_STRING(o);
        *n = PyBytes_GET_SIZE(o);
        return 0;
    }
    if (PyByteArray_Check(o)) {
        *p = PyByteArray_AS_STRING(o);
        *n = PyByteArray_GET_SIZE(o);
        return 0;
    }
    if (PyUnicode_Check(o)) return (*p = PyUnicode_AsUTF8AndSize(o, n)) ? 0 : -1;
    PyErr_SetString(_pynixl_exc[2], "NIXL_ERR_INVALID_PARAM: a notification must be bytes or str");
    return -1;
}

/* backends argument: a list of backend handles (ints), or empty/None = all */
typedef struct {
    nixl_backend_t *v[NIXL_MAX_BACKENDS];
    size_t n;
} _pynixl_bes;

static int _pynixl_backends(_pynixl_agent *self, PyObject *o, _pynixl_bes *b) {
    PyObject *seq;
    Py_ssize_t i, n;
    b->n = 0;
    if (!o || o == Py_None) return 0;
    if (!(seq = PySequence_Fast(o, "backends must be a list of backend handles"))) return -1;
    n = PySequence_Fast_GET_SIZE(seq);
    for (i = 0; i < n; i++) {
        uintptr_t k = (uintptr_t)PyLong_AsUnsignedLongLong(PySequence_Fast_GET_ITEM(seq, i));
        int j, found = 0;
        if (PyErr_Occurred()) {
            PyErr_Clear();
            Py_DECREF(seq);
            PyErr_SetString(_pynixl_exc[2], "NIXL_ERR_INVALID_PARAM: a backend handle is an int from createBackend");
            return -1;
        }
        for (j = 0; j < self->nbe; j++) found |= (uintptr_t)self->be[j] == k;
        if (!found || b->n == NIXL_MAX_BACKENDS) {
            Py_DECREF(seq);
            PyErr_SetString(_pynixl_exc[4], "NIXL_ERR_NOT_FOUND: not a backend of this agent");
            return -1;
        }
        b->v[b->n++] = (nixl_backend_t *)k;
    }
    Py_DECREF(seq);
    return 0;
}

static void _pynixl_opt(nixl_opt_args_t *opt, const _pynixl_bes *b) {
    memset(opt, 0, sizeof *opt);
    if (b && b->n) {
        opt->backends = b->v;
        opt->num_backends = b->n;
    }
}

/* --- handles: a nixlHandle speaks for one nixl request or prepared list */

static void _pynixl_park(_pynixl_agent *self, nixl_xfer_req_t *r) {
    if (self->nparked == self->capparked) {
        size_t cap = self->capparked ? self->capparked * 2 : 16;
        nixl_xfer_req_t **v = (nixl_xfer_req_t **)PyMem_Realloc(self->parked, cap * sizeof *v);
        if (!v) return; /* nixl_agent_destroy still frees it */
        self->parked = v;
        self->capparked = cap;
    }
    self->parked[self->nparked++] = r;
}

/* retries the releases the backend refused while their requests flew */
static void _pynixl_retry_parked(_pynixl_agent *self) {
    size_t i = 0;
    while (i < self->nparked) {
        if (nixl_release_xfer_req(self->a, self->parked[i]) == NIXL_ERR_REPOST_ACTIVE) {
            i++;
            continue;
        }
        self->parked[i] = self->parked[--self->nparked];
    }
}

static nixl_status_t _pynixl_release_now(_pynixl_agent *self, uintptr_t key, int kind) {
    nixl_status_t st;
    if (kind == _PYNIXL_H_DLIST) return nixl_release_dlist_handle(self->a, (nixl_dlist_handle_t *)key);
    st = nixl_release_xfer_req(self->a, (nixl_xfer_req_t *)key);
    if (st == NIXL_ERR_REPOST_ACTIVE) { /* in flight and not abortable: kept, retried later */
        _pynixl_park(self, (nixl_xfer_req_t *)key);
        st = NIXL_SUCCESS;
    }
    return st;
}

/* Ends a handle: released at once, or by its last user. Idempotent. */
static void _pynixl_handle_mark_released(void *owner);

static nixl_status_t _pynixl_handle_end(_pynixl_agent *self, uintptr_t key) {
    _pynixl_hent *e = _pynixl_hfind(&self->h, key);
    int kind;
    if (!e || e->doomed) return NIXL_SUCCESS;
    /* its object must not end a later request that reuses the address */
    _pynixl_handle_mark_released(e->owner);
    e->owner = NULL;
    if (e->busy) {
        e->doomed = 1;
        return NIXL_SUCCESS;
    }
    kind = e->kind;
    _pynixl_hdel(e);
    return _pynixl_release_now(self, key, kind);
}

static PyObject *_pynixl_handle_new(_pynixl_agent *self, void *p, int kind) {
    _pynixl_handle *h;
    _pynixl_hent *e = _pynixl_hadd(&self->h, (uintptr_t)p, kind);
    if (!e) {
        _pynixl_release_now(self, (uintptr_t)p, kind);
        return NULL;
    }
    if (!(h = PyObject_New(_pynixl_handle, &_pynixl_handle_type))) {
        _pynixl_handle_end(self, (uintptr_t)p);
        return NULL;
    }
    e->owner = h;
    h->agent = (_pynixl_agent *)Py_NewRef((PyObject *)self);
    h->key = (uintptr_t)p;
    h->kind = kind;
    h->released = 0;
    return (PyObject *)h;
}

/* A handle argument (nixlHandle or its int value) of kind: the nixl
   pointer, marked in use until _pynixl_handle_put; NULL with an error. */
static void *_pynixl_handle_get(_pynixl_agent *self, PyObject *o, int kind) {
    uintptr_t key;
    _pynixl_hent *e;
    if (Py_IS_TYPE(o, &_pynixl_handle_type)) {
        /* a released object names nothing, even if its address came back */
        key = ((_pynixl_handle *)o)->released ? 0 : ((_pynixl_handle *)o)->key;
    } else {
        key = (uintptr_t)PyLong_AsUnsignedLongLong(o);
        if (PyErr_Occurred()) {
            PyErr_Clear();
            key = 0;
        }
    }
    e = key > 1 ? _pynixl_hfind(&self->h, key) : NULL;
    if (!e || e->doomed || e->kind != kind) {
        PyErr_Format(_pynixl_exc[2], "NIXL_ERR_INVALID_PARAM: not a live %s handle of this agent (released, or never "
                     "made here)", kind == _PYNIXL_H_XFER ? "transfer request" : "prepared descriptor list");
        return NULL;
    }
    e->busy++;
    return (void *)key;
}

static void _pynixl_handle_put(_pynixl_agent *self, void *p) {
    _pynixl_hent *e = _pynixl_hfind(&self->h, (uintptr_t)p);
    if (!e) return;
    if (--e->busy == 0 && e->doomed) {
        int kind = e->kind;
        _pynixl_hdel(e);
        _pynixl_release_now(self, (uintptr_t)p, kind);
    }
}

static void _pynixl_handle_mark_released(void *owner) {
    if (owner) ((_pynixl_handle *)owner)->released = 1;
}

/* a handle object dropped without release: released best effort */
static void _pynixl_handle_dealloc(PyObject *o) {
    _pynixl_handle *h = (_pynixl_handle *)o;
    _pynixl_hent *e = h->agent && h->agent->a ? _pynixl_hfind(&h->agent->h, h->key) : NULL;
    if (e && !h->released && e->owner == (void *)h) _pynixl_handle_end(h->agent, h->key);
    Py_XDECREF(h->agent);
    PyObject_Free(o);
}

static PyObject *_pynixl_handle_index(PyObject *o) { return PyLong_FromUnsignedLongLong(((_pynixl_handle *)o)->key); }
static Py_hash_t _pynixl_handle_hash(PyObject *o) {
    PyObject *v = _pynixl_handle_index(o);
    Py_hash_t r = v ? PyObject_Hash(v) : -1;
    Py_XDECREF(v);
    return r;
}
static PyObject *_pynixl_handle_richcmp(PyObject *a, PyObject *b, int op) {
    PyObject *x = _pynixl_handle_index(a), *y, *r;
    if (!x) return NULL;
    y = Py_IS_TYPE(b, &_pynixl_handle_type) ? _pynixl_handle_index(b) : Py_NewRef(b);
    r = y ? PyObject_RichCompare(x, y, op) : NULL;
    Py_DECREF(x);
    Py_XDECREF(y);
    return r;
}
static PyObject *_pynixl_handle_repr(PyObject *o) {
    _pynixl_handle *h = (_pynixl_handle *)o;
    return PyUnicode_FromFormat("<nixl %s handle %p>", h->kind == _PYNIXL_H_XFER ? "transfer" : "dlist",
                                (void *)h->key);
}
static int _pynixl_handle_bool(PyObject *o) { return ((_pynixl_handle *)o)->key != 0; }

/* handle.release(): NIXL 0.6+'s handle objects release themselves; again: no-op */
static PyObject *_pynixl_handle_release(PyObject *o, PyObject *unused) {
    _pynixl_handle *h = (_pynixl_handle *)o;
    nixl_status_t st = NIXL_SUCCESS;
    (void)unused;
    if (!h->released && h->agent && h->agent->a) {
        h->released = 1;
        st = _pynixl_handle_end(h->agent, h->key);
        _pynixl_retry_parked(h->agent);
    }
    h->released = 1;
    return _pynixl_status(st, "release failed");
}

static PyObject *_pynixl_handle_is_released(PyObject *o, void *unused) {
    (void)unused;
    return PyBool_FromLong(((_pynixl_handle *)o)->released);
}

static PyMethodDef _pynixl_handle_methods[] = {
    {"release", _pynixl_handle_release, METH_NOARGS, "releases the request or prepared list (again: no-op)"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef _pynixl_handle_getset[] = {
    {"released", _pynixl_handle_is_released, NULL, "whether it was released", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyNumberMethods _pynixl_handle_num = {
    .nb_bool = _pynixl_handle_bool,
    .nb_int = _pynixl_handle_index,
    .nb_index = _pynixl_handle_index,
};

static PyTypeObject _pynixl_handle_type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "nixl._bindings.nixlHandle",
    .tp_basicsize = sizeof(_pynixl_handle),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A transfer request or prepared list: behaves as its int value; released when it is released or "
              "dropped (a request still in flight is kept and released once it ends)",
    .tp_dealloc = _pynixl_handle_dealloc,
    .tp_as_number = &_pynixl_handle_num,
    .tp_hash = _pynixl_handle_hash,
    .tp_richcompare = _pynixl_handle_richcmp,
    .tp_repr = _pynixl_handle_repr,
    .tp_methods = _pynixl_handle_methods,
    .tp_getset = _pynixl_handle_getset,
};

/* --- agent lifecycle */

static int _pynixl_env_on(const char *v) {
    return v && (!strcasecmp(v, "y") || !strcasecmp(v, "yes") || !strcmp(v, "1") || !strcasecmp(v, "true") ||
                 !strcasecmp(v, "on") || !strcasecmp(v, "enable"));
}

static int _pynixl_agent_init(PyObject *obj, PyObject *args, PyObject *kw) {
    static char *kws[] = {"name", "config", NULL};
    _pynixl_agent *self = (_pynixl_agent *)obj;
    PyObject *name, *cfgo = NULL;
    nixl_agent_config_t cfg;
    nixl_agent_t *a = NULL;
    nixl_status_t st;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|O!:nixlAgent", kws, &name, &_pynixl_config_type, &cfgo)) return -1;
    if (self->a) {
        PyErr_SetString(PyExc_RuntimeError, "nixlAgent is already initialised");
        return -1;
    }
    memset(&cfg, 0, sizeof cfg);
    if (!(cfg.name = _pynixl_name(name, "the agent name"))) return -1;
    if (cfgo) {
        _pynixl_config *c = (_pynixl_config *)cfgo;
        cfg.progress_thread = c->prog_thread;
        cfg.listen_thread = c->listen_thread;
        cfg.listen_port = (uint16_t)c->port;
        cfg.capture_telemetry = c->capture_telemetry;
        if (c->listen_addr && c->listen_addr != Py_None) cfg.listen_addr = PyUnicode_AsUTF8(c->listen_addr);
        if (c->auth_token && c->auth_token != Py_None) cfg.auth_token = PyUnicode_AsUTF8(c->auth_token);
    }
    /* NIXL documents NIXL_TELEMETRY_ENABLE=y|1 as turning telemetry on */
    if (_pynixl_env_on(getenv("NIXL_TELEMETRY_ENABLE"))) cfg.capture_telemetry = 1;
    Py_BEGIN_ALLOW_THREADS st = nixl_agent_create(&cfg, &a);
    Py_END_ALLOW_THREADS if (st != NIXL_SUCCESS) {
        _pynixl_raise(st, "agent creation failed (the log line says why)");
        return -1;
    }
    self->a = a;
    self->telemetry = cfg.capture_telemetry;
    self->has_token = cfg.auth_token || getenv("NIXL_AUTH_TOKEN");
    self->name = PyUnicode_FromString(cfg.name);
    return self->name ? 0 : -1;
}

static void _pynixl_agent_dealloc(PyObject *obj) {
    _pynixl_agent *self = (_pynixl_agent *)obj;
    nixl_agent_t *a = self->a;
    self->a = NULL;
    if (a) {
        Py_BEGIN_ALLOW_THREADS nixl_agent_destroy(a); /* aborts what flies, frees every handle */
        Py_END_ALLOW_THREADS
    }
    PyMem_Free(self->h.v);
    PyMem_Free(self->parked);
    Py_XDECREF(self->name);
    Py_TYPE(obj)->tp_free(obj);
}

static PyObject *_pynixl_agent_get_name(PyObject *obj, PyObject *unused) {
    _pynixl_agent *self = (_pynixl_agent *)obj;
    (void)unused;
    if (_pynixl_agent_live(self)) return NULL;
    return Py_NewRef(self->name);
}

static PyObject *_pynixl_agent_listen_port(PyObject *obj, PyObject *unused) {
    _pynixl_agent *self = (_pynixl_agent *)obj;
    (void)unused;
    if (_pynixl_agent_live(self)) return NULL;
    return PyLong_FromLong(nixl_agent_listen_port(self->a));
}

/* --- backends */

typedef struct {
    const char *name;
    const nixl_backend_ops_t *(*ops)(void);
} _pynixl_plugin;

static const _pynixl_plugin _pynixl_plugins[] = {
    {"UCX", nixl_ucx_backend},
    {"VERBS", nixl_verbs_backend},
    {"POSIX", nixl_posix_backend},
};
#define _PYNIXL_NPLUGINS (sizeof _pynixl_plugins / sizeof _pynixl_plugins[0])

static const nixl_backend_ops_t *_pynixl_plugin_ops(const char *name) {
    size_t i;
    for (i = 0; i < _PYNIXL_NPLUGINS; i++)
        if (!strcmp(_pynixl_plugins[i].name, name)) return _pynixl_plugins[i].ops();
    PyErr_Format(_pynixl_exc[4], "NIXL_ERR_NOT_FOUND: no backend plugin named '%s' (available: UCX, VERBS, POSIX)", name);
    return NULL;
}

static PyObject *_pynixl_avail_plugins(PyObject *obj, PyObject *unused) {
    PyObject *l = PyList_New((Py_ssize_t)_PYNIXL_NPLUGINS);
    size_t i;
    (void)obj;
    (void)unused;
    for (i = 0; l && i < _PYNIXL_NPLUGINS; i++) PyList_SET_ITEM(l, (Py_ssize_t)i, PyUnicode_FromString(_pynixl_plugins[i].name));
    return l;
}

/* (params, mems): the keys a backend takes (value "" = its default) and
   the memory types (segment constants) it registers */
static PyObject *_pynixl_params_of(const nixl_backend_ops_t *ops) {
    PyObject *params = PyDict_New(), *mems = PyList_New(0);
    const char *const *k;
    int m;
    if (!params || !mems) goto fail;
    for (k = ops->param_keys; k && *k; k++) {
        PyObject *v = PyUnicode_FromString("");
        if (!v || PyDict_SetItemString(params, *k, v)) {
            Py_XDECREF(v);
            goto fail;
        }
        Py_DECREF(v);
    }
    for (m = 0; m < NIXL_MEM_COUNT; m++) {
        PyObject *v;
        if (!(ops->mem_mask & NIXL_MEM_BIT(m))) continue;
        if (!(v = PyLong_FromLong(m)) || PyList_Append(mems, v)) {
            Py_XDECREF(v);
            goto fail;
        }
        Py_DECREF(v);
    }
    return Py_BuildValue("(NN)", params, mems);
fail:
    Py_XDECREF(params);
    Py_XDECREF(mems);
    return NULL;
}

static PyObject *_pynixl_plugin_params(PyObject *obj, PyObject *arg) {
    const char *name = _pynixl_name(arg, "the plugin name");
    const nixl_backend_ops_t *ops = name ? _pynixl_plugin_ops(name) : NULL;
    (void)obj;
    return ops ? _pynixl_params_of(ops) : NULL;
}

static nixl_backend_t *_pynixl_backend_arg(_pynixl_agent *self, PyObject *o) {
    _pynixl_bes b;
    PyObject *one = PyTuple_Pack(1, o);
    int rc = one ? _pynixl_backends(self, one, &b) : -1;
    Py_XDECREF(one);
    return rc ? NULL : b.v[0];
}

static PyObject *_pynixl_backend_params(PyObject *obj, PyObject *arg) {
    _pynixl_agent *self = (_pynixl_agent *)obj;
    nixl_backend_t *be;
    if (_pynixl_agent_live(self) || !(be = _pynixl_backend_arg(self, arg))) return NULL;
    return _pynixl_params_of(_pynixl_plugin_ops(nixl_backend_name(be)));
}

/* {"k": "v"} -> "k=v,k=v" (a value may hold no ',' or '=' of its own) */
static PyObject *_pynixl_params_string(PyObject *d) {
    PyObject *parts = PyList_New(0), *k, *v, *sep = NULL, *r = NULL;
    Py_ssize_t pos = 0;
    if (!parts) return NULL;
    if (d && d != Py_None && !PyDict_Check(d)) {
        PyErr_SetString(_pynixl_exc[2], "NIXL_ERR_INVALID_PARAM: backend params must be a dict of str to str");
        goto out;
    }
    while (d && d != Py_None && PyDict_Next(d, &pos, &k, &v)) {
        PyObject *ks = PyObject_Str(k), *vs = PyObject_Str(v), *kv = NULL;
        if (ks && vs && (PyUnicode_FindChar(vs, ',', 0, PyUnicode_GET_LENGTH(vs), 1) >= 0 ||
                         PyUnicode_FindChar(ks, ',', 0, PyUnicode_GET_LENGTH(ks), 1) >= 0)) {
            PyErr_Format(_pynixl_exc[2], "NIXL_ERR_INVALID_PARAM: backend param %R holds a ','", k);
        } else if (ks && vs) {
            kv = PyUnicode_FromFormat("%U=%U", ks, vs);
        }
        Py_XDECREF(ks);
        Py_XDECREF(vs);
        if (!kv || PyList_Append(parts, kv)) {
            Py_XDECREF(kv);
            goto out;
        }
        Py_DECREF(kv);
    }
    if ((sep = PyUnicode_FromString(","))) r = PyUnicode_Join(sep, parts);
out:
    Py_XDECREF(sep);
    Py_DECREF(parts);
    return r;
}

static PyObject *_pynixl_unverified_key;

static int _pynixl_takes_key(const nixl_backend_ops_t *ops, const char *key) {
    const char *const *k;
    for (k = ops->param_keys; k && *k; k++)
        if (!strcmp(*k, key)) return 1;
    return 0;
}

static PyObject *_pynixl_create_backend(PyObject *obj, PyObject *args) {
    _pynixl_agent *self = (_pynixl_agent *)obj;
    PyObject *typ, *params = NULL, *ps;
    const char *name, *pstr;
    const nixl_backend_ops_t *ops;
    nixl_backend_t *be = NULL;
    nixl_status_t st;
    if (!PyArg_ParseTuple(args, "O|O:createBackend", &typ, &params) || _pynixl_agent_live(self)) return NULL;
    if (!(name = _pynixl_name(typ, "the backend type")) || !(ops = _pynixl_plugin_ops(name))) return NULL;
    if (!(ps = _pynixl_params_string(params))) return NULL;
    if (!self->has_token && _pynixl_takes_key(ops, "notif_unverified") &&
        !PyUnicode_Contains(ps, _pynixl_unverified_key)) { /* (an error: -1, true) */
        /* NIXL takes a notification on its sender's word; without a token
           so do we here, or vLLM's prefill (which never loads its decode
           peers' metadata) would lose every "done" notification. Set
           notif_unverified=drop, or a token, to require proof. */
        PyObject *more = PyUnicode_FromFormat("%U%snotif_unverified=accept", ps, PyUnicode_GET_LENGTH(ps) ? "," : "");
        Py_DECREF(ps);
        if (!(ps = more)) return NULL;
    }
    pstr = PyUnicode_AsUTF8(ps);
    if (!pstr) {
        Py_DECREF(ps);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS st = nixl_create_backend(self->a, ops, *pstr ? pstr : NULL, &be);
    Py_END_ALLOW_THREADS Py_DECREF(ps);
    if (st != NIXL_SUCCESS) return _pynixl_raise(st, "createBackend failed (the log line says why)");
    if (self->nbe < NIXL_MAX_BACKENDS) self->be[self->nbe++] = be;
    return PyLong_FromUnsignedLongLong((uintptr_t)be);
}

static PyObject *_pynixl_backend_name(PyObject *obj, PyObject *arg) {
    _pynixl_agent *self = (_pynixl_agent *)obj;
    nixl_backend_t *be;
    if (_pynixl_agent_live(self) || !(be = _pynixl_backend_arg(self, arg))) return NULL;
    return PyUnicode_FromString(nixl_backend_name(be));
}

/* --- memory */

static PyObject *_pynixl_reg_common(PyObject *obj, PyObject *args, int reg) {
    _pynixl_agent *self = (_pynixl_agent *)obj;
    PyObject *descs, *bes = NULL;
    _pynixl_view v;
    _pynixl_bes b;
    nixl_opt_args_t opt;
    nixl_status_t st;
    if (!PyArg_ParseTuple(args, reg ? "O|O:registerMem" : "O|O:deregisterMem", &descs, &bes) ||
        _pynixl_agent_live(self) || _pynixl_backends(self, bes, &b) || _pynixl_view_open(descs, &v, 0, "descs"))
        return NULL;
    _pynixl_opt(&opt, &b);
    Py_BEGIN_ALLOW_THREADS st = reg ? nixl_register_mem(self->a, &v.v, &opt) : nixl_deregister_mem(self->a, &v.v, &opt);
    Py_END_ALLOW_THREADS _pynixl_view_close(&v);
    return _pynixl_status(st, reg ? "registerMem failed (the log line says why)" : "deregisterMem failed");
}

static PyObject *_pynixl_register_mem(PyObject *o, PyObject *a) { return _pynixl_reg_common(o, a, 1); }
static PyObject *_pynixl_deregister_mem(PyObject *o, PyObject *a) { return _pynixl_reg_common(o, a, 0); }

/* One answer of queryMem: a registered file's {"size", "mode", "mtime"}
   (NIXL's query_memory), None for a descriptor the backend knows nothing of. */
static PyObject *_pynixl_file_info(nixl_backend_t *be, const nixl_desc_t *d) {
    nixl_posix_file_info_t info;
    nixl_status_t st;
    Py_BEGIN_ALLOW_THREADS st = nixl_posix_query(be, (int)d->dev_id, &info);
    Py_END_ALLOW_THREADS if (st != NIXL_SUCCESS) Py_RETURN_NONE;
    return Py_BuildValue("{s:K,s:I,s:L,s:O,s:O,s:O}", "size", (unsigned long long)info.size, "mode",
                         (unsigned)info.mode, "mtime", (long long)info.mtime_s, "readable",
                         info.readable ? Py_True : Py_False, "writable", info.writable ? Py_True : Py_False,
                         "direct", info.direct ? Py_True : Py_False);
}

/* queryMem(reg_dlist, backend): a list, one entry per descriptor. The
   POSIX backend answers for FILE and BLK descriptors (dev_id = the file
   descriptor); other backends answer nothing of memory: NOT_SUPPORTED. */
static PyObject *_pynixl_query_mem(PyObject *obj, PyObject *args) {
    _pynixl_agent *self = (_pynixl_agent *)obj;
    PyObject *descs, *beo = NULL, *out = NULL, *one = NULL;
    _pynixl_bes b;
    _pynixl_view v;
    size_t i;
    if (!PyArg_ParseTuple(args, "O|O:queryMem", &descs, &beo) || _pynixl_agent_live(self)) return NULL;
    if (!beo || beo == Py_None || !(one = PyList_New(1))) {
        Py_XDECREF(one);
        return _pynixl_raise(NIXL_ERR_INVALID_PARAM, "queryMem: name the backend to ask");
    }
    Py_INCREF(beo);
    PyList_SET_ITEM(one, 0, beo);
    if (_pynixl_backends(self, one, &b)) {
        Py_DECREF(one);
        return NULL;
    }
    Py_DECREF(one);
    if (nixl_posix_engine(b.v[0]) == 0)
        return _pynixl_raise(NIXL_ERR_NOT_SUPPORTED, "queryMem: only the POSIX backend answers queries (about files)");
    if (_pynixl_view_open(descs, &v, 0, "queryMem's descriptors")) return NULL;
    if (v.v.mem != NIXL_FILE && v.v.mem != NIXL_BLK) {
        _pynixl_view_close(&v);
        return _pynixl_raise(NIXL_ERR_INVALID_PARAM, "queryMem: the descriptors must be FILE or BLK");
    }
    out = PyList_New((Py_ssize_t)v.v.count);
    for (i = 0; out && i < v.v.count; i++) {
        PyObject *d = _pynixl_file_info(b.v[0], &v.v.descs[i]);
        if (!d) {
            Py_CLEAR(out);
            break;
        }
        PyList_SET_ITEM(out, (Py_ssize_t)i, d);
    }
    _pynixl_view_close(&v);
    return out;
}

/* --- metadata */

static PyObject *_pynixl_md_bytes(_pynixl_agent *self, nixl_status_t st, void *blob, size_t len, const char *what) {
    PyObject *r;
    if (st != NIXL_SUCCESS) return _pynixl_raise(st, what);
    r = PyBytes_FromStringAndSize((const char *)blob, (Py_ssize_t)len);
    nixl_free_md(self->a, blob);
    return r;
}

static PyObject *_pynixl_get_local_md(PyObject *obj, PyObject *unused) {
    _pynixl_agent *self = (_pynixl_agent *)obj;
    void *blob = NULL;
    size_t len = 0;
    nixl_status_t st;
    (void)unused;
    if (_pynixl_agent_live(self)) return NULL;
    Py_BEGIN_ALLOW_THREADS st = nixl_get_local_md(self->a, &blob, &len);
    Py_END_ALLOW_THREADS return _pynixl_md_bytes(self, st, blob, len, "getLocalMD failed");
}

static PyObject *_pynixl_get_local_partial_md(PyObject *obj, PyObject *args) {
    _pynixl_agent *self = (_pynixl_agent *)obj;
    PyObject *descs, *bes = NULL;
    int inc = 0;
    _pynixl_view v;
    _pynixl_bes b;
    nixl_opt_args_t opt;
    void *blob = NULL;
    size_t len = 0;
    nixl_status_t st;
    if (!PyArg_ParseTuple(args, "O|pO:getLocalPartialMD", &descs, &inc, &bes) || _pynixl_agent_live(self) ||
        _pynixl_backends(self, bes, &b) || _pynixl_view_open(descs, &v, 0, "descs"))
        return NULL;
    _pynixl_opt(&opt, &b);
    opt.include_conn_info = inc;
    Py_BEGIN_ALLOW_THREADS st = nixl_get_local_partial_md(self->a, &v.v, &opt, &blob, &len);
    Py_END_ALLOW_THREADS _pynixl_view_close(&v);
    return _pynixl_md_bytes(self, st, blob, len, "getLocalPartialMD failed (the log line says why)");
}

static PyObject *_pynixl_load_remote_md(PyObject *obj, PyObject *arg) {
    _pynixl_agent *self = (_pynixl_agent *)obj;
    char name[256];
    Py_buffer b;
    nixl_status_t st;
    if (_pynixl_agent_live(self)) return NULL;
    if (PyObject_GetBuffer(arg, &b, PyBUF_SIMPLE) != 0) {
        PyErr_Clear();
        return _pynixl_raise(NIXL_ERR_INVALID_PARAM, "loadRemoteMD takes the bytes of getLocalMD");
    }
    name[0] = 0;
    Py_BEGIN_ALLOW_THREADS st = nixl_load_remote_md(self->a, b.buf, (size_t)b.len, name, sizeof name);
    Py_END_ALLOW_THREADS PyBuffer_Release(&b);
    if (st != NIXL_SUCCESS) return _pynixl_raise(st, "loadRemoteMD failed (the log line says why)");
    return PyBytes_FromString(name);
}

static PyObject *_pynixl_invalidate_remote_md(PyObject *obj, PyObject *arg) {
    _pynixl_agent *self = (_pynixl_agent *)obj;
    const char *name;
    nixl_status_t st;
    if (_pynixl_agent_live(self) || !(name = _pynixl_name(arg, "the remote agent"))) return NULL;
    Py_BEGIN_ALLOW_THREADS st = nixl_invalidate_remote_md(self->a, name);
    Py_END_ALLOW_THREADS return _pynixl_status(st, "invalidateRemoteMD failed");
}

/* checkRemoteMD(name, descs=None): SUCCESS or NOT_FOUND as an int, no raise */
static PyObject *_pynixl_check_remote_md(PyObject *obj, PyObject *args) {
    _pynixl_agent *self = (_pynixl_agent *)obj;
    PyObject *n, *descs = Py_None;
    const char *name;
    _pynixl_view v = {NULL, {NIXL_DRAM, NULL, 0}};
    nixl_status_t st;
    if (!PyArg_ParseTuple(args, "O|O:checkRemoteMD", &n, &descs) || _pynixl_agent_live(self) ||
        !(name = _pynixl_name(n, "the remote agent")))
        return NULL;
    if (descs != Py_None && _pynixl_view_open(descs, &v, 0, "descs")) return NULL;
    Py_BEGIN_ALLOW_THREADS st = nixl_check_remote_md(self->a, name, v.l ? &v.v : NULL);
    Py_END_ALLOW_THREADS _pynixl_view_close(&v);
    if (st == NIXL_ERR_NOT_FOUND) return PyLong_FromLong((long)st);
    return _pynixl_status(st, "checkRemoteMD failed");
}

static PyObject *_pynixl_make_connection(PyObject *obj, PyObject *args) {
    _pynixl_agent *self = (_pynixl_agent *)obj;
    PyObject *n, *bes = NULL;
    const char *name;
    _pynixl_bes b;
    nixl_opt_args_t opt;
    nixl_status_t st;
    if (!PyArg_ParseTuple(args, "O|O:makeConnection", &n, &bes) || _pynixl_agent_live(self) ||
        !(name = _pynixl_name(n, "the remote agent")) || _pynixl_backends(self, bes, &b))
        return NULL;
    _pynixl_opt(&opt, &b);
    Py_BEGIN_ALLOW_THREADS st = nixl_make_connection(self->a, name, &opt);
    Py_END_ALLOW_THREADS return _pynixl_status(st, "makeConnection failed (the log line says why)");
}

/* side channel: ip "" and port 0 would mean etcd in NIXL; here an address
   is needed unless the build has etcd */
static int _pynixl_sc_opt(nixl_opt_args_t *opt, PyObject *ip, int port, PyObject *label) {
    if (ip && ip != Py_None) {
        const char *s = _pynixl_name(ip, "ip_addr");
        if (!s) return -1;
        opt->ip = *s ? s : NULL;
    }
    if (port < 0 || port > 65535) {
        PyErr_Format(_pynixl_exc[2], "NIXL_ERR_INVALID_PARAM: port %d is not a TCP port", port);
        return -1;
    }
    opt->port = (uint16_t)port;
    if (label && label != Py_None) {
        const char *s = _pynixl_name(label, "label");
        if (!s) return -1;
        opt->metadata_label = *s ? s : NULL;
    }
    return 0;
}

static PyObject *_pynixl_send_local_md(PyObject *obj, PyObject *args) {
    _pynixl_agent *self = (_pynixl_agent *)obj;
    PyObject *ip = NULL, *label = NULL;
    int port = 0;
    nixl_opt_args_t opt;
    nixl_status_t st;
    memset(&opt, 0, sizeof opt);
    if (!PyArg_ParseTuple(args, "|OiO:sendLocalMD", &ip, &port, &label) || _pynixl_agent_live(self) ||
        _pynixl_sc_opt(&opt, ip, port, label))
        return NULL;
    Py_BEGIN_ALLOW_THREADS st = nixl_send_local_md(self->a, &opt);
    Py_END_ALLOW_THREADS return _pynixl_status(st, "sendLocalMD failed (the log line says why)");
}

static PyObject *_pynixl_send_local_partial_md(PyObject *obj, PyObject *args) {
    _pynixl_agent *self = (_pynixl_agent *)obj;
    PyObject *descs, *bes = NULL, *ip = NULL, *label = NULL;
    int inc = 0, port = 0;
    _pynixl_view v;
    _pynixl_bes b;
    nixl_opt_args_t opt;
    nixl_status_t st;
    if (!PyArg_ParseTuple(args, "O|pOOiO:sendLocalPartialMD", &descs, &inc, &bes, &ip, &port, &label) ||
        _pynixl_agent_live(self) || _pynixl_backends(self, bes, &b))
        return NULL;
    _pynixl_opt(&opt, &b);
    opt.include_conn_info = inc;
    if (_pynixl_sc_opt(&opt, ip, port, label) || _pynixl_view_open(descs, &v, 0, "descs")) return NULL;
    Py_BEGIN_ALLOW_THREADS st = nixl_send_local_partial_md(self->a, &v.v, &opt);
    Py_END_ALLOW_THREADS _pynixl_view_close(&v);
    return _pynixl_status(st, "sendLocalPartialMD failed (the log line says why)");
}

static PyObject *_pynixl_fetch_remote_md(PyObject *obj, PyObject *args) {
    _pynixl_agent *self = (_pynixl_agent *)obj;
    PyObject *n, *ip = NULL, *label = NULL;
    int port = 0;
    const char *name;
    nixl_opt_args_t opt;
    nixl_status_t st;
    memset(&opt, 0, sizeof opt);
    if (!PyArg_ParseTuple(args, "O|OiO:fetchRemoteMD", &n, &ip, &port, &label) || _pynixl_agent_live(self) ||
        !(name = _pynixl_name(n, "the remote agent")) || _pynixl_sc_opt(&opt, ip, port, label))
        return NULL;
    Py_BEGIN_ALLOW_THREADS st = nixl_fetch_remote_md(self->a, name, &opt);
    Py_END_ALLOW_THREADS return _pynixl_status(st, "fetchRemoteMD failed (the log line says why)");
}

static PyObject *_pynixl_invalidate_local_md(PyObject *obj, PyObject *args) {
    _pynixl_agent *self = (_pynixl_agent *)obj;
    PyObject *ip = NULL;
    int port = 0;
    nixl_opt_args_t opt;
    nixl_status_t st;
    memset(&opt, 0, sizeof opt);
    if (!PyArg_ParseTuple(args, "|Oi:invalidateLocalMD", &ip, &port) || _pynixl_agent_live(self) ||
        _pynixl_sc_opt(&opt, ip, port, NULL))
        return NULL;
    Py_BEGIN_ALLOW_THREADS st = nixl_invalidate_local_md(self->a, &opt);
    Py_END_ALLOW_THREADS return _pynixl_status(st, "invalidateLocalMD failed (the log line says why)");
}

/* --- transfers */

static int _pynixl_op(int op) {
    if (op == NIXL_READ || op == NIXL_WRITE) return 0;
    PyErr_Format(_pynixl_exc[2], "NIXL_ERR_INVALID_PARAM: operation %d is neither NIXL_READ nor NIXL_WRITE", op);
    return -1;
}

/* notification of a request: has = 0 for None (NIXL: b"" is none too) */
static int _pynixl_notif_opt(nixl_opt_args_t *opt, PyObject *msg) {
    const void *p;
    Py_ssize_t n;
    if (_pynixl_msg(msg, &p, &n)) return -1;
    opt->has_notif = p != NULL && n > 0;
    opt->notif = p;
    opt->notif_len = (size_t)n;
    return 0;
}

static PyObject *_pynixl_prep_xfer_dlist(PyObject *obj, PyObject *args) {
    _pynixl_agent *self = (_pynixl_agent *)obj;
    PyObject *n, *descs, *bes = NULL;
    const char *name;
    _pynixl_view v;
    _pynixl_bes b;
    nixl_opt_args_t opt;
    nixl_dlist_handle_t *h = NULL;
    nixl_status_t st;
    if (!PyArg_ParseTuple(args, "OO|O:prepXferDlist", &n, &descs, &bes) || _pynixl_agent_live(self) ||
        !(name = _pynixl_name(n, "the agent name")) || _pynixl_backends(self, bes, &b) ||
        _pynixl_view_open(descs, &v, 0, "descs"))
        return NULL;
    if (!strcmp(name, "NIXL_INIT_AGENT")) name = NULL; /* vLLM's spelling of the local side */
    _pynixl_opt(&opt, &b);
    Py_BEGIN_ALLOW_THREADS st = nixl_prep_xfer_dlist(self->a, name && *name ? name : NULL, &v.v, &opt, &h);
    Py_END_ALLOW_THREADS _pynixl_view_close(&v);
    if (st != NIXL_SUCCESS) return _pynixl_raise(st, "prepXferDlist failed (the log line says why)");
    return _pynixl_handle_new(self, h, _PYNIXL_H_DLIST);
}

/* prepXferDlistStrided(agent_name, mem, base, len, stride, count, dev_id=0,
   backends=None): "count blocks of len bytes every stride bytes from base"
   prepared in O(1) memory (nixl_prep_xfer_dlist_strided); ours, not NIXL's */
static PyObject *_pynixl_prep_xfer_dlist_strided(PyObject *obj, PyObject *args) {
    _pynixl_agent *self = (_pynixl_agent *)obj;
    PyObject *n, *bes = NULL;
    const char *name;
    int mem;
    unsigned long long base, len, stride, count, dev = 0;
    nixl_strided_t layout;
    _pynixl_bes b;
    nixl_opt_args_t opt;
    nixl_dlist_handle_t *h = NULL;
    nixl_status_t st;
    if (!PyArg_ParseTuple(args, "OiKKKK|KO:prepXferDlistStrided", &n, &mem, &base, &len, &stride, &count, &dev,
                          &bes) ||
        _pynixl_agent_live(self) || !(name = _pynixl_name(n, "the agent name")) || _pynixl_backends(self, bes, &b))
        return NULL;
    if (!strcmp(name, "NIXL_INIT_AGENT")) name = NULL;
    memset(&layout, 0, sizeof layout);
    layout.mem = (nixl_mem_t)mem;
    layout.base = (uintptr_t)base;
    layout.len = (size_t)len;
    layout.stride = (size_t)stride;
    layout.count = (size_t)count;
    layout.dev_id = dev;
    _pynixl_opt(&opt, &b);
    Py_BEGIN_ALLOW_THREADS st = nixl_prep_xfer_dlist_strided(self->a, name && *name ? name : NULL, &layout, &opt, &h);
    Py_END_ALLOW_THREADS if (st != NIXL_SUCCESS) return _pynixl_raise(st, "prepXferDlistStrided failed (the log line "
                                                                           "says why)");
    return _pynixl_handle_new(self, h, _PYNIXL_H_DLIST);
}

/* indices: a list/tuple of ints or a 1-D integer buffer (numpy) */
static int *_pynixl_indices(PyObject *o, size_t *n) {
    int *v = NULL;
    Py_ssize_t i, cnt;
    if (PyObject_CheckBuffer(o) && !PyBytes_Check(o)) {
        Py_buffer b;
        if (PyObject_GetBuffer(o, &b, PyBUF_RECORDS_RO) != 0) return NULL;
        if (b.ndim != 1 || !_pynixl_buf_is_int(&b)) {
            PyBuffer_Release(&b);
            PyErr_SetString(_pynixl_exc[2], "NIXL_ERR_INVALID_PARAM: indices must be a 1-D integer array");
            return NULL;
        }
        cnt = b.shape[0];
        v = (int *)PyMem_Malloc((size_t)(cnt ? cnt : 1) * sizeof *v);
        for (i = 0; v && i < cnt; i++) {
            unsigned long long x;
            if (_pynixl_buf_u64((const char *)b.buf + i * b.strides[0], &b, &x) || x > INT32_MAX) {
                PyMem_Free(v);
                v = NULL;
                PyErr_Format(_pynixl_exc[2], "NIXL_ERR_INVALID_PARAM: index %zd is negative or too large", i);
            } else {
                v[i] = (int)x;
            }
        }
        if (!v && !PyErr_Occurred()) PyErr_NoMemory();
        PyBuffer_Release(&b);
        *n = (size_t)cnt;
        return v;
    } else {
        PyObject *seq = PySequence_Fast(o, "indices must be a list of ints or a 1-D integer array");
        if (!seq) {
            PyErr_Clear();
            PyErr_SetString(_pynixl_exc[2], "NIXL_ERR_INVALID_PARAM: indices must be a list of ints or a 1-D "
                                            "integer array");
            return NULL;
        }
        cnt = PySequence_Fast_GET_SIZE(seq);
        v = (int *)PyMem_Malloc((size_t)(cnt ? cnt : 1) * sizeof *v);
        for (i = 0; v && i < cnt; i++) {
            long x = PyLong_AsLong(PySequence_Fast_GET_ITEM(seq, i));
            if ((x == -1 && PyErr_Occurred()) || x < 0 || x > INT32_MAX) {
                PyErr_Clear();
                PyMem_Free(v);
                v = NULL;
                PyErr_Format(_pynixl_exc[2], "NIXL_ERR_INVALID_PARAM: index %zd is not an int in 0..2^31-1", i);
            } else {
                v[i] = (int)x;
            }
        }
        if (!v && !PyErr_Occurred()) PyErr_NoMemory();
        Py_DECREF(seq);
        *n = (size_t)cnt;
        return v;
    }
}

static PyObject *_pynixl_make_xfer_req(PyObject *obj, PyObject *args, PyObject *kw) {
    static char *kws[] = {"operation", "local_side", "local_indices", "remote_side", "remote_indices",
                          "notif_msg", "backends", "skip_desc_merge", NULL};
    _pynixl_agent *self = (_pynixl_agent *)obj;
    PyObject *lo, *li, *ro, *ri, *msg = NULL, *bes = NULL, *r = NULL;
    int op, skip = 0, *lidx = NULL, *ridx = NULL;
    size_t ln = 0, rn = 0;
    nixl_dlist_handle_t *lh = NULL, *rh = NULL;
    nixl_xfer_req_t *req = NULL;
    _pynixl_bes b;
    nixl_opt_args_t opt;
    nixl_status_t st;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "iOOOO|OOp:makeXferReq", kws, &op, &lo, &li, &ro, &ri, &msg, &bes,
                                     &skip) ||
        _pynixl_agent_live(self) || _pynixl_op(op) || _pynixl_backends(self, bes, &b))
        return NULL;
    _pynixl_opt(&opt, &b);
    if (_pynixl_notif_opt(&opt, msg) || !(lidx = _pynixl_indices(li, &ln)) || !(ridx = _pynixl_indices(ri, &rn)))
        goto out;
    if (!(lh = (nixl_dlist_handle_t *)_pynixl_handle_get(self, lo, _PYNIXL_H_DLIST))) goto out;
    if (!(rh = (nixl_dlist_handle_t *)_pynixl_handle_get(self, ro, _PYNIXL_H_DLIST))) goto out;
    opt.skip_desc_merge = skip;
    Py_BEGIN_ALLOW_THREADS st = nixl_make_xfer_req(self->a, (nixl_xfer_op_t)op, lh, lidx, ln, rh, ridx, rn, &opt, &req);
    Py_END_ALLOW_THREADS if (st != NIXL_SUCCESS) _pynixl_raise(st, "makeXferReq failed (the log line says why)");
    else r = _pynixl_handle_new(self, req, _PYNIXL_H_XFER);
out:
    if (lh) _pynixl_handle_put(self, lh);
    if (rh) _pynixl_handle_put(self, rh);
    PyMem_Free(lidx);
    PyMem_Free(ridx);
    return r;
}

static PyObject *_pynixl_create_xfer_req(PyObject *obj, PyObject *args, PyObject *kw) {
    static char *kws[] = {"operation", "local_descs", "remote_descs", "remote_agent", "notif_msg", "backends", NULL};
    _pynixl_agent *self = (_pynixl_agent *)obj;
    PyObject *lo, *ro, *n, *msg = NULL, *bes = NULL;
    const char *name;
    int op;
    _pynixl_view lv, rv;
    _pynixl_bes b;
    nixl_opt_args_t opt;
    nixl_xfer_req_t *req = NULL;
    nixl_status_t st;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "iOOO|OO:createXferReq", kws, &op, &lo, &ro, &n, &msg, &bes) ||
        _pynixl_agent_live(self) || _pynixl_op(op) || !(name = _pynixl_name(n, "the remote agent")) ||
        _pynixl_backends(self, bes, &b))
        return NULL;
    _pynixl_opt(&opt, &b);
    if (_pynixl_notif_opt(&opt, msg) || _pynixl_view_open(lo, &lv, 0, "local_descs")) return NULL;
    if (_pynixl_view_open(ro, &rv, 0, "remote_descs")) {
        _pynixl_view_close(&lv);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS st = nixl_create_xfer_req(self->a, (nixl_xfer_op_t)op, &lv.v, &rv.v, name, &opt, &req);
    Py_END_ALLOW_THREADS _pynixl_view_close(&lv);
    _pynixl_view_close(&rv);
    if (st != NIXL_SUCCESS) return _pynixl_raise(st, "createXferReq failed (the log line says why)");
    return _pynixl_handle_new(self, req, _PYNIXL_H_XFER);
}

static PyObject *_pynixl_post_xfer_req(PyObject *obj, PyObject *args) {
    _pynixl_agent *self = (_pynixl_agent *)obj;
    PyObject *h, *msg = NULL;
    nixl_xfer_req_t *req;
    nixl_opt_args_t opt;
    nixl_status_t st;
    if (!PyArg_ParseTuple(args, "O|O:postXferReq", &h, &msg) || _pynixl_agent_live(self)) return NULL;
    _pynixl_opt(&opt, NULL);
    if (_pynixl_notif_opt(&opt, msg)) return NULL;
    if (!(req = (nixl_xfer_req_t *)_pynixl_handle_get(self, h, _PYNIXL_H_XFER))) return NULL;
    Py_BEGIN_ALLOW_THREADS st = nixl_post_xfer_req(self->a, req, opt.has_notif ? &opt : NULL);
    Py_END_ALLOW_THREADS _pynixl_handle_put(self, req);
    return _pynixl_status(st, "postXferReq failed (the log line says why)");
}

static PyObject *_pynixl_get_xfer_status(PyObject *obj, PyObject *h) {
    _pynixl_agent *self = (_pynixl_agent *)obj;
    nixl_xfer_req_t *req;
    nixl_status_t st;
    if (_pynixl_agent_live(self) || !(req = (nixl_xfer_req_t *)_pynixl_handle_get(self, h, _PYNIXL_H_XFER))) return NULL;
    Py_BEGIN_ALLOW_THREADS st = nixl_get_xfer_status(self->a, req);
    Py_END_ALLOW_THREADS _pynixl_handle_put(self, req);
    return _pynixl_status(st, "the transfer failed (the log line says why)");
}

static PyObject *_pynixl_query_xfer_backend(PyObject *obj, PyObject *h) {
    _pynixl_agent *self = (_pynixl_agent *)obj;
    nixl_xfer_req_t *req;
    nixl_backend_t *be = NULL;
    nixl_status_t st;
    if (_pynixl_agent_live(self) || !(req = (nixl_xfer_req_t *)_pynixl_handle_get(self, h, _PYNIXL_H_XFER))) return NULL;
    st = nixl_query_xfer_backend(self->a, req, &be);
    _pynixl_handle_put(self, req);
    if (st != NIXL_SUCCESS) return _pynixl_raise(st, "queryXferBackend failed");
    return PyLong_FromUnsignedLongLong((uintptr_t)be);
}

static PyObject *_pynixl_estimate_xfer_cost(PyObject *obj, PyObject *h) {
    _pynixl_agent *self = (_pynixl_agent *)obj;
    nixl_xfer_req_t *req;
    int64_t dur = 0, margin = 0;
    nixl_status_t st;
    if (_pynixl_agent_live(self) || !(req = (nixl_xfer_req_t *)_pynixl_handle_get(self, h, _PYNIXL_H_XFER))) return NULL;
    st = nixl_estimate_xfer_cost(self->a, req, &dur, &margin);
    _pynixl_handle_put(self, req);
    if (st != NIXL_SUCCESS) return _pynixl_raise(st, "estimateXferCost: the backend has no estimate");
    return Py_BuildValue("(LLi)", (long long)dur, (long long)margin, 0);
}

static PyObject *_pynixl_get_xfer_telemetry(PyObject *obj, PyObject *h) {
    _pynixl_agent *self = (_pynixl_agent *)obj;
    nixl_xfer_req_t *req;
    nixl_xfer_telemetry_t t;
    nixl_status_t st;
    PyObject *r;
    if (_pynixl_agent_live(self) || !(req = (nixl_xfer_req_t *)_pynixl_handle_get(self, h, _PYNIXL_H_XFER))) return NULL;
    memset(&t, 0, sizeof t);
    st = nixl_get_xfer_telemetry(self->a, req, &t);
    _pynixl_handle_put(self, req);
    if (st != NIXL_SUCCESS)
        return _pynixl_raise(st, self->telemetry ? "no telemetry for this request yet (it has not completed)"
                                                 : "telemetry is off (capture_telemetry, or NIXL_TELEMETRY_ENABLE=y)");
    if (!(r = PyStructSequence_New(&_pynixl_telemetry_type))) return NULL;
    PyStructSequence_SET_ITEM(r, 0, PyLong_FromUnsignedLongLong(t.start_us));
    PyStructSequence_SET_ITEM(r, 1, PyLong_FromUnsignedLongLong(t.post_us));
    PyStructSequence_SET_ITEM(r, 2, PyLong_FromUnsignedLongLong(t.xfer_us));
    PyStructSequence_SET_ITEM(r, 3, PyLong_FromUnsignedLongLong(t.total_bytes));
    PyStructSequence_SET_ITEM(r, 4, PyLong_FromUnsignedLongLong(t.desc_count));
    if (PyErr_Occurred()) {
        Py_DECREF(r);
        return NULL;
    }
    return r;
}

static PyObject *_pynixl_release_common(PyObject *obj, PyObject *h, int kind) {
    _pynixl_agent *self = (_pynixl_agent *)obj;
    uintptr_t key;
    _pynixl_hent *e;
    nixl_status_t st;
    if (_pynixl_agent_live(self)) return NULL;
    if (Py_IS_TYPE(h, &_pynixl_handle_type) && ((_pynixl_handle *)h)->released) return PyLong_FromLong(0); /* again */
    key = Py_IS_TYPE(h, &_pynixl_handle_type) ? ((_pynixl_handle *)h)->key
                                              : (uintptr_t)PyLong_AsUnsignedLongLong(h);
    if (PyErr_Occurred()) {
        PyErr_Clear();
        return _pynixl_raise(NIXL_ERR_INVALID_PARAM, "not a handle");
    }
    e = key > 1 ? _pynixl_hfind(&self->h, key) : NULL;
    if (e && e->kind != kind) return _pynixl_raise(NIXL_ERR_INVALID_PARAM, "a handle of the other kind");
    st = _pynixl_handle_end(self, key); /* a second release is a no-op */
    _pynixl_retry_parked(self);
    return _pynixl_status(st, "release failed");
}

static PyObject *_pynixl_release_xfer_req(PyObject *o, PyObject *h) { return _pynixl_release_common(o, h, _PYNIXL_H_XFER); }
static PyObject *_pynixl_release_dlist(PyObject *o, PyObject *h) { return _pynixl_release_common(o, h, _PYNIXL_H_DLIST); }

/* --- notifications */

typedef struct {
    char *name;
    char *msg;
    size_t len;
} _pynixl_note;

typedef struct {
    _pynixl_note *v;
    size_t n, cap;
    int oom;
} _pynixl_notes;

/* runs without the GIL: copies only */
static void _pynixl_collect(void *user, const char *remote, const void *msg, size_t len) {
    _pynixl_notes *ns = (_pynixl_notes *)user;
    _pynixl_note *x;
    if (ns->n == ns->cap) {
        size_t cap = ns->cap ? ns->cap * 2 : 16;
        _pynixl_note *v = (_pynixl_note *)realloc(ns->v, cap * sizeof *v);
        if (!v) {
            ns->oom = 1;
            return;
        }
        ns->v = v;
        ns->cap = cap;
    }
    x = &ns->v[ns->n];
    x->name = strdup(remote);
    x->msg = (char *)malloc(len ? len : 1);
    if (!x->name || !x->msg) {
        free(x->name);
        free(x->msg);
        ns->oom = 1;
        return;
    }
    memcpy(x->msg, msg, len);
    x->len = len;
    ns->n++;
}

static int _pynixl_notes_to_dict(_pynixl_notes *ns, PyObject *d) {
    size_t i;
    int rc = 0;
    for (i = 0; i < ns->n; i++) {
        PyObject *k = rc ? NULL : PyUnicode_DecodeUTF8(ns->v[i].name, (Py_ssize_t)strlen(ns->v[i].name), "replace");
        PyObject *m = k ? PyBytes_FromStringAndSize(ns->v[i].msg, (Py_ssize_t)ns->v[i].len) : NULL;
        PyObject *l = m ? PyDict_GetItemWithError(d, k) : NULL;
        if (m && !l && !PyErr_Occurred()) {
            if ((l = PyList_New(0)) && PyDict_SetItem(d, k, l) == 0) Py_DECREF(l); /* the dict holds it */
            else Py_CLEAR(l);
        }
        if (!l || PyList_Append(l, m)) rc = -1;
        Py_XDECREF(k);
        Py_XDECREF(m);
        free(ns->v[i].name);
        free(ns->v[i].msg);
    }
    free(ns->v);
    return rc;
}

/* getNotifs(notif_map=None): {sender: [bytes...]}, appended to notif_map */
static PyObject *_pynixl_get_notifs(PyObject *obj, PyObject *args) {
    _pynixl_agent *self = (_pynixl_agent *)obj;
    PyObject *d = NULL, *bes = NULL;
    _pynixl_notes ns;
    nixl_status_t st;
    if (!PyArg_ParseTuple(args, "|OO:getNotifs", &d, &bes) || _pynixl_agent_live(self)) return NULL;
    if (d && d != Py_None && !PyDict_Check(d)) return _pynixl_raise(NIXL_ERR_INVALID_PARAM, "notif_map must be a dict");
    d = d && d != Py_None ? Py_NewRef(d) : PyDict_New();
    if (!d) return NULL;
    memset(&ns, 0, sizeof ns);
    Py_BEGIN_ALLOW_THREADS st = nixl_get_notifs(self->a, _pynixl_collect, &ns);
    Py_END_ALLOW_THREADS if (_pynixl_notes_to_dict(&ns, d)) {
        Py_DECREF(d);
        return NULL;
    }
    _pynixl_retry_parked(self);
    if (ns.oom) PyErr_WarnEx(PyExc_RuntimeWarning, "nixl: out of memory: notifications were lost", 1);
    if (st < 0) {
        Py_DECREF(d);
        return _pynixl_raise(st, "getNotifs failed");
    }
    return d;
}

/* NIXL's send_notif does not return "try again": while flow control holds
   the notification back (IN_PROG: the peer has not drained), drive progress
   and retry, for at most 30 s. Runs without the GIL. */
static nixl_status_t _pynixl_gen_notif_retry(nixl_agent_t *a, const char *name, const void *msg, size_t len,
                                             const nixl_opt_args_t *opt) {
    uint64_t until = nixl_now_us() + 30000000u;
    nixl_status_t st;
    while ((st = nixl_gen_notif(a, name, msg, len, opt)) == NIXL_IN_PROG && nixl_now_us() < until)
        nixl_progress(a);
    return st;
}

static PyObject *_pynixl_gen_notif(PyObject *obj, PyObject *args) {
    _pynixl_agent *self = (_pynixl_agent *)obj;
    PyObject *n, *msg, *bes = NULL;
    const char *name;
    const void *p;
    Py_ssize_t len;
    _pynixl_bes b;
    nixl_opt_args_t opt;
    nixl_status_t st;
    if (!PyArg_ParseTuple(args, "OO|O:genNotif", &n, &msg, &bes) || _pynixl_agent_live(self) ||
        !(name = _pynixl_name(n, "the remote agent")) || _pynixl_msg(msg, &p, &len) || _pynixl_backends(self, bes, &b))
        return NULL;
    _pynixl_opt(&opt, &b);
    Py_BEGIN_ALLOW_THREADS st = _pynixl_gen_notif_retry(self->a, name, p ? p : "", (size_t)len, &opt);
    Py_END_ALLOW_THREADS
    if (st == NIXL_IN_PROG)
        return _pynixl_raise(NIXL_ERR_BACKEND, "genNotif: the peer has not drained its notifications for 30 s "
                                               "(flow control held this one back; nothing was sent)");
    return _pynixl_status(st, "genNotif failed (the log line says why)");
}

static PyObject *_pynixl_progress(PyObject *obj, PyObject *unused) {
    _pynixl_agent *self = (_pynixl_agent *)obj;
    nixl_status_t st;
    (void)unused;
    if (_pynixl_agent_live(self)) return NULL;
    Py_BEGIN_ALLOW_THREADS st = nixl_progress(self->a);
    Py_END_ALLOW_THREADS return _pynixl_status(st, "progress failed");
}

static PyMethodDef _pynixl_agent_methods[] = {
    {"getName", _pynixl_agent_get_name, METH_NOARGS, "the agent's name"},
    {"getListenPort", _pynixl_agent_listen_port, METH_NOARGS, "the metadata listener's port (0: none)"},
    {"getAvailPlugins", _pynixl_avail_plugins, METH_NOARGS, "backend plugins built in: ['UCX', 'VERBS']"},
    {"getPluginParams", _pynixl_plugin_params, METH_O, "(params, mem types) of a plugin"},
    {"getBackendParams", _pynixl_backend_params, METH_O, "(params, mem types) of a created backend"},
    {"createBackend", _pynixl_create_backend, METH_VARARGS, "createBackend(type, params={}) -> backend handle"},
    {"getBackendName", _pynixl_backend_name, METH_O, "the plugin name of a backend handle"},
    {"registerMem", _pynixl_register_mem, METH_VARARGS, "registerMem(reg_dlist, backends=[])"},
    {"deregisterMem", _pynixl_deregister_mem, METH_VARARGS, "deregisterMem(reg_dlist, backends=[])"},
    {"queryMem", _pynixl_query_mem, METH_VARARGS,
     "queryMem(reg_dlist, backend) -> [dict | None]: a registered file's size, mode, mtime (POSIX backend)"},
    {"makeConnection", _pynixl_make_connection, METH_VARARGS, "makeConnection(remote, backends=[])"},
    {"getLocalMD", _pynixl_get_local_md, METH_NOARGS, "this agent's metadata (bytes)"},
    {"getLocalPartialMD", _pynixl_get_local_partial_md, METH_VARARGS,
     "getLocalPartialMD(reg_dlist, inc_conn_info=False, backends=[]) -> bytes"},
    {"loadRemoteMD", _pynixl_load_remote_md, METH_O, "loads a peer's metadata; returns its name (bytes)"},
    {"invalidateRemoteMD", _pynixl_invalidate_remote_md, METH_O, "forgets a peer"},
    {"checkRemoteMD", _pynixl_check_remote_md, METH_VARARGS, "checkRemoteMD(remote, descs=None) -> NIXL_SUCCESS or "
                                                             "NIXL_ERR_NOT_FOUND"},
    {"sendLocalMD", _pynixl_send_local_md, METH_VARARGS, "sendLocalMD(ip_addr, port, label=None)"},
    {"sendLocalPartialMD", _pynixl_send_local_partial_md, METH_VARARGS,
     "sendLocalPartialMD(reg_dlist, inc_conn_info, backends, ip_addr, port, label=None)"},
    {"fetchRemoteMD", _pynixl_fetch_remote_md, METH_VARARGS, "fetchRemoteMD(remote, ip_addr, port, label=None)"},
    {"invalidateLocalMD", _pynixl_invalidate_local_md, METH_VARARGS, "invalidateLocalMD(ip_addr, port)"},
    {"prepXferDlistStrided", _pynixl_prep_xfer_dlist_strided, METH_VARARGS,
     "prepXferDlistStrided(agent_name, mem, base, len, stride, count, dev_id=0, backends=None) -> handle: count "
     "blocks of len bytes every stride bytes, O(1) memory (nixl.h's own, not in NIXL)"},
    {"prepXferDlist", _pynixl_prep_xfer_dlist, METH_VARARGS,
     "prepXferDlist(agent_name, xfer_dlist, backends=[]) -> handle ('NIXL_INIT_AGENT' or '' = local side)"},
    {"makeXferReq", (PyCFunction)(void (*)(void))_pynixl_make_xfer_req, METH_VARARGS | METH_KEYWORDS,
     "makeXferReq(op, local_side, local_indices, remote_side, remote_indices, notif_msg=None, backends=[], "
     "skip_desc_merge=False) -> handle"},
    {"createXferReq", (PyCFunction)(void (*)(void))_pynixl_create_xfer_req, METH_VARARGS | METH_KEYWORDS,
     "createXferReq(op, local_descs, remote_descs, remote_agent, notif_msg=None, backends=[]) -> handle"},
    {"postXferReq", _pynixl_post_xfer_req, METH_VARARGS, "postXferReq(handle, notif_msg=None) -> status"},
    {"getXferStatus", _pynixl_get_xfer_status, METH_O, "NIXL_SUCCESS or NIXL_IN_PROG; an error raises"},
    {"queryXferBackend", _pynixl_query_xfer_backend, METH_O, "the backend handle a request runs on"},
    {"estimateXferCost", _pynixl_estimate_xfer_cost, METH_O, "(duration_us, err_margin_us, method)"},
    {"getXferTelemetry", _pynixl_get_xfer_telemetry, METH_O, "nixlXferTelemetry of the last completed post"},
    {"releaseXferReq", _pynixl_release_xfer_req, METH_O, "releases a request (again: no-op)"},
    {"releasedDlistH", _pynixl_release_dlist, METH_O, "releases a prepared list (again: no-op)"},
    {"releaseDlistHandle", _pynixl_release_dlist, METH_O, "releases a prepared list (again: no-op)"},
    {"getNotifs", _pynixl_get_notifs, METH_VARARGS, "getNotifs(notif_map=None) -> {sender: [bytes]}"},
    {"genNotif", _pynixl_gen_notif, METH_VARARGS, "genNotif(remote, msg, backends=[])"},
    {"progress", _pynixl_progress, METH_NOARGS, "drives progress once (without a progress thread)"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject _pynixl_agent_type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "nixl._bindings.nixlAgent",
    .tp_basicsize = sizeof(_pynixl_agent),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "nixlAgent(name, config=None): one nixl.h agent",
    .tp_new = PyType_GenericNew,
    .tp_init = _pynixl_agent_init,
    .tp_dealloc = _pynixl_agent_dealloc,
    .tp_methods = _pynixl_agent_methods,
};

/* ------------------------------------------------------------------------ */
// >>module
/* ------------------------------------------------------------------------ */

static PyStructSequence_Field _pynixl_telemetry_fields[] = {
    {"startTime", "when the request was posted (CLOCK_MONOTONIC, microseconds)"},
    {"postDuration", "time spent in the post call (microseconds)"},
    {"xferDuration", "post to observed completion (microseconds)"},
    {"totalBytes", "bytes the request moves"},
    {"descCount", "descriptors of the request"},
    {NULL, NULL},
};

static PyStructSequence_Desc _pynixl_telemetry_desc = {
    "nixl._bindings.nixlXferTelemetry",
    "Telemetry of a completed transfer (NIXL's nixlXferTelemetry)",
    _pynixl_telemetry_fields,
    5,
};

/* _exception_of(status): the class an error status raises (the table the
   whole module uses; the tests check it for every status) */
static PyObject *_pynixl_exception_of(PyObject *mod, PyObject *arg) {
    long st = PyLong_AsLong(arg);
    (void)mod;
    if (st == -1 && PyErr_Occurred()) return NULL;
    if (st >= 0) Py_RETURN_NONE;
    return Py_NewRef(_pynixl_exc_of((nixl_status_t)st));
}

static PyMethodDef _pynixl_module_methods[] = {
    {"_exception_of", _pynixl_exception_of, METH_O, "the exception class of an error status"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef _pynixl_module = {
    PyModuleDef_HEAD_INIT, "_bindings", "nixl.h's native layer (NIXL's binding names)", -1, _pynixl_module_methods,
    NULL, NULL, NULL, NULL,
};

static int _pynixl_add_int(PyObject *m, const char *name, long v) { return PyModule_AddIntConstant(m, name, v); }

static int _pynixl_add_constants(PyObject *m) {
    static const struct {
        const char *name;
        long v;
    } k[] = {
        {"DRAM_SEG", NIXL_DRAM}, {"VRAM_SEG", NIXL_VRAM}, {"BLK_SEG", NIXL_BLK}, {"OBJ_SEG", NIXL_OBJ},
        {"FILE_SEG", NIXL_FILE}, {"NIXL_READ", NIXL_READ}, {"NIXL_WRITE", NIXL_WRITE},
        {"NIXL_IN_PROG", NIXL_IN_PROG}, {"NIXL_SUCCESS", NIXL_SUCCESS},
        {"NIXL_ERR_NOT_POSTED", NIXL_ERR_NOT_POSTED}, {"NIXL_ERR_INVALID_PARAM", NIXL_ERR_INVALID_PARAM},
        {"NIXL_ERR_BACKEND", NIXL_ERR_BACKEND}, {"NIXL_ERR_NOT_FOUND", NIXL_ERR_NOT_FOUND},
        {"NIXL_ERR_MISMATCH", NIXL_ERR_MISMATCH}, {"NIXL_ERR_NOT_ALLOWED", NIXL_ERR_NOT_ALLOWED},
        {"NIXL_ERR_REPOST_ACTIVE", NIXL_ERR_REPOST_ACTIVE}, {"NIXL_ERR_UNKNOWN", NIXL_ERR_UNKNOWN},
        {"NIXL_ERR_NOT_SUPPORTED", NIXL_ERR_NOT_SUPPORTED},
        {"NIXL_ERR_REMOTE_DISCONNECT", NIXL_ERR_REMOTE_DISCONNECT}, {"NIXL_ERR_CANCELED", NIXL_ERR_CANCELED},
        {"NIXL_ERR_NO_TELEMETRY", NIXL_ERR_NO_TELEMETRY},
        {"NIXL_THREAD_SYNC_NONE", 0}, {"NIXL_THREAD_SYNC_STRICT", 1}, {"NIXL_THREAD_SYNC_RW", 2},
        {"NIXL_THREAD_SYNC_DEFAULT", 3},
    };
    size_t i;
    for (i = 0; i < sizeof k / sizeof k[0]; i++)
        if (_pynixl_add_int(m, k[i].name, k[i].v)) return -1;
    if (_pynixl_add_int(m, "DEFAULT_COMM_PORT", 8888)) return -1;
    return PyModule_AddStringConstant(m, "NIXL_INIT_AGENT", "");
}

static int _pynixl_add_exceptions(PyObject *m) {
    int i;
    for (i = 1; i < _PYNIXL_NSTATUS; i++) {
        char qual[96];
        snprintf(qual, sizeof qual, "nixl._bindings.%s", _pynixl_exc_names[i]);
        if (!(_pynixl_exc[i] = PyErr_NewException(qual, PyExc_RuntimeError, NULL))) return -1;
        if (PyModule_AddObjectRef(m, _pynixl_exc_names[i], _pynixl_exc[i])) return -1;
    }
    /* NIXL's spelling varies across versions: both names of CANCELED */
    return PyModule_AddObjectRef(m, "nixlCanceledError", _pynixl_exc[11]);
}

static int _pynixl_add_type(PyObject *m, PyTypeObject *t, const char *name) {
    if (PyType_Ready(t)) return -1;
    return PyModule_AddObjectRef(m, name, (PyObject *)t);
}

PyMODINIT_FUNC PyInit__bindings(void) {
    PyObject *m = PyModule_Create(&_pynixl_module);
    if (!m) return NULL;
    _pynixl_remote_dlist_type.tp_base = &_pynixl_xfer_dlist_type;
    if (!_pynixl_unverified_key && !(_pynixl_unverified_key = PyUnicode_InternFromString("notif_unverified"))) {
        Py_DECREF(m);
        return NULL;
    }
    if (_pynixl_add_constants(m) || _pynixl_add_exceptions(m) ||
        _pynixl_add_type(m, &_pynixl_xfer_dlist_type, "nixlXferDList") ||
        _pynixl_add_type(m, &_pynixl_reg_dlist_type, "nixlRegDList") ||
        _pynixl_add_type(m, &_pynixl_remote_dlist_type, "nixlRemoteDList") ||
        _pynixl_add_type(m, &_pynixl_config_type, "nixlAgentConfig") ||
        _pynixl_add_type(m, &_pynixl_handle_type, "nixlHandle") ||
        _pynixl_add_type(m, &_pynixl_agent_type, "nixlAgent") ||
        PyStructSequence_InitType2(&_pynixl_telemetry_type, &_pynixl_telemetry_desc) ||
        PyModule_AddObjectRef(m, "nixlXferTelemetry", (PyObject *)&_pynixl_telemetry_type)) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
