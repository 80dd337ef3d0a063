/*
 * Unit tests of the core (src/core) in TAP: the conformance vectors of
 * /work/shared/spec/vectors.json, then our own edge cases.
 *
 *     test-core [vectors.json]       (or MX_VECTORS=vectors.json)
 *
 * The plan is printed last, as TAP allows, so that adding a vector or a
 * case never means updating a count by hand.
 */

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sodium.h>

#include "mx_core.h"
#include "mx_ids.h"


#define MX_TEST_SHOW   48


typedef struct {
    unsigned        n;
    unsigned        failed;
} mx_tap_t;


/* the vector signing key, shared by several sections */
typedef struct {
    mx_signing_key_t  key;
    const char       *server;
    int               loaded;
} mx_test_key_t;


static int tap_ok(mx_tap_t *t, int ok, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
static void tap_diag(const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 1, 2)))
#endif
    ;
static void tap_note(const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 1, 2)))
#endif
    ;
static const char *show(char *dst, size_t size, const char *s, size_t len);
static int bytes_eq(mx_tap_t *t, const char *name, const unsigned char *got,
    size_t got_len, const char *want, size_t want_len);
static int canonical_is(mx_tap_t *t, const char *name, const char *in,
    int flags, const char *want);
static int parse_fails(mx_tap_t *t, const char *name, const char *in,
    int flags, const char *msg_part);
static int msg_has(mx_tap_t *t, const char *name, int rc,
    const mx_err_t *err, const char *part);
static const char *vec_str(const json_t *o, const char *key, size_t *len);

static void test_vectors_canonical(mx_tap_t *t, const json_t *vec);
static void test_vectors_strict(mx_tap_t *t, const json_t *vec);
static void test_vectors_base64(mx_tap_t *t, const json_t *vec);
static void test_vectors_signing_key(mx_tap_t *t, const json_t *vec,
    mx_test_key_t *tk);
static void test_vectors_json_signing(mx_tap_t *t, const json_t *vec,
    const mx_test_key_t *tk);

static void test_buf(mx_tap_t *t);
static void test_base64(mx_tap_t *t);
static void test_json_parse(mx_tap_t *t);
static void test_json_numbers(mx_tap_t *t);
static void test_json_strings(mx_tap_t *t);
static void test_json_depth(mx_tap_t *t);
static void test_keys(mx_tap_t *t);
static void test_sign(mx_tap_t *t, const mx_test_key_t *tk);
static void test_user_localparts(mx_tap_t *t);


int
main(int argc, char **argv)
{
    json_t         *vec;
    mx_tap_t        t;
    const char     *path;
    json_error_t    e;
    mx_test_key_t   tk;

    path = argc > 1 ? argv[1] : getenv("MX_VECTORS");

    if (path == NULL || path[0] == '\0') {
        printf("Bail out! no vectors file: pass it as an argument or set "
               "MX_VECTORS\n");
        return 1;
    }

    vec = json_load_file(path, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &e);
    if (vec == NULL) {
        printf("Bail out! %s: %s (line %d)\n", path, e.text, e.line);
        return 1;
    }

    if (sodium_init() < 0) {
        printf("Bail out! sodium_init() failed\n");
        json_decref(vec);
        return 1;
    }

    t.n = 0;
    t.failed = 0;

    memset(&tk, 0, sizeof(tk));

    test_vectors_canonical(&t, vec);
    test_vectors_strict(&t, vec);
    test_vectors_base64(&t, vec);
    test_vectors_signing_key(&t, vec, &tk);
    test_vectors_json_signing(&t, vec, &tk);

    test_buf(&t);
    test_base64(&t);
    test_json_parse(&t);
    test_json_numbers(&t);
    test_json_strings(&t);
    test_json_depth(&t);
    test_keys(&t);
    test_sign(&t, &tk);
    test_user_localparts(&t);

    json_decref(vec);

    printf("1..%u\n", t.n);

    if (t.failed) {
        tap_diag("failed %u of %u", t.failed, t.n);
        return 1;
    }

    return 0;
}


/* conformance vectors */


static void
test_vectors_canonical(mx_tap_t *t, const json_t *vec)
{
    char         s[MX_TEST_SHOW * 4];
    size_t       i, in_len, want_len;
    json_t      *cases, *c, *v;
    mx_buf_t     out;
    mx_err_t     err;
    const char  *in, *want;

    cases = json_object_get(json_object_get(vec, "canonical_json"), "cases");

    if (!tap_ok(t, json_array_size(cases) > 0,
                "vectors: canonical_json has cases"))
    {
        return;
    }

    mx_buf_init(&out);

    json_array_foreach(cases, i, c) {
        in = vec_str(c, "input", &in_len);
        want = vec_str(c, "expected", &want_len);

        mx_buf_reset(&out);

        v = mx_json_parse(in, in_len, 0, &err);

        if (v == NULL) {
            tap_ok(t, 0, "canonical_json[%zu] %s", i,
                   show(s, sizeof(s), in, in_len));
            tap_diag("parse: %s", err.msg);
            continue;
        }

        if (mx_json_canonical(v, &out, &err) != MX_OK) {
            tap_ok(t, 0, "canonical_json[%zu] %s", i,
                   show(s, sizeof(s), in, in_len));
            tap_diag("canonical: %s", err.msg);

        } else {
            snprintf(s, sizeof(s), "canonical_json[%zu] ", i);
            show(s + strlen(s), sizeof(s) - strlen(s), in, in_len);
            bytes_eq(t, s, out.data, out.len, want, want_len);
        }

        json_decref(v);
    }

    mx_buf_free(&out);
}


