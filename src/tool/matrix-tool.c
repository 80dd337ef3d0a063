/*
 * matrix-tool: the core's Matrix primitives from the command line, for
 * operators (key generation, the module's schema migrations) and for
 * tests (canonical JSON, signing and verifying against an independent
 * implementation).
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
#include <libpq-fe.h>

#include "mx_core.h"
#include "mx_event.h"
#include "mx_auth.h"
#include "mx_xmatrix.h"

#include "matrix_migrations.h"


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

/* migrate: longer names are cut by the server (NAMEDATALEN - 1) */
#define MX_TOOL_SCHEMA        "matrix"
#define MX_TOOL_SCHEMA_MAX    63

/*
 * The migration runner's statements, shared by the runner and by
 * "migrate --print"; the module's own runner sends the same.  "%s" is
 * the quoted schema name.  The advisory lock's first key, 28024, is the
 * module's: concurrent migrators of one schema (workers, nodes, this
 * tool) queue on it instead of racing CREATE ... IF NOT EXISTS.
 */
#define MX_TOOL_PG_LOCK(name)                                                \
    "SELECT pg_advisory_xact_lock(28024, hashtext(" name "))"
#define MX_TOOL_PG_SCHEMA     "CREATE SCHEMA IF NOT EXISTS %s"
#define MX_TOOL_PG_PATH       "SET LOCAL search_path TO %s"
#define MX_TOOL_PG_TABLE                                                     \
    "CREATE TABLE IF NOT EXISTS schema_migrations "                          \
    "(version integer PRIMARY KEY, name text NOT NULL, "                     \
    "applied_at timestamptz NOT NULL DEFAULT now())"
#define MX_TOOL_PG_CURRENT                                                   \
    "SELECT coalesce(max(version), 0) FROM schema_migrations"
#define MX_TOOL_PG_RECORD(version, name)                                     \
    "INSERT INTO schema_migrations (version, name) "                         \
    "VALUES (" version ", " name ")"


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
static int mx_tool_migrate(const mx_tool_cmd_t *cmd, int argc,
    char **argv);
