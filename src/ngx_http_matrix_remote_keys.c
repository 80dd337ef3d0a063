/*
 * Other servers' keys, per worker.
 *
 * One entry per server: the keys believed so far (merged across fetches:
 * a key is never replaced by a copy valid for less time, so a spurious
 * answer cannot shorten what a valid one said), when they were fetched,
 * and, after a failure, until when not to try again.  A lookup that
 * finds no valid key joins the entry's waiters; the first one starts the
 * fetch, every waiter hears its outcome.
 *
 * Documents are kept in Postgres too (server_key_json), when the module
 * has a database: a worker that has not seen a server yet looks there
 * before it asks the network, so a restart does not refetch the world.
 *
 * When the server itself fails or does not have the key wanted, the
 * trusted notaries are asked (ngx_http_matrix_key_notaries.c); what they
 * relay is the server's own document, kept under the notary's name.
 */


#include "ngx_http_matrix_module.h"
#include "ngx_http_matrix_remote_keys.h"
#include "ngx_http_matrix_http.h"
#include "ngx_http_matrix_destination.h"
#include "ngx_http_matrix_pg.h"
#include "ngx_http_matrix_key_notaries.h"

#include <mx_key_doc.h>


#define NGX_HTTP_MATRIX_KEYS_MAX_SERVERS   4096
#define NGX_HTTP_MATRIX_KEYS_MAX_PER       32
#define NGX_HTTP_MATRIX_KEYS_RETRY         60000     /* after a failure */
#define NGX_HTTP_MATRIX_KEYS_REFETCH       30000     /* for an unknown key */
#define NGX_HTTP_MATRIX_KEYS_DOC_REFETCH   2000      /* for a notary query */
#define NGX_HTTP_MATRIX_KEYS_DOC_MAX       65536


typedef struct {
    ngx_queue_t                    queue;          /* LRU, most recent first */
    u_char                         name[256];
    size_t                         name_len;

    mx_remote_key_t                keys[NGX_HTTP_MATRIX_KEYS_MAX_PER];
    ngx_uint_t                     nkeys;

    int64_t                        failed_until;
    int64_t                        fetched;

    unsigned                       db_tried:1;
    unsigned                       notaries_asked:1;

    u_char                        *doc;            /* as received, for the */
    size_t                         doc_len;        /* notary (ngx_alloc) */
    int64_t                        doc_valid_until;
    u_char                         failure[200];

    ngx_queue_t                    waiters;
    ngx_pool_t                     *fetch_pool;    /* while fetching */
} ngx_http_matrix_key_server_t;


typedef struct {
    ngx_queue_t                    servers;
    ngx_uint_t                     nservers;
    ngx_log_t                     *log;
} ngx_http_matrix_remote_keys_t;


static ngx_http_matrix_remote_keys_t *ngx_http_matrix_remote_keys_get(void);
static ngx_http_matrix_key_server_t *ngx_http_matrix_key_server(
    ngx_http_matrix_remote_keys_t *rk, ngx_str_t *name);
static ngx_int_t ngx_http_matrix_key_find(ngx_http_matrix_key_server_t *ks,
    ngx_http_matrix_key_lookup_t *kl);
static ngx_int_t ngx_http_matrix_key_doc_lookup(
    ngx_http_matrix_key_server_t *ks, ngx_http_matrix_key_lookup_t *kl);
static ngx_int_t ngx_http_matrix_key_doc_copy(
    ngx_http_matrix_key_server_t *ks, ngx_http_matrix_key_lookup_t *kl);
static void ngx_http_matrix_key_wait(ngx_http_matrix_key_server_t *ks,
    ngx_http_matrix_key_lookup_t *kl);
static void ngx_http_matrix_key_fetch(ngx_http_matrix_key_server_t *ks);
static void ngx_http_matrix_key_db_loaded(ngx_http_matrix_pg_query_t *q);
static void ngx_http_matrix_key_db_store(ngx_http_matrix_key_server_t *ks);
static void ngx_http_matrix_key_db_keep(ngx_str_t *server, ngx_str_t *from,
    ngx_str_t *doc, int64_t valid_until);
static void ngx_http_matrix_key_db_stored(ngx_http_matrix_pg_query_t *q);
static void ngx_http_matrix_key_network(ngx_http_matrix_key_server_t *ks);
static ngx_int_t ngx_http_matrix_key_take_doc(
    ngx_http_matrix_key_server_t *ks, u_char *text, size_t len, u_char *why);
