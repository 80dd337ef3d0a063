/*
 * bench/events: the time of one state resolution over two forks of
 * N state events each (default 10,000) from a common public room:
 *
 *   fork 1: N - 1 users join, Alice changes the power levels, then the
 *           topic
 *   fork 2: N - 2 other users join, Alice changes the power levels, then
 *           the topic, and bans one of fork 1's users
 *
 * Everything the forks add is conflicted (missing from the other fork),
 * so the full conflicted set is 2N events: the joins go through the
 * mainline sort and the iterative auth checks, the power events through
 * the power sort.  Room versions 11 (v2) and 12 (v2.1).  Best of ROUNDS
 * runs, CLOCK_MONOTONIC.  Exit status 1 if a resolution fails or its
 * result is not the expected one.
 *
 *   bench_state_res [N]
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mx_core.h"
#include "mx_event.h"
#include "mx_state_res.h"


#define BENCH_ROUNDS   3
#define BENCH_ALICE    "@alice:example.com"


typedef struct {
    const mx_room_version_t  *version;
    mx_event_t              **events;
    size_t                    n;
    size_t                    cap;
    mx_event_t              **sorted;       /* by event ID, for fetch */
    mx_state_entry_t         *sets[2];
    size_t                    sizes[2];
    const char               *room_id;
    int64_t                   ts;
} bench_t;


static double now(void);
static int cmp_event(const void *a, const void *b);
static int cmp_id(const void *key, const void *elt);
static const mx_event_t *fetch(void *data, const char *event_id);
static mx_event_t *add(bench_t *b, const char *type, const char *state_key,
    const char *sender, json_t *content, mx_event_t *const *auth,
    size_t nauth, mx_event_t *prev);
static void set_state(mx_state_entry_t *s, size_t *n, const mx_event_t *ev,
    int replace);
static int build(bench_t *b, size_t n);
static void bench_free(bench_t *b);
static int run(const char *version, size_t n);


int
main(int argc, char **argv)
{
    int     rc;
    size_t  n;

    n = argc > 1 ? (size_t) atol(argv[1]) : 10000;
    if (n < 10) {
        n = 10;
    }

    rc = run("11", n);
    if (run("12", n) != 0) {
        rc = 1;
    }

    return rc;
}


static double
now(void)
{
    struct timespec  ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);

    return ts.tv_sec + ts.tv_nsec / 1e9;
}


static int
cmp_event(const void *a, const void *b)
{
    const mx_event_t *const  *x = a, *const *y = b;

    return strcmp((*x)->event_id, (*y)->event_id);
}


static int
cmp_id(const void *key, const void *elt)
{
    const mx_event_t *const  *e = elt;

    return strcmp(key, (*e)->event_id);
}


static const mx_event_t *
fetch(void *data, const char *event_id)
{
    bench_t      *b = data;
    mx_event_t  **e;

    e = bsearch(event_id, b->sorted, b->n, sizeof(mx_event_t *), cmp_id);

    return e ? *e : NULL;
}


/* builds, parses and keeps one event; content is stolen */

static mx_event_t *
add(bench_t *b, const char *type, const char *state_key, const char *sender,
    json_t *content, mx_event_t *const *auth, size_t nauth, mx_event_t *prev)
{
    size_t       i;
    json_t      *pdu, *a;
    mx_err_t     err;
    mx_event_t  *ev, **events;

    if (b->n == b->cap) {
        b->cap = b->cap ? 2 * b->cap : 1024;
        events = realloc(b->events, b->cap * sizeof(mx_event_t *));
        if (events == NULL) {
            json_decref(content);
            return NULL;
        }
        b->events = events;
    }

    pdu = json_pack("{s:s, s:s, s:s, s:o, s:[], s:[], s:I, s:I, s:{}, s:{}}",
                    "type", type, "state_key", state_key, "sender", sender,
                    "content", content, "auth_events", "prev_events",
                    "depth", (json_int_t) (prev ? prev->depth + 1 : 1),
                    "origin_server_ts", (json_int_t) ++b->ts,
                    "hashes", "signatures");

    if (b->room_id) {
        json_object_set_new(pdu, "room_id", json_string(b->room_id));

    } else if (!b->version->room_id_from_create) {
        json_object_set_new(pdu, "room_id", json_string("!bench:example.com"));
    }

    a = json_object_get(pdu, "auth_events");
    for (i = 0; i < nauth; i++) {
        if (auth[i] != NULL) {
            json_array_append_new(a, json_string(auth[i]->event_id));
        }
    }

    if (prev) {
        json_array_append_new(json_object_get(pdu, "prev_events"),
                              json_string(prev->event_id));
    }

    if (mx_event_from_json(pdu, b->version, &ev, &err) != MX_OK) {
        fprintf(stderr, "bench_state_res: %s\n", err.msg);
        json_decref(pdu);
        return NULL;
    }

    json_decref(pdu);
    b->events[b->n++] = ev;

    if (b->room_id == NULL) {
        b->room_id = ev->room_id;
    }

    return ev;
}


