/*
 * grouptun.native._runcipher: seal or open a whole run of datagrams in one call, GIL released.
 *
 * A run is `count` datagrams of one (epoch, sender) at fixed strides in caller-owned buffers; every
 * one but the last has the same size, the last may be shorter. Per datagram j (PROTOCOL.md 5):
 *
 *     s_j    = first + j * step                          (u64; the caller reserved them)
 *     header = u32_be(head) || u64_be(s_j)               (head: byte 0, flags, epoch, from Python)
 *     IV     = iv_base XOR (0x00000000 || u64_be(s_j))   (iv_base = head(12, nonce_common))
 *     suite 1: ct || tag = AES-256-GCM(enc_key, IV, plaintext, aad = header)
 *     suite 2: ct = AES-256-CTR(enc_key, IV || 0x00000000) XOR plaintext,
 *              tag = head(16, HMAC-SHA-256(mac_key, header || ct)), checked (CRYPTO_memcmp)
 *              before anything is decrypted
 *
 * Nothing here parses the network: on open the received header is only the AAD / MAC input, and
 * the s values come from Python, which admitted the run (wire.py's checks, the replay window) and
 * compared its headers. Every offset, stride, length and count is checked again here against the
 * buffers' sizes, with overflow-checked arithmetic, before the GIL is released; anything out of
 * bounds is a ValueError and nothing is written.
 *
 * Limits: one RunKey must not run two calls at once (its EVP contexts are reused): a second call
 * while one runs (another thread) raises RuntimeError. A datagram's plaintext is at most
 * MAX_PLAINTEXT bytes (UDP allows less).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/opensslv.h>
#include <openssl/params.h>

#include <stdint.h>
#include <string.h>

#define HEADER_SIZE 12
#define SEQUENCE_OFFSET 4
#define TAG_SIZE 16
#define OVERHEAD (HEADER_SIZE + TAG_SIZE)
#define IV_SIZE 12
#define KEY_SIZE 32
#define MAC_SIZE 32
#define MAX_PLAINTEXT 65536
#define SUITE_GCM 1
#define SUITE_CTR_HMAC 2

typedef struct {
    PyObject_HEAD
    int suite;
    int busy;
    unsigned char iv_base[IV_SIZE];
    EVP_CIPHER_CTX *enc; /* suite 1: AES-256-GCM encrypt; suite 2: AES-256-CTR (both directions) */
    EVP_CIPHER_CTX *dec; /* suite 1: AES-256-GCM decrypt; suite 2: NULL */
    EVP_MAC_CTX *mac;    /* suite 2: HMAC-SHA-256 keyed once, re-initialised per datagram */
} RunKey;

/* One run's layout, checked: datagram j reads in[j] and writes out[j]. */
typedef struct {
    const unsigned char *in;
    unsigned char *out;
    size_t in_stride, out_stride, count, size, last_size;
    uint64_t first, step;
    uint32_t head;
} Run;

static void put_be64(unsigned char *p, uint64_t v)
{
    for (int k = 7; k >= 0; k--) {
        p[k] = (unsigned char)(v & 0xFF);
        v >>= 8;
    }
}

static void put_be32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

static void make_iv(const RunKey *key, uint64_t s, unsigned char iv[IV_SIZE])
{
    unsigned char be[8];
    put_be64(be, s);
    memcpy(iv, key->iv_base, 4);
    for (int k = 0; k < 8; k++)
        iv[4 + k] = key->iv_base[4 + k] ^ be[k];
}

/* ---- one datagram ------------------------------------------------------------------------- */

static int gcm_seal(EVP_CIPHER_CTX *c, const unsigned char *iv, const unsigned char *in, int len,
                    unsigned char *dgram)
{
    int n;
    unsigned char *body = dgram + HEADER_SIZE;
    if (EVP_EncryptInit_ex(c, NULL, NULL, NULL, iv) != 1)
        return 0;
    if (EVP_EncryptUpdate(c, NULL, &n, dgram, HEADER_SIZE) != 1)
        return 0;
    if (len > 0 && EVP_EncryptUpdate(c, body, &n, in, len) != 1)
        return 0;
    if (EVP_EncryptFinal_ex(c, body + len, &n) != 1)
        return 0;
    return EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, TAG_SIZE, body + len) == 1;
}

