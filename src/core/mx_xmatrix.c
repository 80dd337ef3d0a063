/*
 * X-Matrix request authentication (server-server API: Request
 * Authentication).  The header arrives from anyone before anything is
 * known about the sender, so it is read byte by byte under fixed limits
 * and into fixed buffers: no allocation until the signature is checked.
 */

#include <stddef.h>
#include <string.h>

#include "mx_core.h"
#include "mx_ids.h"
#include "mx_xmatrix.h"


#define MX_XM_ORIGIN        0x01
#define MX_XM_DESTINATION   0x02
#define MX_XM_KEY           0x04
#define MX_XM_SIG           0x08

#define MX_XM_SCHEME        "X-Matrix"
#define MX_XM_SCHEME_LEN    (sizeof(MX_XM_SCHEME) - 1)


/* the parameters we read; the others are skipped */
typedef struct {
    const char     *name;
    unsigned        bit;
    size_t          offset;     /* of the field in mx_xmatrix_auth_t */
    size_t          size;
} mx_xm_param_t;


/* where a parameter name stands in the header, to refuse repeats */
typedef struct {
    size_t          start;
    size_t          len;
} mx_xm_name_t;


static const mx_xm_param_t  mx_xm_params[] = {
    { "origin", MX_XM_ORIGIN, offsetof(mx_xmatrix_auth_t, origin),
      MX_XMATRIX_NAME_MAX + 1 },
    { "destination", MX_XM_DESTINATION,
      offsetof(mx_xmatrix_auth_t, destination), MX_XMATRIX_NAME_MAX + 1 },
    { "key", MX_XM_KEY, offsetof(mx_xmatrix_auth_t, key_id),
      MX_KEY_ID_LEN + 1 },
    { "sig", MX_XM_SIG, offsetof(mx_xmatrix_auth_t, sig_b64),
      MX_XMATRIX_SIG_B64_MAX + 1 },
    { NULL, 0, 0, 0 }
};


static int mx_xm_check_bytes(const unsigned char *p, size_t len,
    mx_err_t *err);
static int mx_xm_param(const unsigned char *p, size_t len, size_t *pos,
    mx_xm_name_t *seen, size_t *nseen, mx_xmatrix_auth_t *auth,
    unsigned *found, mx_err_t *err);
static int mx_xm_value(const unsigned char *p, size_t len, size_t *pos,
    char *dst, size_t size, const char *what, mx_err_t *err);
static const mx_xm_param_t *mx_xm_param_find(const unsigned char *name,
    size_t len);
static size_t mx_xm_ows(const unsigned char *p, size_t len, size_t i);
static size_t mx_xm_token(const unsigned char *p, size_t len, size_t i);
static int mx_xm_is_tchar(unsigned char c);
static int mx_xm_caseeq(const unsigned char *a, const char *b, size_t n);
static int mx_xm_key_id_valid(const char *id);
static int mx_xm_request_check(const mx_xmatrix_request_t *req,
    mx_err_t *err);
static int mx_xm_set(json_t *obj, const char *name, const char *s,
    size_t len, mx_err_t *err);


