/*
 * matrix-tool: the core's Matrix primitives from the command line, for
 * operators (key generation) and for tests (canonical JSON, signing and
 * verifying against an independent implementation).
 *
 * Exit status: 0 success, 1 bad input or failure, 2 usage error.
 */

#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sodium.h>

#include "mx_core.h"
#include "mx_event.h"
#include "mx_auth.h"


#define MX_TOOL_NAME          "matrix-tool"

#define MX_TOOL_EXIT_OK       0
#define MX_TOOL_EXIT_FAIL     1
#define MX_TOOL_EXIT_USAGE    2

/* JSON on stdin; federation PDUs are at most 64 KiB, this is generous */
#define MX_TOOL_STDIN_MAX     (16 * 1024 * 1024)
#define MX_TOOL_KEYFILE_MAX   (64 * 1024)

/* more than a server ever needs in one file */
#define MX_TOOL_MAX_KEYS      64

/* values of one repeatable option, e.g. verify-event --key */
#define MX_TOOL_OPT_MAX       16

/* mx_tool_options(): the subcommand's help was asked for and printed */
#define MX_TOOL_HELP          1


typedef struct mx_tool_cmd_s  mx_tool_cmd_t;

struct mx_tool_cmd_s {
    const char     *name;
    int           (*handler)(const mx_tool_cmd_t *cmd, int argc,
                             char **argv);
    const char     *args;       /* synopsis after the name */
    const char     *help;       /* what it does, one or two lines */
};


typedef struct {
    const char     *values[MX_TOOL_OPT_MAX];
    size_t          n;
} mx_tool_list_t;


typedef struct {
    const char     *name;       /* "--key" */
    const char    **value;      /* for options with an argument */
    int            *flag;       /* for options without one */
    mx_tool_list_t *list;       /* for repeatable options with one */
} mx_tool_opt_t;


/* verify-event: the public keys given on the command line */
typedef struct {
    const char     *server;     /* not NUL-terminated: server_len bytes */
    size_t          server_len;
    char            key_id[MX_KEY_ID_LEN + 1];
    unsigned char   pk[MX_ED25519_PK_LEN];
} mx_tool_pubkey_t;


typedef struct {
    mx_tool_pubkey_t   keys[MX_TOOL_OPT_MAX];
    size_t             n;
} mx_tool_keyring_t;


static int mx_tool_keygen(const mx_tool_cmd_t *cmd, int argc, char **argv);
static int mx_tool_canonical(const mx_tool_cmd_t *cmd, int argc,
    char **argv);
static int mx_tool_sign_json(const mx_tool_cmd_t *cmd, int argc,
    char **argv);
static int mx_tool_verify_json(const mx_tool_cmd_t *cmd, int argc,
    char **argv);
static int mx_tool_pubkey(const mx_tool_cmd_t *cmd, int argc, char **argv);
static int mx_tool_event_id(const mx_tool_cmd_t *cmd, int argc,
    char **argv);
static int mx_tool_redact(const mx_tool_cmd_t *cmd, int argc, char **argv);
static int mx_tool_sign_event(const mx_tool_cmd_t *cmd, int argc,
    char **argv);
static int mx_tool_verify_event(const mx_tool_cmd_t *cmd, int argc,
    char **argv);
static int mx_tool_auth_check(const mx_tool_cmd_t *cmd, int argc,
    char **argv);
static int mx_tool_help(const mx_tool_cmd_t *cmd, int argc, char **argv);

static int mx_tool_options(const mx_tool_cmd_t *cmd, int argc, char **argv,
    mx_tool_opt_t *opts, int *first);
static int mx_tool_usage_error(const mx_tool_cmd_t *cmd, const char *fmt,
    ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
static void mx_tool_error(const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 1, 2)))
#endif
    ;
static void mx_tool_usage(FILE *f);
static int mx_tool_read_fd(int fd, const char *what, size_t max,
    mx_buf_t *b);
static int mx_tool_read_keys(const char *path, mx_signing_key_t *keys,
    size_t *n);
static json_t *mx_tool_read_json(int flags);
static int mx_tool_write(const void *p, size_t n);
static int mx_tool_write_canonical(const json_t *v);
static int mx_tool_print_key(const mx_signing_key_t *key);
static int mx_tool_parse_pubkey(const mx_tool_cmd_t *cmd, const char *arg,
    const char *shape, char *key_id, unsigned char *pk);
static int mx_tool_room_version(const mx_tool_cmd_t *cmd, const char *id,
    const mx_room_version_t **version);
static int mx_tool_no_operands(const mx_tool_cmd_t *cmd, int argc,
    char **argv, int first);
static mx_event_t *mx_tool_read_event(const mx_room_version_t *version);
static int mx_tool_lookup(void *data, const char *server,
    const char *key_id, int64_t ts, unsigned char public_key[32]);


