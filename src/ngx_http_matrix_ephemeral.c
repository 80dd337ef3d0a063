/*
 * Typing notices and read receipts of silo users, out as EDUs
 * (server-server-api.md, "Typing Notifications", "Receipts").
 *
 * The silo tells the database, not us: NOTIFY matrix_silo_ephemeral with
 * a JSON payload (docs/silo-contract.md, "Typing and read receipts"),
 * from the session that saw the user type or read.  Every worker of
 * every node listens; each resolves the payload to Matrix terms (the
 * room, the user's Matrix ID, the event that mirrors the message read,
 * the other servers with a user joined) and hands the EDU to its sender,
 * which keeps it only for the destinations it sends to, so that each
 * destination gets it once.  Ephemeral by nature: nothing is stored, a
 * notice that finds the database busy is dropped, and so is one for a
 * user with no join in the Matrix room (the other servers would drop it).
 */


#include "ngx_http_matrix_module.h"
#include "ngx_http_matrix_feed.h"
#include "ngx_http_matrix_pg.h"


#define NGX_HTTP_MATRIX_EPHEMERAL_INFLIGHT  32      /* per worker */
#define NGX_HTTP_MATRIX_EPHEMERAL_TIMEOUT   1000    /* ms, a statement */


typedef struct {
    ngx_log_t                      *log;
    ngx_http_matrix_srv_conf_t     *mscf;
    ngx_uint_t                      inflight;
} ngx_http_matrix_ephemeral_t;


/* one notice being resolved */
typedef struct {
    ngx_http_matrix_ephemeral_t    *e;
    ngx_pool_t                     *pool;
    ngx_uint_t                      receipt;
    ngx_uint_t                      typing;
    int64_t                         ts;
} ngx_http_matrix_ephemeral_job_t;


static void ngx_http_matrix_ephemeral_notify(void *data, const char *channel,
    const char *payload);
static void ngx_http_matrix_ephemeral_resolved(ngx_http_matrix_pg_query_t *q);
static json_t *ngx_http_matrix_ephemeral_edu(
    ngx_http_matrix_ephemeral_job_t *j, const char *room_id,
    const char *user_id, const char *event_id);


static ngx_http_matrix_pg_stmt_t  ngx_http_matrix_ephemeral_resolve =
    ngx_http_matrix_pg_stmt(
        "SELECT room_id, user_id, event_id, server "
        "FROM matrix_ephemeral_resolve($1, $2, $3, $4)", 4);


ngx_int_t
ngx_http_matrix_ephemeral_init_process(ngx_cycle_t *cycle)
{
    ngx_http_matrix_srv_conf_t   *mscf;
    ngx_http_matrix_main_conf_t  *mmcf;
    ngx_http_matrix_ephemeral_t  *e;

    mscf = ngx_http_matrix_background_srv_conf(cycle);
    if (mscf == NULL) {
        return NGX_OK;
    }

    mmcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_matrix_module);

    e = ngx_pcalloc(cycle->pool, sizeof(ngx_http_matrix_ephemeral_t));
    if (e == NULL) {
        return NGX_ERROR;
    }

    e->log = cycle->log;
    e->mscf = mscf;

    return ngx_http_matrix_pg_listen(mmcf->pg, "matrix_silo_ephemeral",
                                     ngx_http_matrix_ephemeral_notify, e);
}


/*
 *   {"type": "typing", "room_id": "1", "user_id": "42", "typing": true}
 *   {"type": "receipt", "room_id": "1", "user_id": "42",
 *    "message_id": "1001", "ts": 1710000000000}
 */

