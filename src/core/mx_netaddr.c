/*
 * Special-purpose addresses and CIDR ranges.
 *
 * The tables follow IANA's special-purpose address registries (RFC 6890,
 * updated by RFC 8190):
 *
 *   https://www.iana.org/assignments/iana-ipv4-special-registry/
 *   https://www.iana.org/assignments/iana-ipv6-special-registry/
 *
 * and add what those leave to other registries: multicast (RFC 5771,
 * RFC 4291), 240.0.0.0/4 (RFC 1112), the deprecated site-local (RFC 3879)
 * and IPv4-compatible (RFC 4291 2.5.5.1) IPv6 ranges.  A block is listed
 * whole even where the registry marks a few addresses inside it globally
 * reachable (192.0.0.9/32, 2001:1::1/128, 2001:3::/32, ...): no Matrix
 * server lives there, and an operator can still allow them by CIDR.
 * What embeds an IPv4 address that a router will actually reach (IPv4-
 * mapped, the NAT64 well-known prefix, 6to4) is judged by that address.
 */

#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>

#include "mx_core.h"
#include "mx_netaddr.h"


/* in the tables: no embedded IPv4 address (no entry embeds at byte 0) */
#define MX_NA_NONE   0


typedef struct {
    mx_cidr_t       range;
    const char     *name;
    size_t          embedded;       /* offset of an IPv4 address, or 0 */
} mx_na_special_t;


#define MX_NA_V4(a, b, c, d, prefix)                                         \
    { AF_INET, prefix, { a, b, c, d } }

#define MX_NA_V6(b0, b1, b2, b3, b4, b5, prefix)                             \
    { AF_INET6, prefix, { b0, b1, b2, b3, b4, b5 } }


/* a more specific range before the one that holds it, for its name */

static const mx_na_special_t  mx_na_special_v4[] = {
    /* RFC 791, RFC 1122 */
    { MX_NA_V4(0, 0, 0, 0, 8), "0.0.0.0/8 this network", MX_NA_NONE },
    /* RFC 1918 */
    { MX_NA_V4(10, 0, 0, 0, 8), "10.0.0.0/8 private-use", MX_NA_NONE },
    /* RFC 6598 */
    { MX_NA_V4(100, 64, 0, 0, 10), "100.64.0.0/10 shared address space",
      MX_NA_NONE },
    /* RFC 1122 */
    { MX_NA_V4(127, 0, 0, 0, 8), "127.0.0.0/8 loopback", MX_NA_NONE },
    /* RFC 3927 */
    { MX_NA_V4(169, 254, 0, 0, 16), "169.254.0.0/16 link-local",
      MX_NA_NONE },
    /* RFC 1918 */
    { MX_NA_V4(172, 16, 0, 0, 12), "172.16.0.0/12 private-use",
      MX_NA_NONE },
    /* RFC 6890 */
    { MX_NA_V4(192, 0, 0, 0, 24), "192.0.0.0/24 IETF protocol assignments",
      MX_NA_NONE },
    /* RFC 5737 */
    { MX_NA_V4(192, 0, 2, 0, 24), "192.0.2.0/24 documentation (TEST-NET-1)",
      MX_NA_NONE },
    /* RFC 7526 (deprecated) */
    { MX_NA_V4(192, 88, 99, 0, 24), "192.88.99.0/24 6to4 relay anycast",
      MX_NA_NONE },
    /* RFC 1918 */
    { MX_NA_V4(192, 168, 0, 0, 16), "192.168.0.0/16 private-use",
      MX_NA_NONE },
    /* RFC 2544 */
    { MX_NA_V4(198, 18, 0, 0, 15), "198.18.0.0/15 benchmarking",
      MX_NA_NONE },
    /* RFC 5737 */
    { MX_NA_V4(198, 51, 100, 0, 24),
      "198.51.100.0/24 documentation (TEST-NET-2)", MX_NA_NONE },
    { MX_NA_V4(203, 0, 113, 0, 24),
      "203.0.113.0/24 documentation (TEST-NET-3)", MX_NA_NONE },
    /* RFC 5771 */
    { MX_NA_V4(224, 0, 0, 0, 4), "224.0.0.0/4 multicast", MX_NA_NONE },
    /* RFC 919, RFC 8190 */
    { MX_NA_V4(255, 255, 255, 255, 32), "255.255.255.255/32 limited broadcast",
      MX_NA_NONE },
    /* RFC 1112 */
    { MX_NA_V4(240, 0, 0, 0, 4), "240.0.0.0/4 reserved", MX_NA_NONE },
    { { 0, 0, { 0 } }, NULL, MX_NA_NONE }
};


