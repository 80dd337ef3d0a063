/*
 * Profiles of silo users, read live from the silo's "users" view:
 * GET /_matrix/client/v3/profile/{userId}[/displayname|/avatar_url], and
 * for other servers GET /_matrix/federation/v1/query/profile.
 *
 * Only what is a Matrix profile goes out: the display name, and the
 * avatar when the silo's is already an mxc:// URI (others need the
 * media repository, not there yet).
 */


#include "ngx_http_matrix_router.h"
#include "ngx_http_matrix_profile.h"

#include <mx_ids.h>


typedef enum {
    NGX_HTTP_MATRIX_PROFILE_ALL = 0,
    NGX_HTTP_MATRIX_PROFILE_DISPLAYNAME,
    NGX_HTTP_MATRIX_PROFILE_AVATAR_URL
} ngx_http_matrix_profile_field_e;


static ngx_int_t ngx_http_matrix_profile(ngx_http_request_t *r,
    ngx_http_matrix_ctx_t *ctx);
static ngx_int_t ngx_http_matrix_profile_displayname(ngx_http_request_t *r,
    ngx_http_matrix_ctx_t *ctx);
static ngx_int_t ngx_http_matrix_profile_avatar_url(ngx_http_request_t *r,
    ngx_http_matrix_ctx_t *ctx);
static ngx_int_t ngx_http_matrix_profile_query(ngx_http_request_t *r,
    ngx_http_matrix_ctx_t *ctx);
static ngx_int_t ngx_http_matrix_profile_lookup(ngx_http_request_t *r,
    ngx_http_matrix_ctx_t *ctx, ngx_http_matrix_profile_field_e field);
static void ngx_http_matrix_profile_done(ngx_http_matrix_pg_query_t *q);
static ngx_int_t ngx_http_matrix_profile_reply(ngx_http_request_t *r,
    ngx_http_matrix_pg_query_t *q);


ngx_http_matrix_route_t  ngx_http_matrix_profile_routes[] = {

    { NGX_HTTP_GET,
      ngx_string("/_matrix/client/v3/profile/{userId}"),
      ngx_http_matrix_profile,
      0 },

    { NGX_HTTP_GET,
      ngx_string("/_matrix/client/v3/profile/{userId}/displayname"),
      ngx_http_matrix_profile_displayname,
      0 },

    { NGX_HTTP_GET,
      ngx_string("/_matrix/client/v3/profile/{userId}/avatar_url"),
      ngx_http_matrix_profile_avatar_url,
      0 },

    { NGX_HTTP_GET,
      ngx_string("/_matrix/federation/v1/query/profile"),
      ngx_http_matrix_profile_query,
      NGX_HTTP_MATRIX_FEDERATION },

      ngx_http_matrix_null_route
};


/* silo border: a read of the operator's view, by the indexed localpart */

static ngx_http_matrix_pg_stmt_t  ngx_http_matrix_profile_stmt =
    ngx_http_matrix_pg_stmt(
        "SELECT display_name, avatar_url FROM users "
        "WHERE localpart = $1 AND deactivated IS NOT TRUE", 1);


static ngx_int_t
ngx_http_matrix_profile(ngx_http_request_t *r, ngx_http_matrix_ctx_t *ctx)
{
    return ngx_http_matrix_profile_lookup(r, ctx,
                                          NGX_HTTP_MATRIX_PROFILE_ALL);
}


static ngx_int_t
ngx_http_matrix_profile_displayname(ngx_http_request_t *r,
    ngx_http_matrix_ctx_t *ctx)
{
    return ngx_http_matrix_profile_lookup(r, ctx,
                                          NGX_HTTP_MATRIX_PROFILE_DISPLAYNAME);
}


static ngx_int_t
ngx_http_matrix_profile_avatar_url(ngx_http_request_t *r,
    ngx_http_matrix_ctx_t *ctx)
{
    return ngx_http_matrix_profile_lookup(r, ctx,
                                          NGX_HTTP_MATRIX_PROFILE_AVATAR_URL);
}


/* ?user_id=@alice:example.org[&field=displayname|avatar_url] */

