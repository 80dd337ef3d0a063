/*
 * State resolution v2 and v2.1 (rooms/v2.md, rooms/v12.md).
 *
 * Every event met is a node in one growable array, found by event ID
 * through an open-addressing hash; its auth events become edges (node
 * indices) the first time it is walked.  Every walk of the auth graph
 * is iterative over an explicit stack, and every step is linear in the
 * events it touches, or n log n where it sorts, so that rooms with
 * auth chains of 100,000s of events resolve without deep recursion or
 * quadratic work.
 */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mx_state_res.h"
#include "mx_auth.h"


#define MX_SR_NONE          UINT32_MAX

/* mainline positions: UNKNOWN before it is computed, INFINITE: none */
#define MX_SR_UNKNOWN       UINT32_MAX
#define MX_SR_INFINITE      (UINT32_MAX - 1)

/* node flags */
#define MX_SR_CONFLICTED    0x0001  /* in the conflicted state set */
#define MX_SR_COMMON        0x0002  /* unconflicted, or in the auth chain of
                                       an unconflicted event: in every
                                       set's chain */
#define MX_SR_FULL          0x0004  /* in the full conflicted set */
#define MX_SR_POWER         0x0008  /* a power event of the full set */
#define MX_SR_X             0x0010  /* X of step 1 */
#define MX_SR_SORT          0x0020  /* a node of the graph that orders X */
#define MX_SR_MARK          0x0040  /* scratch: reached by the current walk */
#define MX_SR_EXPANDED      0x0080  /* edges are known */
#define MX_SR_LEVEL         0x0100  /* level is known */


typedef struct {
    uint32_t                *a;
    size_t                   n;
    size_t                   cap;
} mx_sr_vec_t;


typedef struct {
    uint32_t                 hash;
    uint32_t                 value;     /* index + 1; 0: empty */
} mx_sr_slot_t;


typedef struct {
    mx_sr_slot_t            *slots;
    size_t                   mask;
    size_t                   n;
} mx_sr_map_t;


typedef struct {
    const mx_event_t        *ev;
    uint32_t                 edge;      /* auth events: edges[edge ..] */
    uint32_t                 nedges;
    uint32_t                 flags;
    uint32_t                 set;       /* the last set whose chain got
                                           here, + 1 */
    uint32_t                 nsets;     /* how many sets' chains got here */
    uint32_t                 tmp;       /* index in the walk's node list */
    uint32_t                 mainline;  /* position, power levels only */
    int64_t                  level;     /* of the sender, by auth events */
} mx_sr_node_t;


typedef struct {
    const char              *type;
    const char              *state_key;
    uint32_t                 set;       /* the last set that has it, + 1 */
    uint32_t                 nsets;     /* how many sets have it */
    uint32_t                 first;     /* node of its first entry */
    uint32_t                 conflicted;
    uint32_t                 unconflicted;  /* node, or NONE */
    uint32_t                 resolved;      /* node, or NONE */
} mx_sr_key_t;


/* the part of the auth graph below a set of nodes, with reverse edges */
typedef struct {
    mx_sr_vec_t              nodes;
    uint32_t                *off;       /* rev[off[i] .. off[i + 1]) */
    uint32_t                *rev;       /* nodes citing nodes.a[i] */
} mx_sr_sub_t;


typedef struct {
    const mx_room_version_t *version;
    const mx_event_store_t  *store;
    mx_err_t                *err;
    const char              *room_id;

    mx_sr_node_t            *nodes;
    size_t                   nnodes;
    size_t                   nodes_cap;
    mx_sr_map_t              ids;

    uint32_t                *edges;
    size_t                   nedges;
    size_t                   edges_cap;

    mx_sr_key_t             *keys;
    size_t                   nkeys;
    size_t                   keys_cap;
    mx_sr_map_t              keymap;

    uint32_t                 create;    /* node of m.room.create, or NONE */
    mx_sr_vec_t              stack;
} mx_sr_t;


/* what the two passes of sorting need of an event, next to it */
typedef struct {
    uint32_t                 node;
    uint32_t                 mainline;
    int64_t                  level;
    int64_t                  ts;
    const char              *id;
} mx_sr_item_t;


static int mx_sr_grow(mx_sr_t *sr, void **a, size_t *cap, size_t n,
    size_t size, size_t first, size_t max);
static int mx_sr_vec_push(mx_sr_t *sr, mx_sr_vec_t *v, uint32_t x);
static uint32_t mx_sr_hash(const char *a, const char *b);
static int mx_sr_map_grow(mx_sr_t *sr, mx_sr_map_t *m);
static int mx_sr_node(mx_sr_t *sr, const char *id, uint32_t *idx);
static int mx_sr_expand(mx_sr_t *sr, uint32_t n);
static int mx_sr_key(mx_sr_t *sr, const char *type, const char *state_key,
    int insert, uint32_t *idx);
static int mx_sr_create(mx_sr_t *sr, const mx_event_t **create);
static int mx_sr_is_power_event(const mx_event_t *ev);
static int mx_sr_power_levels_of(mx_sr_t *sr, uint32_t n, uint32_t *pl);
static int mx_sr_sender_level(mx_sr_t *sr, uint32_t n);
static int mx_sr_descend(mx_sr_t *sr, uint32_t from, mx_sr_sub_t *sub);
static void mx_sr_sub_free(mx_sr_sub_t *sub);
static int mx_sr_ascend(mx_sr_t *sr, mx_sr_sub_t *sub, uint32_t to,
    uint32_t out);
static int mx_sr_power_sort(mx_sr_t *sr, mx_sr_sub_t *sub, mx_sr_vec_t *out);
static int mx_sr_item_before(const mx_sr_item_t *x, const mx_sr_item_t *y);
static int mx_sr_mainline_cmp(const void *a, const void *b);
static int mx_sr_mainline_sort(mx_sr_t *sr, mx_sr_vec_t *list);
static int mx_sr_auth_checks(mx_sr_t *sr, const mx_sr_vec_t *list);
static int mx_sr_output(mx_sr_t *sr, mx_state_entry_t **out, size_t *nout);
static int mx_sr_entry_cmp(const void *a, const void *b);
static void mx_sr_free(mx_sr_t *sr);