static void
test_vectors_strict(mx_tap_t *t, const json_t *vec)
{
    int          valid;
    size_t       i, in_len;
    json_t      *cases, *c, *v, *v1;
    mx_buf_t     out;
    mx_err_t     err;
    const char  *in, *name;

    cases = json_object_get(
                json_object_get(vec, "canonical_json_strict_validation"),
                "cases");

    if (!tap_ok(t, json_array_size(cases) > 0,
                "vectors: canonical_json_strict_validation has cases"))
    {
        return;
    }

    mx_buf_init(&out);

    json_array_foreach(cases, i, c) {
        in = vec_str(c, "input", &in_len);
        name = json_string_value(json_object_get(c, "name"));
        valid = json_is_true(json_object_get(c, "valid_v6plus"));

        v = mx_json_parse(in, in_len, MX_JSON_STRICT, &err);

        tap_ok(t, (v != NULL) == valid, "strict[%zu] %s: %s", i, name,
               valid ? "accepted" : "refused");

        if ((v != NULL) != valid) {
            tap_diag("input %s; %s", in, v ? "accepted" : err.msg);

        } else if (v == NULL) {
            tap_note("refused as expected: %s", err.msg);
        }

        if (v != NULL) {
            mx_buf_reset(&out);
            tap_ok(t, mx_json_canonical(v, &out, &err) == MX_OK,
                   "strict[%zu] %s: canonical", i, name);
            json_decref(v);
        }

        if (json_is_true(json_object_get(c, "valid_v1"))) {
            mx_buf_reset(&out);
            v1 = mx_json_parse(in, in_len, 0, &err);

            if (!tap_ok(t, v1 != NULL, "strict[%zu] %s: lenient parse",
                        i, name))
            {
                tap_diag("%s", err.msg);
                continue;
            }

            /*
             * valid_v1 only says old rooms tolerate it; whether it has
             * a canonical form is a separate question: 1.1 has none,
             * an out-of-range integer has none either.
             */
            tap_ok(t, mx_json_canonical(v1, &out, &err) != MX_OK,
                   "strict[%zu] %s: lenient value has no canonical form",
                   i, name);
            tap_note("canonical refused: %s", err.msg);

            json_decref(v1);
        }
    }

    mx_buf_free(&out);
}


static void
test_vectors_base64(mx_tap_t *t, const json_t *vec)
{
    char           enc[64], name[64];
    size_t         i, in_len, want_len, n, dec_len;
    json_t        *cases, *c;
    const char    *in, *want;
    unsigned char  dec[64];

    cases = json_object_get(json_object_get(vec, "unpadded_base64"), "cases");

    if (!tap_ok(t, json_array_size(cases) > 0,
                "vectors: unpadded_base64 has cases"))
    {
        return;
    }

    json_array_foreach(cases, i, c) {
        in = vec_str(c, "input_ascii", &in_len);
        want = vec_str(c, "expected", &want_len);

        n = mx_base64_encode(enc, (const unsigned char *) in, in_len,
                             MX_BASE64_STD);

        tap_ok(t, n == mx_base64_encoded_len(in_len),
               "unpadded_base64[%zu] encoded_len(%zu)", i, in_len);
        snprintf(name, sizeof(name), "unpadded_base64[%zu] encode", i);
        bytes_eq(t, name, (unsigned char *) enc, n, want, want_len);

        if (tap_ok(t, mx_base64_decode(dec, &dec_len, want, want_len)
                      == MX_OK,
                   "unpadded_base64[%zu] decode \"%s\"", i, want))
        {
            snprintf(name, sizeof(name), "unpadded_base64[%zu] decoded bytes",
                     i);
            bytes_eq(t, name, dec, dec_len, in, in_len);
        }
    }
}


static void
test_vectors_signing_key(mx_tap_t *t, const json_t *vec, mx_test_key_t *tk)
{
    char           pub[44];
    size_t         seed_len, pk_len, id_len, seed_b64_len;
    json_t        *sk;
    mx_err_t       err;
    const char    *seed_b64, *key_id, *pk_b64;
    unsigned char  seed[64];

    sk = json_object_get(vec, "signing_key");
    seed_b64 = vec_str(sk, "seed_base64", &seed_b64_len);
    key_id = vec_str(sk, "key_id", &id_len);
    pk_b64 = vec_str(sk, "public_key_base64_derived", &pk_len);
    tk->server = json_string_value(json_object_get(sk, "server_name"));

    if (!tap_ok(t, tk->server && id_len > 8
                   && strncmp(key_id, "ed25519:", 8) == 0,
                "vectors: signing_key is complete"))
    {
        return;
    }

    if (!tap_ok(t, mx_base64_decode(seed, &seed_len, seed_b64,
                                    seed_b64_len) == MX_OK
                   && seed_len == MX_ED25519_SEED_LEN,
                "signing_key: seed decodes to 32 bytes"))
    {
        return;
    }

    if (!tap_ok(t, mx_signing_key_from_seed(&tk->key, key_id + 8,
                                            id_len - 8, seed, &err)
                   == MX_OK,
                "signing_key: key from seed"))
    {
        tap_diag("%s", err.msg);
        return;
    }

    tk->loaded = 1;

    mx_signing_key_public_base64(&tk->key, pub);

    tap_ok(t, strcmp(tk->key.key_id, key_id) == 0,
           "signing_key: key id %s", key_id);
    bytes_eq(t, "signing_key: public key", (unsigned char *) pub,
             strlen(pub), pk_b64, pk_len);
}


