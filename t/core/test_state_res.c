/*
 * Unit tests of state resolution v2 and v2.1 in TAP.
 *
 * Events are built for real (their IDs are reference hashes), in a small
 * DAG builder: each event names its prev_events, the state before it is
 * the resolution of the states after them, and its auth_events are the
 * auth events selection taken from that state, unless a case names them
 * to build a fork that lies.  The cases then resolve the states after
 * a few tips, or state maps given by hand, and compare the result with
 * the state the spec's algorithm gives, worked out in each case's
 * comment.
 */

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mx_core.h"
#include "mx_event.h"
#include "mx_auth.h"
#include "mx_state_res.h"
#include "tap.h"


#define ALICE    "@alice:example.com"
#define BOB      "@bob:example.com"
#define CHARLIE  "@charlie:example.com"
#define EVELYN   "@evelyn:example.com"
#define ZARA     "@zara:example.com"

#define JOIN     "{\"membership\":\"join\"}"
#define LEAVE    "{\"membership\":\"leave\"}"
#define BAN      "{\"membership\":\"ban\"}"
#define TOPIC    "{\"topic\":\"t\"}"

#define DAG_MAX      128
#define DAG_STATE    32
#define DAG_NAMES    16


typedef struct {
    const char        *name;
    mx_event_t        *ev;
    mx_state_entry_t  *state;       /* after it; strings borrowed from events */
    size_t             nstate;
} dag_node_t;


typedef struct {
    tap_t                    *t;
    const mx_room_version_t  *v;
    dag_node_t                nodes[DAG_MAX];
    size_t                    n;
    int64_t                   ts;
    int                       broken;   /* a step failed: the case says so */
    unsigned                  fetches;
    const char               *rejected; /* names of rejected events */
} dag_t;


static const mx_event_t *dag_fetch(void *data, const char *event_id);
static int dag_rejected(void *data, const char *event_id);
static void dag_init(dag_t *d, tap_t *t, const char *version);
static void dag_free(dag_t *d);
static dag_node_t *dag_find(dag_t *d, const char *name);
static size_t dag_split(const char *names, char buf[256],
    const char *out[DAG_NAMES]);
static dag_node_t *dag_add(dag_t *d, const char *name, const char *type,
    const char *state_key, const char *sender, const char *content,
    const char *prev, const char *auth, int64_t ts);
static int dag_resolve(dag_t *d, mx_state_entry_t **sets, size_t *sizes,
    size_t nsets, mx_state_entry_t **out, size_t *nout);
static mx_state_entry_t *dag_state_of(dag_t *d, const char *names,
    size_t *n);
static int dag_expect(dag_t *d, const mx_state_entry_t *got, size_t ngot,
    const char *expected, const char *what);
static void dag_check_tips(dag_t *d, const char *tips, const char *expected,
    const char *what);
static void dag_check_sets(dag_t *d, const char *set1, const char *set2,
    const char *expected, const char *what);
static void dag_base(dag_t *d);

static void test_api(tap_t *t);
static void test_ban_vs_join(tap_t *t, const char *version);
static void test_power_forks(tap_t *t, const char *version);
static void test_power_ties(tap_t *t);
static void test_malicious_reset(tap_t *t, const char *version);
static void test_topics(tap_t *t);
static void test_topic_ties(tap_t *t, const char *version);
static void test_join_rules(tap_t *t, const char *version);
static void test_direct_auth_edges(tap_t *t, const char *version,
    const char *expected);
static void test_unconflicted(tap_t *t, const char *version);
static void test_v21_empty_start(tap_t *t, const char *version);
static void test_v21_subgraph(tap_t *t, const char *version);
static void test_deep_chain(tap_t *t, const char *version);


int
main(void)
{
    tap_t  t = { 0, 0 };

    test_api(&t);
    test_ban_vs_join(&t, "11");
    test_ban_vs_join(&t, "12");
    test_power_forks(&t, "11");
    test_power_forks(&t, "12");
    test_power_ties(&t);
    test_malicious_reset(&t, "11");
    test_malicious_reset(&t, "12");
    test_topics(&t);
    test_topic_ties(&t, "11");
    test_topic_ties(&t, "12");
    test_join_rules(&t, "11");
    test_join_rules(&t, "12");
    test_direct_auth_edges(&t, "11", "CREATE JR1 MA2 IMB IMC TB P1");
    test_direct_auth_edges(&t, "12", "CREATE JR2 MA2 IMB IMC TB P1");
    test_unconflicted(&t, "11");
    test_unconflicted(&t, "12");
    test_v21_empty_start(&t, "11");
    test_v21_empty_start(&t, "12");
    test_v21_subgraph(&t, "11");
    test_v21_subgraph(&t, "12");
    test_deep_chain(&t, "11");
    test_deep_chain(&t, "12");

    return tap_done(&t);
}


/* the DAG builder */

static const mx_event_t *
dag_fetch(void *data, const char *event_id)
{
    size_t  i;
    dag_t  *d;

    d = data;
    d->fetches++;

    for (i = 0; i < d->n; i++) {
        if (strcmp(d->nodes[i].ev->event_id, event_id) == 0) {
            return d->nodes[i].ev;
        }
    }

    return NULL;
}


static int
dag_rejected(void *data, const char *event_id)
{
    char         buf[256];
    size_t       i, n;
    dag_t       *d;
    const char  *w[DAG_NAMES];

    d = data;
    n = dag_split(d->rejected, buf, w);

    for (i = 0; i < n; i++) {
        if (strcmp(dag_find(d, w[i])->ev->event_id, event_id) == 0) {
            return 1;
        }
    }

    return 0;
}


static void
dag_init(dag_t *d, tap_t *t, const char *version)
{
    memset(d, 0, sizeof(dag_t));
    d->t = t;
    d->v = mx_room_version_find(version, strlen(version));
    d->ts = 1000;
}


static void
dag_free(dag_t *d)
{
    size_t  i;

    for (i = 0; i < d->n; i++) {
        mx_event_free(d->nodes[i].ev);
        free(d->nodes[i].state);
    }

    d->n = 0;
}


