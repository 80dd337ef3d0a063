/*
 * The federation caches' shared memory zone.
 *
 * One slab pool; its data is an ngx_http_matrix_fed_sh_t: an rbtree per
 * cache and one LRU queue for all entries.  A reload with the same size
 * keeps the zone and what it holds (nginx maps it at the same address,
 * so the pointers inside stay good); another size starts it empty.  The
 * layout's version is in the zone's name: a module whose entries differ
 * gets a zone of its own instead of misreading the old one.
 *
 * Eviction: when the slab pool has no room, the least recently used entry
 * goes, and the allocation is tried again.  A flood of one-off names (a
 * failed key fetch, a missing well-known) makes cheap entries: among the
 * last NGX_HTTP_MATRIX_FED_SCAN of the queue a cheap one goes before a
 * useful one, so such a flood mostly evicts its own kind.
 */


#include "ngx_http_matrix_module.h"
#include "ngx_http_matrix_fed_cache.h"
#include "ngx_http_matrix_http.h"


#define NGX_HTTP_MATRIX_FED_ZONE     "matrix_federation_v1"
#define NGX_HTTP_MATRIX_FED_DEFAULT  (4 * 1024 * 1024)
#define NGX_HTTP_MATRIX_FED_MIN      (64 * 1024)
#define NGX_HTTP_MATRIX_FED_SCAN     8
#define NGX_HTTP_MATRIX_FED_TREES    2


typedef struct {
    ngx_rbtree_t                     tree[NGX_HTTP_MATRIX_FED_TREES];
    ngx_rbtree_node_t                sentinel[NGX_HTTP_MATRIX_FED_TREES];
    ngx_queue_t                      lru;          /* most recent first */
} ngx_http_matrix_fed_sh_t;


struct ngx_http_matrix_fed_cache_s {
    ngx_http_matrix_fed_sh_t        *sh;
    ngx_slab_pool_t                 *shpool;
};


static ngx_int_t ngx_http_matrix_fed_init_zone(ngx_shm_zone_t *shm_zone,
    void *data);
static ngx_int_t ngx_http_matrix_fed_evict(ngx_http_matrix_fed_cache_t *fc,
    ngx_http_matrix_fed_node_t *keep);


/* matrix_federation_cache SIZE; */

char *
ngx_http_matrix_fed_cache_directive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_matrix_main_conf_t *mmcf = conf;

    ssize_t     size;
    ngx_str_t  *value;

    if (mmcf->fed_cache_size != NGX_CONF_UNSET) {
        return "is duplicate";
    }

    value = cf->args->elts;

    size = ngx_parse_size(&value[1]);

    if (size == NGX_ERROR) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "%V: invalid size \"%V\"", &cmd->name, &value[1]);
        return NGX_CONF_ERROR;
    }

    if (size < NGX_HTTP_MATRIX_FED_MIN) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "%V: \"%V\" is too small, at least %uzk",
                           &cmd->name, &value[1],
                           (size_t) NGX_HTTP_MATRIX_FED_MIN / 1024);
        return NGX_CONF_ERROR;
    }

    mmcf->fed_cache_size = size;

    return NGX_CONF_OK;
}


/*
 * The zone exists where federation is: a "matrix" location (it checks
 * other servers' keys), a resolver for discovery, or the directive.
 */

