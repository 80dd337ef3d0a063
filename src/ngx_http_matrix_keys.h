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


#endif /* _NGX_HTTP_MATRIX_KEYS_H_INCLUDED_ */