static const mx_tool_cmd_t  mx_tool_cmds[] = {

    { "keygen", mx_tool_keygen,
      "[--version V] FILE",
      "write a new ed25519 signing key to FILE (mode 0600, an existing\n"
      "file is never overwritten); V defaults to \"a_\" and 4 random\n"
      "characters.  Prints \"ed25519:V PUBLIC_KEY\"." },

    { "canonical", mx_tool_canonical,
      "[--strict]",
      "JSON on stdin to canonical JSON on stdout (exactly the canonical\n"
      "bytes, no trailing newline).  --strict refuses reals, -0 and\n"
      "integers outside [-(2^53)+1, (2^53)-1] instead of converting." },

    { "sign-json", mx_tool_sign_json,
      "--key FILE --server NAME",
      "sign the JSON object on stdin with the first key in FILE and\n"
      "write it, canonical and without trailing newline, to stdout." },

    { "verify-json", mx_tool_verify_json,
      "--server NAME --key ed25519:ID=BASE64",
      "check the signature by NAME with key ed25519:ID on the JSON\n"
      "object on stdin; prints \"ok\" and exits 0 if it verifies." },

    { "pubkey", mx_tool_pubkey,
      "--key FILE",
      "print \"ed25519:ID PUBLIC_KEY\" for every key in FILE." },

    { "event-id", mx_tool_event_id,
      "--room-version V",
      "print the event ID of the PDU on stdin (validated as a PDU of\n"
      "room version V first)." },

    { "redact", mx_tool_redact,
      "--room-version V",
      "the redacted form of the event on stdin under the rules of room\n"
      "version V, canonical and without trailing newline." },

    { "sign-event", mx_tool_sign_event,
      "--key FILE --server NAME --room-version V",
      "add the content hash and NAME's signature with the first key in\n"
      "FILE to the PDU on stdin; writes it canonical, no newline." },

    { "verify-event", mx_tool_verify_event,
      "--room-version V --key SERVER=ed25519:ID=BASE64 [--key ...]",
      "check the signatures the PDU on stdin needs, then its content\n"
      "hash; prints \"ok\" and exits 0 if both hold." },

    { "auth-check", mx_tool_auth_check,
      "--room-version V",
      "apply the authorisation rules to {\"event\": PDU, \"auth_events\":\n"
      "[PDU, ...]} on stdin: prints \"allowed\" (exit 0) or\n"
      "\"refused: RULE\" (exit 1)." },

    { "help", mx_tool_help,
      "[COMMAND]",
      "this text, or the help of one command." },

    { NULL, NULL, NULL, NULL }
};


int
main(int argc, char **argv)
{
    const mx_tool_cmd_t  *cmd;

    if (argc < 2) {
        mx_tool_usage(stderr);
        return MX_TOOL_EXIT_USAGE;
    }

    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        mx_tool_usage(stdout);
        return MX_TOOL_EXIT_OK;
    }

    for (cmd = mx_tool_cmds; cmd->name; cmd++) {
        if (strcmp(argv[1], cmd->name) == 0) {
            return cmd->handler(cmd, argc - 1, argv + 1);
        }
    }

    mx_tool_error("unknown command \"%s\"", argv[1]);
    mx_tool_usage(stderr);

    return MX_TOOL_EXIT_USAGE;
}


static int
mx_tool_keygen(const mx_tool_cmd_t *cmd, int argc, char **argv)
{
    int                fd, rc, first;
    size_t             n, off;
    ssize_t            w;
    mx_buf_t           buf;
    mx_err_t           err;
    const char        *version, *path;
    mx_signing_key_t   key;
    mx_tool_opt_t      opts[] = {
        { "--version", &version, NULL, NULL },
        { NULL, NULL, NULL, NULL }
    };

    version = NULL;

    rc = mx_tool_options(cmd, argc, argv, opts, &first);
    if (rc != MX_OK) {
        return rc == MX_TOOL_HELP ? MX_TOOL_EXIT_OK : MX_TOOL_EXIT_USAGE;
    }

    if (argc - first != 1) {
        return mx_tool_usage_error(cmd, "expected exactly one FILE");
    }

    path = argv[first];

    mx_buf_init(&buf);

    if (mx_signing_key_generate(version, &buf, &err) != MX_OK) {
        mx_tool_error("%s", err.msg);
        return MX_TOOL_EXIT_FAIL;
    }

    rc = MX_TOOL_EXIT_FAIL;

    /* parse our own output back: one source of truth for id and key */
    if (mx_signing_keys_parse((char *) buf.data, buf.len, &key, 1, &n, &err)
        != MX_OK)
    {
        mx_tool_error("%s", err.msg);
        goto done;
    }

    /* O_EXCL: a signing key is an identity, replacing one is never casual */
    fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd == -1) {
        if (errno == EEXIST) {
            mx_tool_error("%s already exists, refusing to overwrite it",
                          path);

        } else {
            mx_tool_error("cannot create %s: %s", path, strerror(errno));
        }

        goto done;
    }

    for (off = 0; off < buf.len; off += (size_t) w) {
        w = write(fd, buf.data + off, buf.len - off);

        if (w == -1 && errno == EINTR) {
            w = 0;
            continue;
        }

        if (w <= 0) {
            if (w == 0) {
                errno = EIO;
            }

            break;
        }
    }

    if (off < buf.len || fsync(fd) == -1) {
        mx_tool_error("cannot write %s: %s", path, strerror(errno));
        close(fd);
        unlink(path);
        goto done;
    }

    if (close(fd) == -1) {
        mx_tool_error("cannot write %s: %s", path, strerror(errno));
        unlink(path);
        goto done;
    }

    rc = mx_tool_print_key(&key) == MX_OK ? MX_TOOL_EXIT_OK
                                           : MX_TOOL_EXIT_FAIL;