int
mx_state_resolve(const mx_room_version_t *version,
    const mx_state_entry_t *const *sets, const size_t *set_sizes,
    size_t nsets, const mx_event_store_t *store, mx_state_entry_t **out,
    size_t *nout, mx_err_t *err)
{
    int                      rc;
    size_t                   i, j, e, total, nconflicted;
    uint32_t                 k, n, a, stamp;
    uint32_t                *ent;
    mx_sr_t                  sr;
    mx_sr_key_t             *key;
    mx_sr_node_t            *node;
    mx_sr_sub_t              sub;
    mx_sr_vec_t              list;
    const mx_event_t        *ev;
    const mx_state_entry_t  *se;

    *out = NULL;
    *nout = 0;

    /* auth rules of v1-v5 are not implemented: their checks would fail */
    if (!version->supported || version->state_res == MX_STATE_RES_V1) {
        mx_err_set(err, "room version %s: state resolution is not "
                   "implemented", version->id);
        return MX_ERROR;
    }

    memset(&sr, 0, sizeof(mx_sr_t));
    memset(&sub, 0, sizeof(mx_sr_sub_t));
    memset(&list, 0, sizeof(mx_sr_vec_t));

    sr.version = version;
    sr.store = store;
    sr.err = err;
    sr.create = MX_SR_NONE;

    ent = NULL;
    rc = MX_ERROR;

    total = 0;
    for (i = 0; i < nsets; i++) {
        total += set_sizes[i];
    }

    if (total >= MX_SR_NONE / 2) {
        mx_err_set(err, "too many state entries");
        return MX_ERROR;
    }

    /* for each entry, its key and its event's node */
    ent = malloc(2 * (total + 1) * sizeof(uint32_t));
    if (ent == NULL) {
        mx_err_set(err, "out of memory");
        return MX_ERROR;
    }

    /*
     * The unconflicted state map and the conflicted state set: a key
     * missing from one set is conflicted, as much as one with two
     * values.
     */

    e = 0;
    for (i = 0; i < nsets; i++) {
        for (j = 0; j < set_sizes[i]; j++, e++) {
            se = &sets[i][j];

            if (se->type == NULL || se->state_key == NULL
                || se->event_id == NULL)
            {
                mx_err_set(err, "state set %zu: entry %zu is incomplete",
                           i, j);
                goto done;
            }

            if (mx_sr_node(&sr, se->event_id, &n) != MX_OK
                || mx_sr_key(&sr, se->type, se->state_key, 1, &k) != MX_OK)
            {
                goto done;
            }

            ev = sr.nodes[n].ev;

            if (ev->state_key == NULL || strcmp(ev->type, se->type) != 0
                || strcmp(ev->state_key, se->state_key) != 0)
            {
                mx_err_set(err, "state set %zu: event %s is not the state "
                           "event of its entry (%s, \"%s\")", i,
                           se->event_id, se->type, se->state_key);
                goto done;
            }

            key = &sr.keys[k];

            if (key->set == i + 1) {
                mx_err_set(err, "state set %zu has (%s, \"%s\") twice", i,
                           se->type, se->state_key);
                goto done;
            }

            if (key->set == 0) {
                key->first = n;
                key->conflicted = (i != 0);

            } else if (key->first != n) {
                key->conflicted = 1;
            }

            key->set = (uint32_t) i + 1;
            key->nsets++;

            ent[2 * e] = k;
            ent[2 * e + 1] = n;
        }
    }

    nconflicted = 0;

    for (k = 0; k < sr.nkeys; k++) {
        key = &sr.keys[k];

        if (key->nsets != nsets) {
            key->conflicted = 1;
        }

        if (key->conflicted) {
            nconflicted++;

        } else {
            key->unconflicted = key->first;

            /* v2 starts the iterative auth checks from it, v2.1 from nothing */
            if (version->state_res != MX_STATE_RES_V2_1) {
                key->resolved = key->first;
            }
        }
    }

    if (nconflicted == 0) {
        rc = mx_sr_output(&sr, out, nout);
        goto done;
    }

    for (e = 0; e < total; e++) {
        if (sr.keys[ent[2 * e]].conflicted) {
            sr.nodes[ent[2 * e + 1]].flags |= MX_SR_CONFLICTED | MX_SR_FULL;
        }
    }

    /*
     * The auth difference.  A set's full auth chain is taken to hold the
     * set's own events as well as the auth chains of each, as Synapse
     * and ruma compute it (Synapse's tests pin it): the spec's wording,
     * "the union of the auth chains for each event", would leave out an
     * event of the set that nothing in the set cites, which only matters
     * for unconflicted events, pulling those into the full conflicted
     * set whenever one set's events cite them and another's do not.
     *
     * The unconflicted events and their auth chains are in every set's
     * chain: they are walked once and marked COMMON.  Then each set's
     * walk starts from its conflicted events and stops at COMMON nodes,
     * whose chains are COMMON too.  A node not COMMON that some but not
     * all sets reach is in the difference.
     */

    sr.stack.n = 0;

    for (k = 0; k < sr.nkeys; k++) {
        n = sr.keys[k].unconflicted;

        if (n != MX_SR_NONE && !(sr.nodes[n].flags & MX_SR_COMMON)) {
            sr.nodes[n].flags |= MX_SR_COMMON;

            if (mx_sr_vec_push(&sr, &sr.stack, n) != MX_OK) {
                goto done;
            }
        }
    }

    while (sr.stack.n) {
        n = sr.stack.a[--sr.stack.n];

        if (mx_sr_expand(&sr, n) != MX_OK) {
            goto done;
        }

        for (k = 0; k < sr.nodes[n].nedges; k++) {
            a = sr.edges[sr.nodes[n].edge + k];

            if (sr.nodes[a].flags & MX_SR_COMMON) {
                continue;
            }

            sr.nodes[a].flags |= MX_SR_COMMON;

            if (mx_sr_vec_push(&sr, &sr.stack, a) != MX_OK) {
                goto done;
            }
        }
    }

    e = 0;
    for (i = 0; i < nsets; i++) {
        stamp = (uint32_t) i + 1;
        sr.stack.n = 0;

        for (j = 0; j < set_sizes[i]; j++, e++) {
            n = ent[2 * e + 1];

            if (!sr.keys[ent[2 * e]].conflicted
                || (sr.nodes[n].flags & MX_SR_COMMON))
            {
                continue;
            }

            sr.nodes[n].set = stamp;
            sr.nodes[n].nsets++;

            if (mx_sr_vec_push(&sr, &sr.stack, n) != MX_OK) {
                goto done;
            }
        }

        while (sr.stack.n) {
            n = sr.stack.a[--sr.stack.n];

            if (mx_sr_expand(&sr, n) != MX_OK) {
                goto done;
            }

            for (k = 0; k < sr.nodes[n].nedges; k++) {
                a = sr.edges[sr.nodes[n].edge + k];

                if ((sr.nodes[a].flags & MX_SR_COMMON)
                    || sr.nodes[a].set == stamp)
                {
                    continue;
                }

                sr.nodes[a].set = stamp;
                sr.nodes[a].nsets++;

                if (mx_sr_vec_push(&sr, &sr.stack, a) != MX_OK) {
                    goto done;
                }
            }
        }
    }

    for (n = 0; n < sr.nnodes; n++) {
        node = &sr.nodes[n];

        if (!(node->flags & MX_SR_COMMON) && node->nsets > 0
            && node->nsets < nsets)
        {
            node->flags |= MX_SR_FULL;
        }
    }

    /*
     * v2.1: the conflicted state subgraph, the events on auth paths
     * between two conflicted events: below one (its auth chain) and
     * above another (it can reach one).
     */

    if (version->state_res == MX_STATE_RES_V2_1) {
        if (mx_sr_descend(&sr, MX_SR_CONFLICTED, &sub) != MX_OK
            || mx_sr_ascend(&sr, &sub, MX_SR_CONFLICTED, MX_SR_FULL)
               != MX_OK)
        {
            goto done;
        }

        mx_sr_sub_free(&sub);
    }

    /*
     * Step 1.  X: the power events of the full conflicted set, and the
     * events of the full conflicted set their auth events lead to.
     *
     * The spec's words would walk the whole auth chains and keep what is
     * in the full set; Synapse and ruma follow an auth event only while
     * it is in the full set, and sort X by those direct edges alone.  In
     * rooms up to v11 the two readings can resolve differently, and a
     * resolution must agree with the servers already in the room, so this
     * is the reading used.  (From v12 the conflicted state subgraph makes
     * them the same.)
     */

    for (n = 0; n < sr.nnodes; n++) {
        node = &sr.nodes[n];

        if ((node->flags & MX_SR_FULL) && mx_sr_is_power_event(node->ev)) {
            node->flags |= MX_SR_POWER;
        }
    }

    if (mx_sr_descend(&sr, MX_SR_POWER, &sub) != MX_OK) {
        goto done;
    }

    sr.stack.n = 0;

    for (n = 0; n < sr.nnodes; n++) {
        if (sr.nodes[n].flags & MX_SR_POWER) {
            sr.nodes[n].flags |= MX_SR_X;

            if (mx_sr_vec_push(&sr, &sr.stack, n) != MX_OK) {
                goto done;
            }
        }
    }

    while (sr.stack.n) {
        n = sr.stack.a[--sr.stack.n];

        for (k = 0; k < sr.nodes[n].nedges; k++) {
            a = sr.edges[sr.nodes[n].edge + k];

            if ((sr.nodes[a].flags & MX_SR_FULL)
                && !(sr.nodes[a].flags & MX_SR_X))
            {
                sr.nodes[a].flags |= MX_SR_X;

                if (mx_sr_vec_push(&sr, &sr.stack, a) != MX_OK) {
                    goto done;
                }
            }
        }
    }

    for (n = 0; n < sr.nnodes; n++) {
        if (sr.nodes[n].flags & MX_SR_X) {
            sr.nodes[n].flags |= MX_SR_SORT;
        }
    }

    if (mx_sr_power_sort(&sr, &sub, &list) != MX_OK) {
        goto done;
    }

    mx_sr_sub_free(&sub);

    /* step 2 */

    if (mx_sr_auth_checks(&sr, &list) != MX_OK) {
        goto done;
    }

    /* step 3: all else of the full conflicted set, by mainline */

    list.n = 0;

    for (n = 0; n < sr.nnodes; n++) {
        if ((sr.nodes[n].flags & (MX_SR_FULL | MX_SR_X)) == MX_SR_FULL
            && mx_sr_vec_push(&sr, &list, n) != MX_OK)
        {
            goto done;
        }
    }

    if (mx_sr_mainline_sort(&sr, &list) != MX_OK) {
        goto done;
    }

    /* step 4 */

    if (mx_sr_auth_checks(&sr, &list) != MX_OK) {
        goto done;
    }

    /* step 5: the unconflicted state map wins, in mx_sr_output() */

    rc = mx_sr_output(&sr, out, nout);

done:

    free(ent);
    free(list.a);
    mx_sr_sub_free(&sub);
    mx_sr_free(&sr);

    return rc;
}


