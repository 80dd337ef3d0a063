/*
 * Server discovery (server-server API, "Resolving server names"), step
 * by step:
 *
 *   1   IP literal [port]         the literal, port or 8448; Host: the
 *                                 server name; certificate: the literal
 *   2   hostname:port             hostname, port; Host: hostname:port
 *   3   GET https://hostname/.well-known/matrix/server, "m.server" =
 *       delegated[:port]:
 *   3.1   an IP literal           as 1, Host: the delegated value
 *   3.2   delegated:port          as 2 with the delegated name
 *   3.3   SRV _matrix-fed._tcp.delegated   target:port, Host and
 *                                 certificate: delegated
 *   3.4   SRV _matrix._tcp.delegated (deprecated), the same
 *   3.5   delegated, port 8448
 *   4-6 the well-known failed: the same as 3.3-3.5 with hostname.
 *
 * Redirects of the well-known request are followed (https only, at most
 * five, never to a URL already visited).
 *
 * Well-known outcomes are cached in the federation zone, shared by all
 * workers and kept across reloads (an rbtree keyed by the lower-cased
 * hostname; the zone's LRU queue decides what goes when it is full, see
 * ngx_http_matrix_fed_cache.c), for:
 *
 *   a valid answer   Cache-Control max-age, else Expires, else 24 hours
 *                    (the spec's recommended default); at most 48 hours
 *                    (its recommended maximum); "no-store"/"no-cache":
 *                    not cached
 *   a failure        (no answer, non-200, bad JSON, bad m.server) 2
 *                    minutes, doubled for each failure in a row, at most
 *                    an hour (the spec: errors cached for up to an hour,
 *                    with exponential back-off)
 *
 * DNS answers (SRV, A/AAAA) are cached by nginx's resolver, for their
 * TTL (or the resolver's valid=).  It does not keep the answer "no such
 * SRV record", which is kept here for 5 minutes (a common SOA negative
 * TTL), in the same cache.
 */


#include "ngx_http_matrix_module.h"
#include "ngx_http_matrix_http.h"
#include "ngx_http_matrix_destination.h"
#include "ngx_http_matrix_fed_cache.h"

#include <mx_ids.h>


#define NGX_HTTP_MATRIX_DEST_DEFAULT_PORT    8448
#define NGX_HTTP_MATRIX_DEST_WK_PATH         "/.well-known/matrix/server"
#define NGX_HTTP_MATRIX_DEST_WK_MAX          65536
#define NGX_HTTP_MATRIX_DEST_WK_TIMEOUT      10000
#define NGX_HTTP_MATRIX_DEST_MAX_REDIRECTS   5

#define NGX_HTTP_MATRIX_DEST_TTL_DEFAULT     (24 * 3600)
#define NGX_HTTP_MATRIX_DEST_TTL_MAX         (48 * 3600)
#define NGX_HTTP_MATRIX_DEST_TTL_ERROR       120
#define NGX_HTTP_MATRIX_DEST_TTL_ERROR_MAX   3600
#define NGX_HTTP_MATRIX_DEST_TTL_NO_SRV      300

#define NGX_HTTP_MATRIX_DEST_NAME_MAX        262     /* [v6]:65535 */


struct ngx_http_matrix_dest_conf_s {
    in_port_t                          well_known_port;
    in_port_t                          fallback_port;
};


/* in the federation zone, keyed by hostname (or "srv NAME") */

typedef struct {
    ngx_http_matrix_fed_node_t         node;
    time_t                             expires;
    ngx_uint_t                         failures;     /* in a row */
    size_t                             delegated_len;  /* 0: failed */
    size_t                             error_len;
    u_char                             value[NGX_HTTP_MATRIX_DEST_NAME_MAX];
    u_char                             why[128];
} ngx_http_matrix_dest_entry_t;


/* an entry as copied out of the zone */

typedef struct {
    time_t                             expires;
    ngx_uint_t                         failures;
    ngx_str_t                          delegated;    /* len 0: failed */
    ngx_str_t                          error;
    u_char                             value[NGX_HTTP_MATRIX_DEST_NAME_MAX];
    u_char                             why[128];
} ngx_http_matrix_dest_cached_t;


static void ngx_http_matrix_dest_well_known(ngx_http_matrix_dest_t *d,
    ngx_str_t *host, in_port_t port, ngx_str_t *uri);
static void ngx_http_matrix_dest_well_known_done(
    ngx_http_matrix_http_req_t *hr);
static void ngx_http_matrix_dest_delegated(ngx_http_matrix_dest_t *d,
    ngx_str_t *delegated);
static void ngx_http_matrix_dest_srv(ngx_http_matrix_dest_t *d);
static void ngx_http_matrix_dest_srv_done(ngx_resolver_ctx_t *ctx);
static void ngx_http_matrix_dest_set(ngx_http_matrix_dest_t *d,
    ngx_str_t *host, in_port_t port, ngx_str_t *host_header,
    ngx_str_t *tls_name, const char *how);
