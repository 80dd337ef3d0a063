/*
 * The authorisation rules, one function per rule of the list, in the
 * list's order: the first rule that decides is the one named in the
 * message, so the order of the checks is the order of the spec.
 *
 * The rules are numbered per room version by mx_auth_number(): v7 adds
 * knock, v8 the signature rule 4.2 that pushes the membership rules down
 * by one, v10 the integer checks of the power levels rule, v12 a second
 * top-level rule (the room ID) and the creators rule 10.4.
 */

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "mx_core.h"
#include "mx_ids.h"
#include "mx_event.h"
#include "mx_auth.h"


#define MX_AUTH_OK           1      /* mx_auth_level_value(): a level */
#define MX_AUTH_ABSENT       0
#define MX_AUTH_MALFORMED   -1


typedef struct {
    const mx_event_t           *ev;
    const mx_room_version_t    *v;
    const mx_event_t *const    *list;
    size_t                      n;
    mx_err_t                   *why;

    const mx_event_t           *create;
    const mx_event_t           *power_levels;

    /* top-level rules */
    unsigned                    r_auth;
    unsigned                    r_federate;
    unsigned                    r_member;
    unsigned                    r_joined;
    unsigned                    r_tpi;
    unsigned                    r_required;
    unsigned                    r_state_key;
    unsigned                    r_pl;
    unsigned                    r_allow;

    /* under m.room.create */
    unsigned                    c_allow;

    /* under m.room.member, and under its join */
    unsigned                    m_join;
    unsigned                    m_invite;
    unsigned                    m_leave;
    unsigned                    m_ban;
    unsigned                    m_knock;        /* 0: no knocking */
    unsigned                    m_unknown;
    unsigned                    j_public;
    unsigned                    j_other;

    /* under m.room.power_levels */
    unsigned                    p_users;
    unsigned                    p_creators;     /* 0: no such rule */
    unsigned                    p_noprev;
    unsigned                    p_alter;
    unsigned                    p_maps_cur;
    unsigned                    p_maps_new;
    unsigned                    p_users_cur;
    unsigned                    p_users_new;
    unsigned                    p_allow;
} mx_auth_ctx_t;


static const char  *mx_auth_pl_keys[] = {
    "users_default", "events_default", "state_default",
    "ban", "redact", "kick", "invite"
};

static const char  *mx_auth_pl_maps[] = { "events", "notifications" };


