/*
 * Silo rooms as Matrix rooms (ngx_http_matrix_room.h).
 *
 * A room's events are made the first time a route opens it with create
 * set (a join, in practice): under the lock of its matrix_rooms row, the
 * module reads the silo's room (matrix_silo_room()), and appends the
 * events of a room this server created: m.room.create by the module's
 * own user, its join, the power levels (silo admins 100, moderators 50),
 * join rules (public, or invite for a room the silo keeps private),
 * history visibility "shared", name, topic and alias; then the room's
 * recent silo messages, oldest first, each preceded by its author's join
 * the first time the author appears (and an invite, in a private room).
 * The events are made and appended in batches, one statement each, so
 * that a long history never holds the worker for long; they are all
 * committed at once, or not at all.
 *
 * A silo message's event keeps no copy of the text: its PDU is made
 * again from the silo's row when it is served, and checked against the
 * stored hash.  A row that has changed since (an edit in place, a
 * deletion) gives the event's redacted form, which the stored signature
 * still covers.
 */


#include "ngx_http_matrix_room.h"

#include <mx_ids.h>


#define NGX_HTTP_MATRIX_ROOM_BATCH  256     /* events per statement */


typedef struct {
    ngx_queue_t                     maker;     /* in the worker's makers */
    ngx_queue_t                     waiters;   /* for the same room */
    ngx_str_t                       nid;

    json_t                         *silo;
    json_t                         *records;
    json_t                         *joined;    /* localpart: member event */
    json_t                         *made;      /* silo message: event */
    size_t                          next_message;
    unsigned                        is_public:1;

    ngx_http_matrix_room_chain_t    chain;
    ngx_http_matrix_room_authors_t  authors;
    char                            create[MX_EVENT_ID_LEN + 1];
    char                            power_levels[MX_EVENT_ID_LEN + 1];
    char                            join_rules[MX_EVENT_ID_LEN + 1];
    char                            creator_member[MX_EVENT_ID_LEN + 1];
    ngx_str_t                       creator;
} ngx_http_matrix_room_making_t;


/* a request of this worker waiting for another one making its room */
typedef struct {
    ngx_queue_t                     queue;
    ngx_http_matrix_room_op_t      *op;
    ngx_event_t                     wake;
} ngx_http_matrix_room_waiter_t;


static ngx_int_t ngx_http_matrix_room_found(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op);
static ngx_int_t ngx_http_matrix_room_wait(ngx_http_matrix_room_op_t *op,
    ngx_http_matrix_room_making_t *maker);
static void ngx_http_matrix_room_woken(ngx_event_t *ev);
static ngx_int_t ngx_http_matrix_room_rechecked(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op);
static void ngx_http_matrix_room_waiter_cleanup(void *data);
static void ngx_http_matrix_room_wake(ngx_http_matrix_room_making_t *mk);
static ngx_int_t ngx_http_matrix_room_locked(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op);
static ngx_int_t ngx_http_matrix_room_checked(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op);
static ngx_int_t ngx_http_matrix_room_silo(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op);
static ngx_int_t ngx_http_matrix_room_initial(ngx_http_matrix_room_op_t *op,
    ngx_http_matrix_room_making_t *mk);
static ngx_int_t ngx_http_matrix_room_history(ngx_http_matrix_room_op_t *op,
    ngx_http_matrix_room_making_t *mk);
static ngx_int_t ngx_http_matrix_room_member(ngx_http_matrix_room_op_t *op,
    ngx_http_matrix_room_making_t *mk, json_t *message, int64_t ts,
    const char **member_id);
static ngx_int_t ngx_http_matrix_room_next_event(
    ngx_http_matrix_room_op_t *op, ngx_http_matrix_room_making_t *mk,
    const char *type, const char *state_key, const char *sender,
    json_t *content, int64_t ts, const char **auth, size_t nauth,
    unsigned recipe, const char *silo_message_id, char *event_id);
static ngx_int_t ngx_http_matrix_room_append(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op);
static ngx_int_t ngx_http_matrix_room_made(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op);
static ngx_int_t ngx_http_matrix_room_created(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op);
static void ngx_http_matrix_room_making_cleanup(void *data);
static ngx_int_t ngx_http_matrix_room_committed(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op);

static void ngx_http_matrix_room_leased(ngx_http_matrix_pg_query_t *q);
static void ngx_http_matrix_room_head_cleanup(void *data);
static void ngx_http_matrix_event_release(void *data);
static ngx_int_t ngx_http_matrix_room_accessed(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op);
static void ngx_http_matrix_room_done(ngx_http_matrix_pg_query_t *q);
static void ngx_http_matrix_room_finish(ngx_http_matrix_room_op_t *op,
    ngx_int_t rc);

static json_t *ngx_http_matrix_room_rebuild(ngx_http_matrix_room_op_t *op,
    PGresult *res, int row);
static json_t *ngx_http_matrix_room_column_json(PGresult *res, int row,
    int col);
static ngx_int_t ngx_http_matrix_hex_to_b64(const char *hex, char *b64,
    size_t max);


/* ngx_http_matrix_pg_stmt_t are static: prepared once per connection */

/*
 * Per worker: the rooms whose events this worker is making.  Another
 * request of the worker for the same room waits here, without a
 * database connection, rather than on the room's row lock with one.
 */
static ngx_queue_t  ngx_http_matrix_room_makers;


static ngx_http_matrix_pg_stmt_t  ngx_http_matrix_room_lookup =
    ngx_http_matrix_pg_stmt(
        "SELECT room_nid, room_version, coalesce(silo_room_id, ''), "
        "created_ts IS NOT NULL FROM matrix_rooms WHERE room_id = $1", 1);

static ngx_http_matrix_pg_stmt_t  ngx_http_matrix_room_lock =
    ngx_http_matrix_pg_stmt(
        "SELECT created_ts FROM matrix_rooms WHERE room_nid = $1 "
        "FOR UPDATE", 1);

static ngx_http_matrix_pg_stmt_t  ngx_http_matrix_room_silo_stmt =
    ngx_http_matrix_pg_stmt("SELECT matrix_silo_room($1, $2)", 2);

static ngx_http_matrix_pg_stmt_t  ngx_http_matrix_room_append_stmt =
    ngx_http_matrix_pg_stmt("SELECT matrix_append_events($1, $2)", 2);

static ngx_http_matrix_pg_stmt_t  ngx_http_matrix_room_created_stmt =
    ngx_http_matrix_pg_stmt(
        "UPDATE matrix_rooms SET created_ts = $2 WHERE room_nid = $1", 2);

static ngx_http_matrix_pg_stmt_t  ngx_http_matrix_room_begin_stmt =
    ngx_http_matrix_pg_stmt("BEGIN", 0);

static ngx_http_matrix_pg_stmt_t  ngx_http_matrix_room_commit_stmt =
    ngx_http_matrix_pg_stmt("COMMIT", 0);


ngx_http_matrix_room_op_t *
ngx_http_matrix_room_op(ngx_http_request_t *r, ngx_http_matrix_ctx_t *ctx)
{
    ngx_http_matrix_pg_t       *pg;
    ngx_http_matrix_room_op_t  *op;

    pg = ngx_http_matrix_pg_for_request(r);
    if (pg == NULL) {
        return NULL;
    }

    op = ngx_pcalloc(r->pool, sizeof(ngx_http_matrix_room_op_t));
    if (op == NULL) {
        return NULL;
    }

    op->r = r;
    op->ctx = ctx;
    op->pool = r->pool;
    op->log = r->connection->log;

    op->q = ngx_http_matrix_pg_query_create(pg, r->pool, r->connection->log);
    if (op->q == NULL) {
        return NULL;
    }

    op->q->data = op;

    return op;
}