done:

    sodium_memzero(&key, sizeof(key));

    if (buf.data) {
        sodium_memzero(buf.data, buf.cap);
    }

    mx_buf_free(&buf);

    return rc;
}


static int
mx_tool_canonical(const mx_tool_cmd_t *cmd, int argc, char **argv)
{
    int             rc, first, strict;
    json_t         *v;
    mx_tool_opt_t   opts[] = {
        { "--strict", NULL, &strict, NULL },
        { NULL, NULL, NULL, NULL }
    };

    strict = 0;

    rc = mx_tool_options(cmd, argc, argv, opts, &first);
    if (rc != MX_OK) {
        return rc == MX_TOOL_HELP ? MX_TOOL_EXIT_OK : MX_TOOL_EXIT_USAGE;
    }

    if (first != argc) {
        return mx_tool_usage_error(cmd, "unexpected argument \"%s\"",
                                   argv[first]);
    }

    v = mx_tool_read_json(strict ? MX_JSON_STRICT : 0);
    if (v == NULL) {
        return MX_TOOL_EXIT_FAIL;
    }

    rc = mx_tool_write_canonical(v);

    json_decref(v);

    return rc == MX_OK ? MX_TOOL_EXIT_OK : MX_TOOL_EXIT_FAIL;
}


static int
mx_tool_sign_json(const mx_tool_cmd_t *cmd, int argc, char **argv)
{
    int                rc, first;
    size_t             n;
    json_t            *v;
    mx_err_t           err;
    const char        *key_file, *server;
    mx_tool_opt_t      opts[] = {
        { "--key", &key_file, NULL, NULL },
        { "--server", &server, NULL, NULL },
        { NULL, NULL, NULL, NULL }
    };
    mx_signing_key_t   keys[MX_TOOL_MAX_KEYS];

    key_file = NULL;
    server = NULL;

    rc = mx_tool_options(cmd, argc, argv, opts, &first);
    if (rc != MX_OK) {
        return rc == MX_TOOL_HELP ? MX_TOOL_EXIT_OK : MX_TOOL_EXIT_USAGE;
    }

    if (first != argc) {
        return mx_tool_usage_error(cmd, "unexpected argument \"%s\"",
                                   argv[first]);
    }

    if (key_file == NULL || server == NULL || server[0] == '\0') {
        return mx_tool_usage_error(cmd, "--key and --server are required");
    }

    if (mx_tool_read_keys(key_file, keys, &n) != MX_OK) {
        return MX_TOOL_EXIT_FAIL;
    }

    rc = MX_TOOL_EXIT_FAIL;

    /* what we sign must be canonical already, so parse strictly */
    v = mx_tool_read_json(MX_JSON_STRICT);
    if (v == NULL) {
        goto done;
    }

    if (mx_json_sign(v, server, &keys[0], &err) != MX_OK) {
        mx_tool_error("%s", err.msg);
        goto done;
    }

    if (mx_tool_write_canonical(v) == MX_OK) {
        rc = MX_TOOL_EXIT_OK;
    }

done:

    sodium_memzero(keys, sizeof(keys));

    if (v) {
        json_decref(v);
    }

    return rc;
}


static int
mx_tool_verify_json(const mx_tool_cmd_t *cmd, int argc, char **argv)
{
    int            rc, first;
    char           key_id[MX_KEY_ID_LEN + 1];
    json_t        *v;
    mx_err_t       err;
    const char    *key, *server;
    mx_tool_opt_t  opts[] = {
        { "--key", &key, NULL, NULL },
        { "--server", &server, NULL, NULL },
        { NULL, NULL, NULL, NULL }
    };
    unsigned char  pk[MX_ED25519_PK_LEN];

    key = NULL;
    server = NULL;

    rc = mx_tool_options(cmd, argc, argv, opts, &first);
    if (rc != MX_OK) {
        return rc == MX_TOOL_HELP ? MX_TOOL_EXIT_OK : MX_TOOL_EXIT_USAGE;
    }

    if (first != argc) {
        return mx_tool_usage_error(cmd, "unexpected argument \"%s\"",
                                   argv[first]);
    }

    if (key == NULL || server == NULL || server[0] == '\0') {
        return mx_tool_usage_error(cmd, "--key and --server are required");
    }

    rc = mx_tool_parse_pubkey(cmd, key, "--key must look like "
                              "ed25519:ID=BASE64PUBLICKEY", key_id, pk);
    if (rc != MX_TOOL_EXIT_OK) {
        return rc;
    }

    v = mx_tool_read_json(MX_JSON_STRICT);
    if (v == NULL) {
        return MX_TOOL_EXIT_FAIL;
    }

    rc = mx_json_verify(v, server, key_id, pk, &err);

    json_decref(v);

    if (rc != MX_OK) {
        mx_tool_error("%s", err.msg);
        return MX_TOOL_EXIT_FAIL;
    }

    return mx_tool_write("ok\n", 3) == MX_OK ? MX_TOOL_EXIT_OK
                                             : MX_TOOL_EXIT_FAIL;
}