int
mx_xmatrix_parse_params(const char *header, size_t len,
    mx_xmatrix_auth_t *auth, mx_err_t *err)
{
    size_t                i, n, nseen, elems;
    unsigned              found;
    mx_xm_name_t          seen[MX_XMATRIX_PARAMS_MAX];
    const unsigned char  *p;

    p = (const unsigned char *) header;

    memset(auth, 0, sizeof(*auth));

    if (len > MX_XMATRIX_HEADER_MAX) {
        mx_err_set(err, "X-Matrix header longer than %d bytes",
                   MX_XMATRIX_HEADER_MAX);
        return MX_ERROR;
    }

    if (mx_xm_check_bytes(p, len, err) != MX_OK) {
        return MX_ERROR;
    }

    /* credentials = auth-scheme [ 1*SP ( token68 / #auth-param ) ] */

    i = mx_xm_ows(p, len, 0);
    n = mx_xm_token(p, len, i);

    if (n - i != MX_XM_SCHEME_LEN || !mx_xm_caseeq(p + i, MX_XM_SCHEME, n - i)
        || (n < len && p[n] != ' ' && p[n] != '\t'))
    {
        mx_err_set(err, "not an X-Matrix authorization");
        return MX_ERROR;
    }

    i = n;
    nseen = 0;
    elems = 0;
    found = 0;

    for ( ;; ) {
        i = mx_xm_ows(p, len, i);

        if (i == len) {
            break;
        }

        if (++elems > MX_XMATRIX_PARAMS_MAX) {
            mx_err_set(err, "more than %d parameters in X-Matrix header",
                       MX_XMATRIX_PARAMS_MAX);
            return MX_ERROR;
        }

        /* an empty list element: allowed, and counted */
        if (p[i] == ',') {
            i++;
            continue;
        }

        if (mx_xm_param(p, len, &i, seen, &nseen, auth, &found, err)
            != MX_OK)
        {
            return MX_ERROR;
        }
    }

    if (!(found & MX_XM_ORIGIN)) {
        mx_err_set(err, "no origin in X-Matrix header");
        return MX_ERROR;
    }

    if (!(found & MX_XM_KEY)) {
        mx_err_set(err, "no key in X-Matrix header");
        return MX_ERROR;
    }

    if (!(found & MX_XM_SIG)) {
        mx_err_set(err, "no sig in X-Matrix header");
        return MX_ERROR;
    }

    auth->has_destination = (found & MX_XM_DESTINATION) != 0;

    return MX_OK;
}


int
mx_xmatrix_parse(const char *header, size_t len, mx_xmatrix_auth_t *auth,
    mx_err_t *err)
{
    size_t         sig_len;
    const char    *why;
    unsigned char  sig[MX_XMATRIX_SIG_B64_MAX * 3 / 4 + 1];

    if (mx_xmatrix_parse_params(header, len, auth, err) != MX_OK) {
        return MX_ERROR;
    }

    if (mx_server_name_valid(auth->origin, strlen(auth->origin), &why)
        != MX_OK)
    {
        mx_err_set(err, "X-Matrix origin is not a server name: %s", why);
        return MX_ERROR;
    }

    if (auth->has_destination
        && mx_server_name_valid(auth->destination, strlen(auth->destination),
                                &why)
           != MX_OK)
    {
        mx_err_set(err, "X-Matrix destination is not a server name: %s",
                   why);
        return MX_ERROR;
    }

    if (!mx_xm_key_id_valid(auth->key_id)) {
        mx_err_set(err, "X-Matrix key is not an ed25519 key ID");
        return MX_ERROR;
    }

    /* the field holds at most MX_XMATRIX_SIG_B64_MAX characters */
    if (mx_base64_decode(sig, &sig_len, auth->sig_b64, strlen(auth->sig_b64))
        != MX_OK)
    {
        mx_err_set(err, "X-Matrix sig is not valid base64");
        return MX_ERROR;
    }

    if (sig_len != MX_ED25519_SIG_LEN) {
        mx_err_set(err, "X-Matrix sig is %zu bytes, not %d", sig_len,
                   MX_ED25519_SIG_LEN);
        return MX_ERROR;
    }

    memcpy(auth->sig, sig, MX_ED25519_SIG_LEN);

    return MX_OK;
}


json_t *
mx_xmatrix_request_json(const mx_xmatrix_request_t *req, mx_err_t *err)
{
    json_t  *obj;

    if (mx_xm_request_check(req, err) != MX_OK) {
        return NULL;
    }

    obj = json_object();
    if (obj == NULL) {
        mx_err_set(err, "out of memory");
        return NULL;
    }

    if (mx_xm_set(obj, "method", req->method, req->method_len, err) != MX_OK
        || mx_xm_set(obj, "uri", req->uri, req->uri_len, err) != MX_OK
        || mx_xm_set(obj, "origin", req->origin, req->origin_len, err)
           != MX_OK
        || mx_xm_set(obj, "destination", req->destination,
                     req->destination_len, err)
           != MX_OK)
    {
        json_decref(obj);
        return NULL;
    }

    /* a reference, not a copy: the body is only read */
    if (req->content != NULL
        && json_object_set(obj, "content", (json_t *) req->content) != 0)
    {
        mx_err_set(err, "out of memory");
        json_decref(obj);
        return NULL;
    }

    return obj;
}