static const mx_na_special_t  mx_na_special_v6[] = {
    /* RFC 4291 */
    { MX_NA_V6(0, 0, 0, 0, 0, 0, 128), "::/128 unspecified", MX_NA_NONE },
    { { AF_INET6, 128, { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1 } },
      "::1/128 loopback", MX_NA_NONE },
    /* RFC 4291: the IPv4 address decides */
    { { AF_INET6, 96, { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff } },
      "::ffff:0:0/96 IPv4-mapped", 12 },
    /* RFC 4291 2.5.5.1, deprecated: no router has a route for them */
    { MX_NA_V6(0, 0, 0, 0, 0, 0, 96), "::/96 IPv4-compatible (deprecated)",
      MX_NA_NONE },
    /* RFC 6052: translated to the IPv4 address, which decides */
    { MX_NA_V6(0, 0x64, 0xff, 0x9b, 0, 0, 96), "64:ff9b::/96 NAT64", 12 },
    /* RFC 8215 */
    { MX_NA_V6(0, 0x64, 0xff, 0x9b, 0, 1, 48), "64:ff9b:1::/48 local-use NAT64",
      MX_NA_NONE },
    /* RFC 6666 */
    { MX_NA_V6(0x01, 0, 0, 0, 0, 0, 64), "100::/64 discard-only",
      MX_NA_NONE },
    /* RFC 4380 */
    { MX_NA_V6(0x20, 0x01, 0, 0, 0, 0, 32), "2001::/32 Teredo", MX_NA_NONE },
    /* RFC 2928 */
    { MX_NA_V6(0x20, 0x01, 0, 0, 0, 0, 23),
      "2001::/23 IETF protocol assignments", MX_NA_NONE },
    /* RFC 3849 */
    { MX_NA_V6(0x20, 0x01, 0x0d, 0xb8, 0, 0, 32), "2001:db8::/32 documentation",
      MX_NA_NONE },
    /* RFC 3056: the IPv4 address of the 6to4 site decides */
    { MX_NA_V6(0x20, 0x02, 0, 0, 0, 0, 16), "2002::/16 6to4", 2 },
    /* RFC 9637 */
    { MX_NA_V6(0x3f, 0xff, 0, 0, 0, 0, 20), "3fff::/20 documentation",
      MX_NA_NONE },
    /* RFC 9602 */
    { MX_NA_V6(0x5f, 0x00, 0, 0, 0, 0, 16), "5f00::/16 SRv6 SIDs",
      MX_NA_NONE },
    /* RFC 4193 */
    { MX_NA_V6(0xfc, 0, 0, 0, 0, 0, 7), "fc00::/7 unique-local", MX_NA_NONE },
    /* RFC 4291 */
    { MX_NA_V6(0xfe, 0x80, 0, 0, 0, 0, 10), "fe80::/10 link-local",
      MX_NA_NONE },
    /* RFC 3879, deprecated */
    { MX_NA_V6(0xfe, 0xc0, 0, 0, 0, 0, 10), "fec0::/10 site-local",
      MX_NA_NONE },
    /* RFC 4291 */
    { MX_NA_V6(0xff, 0, 0, 0, 0, 0, 8), "ff00::/8 multicast", MX_NA_NONE },
    { { 0, 0, { 0 } }, NULL, MX_NA_NONE }
};


static const unsigned char  mx_na_mapped[12] = {
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff
};


static const mx_na_special_t *mx_na_find(const mx_na_special_t *table,
    const unsigned char *addr);
static int mx_na_prefix_eq(const unsigned char *a, const unsigned char *b,
    unsigned bits);


int
mx_netaddr_parse(const char *text, size_t len, mx_netaddr_t *a,
    mx_err_t *err)
{
    char  buf[INET6_ADDRSTRLEN];

    memset(a, 0, sizeof(*a));

    if (len == 0 || len >= sizeof(buf) || memchr(text, '\0', len) != NULL) {
        mx_err_set(err, "not an IP address");
        return MX_ERROR;
    }

    memcpy(buf, text, len);
    buf[len] = '\0';

    a->family = memchr(buf, ':', len) != NULL ? AF_INET6 : AF_INET;

    /* inet_pton() is a parser, not a lookup: it never blocks */
    if (inet_pton(a->family, buf, a->addr) != 1) {
        mx_err_set(err, "not an %s address",
                   a->family == AF_INET ? "IPv4" : "IPv6");
        a->family = 0;
        return MX_ERROR;
    }

    return MX_OK;
}


