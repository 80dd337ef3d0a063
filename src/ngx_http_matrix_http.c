/*
 * The outbound HTTP/1.1 client: name lookup (nginx's resolver), the SSRF
 * guard, connect (ngx_event_connect_peer), TLS with SNI and verification
 * (ngx_ssl_*), one request, a response parsed with limits (status line,
 * headers, Content-Length or chunked body), and the connection kept for
 * the next request to the same address and TLS name.
 *
 * Connections belong to the worker, not to a request: a kept connection
 * outlives the request that opened it, so its memory is its own.
 */


#include "ngx_http_matrix_module.h"
#include "ngx_http_matrix_http.h"

#include <mx_netaddr.h>
#include <mx_xmatrix.h>


#define NGX_HTTP_MATRIX_HTTP_HEADER_MAX    16384
#define NGX_HTTP_MATRIX_HTTP_BODY_MAX      (1024 * 1024)
#define NGX_HTTP_MATRIX_HTTP_IDLE_MAX      64
#define NGX_HTTP_MATRIX_HTTP_IDLE_TIMEOUT  60000
#define NGX_HTTP_MATRIX_HTTP_DEFAULT_CA    "/etc/ssl/certs/ca-certificates.crt"


typedef enum {
    NGX_HTTP_MATRIX_HTTP_CONNECTING = 0,
    NGX_HTTP_MATRIX_HTTP_HANDSHAKE,
    NGX_HTTP_MATRIX_HTTP_WRITING,
    NGX_HTTP_MATRIX_HTTP_HEADERS,
    NGX_HTTP_MATRIX_HTTP_BODY,
    NGX_HTTP_MATRIX_HTTP_IDLE
} ngx_http_matrix_http_phase_e;


typedef enum {
    NGX_HTTP_MATRIX_CHUNK_SIZE = 0,
    NGX_HTTP_MATRIX_CHUNK_EXT,
    NGX_HTTP_MATRIX_CHUNK_SIZE_LF,
    NGX_HTTP_MATRIX_CHUNK_DATA,
    NGX_HTTP_MATRIX_CHUNK_DATA_CR,
    NGX_HTTP_MATRIX_CHUNK_DATA_LF,
    NGX_HTTP_MATRIX_CHUNK_TRAILER,
    NGX_HTTP_MATRIX_CHUNK_TRAILER_LF,
    NGX_HTTP_MATRIX_CHUNK_LAST_LF,
    NGX_HTTP_MATRIX_CHUNK_DONE
} ngx_http_matrix_chunk_state_e;


struct ngx_http_matrix_http_conf_s {
    ngx_resolver_t                   *resolver;
    ngx_msec_t                        resolver_timeout;
    ngx_msec_t                        timeout;
    ngx_str_t                         trusted_certificate;
    ngx_ssl_t                        *ssl;
    ngx_array_t                      *allow;          /* mx_cidr_t */

    /* per worker */
    ngx_queue_t                       idle;
    ngx_uint_t                        nidle;
    ngx_log_t                        *log;
};


struct ngx_http_matrix_http_conn_s {
    ngx_http_matrix_http_conf_t      *conf;
    ngx_peer_connection_t             peer;
    ngx_http_matrix_http_req_t       *hr;
    ngx_pool_t                       *pool;

    u_char                            sockaddr[NGX_SOCKADDRLEN];
    socklen_t                         socklen;
    ngx_str_t                         addr_text;
    ngx_str_t                         tls_name;       /* "" for plain */

    ngx_http_matrix_http_phase_e      phase;
    ngx_queue_t                       queue;          /* conf->idle */

    ngx_buf_t                        *out;
    ngx_buf_t                        *in;             /* headers, then body
                                                         bytes read with them */
    u_char                           *body;
    size_t                            body_len;
    size_t                            body_cap;
    off_t                             content_length; /* -1: not given */
    off_t                             chunk_left;
    ngx_http_matrix_chunk_state_e     chunk_state;
    ngx_uint_t                        status;
    ngx_str_t                         content_type;
    ngx_str_t                         location;
    ngx_str_t                         cache_control;
    ngx_str_t                         expires;

    ngx_uint_t                        chunk_digits;

    unsigned                          chunked:1;
    unsigned                          close:1;        /* after this one */
    unsigned                          got_bytes:1;
    unsigned                          kept:1;         /* served one before */
};


static ngx_int_t ngx_http_matrix_http_sign(ngx_http_matrix_http_req_t *hr);
static void ngx_http_matrix_http_resolved(ngx_resolver_ctx_t *ctx);
static void ngx_http_matrix_http_connect(ngx_http_matrix_http_req_t *hr);
static ngx_http_matrix_http_conn_t *ngx_http_matrix_http_idle_get(
    ngx_http_matrix_http_conf_t *conf, ngx_addr_t *addr, ngx_str_t *tls_name);
static void ngx_http_matrix_http_connected(ngx_http_matrix_http_conn_t *hc);
static void ngx_http_matrix_http_handshake(ngx_connection_t *c);
static ngx_int_t ngx_http_matrix_http_request_bytes(
    ngx_http_matrix_http_conn_t *hc);
static void ngx_http_matrix_http_write_handler(ngx_event_t *wev);
static void ngx_http_matrix_http_read_handler(ngx_event_t *rev);
static void ngx_http_matrix_http_idle_handler(ngx_event_t *ev);
static ngx_int_t ngx_http_matrix_http_parse_headers(
    ngx_http_matrix_http_conn_t *hc);
static ngx_int_t ngx_http_matrix_http_parse_block(
    ngx_http_matrix_http_conn_t *hc);
static ngx_int_t ngx_http_matrix_http_body(ngx_http_matrix_http_conn_t *hc,
    u_char *p, size_t len);
static ngx_int_t ngx_http_matrix_http_body_append(
    ngx_http_matrix_http_conn_t *hc, u_char *p, size_t len);
static void ngx_http_matrix_http_done(ngx_http_matrix_http_conn_t *hc);
static void ngx_http_matrix_http_failed(ngx_http_matrix_http_conn_t *hc,
    const char *why);
static void ngx_http_matrix_http_close(ngx_http_matrix_http_conn_t *hc);
static void ngx_http_matrix_http_fail(ngx_http_matrix_http_req_t *hr,
    const char *fmt, ...);
static void ngx_http_matrix_http_reply(ngx_http_matrix_http_req_t *hr);
static void ngx_http_matrix_http_reply_handler(ngx_event_t *ev);
static void ngx_http_matrix_http_deadline_handler(ngx_event_t *ev);
static void ngx_http_matrix_http_cleanup(void *data);


/* configuration */

static ngx_http_matrix_http_conf_t *
ngx_http_matrix_http_get_conf(ngx_conf_t *cf)
{
    ngx_http_matrix_main_conf_t  *mmcf;

    mmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_matrix_module);

    if (mmcf->http == NULL) {
        mmcf->http = ngx_pcalloc(cf->pool,
                                 sizeof(ngx_http_matrix_http_conf_t));
        if (mmcf->http == NULL) {
            return NULL;
        }

        mmcf->http->resolver_timeout = NGX_CONF_UNSET_MSEC;
        mmcf->http->timeout = NGX_CONF_UNSET_MSEC;
    }

    return mmcf->http;
}


/* matrix_federation_resolver address ... [valid=time] [ipv6=on|off] */

