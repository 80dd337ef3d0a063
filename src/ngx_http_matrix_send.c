/*
 * Transactions pushed to us (server-server-api.md: Transactions, PDUs,
 * Checks performed on receipt of a PDU, EDUs):
 *
 *   PUT /_matrix/federation/v1/send/{txnId}
 *       {"origin", "origin_server_ts", "pdus": [...], "edus": [...]}
 *
 * A transaction is answered once per (origin, txnId): its answer is kept
 * in received_transactions, and the same transaction again gets it back
 * with nothing done.  Its PDUs are handled one after the other, each on
 * its own (one that fails never fails the others), each answered in
 * "pdus" by its event ID, {} or {"error": "..."}:
 *
 *   - its room must be one of ours that has events ("unknown room");
 *   - the PDU must parse with the room's version; a content hash that
 *     is present but wrong makes it redacted, not refused;
 *   - the sender's server must have signed it (its keys fetched if
 *     need be);
 *   - then under the room's lock: the sender's server must have a user
 *     joined (or this is a join), all its prev_events must be here (a
 *     gap is asked of the sending server once, get_missing_events, and
 *     what comes checked first; else "missing prev events"), the room's
 *     server ACL must let the origin in, and the auth rules must allow
 *     it by the auth events it cites (else it is rejected) and by the
 *     room's current state (else it is soft-failed: stored, but not
 *     current state, not an extremity, not told to the silo);
 *   - appended with the silo's write queued (silo_outbox) in the same
 *     transaction: messages (m.text, m.emote, m.notice), edits, redactions,
 *     and joins and leaves of other servers' users.  A redacted event is
 *     not told to the silo.
 *
 * Every accepted PDU is committed before the answer.  EDUs are
 * accepted: typing notices and read receipts are told to the silo on the
 * side (ngx_http_matrix_edu.c), presence and the rest are ignored.
 */


#include "ngx_http_matrix_room.h"
#include "ngx_http_matrix_pdu.h"
#include "ngx_http_matrix_silo_api.h"
#include "ngx_http_matrix_http.h"
#include "ngx_http_matrix_destination.h"
#include "ngx_http_matrix_edu.h"

#include <mx_auth.h>


#define NGX_HTTP_MATRIX_TXN_PDUS   50      /* the spec's limits */
#define NGX_HTTP_MATRIX_TXN_EDUS   100
#define NGX_HTTP_MATRIX_PREV_MAX   20      /* prev_events of a received event */
#define NGX_HTTP_MATRIX_AUTH_MAX   10      /* auth_events */
#define NGX_HTTP_MATRIX_TXN_GAPS   3       /* get_missing_events asked, per
                                              transaction */
#define NGX_HTTP_MATRIX_GAP_EVENTS 10      /* events asked, per gap */
#define NGX_HTTP_MATRIX_GAP_MAX    (1024 * 1024)  /* bytes of an answer */


typedef struct {
    json_t                         *pdus;          /* the request's */
    size_t                          next;          /* the PDU at hand */
    json_t                         *results;       /* event ID: {} or error */
    ngx_uint_t                      accepted;

    /* the PDU at hand */
    mx_event_t                     *ev;
    ngx_str_t                       server;        /* the sender's */
    ngx_http_matrix_room_head_t    *head;
    unsigned                        redacted:1;
    unsigned                        soft_failed:1;

    /* a gap before the PDU at hand, filled from its server */
    ngx_uint_t                      gaps;          /* asked so far */
    size_t                          fetched;       /* the next PDUs are the
                                                      gap's: not answered */
    unsigned                        retrying:1;    /* its gap was asked */
} ngx_http_matrix_txn_t;


static ngx_int_t ngx_http_matrix_txn(ngx_http_request_t *r,
    ngx_http_matrix_ctx_t *ctx);
static ngx_int_t ngx_http_matrix_txn_looked_up(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op);
static ngx_int_t ngx_http_matrix_txn_next(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op);
static ngx_int_t ngx_http_matrix_txn_room(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op);
static ngx_int_t ngx_http_matrix_txn_room_ready(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op);
static const char *ngx_http_matrix_txn_parse(ngx_http_matrix_room_op_t *op,
    json_t *pdu);
static void ngx_http_matrix_txn_signed(ngx_http_matrix_pdu_check_t *pc);
static ngx_int_t ngx_http_matrix_txn_begun(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op);
static ngx_int_t ngx_http_matrix_txn_head(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op);
static ngx_int_t ngx_http_matrix_txn_checked(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op);
static const char *ngx_http_matrix_txn_auth(ngx_http_matrix_room_op_t *op,
    json_t *check);
static const char *ngx_http_matrix_txn_outbox(ngx_http_matrix_room_op_t *op);
static ngx_int_t ngx_http_matrix_txn_appended(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op);
static ngx_int_t ngx_http_matrix_txn_refused(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op);
static ngx_int_t ngx_http_matrix_txn_done(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op);
static ngx_int_t ngx_http_matrix_txn_result(ngx_http_matrix_room_op_t *op,
    const char *event_id, const char *error);