/* 1: authentic (plaintext written), 0: not. */
static int gcm_open(EVP_CIPHER_CTX *c, const unsigned char *iv, const unsigned char *dgram, int len,
                    unsigned char *out)
{
    int n;
    unsigned char tag[TAG_SIZE];
    memcpy(tag, dgram + HEADER_SIZE + len, TAG_SIZE);
    if (EVP_DecryptInit_ex(c, NULL, NULL, NULL, iv) != 1)
        return 0;
    if (EVP_DecryptUpdate(c, NULL, &n, dgram, HEADER_SIZE) != 1)
        return 0;
    if (len > 0 && EVP_DecryptUpdate(c, out, &n, dgram + HEADER_SIZE, len) != 1)
        return 0;
    if (EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, TAG_SIZE, tag) != 1)
        return 0;
    return EVP_DecryptFinal_ex(c, out + len, &n) > 0;
}

static int ctr_apply(EVP_CIPHER_CTX *c, const unsigned char *iv, const unsigned char *in, int len,
                     unsigned char *out)
{
    int n;
    unsigned char block[16];
    if (len == 0)
        return 1;
    memcpy(block, iv, IV_SIZE);
    memset(block + IV_SIZE, 0, 4);
    if (EVP_EncryptInit_ex(c, NULL, NULL, NULL, block) != 1)
        return 0;
    return EVP_EncryptUpdate(c, out, &n, in, len) == 1 && n == len;
}

/* head(16, HMAC-SHA-256(mac_key, data[:len])) into tag. */
static int hmac_tag(EVP_MAC_CTX *m, const unsigned char *data, size_t len, unsigned char *tag)
{
    unsigned char md[MAC_SIZE];
    size_t outl = 0;
    int ok = EVP_MAC_init(m, NULL, 0, NULL) == 1 && EVP_MAC_update(m, data, len) == 1
             && EVP_MAC_final(m, md, &outl, sizeof md) == 1 && outl == MAC_SIZE;
    if (ok)
        memcpy(tag, md, TAG_SIZE);
    OPENSSL_cleanse(md, sizeof md);
    return ok;
}

static int ctr_hmac_seal(RunKey *key, const unsigned char *iv, const unsigned char *in, int len,
                         unsigned char *dgram)
{
    return ctr_apply(key->enc, iv, in, len, dgram + HEADER_SIZE)
           && hmac_tag(key->mac, dgram, HEADER_SIZE + (size_t)len, dgram + HEADER_SIZE + len);
}

static int ctr_hmac_open(RunKey *key, const unsigned char *iv, const unsigned char *dgram, int len,
                         unsigned char *out)
{
    unsigned char tag[TAG_SIZE];
    if (!hmac_tag(key->mac, dgram, HEADER_SIZE + (size_t)len, tag))
        return 0;
    if (CRYPTO_memcmp(tag, dgram + HEADER_SIZE + len, TAG_SIZE) != 0)
        return 0;
    return ctr_apply(key->enc, iv, dgram + HEADER_SIZE, len, out);
}

/* ---- whole runs (no Python calls: run with the GIL released) ------------------------------- */

static size_t length_of(const Run *r, size_t j)
{
    return j + 1 == r->count ? r->last_size : r->size;
}

/* 1 on success, 0 if OpenSSL failed (the run's output is then unusable). */
static int seal_all(RunKey *key, const Run *r)
{
    unsigned char iv[IV_SIZE];
    for (size_t j = 0; j < r->count; j++) {
        uint64_t s = r->first + (uint64_t)j * r->step;
        int len = (int)length_of(r, j);
        const unsigned char *in = r->in + j * r->in_stride;
        unsigned char *dgram = r->out + j * r->out_stride;
        put_be32(dgram, r->head);
        put_be64(dgram + SEQUENCE_OFFSET, s);
        make_iv(key, s, iv);
        if (!(key->suite == SUITE_GCM ? gcm_seal(key->enc, iv, in, len, dgram)
                                      : ctr_hmac_seal(key, iv, in, len, dgram)))
            return 0;
    }
    return 1;
}