/* replace: the key may be there already (else a new user's membership) */

static void
set_state(mx_state_entry_t *s, size_t *n, const mx_event_t *ev, int replace)
{
    size_t  i;

    for (i = replace ? 0 : *n; i < *n; i++) {
        if (strcmp(s[i].type, ev->type) == 0
            && strcmp(s[i].state_key, ev->state_key) == 0)
        {
            break;
        }
    }

    s[i].type = ev->type;
    s[i].state_key = ev->state_key;
    s[i].event_id = ev->event_id;

    if (i == *n) {
        (*n)++;
    }
}


static int
build(bench_t *b, size_t n)
{
    int           f;
    char          user[64], content[128];
    size_t        i, nbase, joins;
    mx_event_t   *create, *ima, *pl, *jr, *prev, *ev, *fpl, *auth[4];
    mx_event_t   *victim;

    /* the create event is cited by everything but in v12 */
    create = add(b, "m.room.create", "", BENCH_ALICE,
                 json_pack("{s:s}", "room_version", b->version->id),
                 NULL, 0, NULL);
    if (create == NULL) {
        return -1;
    }

#define CR  (b->version->room_id_from_create ? NULL : create)

    auth[0] = CR;
    ima = add(b, "m.room.member", BENCH_ALICE, BENCH_ALICE,
              json_pack("{s:s}", "membership", "join"), auth, 1, create);

    auth[1] = ima;
    pl = add(b, "m.room.power_levels", "", BENCH_ALICE,
             b->version->privileged_creators
             ? json_pack("{s:{}}", "users")
             : json_pack("{s:{s:i}}", "users", BENCH_ALICE, 100),
             auth, 2, ima);

    auth[2] = pl;
    jr = add(b, "m.room.join_rules", "", BENCH_ALICE,
             json_pack("{s:s}", "join_rule", "public"), auth, 3, pl);

    if (ima == NULL || pl == NULL || jr == NULL) {
        return -1;
    }

    for (f = 0; f < 2; f++) {
        b->sets[f] = malloc((n + 8) * sizeof(mx_state_entry_t));
        if (b->sets[f] == NULL) {
            return -1;
        }

        b->sizes[f] = 0;
        set_state(b->sets[f], &b->sizes[f], create, 0);
        set_state(b->sets[f], &b->sizes[f], ima, 0);
        set_state(b->sets[f], &b->sizes[f], pl, 0);
        set_state(b->sets[f], &b->sizes[f], jr, 0);
    }

    nbase = b->sizes[0];
    victim = NULL;

    for (f = 0; f < 2; f++) {
        prev = jr;
        fpl = pl;
        joins = (f == 0) ? n - 1 : n - 2;

        for (i = 0; i < joins; i++) {
            snprintf(user, sizeof(user), "@u%d_%zu:example.com", f, i);

            auth[0] = CR;
            auth[1] = fpl;
            auth[2] = jr;
            ev = add(b, "m.room.member", user, user,
                     json_pack("{s:s}", "membership", "join"), auth, 3, prev);
            if (ev == NULL) {
                return -1;
            }

            set_state(b->sets[f], &b->sizes[f], ev, 0);
            prev = ev;

            if (f == 0 && i == 10) {
                victim = ev;
            }

            /* halfway: a power levels change, making a moderator */
            if (i == joins / 2) {
                snprintf(content, sizeof(content),
                         "{\"users\":{%s\"%s\":50}}",
                         b->version->privileged_creators
                         ? "" : "\"" BENCH_ALICE "\":100,",
                         user);

                auth[0] = CR;
                auth[1] = fpl;
                auth[2] = ima;
                fpl = add(b, "m.room.power_levels", "", BENCH_ALICE,
                          json_loads(content, 0, NULL), auth, 3, prev);
                if (fpl == NULL) {
                    return -1;
                }

                set_state(b->sets[f], &b->sizes[f], fpl, 1);
                prev = fpl;
            }
        }

        auth[0] = CR;
        auth[1] = fpl;
        auth[2] = ima;
        ev = add(b, "m.room.topic", "", BENCH_ALICE,
                 json_pack("{s:s}", "topic", f ? "two" : "one"), auth, 3,
                 prev);
        if (ev == NULL) {
            return -1;
        }

        set_state(b->sets[f], &b->sizes[f], ev, 0);
        prev = ev;

        if (f == 1) {
            auth[0] = CR;
            auth[1] = fpl;
            auth[2] = ima;
            ev = add(b, "m.room.member", victim->state_key, BENCH_ALICE,
                     json_pack("{s:s}", "membership", "ban"), auth, 3, prev);
            if (ev == NULL) {
                return -1;
            }

            set_state(b->sets[f], &b->sizes[f], ev, 0);
        }
    }

#undef CR

    /* the new power levels replace the base's */
    if (b->sizes[0] - nbase != n || b->sizes[1] - nbase != n) {
        fprintf(stderr, "bench_state_res: forks of %zu and %zu events\n",
                b->sizes[0] - nbase, b->sizes[1] - nbase);
        return -1;
    }

    b->sorted = malloc(b->n * sizeof(mx_event_t *));
    if (b->sorted == NULL) {
        return -1;
    }

    memcpy(b->sorted, b->events, b->n * sizeof(mx_event_t *));
    qsort(b->sorted, b->n, sizeof(mx_event_t *), cmp_event);

    return 0;
}


