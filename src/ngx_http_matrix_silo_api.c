/*
 * The writes border: what Matrix users do reaches the silo through its
 * internal API (docs/silo-contract.md, "Writes"), from the durable queue
 * silo_outbox that the event's own transaction filled.
 *
 * A room's writes go to the silo one at a time, in order; different
 * rooms' side by side.  Each worker has NGX_HTTP_MATRIX_SILO_LANES lanes,
 * a room each.  A claim (every second, at once when something was just
 * queued, and whenever a lane frees) takes, for its free lanes, the runs
 * of rooms whose first write is due: up to NGX_HTTP_MATRIX_SILO_RUN of a
 * room's writes, leased together for 10 min (matrix_silo_claim(),
 * sql/011_silo_delivery.sql: the head locked SKIP LOCKED, then its lease
 * moved, so that workers and nginx nodes never hold one room at once),
 * without reading the whole queue.  A lane sends its run one write after
 * the other, each once the one before is answered: 2xx done; 4xx refused
 * for good, logged, done too; 5xx, no answer, and the 4xx that say "not
 * now" (401, 408, 429) stop the run: that write waits (1 s doubling to
 * 5 min), the rest of the run are given back unsent, behind it.  The end
 * of a run is one statement (matrix_silo_settle()): the rows done go,
 * the failed one and the rest are set as above.  A worker that dies, or
 * a settle that fails, mid-run leaves the run leased, answered rows
 * included: when the lease ends they are sent again from the room's
 * first, in order; the silo's writes are idempotent by event ID, so a
 * row sent twice in turn does no harm, and never twice at once.
 */


#include "ngx_http_matrix_module.h"
#include "ngx_http_matrix_silo_api.h"
#include "ngx_http_matrix_http.h"
#include "ngx_http_matrix_pg.h"
#include "ngx_http_matrix_feed.h"


#define NGX_HTTP_MATRIX_SILO_PERIOD     1000
#define NGX_HTTP_MATRIX_SILO_LANES      16        /* rooms at once */
#define NGX_HTTP_MATRIX_SILO_RUN        32        /* a room's writes per
                                                     claim */
#define NGX_HTTP_MATRIX_SILO_LEASE      600000    /* a run, timeouts
                                                     included */
#define NGX_HTTP_MATRIX_SILO_BACKOFF    300000    /* the longest wait */
#define NGX_HTTP_MATRIX_SILO_MARGIN     120000    /* > a write's timeout */


typedef struct ngx_http_matrix_silo_api_s  ngx_http_matrix_silo_api_t;


typedef struct {
    ngx_str_t                       nid;
    ngx_str_t                       attempts;
    ngx_str_t                       kind;
    ngx_str_t                       silo_room_id;
    ngx_str_t                       pdu;
    ngx_str_t                       event_id;
    ngx_str_t                       silo_user_id;  /* of an invite */
    ngx_str_t                       room_name;     /* of an invite */
    ngx_str_t                       context;       /* of a message, edit,
                                                      deletion: JSON */
} ngx_http_matrix_silo_row_t;


/* a room's run, sent in order */

typedef struct {
    ngx_http_matrix_silo_api_t     *sa;
    ngx_pool_t                     *pool;         /* of the run; NULL: the
                                                     lane is free */
    ngx_http_matrix_pg_query_t     *q;
    ngx_http_matrix_silo_row_t     *rows;
    ngx_uint_t                      nrows;
    ngx_uint_t                      next;         /* those before: done */
    ngx_msec_t                      leased;       /* when claimed */
} ngx_http_matrix_silo_lane_t;


struct ngx_http_matrix_silo_api_s {
    ngx_event_t                     timer;
    ngx_pool_t                     *pool;         /* of a claim */
    ngx_http_matrix_pg_query_t     *q;
    ngx_uint_t                      asked;        /* runs, by the claim */
    ngx_uint_t                      busy;         /* lanes with a run */
    ngx_log_t                      *log;
    ngx_str_t                       server_name;  /* whose users a message
                                                     may mention */
    ngx_http_matrix_silo_lane_t     lanes[NGX_HTTP_MATRIX_SILO_LANES];
    unsigned                        claiming:1;
    unsigned                        again:1;
};


static void ngx_http_matrix_silo_schedule(ngx_http_matrix_silo_api_t *sa,
    ngx_msec_t delay);
static void ngx_http_matrix_silo_tick(ngx_event_t *ev);
static void ngx_http_matrix_silo_claimed(ngx_http_matrix_pg_query_t *q);
static ngx_int_t ngx_http_matrix_silo_lane_start(
    ngx_http_matrix_silo_api_t *sa, PGresult *res, int first, int n);
static void ngx_http_matrix_silo_claim_end(ngx_http_matrix_silo_api_t *sa,
    ngx_uint_t runs);
static void ngx_http_matrix_silo_send(ngx_http_matrix_silo_lane_t *lane);
static ngx_int_t ngx_http_matrix_silo_write(ngx_http_matrix_silo_lane_t *lane,
    ngx_http_matrix_silo_row_t *row, ngx_http_matrix_http_req_t *hr);
