/*
 * Redaction, reference hashes and event IDs.
 *
 * The redaction algorithm decides what every signature and every event
 * ID covers, so it is written as data: per room version, the top-level
 * keys kept and, per event type, the content keys kept.
 *
 * The redacted copy is new down to its content object; the values kept
 * are shared with the original (referenced, not copied), so callers
 * change only its top level or content keys, never what is below them.
 */

#include <string.h>
#include <sodium.h>

#include "mx_core.h"
#include "mx_event.h"


typedef struct {
    const char     *type;
    const char     *keys[12];   /* NULL-terminated; "*" keeps all */
} mx_redact_content_t;


static const char  *mx_redact_top_v1[] = {
    "event_id", "type", "room_id", "sender", "state_key", "content",
    "hashes", "signatures", "depth", "prev_events", "prev_state",
    "auth_events", "origin", "origin_server_ts", "membership", NULL
};

/* v11 (MSC2176): origin, membership and prev_state are no longer kept */
static const char  *mx_redact_top_v11[] = {
    "event_id", "type", "room_id", "sender", "state_key", "content",
    "hashes", "signatures", "depth", "prev_events", "auth_events",
    "origin_server_ts", NULL
};

static const mx_redact_content_t  mx_redact_content_v1[] = {
    { "m.room.member", { "membership", NULL } },
    { "m.room.create", { "creator", NULL } },
    { "m.room.join_rules", { "join_rule", NULL } },
    { "m.room.power_levels", { "ban", "events", "events_default", "kick",
                               "redact", "state_default", "users",
                               "users_default", NULL } },
    { "m.room.aliases", { "aliases", NULL } },
    { "m.room.history_visibility", { "history_visibility", NULL } },
    { NULL, { NULL } }
};

/* v6 (MSC2432): m.room.aliases is no longer special */
static const mx_redact_content_t  mx_redact_content_v6[] = {
    { "m.room.member", { "membership", NULL } },
    { "m.room.create", { "creator", NULL } },
    { "m.room.join_rules", { "join_rule", NULL } },
    { "m.room.power_levels", { "ban", "events", "events_default", "kick",
                               "redact", "state_default", "users",
                               "users_default", NULL } },
    { "m.room.history_visibility", { "history_visibility", NULL } },
    { NULL, { NULL } }
};

/* v8 adds join_rules "allow", v9 the member's authorising server */
static const mx_redact_content_t  mx_redact_content_v8[] = {
    { "m.room.member", { "membership", NULL } },
    { "m.room.create", { "creator", NULL } },
    { "m.room.join_rules", { "join_rule", "allow", NULL } },
    { "m.room.power_levels", { "ban", "events", "events_default", "kick",
                               "redact", "state_default", "users",
                               "users_default", NULL } },
    { "m.room.history_visibility", { "history_visibility", NULL } },
    { NULL, { NULL } }
};

static const mx_redact_content_t  mx_redact_content_v9[] = {
    { "m.room.member", { "membership", "join_authorised_via_users_server",
                         NULL } },
    { "m.room.create", { "creator", NULL } },
    { "m.room.join_rules", { "join_rule", "allow", NULL } },
    { "m.room.power_levels", { "ban", "events", "events_default", "kick",
                               "redact", "state_default", "users",
                               "users_default", NULL } },
    { "m.room.history_visibility", { "history_visibility", NULL } },
    { NULL, { NULL } }
};

/*
 * v11: create keeps everything (MSC2176), power_levels keeps "invite",
 * redaction keeps "redacts" (MSC2174), member keeps the signed part of a
 * third-party invite (MSC3821, handled in mx_event_redact_content()).
 */
static const mx_redact_content_t  mx_redact_content_v11[] = {
    { "m.room.member", { "membership", "join_authorised_via_users_server",
                         NULL } },
    { "m.room.create", { "*", NULL } },
    { "m.room.join_rules", { "join_rule", "allow", NULL } },
    { "m.room.power_levels", { "ban", "events", "events_default", "invite",
                               "kick", "redact", "state_default", "users",
                               "users_default", NULL } },
    { "m.room.history_visibility", { "history_visibility", NULL } },
    { "m.room.redaction", { "redacts", NULL } },
    { NULL, { NULL } }
};


static int mx_redact_keep(const char *const *keys, const char *key);
static json_t *mx_event_redact_content(const json_t *content,
    const char *type, const mx_room_version_t *version);


