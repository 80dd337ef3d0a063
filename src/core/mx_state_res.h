/*
 * State resolution v2 (rooms/v2.md, room versions 2 to 11) and v2.1
 * (rooms/v12.md): the room state before an event whose prev_events
 * lead to different states.
 */

#ifndef MX_STATE_RES_H
#define MX_STATE_RES_H

#include <stddef.h>

#include "mx_core.h"
#include "mx_event.h"
#include "mx_room_version.h"


/* one (type, state_key) -> event_id pair of a state map */
typedef struct {
    const char     *type;
    const char     *state_key;
    const char     *event_id;
} mx_state_entry_t;


/*
 * The event store.  fetch() returns an event that stays valid until
 * mx_state_resolve() returns, or NULL if the store does not have it;
 * every event of the state sets and of their auth chains must be
 * there, and in v12 the create event the room ID names.  rejected()
 * tells whether an event was rejected: such an auth event is not used
 * in the iterative auth checks.  It may be NULL when the store keeps no
 * rejected event.
 */
typedef const mx_event_t *(*mx_event_fetch_pt)(void *data,
    const char *event_id);
typedef int (*mx_event_rejected_pt)(void *data, const char *event_id);

typedef struct {
    mx_event_fetch_pt       fetch;
    mx_event_rejected_pt    rejected;
    void                   *data;
} mx_event_store_t;


/*
 * Resolves nsets state maps (sets[i] has set_sizes[i] entries, no key
 * twice) with the algorithm of the room version.  On MX_OK, *out is one
 * malloc()ed block holding *nout entries sorted by type then state_key,
 * and the strings they point to: free(*out) releases all of it.
 *
 * MX_ERROR (err set) when an event is missing from the store, is not in
 * the room of the others, does not match its entry, when a set has a
 * key twice, or when memory runs out.
 */
int mx_state_resolve(const mx_room_version_t *version,
    const mx_state_entry_t *const *sets, const size_t *set_sizes,
    size_t nsets, const mx_event_store_t *store, mx_state_entry_t **out,
    size_t *nout, mx_err_t *err);


#endif /* MX_STATE_RES_H */
