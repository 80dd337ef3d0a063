/*
 * The writes border: what Matrix users do reaches the silo through its
 * internal API (docs/silo-contract.md, "Writes"), from the durable queue
 * silo_outbox that the event's own transaction filled.
 *
 * Each worker runs a delivery pass every second, and at once when it
 * has just queued something: it claims the first due row of each room
 * (FOR UPDATE SKIP LOCKED, then leased for 10 min by moving its next
 * attempt, so that workers and nginx nodes never send one row, or two
 * rows of one room, at the same time), sends them one by one, and then
 * deletes each row the silo answered (2xx: done; 4xx: refused for good,
 * logged) or moves its next attempt back (5xx, no answer, and the 4xx
 * that say "not now": 401, 408, 429: 1 s doubling to 5 min).  A room's
 * later writes wait behind its first, so the silo sees them in order.
 * A worker that dies mid-pass leaves its rows leased; they are due again
 * when the lease ends.  The silo's writes are idempotent by event ID, so
 * a row sent twice (an answer lost) does no harm.
 */


#include "ngx_http_matrix_module.h"
#include "ngx_http_matrix_silo_api.h"
#include "ngx_http_matrix_http.h"
#include "ngx_http_matrix_pg.h"
#include "ngx_http_matrix_feed.h"


#define NGX_HTTP_MATRIX_SILO_PERIOD     1000
#define NGX_HTTP_MATRIX_SILO_BATCH      16
#define NGX_HTTP_MATRIX_SILO_LEASE      600000    /* a pass, timeouts
                                                     included */
#define NGX_HTTP_MATRIX_SILO_BACKOFF    300000    /* the longest wait */


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


typedef struct {
    ngx_event_t                     timer;
    ngx_pool_t                     *pool;         /* of the pass */
    ngx_http_matrix_pg_query_t     *q;
    ngx_http_matrix_silo_row_t     *rows;
    ngx_uint_t                      nrows;
    ngx_uint_t                      next;
    ngx_log_t                      *log;
    ngx_str_t                       server_name;  /* whose users a message
                                                     may mention */
    unsigned                        busy:1;
    unsigned                        again:1;
} ngx_http_matrix_silo_api_t;


static void ngx_http_matrix_silo_tick(ngx_event_t *ev);
static void ngx_http_matrix_silo_claimed(ngx_http_matrix_pg_query_t *q);
static void ngx_http_matrix_silo_send(ngx_http_matrix_silo_api_t *sa);
static ngx_int_t ngx_http_matrix_silo_write(ngx_http_matrix_silo_api_t *sa,
    ngx_http_matrix_silo_row_t *row, ngx_http_matrix_http_req_t *hr);
static json_t *ngx_http_matrix_silo_message(ngx_http_matrix_silo_row_t *row,
    json_t *pdu, ngx_str_t *path, ngx_uint_t *quiet);
static json_t *ngx_http_matrix_silo_reaction(ngx_http_matrix_silo_row_t *row,
    json_t *pdu, json_t *ctx, json_t *sender, ngx_str_t *path);
static void ngx_http_matrix_silo_answered(ngx_http_matrix_http_req_t *hr);
static void ngx_http_matrix_silo_settle(ngx_http_matrix_silo_api_t *sa,
    ngx_uint_t done, ngx_str_t *why);
static void ngx_http_matrix_silo_settled(ngx_http_matrix_pg_query_t *q);
static void ngx_http_matrix_silo_pass_end(ngx_http_matrix_silo_api_t *sa);


/* per worker */
static ngx_http_matrix_silo_api_t  *ngx_http_matrix_silo;


/*
 * The due rows, leased, at most the first of each room (a room's writes
 * go in order: while its first is leased or waiting to be retried, the
 * rest wait; invites have no room and wait for nothing); with each, what
 * its write needs: the event, the
 * silo's room (of a membership), the silo's user (of an invite: the
 * users view by the invitee's localpart) and the room's name as the
 * inviting server described it; of a message, edit, deletion or
 * reaction, its sender's display name, the silo messages its relations
 * name and the silo users it mentions (matrix_outbox_context()).
 */

