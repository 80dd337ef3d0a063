/*
 * Transactions out (server-server-api.md, "Transactions"): the events
 * this server makes, delivered to every other server with a user joined
 * in their room, from the queue of sql/004_outbound.sql and
 * sql/005_fanout.sql.
 *
 * One worker of the whole cluster sends: the one holding the session
 * advisory lock (28025, 2) on a connection it leases for as long as it
 * can (the others try again every few seconds; a worker killed, a
 * reload or a Postgres restart ends the session, so the lock, and
 * another worker takes over from what is persisted).  That owner keeps
 * each destination's state in memory: its cursor (the last outbox seq
 * it has acknowledged), its transaction in flight or to retry (txnId
 * unique to the owner's epoch, kept with its events until answered),
 * its failures and retry time.  So sending a message to a thousand
 * servers writes nothing per server: the owner reads who is owed the
 * new outbox rows (the rooms' joined servers), then their transactions
 * (at most 50 PDUs in order, the newest 50 of each room at most: after
 * an outage the receiver backfills the rest), and sends them side by
 * side: PUT /_matrix/federation/v1/send/{txnId}, signed.  What is
 * persisted, lazily: a floor every destination without a row is past
 * (at most once a second), and a row for a destination only when a
 * transaction to it fails (bounded by its back-off: 5 s doubling to
 * 1 h) and when it answers again.  A new owner resends from the floor;
 * receivers drop PDUs they already have by event ID.  One failing for
 * a day is given up on: it no longer holds the outbox, and is sent its
 * rooms' latest events when it answers.  A request from a server in
 * back-off ends the back-off (ngx_http_matrix_sender_heard(): NOTIFY
 * matrix_federation_back, for whichever worker owns it).
 * The PDUs are rebuilt from the events' rows, as for backfill.
 */


#include "ngx_http_matrix_module.h"
#include "ngx_http_matrix_feed.h"
#include "ngx_http_matrix_room.h"
#include "ngx_http_matrix_pg.h"
#include "ngx_http_matrix_http.h"
#include "ngx_http_matrix_destination.h"


#define NGX_HTTP_MATRIX_SENDER_PERIOD     5000
#define NGX_HTTP_MATRIX_SENDER_STANDBY    3000     /* tries for the lock */
#define NGX_HTTP_MATRIX_SENDER_DESTS      32       /* in flight */
#define NGX_HTTP_MATRIX_SENDER_PDUS       50       /* per transaction */
#define NGX_HTTP_MATRIX_SENDER_EDUS       100
#define NGX_HTTP_MATRIX_SENDER_PER_ROOM   50
#define NGX_HTTP_MATRIX_SENDER_SCAN       1000     /* outbox rows a pass */
#define NGX_HTTP_MATRIX_SENDER_FLOOR      1000     /* ms between writes */
#define NGX_HTTP_MATRIX_SENDER_REREAD     10000    /* ms: the rows again */
#define NGX_HTTP_MATRIX_SENDER_BACKOFF    5000
#define NGX_HTTP_MATRIX_SENDER_BACKOFF_MAX  3600000
#define NGX_HTTP_MATRIX_SENDER_GIVE_UP    86400000
#define NGX_HTTP_MATRIX_SENDER_HEARD      5000     /* ms per server */
#define NGX_HTTP_MATRIX_SENDER_HEARD_SLOTS  1024


typedef enum {
    NGX_HTTP_MATRIX_SENDER_IDLE = 0,
    NGX_HTTP_MATRIX_SENDER_ACQUIRE,
    NGX_HTTP_MATRIX_SENDER_LOCK,
    NGX_HTTP_MATRIX_SENDER_START,
    NGX_HTTP_MATRIX_SENDER_SCANNING,
    NGX_HTTP_MATRIX_SENDER_TXNS,
    NGX_HTTP_MATRIX_SENDER_ROWS,
    NGX_HTTP_MATRIX_SENDER_FLOORING,
    NGX_HTTP_MATRIX_SENDER_UNLOCK
} ngx_http_matrix_sender_step_e;


typedef struct ngx_http_matrix_sender_job_s  ngx_http_matrix_sender_job_t;


/* a destination, as its owner knows it */
typedef struct {
    ngx_str_node_t                  sn;            /* by server name */
    ngx_queue_t                     queue;
    int64_t                         cursor;
    int64_t                         retry_at;      /* ms */
    ngx_uint_t                      failures;
    ngx_http_matrix_sender_job_t   *job;

    /* the transaction to send (txn_id.len: there is one) */
    ngx_str_t                       txn_id;
    u_char                          txn_buf[NGX_INT64_LEN * 2 + 2];
    int64_t                         upto;
    ngx_str_t                       nids;          /* "{1,2,3}", ngx_alloc */
    json_t                         *txn_edus;

    json_t                         *edus;          /* for the next one */

    unsigned                        owed:1;        /* may have events */
    unsigned                        row:1;         /* it has a row */
    unsigned                        retiring:1;    /* the row, going */
    unsigned                        given_up:1;
} ngx_http_matrix_sender_dest_t;


typedef struct {
    ngx_event_t                     timer;
    ngx_log_t                      *log;
    ngx_http_matrix_srv_conf_t     *mscf;

    /* the owner's epoch: the lease holding the lock, and the state */
    ngx_pool_t                     *pool;
    ngx_http_matrix_pg_query_t     *lq;

    /* a pass */
    ngx_pool_t                     *ppool;
    ngx_http_matrix_pg_query_t     *pq;
    ngx_rbtree_t                    tree;
    ngx_rbtree_node_t               sentinel;
    ngx_queue_t                     dests;
    ngx_queue_t                     jobs;
    ngx_uint_t                      njobs;
    int64_t                         hwm;           /* outbox scanned to */
    int64_t                         floor;         /* persisted */
    int64_t                         floor_new;
    int64_t                         txns_upto;
    ngx_msec_t                      floor_at;
    ngx_msec_t                      rows_at;
    int64_t                         epoch;
    ngx_uint_t                      ntxn;
    ngx_uint_t                      nbatch;
    ngx_http_matrix_sender_dest_t  *batch[NGX_HTTP_MATRIX_SENDER_DESTS];

    ngx_http_matrix_sender_step_e   step;
    unsigned                        owner:1;
    unsigned                        busy:1;        /* a pass */
    unsigned                        again:1;
    unsigned                        floor_due:1;
    unsigned                        resigning:1;
} ngx_http_matrix_sender_t;


/* one destination's transaction */
struct ngx_http_matrix_sender_job_s {
    ngx_http_matrix_sender_t       *s;
    ngx_http_matrix_sender_dest_t  *d;
    ngx_queue_t                     queue;
    ngx_pool_t                     *pool;
    ngx_http_matrix_pg_query_t     *q;
    ngx_str_t                       server;
    ngx_str_t                       txn_id;
    ngx_str_t                       body;
    ngx_str_t                       why;
    ngx_uint_t                      npdus;
    ngx_uint_t                      nedus;
    unsigned                        sent:1;
    u_char                          whybuf[200];
};


static void ngx_http_matrix_sender_tick(ngx_event_t *ev);
static void ngx_http_matrix_sender_notify(void *data, const char *channel,
    const char *payload);
static void ngx_http_matrix_sender_back(void *data, const char *channel,
    const char *payload);
