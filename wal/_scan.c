/* wal._scan: the inner loops of the read path (wal.chunk.parse_intact) and of appending
 * (frame_into, for wal.pending.PendingRecords.add_batch) in C.
 *
 * parse_intact(buf, pos, first_seq, last_seq, stop, max_record_bytes, path, archived, base,
 *              record_type, crc, residue) -> (records, pos)
 *
 * Exactly the Python function in wal/chunk.py, which stays the reference and the fallback: from
 * index `pos` of `buf`, the records that are whole, intact and carry first_seq, first_seq + 1, ...
 * up to last_seq, stopping before a record that starts at or after `stop` and at the first record
 * that is not whole or not intact. Each record is `record_type((seq, timestamp_ms, payload, path,
 * base + offset, archived))`, built as a tuple of that (NamedTuple) type. The CRC is checked by
 * calling `crc(view_of_record_after_its_length_field, 0)` and comparing with `residue`: the same
 * CRC function the Python path uses (awscrt, or crcmod), so both agree bit for bit.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define RECORD_OVERHEAD 32 /* length 4, seq 8, status 1, reserved 3, timestamp 8, crc 8 */
#define PREFIX_SIZE 24

static uint32_t le32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static int64_t le64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
    return (int64_t)v;
}

static PyObject *parse_intact(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer view;
    Py_ssize_t pos, stop, max_record_bytes, base;
    long long first_seq, last_seq;
    PyObject *path, *archived, *record_type, *crc, *residue;
    if (!PyArg_ParseTuple(args, "y*nLLnnOOnOOO", &view, &pos, &first_seq, &last_seq, &stop, &max_record_bytes,
                          &path, &archived, &base, &record_type, &crc, &residue))
        return NULL;
    if (!PyType_Check(record_type) || !PyType_IsSubtype((PyTypeObject *)record_type, &PyTuple_Type)) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_TypeError, "record_type must be a tuple type");
        return NULL;
    }
    PyTypeObject *type = (PyTypeObject *)record_type;
    const unsigned char *buf = view.buf;
    Py_ssize_t size = view.len;
    if (stop > size - RECORD_OVERHEAD + 1) stop = size - RECORD_OVERHEAD + 1;

    PyObject *zero = NULL;
    PyObject *out = PyList_New(0);
    if (out == NULL) goto fail;
    zero = PyLong_FromLong(0);
    if (zero == NULL) goto fail;
    for (long long seq = first_seq; seq <= last_seq; seq++) {
        if (pos >= stop) break;
        const unsigned char *p = buf + pos;
        Py_ssize_t length = (Py_ssize_t)le32(p);
        if (le64(p + 4) != seq || length < RECORD_OVERHEAD || length > max_record_bytes || pos + length > size)
            break;
        PyObject *region = PyMemoryView_FromMemory((char *)p + 4, length - 4, PyBUF_READ);
        if (region == NULL) goto fail;
        PyObject *crc_args[2] = {region, zero};
        PyObject *computed = PyObject_Vectorcall(crc, crc_args, 2, NULL);
        Py_DECREF(region);
        if (computed == NULL) goto fail;
        int intact = PyObject_RichCompareBool(computed, residue, Py_EQ);
        Py_DECREF(computed);
        if (intact < 0) goto fail;
        if (!intact) break;

        PyObject *record = type->tp_alloc(type, 6);
        if (record == NULL) goto fail;
        PyObject *items[6] = {
            PyLong_FromLongLong(seq),
            PyLong_FromLongLong(le64(p + 16)),
            PyBytes_FromStringAndSize((const char *)p + PREFIX_SIZE, length - RECORD_OVERHEAD),
            path,
            PyLong_FromSsize_t(base + pos),
            archived,
        };
        Py_INCREF(path);
        Py_INCREF(archived);
        for (int i = 0; i < 6; i++) PyTuple_SET_ITEM(record, i, items[i]);
        if (items[0] == NULL || items[1] == NULL || items[2] == NULL || items[4] == NULL) {
            Py_DECREF(record);
            goto fail;
        }
        int appended = PyList_Append(out, record);
        Py_DECREF(record);
        if (appended < 0) goto fail;
        pos += length;
    }
    Py_DECREF(zero);
    PyBuffer_Release(&view);
    return Py_BuildValue("(Nn)", out, pos);

