/*
 * The table of room versions.  Versions 1-5 are here for hashing and
 * redaction only (not "supported"): they use origin-assigned event IDs
 * or standard-alphabet hashes, tolerate non-canonical JSON and have auth
 * rules and a state resolution nobody should create rooms with today.
 */

#include <string.h>

#include "mx_core.h"
#include "mx_room_version.h"


static const mx_room_version_t  mx_room_version_table[] = {

    /* id    event ID                  redaction       state res
     *       stable, strict JSON, knock, restricted, knock_restricted,
     *       integer PLs,  v11: redacts in content, creator is sender,
     *       origin not kept,  v12: room ID from create, privileged
     *       creators,  supported */

    { "1",  MX_EVENT_ID_ORIGIN,       MX_REDACT_V1,  MX_STATE_RES_V1,
      1, 0, 0, 0, 0, 0,  0, 0, 0,  0, 0,  0 },

    { "2",  MX_EVENT_ID_ORIGIN,       MX_REDACT_V1,  MX_STATE_RES_V2,
      1, 0, 0, 0, 0, 0,  0, 0, 0,  0, 0,  0 },

    { "3",  MX_EVENT_ID_STD_HASH,     MX_REDACT_V1,  MX_STATE_RES_V2,
      1, 0, 0, 0, 0, 0,  0, 0, 0,  0, 0,  0 },

    { "4",  MX_EVENT_ID_URLSAFE_HASH, MX_REDACT_V1,  MX_STATE_RES_V2,
      1, 0, 0, 0, 0, 0,  0, 0, 0,  0, 0,  0 },

    { "5",  MX_EVENT_ID_URLSAFE_HASH, MX_REDACT_V1,  MX_STATE_RES_V2,
      1, 0, 0, 0, 0, 0,  0, 0, 0,  0, 0,  0 },

    { "6",  MX_EVENT_ID_URLSAFE_HASH, MX_REDACT_V6,  MX_STATE_RES_V2,
      1, 1, 0, 0, 0, 0,  0, 0, 0,  0, 0,  1 },

    { "7",  MX_EVENT_ID_URLSAFE_HASH, MX_REDACT_V6,  MX_STATE_RES_V2,
      1, 1, 1, 0, 0, 0,  0, 0, 0,  0, 0,  1 },

    { "8",  MX_EVENT_ID_URLSAFE_HASH, MX_REDACT_V6,  MX_STATE_RES_V2,
      1, 1, 1, 1, 0, 0,  0, 0, 0,  0, 0,  1 },

    { "9",  MX_EVENT_ID_URLSAFE_HASH, MX_REDACT_V9,  MX_STATE_RES_V2,
      1, 1, 1, 1, 0, 0,  0, 0, 0,  0, 0,  1 },

    { "10", MX_EVENT_ID_URLSAFE_HASH, MX_REDACT_V9,  MX_STATE_RES_V2,
      1, 1, 1, 1, 1, 1,  0, 0, 0,  0, 0,  1 },

    { "11", MX_EVENT_ID_URLSAFE_HASH, MX_REDACT_V11, MX_STATE_RES_V2,
      1, 1, 1, 1, 1, 1,  1, 1, 1,  0, 0,  1 },

    { "12", MX_EVENT_ID_URLSAFE_HASH, MX_REDACT_V11, MX_STATE_RES_V2_1,
      1, 1, 1, 1, 1, 1,  1, 1, 1,  1, 1,  1 },
};


const mx_room_version_t *
mx_room_version_find(const char *id, size_t len)
{
    size_t  i;

    for (i = 0; i < sizeof(mx_room_version_table)
                    / sizeof(mx_room_version_table[0]); i++)
    {
        if (strlen(mx_room_version_table[i].id) == len
            && memcmp(mx_room_version_table[i].id, id, len) == 0)
        {
            return &mx_room_version_table[i];
        }
    }

    return NULL;
}


const mx_room_version_t *
mx_room_versions(size_t *n)
{
    *n = sizeof(mx_room_version_table) / sizeof(mx_room_version_table[0]);

    return mx_room_version_table;
}
