/*
 * Transactions out (server-server-api.md, "Transactions"): the events
 * this server makes, delivered to every other server with a user joined
 * in their room, from the durable queue of sql/004_outbound.sql.
 *
 * Each worker looks every few seconds, at once when it has just made
 * events, and when another worker or node says it has
 * (NOTIFY matrix_federation_out).  A pass leases the destinations that
 * are due and owed something (matrix_federation_claim(): SKIP LOCKED,
 * then lease_until, so that no two senders, in any worker or node, ever
 * have one destination's transaction in flight), each with its next
 * transaction: at most 50 PDUs in order, the newest 50 of each room at
 * most (after an outage the receiver backfills the rest), and a txnId
 * made of the destination's cursor and the transaction's end, both kept
 * until it is answered, so that a retry is the same transaction.  The
 * destinations are sent to side by side: PUT
 * /_matrix/federation/v1/send/{txnId}, signed.  200 moves the cursor
 * past the transaction and ends any back-off; anything else (no answer
 * included) retries the same transaction after 5 s, doubling to 1 h.
 * The PDUs are rebuilt from the events' rows, as for backfill.
 */


#include "ngx_http_matrix_module.h"
#include "ngx_http_matrix_feed.h"
#include "ngx_http_matrix_room.h"
#include "ngx_http_matrix_pg.h"
#include "ngx_http_matrix_http.h"
#include "ngx_http_matrix_destination.h"


#define NGX_HTTP_MATRIX_SENDER_PERIOD     5000
#define NGX_HTTP_MATRIX_SENDER_DESTS      16       /* per pass */
#define NGX_HTTP_MATRIX_SENDER_PDUS       50       /* per transaction */
#define NGX_HTTP_MATRIX_SENDER_PER_ROOM   50
#define NGX_HTTP_MATRIX_SENDER_LEASE      300000
#define NGX_HTTP_MATRIX_SENDER_BACKOFF    5000
#define NGX_HTTP_MATRIX_SENDER_BACKOFF_MAX  3600000


typedef struct {
    ngx_event_t                     timer;
    ngx_log_t                      *log;
    ngx_pool_t                     *pool;          /* of the claim */
    ngx_http_matrix_pg_query_t     *q;
    ngx_http_matrix_srv_conf_t     *mscf;
    ngx_uint_t                      jobs;          /* destinations in
                                                      flight */
    ngx_uint_t                      limit;         /* of the claim */
    unsigned                        busy:1;        /* claiming */
    unsigned                        again:1;
} ngx_http_matrix_sender_t;


/* one destination's transaction */
typedef struct {
    ngx_http_matrix_sender_t       *s;
    ngx_pool_t                     *pool;
    ngx_http_matrix_pg_query_t     *q;
    ngx_str_t                       server;
    ngx_str_t                       txn_id;
    ngx_str_t                       upto;
    ngx_str_t                       nids;          /* "{1,2,3}" */
    ngx_str_t                       body;
    ngx_str_t                       why;
    ngx_uint_t                      npdus;
    u_char                          whybuf[200];
} ngx_http_matrix_sender_job_t;


static void ngx_http_matrix_sender_tick(ngx_event_t *ev);
static void ngx_http_matrix_sender_notify(void *data, const char *channel,
    const char *payload);
static void ngx_http_matrix_sender_claimed(ngx_http_matrix_pg_query_t *q);
static ngx_int_t ngx_http_matrix_sender_job(ngx_http_matrix_sender_t *s,
    PGresult *res, int row);
static void ngx_http_matrix_sender_parts(ngx_http_matrix_pg_query_t *q);
static void ngx_http_matrix_sender_resolved(ngx_http_matrix_dest_t *dest);
static void ngx_http_matrix_sender_answered(ngx_http_matrix_http_req_t *hr);
static void ngx_http_matrix_sender_settle(ngx_http_matrix_sender_job_t *j,
    ngx_uint_t sent);