static void
bench_free(bench_t *b)
{
    size_t  i;

    for (i = 0; i < b->n; i++) {
        mx_event_free(b->events[i]);
    }

    free(b->events);
    free(b->sorted);
    free(b->sets[0]);
    free(b->sets[1]);
}


static int
run(const char *version, size_t n)
{
    int                rc, r;
    size_t             nout, i, banned;
    double             t0, t, best;
    bench_t            b;
    mx_err_t           err;
    mx_event_store_t   store;
    mx_state_entry_t  *out;

    memset(&b, 0, sizeof(bench_t));
    b.version = mx_room_version_find(version, strlen(version));
    rc = 1;

    if (b.version == NULL || build(&b, n) != 0) {
        fprintf(stderr, "bench_state_res: cannot build the forks\n");
        goto done;
    }

    store.fetch = fetch;
    store.rejected = NULL;
    store.data = &b;

    best = 0;

    for (r = 0; r < BENCH_ROUNDS; r++) {
        t0 = now();

        if (mx_state_resolve(b.version,
                             (const mx_state_entry_t *const *) b.sets,
                             b.sizes, 2, &store, &out, &nout, &err)
            != MX_OK)
        {
            fprintf(stderr, "bench_state_res: %s\n", err.msg);
            goto done;
        }

        t = now() - t0;
        if (r == 0 || t < best) {
            best = t;
        }

        /* base + every join of both forks + power levels + topic */
        banned = 0;
        for (i = 0; i < nout; i++) {
            if (strcmp(out[i].type, "m.room.member") == 0
                && strcmp(out[i].state_key, "@u0_10:example.com") == 0)
            {
                banned = fetch(&b, out[i].event_id)->membership[0] == 'b';
            }
        }

        free(out);

        if (nout != 4 + (n - 1) + (n - 2) + 1 || !banned) {
            fprintf(stderr, "bench_state_res: unexpected result: %zu "
                    "entries, banned: %zu\n", nout, banned);
            goto done;
        }
    }

    printf("state resolution (room version %s): 2 forks x %zu state events: "
           "%.3f s\n", version, n, best);

    rc = 0;

done:

    bench_free(&b);

    return rc;
}
