/*
 * Postgres on nginx's event loop.
 *
 * Every connection is a non-blocking libpq connection whose socket is
 * wrapped in an ngx_connection_t and watched level-triggered: libpq does
 * not promise to drain the socket in one PQconsumeInput(), so an
 * edge-triggered event could be the last one.  Only the calls that never
 * block are used: PQconnectStartParams/PQconnectPoll, PQsend*, PQflush,
 * PQconsumeInput, PQisBusy, PQgetResult, PQnotifies, PQfinish.  A
 * statement that overruns its time has its connection closed rather than
 * cancelled (PQcancel blocks); the server notices through
 * client_connection_check_interval.
 *
 * Per worker: free connections, connections at work, waiters in arrival
 * order with a deadline each, at most "max" connections, and one more
 * for LISTEN when anyone listens.  When no connection can be made the
 * pool is down: for a back-off period, growing to 10s, statements fail
 * at once (requests answer 503 quickly) instead of queueing.
 */


#include "ngx_http_matrix_module.h"
#include "ngx_http_matrix_pg.h"


#define NGX_HTTP_MATRIX_PG_BACKOFF_MIN  100
#define NGX_HTTP_MATRIX_PG_BACKOFF_MAX  10000


typedef enum {
    NGX_HTTP_MATRIX_PG_CONNECTING = 0,
    NGX_HTTP_MATRIX_PG_IDLE,
    NGX_HTTP_MATRIX_PG_ACTIVE
} ngx_http_matrix_pg_conn_state_e;


/* what the connection waits the results of */
typedef enum {
    NGX_HTTP_MATRIX_PG_NONE = 0,
    NGX_HTTP_MATRIX_PG_SETUP,
    NGX_HTTP_MATRIX_PG_PREPARE,
    NGX_HTTP_MATRIX_PG_EXEC,
    NGX_HTTP_MATRIX_PG_ROLLBACK,
    NGX_HTTP_MATRIX_PG_LISTEN
} ngx_http_matrix_pg_phase_e;


typedef enum {
    NGX_HTTP_MATRIX_PG_SCHEMA_NONE = 0,
    NGX_HTTP_MATRIX_PG_SCHEMA_RUNNING,
    NGX_HTTP_MATRIX_PG_SCHEMA_READY,
    NGX_HTTP_MATRIX_PG_SCHEMA_FAILED
} ngx_http_matrix_pg_schema_e;


struct ngx_http_matrix_pg_conn_s {
    ngx_http_matrix_pg_t             *pg;
    PGconn                           *conn;
    ngx_connection_t                 *c;
    ngx_http_matrix_pg_query_t       *q;          /* owner, if any */

    ngx_http_matrix_pg_conn_state_e   state;
    ngx_http_matrix_pg_phase_e        phase;
    PGresult                         *result;     /* of the phase */
    ngx_event_t                       timer;      /* connect or statement */

    u_char                           *prepared;   /* by statement index */
    ngx_uint_t                        nprepared;

    ngx_queue_t                       queue;      /* pg->free or pg->busy */
    ngx_uint_t                        preparing;  /* statement index */
    ino_t                             sock_ino;   /* PQsocket()'s identity */

    unsigned                          poll_write:1;  /* connecting */
    unsigned                          writing:1;     /* write event on */
    unsigned                          listener:1;
};


struct ngx_http_matrix_pg_listen_s {
    char                             *channel;
    ngx_http_matrix_pg_notify_pt      handler;
    void                             *data;
    unsigned                          sent:1;
};


struct ngx_http_matrix_pg_s {
    /* configuration */
    ngx_str_t                         conninfo;
    const char                      **keywords;
    const char                      **values;
    ngx_uint_t                        max;
    ngx_msec_t                        timeout;
    char                             *search_path;
    ngx_http_matrix_pg_schema_conf_t  schema_conf;

    /* per worker */
    ngx_log_t                        *log;
    ngx_pool_t                       *pool;
    ngx_queue_t                       free;
    ngx_queue_t                       busy;
    ngx_queue_t                       connecting;
    ngx_queue_t                       waiters;
    ngx_uint_t                        nconns;       /* but the listener */
    ngx_uint_t                        nconnecting;
    ngx_uint_t                        nstmts;

    ngx_http_matrix_pg_schema_e       schema_state;
    ngx_http_matrix_pg_query_t       *schema_q;

    ngx_msec_t                        backoff;
    ngx_msec_t                        schema_backoff;
    ngx_msec_t                        down_until;
    ngx_event_t                       retry;
    unsigned                          down:1;
    unsigned                          started:1;

    ngx_array_t                       listeners;
    ngx_http_matrix_pg_conn_t        *listen_conn;
    ngx_msec_t                        listen_backoff;
    ngx_event_t                       listen_retry;
    ngx_event_t                       listen_resubscribe;
};


static ngx_int_t ngx_http_matrix_pg_resolve_host(ngx_conf_t *cf,
    ngx_http_matrix_pg_t *pg, PQconninfoOption *opts);

static ngx_http_matrix_pg_conn_t *ngx_http_matrix_pg_connect(
    ngx_http_matrix_pg_t *pg, ngx_uint_t listener);
static ngx_int_t ngx_http_matrix_pg_watch(ngx_http_matrix_pg_conn_t *pc);
static ngx_int_t ngx_http_matrix_pg_want_write(ngx_http_matrix_pg_conn_t *pc,
    ngx_uint_t on);
static void ngx_http_matrix_pg_connect_poll(ngx_http_matrix_pg_conn_t *pc);
static void ngx_http_matrix_pg_connect_failed(ngx_http_matrix_pg_conn_t *pc,
    const char *why);
static void ngx_http_matrix_pg_connected(ngx_http_matrix_pg_conn_t *pc);
static void ngx_http_matrix_pg_read_handler(ngx_event_t *rev);
static void ngx_http_matrix_pg_write_handler(ngx_event_t *wev);
static void ngx_http_matrix_pg_timer_handler(ngx_event_t *ev);
static ngx_int_t ngx_http_matrix_pg_flush(ngx_http_matrix_pg_conn_t *pc);
static void ngx_http_matrix_pg_collect(ngx_http_matrix_pg_conn_t *pc);
static void ngx_http_matrix_pg_notifies(ngx_http_matrix_pg_conn_t *pc);
static void ngx_http_matrix_pg_phase_done(ngx_http_matrix_pg_conn_t *pc);
static void ngx_http_matrix_pg_ready(ngx_http_matrix_pg_conn_t *pc);
static ngx_int_t ngx_http_matrix_pg_send(ngx_http_matrix_pg_conn_t *pc);
static ngx_int_t ngx_http_matrix_pg_send_setup(ngx_http_matrix_pg_conn_t *pc);
static ngx_int_t ngx_http_matrix_pg_send_listen(
    ngx_http_matrix_pg_conn_t *pc);
static void ngx_http_matrix_pg_finish(ngx_http_matrix_pg_conn_t *pc,
    ngx_http_matrix_pg_status_e status, const char *why);
static void ngx_http_matrix_pg_put(ngx_http_matrix_pg_conn_t *pc);
static ngx_http_matrix_pg_conn_t *ngx_http_matrix_pg_get(
    ngx_http_matrix_pg_t *pg);
static void ngx_http_matrix_pg_lost(ngx_http_matrix_pg_conn_t *pc,
    const char *why);
static void ngx_http_matrix_pg_close(ngx_http_matrix_pg_conn_t *pc);
static void ngx_http_matrix_pg_dispatch(ngx_http_matrix_pg_t *pg);
static void ngx_http_matrix_pg_grow(ngx_http_matrix_pg_t *pg);
static void ngx_http_matrix_pg_start(ngx_http_matrix_pg_query_t *q,
    ngx_http_matrix_pg_conn_t *pc);
static void ngx_http_matrix_pg_reply(ngx_http_matrix_pg_query_t *q,
    ngx_http_matrix_pg_status_e status, const char *why);
static void ngx_http_matrix_pg_reply_later(ngx_http_matrix_pg_query_t *q,
    ngx_http_matrix_pg_status_e status, const char *why);
static void ngx_http_matrix_pg_reply_handler(ngx_event_t *ev);
static void ngx_http_matrix_pg_wait_handler(ngx_event_t *ev);
static void ngx_http_matrix_pg_fail_waiters(ngx_http_matrix_pg_t *pg,
    ngx_http_matrix_pg_status_e status, const char *why);
static void ngx_http_matrix_pg_went_down(ngx_http_matrix_pg_t *pg,
    const char *why);
static void ngx_http_matrix_pg_retry_handler(ngx_event_t *ev);
static void ngx_http_matrix_pg_schema_failed(ngx_http_matrix_pg_t *pg);
static void ngx_http_matrix_pg_listen_retry_handler(ngx_event_t *ev);
static void ngx_http_matrix_pg_listen_resubscribe_handler(ngx_event_t *ev);
static void ngx_http_matrix_pg_schema_done(ngx_http_matrix_pg_query_t *q);
static void ngx_http_matrix_pg_query_cleanup(void *data);
static void ngx_http_matrix_pg_errcpy(u_char *buf, const char *why);
static void ngx_http_matrix_pg_notice(void *data, const char *message);


static void
ngx_http_matrix_pg_notice(void *data, const char *message)
{
    ngx_http_matrix_pg_t *pg = data;

    u_char      buf[NGX_HTTP_MATRIX_PG_ERRLEN];
    ngx_uint_t  level;

    ngx_http_matrix_pg_errcpy(buf, message);

    level = (ngx_strncmp(buf, "NOTICE:", 7) == 0) ? NGX_LOG_INFO
                                                  : NGX_LOG_WARN;

    ngx_log_error(level, pg->log, 0, "matrix postgres: %s", buf);
}


