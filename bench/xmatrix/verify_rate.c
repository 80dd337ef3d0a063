/*
 * bench/xmatrix/verify_rate.c: raw libsodium ed25519 verifications per
 * second on one core, over the canonical JSON an X-Matrix header signs
 * for the bench's request (the same bytes, the same length): the floor
 * of the authenticated route, which verifies one signature per request.
 *
 *   verify_rate [SECONDS]        (default 1.5; run it pinned: taskset)
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sodium.h>

static double
now(void)
{
    struct timespec  ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int
main(int argc, char **argv)
{
    static const char  msg[] =
        "{\"destination\":\"bench.test\",\"method\":\"GET\","
        "\"origin\":\"remote.test\",\"uri\":\"/_matrix/federation/v1/"
        "query/profile?user_id=%40u1%3Abench.test\"}";
    unsigned char      pk[crypto_sign_PUBLICKEYBYTES];
    unsigned char      sk[crypto_sign_SECRETKEYBYTES];
    unsigned char      sig[crypto_sign_BYTES];
    double             seconds, start, elapsed;
    unsigned long      n, i;

    seconds = argc > 1 ? atof(argv[1]) : 1.5;

    if (sodium_init() < 0) {
        fprintf(stderr, "verify_rate: sodium_init failed\n");
        return 1;
    }

    crypto_sign_keypair(pk, sk);
    crypto_sign_detached(sig, NULL, (const unsigned char *) msg,
                         sizeof(msg) - 1, sk);

    /* a warm-up, then batches of 256 until the time is up */
    for (i = 0; i < 256; i++) {
        if (crypto_sign_verify_detached(sig, (const unsigned char *) msg,
                                        sizeof(msg) - 1, pk) != 0)
        {
            fprintf(stderr, "verify_rate: the signature does not verify\n");
            return 1;
        }
    }

    n = 0;
    start = now();
    do {
        for (i = 0; i < 256; i++) {
            if (crypto_sign_verify_detached(sig, (const unsigned char *) msg,
                                            sizeof(msg) - 1, pk) != 0)
            {
                return 1;
            }
        }
        n += 256;
        elapsed = now() - start;
    } while (elapsed < seconds);

    printf("%.0f\n", n / elapsed);
    return 0;
}