static ngx_http_matrix_pg_stmt_t  ngx_http_matrix_silo_claim =
    ngx_http_matrix_pg_stmt(
        "WITH h AS (SELECT DISTINCT ON (coalesce(room_nid, -seq)) seq, "
        "next_attempt_ts FROM silo_outbox "
        "ORDER BY coalesce(room_nid, -seq), seq), "
        "c AS (UPDATE silo_outbox o "
        "SET next_attempt_ts = $1::bigint + $3, attempts = o.attempts + 1 "
        "WHERE o.seq IN (SELECT seq FROM silo_outbox "
        "WHERE seq IN (SELECT seq FROM h WHERE next_attempt_ts <= $1) "
        "AND next_attempt_ts <= $1 "
        "ORDER BY seq LIMIT $2 FOR UPDATE SKIP LOCKED) "
        "RETURNING o.*) "
        "SELECT c.seq, c.attempts, c.kind, "
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
        "WHERE e.event_id = c.event_id), $4)::text END "
        "FROM c LEFT JOIN invites i ON c.kind = 'invite' "
        "AND i.event_id = c.event_id ORDER BY c.seq", 4);

static ngx_http_matrix_pg_stmt_t  ngx_http_matrix_silo_done =
    ngx_http_matrix_pg_stmt(
        "DELETE FROM silo_outbox WHERE seq = $1", 1);

static ngx_http_matrix_pg_stmt_t  ngx_http_matrix_silo_retry =
    ngx_http_matrix_pg_stmt(
        "UPDATE silo_outbox SET next_attempt_ts = $2, last_error = $3 "
        "WHERE seq = $1", 3);


ngx_int_t
ngx_http_matrix_silo_api_init_process(ngx_cycle_t *cycle)
{
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

    if (sa->busy) {
        sa->again = 1;
        return;
    }

    if (sa->timer.timer_set) {
        ngx_del_timer(&sa->timer);
    }

    ngx_add_timer(&sa->timer, 1);
}


static void
ngx_http_matrix_silo_tick(ngx_event_t *ev)
{
    ngx_str_t                    values[4];
    u_char                       now[NGX_INT64_LEN + 1];
    u_char                       batch[NGX_INT_T_LEN + 1];
    u_char                       lease[NGX_INT_T_LEN + 1];
    ngx_http_matrix_pg_t        *pg;
    ngx_http_matrix_silo_api_t  *sa;

    sa = ev->data;

    if (ngx_exiting || ngx_terminate || sa->busy) {
        return;
    }

    pg = ngx_http_matrix_pg_of_cycle();
    if (pg == NULL) {
        return;
    }

    sa->pool = ngx_create_pool(4096, sa->log);
    if (sa->pool == NULL) {
        goto later;
    }

    sa->q = ngx_http_matrix_pg_query_create(pg, sa->pool, sa->log);
    if (sa->q == NULL) {
        goto failed;
    }

    values[0].data = now;
    values[0].len = ngx_sprintf(now, "%L", ngx_http_matrix_now_ms()) - now;
    values[1].data = batch;
    values[1].len = ngx_sprintf(batch, "%d", NGX_HTTP_MATRIX_SILO_BATCH)
                    - batch;
    values[2].data = lease;
    values[2].len = ngx_sprintf(lease, "%d", NGX_HTTP_MATRIX_SILO_LEASE)
                    - lease;

    values[3] = sa->server_name;

    sa->q->stmt = &ngx_http_matrix_silo_claim;
    sa->q->nparams = 4;
    sa->q->handler = ngx_http_matrix_silo_claimed;
    sa->q->data = sa;

    if (ngx_http_matrix_pg_param(sa->q, 0, &values[0]) != NGX_OK
        || ngx_http_matrix_pg_param(sa->q, 1, &values[1]) != NGX_OK
        || ngx_http_matrix_pg_param(sa->q, 2, &values[2]) != NGX_OK
        || ngx_http_matrix_pg_param(sa->q, 3, &values[3]) != NGX_OK
        || ngx_http_matrix_pg_run(sa->q) != NGX_OK)
    {
        goto failed;
    }

    sa->busy = 1;
    sa->again = 0;

    return;

failed:

    ngx_destroy_pool(sa->pool);
    sa->pool = NULL;

later:

    ngx_add_timer(&sa->timer, NGX_HTTP_MATRIX_SILO_PERIOD);
}


#define ngx_http_matrix_silo_copy(pool, dst, res, row, col)                   \
    (dst)->len = PQgetlength(res, row, col);                                  \
    (dst)->data = ngx_pnalloc(pool, (dst)->len + 1);                          \
    if ((dst)->data) {                                                        \
        ngx_cpystrn((dst)->data, (u_char *) PQgetvalue(res, row, col),        \
                    (dst)->len + 1);                                          \
    }


