/*
 * How others find this server: /.well-known/matrix/server (delegation of
 * federation), /.well-known/matrix/client (client discovery) and the
 * federation version endpoint.
 */


#include "ngx_http_matrix_router.h"


static ngx_int_t ngx_http_matrix_well_known_server(ngx_http_request_t *r,
    ngx_http_matrix_ctx_t *ctx);
static ngx_int_t ngx_http_matrix_well_known_client(ngx_http_request_t *r,
    ngx_http_matrix_ctx_t *ctx);
static ngx_int_t ngx_http_matrix_federation_version(ngx_http_request_t *r,
    ngx_http_matrix_ctx_t *ctx);


ngx_http_matrix_route_t  ngx_http_matrix_discovery_routes[] = {

    { NGX_HTTP_GET,
      ngx_string("/.well-known/matrix/server"),
      ngx_http_matrix_well_known_server,
      0 },

    { NGX_HTTP_GET,
      ngx_string("/.well-known/matrix/client"),
      ngx_http_matrix_well_known_client,
      0 },

    { NGX_HTTP_GET,
      ngx_string("/_matrix/federation/v1/version"),
      ngx_http_matrix_federation_version,
      0 },

      ngx_http_matrix_null_route
};


static ngx_int_t
ngx_http_matrix_well_known_server(ngx_http_request_t *r,
    ngx_http_matrix_ctx_t *ctx)
{
    json_t  *body;

    if (ctx->mscf->well_known_server.len == 0) {
        return ngx_http_matrix_send_error(r, NGX_HTTP_NOT_FOUND, "M_NOT_FOUND",
                                          "No federation delegation "
                                          "is configured");
    }

    body = json_pack("{s:s%}", "m.server",
                     (char *) ctx->mscf->well_known_server.data,
                     ctx->mscf->well_known_server.len);

    return ngx_http_matrix_send_json_new(r, NGX_HTTP_OK, body);
}


static ngx_int_t
ngx_http_matrix_well_known_client(ngx_http_request_t *r,
    ngx_http_matrix_ctx_t *ctx)
{
    json_t  *body;

    if (ctx->mscf->well_known_client.len == 0) {
        return ngx_http_matrix_send_error(r, NGX_HTTP_NOT_FOUND, "M_NOT_FOUND",
                                          "No client discovery "
                                          "is configured");
    }

    body = json_pack("{s:{s:s%}}", "m.homeserver", "base_url",
                     (char *) ctx->mscf->well_known_client.data,
                     ctx->mscf->well_known_client.len);

    return ngx_http_matrix_send_json_new(r, NGX_HTTP_OK, body);
}


static ngx_int_t
ngx_http_matrix_federation_version(ngx_http_request_t *r,
    ngx_http_matrix_ctx_t *ctx)
{
    static u_char  version[] =
        "{\"server\":{\"name\":\"" NGX_HTTP_MATRIX_SERVER_NAME "\","
        "\"version\":\"" NGX_HTTP_MATRIX_VERSION "\"}}";

    return ngx_http_matrix_send_body(r, NGX_HTTP_OK, version,
                                     sizeof(version) - 1);
}