static void
test_vectors_json_signing(mx_tap_t *t, const json_t *vec,
    const mx_test_key_t *tk)
{
    char         name[64];
    size_t       i, want_len;
    json_t      *cases, *c, *obj, *expected;
    mx_buf_t     got, want;
    mx_err_t     err;
    const char  *bytes;

    cases = json_object_get(json_object_get(vec, "json_signing"), "cases");

    if (!tap_ok(t, json_array_size(cases) > 0 && tk->loaded,
                "vectors: json_signing has cases and a key"))
    {
        return;
    }

    mx_buf_init(&got);
    mx_buf_init(&want);

    json_array_foreach(cases, i, c) {
        obj = json_deep_copy(json_object_get(c, "input"));
        expected = json_object_get(c, "expected");
        bytes = vec_str(c, "signed_bytes", &want_len);

        mx_buf_reset(&got);
        mx_buf_reset(&want);

        tap_ok(t, mx_json_signing_bytes(obj, &got, &err) == MX_OK,
               "json_signing[%zu]: signing bytes", i);
        snprintf(name, sizeof(name), "json_signing[%zu]: signed_bytes", i);
        bytes_eq(t, name, got.data, got.len, bytes, want_len);

        mx_buf_reset(&got);

        if (!tap_ok(t, mx_json_sign(obj, tk->server, &tk->key, &err)
                       == MX_OK,
                    "json_signing[%zu]: sign", i))
        {
            tap_diag("%s", err.msg);
            json_decref(obj);
            continue;
        }

        if (mx_json_canonical(obj, &got, &err) != MX_OK
            || mx_json_canonical(expected, &want, &err) != MX_OK)
        {
            tap_ok(t, 0, "json_signing[%zu]: canonical", i);
            tap_diag("%s", err.msg);

        } else {
            snprintf(name, sizeof(name), "json_signing[%zu]: signed object",
                     i);
            bytes_eq(t, name, got.data, got.len, (char *) want.data,
                     want.len);
        }

        tap_ok(t, mx_json_verify(expected, tk->server, tk->key.key_id,
                                 tk->key.public_key, &err) == MX_OK,
               "json_signing[%zu]: expected object verifies", i);

        json_decref(obj);
    }

    mx_buf_free(&got);
    mx_buf_free(&want);
}


/* our own cases */


static void
test_buf(mx_tap_t *t)
{
    size_t    i;
    mx_buf_t  b;
    mx_err_t  err;

    mx_err_set(NULL, "ignored %d", 1);
    tap_ok(t, 1, "mx_err_set() takes a NULL err");

    mx_err_set(&err, "%s", "x");
    tap_ok(t, strcmp(err.msg, "x") == 0, "mx_err_set() formats");

    mx_buf_init(&b);

    tap_ok(t, mx_buf_append(&b, NULL, 0) == MX_OK && b.len == 0,
           "mx_buf: empty append");

    for (i = 0; i < 1000; i++) {
        if (mx_buf_append_str(&b, "0123456789") != MX_OK) {
            break;
        }
    }

    tap_ok(t, i == 1000 && b.len == 10000 && b.cap >= 10000
              && memcmp(b.data + 9990, "0123456789", 10) == 0,
           "mx_buf: grows");

    tap_ok(t, mx_buf_reserve(&b, (size_t) -1) == MX_ERROR,
           "mx_buf: impossible reserve fails");

    mx_buf_reset(&b);
    tap_ok(t, b.len == 0 && b.data != NULL, "mx_buf: reset keeps memory");

    mx_buf_free(&b);
    tap_ok(t, b.data == NULL && b.len == 0 && b.cap == 0,
           "mx_buf: free");
}


static void
test_base64(mx_tap_t *t)
{
    char           enc[16], name[64];
    size_t         n, i;
    unsigned char  dec[64];

    static const unsigned char  bin[] = { 0xfb, 0xff, 0xbf };

    static const struct {
        const char  *in;
        const char  *out;       /* NULL: must be refused */
        size_t       out_len;
    } cases[] = {
        { "Zm9vYg==", "foob", 4 },
        { "Zm9vYg", "foob", 4 },
        { "Zm9vYmE=", "fooba", 5 },
        { "Zm9vYmE", "fooba", 5 },
        { "Zm9vYmFy", "foobar", 6 },
        { "", "", 0 },
        { "-_-_", "\xfb\xff\xbf", 3 },
        { "+/+/", "\xfb\xff\xbf", 3 },
        { "+_-/", "\xfb\xff\xbf", 3 },        /* mixed: tolerated */
        { "Zh", "f", 1 },                     /* non-zero trailing bits */
        { "Zm9vY", NULL, 0 },                 /* length % 4 == 1 */
        { "Z", NULL, 0 },
        { "Zg=", NULL, 0 },                   /* incomplete padding */
        { "Zm9v=", NULL, 0 },                 /* padding without need */
        { "Zg===", NULL, 0 },
        { "=", NULL, 0 },
        { "==", NULL, 0 },
        { "Zg==Zg", NULL, 0 },                /* padding in the middle */
        { "Zm9v!", NULL, 0 },
        { "Zm 9v", NULL, 0 },
        { "Zm9v\n", NULL, 0 },
        { "Zm\xc3\xa9v", NULL, 0 },
    };

    n = mx_base64_encode(enc, bin, sizeof(bin), MX_BASE64_URLSAFE);
    bytes_eq(t, "base64: URL-safe encoding", (unsigned char *) enc, n,
             "-_-_", 4);

    n = mx_base64_encode(enc, bin, sizeof(bin), MX_BASE64_STD);
    bytes_eq(t, "base64: standard encoding", (unsigned char *) enc, n,
             "+/+/", 4);

    n = mx_base64_encode(enc, bin, 2, MX_BASE64_URLSAFE);
    bytes_eq(t, "base64: URL-safe, 2 bytes", (unsigned char *) enc, n,
             "-_8", 3);

    tap_ok(t, mx_base64_encoded_len(32) == 43
              && mx_base64_encoded_len(64) == 86
              && mx_base64_encoded_len(0) == 0,
           "base64: encoded_len of keys and signatures");

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        n = (size_t) -1;

        if (cases[i].out == NULL) {
            tap_ok(t, mx_base64_decode(dec, &n, cases[i].in,
                                       strlen(cases[i].in)) == MX_ERROR,
                   "base64: refuses \"%s\"", cases[i].in);
            continue;
        }

        if (tap_ok(t, mx_base64_decode(dec, &n, cases[i].in,
                                       strlen(cases[i].in)) == MX_OK,
                   "base64: decodes \"%s\"", cases[i].in))
        {
            snprintf(name, sizeof(name), "base64: \"%s\" decoded bytes",
                     cases[i].in);
            bytes_eq(t, name, dec, n, cases[i].out, cases[i].out_len);
        }
    }
}


