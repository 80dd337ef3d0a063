/*
 * ngx_http_matrix_module: a Matrix homeserver face for an existing chat
 * application ("silo"), served from inside nginx.
 */

#ifndef _NGX_HTTP_MATRIX_MODULE_H_INCLUDED_
#define _NGX_HTTP_MATRIX_MODULE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <mx_core.h>
#include <mx_room_version.h>


#define NGX_HTTP_MATRIX_SERVER_NAME     "ngx_http_matrix_module"
#define NGX_HTTP_MATRIX_VERSION         "0.1.0"

#define NGX_HTTP_MATRIX_MAX_KEYS        8
#define NGX_HTTP_MATRIX_MAX_SEGMENTS    16

/* the optional writes of the silo's internal API */
#define NGX_HTTP_MATRIX_SILO_REACTIONS  0x0001
#define NGX_HTTP_MATRIX_SILO_TYPING     0x0002
#define NGX_HTTP_MATRIX_SILO_RECEIPTS   0x0004


typedef struct ngx_http_matrix_route_s       ngx_http_matrix_route_t;
typedef struct ngx_http_matrix_route_node_s  ngx_http_matrix_route_node_t;
typedef struct ngx_http_matrix_key_doc_s     ngx_http_matrix_key_doc_t;
typedef struct ngx_http_matrix_pg_s          ngx_http_matrix_pg_t;
typedef struct ngx_http_matrix_http_conf_s   ngx_http_matrix_http_conf_t;
typedef struct ngx_http_matrix_dest_conf_s   ngx_http_matrix_dest_conf_t;
typedef struct ngx_http_matrix_key_notaries_conf_s
    ngx_http_matrix_key_notaries_conf_t;


typedef struct {
    ngx_str_t                       key_id;      /* "ed25519:<version>" */
    ngx_str_t                       key;         /* unpadded base64 */
    int64_t                         expired_ts;  /* ms since the epoch */
} ngx_http_matrix_old_key_t;


typedef struct {
    ngx_http_matrix_route_node_t   *routes;

    ngx_http_matrix_pg_t           *pg;             /* "matrix_postgres" */
    ngx_str_t                       schema;         /* the module's own */
    ngx_str_t                       silo_schema;    /* the silo's views */
    ngx_flag_t                      migrate;

    ngx_url_t                      *silo_api;       /* "matrix_silo_api" */
    ngx_str_t                       silo_api_token;
    ngx_uint_t                      silo_supports;  /* "matrix_silo_
                                                       supports": NGX_HTTP_
                                                       MATRIX_SILO_* */

    ngx_http_matrix_http_conf_t    *http;           /* federation client */
    void                           *remote_keys;    /* per worker */
    ngx_http_matrix_dest_conf_t    *dest;           /* server discovery */
    ngx_http_matrix_key_notaries_conf_t
                                   *key_notaries;   /* trusted notaries */

    ssize_t                         fed_cache_size; /* "matrix_federation_
                                                       cache" */
    ngx_shm_zone_t                 *fed_zone;       /* NULL: none */
    unsigned                        federation:1;   /* a "matrix" location */
    unsigned                        silo_supports_set:1;
} ngx_http_matrix_main_conf_t;


typedef struct {
    ngx_str_t                       server_name;

    ngx_str_t                       signing_key_file;
    ngx_array_t                    *signing_keys;   /* mx_signing_key_t; the
                                                       first signs events,
                                                       all sign the key
                                                       document */
    ngx_array_t                    *old_keys;       /* ngx_http_matrix_
                                                       old_key_t */
    time_t                          key_validity;

    ngx_str_t                       well_known_server;
    ngx_str_t                       well_known_client;

    const mx_room_version_t        *room_version;   /* of rooms it creates */
    ngx_int_t                       room_history;   /* silo messages a new
                                                       room starts with */

    ngx_http_matrix_key_doc_t      *key_doc;        /* per worker */
} ngx_http_matrix_srv_conf_t;


typedef struct {
    ngx_flag_t                      enable;
    u_char                         *file;           /* where "matrix" is */
    ngx_uint_t                      line;
} ngx_http_matrix_loc_conf_t;


/* per request */
typedef struct {
    ngx_http_matrix_srv_conf_t     *mscf;
    const ngx_http_matrix_route_t  *route;
    ngx_str_t                       params[NGX_HTTP_MATRIX_MAX_SEGMENTS];
    ngx_uint_t                      nparams;   /* percent-decoded, in order */
    ngx_uint_t                      field;     /* the part of a resource a
                                                  route asks for */

    ngx_str_t                       origin;       /* of a verified federation
                                                     request */
    void                           *auth;
    json_t                         *body;         /* the request's, parsed
                                                     once, owned by r */

    ngx_buf_t                      *error_body;   /* instead of nginx's page */
    unsigned                        replied:1;    /* the body is ours */
} ngx_http_matrix_ctx_t;


ngx_http_matrix_ctx_t *ngx_http_matrix_get_ctx(ngx_http_request_t *r);


/* ngx_http_matrix_reply.c: every response body this module writes */

ngx_int_t ngx_http_matrix_reply_init(ngx_conf_t *cf);

ngx_int_t ngx_http_matrix_send_body(ngx_http_request_t *r,
    ngx_uint_t status, u_char *body, size_t len);
ngx_int_t ngx_http_matrix_send_json(ngx_http_request_t *r,
    ngx_uint_t status, const json_t *value);
/* the same, and releases VALUE; NULL (a json_pack() that failed): a 500 */
ngx_int_t ngx_http_matrix_send_json_new(ngx_http_request_t *r,
    ngx_uint_t status, json_t *value);
ngx_int_t ngx_http_matrix_send_error(ngx_http_request_t *r,
    ngx_uint_t status, const char *errcode, const char *fmt, ...);
ngx_int_t ngx_http_matrix_add_header(ngx_http_request_t *r, const char *key,
    ngx_str_t *value);
int64_t ngx_http_matrix_now_ms(void);

/*
 * The request's JSON body object, parsed once and kept for the request
 * (borrowed: not to be released); NULL when it is not one, the error
 * already answered and *rc what the handler returns.
 */
json_t *ngx_http_matrix_request_json(ngx_http_request_t *r, ngx_int_t *rc);

/* v released with pool (now, when the cleanup cannot be had: NGX_ERROR) */
ngx_int_t ngx_http_matrix_keep_json(ngx_pool_t *pool, json_t *v);

/*
 * The query string argument NAME, percent-decoded into r's pool: NGX_OK;
 * NGX_DECLINED when there is none; NGX_ERROR when out of memory.
 */
ngx_int_t ngx_http_matrix_query_arg(ngx_http_request_t *r, const char *name,
    ngx_str_t *value);


/* ngx_http_matrix_module.c */

char *ngx_http_matrix_conf_server_name(ngx_conf_t *cf, ngx_command_t *cmd,
    ngx_str_t *name);


extern ngx_module_t  ngx_http_matrix_module;


#endif /* _NGX_HTTP_MATRIX_MODULE_H_INCLUDED_ */
