/* Archive CSV rows -> bronze JSON lines, for the rows that need no judgement.
 *
 * Building a Python dict per trade and serializing it costs ~3 us a row; a busy day is ~5M
 * rows. This module writes the JSON lines of a block of aggTrades or trades CSV rows straight
 * from the CSV text, byte for byte what orjson writes for the records the Python path builds
 * (the tests hold the two paths to each other). It only takes rows whose every value it can
 * write exactly; anything else (a sign, an exponent, a zero price, a quoted field, an empty
 * line, a number of more than 15 significant digits or outside the exponents orjson writes as
 * plain digits) makes it return None, and the caller parses that block the general way.
 *
 * A decimal of at most 15 significant digits is the shortest text that reads back as its
 * double (two such decimals never share a double), so the shortest round-trip text orjson
 * writes for the parsed price is the CSV's text without its leading and trailing zeros.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define KIND_AGG 0
#define KIND_TRADE 1
#define MAX_SIG_DIGITS 15
/* Archive timestamps at or above this are microseconds (see archive_csv.MICROS_THRESHOLD). */
#define MICROS_THRESHOLD 100000000000000LL
/* The most a JSON line adds to its CSV line besides the head and ingest_ts: its keys and
 * punctuation (117 bytes for an aggTrade) and "0" / ".0" around the two decimals (4), rounded
 * up. Every digit written comes from the line itself (the us -> ms cut only shortens). */
#define FIXED_LINE_BYTES 192

/* Each take_* reads one field from *pp up to the next ',' or the line's end (not consuming
 * the ','), and fails on anything it does not write exactly. */

static inline int
take_uint(const char **pp, const char *end, int64_t *out)
{
    const char *p = *pp;
    int64_t v = 0;
    int n = 0;
    for (; p < end && *p != ','; p++) {
        unsigned d = (unsigned)(*p - '0');
        /* 18 digits always fit an int64; more could overflow it. */
        if (d > 9 || ++n > 18)
            return 0;
        v = v * 10 + d;
    }
    if (n < 1)
        return 0;
    *pp = p;
    *out = v;
    return 1;
}

static inline int
take_bool(const char **pp, const char *end, int *out)
{
    const char *p = *pp;
    Py_ssize_t n = end - p;
    if (n >= 4 && (memcmp(p, "True", 4) == 0 || memcmp(p, "true", 4) == 0)) {
        *out = 1;
        *pp = p + 4;
        return 1;
    }
    if (n >= 5 && (memcmp(p, "False", 5) == 0 || memcmp(p, "false", 5) == 0)) {
        *out = 0;
        *pp = p + 5;
        return 1;
    }
    return 0;
}

/* Digits with at most one '.' among them (zero included). */
static inline int
take_number(const char **pp, const char *end)
{
    const char *p = *pp;
    int digits = 0, dots = 0;
    for (; p < end && *p != ','; p++) {
        if (*p == '.')
            dots++;
        else if ((unsigned)(*p - '0') <= 9)
            digits++;
        else
            return 0;
    }
    *pp = p;
    return digits > 0 && dots <= 1;
}

/* A plain positive decimal (digits, optionally '.' and digits) as its shortest text: integer
 * digits without leading zeros (or "0"), '.', fraction digits without trailing zeros (or "0").
 * Fails on anything else, on zero, and outside the bounds of the module's docstring. */
typedef struct {
    const char *ip; /* integer digits, leading zeros dropped */
    Py_ssize_t in;
    const char *fp; /* fraction digits, trailing zeros dropped */
    Py_ssize_t fn;
} decimal;

static inline int
take_decimal(const char **pp, const char *end, int min_exp, int max_exp, decimal *out)
{
    const char *s = *pp, *p = s, *dot = NULL;
    for (; p < end && *p != ','; p++) {
        if (*p == '.') {
            if (dot)
                return 0;
            dot = p;
        }
        else if ((unsigned)(*p - '0') > 9) {
            return 0;
        }
    }
    if (p == s || dot == s)
        return 0;
    *pp = p;
    const char *ip = s, *iend = dot ? dot : p;
    while (ip < iend && *ip == '0')
        ip++;
    Py_ssize_t in = iend - ip;
    const char *fp = dot ? dot + 1 : p;
    Py_ssize_t fn = p - fp;
    while (fn > 0 && fp[fn - 1] == '0')
        fn--;
    int exp;
    Py_ssize_t sig;
    if (in > 0) {
        exp = (int)(in - 1);
        sig = in + fn;
    }
    else {
        Py_ssize_t z = 0;
        while (z < fn && fp[z] == '0')
            z++;
        if (z == fn)
            return 0; /* zero */
        exp = -(int)(z + 1);
        sig = fn - z;
    }
    if (sig > MAX_SIG_DIGITS || exp < min_exp || exp > max_exp)
        return 0;
    out->ip = ip;
    out->in = in;
    out->fp = fp;
    out->fn = fn;
    return 1;
}

