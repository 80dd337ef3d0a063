/*
 * PDUs: parsing and validation.
 *
 * Everything here runs on events from other servers before any other
 * code looks at them: the size is checked before the parse, every field
 * the rest of the code reads is type-checked here, once, and then read
 * through the borrowed pointers of mx_event_t.
 */

#include <stdlib.h>
#include <string.h>

#include "mx_core.h"
#include "mx_ids.h"
#include "mx_event.h"


/*
 * A PDU is at most 65536 bytes as canonical JSON; the text received may
 * carry insignificant whitespace, so the text is allowed more, but not
 * unboundedly more, before any work is done on it.
 */
#define MX_PDU_MAX_TEXT   (4 * MX_PDU_MAX_SIZE)


static int mx_event_check_id(const json_t *v, char sigil, const char *what,
    int need_server, mx_err_t *err);
static int mx_event_check_ids(const json_t *a, const char *what,
    mx_err_t *err);
static const char *mx_event_string(const json_t *pdu, const char *key,
    int required, mx_err_t *err, int *rc);


int
mx_event_parse(const char *text, size_t len,
    const mx_room_version_t *version, mx_event_t **ev, mx_err_t *err)
{
    int      rc;
    json_t  *pdu;

    if (len > MX_PDU_MAX_TEXT) {
        mx_err_set(err, "event is larger than %d bytes", MX_PDU_MAX_SIZE);
        return MX_ERROR;
    }

    pdu = mx_json_parse(text, len,
                        version->strict_canonical_json ? MX_JSON_STRICT : 0,
                        err);
    if (pdu == NULL) {
        return MX_ERROR;
    }

    rc = mx_event_from_json(pdu, version, ev, err);
    json_decref(pdu);

    return rc;
}


int
mx_event_from_json(json_t *pdu, const mx_room_version_t *version,
    mx_event_t **evp, mx_err_t *err)
{
    int          rc;
    size_t       size;
    json_t      *v;
    mx_buf_t     buf;
    mx_event_t  *ev;

    *evp = NULL;

    if (!json_is_object(pdu)) {
        mx_err_set(err, "an event must be a JSON object");
        return MX_ERROR;
    }

    if (version->strict_canonical_json
        && mx_json_check_strict(pdu, err) != MX_OK)
    {
        return MX_ERROR;
    }

    /* the size the spec limits: canonical, signatures included */

    mx_buf_init(&buf);
    rc = mx_json_canonical(pdu, &buf, err);
    size = buf.len;
    mx_buf_free(&buf);

    if (rc != MX_OK) {
        return MX_ERROR;
    }

    if (size > MX_PDU_MAX_SIZE) {
        mx_err_set(err, "event is larger than %d bytes", MX_PDU_MAX_SIZE);
        return MX_ERROR;
    }

    ev = calloc(1, sizeof(mx_event_t));
    if (ev == NULL) {
        mx_err_set(err, "out of memory");
        return MX_ERROR;
    }

    ev->json = json_incref(pdu);
    ev->version = version;
    rc = MX_OK;

    ev->type = mx_event_string(pdu, "type", 1, err, &rc);
    ev->sender = mx_event_string(pdu, "sender", 1, err, &rc);
    ev->state_key = mx_event_string(pdu, "state_key", 0, err, &rc);

    if (rc != MX_OK) {
        goto failed;
    }

    if (strlen(ev->type) > MX_ID_MAX_LEN
        || (ev->state_key && strlen(ev->state_key) > MX_ID_MAX_LEN))
    {
        mx_err_set(err, "type or state_key is longer than %d bytes",
                   MX_ID_MAX_LEN);
        goto failed;
    }

    if (mx_event_check_id(json_object_get(pdu, "sender"), '@', "sender", 1,
                          err)
        != MX_OK)
    {
        goto failed;
    }

    v = json_object_get(pdu, "room_id");

    if (version->room_id_from_create && strcmp(ev->type, "m.room.create") == 0
        && ev->state_key && ev->state_key[0] == '\0')
    {
        /* v12: the create event names the room by being hashed */
        if (v != NULL) {
            mx_err_set(err, "a create event has no room_id in room "
                       "version %s", version->id);
            goto failed;
        }

    } else {
        if (mx_event_check_id(v, '!', "room_id", !version->room_id_from_create,
                              err)
            != MX_OK)
        {
            goto failed;
        }

        ev->room_id = json_string_value(v);
    }

    ev->content = json_object_get(pdu, "content");
    if (!json_is_object(ev->content)) {
        mx_err_set(err, "content must be an object");
        goto failed;
    }

    ev->auth_events = json_object_get(pdu, "auth_events");
    ev->prev_events = json_object_get(pdu, "prev_events");

    if (mx_event_check_ids(ev->auth_events, "auth_events", err) != MX_OK
        || mx_event_check_ids(ev->prev_events, "prev_events", err) != MX_OK)
    {
        goto failed;
    }

    v = json_object_get(pdu, "depth");
    if (!json_is_integer(v) || json_integer_value(v) < 0
        || json_integer_value(v) > MX_JSON_MAX_SAFE_INT)
    {
        mx_err_set(err, "depth must be an integer from 0 to 2^53-1");
        goto failed;
    }

    ev->depth = json_integer_value(v);

    v = json_object_get(pdu, "origin_server_ts");
    if (!json_is_integer(v)) {
        mx_err_set(err, "origin_server_ts must be an integer");
        goto failed;
    }

    ev->origin_server_ts = json_integer_value(v);

    if (!json_is_object(json_object_get(pdu, "hashes"))
        || !json_is_object(json_object_get(pdu, "signatures")))
    {
        mx_err_set(err, "hashes and signatures must be objects");
        goto failed;
    }

    v = json_object_get(pdu, "unsigned");
    if (v != NULL && !json_is_object(v)) {
        mx_err_set(err, "unsigned must be an object");
        goto failed;
    }

    if (strcmp(ev->type, "m.room.redaction") == 0) {
        v = version->redacts_in_content
            ? json_object_get(ev->content, "redacts")
            : json_object_get(pdu, "redacts");

        /*
         * A redaction without a valid target is kept (its signatures and
         * hashes still hold) but redacts nothing.
         */
        if (json_is_string(v)
            && mx_event_check_id(v, '$', "redacts", 0, NULL) == MX_OK)
        {
            ev->redacts = json_string_value(v);
        }
    }

    if (strcmp(ev->type, "m.room.member") == 0) {
        ev->membership = mx_event_content_string(ev, "membership");
    }

    if (mx_event_compute_id(pdu, version, ev->event_id, err) != MX_OK) {
        goto failed;
    }

    if (ev->room_id == NULL) {
        memcpy(ev->create_room_id, ev->event_id, MX_EVENT_ID_LEN + 1);
        ev->create_room_id[0] = '!';
        ev->room_id = ev->create_room_id;
    }

    *evp = ev;

    return MX_OK;

failed:

    mx_event_free(ev);

    return MX_ERROR;
}


