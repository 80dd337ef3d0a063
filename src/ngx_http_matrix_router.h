/*
 * The one routing table of the module: every /_matrix/ and
 * /.well-known/matrix/ endpoint is a row in a route table, compiled at
 * configuration time into a tree of path segments.
 */

#ifndef _NGX_HTTP_MATRIX_ROUTER_H_INCLUDED_
#define _NGX_HTTP_MATRIX_ROUTER_H_INCLUDED_


#include "ngx_http_matrix_module.h"


typedef ngx_int_t (*ngx_http_matrix_handler_pt)(ngx_http_request_t *r,
    ngx_http_matrix_ctx_t *ctx);


struct ngx_http_matrix_route_s {
    ngx_uint_t                      methods;    /* NGX_HTTP_GET|... */
    ngx_str_t                       path;       /* "/a/{param}/b" */
    ngx_http_matrix_handler_pt      handler;
    ngx_uint_t                      flags;
};

/* the route runs for a request X-Matrix signed by another server */
#define NGX_HTTP_MATRIX_FEDERATION  0x01

#define ngx_http_matrix_null_route  { 0, ngx_null_string, NULL, 0 }


ngx_int_t ngx_http_matrix_routes_init(ngx_conf_t *cf,
    ngx_http_matrix_main_conf_t *mmcf);
ngx_int_t ngx_http_matrix_route_request(ngx_http_request_t *r);

/* ngx_http_matrix_federation_auth.c */
ngx_int_t ngx_http_matrix_federation_auth(ngx_http_request_t *r,
    ngx_http_matrix_ctx_t *ctx);


/* route tables of the endpoint files */
extern ngx_http_matrix_route_t  ngx_http_matrix_keys_routes[];
extern ngx_http_matrix_route_t  ngx_http_matrix_discovery_routes[];
extern ngx_http_matrix_route_t  ngx_http_matrix_profile_routes[];
extern ngx_http_matrix_route_t  ngx_http_matrix_notary_routes[];
extern ngx_http_matrix_route_t  ngx_http_matrix_devices_routes[];
extern ngx_http_matrix_route_t  ngx_http_matrix_membership_routes[];
extern ngx_http_matrix_route_t  ngx_http_matrix_events_routes[];
extern ngx_http_matrix_route_t  ngx_http_matrix_invite_routes[];
extern ngx_http_matrix_route_t  ngx_http_matrix_directory_routes[];
extern ngx_http_matrix_route_t  ngx_http_matrix_send_routes[];


#endif /* _NGX_HTTP_MATRIX_ROUTER_H_INCLUDED_ */
