/*
 * Other servers' users joining and leaving the silo's rooms
 * (server-server-api.md: Joining Rooms, Leaving Rooms):
 *
 *   GET /_matrix/federation/v1/make_join/{roomId}/{userId}?ver=...
 *   PUT /_matrix/federation/v1/send_join/{roomId}/{eventId}     ([200, {}])
 *   PUT /_matrix/federation/v2/send_join/{roomId}/{eventId}
 *   GET /_matrix/federation/v1/make_leave/{roomId}/{userId}
 *   PUT /_matrix/federation/v1/send_leave/{roomId}/{eventId}    ([200, {}])
 *   PUT /_matrix/federation/v2/send_leave/{roomId}/{eventId}
 *
 * make_* answers a template built on the room's head; send_* checks the
 * signed event (format, hash, the sender's signature, the auth rules
 * against the current state, the room's server ACL), appends it under
 * the room's lock, and queues the silo's PUT memberships/{eventId} in the
 * same transaction, before it answers.
 */


#include "ngx_http_matrix_room.h"
#include "ngx_http_matrix_pdu.h"
#include "ngx_http_matrix_silo_api.h"

#include <mx_auth.h>
#include <mx_ids.h>


#define NGX_HTTP_MATRIX_PREV_MAX  20      /* prev_events of a received event */
#define NGX_HTTP_MATRIX_AUTH_MAX  10      /* auth_events */


typedef struct {
    const char                     *membership;    /* "join", "leave" */
    ngx_uint_t                      version;       /* of send_*: 1 or 2 */
    ngx_str_t                       user_id;
    ngx_str_t                       event_id;
    mx_event_t                     *ev;
    ngx_str_t                       nid;           /* the event's, stored */
    ngx_http_matrix_room_head_t    *head;
    unsigned                        omit_members:1;
} ngx_http_matrix_membership_t;


static ngx_int_t ngx_http_matrix_make_join(ngx_http_request_t *r,
    ngx_http_matrix_ctx_t *ctx);
static ngx_int_t ngx_http_matrix_make_leave(ngx_http_request_t *r,
    ngx_http_matrix_ctx_t *ctx);
static ngx_int_t ngx_http_matrix_make(ngx_http_request_t *r,
    ngx_http_matrix_ctx_t *ctx, const char *membership);
static ngx_int_t ngx_http_matrix_make_opened(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op);
static ngx_int_t ngx_http_matrix_make_public(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op);
static ngx_int_t ngx_http_matrix_make_created(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op);
static ngx_int_t ngx_http_matrix_make_head(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op);
static ngx_int_t ngx_http_matrix_version_offered(ngx_http_request_t *r,
    const char *version);

static ngx_int_t ngx_http_matrix_send_join_v1(ngx_http_request_t *r,
    ngx_http_matrix_ctx_t *ctx);
static ngx_int_t ngx_http_matrix_send_join_v2(ngx_http_request_t *r,
    ngx_http_matrix_ctx_t *ctx);
static ngx_int_t ngx_http_matrix_send_leave_v1(ngx_http_request_t *r,
    ngx_http_matrix_ctx_t *ctx);
static ngx_int_t ngx_http_matrix_send_leave_v2(ngx_http_request_t *r,
    ngx_http_matrix_ctx_t *ctx);
static ngx_int_t ngx_http_matrix_send(ngx_http_request_t *r,
    ngx_http_matrix_ctx_t *ctx, const char *membership, ngx_uint_t version);
static ngx_int_t ngx_http_matrix_send_opened(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op);
static void ngx_http_matrix_send_signed(ngx_http_matrix_pdu_check_t *pc);
static ngx_int_t ngx_http_matrix_send_begun(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op);
static ngx_int_t ngx_http_matrix_send_head(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op);
static ngx_int_t ngx_http_matrix_send_cited(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op);
static ngx_int_t ngx_http_matrix_send_appended(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op);
static ngx_int_t ngx_http_matrix_send_relayed(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op);
static ngx_int_t ngx_http_matrix_send_committed(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op);
static ngx_int_t ngx_http_matrix_send_reply(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op);
static ngx_int_t ngx_http_matrix_omit_members(json_t *state, json_t *ids,
    json_t *servers);

