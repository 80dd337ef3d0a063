/*
 * Hashes and signatures of PDUs (server-server-api.md: Signing Events;
 * appendices.md: Signing JSON, Checking for a Signature).
 *
 * The content hash covers the full event, the signature only the
 * redacted one plus that hash: a receiver can then tell a redacted copy
 * (signature fine, hash wrong) from a forgery (signature wrong).
 */

#include <string.h>
#include <sodium.h>

#include "mx_core.h"
#include "mx_event.h"


#define MX_SHA256_B64_LEN   43      /* 32 bytes, unpadded */
#define MX_SHA256_B64_MAX   44      /* the same, padded */

/* the sender's server and at most one authorising server */
#define MX_EVENT_SIGNERS    2


static const char *mx_event_server_of(const json_t *user_id);
static int mx_event_signers(const json_t *pdu,
    const mx_room_version_t *version, const char **servers, size_t *n,
    mx_err_t *err);
static int mx_event_verify_server(const json_t *redacted, const char *server,
    mx_key_lookup_pt lookup, void *data, int64_t ts, mx_err_t *err);


int
mx_event_content_hash(const json_t *pdu, unsigned char hash[MX_SHA256_LEN],
    mx_err_t *err)
{
    int       rc;
    json_t   *copy;
    mx_buf_t  buf;

    if (!json_is_object(pdu)) {
        mx_err_set(err, "an event must be a JSON object");
        return MX_ERROR;
    }

    /* shallow: the members are shared, only the top level is ours */
    copy = json_copy((json_t *) pdu);
    if (copy == NULL) {
        mx_err_set(err, "out of memory");
        return MX_ERROR;
    }

    json_object_del(copy, "unsigned");
    json_object_del(copy, "signatures");
    json_object_del(copy, "hashes");

    mx_buf_init(&buf);

    rc = mx_json_canonical(copy, &buf, err);

    json_decref(copy);

    if (rc == MX_OK) {
        crypto_hash_sha256(hash, buf.data, buf.len);
    }

    mx_buf_free(&buf);

    return rc;
}


int
mx_event_check_content_hash(const json_t *pdu, mx_err_t *err)
{
    size_t         len, got_len;
    json_t        *hashes, *v;
    const char    *b64;
    unsigned char  got[MX_SHA256_B64_MAX * 3 / 4 + 1];
    unsigned char  want[MX_SHA256_LEN];

    hashes = json_object_get(pdu, "hashes");
    if (!json_is_object(hashes)) {
        mx_err_set(err, "the event has no \"hashes\" object");
        return MX_ERROR;
    }

    v = json_object_get(hashes, "sha256");
    if (!json_is_string(v)) {
        mx_err_set(err, "the event has no \"hashes\".\"sha256\" string");
        return MX_ERROR;
    }

    b64 = json_string_value(v);
    len = json_string_length(v);

    if (len > MX_SHA256_B64_MAX
        || mx_base64_decode(got, &got_len, b64, len) != MX_OK
        || got_len != MX_SHA256_LEN)
    {
        mx_err_set(err, "\"hashes\".\"sha256\" is not 32 bytes of base64");
        return MX_ERROR;
    }

    if (mx_event_content_hash(pdu, want, err) != MX_OK) {
        return MX_ERROR;
    }

    /* neither value is secret: a plain comparison leaks nothing */
    if (memcmp(got, want, MX_SHA256_LEN) != 0) {
        mx_err_set(err, "content hash mismatch");
        return MX_EVENT_HASH_MISMATCH;
    }

    return MX_OK;
}


int
mx_event_sign(json_t *pdu, const mx_room_version_t *version,
    const char *server, const mx_signing_key_t *key, mx_err_t *err)
{
    int            rc;
    char           b64[MX_SHA256_B64_LEN + 1];
    size_t         n;
    json_t        *hashes, *redacted;
    unsigned char  hash[MX_SHA256_LEN];

    if (!json_is_object(pdu)) {
        mx_err_set(err, "an event must be a JSON object");
        return MX_ERROR;
    }

    /* refuse malformed members before the event is changed at all */

    hashes = json_object_get(pdu, "hashes");
    if (hashes != NULL && !json_is_object(hashes)) {
        mx_err_set(err, "\"hashes\" is not an object");
        return MX_ERROR;
    }

    if (mx_json_signatures_check(pdu, server, err) != MX_OK) {
        return MX_ERROR;
    }

    if (mx_event_content_hash(pdu, hash, err) != MX_OK) {
        return MX_ERROR;
    }

    n = mx_base64_encode(b64, hash, MX_SHA256_LEN, MX_BASE64_STD);
    b64[n] = '\0';

    if (hashes == NULL) {
        hashes = json_object();

        if (hashes == NULL || json_object_set_new(pdu, "hashes", hashes) != 0)
        {
            mx_err_set(err, "out of memory");
            return MX_ERROR;
        }
    }

    if (json_object_set_new(hashes, "sha256", json_stringn(b64, n)) != 0) {
        mx_err_set(err, "out of memory");
        return MX_ERROR;
    }

    /* the hash is in place, so the redacted copy carries it: it is signed */

    redacted = mx_event_redact(pdu, version, err);
    if (redacted == NULL) {
        return MX_ERROR;
    }

    rc = mx_json_sign_into(pdu, redacted, server, key, err);

    json_decref(redacted);

    return rc;
}