static ngx_uint_t ngx_http_matrix_key_satisfied(
    ngx_http_matrix_key_server_t *ks);
static void ngx_http_matrix_key_wake(ngx_http_matrix_key_server_t *ks,
    const char *failure);
static void ngx_http_matrix_key_destination_done(ngx_http_matrix_dest_t *dest);
static void ngx_http_matrix_key_fetched(ngx_http_matrix_http_req_t *hr);
static void ngx_http_matrix_key_merge(ngx_http_matrix_key_server_t *ks,
    mx_key_doc_t *doc);
static void ngx_http_matrix_key_fetch_done(ngx_http_matrix_key_server_t *ks,
    const char *failure);
static ngx_int_t ngx_http_matrix_key_ask_notaries(
    ngx_http_matrix_key_server_t *ks, const char *failure);
static ngx_int_t ngx_http_matrix_key_notary_doc(
    ngx_http_matrix_notary_ask_t *na);
static void ngx_http_matrix_key_notaries_done(
    ngx_http_matrix_notary_ask_t *na);
static void ngx_http_matrix_key_reply(ngx_http_matrix_key_lookup_t *kl,
    ngx_int_t rc, const char *why);
static void ngx_http_matrix_key_reply_handler(ngx_event_t *ev);
static void ngx_http_matrix_key_lookup_cleanup(void *data);


ngx_int_t
ngx_http_matrix_remote_keys_init_process(ngx_cycle_t *cycle)
{
    ngx_http_matrix_main_conf_t    *mmcf;
    ngx_http_matrix_remote_keys_t  *rk;

    mmcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_matrix_module);
    if (mmcf == NULL) {
        return NGX_OK;
    }

    rk = ngx_pcalloc(cycle->pool, sizeof(ngx_http_matrix_remote_keys_t));
    if (rk == NULL) {
        return NGX_ERROR;
    }

    ngx_queue_init(&rk->servers);
    rk->log = cycle->log;

    mmcf->remote_keys = rk;

    return NGX_OK;
}


void
ngx_http_matrix_remote_keys_exit_process(ngx_cycle_t *cycle)
{
    ngx_queue_t                    *q;
    ngx_http_matrix_main_conf_t    *mmcf;
    ngx_http_matrix_key_server_t   *ks;
    ngx_http_matrix_remote_keys_t  *rk;

    mmcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_matrix_module);
    if (mmcf == NULL || mmcf->remote_keys == NULL) {
        return;
    }

    rk = mmcf->remote_keys;

    while (!ngx_queue_empty(&rk->servers)) {
        q = ngx_queue_head(&rk->servers);
        ks = ngx_queue_data(q, ngx_http_matrix_key_server_t, queue);
        ngx_queue_remove(q);

        if (ks->fetch_pool) {
            ngx_destroy_pool(ks->fetch_pool);
        }

        if (ks->doc) {
            ngx_free(ks->doc);
        }

        ngx_free(ks);
    }

    mmcf->remote_keys = NULL;
}


static ngx_http_matrix_remote_keys_t *
ngx_http_matrix_remote_keys_get(void)
{
    ngx_http_matrix_main_conf_t  *mmcf;

    mmcf = ngx_http_cycle_get_module_main_conf(ngx_cycle,
                                               ngx_http_matrix_module);

    return mmcf ? mmcf->remote_keys : NULL;
}


ngx_http_matrix_key_lookup_t *
ngx_http_matrix_key_lookup_create(ngx_pool_t *pool, ngx_log_t *log)
{
    ngx_pool_cleanup_t            *cln;
    ngx_http_matrix_key_lookup_t  *kl;

    kl = ngx_pcalloc(pool, sizeof(ngx_http_matrix_key_lookup_t));
    if (kl == NULL) {
        return NULL;
    }

    cln = ngx_pool_cleanup_add(pool, 0);
    if (cln == NULL) {
        return NULL;
    }

    cln->handler = ngx_http_matrix_key_lookup_cleanup;
    cln->data = kl;

    kl->log = log;
    kl->pool = pool;
    kl->reply.handler = ngx_http_matrix_key_reply_handler;
    kl->reply.data = kl;
    kl->reply.log = log;
    ngx_queue_init(&kl->queue);

    return kl;
}


