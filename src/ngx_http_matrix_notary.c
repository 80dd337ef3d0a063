/*
 * The notary ("Querying keys through another server"):
 * GET /_matrix/key/v2/query/{serverName} and POST /_matrix/key/v2/query.
 * Each server's key document is the one it signed, as it was received
 * (fetched now when the one known is valid for less than asked), with
 * this server's signature added; this server's own document is served as
 * it is.  Servers whose keys cannot be had are left out of the answer.
 */


#include "ngx_http_matrix_router.h"
#include "ngx_http_matrix_remote_keys.h"
#include "ngx_http_matrix_keys.h"

#include <mx_ids.h>


#define NGX_HTTP_MATRIX_NOTARY_MAX_SERVERS  64


typedef struct {
    ngx_http_request_t             *r;
    ngx_http_matrix_ctx_t          *ctx;
    json_t                         *server_keys;
    ngx_uint_t                      pending;
} ngx_http_matrix_notary_t;


static ngx_int_t ngx_http_matrix_notary_get(ngx_http_request_t *r,
    ngx_http_matrix_ctx_t *ctx);
static ngx_int_t ngx_http_matrix_notary_post(ngx_http_request_t *r,
    ngx_http_matrix_ctx_t *ctx);
static ngx_http_matrix_notary_t *ngx_http_matrix_notary_create(
    ngx_http_request_t *r, ngx_http_matrix_ctx_t *ctx);
static ngx_int_t ngx_http_matrix_notary_ask(ngx_http_matrix_notary_t *nt,
    const char *server, size_t len, int64_t min_valid);
static void ngx_http_matrix_notary_got(ngx_http_matrix_key_lookup_t *kl);
static ngx_int_t ngx_http_matrix_notary_reply(ngx_http_matrix_notary_t *nt);
static void ngx_http_matrix_notary_cleanup(void *data);


ngx_http_matrix_route_t  ngx_http_matrix_notary_routes[] = {

    { NGX_HTTP_GET,
      ngx_string("/_matrix/key/v2/query/{serverName}"),
      ngx_http_matrix_notary_get,
      0 },

    /* removed from the spec, still asked for by older servers */
    { NGX_HTTP_GET,
      ngx_string("/_matrix/key/v2/query/{serverName}/{keyId}"),
      ngx_http_matrix_notary_get,
      0 },

    { NGX_HTTP_POST,
      ngx_string("/_matrix/key/v2/query"),
      ngx_http_matrix_notary_post,
      0 },

      ngx_http_matrix_null_route
};


