/*
 * A room's events, for the servers in it (server-server-api.md:
 * Retrieving events, Backfilling, get_missing_events):
 *
 *   GET  /_matrix/federation/v1/state/{roomId}?event_id=
 *   GET  /_matrix/federation/v1/state_ids/{roomId}?event_id=
 *   GET  /_matrix/federation/v1/event/{eventId}
 *   GET  /_matrix/federation/v1/event_auth/{roomId}/{eventId}
 *   GET  /_matrix/federation/v1/backfill/{roomId}?v=&limit=
 *   POST /_matrix/federation/v1/get_missing_events/{roomId}
 *
 * Every one is for a server with a user in the room (the rooms' history
 * is "shared") that the room's server ACL lets in.  The room's events
 * are in nid order, a topological order of its graph, so "before" and
 * "after" are comparisons of nids (sql/002_rooms.sql).
 */


#include "ngx_http_matrix_room.h"


#define NGX_HTTP_MATRIX_EVENTS_LIMIT    100     /* events per answer */
#define NGX_HTTP_MATRIX_EVENTS_NAMED    50      /* event IDs per question */


typedef enum {
    NGX_HTTP_MATRIX_STATE = 0,
    NGX_HTTP_MATRIX_STATE_IDS,
    NGX_HTTP_MATRIX_EVENT,
    NGX_HTTP_MATRIX_EVENT_AUTH,
    NGX_HTTP_MATRIX_BACKFILL,
    NGX_HTTP_MATRIX_MISSING
} ngx_http_matrix_events_e;


typedef struct {
    ngx_http_matrix_events_e        what;
    ngx_str_t                       event_id;
    ngx_str_t                       nid;          /* of event_id */
    json_t                         *from;         /* backfill's v; gme's */
    json_t                         *latest;
    ngx_str_t                       limit;
    ngx_str_t                       min_depth;
} ngx_http_matrix_events_t;


static ngx_int_t ngx_http_matrix_state(ngx_http_request_t *r,
    ngx_http_matrix_ctx_t *ctx);
static ngx_int_t ngx_http_matrix_state_ids(ngx_http_request_t *r,
    ngx_http_matrix_ctx_t *ctx);
static ngx_int_t ngx_http_matrix_event(ngx_http_request_t *r,
    ngx_http_matrix_ctx_t *ctx);
static ngx_int_t ngx_http_matrix_event_auth(ngx_http_request_t *r,
    ngx_http_matrix_ctx_t *ctx);
static ngx_int_t ngx_http_matrix_backfill(ngx_http_request_t *r,
    ngx_http_matrix_ctx_t *ctx);
static ngx_int_t ngx_http_matrix_missing_events(ngx_http_request_t *r,
    ngx_http_matrix_ctx_t *ctx);

static ngx_int_t ngx_http_matrix_events_route(ngx_http_request_t *r,
    ngx_http_matrix_ctx_t *ctx, ngx_http_matrix_events_e what,
    ngx_str_t *event_id, ngx_str_t *room_id);
static ngx_int_t ngx_http_matrix_events_start(ngx_http_request_t *r,
    ngx_http_matrix_ctx_t *ctx, ngx_http_matrix_events_t *ev,
    ngx_str_t *room_id);
static ngx_int_t ngx_http_matrix_events_room_found(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op);
static ngx_int_t ngx_http_matrix_events_opened(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op);
static ngx_int_t ngx_http_matrix_events_allowed(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op);
static ngx_int_t ngx_http_matrix_events_at(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op);
static ngx_int_t ngx_http_matrix_events_reply(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op);
static json_t *ngx_http_matrix_events_ids(json_t *list, ngx_int_t *rc,
    ngx_http_request_t *r, const char *name);
static ngx_int_t ngx_http_matrix_events_limit(ngx_http_request_t *r,
    ngx_int_t value, ngx_str_t *out);
static void ngx_http_matrix_events_cleanup(void *data);


