/*
 * Silo -> Matrix, live: the change feed's consumer (ngx_http_matrix_feed.c)
 * makes the events of silo messages as they are written, edited and
 * deleted; the sender (ngx_http_matrix_sender.c) delivers them to the
 * other servers in the rooms, as transactions.
 */

#ifndef _NGX_HTTP_MATRIX_FEED_H_INCLUDED_
#define _NGX_HTTP_MATRIX_FEED_H_INCLUDED_


#include "ngx_http_matrix_module.h"


ngx_int_t ngx_http_matrix_feed_init_process(ngx_cycle_t *cycle);
ngx_int_t ngx_http_matrix_sender_init_process(ngx_cycle_t *cycle);

/* a new event is owed to other servers: a pass now */
void ngx_http_matrix_sender_kick(void);

/* typing notices and receipts of silo users (ngx_http_matrix_ephemeral.c) */
ngx_int_t ngx_http_matrix_ephemeral_init_process(ngx_cycle_t *cycle);

/* whether this worker sends to the other servers now */
ngx_uint_t ngx_http_matrix_sender_sends(void);

/* an EDU for a server, with its next transaction (json_t referenced) */
void ngx_http_matrix_sender_edu(ngx_str_t *server, json_t *edu);

/*
 * An authenticated request came from the server: whoever sends to it
 * ends its back-off (a NOTIFY, at most once in a while per server).
 */
void ngx_http_matrix_sender_heard(ngx_str_t *server);

/*
 * The server whose name and key background work signs with: the first
 * with a server name and a signing key; NULL if none, or if there is no
 * background work (no database, or no federation).
 */
ngx_http_matrix_srv_conf_t *ngx_http_matrix_background_srv_conf(
    ngx_cycle_t *cycle);


#endif /* _NGX_HTTP_MATRIX_FEED_H_INCLUDED_ */
