/*
 * A silo user invited to another server's room (server-server-api.md:
 * Inviting to a room):
 *
 *   PUT /_matrix/federation/v2/invite/{roomId}/{eventId}
 *       {"event", "room_version", "invite_room_state"}
 *
 * The invite is checked (a member event with membership "invite" for a
 * user of this server that the silo has, sent by a user of the server
 * asking, hash and signature), signed by this server, kept with the
 * room's stripped state, and owed to the silo (PUT invites/{eventId}) in
 * the same statement; the answer is the event with our signature.  The
 * user can accept it later, once silo users have Matrix clients.
 */


#include "ngx_http_matrix_room.h"
#include "ngx_http_matrix_pdu.h"
#include "ngx_http_matrix_profile.h"
#include "ngx_http_matrix_silo_api.h"

#include <mx_ids.h>


#define NGX_HTTP_MATRIX_INVITE_STATE_MAX  64      /* stripped state events */


typedef struct {
    mx_event_t                     *ev;
    const mx_room_version_t        *version;
    ngx_str_t                       localpart;
} ngx_http_matrix_invite_t;


static ngx_int_t ngx_http_matrix_invite(ngx_http_request_t *r,
    ngx_http_matrix_ctx_t *ctx);
static ngx_uint_t ngx_http_matrix_invite_check(ngx_http_request_t *r,
    ngx_http_matrix_ctx_t *ctx, ngx_http_matrix_invite_t *inv, json_t *body,
    ngx_int_t *rc);
static void ngx_http_matrix_invite_signed(ngx_http_matrix_pdu_check_t *pc);
static ngx_int_t ngx_http_matrix_invite_user(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op);
static ngx_int_t ngx_http_matrix_invite_stored(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op);


ngx_http_matrix_route_t  ngx_http_matrix_invite_routes[] = {

    { NGX_HTTP_PUT,
      ngx_string("/_matrix/federation/v2/invite/{roomId}/{eventId}"),
      ngx_http_matrix_invite,
      NGX_HTTP_MATRIX_FEDERATION },

      ngx_http_matrix_null_route
};


/* silo border: the invitee, by its localpart */
static ngx_http_matrix_pg_stmt_t  ngx_http_matrix_invitee_stmt =
    ngx_http_matrix_pg_stmt(
        "SELECT 1 FROM users "
        "WHERE localpart = $1 AND deactivated IS NOT TRUE", 1);

static ngx_http_matrix_pg_stmt_t  ngx_http_matrix_store_invite_stmt =
    ngx_http_matrix_pg_stmt(
        "SELECT matrix_store_invite($1, $2, $3, $4, $5, $6, $7, $8)", 8);