static int
mx_tool_pubkey(const mx_tool_cmd_t *cmd, int argc, char **argv)
{
    int                rc, first;
    size_t             i, n;
    const char        *key_file;
    mx_tool_opt_t      opts[] = {
        { "--key", &key_file, NULL, NULL },
        { NULL, NULL, NULL, NULL }
    };
    mx_signing_key_t   keys[MX_TOOL_MAX_KEYS];

    key_file = NULL;

    rc = mx_tool_options(cmd, argc, argv, opts, &first);
    if (rc != MX_OK) {
        return rc == MX_TOOL_HELP ? MX_TOOL_EXIT_OK : MX_TOOL_EXIT_USAGE;
    }

    if (first != argc) {
        return mx_tool_usage_error(cmd, "unexpected argument \"%s\"",
                                   argv[first]);
    }

    if (key_file == NULL) {
        return mx_tool_usage_error(cmd, "--key is required");
    }

    if (mx_tool_read_keys(key_file, keys, &n) != MX_OK) {
        return MX_TOOL_EXIT_FAIL;
    }

    rc = MX_TOOL_EXIT_OK;

    for (i = 0; i < n; i++) {
        if (mx_tool_print_key(&keys[i]) != MX_OK) {
            rc = MX_TOOL_EXIT_FAIL;
            break;
        }
    }

    sodium_memzero(keys, sizeof(keys));

    return rc;
}

static int
mx_tool_event_id(const mx_tool_cmd_t *cmd, int argc, char **argv)
{
    int                        rc, first;
    const char                *rv;
    mx_event_t                *ev;
    mx_tool_opt_t              opts[] = {
        { "--room-version", &rv, NULL, NULL },
        { NULL, NULL, NULL, NULL }
    };
    const mx_room_version_t   *version;

    rv = NULL;

    rc = mx_tool_options(cmd, argc, argv, opts, &first);
    if (rc != MX_OK) {
        return rc == MX_TOOL_HELP ? MX_TOOL_EXIT_OK : MX_TOOL_EXIT_USAGE;
    }

    rc = mx_tool_no_operands(cmd, argc, argv, first);
    if (rc == MX_TOOL_EXIT_OK) {
        rc = mx_tool_room_version(cmd, rv, &version);
    }

    if (rc != MX_TOOL_EXIT_OK) {
        return rc;
    }

    ev = mx_tool_read_event(version);
    if (ev == NULL) {
        return MX_TOOL_EXIT_FAIL;
    }

    rc = mx_tool_write(ev->event_id, strlen(ev->event_id)) == MX_OK
         && mx_tool_write("\n", 1) == MX_OK
         ? MX_TOOL_EXIT_OK : MX_TOOL_EXIT_FAIL;

    mx_event_free(ev);

    return rc;
}


static int
mx_tool_redact(const mx_tool_cmd_t *cmd, int argc, char **argv)
{
    int                        rc, first;
    json_t                    *v, *redacted;
    mx_err_t                   err;
    const char                *rv;
    mx_tool_opt_t              opts[] = {
        { "--room-version", &rv, NULL, NULL },
        { NULL, NULL, NULL, NULL }
    };
    const mx_room_version_t   *version;

    rv = NULL;

    rc = mx_tool_options(cmd, argc, argv, opts, &first);
    if (rc != MX_OK) {
        return rc == MX_TOOL_HELP ? MX_TOOL_EXIT_OK : MX_TOOL_EXIT_USAGE;
    }

    rc = mx_tool_no_operands(cmd, argc, argv, first);
    if (rc == MX_TOOL_EXIT_OK) {
        rc = mx_tool_room_version(cmd, rv, &version);
    }

    if (rc != MX_TOOL_EXIT_OK) {
        return rc;
    }

    /*
     * Any object is redacted, not only a valid PDU: redaction is also
     * what makes an event that fails its hash check usable.
     */
    v = mx_tool_read_json(version->strict_canonical_json ? MX_JSON_STRICT
                                                         : 0);
    if (v == NULL) {
        return MX_TOOL_EXIT_FAIL;
    }

    redacted = mx_event_redact(v, version, &err);

    json_decref(v);

    if (redacted == NULL) {
        mx_tool_error("stdin: %s", err.msg);
        return MX_TOOL_EXIT_FAIL;
    }

    rc = mx_tool_write_canonical(redacted) == MX_OK ? MX_TOOL_EXIT_OK
                                                    : MX_TOOL_EXIT_FAIL;

    json_decref(redacted);

    return rc;
}