/*
 * Makes room for n elements of size bytes in *a (capacity *cap),
 * doubling from first; at most max elements, since indexes are uint32_t.
 */

static int
mx_sr_grow(mx_sr_t *sr, void **a, size_t *cap, size_t n, size_t size,
    size_t first, size_t max)
{
    void    *p;
    size_t   c;

    if (n <= *cap) {
        return MX_OK;
    }

    c = *cap ? 2 * *cap : first;

    while (c < n) {
        c *= 2;
    }

    if (c > max) {
        mx_err_set(sr->err, "too many events");
        return MX_ERROR;
    }

    p = realloc(*a, c * size);
    if (p == NULL) {
        mx_err_set(sr->err, "out of memory");
        return MX_ERROR;
    }

    *a = p;
    *cap = c;

    return MX_OK;
}


static int
mx_sr_vec_push(mx_sr_t *sr, mx_sr_vec_t *v, uint32_t x)
{
    if (mx_sr_grow(sr, (void **) &v->a, &v->cap, v->n + 1, sizeof(uint32_t),
                   64, SIZE_MAX / sizeof(uint32_t))
        != MX_OK)
    {
        return MX_ERROR;
    }

    v->a[v->n++] = x;

    return MX_OK;
}


/* FNV-1a over a, and b after a NUL if given, folded to 32 bits */