static dag_node_t *
dag_find(dag_t *d, const char *name)
{
    size_t  i;

    for (i = 0; i < d->n; i++) {
        if (strcmp(d->nodes[i].name, name) == 0) {
            return &d->nodes[i];
        }
    }

    tap_diag("no event named %s", name);
    d->broken = 1;

    return NULL;
}


/* splits "A B C" into words, in buf */

static size_t
dag_split(const char *names, char buf[256], const char *out[DAG_NAMES])
{
    size_t  n;
    char   *p, *save;

    n = 0;

    if (names == NULL) {
        return 0;
    }

    snprintf(buf, 256, "%s", names);

    for (p = strtok_r(buf, " ", &save); p && n < DAG_NAMES;
         p = strtok_r(NULL, " ", &save))
    {
        out[n++] = p;
    }

    return n;
}


/*
 * Adds an event after the events named by prev.  auth names its auth
 * events, or NULL for the auth events selection over the state before
 * it.  ts 0: one more than the last.  In a v12 room, power levels never
 * list the creator and nothing cites the create event.
 */

static dag_node_t *
dag_add(dag_t *d, const char *name, const char *type, const char *state_key,
    const char *sender, const char *content, const char *prev,
    const char *auth, int64_t ts)
{
    int                 rc;
    char                buf[256];
    size_t              i, j, np, na, nt, nbefore;
    int64_t             depth;
    json_t             *pdu, *c, *prevs, *auths;
    mx_err_t            err;
    dag_node_t         *node, *p, *pn[DAG_NAMES];
    mx_event_t         *ev;
    const char         *names[DAG_NAMES];
    mx_auth_key_t       keys[MX_AUTH_TYPES_MAX];
    mx_state_entry_t   *before, *sets[DAG_NAMES], *res;
    size_t              sizes[DAG_NAMES], nres;

    if (d->broken || d->n == DAG_MAX) {
        d->broken = 1;
        return NULL;
    }

    c = json_loads(content, 0, NULL);
    if (c == NULL) {
        tap_diag("%s: bad content %s", name, content);
        d->broken = 1;
        return NULL;
    }

    if (d->v->privileged_creators && strcmp(type, "m.room.power_levels") == 0)
    {
        json_object_del(json_object_get(c, "users"), ALICE);
    }

    /* the state before it */

    np = dag_split(prev, buf, names);
    depth = 0;
    prevs = json_array();

    for (i = 0; i < np; i++) {
        pn[i] = dag_find(d, names[i]);
        if (pn[i] == NULL) {
            json_decref(c);
            json_decref(prevs);
            return NULL;
        }

        json_array_append_new(prevs, json_string(pn[i]->ev->event_id));
        sets[i] = pn[i]->state;
        sizes[i] = pn[i]->nstate;

        if (pn[i]->ev->depth + 1 > depth) {
            depth = pn[i]->ev->depth + 1;
        }
    }

    before = NULL;
    nbefore = 0;

    if (np == 1) {
        before = malloc((pn[0]->nstate + 1) * sizeof(mx_state_entry_t));
        memcpy(before, pn[0]->state, pn[0]->nstate * sizeof(mx_state_entry_t));
        nbefore = pn[0]->nstate;

    } else if (np > 1) {
        if (dag_resolve(d, sets, sizes, np, &res, &nres) != MX_OK) {
            json_decref(c);
            json_decref(prevs);
            return NULL;
        }

        before = res;
        nbefore = nres;
    }

    pdu = json_pack("{s:s, s:s, s:o, s:o, s:[], s:I, s:I, s:{}, s:{}}",
                    "type", type, "sender", sender, "content", c,
                    "prev_events", prevs, "auth_events",
                    "depth", (json_int_t) depth,
                    "origin_server_ts", (json_int_t) (ts ? ts : d->ts + 1),
                    "hashes", "signatures");

    if (ts == 0) {
        d->ts++;
    }

    if (state_key != NULL) {
        json_object_set_new(pdu, "state_key", json_string(state_key));
    }

    if (d->n > 0) {
        json_object_set_new(pdu, "room_id",
                            json_string(d->nodes[0].ev->room_id));

    } else if (!d->v->room_id_from_create) {
        json_object_set_new(pdu, "room_id", json_string("!r:example.com"));
    }

    auths = json_object_get(pdu, "auth_events");

    if (auth != NULL) {
        na = dag_split(auth, buf, names);

        for (i = 0; i < na; i++) {
            p = dag_find(d, names[i]);

            if (p == NULL) {
                goto failed;
            }

            json_array_append_new(auths, json_string(p->ev->event_id));
        }

    } else if (d->n > 0) {
        rc = mx_event_from_json(pdu, d->v, &ev, &err);
        if (rc != MX_OK) {
            tap_diag("%s: %s", name, err.msg);
            goto failed;
        }

        rc = mx_auth_types_for_event(ev, keys, MX_AUTH_TYPES_MAX, &nt);

        for (i = 0; rc == MX_OK && i < nt; i++) {
            for (j = 0; j < nbefore; j++) {
                if (strcmp(before[j].type, keys[i].type) == 0
                    && strcmp(before[j].state_key, keys[i].state_key) == 0)
                {
                    json_array_append_new(auths,
                                          json_string(before[j].event_id));
                }
            }
        }

        mx_event_free(ev);
    }

    if (mx_event_from_json(pdu, d->v, &ev, &err) != MX_OK) {
        tap_diag("%s: %s", name, err.msg);
        goto failed;
    }

    json_decref(pdu);

    node = &d->nodes[d->n++];
    node->name = name;
    node->ev = ev;

    /* the state after it */

    node->state = malloc((nbefore + 1) * sizeof(mx_state_entry_t));
    node->nstate = 0;

    for (i = 0; i < nbefore; i++) {
        if (state_key && strcmp(before[i].type, type) == 0
            && strcmp(before[i].state_key, state_key) == 0)
        {
            continue;
        }

        /* the resolver's strings die with its block: point into events */
        p = NULL;
        for (j = 0; j < d->n; j++) {
            if (strcmp(d->nodes[j].ev->event_id, before[i].event_id) == 0) {
                p = &d->nodes[j];
            }
        }

        node->state[node->nstate].type = p->ev->type;
        node->state[node->nstate].state_key = p->ev->state_key;
        node->state[node->nstate++].event_id = p->ev->event_id;
    }

    if (state_key) {
        node->state[node->nstate].type = ev->type;
        node->state[node->nstate].state_key = ev->state_key;
        node->state[node->nstate++].event_id = ev->event_id;
    }

    free(before);

    return node;

failed:

    json_decref(pdu);
    free(before);
    d->broken = 1;

    return NULL;
}


