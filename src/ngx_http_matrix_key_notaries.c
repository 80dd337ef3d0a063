/*
 * Trusted notaries: another server's keys asked of third parties, for
 * when the server cannot be reached or will not say.  Each notary is
 * trusted only as far as its configured keys go: a relayed document
 * must carry its signature by one of them, as well as the server's own
 * by every key it publishes.  Notaries are asked one after another, in
 * the order of the configuration, until one gives what the caller needs:
 * one answer believed is enough, and asking fewer notaries tells fewer
 * third parties whom this server talks to.
 */


#include "ngx_http_matrix_module.h"
#include "ngx_http_matrix_key_notaries.h"
#include "ngx_http_matrix_http.h"
#include "ngx_http_matrix_destination.h"

#include <mx_key_doc.h>


#define NGX_HTTP_MATRIX_NOTARY_MAX_KEYS      8
#define NGX_HTTP_MATRIX_NOTARY_RESPONSE_MAX  (256 * 1024)


typedef struct {
    char                            key_id[MX_KEY_ID_LEN + 1];
    u_char                          public_key[MX_ED25519_PK_LEN];
} ngx_http_matrix_notary_key_t;


typedef struct {
    ngx_str_t                       name;          /* NUL-terminated */
    ngx_http_matrix_notary_key_t    keys[NGX_HTTP_MATRIX_NOTARY_MAX_KEYS];
    ngx_uint_t                      nkeys;
} ngx_http_matrix_trusted_notary_t;


struct ngx_http_matrix_key_notaries_conf_s {
    ngx_array_t                     notaries;      /* in the order asked */
    ngx_str_t                       names;         /* "{a,b}" for SQL */

    /* the requests are X-Matrix signed as the first Matrix server
       configured with a key; unsigned without one (key queries need no
       authentication) */
    ngx_str_t                       origin;
    const mx_signing_key_t         *sign_key;
};


static ngx_int_t ngx_http_matrix_key_notaries_key(ngx_conf_t *cf,
    ngx_command_t *cmd, ngx_http_matrix_trusted_notary_t *tn,
    ngx_str_t *value);
static ngx_http_matrix_key_notaries_conf_t *ngx_http_matrix_key_notaries_get(
    ngx_cycle_t *cycle);
static void ngx_http_matrix_key_notaries_next(
    ngx_http_matrix_notary_ask_t *na);
static ngx_http_matrix_trusted_notary_t *ngx_http_matrix_key_notaries_current(
    ngx_http_matrix_notary_ask_t *na);
static void ngx_http_matrix_key_notaries_resolved(ngx_http_matrix_dest_t *d);
static ngx_int_t ngx_http_matrix_key_notaries_body(
    ngx_http_matrix_notary_ask_t *na, ngx_str_t *body);
static void ngx_http_matrix_key_notaries_answered(
    ngx_http_matrix_http_req_t *hr);
static ngx_int_t ngx_http_matrix_key_notaries_check(
    ngx_http_matrix_notary_ask_t *na, ngx_http_matrix_trusted_notary_t *tn,
    json_t *doc, u_char *why);
static ngx_int_t ngx_http_matrix_key_notaries_own(
    ngx_http_matrix_notary_ask_t *na, json_t *doc);
static void ngx_http_matrix_key_notaries_failed(
    ngx_http_matrix_notary_ask_t *na, const char *why);
static void ngx_http_matrix_key_notaries_finish(
    ngx_http_matrix_notary_ask_t *na, ngx_int_t status);
static void ngx_http_matrix_key_notaries_reply_handler(ngx_event_t *ev);
static void ngx_http_matrix_key_notaries_cleanup(void *data);


/*
 * matrix_federation_trusted_key_server NAME ed25519:ID=BASE64 ...;
 * like Synapse's trusted_key_servers, but a notary without a key to
 * check its answers by is not accepted: it would be believed blindly.
 */