json_t *
mx_event_redact(const json_t *pdu, const mx_room_version_t *version,
    mx_err_t *err)
{
    json_t             *out, *value, *content;
    const char         *key, *type, *const *top;

    if (!json_is_object(pdu)) {
        mx_err_set(err, "an event must be a JSON object");
        return NULL;
    }

    top = (version->redaction >= MX_REDACT_V11) ? mx_redact_top_v11
                                                : mx_redact_top_v1;

    out = json_object();
    if (out == NULL) {
        mx_err_set(err, "out of memory");
        return NULL;
    }

    type = json_string_value(json_object_get(pdu, "type"));

    json_object_foreach((json_t *) pdu, key, value) {
        if (!mx_redact_keep(top, key)) {
            continue;
        }

        if (strcmp(key, "content") == 0) {
            content = mx_event_redact_content(value, type, version);

        } else {
            content = json_incref(value);
        }

        if (content == NULL || json_object_set_new(out, key, content) != 0) {
            json_decref(out);
            mx_err_set(err, "out of memory");
            return NULL;
        }
    }

    /* what is signed always has a content, if only an empty one */
    if (json_object_get(out, "content") == NULL
        && json_object_set_new(out, "content", json_object()) != 0)
    {
        json_decref(out);
        mx_err_set(err, "out of memory");
        return NULL;
    }

    return out;
}


static int
mx_redact_keep(const char *const *keys, const char *key)
{
    for ( /* void */ ; *keys; keys++) {
        if ((*keys)[0] == '*' || strcmp(*keys, key) == 0) {
            return 1;
        }
    }

    return 0;
}


static json_t *
mx_event_redact_content(const json_t *content, const char *type,
    const mx_room_version_t *version)
{
    json_t                     *out, *value, *tpi, *signed_;
    const char                 *key;
    const mx_redact_content_t  *rule;

    out = json_object();

    if (out == NULL || !json_is_object(content) || type == NULL) {
        /* a non-object content has nothing to keep */
        return out;
    }

    switch (version->redaction) {
    case MX_REDACT_V1:
        rule = mx_redact_content_v1;
        break;
    case MX_REDACT_V6:
        rule = version->restricted_join ? mx_redact_content_v8
                                        : mx_redact_content_v6;
        break;
    case MX_REDACT_V9:
        rule = mx_redact_content_v9;
        break;
    default:
        rule = mx_redact_content_v11;
        break;
    }

    for ( /* void */ ; rule->type; rule++) {
        if (strcmp(rule->type, type) == 0) {
            break;
        }
    }

    if (rule->type == NULL) {
        return out;
    }

    json_object_foreach((json_t *) content, key, value) {
        if (mx_redact_keep(rule->keys, key)
            && json_object_set(out, key, value) != 0)
        {
            json_decref(out);
            return NULL;
        }
    }

    if (version->redaction >= MX_REDACT_V11
        && strcmp(type, "m.room.member") == 0)
    {
        tpi = json_object_get(content, "third_party_invite");

        /* the invite object stays (as Synapse keeps it), "signed" in it */
        if (json_is_object(tpi)) {
            signed_ = json_object_get(tpi, "signed");

            if (json_object_set_new(out, "third_party_invite",
                                    signed_ ? json_pack("{s:O}", "signed",
                                                        signed_)
                                            : json_object())
                != 0)
            {
                json_decref(out);
                return NULL;
            }
        }
    }

    return out;
}


int
mx_event_reference_hash(const json_t *pdu, const mx_room_version_t *version,
    unsigned char hash[MX_SHA256_LEN], mx_err_t *err)
{
    int       rc;
    json_t   *redacted;
    mx_buf_t  buf;

    redacted = mx_event_redact(pdu, version, err);
    if (redacted == NULL) {
        return MX_ERROR;
    }

    json_object_del(redacted, "signatures");
    json_object_del(redacted, "unsigned");

    mx_buf_init(&buf);

    rc = mx_json_canonical(redacted, &buf, err);
    json_decref(redacted);

    if (rc == MX_OK) {
        crypto_hash_sha256(hash, buf.data, buf.len);
    }

    mx_buf_free(&buf);

    return rc;
}


int
mx_event_compute_id(const json_t *pdu, const mx_room_version_t *version,
    char id[MX_EVENT_ID_LEN + 1], mx_err_t *err)
{
    size_t         n;
    json_t        *v;
    unsigned char  hash[MX_SHA256_LEN];

    if (version->event_id_format == MX_EVENT_ID_ORIGIN) {
        /* v1, v2: the origin chose it; only short ones fit mx_event_t */
        v = json_object_get(pdu, "event_id");

        if (!json_is_string(v) || json_string_length(v) > MX_EVENT_ID_LEN
            || json_string_value(v)[0] != '$')
        {
            mx_err_set(err, "event_id is missing or longer than %d bytes",
                       MX_EVENT_ID_LEN);
            return MX_ERROR;
        }

        memcpy(id, json_string_value(v), json_string_length(v) + 1);
        return MX_OK;
    }

    if (mx_event_reference_hash(pdu, version, hash, err) != MX_OK) {
        return MX_ERROR;
    }

    id[0] = '$';
    n = mx_base64_encode(id + 1, hash, MX_SHA256_LEN,
                         version->event_id_format == MX_EVENT_ID_STD_HASH
                         ? MX_BASE64_STD : MX_BASE64_URLSAFE);
    id[n + 1] = '\0';

    return MX_OK;
}