static int
dag_resolve(dag_t *d, mx_state_entry_t **sets, size_t *sizes, size_t nsets,
    mx_state_entry_t **out, size_t *nout)
{
    mx_err_t          err;
    mx_event_store_t  store;

    store.fetch = dag_fetch;
    store.rejected = dag_rejected;
    store.data = d;

    if (mx_state_resolve(d->v, (const mx_state_entry_t *const *) sets, sizes,
                         nsets, &store, out, nout, &err)
        != MX_OK)
    {
        tap_diag("resolution failed: %s", err.msg);
        d->broken = 1;
        return MX_ERROR;
    }

    return MX_OK;
}


static mx_state_entry_t *
dag_state_of(dag_t *d, const char *names, size_t *n)
{
    char               buf[256];
    size_t             i, k;
    dag_node_t        *p;
    const char        *w[DAG_NAMES];
    mx_state_entry_t  *s;

    k = dag_split(names, buf, w);
    s = malloc((k + 1) * sizeof(mx_state_entry_t));
    *n = 0;

    for (i = 0; i < k; i++) {
        p = dag_find(d, w[i]);

        if (p == NULL) {
            continue;
        }

        s[*n].type = p->ev->type;
        s[*n].state_key = p->ev->state_key;
        s[(*n)++].event_id = p->ev->event_id;
    }

    return s;
}


static const char *
dag_name_of(dag_t *d, const char *event_id)
{
    size_t  i;

    for (i = 0; i < d->n; i++) {
        if (strcmp(d->nodes[i].ev->event_id, event_id) == 0) {
            return d->nodes[i].name;
        }
    }

    return event_id;
}


/* the resolved state is exactly the events named by expected */

static int
dag_expect(dag_t *d, const mx_state_entry_t *got, size_t ngot,
    const char *expected, const char *what)
{
    int                ok;
    char               buf[256], line[1024];
    size_t             i, j, nwant, len;
    mx_state_entry_t  *want;

    want = dag_state_of(d, expected, &nwant);
    ok = !d->broken && nwant == ngot;

    for (i = 0; ok && i < nwant; i++) {
        for (j = 0; j < ngot; j++) {
            if (strcmp(want[i].type, got[j].type) == 0
                && strcmp(want[i].state_key, got[j].state_key) == 0
                && strcmp(want[i].event_id, got[j].event_id) == 0)
            {
                break;
            }
        }

        ok = (j < ngot);
    }

    /* sorted by type, then state key */
    for (i = 1; ok && i < ngot; i++) {
        ok = strcmp(got[i - 1].type, got[i].type) < 0
             || (strcmp(got[i - 1].type, got[i].type) == 0
                 && strcmp(got[i - 1].state_key, got[i].state_key) < 0);
    }

    tap_ok(d->t, ok, "v%s %s", d->v->id, what);

    if (!ok) {
        len = 0;
        line[0] = '\0';

        for (i = 0; i < ngot && len < sizeof(line) - 64; i++) {
            len += snprintf(line + len, sizeof(line) - len, " %s",
                            dag_name_of(d, got[i].event_id));
        }

        tap_diag("  got:     %s", line);
        tap_diag("  expected: %s", expected);
        (void) buf;
    }

    free(want);

    return ok;
}


static void
dag_check_tips(dag_t *d, const char *tips, const char *expected,
    const char *what)
{
    char               buf[256];
    size_t             i, n, sizes[DAG_NAMES], nout;
    dag_node_t        *p;
    const char        *w[DAG_NAMES];
    mx_state_entry_t  *sets[DAG_NAMES], *out;

    n = dag_split(tips, buf, w);

    for (i = 0; i < n; i++) {
        p = dag_find(d, w[i]);

        if (p == NULL) {
            tap_ok(d->t, 0, "v%s %s", d->v->id, what);
            return;
        }

        sets[i] = p->state;
        sizes[i] = p->nstate;
    }

    if (d->broken || dag_resolve(d, sets, sizes, n, &out, &nout) != MX_OK) {
        tap_ok(d->t, 0, "v%s %s", d->v->id, what);
        return;
    }

    dag_expect(d, out, nout, expected, what);
    free(out);
}


static void
dag_check_sets(dag_t *d, const char *set1, const char *set2,
    const char *expected, const char *what)
{
    size_t             sizes[2], nout;
    mx_state_entry_t  *sets[2], *out;

    sets[0] = dag_state_of(d, set1, &sizes[0]);
    sets[1] = dag_state_of(d, set2, &sizes[1]);

    if (!d->broken && dag_resolve(d, sets, sizes, 2, &out, &nout) == MX_OK) {
        dag_expect(d, out, nout, expected, what);
        free(out);

    } else {
        tap_ok(d->t, 0, "v%s %s", d->v->id, what);
    }

    free(sets[0]);
    free(sets[1]);
}


/*
 * The room most cases start from: Alice creates it and is its admin,
 * makes it public, and Bob, Charlie and Zara join.
 */

#define BASE  "CREATE IMA IPOWER IJR IMB IMC IMZ"

static void
dag_base(dag_t *d)
{
    char  create[64];

    snprintf(create, sizeof(create), "{\"room_version\":\"%s\"}", d->v->id);

    dag_add(d, "CREATE", "m.room.create", "", ALICE, create, NULL, NULL, 0);
    dag_add(d, "IMA", "m.room.member", ALICE, ALICE, JOIN, "CREATE", NULL, 0);
    dag_add(d, "IPOWER", "m.room.power_levels", "", ALICE,
            "{\"users\":{\"" ALICE "\":100}}", "IMA", NULL, 0);
    dag_add(d, "IJR", "m.room.join_rules", "", ALICE,
            "{\"join_rule\":\"public\"}", "IPOWER", NULL, 0);
    dag_add(d, "IMB", "m.room.member", BOB, BOB, JOIN, "IJR", NULL, 0);
    dag_add(d, "IMC", "m.room.member", CHARLIE, CHARLIE, JOIN, "IMB", NULL,
            0);
    dag_add(d, "IMZ", "m.room.member", ZARA, ZARA, JOIN, "IMC", NULL, 0);
}