static uint32_t
mx_sr_hash(const char *a, const char *b)
{
    uint64_t  h;

    h = 14695981039346656037ULL;

    while (*a) {
        h = (h ^ (unsigned char) *a++) * 1099511628211ULL;
    }

    if (b != NULL) {
        h = (h ^ 0xff) * 1099511628211ULL;

        while (*b) {
            h = (h ^ (unsigned char) *b++) * 1099511628211ULL;
        }
    }

    return (uint32_t) (h ^ (h >> 32));
}


/* doubles the table (from 1024 slots), keeping it at most half full */

static int
mx_sr_map_grow(mx_sr_t *sr, mx_sr_map_t *m)
{
    size_t         cap, i, s;
    mx_sr_slot_t  *slots;

    cap = m->slots ? 2 * (m->mask + 1) : 1024;

    slots = calloc(cap, sizeof(mx_sr_slot_t));
    if (slots == NULL) {
        mx_err_set(sr->err, "out of memory");
        return MX_ERROR;
    }

    if (m->slots) {
        for (i = 0; i <= m->mask; i++) {
            if (m->slots[i].value == 0) {
                continue;
            }

            s = m->slots[i].hash & (cap - 1);

            while (slots[s].value) {
                s = (s + 1) & (cap - 1);
            }

            slots[s] = m->slots[i];
        }

        free(m->slots);
    }

    m->slots = slots;
    m->mask = cap - 1;

    return MX_OK;
}


/* the node of an event, fetched from the store the first time */

static int
mx_sr_node(mx_sr_t *sr, const char *id, uint32_t *idx)
{
    size_t             s;
    uint32_t           h, v;
    mx_sr_node_t      *node;
    const mx_event_t  *ev;

    if (sr->ids.slots == NULL || 2 * (sr->ids.n + 1) > sr->ids.mask + 1) {
        if (mx_sr_map_grow(sr, &sr->ids) != MX_OK) {
            return MX_ERROR;
        }
    }

    h = mx_sr_hash(id, NULL);

    for (s = h & sr->ids.mask; (v = sr->ids.slots[s].value) != 0;
         s = (s + 1) & sr->ids.mask)
    {
        if (sr->ids.slots[s].hash == h
            && strcmp(sr->nodes[v - 1].ev->event_id, id) == 0)
        {
            *idx = v - 1;
            return MX_OK;
        }
    }

    ev = sr->store->fetch(sr->store->data, id);

    if (ev == NULL) {
        mx_err_set(sr->err, "event %s is not in the store", id);
        return MX_ERROR;
    }

    if (strcmp(ev->event_id, id) != 0) {
        mx_err_set(sr->err, "the store gave %s for %s", ev->event_id, id);
        return MX_ERROR;
    }

    if (ev->room_id == NULL
        || (sr->room_id && strcmp(ev->room_id, sr->room_id) != 0))
    {
        mx_err_set(sr->err, "event %s is in room %s, not %s", id,
                   ev->room_id ? ev->room_id : "(none)", sr->room_id);
        return MX_ERROR;
    }

    sr->room_id = ev->room_id;

    if (mx_sr_grow(sr, (void **) &sr->nodes, &sr->nodes_cap, sr->nnodes + 1,
                   sizeof(mx_sr_node_t), 256, MX_SR_NONE / 4)
        != MX_OK)
    {
        return MX_ERROR;
    }

    node = &sr->nodes[sr->nnodes];
    memset(node, 0, sizeof(mx_sr_node_t));
    node->ev = ev;
    node->mainline = MX_SR_UNKNOWN;

    sr->ids.slots[s].hash = h;
    sr->ids.slots[s].value = (uint32_t) sr->nnodes + 1;
    sr->ids.n++;

    *idx = (uint32_t) sr->nnodes++;

    return MX_OK;
}


/* resolves the auth events of a node into edges, once */

static int
mx_sr_expand(mx_sr_t *sr, uint32_t n)
{
    size_t       i, cnt;
    uint32_t     a;
    const char  *id;
    json_t      *auth;

    if (sr->nodes[n].flags & MX_SR_EXPANDED) {
        return MX_OK;
    }

    auth = sr->nodes[n].ev->auth_events;
    cnt = json_array_size(auth);

    if (mx_sr_grow(sr, (void **) &sr->edges, &sr->edges_cap,
                   sr->nedges + cnt, sizeof(uint32_t), 1024, MX_SR_NONE - 1)
        != MX_OK)
    {
        return MX_ERROR;
    }

    /* reserved first: fetching the auth events below adds no edges */
    sr->nodes[n].edge = (uint32_t) sr->nedges;
    sr->nodes[n].nedges = 0;

    for (i = 0; i < cnt; i++) {
        id = json_string_value(json_array_get(auth, i));

        if (id == NULL) {
            mx_err_set(sr->err, "event %s has a malformed auth_events",
                       sr->nodes[n].ev->event_id);
            return MX_ERROR;
        }

        if (mx_sr_node(sr, id, &a) != MX_OK) {
            return MX_ERROR;
        }

        sr->edges[sr->nedges++] = a;
        sr->nodes[n].nedges++;
    }

    sr->nodes[n].flags |= MX_SR_EXPANDED;

    return MX_OK;
}


/* the index of a (type, state_key) key; MX_ERROR if absent and !insert */