static void ngx_http_matrix_sender_settled(ngx_http_matrix_pg_query_t *q);
static void ngx_http_matrix_sender_job_end(ngx_http_matrix_sender_job_t *j);
static void ngx_http_matrix_sender_pass_end(ngx_http_matrix_sender_t *s);


static ngx_http_matrix_pg_stmt_t  ngx_http_matrix_sender_claim =
    ngx_http_matrix_pg_stmt(
        "SELECT server_name, txn_id, upto, nids "
        "FROM matrix_federation_claim($1, $2, $3, $4, $5)", 5);

static ngx_http_matrix_pg_stmt_t  ngx_http_matrix_sender_parts_stmt =
    ngx_http_matrix_pg_stmt(
        "SELECT p.*, (SELECT r.room_version FROM matrix_rooms r "
        "WHERE r.room_id = p.room_id) "
        "FROM matrix_event_parts($1::bigint[]) p", 1);

static ngx_http_matrix_pg_stmt_t  ngx_http_matrix_sender_sent =
    ngx_http_matrix_pg_stmt("SELECT matrix_federation_sent($1, $2)", 2);

static ngx_http_matrix_pg_stmt_t  ngx_http_matrix_sender_failed =
    ngx_http_matrix_pg_stmt(
        "SELECT matrix_federation_failed($1, $2, $3, $4, $5, $6)", 6);


/* per worker */
static ngx_http_matrix_sender_t  *ngx_http_matrix_sender;


ngx_int_t
ngx_http_matrix_sender_init_process(ngx_cycle_t *cycle)
{
    ngx_http_matrix_sender_t     *s;
    ngx_http_matrix_srv_conf_t   *mscf;
    ngx_http_matrix_main_conf_t  *mmcf;

    mmcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_matrix_module);

    if (mmcf == NULL || mmcf->pg == NULL || !mmcf->federation
        || mmcf->http == NULL)
    {
        return NGX_OK;
    }

    mscf = ngx_http_matrix_background_srv_conf(cycle);
    if (mscf == NULL) {
        return NGX_OK;
    }

    s = ngx_pcalloc(cycle->pool, sizeof(ngx_http_matrix_sender_t));
    if (s == NULL) {
        return NGX_ERROR;
    }

    s->log = cycle->log;
    s->mscf = mscf;
    s->timer.handler = ngx_http_matrix_sender_tick;
    s->timer.data = s;
    s->timer.log = cycle->log;
    s->timer.cancelable = 1;

    if (ngx_http_matrix_pg_listen(mmcf->pg, "matrix_federation_out",
                                  ngx_http_matrix_sender_notify, s)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    ngx_add_timer(&s->timer, NGX_HTTP_MATRIX_SENDER_PERIOD);

    ngx_http_matrix_sender = s;

    return NGX_OK;
}


void
ngx_http_matrix_sender_kick(void)
{
    if (ngx_http_matrix_sender) {
        ngx_http_matrix_sender_notify(ngx_http_matrix_sender, NULL, NULL);
    }
}


static void
ngx_http_matrix_sender_notify(void *data, const char *channel,
    const char *payload)
{
    ngx_http_matrix_sender_t  *s = data;

    if (s->busy) {
        s->again = 1;
        return;
    }

    if (s->timer.timer_set) {
        ngx_del_timer(&s->timer);
    }

    ngx_add_timer(&s->timer, 1);
}


