/*
 * The room directory, for other servers:
 * GET /_matrix/federation/v1/query/directory (an alias of ours to its
 * room ID) and GET and POST /_matrix/federation/v1/publicRooms (the silo's
 * public rooms, paged).
 *
 * A silo room has no Matrix room ID until another server looks at it:
 * the statement that reads the room also allocates its ID in
 * matrix_rooms, so that every worker and every node hands out the same
 * one.  No events are made here; the room's events are built when a
 * remote user first joins.
 */


#include "ngx_http_matrix_router.h"
#include "ngx_http_matrix_pg.h"

#include <mx_ids.h>


#define NGX_HTTP_MATRIX_ROOMS_MAX_LIMIT    500
#define NGX_HTTP_MATRIX_ROOMS_MAX_SEARCH   256


/* a publicRooms request, as read from the query string or the body */
typedef struct {
    ngx_int_t                       limit;         /* -1: not given */
    ngx_str_t                       since;
    ngx_str_t                       search;
    ngx_flag_t                      all_networks;
    unsigned                        instance:1;    /* third_party_instance_id
                                                      given */
    unsigned                        untyped:1;     /* room_types leaves out
                                                      rooms without a type */
} ngx_http_matrix_rooms_args_t;


typedef struct ngx_http_matrix_rooms_page_s  ngx_http_matrix_rooms_page_t;

typedef ngx_int_t (*ngx_http_matrix_rooms_reply_pt)(ngx_http_request_t *r,
    ngx_http_matrix_rooms_page_t *page, PGresult *res);

/* what the reply needs of the request, once the rows are there */
struct ngx_http_matrix_rooms_page_s {
    ngx_http_request_t             *request;
    ngx_http_matrix_rooms_reply_pt  reply;
    ngx_uint_t                      limit;
    unsigned                        since:1;
    unsigned                        backward:1;
};


static ngx_int_t ngx_http_matrix_query_directory(ngx_http_request_t *r,
    ngx_http_matrix_ctx_t *ctx);
static ngx_int_t ngx_http_matrix_query_directory_reply(ngx_http_request_t *r,
    ngx_http_matrix_rooms_page_t *page, PGresult *res);
static ngx_int_t ngx_http_matrix_public_rooms_get(ngx_http_request_t *r,
    ngx_http_matrix_ctx_t *ctx);
static ngx_int_t ngx_http_matrix_public_rooms_post(ngx_http_request_t *r,
    ngx_http_matrix_ctx_t *ctx);
static ngx_int_t ngx_http_matrix_public_rooms_filter(ngx_http_request_t *r,
    json_t *filter, ngx_http_matrix_rooms_args_t *args, ngx_int_t *rc);
static ngx_int_t ngx_http_matrix_public_rooms(ngx_http_request_t *r,
    ngx_http_matrix_ctx_t *ctx, ngx_http_matrix_rooms_args_t *args);
static ngx_int_t ngx_http_matrix_rooms_since(ngx_str_t *since,
    ngx_str_t *members, ngx_str_t *nid, ngx_uint_t *backward);
static ngx_int_t ngx_http_matrix_rooms_pattern(ngx_pool_t *pool,
    ngx_str_t *search, ngx_str_t *pattern);
static ngx_int_t ngx_http_matrix_public_rooms_reply(ngx_http_request_t *r,
    ngx_http_matrix_rooms_page_t *page, PGresult *res);
static json_t *ngx_http_matrix_rooms_chunk(ngx_http_matrix_ctx_t *ctx,
    PGresult *res, int row);
static ngx_int_t ngx_http_matrix_rooms_token(json_t *body, const char *key,
    u_char dir, PGresult *res, int row);
static ngx_http_matrix_pg_query_t *ngx_http_matrix_rooms_query(
    ngx_http_request_t *r, ngx_http_matrix_ctx_t *ctx,
    ngx_http_matrix_pg_stmt_t *stmt, ngx_http_matrix_rooms_page_t *page,
    ngx_int_t *rc);
static void ngx_http_matrix_rooms_done(ngx_http_matrix_pg_query_t *q);
static ngx_uint_t ngx_http_matrix_utf8_valid(u_char *p, size_t len);


ngx_http_matrix_route_t  ngx_http_matrix_directory_routes[] = {

    { NGX_HTTP_GET,
      ngx_string("/_matrix/federation/v1/query/directory"),
      ngx_http_matrix_query_directory,
      NGX_HTTP_MATRIX_FEDERATION },

    { NGX_HTTP_GET,
      ngx_string("/_matrix/federation/v1/publicRooms"),
      ngx_http_matrix_public_rooms_get,
      NGX_HTTP_MATRIX_FEDERATION },

    { NGX_HTTP_POST,
      ngx_string("/_matrix/federation/v1/publicRooms"),
      ngx_http_matrix_public_rooms_post,
      NGX_HTTP_MATRIX_FEDERATION },

      ngx_http_matrix_null_route
};