static int
mx_tool_sign_event(const mx_tool_cmd_t *cmd, int argc, char **argv)
{
    int                        rc, first;
    size_t                     n;
    json_t                    *v;
    mx_err_t                   err;
    const char                *key_file, *server, *rv;
    mx_event_t                *ev;
    mx_tool_opt_t              opts[] = {
        { "--key", &key_file, NULL, NULL },
        { "--server", &server, NULL, NULL },
        { "--room-version", &rv, NULL, NULL },
        { NULL, NULL, NULL, NULL }
    };
    mx_signing_key_t           keys[MX_TOOL_MAX_KEYS];
    const mx_room_version_t   *version;

    key_file = NULL;
    server = NULL;
    rv = NULL;

    rc = mx_tool_options(cmd, argc, argv, opts, &first);
    if (rc != MX_OK) {
        return rc == MX_TOOL_HELP ? MX_TOOL_EXIT_OK : MX_TOOL_EXIT_USAGE;
    }

    rc = mx_tool_no_operands(cmd, argc, argv, first);
    if (rc != MX_TOOL_EXIT_OK) {
        return rc;
    }

    if (key_file == NULL || server == NULL || server[0] == '\0') {
        return mx_tool_usage_error(cmd, "--key and --server are required");
    }

    rc = mx_tool_room_version(cmd, rv, &version);
    if (rc != MX_TOOL_EXIT_OK) {
        return rc;
    }

    if (mx_tool_read_keys(key_file, keys, &n) != MX_OK) {
        return MX_TOOL_EXIT_FAIL;
    }

    rc = MX_TOOL_EXIT_FAIL;
    ev = NULL;

    v = mx_tool_read_json(version->strict_canonical_json ? MX_JSON_STRICT
                                                         : 0);
    if (v == NULL) {
        goto done;
    }

    if (mx_event_sign(v, version, server, &keys[0], &err) != MX_OK) {
        mx_tool_error("stdin: %s", err.msg);
        goto done;
    }

    /*
     * Only now is it complete enough to be checked as a PDU; a server
     * must not sign and send what it would refuse from others.
     */
    if (mx_event_from_json(v, version, &ev, &err) != MX_OK) {
        mx_tool_error("stdin: not a valid PDU: %s", err.msg);
        goto done;
    }

    if (mx_tool_write_canonical(v) == MX_OK) {
        rc = MX_TOOL_EXIT_OK;
    }

done:

    sodium_memzero(keys, sizeof(keys));

    mx_event_free(ev);

    if (v) {
        json_decref(v);
    }

    return rc;
}


static int
mx_tool_verify_event(const mx_tool_cmd_t *cmd, int argc, char **argv)
{
    int                        rc, first;
    size_t                     i, len;
    mx_err_t                   err;
    const char                *rv, *arg, *eq;
    mx_event_t                *ev;
    mx_tool_list_t             key_args;
    mx_tool_opt_t              opts[] = {
        { "--room-version", &rv, NULL, NULL },
        { "--key", NULL, NULL, &key_args },
        { NULL, NULL, NULL, NULL }
    };
    mx_tool_pubkey_t          *k;
    mx_tool_keyring_t          ring;
    const mx_room_version_t   *version;

    rv = NULL;
    key_args.n = 0;

    rc = mx_tool_options(cmd, argc, argv, opts, &first);
    if (rc != MX_OK) {
        return rc == MX_TOOL_HELP ? MX_TOOL_EXIT_OK : MX_TOOL_EXIT_USAGE;
    }

    rc = mx_tool_no_operands(cmd, argc, argv, first);
    if (rc != MX_TOOL_EXIT_OK) {
        return rc;
    }

    if (key_args.n == 0) {
        return mx_tool_usage_error(cmd, "at least one --key is required");
    }

    rc = mx_tool_room_version(cmd, rv, &version);
    if (rc != MX_TOOL_EXIT_OK) {
        return rc;
    }

    /* server names have no "=": the first one ends the server */

    for (i = 0; i < key_args.n; i++) {
        arg = key_args.values[i];
        k = &ring.keys[i];

        eq = strchr(arg, '=');
        len = eq ? (size_t) (eq - arg) : 0;

        if (len == 0) {
            return mx_tool_usage_error(cmd, "--key must look like "
                                       "SERVER=ed25519:ID=BASE64PUBLICKEY");
        }

        rc = mx_tool_parse_pubkey(cmd, eq + 1, "--key must look like "
                                  "SERVER=ed25519:ID=BASE64PUBLICKEY",
                                  k->key_id, k->pk);
        if (rc != MX_TOOL_EXIT_OK) {
            return rc;
        }

        /* argv outlives the lookups: point into it, cut at the "=" */
        k->server = arg;
        k->server_len = len;
    }

    ring.n = key_args.n;

    ev = mx_tool_read_event(version);
    if (ev == NULL) {
        return MX_TOOL_EXIT_FAIL;
    }

    /*
     * Signatures first, as the spec orders it: a bad hash on a properly
     * signed event means "redact it", on a forgery it means nothing.
     */
    rc = mx_event_verify_signatures(ev->json, version, mx_tool_lookup, &ring,
                                    &err);

    if (rc == MX_OK) {
        rc = mx_event_check_content_hash(ev->json, &err);

        if (rc == MX_EVENT_HASH_MISMATCH) {
            snprintf(err.msg, sizeof(err.msg),
                     "content hash mismatch: the event must be redacted");
        }
    }

    mx_event_free(ev);

    if (rc != MX_OK) {
        mx_tool_error("%s", err.msg);
        return MX_TOOL_EXIT_FAIL;
    }

    return mx_tool_write("ok\n", 3) == MX_OK ? MX_TOOL_EXIT_OK
                                             : MX_TOOL_EXIT_FAIL;
}


