/*
 * Signing keys and the key document.
 *
 * Keys are read once, by the master, at configuration time: the key file
 * can then be readable by root only.  The signed key document is built
 * lazily in each worker and kept until half of its validity has passed,
 * so a request costs a copy, not a signature.
 */


#include "ngx_http_matrix_router.h"
#include "ngx_http_matrix_keys.h"


#define NGX_HTTP_MATRIX_KEY_FILE_MAX  65536





static void ngx_http_matrix_keys_cleanup(void *data);
static void ngx_http_matrix_key_doc_cleanup(void *data);
static ngx_int_t ngx_http_matrix_key_id_valid(ngx_str_t *key_id);
static json_t *ngx_http_matrix_key_doc_json(ngx_http_matrix_srv_conf_t *mscf,
    int64_t valid_until_ts);
static ngx_int_t ngx_http_matrix_key_server_handler(ngx_http_request_t *r,
    ngx_http_matrix_ctx_t *ctx);


ngx_http_matrix_route_t  ngx_http_matrix_keys_routes[] = {

    { NGX_HTTP_GET,
      ngx_string("/_matrix/key/v2/server"),
      ngx_http_matrix_key_server_handler,
      0 },

    /* deprecated by the spec, still asked for by older servers */
    { NGX_HTTP_GET,
      ngx_string("/_matrix/key/v2/server/{keyId}"),
      ngx_http_matrix_key_server_handler,
      0 },

      ngx_http_matrix_null_route
};


char *
ngx_http_matrix_signing_key(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_matrix_srv_conf_t *mscf = conf;

    u_char              *text;
    size_t               n, nkeys;
    ssize_t              rd;
    mx_err_t             err;
    ngx_fd_t             fd;
    ngx_str_t           *value, file;
    ngx_file_info_t      fi;
    ngx_pool_cleanup_t  *cln;

    if (mscf->signing_keys != NGX_CONF_UNSET_PTR) {
        return "is duplicate";
    }

    value = cf->args->elts;
    file = value[1];

    if (ngx_conf_full_name(cf->cycle, &file, 1) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    /* non-blocking: a FIFO in place of the key file must not hang nginx */
    fd = ngx_open_file(file.data, NGX_FILE_RDONLY|NGX_FILE_NONBLOCK,
                       NGX_FILE_OPEN, 0);
    if (fd == NGX_INVALID_FILE) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           "matrix_signing_key: cannot open \"%s\"",
                           file.data);
        return NGX_CONF_ERROR;
    }

    text = NULL;

    if (ngx_fd_info(fd, &fi) == NGX_FILE_ERROR) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           "matrix_signing_key: cannot stat \"%s\"",
                           file.data);
        goto failed;
    }

    if (!ngx_is_file(&fi)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "matrix_signing_key: \"%s\" is not a file",
                           file.data);
        goto failed;
    }

    if (ngx_file_size(&fi) > NGX_HTTP_MATRIX_KEY_FILE_MAX) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "matrix_signing_key: \"%s\" is too large "
                           "for a key file", file.data);
        goto failed;
    }

    if (ngx_file_access(&fi) & S_IRWXO) {
        ngx_conf_log_error(NGX_LOG_WARN, cf, 0,
                           "matrix_signing_key: \"%s\" is accessible by "
                           "other users, anyone who reads it can sign as "
                           "this server (chmod o-rwx)", file.data);
    }

    n = (size_t) ngx_file_size(&fi);

    text = ngx_pnalloc(cf->temp_pool, n + 1);
    if (text == NULL) {
        goto failed;
    }

    rd = ngx_read_fd(fd, text, n);

    if (rd == -1) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           "matrix_signing_key: cannot read \"%s\"",
                           file.data);
        goto failed;
    }

    if ((size_t) rd != n) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "matrix_signing_key: \"%s\" changed while "
                           "being read", file.data);
        goto failed;
    }

    ngx_close_file(fd);
    fd = NGX_INVALID_FILE;

    mscf->signing_keys = ngx_array_create(cf->pool, NGX_HTTP_MATRIX_MAX_KEYS,
                                          sizeof(mx_signing_key_t));
    if (mscf->signing_keys == NULL) {
        goto failed;
    }

    cln = ngx_pool_cleanup_add(cf->pool, 0);
    if (cln == NULL) {
        goto failed;
    }

    cln->handler = ngx_http_matrix_keys_cleanup;
    cln->data = mscf->signing_keys;

    if (mx_signing_keys_parse((char *) text, n, mscf->signing_keys->elts,
                              NGX_HTTP_MATRIX_MAX_KEYS, &nkeys, &err)
        != MX_OK)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "matrix_signing_key: \"%s\": %s",
                           file.data, err.msg);
        goto failed;
    }

    mscf->signing_keys->nelts = nkeys;

    ngx_explicit_memzero(text, n);
    mscf->signing_key_file = file;

    return NGX_CONF_OK;

