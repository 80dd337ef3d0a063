/*
 * Ed25519 verification with a memory of verified triples (mx_sigcache.h).
 */

#include <string.h>

#include <sodium.h>

#include "mx_sigcache.h"


static void mx_sigcache_digest(const mx_sigcache_t *cache,
    const unsigned char *sig, const unsigned char *msg, size_t len,
    const unsigned char *public_key, unsigned char *digest);


int
mx_sigcache_init(mx_sigcache_t *cache, mx_sigcache_entry_t *entries,
    size_t n, mx_err_t *err)
{
    if (n < 2 || (n & (n - 1)) != 0) {
        mx_err_set(err, "a signature cache needs a power of two entries");
        return MX_ERROR;
    }

    if (sodium_init() < 0) {
        mx_err_set(err, "libsodium initialisation failed");
        return MX_ERROR;
    }

    memset(cache, 0, sizeof(mx_sigcache_t));
    memset(entries, 0, n * sizeof(mx_sigcache_entry_t));

    cache->entries = entries;
    cache->mask = n - 1;
    randombytes_buf(cache->key, sizeof(cache->key));

    return MX_OK;
}


int
mx_ed25519_verify_cached(mx_sigcache_t *cache, const unsigned char *sig,
    const unsigned char *msg, size_t len, const unsigned char *public_key)
{
    size_t                slot;
    unsigned char         digest[MX_SIGCACHE_DIGEST_LEN];
    mx_sigcache_entry_t  *e;

    if (cache == NULL) {
        return crypto_sign_verify_detached(sig, msg, len, public_key) == 0
               ? MX_OK : MX_ERROR;
    }

    mx_sigcache_digest(cache, sig, msg, len, public_key, digest);

    memcpy(&slot, digest, sizeof(size_t));
    e = &cache->entries[slot & cache->mask];

    if (sodium_memcmp(e->digest, digest, sizeof(digest)) == 0) {
        cache->hits++;
        return MX_OK;
    }

    cache->misses++;

    if (crypto_sign_verify_detached(sig, msg, len, public_key) != 0) {
        return MX_ERROR;
    }

    memcpy(e->digest, digest, sizeof(digest));

    return MX_OK;
}


/*
 * The three parts with their lengths fixed or last, so that no two
 * triples hash the same bytes.
 */

static void
mx_sigcache_digest(const mx_sigcache_t *cache, const unsigned char *sig,
    const unsigned char *msg, size_t len, const unsigned char *public_key,
    unsigned char *digest)
{
    crypto_generichash_state  st;

    crypto_generichash_init(&st, cache->key, sizeof(cache->key),
                            MX_SIGCACHE_DIGEST_LEN);
    crypto_generichash_update(&st, public_key, MX_ED25519_PK_LEN);
    crypto_generichash_update(&st, sig, MX_ED25519_SIG_LEN);
    crypto_generichash_update(&st, msg, len);
    crypto_generichash_final(&st, digest, MX_SIGCACHE_DIGEST_LEN);
}
