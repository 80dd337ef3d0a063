/*
 * ed25519 signing keys in Synapse's key file format: one
 * "ed25519 <version> <unpadded base64 seed>" per line.
 *
 * Only the 32-byte seed is stored; libsodium derives the key pair.
 * sodium_init() is called by every entry point that needs libsodium:
 * it is idempotent and thread-safe, and saves callers (the nginx module,
 * matrix-tool, tests) from having to remember it.
 */

#include <string.h>
#include <sodium.h>

#include "mx_core.h"


#define MX_KEY_ALGORITHM        "ed25519"
#define MX_KEY_DEFAULT_PREFIX   "a_"
#define MX_KEY_DEFAULT_RANDOM   4

/* 32 bytes are 43 characters unpadded, 44 padded */
#define MX_KEY_SEED_B64_MAX     44

#define MX_KEY_QUOTE_LEN        40


static int mx_key_sodium_init(mx_err_t *err);
static int mx_key_version_check(const char *version, size_t len,
    mx_err_t *err);
static int mx_key_parse_line(const char *line, size_t len, size_t lineno,
    mx_signing_key_t *key, mx_err_t *err);
static void mx_key_quote(char *dst, size_t size, const char *s, size_t len);
static int mx_key_is_space(char c);


int
mx_signing_key_from_seed(mx_signing_key_t *key, const char *version,
    size_t version_len, const unsigned char *seed, mx_err_t *err)
{
    if (mx_key_version_check(version, version_len, err) != MX_OK) {
        return MX_ERROR;
    }

    if (mx_key_sodium_init(err) != MX_OK) {
        return MX_ERROR;
    }

    if (crypto_sign_seed_keypair(key->public_key, key->secret_key, seed)
        != 0)
    {
        mx_err_set(err, "cannot derive an ed25519 key pair from the seed");
        return MX_ERROR;
    }

    memcpy(key->key_id, MX_KEY_ALGORITHM ":", sizeof(MX_KEY_ALGORITHM));
    memcpy(key->key_id + sizeof(MX_KEY_ALGORITHM), version, version_len);
    key->key_id[sizeof(MX_KEY_ALGORITHM) + version_len] = '\0';

    return MX_OK;
}


int
mx_signing_keys_parse(const char *text, size_t len, mx_signing_key_t *keys,
    size_t max, size_t *n, mx_err_t *err)
{
    size_t       lineno, count, i, llen;
    const char  *p, *end, *nl;

    *n = 0;
    count = 0;
    lineno = 0;
    p = text;
    end = text + len;

    while (p < end) {
        lineno++;

        nl = memchr(p, '\n', (size_t) (end - p));
        llen = (nl ? nl : end) - p;

        /* whitespace is trimmed by the field splitter below */
        for (i = 0; i < llen && mx_key_is_space(p[i]); i++) {
            /* void */
        }

        if (i == llen) {
            p += llen + 1;
            continue;
        }

        if (count == max) {
            mx_err_set(err, "line %zu: more than %zu keys", lineno, max);
            goto failed;
        }

        if (mx_key_parse_line(p, llen, lineno, &keys[count], err) != MX_OK) {
            goto failed;
        }

        for (i = 0; i < count; i++) {
            if (strcmp(keys[i].key_id, keys[count].key_id) == 0) {
                mx_err_set(err, "line %zu: duplicate key id \"%s\"",
                           lineno, keys[count].key_id);
                count++;
                goto failed;
            }
        }

        count++;
        p += llen + 1;
    }

    if (count == 0) {
        mx_err_set(err, "no signing key found (expected lines "
                   "\"ed25519 <version> <base64 seed>\")");
        return MX_ERROR;
    }

    *n = count;

    return MX_OK;

failed:

    /* nothing secret survives a failed parse */
    sodium_memzero(keys, (count < max ? count + 1 : max)
                         * sizeof(mx_signing_key_t));

    return MX_ERROR;
}