ngx_int_t
ngx_http_matrix_key_lookup(ngx_http_matrix_key_lookup_t *kl)
{
    int64_t                         now;
    ngx_http_matrix_key_server_t   *ks;
    ngx_http_matrix_remote_keys_t  *rk;

    rk = ngx_http_matrix_remote_keys_get();
    if (rk == NULL || kl->server_name.len == 0
        || kl->server_name.len >= sizeof(ks->name))
    {
        return NGX_ERROR;
    }

    ks = ngx_http_matrix_key_server(rk, &kl->server_name);
    if (ks == NULL) {
        return NGX_ERROR;
    }

    if (kl->want_doc) {
        return ngx_http_matrix_key_doc_lookup(ks, kl);
    }

    if (ngx_http_matrix_key_find(ks, kl) == NGX_OK) {
        ngx_http_matrix_key_reply(kl, NGX_OK, NULL);
        return NGX_OK;
    }

    now = ngx_http_matrix_now_ms();

    if (ks->fetch_pool == NULL && now < ks->failed_until) {
        ngx_http_matrix_key_reply(kl, NGX_ERROR, (char *) ks->failure);
        return NGX_OK;
    }

    /*
     * A key asked for that the server did not publish a moment ago is not
     * fetched again for every request that names it: anyone could make
     * us hammer a server so.
     */

    if (ks->fetch_pool == NULL && ks->fetched
        && now < ks->fetched + NGX_HTTP_MATRIX_KEYS_REFETCH)
    {
        ngx_http_matrix_key_reply(kl, NGX_DECLINED,
                                  "no such key, or not valid then");
        return NGX_OK;
    }

    ngx_http_matrix_key_wait(ks, kl);

    return NGX_OK;
}


/*
 * The notary's question: the document itself, fetched again when the one
 * known is valid for less than asked, and when that fails, the one known
 * all the same (with its own valid_until_ts: the asker judges).
 */

static ngx_int_t
ngx_http_matrix_key_doc_lookup(ngx_http_matrix_key_server_t *ks,
    ngx_http_matrix_key_lookup_t *kl)
{
    int64_t  now;

    now = ngx_http_matrix_now_ms();

    if (ks->doc && ks->doc_valid_until >= kl->min_valid_ts
        && ks->doc_valid_until > now)
    {
        return ngx_http_matrix_key_doc_copy(ks, kl);
    }

    /* a notary's askers may not make us hammer a server either */

    if (ks->fetch_pool == NULL
        && (now < ks->failed_until
            || (ks->fetched && now < ks->fetched
                                     + NGX_HTTP_MATRIX_KEYS_DOC_REFETCH)))
    {
        if (ks->doc) {
            return ngx_http_matrix_key_doc_copy(ks, kl);
        }

        ngx_http_matrix_key_reply(kl, NGX_ERROR, ks->failure[0]
                                                 ? (char *) ks->failure
                                                 : "no key document");
        return NGX_OK;
    }

    ngx_http_matrix_key_wait(ks, kl);

    return NGX_OK;
}


static ngx_int_t
ngx_http_matrix_key_doc_copy(ngx_http_matrix_key_server_t *ks,
    ngx_http_matrix_key_lookup_t *kl)
{
    kl->doc.data = ngx_pnalloc(kl->pool, ks->doc_len);
    if (kl->doc.data == NULL) {
        ngx_http_matrix_key_reply(kl, NGX_ERROR, "out of memory");
        return NGX_OK;
    }

    ngx_memcpy(kl->doc.data, ks->doc, ks->doc_len);
    kl->doc.len = ks->doc_len;

    ngx_http_matrix_key_reply(kl, NGX_OK, NULL);

    return NGX_OK;
}


/* the entry of a server, made if needed; the least recent one goes */

static ngx_http_matrix_key_server_t *
ngx_http_matrix_key_server(ngx_http_matrix_remote_keys_t *rk,
    ngx_str_t *name)
{
    ngx_queue_t                   *q;
    ngx_http_matrix_key_server_t  *ks;

    for (q = ngx_queue_head(&rk->servers);
         q != ngx_queue_sentinel(&rk->servers);
         q = ngx_queue_next(q))
    {
        ks = ngx_queue_data(q, ngx_http_matrix_key_server_t, queue);

        if (ks->name_len == name->len
            && ngx_strncmp(ks->name, name->data, name->len) == 0)
        {
            ngx_queue_remove(q);
            ngx_queue_insert_head(&rk->servers, q);
            return ks;
        }
    }

    if (rk->nservers >= NGX_HTTP_MATRIX_KEYS_MAX_SERVERS) {
        for (q = ngx_queue_last(&rk->servers);
             q != ngx_queue_sentinel(&rk->servers);
             q = ngx_queue_prev(q))
        {
            ks = ngx_queue_data(q, ngx_http_matrix_key_server_t, queue);

            if (ks->fetch_pool == NULL) {
                ngx_queue_remove(q);

                if (ks->doc) {
                    ngx_free(ks->doc);
                }

                ngx_free(ks);
                rk->nservers--;
                break;
            }
        }
    }

    ks = ngx_calloc(sizeof(ngx_http_matrix_key_server_t), rk->log);
    if (ks == NULL) {
        return NULL;
    }

    ngx_memcpy(ks->name, name->data, name->len);
    ks->name_len = name->len;
    ngx_queue_init(&ks->waiters);

    ngx_queue_insert_head(&rk->servers, &ks->queue);
    rk->nservers++;

    return ks;
}