/* the API itself: trivial inputs and refusals */

static void
test_api(tap_t *t)
{
    dag_t             d;
    size_t            sizes[2], nout;
    mx_err_t          err;
    mx_event_store_t  store;
    mx_state_entry_t *sets[2], *out, bad[2];

    dag_init(&d, t, "11");
    dag_base(&d);

    store.fetch = dag_fetch;
    store.rejected = NULL;
    store.data = &d;

    /* no set: the empty state */
    out = NULL;
    tap_ok(t, mx_state_resolve(d.v, NULL, NULL, 0, &store, &out, &nout, &err)
              == MX_OK && nout == 0,
           "no state set resolves to the empty state");
    free(out);

    /* one set: itself, sorted */
    sets[0] = dag_find(&d, "IMZ")->state;
    sizes[0] = dag_find(&d, "IMZ")->nstate;

    if (mx_state_resolve(d.v, (const mx_state_entry_t *const *) sets, sizes,
                         1, &store, &out, &nout, &err)
        == MX_OK)
    {
        dag_expect(&d, out, nout, BASE, "one state set resolves to itself");
        free(out);

    } else {
        tap_ok(t, 0, "one state set resolves to itself: %s", err.msg);
    }

    /* the same set twice: nothing conflicts, nothing is fetched twice */
    sets[1] = sets[0];
    sizes[1] = sizes[0];
    d.fetches = 0;

    if (mx_state_resolve(d.v, (const mx_state_entry_t *const *) sets, sizes,
                         2, &store, &out, &nout, &err)
        == MX_OK)
    {
        dag_expect(&d, out, nout, BASE, "two equal state sets resolve to it");
        tap_ok(t, d.fetches == sizes[0], "each event fetched once (%u)",
               d.fetches);
        free(out);

    } else {
        tap_ok(t, 0, "two equal state sets: %s", err.msg);
    }

    /* a key twice in one set */
    bad[0] = sets[0][0];
    bad[1] = sets[0][0];
    sets[1] = bad;
    sizes[1] = 2;
    err.msg[0] = '\0';

    tap_ok(t, mx_state_resolve(d.v, (const mx_state_entry_t *const *) sets,
                               sizes, 2, &store, &out, &nout, &err)
              == MX_ERROR && strstr(err.msg, "twice") != NULL,
           "a key twice in a set is refused: %s", err.msg);

    /* an event that is not the state event of its entry */
    bad[0] = sets[0][0];
    bad[0].type = "m.room.topic";
    sizes[1] = 1;
    err.msg[0] = '\0';

    tap_ok(t, mx_state_resolve(d.v, (const mx_state_entry_t *const *) sets,
                               sizes, 2, &store, &out, &nout, &err)
              == MX_ERROR && strstr(err.msg, "not the state event") != NULL,
           "an entry naming another key's event is refused: %s", err.msg);

    /* an event the store lacks */
    bad[0] = sets[0][0];
    bad[0].event_id = "$missing";
    err.msg[0] = '\0';

    tap_ok(t, mx_state_resolve(d.v, (const mx_state_entry_t *const *) sets,
                               sizes, 2, &store, &out, &nout, &err)
              == MX_ERROR && strstr(err.msg, "not in the store") != NULL,
           "an event missing from the store is an error: %s", err.msg);

    dag_free(&d);
}


/*
 * Alice bans Evelyn on one fork while Evelyn joins the public room on the
 * other, earlier.  The ban is a power event: it is authorised first (step
 * 2), against the state before it, then Evelyn's join fails against the
 * partial state, in which she is banned (step 4).  Whatever the
 * timestamps, the ban wins.
 */

static void
test_ban_vs_join(tap_t *t, const char *version)
{
    dag_t  d;

    dag_init(&d, t, version);
    dag_base(&d);

    dag_add(&d, "JE", "m.room.member", EVELYN, EVELYN, JOIN, "IMZ", NULL, 0);
    dag_add(&d, "BAN", "m.room.member", EVELYN, ALICE, BAN, "IMZ", NULL, 0);

    dag_check_tips(&d, "JE BAN", BASE " BAN", "ban vs. join race: the ban wins");
    dag_check_tips(&d, "BAN JE", BASE " BAN",
                   "ban vs. join race: the order of the sets does not matter");

    /* a message merging both forks carries the resolved state on */
    dag_add(&d, "MSG", "m.room.message", NULL, ZARA, "{\"body\":\"hi\"}",
            "JE BAN", NULL, 0);
    dag_check_tips(&d, "MSG", BASE " BAN", "ban vs. join race: after a merge");

    dag_free(&d);
}


/*
 * Power level changes on two forks.  Alice (100) made Bob a moderator
 * (PA).  On one fork Alice makes Charlie a moderator (PB1); on the other
 * Bob makes Zara one (PB2).  Both were allowed on their fork.  The
 * power sort puts Alice's first (higher sender level); then Bob's is
 * checked against Alice's, which it would change by removing Charlie,
 * whose level equals Bob's: refused.
 */

static void
test_power_forks(tap_t *t, const char *version)
{
    dag_t  d;

    dag_init(&d, t, version);
    dag_base(&d);

    dag_add(&d, "PA", "m.room.power_levels", "", ALICE,
            "{\"users\":{\"" ALICE "\":100,\"" BOB "\":50}}", "IMZ", NULL, 0);
    dag_add(&d, "PB2", "m.room.power_levels", "", BOB,
            "{\"users\":{\"" ALICE "\":100,\"" BOB "\":50,\"" ZARA "\":50}}",
            "PA", NULL, 0);
    dag_add(&d, "PB1", "m.room.power_levels", "", ALICE,
            "{\"users\":{\"" ALICE "\":100,\"" BOB "\":50,\"" CHARLIE
            "\":50}}", "PA", NULL, 0);

    dag_check_tips(&d, "PB1 PB2",
                   "CREATE IMA PB1 IJR IMB IMC IMZ",
                   "power levels on two forks: the higher sender's wins");

    dag_free(&d);
}


