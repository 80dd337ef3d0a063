/*
 * Key documents of other servers ("Retrieving server keys" in the
 * server-server API): a document is only as good as the signatures of
 * the keys it publishes.
 */

#include <string.h>

#include "mx_key_doc.h"


static int mx_key_doc_key(const char *key_id, const json_t *entry,
    mx_remote_key_t *key, mx_err_t *err);


int
mx_key_doc_check(const json_t *doc, const char *server_name,
    mx_key_doc_t *out, mx_err_t *err)
{
    const char     *key_id, *name;
    json_t         *verify_keys, *old_keys, *entry, *ts;
    mx_remote_key_t *key;

    memset(out, 0, sizeof(mx_key_doc_t));

    if (!json_is_object(doc)) {
        mx_err_set(err, "not a JSON object");
        return MX_ERROR;
    }

    name = json_string_value(json_object_get(doc, "server_name"));

    if (name == NULL || strcmp(name, server_name) != 0) {
        mx_err_set(err, "the document is not for this server (server_name "
                   "%s)", name ? "differs" : "missing");
        return MX_ERROR;
    }

    ts = json_object_get(doc, "valid_until_ts");

    if (!json_is_integer(ts) || json_integer_value(ts) < 0
        || json_integer_value(ts) > MX_JSON_MAX_SAFE_INT)
    {
        mx_err_set(err, "valid_until_ts is not a timestamp");
        return MX_ERROR;
    }

    out->valid_until_ts = json_integer_value(ts);

    verify_keys = json_object_get(doc, "verify_keys");

    if (!json_is_object(verify_keys) || json_object_size(verify_keys) == 0) {
        mx_err_set(err, "no verify_keys");
        return MX_ERROR;
    }

    json_object_foreach(verify_keys, key_id, entry) {

        if (out->nkeys == MX_KEY_DOC_MAX_KEYS) {
            mx_err_set(err, "more than %d keys", MX_KEY_DOC_MAX_KEYS);
            return MX_ERROR;
        }

        key = &out->keys[out->nkeys];

        if (mx_key_doc_key(key_id, entry, key, err) != MX_OK) {
            return MX_ERROR;
        }

        /* a key vouches for the document, or the document is not theirs */

        if (mx_json_verify(doc, server_name, key_id, key->public_key, err)
            != MX_OK)
        {
            return MX_ERROR;
        }

        key->valid_until_ts = out->valid_until_ts;
        out->nkeys++;
    }

    old_keys = json_object_get(doc, "old_verify_keys");

    if (old_keys == NULL) {
        return MX_OK;
    }

    if (!json_is_object(old_keys)) {
        mx_err_set(err, "old_verify_keys is not an object");
        return MX_ERROR;
    }

    json_object_foreach(old_keys, key_id, entry) {

        if (out->nkeys == MX_KEY_DOC_MAX_KEYS) {
            mx_err_set(err, "more than %d keys", MX_KEY_DOC_MAX_KEYS);
            return MX_ERROR;
        }

        key = &out->keys[out->nkeys];

        if (mx_key_doc_key(key_id, entry, key, err) != MX_OK) {
            return MX_ERROR;
        }

        ts = json_object_get(entry, "expired_ts");

        if (!json_is_integer(ts) || json_integer_value(ts) <= 0
            || json_integer_value(ts) > MX_JSON_MAX_SAFE_INT)
        {
            mx_err_set(err, "old key %.64s has no expired_ts", key_id);
            return MX_ERROR;
        }

        key->expired_ts = json_integer_value(ts);
        out->nkeys++;
    }

    return MX_OK;
}


static int
mx_key_doc_key(const char *key_id, const json_t *entry, mx_remote_key_t *key,
    mx_err_t *err)
{
    size_t          len, n;
    const char     *b64;
    unsigned char   buf[64];

    len = strlen(key_id);

    if (len <= 8 || len >= sizeof(key->key_id)
        || strncmp(key_id, "ed25519:", 8) != 0)
    {
        mx_err_set(err, "key ID %.64s is not an ed25519 key ID", key_id);
        return MX_ERROR;
    }

    memcpy(key->key_id, key_id, len + 1);

    b64 = json_string_value(json_object_get(entry, "key"));

    if (b64 == NULL) {
        mx_err_set(err, "key %.64s has no \"key\"", key_id);
        return MX_ERROR;
    }

    /* 64 characters decode to 48 bytes at most: buf holds them */

    if (strlen(b64) > 64
        || mx_base64_decode(buf, &n, b64, strlen(b64)) != MX_OK
        || n != 32)
    {
        mx_err_set(err, "key %.64s is not 32 bytes of base64", key_id);
        return MX_ERROR;
    }

    memcpy(key->public_key, buf, 32);

    return MX_OK;
}


const mx_remote_key_t *
mx_key_doc_find(const mx_key_doc_t *doc, const char *key_id)
{
    size_t  i;

    for (i = 0; i < doc->nkeys; i++) {
        if (strcmp(doc->keys[i].key_id, key_id) == 0) {
            return &doc->keys[i];
        }
    }

    return NULL;
}
