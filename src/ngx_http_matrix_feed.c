/*
 * The change feed's consumer: silo messages become events of their
 * Matrix rooms as they are written (docs/silo-contract.md, "The change
 * feed"; docs/storage.md, "Consequences").
 *
 * Each worker listens on matrix_silo_changes and looks every few seconds
 * as well (a notification can be missed while the listening connection
 * is down).  A change is handled in one transaction on a leased
 * connection: matrix_feed_next() claims the first change that no one
 * else holds (SKIP LOCKED), drops those of rooms that have no Matrix
 * events yet, locks the room and reads its head; the events are made and
 * signed here; matrix_feed_apply() appends them, queues them for the
 * other servers in the room and deletes the change.  So a change is
 * handled once, by one worker, and its events exist iff it is gone.
 *
 *   insert  the author's join first if they are not joined (lazy
 *           membership, as when the room was made), then m.room.message
 *           (the recipe: its content is rebuilt from the silo's row);
 *           a message the module wrote for a Matrix user is skipped
 *   update  of the text (old_values): the original's content kept in
 *           its row (it can no longer be rebuilt), checked against its
 *           hash, then an m.replace edit, kept whole
 *   delete  (or deleted_at set): an m.room.redaction, kept whole, and
 *           the message's events marked redacted
 *
 * and for a silo reaction (the reactions trigger, sql/010):
 *
 *   added   the author's join if needed, then an m.reaction annotating
 *           the message's event, kept whole and recorded in
 *           silo_reactions; one the module wrote for a Matrix user is
 *           skipped, and one whose message no event mirrors given up on
 *   removed (row deleted or removed_at set): the m.reaction's redaction
 *
 * A change whose transaction fails is rolled back and tried again later
 * (sql/008_feed.sql), the other rooms' changes going on meanwhile; one
 * that cannot make events at all, or fails 10 times, is given up on and
 * left in the table for the operator, logged.
 */


#include "ngx_http_matrix_module.h"
#include "ngx_http_matrix_feed.h"
#include "ngx_http_matrix_room.h"
#include "ngx_http_matrix_pg.h"

#include <mx_ids.h>


#define NGX_HTTP_MATRIX_FEED_PERIOD  3000
#define NGX_HTTP_MATRIX_FEED_ROWS    64      /* per pass, then a yield */
#define NGX_HTTP_MATRIX_FEED_HOUSEKEEPING  600000
#define NGX_HTTP_MATRIX_FEED_TXN_KEEP      86400000


typedef struct {
    ngx_event_t                     timer;
    ngx_log_t                      *log;
    ngx_pool_t                     *pool;          /* of the change */
    ngx_http_matrix_pg_query_t     *q;
    ngx_http_matrix_pg_handler_pt   then;
    ngx_http_matrix_srv_conf_t     *mscf;
    ngx_http_matrix_ctx_t           ctx;           /* mscf, for room ops */
    ngx_str_t                       seq;
    ngx_uint_t                      rows;
    ngx_msec_t                      pruned;        /* housekeeping, last */
    ngx_str_t                       error;         /* of a failing change */
    unsigned                        busy:1;
    unsigned                        failing:1;
    unsigned                        count:1;       /* as an attempt */
    unsigned                        again:1;
    unsigned                        more:1;
} ngx_http_matrix_feed_t;


/* what a change makes */
typedef struct {
    ngx_http_matrix_room_chain_t    chain;
    const char                     *original_nid;  /* its content kept */
    char                           *original_content;
    const char                     *redact;        /* silo message ID */
    const char                     *reaction;      /* silo reaction ID */
    char                            why[MX_ERR_LEN];  /* NGX_DECLINED */
} ngx_http_matrix_feed_make_t;


static void ngx_http_matrix_feed_tick(ngx_event_t *ev);
static void ngx_http_matrix_feed_notify(void *data, const char *channel,
    const char *payload);
static void ngx_http_matrix_feed_leased(ngx_http_matrix_pg_query_t *q);
static void ngx_http_matrix_feed_began(ngx_http_matrix_pg_query_t *q);
static void ngx_http_matrix_feed_claimed(ngx_http_matrix_pg_query_t *q);
static void ngx_http_matrix_feed_applied(ngx_http_matrix_pg_query_t *q);
static void ngx_http_matrix_feed_commit_now(ngx_http_matrix_feed_t *f);
static void ngx_http_matrix_feed_committed(ngx_http_matrix_pg_query_t *q);
static void ngx_http_matrix_feed_step(ngx_http_matrix_pg_query_t *q);
static ngx_int_t ngx_http_matrix_feed_run(ngx_http_matrix_feed_t *f,
    ngx_http_matrix_pg_stmt_t *stmt, ngx_str_t *values, ngx_uint_t n,
    ngx_http_matrix_pg_handler_pt then);
static void ngx_http_matrix_feed_end(ngx_http_matrix_feed_t *f,
    ngx_uint_t more);
static void ngx_http_matrix_feed_fail(ngx_http_matrix_feed_t *f,
    const char *error, ngx_uint_t count);
static void ngx_http_matrix_feed_rolled_back(ngx_http_matrix_pg_query_t *q);
static void ngx_http_matrix_feed_recorded(ngx_http_matrix_pg_query_t *q);
static ngx_uint_t ngx_http_matrix_feed_passing(const char *sqlstate);
static void ngx_http_matrix_feed_housekeeping(ngx_http_matrix_feed_t *f);
static void ngx_http_matrix_feed_pruned(ngx_http_matrix_pg_query_t *q);
static ngx_int_t ngx_http_matrix_feed_make(ngx_http_matrix_feed_t *f,
    ngx_http_matrix_room_op_t *op, json_t *doc,
    ngx_http_matrix_feed_make_t *mk);
static ngx_int_t ngx_http_matrix_feed_author(ngx_http_matrix_room_op_t *op,
    ngx_http_matrix_room_head_t *h, ngx_http_matrix_feed_make_t *mk,
    json_t *msg, const char *user_id, int64_t ts, char *member);