char *
ngx_http_matrix_fed_cache_init_conf(ngx_conf_t *cf,
    ngx_http_matrix_main_conf_t *mmcf)
{
    ngx_str_t                     name;
    ngx_msec_t                    timeout;
    ngx_shm_zone_t               *shm_zone;
    ngx_http_matrix_fed_cache_t  *fc;

    if (mmcf->fed_cache_size == NGX_CONF_UNSET
        && !mmcf->federation
        && ngx_http_matrix_http_get_resolver(cf->cycle, &timeout) == NULL)
    {
        return NGX_CONF_OK;
    }

    if (mmcf->fed_cache_size == NGX_CONF_UNSET) {
        mmcf->fed_cache_size = NGX_HTTP_MATRIX_FED_DEFAULT;
    }

    fc = ngx_pcalloc(cf->pool, sizeof(ngx_http_matrix_fed_cache_t));
    if (fc == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_str_set(&name, NGX_HTTP_MATRIX_FED_ZONE);

    shm_zone = ngx_shared_memory_add(cf, &name, mmcf->fed_cache_size,
                                     &ngx_http_matrix_module);
    if (shm_zone == NULL) {
        return NGX_CONF_ERROR;
    }

    shm_zone->init = ngx_http_matrix_fed_init_zone;
    shm_zone->data = fc;

    mmcf->fed_zone = shm_zone;

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_matrix_fed_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_http_matrix_fed_cache_t *ofc = data;

    size_t                        len;
    ngx_uint_t                    i;
    ngx_http_matrix_fed_cache_t  *fc;

    fc = shm_zone->data;

    if (ofc) {
        /* a reload, the same size: what the old workers knew */
        fc->sh = ofc->sh;
        fc->shpool = ofc->shpool;
        return NGX_OK;
    }

    fc->shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    if (shm_zone->shm.exists) {
        fc->sh = fc->shpool->data;
        return NGX_OK;
    }

    fc->sh = ngx_slab_alloc(fc->shpool, sizeof(ngx_http_matrix_fed_sh_t));
    if (fc->sh == NULL) {
        return NGX_ERROR;
    }

    fc->shpool->data = fc->sh;

    for (i = 0; i < NGX_HTTP_MATRIX_FED_TREES; i++) {
        ngx_rbtree_init(&fc->sh->tree[i], &fc->sh->sentinel[i],
                        ngx_str_rbtree_insert_value);
    }

    ngx_queue_init(&fc->sh->lru);

    len = sizeof(" in matrix federation cache \"\"") + shm_zone->shm.name.len;

    fc->shpool->log_ctx = ngx_slab_alloc(fc->shpool, len);
    if (fc->shpool->log_ctx == NULL) {
        return NGX_ERROR;
    }

    ngx_sprintf(fc->shpool->log_ctx, " in matrix federation cache \"%V\"%Z",
                &shm_zone->shm.name);

    /* a full zone is expected: entries are evicted, not an error */
    fc->shpool->log_nomem = 0;

    return NGX_OK;
}


ngx_http_matrix_fed_cache_t *
ngx_http_matrix_fed_cache(void)
{
    ngx_http_matrix_main_conf_t  *mmcf;

    mmcf = ngx_http_cycle_get_module_main_conf(ngx_cycle,
                                               ngx_http_matrix_module);

    if (mmcf == NULL || mmcf->fed_zone == NULL) {
        return NULL;
    }

    return mmcf->fed_zone->data;
}


void
ngx_http_matrix_fed_lock(ngx_http_matrix_fed_cache_t *fc)
{
    ngx_shmtx_lock(&fc->shpool->mutex);
}


void
ngx_http_matrix_fed_unlock(ngx_http_matrix_fed_cache_t *fc)
{
    ngx_shmtx_unlock(&fc->shpool->mutex);
}


ngx_http_matrix_fed_node_t *
ngx_http_matrix_fed_find(ngx_http_matrix_fed_cache_t *fc, ngx_uint_t tree,
    ngx_str_t *name)
{
    ngx_str_node_t              *sn;
    ngx_http_matrix_fed_node_t  *node;

    sn = ngx_str_rbtree_lookup(&fc->sh->tree[tree], name,
                               ngx_crc32_short(name->data, name->len));
    if (sn == NULL) {
        return NULL;
    }

    node = (ngx_http_matrix_fed_node_t *) sn;

    ngx_queue_remove(&node->queue);
    ngx_queue_insert_head(&fc->sh->lru, &node->queue);

    return node;
}


ngx_http_matrix_fed_node_t *
ngx_http_matrix_fed_insert(ngx_http_matrix_fed_cache_t *fc, ngx_uint_t tree,
    ngx_str_t *name, size_t size)
{
    u_char                      *p;
    ngx_http_matrix_fed_node_t  *node;

    p = ngx_http_matrix_fed_alloc(fc, size + name->len, NULL);
    if (p == NULL) {
        return NULL;
    }

    ngx_memzero(p, size);
    node = (ngx_http_matrix_fed_node_t *) p;

    node->sn.str.data = p + size;
    node->sn.str.len = name->len;
    ngx_memcpy(node->sn.str.data, name->data, name->len);
    node->sn.node.key = ngx_crc32_short(name->data, name->len);
    node->tree = tree;
    node->cheap = 1;

    ngx_rbtree_insert(&fc->sh->tree[tree], &node->sn.node);
    ngx_queue_insert_head(&fc->sh->lru, &node->queue);

    return node;
}


void
ngx_http_matrix_fed_remove(ngx_http_matrix_fed_cache_t *fc,
    ngx_http_matrix_fed_node_t *node)
{
    ngx_uint_t  i;

    ngx_rbtree_delete(&fc->sh->tree[node->tree], &node->sn.node);
    ngx_queue_remove(&node->queue);

    for (i = 0; i < NGX_HTTP_MATRIX_FED_PARTS; i++) {
        if (node->parts[i]) {
            ngx_slab_free_locked(fc->shpool, node->parts[i]);
        }
    }

    ngx_slab_free_locked(fc->shpool, node);
}


void *
ngx_http_matrix_fed_alloc(ngx_http_matrix_fed_cache_t *fc, size_t size,
    ngx_http_matrix_fed_node_t *keep)
{
    void  *p;

    for ( ;; ) {
        p = ngx_slab_alloc_locked(fc->shpool, size);

        if (p || ngx_http_matrix_fed_evict(fc, keep) != NGX_OK) {
            return p;
        }
    }
}


void
ngx_http_matrix_fed_free(ngx_http_matrix_fed_cache_t *fc, void *p)
{
    ngx_slab_free_locked(fc->shpool, p);
}


/* one entry less: a cheap one near the end, else the last; never keep */

static ngx_int_t
ngx_http_matrix_fed_evict(ngx_http_matrix_fed_cache_t *fc,
    ngx_http_matrix_fed_node_t *keep)
{
    ngx_uint_t                   n;
    ngx_queue_t                 *q;
    ngx_http_matrix_fed_node_t  *node, *last;

    last = NULL;
    n = 0;

    for (q = ngx_queue_last(&fc->sh->lru);
         q != ngx_queue_sentinel(&fc->sh->lru)
         && n < NGX_HTTP_MATRIX_FED_SCAN;
         q = ngx_queue_prev(q))
    {
        node = ngx_queue_data(q, ngx_http_matrix_fed_node_t, queue);

        if (node == keep) {
            continue;
        }

        if (node->cheap) {
            last = node;
            break;
        }

        if (last == NULL) {
            last = node;
        }

        n++;
    }

    if (last == NULL) {
        return NGX_DECLINED;
    }

    ngx_http_matrix_fed_remove(fc, last);

    return NGX_OK;
}