int
mx_xmatrix_signing_bytes(const mx_xmatrix_request_t *req, mx_buf_t *out,
    mx_err_t *err)
{
    int      rc;
    json_t  *obj;

    obj = mx_xmatrix_request_json(req, err);
    if (obj == NULL) {
        return MX_ERROR;
    }

    rc = mx_json_canonical(obj, out, err);

    json_decref(obj);

    return rc;
}


int
mx_xmatrix_sign(const mx_xmatrix_request_t *req, const mx_signing_key_t *key,
    mx_buf_t *out, mx_err_t *err)
{
    int          rc;
    char         origin[MX_XMATRIX_NAME_MAX + 1];
    size_t       start;
    json_t      *obj, *sig;
    const char  *b64;

    obj = mx_xmatrix_request_json(req, err);
    if (obj == NULL) {
        return MX_ERROR;
    }

    /* a server name: mx_xmatrix_request_json() has checked its length */
    memcpy(origin, req->origin, req->origin_len);
    origin[req->origin_len] = '\0';

    rc = MX_ERROR;
    start = out->len;       /* a failed call appends nothing */

    if (mx_json_sign(obj, origin, key, err) != MX_OK) {
        goto done;
    }

    sig = json_object_get(json_object_get(json_object_get(obj, "signatures"),
                                          origin),
                          key->key_id);
    b64 = json_string_value(sig);

    if (b64 == NULL) {
        mx_err_set(err, "no signature after signing");
        goto done;
    }

    if (mx_buf_append_str(out, MX_XM_SCHEME " origin=\"") != MX_OK
        || mx_buf_append(out, req->origin, req->origin_len) != MX_OK
        || mx_buf_append_str(out, "\",destination=\"") != MX_OK
        || mx_buf_append(out, req->destination, req->destination_len)
           != MX_OK
        || mx_buf_append_str(out, "\",key=\"") != MX_OK
        || mx_buf_append_str(out, key->key_id) != MX_OK
        || mx_buf_append_str(out, "\",sig=\"") != MX_OK
        || mx_buf_append_str(out, b64) != MX_OK
        || mx_buf_append_str(out, "\"") != MX_OK)
    {
        mx_err_set(err, "out of memory");
        out->len = start;
        goto done;
    }

    rc = MX_OK;

done:

    json_decref(obj);

    return rc;
}


int
mx_xmatrix_verify(const mx_xmatrix_auth_t *auth,
    const mx_xmatrix_request_t *req, const unsigned char *public_key,
    mx_sigcache_t *cache, mx_err_t *err)
{
    int       rc;
    mx_buf_t  bytes;

    if (strlen(auth->origin) != req->origin_len
        || memcmp(auth->origin, req->origin, req->origin_len) != 0)
    {
        mx_err_set(err, "the request's origin is not the X-Matrix origin");
        return MX_ERROR;
    }

    if (auth->has_destination
        && (strlen(auth->destination) != req->destination_len
            || memcmp(auth->destination, req->destination,
                      req->destination_len) != 0))
    {
        mx_err_set(err, "X-Matrix destination is not this server");
        return MX_ERROR;
    }

    /*
     * The object the origin signed has no "signatures" or "unsigned" of
     * its own (content is one level down), so its canonical form is
     * exactly what the JSON signing rules would verify.
     */

    mx_buf_init(&bytes);

    if (mx_xmatrix_signing_bytes(req, &bytes, err) != MX_OK) {
        mx_buf_free(&bytes);
        return MX_ERROR;
    }

    rc = mx_ed25519_verify_cached(cache, auth->sig, bytes.data, bytes.len,
                                  public_key);

    mx_buf_free(&bytes);

    if (rc != MX_OK) {
        mx_err_set(err, "signature by %s with %s does not verify",
                   auth->origin, auth->key_id);
        return MX_ERROR;
    }

    return MX_OK;
}


/* NUL and control characters are refused anywhere, even in quotes */
static int
mx_xm_check_bytes(const unsigned char *p, size_t len, mx_err_t *err)
{
    size_t  i;

    for (i = 0; i < len; i++) {
        if (p[i] == '\0') {
            mx_err_set(err, "NUL in X-Matrix header");
            return MX_ERROR;
        }

        if ((p[i] < 0x20 && p[i] != '\t') || p[i] == 0x7f) {
            mx_err_set(err, "control character in X-Matrix header");
            return MX_ERROR;
        }
    }

    return MX_OK;
}