static void ngx_http_matrix_dest_fail(ngx_http_matrix_dest_t *d,
    const char *fmt, ...);
static void ngx_http_matrix_dest_reply_handler(ngx_event_t *ev);
static void ngx_http_matrix_dest_cleanup(void *data);


/* configuration */

static ngx_http_matrix_dest_conf_t *
ngx_http_matrix_dest_get_conf(ngx_conf_t *cf)
{
    ngx_http_matrix_main_conf_t  *mmcf;

    mmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_matrix_module);

    if (mmcf->dest == NULL) {
        mmcf->dest = ngx_pcalloc(cf->pool,
                                 sizeof(ngx_http_matrix_dest_conf_t));
        if (mmcf->dest == NULL) {
            return NULL;
        }

        mmcf->dest->well_known_port = 443;
        mmcf->dest->fallback_port = NGX_HTTP_MATRIX_DEST_DEFAULT_PORT;
    }

    return mmcf->dest;
}


ngx_int_t
ngx_http_matrix_dest_set_ports(ngx_conf_t *cf, in_port_t well_known,
    in_port_t fallback)
{
    ngx_http_matrix_dest_conf_t  *dcf;

    dcf = ngx_http_matrix_dest_get_conf(cf);
    if (dcf == NULL) {
        return NGX_ERROR;
    }

    dcf->well_known_port = well_known;
    dcf->fallback_port = fallback;

    return NGX_OK;
}


/* server names */

typedef struct {
    ngx_str_t    host;        /* without brackets */
    in_port_t    port;        /* 0: none */
    ngx_uint_t   literal;     /* an IP literal */
} ngx_http_matrix_dest_name_t;


static ngx_int_t
ngx_http_matrix_dest_parse(ngx_str_t *name, ngx_http_matrix_dest_name_t *n,
    const char **why)
{
    u_char     *p, *last, *colon;
    ngx_int_t   port;

    if (name->len == 0) {
        *why = "empty";
        return NGX_ERROR;
    }

    if (mx_server_name_valid((const char *) name->data, name->len, why)
        != MX_OK)
    {
        return NGX_ERROR;
    }

    ngx_memzero(n, sizeof(ngx_http_matrix_dest_name_t));

    p = name->data;
    last = p + name->len;

    if (*p == '[') {
        colon = ngx_strlchr(p, last, ']');
        if (colon == NULL) {
            *why = "unbalanced brackets";
            return NGX_ERROR;
        }

        n->host.data = p + 1;
        n->host.len = colon - p - 1;
        n->literal = 1;
        p = colon + 1;

        colon = (p < last && *p == ':') ? p : NULL;

    } else {
        colon = ngx_strlchr(p, last, ':');
        n->host.data = p;
        n->host.len = (colon ? colon : last) - p;
    }

    if (colon) {
        port = ngx_atoi(colon + 1, last - colon - 1);
        if (port < 1 || port > 65535) {
            *why = "invalid port";
            return NGX_ERROR;
        }

        n->port = (in_port_t) port;
    }

    if (!n->literal) {
        /* dotted digits: an IPv4 literal */
        n->literal = (ngx_inet_addr(n->host.data, n->host.len)
                      != INADDR_NONE);
    }

    return NGX_OK;
}


/*
 * The cache, in the federation zone: a lookup copies out what it needs
 * (c), under the zone's mutex; an entry, expired or not, is returned.
 */

static ngx_int_t
ngx_http_matrix_dest_cache_get(ngx_str_t *key,
    ngx_http_matrix_dest_cached_t *c)
{
    ngx_http_matrix_fed_cache_t   *fc;
    ngx_http_matrix_dest_entry_t  *e;

    fc = ngx_http_matrix_fed_cache();
    if (fc == NULL) {
        return NGX_DECLINED;
    }

    ngx_http_matrix_fed_lock(fc);

    e = (ngx_http_matrix_dest_entry_t *)
            ngx_http_matrix_fed_find(fc, NGX_HTTP_MATRIX_FED_DEST, key);

    if (e) {
        c->expires = e->expires;
        c->failures = e->failures;
        c->delegated.len = e->delegated_len;
        c->delegated.data = c->value;
        ngx_memcpy(c->value, e->value, e->delegated_len);
        c->error.len = e->error_len;
        c->error.data = c->why;
        ngx_memcpy(c->why, e->why, e->error_len);
    }

    ngx_http_matrix_fed_unlock(fc);

    return e ? NGX_OK : NGX_DECLINED;
}