static void
ngx_http_matrix_sender_tick(ngx_event_t *ev)
{
    ngx_uint_t                 i;
    ngx_str_t                  values[5];
    u_char                     buf[5][NGX_INT64_LEN + 1];
    ngx_http_matrix_pg_t      *pg;
    ngx_http_matrix_sender_t  *s;
    int64_t                    v[5];

    s = ev->data;

    if (ngx_exiting || ngx_terminate || s->busy) {
        return;
    }

    if (s->jobs >= NGX_HTTP_MATRIX_SENDER_DESTS) {
        /* every slot sending: the next to end claims again */
        return;
    }

    pg = ngx_http_matrix_pg_of_cycle();
    if (pg == NULL) {
        ngx_add_timer(&s->timer, NGX_HTTP_MATRIX_SENDER_PERIOD);
        return;
    }

    s->pool = ngx_create_pool(4096, s->log);
    if (s->pool == NULL) {
        ngx_add_timer(&s->timer, NGX_HTTP_MATRIX_SENDER_PERIOD);
        return;
    }

    s->busy = 1;
    s->again = 0;

    s->q = ngx_http_matrix_pg_query_create(pg, s->pool, s->log);
    if (s->q == NULL) {
        ngx_http_matrix_sender_pass_end(s);
        return;
    }

    v[0] = ngx_http_matrix_now_ms();
    v[1] = NGX_HTTP_MATRIX_SENDER_LEASE;
    v[2] = NGX_HTTP_MATRIX_SENDER_DESTS - s->jobs;
    s->limit = v[2];
    v[3] = NGX_HTTP_MATRIX_SENDER_PER_ROOM;
    v[4] = NGX_HTTP_MATRIX_SENDER_PDUS;

    s->q->stmt = &ngx_http_matrix_sender_claim;
    s->q->nparams = 5;
    s->q->handler = ngx_http_matrix_sender_claimed;
    s->q->data = s;

    for (i = 0; i < 5; i++) {
        values[i].data = buf[i];
        values[i].len = ngx_sprintf(buf[i], "%L", v[i]) - buf[i];

        if (ngx_http_matrix_pg_param(s->q, i, &values[i]) != NGX_OK) {
            ngx_http_matrix_sender_pass_end(s);
            return;
        }
    }

    if (ngx_http_matrix_pg_run(s->q) != NGX_OK) {
        ngx_http_matrix_sender_pass_end(s);
    }
}


static void
ngx_http_matrix_sender_claimed(ngx_http_matrix_pg_query_t *q)
{
    int                        row, n;
    ngx_http_matrix_sender_t  *s;

    s = q->data;

    if (q->status != NGX_HTTP_MATRIX_PG_OK) {
        ngx_log_error(NGX_LOG_WARN, s->log, 0,
                      "matrix sender: cannot read the queue: %s%s%V",
                      ngx_http_matrix_pg_status_text(q->status),
                      q->error.len ? ": " : "", &q->error);
        ngx_http_matrix_sender_pass_end(s);
        return;
    }

    n = PQntuples(q->result);

    if ((ngx_uint_t) n == s->limit) {
        s->again = 1;
    }

    for (row = 0; row < n; row++) {
        s->jobs++;

        if (ngx_http_matrix_sender_job(s, q->result, row) != NGX_OK) {
            /* its lease ends by itself; the transaction is tried then */
            s->jobs--;
        }
    }

    ngx_http_matrix_sender_pass_end(s);
}


#define ngx_http_matrix_sender_copy(pool, dst, res, row, col)                 \
    (dst)->len = PQgetlength(res, row, col);                                  \
    (dst)->data = ngx_pnalloc(pool, (dst)->len + 1);                          \
    if ((dst)->data) {                                                        \
        ngx_cpystrn((dst)->data, (u_char *) PQgetvalue(res, row, col),        \
                    (dst)->len + 1);                                          \
    }


