/*
 * Inbound request authentication ("Request Authentication" in the
 * server-server API): a route marked NGX_HTTP_MATRIX_FEDERATION runs only
 * for a request whose X-Matrix Authorization verifies with the origin's
 * key, and then knows the origin (ctx->origin).  The key lookup and the
 * signature check come before anything the route does, the database
 * included; whatever fails is a 401 M_UNAUTHORIZED saying what.
 *
 * A request with a body (POST, PUT) has it parsed first: the content is
 * part of what is signed, and the route finds it in ctx->body.
 *
 * Each worker remembers the requests it has verified (mx_sigcache.h): a
 * peer that retries a transaction or polls the same resource sends the
 * same bytes with the same signature, and pays a hash, not a curve
 * operation, the second time.
 */


#include "ngx_http_matrix_router.h"
#include "ngx_http_matrix_feed.h"
#include "ngx_http_matrix_remote_keys.h"

#include <mx_xmatrix.h>


#define NGX_HTTP_MATRIX_VERIFIED_MAX  4096      /* 128 KiB per worker */


typedef struct {
    mx_xmatrix_auth_t                  auth;
    ngx_http_matrix_key_lookup_t      *kl;
} ngx_http_matrix_fed_auth_t;


static void ngx_http_matrix_federation_key(ngx_http_matrix_key_lookup_t *kl);
static ngx_int_t ngx_http_matrix_federation_verify(ngx_http_request_t *r,
    ngx_http_matrix_ctx_t *ctx, ngx_http_matrix_fed_auth_t *fa,
    const u_char *public_key);
static ngx_int_t ngx_http_matrix_unauthorized(ngx_http_request_t *r,
    const char *fmt, ...);
static mx_sigcache_t *ngx_http_matrix_verified(ngx_log_t *log);


/* per worker: made in the worker, the master never touches it */
static mx_sigcache_t        ngx_http_matrix_verified_cache;
static mx_sigcache_entry_t  ngx_http_matrix_verified_entries[
                                NGX_HTTP_MATRIX_VERIFIED_MAX];
static ngx_uint_t           ngx_http_matrix_verified_ready;