static void
ngx_http_matrix_dest_cache_insert(ngx_str_t *key, ngx_str_t *delegated,
    ngx_str_t *why, ngx_uint_t failures, time_t ttl, ngx_log_t *log)
{
    ngx_http_matrix_fed_node_t    *node;
    ngx_http_matrix_fed_cache_t   *fc;
    ngx_http_matrix_dest_entry_t  *e;

    fc = ngx_http_matrix_fed_cache();
    if (fc == NULL) {
        return;
    }

    ngx_http_matrix_fed_lock(fc);

    node = ngx_http_matrix_fed_find(fc, NGX_HTTP_MATRIX_FED_DEST, key);
    if (node) {
        ngx_http_matrix_fed_remove(fc, node);
    }

    if (ttl <= 0 || key->len > NGX_HTTP_MATRIX_DEST_NAME_MAX + 4
        || (delegated && delegated->len > NGX_HTTP_MATRIX_DEST_NAME_MAX))
    {
        ngx_http_matrix_fed_unlock(fc);
        return;
    }

    e = (ngx_http_matrix_dest_entry_t *)
            ngx_http_matrix_fed_insert(fc, NGX_HTTP_MATRIX_FED_DEST, key,
                                       sizeof(ngx_http_matrix_dest_entry_t));
    if (e == NULL) {
        ngx_http_matrix_fed_unlock(fc);
        return;
    }

    if (delegated) {
        ngx_memcpy(e->value, delegated->data, delegated->len);
        e->delegated_len = delegated->len;

        /* a delegation is worth keeping; failures and absences are not */
        e->node.cheap = 0;
    }

    if (why) {
        e->error_len = ngx_min(why->len, sizeof(e->why));
        ngx_memcpy(e->why, why->data, e->error_len);
    }

    e->failures = failures;
    e->expires = ngx_time() + ttl;

    ngx_http_matrix_fed_unlock(fc);

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, log, 0,
                   "matrix discovery: \"%V\" cached for %T s (%ui)",
                   key, ttl, failures);
}


/* a well-known outcome: the m.server value, or NULL for a failure */

static void
ngx_http_matrix_dest_cache_put(ngx_http_matrix_dest_t *d, ngx_str_t *delegated,
    time_t ttl, ngx_str_t *why)
{
    ngx_uint_t                      failures;
    ngx_http_matrix_dest_cached_t   c;

    failures = 0;

    if (ngx_http_matrix_dest_cache_get(&d->hostname, &c) == NGX_OK) {
        failures = c.failures;
    }

    if (delegated) {
        failures = 0;

    } else {
        failures++;
        ttl = NGX_HTTP_MATRIX_DEST_TTL_ERROR << ngx_min(failures - 1, 10);
        ttl = ngx_min(ttl, NGX_HTTP_MATRIX_DEST_TTL_ERROR_MAX);
    }

    ngx_http_matrix_dest_cache_insert(&d->hostname, delegated, why, failures,
                                      ttl, d->log);
}


/*
 * Absent SRV records: nginx's resolver does not keep that answer, so it
 * is kept here, under "srv NAME", as the number of the service names
 * found absent (1: _matrix-fed._tcp, 2: both).
 */

static ngx_str_t *
ngx_http_matrix_dest_srv_key(ngx_http_matrix_dest_t *d)
{
    ngx_str_t  *key;

    key = ngx_palloc(d->pool, sizeof(ngx_str_t));
    if (key == NULL) {
        return NULL;
    }

    key->data = ngx_pnalloc(d->pool, d->srv_name.len + 4);
    if (key->data == NULL) {
        return NULL;
    }

    key->len = ngx_sprintf(key->data, "srv %V", &d->srv_name) - key->data;

    return key;
}


/* how long a valid answer may be cached: Cache-Control, else Expires */

static time_t
ngx_http_matrix_dest_ttl(ngx_http_matrix_http_req_t *hr)
{
    u_char     *p, *last;
    time_t      ttl, t;
    ngx_int_t   n;

    ttl = NGX_HTTP_MATRIX_DEST_TTL_DEFAULT;

    if (hr->cache_control.len) {
        p = hr->cache_control.data;
        last = p + hr->cache_control.len;

        if (ngx_strlcasestrn(p, last, (u_char *) "no-store", 8 - 1)
            || ngx_strlcasestrn(p, last, (u_char *) "no-cache", 8 - 1))
        {
            return 0;
        }

        p = ngx_strlcasestrn(p, last, (u_char *) "max-age=", 8 - 1);

        if (p) {
            p += 8;
            for (n = 0; p + n < last && p[n] >= '0' && p[n] <= '9'; n++) {
                /* void */
            }

            t = ngx_atotm(p, n);

            if (t != NGX_ERROR) {
                return ngx_min(t, NGX_HTTP_MATRIX_DEST_TTL_MAX);
            }
        }
    }

    if (hr->expires.len) {
        t = ngx_parse_http_time(hr->expires.data, hr->expires.len);

        if (t != NGX_ERROR) {
            t -= ngx_time();
            return ngx_max(0, ngx_min(t, NGX_HTTP_MATRIX_DEST_TTL_MAX));
        }

        /* an invalid Expires means "already expired" (RFC 9111 5.3) */
        return 0;
    }

    return ttl;
}


