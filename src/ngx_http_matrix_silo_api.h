/*
 * The writes border: Matrix users' actions delivered to the silo's
 * internal API from the durable queue silo_outbox.
 */

#ifndef _NGX_HTTP_MATRIX_SILO_API_H_INCLUDED_
#define _NGX_HTTP_MATRIX_SILO_API_H_INCLUDED_


#include "ngx_http_matrix_module.h"


ngx_int_t ngx_http_matrix_silo_api_init_process(ngx_cycle_t *cycle);

/* something was queued: deliver now rather than at the next tick */
void ngx_http_matrix_silo_api_kick(void);


#endif /* _NGX_HTTP_MATRIX_SILO_API_H_INCLUDED_ */