static int
mx_tool_auth_check(const mx_tool_cmd_t *cmd, int argc, char **argv)
{
    int                        rc, first;
    char                       line[MX_ERR_LEN + 16];
    size_t                     i, n;
    json_t                    *v, *pdu, *list;
    mx_err_t                   err;
    const char                *rv;
    mx_event_t                *ev, **auth;
    mx_tool_opt_t              opts[] = {
        { "--room-version", &rv, NULL, NULL },
        { NULL, NULL, NULL, NULL }
    };
    const mx_room_version_t   *version;

    rv = NULL;

    rc = mx_tool_options(cmd, argc, argv, opts, &first);
    if (rc != MX_OK) {
        return rc == MX_TOOL_HELP ? MX_TOOL_EXIT_OK : MX_TOOL_EXIT_USAGE;
    }

    rc = mx_tool_no_operands(cmd, argc, argv, first);
    if (rc == MX_TOOL_EXIT_OK) {
        rc = mx_tool_room_version(cmd, rv, &version);
    }

    if (rc != MX_TOOL_EXIT_OK) {
        return rc;
    }

    v = mx_tool_read_json(version->strict_canonical_json ? MX_JSON_STRICT
                                                         : 0);
    if (v == NULL) {
        return MX_TOOL_EXIT_FAIL;
    }

    pdu = json_object_get(v, "event");
    list = json_object_get(v, "auth_events");

    if (!json_is_object(pdu) || !json_is_array(list)) {
        mx_tool_error("stdin: expected {\"event\": PDU, "
                      "\"auth_events\": [PDU, ...]}");
        json_decref(v);
        return MX_TOOL_EXIT_FAIL;
    }

    rc = MX_TOOL_EXIT_FAIL;
    ev = NULL;
    n = json_array_size(list);

    /* one more than needed, so that no auth events is no special case */
    auth = calloc(n + 1, sizeof(mx_event_t *));
    if (auth == NULL) {
        mx_tool_error("out of memory");
        goto done;
    }

    if (mx_event_from_json(pdu, version, &ev, &err) != MX_OK) {
        mx_tool_error("stdin: event: %s", err.msg);
        goto done;
    }

    for (i = 0; i < n; i++) {
        if (mx_event_from_json(json_array_get(list, i), version, &auth[i],
                               &err)
            != MX_OK)
        {
            mx_tool_error("stdin: auth_events[%zu]: %s", i, err.msg);
            goto done;
        }
    }

    if (mx_auth_check(ev, (const mx_event_t *const *) auth, n, &err)
        == MX_OK)
    {
        rc = mx_tool_write("allowed\n", 8) == MX_OK ? MX_TOOL_EXIT_OK
                                                    : MX_TOOL_EXIT_FAIL;

    } else {
        snprintf(line, sizeof(line), "refused: %s\n", err.msg);
        mx_tool_write(line, strlen(line));
    }

done:

    if (auth) {
        for (i = 0; i < n; i++) {
            mx_event_free(auth[i]);
        }

        free(auth);
    }

    mx_event_free(ev);
    json_decref(v);

    return rc;
}


static int
mx_tool_help(const mx_tool_cmd_t *cmd, int argc, char **argv)
{
    const mx_tool_cmd_t  *c;

    if (argc < 2) {
        mx_tool_usage(stdout);
        return MX_TOOL_EXIT_OK;
    }

    for (c = mx_tool_cmds; c->name; c++) {
        if (strcmp(argv[1], c->name) == 0) {
            printf("usage: " MX_TOOL_NAME " %s %s\n\n%s\n",
                   c->name, c->args, c->help);
            return MX_TOOL_EXIT_OK;
        }
    }

    return mx_tool_usage_error(cmd, "unknown command \"%s\"", argv[1]);
}


/*
 * Options come before operands, as "--name value", "--name=value" or
 * a bare "--flag"; "--" ends them.  *first gets the first operand.  An
 * option with a list collects every occurrence, others keep the last.
 */
static int
mx_tool_options(const mx_tool_cmd_t *cmd, int argc, char **argv,
    mx_tool_opt_t *opts, int *first)
{
    int             i;
    size_t          len;
    const char     *arg, *eq, *value;
    mx_tool_opt_t  *o;

    for (i = 1; i < argc; i++) {
        arg = argv[i];

        if (strcmp(arg, "--") == 0) {
            i++;
            break;
        }

        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            printf("usage: " MX_TOOL_NAME " %s %s\n\n%s\n",
                   cmd->name, cmd->args, cmd->help);
            return MX_TOOL_HELP;
        }

        if (arg[0] != '-' || arg[1] == '\0') {
            break;
        }

        eq = strchr(arg, '=');
        len = eq ? (size_t) (eq - arg) : strlen(arg);

        for (o = opts; o->name; o++) {
            if (strlen(o->name) == len && strncmp(arg, o->name, len) == 0) {
                break;
            }
        }

        if (o->name == NULL) {
            mx_tool_usage_error(cmd, "unknown option \"%.*s\"",
                                (int) len, arg);
            return MX_ERROR;
        }

        if (o->flag) {
            if (eq) {
                mx_tool_usage_error(cmd, "%s takes no value", o->name);
                return MX_ERROR;
            }

            *o->flag = 1;
            continue;
        }

        if (eq) {
            value = eq + 1;

        } else if (i + 1 < argc) {
            value = argv[++i];

        } else {
            mx_tool_usage_error(cmd, "%s needs a value", o->name);
            return MX_ERROR;
        }

        if (o->list == NULL) {
            *o->value = value;
            continue;
        }

        if (o->list->n == MX_TOOL_OPT_MAX) {
            mx_tool_usage_error(cmd, "%s is given more than %d times",
                                o->name, MX_TOOL_OPT_MAX);
            return MX_ERROR;
        }

        o->list->values[o->list->n++] = value;
    }

    *first = i;

    return MX_OK;
}


