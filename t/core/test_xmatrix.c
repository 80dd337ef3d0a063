/*
 * X-Matrix request authentication (src/core/mx_xmatrix.c) and the SSRF
 * address checks (src/core/mx_netaddr.c), in TAP:
 *
 *     test_xmatrix [vectors.json]       (or MX_VECTORS=vectors.json)
 *
 * The vectors of /work/shared/spec/vectors.json (Synapse's parser cases,
 * requests signed with the spec's key), hostile headers one by one, then
 * random mutations of valid headers that must never crash nor be
 * accepted malformed (MX_TEST_SEED=N replays another run; run it under
 * valgrind to see every read stays in bounds: each mutant lives in a
 * malloc() block of exactly its length).
 */

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sodium.h>
#include <arpa/inet.h>

#include "mx_core.h"
#include "mx_ids.h"
#include "mx_xmatrix.h"
#include "mx_netaddr.h"
#include "tap.h"


#define T_SIG        "K+gI4o7RU3qxuH+0isGOhFR+ObA/nlZcL0YUf6t5WjEze1ZRxezG9n" \
                     "rt2f1KMw9Bz+q0OxY9i/fAMbQfTHC+Dg"
#define T_GOOD       "X-Matrix origin=\"a.org\",destination=\"b.org\","      \
                     "key=\"ed25519:k1\",sig=\"" T_SIG "\""

#define T_MUTANTS    20000

#define T_URI_CUT    "/_matrix/federation/v1/send/1?x=%2F&y="
#define T_URI        T_URI_CUT "\""


typedef struct {
    const char     *name;
    const char     *header;
    size_t          len;            /* 0: strlen(header) */
    const char     *reason;         /* part of the message */
} t_bad_t;


#define T_BAD(name, header, reason)   { name, header, 0, reason }
#define T_BAD_N(name, header, reason) { name, header, sizeof(header) - 1,    \
                                        reason }


static void t_vectors_parsing(tap_t *t, const json_t *vec);
static void t_vectors_signing(tap_t *t, const json_t *vec,
    const mx_signing_key_t *key);
static void t_accepted(tap_t *t);
static void t_hostile(tap_t *t);
static void t_hostile_built(tap_t *t);
static void t_mutations(tap_t *t, uint64_t seed);
static void t_sign_verify(tap_t *t, const mx_signing_key_t *key);
static void t_request_checks(tap_t *t, const mx_signing_key_t *key);
static void t_sigcache(tap_t *t, const mx_signing_key_t *key);
static void t_special(tap_t *t);
static void t_special_edges(tap_t *t);
static void t_netaddr_parse(tap_t *t);
static void t_cidr(tap_t *t);

static json_t *t_cases(tap_t *t, const json_t *vec, const char *section);
static int t_key_from_vectors(const json_t *vec, mx_signing_key_t *key);
static int t_refused(tap_t *t, const char *name, const char *header,
    size_t len, const char *reason);
static int t_accepts(tap_t *t, const char *name, const char *header,
    const char *origin, const char *key_id, const char *destination);
static void t_request(mx_xmatrix_request_t *req, const char *method,
    const char *uri, const char *origin, const char *destination,
    const json_t *content);
static int t_verify(const mx_xmatrix_request_t *signed_req,
    const mx_xmatrix_request_t *received, const mx_signing_key_t *key,
    const unsigned char *pk, mx_err_t *err);
static int t_header_sane(const unsigned char *h, size_t len,
    const mx_xmatrix_auth_t *auth);
static uint64_t t_rand(uint64_t *state);
static size_t t_mutate(uint64_t *rs, unsigned char *dst, size_t cap,
    const char *src);
static mx_netaddr_t t_addr(const char *text);
static int t_str_eq(const char *got, const char *want);


int
main(int argc, char **argv)
{
    tap_t              t;
    json_t            *vec;
    uint64_t           seed;
    const char        *path, *s;
    json_error_t       e;
    mx_signing_key_t   key;

    path = argc > 1 ? argv[1] : getenv("MX_VECTORS");

    if (path == NULL || path[0] == '\0') {
        printf("Bail out! no vectors file: pass it as an argument or set "
               "MX_VECTORS\n");
        return 1;
    }

    vec = json_load_file(path, JSON_REJECT_DUPLICATES, &e);
    if (vec == NULL) {
        printf("Bail out! %s: %s (line %d)\n", path, e.text, e.line);
        return 1;
    }

    if (sodium_init() < 0 || t_key_from_vectors(vec, &key) != MX_OK) {
        printf("Bail out! no signing key from the vectors' seed\n");
        json_decref(vec);
        return 1;
    }

    s = getenv("MX_TEST_SEED");
    seed = s && s[0] ? strtoull(s, NULL, 10) : 20240611;

    t.n = 0;
    t.failed = 0;

    t_vectors_parsing(&t, vec);
    t_vectors_signing(&t, vec, &key);
    t_accepted(&t);
    t_hostile(&t);
    t_hostile_built(&t);
    t_mutations(&t, seed);
    t_sign_verify(&t, &key);
    t_request_checks(&t, &key);
    t_sigcache(&t, &key);
    t_special(&t);
    t_special_edges(&t);
    t_netaddr_parse(&t);
    t_cidr(&t);

    json_decref(vec);

    if (t.failed) {
        tap_diag("random seed %llu: MX_TEST_SEED=%llu replays this run",
                 (unsigned long long) seed, (unsigned long long) seed);
    }

    return tap_done(&t);
}


/* vectors */


/* Synapse's cases: the grammar gives its tuple; "sig" is no signature */
static void
t_vectors_parsing(tap_t *t, const json_t *vec)
{
    char                name[96], *real;
    size_t              i, len;
    json_t             *cases, *c, *want;
    mx_err_t            err;
    const char         *h, *at;
    mx_xmatrix_auth_t   auth;

    cases = t_cases(t, vec, "x_matrix_authorization_header_parsing");

    json_array_foreach(cases, i, c) {
        h = json_string_value(json_object_get(c, "header"));
        want = json_object_get(c, "expected");
        len = h ? strlen(h) : 0;

        if (!tap_ok(t, h && mx_xmatrix_parse_params(h, len, &auth, &err)
                            == MX_OK,
                    "x_matrix_parsing[%zu]: parsed", i))
        {
            tap_diag("%s", err.msg);
            continue;
        }

        tap_ok(t, t_str_eq(auth.origin,
                           json_string_value(json_array_get(want, 0)))
                  && t_str_eq(auth.key_id,
                              json_string_value(json_array_get(want, 1)))
                  && t_str_eq(auth.sig_b64,
                              json_string_value(json_array_get(want, 2)))
                  && auth.has_destination
                  && t_str_eq(auth.destination,
                              json_string_value(json_array_get(want, 3))),
               "x_matrix_parsing[%zu]: (%s, %s, %s, %s)", i, auth.origin,
               auth.key_id, auth.sig_b64, auth.destination);

        snprintf(name, sizeof(name),
                 "x_matrix_parsing[%zu]: \"sig\" is not a signature", i);
        t_refused(t, name, h, len, "sig is 2 bytes, not 64");

        /* the same header with a real signature passes every check */
        at = strstr(h, "=\"sig\"");
        real = malloc(len + sizeof(T_SIG));

        if (!tap_ok(t, at != NULL && real != NULL,
                    "x_matrix_parsing[%zu]: has sig=\"sig\"", i))
        {
            free(real);
            continue;
        }

        snprintf(real, len + sizeof(T_SIG), "%.*s=\"" T_SIG "\"%s",
                 (int) (at - h), h, at + 6);

        snprintf(name, sizeof(name),
                 "x_matrix_parsing[%zu]: with a real sig", i);
        t_accepts(t, name, real, json_string_value(json_array_get(want, 0)),
                  json_string_value(json_array_get(want, 1)),
                  json_string_value(json_array_get(want, 3)));

        free(real);
    }
}


