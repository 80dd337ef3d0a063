/*
 * JSON parsing and Canonical JSON (appendices: Canonical JSON).
 *
 * jansson parses; the serializer is ours, because json_dumps() is not
 * canonical: it writes uppercase \u escapes, escapes "/" on request
 * only, sorts keys with strcmp() (wrong for keys holding NUL) and
 * prints any real or 64-bit integer it is given.
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mx_core.h"


/*
 * Nesting limit of the serializer and the strict check, both of which
 * recurse.  It equals jansson's own parser limit (JSON_PARSER_MAX_DEPTH),
 * so everything mx_json_parse() accepts can also be canonicalized and
 * the limit only bites on values built in code (including cycles, which
 * jansson does not prevent).  Synapse, whose Python encoder stops near
 * depth 1000, could not sign anything deeper anyway; each level costs
 * well under 200 bytes of stack, so 2048 levels fit any stack we run on.
 */
#define MX_JSON_MAX_DEPTH   2048

#define MX_JSON_PATH_LEN    96


/* where in a value an error was found, "$.content.body[2]" style */
typedef struct {
    char            p[MX_JSON_PATH_LEN];
    size_t          len;
} mx_json_path_t;


typedef struct {
    mx_buf_t       *out;
    mx_err_t       *err;
    mx_json_path_t  path;
    unsigned        depth;
} mx_json_ctx_t;


typedef struct {
    const char     *key;
    size_t          len;
    json_t         *value;
} mx_json_member_t;


static void mx_json_path_init(mx_json_path_t *path);
static size_t mx_json_path_key(mx_json_path_t *path, const char *key,
    size_t len);
static size_t mx_json_path_index(mx_json_path_t *path, size_t i);
static void mx_json_path_pop(mx_json_path_t *path, size_t len);
static int mx_json_enter(mx_json_ctx_t *ctx);
static int mx_json_strict(mx_json_ctx_t *ctx, const json_t *v);
static int mx_json_negative_zero(const char *text, size_t len,
    size_t *offset);
static int mx_json_write(mx_json_ctx_t *ctx, const json_t *v);
static int mx_json_write_object(mx_json_ctx_t *ctx, const json_t *v);
static int mx_json_write_array(mx_json_ctx_t *ctx, const json_t *v);
static int mx_json_write_string(mx_json_ctx_t *ctx, const char *s,
    size_t len);
static int mx_json_write_integer(mx_json_ctx_t *ctx, json_int_t i);
static int mx_json_write_real(mx_json_ctx_t *ctx, double d);
static int mx_json_member_cmp(const void *one, const void *two);
static size_t mx_utf8_char_len(const unsigned char *p, size_t n);
static const char *mx_json_real_str(char *buf, size_t size, double d);
static int mx_json_nomem(mx_json_ctx_t *ctx);


json_t *
mx_json_parse(const char *text, size_t len, int flags, mx_err_t *err)
{
    size_t        offset;
    json_t       *v;
    json_error_t  e;

    /* jansson wants a pointer even for no bytes */
    if (text == NULL) {
        text = "";
        len = 0;
    }

    /*
     * JSON_DECODE_ANY: Canonical JSON is defined for any value and the
     * test vectors canonicalize bare strings.  JSON_ALLOW_NUL: "\u0000"
     * is valid JSON and does occur in event content; jansson still
     * refuses it inside object keys ("NUL byte in object key not
     * supported"), which we pass on as a parse error.
     */
    v = json_loadb(text, len,
                   JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL | JSON_DECODE_ANY,
                   &e);

    if (v == NULL) {
        if (json_error_code(&e) == json_error_numeric_overflow) {
            /* "too big integer": beyond int64_t, or a real beyond double */
            mx_err_set(err, "invalid JSON: number out of range: %s "
                       "(line %d, column %d)", e.text, e.line, e.column);

        } else {
            mx_err_set(err, "invalid JSON: %s (line %d, column %d)",
                       e.text, e.line, e.column);
        }

        return NULL;
    }

    if (!(flags & MX_JSON_STRICT)) {
        return v;
    }

    if (mx_json_check_strict(v, err) != MX_OK) {
        json_decref(v);
        return NULL;
    }

    /*
     * jansson reads "-0" as the integer 0, so the value no longer shows
     * it and mx_json_check_strict() cannot see it; only the text can.
     * ("-0.0" and "-0e1" are reals and have been refused already.)
     */
    if (mx_json_negative_zero(text, len, &offset)) {
        mx_err_set(err, "negative zero (-0) at offset %zu is not "
                   "allowed in canonical JSON", offset);
        json_decref(v);
        return NULL;
    }

    return v;
}


