/*
 * Other servers' keys, shared by the workers.
 *
 * One entry per server in the federation zone (ngx_http_matrix_fed_
 * cache.c): the keys believed so far (merged across fetches: a key is
 * never replaced by a copy valid for less time, so a spurious answer
 * cannot shorten what a valid one said), when they were fetched, after a
 * failure until when not to try again, and the last signed document for
 * the notary.  A lookup takes the zone's mutex, copies out what it needs
 * and lets go; nothing is sent or called back with the mutex held.
 *
 * What cannot be shared stays in the worker: a server being fetched or
 * waited for has an ngx_http_matrix_key_server_t there, with the lookups
 * waiting (the first one starts the fetch, every one hears its outcome)
 * and the fetch's pool.  Across workers, the entry says that one of them
 * fetches (fetching_pid, until fetching_until): another worker's lookups
 * then poll the entry until that fetch ends (its generation changes) or
 * its time runs out, when they fetch themselves; they never wait longer.
 *
 * Documents are kept in Postgres too (server_key_json), when the module
 * has a database: a server not in the zone is looked for there before
 * the network is asked, so a restart does not refetch the world.
 *
 * When the server itself fails or does not have the key wanted, the
 * trusted notaries are asked (ngx_http_matrix_key_notaries.c), as part of
 * the same fetch; what they relay is the server's own document, kept
 * under the notary's name.
 */


#include "ngx_http_matrix_module.h"
#include "ngx_http_matrix_remote_keys.h"
#include "ngx_http_matrix_http.h"
#include "ngx_http_matrix_destination.h"
#include "ngx_http_matrix_fed_cache.h"
#include "ngx_http_matrix_pg.h"
#include "ngx_http_matrix_key_notaries.h"

#include <mx_key_doc.h>


#define NGX_HTTP_MATRIX_KEYS_MAX_FETCHING  1024      /* per worker */
#define NGX_HTTP_MATRIX_KEYS_MAX_PER       32
#define NGX_HTTP_MATRIX_KEYS_RETRY         60000     /* after a failure */
#define NGX_HTTP_MATRIX_KEYS_REFETCH       30000     /* for an unknown key */
#define NGX_HTTP_MATRIX_KEYS_DOC_REFETCH   2000      /* for a notary query */
#define NGX_HTTP_MATRIX_KEYS_DOC_MAX       65536
#define NGX_HTTP_MATRIX_KEYS_LEASE         60000     /* another worker's
                                                        fetch, at most */
#define NGX_HTTP_MATRIX_KEYS_POLL          50


/* in the zone; its parts: the keys (nalloc of them) and the document */

typedef struct {
    ngx_http_matrix_fed_node_t     node;
    ngx_uint_t                     nkeys;
    ngx_uint_t                     nalloc;

    int64_t                        failed_until;
    int64_t                        fetched;

    int64_t                        fetching_until;
    ngx_pid_t                      fetching_pid;
    ngx_uint_t                     generation;     /* fetches ended */

    size_t                         doc_len;        /* as received, for */
    int64_t                        doc_valid_until; /* the notary */

    unsigned                       db_tried:1;
    u_char                         failure[200];
} ngx_http_matrix_key_entry_t;

#define ngx_http_matrix_key_entry_keys(e)                                     \
    ((mx_remote_key_t *) (e)->node.parts[0])
#define ngx_http_matrix_key_entry_doc(e)  ((u_char *) (e)->node.parts[1])


/* in the worker, while its server is fetched or waited for */

typedef struct {
    ngx_queue_t                    queue;
    u_char                         name[256];
    size_t                         name_len;

    ngx_queue_t                    waiters;
    ngx_pool_t                    *fetch_pool;     /* this worker fetches */
    ngx_event_t                    poll;           /* another one does */
    ngx_uint_t                     generation;     /* when polling began */

    unsigned                       notaries_asked:1; /* in this fetch */
} ngx_http_matrix_key_server_t;


