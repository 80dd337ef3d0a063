/*
 * Responses: every body this module sends is JSON, every error is a
 * Matrix error object, and every response carries the CORS headers the
 * client-server spec recommends (browsers call /_matrix/ directly).
 *
 * nginx itself answers some requests before the module sees them (413
 * for a body over client_max_body_size, 429/503 from limit_req, 403 from
 * deny, 500 when a handler fails): in a "matrix" location a filter swaps
 * nginx's HTML error page for the Matrix error object.
 */


#include "ngx_http_matrix_module.h"


#define NGX_HTTP_MATRIX_ERROR_LEN  512


typedef struct {
    ngx_uint_t    status;
    const char   *errcode;
    const char   *error;
} ngx_http_matrix_status_error_t;


static ngx_int_t ngx_http_matrix_cors_headers(ngx_http_request_t *r);
static ngx_int_t ngx_http_matrix_header_filter(ngx_http_request_t *r);
static ngx_int_t ngx_http_matrix_body_filter(ngx_http_request_t *r,
    ngx_chain_t *in);


static ngx_http_output_header_filter_pt  ngx_http_next_header_filter;
static ngx_http_output_body_filter_pt    ngx_http_next_body_filter;


static ngx_http_matrix_status_error_t  ngx_http_matrix_status_errors[] = {
    { NGX_HTTP_BAD_REQUEST, "M_UNKNOWN", "Bad request" },
    { NGX_HTTP_UNAUTHORIZED, "M_UNAUTHORIZED", "Unauthorized" },
    { NGX_HTTP_FORBIDDEN, "M_FORBIDDEN", "Forbidden" },
    { NGX_HTTP_NOT_FOUND, "M_NOT_FOUND", "Not found" },
    { NGX_HTTP_NOT_ALLOWED, "M_UNRECOGNIZED", "Method not allowed" },
    { NGX_HTTP_REQUEST_TIME_OUT, "M_UNKNOWN", "Request timed out" },
    { NGX_HTTP_LENGTH_REQUIRED, "M_UNKNOWN", "Length required" },
    { NGX_HTTP_REQUEST_ENTITY_TOO_LARGE, "M_TOO_LARGE",
      "Request body is too large" },
    { NGX_HTTP_REQUEST_URI_TOO_LARGE, "M_UNKNOWN", "Request URI is too long" },
    { NGX_HTTP_TOO_MANY_REQUESTS, "M_LIMIT_EXCEEDED", "Too many requests" },
    { NGX_HTTP_SERVICE_UNAVAILABLE, "M_UNKNOWN", "Service unavailable" },
    { NGX_HTTP_INTERNAL_SERVER_ERROR, "M_UNKNOWN", "Internal server error" },
    { 0, "M_UNKNOWN", "Request failed" }
};


static ngx_str_t  ngx_http_matrix_cors[][2] = {
    { ngx_string("Access-Control-Allow-Origin"), ngx_string("*") },
    { ngx_string("Access-Control-Allow-Methods"),
      ngx_string("GET, POST, PUT, DELETE, OPTIONS") },
    { ngx_string("Access-Control-Allow-Headers"),
      ngx_string("X-Requested-With, Content-Type, Authorization") },
};


ngx_int_t
ngx_http_matrix_add_header(ngx_http_request_t *r, const char *key,
    ngx_str_t *value)
{
    ngx_table_elt_t  *h;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->hash = 1;
    h->key.data = (u_char *) key;
    h->key.len = ngx_strlen(key);
    h->value = *value;
    h->lowcase_key = NULL;
#if (nginx_version >= 1023000)
    h->next = NULL;
#endif

    return NGX_OK;
}