int
mx_json_check_strict(const json_t *v, mx_err_t *err)
{
    mx_json_ctx_t  ctx;

    if (v == NULL) {
        mx_err_set(err, "no JSON value");
        return MX_ERROR;
    }

    ctx.out = NULL;
    ctx.err = err;
    ctx.depth = 0;
    mx_json_path_init(&ctx.path);

    return mx_json_strict(&ctx, v);
}


int
mx_json_canonical(const json_t *v, mx_buf_t *out, mx_err_t *err)
{
    size_t         len;
    mx_json_ctx_t  ctx;

    if (v == NULL) {
        mx_err_set(err, "no JSON value");
        return MX_ERROR;
    }

    ctx.out = out;
    ctx.err = err;
    ctx.depth = 0;
    mx_json_path_init(&ctx.path);

    len = out->len;

    if (mx_json_write(&ctx, v) != MX_OK) {
        /* leave no half-written value behind */
        out->len = len;
        return MX_ERROR;
    }

    return MX_OK;
}


static void
mx_json_path_init(mx_json_path_t *path)
{
    path->p[0] = '$';
    path->p[1] = '\0';
    path->len = 1;
}


/*
 * Appends ".key" and returns the length to restore.  Only printable
 * ASCII is copied, the rest becomes "?": the path ends up in logs and
 * error responses.  A path that does not fit ends in "...".
 */
static size_t
mx_json_path_key(mx_json_path_t *path, const char *key, size_t len)
{
    size_t         old, i, room;
    unsigned char  c;

    old = path->len;
    room = MX_JSON_PATH_LEN - 4;

    if (path->len >= room) {
        return old;
    }

    path->p[path->len++] = '.';

    for (i = 0; i < len; i++) {
        if (path->len >= room) {
            memcpy(path->p + path->len, "...", 3);
            path->len += 3;
            break;
        }

        c = (unsigned char) key[i];
        path->p[path->len++] = (c > 0x20 && c < 0x7f) ? (char) c : '?';
    }

    path->p[path->len] = '\0';

    return old;
}


static size_t
mx_json_path_index(mx_json_path_t *path, size_t i)
{
    int     n;
    size_t  old, room;

    old = path->len;
    room = MX_JSON_PATH_LEN - 4;

    if (path->len >= room) {
        return old;
    }

    n = snprintf(path->p + path->len, MX_JSON_PATH_LEN - path->len,
                 "[%zu]", i);

    if (n < 0 || (size_t) n >= room - path->len) {
        memcpy(path->p + path->len, "...", 4);
        path->len += 3;

    } else {
        path->len += (size_t) n;
    }

    return old;
}


static void
mx_json_path_pop(mx_json_path_t *path, size_t len)
{
    path->len = len;
    path->p[len] = '\0';
}


static int
mx_json_enter(mx_json_ctx_t *ctx)
{
    if (ctx->depth >= MX_JSON_MAX_DEPTH) {
        mx_err_set(ctx->err, "%s: nested deeper than %d levels",
                   ctx->path.p, MX_JSON_MAX_DEPTH);
        return MX_ERROR;
    }

    ctx->depth++;

    return MX_OK;
}