static ngx_uint_t ngx_http_matrix_acl_allows(ngx_http_matrix_room_op_t *op,
    ngx_http_matrix_room_head_t *head);


ngx_http_matrix_route_t  ngx_http_matrix_membership_routes[] = {

    { NGX_HTTP_GET,
      ngx_string("/_matrix/federation/v1/make_join/{roomId}/{userId}"),
      ngx_http_matrix_make_join,
      NGX_HTTP_MATRIX_FEDERATION },

    { NGX_HTTP_PUT,
      ngx_string("/_matrix/federation/v1/send_join/{roomId}/{eventId}"),
      ngx_http_matrix_send_join_v1,
      NGX_HTTP_MATRIX_FEDERATION },

    { NGX_HTTP_PUT,
      ngx_string("/_matrix/federation/v2/send_join/{roomId}/{eventId}"),
      ngx_http_matrix_send_join_v2,
      NGX_HTTP_MATRIX_FEDERATION },

    { NGX_HTTP_GET,
      ngx_string("/_matrix/federation/v1/make_leave/{roomId}/{userId}"),
      ngx_http_matrix_make_leave,
      NGX_HTTP_MATRIX_FEDERATION },

    { NGX_HTTP_PUT,
      ngx_string("/_matrix/federation/v1/send_leave/{roomId}/{eventId}"),
      ngx_http_matrix_send_leave_v1,
      NGX_HTTP_MATRIX_FEDERATION },

    { NGX_HTTP_PUT,
      ngx_string("/_matrix/federation/v2/send_leave/{roomId}/{eventId}"),
      ngx_http_matrix_send_leave_v2,
      NGX_HTTP_MATRIX_FEDERATION },

      ngx_http_matrix_null_route
};


static ngx_http_matrix_pg_stmt_t  ngx_http_matrix_append_stmt =
    ngx_http_matrix_pg_stmt("SELECT matrix_append_events($1, $2)", 2);

/* the events an event cites as its auth, of this room, kept whole */
static ngx_http_matrix_pg_stmt_t  ngx_http_matrix_cited_stmt =
    ngx_http_matrix_pg_stmt(
        "SELECT pdu FROM events WHERE room_nid = $1 AND pdu IS NOT NULL "
        "AND event_id IN (SELECT jsonb_array_elements_text($2))", 2);

/* the other servers of the room owe the join (sql/004_outbound.sql) */
static ngx_http_matrix_pg_stmt_t  ngx_http_matrix_relay_stmt =
    ngx_http_matrix_pg_stmt(
        "SELECT matrix_federation_enqueue($1, $2::bigint[], $3)", 3);

/* silo border: is the room public */
static ngx_http_matrix_pg_stmt_t  ngx_http_matrix_silo_public_stmt =
    ngx_http_matrix_pg_stmt(
        "SELECT is_public IS TRUE FROM rooms WHERE room_id = $1", 1);

static ngx_http_matrix_pg_stmt_t  ngx_http_matrix_join_parts_stmt =
    ngx_http_matrix_pg_stmt("SELECT * FROM matrix_join_parts($1, $2)", 2);


/* make_join, make_leave */


static ngx_int_t
ngx_http_matrix_make_join(ngx_http_request_t *r, ngx_http_matrix_ctx_t *ctx)
{
    return ngx_http_matrix_make(r, ctx, "join");
}


static ngx_int_t
ngx_http_matrix_make_leave(ngx_http_request_t *r, ngx_http_matrix_ctx_t *ctx)
{
    return ngx_http_matrix_make(r, ctx, "leave");
}


