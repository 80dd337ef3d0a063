/*
 * The events of a silo room's Matrix room (mx_room.h).
 */

#include <string.h>

#include "mx_room.h"


static json_t *mx_room_id_array(const char **ids, size_t n, mx_err_t *err);
static int mx_room_set_levels(json_t *users, const char *const *ids, size_t n,
    int level);
static int mx_acl_list_matches(const json_t *list, const char *host,
    size_t len);
static int mx_glob_matches(const char *glob, const char *s, size_t len);


json_t *
mx_pdu_build(const mx_pdu_parts_t *p, mx_err_t *err)
{
    json_t  *pdu, *prev, *auth;

    if (p->sender == NULL || p->type == NULL || p->content == NULL
        || !json_is_object(p->content))
    {
        mx_err_set(err, "an event needs a sender, a type and content");
        return NULL;
    }

    prev = mx_room_id_array(p->prev_events, p->nprev, err);
    auth = mx_room_id_array(p->auth_events, p->nauth, err);

    if (prev == NULL || auth == NULL) {
        json_decref(prev);
        json_decref(auth);
        return NULL;
    }

    pdu = json_pack("{s:o,s:O,s:I,s:I,s:o,s:s,s:s}",
                    "auth_events", auth,
                    "content", p->content,
                    "depth", (json_int_t) p->depth,
                    "origin_server_ts", (json_int_t) p->origin_server_ts,
                    "prev_events", prev,
                    "sender", p->sender,
                    "type", p->type);
    if (pdu == NULL) {
        mx_err_set(err, "an event field is not UTF-8");
        return NULL;
    }

    if ((p->room_id
         && json_object_set_new(pdu, "room_id", json_string(p->room_id)) != 0)
        || (p->state_key
            && json_object_set_new(pdu, "state_key",
                                   json_string(p->state_key)) != 0)
        || (p->redacts
            && json_object_set_new(pdu, "redacts",
                                   json_string(p->redacts)) != 0))
    {
        mx_err_set(err, "the room ID or state key is not UTF-8");
        json_decref(pdu);
        return NULL;
    }

    if (p->hash_b64 == NULL) {
        return pdu;
    }

    if (p->server == NULL || p->key_id == NULL || p->sig_b64 == NULL
        || json_object_set_new(pdu, "hashes",
                               json_pack("{s:s}", "sha256", p->hash_b64))
           != 0
        || json_object_set_new(pdu, "signatures",
                               json_pack("{s:{s:s}}", p->server, p->key_id,
                                         p->sig_b64))
           != 0)
    {
        mx_err_set(err, "a stored hash or signature is missing");
        json_decref(pdu);
        return NULL;
    }

    return pdu;
}


unsigned
mx_silo_message_recipe(int has_reply, int has_thread)
{
    return MX_RECIPE_TEXT
           | (has_reply ? MX_RECIPE_REPLY : 0)
           | (has_thread ? MX_RECIPE_THREAD : 0);
}


/*
 * A reply inside a thread is both: the thread relation, with the reply
 * as its in-reply-to.  A plain thread message falls back to answering
 * the root for clients without threads (is_falling_back).
 */

json_t *
mx_silo_message_content(unsigned recipe, const char *body, const char *html,
    const char *reply_event_id, const char *thread_event_id, mx_err_t *err)
{
    json_t  *content, *rel;

    if (!(recipe & MX_RECIPE_TEXT) || body == NULL
        || ((recipe & MX_RECIPE_REPLY) && reply_event_id == NULL)
        || ((recipe & MX_RECIPE_THREAD) && thread_event_id == NULL))
    {
        mx_err_set(err, "a message recipe without what it needs");
        return NULL;
    }

    content = json_pack("{s:s,s:s}", "msgtype", "m.text", "body", body);
    if (content == NULL) {
        mx_err_set(err, "the message's text is not UTF-8");
        return NULL;
    }

    if (html != NULL
        && (json_object_set_new(content, "format",
                                json_string("org.matrix.custom.html")) != 0
            || json_object_set_new(content, "formatted_body",
                                   json_string(html)) != 0))
    {
        mx_err_set(err, "the message's HTML is not UTF-8");
        json_decref(content);
        return NULL;
    }

    rel = NULL;

    if (recipe & MX_RECIPE_THREAD) {
        rel = json_pack("{s:s,s:s,s:b,s:{s:s}}",
                        "rel_type", "m.thread",
                        "event_id", thread_event_id,
                        "is_falling_back", !(recipe & MX_RECIPE_REPLY),
                        "m.in_reply_to", "event_id",
                        (recipe & MX_RECIPE_REPLY) ? reply_event_id
                                                   : thread_event_id);

    } else if (recipe & MX_RECIPE_REPLY) {
        rel = json_pack("{s:{s:s}}", "m.in_reply_to", "event_id",
                        reply_event_id);
    }

    if ((recipe & (MX_RECIPE_THREAD|MX_RECIPE_REPLY))
        && (rel == NULL
            || json_object_set_new(content, "m.relates_to", rel) != 0))
    {
        mx_err_set(err, "cannot build the message's relation");
        json_decref(content);
        return NULL;
    }

    return content;
}