/*
 * A current key must be valid at the time asked about (valid_until_ts);
 * an old key only for what was signed before it was retired.
 */

static ngx_int_t
ngx_http_matrix_key_find(ngx_http_matrix_key_server_t *ks,
    ngx_http_matrix_key_lookup_t *kl)
{
    int64_t           at;
    ngx_uint_t        i;
    mx_remote_key_t  *k;

    at = kl->at_ms ? kl->at_ms : ngx_http_matrix_now_ms();

    for (i = 0; i < ks->nkeys; i++) {
        k = &ks->keys[i];

        if (ngx_strlen(k->key_id) != kl->key_id.len
            || ngx_strncmp(k->key_id, kl->key_id.data, kl->key_id.len) != 0)
        {
            continue;
        }

        if (k->expired_ts ? at < k->expired_ts : at <= k->valid_until_ts) {
            ngx_memcpy(kl->public_key, k->public_key, 32);
            return NGX_OK;
        }

        return NGX_DECLINED;
    }

    return NGX_DECLINED;
}


/* the lookup hears the outcome of the fetch, the first one starts it */

static void
ngx_http_matrix_key_wait(ngx_http_matrix_key_server_t *ks,
    ngx_http_matrix_key_lookup_t *kl)
{
    kl->server = ks;
    kl->waiting = 1;
    ngx_queue_insert_tail(&ks->waiters, &kl->queue);

    if (ks->fetch_pool == NULL) {
        ngx_http_matrix_key_fetch(ks);
    }
}


static void
ngx_http_matrix_key_fetch(ngx_http_matrix_key_server_t *ks)
{
    ngx_http_matrix_remote_keys_t  *rk;

    rk = ngx_http_matrix_remote_keys_get();

    ks->fetch_pool = ngx_create_pool(4096, rk->log);
    if (ks->fetch_pool == NULL) {
        ngx_http_matrix_key_fetch_done(ks, "out of memory");
        return;
    }

    if (!ks->db_tried && ngx_http_matrix_pg_of_cycle() != NULL) {
        ngx_http_matrix_pg_query_t  *q;

        /* the server's own, and those of the notaries trusted now */

        static ngx_http_matrix_pg_stmt_t  load =
            ngx_http_matrix_pg_stmt("SELECT key_json FROM server_key_json "
                                    "WHERE server_name = $1 "
                                    "AND (from_server = $1 "
                                    "OR from_server = ANY ($2::text[])) "
                                    "ORDER BY valid_until_ts DESC LIMIT 8",
                                    2);

        ks->db_tried = 1;

        q = ngx_http_matrix_pg_query_create(ngx_http_matrix_pg_of_cycle(),
                                            ks->fetch_pool, rk->log);
        if (q) {
            ngx_str_t  name = { ks->name_len, ks->name };

            q->stmt = &load;
            q->nparams = 2;
            q->handler = ngx_http_matrix_key_db_loaded;
            q->data = ks;

            if (ngx_http_matrix_pg_param(q, 0, &name) == NGX_OK
                && ngx_http_matrix_pg_param(q, 1,
                       ngx_http_matrix_key_notaries_names(
                           (ngx_cycle_t *) ngx_cycle))
                   == NGX_OK
                && ngx_http_matrix_pg_run(q) == NGX_OK)
            {
                return;
            }
        }
    }

    ngx_http_matrix_key_network(ks);
}


/* what the database had: enough for every waiter, or the network asked */