/* use */

ngx_http_matrix_dest_t *
ngx_http_matrix_dest_create(ngx_cycle_t *cycle, ngx_pool_t *pool,
    ngx_log_t *log)
{
    ngx_pool_cleanup_t           *cln;
    ngx_http_matrix_dest_t       *d;
    ngx_http_matrix_main_conf_t  *mmcf;

    mmcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_matrix_module);
    if (mmcf == NULL) {
        return NULL;
    }

    d = ngx_pcalloc(pool, sizeof(ngx_http_matrix_dest_t));
    if (d == NULL) {
        return NULL;
    }

    cln = ngx_pool_cleanup_add(pool, 0);
    if (cln == NULL) {
        return NULL;
    }

    cln->handler = ngx_http_matrix_dest_cleanup;
    cln->data = d;

    d->conf = mmcf->dest;       /* NULL: the spec's ports */
    d->pool = pool;
    d->log = log;

    d->reply.handler = ngx_http_matrix_dest_reply_handler;
    d->reply.data = d;
    d->reply.log = log;

    return d;
}


ngx_int_t
ngx_http_matrix_dest_resolve(ngx_http_matrix_dest_t *d)
{
    u_char                        *p;
    ngx_str_t                      uri;
    const char                    *why;
    ngx_http_matrix_dest_name_t     n;
    ngx_http_matrix_dest_cached_t   c;

    if (d->running || d->abandoned) {
        return NGX_ERROR;
    }

    d->running = 1;
    d->status = NGX_ERROR;
    d->error.len = 0;
    d->well_known_error.len = 0;
    d->delegated = 0;
    d->redirects = 0;

    if (ngx_http_matrix_dest_parse(&d->server_name, &n, &why) != NGX_OK) {
        ngx_http_matrix_dest_fail(d, "invalid server name \"%V\": %s",
                                  &d->server_name, why);
        return NGX_OK;
    }

    /* 1: an IP literal */

    if (n.literal) {
        ngx_http_matrix_dest_set(d, &n.host,
                                 n.port ? n.port
                                        : NGX_HTTP_MATRIX_DEST_DEFAULT_PORT,
                                 &d->server_name, &n.host, "IP literal");
        return NGX_OK;
    }

    /* 2: an explicit port */

    if (n.port) {
        ngx_http_matrix_dest_set(d, &n.host, n.port, &d->server_name,
                                 &n.host, "explicit port");
        return NGX_OK;
    }

    /* 3: .well-known, cached or fetched */

    d->hostname.data = ngx_pnalloc(d->pool, n.host.len);
    if (d->hostname.data == NULL) {
        return NGX_ERROR;
    }

    d->hostname.len = n.host.len;
    ngx_strlow(d->hostname.data, n.host.data, n.host.len);

    if (ngx_http_matrix_dest_cache_get(&d->hostname, &c) == NGX_OK
        && c.expires > ngx_time())
    {
        if (c.delegated.len) {
            ngx_http_matrix_dest_delegated(d, &c.delegated);
            return NGX_OK;
        }

        d->well_known_error.data = ngx_pstrdup(d->pool, &c.error);
        d->well_known_error.len = d->well_known_error.data ? c.error.len : 0;

        d->srv_name = d->hostname;
        d->srv_step = 0;
        ngx_http_matrix_dest_srv(d);
        return NGX_OK;
    }

    p = (u_char *) NGX_HTTP_MATRIX_DEST_WK_PATH;
    uri.data = p;
    uri.len = sizeof(NGX_HTTP_MATRIX_DEST_WK_PATH) - 1;

    ngx_http_matrix_dest_well_known(d, &d->hostname,
                                    d->conf ? d->conf->well_known_port : 443,
                                    &uri);
    return NGX_OK;
}


static void
ngx_http_matrix_dest_well_known(ngx_http_matrix_dest_t *d, ngx_str_t *host,
    in_port_t port, ngx_str_t *uri)
{
    ngx_http_matrix_http_req_t  *hr;

    hr = ngx_http_matrix_http_create((ngx_cycle_t *) ngx_cycle, d->pool,
                                     d->log);
    if (hr == NULL) {
        ngx_http_matrix_dest_fail(d, "cannot fetch the well-known of \"%V\"",
                                  &d->hostname);
        return;
    }

    hr->host = *host;
    hr->port = port;
    hr->tls = 1;
    hr->tls_name = *host;
    hr->uri = *uri;
    hr->max_response = NGX_HTTP_MATRIX_DEST_WK_MAX;
    hr->timeout = NGX_HTTP_MATRIX_DEST_WK_TIMEOUT;
    hr->handler = ngx_http_matrix_dest_well_known_done;
    hr->data = d;

    d->hr = hr;

    if (ngx_http_matrix_http_send(hr) != NGX_OK) {
        d->hr = NULL;
        ngx_http_matrix_dest_fail(d, "cannot fetch the well-known of \"%V\"",
                                  &d->hostname);
    }
}