typedef struct {
    ngx_queue_t                    servers;
    ngx_uint_t                     nservers;
    ngx_log_t                     *log;
} ngx_http_matrix_remote_keys_t;


static ngx_http_matrix_remote_keys_t *ngx_http_matrix_remote_keys_get(void);
static ngx_http_matrix_key_server_t *ngx_http_matrix_key_server(
    ngx_http_matrix_remote_keys_t *rk, ngx_str_t *name, ngx_uint_t create);
static void ngx_http_matrix_key_server_free(ngx_http_matrix_key_server_t *ks);
static ngx_http_matrix_key_entry_t *ngx_http_matrix_key_entry(
    ngx_http_matrix_fed_cache_t *fc, u_char *name, size_t len,
    ngx_uint_t create);
static ngx_int_t ngx_http_matrix_key_answer(ngx_http_matrix_key_entry_t *e,
    ngx_http_matrix_key_lookup_t *kl, ngx_uint_t busy);
static ngx_int_t ngx_http_matrix_key_find(ngx_http_matrix_key_entry_t *e,
    ngx_http_matrix_key_lookup_t *kl);
static ngx_uint_t ngx_http_matrix_key_doc_good(ngx_http_matrix_key_entry_t *e,
    ngx_http_matrix_key_lookup_t *kl, int64_t now);
static ngx_int_t ngx_http_matrix_key_doc_copy(ngx_http_matrix_key_entry_t *e,
    ngx_http_matrix_key_lookup_t *kl);
static void ngx_http_matrix_key_wait(ngx_http_matrix_key_server_t *ks,
    ngx_http_matrix_key_lookup_t *kl);
static void ngx_http_matrix_key_fetch(ngx_http_matrix_key_server_t *ks);
static void ngx_http_matrix_key_poll(ngx_event_t *ev);
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
static ngx_uint_t ngx_http_matrix_key_satisfied_locked(
    ngx_http_matrix_key_server_t *ks, ngx_http_matrix_key_entry_t *e);
static void ngx_http_matrix_key_finish(ngx_http_matrix_key_server_t *ks,
    const char *failure, ngx_uint_t fetched);
static void ngx_http_matrix_key_wake(ngx_http_matrix_key_server_t *ks,
    const char *failure);
static void ngx_http_matrix_key_destination_done(ngx_http_matrix_dest_t *dest);
static void ngx_http_matrix_key_fetched(ngx_http_matrix_http_req_t *hr);
static void ngx_http_matrix_key_merge(ngx_http_matrix_fed_cache_t *fc,
    ngx_http_matrix_key_entry_t *e, mx_key_doc_t *doc);
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


/* a fetch this worker leaves unfinished is not waited for by the others */