static int mx_tool_x_matrix(const mx_tool_cmd_t *cmd, int argc,
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
static int mx_tool_read_body(json_t **body);
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
static PGconn *mx_tool_pg_connect(const char *conninfo);
static void mx_tool_pg_notice(void *data, const PGresult *res);
static int mx_tool_pg_migrate(PGconn *conn, const char *schema,
    unsigned latest);
static int mx_tool_pg_version(PGconn *conn, const char *schema,
    long *version);
static int mx_tool_pg_query(PGconn *conn, const char *what, const char *sql,
    int nparams, const char *const *params, long *value);
static void mx_tool_pg_error(PGconn *conn, const PGresult *res,
    const char *what, const char *sql);
static unsigned mx_tool_sql_line(const char *sql, long pos);
static char *mx_tool_sql_quote(const char *s, char q);
static int mx_tool_migrate_status(const char *schema, long current,
    unsigned latest);
static int mx_tool_migrate_print(const char *schema, long current,
    unsigned latest);


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

    { "migrate", mx_tool_migrate,
      "[--schema NAME] [--status | --print] CONNINFO",
      "bring the module's own schema NAME (default \"matrix\") in the\n"
      "database CONNINFO (a libpq connection string or URI) to the\n"
      "latest version, in one transaction; a database that is newer is\n"
      "left alone.  --status prints the version and what is pending,\n"
      "--print the SQL that would be applied, for applying it by hand;\n"
      "neither changes anything.  --print needs no CONNINFO: without\n"
      "one it prints every migration, with one only the pending ones." },

    { "x-matrix", mx_tool_x_matrix,
      "--key FILE --origin NAME --destination NAME --method M --uri URI",
      "print the Authorization header value of a federation request from\n"
      "ORIGIN to DESTINATION, signed with the first key in FILE.  URI is\n"
      "the request target as sent (path and query); the JSON body, if\n"
      "any, is on stdin (empty, blank or a terminal: no body).  For\n"
      "curl -H \"Authorization: $(matrix-tool x-matrix ... < body.json)\"." },

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
mx_tool_migrate(const mx_tool_cmd_t *cmd, int argc, char **argv)
{
    int                        rc, first, status, print;
    long                       current;
    PGconn                    *conn;
    unsigned                   latest;
    const char                *schema, *conninfo;
    mx_tool_opt_t              opts[] = {
        { "--schema", &schema, NULL, NULL },
        { "--status", NULL, &status, NULL },
        { "--print", NULL, &print, NULL },
        { NULL, NULL, NULL, NULL }
    };
    const matrix_migration_t  *m;

    schema = MX_TOOL_SCHEMA;
    status = 0;
    print = 0;

    rc = mx_tool_options(cmd, argc, argv, opts, &first);
    if (rc != MX_OK) {
        return rc == MX_TOOL_HELP ? MX_TOOL_EXIT_OK : MX_TOOL_EXIT_USAGE;
    }

    if (status && print) {
        return mx_tool_usage_error(cmd, "--status and --print exclude "
                                   "each other");
    }

    if (argc - first > 1) {
        return mx_tool_usage_error(cmd, "unexpected argument \"%s\"",
                                   argv[first + 1]);
    }

    if (argc == first && !print) {
        return mx_tool_usage_error(cmd, "CONNINFO is required");
    }

    /* the lock hashes the name as given: it must be the schema's name */
    if (schema[0] == '\0' || strlen(schema) > MX_TOOL_SCHEMA_MAX) {
        return mx_tool_usage_error(cmd, "--schema must be 1 to %d bytes",
                                   MX_TOOL_SCHEMA_MAX);
    }

    conninfo = argc > first ? argv[first] : NULL;

    latest = 0;

    for (m = matrix_migrations; m->version; m++) {
        latest = m->version;
    }

    if (conninfo == NULL) {
        return mx_tool_migrate_print(schema, 0, latest);
    }

    conn = mx_tool_pg_connect(conninfo);
    if (conn == NULL) {
        return MX_TOOL_EXIT_FAIL;
    }

    if (!status && !print) {
        rc = mx_tool_pg_migrate(conn, schema, latest);

    } else if (mx_tool_pg_version(conn, schema, &current) != MX_OK) {
        rc = MX_TOOL_EXIT_FAIL;

    } else if (status) {
        rc = mx_tool_migrate_status(schema, current, latest);

    } else {
        rc = mx_tool_migrate_print(schema, current, latest);
    }

    PQfinish(conn);

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
 * The Authorization header of a federation request (mx_xmatrix_sign()),
 * for curl and for tests.
 */
static int
mx_tool_x_matrix(const mx_tool_cmd_t *cmd, int argc, char **argv)
{
    int                    rc, first;
    size_t                 n;
    json_t                *body;
    mx_buf_t               header;
    mx_err_t               err;
    const char            *key_file, *origin, *destination, *method, *uri;
    mx_tool_opt_t          opts[] = {
        { "--key", &key_file, NULL, NULL },
        { "--origin", &origin, NULL, NULL },
        { "--destination", &destination, NULL, NULL },
        { "--method", &method, NULL, NULL },
        { "--uri", &uri, NULL, NULL },
        { NULL, NULL, NULL, NULL }
    };
    mx_signing_key_t       keys[MX_TOOL_MAX_KEYS];
    mx_xmatrix_request_t   req;

    key_file = NULL;
    origin = NULL;
    destination = NULL;
    method = NULL;
    uri = NULL;

    rc = mx_tool_options(cmd, argc, argv, opts, &first);
    if (rc != MX_OK) {
        return rc == MX_TOOL_HELP ? MX_TOOL_EXIT_OK : MX_TOOL_EXIT_USAGE;
    }

    rc = mx_tool_no_operands(cmd, argc, argv, first);
    if (rc != MX_TOOL_EXIT_OK) {
        return rc;
    }

    if (key_file == NULL || origin == NULL || destination == NULL
        || method == NULL || uri == NULL)
    {
        return mx_tool_usage_error(cmd, "--key, --origin, --destination, "
                                   "--method and --uri are required");
    }

    if (mx_tool_read_keys(key_file, keys, &n) != MX_OK) {
        return MX_TOOL_EXIT_FAIL;
    }

    rc = MX_TOOL_EXIT_FAIL;
    body = NULL;
    mx_buf_init(&header);

    if (mx_tool_read_body(&body) != MX_OK) {
        goto done;
    }

    req.method = method;
    req.method_len = strlen(method);
    req.uri = uri;
    req.uri_len = strlen(uri);
    req.origin = origin;
    req.origin_len = strlen(origin);
    req.destination = destination;
    req.destination_len = strlen(destination);
    req.content = body;

    if (mx_xmatrix_sign(&req, &keys[0], &header, &err) != MX_OK) {
        mx_tool_error("%s", err.msg);
        goto done;
    }

    if (mx_buf_append(&header, "\n", 1) == MX_OK
        && mx_tool_write(header.data, header.len) == MX_OK)
    {
        rc = MX_TOOL_EXIT_OK;
    }

done:

    sodium_memzero(keys, sizeof(keys));
    mx_buf_free(&header);

    if (body) {
        json_decref(body);
    }

    return rc;
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


/*
 * A request body on stdin, strictly parsed like everything we sign; no
 * body (*body NULL) when stdin is a terminal or holds only whitespace.
 */
static int
mx_tool_read_body(json_t **body)
{
    int             rc;
    size_t          i;
    mx_buf_t        buf;
    mx_err_t        err;
    unsigned char   c;

    *body = NULL;

    if (isatty(STDIN_FILENO)) {
        return MX_OK;
    }

    mx_buf_init(&buf);

    if (mx_tool_read_fd(STDIN_FILENO, "stdin", MX_TOOL_STDIN_MAX, &buf)
        != MX_OK)
    {
        mx_buf_free(&buf);
        return MX_ERROR;
    }

    /* JSON's insignificant whitespace only: no body */
    for (i = 0; i < buf.len; i++) {
        c = buf.data[i];

        if (c != ' ' && c != '\t' && c != '\r' && c != '\n') {
            break;
        }
    }

    rc = MX_OK;

    if (i < buf.len) {
        *body = mx_json_parse((char *) buf.data, buf.len, MX_JSON_STRICT,
                              &err);

        if (*body == NULL) {
            mx_tool_error("stdin: %s", err.msg);
            rc = MX_ERROR;
        }
    }

    mx_buf_free(&buf);

    return rc;
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


/* conninfo is never printed: it may hold a password */
static PGconn *
mx_tool_pg_connect(const char *conninfo)
{
    size_t       len;
    PGconn      *conn;
    const char  *msg;
    const char  *keys[] = { "dbname", "fallback_application_name", NULL };
    const char  *values[] = { conninfo, MX_TOOL_NAME, NULL };

    conn = PQconnectdbParams(keys, values, 1);

    if (conn == NULL) {
        mx_tool_error("out of memory");
        return NULL;
    }

    if (PQstatus(conn) != CONNECTION_OK) {
        msg = PQerrorMessage(conn);
        len = strlen(msg);

        while (len > 0 && msg[len - 1] == '\n') {
            len--;
        }

        mx_tool_error("cannot connect to the database: %.*s", (int) len,
                      msg);
        PQfinish(conn);
        return NULL;
    }

    PQsetNoticeReceiver(conn, mx_tool_pg_notice, NULL);

    return conn;
}


/* "schema ... already exists, skipping" is no news; warnings are */
static void
mx_tool_pg_notice(void *data, const PGresult *res)
{
    const char  *severity;

    (void) data;

    severity = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);

    if (severity != NULL && strcmp(severity, "WARNING") == 0) {
        mx_tool_error("server: %s",
                      PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY));
    }
}


/*
 * The runner; the module's runner takes the same steps:
 *
 *   BEGIN
 *   SELECT pg_advisory_xact_lock(28024, hashtext(<name>))
 *   CREATE SCHEMA IF NOT EXISTS <S>; SET LOCAL search_path TO <S>
 *   CREATE TABLE IF NOT EXISTS schema_migrations (...)
 *   SELECT coalesce(max(version), 0) FROM schema_migrations
 *   newer than we know: ROLLBACK, say so, done (success)
 *   each newer migration: its SQL (one simple query), then
 *       INSERT INTO schema_migrations (version, name) VALUES ($1, $2)
 *   COMMIT; any error: ROLLBACK, nothing changed
 *
 * Output comes only after COMMIT: nothing is claimed that did not stay.
 */
static int
mx_tool_pg_migrate(PGconn *conn, const char *schema, unsigned latest)
{
    int                        rc;
    char                      *ident, what[128], version[16];
    char                       sql[sizeof(MX_TOOL_PG_SCHEMA)
                                   + 2 * MX_TOOL_SCHEMA_MAX + 16];
    long                       current;
    const char                *params[2];
    const matrix_migration_t  *m;

    ident = PQescapeIdentifier(conn, schema, strlen(schema));
    if (ident == NULL) {
        mx_tool_pg_error(conn, NULL, "bad schema name", NULL);
        return MX_TOOL_EXIT_FAIL;
    }

    rc = MX_TOOL_EXIT_FAIL;
    params[0] = schema;

    if (mx_tool_pg_query(conn, "cannot begin", "BEGIN", 0, NULL, NULL)
        != MX_OK
        || mx_tool_pg_query(conn, "cannot lock the schema",
                            MX_TOOL_PG_LOCK("$1"), 1, params, NULL)
           != MX_OK)
    {
        goto done;
    }

    snprintf(sql, sizeof(sql), MX_TOOL_PG_SCHEMA, ident);

    if (mx_tool_pg_query(conn, "cannot create the schema", sql, 0, NULL,
                         NULL)
        != MX_OK)
    {
        goto done;
    }

    snprintf(sql, sizeof(sql), MX_TOOL_PG_PATH, ident);

    if (mx_tool_pg_query(conn, "cannot set search_path", sql, 0, NULL, NULL)
        != MX_OK
        || mx_tool_pg_query(conn, "cannot create schema_migrations",
                            MX_TOOL_PG_TABLE, 0, NULL, NULL)
           != MX_OK
        || mx_tool_pg_query(conn, "cannot read schema_migrations",
                            MX_TOOL_PG_CURRENT, 0, NULL, &current)
           != MX_OK)
    {
        goto done;
    }

    if (current > (long) latest) {
        rc = mx_tool_pg_query(conn, "cannot roll back", "ROLLBACK", 0, NULL,
                              NULL)
             == MX_OK ? mx_tool_migrate_status(schema, current, latest)
                      : MX_TOOL_EXIT_FAIL;
        goto done;
    }

    for (m = matrix_migrations; m->version; m++) {
        if ((long) m->version <= current) {
            continue;
        }

        snprintf(what, sizeof(what), "migration %s failed", m->name);

        if (mx_tool_pg_query(conn, what, m->sql, 0, NULL, NULL) != MX_OK) {
            goto done;
        }

        /*
         * The runner's transaction is the only one: a COMMIT in the
         * migration has already made its first part stay, unrecorded.
         */
        if (PQtransactionStatus(conn) != PQTRANS_INTRANS) {
            mx_tool_error("%s: it ended the runner's transaction (BEGIN, "
                          "COMMIT or ROLLBACK in a migration); what ran "
                          "before that may be committed, unrecorded: "
                          "check the schema by hand", what);
            goto done;
        }

        snprintf(version, sizeof(version), "%u", m->version);
        params[0] = version;
        params[1] = m->name;

        if (mx_tool_pg_query(conn, what, MX_TOOL_PG_RECORD("$1", "$2"), 2,
                             params, NULL)
            != MX_OK)
        {
            goto done;
        }
    }

    if (mx_tool_pg_query(conn, "cannot commit", "COMMIT", 0, NULL, NULL)
        != MX_OK)
    {
        goto done;
    }

    for (m = matrix_migrations; m->version; m++) {
        if ((long) m->version > current) {
            printf("schema \"%s\": applied %s\n", schema, m->name);
        }
    }

    printf("schema \"%s\": version %u%s\n", schema, latest,
           current == (long) latest ? ", up to date" : "");

    rc = fflush(stdout) == 0 ? MX_TOOL_EXIT_OK : MX_TOOL_EXIT_FAIL;

done:

    if (rc != MX_TOOL_EXIT_OK && PQstatus(conn) == CONNECTION_OK
        && PQtransactionStatus(conn) != PQTRANS_IDLE)
    {
        PQclear(PQexec(conn, "ROLLBACK"));
        mx_tool_error("rolled back: schema \"%s\" is unchanged", schema);
    }

    PQfreemem(ident);

    return rc;
}


/* the schema's version without changing anything: 0 when it is absent */
static int
mx_tool_pg_version(PGconn *conn, const char *schema, long *version)
{
    int          rc;
    char        *ident, sql[sizeof(MX_TOOL_PG_CURRENT)
                            + 2 * MX_TOOL_SCHEMA_MAX + 16];
    long         exists;
    const char  *params[1];

    ident = PQescapeIdentifier(conn, schema, strlen(schema));
    if (ident == NULL) {
        mx_tool_pg_error(conn, NULL, "bad schema name", NULL);
        return MX_ERROR;
    }

    snprintf(sql, sizeof(sql), "%s.schema_migrations", ident);
    params[0] = sql;

    rc = mx_tool_pg_query(conn, "cannot read schema_migrations",
                          "SELECT (to_regclass($1) IS NOT NULL)::int", 1,
                          params, &exists);

    *version = 0;

    if (rc == MX_OK && exists) {
        snprintf(sql, sizeof(sql),
                 "SELECT coalesce(max(version), 0) FROM %s.schema_migrations",
                 ident);

        rc = mx_tool_pg_query(conn, "cannot read schema_migrations", sql, 0,
                              NULL, version);
    }

    PQfreemem(ident);

    return rc;
}


/*
 * Runs sql, with parameters when nparams > 0 (else as a simple query,
 * which may hold several statements), and reports a failure as "what:
 * the server's message".  value, when given, gets the first column of
 * the first row.
 */
static int
mx_tool_pg_query(PGconn *conn, const char *what, const char *sql,
    int nparams, const char *const *params, long *value)
{
    int             rc;
    PGresult       *res;
    ExecStatusType  st;

    if (nparams > 0) {
        res = PQexecParams(conn, sql, nparams, NULL, params, NULL, NULL, 0);

    } else {
        res = PQexec(conn, sql);
    }

    st = PQresultStatus(res);

    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK
        && st != PGRES_EMPTY_QUERY)
    {
        mx_tool_pg_error(conn, res, what, sql);
        PQclear(res);
        return MX_ERROR;
    }

    rc = MX_OK;

    if (value) {
        if (PQntuples(res) == 1 && !PQgetisnull(res, 0, 0)) {
            *value = strtol(PQgetvalue(res, 0, 0), NULL, 10);

        } else {
            mx_tool_error("%s: no value", what);
            rc = MX_ERROR;
        }
    }

    PQclear(res);

    return rc;
}


/*
 * The server's message with its SQLSTATE, the line of sql it points at,
 * detail and hint; libpq's own message when the server sent none (a
 * lost connection).
 */
static void
mx_tool_pg_error(PGconn *conn, const PGresult *res, const char *what,
    const char *sql)
{
    size_t       len;
    const char  *msg, *state, *pos, *detail, *hint;

    msg = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;

    if (msg == NULL) {
        msg = PQerrorMessage(conn);
        len = strlen(msg);

        while (len > 0 && msg[len - 1] == '\n') {
            len--;
        }

        if (len == 0) {
            msg = res ? PQresStatus(PQresultStatus(res)) : "no result";
            len = strlen(msg);
        }

        mx_tool_error("%s: %.*s", what, (int) len, msg);
        return;
    }

    state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    pos = PQresultErrorField(res, PG_DIAG_STATEMENT_POSITION);
    detail = PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL);
    hint = PQresultErrorField(res, PG_DIAG_MESSAGE_HINT);

    if (pos && sql) {
        mx_tool_error("%s: %s (SQLSTATE %s, line %u)", what, msg,
                      state ? state : "?",
                      mx_tool_sql_line(sql, strtol(pos, NULL, 10)));

    } else {
        mx_tool_error("%s: %s (SQLSTATE %s)", what, msg,
                      state ? state : "?");
    }

    if (detail) {
        fprintf(stderr, "  detail: %s\n", detail);
    }

    if (hint) {
        fprintf(stderr, "  hint: %s\n", hint);
    }
}