/*
 * auth-param = token BWS "=" BWS ( token / quoted-string ), and the
 * OWS and "," after it.  *pos is at the name, and ends after the comma
 * or at the end of the header.
 */
static int
mx_xm_param(const unsigned char *p, size_t len, size_t *pos,
    mx_xm_name_t *seen, size_t *nseen, mx_xmatrix_auth_t *auth,
    unsigned *found, mx_err_t *err)
{
    size_t                i, k, name, name_len;
    const char           *what;
    const mx_xm_param_t  *param;

    name = *pos;
    i = mx_xm_token(p, len, name);
    name_len = i - name;

    if (name_len == 0) {
        mx_err_set(err, "X-Matrix parameter without a name");
        return MX_ERROR;
    }

    if (i < len && p[i] != '=' && p[i] != ' ' && p[i] != '\t') {
        mx_err_set(err, "invalid character in an X-Matrix parameter name");
        return MX_ERROR;
    }

    param = mx_xm_param_find(p + name, name_len);
    what = param ? param->name : "a parameter";

    /* names are never quoted back: an unknown one is the sender's text */
    for (k = 0; k < *nseen; k++) {
        if (seen[k].len == name_len
            && mx_xm_caseeq(p + seen[k].start, (const char *) p + name,
                            name_len))
        {
            mx_err_set(err, "X-Matrix header repeats %s", what);
            return MX_ERROR;
        }
    }

    /* one name per element, and the caller counts the elements */
    seen[*nseen].start = name;
    seen[*nseen].len = name_len;
    (*nseen)++;

    i = mx_xm_ows(p, len, i);

    if (i == len || p[i] != '=') {
        mx_err_set(err, "X-Matrix parameter without a value");
        return MX_ERROR;
    }

    i = mx_xm_ows(p, len, i + 1);

    if (mx_xm_value(p, len, &i,
                    param ? (char *) auth + param->offset : NULL,
                    param ? param->size : 0, what, err)
        != MX_OK)
    {
        return MX_ERROR;
    }

    if (param) {
        *found |= param->bit;
    }

    i = mx_xm_ows(p, len, i);

    if (i < len && p[i] != ',') {
        mx_err_set(err, "no comma after the value of %s in X-Matrix header",
                   what);
        return MX_ERROR;
    }

    *pos = i < len ? i + 1 : i;

    return MX_OK;
}


/*
 * A quoted string (qdtext and quoted-pairs, undone) or an unquoted value:
 * visible ASCII but '"', ',' and '\' (a token, and the ':' and the
 * base64 characters senders put there unquoted).  Written to dst, when
 * not NULL, NUL-terminated and at most size - 1 bytes.  Control bytes
 * were refused before; obs-text is left to the value checks.
 */
static int
mx_xm_value(const unsigned char *p, size_t len, size_t *pos, char *dst,
    size_t size, const char *what, mx_err_t *err)
{
    int            quoted;
    size_t         i, n;
    unsigned char  c;

    i = *pos;
    n = 0;
    quoted = i < len && p[i] == '"';

    if (quoted) {
        i++;
    }

    for ( ;; ) {
        if (i == len) {
            if (quoted) {
                mx_err_set(err, "unterminated quoted value of %s in "
                           "X-Matrix header", what);
                return MX_ERROR;
            }

            break;
        }

        c = p[i];

        if (quoted) {
            if (c == '"') {
                i++;
                break;
            }

            if (c == '\\') {
                if (++i == len) {
                    mx_err_set(err, "unterminated quoted value of %s in "
                               "X-Matrix header", what);
                    return MX_ERROR;
                }

                c = p[i];
            }

        } else if (c == ',' || c == ' ' || c == '\t') {
            break;

        } else if (c == '"' || c == '\\' || c >= 0x80) {
            mx_err_set(err, "invalid character in the value of %s in "
                       "X-Matrix header (quote it)", what);
            return MX_ERROR;
        }

        if (dst != NULL) {
            if (n == size - 1) {
                mx_err_set(err, "X-Matrix %s longer than %zu bytes", what,
                           size - 1);
                return MX_ERROR;
            }

            dst[n] = (char) c;
        }

        n++;
        i++;
    }

    /* "name=" is no value at all; name="" is one, empty */
    if (n == 0 && (!quoted || dst != NULL)) {
        mx_err_set(err, "empty value of %s in X-Matrix header", what);
        return MX_ERROR;
    }

    if (dst != NULL) {
        dst[n] = '\0';
    }

    *pos = i;

    return MX_OK;
}


