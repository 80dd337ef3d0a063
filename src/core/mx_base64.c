/*
 * Unpadded Base64 (appendices: Unpadded Base64), standard and URL-safe
 * alphabets.  We emit unpadded only; we read padded and unpadded input
 * because keys and signatures from other software sometimes carry "=".
 */

#include "mx_core.h"


#define MX_B64_BAD  0xff
#define MX_B64_PAD  0xfe


static const char  mx_base64_std[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static const char  mx_base64_url[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";


/*
 * One table for both alphabets: "+" and "-" are 62, "/" and "_" are 63.
 * A string mixing the two is accepted too; refusing it would buy no
 * safety, the decoded bytes are unambiguous either way.
 */
static const unsigned char  mx_base64_dec[256] = {
#define X MX_B64_BAD
    X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,
    X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,
    /*              +       -       /     */
    X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X, 62,  X, 62,  X, 63,
    52, 53, 54, 55, 56, 57, 58, 59, 60, 61, X,  X,  X, MX_B64_PAD, X, X,
    X,  0,  1,  2,  3,  4,  5,  6,  7,  8,  9, 10, 11, 12, 13, 14,
    /*                                                      _     */
    15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, X,  X,  X,  X, 63,
    X, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40,
    41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, X,  X,  X,  X,  X,
    X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,
    X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,
    X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,
    X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,
    X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,
    X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,
    X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,
    X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X
#undef X
};


size_t
mx_base64_encoded_len(size_t n)
{
    return n / 3 * 4 + (n % 3 ? n % 3 + 1 : 0);
}


size_t
mx_base64_encode(char *dst, const unsigned char *src, size_t n,
    int alphabet)
{
    char        *p;
    const char  *t;

    t = (alphabet == MX_BASE64_URLSAFE) ? mx_base64_url : mx_base64_std;
    p = dst;

    while (n >= 3) {
        *p++ = t[src[0] >> 2];
        *p++ = t[((src[0] & 0x03) << 4) | (src[1] >> 4)];
        *p++ = t[((src[1] & 0x0f) << 2) | (src[2] >> 6)];
        *p++ = t[src[2] & 0x3f];

        src += 3;
        n -= 3;
    }

    if (n > 0) {
        *p++ = t[src[0] >> 2];

        if (n == 1) {
            *p++ = t[(src[0] & 0x03) << 4];

        } else {
            *p++ = t[((src[0] & 0x03) << 4) | (src[1] >> 4)];
            *p++ = t[(src[1] & 0x0f) << 2];
        }
    }

    return (size_t) (p - dst);
}


/*
 * Bits below the last full byte of a 2- or 3-character tail are not
 * required to be zero: "Zh" decodes like "Zg".  Most decoders (Python's,
 * Go's non-strict one) behave the same, and a signature or key that
 * differs only there still decodes to the same bytes, so refusing it
 * would reject input others accept without protecting anything.
 */
int
mx_base64_decode(unsigned char *dst, size_t *dst_len, const char *src,
    size_t n)
{
    size_t          i, pad;
    uint32_t        acc;
    unsigned int    k;
    unsigned char   c, *p;

    pad = 0;

    while (pad < n && pad < 2 && src[n - pad - 1] == '=') {
        pad++;
    }

    n -= pad;

    /*
     * Padding, when present, must complete the last group exactly:
     * "Zg==" and "Zg" are fine, "Zg=" and "Zm9v=" are not.
     */
    if (pad && (n + pad) % 4 != 0) {
        return MX_ERROR;
    }

    /* one leftover character carries only 6 bits: no byte fits */
    if (n % 4 == 1) {
        return MX_ERROR;
    }

    p = dst;
    acc = 0;
    k = 0;

    for (i = 0; i < n; i++) {
        c = mx_base64_dec[(unsigned char) src[i]];

        /* MX_B64_PAD here means "=" in the middle of the data */
        if (c == MX_B64_BAD || c == MX_B64_PAD) {
            return MX_ERROR;
        }

        acc = (acc << 6) | c;

        if (++k == 4) {
            *p++ = (unsigned char) (acc >> 16);
            *p++ = (unsigned char) (acc >> 8);
            *p++ = (unsigned char) acc;
            acc = 0;
            k = 0;
        }
    }

    if (k == 2) {
        *p++ = (unsigned char) (acc >> 4);

    } else if (k == 3) {
        *p++ = (unsigned char) (acc >> 10);
        *p++ = (unsigned char) (acc >> 2);
    }

    *dst_len = (size_t) (p - dst);

    return MX_OK;
}