static void
test_json_parse(mx_tap_t *t)
{
    parse_fails(t, "duplicate keys", "{\"a\":1,\"a\":2}", 0, "duplicate");
    parse_fails(t, "nested duplicate keys", "{\"x\":{\"a\":1,\"a\":1}}", 0,
                "duplicate");
    parse_fails(t, "trailing garbage", "{} {}", 0, "end of file");
    parse_fails(t, "empty input", "", 0, "invalid JSON");
    parse_fails(t, "invalid UTF-8", "[\"\xff\"]", 0, "invalid JSON");
    parse_fails(t, "lone surrogate", "[\"\\udead\"]", 0, "invalid Unicode");
    parse_fails(t, "NUL in a key (jansson refuses it)",
                "{\"a\\u0000\":1}", 0, "NUL");

    canonical_is(t, "top-level string", "\"x\"", 0, "\"x\"");
    canonical_is(t, "top-level number", " 42 ", MX_JSON_STRICT, "42");
    canonical_is(t, "insignificant whitespace",
                 " { \"b\" : [ 1 , 2 ] ,\n\"a\" : { } } ", MX_JSON_STRICT,
                 "{\"a\":{},\"b\":[1,2]}");
    canonical_is(t, "keys sorted by code point, not by UTF-16",
                 "{\"\\uff61\":1,\"\\ud83d\\ude00\":2,\"z\":3,\"\\u00e9\":4}",
                 MX_JSON_STRICT,
                 "{\"z\":3,\"\xc3\xa9\":4,\"\xef\xbd\xa1\":1,"
                 "\"\xf0\x9f\x98\x80\":2}");
    canonical_is(t, "prefix keys sort first",
                 "{\"ab\":1,\"a\":2,\"\":3}", 0, "{\"\":3,\"a\":2,\"ab\":1}");

    /* strict mode: -0 is seen in the text, not in strings */
    parse_fails(t, "strict: -0 in array", "[1,-0]", MX_JSON_STRICT,
                "negative zero");
    parse_fails(t, "strict: top-level -0", "-0", MX_JSON_STRICT,
                "negative zero");
    parse_fails(t, "strict: -0.0", "[-0.0]", MX_JSON_STRICT,
                "fraction or an exponent");
    canonical_is(t, "strict: \"-0\" in a string is fine",
                 "{\"a\":\"-0\",\"b\\\"-0\":\"\\\\\",\"c\":-10}",
                 MX_JSON_STRICT,
                 "{\"a\":\"-0\",\"b\\\"-0\":\"\\\\\",\"c\":-10}");
    canonical_is(t, "lenient: -0 becomes 0", "[-0,-0.0,-0e3]", 0,
                 "[0,0,0]");
    parse_fails(t, "strict: error names the path",
                "{\"a\":{\"b c\":[1,1.5]}}", MX_JSON_STRICT, "$.a.b?c[1]");
}


static void
test_json_numbers(mx_tap_t *t)
{
    mx_buf_t  out;
    mx_err_t  err;
    json_t   *v;

    canonical_is(t, "max safe integer", "[9007199254740991]",
                 MX_JSON_STRICT, "[9007199254740991]");
    canonical_is(t, "min safe integer", "[-9007199254740991]",
                 MX_JSON_STRICT, "[-9007199254740991]");
    parse_fails(t, "strict: 2^53", "[9007199254740992]", MX_JSON_STRICT,
                "outside");
    parse_fails(t, "strict: -(2^53)", "[-9007199254740992]",
                MX_JSON_STRICT, "outside");
    parse_fails(t, "strict: 1e5", "[1e5]", MX_JSON_STRICT, "exponent");
    parse_fails(t, "strict: 1.0", "[1.0]", MX_JSON_STRICT, "fraction");
    parse_fails(t, "int64 overflow", "[9223372036854775808]", 0,
                "number out of range");
    parse_fails(t, "int64 underflow", "[-9223372036854775809]", 0,
                "number out of range");
    parse_fails(t, "double overflow", "[1e400]", 0, "number out of range");

    canonical_is(t, "lenient: integral reals", "[1e10,1.0,-2.5e1,1E2]", 0,
                 "[10000000000,1,-25,100]");
    canonical_is(t, "lenient: real at 2^53-1", "[9007199254740991.0]", 0,
                 "[9007199254740991]");
    canonical_is(t, "lenient: underflow to zero", "[1e-400]", 0, "[0]");
    canonical_is(t, "no leading zeros or plus signs", "[0,10,-1]",
                 MX_JSON_STRICT, "[0,10,-1]");

    mx_buf_init(&out);

    v = mx_json_parse("[9007199254740992.0]", 20, 0, &err);
    msg_has(t, "lenient: real at 2^53 has no canonical form",
            mx_json_canonical(v, &out, &err), &err, "outside");
    json_decref(v);

    v = mx_json_parse("{\"a\":[1.5]}", 11, 0, &err);
    msg_has(t, "lenient: 1.5 has no canonical form",
            mx_json_canonical(v, &out, &err), &err, "$.a[0]");
    json_decref(v);

    v = mx_json_parse("[9007199254740992]", 18, 0, &err);
    msg_has(t, "lenient: integer 2^53 has no canonical form",
            mx_json_canonical(v, &out, &err), &err, "outside");
    json_decref(v);

    tap_ok(t, out.len == 0, "failed canonical() appends nothing");

    v = json_pack("[f,f]", 1e300, -0.0);
    msg_has(t, "built real 1e300 refused", mx_json_canonical(v, &out, &err),
            &err, "outside");
    json_decref(v);

    mx_buf_reset(&out);
    v = json_pack("[f,I,I]", -0.0, (json_int_t) INT64_MIN,
                  (json_int_t) INT64_MAX);
    msg_has(t, "built INT64_MIN refused", mx_json_canonical(v, &out, &err),
            &err, "outside");
    json_decref(v);

    v = json_pack("[i,I]", 1, (json_int_t) INT64_MIN);
    msg_has(t, "built INT64_MIN refused by the strict check",
            mx_json_check_strict(v, &err), &err, "$[1]");
    json_decref(v);

    mx_buf_free(&out);
}