static json_t *ngx_http_matrix_silo_message(ngx_http_matrix_silo_row_t *row,
    json_t *pdu, ngx_str_t *path, ngx_uint_t *quiet);
static json_t *ngx_http_matrix_silo_reaction(ngx_http_matrix_silo_row_t *row,
    json_t *pdu, json_t *ctx, json_t *sender, ngx_str_t *path);
static void ngx_http_matrix_silo_answered(ngx_http_matrix_http_req_t *hr);
static void ngx_http_matrix_silo_settle(ngx_http_matrix_silo_lane_t *lane,
    ngx_str_t *failed);
static ngx_int_t ngx_http_matrix_silo_seqs(ngx_http_matrix_silo_lane_t *lane,
    ngx_uint_t from, ngx_uint_t to, ngx_str_t *list);
static void ngx_http_matrix_silo_settled(ngx_http_matrix_pg_query_t *q);
static void ngx_http_matrix_silo_lane_end(ngx_http_matrix_silo_lane_t *lane);


/* per worker */
static ngx_http_matrix_silo_api_t  *ngx_http_matrix_silo;


/*
 * The runs claimed, each in order, with what each write needs: the
 * event, the silo's room (of a membership), the silo's user (of an
 * invite: the users view by the invitee's localpart) and the room's name
 * as the inviting server described it; of a message, edit, deletion or
 * reaction, its sender's display name, the silo messages its relations
 * name and the silo users it mentions (matrix_outbox_context()).
 */

static ngx_http_matrix_pg_stmt_t  ngx_http_matrix_silo_claim =
    ngx_http_matrix_pg_stmt(
        "WITH c AS (SELECT * FROM matrix_silo_claim($1, $2, $3, $4)) "
        "SELECT c.seq, c.head, c.attempts, c.kind, "
        "coalesce((SELECT r.silo_room_id FROM matrix_rooms r "
        "WHERE r.room_nid = c.room_nid), i.room_id), "
        "coalesce((SELECT e.pdu FROM events e "
        "WHERE e.event_id = c.event_id), i.pdu), c.event_id, "
        "(SELECT u.user_id FROM users u WHERE u.localpart = "
        "split_part(substr(i.invitee, 2), ':', 1)), "
        "(SELECT s -> 'content' ->> 'name' "
        "FROM jsonb_array_elements(i.invite_room_state) s "
        "WHERE s ->> 'type' = 'm.room.name' LIMIT 1), "
        "CASE WHEN c.kind IN ('message', 'edit', 'deletion', 'reaction') "
        "THEN matrix_outbox_context(c.room_nid, (SELECT e.pdu FROM events e "
        "WHERE e.event_id = c.event_id), $5)::text END "
        "FROM c LEFT JOIN invites i ON c.kind = 'invite' "
        "AND i.event_id = c.event_id ORDER BY c.head, c.seq", 5);

static ngx_http_matrix_pg_stmt_t  ngx_http_matrix_silo_end =
    ngx_http_matrix_pg_stmt(
        "SELECT matrix_silo_settle($1::bigint[], $2::bigint, $3::bigint, "
        "$4, $5::bigint[])", 5);


ngx_int_t
ngx_http_matrix_silo_api_init_process(ngx_cycle_t *cycle)
{
    ngx_uint_t                    i;
    ngx_http_matrix_silo_api_t   *sa;
    ngx_http_matrix_srv_conf_t   *mscf;
    ngx_http_matrix_main_conf_t  *mmcf;

    mmcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_matrix_module);

    if (mmcf == NULL || mmcf->silo_api == NULL || mmcf->pg == NULL) {
        return NGX_OK;
    }

    sa = ngx_pcalloc(cycle->pool, sizeof(ngx_http_matrix_silo_api_t));
    if (sa == NULL) {
        return NGX_ERROR;
    }

    sa->log = cycle->log;

    for (i = 0; i < NGX_HTTP_MATRIX_SILO_LANES; i++) {
        sa->lanes[i].sa = sa;
    }

    mscf = ngx_http_matrix_background_srv_conf(cycle);
    if (mscf != NULL) {
        sa->server_name = mscf->server_name;
    }

    sa->timer.handler = ngx_http_matrix_silo_tick;
    sa->timer.data = sa;
    sa->timer.log = cycle->log;
    sa->timer.cancelable = 1;

    ngx_add_timer(&sa->timer, NGX_HTTP_MATRIX_SILO_PERIOD);

    ngx_http_matrix_silo = sa;

    return NGX_OK;
}


void
ngx_http_matrix_silo_api_kick(void)
{
    ngx_http_matrix_silo_api_t  *sa;

    sa = ngx_http_matrix_silo;

    if (sa == NULL) {
        return;
    }

    if (sa->claiming) {
        sa->again = 1;
        return;
    }

    ngx_http_matrix_silo_schedule(sa, 1);
}