/* Number of authentic datagrams; ok[j] = 1 / 0. A failed one's plaintext bytes are zeroed. */
static size_t open_all(RunKey *key, const Run *r, unsigned char *ok)
{
    unsigned char iv[IV_SIZE];
    size_t good = 0;
    for (size_t j = 0; j < r->count; j++) {
        uint64_t s = r->first + (uint64_t)j * r->step;
        int len = (int)(length_of(r, j) - OVERHEAD);
        const unsigned char *dgram = r->in + j * r->in_stride;
        unsigned char *out = r->out + j * r->out_stride;
        make_iv(key, s, iv);
        ok[j] = (unsigned char)(key->suite == SUITE_GCM ? gcm_open(key->dec, iv, dgram, len, out)
                                                        : ctr_hmac_open(key, iv, dgram, len, out));
        if (ok[j])
            good++;
        else
            memset(out, 0, (size_t)len);
    }
    return good;
}

/* ---- argument checks ----------------------------------------------------------------------- */

static int bad(const char *message)
{
    PyErr_SetString(PyExc_ValueError, message);
    return 0;
}

static int to_size(Py_ssize_t v, const char *name, size_t *out)
{
    if (v < 0) {
        PyErr_Format(PyExc_ValueError, "%s must be >= 0", name);
        return 0;
    }
    *out = (size_t)v;
    return 1;
}

static int to_u64(PyObject *o, uint64_t max, const char *name, uint64_t *out)
{
    unsigned long long v;
    if (!PyLong_Check(o)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int", name);
        return 0;
    }
    v = PyLong_AsUnsignedLongLong(o);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "%s out of range 0..%llu", name, (unsigned long long)max);
        return 0;
    }
    if (v > max) {
        PyErr_Format(PyExc_ValueError, "%s out of range 0..%llu", name, (unsigned long long)max);
        return 0;
    }
    *out = (uint64_t)v;
    return 1;
}

/* End (exclusive) of `count` items at `offset + j*stride`, all `size` long but the last `last`. */
static int extent(size_t offset, size_t stride, size_t count, size_t size, size_t last, size_t *end)
{
    size_t a, b;
    if (count == 0) {
        *end = offset;
        return 1;
    }
    if (__builtin_mul_overflow(count - 1, stride, &a) || __builtin_add_overflow(offset, a, &a)
        || __builtin_add_overflow(a, last, &b))
        return 0;
    *end = b;
    if (count >= 2) {
        if (__builtin_mul_overflow(count - 2, stride, &a) || __builtin_add_overflow(offset, a, &a)
            || __builtin_add_overflow(a, size, &a))
            return 0;
        if (a > *end)
            *end = a;
    }
    return 1;
}

static int disjoint(const void *a, size_t alen, const void *b, size_t blen)
{
    uintptr_t x = (uintptr_t)a, y = (uintptr_t)b;
    return alen == 0 || blen == 0 || x + alen <= y || y + blen <= x;
}

/*
 * Checks a run against its buffers. Item j takes length_of(j) bytes of the input and that plus
 * out_extra (negative: fewer) of the output. Fills r->in/out and the in/out spans.
 */
static int check_run(Run *r, const Py_buffer *in, size_t in_off, const Py_buffer *out, size_t out_off,
                     long out_extra, size_t *in_span, size_t *out_span)
{
    size_t in_end, out_end, out_size, out_last;
    r->in = (const unsigned char *)in->buf;
    r->out = (unsigned char *)out->buf;
    *in_span = *out_span = 0;
    if (r->count == 0)
        return 1;
    if (r->last_size > r->size && r->count > 1)
        return bad("last_size must not exceed size");
    if (r->count == 1)
        r->size = r->last_size;
    out_size = r->size + (size_t)(out_extra > 0 ? out_extra : 0);
    out_last = r->last_size + (size_t)(out_extra > 0 ? out_extra : 0);
    if (out_extra < 0) {
        if (r->last_size < (size_t)-out_extra)
            return bad("a datagram is shorter than header and tag");
        out_size -= (size_t)-out_extra;
        out_last -= (size_t)-out_extra;
    }
    if (r->count > 1 && r->out_stride < out_size)
        return bad("out_stride is smaller than a datagram's output: outputs would overlap");
    if (!extent(in_off, r->in_stride, r->count, r->size, r->last_size, &in_end) || in_end > (size_t)in->len)
        return bad("the run reaches past the end of its input buffer");
    if (!extent(out_off, r->out_stride, r->count, out_size, out_last, &out_end) || out_end > (size_t)out->len)
        return bad("the run reaches past the end of its output buffer");
    r->in = (const unsigned char *)in->buf + in_off;
    r->out = (unsigned char *)out->buf + out_off;
    *in_span = in_end - in_off;
    *out_span = out_end - out_off;
    if (!disjoint(r->in, *in_span, r->out, *out_span))
        return bad("input and output of a run must not overlap");
    return 1;
}