static void
test_json_strings(mx_tap_t *t)
{
    json_t    *v;
    mx_buf_t   out;
    mx_err_t   err;

    canonical_is(t, "NUL in a string", "[\"a\\u0000b\"]", MX_JSON_STRICT,
                 "[\"a\\u0000b\"]");
    canonical_is(t, "only a NUL", "\"\\u0000\"", MX_JSON_STRICT,
                 "\"\\u0000\"");
    canonical_is(t, "DEL, / and U+2028 stay raw",
                 "[\"\\u007f\\/\\u2028\"]", MX_JSON_STRICT,
                 "[\"\x7f/\xe2\x80\xa8\"]");
    canonical_is(t, "all short escapes",
                 "\"\\\"\\\\\\b\\f\\n\\r\\t\\u001f\\u000B\"", MX_JSON_STRICT,
                 "\"\\\"\\\\\\b\\f\\n\\r\\t\\u001f\\u000b\"");

    mx_buf_init(&out);

    /* keys with NUL can only be built in code; jansson will not parse them */
    v = json_object();
    json_object_setn_new(v, "a\0b", 3, json_integer(1));
    json_object_setn_new(v, "a", 1, json_integer(2));
    json_object_setn_new(v, "a\x01", 2, json_integer(3));

    if (tap_ok(t, mx_json_canonical(v, &out, &err) == MX_OK,
               "NUL in a key built in code"))
    {
        bytes_eq(t, "NUL in a key sorts by bytes", out.data, out.len,
                 "{\"a\":2,\"a\\u0000b\":1,\"a\\u0001\":3}",
                 strlen("{\"a\":2,\"a\\u0000b\":1,\"a\\u0001\":3}"));
    }

    json_decref(v);

    mx_buf_reset(&out);
    v = json_stringn_nocheck("\xc0\xaf", 2);
    msg_has(t, "overlong UTF-8 from *_nocheck() refused",
            mx_json_canonical(v, &out, &err), &err, "invalid UTF-8");
    json_decref(v);

    v = json_stringn_nocheck("\xed\xa0\x80", 3);
    msg_has(t, "UTF-8 surrogate refused", mx_json_canonical(v, &out, &err),
            &err, "invalid UTF-8");
    json_decref(v);

    v = json_stringn_nocheck("\xf4\x90\x80\x80", 4);
    msg_has(t, "UTF-8 above U+10FFFF refused",
            mx_json_canonical(v, &out, &err), &err, "invalid UTF-8");
    json_decref(v);

    v = json_stringn_nocheck("ab\xe2\x82", 4);
    msg_has(t, "truncated UTF-8 refused", mx_json_canonical(v, &out, &err),
            &err, "invalid UTF-8");
    json_decref(v);

    v = json_object();
    json_object_setn_new_nocheck(v, "\xff", 1, json_true());
    msg_has(t, "invalid UTF-8 key refused", mx_json_canonical(v, &out, &err),
            &err, "invalid UTF-8");
    json_decref(v);

    mx_buf_free(&out);
}


static void
test_json_depth(mx_tap_t *t)
{
    int        i;
    char      *text;
    json_t    *v, *inner, *outer;
    mx_buf_t   out;
    mx_err_t   err;

    /* jansson parses 2048 levels, the serializer must take them all */
    mx_buf_init(&out);

    text = malloc(2 * 2049);
    if (text == NULL) {
        tap_ok(t, 0, "depth: malloc");
        return;
    }

    memset(text, '[', 2048);
    memset(text + 2048, ']', 2048);

    v = mx_json_parse(text, 2 * 2048, MX_JSON_STRICT, &err);

    if (tap_ok(t, v != NULL, "depth 2048 parses")) {
        tap_ok(t, mx_json_canonical(v, &out, &err) == MX_OK
                  && out.len == 2 * 2048,
               "depth 2048 canonicalizes");
        json_decref(v);
    }

    memset(text, '[', 2049);
    memset(text + 2049, ']', 2049);

    v = mx_json_parse(text, 2 * 2049, 0, &err);
    msg_has(t, "depth 2049 refused by the parser",
            v == NULL ? MX_ERROR : MX_OK, &err, "depth");
    json_decref(v);
    free(text);

    /* deeper values can still be built in code */
    v = json_array();

    for (i = 1; i < 5000; i++) {
        outer = json_object();
        json_object_set_new(outer, "k", v);
        v = outer;
    }

    mx_buf_reset(&out);
    msg_has(t, "depth 5000 refused by the serializer",
            mx_json_canonical(v, &out, &err), &err, "nested deeper");
    msg_has(t, "depth 5000 refused by the strict check",
            mx_json_check_strict(v, &err), &err, "nested deeper");
    tap_ok(t, out.len == 0, "nothing written for a refused value");

    json_decref(v);

    /* a cycle is just infinite depth */
    outer = json_array();
    inner = json_array();
    json_array_append(outer, inner);
    json_array_append(inner, outer);

    msg_has(t, "cycle refused", mx_json_canonical(outer, &out, &err), &err,
            "nested deeper");

    json_array_clear(inner);
    json_decref(inner);
    json_decref(outer);

    mx_buf_free(&out);
}


