/*
 * An HTTP/1.1 client on nginx's event loop, for talking to other Matrix
 * servers: from request handlers and from timers alike (no subrequests).
 * Names are looked up with nginx's resolver, every address is checked
 * against the SSRF guard before it is connected to, TLS is verified
 * against the configured CA bundle and the expected name, and idle
 * connections are kept per address and TLS name for the next request.
 *
 * Like a Postgres query, a request is created on a pool (a request's or
 * a long-lived one) and hears back through its handler, always from the
 * event loop; when the pool goes, the request is abandoned.
 */

#ifndef _NGX_HTTP_MATRIX_HTTP_H_INCLUDED_
#define _NGX_HTTP_MATRIX_HTTP_H_INCLUDED_


#include "ngx_http_matrix_module.h"


typedef struct ngx_http_matrix_http_req_s   ngx_http_matrix_http_req_t;
typedef struct ngx_http_matrix_http_conn_s  ngx_http_matrix_http_conn_t;

typedef void (*ngx_http_matrix_http_handler_pt)(
    ngx_http_matrix_http_req_t *hr);


struct ngx_http_matrix_http_req_s {
    /* where: a name or an address literal, and a port */
    ngx_str_t                         host;
    in_port_t                         port;
    ngx_str_t                         host_header;   /* default host[:port] */
    ngx_flag_t                        tls;
    ngx_str_t                         tls_name;      /* default host */
    unsigned                          internal:1;    /* the silo's API, as
                                                        the operator
                                                        configured it: no
                                                        SSRF guard */

    /* what */
    ngx_str_t                         method;
    ngx_str_t                         uri;           /* path and query */
    ngx_str_t                         authorization; /* optional */

    /* signed as origin for destination (X-Matrix) when sign_key is set */
    const mx_signing_key_t           *sign_key;
    ngx_str_t                         origin;
    ngx_str_t                         destination;
    ngx_str_t                         body;          /* JSON, optional */

    ngx_msec_t                        timeout;       /* whole request; 0:
                                                        the configured */
    size_t                            max_response;  /* body; 0: 1m */

    ngx_http_matrix_http_handler_pt   handler;
    void                             *data;
    ngx_log_t                        *log;

    /* the outcome, valid in the handler */
    ngx_uint_t                        status;        /* 0: no response */
    ngx_str_t                         error;         /* why, when 0 */
    ngx_str_t                         response;      /* the body */
    ngx_str_t                         content_type;
    ngx_str_t                         location;
    ngx_str_t                         cache_control;
    ngx_str_t                         expires;
    struct sockaddr                  *peer;          /* who answered */
    socklen_t                         peer_len;

    /* private */
    ngx_http_matrix_http_conf_t      *conf;
    ngx_pool_t                       *pool;
    ngx_http_matrix_http_conn_t      *conn;
    ngx_resolver_ctx_t               *resolving;
    ngx_addr_t                       *addrs;
    ngx_uint_t                        naddrs;
    ngx_uint_t                        next_addr;
    ngx_event_t                       deadline;
    ngx_event_t                       reply;
    u_char                            errbuf[256];
    unsigned                          running:1;
    unsigned                          abandoned:1;
    unsigned                          reused:1;      /* a kept connection
                                                        was tried */
};


/* configuration */

char *ngx_http_matrix_http_resolver(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
char *ngx_http_matrix_http_trusted_certificate(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
char *ngx_http_matrix_http_allow_ip(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
char *ngx_http_matrix_http_init_conf(ngx_conf_t *cf);

ngx_int_t ngx_http_matrix_http_init_process(ngx_cycle_t *cycle);
void ngx_http_matrix_http_exit_process(ngx_cycle_t *cycle);


/* use */

ngx_http_matrix_http_req_t *ngx_http_matrix_http_create(ngx_cycle_t *cycle,
    ngx_pool_t *pool, ngx_log_t *log);
ngx_int_t ngx_http_matrix_http_send(ngx_http_matrix_http_req_t *hr);
void ngx_http_matrix_http_abandon(ngx_http_matrix_http_req_t *hr);

/* for server discovery's SRV lookups: NULL without a resolver */
ngx_resolver_t *ngx_http_matrix_http_get_resolver(ngx_cycle_t *cycle,
    ngx_msec_t *timeout);

/* the SSRF guard: NULL if allowed, else why not */
const char *ngx_http_matrix_http_forbidden(ngx_http_matrix_http_conf_t *conf,
    struct sockaddr *sa);


#endif /* _NGX_HTTP_MATRIX_HTTP_H_INCLUDED_ */
