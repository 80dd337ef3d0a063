/*
 * EDUs from other servers (server-server-api.md: Typing Notifications,
 * Receipts, Presence): typing notices reach the silo as PUT typing and
 * read receipts as PUT receipts (docs/silo-contract.md), when it has
 * these writes ("matrix_silo_supports typing receipts"); presence and
 * the other EDUs are accepted and ignored.
 *
 * They are ephemeral: the next one replaces a lost one, so they get no
 * queue and no retry, and the transaction's answer never waits for them.
 * A transaction's notices and receipts (of the origin's own users only)
 * make one batch, on a pool of its own: one query finds their silo rooms
 * (only those where the user is joined: so the origin has a user joined
 * too), the rooms' server ACLs and the silo messages the receipts name;
 * then they are sent to the silo one at a time.  A worker runs a few batches
 * at once, and drops the EDUs of a transaction that comes while they
 * all run: a slow silo costs neither memory nor connections.
 */


#include "ngx_http_matrix_module.h"
#include "ngx_http_matrix_edu.h"
#include "ngx_http_matrix_room.h"
#include "ngx_http_matrix_silo_api.h"
#include "ngx_http_matrix_http.h"
#include "ngx_http_matrix_pg.h"

#include <mx_room.h>


#define NGX_HTTP_MATRIX_EDU_ITEMS      50     /* notices and receipts told,
                                                 per transaction */
#define NGX_HTTP_MATRIX_EDU_BATCHES    4      /* per worker at once: as
                                                 many silo requests */
#define NGX_HTTP_MATRIX_EDU_TIMEOUT    5000   /* a query, a silo request */

/*
 * A server says when its user stops typing, not how long the notice
 * lasts: one whose stop is lost ends by itself, after the time a typing
 * client takes to renew it (the Client-Server API suggests 30 s).
 */
#define NGX_HTTP_MATRIX_TYPING_TIMEOUT 30000


typedef struct {
    ngx_pool_t                     *pool;
    ngx_log_t                      *log;
    ngx_str_t                       origin;     /* NUL-terminated */
    json_t                         *items;      /* {"room_id", "user_id",
                                                   "typing" | "event_id",
                                                   "ts"} */
    json_t                         *writes;     /* {"path", "body"} */
    size_t                          next;
} ngx_http_matrix_edu_batch_t;


static ngx_uint_t ngx_http_matrix_edu_user(json_t *user_id,
    ngx_str_t *origin);
static void ngx_http_matrix_edu_typing(json_t *items, ngx_str_t *origin,
    json_t *content);
static void ngx_http_matrix_edu_receipts(json_t *items, ngx_str_t *origin,
    json_t *content);
static void ngx_http_matrix_edu_found(ngx_http_matrix_pg_query_t *q);
static json_t *ngx_http_matrix_edu_write(ngx_http_matrix_edu_batch_t *b,
    PGresult *res, int row);
static void ngx_http_matrix_edu_send(ngx_http_matrix_edu_batch_t *b);
static void ngx_http_matrix_edu_answered(ngx_http_matrix_http_req_t *hr);
static void ngx_http_matrix_edu_end(ngx_http_matrix_edu_batch_t *b);


/* per worker */
static ngx_uint_t  ngx_http_matrix_edu_batches;


static ngx_http_matrix_pg_stmt_t  ngx_http_matrix_edu_targets_stmt =
    ngx_http_matrix_pg_stmt(
        "SELECT ord, silo_room_id, acl, displayname, message_id "
        "FROM matrix_edu_targets($1)", 1);