static ngx_int_t ngx_http_matrix_txn_end(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op);
static ngx_int_t ngx_http_matrix_txn_stored(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op);
static void ngx_http_matrix_txn_advance(ngx_http_matrix_txn_t *t);
static ngx_int_t ngx_http_matrix_txn_gap(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op);
static void ngx_http_matrix_txn_gap_resolved(ngx_http_matrix_dest_t *d);
static void ngx_http_matrix_txn_gap_answered(ngx_http_matrix_http_req_t *hr);
static void ngx_http_matrix_txn_gap_fill(ngx_http_matrix_room_op_t *op,
    ngx_http_matrix_http_req_t *hr);


ngx_http_matrix_route_t  ngx_http_matrix_send_routes[] = {

    { NGX_HTTP_PUT,
      ngx_string("/_matrix/federation/v1/send/{txnId}"),
      ngx_http_matrix_txn,
      NGX_HTTP_MATRIX_FEDERATION },

      ngx_http_matrix_null_route
};


static ngx_http_matrix_pg_stmt_t  ngx_http_matrix_txn_lookup_stmt =
    ngx_http_matrix_pg_stmt(
        "SELECT response FROM received_transactions "
        "WHERE origin = $1 AND txn_id = $2", 2);

static ngx_http_matrix_pg_stmt_t  ngx_http_matrix_txn_store_stmt =
    ngx_http_matrix_pg_stmt(
        "INSERT INTO received_transactions "
        "(origin, txn_id, response, received_ts) VALUES ($1, $2, $3, $4) "
        "ON CONFLICT (origin, txn_id) DO NOTHING", 4);

static ngx_http_matrix_pg_stmt_t  ngx_http_matrix_txn_room_stmt =
    ngx_http_matrix_pg_stmt(
        "SELECT room_nid, room_version, created_ts IS NOT NULL, "
        "coalesce(silo_room_id, '') FROM matrix_rooms WHERE room_id = $1", 1);

static ngx_http_matrix_pg_stmt_t  ngx_http_matrix_txn_check_stmt =
    ngx_http_matrix_pg_stmt(
        "SELECT matrix_receive_check($1, $2, $3, $4, $5)", 5);

static ngx_http_matrix_pg_stmt_t  ngx_http_matrix_txn_append_stmt =
    ngx_http_matrix_pg_stmt(
        "SELECT matrix_append_received($1, $2, $3)", 3);


