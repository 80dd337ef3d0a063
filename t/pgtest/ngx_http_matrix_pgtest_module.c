/*
 * Test-only: ngx_http_matrix_module's Postgres pool and federation HTTP
 * client, driven by requests and timers, so that the tests can reach
 * every part of their interfaces.  Loaded after ngx_http_matrix_module,
 * whose symbols it uses.
 *
 *   location /sql { matrix_pgtest; }
 *       ?sql=..&sql2=..&sql3=..&sql4=..   statements, in order
 *       &p1=..&p2=..                      parameters of each
 *       &stmt=sleep|echo                  a prepared statement instead
 *       &tx=1                             all on one leased connection
 *       &leave=1                          finish without releasing it
 *       &timeout=MS                       per statement
 *       &pause=MS                         between statements
 *       &noop=1                           release the lease unused
 *   matrix_pgtest_listen CHANNEL;         (http) notifications are kept
 *   location /notes { matrix_pgtest_notifications; }
 *       a notification with the payload "subscribe" subscribes to
 *       "late_channel" from inside the notification
 *   matrix_pgtest_timer 200ms "SQL";      (http) with no request at all
 *
 *   location /fetch { matrix_httptest; }
 *       ?host=..&port=..&tls=0|1&tls_name=..&host_header=..
 *       &method=..&uri=..&body=..&max=BYTES&timeout=MS
 *       &destination=NAME     X-Matrix signed as this server, for NAME
 *       answers "status: N\nerror: ..\ncontent-type: ..\n\nBODY"
 *
 *   location /dest { matrix_destinationtest [WELL_KNOWN_PORT FALLBACK_PORT]; }
 *       ?server_name=..[&fetch=1]   server discovery; answers "host: ..\n
 *       port: ..\nhost_header: ..\ntls_name: ..\nhow: ..\nerror: ..\n"
 *       (and "well_known_error: .."); fetch=1 then GETs
 *       /_matrix/key/v2/server there: "status: ..\nbody: ..".  The ports
 *       replace 443 and 8448 (the fake homeserver's port).
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_matrix_module.h"
#include "ngx_http_matrix_pg.h"
#include "ngx_http_matrix_http.h"
#include "ngx_http_matrix_destination.h"


static char *ngx_http_matrix_destinationtest(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);


typedef struct {
    ngx_array_t                  *channels;    /* char * */
    ngx_msec_t                    timer_interval;
    ngx_str_t                     timer_sql;

    /* per worker */
    ngx_array_t                   notes;       /* ngx_str_t */
    ngx_event_t                   timer;
    ngx_http_matrix_pg_query_t   *timer_q;
    ngx_pool_t                   *pool;
    ngx_uint_t                    timer_runs;
} ngx_http_matrix_pgtest_main_conf_t;


typedef struct {
    ngx_http_request_t           *r;
    ngx_http_matrix_pg_query_t   *q;
    ngx_str_t                     sql[4];
    ngx_str_t                     params[2];
    ngx_uint_t                    nsql;
    ngx_uint_t                    nparams;
    ngx_uint_t                    next;
    ngx_uint_t                    tx;
    ngx_uint_t                    leave;
    ngx_uint_t                    stmt;        /* 0, 1 sleep, 2 echo */
    ngx_msec_t                    timeout;
    ngx_msec_t                    pause;
    ngx_uint_t                    noop;
    ngx_event_t                   pause_event;
    ngx_buf_t                    *out;
} ngx_http_matrix_pgtest_ctx_t;


