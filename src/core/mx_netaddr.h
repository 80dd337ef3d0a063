/*
 * IP addresses a federation client must not connect to by default (SSRF
 * protection), and the CIDR ranges an operator allows anyway.  Pure
 * functions over address bytes: no lookups.
 */

#ifndef MX_NETADDR_H
#define MX_NETADDR_H

#include <stddef.h>
#include <sys/socket.h>

#include "mx_core.h"


/* "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255/128" fits */
#define MX_CIDR_TEXT_MAX     64


/* an address as the socket API has it: family and network-order bytes */
typedef struct {
    int             family;         /* AF_INET or AF_INET6 */
    unsigned char   addr[16];       /* AF_INET: the first 4 bytes */
} mx_netaddr_t;


typedef struct {
    int             family;         /* AF_INET or AF_INET6 */
    unsigned        prefix;         /* 0 to 32, or 0 to 128 */
    unsigned char   addr[16];       /* the network: host bits are zero */
} mx_cidr_t;


/*
 * A literal IPv4 ("192.0.2.1", four decimal parts without leading zeros)
 * or IPv6 ("2001:db8::1", "::ffff:192.0.2.1"; no brackets, no zone)
 * address.  MX_OK, or MX_ERROR with err set.
 */
int mx_netaddr_parse(const char *text, size_t len, mx_netaddr_t *a,
    mx_err_t *err);

/*
 * NULL if a is an ordinary global unicast address; otherwise the
 * special-purpose range it is in, as "<range> <name>", for instance
 * "10.0.0.0/8 private-use" (a static string).  An IPv6 address that
 * stands for an IPv4 one (IPv4-mapped, NAT64 64:ff9b::/96, 6to4) is
 * judged by that IPv4 address, and *via, when via is not NULL, names the
 * IPv6 range it came through; otherwise *via is set to NULL.  An unknown
 * family is special ("unknown address family"): unknown means no.
 */
const char *mx_netaddr_special(const mx_netaddr_t *a, const char **via);

/*
 * "127.0.0.0/8", "::1/128", or a bare address (a /32 or /128).  Host
 * bits must be zero: "10.1.2.3/8" is refused, its message naming
 * "10.0.0.0/8", so that an allow-list says what it allows.  The prefix
 * is decimal without leading zeros.
 */
int mx_cidr_parse(const char *text, size_t len, mx_cidr_t *cidr,
    mx_err_t *err);

/*
 * 1 if a is in cidr, else 0.  An IPv4-mapped IPv6 address (::ffff:a.b.c.d)
 * matches the IPv4 ranges its IPv4 address is in, and an IPv4 address
 * the IPv6 ranges its mapped form is in; nothing else crosses families.
 */
int mx_cidr_match(const mx_cidr_t *cidr, const mx_netaddr_t *a);


#endif /* MX_NETADDR_H */
