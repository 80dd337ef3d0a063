/*
 * The federation caches' shared memory zone ("matrix_federation_cache"):
 * other servers' keys (ngx_http_matrix_remote_keys.c) and well-known
 * outcomes (ngx_http_matrix_destination.c), seen by every worker and kept
 * across "nginx -s reload".
 *
 * Each cache is an rbtree keyed by a name; every entry of the zone is on
 * one LRU queue.  When the zone is full, the least recently used entries
 * go, cheap ones (failures, absent records) first.  Everything here is
 * called with the zone's mutex held, except the lock itself and the
 * configuration; an entry's address is good only while it is held.
 */

#ifndef _NGX_HTTP_MATRIX_FED_CACHE_H_INCLUDED_
#define _NGX_HTTP_MATRIX_FED_CACHE_H_INCLUDED_


#include "ngx_http_matrix_module.h"


#define NGX_HTTP_MATRIX_FED_KEYS     0
#define NGX_HTTP_MATRIX_FED_DEST     1

#define NGX_HTTP_MATRIX_FED_PARTS    2


typedef struct {
    ngx_str_node_t                   sn;        /* key: the name */
    ngx_queue_t                      queue;     /* the zone's LRU */
    ngx_uint_t                       tree;      /* NGX_HTTP_MATRIX_FED_* */
    void                            *parts[NGX_HTTP_MATRIX_FED_PARTS];
                                                /* freed with the entry */
    unsigned                         cheap:1;   /* evicted first */
} ngx_http_matrix_fed_node_t;


typedef struct ngx_http_matrix_fed_cache_s  ngx_http_matrix_fed_cache_t;


char *ngx_http_matrix_fed_cache_directive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
char *ngx_http_matrix_fed_cache_init_conf(ngx_conf_t *cf,
    ngx_http_matrix_main_conf_t *mmcf);

/* NULL: no zone (the module is not used for federation) */
ngx_http_matrix_fed_cache_t *ngx_http_matrix_fed_cache(void);

void ngx_http_matrix_fed_lock(ngx_http_matrix_fed_cache_t *fc);
void ngx_http_matrix_fed_unlock(ngx_http_matrix_fed_cache_t *fc);

/* the entry of name, made the most recent; NULL: none */
ngx_http_matrix_fed_node_t *ngx_http_matrix_fed_find(
    ngx_http_matrix_fed_cache_t *fc, ngx_uint_t tree, ngx_str_t *name);

/* a new zeroed entry of size bytes (the node first), in the tree */
ngx_http_matrix_fed_node_t *ngx_http_matrix_fed_insert(
    ngx_http_matrix_fed_cache_t *fc, ngx_uint_t tree, ngx_str_t *name,
    size_t size);
void ngx_http_matrix_fed_remove(ngx_http_matrix_fed_cache_t *fc,
    ngx_http_matrix_fed_node_t *node);

/* memory for an entry's parts; others than keep may be evicted for it */
void *ngx_http_matrix_fed_alloc(ngx_http_matrix_fed_cache_t *fc, size_t size,
    ngx_http_matrix_fed_node_t *keep);
void ngx_http_matrix_fed_free(ngx_http_matrix_fed_cache_t *fc, void *p);


#endif /* _NGX_HTTP_MATRIX_FED_CACHE_H_INCLUDED_ */
