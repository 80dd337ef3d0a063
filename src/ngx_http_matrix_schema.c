/*
 * The module's own schema, brought up to date by the first connection of
 * each worker before any other statement runs.
 *
 * Several workers and several nginx nodes start at once: every migrator
 * takes the same transaction-scoped advisory lock first, so one applies
 * what is missing and the others, once they have the lock, find nothing
 * to do.  matrix-tool migrate takes the same steps for operators who
 * apply schema changes themselves ("matrix_migrate off"); then the
 * module only checks that the schema is recent enough.
 */


#include "ngx_http_matrix_module.h"
#include "ngx_http_matrix_pg.h"

#include <matrix_migrations.h>


/* the advisory lock's first key: "mx"; the second is hashtext(schema) */
#define NGX_HTTP_MATRIX_SCHEMA_LOCK_KEY  "28024"


typedef enum {
    NGX_HTTP_MATRIX_SCHEMA_BEGIN = 0,
    NGX_HTTP_MATRIX_SCHEMA_LOCK,
    NGX_HTTP_MATRIX_SCHEMA_CREATE,
    NGX_HTTP_MATRIX_SCHEMA_VERSION,
    NGX_HTTP_MATRIX_SCHEMA_APPLY,
    NGX_HTTP_MATRIX_SCHEMA_RECORD,
    NGX_HTTP_MATRIX_SCHEMA_COMMIT,
    NGX_HTTP_MATRIX_SCHEMA_CHECK
} ngx_http_matrix_schema_step_e;


typedef struct {
    ngx_http_matrix_pg_schema_conf_t  *conf;
    ngx_http_matrix_pg_handler_pt      done;
    ngx_http_matrix_schema_step_e      step;
    ngx_uint_t                         next;      /* in matrix_migrations */
    unsigned                           from;      /* version found */
    unsigned                           applied;
    ngx_pool_t                        *pool;
    u_char                             number[NGX_INT_T_LEN];
} ngx_http_matrix_schema_t;


static ngx_int_t ngx_http_matrix_schema_step(ngx_http_matrix_pg_query_t *q);
static void ngx_http_matrix_schema_handler(ngx_http_matrix_pg_query_t *q);
static void ngx_http_matrix_schema_finish(ngx_http_matrix_pg_query_t *q,
    ngx_http_matrix_pg_status_e status);
static unsigned ngx_http_matrix_schema_latest(void);