char *
ngx_http_matrix_key_notaries_directive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_matrix_main_conf_t *mmcf = conf;

    ngx_str_t                             *value;
    ngx_uint_t                             i;
    ngx_http_matrix_trusted_notary_t      *tn;
    ngx_http_matrix_key_notaries_conf_t   *nc;

    value = cf->args->elts;

    if (ngx_http_matrix_conf_server_name(cf, cmd, &value[1]) != NGX_CONF_OK) {
        return NGX_CONF_ERROR;
    }

    nc = mmcf->key_notaries;

    if (nc == NULL) {
        nc = ngx_pcalloc(cf->pool,
                         sizeof(ngx_http_matrix_key_notaries_conf_t));
        if (nc == NULL) {
            return NGX_CONF_ERROR;
        }

        if (ngx_array_init(&nc->notaries, cf->pool, 2,
                           sizeof(ngx_http_matrix_trusted_notary_t))
            != NGX_OK)
        {
            return NGX_CONF_ERROR;
        }

        mmcf->key_notaries = nc;
    }

    tn = nc->notaries.elts;

    for (i = 0; i < nc->notaries.nelts; i++) {
        if (tn[i].name.len == value[1].len
            && ngx_strncmp(tn[i].name.data, value[1].data, value[1].len) == 0)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "%V: \"%V\" is duplicate",
                               &cmd->name, &value[1]);
            return NGX_CONF_ERROR;
        }
    }

    if (cf->args->nelts - 2 > NGX_HTTP_MATRIX_NOTARY_MAX_KEYS) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "%V: more than %d keys for \"%V\"",
                           &cmd->name, NGX_HTTP_MATRIX_NOTARY_MAX_KEYS,
                           &value[1]);
        return NGX_CONF_ERROR;
    }

    tn = ngx_array_push(&nc->notaries);
    if (tn == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_memzero(tn, sizeof(ngx_http_matrix_trusted_notary_t));

    tn->name.data = ngx_pnalloc(cf->pool, value[1].len + 1);
    if (tn->name.data == NULL) {
        return NGX_CONF_ERROR;
    }

    *ngx_cpymem(tn->name.data, value[1].data, value[1].len) = '\0';
    tn->name.len = value[1].len;

    for (i = 2; i < cf->args->nelts; i++) {
        if (ngx_http_matrix_key_notaries_key(cf, cmd, tn, &value[i])
            != NGX_OK)
        {
            return NGX_CONF_ERROR;
        }
    }

    return NGX_CONF_OK;
}


/* "ed25519:VERSION=KEY", KEY 32 bytes of unpadded base64 */

static ngx_int_t
ngx_http_matrix_key_notaries_key(ngx_conf_t *cf, ngx_command_t *cmd,
    ngx_http_matrix_trusted_notary_t *tn, ngx_str_t *value)
{
    u_char                        *eq, *p;
    size_t                         n;
    ngx_str_t                      id, b64;
    ngx_uint_t                     i;
    ngx_http_matrix_notary_key_t  *k;
    u_char                         buf[64];

    eq = ngx_strlchr(value->data, value->data + value->len, '=');

    if (eq == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "%V: invalid key \"%V\" for \"%V\", expected "
                           "\"ed25519:VERSION=BASE64KEY\"",
                           &cmd->name, value, &tn->name);
        return NGX_ERROR;
    }

    id.data = value->data;
    id.len = eq - value->data;
    b64.data = eq + 1;
    b64.len = value->data + value->len - b64.data;

    if (id.len <= 8 || id.len > MX_KEY_ID_LEN
        || ngx_strncmp(id.data, "ed25519:", 8) != 0)
    {
        goto bad_id;
    }

    for (p = id.data + 8; p < id.data + id.len; p++) {
        if (!(isalnum(*p) || *p == '_')) {
            goto bad_id;
        }
    }

    /* 44 characters decode to 33 bytes at most: buf holds them */

    if (b64.len > 44
        || ngx_strlchr(b64.data, b64.data + b64.len, '=') != NULL
        || mx_base64_decode(buf, &n, (char *) b64.data, b64.len) != MX_OK
        || n != MX_ED25519_PK_LEN)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "%V: invalid key \"%V\" for \"%V\": not 32 bytes "
                           "of unpadded base64",
                           &cmd->name, &b64, &tn->name);
        return NGX_ERROR;
    }

    for (i = 0; i < tn->nkeys; i++) {
        if (ngx_strlen(tn->keys[i].key_id) == id.len
            && ngx_strncmp(tn->keys[i].key_id, id.data, id.len) == 0)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "%V: key ID \"%V\" of \"%V\" is duplicate",
                               &cmd->name, &id, &tn->name);
            return NGX_ERROR;
        }
    }

    k = &tn->keys[tn->nkeys++];

    *ngx_cpymem(k->key_id, id.data, id.len) = '\0';
    ngx_memcpy(k->public_key, buf, MX_ED25519_PK_LEN);

    return NGX_OK;