json_t *
mx_room_power_levels(const mx_room_version_t *version, const char *creator,
    const char *const *admins, size_t nadmins,
    const char *const *moderators, size_t nmoderators, int is_public,
    mx_err_t *err)
{
    json_t  *users, *pl;

    (void) version;     /* integers in every version this server creates */

    users = json_object();
    if (users == NULL
        || mx_room_set_levels(users, moderators, nmoderators,
                              MX_LEVEL_MODERATOR) != MX_OK
        || mx_room_set_levels(users, admins, nadmins, MX_LEVEL_ADMIN)
           != MX_OK
        || mx_room_set_levels(users, &creator, 1, MX_LEVEL_ADMIN) != MX_OK)
    {
        json_decref(users);
        mx_err_set(err, "a user ID of the power levels is not UTF-8");
        return NULL;
    }

    pl = json_pack("{s:i,s:{s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i},s:i,s:i,"
                   "s:i,s:{s:i},s:i,s:i,s:o,s:i}",
                   "ban", MX_LEVEL_MODERATOR,
                   "events",
                       "m.room.avatar", MX_LEVEL_MODERATOR,
                       "m.room.canonical_alias", MX_LEVEL_MODERATOR,
                       "m.room.encryption", MX_LEVEL_ADMIN,
                       "m.room.history_visibility", MX_LEVEL_ADMIN,
                       "m.room.name", MX_LEVEL_MODERATOR,
                       "m.room.power_levels", MX_LEVEL_ADMIN,
                       "m.room.server_acl", MX_LEVEL_ADMIN,
                       "m.room.tombstone", MX_LEVEL_ADMIN,
                   "events_default", 0,
                   "invite", is_public ? 0 : MX_LEVEL_MODERATOR,
                   "kick", MX_LEVEL_MODERATOR,
                   "notifications", "room", MX_LEVEL_MODERATOR,
                   "redact", MX_LEVEL_MODERATOR,
                   "state_default", MX_LEVEL_MODERATOR,
                   "users", users,
                   "users_default", 0);
    if (pl == NULL) {
        mx_err_set(err, "out of memory");
        return NULL;
    }

    return pl;
}


json_t *
mx_room_create_content(const mx_room_version_t *version, const char *creator,
    mx_err_t *err)
{
    json_t  *content;

    content = json_pack("{s:s}", "room_version", version->id);

    if (content != NULL && !version->creator_is_sender
        && json_object_set_new(content, "creator", json_string(creator)) != 0)
    {
        json_decref(content);
        content = NULL;
    }

    if (content == NULL) {
        mx_err_set(err, "cannot build the create event's content");
    }

    return content;
}


static json_t *
mx_room_id_array(const char **ids, size_t n, mx_err_t *err)
{
    size_t   i;
    json_t  *a;

    a = json_array();
    if (a == NULL) {
        mx_err_set(err, "out of memory");
        return NULL;
    }

    for (i = 0; i < n; i++) {
        if (json_array_append_new(a, json_string(ids[i])) != 0) {
            mx_err_set(err, "an event ID is not UTF-8");
            json_decref(a);
            return NULL;
        }
    }

    return a;
}


static int
mx_room_set_levels(json_t *users, const char *const *ids, size_t n,
    int level)
{
    size_t  i;

    for (i = 0; i < n; i++) {
        if (json_object_set_new(users, ids[i], json_integer(level)) != 0) {
            return MX_ERROR;
        }
    }

    return MX_OK;
}


int
mx_server_acl_allows(const json_t *acl, const char *server)
{
    size_t        len;
    const char   *end;
    json_t       *ip;

    if (!json_is_object(acl)) {
        return 1;
    }

    /* the host without the port: "[v6]:port", "v4:port", "name:port" */

    if (server[0] == '[') {
        end = strchr(server, ']');
        len = end ? (size_t) (end - server) + 1 : strlen(server);

    } else {
        end = strchr(server, ':');
        len = end ? (size_t) (end - server) : strlen(server);
    }

    ip = json_object_get(acl, "allow_ip_literals");

    if (json_is_false(ip)) {
        size_t  i;
        int     digits_and_dots = 1;

        for (i = 0; i < len; i++) {
            if (!((server[i] >= '0' && server[i] <= '9') || server[i] == '.')) {
                digits_and_dots = 0;
                break;
            }
        }

        if (server[0] == '[' || digits_and_dots) {
            return 0;
        }
    }

    if (mx_acl_list_matches(json_object_get(acl, "deny"), server, len)) {
        return 0;
    }

    return mx_acl_list_matches(json_object_get(acl, "allow"), server, len);
}


static int
mx_acl_list_matches(const json_t *list, const char *host, size_t len)
{
    size_t       i;
    const char  *glob;

    for (i = 0; i < json_array_size(list); i++) {
        glob = json_string_value(json_array_get(list, i));

        if (glob != NULL && mx_glob_matches(glob, host, len)) {
            return 1;
        }
    }

    return 0;
}


/* iterative, with one backtrack point: linear for any glob */

static int
mx_glob_matches(const char *glob, const char *s, size_t len)
{
    size_t       i, star_i;
    const char  *g, *star_g;
    char         a, b;

    g = glob;
    i = 0;
    star_g = NULL;
    star_i = 0;

    while (i < len) {
        if (*g == '*') {
            star_g = ++g;
            star_i = i;
            continue;
        }

        a = (*g >= 'A' && *g <= 'Z') ? (char) (*g + 32) : *g;
        b = (s[i] >= 'A' && s[i] <= 'Z') ? (char) (s[i] + 32) : s[i];

        if (*g != '\0' && (*g == '?' || a == b)) {
            g++;
            i++;
            continue;
        }

        if (star_g == NULL) {
            return 0;
        }

        g = star_g;
        i = ++star_i;
    }

    while (*g == '*') {
        g++;
    }

    return *g == '\0';
}