/* libpq's messages end with a newline; ours are kept on one line */

static void
ngx_http_matrix_pg_errcpy(u_char *buf, const char *why)
{
    u_char  *p, *last;

    last = ngx_cpystrn(buf, (u_char *) (why ? why : "unknown error"),
                       NGX_HTTP_MATRIX_PG_ERRLEN);

    for (p = buf; p < last; p++) {
        if (*p == '\n' || *p == '\r') {
            *p = ' ';
        }
    }

    while (last > buf && last[-1] == ' ') {
        *--last = '\0';
    }
}


/* configuration */

char *
ngx_http_matrix_pg_directive(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    char                  *err;
    ngx_int_t              n;
    ngx_str_t             *value, s;
    ngx_uint_t             i, nopts, gss;
    PQconninfoOption      *opts, *o;
    ngx_http_matrix_pg_t  *pg;

    pg = ngx_http_matrix_pg_conf(cf);
    if (pg == NULL) {
        return NGX_CONF_ERROR;
    }

    if (pg->conninfo.data) {
        return "is duplicate";
    }

    value = cf->args->elts;
    pg->conninfo = value[1];

    for (i = 2; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "max=", 4) == 0) {
            n = ngx_atoi(value[i].data + 4, value[i].len - 4);
            if (n == NGX_ERROR || n < 1 || n > 1000) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "%V: invalid \"%V\", expected max=1..1000",
                                   &cmd->name, &value[i]);
                return NGX_CONF_ERROR;
            }

            pg->max = n;
            continue;
        }

        if (ngx_strncmp(value[i].data, "timeout=", 8) == 0) {
            s.data = value[i].data + 8;
            s.len = value[i].len - 8;

            n = ngx_parse_time(&s, 0);
            if (n == NGX_ERROR || n == 0) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "%V: invalid \"%V\"", &cmd->name,
                                   &value[i]);
                return NGX_CONF_ERROR;
            }

            pg->timeout = n;
            continue;
        }

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "%V: invalid parameter \"%V\"", &cmd->name,
                           &value[i]);
        return NGX_CONF_ERROR;
    }

    /* parsed at configuration time, so that a typo fails "nginx -t" */

    err = NULL;
    opts = PQconninfoParse((char *) pg->conninfo.data, &err);

    if (opts == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "%V: invalid connection string: %s", &cmd->name,
                           err ? err : "out of memory");
        PQfreemem(err);
        return NGX_CONF_ERROR;
    }

    if (ngx_http_matrix_pg_resolve_host(cf, pg, opts) != NGX_OK) {
        PQconninfoFree(opts);
        return NGX_CONF_ERROR;
    }

    nopts = 0;
    gss = 0;

    for (o = opts; o->keyword; o++) {
        nopts++;

        if (o->val == NULL) {
            continue;
        }

        /*
         * A service file may point at LDAP, looked up while connecting;
         * GSSAPI would talk to a KDC: neither without blocking.
         */

        if (ngx_strcmp(o->keyword, "service") == 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "%V: \"service=%s\" is not supported, write "
                               "its parameters out", &cmd->name, o->val);
            PQconninfoFree(opts);
            return NGX_CONF_ERROR;
        }

        if (ngx_strcmp(o->keyword, "gssencmode") == 0) {
            gss = 1;
        }
    }

    pg->keywords = ngx_pcalloc(cf->pool, (nopts + 3) * sizeof(char *));
    pg->values = ngx_pcalloc(cf->pool, (nopts + 3) * sizeof(char *));
    if (pg->keywords == NULL || pg->values == NULL) {
        PQconninfoFree(opts);
        return NGX_CONF_ERROR;
    }

    i = 0;
    for (o = opts; o->keyword; o++) {
        if (o->val == NULL) {
            continue;
        }

        pg->keywords[i] = (char *) ngx_pstrdup(cf->pool,
                                   &(ngx_str_t) { ngx_strlen(o->keyword) + 1,
                                                  (u_char *) o->keyword });
        pg->values[i] = (char *) ngx_pstrdup(cf->pool,
                                   &(ngx_str_t) { ngx_strlen(o->val) + 1,
                                                  (u_char *) o->val });
        if (pg->keywords[i] == NULL || pg->values[i] == NULL) {
            PQconninfoFree(opts);
            return NGX_CONF_ERROR;
        }

        i++;
    }

    pg->keywords[i] = "fallback_application_name";
    pg->values[i] = NGX_HTTP_MATRIX_SERVER_NAME;

    if (!gss) {
        i++;
        pg->keywords[i] = "gssencmode";
        pg->values[i] = "disable";
    }

    PQconninfoFree(opts);

    return NGX_CONF_OK;
}


/*
 * libpq would look a host name up with getaddrinfo(), which blocks: the
 * name is resolved here, once, and handed to libpq as "hostaddr" (the
 * name stays, for TLS and .pgpass).  Unix socket directories and
 * addresses pass as they are.
 */

static ngx_int_t
ngx_http_matrix_pg_resolve_host(ngx_conf_t *cf, ngx_http_matrix_pg_t *pg,
    PQconninfoOption *opts)
{
    u_char            *p;
    ngx_url_t          u;
    PQconninfoOption  *o, *host, *hostaddr;

    host = NULL;
    hostaddr = NULL;

    for (o = opts; o->keyword; o++) {
        if (ngx_strcmp(o->keyword, "host") == 0) {
            host = o;

        } else if (ngx_strcmp(o->keyword, "hostaddr") == 0) {
            hostaddr = o;
        }
    }

    if (host == NULL || hostaddr == NULL) {
        return NGX_OK;
    }

    if (hostaddr->val && hostaddr->val[0]) {
        return NGX_OK;
    }

    if (host->val == NULL || host->val[0] == '\0' || host->val[0] == '/'
        || host->val[0] == '@')
    {
        return NGX_OK;
    }

    if (ngx_strchr(host->val, ',')) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "matrix_postgres: several hosts \"%s\" need "
                           "\"hostaddr\" as well: host names are not "
                           "looked up while serving", host->val);
        return NGX_ERROR;
    }

    ngx_memzero(&u, sizeof(ngx_url_t));

    u.url.data = (u_char *) host->val;
    u.url.len = ngx_strlen(host->val);

    if (ngx_strchr(host->val, ':')) {
        /* an IPv6 address: what ngx_parse_url() wants is "[::1]" */
        p = ngx_pnalloc(cf->pool, u.url.len + 2);
        if (p == NULL) {
            return NGX_ERROR;
        }

        p[0] = '[';
        ngx_memcpy(p + 1, host->val, u.url.len);
        p[u.url.len + 1] = ']';

        u.url.data = p;
        u.url.len += 2;
    }
    u.no_resolve = 0;
    u.default_port = 5432;

    if (ngx_parse_url(cf->pool, &u) != NGX_OK || u.naddrs == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "matrix_postgres: host \"%s\" not found%s%s",
                           host->val, u.err ? ": " : "", u.err ? u.err : "");
        return NGX_ERROR;
    }

    p = ngx_pnalloc(cf->pool, NGX_SOCKADDR_STRLEN + 1);
    if (p == NULL) {
        return NGX_ERROR;
    }

    p[ngx_sock_ntop(u.addrs[0].sockaddr, u.addrs[0].socklen, p,
                    NGX_SOCKADDR_STRLEN, 0)] = '\0';

    /* the option array belongs to libpq: the value is replaced in it */
    hostaddr->val = strdup((char *) p);
    if (hostaddr->val == NULL) {
        return NGX_ERROR;
    }

    return NGX_OK;
}


ngx_http_matrix_pg_t *
ngx_http_matrix_pg_conf(ngx_conf_t *cf)
{
    ngx_http_matrix_main_conf_t  *mmcf;

    mmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_matrix_module);

    if (mmcf->pg == NULL) {
        mmcf->pg = ngx_pcalloc(cf->pool, sizeof(ngx_http_matrix_pg_t));
        if (mmcf->pg == NULL) {
            return NULL;
        }

        mmcf->pg->max = NGX_CONF_UNSET_UINT;
        mmcf->pg->timeout = NGX_CONF_UNSET_MSEC;
    }

    return mmcf->pg;
}


char *
ngx_http_matrix_pg_init_conf(ngx_conf_t *cf, ngx_http_matrix_pg_t *pg,
    ngx_str_t *schema, ngx_str_t *silo_schema, ngx_flag_t migrate)
{
    u_char  *p;
    size_t   len;

    ngx_conf_init_uint_value(pg->max, 8);
    ngx_conf_init_msec_value(pg->timeout, 10000);

    pg->schema_conf.name = *schema;
    pg->schema_conf.migrate = migrate;

    /*
     * The value for set_config('search_path', ...): each name quoted as
     * an identifier, so any schema name the operator picks works.
     */

    len = 2 * (schema->len + silo_schema->len) + sizeof("\"\", \"\"");

    p = ngx_pnalloc(cf->pool, len);
    if (p == NULL) {
        return NGX_CONF_ERROR;
    }

    pg->search_path = (char *) p;
    pg->schema_conf.quoted.data = p;

    *p++ = '"';
    for (len = 0; len < schema->len; len++) {
        if (schema->data[len] == '"') {
            *p++ = '"';
        }
        *p++ = schema->data[len];
    }
    *p++ = '"';
    pg->schema_conf.quoted.len = p - pg->schema_conf.quoted.data;
    p = ngx_cpymem(p, ", \"", 3);
    for (len = 0; len < silo_schema->len; len++) {
        if (silo_schema->data[len] == '"') {
            *p++ = '"';
        }
        *p++ = silo_schema->data[len];
    }
    *p++ = '"';
    *p = '\0';

    return NGX_CONF_OK;
}