static void
t_vectors_signing(tap_t *t, const json_t *vec, const mx_signing_key_t *key)
{
    char                   want_header[256];
    size_t                 i;
    json_t                *cases, *c, *rj;
    mx_buf_t               got;
    mx_err_t               err;
    const char            *bytes, *sig;
    mx_xmatrix_auth_t      auth;
    mx_xmatrix_request_t   req;

    cases = t_cases(t, vec, "x_matrix_request_signing_derived");

    mx_buf_init(&got);

    json_array_foreach(cases, i, c) {
        rj = json_object_get(c, "request_json");
        bytes = json_string_value(json_object_get(c, "signed_bytes"));
        sig = json_string_value(json_object_get(c, "sig"));

        t_request(&req, json_string_value(json_object_get(rj, "method")),
                  json_string_value(json_object_get(rj, "uri")),
                  json_string_value(json_object_get(rj, "origin")),
                  json_string_value(json_object_get(rj, "destination")),
                  json_object_get(rj, "content"));

        mx_buf_reset(&got);

        if (!tap_ok(t, bytes && sig
                       && mx_xmatrix_signing_bytes(&req, &got, &err) == MX_OK
                       && got.len == strlen(bytes)
                       && memcmp(got.data, bytes, got.len) == 0,
                    "x_matrix_signing[%zu]: signed bytes", i))
        {
            tap_diag("got %.*s", (int) got.len, (char *) got.data);
            continue;
        }

        snprintf(want_header, sizeof(want_header),
                 "X-Matrix origin=\"%s\",destination=\"%s\","
                 "key=\"ed25519:1\",sig=\"%s\"", req.origin, req.destination,
                 sig);

        mx_buf_reset(&got);

        tap_ok(t, mx_xmatrix_sign(&req, key, &got, &err) == MX_OK
                  && got.len == strlen(want_header)
                  && memcmp(got.data, want_header, got.len) == 0,
               "x_matrix_signing[%zu]: header and signature", i);

        /* the vector's own header, read and checked as a receiver would */
        tap_ok(t, mx_xmatrix_parse(want_header, strlen(want_header), &auth,
                                   &err) == MX_OK
                  && mx_xmatrix_verify(&auth, &req, key->public_key, NULL,
                                       &err)
                     == MX_OK,
               "x_matrix_signing[%zu]: the vector's header verifies", i);
    }

    mx_buf_free(&got);
}


/* the grammar's corners that must be accepted */
static void
t_accepted(tap_t *t)
{
    size_t  n;
    char    big[MX_XMATRIX_HEADER_MAX + 1];

    t_accepts(t, "lower-case scheme, unquoted key with a colon",
              "x-matrix origin=a.org,key=ed25519:k1,sig=\"" T_SIG "\"",
              "a.org", "ed25519:k1", NULL);
    t_accepts(t, "tabs after the scheme and around commas and \"=\"",
              "X-MATRIX\t \torigin\t=\t\"a.org\"\t,\tsig =" T_SIG
              " ,key= ed25519:k1 ", "a.org", "ed25519:k1", NULL);
    t_accepts(t, "unquoted base64 sig with / and +, padded",
              "X-Matrix origin=a.org,key=ed25519:k1,sig=" T_SIG "==",
              "a.org", "ed25519:k1", NULL);
    t_accepts(t, "empty list elements and a trailing comma",
              "X-Matrix ,origin=a.org,,key=ed25519:k1, ,sig=" T_SIG ",",
              "a.org", "ed25519:k1", NULL);
    t_accepts(t, "IPv6 literal origin with a port, quoted",
              "X-Matrix origin=\"[2001:db8::1]:8448\",key=\"ed25519:k1\","
              "sig=\"" T_SIG "\",destination=\"b.org:8448\"",
              "[2001:db8::1]:8448", "ed25519:k1", "b.org:8448");
    t_accepts(t, "escapes in every value",
              "X-Matrix origin=\"\\a\\.\\o\\r\\g\",key=\"ed25519:\\k1\","
              "sig=\"" T_SIG "\",destination=\"\\b.org\"",
              "a.org", "ed25519:k1", "b.org");
    t_accepts(t, "unknown parameters: empty quoted, escaped quote, "
              "obs-text in quotes",
              "X-Matrix x=\"\",y=\"a\\\"b,c\",z=\"\xc3\xa9\",origin=a.org,"
              "key=ed25519:k1,sig=" T_SIG, "a.org", "ed25519:k1", NULL);
    t_accepts(t, "parameter names in any case, in any order",
              "X-Matrix SiG=" T_SIG ",DeStInAtIoN=b.org,KEY=ed25519:k1,"
              "Origin=a.org", "a.org", "ed25519:k1", "b.org");
    t_accepts(t, "leading and trailing whitespace",
              " \tX-Matrix origin=a.org,key=ed25519:k1,sig=" T_SIG " \t",
              "a.org", "ed25519:k1", NULL);
    t_accepts(t, "a 64-character key version",
              "X-Matrix origin=a.org,key=ed25519:"
              "0123456789012345678901234567890123456789012345678901234567890123"
              ",sig=" T_SIG, "a.org",
              "ed25519:"
              "0123456789012345678901234567890123456789012345678901234567890123",
              NULL);

    /* exactly at the limit: padded with an unknown parameter */
    n = (size_t) snprintf(big, sizeof(big), "%s,pad=\"", T_GOOD);
    memset(big + n, 'p', MX_XMATRIX_HEADER_MAX - n - 1);
    big[MX_XMATRIX_HEADER_MAX - 1] = '"';
    big[MX_XMATRIX_HEADER_MAX] = '\0';

    t_accepts(t, "a header of exactly 8192 bytes", big, "a.org",
              "ed25519:k1", "b.org");
}