static ngx_int_t
ngx_http_matrix_invite(ngx_http_request_t *r, ngx_http_matrix_ctx_t *ctx)
{
    json_t                     *body;
    ngx_int_t                   rc;
    ngx_http_matrix_invite_t   *inv;
    ngx_http_matrix_room_op_t  *op;

    body = ngx_http_matrix_request_json(r, &rc);
    if (body == NULL) {
        return rc;
    }

    inv = ngx_pcalloc(r->pool, sizeof(ngx_http_matrix_invite_t));
    if (inv == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (!ngx_http_matrix_invite_check(r, ctx, inv, body, &rc)) {
        return rc;
    }

    op = ngx_http_matrix_room_op(r, ctx);
    if (op == NULL) {
        return ngx_http_matrix_send_error(r, NGX_HTTP_NOT_FOUND,
                                          "M_NOT_FOUND",
                                          "Invites need \"matrix_postgres\"");
    }

    op->data = inv;
    op->room_id = ctx->params[0];
    op->version = inv->version;

    if (ngx_http_matrix_pdu_check(r->pool, r->connection->log, inv->ev,
                                  ngx_http_matrix_invite_signed, op)
        == NULL)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    r->main->count++;
    op->counted = 1;

    return NGX_DONE;
}


/*
 * All that needs neither keys nor the database: 1 if the invite passes,
 * else 0 with the error answered and *rc what the handler returns.
 */

static ngx_uint_t
ngx_http_matrix_invite_check(ngx_http_request_t *r,
    ngx_http_matrix_ctx_t *ctx, ngx_http_matrix_invite_t *inv, json_t *body,
    ngx_int_t *rc)
{
    json_t              *event, *state;
    mx_err_t             err;
    ngx_str_t            user_id, server, event_id;
    const char          *version, *why;

    version = json_string_value(json_object_get(body, "room_version"));
    event = json_object_get(body, "event");
    state = json_object_get(body, "invite_room_state");

    if (version == NULL || !json_is_object(event)
        || (state != NULL && !json_is_array(state)))
    {
        *rc = ngx_http_matrix_send_error(r, NGX_HTTP_BAD_REQUEST,
                                          "M_BAD_JSON", "An invite needs "
                                          "\"event\" and \"room_version\"");
        return 0;
    }

    if (json_array_size(state) > NGX_HTTP_MATRIX_INVITE_STATE_MAX) {
        *rc = ngx_http_matrix_send_error(r, NGX_HTTP_BAD_REQUEST,
                                          "M_LIMIT_EXCEEDED",
                                          "Too much invite_room_state");
        return 0;
    }

    if (!json_is_object(json_object_get(event, "signatures"))) {
        *rc = ngx_http_matrix_forbidden(r, "The invite is not signed");
        return 0;
    }

    inv->version = mx_room_version_find(version, ngx_strlen(version));

    /*
     * From room version 12 on, the spec asks that invite_room_state be
     * checked (the create event, signatures, the room): not done yet, so
     * such invites are declined rather than half-checked.
     */

    if (inv->version == NULL || !inv->version->supported
        || inv->version->room_id_from_create)
    {
        *rc = ngx_http_matrix_incompatible_version(r, version);
        return 0;
    }

    if (mx_event_from_json(event, inv->version, &inv->ev, &err) != MX_OK) {
        *rc = ngx_http_matrix_send_error(r, NGX_HTTP_BAD_REQUEST,
                                          "M_BAD_JSON", "Invalid event: %s",
                                          err.msg);
        return 0;
    }

    if (ngx_http_matrix_keep_event(r->pool, inv->ev) != NGX_OK) {
        *rc = NGX_HTTP_INTERNAL_SERVER_ERROR;
        return 0;
    }

    event_id = ctx->params[1];

    if (ngx_strlen(inv->ev->event_id) != event_id.len
        || ngx_strncmp(inv->ev->event_id, event_id.data, event_id.len) != 0
        || inv->ev->room_id == NULL
        || ngx_strlen(inv->ev->room_id) != ctx->params[0].len
        || ngx_strncmp(inv->ev->room_id, ctx->params[0].data,
                       ctx->params[0].len) != 0)
    {
        *rc = ngx_http_matrix_send_error(r, NGX_HTTP_BAD_REQUEST,
                                          "M_BAD_JSON", "The event's room or "
                                          "ID is not the one in the path");
        return 0;
    }

    if (ngx_strcmp(inv->ev->type, "m.room.member") != 0
        || inv->ev->membership == NULL || inv->ev->state_key == NULL
        || ngx_strcmp(inv->ev->membership, "invite") != 0)
    {
        *rc = ngx_http_matrix_send_error(r, NGX_HTTP_BAD_REQUEST,
                                          "M_BAD_JSON", "Not an invite");
        return 0;
    }

    user_id.data = (u_char *) inv->ev->state_key;
    user_id.len = ngx_strlen(inv->ev->state_key);

    if (ngx_http_matrix_local_user(ctx, &user_id, &inv->localpart, &why)
        != NGX_OK)
    {
        *rc = ngx_http_matrix_forbidden(r, "The invite is not for a user "
                                         "of this server");
        return 0;
    }

    user_id.data = (u_char *) inv->ev->sender;
    user_id.len = ngx_strlen(inv->ev->sender);

    if (ngx_http_matrix_server_of(&user_id, &server) != NGX_OK
        || server.len != ctx->origin.len
        || ngx_strncmp(server.data, ctx->origin.data, server.len) != 0)
    {
        *rc = ngx_http_matrix_forbidden(r, "%s is not a user of %V",
                                         inv->ev->sender, &ctx->origin);
        return 0;
    }

    if (mx_event_check_content_hash(inv->ev->json, &err) != MX_OK) {
        *rc = ngx_http_matrix_send_error(r, NGX_HTTP_BAD_REQUEST,
                                          "M_BAD_JSON", "The event's content "
                                          "hash is wrong: %s", err.msg);
        return 0;
    }

    return 1;
}


static void
ngx_http_matrix_invite_signed(ngx_http_matrix_pdu_check_t *pc)
{
    ngx_int_t                   rc;
    ngx_http_matrix_invite_t   *inv;
    ngx_http_matrix_room_op_t  *op;

    op = pc->data;
    inv = op->data;

    if (pc->rc != NGX_OK) {
        rc = ngx_http_matrix_forbidden(op->r, "The event's signature: %s",
                                       pc->why.msg);

    } else {
        rc = ngx_http_matrix_room_run(op, &ngx_http_matrix_invitee_stmt,
                                      &inv->localpart, 1,
                                      ngx_http_matrix_invite_user);
    }

    ngx_http_matrix_room_continue(op, rc);
}


/* the silo has the user: sign, keep, owe the silo, in one statement */

static ngx_int_t
ngx_http_matrix_invite_user(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op)
{
    char                        *state;
    ngx_int_t                    rc;
    mx_buf_t                     buf;
    mx_err_t                     err;
    ngx_str_t                    values[8];
    u_char                       now[NGX_INT64_LEN + 1];
    ngx_http_matrix_invite_t    *inv;
    ngx_http_matrix_srv_conf_t  *mscf;

    inv = op->data;
    mscf = op->ctx->mscf;

    if (PQntuples(op->q->result) != 1) {
        return ngx_http_matrix_send_error(r, NGX_HTTP_NOT_FOUND,
                                          "M_NOT_FOUND", "No such user");
    }

    /* what the asking server wrote under our name is not ours */
    json_object_del(json_object_get(inv->ev->json, "signatures"),
                    (char *) mscf->server_name.data);

    if (mx_event_sign(inv->ev->json, inv->version,
                      (char *) mscf->server_name.data,
                      mscf->signing_keys->elts, &err)
        != MX_OK)
    {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "matrix invite: cannot sign: %s", err.msg);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    mx_buf_init(&buf);

    if (mx_json_canonical(inv->ev->json, &buf, &err) != MX_OK) {
        mx_buf_free(&buf);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    state = json_object_get(op->ctx->body, "invite_room_state")
            ? json_dumps(json_object_get(op->ctx->body, "invite_room_state"),
                         JSON_COMPACT)
            : NULL;

    values[0].data = (u_char *) inv->ev->event_id;
    values[0].len = ngx_strlen(inv->ev->event_id);
    values[1] = op->room_id;
    values[2].data = (u_char *) inv->version->id;
    values[2].len = ngx_strlen(inv->version->id);
    values[3].data = (u_char *) inv->ev->state_key;
    values[3].len = ngx_strlen(inv->ev->state_key);
    values[4].data = (u_char *) inv->ev->sender;
    values[4].len = ngx_strlen(inv->ev->sender);
    values[5].data = buf.data;
    values[5].len = buf.len;
    values[6].data = (u_char *) (state ? state : "[]");
    values[6].len = ngx_strlen(values[6].data);
    values[7].data = now;
    values[7].len = ngx_sprintf(now, "%L", ngx_http_matrix_now_ms()) - now;

    rc = ngx_http_matrix_room_run(op, &ngx_http_matrix_store_invite_stmt,
                                  values, 8, ngx_http_matrix_invite_stored);

    mx_buf_free(&buf);
    free(state);

    return rc;
}


static ngx_int_t
ngx_http_matrix_invite_stored(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op)
{
    json_t                    *body;
    ngx_int_t                  rc;
    ngx_http_matrix_invite_t  *inv;

    inv = op->data;

    ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                  "matrix invite: %s invites %s to \"%V\"", inv->ev->sender,
                  inv->ev->state_key, &op->room_id);

    ngx_http_matrix_silo_api_kick();

    body = json_pack("{s:O}", "event", inv->ev->json);
    if (body == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_matrix_send_json(r, NGX_HTTP_OK, body);
    json_decref(body);

    return rc;
}
