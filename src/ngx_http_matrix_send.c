/*
 * Transactions pushed to us (server-server-api.md: Transactions, PDUs,
 * Checks performed on receipt of a PDU, EDUs):
 *
 *   PUT /_matrix/federation/v1/send/{txnId}
 *       {"origin", "origin_server_ts", "pdus": [...], "edus": [...]}
 *
 * A transaction is answered once per (origin, txnId): its answer is kept
 * in received_transactions, and the same transaction again gets it back
 * with nothing done.  Its PDUs are handled room by room, each room's in
 * the order they came, each PDU on its own (one that fails never fails
 * the others), each answered in "pdus" by its event ID, {} or
 * {"error": "..."}:
 *
 *   - its room must be one of ours that has events ("unknown room");
 *   - the PDU must parse with the room's version; a content hash that
 *     is present but wrong makes it redacted, not refused;
 *   - the sender's server must have signed it (its keys fetched if
 *     need be): all the room's PDUs are checked so before its lock;
 *   - then, in one database transaction for the room's PDUs, under the
 *     room's lock, what the checks need read once (matrix_receive_batch),
 *     each PDU in turn, against the room as the PDUs before it left it:
 *     the sender's server must have a user joined (or this is a join),
 *     all its prev_events must be here (a gap is asked of the sending
 *     server once, get_missing_events, between two such transactions,
 *     and what comes checked first; else "missing prev events"), the
 *     room's server ACL must let the origin in, and the auth rules must
 *     allow it by the auth events it cites and by the state before it
 *     (that after its latest prev event, events being in nid order; else
 *     it is rejected), and by the room's current state (else it is
 *     soft-failed: stored, but not current state, not an extremity, not
 *     told to the silo);
 *   - the accepted ones appended by one statement, with the silo's
 *     writes queued (silo_outbox): messages (m.text, m.emote, m.notice),
 *     edits, redactions, and joins and leaves of other servers' users.
 *     A redacted event is not told to the silo.
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

/* the PDUs, and the events of gaps put before them */
#define NGX_HTTP_MATRIX_TXN_ITEMS                                             \
    (NGX_HTTP_MATRIX_TXN_PDUS                                                 \
     + NGX_HTTP_MATRIX_TXN_GAPS * NGX_HTTP_MATRIX_GAP_EVENTS)


typedef struct {
    json_t                         *pdu;
    mx_event_t                     *ev;
    ngx_str_t                       server;        /* the sender's */
    ngx_http_matrix_room_op_t      *op;
    unsigned                        is_signed:1;   /* may go to the room */
    unsigned                        done:1;        /* answered */
    unsigned                        redacted:1;
    unsigned                        soft_failed:1;
    unsigned                        accepted:1;
    unsigned                        fetched:1;     /* of a gap: not
                                                      answered */
    unsigned                        retrying:1;    /* its gap was asked */
} ngx_http_matrix_txn_pdu_t;


typedef struct {
    ngx_array_t                     items;         /* ngx_http_matrix_txn_
                                                      pdu_t, by room */
    ngx_uint_t                      next;          /* the first not done */
    ngx_uint_t                      end;           /* of the room's items */
    ngx_uint_t                      stop;          /* the room's batch ends
                                                      before: a gap */
    json_t                         *results;       /* event ID: {} or error */
    ngx_uint_t                      accepted;
    ngx_uint_t                      signing;       /* checks under way */
    ngx_int_t                       rc;            /* an error meanwhile */
    ngx_uint_t                      gaps;          /* asked so far */

    /* the room's batch, under its lock */
    ngx_http_matrix_room_head_t    *head;          /* its state as the
                                                      batch leaves it */
    ngx_http_matrix_room_head_t     initial;       /* as read */
    json_int_t                      newest;        /* the room's latest
                                                      event's nid, as read */
    ngx_uint_t                      last;          /* the item accepted
                                                      last, not soft-failed,
                                                      + 1; 0: none yet */
    json_t                         *members;       /* whose member events
                                                      were read */
    json_t                         *forks;         /* event ID: {"from",
                                                      "n"} of fork_events:
                                                      the state after it */
    ngx_array_t                    *fork_events;   /* mx_event_t * */
    json_t                         *extremities;   /* likewise */
    json_t                         *known;         /* event ID: stored */
    json_t                         *cited;         /* event ID: {"depth",
                                                      "e": cited[e] or
                                                      "i": items[i]} */
    json_t                         *joined;        /* server: users */
    json_t                         *refused;       /* event ID: true */
    ngx_array_t                    *cited_events;  /* mx_event_t * */
    json_t                         *records;       /* to append */
    ngx_uint_t                      appended[NGX_HTTP_MATRIX_TXN_ITEMS];
} ngx_http_matrix_txn_t;


static ngx_int_t ngx_http_matrix_txn(ngx_http_request_t *r,
    ngx_http_matrix_ctx_t *ctx);
static ngx_int_t ngx_http_matrix_txn_group(ngx_http_request_t *r,
    ngx_http_matrix_ctx_t *ctx, ngx_http_matrix_txn_t *t, json_t *pdus);
static ngx_int_t ngx_http_matrix_txn_looked_up(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op);
static ngx_int_t ngx_http_matrix_txn_next(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op);
static ngx_int_t ngx_http_matrix_txn_room(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op);
static ngx_int_t ngx_http_matrix_txn_room_ready(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op);
static const char *ngx_http_matrix_txn_parse(ngx_http_matrix_room_op_t *op,
    ngx_http_matrix_txn_pdu_t *item);
static void ngx_http_matrix_txn_signed(ngx_http_matrix_pdu_check_t *pc);
static ngx_int_t ngx_http_matrix_txn_all_signed(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op);
static ngx_int_t ngx_http_matrix_txn_begun(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op);
static ngx_int_t ngx_http_matrix_txn_read(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op);
static ngx_int_t ngx_http_matrix_txn_cited(ngx_http_matrix_room_op_t *op);
static ngx_int_t ngx_http_matrix_txn_forked(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op);
static ngx_int_t ngx_http_matrix_txn_batch(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op);
static ngx_int_t ngx_http_matrix_txn_before(ngx_http_matrix_room_op_t *op,
    ngx_http_matrix_txn_pdu_t *item, mx_event_t ***state, size_t *n,
    ngx_http_matrix_room_head_t *replay);