static ngx_str_t  ngx_http_matrix_bool[] = {   /* SQL booleans */
    ngx_string("f"),
    ngx_string("t")
};


/*
 * Both statements take $1 the server name, $2 the room version and $3
 * whether IDs may be allocated, and end in the rooms' IDs: those already
 * in matrix_rooms as of the statement's snapshot, and the others
 * inserted.  An insert that meets a row another session committed
 * meanwhile (invisible to the snapshot) turns into a no-op update, which
 * returns that row: so concurrent requests all get the winner's ID.
 * The ID is "!", 22 URL-safe characters of a random UUID and ":" ours.
 */

#define NGX_HTTP_MATRIX_ROOMS_ALLOCATE(from)                                 \
    "INSERT INTO matrix_rooms (room_id, silo_room_id, room_version) "        \
    "SELECT DISTINCT ON (s.room_id) "                                        \
           "'!' || rtrim(translate(encode(uuid_send(gen_random_uuid()), "    \
                                         "'base64'), '+/', '-_'), '=') "     \
           "|| ':' || $1::text, s.room_id, $2::text "                        \
      "FROM " from " s "                                                     \
     "WHERE $3::boolean AND NOT EXISTS "                                     \
           "(SELECT 1 FROM matrix_rooms m WHERE m.silo_room_id = s.room_id) " \
    "ON CONFLICT (silo_room_id) DO UPDATE "                                  \
       "SET silo_room_id = EXCLUDED.silo_room_id "                           \
    "RETURNING room_nid, room_id, silo_room_id"


/* $4 the alias localpart; silo border: rooms by the indexed alias */

static ngx_http_matrix_pg_stmt_t  ngx_http_matrix_directory_stmt =
    ngx_http_matrix_pg_stmt(
        "WITH room AS ("
            "SELECT r.room_id FROM rooms r "
             "WHERE r.alias = $4::text AND r.room_id IS NOT NULL "
             "ORDER BY r.room_id LIMIT 1), "
        "fresh AS (" NGX_HTTP_MATRIX_ROOMS_ALLOCATE("room") ") "
        "SELECT m.room_id FROM matrix_rooms m "
          "JOIN room ON m.silo_room_id = room.room_id "
        "UNION ALL SELECT room_id FROM fresh", 4);


/*
 * $4 the room_nid of the room a page starts after (or before, $6
 * backward), $5 its member count then, $7 how many rows, $8 an ILIKE
 * pattern.  Rooms are ordered by member count, largest first, then by
 * the silo's room ID; a page is the rooms after the token's in that
 * order, or before it read backwards.  Every row carries the count of
 * the candidates and whether the token's room is known; an empty page is
 * one row of those two.
 *
 * silo border: all public rooms are read and sorted (docs/silo-contract.md,
 * "rooms"); member_count NULL is counted in room_members by room_id.  The
 * members are the silo's and the other servers' users joined in Matrix
 * ($1 is this server's name: its users are the silo's, counted already).
 */

static ngx_http_matrix_pg_stmt_t  ngx_http_matrix_public_rooms_stmt =
    ngx_http_matrix_pg_stmt(
        "WITH cand AS ("
            "SELECT r.room_id, r.alias, r.name, r.topic, r.avatar_url, "
                   "greatest(coalesce(r.member_count, "
                       "(SELECT count(*) FROM room_members rm "
                         "WHERE rm.room_id = r.room_id)), 0) "
                   "+ (SELECT count(*) FROM matrix_rooms m "
                       "JOIN room_state s ON s.room_nid = m.room_nid "
                      "WHERE m.silo_room_id = r.room_id "
                        "AND s.membership = 'join' "
                        "AND substr(s.state_key, strpos(s.state_key, ':') + 1) "
                            "<> $1::text) AS members "
              "FROM rooms r "
             "WHERE r.is_public IS TRUE AND r.room_id IS NOT NULL "
               "AND ($8::text IS NULL OR r.name ILIKE $8::text "
                    "OR r.topic ILIKE $8::text OR r.alias ILIKE $8::text) "
               "AND ($3::boolean OR EXISTS (SELECT 1 FROM matrix_rooms m "
                                    "WHERE m.silo_room_id = r.room_id))), "
        "anchor AS ("
            "SELECT silo_room_id FROM matrix_rooms "
             "WHERE room_nid = $4::integer), "
        "page AS ("
            "SELECT c.* FROM cand c "
             "WHERE $4::integer IS NULL "
                "OR (NOT $6::boolean "
                    "AND (c.members < $5::bigint "
                         "OR (c.members = $5::bigint AND c.room_id > "
                             "(SELECT silo_room_id FROM anchor)))) "
                "OR ($6::boolean "
                    "AND (c.members > $5::bigint "
                         "OR (c.members = $5::bigint AND c.room_id < "
                             "(SELECT silo_room_id FROM anchor)))) "
             "ORDER BY CASE WHEN $6::boolean THEN c.members END, "
                      "CASE WHEN $6::boolean THEN c.room_id END DESC, "
                      "c.members DESC, c.room_id "
             "LIMIT $7::integer), "
        "fresh AS (" NGX_HTTP_MATRIX_ROOMS_ALLOCATE("page") ") "
        "SELECT t.total, t.anchored, p.members, "
               "coalesce(m.room_nid, f.room_nid), "
               "coalesce(m.room_id, f.room_id), "
               "p.alias, p.name, p.topic, p.avatar_url "
          "FROM (SELECT (SELECT count(*) FROM cand) AS total, "
                       "(SELECT count(*) FROM anchor) AS anchored) t "
          "LEFT JOIN (page p "
                     "LEFT JOIN matrix_rooms m ON m.silo_room_id = p.room_id "
                     "LEFT JOIN fresh f ON f.silo_room_id = p.room_id) "
            "ON true "
         "ORDER BY p.members DESC, p.room_id", 8);