ngx_http_matrix_route_t  ngx_http_matrix_events_routes[] = {

    { NGX_HTTP_GET,
      ngx_string("/_matrix/federation/v1/state/{roomId}"),
      ngx_http_matrix_state,
      NGX_HTTP_MATRIX_FEDERATION },

    { NGX_HTTP_GET,
      ngx_string("/_matrix/federation/v1/state_ids/{roomId}"),
      ngx_http_matrix_state_ids,
      NGX_HTTP_MATRIX_FEDERATION },

    { NGX_HTTP_GET,
      ngx_string("/_matrix/federation/v1/event/{eventId}"),
      ngx_http_matrix_event,
      NGX_HTTP_MATRIX_FEDERATION },

    { NGX_HTTP_GET,
      ngx_string("/_matrix/federation/v1/event_auth/{roomId}/{eventId}"),
      ngx_http_matrix_event_auth,
      NGX_HTTP_MATRIX_FEDERATION },

    { NGX_HTTP_GET,
      ngx_string("/_matrix/federation/v1/backfill/{roomId}"),
      ngx_http_matrix_backfill,
      NGX_HTTP_MATRIX_FEDERATION },

    { NGX_HTTP_POST,
      ngx_string("/_matrix/federation/v1/get_missing_events/{roomId}"),
      ngx_http_matrix_missing_events,
      NGX_HTTP_MATRIX_FEDERATION },

      ngx_http_matrix_null_route
};


static ngx_http_matrix_pg_stmt_t  ngx_http_matrix_event_room_stmt =
    ngx_http_matrix_pg_stmt(
        "SELECT r.room_id FROM events e JOIN matrix_rooms r USING (room_nid) "
        "WHERE e.event_id = $1", 1);

static ngx_http_matrix_pg_stmt_t  ngx_http_matrix_event_nid_stmt =
    ngx_http_matrix_pg_stmt(
        "SELECT nid FROM events WHERE event_id = $1 AND room_nid = $2", 2);

static ngx_http_matrix_pg_stmt_t  ngx_http_matrix_state_stmt =
    ngx_http_matrix_pg_stmt(
        "WITH s AS (SELECT matrix_state_before($1, $2) AS nid) "
        "SELECT p.*, 0 FROM matrix_event_parts(ARRAY(SELECT nid FROM s)) p "
        "UNION ALL "
        "SELECT p.*, 1 FROM matrix_event_parts(ARRAY(SELECT matrix_auth_chain("
        "ARRAY(SELECT nid FROM s)))) p", 2);

static ngx_http_matrix_pg_stmt_t  ngx_http_matrix_state_ids_stmt =
    ngx_http_matrix_pg_stmt(
        "WITH s AS (SELECT matrix_state_before($1, $2) AS nid) "
        "SELECT e.event_id, 0 FROM events e JOIN s USING (nid) "
        "UNION ALL "
        "SELECT e.event_id, 1 FROM events e "
        "JOIN matrix_auth_chain(ARRAY(SELECT nid FROM s)) c(nid) USING (nid)",
        2);

static ngx_http_matrix_pg_stmt_t  ngx_http_matrix_event_stmt =
    ngx_http_matrix_pg_stmt(
        "SELECT * FROM matrix_event_parts(ARRAY[$1::bigint])", 1);

static ngx_http_matrix_pg_stmt_t  ngx_http_matrix_event_auth_stmt =
    ngx_http_matrix_pg_stmt(
        "SELECT * FROM matrix_event_parts(ARRAY(SELECT matrix_auth_chain("
        "ARRAY[$1::bigint])))", 1);

static ngx_http_matrix_pg_stmt_t  ngx_http_matrix_backfill_stmt =
    ngx_http_matrix_pg_stmt(
        "SELECT * FROM matrix_event_parts(ARRAY(SELECT matrix_backfill("
        "$1, $2, $3)))", 3);

static ngx_http_matrix_pg_stmt_t  ngx_http_matrix_missing_stmt =
    ngx_http_matrix_pg_stmt(
        "SELECT * FROM matrix_event_parts(ARRAY(SELECT matrix_missing_events("
        "$1, $2, $3, $4, $5)))", 5);


static ngx_int_t
ngx_http_matrix_state(ngx_http_request_t *r, ngx_http_matrix_ctx_t *ctx)
{
    return ngx_http_matrix_events_route(r, ctx, NGX_HTTP_MATRIX_STATE, NULL,
                                        &ctx->params[0]);
}


static ngx_int_t
ngx_http_matrix_state_ids(ngx_http_request_t *r, ngx_http_matrix_ctx_t *ctx)
{
    return ngx_http_matrix_events_route(r, ctx, NGX_HTTP_MATRIX_STATE_IDS,
                                        NULL, &ctx->params[0]);
}


static ngx_int_t
ngx_http_matrix_event(ngx_http_request_t *r, ngx_http_matrix_ctx_t *ctx)
{
    return ngx_http_matrix_events_route(r, ctx, NGX_HTTP_MATRIX_EVENT,
                                        &ctx->params[0], NULL);
}