/* worker start and exit */

ngx_int_t
ngx_http_matrix_pg_init_process(ngx_cycle_t *cycle, ngx_http_matrix_pg_t *pg)
{
    pg->log = cycle->log;

    pg->pool = ngx_create_pool(4096, cycle->log);
    if (pg->pool == NULL) {
        return NGX_ERROR;
    }

    ngx_queue_init(&pg->free);
    ngx_queue_init(&pg->busy);
    ngx_queue_init(&pg->connecting);
    ngx_queue_init(&pg->waiters);

    pg->retry.handler = ngx_http_matrix_pg_retry_handler;
    pg->retry.data = pg;
    pg->retry.log = cycle->log;
    pg->retry.cancelable = 1;

    pg->listen_retry.handler = ngx_http_matrix_pg_listen_retry_handler;
    pg->listen_retry.data = pg;
    pg->listen_retry.log = cycle->log;
    pg->listen_retry.cancelable = 1;

    pg->listen_resubscribe.handler =
                                 ngx_http_matrix_pg_listen_resubscribe_handler;
    pg->listen_resubscribe.data = pg;
    pg->listen_resubscribe.log = cycle->log;

    if (pg->listeners.elts == NULL
        && ngx_array_init(&pg->listeners, pg->pool, 4,
                          sizeof(ngx_http_matrix_pg_listen_t))
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    pg->started = 1;

    /* the first connection brings the schema up to date, before traffic */

    (void) ngx_http_matrix_pg_connect(pg, 0);

    if (pg->listeners.nelts) {
        pg->listen_conn = ngx_http_matrix_pg_connect(pg, 1);
    }

    return NGX_OK;
}


void
ngx_http_matrix_pg_exit_process(ngx_http_matrix_pg_t *pg)
{
    ngx_queue_t                *qu;
    ngx_http_matrix_pg_conn_t  *pc;

    if (!pg->started) {
        return;
    }

    pg->started = 0;

    while (!ngx_queue_empty(&pg->free)) {
        qu = ngx_queue_head(&pg->free);
        pc = ngx_queue_data(qu, ngx_http_matrix_pg_conn_t, queue);
        ngx_http_matrix_pg_close(pc);
    }

    while (!ngx_queue_empty(&pg->busy)) {
        qu = ngx_queue_head(&pg->busy);
        pc = ngx_queue_data(qu, ngx_http_matrix_pg_conn_t, queue);
        ngx_http_matrix_pg_close(pc);
    }

    while (!ngx_queue_empty(&pg->connecting)) {
        qu = ngx_queue_head(&pg->connecting);
        pc = ngx_queue_data(qu, ngx_http_matrix_pg_conn_t, queue);
        ngx_http_matrix_pg_close(pc);
    }

    if (pg->listen_conn) {
        ngx_http_matrix_pg_close(pg->listen_conn);
    }

    if (pg->retry.timer_set) {
        ngx_del_timer(&pg->retry);
    }

    if (pg->listen_retry.timer_set) {
        ngx_del_timer(&pg->listen_retry);
    }

    if (pg->listen_resubscribe.posted) {
        ngx_delete_posted_event(&pg->listen_resubscribe);
    }

    ngx_destroy_pool(pg->pool);
}


/* connections */

static ngx_http_matrix_pg_conn_t *
ngx_http_matrix_pg_connect(ngx_http_matrix_pg_t *pg, ngx_uint_t listener)
{
    ngx_http_matrix_pg_conn_t  *pc;

    pc = ngx_calloc(sizeof(ngx_http_matrix_pg_conn_t), pg->log);
    if (pc == NULL) {
        return NULL;
    }

    pc->pg = pg;
    pc->listener = listener;
    pc->state = NGX_HTTP_MATRIX_PG_CONNECTING;

    pc->timer.handler = ngx_http_matrix_pg_timer_handler;
    pc->timer.data = pc;
    pc->timer.log = pg->log;

    if (listener) {
        ngx_queue_init(&pc->queue);

    } else {
        ngx_queue_insert_tail(&pg->connecting, &pc->queue);
        pg->nconns++;
        pg->nconnecting++;
    }

    pc->conn = PQconnectStartParams(pg->keywords, pg->values, 0);

    if (pc->conn == NULL || PQstatus(pc->conn) == CONNECTION_BAD) {
        ngx_http_matrix_pg_connect_failed(pc, pc->conn
                                              ? PQerrorMessage(pc->conn)
                                              : "out of memory");
        return NULL;
    }

    if (PQsetnonblocking(pc->conn, 1) != 0) {
        ngx_http_matrix_pg_connect_failed(pc, PQerrorMessage(pc->conn));
        return NULL;
    }

    /* libpq would write notices to stderr */
    PQsetNoticeProcessor(pc->conn, ngx_http_matrix_pg_notice, pg);

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, pg->log, 0,
                   "matrix postgres: connecting%s",
                   listener ? " to listen" : "");

    /* as if PQconnectPoll() had asked to wait for writing */

    pc->poll_write = 1;

    if (ngx_http_matrix_pg_watch(pc) != NGX_OK
        || ngx_http_matrix_pg_want_write(pc, 1) != NGX_OK)
    {
        ngx_http_matrix_pg_connect_failed(pc, "cannot watch the socket");
        return NULL;
    }

    ngx_add_timer(&pc->timer, pg->timeout);

    return pc;
}


/*
 * Wraps libpq's current socket in an nginx connection, or follows it when
 * libpq has moved to another one (another address of the host): the old
 * descriptor is libpq's and already closed, so only nginx's bookkeeping
 * goes.
 */