/* Consumes the ',' after a field that is not the line's last. */
static inline int
comma(const char **pp, const char *end)
{
    if (*pp < end && **pp == ',') {
        (*pp)++;
        return 1;
    }
    return 0;
}

#define PUT(o, s, n)              \
    do {                          \
        memcpy((o), (s), (n));    \
        (o) += (n);               \
    } while (0)
#define PUT_LIT(o, s) PUT((o), (s), sizeof(s) - 1)

/* Two digits at a time: a timestamp has 13. */
static const char DIGIT_PAIRS[201] =
    "0001020304050607080910111213141516171819"
    "2021222324252627282930313233343536373839"
    "4041424344454647484950515253545556575859"
    "6061626364656667686970717273747576777879"
    "8081828384858687888990919293949596979899";

static inline char *
put_int(char *o, int64_t v)
{
    char tmp[24], *end = tmp + sizeof(tmp), *p = end;
    while (v >= 100) {
        p -= 2;
        memcpy(p, DIGIT_PAIRS + 2 * (v % 100), 2);
        v /= 100;
    }
    if (v >= 10) {
        p -= 2;
        memcpy(p, DIGIT_PAIRS + 2 * v, 2);
    }
    else {
        *--p = (char)('0' + v);
    }
    memcpy(o, p, end - p);
    return o + (end - p);
}

static inline char *
put_decimal(char *o, const decimal *d)
{
    if (d->in)
        PUT(o, d->ip, d->in);
    else
        *o++ = '0';
    *o++ = '.';
    if (d->fn)
        PUT(o, d->fp, d->fn);
    else
        *o++ = '0';
    return o;
}

typedef struct {
    int kind;
    const char *data;
    Py_ssize_t size;
    const char *head;
    Py_ssize_t head_n;
    const char *ingest;
    Py_ssize_t ingest_n;
    int min_exp, max_exp;
    char *json, *masked;
    int64_t *ends, *ts, *ids, *firsts, *lasts;
    Py_ssize_t lines, json_n, masked_n;
} job;

#define INGEST_KEY ",\"ingest_ts\":"

/* Returns 1 when every line took the fast path. Touches no Python object. */
static int
run(job *j)
{
    char *o = j->json, *m = j->masked;
    const char *p = j->data, *stop = j->data + j->size;
    int agg = j->kind == KIND_AGG;
    Py_ssize_t r = 0;
    while (p < stop) {
        /* The buffers were sized for the lines counted before the GIL was released. */
        if (r == j->lines)
            return 0;
        const char *nl = memchr(p, '\n', (size_t)(stop - p));
        const char *end = nl ? nl : stop;
        const char *next = nl ? nl + 1 : stop;
        if (end > p && end[-1] == '\r')
            end--;
        int64_t id, t, first = 0, last = 0;
        int maker, best;
        decimal price, qty;
        if (!take_uint(&p, end, &id) || !comma(&p, end)
            || !take_decimal(&p, end, j->min_exp, j->max_exp, &price) || !comma(&p, end)
            || !take_decimal(&p, end, j->min_exp, j->max_exp, &qty) || !comma(&p, end))
            return 0;
        if (agg) {
            if (!take_uint(&p, end, &first) || !comma(&p, end) || !take_uint(&p, end, &last)
                || !comma(&p, end) || first > last)
                return 0;
        }
        /* quoteQty is not kept, but a file whose quoteQty does not parse is not a good file. */
        else if (!take_number(&p, end) || !comma(&p, end)) {
            return 0;
        }
        if (!take_uint(&p, end, &t) || !comma(&p, end) || !take_bool(&p, end, &maker)
            || !comma(&p, end) || !take_bool(&p, end, &best) || p != end)
            return 0;
        if (t >= MICROS_THRESHOLD)
            t /= 1000;
        j->ids[r] = id;
        j->ts[r] = t;
        char *line = o;
        PUT(o, j->head, j->head_n);
        o = put_int(o, t);
        PUT_LIT(o, INGEST_KEY);
        char *value = o;
        PUT(o, j->ingest, j->ingest_n);
        char *after = o;
        PUT_LIT(o, ",\"trade_id\":");
        o = put_int(o, id);
        PUT_LIT(o, ",\"price\":");
        o = put_decimal(o, &price);
        PUT_LIT(o, ",\"qty\":");
        o = put_decimal(o, &qty);
        if (maker)
            PUT_LIT(o, ",\"is_buyer_maker\":true,\"source\":\"rest\"");
        else
            PUT_LIT(o, ",\"is_buyer_maker\":false,\"source\":\"rest\"");
        if (agg) {
            j->firsts[r] = first;
            j->lasts[r] = last;
            PUT_LIT(o, ",\"first_trade_id\":");
            o = put_int(o, first);
            PUT_LIT(o, ",\"last_trade_id\":");
            o = put_int(o, last);
        }
        PUT_LIT(o, "}\n");
        /* The masked line: the same with ingest_ts's digits replaced by one "0". */
        PUT(m, line, value - line);
        *m++ = '0';
        PUT(m, after, o - after);
        j->ends[r] = o - j->json;
        r++;
        p = next;
    }
    j->json_n = o - j->json;
    j->masked_n = m - j->masked;
    return 1;
}