static void
test_keys(mx_tap_t *t)
{
    int                rc;
    char               pub[44];
    size_t             n, i, len;
    mx_buf_t           buf;
    mx_err_t           err;
    mx_signing_key_t   keys[4], key;
    unsigned char      seed[MX_ED25519_SEED_LEN];

    static const char  two[] =
        "\n"
        "  ed25519 a_old  YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1  \r\n"
        "\t\r\n"
        "ed25519\tnew_1\tYJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1=\n";

    static const struct {
        const char  *name;
        const char  *text;
        const char  *msg;
    } bad[] = {
        { "unknown algorithm",
          "ed25519 a YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1\n"
          "rsa 1 YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1\n",
          "line 2: unknown algorithm \"rsa\"" },
        { "short seed", "ed25519 a YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3\n",
          "line 1: seed is not 32 bytes" },
        { "long seed",
          "ed25519 a YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1AAAA\n",
          "line 1: seed is not 32 bytes" },
        { "seed not base64",
          "ed25519 a YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA!\n",
          "line 1: seed is not valid base64" },
        { "bad version characters",
          "\n\ned25519 a:b YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1\n",
          "line 3: key version \"a:b\"" },
        { "version too long",
          "ed25519 "
          "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa "
          "YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1\n",
          "line 1: key version must be 1 to 64" },
        { "missing seed", "ed25519 a\n",
          "line 1: expected \"ed25519 <version> <base64 seed>\"" },
        { "extra field",
          "ed25519 a YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1 x\n",
          "line 1: unexpected \"x\" after the seed" },
        { "duplicate key id",
          "ed25519 a YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1\n"
          "ed25519 a YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1\n",
          "line 2: duplicate key id \"ed25519:a\"" },
        { "empty file", "", "no signing key found" },
        { "only blank lines", "\n  \n\t\r\n", "no signing key found" },
        { "binary garbage", "\x01\x02\n", "line 1: unknown algorithm "
          "\"\\x01\\x02\"" },
    };

    rc = mx_signing_keys_parse(two, sizeof(two) - 1, keys, 4, &n, &err);

    if (tap_ok(t, rc == MX_OK && n == 2,
               "key file: blank lines, CRLF, tabs and padding tolerated"))
    {
        mx_signing_key_public_base64(&keys[1], pub);
        tap_ok(t, strcmp(keys[0].key_id, "ed25519:a_old") == 0
                  && strcmp(keys[1].key_id, "ed25519:new_1") == 0
                  && strcmp(pub, "XGX0JRS2Af3be3knz2fBiRbApjm2Dh61gXDJA8kc"
                                 "JNI") == 0,
               "key file: ids and public key");

    } else {
        tap_diag("%s", err.msg);
    }

    msg_has(t, "key file: more keys than room",
            mx_signing_keys_parse(two, sizeof(two) - 1, keys, 1, &n, &err),
            &err, "line 4: more than 1 keys");

    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        n = 99;
        rc = mx_signing_keys_parse(bad[i].text, strlen(bad[i].text), keys,
                                   4, &n, &err);
        msg_has(t, bad[i].name, rc, &err, bad[i].msg);
        tap_ok(t, rc != MX_OK && n == 0, "key file: %s: no keys returned",
               bad[i].name);
    }

    memset(seed, 7, sizeof(seed));
    msg_has(t, "from_seed: empty version",
            mx_signing_key_from_seed(&key, "", 0, seed, &err), &err,
            "must be 1 to 64");
    msg_has(t, "from_seed: bad version",
            mx_signing_key_from_seed(&key, "a b", 3, seed, &err), &err,
            "\"a b\"");

    mx_buf_init(&buf);

    rc = mx_signing_key_generate(NULL, &buf, &err);
    rc = rc == MX_OK ? mx_signing_keys_parse((char *) buf.data, buf.len,
                                             keys, 4, &n, &err)
                     : rc;

    if (tap_ok(t, rc == MX_OK && n == 1, "generate: default version parses"))
    {
        len = strlen(keys[0].key_id);
        tap_ok(t, len == 14 && strncmp(keys[0].key_id, "ed25519:a_", 10) == 0,
               "generate: default version is a_XXXX (%s)", keys[0].key_id);
        tap_ok(t, buf.len == 8 + 6 + 1 + 43 + 1 && buf.data[buf.len - 1] == '\n',
               "generate: one line, unpadded seed");

    } else {
        tap_diag("%s", err.msg);
    }

    mx_buf_reset(&buf);

    rc = mx_signing_key_generate("k_2", &buf, &err);
    rc = rc == MX_OK ? mx_signing_keys_parse((char *) buf.data, buf.len,
                                             &key, 1, &n, &err)
                     : rc;
    tap_ok(t, rc == MX_OK && strcmp(key.key_id, "ed25519:k_2") == 0
              && memcmp(key.public_key, keys[0].public_key, 32) != 0,
           "generate: given version, a different key");

    mx_buf_reset(&buf);
    msg_has(t, "generate: bad version refused",
            mx_signing_key_generate("a-b", &buf, &err), &err, "\"a-b\"");
    tap_ok(t, buf.len == 0, "generate: nothing written on error");

    mx_buf_free(&buf);
}


