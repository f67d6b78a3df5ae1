/* wal._scan: the inner loops of the read path (wal.chunk.parse_intact) and of appending
 * (frame_into, for wal.pending.PendingRecords.add_batch) in C, and the log's CRC-64/NVME.
 *
 * parse_intact(buf, pos, first_seq, last_seq, stop, max_record_bytes, path, archived, base,
 *              record_type) -> (records, pos)
 *
 * Exactly the Python function in wal/chunk.py, which stays the reference and the fallback: from
 * index `pos` of `buf`, the records that are whole, intact and carry first_seq, first_seq + 1, ...
 * up to last_seq, stopping before a record that starts at or after `stop` and at the first record
 * that is not whole or not intact. Each record is `record_type((seq, timestamp_ms, payload, path,
 * base + offset, archived))`, built as a tuple of that (NamedTuple) type. The CRC is computed here
 * (crc64nvme below), which wal.format also selects for the Python path, so both agree bit for bit.
 *
 * crc64nvme(data, crc=0, /) -> int
 *
 * CRC-64/NVME of any contiguous buffer, continuing from `crc` (the result for the bytes before),
 * as crcmod's and awscrt's functions take it.
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

/* ---- CRC-64/NVME ---------------------------------------------------------------------------
 *
 * The log's CRC (docs/format.md): polynomial P = 0xAD93D23594C93659 (normal form, plus x^64),
 * reflected in and out, init and xorout all ones. `reg` below is the reflected register before
 * the final xor: bit i holds the coefficient of x^(63 - i).
 *
 * Two kernels compute it. Both are checked against crcmod on random data by tests/test_crc64.py.
 *
 * - Slicing-by-8 tables (any CPU): eight bytes per step through eight 256-entry tables.
 * - Carry-less multiply folding (x86-64 with PCLMULQDQ and SSE4.1), after Intel's "Fast CRC
 *   Computation for Generic Polynomials Using PCLMULQDQ Instruction" (2009), reflected variant.
 *   The CRC is M(x) * x^64 mod P for the message polynomial M (the initial register XORed into
 *   its first eight bytes). Sixteen bytes A followed by d more bits contribute A(x) * x^d to M,
 *   and A * x^d = A_hi * x^(d+64) + A_lo * x^d, where A_hi is A's first eight bytes (the low half
 *   of the register when loaded little-endian). Replacing x^(d+64) and x^d by their remainders
 *   mod P turns a 16-byte block into two 64x64-bit carry-less products (each at most 127 bits)
 *   that are XORed into the block d bits later: "folding". The loop folds eight blocks at once
 *   128 bytes forward; the eight are then folded into one, the last 16 bytes become a 64-bit
 *   remainder (one more fold and a Barrett reduction), and the tail of under 16 bytes goes
 *   through the tables.
 *
 * Constants. A carry-less product of two reflected 64-bit values comes out one bit short of the
 * 128-bit reflected position (bit j holds x^(126 - j)), so a constant that multiplies by x^n is
 * stored as reflect64(x^(n - 1) mod P): the missing bit is that factor x. Barrett reduction of
 * a 128-bit T = T_hi * x^64 + T_lo uses mu = floor(x^128 / P), which has an x^64 term:
 *   q = floor(T_hi * mu / x^64) = floor(T_hi * (mu mod x^64) / x^64) + T_hi
 *   T mod P = T_lo + (q * (P mod x^64) mod x^64).
 * tests/test_crc64.py derives every constant below from the polynomial and checks these values.
 */

#define CRC64_POLY 0x9A6C9329AC4BC9B5ULL /* reflect64(P mod x^64) */

static uint64_t crc_table[8][256]; /* filled at import by crc_tables_init */

