/*
 * Trusted notaries ("Querying Keys Through Another Server"): another
 * server's key document asked of the notaries named by
 * "matrix_federation_trusted_key_server", in the order configured, with
 * POST /_matrix/key/v2/query.  A relayed document is believed only when
 * it is for the server asked about, is signed by every key it publishes
 * (mx_key_doc_check) and carries the notary's signature by one of the
 * keys configured for that notary.
 *
 * Like a server discovery, an ask is created on a pool and hears back
 * through its handler, always from a posted event (never inside
 * ngx_http_matrix_key_notaries_ask()); when the pool goes, it is
 * abandoned.
 */

#ifndef _NGX_HTTP_MATRIX_KEY_NOTARIES_H_INCLUDED_
#define _NGX_HTTP_MATRIX_KEY_NOTARIES_H_INCLUDED_


#include "ngx_http_matrix_module.h"


typedef struct ngx_http_matrix_notary_ask_s  ngx_http_matrix_notary_ask_t;

typedef void (*ngx_http_matrix_notary_ask_pt)(
    ngx_http_matrix_notary_ask_t *na);
typedef ngx_int_t (*ngx_http_matrix_notary_doc_pt)(
    ngx_http_matrix_notary_ask_t *na);


struct ngx_http_matrix_notary_ask_s {
    /* in */
    ngx_str_t                        server_name;
    ngx_str_t                        key_id;        /* optional */
    int64_t                          min_valid_ts;  /* optional */
    ngx_str_t                        why;           /* optional: why the
                                                       caller asks, leads
                                                       the final error */

    /*
     * Called for every document believed, with doc, valid_until_ts and
     * notary set: NGX_OK when it is enough (no other notary is asked),
     * NGX_DECLINED to ask the next notary.
     */
    ngx_http_matrix_notary_doc_pt    doc_handler;
    ngx_http_matrix_notary_ask_pt    handler;
    void                            *data;
    ngx_log_t                       *log;

    /* the document, in doc_handler: the server's own, the notaries'
       signatures taken off (canonical JSON, on the pool) */
    ngx_str_t                        doc;
    int64_t                          valid_until_ts;
    ngx_str_t                        notary;

    /* the outcome, in handler: NGX_OK when doc_handler said enough,
       else NGX_ERROR and why; how many documents were believed */
    ngx_int_t                        status;
    ngx_str_t                        error;
    ngx_uint_t                       believed;

    /* private */
    ngx_pool_t                      *pool;
    ngx_uint_t                       next;          /* notary to ask */
    ngx_event_t                      reply;
    u_char                           last[200];     /* last failure */
    u_char                           errbuf[400];
    unsigned                         running:1;
    unsigned                         abandoned:1;
};


/* configuration */

char *ngx_http_matrix_key_notaries_directive(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
ngx_int_t ngx_http_matrix_key_notaries_init(ngx_conf_t *cf);


/* use */

/* the notaries' names as a Postgres text[] literal: "{}" when none */
ngx_str_t *ngx_http_matrix_key_notaries_names(ngx_cycle_t *cycle);

ngx_http_matrix_notary_ask_t *ngx_http_matrix_key_notaries_create(
    ngx_pool_t *pool, ngx_log_t *log);

/* NGX_DECLINED when no notary is configured (no handler is called) */
ngx_int_t ngx_http_matrix_key_notaries_ask(ngx_http_matrix_notary_ask_t *na);


#endif /* _NGX_HTTP_MATRIX_KEY_NOTARIES_H_INCLUDED_ */
