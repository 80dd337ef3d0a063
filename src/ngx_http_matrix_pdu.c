/*
 * Signatures of received PDUs (ngx_http_matrix_pdu.h).
 *
 * The sender's server must have signed, with a key valid when the event
 * says it was sent.  Its key IDs are tried in turn until one is known
 * (fetched if need be) and verifies; the check itself is the core's
 * (mx_event_verify_signatures), over the redacted event.
 *
 * Rooms this server makes are public or invite-only, never restricted,
 * so the only signature asked for is the sender's.
 */


#include "ngx_http_matrix_pdu.h"
#include "ngx_http_matrix_remote_keys.h"


static ngx_int_t ngx_http_matrix_pdu_next_key(ngx_http_matrix_pdu_check_t *pc);
static void ngx_http_matrix_pdu_key(ngx_http_matrix_key_lookup_t *kl);
static int ngx_http_matrix_pdu_lookup(void *data, const char *server,
    const char *key_id, int64_t ts, unsigned char public_key[32]);
static void ngx_http_matrix_pdu_reply(ngx_http_matrix_pdu_check_t *pc,
    ngx_int_t rc);
static void ngx_http_matrix_pdu_posted(ngx_event_t *ev);


typedef struct {
    ngx_http_matrix_pdu_check_t     *pc;
    ngx_event_t                      event;
} ngx_http_matrix_pdu_later_t;


ngx_http_matrix_pdu_check_t *
ngx_http_matrix_pdu_check(ngx_pool_t *pool, ngx_log_t *log, mx_event_t *ev,
    ngx_http_matrix_pdu_check_pt handler, void *data)
{
    const char                   *colon;
    ngx_http_matrix_pdu_check_t  *pc;

    pc = ngx_pcalloc(pool, sizeof(ngx_http_matrix_pdu_check_t));
    if (pc == NULL) {
        return NULL;
    }

    pc->ev = ev;
    pc->handler = handler;
    pc->data = data;
    pc->pool = pool;
    pc->log = log;

    colon = ev->sender ? strchr(ev->sender, ':') : NULL;

    if (colon == NULL || ngx_strlen(colon + 1) >= sizeof(pc->server)) {
        mx_err_set(&pc->why, "the sender is not a user ID");
        ngx_http_matrix_pdu_reply(pc, NGX_DECLINED);
        return pc;
    }

    ngx_cpystrn(pc->server, (u_char *) colon + 1, sizeof(pc->server));

    if (ngx_http_matrix_pdu_next_key(pc) != NGX_OK) {
        mx_err_set(&pc->why, "not signed by the sender's server %s",
                   pc->server);
        ngx_http_matrix_pdu_reply(pc, NGX_DECLINED);
    }

    return pc;
}


/* the next ed25519 key ID the sender's server signed with, looked up */

static ngx_int_t
ngx_http_matrix_pdu_next_key(ngx_http_matrix_pdu_check_t *pc)
{
    size_t                         i;
    json_t                        *sigs, *v;
    const char                    *key_id;
    ngx_http_matrix_key_lookup_t  *kl;

    sigs = json_object_get(json_object_get(pc->ev->json, "signatures"),
                           (char *) pc->server);
    if (!json_is_object(sigs)) {
        return NGX_ERROR;
    }

    i = 0;

    json_object_foreach(sigs, key_id, v) {
        if (i++ < pc->next) {
            continue;
        }

        pc->next = i;

        if (ngx_strncmp(key_id, "ed25519:", 8) != 0
            || ngx_strlen(key_id) >= sizeof(pc->key_id)
            || !json_is_string(v))
        {
            continue;
        }

        ngx_cpystrn(pc->key_id, (u_char *) key_id, sizeof(pc->key_id));

        kl = ngx_http_matrix_key_lookup_create(pc->pool, pc->log);
        if (kl == NULL) {
            return NGX_ERROR;
        }

        kl->server_name.data = pc->server;
        kl->server_name.len = ngx_strlen(pc->server);
        kl->key_id.data = pc->key_id;
        kl->key_id.len = ngx_strlen(pc->key_id);
        kl->at_ms = pc->ev->origin_server_ts;
        kl->handler = ngx_http_matrix_pdu_key;
        kl->data = pc;

        return ngx_http_matrix_key_lookup(kl);
    }

    return NGX_ERROR;
}


static void
ngx_http_matrix_pdu_key(ngx_http_matrix_key_lookup_t *kl)
{
    ngx_http_matrix_pdu_check_t  *pc;

    pc = kl->data;

    if (kl->rc == NGX_OK) {
        ngx_memcpy(pc->public_key, kl->public_key, 32);
        pc->have_key = 1;

        if (mx_event_verify_signatures(pc->ev->json, pc->ev->version,
                                       ngx_http_matrix_pdu_lookup, pc,
                                       &pc->why)
            == MX_OK)
        {
            pc->handler(pc);
            return;
        }

        pc->rc = NGX_DECLINED;
        pc->handler(pc);
        return;
    }

    /* another key of the same server may do */

    if (ngx_http_matrix_pdu_next_key(pc) == NGX_OK) {
        return;
    }

    if (kl->rc == NGX_DECLINED) {
        mx_err_set(&pc->why, "no valid key %s of %s for the event's time",
                   pc->key_id, pc->server);
        pc->rc = NGX_DECLINED;

    } else {
        mx_err_set(&pc->why, "the keys of %s could not be fetched: %.*s",
                   pc->server, (int) kl->error.len, kl->error.data);
        pc->rc = NGX_ERROR;
    }

    pc->handler(pc);
}


static int
ngx_http_matrix_pdu_lookup(void *data, const char *server,
    const char *key_id, int64_t ts, unsigned char public_key[32])
{
    ngx_http_matrix_pdu_check_t  *pc = data;

    if (!pc->have_key
        || ngx_strcmp(server, pc->server) != 0
        || ngx_strcmp(key_id, pc->key_id) != 0)
    {
        return MX_ERROR;
    }

    ngx_memcpy(public_key, pc->public_key, 32);

    return MX_OK;
}


/* an outcome known at once is told later all the same, as promised */

static void
ngx_http_matrix_pdu_reply(ngx_http_matrix_pdu_check_t *pc, ngx_int_t rc)
{
    ngx_http_matrix_pdu_later_t  *later;

    pc->rc = rc;

    later = ngx_pcalloc(pc->pool, sizeof(ngx_http_matrix_pdu_later_t));
    if (later == NULL) {
        return;
    }

    later->pc = pc;
    later->event.handler = ngx_http_matrix_pdu_posted;
    later->event.data = later;
    later->event.log = pc->log;

    ngx_post_event(&later->event, &ngx_posted_events);
}


static void
ngx_http_matrix_pdu_posted(ngx_event_t *ev)
{
    ngx_http_matrix_pdu_later_t  *later = ev->data;

    later->pc->handler(later->pc);
}