static int
mx_sr_key(mx_sr_t *sr, const char *type, const char *state_key, int insert,
    uint32_t *idx)
{
    size_t        s;
    uint32_t      h, v;
    mx_sr_key_t  *key;

    if (sr->keymap.slots == NULL
        || 2 * (sr->keymap.n + 1) > sr->keymap.mask + 1)
    {
        if (mx_sr_map_grow(sr, &sr->keymap) != MX_OK) {
            return MX_ERROR;
        }
    }

    h = mx_sr_hash(type, state_key);

    for (s = h & sr->keymap.mask; (v = sr->keymap.slots[s].value) != 0;
         s = (s + 1) & sr->keymap.mask)
    {
        key = &sr->keys[v - 1];

        if (sr->keymap.slots[s].hash == h && strcmp(key->type, type) == 0
            && strcmp(key->state_key, state_key) == 0)
        {
            *idx = v - 1;
            return MX_OK;
        }
    }

    if (!insert) {
        return MX_ERROR;
    }

    if (mx_sr_grow(sr, (void **) &sr->keys, &sr->keys_cap, sr->nkeys + 1,
                   sizeof(mx_sr_key_t), 256, MX_SR_NONE / 4)
        != MX_OK)
    {
        return MX_ERROR;
    }

    key = &sr->keys[sr->nkeys];
    memset(key, 0, sizeof(mx_sr_key_t));
    key->type = type;
    key->state_key = state_key;
    key->first = MX_SR_NONE;
    key->unconflicted = MX_SR_NONE;
    key->resolved = MX_SR_NONE;

    sr->keymap.slots[s].hash = h;
    sr->keymap.slots[s].value = (uint32_t) sr->nkeys + 1;
    sr->keymap.n++;

    *idx = (uint32_t) sr->nkeys++;

    return MX_OK;
}


/*
 * The m.room.create event of a v12 room, which no event cites: its ID is
 * the room ID with the "$" sigil.
 */

static int
mx_sr_create(mx_sr_t *sr, const mx_event_t **create)
{
    char  id[MX_EVENT_ID_LEN + 1];

    if (sr->create == MX_SR_NONE) {
        if (sr->room_id == NULL || strlen(sr->room_id) != MX_EVENT_ID_LEN) {
            mx_err_set(sr->err, "room ID %s does not name a create event",
                       sr->room_id ? sr->room_id : "(none)");
            return MX_ERROR;
        }

        memcpy(id, sr->room_id, MX_EVENT_ID_LEN + 1);
        id[0] = '$';

        if (mx_sr_node(sr, id, &sr->create) != MX_OK) {
            return MX_ERROR;
        }
    }

    *create = sr->nodes[sr->create].ev;

    return MX_OK;
}


static int
mx_sr_is_power_event(const mx_event_t *ev)
{
    if (ev->state_key == NULL) {
        return 0;
    }

    if (ev->state_key[0] == '\0'
        && (strcmp(ev->type, "m.room.power_levels") == 0
            || strcmp(ev->type, "m.room.join_rules") == 0))
    {
        return 1;
    }

    return strcmp(ev->type, "m.room.member") == 0 && ev->membership != NULL
           && (strcmp(ev->membership, "leave") == 0
               || strcmp(ev->membership, "ban") == 0)
           && strcmp(ev->sender, ev->state_key) != 0;
}


/* the m.room.power_levels event among a node's auth events, or NONE */

static int
mx_sr_power_levels_of(mx_sr_t *sr, uint32_t n, uint32_t *pl)
{
    uint32_t           i, a;
    const mx_event_t  *ev;

    if (mx_sr_expand(sr, n) != MX_OK) {
        return MX_ERROR;
    }

    for (i = 0; i < sr->nodes[n].nedges; i++) {
        a = sr->edges[sr->nodes[n].edge + i];
        ev = sr->nodes[a].ev;

        if (ev->state_key && ev->state_key[0] == '\0'
            && strcmp(ev->type, "m.room.power_levels") == 0)
        {
            *pl = a;
            return MX_OK;
        }
    }

    *pl = MX_SR_NONE;

    return MX_OK;
}


/*
 * The sender's power level "when looking at their respective
 * auth_events": the power levels and create events it cites (in v12
 * the create event of the room, which it cannot cite).
 */

static int
mx_sr_sender_level(mx_sr_t *sr, uint32_t n)
{
    uint32_t           i, a;
    const mx_event_t  *ev, *aev, *pl, *create;

    if (sr->nodes[n].flags & MX_SR_LEVEL) {
        return MX_OK;
    }

    if (mx_sr_expand(sr, n) != MX_OK) {
        return MX_ERROR;
    }

    ev = sr->nodes[n].ev;
    pl = NULL;
    create = NULL;

    if (strcmp(ev->type, "m.room.create") == 0 && ev->state_key
        && ev->state_key[0] == '\0')
    {
        create = ev;
    }

    for (i = 0; i < sr->nodes[n].nedges; i++) {
        a = sr->edges[sr->nodes[n].edge + i];
        aev = sr->nodes[a].ev;

        if (aev->state_key == NULL || aev->state_key[0] != '\0') {
            continue;
        }

        if (pl == NULL && strcmp(aev->type, "m.room.power_levels") == 0) {
            pl = aev;

        } else if (create == NULL && strcmp(aev->type, "m.room.create") == 0) {
            create = aev;
        }
    }

    if (create == NULL && sr->version->room_id_from_create
        && mx_sr_create(sr, &create) != MX_OK)
    {
        return MX_ERROR;
    }

    if (mx_auth_power_level(pl, create, ev->sender, &sr->nodes[n].level)
        != MX_OK)
    {
        /* the auth rules refused such a power levels event: as no level */
        sr->nodes[n].level = 0;
    }

    sr->nodes[n].flags |= MX_SR_LEVEL;

    return MX_OK;
}


/*
 * The nodes flagged "from" and their auth chains, marked MARK, with the
 * reverse edges among them.
 */