static ngx_int_t
ngx_http_matrix_txn(ngx_http_request_t *r, ngx_http_matrix_ctx_t *ctx)
{
    json_t                     *body, *pdus, *edus, *origin;
    ngx_int_t                   rc;
    ngx_str_t                   values[2];
    ngx_http_matrix_txn_t      *t;
    ngx_http_matrix_room_op_t  *op;

    body = ngx_http_matrix_request_json(r, &rc);
    if (body == NULL) {
        return rc;
    }

    origin = json_object_get(body, "origin");
    pdus = json_object_get(body, "pdus");
    edus = json_object_get(body, "edus");

    if (!json_is_string(origin) || !json_is_array(pdus)
        || (edus != NULL && !json_is_array(edus))
        || !json_is_integer(json_object_get(body, "origin_server_ts")))
    {
        return ngx_http_matrix_send_error(r, NGX_HTTP_BAD_REQUEST,
                                          "M_BAD_JSON", "A transaction has "
                                          "origin, origin_server_ts, pdus "
                                          "and maybe edus");
    }

    if (json_array_size(pdus) > NGX_HTTP_MATRIX_TXN_PDUS
        || json_array_size(edus) > NGX_HTTP_MATRIX_TXN_EDUS)
    {
        return ngx_http_matrix_send_error(r, NGX_HTTP_BAD_REQUEST,
                                          "M_BAD_JSON", "At most %d PDUs and "
                                          "%d EDUs in a transaction",
                                          NGX_HTTP_MATRIX_TXN_PDUS,
                                          NGX_HTTP_MATRIX_TXN_EDUS);
    }

    if (json_string_length(origin) != ctx->origin.len
        || ngx_strncmp(json_string_value(origin), ctx->origin.data,
                       ctx->origin.len) != 0)
    {
        return ngx_http_matrix_send_error(r, NGX_HTTP_BAD_REQUEST,
                                          "M_BAD_JSON", "The transaction's "
                                          "origin is not the server that "
                                          "sent it");
    }

    /* on their own: they neither wait for the PDUs nor can fail them */
    ngx_http_matrix_edu_receive(r, &ctx->origin, edus);

    t = ngx_pcalloc(r->pool, sizeof(ngx_http_matrix_txn_t));
    if (t == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    t->pdus = pdus;

    op = ngx_http_matrix_room_op(r, ctx);
    if (op == NULL) {
        return ngx_http_matrix_send_error(r, NGX_HTTP_NOT_FOUND,
                                          "M_NOT_FOUND",
                                          "Transactions need "
                                          "\"matrix_postgres\"");
    }

    op->data = t;
    ngx_str_set(&op->room_id, "");

    values[0] = ctx->origin;
    values[1] = ctx->params[0];

    rc = ngx_http_matrix_room_run(op, &ngx_http_matrix_txn_lookup_stmt,
                                  values, 2, ngx_http_matrix_txn_looked_up);
    if (rc != NGX_DONE) {
        return rc;
    }

    r->main->count++;
    op->counted = 1;

    return NGX_DONE;
}


static ngx_int_t
ngx_http_matrix_txn_looked_up(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op)
{
    json_t                 *response;
    ngx_http_matrix_txn_t  *t;

    t = op->data;

    if (PQntuples(op->q->result) == 1) {
        /* the same transaction again: the same answer, nothing done */

        response = ngx_http_matrix_room_json(op);
        if (response == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        return ngx_http_matrix_send_json_new(r, NGX_HTTP_OK, response);
    }

    t->results = json_object();

    if (t->results == NULL
        || ngx_http_matrix_keep_json(r->pool, t->results) != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_matrix_txn_next(r, op);
}


/* the next PDU: its room first */

static ngx_int_t
ngx_http_matrix_txn_next(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op)
{
    json_t                 *pdu, *room_id;
    ngx_str_t               id;
    ngx_http_matrix_txn_t  *t;

    t = op->data;

    for ( ;; ) {
        if (t->next == json_array_size(t->pdus)) {
            return ngx_http_matrix_txn_end(r, op);
        }

        pdu = json_array_get(t->pdus, t->next);
        room_id = json_object_get(pdu, "room_id");

        if (json_is_string(room_id)
            && json_string_length(room_id) <= MX_ID_MAX_LEN)
        {
            break;
        }

        /* without a room there is no room version, nor an event ID */

        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "matrix transaction from \"%V\": PDU %uz has no "
                      "room ID, ignored", &op->ctx->origin, t->next);
        ngx_http_matrix_txn_advance(t);
    }

    t->ev = NULL;
    t->head = NULL;
    t->redacted = 0;
    t->soft_failed = 0;

    /* the room of the PDU before, as transactions mostly are: known */

    if (op->version != NULL
        && json_string_length(room_id) == op->room_id.len
        && ngx_strncmp(json_string_value(room_id), op->room_id.data,
                       op->room_id.len) == 0)
    {
        return ngx_http_matrix_txn_room_ready(r, op);
    }

    id.len = json_string_length(room_id);
    id.data = ngx_pnalloc(r->pool, id.len + 1);
    if (id.data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_memcpy(id.data, json_string_value(room_id), id.len + 1);

    op->room_id = id;
    op->version = NULL;

    return ngx_http_matrix_room_run(op, &ngx_http_matrix_txn_room_stmt,
                                    &op->room_id, 1,
                                    ngx_http_matrix_txn_room);
}


static ngx_int_t
ngx_http_matrix_txn_room(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op)
{
    char                    id[MX_EVENT_ID_LEN + 1];
    json_t                 *pdu;
    PGresult               *res;
    mx_err_t                err;
    ngx_http_matrix_txn_t  *t;

    t = op->data;
    res = op->q->result;
    pdu = json_array_get(t->pdus, t->next);

    op->version = NULL;

    if (PQntuples(res) == 1 && PQgetvalue(res, 0, 2)[0] == 't') {
        op->version = mx_room_version_find(PQgetvalue(res, 0, 1),
                                           PQgetlength(res, 0, 1));
    }

    if (op->version == NULL || !op->version->supported) {
        /* named by the ID it would have in a room of the default version */

        if (mx_event_compute_id(pdu, mx_room_version_find("10", 2), id, &err)
            == MX_OK)
        {
            if (ngx_http_matrix_txn_result(op, id, "unknown room")
                != NGX_OK)
            {
                return NGX_HTTP_INTERNAL_SERVER_ERROR;
            }
        }

        ngx_http_matrix_txn_advance(t);
        return ngx_http_matrix_txn_next(r, op);
    }

    op->nid.len = PQgetlength(res, 0, 0);
    op->nid.data = ngx_pnalloc(r->pool, op->nid.len);
    op->silo_room_id.len = PQgetlength(res, 0, 3);
    op->silo_room_id.data = ngx_pnalloc(r->pool, op->silo_room_id.len + 1);

    if (op->nid.data == NULL || op->silo_room_id.data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_memcpy(op->nid.data, PQgetvalue(res, 0, 0), op->nid.len);
    ngx_cpystrn(op->silo_room_id.data, (u_char *) PQgetvalue(res, 0, 3),
                op->silo_room_id.len + 1);

    return ngx_http_matrix_txn_room_ready(r, op);
}


/* the PDU at hand, in a room of ours: parsed, then its signature */

static ngx_int_t
ngx_http_matrix_txn_room_ready(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op)
{
    char                    id[MX_EVENT_ID_LEN + 1];
    json_t                 *pdu;
    mx_err_t                err;
    const char             *error;
    ngx_http_matrix_txn_t  *t;

    t = op->data;
    pdu = json_array_get(t->pdus, t->next);

    error = ngx_http_matrix_txn_parse(op, pdu);

    if (error == NULL) {
        if (ngx_http_matrix_pdu_check(r->pool, r->connection->log, t->ev,
                                      ngx_http_matrix_txn_signed, op)
            == NULL)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        return NGX_DONE;
    }

    if (t->ev) {
        ngx_cpystrn((u_char *) id, (u_char *) t->ev->event_id, sizeof(id));

    } else if (mx_event_compute_id(pdu, op->version, id, &err) != MX_OK) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "matrix transaction from \"%V\": PDU %uz: %s, ignored",
                      &op->ctx->origin, t->next, error);
        ngx_http_matrix_txn_advance(t);
        return ngx_http_matrix_txn_next(r, op);
    }

    if (ngx_http_matrix_txn_result(op, id, error) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_http_matrix_txn_advance(t);

    return ngx_http_matrix_txn_next(r, op);
}


/*
 * What can be checked without keys or the room's state: the format for
 * the room's version, the room, the number of events named, the content
 * hash (wrong: the event is kept redacted).  NULL if all is well, else
 * the error; t->ev is set once the event parses.
 */

static const char *
ngx_http_matrix_txn_parse(ngx_http_matrix_room_op_t *op, json_t *pdu)
{
    int                     rc;
    char                   *error;
    json_t                 *redacted;
    mx_err_t                err;
    ngx_str_t               sender;
    mx_event_t             *ev;
    ngx_http_matrix_txn_t  *t;

    t = op->data;

    if (!json_is_object(json_object_get(pdu, "signatures"))) {
        return "not signed";
    }

    if (json_array_size(json_object_get(pdu, "prev_events"))
        > NGX_HTTP_MATRIX_PREV_MAX
        || json_array_size(json_object_get(pdu, "auth_events"))
           > NGX_HTTP_MATRIX_AUTH_MAX)
    {
        return "too many prev_events or auth_events";
    }

    rc = mx_event_check_content_hash(pdu, &err);

    if (rc == MX_EVENT_HASH_MISMATCH) {
        redacted = mx_event_redact(pdu, op->version, &err);
        if (redacted == NULL) {
            return "cannot be redacted";
        }

        rc = mx_event_from_json(redacted, op->version, &ev, &err);
        json_decref(redacted);
        t->redacted = 1;

    } else if (rc == MX_OK) {
        rc = mx_event_from_json(pdu, op->version, &ev, &err);

    } else {
        return "no content hash";
    }

    if (rc != MX_OK) {
        error = ngx_pnalloc(op->r->pool, sizeof("invalid event: ") - 1
                                         + ngx_strlen(err.msg) + 1);
        if (error == NULL) {
            return "invalid event";
        }

        ngx_sprintf((u_char *) error, "invalid event: %s%Z", err.msg);
        return error;
    }

    if (ngx_http_matrix_keep_event(op->pool, ev) != NGX_OK) {
        return "out of memory";
    }

    t->ev = ev;

    if (ev->room_id == NULL
        || ngx_strcmp(ev->room_id, op->room_id.data) != 0)
    {
        return "invalid event";
    }

    sender.data = (u_char *) ev->sender;
    sender.len = ngx_strlen(ev->sender);

    if (ngx_http_matrix_server_of(&sender, &t->server) != NGX_OK) {
        return "invalid sender";
    }

    return NULL;
}


static void
ngx_http_matrix_txn_signed(ngx_http_matrix_pdu_check_t *pc)
{
    ngx_int_t                   rc;
    ngx_http_matrix_txn_t      *t;
    ngx_http_matrix_room_op_t  *op;

    op = pc->data;
    t = op->data;

    if (pc->rc == NGX_OK) {
        rc = ngx_http_matrix_room_begin(op, ngx_http_matrix_txn_begun);

    } else {
        ngx_log_error(NGX_LOG_INFO, op->r->connection->log, 0,
                      "matrix transaction from \"%V\": event %s: %s",
                      &op->ctx->origin, t->ev->event_id, pc->why.msg);

        if (ngx_http_matrix_txn_result(op, t->ev->event_id,
                                       pc->rc == NGX_DECLINED
                                       ? "bad signature"
                                       : "the sender's keys cannot be had")
            != NGX_OK)
        {
            rc = NGX_HTTP_INTERNAL_SERVER_ERROR;

        } else {
            ngx_http_matrix_txn_advance(t);
            rc = ngx_http_matrix_txn_next(op->r, op);
        }
    }

    ngx_http_matrix_room_continue(op, rc);
}


/* under the room's lock: the head with the members the rules look at */

static ngx_int_t
ngx_http_matrix_txn_begun(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op)
{
    ngx_str_t               members[2];
    ngx_uint_t              n;
    ngx_http_matrix_txn_t  *t;

    t = op->data;

    members[0].data = (u_char *) t->ev->sender;
    members[0].len = ngx_strlen(t->ev->sender);
    n = 1;

    if (t->ev->state_key && ngx_strcmp(t->ev->type, "m.room.member") == 0
        && ngx_strcmp(t->ev->state_key, t->ev->sender) != 0)
    {
        members[1].data = (u_char *) t->ev->state_key;
        members[1].len = ngx_strlen(t->ev->state_key);
        n = 2;
    }

    return ngx_http_matrix_room_head(op, members, n, 1,
                                     ngx_http_matrix_txn_head);
}


static ngx_int_t
ngx_http_matrix_txn_head(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op)
{
    char                   *prev, *auth;
    ngx_int_t               rc;
    ngx_str_t               values[5];
    ngx_http_matrix_txn_t  *t;

    t = op->data;

    t->head = ngx_http_matrix_room_head_get(op);
    if (t->head == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    prev = json_dumps(t->ev->prev_events, JSON_COMPACT);
    auth = json_dumps(t->ev->auth_events, JSON_COMPACT);

    if (prev == NULL || auth == NULL) {
        free(prev);
        free(auth);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    values[0] = op->nid;
    values[1].data = (u_char *) t->ev->event_id;
    values[1].len = ngx_strlen(t->ev->event_id);
    values[2].data = (u_char *) prev;
    values[2].len = ngx_strlen(prev);
    values[3].data = (u_char *) auth;
    values[3].len = ngx_strlen(auth);
    values[4] = t->server;

    rc = ngx_http_matrix_room_run(op, &ngx_http_matrix_txn_check_stmt,
                                  values, 5, ngx_http_matrix_txn_checked);
    free(prev);
    free(auth);

    return rc;
}


static ngx_int_t
ngx_http_matrix_txn_checked(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op)
{
    char                   *text;
    json_t                 *check, *records;
    ngx_int_t               rc;
    mx_err_t                err;
    ngx_str_t               values[3];
    const char             *error;
    ngx_http_matrix_txn_t  *t;

    t = op->data;

    check = ngx_http_matrix_room_json(op);
    if (check == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (json_is_true(json_object_get(check, "known"))) {
        /* had already: the same answer as then, nothing to do */
        json_decref(check);
        return ngx_http_matrix_room_commit(op, ngx_http_matrix_txn_done);
    }

    /*
     * A gap before it: once per PDU (and a few times per transaction),
     * the lock let go and its server asked for what is missing
     * (get_missing_events); what comes is checked like the PDUs sent,
     * before this one is tried again.
     */

    if (json_integer_value(json_object_get(check, "missing")) != 0
        && !t->retrying && t->fetched == 0
        && t->gaps < NGX_HTTP_MATRIX_TXN_GAPS)
    {
        json_decref(check);
        t->gaps++;
        t->retrying = 1;

        return ngx_http_matrix_room_commit(op, ngx_http_matrix_txn_gap);
    }

    error = ngx_http_matrix_txn_auth(op, check);
    json_decref(check);

    if (error) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "matrix room \"%V\": event %s from \"%V\" refused: %s",
                      &op->room_id, t->ev->event_id, &op->ctx->origin, error);

        if (ngx_http_matrix_txn_result(op, t->ev->event_id, error) != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        return ngx_http_matrix_room_commit(op, ngx_http_matrix_txn_refused);
    }

    records = json_array();
    if (records == NULL
        || ngx_http_matrix_room_record(records, t->ev,
                                       ngx_http_matrix_txn_outbox(op), &err)
           != NGX_OK)
    {
        json_decref(records);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    text = json_dumps(json_array_get(records, 0), JSON_COMPACT);
    json_decref(records);

    if (text == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    values[0] = op->nid;
    values[1].data = (u_char *) text;
    values[1].len = ngx_strlen(text);

    if (t->soft_failed) {
        ngx_str_set(&values[2], "true");

    } else {
        ngx_str_set(&values[2], "false");
    }

    rc = ngx_http_matrix_room_run(op, &ngx_http_matrix_txn_append_stmt,
                                  values, 3, ngx_http_matrix_txn_appended);
    free(text);

    return rc;
}


/*
 * The checks that need the room: NULL to accept (t->soft_failed: by its
 * auth events only), else why it is refused.
 */

static const char *
ngx_http_matrix_txn_auth(ngx_http_matrix_room_op_t *op, json_t *check)
{
    size_t                  i, n;
    json_t                 *cited, *v;
    mx_err_t                err;
    mx_event_t             *events[NGX_HTTP_MATRIX_AUTH_MAX];
    const char             *error;
    ngx_http_matrix_txn_t  *t;

    t = op->data;

    if (json_integer_value(json_object_get(check, "missing")) != 0) {
        /* asked for already (or too many gaps): the sender backfills */
        return "missing prev events";
    }

    if (!json_is_true(json_object_get(check, "joined"))
        && !(t->ev->membership && ngx_strcmp(t->ev->membership, "join") == 0
             && t->ev->state_key
             && ngx_strcmp(t->ev->state_key, t->ev->sender) == 0))
    {
        return "the sender's server is not in the room";
    }

    if (t->head->server_acl
        && !ngx_http_matrix_room_acl_allows(op, t->head->server_acl->content))
    {
        return "denied by the room's server ACL";
    }

    cited = json_object_get(check, "cited");
    n = json_array_size(cited);

    if (n != json_array_size(t->ev->auth_events)
        || n > NGX_HTTP_MATRIX_AUTH_MAX)
    {
        return "rejected: it cites auth events the room does not have";
    }

    for (i = 0; i < n; i++) {
        v = json_array_get(cited, i);

        if (mx_event_parse(json_string_value(v), json_string_length(v),
                           op->version, &events[i], &err)
            != MX_OK)
        {
            return "rejected: its auth events cannot be read";
        }

        if (ngx_http_matrix_keep_event(op->pool, events[i]) != NGX_OK) {
            return "out of memory";
        }
    }

    if (mx_auth_check(t->ev, (const mx_event_t *const *) events, n, &err)
        != MX_OK)
    {
        error = ngx_pnalloc(op->r->pool, sizeof("rejected: ") - 1
                                         + ngx_strlen(err.msg) + 1);
        if (error == NULL) {
            return "rejected";
        }

        ngx_sprintf((u_char *) error, "rejected: %s%Z", err.msg);
        return error;
    }

    if (mx_auth_check(t->ev, (const mx_event_t *const *) t->head->state,
                      t->head->nstate, &err)
        != MX_OK)
    {
        ngx_log_error(NGX_LOG_INFO, op->r->connection->log, 0,
                      "matrix room \"%V\": event %s soft-failed: %s",
                      &op->room_id, t->ev->event_id, err.msg);
        t->soft_failed = 1;
    }

    return NULL;
}


/* the silo's write that the event owes, or NULL */

static const char *
ngx_http_matrix_txn_outbox(ngx_http_matrix_room_op_t *op)
{
    json_t                 *rel;
    ngx_str_t               user, server;
    const char             *msgtype, *rel_type;
    ngx_http_matrix_txn_t  *t;

    t = op->data;

    if (t->soft_failed || op->silo_room_id.len == 0) {
        return NULL;
    }

    /* a redacted event keeps no text to give, but a membership survives */

    if (t->redacted && ngx_strcmp(t->ev->type, "m.room.member") != 0) {
        return NULL;
    }

    if (ngx_strcmp(t->ev->type, "m.room.message") == 0) {
        rel = json_object_get(t->ev->content, "m.relates_to");
        rel_type = json_string_value(json_object_get(rel, "rel_type"));

        if (rel_type && ngx_strcmp(rel_type, "m.replace") == 0) {
            return "edit";
        }

        msgtype = mx_event_content_string(t->ev, "msgtype");

        if (msgtype && (ngx_strcmp(msgtype, "m.text") == 0
                        || ngx_strcmp(msgtype, "m.emote") == 0
                        || ngx_strcmp(msgtype, "m.notice") == 0))
        {
            return "message";
        }

        return NULL;
    }

    if (ngx_strcmp(t->ev->type, "m.room.redaction") == 0) {
        return "deletion";
    }

    if (ngx_strcmp(t->ev->type, "m.reaction") == 0) {
        return "reaction";
    }

    if (ngx_strcmp(t->ev->type, "m.room.member") == 0 && t->ev->membership
        && (ngx_strcmp(t->ev->membership, "join") == 0
            || ngx_strcmp(t->ev->membership, "leave") == 0))
    {
        /* other servers' users only: the silo's own are the silo's */

        user.data = (u_char *) t->ev->state_key;
        user.len = ngx_strlen(t->ev->state_key);

        if (ngx_http_matrix_server_of(&user, &server) == NGX_OK
            && (server.len != op->ctx->mscf->server_name.len
                || ngx_strncmp(server.data, op->ctx->mscf->server_name.data,
                               server.len) != 0))
        {
            return "membership";
        }
    }

    return NULL;
}


static ngx_int_t
ngx_http_matrix_txn_appended(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op)
{
    PGresult               *res;
    ngx_http_matrix_txn_t  *t;

    t = op->data;
    res = op->q->result;

    if (PQntuples(res) != 1) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (PQgetisnull(res, 0, 0)) {
        if (ngx_http_matrix_txn_result(op, t->ev->event_id,
                                       "its depth is out of line")
            != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        return ngx_http_matrix_room_commit(op, ngx_http_matrix_txn_refused);
    }

    if (!t->soft_failed) {
        t->accepted++;
    }

    return ngx_http_matrix_room_commit(op, ngx_http_matrix_txn_done);
}


static ngx_int_t
ngx_http_matrix_txn_refused(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op)
{
    ngx_http_matrix_txn_t  *t;

    t = op->data;
    ngx_http_matrix_txn_advance(t);

    return ngx_http_matrix_txn_next(r, op);
}


/* stored (or soft-failed, which the sender need not know) */

static ngx_int_t
ngx_http_matrix_txn_done(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op)
{
    ngx_http_matrix_txn_t  *t;

    t = op->data;

    if (ngx_http_matrix_txn_result(op, t->ev->event_id, NULL) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_http_matrix_txn_advance(t);

    return ngx_http_matrix_txn_next(r, op);
}


static ngx_int_t
ngx_http_matrix_txn_result(ngx_http_matrix_room_op_t *op,
    const char *event_id, const char *error)
{
    json_t                 *v;
    ngx_http_matrix_txn_t  *t;

    t = op->data;

    if (t->fetched) {
        /* an event of a gap: the sender did not send it, nor is answered */
        return NGX_OK;
    }

    v = error ? json_pack("{s:s}", "error", error) : json_object();

    if (v == NULL || json_object_set_new(t->results, event_id, v) != 0) {
        return NGX_ERROR;
    }

    return NGX_OK;
}


/* every PDU handled: the answer kept, then given */

static ngx_int_t
ngx_http_matrix_txn_end(ngx_http_request_t *r, ngx_http_matrix_room_op_t *op)
{
    char                   *text;
    json_t                 *response;
    ngx_int_t               rc;
    ngx_str_t               values[4];
    u_char                  now[NGX_INT64_LEN + 1];
    ngx_http_matrix_txn_t  *t;

    t = op->data;

    if (t->accepted) {
        /* the silo is told now, not at the next tick */
        ngx_http_matrix_silo_api_kick();
    }

    response = json_pack("{s:O}", "pdus", t->results);
    if (response == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    text = json_dumps(response, JSON_COMPACT);
    json_decref(response);

    if (text == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_str_set(&op->room_id, "");

    values[0] = op->ctx->origin;
    values[1] = op->ctx->params[0];
    values[2].data = (u_char *) text;
    values[2].len = ngx_strlen(text);
    values[3].data = now;
    values[3].len = ngx_sprintf(now, "%L", ngx_http_matrix_now_ms()) - now;

    rc = ngx_http_matrix_room_run(op, &ngx_http_matrix_txn_store_stmt,
                                  values, 4, ngx_http_matrix_txn_stored);
    free(text);

    return rc;
}


static ngx_int_t
ngx_http_matrix_txn_stored(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op)
{
    ngx_http_matrix_txn_t  *t;

    t = op->data;

    return ngx_http_matrix_send_json_new(r, NGX_HTTP_OK,
                                         json_pack("{s:O}", "pdus",
                                                   t->results));
}


/* on to the next PDU: one of a gap's, or past the one at hand */

static void
ngx_http_matrix_txn_advance(ngx_http_matrix_txn_t *t)
{
    if (t->fetched) {
        t->fetched--;

    } else {
        t->retrying = 0;
    }

    t->next++;
}


static ngx_int_t
ngx_http_matrix_txn_gap(ngx_http_request_t *r, ngx_http_matrix_room_op_t *op)
{
    ngx_http_matrix_dest_t  *d;

    d = ngx_http_matrix_dest_create((ngx_cycle_t *) ngx_cycle, r->pool,
                                    r->connection->log);
    if (d == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    d->server_name = op->ctx->origin;
    d->handler = ngx_http_matrix_txn_gap_resolved;
    d->data = op;

    if (ngx_http_matrix_dest_resolve(d) != NGX_OK) {
        /* no gap filled: the PDU is tried again, and refused */
        return ngx_http_matrix_txn_next(r, op);
    }

    return NGX_DONE;
}


/* POST get_missing_events: from our extremities to the PDU, at most 10 */

static void
ngx_http_matrix_txn_gap_resolved(ngx_http_matrix_dest_t *d)
{
    char                        *text;
    json_t                      *body;
    ngx_int_t                    rc;
    ngx_http_request_t          *r;
    ngx_http_matrix_txn_t       *t;
    ngx_http_matrix_room_op_t   *op;
    ngx_http_matrix_http_req_t  *hr;
    ngx_http_matrix_srv_conf_t  *mscf;
    u_char                      *p;

    op = d->data;
    r = op->r;
    t = op->data;
    mscf = op->ctx->mscf;

    if (d->status != NGX_OK) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "matrix transaction from \"%V\": a gap before %s "
                      "cannot be asked for: %V", &op->ctx->origin,
                      t->ev->event_id, &d->error);
        ngx_http_matrix_room_continue(op, ngx_http_matrix_txn_next(r, op));
        return;
    }

    body = json_pack("{s:O,s:[s],s:i,s:i}",
                     "earliest_events", t->head->prev_events,
                     "latest_events", t->ev->event_id,
                     "limit", NGX_HTTP_MATRIX_GAP_EVENTS,
                     "min_depth", 0);
    text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);

    hr = ngx_http_matrix_http_create((ngx_cycle_t *) ngx_cycle, r->pool,
                                     r->connection->log);

    if (text == NULL || hr == NULL) {
        free(text);
        ngx_http_matrix_room_continue(op, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    hr->body.len = ngx_strlen(text);
    hr->body.data = ngx_pnalloc(r->pool, hr->body.len);
    hr->uri.data = ngx_pnalloc(r->pool, sizeof("/_matrix/federation/v1/"
                                               "get_missing_events/") - 1
                                        + 3 * op->room_id.len);

    if (hr->body.data == NULL || hr->uri.data == NULL) {
        free(text);
        ngx_http_matrix_room_continue(op, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    ngx_memcpy(hr->body.data, text, hr->body.len);
    free(text);

    p = ngx_cpymem(hr->uri.data, "/_matrix/federation/v1/get_missing_events/",
                   sizeof("/_matrix/federation/v1/get_missing_events/") - 1);
    p = (u_char *) ngx_escape_uri(p, op->room_id.data, op->room_id.len,
                                  NGX_ESCAPE_URI_COMPONENT);
    hr->uri.len = p - hr->uri.data;

    hr->host = d->host;
    hr->port = d->port;
    hr->host_header = d->host_header;
    hr->tls_name = d->tls_name;
    ngx_str_set(&hr->method, "POST");
    hr->max_response = NGX_HTTP_MATRIX_GAP_MAX;
    hr->sign_key = mscf->signing_keys->elts;
    hr->origin = mscf->server_name;
    hr->destination = op->ctx->origin;
    hr->handler = ngx_http_matrix_txn_gap_answered;
    hr->data = op;

    if (ngx_http_matrix_http_send(hr) != NGX_OK) {
        rc = ngx_http_matrix_txn_next(r, op);
        ngx_http_matrix_room_continue(op, rc);
    }
}


static void
ngx_http_matrix_txn_gap_answered(ngx_http_matrix_http_req_t *hr)
{
    ngx_http_matrix_room_op_t  *op;

    op = hr->data;

    if (hr->status == 200) {
        ngx_http_matrix_txn_gap_fill(op, hr);

    } else {
        ngx_log_error(NGX_LOG_INFO, op->r->connection->log, 0,
                      "matrix transaction from \"%V\": get_missing_events "
                      "answered %ui %V", &op->ctx->origin, hr->status,
                      &hr->error);
    }

    ngx_http_matrix_room_continue(op, ngx_http_matrix_txn_next(op->r, op));
}


/*
 * The events of the gap, oldest first, put before the PDU at hand: each
 * is checked like a PDU that was sent (and, being the gap's, not
 * answered), then the PDU is tried again.
 */

static void
ngx_http_matrix_txn_gap_fill(ngx_http_matrix_room_op_t *op,
    ngx_http_matrix_http_req_t *hr)
{
    size_t                  i, j, n;
    json_t                 *answer, *events, *a, *b;
    mx_err_t                err;
    ngx_http_matrix_txn_t  *t;

    t = op->data;

    answer = mx_json_parse((char *) hr->response.data, hr->response.len, 0,
                           &err);
    events = json_object_get(answer, "events");
    n = json_array_size(events);

    if (n > NGX_HTTP_MATRIX_GAP_EVENTS) {
        n = NGX_HTTP_MATRIX_GAP_EVENTS;
    }

    /* by depth: a few events, an insertion sort */

    for (i = 1; i < n; i++) {
        for (j = i; j > 0; j--) {
            a = json_array_get(events, j - 1);
            b = json_array_get(events, j);

            if (json_integer_value(json_object_get(a, "depth"))
                <= json_integer_value(json_object_get(b, "depth")))
            {
                break;
            }

            json_incref(a);
            json_array_set(events, j - 1, b);
            json_array_set_new(events, j, a);
        }
    }

    for (i = 0, j = 0; i < n; i++) {
        a = json_array_get(events, i);

        /* of this room only: the gap is this room's */

        if (json_is_object(a)
            && json_is_string(json_object_get(a, "room_id"))
            && ngx_strcmp(json_string_value(json_object_get(a, "room_id")),
                          op->room_id.data) == 0
            && json_array_insert(t->pdus, t->next + j, a) == 0)
        {
            j++;
        }
    }

    t->fetched = j;

    ngx_log_error(NGX_LOG_INFO, op->r->connection->log, 0,
                  "matrix transaction from \"%V\": %uz events of a gap "
                  "before %s", &op->ctx->origin, j, t->ev->event_id);

    json_decref(answer);
}
