/*
 * ngx_http_matrix_module: directives, configuration and the content
 * handler.  The endpoints themselves live in one file per concern
 * (keys, discovery, ...) and are reached through the router.
 */


#include <sodium.h>

#include "ngx_http_matrix_module.h"
#include "ngx_http_matrix_router.h"
#include "ngx_http_matrix_keys.h"
#include "ngx_http_matrix_pg.h"
#include "ngx_http_matrix_http.h"
#include "ngx_http_matrix_remote_keys.h"
#include "ngx_http_matrix_feed.h"
#include "ngx_http_matrix_silo_api.h"
#include "ngx_http_matrix_destination.h"
#include "ngx_http_matrix_key_notaries.h"
#include "ngx_http_matrix_fed_cache.h"

#include <mx_ids.h>


static ngx_int_t ngx_http_matrix_handler(ngx_http_request_t *r);
static void ngx_http_matrix_body_read(ngx_http_request_t *r);
static void ngx_http_matrix_json_release(void *data);

static char *ngx_http_matrix(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
static char *ngx_http_matrix_server_name(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_matrix_well_known_server(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static char *ngx_http_matrix_well_known_client(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);

static char *ngx_http_matrix_silo_supports_directive(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static char *ngx_http_matrix_silo_api(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_matrix_schema_name(ngx_conf_t *cf, void *post,
    void *data);

static char *ngx_http_matrix_room_version(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_matrix_key_validity(ngx_conf_t *cf, void *post,
    void *data);

static ngx_int_t ngx_http_matrix_init_module(ngx_cycle_t *cycle);
static ngx_int_t ngx_http_matrix_init_process(ngx_cycle_t *cycle);
static void ngx_http_matrix_exit_process(ngx_cycle_t *cycle);
static ngx_int_t ngx_http_matrix_postconfiguration(ngx_conf_t *cf);
static void *ngx_http_matrix_create_main_conf(ngx_conf_t *cf);
static char *ngx_http_matrix_init_main_conf(ngx_conf_t *cf, void *conf);
static void *ngx_http_matrix_create_srv_conf(ngx_conf_t *cf);
static char *ngx_http_matrix_merge_srv_conf(ngx_conf_t *cf, void *parent,
    void *child);
static void *ngx_http_matrix_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_matrix_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child);


static ngx_conf_post_handler_pt  ngx_http_matrix_key_validity_p =
    ngx_http_matrix_key_validity;
static ngx_conf_post_handler_pt  ngx_http_matrix_schema_name_p =
    ngx_http_matrix_schema_name;


static ngx_command_t  ngx_http_matrix_commands[] = {

    { ngx_string("matrix"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_matrix,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("matrix_server_name"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_CONF_TAKE1,
      ngx_http_matrix_server_name,
      NGX_HTTP_SRV_CONF_OFFSET,
      offsetof(ngx_http_matrix_srv_conf_t, server_name),
      NULL },

    { ngx_string("matrix_signing_key"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_CONF_TAKE1,
      ngx_http_matrix_signing_key,
      NGX_HTTP_SRV_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("matrix_old_verify_key"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_CONF_TAKE3,
      ngx_http_matrix_old_verify_key,
      NGX_HTTP_SRV_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("matrix_key_validity"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_sec_slot,
      NGX_HTTP_SRV_CONF_OFFSET,
      offsetof(ngx_http_matrix_srv_conf_t, key_validity),
      &ngx_http_matrix_key_validity_p },

    { ngx_string("matrix_well_known_server"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_CONF_TAKE1,
      ngx_http_matrix_well_known_server,
      NGX_HTTP_SRV_CONF_OFFSET,
      offsetof(ngx_http_matrix_srv_conf_t, well_known_server),
      NULL },

    { ngx_string("matrix_well_known_client"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_CONF_TAKE1,
      ngx_http_matrix_well_known_client,
      NGX_HTTP_SRV_CONF_OFFSET,
      offsetof(ngx_http_matrix_srv_conf_t, well_known_client),
      NULL },

    { ngx_string("matrix_room_version"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_CONF_TAKE1,
      ngx_http_matrix_room_version,
      NGX_HTTP_SRV_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("matrix_room_history"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_SRV_CONF_OFFSET,
      offsetof(ngx_http_matrix_srv_conf_t, room_history),
      NULL },

    { ngx_string("matrix_postgres"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_1MORE,
      ngx_http_matrix_pg_directive,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("matrix_schema"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_matrix_main_conf_t, schema),
      &ngx_http_matrix_schema_name_p },

    { ngx_string("matrix_silo_schema"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_matrix_main_conf_t, silo_schema),
      &ngx_http_matrix_schema_name_p },

    { ngx_string("matrix_migrate"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_matrix_main_conf_t, migrate),
      NULL },

    { ngx_string("matrix_federation_resolver"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_1MORE,
      ngx_http_matrix_http_resolver,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("matrix_federation_trusted_certificate"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_matrix_http_trusted_certificate,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("matrix_federation_allow_ip"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_matrix_http_allow_ip,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("matrix_federation_trusted_key_server"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_2MORE,
      ngx_http_matrix_key_notaries_directive,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("matrix_federation_cache"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_matrix_fed_cache_directive,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("matrix_silo_api"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE12,
      ngx_http_matrix_silo_api,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("matrix_silo_supports"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_1MORE,
      ngx_http_matrix_silo_supports_directive,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_matrix_module_ctx = {
    NULL,                                  /* preconfiguration */
    ngx_http_matrix_postconfiguration,     /* postconfiguration */

    ngx_http_matrix_create_main_conf,      /* create main configuration */
    ngx_http_matrix_init_main_conf,        /* init main configuration */

    ngx_http_matrix_create_srv_conf,       /* create server configuration */
    ngx_http_matrix_merge_srv_conf,        /* merge server configuration */

    ngx_http_matrix_create_loc_conf,       /* create location configuration */
    ngx_http_matrix_merge_loc_conf         /* merge location configuration */
};


ngx_module_t  ngx_http_matrix_module = {
    NGX_MODULE_V1,
    &ngx_http_matrix_module_ctx,           /* module context */
    ngx_http_matrix_commands,              /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    ngx_http_matrix_init_module,           /* init module */
    ngx_http_matrix_init_process,          /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    ngx_http_matrix_exit_process,          /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


static ngx_int_t
ngx_http_matrix_handler(ngx_http_request_t *r)
{
    ngx_int_t  rc;

    if (!(r->method & (NGX_HTTP_POST|NGX_HTTP_PUT))) {
        rc = ngx_http_discard_request_body(r);

        if (rc != NGX_OK) {
            return rc;
        }

        return ngx_http_matrix_route_request(r);
    }

    /* JSON bodies are read whole, in memory, before routing */

    r->request_body_in_single_buf = 1;

    rc = ngx_http_read_client_request_body(r, ngx_http_matrix_body_read);

    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return rc;
    }

    return NGX_DONE;
}


static void
ngx_http_matrix_body_read(ngx_http_request_t *r)
{
    ngx_http_finalize_request(r, ngx_http_matrix_route_request(r));
}


json_t *
ngx_http_matrix_request_json(ngx_http_request_t *r, ngx_int_t *rc)
{
    json_t                 *v;
    size_t                  len;
    mx_err_t                err;
    ngx_buf_t              *b;
    ngx_uint_t              n;
    ngx_chain_t            *cl;
    ngx_http_matrix_ctx_t  *ctx;

    ctx = ngx_http_matrix_get_ctx(r);
    if (ctx == NULL) {
        *rc = NGX_HTTP_INTERNAL_SERVER_ERROR;
        return NULL;
    }

    if (ctx->body) {
        return ctx->body;
    }

    if (r->request_body == NULL || r->request_body->bufs == NULL) {
        *rc = ngx_http_matrix_send_error(r, NGX_HTTP_BAD_REQUEST,
                                         "M_NOT_JSON",
                                         "A JSON body is required");
        return NULL;
    }

    if (r->request_body->temp_file) {
        /* larger than client_body_buffer_size: not read from a file here */
        *rc = ngx_http_matrix_send_error(r, NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                                         "M_TOO_LARGE",
                                         "The body is larger than "
                                         "client_body_buffer_size");
        return NULL;
    }

    /*
     * The body may come in several buffers (what was read with the
     * headers, the rest, an empty last one): one is needed to parse.
     */

    b = NULL;
    len = 0;
    n = 0;

    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        if (cl->buf->last > cl->buf->pos) {
            b = cl->buf;
            len += cl->buf->last - cl->buf->pos;
            n++;
        }
    }

    if (n > 1) {
        b = ngx_create_temp_buf(r->pool, len);
        if (b == NULL) {
            *rc = NGX_HTTP_INTERNAL_SERVER_ERROR;
            return NULL;
        }

        for (cl = r->request_body->bufs; cl; cl = cl->next) {
            b->last = ngx_cpymem(b->last, cl->buf->pos,
                                 cl->buf->last - cl->buf->pos);
        }
    }

    if (b == NULL) {
        *rc = ngx_http_matrix_send_error(r, NGX_HTTP_BAD_REQUEST,
                                         "M_NOT_JSON",
                                         "A JSON body is required");
        return NULL;
    }

    v = mx_json_parse((char *) b->pos, b->last - b->pos, 0, &err);
    if (v == NULL) {
        *rc = ngx_http_matrix_send_error(r, NGX_HTTP_BAD_REQUEST,
                                         "M_NOT_JSON",
                                         "The body is not JSON: %s", err.msg);
        return NULL;
    }

    if (!json_is_object(v)) {
        json_decref(v);
        *rc = ngx_http_matrix_send_error(r, NGX_HTTP_BAD_REQUEST,
                                         "M_BAD_JSON",
                                         "The body is not a JSON object");
        return NULL;
    }

    if (ngx_http_matrix_keep_json(r->pool, v) != NGX_OK) {
        *rc = NGX_HTTP_INTERNAL_SERVER_ERROR;
        return NULL;
    }

    ctx->body = v;

    return v;
}


ngx_int_t
ngx_http_matrix_query_arg(ngx_http_request_t *r, const char *name,
    ngx_str_t *value)
{
    u_char     *dst, *src;
    ngx_str_t   v;

    if (ngx_http_arg(r, (u_char *) name, ngx_strlen(name), &v) != NGX_OK) {
        return NGX_DECLINED;
    }

    dst = ngx_pnalloc(r->pool, v.len);
    if (dst == NULL) {
        return NGX_ERROR;
    }

    src = v.data;
    value->data = dst;
    ngx_unescape_uri(&dst, &src, v.len, NGX_UNESCAPE_URI);
    value->len = dst - value->data;

    return NGX_OK;
}


ngx_int_t
ngx_http_matrix_keep_json(ngx_pool_t *pool, json_t *v)
{
    ngx_pool_cleanup_t  *cln;

    cln = ngx_pool_cleanup_add(pool, 0);
    if (cln == NULL) {
        json_decref(v);
        return NGX_ERROR;
    }

    cln->handler = ngx_http_matrix_json_release;
    cln->data = v;

    return NGX_OK;
}


static void
ngx_http_matrix_json_release(void *data)
{
    json_decref(data);
}


static char *
ngx_http_matrix(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_matrix_loc_conf_t *mlcf = conf;

    ngx_http_core_loc_conf_t     *clcf;
    ngx_http_matrix_main_conf_t  *mmcf;

    if (mlcf->enable != NGX_CONF_UNSET) {
        return "is duplicate";
    }

    /* other servers' keys will be checked here: the shared caches */
    mmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_matrix_module);
    mmcf->federation = 1;

    mlcf->enable = 1;
    mlcf->file = cf->conf_file->file.name.data;
    mlcf->line = cf->conf_file->line;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    clcf->handler = ngx_http_matrix_handler;

    return NGX_CONF_OK;
}


static char *
ngx_http_matrix_server_name(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_str_t  *value;
    char       *rv;

    rv = ngx_conf_set_str_slot(cf, cmd, conf);
    if (rv != NGX_CONF_OK) {
        return rv;
    }

    value = cf->args->elts;

    return ngx_http_matrix_conf_server_name(cf, cmd, &value[1]);
}


/* a directive's server name, checked; the error names the directive */

char *
ngx_http_matrix_conf_server_name(ngx_conf_t *cf, ngx_command_t *cmd,
    ngx_str_t *name)
{
    const char  *why;

    if (mx_server_name_valid((char *) name->data, name->len, &why) != MX_OK) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "%V: invalid server name \"%V\": %s",
                           &cmd->name, name, why);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_matrix_well_known_server(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    const char  *why;
    ngx_str_t   *value;
    char        *rv;

    rv = ngx_conf_set_str_slot(cf, cmd, conf);
    if (rv != NGX_CONF_OK) {
        return rv;
    }

    value = cf->args->elts;

    if (mx_server_name_valid((char *) value[1].data, value[1].len, &why)
        != MX_OK)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "%V: invalid delegated server \"%V\", expected "
                           "\"hostname[:port]\": %s",
                           &cmd->name, &value[1], why);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_matrix_well_known_client(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_str_t  *value;
    char       *rv;

    rv = ngx_conf_set_str_slot(cf, cmd, conf);
    if (rv != NGX_CONF_OK) {
        return rv;
    }

    value = cf->args->elts;

    /* value[1] is NUL-terminated, ngx_strncmp() stops there */

    if (ngx_strncmp(value[1].data, "https://", 8) != 0
        && ngx_strncmp(value[1].data, "http://", 7) != 0)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "%V: invalid base URL \"%V\", expected "
                           "\"https://host[:port][/path]\"",
                           &cmd->name, &value[1]);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/*
 * matrix_silo_api URL [token_file=FILE]: where the silo's internal API
 * is; the token, sent as a bearer token, is read now so that a missing
 * file fails "nginx -t".
 */

static char *
ngx_http_matrix_silo_api(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_matrix_main_conf_t *mmcf = conf;

    u_char     *p, *last;
    ssize_t     n;
    ngx_str_t  *value, file;
    ngx_url_t  *u;
    ngx_file_t  f;
    u_char      buf[1024];

    if (mmcf->silo_api) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (ngx_strncmp(value[1].data, "http://", 7) != 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "%V: invalid URL \"%V\", expected "
                           "\"http://host[:port][/path/]\"",
                           &cmd->name, &value[1]);
        return NGX_CONF_ERROR;
    }

    u = ngx_pcalloc(cf->pool, sizeof(ngx_url_t));
    if (u == NULL) {
        return NGX_CONF_ERROR;
    }

    u->url.data = value[1].data + 7;
    u->url.len = value[1].len - 7;
    u->default_port = 80;
    u->uri_part = 1;

    if (ngx_parse_url(cf->pool, u) != NGX_OK) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "%V: invalid URL \"%V\"%s%s",
                           &cmd->name, &value[1], u->err ? ": " : "",
                           u->err ? u->err : "");
        return NGX_CONF_ERROR;
    }

    mmcf->silo_api = u;

    if (cf->args->nelts == 2) {
        return NGX_CONF_OK;
    }

    if (ngx_strncmp(value[2].data, "token_file=", 11) != 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "%V: invalid parameter \"%V\"", &cmd->name,
                           &value[2]);
        return NGX_CONF_ERROR;
    }

    file.data = value[2].data + 11;
    file.len = value[2].len - 11;

    if (ngx_conf_full_name(cf->cycle, &file, 1) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    ngx_memzero(&f, sizeof(ngx_file_t));
    f.name = file;
    f.log = cf->log;

    f.fd = ngx_open_file(file.data, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);
    if (f.fd == NGX_INVALID_FILE) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           "%V: cannot open token file \"%V\"",
                           &cmd->name, &file);
        return NGX_CONF_ERROR;
    }

    n = ngx_read_file(&f, buf, sizeof(buf), 0);
    ngx_close_file(f.fd);

    if (n == NGX_ERROR) {
        return NGX_CONF_ERROR;
    }

    p = buf;
    last = buf + n;

    while (last > p && (last[-1] == '\n' || last[-1] == '\r'
                        || last[-1] == ' '))
    {
        last--;
    }

    if (last == p || (size_t) n == sizeof(buf)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "%V: token file \"%V\" is empty or too long",
                           &cmd->name, &file);
        return NGX_CONF_ERROR;
    }

    mmcf->silo_api_token.len = last - p;
    mmcf->silo_api_token.data = ngx_pstrdup(cf->pool,
                                            &(ngx_str_t) { last - p, p });
    if (mmcf->silo_api_token.data == NULL) {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/*
 * matrix_silo_supports reactions | typing | receipts ...: the optional
 * writes the silo's internal API has (docs/silo-contract.md); without
 * one, the module falls back (reactions) or drops what it would write.
 */

static char *
ngx_http_matrix_silo_supports_directive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_matrix_main_conf_t *mmcf = conf;

    ngx_str_t   *value;
    ngx_uint_t   i, j;

    static struct {
        ngx_str_t    name;
        ngx_uint_t   flag;
    } writes[] = {
        { ngx_string("reactions"), NGX_HTTP_MATRIX_SILO_REACTIONS },
        { ngx_string("typing"), NGX_HTTP_MATRIX_SILO_TYPING },
        { ngx_string("receipts"), NGX_HTTP_MATRIX_SILO_RECEIPTS }
    };

    if (mmcf->silo_supports_set) {
        return "is duplicate";
    }

    mmcf->silo_supports_set = 1;
    value = cf->args->elts;

    for (i = 1; i < cf->args->nelts; i++) {
        for (j = 0; j < sizeof(writes) / sizeof(writes[0]); j++) {
            if (value[i].len == writes[j].name.len
                && ngx_strncmp(value[i].data, writes[j].name.data,
                               value[i].len) == 0)
            {
                break;
            }
        }

        if (j == sizeof(writes) / sizeof(writes[0])) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "%V: unknown write \"%V\", expected "
                               "\"reactions\", \"typing\" or \"receipts\"",
                               &cmd->name, &value[i]);
            return NGX_CONF_ERROR;
        }

        mmcf->silo_supports |= writes[j].flag;
    }

    return NGX_CONF_OK;
}


/* Postgres identifiers: at most 63 bytes, no NUL; quoting does the rest */

static char *
ngx_http_matrix_schema_name(ngx_conf_t *cf, void *post, void *data)
{
    ngx_str_t  *name = data;

    if (name->len == 0 || name->len > 63
        || ngx_strlchr(name->data, name->data + name->len, '\0'))
    {
        return "needs a schema name of 1 to 63 bytes";
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_matrix_room_version(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_matrix_srv_conf_t *mscf = conf;

    ngx_str_t                *value;
    const mx_room_version_t  *v;

    if (mscf->room_version != NGX_CONF_UNSET_PTR) {
        return "is duplicate";
    }

    value = cf->args->elts;

    v = mx_room_version_find((char *) value[1].data, value[1].len);

    /*
     * Room IDs of version 12 are the create event's hash: this server
     * names its rooms before it makes them, so it creates 6 to 11 (and
     * joins others' rooms of any supported version).
     */

    if (v == NULL || !v->supported || v->room_id_from_create) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "%s room version \"%V\" in \"%V\" (rooms this "
                           "server creates: 6 to 11)",
                           v ? "unsupported" : "unknown", &value[1],
                           &cmd->name);
        return NGX_CONF_ERROR;
    }

    mscf->room_version = v;

    return NGX_CONF_OK;
}


static char *
ngx_http_matrix_key_validity(ngx_conf_t *cf, void *post, void *data)
{
    time_t  *sp = data;

    /*
     * The document is re-signed at half its validity and the spec asks
     * servers not to hand out keys that expire within an hour: so 2h at
     * least.  A year at most keeps valid_until_ts a sane integer.
     */

    if (*sp < 2 * 3600) {
        return "must be at least 2h";
    }

    if (*sp > 365 * 24 * 3600) {
        return "must be at most 365d";
    }

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_matrix_init_module(ngx_cycle_t *cycle)
{
    if (sodium_init() < 0) {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, 0,
                      "matrix: libsodium cannot be initialised");
        return NGX_ERROR;
    }

    /*
     * jansson seeds its hash function on first use from /dev/urandom;
     * doing it here, in the master, keeps that out of the workers.
     */
    json_object_seed(0);

    return NGX_OK;
}


static ngx_int_t
ngx_http_matrix_init_process(ngx_cycle_t *cycle)
{
    ngx_http_matrix_main_conf_t  *mmcf;

    mmcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_matrix_module);

    if (mmcf == NULL) {
        return NGX_OK;
    }

    if (ngx_http_matrix_http_init_process(cycle) != NGX_OK) {
        return NGX_ERROR;
    }

    if (ngx_http_matrix_remote_keys_init_process(cycle) != NGX_OK) {
        return NGX_ERROR;
    }

    if (mmcf->pg == NULL) {
        return NGX_OK;
    }

    if (ngx_http_matrix_pg_init_process(cycle, mmcf->pg) != NGX_OK) {
        return NGX_ERROR;
    }

    if (ngx_http_matrix_feed_init_process(cycle) != NGX_OK
        || ngx_http_matrix_sender_init_process(cycle) != NGX_OK
        || ngx_http_matrix_ephemeral_init_process(cycle) != NGX_OK)
    {
        return NGX_ERROR;
    }

    return ngx_http_matrix_silo_api_init_process(cycle);
}


static void
ngx_http_matrix_exit_process(ngx_cycle_t *cycle)
{
    ngx_http_matrix_main_conf_t  *mmcf;

    mmcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_matrix_module);

    if (mmcf && mmcf->pg) {
        ngx_http_matrix_pg_exit_process(mmcf->pg);
    }

    if (mmcf) {
        ngx_http_matrix_remote_keys_exit_process(cycle);
        ngx_http_matrix_http_exit_process(cycle);
    }
}


static ngx_int_t
ngx_http_matrix_postconfiguration(ngx_conf_t *cf)
{
    ngx_http_matrix_main_conf_t  *mmcf;

    mmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_matrix_module);

    if (ngx_http_matrix_routes_init(cf, mmcf) != NGX_OK) {
        return NGX_ERROR;
    }

    if (ngx_http_matrix_key_notaries_init(cf) != NGX_OK) {
        return NGX_ERROR;
    }

    return ngx_http_matrix_reply_init(cf);
}


static void *
ngx_http_matrix_create_main_conf(ngx_conf_t *cf)
{
    ngx_http_matrix_main_conf_t  *mmcf;

    mmcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_matrix_main_conf_t));
    if (mmcf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     mmcf->routes = NULL;
     *     mmcf->pg = NULL;
     *     mmcf->schema = { 0, NULL };
     *     mmcf->silo_schema = { 0, NULL };
     *     mmcf->silo_api = NULL;
     *     mmcf->silo_api_token = { 0, NULL };
     *     mmcf->silo_supports = 0;
     *     mmcf->fed_zone = NULL;
     *     mmcf->federation = 0;
     */

    mmcf->migrate = NGX_CONF_UNSET;
    mmcf->fed_cache_size = NGX_CONF_UNSET;

    return mmcf;
}


static char *
ngx_http_matrix_init_main_conf(ngx_conf_t *cf, void *conf)
{
    ngx_http_matrix_main_conf_t *mmcf = conf;

    if (mmcf->schema.data == NULL) {
        ngx_str_set(&mmcf->schema, "matrix");
    }

    if (mmcf->silo_schema.data == NULL) {
        ngx_str_set(&mmcf->silo_schema, "matrix_silo");
    }

    ngx_conf_init_value(mmcf->migrate, 1);

    if (ngx_http_matrix_http_init_conf(cf) != NGX_CONF_OK) {
        return NGX_CONF_ERROR;
    }

    if (ngx_http_matrix_fed_cache_init_conf(cf, mmcf) != NGX_CONF_OK) {
        return NGX_CONF_ERROR;
    }

    if (mmcf->pg == NULL) {
        return NGX_CONF_OK;
    }

    return ngx_http_matrix_pg_init_conf(cf, mmcf->pg, &mmcf->schema,
                                        &mmcf->silo_schema, mmcf->migrate);
}


static void *
ngx_http_matrix_create_srv_conf(ngx_conf_t *cf)
{
    ngx_http_matrix_srv_conf_t  *mscf;

    mscf = ngx_pcalloc(cf->pool, sizeof(ngx_http_matrix_srv_conf_t));
    if (mscf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     mscf->server_name = { 0, NULL };
     *     mscf->signing_key_file = { 0, NULL };
     *     mscf->well_known_server = { 0, NULL };
     *     mscf->well_known_client = { 0, NULL };
     *     mscf->key_doc = NULL;
     */

    mscf->signing_keys = NGX_CONF_UNSET_PTR;
    mscf->old_keys = NGX_CONF_UNSET_PTR;
    mscf->key_validity = NGX_CONF_UNSET;
    mscf->room_version = NGX_CONF_UNSET_PTR;
    mscf->room_history = NGX_CONF_UNSET;

    return mscf;
}


static char *
ngx_http_matrix_merge_srv_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_http_matrix_srv_conf_t *prev = parent;
    ngx_http_matrix_srv_conf_t *conf = child;

    ngx_conf_merge_str_value(conf->server_name, prev->server_name, "");
    ngx_conf_merge_str_value(conf->well_known_server,
                             prev->well_known_server, "");
    ngx_conf_merge_str_value(conf->well_known_client,
                             prev->well_known_client, "");

    ngx_conf_merge_sec_value(conf->key_validity, prev->key_validity,
                             7 * 24 * 60 * 60);

    ngx_conf_merge_ptr_value(conf->room_version, prev->room_version,
                             mx_room_version_find("10", 2));
    ngx_conf_merge_value(conf->room_history, prev->room_history, 1000);

    return ngx_http_matrix_keys_merge(cf, prev, conf);
}


static void *
ngx_http_matrix_create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_matrix_loc_conf_t  *mlcf;

    mlcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_matrix_loc_conf_t));
    if (mlcf == NULL) {
        return NULL;
    }

    mlcf->enable = NGX_CONF_UNSET;

    return mlcf;
}


/*
 * Runs with the server's merged configuration at hand (cf->ctx is the
 * server's), so that a "matrix" location can be refused here when the
 * server it serves has no name or no key.
 */

static char *
ngx_http_matrix_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_http_matrix_loc_conf_t *prev = parent;
    ngx_http_matrix_loc_conf_t *conf = child;

    ngx_http_matrix_srv_conf_t  *mscf;

    /*
     * Inherited by the implicit locations of "limit_except" and "if", so
     * that nginx's own errors there are Matrix errors too.
     */
    if (conf->enable == NGX_CONF_UNSET) {
        conf->enable = (prev->enable == NGX_CONF_UNSET) ? 0 : prev->enable;
        conf->file = prev->file;
        conf->line = prev->line;
    }

    if (!conf->enable) {
        return NGX_CONF_OK;
    }

    mscf = ngx_http_conf_get_module_srv_conf(cf, ngx_http_matrix_module);

    if (mscf->server_name.len == 0) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "\"matrix\" in %s:%ui needs \"matrix_server_name\" "
                      "in its server or http block",
                      conf->file, conf->line);
        return NGX_CONF_ERROR;
    }

    if (mscf->signing_keys == NULL) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "\"matrix\" in %s:%ui needs \"matrix_signing_key\" "
                      "in its server or http block",
                      conf->file, conf->line);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}