static ngx_int_t
ngx_http_matrix_sender_job(ngx_http_matrix_sender_t *s, PGresult *res,
    int row)
{
    ngx_pool_t                    *pool;
    ngx_http_matrix_pg_t          *pg;
    ngx_http_matrix_sender_job_t  *j;

    pg = ngx_http_matrix_pg_of_cycle();
    if (pg == NULL) {
        return NGX_ERROR;
    }

    pool = ngx_create_pool(4096, s->log);
    if (pool == NULL) {
        return NGX_ERROR;
    }

    j = ngx_pcalloc(pool, sizeof(ngx_http_matrix_sender_job_t));
    if (j == NULL) {
        ngx_destroy_pool(pool);
        return NGX_ERROR;
    }

    j->s = s;
    j->pool = pool;

    ngx_http_matrix_sender_copy(pool, &j->server, res, row, 0);
    ngx_http_matrix_sender_copy(pool, &j->txn_id, res, row, 1);
    ngx_http_matrix_sender_copy(pool, &j->upto, res, row, 2);
    ngx_http_matrix_sender_copy(pool, &j->nids, res, row, 3);

    j->q = ngx_http_matrix_pg_query_create(pg, pool, s->log);

    if (j->server.data == NULL || j->txn_id.data == NULL
        || j->upto.data == NULL || j->nids.data == NULL || j->q == NULL
        || ngx_http_matrix_pg_param(j->q, 0, &j->nids) != NGX_OK)
    {
        ngx_destroy_pool(pool);
        return NGX_ERROR;
    }

    j->q->stmt = &ngx_http_matrix_sender_parts_stmt;
    j->q->nparams = 1;
    j->q->handler = ngx_http_matrix_sender_parts;
    j->q->data = j;

    if (ngx_http_matrix_pg_run(j->q) != NGX_OK) {
        ngx_destroy_pool(pool);
        return NGX_ERROR;
    }

    return NGX_OK;
}


/* the PDUs, as they are served (a row that cannot be: left out, logged) */

static void
ngx_http_matrix_sender_parts(ngx_http_matrix_pg_query_t *q)
{
    int                            row, n;
    char                          *text;
    json_t                        *pdus, *pdu, *txn, *redacted;
    mx_err_t                       err;
    PGresult                      *res;
    ngx_http_matrix_dest_t        *dest;
    const mx_room_version_t       *version;
    ngx_http_matrix_sender_job_t  *j;

    j = q->data;

    if (q->status != NGX_HTTP_MATRIX_PG_OK) {
        ngx_str_set(&j->why, "cannot read the events");
        ngx_http_matrix_sender_settle(j, 0);
        return;
    }

    res = q->result;
    n = PQntuples(res);

    pdus = json_array();
    if (pdus == NULL) {
        ngx_http_matrix_sender_job_end(j);
        return;
    }

    /* columns of matrix_event_parts(), then the room version */

    for (row = 0; row < n; row++) {
        version = mx_room_version_find(PQgetvalue(res, row, 21),
                                       PQgetlength(res, row, 21));

        if (!PQgetisnull(res, row, 2)) {
            pdu = mx_json_parse(PQgetvalue(res, row, 2),
                                PQgetlength(res, row, 2), 0, &err);

            /* kept whole, redacted since: sent as redaction left it */

            if (pdu != NULL && version != NULL
                && PQgetvalue(res, row, 20)[0] == 't')
            {
                redacted = mx_event_redact(pdu, version, &err);
                json_decref(pdu);
                pdu = redacted;
            }

        } else if (version != NULL) {
            pdu = ngx_http_matrix_event_rebuild(res, row,
                                         (char *) j->s->mscf->server_name.data,
                                         version);

        } else {
            pdu = NULL;
        }

        if (pdu == NULL) {
            ngx_log_error(NGX_LOG_ERR, j->s->log, 0,
                          "matrix sender: event \"%s\" cannot be served, "
                          "left out of transaction %V to %V",
                          PQgetvalue(res, row, 1), &j->txn_id, &j->server);
            continue;
        }

        json_array_append_new(pdus, pdu);
    }

    j->npdus = json_array_size(pdus);

    txn = json_pack("{s:s,s:I,s:o,s:[]}",
                    "origin", (char *) j->s->mscf->server_name.data,
                    "origin_server_ts", (json_int_t) ngx_http_matrix_now_ms(),
                    "pdus", pdus, "edus");

    text = txn ? json_dumps(txn, JSON_COMPACT) : NULL;
    json_decref(txn);

    if (text == NULL) {
        ngx_http_matrix_sender_job_end(j);
        return;
    }

    j->body.len = ngx_strlen(text);
    j->body.data = ngx_pnalloc(j->pool, j->body.len);

    if (j->body.data == NULL) {
        free(text);
        ngx_http_matrix_sender_job_end(j);
        return;
    }

    ngx_memcpy(j->body.data, text, j->body.len);
    free(text);

    dest = ngx_http_matrix_dest_create((ngx_cycle_t *) ngx_cycle, j->pool,
                                       j->s->log);
    if (dest == NULL) {
        ngx_http_matrix_sender_job_end(j);
        return;
    }

    dest->server_name = j->server;
    dest->handler = ngx_http_matrix_sender_resolved;
    dest->data = j;

    if (ngx_http_matrix_dest_resolve(dest) != NGX_OK) {
        ngx_str_set(&j->why, "cannot look the server up");
        ngx_http_matrix_sender_settle(j, 0);
    }
}


