/*
 * Other servers' signing keys: looked up in a cache shared by the workers
 * (the federation zone), fetched from the server itself (GET /_matrix/
 * key/v2/server) when missing or expired, believed only when the document
 * is signed by every key it publishes.  Concurrent lookups for one
 * server share one fetch, across workers too.
 */

#ifndef _NGX_HTTP_MATRIX_REMOTE_KEYS_H_INCLUDED_
#define _NGX_HTTP_MATRIX_REMOTE_KEYS_H_INCLUDED_


#include "ngx_http_matrix_module.h"


typedef struct ngx_http_matrix_key_lookup_s  ngx_http_matrix_key_lookup_t;

typedef void (*ngx_http_matrix_key_lookup_pt)(
    ngx_http_matrix_key_lookup_t *kl);


struct ngx_http_matrix_key_lookup_s {
    ngx_str_t                        server_name;
    ngx_str_t                        key_id;
    int64_t                          at_ms;        /* valid then; 0: now */

    /* for the notary: the server's signed document as received, valid
       until this at least when it can be had (else the last one known) */
    unsigned                         want_doc:1;
    int64_t                          min_valid_ts;
    ngx_pool_t                      *pool;
    ngx_str_t                        doc;

    ngx_http_matrix_key_lookup_pt    handler;
    void                            *data;
    ngx_log_t                       *log;

    /* the outcome: NGX_OK and the key, NGX_DECLINED no such valid key,
       NGX_ERROR the server's keys could not be had */
    ngx_int_t                        rc;
    u_char                           public_key[32];
    ngx_str_t                        error;

    /* private */
    void                            *server;
    ngx_queue_t                      queue;
    ngx_event_t                      reply;
    u_char                           errbuf[256];
    unsigned                         waiting:1;
    unsigned                         abandoned:1;
};


ngx_http_matrix_key_lookup_t *ngx_http_matrix_key_lookup_create(
    ngx_pool_t *pool, ngx_log_t *log);
ngx_int_t ngx_http_matrix_key_lookup(ngx_http_matrix_key_lookup_t *kl);

ngx_int_t ngx_http_matrix_remote_keys_init_process(ngx_cycle_t *cycle);
void ngx_http_matrix_remote_keys_exit_process(ngx_cycle_t *cycle);


#endif /* _NGX_HTTP_MATRIX_REMOTE_KEYS_H_INCLUDED_ */
