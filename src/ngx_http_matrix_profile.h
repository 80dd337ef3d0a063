/*
 * Silo users as Matrix users: which user IDs are this server's, and the
 * silo's "users" view read for one of them.
 */

#ifndef _NGX_HTTP_MATRIX_PROFILE_H_INCLUDED_
#define _NGX_HTTP_MATRIX_PROFILE_H_INCLUDED_


#include "ngx_http_matrix_router.h"
#include "ngx_http_matrix_pg.h"


/* NGX_OK ours, its localpart set; NGX_DECLINED not ours; NGX_ERROR no ID */
ngx_int_t ngx_http_matrix_local_user(ngx_http_matrix_ctx_t *ctx,
    ngx_str_t *user_id, ngx_str_t *localpart, const char **why);

ngx_int_t ngx_http_matrix_local_user_query(ngx_http_request_t *r,
    ngx_http_matrix_ctx_t *ctx, ngx_http_matrix_pg_stmt_t *stmt,
    ngx_http_matrix_pg_handler_pt handler);


#endif /* _NGX_HTTP_MATRIX_PROFILE_H_INCLUDED_ */