/* a redirect: https://host[:port]/path or /path; NGX_DECLINED: not one */

static ngx_int_t
ngx_http_matrix_dest_redirect(ngx_http_matrix_dest_t *d,
    ngx_http_matrix_http_req_t *hr, const char **why)
{
    u_char      *p, *last, *slash, *colon;
    ngx_int_t    port;
    ngx_str_t    host, uri, url;
    ngx_uint_t   i;

    if (hr->location.len == 0) {
        *why = "a redirect without a Location";
        return NGX_ERROR;
    }

    if (d->redirects >= NGX_HTTP_MATRIX_DEST_MAX_REDIRECTS) {
        *why = "too many redirects";
        return NGX_ERROR;
    }

    p = hr->location.data;
    last = p + hr->location.len;

    if (*p == '/' && (last - p < 2 || p[1] != '/')) {
        host = hr->host;
        port = hr->port;
        uri.data = p;
        uri.len = last - p;

    } else {
        if (last - p < 8 || ngx_strncasecmp(p, (u_char *) "https://", 8)
                            != 0)
        {
            *why = "a redirect to other than https";
            return NGX_ERROR;
        }

        p += 8;
        slash = ngx_strlchr(p, last, '/');
        if (slash == NULL) {
            slash = last;
        }

        if (*p == '[') {
            colon = ngx_strlchr(p, slash, ']');
            if (colon == NULL) {
                *why = "a redirect to a bad URL";
                return NGX_ERROR;
            }

            host.data = p + 1;
            host.len = colon - p - 1;
            colon++;
            if (colon == slash) {
                colon = NULL;
            }

        } else {
            colon = ngx_strlchr(p, slash, ':');
            host.data = p;
            host.len = (colon ? colon : slash) - p;
        }

        if (colon) {
            if (*colon != ':') {
                *why = "a redirect to a bad URL";
                return NGX_ERROR;
            }

            port = ngx_atoi(colon + 1, slash - colon - 1);
            if (port < 1 || port > 65535) {
                *why = "a redirect to a bad port";
                return NGX_ERROR;
            }

        } else {
            port = 443;
        }

        if (host.len == 0 || ngx_strlchr(host.data, host.data + host.len, '@'))
        {
            *why = "a redirect to a bad URL";
            return NGX_ERROR;
        }

        uri.data = slash;
        uri.len = last - slash;

        if (uri.len == 0) {
            ngx_str_set(&uri, "/");
        }
    }

    /* loops: the same host, port and path again */

    url.data = ngx_pnalloc(d->pool, host.len + uri.len + 8);
    if (url.data == NULL) {
        *why = "out of memory";
        return NGX_ERROR;
    }

    url.len = ngx_sprintf(url.data, "%V:%i%V", &host, port, &uri) - url.data;

    for (i = 0; i < d->redirects; i++) {
        if (d->visited[i].len == url.len
            && ngx_strncasecmp(d->visited[i].data, url.data, url.len) == 0)
        {
            *why = "a redirect loop";
            return NGX_ERROR;
        }
    }

    d->visited[d->redirects++] = url;

    host.data = ngx_pstrdup(d->pool, &host);
    uri.data = ngx_pstrdup(d->pool, &uri);
    if (host.data == NULL || uri.data == NULL) {
        *why = "out of memory";
        return NGX_ERROR;
    }

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, d->log, 0,
                   "matrix discovery: well-known redirected to %V:%i%V",
                   &host, port, &uri);

    ngx_http_matrix_dest_well_known(d, &host, (in_port_t) port, &uri);

    return NGX_OK;
}