static void
test_sign(mx_tap_t *t, const mx_test_key_t *tk)
{
    char               pub[44];
    json_t            *v, *u;
    mx_buf_t           buf;
    mx_err_t           err;
    mx_signing_key_t   other;
    unsigned char      seed[MX_ED25519_SEED_LEN];

    static const char  text[] =
        "{\"content\":{\"body\":\"h\\u00e9\",\"n\":[1,2,{\"z\":null}]},"
        "\"signatures\":{\"other.org\":{\"ed25519:x\":\"c2ln\"}},"
        "\"unsigned\":{\"age\":5}}";

    if (!tap_ok(t, tk->loaded, "sign: vector key available")) {
        return;
    }

    memset(seed, 0x42, sizeof(seed));
    mx_signing_key_from_seed(&other, "other", 5, seed, &err);

    v = mx_json_parse(text, sizeof(text) - 1, MX_JSON_STRICT, &err);

    tap_ok(t, mx_json_sign(v, tk->server, &tk->key, &err) == MX_OK,
           "sign: object with signatures and unsigned");
    tap_ok(t, mx_json_verify(v, tk->server, tk->key.key_id,
                             tk->key.public_key, &err) == MX_OK,
           "verify: round trip");
    tap_ok(t, json_is_string(json_object_get(json_object_get(
              json_object_get(v, "signatures"), "other.org"), "ed25519:x")),
           "sign: other servers' signatures kept");
    tap_ok(t, json_integer_value(json_object_get(json_object_get(v,
              "unsigned"), "age")) == 5,
           "sign: unsigned kept");

    tap_ok(t, mx_json_sign(v, tk->server, &other, &err) == MX_OK
              && mx_json_verify(v, tk->server, tk->key.key_id,
                                tk->key.public_key, &err) == MX_OK
              && mx_json_verify(v, tk->server, other.key_id,
                                other.public_key, &err) == MX_OK,
           "sign: a second key of the same server, both verify");

    /* "unsigned" is outside the signature by design */
    json_object_set_new(json_object_get(v, "unsigned"), "age",
                        json_integer(6));
    tap_ok(t, mx_json_verify(v, tk->server, tk->key.key_id,
                             tk->key.public_key, &err) == MX_OK,
           "verify: changing unsigned keeps the signature valid");

    msg_has(t, "verify: wrong key",
            mx_json_verify(v, tk->server, tk->key.key_id, other.public_key,
                           &err),
            &err, "signature by domain with ed25519:1 does not verify");

    msg_has(t, "verify: missing key id",
            mx_json_verify(v, tk->server, "ed25519:nope",
                           tk->key.public_key, &err),
            &err, "no signature by domain with ed25519:nope");
    msg_has(t, "verify: missing server",
            mx_json_verify(v, "elsewhere", tk->key.key_id,
                           tk->key.public_key, &err),
            &err, "no signature by elsewhere with ed25519:1");
    msg_has(t, "verify: signature of the wrong length",
            mx_json_verify(v, "other.org", "ed25519:x", tk->key.public_key,
                           &err),
            &err, "is 3 bytes, not 64");

    u = json_deep_copy(v);
    json_object_set_new(json_object_get(u, "content"), "body",
                        json_string("hi"));
    msg_has(t, "verify: tampered content",
            mx_json_verify(u, tk->server, tk->key.key_id,
                           tk->key.public_key, &err),
            &err, "does not verify");
    json_decref(u);

    u = json_deep_copy(v);
    json_object_set_new(u, "extra", json_true());
    msg_has(t, "verify: added key",
            mx_json_verify(u, tk->server, tk->key.key_id,
                           tk->key.public_key, &err),
            &err, "does not verify");
    json_decref(u);

    u = json_deep_copy(v);
    json_object_set_new(json_object_get(json_object_get(u, "signatures"),
                                        tk->server),
                        tk->key.key_id, json_string("!!!!"));
    msg_has(t, "verify: signature not base64",
            mx_json_verify(u, tk->server, tk->key.key_id,
                           tk->key.public_key, &err),
            &err, "not valid base64");
    json_decref(u);

    u = json_deep_copy(v);
    json_object_set_new(json_object_get(json_object_get(u, "signatures"),
                                        tk->server),
                        tk->key.key_id, json_integer(1));
    msg_has(t, "verify: signature not a string",
            mx_json_verify(u, tk->server, tk->key.key_id,
                           tk->key.public_key, &err),
            &err, "not a string");
    json_decref(u);

    json_decref(v);

    v = json_pack("{s:s}", "signatures", "x");
    msg_has(t, "sign: \"signatures\" not an object",
            mx_json_sign(v, "s", &other, &err), &err, "not an object");
    msg_has(t, "verify: \"signatures\" not an object",
            mx_json_verify(v, "s", other.key_id, other.public_key, &err),
            &err, "not an object");
    json_decref(v);

    v = json_pack("[i]", 1);
    msg_has(t, "sign: not an object", mx_json_sign(v, "s", &other, &err),
            &err, "object");
    msg_has(t, "verify: not an object",
            mx_json_verify(v, "s", other.key_id, other.public_key, &err),
            &err, "object");
    json_decref(v);

    v = json_pack("{s:f}", "a", 1.5);
    msg_has(t, "sign: non-canonical value refused",
            mx_json_sign(v, "s", &other, &err), &err, "$.a");
    tap_ok(t, json_object_get(v, "signatures") == NULL,
           "sign: object unchanged on error");
    json_decref(v);

    mx_buf_init(&buf);
    v = json_pack("{s:i,s:{},s:{}}", "b", 1, "signatures", "unsigned");
    tap_ok(t, mx_json_signing_bytes(v, &buf, &err) == MX_OK
              && buf.len == 7 && memcmp(buf.data, "{\"b\":1}", 7) == 0,
           "signing bytes drop signatures and unsigned");
    tap_ok(t, json_object_size(v) == 3,
           "signing bytes leave the object alone");
    json_decref(v);
    mx_buf_free(&buf);

    mx_signing_key_public_base64(&other, pub);
    tap_ok(t, strlen(pub) == 43, "public key is 43 characters");
}


/* helpers */