static int
mx_sr_descend(mx_sr_t *sr, uint32_t from, mx_sr_sub_t *sub)
{
    size_t         i;
    uint32_t       n, a, j;
    mx_sr_node_t  *node;

    memset(sub, 0, sizeof(mx_sr_sub_t));
    sr->stack.n = 0;

    for (n = 0; n < sr->nnodes; n++) {
        if (sr->nodes[n].flags & from) {
            sr->nodes[n].flags |= MX_SR_MARK;

            if (mx_sr_vec_push(sr, &sub->nodes, n) != MX_OK
                || mx_sr_vec_push(sr, &sr->stack, n) != MX_OK)
            {
                return MX_ERROR;
            }
        }
    }

    while (sr->stack.n) {
        n = sr->stack.a[--sr->stack.n];

        if (mx_sr_expand(sr, n) != MX_OK) {
            return MX_ERROR;
        }

        for (j = 0; j < sr->nodes[n].nedges; j++) {
            a = sr->edges[sr->nodes[n].edge + j];
            node = &sr->nodes[a];

            if (node->flags & MX_SR_MARK) {
                continue;
            }

            node->flags |= MX_SR_MARK;

            if (mx_sr_vec_push(sr, &sub->nodes, a) != MX_OK
                || mx_sr_vec_push(sr, &sr->stack, a) != MX_OK)
            {
                return MX_ERROR;
            }
        }
    }

    /* every edge of a node here leads to a node here */

    sub->off = calloc(sub->nodes.n + 1, sizeof(uint32_t));
    if (sub->off == NULL) {
        mx_err_set(sr->err, "out of memory");
        return MX_ERROR;
    }

    for (i = 0; i < sub->nodes.n; i++) {
        sr->nodes[sub->nodes.a[i]].tmp = (uint32_t) i;
    }

    /* off[i + 1]: how many cite node i, then where its range ends */

    for (i = 0; i < sub->nodes.n; i++) {
        node = &sr->nodes[sub->nodes.a[i]];

        for (j = 0; j < node->nedges; j++) {
            sub->off[sr->nodes[sr->edges[node->edge + j]].tmp + 1]++;
        }
    }

    for (i = 0; i < sub->nodes.n; i++) {
        sub->off[i + 1] += sub->off[i];
    }

    sub->rev = malloc((sub->off[sub->nodes.n] + 1) * sizeof(uint32_t));
    if (sub->rev == NULL) {
        mx_err_set(sr->err, "out of memory");
        return MX_ERROR;
    }

    /* off[a] walks up its range, ending where range a + 1 starts ... */

    for (i = 0; i < sub->nodes.n; i++) {
        node = &sr->nodes[sub->nodes.a[i]];

        for (j = 0; j < node->nedges; j++) {
            a = sr->nodes[sr->edges[node->edge + j]].tmp;
            sub->rev[sub->off[a]++] = sub->nodes.a[i];
        }
    }

    /* ... so each start is the end before it */

    for (i = sub->nodes.n; i > 0; i--) {
        sub->off[i] = sub->off[i - 1];
    }

    sub->off[0] = 0;

    for (i = 0; i < sub->nodes.n; i++) {
        sr->nodes[sub->nodes.a[i]].flags &= ~MX_SR_MARK;
    }

    return MX_OK;
}


static void
mx_sr_sub_free(mx_sr_sub_t *sub)
{
    free(sub->nodes.a);
    free(sub->off);
    free(sub->rev);
    memset(sub, 0, sizeof(mx_sr_sub_t));
}


/*
 * Flags "out" the nodes of sub that reach a node flagged "to" (those
 * included): with sub below the nodes flagged "from", the nodes on the
 * paths from "from" to "to".
 */

static int
mx_sr_ascend(mx_sr_t *sr, mx_sr_sub_t *sub, uint32_t to, uint32_t out)
{
    size_t    i;
    uint32_t  n, p, j;

    sr->stack.n = 0;

    for (i = 0; i < sub->nodes.n; i++) {
        n = sub->nodes.a[i];

        if (sr->nodes[n].flags & to) {
            sr->nodes[n].flags |= out | MX_SR_MARK;

            if (mx_sr_vec_push(sr, &sr->stack, n) != MX_OK) {
                return MX_ERROR;
            }
        }
    }

    while (sr->stack.n) {
        n = sr->stack.a[--sr->stack.n];
        i = sr->nodes[n].tmp;

        for (j = sub->off[i]; j < sub->off[i + 1]; j++) {
            p = sub->rev[j];

            if (sr->nodes[p].flags & MX_SR_MARK) {
                continue;
            }

            sr->nodes[p].flags |= out | MX_SR_MARK;

            if (mx_sr_vec_push(sr, &sr->stack, p) != MX_OK) {
                return MX_ERROR;
            }
        }
    }

    for (i = 0; i < sub->nodes.n; i++) {
        sr->nodes[sub->nodes.a[i]].flags &= ~MX_SR_MARK;
    }

    return MX_OK;
}


/*
 * The reverse topological power ordering of X: Kahn's algorithm from the
 * events that cite nothing left, taking the smallest ready event of X
 * each time (higher sender level, then older, then smaller ID).  The
 * SORT nodes outside X only carry the order across; they leave as soon
 * as they are ready, without a place in the list.
 */