int
mx_signing_key_generate(const char *version, mx_buf_t *out, mx_err_t *err)
{
    int            rc;
    char           b64[MX_KEY_SEED_B64_MAX];
    char           def[sizeof(MX_KEY_DEFAULT_PREFIX) + MX_KEY_DEFAULT_RANDOM];
    size_t         i, vlen, blen;
    unsigned char  seed[MX_ED25519_SEED_LEN];

    static const char  alnum[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

    if (mx_key_sodium_init(err) != MX_OK) {
        return MX_ERROR;
    }

    /* no version: Synapse's style, "a_" and four random characters */
    if (version == NULL) {
        memcpy(def, MX_KEY_DEFAULT_PREFIX, sizeof(MX_KEY_DEFAULT_PREFIX) - 1);

        for (i = 0; i < MX_KEY_DEFAULT_RANDOM; i++) {
            def[sizeof(MX_KEY_DEFAULT_PREFIX) - 1 + i] =
                alnum[randombytes_uniform(sizeof(alnum) - 1)];
        }

        def[sizeof(def) - 1] = '\0';
        version = def;
    }

    vlen = strlen(version);

    if (mx_key_version_check(version, vlen, err) != MX_OK) {
        return MX_ERROR;
    }

    /*
     * Reserve the whole line first: a realloc() after the seed is in
     * the buffer would leave a copy of it in freed memory.
     */
    if (mx_buf_reserve(out, sizeof(MX_KEY_ALGORITHM) + vlen + 1
                            + MX_KEY_SEED_B64_MAX + 1)
        != MX_OK)
    {
        mx_err_set(err, "out of memory");
        return MX_ERROR;
    }

    randombytes_buf(seed, sizeof(seed));
    blen = mx_base64_encode(b64, seed, sizeof(seed), MX_BASE64_STD);

    rc = MX_OK;

    if (mx_buf_append(out, MX_KEY_ALGORITHM " ", sizeof(MX_KEY_ALGORITHM))
        != MX_OK
        || mx_buf_append(out, version, vlen) != MX_OK
        || mx_buf_append(out, " ", 1) != MX_OK
        || mx_buf_append(out, b64, blen) != MX_OK
        || mx_buf_append(out, "\n", 1) != MX_OK)
    {
        mx_err_set(err, "out of memory");
        rc = MX_ERROR;
    }

    sodium_memzero(seed, sizeof(seed));
    sodium_memzero(b64, sizeof(b64));

    return rc;
}


void
mx_signing_key_public_base64(const mx_signing_key_t *key, char out[44])
{
    size_t  n;

    n = mx_base64_encode(out, key->public_key, MX_ED25519_PK_LEN,
                         MX_BASE64_STD);
    out[n] = '\0';
}


static int
mx_key_sodium_init(mx_err_t *err)
{
    /* 1 means "already initialised", which is fine */
    if (sodium_init() < 0) {
        mx_err_set(err, "libsodium initialisation failed");
        return MX_ERROR;
    }

    return MX_OK;
}


/*
 * Versions end up in key ids, JSON keys and URLs
 * (/_matrix/key/v2/server/ed25519:<version>), hence the short alphabet.
 */
static int
mx_key_version_check(const char *version, size_t len, mx_err_t *err)
{
    size_t  i;
    char    c, q[MX_KEY_QUOTE_LEN];

    if (len == 0 || len > MX_KEY_VERSION_LEN) {
        mx_err_set(err, "key version must be 1 to %d characters long, "
                   "not %zu", MX_KEY_VERSION_LEN, len);
        return MX_ERROR;
    }

    for (i = 0; i < len; i++) {
        c = version[i];

        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
              || (c >= '0' && c <= '9') || c == '_'))
        {
            mx_key_quote(q, sizeof(q), version, len);
            mx_err_set(err, "key version \"%s\" has characters other than "
                       "[A-Za-z0-9_]", q);
            return MX_ERROR;
        }
    }

    return MX_OK;
}