/*
 * Equal power: the power sort falls back on origin_server_ts, then on
 * the event ID.  Alice and Bob are both 100 (v11 only: in v12 Alice, the
 * creator, outranks everyone).  Each adds a user at 10 on its own fork;
 * the first applied is kept only until the second, which may remove its
 * entry (10 < 100), replaces it: the later one wins.
 */

static void
test_power_ties(tap_t *t)
{
    dag_t        d;
    const char  *win;

    dag_init(&d, t, "11");
    dag_base(&d);

    dag_add(&d, "PA", "m.room.power_levels", "", ALICE,
            "{\"users\":{\"" ALICE "\":100,\"" BOB "\":100}}", "IMZ", NULL, 0);
    dag_add(&d, "P1", "m.room.power_levels", "", ALICE,
            "{\"users\":{\"" ALICE "\":100,\"" BOB "\":100,\"" CHARLIE
            "\":10}}", "PA", NULL, 5000);
    dag_add(&d, "P2", "m.room.power_levels", "", BOB,
            "{\"users\":{\"" ALICE "\":100,\"" BOB "\":100,\"" ZARA "\":10}}",
            "PA", NULL, 6000);
    dag_add(&d, "P3", "m.room.power_levels", "", BOB,
            "{\"users\":{\"" ALICE "\":100,\"" BOB "\":100,\"" EVELYN
            "\":10}}", "PA", NULL, 4000);
    dag_add(&d, "P4", "m.room.power_levels", "", BOB,
            "{\"users\":{\"" ALICE "\":100,\"" BOB "\":100,\"" EVELYN
            "\":20}}", "PA", NULL, 5000);

    dag_check_tips(&d, "P1 P2", "CREATE IMA P2 IJR IMB IMC IMZ",
                   "equal power: the later timestamp is applied last");
    dag_check_tips(&d, "P2 P1", "CREATE IMA P2 IJR IMB IMC IMZ",
                   "equal power: whatever the order of the sets");
    dag_check_tips(&d, "P1 P3", "CREATE IMA P1 IJR IMB IMC IMZ",
                   "equal power: Alice's is later here, and wins");

    /* P1 and P4: same level, same timestamp: the greater ID is last */
    win = strcmp(dag_find(&d, "P1")->ev->event_id,
                 dag_find(&d, "P4")->ev->event_id) > 0 ? "P1" : "P4";

    dag_check_tips(&d, "P1 P4",
                   strcmp(win, "P1") == 0 ? "CREATE IMA P1 IJR IMB IMC IMZ"
                                          : "CREATE IMA P4 IJR IMB IMC IMZ",
                   "equal power and timestamp: the greater event ID wins");

    dag_free(&d);
}


/*
 * A malicious fork.  Alice demotes Bob (PA2).  Bob, forking from before
 * (PA), backdates a power levels event making Evelyn a moderator (PB),
 * and a topic (TB).  Bob's events are older, but Alice outranks him: her
 * demotion is applied first, Bob's power levels then fail against it,
 * and so does his topic, whose mainline position only says it comes
 * first.  Alice's topic stays.
 */

static void
test_malicious_reset(tap_t *t, const char *version)
{
    dag_t  d;

    dag_init(&d, t, version);
    dag_base(&d);

    dag_add(&d, "T0", "m.room.topic", "", ALICE, TOPIC, "IMZ", NULL, 0);
    dag_add(&d, "PA", "m.room.power_levels", "", ALICE,
            "{\"users\":{\"" ALICE "\":100,\"" BOB "\":50}}", "T0", NULL, 0);
    dag_add(&d, "PA2", "m.room.power_levels", "", ALICE,
            "{\"users\":{\"" ALICE "\":100}}", "PA", NULL, 0);
    dag_add(&d, "PB", "m.room.power_levels", "", BOB,
            "{\"users\":{\"" ALICE "\":100,\"" BOB "\":50,\"" EVELYN
            "\":50}}", "PA", NULL, 10);
    dag_add(&d, "TB", "m.room.topic", "", BOB, "{\"topic\":\"pwned\"}", "PB",
            NULL, 11);

    dag_check_tips(&d, "PA2 TB", "CREATE IMA PA2 IJR IMB IMC IMZ T0",
                   "a backdated fork cannot undo a demotion");

    dag_free(&d);
}


/*
 * Topics: the mainline ordering (the well-known cases of the algorithm's
 * reference tests), timestamps only between events of the same mainline
 * position.
 */