void
mx_event_free(mx_event_t *ev)
{
    if (ev == NULL) {
        return;
    }

    json_decref(ev->json);
    free(ev);
}


const char *
mx_event_content_string(const mx_event_t *ev, const char *key)
{
    return json_string_value(json_object_get(ev->content, key));
}


static const char *
mx_event_string(const json_t *pdu, const char *key, int required,
    mx_err_t *err, int *rc)
{
    json_t  *v;

    v = json_object_get(pdu, key);

    if (v == NULL && !required) {
        return NULL;
    }

    if (!json_is_string(v)) {
        if (*rc == MX_OK) {
            mx_err_set(err, "%s must be a string", key);
            *rc = MX_ERROR;
        }

        return NULL;
    }

    return json_string_value(v);
}


/*
 * sigil + opaque part, ":server" where the grammar has one; at most 255
 * bytes.  Since room version 4 event IDs have no server part, and since
 * v12 room IDs neither.
 */
static int
mx_event_check_id(const json_t *v, char sigil, const char *what,
    int need_server, mx_err_t *err)
{
    const char  *why;

    if (!json_is_string(v)) {
        mx_err_set(err, "%s must be a string", what);
        return MX_ERROR;
    }

    if (mx_id_valid(json_string_value(v), json_string_length(v), sigil,
                    need_server, &why)
        != MX_OK)
    {
        mx_err_set(err, "%s is not a valid identifier: %s", what, why);
        return MX_ERROR;
    }

    return MX_OK;
}


static int
mx_event_check_ids(const json_t *a, const char *what, mx_err_t *err)
{
    size_t   i;

    if (!json_is_array(a)) {
        mx_err_set(err, "%s must be an array of event IDs", what);
        return MX_ERROR;
    }

    for (i = 0; i < json_array_size(a); i++) {
        if (mx_event_check_id(json_array_get(a, i), '$', what, 0, err)
            != MX_OK)
        {
            return MX_ERROR;
        }
    }

    return MX_OK;
}