static void
ngx_http_matrix_sender_resolved(ngx_http_matrix_dest_t *dest)
{
    u_char                        *p;
    ngx_http_matrix_http_req_t    *hr;
    ngx_http_matrix_sender_job_t  *j;

    j = dest->data;

    if (dest->status != NGX_OK) {
        j->why.data = j->whybuf;
        j->why.len = ngx_snprintf(j->whybuf, sizeof(j->whybuf), "%V",
                                  &dest->error) - j->whybuf;
        ngx_http_matrix_sender_settle(j, 0);
        return;
    }

    hr = ngx_http_matrix_http_create((ngx_cycle_t *) ngx_cycle, j->pool,
                                     j->s->log);
    if (hr == NULL) {
        ngx_http_matrix_sender_job_end(j);
        return;
    }

    hr->uri.data = ngx_pnalloc(j->pool,
                               sizeof("/_matrix/federation/v1/send/") - 1
                               + 3 * j->txn_id.len);
    if (hr->uri.data == NULL) {
        ngx_http_matrix_sender_job_end(j);
        return;
    }

    p = ngx_cpymem(hr->uri.data, "/_matrix/federation/v1/send/",
                   sizeof("/_matrix/federation/v1/send/") - 1);
    p = (u_char *) ngx_escape_uri(p, j->txn_id.data, j->txn_id.len,
                                  NGX_ESCAPE_ARGS);
    hr->uri.len = p - hr->uri.data;

    hr->host = dest->host;
    hr->port = dest->port;
    hr->host_header = dest->host_header;
    hr->tls_name = dest->tls_name;
    ngx_str_set(&hr->method, "PUT");
    hr->sign_key = j->s->mscf->signing_keys->elts;
    hr->origin = j->s->mscf->server_name;
    hr->destination = j->server;
    hr->body = j->body;
    hr->handler = ngx_http_matrix_sender_answered;
    hr->data = j;

    if (ngx_http_matrix_http_send(hr) != NGX_OK) {
        ngx_str_set(&j->why, "cannot send the request");
        ngx_http_matrix_sender_settle(j, 0);
    }
}


static void
ngx_http_matrix_sender_answered(ngx_http_matrix_http_req_t *hr)
{
    ngx_http_matrix_sender_job_t  *j;

    j = hr->data;

    if (hr->status == NGX_HTTP_OK) {
        ngx_log_error(NGX_LOG_INFO, j->s->log, 0,
                      "matrix sender: transaction %V to %V: %ui PDUs sent",
                      &j->txn_id, &j->server, j->npdus);
        ngx_http_matrix_sender_settle(j, 1);
        return;
    }

    j->why.data = j->whybuf;
    j->why.len = hr->status
                 ? (size_t) (ngx_snprintf(j->whybuf, sizeof(j->whybuf),
                                          "answered %ui", hr->status)
                             - j->whybuf)
                 : (size_t) (ngx_snprintf(j->whybuf, sizeof(j->whybuf), "%V",
                                          &hr->error)
                             - j->whybuf);

    ngx_http_matrix_sender_settle(j, 0);
}


