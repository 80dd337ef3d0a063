/*
 * PDUs received from other servers: their signatures checked with keys
 * that may have to be fetched first (server-server-api.md: "Checks
 * performed on receipt of a PDU", steps 1 and 2).
 */

#ifndef _NGX_HTTP_MATRIX_PDU_H_INCLUDED_
#define _NGX_HTTP_MATRIX_PDU_H_INCLUDED_


#include "ngx_http_matrix_module.h"

#include <mx_event.h>


typedef struct ngx_http_matrix_pdu_check_s  ngx_http_matrix_pdu_check_t;

typedef void (*ngx_http_matrix_pdu_check_pt)(
    ngx_http_matrix_pdu_check_t *pc);


struct ngx_http_matrix_pdu_check_s {
    mx_event_t                      *ev;
    ngx_http_matrix_pdu_check_pt     handler;
    void                            *data;

    /* the outcome: NGX_OK signed as it must be; NGX_DECLINED not (why);
       NGX_ERROR the keys could not be had (why) */
    ngx_int_t                        rc;
    mx_err_t                         why;

    /* private */
    ngx_pool_t                      *pool;
    ngx_log_t                       *log;
    ngx_uint_t                       next;      /* key of the sender's */
    u_char                           server[256];
    u_char                           key_id[64];
    u_char                           public_key[32];
    unsigned                         have_key:1;
};


/*
 * Checks ev's signatures, fetching the signing server's key if needed;
 * the handler always runs later, from the event loop.
 */
ngx_http_matrix_pdu_check_t *ngx_http_matrix_pdu_check(ngx_pool_t *pool,
    ngx_log_t *log, mx_event_t *ev, ngx_http_matrix_pdu_check_pt handler,
    void *data);


#endif /* _NGX_HTTP_MATRIX_PDU_H_INCLUDED_ */