static PyObject *
int64_bytes(Py_ssize_t rows)
{
    return PyBytes_FromStringAndSize(NULL, rows * (Py_ssize_t)sizeof(int64_t));
}

PyDoc_STRVAR(encode_doc,
"encode(kind, block, head, ingest_ts, min_exp, max_exp)\n--\n\n"
"JSON lines of a block of whole CSV lines of aggTrades (kind 0) or trades (kind 1).\n\n"
"``head`` is each line's start up to the event time's value; ``ingest_ts`` the value's\n"
"digits; prices and sizes are written plainly for decimal exponents in\n"
"[min_exp, max_exp]. Returns None when a line needs the general path, else\n"
"(jsonl, masked, ends, ts, ids, firsts, lasts): ``masked`` has every ingest_ts zeroed,\n"
"the others are native int64 arrays (line end offsets in jsonl, event times in ms, ids, and\n"
"for aggTrades the first and last trade ids; None for trades).");

static PyObject *
encode(PyObject *module, PyObject *args)
{
    int kind, min_exp, max_exp;
    Py_buffer block, head, ingest;
    if (!PyArg_ParseTuple(args, "iy*y*y*ii", &kind, &block, &head, &ingest, &min_exp, &max_exp))
        return NULL;
    PyObject *result = NULL, *json = NULL, *masked = NULL, *ends = NULL, *ts = NULL,
             *ids = NULL, *firsts = NULL, *lasts = NULL;
    if (kind != KIND_AGG && kind != KIND_TRADE) {
        PyErr_SetString(PyExc_ValueError, "kind must be 0 (aggTrades) or 1 (trades)");
        goto done;
    }
    const char *data = block.buf;
    Py_ssize_t lines = 0;
    for (const char *p = data, *stop = data + block.len; p < stop; lines++) {
        const char *nl = memchr(p, '\n', (size_t)(stop - p));
        p = nl ? nl + 1 : stop;
    }
    Py_ssize_t per_line = FIXED_LINE_BYTES + head.len + ingest.len;
    json = PyBytes_FromStringAndSize(NULL, lines * per_line + block.len);
    masked = PyBytes_FromStringAndSize(NULL, lines * per_line + block.len);
    ends = int64_bytes(lines);
    ts = int64_bytes(lines);
    ids = int64_bytes(lines);
    firsts = kind == KIND_AGG ? int64_bytes(lines) : Py_NewRef(Py_None);
    lasts = kind == KIND_AGG ? int64_bytes(lines) : Py_NewRef(Py_None);
    if (!json || !masked || !ends || !ts || !ids || !firsts || !lasts)
        goto done;
    job j = {
        .kind = kind, .data = data, .size = block.len, .head = head.buf, .head_n = head.len,
        .ingest = ingest.buf, .ingest_n = ingest.len, .min_exp = min_exp, .max_exp = max_exp,
        .lines = lines,
        .json = PyBytes_AS_STRING(json), .masked = PyBytes_AS_STRING(masked),
        .ends = (int64_t *)PyBytes_AS_STRING(ends), .ts = (int64_t *)PyBytes_AS_STRING(ts),
        .ids = (int64_t *)PyBytes_AS_STRING(ids),
        .firsts = kind == KIND_AGG ? (int64_t *)PyBytes_AS_STRING(firsts) : NULL,
        .lasts = kind == KIND_AGG ? (int64_t *)PyBytes_AS_STRING(lasts) : NULL,
    };
    int ok;
    Py_BEGIN_ALLOW_THREADS
    ok = run(&j);
    Py_END_ALLOW_THREADS
    if (!ok) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    if (_PyBytes_Resize(&json, j.json_n) < 0 || _PyBytes_Resize(&masked, j.masked_n) < 0)
        goto done;
    result = PyTuple_Pack(7, json, masked, ends, ts, ids, firsts, lasts);
done:
    Py_XDECREF(json);
    Py_XDECREF(masked);
    Py_XDECREF(ends);
    Py_XDECREF(ts);
    Py_XDECREF(ids);
    Py_XDECREF(firsts);
    Py_XDECREF(lasts);
    PyBuffer_Release(&block);
    PyBuffer_Release(&head);
    PyBuffer_Release(&ingest);
    return result;
}

static PyMethodDef methods[] = {
    {"encode", encode, METH_VARARGS, encode_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_archive_rows",
    "Archive CSV rows -> bronze JSON lines (see the source's header).", -1, methods,
};

PyMODINIT_FUNC
PyInit__archive_rows(void)
{
    return PyModule_Create(&module);
}