static void ngx_http_matrix_sender_lease(ngx_http_matrix_pg_query_t *q);
static ngx_int_t ngx_http_matrix_sender_started(ngx_http_matrix_sender_t *s);
static ngx_int_t ngx_http_matrix_sender_scan(ngx_http_matrix_sender_t *s);
static ngx_int_t ngx_http_matrix_sender_scanned(ngx_http_matrix_sender_t *s);
static ngx_int_t ngx_http_matrix_sender_txns(ngx_http_matrix_sender_t *s);
static void ngx_http_matrix_sender_got_txns(ngx_http_matrix_sender_t *s);
static void ngx_http_matrix_sender_new_txn(ngx_http_matrix_sender_t *s,
    ngx_http_matrix_sender_dest_t *d);
static ngx_int_t ngx_http_matrix_sender_floor(ngx_http_matrix_sender_t *s);
static ngx_int_t ngx_http_matrix_sender_rows(ngx_http_matrix_sender_t *s);
static u_char *ngx_http_matrix_sender_quote(u_char *p, ngx_str_t *name);
static ngx_uint_t ngx_http_matrix_sender_idle(
    ngx_http_matrix_sender_dest_t *d);
static void ngx_http_matrix_sender_passed(ngx_http_matrix_pg_query_t *q);
static ngx_int_t ngx_http_matrix_sender_run(ngx_http_matrix_sender_t *s,
    ngx_http_matrix_pg_query_t *q, ngx_http_matrix_sender_step_e step,
    ngx_http_matrix_pg_stmt_t *stmt, ngx_uint_t n, ngx_str_t *values);
static void ngx_http_matrix_sender_step_down(ngx_http_matrix_sender_t *s);
static void ngx_http_matrix_sender_resign(ngx_http_matrix_sender_t *s);
static ngx_http_matrix_sender_dest_t *ngx_http_matrix_sender_dest(
    ngx_http_matrix_sender_t *s, u_char *name, size_t len, ngx_uint_t create);
static void ngx_http_matrix_sender_drop_txn(ngx_http_matrix_sender_dest_t *d);
static ngx_int_t ngx_http_matrix_sender_job(ngx_http_matrix_sender_t *s,
    ngx_http_matrix_sender_dest_t *d);
static void ngx_http_matrix_sender_parts(ngx_http_matrix_pg_query_t *q);
static void ngx_http_matrix_sender_resolved(ngx_http_matrix_dest_t *dest);
static void ngx_http_matrix_sender_answered(ngx_http_matrix_http_req_t *hr);
static void ngx_http_matrix_sender_settle(ngx_http_matrix_sender_job_t *j,
    ngx_uint_t sent);
static void ngx_http_matrix_sender_settled(ngx_http_matrix_pg_query_t *q);
static void ngx_http_matrix_sender_job_end(ngx_http_matrix_sender_job_t *j);
static void ngx_http_matrix_sender_job_failed(
    ngx_http_matrix_sender_job_t *j);
static void ngx_http_matrix_sender_pass_end(ngx_http_matrix_sender_t *s);
static void ngx_http_matrix_sender_heard_done(ngx_http_matrix_pg_query_t *q);


static ngx_http_matrix_pg_stmt_t  ngx_http_matrix_sender_lock_stmt =
    ngx_http_matrix_pg_stmt("SELECT pg_try_advisory_lock(28025, 2)", 0);

static ngx_http_matrix_pg_stmt_t  ngx_http_matrix_sender_unlock_stmt =
    ngx_http_matrix_pg_stmt("SELECT pg_advisory_unlock(28025, 2)", 0);

static ngx_http_matrix_pg_stmt_t  ngx_http_matrix_sender_start_stmt =
    ngx_http_matrix_pg_stmt(
        "SELECT NULL, seq, 0, 0, false FROM federation_floor "
        "UNION ALL SELECT server_name, last_sent, failures, retry_at, "
        "given_up FROM destinations", 0);

static ngx_http_matrix_pg_stmt_t  ngx_http_matrix_sender_scan_stmt =
    ngx_http_matrix_pg_stmt(
        "SELECT server_name, top FROM matrix_federation_scan($1, $2, $3)", 3);

static ngx_http_matrix_pg_stmt_t  ngx_http_matrix_sender_txns_stmt =
    ngx_http_matrix_pg_stmt(
        "SELECT server_name, n, upto, nids FROM matrix_federation_txns("
        "$1::text[], $2::bigint[], $3, $4, $5, $6)", 6);

static ngx_http_matrix_pg_stmt_t  ngx_http_matrix_sender_rows_stmt =
    ngx_http_matrix_pg_stmt("SELECT server_name FROM destinations", 0);

static ngx_http_matrix_pg_stmt_t  ngx_http_matrix_sender_floor_stmt =
    ngx_http_matrix_pg_stmt(
        "SELECT matrix_federation_floor($1, $2::text[])", 2);

static ngx_http_matrix_pg_stmt_t  ngx_http_matrix_sender_parts_stmt =
    ngx_http_matrix_pg_stmt(
        "SELECT p.*, (SELECT r.room_version FROM matrix_rooms r "
        "WHERE r.room_id = p.room_id) "
        "FROM matrix_event_parts($1::bigint[]) p", 1);

static ngx_http_matrix_pg_stmt_t  ngx_http_matrix_sender_recovered =
    ngx_http_matrix_pg_stmt(
        "SELECT matrix_federation_recovered($1, $2)", 2);

static ngx_http_matrix_pg_stmt_t  ngx_http_matrix_sender_failed =
    ngx_http_matrix_pg_stmt(
        "SELECT matrix_federation_failed($1, $2, $3, $4, $5, $6, $7)", 7);

static ngx_http_matrix_pg_stmt_t  ngx_http_matrix_sender_heard_stmt =
    ngx_http_matrix_pg_stmt(
        "SELECT pg_notify('matrix_federation_back', server_name) "
        "FROM destinations WHERE server_name = $1", 1);


/* per worker */
static ngx_http_matrix_sender_t  *ngx_http_matrix_sender;

static struct {
    uint32_t                        hash;
    ngx_msec_t                      at;
} ngx_http_matrix_sender_heard_at[NGX_HTTP_MATRIX_SENDER_HEARD_SLOTS];


#define ngx_http_matrix_sender_int(buf, v)                                    \
    (ngx_str_t) { ngx_sprintf(buf, "%L", (int64_t) (v)) - (buf), buf }


