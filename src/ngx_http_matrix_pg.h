/*
 * Postgres on nginx's event loop: a per-worker pool of non-blocking libpq
 * connections for request handlers and for background work alike.
 *
 * A query object carries one statement at a time and hears back through
 * its handler, always from the event loop, never from inside the call
 * that started it.  Run without a lease, a statement takes any free
 * connection and gives it back when done; a query that acquires a lease
 * keeps its connection across statements (a transaction) until it
 * releases it.  Should that connection die, every later statement on the
 * lease fails (never quietly runs elsewhere) until the lease is released;
 * a lease set to watch is told at once.  A query is created on a pool (a
 * request's, say): when that pool goes, the query is abandoned and any
 * lease it held returned, rolled back first if a transaction was left
 * open.
 */

#ifndef _NGX_HTTP_MATRIX_PG_H_INCLUDED_
#define _NGX_HTTP_MATRIX_PG_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <libpq-fe.h>


#define NGX_HTTP_MATRIX_PG_MAX_PARAMS  16
#define NGX_HTTP_MATRIX_PG_ERRLEN      256


typedef struct ngx_http_matrix_pg_conn_s    ngx_http_matrix_pg_conn_t;
typedef struct ngx_http_matrix_pg_query_s   ngx_http_matrix_pg_query_t;
typedef struct ngx_http_matrix_pg_listen_s  ngx_http_matrix_pg_listen_t;


typedef enum {
    NGX_HTTP_MATRIX_PG_OK = 0,
    NGX_HTTP_MATRIX_PG_SQL_ERROR,     /* the server refused the statement */
    NGX_HTTP_MATRIX_PG_UNAVAILABLE,   /* no connection to be had */
    NGX_HTTP_MATRIX_PG_TIMEOUT,       /* no connection or no result in time */
    NGX_HTTP_MATRIX_PG_LOST           /* the connection died mid-statement:
                                         the outcome is unknown */
} ngx_http_matrix_pg_status_e;


typedef void (*ngx_http_matrix_pg_handler_pt)(ngx_http_matrix_pg_query_t *q);

/* channel is NULL after a (re)connect: notifications may have been missed */
typedef void (*ngx_http_matrix_pg_notify_pt)(void *data, const char *channel,
    const char *payload);


/*
 * A statement prepared once per connection, on first use.  Declare it
 * static: its index is given out by the first pool that runs it.
 */
typedef struct {
    const char                     *sql;
    int                             nparams;
    ngx_uint_t                      index;       /* 1.., 0 = not yet */
} ngx_http_matrix_pg_stmt_t;

#define ngx_http_matrix_pg_stmt(sql, n)  { sql, n, 0 }


struct ngx_http_matrix_pg_query_s {
    /* the statement: a prepared one or a one-off */
    ngx_http_matrix_pg_stmt_t      *stmt;
    const char                     *sql;
    int                             nparams;
    const char     *values[NGX_HTTP_MATRIX_PG_MAX_PARAMS];  /* NUL-terminated;
                                                             NULL: SQL NULL */
    int             lengths[NGX_HTTP_MATRIX_PG_MAX_PARAMS];

    ngx_msec_t                      timeout;      /* 0: the pool's */
    ngx_http_matrix_pg_handler_pt   handler;
    void                           *data;
    ngx_log_t                      *log;

    /* the outcome, valid in the handler */
    ngx_http_matrix_pg_status_e     status;
    PGresult                       *result;       /* until the next statement
                                                     or the query's pool
                                                     goes; set it to NULL to
                                                     keep it */
    ngx_str_t                       error;        /* for the log */
    u_char                          errbuf[NGX_HTTP_MATRIX_PG_ERRLEN];

    /* private */
    ngx_http_matrix_pg_t           *pg;
    ngx_pool_t                     *pool;
    ngx_http_matrix_pg_conn_t      *conn;         /* leased or running */
    ngx_queue_t                     queue;        /* among the waiters */
    ngx_event_t                     event;        /* wait deadline; posted
                                                     replies */
    ngx_msec_t                      deadline;
    unsigned                        waiting:1;
    unsigned                        running:1;
    unsigned                        leased:1;
    unsigned                        acquiring:1;
    unsigned                        internal:1;   /* may use the pool before
                                                     the schema is ready */
    unsigned                        abandoned:1;

    /*
     * Public, set before acquire(): a lease whose connection dies between
     * statements is told so at once (its handler, status LOST), not only
     * at its next statement; for a session that holds something, such as
     * an advisory lock.
     */
    unsigned                        watch:1;
};


/* configuration: "matrix_postgres", "matrix_schema", ... */

char *ngx_http_matrix_pg_directive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
ngx_http_matrix_pg_t *ngx_http_matrix_pg_conf(ngx_conf_t *cf);
char *ngx_http_matrix_pg_init_conf(ngx_conf_t *cf, ngx_http_matrix_pg_t *pg,
    ngx_str_t *schema, ngx_str_t *silo_schema, ngx_flag_t migrate);

ngx_int_t ngx_http_matrix_pg_init_process(ngx_cycle_t *cycle,
    ngx_http_matrix_pg_t *pg);
void ngx_http_matrix_pg_exit_process(ngx_http_matrix_pg_t *pg);


/* use */

ngx_http_matrix_pg_t *ngx_http_matrix_pg_for_request(ngx_http_request_t *r);
ngx_http_matrix_pg_t *ngx_http_matrix_pg_of_cycle(void);
ngx_http_matrix_pg_query_t *ngx_http_matrix_pg_query_create(
    ngx_http_matrix_pg_t *pg, ngx_pool_t *pool, ngx_log_t *log);
ngx_int_t ngx_http_matrix_pg_param(ngx_http_matrix_pg_query_t *q,
    ngx_uint_t n, ngx_str_t *value);

ngx_int_t ngx_http_matrix_pg_run(ngx_http_matrix_pg_query_t *q);
ngx_int_t ngx_http_matrix_pg_acquire(ngx_http_matrix_pg_query_t *q);
void ngx_http_matrix_pg_release(ngx_http_matrix_pg_query_t *q);
void ngx_http_matrix_pg_abandon(ngx_http_matrix_pg_query_t *q);

ngx_int_t ngx_http_matrix_pg_listen(ngx_http_matrix_pg_t *pg,
    const char *channel, ngx_http_matrix_pg_notify_pt handler, void *data);

ngx_uint_t ngx_http_matrix_pg_in_transaction(ngx_http_matrix_pg_query_t *q);
/* "max=": a lease kept for good takes one of these */
ngx_uint_t ngx_http_matrix_pg_max(ngx_http_matrix_pg_t *pg);
const char *ngx_http_matrix_pg_status_text(ngx_http_matrix_pg_status_e s);

/* 503 (or 504 for a timeout) with a Matrix error, for request handlers */
ngx_int_t ngx_http_matrix_pg_send_error(ngx_http_request_t *r,
    ngx_http_matrix_pg_query_t *q);


/* ngx_http_matrix_schema.c: migrations, run by the pool's first connection */

typedef struct {
    ngx_str_t                       name;         /* "matrix" */
    ngx_str_t                       quoted;       /* "\"matrix\"" */
    ngx_flag_t                      migrate;
} ngx_http_matrix_pg_schema_conf_t;

ngx_int_t ngx_http_matrix_schema_start(ngx_http_matrix_pg_query_t *q,
    ngx_http_matrix_pg_schema_conf_t *conf,
    ngx_http_matrix_pg_handler_pt done);


#endif /* _NGX_HTTP_MATRIX_PG_H_INCLUDED_ */
