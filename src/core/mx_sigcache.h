/*
 * Ed25519 verification with a memory of what already verified.
 *
 * Verification is deterministic: a (public key, signature, message)
 * triple that verified once verifies again, so a triple seen before needs
 * no second curve operation.  Peers repeat themselves (a transaction
 * retried with the same body, a poll for the same resource), and a
 * replayed request costs a hash instead of a verification.
 *
 * Triples are remembered by a keyed BLAKE2b-256 digest of all three, in a
 * fixed table the caller provides, direct-mapped by the digest: no
 * allocation, bounded memory, an entry simply overwritten by a later one.
 * The key is random per cache, so that nobody can aim at a slot.  Only
 * successes are remembered; a failure is always checked anew.
 */

#ifndef MX_SIGCACHE_H
#define MX_SIGCACHE_H

#include <stddef.h>

#include "mx_core.h"


#define MX_SIGCACHE_DIGEST_LEN  32

typedef struct {
    unsigned char   digest[MX_SIGCACHE_DIGEST_LEN];
} mx_sigcache_entry_t;

typedef struct {
    mx_sigcache_entry_t  *entries;
    size_t                mask;         /* entries - 1, a power of two */
    unsigned char         key[32];

    /* counters, for logs and tests */
    unsigned long         hits;
    unsigned long         misses;
} mx_sigcache_t;


/*
 * Prepares a cache over n zeroed entries (n a power of two, at least 2)
 * that the caller owns and keeps as long as the cache.
 */
int mx_sigcache_init(mx_sigcache_t *cache, mx_sigcache_entry_t *entries,
    size_t n, mx_err_t *err);

/*
 * MX_OK when sig is public_key's signature of msg, remembered or checked
 * (and then remembered); MX_ERROR otherwise.  cache may be NULL: plain
 * verification.
 */
int mx_ed25519_verify_cached(mx_sigcache_t *cache, const unsigned char *sig,
    const unsigned char *msg, size_t len, const unsigned char *public_key);


#endif /* MX_SIGCACHE_H */