static ngx_int_t ngx_http_matrix_txn_check(ngx_http_matrix_room_op_t *op,
    ngx_uint_t i);
static const char *ngx_http_matrix_txn_auth(ngx_http_matrix_room_op_t *op,
    ngx_http_matrix_txn_pdu_t *item);
static ngx_int_t ngx_http_matrix_txn_accept(ngx_http_matrix_room_op_t *op,
    ngx_uint_t i);
static ngx_int_t ngx_http_matrix_txn_joined(ngx_http_matrix_txn_t *t,
    mx_event_t *ev);
static const char *ngx_http_matrix_txn_outbox(ngx_http_matrix_room_op_t *op,
    ngx_http_matrix_txn_pdu_t *item);
static ngx_int_t ngx_http_matrix_txn_appended(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op);
static ngx_int_t ngx_http_matrix_txn_committed(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op);
static ngx_int_t ngx_http_matrix_txn_result(ngx_http_matrix_room_op_t *op,
    ngx_http_matrix_txn_pdu_t *item, const char *event_id,
    const char *error);
static ngx_int_t ngx_http_matrix_txn_end(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op);
static ngx_int_t ngx_http_matrix_txn_stored(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op);
static ngx_int_t ngx_http_matrix_txn_gap(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op);
static void ngx_http_matrix_txn_gap_resolved(ngx_http_matrix_dest_t *d);
static void ngx_http_matrix_txn_gap_answered(ngx_http_matrix_http_req_t *hr);
static void ngx_http_matrix_txn_gap_fill(ngx_http_matrix_room_op_t *op,
    ngx_http_matrix_http_req_t *hr);
static ngx_uint_t ngx_http_matrix_txn_same_room(json_t *pdu,
    ngx_str_t *room_id);


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

static ngx_http_matrix_pg_stmt_t  ngx_http_matrix_txn_read_stmt =
    ngx_http_matrix_pg_stmt(
        "SELECT matrix_receive_batch($1, $2, $3, $4, $5, $6)", 6);

static ngx_http_matrix_pg_stmt_t  ngx_http_matrix_txn_forks_stmt =
    ngx_http_matrix_pg_stmt(
        "SELECT matrix_state_after($1, $2, $3)", 3);

