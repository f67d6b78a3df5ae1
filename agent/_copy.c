/* agent._copy: stored version 2 change records straight to PostgreSQL COPY text.
 *
 * The postgres destination's hot path (PostgresDestination._apply_stored): a batch of inserts of
 * one table becomes the text of one COPY without decoding a record into Python objects. Its
 * reference is the general path (decode, plan, COPY by psycopg's write_row); the tests compare
 * the rows both paths leave in a real table, and this module's text with a Python model of it.
 *
 * copy_text(payloads, table, source, key, columns, modes, seqs) -> bytes or None
 *   payloads: a sequence of version 2 payloads (b"\xc1\x02{...}").
 *   table, source: the JSON text every record's "table" and "source" must have (b'"public.t"').
 *   key:      the names (UTF-8 bytes) the "key" object must have, in order; () takes null or {}.
 *   columns:  the names the "after" object must have, exactly and in order.
 *   modes:    one byte per column, how its value is written (MODE_* below).
 *   seqs:     None, or one int per payload: then each line ends with the meta columns
 *             (now, false, the op, the seq), as the destination writes them.
 * Every record must be an insert or snapshot. The result is one line per record, fields split by
 * tabs, in COPY's text format (backslash, newline, carriage return and tab escaped, \N for null).
 * None when any record does not fit (another op, table, source, key or column list, a value its
 * mode cannot take, a NUL character, a lone surrogate, malformed JSON): the caller then takes the
 * general path, which decides what such a record means.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* A column the target parses (numbers, booleans, dates...): a string goes as its text, a number
 * as written, true/false as t/f; an object or array does not fit. */
#define MODE_PARSED 0
/* A text-like column: a string goes as its text, any other value as its JSON text. */
#define MODE_TEXT 1
/* A column whose source type is json or jsonb: every value goes as its JSON text. */
#define MODE_JSON 2

#define MAX_DEPTH 200

typedef const unsigned char *cursor;

typedef struct {
    char *data;
    size_t len, cap;
} out_t;