static void
ngx_http_matrix_silo_schedule(ngx_http_matrix_silo_api_t *sa,
    ngx_msec_t delay)
{
    if (ngx_exiting || ngx_terminate) {
        return;
    }

    if (sa->timer.timer_set) {
        ngx_del_timer(&sa->timer);
    }

    ngx_add_timer(&sa->timer, delay);
}


static void
ngx_http_matrix_silo_tick(ngx_event_t *ev)
{
    ngx_str_t                    values[5];
    u_char                       now[NGX_INT64_LEN + 1];
    u_char                       runs[NGX_INT_T_LEN + 1];
    u_char                       run[NGX_INT_T_LEN + 1];
    u_char                       lease[NGX_INT_T_LEN + 1];
    ngx_uint_t                   i;
    ngx_http_matrix_pg_t        *pg;
    ngx_http_matrix_silo_api_t  *sa;

    sa = ev->data;

    if (ngx_exiting || ngx_terminate || sa->claiming) {
        return;
    }

    if (sa->busy == NGX_HTTP_MATRIX_SILO_LANES) {
        /* the first lane to free claims again */
        ngx_http_matrix_silo_schedule(sa, NGX_HTTP_MATRIX_SILO_PERIOD);
        return;
    }

    pg = ngx_http_matrix_pg_of_cycle();
    if (pg == NULL) {
        return;
    }

    sa->pool = ngx_create_pool(4096, sa->log);
    if (sa->pool == NULL) {
        ngx_http_matrix_silo_schedule(sa, NGX_HTTP_MATRIX_SILO_PERIOD);
        return;
    }

    sa->q = ngx_http_matrix_pg_query_create(pg, sa->pool, sa->log);
    if (sa->q == NULL) {
        goto failed;
    }

    sa->asked = NGX_HTTP_MATRIX_SILO_LANES - sa->busy;

    values[0].data = now;
    values[0].len = ngx_sprintf(now, "%L", ngx_http_matrix_now_ms()) - now;
    values[1].data = runs;
    values[1].len = ngx_sprintf(runs, "%ui", sa->asked) - runs;
    values[2].data = run;
    values[2].len = ngx_sprintf(run, "%d", NGX_HTTP_MATRIX_SILO_RUN) - run;
    values[3].data = lease;
    values[3].len = ngx_sprintf(lease, "%d", NGX_HTTP_MATRIX_SILO_LEASE)
                    - lease;
    values[4] = sa->server_name;

    sa->q->stmt = &ngx_http_matrix_silo_claim;
    sa->q->nparams = 5;
    sa->q->handler = ngx_http_matrix_silo_claimed;
    sa->q->data = sa;

    for (i = 0; i < 5; i++) {
        if (ngx_http_matrix_pg_param(sa->q, i, &values[i]) != NGX_OK) {
            goto failed;
        }
    }

    if (ngx_http_matrix_pg_run(sa->q) != NGX_OK) {
        goto failed;
    }

    sa->claiming = 1;
    sa->again = 0;

    return;

failed:

    ngx_destroy_pool(sa->pool);
    sa->pool = NULL;
    sa->q = NULL;

    ngx_http_matrix_silo_schedule(sa, NGX_HTTP_MATRIX_SILO_PERIOD);
}


static void
ngx_http_matrix_silo_claimed(ngx_http_matrix_pg_query_t *q)
{
    int                          row, first, n;
    PGresult                    *res;
    ngx_uint_t                   runs;
    ngx_http_matrix_silo_api_t  *sa;

    sa = q->data;

    if (q->status != NGX_HTTP_MATRIX_PG_OK) {
        ngx_log_error(NGX_LOG_WARN, sa->log, 0,
                      "matrix silo api: cannot read the outbox: %s%s%V",
                      ngx_http_matrix_pg_status_text(q->status),
                      q->error.len ? ": " : "", &q->error);
        ngx_http_matrix_silo_claim_end(sa, 0);
        return;
    }

    res = q->result;
    n = PQntuples(res);
    runs = 0;

    /* by run (its head's seq), each in order */

    for (first = 0; first < n; first = row) {
        for (row = first + 1; row < n; row++) {
            if (ngx_strcmp(PQgetvalue(res, row, 1),
                           PQgetvalue(res, first, 1)) != 0)
            {
                break;
            }
        }

        runs++;

        /*
         * a run that cannot be started stays leased: it is due again,
         * whole and in order, when its lease ends
         */
        (void) ngx_http_matrix_silo_lane_start(sa, res, first, row - first);
    }

    ngx_http_matrix_silo_claim_end(sa, runs);
}


#define ngx_http_matrix_silo_copy(pool, dst, res, row, col)                   \
    (dst)->len = PQgetlength(res, row, col);                                  \
    (dst)->data = ngx_pnalloc(pool, (dst)->len + 1);                          \
    if ((dst)->data) {                                                        \
        ngx_cpystrn((dst)->data, (u_char *) PQgetvalue(res, row, col),        \
                    (dst)->len + 1);                                          \
    }