int
mx_event_verify_signatures(const json_t *pdu,
    const mx_room_version_t *version, mx_key_lookup_pt lookup, void *data,
    mx_err_t *err)
{
    int          rc;
    size_t       i, n;
    json_t      *redacted, *ts;
    const char  *servers[MX_EVENT_SIGNERS];

    if (!json_is_object(pdu)) {
        mx_err_set(err, "an event must be a JSON object");
        return MX_ERROR;
    }

    ts = json_object_get(pdu, "origin_server_ts");
    if (!json_is_integer(ts)) {
        mx_err_set(err, "\"origin_server_ts\" is not an integer");
        return MX_ERROR;
    }

    if (mx_event_signers(pdu, version, servers, &n, err) != MX_OK) {
        return MX_ERROR;
    }

    /*
     * The redacted copy is what was signed; checking it, rather than the
     * event received, lets a legitimately redacted copy pass too.
     */
    redacted = mx_event_redact(pdu, version, err);
    if (redacted == NULL) {
        return MX_ERROR;
    }

    rc = MX_OK;

    for (i = 0; i < n && rc == MX_OK; i++) {
        rc = mx_event_verify_server(redacted, servers[i], lookup, data,
                                    json_integer_value(ts), err);
    }

    json_decref(redacted);

    return rc;
}


/*
 * The servers whose signature the event needs: the sender's, and, for a
 * membership event naming the user who authorised a restricted join, that
 * user's server: without its signature anybody could claim an insider let
 * them in.  Auth rule 4.2.1 (v8+) asks it of every membership carrying
 * the key, not only of joins (Synapse checks joins only), and mx_auth
 * leaves the signature itself to us.
 */
static int
mx_event_signers(const json_t *pdu, const mx_room_version_t *version,
    const char **servers, size_t *n, mx_err_t *err)
{
    json_t      *via;
    const char  *type;

    servers[0] = mx_event_server_of(json_object_get(pdu, "sender"));
    if (servers[0] == NULL) {
        mx_err_set(err, "\"sender\" is not a user ID with a server name");
        return MX_ERROR;
    }

    *n = 1;

    if (!version->restricted_join) {
        return MX_OK;
    }

    type = json_string_value(json_object_get(pdu, "type"));
    via = json_object_get(json_object_get(pdu, "content"),
                          "join_authorised_via_users_server");

    if (type == NULL || strcmp(type, "m.room.member") != 0 || via == NULL) {
        return MX_OK;
    }

    servers[1] = mx_event_server_of(via);
    if (servers[1] == NULL) {
        mx_err_set(err, "\"join_authorised_via_users_server\" is not a user "
                   "ID with a server name");
        return MX_ERROR;
    }

    if (strcmp(servers[0], servers[1]) != 0) {
        *n = 2;
    }

    return MX_OK;
}


/* "@local:server" -> "server"; a localpart never contains ':' */
static const char *
mx_event_server_of(const json_t *user_id)
{
    const char  *s, *colon;

    s = json_string_value(user_id);

    if (s == NULL || s[0] != '@') {
        return NULL;
    }

    colon = strchr(s, ':');

    if (colon == NULL || colon[1] == '\0') {
        return NULL;
    }

    return colon + 1;
}


/*
 * Every ed25519 signature of server by a key the lookup knows must hold,
 * and there must be at least one.  Unknown or expired keys are skipped
 * (the spec lets a server sign with keys others cannot fetch, e.g. a
 * policy server's), other algorithms are not ours to judge.
 */
static int
mx_event_verify_server(const json_t *redacted, const char *server,
    mx_key_lookup_pt lookup, void *data, int64_t ts, mx_err_t *err)
{
    size_t         known;
    json_t        *sigs, *by_server, *v;
    const char    *key_id;
    unsigned char  pk[MX_ED25519_PK_LEN];

    sigs = json_object_get(redacted, "signatures");
    if (sigs != NULL && !json_is_object(sigs)) {
        mx_err_set(err, "\"signatures\" is not an object");
        return MX_ERROR;
    }

    by_server = sigs ? json_object_get(sigs, server) : NULL;
    if (by_server == NULL) {
        mx_err_set(err, "the event is not signed by %s", server);
        return MX_ERROR;
    }

    if (!json_is_object(by_server)) {
        mx_err_set(err, "\"signatures\".\"%s\" is not an object", server);
        return MX_ERROR;
    }

    known = 0;

    json_object_foreach(by_server, key_id, v) {
        if (strncmp(key_id, "ed25519:", 8) != 0 || key_id[8] == '\0') {
            continue;
        }

        if (lookup(data, server, key_id, ts, pk) != MX_OK) {
            continue;
        }

        known++;

        if (mx_json_verify(redacted, server, key_id, pk, err) != MX_OK) {
            return MX_ERROR;
        }
    }

    if (known == 0) {
        mx_err_set(err, "the event has no signature by %s with a known "
                   "ed25519 key", server);
        return MX_ERROR;
    }

    return MX_OK;
}