static ngx_http_matrix_pg_stmt_t  ngx_http_matrix_txn_append_stmt =
    ngx_http_matrix_pg_stmt(
        "SELECT matrix_append_received_batch($1, $2)", 2);


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

    op = ngx_http_matrix_room_op(r, ctx);
    if (op == NULL) {
        return ngx_http_matrix_send_error(r, NGX_HTTP_NOT_FOUND,
                                          "M_NOT_FOUND",
                                          "Transactions need "
                                          "\"matrix_postgres\"");
    }

    if (ngx_http_matrix_txn_group(r, ctx, t, pdus) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
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


/*
 * The PDUs by room, the rooms in the order they first come, each room's
 * PDUs in the order they came: a room's are then checked and stored
 * together.
 */

static ngx_int_t
ngx_http_matrix_txn_group(ngx_http_request_t *r, ngx_http_matrix_ctx_t *ctx,
    ngx_http_matrix_txn_t *t, json_t *pdus)
{
    size_t                      i, j, n;
    json_t                     *pdu, *room_id;
    ngx_str_t                   id;
    u_char                      taken[NGX_HTTP_MATRIX_TXN_PDUS];
    ngx_http_matrix_txn_pdu_t  *item;

    if (ngx_array_init(&t->items, r->pool, NGX_HTTP_MATRIX_TXN_ITEMS,
                       sizeof(ngx_http_matrix_txn_pdu_t))
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    n = json_array_size(pdus);
    ngx_memzero(taken, sizeof(taken));

    for (i = 0; i < n; i++) {
        if (taken[i]) {
            continue;
        }

        room_id = json_object_get(json_array_get(pdus, i), "room_id");

        if (!json_is_string(room_id)
            || json_string_length(room_id) > MX_ID_MAX_LEN)
        {
            /* without a room there is no room version, nor an event ID */

            ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                          "matrix transaction from \"%V\": PDU %uz has no "
                          "room ID, ignored", &ctx->origin, i);
            continue;
        }

        id.data = (u_char *) json_string_value(room_id);
        id.len = json_string_length(room_id);

        for (j = i; j < n; j++) {
            pdu = json_array_get(pdus, j);

            if (taken[j] || !ngx_http_matrix_txn_same_room(pdu, &id)) {
                continue;
            }

            taken[j] = 1;

            item = ngx_array_push(&t->items);
            if (item == NULL) {
                return NGX_ERROR;
            }

            ngx_memzero(item, sizeof(ngx_http_matrix_txn_pdu_t));
            item->pdu = pdu;
        }
    }

    return NGX_OK;
}


static ngx_uint_t
ngx_http_matrix_txn_same_room(json_t *pdu, ngx_str_t *room_id)
{
    json_t  *v;

    v = json_object_get(pdu, "room_id");

    return json_is_string(v) && json_string_length(v) == room_id->len
           && ngx_strncmp(json_string_value(v), room_id->data,
                          room_id->len) == 0;
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


/* the next room's PDUs (or the rest of them, after a gap): the room first */

static ngx_int_t
ngx_http_matrix_txn_next(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op)
{
    json_t                     *room_id;
    ngx_str_t                   id;
    ngx_http_matrix_txn_t      *t;
    ngx_http_matrix_txn_pdu_t  *items;

    t = op->data;
    items = t->items.elts;

    if (t->next == t->items.nelts) {
        return ngx_http_matrix_txn_end(r, op);
    }

    room_id = json_object_get(items[t->next].pdu, "room_id");
    id.data = (u_char *) json_string_value(room_id);
    id.len = json_string_length(room_id);

    for (t->end = t->next + 1; t->end < t->items.nelts; t->end++) {
        if (!ngx_http_matrix_txn_same_room(items[t->end].pdu, &id)) {
            break;
        }
    }

    if (op->version != NULL && id.len == op->room_id.len
        && ngx_strncmp(id.data, op->room_id.data, id.len) == 0)
    {
        return ngx_http_matrix_txn_room_ready(r, op);
    }

    op->room_id.len = id.len;
    op->room_id.data = ngx_pnalloc(r->pool, id.len + 1);
    if (op->room_id.data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_memcpy(op->room_id.data, id.data, id.len + 1);
    op->version = NULL;

    return ngx_http_matrix_room_run(op, &ngx_http_matrix_txn_room_stmt,
                                    &op->room_id, 1,
                                    ngx_http_matrix_txn_room);
}


static ngx_int_t
ngx_http_matrix_txn_room(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op)
{
    char                        id[MX_EVENT_ID_LEN + 1];
    PGresult                   *res;
    mx_err_t                    err;
    ngx_http_matrix_txn_t      *t;
    ngx_http_matrix_txn_pdu_t  *items;

    t = op->data;
    items = t->items.elts;
    res = op->q->result;

    op->version = NULL;

    if (PQntuples(res) == 1 && PQgetvalue(res, 0, 2)[0] == 't') {
        op->version = mx_room_version_find(PQgetvalue(res, 0, 1),
                                           PQgetlength(res, 0, 1));
    }

    if (op->version == NULL || !op->version->supported) {
        op->version = NULL;

        /* named by the IDs they would have in a room of the default
           version */

        for ( /* void */ ; t->next < t->end; t->next++) {
            if (mx_event_compute_id(items[t->next].pdu,
                                    mx_room_version_find("10", 2), id, &err)
                == MX_OK
                && ngx_http_matrix_txn_result(op, &items[t->next], id,
                                              "unknown room")
                   != NGX_OK)
            {
                return NGX_HTTP_INTERNAL_SERVER_ERROR;
            }
        }

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


/*
 * The room's PDUs not yet looked at, in a room of ours: parsed, then
 * their signatures, all at once; the room is locked once they all are
 * checked, for none of them waits for keys under the lock.
 */

static ngx_int_t
ngx_http_matrix_txn_room_ready(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op)
{
    char                        id[MX_EVENT_ID_LEN + 1];
    mx_err_t                    err;
    ngx_uint_t                  i;
    const char                 *error;
    ngx_http_matrix_txn_t      *t;
    ngx_http_matrix_txn_pdu_t  *item;

    t = op->data;

    for (i = t->next; i < t->end; i++) {
        item = (ngx_http_matrix_txn_pdu_t *) t->items.elts + i;

        if (item->is_signed || item->done) {
            continue;
        }

        item->op = op;

        error = ngx_http_matrix_txn_parse(op, item);

        if (error == NULL) {
            if (ngx_http_matrix_pdu_check(r->pool, r->connection->log,
                                          item->ev,
                                          ngx_http_matrix_txn_signed, item)
                == NULL)
            {
                t->rc = NGX_HTTP_INTERNAL_SERVER_ERROR;
                break;
            }

            t->signing++;
            continue;
        }

        item->done = 1;

        if (item->ev) {
            ngx_cpystrn((u_char *) id, (u_char *) item->ev->event_id,
                        sizeof(id));

        } else if (mx_event_compute_id(item->pdu, op->version, id, &err)
                   != MX_OK)
        {
            ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                          "matrix transaction from \"%V\": a PDU of "
                          "\"%V\": %s, ignored", &op->ctx->origin,
                          &op->room_id, error);
            continue;
        }

        if (ngx_http_matrix_txn_result(op, item, id, error) != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    if (t->signing) {
        /* the last check to end goes on */
        return NGX_DONE;
    }

    if (t->rc) {
        return t->rc;
    }

    return ngx_http_matrix_txn_all_signed(r, op);
}


/*
 * What can be checked without keys or the room's state: the format for
 * the room's version, the room, the number of events named, the content
 * hash (wrong: the event is kept redacted).  NULL if all is well, else
 * the error; item->ev is set once the event parses.
 */

static const char *
ngx_http_matrix_txn_parse(ngx_http_matrix_room_op_t *op,
    ngx_http_matrix_txn_pdu_t *item)
{
    int          rc;
    char        *error;
    json_t      *pdu, *redacted;
    mx_err_t     err;
    ngx_str_t    sender;
    mx_event_t  *ev;

    pdu = item->pdu;

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
        item->redacted = 1;

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

    item->ev = ev;

    if (ev->room_id == NULL
        || ngx_strcmp(ev->room_id, op->room_id.data) != 0)
    {
        return "invalid event";
    }

    sender.data = (u_char *) ev->sender;
    sender.len = ngx_strlen(ev->sender);

    if (ngx_http_matrix_server_of(&sender, &item->server) != NGX_OK) {
        return "invalid sender";
    }

    return NULL;
}


static void
ngx_http_matrix_txn_signed(ngx_http_matrix_pdu_check_t *pc)
{
    ngx_int_t                   rc;
    ngx_http_matrix_txn_t      *t;
    ngx_http_matrix_txn_pdu_t  *item;
    ngx_http_matrix_room_op_t  *op;

    item = pc->data;
    op = item->op;
    t = op->data;

    t->signing--;

    if (pc->rc == NGX_OK) {
        item->is_signed = 1;

    } else {
        ngx_log_error(NGX_LOG_INFO, op->r->connection->log, 0,
                      "matrix transaction from \"%V\": event %s: %s",
                      &op->ctx->origin, item->ev->event_id, pc->why.msg);

        item->done = 1;

        if (ngx_http_matrix_txn_result(op, item, item->ev->event_id,
                                       pc->rc == NGX_DECLINED
                                       ? "bad signature"
                                       : "the sender's keys cannot be had")
            != NGX_OK)
        {
            t->rc = NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    if (t->signing) {
        return;
    }

    rc = t->rc ? t->rc : ngx_http_matrix_txn_all_signed(op->r, op);

    ngx_http_matrix_room_continue(op, rc);
}


/* the room's PDUs that passed, if any, to its lock */

static ngx_int_t
ngx_http_matrix_txn_all_signed(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op)
{
    ngx_uint_t                  i;
    ngx_http_matrix_txn_t      *t;
    ngx_http_matrix_txn_pdu_t  *items;

    t = op->data;
    items = t->items.elts;

    for (i = t->next; i < t->end; i++) {
        if (!items[i].done) {
            return ngx_http_matrix_room_begin(op, ngx_http_matrix_txn_begun);
        }
    }

    t->next = t->end;

    return ngx_http_matrix_txn_next(r, op);
}


/*
 * Under the room's lock, what the checks of its PDUs need, in one
 * statement: the head with the members they name, which of them are
 * stored already, the events they cite, the servers' users joined.
 */

static ngx_int_t
ngx_http_matrix_txn_begun(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op)
{
    char                       *text[5];
    json_t                     *a[5], *v;
    size_t                      k;
    ngx_int_t                   rc;
    ngx_str_t                   values[6], user, server;
    ngx_uint_t                  i, j;
    mx_event_t                 *ev;
    ngx_http_matrix_txn_t      *t;
    ngx_http_matrix_txn_pdu_t  *items;

    enum { MEMBERS, IDS, CITED, AUTH, SERVERS };

    t = op->data;
    items = t->items.elts;

    for (j = 0; j < 5; j++) {
        a[j] = json_array();
        text[j] = NULL;
    }

    for (i = t->next; i < t->end; i++) {
        if (items[i].done) {
            continue;
        }

        ev = items[i].ev;

        json_array_append_new(a[MEMBERS], json_string(ev->sender));
        json_array_append_new(a[IDS], json_string(ev->event_id));
        json_array_append_new(a[SERVERS],
                              json_stringn((char *) items[i].server.data,
                                           items[i].server.len));

        if (ev->state_key && ngx_strcmp(ev->type, "m.room.member") == 0) {
            json_array_append_new(a[MEMBERS], json_string(ev->state_key));

            user.data = (u_char *) ev->state_key;
            user.len = ngx_strlen(ev->state_key);

            if (ngx_http_matrix_server_of(&user, &server) == NGX_OK) {
                json_array_append_new(a[SERVERS],
                                      json_stringn((char *) server.data,
                                                   server.len));
            }
        }

        json_array_extend(a[CITED], ev->prev_events);
        json_array_extend(a[CITED], ev->auth_events);
        json_array_extend(a[AUTH], ev->auth_events);
    }

    /* the members asked about, asked again for the state at forks */

    rc = NGX_HTTP_INTERNAL_SERVER_ERROR;
    t->members = json_incref(a[MEMBERS]);

    if (t->members == NULL
        || ngx_http_matrix_keep_json(r->pool, t->members) != NGX_OK)
    {
        t->members = NULL;
        goto failed;
    }

    /* AUTH as an object, for jsonb's "?" */

    v = json_object();

    for (k = 0; k < json_array_size(a[AUTH]); k++) {
        json_object_set(v, json_string_value(json_array_get(a[AUTH], k)),
                        json_true());
    }

    json_decref(a[AUTH]);
    a[AUTH] = v;

    values[0] = op->nid;

    for (j = 0; j < 5; j++) {
        text[j] = a[j] ? json_dumps(a[j], JSON_COMPACT) : NULL;
        if (text[j] == NULL) {
            goto failed;
        }

        values[j + 1].data = (u_char *) text[j];
        values[j + 1].len = ngx_strlen(text[j]);
    }

    rc = ngx_http_matrix_room_run(op, &ngx_http_matrix_txn_read_stmt,
                                  values, 6, ngx_http_matrix_txn_read);

failed:

    for (j = 0; j < 5; j++) {
        json_decref(a[j]);
        free(text[j]);
    }

    return rc;
}


/* what the room has for the batch: then the state at its forks, if any */

static ngx_int_t
ngx_http_matrix_txn_read(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op)
{
    char                       *text[2];
    json_t                     *doc, *known, *forks, *latest, *p, *v;
    size_t                      k;
    ngx_int_t                   rc;
    ngx_str_t                   values[3];
    ngx_uint_t                  i;
    json_int_t                  nid;
    ngx_http_matrix_txn_t      *t;
    ngx_http_matrix_txn_pdu_t  *item;

    t = op->data;

    doc = ngx_http_matrix_room_json(op);
    if (doc == NULL || ngx_http_matrix_keep_json(r->pool, doc) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    t->head = ngx_http_matrix_room_head_parse(op, doc);
    t->extremities = json_object_get(doc, "prev");
    t->cited = json_object_get(doc, "cited");
    t->joined = json_object_get(doc, "joined");
    known = json_object_get(doc, "known");
    t->known = json_object();
    t->refused = json_object();
    t->records = json_array();

    if (t->head == NULL || !json_is_object(t->cited)
        || !json_is_object(t->joined) || t->known == NULL
        || ngx_http_matrix_keep_json(r->pool, t->known) != NGX_OK
        || t->refused == NULL
        || ngx_http_matrix_keep_json(r->pool, t->refused) != NGX_OK
        || t->records == NULL
        || ngx_http_matrix_keep_json(r->pool, t->records) != NGX_OK
        || ngx_http_matrix_txn_cited(op) != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    json_array_foreach(known, k, v) {
        if (json_object_set(t->known, json_string_value(v), json_true())
            != 0)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    t->initial = *t->head;
    t->newest = json_integer_value(json_object_get(doc, "newest"));
    t->last = 0;
    t->forks = NULL;

    /*
     * The PDUs that follow an older event of the room than its latest
     * (a fork): the state after it, for the state before them, read
     * first.
     */

    forks = json_array();
    if (forks == NULL || ngx_http_matrix_keep_json(r->pool, forks) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    for (i = t->next; i < t->end; i++) {
        item = (ngx_http_matrix_txn_pdu_t *) t->items.elts + i;

        if (item->done) {
            continue;
        }

        latest = NULL;
        nid = -1;

        json_array_foreach(item->ev->prev_events, k, p) {
            v = json_object_get(t->cited, json_string_value(p));

            if (v == NULL) {
                /* of this batch, or missing */
                latest = NULL;
                break;
            }

            if (json_integer_value(json_object_get(v, "nid")) > nid) {
                nid = json_integer_value(json_object_get(v, "nid"));
                latest = p;
            }
        }

        if (latest && nid != t->newest
            && json_array_append(forks, latest) != 0)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    if (json_array_size(forks) == 0) {
        return ngx_http_matrix_txn_batch(r, op);
    }

    text[0] = json_dumps(forks, JSON_COMPACT);
    text[1] = json_dumps(t->members, JSON_COMPACT);

    if (text[0] == NULL || text[1] == NULL) {
        free(text[0]);
        free(text[1]);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    values[0] = op->nid;
    values[1].data = (u_char *) text[0];
    values[1].len = ngx_strlen(text[0]);
    values[2].data = (u_char *) text[1];
    values[2].len = ngx_strlen(text[1]);

    rc = ngx_http_matrix_room_run(op, &ngx_http_matrix_txn_forks_stmt,
                                  values, 3, ngx_http_matrix_txn_forked);
    free(text[0]);
    free(text[1]);

    return rc;
}


/* the state after each fork point: parsed once, kept with the op */

static ngx_int_t
ngx_http_matrix_txn_forked(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op)
{
    json_t                 *doc, *pdus, *v;
    size_t                  k;
    mx_err_t                err;
    const char             *id;
    mx_event_t            **ev;
    ngx_http_matrix_txn_t  *t;

    t = op->data;

    doc = ngx_http_matrix_room_json(op);
    t->fork_events = ngx_array_create(op->pool, 16, sizeof(mx_event_t *));
    t->forks = json_object();

    if (doc == NULL || ngx_http_matrix_keep_json(r->pool, doc) != NGX_OK
        || t->fork_events == NULL || t->forks == NULL
        || ngx_http_matrix_keep_json(r->pool, t->forks) != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    json_object_foreach(doc, id, pdus) {
        if (json_object_set_new(t->forks, id,
                                json_pack("{s:I,s:I}", "from",
                                          (json_int_t) t->fork_events->nelts,
                                          "n", (json_int_t)
                                               json_array_size(pdus)))
            != 0)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        json_array_foreach(pdus, k, v) {
            ev = ngx_array_push(t->fork_events);

            if (ev == NULL
                || mx_event_parse(json_string_value(v),
                                  json_string_length(v), op->version, ev,
                                  &err)
                   != MX_OK
                || ngx_http_matrix_keep_event(op->pool, *ev) != NGX_OK)
            {
                ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                              "matrix room \"%V\": the state after %s "
                              "cannot be read", &op->room_id, id);
                return NGX_HTTP_INTERNAL_SERVER_ERROR;
            }
        }
    }

    return ngx_http_matrix_txn_batch(r, op);
}


/* each PDU checked in turn, the accepted ones appended at once */

static ngx_int_t
ngx_http_matrix_txn_batch(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op)
{
    ngx_int_t               rc;
    ngx_uint_t              i;
    ngx_http_matrix_txn_t  *t;

    t = op->data;
    t->stop = t->end;

    for (i = t->next; i < t->end; i++) {
        rc = ngx_http_matrix_txn_check(op, i);

        if (rc == NGX_AGAIN) {
            /* a gap before it: what is accepted so far committed first */
            t->stop = i;
            break;
        }

        if (rc != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    if (json_array_size(t->records) == 0) {
        return ngx_http_matrix_room_commit(op, ngx_http_matrix_txn_committed);
    }

    return ngx_http_matrix_room_run_json(op, &ngx_http_matrix_txn_append_stmt,
                                         t->records,
                                         ngx_http_matrix_txn_appended);
}


/* the auth events the room has, read once: "e" their index */

static ngx_int_t
ngx_http_matrix_txn_cited(ngx_http_matrix_room_op_t *op)
{
    json_t                 *v, *pdu;
    mx_err_t                err;
    const char             *id;
    mx_event_t            **ev;
    ngx_http_matrix_txn_t  *t;

    t = op->data;

    t->cited_events = ngx_array_create(op->pool, 8, sizeof(mx_event_t *));
    if (t->cited_events == NULL) {
        return NGX_ERROR;
    }

    json_object_foreach(t->cited, id, v) {
        pdu = json_object_get(v, "pdu");

        if (!json_is_string(pdu)) {
            continue;
        }

        ev = ngx_array_push(t->cited_events);
        if (ev == NULL) {
            return NGX_ERROR;
        }

        if (mx_event_parse(json_string_value(pdu), json_string_length(pdu),
                           op->version, ev, &err)
            != MX_OK)
        {
            /* not one that can authorise, then */
            ngx_log_error(NGX_LOG_WARN, op->log, 0,
                          "matrix room \"%V\": event %s cannot be read: %s",
                          &op->room_id, id, err.msg);
            t->cited_events->nelts--;
            continue;
        }

        if (ngx_http_matrix_keep_event(op->pool, *ev) != NGX_OK
            || json_object_set_new(v, "e",
                                   json_integer(t->cited_events->nelts - 1))
               != 0)
        {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


/*
 * One PDU of the batch, against the room as the ones before it left it:
 * NGX_OK with it answered (or, if accepted, to be answered once
 * appended), NGX_AGAIN for a gap to ask for first, NGX_ERROR.
 */

static ngx_int_t
ngx_http_matrix_txn_check(ngx_http_matrix_room_op_t *op, ngx_uint_t i)
{
    json_t                     *p;
    size_t                      k, missing, refused;
    mx_event_t                 *ev;
    const char                 *error;
    ngx_http_matrix_txn_t      *t;
    ngx_http_matrix_txn_pdu_t  *item;

    t = op->data;
    item = (ngx_http_matrix_txn_pdu_t *) t->items.elts + i;
    ev = item->ev;

    if (item->done) {
        return NGX_OK;
    }

    if (json_object_get(t->known, ev->event_id)) {
        /* had already: the same answer as then, nothing to do */
        item->done = 1;
        return ngx_http_matrix_txn_result(op, item, ev->event_id, NULL);
    }

    missing = 0;
    refused = 0;

    json_array_foreach(ev->prev_events, k, p) {
        if (json_object_get(t->cited, json_string_value(p)) == NULL) {
            missing++;
            refused += json_object_get(t->refused, json_string_value(p))
                       != NULL;
        }
    }

    /*
     * A gap before it: once per PDU (and a few times per transaction),
     * its server asked for what is missing (get_missing_events), the
     * batch cut there; what comes is checked like the PDUs sent, before
     * this one is tried again.  Not for an event refused here.
     */

    if (missing && !refused && !item->fetched && !item->retrying
        && t->gaps < NGX_HTTP_MATRIX_TXN_GAPS)
    {
        return NGX_AGAIN;
    }

    error = missing ? "missing prev events"
                    : ngx_http_matrix_txn_auth(op, item);

    if (error == NULL) {
        return ngx_http_matrix_txn_accept(op, i);
    }

    ngx_log_error(NGX_LOG_INFO, op->log, 0,
                  "matrix room \"%V\": event %s from \"%V\" refused: %s",
                  &op->room_id, ev->event_id, &op->ctx->origin, error);

    item->done = 1;

    if (json_object_set(t->refused, ev->event_id, json_true()) != 0) {
        return NGX_ERROR;
    }

    return ngx_http_matrix_txn_result(op, item, ev->event_id, error);
}


/*
 * The checks that need the room: NULL to accept (item->soft_failed: by
 * its auth events only), else why it is refused.
 */

static const char *
ngx_http_matrix_txn_auth(ngx_http_matrix_room_op_t *op,
    ngx_http_matrix_txn_pdu_t *item)
{
    size_t                        i, j, n, nstate;
    json_t                       *v, *e;
    int64_t                       deepest;
    mx_err_t                      err;
    mx_event_t                   *ev, *events[NGX_HTTP_MATRIX_AUTH_MAX];
    mx_event_t                  **state;
    const char                   *id, *error;
    ngx_http_matrix_txn_t        *t;
    ngx_http_matrix_txn_pdu_t    *items;
    ngx_http_matrix_room_head_t   replay;

    t = op->data;
    items = t->items.elts;
    ev = item->ev;

    if (json_integer_value(json_object_getn(t->joined,
                                            (char *) item->server.data,
                                            item->server.len))
        <= 0
        && !(ev->membership && ngx_strcmp(ev->membership, "join") == 0
             && ev->state_key && ngx_strcmp(ev->state_key, ev->sender) == 0))
    {
        return "the sender's server is not in the room";
    }

    if (t->head->server_acl
        && !ngx_http_matrix_room_acl_allows(op, t->head->server_acl->content))
    {
        return "denied by the room's server ACL";
    }

    /* its auth events: the room's that can authorise, or the batch's */

    n = json_array_size(ev->auth_events);

    for (i = 0; i < n; i++) {
        id = json_string_value(json_array_get(ev->auth_events, i));
        v = id ? json_object_get(t->cited, id) : NULL;
        events[i] = NULL;

        for (j = 0; j < i; j++) {
            if (ngx_strcmp(id, json_string_value(
                                   json_array_get(ev->auth_events, j)))
                == 0)
            {
                v = NULL;
            }
        }

        if ((e = json_object_get(v, "e")) != NULL) {
            events[i] = ((mx_event_t **) t->cited_events->elts)
                            [json_integer_value(e)];

        } else if ((e = json_object_get(v, "i")) != NULL
                   && !items[json_integer_value(e)].soft_failed)
        {
            events[i] = items[json_integer_value(e)].ev;
        }

        if (events[i] == NULL) {
            return "rejected: it cites auth events the room does not have";
        }
    }

    if (mx_auth_check(ev, (const mx_event_t *const *) events, n, &err)
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

    /* by the state before it (that after its latest prev event) */

    if (ngx_http_matrix_txn_before(op, item, &state, &nstate, &replay)
        != NGX_OK)
    {
        return "out of memory";
    }

    if (mx_auth_check(ev, (const mx_event_t *const *) state, nstate, &err)
        != MX_OK)
    {
        error = ngx_pnalloc(op->r->pool,
                            sizeof("rejected by the state before it: ") - 1
                            + ngx_strlen(err.msg) + 1);
        if (error == NULL) {
            return "rejected";
        }

        ngx_sprintf((u_char *) error, "rejected by the state before it: %s%Z",
                    err.msg);
        return error;
    }

    /* and by the room's current state */

    if (mx_auth_check(ev, (const mx_event_t *const *) t->head->state,
                      t->head->nstate, &err)
        != MX_OK)
    {
        ngx_log_error(NGX_LOG_INFO, op->log, 0,
                      "matrix room \"%V\": event %s soft-failed: %s",
                      &op->room_id, ev->event_id, err.msg);
        item->soft_failed = 1;
        return NULL;
    }

    /* as matrix_append_events() has it, which would refuse it */

    deepest = 0;

    for (i = 0; i < json_array_size(ev->prev_events); i++) {
        v = json_object_get(t->cited, json_string_value(
                                          json_array_get(ev->prev_events, i)));
        deepest = ngx_max(deepest,
                          json_integer_value(json_object_get(v, "depth")));
    }

    if (ev->depth > deepest + 1) {
        return "its depth is out of line";
    }

    return NULL;
}


/*
 * The state before a PDU: that after its latest prev event (events are
 * in nid order, the batch's after the room's): after the PDU of the batch
 * accepted last, the batch's state as it is; after an earlier one, the
 * state as read with the batch's state events up to it; after the room's
 * latest event, the state as read; after an older one (a fork), that
 * read for it (matrix_state_after).  Its prev events are all known here.
 */

static ngx_int_t
ngx_http_matrix_txn_before(ngx_http_matrix_room_op_t *op,
    ngx_http_matrix_txn_pdu_t *item, mx_event_t ***state, size_t *n,
    ngx_http_matrix_room_head_t *replay)
{
    size_t                      k;
    json_t                     *p, *v, *e, *fork;
    json_int_t                  batch, nid;
    const char                 *latest;
    ngx_uint_t                  i;
    ngx_http_matrix_txn_t      *t;
    ngx_http_matrix_txn_pdu_t  *items, *it;

    t = op->data;
    items = t->items.elts;

    batch = -1;
    nid = -1;
    latest = NULL;

    json_array_foreach(item->ev->prev_events, k, p) {
        v = json_object_get(t->cited, json_string_value(p));

        if ((e = json_object_get(v, "i")) != NULL) {
            batch = ngx_max(batch, json_integer_value(e));

        } else if (json_integer_value(json_object_get(v, "nid")) > nid) {
            nid = json_integer_value(json_object_get(v, "nid"));
            latest = json_string_value(p);
        }
    }

    if (batch >= 0 && (ngx_uint_t) batch + 1 == t->last) {
        *state = t->head->state;
        *n = t->head->nstate;
        return NGX_OK;
    }

    if (batch >= 0) {
        *replay = t->initial;

        for (i = t->next; i <= (ngx_uint_t) batch; i++) {
            it = &items[i];

            if (it->accepted && !it->soft_failed && it->ev->state_key
                && ngx_http_matrix_room_head_set(replay, it->ev) != NGX_OK)
            {
                return NGX_ERROR;
            }
        }

        *state = replay->state;
        *n = replay->nstate;
        return NGX_OK;
    }

    fork = (latest && nid != t->newest)
           ? json_object_get(t->forks, latest) : NULL;

    if (fork) {
        *state = (mx_event_t **) t->fork_events->elts
                 + json_integer_value(json_object_get(fork, "from"));
        *n = json_integer_value(json_object_get(fork, "n"));
        return NGX_OK;
    }

    *state = t->initial.state;
    *n = t->initial.nstate;

    return NGX_OK;
}


/*
 * Accepted: its record to append, and the room as it leaves it for the
 * PDUs after it: an event they may cite, and, unless soft-failed, the
 * state, the users joined and the extremities.
 */

static ngx_int_t
ngx_http_matrix_txn_accept(ngx_http_matrix_room_op_t *op, ngx_uint_t i)
{
    json_t                     *rec, *p;
    size_t                      k, j;
    mx_err_t                    err;
    mx_event_t                 *ev;
    ngx_http_matrix_txn_t      *t;
    ngx_http_matrix_txn_pdu_t  *item;

    t = op->data;
    item = (ngx_http_matrix_txn_pdu_t *) t->items.elts + i;
    ev = item->ev;

    if (ngx_http_matrix_room_record(t->records, ev,
                                    ngx_http_matrix_txn_outbox(op, item),
                                    &err)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    rec = json_array_get(t->records, json_array_size(t->records) - 1);

    if (json_object_set_new(rec, "soft_failed",
                            json_boolean(item->soft_failed)) != 0
        || json_object_set_new(t->cited, ev->event_id,
                               json_pack("{s:I,s:I}",
                                         "depth", (json_int_t) ev->depth,
                                         "i", (json_int_t) i))
           != 0
        || json_object_set(t->known, ev->event_id, json_true()) != 0)
    {
        return NGX_ERROR;
    }

    t->appended[json_array_size(t->records) - 1] = i;
    item->accepted = 1;

    if (item->soft_failed) {
        return NGX_OK;
    }

    t->last = i + 1;

    if (ev->state_key
        && (ngx_strcmp(ev->type, "m.room.member") == 0
            || ngx_strcmp(ev->type, "m.room.create") == 0
            || ngx_strcmp(ev->type, "m.room.power_levels") == 0
            || ngx_strcmp(ev->type, "m.room.join_rules") == 0
            || ngx_strcmp(ev->type, "m.room.server_acl") == 0
            || ngx_strcmp(ev->type, "m.room.history_visibility") == 0))
    {
        if (ngx_http_matrix_txn_joined(t, ev) != NGX_OK
            || ngx_http_matrix_room_head_set(t->head, ev) != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    /* it follows its prev events, which are no longer extremities */

    for (k = json_array_size(t->extremities); k > 0; k--) {
        json_array_foreach(ev->prev_events, j, p) {
            if (json_equal(p, json_array_get(t->extremities, k - 1))) {
                json_array_remove(t->extremities, k - 1);
                break;
            }
        }
    }

    if (json_array_append_new(t->extremities, json_string(ev->event_id))
        != 0)
    {
        return NGX_ERROR;
    }

    return NGX_OK;
}


/* the users of the member's server joined, as its member event leaves them */

static ngx_int_t
ngx_http_matrix_txn_joined(ngx_http_matrix_txn_t *t, mx_event_t *ev)
{
    json_int_t   n;
    ngx_str_t    user, server;
    ngx_uint_t   was, is;
    mx_event_t  *old;

    if (ngx_strcmp(ev->type, "m.room.member") != 0) {
        return NGX_OK;
    }

    user.data = (u_char *) ev->state_key;
    user.len = ngx_strlen(ev->state_key);

    if (ngx_http_matrix_server_of(&user, &server) != NGX_OK) {
        return NGX_OK;
    }

    old = ngx_http_matrix_room_head_member(t->head, &user);

    was = old && old->membership && ngx_strcmp(old->membership, "join") == 0;
    is = ev->membership && ngx_strcmp(ev->membership, "join") == 0;

    if (was == is) {
        return NGX_OK;
    }

    n = json_integer_value(json_object_getn(t->joined, (char *) server.data,
                                            server.len));
    n += is ? 1 : -1;

    if (json_object_setn_new(t->joined, (char *) server.data, server.len,
                             json_integer(n))
        != 0)
    {
        return NGX_ERROR;
    }

    return NGX_OK;
}


/* the silo's write that the event owes, or NULL */

static const char *
ngx_http_matrix_txn_outbox(ngx_http_matrix_room_op_t *op,
    ngx_http_matrix_txn_pdu_t *item)
{
    json_t      *rel;
    ngx_str_t    user, server;
    const char  *msgtype, *rel_type;

    if (item->soft_failed || op->silo_room_id.len == 0) {
        return NULL;
    }

    /* a redacted event keeps no text to give, but a membership survives */

    if (item->redacted && ngx_strcmp(item->ev->type, "m.room.member") != 0) {
        return NULL;
    }

    if (ngx_strcmp(item->ev->type, "m.room.message") == 0) {
        rel = json_object_get(item->ev->content, "m.relates_to");
        rel_type = json_string_value(json_object_get(rel, "rel_type"));

        if (rel_type && ngx_strcmp(rel_type, "m.replace") == 0) {
            return "edit";
        }

        msgtype = mx_event_content_string(item->ev, "msgtype");

        if (msgtype && (ngx_strcmp(msgtype, "m.text") == 0
                        || ngx_strcmp(msgtype, "m.emote") == 0
                        || ngx_strcmp(msgtype, "m.notice") == 0))
        {
            return "message";
        }

        return NULL;
    }

    if (ngx_strcmp(item->ev->type, "m.room.redaction") == 0) {
        return "deletion";
    }

    if (ngx_strcmp(item->ev->type, "m.reaction") == 0) {
        return "reaction";
    }

    if (ngx_strcmp(item->ev->type, "m.room.member") == 0 && item->ev->membership
        && (ngx_strcmp(item->ev->membership, "join") == 0
            || ngx_strcmp(item->ev->membership, "leave") == 0))
    {
        /* other servers' users only: the silo's own are the silo's */

        user.data = (u_char *) item->ev->state_key;
        user.len = ngx_strlen(item->ev->state_key);

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


/* the nids of the appended events: each answered now */

static ngx_int_t
ngx_http_matrix_txn_appended(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op)
{
    json_t                     *nids;
    size_t                      k;
    ngx_int_t                   rc;
    ngx_http_matrix_txn_t      *t;
    ngx_http_matrix_txn_pdu_t  *item;

    t = op->data;

    nids = ngx_http_matrix_room_json(op);

    if (json_array_size(nids) != json_array_size(t->records)) {
        json_decref(nids);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = NGX_OK;

    for (k = 0; k < json_array_size(nids) && rc == NGX_OK; k++) {
        item = (ngx_http_matrix_txn_pdu_t *) t->items.elts + t->appended[k];
        item->done = 1;

        if (json_is_null(json_array_get(nids, k))) {
            /* the checks let through what the schema refuses: logged */
            ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                          "matrix room \"%V\": event %s not appended",
                          &op->room_id, item->ev->event_id);
            rc = ngx_http_matrix_txn_result(op, item, item->ev->event_id,
                                            "its depth is out of line");
            continue;
        }

        if (!item->soft_failed) {
            t->accepted++;
        }

        /* stored (or soft-failed, which the sender need not know) */
        rc = ngx_http_matrix_txn_result(op, item, item->ev->event_id, NULL);
    }

    json_decref(nids);

    if (rc != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_matrix_room_commit(op, ngx_http_matrix_txn_committed);
}


/* the room's batch committed: on to what follows it, or its gap first */

static ngx_int_t
ngx_http_matrix_txn_committed(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op)
{
    ngx_http_matrix_txn_t      *t;
    ngx_http_matrix_txn_pdu_t  *item;

    t = op->data;
    t->next = t->stop;

    if (t->stop == t->end) {
        return ngx_http_matrix_txn_next(r, op);
    }

    item = (ngx_http_matrix_txn_pdu_t *) t->items.elts + t->stop;
    item->retrying = 1;
    t->gaps++;

    return ngx_http_matrix_txn_gap(r, op);
}


static ngx_int_t
ngx_http_matrix_txn_result(ngx_http_matrix_room_op_t *op,
    ngx_http_matrix_txn_pdu_t *item, const char *event_id, const char *error)
{
    json_t                 *v;
    ngx_http_matrix_txn_t  *t;

    t = op->data;

    if (item->fetched) {
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
    mx_event_t                  *ev;
    ngx_http_matrix_txn_t       *t;
    ngx_http_matrix_room_op_t   *op;
    ngx_http_matrix_http_req_t  *hr;
    ngx_http_matrix_srv_conf_t  *mscf;
    u_char                      *p;

    op = d->data;
    r = op->r;
    t = op->data;
    mscf = op->ctx->mscf;
    ev = ((ngx_http_matrix_txn_pdu_t *) t->items.elts)[t->next].ev;

    if (d->status != NGX_OK) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "matrix transaction from \"%V\": a gap before %s "
                      "cannot be asked for: %V", &op->ctx->origin,
                      ev->event_id, &d->error);
        ngx_http_matrix_room_continue(op, ngx_http_matrix_txn_next(r, op));
        return;
    }

    body = json_pack("{s:O,s:[s],s:i,s:i}",
                     "earliest_events", t->extremities,
                     "latest_events", ev->event_id,
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

    ngx_http_matrix_dest_target(d, hr);
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
    size_t                      i, j, n, nelts;
    json_t                     *answer, *events, *a, *b;
    mx_err_t                    err;
    ngx_http_matrix_txn_t      *t;
    ngx_http_matrix_txn_pdu_t  *items, *item;

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

    items = t->items.elts;
    nelts = t->items.nelts;

    for (i = 0, j = 0; i < n; i++) {
        a = json_array_get(events, i);

        /* of this room only: the gap is this room's */

        if (!json_is_object(a)
            || !json_is_string(json_object_get(a, "room_id"))
            || ngx_strcmp(json_string_value(json_object_get(a, "room_id")),
                          op->room_id.data) != 0
            || nelts + j == NGX_HTTP_MATRIX_TXN_ITEMS
            || ngx_http_matrix_keep_json(op->r->pool, json_incref(a))
               != NGX_OK
            || ngx_array_push(&t->items) == NULL)
        {
            continue;
        }

        item = &items[t->next + j];
        ngx_memmove(item + 1, item,
                    (nelts - t->next) * sizeof(ngx_http_matrix_txn_pdu_t));
        ngx_memzero(item, sizeof(ngx_http_matrix_txn_pdu_t));
        item->pdu = a;
        item->fetched = 1;

        j++;
    }

    ngx_log_error(NGX_LOG_INFO, op->r->connection->log, 0,
                  "matrix transaction from \"%V\": %uz events of a gap "
                  "before %s", &op->ctx->origin, j,
                  items[t->next + j].ev->event_id);

    json_decref(answer);
}