static void
ngx_http_matrix_ephemeral_notify(void *data, const char *channel,
    const char *payload)
{
    json_t                           *doc, *v;
    size_t                            i;
    mx_err_t                          err;
    ngx_str_t                         values[4];
    ngx_pool_t                       *pool;
    const char                       *type, *s[3];
    ngx_http_matrix_pg_t             *pg;
    ngx_http_matrix_pg_query_t       *q;
    ngx_http_matrix_ephemeral_t      *e;
    ngx_http_matrix_ephemeral_job_t  *j;

    e = data;
    pool = NULL;

    if (payload == NULL) {
        /* (re)subscribed: what was missed meanwhile is gone, as it may */
        return;
    }

    if (!ngx_http_matrix_sender_sends()) {
        /* another worker sends to every destination */
        return;
    }

    doc = mx_json_parse(payload, ngx_strlen(payload), 0, &err);

    type = json_string_value(json_object_get(doc, "type"));
    s[0] = json_string_value(json_object_get(doc, "room_id"));
    s[1] = json_string_value(json_object_get(doc, "user_id"));
    s[2] = json_string_value(json_object_get(doc, "message_id"));

    if (type == NULL || s[0] == NULL || s[1] == NULL) {
        goto invalid;
    }

    if (e->inflight >= NGX_HTTP_MATRIX_EPHEMERAL_INFLIGHT) {
        ngx_log_debug0(NGX_LOG_DEBUG_HTTP, e->log, 0,
                       "matrix ephemeral: busy, a notice dropped");
        json_decref(doc);
        return;
    }

    pg = ngx_http_matrix_pg_of_cycle();
    if (pg == NULL) {
        json_decref(doc);
        return;
    }

    pool = ngx_create_pool(1024, e->log);
    if (pool == NULL) {
        json_decref(doc);
        return;
    }

    j = ngx_pcalloc(pool, sizeof(ngx_http_matrix_ephemeral_job_t));
    if (j == NULL) {
        goto failed;
    }

    j->e = e;
    j->pool = pool;

    if (ngx_strcmp(type, "typing") == 0) {
        v = json_object_get(doc, "typing");
        if (!json_is_boolean(v)) {
            goto invalid;
        }

        /* the receiving servers time it out themselves */
        j->typing = json_is_true(v);
        s[2] = NULL;

    } else if (ngx_strcmp(type, "receipt") == 0) {
        if (s[2] == NULL) {
            goto invalid;
        }

        j->receipt = 1;

        v = json_object_get(doc, "ts");
        j->ts = json_is_integer(v) ? json_integer_value(v)
                                   : ngx_http_matrix_now_ms();

    } else {
        goto invalid;
    }

    q = ngx_http_matrix_pg_query_create(pg, pool, e->log);
    if (q == NULL) {
        goto failed;
    }

    values[0] = e->mscf->server_name;

    for (i = 0; i < 3; i++) {
        values[i + 1].data = (u_char *) s[i];
        values[i + 1].len = s[i] ? ngx_strlen(s[i]) : 0;
    }

    q->stmt = &ngx_http_matrix_ephemeral_resolve;
    q->nparams = 4;
    q->timeout = NGX_HTTP_MATRIX_EPHEMERAL_TIMEOUT;
    q->handler = ngx_http_matrix_ephemeral_resolved;
    q->data = j;

    for (i = 0; i < 4; i++) {
        if (values[i].data == NULL) {
            q->values[i] = NULL;
            q->lengths[i] = 0;
            continue;
        }

        if (ngx_http_matrix_pg_param(q, i, &values[i]) != NGX_OK) {
            goto failed;
        }
    }

    json_decref(doc);
    doc = NULL;

    if (ngx_http_matrix_pg_run(q) != NGX_OK) {
        goto failed;
    }

    e->inflight++;

    return;

invalid:

    ngx_log_error(NGX_LOG_WARN, e->log, 0,
                  "matrix ephemeral: a notice on \"%s\" is not one the "
                  "contract knows, ignored: %s", channel, payload);

failed:

    json_decref(doc);

    if (pool) {
        ngx_destroy_pool(pool);
    }
}


static void
ngx_http_matrix_ephemeral_resolved(ngx_http_matrix_pg_query_t *q)
{
    int                               i, n;
    json_t                           *edu;
    ngx_str_t                         server;
    PGresult                         *res;
    ngx_http_matrix_ephemeral_job_t  *j;

    j = q->data;
    res = q->result;

    j->e->inflight--;

    if (q->status != NGX_HTTP_MATRIX_PG_OK) {
        ngx_log_error(NGX_LOG_INFO, j->e->log, 0,
                      "matrix ephemeral: a notice dropped: %s%s%V",
                      ngx_http_matrix_pg_status_text(q->status),
                      q->error.len ? ": " : "", &q->error);
        goto done;
    }

    /* a row per other server: none for a room Matrix has not, a user
       not joined, or (a receipt) a message no event mirrors */

    n = PQntuples(res);

    if (n == 0 || (j->receipt && PQgetisnull(res, 0, 2))) {
        goto done;
    }

    edu = ngx_http_matrix_ephemeral_edu(j, PQgetvalue(res, 0, 0),
                                        PQgetvalue(res, 0, 1),
                                        PQgetvalue(res, 0, 2));
    if (edu == NULL) {
        goto done;
    }

    for (i = 0; i < n; i++) {
        server.data = (u_char *) PQgetvalue(res, i, 3);
        server.len = PQgetlength(res, i, 3);

        ngx_http_matrix_sender_edu(&server, edu);
    }

    json_decref(edu);

done:

    ngx_destroy_pool(j->pool);
}


static json_t *
ngx_http_matrix_ephemeral_edu(ngx_http_matrix_ephemeral_job_t *j,
    const char *room_id, const char *user_id, const char *event_id)
{
    if (!j->receipt) {
        return json_pack("{s:s,s:{s:s,s:s,s:b}}", "edu_type", "m.typing",
                         "content", "room_id", room_id, "user_id", user_id,
                         "typing", (int) j->typing);
    }

    return json_pack("{s:s,s:{s:{s:{s:{s:[s],s:{s:I}}}}}}",
                     "edu_type", "m.receipt", "content", room_id, "m.read",
                     user_id, "event_ids", event_id, "data", "ts",
                     (json_int_t) j->ts);
}