bad_id:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "%V: invalid key ID \"%V\" for \"%V\", expected "
                       "\"ed25519:VERSION\" (VERSION of [a-zA-Z0-9_])",
                       &cmd->name, &id, &tn->name);
    return NGX_ERROR;
}


/*
 * After the servers are merged: the names for the database and whom to
 * sign the requests as.
 */

ngx_int_t
ngx_http_matrix_key_notaries_init(ngx_conf_t *cf)
{
    u_char                               *p;
    size_t                                len;
    ngx_uint_t                            i;
    ngx_http_core_srv_conf_t            **cscfp;
    ngx_http_matrix_srv_conf_t           *mscf;
    ngx_http_core_main_conf_t            *cmcf;
    ngx_http_matrix_main_conf_t          *mmcf;
    ngx_http_matrix_trusted_notary_t     *tn;
    ngx_http_matrix_key_notaries_conf_t  *nc;

    mmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_matrix_module);
    nc = mmcf->key_notaries;

    if (nc == NULL) {
        return NGX_OK;
    }

    tn = nc->notaries.elts;
    len = sizeof("{}");

    for (i = 0; i < nc->notaries.nelts; i++) {
        len += tn[i].name.len + 1;
    }

    /* server names hold none of the characters an array literal quotes */

    p = ngx_pnalloc(cf->pool, len);
    if (p == NULL) {
        return NGX_ERROR;
    }

    nc->names.data = p;
    *p++ = '{';

    for (i = 0; i < nc->notaries.nelts; i++) {
        if (i) {
            *p++ = ',';
        }

        p = ngx_cpymem(p, tn[i].name.data, tn[i].name.len);
    }

    *p++ = '}';
    nc->names.len = p - nc->names.data;

    cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);
    cscfp = cmcf->servers.elts;

    for (i = 0; i < cmcf->servers.nelts; i++) {
        mscf = cscfp[i]->ctx->srv_conf[ngx_http_matrix_module.ctx_index];

        if (mscf->server_name.len
            && mscf->signing_keys != NULL
            && mscf->signing_keys != NGX_CONF_UNSET_PTR
            && mscf->signing_keys->nelts)
        {
            nc->origin = mscf->server_name;
            nc->sign_key = mscf->signing_keys->elts;
            break;
        }
    }

    return NGX_OK;
}


static ngx_http_matrix_key_notaries_conf_t *
ngx_http_matrix_key_notaries_get(ngx_cycle_t *cycle)
{
    ngx_http_matrix_main_conf_t  *mmcf;

    mmcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_matrix_module);

    return mmcf ? mmcf->key_notaries : NULL;
}


ngx_str_t *
ngx_http_matrix_key_notaries_names(ngx_cycle_t *cycle)
{
    ngx_http_matrix_key_notaries_conf_t  *nc;

    static ngx_str_t  none = ngx_string("{}");

    nc = ngx_http_matrix_key_notaries_get(cycle);

    return nc ? &nc->names : &none;
}


ngx_http_matrix_notary_ask_t *
ngx_http_matrix_key_notaries_create(ngx_pool_t *pool, ngx_log_t *log)
{
    ngx_pool_cleanup_t            *cln;
    ngx_http_matrix_notary_ask_t  *na;

    na = ngx_pcalloc(pool, sizeof(ngx_http_matrix_notary_ask_t));
    if (na == NULL) {
        return NULL;
    }

    cln = ngx_pool_cleanup_add(pool, 0);
    if (cln == NULL) {
        return NULL;
    }

    cln->handler = ngx_http_matrix_key_notaries_cleanup;
    cln->data = na;

    na->pool = pool;
    na->log = log;
    na->reply.handler = ngx_http_matrix_key_notaries_reply_handler;
    na->reply.data = na;
    na->reply.log = log;

    return na;
}


ngx_int_t
ngx_http_matrix_key_notaries_ask(ngx_http_matrix_notary_ask_t *na)
{
    ngx_http_matrix_key_notaries_conf_t  *nc;

    nc = ngx_http_matrix_key_notaries_get((ngx_cycle_t *) ngx_cycle);

    if (nc == NULL || nc->notaries.nelts == 0 || na->running
        || na->server_name.len == 0 || na->server_name.len > 255)
    {
        return NGX_DECLINED;
    }

    na->running = 1;
    na->next = 0;
    na->last[0] = '\0';
    na->status = NGX_ERROR;
    na->error.len = 0;
    na->believed = 0;

    ngx_http_matrix_key_notaries_next(na);

    return NGX_OK;
}