static int check_sequence(Run *r, int distinct)
{
    uint64_t last;
    if (r->count == 0)
        return 1;
    if (distinct && r->count > 1 && r->step == 0)
        return bad("step 0 would repeat a sequence number and an IV");
    if (__builtin_mul_overflow((uint64_t)(r->count - 1), r->step, &last)
        || __builtin_add_overflow(r->first, last, &last))
        return bad("the run's sequence numbers pass 2^64 - 1");
    return 1;
}

/* A Python int too large for Py_ssize_t is a bound violation like any other: ValueError. */
static PyObject *parse_failed(void)
{
    if (PyErr_ExceptionMatches(PyExc_OverflowError)) {
        PyErr_Clear();
        PyErr_SetString(PyExc_ValueError, "an offset, stride, count or size is out of range");
    }
    return NULL;
}

/* The layout arguments both methods take, as parsed. */
typedef struct {
    Py_ssize_t in_off, in_stride, out_off, out_stride, count, size, last;
    PyObject *first, *step;
} Args;

static int convert(const Args *a, const char *off_name, const char *stride_name, Run *r, size_t *in_off,
                   size_t *out_off)
{
    return to_size(a->in_off, off_name, in_off) && to_size(a->in_stride, stride_name, &r->in_stride)
           && to_size(a->out_off, "out_offset", out_off) && to_size(a->out_stride, "out_stride", &r->out_stride)
           && to_size(a->count, "count", &r->count) && to_size(a->size, "size", &r->size)
           && to_size(a->last, "last_size", &r->last_size) && to_u64(a->first, UINT64_MAX, "first", &r->first)
           && to_u64(a->step, UINT64_MAX, "step", &r->step);
}

static int take(RunKey *key)
{
    if (key->busy) {
        PyErr_SetString(PyExc_RuntimeError, "RunKey already in use by another call");
        return 0;
    }
    key->busy = 1;
    return 1;
}

/* ---- methods ------------------------------------------------------------------------------- */

PyDoc_STRVAR(seal_run_doc,
"seal_run(src, src_offset, src_stride, out, out_offset, out_stride, count, size, last_size, head, first, step)\n"
"--\n\n"
"Seal `count` plaintexts src[src_offset + j*src_stride:][:size] (the last `last_size` long) into\n"
"datagrams header || ciphertext || tag at out[out_offset + j*out_stride:], with s_j = first + j*step\n"
"and header = u32_be(head) || u64_be(s_j). ValueError (nothing written) on any bound violation.");

static PyObject *seal_run(RunKey *self, PyObject *args, PyObject *kw)
{
    static char *names[] = {"src", "src_offset", "src_stride", "out", "out_offset", "out_stride", "count",
                            "size", "last_size", "head", "first", "step", NULL};
    Py_buffer src = {0}, out = {0};
    Args a;
    PyObject *head_o, *result = NULL;
    uint64_t head = 0;
    size_t in_off = 0, o_off = 0, in_span, out_span;
    Run r = {0};
    int sealed;

    if (!PyArg_ParseTupleAndKeywords(args, kw, "y*nnw*nnnnnOOO", names, &src, &a.in_off, &a.in_stride, &out,
                                     &a.out_off, &a.out_stride, &a.count, &a.size, &a.last, &head_o, &a.first,
                                     &a.step))
        return parse_failed();
    if (!convert(&a, "src_offset", "src_stride", &r, &in_off, &o_off) || !to_u64(head_o, 0xFFFFFFFFu, "head", &head))
        goto done;
    r.head = (uint32_t)head;
    if (r.count && (r.size > MAX_PLAINTEXT || r.last_size > MAX_PLAINTEXT)) {
        bad("a plaintext is longer than 65536 bytes");
        goto done;
    }
    if (!check_run(&r, &src, in_off, &out, o_off, OVERHEAD, &in_span, &out_span) || !check_sequence(&r, 1)
        || !take(self))
        goto done;
    Py_BEGIN_ALLOW_THREADS
    sealed = seal_all(self, &r);
    Py_END_ALLOW_THREADS
    self->busy = 0;
    if (!sealed) {
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL failed to seal a datagram");
        goto done;
    }
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&src);
    PyBuffer_Release(&out);
    return result;
}