static void
ngx_http_matrix_dest_well_known_done(ngx_http_matrix_http_req_t *hr)
{
    u_char                  *p;
    json_t                  *doc, *v;
    ngx_str_t                delegated, why_str;
    const char              *why;
    json_error_t             jerr;
    ngx_http_matrix_dest_t  *d;
    u_char                   buf[128];

    d = hr->data;
    d->hr = NULL;
    why = NULL;
    p = buf;

    if (hr->status == 0) {
        p = ngx_snprintf(buf, sizeof(buf), "%V", &hr->error);

    } else if (hr->status >= 300 && hr->status < 400
               && hr->status != 304)
    {
        if (d->redirects == 0) {
            /* the first URL is visited too */
            d->visited[0].data = ngx_pnalloc(d->pool, hr->host.len + 64);
            if (d->visited[0].data) {
                d->visited[0].len = ngx_sprintf(d->visited[0].data,
                                                "%V:%i%V", &hr->host,
                                                (ngx_int_t) hr->port,
                                                &hr->uri)
                                    - d->visited[0].data;
                d->redirects = 1;
            }
        }

        if (ngx_http_matrix_dest_redirect(d, hr, &why) == NGX_OK) {
            return;
        }

        p = ngx_snprintf(buf, sizeof(buf), "%s", why);

    } else if (hr->status != 200) {
        p = ngx_snprintf(buf, sizeof(buf), "status %ui", hr->status);

    } else {
        doc = json_loadb((const char *) hr->response.data, hr->response.len,
                         JSON_REJECT_DUPLICATES, &jerr);

        if (doc == NULL || !json_is_object(doc)) {
            p = ngx_snprintf(buf, sizeof(buf), "not a JSON object");

        } else {
            v = json_object_get(doc, "m.server");

            if (!json_is_string(v)) {
                p = ngx_snprintf(buf, sizeof(buf), "no \"m.server\" string");

            } else if (mx_server_name_valid(json_string_value(v),
                                            json_string_length(v), &why)
                       != MX_OK
                       || json_string_length(v)
                          > NGX_HTTP_MATRIX_DEST_NAME_MAX)
            {
                p = ngx_snprintf(buf, sizeof(buf),
                                 "invalid \"m.server\": %s",
                                 why ? why : "too long");

            } else {
                delegated.len = json_string_length(v);
                delegated.data = ngx_pnalloc(d->pool, delegated.len);

                if (delegated.data) {
                    ngx_memcpy(delegated.data, json_string_value(v),
                               delegated.len);
                    json_decref(doc);

                    ngx_http_matrix_dest_cache_put(d, &delegated,
                                                   ngx_http_matrix_dest_ttl(hr),
                                                   NULL);
                    ngx_http_matrix_dest_delegated(d, &delegated);
                    return;
                }

                p = ngx_snprintf(buf, sizeof(buf), "out of memory");
            }
        }

        if (doc) {
            json_decref(doc);
        }
    }

    /* 4: no (valid) delegation */

    why_str.data = buf;
    why_str.len = p - buf;

    d->well_known_error.data = ngx_pstrdup(d->pool, &why_str);
    d->well_known_error.len = d->well_known_error.data ? why_str.len : 0;

    ngx_log_error(NGX_LOG_INFO, d->log, 0,
                  "matrix discovery: no well-known delegation for \"%V\": %V",
                  &d->hostname, &why_str);

    ngx_http_matrix_dest_cache_put(d, NULL, 0, &why_str);

    d->srv_name = d->hostname;
    d->srv_step = 0;
    ngx_http_matrix_dest_srv(d);
}


/* 3.1 - 3.5 */

static void
ngx_http_matrix_dest_delegated(ngx_http_matrix_dest_t *d, ngx_str_t *delegated)
{
    u_char                       *p;
    const char                   *why;
    ngx_http_matrix_dest_name_t   n;

    d->delegated = 1;

    if (ngx_http_matrix_dest_parse(delegated, &n, &why) != NGX_OK) {
        ngx_http_matrix_dest_fail(d, "invalid delegated server name \"%V\": "
                                  "%s", delegated, why);
        return;
    }

    if (n.literal) {
        ngx_http_matrix_dest_set(d, &n.host,
                                 n.port ? n.port
                                        : NGX_HTTP_MATRIX_DEST_DEFAULT_PORT,
                                 delegated, &n.host,
                                 "well-known, IP literal");
        return;
    }

    if (n.port) {
        ngx_http_matrix_dest_set(d, &n.host, n.port, delegated, &n.host,
                                 "well-known, explicit port");
        return;
    }

    p = ngx_pnalloc(d->pool, n.host.len);
    if (p == NULL) {
        ngx_http_matrix_dest_fail(d, "out of memory");
        return;
    }

    d->srv_name.data = p;
    d->srv_name.len = n.host.len;
    ngx_strlow(p, n.host.data, n.host.len);

    d->srv_step = 0;
    ngx_http_matrix_dest_srv(d);
}


/* 3.3 - 3.5, 4 - 6: SRV records of d->srv_name, then port 8448 */