static int
mx_tool_usage_error(const mx_tool_cmd_t *cmd, const char *fmt, ...)
{
    char     msg[256];
    va_list  args;

    va_start(args, fmt);
    vsnprintf(msg, sizeof(msg), fmt, args);
    va_end(args);

    fprintf(stderr, MX_TOOL_NAME ": %s: %s\n"
            "usage: " MX_TOOL_NAME " %s %s\n",
            cmd->name, msg, cmd->name, cmd->args);

    return MX_TOOL_EXIT_USAGE;
}


static void
mx_tool_error(const char *fmt, ...)
{
    va_list  args;

    fputs(MX_TOOL_NAME ": ", stderr);

    va_start(args, fmt);
    vfprintf(stderr, fmt, args);
    va_end(args);

    fputc('\n', stderr);
}


static void
mx_tool_usage(FILE *f)
{
    const char           *p;
    const mx_tool_cmd_t  *cmd;

    fputs("usage: " MX_TOOL_NAME " COMMAND [OPTIONS] [ARGS]\n\n"
          "commands:\n", f);

    for (cmd = mx_tool_cmds; cmd->name; cmd++) {
        fprintf(f, "\n  %s %s\n", cmd->name, cmd->args);
        fprintf(f, "      ");

        /* indent the continuation lines of the help text too */
        for (p = cmd->help; *p; p++) {
            fputc(*p, f);

            if (*p == '\n') {
                fputs("      ", f);
            }
        }

        fputc('\n', f);
    }

    fputs("\nJSON is read from stdin (at most 16 MiB).  "
          "\"COMMAND --help\" describes one command.\n"
          "Exit status: 0 success, 1 bad input or failure, "
          "2 usage error.\n", f);
}


/*
 * Reads fd to the end into b, at most max bytes.  All the room is
 * reserved up front when max is small, so that a key file is never
 * moved by realloc() and leaves no copy of a seed in freed memory.
 */
static int
mx_tool_read_fd(int fd, const char *what, size_t max, mx_buf_t *b)
{
    ssize_t  n;

    if (max <= MX_TOOL_KEYFILE_MAX && mx_buf_reserve(b, max + 1) != MX_OK) {
        mx_tool_error("out of memory");
        return MX_ERROR;
    }

    for ( ;; ) {
        if (b->len == b->cap && mx_buf_reserve(b, 64 * 1024) != MX_OK) {
            mx_tool_error("out of memory");
            return MX_ERROR;
        }

        n = read(fd, b->data + b->len, b->cap - b->len);

        if (n == -1 && errno == EINTR) {
            continue;
        }

        if (n == -1) {
            mx_tool_error("cannot read %s: %s", what, strerror(errno));
            return MX_ERROR;
        }

        if (n == 0) {
            return MX_OK;
        }

        b->len += (size_t) n;

        if (b->len > max) {
            mx_tool_error("%s is larger than %zu bytes", what, max);
            return MX_ERROR;
        }
    }
}


static int
mx_tool_read_keys(const char *path, mx_signing_key_t *keys, size_t *n)
{
    int       fd, rc;
    mx_buf_t  buf;
    mx_err_t  err;

    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd == -1) {
        mx_tool_error("cannot open %s: %s", path, strerror(errno));
        return MX_ERROR;
    }

    mx_buf_init(&buf);

    rc = mx_tool_read_fd(fd, path, MX_TOOL_KEYFILE_MAX, &buf);

    close(fd);

    if (rc == MX_OK
        && mx_signing_keys_parse((char *) buf.data, buf.len, keys,
                                 MX_TOOL_MAX_KEYS, n, &err)
           != MX_OK)
    {
        mx_tool_error("%s: %s", path, err.msg);
        rc = MX_ERROR;
    }

    if (buf.data) {
        sodium_memzero(buf.data, buf.cap);
    }

    mx_buf_free(&buf);

    return rc;
}


static json_t *
mx_tool_read_json(int flags)
{
    json_t    *v;
    mx_buf_t   buf;
    mx_err_t   err;

    mx_buf_init(&buf);

    if (mx_tool_read_fd(STDIN_FILENO, "stdin", MX_TOOL_STDIN_MAX, &buf)
        != MX_OK)
    {
        mx_buf_free(&buf);
        return NULL;
    }

    v = mx_json_parse((char *) buf.data, buf.len, flags, &err);

    mx_buf_free(&buf);

    if (v == NULL) {
        mx_tool_error("stdin: %s", err.msg);
    }

    return v;
}