failed:

    if (text) {
        ngx_explicit_memzero(text, n);
    }

    if (fd != NGX_INVALID_FILE) {
        ngx_close_file(fd);
    }

    return NGX_CONF_ERROR;
}


static void
ngx_http_matrix_keys_cleanup(void *data)
{
    ngx_array_t  *keys = data;

    ngx_explicit_memzero(keys->elts, keys->nalloc * keys->size);
}


/* the document a worker signed lives as long as the configuration */

static void
ngx_http_matrix_key_doc_cleanup(void *data)
{
    ngx_http_matrix_srv_conf_t  *mscf = data;

    if (mscf->key_doc) {
        ngx_free(mscf->key_doc);
        mscf->key_doc = NULL;
    }
}


/* matrix_old_verify_key ed25519:ID PUBLIC_KEY EXPIRED_TS; */

char *
ngx_http_matrix_old_verify_key(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_matrix_srv_conf_t *mscf = conf;

    u_char                      raw[64], *p;
    size_t                      len;
    off_t                       ts;
    ngx_uint_t                  i;
    ngx_str_t                  *value;
    ngx_http_matrix_old_key_t  *old;

    value = cf->args->elts;

    if (ngx_http_matrix_key_id_valid(&value[1]) != NGX_OK) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "matrix_old_verify_key: invalid key id \"%V\", "
                           "expected \"ed25519:<version>\" with a version "
                           "of [a-zA-Z0-9_]", &value[1]);
        return NGX_CONF_ERROR;
    }

    if (value[2].len > 44
        || mx_base64_decode(raw, &len, (char *) value[2].data, value[2].len)
           != MX_OK
        || len != MX_ED25519_PK_LEN)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "matrix_old_verify_key: \"%V\" is not a base64 "
                           "ed25519 public key", &value[2]);
        return NGX_CONF_ERROR;
    }

    ts = ngx_atoof(value[3].data, value[3].len);
    if (ts == NGX_ERROR || ts > MX_JSON_MAX_SAFE_INT) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "matrix_old_verify_key: invalid expiry \"%V\", "
                           "expected milliseconds since the epoch",
                           &value[3]);
        return NGX_CONF_ERROR;
    }

    if (mscf->old_keys == NGX_CONF_UNSET_PTR) {
        mscf->old_keys = ngx_array_create(cf->pool, 2,
                                          sizeof(ngx_http_matrix_old_key_t));
        if (mscf->old_keys == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    old = mscf->old_keys->elts;

    for (i = 0; i < mscf->old_keys->nelts; i++) {
        if (old[i].key_id.len == value[1].len
            && ngx_strncmp(old[i].key_id.data, value[1].data, value[1].len)
               == 0)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "matrix_old_verify_key: \"%V\" is given "
                               "twice", &value[1]);
            return NGX_CONF_ERROR;
        }
    }

    old = ngx_array_push(mscf->old_keys);
    if (old == NULL) {
        return NGX_CONF_ERROR;
    }

    p = ngx_pnalloc(cf->pool, mx_base64_encoded_len(MX_ED25519_PK_LEN));
    if (p == NULL) {
        return NGX_CONF_ERROR;
    }

    /* published in the canonical unpadded form whatever was written */
    old->key.len = mx_base64_encode((char *) p, raw, MX_ED25519_PK_LEN,
                                    MX_BASE64_STD);
    old->key.data = p;
    old->key_id = value[1];
    old->expired_ts = ts;

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_matrix_key_id_valid(ngx_str_t *key_id)
{
    u_char  *p, *last;

    if (key_id->len <= sizeof("ed25519:") - 1
        || key_id->len > MX_KEY_ID_LEN
        || ngx_strncmp(key_id->data, "ed25519:", sizeof("ed25519:") - 1)
           != 0)
    {
        return NGX_ERROR;
    }

    last = key_id->data + key_id->len;

    for (p = key_id->data + sizeof("ed25519:") - 1; p < last; p++) {
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z')
              || (*p >= '0' && *p <= '9') || *p == '_'))
        {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


char *
ngx_http_matrix_keys_merge(ngx_conf_t *cf, ngx_http_matrix_srv_conf_t *prev,
    ngx_http_matrix_srv_conf_t *conf)
{
    ngx_uint_t                  i, j;
    mx_signing_key_t           *key;
    ngx_pool_cleanup_t         *cln;
    ngx_http_matrix_old_key_t  *old;

    cln = ngx_pool_cleanup_add(cf->pool, 0);
    if (cln == NULL) {
        return NGX_CONF_ERROR;
    }

    cln->handler = ngx_http_matrix_key_doc_cleanup;
    cln->data = conf;

    if (conf->signing_keys == NGX_CONF_UNSET_PTR) {
        conf->signing_keys = prev->signing_keys;
        conf->signing_key_file = prev->signing_key_file;
    }

    ngx_conf_merge_ptr_value(conf->signing_keys, prev->signing_keys, NULL);
    ngx_conf_merge_ptr_value(conf->old_keys, prev->old_keys, NULL);

    if (conf->signing_keys == NULL || conf->old_keys == NULL) {
        return NGX_CONF_OK;
    }

    /* a key published as current and old would confuse every verifier */

    key = conf->signing_keys->elts;
    old = conf->old_keys->elts;

    for (i = 0; i < conf->old_keys->nelts; i++) {
        for (j = 0; j < conf->signing_keys->nelts; j++) {
            if (ngx_strlen(key[j].key_id) == old[i].key_id.len
                && ngx_strncmp(key[j].key_id, old[i].key_id.data,
                               old[i].key_id.len) == 0)
            {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "matrix_old_verify_key: \"%V\" is also "
                                   "a current key in \"%V\"",
                                   &old[i].key_id, &conf->signing_key_file);
                return NGX_CONF_ERROR;
            }
        }
    }

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_matrix_key_server_handler(ngx_http_request_t *r,
    ngx_http_matrix_ctx_t *ctx)
{
    u_char                     *body;
    ngx_http_matrix_key_doc_t  *doc;

    doc = ngx_http_matrix_key_doc(ctx->mscf, r->connection->log);
    if (doc == NULL) {
        return ngx_http_matrix_send_error(r, NGX_HTTP_INTERNAL_SERVER_ERROR,
                                          "M_UNKNOWN",
                                          "Cannot build the key document");
    }

    /* a copy: the document may be rebuilt while this one is being sent */
    body = ngx_pnalloc(r->pool, doc->len);
    if (body == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_memcpy(body, doc->data, doc->len);

    return ngx_http_matrix_send_body(r, NGX_HTTP_OK, body, doc->len);
}


ngx_http_matrix_key_doc_t *
ngx_http_matrix_key_doc(ngx_http_matrix_srv_conf_t *mscf, ngx_log_t *log)
{
    json_t                     *json;
    int64_t                     now, validity;
    mx_err_t                    err;
    mx_buf_t                    buf;
    ngx_uint_t                  i;
    mx_signing_key_t           *key;
    ngx_http_matrix_key_doc_t  *doc;

    now = ngx_http_matrix_now_ms();

    if (mscf->key_doc && now < mscf->key_doc->refresh_ts) {
        return mscf->key_doc;
    }

    validity = (int64_t) mscf->key_validity * 1000;

    json = ngx_http_matrix_key_doc_json(mscf, now + validity);
    if (json == NULL) {
        ngx_log_error(NGX_LOG_ALERT, log, 0,
                      "matrix: cannot build the key document of \"%V\"",
                      &mscf->server_name);
        goto previous;
    }

    mx_buf_init(&buf);
    key = mscf->signing_keys->elts;

    for (i = 0; i < mscf->signing_keys->nelts; i++) {
        if (mx_json_sign(json, (char *) mscf->server_name.data, &key[i], &err)
            != MX_OK)
        {
            goto failed;
        }
    }

    if (mx_json_canonical(json, &buf, &err) != MX_OK) {
        goto failed;
    }

    json_decref(json);
    json = NULL;

    doc = ngx_alloc(sizeof(ngx_http_matrix_key_doc_t) + buf.len, log);
    if (doc == NULL) {
        mx_buf_free(&buf);
        goto previous;
    }

    doc->data = (u_char *) doc + sizeof(ngx_http_matrix_key_doc_t);
    doc->len = buf.len;
    ngx_memcpy(doc->data, buf.data, buf.len);
    mx_buf_free(&buf);

    /*
     * Re-signed at half-life: notaries cache a response for half its
     * lifetime, and nobody should be handed a document about to expire.
     */
    doc->valid_until_ts = now + validity;
    doc->refresh_ts = now + validity / 2;

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, log, 0,
                   "matrix: key document of \"%V\" signed, valid until %L",
                   &mscf->server_name, doc->valid_until_ts);

    if (mscf->key_doc) {
        ngx_free(mscf->key_doc);
    }

    mscf->key_doc = doc;

    return doc;

failed:

    ngx_log_error(NGX_LOG_ALERT, log, 0,
                  "matrix: cannot sign the key document of \"%V\": %s",
                  &mscf->server_name, err.msg);
    json_decref(json);
    mx_buf_free(&buf);

previous:

    /* the last document is still good until it expires */

    if (mscf->key_doc && now < mscf->key_doc->valid_until_ts) {
        return mscf->key_doc;
    }

    return NULL;
}


static json_t *
ngx_http_matrix_key_doc_json(ngx_http_matrix_srv_conf_t *mscf,
    int64_t valid_until_ts)
{
    int                         rc;
    char                        pub[44];
    json_t                     *doc, *verify, *old, *entry;
    ngx_uint_t                  i;
    mx_signing_key_t           *key;
    ngx_http_matrix_old_key_t  *old_key;

    doc = json_object();
    verify = json_object();
    old = json_object();

    if (doc == NULL || verify == NULL || old == NULL) {
        goto failed;
    }

    key = mscf->signing_keys->elts;

    for (i = 0; i < mscf->signing_keys->nelts; i++) {
        mx_signing_key_public_base64(&key[i], pub);

        entry = json_pack("{s:s}", "key", pub);
        if (json_object_set_new(verify, key[i].key_id, entry) != 0) {
            goto failed;
        }
    }

    if (mscf->old_keys) {
        old_key = mscf->old_keys->elts;

        for (i = 0; i < mscf->old_keys->nelts; i++) {
            entry = json_pack("{s:s%,s:I}",
                              "key", old_key[i].key.data, old_key[i].key.len,
                              "expired_ts", (json_int_t) old_key[i].expired_ts);

            if (json_object_setn_new(old, (char *) old_key[i].key_id.data,
                                     old_key[i].key_id.len, entry)
                != 0)
            {
                goto failed;
            }
        }
    }

    if (json_object_set_new(doc, "server_name",
                            json_stringn((char *) mscf->server_name.data,
                                         mscf->server_name.len)) != 0
        || json_object_set_new(doc, "valid_until_ts",
                               json_integer(valid_until_ts)) != 0)
    {
        goto failed;
    }

    /* json_object_set_new() takes the reference even when it fails */

    rc = json_object_set_new(doc, "verify_keys", verify);
    verify = NULL;

    if (rc != 0) {
        goto failed;
    }

    rc = json_object_set_new(doc, "old_verify_keys", old);
    old = NULL;

    if (rc != 0) {
        goto failed;
    }

    return doc;

failed:

    json_decref(doc);
    json_decref(verify);
    json_decref(old);

    return NULL;
}