static void
ngx_http_matrix_dest_srv(ngx_http_matrix_dest_t *d)
{
    ngx_str_t                      *key;
    ngx_msec_t                      timeout;
    ngx_resolver_t                 *resolver;
    ngx_resolver_ctx_t             *ctx;
    ngx_http_matrix_dest_cached_t   c;

    key = ngx_http_matrix_dest_srv_key(d);

    if (key && ngx_http_matrix_dest_cache_get(key, &c) == NGX_OK
        && c.expires > ngx_time() && c.failures > d->srv_step)
    {
        d->srv_step = c.failures;
    }

    if (d->srv_step > 1) {
        ngx_http_matrix_dest_set(d, &d->srv_name,
                                 d->conf ? d->conf->fallback_port
                                         : NGX_HTTP_MATRIX_DEST_DEFAULT_PORT,
                                 &d->srv_name, &d->srv_name,
                                 d->delegated ? "well-known, port 8448"
                                              : "port 8448");
        return;
    }

    resolver = ngx_http_matrix_http_get_resolver((ngx_cycle_t *) ngx_cycle,
                                                 &timeout);
    if (resolver == NULL) {
        ngx_http_matrix_dest_fail(d, "cannot look up SRV records of \"%V\": "
                                  "no \"matrix_federation_resolver\"",
                                  &d->srv_name);
        return;
    }

    ctx = ngx_resolve_start(resolver, NULL);
    if (ctx == NULL || ctx == NGX_NO_RESOLVER) {
        ngx_http_matrix_dest_fail(d, "cannot look up SRV records of \"%V\"",
                                  &d->srv_name);
        return;
    }

    ctx->name = d->srv_name;

    if (d->srv_step == 0) {
        ngx_str_set(&ctx->service, "_matrix-fed._tcp");

    } else {
        ngx_str_set(&ctx->service, "_matrix._tcp");
    }

    ctx->handler = ngx_http_matrix_dest_srv_done;
    ctx->data = d;
    ctx->timeout = timeout;
    ctx->cancelable = 1;

    d->resolving = ctx;

    /* the handler may run inside, from the resolver's cache */

    if (ngx_resolve_name(ctx) != NGX_OK) {
        d->resolving = NULL;
        ngx_http_matrix_dest_fail(d, "cannot look up SRV records of \"%V\"",
                                  &d->srv_name);
    }
}


/*
 * RFC 2782: the lowest priority, and among those a weighted random
 * choice (weight 0 first in the running sum, so that it has a small
 * chance).  Only targets that resolved are candidates.
 */

static ngx_resolver_srv_name_t *
ngx_http_matrix_dest_srv_pick(ngx_resolver_ctx_t *ctx)
{
    ngx_uint_t                i, best, sum, r, run;
    ngx_resolver_srv_name_t  *s;

    best = 0x10000;

    for (i = 0; i < ctx->nsrvs; i++) {
        s = &ctx->srvs[i];

        if (s->naddrs && s->priority < best) {
            best = s->priority;
        }
    }

    if (best == 0x10000) {
        return NULL;
    }

    sum = 0;

    for (i = 0; i < ctx->nsrvs; i++) {
        s = &ctx->srvs[i];

        if (s->naddrs && s->priority == best) {
            sum += s->weight;
        }
    }

    r = sum ? (ngx_uint_t) ngx_random() % (sum + 1) : 0;
    run = 0;

    /* weight 0 first, then the others, in their order */

    for (i = 0; i < ctx->nsrvs; i++) {
        s = &ctx->srvs[i];

        if (s->naddrs && s->priority == best && s->weight == 0 && r == 0) {
            return s;
        }
    }

    for (i = 0; i < ctx->nsrvs; i++) {
        s = &ctx->srvs[i];

        if (!s->naddrs || s->priority != best || s->weight == 0) {
            continue;
        }

        run += s->weight;

        if (run >= r) {
            return s;
        }
    }

    /* not reached: r <= sum */

    for (i = 0; i < ctx->nsrvs; i++) {
        if (ctx->srvs[i].naddrs && ctx->srvs[i].priority == best) {
            return &ctx->srvs[i];
        }
    }

    return NULL;
}


