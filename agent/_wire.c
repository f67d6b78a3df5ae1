/* agent._wire: the C side of change records version 2 (docs/format.md, "Version 2").
 *
 * row_record(...) builds one version 2 payload for a capture source's row (the hot path of
 * capture), including the BLAKE2b idempotency key; json_body(...) joins stored payloads into one
 * request body for the sender. agent/change.py, agent/idempotency.py and agent/wire.py keep the
 * Python versions these must equal byte for byte (the tests compare them).
 *
 * json_body: a batch of version 2 change records as one JSON body, without decoding them.
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
#include <stdint.h>
#include <stdio.h>
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


/* ---- BLAKE2b (RFC 7693), unkeyed, for 16-byte digests ---------------------------------------- */

static const uint64_t B2_IV[8] = {
    0x6a09e667f3bcc908ULL, 0xbb67ae8584caa73bULL, 0x3c6ef372fe94f82bULL, 0xa54ff53a5f1d36f1ULL,
    0x510e527fade682d1ULL, 0x9b05688c2b3e6c1fULL, 0x1f83d9abfb41bd6bULL, 0x5be0cd19137e2179ULL,
};

static const uint8_t B2_SIGMA[12][16] = {
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
    {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4},
    {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
    {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13},
    {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
    {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11},
    {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
    {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5},
    {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0},
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
};

typedef struct {
    uint64_t h[8], t;
    uint8_t block[128];
    size_t used;
} b2_state;

static uint64_t rotr64(uint64_t x, int n) { return (x >> n) | (x << (64 - n)); }

static uint64_t load64(const uint8_t *p) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
#else
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
    return v;
#endif
}

#define B2_G(a, b, c, d, x, y)          \
    do {                                \
        a = a + b + (x);                \
        d = rotr64(d ^ a, 32);          \
        c = c + d;                      \
        b = rotr64(b ^ c, 24);          \
        a = a + b + (y);                \
        d = rotr64(d ^ a, 16);          \
        c = c + d;                      \
        b = rotr64(b ^ c, 63);          \
    } while (0)

static void b2_compress(b2_state *s, int last) {
    uint64_t v[16], m[16];
    for (int i = 0; i < 8; i++) {
        v[i] = s->h[i];
        v[i + 8] = B2_IV[i];
    }
    v[12] ^= s->t; /* inputs here are far below 2^64 bytes: the counter's high word stays 0 */
    if (last) v[14] = ~v[14];
    for (int i = 0; i < 16; i++) m[i] = load64(s->block + 8 * i);
    for (int r = 0; r < 12; r++) {
        const uint8_t *z = B2_SIGMA[r];
        B2_G(v[0], v[4], v[8], v[12], m[z[0]], m[z[1]]);
        B2_G(v[1], v[5], v[9], v[13], m[z[2]], m[z[3]]);
        B2_G(v[2], v[6], v[10], v[14], m[z[4]], m[z[5]]);
        B2_G(v[3], v[7], v[11], v[15], m[z[6]], m[z[7]]);
        B2_G(v[0], v[5], v[10], v[15], m[z[8]], m[z[9]]);
        B2_G(v[1], v[6], v[11], v[12], m[z[10]], m[z[11]]);
        B2_G(v[2], v[7], v[8], v[13], m[z[12]], m[z[13]]);
        B2_G(v[3], v[4], v[9], v[14], m[z[14]], m[z[15]]);
    }
    for (int i = 0; i < 8; i++) s->h[i] ^= v[i] ^ v[i + 8];
}

static void b2_init(b2_state *s, size_t outlen) {
    for (int i = 0; i < 8; i++) s->h[i] = B2_IV[i];
    s->h[0] ^= 0x01010000ULL ^ (uint64_t)outlen;
    s->t = 0;
    s->used = 0;
}

static void b2_update(b2_state *s, const void *data, size_t n) {
    const uint8_t *p = data;
    while (n > 0) {
        if (s->used == 128) { /* a full block, and more input follows: not the last */
            s->t += 128;
            b2_compress(s, 0);
            s->used = 0;
        }
        size_t take = 128 - s->used < n ? 128 - s->used : n;
        memcpy(s->block + s->used, p, take);
        s->used += take;
        p += take;
        n -= take;
    }
}

static void b2_final_hex(b2_state *s, char *hex, size_t outlen) {
    static const char digits[] = "0123456789abcdef";
    s->t += s->used;
    memset(s->block + s->used, 0, 128 - s->used);
    b2_compress(s, 1);
    for (size_t i = 0; i < outlen; i++) {
        uint8_t byte = (uint8_t)(s->h[i / 8] >> (8 * (i % 8)));
        hex[2 * i] = digits[byte >> 4];
        hex[2 * i + 1] = digits[byte & 15];
    }
}

/* ---- row_record ------------------------------------------------------------------------------ */

typedef struct {
    char *buf;
    size_t len, cap;
} out_buf;

static int out_reserve(out_buf *o, size_t more) {
    if (o->len + more <= o->cap) return 0;
    size_t cap = (o->cap ? o->cap : 512);
    while (cap < o->len + more) cap *= 2;
    char *grown = PyMem_Realloc(o->buf, cap);
    if (grown == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    o->buf = grown;
    o->cap = cap;
    return 0;
}

static int out_put(out_buf *o, const char *data, size_t n) {
    if (out_reserve(o, n) < 0) return -1;
    memcpy(o->buf + o->len, data, n);
    o->len += n;
    return 0;
}

#define OUT_LIT(o, lit) out_put((o), (lit), sizeof(lit) - 1)

/* A str as orjson writes it: UTF-8, with `"`, `\` and control characters escaped. */
static int out_json_str(out_buf *o, PyObject *text) {
    Py_ssize_t n;
    const char *p = PyUnicode_AsUTF8AndSize(text, &n);
    if (p == NULL) return -1;
    if (out_reserve(o, (size_t)n * 6 + 2) < 0) return -1;
    char *w = o->buf + o->len;
    *w++ = '"';
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c >= 0x20 && c != '"' && c != '\\') {
            *w++ = (char)c;
            continue;
        }
        *w++ = '\\';
        switch (c) {
        case '"': *w++ = '"'; break;
        case '\\': *w++ = '\\'; break;
        case '\b': *w++ = 'b'; break;
        case '\f': *w++ = 'f'; break;
        case '\n': *w++ = 'n'; break;
        case '\r': *w++ = 'r'; break;
        case '\t': *w++ = 't'; break;
        default:
            w += sprintf(w, "u%04x", c);
        }
    }
    *w++ = '"';
    o->len = (size_t)(w - o->buf);
    return 0;
}

static int out_json_str_or_null(out_buf *o, PyObject *value) {
    if (value == Py_None) return OUT_LIT(o, "null");
    if (!PyUnicode_Check(value)) {
        PyErr_SetString(PyExc_TypeError, "expected a str or None");
        return -1;
    }
    return out_json_str(o, value);
}

static int out_int_or_null(out_buf *o, PyObject *value) {
    if (value == Py_None) return OUT_LIT(o, "null");
    if (!PyLong_Check(value) || PyBool_Check(value)) {
        PyErr_SetString(PyExc_TypeError, "expected an int or None");
        return -1;
    }
    PyObject *text = PyObject_Str(value);
    if (text == NULL) return -1;
    Py_ssize_t n;
    const char *p = PyUnicode_AsUTF8AndSize(text, &n);
    int rc = p == NULL ? -1 : out_put(o, p, (size_t)n);
    Py_DECREF(text);
    return rc;
}

static int out_bytes(out_buf *o, PyObject *value) {
    if (!PyBytes_Check(value)) {
        PyErr_SetString(PyExc_TypeError, "expected bytes");
        return -1;
    }
    return out_put(o, PyBytes_AS_STRING(value), (size_t)PyBytes_GET_SIZE(value));
}

/* The UTF-8 of a str, for hashing. */
static const char *utf8_of(PyObject *text, Py_ssize_t *n) {
    if (!PyUnicode_Check(text)) {
        PyErr_SetString(PyExc_TypeError, "expected a str");
        return NULL;
    }
    return PyUnicode_AsUTF8AndSize(text, n);
}

/* row_record(op, table, source, lsn, commit_lsn, xid, commit_ts, txn_index, key_json, after_json,
 *            sorted_key_json) -> bytes
 * The version 2 payload of a row change with an `after` row and no before, unchanged or message:
 * byte for byte what encode_change makes of it. key_json and after_json are orjson's JSON of the
 * key and the row (key_json None: no key), sorted_key_json the key's JSON with sorted object keys
 * (the idempotency key's input). The key is made when there is a key and an lsn. */
static PyObject *row_record(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 11) {
        PyErr_SetString(PyExc_TypeError, "row_record takes 11 arguments");
        return NULL;
    }
    PyObject *op = args[0], *table = args[1], *source = args[2], *lsn = args[3], *commit_lsn = args[4],
             *xid = args[5], *commit_ts = args[6], *txn_index = args[7], *key_json = args[8],
             *after_json = args[9], *sorted_key_json = args[10];
    if (!PyUnicode_Check(op) || !PyUnicode_Check(table) || !PyUnicode_Check(source)) {
        PyErr_SetString(PyExc_TypeError, "op, table and source must be str");
        return NULL;
    }
    out_buf o = {NULL, 0, 0};
    /* Room for all of it at once in the usual case: the field names, the JSON, short strings. */
    size_t guess = 400 + (PyBytes_Check(after_json) ? (size_t)PyBytes_GET_SIZE(after_json) : 0) +
                   (PyBytes_Check(key_json) ? (size_t)PyBytes_GET_SIZE(key_json) : 0) +
                   6 * (size_t)(PyUnicode_GET_LENGTH(table) + PyUnicode_GET_LENGTH(source));
    if (out_reserve(&o, guess) < 0) return NULL;
    char key_hex[32];
    int has_key = key_json != Py_None && lsn != Py_None;
    if (has_key) {
        Py_ssize_t n_source, n_table, n_lsn;
        const char *p_source = utf8_of(source, &n_source), *p_table = utf8_of(table, &n_table);
        const char *p_lsn = p_source && p_table ? utf8_of(lsn, &n_lsn) : NULL;
        if (p_lsn == NULL) goto fail;
        if (!PyBytes_Check(sorted_key_json)) {
            PyErr_SetString(PyExc_TypeError, "sorted_key_json must be bytes");
            goto fail;
        }
        b2_state s;
        b2_init(&s, 16);
        b2_update(&s, "k\0", 2);
        b2_update(&s, p_source, (size_t)n_source);
        b2_update(&s, "\0", 1);
        b2_update(&s, p_table, (size_t)n_table);
        b2_update(&s, "\0", 1);
        b2_update(&s, PyBytes_AS_STRING(sorted_key_json), (size_t)PyBytes_GET_SIZE(sorted_key_json));
        b2_update(&s, "\0", 1);
        b2_update(&s, p_lsn, (size_t)n_lsn);
        b2_final_hex(&s, key_hex, 16);
    }
    if (out_put(&o, "\xc1\x02{\"table\":", 11) < 0 || out_json_str(&o, table) < 0 ||
        OUT_LIT(&o, ",\"op\":") < 0 || out_json_str(&o, op) < 0 || OUT_LIT(&o, ",\"source\":") < 0 ||
        out_json_str(&o, source) < 0 || OUT_LIT(&o, ",\"key\":") < 0 ||
        (key_json == Py_None ? OUT_LIT(&o, "null") : out_bytes(&o, key_json)) < 0 ||
        OUT_LIT(&o, ",\"before\":null,\"after\":") < 0 || out_bytes(&o, after_json) < 0 ||
        OUT_LIT(&o, ",\"lsn\":") < 0 || out_json_str_or_null(&o, lsn) < 0 || OUT_LIT(&o, ",\"commit_lsn\":") < 0 ||
        out_json_str_or_null(&o, commit_lsn) < 0 || OUT_LIT(&o, ",\"xid\":") < 0 || out_int_or_null(&o, xid) < 0 ||
        OUT_LIT(&o, ",\"commit_ts\":") < 0 || out_json_str_or_null(&o, commit_ts) < 0 ||
        OUT_LIT(&o, ",\"unchanged\":[],\"txn_index\":") < 0 || out_int_or_null(&o, txn_index) < 0 ||
        OUT_LIT(&o, ",\"message\":null,\"idempotency_key\":") < 0)
        goto fail;
    if (has_key) {
        if (OUT_LIT(&o, "\"") < 0 || out_put(&o, key_hex, 32) < 0 || OUT_LIT(&o, "\"}") < 0) goto fail;
    } else if (OUT_LIT(&o, "null}") < 0) {
        goto fail;
    }
    PyObject *result = PyBytes_FromStringAndSize(o.buf, (Py_ssize_t)o.len);
    PyMem_Free(o.buf);
    return result;

fail:
    PyMem_Free(o.buf);
    return NULL;
}