static void
test_topics(tap_t *t)
{
    dag_t  d;

    /*
     * T1, PA1 (Bob 50), T2 by Alice; PA2 demotes Bob; on a fork from PA1,
     * Bob re-sends the power levels (PB) and a topic (T3).  PA2 outranks
     * PB, which then fails (Bob is 0); T2 and T3 are both at mainline
     * position 1 (PA1; PB is off the mainline, PA1 under it on it), T2
     * is older and T3 fails: PA2, T2.
     */

    dag_init(&d, t, "11");
    dag_base(&d);
    dag_add(&d, "T1", "m.room.topic", "", ALICE, TOPIC, "IMZ", NULL, 0);
    dag_add(&d, "PA1", "m.room.power_levels", "", ALICE,
            "{\"users\":{\"" ALICE "\":100,\"" BOB "\":50}}", "T1", NULL, 0);
    dag_add(&d, "PB", "m.room.power_levels", "", BOB,
            "{\"users\":{\"" ALICE "\":100,\"" BOB "\":50}}", "PA1", NULL, 0);
    dag_add(&d, "T2", "m.room.topic", "", ALICE, TOPIC, "PA1", NULL, 0);
    dag_add(&d, "PA2", "m.room.power_levels", "", ALICE,
            "{\"users\":{\"" ALICE "\":100,\"" BOB "\":0}}", "T2", NULL, 0);
    dag_add(&d, "T3", "m.room.topic", "", BOB, TOPIC, "PB", NULL, 0);

    dag_check_tips(&d, "PA2 T3", "CREATE IMA IJR IMB IMC IMZ PA2 T2",
                   "topic: the demotion wins and the older topic with it");

    /*
     * Then Zara's message merges the forks and Alice sets T4 after it:
     * T4 cites PA2 (position 0), T2 cites PA1 (position 1): T4 last.
     */

    dag_add(&d, "MZ1", "m.room.message", NULL, ZARA, "{\"body\":\"x\"}",
            "PA2 T3", NULL, 0);
    dag_add(&d, "T4", "m.room.topic", "", ALICE, TOPIC, "MZ1", NULL, 0);

    dag_check_tips(&d, "T4 MZ1", "CREATE IMA IJR IMB IMC IMZ PA2 T4",
                   "topic: the topic under the newer power levels wins");

    dag_free(&d);

    /*
     * The mainline decides before timestamps.  PA2 makes power levels
     * need 100; Bob's T3 follows it, Alice's T4 follows Bob's PB (which
     * then fails) and is newer.  T4 cites PB, under which PA1 is at
     * position 1, T3 cites PA2 at 0: T4 is applied first, T3 replaces it.
     */

    dag_init(&d, t, "11");
    dag_base(&d);
    dag_add(&d, "T1", "m.room.topic", "", ALICE, TOPIC, "IMZ", NULL, 0);
    dag_add(&d, "PA1", "m.room.power_levels", "", ALICE,
            "{\"users\":{\"" ALICE "\":100,\"" BOB "\":50}}", "T1", NULL, 0);
    dag_add(&d, "PB", "m.room.power_levels", "", BOB,
            "{\"users\":{\"" ALICE "\":100,\"" BOB "\":50}}", "PA1", NULL, 0);
    dag_add(&d, "T2", "m.room.topic", "", ALICE, TOPIC, "PA1", NULL, 0);
    dag_add(&d, "PA2", "m.room.power_levels", "", ALICE,
            "{\"users\":{\"" ALICE "\":100,\"" BOB "\":50},"
            "\"events\":{\"m.room.power_levels\":100}}", "T2", NULL, 0);
    dag_add(&d, "T3", "m.room.topic", "", BOB, TOPIC, "PA2", NULL, 0);
    dag_add(&d, "T4", "m.room.topic", "", ALICE, TOPIC, "PB", NULL, 0);

    dag_check_tips(&d, "T3 T4", "CREATE IMA IJR IMB IMC IMZ PA2 T3",
                   "topic: mainline position before timestamp");

    dag_free(&d);

    /*
     * A topic reset: Alice bans Bob after his topic T2.  On the other
     * fork the topic is still T1 and the power levels IPOWER.  The ban
     * and PA pass, Bob's join is replayed before his ban; then T1
     * (position 1) and T2 (position 0): Bob is banned, T1 stays.
     */

    dag_init(&d, t, "11");
    dag_base(&d);
    dag_add(&d, "T1", "m.room.topic", "", ALICE, TOPIC, "IMZ", NULL, 0);
    dag_add(&d, "PA", "m.room.power_levels", "", ALICE,
            "{\"users\":{\"" ALICE "\":100,\"" BOB "\":50}}", "T1", NULL, 0);
    dag_add(&d, "T2", "m.room.topic", "", BOB, TOPIC, "PA", NULL, 0);
    dag_add(&d, "MB", "m.room.member", BOB, ALICE, BAN, "T2", NULL, 0);

    dag_check_tips(&d, "MB T1", "CREATE IMA PA IJR MB IMC IMZ T1",
                   "topic: a ban takes the banned user's topic away");

    dag_free(&d);

    /*
     * Off-topic power levels: Bob adds Charlie at 50, Charlie sets
     * himself to 0, against the fork at PA: the chain PA, PB, PC is
     * replayed in that order and all pass.
     */

    dag_init(&d, t, "11");
    dag_base(&d);
    dag_add(&d, "PA", "m.room.power_levels", "", ALICE,
            "{\"users\":{\"" ALICE "\":100,\"" BOB "\":50}}", "IMZ", NULL, 0);
    dag_add(&d, "PB", "m.room.power_levels", "", BOB,
            "{\"users\":{\"" ALICE "\":100,\"" BOB "\":50,\"" CHARLIE
            "\":50}}", "PA", NULL, 0);
    dag_add(&d, "PC", "m.room.power_levels", "", CHARLIE,
            "{\"users\":{\"" ALICE "\":100,\"" BOB "\":50,\"" CHARLIE
            "\":0}}", "PB", NULL, 0);

    dag_check_tips(&d, "PC PA", "CREATE IMA PC IJR IMB IMC IMZ",
                   "power levels: a chain of changes is replayed in order");

    dag_free(&d);
}


/*
 * Two topics by Alice on two forks, citing the same power levels, with
 * the same timestamp: same mainline position, same timestamp, so the
 * smaller event ID is applied first and the greater one wins.  With
 * different timestamps, the later one wins whatever the IDs.
 */

static void
test_topic_ties(tap_t *t, const char *version)
{
    dag_t        d;
    const char  *expect;

    dag_init(&d, t, version);
    dag_base(&d);

    dag_add(&d, "TA", "m.room.topic", "", ALICE, "{\"topic\":\"a\"}", "IMZ",
            NULL, 7000);
    dag_add(&d, "TB", "m.room.topic", "", ALICE, "{\"topic\":\"b\"}", "IMZ",
            NULL, 7000);
    dag_add(&d, "TC", "m.room.topic", "", ALICE, "{\"topic\":\"c\"}", "IMZ",
            NULL, 6999);

    expect = strcmp(dag_find(&d, "TA")->ev->event_id,
                    dag_find(&d, "TB")->ev->event_id) > 0
             ? BASE " TA" : BASE " TB";

    dag_check_tips(&d, "TA TB", expect,
                   "same position and timestamp: the greater event ID wins");
    dag_check_tips(&d, "TB TA", expect,
                   "same position and timestamp: whatever the set order");
    dag_check_tips(&d, "TC TA", BASE " TA",
                   "same position: the later timestamp wins");
    dag_check_tips(&d, "TA TB TC", expect, "three forks");

    dag_free(&d);
}


