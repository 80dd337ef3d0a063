/*
 * Another server's key document (GET /_matrix/key/v2/server, or one
 * relayed by a notary): checked before any of its keys is believed.
 */

#ifndef MX_KEY_DOC_H
#define MX_KEY_DOC_H

#include "mx_core.h"


#define MX_KEY_DOC_MAX_KEYS  16


typedef struct {
    char            key_id[73];       /* "ed25519:..." */
    unsigned char   public_key[32];
    int64_t         valid_until_ts;   /* verify_keys: the document's */
    int64_t         expired_ts;       /* old_verify_keys: when retired;
                                         0 for current keys */
} mx_remote_key_t;


typedef struct {
    mx_remote_key_t  keys[MX_KEY_DOC_MAX_KEYS];
    size_t           nkeys;
    int64_t          valid_until_ts;
} mx_key_doc_t;


/*
 * Checks doc as the key document of server_name: its "server_name" is
 * that name, "valid_until_ts" is an integer, every verify key is an
 * ed25519 key of 32 bytes and has signed the document, and old keys are
 * well-formed.  The keys go to out (old keys with their expired_ts).
 * A document past its validity is not refused here: the caller knows
 * when a key must have been valid.  MX_OK, or MX_ERROR with err set.
 */
int mx_key_doc_check(const json_t *doc, const char *server_name,
    mx_key_doc_t *out, mx_err_t *err);

/* the key with that ID, NULL if none */
const mx_remote_key_t *mx_key_doc_find(const mx_key_doc_t *doc,
    const char *key_id);


#endif /* MX_KEY_DOC_H */
