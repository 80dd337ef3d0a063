/*
 * Identifier grammars, checked byte by byte: these run on every ID that
 * arrives from another server, before anything else looks at it.
 */

#include <string.h>

#include "mx_core.h"
#include "mx_ids.h"


static int mx_is_digit(unsigned char c);
static int mx_is_alpha(unsigned char c);
static int mx_is_hex(unsigned char c);


int
mx_server_name_valid(const char *name, size_t len, const char **why)
{
    size_t               i, host_len, port_len;
    const unsigned char *p;

    p = (const unsigned char *) name;

    if (len == 0) {
        *why = "empty server name";
        return MX_ERROR;
    }

    /* the hostname ends at the ":" before the port, or at the end */

    if (p[0] == '[') {
        for (i = 1; i < len && p[i] != ']'; i++) {
            if (!mx_is_hex(p[i]) && p[i] != ':' && p[i] != '.') {
                *why = "invalid character in IPv6 literal";
                return MX_ERROR;
            }
        }

        if (i == len) {
            *why = "unterminated IPv6 literal";
            return MX_ERROR;
        }

        if (i - 1 < 2 || i - 1 > 45) {
            *why = "invalid IPv6 literal";
            return MX_ERROR;
        }

        host_len = i + 1;

    } else {
        for (i = 0; i < len && p[i] != ':'; i++) {
            if (!mx_is_digit(p[i]) && !mx_is_alpha(p[i])
                && p[i] != '-' && p[i] != '.')
            {
                *why = "invalid character in hostname";
                return MX_ERROR;
            }
        }

        host_len = i;

        if (host_len == 0 || host_len > 255) {
            *why = "hostname must be 1 to 255 characters";
            return MX_ERROR;
        }
    }

    if (host_len == len) {
        return MX_OK;
    }

    if (p[host_len] != ':') {
        *why = "unexpected character after hostname";
        return MX_ERROR;
    }

    port_len = len - host_len - 1;

    if (port_len == 0 || port_len > 5) {
        *why = "port must be 1 to 5 digits";
        return MX_ERROR;
    }

    for (i = host_len + 1; i < len; i++) {
        if (!mx_is_digit(p[i])) {
            *why = "port must be 1 to 5 digits";
            return MX_ERROR;
        }
    }

    return MX_OK;
}


int
mx_id_valid(const char *id, size_t len, char sigil, int need_server,
    const char **why)
{
    const char  *colon;

    if (len < 2 || len > 255 || id[0] != sigil) {
        *why = "not an identifier of that kind or longer than 255 bytes";
        return MX_ERROR;
    }

    if (memchr(id, '\0', len) != NULL) {
        *why = "NUL in identifier";
        return MX_ERROR;
    }

    if (!need_server) {
        return MX_OK;
    }

    colon = memchr(id, ':', len);

    if (colon == NULL || colon == id + 1) {
        *why = "no local part and server name";
        return MX_ERROR;
    }

    return mx_server_name_valid(colon + 1, len - (size_t) (colon + 1 - id),
                                why);
}


int
mx_user_localpart_valid(const char *localpart, size_t len)
{
    size_t         i;
    unsigned char  c;

    if (len == 0 || len > 255) {
        return 0;
    }

    for (i = 0; i < len; i++) {
        c = (unsigned char) localpart[i];

        if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')
            || c == '-' || c == '.' || c == '=' || c == '_' || c == '/'
            || c == '+')
        {
            continue;
        }

        return 0;
    }

    return 1;
}


static int
mx_is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}


static int
mx_is_alpha(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}


static int
mx_is_hex(unsigned char c)
{
    return mx_is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}