static ngx_int_t
ngx_http_matrix_event_auth(ngx_http_request_t *r, ngx_http_matrix_ctx_t *ctx)
{
    return ngx_http_matrix_events_route(r, ctx, NGX_HTTP_MATRIX_EVENT_AUTH,
                                        &ctx->params[1], &ctx->params[0]);
}


/* the routes that name an event or a room and nothing more */

static ngx_int_t
ngx_http_matrix_events_route(ngx_http_request_t *r,
    ngx_http_matrix_ctx_t *ctx, ngx_http_matrix_events_e what,
    ngx_str_t *event_id, ngx_str_t *room_id)
{
    ngx_http_matrix_events_t  *ev;

    ev = ngx_pcalloc(r->pool, sizeof(ngx_http_matrix_events_t));
    if (ev == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ev->what = what;

    if (event_id) {
        ev->event_id = *event_id;
    }

    return ngx_http_matrix_events_start(r, ctx, ev, room_id);
}


/* ?v=$a&v=$b&limit=N: both required */

static ngx_int_t
ngx_http_matrix_backfill(ngx_http_request_t *r, ngx_http_matrix_ctx_t *ctx)
{
    u_char                    *p, *last, *amp, *dst, *src;
    ngx_int_t                  limit, rc;
    ngx_str_t                  v;
    ngx_pool_cleanup_t        *cln;
    ngx_http_matrix_events_t  *ev;

    ev = ngx_pcalloc(r->pool, sizeof(ngx_http_matrix_events_t));
    if (ev == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ev->what = NGX_HTTP_MATRIX_BACKFILL;

    if (ngx_http_arg(r, (u_char *) "limit", 5, &v) != NGX_OK) {
        return ngx_http_matrix_send_error(r, NGX_HTTP_BAD_REQUEST,
                                          "M_MISSING_PARAM",
                                          "Missing limit");
    }

    limit = ngx_atoi(v.data, v.len);

    rc = ngx_http_matrix_events_limit(r, limit, &ev->limit);

    if (rc == NGX_DECLINED) {
        return ngx_http_matrix_send_error(r, NGX_HTTP_BAD_REQUEST,
                                          "M_INVALID_PARAM",
                                          "limit must be a positive integer");
    }

    if (rc != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln->handler = ngx_http_matrix_events_cleanup;
    cln->data = ev;

    ev->from = json_array();
    if (ev->from == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = r->args.data;
    last = p + r->args.len;

    while (p < last) {
        amp = ngx_strlchr(p, last, '&');
        if (amp == NULL) {
            amp = last;
        }

        if (amp - p > 2 && p[0] == 'v' && p[1] == '=') {
            if (json_array_size(ev->from) == NGX_HTTP_MATRIX_EVENTS_NAMED) {
                return ngx_http_matrix_send_error(r, NGX_HTTP_BAD_REQUEST,
                                                  "M_LIMIT_EXCEEDED",
                                                  "Too many events named");
            }

            dst = ngx_pnalloc(r->pool, amp - p);
            if (dst == NULL) {
                return NGX_HTTP_INTERNAL_SERVER_ERROR;
            }

            v.data = dst;
            src = p + 2;
            ngx_unescape_uri(&dst, &src, amp - p - 2, NGX_UNESCAPE_URI);
            v.len = dst - v.data;

            if (v.len > 255 || ngx_strlchr(v.data, dst, '\0') != NULL) {
                return ngx_http_matrix_send_error(r, NGX_HTTP_BAD_REQUEST,
                                                  "M_INVALID_PARAM",
                                                  "Invalid event ID in v");
            }

            json_array_append_new(ev->from, json_stringn((char *) v.data,
                                                         v.len));
        }

        p = amp + 1;
    }

    if (json_array_size(ev->from) == 0) {
        return ngx_http_matrix_send_error(r, NGX_HTTP_BAD_REQUEST,
                                          "M_MISSING_PARAM", "Missing v");
    }

    return ngx_http_matrix_events_start(r, ctx, ev, &ctx->params[0]);
}


/* {"earliest_events": [...], "latest_events": [...], "limit", "min_depth"} */

static ngx_int_t
ngx_http_matrix_missing_events(ngx_http_request_t *r,
    ngx_http_matrix_ctx_t *ctx)
{
    json_t                    *body, *v;
    ngx_int_t                  rc, limit;
    ngx_pool_cleanup_t        *cln;
    ngx_http_matrix_events_t  *ev;

    body = ngx_http_matrix_request_json(r, &rc);
    if (body == NULL) {
        return rc;
    }

    ev = ngx_pcalloc(r->pool, sizeof(ngx_http_matrix_events_t));
    cln = ngx_pool_cleanup_add(r->pool, 0);

    if (ev == NULL || cln == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln->handler = ngx_http_matrix_events_cleanup;
    cln->data = ev;

    ev->what = NGX_HTTP_MATRIX_MISSING;

    ev->from = ngx_http_matrix_events_ids(json_object_get(body,
                                                          "earliest_events"),
                                          &rc, r, "earliest_events");
    if (ev->from == NULL) {
        return rc;
    }

    ev->latest = ngx_http_matrix_events_ids(json_object_get(body,
                                                            "latest_events"),
                                            &rc, r, "latest_events");
    if (ev->latest == NULL) {
        return rc;
    }

    v = json_object_get(body, "limit");
    limit = v ? (json_is_integer(v) ? json_integer_value(v) : -1) : 10;

    rc = ngx_http_matrix_events_limit(r, limit, &ev->limit);

    if (rc == NGX_DECLINED) {
        return ngx_http_matrix_send_error(r, NGX_HTTP_BAD_REQUEST,
                                          "M_INVALID_PARAM",
                                          "limit must be a positive integer");
    }

    if (rc != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    v = json_object_get(body, "min_depth");

    if (v && (!json_is_integer(v) || json_integer_value(v) < 0)) {
        return ngx_http_matrix_send_error(r, NGX_HTTP_BAD_REQUEST,
                                          "M_BAD_JSON", "min_depth must be "
                                          "a non-negative integer");
    }

    ev->min_depth.data = ngx_pnalloc(r->pool, NGX_INT64_LEN);
    if (ev->min_depth.data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ev->min_depth.len = ngx_sprintf(ev->min_depth.data, "%L",
                                    (int64_t) (v ? json_integer_value(v) : 0))
                        - ev->min_depth.data;

    return ngx_http_matrix_events_start(r, ctx, ev, &ctx->params[0]);
}


static json_t *
ngx_http_matrix_events_ids(json_t *list, ngx_int_t *rc,
    ngx_http_request_t *r, const char *name)
{
    size_t   i;
    json_t  *v;

    if (!json_is_array(list)
        || json_array_size(list) > NGX_HTTP_MATRIX_EVENTS_NAMED)
    {
        *rc = ngx_http_matrix_send_error(r, NGX_HTTP_BAD_REQUEST,
                                         "M_BAD_JSON", "%s must be an array "
                                         "of at most %d event IDs", name,
                                         NGX_HTTP_MATRIX_EVENTS_NAMED);
        return NULL;
    }

    for (i = 0; i < json_array_size(list); i++) {
        v = json_array_get(list, i);

        if (!json_is_string(v) || json_string_length(v) > 255
            || ngx_strlen(json_string_value(v)) != json_string_length(v))
        {
            *rc = ngx_http_matrix_send_error(r, NGX_HTTP_BAD_REQUEST,
                                             "M_BAD_JSON", "%s must be an "
                                             "array of event IDs", name);
            return NULL;
        }
    }

    return json_incref(list);
}


/* NGX_DECLINED: not a positive integer (the caller answers 400) */

static ngx_int_t
ngx_http_matrix_events_limit(ngx_http_request_t *r, ngx_int_t value,
    ngx_str_t *out)
{
    if (value <= 0) {
        return NGX_DECLINED;
    }

    if (value > NGX_HTTP_MATRIX_EVENTS_LIMIT) {
        value = NGX_HTTP_MATRIX_EVENTS_LIMIT;
    }

    out->data = ngx_pnalloc(r->pool, NGX_INT_T_LEN);
    if (out->data == NULL) {
        return NGX_ERROR;
    }

    out->len = ngx_sprintf(out->data, "%i", value) - out->data;

    return NGX_OK;
}


static ngx_int_t
ngx_http_matrix_events_start(ngx_http_request_t *r,
    ngx_http_matrix_ctx_t *ctx, ngx_http_matrix_events_t *ev,
    ngx_str_t *room_id)
{
    ngx_int_t                   rc;
    ngx_str_t                   v;
    ngx_http_matrix_room_op_t  *op;

    if (ev->what == NGX_HTTP_MATRIX_STATE
        || ev->what == NGX_HTTP_MATRIX_STATE_IDS)
    {
        if (ngx_http_arg(r, (u_char *) "event_id", 8, &v) != NGX_OK) {
            return ngx_http_matrix_send_error(r, NGX_HTTP_BAD_REQUEST,
                                              "M_MISSING_PARAM",
                                              "Missing event_id");
        }

        ev->event_id.data = ngx_pnalloc(r->pool, v.len);
        if (ev->event_id.data == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        {
            u_char  *dst = ev->event_id.data, *src = v.data;

            ngx_unescape_uri(&dst, &src, v.len, NGX_UNESCAPE_URI);
            ev->event_id.len = dst - ev->event_id.data;
        }
    }

    op = ngx_http_matrix_room_op(r, ctx);
    if (op == NULL) {
        return ngx_http_matrix_send_error(r, NGX_HTTP_NOT_FOUND,
                                          "M_NOT_FOUND",
                                          "Rooms need \"matrix_postgres\"");
    }

    op->data = ev;

    if (room_id) {
        return ngx_http_matrix_room_open(op, room_id, 0,
                                         ngx_http_matrix_events_opened);
    }

    /* an event alone: its room first */

    rc = ngx_http_matrix_room_run(op, &ngx_http_matrix_event_room_stmt,
                                  &ev->event_id, 1,
                                  ngx_http_matrix_events_room_found);
    if (rc == NGX_DONE) {
        r->main->count++;
        op->counted = 1;
    }

    return rc;
}


static ngx_int_t
ngx_http_matrix_events_room_found(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op)
{
    ngx_str_t  room_id;

    if (PQntuples(op->q->result) != 1) {
        return ngx_http_matrix_send_error(r, NGX_HTTP_NOT_FOUND,
                                          "M_NOT_FOUND", "Unknown event");
    }

    room_id.len = PQgetlength(op->q->result, 0, 0);
    room_id.data = ngx_pnalloc(r->pool, room_id.len);
    if (room_id.data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_memcpy(room_id.data, PQgetvalue(op->q->result, 0, 0), room_id.len);

    return ngx_http_matrix_room_open(op, &room_id, 0,
                                     ngx_http_matrix_events_opened);
}


static ngx_int_t
ngx_http_matrix_events_opened(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op)
{
    if (!op->created) {
        return ngx_http_matrix_send_error(r, NGX_HTTP_NOT_FOUND,
                                          "M_NOT_FOUND", "Unknown room");
    }

    return ngx_http_matrix_room_access(op, ngx_http_matrix_events_allowed);
}


static ngx_int_t
ngx_http_matrix_events_allowed(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op)
{
    char                      *from, *latest;
    ngx_int_t                  rc;
    ngx_str_t                  values[5];
    ngx_http_matrix_events_t  *ev;

    ev = op->data;

    switch (ev->what) {

    case NGX_HTTP_MATRIX_BACKFILL:
        from = json_dumps(ev->from, JSON_COMPACT);
        if (from == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        values[0] = op->nid;
        values[1].data = (u_char *) from;
        values[1].len = ngx_strlen(from);
        values[2] = ev->limit;

        rc = ngx_http_matrix_room_run(op, &ngx_http_matrix_backfill_stmt,
                                      values, 3,
                                      ngx_http_matrix_events_reply);
        free(from);
        return rc;

    case NGX_HTTP_MATRIX_MISSING:
        from = json_dumps(ev->from, JSON_COMPACT);
        latest = json_dumps(ev->latest, JSON_COMPACT);

        if (from == NULL || latest == NULL) {
            free(from);
            free(latest);
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        values[0] = op->nid;
        values[1].data = (u_char *) from;
        values[1].len = ngx_strlen(from);
        values[2].data = (u_char *) latest;
        values[2].len = ngx_strlen(latest);
        values[3] = ev->limit;
        values[4] = ev->min_depth;

        rc = ngx_http_matrix_room_run(op, &ngx_http_matrix_missing_stmt,
                                      values, 5,
                                      ngx_http_matrix_events_reply);
        free(from);
        free(latest);
        return rc;

    default:
        values[0] = ev->event_id;
        values[1] = op->nid;

        return ngx_http_matrix_room_run(op, &ngx_http_matrix_event_nid_stmt,
                                        values, 2, ngx_http_matrix_events_at);
    }
}


/* the event named is of this room: now what is asked about it */

static ngx_int_t
ngx_http_matrix_events_at(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op)
{
    ngx_str_t                   values[2];
    ngx_http_matrix_pg_stmt_t  *stmt;
    ngx_http_matrix_events_t   *ev;

    ev = op->data;

    if (PQntuples(op->q->result) != 1) {
        return ngx_http_matrix_send_error(r, NGX_HTTP_NOT_FOUND,
                                          "M_NOT_FOUND",
                                          "No such event in the room");
    }

    ev->nid.len = PQgetlength(op->q->result, 0, 0);
    ev->nid.data = ngx_pnalloc(r->pool, ev->nid.len);
    if (ev->nid.data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_memcpy(ev->nid.data, PQgetvalue(op->q->result, 0, 0), ev->nid.len);

    values[0] = op->nid;
    values[1] = ev->nid;

    switch (ev->what) {

    case NGX_HTTP_MATRIX_STATE:
        stmt = &ngx_http_matrix_state_stmt;
        break;

    case NGX_HTTP_MATRIX_STATE_IDS:
        stmt = &ngx_http_matrix_state_ids_stmt;
        break;

    case NGX_HTTP_MATRIX_EVENT:
        return ngx_http_matrix_room_run(op, &ngx_http_matrix_event_stmt,
                                        &ev->nid, 1,
                                        ngx_http_matrix_events_reply);

    default: /* NGX_HTTP_MATRIX_EVENT_AUTH */
        return ngx_http_matrix_room_run(op, &ngx_http_matrix_event_auth_stmt,
                                        &ev->nid, 1,
                                        ngx_http_matrix_events_reply);
    }

    return ngx_http_matrix_room_run(op, stmt, values, 2,
                                    ngx_http_matrix_events_reply);
}


static ngx_int_t
ngx_http_matrix_events_reply(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op)
{
    int                        row, n;
    json_t                    *body, *pdus, *first, *second;
    ngx_int_t                  rc;
    PGresult                  *res;
    ngx_str_t                 *server;
    ngx_http_matrix_events_t  *ev;

    ev = op->data;
    res = op->q->result;
    server = &op->ctx->mscf->server_name;

    if (ev->what == NGX_HTTP_MATRIX_STATE_IDS) {
        first = json_array();
        second = json_array();
        n = PQntuples(res);

        for (row = 0; first && second && row < n; row++) {
            json_array_append_new(PQgetvalue(res, row, 1)[0] == '0'
                                  ? first : second,
                                  json_string(PQgetvalue(res, row, 0)));
        }

        body = json_pack("{s:o*,s:o*}", "pdu_ids", first,
                         "auth_chain_ids", second);
        goto send;
    }

    if (ev->what == NGX_HTTP_MATRIX_STATE) {
        if (ngx_http_matrix_room_state_parts(op, &first, NULL, &second)
            != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        body = json_pack("{s:o,s:o}", "pdus", first, "auth_chain", second);
        goto send;
    }

    pdus = ngx_http_matrix_room_pdus(op, NULL);
    if (pdus == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_http_matrix_room_pdus_compact(pdus);

    if (ev->what == NGX_HTTP_MATRIX_EVENT && json_array_size(pdus) == 0) {
        json_decref(pdus);
        return ngx_http_matrix_send_error(r, NGX_HTTP_NOT_FOUND,
                                          "M_NOT_FOUND",
                                          "The event cannot be served");
    }

    switch (ev->what) {

    case NGX_HTTP_MATRIX_EVENT_AUTH:
        body = json_pack("{s:o}", "auth_chain", pdus);
        break;

    case NGX_HTTP_MATRIX_MISSING:
        body = json_pack("{s:o}", "events", pdus);
        break;

    default: /* NGX_HTTP_MATRIX_EVENT, NGX_HTTP_MATRIX_BACKFILL */
        body = json_pack("{s:s%,s:I,s:o}",
                         "origin", (char *) server->data, server->len,
                         "origin_server_ts",
                         (json_int_t) ngx_http_matrix_now_ms(),
                         "pdus", pdus);
        break;
    }

send:

    if (body == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_matrix_send_json(r, NGX_HTTP_OK, body);
    json_decref(body);

    return rc;
}


static void
ngx_http_matrix_events_cleanup(void *data)
{
    ngx_http_matrix_events_t  *ev = data;

    json_decref(ev->from);
    json_decref(ev->latest);
}
