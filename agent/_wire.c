/* agent._wire: a batch of version 2 change records as one JSON body, without decoding them.
 *
 * The sender's hot path for json and jsonl destinations. A version 2 payload is the envelope a
 * receiver gets, minus `seq` (docs/format.md, "Version 2"), so a body is the payloads with
 * `,"seq":N` spliced in before each closing brace, joined. Done per record in Python this costs
 * more than posting the body; here it is one pass and one allocation per batch.
 *
 * json_body(records, open, sep, close) -> (body, keys) or None
 *   records: a list of wal Records (tuples whose item 0 is the seq and item 2 the payload bytes).
 *   body:    open + (payload[2:-1] + b',"seq":' + seq + b'}') joined by sep + close.
 *   keys:    the 32-byte stored idempotency keys, concatenated in order (for the batch key).
 *   None when any payload is not a version 2 record carrying its key: the caller then takes the
 *   general path, which decodes and checks every record.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

static const char V2_START[] = "\xc1\x02{\"table\":";
#define V2_START_LEN 11
static const char KEY_FIELD[] = "\"idempotency_key\":\"";
#define KEY_FIELD_LEN 19
#define KEY_LEN 32
#define KEY_TAIL_LEN (KEY_FIELD_LEN + KEY_LEN + 2) /* the field, the key, then `"}` */
#define SEQ_PREFIX ",\"seq\":"
#define SEQ_PREFIX_LEN 7
#define MAX_DIGITS 20

/* Decimal digits of a non-negative seq at `out`; returns how many. */
static int put_digits(char *out, unsigned long long value) {
    char digits[MAX_DIGITS];
    int n = 0;
    do {
        digits[n++] = (char)('0' + value % 10);
        value /= 10;
    } while (value);
    for (int i = 0; i < n; i++) out[i] = digits[n - 1 - i];
    return n;
}

static int is_hex(char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); }

/* The payload carries its key: it starts like a version 2 record and ends `"idempotency_key":"<32 hex>"}`. */
static int carries_key(const char *p, Py_ssize_t n) {
    if (n < V2_START_LEN + KEY_TAIL_LEN || memcmp(p, V2_START, V2_START_LEN) != 0) return 0;
    const char *tail = p + n - KEY_TAIL_LEN;
    if (memcmp(tail, KEY_FIELD, KEY_FIELD_LEN) != 0 || p[n - 2] != '"' || p[n - 1] != '}') return 0;
    for (int i = 0; i < KEY_LEN; i++)
        if (!is_hex(tail[KEY_FIELD_LEN + i])) return 0;
    return 1;
}

static PyObject *json_body(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *records;
    const char *open, *sep, *close;
    Py_ssize_t open_len, sep_len, close_len;
    if (!PyArg_ParseTuple(args, "O!y#y#y#", &PyList_Type, &records, &open, &open_len, &sep, &sep_len,
                          &close, &close_len))
        return NULL;
    Py_ssize_t count = PyList_GET_SIZE(records);

    /* First pass: check every record and size the body. */
    Py_ssize_t size = open_len + close_len + (count > 0 ? (count - 1) * sep_len : 0);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *record = PyList_GET_ITEM(records, i);
        if (!PyTuple_Check(record) || PyTuple_GET_SIZE(record) < 3) Py_RETURN_NONE;
        PyObject *seq = PyTuple_GET_ITEM(record, 0), *payload = PyTuple_GET_ITEM(record, 2);
        if (!PyLong_Check(seq) || !PyBytes_Check(payload)) Py_RETURN_NONE;
        Py_ssize_t n = PyBytes_GET_SIZE(payload);
        if (!carries_key(PyBytes_AS_STRING(payload), n)) Py_RETURN_NONE;
        size += (n - 3) + SEQ_PREFIX_LEN + MAX_DIGITS + 1;
    }

    PyObject *body = PyBytes_FromStringAndSize(NULL, size);
    if (body == NULL) return NULL;
    PyObject *keys = PyBytes_FromStringAndSize(NULL, count * KEY_LEN);
    if (keys == NULL) {
        Py_DECREF(body);
        return NULL;
    }
    char *out = PyBytes_AS_STRING(body), *key_out = PyBytes_AS_STRING(keys);
    memcpy(out, open, open_len);
    out += open_len;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *record = PyList_GET_ITEM(records, i);
        PyObject *payload = PyTuple_GET_ITEM(record, 2);
        unsigned long long seq = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(record, 0));
        if (seq == (unsigned long long)-1 && PyErr_Occurred()) {
            Py_DECREF(body);
            Py_DECREF(keys);
            return NULL;
        }
        const char *p = PyBytes_AS_STRING(payload);
        Py_ssize_t n = PyBytes_GET_SIZE(payload);
        if (i > 0) {
            memcpy(out, sep, sep_len);
            out += sep_len;
        }
        memcpy(out, p + 2, n - 3); /* without the prefix and the closing brace */
        out += n - 3;
        memcpy(out, SEQ_PREFIX, SEQ_PREFIX_LEN);
        out += SEQ_PREFIX_LEN;
        out += put_digits(out, seq);
        *out++ = '}';
        memcpy(key_out, p + n - 2 - KEY_LEN, KEY_LEN);
        key_out += KEY_LEN;
    }
    memcpy(out, close, close_len);
    out += close_len;
    if (_PyBytes_Resize(&body, out - PyBytes_AS_STRING(body)) < 0) {
        Py_DECREF(keys);
        return NULL;
    }
    return Py_BuildValue("(NN)", body, keys);
}

static PyMethodDef methods[] = {
    {"json_body", json_body, METH_VARARGS,
     "json_body(records, open, sep, close) -> (body, keys) or None: version 2 payloads spliced into one body."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "agent._wire", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__wire(void) { return PyModule_Create(&module); }