static void
ngx_http_matrix_key_db_loaded(ngx_http_matrix_pg_query_t *q)
{
    int                            i;
    ngx_uint_t                     taken;
    ngx_http_matrix_key_server_t  *ks;
    u_char                         why[200];

    ks = q->data;
    taken = 0;

    for (i = 0; q->status == NGX_HTTP_MATRIX_PG_OK
                && i < PQntuples(q->result); i++)
    {
        if (ngx_http_matrix_key_take_doc(ks,
                                         (u_char *) PQgetvalue(q->result, i, 0),
                                         PQgetlength(q->result, i, 0), why)
            == NGX_OK)
        {
            taken++;
        }
    }

    if (taken && ngx_http_matrix_key_satisfied(ks)) {
        ngx_log_debug2(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                       "matrix federation: keys of \"%*s\" from the database",
                       ks->name_len, ks->name);

        ngx_http_matrix_key_wake(ks, NULL);
        return;
    }

    ngx_http_matrix_key_network(ks);
}


static void
ngx_http_matrix_key_network(ngx_http_matrix_key_server_t *ks)
{
    ngx_http_matrix_dest_t         *dest;
    ngx_http_matrix_remote_keys_t  *rk;

    rk = ngx_http_matrix_remote_keys_get();

    dest = ngx_http_matrix_dest_create((ngx_cycle_t *) ngx_cycle,
                                       ks->fetch_pool, rk->log);
    if (dest == NULL) {
        ngx_http_matrix_key_fetch_done(ks, "out of memory");
        return;
    }

    dest->server_name.data = ks->name;
    dest->server_name.len = ks->name_len;
    dest->handler = ngx_http_matrix_key_destination_done;
    dest->data = ks;

    if (ngx_http_matrix_dest_resolve(dest) != NGX_OK) {
        ngx_http_matrix_key_fetch_done(ks, "cannot look the server up");
    }
}


static void
ngx_http_matrix_key_destination_done(ngx_http_matrix_dest_t *dest)
{
    ngx_http_matrix_key_server_t  *ks;
    ngx_http_matrix_http_req_t    *hr;

    ks = dest->data;

    if (dest->status != NGX_OK) {
        u_char  buf[200];

        *ngx_snprintf(buf, sizeof(buf) - 1, "%V", &dest->error) = '\0';
        ngx_http_matrix_key_fetch_done(ks, (char *) buf);
        return;
    }

    hr = ngx_http_matrix_http_create((ngx_cycle_t *) ngx_cycle,
                                     ks->fetch_pool, dest->log);
    if (hr == NULL) {
        ngx_http_matrix_key_fetch_done(ks, "out of memory");
        return;
    }

    hr->host = dest->host;
    hr->port = dest->port;
    hr->host_header = dest->host_header;
    hr->tls_name = dest->tls_name;
    ngx_str_set(&hr->uri, "/_matrix/key/v2/server");
    hr->max_response = NGX_HTTP_MATRIX_KEYS_DOC_MAX;
    hr->handler = ngx_http_matrix_key_fetched;
    hr->data = ks;

    if (ngx_http_matrix_http_send(hr) != NGX_OK) {
        ngx_http_matrix_key_fetch_done(ks, "cannot send the request");
    }
}


static void
ngx_http_matrix_key_fetched(ngx_http_matrix_http_req_t *hr)
{
    ngx_http_matrix_key_server_t  *ks;
    u_char                         buf[200];

    ks = hr->data;

    if (hr->status != 200) {
        if (hr->status) {
            *ngx_snprintf(buf, sizeof(buf) - 1, "its key server answered %ui",
                          hr->status) = '\0';
        } else {
            *ngx_snprintf(buf, sizeof(buf) - 1, "%V", &hr->error) = '\0';
        }

        ngx_http_matrix_key_fetch_done(ks, (char *) buf);
        return;
    }

    if (ngx_http_matrix_key_take_doc(ks, hr->response.data, hr->response.len,
                                     buf)
        != NGX_OK)
    {
        ngx_http_matrix_key_fetch_done(ks, (char *) buf);
        return;
    }

    ngx_http_matrix_key_db_store(ks);

    ngx_http_matrix_key_fetch_done(ks, NULL);
}


/* a document, checked, its keys merged, itself kept for the notary */