static void
ngx_http_matrix_silo_claimed(ngx_http_matrix_pg_query_t *q)
{
    int                          row, n;
    PGresult                    *res;
    ngx_http_matrix_silo_row_t  *r;
    ngx_http_matrix_silo_api_t  *sa;

    sa = q->data;

    if (q->status != NGX_HTTP_MATRIX_PG_OK) {
        ngx_log_error(NGX_LOG_WARN, sa->log, 0,
                      "matrix silo api: cannot read the outbox: %s%s%V",
                      ngx_http_matrix_pg_status_text(q->status),
                      q->error.len ? ": " : "", &q->error);
        ngx_http_matrix_silo_pass_end(sa);
        return;
    }

    res = q->result;
    n = PQntuples(res);

    sa->rows = ngx_pcalloc(sa->pool, (n + 1) * sizeof(*sa->rows));
    if (sa->rows == NULL) {
        ngx_http_matrix_silo_pass_end(sa);
        return;
    }

    for (row = 0; row < n; row++) {
        r = &sa->rows[row];

        ngx_http_matrix_silo_copy(sa->pool, &r->nid, res, row, 0);
        ngx_http_matrix_silo_copy(sa->pool, &r->attempts, res, row, 1);
        ngx_http_matrix_silo_copy(sa->pool, &r->kind, res, row, 2);
        ngx_http_matrix_silo_copy(sa->pool, &r->silo_room_id, res, row, 3);
        ngx_http_matrix_silo_copy(sa->pool, &r->pdu, res, row, 4);
        ngx_http_matrix_silo_copy(sa->pool, &r->event_id, res, row, 5);
        ngx_http_matrix_silo_copy(sa->pool, &r->silo_user_id, res, row, 6);
        ngx_http_matrix_silo_copy(sa->pool, &r->room_name, res, row, 7);
        ngx_http_matrix_silo_copy(sa->pool, &r->context, res, row, 8);

        if (r->nid.data == NULL || r->attempts.data == NULL
            || r->kind.data == NULL || r->silo_room_id.data == NULL
            || r->pdu.data == NULL || r->event_id.data == NULL
            || r->silo_user_id.data == NULL || r->room_name.data == NULL
            || r->context.data == NULL)
        {
            ngx_http_matrix_silo_pass_end(sa);
            return;
        }
    }

    /* the order they were accepted in */

    sa->nrows = n;
    sa->next = 0;

    /*
     * A pass takes the first write of each room only: when it had any,
     * the next pass follows at once with the rooms' next ones, so that a
     * burst reaches the silo at the silo's pace, not one a second.
     */

    if (n > 0) {
        sa->again = 1;
    }

    ngx_http_matrix_silo_send(sa);
}