static void
t_hostile(tap_t *t)
{
    size_t  i;

    static const t_bad_t  bad[] = {
        T_BAD("empty header", "", "not an X-Matrix"),
        T_BAD("whitespace only", " \t ", "not an X-Matrix"),
        T_BAD("another scheme", "Bearer abc", "not an X-Matrix"),
        T_BAD("X-Matrix as a parameter of Basic",
              "Basic X-Matrix origin=a.org", "not an X-Matrix"),
        T_BAD("scheme prefix only", "X-Matri origin=a.org", "not an X-Matrix"),
        T_BAD("scheme glued to a parameter", "X-Matrixorigin=a.org",
              "not an X-Matrix"),
        T_BAD("comma after the scheme", "X-Matrix,origin=a.org",
              "not an X-Matrix"),
        T_BAD("quoted scheme", "\"X-Matrix\" origin=a.org", "not an X-Matrix"),
        T_BAD("scheme alone", "X-Matrix", "no origin"),
        T_BAD("no origin", "X-Matrix key=ed25519:k1,sig=" T_SIG, "no origin"),
        T_BAD("no key", "X-Matrix origin=a.org,sig=" T_SIG, "no key"),
        T_BAD("no sig", "X-Matrix origin=a.org,key=ed25519:k1", "no sig"),
        T_BAD("token68 form", "X-Matrix b3JpZ2lu==", "no origin"),
        T_BAD("semicolons are no separators",
              "X-Matrix origin=a.org;key=ed25519:k1;sig=" T_SIG, "no key"),
        T_BAD("origin twice", T_GOOD ",origin=c.org", "repeats origin"),
        T_BAD("origin twice, other case", T_GOOD ",ORIGIN=\"a.org\"",
              "repeats origin"),
        T_BAD("destination twice", T_GOOD ",destination=c.org",
              "repeats destination"),
        T_BAD("sig twice", T_GOOD ",sig=\"" T_SIG "\"", "repeats sig"),
        T_BAD("unknown parameter twice", T_GOOD ",x=1,X=2",
              "repeats a parameter"),
        T_BAD_N("NUL in a quoted value",
                "X-Matrix origin=\"a\0.org\",key=ed25519:k1,sig=" T_SIG,
                "NUL"),
        T_BAD_N("NUL at the end", T_GOOD "\0", "NUL"),
        T_BAD("control character", "X-Matrix origin=\"a\x01.org\","
              "key=ed25519:k1,sig=" T_SIG, "control character"),
        T_BAD("CR LF (header injection)", T_GOOD "\r\nX-Evil: 1",
              "control character"),
        T_BAD("DEL", T_GOOD ",x=\"\x7f\"", "control character"),
        T_BAD("escaped control character", T_GOOD ",x=\"\\\x1b\"",
              "control character"),
        T_BAD("unterminated quoted origin",
              "X-Matrix key=ed25519:k1,sig=" T_SIG ",origin=\"a.org",
              "unterminated quoted value of origin"),
        T_BAD("backslash at the end of a quoted value",
              "X-Matrix key=ed25519:k1,sig=" T_SIG ",origin=\"a.org\\",
              "unterminated quoted value of origin"),
        T_BAD("escaped closing quote",
              "X-Matrix key=ed25519:k1,sig=" T_SIG ",origin=\"a.org\\\"",
              "unterminated"),
        T_BAD("empty origin", "X-Matrix origin=,key=ed25519:k1,sig=" T_SIG,
              "empty value of origin"),
        T_BAD("empty quoted key", "X-Matrix origin=a.org,key=\"\",sig=" T_SIG,
              "empty value of key"),
        T_BAD("empty sig at the end", "X-Matrix origin=a.org,key=ed25519:k1,"
              "sig=", "empty value of sig"),
        T_BAD("empty unquoted unknown value", T_GOOD ",x=",
              "empty value of a parameter"),
        T_BAD("a parameter without \"=\"", T_GOOD ",x",
              "without a value"),
        T_BAD("\"=\" without a name", T_GOOD ",=a", "without a name"),
        T_BAD("a quoted name", T_GOOD ",\"x\"=1", "without a name"),
        T_BAD("invalid character in a name", T_GOOD ",or@gin=a",
              "parameter name"),
        T_BAD("non-ASCII name", T_GOOD ",\xc3\xa9=a", "without a name"),
        T_BAD("junk after a quoted value",
              "X-Matrix origin=\"a.org\"b,key=ed25519:k1,sig=" T_SIG,
              "no comma after the value of origin"),
        T_BAD("space inside an unquoted value",
              "X-Matrix origin=a org,key=ed25519:k1,sig=" T_SIG,
              "no comma after the value of origin"),
        T_BAD("quote inside an unquoted value",
              "X-Matrix origin=a\"b\",key=ed25519:k1,sig=" T_SIG,
              "invalid character in the value of origin"),
        T_BAD("backslash in an unquoted value",
              "X-Matrix origin=a\\.org,key=ed25519:k1,sig=" T_SIG,
              "invalid character in the value of origin"),
        T_BAD("non-ASCII unquoted value",
              "X-Matrix origin=\xc3\xa9.org,key=ed25519:k1,sig=" T_SIG,
              "invalid character in the value of origin"),
        T_BAD("non-ASCII quoted origin",
              "X-Matrix origin=\"\xc3\xa9.org\",key=ed25519:k1,sig=" T_SIG,
              "origin is not a server name"),
        T_BAD("origin with a space, quoted",
              "X-Matrix origin=\"a .org\",key=ed25519:k1,sig=" T_SIG,
              "origin is not a server name"),
        T_BAD("origin with a 6-digit port",
              "X-Matrix origin=a.org:123456,key=ed25519:k1,sig=" T_SIG,
              "origin is not a server name"),
        T_BAD("origin with a path",
              "X-Matrix origin=a.org/x,key=ed25519:k1,sig=" T_SIG,
              "origin is not a server name"),
        T_BAD("unterminated IPv6 origin",
              "X-Matrix origin=\"[::1\",key=ed25519:k1,sig=" T_SIG,
              "origin is not a server name"),
        T_BAD("destination not a server name",
              "X-Matrix origin=a.org,key=ed25519:k1,sig=" T_SIG
              ",destination=\"b.org:\"", "destination is not a server name"),
        T_BAD("key of another algorithm",
              "X-Matrix origin=a.org,key=curve25519:k1,sig=" T_SIG,
              "not an ed25519 key ID"),
        T_BAD("key without a version",
              "X-Matrix origin=a.org,key=ed25519:,sig=" T_SIG,
              "not an ed25519 key ID"),
        T_BAD("key version with a dash",
              "X-Matrix origin=a.org,key=ed25519:a-b,sig=" T_SIG,
              "not an ed25519 key ID"),
        T_BAD("key without the algorithm",
              "X-Matrix origin=a.org,key=k1,sig=" T_SIG,
              "not an ed25519 key ID"),
        T_BAD("key of 73 bytes",
              "X-Matrix origin=a.org,sig=" T_SIG ",key=ed25519:"
              "01234567890123456789012345678901234567890123456789012345678901234",
              "key longer than 72 bytes"),
        T_BAD("sig not base64", "X-Matrix origin=a.org,key=ed25519:k1,"
              "sig=\"!!!!\"", "sig is not valid base64"),
        T_BAD("sig with padding in the middle",
              "X-Matrix origin=a.org,key=ed25519:k1,sig=\"Zg==Zg\"",
              "sig is not valid base64"),
        T_BAD("sig of 63 bytes", "X-Matrix origin=a.org,key=ed25519:k1,"
              "sig=\"" "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
              "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAA" "\"", "sig is 63 bytes"),
        T_BAD("sig of 65 bytes", "X-Matrix origin=a.org,key=ed25519:k1,"
              "sig=\"" T_SIG "A\"", "sig is 65 bytes"),
        T_BAD("sig longer than 88 characters",
              "X-Matrix origin=a.org,key=ed25519:k1,sig=" T_SIG "AAAAA",
              "sig longer than 88 bytes"),
        T_BAD("empty elements only", "X-Matrix ,, ,", "no origin"),
    };

    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        t_refused(t, bad[i].name, bad[i].header,
                  bad[i].len ? bad[i].len : strlen(bad[i].header),
                  bad[i].reason);
    }
}