static void
ngx_http_matrix_sender_settle(ngx_http_matrix_sender_job_t *j,
    ngx_uint_t sent)
{
    ngx_uint_t                   i;
    ngx_str_t                    values[6];
    u_char                       buf[3][NGX_INT64_LEN + 1];
    ngx_http_matrix_pg_query_t  *q;

    q = j->q;
    q->handler = ngx_http_matrix_sender_settled;
    q->data = j;

    values[0] = j->server;
    values[1] = j->upto;

    if (sent) {
        q->stmt = &ngx_http_matrix_sender_sent;
        q->nparams = 2;

    } else {
        ngx_log_error(NGX_LOG_WARN, j->s->log, 0,
                      "matrix sender: transaction %V to %V not delivered, "
                      "will retry: %V", &j->txn_id, &j->server, &j->why);

        values[2].data = buf[0];
        values[2].len = ngx_sprintf(buf[0], "%L", ngx_http_matrix_now_ms())
                        - buf[0];
        values[3].data = buf[1];
        values[3].len = ngx_sprintf(buf[1], "%d",
                                    NGX_HTTP_MATRIX_SENDER_BACKOFF) - buf[1];
        values[4].data = buf[2];
        values[4].len = ngx_sprintf(buf[2], "%d",
                                    NGX_HTTP_MATRIX_SENDER_BACKOFF_MAX)
                        - buf[2];
        values[5] = j->why;

        q->stmt = &ngx_http_matrix_sender_failed;
        q->nparams = 6;
    }

    for (i = 0; i < (ngx_uint_t) q->nparams; i++) {
        if (ngx_http_matrix_pg_param(q, i, &values[i]) != NGX_OK) {
            ngx_http_matrix_sender_job_end(j);
            return;
        }
    }

    if (ngx_http_matrix_pg_run(q) != NGX_OK) {
        ngx_http_matrix_sender_job_end(j);
    }
}


static void
ngx_http_matrix_sender_settled(ngx_http_matrix_pg_query_t *q)
{
    ngx_http_matrix_sender_job_t  *j;

    j = q->data;

    if (q->status != NGX_HTTP_MATRIX_PG_OK) {
        /* the lease ends by itself; the same transaction then */
        ngx_log_error(NGX_LOG_WARN, j->s->log, 0,
                      "matrix sender: transaction %V to %V: %s%s%V",
                      &j->txn_id, &j->server,
                      ngx_http_matrix_pg_status_text(q->status),
                      q->error.len ? ": " : "", &q->error);
    }

    ngx_http_matrix_sender_job_end(j);
}


static void
ngx_http_matrix_sender_job_end(ngx_http_matrix_sender_job_t *j)
{
    ngx_http_matrix_sender_t  *s;

    s = j->s;

    /* last: we may be in a call of one of its objects */
    ngx_destroy_pool(j->pool);

    s->jobs--;

    /*
     * A slot is free: a destination due meanwhile is claimed now, not
     * after the slowest of the others (a dead server holds one slot for
     * its timeout, never the rest).
     */

    if (!s->busy && !ngx_exiting && !ngx_terminate) {
        if (s->timer.timer_set) {
            ngx_del_timer(&s->timer);
        }

        ngx_add_timer(&s->timer, 1);
    }
}


static void
ngx_http_matrix_sender_pass_end(ngx_http_matrix_sender_t *s)
{
    ngx_pool_t  *pool;

    pool = s->pool;
    s->pool = NULL;
    s->q = NULL;
    s->busy = 0;

    if (!ngx_exiting && !ngx_terminate) {
        if (s->timer.timer_set) {
            ngx_del_timer(&s->timer);
        }

        ngx_add_timer(&s->timer,
                      s->again ? 1 : NGX_HTTP_MATRIX_SENDER_PERIOD);
    }

    if (pool) {
        ngx_destroy_pool(pool);
    }
}