static ngx_int_t
ngx_http_matrix_silo_lane_start(ngx_http_matrix_silo_api_t *sa,
    PGresult *res, int first, int n)
{
    int                           i;
    ngx_uint_t                    l;
    ngx_http_matrix_pg_t         *pg;
    ngx_http_matrix_silo_row_t   *r;
    ngx_http_matrix_silo_lane_t  *lane;

    lane = NULL;

    for (l = 0; l < NGX_HTTP_MATRIX_SILO_LANES; l++) {
        if (sa->lanes[l].pool == NULL) {
            lane = &sa->lanes[l];
            break;
        }
    }

    pg = ngx_http_matrix_pg_of_cycle();

    if (lane == NULL || pg == NULL) {
        return NGX_ERROR;
    }

    lane->pool = ngx_create_pool(4096, sa->log);
    if (lane->pool == NULL) {
        return NGX_ERROR;
    }

    lane->q = ngx_http_matrix_pg_query_create(pg, lane->pool, sa->log);
    lane->rows = ngx_pcalloc(lane->pool, n * sizeof(*lane->rows));

    if (lane->q == NULL || lane->rows == NULL) {
        goto failed;
    }

    for (i = 0; i < n; i++) {
        r = &lane->rows[i];

        ngx_http_matrix_silo_copy(lane->pool, &r->nid, res, first + i, 0);
        ngx_http_matrix_silo_copy(lane->pool, &r->attempts, res, first + i,
                                  2);
        ngx_http_matrix_silo_copy(lane->pool, &r->kind, res, first + i, 3);
        ngx_http_matrix_silo_copy(lane->pool, &r->silo_room_id, res,
                                  first + i, 4);
        ngx_http_matrix_silo_copy(lane->pool, &r->pdu, res, first + i, 5);
        ngx_http_matrix_silo_copy(lane->pool, &r->event_id, res, first + i,
                                  6);
        ngx_http_matrix_silo_copy(lane->pool, &r->silo_user_id, res,
                                  first + i, 7);
        ngx_http_matrix_silo_copy(lane->pool, &r->room_name, res, first + i,
                                  8);
        ngx_http_matrix_silo_copy(lane->pool, &r->context, res, first + i,
                                  9);

        if (r->nid.data == NULL || r->attempts.data == NULL
            || r->kind.data == NULL || r->silo_room_id.data == NULL
            || r->pdu.data == NULL || r->event_id.data == NULL
            || r->silo_user_id.data == NULL || r->room_name.data == NULL
            || r->context.data == NULL)
        {
            goto failed;
        }
    }

    lane->nrows = n;
    lane->next = 0;
    lane->leased = ngx_current_msec;
    sa->busy++;

    ngx_http_matrix_silo_send(lane);

    return NGX_OK;

failed:

    ngx_destroy_pool(lane->pool);
    lane->pool = NULL;
    lane->q = NULL;
    lane->rows = NULL;

    return NGX_ERROR;
}


/*
 * After a claim: at once again while more may be due (it took as many
 * runs as it asked for, or something was queued meanwhile) and a lane is
 * free; else in a second, or when a lane frees.
 */

static void
ngx_http_matrix_silo_claim_end(ngx_http_matrix_silo_api_t *sa,
    ngx_uint_t runs)
{
    ngx_pool_t  *pool;

    pool = sa->pool;
    sa->pool = NULL;
    sa->q = NULL;
    sa->claiming = 0;

    ngx_http_matrix_silo_schedule(sa,
        ((runs && runs == sa->asked) || sa->again)
        && sa->busy < NGX_HTTP_MATRIX_SILO_LANES
        ? 1 : NGX_HTTP_MATRIX_SILO_PERIOD);

    /* last: we may be in a call of one of its objects */
    ngx_destroy_pool(pool);
}


static void
ngx_http_matrix_silo_send(ngx_http_matrix_silo_lane_t *lane)
{
    ngx_int_t                     rc;
    ngx_str_t                     why;
    ngx_http_matrix_silo_row_t   *row;
    ngx_http_matrix_http_req_t   *hr;

    for ( ;; ) {
        /*
         * The run's rows are leased for NGX_HTTP_MATRIX_SILO_LEASE: a
         * slow silo must not have it end while a write is in flight, or
         * another worker would send the room's next ones.  The rest go
         * back, due at once.
         */

        if (lane->next == lane->nrows
            || ngx_current_msec - lane->leased
               > NGX_HTTP_MATRIX_SILO_LEASE - NGX_HTTP_MATRIX_SILO_MARGIN)
        {
            ngx_http_matrix_silo_settle(lane, NULL);
            return;
        }

        row = &lane->rows[lane->next];

        hr = ngx_http_matrix_http_create((ngx_cycle_t *) ngx_cycle,
                                         lane->pool, lane->sa->log);
        if (hr == NULL) {
            ngx_str_set(&why, "cannot make the request");
            ngx_http_matrix_silo_settle(lane, &why);
            return;
        }

        rc = ngx_http_matrix_silo_write(lane, row, hr);

        if (rc == NGX_OK) {
            break;
        }

        if (rc == NGX_DECLINED) {
            ngx_log_debug2(NGX_LOG_DEBUG_HTTP, lane->sa->log, 0,
                           "matrix silo api: %V of event \"%V\" names no "
                           "silo message: dropped",
                           &row->kind, &row->event_id);

        } else {
            /* what cannot be written will not be later either */
            ngx_log_error(NGX_LOG_WARN, lane->sa->log, 0,
                          "matrix silo api: %V of event \"%V\" cannot be "
                          "written to the silo (no such user?): dropped",
                          &row->kind, &row->event_id);
        }

        lane->next++;
    }

    if (ngx_http_matrix_http_send(hr) != NGX_OK) {
        ngx_str_set(&why, "cannot send the request");
        ngx_http_matrix_silo_settle(lane, &why);
    }
}


