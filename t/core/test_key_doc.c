/*
 * Key documents of other servers: mx_key_doc_check() accepts a document
 * only when every verify key it publishes has signed it.
 */

#include <string.h>
#include <sodium.h>

#include "tap.h"
#include "mx_core.h"
#include "mx_key_doc.h"


static json_t *
doc_new(const char *server, const mx_signing_key_t *k, int64_t valid)
{
    char    pk[44];
    json_t *doc;

    mx_signing_key_public_base64(k, pk);

    doc = json_pack("{s:s, s:I, s:{s:{s:s}}, s:{}}", "server_name", server,
                    "valid_until_ts", (json_int_t) valid, "verify_keys",
                    k->key_id, "key", pk, "old_verify_keys");
    return doc;
}


static int
check(const json_t *doc, const char *server, mx_key_doc_t *out,
    mx_err_t *err)
{
    return mx_key_doc_check(doc, server, out, err);
}


int
main(void)
{
    tap_t             t = { 0, 0 };
    json_t           *doc;
    mx_err_t          err;
    mx_key_doc_t      kd;
    mx_signing_key_t  a, b;
    unsigned char     seed_a[32], seed_b[32];
    char              pk_b[44];
    const mx_remote_key_t *rk;

    if (sodium_init() < 0) {
        printf("Bail out! sodium_init() failed\n");
        return 1;
    }

    memset(seed_a, 1, sizeof(seed_a));
    memset(seed_b, 2, sizeof(seed_b));
    mx_signing_key_from_seed(&a, "a", 1, seed_a, &err);
    mx_signing_key_from_seed(&b, "b", 1, seed_b, &err);

    /* a good document */
    doc = doc_new("remote.test", &a, 1000);
    mx_json_sign(doc, "remote.test", &a, &err);
    tap_ok(&t, check(doc, "remote.test", &kd, &err) == MX_OK,
           "a self-signed key document is accepted");
    tap_ok(&t, kd.nkeys == 1 && kd.valid_until_ts == 1000,
           "with its key and validity");
    rk = mx_key_doc_find(&kd, "ed25519:a");
    tap_ok(&t, rk && memcmp(rk->public_key, a.public_key, 32) == 0,
           "the key is found by its ID");
    tap_ok(&t, mx_key_doc_find(&kd, "ed25519:x") == NULL,
           "an unknown ID is not");

    tap_ok(&t, check(doc, "other.test", &kd, &err) == MX_ERROR
               && strstr(err.msg, "not for this server"),
           "another server's document is refused: %s", err.msg);

    /* tampered after signing */
    json_object_set_new(doc, "valid_until_ts", json_integer(99999999));
    tap_ok(&t, check(doc, "remote.test", &kd, &err) == MX_ERROR,
           "a document changed after signing is refused: %s", err.msg);
    json_decref(doc);

    /* unsigned */
    doc = doc_new("remote.test", &a, 1000);
    tap_ok(&t, check(doc, "remote.test", &kd, &err) == MX_ERROR,
           "an unsigned document is refused: %s", err.msg);

    /* signed by another key than the one it publishes */
    mx_json_sign(doc, "remote.test", &b, &err);
    tap_ok(&t, check(doc, "remote.test", &kd, &err) == MX_ERROR,
           "a document signed by a key it does not publish is refused");

    /* signed under another server name */
    json_object_del(doc, "signatures");
    mx_json_sign(doc, "evil.test", &a, &err);
    tap_ok(&t, check(doc, "remote.test", &kd, &err) == MX_ERROR,
           "a signature under another server name does not count");
    json_decref(doc);

    /* two keys, one has not signed */
    doc = doc_new("remote.test", &a, 1000);
    mx_signing_key_public_base64(&b, pk_b);
    json_object_set_new(json_object_get(doc, "verify_keys"), b.key_id,
                        json_pack("{s:s}", "key", pk_b));
    mx_json_sign(doc, "remote.test", &a, &err);
    tap_ok(&t, check(doc, "remote.test", &kd, &err) == MX_ERROR,
           "every published key must have signed");
    mx_json_sign(doc, "remote.test", &b, &err);
    tap_ok(&t, check(doc, "remote.test", &kd, &err) == MX_OK && kd.nkeys == 2,
           "and then both are taken");
    json_decref(doc);

    /* old keys */
    doc = doc_new("remote.test", &a, 1000);
    json_object_set_new(json_object_get(doc, "old_verify_keys"), "ed25519:old",
                        json_pack("{s:s, s:I}", "key", pk_b,
                                  "expired_ts", (json_int_t) 500));
    mx_json_sign(doc, "remote.test", &a, &err);
    tap_ok(&t, check(doc, "remote.test", &kd, &err) == MX_OK
               && (rk = mx_key_doc_find(&kd, "ed25519:old")) != NULL
               && rk->expired_ts == 500,
           "an old key comes with its expired_ts, needing no signature");
    json_decref(doc);

    doc = doc_new("remote.test", &a, 1000);
    json_object_set_new(json_object_get(doc, "old_verify_keys"), "ed25519:old",
                        json_pack("{s:s}", "key", pk_b));
    mx_json_sign(doc, "remote.test", &a, &err);
    tap_ok(&t, check(doc, "remote.test", &kd, &err) == MX_ERROR,
           "an old key without expired_ts is refused");
    json_decref(doc);

    /* malformed */
    doc = json_pack("{s:s, s:s, s:{}}", "server_name", "remote.test",
                    "valid_until_ts", "soon", "verify_keys");
    tap_ok(&t, check(doc, "remote.test", &kd, &err) == MX_ERROR,
           "a valid_until_ts that is not a number");
    json_decref(doc);

    doc = json_pack("{s:s, s:I, s:{}}", "server_name", "remote.test",
                    "valid_until_ts", (json_int_t) 5, "verify_keys");
    tap_ok(&t, check(doc, "remote.test", &kd, &err) == MX_ERROR,
           "no verify keys");
    json_decref(doc);

    doc = json_pack("{s:s, s:I, s:{s:{s:s}}}", "server_name", "remote.test",
                    "valid_until_ts", (json_int_t) 5, "verify_keys",
                    "ed25519:a", "key", "short");
    tap_ok(&t, check(doc, "remote.test", &kd, &err) == MX_ERROR
               && strstr(err.msg, "32 bytes"),
           "a key that is not 32 bytes: %s", err.msg);
    json_decref(doc);

    doc = json_pack("{s:s, s:I, s:{s:{s:s}}}", "server_name", "remote.test",
                    "valid_until_ts", (json_int_t) 5, "verify_keys",
                    "rsa:a", "key", pk_b);
    tap_ok(&t, check(doc, "remote.test", &kd, &err) == MX_ERROR,
           "a key that is not ed25519");
    json_decref(doc);

    doc = json_array();
    tap_ok(&t, check(doc, "remote.test", &kd, &err) == MX_ERROR,
           "not an object");
    json_decref(doc);

    printf("1..%u\n", t.n);

    return t.failed ? 1 : 0;
}