/* key_digest(parts) -> str: blake2b-128 hex of the parts (str as UTF-8, or bytes) joined by NUL. */
static PyObject *key_digest(PyObject *self, PyObject *parts) {
    (void)self;
    if (!PyTuple_Check(parts)) {
        PyErr_SetString(PyExc_TypeError, "key_digest takes a tuple of str and bytes");
        return NULL;
    }
    b2_state s;
    b2_init(&s, 16);
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(parts); i++) {
        PyObject *part = PyTuple_GET_ITEM(parts, i);
        if (i > 0) b2_update(&s, "\0", 1);
        if (PyBytes_Check(part)) {
            b2_update(&s, PyBytes_AS_STRING(part), (size_t)PyBytes_GET_SIZE(part));
        } else {
            Py_ssize_t n;
            const char *p = utf8_of(part, &n);
            if (p == NULL) return NULL;
            b2_update(&s, p, (size_t)n);
        }
    }
    char hex[32];
    b2_final_hex(&s, hex, 16);
    return PyUnicode_FromStringAndSize(hex, 32);
}

/* all_envelopes(records) -> bool: every record's payload (item 2) looks like a version 2 change:
 * it starts like one and ends with its closing brace (what Delivery.from_record checks). */
static PyObject *all_envelopes(PyObject *self, PyObject *records) {
    (void)self;
    if (!PyList_Check(records)) {
        PyErr_SetString(PyExc_TypeError, "records must be a list");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(records); i++) {
        PyObject *record = PyList_GET_ITEM(records, i);
        if (!PyTuple_Check(record) || PyTuple_GET_SIZE(record) < 3) Py_RETURN_FALSE;
        PyObject *payload = PyTuple_GET_ITEM(record, 2);
        if (!PyBytes_Check(payload)) Py_RETURN_FALSE;
        const char *p = PyBytes_AS_STRING(payload);
        Py_ssize_t n = PyBytes_GET_SIZE(payload);
        if (n <= V2_START_LEN || memcmp(p, V2_START, V2_START_LEN) != 0 || p[n - 1] != '}') Py_RETURN_FALSE;
    }
    Py_RETURN_TRUE;
}

static PyMethodDef methods[] = {
    {"row_record", (PyCFunction)(void (*)(void))row_record, METH_FASTCALL, "The version 2 payload of a row change (see the comment above it)."},
    {"key_digest", key_digest, METH_O, "key_digest(parts) -> blake2b-128 hex of the parts joined by NUL."},
    {"all_envelopes", all_envelopes, METH_O,
     "all_envelopes(records) -> whether every payload is shaped like a version 2 change."},
    {"json_body", json_body, METH_VARARGS,
     "json_body(records, open, sep, close) -> (body, keys) or None: version 2 payloads spliced into one body."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "agent._wire", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__wire(void) { return PyModule_Create(&module); }
