/*
 * Devices and end-to-end keys of silo users, for other servers:
 * GET /_matrix/federation/v1/user/devices/{userId},
 * POST /_matrix/federation/v1/user/keys/query and .../user/keys/claim.
 *
 * Silo users have no Matrix devices until they sign in with a Matrix
 * client: the answers are the truthful empty ones, so that a remote
 * client that encrypts to a room with silo users in it learns that there
 * is nobody to encrypt to, rather than retrying an error.
 */


#include "ngx_http_matrix_router.h"
#include "ngx_http_matrix_profile.h"


#define NGX_HTTP_MATRIX_KEYS_MAX_USERS  1000


static ngx_int_t ngx_http_matrix_user_devices(ngx_http_request_t *r,
    ngx_http_matrix_ctx_t *ctx);
static void ngx_http_matrix_user_devices_done(ngx_http_matrix_pg_query_t *q);
static ngx_int_t ngx_http_matrix_keys_query(ngx_http_request_t *r,
    ngx_http_matrix_ctx_t *ctx);
static ngx_int_t ngx_http_matrix_keys_claim(ngx_http_request_t *r,
    ngx_http_matrix_ctx_t *ctx);
static ngx_int_t ngx_http_matrix_keys_reply(ngx_http_request_t *r,
    ngx_http_matrix_ctx_t *ctx, const char *field, ngx_uint_t listed);


ngx_http_matrix_route_t  ngx_http_matrix_devices_routes[] = {

    { NGX_HTTP_GET,
      ngx_string("/_matrix/federation/v1/user/devices/{userId}"),
      ngx_http_matrix_user_devices,
      NGX_HTTP_MATRIX_FEDERATION },

    { NGX_HTTP_POST,
      ngx_string("/_matrix/federation/v1/user/keys/query"),
      ngx_http_matrix_keys_query,
      NGX_HTTP_MATRIX_FEDERATION },

    { NGX_HTTP_POST,
      ngx_string("/_matrix/federation/v1/user/keys/claim"),
      ngx_http_matrix_keys_claim,
      NGX_HTTP_MATRIX_FEDERATION },

      ngx_http_matrix_null_route
};


/* silo border: does the user exist (and is not deactivated) */

static ngx_http_matrix_pg_stmt_t  ngx_http_matrix_user_exists_stmt =
    ngx_http_matrix_pg_stmt(
        "SELECT 1 FROM users "
        "WHERE localpart = $1 AND deactivated IS NOT TRUE", 1);


static ngx_int_t
ngx_http_matrix_user_devices(ngx_http_request_t *r,
    ngx_http_matrix_ctx_t *ctx)
{
    return ngx_http_matrix_local_user_query(r, ctx,
                                            &ngx_http_matrix_user_exists_stmt,
                                            ngx_http_matrix_user_devices_done);
}


static void
ngx_http_matrix_user_devices_done(ngx_http_matrix_pg_query_t *q)
{
    json_t                 *body;
    ngx_int_t               rc;
    ngx_connection_t       *c;
    ngx_http_request_t     *r;
    ngx_http_matrix_ctx_t  *ctx;

    r = q->data;
    c = r->connection;
    ctx = ngx_http_matrix_get_ctx(r);

    if (q->status != NGX_HTTP_MATRIX_PG_OK) {
        rc = ngx_http_matrix_pg_send_error(r, q);

    } else if (PQntuples(q->result) == 0) {
        rc = ngx_http_matrix_send_error(r, NGX_HTTP_NOT_FOUND, "M_NOT_FOUND",
                                        "No such user");

    } else {
        /* no devices yet, so their list has never changed: stream 0 */

        body = json_pack("{s:s%,s:i,s:[]}",
                         "user_id", (char *) ctx->params[0].data,
                         ctx->params[0].len,
                         "stream_id", 0,
                         "devices");

        rc = ngx_http_matrix_send_json_new(r, NGX_HTTP_OK, body);
    }

    ngx_http_finalize_request(r, rc);
    ngx_http_run_posted_requests(c);
}


/* {"device_keys": {"@u:here": [...]}}: every user of ours, no keys */

static ngx_int_t
ngx_http_matrix_keys_query(ngx_http_request_t *r, ngx_http_matrix_ctx_t *ctx)
{
    return ngx_http_matrix_keys_reply(r, ctx, "device_keys", 1);
}


/* {"one_time_keys": {"@u:here": {"DEVICE": "alg"}}}: nothing to claim */

static ngx_int_t
ngx_http_matrix_keys_claim(ngx_http_request_t *r, ngx_http_matrix_ctx_t *ctx)
{
    return ngx_http_matrix_keys_reply(r, ctx, "one_time_keys", 0);
}


/*
 * The body's {field: {user ID: ...}} checked, and answered with the same
 * field: when listed, an empty entry for each of the users that are this
 * server's (others are not ours to answer for and are left out, as the
 * spec lets a server do).
 */

static ngx_int_t
ngx_http_matrix_keys_reply(ngx_http_request_t *r, ngx_http_matrix_ctx_t *ctx,
    const char *field, ngx_uint_t listed)
{
    json_t      *body, *asked, *users, *v;
    ngx_int_t    rc;
    ngx_str_t    user_id, localpart;
    const char  *key, *why;

    body = ngx_http_matrix_request_json(r, &rc);
    if (body == NULL) {
        return rc;
    }

    asked = json_object_get(body, field);

    if (!json_is_object(asked)) {
        return ngx_http_matrix_send_error(r, NGX_HTTP_BAD_REQUEST,
                                          "M_BAD_JSON",
                                          "\"%s\" must be an object", field);
    }

    if (json_object_size(asked) > NGX_HTTP_MATRIX_KEYS_MAX_USERS) {
        return ngx_http_matrix_send_error(r, NGX_HTTP_BAD_REQUEST,
                                          "M_LIMIT_EXCEEDED",
                                          "At most %d users at once",
                                          NGX_HTTP_MATRIX_KEYS_MAX_USERS);
    }

    users = json_object();
    if (users == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    json_object_foreach(asked, key, v) {
        user_id.data = (u_char *) key;
        user_id.len = ngx_strlen(key);

        if (listed
            && ngx_http_matrix_local_user(ctx, &user_id, &localpart, &why)
               == NGX_OK)
        {
            json_object_set_new(users, key, json_object());
        }
    }

    body = json_pack("{s:o}", field, users);

    return ngx_http_matrix_send_json_new(r, NGX_HTTP_OK, body);
}