static int
mx_tool_write(const void *p, size_t n)
{
    ssize_t               w;
    const unsigned char  *c;

    c = p;

    while (n > 0) {
        w = write(STDOUT_FILENO, c, n);

        if (w == -1 && errno == EINTR) {
            continue;
        }

        if (w <= 0) {
            mx_tool_error("cannot write to stdout: %s",
                          w == 0 ? "short write" : strerror(errno));
            return MX_ERROR;
        }

        c += w;
        n -= (size_t) w;
    }

    return MX_OK;
}


static int
mx_tool_write_canonical(const json_t *v)
{
    int       rc;
    mx_buf_t  out;
    mx_err_t  err;

    mx_buf_init(&out);

    rc = mx_json_canonical(v, &out, &err);

    if (rc != MX_OK) {
        mx_tool_error("%s", err.msg);

    } else {
        rc = mx_tool_write(out.data, out.len);
    }

    mx_buf_free(&out);

    return rc;
}


static int
mx_tool_print_key(const mx_signing_key_t *key)
{
    int   n;
    char  pub[44], line[MX_KEY_ID_LEN + 48];

    mx_signing_key_public_base64(key, pub);

    n = snprintf(line, sizeof(line), "%s %s\n", key->key_id, pub);

    return mx_tool_write(line, (size_t) n);
}


/*
 * "ed25519:ID=BASE64" into key_id and pk.  A malformed shape is a usage
 * error (shape says what was expected), a bad key is bad input.
 */
static int
mx_tool_parse_pubkey(const mx_tool_cmd_t *cmd, const char *arg,
    const char *shape, char *key_id, unsigned char *pk)
{
    size_t         id_len, pk_len;
    const char    *eq;
    unsigned char  buf[MX_ED25519_PK_LEN + 2];

    /* the key id has no "=", base64 may end in "=": split at the first */
    eq = strchr(arg, '=');
    id_len = eq ? (size_t) (eq - arg) : 0;

    if (eq == NULL || id_len <= 8 || id_len > MX_KEY_ID_LEN
        || strncmp(arg, "ed25519:", 8) != 0)
    {
        return mx_tool_usage_error(cmd, "%s", shape);
    }

    memcpy(key_id, arg, id_len);
    key_id[id_len] = '\0';

    /* 32 bytes are at most 44 base64 characters; buf has room for 34 */
    if (strlen(eq + 1) > 44
        || mx_base64_decode(buf, &pk_len, eq + 1, strlen(eq + 1)) != MX_OK
        || pk_len != MX_ED25519_PK_LEN)
    {
        mx_tool_error("the public key of %s is not 32 bytes of base64",
                      key_id);
        return MX_TOOL_EXIT_FAIL;
    }

    memcpy(pk, buf, MX_ED25519_PK_LEN);

    return MX_TOOL_EXIT_OK;
}


/*
 * A missing --room-version is a usage error; one we do not implement is
 * a well-formed request we cannot serve, like any other bad input.
 */
static int
mx_tool_room_version(const mx_tool_cmd_t *cmd, const char *id,
    const mx_room_version_t **version)
{
    if (id == NULL || id[0] == '\0') {
        return mx_tool_usage_error(cmd, "--room-version is required");
    }

    *version = mx_room_version_find(id, strlen(id));

    if (*version == NULL) {
        mx_tool_error("unsupported room version \"%s\"", id);
        return MX_TOOL_EXIT_FAIL;
    }

    return MX_TOOL_EXIT_OK;
}


static int
mx_tool_no_operands(const mx_tool_cmd_t *cmd, int argc, char **argv,
    int first)
{
    if (first != argc) {
        return mx_tool_usage_error(cmd, "unexpected argument \"%s\"",
                                   argv[first]);
    }

    return MX_TOOL_EXIT_OK;
}


/* stdin as a PDU of that version: parsed, validated, its ID computed */
static mx_event_t *
mx_tool_read_event(const mx_room_version_t *version)
{
    mx_buf_t     buf;
    mx_err_t     err;
    mx_event_t  *ev;

    mx_buf_init(&buf);

    if (mx_tool_read_fd(STDIN_FILENO, "stdin", MX_TOOL_STDIN_MAX, &buf)
        != MX_OK)
    {
        mx_buf_free(&buf);
        return NULL;
    }

    if (mx_event_parse((char *) buf.data, buf.len, version, &ev, &err)
        != MX_OK)
    {
        mx_tool_error("stdin: %s", err.msg);
        ev = NULL;
    }

    mx_buf_free(&buf);

    return ev;
}


/* the keys of verify-event's command line; any validity period */
static int
mx_tool_lookup(void *data, const char *server, const char *key_id,
    int64_t ts, unsigned char public_key[32])
{
    size_t              i;
    mx_tool_keyring_t  *ring;
    mx_tool_pubkey_t   *k;

    (void) ts;

    ring = data;

    for (i = 0; i < ring->n; i++) {
        k = &ring->keys[i];

        if (strlen(server) == k->server_len
            && memcmp(server, k->server, k->server_len) == 0
            && strcmp(key_id, k->key_id) == 0)
        {
            memcpy(public_key, k->pk, MX_ED25519_PK_LEN);
            return MX_OK;
        }
    }

    return MX_ERROR;
}
