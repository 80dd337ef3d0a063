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


#define MX_TOOL_NAME          "matrix-tool"

#define MX_TOOL_EXIT_OK       0
#define MX_TOOL_EXIT_FAIL     1
#define MX_TOOL_EXIT_USAGE    2

/* JSON on stdin; federation PDUs are at most 64 KiB, this is generous */
#define MX_TOOL_STDIN_MAX     (16 * 1024 * 1024)
#define MX_TOOL_KEYFILE_MAX   (64 * 1024)

/* more than a server ever needs in one file */
#define MX_TOOL_MAX_KEYS      64

#define MX_TOOL_OPT_MAX       8

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
    const char     *name;       /* "--key" */
    const char    **value;      /* for options with an argument */
    int            *flag;       /* for options without one */
} mx_tool_opt_t;


static int mx_tool_keygen(const mx_tool_cmd_t *cmd, int argc, char **argv);
static int mx_tool_canonical(const mx_tool_cmd_t *cmd, int argc,
    char **argv);
static int mx_tool_sign_json(const mx_tool_cmd_t *cmd, int argc,
    char **argv);
static int mx_tool_verify_json(const mx_tool_cmd_t *cmd, int argc,
    char **argv);
static int mx_tool_pubkey(const mx_tool_cmd_t *cmd, int argc, char **argv);
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
        { "--version", &version, NULL },
        { NULL, NULL, NULL }
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
        { "--strict", NULL, &strict },
        { NULL, NULL, NULL }
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
        { "--key", &key_file, NULL },
        { "--server", &server, NULL },
        { NULL, NULL, NULL }
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
    size_t         id_len, pk_len;
    json_t        *v;
    mx_err_t       err;
    const char    *key, *server, *eq;
    mx_tool_opt_t  opts[] = {
        { "--key", &key, NULL },
        { "--server", &server, NULL },
        { NULL, NULL, NULL }
    };
    unsigned char  pk[MX_ED25519_PK_LEN + 2];

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

    /* the key id has no "=", base64 may end in "=": split at the first */
    eq = strchr(key, '=');
    id_len = eq ? (size_t) (eq - key) : 0;

    if (eq == NULL || id_len <= 8 || id_len > MX_KEY_ID_LEN
        || strncmp(key, "ed25519:", 8) != 0)
    {
        return mx_tool_usage_error(cmd, "--key must look like "
                                   "ed25519:ID=BASE64PUBLICKEY");
    }

    memcpy(key_id, key, id_len);
    key_id[id_len] = '\0';

    /* 32 bytes are at most 44 base64 characters; pk has room for 34 */
    if (strlen(eq + 1) > 44
        || mx_base64_decode(pk, &pk_len, eq + 1, strlen(eq + 1)) != MX_OK
        || pk_len != MX_ED25519_PK_LEN)
    {
        mx_tool_error("the public key of %s is not 32 bytes of base64",
                      key_id);
        return MX_TOOL_EXIT_FAIL;
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
        { "--key", &key_file, NULL },
        { NULL, NULL, NULL }
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
 * a bare "--flag"; "--" ends them.  *first gets the first operand.
 */
static int
mx_tool_options(const mx_tool_cmd_t *cmd, int argc, char **argv,
    mx_tool_opt_t *opts, int *first)
{
    int             i;
    size_t          len;
    const char     *arg, *eq;
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
            *o->value = eq + 1;

        } else if (i + 1 < argc) {
            *o->value = argv[++i];

        } else {
            mx_tool_usage_error(cmd, "%s needs a value", o->name);
            return MX_ERROR;
        }
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