static ngx_int_t ngx_http_matrix_feed_edit(ngx_http_matrix_room_op_t *op,
    ngx_http_matrix_room_head_t *h, ngx_http_matrix_feed_make_t *mk,
    json_t *doc);
static ngx_int_t ngx_http_matrix_feed_reaction(ngx_http_matrix_room_op_t *op,
    ngx_http_matrix_room_head_t *h, ngx_http_matrix_feed_make_t *mk,
    json_t *doc);
static ngx_int_t ngx_http_matrix_feed_redact(ngx_http_matrix_room_op_t *op,
    ngx_http_matrix_room_head_t *h, ngx_http_matrix_feed_make_t *mk,
    json_t *original);
static ngx_int_t ngx_http_matrix_feed_declined(
    ngx_http_matrix_feed_make_t *mk, const char *why);
static char *ngx_http_matrix_feed_original(ngx_http_matrix_room_op_t *op,
    json_t *original, json_t *old);


static ngx_http_matrix_pg_stmt_t  ngx_http_matrix_feed_begin =
    ngx_http_matrix_pg_stmt("BEGIN", 0);

static ngx_http_matrix_pg_stmt_t  ngx_http_matrix_feed_commit =
    ngx_http_matrix_pg_stmt("COMMIT", 0);

static ngx_http_matrix_pg_stmt_t  ngx_http_matrix_feed_next =
    ngx_http_matrix_pg_stmt("SELECT matrix_feed_next($1)", 1);

static ngx_http_matrix_pg_stmt_t  ngx_http_matrix_feed_rollback =
    ngx_http_matrix_pg_stmt("ROLLBACK", 0);

static ngx_http_matrix_pg_stmt_t  ngx_http_matrix_feed_failed =
    ngx_http_matrix_pg_stmt("SELECT matrix_feed_failed($1, $2, $3, $4)", 4);

static ngx_http_matrix_pg_stmt_t  ngx_http_matrix_feed_prune =
    ngx_http_matrix_pg_stmt(
        "DELETE FROM received_transactions WHERE received_ts < $1", 1);

static ngx_http_matrix_pg_stmt_t  ngx_http_matrix_feed_apply =
    ngx_http_matrix_pg_stmt(
        "SELECT matrix_feed_apply($1, $2, $3, $4, $5, $6, $7, $8)", 8);


/* per worker */
static ngx_http_matrix_feed_t  *ngx_http_matrix_feed;


ngx_http_matrix_srv_conf_t *
ngx_http_matrix_background_srv_conf(ngx_cycle_t *cycle)
{
    ngx_uint_t                    i;
    ngx_http_core_srv_conf_t    **cscfp;
    ngx_http_core_main_conf_t    *cmcf;
    ngx_http_matrix_srv_conf_t   *mscf;
    ngx_http_matrix_main_conf_t  *mmcf;

    mmcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_matrix_module);

    if (mmcf == NULL || mmcf->pg == NULL || !mmcf->federation) {
        return NULL;
    }

    cmcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_core_module);
    if (cmcf == NULL) {
        return NULL;
    }

    cscfp = cmcf->servers.elts;

    for (i = 0; i < cmcf->servers.nelts; i++) {
        mscf = cscfp[i]->ctx->srv_conf[ngx_http_matrix_module.ctx_index];

        if (mscf->server_name.len
            && mscf->signing_keys != NULL
            && mscf->signing_keys != NGX_CONF_UNSET_PTR
            && mscf->signing_keys->nelts)
        {
            return mscf;
        }
    }

    return NULL;
}


ngx_int_t
ngx_http_matrix_feed_init_process(ngx_cycle_t *cycle)
{
    ngx_http_matrix_feed_t       *f;
    ngx_http_matrix_srv_conf_t   *mscf;
    ngx_http_matrix_main_conf_t  *mmcf;

    mscf = ngx_http_matrix_background_srv_conf(cycle);
    if (mscf == NULL) {
        return NGX_OK;
    }

    mmcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_matrix_module);

    f = ngx_pcalloc(cycle->pool, sizeof(ngx_http_matrix_feed_t));
    if (f == NULL) {
        return NGX_ERROR;
    }

    f->log = cycle->log;
    f->mscf = mscf;
    f->ctx.mscf = mscf;
    f->timer.handler = ngx_http_matrix_feed_tick;
    f->timer.data = f;
    f->timer.log = cycle->log;
    f->timer.cancelable = 1;

    if (ngx_http_matrix_pg_listen(mmcf->pg, "matrix_silo_changes",
                                  ngx_http_matrix_feed_notify, f)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    ngx_add_timer(&f->timer, NGX_HTTP_MATRIX_FEED_PERIOD);

    ngx_http_matrix_feed = f;

    return NGX_OK;
}


static void
ngx_http_matrix_feed_notify(void *data, const char *channel,
    const char *payload)
{
    ngx_http_matrix_feed_t  *f = data;

    if (f->busy) {
        f->again = 1;
        return;
    }

    if (f->timer.timer_set) {
        ngx_del_timer(&f->timer);
    }

    ngx_add_timer(&f->timer, 1);
}