static int
mx_json_strict(mx_json_ctx_t *ctx, const json_t *v)
{
    int          rc;
    char         num[32];
    size_t       i, len, old;
    json_t      *item;
    json_int_t   n;
    const char  *key;

    switch (json_typeof(v)) {

    case JSON_INTEGER:
        n = json_integer_value(v);

        if (n > MX_JSON_MAX_SAFE_INT || n < -MX_JSON_MAX_SAFE_INT) {
            mx_err_set(ctx->err, "%s: integer %" JSON_INTEGER_FORMAT
                       " is outside [-(2^53)+1, (2^53)-1]", ctx->path.p, n);
            return MX_ERROR;
        }

        return MX_OK;

    case JSON_REAL:
        mx_err_set(ctx->err, "%s: number %s has a fraction or an "
                   "exponent, canonical JSON allows integers only",
                   ctx->path.p, mx_json_real_str(num, sizeof(num),
                                                 json_real_value(v)));
        return MX_ERROR;

    case JSON_OBJECT:
        if (mx_json_enter(ctx) != MX_OK) {
            return MX_ERROR;
        }

        rc = MX_OK;

        /* the macro wants non-const pointers; nothing is modified */
        json_object_keylen_foreach((json_t *) v, key, len, item) {
            old = mx_json_path_key(&ctx->path, key, len);
            rc = mx_json_strict(ctx, item);
            mx_json_path_pop(&ctx->path, old);

            if (rc != MX_OK) {
                break;
            }
        }

        ctx->depth--;
        return rc;

    case JSON_ARRAY:
        if (mx_json_enter(ctx) != MX_OK) {
            return MX_ERROR;
        }

        rc = MX_OK;

        for (i = 0; i < json_array_size(v); i++) {
            old = mx_json_path_index(&ctx->path, i);
            rc = mx_json_strict(ctx, json_array_get(v, i));
            mx_json_path_pop(&ctx->path, old);

            if (rc != MX_OK) {
                break;
            }
        }

        ctx->depth--;
        return rc;

    default:
        return MX_OK;
    }
}


/*
 * Finds "-0" outside strings in text that jansson has already accepted.
 * Valid JSON keeps this simple: outside strings "-" only starts a
 * number, a number never has a leading zero, so "-0" is either the
 * integer -0 or the start of a real ("-0.5", "-0e3"), and reals have
 * been refused before we get here.  Inside strings only "\"" and "\\"
 * matter for finding the end.
 */
static int
mx_json_negative_zero(const char *text, size_t len, size_t *offset)
{
    size_t  i;
    int     in_string;

    in_string = 0;

    for (i = 0; i < len; i++) {

        if (in_string) {
            if (text[i] == '\\') {
                i++;

            } else if (text[i] == '"') {
                in_string = 0;
            }

            continue;
        }

        if (text[i] == '"') {
            in_string = 1;

        } else if (text[i] == '-' && i + 1 < len && text[i + 1] == '0') {
            *offset = i;
            return 1;
        }
    }

    return 0;
}


static int
mx_json_write(mx_json_ctx_t *ctx, const json_t *v)
{
    switch (json_typeof(v)) {

    case JSON_OBJECT:
        return mx_json_write_object(ctx, v);

    case JSON_ARRAY:
        return mx_json_write_array(ctx, v);

    case JSON_STRING:
        return mx_json_write_string(ctx, json_string_value(v),
                                    json_string_length(v));

    case JSON_INTEGER:
        return mx_json_write_integer(ctx, json_integer_value(v));

    case JSON_REAL:
        return mx_json_write_real(ctx, json_real_value(v));

    case JSON_TRUE:
        if (mx_buf_append(ctx->out, "true", 4) != MX_OK) {
            return mx_json_nomem(ctx);
        }

        return MX_OK;

    case JSON_FALSE:
        if (mx_buf_append(ctx->out, "false", 5) != MX_OK) {
            return mx_json_nomem(ctx);
        }

        return MX_OK;

    case JSON_NULL:
        if (mx_buf_append(ctx->out, "null", 4) != MX_OK) {
            return mx_json_nomem(ctx);
        }

        return MX_OK;
    }

    mx_err_set(ctx->err, "%s: unknown JSON type", ctx->path.p);
    return MX_ERROR;
}


static int
mx_json_write_object(mx_json_ctx_t *ctx, const json_t *v)
{
    int                rc;
    size_t             i, n, len, old;
    json_t            *item;
    const char        *key;
    mx_json_member_t  *m;

    if (mx_json_enter(ctx) != MX_OK) {
        return MX_ERROR;
    }

    n = json_object_size(v);
    m = NULL;
    rc = MX_ERROR;

    if (n > 0) {
        m = malloc(n * sizeof(mx_json_member_t));
        if (m == NULL) {
            mx_json_nomem(ctx);
            goto done;
        }
    }

    i = 0;

    json_object_keylen_foreach((json_t *) v, key, len, item) {
        m[i].key = key;
        m[i].len = len;
        m[i].value = item;
        i++;
    }

    /*
     * Code point order is UTF-8 byte order, so memcmp() sorts right;
     * lengths are explicit because a key may hold "\u0000".
     */
    if (n > 1) {
        qsort(m, n, sizeof(mx_json_member_t), mx_json_member_cmp);
    }

    if (mx_buf_append(ctx->out, "{", 1) != MX_OK) {
        mx_json_nomem(ctx);
        goto done;
    }

    for (i = 0; i < n; i++) {
        if (i > 0 && mx_buf_append(ctx->out, ",", 1) != MX_OK) {
            mx_json_nomem(ctx);
            goto done;
        }

        old = mx_json_path_key(&ctx->path, m[i].key, m[i].len);

        if (mx_json_write_string(ctx, m[i].key, m[i].len) != MX_OK) {
            goto done;
        }

        if (mx_buf_append(ctx->out, ":", 1) != MX_OK) {
            mx_json_nomem(ctx);
            goto done;
        }

        if (mx_json_write(ctx, m[i].value) != MX_OK) {
            goto done;
        }

        mx_json_path_pop(&ctx->path, old);
    }

    if (mx_buf_append(ctx->out, "}", 1) != MX_OK) {
        mx_json_nomem(ctx);
        goto done;
    }

    rc = MX_OK;

done:

    free(m);
    ctx->depth--;

    return rc;
}