static void
ngx_http_matrix_key_notaries_next(ngx_http_matrix_notary_ask_t *na)
{
    ngx_http_matrix_dest_t               *d;
    ngx_http_matrix_trusted_notary_t     *tn;
    ngx_http_matrix_key_notaries_conf_t  *nc;

    nc = ngx_http_matrix_key_notaries_get((ngx_cycle_t *) ngx_cycle);

    if (na->next == nc->notaries.nelts) {
        ngx_http_matrix_key_notaries_finish(na, NGX_ERROR);
        return;
    }

    tn = nc->notaries.elts;
    tn = &tn[na->next++];

    d = ngx_http_matrix_dest_create((ngx_cycle_t *) ngx_cycle, na->pool,
                                    na->log);
    if (d == NULL) {
        ngx_http_matrix_key_notaries_failed(na, "out of memory");
        return;
    }

    d->server_name = tn->name;
    d->handler = ngx_http_matrix_key_notaries_resolved;
    d->data = na;

    if (ngx_http_matrix_dest_resolve(d) != NGX_OK) {
        ngx_http_matrix_key_notaries_failed(na, "cannot look the notary up");
    }
}


static ngx_http_matrix_trusted_notary_t *
ngx_http_matrix_key_notaries_current(ngx_http_matrix_notary_ask_t *na)
{
    ngx_http_matrix_trusted_notary_t     *tn;
    ngx_http_matrix_key_notaries_conf_t  *nc;

    nc = ngx_http_matrix_key_notaries_get((ngx_cycle_t *) ngx_cycle);
    tn = nc->notaries.elts;

    return &tn[na->next - 1];
}


static void
ngx_http_matrix_key_notaries_resolved(ngx_http_matrix_dest_t *d)
{
    ngx_http_matrix_http_req_t           *hr;
    ngx_http_matrix_notary_ask_t         *na;
    ngx_http_matrix_trusted_notary_t     *tn;
    ngx_http_matrix_key_notaries_conf_t  *nc;
    u_char                                buf[200];

    na = d->data;

    if (d->status != NGX_OK) {
        *ngx_snprintf(buf, sizeof(buf) - 1, "%V", &d->error) = '\0';
        ngx_http_matrix_key_notaries_failed(na, (char *) buf);
        return;
    }

    nc = ngx_http_matrix_key_notaries_get((ngx_cycle_t *) ngx_cycle);
    tn = ngx_http_matrix_key_notaries_current(na);

    hr = ngx_http_matrix_http_create((ngx_cycle_t *) ngx_cycle, na->pool,
                                     d->log);
    if (hr == NULL
        || ngx_http_matrix_key_notaries_body(na, &hr->body) != NGX_OK)
    {
        ngx_http_matrix_key_notaries_failed(na, "out of memory");
        return;
    }

    ngx_http_matrix_dest_target(d, hr);
    ngx_str_set(&hr->method, "POST");
    ngx_str_set(&hr->uri, "/_matrix/key/v2/query");
    hr->max_response = NGX_HTTP_MATRIX_NOTARY_RESPONSE_MAX;
    hr->handler = ngx_http_matrix_key_notaries_answered;
    hr->data = na;

    if (nc->sign_key) {
        hr->sign_key = nc->sign_key;
        hr->origin = nc->origin;
        hr->destination = tn->name;
    }

    if (ngx_http_matrix_http_send(hr) != NGX_OK) {
        ngx_http_matrix_key_notaries_failed(na, "cannot send the request");
    }
}


/*
 * {"server_keys": {NAME: {}}}: every key; with a key ID, that key valid
 * until the minimum asked at least.
 */