void
ngx_http_matrix_remote_keys_exit_process(ngx_cycle_t *cycle)
{
    ngx_queue_t                    *q;
    ngx_http_matrix_main_conf_t    *mmcf;
    ngx_http_matrix_fed_cache_t    *fc;
    ngx_http_matrix_key_entry_t    *e;
    ngx_http_matrix_key_server_t   *ks;
    ngx_http_matrix_remote_keys_t  *rk;

    mmcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_matrix_module);
    if (mmcf == NULL || mmcf->remote_keys == NULL) {
        return;
    }

    rk = mmcf->remote_keys;
    fc = ngx_http_matrix_fed_cache();

    while (!ngx_queue_empty(&rk->servers)) {
        q = ngx_queue_head(&rk->servers);
        ks = ngx_queue_data(q, ngx_http_matrix_key_server_t, queue);

        if (ks->fetch_pool) {
            if (fc) {
                ngx_http_matrix_fed_lock(fc);

                e = ngx_http_matrix_key_entry(fc, ks->name, ks->name_len, 0);
                if (e && e->fetching_pid == ngx_pid) {
                    e->fetching_until = 0;
                }

                ngx_http_matrix_fed_unlock(fc);
            }

            ngx_destroy_pool(ks->fetch_pool);
            ks->fetch_pool = NULL;
        }

        ngx_http_matrix_key_server_free(ks);
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
    ngx_int_t                       rc;
    ngx_http_matrix_fed_cache_t    *fc;
    ngx_http_matrix_key_entry_t    *e;
    ngx_http_matrix_key_server_t   *ks;
    ngx_http_matrix_remote_keys_t  *rk;

    rk = ngx_http_matrix_remote_keys_get();
    fc = ngx_http_matrix_fed_cache();

    if (rk == NULL || fc == NULL || kl->server_name.len == 0
        || kl->server_name.len >= sizeof(ks->name))
    {
        return NGX_ERROR;
    }

    ks = ngx_http_matrix_key_server(rk, &kl->server_name, 0);

    ngx_http_matrix_fed_lock(fc);

    e = ngx_http_matrix_key_entry(fc, kl->server_name.data,
                                  kl->server_name.len, 0);
    rc = ngx_http_matrix_key_answer(e, kl, ks != NULL);

    ngx_http_matrix_fed_unlock(fc);

    if (rc == NGX_OK) {
        return NGX_OK;
    }

    if (ks == NULL) {
        ks = ngx_http_matrix_key_server(rk, &kl->server_name, 1);

        if (ks == NULL) {
            ngx_http_matrix_key_reply(kl, NGX_ERROR,
                                      "too many servers being fetched");
            return NGX_OK;
        }
    }

    ngx_http_matrix_key_wait(ks, kl);

    return NGX_OK;
}


/*
 * What the zone says, with its mutex held: NGX_OK, the lookup is answered
 * (from a posted event), or NGX_AGAIN, a fetch is needed.  busy: one is
 * under way, whose outcome is worth waiting for rather than the last one.
 */

static ngx_int_t
ngx_http_matrix_key_answer(ngx_http_matrix_key_entry_t *e,
    ngx_http_matrix_key_lookup_t *kl, ngx_uint_t busy)
{
    int64_t  now;

    if (e == NULL) {
        return NGX_AGAIN;
    }

    now = ngx_http_matrix_now_ms();

    if (e->fetching_until > now) {
        busy = 1;
    }

    if (kl->want_doc) {

        /*
         * The notary's question: the document itself, fetched again when
         * the one known is valid for less than asked, and when that fails,
         * the one known all the same (with its own valid_until_ts: the
         * asker judges).  A notary's askers may not make us hammer a
         * server either.
         */

        if (ngx_http_matrix_key_doc_good(e, kl, now)) {
            return ngx_http_matrix_key_doc_copy(e, kl);
        }

        if (busy
            || (now >= e->failed_until
                && !(e->fetched
                     && now < e->fetched + NGX_HTTP_MATRIX_KEYS_DOC_REFETCH)))
        {
            return NGX_AGAIN;
        }

        if (ngx_http_matrix_key_entry_doc(e)) {
            return ngx_http_matrix_key_doc_copy(e, kl);
        }

        ngx_http_matrix_key_reply(kl, NGX_ERROR, e->failure[0]
                                                 ? (char *) e->failure
                                                 : "no key document");
        return NGX_OK;
    }

    if (ngx_http_matrix_key_find(e, kl) == NGX_OK) {
        ngx_http_matrix_key_reply(kl, NGX_OK, NULL);
        return NGX_OK;
    }

    if (busy) {
        return NGX_AGAIN;
    }

    if (now < e->failed_until) {
        ngx_http_matrix_key_reply(kl, NGX_ERROR, (char *) e->failure);
        return NGX_OK;
    }

    /*
     * A key asked for that the server did not publish a moment ago is not
     * fetched again for every request that names it: anyone could make
     * us hammer a server so.
     */

    if (e->fetched && now < e->fetched + NGX_HTTP_MATRIX_KEYS_REFETCH) {
        ngx_http_matrix_key_reply(kl, NGX_DECLINED,
                                  "no such key, or not valid then");
        return NGX_OK;
    }

    return NGX_AGAIN;
}