void
ngx_http_matrix_edu_receive(ngx_http_request_t *r, ngx_str_t *origin,
    json_t *edus)
{
    char                         *text;
    size_t                        i;
    json_t                       *items, *edu, *content;
    ngx_str_t                     value;
    const char                   *type;
    ngx_pool_t                   *pool;
    ngx_http_matrix_pg_t         *pg;
    ngx_http_matrix_edu_batch_t  *b;
    ngx_http_matrix_pg_query_t   *q;

    if (!ngx_http_matrix_silo_supports(NGX_HTTP_MATRIX_SILO_TYPING)
        && !ngx_http_matrix_silo_supports(NGX_HTTP_MATRIX_SILO_RECEIPTS))
    {
        return;
    }

    pg = ngx_http_matrix_pg_of_cycle();

    if (pg == NULL || ngx_exiting || json_array_size(edus) == 0) {
        return;
    }

    items = json_array();
    if (items == NULL) {
        return;
    }

    for (i = 0; i < json_array_size(edus); i++) {
        edu = json_array_get(edus, i);
        type = json_string_value(json_object_get(edu, "edu_type"));
        content = json_object_get(edu, "content");

        if (type == NULL || !json_is_object(content)) {
            ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                           "matrix transaction from \"%V\": EDU %uz is "
                           "malformed, ignored", origin, i);
            continue;
        }

        if (ngx_strcmp(type, "m.typing") == 0
            && ngx_http_matrix_silo_supports(NGX_HTTP_MATRIX_SILO_TYPING))
        {
            ngx_http_matrix_edu_typing(items, origin, content);

        } else if (ngx_strcmp(type, "m.receipt") == 0
                   && ngx_http_matrix_silo_supports(
                          NGX_HTTP_MATRIX_SILO_RECEIPTS))
        {
            ngx_http_matrix_edu_receipts(items, origin, content);
        }
    }

    if (json_array_size(items) == 0) {
        json_decref(items);
        return;
    }

    if (ngx_http_matrix_edu_batches >= NGX_HTTP_MATRIX_EDU_BATCHES) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "matrix transaction from \"%V\": %uz typing notices "
                      "and receipts dropped, the silo is busy with earlier "
                      "ones", origin, json_array_size(items));
        json_decref(items);
        return;
    }

    pool = ngx_create_pool(4096, ngx_cycle->log);
    if (pool == NULL) {
        json_decref(items);
        return;
    }

    /* items go with the pool from now on, whatever happens */

    text = NULL;

    if (ngx_http_matrix_keep_json(pool, items) != NGX_OK) {
        goto failed;
    }

    text = json_dumps(items, JSON_COMPACT);
    if (text == NULL) {
        goto failed;
    }

    b = ngx_pcalloc(pool, sizeof(ngx_http_matrix_edu_batch_t));
    q = ngx_http_matrix_pg_query_create(pg, pool, ngx_cycle->log);

    if (b == NULL || q == NULL) {
        goto failed;
    }

    b->pool = pool;
    b->log = ngx_cycle->log;
    b->items = items;
    b->origin.len = origin->len;
    b->origin.data = ngx_pnalloc(pool, origin->len + 1);

    if (b->origin.data == NULL) {
        goto failed;
    }

    ngx_cpystrn(b->origin.data, origin->data, origin->len + 1);

    value.data = (u_char *) text;
    value.len = ngx_strlen(text);

    q->stmt = &ngx_http_matrix_edu_targets_stmt;
    q->nparams = 1;
    q->timeout = NGX_HTTP_MATRIX_EDU_TIMEOUT;
    q->handler = ngx_http_matrix_edu_found;
    q->data = b;

    if (ngx_http_matrix_pg_param(q, 0, &value) != NGX_OK
        || ngx_http_matrix_pg_run(q) != NGX_OK)
    {
        goto failed;
    }

    free(text);
    ngx_http_matrix_edu_batches++;

    return;

failed:

    free(text);
    ngx_destroy_pool(pool);
}


/* a user ID of the origin's */

static ngx_uint_t
ngx_http_matrix_edu_user(json_t *user_id, ngx_str_t *origin)
{
    ngx_str_t  user, server;

    if (!json_is_string(user_id) || json_string_length(user_id) > MX_ID_MAX_LEN
        || json_string_value(user_id)[0] != '@')
    {
        return 0;
    }

    user.data = (u_char *) json_string_value(user_id);
    user.len = json_string_length(user_id);

    return ngx_http_matrix_server_of(&user, &server) == NGX_OK
           && server.len == origin->len
           && ngx_strncmp(server.data, origin->data, origin->len) == 0;
}


/* m.typing: {"room_id", "user_id", "typing"} */