fail:
    Py_XDECREF(zero);
    Py_XDECREF(out);
    PyBuffer_Release(&view);
    return NULL;
}

static void put_le(unsigned char *p, uint64_t v, int n) {
    for (int i = 0; i < n; i++) p[i] = (unsigned char)(v >> (8 * i));
}

/* frame_into(buffer, used, payloads, first_seq, timestamp_ms, status, crc) -> used
 *
 * The write side: each payload framed as a record (length, seq, status, 3 zero bytes, timestamp,
 * payload, CRC) into the bytearray `buffer` from index `used`, sequences from first_seq; the CRC
 * is `crc(view of the record from after its length field to before the CRC, 0)`, the same call the
 * read side checks with. The caller has made room (wal.pending.PendingRecords.add_batch). */
static PyObject *frame_into(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *buffer, *payloads, *crc;
    Py_ssize_t used;
    long long first_seq, timestamp_ms;
    int status;
    if (!PyArg_ParseTuple(args, "O!nO!LLiO", &PyByteArray_Type, &buffer, &used, &PyList_Type, &payloads, &first_seq,
                          &timestamp_ms, &status, &crc))
        return NULL;
    Py_ssize_t count = PyList_GET_SIZE(payloads), need = used;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *payload = PyList_GET_ITEM(payloads, i);
        if (!PyBytes_Check(payload)) {
            PyErr_SetString(PyExc_TypeError, "payloads must be bytes");
            return NULL;
        }
        need += RECORD_OVERHEAD + PyBytes_GET_SIZE(payload);
    }
    if (used < 0 || need > PyByteArray_GET_SIZE(buffer)) {
        PyErr_SetString(PyExc_ValueError, "the buffer has no room for these records");
        return NULL;
    }
    PyObject *zero = PyLong_FromLong(0);
    if (zero == NULL) return NULL;
    unsigned char *base = (unsigned char *)PyByteArray_AS_STRING(buffer);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *payload = PyList_GET_ITEM(payloads, i);
        Py_ssize_t n = PyBytes_GET_SIZE(payload), length = RECORD_OVERHEAD + n;
        unsigned char *p = base + used;
        put_le(p, (uint64_t)length, 4);
        put_le(p + 4, (uint64_t)(first_seq + i), 8);
        p[12] = (unsigned char)status;
        p[13] = p[14] = p[15] = 0;
        put_le(p + 16, (uint64_t)timestamp_ms, 8);
        memcpy(p + PREFIX_SIZE, PyBytes_AS_STRING(payload), (size_t)n);
        PyObject *region = PyMemoryView_FromMemory((char *)p + 4, length - 12, PyBUF_READ);
        if (region == NULL) goto fail;
        PyObject *crc_args[2] = {region, zero};
        PyObject *computed = PyObject_Vectorcall(crc, crc_args, 2, NULL);
        Py_DECREF(region);
        if (computed == NULL) goto fail;
        unsigned long long value = PyLong_AsUnsignedLongLong(computed);
        Py_DECREF(computed);
        if (value == (unsigned long long)-1 && PyErr_Occurred()) goto fail;
        put_le(p + length - 8, value, 8);
        used += length;
    }
    Py_DECREF(zero);
    return PyLong_FromSsize_t(used);

fail:
    Py_DECREF(zero);
    return NULL;
}

static PyMethodDef methods[] = {
    {"frame_into", frame_into, METH_VARARGS, "Frame payloads as records into a bytearray (see the comment above it)."},
    {"parse_intact", parse_intact, METH_VARARGS, "wal.chunk.parse_intact in C (see the module comment)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "wal._scan", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__scan(void) { return PyModule_Create(&module); }