/* the line of the pos-th character (1-based, as the server counts) */
static unsigned
mx_tool_sql_line(const char *sql, long pos)
{
    long                  n;
    unsigned              line;
    const unsigned char  *p;

    line = 1;
    n = 0;

    for (p = (const unsigned char *) sql; *p; p++) {

        /* UTF-8 continuation bytes are not characters of their own */
        if ((*p & 0xc0) == 0x80) {
            continue;
        }

        if (++n == pos) {
            break;
        }

        if (*p == '\n') {
            line++;
        }
    }

    return line;
}


/*
 * s quoted for SQL, as an identifier (q '"') or a string literal (q
 * '\''), the quote doubled inside; a literal with a backslash becomes
 * E'...', which reads the same whatever standard_conforming_strings is.
 */
static char *
mx_tool_sql_quote(const char *s, char q)
{
    int          e;
    char        *out, *d;
    const char  *p;

    e = (q == '\'' && strchr(s, '\\') != NULL);

    out = malloc(2 * strlen(s) + 4);
    if (out == NULL) {
        mx_tool_error("out of memory");
        return NULL;
    }

    d = out;

    if (e) {
        *d++ = 'E';
    }

    *d++ = q;

    for (p = s; *p; p++) {
        if (*p == q || (e && *p == '\\')) {
            *d++ = *p;
        }

        *d++ = *p;
    }

    *d++ = q;
    *d = '\0';

    return out;
}