static ngx_int_t
ngx_http_matrix_pg_watch(ngx_http_matrix_pg_conn_t *pc)
{
    int                fd;
    struct stat        st;
    ngx_connection_t  *c;

    fd = PQsocket(pc->conn);

    if (fd == -1 || fstat(fd, &st) == -1) {
        return NGX_ERROR;
    }

    if (pc->c) {

        /*
         * libpq closes a socket before it opens the next, which then often
         * gets the same number: the inode tells them apart
         */

        if (pc->c->fd == fd && pc->sock_ino == st.st_ino) {
            return NGX_OK;
        }

        if (pc->c->read->active) {
            ngx_del_event(pc->c->read, NGX_READ_EVENT, NGX_CLOSE_EVENT);
        }

        if (pc->c->write->active) {
            ngx_del_event(pc->c->write, NGX_WRITE_EVENT, NGX_CLOSE_EVENT);
        }

        if (pc->c->read->posted) {
            ngx_delete_posted_event(pc->c->read);
        }

        if (pc->c->write->posted) {
            ngx_delete_posted_event(pc->c->write);
        }

        pc->c->fd = (ngx_socket_t) -1;
        ngx_free_connection(pc->c);
        pc->c = NULL;
        pc->writing = 0;
    }

    c = ngx_get_connection(fd, pc->pg->log);
    if (c == NULL) {
        return NGX_ERROR;
    }

    pc->sock_ino = st.st_ino;

    c->data = pc;
    c->shared = 1;          /* the descriptor is libpq's to close */

    c->read->handler = ngx_http_matrix_pg_read_handler;
    c->write->handler = ngx_http_matrix_pg_write_handler;
    c->read->log = pc->pg->log;
    c->write->log = pc->pg->log;

    pc->c = c;

    if (ngx_add_event(c->read, NGX_READ_EVENT, NGX_LEVEL_EVENT) != NGX_OK) {
        return NGX_ERROR;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_matrix_pg_want_write(ngx_http_matrix_pg_conn_t *pc, ngx_uint_t on)
{
    if (on && !pc->writing) {
        if (ngx_add_event(pc->c->write, NGX_WRITE_EVENT, NGX_LEVEL_EVENT)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        pc->writing = 1;

    } else if (!on && pc->writing) {
        if (ngx_del_event(pc->c->write, NGX_WRITE_EVENT, 0) != NGX_OK) {
            return NGX_ERROR;
        }

        pc->writing = 0;
    }

    return NGX_OK;
}


static void
ngx_http_matrix_pg_connect_poll(ngx_http_matrix_pg_conn_t *pc)
{
    PostgresPollingStatusType  rc;

    rc = PQconnectPoll(pc->conn);

    switch (rc) {

    case PGRES_POLLING_OK:
        ngx_http_matrix_pg_connected(pc);
        return;

    case PGRES_POLLING_FAILED:
        ngx_http_matrix_pg_connect_failed(pc, PQerrorMessage(pc->conn));
        return;

    default:
        break;
    }

    if (ngx_http_matrix_pg_watch(pc) != NGX_OK) {
        ngx_http_matrix_pg_connect_failed(pc, "cannot watch the socket");
        return;
    }

    pc->poll_write = (rc == PGRES_POLLING_WRITING);

    if (ngx_http_matrix_pg_want_write(pc, pc->poll_write) != NGX_OK) {
        ngx_http_matrix_pg_connect_failed(pc, "cannot watch the socket");
    }
}


static void
ngx_http_matrix_pg_connect_failed(ngx_http_matrix_pg_conn_t *pc,
    const char *why)
{
    ngx_uint_t             listener;
    ngx_http_matrix_pg_t  *pg;
    u_char                 buf[NGX_HTTP_MATRIX_PG_ERRLEN];

    pg = pc->pg;
    listener = pc->listener;

    /* "why" may be libpq's, which goes with the connection */
    ngx_http_matrix_pg_errcpy(buf, why);
    why = (char *) buf;

    ngx_http_matrix_pg_close(pc);

    if (listener) {
        pg->listen_conn = NULL;
        pg->listen_backoff = ngx_min(ngx_max(pg->listen_backoff * 2,
                                             NGX_HTTP_MATRIX_PG_BACKOFF_MIN),
                                     NGX_HTTP_MATRIX_PG_BACKOFF_MAX);

        ngx_log_error(NGX_LOG_ERR, pg->log, 0,
                      "matrix postgres: cannot connect to listen, retry in "
                      "%Mms: %s", pg->listen_backoff, why);

        if (pg->started && !ngx_exiting && !ngx_terminate) {
            ngx_add_timer(&pg->listen_retry, pg->listen_backoff);
        }

        return;
    }

    if (pg->nconns == 0) {
        ngx_http_matrix_pg_went_down(pg, why);
        return;
    }

    ngx_log_error(NGX_LOG_ERR, pg->log, 0,
                  "matrix postgres: cannot connect: %s", why);

    if (pg->schema_state != NGX_HTTP_MATRIX_PG_SCHEMA_READY
        && pg->schema_state != NGX_HTTP_MATRIX_PG_SCHEMA_RUNNING
        && pg->started && !ngx_exiting && !ngx_terminate
        && !pg->retry.timer_set)
    {
        ngx_add_timer(&pg->retry, ngx_max(pg->schema_backoff,
                                          NGX_HTTP_MATRIX_PG_BACKOFF_MIN));
    }
}


static void
ngx_http_matrix_pg_connected(ngx_http_matrix_pg_conn_t *pc)
{
    ngx_http_matrix_pg_t  *pg;

    pg = pc->pg;

    if (pc->timer.timer_set) {
        ngx_del_timer(&pc->timer);
    }

    if (ngx_http_matrix_pg_want_write(pc, 0) != NGX_OK) {
        ngx_http_matrix_pg_connect_failed(pc, "cannot watch the socket");
        return;
    }

    if (!pc->listener) {
        pg->nconnecting--;
    }

    pc->state = NGX_HTTP_MATRIX_PG_ACTIVE;

    if (!pc->listener) {
        ngx_queue_remove(&pc->queue);
        ngx_queue_insert_tail(&pg->busy, &pc->queue);
    }

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, pg->log, 0,
                   "matrix postgres: connected, server %d, pid %d",
                   PQserverVersion(pc->conn), PQbackendPID(pc->conn));

    if (ngx_http_matrix_pg_send_setup(pc) != NGX_OK) {
        ngx_http_matrix_pg_lost(pc, PQerrorMessage(pc->conn));
    }
}


/*
 * Every connection gets the same session: the module's schema, then the
 * silo's, on the search path; and on servers that have it, a periodic
 * check for a client gone away, so that a statement abandoned at its
 * timeout (its connection closed) does not run on.
 */

static ngx_int_t
ngx_http_matrix_pg_send_setup(ngx_http_matrix_pg_conn_t *pc)
{
    const char  *sql, *values[1];

    if (PQserverVersion(pc->conn) >= 140000) {
        sql = "SELECT set_config('search_path', $1, false), "
              "set_config('client_connection_check_interval', '1s', false)";

    } else {
        sql = "SELECT set_config('search_path', $1, false)";
    }

    values[0] = pc->pg->search_path;

    if (!PQsendQueryParams(pc->conn, sql, 1, NULL, values, NULL, NULL, 0)) {
        return NGX_ERROR;
    }

    pc->phase = NGX_HTTP_MATRIX_PG_SETUP;
    ngx_add_timer(&pc->timer, pc->pg->timeout);

    return ngx_http_matrix_pg_flush(pc);
}


static ngx_int_t
ngx_http_matrix_pg_send_listen(ngx_http_matrix_pg_conn_t *pc)
{
    u_char                       *p, *sql;
    char                         *id;
    size_t                        len;
    ngx_uint_t                    i;
    ngx_http_matrix_pg_listen_t  *l;

    l = pc->pg->listeners.elts;
    len = 1;

    for (i = 0; i < pc->pg->listeners.nelts; i++) {
        len += sizeof("LISTEN ;") + 2 * ngx_strlen(l[i].channel) + 2;
    }

    sql = ngx_alloc(len, pc->pg->log);
    if (sql == NULL) {
        return NGX_ERROR;
    }

    p = sql;

    for (i = 0; i < pc->pg->listeners.nelts; i++) {
        id = PQescapeIdentifier(pc->conn, l[i].channel,
                                ngx_strlen(l[i].channel));
        if (id == NULL) {
            ngx_free(sql);
            return NGX_ERROR;
        }

        p = ngx_sprintf(p, "LISTEN %s;", id);
        PQfreemem(id);
        l[i].sent = 1;
    }

    *p = '\0';

    if (!PQsendQuery(pc->conn, (char *) sql)) {
        ngx_free(sql);
        return NGX_ERROR;
    }

    ngx_free(sql);

    pc->phase = NGX_HTTP_MATRIX_PG_LISTEN;
    ngx_add_timer(&pc->timer, pc->pg->timeout);

    return ngx_http_matrix_pg_flush(pc);
}


static ngx_int_t
ngx_http_matrix_pg_flush(ngx_http_matrix_pg_conn_t *pc)
{
    int  rc;

    rc = PQflush(pc->conn);

    if (rc == -1) {
        return NGX_ERROR;
    }

    return ngx_http_matrix_pg_want_write(pc, rc == 1);
}


static void
ngx_http_matrix_pg_read_handler(ngx_event_t *rev)
{
    ngx_connection_t           *c;
    ngx_http_matrix_pg_conn_t  *pc;

    c = rev->data;
    pc = c->data;

    if (pc->state == NGX_HTTP_MATRIX_PG_CONNECTING) {
        if (!pc->poll_write) {
            ngx_http_matrix_pg_connect_poll(pc);
        }
        return;
    }

    if (!PQconsumeInput(pc->conn)) {
        ngx_http_matrix_pg_lost(pc, PQerrorMessage(pc->conn));
        return;
    }

    ngx_http_matrix_pg_notifies(pc);

    if (pc->phase == NGX_HTTP_MATRIX_PG_NONE) {
        /* idle: a notice, a notification, or the server going away */

        if (PQstatus(pc->conn) == CONNECTION_BAD) {
            ngx_http_matrix_pg_lost(pc, PQerrorMessage(pc->conn));
        }

        return;
    }

    if (pc->writing && ngx_http_matrix_pg_flush(pc) != NGX_OK) {
        ngx_http_matrix_pg_lost(pc, PQerrorMessage(pc->conn));
        return;
    }

    ngx_http_matrix_pg_collect(pc);
}


static void
ngx_http_matrix_pg_write_handler(ngx_event_t *wev)
{
    ngx_connection_t           *c;
    ngx_http_matrix_pg_conn_t  *pc;

    c = wev->data;
    pc = c->data;

    if (pc->state == NGX_HTTP_MATRIX_PG_CONNECTING) {
        if (pc->poll_write) {
            ngx_http_matrix_pg_connect_poll(pc);
        }
        return;
    }

    if (ngx_http_matrix_pg_flush(pc) != NGX_OK) {
        ngx_http_matrix_pg_lost(pc, PQerrorMessage(pc->conn));
    }
}


/* reads the results of the phase as far as they have arrived */

static void
ngx_http_matrix_pg_collect(ngx_http_matrix_pg_conn_t *pc)
{
    PGresult  *res;

    while (!PQisBusy(pc->conn)) {

        res = PQgetResult(pc->conn);

        if (res == NULL) {
            ngx_http_matrix_pg_phase_done(pc);
            return;
        }

        switch (PQresultStatus(res)) {

        case PGRES_COPY_IN:
        case PGRES_COPY_OUT:
        case PGRES_COPY_BOTH:
            /* PQgetResult() would return this for ever, never NULL */
            PQclear(res);
            ngx_http_matrix_pg_lost(pc, "COPY is not supported");
            return;

        default:
            break;
        }

        /* of several results the first error wins, else the last */

        if (pc->result == NULL
            || (PQresultStatus(pc->result) != PGRES_FATAL_ERROR
                && PQresultStatus(pc->result) != PGRES_NONFATAL_ERROR))
        {
            PQclear(pc->result);
            pc->result = res;

        } else {
            PQclear(res);
        }

        if (PQstatus(pc->conn) == CONNECTION_BAD) {
            ngx_http_matrix_pg_lost(pc, PQerrorMessage(pc->conn));
            return;
        }
    }
}


static void
ngx_http_matrix_pg_notifies(ngx_http_matrix_pg_conn_t *pc)
{
    PGnotify                     *n;
    ngx_uint_t                    i;
    ngx_http_matrix_pg_listen_t  *l;

    while ((n = PQnotifies(pc->conn)) != NULL) {

        ngx_log_debug2(NGX_LOG_DEBUG_HTTP, pc->pg->log, 0,
                       "matrix postgres: notification \"%s\" \"%s\"",
                       n->relname, n->extra);

        if (pc->listener) {

            /* a handler may add a listener: the array may move */

            for (i = 0; i < pc->pg->listeners.nelts; i++) {
                l = pc->pg->listeners.elts;

                if (ngx_strcmp(l[i].channel, n->relname) == 0) {
                    l[i].handler(l[i].data, n->relname, n->extra);
                }
            }
        }

        PQfreemem(n);
    }
}


static void
ngx_http_matrix_pg_phase_done(ngx_http_matrix_pg_conn_t *pc)
{
    ngx_uint_t                    i;
    ExecStatusType                st;
    ngx_http_matrix_pg_t         *pg;
    ngx_http_matrix_pg_phase_e    phase;
    ngx_http_matrix_pg_query_t   *q;
    ngx_http_matrix_pg_listen_t  *l;

    pg = pc->pg;
    phase = pc->phase;
    pc->phase = NGX_HTTP_MATRIX_PG_NONE;

    /* a statement's time covers its PREPARE and its execution */

    if (phase != NGX_HTTP_MATRIX_PG_PREPARE && pc->timer.timer_set) {
        ngx_del_timer(&pc->timer);
    }

    st = pc->result ? PQresultStatus(pc->result) : PGRES_COMMAND_OK;

    switch (phase) {

    case NGX_HTTP_MATRIX_PG_SETUP:
        if (st != PGRES_TUPLES_OK) {
            ngx_http_matrix_pg_lost(pc, pc->result
                                    ? PQresultErrorMessage(pc->result)
                                    : "no result");
            return;
        }

        PQclear(pc->result);
        pc->result = NULL;

        if (pc->listener) {
            if (ngx_http_matrix_pg_send_listen(pc) != NGX_OK) {
                ngx_http_matrix_pg_lost(pc, PQerrorMessage(pc->conn));
            }
            return;
        }

        ngx_http_matrix_pg_ready(pc);
        return;

    case NGX_HTTP_MATRIX_PG_LISTEN:
        if (st != PGRES_COMMAND_OK) {
            ngx_http_matrix_pg_lost(pc, pc->result
                                    ? PQresultErrorMessage(pc->result)
                                    : "no result");
            return;
        }

        PQclear(pc->result);
        pc->result = NULL;

        pg->listen_backoff = 0;
        pc->state = NGX_HTTP_MATRIX_PG_IDLE;

        /* whatever was sent while nobody listened is for a rescan */

        for (i = 0; i < pg->listeners.nelts; i++) {
            l = pg->listeners.elts;
            l[i].handler(l[i].data, NULL, NULL);
        }

        /* notifications that came with the LISTEN reply */
        ngx_http_matrix_pg_notifies(pc);

        return;

    case NGX_HTTP_MATRIX_PG_ROLLBACK:
        PQclear(pc->result);
        pc->result = NULL;

        if (st != PGRES_COMMAND_OK) {
            ngx_http_matrix_pg_lost(pc, "rollback failed");
            return;
        }

        ngx_http_matrix_pg_put(pc);
        return;

    case NGX_HTTP_MATRIX_PG_PREPARE:
        q = pc->q;

        if (st != PGRES_COMMAND_OK) {
            ngx_http_matrix_pg_finish(pc, NGX_HTTP_MATRIX_PG_SQL_ERROR, NULL);
            return;
        }

        PQclear(pc->result);
        pc->result = NULL;

        pc->prepared[pc->preparing] = 1;

        if (q == NULL) {
            /* abandoned between prepare and execute */
            ngx_http_matrix_pg_put(pc);
            return;
        }

        if (ngx_http_matrix_pg_send(pc) != NGX_OK) {
            ngx_http_matrix_pg_lost(pc, PQerrorMessage(pc->conn));
        }

        return;

    case NGX_HTTP_MATRIX_PG_EXEC:
        ngx_http_matrix_pg_finish(pc,
                                  (st == PGRES_TUPLES_OK
                                   || st == PGRES_COMMAND_OK)
                                  ? NGX_HTTP_MATRIX_PG_OK
                                  : NGX_HTTP_MATRIX_PG_SQL_ERROR,
                                  NULL);
        return;

    default:
        return;
    }
}


/*
 * A pool connection is set up.  The first one of the worker (or the first
 * after a failed migration) brings the schema up to date before any other
 * statement runs.
 */

static void
ngx_http_matrix_pg_ready(ngx_http_matrix_pg_conn_t *pc)
{
    ngx_http_matrix_pg_t        *pg;
    ngx_http_matrix_pg_query_t  *q;

    pg = pc->pg;


    if (pg->down) {
        pg->down = 0;
        ngx_log_error(NGX_LOG_NOTICE, pg->log, 0,
                      "matrix postgres: connected again");
    }

    pg->backoff = 0;

    if (pg->schema_state == NGX_HTTP_MATRIX_PG_SCHEMA_NONE
        || pg->schema_state == NGX_HTTP_MATRIX_PG_SCHEMA_FAILED)
    {
        if (pg->schema_q == NULL) {
            pg->schema_q = ngx_http_matrix_pg_query_create(pg, pg->pool,
                                                           pg->log);
            if (pg->schema_q == NULL) {
                ngx_http_matrix_pg_schema_failed(pg);
                ngx_http_matrix_pg_put(pc);
                return;
            }

            pg->schema_q->internal = 1;
        }

        pg->schema_state = NGX_HTTP_MATRIX_PG_SCHEMA_RUNNING;

        /* the migration leases this connection */

        q = pg->schema_q;
        q->conn = pc;
        q->leased = 1;
        pc->q = q;

        if (ngx_http_matrix_schema_start(q, &pg->schema_conf,
                                         ngx_http_matrix_pg_schema_done)
            != NGX_OK)
        {
            q->leased = 0;
            q->conn = NULL;
            pc->q = NULL;
            ngx_http_matrix_pg_schema_failed(pg);
            ngx_http_matrix_pg_put(pc);
        }

        return;
    }

    ngx_http_matrix_pg_put(pc);
}

/* sends the owner's statement: prepares it first on this connection */

static ngx_int_t
ngx_http_matrix_pg_send(ngx_http_matrix_pg_conn_t *pc)
{
    int                          ok;
    u_char                      *p;
    ngx_uint_t                   n;
    ngx_http_matrix_pg_query_t  *q;
    u_char                       name[32];

    q = pc->q;

    if (q->stmt) {
        if (q->stmt->index == 0) {
            q->stmt->index = ++pc->pg->nstmts;
        }

        if (q->stmt->index >= pc->nprepared) {
            n = ngx_max(q->stmt->index + 1, 2 * pc->nprepared);

            p = ngx_calloc(n, pc->pg->log);
            if (p == NULL) {
                return NGX_ERROR;
            }

            if (pc->prepared) {
                ngx_memcpy(p, pc->prepared, pc->nprepared);
                ngx_free(pc->prepared);
            }

            pc->prepared = p;
            pc->nprepared = n;
        }

        *ngx_sprintf(name, "mx%ui", q->stmt->index) = '\0';

        if (!pc->prepared[q->stmt->index]) {
            ok = PQsendPrepare(pc->conn, (char *) name, q->stmt->sql,
                               q->stmt->nparams, NULL);
            pc->phase = NGX_HTTP_MATRIX_PG_PREPARE;
            pc->preparing = q->stmt->index;

        } else {
            ok = PQsendQueryPrepared(pc->conn, (char *) name, q->nparams,
                                     q->values, q->lengths, NULL, 0);
            pc->phase = NGX_HTTP_MATRIX_PG_EXEC;
        }

    } else if (q->nparams) {
        ok = PQsendQueryParams(pc->conn, q->sql, q->nparams, NULL, q->values,
                               q->lengths, NULL, 0);
        pc->phase = NGX_HTTP_MATRIX_PG_EXEC;

    } else {
        /* the simple protocol: several statements allowed */
        ok = PQsendQuery(pc->conn, q->sql);
        pc->phase = NGX_HTTP_MATRIX_PG_EXEC;
    }

    if (!ok) {
        pc->phase = NGX_HTTP_MATRIX_PG_NONE;
        return NGX_ERROR;
    }

    if (!pc->timer.timer_set) {
        ngx_add_timer(&pc->timer, q->timeout ? q->timeout : pc->pg->timeout);
    }

    return ngx_http_matrix_pg_flush(pc);
}


/* the statement is over: the result goes to its owner, if still there */

static void
ngx_http_matrix_pg_finish(ngx_http_matrix_pg_conn_t *pc,
    ngx_http_matrix_pg_status_e status, const char *why)
{
    PGresult                    *res;
    ngx_http_matrix_pg_query_t  *q;

    q = pc->q;
    res = pc->result;
    pc->result = NULL;

    if (pc->timer.timer_set) {
        ngx_del_timer(&pc->timer);
    }

    if (q == NULL) {
        PQclear(res);
        ngx_http_matrix_pg_put(pc);
        return;
    }

    q->running = 0;
    q->result = res;

    if (!q->leased) {
        pc->q = NULL;
        q->conn = NULL;
        ngx_http_matrix_pg_put(pc);
    }

    ngx_http_matrix_pg_reply(q, status, why);
}


/*
 * A connection comes back: to the first waiter, to the free list, or, if
 * a transaction was left open, through a ROLLBACK first.
 */

static void
ngx_http_matrix_pg_put(ngx_http_matrix_pg_conn_t *pc)
{
    ngx_http_matrix_pg_t  *pg;

    pg = pc->pg;
    pc->q = NULL;

    if (pc->timer.timer_set) {
        ngx_del_timer(&pc->timer);
    }

    switch (PQtransactionStatus(pc->conn)) {

    case PQTRANS_IDLE:
        break;

    case PQTRANS_INTRANS:
    case PQTRANS_INERROR:
        if (!PQsendQuery(pc->conn, "ROLLBACK")) {
            ngx_http_matrix_pg_lost(pc, PQerrorMessage(pc->conn));
            return;
        }

        pc->phase = NGX_HTTP_MATRIX_PG_ROLLBACK;
        ngx_add_timer(&pc->timer, pg->timeout);

        if (ngx_http_matrix_pg_flush(pc) != NGX_OK) {
            ngx_http_matrix_pg_lost(pc, PQerrorMessage(pc->conn));
        }

        return;

    default:
        ngx_http_matrix_pg_lost(pc, "connection in an unknown state");
        return;
    }

    ngx_queue_remove(&pc->queue);
    pc->state = NGX_HTTP_MATRIX_PG_IDLE;
    ngx_queue_insert_head(&pg->free, &pc->queue);

    ngx_http_matrix_pg_dispatch(pg);
}


/* a free connection that still works, or NULL */

static ngx_http_matrix_pg_conn_t *
ngx_http_matrix_pg_get(ngx_http_matrix_pg_t *pg)
{
    ngx_queue_t                *qu;
    ngx_http_matrix_pg_conn_t  *pc;

    while (!ngx_queue_empty(&pg->free)) {
        qu = ngx_queue_head(&pg->free);
        pc = ngx_queue_data(qu, ngx_http_matrix_pg_conn_t, queue);

        /*
         * What the server says to an idle connection (most likely
         * goodbye) is read by the read handler, level-triggered; not
         * read again here, which would cost every statement a read.
         */

        if (PQstatus(pc->conn) != CONNECTION_OK) {
            ngx_http_matrix_pg_lost(pc, PQerrorMessage(pc->conn));
            continue;
        }

        ngx_queue_remove(&pc->queue);
        ngx_queue_insert_tail(&pg->busy, &pc->queue);
        pc->state = NGX_HTTP_MATRIX_PG_ACTIVE;

        return pc;
    }

    return NULL;
}


/* the connection is unusable: its owner hears so, and it goes */

static void
ngx_http_matrix_pg_lost(ngx_http_matrix_pg_conn_t *pc, const char *why)
{
    ngx_uint_t                   listener;
    ngx_http_matrix_pg_t        *pg;
    ngx_http_matrix_pg_query_t  *q;
    ngx_http_matrix_pg_phase_e   phase;
    u_char                       buf[NGX_HTTP_MATRIX_PG_ERRLEN];

    pg = pc->pg;
    q = pc->q;
    phase = pc->phase;
    listener = pc->listener;

    ngx_http_matrix_pg_errcpy(buf, why);
    why = (char *) buf;

    ngx_log_error(NGX_LOG_ERR, pg->log, 0,
                  "matrix postgres: connection lost: %s", why);

    ngx_http_matrix_pg_close(pc);

    if (listener) {
        pg->listen_conn = NULL;

        if (pg->started && !ngx_exiting && !ngx_terminate) {
            pg->listen_backoff = ngx_max(pg->listen_backoff,
                                         NGX_HTTP_MATRIX_PG_BACKOFF_MIN);
            ngx_add_timer(&pg->listen_retry, pg->listen_backoff);
        }

        return;
    }

    if (q) {
        /* a lease stays one, without its connection, until released */
        q->conn = NULL;

        if (q->running) {
            q->running = 0;
            ngx_http_matrix_pg_reply(q, (phase == NGX_HTTP_MATRIX_PG_PREPARE)
                                        ? NGX_HTTP_MATRIX_PG_UNAVAILABLE
                                        : NGX_HTTP_MATRIX_PG_LOST,
                                     why);

        } else if (q->leased && q->watch) {
            /* what the session held (a lock, say) went with it */
            ngx_http_matrix_pg_reply_later(q, NGX_HTTP_MATRIX_PG_LOST, why);
        }
    }

    /* waiters still need connections */
    ngx_http_matrix_pg_grow(pg);
}


static void
ngx_http_matrix_pg_close(ngx_http_matrix_pg_conn_t *pc)
{
    ngx_http_matrix_pg_t  *pg;

    pg = pc->pg;

    if (!pc->listener) {
        pg->nconns--;

        if (pc->state == NGX_HTTP_MATRIX_PG_CONNECTING) {
            pg->nconnecting--;
        }
    }

    if (pc->timer.timer_set) {
        ngx_del_timer(&pc->timer);
    }

    if (pc->q) {
        pc->q->conn = NULL;
    }

    if (pc->queue.next && pc->queue.next != &pc->queue) {
        ngx_queue_remove(&pc->queue);
    }

    if (pc->c) {
        if (pc->c->read->posted) {
            ngx_delete_posted_event(pc->c->read);
        }

        if (pc->c->write->posted) {
            ngx_delete_posted_event(pc->c->write);
        }

        /* PQfinish() closes the descriptor, taking it out of epoll */

        if (pc->c->read->active) {
            ngx_del_event(pc->c->read, NGX_READ_EVENT, NGX_CLOSE_EVENT);
        }

        if (pc->c->write->active) {
            ngx_del_event(pc->c->write, NGX_WRITE_EVENT, NGX_CLOSE_EVENT);
        }

        pc->c->fd = (ngx_socket_t) -1;
        ngx_free_connection(pc->c);
    }

    PQclear(pc->result);

    if (pc->conn) {
        PQfinish(pc->conn);
    }

    if (pc->prepared) {
        ngx_free(pc->prepared);
    }

    ngx_free(pc);
}


static void
ngx_http_matrix_pg_timer_handler(ngx_event_t *ev)
{
    ngx_http_matrix_pg_t        *pg;
    ngx_http_matrix_pg_conn_t   *pc;
    ngx_http_matrix_pg_query_t  *q;

    pc = ev->data;
    pg = pc->pg;

    if (pc->state == NGX_HTTP_MATRIX_PG_CONNECTING) {
        ngx_http_matrix_pg_connect_failed(pc, "connection timed out");
        return;
    }

    q = pc->q;

    ngx_log_error(NGX_LOG_ERR, pc->pg->log, 0,
                  "matrix postgres: statement timed out, closing the "
                  "connection");

    if (q && q->running) {
        pc->q = NULL;
        q->conn = NULL;
        q->running = 0;

        ngx_http_matrix_pg_close(pc);
        ngx_http_matrix_pg_reply(q, NGX_HTTP_MATRIX_PG_TIMEOUT,
                                 "statement timed out");
        ngx_http_matrix_pg_grow(pg);
        return;
    }

    ngx_http_matrix_pg_lost(pc, "timed out");
}


/* waiters */

static void
ngx_http_matrix_pg_dispatch(ngx_http_matrix_pg_t *pg)
{
    ngx_queue_t                 *qu;
    ngx_http_matrix_pg_conn_t   *pc;
    ngx_http_matrix_pg_query_t  *q;

    if (pg->schema_state != NGX_HTTP_MATRIX_PG_SCHEMA_READY) {
        return;
    }

    while (!ngx_queue_empty(&pg->waiters)) {

        pc = ngx_http_matrix_pg_get(pg);
        if (pc == NULL) {
            break;
        }

        qu = ngx_queue_head(&pg->waiters);
        q = ngx_queue_data(qu, ngx_http_matrix_pg_query_t, queue);

        ngx_queue_remove(&q->queue);
        q->waiting = 0;

        if (q->event.timer_set) {
            ngx_del_timer(&q->event);
        }

        ngx_http_matrix_pg_start(q, pc);
    }

    ngx_http_matrix_pg_grow(pg);
}


/* more connections, if waiters wait and the pool may grow */

static void
ngx_http_matrix_pg_grow(ngx_http_matrix_pg_t *pg)
{
    ngx_queue_t  *qu;
    ngx_uint_t    nwaiters;

    if (!pg->started || ngx_exiting || ngx_terminate) {
        return;
    }

    if (pg->down && ngx_current_msec < pg->down_until) {
        return;
    }

    nwaiters = 0;
    for (qu = ngx_queue_head(&pg->waiters);
         qu != ngx_queue_sentinel(&pg->waiters);
         qu = ngx_queue_next(qu))
    {
        nwaiters++;
    }

    /* while down, one probe at a time */

    while (pg->nconns < pg->max && pg->nconnecting < nwaiters
           && !(pg->down && pg->nconnecting))
    {
        if (ngx_http_matrix_pg_connect(pg, 0) == NULL) {
            return;
        }
    }
}


/* a connection for the query: its statement goes, or its lease starts */

static void
ngx_http_matrix_pg_start(ngx_http_matrix_pg_query_t *q,
    ngx_http_matrix_pg_conn_t *pc)
{
    u_char  buf[NGX_HTTP_MATRIX_PG_ERRLEN];

    /*
     * Reached from run(), acquire(), release() and a pool's cleanup:
     * whatever the query hears is posted, never said inside those calls.
     */

    q->conn = pc;
    pc->q = q;

    if (q->acquiring) {
        q->acquiring = 0;
        q->leased = 1;
        ngx_http_matrix_pg_reply_later(q, NGX_HTTP_MATRIX_PG_OK, NULL);
        return;
    }

    q->running = 1;

    if (ngx_http_matrix_pg_send(pc) != NGX_OK) {
        ngx_http_matrix_pg_errcpy(buf, PQerrorMessage(pc->conn));

        /* the statement never left: not "lost", the outcome is known */
        q->running = 0;
        q->conn = NULL;
        pc->q = NULL;

        ngx_http_matrix_pg_reply_later(q, NGX_HTTP_MATRIX_PG_UNAVAILABLE,
                                       (char *) buf);
        ngx_http_matrix_pg_lost(pc, (char *) buf);
    }
}


static void
ngx_http_matrix_pg_wait_handler(ngx_event_t *ev)
{
    ngx_http_matrix_pg_query_t  *q;

    q = ev->data;

    ngx_queue_remove(&q->queue);
    q->waiting = 0;
    q->acquiring = 0;

    ngx_log_error(NGX_LOG_WARN, q->log, 0,
                  "matrix postgres: no free connection in %Mms (max=%ui)",
                  q->timeout ? q->timeout : q->pg->timeout, q->pg->max);

    ngx_http_matrix_pg_reply(q, NGX_HTTP_MATRIX_PG_TIMEOUT,
                             "no free connection in time");
}


static void
ngx_http_matrix_pg_fail_waiters(ngx_http_matrix_pg_t *pg,
    ngx_http_matrix_pg_status_e status, const char *why)
{
    ngx_queue_t                 *qu;
    ngx_http_matrix_pg_query_t  *q;

    while (!ngx_queue_empty(&pg->waiters)) {
        qu = ngx_queue_head(&pg->waiters);
        q = ngx_queue_data(qu, ngx_http_matrix_pg_query_t, queue);

        ngx_queue_remove(&q->queue);
        q->waiting = 0;
        q->acquiring = 0;

        if (q->event.timer_set) {
            ngx_del_timer(&q->event);
        }

        ngx_http_matrix_pg_reply_later(q, status, why);
    }
}


static void
ngx_http_matrix_pg_went_down(ngx_http_matrix_pg_t *pg, const char *why)
{
    pg->backoff = ngx_min(ngx_max(pg->backoff * 2,
                                  NGX_HTTP_MATRIX_PG_BACKOFF_MIN),
                          NGX_HTTP_MATRIX_PG_BACKOFF_MAX);
    pg->down_until = ngx_current_msec + pg->backoff;

    if (!pg->down) {
        ngx_log_error(NGX_LOG_ERR, pg->log, 0,
                      "matrix postgres: cannot connect, database "
                      "unavailable: %s", why);
        pg->down = 1;

    } else {
        ngx_log_debug2(NGX_LOG_DEBUG_HTTP, pg->log, 0,
                       "matrix postgres: still down, retry in %Mms: %s",
                       pg->backoff, why);
    }

    ngx_http_matrix_pg_fail_waiters(pg, NGX_HTTP_MATRIX_PG_UNAVAILABLE, why);

    /* the schema is still to do: come back without waiting for traffic */

    if (pg->schema_state != NGX_HTTP_MATRIX_PG_SCHEMA_READY
        && pg->started && !ngx_exiting && !ngx_terminate
        && !pg->retry.timer_set)
    {
        ngx_add_timer(&pg->retry, pg->backoff);
    }
}


static void
ngx_http_matrix_pg_retry_handler(ngx_event_t *ev)
{
    ngx_http_matrix_pg_t  *pg;

    pg = ev->data;

    if (ngx_exiting || ngx_terminate || !pg->started) {
        return;
    }

    if (pg->schema_state == NGX_HTTP_MATRIX_PG_SCHEMA_READY) {
        ngx_http_matrix_pg_grow(pg);
        return;
    }

    if (pg->schema_state == NGX_HTTP_MATRIX_PG_SCHEMA_RUNNING) {
        return;
    }

    /* a free connection takes the schema up again; else a new one */

    if (pg->nconns == 0 || ngx_queue_empty(&pg->free)) {
        if (pg->nconnecting == 0) {
            (void) ngx_http_matrix_pg_connect(pg, 0);

        } else {
            /* that one may fail too: look again */
            ngx_add_timer(&pg->retry, NGX_HTTP_MATRIX_PG_BACKOFF_MAX);
        }

        return;
    }

    {
        ngx_http_matrix_pg_conn_t  *pc;

        pc = ngx_http_matrix_pg_get(pg);
        if (pc == NULL) {
            (void) ngx_http_matrix_pg_connect(pg, 0);
            return;
        }

        ngx_http_matrix_pg_ready(pc);
    }
}


static void
ngx_http_matrix_pg_listen_resubscribe_handler(ngx_event_t *ev)
{
    ngx_http_matrix_pg_t  *pg;

    pg = ev->data;

    if (ngx_exiting || ngx_terminate || !pg->started) {
        return;
    }

    if (pg->listen_conn) {
        ngx_http_matrix_pg_close(pg->listen_conn);
        pg->listen_conn = NULL;
    }

    if (pg->listen_retry.timer_set) {
        ngx_del_timer(&pg->listen_retry);
    }

    pg->listen_conn = ngx_http_matrix_pg_connect(pg, 1);
}


static void
ngx_http_matrix_pg_listen_retry_handler(ngx_event_t *ev)
{
    ngx_http_matrix_pg_t  *pg;

    pg = ev->data;

    if (ngx_exiting || ngx_terminate || !pg->started || pg->listen_conn) {
        return;
    }

    pg->listen_conn = ngx_http_matrix_pg_connect(pg, 1);
}


/* the migration finished, one way or the other */

static void
ngx_http_matrix_pg_schema_done(ngx_http_matrix_pg_query_t *q)
{
    ngx_http_matrix_pg_t  *pg;

    pg = q->pg;

    ngx_http_matrix_pg_release(q);

    if (q->status != NGX_HTTP_MATRIX_PG_OK) {
        ngx_http_matrix_pg_schema_failed(pg);
        return;
    }

    pg->schema_state = NGX_HTTP_MATRIX_PG_SCHEMA_READY;
    pg->schema_backoff = 0;

    ngx_http_matrix_pg_dispatch(pg);
}


/* waiters are told; the schema is tried again, later and later */

static void
ngx_http_matrix_pg_schema_failed(ngx_http_matrix_pg_t *pg)
{
    pg->schema_state = NGX_HTTP_MATRIX_PG_SCHEMA_FAILED;

    ngx_http_matrix_pg_fail_waiters(pg, NGX_HTTP_MATRIX_PG_UNAVAILABLE,
                                    "the schema is not ready");

    pg->schema_backoff = ngx_min(ngx_max(pg->schema_backoff * 2, 1000),
                                 NGX_HTTP_MATRIX_PG_BACKOFF_MAX);

    if (pg->started && !ngx_exiting && !ngx_terminate
        && !pg->retry.timer_set)
    {
        ngx_add_timer(&pg->retry, pg->schema_backoff);
    }
}


/* replies: always from the event loop, never inside the caller's call */

static void
ngx_http_matrix_pg_set_status(ngx_http_matrix_pg_query_t *q,
    ngx_http_matrix_pg_status_e status, const char *why)
{
    q->status = status;

    if (why == NULL && q->result
        && status == NGX_HTTP_MATRIX_PG_SQL_ERROR)
    {
        why = PQresultErrorMessage(q->result);
    }

    if (why == NULL) {
        q->error.len = 0;
        return;
    }

    ngx_http_matrix_pg_errcpy(q->errbuf, why);
    q->error.data = q->errbuf;
    q->error.len = ngx_strlen(q->errbuf);
}


static void
ngx_http_matrix_pg_reply(ngx_http_matrix_pg_query_t *q,
    ngx_http_matrix_pg_status_e status, const char *why)
{
    ngx_http_matrix_pg_set_status(q, status, why);

    if (q->abandoned || q->handler == NULL) {
        PQclear(q->result);
        q->result = NULL;
        return;
    }

    q->handler(q);

    /* the handler may have ended the query's pool: nothing after this */
}


static void
ngx_http_matrix_pg_reply_later(ngx_http_matrix_pg_query_t *q,
    ngx_http_matrix_pg_status_e status, const char *why)
{
    ngx_http_matrix_pg_set_status(q, status, why);

    q->event.handler = ngx_http_matrix_pg_reply_handler;
    ngx_post_event(&q->event, &ngx_posted_events);
}


static void
ngx_http_matrix_pg_reply_handler(ngx_event_t *ev)
{
    ngx_http_matrix_pg_query_t  *q;

    q = ev->data;
    q->event.handler = ngx_http_matrix_pg_wait_handler;

    if (q->abandoned || q->handler == NULL) {
        return;
    }

    q->handler(q);
}


/* use */

ngx_http_matrix_pg_t *
ngx_http_matrix_pg_for_request(ngx_http_request_t *r)
{
    ngx_http_matrix_main_conf_t  *mmcf;

    mmcf = ngx_http_get_module_main_conf(r, ngx_http_matrix_module);

    return mmcf->pg;
}


/* the worker's pool, for work with no request; NULL: no database */

ngx_http_matrix_pg_t *
ngx_http_matrix_pg_of_cycle(void)
{
    ngx_http_matrix_main_conf_t  *mmcf;

    mmcf = ngx_http_cycle_get_module_main_conf(ngx_cycle,
                                               ngx_http_matrix_module);

    if (mmcf == NULL || mmcf->pg == NULL || !mmcf->pg->started) {
        return NULL;
    }

    return mmcf->pg;
}


ngx_http_matrix_pg_query_t *
ngx_http_matrix_pg_query_create(ngx_http_matrix_pg_t *pg, ngx_pool_t *pool,
    ngx_log_t *log)
{
    ngx_pool_cleanup_t          *cln;
    ngx_http_matrix_pg_query_t  *q;

    q = ngx_pcalloc(pool, sizeof(ngx_http_matrix_pg_query_t));
    if (q == NULL) {
        return NULL;
    }

    cln = ngx_pool_cleanup_add(pool, 0);
    if (cln == NULL) {
        return NULL;
    }

    cln->handler = ngx_http_matrix_pg_query_cleanup;
    cln->data = q;

    q->pg = pg;
    q->pool = pool;
    q->log = log;
    q->event.data = q;
    q->event.log = log;
    q->event.handler = ngx_http_matrix_pg_wait_handler;

    ngx_queue_init(&q->queue);

    return q;
}


/*
 * A parameter from a counted string, copied: libpq reads text parameters
 * up to their NUL, and a request's strings are slices.
 */

ngx_int_t
ngx_http_matrix_pg_param(ngx_http_matrix_pg_query_t *q, ngx_uint_t n,
    ngx_str_t *value)
{
    u_char  *p;

    if (n >= NGX_HTTP_MATRIX_PG_MAX_PARAMS) {
        return NGX_ERROR;
    }

    if (value == NULL) {
        q->values[n] = NULL;
        return NGX_OK;
    }

    p = ngx_pnalloc(q->pool, value->len + 1);
    if (p == NULL) {
        return NGX_ERROR;
    }

    *ngx_cpymem(p, value->data, value->len) = '\0';

    q->values[n] = (const char *) p;
    q->lengths[n] = (int) value->len;

    return NGX_OK;
}


static ngx_int_t
ngx_http_matrix_pg_check(ngx_http_matrix_pg_query_t *q)
{
    if (q->waiting || q->running || q->acquiring || q->abandoned) {
        ngx_log_error(NGX_LOG_ALERT, q->log, 0,
                      "matrix postgres: query reused while busy");
        return NGX_ERROR;
    }

    if (q->nparams > NGX_HTTP_MATRIX_PG_MAX_PARAMS) {
        return NGX_ERROR;
    }

    q->status = NGX_HTTP_MATRIX_PG_OK;
    q->error.len = 0;

    PQclear(q->result);
    q->result = NULL;

    return NGX_OK;
}


/*
 * Queues the query for a connection, or fails it at once (from a posted
 * event) when the pool is down or cannot have it in time.
 */

static ngx_int_t
ngx_http_matrix_pg_enqueue(ngx_http_matrix_pg_query_t *q)
{
    ngx_msec_t             timeout;
    ngx_http_matrix_pg_t  *pg;

    pg = q->pg;

    if (!pg->started) {
        ngx_http_matrix_pg_reply_later(q, NGX_HTTP_MATRIX_PG_UNAVAILABLE,
                                       "the pool is not running");
        return NGX_OK;
    }

    if (pg->down && ngx_current_msec < pg->down_until) {
        ngx_http_matrix_pg_reply_later(q, NGX_HTTP_MATRIX_PG_UNAVAILABLE,
                                       "still down, not retried yet");
        return NGX_OK;
    }

    if (pg->schema_state == NGX_HTTP_MATRIX_PG_SCHEMA_FAILED) {
        ngx_http_matrix_pg_reply_later(q, NGX_HTTP_MATRIX_PG_UNAVAILABLE,
                                       "the schema is not ready");
        return NGX_OK;
    }

    timeout = q->timeout ? q->timeout : pg->timeout;

    q->waiting = 1;
    q->event.handler = ngx_http_matrix_pg_wait_handler;
    ngx_queue_insert_tail(&pg->waiters, &q->queue);
    ngx_add_timer(&q->event, timeout);

    ngx_http_matrix_pg_dispatch(pg);
    ngx_http_matrix_pg_grow(pg);

    return NGX_OK;
}


ngx_int_t
ngx_http_matrix_pg_run(ngx_http_matrix_pg_query_t *q)
{
    ngx_http_matrix_pg_conn_t  *pc;

    if (ngx_http_matrix_pg_check(q) != NGX_OK) {
        return NGX_ERROR;
    }

    if (q->leased) {
        pc = q->conn;

        if (pc == NULL) {
            /* never quietly on another connection: that is no transaction */
            ngx_http_matrix_pg_reply_later(q, NGX_HTTP_MATRIX_PG_LOST,
                                           "the leased connection was lost");
            return NGX_OK;
        }

        if (pc->phase != NGX_HTTP_MATRIX_PG_NONE) {
            return NGX_ERROR;
        }

        q->running = 1;

        if (ngx_http_matrix_pg_send(pc) != NGX_OK) {
            /* the statement never left: the owner hears of it later */
            q->running = 0;
            q->conn = NULL;
            pc->q = NULL;

            ngx_http_matrix_pg_reply_later(q, NGX_HTTP_MATRIX_PG_LOST,
                                           "connection lost");
            ngx_http_matrix_pg_lost(pc, PQerrorMessage(pc->conn));
        }

        return NGX_OK;
    }

    return ngx_http_matrix_pg_enqueue(q);
}


ngx_int_t
ngx_http_matrix_pg_acquire(ngx_http_matrix_pg_query_t *q)
{
    if (q->leased) {
        return NGX_ERROR;
    }

    if (ngx_http_matrix_pg_check(q) != NGX_OK) {
        return NGX_ERROR;
    }

    q->acquiring = 1;

    return ngx_http_matrix_pg_enqueue(q);
}


void
ngx_http_matrix_pg_release(ngx_http_matrix_pg_query_t *q)
{
    ngx_http_matrix_pg_conn_t  *pc;

    if (!q->leased) {
        return;
    }

    pc = q->conn;
    q->leased = 0;
    q->conn = NULL;

    if (pc == NULL) {
        return;
    }

    pc->q = NULL;

    if (q->running) {
        /* its result is nobody's; then the connection is put back */
        q->running = 0;
        return;
    }

    ngx_http_matrix_pg_put(pc);
}


ngx_uint_t
ngx_http_matrix_pg_max(ngx_http_matrix_pg_t *pg)
{
    return pg->max;
}


void
ngx_http_matrix_pg_abandon(ngx_http_matrix_pg_query_t *q)
{
    ngx_http_matrix_pg_conn_t  *pc;

    if (q->abandoned) {
        return;
    }

    q->abandoned = 1;

    if (q->waiting) {
        ngx_queue_remove(&q->queue);
        q->waiting = 0;
    }

    if (q->event.timer_set) {
        ngx_del_timer(&q->event);
    }

    if (q->event.posted) {
        ngx_delete_posted_event(&q->event);
    }

    pc = q->conn;

    if (pc) {
        pc->q = NULL;
        q->conn = NULL;

        /* a running statement finishes unheard; an idle lease returns */

        if (!q->running && q->leased) {
            q->leased = 0;
            ngx_http_matrix_pg_put(pc);
        }
    }

    q->leased = 0;
    q->running = 0;

    PQclear(q->result);
    q->result = NULL;
}


static void
ngx_http_matrix_pg_query_cleanup(void *data)
{
    ngx_http_matrix_pg_query_t  *q = data;

    ngx_http_matrix_pg_abandon(q);
}


ngx_int_t
ngx_http_matrix_pg_listen(ngx_http_matrix_pg_t *pg, const char *channel,
    ngx_http_matrix_pg_notify_pt handler, void *data)
{
    ngx_http_matrix_pg_listen_t  *l;

    if (pg->listeners.elts == NULL) {
        if (pg->pool == NULL) {
            return NGX_ERROR;
        }

        if (ngx_array_init(&pg->listeners, pg->pool, 4,
                           sizeof(ngx_http_matrix_pg_listen_t))
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    l = ngx_array_push(&pg->listeners);
    if (l == NULL) {
        return NGX_ERROR;
    }

    l->channel = (char *) channel;
    l->handler = handler;
    l->data = data;
    l->sent = 0;

    if (!pg->started) {
        return NGX_OK;
    }

    /*
     * A new channel: a new LISTEN connection subscribes to them all.  Not
     * now: this may be called from a notification on the old one.
     */

    if (!pg->listen_resubscribe.posted) {
        ngx_post_event(&pg->listen_resubscribe, &ngx_posted_events);
    }

    return NGX_OK;
}


/* whether the leased connection is inside a transaction that works */

ngx_uint_t
ngx_http_matrix_pg_in_transaction(ngx_http_matrix_pg_query_t *q)
{
    return q->leased && q->conn
           && PQtransactionStatus(q->conn->conn) == PQTRANS_INTRANS;
}


const char *
ngx_http_matrix_pg_status_text(ngx_http_matrix_pg_status_e s)
{
    static const char  *text[] = {
        "ok", "SQL error", "database unavailable", "timed out",
        "connection lost"
    };

    return (s <= NGX_HTTP_MATRIX_PG_LOST) ? text[s] : "?";
}


ngx_int_t
ngx_http_matrix_pg_send_error(ngx_http_request_t *r,
    ngx_http_matrix_pg_query_t *q)
{
    ngx_str_t  retry = ngx_string("2");

    if (q->status == NGX_HTTP_MATRIX_PG_SQL_ERROR) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "matrix postgres: %V", &q->error);

        return ngx_http_matrix_send_error(r, NGX_HTTP_INTERNAL_SERVER_ERROR,
                                          "M_UNKNOWN",
                                          "Internal server error");
    }

    ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                  "matrix postgres: %s%s%V",
                  ngx_http_matrix_pg_status_text(q->status),
                  q->error.len ? ": " : "", &q->error);

    (void) ngx_http_matrix_add_header(r, "Retry-After", &retry);

    return ngx_http_matrix_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                      "M_UNKNOWN",
                                      "The database is unavailable, "
                                      "try again later");
}