static int
tap_ok(mx_tap_t *t, int ok, const char *fmt, ...)
{
    char     name[512];
    size_t   i;
    va_list  args;

    va_start(args, fmt);
    vsnprintf(name, sizeof(name), fmt, args);
    va_end(args);

    /* "#" would start a TAP directive, a newline a new TAP line */
    for (i = 0; name[i]; i++) {
        if (name[i] == '#' || name[i] == '\n' || name[i] == '\r') {
            name[i] = '_';
        }
    }

    t->n++;

    if (!ok) {
        t->failed++;
    }

    printf("%sok %u - %s\n", ok ? "" : "not ", t->n, name);
    fflush(stdout);

    return ok;
}


static void
tap_diag(const char *fmt, ...)
{
    va_list  args;

    fputs("# ", stderr);

    va_start(args, fmt);
    vfprintf(stderr, fmt, args);
    va_end(args);

    fputc('\n', stderr);
    fflush(stderr);
}


/* a comment on stdout: shown by "prove -v" only */
static void
tap_note(const char *fmt, ...)
{
    va_list  args;

    fputs("# ", stdout);

    va_start(args, fmt);
    vfprintf(stdout, fmt, args);
    va_end(args);

    fputc('\n', stdout);
}


/* printable, bounded rendering of bytes for test names and diagnostics */
static const char *
show(char *dst, size_t size, const char *s, size_t len)
{
    size_t         i, j;
    unsigned char  c;

    j = 0;

    for (i = 0; i < len && j + 8 < size; i++) {
        c = (unsigned char) s[i];

        if (c >= 0x20 && c < 0x7f) {
            dst[j++] = (char) c;

        } else {
            j += (size_t) snprintf(dst + j, size - j, "\\x%02x", c);
        }
    }

    if (i < len) {
        memcpy(dst + j, "...", 3);
        j += 3;
    }

    dst[j] = '\0';

    return dst;
}


static int
bytes_eq(mx_tap_t *t, const char *name, const unsigned char *got,
    size_t got_len, const char *want, size_t want_len)
{
    int   ok;
    char  a[MX_TEST_SHOW * 8], b[MX_TEST_SHOW * 8];

    ok = got_len == want_len
         && (want_len == 0 || memcmp(got, want, want_len) == 0);

    tap_ok(t, ok, "%s", name);

    if (!ok) {
        tap_diag("got:  %s", show(a, sizeof(a), (const char *) got,
                                  got_len));
        tap_diag("want: %s", show(b, sizeof(b), want, want_len));
    }

    return ok;
}


static int
canonical_is(mx_tap_t *t, const char *name, const char *in, int flags,
    const char *want)
{
    int        ok;
    json_t    *v;
    mx_buf_t   out;
    mx_err_t   err;

    v = mx_json_parse(in, strlen(in), flags, &err);

    if (v == NULL) {
        tap_ok(t, 0, "canonical: %s", name);
        tap_diag("parse: %s", err.msg);
        return 0;
    }

    mx_buf_init(&out);

    if (mx_json_canonical(v, &out, &err) != MX_OK) {
        tap_ok(t, 0, "canonical: %s", name);
        tap_diag("canonical: %s", err.msg);
        ok = 0;

    } else {
        ok = bytes_eq(t, name, out.data, out.len, want, strlen(want));
    }

    mx_buf_free(&out);
    json_decref(v);

    return ok;
}


static int
parse_fails(mx_tap_t *t, const char *name, const char *in, int flags,
    const char *msg_part)
{
    json_t    *v;
    mx_err_t   err;

    v = mx_json_parse(in, strlen(in), flags, &err);

    if (v != NULL) {
        json_decref(v);
        tap_ok(t, 0, "parse refuses: %s", name);
        tap_diag("accepted");
        return 0;
    }

    return msg_has(t, name, MX_ERROR, &err, msg_part);
}


static int
msg_has(mx_tap_t *t, const char *name, int rc, const mx_err_t *err,
    const char *part)
{
    int  ok;

    ok = rc != MX_OK && strstr(err->msg, part) != NULL;

    tap_ok(t, ok, "%s", name);

    if (!ok) {
        if (rc == MX_OK) {
            tap_diag("succeeded");

        } else {
            tap_diag("message: %s", err->msg);
        }

        tap_diag("wanted an error containing: %s", part);
    }

    return ok;
}


static const char *
vec_str(const json_t *o, const char *key, size_t *len)
{
    json_t  *s;

    s = json_object_get(o, key);

    if (!json_is_string(s)) {
        *len = 0;
        return "";
    }

    *len = json_string_length(s);

    return json_string_value(s);
}


/* identifiers: localparts as this server issues them */

static void
test_user_localparts(mx_tap_t *t)
{
    size_t  i;
    char    long_one[257];

    static const char  *good[] = {
        "alice", "a", "0", "alice-42", "a.b=c_d/e+f", "u123456"
    };
    static const char  *bad[] = {
        "", "Alice", "al ice", "al:ice", "';DROP", "\xc3\xa9", "a*b", "a@b",
        "a\tb", "a#b"
    };

    for (i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        tap_ok(t, mx_user_localpart_valid(good[i], strlen(good[i])),
               "localpart \"%s\" is issued today", good[i]);
    }

    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        tap_ok(t, !mx_user_localpart_valid(bad[i], strlen(bad[i])),
               "localpart \"%s\" is not", bad[i]);
    }

    tap_ok(t, !mx_user_localpart_valid("a\0b", 3), "no NUL in a localpart");

    memset(long_one, 'a', sizeof(long_one) - 1);
    long_one[256] = '\0';
    tap_ok(t, !mx_user_localpart_valid(long_one, 256),
           "no localpart of 256 bytes");
    tap_ok(t, mx_user_localpart_valid(long_one, 255),
           "one of 255 is the limit of the function, not of user IDs");
}