static ngx_int_t
ngx_http_matrix_key_take_doc(ngx_http_matrix_key_server_t *ks, u_char *text,
    size_t len, u_char *why)
{
    json_t        *doc;
    u_char        *copy;
    mx_err_t       err;
    mx_key_doc_t   kd;
    u_char         name[256];

    doc = mx_json_parse((char *) text, len, 0, &err);
    if (doc == NULL) {
        *ngx_snprintf(why, 199, "its key document is not JSON: %s",
                      err.msg) = '\0';
        return NGX_ERROR;
    }

    *ngx_cpymem(name, ks->name, ks->name_len) = '\0';

    if (mx_key_doc_check(doc, (char *) name, &kd, &err) != MX_OK) {
        json_decref(doc);
        *ngx_snprintf(why, 199, "its key document was refused: %s",
                      err.msg) = '\0';
        return NGX_ERROR;
    }

    json_decref(doc);

    ngx_http_matrix_key_merge(ks, &kd);

    /* never one valid for less */

    if (ks->doc == NULL || kd.valid_until_ts > ks->doc_valid_until) {
        copy = ngx_alloc(len, ngx_cycle->log);
        if (copy) {
            ngx_memcpy(copy, text, len);

            if (ks->doc) {
                ngx_free(ks->doc);
            }

            ks->doc = copy;
            ks->doc_len = len;
            ks->doc_valid_until = kd.valid_until_ts;
        }
    }

    return NGX_OK;
}


static ngx_uint_t
ngx_http_matrix_key_satisfied(ngx_http_matrix_key_server_t *ks)
{
    int64_t                        now;
    ngx_queue_t                   *q;
    ngx_http_matrix_key_lookup_t  *kl;

    now = ngx_http_matrix_now_ms();

    for (q = ngx_queue_head(&ks->waiters);
         q != ngx_queue_sentinel(&ks->waiters);
         q = ngx_queue_next(q))
    {
        kl = ngx_queue_data(q, ngx_http_matrix_key_lookup_t, queue);

        if (kl->want_doc) {
            if (ks->doc == NULL || ks->doc_valid_until < kl->min_valid_ts
                || ks->doc_valid_until <= now)
            {
                return 0;
            }

        } else if (ngx_http_matrix_key_find(ks, kl) != NGX_OK) {
            return 0;
        }
    }

    return 1;
}


/*
 * Kept for the next start; a later document never replaces one valid
 * for longer.  On a pool of its own: it outlives the fetch.
 */

static void
ngx_http_matrix_key_db_store(ngx_http_matrix_key_server_t *ks)
{
    ngx_str_t  name, doc;

    if (ks->doc == NULL) {
        return;
    }

    name.data = ks->name;
    name.len = ks->name_len;
    doc.data = ks->doc;
    doc.len = ks->doc_len;

    ngx_http_matrix_key_db_keep(&name, &name, &doc, ks->doc_valid_until);
}


/* from: the server itself, or the notary that relayed the document */

static void
ngx_http_matrix_key_db_keep(ngx_str_t *server, ngx_str_t *from,
    ngx_str_t *doc, int64_t valid_until)
{
    ngx_str_t                    v;
    ngx_pool_t                  *pool;
    ngx_http_matrix_pg_t        *pg;
    ngx_http_matrix_pg_query_t  *q;
    u_char                       until[NGX_INT64_LEN + 1];
    u_char                       now[NGX_INT64_LEN + 1];

    static ngx_http_matrix_pg_stmt_t  store =
        ngx_http_matrix_pg_stmt(
            "INSERT INTO server_key_json AS k (server_name, from_server, "
            "key_json, valid_until_ts, fetched_ts) "
            "VALUES ($1, $2, $3, $4, $5) "
            "ON CONFLICT (server_name, from_server) DO UPDATE SET "
            "key_json = EXCLUDED.key_json, "
            "valid_until_ts = EXCLUDED.valid_until_ts, "
            "fetched_ts = EXCLUDED.fetched_ts "
            "WHERE k.valid_until_ts <= EXCLUDED.valid_until_ts", 5);

    pg = ngx_http_matrix_pg_of_cycle();

    if (pg == NULL) {
        return;
    }

    pool = ngx_create_pool(1024 + doc->len, ngx_cycle->log);
    if (pool == NULL) {
        return;
    }

    q = ngx_http_matrix_pg_query_create(pg, pool, ngx_cycle->log);
    if (q == NULL) {
        ngx_destroy_pool(pool);
        return;
    }

    *ngx_sprintf(until, "%L", valid_until) = '\0';
    *ngx_sprintf(now, "%L", ngx_http_matrix_now_ms()) = '\0';

    q->stmt = &store;
    q->nparams = 5;
    q->handler = ngx_http_matrix_key_db_stored;
    q->data = pool;

    (void) ngx_http_matrix_pg_param(q, 0, server);
    (void) ngx_http_matrix_pg_param(q, 1, from);
    (void) ngx_http_matrix_pg_param(q, 2, doc);

    v.data = until;
    v.len = ngx_strlen(until);
    (void) ngx_http_matrix_pg_param(q, 3, &v);

    v.data = now;
    v.len = ngx_strlen(now);
    (void) ngx_http_matrix_pg_param(q, 4, &v);

    if (ngx_http_matrix_pg_run(q) != NGX_OK) {
        ngx_destroy_pool(pool);
    }
}