static ngx_int_t
ngx_http_matrix_key_notaries_body(ngx_http_matrix_notary_ask_t *na,
    ngx_str_t *body)
{
    json_t    *q;
    mx_buf_t   buf;
    mx_err_t   err;

    if (na->key_id.len) {
        q = json_pack("{s:{s%:{s%:{s:I}}}}", "server_keys",
                      na->server_name.data, na->server_name.len,
                      na->key_id.data, na->key_id.len,
                      "minimum_valid_until_ts", (json_int_t) na->min_valid_ts);

    } else {
        q = json_pack("{s:{s%:{}}}", "server_keys",
                      na->server_name.data, na->server_name.len);
    }

    if (q == NULL) {
        return NGX_ERROR;
    }

    mx_buf_init(&buf);

    if (mx_json_canonical(q, &buf, &err) != MX_OK) {
        json_decref(q);
        mx_buf_free(&buf);
        return NGX_ERROR;
    }

    json_decref(q);

    body->data = ngx_pnalloc(na->pool, buf.len);
    if (body->data == NULL) {
        mx_buf_free(&buf);
        return NGX_ERROR;
    }

    body->len = ngx_cpymem(body->data, buf.data, buf.len) - body->data;
    mx_buf_free(&buf);

    return NGX_OK;
}


/* every document of the answer is judged on its own */

static void
ngx_http_matrix_key_notaries_answered(ngx_http_matrix_http_req_t *hr)
{
    json_t                            *body, *docs, *doc;
    size_t                             i;
    mx_err_t                           err;
    ngx_http_matrix_notary_ask_t      *na;
    ngx_http_matrix_trusted_notary_t  *tn;
    u_char                             why[200];

    na = hr->data;
    tn = ngx_http_matrix_key_notaries_current(na);

    if (hr->status != 200) {
        if (hr->status) {
            *ngx_snprintf(why, sizeof(why) - 1, "it answered %ui",
                          hr->status) = '\0';
        } else {
            *ngx_snprintf(why, sizeof(why) - 1, "%V", &hr->error) = '\0';
        }

        ngx_http_matrix_key_notaries_failed(na, (char *) why);
        return;
    }

    body = mx_json_parse((char *) hr->response.data, hr->response.len, 0,
                         &err);
    if (body == NULL) {
        *ngx_snprintf(why, sizeof(why) - 1, "its answer is not JSON: %s",
                      err.msg) = '\0';
        ngx_http_matrix_key_notaries_failed(na, (char *) why);
        return;
    }

    docs = json_object_get(body, "server_keys");

    if (!json_is_array(docs)) {
        json_decref(body);
        ngx_http_matrix_key_notaries_failed(na, "its answer has no "
                                                "\"server_keys\" array");
        return;
    }

    ngx_cpystrn(why, (u_char *) "it had no document of the server",
                sizeof(why));

    json_array_foreach(docs, i, doc) {

        if (ngx_http_matrix_key_notaries_check(na, tn, doc, why) != NGX_OK) {
            continue;
        }

        if (ngx_http_matrix_key_notaries_own(na, doc) != NGX_OK) {
            ngx_cpystrn(why, (u_char *) "out of memory", sizeof(why));
            continue;
        }

        na->believed++;
        na->notary = tn->name;

        if (na->doc_handler(na) == NGX_OK) {
            json_decref(body);
            ngx_http_matrix_key_notaries_finish(na, NGX_OK);
            return;
        }

        ngx_cpystrn(why, (u_char *) "its documents lack the keys wanted",
                    sizeof(why));
    }

    json_decref(body);

    ngx_http_matrix_key_notaries_failed(na, (char *) why);
}


/*
 * The server's own document (mx_key_doc_check: the name asked about,
 * a timestamp, signed by each of its keys), vouched for by the notary.
 */

static ngx_int_t
ngx_http_matrix_key_notaries_check(ngx_http_matrix_notary_ask_t *na,
    ngx_http_matrix_trusted_notary_t *tn, json_t *doc, u_char *why)
{
    ngx_uint_t    i;
    mx_err_t      err;
    mx_key_doc_t  kd;
    u_char        name[256];
    char          key_id[MX_KEY_ID_LEN + 1];

    *ngx_cpymem(name, na->server_name.data, na->server_name.len) = '\0';

    if (mx_key_doc_check(doc, (char *) name, &kd, &err) != MX_OK) {
        *ngx_snprintf(why, 199, "a document was refused: %s",
                      err.msg) = '\0';
        return NGX_ERROR;
    }

    for (i = 0; i < tn->nkeys; i++) {
        if (mx_json_verify(doc, (char *) tn->name.data, tn->keys[i].key_id,
                           tn->keys[i].public_key, &err)
            == MX_OK)
        {
            break;
        }
    }

    if (i == tn->nkeys) {
        ngx_cpystrn(why, (u_char *) "a document was refused: not signed by "
                    "the notary with a key configured for it", 200);
        return NGX_ERROR;
    }

    if (kd.valid_until_ts < na->min_valid_ts) {
        *ngx_snprintf(why, 199, "a document was refused: valid until %L "
                      "only", kd.valid_until_ts) = '\0';
        return NGX_ERROR;
    }

    if (na->key_id.len && na->key_id.len <= MX_KEY_ID_LEN) {
        *ngx_cpymem(key_id, na->key_id.data, na->key_id.len) = '\0';

        if (mx_key_doc_find(&kd, key_id) == NULL) {
            *ngx_snprintf(why, 199, "a document was refused: no key %V",
                          &na->key_id) = '\0';
            return NGX_ERROR;
        }
    }

    na->valid_until_ts = kd.valid_until_ts;

    return NGX_OK;
}


