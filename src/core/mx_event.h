/*
 * Persistent data units (PDUs): parsing and validation, hashes, event
 * IDs, redaction, signing (server-server-api.md: PDUs, Signing Events;
 * rooms/v*.md).
 */

#ifndef MX_EVENT_H
#define MX_EVENT_H

#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

#include "mx_core.h"
#include "mx_room_version.h"


#define MX_PDU_MAX_SIZE      65536  /* bytes of canonical JSON */
#define MX_ID_MAX_LEN        255    /* event/room/user IDs, types, state keys */
#define MX_EVENT_ID_LEN      44     /* "$" + 43 characters of url-safe base64 */
#define MX_SHA256_LEN        32

/* mx_event_check_content_hash(): hash present but wrong -> redact it */
#define MX_EVENT_HASH_MISMATCH  1


typedef struct {
    json_t                     *json;       /* the PDU, owned reference */
    const mx_room_version_t    *version;

    char                        event_id[MX_EVENT_ID_LEN + 1];

    /* borrowed from json: valid while the event lives */
    const char                 *room_id;    /* v12 create: the derived ID */
    const char                 *sender;
    const char                 *type;
    const char                 *state_key;  /* NULL: not a state event */
    const char                 *redacts;    /* m.room.redaction target */
    const char                 *membership; /* m.room.member content */
    json_t                     *content;
    json_t                     *auth_events;   /* array of event ID strings */
    json_t                     *prev_events;   /* array of event ID strings */
    int64_t                     depth;
    int64_t                     origin_server_ts;

    char                        create_room_id[MX_EVENT_ID_LEN + 1];
                                            /* v12: room_id points here */
} mx_event_t;


/*
 * Parses and validates one PDU received as text (from a transaction,
 * send_join, backfill...): size, canonical JSON strictness for the room
 * version, the type of every top-level field, ID lengths and sigils.
 * Computes the event ID.  Signatures and hashes are NOT checked here.
 */
int mx_event_parse(const char *text, size_t len,
    const mx_room_version_t *version, mx_event_t **ev, mx_err_t *err);

/*
 * The same over a parsed value; takes its own reference to pdu.  For
 * events this server builds, and for tests.
 */
int mx_event_from_json(json_t *pdu, const mx_room_version_t *version,
    mx_event_t **ev, mx_err_t *err);

void mx_event_free(mx_event_t *ev);

/* NULL if absent or not a string */
const char *mx_event_content_string(const mx_event_t *ev, const char *key);


/* the redacted copy of a PDU (a new reference), per the room version */
json_t *mx_event_redact(const json_t *pdu, const mx_room_version_t *version,
    mx_err_t *err);

/* sha256 of the canonical PDU without unsigned, signatures and hashes */
int mx_event_content_hash(const json_t *pdu,
    unsigned char hash[MX_SHA256_LEN], mx_err_t *err);

/*
 * MX_OK if hashes.sha256 matches, MX_EVENT_HASH_MISMATCH if it is present
 * and well-formed but does not match (the event must then be redacted,
 * not rejected), MX_ERROR if it is missing or malformed.
 */
int mx_event_check_content_hash(const json_t *pdu, mx_err_t *err);

/* sha256 of the canonical redacted PDU without signatures and unsigned */
int mx_event_reference_hash(const json_t *pdu,
    const mx_room_version_t *version, unsigned char hash[MX_SHA256_LEN],
    mx_err_t *err);

/* "$" + url-safe unpadded base64 of the reference hash, NUL-terminated */
int mx_event_compute_id(const json_t *pdu, const mx_room_version_t *version,
    char id[MX_EVENT_ID_LEN + 1], mx_err_t *err);

/*
 * Adds hashes.sha256 and the origin's signature over the redacted event,
 * as a server does before it sends an event it created.
 */
int mx_event_sign(json_t *pdu, const mx_room_version_t *version,
    const char *server, const mx_signing_key_t *key, mx_err_t *err);


/*
 * Finds a server's public key for signature checks.  Returns MX_OK and
 * fills public_key, or MX_ERROR when the key is unknown (or not valid at
 * ts, the event's origin_server_ts, for room versions that care).
 */
typedef int (*mx_key_lookup_pt)(void *data, const char *server,
    const char *key_id, int64_t ts, unsigned char public_key[32]);

/*
 * Checks the signatures a PDU must carry (server-server-api.md: Validating
 * hashes and signatures on received events): the sender's server, and
 * for a restricted join via join_authorised_via_users_server the
 * authorising user's server.  Each required server needs at least one
 * valid signature by a key the lookup knows.  Verified over the redacted
 * event.
 */
int mx_event_verify_signatures(const json_t *pdu,
    const mx_room_version_t *version, mx_key_lookup_pt lookup, void *data,
    mx_err_t *err);


#endif /* MX_EVENT_H */
