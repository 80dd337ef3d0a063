/*
 * EDUs other servers push to us in their transactions: typing notices
 * and read receipts, for the silo that has writes for them.
 */

#ifndef _NGX_HTTP_MATRIX_EDU_H_INCLUDED_
#define _NGX_HTTP_MATRIX_EDU_H_INCLUDED_


#include "ngx_http_matrix_module.h"


/*
 * The EDUs of a transaction from origin: what the silo may be told is
 * taken from them now and told later, best effort, while the transaction
 * goes on; nothing they hold can fail it.
 */
void ngx_http_matrix_edu_receive(ngx_http_request_t *r, ngx_str_t *origin,
    json_t *edus);


#endif /* _NGX_HTTP_MATRIX_EDU_H_INCLUDED_ */