/*
 * The document as the server signed it, the notary's signatures (and
 * any other's) taken off: it is handed on as the server's own (this
 * server's notary countersigns it itself), and which notary vouched for
 * it is said apart.
 */

static ngx_int_t
ngx_http_matrix_key_notaries_own(ngx_http_matrix_notary_ask_t *na,
    json_t *doc)
{
    json_t    *sigs, *own;
    mx_buf_t   buf;
    mx_err_t   err;

    own = json_object_getn(json_object_get(doc, "signatures"),
                           (char *) na->server_name.data,
                           na->server_name.len);
    if (own == NULL) {
        return NGX_ERROR;
    }

    sigs = json_object();
    if (sigs == NULL) {
        return NGX_ERROR;
    }

    if (json_object_setn(sigs, (char *) na->server_name.data,
                         na->server_name.len, own)
        != 0)
    {
        json_decref(sigs);
        return NGX_ERROR;
    }

    /* set_new takes sigs, even when it fails */

    if (json_object_set_new(doc, "signatures", sigs) != 0) {
        return NGX_ERROR;
    }

    mx_buf_init(&buf);

    if (mx_json_canonical(doc, &buf, &err) != MX_OK) {
        mx_buf_free(&buf);
        return NGX_ERROR;
    }

    na->doc.data = ngx_pnalloc(na->pool, buf.len);
    if (na->doc.data == NULL) {
        mx_buf_free(&buf);
        return NGX_ERROR;
    }

    na->doc.len = ngx_cpymem(na->doc.data, buf.data, buf.len) - na->doc.data;
    mx_buf_free(&buf);

    return NGX_OK;
}


static void
ngx_http_matrix_key_notaries_failed(ngx_http_matrix_notary_ask_t *na,
    const char *why)
{
    ngx_http_matrix_trusted_notary_t  *tn;

    tn = ngx_http_matrix_key_notaries_current(na);

    ngx_log_error(NGX_LOG_WARN, na->log, 0,
                  "matrix federation: keys of \"%V\" through trusted "
                  "notary \"%V\": %s", &na->server_name, &tn->name, why);

    *ngx_snprintf(na->last, sizeof(na->last) - 1, "%V: %s",
                  &tn->name, why) = '\0';

    ngx_http_matrix_key_notaries_next(na);
}


static void
ngx_http_matrix_key_notaries_finish(ngx_http_matrix_notary_ask_t *na,
    ngx_int_t status)
{
    u_char  *p;

    na->status = status;
    na->error.len = 0;

    if (status != NGX_OK) {
        p = ngx_snprintf(na->errbuf, sizeof(na->errbuf), "%V%sno trusted "
                         "notary vouched for its keys (last: %s)",
                         &na->why, na->why.len ? "; " : "", na->last);

        na->error.data = na->errbuf;
        na->error.len = p - na->errbuf;
    }

    ngx_post_event(&na->reply, &ngx_posted_events);
}


static void
ngx_http_matrix_key_notaries_reply_handler(ngx_event_t *ev)
{
    ngx_http_matrix_notary_ask_t  *na;

    na = ev->data;
    na->running = 0;

    if (!na->abandoned && na->handler) {
        /* the last: the handler may destroy the pool na is on */
        na->handler(na);
    }
}


static void
ngx_http_matrix_key_notaries_cleanup(void *data)
{
    ngx_http_matrix_notary_ask_t  *na = data;

    na->abandoned = 1;

    if (na->reply.posted) {
        ngx_delete_posted_event(&na->reply);
    }
}