static void crc_tables_init(void) {
    for (int i = 0; i < 256; i++) {
        uint64_t c = (uint64_t)i;
        for (int bit = 0; bit < 8; bit++) c = (c & 1) ? (c >> 1) ^ CRC64_POLY : c >> 1;
        crc_table[0][i] = c;
    }
    for (int i = 0; i < 256; i++)
        for (int k = 1; k < 8; k++)
            crc_table[k][i] = (crc_table[k - 1][i] >> 8) ^ crc_table[0][crc_table[k - 1][i] & 0xFF];
}

static uint64_t load_le64(const unsigned char *p) {
    uint64_t v;
    memcpy(&v, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}

static uint64_t crc_update_table(uint64_t reg, const unsigned char *p, size_t n) {
    for (; n >= 8; p += 8, n -= 8) {
        uint64_t v = reg ^ load_le64(p);
        reg = crc_table[7][v & 0xFF] ^ crc_table[6][(v >> 8) & 0xFF] ^ crc_table[5][(v >> 16) & 0xFF] ^
              crc_table[4][(v >> 24) & 0xFF] ^ crc_table[3][(v >> 32) & 0xFF] ^ crc_table[2][(v >> 40) & 0xFF] ^
              crc_table[1][(v >> 48) & 0xFF] ^ crc_table[0][v >> 56];
    }
    for (; n > 0; p++, n--) reg = (reg >> 8) ^ crc_table[0][(reg ^ *p) & 0xFF];
    return reg;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define CRC_HAVE_CLMUL 1

/* crc-constants: {reflect64(x^(d+63) mod P), reflect64(x^(d-1) mod P)} for d = 128 * (i + 1)
 * bits: FOLD[i] moves a 16-byte block (i + 1) * 16 bytes forward. */
static const uint64_t FOLD[8][2] = {
    {0xEADC41FD2BA3D420ULL, 0x21E9761E252621ACULL}, /* 16 bytes */
    {0xB0BC2E589204F500ULL, 0xE1E0BB9D45D7A44CULL}, /* 32 */
    {0xBDD7AC0EE1A4A0F0ULL, 0xA3FFDC1FE8E82A8BULL}, /* 48 */
    {0x0C32CDB31E18A84AULL, 0x62242240ACE5045AULL}, /* 64 */
    {0x7B0AB10DD0F809FEULL, 0x03363823E6E791E5ULL}, /* 80 */
    {0x3C255F5EBC414423ULL, 0x34F5A24E22D66E90ULL}, /* 96 */
    {0xD083DD594D96319DULL, 0x946588403D4ADCBCULL}, /* 112 */
    {0xA1CA681E733F9C40ULL, 0x5F852FB61E8D92DCULL}, /* 128: the main loop */
};
#define CRC64_MU 0x13F67D194D77CFBBULL /* reflect64(floor(x^128 / P) mod x^64) */
/* end crc-constants */

static int crc_clmul_usable; /* set at import: the CPU has PCLMULQDQ and SSE4.1 */

__attribute__((target("pclmul,sse4.1"))) static inline __m128i fold16(__m128i x, const uint64_t k[2]) {
    __m128i keys = _mm_set_epi64x((long long)k[1], (long long)k[0]);
    return _mm_xor_si128(_mm_clmulepi64_si128(x, keys, 0x00), _mm_clmulepi64_si128(x, keys, 0x11));
}

/* The register after `n` bytes (a multiple of 16, at least 16) from `reg`. */
__attribute__((target("pclmul,sse4.1"))) static uint64_t crc_update_clmul(uint64_t reg, const unsigned char *p,
                                                                           size_t n) {
    /* The register's effect on what follows is reg * x^(8n): the same as XORing it into the
     * first eight bytes of the message. */
    __m128i x = _mm_xor_si128(_mm_loadu_si128((const __m128i *)p), _mm_cvtsi64_si128((long long)reg));
    const unsigned char *end = p + n;
    p += 16;
    if (n >= 128) {
        __m128i lane[8];
        lane[0] = x;
        for (int i = 1; i < 8; i++) lane[i] = _mm_loadu_si128((const __m128i *)(p + 16 * (i - 1)));
        p += 112;
        for (; end - p >= 128; p += 128)
            for (int i = 0; i < 8; i++)
                lane[i] = _mm_xor_si128(fold16(lane[i], FOLD[7]), _mm_loadu_si128((const __m128i *)(p + 16 * i)));
        x = lane[7];
        for (int i = 0; i < 7; i++) x = _mm_xor_si128(x, fold16(lane[i], FOLD[6 - i]));
    }
    for (; p < end; p += 16) x = _mm_xor_si128(fold16(x, FOLD[0]), _mm_loadu_si128((const __m128i *)p));

    /* The register is x * x^64 mod P: the first eight bytes move 128 bits, the last eight 64. */
    __m128i t = _mm_xor_si128(_mm_clmulepi64_si128(x, _mm_cvtsi64_si128((long long)FOLD[0][1]), 0x00),
                              _mm_srli_si128(x, 8));
    uint64_t t_hi = (uint64_t)_mm_cvtsi128_si64(t); /* coefficients of x^127..x^64 */
    uint64_t t_lo = (uint64_t)_mm_extract_epi64(t, 1);
    /* Barrett: q = floor(T_hi * mu / x^64); the products' shifts by one are the x factor above. */
    __m128i product = _mm_clmulepi64_si128(_mm_cvtsi64_si128((long long)t_hi),
                                           _mm_cvtsi64_si128((long long)CRC64_MU), 0x00);
    uint64_t q = ((uint64_t)_mm_cvtsi128_si64(product) << 1) ^ t_hi;
    product = _mm_clmulepi64_si128(_mm_cvtsi64_si128((long long)q), _mm_cvtsi64_si128((long long)CRC64_POLY), 0x00);
    uint64_t qp_lo = ((uint64_t)_mm_extract_epi64(product, 1) << 1) | ((uint64_t)_mm_cvtsi128_si64(product) >> 63);
    return t_lo ^ qp_lo;
}
#endif

/* CRC-64/NVME of `n` bytes continuing from `crc` (a previous result, 0 to start). */
static uint64_t crc64nvme_update(uint64_t crc, const unsigned char *p, size_t n) {
    uint64_t reg = ~crc;
#ifdef CRC_HAVE_CLMUL
    /* Folding needs one whole 16-byte block; from there on it is faster than the tables (the same
     * at 16 bytes, twice as fast at 200, six times at 4 KiB). */
    if (crc_clmul_usable && n >= 16) {
        size_t whole = n & ~(size_t)15;
        reg = crc_update_clmul(reg, p, whole);
        p += whole;
        n -= whole;
    }
#endif
    return ~crc_update_table(reg, p, n);
}

static PyObject *parse_intact(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer view;
    Py_ssize_t pos, stop, max_record_bytes, base;
    long long first_seq, last_seq;
    PyObject *path, *archived, *record_type;
    if (!PyArg_ParseTuple(args, "y*nLLnnOOnO", &view, &pos, &first_seq, &last_seq, &stop, &max_record_bytes, &path,
                          &archived, &base, &record_type))
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

    PyObject *out = PyList_New(0);
    if (out == NULL) goto fail;
    for (long long seq = first_seq; seq <= last_seq; seq++) {
        if (pos >= stop) break;
        const unsigned char *p = buf + pos;
        Py_ssize_t length = (Py_ssize_t)le32(p);
        if (le64(p + 4) != seq || length < RECORD_OVERHEAD || length > max_record_bytes || pos + length > size)
            break;
        if (crc64nvme_update(0, p + 4, (size_t)length - 12) != (uint64_t)le64(p + length - 8)) break;

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
    PyBuffer_Release(&view);
    return Py_BuildValue("(Nn)", out, pos);

fail:
    Py_XDECREF(out);
    PyBuffer_Release(&view);
    return NULL;
}

static void put_le(unsigned char *p, uint64_t v, int n) {
    for (int i = 0; i < n; i++) p[i] = (unsigned char)(v >> (8 * i));
}

/* frame_into(buffer, used, payloads, first_seq, timestamp_ms, status) -> used
 *
 * The write side: each payload framed as a record (length, seq, status, 3 zero bytes, timestamp,
 * payload, CRC) into the bytearray `buffer` from index `used`, sequences from first_seq; the CRC
 * covers the record from after its length field to before the CRC, as the read side checks it.
 * The caller has made room (wal.pending.PendingRecords.add_batch). */
static PyObject *frame_into(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *buffer, *payloads;
    Py_ssize_t used;
    long long first_seq, timestamp_ms;
    int status;
    if (!PyArg_ParseTuple(args, "O!nO!LLi", &PyByteArray_Type, &buffer, &used, &PyList_Type, &payloads, &first_seq,
                          &timestamp_ms, &status))
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
        put_le(p + length - 8, crc64nvme_update(0, p + 4, (size_t)length - 12), 8);
        used += length;
    }
    return PyLong_FromSsize_t(used);
}

/* crc64nvme(data, crc=0), computed by `update`. */
static PyObject *crc_call(uint64_t (*update)(uint64_t, const unsigned char *, size_t), PyObject *const *args,
                          Py_ssize_t nargs) {
    if (nargs < 1 || nargs > 2) {
        PyErr_Format(PyExc_TypeError, "crc64nvme() takes 1 or 2 arguments (%zd given)", nargs);
        return NULL;
    }
    uint64_t crc = 0;
    if (nargs == 2) {
        crc = PyLong_AsUnsignedLongLong(args[1]);
        if (crc == (uint64_t)-1 && PyErr_Occurred()) return NULL;
    }
    if (PyBytes_CheckExact(args[0])) /* the common case, without a buffer to acquire and release */
        return PyLong_FromUnsignedLongLong(
            update(crc, (const unsigned char *)PyBytes_AS_STRING(args[0]), (size_t)PyBytes_GET_SIZE(args[0])));
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) return NULL;
    crc = update(crc, view.buf, (size_t)view.len);
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLongLong(crc);
}

static PyObject *crc64nvme(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    return crc_call(crc64nvme_update, args, nargs);
}

static uint64_t crc64nvme_update_table(uint64_t crc, const unsigned char *p, size_t n) {
    return ~crc_update_table(~crc, p, n);
}

/* The tables alone, so that tests check the fallback on CPUs that fold too. */
static PyObject *crc64nvme_table(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    return crc_call(crc64nvme_update_table, args, nargs);
}

static PyMethodDef methods[] = {
    {"crc64nvme", (PyCFunction)(void (*)(void))crc64nvme, METH_FASTCALL,
     "crc64nvme($module, data, crc=0, /)\n--\n\nCRC-64/NVME of a buffer, continuing from `crc` (a previous result)."},
    {"_crc64nvme_table", (PyCFunction)(void (*)(void))crc64nvme_table, METH_FASTCALL,
     "crc64nvme with the slicing-by-8 tables on any CPU (for tests)."},
    {"frame_into", frame_into, METH_VARARGS, "Frame payloads as records into a bytearray (see the comment above it)."},
    {"parse_intact", parse_intact, METH_VARARGS, "wal.chunk.parse_intact in C (see the module comment)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "wal._scan", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__scan(void) {
    crc_tables_init();
    const char *kernel = "table";
#ifdef CRC_HAVE_CLMUL
    __builtin_cpu_init();
    crc_clmul_usable = __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.1");
    if (crc_clmul_usable) kernel = "pclmul";
#endif
    PyObject *m = PyModule_Create(&module);
    /* Which crc64nvme kernel this CPU runs, for wal.crc_implementation(). */
    if (m != NULL && PyModule_AddStringConstant(m, "CRC64NVME_KERNEL", kernel) < 0) Py_CLEAR(m);
    return m;
}