/* what is too long or too many to write out */
static void
t_hostile_built(tap_t *t)
{
    char    h[MX_XMATRIX_HEADER_MAX + 600];
    size_t  n, i;

    /* one byte over the limit, otherwise valid */
    n = (size_t) snprintf(h, sizeof(h), "%s,pad=\"", T_GOOD);
    memset(h + n, 'p', MX_XMATRIX_HEADER_MAX - n);
    h[MX_XMATRIX_HEADER_MAX] = '"';
    t_refused(t, "a header of 8193 bytes", h, MX_XMATRIX_HEADER_MAX + 1,
              "longer than 8192 bytes");

    /* an origin of 262 bytes: longer than any server name */
    n = (size_t) snprintf(h, sizeof(h), "X-Matrix key=ed25519:k1,sig=%s,"
                          "origin=", T_SIG);
    memset(h + n, 'a', 262);
    t_refused(t, "an origin of 262 bytes", h, n + 262,
              "origin longer than 261 bytes");

    /* 256 characters fit the field but not the hostname grammar */
    memset(h + n, 'a', 256);
    t_refused(t, "a hostname of 256 characters", h, n + 256,
              "origin is not a server name");

    /* a destination of 300 */
    n = (size_t) snprintf(h, sizeof(h), "%s", "X-Matrix origin=a.org,"
                          "key=ed25519:k1,sig=" T_SIG ",destination=");
    memset(h + n, 'b', 300);
    t_refused(t, "a destination of 300 bytes", h, n + 300,
              "destination longer than 261 bytes");

    /* 33 parameters, all but 3 unknown */
    n = (size_t) snprintf(h, sizeof(h), "%s", T_GOOD);

    for (i = 0; i < 29; i++) {
        n += (size_t) snprintf(h + n, sizeof(h) - n, ",p%zu=1", i);
    }

    t_refused(t, "33 parameters", h, n, "more than 32 parameters");

    /* 32 are fine */
    n = (size_t) snprintf(h, sizeof(h), "%s", T_GOOD);

    for (i = 0; i < 28; i++) {
        n += (size_t) snprintf(h + n, sizeof(h) - n, ",p%zu=1", i);
    }

    t_accepts(t, "32 parameters", h, "a.org", "ed25519:k1", "b.org");

    /* empty elements count: a flood of commas is refused, not walked */
    n = (size_t) snprintf(h, sizeof(h), "%s", "X-Matrix ");
    memset(h + n, ',', 4000);
    t_refused(t, "4000 commas", h, n + 4000, "more than 32 parameters");

    /* a long unknown name, repeated: compared, refused */
    n = (size_t) snprintf(h, sizeof(h), "%s,", T_GOOD);
    memset(h + n, 'x', 3000);
    memcpy(h + n + 3000, "=1,", 3);
    memset(h + n + 3003, 'X', 3000);
    memcpy(h + n + 6003, "=2", 2);
    t_refused(t, "a 3000-byte unknown name twice", h, n + 6005,
              "repeats a parameter");
}


/*
 * Random edits of valid headers: replace, insert (the grammar's special
 * bytes most often), delete, cut, duplicate a stretch, change case.
 * Nothing may crash or read out of bounds, and what is accepted must
 * hold up: a server name, an ed25519 key ID, 64 signature bytes, no NUL
 * or control byte in the header.
 */
static void
t_mutations(tap_t *t, uint64_t seed)
{
    int                 ok;
    size_t              i, n, accepted, params_ok, insane;
    uint64_t            rs;
    unsigned char       buf[1024], *h;
    mx_err_t            err;
    mx_xmatrix_auth_t   auth;

    static const char  *valid[] = {
        T_GOOD,
        "X-Matrix origin=a.org,key=ed25519:k1,sig=" T_SIG,
        "x-matrix  ORIGIN=\"[::1]:8448\" , key=\"ed25\\519:k1\",\tsig=\""
            T_SIG "\",destination=b.org:80,extra=\"a\\\"b\"",
        "X-Matrix sig=" T_SIG ",,destination=\"b.org\",origin=1.2.3.4,"
            "key=ed25519:k1,",
    };

    rs = seed ? seed : 1;
    accepted = 0;
    params_ok = 0;
    insane = 0;

    for (i = 0; i < T_MUTANTS; i++) {
        n = t_mutate(&rs, buf, sizeof(buf),
                     valid[t_rand(&rs) % (sizeof(valid) / sizeof(valid[0]))]);

        /* exactly n bytes: one byte past them is outside the block */
        h = malloc(n ? n : 1);
        if (h == NULL) {
            break;
        }

        memcpy(h, buf, n);

        if (mx_xmatrix_parse_params((char *) h, n, &auth, &err) == MX_OK) {
            params_ok++;
        }

        ok = mx_xmatrix_parse((char *) h, n, &auth, &err) == MX_OK;

        if (ok) {
            accepted++;

            if (!t_header_sane(h, n, &auth)) {
                if (insane++ < 5) {
                    tap_diag("accepted but malformed: %.*s", (int) n,
                             (char *) h);
                }
            }
        }

        free(h);
    }

    tap_ok(t, i == T_MUTANTS && insane == 0,
           "%d mutants of valid headers: every accepted one well-formed "
           "(%zu accepted, %zu by the grammar alone)", T_MUTANTS, accepted,
           params_ok);
    tap_ok(t, accepted > T_MUTANTS / 100 && accepted < T_MUTANTS / 2,
           "the mutants are neither all accepted nor all refused");
}


static void
t_sign_verify(tap_t *t, const mx_signing_key_t *key)
{
    char                   old[256];
    size_t                 i;
    json_t                *body, *other, *bodies[4];
    mx_buf_t               out;
    mx_err_t               err;
    mx_signing_key_t       key2;
    mx_xmatrix_auth_t      auth;
    mx_xmatrix_request_t   req, rcv;
    unsigned char          seed[MX_ED25519_SEED_LEN];

    /* what the receiver sees instead of what was signed; body: bodies[] */
    static const struct {
        const char  *name;
        const char  *method;
        const char  *uri;
        const char  *origin;
        const char  *destination;
        size_t       body;
        const char  *reason;
    } changed[] = {
        { "another method", "POST", T_URI, "a.org", "b.org:8448", 0,
          "does not verify" },
        { "the uri cut short", "PUT", T_URI_CUT, "a.org", "b.org:8448", 0,
          "does not verify" },
        { "another body", "PUT", T_URI, "a.org", "b.org:8448", 1,
          "does not verify" },
        { "the body left out", "PUT", T_URI, "a.org", "b.org:8448", 2,
          "does not verify" },
        { "a body of null", "PUT", T_URI, "a.org", "b.org:8448", 3,
          "does not verify" },
        { "another destination", "PUT", T_URI, "a.org", "c.org", 0,
          "destination is not this server" },
        { "another origin", "PUT", T_URI, "c.org", "b.org:8448", 0,
          "origin is not the X-Matrix origin" },
    };

    body = json_pack("{s:s,s:[i,i],s:{}}", "b", "\xc3\xa9\"\\", "a", 1, 2,
                     "c");
    other = json_pack("{s:s,s:[i,i],s:{}}", "b", "\xc3\xa9\"\\", "a", 1, 3,
                      "c");

    memset(seed, 7, sizeof(seed));
    mx_signing_key_from_seed(&key2, "other", 5, seed, &err);

    bodies[0] = body;
    bodies[1] = other;
    bodies[2] = NULL;
    bodies[3] = json_null();

    t_request(&req, "PUT", T_URI, "a.org", "b.org:8448", body);

    tap_ok(t, t_verify(&req, &req, key, key->public_key, &err) == MX_OK,
           "sign, parse, verify: a request with a body");

    for (i = 0; i < sizeof(changed) / sizeof(changed[0]); i++) {
        t_request(&rcv, changed[i].method, changed[i].uri, changed[i].origin,
                  changed[i].destination, bodies[changed[i].body]);

        tap_ok(t, t_verify(&req, &rcv, key, key->public_key, &err) != MX_OK
                  && strstr(err.msg, changed[i].reason) != NULL,
               "received with %s: %s", changed[i].name, changed[i].reason);
    }

    tap_ok(t, t_verify(&req, &req, key, key2.public_key, &err) != MX_OK
              && strstr(err.msg, "does not verify"),
           "another public key does not verify");

    tap_ok(t, t_verify(&req, &req, &key2, key2.public_key, &err) == MX_OK,
           "another key signs and verifies");

    /* an old server's header: no destination; ours is what was signed */
    mx_buf_init(&out);

    if (mx_xmatrix_sign(&req, key, &out, &err) != MX_OK
        || mx_xmatrix_parse((char *) out.data, out.len, &auth, &err) != MX_OK)
    {
        auth.sig_b64[0] = '\0';
    }

    snprintf(old, sizeof(old), "X-Matrix origin=a.org,key=ed25519:1,"
             "sig=%s", auth.sig_b64);

    tap_ok(t, mx_xmatrix_parse(old, strlen(old), &auth, &err) == MX_OK
              && !auth.has_destination
              && mx_xmatrix_verify(&auth, &req, key->public_key, NULL, &err)
                 == MX_OK,
           "a header without destination verifies against this server's "
           "name");

    rcv = req;
    rcv.destination = "c.org";
    rcv.destination_len = 5;
    tap_ok(t, mx_xmatrix_verify(&auth, &rcv, key->public_key, NULL, &err)
              != MX_OK
              && strstr(err.msg, "does not verify"),
           "and not against another server's name");

    auth.sig[0] ^= 1;
    tap_ok(t, mx_xmatrix_verify(&auth, &req, key->public_key, NULL, &err)
              != MX_OK,
           "a signature with one bit flipped does not verify");

    mx_buf_free(&out);
    json_decref(body);
    json_decref(other);
}