/* the columns of ngx_http_matrix_public_rooms_stmt */
#define NGX_HTTP_MATRIX_ROOMS_TOTAL      0
#define NGX_HTTP_MATRIX_ROOMS_ANCHORED   1
#define NGX_HTTP_MATRIX_ROOMS_MEMBERS    2
#define NGX_HTTP_MATRIX_ROOMS_NID        3
#define NGX_HTTP_MATRIX_ROOMS_ROOM_ID    4
#define NGX_HTTP_MATRIX_ROOMS_ALIAS      5
#define NGX_HTTP_MATRIX_ROOMS_NAME       6
#define NGX_HTTP_MATRIX_ROOMS_TOPIC      7
#define NGX_HTTP_MATRIX_ROOMS_AVATAR     8


/* ?room_alias=#alias:server */

static ngx_int_t
ngx_http_matrix_query_directory(ngx_http_request_t *r,
    ngx_http_matrix_ctx_t *ctx)
{
    u_char                      *colon;
    ngx_int_t                      rc;
    ngx_str_t                      alias, localpart, server;
    const char                    *why;
    ngx_http_matrix_pg_query_t    *q;
    ngx_http_matrix_rooms_page_t  *page;

    rc = ngx_http_matrix_query_arg(r, "room_alias", &alias);

    if (rc == NGX_DECLINED) {
        return ngx_http_matrix_send_error(r, NGX_HTTP_BAD_REQUEST,
                                          "M_MISSING_PARAM",
                                          "Missing room_alias");
    }

    if (rc != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (mx_id_valid((char *) alias.data, alias.len, '#', 1, &why) != MX_OK) {
        return ngx_http_matrix_send_error(r, NGX_HTTP_BAD_REQUEST,
                                          "M_INVALID_PARAM",
                                          "Invalid room alias: %s", why);
    }

    colon = ngx_strlchr(alias.data, alias.data + alias.len, ':');

    localpart.data = alias.data + 1;
    localpart.len = colon - localpart.data;
    server.data = colon + 1;
    server.len = alias.data + alias.len - server.data;

    if (!ngx_http_matrix_utf8_valid(localpart.data, localpart.len)) {
        return ngx_http_matrix_send_error(r, NGX_HTTP_BAD_REQUEST,
                                          "M_INVALID_PARAM",
                                          "Invalid room alias: not UTF-8");
    }

    if (server.len != ctx->mscf->server_name.len
        || ngx_strncmp(server.data, ctx->mscf->server_name.data, server.len)
           != 0)
    {
        return ngx_http_matrix_send_error(r, NGX_HTTP_NOT_FOUND,
                                          "M_NOT_FOUND",
                                          "The alias is not on this server");
    }

    page = ngx_pcalloc(r->pool, sizeof(ngx_http_matrix_rooms_page_t));
    if (page == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    page->reply = ngx_http_matrix_query_directory_reply;

    q = ngx_http_matrix_rooms_query(r, ctx, &ngx_http_matrix_directory_stmt,
                                    page, &rc);
    if (q == NULL) {
        return rc;
    }

    if (ngx_http_matrix_pg_param(q, 3, &localpart) != NGX_OK
        || ngx_http_matrix_pg_run(q) != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    r->main->count++;

    return NGX_DONE;
}


static ngx_int_t
ngx_http_matrix_query_directory_reply(ngx_http_request_t *r,
    ngx_http_matrix_rooms_page_t *page, PGresult *res)
{
    json_t                 *body;
    ngx_http_matrix_ctx_t  *ctx;

    if (PQntuples(res) == 0) {
        /* no such alias, or (room versions 12+) a room not yet created */
        return ngx_http_matrix_send_error(r, NGX_HTTP_NOT_FOUND,
                                          "M_NOT_FOUND",
                                          "Room alias not found");
    }

    ctx = ngx_http_matrix_get_ctx(r);

    body = json_pack("{s:s%,s:[s%]}",
                     "room_id", PQgetvalue(res, 0, 0),
                     (size_t) PQgetlength(res, 0, 0),
                     "servers", (char *) ctx->mscf->server_name.data,
                     ctx->mscf->server_name.len);

    return ngx_http_matrix_send_json_new(r, NGX_HTTP_OK, body);
}


/* ?limit=&since=&include_all_networks=&third_party_instance_id= */

static ngx_int_t
ngx_http_matrix_public_rooms_get(ngx_http_request_t *r,
    ngx_http_matrix_ctx_t *ctx)
{
    ngx_str_t                     v;
    ngx_http_matrix_rooms_args_t  args;

    ngx_memzero(&args, sizeof(ngx_http_matrix_rooms_args_t));
    args.limit = -1;

    switch (ngx_http_matrix_query_arg(r, "limit", &v)) {

    case NGX_OK:
        args.limit = ngx_atoi(v.data, v.len);

        if (args.limit == NGX_ERROR) {
            return ngx_http_matrix_send_error(r, NGX_HTTP_BAD_REQUEST,
                                              "M_INVALID_PARAM",
                                              "limit must be a non-negative "
                                              "integer");
        }

        break;

    case NGX_DECLINED:
        break;

    default:
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    switch (ngx_http_matrix_query_arg(r, "include_all_networks", &v)) {

    case NGX_OK:
        if (v.len == 4 && ngx_strncmp(v.data, "true", 4) == 0) {
            args.all_networks = 1;

        } else if (!(v.len == 5 && ngx_strncmp(v.data, "false", 5) == 0)) {
            return ngx_http_matrix_send_error(r, NGX_HTTP_BAD_REQUEST,
                                              "M_INVALID_PARAM",
                                              "include_all_networks must be "
                                              "true or false");
        }

        break;

    case NGX_DECLINED:
        break;

    default:
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    switch (ngx_http_matrix_query_arg(r, "since", &args.since)) {

    case NGX_OK:
    case NGX_DECLINED:
        break;

    default:
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    args.instance = (ngx_http_arg(r, (u_char *) "third_party_instance_id",
                                  23, &v)
                     == NGX_OK);

    return ngx_http_matrix_public_rooms(r, ctx, &args);
}


/* {"limit":, "since":, "filter": {...}, "include_all_networks":, ...} */

static ngx_int_t
ngx_http_matrix_public_rooms_post(ngx_http_request_t *r,
    ngx_http_matrix_ctx_t *ctx)
{
    json_t                        *body, *v;
    ngx_int_t                      rc;
    ngx_http_matrix_rooms_args_t   args;

    body = ngx_http_matrix_request_json(r, &rc);
    if (body == NULL) {
        return rc;
    }

    ngx_memzero(&args, sizeof(ngx_http_matrix_rooms_args_t));
    args.limit = -1;

    v = json_object_get(body, "limit");

    if (json_is_integer(v)) {
        if (json_integer_value(v) < 0) {
            return ngx_http_matrix_send_error(r, NGX_HTTP_BAD_REQUEST,
                                              "M_INVALID_PARAM",
                                              "limit must not be negative");
        }

        args.limit = ngx_min(json_integer_value(v),
                             NGX_HTTP_MATRIX_ROOMS_MAX_LIMIT);

    } else if (v != NULL && !json_is_null(v)) {
        return ngx_http_matrix_send_error(r, NGX_HTTP_BAD_REQUEST,
                                          "M_BAD_JSON",
                                          "limit must be an integer");
    }

    v = json_object_get(body, "since");

    if (json_is_string(v)) {
        args.since.data = (u_char *) json_string_value(v);
        args.since.len = json_string_length(v);

    } else if (v != NULL && !json_is_null(v)) {
        return ngx_http_matrix_send_error(r, NGX_HTTP_BAD_REQUEST,
                                          "M_BAD_JSON",
                                          "since must be a string");
    }

    v = json_object_get(body, "include_all_networks");

    if (json_is_boolean(v)) {
        args.all_networks = json_is_true(v);

    } else if (v != NULL && !json_is_null(v)) {
        return ngx_http_matrix_send_error(r, NGX_HTTP_BAD_REQUEST,
                                          "M_BAD_JSON",
                                          "include_all_networks must be a "
                                          "boolean");
    }

    v = json_object_get(body, "third_party_instance_id");

    if (json_is_string(v)) {
        args.instance = 1;

    } else if (v != NULL && !json_is_null(v)) {
        return ngx_http_matrix_send_error(r, NGX_HTTP_BAD_REQUEST,
                                          "M_BAD_JSON",
                                          "third_party_instance_id must be a "
                                          "string");
    }

    v = json_object_get(body, "filter");

    if (v != NULL && !json_is_null(v)
        && ngx_http_matrix_public_rooms_filter(r, v, &args, &rc) != NGX_OK)
    {
        return rc;
    }

    return ngx_http_matrix_public_rooms(r, ctx, &args);
}


static ngx_int_t
ngx_http_matrix_public_rooms_filter(ngx_http_request_t *r, json_t *filter,
    ngx_http_matrix_rooms_args_t *args, ngx_int_t *rc)
{
    size_t       i;
    json_t      *v, *type;
    const char  *errcode, *error;

    errcode = "M_BAD_JSON";

    if (!json_is_object(filter)) {
        error = "filter must be an object";
        goto failed;
    }

    v = json_object_get(filter, "generic_search_term");

    if (json_is_string(v)) {
        args->search.data = (u_char *) json_string_value(v);
        args->search.len = json_string_length(v);

        errcode = "M_INVALID_PARAM";

        if (args->search.len > NGX_HTTP_MATRIX_ROOMS_MAX_SEARCH) {
            error = "generic_search_term is too long";
            goto failed;
        }

        /* Postgres text holds no NUL */

        if (ngx_strlen(args->search.data) != args->search.len) {
            error = "generic_search_term has a NUL";
            goto failed;
        }

        errcode = "M_BAD_JSON";

    } else if (v != NULL && !json_is_null(v)) {
        error = "generic_search_term must be a string";
        goto failed;
    }

    v = json_object_get(filter, "room_types");

    if (v == NULL || json_is_null(v)) {
        return NGX_OK;
    }

    if (!json_is_array(v)) {
        error = "room_types must be an array";
        goto failed;
    }

    /* silo rooms are ordinary rooms (type null); [] filters nothing */

    args->untyped = (json_array_size(v) > 0);

    json_array_foreach(v, i, type) {
        if (json_is_null(type)) {
            args->untyped = 0;

        } else if (!json_is_string(type)) {
            error = "room_types must hold strings and null";
            goto failed;
        }
    }

    return NGX_OK;

failed:

    *rc = ngx_http_matrix_send_error(r, NGX_HTTP_BAD_REQUEST, errcode, "%s",
                                     error);

    return NGX_ERROR;
}


static ngx_int_t
ngx_http_matrix_public_rooms(ngx_http_request_t *r,
    ngx_http_matrix_ctx_t *ctx, ngx_http_matrix_rooms_args_t *args)
{
    u_char                        *p;
    json_t                        *body;
    ngx_int_t                      rc;
    ngx_str_t                      members, nid, rows, pattern;
    ngx_uint_t                     backward;
    ngx_http_matrix_pg_query_t    *q;
    ngx_http_matrix_rooms_page_t  *page;

    if (args->all_networks && args->instance) {
        return ngx_http_matrix_send_error(r, NGX_HTTP_BAD_REQUEST,
                                          "M_INVALID_PARAM",
                                          "include_all_networks and "
                                          "third_party_instance_id exclude "
                                          "each other");
    }

    page = ngx_pcalloc(r->pool, sizeof(ngx_http_matrix_rooms_page_t));
    if (page == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    page->reply = ngx_http_matrix_public_rooms_reply;

    /* 0 is the spec's "no limit": as many as one page may hold */

    page->limit = (args->limit <= 0
                   || args->limit > NGX_HTTP_MATRIX_ROOMS_MAX_LIMIT)
                  ? NGX_HTTP_MATRIX_ROOMS_MAX_LIMIT : (ngx_uint_t) args->limit;

    backward = 0;

    if (args->since.len) {
        if (ngx_http_matrix_rooms_since(&args->since, &members, &nid,
                                        &backward)
            != NGX_OK)
        {
            return ngx_http_matrix_send_error(r, NGX_HTTP_BAD_REQUEST,
                                              "M_INVALID_PARAM",
                                              "Invalid since token");
        }

        page->since = 1;
        page->backward = backward;
    }

    /* no application service networks here, and no typed rooms */

    if (args->instance || args->untyped) {
        body = json_pack("{s:[],s:i}", "chunk", "total_room_count_estimate",
                         0);

        return ngx_http_matrix_send_json_new(r, NGX_HTTP_OK, body);
    }

    if (ngx_http_matrix_rooms_pattern(r->pool, &args->search, &pattern)
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = ngx_pnalloc(r->pool, NGX_INT_T_LEN);
    if (p == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* one more than asked: whether there is a next page */

    rows.data = p;
    rows.len = ngx_sprintf(p, "%ui", page->limit + 1) - p;

    q = ngx_http_matrix_rooms_query(r, ctx,
                                    &ngx_http_matrix_public_rooms_stmt,
                                    page, &rc);
    if (q == NULL) {
        return rc;
    }

    if (ngx_http_matrix_pg_param(q, 3, page->since ? &nid : NULL) != NGX_OK
        || ngx_http_matrix_pg_param(q, 4, page->since ? &members : NULL)
           != NGX_OK
        || ngx_http_matrix_pg_param(q, 5, &ngx_http_matrix_bool[backward])
           != NGX_OK
        || ngx_http_matrix_pg_param(q, 6, &rows) != NGX_OK
        || ngx_http_matrix_pg_param(q, 7, pattern.len ? &pattern : NULL)
           != NGX_OK
        || ngx_http_matrix_pg_run(q) != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    r->main->count++;

    return NGX_DONE;
}


/*
 * A token is "n" (the rooms after) or "p" (the rooms before), the member
 * count a room had when it was listed, "." and its room_nid: digits
 * only, so that nothing a client sends reaches SQL but two numbers.
 */

static ngx_int_t
ngx_http_matrix_rooms_since(ngx_str_t *since, ngx_str_t *members,
    ngx_str_t *nid, ngx_uint_t *backward)
{
    u_char  *dot, *last;
    off_t    n;

    if (since->data[0] != 'n' && since->data[0] != 'p') {
        return NGX_ERROR;
    }

    *backward = (since->data[0] == 'p');

    last = since->data + since->len;

    dot = ngx_strlchr(since->data + 1, last, '.');
    if (dot == NULL) {
        return NGX_ERROR;
    }

    members->data = since->data + 1;
    members->len = dot - members->data;
    nid->data = dot + 1;
    nid->len = last - nid->data;

    /* 18 digits are below 2^63; a room_nid is a Postgres integer */

    if (members->len == 0 || members->len > 18
        || ngx_atoof(members->data, members->len) == NGX_ERROR)
    {
        return NGX_ERROR;
    }

    if (nid->len == 0 || nid->len > 10) {
        return NGX_ERROR;
    }

    n = ngx_atoof(nid->data, nid->len);

    if (n < 1 || n > NGX_MAX_INT32_VALUE) {
        return NGX_ERROR;
    }

    return NGX_OK;
}


/* "%term%" with the term's own %, _ and \ taken literally; "" for none */

static ngx_int_t
ngx_http_matrix_rooms_pattern(ngx_pool_t *pool, ngx_str_t *search,
    ngx_str_t *pattern)
{
    u_char  *p;
    size_t   i;

    ngx_str_null(pattern);

    if (search->len == 0) {
        return NGX_OK;
    }

    p = ngx_pnalloc(pool, 2 * search->len + 2);
    if (p == NULL) {
        return NGX_ERROR;
    }

    pattern->data = p;
    *p++ = '%';

    for (i = 0; i < search->len; i++) {
        if (search->data[i] == '%' || search->data[i] == '_'
            || search->data[i] == '\\')
        {
            *p++ = '\\';
        }

        *p++ = search->data[i];
    }

    *p++ = '%';
    pattern->len = p - pattern->data;

    return NGX_OK;
}


static ngx_int_t
ngx_http_matrix_public_rooms_reply(ngx_http_request_t *r,
    ngx_http_matrix_rooms_page_t *page, PGresult *res)
{
    int                     first, last, row;
    json_t                 *body, *chunk, *room;
    ngx_http_matrix_ctx_t  *ctx;

    ctx = ngx_http_matrix_get_ctx(r);

    if (PQntuples(res) == 0) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (page->since
        && ngx_atoi((u_char *) PQgetvalue(res, 0,
                                          NGX_HTTP_MATRIX_ROOMS_ANCHORED),
                    PQgetlength(res, 0, NGX_HTTP_MATRIX_ROOMS_ANCHORED))
           == 0)
    {
        return ngx_http_matrix_send_error(r, NGX_HTTP_BAD_REQUEST,
                                          "M_INVALID_PARAM",
                                          "Unknown since token");
    }

    /* the rows, in listing order; one past the limit is at the far end */

    first = 0;
    last = PQgetisnull(res, 0, NGX_HTTP_MATRIX_ROOMS_MEMBERS)
           ? 0 : PQntuples(res);

    if ((ngx_uint_t) last > page->limit) {
        if (page->backward) {
            first++;

        } else {
            last--;
        }
    }

    body = json_pack("{s:[],s:I}", "chunk", "total_room_count_estimate",
                     (json_int_t) ngx_atoof(
                         (u_char *) PQgetvalue(res, 0,
                                               NGX_HTTP_MATRIX_ROOMS_TOTAL),
                         PQgetlength(res, 0, NGX_HTTP_MATRIX_ROOMS_TOTAL)));
    if (body == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    chunk = json_object_get(body, "chunk");

    for (row = first; row < last; row++) {
        room = ngx_http_matrix_rooms_chunk(ctx, res, row);

        if (room == NULL || json_array_append_new(chunk, room) != 0) {
            goto failed;
        }
    }

    /*
     * next_batch: there are rooms after this page (one more row forward,
     * or the token's own room backward); prev_batch likewise before it.
     */

    if (first < last) {
        if ((last < PQntuples(res) || page->backward)
            && ngx_http_matrix_rooms_token(body, "next_batch", 'n', res,
                                           last - 1)
               != NGX_OK)
        {
            goto failed;
        }

        if ((first > 0 || (page->since && !page->backward))
            && ngx_http_matrix_rooms_token(body, "prev_batch", 'p', res,
                                           first)
               != NGX_OK)
        {
            goto failed;
        }
    }

    return ngx_http_matrix_send_json_new(r, NGX_HTTP_OK, body);

failed:

    json_decref(body);

    return NGX_HTTP_INTERNAL_SERVER_ERROR;
}


/* a PublishedRoomsChunk: only what is a Matrix value goes out */

static json_t *
ngx_http_matrix_rooms_chunk(ngx_http_matrix_ctx_t *ctx, PGresult *res,
    int row)
{
    u_char      *p;
    json_t      *room;
    ngx_str_t    alias;
    const char  *why;
    u_char       buf[256];

    room = json_pack("{s:s%,s:I,s:b,s:b,s:s}",
                     "room_id",
                     PQgetvalue(res, row, NGX_HTTP_MATRIX_ROOMS_ROOM_ID),
                     (size_t) PQgetlength(res, row,
                                          NGX_HTTP_MATRIX_ROOMS_ROOM_ID),
                     "num_joined_members",
                     (json_int_t) ngx_atoof(
                         (u_char *) PQgetvalue(res, row,
                                               NGX_HTTP_MATRIX_ROOMS_MEMBERS),
                         PQgetlength(res, row, NGX_HTTP_MATRIX_ROOMS_MEMBERS)),
                     "world_readable", 0,
                     "guest_can_join", 0,
                     "join_rule", "public");
    if (room == NULL) {
        return NULL;
    }

    if (!PQgetisnull(res, row, NGX_HTTP_MATRIX_ROOMS_NAME)) {
        json_object_set_new(room, "name",
            json_stringn(PQgetvalue(res, row, NGX_HTTP_MATRIX_ROOMS_NAME),
                         PQgetlength(res, row, NGX_HTTP_MATRIX_ROOMS_NAME)));
    }

    if (!PQgetisnull(res, row, NGX_HTTP_MATRIX_ROOMS_TOPIC)) {
        json_object_set_new(room, "topic",
            json_stringn(PQgetvalue(res, row, NGX_HTTP_MATRIX_ROOMS_TOPIC),
                         PQgetlength(res, row, NGX_HTTP_MATRIX_ROOMS_TOPIC)));
    }

    alias.data = (u_char *) PQgetvalue(res, row, NGX_HTTP_MATRIX_ROOMS_ALIAS);
    alias.len = PQgetlength(res, row, NGX_HTTP_MATRIX_ROOMS_ALIAS);

    /* an alias the query would not find again is not published */

    if (!PQgetisnull(res, row, NGX_HTTP_MATRIX_ROOMS_ALIAS)
        && alias.len + ctx->mscf->server_name.len + 2 <= sizeof(buf)
        && ngx_strlchr(alias.data, alias.data + alias.len, ':') == NULL)
    {
        p = ngx_sprintf(buf, "#%V:%V", &alias, &ctx->mscf->server_name);

        if (mx_id_valid((char *) buf, p - buf, '#', 1, &why) == MX_OK) {
            json_object_set_new(room, "canonical_alias",
                                json_stringn((char *) buf, p - buf));
        }
    }

    if (!PQgetisnull(res, row, NGX_HTTP_MATRIX_ROOMS_AVATAR)
        && ngx_strncmp(PQgetvalue(res, row, NGX_HTTP_MATRIX_ROOMS_AVATAR),
                       "mxc://", 6) == 0)
    {
        json_object_set_new(room, "avatar_url",
            json_stringn(PQgetvalue(res, row, NGX_HTTP_MATRIX_ROOMS_AVATAR),
                         PQgetlength(res, row, NGX_HTTP_MATRIX_ROOMS_AVATAR)));
    }

    return room;
}


static ngx_int_t
ngx_http_matrix_rooms_token(json_t *body, const char *key, u_char dir,
    PGresult *res, int row)
{
    u_char     *p;
    ngx_str_t   members, nid;
    u_char      buf[1 + NGX_INT64_LEN + 1 + NGX_INT64_LEN];

    members.data = (u_char *) PQgetvalue(res, row,
                                         NGX_HTTP_MATRIX_ROOMS_MEMBERS);
    members.len = PQgetlength(res, row, NGX_HTTP_MATRIX_ROOMS_MEMBERS);
    nid.data = (u_char *) PQgetvalue(res, row, NGX_HTTP_MATRIX_ROOMS_NID);
    nid.len = PQgetlength(res, row, NGX_HTTP_MATRIX_ROOMS_NID);

    if (members.len > NGX_INT64_LEN || nid.len > NGX_INT64_LEN) {
        return NGX_ERROR;
    }

    p = ngx_sprintf(buf, "%c%V.%V", dir, &members, &nid);

    return json_object_set_new(body, key, json_stringn((char *) buf, p - buf))
           == 0 ? NGX_OK : NGX_ERROR;
}


/*
 * A query of STMT with the parameters both statements share set: the
 * server name, the room version, and whether IDs may be allocated here
 * (not in room versions whose room ID is the hash of the create event,
 * which is made at the first join).  Its rows go to page->reply.  NULL
 * when it cannot be made, *rc then what the handler returns.
 */

static ngx_http_matrix_pg_query_t *
ngx_http_matrix_rooms_query(ngx_http_request_t *r, ngx_http_matrix_ctx_t *ctx,
    ngx_http_matrix_pg_stmt_t *stmt, ngx_http_matrix_rooms_page_t *page,
    ngx_int_t *rc)
{
    ngx_str_t                    version;
    ngx_http_matrix_pg_t        *pg;
    ngx_http_matrix_pg_query_t  *q;

    *rc = NGX_HTTP_INTERNAL_SERVER_ERROR;

    pg = ngx_http_matrix_pg_for_request(r);
    if (pg == NULL) {
        *rc = ngx_http_matrix_send_error(r, NGX_HTTP_NOT_FOUND,
                                         "M_UNRECOGNIZED",
                                         "Rooms need \"matrix_postgres\"");
        return NULL;
    }

    q = ngx_http_matrix_pg_query_create(pg, r->pool, r->connection->log);
    if (q == NULL) {
        return NULL;
    }

    page->request = r;

    q->stmt = stmt;
    q->nparams = stmt->nparams;
    q->handler = ngx_http_matrix_rooms_done;
    q->data = page;

    version.data = (u_char *) ctx->mscf->room_version->id;
    version.len = ngx_strlen(version.data);

    if (ngx_http_matrix_pg_param(q, 0, &ctx->mscf->server_name) != NGX_OK
        || ngx_http_matrix_pg_param(q, 1, &version) != NGX_OK
        || ngx_http_matrix_pg_param(q, 2,
               &ngx_http_matrix_bool[
                   !ctx->mscf->room_version->room_id_from_create])
           != NGX_OK)
    {
        return NULL;
    }

    return q;
}


static void
ngx_http_matrix_rooms_done(ngx_http_matrix_pg_query_t *q)
{
    ngx_int_t                      rc;
    ngx_connection_t              *c;
    ngx_http_request_t            *r;
    ngx_http_matrix_rooms_page_t  *page;

    page = q->data;
    r = page->request;
    c = r->connection;

    rc = (q->status == NGX_HTTP_MATRIX_PG_OK)
         ? page->reply(r, page, q->result)
         : ngx_http_matrix_pg_send_error(r, q);

    ngx_http_finalize_request(r, rc);
    ngx_http_run_posted_requests(c);
}


/*
 * Postgres refuses text that is not UTF-8 (overlong forms, surrogates),
 * and a refused statement is a 500: jansson's check is as strict.
 */

static ngx_uint_t
ngx_http_matrix_utf8_valid(u_char *p, size_t len)
{
    json_t  *s;

    s = json_stringn((char *) p, len);
    if (s == NULL) {
        return 0;
    }

    json_decref(s);

    return 1;
}