static void
ngx_http_matrix_feed_tick(ngx_event_t *ev)
{
    ngx_http_matrix_pg_t    *pg;
    ngx_http_matrix_feed_t  *f;

    f = ev->data;

    if (ngx_exiting || ngx_terminate || f->busy) {
        return;
    }

    if (!f->more) {
        f->rows = 0;
        ngx_http_matrix_feed_housekeeping(f);
    }

    pg = ngx_http_matrix_pg_of_cycle();
    if (pg == NULL) {
        ngx_add_timer(&f->timer, NGX_HTTP_MATRIX_FEED_PERIOD);
        return;
    }

    f->pool = ngx_create_pool(4096, f->log);
    if (f->pool == NULL) {
        ngx_add_timer(&f->timer, NGX_HTTP_MATRIX_FEED_PERIOD);
        return;
    }

    f->q = ngx_http_matrix_pg_query_create(pg, f->pool, f->log);
    if (f->q == NULL) {
        ngx_destroy_pool(f->pool);
        f->pool = NULL;
        ngx_add_timer(&f->timer, NGX_HTTP_MATRIX_FEED_PERIOD);
        return;
    }

    f->busy = 1;
    f->again = 0;
    f->q->data = f;
    f->q->handler = ngx_http_matrix_feed_leased;

    if (ngx_http_matrix_pg_acquire(f->q) != NGX_OK) {
        ngx_http_matrix_feed_end(f, 0);
    }
}


static void
ngx_http_matrix_feed_leased(ngx_http_matrix_pg_query_t *q)
{
    ngx_http_matrix_feed_t  *f = q->data;

    if (q->status != NGX_HTTP_MATRIX_PG_OK
        || ngx_http_matrix_feed_run(f, &ngx_http_matrix_feed_begin, NULL, 0,
                                    ngx_http_matrix_feed_began)
           != NGX_OK)
    {
        ngx_http_matrix_feed_end(f, 0);
    }
}


static void
ngx_http_matrix_feed_began(ngx_http_matrix_pg_query_t *q)
{
    ngx_http_matrix_feed_t  *f = q->data;

    if (ngx_http_matrix_feed_run(f, &ngx_http_matrix_feed_next,
                                 &f->mscf->server_name, 1,
                                 ngx_http_matrix_feed_claimed)
        != NGX_OK)
    {
        ngx_http_matrix_feed_end(f, 0);
    }
}


static void
ngx_http_matrix_feed_claimed(ngx_http_matrix_pg_query_t *q)
{
    char                         *text;
    json_t                       *doc, *seq;
    mx_err_t                      err;
    ngx_int_t                     rc;
    ngx_str_t                     values[8], room_id, nid;
    PGresult                     *res;
    ngx_http_matrix_feed_t       *f;
    ngx_http_matrix_room_op_t    *op;
    ngx_http_matrix_feed_make_t   mk;
    u_char                        nbuf[NGX_INT64_LEN + 1];

    f = q->data;
    res = q->result;

    if (PQntuples(res) != 1 || PQgetisnull(res, 0, 0)) {
        /* nothing to do */
        f->more = 0;
        ngx_http_matrix_feed_commit_now(f);
        return;
    }

    f->more = 1;

    doc = mx_json_parse(PQgetvalue(res, 0, 0), PQgetlength(res, 0, 0), 0,
                        &err);
    seq = json_object_get(doc, "seq");

    if (!json_is_integer(seq)) {
        /* changes of rooms without events dropped, more to look at */
        json_decref(doc);
        ngx_http_matrix_feed_commit_now(f);
        return;
    }

    ngx_memzero(&mk, sizeof(ngx_http_matrix_feed_make_t));

    op = ngx_pcalloc(f->pool, sizeof(ngx_http_matrix_room_op_t));
    mk.chain.records = json_array();

    if (op == NULL || mk.chain.records == NULL) {
        json_decref(doc);
        json_decref(mk.chain.records);
        ngx_http_matrix_feed_end(f, 0);
        return;
    }

    op->pool = f->pool;
    op->log = f->log;
    op->ctx = &f->ctx;
    op->q = q;

    room_id.data = (u_char *) json_string_value(json_object_get(doc,
                                                                "room_id"));
    room_id.len = room_id.data ? ngx_strlen(room_id.data) : 0;
    op->room_id = room_id;

    nid.data = nbuf;
    nid.len = ngx_sprintf(nbuf, "%L",
                          (int64_t) json_integer_value(json_object_get(doc,
                                                       "room_nid")))
              - nbuf;
    op->nid = nid;

    f->seq.data = ngx_pnalloc(f->pool, NGX_INT64_LEN + 1);
    if (f->seq.data == NULL) {
        json_decref(doc);
        json_decref(mk.chain.records);
        ngx_http_matrix_feed_end(f, 0);
        return;
    }

    f->seq.len = ngx_sprintf(f->seq.data, "%L",
                             (int64_t) json_integer_value(seq))
                 - f->seq.data;

    rc = ngx_http_matrix_feed_make(f, op, doc, &mk);

    if (rc == NGX_ERROR) {
        json_decref(doc);
        json_decref(mk.chain.records);
        free(mk.original_content);
        ngx_http_matrix_feed_fail(f, "its events could not be made", 1);
        return;
    }

    if (rc == NGX_DECLINED) {
        ngx_log_error(NGX_LOG_ERR, f->log, 0,
                      "matrix feed: change %V of room \"%V\" makes no "
                      "event, given up on: %s", &f->seq, &room_id, mk.why);

        values[0] = f->seq;
        values[1].data = (u_char *) mk.why;
        values[1].len = ngx_strlen(mk.why);
        ngx_str_set(&values[2], "t");
        ngx_str_set(&values[3], "t");

        rc = ngx_http_matrix_feed_run(f, &ngx_http_matrix_feed_failed,
                                      values, 4, ngx_http_matrix_feed_applied);

        json_decref(doc);
        json_decref(mk.chain.records);
        free(mk.original_content);

        if (rc != NGX_OK) {
            ngx_http_matrix_feed_end(f, 0);
        }

        return;
    }

    text = json_dumps(mk.chain.records, JSON_COMPACT);

    json_decref(mk.chain.records);

    if (text == NULL) {
        json_decref(doc);
        free(mk.original_content);
        ngx_http_matrix_feed_end(f, 0);
        return;
    }

    values[0] = nid;
    values[1] = f->seq;
    values[2] = f->mscf->server_name;
    values[3].data = (u_char *) text;
    values[3].len = ngx_strlen(text);
    values[4].data = (u_char *) mk.original_nid;
    values[4].len = mk.original_nid ? ngx_strlen(mk.original_nid) : 0;
    values[5].data = (u_char *) mk.original_content;
    values[5].len = mk.original_content ? ngx_strlen(mk.original_content)
                                        : 0;
    values[6].data = (u_char *) mk.redact;
    values[6].len = mk.redact ? ngx_strlen(mk.redact) : 0;
    values[7].data = (u_char *) mk.reaction;
    values[7].len = mk.reaction ? ngx_strlen(mk.reaction) : 0;

    /* the parameters are copied */
    rc = ngx_http_matrix_feed_run(f, &ngx_http_matrix_feed_apply, values, 8,
                                  ngx_http_matrix_feed_applied);

    free(text);
    free(mk.original_content);
    json_decref(doc);

    if (rc != NGX_OK) {
        ngx_http_matrix_feed_end(f, 0);
    }
}