static ngx_int_t
ngx_http_matrix_notary_get(ngx_http_request_t *r, ngx_http_matrix_ctx_t *ctx)
{
    int64_t                    min_valid;
    ngx_str_t                  v;
    const char                *why;
    ngx_http_matrix_notary_t  *nt;

    if (mx_server_name_valid((char *) ctx->params[0].data, ctx->params[0].len,
                             &why)
        != MX_OK)
    {
        return ngx_http_matrix_send_error(r, NGX_HTTP_BAD_REQUEST,
                                          "M_INVALID_PARAM",
                                          "Invalid server name: %s", why);
    }

    min_valid = 0;

    if (ngx_http_arg(r, (u_char *) "minimum_valid_until_ts", 22, &v)
        == NGX_OK)
    {
        min_valid = ngx_atoi(v.data, v.len);

        if (min_valid == NGX_ERROR) {
            return ngx_http_matrix_send_error(r, NGX_HTTP_BAD_REQUEST,
                                              "M_INVALID_PARAM",
                                              "Invalid minimum_valid_until_ts");
        }
    }

    nt = ngx_http_matrix_notary_create(r, ctx);
    if (nt == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ngx_http_matrix_notary_ask(nt, (char *) ctx->params[0].data,
                                   ctx->params[0].len, min_valid)
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (nt->pending == 0) {
        return ngx_http_matrix_notary_reply(nt);
    }

    r->main->count++;

    return NGX_DONE;
}


/* {"server_keys": {"server": {"key id": {"minimum_valid_until_ts": n}}}} */

static ngx_int_t
ngx_http_matrix_notary_post(ngx_http_request_t *r,
    ngx_http_matrix_ctx_t *ctx)
{
    int64_t                    min_valid, m;
    json_t                    *body, *servers, *keys, *criteria;
    ngx_int_t                  rc;
    const char                *server, *key_id, *why;
    ngx_http_matrix_notary_t  *nt;

    body = ngx_http_matrix_request_json(r, &rc);
    if (body == NULL) {
        return rc;
    }

    servers = json_object_get(body, "server_keys");

    if (!json_is_object(servers)) {
        return ngx_http_matrix_send_error(r, NGX_HTTP_BAD_REQUEST,
                                          "M_BAD_JSON",
                                          "server_keys must be an object");
    }

    if (json_object_size(servers) > NGX_HTTP_MATRIX_NOTARY_MAX_SERVERS) {
        return ngx_http_matrix_send_error(r, NGX_HTTP_BAD_REQUEST,
                                          "M_LIMIT_EXCEEDED",
                                          "At most %d servers at once",
                                          NGX_HTTP_MATRIX_NOTARY_MAX_SERVERS);
    }

    nt = ngx_http_matrix_notary_create(r, ctx);
    if (nt == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    json_object_foreach(servers, server, keys) {

        if (mx_server_name_valid(server, strlen(server), &why) != MX_OK
            || !json_is_object(keys))
        {
            continue;
        }

        /* the strictest of the keys' minimums */

        min_valid = 0;

        json_object_foreach(keys, key_id, criteria) {
            m = json_integer_value(json_object_get(criteria,
                                                   "minimum_valid_until_ts"));
            if (m > min_valid) {
                min_valid = m;
            }
        }

        if (ngx_http_matrix_notary_ask(nt, server, strlen(server), min_valid)
            != NGX_OK)
        {
                return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    if (nt->pending == 0) {
        return ngx_http_matrix_notary_reply(nt);
    }

    r->main->count++;

    return NGX_DONE;
}


static ngx_http_matrix_notary_t *
ngx_http_matrix_notary_create(ngx_http_request_t *r,
    ngx_http_matrix_ctx_t *ctx)
{
    ngx_pool_cleanup_t        *cln;
    ngx_http_matrix_notary_t  *nt;

    nt = ngx_pcalloc(r->pool, sizeof(ngx_http_matrix_notary_t));
    if (nt == NULL) {
        return NULL;
    }

    nt->server_keys = json_array();
    if (nt->server_keys == NULL) {
        return NULL;
    }

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        json_decref(nt->server_keys);
        return NULL;
    }

    cln->handler = ngx_http_matrix_notary_cleanup;
    cln->data = nt;

    nt->r = r;
    nt->ctx = ctx;

    return nt;
}


static ngx_int_t
ngx_http_matrix_notary_ask(ngx_http_matrix_notary_t *nt, const char *server,
    size_t len, int64_t min_valid)
{
    json_t                        *doc;
    mx_err_t                       err;
    ngx_str_t                     *ours;
    ngx_http_matrix_key_doc_t     *kd;
    ngx_http_matrix_key_lookup_t  *kl;

    ours = &nt->ctx->mscf->server_name;

    if (len == ours->len && ngx_strncmp(server, ours->data, len) == 0) {
        kd = ngx_http_matrix_key_doc(nt->ctx->mscf, nt->r->connection->log);
        if (kd == NULL) {
            return NGX_ERROR;
        }

        doc = mx_json_parse((char *) kd->data, kd->len, 0, &err);
        if (doc == NULL) {
            return NGX_ERROR;
        }

        json_array_append_new(nt->server_keys, doc);
        return NGX_OK;
    }

    kl = ngx_http_matrix_key_lookup_create(nt->r->pool,
                                           nt->r->connection->log);
    if (kl == NULL) {
        return NGX_ERROR;
    }

    kl->server_name.data = ngx_pnalloc(nt->r->pool, len);
    if (kl->server_name.data == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(kl->server_name.data, server, len);
    kl->server_name.len = len;
    kl->want_doc = 1;
    kl->min_valid_ts = min_valid;
    kl->handler = ngx_http_matrix_notary_got;
    kl->data = nt;

    if (ngx_http_matrix_key_lookup(kl) != NGX_OK) {
        return NGX_ERROR;
    }

    nt->pending++;

    return NGX_OK;
}


static void
ngx_http_matrix_notary_got(ngx_http_matrix_key_lookup_t *kl)
{
    json_t                    *doc;
    mx_err_t                   err;
    ngx_int_t                  rc;
    ngx_connection_t          *c;
    mx_signing_key_t          *key;
    ngx_http_matrix_notary_t  *nt;

    nt = kl->data;
    c = nt->r->connection;

    if (kl->rc == NGX_OK) {
        doc = mx_json_parse((char *) kl->doc.data, kl->doc.len, 0, &err);

        /* countersigned: this server vouches it saw that document */

        key = nt->ctx->mscf->signing_keys->elts;

        if (doc
            && mx_json_sign(doc, (char *) nt->ctx->mscf->server_name.data,
                            key, &err)
               == MX_OK)
        {
            json_array_append_new(nt->server_keys, doc);

        } else {
            json_decref(doc);
        }

    } else {
        ngx_log_error(NGX_LOG_INFO, c->log, 0,
                      "matrix notary: no keys of \"%V\": %V",
                      &kl->server_name, &kl->error);
    }

    if (--nt->pending) {
        return;
    }

    rc = ngx_http_matrix_notary_reply(nt);

    ngx_http_finalize_request(nt->r, rc);
    ngx_http_run_posted_requests(c);
}


static ngx_int_t
ngx_http_matrix_notary_reply(ngx_http_matrix_notary_t *nt)
{
    json_t     *body;
    ngx_int_t   rc;

    body = json_pack("{s:O}", "server_keys", nt->server_keys);
    if (body == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_matrix_send_json(nt->r, NGX_HTTP_OK, body);
    json_decref(body);

    return rc;
}


static void
ngx_http_matrix_notary_cleanup(void *data)
{
    ngx_http_matrix_notary_t  *nt = data;

    json_decref(nt->server_keys);
}
