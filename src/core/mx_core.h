/*
 * ngx_http_matrix_module core: Matrix primitives in plain C.
 *
 * No nginx headers here.  Every function works over explicit buffers,
 * keeps no global state and reports failure through its return value
 * and, where it helps an operator, a message in an mx_err_t.
 */

#ifndef MX_CORE_H
#define MX_CORE_H

#include <stddef.h>
#include <stdint.h>
#include <jansson.h>


#define MX_OK             0
#define MX_ERROR         -1

#define MX_ERR_LEN        256

typedef struct {
    char            msg[MX_ERR_LEN];
} mx_err_t;

void mx_err_set(mx_err_t *err, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;


/* growable byte buffer (malloc-backed) */

typedef struct {
    unsigned char  *data;
    size_t          len;
    size_t          cap;
} mx_buf_t;

void mx_buf_init(mx_buf_t *b);
void mx_buf_free(mx_buf_t *b);
void mx_buf_reset(mx_buf_t *b);
int mx_buf_reserve(mx_buf_t *b, size_t more);
int mx_buf_append(mx_buf_t *b, const void *p, size_t n);
int mx_buf_append_str(mx_buf_t *b, const char *s);


/* unpadded base64 (appendices: Unpadded Base64) */

#define MX_BASE64_STD      0
#define MX_BASE64_URLSAFE  1

/* length of the unpadded encoding of n bytes */
size_t mx_base64_encoded_len(size_t n);

/* writes mx_base64_encoded_len(n) bytes, no NUL; returns that length */
size_t mx_base64_encode(char *dst, const unsigned char *src, size_t n,
    int alphabet);

/*
 * Decodes padded or unpadded input of either alphabet.  dst must hold
 * n * 3 / 4 + 1 bytes.  Returns MX_ERROR on a character outside the
 * alphabet, misplaced padding or an impossible length.
 */
int mx_base64_decode(unsigned char *dst, size_t *dst_len, const char *src,
    size_t n);


/* JSON (appendices: Canonical JSON) */

#define MX_JSON_MAX_SAFE_INT   9007199254740991LL   /* 2^53 - 1 */

/*
 * MX_JSON_STRICT: the value must already be representable in canonical
 * JSON without conversion: no reals (fractional, exponent or not), no
 * integers outside [-(2^53)+1, 2^53-1].  Room versions 6+ require it of
 * PDUs; the key and signing APIs use it for everything we accept.
 */
#define MX_JSON_STRICT         0x01

/*
 * Parses one JSON text.  Duplicate keys, NUL-free-ness and trailing
 * garbage are all refused; "\u0000" inside strings is allowed.  With
 * MX_JSON_STRICT, also refuses what mx_json_check_strict() refuses.
 * Returns a new reference or NULL with err set.
 */
json_t *mx_json_parse(const char *text, size_t len, int flags,
    mx_err_t *err);

/* MX_OK if v holds no real and no integer outside the safe range */
int mx_json_check_strict(const json_t *v, mx_err_t *err);

/*
 * Appends the canonical encoding of v to out: object keys sorted by
 * code point, no insignificant whitespace, UTF-8 as is, only \" \\ \b
 * \f \n \r \t and lowercase \u00XX escapes.  A real is written as an
 * integer if it has an integral value in the safe range (the spec's own
 * example turns 1e10 into 10000000000); any other real or out-of-range
 * integer is an error.
 */
int mx_json_canonical(const json_t *v, mx_buf_t *out, mx_err_t *err);


/* ed25519 signing keys (Synapse key file format) */

#define MX_KEY_VERSION_LEN   64     /* "ed25519:" + version fits in 72 */
#define MX_KEY_ID_LEN        (8 + MX_KEY_VERSION_LEN)
#define MX_ED25519_SEED_LEN  32
#define MX_ED25519_PK_LEN    32
#define MX_ED25519_SK_LEN    64
#define MX_ED25519_SIG_LEN   64

typedef struct {
    char            key_id[MX_KEY_ID_LEN + 1];    /* "ed25519:<version>" */
    unsigned char   public_key[MX_ED25519_PK_LEN];
    unsigned char   secret_key[MX_ED25519_SK_LEN];
} mx_signing_key_t;

/*
 * Derives the key pair from a 32-byte seed; version must match
 * [a-zA-Z0-9_] and be at most MX_KEY_VERSION_LEN bytes.
 */
int mx_signing_key_from_seed(mx_signing_key_t *key, const char *version,
    size_t version_len, const unsigned char *seed, mx_err_t *err);

/*
 * Parses a key file: one "ed25519 <version> <base64 seed>" per line,
 * blank lines ignored.  Fills at most max keys; *n gets the count.
 * A file with no key is an error.  Messages name the line.
 */
int mx_signing_keys_parse(const char *text, size_t len,
    mx_signing_key_t *keys, size_t max, size_t *n, mx_err_t *err);

/* writes "ed25519 <version> <seed>\n" for a new random key into out */
int mx_signing_key_generate(const char *version, mx_buf_t *out,
    mx_err_t *err);

/* the public key as unpadded standard base64, NUL-terminated */
void mx_signing_key_public_base64(const mx_signing_key_t *key,
    char out[44]);


/* JSON signing (appendices: Signing JSON) */

/*
 * Adds signatures[server][key->key_id] to obj over the canonical form of
 * obj without "signatures" and "unsigned"; existing signatures by other
 * keys and servers are kept, "unsigned" is kept untouched.
 */
int mx_json_sign(json_t *obj, const char *server,
    const mx_signing_key_t *key, mx_err_t *err);

/*
 * Signs the signing bytes of what (see mx_json_signing_bytes()) and puts
 * the signature in target's signatures[server][key->key_id].  Events are
 * signed this way: what is the redacted event, target the event.
 * mx_json_sign(obj, ...) is mx_json_sign_into(obj, obj, ...).
 */
int mx_json_sign_into(json_t *target, const json_t *what, const char *server,
    const mx_signing_key_t *key, mx_err_t *err);

/*
 * MX_OK if signatures and signatures[server], where present, are objects:
 * a signature can then be added without failing half-way.
 */
int mx_json_signatures_check(const json_t *obj, const char *server,
    mx_err_t *err);

/*
 * Checks signatures[server][key_id] of obj against public_key.  MX_OK
 * only if that signature is present and valid.
 */
int mx_json_verify(const json_t *obj, const char *server,
    const char *key_id, const unsigned char *public_key, mx_err_t *err);

/*
 * The bytes that are signed: canonical JSON of obj without
 * "signatures" and "unsigned".
 */
int mx_json_signing_bytes(const json_t *obj, mx_buf_t *out, mx_err_t *err);


#endif /* MX_CORE_H */