static char *ngx_http_matrix_pgtest(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_matrix_pgtest_notifications(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static char *ngx_http_matrix_httptest(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_matrix_pgtest_listen(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_matrix_pgtest_timer(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static void *ngx_http_matrix_pgtest_create_main_conf(ngx_conf_t *cf);
static ngx_int_t ngx_http_matrix_pgtest_init_process(ngx_cycle_t *cycle);
static void ngx_http_matrix_pgtest_exit_process(ngx_cycle_t *cycle);


static ngx_command_t  ngx_http_matrix_pgtest_commands[] = {

    { ngx_string("matrix_pgtest"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_matrix_pgtest,
      0, 0, NULL },

    { ngx_string("matrix_pgtest_notifications"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_matrix_pgtest_notifications,
      0, 0, NULL },

    { ngx_string("matrix_httptest"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_matrix_httptest,
      0, 0, NULL },

    { ngx_string("matrix_destinationtest"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS|NGX_CONF_TAKE2,
      ngx_http_matrix_destinationtest,
      0, 0, NULL },

    { ngx_string("matrix_pgtest_listen"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_matrix_pgtest_listen,
      NGX_HTTP_MAIN_CONF_OFFSET, 0, NULL },

    { ngx_string("matrix_pgtest_timer"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE2,
      ngx_http_matrix_pgtest_timer,
      NGX_HTTP_MAIN_CONF_OFFSET, 0, NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_matrix_pgtest_module_ctx = {
    NULL, NULL,
    ngx_http_matrix_pgtest_create_main_conf, NULL,
    NULL, NULL,
    NULL, NULL
};


ngx_module_t  ngx_http_matrix_pgtest_module = {
    NGX_MODULE_V1,
    &ngx_http_matrix_pgtest_module_ctx,
    ngx_http_matrix_pgtest_commands,
    NGX_HTTP_MODULE,
    NULL, NULL,
    ngx_http_matrix_pgtest_init_process,
    NULL, NULL,
    ngx_http_matrix_pgtest_exit_process,
    NULL,
    NGX_MODULE_V1_PADDING
};


static ngx_http_matrix_pg_stmt_t  ngx_http_matrix_pgtest_sleep =
    ngx_http_matrix_pg_stmt("SELECT pg_sleep($1::float8), 'slept'", 1);
static ngx_http_matrix_pg_stmt_t  ngx_http_matrix_pgtest_echo =
    ngx_http_matrix_pg_stmt("SELECT $1::text", 1);


static ngx_http_matrix_pg_t *
ngx_http_matrix_pgtest_pg(ngx_cycle_t *cycle)
{
    ngx_http_matrix_main_conf_t  *mmcf;

    mmcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_matrix_module);

    return mmcf ? mmcf->pg : NULL;
}


static void
ngx_http_matrix_pgtest_print(ngx_buf_t *b, ngx_http_matrix_pg_query_t *q,
    ngx_uint_t i)
{
    int  row, col, nrows, ncols;

    b->last = ngx_slprintf(b->last, b->end, "%ui: %s%s%V\n", i + 1,
                           ngx_http_matrix_pg_status_text(q->status),
                           q->error.len ? ": " : "", &q->error);

    if (q->status != NGX_HTTP_MATRIX_PG_OK || q->result == NULL) {
        return;
    }

    nrows = PQntuples(q->result);
    ncols = PQnfields(q->result);

    for (row = 0; row < nrows; row++) {
        b->last = ngx_slprintf(b->last, b->end, "  ");

        for (col = 0; col < ncols; col++) {
            b->last = ngx_slprintf(b->last, b->end, "%s%s", col ? "|" : "",
                                   PQgetisnull(q->result, row, col)
                                   ? "NULL" : PQgetvalue(q->result, row, col));
        }

        b->last = ngx_slprintf(b->last, b->end, "\n");
    }
}


static ngx_int_t
ngx_http_matrix_pgtest_send(ngx_http_request_t *r, ngx_buf_t *b)
{
    ngx_int_t    rc;
    ngx_chain_t  out;

    r->headers_out.status = NGX_HTTP_OK;
    r->headers_out.content_length_n = b->last - b->pos;
    ngx_str_set(&r->headers_out.content_type, "text/plain");

    rc = ngx_http_send_header(r);
    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    b->last_buf = 1;
    b->last_in_chain = 1;
    if (b->last == b->pos) {
        b->sync = 1;
    }

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


static ngx_int_t ngx_http_matrix_pgtest_next(
    ngx_http_matrix_pgtest_ctx_t *ctx);


static void
ngx_http_matrix_pgtest_done(ngx_http_matrix_pgtest_ctx_t *ctx)
{
    ngx_int_t            rc;
    ngx_connection_t    *c;
    ngx_http_request_t  *r;

    r = ctx->r;
    c = r->connection;

    if (ctx->tx && !ctx->leave) {
        ngx_http_matrix_pg_release(ctx->q);
    }

    rc = ngx_http_matrix_pgtest_send(r, ctx->out);

    ngx_http_finalize_request(r, rc);
    ngx_http_run_posted_requests(c);
}


static void
ngx_http_matrix_pgtest_pause_handler(ngx_event_t *ev)
{
    ngx_http_matrix_pgtest_ctx_t  *ctx = ev->data;

    if (ngx_http_matrix_pgtest_next(ctx) != NGX_OK) {
        ngx_http_matrix_pgtest_done(ctx);
    }
}


static void
ngx_http_matrix_pgtest_handler(ngx_http_matrix_pg_query_t *q)
{
    ngx_http_matrix_pgtest_ctx_t  *ctx;

    ctx = q->data;

    if (ctx->noop) {
        ctx->out->last = ngx_slprintf(ctx->out->last, ctx->out->end,
                                      "lease: %s, released unused\n",
                                      ngx_http_matrix_pg_status_text(q->status));
        ngx_http_matrix_pgtest_done(ctx);
        return;
    }

    if (ctx->tx && ctx->next == 0 && !q->leased
        && q->status == NGX_HTTP_MATRIX_PG_OK)
    {
        /* not expected: acquire succeeded without a lease */
        q->status = NGX_HTTP_MATRIX_PG_LOST;
    }

    if (ctx->next > 0 || !ctx->tx) {
        ngx_http_matrix_pgtest_print(ctx->out, q, ctx->next ? ctx->next - 1
                                                            : 0);
    } else {
        ctx->out->last = ngx_slprintf(ctx->out->last, ctx->out->end,
                                      "lease: %s%s%V\n",
                                      ngx_http_matrix_pg_status_text(q->status),
                                      q->error.len ? ": " : "", &q->error);
    }

    if (q->status != NGX_HTTP_MATRIX_PG_OK || ctx->next >= ctx->nsql) {
        ngx_http_matrix_pgtest_done(ctx);
        return;
    }

    if (ctx->pause && ctx->next > 0) {
        ctx->pause_event.handler = ngx_http_matrix_pgtest_pause_handler;
        ctx->pause_event.data = ctx;
        ctx->pause_event.log = ctx->r->connection->log;
        ngx_add_timer(&ctx->pause_event, ctx->pause);
        return;
    }

    if (ngx_http_matrix_pgtest_next(ctx) != NGX_OK) {
        ngx_http_matrix_pgtest_done(ctx);
    }
}


static ngx_int_t
ngx_http_matrix_pgtest_next(ngx_http_matrix_pgtest_ctx_t *ctx)
{
    ngx_uint_t                   i;
    ngx_http_matrix_pg_query_t  *q;

    q = ctx->q;

    q->stmt = (ctx->stmt == 1) ? &ngx_http_matrix_pgtest_sleep
              : (ctx->stmt == 2) ? &ngx_http_matrix_pgtest_echo : NULL;
    q->sql = (char *) ctx->sql[ctx->next].data;
    q->nparams = ctx->nparams;
    q->timeout = ctx->timeout;

    for (i = 0; i < ctx->nparams; i++) {
        if (ngx_http_matrix_pg_param(q, i, &ctx->params[i]) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    ctx->next++;

    if (!ctx->tx) {
        /* each statement on whichever connection is free */
        q->leased = 0;
    }

    return ngx_http_matrix_pg_run(q);
}


static ngx_int_t
ngx_http_matrix_pgtest_arg(ngx_http_request_t *r, char *name, ngx_str_t *v)
{
    u_char  *dst, *src;

    if (ngx_http_arg(r, (u_char *) name, ngx_strlen(name), v) != NGX_OK) {
        v->len = 0;
        v->data = NULL;
        return NGX_DECLINED;
    }

    dst = ngx_pnalloc(r->pool, v->len + 1);
    if (dst == NULL) {
        return NGX_ERROR;
    }

    src = v->data;
    v->data = dst;
    ngx_unescape_uri(&dst, &src, v->len, 0);
    v->len = dst - v->data;
    *dst = '\0';

    return NGX_OK;
}


static ngx_int_t
ngx_http_matrix_pgtest_content(ngx_http_request_t *r)
{
    ngx_str_t                      v;
    ngx_http_matrix_pg_t          *pg;
    ngx_http_matrix_pgtest_ctx_t  *ctx;
    static char                   *sqls[] = { "sql", "sql2", "sql3", "sql4" };
    static char                   *ps[] = { "p1", "p2" };
    ngx_uint_t                     i;

    pg = ngx_http_matrix_pg_for_request(r);
    if (pg == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_matrix_pgtest_ctx_t));
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->r = r;

    for (i = 0; i < 4; i++) {
        if (ngx_http_matrix_pgtest_arg(r, sqls[i], &ctx->sql[i]) == NGX_OK) {
            ctx->nsql = i + 1;
        }
    }

    for (i = 0; i < 2; i++) {
        if (ngx_http_matrix_pgtest_arg(r, ps[i], &ctx->params[i]) == NGX_OK) {
            ctx->nparams = i + 1;
        }
    }

    if (ngx_http_matrix_pgtest_arg(r, "stmt", &v) == NGX_OK) {
        ctx->stmt = (v.len == 5 && ngx_strncmp(v.data, "sleep", 5) == 0)
                    ? 1 : 2;
        if (ctx->nsql == 0) {
            ctx->nsql = 1;
            ngx_str_set(&ctx->sql[0], "");
        }
    }

    ctx->tx = (ngx_http_matrix_pgtest_arg(r, "tx", &v) == NGX_OK);
    ctx->leave = (ngx_http_matrix_pgtest_arg(r, "leave", &v) == NGX_OK);

    if (ngx_http_matrix_pgtest_arg(r, "timeout", &v) == NGX_OK) {
        ctx->timeout = ngx_atoi(v.data, v.len);
    }

    if (ngx_http_matrix_pgtest_arg(r, "pause", &v) == NGX_OK) {
        ctx->pause = ngx_atoi(v.data, v.len);
    }

    ctx->noop = (ngx_http_matrix_pgtest_arg(r, "noop", &v) == NGX_OK);

    if (ctx->noop) {
        ctx->tx = 1;
        if (ctx->nsql == 0) {
            ctx->nsql = 1;
            ngx_str_set(&ctx->sql[0], "");
        }
    }

    if (ctx->nsql == 0) {
        return NGX_HTTP_BAD_REQUEST;
    }

    ctx->out = ngx_create_temp_buf(r->pool, 65536);
    if (ctx->out == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->q = ngx_http_matrix_pg_query_create(pg, r->pool, r->connection->log);
    if (ctx->q == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->q->handler = ngx_http_matrix_pgtest_handler;
    ctx->q->data = ctx;
    ctx->q->timeout = ctx->timeout;

    if (ctx->tx) {
        if (ngx_http_matrix_pg_acquire(ctx->q) != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

    } else if (ngx_http_matrix_pgtest_next(ctx) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    r->main->count++;

    return NGX_DONE;
}


static ngx_int_t
ngx_http_matrix_pgtest_notes_content(ngx_http_request_t *r)
{
    ngx_buf_t                           *b;
    ngx_str_t                           *note;
    ngx_uint_t                           i;
    ngx_http_matrix_pgtest_main_conf_t  *tmcf;

    tmcf = ngx_http_get_module_main_conf(r, ngx_http_matrix_pgtest_module);

    b = ngx_create_temp_buf(r->pool, 65536);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b->last = ngx_slprintf(b->last, b->end, "timer runs: %ui\n",
                           tmcf->timer_runs);

    note = tmcf->notes.elts;
    for (i = 0; i < tmcf->notes.nelts; i++) {
        b->last = ngx_slprintf(b->last, b->end, "%V\n", &note[i]);
    }

    tmcf->notes.nelts = 0;

    return ngx_http_matrix_pgtest_send(r, b);
}


static void
ngx_http_matrix_pgtest_notify(void *data, const char *channel,
    const char *payload)
{
    ngx_http_matrix_pgtest_main_conf_t *tmcf = data;

    u_char     *p;
    ngx_str_t  *note;

    if (tmcf->notes.nelts >= 1000) {
        return;
    }

    note = ngx_array_push(&tmcf->notes);
    if (note == NULL) {
        return;
    }

    p = ngx_pnalloc(tmcf->pool, 256);
    if (p == NULL) {
        tmcf->notes.nelts--;
        return;
    }

    note->data = p;
    note->len = (channel ? ngx_snprintf(p, 256, "%s:%s", channel, payload)
                         : ngx_snprintf(p, 256, "(re)subscribed")) - p;

    if (channel && ngx_strcmp(payload, "subscribe") == 0) {
        (void) ngx_http_matrix_pg_listen(
                   ngx_http_matrix_pgtest_pg((ngx_cycle_t *) ngx_cycle),
                   "late_channel", ngx_http_matrix_pgtest_notify, tmcf);
    }
}


static void
ngx_http_matrix_pgtest_timer_done(ngx_http_matrix_pg_query_t *q)
{
    ngx_http_matrix_pgtest_main_conf_t *tmcf = q->data;

    tmcf->timer_runs++;

    ngx_log_error(NGX_LOG_NOTICE, q->log, 0,
                  "pgtest timer: %s%s%V, %d rows",
                  ngx_http_matrix_pg_status_text(q->status),
                  q->error.len ? ": " : "", &q->error,
                  q->result ? PQntuples(q->result) : -1);

    if (!ngx_exiting && !ngx_terminate) {
        ngx_add_timer(&tmcf->timer, tmcf->timer_interval);
    }
}


static void
ngx_http_matrix_pgtest_timer_handler(ngx_event_t *ev)
{
    ngx_http_matrix_pgtest_main_conf_t *tmcf = ev->data;

    if (ngx_exiting || ngx_terminate) {
        return;
    }

    tmcf->timer_q->sql = (char *) tmcf->timer_sql.data;

    if (ngx_http_matrix_pg_run(tmcf->timer_q) != NGX_OK) {
        ngx_add_timer(&tmcf->timer, tmcf->timer_interval);
    }
}


static ngx_int_t
ngx_http_matrix_pgtest_init_process(ngx_cycle_t *cycle)
{
    char                               **ch;
    ngx_uint_t                           i;
    ngx_http_matrix_pg_t                *pg;
    ngx_http_matrix_pgtest_main_conf_t  *tmcf;

    tmcf = ngx_http_cycle_get_module_main_conf(cycle,
                                               ngx_http_matrix_pgtest_module);
    pg = ngx_http_matrix_pgtest_pg(cycle);

    if (tmcf == NULL || pg == NULL) {
        return NGX_OK;
    }

    tmcf->pool = ngx_create_pool(4096, cycle->log);
    if (tmcf->pool == NULL) {
        return NGX_ERROR;
    }

    if (ngx_array_init(&tmcf->notes, tmcf->pool, 16, sizeof(ngx_str_t))
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (tmcf->channels) {
        ch = tmcf->channels->elts;
        for (i = 0; i < tmcf->channels->nelts; i++) {
            if (ngx_http_matrix_pg_listen(pg, ch[i],
                                          ngx_http_matrix_pgtest_notify, tmcf)
                != NGX_OK)
            {
                return NGX_ERROR;
            }
        }
    }

    if (tmcf->timer_sql.len) {
        tmcf->timer_q = ngx_http_matrix_pg_query_create(pg, tmcf->pool,
                                                        cycle->log);
        if (tmcf->timer_q == NULL) {
            return NGX_ERROR;
        }

        tmcf->timer_q->handler = ngx_http_matrix_pgtest_timer_done;
        tmcf->timer_q->data = tmcf;

        tmcf->timer.handler = ngx_http_matrix_pgtest_timer_handler;
        tmcf->timer.data = tmcf;
        tmcf->timer.log = cycle->log;
        tmcf->timer.cancelable = 1;

        ngx_add_timer(&tmcf->timer, tmcf->timer_interval);
    }

    return NGX_OK;
}


static void
ngx_http_matrix_pgtest_exit_process(ngx_cycle_t *cycle)
{
    ngx_http_matrix_pgtest_main_conf_t  *tmcf;

    tmcf = ngx_http_cycle_get_module_main_conf(cycle,
                                               ngx_http_matrix_pgtest_module);

    if (tmcf && tmcf->pool) {
        if (tmcf->timer.timer_set) {
            ngx_del_timer(&tmcf->timer);
        }

        ngx_destroy_pool(tmcf->pool);
        tmcf->pool = NULL;
    }
}


static char *
ngx_http_matrix_pgtest(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_core_loc_conf_t  *clcf;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    clcf->handler = ngx_http_matrix_pgtest_content;

    return NGX_CONF_OK;
}


static void
ngx_http_matrix_httptest_done(ngx_http_matrix_http_req_t *hr)
{
    ngx_int_t            rc;
    ngx_buf_t           *b;
    ngx_connection_t    *c;
    ngx_http_request_t  *r;

    r = hr->data;
    c = r->connection;

    b = ngx_create_temp_buf(r->pool, 256 + hr->error.len
                                     + hr->content_type.len
                                     + hr->response.len);
    if (b == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        ngx_http_run_posted_requests(c);
        return;
    }

    b->last = ngx_sprintf(b->last, "status: %ui\nerror: %V\n"
                          "content-type: %V\n\n%V",
                          hr->status, &hr->error, &hr->content_type,
                          &hr->response);

    rc = ngx_http_matrix_pgtest_send(r, b);

    ngx_http_finalize_request(r, rc);
    ngx_http_run_posted_requests(c);
}


static ngx_int_t
ngx_http_matrix_httptest_content(ngx_http_request_t *r)
{
    ngx_str_t                    v;
    ngx_http_matrix_http_req_t  *hr;

    hr = ngx_http_matrix_http_create((ngx_cycle_t *) ngx_cycle, r->pool,
                                     r->connection->log);
    if (hr == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    (void) ngx_http_matrix_pgtest_arg(r, "host", &hr->host);
    (void) ngx_http_matrix_pgtest_arg(r, "tls_name", &hr->tls_name);
    (void) ngx_http_matrix_pgtest_arg(r, "host_header", &hr->host_header);
    (void) ngx_http_matrix_pgtest_arg(r, "body", &hr->body);

    if (ngx_http_matrix_pgtest_arg(r, "uri", &hr->uri) != NGX_OK) {
        ngx_str_set(&hr->uri, "/");
    }

    if (ngx_http_matrix_pgtest_arg(r, "method", &v) == NGX_OK) {
        hr->method = v;
    }

    if (ngx_http_matrix_pgtest_arg(r, "port", &v) == NGX_OK) {
        hr->port = (in_port_t) ngx_atoi(v.data, v.len);
    }

    if (ngx_http_matrix_pgtest_arg(r, "tls", &v) == NGX_OK) {
        hr->tls = (v.len == 1 && v.data[0] == '1');
    }

    if (ngx_http_matrix_pgtest_arg(r, "max", &v) == NGX_OK) {
        hr->max_response = ngx_atoi(v.data, v.len);
    }

    if (ngx_http_matrix_pgtest_arg(r, "timeout", &v) == NGX_OK) {
        hr->timeout = ngx_atoi(v.data, v.len);
    }

    if (ngx_http_matrix_pgtest_arg(r, "destination", &hr->destination)
        == NGX_OK)
    {
        ngx_http_matrix_srv_conf_t  *mscf;

        mscf = ngx_http_get_module_srv_conf(r, ngx_http_matrix_module);

        if (mscf->signing_keys == NULL || mscf->signing_keys == NGX_CONF_UNSET_PTR) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        hr->sign_key = mscf->signing_keys->elts;
        hr->origin = mscf->server_name;
    }

    hr->handler = ngx_http_matrix_httptest_done;
    hr->data = r;

    if (ngx_http_matrix_http_send(hr) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    r->main->count++;

    return NGX_DONE;
}


static char *
ngx_http_matrix_httptest(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_core_loc_conf_t  *clcf;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    clcf->handler = ngx_http_matrix_httptest_content;

    return NGX_CONF_OK;
}


static char *
ngx_http_matrix_pgtest_notifications(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_core_loc_conf_t  *clcf;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    clcf->handler = ngx_http_matrix_pgtest_notes_content;

    return NGX_CONF_OK;
}


static char *
ngx_http_matrix_pgtest_listen(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_matrix_pgtest_main_conf_t *tmcf = conf;

    char       **ch;
    ngx_str_t   *value;

    value = cf->args->elts;

    if (tmcf->channels == NULL) {
        tmcf->channels = ngx_array_create(cf->pool, 4, sizeof(char *));
        if (tmcf->channels == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    ch = ngx_array_push(tmcf->channels);
    if (ch == NULL) {
        return NGX_CONF_ERROR;
    }

    *ch = (char *) value[1].data;

    return NGX_CONF_OK;
}


static char *
ngx_http_matrix_pgtest_timer(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_matrix_pgtest_main_conf_t *tmcf = conf;

    ngx_str_t  *value;

    value = cf->args->elts;

    tmcf->timer_interval = ngx_parse_time(&value[1], 0);
    if (tmcf->timer_interval == (ngx_msec_t) NGX_ERROR) {
        return "invalid interval";
    }

    tmcf->timer_sql = value[2];

    return NGX_CONF_OK;
}


static void *
ngx_http_matrix_pgtest_create_main_conf(ngx_conf_t *cf)
{
    return ngx_pcalloc(cf->pool, sizeof(ngx_http_matrix_pgtest_main_conf_t));
}


/* matrix_destinationtest: server discovery */

typedef struct {
    ngx_http_request_t          *r;
    ngx_http_matrix_dest_t      *d;
    ngx_uint_t                   fetch;
} ngx_http_matrix_desttest_ctx_t;


static void
ngx_http_matrix_desttest_reply(ngx_http_matrix_desttest_ctx_t *ctx,
    ngx_http_matrix_http_req_t *hr)
{
    size_t                   len;
    ngx_int_t                rc;
    ngx_buf_t               *b;
    ngx_connection_t        *c;
    ngx_http_request_t      *r;
    ngx_http_matrix_dest_t  *d;

    r = ctx->r;
    d = ctx->d;
    c = r->connection;

    len = 256 + d->host.len + d->host_header.len + d->tls_name.len
          + d->how.len + d->error.len + d->well_known_error.len;

    if (hr) {
        len += 64 + hr->error.len + hr->response.len;
    }

    b = ngx_create_temp_buf(r->pool, len);
    if (b == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        ngx_http_run_posted_requests(c);
        return;
    }

    b->last = ngx_sprintf(b->last, "host: %V\nport: %d\nhost_header: %V\n"
                          "tls_name: %V\nhow: %V\nerror: %V\n"
                          "well_known_error: %V\n",
                          &d->host, (int) d->port, &d->host_header,
                          &d->tls_name, &d->how, &d->error,
                          &d->well_known_error);

    if (hr) {
        b->last = ngx_sprintf(b->last, "status: %ui\nfetch_error: %V\n"
                              "body: %V\n", hr->status, &hr->error,
                              &hr->response);
    }

    rc = ngx_http_matrix_pgtest_send(r, b);

    ngx_http_finalize_request(r, rc);
    ngx_http_run_posted_requests(c);
}


static void
ngx_http_matrix_desttest_fetched(ngx_http_matrix_http_req_t *hr)
{
    ngx_http_matrix_desttest_reply(hr->data, hr);
}


static void
ngx_http_matrix_desttest_found(ngx_http_matrix_dest_t *d)
{
    ngx_http_matrix_http_req_t      *hr;
    ngx_http_matrix_desttest_ctx_t  *ctx;

    ctx = d->data;

    if (!ctx->fetch || d->status != NGX_OK) {
        ngx_http_matrix_desttest_reply(ctx, NULL);
        return;
    }

    hr = ngx_http_matrix_http_create((ngx_cycle_t *) ngx_cycle,
                                     ctx->r->pool, ctx->r->connection->log);
    if (hr == NULL) {
        ngx_http_matrix_desttest_reply(ctx, NULL);
        return;
    }

    hr->host = d->host;
    hr->port = d->port;
    hr->host_header = d->host_header;
    hr->tls_name = d->tls_name;
    ngx_str_set(&hr->uri, "/_matrix/key/v2/server");
    hr->handler = ngx_http_matrix_desttest_fetched;
    hr->data = ctx;

    if (ngx_http_matrix_http_send(hr) != NGX_OK) {
        ngx_http_matrix_desttest_reply(ctx, NULL);
    }
}


static ngx_int_t
ngx_http_matrix_desttest_content(ngx_http_request_t *r)
{
    ngx_str_t                        v;
    ngx_http_matrix_desttest_ctx_t  *ctx;

    ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_matrix_desttest_ctx_t));
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->r = r;

    ctx->d = ngx_http_matrix_dest_create((ngx_cycle_t *) ngx_cycle, r->pool,
                                         r->connection->log);
    if (ctx->d == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    (void) ngx_http_matrix_pgtest_arg(r, "server_name",
                                      &ctx->d->server_name);

    if (ngx_http_matrix_pgtest_arg(r, "fetch", &v) == NGX_OK) {
        ctx->fetch = (v.len == 1 && v.data[0] == '1');
    }

    ctx->d->handler = ngx_http_matrix_desttest_found;
    ctx->d->data = ctx;

    if (ngx_http_matrix_dest_resolve(ctx->d) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    r->main->count++;

    return NGX_DONE;
}


static char *
ngx_http_matrix_destinationtest(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_int_t                  wk, fb;
    ngx_str_t                 *value;
    ngx_http_core_loc_conf_t  *clcf;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    clcf->handler = ngx_http_matrix_desttest_content;

    if (cf->args->nelts == 3) {
        value = cf->args->elts;
        wk = ngx_atoi(value[1].data, value[1].len);
        fb = ngx_atoi(value[2].data, value[2].len);

        if (wk < 1 || wk > 65535 || fb < 1 || fb > 65535) {
            return "invalid port";
        }

        if (ngx_http_matrix_dest_set_ports(cf, (in_port_t) wk,
                                           (in_port_t) fb)
            != NGX_OK)
        {
            return NGX_CONF_ERROR;
        }
    }

    return NGX_CONF_OK;
}