static int reserve(out_t *o, size_t more) {
    if (o->len + more <= o->cap) return 0;
    size_t cap = o->cap ? o->cap : 65536;
    while (cap < o->len + more) cap *= 2;
    char *grown = PyMem_Realloc(o->data, cap);
    if (grown == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    o->data = grown;
    o->cap = cap;
    return 0;
}

static cursor skip_ws(cursor p, cursor end) {
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
    return p;
}

/* p at an opening quote: the position after the closing one, or NULL. */
static cursor skip_string(cursor p, cursor end) {
    for (p++; p < end; p++) {
        if (*p == '"') return p + 1;
        if (*p == '\\') {
            if (++p >= end) return NULL;
        } else if (*p < 0x20) {
            return NULL;
        }
    }
    return NULL;
}

static int is_digit(unsigned char c) { return c >= '0' && c <= '9'; }

/* The end of the JSON value at p (after leading blanks), or NULL when it is not one. */
static cursor skip_value(cursor p, cursor end, int depth) {
    p = skip_ws(p, end);
    if (p >= end) return NULL;
    unsigned char c = *p;
    if (c == '"') return skip_string(p, end);
    if (c == '{' || c == '[') {
        if (depth >= MAX_DEPTH) return NULL;
        int object = c == '{';
        unsigned char close = object ? '}' : ']';
        p = skip_ws(p + 1, end);
        if (p < end && *p == close) return p + 1;
        for (;;) {
            if (object) {
                p = skip_ws(p, end);
                if (p >= end || *p != '"' || (p = skip_string(p, end)) == NULL) return NULL;
                p = skip_ws(p, end);
                if (p >= end || *p != ':') return NULL;
                p++;
            }
            if ((p = skip_value(p, end, depth + 1)) == NULL) return NULL;
            p = skip_ws(p, end);
            if (p >= end) return NULL;
            if (*p == close) return p + 1;
            if (*p != ',') return NULL;
            p++;
        }
    }
    if (c == 't') return end - p >= 4 && memcmp(p, "true", 4) == 0 ? p + 4 : NULL;
    if (c == 'f') return end - p >= 5 && memcmp(p, "false", 5) == 0 ? p + 5 : NULL;
    if (c == 'n') return end - p >= 4 && memcmp(p, "null", 4) == 0 ? p + 4 : NULL;
    if (c == '-' || is_digit(c)) { /* -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)? */
        if (*p == '-') p++;
        if (p >= end || !is_digit(*p)) return NULL;
        if (*p == '0') {
            p++;
        } else {
            while (p < end && is_digit(*p)) p++;
        }
        if (p < end && *p == '.') {
            if (++p >= end || !is_digit(*p)) return NULL;
            while (p < end && is_digit(*p)) p++;
        }
        if (p < end && (*p == 'e' || *p == 'E')) {
            if (++p < end && (*p == '+' || *p == '-')) p++;
            if (p >= end || !is_digit(*p)) return NULL;
            while (p < end && is_digit(*p)) p++;
        }
        return p;
    }
    return NULL;
}

/* What the JSON value [p, end) is, as far as the change record's field types go. */
#define T_NULL 1
#define T_STR 2
#define T_OBJ 4
#define T_ARR 8
#define T_INT 16
#define T_ANY 0xFF

static int type_of(cursor p, cursor end) {
    switch (*p) {
    case 'n': return T_NULL;
    case '"': return T_STR;
    case '{': return T_OBJ;
    case '[': return T_ARR;
    case 't': case 'f': return 0x40;
    default:
        for (; p < end; p++)
            if (*p == '.' || *p == 'e' || *p == 'E') return 0x20;
        return T_INT;
    }
}

/* An array whose items are all strings (the `unchanged` column list). */
static int is_string_array(cursor p, cursor end) {
    p = skip_ws(p + 1, end);
    if (p < end && *p == ']') return 1;
    for (;;) {
        p = skip_ws(p, end);
        if (p >= end || *p != '"' || (p = skip_string(p, end)) == NULL) return 0;
        p = skip_ws(p, end);
        if (p >= end) return 0;
        if (*p == ']') return 1;
        if (*p != ',') return 0;
        p++;
    }
}

/* One byte of text as COPY's text format needs it. */
static void put_copy_byte(out_t *o, unsigned char c) {
    char *w = o->data + o->len;
    switch (c) {
    case '\\': w[0] = '\\'; w[1] = '\\'; o->len += 2; return;
    case '\n': w[0] = '\\'; w[1] = 'n'; o->len += 2; return;
    case '\r': w[0] = '\\'; w[1] = 'r'; o->len += 2; return;
    case '\t': w[0] = '\\'; w[1] = 't'; o->len += 2; return;
    default: w[0] = (char)c; o->len += 1;
    }
}

/* JSON text as it is (a raw value), escaped for COPY. */
static int put_raw(out_t *o, cursor p, cursor end) {
    if (reserve(o, 2 * (size_t)(end - p)) < 0) return -1;
    for (; p < end; p++) put_copy_byte(o, *p);
    return 0;
}

static int hex4(cursor p, unsigned *value) {
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= c - '0';
        else if (c >= 'a' && c <= 'f') v |= c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') v |= c - 'A' + 10;
        else return -1;
    }
    *value = v;
    return 0;
}

/* The text of the JSON string [p, end) (p after the opening quote, end at the closing one),
 * unescaped and then escaped for COPY. 1: does not fit (NUL, lone surrogate, bad escape). */