/*
 * The write of a row:
 *   PUT memberships/{event_id} {"room_id", "sender", "membership", "ts"}
 *   PUT invites/{event_id} {"room_id" (Matrix), "room_name", "sender",
 *                           "user_id" (the silo's), "ts"}
 *   PUT messages/{event_id}, edits/{event_id}, deletions/{event_id},
 *       reactions/{event_id}, unreactions/{event_id}:
 *       ngx_http_matrix_silo_message()
 * NGX_DECLINED: the event names nothing the silo has.
 */

static ngx_int_t
ngx_http_matrix_silo_write(ngx_http_matrix_silo_lane_t *lane,
    ngx_http_matrix_silo_row_t *row, ngx_http_matrix_http_req_t *hr)
{
    json_t                       *pdu, *body, *content;
    size_t                        len;
    mx_err_t                      err;
    ngx_int_t                     rc;
    ngx_str_t                     path;
    const char                   *membership, *user_id, *name, *sender;
    const char                   *avatar;
    ngx_uint_t                    quiet;

    pdu = mx_json_parse((char *) row->pdu.data, row->pdu.len, 0, &err);
    if (pdu == NULL) {
        return NGX_ERROR;
    }

    content = json_object_get(pdu, "content");
    membership = json_string_value(json_object_get(content, "membership"));
    user_id = json_string_value(json_object_get(pdu, "state_key"));
    sender = json_string_value(json_object_get(pdu, "sender"));
    name = json_string_value(json_object_get(content, "displayname"));
    body = NULL;
    quiet = 0;

    if (ngx_strcmp(row->kind.data, "membership") == 0
        && membership && user_id)
    {
        ngx_str_set(&path, "memberships/");

        /*
         * The sender's profile as the member event has it: a field the
         * event leaves out is left out (the silo keeps what it has), an
         * avatar only when it is one the silo can show.
         */

        body = json_pack("{s:s,s:{s:s,s:s*},s:s,s:O}",
                         "room_id", (char *) row->silo_room_id.data,
                         "sender", "user_id", user_id, "displayname", name,
                         "membership", membership,
                         "ts", json_object_get(pdu, "origin_server_ts"));

        avatar = json_string_value(json_object_get(content, "avatar_url"));

        if (body && avatar && ngx_strncmp(avatar, "https://", 8) == 0) {
            json_object_set_new(json_object_get(body, "sender"),
                                "avatar_url", json_string(avatar));
        }

    } else if (ngx_strcmp(row->kind.data, "invite") == 0 && sender
               && row->silo_user_id.len)
    {
        ngx_str_set(&path, "invites/");

        /* what the contract allows: another server wrote the name */
        if (row->room_name.len > 255) {
            len = 255;

            while (len && (row->room_name.data[len] & 0xc0) == 0x80) {
                len--;
            }

            row->room_name.data[len] = '\0';
            row->room_name.len = len;
        }

        body = json_pack("{s:s,s:s?,s:{s:s},s:s,s:O}",
                         "room_id", (char *) row->silo_room_id.data,
                         "room_name", row->room_name.len
                                      ? (char *) row->room_name.data : NULL,
                         "sender", "user_id", sender,
                         "user_id", (char *) row->silo_user_id.data,
                         "ts", json_object_get(pdu, "origin_server_ts"));

    } else if (row->context.len) {
        body = ngx_http_matrix_silo_message(row, pdu, &path, &quiet);
    }

    json_decref(pdu);

    if (body == NULL) {
        return quiet ? NGX_DECLINED : NGX_ERROR;
    }

    rc = ngx_http_matrix_silo_request(hr, lane->pool, &path, &row->event_id,
                                      body);
    json_decref(body);

    if (rc != NGX_OK) {
        return NGX_ERROR;
    }

    hr->handler = ngx_http_matrix_silo_answered;
    hr->data = lane;

    return NGX_OK;
}