static int
mx_sr_power_sort(mx_sr_t *sr, mx_sr_sub_t *sub, mx_sr_vec_t *out)
{
    int            rc;
    size_t         i, nx, nheap, c, p;
    uint32_t       n, a, j, k;
    uint32_t      *left;
    mx_sr_vec_t    ready;
    mx_sr_item_t  *heap, item;
    mx_sr_node_t  *node;

    out->n = 0;
    memset(&ready, 0, sizeof(mx_sr_vec_t));
    rc = MX_ERROR;

    left = calloc(sub->nodes.n + 1, sizeof(uint32_t));
    heap = malloc((sub->nodes.n + 1) * sizeof(mx_sr_item_t));

    if (left == NULL || heap == NULL) {
        mx_err_set(sr->err, "out of memory");
        goto done;
    }

    nx = 0;
    nheap = 0;

    for (i = 0; i < sub->nodes.n; i++) {
        n = sub->nodes.a[i];
        node = &sr->nodes[n];

        if (!(node->flags & MX_SR_SORT)) {
            continue;
        }

        if (node->flags & MX_SR_X) {
            nx++;

            if (mx_sr_sender_level(sr, n) != MX_OK) {
                goto done;
            }

            node = &sr->nodes[n];
        }

        for (j = 0; j < node->nedges; j++) {
            if (sr->nodes[sr->edges[node->edge + j]].flags & MX_SR_SORT) {
                left[i]++;
            }
        }

        if (left[i] == 0 && mx_sr_vec_push(sr, &ready, n) != MX_OK) {
            goto done;
        }
    }

    for ( ;; ) {

        /* ready nodes: those outside X are passed, those of X heaped */

        while (ready.n) {
            n = ready.a[--ready.n];
            node = &sr->nodes[n];

            if (node->flags & MX_SR_X) {
                item.node = n;
                item.level = node->level;
                item.ts = node->ev->origin_server_ts;
                item.id = node->ev->event_id;
                item.mainline = 0;

                for (c = nheap++; c > 0; c = p) {
                    p = (c - 1) / 2;

                    if (!mx_sr_item_before(&item, &heap[p])) {
                        break;
                    }

                    heap[c] = heap[p];
                }

                heap[c] = item;
                continue;
            }

            i = node->tmp;

            for (k = sub->off[i]; k < sub->off[i + 1]; k++) {
                a = sub->rev[k];

                if ((sr->nodes[a].flags & MX_SR_SORT)
                    && --left[sr->nodes[a].tmp] == 0
                    && mx_sr_vec_push(sr, &ready, a) != MX_OK)
                {
                    goto done;
                }
            }
        }

        if (nheap == 0) {
            break;
        }

        n = heap[0].node;
        item = heap[--nheap];

        for (c = 0; ; c = p) {
            p = 2 * c + 1;

            if (p >= nheap) {
                break;
            }

            if (p + 1 < nheap && mx_sr_item_before(&heap[p + 1], &heap[p])) {
                p++;
            }

            if (!mx_sr_item_before(&heap[p], &item)) {
                break;
            }

            heap[c] = heap[p];
        }

        if (nheap) {
            heap[c] = item;
        }

        if (mx_sr_vec_push(sr, out, n) != MX_OK) {
            goto done;
        }

        i = sr->nodes[n].tmp;

        for (k = sub->off[i]; k < sub->off[i + 1]; k++) {
            a = sub->rev[k];

            if ((sr->nodes[a].flags & MX_SR_SORT)
                && --left[sr->nodes[a].tmp] == 0
                && mx_sr_vec_push(sr, &ready, a) != MX_OK)
            {
                goto done;
            }
        }
    }

    if (out->n != nx) {
        mx_err_set(sr->err, "the auth events of the power events form a "
                   "cycle");
        goto done;
    }

    rc = MX_OK;

done:

    free(left);
    free(heap);
    free(ready.a);

    return rc;
}


/* x < y in the reverse topological power ordering */

static int
mx_sr_item_before(const mx_sr_item_t *x, const mx_sr_item_t *y)
{
    if (x->level != y->level) {
        return x->level > y->level;
    }

    if (x->ts != y->ts) {
        return x->ts < y->ts;
    }

    return strcmp(x->id, y->id) < 0;
}


/* the mainline ordering: the greater mainline position first */

static int
mx_sr_mainline_cmp(const void *a, const void *b)
{
    int                  c;
    const mx_sr_item_t  *x, *y;

    x = a;
    y = b;

    if (x->mainline != y->mainline) {
        return x->mainline > y->mainline ? -1 : 1;
    }

    if (x->ts != y->ts) {
        return x->ts < y->ts ? -1 : 1;
    }

    c = strcmp(x->id, y->id);

    return c < 0 ? -1 : (c > 0);
}


/*
 * Sorts list by mainline ordering based on the power levels of the
 * partially resolved state.  A power levels event's position is
 * remembered once found, so that the walks up the power levels
 * chains together stay linear in their length.
 */

static int
mx_sr_mainline_sort(mx_sr_t *sr, mx_sr_vec_t *list)
{
    int            rc;
    size_t         i;
    uint32_t       p, k, pos, q;
    mx_sr_vec_t    path;
    mx_sr_item_t  *items;

    if (list->n == 0) {
        return MX_OK;
    }

    memset(&path, 0, sizeof(mx_sr_vec_t));
    rc = MX_ERROR;

    items = malloc(list->n * sizeof(mx_sr_item_t));
    if (items == NULL) {
        mx_err_set(sr->err, "out of memory");
        return MX_ERROR;
    }

    /* the mainline of P: P0 at position 0, its power levels at 1, ... */

    p = MX_SR_NONE;
    if (mx_sr_key(sr, "m.room.power_levels", "", 0, &k) == MX_OK) {
        p = sr->keys[k].resolved;
    }

    for (pos = 0; p != MX_SR_NONE; pos++) {
        if (sr->nodes[p].mainline != MX_SR_UNKNOWN) {
            mx_err_set(sr->err, "power levels events form a cycle");
            goto done;
        }

        sr->nodes[p].mainline = pos;

        if (mx_sr_power_levels_of(sr, p, &p) != MX_OK) {
            goto done;
        }
    }

    for (i = 0; i < list->n; i++) {
        if (mx_sr_power_levels_of(sr, list->a[i], &p) != MX_OK) {
            goto done;
        }

        /* e1, e2, ... up to the first known position */

        path.n = 0;

        while (p != MX_SR_NONE && sr->nodes[p].mainline == MX_SR_UNKNOWN) {
            if (path.n > sr->nnodes) {
                mx_err_set(sr->err, "power levels events form a cycle");
                goto done;
            }

            if (mx_sr_vec_push(sr, &path, p) != MX_OK
                || mx_sr_power_levels_of(sr, p, &q) != MX_OK)
            {
                goto done;
            }

            p = q;
        }

        pos = (p == MX_SR_NONE) ? MX_SR_INFINITE : sr->nodes[p].mainline;

        for (k = 0; k < path.n; k++) {
            sr->nodes[path.a[k]].mainline = pos;
        }

        items[i].node = list->a[i];
        items[i].mainline = pos;
        items[i].level = 0;
        items[i].ts = sr->nodes[list->a[i]].ev->origin_server_ts;
        items[i].id = sr->nodes[list->a[i]].ev->event_id;
    }

    qsort(items, list->n, sizeof(mx_sr_item_t), mx_sr_mainline_cmp);

    for (i = 0; i < list->n; i++) {
        list->a[i] = items[i].node;
    }

    rc = MX_OK;

done:

    free(items);
    free(path.a);

    return rc;
}


