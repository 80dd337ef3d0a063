/*
 * Error messages and the growable byte buffer shared by the core.
 */

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mx_core.h"


#define MX_BUF_MIN_CAP  256


void
mx_err_set(mx_err_t *err, const char *fmt, ...)
{
    va_list  args;

    /* callers that only care about success pass NULL */
    if (err == NULL) {
        return;
    }

    va_start(args, fmt);
    vsnprintf(err->msg, MX_ERR_LEN, fmt, args);
    va_end(args);
}


void
mx_buf_init(mx_buf_t *b)
{
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
}


void
mx_buf_free(mx_buf_t *b)
{
    free(b->data);
    mx_buf_init(b);
}


void
mx_buf_reset(mx_buf_t *b)
{
    b->len = 0;
}


int
mx_buf_reserve(mx_buf_t *b, size_t more)
{
    size_t          cap;
    unsigned char  *p;

    if (more <= b->cap - b->len) {
        return MX_OK;
    }

    if (more > (size_t) -1 - b->len) {
        return MX_ERROR;
    }

    cap = b->cap ? b->cap : MX_BUF_MIN_CAP;

    /* doubling keeps appends amortised O(1) */
    while (cap < b->len + more) {
        if (cap > (size_t) -1 / 2) {
            cap = b->len + more;
            break;
        }

        cap *= 2;
    }

    p = realloc(b->data, cap);
    if (p == NULL) {
        return MX_ERROR;
    }

    b->data = p;
    b->cap = cap;

    return MX_OK;
}


int
mx_buf_append(mx_buf_t *b, const void *p, size_t n)
{
    if (n == 0) {
        return MX_OK;
    }

    if (mx_buf_reserve(b, n) != MX_OK) {
        return MX_ERROR;
    }

    memcpy(b->data + b->len, p, n);
    b->len += n;

    return MX_OK;
}


int
mx_buf_append_str(mx_buf_t *b, const char *s)
{
    return mx_buf_append(b, s, strlen(s));
}