ngx_int_t
ngx_http_matrix_silo_request(ngx_http_matrix_http_req_t *hr,
    ngx_pool_t *pool, ngx_str_t *path, ngx_str_t *key, json_t *body)
{
    char                         *text;
    size_t                        len;
    u_char                       *p;
    ngx_url_t                    *u;
    ngx_http_matrix_main_conf_t  *mmcf;

    mmcf = ngx_http_cycle_get_module_main_conf(ngx_cycle,
                                               ngx_http_matrix_module);
    u = mmcf->silo_api;

    text = json_dumps(body, JSON_COMPACT);
    if (text == NULL) {
        return NGX_ERROR;
    }

    hr->body.len = ngx_strlen(text);
    hr->body.data = ngx_pnalloc(pool, hr->body.len);
    if (hr->body.data == NULL) {
        free(text);
        return NGX_ERROR;
    }

    ngx_memcpy(hr->body.data, text, hr->body.len);
    free(text);

    /* the API's path, then the write's and the key, escaped */

    len = u->uri.len + 1 + path->len + (key ? 3 * key->len : 0);

    hr->uri.data = ngx_pnalloc(pool, len);
    if (hr->uri.data == NULL) {
        return NGX_ERROR;
    }

    p = ngx_cpymem(hr->uri.data, u->uri.len ? u->uri.data : (u_char *) "/",
                   u->uri.len ? u->uri.len : 1);

    if (p[-1] != '/') {
        *p++ = '/';
    }

    p = ngx_cpymem(p, path->data, path->len);

    if (key) {
        p = (u_char *) ngx_escape_uri(p, key->data, key->len,
                                      NGX_ESCAPE_ARGS);
    }

    hr->uri.len = p - hr->uri.data;

    hr->host = u->host;
    hr->port = u->port;
    hr->tls = 0;
    hr->internal = 1;
    ngx_str_set(&hr->method, "PUT");

    if (mmcf->silo_api_token.len) {
        hr->authorization.len = sizeof("Bearer ") - 1
                                + mmcf->silo_api_token.len;
        hr->authorization.data = ngx_pnalloc(pool, hr->authorization.len);
        if (hr->authorization.data == NULL) {
            return NGX_ERROR;
        }

        ngx_sprintf(hr->authorization.data, "Bearer %V",
                    &mmcf->silo_api_token);
    }

    return NGX_OK;
}


/*
 * A message from Matrix, an edit of one (m.replace: the new text from
 * m.new_content), a reaction to one, or a redaction of one of these, as
 * the silo's write; NULL when the silo cannot be told (*quiet: the
 * message or reaction it names is not the silo's, which is no news).
 */

static json_t *
ngx_http_matrix_silo_message(ngx_http_matrix_silo_row_t *row, json_t *pdu,
    ngx_str_t *path, ngx_uint_t *quiet)
{
    json_t      *ctx, *content, *body, *sender, *mentions;
    mx_err_t     err;
    const char  *html, *format, *target, *reaction, *name;

    ctx = mx_json_parse((char *) row->context.data, row->context.len, 0,
                        &err);
    if (ctx == NULL) {
        return NULL;
    }

    content = json_object_get(pdu, "content");
    target = json_string_value(json_object_get(ctx, "target"));
    body = NULL;

    /* only the fields known: one left out is kept by the silo, a null
       would clear it */

    sender = json_pack("{s:O}", "user_id", json_object_get(pdu, "sender"));

    if (sender != NULL
        && json_is_string(json_object_get(ctx, "displayname")))
    {
        json_object_set(sender, "displayname",
                        json_object_get(ctx, "displayname"));
    }

    if (sender == NULL) {
        json_decref(ctx);
        return NULL;
    }

    if (ngx_strcmp(row->kind.data, "edit") == 0) {
        content = json_object_get(content, "m.new_content");
    }

    format = json_string_value(json_object_get(content, "format"));
    html = (format && ngx_strcmp(format, "org.matrix.custom.html") == 0)
           ? json_string_value(json_object_get(content, "formatted_body"))
           : NULL;

    reaction = json_string_value(json_object_get(ctx, "reaction"));
    mentions = json_object_get(ctx, "mentions");

    if (ngx_strcmp(row->kind.data, "message") == 0
        && json_is_string(json_object_get(content, "body")))
    {
        ngx_str_set(path, "messages/");

        body = json_pack("{s:s,s:O,s:O,s:s?,s:O,s:O,s:O}",
                         "room_id", (char *) row->silo_room_id.data,
                         "sender", sender,
                         "body", json_object_get(content, "body"),
                         "html", html,
                         "ts", json_object_get(pdu, "origin_server_ts"),
                         "reply_to", json_object_get(ctx, "reply_to"),
                         "thread_root", json_object_get(ctx, "thread_root"));

        if (body && json_array_size(mentions)) {
            json_object_set(body, "mentions", mentions);
        }

    } else if (ngx_strcmp(row->kind.data, "edit") == 0 && target
               && json_is_string(json_object_get(content, "body")))
    {
        ngx_str_set(path, "edits/");

        body = json_pack("{s:s,s:s,s:O,s:O,s:s?,s:O}",
                         "room_id", (char *) row->silo_room_id.data,
                         "message_id", target,
                         "sender", sender,
                         "body", json_object_get(content, "body"),
                         "html", html,
                         "ts", json_object_get(pdu, "origin_server_ts"));

    } else if (ngx_strcmp(row->kind.data, "deletion") == 0
               && (target || reaction))
    {
        /*
         * Of a message (a reaction the silo got as one among them), or
         * of a reaction; a silo without reactions has none to take back.
         */

        name = "message_id";
        *quiet = 1;

        if (target) {
            ngx_str_set(path, "deletions/");

        } else if (ngx_http_matrix_silo_supports(
                       NGX_HTTP_MATRIX_SILO_REACTIONS))
        {
            ngx_str_set(path, "unreactions/");
            name = "reaction_event_id";
            target = reaction;
        }

        if (target) {
            body = json_pack("{s:s,s:s,s:O,s:O}",
                             "room_id", (char *) row->silo_room_id.data,
                             name, target,
                             "sender", sender,
                             "ts", json_object_get(pdu, "origin_server_ts"));
        }

    } else if (ngx_strcmp(row->kind.data, "reaction") == 0) {
        body = ngx_http_matrix_silo_reaction(row, pdu, ctx, sender, path);
        *quiet = 1;
    }

    json_decref(sender);
    json_decref(ctx);

    return body;
}