/*
 * Join rules change vs. join: Alice makes the room invite-only while
 * Evelyn joins on another fork.  The join rules are a power event,
 * applied first; the join then fails.  Zara's leave on a third fork is
 * not a power event (her own) and is kept.
 */

static void
test_join_rules(tap_t *t, const char *version)
{
    dag_t  d;

    dag_init(&d, t, version);
    dag_base(&d);

    dag_add(&d, "JR", "m.room.join_rules", "", ALICE,
            "{\"join_rule\":\"invite\"}", "IMZ", NULL, 0);
    dag_add(&d, "ME", "m.room.member", EVELYN, EVELYN, JOIN, "IMZ", NULL, 0);
    dag_add(&d, "LZ", "m.room.member", ZARA, ZARA, LEAVE, "IMZ", NULL, 0);

    dag_check_tips(&d, "ME JR", "CREATE IMA IPOWER JR IMB IMC IMZ",
                   "join rules vs. join: the join is refused");
    dag_check_tips(&d, "ME JR LZ", "CREATE IMA IPOWER JR IMB IMC LZ",
                   "join rules vs. join vs. leave");

    dag_free(&d);
}


/*
 * Step 1 follows an auth event only while it is in the full conflicted
 * set, as Synapse and ruma do: Alice's JR2 reaches Charlie's JR1 only
 * through MA2, which is not conflicted, so in v11 the two join rules are
 * ordered by power (Alice's first) and Charlie's public room wins.  In
 * v12 the conflicted state subgraph brings MA2 in, and JR2 follows JR1.
 */

static void
test_direct_auth_edges(tap_t *t, const char *version, const char *expected)
{
    dag_t  d;

    dag_init(&d, t, version);
    dag_base(&d);

    dag_add(&d, "P1", "m.room.power_levels", "", ALICE,
            "{\"users\":{\"" ALICE "\":100},"
            "\"events\":{\"m.room.join_rules\":0}}", "IMZ", NULL, 0);
    dag_add(&d, "JR1", "m.room.join_rules", "", CHARLIE,
            "{\"join_rule\":\"public\"}", "P1", NULL, 0);
    dag_add(&d, "MA2", "m.room.member", ALICE, ALICE,
            "{\"membership\":\"join\",\"displayname\":\"A\"}", "JR1",
            NULL, 0);
    dag_add(&d, "JR2", "m.room.join_rules", "", ALICE,
            "{\"join_rule\":\"invite\"}", "MA2", NULL, 0);
    dag_add(&d, "TB", "m.room.member", ZARA, ZARA, LEAVE, "MA2", NULL, 0);

    dag_check_tips(&d, "JR2 TB", expected,
                   "auth edges through unconflicted events are not followed");

    dag_free(&d);
}


/*
 * Unconflicted state is kept even when it would not pass the checks
 * against the resolved state: Bob, a moderator, set the topic (TB) on
 * the common trunk; then Alice demotes him on one fork while Charlie
 * names the room on the other.  The power levels and the name are
 * conflicted (missing from one fork); the topic is not and stays Bob's.
 */

static void
test_unconflicted(tap_t *t, const char *version)
{
    dag_t  d;

    dag_init(&d, t, version);
    dag_base(&d);

    dag_add(&d, "PA", "m.room.power_levels", "", ALICE,
            "{\"users\":{\"" ALICE "\":100,\"" BOB "\":50},"
            "\"events\":{\"m.room.name\":0}}", "IMZ", NULL, 0);
    dag_add(&d, "TB", "m.room.topic", "", BOB, TOPIC, "PA", NULL, 0);
    dag_add(&d, "PD", "m.room.power_levels", "", ALICE,
            "{\"users\":{\"" ALICE "\":100},"
            "\"events\":{\"m.room.name\":0}}", "TB", NULL, 0);
    dag_add(&d, "NC", "m.room.name", "", CHARLIE, "{\"name\":\"n\"}", "TB",
            NULL, 0);

    dag_check_tips(&d, "PD NC", "CREATE IMA PD IJR IMB IMC IMZ TB NC",
                   "unconflicted state is kept, conflicted keys merged");

    dag_free(&d);
}


/*
 * Where v2 and v2.1 differ (1): starting the iterative auth checks from
 * the unconflicted state map (v2) or from nothing (v2.1).
 *
 * Alice made the room public (JR1), then invite-only (JR2), then left
 * (MA2).  A lying server gives a state with the old join rules.  The
 * join rules conflict, nothing else.  v2 checks JR1 and JR2 against the
 * unconflicted state, where Alice has left: both fail and the room is
 * left with no join rules at all (a state reset).  v2.1 checks them
 * against their own auth events, where Alice is joined: JR2, the later,
 * wins.
 */

static void
test_v21_empty_start(tap_t *t, const char *version)
{
    dag_t  d;

    dag_init(&d, t, version);

    dag_add(&d, "CREATE", "m.room.create", "", ALICE,
            !strcmp(version, "12") ? "{\"room_version\":\"12\"}"
                                   : "{\"room_version\":\"11\"}",
            NULL, NULL, 0);
    dag_add(&d, "MA1", "m.room.member", ALICE, ALICE, JOIN, "CREATE", NULL, 0);
    dag_add(&d, "POWER", "m.room.power_levels", "", ALICE,
            "{\"users\":{\"" ALICE "\":100,\"" BOB "\":100}}", "MA1", NULL, 0);
    dag_add(&d, "JR1", "m.room.join_rules", "", ALICE,
            "{\"join_rule\":\"public\"}", "POWER", NULL, 0);
    dag_add(&d, "MB", "m.room.member", BOB, BOB, JOIN, "JR1", NULL, 0);
    dag_add(&d, "JR2", "m.room.join_rules", "", ALICE,
            "{\"join_rule\":\"invite\"}", "MB", NULL, 0);
    dag_add(&d, "MA2", "m.room.member", ALICE, ALICE, LEAVE, "JR2", NULL, 0);

    dag_check_sets(&d, "CREATE MA2 MB POWER JR2", "CREATE MA2 MB POWER JR1",
                   d.v->state_res == MX_STATE_RES_V2_1
                   ? "CREATE MA2 MB POWER JR2" : "CREATE MA2 MB POWER",
                   d.v->state_res == MX_STATE_RES_V2_1
                   ? "state res v2.1 keeps the newer join rules"
                   : "state res v2 loses the join rules (a state reset)");

    /*
     * Had Alice's join been rejected, neither fallback could use it:
     * both join rules fail in v2.1 too.
     */

    d.rejected = "MA1";
    dag_check_sets(&d, "CREATE MA2 MB POWER JR2", "CREATE MA2 MB POWER JR1",
                   "CREATE MA2 MB POWER",
                   "a rejected auth event is not used by the checks");

    dag_free(&d);
}