ngx_int_t
ngx_http_matrix_sender_init_process(ngx_cycle_t *cycle)
{
    ngx_http_matrix_sender_t     *s;
    ngx_http_matrix_srv_conf_t   *mscf;
    ngx_http_matrix_main_conf_t  *mmcf;

    mscf = ngx_http_matrix_background_srv_conf(cycle);
    if (mscf == NULL) {
        return NGX_OK;
    }

    mmcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_matrix_module);

    if (mmcf->http == NULL) {
        return NGX_OK;
    }

    if (ngx_http_matrix_pg_max(mmcf->pg) < 2) {
        /* the lock's connection would be the only one, for good */
        ngx_log_error(NGX_LOG_WARN, cycle->log, 0,
                      "matrix sender: this worker does not send: it needs "
                      "\"matrix_postgres\" max=2 or more");
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
    ngx_queue_init(&s->dests);
    ngx_queue_init(&s->jobs);

    if (ngx_http_matrix_pg_listen(mmcf->pg, "matrix_federation_out",
                                  ngx_http_matrix_sender_notify, s)
        != NGX_OK
        || ngx_http_matrix_pg_listen(mmcf->pg, "matrix_federation_back",
                                     ngx_http_matrix_sender_back, s)
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    ngx_add_timer(&s->timer, 1);

    ngx_http_matrix_sender = s;

    return NGX_OK;
}


void
ngx_http_matrix_sender_kick(void)
{
    if (ngx_http_matrix_sender && ngx_http_matrix_sender->owner) {
        ngx_http_matrix_sender_notify(ngx_http_matrix_sender, NULL, NULL);
    }
}


static void
ngx_http_matrix_sender_soon(ngx_http_matrix_sender_t *s, ngx_msec_t ms)
{
    if (ngx_exiting || ngx_terminate) {
        return;
    }

    if (s->timer.timer_set) {
        ngx_del_timer(&s->timer);
    }

    ngx_add_timer(&s->timer, ms);
}


static void
ngx_http_matrix_sender_notify(void *data, const char *channel,
    const char *payload)
{
    ngx_http_matrix_sender_t  *s = data;

    if (!s->owner) {
        /* the owner hears it too; a standby tries the lock by its clock */
        return;
    }

    if (s->busy) {
        s->again = 1;
        return;
    }

    ngx_http_matrix_sender_soon(s, 1);
}


/* the server talks to us: no more waiting for it */

static void
ngx_http_matrix_sender_back(void *data, const char *channel,
    const char *payload)
{
    ngx_http_matrix_sender_t       *s = data;
    ngx_http_matrix_sender_dest_t  *d;

    if (!s->owner || payload == NULL) {
        return;
    }

    d = ngx_http_matrix_sender_dest(s, (u_char *) payload,
                                    ngx_strlen(payload), 0);

    if (d == NULL || d->retry_at == 0) {
        return;
    }

    ngx_log_error(NGX_LOG_INFO, s->log, 0,
                  "matrix sender: %s talks to us: its back-off ends",
                  payload);

    d->failures = 0;
    d->retry_at = 0;

    if (d->given_up) {
        /* its catch-up */
        d->owed = 1;
    }

    ngx_http_matrix_sender_notify(s, NULL, NULL);
}


void
ngx_http_matrix_sender_heard(ngx_str_t *server)
{
    uint32_t                     hash;
    ngx_uint_t                   slot;
    ngx_msec_t                   now;
    ngx_pool_t                  *pool;
    ngx_http_matrix_pg_t        *pg;
    ngx_http_matrix_pg_query_t  *q;

    /* most servers are not in back-off: asked once in a while each */

    hash = ngx_crc32_short(server->data, server->len);
    slot = hash % NGX_HTTP_MATRIX_SENDER_HEARD_SLOTS;
    now = ngx_current_msec;

    if (ngx_http_matrix_sender_heard_at[slot].hash == hash
        && now - ngx_http_matrix_sender_heard_at[slot].at
           < NGX_HTTP_MATRIX_SENDER_HEARD)
    {
        return;
    }

    pg = ngx_http_matrix_pg_of_cycle();
    if (pg == NULL) {
        return;
    }

    ngx_http_matrix_sender_heard_at[slot].hash = hash;
    ngx_http_matrix_sender_heard_at[slot].at = now;

    pool = ngx_create_pool(1024, ngx_cycle->log);
    if (pool == NULL) {
        return;
    }

    q = ngx_http_matrix_pg_query_create(pg, pool, ngx_cycle->log);

    if (q == NULL || ngx_http_matrix_pg_param(q, 0, server) != NGX_OK) {
        ngx_destroy_pool(pool);
        return;
    }

    q->stmt = &ngx_http_matrix_sender_heard_stmt;
    q->nparams = 1;
    q->handler = ngx_http_matrix_sender_heard_done;
    q->data = pool;

    if (ngx_http_matrix_pg_run(q) != NGX_OK) {
        ngx_destroy_pool(pool);
    }
}


static void
ngx_http_matrix_sender_heard_done(ngx_http_matrix_pg_query_t *q)
{
    ngx_destroy_pool(q->data);
}


static void
ngx_http_matrix_sender_tick(ngx_event_t *ev)
{
    ngx_http_matrix_pg_t      *pg;
    ngx_http_matrix_sender_t  *s;

    s = ev->data;

    if (ngx_exiting || ngx_terminate) {
        ngx_http_matrix_sender_resign(s);
        return;
    }

    if (s->busy) {
        return;
    }

    if (s->owner) {
        if (ngx_http_matrix_sender_scan(s) != NGX_OK) {
            ngx_http_matrix_sender_pass_end(s);
        }

        return;
    }

    /* a standby: tries the lock */

    pg = ngx_http_matrix_pg_of_cycle();
    if (pg == NULL) {
        ngx_http_matrix_sender_soon(s, NGX_HTTP_MATRIX_SENDER_STANDBY);
        return;
    }

    s->pool = ngx_create_pool(4096, s->log);
    if (s->pool == NULL) {
        ngx_http_matrix_sender_soon(s, NGX_HTTP_MATRIX_SENDER_STANDBY);
        return;
    }

    s->lq = ngx_http_matrix_pg_query_create(pg, s->pool, s->log);
    if (s->lq == NULL) {
        goto failed;
    }

    s->lq->handler = ngx_http_matrix_sender_lease;
    s->lq->data = s;
    s->lq->watch = 1;
    s->step = NGX_HTTP_MATRIX_SENDER_ACQUIRE;
    s->busy = 1;

    if (ngx_http_matrix_pg_acquire(s->lq) == NGX_OK) {
        return;
    }

    s->busy = 0;

failed:

    ngx_destroy_pool(s->pool);
    s->pool = NULL;
    s->lq = NULL;
    ngx_http_matrix_sender_soon(s, NGX_HTTP_MATRIX_SENDER_STANDBY);
}


/* the lock's statements, and the news of its session's end */

static void
ngx_http_matrix_sender_lease(ngx_http_matrix_pg_query_t *q)
{
    ngx_int_t                       rc;
    ngx_http_matrix_sender_t       *s;
    ngx_http_matrix_sender_step_e   step;

    s = q->data;
    step = s->step;
    s->step = NGX_HTTP_MATRIX_SENDER_IDLE;

    if (q->status != NGX_HTTP_MATRIX_PG_OK) {
        if (s->owner) {
            /* the session, so the lock, is gone: another may own now */
            ngx_log_error(NGX_LOG_WARN, s->log, 0,
                          "matrix sender: lost the connection that holds "
                          "the sending lock: %s%s%V",
                          ngx_http_matrix_pg_status_text(q->status),
                          q->error.len ? ": " : "", &q->error);
        }

        ngx_http_matrix_sender_step_down(s);
        return;
    }

    switch (step) {

    case NGX_HTTP_MATRIX_SENDER_ACQUIRE:
        rc = ngx_http_matrix_sender_run(s, q, NGX_HTTP_MATRIX_SENDER_LOCK,
                                        &ngx_http_matrix_sender_lock_stmt,
                                        0, NULL);
        break;

    case NGX_HTTP_MATRIX_SENDER_LOCK:
        if (PQntuples(q->result) != 1 || PQgetvalue(q->result, 0, 0)[0] != 't')
        {
            /* another worker or node sends; this one stands by */
            ngx_http_matrix_sender_step_down(s);
            return;
        }

        rc = ngx_http_matrix_sender_run(s, q, NGX_HTTP_MATRIX_SENDER_START,
                                        &ngx_http_matrix_sender_start_stmt,
                                        0, NULL);
        break;

    case NGX_HTTP_MATRIX_SENDER_START:
        rc = ngx_http_matrix_sender_started(s);
        break;

    case NGX_HTTP_MATRIX_SENDER_UNLOCK:
        ngx_log_error(NGX_LOG_NOTICE, s->log, 0,
                      "matrix sender: this worker is exiting: it no longer "
                      "sends");
        ngx_http_matrix_sender_step_down(s);
        return;

    default:
        return;
    }

    if (rc != NGX_OK) {
        if (s->owner) {
            ngx_http_matrix_sender_pass_end(s);

        } else {
            ngx_http_matrix_sender_step_down(s);
        }
    }
}


/* the pass's statements: scan, transactions, floor */

static void
ngx_http_matrix_sender_passed(ngx_http_matrix_pg_query_t *q)
{
    ngx_int_t                       rc;
    ngx_queue_t                    *qu;
    ngx_http_matrix_sender_t       *s;
    ngx_http_matrix_sender_dest_t  *d;
    ngx_http_matrix_sender_step_e   step;

    s = q->data;
    step = s->step;
    s->step = NGX_HTTP_MATRIX_SENDER_IDLE;

    if (q->status != NGX_HTTP_MATRIX_PG_OK) {
        ngx_log_error(NGX_LOG_WARN, s->log, 0,
                      "matrix sender: cannot read the queue: %s%s%V",
                      ngx_http_matrix_pg_status_text(q->status),
                      q->error.len ? ": " : "", &q->error);
        ngx_http_matrix_sender_pass_end(s);
        return;
    }

    switch (step) {

    case NGX_HTTP_MATRIX_SENDER_SCANNING:
        rc = ngx_http_matrix_sender_scanned(s);
        break;

    case NGX_HTTP_MATRIX_SENDER_TXNS:
        ngx_http_matrix_sender_got_txns(s);
        rc = ngx_http_matrix_sender_floor(s);
        break;

    case NGX_HTTP_MATRIX_SENDER_ROWS:
        rc = ngx_http_matrix_sender_rows(s);

        if (rc == NGX_OK) {
            rc = ngx_http_matrix_sender_floor(s);
        }

        break;

    case NGX_HTTP_MATRIX_SENDER_FLOORING:
        s->floor = s->floor_new;
        s->floor_at = ngx_current_msec;

        for (qu = ngx_queue_head(&s->dests);
             qu != ngx_queue_sentinel(&s->dests);
             qu = ngx_queue_next(qu))
        {
            d = ngx_queue_data(qu, ngx_http_matrix_sender_dest_t, queue);

            if (d->retiring && d->failures == 0) {
                /* the floor counts it again */
                d->row = 0;
            }

            d->retiring = 0;
        }

        rc = NGX_DONE;
        break;

    default:
        rc = NGX_DONE;
        break;
    }

    if (rc != NGX_OK) {
        ngx_http_matrix_sender_pass_end(s);
    }
}


static ngx_int_t
ngx_http_matrix_sender_run(ngx_http_matrix_sender_t *s,
    ngx_http_matrix_pg_query_t *q, ngx_http_matrix_sender_step_e step,
    ngx_http_matrix_pg_stmt_t *stmt, ngx_uint_t n, ngx_str_t *values)
{
    ngx_uint_t  i;

    for (i = 0; i < n; i++) {
        if (ngx_http_matrix_pg_param(q, i, &values[i]) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    q->stmt = stmt;
    q->nparams = n;
    s->step = step;

    if (ngx_http_matrix_pg_run(q) != NGX_OK) {
        s->step = NGX_HTTP_MATRIX_SENDER_IDLE;
        return NGX_ERROR;
    }

    return NGX_OK;
}


/* the floor and the rows of the destinations in trouble: the owner's start */

static ngx_int_t
ngx_http_matrix_sender_started(ngx_http_matrix_sender_t *s)
{
    int                             row, n;
    PGresult                       *res;
    ngx_http_matrix_sender_dest_t  *d;

    ngx_rbtree_init(&s->tree, &s->sentinel, ngx_str_rbtree_insert_value);
    ngx_queue_init(&s->dests);

    res = s->lq->result;
    n = PQntuples(res);

    for (row = 0; row < n; row++) {
        if (PQgetisnull(res, row, 0)) {
            s->floor = ngx_atoof((u_char *) PQgetvalue(res, row, 1),
                                 PQgetlength(res, row, 1));
            continue;
        }

        d = ngx_http_matrix_sender_dest(s, (u_char *) PQgetvalue(res, row, 0),
                                        PQgetlength(res, row, 0), 1);
        if (d == NULL) {
            return NGX_ERROR;
        }

        d->cursor = ngx_atoof((u_char *) PQgetvalue(res, row, 1),
                              PQgetlength(res, row, 1));
        d->failures = ngx_atoi((u_char *) PQgetvalue(res, row, 2),
                               PQgetlength(res, row, 2));
        d->retry_at = ngx_atoof((u_char *) PQgetvalue(res, row, 3),
                                PQgetlength(res, row, 3));
        d->given_up = (PQgetvalue(res, row, 4)[0] == 't');
        d->row = 1;
        d->owed = 1;
    }

    if (s->floor < 0) {
        s->floor = 0;
    }

    s->hwm = s->floor;
    s->floor_new = s->floor;
    s->floor_at = ngx_current_msec;
    s->rows_at = ngx_current_msec;
    s->epoch = ngx_http_matrix_now_ms();
    s->ntxn = 0;
    s->owner = 1;
    s->busy = 0;

    ngx_log_error(NGX_LOG_NOTICE, s->log, 0,
                  "matrix sender: this worker sends (from outbox seq %L, "
                  "%i destinations with a row)", s->floor, n - 1);

    return ngx_http_matrix_sender_scan(s);
}


static ngx_int_t
ngx_http_matrix_sender_scan(ngx_http_matrix_sender_t *s)
{
    ngx_str_t              values[3];
    u_char                 buf[2][NGX_INT64_LEN];
    ngx_http_matrix_pg_t  *pg;

    pg = ngx_http_matrix_pg_of_cycle();
    if (pg == NULL) {
        return NGX_ERROR;
    }

    s->ppool = ngx_create_pool(4096, s->log);
    if (s->ppool == NULL) {
        return NGX_ERROR;
    }

    s->busy = 1;
    s->again = 0;

    s->pq = ngx_http_matrix_pg_query_create(pg, s->ppool, s->log);
    if (s->pq == NULL) {
        return NGX_ERROR;
    }

    s->pq->handler = ngx_http_matrix_sender_passed;
    s->pq->data = s;

    values[0] = ngx_http_matrix_sender_int(buf[0], s->hwm);
    values[1] = s->mscf->server_name;
    values[2] = ngx_http_matrix_sender_int(buf[1],
                                           NGX_HTTP_MATRIX_SENDER_SCAN);

    return ngx_http_matrix_sender_run(s, s->pq,
                                      NGX_HTTP_MATRIX_SENDER_SCANNING,
                                      &ngx_http_matrix_sender_scan_stmt,
                                      3, values);
}


/*
 * Who is owed the outbox rows past the high-water mark; then the
 * destinations due go: a retry as it was, the others' transactions read
 * in one statement.
 */

static ngx_int_t
ngx_http_matrix_sender_scanned(ngx_http_matrix_sender_t *s)
{
    int                             row, n;
    int64_t                         top, now;
    ngx_queue_t                    *qu;
    PGresult                       *res;
    ngx_http_matrix_sender_dest_t  *d;

    res = s->pq->result;
    n = PQntuples(res);
    top = s->hwm;

    for (row = 0; row < n; row++) {
        top = ngx_atoof((u_char *) PQgetvalue(res, row, 1),
                        PQgetlength(res, row, 1));

        if (PQgetisnull(res, row, 0)) {
            continue;
        }

        /* one seen first starts past what was scanned before */

        d = ngx_http_matrix_sender_dest(s, (u_char *) PQgetvalue(res, row, 0),
                                        PQgetlength(res, row, 0), 1);
        if (d == NULL) {
            return NGX_ERROR;
        }

        d->owed = 1;
    }

    if (top > s->hwm) {
        s->hwm = top;
        s->again = 1;
    }

    /*
     * A destination owed nothing of what was scanned, with nothing in
     * flight, is past it all: else the floor would wait for the quietest
     * server, and the outbox with it.
     */

    for (qu = ngx_queue_head(&s->dests);
         qu != ngx_queue_sentinel(&s->dests);
         qu = ngx_queue_next(qu))
    {
        d = ngx_queue_data(qu, ngx_http_matrix_sender_dest_t, queue);

        if (!ngx_http_matrix_sender_idle(d)) {
            continue;
        }

        d->cursor = ngx_max(d->cursor, s->hwm);
    }

    now = ngx_http_matrix_now_ms();
    s->nbatch = 0;

    for (qu = ngx_queue_head(&s->dests);
         qu != ngx_queue_sentinel(&s->dests);
         qu = ngx_queue_next(qu))
    {
        d = ngx_queue_data(qu, ngx_http_matrix_sender_dest_t, queue);

        if (d->job || !(d->owed || d->txn_id.len || d->edus)
            || d->retry_at > now)
        {
            continue;
        }

        if (s->njobs + s->nbatch >= NGX_HTTP_MATRIX_SENDER_DESTS) {
            /* every slot taken: the next to end starts a pass */
            break;
        }

        if (d->txn_id.len) {
            /* a retry: the very same transaction */
            (void) ngx_http_matrix_sender_job(s, d);
            continue;
        }

        s->batch[s->nbatch++] = d;
    }

    if (s->nbatch == 0) {
        return ngx_http_matrix_sender_floor(s);
    }

    return ngx_http_matrix_sender_txns(s);
}


/* the batch's names and cursors as arrays: {"a","b"} and {1,NULL} */

static ngx_int_t
ngx_http_matrix_sender_txns(ngx_http_matrix_sender_t *s)
{
    u_char                         *p, *c;
    size_t                          len;
    ngx_str_t                       values[6];
    ngx_uint_t                      i;
    u_char                          buf[4][NGX_INT64_LEN];
    ngx_http_matrix_sender_dest_t  *d;

    len = 2;

    for (i = 0; i < s->nbatch; i++) {
        len += 2 * s->batch[i]->sn.str.len + 3;
    }

    values[0].data = ngx_pnalloc(s->ppool, len);
    values[1].data = ngx_pnalloc(s->ppool,
                                 2 + s->nbatch * (NGX_INT64_LEN + 1));

    if (values[0].data == NULL || values[1].data == NULL) {
        return NGX_ERROR;
    }

    p = values[0].data;
    c = values[1].data;
    *p++ = '{';
    *c++ = '{';

    for (i = 0; i < s->nbatch; i++) {
        d = s->batch[i];

        if (i) {
            *p++ = ',';
            *c++ = ',';
        }

        p = ngx_http_matrix_sender_quote(p, &d->sn.str);

        c = d->given_up ? ngx_cpymem(c, "NULL", 4)
                        : ngx_sprintf(c, "%L", d->cursor);
    }

    *p++ = '}';
    *c++ = '}';
    values[0].len = p - values[0].data;
    values[1].len = c - values[1].data;

    /* what is past the high-water mark waits for the next scan */
    s->txns_upto = s->hwm;

    values[2] = ngx_http_matrix_sender_int(buf[0], s->hwm);
    values[3] = s->mscf->server_name;
    values[4] = ngx_http_matrix_sender_int(buf[1],
                                           NGX_HTTP_MATRIX_SENDER_PER_ROOM);
    values[5] = ngx_http_matrix_sender_int(buf[2],
                                           NGX_HTTP_MATRIX_SENDER_PDUS);

    return ngx_http_matrix_sender_run(s, s->pq, NGX_HTTP_MATRIX_SENDER_TXNS,
                                      &ngx_http_matrix_sender_txns_stmt,
                                      6, values);
}


/*
 * Each destination of the batch owed something gets its transaction and
 * goes; one owed nothing (of its rooms) is past the high-water mark.
 */

static void
ngx_http_matrix_sender_got_txns(ngx_http_matrix_sender_t *s)
{
    int                             row, n;
    size_t                          len;
    ngx_uint_t                      i, count;
    PGresult                       *res;
    ngx_http_matrix_sender_dest_t  *d;

    res = s->pq->result;
    n = PQntuples(res);

    for (row = 0; row < n; row++) {
        d = ngx_http_matrix_sender_dest(s, (u_char *) PQgetvalue(res, row, 0),
                                        PQgetlength(res, row, 0), 0);
        if (d == NULL || d->job || d->txn_id.len) {
            continue;
        }

        len = PQgetlength(res, row, 3);
        d->nids.data = ngx_alloc(len, s->log);
        if (d->nids.data == NULL) {
            continue;
        }

        ngx_memcpy(d->nids.data, PQgetvalue(res, row, 3), len);
        d->nids.len = len;

        count = ngx_atoi((u_char *) PQgetvalue(res, row, 1),
                         PQgetlength(res, row, 1));
        d->upto = ngx_atoof((u_char *) PQgetvalue(res, row, 2),
                            PQgetlength(res, row, 2));

        if (count < NGX_HTTP_MATRIX_SENDER_PDUS) {
            /* all it is owed up to the mark */
            d->upto = ngx_max(d->upto, s->txns_upto);
            d->owed = 0;
        }

        ngx_http_matrix_sender_new_txn(s, d);
    }

    for (i = 0; i < s->nbatch; i++) {
        d = s->batch[i];

        if (d->txn_id.len || d->job) {
            continue;
        }

        /* none of its rooms had anything */
        d->owed = 0;

        if (!d->given_up) {
            d->cursor = ngx_max(d->cursor, s->txns_upto);
        }

        if (d->edus == NULL) {
            continue;
        }

        /* EDUs alone */

        d->nids.data = ngx_alloc(2, s->log);
        if (d->nids.data == NULL) {
            continue;
        }

        ngx_memcpy(d->nids.data, "{}", 2);
        d->nids.len = 2;
        d->upto = d->cursor;

        ngx_http_matrix_sender_new_txn(s, d);
    }
}


/* a transaction made: its ID, the EDUs waiting, and off it goes */

static void
ngx_http_matrix_sender_new_txn(ngx_http_matrix_sender_t *s,
    ngx_http_matrix_sender_dest_t *d)
{
    d->txn_id.data = d->txn_buf;
    d->txn_id.len = ngx_sprintf(d->txn_buf, "%L.%ui", s->epoch, ++s->ntxn)
                    - d->txn_buf;

    d->txn_edus = d->edus;
    d->edus = NULL;

    (void) ngx_http_matrix_sender_job(s, d);
}


/*
 * An EDU for a destination, sent with its next transaction: by the
 * owner only, and not to a server that is not answering (EDUs are
 * ephemeral: a typing notice from an hour ago is noise).
 */

ngx_uint_t
ngx_http_matrix_sender_sends(void)
{
    return ngx_http_matrix_sender && ngx_http_matrix_sender->owner;
}


void
ngx_http_matrix_sender_edu(ngx_str_t *server, json_t *edu)
{
    ngx_http_matrix_sender_t       *s;
    ngx_http_matrix_sender_dest_t  *d;

    s = ngx_http_matrix_sender;

    if (s == NULL || !s->owner) {
        return;
    }

    d = ngx_http_matrix_sender_dest(s, server->data, server->len, 1);

    if (d == NULL || d->given_up
        || d->retry_at > ngx_http_matrix_now_ms())
    {
        return;
    }

    if (d->edus == NULL) {
        d->edus = json_array();
        if (d->edus == NULL) {
            return;
        }
    }

    if (json_array_size(d->edus) >= NGX_HTTP_MATRIX_SENDER_EDUS) {
        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, s->log, 0,
                       "matrix sender: EDUs for %V dropped: too many",
                       server);
        return;
    }

    json_array_append(d->edus, edu);

    if (s->busy) {
        s->again = 1;

    } else {
        ngx_http_matrix_sender_soon(s, 1);
    }
}


/*
 * What every destination without a row is past, written at most once a
 * second: a row being written still counts, until it is there.
 */

static ngx_int_t
ngx_http_matrix_sender_floor(ngx_http_matrix_sender_t *s)
{
    u_char                         *p;
    size_t                          len;
    int64_t                         floor;
    ngx_str_t                       values[2];
    ngx_uint_t                      nretire;
    ngx_queue_t                    *qu;
    u_char                          buf[NGX_INT64_LEN];
    ngx_http_matrix_sender_dest_t  *d;

    if (ngx_current_msec - s->rows_at >= NGX_HTTP_MATRIX_SENDER_REREAD) {
        /* first the rows, as they are now */
        s->rows_at = ngx_current_msec;

        return ngx_http_matrix_sender_run(s, s->pq,
                                          NGX_HTTP_MATRIX_SENDER_ROWS,
                                          &ngx_http_matrix_sender_rows_stmt,
                                          0, NULL);
    }

    floor = s->hwm;

    for (qu = ngx_queue_head(&s->dests);
         qu != ngx_queue_sentinel(&s->dests);
         qu = ngx_queue_next(qu))
    {
        d = ngx_queue_data(qu, ngx_http_matrix_sender_dest_t, queue);

        if (!d->row && d->cursor < floor) {
            floor = d->cursor;
        }
    }

    /*
     * A row of a destination that answers again, idle and past the
     * floor, goes with the floor's write: it would hold the outbox.
     */

    len = 2;
    nretire = 0;

    for (qu = ngx_queue_head(&s->dests);
         qu != ngx_queue_sentinel(&s->dests);
         qu = ngx_queue_next(qu))
    {
        d = ngx_queue_data(qu, ngx_http_matrix_sender_dest_t, queue);

        d->retiring = (d->row && d->failures == 0
                       && ngx_http_matrix_sender_idle(d)
                       && d->cursor >= floor);

        if (d->retiring) {
            len += 2 * d->sn.str.len + 3;
            nretire++;
        }
    }

    if (floor <= s->floor && nretire == 0) {
        return NGX_DONE;
    }

    if (ngx_current_msec - s->floor_at < NGX_HTTP_MATRIX_SENDER_FLOOR) {
        s->floor_due = 1;
        return NGX_DONE;
    }

    values[1].data = ngx_pnalloc(s->ppool, len);
    if (values[1].data == NULL) {
        return NGX_ERROR;
    }

    p = values[1].data;
    *p++ = '{';

    for (qu = ngx_queue_head(&s->dests);
         qu != ngx_queue_sentinel(&s->dests);
         qu = ngx_queue_next(qu))
    {
        d = ngx_queue_data(qu, ngx_http_matrix_sender_dest_t, queue);

        if (!d->retiring) {
            continue;
        }

        if (p[-1] != '{') {
            *p++ = ',';
        }

        p = ngx_http_matrix_sender_quote(p, &d->sn.str);
    }

    *p++ = '}';
    values[1].len = p - values[1].data;

    s->floor_due = 0;
    s->floor_new = ngx_max(floor, s->floor);
    values[0] = ngx_http_matrix_sender_int(buf, s->floor_new);

    return ngx_http_matrix_sender_run(s, s->pq,
                                      NGX_HTTP_MATRIX_SENDER_FLOORING,
                                      &ngx_http_matrix_sender_floor_stmt,
                                      2, values);
}


/*
 * The destinations' rows, read now and then: a row this owner did not
 * write (a former owner's write, on its way when it lost the lock) is
 * taken in, so that it goes with the floor like the others, instead of
 * holding the outbox for good.
 */

static ngx_int_t
ngx_http_matrix_sender_rows(ngx_http_matrix_sender_t *s)
{
    int                             row, n;
    PGresult                       *res;
    ngx_http_matrix_sender_dest_t  *d;

    res = s->pq->result;
    n = PQntuples(res);

    for (row = 0; row < n; row++) {
        d = ngx_http_matrix_sender_dest(s, (u_char *) PQgetvalue(res, row, 0),
                                        PQgetlength(res, row, 0), 1);
        if (d == NULL) {
            return NGX_ERROR;
        }

        if (!d->row) {
            ngx_log_error(NGX_LOG_INFO, s->log, 0,
                          "matrix sender: destination %V has a row this "
                          "worker did not write: taken in", &d->sn.str);
            d->row = 1;
        }
    }

    return NGX_OK;
}


/* a server name as an element of a Postgres text array: "a\"b" */

static u_char *
ngx_http_matrix_sender_quote(u_char *p, ngx_str_t *name)
{
    ngx_uint_t  k;

    *p++ = '"';

    for (k = 0; k < name->len; k++) {
        if (name->data[k] == '"' || name->data[k] == '\\') {
            *p++ = '\\';
        }

        *p++ = name->data[k];
    }

    *p++ = '"';

    return p;
}


/* nothing owed, nothing in flight, not given up on */

static ngx_uint_t
ngx_http_matrix_sender_idle(ngx_http_matrix_sender_dest_t *d)
{
    return !d->owed && d->job == NULL && d->txn_id.len == 0
           && d->edus == NULL && !d->given_up;
}


static void
ngx_http_matrix_sender_pass_end(ngx_http_matrix_sender_t *s)
{
    int64_t                         now, next;
    ngx_queue_t                    *qu;
    ngx_http_matrix_sender_dest_t  *d;

    if (s->ppool) {
        ngx_destroy_pool(s->ppool);
        s->ppool = NULL;
        s->pq = NULL;
    }

    s->busy = 0;
    s->step = NGX_HTTP_MATRIX_SENDER_IDLE;

    if (!s->owner) {
        return;
    }

    if (ngx_exiting || ngx_terminate) {
        ngx_http_matrix_sender_resign(s);
        return;
    }

    if (s->again) {
        ngx_http_matrix_sender_soon(s, 1);
        return;
    }

    /* the next retry due, the floor's next write, or a look in a while */

    now = ngx_http_matrix_now_ms();
    next = now + NGX_HTTP_MATRIX_SENDER_PERIOD;

    if (s->floor_due) {
        next = ngx_min(next, now + NGX_HTTP_MATRIX_SENDER_FLOOR);
    }

    for (qu = ngx_queue_head(&s->dests);
         qu != ngx_queue_sentinel(&s->dests);
         qu = ngx_queue_next(qu))
    {
        d = ngx_queue_data(qu, ngx_http_matrix_sender_dest_t, queue);

        if (d->job == NULL && (d->owed || d->txn_id.len)
            && d->retry_at < next)
        {
            next = ngx_max(d->retry_at, now + 1);
        }
    }

    ngx_http_matrix_sender_soon(s, (ngx_msec_t) (next - now));
}


/*
 * The lock is gone or was not had: the transactions in flight are
 * dropped (another owner starts from what is persisted), and so is the
 * state.
 */

static void
ngx_http_matrix_sender_step_down(ngx_http_matrix_sender_t *s)
{
    ngx_queue_t                    *qu;
    ngx_http_matrix_sender_job_t   *j;
    ngx_http_matrix_sender_dest_t  *d;
    ngx_pool_t                     *pool;

    s->owner = 0;
    s->resigning = 0;

    if (s->ppool) {
        ngx_destroy_pool(s->ppool);
        s->ppool = NULL;
        s->pq = NULL;
    }

    if (s->pool) {
        while (!ngx_queue_empty(&s->jobs)) {
            qu = ngx_queue_head(&s->jobs);
            j = ngx_queue_data(qu, ngx_http_matrix_sender_job_t, queue);
            ngx_queue_remove(qu);
            j->d->job = NULL;
            s->njobs--;
            ngx_destroy_pool(j->pool);
        }

        for (qu = ngx_queue_head(&s->dests);
             qu != ngx_queue_sentinel(&s->dests);
             qu = ngx_queue_next(qu))
        {
            d = ngx_queue_data(qu, ngx_http_matrix_sender_dest_t, queue);
            ngx_http_matrix_sender_drop_txn(d);
            json_decref(d->edus);
            d->edus = NULL;
        }
    }

    ngx_queue_init(&s->dests);
    s->busy = 0;
    s->step = NGX_HTTP_MATRIX_SENDER_IDLE;

    pool = s->pool;
    s->pool = NULL;

    if (s->lq) {
        /* its connection is gone, or holds no lock */
        ngx_http_matrix_pg_release(s->lq);
        s->lq = NULL;
    }

    ngx_http_matrix_sender_soon(s, NGX_HTTP_MATRIX_SENDER_STANDBY);

    if (pool) {
        /* last: we may be in a call of its query */
        ngx_destroy_pool(pool);
    }
}


static ngx_http_matrix_sender_dest_t *
ngx_http_matrix_sender_dest(ngx_http_matrix_sender_t *s, u_char *name,
    size_t len, ngx_uint_t create)
{
    uint32_t                        hash;
    ngx_str_t                       key;
    ngx_str_node_t                 *sn;
    ngx_http_matrix_sender_dest_t  *d;

    key.data = name;
    key.len = len;
    hash = ngx_crc32_short(name, len);

    sn = ngx_str_rbtree_lookup(&s->tree, &key, hash);
    if (sn) {
        return (ngx_http_matrix_sender_dest_t *) sn;
    }

    if (!create) {
        return NULL;
    }

    d = ngx_pcalloc(s->pool, sizeof(ngx_http_matrix_sender_dest_t) + len);
    if (d == NULL) {
        return NULL;
    }

    d->sn.str.data = (u_char *) (d + 1);
    d->sn.str.len = len;
    ngx_memcpy(d->sn.str.data, name, len);
    d->sn.node.key = hash;
    d->cursor = s->hwm;

    ngx_rbtree_insert(&s->tree, &d->sn.node);
    ngx_queue_insert_tail(&s->dests, &d->queue);

    return d;
}


static void
ngx_http_matrix_sender_drop_txn(ngx_http_matrix_sender_dest_t *d)
{
    if (d->nids.data) {
        ngx_free(d->nids.data);
    }

    ngx_str_null(&d->nids);
    d->txn_id.len = 0;

    json_decref(d->txn_edus);
    d->txn_edus = NULL;
}


static ngx_int_t
ngx_http_matrix_sender_job(ngx_http_matrix_sender_t *s,
    ngx_http_matrix_sender_dest_t *d)
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
        goto failed;
    }

    j->s = s;
    j->d = d;
    j->pool = pool;
    j->server = d->sn.str;
    j->txn_id = d->txn_id;

    j->q = ngx_http_matrix_pg_query_create(pg, pool, s->log);

    if (j->q == NULL || ngx_http_matrix_pg_param(j->q, 0, &d->nids) != NGX_OK)
    {
        goto failed;
    }

    j->q->stmt = &ngx_http_matrix_sender_parts_stmt;
    j->q->nparams = 1;
    j->q->handler = ngx_http_matrix_sender_parts;
    j->q->data = j;

    if (ngx_http_matrix_pg_run(j->q) != NGX_OK) {
        goto failed;
    }

    d->job = j;
    ngx_queue_insert_tail(&s->jobs, &j->queue);
    s->njobs++;

    return NGX_OK;

failed:

    ngx_destroy_pool(pool);
    d->retry_at = ngx_http_matrix_now_ms() + NGX_HTTP_MATRIX_SENDER_BACKOFF;

    return NGX_ERROR;
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
        ngx_http_matrix_sender_job_failed(j);
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

    j->nedus = json_array_size(j->d->txn_edus);

    txn = json_pack("{s:s,s:I,s:o,s:o}",
                    "origin", (char *) j->s->mscf->server_name.data,
                    "origin_server_ts", (json_int_t) ngx_http_matrix_now_ms(),
                    "pdus", pdus,
                    "edus", j->d->txn_edus ? json_incref(j->d->txn_edus)
                                           : json_array());

    text = txn ? json_dumps(txn, JSON_COMPACT) : NULL;
    json_decref(txn);

    if (text == NULL) {
        ngx_http_matrix_sender_job_failed(j);
        return;
    }

    j->body.len = ngx_strlen(text);
    j->body.data = ngx_pnalloc(j->pool, j->body.len);

    if (j->body.data == NULL) {
        free(text);
        ngx_http_matrix_sender_job_failed(j);
        return;
    }

    ngx_memcpy(j->body.data, text, j->body.len);
    free(text);

    dest = ngx_http_matrix_dest_create((ngx_cycle_t *) ngx_cycle, j->pool,
                                       j->s->log);
    if (dest == NULL) {
        ngx_http_matrix_sender_job_failed(j);
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
        ngx_http_matrix_sender_job_failed(j);
        return;
    }

    hr->uri.data = ngx_pnalloc(j->pool,
                               sizeof("/_matrix/federation/v1/send/") - 1
                               + 3 * j->txn_id.len);
    if (hr->uri.data == NULL) {
        ngx_http_matrix_sender_job_failed(j);
        return;
    }

    p = ngx_cpymem(hr->uri.data, "/_matrix/federation/v1/send/",
                   sizeof("/_matrix/federation/v1/send/") - 1);
    p = (u_char *) ngx_escape_uri(p, j->txn_id.data, j->txn_id.len,
                                  NGX_ESCAPE_ARGS);
    hr->uri.len = p - hr->uri.data;

    ngx_http_matrix_dest_target(dest, hr);
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
                      "matrix sender: transaction %V to %V: %ui PDUs, %ui "
                      "EDUs sent", &j->txn_id, &j->server, j->npdus,
                      j->nedus);
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


