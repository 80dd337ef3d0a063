/*
 * Server discovery: a Matrix server name to where and how to connect
 * (server-server API, "Resolving server names"): IP literals, explicit
 * ports, /.well-known/matrix/server delegation, SRV records
 * (_matrix-fed._tcp, then the deprecated _matrix._tcp) and port 8448.
 *
 * Like an ngx_http_matrix_http_req_t, a destination is created on a pool
 * and hears back through its handler, always from a posted event (never
 * inside ngx_http_matrix_dest_resolve()); when the pool goes, the lookup
 * is abandoned.
 *
 * The outcome names what to hand to ngx_http_matrix_http: host (a DNS
 * name, or an IP literal without brackets) and port, the Host header and
 * the name the certificate must be valid for.  An SRV target is given as
 * its name: the HTTP client looks it up again (from nginx's resolver
 * cache, which the SRV lookup filled) and applies the SSRF guard to the
 * addresses it connects to, as for any other name.
 *
 * Well-known answers are cached in the federation zone, shared by the
 * workers (see the .c for the times).
 */

#ifndef _NGX_HTTP_MATRIX_DESTINATION_H_INCLUDED_
#define _NGX_HTTP_MATRIX_DESTINATION_H_INCLUDED_


#include "ngx_http_matrix_module.h"
#include "ngx_http_matrix_http.h"


typedef struct ngx_http_matrix_dest_s       ngx_http_matrix_dest_t;

typedef void (*ngx_http_matrix_dest_handler_pt)(ngx_http_matrix_dest_t *d);


struct ngx_http_matrix_dest_s {
    /* in */
    ngx_str_t                          server_name;

    ngx_http_matrix_dest_handler_pt    handler;
    void                              *data;
    ngx_log_t                         *log;

    /* out, valid in the handler */
    ngx_int_t                          status;       /* NGX_OK, NGX_ERROR */
    ngx_str_t                          host;         /* name or IP literal */
    in_port_t                          port;
    ngx_str_t                          host_header;
    ngx_str_t                          tls_name;
    ngx_str_t                          how;          /* for logs */
    ngx_str_t                          error;        /* when NGX_ERROR */
    ngx_str_t                          well_known_error; /* why delegation
                                                            was not used */

    /* private */
    ngx_http_matrix_dest_conf_t       *conf;
    ngx_pool_t                        *pool;
    ngx_str_t                          hostname;     /* of server_name */
    ngx_str_t                          srv_name;     /* SRV looked up for */
    ngx_uint_t                         srv_step;     /* 0 fed, 1 legacy */
    ngx_uint_t                         delegated;
    ngx_uint_t                         redirects;
    ngx_str_t                          visited[8];
    ngx_http_matrix_http_req_t        *hr;
    ngx_resolver_ctx_t                *resolving;
    ngx_event_t                        reply;
    unsigned                           running:1;
    unsigned                           abandoned:1;
};


/* configuration */

/* tests only: the ports of the well-known request and of the fallback */
ngx_int_t ngx_http_matrix_dest_set_ports(ngx_conf_t *cf,
    in_port_t well_known, in_port_t fallback);


/* use */

ngx_http_matrix_dest_t *ngx_http_matrix_dest_create(ngx_cycle_t *cycle,
    ngx_pool_t *pool, ngx_log_t *log);
ngx_int_t ngx_http_matrix_dest_resolve(ngx_http_matrix_dest_t *d);
void ngx_http_matrix_dest_abandon(ngx_http_matrix_dest_t *d);

/* a request goes where d was resolved to: host, port, Host, TLS name */
void ngx_http_matrix_dest_target(ngx_http_matrix_dest_t *d,
    ngx_http_matrix_http_req_t *hr);


#endif /* _NGX_HTTP_MATRIX_DESTINATION_H_INCLUDED_ */