ngx_int_t
ngx_http_matrix_schema_start(ngx_http_matrix_pg_query_t *q,
    ngx_http_matrix_pg_schema_conf_t *conf, ngx_http_matrix_pg_handler_pt done)
{
    ngx_pool_t                *pool;
    ngx_http_matrix_schema_t  *ms;

    pool = ngx_create_pool(1024, q->log);
    if (pool == NULL) {
        return NGX_ERROR;
    }

    ms = ngx_pcalloc(pool, sizeof(ngx_http_matrix_schema_t));
    if (ms == NULL) {
        ngx_destroy_pool(pool);
        return NGX_ERROR;
    }

    ms->conf = conf;
    ms->done = done;
    ms->pool = pool;
    ms->step = conf->migrate ? NGX_HTTP_MATRIX_SCHEMA_BEGIN
                             : NGX_HTTP_MATRIX_SCHEMA_CHECK;

    q->data = ms;
    q->handler = ngx_http_matrix_schema_handler;

    if (ngx_http_matrix_schema_step(q) != NGX_OK) {
        ngx_destroy_pool(pool);
        q->data = NULL;
        return NGX_ERROR;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_matrix_schema_step(ngx_http_matrix_pg_query_t *q)
{
    u_char                    *p;
    ngx_str_t                 *schema;
    ngx_http_matrix_schema_t  *ms;

    ms = q->data;
    schema = &ms->conf->quoted;

    q->stmt = NULL;
    q->nparams = 0;

    switch (ms->step) {

    case NGX_HTTP_MATRIX_SCHEMA_BEGIN:
        q->sql = "BEGIN";
        break;

    case NGX_HTTP_MATRIX_SCHEMA_LOCK:
        q->sql = "SELECT pg_advisory_xact_lock(" NGX_HTTP_MATRIX_SCHEMA_LOCK_KEY
                 ", hashtext($1))";
        q->nparams = 1;
        q->values[0] = (char *) ms->conf->name.data;
        q->lengths[0] = 0;
        break;

    case NGX_HTTP_MATRIX_SCHEMA_CREATE:

        /* names from the configuration, quoted: not request data */

        p = ngx_pnalloc(ms->pool, 3 * schema->len + 256);
        if (p == NULL) {
            return NGX_ERROR;
        }

        q->sql = (char *) p;

        p = ngx_sprintf(p, "CREATE SCHEMA IF NOT EXISTS %V; "
                        "SET LOCAL search_path TO %V; "
                        "CREATE TABLE IF NOT EXISTS schema_migrations ("
                        "version integer PRIMARY KEY, "
                        "name text NOT NULL, "
                        "applied_at timestamptz NOT NULL DEFAULT now())",
                        schema, schema);
        *p = '\0';
        break;

    case NGX_HTTP_MATRIX_SCHEMA_CHECK:
        p = ngx_pnalloc(ms->pool, schema->len + 128);
        if (p == NULL) {
            return NGX_ERROR;
        }

        q->sql = (char *) p;

        p = ngx_sprintf(p, "SELECT coalesce(max(version), 0) "
                        "FROM %V.schema_migrations", schema);
        *p = '\0';
        break;

    case NGX_HTTP_MATRIX_SCHEMA_VERSION:
        q->sql = "SELECT coalesce(max(version), 0) FROM schema_migrations";
        break;

    case NGX_HTTP_MATRIX_SCHEMA_APPLY:
        q->sql = matrix_migrations[ms->next].sql;
        break;

    case NGX_HTTP_MATRIX_SCHEMA_RECORD:
        *ngx_sprintf(ms->number, "%ui",
                     (ngx_uint_t) matrix_migrations[ms->next].version) = '\0';

        q->sql = "INSERT INTO schema_migrations (version, name) "
                 "VALUES ($1, $2)";
        q->nparams = 2;
        q->values[0] = (char *) ms->number;
        q->values[1] = matrix_migrations[ms->next].name;
        q->lengths[0] = 0;
        q->lengths[1] = 0;
        break;

    case NGX_HTTP_MATRIX_SCHEMA_COMMIT:
        q->sql = "COMMIT";
        break;
    }

    return ngx_http_matrix_pg_run(q);
}


static void
ngx_http_matrix_schema_handler(ngx_http_matrix_pg_query_t *q)
{
    char                      *v;
    unsigned                   latest;
    ngx_http_matrix_schema_t  *ms;

    ms = q->data;

    if (q->status != NGX_HTTP_MATRIX_PG_OK) {

        if (ms->step == NGX_HTTP_MATRIX_SCHEMA_APPLY
            || ms->step == NGX_HTTP_MATRIX_SCHEMA_RECORD)
        {
            ngx_log_error(NGX_LOG_ALERT, q->log, 0,
                          "matrix: migration \"%s\" of schema \"%V\" "
                          "failed: %V", matrix_migrations[ms->next].name,
                          &ms->conf->name, &q->error);

        } else if (ms->step == NGX_HTTP_MATRIX_SCHEMA_CHECK) {
            ngx_log_error(NGX_LOG_ALERT, q->log, 0,
                          "matrix: schema \"%V\" cannot be read (with "
                          "\"matrix_migrate off\" run \"matrix-tool "
                          "migrate\" first): %V",
                          &ms->conf->name, &q->error);

        } else {
            ngx_log_error(NGX_LOG_ALERT, q->log, 0,
                          "matrix: schema \"%V\" cannot be brought up to "
                          "date: %V", &ms->conf->name, &q->error);
        }

        ngx_http_matrix_schema_finish(q, q->status);
        return;
    }

    latest = ngx_http_matrix_schema_latest();

    switch (ms->step) {

    case NGX_HTTP_MATRIX_SCHEMA_VERSION:
    case NGX_HTTP_MATRIX_SCHEMA_CHECK:
        v = PQgetvalue(q->result, 0, 0);
        ms->from = (unsigned) ngx_atoi((u_char *) v, ngx_strlen(v));

        if (ms->from > latest) {
            ngx_log_error(NGX_LOG_WARN, q->log, 0,
                          "matrix: schema \"%V\" is at version %ui, newer "
                          "than this module's %ui: a newer module "
                          "migrated it", &ms->conf->name,
                          (ngx_uint_t) ms->from, (ngx_uint_t) latest);
        }

        if (ms->step == NGX_HTTP_MATRIX_SCHEMA_CHECK) {
            if (ms->from < latest) {
                ngx_log_error(NGX_LOG_ALERT, q->log, 0,
                              "matrix: schema \"%V\" is at version %ui, "
                              "this module needs %ui: run \"matrix-tool "
                              "migrate\" (\"matrix_migrate\" is off)",
                              &ms->conf->name, (ngx_uint_t) ms->from,
                              (ngx_uint_t) latest);
                ngx_http_matrix_schema_finish(q,
                                             NGX_HTTP_MATRIX_PG_SQL_ERROR);
                return;
            }

            ngx_http_matrix_schema_finish(q, NGX_HTTP_MATRIX_PG_OK);
            return;
        }

        for (ms->next = 0; matrix_migrations[ms->next].sql; ms->next++) {
            if (matrix_migrations[ms->next].version > ms->from) {
                break;
            }
        }

        ms->step = matrix_migrations[ms->next].sql
                   ? NGX_HTTP_MATRIX_SCHEMA_APPLY
                   : NGX_HTTP_MATRIX_SCHEMA_COMMIT;
        break;

    case NGX_HTTP_MATRIX_SCHEMA_APPLY:

        /* a COMMIT inside a migration would split it from its record */

        if (!ngx_http_matrix_pg_in_transaction(q)) {
            ngx_log_error(NGX_LOG_ALERT, q->log, 0,
                          "matrix: migration \"%s\" of schema \"%V\" "
                          "ended the transaction it runs in",
                          matrix_migrations[ms->next].name, &ms->conf->name);
            ngx_http_matrix_schema_finish(q, NGX_HTTP_MATRIX_PG_SQL_ERROR);
            return;
        }

        ms->step = NGX_HTTP_MATRIX_SCHEMA_RECORD;
        break;

    case NGX_HTTP_MATRIX_SCHEMA_RECORD:
        ngx_log_error(NGX_LOG_NOTICE, q->log, 0,
                      "matrix: schema \"%V\": applied migration \"%s\"",
                      &ms->conf->name, matrix_migrations[ms->next].name);

        ms->applied++;
        ms->next++;
        ms->step = matrix_migrations[ms->next].sql
                   ? NGX_HTTP_MATRIX_SCHEMA_APPLY
                   : NGX_HTTP_MATRIX_SCHEMA_COMMIT;
        break;

    case NGX_HTTP_MATRIX_SCHEMA_COMMIT:
        if (ms->applied) {
            ngx_log_error(NGX_LOG_NOTICE, q->log, 0,
                          "matrix: schema \"%V\" is at version %ui",
                          &ms->conf->name, (ngx_uint_t) latest);
        }

        ngx_http_matrix_schema_finish(q, NGX_HTTP_MATRIX_PG_OK);
        return;

    default:
        ms->step++;
        break;
    }

    if (ngx_http_matrix_schema_step(q) != NGX_OK) {
        ngx_http_matrix_schema_finish(q, NGX_HTTP_MATRIX_PG_UNAVAILABLE);
    }
}


static void
ngx_http_matrix_schema_finish(ngx_http_matrix_pg_query_t *q,
    ngx_http_matrix_pg_status_e status)
{
    ngx_http_matrix_schema_t  *ms;

    ms = q->data;

    q->status = status;
    q->data = NULL;
    q->handler = NULL;

    ms->done(q);

    ngx_destroy_pool(ms->pool);
}


static unsigned
ngx_http_matrix_schema_latest(void)
{
    unsigned    latest;
    ngx_uint_t  i;

    latest = 0;

    for (i = 0; matrix_migrations[i].sql; i++) {
        latest = matrix_migrations[i].version;
    }

    return latest;
}
