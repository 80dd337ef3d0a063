/*
 * Matrix identifier grammars (appendices: Identifier Grammar).
 */

#ifndef MX_IDS_H
#define MX_IDS_H

#include <stddef.h>


/*
 * server_name = hostname [ ":" port ], hostname = IPv4 / "[" IPv6 "]" /
 * dns-name of at most 255 characters, port = 1*5DIGIT.  MX_OK or
 * MX_ERROR with the reason in *why.
 */
int mx_server_name_valid(const char *name, size_t len, const char **why);


/*
 * A Matrix identifier: the sigil ('@' user, '!' room, '$' event, '#'
 * alias), at most 255 bytes, no NUL, and with need_server a non-empty
 * local part and a valid server name after the first ':' (user IDs, room
 * IDs before v12; event IDs since v4 have no server part).
 */
int mx_id_valid(const char *id, size_t len, char sigil, int need_server,
    const char **why);

/*
 * A localpart as user IDs are issued today (appendices, "User
 * Identifiers"): 1*(a-z / 0-9 / - . = _ / +).  Other servers' users may
 * still have historical ones; the users of this server may not.
 */
int mx_user_localpart_valid(const char *localpart, size_t len);


#endif /* MX_IDS_H */