/*
 * 200: the cursor moves past the transaction and the back-off ends; a
 * destination with a row says so (the row goes once it is past the
 * floor).  Anything else: the same transaction after the back-off, and
 * the row records it (given up on after a day of failures).
 */

static void
ngx_http_matrix_sender_settle(ngx_http_matrix_sender_job_t *j,
    ngx_uint_t sent)
{
    int64_t                         now;
    ngx_uint_t                      i, was, n;
    ngx_str_t                       values[7];
    u_char                          buf[6][NGX_INT64_LEN];
    ngx_http_matrix_pg_query_t     *q;
    ngx_http_matrix_sender_t       *s;
    ngx_http_matrix_sender_dest_t  *d;

    s = j->s;
    d = j->d;
    q = j->q;
    q->handler = ngx_http_matrix_sender_settled;
    q->data = j;
    j->sent = sent;

    values[0] = d->sn.str;
    now = ngx_http_matrix_now_ms();

    if (sent) {
        was = d->failures || d->given_up;
        d->cursor = ngx_max(d->cursor, d->upto);
        d->failures = 0;
        d->retry_at = 0;
        d->given_up = 0;
        ngx_http_matrix_sender_drop_txn(d);

        if (!d->row || !(was || d->cursor >= s->floor)) {
            ngx_http_matrix_sender_job_end(j);
            return;
        }

        values[1] = ngx_http_matrix_sender_int(buf[0], d->cursor);
        q->stmt = &ngx_http_matrix_sender_recovered;
        n = 2;

    } else {
        ngx_log_error(NGX_LOG_WARN, s->log, 0,
                      "matrix sender: transaction %V to %V not delivered, "
                      "will retry: %V", &j->txn_id, &j->server, &j->why);

        d->failures++;
        d->retry_at = now + ngx_min(NGX_HTTP_MATRIX_SENDER_BACKOFF_MAX,
                                    (int64_t) NGX_HTTP_MATRIX_SENDER_BACKOFF
                                    << ngx_min(d->failures - 1, 20));

        if (d->given_up) {
            ngx_str_null(&values[1]);

        } else {
            values[1] = ngx_http_matrix_sender_int(buf[0], d->cursor);
        }

        values[2] = ngx_http_matrix_sender_int(buf[1], d->failures);
        values[3] = ngx_http_matrix_sender_int(buf[2], d->retry_at);
        values[4] = ngx_http_matrix_sender_int(buf[3], now);
        values[5] = ngx_http_matrix_sender_int(buf[4],
                                               NGX_HTTP_MATRIX_SENDER_GIVE_UP);
        values[6] = j->why;
        q->stmt = &ngx_http_matrix_sender_failed;
        n = 7;
    }

    q->nparams = n;

    for (i = 0; i < n; i++) {
        if (ngx_http_matrix_pg_param(q, i, values[i].data ? &values[i] : NULL)
            != NGX_OK)
        {
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
    ngx_uint_t                      yes;
    ngx_http_matrix_sender_job_t   *j;
    ngx_http_matrix_sender_dest_t  *d;

    j = q->data;
    d = j->d;

    if (q->status != NGX_HTTP_MATRIX_PG_OK || PQntuples(q->result) != 1) {
        /* the row as it was: written again at the next change */
        ngx_log_error(NGX_LOG_WARN, j->s->log, 0,
                      "matrix sender: destination %V: %s%s%V",
                      &j->server, ngx_http_matrix_pg_status_text(q->status),
                      q->error.len ? ": " : "", &q->error);
        ngx_http_matrix_sender_job_end(j);
        return;
    }

    yes = (PQgetvalue(q->result, 0, 0)[0] == 't');

    if (j->sent) {
        /* its row is gone: the floor counts it again */
        d->row = !yes;

    } else {
        d->row = 1;

        if (yes && !d->given_up) {
            ngx_log_error(NGX_LOG_WARN, j->s->log, 0,
                          "matrix sender: %V has failed for long: given up "
                          "on, it will be sent its rooms' latest events "
                          "when it answers", &j->server);

            d->given_up = 1;
            d->owed = 1;
            ngx_http_matrix_sender_drop_txn(d);
        }
    }

    ngx_http_matrix_sender_job_end(j);
}


/* out of memory, say: not again at once */

static void
ngx_http_matrix_sender_job_failed(ngx_http_matrix_sender_job_t *j)
{
    j->d->retry_at = ngx_http_matrix_now_ms() + NGX_HTTP_MATRIX_SENDER_BACKOFF;

    ngx_http_matrix_sender_job_end(j);
}


static void
ngx_http_matrix_sender_job_end(ngx_http_matrix_sender_job_t *j)
{
    ngx_http_matrix_sender_t  *s;

    s = j->s;

    j->d->job = NULL;
    ngx_queue_remove(&j->queue);
    s->njobs--;

    /* last: we may be in a call of one of its objects */
    ngx_destroy_pool(j->pool);

    /*
     * A slot is free: a destination due meanwhile goes now, not after
     * the slowest of the others (a dead server holds one slot for its
     * timeout, never the rest).
     */

    if (s->busy) {
        s->again = 1;

    } else if (ngx_exiting || ngx_terminate) {
        ngx_http_matrix_sender_resign(s);

    } else if (s->owner) {
        ngx_http_matrix_sender_soon(s, 1);
    }
}


/*
 * A worker exiting after a reload may live on for hours (a websocket it
 * proxies): it gives the lock up, so that a new worker sends.  What it
 * had in flight is sent again by the next owner, from the floor.
 */

static void
ngx_http_matrix_sender_resign(ngx_http_matrix_sender_t *s)
{
    if (!s->owner || s->busy || s->resigning || s->lq == NULL) {
        /* a pass running ends here again */
        return;
    }

    s->resigning = 1;

    if (ngx_http_matrix_sender_run(s, s->lq, NGX_HTTP_MATRIX_SENDER_UNLOCK,
                                   &ngx_http_matrix_sender_unlock_stmt, 0,
                                   NULL)
        != NGX_OK)
    {
        ngx_http_matrix_sender_step_down(s);
    }
}