char *
ngx_http_matrix_http_resolver(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_str_t                    *value;
    ngx_http_matrix_http_conf_t  *hcf;

    hcf = ngx_http_matrix_http_get_conf(cf);
    if (hcf == NULL) {
        return NGX_CONF_ERROR;
    }

    if (hcf->resolver) {
        return "is duplicate";
    }

    value = cf->args->elts;

    hcf->resolver = ngx_resolver_create(cf, &value[1], cf->args->nelts - 1);
    if (hcf->resolver == NULL) {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


char *
ngx_http_matrix_http_trusted_certificate(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_str_t                    *value;
    ngx_http_matrix_http_conf_t  *hcf;

    hcf = ngx_http_matrix_http_get_conf(cf);
    if (hcf == NULL) {
        return NGX_CONF_ERROR;
    }

    if (hcf->trusted_certificate.data) {
        return "is duplicate";
    }

    value = cf->args->elts;
    hcf->trusted_certificate = value[1];

    return NGX_CONF_OK;
}


/* matrix_federation_allow_ip cidr: opens a special-purpose range */

char *
ngx_http_matrix_http_allow_ip(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    mx_err_t                      err;
    mx_cidr_t                    *cidr;
    ngx_str_t                    *value;
    ngx_http_matrix_http_conf_t  *hcf;

    hcf = ngx_http_matrix_http_get_conf(cf);
    if (hcf == NULL) {
        return NGX_CONF_ERROR;
    }

    if (hcf->allow == NULL) {
        hcf->allow = ngx_array_create(cf->pool, 4, sizeof(mx_cidr_t));
        if (hcf->allow == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    cidr = ngx_array_push(hcf->allow);
    if (cidr == NULL) {
        return NGX_CONF_ERROR;
    }

    value = cf->args->elts;

    if (mx_cidr_parse((char *) value[1].data, value[1].len, cidr, &err)
        != MX_OK)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "%V: invalid address range \"%V\": %s",
                           &cmd->name, &value[1], err.msg);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


static void
ngx_http_matrix_http_ssl_cleanup(void *data)
{
    ngx_ssl_t  *ssl = data;

    SSL_CTX_free(ssl->ctx);
}


char *
ngx_http_matrix_http_init_conf(ngx_conf_t *cf)
{
    ngx_file_info_t               fi;
    ngx_pool_cleanup_t           *cln;
    ngx_http_matrix_http_conf_t  *hcf;

    hcf = ngx_http_matrix_http_get_conf(cf);
    if (hcf == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_conf_init_msec_value(hcf->resolver_timeout, 10000);
    ngx_conf_init_msec_value(hcf->timeout, 30000);

    if (hcf->trusted_certificate.data == NULL) {
        ngx_str_set(&hcf->trusted_certificate,
                    NGX_HTTP_MATRIX_HTTP_DEFAULT_CA);

        if (ngx_file_info(hcf->trusted_certificate.data, &fi)
            == NGX_FILE_ERROR)
        {
            /* nothing to trust yet: every TLS connection will be refused */
            ngx_conf_log_error(NGX_LOG_WARN, cf, ngx_errno,
                               "matrix: no \"%V\" (package ca-certificates): "
                               "federation over TLS will fail without "
                               "\"matrix_federation_trusted_certificate\"",
                               &hcf->trusted_certificate);
            return NGX_CONF_OK;
        }
    }

    hcf->ssl = ngx_pcalloc(cf->pool, sizeof(ngx_ssl_t));
    if (hcf->ssl == NULL) {
        return NGX_CONF_ERROR;
    }

    hcf->ssl->log = cf->log;

    if (ngx_ssl_create(hcf->ssl, NGX_SSL_TLSv1_2|NGX_SSL_TLSv1_3, NULL)
        != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    cln = ngx_pool_cleanup_add(cf->pool, 0);
    if (cln == NULL) {
        SSL_CTX_free(hcf->ssl->ctx);
        return NGX_CONF_ERROR;
    }

    cln->handler = ngx_http_matrix_http_ssl_cleanup;
    cln->data = hcf->ssl;

    if (ngx_ssl_trusted_certificate(cf, hcf->ssl, &hcf->trusted_certificate,
                                    10)
        != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


static ngx_http_matrix_http_conf_t *
ngx_http_matrix_http_cycle_conf(ngx_cycle_t *cycle)
{
    ngx_http_matrix_main_conf_t  *mmcf;

    mmcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_matrix_module);

    return mmcf ? mmcf->http : NULL;
}


ngx_int_t
ngx_http_matrix_http_init_process(ngx_cycle_t *cycle)
{
    ngx_http_matrix_http_conf_t  *hcf;

    hcf = ngx_http_matrix_http_cycle_conf(cycle);
    if (hcf == NULL) {
        return NGX_OK;
    }

    ngx_queue_init(&hcf->idle);
    hcf->log = cycle->log;

    return NGX_OK;
}


void
ngx_http_matrix_http_exit_process(ngx_cycle_t *cycle)
{
    ngx_queue_t                  *q;
    ngx_http_matrix_http_conf_t  *hcf;
    ngx_http_matrix_http_conn_t  *hc;

    hcf = ngx_http_matrix_http_cycle_conf(cycle);
    if (hcf == NULL || hcf->log == NULL) {
        return;
    }

    while (!ngx_queue_empty(&hcf->idle)) {
        q = ngx_queue_head(&hcf->idle);
        hc = ngx_queue_data(q, ngx_http_matrix_http_conn_t, queue);
        ngx_http_matrix_http_close(hc);
    }
}


ngx_resolver_t *
ngx_http_matrix_http_get_resolver(ngx_cycle_t *cycle, ngx_msec_t *timeout)
{
    ngx_http_matrix_http_conf_t  *hcf;

    hcf = ngx_http_matrix_http_cycle_conf(cycle);
    if (hcf == NULL) {
        return NULL;
    }

    *timeout = hcf->resolver_timeout;

    return hcf->resolver;
}


/* the SSRF guard */

const char *
ngx_http_matrix_http_forbidden(ngx_http_matrix_http_conf_t *conf,
    struct sockaddr *sa)
{
    ngx_uint_t     i;
    mx_cidr_t     *allow;
    const char    *range;
    mx_netaddr_t   a;

    ngx_memzero(&a, sizeof(mx_netaddr_t));

    switch (sa->sa_family) {

    case AF_INET:
        a.family = AF_INET;
        ngx_memcpy(a.addr, &((struct sockaddr_in *) sa)->sin_addr, 4);
        break;

#if (NGX_HAVE_INET6)
    case AF_INET6:
        a.family = AF_INET6;
        ngx_memcpy(a.addr, ((struct sockaddr_in6 *) sa)->sin6_addr.s6_addr,
                   16);
        break;
#endif

    default:
        return "non-internet";
    }

    range = mx_netaddr_special(&a, NULL);
    if (range == NULL) {
        return NULL;
    }

    if (conf->allow) {
        allow = conf->allow->elts;

        for (i = 0; i < conf->allow->nelts; i++) {
            if (mx_cidr_match(&allow[i], &a)) {
                return NULL;
            }
        }
    }

    return range;
}


/* use */

ngx_http_matrix_http_req_t *
ngx_http_matrix_http_create(ngx_cycle_t *cycle, ngx_pool_t *pool,
    ngx_log_t *log)
{
    ngx_pool_cleanup_t           *cln;
    ngx_http_matrix_http_req_t   *hr;
    ngx_http_matrix_http_conf_t  *hcf;

    hcf = ngx_http_matrix_http_cycle_conf(cycle);
    if (hcf == NULL || hcf->log == NULL) {
        return NULL;
    }

    hr = ngx_pcalloc(pool, sizeof(ngx_http_matrix_http_req_t));
    if (hr == NULL) {
        return NULL;
    }

    cln = ngx_pool_cleanup_add(pool, 0);
    if (cln == NULL) {
        return NULL;
    }

    cln->handler = ngx_http_matrix_http_cleanup;
    cln->data = hr;

    hr->conf = hcf;
    hr->pool = pool;
    hr->log = log;
    hr->port = 443;
    hr->tls = 1;
    ngx_str_set(&hr->method, "GET");

    hr->deadline.handler = ngx_http_matrix_http_deadline_handler;
    hr->deadline.data = hr;
    hr->deadline.log = log;

    hr->reply.handler = ngx_http_matrix_http_reply_handler;
    hr->reply.data = hr;
    hr->reply.log = log;

    return hr;
}


ngx_int_t
ngx_http_matrix_http_send(ngx_http_matrix_http_req_t *hr)
{
    u_char              *p;
    ngx_addr_t          *addr;
    ngx_resolver_ctx_t  *ctx;

    if (hr->running || hr->abandoned) {
        return NGX_ERROR;
    }

    hr->running = 1;
    hr->status = 0;
    hr->error.len = 0;
    hr->response.len = 0;
    hr->next_addr = 0;

    if (hr->tls && hr->conf->ssl == NULL) {
        ngx_http_matrix_http_fail(hr, "no CA bundle to verify TLS with");
        return NGX_OK;
    }

    if (hr->host_header.len == 0) {
        p = ngx_pnalloc(hr->pool, hr->host.len + sizeof(":65535") + 2);
        if (p == NULL) {
            return NGX_ERROR;
        }

        hr->host_header.data = p;

        if (ngx_strlchr(hr->host.data, hr->host.data + hr->host.len, ':')) {
            /* an IPv6 literal */
            p = ngx_sprintf(p, "[%V]", &hr->host);

        } else {
            p = ngx_cpymem(p, hr->host.data, hr->host.len);
        }

        if (hr->port != (hr->tls ? 443 : 80)) {
            p = ngx_sprintf(p, ":%d", (int) hr->port);
        }

        hr->host_header.len = p - hr->host_header.data;
    }

    if (hr->tls_name.len == 0) {
        hr->tls_name = hr->host;
    }

    if (hr->sign_key && ngx_http_matrix_http_sign(hr) != NGX_OK) {
        return NGX_OK;
    }

    ngx_add_timer(&hr->deadline, hr->timeout ? hr->timeout
                                             : hr->conf->timeout);

    /* an address literal needs no lookup */

    addr = ngx_pcalloc(hr->pool, sizeof(ngx_addr_t));
    if (addr == NULL) {
        return NGX_ERROR;
    }

    if (ngx_parse_addr(hr->pool, addr, hr->host.data, hr->host.len)
        == NGX_OK)
    {
        ngx_inet_set_port(addr->sockaddr, hr->port);
        hr->addrs = addr;
        hr->naddrs = 1;
        ngx_http_matrix_http_connect(hr);
        return NGX_OK;
    }

    if (hr->conf->resolver == NULL) {
        ngx_http_matrix_http_fail(hr, "cannot look up \"%V\": no "
                                  "\"matrix_federation_resolver\"",
                                  &hr->host);
        return NGX_OK;
    }

    ctx = ngx_resolve_start(hr->conf->resolver, NULL);
    if (ctx == NULL) {
        ngx_http_matrix_http_fail(hr, "out of memory");
        return NGX_OK;
    }

    if (ctx == NGX_NO_RESOLVER) {
        ngx_http_matrix_http_fail(hr, "no resolver");
        return NGX_OK;
    }

    ctx->name = hr->host;
    ctx->handler = ngx_http_matrix_http_resolved;
    ctx->data = hr;
    ctx->timeout = hr->conf->resolver_timeout;
    ctx->cancelable = 1;

    hr->resolving = ctx;

    if (ngx_resolve_name(ctx) != NGX_OK) {
        /* ngx_resolve_name() has freed ctx */
        hr->resolving = NULL;
        ngx_http_matrix_http_fail(hr, "cannot look \"%V\" up", &hr->host);
        return NGX_OK;
    }

    return NGX_OK;
}


/* every request the module sends to another server is X-Matrix signed */

static ngx_int_t
ngx_http_matrix_http_sign(ngx_http_matrix_http_req_t *hr)
{
    json_t                *content;
    mx_buf_t               out;
    mx_err_t               err;
    mx_xmatrix_request_t   req;

    content = NULL;

    if (hr->body.len) {
        content = mx_json_parse((char *) hr->body.data, hr->body.len,
                                MX_JSON_STRICT, &err);
        if (content == NULL) {
            ngx_http_matrix_http_fail(hr, "the request body is not JSON to "
                                      "sign: %s", err.msg);
            return NGX_ERROR;
        }
    }

    ngx_memzero(&req, sizeof(mx_xmatrix_request_t));

    req.method = (char *) hr->method.data;
    req.method_len = hr->method.len;
    req.uri = (char *) hr->uri.data;
    req.uri_len = hr->uri.len;
    req.origin = (char *) hr->origin.data;
    req.origin_len = hr->origin.len;
    req.destination = (char *) hr->destination.data;
    req.destination_len = hr->destination.len;
    req.content = content;

    mx_buf_init(&out);

    if (mx_xmatrix_sign(&req, hr->sign_key, &out, &err) != MX_OK) {
        json_decref(content);
        mx_buf_free(&out);
        ngx_http_matrix_http_fail(hr, "cannot sign the request: %s",
                                  err.msg);
        return NGX_ERROR;
    }

    json_decref(content);

    hr->authorization.data = ngx_pnalloc(hr->pool, out.len);
    if (hr->authorization.data == NULL) {
        mx_buf_free(&out);
        ngx_http_matrix_http_fail(hr, "out of memory");
        return NGX_ERROR;
    }

    ngx_memcpy(hr->authorization.data, out.data, out.len);
    hr->authorization.len = out.len;

    mx_buf_free(&out);

    return NGX_OK;
}


static void
ngx_http_matrix_http_resolved(ngx_resolver_ctx_t *ctx)
{
    ngx_uint_t                   i;
    ngx_http_matrix_http_req_t  *hr;

    hr = ctx->data;
    hr->resolving = NULL;

    if (ctx->state) {
        ngx_http_matrix_http_fail(hr, "cannot resolve \"%V\": %s",
                                  &ctx->name,
                                  ngx_resolver_strerror(ctx->state));
        ngx_resolve_name_done(ctx);
        return;
    }

    hr->addrs = ngx_pcalloc(hr->pool, ctx->naddrs * sizeof(ngx_addr_t));
    if (hr->addrs == NULL) {
        ngx_resolve_name_done(ctx);
        ngx_http_matrix_http_fail(hr, "out of memory");
        return;
    }

    for (i = 0; i < ctx->naddrs; i++) {
        hr->addrs[i].socklen = ctx->addrs[i].socklen;
        hr->addrs[i].sockaddr = ngx_palloc(hr->pool, ctx->addrs[i].socklen);
        if (hr->addrs[i].sockaddr == NULL) {
            ngx_resolve_name_done(ctx);
            ngx_http_matrix_http_fail(hr, "out of memory");
            return;
        }

        ngx_memcpy(hr->addrs[i].sockaddr, ctx->addrs[i].sockaddr,
                   ctx->addrs[i].socklen);
        ngx_inet_set_port(hr->addrs[i].sockaddr, hr->port);
    }

    hr->naddrs = ctx->naddrs;

    ngx_resolve_name_done(ctx);

    ngx_http_matrix_http_connect(hr);
}


/* the next address that is allowed: a kept connection, else a new one */

static void
ngx_http_matrix_http_connect(ngx_http_matrix_http_req_t *hr)
{
    u_char                       *p;
    ngx_int_t                     rc;
    ngx_addr_t                   *addr;
    const char                   *why;
    ngx_connection_t             *c;
    ngx_http_matrix_http_conn_t  *hc;
    u_char                        text[NGX_SOCKADDR_STRLEN];

    while (hr->next_addr < hr->naddrs) {

        addr = &hr->addrs[hr->next_addr++];

        why = hr->internal
              ? NULL : ngx_http_matrix_http_forbidden(hr->conf, addr->sockaddr);

        if (why) {
            (void) ngx_sock_ntop(addr->sockaddr, addr->socklen, text,
                                 NGX_SOCKADDR_STRLEN, 0);
            ngx_log_error(NGX_LOG_WARN, hr->log, 0,
                          "matrix federation: not connecting to %s for "
                          "\"%V\": %s address (matrix_federation_allow_ip)",
                          text, &hr->host, why);

            p = ngx_snprintf(hr->errbuf, sizeof(hr->errbuf) - 1,
                             "%V resolves to a %s address, which is not "
                             "allowed", &hr->host, why);
            *p = '\0';
            continue;
        }

        hc = hr->reused ? NULL
                        : ngx_http_matrix_http_idle_get(hr->conf, addr,
                                                        hr->tls ? &hr->tls_name
                                                                : NULL);
        if (hc) {
            hr->reused = 1;
            hr->conn = hc;
            hc->hr = hr;
            hc->kept = 1;

            if (ngx_http_matrix_http_request_bytes(hc) != NGX_OK) {
                ngx_http_matrix_http_failed(hc, "out of memory");
                return;
            }

            hc->phase = NGX_HTTP_MATRIX_HTTP_WRITING;
            ngx_http_matrix_http_write_handler(hc->peer.connection->write);
            return;
        }

        hc = ngx_calloc(sizeof(ngx_http_matrix_http_conn_t), hr->log);
        if (hc == NULL) {
            ngx_http_matrix_http_fail(hr, "out of memory");
            return;
        }

        hc->pool = ngx_create_pool(4096, hr->conf->log);
        if (hc->pool == NULL) {
            ngx_free(hc);
            ngx_http_matrix_http_fail(hr, "out of memory");
            return;
        }

        hc->conf = hr->conf;
        hc->hr = hr;
        hr->conn = hc;
        ngx_queue_init(&hc->queue);

        ngx_memcpy(hc->sockaddr, addr->sockaddr, addr->socklen);
        hc->socklen = addr->socklen;

        hc->addr_text.data = ngx_pnalloc(hc->pool, NGX_SOCKADDR_STRLEN);
        if (hc->addr_text.data == NULL) {
            ngx_http_matrix_http_failed(hc, "out of memory");
            return;
        }

        hc->addr_text.len = ngx_sock_ntop((struct sockaddr *) hc->sockaddr,
                                          hc->socklen, hc->addr_text.data,
                                          NGX_SOCKADDR_STRLEN, 1);

        if (hr->tls) {
            hc->tls_name.data = ngx_pstrdup(hc->pool, &hr->tls_name);
            if (hc->tls_name.data == NULL) {
                ngx_http_matrix_http_failed(hc, "out of memory");
                return;
            }

            hc->tls_name.len = hr->tls_name.len;
        }

        hc->peer.sockaddr = (struct sockaddr *) hc->sockaddr;
        hc->peer.socklen = hc->socklen;
        hc->peer.name = &hc->addr_text;
        hc->peer.get = ngx_event_get_peer;
        hc->peer.log = hr->conf->log;
        hc->peer.log_error = NGX_ERROR_ERR;

        rc = ngx_event_connect_peer(&hc->peer);

        if (rc == NGX_ERROR || rc == NGX_BUSY || rc == NGX_DECLINED) {
            p = ngx_snprintf(hr->errbuf, sizeof(hr->errbuf) - 1,
                             "cannot connect to %V", &hc->addr_text);
            *p = '\0';

            hr->conn = NULL;
            ngx_http_matrix_http_close(hc);
            continue;
        }

        c = hc->peer.connection;
        c->data = hc;
        c->pool = hc->pool;
        c->read->handler = ngx_http_matrix_http_read_handler;
        c->write->handler = ngx_http_matrix_http_write_handler;

        hc->phase = NGX_HTTP_MATRIX_HTTP_CONNECTING;

        if (rc == NGX_AGAIN) {
            ngx_add_timer(c->write, ngx_min(hr->conf->timeout, 10000));
            return;
        }

        ngx_http_matrix_http_connected(hc);
        return;
    }

    ngx_http_matrix_http_fail(hr, "%s", hr->errbuf[0]
                                        ? (char *) hr->errbuf
                                        : "no address to connect to");
}


static ngx_http_matrix_http_conn_t *
ngx_http_matrix_http_idle_get(ngx_http_matrix_http_conf_t *conf,
    ngx_addr_t *addr, ngx_str_t *tls_name)
{
    ngx_queue_t                  *q;
    ngx_http_matrix_http_conn_t  *hc;

    for (q = ngx_queue_head(&conf->idle);
         q != ngx_queue_sentinel(&conf->idle);
         q = ngx_queue_next(q))
    {
        hc = ngx_queue_data(q, ngx_http_matrix_http_conn_t, queue);

        if (ngx_cmp_sockaddr((struct sockaddr *) hc->sockaddr, hc->socklen,
                             addr->sockaddr, addr->socklen, 1)
            != NGX_OK)
        {
            continue;
        }

        if ((tls_name == NULL) != (hc->tls_name.len == 0)) {
            continue;
        }

        if (tls_name
            && (tls_name->len != hc->tls_name.len
                || ngx_strncasecmp(tls_name->data, hc->tls_name.data,
                                   tls_name->len) != 0))
        {
            continue;
        }

        /*
         * Something arrived while it idled (a late answer, a goodbye): it
         * is not the next request's answer, the connection is not used.
         */

        if (hc->peer.connection->read->ready
            || (hc->peer.connection->ssl
                && SSL_pending(hc->peer.connection->ssl->connection)))
        {
            q = ngx_queue_prev(q);
            ngx_http_matrix_http_close(hc);
            continue;
        }

        ngx_queue_remove(q);
        ngx_queue_init(q);
        conf->nidle--;
        hc->phase = NGX_HTTP_MATRIX_HTTP_WRITING;
        hc->peer.connection->idle = 0;

        if (hc->peer.connection->read->timer_set) {
            ngx_del_timer(hc->peer.connection->read);
        }

        hc->peer.connection->read->handler =
                                          ngx_http_matrix_http_read_handler;

        return hc;
    }

    return NULL;
}


static void
ngx_http_matrix_http_connected(ngx_http_matrix_http_conn_t *hc)
{
    int                          err;
    socklen_t                    len;
    ngx_int_t                    rc;
    ngx_connection_t            *c;
    ngx_http_matrix_http_req_t  *hr;

    c = hc->peer.connection;
    hr = hc->hr;

    if (c->write->timer_set) {
        ngx_del_timer(c->write);
    }

    err = 0;
    len = sizeof(int);

    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, (void *) &err, &len) == -1) {
        err = ngx_socket_errno;
    }

    if (err) {
        (void) ngx_snprintf(hr->errbuf, sizeof(hr->errbuf) - 1,
                            "cannot connect to %V: %s%Z", &hc->addr_text,
                            strerror(err));
        hr->conn = NULL;
        ngx_http_matrix_http_close(hc);
        ngx_http_matrix_http_connect(hr);
        return;
    }

    if (hc->tls_name.len == 0) {
        if (ngx_http_matrix_http_request_bytes(hc) != NGX_OK) {
            ngx_http_matrix_http_failed(hc, "out of memory");
            return;
        }

        hc->phase = NGX_HTTP_MATRIX_HTTP_WRITING;
        ngx_http_matrix_http_write_handler(c->write);
        return;
    }

    if (ngx_ssl_create_connection(hc->conf->ssl, c,
                                  NGX_SSL_BUFFER|NGX_SSL_CLIENT)
        != NGX_OK)
    {
        ngx_http_matrix_http_failed(hc, "cannot start TLS");
        return;
    }

    /* SNI for names, not for address literals (RFC 6066) */

    if (ngx_strlchr(hc->tls_name.data, hc->tls_name.data + hc->tls_name.len,
                    ':') == NULL
        && ngx_inet_addr(hc->tls_name.data, hc->tls_name.len) == INADDR_NONE)
    {
        /* hc->tls_name was copied by ngx_pstrdup(): NUL-terminate it */
        u_char  *name;

        name = ngx_pnalloc(hc->pool, hc->tls_name.len + 1);
        if (name == NULL) {
            ngx_http_matrix_http_failed(hc, "out of memory");
            return;
        }

        *ngx_cpymem(name, hc->tls_name.data, hc->tls_name.len) = '\0';

        if (SSL_set_tlsext_host_name(c->ssl->connection, (char *) name) == 0)
        {
            ngx_http_matrix_http_failed(hc, "cannot set the TLS server name");
            return;
        }
    }

    hc->phase = NGX_HTTP_MATRIX_HTTP_HANDSHAKE;

    rc = ngx_ssl_handshake(c);

    if (rc == NGX_AGAIN) {
        ngx_add_timer(c->write, ngx_min(hc->conf->timeout, 10000));
        c->ssl->handler = ngx_http_matrix_http_handshake;
        return;
    }

    ngx_http_matrix_http_handshake(c);
}


/*
 * The spec asks a certificate valid for the IP address when the server
 * name is an IP literal; ngx_ssl_check_host() matches DNS names only.
 */

static ngx_int_t
ngx_http_matrix_http_check_name(ngx_connection_t *c, ngx_str_t *name)
{
    int        rc;
    X509      *cert;
    ngx_addr_t addr;
    u_char     text[NGX_SOCKADDR_STRLEN + 1];

    if (ngx_parse_addr(c->pool, &addr, name->data, name->len) != NGX_OK) {
        return ngx_ssl_check_host(c, name);
    }

    if (name->len > NGX_SOCKADDR_STRLEN) {
        return NGX_ERROR;
    }

    *ngx_cpymem(text, name->data, name->len) = '\0';

    cert = SSL_get_peer_certificate(c->ssl->connection);
    if (cert == NULL) {
        return NGX_ERROR;
    }

    rc = X509_check_ip_asc(cert, (char *) text, 0);
    X509_free(cert);

    return (rc == 1) ? NGX_OK : NGX_ERROR;
}


static void
ngx_http_matrix_http_handshake(ngx_connection_t *c)
{
    long                          rc;
    ngx_http_matrix_http_conn_t  *hc;

    hc = c->data;

    /* ngx_ssl_handshake() put its own handlers in while it waited */
    c->read->handler = ngx_http_matrix_http_read_handler;
    c->write->handler = ngx_http_matrix_http_write_handler;

    if (c->write->timer_set) {
        ngx_del_timer(c->write);
    }

    if (!c->ssl->handshaked) {
        ngx_http_matrix_http_failed(hc, "TLS handshake failed");
        return;
    }

    rc = SSL_get_verify_result(c->ssl->connection);

    if (rc != X509_V_OK) {
        (void) ngx_snprintf(hc->hr->errbuf, sizeof(hc->hr->errbuf) - 1,
                            "the certificate of %V (%V) is not trusted: "
                            "%s%Z", &hc->tls_name, &hc->addr_text,
                            X509_verify_cert_error_string(rc));
        ngx_http_matrix_http_failed(hc, (char *) hc->hr->errbuf);
        return;
    }

    if (ngx_http_matrix_http_check_name(c, &hc->tls_name) != NGX_OK) {
        (void) ngx_snprintf(hc->hr->errbuf, sizeof(hc->hr->errbuf) - 1,
                            "the certificate of %V is not for \"%V\"%Z",
                            &hc->addr_text, &hc->tls_name);
        ngx_http_matrix_http_failed(hc, (char *) hc->hr->errbuf);
        return;
    }

    if (ngx_http_matrix_http_request_bytes(hc) != NGX_OK) {
        ngx_http_matrix_http_failed(hc, "out of memory");
        return;
    }

    hc->phase = NGX_HTTP_MATRIX_HTTP_WRITING;

    ngx_http_matrix_http_write_handler(c->write);
}


/* the request, and a fresh start for the response */

static ngx_int_t
ngx_http_matrix_http_request_bytes(ngx_http_matrix_http_conn_t *hc)
{
    size_t                       len;
    ngx_buf_t                   *b;
    ngx_http_matrix_http_req_t  *hr;

    hr = hc->hr;

    len = hr->method.len + 1 + hr->uri.len + sizeof(" HTTP/1.1\r\n") - 1
          + sizeof("Host: \r\n") - 1 + hr->host_header.len
          + sizeof("User-Agent: " NGX_HTTP_MATRIX_SERVER_NAME "/"
                   NGX_HTTP_MATRIX_VERSION "\r\n") - 1
          + sizeof("Accept: application/json\r\n") - 1
          + sizeof("\r\n") - 1;

    if (hr->authorization.len) {
        len += sizeof("Authorization: \r\n") - 1 + hr->authorization.len;
    }

    if (hr->body.len) {
        len += sizeof("Content-Type: application/json\r\n") - 1
               + sizeof("Content-Length: \r\n") - 1 + NGX_SIZE_T_LEN
               + hr->body.len;
    }

    b = ngx_create_temp_buf(hc->pool, len);
    if (b == NULL) {
        return NGX_ERROR;
    }

    b->last = ngx_sprintf(b->last, "%V %V HTTP/1.1\r\nHost: %V\r\n"
                          "User-Agent: " NGX_HTTP_MATRIX_SERVER_NAME "/"
                          NGX_HTTP_MATRIX_VERSION "\r\n"
                          "Accept: application/json\r\n",
                          &hr->method, &hr->uri, &hr->host_header);

    if (hr->authorization.len) {
        b->last = ngx_sprintf(b->last, "Authorization: %V\r\n",
                              &hr->authorization);
    }

    if (hr->body.len) {
        b->last = ngx_sprintf(b->last, "Content-Type: application/json\r\n"
                              "Content-Length: %uz\r\n\r\n%V",
                              hr->body.len, &hr->body);

    } else {
        *b->last++ = '\r';
        *b->last++ = '\n';
    }

    hc->out = b;

    hc->in = ngx_create_temp_buf(hc->pool, NGX_HTTP_MATRIX_HTTP_HEADER_MAX);
    if (hc->in == NULL) {
        return NGX_ERROR;
    }

    hc->body = NULL;
    hc->body_len = 0;
    hc->body_cap = 0;
    hc->content_length = -1;
    hc->chunk_state = NGX_HTTP_MATRIX_CHUNK_SIZE;
    hc->chunk_left = 0;
    hc->chunk_digits = 0;
    hc->status = 0;
    hc->chunked = 0;
    hc->close = 0;
    hc->got_bytes = 0;
    ngx_str_null(&hc->content_type);
    ngx_str_null(&hc->location);
    ngx_str_null(&hc->cache_control);
    ngx_str_null(&hc->expires);

    return NGX_OK;
}


static void
ngx_http_matrix_http_write_handler(ngx_event_t *wev)
{
    ssize_t                       n;
    ngx_connection_t             *c;
    ngx_http_matrix_http_req_t   *hr;
    ngx_http_matrix_http_conn_t  *hc;

    c = wev->data;
    hc = c->data;

    if (hc->phase == NGX_HTTP_MATRIX_HTTP_CONNECTING) {
        if (wev->timedout) {
            (void) ngx_snprintf(hc->hr->errbuf, sizeof(hc->hr->errbuf) - 1,
                                "connecting to %V timed out%Z",
                                &hc->addr_text);
            hr = hc->hr;
            hr->conn = NULL;
            ngx_http_matrix_http_close(hc);
            ngx_http_matrix_http_connect(hr);
            return;
        }

        ngx_http_matrix_http_connected(hc);
        return;
    }

    if (hc->phase != NGX_HTTP_MATRIX_HTTP_WRITING) {
        return;
    }

    while (hc->out->pos < hc->out->last) {
        n = c->send(c, hc->out->pos, hc->out->last - hc->out->pos);

        if (n == NGX_AGAIN) {
            if (ngx_handle_write_event(wev, 0) != NGX_OK) {
                ngx_http_matrix_http_failed(hc, "cannot wait to write");
            }
            return;
        }

        if (n == NGX_ERROR) {
            ngx_http_matrix_http_failed(hc, "cannot send the request");
            return;
        }

        hc->out->pos += n;
    }

    hc->phase = NGX_HTTP_MATRIX_HTTP_HEADERS;

    /* the response may be there already */
    ngx_http_matrix_http_read_handler(c->read);
}


static void
ngx_http_matrix_http_read_handler(ngx_event_t *rev)
{
    size_t                        size;
    ssize_t                       n;
    ngx_int_t                     rc;
    ngx_connection_t             *c;
    ngx_http_matrix_http_conn_t  *hc;
    u_char                        buf[16384];

    c = rev->data;
    hc = c->data;

    if (hc->phase == NGX_HTTP_MATRIX_HTTP_IDLE) {
        ngx_http_matrix_http_idle_handler(rev);
        return;
    }

    if (hc->phase != NGX_HTTP_MATRIX_HTTP_HEADERS
        && hc->phase != NGX_HTTP_MATRIX_HTTP_BODY)
    {
        return;
    }

    for ( ;; ) {

        if (hc->phase == NGX_HTTP_MATRIX_HTTP_HEADERS) {
            size = hc->in->end - hc->in->last;

            if (size == 0) {
                ngx_http_matrix_http_failed(hc, "response headers too large");
                return;
            }

            n = c->recv(c, hc->in->last, size);

        } else {
            n = c->recv(c, buf, sizeof(buf));
        }

        if (n == NGX_AGAIN) {
            break;
        }

        if (n == NGX_ERROR || n == 0) {

            if (hc->phase == NGX_HTTP_MATRIX_HTTP_BODY
                && hc->content_length == -1 && !hc->chunked && n == 0)
            {
                /* a body delimited by the end of the connection */
                hc->close = 1;
                ngx_http_matrix_http_done(hc);
                return;
            }

            ngx_http_matrix_http_failed(hc, (n == 0)
                                        ? "connection closed early"
                                        : "cannot read the response");
            return;
        }

        hc->got_bytes = 1;

        if (hc->phase == NGX_HTTP_MATRIX_HTTP_HEADERS) {
            hc->in->last += n;

            rc = ngx_http_matrix_http_parse_headers(hc);

            if (rc == NGX_AGAIN) {
                continue;
            }

            if (rc != NGX_OK) {
                ngx_http_matrix_http_failed(hc, (char *) hc->hr->errbuf);
                return;
            }

            hc->phase = NGX_HTTP_MATRIX_HTTP_BODY;

            /* what came with the headers */
            rc = ngx_http_matrix_http_body(hc, hc->in->pos,
                                           hc->in->last - hc->in->pos);

        } else {
            rc = ngx_http_matrix_http_body(hc, buf, n);
        }

        if (rc == NGX_OK) {
            ngx_http_matrix_http_done(hc);
            return;
        }

        if (rc == NGX_ERROR) {
            ngx_http_matrix_http_failed(hc, (char *) hc->hr->errbuf);
            return;
        }
    }

    if (ngx_handle_read_event(rev, 0) != NGX_OK) {
        ngx_http_matrix_http_failed(hc, "cannot wait to read");
    }
}


/* a kept connection: anything from the server now means it is going */

static void
ngx_http_matrix_http_idle_handler(ngx_event_t *ev)
{
    ngx_connection_t             *c;
    ngx_http_matrix_http_conn_t  *hc;
    u_char                        buf[1];

    c = ev->data;
    hc = c->data;

    /* c->close: the worker is shutting down */

    if (!ev->timedout && !c->close) {
        if (c->recv(c, buf, 1) == NGX_AGAIN) {
            if (ngx_handle_read_event(ev, 0) == NGX_OK) {
                return;
            }
        }
    }

    ngx_http_matrix_http_close(hc);
}


/*
 * Status line and headers, once they are all there.  Only what the
 * client needs is looked at; obsolete line folding is refused.
 */

static ngx_int_t ngx_http_matrix_http_parse_block(
    ngx_http_matrix_http_conn_t *hc);


/* interim 1xx responses are read past: the caller gets the final one */

static ngx_int_t
ngx_http_matrix_http_parse_headers(ngx_http_matrix_http_conn_t *hc)
{
    ngx_int_t  rc;

    for ( ;; ) {
        rc = ngx_http_matrix_http_parse_block(hc);

        if (rc != NGX_OK) {
            return rc;
        }

        if (hc->status >= 200 || hc->status == 101) {
            if (hc->status == 101) {
                /* no upgrade was asked for: the connection is not kept */
                hc->close = 1;
            }

            return NGX_OK;
        }

        hc->content_length = -1;
        hc->chunked = 0;
        ngx_str_null(&hc->content_type);
        ngx_str_null(&hc->location);

        if (hc->in->pos == hc->in->last) {
            hc->in->pos = hc->in->start;
            hc->in->last = hc->in->start;
            return NGX_AGAIN;
        }
    }
}


static ngx_int_t
ngx_http_matrix_http_parse_block(ngx_http_matrix_http_conn_t *hc)
{
    u_char                      *p, *end, *line, *colon, *eol, *v, *ve, *ch;
    size_t                       nlen;
    ngx_int_t                    n;
    ngx_http_matrix_http_req_t  *hr;

    hr = hc->hr;
    p = hc->in->pos;
    end = hc->in->last;

    /* wait for the empty line */

    if (ngx_strlcasestrn(p, end, (u_char *) "\r\n\r\n", 4 - 1) == NULL) {
        return NGX_AGAIN;
    }

    if (end - p < 12 || ngx_strncmp(p, "HTTP/1.", 7) != 0
        || (p[7] != '0' && p[7] != '1') || p[8] != ' ')
    {
        (void) ngx_snprintf(hr->errbuf, sizeof(hr->errbuf) - 1,
                            "%V did not answer in HTTP/1.x%Z",
                            &hc->addr_text);
        return NGX_ERROR;
    }

    if (p[7] == '0') {
        hc->close = 1;
    }

    n = ngx_atoi(p + 9, 3);
    if (n < 100 || n > 599 || (p[12] != ' ' && p[12] != '\r')) {
        (void) ngx_snprintf(hr->errbuf, sizeof(hr->errbuf) - 1,
                            "%V sent a bad status line%Z", &hc->addr_text);
        return NGX_ERROR;
    }

    hc->status = n;

    eol = ngx_strlcasestrn(p, end, (u_char *) "\r\n", 2 - 1);
    line = eol + 2;

    for ( ;; ) {
        eol = ngx_strlcasestrn(line, end, (u_char *) "\r\n", 2 - 1);

        if (eol == line) {
            break;
        }

        if (*line == ' ' || *line == '\t') {
            (void) ngx_snprintf(hr->errbuf, sizeof(hr->errbuf) - 1,
                                "%V folded a header line%Z", &hc->addr_text);
            return NGX_ERROR;
        }

        colon = ngx_strlchr(line, eol, ':');
        if (colon == NULL || colon == line) {
            (void) ngx_snprintf(hr->errbuf, sizeof(hr->errbuf) - 1,
                                "%V sent a bad header line%Z",
                                &hc->addr_text);
            return NGX_ERROR;
        }

        nlen = colon - line;

        v = colon + 1;
        while (v < eol && (*v == ' ' || *v == '\t')) {
            v++;
        }

        ve = eol;
        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t')) {
            ve--;
        }

        for (ch = v; ch < ve; ch++) {
            if ((*ch < 0x20 && *ch != '\t') || *ch == 0x7f) {
                (void) ngx_snprintf(hr->errbuf, sizeof(hr->errbuf) - 1,
                                    "%V sent a control character in a "
                                    "header%Z", &hc->addr_text);
                return NGX_ERROR;
            }
        }

        if (nlen == sizeof("Content-Length") - 1
            && ngx_strncasecmp(line, (u_char *) "Content-Length", nlen) == 0)
        {
            n = ngx_atoof(v, ve - v);

            if (n == NGX_ERROR
                || (hc->content_length != -1 && hc->content_length != n))
            {
                (void) ngx_snprintf(hr->errbuf, sizeof(hr->errbuf) - 1,
                                    "%V sent a bad Content-Length%Z",
                                    &hc->addr_text);
                return NGX_ERROR;
            }

            hc->content_length = n;

        } else if (nlen == sizeof("Transfer-Encoding") - 1
                   && ngx_strncasecmp(line, (u_char *) "Transfer-Encoding",
                                      nlen) == 0)
        {
            if (ve - v == 7 && ngx_strncasecmp(v, (u_char *) "chunked", 7)
                               == 0)
            {
                hc->chunked = 1;

            } else {
                (void) ngx_snprintf(hr->errbuf, sizeof(hr->errbuf) - 1,
                                    "%V sent an unsupported "
                                    "Transfer-Encoding%Z", &hc->addr_text);
                return NGX_ERROR;
            }

        } else if (nlen == sizeof("Connection") - 1
                   && ngx_strncasecmp(line, (u_char *) "Connection", nlen)
                      == 0)
        {
            if (ngx_strlcasestrn(v, ve, (u_char *) "close", 5 - 1)) {
                hc->close = 1;
            }

        } else if (nlen == sizeof("Content-Type") - 1
                   && ngx_strncasecmp(line, (u_char *) "Content-Type", nlen)
                      == 0)
        {
            hc->content_type.data = v;
            hc->content_type.len = ve - v;

        } else if (nlen == sizeof("Location") - 1
                   && ngx_strncasecmp(line, (u_char *) "Location", nlen) == 0)
        {
            hc->location.data = v;
            hc->location.len = ve - v;

        } else if (nlen == sizeof("Cache-Control") - 1
                   && ngx_strncasecmp(line, (u_char *) "Cache-Control", nlen)
                      == 0)
        {
            hc->cache_control.data = v;
            hc->cache_control.len = ve - v;

        } else if (nlen == sizeof("Expires") - 1
                   && ngx_strncasecmp(line, (u_char *) "Expires", nlen) == 0)
        {
            hc->expires.data = v;
            hc->expires.len = ve - v;
        }

        line = eol + 2;
    }

    if (hc->chunked) {
        /* a message with both is refused by RFC 9112 as smuggling bait */
        if (hc->content_length != -1) {
            (void) ngx_snprintf(hr->errbuf, sizeof(hr->errbuf) - 1,
                                "%V sent both Content-Length and "
                                "Transfer-Encoding%Z", &hc->addr_text);
            return NGX_ERROR;
        }
    }

    if (hc->content_length > (off_t) (hr->max_response
                                      ? hr->max_response
                                      : NGX_HTTP_MATRIX_HTTP_BODY_MAX))
    {
        (void) ngx_snprintf(hr->errbuf, sizeof(hr->errbuf) - 1,
                            "the response of %V is too large%Z",
                            &hc->addr_text);
        return NGX_ERROR;
    }

    hc->in->pos = eol + 2;

    return NGX_OK;
}


/* body bytes: NGX_OK when the body is complete, NGX_AGAIN for more */

static ngx_int_t
ngx_http_matrix_http_body(ngx_http_matrix_http_conn_t *hc, u_char *p,
    size_t len)
{
    u_char                      *end;
    size_t                       n;
    ngx_int_t                    d;
    ngx_http_matrix_http_req_t  *hr;

    hr = hc->hr;

    if ((hc->status >= 100 && hc->status < 200) || hc->status == 204
        || hc->status == 304
        || (hr->method.len == 4
            && ngx_strncmp(hr->method.data, "HEAD", 4) == 0))
    {
        if (len) {
            /* bytes after a response without a body: not kept */
            hc->close = 1;
        }

        return NGX_OK;
    }

    if (!hc->chunked) {
        if (hc->content_length >= 0) {
            n = ngx_min((off_t) len, hc->content_length
                                     - (off_t) hc->body_len);

            if (n < len) {
                /* bytes past the end: the connection cannot be kept */
                hc->close = 1;
            }

            if (ngx_http_matrix_http_body_append(hc, p, n) != NGX_OK) {
                return NGX_ERROR;
            }

            return ((off_t) hc->body_len == hc->content_length) ? NGX_OK
                                                                : NGX_AGAIN;
        }

        /* until the connection closes */
        return (ngx_http_matrix_http_body_append(hc, p, len) == NGX_OK)
               ? NGX_AGAIN : NGX_ERROR;
    }

    end = p + len;

    while (p < end) {

        switch (hc->chunk_state) {

        case NGX_HTTP_MATRIX_CHUNK_SIZE:
            if (*p == '\r' && hc->chunk_digits) {
                hc->chunk_state = NGX_HTTP_MATRIX_CHUNK_SIZE_LF;
                p++;
                break;
            }

            if (*p == ';' && hc->chunk_digits) {
                hc->chunk_state = NGX_HTTP_MATRIX_CHUNK_EXT;
                p++;
                break;
            }

            d = ngx_hextoi(p, 1);
            if (d == NGX_ERROR || hc->chunk_left > (NGX_MAX_OFF_T_VALUE >> 4)) {
                goto invalid;
            }

            hc->chunk_left = hc->chunk_left * 16 + d;
            hc->chunk_digits++;

            if (hc->chunk_left > (off_t) NGX_HTTP_MATRIX_HTTP_BODY_MAX * 64) {
                goto invalid;
            }

            p++;
            break;

        case NGX_HTTP_MATRIX_CHUNK_EXT:
            if (*p == '\r') {
                hc->chunk_state = NGX_HTTP_MATRIX_CHUNK_SIZE_LF;
            }
            p++;
            break;

        case NGX_HTTP_MATRIX_CHUNK_SIZE_LF:
            if (*p++ != '\n') {
                goto invalid;
            }

            hc->chunk_digits = 0;
            hc->chunk_state = (hc->chunk_left == 0)
                              ? NGX_HTTP_MATRIX_CHUNK_TRAILER
                              : NGX_HTTP_MATRIX_CHUNK_DATA;
            break;

        case NGX_HTTP_MATRIX_CHUNK_DATA:
            n = ngx_min((off_t) (end - p), hc->chunk_left);

            if (ngx_http_matrix_http_body_append(hc, p, n) != NGX_OK) {
                return NGX_ERROR;
            }

            p += n;
            hc->chunk_left -= n;

            if (hc->chunk_left == 0) {
                hc->chunk_state = NGX_HTTP_MATRIX_CHUNK_DATA_CR;
            }
            break;

        case NGX_HTTP_MATRIX_CHUNK_DATA_CR:
            if (*p++ != '\r') {
                goto invalid;
            }
            hc->chunk_state = NGX_HTTP_MATRIX_CHUNK_DATA_LF;
            break;

        case NGX_HTTP_MATRIX_CHUNK_DATA_LF:
            if (*p++ != '\n') {
                goto invalid;
            }
            hc->chunk_state = NGX_HTTP_MATRIX_CHUNK_SIZE;
            break;

        case NGX_HTTP_MATRIX_CHUNK_TRAILER:
            /* trailer fields are skipped; an empty line ends the body */
            if (*p == '\r') {
                hc->chunk_state = NGX_HTTP_MATRIX_CHUNK_LAST_LF;
            } else {
                hc->chunk_state = NGX_HTTP_MATRIX_CHUNK_TRAILER_LF;
            }
            p++;
            break;

        case NGX_HTTP_MATRIX_CHUNK_TRAILER_LF:
            if (*p++ == '\n') {
                hc->chunk_state = NGX_HTTP_MATRIX_CHUNK_TRAILER;
            }
            break;

        case NGX_HTTP_MATRIX_CHUNK_LAST_LF:
            if (*p++ != '\n') {
                goto invalid;
            }

            hc->chunk_state = NGX_HTTP_MATRIX_CHUNK_DONE;

            if (p != end) {
                /* bytes past the end: the connection cannot be kept */
                hc->close = 1;
            }

            return NGX_OK;

        case NGX_HTTP_MATRIX_CHUNK_DONE:
            return NGX_OK;
        }
    }

    return NGX_AGAIN;

invalid:

    (void) ngx_snprintf(hr->errbuf, sizeof(hr->errbuf) - 1,
                        "%V sent a bad chunked body%Z", &hc->addr_text);
    return NGX_ERROR;
}


static ngx_int_t
ngx_http_matrix_http_body_append(ngx_http_matrix_http_conn_t *hc, u_char *p,
    size_t len)
{
    u_char                      *nb;
    size_t                       max, cap;
    ngx_http_matrix_http_req_t  *hr;

    hr = hc->hr;
    max = hr->max_response ? hr->max_response : NGX_HTTP_MATRIX_HTTP_BODY_MAX;

    if (len == 0) {
        return NGX_OK;
    }

    if (hc->body_len + len > max) {
        (void) ngx_snprintf(hr->errbuf, sizeof(hr->errbuf) - 1,
                            "the response of %V is larger than %uz bytes%Z",
                            &hc->addr_text, max);
        return NGX_ERROR;
    }

    if (hc->body_len + len > hc->body_cap) {
        cap = ngx_max(hc->body_cap * 2, 4096);
        cap = ngx_max(cap, hc->body_len + len);
        cap = ngx_min(cap, max);

        nb = ngx_pnalloc(hr->pool, cap);
        if (nb == NULL) {
            return NGX_ERROR;
        }

        if (hc->body_len) {
            ngx_memcpy(nb, hc->body, hc->body_len);
        }

        hc->body = nb;
        hc->body_cap = cap;
    }

    ngx_memcpy(hc->body + hc->body_len, p, len);
    hc->body_len += len;

    return NGX_OK;
}


/* a whole response: to the request; the connection kept if it may be */

static void
ngx_http_matrix_http_done(ngx_http_matrix_http_conn_t *hc)
{
    ngx_connection_t             *c;
    ngx_http_matrix_http_req_t   *hr;
    ngx_http_matrix_http_conn_t  *oldest;

    hr = hc->hr;
    c = hc->peer.connection;

    hr->status = hc->status;
    hr->response.data = hc->body;
    hr->response.len = hc->body_len;

    /* what points into the connection's buffer is copied out */

    if (hc->content_type.len) {
        hr->content_type.data = ngx_pstrdup(hr->pool, &hc->content_type);
        hr->content_type.len = hr->content_type.data ? hc->content_type.len
                                                     : 0;
    }

    if (hc->location.len) {
        hr->location.data = ngx_pstrdup(hr->pool, &hc->location);
        hr->location.len = hr->location.data ? hc->location.len : 0;
    }

    if (hc->cache_control.len) {
        hr->cache_control.data = ngx_pstrdup(hr->pool, &hc->cache_control);
        hr->cache_control.len = hr->cache_control.data
                                ? hc->cache_control.len : 0;
    }

    if (hc->expires.len) {
        hr->expires.data = ngx_pstrdup(hr->pool, &hc->expires);
        hr->expires.len = hr->expires.data ? hc->expires.len : 0;
    }

    hr->peer = ngx_palloc(hr->pool, hc->socklen);
    if (hr->peer) {
        ngx_memcpy(hr->peer, hc->sockaddr, hc->socklen);
        hr->peer_len = hc->socklen;
    }

    hr->conn = NULL;
    hc->hr = NULL;

    if (hc->close || c->read->eof || c->error) {
        ngx_http_matrix_http_close(hc);

    } else {
        if (hc->conf->nidle >= NGX_HTTP_MATRIX_HTTP_IDLE_MAX) {
            oldest = ngx_queue_data(ngx_queue_last(&hc->conf->idle),
                                    ngx_http_matrix_http_conn_t, queue);
            ngx_http_matrix_http_close(oldest);
        }

        hc->phase = NGX_HTTP_MATRIX_HTTP_IDLE;
        ngx_queue_insert_head(&hc->conf->idle, &hc->queue);
        hc->conf->nidle++;

        c->read->handler = ngx_http_matrix_http_read_handler;
        ngx_add_timer(c->read, NGX_HTTP_MATRIX_HTTP_IDLE_TIMEOUT);

        /* an idle connection does not keep a worker from exiting */
        c->idle = 1;
        c->read->cancelable = 1;
        c->write->cancelable = 1;

        if (ngx_handle_read_event(c->read, 0) != NGX_OK) {
            ngx_http_matrix_http_close(hc);
        }
    }

    ngx_http_matrix_http_reply(hr);
}


/*
 * The connection failed the request.  A kept connection that the server
 * had closed before anything came back is not the server's answer: the
 * request goes again, on a new connection to the same address.
 */

static void
ngx_http_matrix_http_failed(ngx_http_matrix_http_conn_t *hc, const char *why)
{
    ngx_uint_t                   again;
    ngx_http_matrix_http_req_t  *hr;

    hr = hc->hr;

    /* sent again only what may be sent twice */
    again = (hr && hc->kept && !hc->got_bytes
             && !(hr->method.len == 4
                  && ngx_strncmp(hr->method.data, "POST", 4) == 0));

    hc->hr = NULL;
    ngx_http_matrix_http_close(hc);

    if (hr == NULL) {
        return;
    }

    hr->conn = NULL;

    if (again) {
        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, hr->log, 0,
                       "matrix federation: kept connection gone (%s), "
                       "a new one", why);

        /* the same address again, and no kept connection this time */
        hr->next_addr--;
        ngx_http_matrix_http_connect(hr);
        return;
    }

    ngx_http_matrix_http_fail(hr, "%s", why);
}


static void
ngx_http_matrix_http_close(ngx_http_matrix_http_conn_t *hc)
{
    ngx_connection_t  *c;

    if (hc->phase == NGX_HTTP_MATRIX_HTTP_IDLE
        && hc->queue.next && hc->queue.next != &hc->queue)
    {
        ngx_queue_remove(&hc->queue);
        hc->conf->nidle--;
    }

    c = hc->peer.connection;

    if (c) {
#if (NGX_SSL)
        if (c->ssl) {
            c->ssl->no_wait_shutdown = 1;

            if (ngx_ssl_shutdown(c) == NGX_AGAIN) {
                /* close_notify not sent: nobody waits for it, free it */
                SSL_free(c->ssl->connection);
                c->ssl = NULL;
            }
        }
#endif

        c->pool = NULL;     /* ours, destroyed below */
        ngx_close_connection(c);
        hc->peer.connection = NULL;
    }

    if (hc->pool) {
        ngx_destroy_pool(hc->pool);
    }

    ngx_free(hc);
}


/* the request's end: from the event loop, exactly once */

static void
ngx_http_matrix_http_fail(ngx_http_matrix_http_req_t *hr, const char *fmt,
    ...)
{
    u_char   *p;
    va_list   args;
    u_char    tmp[256];

    va_start(args, fmt);
    p = ngx_vslprintf(tmp, tmp + sizeof(tmp) - 1, fmt, args);
    va_end(args);

    hr->status = 0;
    hr->error.len = p - tmp;
    hr->error.data = ngx_pnalloc(hr->pool, hr->error.len);

    if (hr->error.data) {
        ngx_memcpy(hr->error.data, tmp, hr->error.len);

    } else {
        hr->error.len = 0;
    }

    ngx_log_error(NGX_LOG_INFO, hr->log, 0,
                  "matrix federation: %V%V: %V", &hr->host, &hr->uri,
                  &hr->error);

    ngx_http_matrix_http_reply(hr);
}


/*
 * Always posted: the resolver answers from its cache and a kept
 * connection may have the answer at once, both inside send().
 */

static void
ngx_http_matrix_http_reply(ngx_http_matrix_http_req_t *hr)
{
    if (hr->deadline.timer_set) {
        ngx_del_timer(&hr->deadline);
    }

    if (!hr->reply.posted) {
        ngx_post_event(&hr->reply, &ngx_posted_events);
    }
}


static void
ngx_http_matrix_http_reply_handler(ngx_event_t *ev)
{
    ngx_http_matrix_http_req_t  *hr;

    hr = ev->data;
    hr->running = 0;

    if (!hr->abandoned && hr->handler) {
        hr->handler(hr);
    }
}


static void
ngx_http_matrix_http_deadline_handler(ngx_event_t *ev)
{
    ngx_http_matrix_http_req_t  *hr;

    hr = ev->data;

    if (hr->resolving) {
        ngx_resolve_name_done(hr->resolving);
        hr->resolving = NULL;
    }

    if (hr->conn) {
        hr->conn->hr = NULL;
        ngx_http_matrix_http_close(hr->conn);
        hr->conn = NULL;
    }

    ngx_http_matrix_http_fail(hr, "timed out");
}


void
ngx_http_matrix_http_abandon(ngx_http_matrix_http_req_t *hr)
{
    if (hr->abandoned) {
        return;
    }

    hr->abandoned = 1;

    if (hr->resolving) {
        ngx_resolve_name_done(hr->resolving);
        hr->resolving = NULL;
    }

    if (hr->conn) {
        /* mid-request: the connection cannot be reused */
        hr->conn->hr = NULL;
        ngx_http_matrix_http_close(hr->conn);
        hr->conn = NULL;
    }

    if (hr->deadline.timer_set) {
        ngx_del_timer(&hr->deadline);
    }

    if (hr->reply.posted) {
        ngx_delete_posted_event(&hr->reply);
    }
}


static void
ngx_http_matrix_http_cleanup(void *data)
{
    ngx_http_matrix_http_abandon(data);
}