PyDoc_STRVAR(open_run_doc,
"open_run(data, data_offset, data_stride, out, out_offset, out_stride, count, size, last_size, first, step, ok)\n"
"--\n\n"
"Open `count` datagrams data[data_offset + j*data_stride:][:size] (the last `last_size` long, each at\n"
"least 28) with s_j = first + j*step; plaintext j goes to out[out_offset + j*out_stride:] (size - 28\n"
"bytes). ok[j] is set to 1 if datagram j authenticated, else 0 (and its plaintext bytes zeroed).\n"
"Returns how many authenticated. ValueError (nothing written) on any bound violation.");

static PyObject *open_run(RunKey *self, PyObject *args, PyObject *kw)
{
    static char *names[] = {"data", "data_offset", "data_stride", "out", "out_offset", "out_stride", "count",
                            "size", "last_size", "first", "step", "ok", NULL};
    Py_buffer data = {0}, out = {0}, ok = {0};
    Args a;
    PyObject *result = NULL;
    size_t in_off = 0, o_off = 0, in_span, out_span, good;
    Run r = {0};

    if (!PyArg_ParseTupleAndKeywords(args, kw, "y*nnw*nnnnnOOw*", names, &data, &a.in_off, &a.in_stride, &out,
                                     &a.out_off, &a.out_stride, &a.count, &a.size, &a.last, &a.first, &a.step, &ok))
        return parse_failed();
    if (!convert(&a, "data_offset", "data_stride", &r, &in_off, &o_off))
        goto done;
    if (r.count && (r.size > MAX_PLAINTEXT + OVERHEAD || r.last_size > MAX_PLAINTEXT + OVERHEAD)) {
        bad("a datagram is longer than 65536 + 28 bytes");
        goto done;
    }
    if ((size_t)ok.len < r.count) {
        bad("ok has fewer bytes than count");
        goto done;
    }
    if (!check_run(&r, &data, in_off, &out, o_off, -OVERHEAD, &in_span, &out_span) || !check_sequence(&r, 0))
        goto done;
    if (!disjoint(ok.buf, r.count, r.in, in_span) || !disjoint(ok.buf, r.count, r.out, out_span)) {
        bad("ok must not overlap the run's input or output");
        goto done;
    }
    if (!take(self))
        goto done;
    Py_BEGIN_ALLOW_THREADS
    good = open_all(self, &r, (unsigned char *)ok.buf);
    Py_END_ALLOW_THREADS
    self->busy = 0;
    result = PyLong_FromSize_t(good);
done:
    PyBuffer_Release(&data);
    PyBuffer_Release(&out);
    PyBuffer_Release(&ok);
    return result;
}

/* ---- the type ------------------------------------------------------------------------------ */

static void RunKey_clear(RunKey *self)
{
    EVP_CIPHER_CTX_free(self->enc); /* frees (and cleanses) the key schedule */
    EVP_CIPHER_CTX_free(self->dec);
    EVP_MAC_CTX_free(self->mac);
    self->enc = self->dec = NULL;
    self->mac = NULL;
    OPENSSL_cleanse(self->iv_base, sizeof self->iv_base);
}

static void RunKey_dealloc(RunKey *self)
{
    RunKey_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int setup_gcm(RunKey *self, const unsigned char *key)
{
    self->enc = EVP_CIPHER_CTX_new();
    self->dec = EVP_CIPHER_CTX_new();
    return self->enc && self->dec && EVP_EncryptInit_ex(self->enc, EVP_aes_256_gcm(), NULL, key, NULL) == 1
           && EVP_DecryptInit_ex(self->dec, EVP_aes_256_gcm(), NULL, key, NULL) == 1;
}

static int setup_ctr_hmac(RunKey *self, const unsigned char *key, const unsigned char *mac_key)
{
    EVP_MAC *hmac;
    OSSL_PARAM params[2];
    int ok;
    self->enc = EVP_CIPHER_CTX_new();
    if (!self->enc || EVP_EncryptInit_ex(self->enc, EVP_aes_256_ctr(), NULL, key, NULL) != 1)
        return 0;
    hmac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    if (!hmac)
        return 0;
    self->mac = EVP_MAC_CTX_new(hmac);
    EVP_MAC_free(hmac);
    params[0] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0);
    params[1] = OSSL_PARAM_construct_end();
    ok = self->mac && EVP_MAC_init(self->mac, mac_key, KEY_SIZE, params) == 1;
    return ok;
}