static ngx_uint_t
ngx_http_matrix_key_doc_good(ngx_http_matrix_key_entry_t *e,
    ngx_http_matrix_key_lookup_t *kl, int64_t now)
{
    return e != NULL && ngx_http_matrix_key_entry_doc(e) != NULL
           && e->doc_valid_until >= kl->min_valid_ts
           && e->doc_valid_until > now;
}


static ngx_int_t
ngx_http_matrix_key_doc_copy(ngx_http_matrix_key_entry_t *e,
    ngx_http_matrix_key_lookup_t *kl)
{
    kl->doc.data = ngx_pnalloc(kl->pool, e->doc_len);
    if (kl->doc.data == NULL) {
        ngx_http_matrix_key_reply(kl, NGX_ERROR, "out of memory");
        return NGX_OK;
    }

    ngx_memcpy(kl->doc.data, ngx_http_matrix_key_entry_doc(e), e->doc_len);
    kl->doc.len = e->doc_len;

    ngx_http_matrix_key_reply(kl, NGX_OK, NULL);

    return NGX_OK;
}


/* the worker's state of a server being fetched or waited for */

static ngx_http_matrix_key_server_t *
ngx_http_matrix_key_server(ngx_http_matrix_remote_keys_t *rk,
    ngx_str_t *name, ngx_uint_t create)
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
            return ks;
        }
    }

    /* bounded: a flood of names waits no more than this many fetches */

    if (!create || rk->nservers >= NGX_HTTP_MATRIX_KEYS_MAX_FETCHING) {
        return NULL;
    }

    ks = ngx_calloc(sizeof(ngx_http_matrix_key_server_t), rk->log);
    if (ks == NULL) {
        return NULL;
    }

    ngx_memcpy(ks->name, name->data, name->len);
    ks->name_len = name->len;
    ngx_queue_init(&ks->waiters);

    ks->poll.handler = ngx_http_matrix_key_poll;
    ks->poll.data = ks;
    ks->poll.log = rk->log;

    ngx_queue_insert_head(&rk->servers, &ks->queue);
    rk->nservers++;

    return ks;
}


static void
ngx_http_matrix_key_server_free(ngx_http_matrix_key_server_t *ks)
{
    ngx_http_matrix_remote_keys_t  *rk;

    rk = ngx_http_matrix_remote_keys_get();

    if (ks->poll.timer_set) {
        ngx_del_timer(&ks->poll);
    }

    ngx_queue_remove(&ks->queue);
    rk->nservers--;

    ngx_free(ks);
}


/* with the zone's mutex held */

static ngx_http_matrix_key_entry_t *
ngx_http_matrix_key_entry(ngx_http_matrix_fed_cache_t *fc, u_char *name,
    size_t len, ngx_uint_t create)
{
    ngx_str_t                    key;
    ngx_http_matrix_fed_node_t  *node;

    key.data = name;
    key.len = len;

    node = ngx_http_matrix_fed_find(fc, NGX_HTTP_MATRIX_FED_KEYS, &key);

    if (node == NULL && create) {
        node = ngx_http_matrix_fed_insert(fc, NGX_HTTP_MATRIX_FED_KEYS, &key,
                                          sizeof(ngx_http_matrix_key_entry_t));
    }

    return (ngx_http_matrix_key_entry_t *) node;
}


/*
 * A current key must be valid at the time asked about (valid_until_ts);
 * an old key only for what was signed before it was retired.
 */