static void
t_request_checks(tap_t *t, const mx_signing_key_t *key)
{
    size_t                 i;
    json_t                *obj, *body;
    mx_buf_t               out;
    mx_err_t               err;
    mx_xmatrix_request_t   req;

    static const char  *with_null = "{\"content\":null,\"destination\":"
        "\"b.org\",\"method\":\"GET\",\"origin\":\"a.org\",\"uri\":\"/x\"}";

    static const struct {
        const char  *name;
        const char  *method;
        const char  *uri;
        const char  *origin;
        const char  *destination;
        const char  *reason;
    } bad[] = {
        { "empty method", "", "/x", "a.org", "b.org", "method" },
        { "method with a space", "G T", "/x", "a.org", "b.org", "method" },
        { "method of 33 bytes", "GETGETGETGETGETGETGETGETGETGETGET", "/x",
          "a.org", "b.org", "method" },
        { "empty uri", "GET", "", "a.org", "b.org", "start with" },
        { "absolute uri", "GET", "https://b.org/x", "a.org", "b.org",
          "start with" },
        { "uri with a space", "GET", "/a b", "a.org", "b.org",
          "visible ASCII" },
        { "uri with UTF-8", "GET", "/\xc3\xa9", "a.org", "b.org",
          "visible ASCII" },
        { "uri with a newline", "GET", "/a\nHost: x", "a.org", "b.org",
          "visible ASCII" },
        { "origin not a server name", "GET", "/x", "a\".org", "b.org",
          "origin is not a server name" },
        { "empty destination", "GET", "/x", "a.org", "",
          "destination is not a server name" },
    };

    mx_buf_init(&out);

    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        t_request(&req, bad[i].method, bad[i].uri, bad[i].origin,
                  bad[i].destination, NULL);
        mx_buf_reset(&out);

        tap_ok(t, mx_xmatrix_sign(&req, key, &out, &err) != MX_OK
                  && out.len == 0 && strstr(err.msg, bad[i].reason) != NULL,
               "sign refuses: %s", bad[i].name);
    }

    t_request(&req, "GET", "/x", "a.org", "b.org", NULL);
    obj = mx_xmatrix_request_json(&req, &err);
    tap_ok(t, obj && json_object_size(obj) == 4
              && json_object_get(obj, "content") == NULL,
           "request JSON: no content without a body");
    json_decref(obj);

    t_request(&req, "GET", "/x", "a.org", "b.org", json_null());
    mx_buf_reset(&out);
    tap_ok(t, mx_xmatrix_signing_bytes(&req, &out, &err) == MX_OK
              && out.len == strlen(with_null)
              && memcmp(out.data, with_null, out.len) == 0,
           "request JSON: a body of null is content null");

    body = json_real(1.5);
    t_request(&req, "PUT", "/x", "a.org", "b.org", body);
    mx_buf_reset(&out);
    tap_ok(t, mx_xmatrix_sign(&req, key, &out, &err) != MX_OK
              && out.len == 0,
           "a body without a canonical form is not signed");
    json_decref(body);

    mx_buf_free(&out);
}


/* the special-purpose ranges: which name, and what is not special */
static void
t_special(tap_t *t)
{
    size_t        i;
    const char   *got, *via;
    mx_netaddr_t  a;

    static const struct {
        const char  *addr;
        const char  *name;      /* NULL: not special */
        const char  *via;
    } cases[] = {
        { "8.8.8.8", NULL, NULL },
        { "1.1.1.1", NULL, NULL },
        { "192.0.1.255", NULL, NULL },
        { "192.0.3.0", NULL, NULL },
        { "223.255.255.255", NULL, NULL },
        { "2606:4700:4700::1111", NULL, NULL },
        { "2a00:1450:4001::1", NULL, NULL },
        { "2001:200::", NULL, NULL },
        { "2001:db7:ffff:ffff:ffff:ffff:ffff:ffff", NULL, NULL },
        { "2001:db9::", NULL, NULL },
        { "64:ff9b:0:1::1", NULL, NULL },
        { "64:ff9b:2::", NULL, NULL },
        { "100:0:0:1::", NULL, NULL },
        { "::1:0:0", NULL, NULL },
        { "fbff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", NULL, NULL },
        { "fe00::", NULL, NULL },
        { "1fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", NULL, NULL },
        { "2003::", NULL, NULL },
        { "::ffff:8.8.8.8", NULL, NULL },
        { "64:ff9b::8.8.8.8", NULL, NULL },
        { "2002:0808:0808::1", NULL, NULL },
        { "0.1.2.3", "0.0.0.0/8 ", NULL },
        { "127.0.0.1", "127.0.0.0/8 loopback", NULL },
        { "255.255.255.255", "255.255.255.255/32 limited broadcast", NULL },
        { "255.255.255.254", "240.0.0.0/4 ", NULL },
        { "::", "::/128 unspecified", NULL },
        { "::1", "::1/128 loopback", NULL },
        { "::2", "::/96 IPv4-compatible", NULL },
        { "::127.0.0.1", "::/96 IPv4-compatible", NULL },
        { "::ffff:127.0.0.1", "127.0.0.0/8 loopback",
          "::ffff:0:0/96 IPv4-mapped" },
        { "::ffff:0.0.0.0", "0.0.0.0/8 ", "::ffff:0:0/96" },
        { "::ffff:169.254.169.254", "169.254.0.0/16 ", "::ffff:0:0/96" },
        { "64:ff9b::10.1.2.3", "10.0.0.0/8 private-use", "64:ff9b::/96 NAT64" },
        { "64:ff9b::7f00:1", "127.0.0.0/8 ", "64:ff9b::/96" },
        { "64:ff9b:1::8.8.8.8", "64:ff9b:1::/48 local-use NAT64", NULL },
        { "2002:7f00:1::1", "127.0.0.0/8 ", "2002::/16 6to4" },
        { "2002:c0a8:0101::", "192.168.0.0/16 ", "2002::/16 6to4" },
        { "2002:e000::", "224.0.0.0/4 ", "2002::/16" },
        { "100::1", "100::/64 discard-only", NULL },
        { "2001::1", "2001::/32 Teredo", NULL },
        { "2001:1::1", "2001::/23 ", NULL },
        { "2001:1ff:ffff:ffff:ffff:ffff:ffff:ffff", "2001::/23 ", NULL },
        { "feff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "fec0::/10 ", NULL },
        { "2001:db8:1::1", "2001:db8::/32 documentation", NULL },
        { "3fff:fff::1", "3fff::/20 ", NULL },
        { "5f00::1", "5f00::/16 ", NULL },
        { "fd12:3456::1", "fc00::/7 unique-local", NULL },
        { "fe80::1", "fe80::/10 link-local", NULL },
        { "febf::1", "fe80::/10 ", NULL },
        { "fec0::1", "fec0::/10 site-local", NULL },
        { "ff02::1", "ff00::/8 multicast", NULL },
    };

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        a = t_addr(cases[i].addr);
        got = mx_netaddr_special(&a, &via);

        if (cases[i].name == NULL) {
            tap_ok(t, got == NULL && via == NULL, "%s is not special: %s",
                   cases[i].addr, got ? got : "ok");
            continue;
        }

        tap_ok(t, got && strncmp(got, cases[i].name, strlen(cases[i].name))
                         == 0
                  && (cases[i].via
                      ? via && strncmp(via, cases[i].via,
                                       strlen(cases[i].via)) == 0
                      : via == NULL),
               "%s is special: %s%s%s", cases[i].addr, got ? got : "(no)",
               via ? " via " : "", via ? via : "");
    }

    a.family = 0;
    tap_ok(t, mx_netaddr_special(&a, NULL) != NULL,
           "an unknown address family is special");

    a = t_addr("::ffff:10.0.0.1");
    tap_ok(t, mx_netaddr_special(&a, NULL) != NULL, "via may be NULL");
}


