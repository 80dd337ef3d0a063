/*
 * A silo room as a Matrix room: the events this server writes for it,
 * built from plain values (server-server-api.md: PDUs; client-server-api:
 * m.room.* events, m.room.message and its relations).
 *
 * The same functions build an event when it is first made and rebuild it
 * from what is stored when it is served: a silo message's event keeps
 * only its hash and signature in the module's schema, its content is
 * made again from the silo's row, so both paths must give the same bytes.
 */

#ifndef MX_ROOM_H
#define MX_ROOM_H

#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

#include "mx_core.h"
#include "mx_room_version.h"


/* how a silo message's content is made again (events.recipe) */
#define MX_RECIPE_TEXT      1       /* m.text, body and formatted_body */
#define MX_RECIPE_REPLY     2       /* + m.in_reply_to the reply_to message */
#define MX_RECIPE_THREAD    4       /* + m.thread of the thread root */

/* power levels of the silo's roles */
#define MX_LEVEL_ADMIN      100
#define MX_LEVEL_MODERATOR  50


typedef struct {
    const char          *room_id;     /* NULL for a v12 create event */
    const char          *sender;
    const char          *type;
    const char          *state_key;   /* NULL: not a state event */
    json_t              *content;     /* borrowed */
    const char         **prev_events;
    size_t               nprev;
    const char         **auth_events;
    size_t               nauth;
    int64_t              depth;
    int64_t              origin_server_ts;
    const char          *redacts;     /* a redaction's top-level target
                                         (room versions 1-10), or NULL */

    /* a stored event served again: its hash and signature, else NULL */
    const char          *hash_b64;
    const char          *server;
    const char          *key_id;
    const char          *sig_b64;
} mx_pdu_parts_t;


/*
 * The PDU of those parts: a new reference, or NULL with err set.  Without
 * hash_b64 the event is unsigned, for mx_event_sign().
 */
json_t *mx_pdu_build(const mx_pdu_parts_t *p, mx_err_t *err);

/*
 * The content of a silo message (recipe: MX_RECIPE_* bits): body, html
 * (NULL for none), the event IDs it answers and the thread it is in
 * (needed when the recipe names them).  A new reference, or NULL.
 */
json_t *mx_silo_message_content(unsigned recipe, const char *body,
    const char *html, const char *reply_event_id,
    const char *thread_event_id, mx_err_t *err);

/* the recipe of a message with these relations */
unsigned mx_silo_message_recipe(int has_reply, int has_thread);

/*
 * The initial m.room.power_levels content: the creator (this server's
 * user) and the silo's admins at 100, moderators at 50, everyone else 0;
 * state and moderation at 50, the room's structure at 100; inviting
 * needs 50 in a room the silo keeps private.
 */
json_t *mx_room_power_levels(const mx_room_version_t *version,
    const char *creator, const char *const *admins, size_t nadmins,
    const char *const *moderators, size_t nmoderators, int is_public,
    mx_err_t *err);

/* the m.room.create content for a room created by creator */
json_t *mx_room_create_content(const mx_room_version_t *version,
    const char *creator, mx_err_t *err);

/*
 * Whether an m.room.server_acl content lets server (a server name, its
 * port ignored) take part in the room: not an IP literal unless
 * allow_ip_literals (default true), matching no "deny" glob and some
 * "allow" glob (* any run, ? any one character, case-insensitive).  A
 * content that is not an object allows everyone (no ACL).
 */
int mx_server_acl_allows(const json_t *acl, const char *server);


#endif /* MX_ROOM_H */