static int
mx_tool_migrate_status(const char *schema, long current, unsigned latest)
{
    const matrix_migration_t  *m;

    printf("schema \"%s\": version %ld, latest %u\n", schema, current,
           latest);

    if (current > (long) latest) {
        printf("newer than this " MX_TOOL_NAME ": a newer module migrated "
               "it, left alone\n");

    } else if (current == (long) latest) {
        printf("up to date\n");

    } else {
        for (m = matrix_migrations; m->version; m++) {
            if ((long) m->version > current) {
                printf("pending: %s\n", m->name);
            }
        }
    }

    return fflush(stdout) == 0 ? MX_TOOL_EXIT_OK : MX_TOOL_EXIT_FAIL;
}


/*
 * The script the runner would send, for operators who apply schema
 * changes with their own tools: one transaction, the same lock, the
 * same bookkeeping, so it cannot be applied twice.
 */
static int
mx_tool_migrate_print(const char *schema, long current, unsigned latest)
{
    int                        rc;
    char                      *ident, *lit, *name;
    const matrix_migration_t  *m;

    if (current >= (long) latest) {
        printf("-- schema \"%s\" is at version %ld, this " MX_TOOL_NAME
               " knows %u: nothing to apply\n", schema, current, latest);

        return fflush(stdout) == 0 ? MX_TOOL_EXIT_OK : MX_TOOL_EXIT_FAIL;
    }

    ident = mx_tool_sql_quote(schema, '"');
    lit = mx_tool_sql_quote(schema, '\'');

    rc = MX_TOOL_EXIT_FAIL;

    if (ident == NULL || lit == NULL) {
        goto done;
    }

    printf("-- " MX_TOOL_NAME " migrate: schema \"%s\", version %ld to %u.\n"
           "-- One transaction; apply it with, for example,\n"
           "--     psql -v ON_ERROR_STOP=1 -f FILE CONNINFO\n\n"
           "BEGIN;\n"
           MX_TOOL_PG_LOCK("%s") ";\n"
           MX_TOOL_PG_SCHEMA ";\n"
           MX_TOOL_PG_PATH ";\n"
           MX_TOOL_PG_TABLE ";\n",
           schema, current, latest, lit, ident, ident);

    for (m = matrix_migrations; m->version; m++) {
        if ((long) m->version <= current) {
            continue;
        }

        name = mx_tool_sql_quote(m->name, '\'');
        if (name == NULL) {
            goto done;
        }

        printf("\n-- %s\n%s%s" MX_TOOL_PG_RECORD("%u", "%s") ";\n",
               m->name, m->sql,
               m->sql[0] && m->sql[strlen(m->sql) - 1] != '\n' ? "\n" : "",
               m->version, name);

        free(name);
    }

    printf("\nCOMMIT;\n");

    if (fflush(stdout) == 0) {
        rc = MX_TOOL_EXIT_OK;

    } else {
        mx_tool_error("cannot write to stdout: %s", strerror(errno));
    }

done:

    free(ident);
    free(lit);

    return rc;
}