static void
ngx_http_matrix_silo_send(ngx_http_matrix_silo_api_t *sa)
{
    ngx_int_t                     rc;
    ngx_str_t                     why;
    ngx_http_matrix_silo_row_t   *row;
    ngx_http_matrix_http_req_t   *hr;

    if (sa->next == sa->nrows) {
        ngx_http_matrix_silo_pass_end(sa);
        return;
    }

    row = &sa->rows[sa->next];

    hr = ngx_http_matrix_http_create((ngx_cycle_t *) ngx_cycle, sa->pool,
                                     sa->log);
    if (hr == NULL) {
        ngx_http_matrix_silo_pass_end(sa);
        return;
    }

    rc = ngx_http_matrix_silo_write(sa, row, hr);

    if (rc == NGX_DECLINED) {
        ngx_log_debug2(NGX_LOG_DEBUG_HTTP, sa->log, 0,
                       "matrix silo api: %V of event \"%V\" names no silo "
                       "message: dropped", &row->kind, &row->event_id);
        ngx_str_set(&why, "names no silo message");
        ngx_http_matrix_silo_settle(sa, 1, &why);
        return;
    }

    if (rc != NGX_OK) {
        /* what cannot be written will not be later either */
        ngx_log_error(NGX_LOG_WARN, sa->log, 0,
                      "matrix silo api: %V of event \"%V\" cannot be "
                      "written to the silo (no such user?): dropped",
                      &row->kind, &row->event_id);
        ngx_str_set(&why, "cannot be written to the silo");
        ngx_http_matrix_silo_settle(sa, 1, &why);
        return;
    }

    if (ngx_http_matrix_http_send(hr) != NGX_OK) {
        ngx_str_set(&why, "cannot send the request");
        ngx_http_matrix_silo_settle(sa, 0, &why);
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
ngx_http_matrix_silo_write(ngx_http_matrix_silo_api_t *sa,
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

    rc = ngx_http_matrix_silo_request(hr, sa->pool, &path, &row->event_id,
                                      body);
    json_decref(body);

    if (rc != NGX_OK) {
        return NGX_ERROR;
    }

    hr->handler = ngx_http_matrix_silo_answered;
    hr->data = sa;

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
    ngx_str_t                    why;
    ngx_http_matrix_silo_api_t  *sa;
    ngx_http_matrix_silo_row_t  *row;
    u_char                       buf[200];

    sa = hr->data;
    row = &sa->rows[sa->next];

    if (hr->status >= 200 && hr->status < 300) {
        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, sa->log, 0,
                       "matrix silo api: event %V written", &row->nid);
        ngx_str_null(&why);
        ngx_http_matrix_silo_settle(sa, 1, &why);
        return;
    }

    if (hr->status >= 400 && hr->status < 500
        && hr->status != NGX_HTTP_UNAUTHORIZED
        && hr->status != NGX_HTTP_REQUEST_TIME_OUT
        && hr->status != 429)
    {
        ngx_log_error(NGX_LOG_WARN, sa->log, 0,
                      "matrix silo api: the silo refused %V of event %V "
                      "(%ui): %V", &row->kind, &row->nid, hr->status,
                      &hr->response);
        why.data = buf;
        why.len = ngx_snprintf(buf, sizeof(buf), "refused: %ui", hr->status)
                  - buf;
        ngx_http_matrix_silo_settle(sa, 1, &why);
        return;
    }

    why.data = buf;
    why.len = hr->status
              ? (size_t) (ngx_snprintf(buf, sizeof(buf), "answered %ui",
                                       hr->status) - buf)
              : (size_t) (ngx_snprintf(buf, sizeof(buf), "%V", &hr->error)
                          - buf);

    ngx_log_error(NGX_LOG_WARN, sa->log, 0,
                  "matrix silo api: %V of event %V not written, will retry: "
                  "%V", &row->kind, &row->nid, &why);

    ngx_http_matrix_silo_settle(sa, 0, &why);
}


/* done (or refused for good): the row goes; else its next attempt */

static void
ngx_http_matrix_silo_settle(ngx_http_matrix_silo_api_t *sa, ngx_uint_t done,
    ngx_str_t *why)
{
    int64_t                      wait;
    ngx_int_t                    attempts;
    ngx_str_t                    v;
    ngx_http_matrix_silo_row_t  *row;
    u_char                       next[NGX_INT64_LEN + 1];

    row = &sa->rows[sa->next];

    sa->q->handler = ngx_http_matrix_silo_settled;
    sa->q->data = sa;

    if (ngx_http_matrix_pg_param(sa->q, 0, &row->nid) != NGX_OK) {
        ngx_http_matrix_silo_pass_end(sa);
        return;
    }

    if (done) {
        sa->q->stmt = &ngx_http_matrix_silo_done;
        sa->q->nparams = 1;

    } else {
        attempts = ngx_atoi(row->attempts.data, row->attempts.len);
        wait = 1000;

        while (--attempts > 0 && wait < NGX_HTTP_MATRIX_SILO_BACKOFF) {
            wait *= 2;
        }

        if (wait > NGX_HTTP_MATRIX_SILO_BACKOFF) {
            wait = NGX_HTTP_MATRIX_SILO_BACKOFF;
        }

        v.data = next;
        v.len = ngx_sprintf(next, "%L", ngx_http_matrix_now_ms() + wait)
                - next;

        sa->q->stmt = &ngx_http_matrix_silo_retry;
        sa->q->nparams = 3;

        if (ngx_http_matrix_pg_param(sa->q, 1, &v) != NGX_OK
            || ngx_http_matrix_pg_param(sa->q, 2, why) != NGX_OK)
        {
            ngx_http_matrix_silo_pass_end(sa);
            return;
        }
    }

    if (ngx_http_matrix_pg_run(sa->q) != NGX_OK) {
        ngx_http_matrix_silo_pass_end(sa);
    }
}


static void
ngx_http_matrix_silo_settled(ngx_http_matrix_pg_query_t *q)
{
    ngx_http_matrix_silo_api_t  *sa;

    sa = q->data;

    if (q->status != NGX_HTTP_MATRIX_PG_OK) {
        /* the row is due again when its lease ends */
        ngx_http_matrix_silo_pass_end(sa);
        return;
    }

    sa->next++;

    ngx_http_matrix_silo_send(sa);
}


static void
ngx_http_matrix_silo_pass_end(ngx_http_matrix_silo_api_t *sa)
{
    ngx_pool_t  *pool;

    pool = sa->pool;
    sa->pool = NULL;
    sa->q = NULL;
    sa->rows = NULL;
    sa->busy = 0;

    if (!ngx_exiting && !ngx_terminate) {
        ngx_add_timer(&sa->timer, sa->again ? 1 : NGX_HTTP_MATRIX_SILO_PERIOD);
    }

    /* last: we may be in a call of one of its objects */
    if (pool) {
        ngx_destroy_pool(pool);
    }
}