/*
 * The iterative auth checks over the partially resolved state in the
 * keys' "resolved".  Each event is checked against the state entries it
 * needs; a key that state lacks comes from the event's own auth events,
 * unless the one there was rejected.
 */

static int
mx_sr_auth_checks(mx_sr_t *sr, const mx_sr_vec_t *list)
{
    size_t             i, j, t, na, ntypes;
    uint32_t           n, k, a;
    mx_err_t           why;
    mx_auth_key_t      types[MX_AUTH_TYPES_MAX];
    const mx_event_t  *ev, *aev, *create;
    const mx_event_t  *auth[MX_AUTH_TYPES_MAX + 1];

    for (i = 0; i < list->n; i++) {
        n = list->a[i];
        ev = sr->nodes[n].ev;

        /* only state events are in state sets and auth chains */
        if (ev->state_key == NULL) {
            continue;
        }

        if (mx_sr_expand(sr, n) != MX_OK) {
            return MX_ERROR;
        }

        if (mx_auth_types_for_event(ev, types, MX_AUTH_TYPES_MAX, &ntypes)
            != MX_OK)
        {
            mx_err_set(sr->err, "too many auth types for %s", ev->event_id);
            return MX_ERROR;
        }

        na = 0;

        for (t = 0; t < ntypes; t++) {
            aev = NULL;

            if (mx_sr_key(sr, types[t].type, types[t].state_key, 0, &k)
                == MX_OK
                && sr->keys[k].resolved != MX_SR_NONE)
            {
                aev = sr->nodes[sr->keys[k].resolved].ev;

            } else {
                for (j = 0; j < sr->nodes[n].nedges; j++) {
                    a = sr->edges[sr->nodes[n].edge + j];
                    aev = sr->nodes[a].ev;

                    if (aev->state_key && strcmp(aev->type, types[t].type) == 0
                        && strcmp(aev->state_key, types[t].state_key) == 0
                        && (sr->store->rejected == NULL
                            || !sr->store->rejected(sr->store->data,
                                                    aev->event_id)))
                    {
                        break;
                    }

                    aev = NULL;
                }
            }

            if (aev != NULL) {
                auth[na++] = aev;
            }
        }

        /* v12: the create event is named by the room ID, not cited */

        if (sr->version->room_id_from_create) {
            if (mx_sr_create(sr, &create) != MX_OK) {
                return MX_ERROR;
            }

            for (j = 0; j < na; j++) {
                if (auth[j] == create) {
                    break;
                }
            }

            if (j == na && create != ev) {
                auth[na++] = create;
            }
        }

        if (mx_auth_check(ev, auth, na, &why) != MX_OK) {
            continue;
        }

        if (mx_sr_key(sr, ev->type, ev->state_key, 1, &k) != MX_OK) {
            return MX_ERROR;
        }

        sr->keys[k].resolved = n;
    }

    return MX_OK;
}


/* the resolved state, the unconflicted state map over it */

static int
mx_sr_output(mx_sr_t *sr, mx_state_entry_t **out, size_t *nout)
{
    char              *p;
    size_t             k, n, size;
    uint32_t           v;
    mx_state_entry_t  *entries;
    const mx_event_t  *ev;

    n = 0;
    size = 0;

    for (k = 0; k < sr->nkeys; k++) {
        v = sr->keys[k].unconflicted != MX_SR_NONE
            ? sr->keys[k].unconflicted : sr->keys[k].resolved;

        if (v != MX_SR_NONE) {
            ev = sr->nodes[v].ev;
            size += strlen(ev->type) + strlen(ev->state_key)
                    + strlen(ev->event_id) + 3;
            n++;
        }
    }

    entries = malloc(n * sizeof(mx_state_entry_t) + size + 1);
    if (entries == NULL) {
        mx_err_set(sr->err, "out of memory");
        return MX_ERROR;
    }

    p = (char *) (entries + n);
    n = 0;

    for (k = 0; k < sr->nkeys; k++) {
        v = sr->keys[k].unconflicted != MX_SR_NONE
            ? sr->keys[k].unconflicted : sr->keys[k].resolved;

        if (v == MX_SR_NONE) {
            continue;
        }

        ev = sr->nodes[v].ev;

        size = strlen(ev->type) + 1;
        entries[n].type = memcpy(p, ev->type, size);
        p += size;

        size = strlen(ev->state_key) + 1;
        entries[n].state_key = memcpy(p, ev->state_key, size);
        p += size;

        size = strlen(ev->event_id) + 1;
        entries[n].event_id = memcpy(p, ev->event_id, size);
        p += size;

        n++;
    }

    qsort(entries, n, sizeof(mx_state_entry_t), mx_sr_entry_cmp);

    *out = entries;
    *nout = n;

    return MX_OK;
}


static int
mx_sr_entry_cmp(const void *a, const void *b)
{
    int                      c;
    const mx_state_entry_t  *x, *y;

    x = a;
    y = b;

    c = strcmp(x->type, y->type);
    if (c == 0) {
        c = strcmp(x->state_key, y->state_key);
    }

    return c;
}


static void
mx_sr_free(mx_sr_t *sr)
{
    free(sr->nodes);
    free(sr->ids.slots);
    free(sr->edges);
    free(sr->keys);
    free(sr->keymap.slots);
    free(sr->stack.a);
}