/*
 * An m.annotation of a silo message: PUT reactions/ for a silo that has
 * them, else a message replying to the reacted one, "reacted with KEY",
 * which a redaction of the reaction deletes as any other message.
 */

static json_t *
ngx_http_matrix_silo_reaction(ngx_http_matrix_silo_row_t *row, json_t *pdu,
    json_t *ctx, json_t *sender, ngx_str_t *path)
{
    json_t      *rel, *body, *key;
    const char  *target, *rel_type;

    rel = json_object_get(json_object_get(pdu, "content"), "m.relates_to");
    rel_type = json_string_value(json_object_get(rel, "rel_type"));
    key = json_object_get(rel, "key");
    target = json_string_value(json_object_get(ctx, "target"));

    if (target == NULL || rel_type == NULL
        || ngx_strcmp(rel_type, "m.annotation") != 0
        || !json_is_string(key) || json_string_length(key) == 0)
    {
        return NULL;
    }

    if (ngx_http_matrix_silo_supports(NGX_HTTP_MATRIX_SILO_REACTIONS)) {
        ngx_str_set(path, "reactions/");

        return json_pack("{s:s,s:s,s:O,s:O,s:O}",
                         "room_id", (char *) row->silo_room_id.data,
                         "message_id", target,
                         "sender", sender,
                         "key", key,
                         "ts", json_object_get(pdu, "origin_server_ts"));
    }

    ngx_str_set(path, "messages/");

    body = json_pack("{s:s,s:O,s:s+,s:n,s:O,s:s,s:n}",
                     "room_id", (char *) row->silo_room_id.data,
                     "sender", sender,
                     "body", "reacted with ", json_string_value(key),
                     "html",
                     "ts", json_object_get(pdu, "origin_server_ts"),
                     "reply_to", target,
                     "thread_root");

    return body;
}


ngx_uint_t
ngx_http_matrix_silo_supports(ngx_uint_t writes)
{
    ngx_http_matrix_main_conf_t  *mmcf;

    mmcf = ngx_http_cycle_get_module_main_conf(ngx_cycle,
                                               ngx_http_matrix_module);

    return mmcf->silo_api != NULL
           && (mmcf->silo_supports & writes) == writes;
}




static void
ngx_http_matrix_silo_answered(ngx_http_matrix_http_req_t *hr)
{
    ngx_str_t                     why;
    ngx_http_matrix_silo_row_t   *row;
    ngx_http_matrix_silo_lane_t  *lane;
    u_char                        buf[200];

    lane = hr->data;
    row = &lane->rows[lane->next];

    if (hr->status >= 200 && hr->status < 300) {
        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, lane->sa->log, 0,
                       "matrix silo api: event %V written", &row->nid);
        lane->next++;
        ngx_http_matrix_silo_send(lane);
        return;
    }

    if (hr->status >= 400 && hr->status < 500
        && hr->status != NGX_HTTP_UNAUTHORIZED
        && hr->status != NGX_HTTP_REQUEST_TIME_OUT
        && hr->status != 429)
    {
        ngx_log_error(NGX_LOG_WARN, lane->sa->log, 0,
                      "matrix silo api: the silo refused %V of event %V "
                      "(%ui): %V", &row->kind, &row->nid, hr->status,
                      &hr->response);
        lane->next++;
        ngx_http_matrix_silo_send(lane);
        return;
    }

    why.data = buf;
    why.len = hr->status
              ? (size_t) (ngx_snprintf(buf, sizeof(buf), "answered %ui",
                                       hr->status) - buf)
              : (size_t) (ngx_snprintf(buf, sizeof(buf), "%V", &hr->error)
                          - buf);

    ngx_log_error(NGX_LOG_WARN, lane->sa->log, 0,
                  "matrix silo api: %V of event %V not written, will retry: "
                  "%V", &row->kind, &row->nid, &why);

    ngx_http_matrix_silo_settle(lane, &why);
}


/*
 * The end of a run: the rows before lane->next are done (written, or
 * refused for good); with failed, the one at lane->next waits for its
 * next attempt and those after it are given back.
 */

