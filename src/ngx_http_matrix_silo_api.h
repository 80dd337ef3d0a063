/*
 * The writes border: Matrix users' actions delivered to the silo's
 * internal API from the durable queue silo_outbox.
 */

#ifndef _NGX_HTTP_MATRIX_SILO_API_H_INCLUDED_
#define _NGX_HTTP_MATRIX_SILO_API_H_INCLUDED_


#include "ngx_http_matrix_module.h"
#include "ngx_http_matrix_http.h"


ngx_int_t ngx_http_matrix_silo_api_init_process(ngx_cycle_t *cycle);

/* something was queued: deliver now rather than at the next tick */
void ngx_http_matrix_silo_api_kick(void);

/* has the silo all these optional writes (NGX_HTTP_MATRIX_SILO_*)? */
ngx_uint_t ngx_http_matrix_silo_supports(ngx_uint_t writes);

/*
 * hr made a PUT of BODY to the silo's API at PATH, followed by KEY
 * (escaped; NULL: none), with the API's token; the caller sets the
 * handler and sends it.
 */
ngx_int_t ngx_http_matrix_silo_request(ngx_http_matrix_http_req_t *hr,
    ngx_pool_t *pool, ngx_str_t *path, ngx_str_t *key, json_t *body);


#endif /* _NGX_HTTP_MATRIX_SILO_API_H_INCLUDED_ */