ngx_int_t
ngx_http_matrix_room_open(ngx_http_matrix_room_op_t *op, ngx_str_t *room_id,
    ngx_uint_t create, ngx_http_matrix_room_step_pt next)
{
    ngx_int_t    rc;
    const char  *why;

    if (mx_id_valid((char *) room_id->data, room_id->len, '!', 1, &why)
        != MX_OK)
    {
        return ngx_http_matrix_send_error(op->r, NGX_HTTP_BAD_REQUEST,
                                          "M_INVALID_PARAM",
                                          "Invalid room ID: %s", why);
    }

    op->room_id.data = ngx_pnalloc(op->pool, room_id->len + 1);
    if (op->room_id.data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    *ngx_cpymem(op->room_id.data, room_id->data, room_id->len) = '\0';
    op->room_id.len = room_id->len;
    op->create = create;
    op->then = next;

    rc = ngx_http_matrix_room_run(op, &ngx_http_matrix_room_lookup,
                                  &op->room_id, 1, ngx_http_matrix_room_found);
    if (rc != NGX_DONE) {
        return rc;
    }

    /* the route's handler returns NGX_DONE: the request lives on */

    if (!op->counted) {
        op->r->main->count++;
        op->counted = 1;
    }

    return NGX_DONE;
}


static ngx_int_t
ngx_http_matrix_room_found(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op)
{
    PGresult  *res;

    res = op->q->result;

    if (PQntuples(res) != 1) {
        return ngx_http_matrix_send_error(r, NGX_HTTP_NOT_FOUND,
                                          "M_NOT_FOUND", "Unknown room");
    }

    op->nid.len = PQgetlength(res, 0, 0);
    op->nid.data = ngx_pnalloc(r->pool, op->nid.len + 1);
    op->silo_room_id.len = PQgetlength(res, 0, 2);
    op->silo_room_id.data = ngx_pnalloc(r->pool, op->silo_room_id.len + 1);

    if (op->nid.data == NULL || op->silo_room_id.data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_cpystrn(op->nid.data, (u_char *) PQgetvalue(res, 0, 0),
                op->nid.len + 1);
    ngx_cpystrn(op->silo_room_id.data, (u_char *) PQgetvalue(res, 0, 2),
                op->silo_room_id.len + 1);

    op->version = mx_room_version_find(PQgetvalue(res, 0, 1),
                                       PQgetlength(res, 0, 1));
    op->created = (PQgetvalue(res, 0, 3)[0] == 't');

    if (op->version == NULL || !op->version->supported) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "matrix room \"%V\": unsupported room version \"%s\"",
                      &op->room_id, PQgetvalue(res, 0, 1));
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (op->created || !op->create) {
        return op->then(r, op);
    }

    return ngx_http_matrix_room_make_events(op, op->then);
}


ngx_int_t
ngx_http_matrix_room_make_events(ngx_http_matrix_room_op_t *op,
    ngx_http_matrix_room_step_pt next)
{
    ngx_queue_t                    *q;
    ngx_http_request_t             *r;
    ngx_pool_cleanup_t             *cln;
    ngx_http_matrix_room_making_t  *mk;

    r = op->r;
    op->then = next;

    if (op->created) {
        return next(r, op);
    }

    if (op->silo_room_id.len == 0) {
        /* a room another server made that we never joined: nothing to make */
        return ngx_http_matrix_send_error(r, NGX_HTTP_NOT_FOUND,
                                          "M_NOT_FOUND", "Unknown room");
    }

    if (ngx_http_matrix_room_makers.next == NULL) {
        ngx_queue_init(&ngx_http_matrix_room_makers);
    }

    for (q = ngx_queue_head(&ngx_http_matrix_room_makers);
         q != ngx_queue_sentinel(&ngx_http_matrix_room_makers);
         q = ngx_queue_next(q))
    {
        mk = ngx_queue_data(q, ngx_http_matrix_room_making_t, maker);

        if (mk->nid.len == op->nid.len
            && ngx_strncmp(mk->nid.data, op->nid.data, op->nid.len) == 0)
        {
            return ngx_http_matrix_room_wait(op, mk);
        }
    }

    mk = ngx_pcalloc(r->pool, sizeof(ngx_http_matrix_room_making_t));
    if (mk == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln->handler = ngx_http_matrix_room_making_cleanup;
    cln->data = mk;

    mk->nid = op->nid;
    ngx_queue_init(&mk->waiters);
    ngx_queue_insert_tail(&ngx_http_matrix_room_makers, &mk->maker);

    op->making = mk;

    return ngx_http_matrix_room_begin(op, ngx_http_matrix_room_locked);
}


static ngx_int_t
ngx_http_matrix_room_wait(ngx_http_matrix_room_op_t *op,
    ngx_http_matrix_room_making_t *maker)
{
    ngx_pool_cleanup_t             *cln;
    ngx_http_matrix_room_waiter_t  *w;

    w = ngx_pcalloc(op->r->pool, sizeof(ngx_http_matrix_room_waiter_t));
    if (w == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln = ngx_pool_cleanup_add(op->r->pool, 0);
    if (cln == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln->handler = ngx_http_matrix_room_waiter_cleanup;
    cln->data = w;

    w->op = op;
    w->wake.handler = ngx_http_matrix_room_woken;
    w->wake.data = w;
    w->wake.log = op->r->connection->log;

    ngx_queue_insert_tail(&maker->waiters, &w->queue);

    return NGX_DONE;
}


/* the maker is done, or gone: whether the room now has its events */

static void
ngx_http_matrix_room_woken(ngx_event_t *ev)
{
    ngx_int_t                       rc;
    ngx_http_matrix_room_op_t      *op;
    ngx_http_matrix_room_waiter_t  *w;

    w = ev->data;
    op = w->op;

    rc = ngx_http_matrix_room_run(op, &ngx_http_matrix_room_lookup,
                                  &op->room_id, 1,
                                  ngx_http_matrix_room_rechecked);

    ngx_http_matrix_room_continue(op, rc);
}


static ngx_int_t
ngx_http_matrix_room_rechecked(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op)
{
    PGresult  *res;

    res = op->q->result;

    if (PQntuples(res) != 1) {
        return ngx_http_matrix_send_error(r, NGX_HTTP_NOT_FOUND,
                                          "M_NOT_FOUND", "Unknown room");
    }

    op->created = (PQgetvalue(res, 0, 3)[0] == 't');

    /* made: on with the route; not (the maker failed): make it */

    return ngx_http_matrix_room_make_events(op, op->then);
}


static void
ngx_http_matrix_room_waiter_cleanup(void *data)
{
    ngx_http_matrix_room_waiter_t  *w = data;

    if (w->queue.next != NULL) {
        ngx_queue_remove(&w->queue);
        w->queue.next = NULL;
    }

    if (w->wake.posted) {
        ngx_delete_posted_event(&w->wake);
    }
}


static void
ngx_http_matrix_room_wake(ngx_http_matrix_room_making_t *mk)
{
    ngx_queue_t                    *q;
    ngx_http_matrix_room_waiter_t  *w;

    if (mk->maker.next == NULL) {
        return;
    }

    ngx_queue_remove(&mk->maker);
    mk->maker.next = NULL;

    while (!ngx_queue_empty(&mk->waiters)) {
        q = ngx_queue_head(&mk->waiters);
        ngx_queue_remove(q);
        q->next = NULL;

        w = ngx_queue_data(q, ngx_http_matrix_room_waiter_t, queue);
        ngx_post_event(&w->wake, &ngx_posted_events);
    }
}


static ngx_int_t
ngx_http_matrix_room_locked(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op)
{
    return ngx_http_matrix_room_run(op, &ngx_http_matrix_room_lock, &op->nid,
                                    1, ngx_http_matrix_room_checked);
}


/* another worker, or another nginx, may have made it while we waited */

static ngx_int_t
ngx_http_matrix_room_checked(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op)
{
    ngx_str_t  values[2];
    u_char     history[NGX_INT_T_LEN + 1];

    if (PQntuples(op->q->result) == 1 && !PQgetisnull(op->q->result, 0, 0)) {
        op->created = 1;
        ngx_http_matrix_room_wake(op->making);
        return ngx_http_matrix_room_commit(op, op->then);
    }

    values[0] = op->silo_room_id;
    values[1].data = history;
    values[1].len = ngx_sprintf(history, "%i", op->ctx->mscf->room_history)
                    - history;

    return ngx_http_matrix_room_run(op, &ngx_http_matrix_room_silo_stmt,
                                    values, 2, ngx_http_matrix_room_silo);
}


static ngx_int_t
ngx_http_matrix_room_silo(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op)
{
    ngx_http_matrix_room_making_t  *mk;

    mk = op->making;

    mk->silo = ngx_http_matrix_room_json(op);

    if (!json_is_object(mk->silo)) {
        ngx_http_matrix_pg_release(op->q);
        return ngx_http_matrix_send_error(r, NGX_HTTP_NOT_FOUND,
                                          "M_NOT_FOUND",
                                          "The silo no longer has this room");
    }

    mk->records = json_array();
    mk->joined = json_object();
    mk->made = json_object();

    if (mk->records == NULL || mk->joined == NULL || mk->made == NULL
        || ngx_http_matrix_room_user(op, NGX_HTTP_MATRIX_SERVER_USER,
                                     &mk->creator)
           != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    mk->is_public = json_is_true(json_object_get(mk->silo, "is_public"));

    if (ngx_http_matrix_room_initial(op, mk) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_matrix_room_append(r, op);
}


/*
 * The state of a room this server created, dated when the silo created
 * the room, so that its history follows it in time as well as in order.
 */

static ngx_int_t
ngx_http_matrix_room_initial(ngx_http_matrix_room_op_t *op,
    ngx_http_matrix_room_making_t *mk)
{
    int64_t              ts;
    json_t              *v, *pl, *admins, *moderators;
    size_t               i, na, nm;
    mx_err_t             err;
    ngx_str_t            alias;
    const char          *creator, *auth[4], **a, **m;
    char                 id[MX_EVENT_ID_LEN + 1];
    const char          *s;

    static const struct {
        const char      *type;
        const char      *field;
    } texts[] = {
        { "m.room.name", "name" },
        { "m.room.topic", "topic" },
    };

    ts = json_integer_value(json_object_get(mk->silo, "created_ts"));
    if (ts <= 0) {
        ts = ngx_http_matrix_now_ms();
    }

    creator = (char *) mk->creator.data;

    v = mx_room_create_content(op->version, creator, &err);
    if (v == NULL
        || ngx_http_matrix_room_next_event(op, mk, "m.room.create", "",
                                           creator, v, ts, NULL, 0, 0, NULL,
                                           mk->create)
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    auth[0] = mk->create;

    v = json_pack("{s:s,s:s}", "membership", "join",
                  "displayname", (char *) op->ctx->mscf->server_name.data);
    if (ngx_http_matrix_room_next_event(op, mk, "m.room.member", creator,
                                        creator, v, ts, auth, 1, 0, NULL,
                                        mk->creator_member)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    /* the silo's admins and moderators, as this server's user IDs */

    admins = json_object_get(mk->silo, "admins");
    moderators = json_object_get(mk->silo, "moderators");
    na = json_array_size(admins);
    nm = json_array_size(moderators);

    a = ngx_palloc(op->pool, (na + nm + 1) * sizeof(char *));
    if (a == NULL) {
        return NGX_ERROR;
    }

    m = a + na;

    for (i = 0; i < na + nm; i++) {
        s = json_string_value(json_array_get(i < na ? admins : moderators,
                                             i < na ? i : i - na));
        if (s == NULL
            || ngx_http_matrix_room_user(op, s, &alias) != NGX_OK)
        {
            return NGX_ERROR;
        }

        a[i] = (char *) alias.data;
    }

    pl = mx_room_power_levels(op->version, creator, a, na, m, nm,
                              mk->is_public, &err);

    auth[1] = mk->creator_member;

    if (pl == NULL
        || ngx_http_matrix_room_next_event(op, mk, "m.room.power_levels", "",
                                           creator, pl, ts, auth, 2, 0, NULL,
                                           mk->power_levels)
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    auth[2] = mk->power_levels;

    v = json_pack("{s:s}", "join_rule", mk->is_public ? "public" : "invite");
    if (ngx_http_matrix_room_next_event(op, mk, "m.room.join_rules", "",
                                        creator, v, ts, auth, 3, 0, NULL,
                                        mk->join_rules)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    v = json_pack("{s:s}", "history_visibility", "shared");
    if (ngx_http_matrix_room_next_event(op, mk, "m.room.history_visibility",
                                        "", creator, v, ts, auth, 3, 0, NULL,
                                        id)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    /* the silo's name and topic, when it has them: {field: value} */

    for (i = 0; i < 2; i++) {
        s = json_string_value(json_object_get(mk->silo, texts[i].field));

        if (s && *s) {
            v = json_pack("{s:s}", texts[i].field, s);
            if (ngx_http_matrix_room_next_event(op, mk, texts[i].type, "",
                                                creator, v, ts, auth, 3, 0,
                                                NULL, id)
                != NGX_OK)
            {
                return NGX_ERROR;
            }
        }
    }

    s = json_string_value(json_object_get(mk->silo, "alias"));
    if (s && *s) {
        alias.len = 1 + ngx_strlen(s) + 1 + op->ctx->mscf->server_name.len;
        alias.data = ngx_pnalloc(op->pool, alias.len + 1);
        if (alias.data == NULL) {
            return NGX_ERROR;
        }

        *ngx_sprintf(alias.data, "#%s:%V", s, &op->ctx->mscf->server_name)
            = '\0';

        if (mx_id_valid((char *) alias.data, alias.len, '#', 1, &s)
            == MX_OK)
        {
            v = json_pack("{s:s}", "alias", (char *) alias.data);
            if (ngx_http_matrix_room_next_event(op, mk,
                                                "m.room.canonical_alias", "",
                                                creator, v, ts, auth, 3, 0,
                                                NULL, id)
                != NGX_OK)
            {
                return NGX_ERROR;
            }
        }
    }

    return NGX_OK;
}


/* the next batch of history: each message, its author joined first */

static ngx_int_t
ngx_http_matrix_room_history(ngx_http_matrix_room_op_t *op,
    ngx_http_matrix_room_making_t *mk)
{
    int64_t       ts;
    json_t       *messages, *msg, *content;
    size_t        n;
    unsigned      recipe;
    mx_err_t      err;
    const char   *member, *auth[3], *reply, *thread, *id, *sender;
    char          event_id[MX_EVENT_ID_LEN + 1];
    ngx_str_t     user_id;

    messages = json_object_get(mk->silo, "messages");
    n = 0;

    while (mk->next_message < json_array_size(messages)
           && n < NGX_HTTP_MATRIX_ROOM_BATCH)
    {
        msg = json_array_get(messages, mk->next_message++);
        ts = json_integer_value(json_object_get(msg, "ts"));
        id = json_string_value(json_object_get(msg, "id"));

        if (id == NULL
            || ngx_http_matrix_room_member(op, mk, msg, ts, &member)
               != NGX_OK)
        {
            return NGX_ERROR;
        }

        if (member == NULL) {
            /* a localpart this server cannot use: the message stays out */
            continue;
        }

        reply = json_string_value(json_object_get(mk->made,
                    json_string_value(json_object_get(msg, "reply_to"))
                    ? json_string_value(json_object_get(msg, "reply_to"))
                    : ""));
        thread = json_string_value(json_object_get(mk->made,
                    json_string_value(json_object_get(msg, "thread_root"))
                    ? json_string_value(json_object_get(msg, "thread_root"))
                    : ""));

        recipe = mx_silo_message_recipe(reply != NULL, thread != NULL);

        content = mx_silo_message_content(recipe,
                      json_string_value(json_object_get(msg, "body")),
                      json_string_value(json_object_get(msg, "html")),
                      reply, thread, &err);
        if (content == NULL) {
            ngx_log_error(NGX_LOG_WARN, op->log, 0,
                          "matrix room \"%V\": silo message \"%s\" left "
                          "out: %s", &op->room_id, id, err.msg);
            continue;
        }

        if (ngx_http_matrix_room_user(op,
                json_string_value(json_object_get(msg, "localpart")),
                &user_id)
            != NGX_OK)
        {
            json_decref(content);
            return NGX_ERROR;
        }

        sender = (char *) user_id.data;

        auth[0] = mk->create;
        auth[1] = mk->power_levels;
        auth[2] = member;

        if (ngx_http_matrix_room_next_event(op, mk, "m.room.message", NULL,
                                            sender, content, ts, auth, 3,
                                            recipe, id, event_id)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        json_object_set_new(mk->made, id, json_string(event_id));
        n++;
    }

    return NGX_OK;
}


/*
 * The author's member event, made now if this is the first message of
 * theirs the room holds: lazy membership, so that a room's state grows
 * with the people who speak in it, not with the silo's member list.
 */

static ngx_int_t
ngx_http_matrix_room_member(ngx_http_matrix_room_op_t *op,
    ngx_http_matrix_room_making_t *mk, json_t *message, int64_t ts,
    const char **member_id)
{
    json_t      *v;
    const char  *localpart;
    char         join[MX_EVENT_ID_LEN + 1];

    *member_id = NULL;

    localpart = json_string_value(json_object_get(message, "localpart"));
    if (localpart == NULL) {
        return NGX_OK;
    }

    v = json_object_get(mk->joined, localpart);
    if (v) {
        *member_id = json_string_value(v);
        return NGX_OK;
    }

    mk->authors.create = mk->create;
    mk->authors.power_levels = mk->power_levels;
    mk->authors.join_rules = mk->join_rules;
    mk->authors.creator_member = mk->creator_member;
    mk->authors.creator = mk->creator;
    mk->authors.is_public = mk->is_public;

    if (ngx_http_matrix_room_join_author(op, &mk->chain, &mk->authors,
            localpart,
            json_string_value(json_object_get(message, "displayname")),
            json_string_value(json_object_get(message, "avatar_url")),
            ts, join)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (join[0] == '\0') {
        return NGX_OK;
    }

    if (json_object_set_new(mk->joined, localpart, json_string(join)) != 0) {
        return NGX_ERROR;
    }

    *member_id = json_string_value(json_object_get(mk->joined, localpart));

    return NGX_OK;
}


ngx_int_t
ngx_http_matrix_room_join_author(ngx_http_matrix_room_op_t *op,
    ngx_http_matrix_room_chain_t *chain, ngx_http_matrix_room_authors_t *a,
    const char *localpart, const char *name, const char *avatar, int64_t ts,
    char *join)
{
    json_t      *content;
    ngx_str_t    user_id;
    const char  *auth[4], *why;
    char         invite[MX_EVENT_ID_LEN + 1];

    join[0] = '\0';

    if (localpart == NULL
        || !mx_user_localpart_valid(localpart, ngx_strlen(localpart)))
    {
        return NGX_OK;
    }

    if (ngx_http_matrix_room_user(op, localpart, &user_id) != NGX_OK) {
        return NGX_ERROR;
    }

    if (mx_id_valid((char *) user_id.data, user_id.len, '@', 1, &why)
        != MX_OK)
    {
        return NGX_OK;
    }

    auth[0] = a->create;
    auth[1] = a->power_levels;
    auth[2] = a->join_rules;

    if (!a->is_public) {
        /* an invite-only room: this server's user lets its own in */
        auth[3] = a->creator_member;

        content = json_pack("{s:s}", "membership", "invite");
        if (ngx_http_matrix_room_chain_event(op, chain, "m.room.member",
                                             (char *) user_id.data,
                                             (char *) a->creator.data,
                                             content, ts, auth, 4, 0, NULL,
                                             invite)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        auth[3] = invite;
    }

    content = json_pack("{s:s}", "membership", "join");
    if (content == NULL) {
        return NGX_ERROR;
    }

    if (name) {
        json_object_set_new(content, "displayname", json_string(name));
    }

    if (avatar && ngx_strncmp(avatar, "mxc://", 6) == 0) {
        json_object_set_new(content, "avatar_url", json_string(avatar));
    }

    return ngx_http_matrix_room_chain_event(op, chain, "m.room.member",
                                            (char *) user_id.data,
                                            (char *) user_id.data, content,
                                            ts, auth, a->is_public ? 3 : 4,
                                            0, NULL, join);
}


/* one event of the room being made: after the previous one, one deeper */

static ngx_int_t
ngx_http_matrix_room_next_event(ngx_http_matrix_room_op_t *op,
    ngx_http_matrix_room_making_t *mk, const char *type,
    const char *state_key, const char *sender, json_t *content, int64_t ts,
    const char **auth, size_t nauth, unsigned recipe,
    const char *silo_message_id, char *event_id)
{
    mk->chain.records = mk->records;

    return ngx_http_matrix_room_chain_event(op, &mk->chain, type, state_key,
                                            sender, content, ts, auth, nauth,
                                            recipe, silo_message_id,
                                            event_id);
}


ngx_int_t
ngx_http_matrix_room_chain_event(ngx_http_matrix_room_op_t *op,
    ngx_http_matrix_room_chain_t *chain, const char *type,
    const char *state_key, const char *sender, json_t *content, int64_t ts,
    const char **auth, size_t nauth, unsigned recipe,
    const char *silo_message_id, char *event_id)
{
    size_t           i;
    ngx_int_t        rc;
    const char      *prev[NGX_HTTP_MATRIX_HEAD_MAX];
    mx_pdu_parts_t   parts;

    if (content == NULL) {
        return NGX_ERROR;
    }

    ngx_memzero(&parts, sizeof(mx_pdu_parts_t));

    if (chain->last[0]) {
        prev[0] = chain->last;
        parts.nprev = 1;

    } else {
        /* the first: after the room's extremities, if any */
        for (i = 0; i < json_array_size(chain->prev)
                    && i < NGX_HTTP_MATRIX_HEAD_MAX; i++)
        {
            prev[i] = json_string_value(json_array_get(chain->prev, i));
            if (prev[i] == NULL) {
                json_decref(content);
                return NGX_ERROR;
            }
        }

        parts.nprev = i;
    }

    parts.sender = sender;
    parts.type = type;
    parts.state_key = state_key;
    parts.content = content;
    parts.prev_events = prev;
    parts.auth_events = auth;
    parts.nauth = nauth;
    parts.depth = ++chain->depth;
    parts.origin_server_ts = ts;
    parts.redacts = chain->redacts;
    chain->redacts = NULL;

    rc = ngx_http_matrix_room_make_event(op, &parts, recipe, silo_message_id,
                                         chain->records, event_id);

    json_decref(content);

    if (rc == NGX_OK) {
        ngx_memcpy(chain->last, event_id, MX_EVENT_ID_LEN + 1);
    }

    return rc;
}


static ngx_int_t
ngx_http_matrix_room_append(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op)
{
    char                           *text;
    ngx_int_t                       rc;
    ngx_str_t                       values[2];
    u_char                          now[NGX_INT64_LEN + 1];
    ngx_http_matrix_room_making_t  *mk;

    mk = op->making;

    if (json_array_size(mk->records) == 0) {
        if (ngx_http_matrix_room_history(op, mk) != NGX_OK) {
            ngx_http_matrix_pg_release(op->q);
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    if (json_array_size(mk->records) == 0) {
        values[0] = op->nid;
        values[1].data = now;
        values[1].len = ngx_sprintf(now, "%L", ngx_http_matrix_now_ms())
                        - now;

        return ngx_http_matrix_room_run(op,
                                        &ngx_http_matrix_room_created_stmt,
                                        values, 2, ngx_http_matrix_room_made);
    }

    text = json_dumps(mk->records, JSON_COMPACT);
    if (text == NULL) {
        ngx_http_matrix_pg_release(op->q);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    json_array_clear(mk->records);

    values[0] = op->nid;
    values[1].data = (u_char *) text;
    values[1].len = ngx_strlen(text);

    rc = ngx_http_matrix_room_run(op, &ngx_http_matrix_room_append_stmt,
                                  values, 2, ngx_http_matrix_room_append);

    /* the parameter is copied */
    free(text);

    return rc;
}


static ngx_int_t
ngx_http_matrix_room_made(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op)
{
    return ngx_http_matrix_room_commit(op, ngx_http_matrix_room_created);
}


static ngx_int_t
ngx_http_matrix_room_created(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op)
{
    ngx_http_matrix_room_making_t  *mk;

    mk = op->making;
    op->created = 1;

    ngx_http_matrix_room_wake(mk);

    ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                  "matrix room \"%V\": made from silo room \"%V\", "
                  "%uz messages of history", &op->room_id, &op->silo_room_id,
                  json_object_size(mk->made));

    return op->then(r, op);
}


static void
ngx_http_matrix_room_making_cleanup(void *data)
{
    ngx_http_matrix_room_making_t  *mk = data;

    /* gone before it was done: whoever waits makes the room itself */
    ngx_http_matrix_room_wake(mk);

    json_decref(mk->silo);
    json_decref(mk->records);
    json_decref(mk->joined);
    json_decref(mk->made);
}


/* steps */


ngx_int_t
ngx_http_matrix_room_run(ngx_http_matrix_room_op_t *op,
    ngx_http_matrix_pg_stmt_t *stmt, ngx_str_t *values, ngx_uint_t n,
    ngx_http_matrix_room_step_pt next)
{
    ngx_uint_t                   i;
    ngx_http_matrix_pg_query_t  *q;

    q = op->q;

    q->stmt = stmt;
    q->sql = NULL;
    q->nparams = n;
    q->handler = ngx_http_matrix_room_done;
    op->next = next;

    for (i = 0; i < n; i++) {
        if (values[i].data == NULL) {
            q->values[i] = NULL;
            q->lengths[i] = 0;
            continue;
        }

        if (ngx_http_matrix_pg_param(q, i, &values[i]) != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    if (ngx_http_matrix_pg_run(q) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return NGX_DONE;
}


ngx_int_t
ngx_http_matrix_room_run_json(ngx_http_matrix_room_op_t *op,
    ngx_http_matrix_pg_stmt_t *stmt, json_t *v,
    ngx_http_matrix_room_step_pt next)
{
    char       *text;
    ngx_int_t   rc;
    ngx_str_t   values[2];

    text = json_dumps(v, JSON_COMPACT);
    if (text == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    values[0] = op->nid;
    values[1].data = (u_char *) text;
    values[1].len = ngx_strlen(text);

    /* the parameters are copied */
    rc = ngx_http_matrix_room_run(op, stmt, values, 2, next);

    free(text);

    return rc;
}


ngx_int_t
ngx_http_matrix_room_begin(ngx_http_matrix_room_op_t *op,
    ngx_http_matrix_room_step_pt next)
{
    op->q->handler = ngx_http_matrix_room_leased;
    op->pending = next;

    if (ngx_http_matrix_pg_acquire(op->q) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return NGX_DONE;
}


static void
ngx_http_matrix_room_leased(ngx_http_matrix_pg_query_t *q)
{
    ngx_int_t                   rc;
    ngx_http_matrix_room_op_t  *op;

    op = q->data;

    if (q->status != NGX_HTTP_MATRIX_PG_OK) {
        ngx_http_matrix_room_finish(op,
                                    ngx_http_matrix_pg_send_error(op->r, q));
        return;
    }

    rc = ngx_http_matrix_room_run(op, &ngx_http_matrix_room_begin_stmt, NULL,
                                  0, op->pending);
    if (rc != NGX_DONE) {
        ngx_http_matrix_room_finish(op, rc);
    }
}


ngx_int_t
ngx_http_matrix_room_commit(ngx_http_matrix_room_op_t *op,
    ngx_http_matrix_room_step_pt next)
{
    op->pending = next;

    return ngx_http_matrix_room_run(op, &ngx_http_matrix_room_commit_stmt,
                                    NULL, 0, ngx_http_matrix_room_committed);
}


static ngx_int_t
ngx_http_matrix_room_committed(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op)
{
    ngx_http_matrix_pg_release(op->q);

    return op->pending(r, op);
}


static void
ngx_http_matrix_room_done(ngx_http_matrix_pg_query_t *q)
{
    ngx_int_t                   rc;
    ngx_http_matrix_room_op_t  *op;

    op = q->data;

    if (q->status != NGX_HTTP_MATRIX_PG_OK) {
        ngx_log_error(NGX_LOG_ERR, q->log, 0,
                      "matrix room \"%V\": %s%s%V", &op->room_id,
                      ngx_http_matrix_pg_status_text(q->status),
                      q->error.len ? ": " : "", &q->error);

        rc = ngx_http_matrix_pg_send_error(op->r, q);

    } else {
        rc = op->next(op->r, op);
    }

    if (rc != NGX_DONE) {
        ngx_http_matrix_room_finish(op, rc);
    }
}


/* a lease left is rolled back: nothing half-done is ever committed */

static void
ngx_http_matrix_room_finish(ngx_http_matrix_room_op_t *op, ngx_int_t rc)
{
    ngx_connection_t  *c;

    c = op->r->connection;

    ngx_http_matrix_pg_release(op->q);

    ngx_http_finalize_request(op->r, rc);
    ngx_http_run_posted_requests(c);
}


void
ngx_http_matrix_room_continue(ngx_http_matrix_room_op_t *op, ngx_int_t rc)
{
    if (rc != NGX_DONE) {
        ngx_http_matrix_room_finish(op, rc);
    }
}


static ngx_http_matrix_pg_stmt_t  ngx_http_matrix_room_access_stmt =
    ngx_http_matrix_pg_stmt("SELECT matrix_server_access($1, $2)", 2);


ngx_int_t
ngx_http_matrix_room_access(ngx_http_matrix_room_op_t *op,
    ngx_http_matrix_room_step_pt next)
{
    ngx_str_t  values[2];

    op->pending = next;

    values[0] = op->nid;
    values[1] = op->ctx->origin;

    return ngx_http_matrix_room_run(op, &ngx_http_matrix_room_access_stmt,
                                    values, 2, ngx_http_matrix_room_accessed);
}


static ngx_int_t
ngx_http_matrix_room_accessed(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op)
{
    json_t      *doc, *acl;
    mx_err_t     err;
    ngx_uint_t   allowed;
    const char  *text;

    doc = ngx_http_matrix_room_json(op);
    if (doc == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    text = json_string_value(json_object_get(doc, "acl"));

    if (text != NULL) {
        acl = mx_json_parse(text, ngx_strlen(text), 0, &err);
        allowed = ngx_http_matrix_room_acl_allows(op,
                                                  json_object_get(acl,
                                                                  "content"));
        json_decref(acl);

        if (!allowed) {
            json_decref(doc);
            return ngx_http_matrix_forbidden(r, "The room's server ACL "
                                             "denies %V", &op->ctx->origin);
        }
    }

    if (!json_is_true(json_object_get(doc, "joined"))) {
        json_decref(doc);
        return ngx_http_matrix_forbidden(r, "%V has no user in the room",
                                         &op->ctx->origin);
    }

    json_decref(doc);

    return op->pending(r, op);
}


ngx_uint_t
ngx_http_matrix_room_acl_allows(ngx_http_matrix_room_op_t *op,
    json_t *acl_content)
{
    u_char  server[256];

    if (acl_content == NULL) {
        return 1;
    }

    if (op->ctx->origin.len >= sizeof(server)) {
        return 0;
    }

    ngx_cpystrn(server, op->ctx->origin.data, op->ctx->origin.len + 1);

    return mx_server_acl_allows(acl_content, (char *) server);
}


ngx_int_t
ngx_http_matrix_incompatible_version(ngx_http_request_t *r,
    const char *version)
{
    json_t     *body;
    ngx_int_t   rc;

    body = json_pack("{s:s,s:s,s:s}",
                     "errcode", "M_INCOMPATIBLE_ROOM_VERSION",
                     "error", "The room's version is not one both servers "
                              "support",
                     "room_version", version);
    if (body == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_matrix_send_json(r, NGX_HTTP_BAD_REQUEST, body);
    json_decref(body);

    return rc;
}


ngx_int_t
ngx_http_matrix_forbidden(ngx_http_request_t *r, const char *fmt, ...)
{
    u_char   *p;
    va_list   args;
    u_char    msg[512];

    va_start(args, fmt);
    p = ngx_vslprintf(msg, msg + sizeof(msg) - 1, fmt, args);
    va_end(args);
    *p = '\0';

    ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                  "matrix room: refused: %s", msg);

    return ngx_http_matrix_send_error(r, NGX_HTTP_FORBIDDEN, "M_FORBIDDEN",
                                      "%s", msg);
}


static ngx_http_matrix_pg_stmt_t  ngx_http_matrix_room_head_stmt =
    ngx_http_matrix_pg_stmt("SELECT matrix_room_head($1, $2, $3)", 3);


ngx_int_t
ngx_http_matrix_room_head(ngx_http_matrix_room_op_t *op, ngx_str_t *members,
    ngx_uint_t n, ngx_uint_t lock, ngx_http_matrix_room_step_pt next)
{
    char        *text;
    json_t      *a;
    ngx_int_t    rc;
    ngx_str_t    values[3];
    ngx_uint_t   i;

    a = json_array();
    if (a == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    for (i = 0; i < n; i++) {
        json_array_append_new(a, json_stringn((char *) members[i].data,
                                              members[i].len));
    }

    text = json_dumps(a, JSON_COMPACT);
    json_decref(a);

    if (text == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    values[0] = op->nid;
    values[1].data = (u_char *) text;
    values[1].len = ngx_strlen(text);
    ngx_str_set(&values[2], "false");

    if (lock) {
        ngx_str_set(&values[2], "true");
    }

    rc = ngx_http_matrix_room_run(op, &ngx_http_matrix_room_head_stmt,
                                  values, 3, next);
    free(text);

    return rc;
}


ngx_http_matrix_room_head_t *
ngx_http_matrix_room_head_get(ngx_http_matrix_room_op_t *op)
{
    json_t                       *doc;
    ngx_http_matrix_room_head_t  *h;

    doc = ngx_http_matrix_room_json(op);
    if (doc == NULL) {
        return NULL;
    }

    h = ngx_http_matrix_room_head_parse(op, doc);
    json_decref(doc);

    return h;
}


ngx_http_matrix_room_head_t *
ngx_http_matrix_room_head_parse(ngx_http_matrix_room_op_t *op, json_t *doc)
{
    json_t                       *state, *v;
    size_t                        i;
    mx_err_t                      err;
    mx_event_t                   *ev;
    ngx_pool_cleanup_t           *cln;
    ngx_http_matrix_room_head_t  *h;

    h = ngx_pcalloc(op->pool, sizeof(ngx_http_matrix_room_head_t));
    cln = ngx_pool_cleanup_add(op->pool, 0);

    if (h == NULL || cln == NULL) {
        return NULL;
    }

    cln->handler = ngx_http_matrix_room_head_cleanup;
    cln->data = h;

    h->prev_events = json_incref(json_object_get(doc, "prev"));
    h->depth = json_integer_value(json_object_get(doc, "depth"));
    state = json_object_get(doc, "state");

    for (i = 0; i < json_array_size(state); i++) {
        v = json_array_get(state, i);

        if (mx_event_parse(json_string_value(v), json_string_length(v),
                           op->version, &ev, &err)
            != MX_OK)
        {
            ngx_log_error(NGX_LOG_ERR, op->log, 0,
                          "matrix room \"%V\": a state event of ours "
                          "cannot be read: %s", &op->room_id, err.msg);
            return NULL;
        }

        if (ngx_http_matrix_keep_event(op->pool, ev) != NGX_OK
            || ngx_http_matrix_room_head_set(h, ev) != NGX_OK)
        {
            ngx_log_error(NGX_LOG_ERR, op->log, 0,
                          "matrix room \"%V\": too many state events",
                          &op->room_id);
            return NULL;
        }
    }

    if (h->create == NULL || !json_is_array(h->prev_events)) {
        ngx_log_error(NGX_LOG_ERR, op->log, 0,
                      "matrix room \"%V\": no create event", &op->room_id);
        return NULL;
    }

    return h;
}


ngx_int_t
ngx_http_matrix_room_head_set(ngx_http_matrix_room_head_t *h, mx_event_t *ev)
{
    size_t  i;

    if (ev->state_key == NULL) {
        return NGX_OK;
    }

    for (i = 0; i < h->nstate; i++) {
        if (ngx_strcmp(h->state[i]->type, ev->type) == 0
            && ngx_strcmp(h->state[i]->state_key, ev->state_key) == 0)
        {
            break;
        }
    }

    if (i == NGX_HTTP_MATRIX_HEAD_MAX) {
        return NGX_ERROR;
    }

    h->state[i] = ev;

    if (i == h->nstate) {
        h->nstate++;
    }

    if (ngx_strcmp(ev->type, "m.room.create") == 0) {
        h->create = ev;

    } else if (ngx_strcmp(ev->type, "m.room.power_levels") == 0) {
        h->power_levels = ev;

    } else if (ngx_strcmp(ev->type, "m.room.join_rules") == 0) {
        h->join_rules = ev;

    } else if (ngx_strcmp(ev->type, "m.room.server_acl") == 0) {
        h->server_acl = ev;

    } else if (ngx_strcmp(ev->type, "m.room.history_visibility") == 0) {
        h->history_visibility = ev;
    }

    return NGX_OK;
}


mx_event_t *
ngx_http_matrix_room_head_member(ngx_http_matrix_room_head_t *h,
    ngx_str_t *user_id)
{
    size_t       i;
    mx_event_t  *ev;

    for (i = 0; i < h->nstate; i++) {
        ev = h->state[i];

        if (ngx_strcmp(ev->type, "m.room.member") == 0
            && ev->state_key != NULL
            && ngx_strlen(ev->state_key) == user_id->len
            && ngx_strncmp(ev->state_key, user_id->data, user_id->len) == 0)
        {
            return ev;
        }
    }

    return NULL;
}


static void
ngx_http_matrix_room_head_cleanup(void *data)
{
    ngx_http_matrix_room_head_t  *h = data;

    json_decref(h->prev_events);
}


json_t *
ngx_http_matrix_room_json(ngx_http_matrix_room_op_t *op)
{
    PGresult  *res;

    res = op->q->result;

    if (res == NULL || PQntuples(res) < 1 || PQnfields(res) < 1
        || PQgetisnull(res, 0, 0))
    {
        return NULL;
    }

    return ngx_http_matrix_room_column_json(res, 0, 0);
}


/* event making and serving */


ngx_int_t
ngx_http_matrix_room_make_event(ngx_http_matrix_room_op_t *op,
    mx_pdu_parts_t *parts, unsigned recipe, const char *silo_message_id,
    json_t *records, char *event_id)
{
    json_t                      *pdu, *rec, *sigs;
    size_t                       n;
    mx_buf_t                     buf;
    mx_err_t                     err;
    const char                  *hash, *sig, *membership;
    u_char                       hex[2 * MX_ED25519_SIG_LEN + 1];
    u_char                       hhex[2 * MX_SHA256_LEN + 1];
    unsigned char                raw[MX_ED25519_SIG_LEN + 4];
    mx_signing_key_t            *key;
    ngx_http_matrix_srv_conf_t  *mscf;

    mscf = op->ctx->mscf;
    key = mscf->signing_keys->elts;

    parts->room_id = (char *) op->room_id.data;

    pdu = mx_pdu_build(parts, &err);
    if (pdu == NULL) {
        goto failed;
    }

    if (mx_event_sign(pdu, op->version, (char *) mscf->server_name.data, key,
                      &err)
        != MX_OK
        || mx_event_compute_id(pdu, op->version, event_id, &err) != MX_OK)
    {
        json_decref(pdu);
        goto failed;
    }

    membership = NULL;

    if (ngx_strcmp(parts->type, "m.room.member") == 0) {
        membership = json_string_value(json_object_get(parts->content,
                                                       "membership"));
    }

    rec = json_pack("{s:s,s:s,s:s?,s:s,s:I,s:I,s:O,s:O,s:s?}",
                    "event_id", event_id,
                    "type", parts->type,
                    "state_key", parts->state_key,
                    "sender", parts->sender,
                    "depth", (json_int_t) parts->depth,
                    "ts", (json_int_t) parts->origin_server_ts,
                    "prev", json_object_get(pdu, "prev_events"),
                    "auth", json_object_get(pdu, "auth_events"),
                    "membership", membership);
    if (rec == NULL) {
        json_decref(pdu);
        ngx_cpystrn((u_char *) err.msg, (u_char *) "out of memory",
                    sizeof(err.msg));
        goto failed;
    }

    if (recipe == 0) {
        mx_buf_init(&buf);

        if (mx_json_canonical(pdu, &buf, &err) != MX_OK) {
            mx_buf_free(&buf);
            json_decref(rec);
            json_decref(pdu);
            goto failed;
        }

        json_object_set_new(rec, "pdu", json_stringn((char *) buf.data,
                                                     buf.len));
        mx_buf_free(&buf);

    } else {
        hash = json_string_value(json_object_get(json_object_get(pdu,
                                                     "hashes"), "sha256"));
        sigs = json_object_get(json_object_get(pdu, "signatures"),
                               (char *) mscf->server_name.data);
        sig = json_string_value(json_object_get(sigs, key->key_id));

        if (hash == NULL || sig == NULL
            || mx_base64_decode(raw, &n, hash, ngx_strlen(hash)) != MX_OK
            || n != MX_SHA256_LEN)
        {
            json_decref(rec);
            json_decref(pdu);
            ngx_cpystrn((u_char *) err.msg, (u_char *) "no hash after signing",
                        sizeof(err.msg));
            goto failed;
        }

        *ngx_hex_dump(hhex, raw, n) = '\0';

        if (mx_base64_decode(raw, &n, sig, ngx_strlen(sig)) != MX_OK
            || n != MX_ED25519_SIG_LEN)
        {
            json_decref(rec);
            json_decref(pdu);
            ngx_cpystrn((u_char *) err.msg, (u_char *) "no signature",
                        sizeof(err.msg));
            goto failed;
        }

        *ngx_hex_dump(hex, raw, n) = '\0';

        json_object_set_new(rec, "hash", json_string((char *) hhex));
        json_object_set_new(rec, "sig", json_string((char *) hex));
        json_object_set_new(rec, "key_id", json_string(key->key_id));
        json_object_set_new(rec, "recipe", json_integer(recipe));
        json_object_set_new(rec, "silo_message_id",
                            json_string(silo_message_id));
    }

    json_decref(pdu);

    if (json_array_append_new(records, rec) != 0) {
        return NGX_ERROR;
    }

    return NGX_OK;

failed:

    ngx_log_error(NGX_LOG_ERR, op->log, 0,
                  "matrix room \"%V\": cannot make a %s event: %s",
                  &op->room_id, parts->type, err.msg);

    return NGX_ERROR;
}


ngx_int_t
ngx_http_matrix_room_record(json_t *records, const mx_event_t *ev,
    const char *outbox, mx_err_t *err)
{
    json_t    *rec;
    mx_buf_t   buf;

    mx_buf_init(&buf);

    if (mx_json_canonical(ev->json, &buf, err) != MX_OK) {
        mx_buf_free(&buf);
        return NGX_ERROR;
    }

    rec = json_pack("{s:s,s:s,s:s?,s:s,s:I,s:I,s:O,s:O,s:s?,s:s%,s:s?}",
                    "event_id", ev->event_id,
                    "type", ev->type,
                    "state_key", ev->state_key,
                    "sender", ev->sender,
                    "depth", (json_int_t) ev->depth,
                    "ts", (json_int_t) ev->origin_server_ts,
                    "prev", ev->prev_events,
                    "auth", ev->auth_events,
                    "membership", ev->membership,
                    "pdu", (char *) buf.data, buf.len,
                    "outbox", outbox);

    mx_buf_free(&buf);

    if (rec == NULL || json_array_append_new(records, rec) != 0) {
        mx_err_set(err, "out of memory");
        return NGX_ERROR;
    }

    return NGX_OK;
}


json_t *
ngx_http_matrix_room_pdus(ngx_http_matrix_room_op_t *op, json_t **ids)
{
    int        row, n;
    json_t    *pdus, *pdu, *redacted;
    mx_err_t   err;
    PGresult  *res;

    res = op->q->result;
    n = PQntuples(res);

    pdus = json_array();
    if (pdus == NULL) {
        return NULL;
    }

    if (ids) {
        *ids = json_array();
        if (*ids == NULL) {
            json_decref(pdus);
            return NULL;
        }
    }

    for (row = 0; row < n; row++) {

        if (!PQgetisnull(res, row, 2)) {
            pdu = ngx_http_matrix_room_column_json(res, row, 2);

            /* kept whole, redacted since: served as redaction left it */

            if (pdu != NULL && PQgetvalue(res, row, 20)[0] == 't') {
                redacted = mx_event_redact(pdu, op->version, &err);
                json_decref(pdu);
                pdu = redacted;
            }

        } else {
            pdu = ngx_http_matrix_room_rebuild(op, res, row);
        }

        if (pdu == NULL) {
            ngx_log_error(NGX_LOG_ERR, op->log, 0,
                          "matrix room \"%V\": event \"%s\" cannot be "
                          "served", &op->room_id, PQgetvalue(res, row, 1));
            pdu = json_null();
        }

        json_array_append_new(pdus, pdu);

        if (ids) {
            json_array_append_new(*ids, json_string(PQgetvalue(res, row, 1)));
        }
    }

    return pdus;
}


/*
 * An event kept as parts, made whole again.  Its content comes from the
 * silo (a recipe) or from the row; when the silo's message is gone or has
 * changed since, the content hash no longer matches and the event is
 * served redacted: what any server would make of it, and what the
 * signature, made over the redacted form, still proves.
 */

static json_t *
ngx_http_matrix_room_rebuild(ngx_http_matrix_room_op_t *op, PGresult *res,
    int row)
{
    return ngx_http_matrix_event_rebuild(res, row,
                                         (char *) op->ctx->mscf
                                                      ->server_name.data,
                                         op->version);
}


json_t *
ngx_http_matrix_event_rebuild(PGresult *res, int row, const char *server,
    const mx_room_version_t *version)
{
    int              col;
    json_t          *pdu, *content, *prev, *auth, *redacted;
    size_t           i;
    mx_err_t         err;
    const char      *prev_ids[64], *auth_ids[16];
    char             hash[64], sig[100];
    mx_pdu_parts_t   parts;

    /* columns of matrix_event_parts() */
    enum { NID, EVENT_ID, PDU, ROOM_ID, TYPE, STATE_KEY, SENDER, DEPTH, TS,
           PREV, AUTH, HASH, KEY_ID, SIG, CONTENT, RECIPE, BODY, HTML,
           REPLY, THREAD, REDACTED };

    (void) col;

    prev = ngx_http_matrix_room_column_json(res, row, PREV);
    auth = ngx_http_matrix_room_column_json(res, row, AUTH);

    if (!json_is_array(prev) || !json_is_array(auth)
        || json_array_size(prev) > 64 || json_array_size(auth) > 16
        || ngx_http_matrix_hex_to_b64(PQgetvalue(res, row, HASH), hash,
                                      sizeof(hash)) != NGX_OK
        || ngx_http_matrix_hex_to_b64(PQgetvalue(res, row, SIG), sig,
                                      sizeof(sig)) != NGX_OK)
    {
        json_decref(prev);
        json_decref(auth);
        return NULL;
    }

    for (i = 0; i < json_array_size(prev); i++) {
        prev_ids[i] = json_string_value(json_array_get(prev, i));
    }

    for (i = 0; i < json_array_size(auth); i++) {
        auth_ids[i] = json_string_value(json_array_get(auth, i));
    }

    content = NULL;

    if (PQgetvalue(res, row, REDACTED)[0] != 't') {
        if (!PQgetisnull(res, row, CONTENT)) {
            content = ngx_http_matrix_room_column_json(res, row, CONTENT);

        } else if (!PQgetisnull(res, row, RECIPE)) {
            content = mx_silo_message_content(
                          ngx_atoi((u_char *) PQgetvalue(res, row, RECIPE),
                                   PQgetlength(res, row, RECIPE)),
                          PQgetisnull(res, row, BODY)
                          ? NULL : PQgetvalue(res, row, BODY),
                          PQgetisnull(res, row, HTML)
                          ? NULL : PQgetvalue(res, row, HTML),
                          PQgetisnull(res, row, REPLY)
                          ? NULL : PQgetvalue(res, row, REPLY),
                          PQgetisnull(res, row, THREAD)
                          ? NULL : PQgetvalue(res, row, THREAD),
                          &err);
        }
    }

    if (content == NULL) {
        content = json_object();
    }

    ngx_memzero(&parts, sizeof(mx_pdu_parts_t));

    parts.room_id = PQgetvalue(res, row, ROOM_ID);
    parts.sender = PQgetvalue(res, row, SENDER);
    parts.type = PQgetvalue(res, row, TYPE);
    parts.state_key = PQgetisnull(res, row, STATE_KEY)
                      ? NULL : PQgetvalue(res, row, STATE_KEY);
    parts.content = content;
    parts.prev_events = prev_ids;
    parts.nprev = json_array_size(prev);
    parts.auth_events = auth_ids;
    parts.nauth = json_array_size(auth);
    parts.depth = ngx_atoof((u_char *) PQgetvalue(res, row, DEPTH),
                            PQgetlength(res, row, DEPTH));
    parts.origin_server_ts = ngx_atoof((u_char *) PQgetvalue(res, row, TS),
                                       PQgetlength(res, row, TS));
    parts.hash_b64 = hash;
    parts.server = server;
    parts.key_id = PQgetvalue(res, row, KEY_ID);
    parts.sig_b64 = sig;

    pdu = mx_pdu_build(&parts, &err);

    json_decref(content);
    json_decref(prev);
    json_decref(auth);

    if (pdu == NULL) {
        return NULL;
    }

    if (mx_event_check_content_hash(pdu, &err) != MX_OK) {
        redacted = mx_event_redact(pdu, version, &err);
        json_decref(pdu);
        pdu = redacted;
    }

    return pdu;
}


static json_t *
ngx_http_matrix_room_column_json(PGresult *res, int row, int col)
{
    mx_err_t  err;

    return mx_json_parse(PQgetvalue(res, row, col),
                         PQgetlength(res, row, col), 0, &err);
}


static ngx_int_t
ngx_http_matrix_hex_to_b64(const char *hex, char *b64, size_t max)
{
    size_t          i, n, len;
    ngx_int_t       v;
    unsigned char   raw[MX_ED25519_SIG_LEN];

    len = ngx_strlen(hex);
    n = len / 2;

    if (len % 2 || n > sizeof(raw) || mx_base64_encoded_len(n) >= max) {
        return NGX_ERROR;
    }

    for (i = 0; i < n; i++) {
        v = ngx_hextoi((u_char *) hex + 2 * i, 2);
        if (v == NGX_ERROR) {
            return NGX_ERROR;
        }

        raw[i] = (unsigned char) v;
    }

    b64[mx_base64_encode(b64, raw, n, MX_BASE64_STD)] = '\0';

    return NGX_OK;
}


ngx_int_t
ngx_http_matrix_room_state_parts(ngx_http_matrix_room_op_t *op,
    json_t **state, json_t **state_ids, json_t **chain)
{
    int        row, n, last;
    json_t    *all, *ids, *pdu;
    PGresult  *res;

    res = op->q->result;
    n = PQntuples(res);
    last = PQnfields(res) - 1;

    ids = NULL;
    all = ngx_http_matrix_room_pdus(op, &ids);
    *state = json_array();
    *chain = json_array();

    if (state_ids) {
        *state_ids = json_array();
    }

    if (all == NULL || *state == NULL || *chain == NULL
        || (state_ids && *state_ids == NULL)
        || (size_t) n != json_array_size(all))
    {
        json_decref(all);
        json_decref(ids);
        json_decref(*state);
        json_decref(*chain);

        if (state_ids) {
            json_decref(*state_ids);
        }

        return NGX_ERROR;
    }

    for (row = 0; row < n; row++) {
        pdu = json_array_get(all, row);

        if (json_is_null(pdu)) {
            continue;
        }

        if (PQgetvalue(res, row, last)[0] != '0') {
            json_array_append(*chain, pdu);
            continue;
        }

        json_array_append(*state, pdu);

        if (state_ids) {
            json_array_append(*state_ids, json_array_get(ids, row));
        }
    }

    json_decref(all);
    json_decref(ids);

    return NGX_OK;
}


void
ngx_http_matrix_room_pdus_compact(json_t *pdus)
{
    size_t  i;

    for (i = 0; i < json_array_size(pdus); /* void */) {
        if (json_is_null(json_array_get(pdus, i))) {
            json_array_remove(pdus, i);

        } else {
            i++;
        }
    }
}


ngx_int_t
ngx_http_matrix_keep_event(ngx_pool_t *pool, mx_event_t *ev)
{
    ngx_pool_cleanup_t  *cln;

    cln = ngx_pool_cleanup_add(pool, 0);
    if (cln == NULL) {
        mx_event_free(ev);
        return NGX_ERROR;
    }

    cln->handler = ngx_http_matrix_event_release;
    cln->data = ev;

    return NGX_OK;
}


ngx_int_t
ngx_http_matrix_room_cited(ngx_http_matrix_room_op_t *op, PGresult *res,
    mx_event_t **events, mx_err_t *err)
{
    int  row;

    for (row = 0; row < PQntuples(res); row++) {
        if (mx_event_parse(PQgetvalue(res, row, 0), PQgetlength(res, row, 0),
                           op->version, &events[row], err)
            != MX_OK
            || ngx_http_matrix_keep_event(op->pool, events[row]) != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


static void
ngx_http_matrix_event_release(void *data)
{
    mx_event_free(data);
}


/* users */


ngx_int_t
ngx_http_matrix_room_user(ngx_http_matrix_room_op_t *op,
    const char *localpart, ngx_str_t *user_id)
{
    size_t      len;
    ngx_str_t  *server;

    if (localpart == NULL) {
        return NGX_ERROR;
    }

    server = &op->ctx->mscf->server_name;
    len = ngx_strlen(localpart);

    user_id->data = ngx_pnalloc(op->pool, 1 + len + 1 + server->len + 1);
    if (user_id->data == NULL) {
        return NGX_ERROR;
    }

    user_id->len = ngx_sprintf(user_id->data, "@%s:%V", localpart, server)
                   - user_id->data;
    user_id->data[user_id->len] = '\0';

    return NGX_OK;
}


ngx_int_t
ngx_http_matrix_server_of(ngx_str_t *user_id, ngx_str_t *server)
{
    u_char  *colon;

    colon = ngx_strlchr(user_id->data, user_id->data + user_id->len, ':');
    if (colon == NULL) {
        return NGX_ERROR;
    }

    server->data = colon + 1;
    server->len = user_id->data + user_id->len - server->data;

    return NGX_OK;
}