static void
ngx_http_matrix_silo_settle(ngx_http_matrix_silo_lane_t *lane,
    ngx_str_t *failed)
{
    int64_t                      wait;
    ngx_int_t                    attempts;
    ngx_str_t                    done, rest, next;
    ngx_http_matrix_silo_row_t  *row;
    u_char                       buf[NGX_INT64_LEN + 1];

    if (ngx_http_matrix_silo_seqs(lane, 0, lane->next, &done) != NGX_OK) {
        goto failed;
    }

    lane->q->stmt = &ngx_http_matrix_silo_end;
    lane->q->nparams = 5;
    lane->q->handler = ngx_http_matrix_silo_settled;
    lane->q->data = lane;

    if (ngx_http_matrix_pg_param(lane->q, 0, &done) != NGX_OK) {
        goto failed;
    }

    if (failed == NULL) {
        /* all done, or the lease running out: the rest given back */

        if (ngx_http_matrix_silo_seqs(lane, lane->next, lane->nrows, &rest)
            != NGX_OK
            || ngx_http_matrix_pg_param(lane->q, 1, NULL) != NGX_OK
            || ngx_http_matrix_pg_param(lane->q, 2, NULL) != NGX_OK
            || ngx_http_matrix_pg_param(lane->q, 3, NULL) != NGX_OK
            || ngx_http_matrix_pg_param(lane->q, 4, &rest) != NGX_OK)
        {
            goto failed;
        }

    } else {
        row = &lane->rows[lane->next];

        attempts = ngx_atoi(row->attempts.data, row->attempts.len);
        wait = 1000;

        while (--attempts > 0 && wait < NGX_HTTP_MATRIX_SILO_BACKOFF) {
            wait *= 2;
        }

        if (wait > NGX_HTTP_MATRIX_SILO_BACKOFF) {
            wait = NGX_HTTP_MATRIX_SILO_BACKOFF;
        }

        next.data = buf;
        next.len = ngx_sprintf(buf, "%L", ngx_http_matrix_now_ms() + wait)
                   - buf;

        if (ngx_http_matrix_silo_seqs(lane, lane->next + 1, lane->nrows,
                                      &rest)
            != NGX_OK
            || ngx_http_matrix_pg_param(lane->q, 1, &row->nid) != NGX_OK
            || ngx_http_matrix_pg_param(lane->q, 2, &next) != NGX_OK
            || ngx_http_matrix_pg_param(lane->q, 3, failed) != NGX_OK
            || ngx_http_matrix_pg_param(lane->q, 4, &rest) != NGX_OK)
        {
            goto failed;
        }
    }

    if (ngx_http_matrix_pg_run(lane->q) == NGX_OK) {
        return;
    }

failed:

    /* the run stays leased: sent again, from its first, when that ends */
    ngx_http_matrix_silo_lane_end(lane);
}


/* "{seq,...}" of rows [from, to) */

static ngx_int_t
ngx_http_matrix_silo_seqs(ngx_http_matrix_silo_lane_t *lane, ngx_uint_t from,
    ngx_uint_t to, ngx_str_t *list)
{
    u_char      *p;
    size_t       len;
    ngx_uint_t   i;

    len = 2;

    for (i = from; i < to; i++) {
        len += lane->rows[i].nid.len + 1;
    }

    list->data = ngx_pnalloc(lane->pool, len);
    if (list->data == NULL) {
        return NGX_ERROR;
    }

    p = list->data;
    *p++ = '{';

    for (i = from; i < to; i++) {
        if (i > from) {
            *p++ = ',';
        }

        p = ngx_cpymem(p, lane->rows[i].nid.data, lane->rows[i].nid.len);
    }

    *p++ = '}';
    list->len = p - list->data;

    return NGX_OK;
}


static void
ngx_http_matrix_silo_settled(ngx_http_matrix_pg_query_t *q)
{
    ngx_http_matrix_silo_lane_t  *lane;

    lane = q->data;

    if (q->status != NGX_HTTP_MATRIX_PG_OK) {
        /* the run is due again, from its first, when its lease ends */
        ngx_log_error(NGX_LOG_WARN, lane->sa->log, 0,
                      "matrix silo api: cannot settle a run of %ui "
                      "writes: %s%s%V", lane->nrows,
                      ngx_http_matrix_pg_status_text(q->status),
                      q->error.len ? ": " : "", &q->error);
    }

    ngx_http_matrix_silo_lane_end(lane);
}


static void
ngx_http_matrix_silo_lane_end(ngx_http_matrix_silo_lane_t *lane)
{
    ngx_pool_t                  *pool;
    ngx_http_matrix_silo_api_t  *sa;

    sa = lane->sa;
    pool = lane->pool;

    lane->pool = NULL;
    lane->q = NULL;
    lane->rows = NULL;
    lane->nrows = 0;
    lane->next = 0;
    sa->busy--;

    /* the room's next writes, or another room's */
    ngx_http_matrix_silo_api_kick();

    /* last: we may be in a call of one of its objects */
    ngx_destroy_pool(pool);
}