/*
 * Every IPv4 range the task lists, at both ends and one address beyond
 * each: inside it is named by the range, outside it is not.
 */
static void
t_special_edges(tap_t *t)
{
    char           text[INET6_ADDRSTRLEN];
    size_t         i, k;
    unsigned       b;
    uint32_t       first, last, probe[4];
    mx_cidr_t      c;
    mx_err_t       err;
    const char    *got;
    mx_netaddr_t   a;

    static const char  *v4[] = {
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8",
        "169.254.0.0/16", "172.16.0.0/12", "192.0.0.0/24", "192.0.2.0/24",
        "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15",
        "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4",
        "255.255.255.255/32",
    };

    static const char  *v6[] = {
        "::/128", "::1/128", "64:ff9b:1::/48", "100::/64", "2001::/32",
        "2001:db8::/32", "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8",
    };

    for (i = 0; i < sizeof(v4) / sizeof(v4[0]); i++) {
        if (mx_cidr_parse(v4[i], strlen(v4[i]), &c, &err) != MX_OK) {
            tap_ok(t, 0, "%s parses", v4[i]);
            continue;
        }

        first = (uint32_t) c.addr[0] << 24 | (uint32_t) c.addr[1] << 16
                | (uint32_t) c.addr[2] << 8 | c.addr[3];
        last = first | (c.prefix >= 32 ? 0 : 0xffffffffu >> c.prefix);
        probe[0] = first;
        probe[1] = last;
        probe[2] = first - 1;
        probe[3] = last + 1;

        for (k = 0; k < 4; k++) {
            a.family = AF_INET;
            a.addr[0] = (unsigned char) (probe[k] >> 24);
            a.addr[1] = (unsigned char) (probe[k] >> 16);
            a.addr[2] = (unsigned char) (probe[k] >> 8);
            a.addr[3] = (unsigned char) probe[k];

            /* 0.0.0.0 - 1 and 255.255.255.255 + 1 wrap: not beyond */
            if (k >= 2 && ((k == 2 && first == 0)
                           || (k == 3 && last == 0xffffffffu)))
            {
                continue;
            }

            got = mx_netaddr_special(&a, NULL);
            inet_ntop(AF_INET, a.addr, text, sizeof(text));

            tap_ok(t, k < 2 ? got && strncmp(got, v4[i], strlen(v4[i])) == 0
                                 && got[strlen(v4[i])] == ' '
                            : got == NULL
                              || strncmp(got, v4[i], strlen(v4[i])) != 0,
                   "%s %s: %s", v4[i], text, got ? got : "not special");
        }
    }

    for (i = 0; i < sizeof(v6) / sizeof(v6[0]); i++) {
        if (mx_cidr_parse(v6[i], strlen(v6[i]), &c, &err) != MX_OK) {
            tap_ok(t, 0, "%s parses", v6[i]);
            continue;
        }

        /* the first and the last address of the range */
        for (k = 0; k < 2; k++) {
            a.family = AF_INET6;
            memcpy(a.addr, c.addr, 16);

            for (b = c.prefix; k == 1 && b < 128; b++) {
                a.addr[b / 8] |= (unsigned char) (0x80 >> b % 8);
            }

            got = mx_netaddr_special(&a, NULL);
            inet_ntop(AF_INET6, a.addr, text, sizeof(text));

            tap_ok(t, got && strncmp(got, v6[i], strlen(v6[i])) == 0,
                   "%s %s: %s", v6[i], text, got ? got : "not special");
        }
    }
}


static void
t_netaddr_parse(tap_t *t)
{
    size_t        i;
    mx_err_t      err;
    mx_netaddr_t  a;

    static const char  *bad[] = {
        "", "1.2.3", "1.2.3.4.5", "01.2.3.4", "256.1.1.1", "1.2.3.4 ",
        " 1.2.3.4", "::1%eth0", "[::1]", "1::2::3", "gggg::", "0x7f.0.0.1",
        "127.1", "2130706433", "1.2.3.4/8", "::ffff:1.2.3",
        "1111:2222:3333:4444:5555:6666:7777:8888:9999",
        "aaaa:bbbb:cccc:dddd:eeee:ffff:1111:2222:3333:4444",
    };

    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        tap_ok(t, mx_netaddr_parse(bad[i], strlen(bad[i]), &a, &err)
                  == MX_ERROR && a.family == 0,
               "not an address: \"%s\"", bad[i]);
    }

    tap_ok(t, mx_netaddr_parse("1.2.3.4\0", 8, &a, &err) == MX_ERROR,
           "not an address: NUL inside the length");

    tap_ok(t, mx_netaddr_parse("10.0.0.1xyz", 8, &a, &err) == MX_OK
              && a.family == AF_INET && a.addr[3] == 1,
           "only len bytes are read");

    tap_ok(t, mx_netaddr_parse("::ffff:1.2.3.4", 14, &a, &err) == MX_OK
              && a.family == AF_INET6 && a.addr[10] == 0xff
              && a.addr[15] == 4,
           "an IPv4-mapped address stays IPv6");
}