static int
mx_key_parse_line(const char *line, size_t len, size_t lineno,
    mx_signing_key_t *key, mx_err_t *err)
{
    int            rc;
    char           q[MX_KEY_QUOTE_LEN];
    size_t         i, nf, start, flen[3], seed_len;
    mx_err_t       e;
    const char    *f[3];
    unsigned char  seed[MX_KEY_SEED_B64_MAX * 3 / 4 + 1];

    nf = 0;
    i = 0;

    for ( ;; ) {
        while (i < len && mx_key_is_space(line[i])) {
            i++;
        }

        if (i == len) {
            break;
        }

        start = i;

        while (i < len && !mx_key_is_space(line[i])) {
            i++;
        }

        if (nf == 3) {
            mx_key_quote(q, sizeof(q), line + start, i - start);
            mx_err_set(err, "line %zu: unexpected \"%s\" after the seed",
                       lineno, q);
            return MX_ERROR;
        }

        f[nf] = line + start;
        flen[nf] = i - start;
        nf++;
    }

    if (nf == 0) {
        mx_err_set(err, "line %zu: empty", lineno);
        return MX_ERROR;
    }

    if (flen[0] != sizeof(MX_KEY_ALGORITHM) - 1
        || memcmp(f[0], MX_KEY_ALGORITHM, flen[0]) != 0)
    {
        mx_key_quote(q, sizeof(q), f[0], flen[0]);
        mx_err_set(err, "line %zu: unknown algorithm \"%s\", only "
                   "\"" MX_KEY_ALGORITHM "\" is supported", lineno, q);
        return MX_ERROR;
    }

    if (nf != 3) {
        mx_err_set(err, "line %zu: expected \"" MX_KEY_ALGORITHM
                   " <version> <base64 seed>\"", lineno);
        return MX_ERROR;
    }

    if (mx_key_version_check(f[1], flen[1], &e) != MX_OK) {
        mx_err_set(err, "line %zu: %s", lineno, e.msg);
        return MX_ERROR;
    }

    /* the seed is secret: never quoted in a message */

    if (flen[2] > MX_KEY_SEED_B64_MAX) {
        mx_err_set(err, "line %zu: seed is not 32 bytes "
                   "(%zu base64 characters)", lineno, flen[2]);
        return MX_ERROR;
    }

    if (mx_base64_decode(seed, &seed_len, f[2], flen[2]) != MX_OK) {
        mx_err_set(err, "line %zu: seed is not valid base64", lineno);
        sodium_memzero(seed, sizeof(seed));
        return MX_ERROR;
    }

    if (seed_len != MX_ED25519_SEED_LEN) {
        mx_err_set(err, "line %zu: seed is not 32 bytes (%zu)",
                   lineno, seed_len);
        sodium_memzero(seed, sizeof(seed));
        return MX_ERROR;
    }

    rc = mx_signing_key_from_seed(key, f[1], flen[1], seed, &e);

    sodium_memzero(seed, sizeof(seed));

    if (rc != MX_OK) {
        mx_err_set(err, "line %zu: %s", lineno, e.msg);
        return MX_ERROR;
    }

    return MX_OK;
}


/* a bounded, printable rendering of untrusted text for messages */
static void
mx_key_quote(char *dst, size_t size, const char *s, size_t len)
{
    size_t         i, j;
    unsigned char  c;

    static const char  hex[] = "0123456789abcdef";

    j = 0;

    for (i = 0; i < len; i++) {
        c = (unsigned char) s[i];

        if (j + 8 >= size) {
            memcpy(dst + j, "...", 3);
            j += 3;
            break;
        }

        if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\') {
            dst[j++] = (char) c;

        } else {
            dst[j++] = '\\';
            dst[j++] = 'x';
            dst[j++] = hex[c >> 4];
            dst[j++] = hex[c & 0x0f];
        }
    }

    dst[j] = '\0';
}


static int
mx_key_is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f';
}