static void
ngx_http_matrix_edu_typing(json_t *items, ngx_str_t *origin, json_t *content)
{
    json_t  *room_id, *user_id, *typing;

    room_id = json_object_get(content, "room_id");
    user_id = json_object_get(content, "user_id");
    typing = json_object_get(content, "typing");

    if (json_array_size(items) >= NGX_HTTP_MATRIX_EDU_ITEMS
        || !json_is_string(room_id)
        || json_string_length(room_id) > MX_ID_MAX_LEN
        || !json_is_boolean(typing)
        || !ngx_http_matrix_edu_user(user_id, origin))
    {
        return;
    }

    json_array_append_new(items, json_pack("{s:O,s:O,s:O}",
                                           "room_id", room_id,
                                           "user_id", user_id,
                                           "typing", typing));
}


/*
 * m.receipt: {room ID: {"m.read": {user ID: {"event_ids": [...],
 * "data": {"ts"}}}}}: the last event read, per room and user; receipts
 * of other kinds (none yet go over federation) are not the silo's.
 */

static void
ngx_http_matrix_edu_receipts(json_t *items, ngx_str_t *origin,
    json_t *content)
{
    json_t      *room, *read, *receipt, *ids, *event_id, *ts, *user_id;
    const char  *room_id, *user;

    json_object_foreach(content, room_id, room) {

        read = json_object_get(room, "m.read");

        if (ngx_strlen(room_id) > MX_ID_MAX_LEN || !json_is_object(read)) {
            continue;
        }

        json_object_foreach(read, user, receipt) {

            if (json_array_size(items) >= NGX_HTTP_MATRIX_EDU_ITEMS) {
                return;
            }

            ids = json_object_get(receipt, "event_ids");
            event_id = json_array_get(ids, json_array_size(ids) - 1);
            ts = json_object_get(json_object_get(receipt, "data"), "ts");

            if (!json_is_string(event_id)
                || json_string_length(event_id) > MX_ID_MAX_LEN)
            {
                continue;
            }

            user_id = json_string(user);

            if (user_id != NULL && ngx_http_matrix_edu_user(user_id, origin)) {
                json_array_append_new(items,
                    json_pack("{s:s,s:O,s:O,s:I}",
                              "room_id", room_id,
                              "user_id", user_id,
                              "event_id", event_id,
                              "ts", json_is_integer(ts)
                                    ? (json_int_t) json_integer_value(ts)
                                    : (json_int_t) ngx_http_matrix_now_ms()));
            }

            json_decref(user_id);
        }
    }
}


static void
ngx_http_matrix_edu_found(ngx_http_matrix_pg_query_t *q)
{
    int                           row, n;
    json_t                       *w;
    ngx_http_matrix_edu_batch_t  *b;

    b = q->data;

    if (q->status != NGX_HTTP_MATRIX_PG_OK) {
        ngx_log_error(NGX_LOG_INFO, b->log, 0,
                      "matrix EDUs from \"%V\" not told to the silo: %s%s%V",
                      &b->origin, ngx_http_matrix_pg_status_text(q->status),
                      q->error.len ? ": " : "", &q->error);
        ngx_http_matrix_edu_end(b);
        return;
    }

    b->writes = json_array();

    if (b->writes == NULL
        || ngx_http_matrix_keep_json(b->pool, b->writes) != NGX_OK)
    {
        ngx_http_matrix_edu_end(b);
        return;
    }

    n = PQntuples(q->result);

    for (row = 0; row < n; row++) {
        w = ngx_http_matrix_edu_write(b, q->result, row);

        if (w != NULL) {
            json_array_append_new(b->writes, w);
        }
    }

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, b->log, 0,
                   "matrix EDUs from \"%V\": %uz of %uz for the silo",
                   &b->origin, json_array_size(b->writes),
                   json_array_size(b->items));

    ngx_http_matrix_edu_send(b);
}


/*
 * The silo's write of one notice or receipt, {"path", "body"}; NULL for
 * one the room's server ACL denies, or a receipt of an event that stands
 * for no silo message of the room.
 */