static void
t_cidr(tap_t *t)
{
    size_t        i;
    mx_err_t      err;
    mx_cidr_t     c;
    mx_netaddr_t  a;

    static const struct {
        const char  *cidr;
        const char  *addr;
        int          match;
    } cases[] = {
        { "127.0.0.0/8", "127.255.255.255", 1 },
        { "127.0.0.0/8", "128.0.0.0", 0 },
        { "127.0.0.0/8", "126.255.255.255", 0 },
        { "127.0.0.0/8", "::ffff:127.0.0.1", 1 },
        { "127.0.0.0/8", "::1", 0 },
        { "127.0.0.0/8", "64:ff9b::127.0.0.1", 0 },
        { "127.0.0.0/8", "::127.0.0.1", 0 },
        { "::1/128", "::1", 1 },
        { "::1/128", "127.0.0.1", 0 },
        { "::ffff:127.0.0.0/104", "127.0.0.1", 1 },
        { "::ffff:127.0.0.0/104", "10.0.0.1", 0 },
        { "10.0.0.1", "10.0.0.1", 1 },
        { "10.0.0.1", "10.0.0.2", 0 },
        { "10.0.0.0/31", "10.0.0.1", 1 },
        { "10.0.0.0/31", "10.0.0.2", 0 },
        { "10.0.0.0/9", "10.127.0.0", 1 },
        { "10.0.0.0/9", "10.128.0.0", 0 },
        { "0.0.0.0/0", "255.255.255.255", 1 },
        { "0.0.0.0/0", "::ffff:1.2.3.4", 1 },
        { "0.0.0.0/0", "::1", 0 },
        { "::/0", "2001:db8::1", 1 },
        { "::/0", "1.2.3.4", 1 },
        { "fc00::/7", "fdff:ffff::1", 1 },
        { "fc00::/7", "fe00::", 0 },
        { "fc00::/7", "fbff:ffff::", 0 },
        { "2001:db8::/32", "2001:db8:ffff:ffff::1", 1 },
        { "2001:db8::/32", "2001:db9::", 0 },
        { "2001:db8::/127", "2001:db8::1", 1 },
        { "2001:db8::/127", "2001:db8::2", 0 },
    };

    static const struct {
        const char  *cidr;
        const char  *reason;
    } bad[] = {
        { "10.1.2.3/8", "host bits are set: the network is 10.0.0.0/8" },
        { "fe80::1/10", "host bits are set: the network is fe80::/10" },
        { "10.0.0.0/33", "0 to 32" },
        { "::/129", "0 to 128" },
        { "10.0.0.0/", "0 to 32" },
        { "10.0.0.0/08", "leading zeros" },
        { "10.0.0.0/-1", "0 to 32" },
        { "10.0.0.0/+8", "0 to 32" },
        { "10.0.0.0/ 8", "0 to 32" },
        { "10.0.0.0/8 ", "0 to 32" },
        { "10.0.0.0/1000", "0 to 32" },
        { "10.0.0.0/8/8", "0 to 32" },
        { "/8", "not an IP" },
        { "", "not an IP" },
        { "garbage", "not an IPv4" },
        { "10.0.0/8", "not an IPv4" },
        { "[::1]/128", "not an IPv6" },
        { "::1%lo/128", "not an IPv6" },
        { "0000:0000:0000:0000:0000:0000:0000:0000:0000:0000/0",
          "not an" },
        { "0000:0000:0000:0000:0000:0000:0000:0000:0000:0000:0000:0000:0000:"
          "0000/0", "at most 64" },
    };

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        if (mx_cidr_parse(cases[i].cidr, strlen(cases[i].cidr), &c, &err)
            != MX_OK)
        {
            tap_ok(t, 0, "%s parses", cases[i].cidr);
            tap_diag("%s", err.msg);
            continue;
        }

        a = t_addr(cases[i].addr);

        tap_ok(t, mx_cidr_match(&c, &a) == cases[i].match, "%s %s %s",
               cases[i].addr, cases[i].match ? "in" : "not in",
               cases[i].cidr);
    }

    tap_ok(t, mx_cidr_parse("10.0.0.1", 8, &c, &err) == MX_OK
              && c.family == AF_INET && c.prefix == 32,
           "a bare IPv4 address is a /32");
    tap_ok(t, mx_cidr_parse("::", 2, &c, &err) == MX_OK
              && c.family == AF_INET6 && c.prefix == 128,
           "a bare IPv6 address is a /128");

    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        tap_ok(t, mx_cidr_parse(bad[i].cidr, strlen(bad[i].cidr), &c, &err)
                  == MX_ERROR && strstr(err.msg, bad[i].reason) != NULL,
               "refused CIDR \"%s\": %s", bad[i].cidr, err.msg);
    }
}


/* helpers */


/* vec[section].cases, or an empty array: one test says which */
static json_t *
t_cases(tap_t *t, const json_t *vec, const char *section)
{
    json_t  *cases;

    cases = json_object_get(json_object_get(vec, section), "cases");

    tap_ok(t, json_array_size(cases) > 0, "vectors: %s has cases", section);

    return cases;
}


static int
t_key_from_vectors(const json_t *vec, mx_signing_key_t *key)
{
    size_t         n;
    json_t        *sk;
    mx_err_t       err;
    const char    *seed_b64, *key_id;
    unsigned char  seed[64];

    sk = json_object_get(vec, "signing_key");
    seed_b64 = json_string_value(json_object_get(sk, "seed_base64"));
    key_id = json_string_value(json_object_get(sk, "key_id"));

    if (seed_b64 == NULL || key_id == NULL || strlen(seed_b64) > 84
        || strncmp(key_id, "ed25519:", 8) != 0
        || mx_base64_decode(seed, &n, seed_b64, strlen(seed_b64)) != MX_OK
        || n != MX_ED25519_SEED_LEN)
    {
        return MX_ERROR;
    }

    return mx_signing_key_from_seed(key, key_id + 8, strlen(key_id + 8), seed,
                                    &err);
}


static int
t_refused(tap_t *t, const char *name, const char *header, size_t len,
    const char *reason)
{
    int                 rc;
    mx_err_t            err;
    mx_xmatrix_auth_t   auth;

    err.msg[0] = '\0';
    rc = mx_xmatrix_parse(header, len, &auth, &err);

    if (!tap_ok(t, rc == MX_ERROR && strstr(err.msg, reason) != NULL,
                "refused: %s", name))
    {
        tap_diag("want \"%s\", got %s", reason,
                 rc == MX_OK ? "accepted" : err.msg);
        return 0;
    }

    return 1;
}


static int
t_accepts(tap_t *t, const char *name, const char *header, const char *origin,
    const char *key_id, const char *destination)
{
    int                 ok;
    mx_err_t            err;
    mx_xmatrix_auth_t   auth;

    if (mx_xmatrix_parse(header, strlen(header), &auth, &err) != MX_OK) {
        tap_ok(t, 0, "accepted: %s", name);
        tap_diag("%s", err.msg);
        return 0;
    }

    ok = t_str_eq(auth.origin, origin) && t_str_eq(auth.key_id, key_id)
         && (destination ? auth.has_destination
                           && t_str_eq(auth.destination, destination)
                         : !auth.has_destination && auth.destination[0] == 0);

    if (!tap_ok(t, ok, "accepted: %s", name)) {
        tap_diag("got (%s, %s, %s)", auth.origin, auth.key_id,
                 auth.has_destination ? auth.destination : "no destination");
    }

    return ok;
}


static void
t_request(mx_xmatrix_request_t *req, const char *method, const char *uri,
    const char *origin, const char *destination, const json_t *content)
{
    req->method = method ? method : "";
    req->method_len = strlen(req->method);
    req->uri = uri ? uri : "";
    req->uri_len = strlen(req->uri);
    req->origin = origin ? origin : "";
    req->origin_len = strlen(req->origin);
    req->destination = destination ? destination : "";
    req->destination_len = strlen(req->destination);
    req->content = content;
}