ngx_int_t
ngx_http_matrix_federation_auth(ngx_http_request_t *r,
    ngx_http_matrix_ctx_t *ctx)
{
    ngx_uint_t                   i;
    ngx_list_part_t             *part;
    ngx_table_elt_t             *h, *header;
    mx_err_t                     err;
    ngx_int_t                    rc;
    ngx_http_matrix_fed_auth_t  *fa;

    if (r->method & (NGX_HTTP_POST|NGX_HTTP_PUT)) {
        if (ngx_http_matrix_request_json(r, &rc) == NULL) {
            return rc;
        }

    } else if (r->headers_in.content_length_n > 0 || r->headers_in.chunked) {
        return ngx_http_matrix_send_error(r, NGX_HTTP_BAD_REQUEST,
                                          "M_BAD_JSON",
                                          "This endpoint takes no body");
    }

    /* the first X-Matrix one of possibly several Authorization headers */

    header = NULL;
    part = &r->headers_in.headers.part;
    h = part->elts;

    for (i = 0; /* void */; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                break;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].key.len == sizeof("Authorization") - 1
            && ngx_strncasecmp(h[i].key.data, (u_char *) "Authorization",
                               h[i].key.len) == 0
            && h[i].value.len > 9
            && ngx_strncasecmp(h[i].value.data, (u_char *) "X-Matrix ", 9)
               == 0)
        {
            header = &h[i];
            break;
        }
    }

    if (header == NULL) {
        return ngx_http_matrix_unauthorized(r, "Missing X-Matrix "
                                            "Authorization header");
    }

    fa = ngx_pcalloc(r->pool, sizeof(ngx_http_matrix_fed_auth_t));
    if (fa == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (mx_xmatrix_parse((char *) header->value.data, header->value.len,
                         &fa->auth, &err)
        != MX_OK)
    {
        return ngx_http_matrix_unauthorized(r, "Invalid X-Matrix header: %s",
                                            err.msg);
    }

    /* a request for another server is refused before any work */

    if (fa->auth.has_destination
        && (ngx_strlen(fa->auth.destination) != ctx->mscf->server_name.len
            || ngx_strncmp(fa->auth.destination, ctx->mscf->server_name.data,
                           ctx->mscf->server_name.len) != 0))
    {
        return ngx_http_matrix_unauthorized(r, "The request is for another "
                                            "server (destination)");
    }

    if (ngx_strlen(fa->auth.origin) == ctx->mscf->server_name.len
        && ngx_strncmp(fa->auth.origin, ctx->mscf->server_name.data,
                       ctx->mscf->server_name.len) == 0)
    {
        return ngx_http_matrix_unauthorized(r, "The origin is this server");
    }

    fa->kl = ngx_http_matrix_key_lookup_create(r->pool, r->connection->log);
    if (fa->kl == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    fa->kl->server_name.data = (u_char *) fa->auth.origin;
    fa->kl->server_name.len = ngx_strlen(fa->auth.origin);
    fa->kl->key_id.data = (u_char *) fa->auth.key_id;
    fa->kl->key_id.len = ngx_strlen(fa->auth.key_id);
    fa->kl->handler = ngx_http_matrix_federation_key;
    fa->kl->data = r;

    ctx->auth = fa;

    if (ngx_http_matrix_key_lookup(fa->kl) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    r->main->count++;

    return NGX_DONE;
}


static void
ngx_http_matrix_federation_key(ngx_http_matrix_key_lookup_t *kl)
{
    ngx_int_t                    rc;
    ngx_connection_t            *c;
    ngx_http_request_t          *r;
    ngx_http_matrix_ctx_t       *ctx;
    ngx_http_matrix_fed_auth_t  *fa;

    r = kl->data;
    c = r->connection;
    ctx = ngx_http_matrix_get_ctx(r);
    fa = ctx->auth;

    if (kl->rc == NGX_OK) {
        rc = ngx_http_matrix_federation_verify(r, ctx, fa, kl->public_key);

    } else if (kl->rc == NGX_DECLINED) {
        rc = ngx_http_matrix_unauthorized(r, "Unknown or expired key %s of "
                                          "%s", fa->auth.key_id,
                                          fa->auth.origin);

    } else {
        ngx_log_error(NGX_LOG_INFO, c->log, 0,
                      "matrix federation: keys of \"%s\" not had: %V",
                      fa->auth.origin, &kl->error);

        rc = ngx_http_matrix_unauthorized(r, "The keys of %s could not be "
                                          "fetched", fa->auth.origin);
    }

    ngx_http_finalize_request(r, rc);
    ngx_http_run_posted_requests(c);
}


static ngx_int_t
ngx_http_matrix_federation_verify(ngx_http_request_t *r,
    ngx_http_matrix_ctx_t *ctx, ngx_http_matrix_fed_auth_t *fa,
    const u_char *public_key)
{
    mx_err_t              err;
    mx_xmatrix_request_t  req;

    ngx_memzero(&req, sizeof(mx_xmatrix_request_t));

    req.method = (char *) r->method_name.data;
    req.method_len = r->method_name.len;
    req.uri = (char *) r->unparsed_uri.data;
    req.uri_len = r->unparsed_uri.len;
    req.origin = fa->auth.origin;
    req.origin_len = ngx_strlen(fa->auth.origin);
    req.destination = (char *) ctx->mscf->server_name.data;
    req.destination_len = ctx->mscf->server_name.len;
    req.content = ctx->body;

    if (mx_xmatrix_verify(&fa->auth, &req, public_key,
                          ngx_http_matrix_verified(r->connection->log), &err)
        != MX_OK)
    {
        return ngx_http_matrix_unauthorized(r, "The signature does not "
                                            "verify: %s", err.msg);
    }

    ctx->origin.data = (u_char *) fa->auth.origin;
    ctx->origin.len = req.origin_len;

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "matrix federation: request from \"%V\"", &ctx->origin);

    /* it is up: a transaction to it in back-off need not wait any more */
    ngx_http_matrix_sender_heard(&ctx->origin);

    return ctx->route->handler(r, ctx);
}


static ngx_int_t
ngx_http_matrix_unauthorized(ngx_http_request_t *r, const char *fmt, ...)
{
    u_char   *p;
    va_list   args;
    u_char    msg[512];

    va_start(args, fmt);
    p = ngx_vslprintf(msg, msg + sizeof(msg) - 1, fmt, args);
    va_end(args);
    *p = '\0';

    ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                  "matrix federation: refused: %s", msg);

    return ngx_http_matrix_send_error(r, NGX_HTTP_UNAUTHORIZED,
                                      "M_UNAUTHORIZED", "%s", msg);
}


static mx_sigcache_t *
ngx_http_matrix_verified(ngx_log_t *log)
{
    mx_err_t  err;

    if (!ngx_http_matrix_verified_ready) {
        if (mx_sigcache_init(&ngx_http_matrix_verified_cache,
                             ngx_http_matrix_verified_entries,
                             NGX_HTTP_MATRIX_VERIFIED_MAX, &err)
            != MX_OK)
        {
            ngx_log_error(NGX_LOG_ALERT, log, 0,
                          "matrix federation: no cache of verified "
                          "requests: %s", err.msg);
            return NULL;
        }

        ngx_http_matrix_verified_ready = 1;
    }

    return &ngx_http_matrix_verified_cache;
}