static ngx_int_t
ngx_http_matrix_profile_query(ngx_http_request_t *r,
    ngx_http_matrix_ctx_t *ctx)
{
    ngx_int_t                         rc;
    ngx_str_t                         v;
    ngx_http_matrix_profile_field_e   field;

    rc = ngx_http_matrix_query_arg(r, "user_id", &ctx->params[0]);

    if (rc == NGX_DECLINED) {
        return ngx_http_matrix_send_error(r, NGX_HTTP_BAD_REQUEST,
                                          "M_MISSING_PARAM",
                                          "Missing user_id");
    }

    if (rc != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->nparams = 1;

    field = NGX_HTTP_MATRIX_PROFILE_ALL;

    if (ngx_http_arg(r, (u_char *) "field", 5, &v) == NGX_OK) {
        if (v.len == 11 && ngx_strncmp(v.data, "displayname", 11) == 0) {
            field = NGX_HTTP_MATRIX_PROFILE_DISPLAYNAME;

        } else if (v.len == 10 && ngx_strncmp(v.data, "avatar_url", 10) == 0)
        {
            field = NGX_HTTP_MATRIX_PROFILE_AVATAR_URL;

        } else {
            return ngx_http_matrix_send_error(r, NGX_HTTP_BAD_REQUEST,
                                              "M_INVALID_PARAM",
                                              "Unknown profile field");
        }
    }

    return ngx_http_matrix_profile_lookup(r, ctx, field);
}


static ngx_int_t
ngx_http_matrix_profile_lookup(ngx_http_request_t *r,
    ngx_http_matrix_ctx_t *ctx, ngx_http_matrix_profile_field_e field)
{
    ctx->field = field;

    return ngx_http_matrix_local_user_query(r, ctx,
                                            &ngx_http_matrix_profile_stmt,
                                            ngx_http_matrix_profile_done);
}


/*
 * The silo user named by the route's {userId}: STMT run with its
 * localpart, HANDLER called with the query (q->data the request); a user
 * ID that is not this server's is a 404 without any SQL.
 */

ngx_int_t
ngx_http_matrix_local_user_query(ngx_http_request_t *r,
    ngx_http_matrix_ctx_t *ctx, ngx_http_matrix_pg_stmt_t *stmt,
    ngx_http_matrix_pg_handler_pt handler)
{
    ngx_str_t                    localpart;
    const char                  *why;
    ngx_http_matrix_pg_t        *pg;
    ngx_http_matrix_pg_query_t  *q;

    switch (ngx_http_matrix_local_user(ctx, &ctx->params[0], &localpart,
                                       &why))
    {
    case NGX_OK:
        break;

    case NGX_DECLINED:
        return ngx_http_matrix_send_error(r, NGX_HTTP_NOT_FOUND,
                                          "M_NOT_FOUND", "%s", why);

    default:
        return ngx_http_matrix_send_error(r, NGX_HTTP_BAD_REQUEST,
                                          "M_INVALID_PARAM",
                                          "Invalid user ID: %s", why);
    }

    pg = ngx_http_matrix_pg_for_request(r);
    if (pg == NULL) {
        return ngx_http_matrix_send_error(r, NGX_HTTP_NOT_FOUND,
                                          "M_UNRECOGNIZED",
                                          "Users need \"matrix_postgres\"");
    }

    q = ngx_http_matrix_pg_query_create(pg, r->pool, r->connection->log);
    if (q == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    q->stmt = stmt;
    q->nparams = 1;
    q->handler = handler;
    q->data = r;

    if (ngx_http_matrix_pg_param(q, 0, &localpart) != NGX_OK
        || ngx_http_matrix_pg_run(q) != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    r->main->count++;

    return NGX_DONE;
}


static void
ngx_http_matrix_profile_done(ngx_http_matrix_pg_query_t *q)
{
    ngx_int_t            rc;
    ngx_connection_t    *c;
    ngx_http_request_t  *r;

    r = q->data;
    c = r->connection;

    rc = ngx_http_matrix_profile_reply(r, q);

    ngx_http_finalize_request(r, rc);
    ngx_http_run_posted_requests(c);
}


static ngx_int_t
ngx_http_matrix_profile_reply(ngx_http_request_t *r,
    ngx_http_matrix_pg_query_t *q)
{
    int                     ntuples;
    json_t                 *body;
    ngx_int_t               rc;
    const char             *avatar;
    ngx_http_matrix_ctx_t  *ctx;

    if (q->status != NGX_HTTP_MATRIX_PG_OK) {
        return ngx_http_matrix_pg_send_error(r, q);
    }

    ctx = ngx_http_matrix_get_ctx(r);
    ntuples = PQntuples(q->result);

    if (ntuples == 0) {
        return ngx_http_matrix_send_error(r, NGX_HTTP_NOT_FOUND,
                                          "M_NOT_FOUND", "Profile not found");
    }

    body = json_object();
    if (body == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ctx->field != NGX_HTTP_MATRIX_PROFILE_AVATAR_URL
        && !PQgetisnull(q->result, 0, 0))
    {
        json_object_set_new(body, "displayname",
                            json_stringn(PQgetvalue(q->result, 0, 0),
                                         PQgetlength(q->result, 0, 0)));
    }

    avatar = PQgetvalue(q->result, 0, 1);

    if (ctx->field != NGX_HTTP_MATRIX_PROFILE_DISPLAYNAME
        && !PQgetisnull(q->result, 0, 1)
        && ngx_strncmp(avatar, "mxc://", 6) == 0)
    {
        json_object_set_new(body, "avatar_url",
                            json_stringn(avatar,
                                         PQgetlength(q->result, 0, 1)));
    }

    if (ctx->field != NGX_HTTP_MATRIX_PROFILE_ALL
        && json_object_size(body) == 0)
    {
        json_decref(body);
        return ngx_http_matrix_send_error(r, NGX_HTTP_NOT_FOUND,
                                          "M_NOT_FOUND",
                                          "This profile has no such field");
    }

    rc = ngx_http_matrix_send_json(r, NGX_HTTP_OK, body);
    json_decref(body);

    return rc;
}


/*
 * A user ID of this server's, and its localpart: NGX_OK; one of another
 * server's or a localpart the silo never has (today's grammar only):
 * NGX_DECLINED; not a user ID: NGX_ERROR.  *why says which.
 */

ngx_int_t
ngx_http_matrix_local_user(ngx_http_matrix_ctx_t *ctx, ngx_str_t *user_id,
    ngx_str_t *localpart, const char **why)
{
    u_char     *colon;
    ngx_str_t   server_name;

    if (mx_id_valid((char *) user_id->data, user_id->len, '@', 1, why)
        != MX_OK)
    {
        return NGX_ERROR;
    }

    colon = ngx_strlchr(user_id->data, user_id->data + user_id->len, ':');

    localpart->data = user_id->data + 1;
    localpart->len = colon - localpart->data;
    server_name.data = colon + 1;
    server_name.len = user_id->data + user_id->len - server_name.data;

    if (server_name.len != ctx->mscf->server_name.len
        || ngx_strncmp(server_name.data, ctx->mscf->server_name.data,
                       server_name.len) != 0)
    {
        *why = "The user is not on this server";
        return NGX_DECLINED;
    }

    if (!mx_user_localpart_valid((char *) localpart->data, localpart->len)) {
        *why = "No such user";
        return NGX_DECLINED;
    }

    return NGX_OK;
}