static int put_string(out_t *o, cursor p, cursor end) {
    /* Every escape is at least 2 bytes and writes at most 4 (a surrogate pair, 12 bytes, 4). */
    if (reserve(o, 2 * (size_t)(end - p)) < 0) return -1;
    while (p < end) {
        unsigned char c = *p++;
        if (c != '\\') {
            put_copy_byte(o, c);
            continue;
        }
        if (p >= end) return 1;
        c = *p++;
        switch (c) {
        case '"': put_copy_byte(o, '"'); break;
        case '\\': put_copy_byte(o, '\\'); break;
        case '/': put_copy_byte(o, '/'); break;
        case 'b': put_copy_byte(o, '\b'); break;
        case 'f': put_copy_byte(o, '\f'); break;
        case 'n': put_copy_byte(o, '\n'); break;
        case 'r': put_copy_byte(o, '\r'); break;
        case 't': put_copy_byte(o, '\t'); break;
        case 'u': {
            unsigned cp;
            if (end - p < 4 || hex4(p, &cp) < 0) return 1;
            p += 4;
            if (cp >= 0xD800 && cp < 0xDC00) {
                unsigned low;
                if (end - p < 6 || p[0] != '\\' || p[1] != 'u' || hex4(p + 2, &low) < 0) return 1;
                if (low < 0xDC00 || low >= 0xE000) return 1;
                p += 6;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
            } else if (cp >= 0xDC00 && cp < 0xE000) {
                return 1;
            }
            if (cp == 0) return 1; /* PostgreSQL text cannot hold NUL */
            char *w = o->data + o->len;
            if (cp < 0x80) {
                put_copy_byte(o, (unsigned char)cp);
            } else if (cp < 0x800) {
                w[0] = (char)(0xC0 | cp >> 6);
                w[1] = (char)(0x80 | (cp & 0x3F));
                o->len += 2;
            } else if (cp < 0x10000) {
                w[0] = (char)(0xE0 | cp >> 12);
                w[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
                w[2] = (char)(0x80 | (cp & 0x3F));
                o->len += 3;
            } else {
                w[0] = (char)(0xF0 | cp >> 18);
                w[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
                w[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
                w[3] = (char)(0x80 | (cp & 0x3F));
                o->len += 4;
            }
            break;
        }
        default: return 1;
        }
    }
    return 0;
}

/* One column's value [p, end) as a COPY field. 0: written; 1: does not fit; -1: error. */
static int put_value(out_t *o, cursor p, cursor end, int mode) {
    unsigned char c = *p;
    if (c == 'n') {
        if (reserve(o, 2) < 0) return -1;
        o->data[o->len++] = '\\';
        o->data[o->len++] = 'N';
        return 0;
    }
    if (mode == MODE_JSON) return put_raw(o, p, end);
    if (c == '"') return put_string(o, p + 1, end - 1);
    if (mode == MODE_TEXT) return put_raw(o, p, end);
    /* MODE_PARSED */
    if (c == '{' || c == '[') return 1;
    if (c == 't' || c == 'f') {
        if (reserve(o, 1) < 0) return -1;
        o->data[o->len++] = (char)c;
        return 0;
    }
    return put_raw(o, p, end);
}

/* Whether the string at p (an object member name, p at its quote, end after its closing quote)
 * is exactly `name`. */
static int name_is(cursor p, cursor end, const char *name, Py_ssize_t n) {
    return end - p - 2 == n && memcmp(p + 1, name, (size_t)n) == 0;
}

typedef struct {
    const char *table, *source;
    Py_ssize_t table_len, source_len;
    Py_ssize_t nkey, ncolumns;
    const char **key, **columns;
    Py_ssize_t *key_len, *column_len;
    const unsigned char *modes;
} shape_t;

/* An object's members must be exactly `names`, in order: returns the end of the object, or NULL.
 * With `o`, each member's value is written as a COPY field (tab-separated) in its mode. */
static cursor walk_members(out_t *o, cursor p, cursor end, Py_ssize_t n, const char **names,
                           Py_ssize_t *lens, const unsigned char *modes, int *error) {
    p = skip_ws(p, end);
    if (p >= end || *p != '{') return NULL;
    p = skip_ws(p + 1, end);
    if (n == 0) return p < end && *p == '}' ? p + 1 : NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        p = skip_ws(p, end);
        if (p >= end || *p != '"') return NULL;
        cursor name_end = skip_string(p, end);
        if (name_end == NULL || !name_is(p, name_end, names[i], lens[i])) return NULL;
        p = skip_ws(name_end, end);
        if (p >= end || *p != ':') return NULL;
        p = skip_ws(p + 1, end);
        cursor value_end = skip_value(p, end, 1);
        if (value_end == NULL) return NULL;
        if (o != NULL) {
            if (i > 0) {
                if (reserve(o, 1) < 0) goto failed;
                o->data[o->len++] = '\t';
            }
            int put = put_value(o, p, value_end, modes[i]);
            if (put < 0) goto failed;
            if (put > 0) return NULL;
        }
        p = skip_ws(value_end, end);
        if (p >= end) return NULL;
        if (*p == (i + 1 < n ? ',' : '}')) {
            p++;
        } else {
            return NULL;
        }
    }
    return p;
failed:
    *error = 1;
    return NULL;
}

/* The fields of a version 2 record (agent/change.py, _V2_FIELDS) and the JSON types each may
 * have (agent.change._check): a record with another field, or a field of another type, is one
 * the general path refuses, so it does not fit here either. */
enum { F_TABLE, F_OP, F_SOURCE, F_KEY, F_BEFORE, F_AFTER, F_LSN, F_COMMIT_LSN, F_XID, F_COMMIT_TS,
       F_UNCHANGED, F_TXN_INDEX, F_MESSAGE, F_IDEMPOTENCY_KEY, F_COUNT };
static const struct {
    const char *name;
    Py_ssize_t len;
    int types;
} FIELDS[F_COUNT] = {
    {"table", 5, T_STR},          {"op", 2, T_STR},
    {"source", 6, T_STR},         {"key", 3, T_NULL | T_OBJ},
    {"before", 6, T_NULL | T_OBJ}, {"after", 5, T_OBJ},
    {"lsn", 3, T_NULL | T_STR},   {"commit_lsn", 10, T_NULL | T_STR},
    {"xid", 3, T_NULL | T_INT},   {"commit_ts", 9, T_NULL | T_STR},
    {"unchanged", 9, T_ARR},      {"txn_index", 9, T_INT},
    {"message", 7, T_NULL | T_OBJ}, {"idempotency_key", 15, T_ANY},
};

/* One payload as one COPY line. 0: written; 1: does not fit; -1: error (exception set). */
static int put_record(out_t *o, const shape_t *shape, cursor p, cursor end, PyObject *seq) {
    static const char START[] = "\xc1\x02";
    if (end - p < 4 || memcmp(p, START, 2) != 0) return 1;
    p = skip_ws(p + 2, end);
    if (p >= end || *p != '{') return 1;
    p = skip_ws(p + 1, end);
    int seen = 0, error = 0;
    const char *op = NULL;
    size_t op_len = 0;
    while (p < end && *p != '}') {
        if (*p != '"') return 1;
        cursor name_end = skip_string(p, end);
        if (name_end == NULL) return 1;
        cursor value = skip_ws(name_end, end);
        if (value >= end || *value != ':') return 1;
        value = skip_ws(value + 1, end);
        cursor value_end = skip_value(value, end, 1);
        if (value_end == NULL) return 1;
        Py_ssize_t vlen = value_end - value;
        int field = 0;
        while (field < F_COUNT && !name_is(p, name_end, FIELDS[field].name, FIELDS[field].len)) field++;
        if (field == F_COUNT || (seen & 1 << field) || !(type_of(value, value_end) & FIELDS[field].types))
            return 1;
        seen |= 1 << field;
        if (field == F_TABLE) {
            if (vlen != shape->table_len || memcmp(value, shape->table, (size_t)vlen) != 0) return 1;
        } else if (field == F_SOURCE) {
            if (vlen != shape->source_len || memcmp(value, shape->source, (size_t)vlen) != 0) return 1;
        } else if (field == F_UNCHANGED) {
            if (!is_string_array(value, value_end)) return 1;
        } else if (field == F_OP) {
            if (vlen == 8 && memcmp(value, "\"insert\"", 8) == 0) {
                op = "insert";
                op_len = 6;
            } else if (vlen == 10 && memcmp(value, "\"snapshot\"", 10) == 0) {
                op = "snapshot";
                op_len = 8;
            } else {
                return 1;
            }
        } else if (field == F_KEY) {
            if (shape->nkey == 0) {
                if (!(vlen == 4 && memcmp(value, "null", 4) == 0) &&
                    walk_members(NULL, value, value_end, 0, NULL, NULL, NULL, &error) == NULL)
                    return 1;
            } else if (walk_members(NULL, value, value_end, shape->nkey, shape->key, shape->key_len, NULL,
                                    &error) == NULL) {
                return 1;
            }
        } else if (field == F_AFTER) {
            cursor after_end = walk_members(o, value, value_end, shape->ncolumns, shape->columns,
                                            shape->column_len, shape->modes, &error);
            if (error) return -1;
            if (after_end == NULL) return 1;
        }
        p = skip_ws(value_end, end);
        if (p < end && *p == ',') {
            p = skip_ws(p + 1, end);
            if (p >= end || *p != '"') return 1; /* no trailing comma */
        } else if (p >= end || *p != '}') {
            return 1;
        }
    }
    if (p >= end || skip_ws(p + 1, end) != end) return 1;
    if (seen != (1 << F_COUNT) - 1) return 1;
    if (seq != NULL) {
        long long value = PyLong_AsLongLong(seq);
        if (value == -1 && PyErr_Occurred()) return -1;
        if (reserve(o, 32 + op_len) < 0) return -1;
        memcpy(o->data + o->len, "\tnow\tfalse\t", 11);
        o->len += 11;
        memcpy(o->data + o->len, op, op_len);
        o->len += op_len;
        o->len += (size_t)snprintf(o->data + o->len, 24, "\t%lld", value);
    }
    if (reserve(o, 1) < 0) return -1;
    o->data[o->len++] = '\n';
    return 0;
}

/* A tuple of bytes as C strings and lengths (borrowed from the tuple). */
static int names_of(PyObject *tuple, const char ***names, Py_ssize_t **lens, Py_ssize_t *n) {
    if (!PyTuple_Check(tuple)) {
        PyErr_SetString(PyExc_TypeError, "key and columns must be tuples of bytes");
        return -1;
    }
    *n = PyTuple_GET_SIZE(tuple);
    *names = PyMem_Calloc((size_t)(*n ? *n : 1), sizeof(char *));
    *lens = PyMem_Calloc((size_t)(*n ? *n : 1), sizeof(Py_ssize_t));
    if (*names == NULL || *lens == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < *n; i++) {
        PyObject *item = PyTuple_GET_ITEM(tuple, i);
        if (!PyBytes_Check(item)) {
            PyErr_SetString(PyExc_TypeError, "key and columns must be tuples of bytes");
            return -1;
        }
        (*names)[i] = PyBytes_AS_STRING(item);
        (*lens)[i] = PyBytes_GET_SIZE(item);
    }
    return 0;
}

static PyObject *copy_text(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *payloads, *key, *columns, *seqs;
    const char *table, *source, *modes;
    Py_ssize_t table_len, source_len, modes_len;
    if (!PyArg_ParseTuple(args, "Oy#y#O!O!y#O", &payloads, &table, &table_len, &source, &source_len,
                          &PyTuple_Type, &key, &PyTuple_Type, &columns, &modes, &modes_len, &seqs))
        return NULL;
    shape_t shape = {table, source, table_len, source_len, 0, 0, NULL, NULL, NULL, NULL,
                     (const unsigned char *)modes};
    out_t out = {NULL, 0, 0};
    PyObject *items = NULL, *seq_items = NULL, *result = NULL;
    if (names_of(key, &shape.key, &shape.key_len, &shape.nkey) < 0) goto done;
    if (names_of(columns, &shape.columns, &shape.column_len, &shape.ncolumns) < 0) goto done;
    if (modes_len != shape.ncolumns) {
        PyErr_SetString(PyExc_ValueError, "one mode per column");
        goto done;
    }
    for (Py_ssize_t i = 0; i < modes_len; i++) {
        if ((unsigned char)modes[i] > MODE_JSON) {
            PyErr_SetString(PyExc_ValueError, "unknown mode");
            goto done;
        }
    }
    items = PySequence_Fast(payloads, "payloads must be a sequence of bytes");
    if (items == NULL) goto done;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(items);
    if (seqs != Py_None) {
        seq_items = PySequence_Fast(seqs, "seqs must be None or a sequence of ints");
        if (seq_items == NULL) goto done;
        if (PySequence_Fast_GET_SIZE(seq_items) != n) {
            PyErr_SetString(PyExc_ValueError, "one seq per payload");
            goto done;
        }
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *payload = PySequence_Fast_GET_ITEM(items, i);
        if (!PyBytes_Check(payload)) { /* a record not read from the log: the general path */
            result = Py_NewRef(Py_None);
            goto done;
        }
        cursor p = (cursor)PyBytes_AS_STRING(payload);
        int put = put_record(&out, &shape, p, p + PyBytes_GET_SIZE(payload),
                             seq_items != NULL ? PySequence_Fast_GET_ITEM(seq_items, i) : NULL);
        if (put < 0) goto done;
        if (put > 0) {
            result = Py_NewRef(Py_None);
            goto done;
        }
    }
    result = PyBytes_FromStringAndSize(out.data ? out.data : "", (Py_ssize_t)out.len);
done:
    PyMem_Free(out.data);
    PyMem_Free((void *)shape.key);
    PyMem_Free(shape.key_len);
    PyMem_Free((void *)shape.columns);
    PyMem_Free(shape.column_len);
    Py_XDECREF(items);
    Py_XDECREF(seq_items);
    return result;
}

static PyMethodDef methods[] = {
    {"copy_text", copy_text, METH_VARARGS,
     "copy_text(payloads, table, source, key, columns, modes, seqs) -> COPY text of stored inserts, or None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "agent._copy", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__copy(void) {
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddIntConstant(m, "MODE_PARSED", MODE_PARSED) < 0 ||
        PyModule_AddIntConstant(m, "MODE_TEXT", MODE_TEXT) < 0 ||
        PyModule_AddIntConstant(m, "MODE_JSON", MODE_JSON) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
