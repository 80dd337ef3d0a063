/*
 * Signing JSON (appendices: Signing JSON): an ed25519 signature over the
 * canonical JSON of the object without "signatures" and "unsigned",
 * stored as signatures[server][key_id] in unpadded base64.
 */

#include <string.h>
#include <sodium.h>

#include "mx_core.h"


/* 64 bytes: 86 characters unpadded, 88 padded */
#define MX_SIG_B64_LEN   86
#define MX_SIG_B64_MAX   88


static int mx_sign_sub_object(json_t *parent, const char *name,
    json_t **sub, mx_err_t *err);


int
mx_json_signing_bytes(const json_t *obj, mx_buf_t *out, mx_err_t *err)
{
    int      rc;
    json_t  *copy;

    if (!json_is_object(obj)) {
        mx_err_set(err, "only a JSON object can be signed");
        return MX_ERROR;
    }

    /*
     * A shallow copy shares the members, it only takes references on
     * them; obj itself stays as it was, so callers may keep the const.
     */
    copy = json_copy((json_t *) obj);
    if (copy == NULL) {
        mx_err_set(err, "out of memory");
        return MX_ERROR;
    }

    json_object_del(copy, "signatures");
    json_object_del(copy, "unsigned");

    rc = mx_json_canonical(copy, out, err);

    json_decref(copy);

    return rc;
}


int
mx_json_sign(json_t *obj, const char *server, const mx_signing_key_t *key,
    mx_err_t *err)
{
    return mx_json_sign_into(obj, obj, server, key, err);
}


int
mx_json_signatures_check(const json_t *obj, const char *server,
    mx_err_t *err)
{
    json_t  *sigs, *by_server;

    if (!json_is_object(obj)) {
        mx_err_set(err, "only a JSON object can be signed");
        return MX_ERROR;
    }

    sigs = json_object_get(obj, "signatures");
    if (sigs != NULL && !json_is_object(sigs)) {
        mx_err_set(err, "\"signatures\" is not an object");
        return MX_ERROR;
    }

    by_server = sigs ? json_object_get(sigs, server) : NULL;
    if (by_server != NULL && !json_is_object(by_server)) {
        mx_err_set(err, "\"signatures\".\"%s\" is not an object", server);
        return MX_ERROR;
    }

    return MX_OK;
}


int
mx_json_sign_into(json_t *target, const json_t *what, const char *server,
    const mx_signing_key_t *key, mx_err_t *err)
{
    int            rc;
    char           b64[MX_SIG_B64_LEN + 1];
    size_t         n;
    json_t        *sigs, *by_server, *value;
    mx_buf_t       buf;
    unsigned char  sig[MX_ED25519_SIG_LEN];

    /* refuse a malformed "signatures" before anything is changed */

    if (mx_json_signatures_check(target, server, err) != MX_OK) {
        return MX_ERROR;
    }

    if (sodium_init() < 0) {
        mx_err_set(err, "libsodium initialisation failed");
        return MX_ERROR;
    }

    mx_buf_init(&buf);

    if (mx_json_signing_bytes(what, &buf, err) != MX_OK) {
        mx_buf_free(&buf);
        return MX_ERROR;
    }

    rc = crypto_sign_detached(sig, NULL, buf.data, buf.len, key->secret_key);

    mx_buf_free(&buf);

    if (rc != 0) {
        mx_err_set(err, "ed25519 signing failed");
        return MX_ERROR;
    }

    n = mx_base64_encode(b64, sig, sizeof(sig), MX_BASE64_STD);
    b64[n] = '\0';

    if (mx_sign_sub_object(target, "signatures", &sigs, err) != MX_OK
        || mx_sign_sub_object(sigs, server, &by_server, err) != MX_OK)
    {
        return MX_ERROR;
    }

    value = json_stringn(b64, n);

    if (value == NULL
        || json_object_set_new(by_server, key->key_id, value) != 0)
    {
        mx_err_set(err, "out of memory");
        return MX_ERROR;
    }

    return MX_OK;
}


int
mx_json_verify(const json_t *obj, const char *server, const char *key_id,
    const unsigned char *public_key, mx_err_t *err)
{
    int            rc;
    size_t         len, sig_len;
    json_t        *sigs, *by_server, *value;
    mx_buf_t       buf;
    const char    *b64;
    unsigned char  sig[MX_SIG_B64_MAX * 3 / 4 + 1];

    if (!json_is_object(obj)) {
        mx_err_set(err, "only a JSON object can carry signatures");
        return MX_ERROR;
    }

    sigs = json_object_get(obj, "signatures");
    if (sigs != NULL && !json_is_object(sigs)) {
        mx_err_set(err, "\"signatures\" is not an object");
        return MX_ERROR;
    }

    by_server = sigs ? json_object_get(sigs, server) : NULL;
    if (by_server != NULL && !json_is_object(by_server)) {
        mx_err_set(err, "\"signatures\".\"%s\" is not an object", server);
        return MX_ERROR;
    }

    value = by_server ? json_object_get(by_server, key_id) : NULL;
    if (value == NULL) {
        mx_err_set(err, "no signature by %s with %s", server, key_id);
        return MX_ERROR;
    }

    if (!json_is_string(value)) {
        mx_err_set(err, "signature by %s with %s is not a string",
                   server, key_id);
        return MX_ERROR;
    }

    b64 = json_string_value(value);
    len = json_string_length(value);

    if (len > MX_SIG_B64_MAX
        || mx_base64_decode(sig, &sig_len, b64, len) != MX_OK)
    {
        mx_err_set(err, "signature by %s with %s is not valid base64",
                   server, key_id);
        return MX_ERROR;
    }

    if (sig_len != MX_ED25519_SIG_LEN) {
        mx_err_set(err, "signature by %s with %s is %zu bytes, not %d",
                   server, key_id, sig_len, MX_ED25519_SIG_LEN);
        return MX_ERROR;
    }

    if (sodium_init() < 0) {
        mx_err_set(err, "libsodium initialisation failed");
        return MX_ERROR;
    }

    mx_buf_init(&buf);

    if (mx_json_signing_bytes(obj, &buf, err) != MX_OK) {
        mx_buf_free(&buf);
        return MX_ERROR;
    }

    rc = crypto_sign_verify_detached(sig, buf.data, buf.len, public_key);

    mx_buf_free(&buf);

    if (rc != 0) {
        mx_err_set(err, "signature by %s with %s does not verify",
                   server, key_id);
        return MX_ERROR;
    }

    return MX_OK;
}


/* parent[name] as an object, created empty if missing */
static int
mx_sign_sub_object(json_t *parent, const char *name, json_t **sub,
    mx_err_t *err)
{
    json_t  *o;

    o = json_object_get(parent, name);

    if (o == NULL) {
        o = json_object();

        /* json_object_set_new() also refuses a name that is not UTF-8 */
        if (o == NULL || json_object_set_new(parent, name, o) != 0) {
            mx_err_set(err, "cannot add \"%s\" to the signatures", name);
            return MX_ERROR;
        }
    }

    *sub = o;

    return MX_OK;
}
