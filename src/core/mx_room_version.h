/*
 * Room versions as one table of behaviours (rooms/v6.md ... v12.md).
 * Code asks the table, never compares version strings.
 */

#ifndef MX_ROOM_VERSION_H
#define MX_ROOM_VERSION_H

#include <stddef.h>


/* how event IDs are made */
#define MX_EVENT_ID_ORIGIN         1    /* v1, v2: "$id:origin", in the event */
#define MX_EVENT_ID_STD_HASH       3    /* v3: "$" + standard base64 hash */
#define MX_EVENT_ID_URLSAFE_HASH   4    /* v4+: "$" + url-safe reference hash */

/* which redaction algorithm (rooms/fragments/v*-redactions.md) */
#define MX_REDACT_V1               1    /* v1-v5: m.room.aliases keeps aliases */
#define MX_REDACT_V6               6    /* v6-v8: no m.room.aliases keys */
#define MX_REDACT_V9               9    /* v9-v10: + join_authorised_via_users_server */
#define MX_REDACT_V11              11   /* v11+: see rooms/v11.md */

/* which state resolution algorithm */
#define MX_STATE_RES_V1            1    /* v1 */
#define MX_STATE_RES_V2            2    /* v2 .. v11 */
#define MX_STATE_RES_V2_1          21   /* v12 */


typedef struct {
    const char     *id;                         /* "10" */
    unsigned        event_id_format;
    unsigned        redaction;
    unsigned        state_res;

    unsigned        stable:1;
    unsigned        strict_canonical_json:1;    /* v6+: PDUs in canonical range */
    unsigned        knock:1;                    /* v7+ */
    unsigned        restricted_join:1;          /* v8+ */
    unsigned        knock_restricted_join:1;    /* v10+ */
    unsigned        integer_power_levels:1;     /* v10+: no string values */

    /* v11 (MSC2174, MSC2175, MSC3989, MSC3821) */
    unsigned        redacts_in_content:1;       /* redaction's "redacts" */
    unsigned        creator_is_sender:1;        /* no content.creator */
    unsigned        origin_not_kept:1;          /* "origin", "membership" and
                                                   "prev_state" not special */

    /* v12 (MSC4289, MSC4291, MSC4297) */
    unsigned        room_id_from_create:1;      /* create has no room_id; the
                                                   room ID is "!" + its hash */
    unsigned        privileged_creators:1;      /* creators and
                                                   additional_creators outrank
                                                   every power level */

    /*
     * Rooms of this version may be created, joined and accepted: auth
     * rules and state resolution are implemented (v6+).  Versions 1-5
     * are in the table only so that their events can be hashed,
     * redacted and checked (old rooms, conformance vectors).
     */
    unsigned        supported:1;
} mx_room_version_t;


/*
 * The version with that identifier, or NULL for an unknown one.  A
 * version without "supported" must be refused as well where rooms are
 * created or joined: M_INCOMPATIBLE_ROOM_VERSION / M_UNSUPPORTED_ROOM_VERSION.
 */
const mx_room_version_t *mx_room_version_find(const char *id, size_t len);

/* the whole table, for "ver" negotiation and capabilities (check supported) */
const mx_room_version_t *mx_room_versions(size_t *n);


#endif /* MX_ROOM_VERSION_H */