/*
 * Where v2 and v2.1 differ (2): the conflicted state subgraph.
 *
 * Alice promotes Bob (POWER2), Bob promotes Charlie (POWER3).  Evelyn
 * joins under POWER3 (ME1), then re-sends her join citing POWER1 (ME2,
 * a dodgy server's choice), and a state after ME2 claims POWER1.  The
 * other state, after Zara's join, has POWER3.
 *
 * v2: the full conflicted set is POWER1, POWER3, ME2, MZ and ME1 (in
 * one auth chain only).  The power sort gives POWER1, POWER3: POWER3 is
 * checked against POWER1, under which Bob is 0: refused.  The power
 * levels are reset to POWER1; ME1, ME2, MZ all sit at position 0 and
 * replay by timestamp: Evelyn's is ME2.
 *
 * v2.1: POWER2, Bob's join and the join rules lie on auth paths from
 * POWER3 (and ME2) to POWER1, so they are replayed too: POWER1, IJR,
 * POWER2, MB, POWER3 all pass and the power levels stay POWER3.  Then
 * ME2 (position 2, under POWER1) goes before ME1 and MZ (position 0):
 * Evelyn's is ME1.
 */

static void
test_v21_subgraph(tap_t *t, const char *version)
{
    dag_t  d;

    dag_init(&d, t, version);

    dag_add(&d, "CREATE", "m.room.create", "", ALICE,
            !strcmp(version, "12") ? "{\"room_version\":\"12\"}"
                                   : "{\"room_version\":\"11\"}",
            NULL, NULL, 0);
    dag_add(&d, "MA", "m.room.member", ALICE, ALICE, JOIN, "CREATE", NULL, 0);
    dag_add(&d, "POWER1", "m.room.power_levels", "", ALICE,
            "{\"users\":{\"" ALICE "\":100}}", "MA", NULL, 0);
    dag_add(&d, "JR", "m.room.join_rules", "", ALICE,
            "{\"join_rule\":\"public\"}", "POWER1", NULL, 0);
    dag_add(&d, "MB", "m.room.member", BOB, BOB, JOIN, "JR", NULL, 0);
    dag_add(&d, "MC", "m.room.member", CHARLIE, CHARLIE, JOIN, "MB", NULL, 0);
    dag_add(&d, "POWER2", "m.room.power_levels", "", ALICE,
            "{\"users\":{\"" ALICE "\":100,\"" BOB "\":50}}", "MC", NULL, 0);
    dag_add(&d, "POWER3", "m.room.power_levels", "", BOB,
            "{\"users\":{\"" ALICE "\":100,\"" BOB "\":50,\"" CHARLIE
            "\":50}}", "POWER2", NULL, 0);
    dag_add(&d, "ME1", "m.room.member", EVELYN, EVELYN, JOIN, "POWER3", NULL,
            0);

    /* the dodgy one: its power levels are the old ones */
    dag_add(&d, "ME2", "m.room.member", EVELYN, EVELYN,
            "{\"membership\":\"join\",\"displayname\":\"eve\"}", "ME1",
            d.v->room_id_from_create ? "POWER1 JR ME1"
                                     : "CREATE POWER1 JR ME1", 0);
    dag_add(&d, "MZ", "m.room.member", ZARA, ZARA, JOIN, "ME1", NULL, 0);

    if (d.v->state_res == MX_STATE_RES_V2_1) {
        dag_check_sets(&d, "CREATE MA MB MC ME2 POWER1 JR",
                       "CREATE MA MB MC MZ POWER3 JR",
                       "CREATE MA MB MC ME1 MZ POWER3 JR",
                       "state res v2.1 replays the conflicted subgraph");

    } else {
        dag_check_sets(&d, "CREATE MA MB MC ME2 POWER1 JR",
                       "CREATE MA MB MC MZ POWER3 JR",
                       "CREATE MA MB MC ME2 MZ POWER1 JR",
                       "state res v2 resets the power levels");
    }

    dag_free(&d);
}


/*
 * Long auth chains: Zara leaves and rejoins 40 times on each of two
 * forks.  Every membership of the forks is in the auth difference, none
 * is a power event; each cites the previous one.  All replay in
 * timestamp order, the last one wins; the last on fork 2 is later.
 */

static void
test_deep_chain(tap_t *t, const char *version)
{
    int          i, f;
    char         names[2][41][8], prev[16];
    dag_t        d;

    dag_init(&d, t, version);
    dag_base(&d);

    for (f = 0; f < 2; f++) {
        snprintf(prev, sizeof(prev), "IMZ");

        for (i = 0; i < 20; i++) {
            snprintf(names[f][2 * i], 8, "%c%d", 'a' + f, 2 * i);
            snprintf(names[f][2 * i + 1], 8, "%c%d", 'a' + f, 2 * i + 1);

            dag_add(&d, names[f][2 * i], "m.room.member", ZARA, ZARA, LEAVE,
                    prev, NULL, 0);
            dag_add(&d, names[f][2 * i + 1], "m.room.member", ZARA, ZARA,
                    JOIN, names[f][2 * i], NULL, 0);
            snprintf(prev, sizeof(prev), "%s", names[f][2 * i + 1]);
        }
    }

    dag_check_tips(&d, "a39 b39", "CREATE IMA IPOWER IJR IMB IMC b39",
                   "two forks of 40 membership changes each");

    dag_free(&d);
}