static ngx_int_t
ngx_http_matrix_key_find(ngx_http_matrix_key_entry_t *e,
    ngx_http_matrix_key_lookup_t *kl)
{
    int64_t           at;
    ngx_uint_t        i;
    mx_remote_key_t  *k;

    at = kl->at_ms ? kl->at_ms : ngx_http_matrix_now_ms();

    for (i = 0; i < e->nkeys; i++) {
        k = &ngx_http_matrix_key_entry_keys(e)[i];

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

    if (ks->fetch_pool == NULL && !ks->poll.timer_set) {
        ngx_http_matrix_key_fetch(ks);
    }
}


/*
 * This worker fetches, unless another one does: then its outcome is
 * polled for.  The fetch is marked in the zone for as long as it may
 * take; a worker that dies fetching holds nobody up for longer.
 */

static void
ngx_http_matrix_key_fetch(ngx_http_matrix_key_server_t *ks)
{
    int64_t                         now;
    ngx_uint_t                      db;
    ngx_http_matrix_fed_cache_t    *fc;
    ngx_http_matrix_key_entry_t    *e;
    ngx_http_matrix_remote_keys_t  *rk;

    rk = ngx_http_matrix_remote_keys_get();
    fc = ngx_http_matrix_fed_cache();

    now = ngx_http_matrix_now_ms();
    db = 1;

    ngx_http_matrix_fed_lock(fc);

    e = ngx_http_matrix_key_entry(fc, ks->name, ks->name_len, 1);

    /* another worker's fetch may have ended since the lookup looked */

    if (e && e->nkeys && ngx_http_matrix_key_satisfied_locked(ks, e)) {
        ngx_http_matrix_fed_unlock(fc);
        ngx_http_matrix_key_wake(ks, NULL);
        return;
    }

    if (e && e->fetching_until > now && e->fetching_pid != ngx_pid
        && (kill(e->fetching_pid, 0) == 0 || ngx_errno != NGX_ESRCH))
    {
        ks->generation = e->generation;
        ngx_http_matrix_fed_unlock(fc);

        ngx_log_debug2(NGX_LOG_DEBUG_HTTP, rk->log, 0,
                       "matrix federation: keys of \"%*s\" are being "
                       "fetched by another worker", ks->name_len, ks->name);

        ngx_add_timer(&ks->poll, NGX_HTTP_MATRIX_KEYS_POLL);
        return;
    }

    if (e) {
        e->fetching_until = now + NGX_HTTP_MATRIX_KEYS_LEASE;
        e->fetching_pid = ngx_pid;
        db = !e->db_tried;
        e->db_tried = 1;
    }

    ngx_http_matrix_fed_unlock(fc);

    ks->fetch_pool = ngx_create_pool(4096, rk->log);
    if (ks->fetch_pool == NULL) {
        ngx_http_matrix_key_fetch_done(ks, "out of memory");
        return;
    }

    if (db && ngx_http_matrix_pg_of_cycle() != NULL) {
        ngx_http_matrix_pg_query_t  *q;

        /* the server's own, and those of the notaries trusted now */

        static ngx_http_matrix_pg_stmt_t  load =
            ngx_http_matrix_pg_stmt("SELECT key_json FROM server_key_json "
                                    "WHERE server_name = $1 "
                                    "AND (from_server = $1 "
                                    "OR from_server = ANY ($2::text[])) "
                                    "ORDER BY valid_until_ts DESC LIMIT 8",
                                    2);

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


/*
 * Another worker's fetch: when it has ended (the entry's generation moved
 * on), its outcome is every waiter's, as if this worker had fetched; when
 * its time is up, or the entry went, this worker fetches.
 */

static void
ngx_http_matrix_key_poll(ngx_event_t *ev)
{
    int64_t                         now;
    ngx_pid_t                       pid;
    ngx_uint_t                      ended, busy;
    ngx_http_matrix_fed_cache_t    *fc;
    ngx_http_matrix_key_entry_t    *e;
    ngx_http_matrix_key_server_t   *ks;
    u_char                          failure[200];

    ks = ev->data;

    if (ngx_queue_empty(&ks->waiters)) {
        ngx_http_matrix_key_server_free(ks);
        return;
    }

    fc = ngx_http_matrix_fed_cache();
    now = ngx_http_matrix_now_ms();
    failure[0] = '\0';

    ngx_http_matrix_fed_lock(fc);

    e = ngx_http_matrix_key_entry(fc, ks->name, ks->name_len, 0);

    ended = (e && e->generation != ks->generation);
    busy = (e && e->fetching_until > now);
    pid = e ? e->fetching_pid : 0;

    if (ended && now < e->failed_until) {
        ngx_cpystrn(failure, e->failure, sizeof(failure));
    }

    ngx_http_matrix_fed_unlock(fc);

    if (ended) {
        ngx_http_matrix_key_wake(ks, failure[0] ? (char *) failure : NULL);
        return;
    }

    /* a worker killed while fetching is not waited for until its time */

    if (busy && (kill(pid, 0) == 0 || ngx_errno != NGX_ESRCH)) {
        ngx_add_timer(&ks->poll, NGX_HTTP_MATRIX_KEYS_POLL);
        return;
    }

    ngx_http_matrix_key_fetch(ks);
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

        ngx_http_matrix_key_finish(ks, NULL, 0);
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

    ngx_http_matrix_dest_target(dest, hr);
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
    json_t                       *doc;
    u_char                       *copy;
    mx_err_t                      err;
    mx_key_doc_t                  kd;
    ngx_http_matrix_fed_cache_t  *fc;
    ngx_http_matrix_key_entry_t  *e;
    u_char                        name[256];

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

    fc = ngx_http_matrix_fed_cache();
    if (fc == NULL) {
        *ngx_snprintf(why, 199, "no federation cache") = '\0';
        return NGX_ERROR;
    }

    ngx_http_matrix_fed_lock(fc);

    e = ngx_http_matrix_key_entry(fc, ks->name, ks->name_len, 1);
    if (e == NULL) {
        ngx_http_matrix_fed_unlock(fc);
        *ngx_snprintf(why, 199, "no room in the federation cache") = '\0';
        return NGX_ERROR;
    }

    ngx_http_matrix_key_merge(fc, e, &kd);

    /* never one valid for less */

    if (ngx_http_matrix_key_entry_doc(e) == NULL
        || kd.valid_until_ts > e->doc_valid_until)
    {
        copy = ngx_http_matrix_fed_alloc(fc, len, &e->node);
        if (copy) {
            ngx_memcpy(copy, text, len);

            if (ngx_http_matrix_key_entry_doc(e)) {
                ngx_http_matrix_fed_free(fc, ngx_http_matrix_key_entry_doc(e));
            }

            e->node.parts[1] = copy;
            e->doc_len = len;
            e->doc_valid_until = kd.valid_until_ts;
        }
    }

    e->node.cheap = (e->nkeys == 0);

    ngx_http_matrix_fed_unlock(fc);

    return NGX_OK;
}


static ngx_uint_t
ngx_http_matrix_key_satisfied(ngx_http_matrix_key_server_t *ks)
{
    ngx_uint_t                    ok;
    ngx_http_matrix_fed_cache_t  *fc;

    fc = ngx_http_matrix_fed_cache();

    ngx_http_matrix_fed_lock(fc);

    ok = ngx_http_matrix_key_satisfied_locked(ks,
             ngx_http_matrix_key_entry(fc, ks->name, ks->name_len, 0));

    ngx_http_matrix_fed_unlock(fc);

    return ok;
}


/* every waiter has its answer in the entry; the zone's mutex is held */

static ngx_uint_t
ngx_http_matrix_key_satisfied_locked(ngx_http_matrix_key_server_t *ks,
    ngx_http_matrix_key_entry_t *e)
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

        if (kl->want_doc ? !ngx_http_matrix_key_doc_good(e, kl, now)
                         : (e == NULL
                            || ngx_http_matrix_key_find(e, kl) != NGX_OK))
        {
            return 0;
        }
    }

    return 1;
}


/* the document the zone keeps for the server, under its own name */

static void
ngx_http_matrix_key_db_store(ngx_http_matrix_key_server_t *ks)
{
    int64_t                       until;
    ngx_str_t                     name, doc;
    ngx_http_matrix_fed_cache_t  *fc;
    ngx_http_matrix_key_entry_t  *e;

    if (ngx_http_matrix_pg_of_cycle() == NULL) {
        return;
    }

    /* copied out: the query is not made with the zone's mutex held */

    fc = ngx_http_matrix_fed_cache();
    doc.data = NULL;
    doc.len = 0;
    until = 0;

    ngx_http_matrix_fed_lock(fc);

    e = ngx_http_matrix_key_entry(fc, ks->name, ks->name_len, 0);

    if (e && ngx_http_matrix_key_entry_doc(e)) {
        doc.data = ngx_alloc(e->doc_len, ngx_cycle->log);

        if (doc.data) {
            ngx_memcpy(doc.data, ngx_http_matrix_key_entry_doc(e), e->doc_len);
            doc.len = e->doc_len;
            until = e->doc_valid_until;
        }
    }

    ngx_http_matrix_fed_unlock(fc);

    if (doc.data == NULL) {
        return;
    }

    name.data = ks->name;
    name.len = ks->name_len;

    ngx_http_matrix_key_db_keep(&name, &name, &doc, until);

    ngx_free(doc.data);
}


/*
 * Kept for the next start; a later document never replaces one valid
 * for longer.  On a pool of its own: it outlives the fetch.  from: the
 * server itself, or the notary that relayed the document.
 */

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


/*
 * Never shortened: a key is only replaced by one valid for longer.  The
 * entry's keys grow as needed, at most NGX_HTTP_MATRIX_KEYS_MAX_PER.
 */

static void
ngx_http_matrix_key_merge(ngx_http_matrix_fed_cache_t *fc,
    ngx_http_matrix_key_entry_t *e, mx_key_doc_t *doc)
{
    ngx_uint_t        i, j, n;
    mx_remote_key_t  *k, *have, *keys;

    for (i = 0; i < doc->nkeys; i++) {
        k = &doc->keys[i];
        have = NULL;
        keys = ngx_http_matrix_key_entry_keys(e);

        for (j = 0; j < e->nkeys; j++) {
            if (ngx_strcmp(keys[j].key_id, k->key_id) == 0) {
                have = &keys[j];
                break;
            }
        }

        if (have == NULL) {
            if (e->nkeys == NGX_HTTP_MATRIX_KEYS_MAX_PER) {
                continue;
            }

            if (e->nkeys == e->nalloc) {
                n = e->nalloc ? ngx_min(2 * e->nalloc,
                                        NGX_HTTP_MATRIX_KEYS_MAX_PER)
                              : 2;

                keys = ngx_http_matrix_fed_alloc(fc,
                                                 n * sizeof(mx_remote_key_t),
                                                 &e->node);
                if (keys == NULL) {
                    continue;
                }

                if (e->nkeys) {
                    ngx_memcpy(keys, ngx_http_matrix_key_entry_keys(e),
                               e->nkeys * sizeof(mx_remote_key_t));
                    ngx_http_matrix_fed_free(fc,
                                             ngx_http_matrix_key_entry_keys(e));
                }

                e->node.parts[0] = keys;
                e->nalloc = n;
            }

            keys[e->nkeys++] = *k;
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
        ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                      "matrix federation: keys of \"%*s\": %s",
                      ks->name_len, ks->name, failure);
    }

    ngx_http_matrix_key_finish(ks, failure, 1);
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
    ngx_http_matrix_fed_cache_t   *fc;
    ngx_http_matrix_key_entry_t   *e;
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

    /*
     * The notaries' questions are part of the fetch: the other workers
     * wait for them too, so the mark gets a lease of its own for them,
     * unless another worker has taken it over meanwhile.
     */

    fc = ngx_http_matrix_fed_cache();

    ngx_http_matrix_fed_lock(fc);

    e = ngx_http_matrix_key_entry(fc, ks->name, ks->name_len, 0);
    if (e && e->fetching_pid == ngx_pid) {
        e->fetching_until = ngx_http_matrix_now_ms()
                            + NGX_HTTP_MATRIX_KEYS_LEASE;
    }

    ngx_http_matrix_fed_unlock(fc);

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


/*
 * The fetch's end, in the zone: its outcome for every worker, and the
 * next generation, which the workers polling for it wait for.
 */

static void
ngx_http_matrix_key_finish(ngx_http_matrix_key_server_t *ks,
    const char *failure, ngx_uint_t fetched)
{
    ngx_http_matrix_fed_cache_t  *fc;
    ngx_http_matrix_key_entry_t  *e;

    fc = ngx_http_matrix_fed_cache();

    ngx_http_matrix_fed_lock(fc);

    e = ngx_http_matrix_key_entry(fc, ks->name, ks->name_len, 1);

    if (e) {
        if (failure) {
            ngx_cpystrn(e->failure, (u_char *) failure, sizeof(e->failure));
            e->failed_until = ngx_http_matrix_now_ms()
                              + NGX_HTTP_MATRIX_KEYS_RETRY;

        } else if (fetched) {
            e->failed_until = 0;
            e->fetched = ngx_http_matrix_now_ms();
        }

        if (e->fetching_pid == ngx_pid) {
            e->fetching_until = 0;
        }

        e->generation++;
        e->node.cheap = (e->nkeys == 0);
    }

    ngx_http_matrix_fed_unlock(fc);
}


/* every waiter hears the outcome; the worker's state of the server goes */

static void
ngx_http_matrix_key_wake(ngx_http_matrix_key_server_t *ks,
    const char *failure)
{
    ngx_queue_t                   *q;
    ngx_pool_t                    *pool;
    ngx_http_matrix_fed_cache_t   *fc;
    ngx_http_matrix_key_entry_t   *e;
    ngx_http_matrix_key_lookup_t  *kl;

    fc = ngx_http_matrix_fed_cache();

    ngx_http_matrix_fed_lock(fc);

    e = ngx_http_matrix_key_entry(fc, ks->name, ks->name_len, 0);

    while (!ngx_queue_empty(&ks->waiters)) {
        q = ngx_queue_head(&ks->waiters);
        kl = ngx_queue_data(q, ngx_http_matrix_key_lookup_t, queue);

        ngx_queue_remove(q);
        ngx_queue_init(q);
        kl->waiting = 0;
        kl->server = NULL;

        if (kl->want_doc) {
            if (e && ngx_http_matrix_key_entry_doc(e)) {
                (void) ngx_http_matrix_key_doc_copy(e, kl);

            } else {
                ngx_http_matrix_key_reply(kl, NGX_ERROR, failure
                                                         ? failure
                                                         : "no document");
            }

            continue;
        }

        if (e && ngx_http_matrix_key_find(e, kl) == NGX_OK) {
            ngx_http_matrix_key_reply(kl, NGX_OK, NULL);

        } else if (failure) {
            ngx_http_matrix_key_reply(kl, NGX_ERROR, failure);

        } else {
            ngx_http_matrix_key_reply(kl, NGX_DECLINED,
                                      "no such key, or not valid then");
        }
    }

    ngx_http_matrix_fed_unlock(fc);

    /* the fetch's objects live in the pool, and we may be in their call */

    pool = ks->fetch_pool;
    ks->fetch_pool = NULL;

    if (pool) {
        ngx_destroy_pool(pool);
    }

    ngx_http_matrix_key_server_free(ks);
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