static int RunKey_init(RunKey *self, PyObject *args, PyObject *kw)
{
    static char *names[] = {"suite", "enc_key", "mac_key", "iv_base", NULL};
    int suite, ok = 0;
    Py_buffer enc = {0}, mac = {0}, iv = {0};
    PyObject *mac_o;

    if (!PyArg_ParseTupleAndKeywords(args, kw, "iy*Oy*", names, &suite, &enc, &mac_o, &iv))
        return -1;
    if (self->busy) { /* __init__ again from another thread while a call runs on these contexts */
        PyErr_SetString(PyExc_RuntimeError, "RunKey in use by another call");
        goto done;
    }
    RunKey_clear(self);
    if (suite != SUITE_GCM && suite != SUITE_CTR_HMAC) {
        bad("suite must be 1 or 2");
        goto done;
    }
    if (enc.len != KEY_SIZE || iv.len != IV_SIZE) {
        bad("enc_key must be 32 bytes and iv_base 12");
        goto done;
    }
    if (suite == SUITE_CTR_HMAC) {
        if (mac_o == Py_None || PyObject_GetBuffer(mac_o, &mac, PyBUF_SIMPLE) < 0) {
            if (!PyErr_Occurred())
                bad("suite 2 needs a 32-byte mac_key");
            goto done;
        }
        if (mac.len != KEY_SIZE) {
            bad("mac_key must be 32 bytes");
            goto done;
        }
    } else if (mac_o != Py_None) {
        bad("suite 1 takes no mac_key");
        goto done;
    }
    self->suite = suite;
    memcpy(self->iv_base, iv.buf, IV_SIZE);
    if (!(suite == SUITE_GCM ? setup_gcm(self, enc.buf) : setup_ctr_hmac(self, enc.buf, mac.buf))) {
        RunKey_clear(self);
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL could not set up the cipher");
        goto done;
    }
    ok = 1;
done:
    PyBuffer_Release(&enc);
    if (mac.obj)
        PyBuffer_Release(&mac);
    PyBuffer_Release(&iv);
    return ok ? 0 : -1;
}

static PyObject *RunKey_suite(RunKey *self, void *closure)
{
    (void)closure;
    return PyLong_FromLong(self->suite);
}

static PyObject *not_ready(void)
{
    PyErr_SetString(PyExc_RuntimeError, "RunKey not initialised");
    return NULL;
}

static PyObject *seal_run_entry(RunKey *self, PyObject *args, PyObject *kw)
{
    return self->enc ? seal_run(self, args, kw) : not_ready();
}

static PyObject *open_run_entry(RunKey *self, PyObject *args, PyObject *kw)
{
    return self->enc ? open_run(self, args, kw) : not_ready();
}

static PyMethodDef RunKey_methods[] = {
    {"seal_run", (PyCFunction)(void (*)(void))seal_run_entry, METH_VARARGS | METH_KEYWORDS, seal_run_doc},
    {"open_run", (PyCFunction)(void (*)(void))open_run_entry, METH_VARARGS | METH_KEYWORDS, open_run_doc},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef RunKey_getset[] = {
    {"suite", (getter)RunKey_suite, NULL, "1 (aes-256-gcm) or 2 (aes-256-ctr-hmac-sha256)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject RunKeyType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "grouptun.native._runcipher.RunKey",
    .tp_doc = PyDoc_STR("RunKey(suite, enc_key, mac_key, iv_base): one sender's keys, for whole runs"),
    .tp_basicsize = sizeof(RunKey),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)RunKey_init,
    .tp_dealloc = (destructor)RunKey_dealloc,
    .tp_methods = RunKey_methods,
    .tp_getset = RunKey_getset,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_runcipher", "Whole-run seal and open (PROTOCOL.md 5) over OpenSSL's EVP.", -1,
    NULL, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__runcipher(void)
{
    PyObject *m;
    if (PyType_Ready(&RunKeyType) < 0)
        return NULL;
    m = PyModule_Create(&module);
    if (!m)
        return NULL;
    if (PyModule_AddObjectRef(m, "RunKey", (PyObject *)&RunKeyType) < 0
        || PyModule_AddStringConstant(m, "OPENSSL_VERSION", OpenSSL_version(OPENSSL_VERSION)) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
