/*
 * This server's signing keys: the key file directives and the key
 * document served at /_matrix/key/v2/server.
 */

#ifndef _NGX_HTTP_MATRIX_KEYS_H_INCLUDED_
#define _NGX_HTTP_MATRIX_KEYS_H_INCLUDED_


#include "ngx_http_matrix_module.h"


char *ngx_http_matrix_signing_key(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
char *ngx_http_matrix_old_verify_key(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
char *ngx_http_matrix_keys_merge(ngx_conf_t *cf,
    ngx_http_matrix_srv_conf_t *prev, ngx_http_matrix_srv_conf_t *conf);


struct ngx_http_matrix_key_doc_s {
    u_char                     *data;       /* canonical, signed */
    size_t                      len;
    int64_t                     valid_until_ts;
    int64_t                     refresh_ts;
};

/* this server's key document, signed, as served */
ngx_http_matrix_key_doc_t *ngx_http_matrix_key_doc(
    ngx_http_matrix_srv_conf_t *mscf, ngx_log_t *log);


#endif /* _NGX_HTTP_MATRIX_KEYS_H_INCLUDED_ */
