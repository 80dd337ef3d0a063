/*
 * The authorisation rules for events (rooms/v6.md ... v12.md:
 * "Authorisation rules"; server-server-api.md: "Auth events selection",
 * "Definitions").
 *
 * Messages name the rule that decided, numbered as the room version's
 * list is numbered on the rendered spec pages: "rule 4.3.2: ...".  Two
 * places in the v12 text number their items out of sequence, and a
 * rendered list counts on regardless, so v12's "auth event from another
 * room" is rule 3.4 here (written "5." in the source, after 3.3) and its
 * final "Otherwise, allow" under power levels is 10.11.
 */

#ifndef MX_AUTH_H
#define MX_AUTH_H

#include <stddef.h>
#include <stdint.h>

#include "mx_core.h"
#include "mx_event.h"


/* the power level of a v12 room creator: above every representable level */
#define MX_AUTH_LEVEL_INFINITE   INT64_MAX

/* the most (type, state_key) pairs the auth events selection can yield */
#define MX_AUTH_TYPES_MAX        7


typedef struct {
    const char     *type;
    const char     *state_key;      /* borrowed from the event */
} mx_auth_key_t;


/*
 * Checks ev against the authorisation rules of its room version.
 *
 * auth_events holds the state events the check runs against, either
 *
 *   - the events that ev->auth_events names (checks on receipt, step 4),
 *     plus, in v12, the m.room.create event that the room ID names; or
 *   - the state before the event or the current state (steps 5 and 6,
 *     and the iterative auth checks of state resolution): at least the
 *     entries mx_auth_types_for_event() names, more is harmless.
 *
 * The rules about the event's own auth_events (duplicates, entries the
 * selection does not name, the create event) are applied to the entries
 * of that list that ev->auth_events cites, so they hold in both uses; a
 * caller of the first kind must pass every event it cites.  Whether an
 * auth event was itself rejected (rule 2.3; 3.3 in v12) is not known
 * here: the caller must not pass rejected events, and must refuse the
 * event itself if it cites one.  Two entries with the same type and
 * state key are refused as duplicates (rule 2.1 / 3.1).
 *
 * The signature that rule 4.2.1 (v12: 5.2.1) asks of the authorising
 * server of a restricted join is verified by mx_event_verify_signatures();
 * here it must merely be present.
 *
 * Returns MX_OK if the event is allowed, MX_ERROR if it is refused.  In
 * both cases why->msg names the rule that decided: "rule 4.3.6: ..." or
 * "rule 10: ..." for the final "Otherwise, allow".  why may be NULL.
 * Events of room versions without "supported" (1 to 5) are refused:
 * "room version 4: ...".
 */
int mx_auth_check(const mx_event_t *ev, const mx_event_t *const *auth_events,
    size_t n, mx_err_t *why);

/*
 * A user's power level (m.room.power_levels; v12: creators).  power_levels
 * may be NULL: then the creator has 100 and everyone else 0.  create may
 * be NULL if unknown (no creator then).  In rooms with privileged
 * creators (v12) the sender of the create event and its
 * additional_creators get MX_AUTH_LEVEL_INFINITE, whatever power_levels
 * says.  MX_ERROR if a value needed is not an integer (or, before v10, a
 * string holding one).
 */
int mx_auth_power_level(const mx_event_t *power_levels,
    const mx_event_t *create, const char *user_id, int64_t *level);

/*
 * The auth events selection: the (type, state_key) pairs of the state
 * events that may authorise ev, at most MX_AUTH_TYPES_MAX, none for a
 * create event.  The strings are borrowed from ev or static.  MX_ERROR if
 * max is too small.
 */
int mx_auth_types_for_event(const mx_event_t *ev, mx_auth_key_t *keys,
    size_t max, size_t *n);

/*
 * Handling redactions (rooms/fragments/v3-handling-redactions.md): not an
 * authorisation rule, but the check a server makes before it applies an
 * allowed redaction to the event it targets.  MX_OK if the redaction
 * applies now: its sender's level reaches the redact level, or its
 * sender's domain is the target sender's.  MX_ERROR with the reason
 * otherwise, or if redaction does not name target (for v11+ in content,
 * before in the top-level "redacts") or they are in different rooms.
 */
int mx_auth_redaction_applies(const mx_event_t *redaction,
    const mx_event_t *target, const mx_event_t *power_levels,
    const mx_event_t *create, mx_err_t *why);


#endif /* MX_AUTH_H */