/* signs signed_req with key, then parses and verifies as received */
static int
t_verify(const mx_xmatrix_request_t *signed_req,
    const mx_xmatrix_request_t *received, const mx_signing_key_t *key,
    const unsigned char *pk, mx_err_t *err)
{
    int                 rc;
    mx_buf_t            h;
    mx_xmatrix_auth_t   auth;

    mx_buf_init(&h);

    rc = mx_xmatrix_sign(signed_req, key, &h, err);

    if (rc == MX_OK) {
        rc = mx_xmatrix_parse((char *) h.data, h.len, &auth, err);
    }

    if (rc == MX_OK) {
        rc = mx_xmatrix_verify(&auth, received, pk, NULL, err);
    }

    mx_buf_free(&h);

    return rc;
}


/* what an accepted header must be, whatever it looked like */
static int
t_header_sane(const unsigned char *h, size_t len,
    const mx_xmatrix_auth_t *auth)
{
    size_t         i, n;
    const char    *why;
    unsigned char  sig[96];

    for (i = 0; i < len; i++) {
        if ((h[i] < 0x20 && h[i] != '\t') || h[i] == 0x7f) {
            return 0;
        }
    }

    if (mx_server_name_valid(auth->origin, strlen(auth->origin), &why)
        != MX_OK
        || (auth->has_destination
            && mx_server_name_valid(auth->destination,
                                    strlen(auth->destination), &why)
               != MX_OK)
        || strncmp(auth->key_id, "ed25519:", 8) != 0
        || strlen(auth->key_id) < 9
        || strspn(auth->key_id + 8, "abcdefghijklmnopqrstuvwxyz"
                  "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
           != strlen(auth->key_id + 8))
    {
        return 0;
    }

    return mx_base64_decode(sig, &n, auth->sig_b64, strlen(auth->sig_b64))
           == MX_OK
           && n == MX_ED25519_SIG_LEN
           && memcmp(sig, auth->sig, n) == 0;
}


/* xorshift64*: reproducible from the seed, no libc state */
static uint64_t
t_rand(uint64_t *state)
{
    uint64_t  x;

    x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;

    return x * 0x2545f4914f6cdd1dULL;
}


static size_t
t_mutate(uint64_t *rs, unsigned char *dst, size_t cap, const char *src)
{
    size_t          n, edits, e, at, k, from, span;
    unsigned char   c, copy[40];

    static const char  special[] = "\"\\,= \t:[]\x00\r\n\x7f\xff\xc3/+";

    n = strlen(src);
    memcpy(dst, src, n);

    edits = 1 + t_rand(rs) % 4;

    for (e = 0; e < edits; e++) {
        at = n ? t_rand(rs) % n : 0;
        c = (t_rand(rs) % 3 == 0)
            ? (unsigned char) t_rand(rs)
            : (unsigned char) special[t_rand(rs) % (sizeof(special) - 1)];

        switch (t_rand(rs) % 7) {

        case 0:                         /* replace */
            if (n) {
                dst[at] = c;
            }
            break;

        case 1:                         /* insert */
        case 2:
            if (n < cap) {
                memmove(dst + at + 1, dst + at, n - at);
                dst[at] = c;
                n++;
            }
            break;

        case 3:                         /* delete */
            if (n) {
                memmove(dst + at, dst + at + 1, n - at - 1);
                n--;
            }
            break;

        case 4:                         /* cut */
            n = at;
            break;

        case 5:                         /* duplicate a stretch */
            from = n ? t_rand(rs) % n : 0;
            span = 1 + t_rand(rs) % sizeof(copy);
            span = from + span > n ? n - from : span;

            if (n + span <= cap) {
                memcpy(copy, dst + from, span);
                memmove(dst + at + span, dst + at, n - at);
                memcpy(dst + at, copy, span);
                n += span;
            }
            break;

        default:                        /* toggle case */
            for (k = at; k < n && k < at + 8; k++) {
                if ((dst[k] | 0x20) >= 'a' && (dst[k] | 0x20) <= 'z') {
                    dst[k] ^= 0x20;
                }
            }
            break;
        }
    }

    return n;
}


static mx_netaddr_t
t_addr(const char *text)
{
    mx_err_t      err;
    mx_netaddr_t  a;

    if (mx_netaddr_parse(text, strlen(text), &a, &err) != MX_OK) {
        tap_diag("test bug: %s: %s", text, err.msg);
    }

    return a;
}


static int
t_str_eq(const char *got, const char *want)
{
    return want != NULL && strcmp(got, want) == 0;
}


/* the cache remembers successes only, and only for the same triple */

static void
t_sigcache(tap_t *t, const mx_signing_key_t *key)
{
    json_t                *body;
    mx_buf_t               out;
    mx_err_t               err;
    unsigned long          misses;
    mx_sigcache_t          cache;
    mx_signing_key_t       key2;
    mx_xmatrix_auth_t      auth, bad;
    mx_sigcache_entry_t    entries[4], three[3];
    mx_xmatrix_request_t   req, rcv;
    unsigned char          seed[MX_ED25519_SEED_LEN];

    tap_ok(t, mx_sigcache_init(&cache, three, 3, &err) != MX_OK,
           "a cache of 3 entries is refused (not a power of two)");

    tap_ok(t, mx_sigcache_init(&cache, entries, 4, &err) == MX_OK,
           "a cache of 4 entries");

    body = json_pack("{s:i}", "a", 1);
    t_request(&req, "PUT", T_URI, "a.org", "b.org:8448", body);

    mx_buf_init(&out);

    if (mx_xmatrix_sign(&req, key, &out, &err) != MX_OK
        || mx_xmatrix_parse((char *) out.data, out.len, &auth, &err) != MX_OK)
    {
        memset(&auth, 0, sizeof(auth));
    }

    tap_ok(t, mx_xmatrix_verify(&auth, &req, key->public_key, &cache, &err)
              == MX_OK
              && cache.misses == 1 && cache.hits == 0,
           "first verification: checked");

    tap_ok(t, mx_xmatrix_verify(&auth, &req, key->public_key, &cache, &err)
              == MX_OK
              && cache.misses == 1 && cache.hits == 1,
           "the same request again: remembered");

    memset(seed, 9, sizeof(seed));
    mx_signing_key_from_seed(&key2, "other", 5, seed, &err);

    tap_ok(t, mx_xmatrix_verify(&auth, &req, key2.public_key, &cache, &err)
              != MX_OK,
           "the same request and signature with another key: refused");

    rcv = req;
    rcv.uri = T_URI_CUT;
    rcv.uri_len = strlen(T_URI_CUT);

    tap_ok(t, mx_xmatrix_verify(&auth, &rcv, key->public_key, &cache, &err)
              != MX_OK,
           "the same signature over another request: refused");

    bad = auth;
    bad.sig[10] ^= 4;
    misses = cache.misses;

    tap_ok(t, mx_xmatrix_verify(&bad, &req, key->public_key, &cache, &err)
              != MX_OK
              && mx_xmatrix_verify(&bad, &req, key->public_key, &cache, &err)
                 != MX_OK
              && cache.misses == misses + 2,
           "a bad signature is checked every time, never remembered");

    tap_ok(t, mx_xmatrix_verify(&auth, &req, key->public_key, &cache, &err)
              == MX_OK,
           "and the good one still passes");

    mx_buf_free(&out);
    json_decref(body);
}