static const mx_xm_param_t *
mx_xm_param_find(const unsigned char *name, size_t len)
{
    const mx_xm_param_t  *param;

    for (param = mx_xm_params; param->name; param++) {
        if (strlen(param->name) == len && mx_xm_caseeq(name, param->name, len))
        {
            return param;
        }
    }

    return NULL;
}


static size_t
mx_xm_ows(const unsigned char *p, size_t len, size_t i)
{
    while (i < len && (p[i] == ' ' || p[i] == '\t')) {
        i++;
    }

    return i;
}


static size_t
mx_xm_token(const unsigned char *p, size_t len, size_t i)
{
    while (i < len && mx_xm_is_tchar(p[i])) {
        i++;
    }

    return i;
}


/* RFC 9110 5.6.2 */
static int
mx_xm_is_tchar(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
        || (c >= '0' && c <= '9'))
    {
        return 1;
    }

    return c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}


/* ASCII case-insensitive, whatever the locale */
static int
mx_xm_caseeq(const unsigned char *a, const char *b, size_t n)
{
    size_t         i;
    unsigned char  x, y;

    for (i = 0; i < n; i++) {
        x = a[i];
        y = (unsigned char) b[i];

        if (x >= 'A' && x <= 'Z') {
            x = (unsigned char) (x - 'A' + 'a');
        }

        if (y >= 'A' && y <= 'Z') {
            y = (unsigned char) (y - 'A' + 'a');
        }

        if (x != y) {
            return 0;
        }
    }

    return 1;
}


/* "ed25519:" and 1 to MX_KEY_VERSION_LEN of [A-Za-z0-9_] */
static int
mx_xm_key_id_valid(const char *id)
{
    size_t  i, len;
    char    c;

    len = strlen(id);

    if (len <= 8 || len > MX_KEY_ID_LEN || strncmp(id, "ed25519:", 8) != 0) {
        return 0;
    }

    for (i = 8; i < len; i++) {
        c = id[i];

        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
              || (c >= '0' && c <= '9') || c == '_'))
        {
            return 0;
        }
    }

    return 1;
}


static int
mx_xm_request_check(const mx_xmatrix_request_t *req, mx_err_t *err)
{
    size_t       i;
    const char  *why;

    if (req->method_len == 0 || req->method_len > MX_XMATRIX_METHOD_MAX
        || mx_xm_token((const unsigned char *) req->method, req->method_len,
                       0)
           != req->method_len)
    {
        mx_err_set(err, "the request method is not an HTTP method");
        return MX_ERROR;
    }

    if (req->uri_len == 0 || req->uri[0] != '/') {
        mx_err_set(err, "the request target does not start with \"/\"");
        return MX_ERROR;
    }

    for (i = 0; i < req->uri_len; i++) {
        if ((unsigned char) req->uri[i] <= 0x20
            || (unsigned char) req->uri[i] >= 0x7f)
        {
            mx_err_set(err, "the request target holds a character other "
                       "than visible ASCII");
            return MX_ERROR;
        }
    }

    if (mx_server_name_valid(req->origin, req->origin_len, &why) != MX_OK) {
        mx_err_set(err, "origin is not a server name: %s", why);
        return MX_ERROR;
    }

    if (mx_server_name_valid(req->destination, req->destination_len, &why)
        != MX_OK)
    {
        mx_err_set(err, "destination is not a server name: %s", why);
        return MX_ERROR;
    }

    return MX_OK;
}


static int
mx_xm_set(json_t *obj, const char *name, const char *s, size_t len,
    mx_err_t *err)
{
    json_t  *v;

    v = json_stringn(s, len);

    if (v == NULL || json_object_set_new(obj, name, v) != 0) {
        mx_err_set(err, "out of memory");
        return MX_ERROR;
    }

    return MX_OK;
}