static int
mx_json_write_array(mx_json_ctx_t *ctx, const json_t *v)
{
    size_t  i, n, old;

    if (mx_json_enter(ctx) != MX_OK) {
        return MX_ERROR;
    }

    n = json_array_size(v);

    if (mx_buf_append(ctx->out, "[", 1) != MX_OK) {
        ctx->depth--;
        return mx_json_nomem(ctx);
    }

    for (i = 0; i < n; i++) {
        if (i > 0 && mx_buf_append(ctx->out, ",", 1) != MX_OK) {
            ctx->depth--;
            return mx_json_nomem(ctx);
        }

        old = mx_json_path_index(&ctx->path, i);

        if (mx_json_write(ctx, json_array_get(v, i)) != MX_OK) {
            ctx->depth--;
            return MX_ERROR;
        }

        mx_json_path_pop(&ctx->path, old);
    }

    ctx->depth--;

    if (mx_buf_append(ctx->out, "]", 1) != MX_OK) {
        return mx_json_nomem(ctx);
    }

    return MX_OK;
}


/*
 * Escapes only what the grammar requires, everything else goes out as
 * raw UTF-8 ("/", U+2028 and U+2029 included).  The UTF-8 is checked
 * again here: values built with jansson's *_nocheck() functions bypass
 * its validation, and canonical JSON must be valid UTF-8 to be
 * reproducible by other servers.
 */
static int
mx_json_write_string(mx_json_ctx_t *ctx, const char *s, size_t len)
{
    char                  esc[6];
    size_t                i, run, n;
    const unsigned char  *p;

    static const char     hex[] = "0123456789abcdef";

    p = (const unsigned char *) s;

    /* worst case every byte becomes "\u00XX"; reserve the common case */
    if (mx_buf_reserve(ctx->out, len + 2) != MX_OK) {
        return mx_json_nomem(ctx);
    }

    if (mx_buf_append(ctx->out, "\"", 1) != MX_OK) {
        return mx_json_nomem(ctx);
    }

    run = 0;
    i = 0;

    while (i < len) {

        if (p[i] >= 0x80) {
            n = mx_utf8_char_len(p + i, len - i);
            if (n == 0) {
                mx_err_set(ctx->err, "%s: invalid UTF-8 at byte %zu of a "
                           "string", ctx->path.p, i);
                return MX_ERROR;
            }

            i += n;
            continue;
        }

        if (p[i] >= 0x20 && p[i] != '"' && p[i] != '\\') {
            i++;
            continue;
        }

        if (mx_buf_append(ctx->out, p + run, i - run) != MX_OK) {
            return mx_json_nomem(ctx);
        }

        esc[0] = '\\';
        n = 2;

        switch (p[i]) {
        case '"':  esc[1] = '"';  break;
        case '\\': esc[1] = '\\'; break;
        case '\b': esc[1] = 'b';  break;
        case '\t': esc[1] = 't';  break;
        case '\n': esc[1] = 'n';  break;
        case '\f': esc[1] = 'f';  break;
        case '\r': esc[1] = 'r';  break;
        default:
            esc[1] = 'u';
            esc[2] = '0';
            esc[3] = '0';
            esc[4] = hex[p[i] >> 4];
            esc[5] = hex[p[i] & 0x0f];
            n = 6;
        }

        if (mx_buf_append(ctx->out, esc, n) != MX_OK) {
            return mx_json_nomem(ctx);
        }

        i++;
        run = i;
    }

    if (mx_buf_append(ctx->out, p + run, len - run) != MX_OK
        || mx_buf_append(ctx->out, "\"", 1) != MX_OK)
    {
        return mx_json_nomem(ctx);
    }

    return MX_OK;
}