static json_t *
ngx_http_matrix_edu_write(ngx_http_matrix_edu_batch_t *b, PGresult *res,
    int row)
{
    json_t      *item, *acl, *sender, *body;
    mx_err_t     err;
    ngx_int_t    ord;
    ngx_uint_t   allowed;
    const char  *room_id;

    ord = ngx_atoi((u_char *) PQgetvalue(res, row, 0),
                   PQgetlength(res, row, 0));
    item = json_array_get(b->items, ord - 1);
    room_id = PQgetvalue(res, row, 1);

    if (item == NULL) {
        return NULL;
    }

    if (!PQgetisnull(res, row, 2)) {
        acl = mx_json_parse(PQgetvalue(res, row, 2), PQgetlength(res, row, 2),
                            0, &err);
        allowed = acl && mx_server_acl_allows(acl, (char *) b->origin.data);
        json_decref(acl);

        if (!allowed) {
            ngx_log_debug2(NGX_LOG_DEBUG_HTTP, b->log, 0,
                           "matrix EDU from \"%V\" for room \"%s\": denied "
                           "by the server ACL", &b->origin,
                           json_string_value(json_object_get(item,
                                                             "room_id")));
            return NULL;
        }
    }

    if (json_is_string(json_object_get(item, "event_id"))
        && PQgetisnull(res, row, 4))
    {
        ngx_log_debug2(NGX_LOG_DEBUG_HTTP, b->log, 0,
                       "matrix receipt from \"%V\": event \"%s\" stands for "
                       "no silo message, dropped", &b->origin,
                       json_string_value(json_object_get(item, "event_id")));
        return NULL;
    }

    sender = json_pack("{s:O}", "user_id", json_object_get(item, "user_id"));

    if (sender != NULL && !PQgetisnull(res, row, 3)) {
        json_object_set_new(sender, "displayname",
                            json_string(PQgetvalue(res, row, 3)));
    }

    if (sender == NULL) {
        return NULL;
    }

    if (json_is_boolean(json_object_get(item, "typing"))) {
        body = json_pack("{s:s,s:{s:s,s:O,s:O,s:i}}",
                         "path", "typing",
                         "body", "room_id", room_id,
                         "sender", sender,
                         "typing", json_object_get(item, "typing"),
                         "timeout", NGX_HTTP_MATRIX_TYPING_TIMEOUT);

    } else {
        body = json_pack("{s:s,s:{s:s,s:O,s:s,s:O}}",
                         "path", "receipts",
                         "body", "room_id", room_id,
                         "sender", sender,
                         "message_id", PQgetvalue(res, row, 4),
                         "ts", json_object_get(item, "ts"));
    }

    json_decref(sender);

    return body;
}


/* the batch's next write: one silo request at a time */

static void
ngx_http_matrix_edu_send(ngx_http_matrix_edu_batch_t *b)
{
    json_t                      *w;
    ngx_str_t                    path;
    ngx_http_matrix_http_req_t  *hr;

    while (b->next < json_array_size(b->writes)) {
        w = json_array_get(b->writes, b->next++);

        path.data = (u_char *) json_string_value(json_object_get(w, "path"));
        path.len = ngx_strlen(path.data);

        hr = ngx_http_matrix_http_create((ngx_cycle_t *) ngx_cycle, b->pool,
                                         b->log);
        if (hr == NULL) {
            break;
        }

        if (ngx_http_matrix_silo_request(hr, b->pool, &path, NULL,
                                         json_object_get(w, "body"))
            != NGX_OK)
        {
            break;
        }

        hr->timeout = NGX_HTTP_MATRIX_EDU_TIMEOUT;
        hr->handler = ngx_http_matrix_edu_answered;
        hr->data = b;

        if (ngx_http_matrix_http_send(hr) == NGX_OK) {
            return;
        }
    }

    ngx_http_matrix_edu_end(b);
}


static void
ngx_http_matrix_edu_answered(ngx_http_matrix_http_req_t *hr)
{
    ngx_http_matrix_edu_batch_t  *b;

    b = hr->data;

    if (hr->status < 200 || hr->status >= 300) {
        /* not retried: the next notice or receipt will say as much */
        ngx_log_error(NGX_LOG_INFO, b->log, 0,
                      "matrix silo api: %V not written (%ui%s%V): dropped",
                      &hr->uri, hr->status, hr->status ? " " : ", ",
                      hr->status ? &hr->response : &hr->error);
    }

    ngx_http_matrix_edu_send(b);
}


static void
ngx_http_matrix_edu_end(ngx_http_matrix_edu_batch_t *b)
{
    ngx_http_matrix_edu_batches--;

    /* we may be in a call of one of its objects: nothing of it after */
    ngx_destroy_pool(b->pool);
}
