/*
 * X-Matrix request authentication (server-server API: Request
 * Authentication): the Authorization header a homeserver sends with every
 * federation request, and the JSON object its signature covers.
 */

#ifndef MX_XMATRIX_H
#define MX_XMATRIX_H

#include <stddef.h>

#include "mx_core.h"
#include "mx_sigcache.h"


/* the whole header value; nginx's default header buffer is 1 KiB */
#define MX_XMATRIX_HEADER_MAX      8192

/* list elements, empty ones included (RFC 9110 5.6.1.2 "reasonable") */
#define MX_XMATRIX_PARAMS_MAX      32

/* hostname (255) ":" port (5): the longest server name the grammar has */
#define MX_XMATRIX_NAME_MAX        261

/* 64 bytes: 86 characters unpadded, 88 padded */
#define MX_XMATRIX_SIG_B64_MAX     88

/* method names we sign; the longest registered one is 17 bytes */
#define MX_XMATRIX_METHOD_MAX      32


/*
 * The parameters of one X-Matrix header, unescaped and NUL-terminated
 * (NUL is never accepted in the header, so strlen() is their length).
 * sig is only filled by mx_xmatrix_parse().
 */
typedef struct {
    char            origin[MX_XMATRIX_NAME_MAX + 1];
    char            destination[MX_XMATRIX_NAME_MAX + 1];  /* "" if absent */
    char            key_id[MX_KEY_ID_LEN + 1];
    char            sig_b64[MX_XMATRIX_SIG_B64_MAX + 1];
    unsigned char   sig[MX_ED25519_SIG_LEN];
    int             has_destination;
} mx_xmatrix_auth_t;


/*
 * One federation request as signed.  uri is the request-target exactly
 * as sent (path and query, before any decoding); content the parsed JSON
 * body, NULL for a request without one.  Strings are not necessarily
 * NUL-terminated.
 */
typedef struct {
    const char     *method;
    size_t          method_len;
    const char     *uri;
    size_t          uri_len;
    const char     *origin;
    size_t          origin_len;
    const char     *destination;
    size_t          destination_len;
    const json_t   *content;
} mx_xmatrix_request_t;


/*
 * The header's grammar alone (RFC 9110 11.4 credentials, as the spec
 * summarises it): scheme "X-Matrix" in any case, one or more spaces or
 * tabs, then name=value parameters separated by commas with optional
 * spaces and tabs around them.  Names are case-insensitive tokens;
 * values are quoted strings (backslash escapes undone) or unquoted runs
 * of visible ASCII other than '"', ',' and '\' (so "key=ed25519:1", the
 * compatibility the spec asks for).  Unknown parameters are skipped, a
 * repeated name, an empty known value, NUL, control characters, a
 * header longer than MX_XMATRIX_HEADER_MAX and values longer than their
 * field are refused; origin, key and sig are required.  The values are
 * not checked: "sig" may be any string.  err never quotes the input.
 */
int mx_xmatrix_parse_params(const char *header, size_t len,
    mx_xmatrix_auth_t *auth, mx_err_t *err);

/*
 * mx_xmatrix_parse_params(), then the values: origin and destination
 * must be server names (mx_server_name_valid()), the key an ed25519 key
 * ID ("ed25519:" and 1 to 64 of [A-Za-z0-9_]), sig base64 of exactly 64
 * bytes (decoded into auth->sig; padding is tolerated, as everywhere in
 * the core).  What a receiving server calls on the Authorization header.
 */
int mx_xmatrix_parse(const char *header, size_t len, mx_xmatrix_auth_t *auth,
    mx_err_t *err);

/*
 * {"method", "uri", "origin", "destination", "content"} with content only
 * when req->content is not NULL; a new reference, or NULL with err set.
 * The method must be a token, the uri start with "/" and hold visible
 * ASCII only, origin and destination be server names.
 */
json_t *mx_xmatrix_request_json(const mx_xmatrix_request_t *req,
    mx_err_t *err);

/* appends the canonical JSON of mx_xmatrix_request_json() to out */
int mx_xmatrix_signing_bytes(const mx_xmatrix_request_t *req, mx_buf_t *out,
    mx_err_t *err);

/*
 * Signs the request with key as req->origin and appends the header value
 * to out: X-Matrix origin="..",destination="..",key="..",sig="..", in the
 * form the spec asks senders to use (one space, lower-case names, quoted
 * values; server names, key IDs and base64 never need a backslash).
 */
int mx_xmatrix_sign(const mx_xmatrix_request_t *req,
    const mx_signing_key_t *key, mx_buf_t *out, mx_err_t *err);

/*
 * Checks a parsed header against the request as received: req->origin
 * must be auth->origin, req->destination this server's name, which the
 * header's destination, when present, must equal (else the spec's 401);
 * then auth->sig must verify with public_key (the origin's key
 * auth->key_id) over the signing bytes of req.  With a cache (else
 * NULL), a request already verified with that key is not verified again.
 */
int mx_xmatrix_verify(const mx_xmatrix_auth_t *auth,
    const mx_xmatrix_request_t *req, const unsigned char *public_key,
    mx_sigcache_t *cache, mx_err_t *err);


#endif /* MX_XMATRIX_H */