static void mx_auth_number(mx_auth_ctx_t *c);
static int mx_auth_decide(mx_auth_ctx_t *c, int rc, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

static int mx_auth_create(mx_auth_ctx_t *c);
static int mx_auth_room_is_create(mx_auth_ctx_t *c);
static int mx_auth_auth_events(mx_auth_ctx_t *c);
static int mx_auth_member(mx_auth_ctx_t *c);
static int mx_auth_join(mx_auth_ctx_t *c);
static int mx_auth_invite(mx_auth_ctx_t *c);
static int mx_auth_third_party(mx_auth_ctx_t *c);
static int mx_auth_signed_by(json_t *signed_, json_t *pk);
static int mx_auth_leave(mx_auth_ctx_t *c);
static int mx_auth_ban(mx_auth_ctx_t *c);
static int mx_auth_knock(mx_auth_ctx_t *c);
static int mx_auth_power_levels(mx_auth_ctx_t *c, int64_t sender_level);
static int mx_auth_pl_maps_current(mx_auth_ctx_t *c, const json_t *old,
    const json_t *new, int64_t sender_level);
static int mx_auth_pl_maps_new(mx_auth_ctx_t *c, const json_t *old,
    const json_t *new, int64_t sender_level);

static const mx_event_t *mx_auth_find(mx_auth_ctx_t *c, const char *type,
    const char *state_key);
static const char *mx_auth_membership(mx_auth_ctx_t *c, const char *user);
static const char *mx_auth_join_rule(mx_auth_ctx_t *c);
static int mx_auth_level(mx_auth_ctx_t *c, const char *user, int64_t *level);
static int mx_auth_named_level(const mx_event_t *pl, const char *key,
    int64_t def, int64_t *level);
static int mx_auth_required_level(mx_auth_ctx_t *c, int64_t *level);
static int mx_auth_level_value(const json_t *v, const mx_room_version_t *ver,
    int64_t *level);
static int mx_auth_level_string(const char *s, size_t len, int64_t *level);
static int mx_auth_changed(int rc_old, int64_t old, int rc_new, int64_t new);

static const char *mx_auth_creator(const mx_event_t *create);
static int mx_auth_is_creator(const mx_event_t *create, const char *user);
static int mx_auth_user_id_valid(const char *s, size_t len);
static const char *mx_auth_domain(const char *id);
static int mx_auth_same_domain(const char *a, const char *b);
static int mx_auth_cites(const mx_event_t *ev, const char *event_id);
static int mx_auth_is(const char *a, const char *b);
static const mx_room_version_t *mx_auth_version(const mx_event_t *a,
    const mx_event_t *b);


int
mx_auth_check(const mx_event_t *ev, const mx_event_t *const *auth_events,
    size_t n, mx_err_t *why)
{
    int64_t         level, required;
    mx_auth_ctx_t   ctx, *c;

    c = &ctx;
    memset(c, 0, sizeof(mx_auth_ctx_t));

    c->ev = ev;
    c->v = ev->version;
    c->list = auth_events;
    c->n = n;
    c->why = why;
    mx_auth_number(c);

    if (!c->v->supported) {
        return mx_auth_decide(c, MX_ERROR,
                              "room version %s: its authorisation rules are "
                              "not implemented", c->v->id);
    }

    /* rule 1: the create event stands alone */

    if (strcmp(ev->type, "m.room.create") == 0) {
        return mx_auth_create(c);
    }

    c->create = mx_auth_find(c, "m.room.create", "");
    c->power_levels = mx_auth_find(c, "m.room.power_levels", "");

    if (c->v->room_id_from_create && mx_auth_room_is_create(c) != MX_OK) {
        return MX_ERROR;
    }

    if (mx_auth_auth_events(c) != MX_OK) {
        return MX_ERROR;
    }

    /* rule 3 (v12: 4): m.federate */

    if (c->create != NULL
        && json_is_false(json_object_get(c->create->content, "m.federate"))
        && !mx_auth_same_domain(c->create->sender, ev->sender))
    {
        return mx_auth_decide(c, MX_ERROR,
                              "rule %u: the room is not federated and the "
                              "sender's domain is not the creator's",
                              c->r_federate);
    }

    if (strcmp(ev->type, "m.room.member") == 0) {
        return mx_auth_member(c);
    }

    if (!mx_auth_is(mx_auth_membership(c, ev->sender), "join")) {
        return mx_auth_decide(c, MX_ERROR,
                              "rule %u: the sender is not joined to the room",
                              c->r_joined);
    }

    if (strcmp(ev->type, "m.room.third_party_invite") == 0) {
        if (mx_auth_level(c, ev->sender, &level) != MX_OK
            || mx_auth_named_level(c->power_levels, "invite", 0, &required)
               != MX_OK)
        {
            return mx_auth_decide(c, MX_ERROR,
                                  "rule %u.1: the power levels hold a value "
                                  "that is not an integer", c->r_tpi);
        }

        if (level >= required) {
            return mx_auth_decide(c, MX_OK,
                                  "rule %u.1: the sender may invite",
                                  c->r_tpi);
        }

        return mx_auth_decide(c, MX_ERROR,
                              "rule %u.1: the sender's power level is below "
                              "the invite level", c->r_tpi);
    }

    if (mx_auth_level(c, ev->sender, &level) != MX_OK
        || mx_auth_required_level(c, &required) != MX_OK)
    {
        return mx_auth_decide(c, MX_ERROR,
                              "rule %u: the power levels hold a value that "
                              "is not an integer", c->r_required);
    }

    if (required > level) {
        return mx_auth_decide(c, MX_ERROR,
                              "rule %u: the sender's power level is below "
                              "the %" PRId64 " required for %s",
                              c->r_required, required, ev->type);
    }

    if (ev->state_key != NULL && ev->state_key[0] == '@'
        && strcmp(ev->state_key, ev->sender) != 0)
    {
        return mx_auth_decide(c, MX_ERROR,
                              "rule %u: the state_key is another user's ID",
                              c->r_state_key);
    }

    if (strcmp(ev->type, "m.room.power_levels") == 0) {
        return mx_auth_power_levels(c, level);
    }

    return mx_auth_decide(c, MX_OK, "rule %u: allowed", c->r_allow);
}


int
mx_auth_power_level(const mx_event_t *power_levels, const mx_event_t *create,
    const char *user_id, int64_t *level)
{
    int                         rc;
    json_t                     *users;
    const char                 *creator;
    const mx_room_version_t    *ver;

    if (create == NULL && power_levels == NULL) {
        *level = 0;
        return MX_OK;
    }

    ver = mx_auth_version(create, power_levels);

    if (create != NULL && ver->privileged_creators
        && mx_auth_is_creator(create, user_id))
    {
        *level = MX_AUTH_LEVEL_INFINITE;
        return MX_OK;
    }

    if (power_levels == NULL) {
        creator = create ? mx_auth_creator(create) : NULL;
        *level = mx_auth_is(creator, user_id) ? 100 : 0;
        return MX_OK;
    }

    users = json_object_get(power_levels->content, "users");

    if (users != NULL && !json_is_object(users)) {
        return MX_ERROR;
    }

    rc = mx_auth_level_value(json_object_get(users, user_id), ver, level);

    if (rc == MX_AUTH_ABSENT) {
        rc = mx_auth_level_value(json_object_get(power_levels->content,
                                                 "users_default"),
                                 ver, level);
        if (rc == MX_AUTH_ABSENT) {
            *level = 0;
            return MX_OK;
        }
    }

    return rc == MX_AUTH_OK ? MX_OK : MX_ERROR;
}


int
mx_auth_types_for_event(const mx_event_t *ev, mx_auth_key_t *keys,
    size_t max, size_t *n)
{
    size_t       i, j, k;
    json_t      *tpi;
    const char  *add[MX_AUTH_TYPES_MAX][2], *token, *via;

    *n = 0;

    if (strcmp(ev->type, "m.room.create") == 0) {
        return MX_OK;
    }

    k = 0;

    /* v12 names the create event by the room ID instead */
    if (!ev->version->room_id_from_create) {
        add[k][0] = "m.room.create";
        add[k++][1] = "";
    }

    add[k][0] = "m.room.power_levels";
    add[k++][1] = "";
    add[k][0] = "m.room.member";
    add[k++][1] = ev->sender;

    if (strcmp(ev->type, "m.room.member") == 0) {

        if (ev->state_key != NULL) {
            add[k][0] = "m.room.member";
            add[k++][1] = ev->state_key;
        }

        if (mx_auth_is(ev->membership, "join")
            || mx_auth_is(ev->membership, "invite")
            || mx_auth_is(ev->membership, "knock"))
        {
            add[k][0] = "m.room.join_rules";
            add[k++][1] = "";
        }

        tpi = json_object_get(ev->content, "third_party_invite");
        token = json_string_value(json_object_get(
                    json_object_get(tpi, "signed"), "token"));

        if (mx_auth_is(ev->membership, "invite") && token != NULL) {
            add[k][0] = "m.room.third_party_invite";
            add[k++][1] = token;
        }

        via = mx_event_content_string(ev, "join_authorised_via_users_server");

        if (mx_auth_is(ev->membership, "join")
            && ev->version->restricted_join && via != NULL)
        {
            add[k][0] = "m.room.member";
            add[k++][1] = via;
        }
    }

    for (i = 0; i < k; i++) {

        /* the sender may be the target or the authorising user too */
        if (i > 0 && strcmp(add[i][0], "m.room.member") == 0) {
            for (j = 0; j < *n; j++) {
                if (strcmp(keys[j].type, add[i][0]) == 0
                    && strcmp(keys[j].state_key, add[i][1]) == 0)
                {
                    break;
                }
            }

            if (j < *n) {
                continue;
            }
        }

        if (*n == max) {
            return MX_ERROR;
        }

        keys[*n].type = add[i][0];
        keys[*n].state_key = add[i][1];
        (*n)++;
    }

    return MX_OK;
}


int
mx_auth_redaction_applies(const mx_event_t *redaction,
    const mx_event_t *target, const mx_event_t *power_levels,
    const mx_event_t *create, mx_err_t *why)
{
    int64_t  level, redact;

    if (redaction->redacts == NULL
        || strcmp(redaction->redacts, target->event_id) != 0)
    {
        mx_err_set(why, "handling redactions: the redaction does not name "
                   "this event");
        return MX_ERROR;
    }

    if (strcmp(redaction->room_id, target->room_id) != 0) {
        mx_err_set(why, "handling redactions: the events are in different "
                   "rooms");
        return MX_ERROR;
    }

    if (mx_auth_power_level(power_levels, create, redaction->sender, &level)
        != MX_OK
        || mx_auth_named_level(power_levels, "redact", 50, &redact) != MX_OK)
    {
        mx_err_set(why, "handling redactions: the power levels hold a value "
                   "that is not an integer");
        return MX_ERROR;
    }

    if (level >= redact) {
        mx_err_set(why, "handling redactions: 1: the sender's power level "
                   "reaches the redact level");
        return MX_OK;
    }

    if (mx_auth_same_domain(redaction->sender, target->sender)) {
        mx_err_set(why, "handling redactions: 2: the sender's domain is the "
                   "original sender's");
        return MX_OK;
    }

    mx_err_set(why, "handling redactions: the sender is below the redact "
               "level and on another server than the original sender");
    return MX_ERROR;
}


static void
mx_auth_number(mx_auth_ctx_t *c)
{
    unsigned  s, p;

    /* v12's room ID rule is rule 2: every later rule moves down one */
    s = c->v->room_id_from_create ? 1 : 0;

    c->r_auth = 2 + s;
    c->r_federate = 3 + s;
    c->r_member = 4 + s;
    c->r_joined = 5 + s;
    c->r_tpi = 6 + s;
    c->r_required = 7 + s;
    c->r_state_key = 8 + s;
    c->r_pl = 9 + s;
    c->r_allow = 10 + s;

    /* v11 dropped the creator rule 1.4, v12 put additional_creators there */
    c->c_allow = (c->v->creator_is_sender && !c->v->privileged_creators)
                 ? 4 : 5;

    /* v8 inserted the join_authorised_via_users_server rule as 4.2 */
    c->m_join = c->v->restricted_join ? 3 : 2;
    c->m_invite = c->m_join + 1;
    c->m_leave = c->m_join + 2;
    c->m_ban = c->m_join + 3;
    c->m_knock = c->v->knock ? c->m_join + 4 : 0;
    c->m_unknown = c->m_join + 4 + (c->v->knock ? 1 : 0);
    c->j_public = c->v->restricted_join ? 6 : 5;
    c->j_other = c->j_public + 1;

    /* v10 put two integer checks before the users check */
    p = c->v->integer_power_levels ? 3 : 1;
    c->p_users = p++;
    c->p_creators = c->v->privileged_creators ? p++ : 0;
    c->p_noprev = p++;
    c->p_alter = p++;
    c->p_maps_cur = p++;
    c->p_maps_new = p++;
    c->p_users_cur = p++;
    c->p_users_new = p++;
    c->p_allow = p;
}


static int
mx_auth_decide(mx_auth_ctx_t *c, int rc, const char *fmt, ...)
{
    va_list  args;

    if (c->why != NULL) {
        va_start(args, fmt);
        vsnprintf(c->why->msg, MX_ERR_LEN, fmt, args);
        va_end(args);
    }

    return rc;
}


/* rule 1 */

static int
mx_auth_create(mx_auth_ctx_t *c)
{
    size_t                i;
    json_t               *v, *item;
    const mx_event_t     *ev;

    ev = c->ev;

    if (json_array_size(ev->prev_events) != 0) {
        return mx_auth_decide(c, MX_ERROR,
                              "rule 1.1: a create event has no prev_events");
    }

    if (c->v->room_id_from_create) {
        if (json_object_get(ev->json, "room_id") != NULL) {
            return mx_auth_decide(c, MX_ERROR,
                                  "rule 1.2: a create event has no room_id "
                                  "in room version %s", c->v->id);
        }

    } else if (!mx_auth_same_domain(ev->room_id, ev->sender)) {
        return mx_auth_decide(c, MX_ERROR,
                              "rule 1.2: the room ID's domain is not the "
                              "sender's");
    }

    v = json_object_get(ev->content, "room_version");

    if (v != NULL
        && (!json_is_string(v)
            || mx_room_version_find(json_string_value(v),
                                    json_string_length(v)) == NULL))
    {
        return mx_auth_decide(c, MX_ERROR,
                              "rule 1.3: content.room_version is not a "
                              "room version this server knows");
    }

    if (!c->v->creator_is_sender
        && json_object_get(ev->content, "creator") == NULL)
    {
        return mx_auth_decide(c, MX_ERROR,
                              "rule 1.4: content has no creator");
    }

    if (c->v->privileged_creators) {
        v = json_object_get(ev->content, "additional_creators");

        if (v != NULL && !json_is_array(v)) {
            return mx_auth_decide(c, MX_ERROR,
                                  "rule 1.4: additional_creators is not an "
                                  "array");
        }

        for (i = 0; i < json_array_size(v); i++) {
            item = json_array_get(v, i);

            if (!json_is_string(item)
                || !mx_auth_user_id_valid(json_string_value(item),
                                          json_string_length(item)))
            {
                return mx_auth_decide(c, MX_ERROR,
                                      "rule 1.4: additional_creators[%zu] "
                                      "is not a valid user ID", i);
            }
        }
    }

    return mx_auth_decide(c, MX_OK, "rule 1.%u: allowed", c->c_allow);
}


/* v12 rule 2: the room ID is the create event's ID */

static int
mx_auth_room_is_create(mx_auth_ctx_t *c)
{
    if (c->create == NULL) {
        return mx_auth_decide(c, MX_ERROR,
                              "rule 2: no m.room.create event to check the "
                              "room ID against");
    }

    if (c->ev->room_id[0] != '!'
        || strcmp(c->ev->room_id + 1, c->create->event_id + 1) != 0)
    {
        return mx_auth_decide(c, MX_ERROR,
                              "rule 2: the room ID is not the m.room.create "
                              "event's ID");
    }

    return MX_OK;
}


/* rule 2 (v12: 3): the auth events themselves */

static int
mx_auth_auth_events(mx_auth_ctx_t *c)
{
    size_t             i, j, k, nkeys;
    unsigned           rule;
    const char        *id;
    mx_auth_key_t      keys[MX_AUTH_TYPES_MAX];
    const mx_event_t  *a, *b;

    /*
     * The same event cited twice is two auth events for one (type,
     * state_key) as well, whatever the caller passed in once.
     */
    for (i = 0; i < json_array_size(c->ev->auth_events); i++) {
        id = json_string_value(json_array_get(c->ev->auth_events, i));

        for (j = 0; j < i; j++) {
            if (strcmp(id, json_string_value(json_array_get(
                               c->ev->auth_events, j))) == 0)
            {
                return mx_auth_decide(c, MX_ERROR,
                                      "rule %u.1: %s is cited twice in "
                                      "auth_events", c->r_auth, id);
            }
        }
    }

    for (i = 0; i < c->n; i++) {
        a = c->list[i];

        for (j = 0; j < i; j++) {
            b = c->list[j];

            if (a->state_key != NULL && b->state_key != NULL
                && strcmp(a->type, b->type) == 0
                && strcmp(a->state_key, b->state_key) == 0)
            {
                return mx_auth_decide(c, MX_ERROR,
                                      "rule %u.1: two auth events for (%s, "
                                      "\"%s\")", c->r_auth, a->type,
                                      a->state_key);
            }
        }
    }

    if (mx_auth_types_for_event(c->ev, keys, MX_AUTH_TYPES_MAX, &nkeys)
        != MX_OK)
    {
        return mx_auth_decide(c, MX_ERROR, "rule %u.2: too many auth types",
                              c->r_auth);
    }

    for (i = 0; i < c->n; i++) {
        a = c->list[i];

        if (!mx_auth_cites(c->ev, a->event_id)) {
            continue;
        }

        for (k = 0; k < nkeys; k++) {
            if (a->state_key != NULL
                && strcmp(a->type, keys[k].type) == 0
                && strcmp(a->state_key, keys[k].state_key) == 0)
            {
                break;
            }
        }

        if (k == nkeys) {
            return mx_auth_decide(c, MX_ERROR,
                                  "rule %u.2: auth event %s (%s, \"%s\") is "
                                  "not one the auth events selection names",
                                  c->r_auth, a->event_id, a->type,
                                  a->state_key ? a->state_key : "(none)");
        }
    }

    if (c->v->room_id_from_create) {

        /* cited but not passed, the create event still must not be cited */
        for (i = 0; i < json_array_size(c->ev->auth_events); i++) {
            id = json_string_value(json_array_get(c->ev->auth_events, i));

            if (id != NULL && id[0] == '$'
                && strcmp(id + 1, c->ev->room_id + 1) == 0)
            {
                return mx_auth_decide(c, MX_ERROR,
                                      "rule %u.2: the m.room.create event "
                                      "must not be among the auth events",
                                      c->r_auth);
            }
        }

    } else {
        for (i = 0; i < c->n; i++) {
            if (strcmp(c->list[i]->type, "m.room.create") == 0
                && mx_auth_cites(c->ev, c->list[i]->event_id))
            {
                break;
            }
        }

        if (i == c->n) {
            return mx_auth_decide(c, MX_ERROR,
                                  "rule 2.4: no m.room.create event among "
                                  "the auth events");
        }
    }

    /* v12 dropped 3.4; its "5." is the fourth item, as rendered */
    rule = c->v->room_id_from_create ? 4 : 5;

    for (i = 0; i < c->n; i++) {
        a = c->list[i];

        if (strcmp(a->room_id, c->ev->room_id) != 0) {
            return mx_auth_decide(c, MX_ERROR,
                                  "rule %u.%u: auth event %s is in another "
                                  "room", c->r_auth, rule, a->event_id);
        }
    }

    return MX_OK;
}


/* rule 4 (v12: 5) */

static int
mx_auth_member(mx_auth_ctx_t *c)
{
    json_t            *via, *sigs;
    unsigned           r;
    const char        *domain;
    const mx_event_t  *ev;

    ev = c->ev;
    r = c->r_member;

    if (ev->state_key == NULL || ev->membership == NULL) {
        return mx_auth_decide(c, MX_ERROR,
                              "rule %u.1: no state_key or no membership", r);
    }

    via = json_object_get(ev->content, "join_authorised_via_users_server");

    if (c->v->restricted_join && via != NULL) {
        domain = json_is_string(via)
                 && mx_auth_user_id_valid(json_string_value(via),
                                          json_string_length(via))
                 ? mx_auth_domain(json_string_value(via)) : NULL;

        sigs = domain ? json_object_get(json_object_get(ev->json,
                                                        "signatures"),
                                        domain)
                      : NULL;

        /* present here, valid by mx_event_verify_signatures() */
        if (!json_is_object(sigs) || json_object_size(sigs) == 0) {
            return mx_auth_decide(c, MX_ERROR,
                                  "rule %u.2.1: not signed by the server of "
                                  "join_authorised_via_users_server", r);
        }
    }

    if (strcmp(ev->membership, "join") == 0) {
        return mx_auth_join(c);
    }

    if (strcmp(ev->membership, "invite") == 0) {
        return mx_auth_invite(c);
    }

    if (strcmp(ev->membership, "leave") == 0) {
        return mx_auth_leave(c);
    }

    if (strcmp(ev->membership, "ban") == 0) {
        return mx_auth_ban(c);
    }

    if (c->m_knock && strcmp(ev->membership, "knock") == 0) {
        return mx_auth_knock(c);
    }

    return mx_auth_decide(c, MX_ERROR, "rule %u.%u: unknown membership \"%s\"",
                          r, c->m_unknown, ev->membership);
}


static int
mx_auth_join(mx_auth_ctx_t *c)
{
    int64_t            level, invite;
    unsigned           r, j;
    const char        *rule, *via, *membership, *prev;
    const mx_event_t  *ev;

    ev = c->ev;
    r = c->r_member;
    j = c->m_join;

    prev = json_string_value(json_array_get(ev->prev_events, 0));

    if (c->create != NULL && json_array_size(ev->prev_events) == 1
        && mx_auth_is(prev, c->create->event_id)
        && mx_auth_is(mx_auth_creator(c->create), ev->state_key))
    {
        return mx_auth_decide(c, MX_OK,
                              "rule %u.%u.1: the creator's first join", r, j);
    }

    if (strcmp(ev->sender, ev->state_key) != 0) {
        return mx_auth_decide(c, MX_ERROR,
                              "rule %u.%u.2: the sender is not the state_key",
                              r, j);
    }

    membership = mx_auth_membership(c, ev->sender);

    if (mx_auth_is(membership, "ban")) {
        return mx_auth_decide(c, MX_ERROR,
                              "rule %u.%u.3: the sender is banned", r, j);
    }

    rule = mx_auth_join_rule(c);

    if ((mx_auth_is(rule, "invite")
         || (c->v->knock && mx_auth_is(rule, "knock")))
        && (mx_auth_is(membership, "invite")
            || mx_auth_is(membership, "join")))
    {
        return mx_auth_decide(c, MX_OK,
                              "rule %u.%u.4: join rule %s and the sender is "
                              "invited or joined", r, j, rule);
    }

    if ((c->v->restricted_join && mx_auth_is(rule, "restricted"))
        || (c->v->knock_restricted_join
            && mx_auth_is(rule, "knock_restricted")))
    {
        if (mx_auth_is(membership, "join")
            || mx_auth_is(membership, "invite"))
        {
            return mx_auth_decide(c, MX_OK,
                                  "rule %u.%u.5.1: join rule %s and the "
                                  "sender is invited or joined", r, j, rule);
        }

        via = mx_event_content_string(ev, "join_authorised_via_users_server");

        if (via == NULL) {
            return mx_auth_decide(c, MX_ERROR,
                                  "rule %u.%u.5.2: join rule %s and no "
                                  "join_authorised_via_users_server",
                                  r, j, rule);
        }

        if (!mx_auth_is(mx_auth_membership(c, via), "join")) {
            return mx_auth_decide(c, MX_ERROR,
                                  "rule %u.%u.5.2: the authorising user is "
                                  "not joined", r, j);
        }

        if (mx_auth_level(c, via, &level) != MX_OK
            || mx_auth_named_level(c->power_levels, "invite", 0, &invite)
               != MX_OK)
        {
            return mx_auth_decide(c, MX_ERROR,
                                  "rule %u.%u.5.2: the power levels hold a "
                                  "value that is not an integer", r, j);
        }

        if (level < invite) {
            return mx_auth_decide(c, MX_ERROR,
                                  "rule %u.%u.5.2: the authorising user may "
                                  "not invite", r, j);
        }

        return mx_auth_decide(c, MX_OK,
                              "rule %u.%u.5.3: authorised by %s", r, j, via);
    }

    if (mx_auth_is(rule, "public")) {
        return mx_auth_decide(c, MX_OK,
                              "rule %u.%u.%u: the room is public", r, j,
                              c->j_public);
    }

    return mx_auth_decide(c, MX_ERROR,
                          "rule %u.%u.%u: join rule %s does not let the "
                          "sender join", r, j, c->j_other,
                          rule ? rule : "(not a string)");
}


static int
mx_auth_invite(mx_auth_ctx_t *c)
{
    int64_t            level, invite;
    unsigned           r, i;
    const char        *target;
    const mx_event_t  *ev;

    ev = c->ev;
    r = c->r_member;
    i = c->m_invite;

    if (json_object_get(ev->content, "third_party_invite") != NULL) {
        return mx_auth_third_party(c);
    }

    if (!mx_auth_is(mx_auth_membership(c, ev->sender), "join")) {
        return mx_auth_decide(c, MX_ERROR,
                              "rule %u.%u.2: the sender is not joined", r, i);
    }

    target = mx_auth_membership(c, ev->state_key);

    if (mx_auth_is(target, "join") || mx_auth_is(target, "ban")) {
        return mx_auth_decide(c, MX_ERROR,
                              "rule %u.%u.3: the target is %s", r, i,
                              mx_auth_is(target, "join") ? "joined"
                                                         : "banned");
    }

    if (mx_auth_level(c, ev->sender, &level) != MX_OK
        || mx_auth_named_level(c->power_levels, "invite", 0, &invite)
           != MX_OK)
    {
        return mx_auth_decide(c, MX_ERROR,
                              "rule %u.%u.4: the power levels hold a value "
                              "that is not an integer", r, i);
    }

    if (level >= invite) {
        return mx_auth_decide(c, MX_OK,
                              "rule %u.%u.4: the sender may invite", r, i);
    }

    return mx_auth_decide(c, MX_ERROR,
                          "rule %u.%u.5: the sender's power level is below "
                          "the invite level", r, i);
}


/* rule 4.x.1: an invite that redeems an m.room.third_party_invite */

static int
mx_auth_third_party(mx_auth_ctx_t *c)
{
    int                matched;
    size_t             k;
    json_t            *tpi, *signed_, *mxid, *token, *list, *item;
    unsigned           r, i;
    const mx_event_t  *ev, *invite;

    ev = c->ev;
    r = c->r_member;
    i = c->m_invite;

    if (mx_auth_is(mx_auth_membership(c, ev->state_key), "ban")) {
        return mx_auth_decide(c, MX_ERROR,
                              "rule %u.%u.1.1: the target is banned", r, i);
    }

    tpi = json_object_get(ev->content, "third_party_invite");
    signed_ = json_object_get(tpi, "signed");

    if (signed_ == NULL) {
        return mx_auth_decide(c, MX_ERROR,
                              "rule %u.%u.1.2: third_party_invite has no "
                              "signed", r, i);
    }

    mxid = json_object_get(signed_, "mxid");
    token = json_object_get(signed_, "token");

    if (mxid == NULL || token == NULL) {
        return mx_auth_decide(c, MX_ERROR,
                              "rule %u.%u.1.3: signed has no mxid or no "
                              "token", r, i);
    }

    if (!json_is_string(mxid) || strcmp(json_string_value(mxid), ev->state_key)
        != 0)
    {
        return mx_auth_decide(c, MX_ERROR,
                              "rule %u.%u.1.4: mxid is not the state_key",
                              r, i);
    }

    invite = json_is_string(token)
             ? mx_auth_find(c, "m.room.third_party_invite",
                            json_string_value(token))
             : NULL;

    if (invite == NULL) {
        return mx_auth_decide(c, MX_ERROR,
                              "rule %u.%u.1.5: no m.room.third_party_invite "
                              "for the token", r, i);
    }

    if (strcmp(invite->sender, ev->sender) != 0) {
        return mx_auth_decide(c, MX_ERROR,
                              "rule %u.%u.1.6: the sender did not send the "
                              "m.room.third_party_invite", r, i);
    }

    /* the keys: public_key, then each public_keys[].public_key, all */

    list = json_object_get(invite->content, "public_keys");

    if (mx_auth_signed_by(signed_,
                          json_object_get(invite->content, "public_key")))
    {
        matched = 1;

    } else {
        matched = 0;

        for (k = 0; k < json_array_size(list) && !matched; k++) {
            item = json_object_get(json_array_get(list, k), "public_key");
            matched = mx_auth_signed_by(signed_, item);
        }
    }

    if (matched) {
        return mx_auth_decide(c, MX_OK,
                              "rule %u.%u.1.7: signed with a key of the "
                              "m.room.third_party_invite", r, i);
    }

    return mx_auth_decide(c, MX_ERROR,
                          "rule %u.%u.1.8: no signature in signed matches a "
                          "key of the m.room.third_party_invite", r, i);
}


/* whether signed carries a valid ed25519 signature by that public key */

static int
mx_auth_signed_by(json_t *signed_, json_t *pk)
{
    void           *iter;
    size_t          len;
    json_t         *sigs, *keyids;
    const char     *server, *key_id;
    unsigned char   key[MX_ED25519_PK_LEN * 2];

    sigs = json_object_get(signed_, "signatures");

    /* anything but 32 bytes of base64 cannot verify a signature */
    if (!json_is_string(pk) || !json_is_object(sigs)
        || json_string_length(pk) > MX_ED25519_PK_LEN * 2
        || mx_base64_decode(key, &len, json_string_value(pk),
                            json_string_length(pk)) != MX_OK
        || len != MX_ED25519_PK_LEN)
    {
        return 0;
    }

    json_object_foreach(sigs, server, keyids) {
        if (!json_is_object(keyids)) {
            continue;
        }

        for (iter = json_object_iter(keyids); iter != NULL;
             iter = json_object_iter_next(keyids, iter))
        {
            key_id = json_object_iter_key(iter);

            if (strncmp(key_id, "ed25519:", 8) == 0
                && mx_json_verify(signed_, server, key_id, key, NULL)
                   == MX_OK)
            {
                return 1;
            }
        }
    }

    return 0;
}


static int
mx_auth_leave(mx_auth_ctx_t *c)
{
    int64_t            level, target_level, ban, kick;
    unsigned           r, l;
    const char        *membership;
    const mx_event_t  *ev;

    ev = c->ev;
    r = c->r_member;
    l = c->m_leave;

    membership = mx_auth_membership(c, ev->sender);

    if (strcmp(ev->sender, ev->state_key) == 0) {
        if (mx_auth_is(membership, "invite") || mx_auth_is(membership, "join")
            || (c->v->knock && mx_auth_is(membership, "knock")))
        {
            return mx_auth_decide(c, MX_OK,
                                  "rule %u.%u.1: the sender leaves", r, l);
        }

        return mx_auth_decide(c, MX_ERROR,
                              "rule %u.%u.1: the sender cannot leave from "
                              "membership %s", r, l,
                              membership ? membership : "(not a string)");
    }

    if (!mx_auth_is(membership, "join")) {
        return mx_auth_decide(c, MX_ERROR,
                              "rule %u.%u.2: the sender is not joined", r, l);
    }

    if (mx_auth_level(c, ev->sender, &level) != MX_OK
        || mx_auth_level(c, ev->state_key, &target_level) != MX_OK
        || mx_auth_named_level(c->power_levels, "ban", 50, &ban) != MX_OK
        || mx_auth_named_level(c->power_levels, "kick", 50, &kick) != MX_OK)
    {
        return mx_auth_decide(c, MX_ERROR,
                              "rule %u.%u.3: the power levels hold a value "
                              "that is not an integer", r, l);
    }

    if (mx_auth_is(mx_auth_membership(c, ev->state_key), "ban")
        && level < ban)
    {
        return mx_auth_decide(c, MX_ERROR,
                              "rule %u.%u.3: the target is banned and the "
                              "sender is below the ban level", r, l);
    }

    if (level >= kick && target_level < level) {
        return mx_auth_decide(c, MX_OK,
                              "rule %u.%u.4: the sender may kick the target",
                              r, l);
    }

    return mx_auth_decide(c, MX_ERROR,
                          "rule %u.%u.5: the sender is below the kick level "
                          "or not above the target", r, l);
}


static int
mx_auth_ban(mx_auth_ctx_t *c)
{
    int64_t            level, target_level, ban;
    unsigned           r, b;
    const mx_event_t  *ev;

    ev = c->ev;
    r = c->r_member;
    b = c->m_ban;

    if (!mx_auth_is(mx_auth_membership(c, ev->sender), "join")) {
        return mx_auth_decide(c, MX_ERROR,
                              "rule %u.%u.1: the sender is not joined", r, b);
    }

    if (mx_auth_level(c, ev->sender, &level) != MX_OK
        || mx_auth_level(c, ev->state_key, &target_level) != MX_OK
        || mx_auth_named_level(c->power_levels, "ban", 50, &ban) != MX_OK)
    {
        return mx_auth_decide(c, MX_ERROR,
                              "rule %u.%u.2: the power levels hold a value "
                              "that is not an integer", r, b);
    }

    if (level >= ban && target_level < level) {
        return mx_auth_decide(c, MX_OK,
                              "rule %u.%u.2: the sender may ban the target",
                              r, b);
    }

    return mx_auth_decide(c, MX_ERROR,
                          "rule %u.%u.3: the sender is below the ban level "
                          "or not above the target", r, b);
}


static int
mx_auth_knock(mx_auth_ctx_t *c)
{
    unsigned           r, k;
    const char        *rule, *membership;
    const mx_event_t  *ev;

    ev = c->ev;
    r = c->r_member;
    k = c->m_knock;

    rule = mx_auth_join_rule(c);

    if (!mx_auth_is(rule, "knock")
        && !(c->v->knock_restricted_join
             && mx_auth_is(rule, "knock_restricted")))
    {
        return mx_auth_decide(c, MX_ERROR,
                              "rule %u.%u.1: join rule %s does not allow "
                              "knocking", r, k,
                              rule ? rule : "(not a string)");
    }

    if (strcmp(ev->sender, ev->state_key) != 0) {
        return mx_auth_decide(c, MX_ERROR,
                              "rule %u.%u.2: the sender is not the state_key",
                              r, k);
    }

    membership = mx_auth_membership(c, ev->sender);

    if (!mx_auth_is(membership, "ban") && !mx_auth_is(membership, "invite")
        && !mx_auth_is(membership, "join"))
    {
        return mx_auth_decide(c, MX_OK, "rule %u.%u.3: the sender knocks",
                              r, k);
    }

    return mx_auth_decide(c, MX_ERROR,
                          "rule %u.%u.4: the sender is already %s", r, k,
                          membership);
}


/* rule 9 (v12: 10) */

static int
mx_auth_power_levels(mx_auth_ctx_t *c, int64_t sender_level)
{
    int                         rc_old, rc_new;
    size_t                      i;
    int64_t                     old, new;
    json_t                     *content, *prev, *v, *value, *users, *ac;
    json_t                     *old_users;
    unsigned                    r;
    const char                 *key, *creator;
    const mx_room_version_t    *ver;

    content = c->ev->content;
    ver = c->v;
    r = c->r_pl;

    if (ver->integer_power_levels) {
        for (i = 0; i < sizeof(mx_auth_pl_keys) / sizeof(char *); i++) {
            v = json_object_get(content, mx_auth_pl_keys[i]);

            if (v != NULL && !json_is_integer(v)) {
                return mx_auth_decide(c, MX_ERROR,
                                      "rule %u.1: %s is not an integer",
                                      r, mx_auth_pl_keys[i]);
            }
        }

        for (i = 0; i < sizeof(mx_auth_pl_maps) / sizeof(char *); i++) {
            v = json_object_get(content, mx_auth_pl_maps[i]);

            if (v == NULL) {
                continue;
            }

            if (!json_is_object(v)) {
                return mx_auth_decide(c, MX_ERROR,
                                      "rule %u.2: %s is not an object",
                                      r, mx_auth_pl_maps[i]);
            }

            json_object_foreach(v, key, value) {
                if (!json_is_integer(value)) {
                    return mx_auth_decide(c, MX_ERROR,
                                          "rule %u.2: %s.%s is not an "
                                          "integer", r, mx_auth_pl_maps[i],
                                          key);
                }
            }
        }
    }

    users = json_object_get(content, "users");

    if (users != NULL && !json_is_object(users)) {
        return mx_auth_decide(c, MX_ERROR, "rule %u.%u: users is not an "
                              "object", r, c->p_users);
    }

    json_object_foreach(users, key, value) {
        if (!mx_auth_user_id_valid(key, strlen(key))) {
            return mx_auth_decide(c, MX_ERROR,
                                  "rule %u.%u: users has a key that is not "
                                  "a user ID", r, c->p_users);
        }

        if (mx_auth_level_value(value, ver, &new) != MX_AUTH_OK) {
            return mx_auth_decide(c, MX_ERROR,
                                  "rule %u.%u: the level of %s is not an "
                                  "integer", r, c->p_users, key);
        }
    }

    if (c->p_creators && c->create != NULL) {
        if (json_object_get(users, c->create->sender) != NULL) {
            return mx_auth_decide(c, MX_ERROR,
                                  "rule %u.%u: users names the room's "
                                  "creator", r, c->p_creators);
        }

        ac = json_object_get(c->create->content, "additional_creators");

        for (i = 0; i < json_array_size(ac); i++) {
            creator = json_string_value(json_array_get(ac, i));

            if (creator != NULL && json_object_get(users, creator) != NULL) {
                return mx_auth_decide(c, MX_ERROR,
                                      "rule %u.%u: users names an additional "
                                      "creator", r, c->p_creators);
            }
        }
    }

    if (c->power_levels == NULL) {
        return mx_auth_decide(c, MX_OK,
                              "rule %u.%u: the room's first power levels",
                              r, c->p_noprev);
    }

    prev = c->power_levels->content;

    for (i = 0; i < sizeof(mx_auth_pl_keys) / sizeof(char *); i++) {
        key = mx_auth_pl_keys[i];
        rc_old = mx_auth_level_value(json_object_get(prev, key), ver, &old);
        rc_new = mx_auth_level_value(json_object_get(content, key), ver, &new);

        if (rc_old == MX_AUTH_MALFORMED || rc_new == MX_AUTH_MALFORMED) {
            return mx_auth_decide(c, MX_ERROR,
                                  "rule %u.%u: %s is not an integer",
                                  r, c->p_alter, key);
        }

        if (!mx_auth_changed(rc_old, old, rc_new, new)) {
            continue;
        }

        if (rc_old == MX_AUTH_OK && old > sender_level) {
            return mx_auth_decide(c, MX_ERROR,
                                  "rule %u.%u.1: the current %s is above "
                                  "the sender's level", r, c->p_alter, key);
        }

        if (rc_new == MX_AUTH_OK && new > sender_level) {
            return mx_auth_decide(c, MX_ERROR,
                                  "rule %u.%u.2: the new %s is above the "
                                  "sender's level", r, c->p_alter, key);
        }
    }

    for (i = 0; i < sizeof(mx_auth_pl_maps) / sizeof(char *); i++) {
        if (mx_auth_pl_maps_current(c,
                                    json_object_get(prev, mx_auth_pl_maps[i]),
                                    json_object_get(content,
                                                    mx_auth_pl_maps[i]),
                                    sender_level)
            != MX_OK)
        {
            return MX_ERROR;
        }
    }

    for (i = 0; i < sizeof(mx_auth_pl_maps) / sizeof(char *); i++) {
        if (mx_auth_pl_maps_new(c, json_object_get(prev, mx_auth_pl_maps[i]),
                                json_object_get(content, mx_auth_pl_maps[i]),
                                sender_level)
            != MX_OK)
        {
            return MX_ERROR;
        }
    }

    old_users = json_object_get(prev, "users");

    if (old_users != NULL && !json_is_object(old_users)) {
        return mx_auth_decide(c, MX_ERROR,
                              "rule %u.%u: the current users is not an "
                              "object", r, c->p_users_cur);
    }

    json_object_foreach(old_users, key, value) {
        if (strcmp(key, c->ev->sender) == 0) {
            continue;
        }

        rc_old = mx_auth_level_value(value, ver, &old);
        rc_new = mx_auth_level_value(json_object_get(users, key), ver, &new);

        if (rc_old == MX_AUTH_MALFORMED) {
            return mx_auth_decide(c, MX_ERROR,
                                  "rule %u.%u: the current level of %s is "
                                  "not an integer", r, c->p_users_cur, key);
        }

        if (rc_old == MX_AUTH_OK && mx_auth_changed(rc_old, old, rc_new, new)
            && old >= sender_level)
        {
            return mx_auth_decide(c, MX_ERROR,
                                  "rule %u.%u.1: %s's level is not below the "
                                  "sender's", r, c->p_users_cur, key);
        }
    }

    json_object_foreach(users, key, value) {
        rc_old = mx_auth_level_value(json_object_get(old_users, key), ver,
                                     &old);
        rc_new = mx_auth_level_value(value, ver, &new);

        if (rc_old == MX_AUTH_MALFORMED) {
            rc_old = MX_AUTH_ABSENT;
        }

        if (rc_new == MX_AUTH_OK && mx_auth_changed(rc_old, old, rc_new, new)
            && new > sender_level)
        {
            return mx_auth_decide(c, MX_ERROR,
                                  "rule %u.%u.1: the new level of %s is above "
                                  "the sender's", r, c->p_users_new, key);
        }
    }

    return mx_auth_decide(c, MX_OK, "rule %u.%u: allowed", r, c->p_allow);
}


/* for each entry being changed in, or removed from, events or notifications */

static int
mx_auth_pl_maps_current(mx_auth_ctx_t *c, const json_t *old,
    const json_t *new, int64_t sender_level)
{
    int          rc_old, rc_new;
    json_t      *value;
    int64_t      o, n;
    const char  *key;

    if ((old != NULL && !json_is_object(old))
        || (new != NULL && !json_is_object(new)))
    {
        return mx_auth_decide(c, MX_ERROR,
                              "rule %u.%u: events or notifications is not an "
                              "object", c->r_pl, c->p_maps_cur);
    }

    json_object_foreach((json_t *) old, key, value) {
        rc_old = mx_auth_level_value(value, c->v, &o);
        rc_new = mx_auth_level_value(json_object_get(new, key), c->v, &n);

        if (rc_old == MX_AUTH_MALFORMED || rc_new == MX_AUTH_MALFORMED) {
            return mx_auth_decide(c, MX_ERROR,
                                  "rule %u.%u: the level for %s is not an "
                                  "integer", c->r_pl, c->p_maps_cur, key);
        }

        if (rc_old == MX_AUTH_OK && mx_auth_changed(rc_old, o, rc_new, n)
            && o > sender_level)
        {
            return mx_auth_decide(c, MX_ERROR,
                                  "rule %u.%u.1: the current level for %s is "
                                  "above the sender's", c->r_pl,
                                  c->p_maps_cur, key);
        }
    }

    return MX_OK;
}


/* for each entry being added to, or changed in, events or notifications */

static int
mx_auth_pl_maps_new(mx_auth_ctx_t *c, const json_t *old, const json_t *new,
    int64_t sender_level)
{
    int          rc_old, rc_new;
    json_t      *value;
    int64_t      o, n;
    const char  *key;

    json_object_foreach((json_t *) new, key, value) {
        rc_old = mx_auth_level_value(json_object_get(old, key), c->v, &o);
        rc_new = mx_auth_level_value(value, c->v, &n);

        if (rc_old == MX_AUTH_MALFORMED || rc_new == MX_AUTH_MALFORMED) {
            return mx_auth_decide(c, MX_ERROR,
                                  "rule %u.%u: the level for %s is not an "
                                  "integer", c->r_pl, c->p_maps_new, key);
        }

        if (rc_new == MX_AUTH_OK && mx_auth_changed(rc_old, o, rc_new, n)
            && n > sender_level)
        {
            return mx_auth_decide(c, MX_ERROR,
                                  "rule %u.%u.1: the new level for %s is "
                                  "above the sender's", c->r_pl,
                                  c->p_maps_new, key);
        }
    }

    return MX_OK;
}


static const mx_event_t *
mx_auth_find(mx_auth_ctx_t *c, const char *type, const char *state_key)
{
    size_t             i;
    const mx_event_t  *e;

    for (i = 0; i < c->n; i++) {
        e = c->list[i];

        if (e->state_key != NULL && strcmp(e->type, type) == 0
            && strcmp(e->state_key, state_key) == 0)
        {
            return e;
        }
    }

    return NULL;
}


/* "leave" without a member event; NULL if its membership is not a string */

static const char *
mx_auth_membership(mx_auth_ctx_t *c, const char *user)
{
    const mx_event_t  *m;

    m = mx_auth_find(c, "m.room.member", user);

    return m ? m->membership : "leave";
}


/* "invite" without a join rules event, as deployed servers have it */

static const char *
mx_auth_join_rule(mx_auth_ctx_t *c)
{
    json_t            *v;
    const mx_event_t  *jr;

    jr = mx_auth_find(c, "m.room.join_rules", "");

    if (jr == NULL) {
        return "invite";
    }

    v = json_object_get(jr->content, "join_rule");

    if (v == NULL) {
        return "invite";
    }

    return json_string_value(v);
}


static int
mx_auth_level(mx_auth_ctx_t *c, const char *user, int64_t *level)
{
    return mx_auth_power_level(c->power_levels, c->create, user, level);
}


static int
mx_auth_named_level(const mx_event_t *pl, const char *key, int64_t def,
    int64_t *level)
{
    int  rc;

    if (pl == NULL) {
        *level = def;
        return MX_OK;
    }

    rc = mx_auth_level_value(json_object_get(pl->content, key), pl->version,
                             level);

    if (rc == MX_AUTH_ABSENT) {
        *level = def;
    }

    return rc == MX_AUTH_MALFORMED ? MX_ERROR : MX_OK;
}


/* the event type's required power level (server-server-api: Definitions) */

static int
mx_auth_required_level(mx_auth_ctx_t *c, int64_t *level)
{
    int      rc;
    json_t  *events;

    if (c->power_levels != NULL) {
        events = json_object_get(c->power_levels->content, "events");

        if (events != NULL && !json_is_object(events)) {
            return MX_ERROR;
        }

        rc = mx_auth_level_value(json_object_get(events, c->ev->type),
                                 c->v, level);

        if (rc != MX_AUTH_ABSENT) {
            return rc == MX_AUTH_OK ? MX_OK : MX_ERROR;
        }
    }

    if (c->ev->state_key != NULL) {
        return mx_auth_named_level(c->power_levels, "state_default", 50, level);
    }

    return mx_auth_named_level(c->power_levels, "events_default", 0, level);
}


/*
 * A power level value: an integer, or before v10 a string holding one
 * (rooms/fragments/v1-stringy-power-levels.md).  A JSON null counts as
 * absent, as it did on the servers that wrote such rooms.
 */
static int
mx_auth_level_value(const json_t *v, const mx_room_version_t *ver,
    int64_t *level)
{
    if (v == NULL || json_is_null(v)) {
        return MX_AUTH_ABSENT;
    }

    if (json_is_integer(v)) {
        *level = json_integer_value(v);
        return MX_AUTH_OK;
    }

    if (json_is_string(v) && !ver->integer_power_levels
        && mx_auth_level_string(json_string_value(v), json_string_length(v),
                                level) == MX_OK)
    {
        return MX_AUTH_OK;
    }

    return MX_AUTH_MALFORMED;
}


/* [ws] [+|-] 1*DIGIT [ws], leading zeroes allowed, within the JSON range */

static int
mx_auth_level_string(const char *s, size_t len, int64_t *level)
{
    size_t   i, digits;
    int64_t  n, sign;

    i = 0;

    while (i < len && strchr(" \t\n\v\f\r", s[i]) != NULL && s[i] != '\0') {
        i++;
    }

    sign = 1;

    if (i < len && (s[i] == '+' || s[i] == '-')) {
        sign = s[i] == '-' ? -1 : 1;
        i++;
    }

    n = 0;

    for (digits = 0; i < len && s[i] >= '0' && s[i] <= '9'; i++, digits++) {
        n = n * 10 + (s[i] - '0');

        if (n > MX_JSON_MAX_SAFE_INT) {
            return MX_ERROR;
        }
    }

    while (i < len && strchr(" \t\n\v\f\r", s[i]) != NULL && s[i] != '\0') {
        i++;
    }

    if (digits == 0 || i != len) {
        return MX_ERROR;
    }

    *level = sign * n;

    return MX_OK;
}


/* added, changed or removed; "50" and 50 are the same level */

static int
mx_auth_changed(int rc_old, int64_t old, int rc_new, int64_t new)
{
    if (rc_old != rc_new) {
        return 1;
    }

    return rc_old == MX_AUTH_OK && old != new;
}


/* the creator of rooms/v1-v10: content.creator; since v11 the sender */

static const char *
mx_auth_creator(const mx_event_t *create)
{
    if (create->version->creator_is_sender) {
        return create->sender;
    }

    return mx_event_content_string(create, "creator");
}


/* v12's creators: the sender and content.additional_creators */

static int
mx_auth_is_creator(const mx_event_t *create, const char *user)
{
    size_t   i;
    json_t  *ac;

    if (strcmp(create->sender, user) == 0) {
        return 1;
    }

    ac = json_object_get(create->content, "additional_creators");

    for (i = 0; i < json_array_size(ac); i++) {
        if (mx_auth_is(json_string_value(json_array_get(ac, i)), user)) {
            return 1;
        }
    }

    return 0;
}


/*
 * The checks mx_event_from_json() applies to "sender": "@", a non-empty
 * localpart without ":", a valid server name, at most 255 bytes, no NUL.
 */
static int
mx_auth_user_id_valid(const char *s, size_t len)
{
    const char  *why;

    return mx_id_valid(s, len, '@', 1, &why) == MX_OK;
}


/* user and room ID localparts hold no ":", so the domain follows the first */

static const char *
mx_auth_domain(const char *id)
{
    const char  *colon;

    colon = strchr(id, ':');

    return colon ? colon + 1 : NULL;
}


static int
mx_auth_same_domain(const char *a, const char *b)
{
    const char  *da, *db;

    da = mx_auth_domain(a);
    db = mx_auth_domain(b);

    return da != NULL && db != NULL && strcmp(da, db) == 0;
}


static int
mx_auth_cites(const mx_event_t *ev, const char *event_id)
{
    size_t  i;

    for (i = 0; i < json_array_size(ev->auth_events); i++) {
        if (mx_auth_is(json_string_value(json_array_get(ev->auth_events, i)),
                       event_id))
        {
            return 1;
        }
    }

    return 0;
}


static int
mx_auth_is(const char *a, const char *b)
{
    return a != NULL && b != NULL && strcmp(a, b) == 0;
}


static const mx_room_version_t *
mx_auth_version(const mx_event_t *a, const mx_event_t *b)
{
    return a != NULL ? a->version : b->version;
}