static void
ngx_http_matrix_dest_srv_done(ngx_resolver_ctx_t *ctx)
{
    ngx_int_t                 state;
    ngx_str_t                 target, *key;
    in_port_t                 port;
    ngx_uint_t                nsrvs;
    const char               *how;
    ngx_http_matrix_dest_t   *d;
    ngx_resolver_srv_name_t  *s;

    d = ctx->data;
    d->resolving = NULL;
    port = 0;

    state = ctx->state;
    nsrvs = ctx->nsrvs;
    s = nsrvs ? ngx_http_matrix_dest_srv_pick(ctx) : NULL;

    if (s) {
        target.len = s->name.len;
        target.data = ngx_pnalloc(d->pool, s->name.len);

        if (target.data == NULL) {
            ngx_resolve_name_done(ctx);
            ngx_http_matrix_dest_fail(d, "out of memory");
            return;
        }

        ngx_memcpy(target.data, s->name.data, s->name.len);
        port = s->port;
    }

    ngx_resolve_name_done(ctx);

    if (s) {
        if (d->srv_step == 0) {
            how = d->delegated ? "well-known, SRV _matrix-fed._tcp"
                               : "SRV _matrix-fed._tcp";
        } else {
            how = d->delegated ? "well-known, SRV _matrix._tcp (deprecated)"
                               : "SRV _matrix._tcp (deprecated)";
        }

        ngx_http_matrix_dest_set(d, &target, port, &d->srv_name,
                                 &d->srv_name, how);
        return;
    }

    if (nsrvs) {
        /* records, but none of their targets has an address */
        ngx_http_matrix_dest_fail(d, "the SRV targets of %s.%V do not "
                                  "resolve",
                                  d->srv_step ? "_matrix._tcp"
                                              : "_matrix-fed._tcp",
                                  &d->srv_name);
        return;
    }

    if (state != NGX_OK && state != NGX_RESOLVE_NXDOMAIN) {
        /* a failed lookup is not an absent record */
        ngx_http_matrix_dest_fail(d, "cannot look up SRV records of "
                                  "%s.%V: %s",
                                  d->srv_step ? "_matrix._tcp"
                                              : "_matrix-fed._tcp",
                                  &d->srv_name,
                                  ngx_resolver_strerror(state));
        return;
    }

    d->srv_step++;

    key = ngx_http_matrix_dest_srv_key(d);
    if (key) {
        ngx_http_matrix_dest_cache_insert(key, NULL, NULL, d->srv_step,
                                          NGX_HTTP_MATRIX_DEST_TTL_NO_SRV,
                                          d->log);
    }

    ngx_http_matrix_dest_srv(d);
}


/* the outcome */

static void
ngx_http_matrix_dest_set(ngx_http_matrix_dest_t *d, ngx_str_t *host,
    in_port_t port, ngx_str_t *host_header, ngx_str_t *tls_name,
    const char *how)
{
    d->host.data = ngx_pstrdup(d->pool, host);
    d->host_header.data = ngx_pstrdup(d->pool, host_header);
    d->tls_name.data = ngx_pstrdup(d->pool, tls_name);

    if (d->host.data == NULL || d->host_header.data == NULL
        || d->tls_name.data == NULL)
    {
        ngx_http_matrix_dest_fail(d, "out of memory");
        return;
    }

    d->host.len = host->len;
    d->host_header.len = host_header->len;
    d->tls_name.len = tls_name->len;
    d->port = port;
    d->how.data = (u_char *) how;
    d->how.len = ngx_strlen(how);
    d->status = NGX_OK;

    ngx_log_debug6(NGX_LOG_DEBUG_HTTP, d->log, 0,
                   "matrix discovery: \"%V\" is %V port %d (%s), Host: %V, "
                   "TLS name %V", &d->server_name, &d->host, (int) port, how,
                   &d->host_header, &d->tls_name);

    if (!d->reply.posted) {
        ngx_post_event(&d->reply, &ngx_posted_events);
    }
}


static void
ngx_http_matrix_dest_fail(ngx_http_matrix_dest_t *d, const char *fmt, ...)
{
    u_char   *p;
    va_list   args;
    u_char    tmp[512];

    va_start(args, fmt);
    p = ngx_vslprintf(tmp, tmp + sizeof(tmp), fmt, args);
    va_end(args);

    d->status = NGX_ERROR;
    d->error.len = p - tmp;
    d->error.data = ngx_pnalloc(d->pool, d->error.len);

    if (d->error.data) {
        ngx_memcpy(d->error.data, tmp, d->error.len);

    } else {
        d->error.len = 0;
    }

    ngx_log_error(NGX_LOG_INFO, d->log, 0, "matrix discovery: %V",
                  &d->error);

    if (!d->reply.posted) {
        ngx_post_event(&d->reply, &ngx_posted_events);
    }
}


static void
ngx_http_matrix_dest_reply_handler(ngx_event_t *ev)
{
    ngx_http_matrix_dest_t  *d;

    d = ev->data;
    d->running = 0;

    if (!d->abandoned && d->handler) {
        d->handler(d);
    }
}


void
ngx_http_matrix_dest_target(ngx_http_matrix_dest_t *d,
    ngx_http_matrix_http_req_t *hr)
{
    hr->host = d->host;
    hr->port = d->port;
    hr->host_header = d->host_header;
    hr->tls_name = d->tls_name;
}


void
ngx_http_matrix_dest_abandon(ngx_http_matrix_dest_t *d)
{
    if (d->abandoned) {
        return;
    }

    d->abandoned = 1;

    if (d->resolving) {
        ngx_resolve_name_done(d->resolving);
        d->resolving = NULL;
    }

    if (d->hr) {
        ngx_http_matrix_http_abandon(d->hr);
        d->hr = NULL;
    }

    if (d->reply.posted) {
        ngx_delete_posted_event(&d->reply);
    }
}


static void
ngx_http_matrix_dest_cleanup(void *data)
{
    ngx_http_matrix_dest_abandon(data);
}