const char *
mx_netaddr_special(const mx_netaddr_t *a, const char **via)
{
    const mx_na_special_t  *s, *inner;

    if (via != NULL) {
        *via = NULL;
    }

    if (a->family == AF_INET) {
        s = mx_na_find(mx_na_special_v4, a->addr);
        return s ? s->name : NULL;
    }

    if (a->family != AF_INET6) {
        return "unknown address family";
    }

    s = mx_na_find(mx_na_special_v6, a->addr);

    if (s == NULL) {
        return NULL;
    }

    if (s->embedded == MX_NA_NONE) {
        return s->name;
    }

    inner = mx_na_find(mx_na_special_v4, a->addr + s->embedded);

    if (inner == NULL) {
        return NULL;
    }

    if (via != NULL) {
        *via = s->name;
    }

    return inner->name;
}


int
mx_cidr_parse(const char *text, size_t len, mx_cidr_t *cidr, mx_err_t *err)
{
    char           net[INET6_ADDRSTRLEN];
    size_t         i, addr_len, bits;
    unsigned       max;
    const char    *slash;
    mx_netaddr_t   a;
    unsigned char  masked[16];

    memset(cidr, 0, sizeof(*cidr));

    if (len > MX_CIDR_TEXT_MAX) {
        mx_err_set(err, "a CIDR range is at most %d characters",
                   MX_CIDR_TEXT_MAX);
        return MX_ERROR;
    }

    slash = memchr(text, '/', len);
    addr_len = slash ? (size_t) (slash - text) : len;

    if (mx_netaddr_parse(text, addr_len, &a, err) != MX_OK) {
        return MX_ERROR;
    }

    max = a.family == AF_INET ? 32 : 128;
    bits = max;

    if (slash != NULL) {
        i = addr_len + 1;

        if (i == len || len - i > 3 || (text[i] == '0' && len - i > 1)) {
            mx_err_set(err, "the prefix length must be 0 to %u, in decimal "
                       "without leading zeros", max);
            return MX_ERROR;
        }

        for (bits = 0; i < len; i++) {
            if (text[i] < '0' || text[i] > '9') {
                mx_err_set(err, "the prefix length must be 0 to %u, in "
                           "decimal without leading zeros", max);
                return MX_ERROR;
            }

            bits = bits * 10 + (size_t) (text[i] - '0');
        }

        if (bits > max) {
            mx_err_set(err, "the prefix length must be 0 to %u, in decimal "
                       "without leading zeros", max);
            return MX_ERROR;
        }
    }

    memset(masked, 0, sizeof(masked));
    memcpy(masked, a.addr, bits / 8);

    if (bits % 8) {
        masked[bits / 8] = a.addr[bits / 8]
                           & (unsigned char) (0xff << (8 - bits % 8));
    }

    if (memcmp(masked, a.addr, max / 8) != 0) {
        if (inet_ntop(a.family, masked, net, sizeof(net)) == NULL) {
            net[0] = '\0';
        }

        mx_err_set(err, "host bits are set: the network is %s/%zu", net,
                   bits);
        return MX_ERROR;
    }

    cidr->family = a.family;
    cidr->prefix = (unsigned) bits;
    memcpy(cidr->addr, a.addr, sizeof(cidr->addr));

    return MX_OK;
}


int
mx_cidr_match(const mx_cidr_t *cidr, const mx_netaddr_t *a)
{
    unsigned char  mapped[16];

    if (cidr->family == a->family
        && (a->family == AF_INET || a->family == AF_INET6))
    {
        return mx_na_prefix_eq(cidr->addr, a->addr, cidr->prefix);
    }

    if (cidr->family == AF_INET && a->family == AF_INET6
        && memcmp(a->addr, mx_na_mapped, sizeof(mx_na_mapped)) == 0)
    {
        return mx_na_prefix_eq(cidr->addr, a->addr + 12, cidr->prefix);
    }

    if (cidr->family == AF_INET6 && a->family == AF_INET) {
        memcpy(mapped, mx_na_mapped, sizeof(mx_na_mapped));
        memcpy(mapped + 12, a->addr, 4);
        return mx_na_prefix_eq(cidr->addr, mapped, cidr->prefix);
    }

    return 0;
}


static const mx_na_special_t *
mx_na_find(const mx_na_special_t *table, const unsigned char *addr)
{
    const mx_na_special_t  *s;

    for (s = table; s->name; s++) {
        if (mx_na_prefix_eq(s->range.addr, addr, s->range.prefix)) {
            return s;
        }
    }

    return NULL;
}


/* the first bits bits of a and b are equal */
static int
mx_na_prefix_eq(const unsigned char *a, const unsigned char *b,
    unsigned bits)
{
    unsigned char  mask;

    if (memcmp(a, b, bits / 8) != 0) {
        return 0;
    }

    if (bits % 8 == 0) {
        return 1;
    }

    mask = (unsigned char) (0xff << (8 - bits % 8));

    return (a[bits / 8] & mask) == (b[bits / 8] & mask);
}