static ngx_int_t
ngx_http_matrix_make(ngx_http_request_t *r, ngx_http_matrix_ctx_t *ctx,
    const char *membership)
{
    ngx_str_t                      server;
    const char                    *why;
    ngx_http_matrix_room_op_t     *op;
    ngx_http_matrix_membership_t  *m;

    m = ngx_pcalloc(r->pool, sizeof(ngx_http_matrix_membership_t));
    if (m == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    m->membership = membership;
    m->user_id = ctx->params[1];

    if (mx_id_valid((char *) m->user_id.data, m->user_id.len, '@', 1, &why)
        != MX_OK)
    {
        return ngx_http_matrix_send_error(r, NGX_HTTP_BAD_REQUEST,
                                          "M_INVALID_PARAM",
                                          "Invalid user ID: %s", why);
    }

    /* a server speaks for its own users only */

    if (ngx_http_matrix_server_of(&m->user_id, &server) != NGX_OK
        || server.len != ctx->origin.len
        || ngx_strncmp(server.data, ctx->origin.data, server.len) != 0)
    {
        return ngx_http_matrix_forbidden(r, "%V is not a user of %V",
                                         &m->user_id, &ctx->origin);
    }

    op = ngx_http_matrix_room_op(r, ctx);
    if (op == NULL) {
        return ngx_http_matrix_send_error(r, NGX_HTTP_NOT_FOUND,
                                          "M_NOT_FOUND",
                                          "Rooms need \"matrix_postgres\"");
    }

    op->data = m;

    return ngx_http_matrix_room_open(op, &ctx->params[0], 0,
                                     ngx_http_matrix_make_opened);
}


static ngx_int_t
ngx_http_matrix_make_opened(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op)
{
    ngx_http_matrix_membership_t  *m;

    m = op->data;

    /* the room's version first: nothing is made for a server that can't */

    if (ngx_strcmp(m->membership, "join") == 0
        && ngx_http_matrix_version_offered(r, op->version->id) != NGX_OK)
    {
        return ngx_http_matrix_incompatible_version(r, op->version->id);
    }

    if (ngx_strcmp(m->membership, "leave") == 0 && !op->created) {
        return ngx_http_matrix_forbidden(r, "%V is not in the room",
                                         &m->user_id);
    }

    if (op->created) {
        return ngx_http_matrix_make_created(r, op);
    }

    /* a room the silo keeps private is not made for a stranger's asking */

    return ngx_http_matrix_room_run(op, &ngx_http_matrix_silo_public_stmt,
                                    &op->silo_room_id, 1,
                                    ngx_http_matrix_make_public);
}


static ngx_int_t
ngx_http_matrix_make_public(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op)
{
    ngx_http_matrix_membership_t  *m;

    m = op->data;

    if (PQntuples(op->q->result) != 1) {
        return ngx_http_matrix_send_error(r, NGX_HTTP_NOT_FOUND,
                                          "M_NOT_FOUND",
                                          "The silo no longer has this room");
    }

    if (PQgetvalue(op->q->result, 0, 0)[0] != 't') {
        return ngx_http_matrix_forbidden(r, "The room is invite-only and %V "
                                         "is not invited", &m->user_id);
    }

    return ngx_http_matrix_room_make_events(op, ngx_http_matrix_make_created);
}


static ngx_int_t
ngx_http_matrix_make_created(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op)
{
    ngx_http_matrix_membership_t  *m;

    m = op->data;

    return ngx_http_matrix_room_head(op, &m->user_id, 1, 0,
                                     ngx_http_matrix_make_head);
}


static ngx_int_t
ngx_http_matrix_make_head(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op)
{
    json_t                        *event, *auth, *body;
    ngx_int_t                      rc;
    mx_event_t                    *member;
    const char                    *join_rule, *current;
    ngx_http_matrix_room_head_t   *head;
    ngx_http_matrix_membership_t  *m;

    m = op->data;

    head = ngx_http_matrix_room_head_get(op);
    if (head == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (!ngx_http_matrix_acl_allows(op, head)) {
        return ngx_http_matrix_forbidden(r, "The room's server ACL denies "
                                         "%V", &op->ctx->origin);
    }

    member = ngx_http_matrix_room_head_member(head, &m->user_id);
    current = member ? member->membership : NULL;

    if (current && ngx_strcmp(current, "ban") == 0) {
        return ngx_http_matrix_forbidden(r, "%V is banned from the room",
                                         &m->user_id);
    }

    if (ngx_strcmp(m->membership, "join") == 0) {
        join_rule = head->join_rules
                    ? mx_event_content_string(head->join_rules, "join_rule")
                    : NULL;

        if ((join_rule == NULL || ngx_strcmp(join_rule, "public") != 0)
            && (current == NULL
                || (ngx_strcmp(current, "invite") != 0
                    && ngx_strcmp(current, "join") != 0)))
        {
            return ngx_http_matrix_forbidden(r, "The room is invite-only "
                                             "and %V is not invited",
                                             &m->user_id);
        }

    } else if (current == NULL
               || (ngx_strcmp(current, "join") != 0
                   && ngx_strcmp(current, "invite") != 0))
    {
        return ngx_http_matrix_forbidden(r, "%V is not in the room",
                                         &m->user_id);
    }

    auth = json_pack("[s]", head->create->event_id);
    if (auth == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (head->power_levels) {
        json_array_append_new(auth, json_string(head->power_levels->event_id));
    }

    if (head->join_rules && ngx_strcmp(m->membership, "join") == 0) {
        json_array_append_new(auth, json_string(head->join_rules->event_id));
    }

    if (member) {
        json_array_append_new(auth, json_string(member->event_id));
    }

    event = json_pack("{s:o,s:{s:s},s:I,s:s%,s:I,s:O,s:s,s:s%,s:s%,s:s}",
                      "auth_events", auth,
                      "content", "membership", m->membership,
                      "depth", (json_int_t) head->depth,
                      "origin", (char *) op->ctx->mscf->server_name.data,
                      op->ctx->mscf->server_name.len,
                      "origin_server_ts",
                      (json_int_t) ngx_http_matrix_now_ms(),
                      "prev_events", head->prev_events,
                      "room_id", (char *) op->room_id.data,
                      "sender", (char *) m->user_id.data, m->user_id.len,
                      "state_key", (char *) m->user_id.data, m->user_id.len,
                      "type", "m.room.member");
    if (event == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    body = json_pack("{s:o,s:s}", "event", event,
                     "room_version", op->version->id);
    if (body == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_matrix_send_json(r, NGX_HTTP_OK, body);
    json_decref(body);

    return rc;
}


/* "ver" is repeated, one version each; none at all means version 1 only */

static ngx_int_t
ngx_http_matrix_version_offered(ngx_http_request_t *r, const char *version)
{
    u_char  *p, *last, *amp;
    size_t   len;

    len = ngx_strlen(version);
    p = r->args.data;
    last = p + r->args.len;

    while (p < last) {
        amp = ngx_strlchr(p, last, '&');
        if (amp == NULL) {
            amp = last;
        }

        if (amp - p == (ssize_t) (4 + len)
            && ngx_strncmp(p, "ver=", 4) == 0
            && ngx_strncmp(p + 4, version, len) == 0)
        {
            return NGX_OK;
        }

        p = amp + 1;
    }

    return NGX_DECLINED;
}


/* send_join, send_leave */


static ngx_int_t
ngx_http_matrix_send_join_v1(ngx_http_request_t *r,
    ngx_http_matrix_ctx_t *ctx)
{
    return ngx_http_matrix_send(r, ctx, "join", 1);
}


static ngx_int_t
ngx_http_matrix_send_join_v2(ngx_http_request_t *r,
    ngx_http_matrix_ctx_t *ctx)
{
    return ngx_http_matrix_send(r, ctx, "join", 2);
}


static ngx_int_t
ngx_http_matrix_send_leave_v1(ngx_http_request_t *r,
    ngx_http_matrix_ctx_t *ctx)
{
    return ngx_http_matrix_send(r, ctx, "leave", 1);
}


static ngx_int_t
ngx_http_matrix_send_leave_v2(ngx_http_request_t *r,
    ngx_http_matrix_ctx_t *ctx)
{
    return ngx_http_matrix_send(r, ctx, "leave", 2);
}


static ngx_int_t
ngx_http_matrix_send(ngx_http_request_t *r, ngx_http_matrix_ctx_t *ctx,
    const char *membership, ngx_uint_t version)
{
    ngx_int_t                      rc;
    ngx_str_t                      v;
    ngx_http_matrix_room_op_t     *op;
    ngx_http_matrix_membership_t  *m;

    if (ngx_http_matrix_request_json(r, &rc) == NULL) {
        return rc;
    }

    m = ngx_pcalloc(r->pool, sizeof(ngx_http_matrix_membership_t));
    if (m == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    m->membership = membership;
    m->version = version;
    m->event_id = ctx->params[1];

    if (ngx_http_arg(r, (u_char *) "omit_members", 12, &v) == NGX_OK
        && v.len == 4 && ngx_strncmp(v.data, "true", 4) == 0)
    {
        m->omit_members = 1;
    }

    op = ngx_http_matrix_room_op(r, ctx);
    if (op == NULL) {
        return ngx_http_matrix_send_error(r, NGX_HTTP_NOT_FOUND,
                                          "M_NOT_FOUND",
                                          "Rooms need \"matrix_postgres\"");
    }

    op->data = m;

    return ngx_http_matrix_room_open(op, &ctx->params[0], 0,
                                     ngx_http_matrix_send_opened);
}


/* everything that can be checked without the room's state, in order */

static ngx_int_t
ngx_http_matrix_send_opened(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op)
{
    mx_err_t                       err;
    ngx_str_t                      sender, server;
    mx_event_t                    *ev;
    ngx_http_matrix_membership_t  *m;

    m = op->data;

    if (!op->created) {
        return ngx_http_matrix_send_error(r, NGX_HTTP_NOT_FOUND,
                                          "M_NOT_FOUND", "Unknown room");
    }

    if (!json_is_object(json_object_get(op->ctx->body, "signatures"))) {
        return ngx_http_matrix_forbidden(r, "The event is not signed");
    }

    if (json_array_size(json_object_get(op->ctx->body, "prev_events")) == 0
        || json_array_size(json_object_get(op->ctx->body, "prev_events"))
           > NGX_HTTP_MATRIX_PREV_MAX
        || json_array_size(json_object_get(op->ctx->body, "auth_events"))
           > NGX_HTTP_MATRIX_AUTH_MAX)
    {
        return ngx_http_matrix_send_error(r, NGX_HTTP_BAD_REQUEST,
                                          "M_BAD_JSON", "No prev_events, or "
                                          "too many prev_events or "
                                          "auth_events");
    }

    if (mx_event_from_json(op->ctx->body, op->version, &ev, &err) != MX_OK) {
        return ngx_http_matrix_send_error(r, NGX_HTTP_BAD_REQUEST,
                                          "M_BAD_JSON", "Invalid event: %s",
                                          err.msg);
    }

    if (ngx_http_matrix_keep_event(r->pool, ev) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    m->ev = ev;

    if (ngx_strlen(ev->event_id) != m->event_id.len
        || ngx_strncmp(ev->event_id, m->event_id.data, m->event_id.len) != 0)
    {
        return ngx_http_matrix_send_error(r, NGX_HTTP_BAD_REQUEST,
                                          "M_BAD_JSON", "The event's ID is "
                                          "%s, not the one in the path",
                                          ev->event_id);
    }

    if (ev->room_id == NULL || ngx_strcmp(ev->room_id, op->room_id.data) != 0)
    {
        return ngx_http_matrix_send_error(r, NGX_HTTP_BAD_REQUEST,
                                          "M_BAD_JSON",
                                          "The event is for another room");
    }

    if (ngx_strcmp(ev->type, "m.room.member") != 0
        || ev->state_key == NULL || ev->membership == NULL
        || ngx_strcmp(ev->membership, m->membership) != 0)
    {
        return ngx_http_matrix_send_error(r, NGX_HTTP_BAD_REQUEST,
                                          "M_BAD_JSON", "Not an m.room.member "
                                          "event with membership \"%s\"",
                                          m->membership);
    }

    if (ngx_strcmp(ev->state_key, ev->sender) != 0) {
        return ngx_http_matrix_send_error(r, NGX_HTTP_BAD_REQUEST,
                                          "M_BAD_JSON", "The state key is not "
                                          "the sender");
    }

    sender.data = (u_char *) ev->sender;
    sender.len = ngx_strlen(ev->sender);

    if (ngx_http_matrix_server_of(&sender, &server) != NGX_OK
        || server.len != op->ctx->origin.len
        || ngx_strncmp(server.data, op->ctx->origin.data, server.len) != 0)
    {
        return ngx_http_matrix_forbidden(r, "%s is not a user of %V",
                                         ev->sender, &op->ctx->origin);
    }

    if (mx_event_check_content_hash(ev->json, &err) != MX_OK) {
        return ngx_http_matrix_send_error(r, NGX_HTTP_BAD_REQUEST,
                                          "M_BAD_JSON", "The event's content "
                                          "hash is wrong: %s", err.msg);
    }

    m->user_id = sender;

    if (ngx_http_matrix_pdu_check(r->pool, r->connection->log, ev,
                                  ngx_http_matrix_send_signed, op)
        == NULL)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return NGX_DONE;
}


static void
ngx_http_matrix_send_signed(ngx_http_matrix_pdu_check_t *pc)
{
    ngx_int_t                   rc;
    ngx_http_matrix_room_op_t  *op;

    op = pc->data;

    if (pc->rc == NGX_OK) {
        rc = ngx_http_matrix_room_begin(op, ngx_http_matrix_send_begun);

    } else {
        rc = ngx_http_matrix_forbidden(op->r, "The event's signature: %s",
                                       pc->why.msg);
    }

    ngx_http_matrix_room_continue(op, rc);
}


static ngx_int_t
ngx_http_matrix_send_begun(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op)
{
    ngx_http_matrix_membership_t  *m;

    m = op->data;

    return ngx_http_matrix_room_head(op, &m->user_id, 1, 1,
                                     ngx_http_matrix_send_head);
}


/* under the room's lock: the current state, then the event's own auth */

static ngx_int_t
ngx_http_matrix_send_head(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op)
{
    ngx_http_matrix_membership_t  *m;

    m = op->data;

    m->head = ngx_http_matrix_room_head_get(op);
    if (m->head == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_matrix_room_run_json(op, &ngx_http_matrix_cited_stmt,
                                         m->ev->auth_events,
                                         ngx_http_matrix_send_cited);
}


/*
 * The auth rules, twice (server-server-api.md, checks on receipt): with
 * the events it cites, which must all be this room's and kept whole, and
 * with the current state; then the event is appended.
 */

static ngx_int_t
ngx_http_matrix_send_cited(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op)
{
    int                            n;
    json_t                        *records;
    ngx_int_t                      rc;
    mx_err_t                       err;
    PGresult                      *res;
    mx_event_t                    *cited[NGX_HTTP_MATRIX_AUTH_MAX];
    ngx_http_matrix_room_head_t   *head;
    ngx_http_matrix_membership_t  *m;

    m = op->data;
    head = m->head;
    res = op->q->result;
    n = PQntuples(res);

    if ((size_t) n != json_array_size(m->ev->auth_events)
        || n > NGX_HTTP_MATRIX_AUTH_MAX)
    {
        return ngx_http_matrix_forbidden(r, "The event cites auth events "
                                         "this room does not have");
    }

    if (ngx_http_matrix_room_cited(op, res, cited, &err) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (!ngx_http_matrix_acl_allows(op, head)) {
        return ngx_http_matrix_forbidden(r, "The room's server ACL denies "
                                         "%V", &op->ctx->origin);
    }

    if (mx_auth_check(m->ev, (const mx_event_t *const *) cited, n, &err)
        != MX_OK)
    {
        return ngx_http_matrix_forbidden(r, "Not allowed by its auth events: "
                                         "%s", err.msg);
    }

    if (mx_auth_check(m->ev, (const mx_event_t *const *) head->state,
                      head->nstate, &err)
        != MX_OK)
    {
        return ngx_http_matrix_forbidden(r, "Not allowed by the room's "
                                         "current state: %s", err.msg);
    }

    records = json_array();
    if (records == NULL
        || ngx_http_matrix_room_record(records, m->ev, "membership", &err)
           != NGX_OK)
    {
        json_decref(records);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_matrix_room_run_json(op, &ngx_http_matrix_append_stmt,
                                       records,
                                       ngx_http_matrix_send_appended);
    json_decref(records);

    return rc;
}


static ngx_int_t
ngx_http_matrix_send_appended(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op)
{
    PGresult                      *res;
    ngx_str_t                      values[3];
    ngx_http_matrix_membership_t  *m;

    m = op->data;
    res = op->q->result;

    if (PQntuples(res) != 1) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (PQgetisnull(res, 0, 0)) {
        return ngx_http_matrix_send_error(r, NGX_HTTP_BAD_REQUEST,
                                          "M_BAD_JSON", "The event names "
                                          "events this room does not have, "
                                          "or its depth is out of line");
    }

    m->nid.len = PQgetlength(res, 0, 0);
    m->nid.data = ngx_pnalloc(r->pool, m->nid.len);
    if (m->nid.data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_memcpy(m->nid.data, PQgetvalue(res, 0, 0), m->nid.len);

    /*
     * The joining (leaving) server knows nobody else in the room: the
     * resident server tells the others, with the room's next events.
     */

    values[0] = op->nid;
    values[1].data = ngx_pnalloc(r->pool, m->nid.len + 2);
    if (values[1].data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    values[1].len = ngx_sprintf(values[1].data, "{%V}", &m->nid)
                    - values[1].data;
    values[2] = op->ctx->mscf->server_name;

    return ngx_http_matrix_room_run(op, &ngx_http_matrix_relay_stmt, values, 3,
                                    ngx_http_matrix_send_relayed);
}


static ngx_int_t
ngx_http_matrix_send_relayed(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op)
{
    return ngx_http_matrix_room_commit(op, ngx_http_matrix_send_committed);
}


/* kept: now the answer, which a leave does not need the state for */

static ngx_int_t
ngx_http_matrix_send_committed(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op)
{
    ngx_str_t                      values[2];
    ngx_http_matrix_membership_t  *m;

    m = op->data;

    ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                  "matrix room \"%V\": %s %s", &op->room_id, m->ev->sender,
                  ngx_strcmp(m->membership, "join") == 0 ? "joined" : "left");

    /* the silo is told now, not at the next tick */
    ngx_http_matrix_silo_api_kick();

    if (ngx_strcmp(m->membership, "leave") == 0) {
        return ngx_http_matrix_send_reply(r, op);
    }

    values[0] = op->nid;
    values[1] = m->nid;

    return ngx_http_matrix_room_run(op, &ngx_http_matrix_join_parts_stmt,
                                    values, 2, ngx_http_matrix_send_reply);
}


static ngx_int_t
ngx_http_matrix_send_reply(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op)
{
    json_t                        *body, *state, *state_ids, *chain;
    json_t                        *servers;
    ngx_int_t                      rc;
    ngx_http_matrix_membership_t  *m;

    m = op->data;

    if (ngx_strcmp(m->membership, "leave") == 0) {
        body = json_object();

    } else {
        if (ngx_http_matrix_room_state_parts(op, &state, &state_ids, &chain)
            != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        if (m->omit_members) {
            servers = json_array();

            if (servers == NULL
                || ngx_http_matrix_omit_members(state, state_ids, servers)
                   != NGX_OK)
            {
                json_decref(servers);
                json_decref(state);
                json_decref(state_ids);
                json_decref(chain);
                return NGX_HTTP_INTERNAL_SERVER_ERROR;
            }

        } else {
            servers = NULL;
        }

        json_decref(state_ids);

        body = json_pack("{s:o,s:o,s:O,s:s%,s:b}",
                         "state", state,
                         "auth_chain", chain,
                         "event", m->ev->json,
                         "origin", (char *) op->ctx->mscf->server_name.data,
                         op->ctx->mscf->server_name.len,
                         "members_omitted", servers != NULL);

        if (body != NULL && servers != NULL) {
            json_object_set_new(body, "servers_in_room", servers);

        } else {
            json_decref(servers);
        }
    }

    if (body != NULL && m->version == 1) {
        body = json_pack("[i,o]", 200, body);
    }

    if (body == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_matrix_send_json(r, NGX_HTTP_OK, body);
    json_decref(body);

    return rc;
}


/*
 * A partial state: the members left out but those that authorise the
 * rest (the creator's, cited by the power levels); servers_in_room from
 * the members that are joined.
 */

static ngx_int_t
ngx_http_matrix_omit_members(json_t *state, json_t *ids, json_t *servers)
{
    size_t       i, j;
    json_t      *ev, *cited, *auth;
    const char  *type, *id, *membership, *colon;

    cited = json_object();
    if (cited == NULL) {
        return NGX_ERROR;
    }

    for (i = 0; i < json_array_size(state); i++) {
        ev = json_array_get(state, i);
        type = json_string_value(json_object_get(ev, "type"));

        if (type == NULL || ngx_strcmp(type, "m.room.member") == 0) {
            continue;
        }

        auth = json_object_get(ev, "auth_events");

        for (j = 0; j < json_array_size(auth); j++) {
            id = json_string_value(json_array_get(auth, j));
            if (id) {
                json_object_set_new(cited, id, json_true());
            }
        }
    }

    for (i = 0; i < json_array_size(state); /* void */) {
        ev = json_array_get(state, i);
        type = json_string_value(json_object_get(ev, "type"));

        if (type == NULL || ngx_strcmp(type, "m.room.member") != 0) {
            i++;
            continue;
        }

        membership = json_string_value(json_object_get(
                         json_object_get(ev, "content"), "membership"));
        colon = json_string_value(json_object_get(ev, "state_key"));
        colon = colon ? strchr(colon, ':') : NULL;

        if (membership && colon && ngx_strcmp(membership, "join") == 0) {
            for (j = 0; j < json_array_size(servers); j++) {
                if (ngx_strcmp(json_string_value(json_array_get(servers, j)),
                               colon + 1) == 0)
                {
                    break;
                }
            }

            if (j == json_array_size(servers)) {
                json_array_append_new(servers, json_string(colon + 1));
            }
        }

        id = json_string_value(json_array_get(ids, i));

        if (id && json_object_get(cited, id)) {
            i++;
            continue;
        }

        json_array_remove(state, i);
        json_array_remove(ids, i);
    }

    json_decref(cited);

    return NGX_OK;
}


static ngx_uint_t
ngx_http_matrix_acl_allows(ngx_http_matrix_room_op_t *op,
    ngx_http_matrix_room_head_t *head)
{
    if (head->server_acl == NULL) {
        return 1;
    }

    return ngx_http_matrix_room_acl_allows(op, head->server_acl->content);
}
