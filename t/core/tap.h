/*
 * A few lines of TAP for the core's unit tests (test_*.c besides
 * test_core.c): ok/not ok lines, diagnostics, and the plan printed last.
 */

#ifndef MX_TAP_H
#define MX_TAP_H

#include <stdarg.h>
#include <stdio.h>


typedef struct {
    unsigned    n;
    unsigned    failed;
} tap_t;


#if defined(__GNUC__)
__attribute__((format(printf, 3, 4), unused))
#endif
static int
tap_ok(tap_t *t, int ok, const char *fmt, ...)
{
    va_list  args;

    t->n++;

    if (!ok) {
        t->failed++;
    }

    printf("%sok %u - ", ok ? "" : "not ", t->n);
    va_start(args, fmt);
    vprintf(fmt, args);
    va_end(args);
    printf("\n");

    return ok;
}


#if defined(__GNUC__)
__attribute__((format(printf, 1, 2), unused))
#endif
static void
tap_diag(const char *fmt, ...)
{
    va_list  args;

    printf("# ");
    va_start(args, fmt);
    vprintf(fmt, args);
    va_end(args);
    printf("\n");
}


#if defined(__GNUC__)
__attribute__((unused))
#endif
static int
tap_done(tap_t *t)
{
    printf("1..%u\n", t->n);

    return t->failed ? 1 : 0;
}


#endif /* MX_TAP_H */
