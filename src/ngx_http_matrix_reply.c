/*
 * Responses: every body this module sends is JSON, every error is a
 * Matrix error object, and every response carries the CORS headers the
 * client-server spec recommends (browsers call /_matrix/ directly).
 */


#include "ngx_http_matrix_module.h"


#define NGX_HTTP_MATRIX_ERROR_LEN  512


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
    ngx_int_t     rc;
    ngx_uint_t    i;
    ngx_buf_t    *b;
    ngx_chain_t   out;

    r->headers_out.status = status;
    r->headers_out.content_length_n = len;

    ngx_str_set(&r->headers_out.content_type, "application/json");
    r->headers_out.content_type_len = r->headers_out.content_type.len;
    r->headers_out.content_type_lowcase = NULL;

    for (i = 0; i < sizeof(ngx_http_matrix_cors) / sizeof(ngx_str_t[2]); i++) {
        if (ngx_http_matrix_add_header(r,
                                       (char *) ngx_http_matrix_cors[i][0].data,
                                       &ngx_http_matrix_cors[i][1])
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    if (len == 0) {
        r->header_only = 1;
    }

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