ngx_int_t
ngx_http_matrix_send_body(ngx_http_request_t *r, ngx_uint_t status,
    u_char *body, size_t len)
{
    ngx_int_t               rc;
    ngx_buf_t              *b;
    ngx_chain_t             out;
    ngx_http_matrix_ctx_t  *ctx;

    ctx = ngx_http_matrix_get_ctx(r);
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    r->headers_out.status = status;
    r->headers_out.content_length_n = len;

    ngx_str_set(&r->headers_out.content_type, "application/json");
    r->headers_out.content_type_len = r->headers_out.content_type.len;
    r->headers_out.content_type_lowcase = NULL;

    /* generated JSON has no validators: If-Match and friends do not apply */
    r->disable_not_modified = 1;

    if (ngx_http_matrix_cors_headers(r) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (status == NGX_HTTP_NO_CONTENT) {
        r->header_only = 1;
    }

    /* from here on the body is ours, even if sending it fails */
    ctx->replied = 1;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    b = ngx_calloc_buf(r->pool);
    if (b == NULL) {
        return NGX_ERROR;
    }

    b->pos = body;
    b->last = body + len;
    b->memory = 1;
    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


static ngx_int_t
ngx_http_matrix_cors_headers(ngx_http_request_t *r)
{
    ngx_uint_t  i;

    for (i = 0; i < sizeof(ngx_http_matrix_cors) / sizeof(ngx_str_t[2]); i++) {
        if (ngx_http_matrix_add_header(r,
                                       (char *) ngx_http_matrix_cors[i][0].data,
                                       &ngx_http_matrix_cors[i][1])
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


ngx_int_t
ngx_http_matrix_send_json(ngx_http_request_t *r, ngx_uint_t status,
    const json_t *value)
{
    u_char    *body;
    size_t     len;
    mx_err_t   err;
    mx_buf_t   buf;

    mx_buf_init(&buf);

    if (mx_json_canonical(value, &buf, &err) != MX_OK) {
        ngx_log_error(NGX_LOG_ALERT, r->connection->log, 0,
                      "matrix: cannot encode response: %s", err.msg);
        mx_buf_free(&buf);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    body = ngx_pnalloc(r->pool, buf.len);
    if (body == NULL) {
        mx_buf_free(&buf);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    len = buf.len;
    ngx_memcpy(body, buf.data, len);
    mx_buf_free(&buf);

    return ngx_http_matrix_send_body(r, status, body, len);
}


ngx_int_t
ngx_http_matrix_send_json_new(ngx_http_request_t *r, ngx_uint_t status,
    json_t *value)
{
    ngx_int_t  rc;

    if (value == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_matrix_send_json(r, status, value);
    json_decref(value);

    return rc;
}


/*
 * The message is formatted with nginx's ngx_vslprintf(), so "%V" takes an
 * ngx_str_t.  Messages may quote request data: anything that is not valid
 * UTF-8 makes jansson refuse the string, and then the bare errcode goes
 * out with a generic message rather than a malformed body.
 */

ngx_int_t
ngx_http_matrix_send_error(ngx_http_request_t *r, ngx_uint_t status,
    const char *errcode, const char *fmt, ...)
{
    u_char      text[NGX_HTTP_MATRIX_ERROR_LEN], *p;
    json_t     *body, *message;
    va_list     args;
    ngx_int_t   rc;

    va_start(args, fmt);
    p = ngx_vslprintf(text, text + sizeof(text), fmt, args);
    va_end(args);

    message = json_stringn((char *) text, p - text);
    if (message == NULL) {
        message = json_string("Invalid request");
    }

    body = json_object();
    if (body == NULL) {
        json_decref(message);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* json_object_set_new() takes the reference even when it fails */
    if (json_object_set_new(body, "errcode", json_string(errcode)) != 0
        || json_object_set_new(body, "error", message) != 0)
    {
        json_decref(body);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_log_debug4(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "matrix error: %ui %s \"%*s\"", status, errcode,
                   (size_t) (p - text), text);

    rc = ngx_http_matrix_send_json(r, status, body);
    json_decref(body);

    return rc;
}


int64_t
ngx_http_matrix_now_ms(void)
{
    ngx_time_t  *tp;

    tp = ngx_timeofday();

    return (int64_t) tp->sec * 1000 + tp->msec;
}


ngx_int_t
ngx_http_matrix_reply_init(ngx_conf_t *cf)
{
    ngx_http_next_header_filter = ngx_http_top_header_filter;
    ngx_http_top_header_filter = ngx_http_matrix_header_filter;

    ngx_http_next_body_filter = ngx_http_top_body_filter;
    ngx_http_top_body_filter = ngx_http_matrix_body_filter;

    return NGX_OK;
}


static ngx_int_t
ngx_http_matrix_header_filter(ngx_http_request_t *r)
{
    u_char                          *p;
    ngx_buf_t                       *b;
    ngx_http_matrix_ctx_t           *ctx;
    ngx_http_matrix_loc_conf_t      *mlcf;
    ngx_http_matrix_status_error_t  *e;

    if (r->headers_out.status < NGX_HTTP_BAD_REQUEST || r != r->main) {
        return ngx_http_next_header_filter(r);
    }

    mlcf = ngx_http_get_module_loc_conf(r, ngx_http_matrix_module);
    ctx = ngx_http_get_module_ctx(r, ngx_http_matrix_module);

    if (!mlcf->enable || (ctx && ctx->replied)) {
        return ngx_http_next_header_filter(r);
    }

    ctx = ngx_http_matrix_get_ctx(r);
    if (ctx == NULL) {
        return NGX_ERROR;
    }

    for (e = ngx_http_matrix_status_errors; e->status; e++) {
        if (e->status == r->headers_out.status) {
            break;
        }
    }

    b = ngx_create_temp_buf(r->pool, sizeof("{\"errcode\":\"\",\"error\":\"\"}")
                                     + ngx_strlen(e->errcode)
                                     + ngx_strlen(e->error));
    if (b == NULL) {
        return NGX_ERROR;
    }

    p = ngx_sprintf(b->last, "{\"errcode\":\"%s\",\"error\":\"%s\"}",
                    e->errcode, e->error);
    b->last = p;
    b->last_buf = 1;
    b->last_in_chain = 1;

    ctx->error_body = b;
    ctx->replied = 1;

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "matrix: %ui error page replaced by %s",
                   r->headers_out.status, e->errcode);

    r->headers_out.content_length_n = b->last - b->pos;

    if (r->headers_out.content_length) {
        r->headers_out.content_length->hash = 0;
        r->headers_out.content_length = NULL;
    }

    ngx_str_set(&r->headers_out.content_type, "application/json");
    r->headers_out.content_type_len = r->headers_out.content_type.len;
    r->headers_out.content_type_lowcase = NULL;
    r->headers_out.charset.len = 0;

    if (ngx_http_matrix_cors_headers(r) != NGX_OK) {
        return NGX_ERROR;
    }

    return ngx_http_next_header_filter(r);
}


/* nginx's page is swallowed, ours goes out with its last buffer */

static ngx_int_t
ngx_http_matrix_body_filter(ngx_http_request_t *r, ngx_chain_t *in)
{
    ngx_uint_t              last;
    ngx_chain_t            *cl, out;
    ngx_http_matrix_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_matrix_module);

    if (ctx == NULL || ctx->error_body == NULL) {
        return ngx_http_next_body_filter(r, in);
    }

    last = 0;

    for (cl = in; cl; cl = cl->next) {
        cl->buf->pos = cl->buf->last;
        cl->buf->file_pos = cl->buf->file_last;

        if (cl->buf->last_buf) {
            last = 1;
        }
    }

    if (!last) {
        return NGX_OK;
    }

    out.buf = ctx->error_body;
    out.next = NULL;
    ctx->error_body = NULL;

    return ngx_http_next_body_filter(r, &out);
}