static void
ngx_http_matrix_feed_applied(ngx_http_matrix_pg_query_t *q)
{
    ngx_http_matrix_feed_commit_now(q->data);
}


static void
ngx_http_matrix_feed_commit_now(ngx_http_matrix_feed_t *f)
{
    if (ngx_http_matrix_feed_run(f, &ngx_http_matrix_feed_commit, NULL, 0,
                                 ngx_http_matrix_feed_committed)
        != NGX_OK)
    {
        ngx_http_matrix_feed_end(f, 0);
    }
}


static void
ngx_http_matrix_feed_committed(ngx_http_matrix_pg_query_t *q)
{
    ngx_http_matrix_feed_t  *f = q->data;

    ngx_http_matrix_sender_kick();

    f->rows++;

    ngx_http_matrix_feed_end(f, f->more);
}


/* a statement of the change's transaction; errors end the pass */

static ngx_int_t
ngx_http_matrix_feed_run(ngx_http_matrix_feed_t *f,
    ngx_http_matrix_pg_stmt_t *stmt, ngx_str_t *values, ngx_uint_t n,
    ngx_http_matrix_pg_handler_pt then)
{
    ngx_uint_t                   i;
    ngx_http_matrix_pg_query_t  *q;

    q = f->q;
    q->stmt = stmt;
    q->sql = NULL;
    q->nparams = n;
    q->handler = ngx_http_matrix_feed_step;
    f->then = then;

    for (i = 0; i < n; i++) {
        if (values[i].data == NULL) {
            q->values[i] = NULL;
            q->lengths[i] = 0;
            continue;
        }

        if (ngx_http_matrix_pg_param(q, i, &values[i]) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    return ngx_http_matrix_pg_run(q);
}


static void
ngx_http_matrix_feed_step(ngx_http_matrix_pg_query_t *q)
{
    const char              *why;
    ngx_http_matrix_feed_t  *f = q->data;

    if (q->status != NGX_HTTP_MATRIX_PG_OK) {
        ngx_log_error(NGX_LOG_ERR, f->log, 0,
                      "matrix feed: change %V: %s%s%V", &f->seq,
                      ngx_http_matrix_pg_status_text(q->status),
                      q->error.len ? ": " : "", &q->error);

        if (q->status == NGX_HTTP_MATRIX_PG_UNAVAILABLE
            || q->status == NGX_HTTP_MATRIX_PG_LOST)
        {
            /* the database, not the change: nothing can be written */
            ngx_http_matrix_feed_end(f, 0);
            return;
        }

        if (q->status == NGX_HTTP_MATRIX_PG_TIMEOUT || q->result == NULL) {
            ngx_http_matrix_feed_fail(f,
                                  ngx_http_matrix_pg_status_text(q->status),
                                  0);
            return;
        }

        why = PQresultErrorField(q->result, PG_DIAG_MESSAGE_PRIMARY);

        ngx_http_matrix_feed_fail(f, why ? why : "the statement failed",
                                  !ngx_http_matrix_feed_passing(
                                      PQresultErrorField(q->result,
                                                         PG_DIAG_SQLSTATE)));
        return;
    }

    f->then(q);
}


/* the change is done or abandoned (its transaction rolled back) */

static void
ngx_http_matrix_feed_end(ngx_http_matrix_feed_t *f, ngx_uint_t more)
{
    ngx_pool_t  *pool;
    ngx_msec_t   wait;

    pool = f->pool;

    if (f->q) {
        ngx_http_matrix_pg_release(f->q);
    }

    f->pool = NULL;
    f->q = NULL;
    f->busy = 0;
    f->failing = 0;
    f->seq.len = 0;

    if (!more) {
        f->more = 0;
    }

    if (!ngx_exiting && !ngx_terminate) {
        /* after a pass's worth of changes, the others' turn, then more */
        wait = (more || f->again) ? 1 : NGX_HTTP_MATRIX_FEED_PERIOD;

        if (f->timer.timer_set) {
            ngx_del_timer(&f->timer);
        }

        if (more && f->rows < NGX_HTTP_MATRIX_FEED_ROWS) {
            ngx_add_timer(&f->timer, 1);

        } else {
            if (more) {
                f->rows = 0;
            }

            ngx_add_timer(&f->timer, wait);
        }
    }

    if (pool) {
        ngx_destroy_pool(pool);
    }
}


/*
 * The change's transaction failed: rolled back, then, on the same
 * connection, its attempt recorded (matrix_feed_failed(): it waits, 1 s
 * doubling to 5 min, while the other rooms' changes go on).  An error of
 * the change's own counts: given up on after 10; a passing one (a
 * timeout, a deadlock, the server short of resources) does not.  So the
 * next pass never finds it due before its wait is written.
 */

static void
ngx_http_matrix_feed_fail(ngx_http_matrix_feed_t *f, const char *error,
    ngx_uint_t count)
{
    if (f->seq.len == 0 || f->failing) {
        ngx_http_matrix_feed_end(f, 0);
        return;
    }

    f->failing = 1;
    f->count = count;

    f->error.len = ngx_min(ngx_strlen(error), 1000);
    f->error.data = ngx_pnalloc(f->pool, f->error.len);

    if (f->error.data == NULL) {
        ngx_http_matrix_feed_end(f, 0);
        return;
    }

    ngx_memcpy(f->error.data, error, f->error.len);

    if (ngx_http_matrix_feed_run(f, &ngx_http_matrix_feed_rollback, NULL, 0,
                                 ngx_http_matrix_feed_rolled_back)
        != NGX_OK)
    {
        ngx_http_matrix_feed_end(f, 0);
    }
}


static void
ngx_http_matrix_feed_rolled_back(ngx_http_matrix_pg_query_t *q)
{
    ngx_str_t                values[4];
    ngx_http_matrix_feed_t  *f = q->data;

    values[0] = f->seq;
    values[1] = f->error;
    ngx_str_set(&values[2], "f");

    if (f->count) {
        ngx_str_set(&values[3], "t");

    } else {
        ngx_str_set(&values[3], "f");
    }

    if (ngx_http_matrix_feed_run(f, &ngx_http_matrix_feed_failed, values, 4,
                                 ngx_http_matrix_feed_recorded)
        != NGX_OK)
    {
        ngx_http_matrix_feed_end(f, 0);
    }
}


static void
ngx_http_matrix_feed_recorded(ngx_http_matrix_pg_query_t *q)
{
    PGresult                *res;
    ngx_http_matrix_feed_t  *f;

    f = q->data;
    res = q->result;

    if (PQntuples(res) == 1 && PQgetvalue(res, 0, 0)[0] == 't') {
        ngx_log_error(NGX_LOG_ERR, f->log, 0,
                      "matrix feed: change %V failed 10 times, given up "
                      "on (matrix.silo_changes, failed_at)", &f->seq);
    }

    /* the others go on at once */
    ngx_http_matrix_feed_end(f, 1);
}


/*
 * SQLSTATEs of passing trouble, not of the change: serialization
 * failures and deadlocks (class 40), a lock not had (55P03), a statement
 * cancelled (57014) or the server shutting down (57P0x), resources
 * short (class 53), the connection (class 08).
 */

static ngx_uint_t
ngx_http_matrix_feed_passing(const char *sqlstate)
{
    if (sqlstate == NULL || ngx_strlen(sqlstate) != 5) {
        return 0;
    }

    return ngx_strncmp(sqlstate, "40", 2) == 0
           || ngx_strncmp(sqlstate, "53", 2) == 0
           || ngx_strncmp(sqlstate, "08", 2) == 0
           || ngx_strncmp(sqlstate, "57P0", 4) == 0
           || ngx_strcmp(sqlstate, "55P03") == 0
           || ngx_strcmp(sqlstate, "57014") == 0;
}


/*
 * Received transactions are kept for a day: a peer retries one within
 * minutes, and an answer kept longer serves no one.
 */

static void
ngx_http_matrix_feed_housekeeping(ngx_http_matrix_feed_t *f)
{
    ngx_str_t                    value;
    ngx_pool_t                  *pool;
    ngx_http_matrix_pg_t        *pg;
    ngx_http_matrix_pg_query_t  *q;
    u_char                       buf[NGX_INT64_LEN];

    if (f->pruned
        && ngx_current_msec - f->pruned < NGX_HTTP_MATRIX_FEED_HOUSEKEEPING)
    {
        return;
    }

    f->pruned = ngx_current_msec ? ngx_current_msec : 1;

    pg = ngx_http_matrix_pg_of_cycle();
    if (pg == NULL) {
        return;
    }

    pool = ngx_create_pool(1024, f->log);
    if (pool == NULL) {
        return;
    }

    q = ngx_http_matrix_pg_query_create(pg, pool, f->log);
    if (q == NULL) {
        ngx_destroy_pool(pool);
        return;
    }

    value.data = buf;
    value.len = ngx_sprintf(buf, "%L", ngx_http_matrix_now_ms()
                                       - NGX_HTTP_MATRIX_FEED_TXN_KEEP)
                - buf;

    q->stmt = &ngx_http_matrix_feed_prune;
    q->nparams = 1;
    q->handler = ngx_http_matrix_feed_pruned;
    q->data = f;

    if (ngx_http_matrix_pg_param(q, 0, &value) != NGX_OK
        || ngx_http_matrix_pg_run(q) != NGX_OK)
    {
        ngx_destroy_pool(pool);
    }
}


static void
ngx_http_matrix_feed_pruned(ngx_http_matrix_pg_query_t *q)
{
    ngx_http_matrix_feed_t  *f = q->data;

    if (q->status != NGX_HTTP_MATRIX_PG_OK) {
        ngx_log_error(NGX_LOG_WARN, f->log, 0,
                      "matrix feed: received transactions not pruned: %s%s%V",
                      ngx_http_matrix_pg_status_text(q->status),
                      q->error.len ? ": " : "", &q->error);
    }

    ngx_destroy_pool(q->pool);
}


static ngx_int_t
ngx_http_matrix_feed_declined(ngx_http_matrix_feed_make_t *mk,
    const char *why)
{
    ngx_cpystrn((u_char *) mk->why, (u_char *) why, MX_ERR_LEN);

    return NGX_DECLINED;
}


/*
 * The events of a change, in mk->chain.records: NGX_DECLINED when the
 * change cannot make any (mk->why), NGX_ERROR when they could not be made
 * now (memory, signing).
 */

static ngx_int_t
ngx_http_matrix_feed_make(ngx_http_matrix_feed_t *f,
    ngx_http_matrix_room_op_t *op, json_t *doc,
    ngx_http_matrix_feed_make_t *mk)
{
    json_t                       *msg, *original, *content;
    int64_t                       ts;
    unsigned                      recipe;
    mx_err_t                      err;
    const char                   *kind, *reply, *thread, *id, *version,
                                 *auth[3], *user_id;
    char                          member[MX_EVENT_ID_LEN + 1];
    char                          event_id[MX_EVENT_ID_LEN + 1];
    ngx_http_matrix_room_head_t  *h;

    version = json_string_value(json_object_get(doc, "version"));
    kind = json_string_value(json_object_get(doc, "kind"));
    msg = json_object_get(doc, "message");
    original = json_object_get(doc, "original");

    if (version == NULL || kind == NULL || op->room_id.len == 0) {
        return ngx_http_matrix_feed_declined(mk, "no room");
    }

    op->version = mx_room_version_find(version, ngx_strlen(version));
    if (op->version == NULL || !op->version->supported) {
        return ngx_http_matrix_feed_declined(mk, "room version not supported");
    }

    h = ngx_http_matrix_room_head_parse(op, json_object_get(doc, "head"));
    if (h == NULL) {
        return NGX_ERROR;
    }

    mk->chain.prev = h->prev_events;
    mk->chain.depth = h->depth - 1;

    if (json_is_string(json_object_get(doc, "about"))) {
        return ngx_http_matrix_feed_reaction(op, h, mk, doc);
    }

    /* gone, or deleted: a redaction of what mirrors it */

    if (!json_is_object(msg) || json_is_true(json_object_get(msg, "deleted")))
    {
        mk->redact = json_string_value(json_object_get(msg, "id"));
        if (mk->redact == NULL) {
            mk->redact = json_string_value(json_object_get(original,
                                                           "silo_message_id"));
        }

        return ngx_http_matrix_feed_redact(op, h, mk, original);
    }

    if (json_is_true(json_object_get(msg, "mine"))) {
        /* the module wrote it, for a Matrix user's event */
        return NGX_OK;
    }

    if (json_is_object(original)) {
        if (ngx_strcmp(kind, "update") != 0
            || !json_is_object(json_object_get(doc, "old"))
            || !json_is_null(json_object_get(original, "redacted_by")))
        {
            /* mirrored already, or a change Matrix does not see */
            return NGX_OK;
        }

        return ngx_http_matrix_feed_edit(op, h, mk, doc);
    }

    if (ngx_strcmp(kind, "delete") == 0) {
        return NGX_OK;
    }

    /* a new message (or one whose insert we never saw) */

    id = json_string_value(json_object_get(msg, "id"));
    user_id = json_string_value(json_object_get(msg, "user_id"));
    ts = json_integer_value(json_object_get(msg, "ts"));

    if (id == NULL || user_id == NULL) {
        return ngx_http_matrix_feed_declined(mk,
                   "its author is not in the users view");
    }

    if (ngx_http_matrix_feed_author(op, h, mk, msg, user_id, ts, member)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    reply = json_string_value(json_object_get(msg, "reply_event_id"));
    thread = json_string_value(json_object_get(msg, "thread_event_id"));
    recipe = mx_silo_message_recipe(reply != NULL, thread != NULL);

    content = mx_silo_message_content(recipe,
                  json_string_value(json_object_get(msg, "body")),
                  json_string_value(json_object_get(msg, "html")),
                  reply, thread, &err);
    if (content == NULL) {
        return ngx_http_matrix_feed_declined(mk, err.msg);
    }

    auth[0] = h->create->event_id;
    auth[1] = h->power_levels ? h->power_levels->event_id : NULL;
    auth[2] = member;

    if (auth[1] == NULL) {
        json_decref(content);
        return ngx_http_matrix_feed_declined(mk,
                   "the room has no power levels");
    }

    return ngx_http_matrix_room_chain_event(op, &mk->chain, "m.room.message",
                                            NULL, user_id, content, ts, auth,
                                            3, recipe, id, event_id);
}


/* the sender's join event in force, made now (lazily) if there is none */

static ngx_int_t
ngx_http_matrix_feed_author(ngx_http_matrix_room_op_t *op,
    ngx_http_matrix_room_head_t *h, ngx_http_matrix_feed_make_t *mk,
    json_t *msg, const char *user_id, int64_t ts, char *member)
{
    ngx_str_t                        id;
    mx_event_t                      *ev, *creator;
    const char                      *rule;
    ngx_http_matrix_room_authors_t   a;

    id.data = (u_char *) user_id;
    id.len = ngx_strlen(user_id);

    ev = ngx_http_matrix_room_head_member(h, &id);

    if (ev != NULL && ev->membership != NULL
        && ngx_strcmp(ev->membership, "join") == 0)
    {
        ngx_cpystrn((u_char *) member, (u_char *) ev->event_id,
                    MX_EVENT_ID_LEN + 1);
        return NGX_OK;
    }

    ngx_memzero(&a, sizeof(ngx_http_matrix_room_authors_t));

    if (ngx_http_matrix_room_user(op, NGX_HTTP_MATRIX_SERVER_USER,
                                  &a.creator)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    creator = ngx_http_matrix_room_head_member(h, &a.creator);

    if (h->power_levels == NULL || h->join_rules == NULL || creator == NULL) {
        return NGX_ERROR;
    }

    rule = mx_event_content_string(h->join_rules, "join_rule");

    a.create = h->create->event_id;
    a.power_levels = h->power_levels->event_id;
    a.join_rules = h->join_rules->event_id;
    a.creator_member = creator->event_id;
    a.is_public = (rule != NULL && ngx_strcmp(rule, "public") == 0);

    if (ngx_http_matrix_room_join_author(op, &mk->chain, &a,
            json_string_value(json_object_get(msg, "localpart")),
            json_string_value(json_object_get(msg, "displayname")),
            json_string_value(json_object_get(msg, "avatar_url")),
            ts, member)
        != NGX_OK
        || member[0] == '\0')
    {
        return NGX_ERROR;
    }

    return NGX_OK;
}


/*
 * An edit in place: the original's content, which the silo's row no
 * longer gives, kept in its row (if the old values give its hash), and
 * an m.replace event by the same sender (client-server-api.md, "Event
 * replacements").
 */

static ngx_int_t
ngx_http_matrix_feed_edit(ngx_http_matrix_room_op_t *op,
    ngx_http_matrix_room_head_t *h, ngx_http_matrix_feed_make_t *mk,
    json_t *doc)
{
    json_t      *msg, *original, *old, *content, *fresh, *rel;
    mx_err_t     err;
    ngx_str_t    star;
    const char  *sender, *body, *html, *orig_id, *auth[3];
    char         member[MX_EVENT_ID_LEN + 1];
    char         event_id[MX_EVENT_ID_LEN + 1];

    msg = json_object_get(doc, "message");
    original = json_object_get(doc, "original");
    old = json_object_get(doc, "old");

    body = json_string_value(json_object_get(msg, "body"));
    html = json_string_value(json_object_get(msg, "html"));
    sender = json_string_value(json_object_get(original, "sender"));
    orig_id = json_string_value(json_object_get(original, "event_id"));

    if (body == NULL || sender == NULL || orig_id == NULL) {
        return ngx_http_matrix_feed_declined(mk,
                   "the edit has no text or no original");
    }

    if (json_equal(json_object_get(old, "body"), json_object_get(msg, "body"))
        && json_equal(json_object_get(old, "html"),
                      json_object_get(msg, "html")))
    {
        return NGX_OK;
    }

    if (!json_is_true(json_object_get(original, "stored"))) {
        mk->original_content = ngx_http_matrix_feed_original(op, original,
                                                             old);
        if (mk->original_content) {
            mk->original_nid = json_string_value(json_object_get(original,
                                                                 "nid_text"));
        }
    }

    if (ngx_http_matrix_feed_author(op, h, mk, msg, sender,
                                    ngx_http_matrix_now_ms(), member)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    fresh = mx_silo_message_content(MX_RECIPE_TEXT, body, html, NULL, NULL,
                                    &err);
    if (fresh == NULL) {
        return ngx_http_matrix_feed_declined(mk, err.msg);
    }

    /* the fallback for clients without edits: "* " and the new text */

    star.len = 2 + ngx_strlen(body) + (html ? ngx_strlen(html) : 0) + 1;
    star.data = ngx_pnalloc(op->pool, star.len);
    if (star.data == NULL) {
        json_decref(fresh);
        return NGX_ERROR;
    }

    content = json_deep_copy(fresh);
    rel = json_pack("{s:s,s:s}", "rel_type", "m.replace", "event_id",
                    orig_id);

    if (content == NULL || rel == NULL) {
        json_decref(fresh);
        json_decref(content);
        json_decref(rel);
        return NGX_ERROR;
    }

    *ngx_sprintf(star.data, "* %s", body) = '\0';
    json_object_set_new(content, "body", json_string((char *) star.data));

    if (html) {
        *ngx_sprintf(star.data, "* %s", html) = '\0';
        json_object_set_new(content, "formatted_body",
                            json_string((char *) star.data));
    }

    json_object_set_new(content, "m.new_content", fresh);
    json_object_set_new(content, "m.relates_to", rel);

    auth[0] = h->create->event_id;
    auth[1] = h->power_levels->event_id;
    auth[2] = member;

    return ngx_http_matrix_room_chain_event(op, &mk->chain, "m.room.message",
                                            NULL, sender, content,
                                            ngx_http_matrix_now_ms(), auth, 3,
                                            0, NULL, event_id);
}


/*
 * The original's content made again from the old values with its own
 * recipe: canonical JSON if it gives the signed hash, else NULL (logged:
 * the event will be served redacted).  Free with free().
 */

static char *
ngx_http_matrix_feed_original(ngx_http_matrix_room_op_t *op,
    json_t *original, json_t *old)
{
    json_t          *content, *pdu, *prev, *auth;
    size_t           i;
    mx_buf_t         buf;
    mx_err_t         err;
    const char      *prev_ids[64], *auth_ids[16], *hex;
    u_char           want[2 * MX_SHA256_LEN + 1];
    unsigned char    hash[MX_SHA256_LEN];
    mx_pdu_parts_t   parts;

    content = mx_silo_message_content(
                  json_integer_value(json_object_get(original, "recipe")),
                  json_string_value(json_object_get(old, "body")),
                  json_string_value(json_object_get(old, "html")),
                  json_string_value(json_object_get(original,
                                                    "reply_event_id")),
                  json_string_value(json_object_get(original,
                                                    "thread_event_id")),
                  &err);

    prev = json_object_get(original, "prev_ids");
    auth = json_object_get(original, "auth_ids");
    hex = json_string_value(json_object_get(original, "hash"));

    if (content == NULL || json_array_size(prev) > 64
        || json_array_size(auth) > 16 || hex == NULL
        || ngx_strlen(hex) != 2 * MX_SHA256_LEN)
    {
        json_decref(content);
        goto unknown;
    }

    for (i = 0; i < json_array_size(prev); i++) {
        prev_ids[i] = json_string_value(json_array_get(prev, i));
    }

    for (i = 0; i < json_array_size(auth); i++) {
        auth_ids[i] = json_string_value(json_array_get(auth, i));
    }

    ngx_memzero(&parts, sizeof(mx_pdu_parts_t));

    parts.room_id = json_string_value(json_object_get(original, "room_id"));
    parts.sender = json_string_value(json_object_get(original, "sender"));
    parts.type = json_string_value(json_object_get(original, "type"));
    parts.content = content;
    parts.prev_events = prev_ids;
    parts.nprev = json_array_size(prev);
    parts.auth_events = auth_ids;
    parts.nauth = json_array_size(auth);
    parts.depth = json_integer_value(json_object_get(original, "depth"));
    parts.origin_server_ts = json_integer_value(json_object_get(original,
                                                    "origin_server_ts"));

    pdu = mx_pdu_build(&parts, &err);

    if (pdu == NULL || mx_event_content_hash(pdu, hash, &err) != MX_OK) {
        json_decref(pdu);
        json_decref(content);
        goto unknown;
    }

    json_decref(pdu);

    *ngx_hex_dump(want, hash, MX_SHA256_LEN) = '\0';

    if (ngx_strcasecmp(want, (u_char *) hex) != 0) {
        json_decref(content);
        goto unknown;
    }

    mx_buf_init(&buf);

    if (mx_json_canonical(content, &buf, &err) != MX_OK
        || mx_buf_append(&buf, "", 1) != MX_OK)
    {
        mx_buf_free(&buf);
        json_decref(content);
        goto unknown;
    }

    json_decref(content);

    return (char *) buf.data;

unknown:

    ngx_log_error(NGX_LOG_WARN, op->log, 0,
                  "matrix feed: the original text of event \"%s\" is not "
                  "known (the trigger keeps no old values?): it will be "
                  "served redacted",
                  json_string_value(json_object_get(original, "event_id")));

    return NULL;
}


/*
 * A silo user's reaction: an m.reaction annotating the event of the
 * message (client-server-api.md, "Event annotations and reactions"),
 * after the user's join if needed; once removed, the redaction of that
 * m.reaction.  A reaction the module wrote for a Matrix user, or one
 * sent already, makes nothing.
 */

static ngx_int_t
ngx_http_matrix_feed_reaction(ngx_http_matrix_room_op_t *op,
    ngx_http_matrix_room_head_t *h, ngx_http_matrix_feed_make_t *mk,
    json_t *doc)
{
    json_t      *x, *original, *content;
    int64_t      ts;
    const char  *key, *target, *user_id, *auth[3];
    char         member[MX_EVENT_ID_LEN + 1];
    char         event_id[MX_EVENT_ID_LEN + 1];

    x = json_object_get(doc, "reaction");
    original = json_object_get(doc, "original");

    mk->reaction = json_string_value(json_object_get(doc, "reaction_id"));

    if (!json_is_object(x) || json_is_true(json_object_get(x, "removed"))) {
        return ngx_http_matrix_feed_redact(op, h, mk, original);
    }

    if (json_is_true(json_object_get(x, "mine")) || json_is_object(original))
    {
        /* a Matrix user's, written by the module; or sent already */
        return NGX_OK;
    }

    key = json_string_value(json_object_get(x, "key"));
    user_id = json_string_value(json_object_get(x, "user_id"));
    target = json_string_value(json_object_get(x, "target"));
    ts = json_integer_value(json_object_get(x, "ts"));

    if (user_id == NULL) {
        return ngx_http_matrix_feed_declined(mk,
                   "the reaction's author is not in the users view");
    }

    if (key == NULL || key[0] == '\0') {
        return ngx_http_matrix_feed_declined(mk, "the reaction has no key");
    }

    if (target == NULL) {
        return ngx_http_matrix_feed_declined(mk,
                   "no event mirrors the message it reacts to");
    }

    if (h->power_levels == NULL) {
        return ngx_http_matrix_feed_declined(mk,
                   "the room has no power levels");
    }

    if (ngx_http_matrix_feed_author(op, h, mk, x, user_id, ts, member)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    content = json_pack("{s:{s:s,s:s,s:s}}", "m.relates_to",
                        "rel_type", "m.annotation", "event_id", target,
                        "key", key);

    auth[0] = h->create->event_id;
    auth[1] = h->power_levels->event_id;
    auth[2] = member;

    return ngx_http_matrix_room_chain_event(op, &mk->chain, "m.reaction",
                                            NULL, user_id, content, ts, auth,
                                            3, 0, NULL, event_id);
}


/*
 * m.room.redaction of the original, a message's first event or a
 * reaction's, unless there is none or it is redacted already
 */

static ngx_int_t
ngx_http_matrix_feed_redact(ngx_http_matrix_room_op_t *op,
    ngx_http_matrix_room_head_t *h, ngx_http_matrix_feed_make_t *mk,
    json_t *original)
{
    json_t      *content;
    ngx_str_t    id, creator;
    mx_event_t  *ev;
    const char  *sender, *target, *auth[3];
    char         event_id[MX_EVENT_ID_LEN + 1];

    if (!json_is_object(original)
        || !json_is_null(json_object_get(original, "redacted_by")))
    {
        return NGX_OK;
    }

    target = json_string_value(json_object_get(original, "event_id"));
    sender = json_string_value(json_object_get(original, "sender"));

    if (target == NULL || sender == NULL || h->power_levels == NULL) {
        return ngx_http_matrix_feed_declined(mk,
                   "the event to redact is unknown");
    }

    /* its author, if still joined, else this server's user */

    id.data = (u_char *) sender;
    id.len = ngx_strlen(sender);
    ev = ngx_http_matrix_room_head_member(h, &id);

    if (ev == NULL || ev->membership == NULL
        || ngx_strcmp(ev->membership, "join") != 0)
    {
        if (ngx_http_matrix_room_user(op, NGX_HTTP_MATRIX_SERVER_USER,
                                      &creator)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        ev = ngx_http_matrix_room_head_member(h, &creator);
        if (ev == NULL) {
            return NGX_ERROR;
        }

        sender = (char *) creator.data;
    }

    if (op->version->redacts_in_content) {
        content = json_pack("{s:s}", "redacts", target);

    } else {
        content = json_object();
        mk->chain.redacts = target;
    }

    auth[0] = h->create->event_id;
    auth[1] = h->power_levels->event_id;
    auth[2] = ev->event_id;

    return ngx_http_matrix_room_chain_event(op, &mk->chain,
                                            "m.room.redaction", NULL, sender,
                                            content, ngx_http_matrix_now_ms(),
                                            auth, 3, 0, NULL, event_id);
}