static void
ngx_http_matrix_key_db_stored(ngx_http_matrix_pg_query_t *q)
{
    if (q->status != NGX_HTTP_MATRIX_PG_OK) {
        ngx_log_error(NGX_LOG_WARN, q->log, 0,
                      "matrix federation: a key document was not kept in "
                      "the database: %s%s%V",
                      ngx_http_matrix_pg_status_text(q->status),
                      q->error.len ? ": " : "", &q->error);
    }

    ngx_destroy_pool(q->data);
}


/* never shortened: a key is only replaced by one valid for longer */

static void
ngx_http_matrix_key_merge(ngx_http_matrix_key_server_t *ks,
    mx_key_doc_t *doc)
{
    ngx_uint_t        i, j;
    mx_remote_key_t  *k, *have;

    for (i = 0; i < doc->nkeys; i++) {
        k = &doc->keys[i];
        have = NULL;

        for (j = 0; j < ks->nkeys; j++) {
            if (ngx_strcmp(ks->keys[j].key_id, k->key_id) == 0) {
                have = &ks->keys[j];
                break;
            }
        }

        if (have == NULL) {
            if (ks->nkeys == NGX_HTTP_MATRIX_KEYS_MAX_PER) {
                continue;
            }

            ks->keys[ks->nkeys++] = *k;
            continue;
        }

        if (ngx_memcmp(have->public_key, k->public_key, 32) != 0) {

            /*
             * The same ID for another key: the old one stays believed
             * while it is valid; once it is not, the server may have been
             * set up anew (some reuse a fixed key ID), and the new,
             * self-signed key takes its place.
             */

            if (have->expired_ts == 0
                && have->valid_until_ts < ngx_http_matrix_now_ms()
                && k->expired_ts == 0)
            {
                *have = *k;
            }

            continue;
        }

        if (k->expired_ts == 0 && k->valid_until_ts > have->valid_until_ts
            && have->expired_ts == 0)
        {
            have->valid_until_ts = k->valid_until_ts;
        }

        if (k->expired_ts && have->expired_ts == 0) {
            /* retired since: valid for what was signed before */
            have->expired_ts = k->expired_ts;
        }
    }
}


static void
ngx_http_matrix_key_fetch_done(ngx_http_matrix_key_server_t *ks,
    const char *failure)
{
    if (ngx_http_matrix_key_ask_notaries(ks, failure) == NGX_OK) {
        return;
    }

    if (failure) {
        ngx_cpystrn(ks->failure, (u_char *) failure, sizeof(ks->failure));
        ks->failed_until = ngx_http_matrix_now_ms()
                           + NGX_HTTP_MATRIX_KEYS_RETRY;

        ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                      "matrix federation: keys of \"%*s\": %s",
                      ks->name_len, ks->name, failure);

    } else {
        ks->failed_until = 0;
        ks->fetched = ngx_http_matrix_now_ms();
    }

    ngx_http_matrix_key_wake(ks, failure);
}


/*
 * The server failed, or did not have what is waited for: the trusted
 * notaries, once per fetch.  Their outcome comes back to
 * ngx_http_matrix_key_fetch_done().
 */

static ngx_int_t
ngx_http_matrix_key_ask_notaries(ngx_http_matrix_key_server_t *ks,
    const char *failure)
{
    ngx_http_matrix_notary_ask_t  *na;

    if (ks->notaries_asked) {
        ks->notaries_asked = 0;
        return NGX_DECLINED;
    }

    if (ks->fetch_pool == NULL
        || (failure == NULL && ngx_http_matrix_key_satisfied(ks)))
    {
        return NGX_DECLINED;
    }

    na = ngx_http_matrix_key_notaries_create(ks->fetch_pool, ngx_cycle->log);
    if (na == NULL) {
        return NGX_DECLINED;
    }

    na->server_name.data = ks->name;
    na->server_name.len = ks->name_len;
    na->doc_handler = ngx_http_matrix_key_notary_doc;
    na->handler = ngx_http_matrix_key_notaries_done;
    na->data = ks;

    if (failure) {
        na->why.len = ngx_strlen(failure);
        na->why.data = ngx_pnalloc(ks->fetch_pool, na->why.len);
        if (na->why.data == NULL) {
            return NGX_DECLINED;
        }

        ngx_memcpy(na->why.data, failure, na->why.len);
    }

    if (ngx_http_matrix_key_notaries_ask(na) != NGX_OK) {
        return NGX_DECLINED;
    }

    ks->notaries_asked = 1;

    return NGX_OK;
}