static int
mx_json_write_integer(mx_json_ctx_t *ctx, json_int_t i)
{
    int   n;
    char  num[32];

    if (i > MX_JSON_MAX_SAFE_INT || i < -MX_JSON_MAX_SAFE_INT) {
        mx_err_set(ctx->err, "%s: integer %" JSON_INTEGER_FORMAT " is "
                   "outside [-(2^53)+1, (2^53)-1]", ctx->path.p, i);
        return MX_ERROR;
    }

    n = snprintf(num, sizeof(num), "%" JSON_INTEGER_FORMAT, i);

    if (mx_buf_append(ctx->out, num, (size_t) n) != MX_OK) {
        return mx_json_nomem(ctx);
    }

    return MX_OK;
}


/*
 * A real is accepted if it holds an integral value in the safe range,
 * as the spec's own example does with 1e10 and -0.  The range test
 * comes first and is written so that NaN fails it; inside the range the
 * conversion to an integer is exact, so a round trip tells integral
 * values apart without libm.
 */
static int
mx_json_write_real(mx_json_ctx_t *ctx, double d)
{
    char        num[32];
    json_int_t  i;

    if (!(d >= (double) -MX_JSON_MAX_SAFE_INT
          && d <= (double) MX_JSON_MAX_SAFE_INT))
    {
        mx_err_set(ctx->err, "%s: number %s is outside "
                   "[-(2^53)+1, (2^53)-1]", ctx->path.p,
                   mx_json_real_str(num, sizeof(num), d));
        return MX_ERROR;
    }

    i = (json_int_t) d;

    if ((double) i != d) {
        mx_err_set(ctx->err, "%s: number %s is not an integer",
                   ctx->path.p, mx_json_real_str(num, sizeof(num), d));
        return MX_ERROR;
    }

    /* -0.0 converts to 0, which is what canonical JSON wants */
    return mx_json_write_integer(ctx, i);
}


static int
mx_json_member_cmp(const void *one, const void *two)
{
    int                      rc;
    const mx_json_member_t  *a, *b;

    a = one;
    b = two;

    rc = memcmp(a->key, b->key, a->len < b->len ? a->len : b->len);

    if (rc != 0) {
        return rc;
    }

    return (a->len > b->len) - (a->len < b->len);
}


/*
 * Length of the well-formed UTF-8 sequence at p (RFC 3629: no overlong
 * forms, no surrogates, nothing above U+10FFFF), or 0.
 */
static size_t
mx_utf8_char_len(const unsigned char *p, size_t n)
{
    size_t         len, i;
    unsigned char  lo, hi;

    lo = 0x80;
    hi = 0xbf;

    if (p[0] >= 0xc2 && p[0] <= 0xdf) {
        len = 2;

    } else if (p[0] >= 0xe0 && p[0] <= 0xef) {
        len = 3;

        if (p[0] == 0xe0) {
            lo = 0xa0;                  /* overlong */

        } else if (p[0] == 0xed) {
            hi = 0x9f;                  /* surrogates */
        }

    } else if (p[0] >= 0xf0 && p[0] <= 0xf4) {
        len = 4;

        if (p[0] == 0xf0) {
            lo = 0x90;                  /* overlong */

        } else if (p[0] == 0xf4) {
            hi = 0x8f;                  /* above U+10FFFF */
        }

    } else {
        return 0;
    }

    if (n < len || p[1] < lo || p[1] > hi) {
        return 0;
    }

    for (i = 2; i < len; i++) {
        if (p[i] < 0x80 || p[i] > 0xbf) {
            return 0;
        }
    }

    return len;
}


/*
 * For messages only: the input's "1.1" should not come back as
 * "1.1000000000000001", so take 15 digits when they round-trip.
 */
static const char *
mx_json_real_str(char *buf, size_t size, double d)
{
    snprintf(buf, size, "%.15g", d);

    if (strtod(buf, NULL) != d) {
        snprintf(buf, size, "%.17g", d);
    }

    return buf;
}


static int
mx_json_nomem(mx_json_ctx_t *ctx)
{
    mx_err_set(ctx->err, "out of memory");
    return MX_ERROR;
}
