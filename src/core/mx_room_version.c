/*
 * The table of room versions.  Versions 1-5 are not implemented: they
 * use origin-assigned event IDs or standard-alphabet hashes, tolerate
 * non-canonical JSON and differ in auth rules nobody should create rooms
 * with today.
 */

#include <string.h>

#include "mx_core.h"
#include "mx_room_version.h"


static const mx_room_version_t  mx_room_version_table[] = {

    /* id    event ID                  redaction       state res */

    { "6",  MX_EVENT_ID_URLSAFE_HASH, MX_REDACT_V6,  MX_STATE_RES_V2,
      1, 1, 0, 0, 0, 0,  0, 0, 0,  0, 0 },

    { "7",  MX_EVENT_ID_URLSAFE_HASH, MX_REDACT_V6,  MX_STATE_RES_V2,
      1, 1, 1, 0, 0, 0,  0, 0, 0,  0, 0 },

    { "8",  MX_EVENT_ID_URLSAFE_HASH, MX_REDACT_V6,  MX_STATE_RES_V2,
      1, 1, 1, 1, 0, 0,  0, 0, 0,  0, 0 },

    { "9",  MX_EVENT_ID_URLSAFE_HASH, MX_REDACT_V9,  MX_STATE_RES_V2,
      1, 1, 1, 1, 0, 0,  0, 0, 0,  0, 0 },

    { "10", MX_EVENT_ID_URLSAFE_HASH, MX_REDACT_V9,  MX_STATE_RES_V2,
      1, 1, 1, 1, 1, 1,  0, 0, 0,  0, 0 },

    { "11", MX_EVENT_ID_URLSAFE_HASH, MX_REDACT_V11, MX_STATE_RES_V2,
      1, 1, 1, 1, 1, 1,  1, 1, 1,  0, 0 },

    { "12", MX_EVENT_ID_URLSAFE_HASH, MX_REDACT_V11, MX_STATE_RES_V2_1,
      1, 1, 1, 1, 1, 1,  1, 1, 1,  1, 1 },
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