/* a document the notary vouched for: enough when every waiter is served */

static ngx_int_t
ngx_http_matrix_key_notary_doc(ngx_http_matrix_notary_ask_t *na)
{
    ngx_str_t                      name;
    ngx_http_matrix_key_server_t  *ks;
    u_char                         why[200];

    ks = na->data;

    if (ngx_http_matrix_key_take_doc(ks, na->doc.data, na->doc.len, why)
        != NGX_OK)
    {
        ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                      "matrix federation: keys of \"%*s\" from trusted "
                      "notary \"%V\": %s", ks->name_len, ks->name,
                      &na->notary, why);
        return NGX_DECLINED;
    }

    name.data = ks->name;
    name.len = ks->name_len;

    ngx_http_matrix_key_db_keep(&name, &na->notary, &na->doc,
                                na->valid_until_ts);

    return ngx_http_matrix_key_satisfied(ks) ? NGX_OK : NGX_DECLINED;
}


/* a document believed is no failure, even without the key wanted */

static void
ngx_http_matrix_key_notaries_done(ngx_http_matrix_notary_ask_t *na)
{
    ngx_http_matrix_key_server_t  *ks;
    u_char                         failure[200];

    ks = na->data;

    if (na->status == NGX_OK || na->believed || na->why.len == 0) {
        ngx_http_matrix_key_fetch_done(ks, NULL);
        return;
    }

    *ngx_snprintf(failure, sizeof(failure) - 1, "%V", &na->error) = '\0';

    ngx_http_matrix_key_fetch_done(ks, (char *) failure);
}


static void
ngx_http_matrix_key_wake(ngx_http_matrix_key_server_t *ks,
    const char *failure)
{
    ngx_queue_t                   *q;
    ngx_pool_t                    *pool;
    ngx_http_matrix_key_lookup_t  *kl;

    while (!ngx_queue_empty(&ks->waiters)) {
        q = ngx_queue_head(&ks->waiters);
        kl = ngx_queue_data(q, ngx_http_matrix_key_lookup_t, queue);

        ngx_queue_remove(q);
        ngx_queue_init(q);
        kl->waiting = 0;
        kl->server = NULL;

        if (kl->want_doc) {
            if (ks->doc) {
                (void) ngx_http_matrix_key_doc_copy(ks, kl);

            } else {
                ngx_http_matrix_key_reply(kl, NGX_ERROR, failure
                                                         ? failure
                                                         : "no document");
            }

            continue;
        }

        if (ngx_http_matrix_key_find(ks, kl) == NGX_OK) {
            ngx_http_matrix_key_reply(kl, NGX_OK, NULL);

        } else if (failure) {
            ngx_http_matrix_key_reply(kl, NGX_ERROR, failure);

        } else {
            ngx_http_matrix_key_reply(kl, NGX_DECLINED,
                                      "no such key, or not valid then");
        }
    }

    /* last: the fetch's objects live in it, and we may be in their call */

    pool = ks->fetch_pool;
    ks->fetch_pool = NULL;

    if (pool) {
        ngx_destroy_pool(pool);
    }
}


static void
ngx_http_matrix_key_reply(ngx_http_matrix_key_lookup_t *kl, ngx_int_t rc,
    const char *why)
{
    kl->rc = rc;
    kl->error.len = 0;

    if (why) {
        kl->error.data = kl->errbuf;
        kl->error.len = ngx_cpystrn(kl->errbuf, (u_char *) why,
                                    sizeof(kl->errbuf))
                        - kl->errbuf;
    }

    if (!kl->reply.posted) {
        ngx_post_event(&kl->reply, &ngx_posted_events);
    }
}


static void
ngx_http_matrix_key_reply_handler(ngx_event_t *ev)
{
    ngx_http_matrix_key_lookup_t  *kl;

    kl = ev->data;

    if (!kl->abandoned && kl->handler) {
        kl->handler(kl);
    }
}


static void
ngx_http_matrix_key_lookup_cleanup(void *data)
{
    ngx_http_matrix_key_lookup_t  *kl = data;

    kl->abandoned = 1;

    if (kl->waiting) {
        ngx_queue_remove(&kl->queue);
        kl->waiting = 0;
    }

    if (kl->reply.posted) {
        ngx_delete_posted_event(&kl->reply);
    }
}
