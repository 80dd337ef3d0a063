-- 001_initial: the module's own schema, first version.
--
-- Only what Matrix needs and the silo does not already hold lives here;
-- docs/storage.md explains every table and what one message costs.  The
-- runner (matrix-tool migrate, and the module at start) runs this with
-- search_path set to the module's schema, inside its own transaction:
-- never name the schema here, never BEGIN or COMMIT.  Silo data is read
-- through the operator's views (users, rooms, room_members, messages)
-- that follow the module schema in the search path, so no table here may
-- take one of those four names.
--
-- Times that Matrix sends on the wire are bigint milliseconds since the
-- epoch, as in the PDUs, so nothing is converted (or rounded) on the way
-- out; times that only operators read are timestamptz.


-- The silo change feed.  The operator attaches silo_change_trigger() to
-- the silo's own message table; every insert, update and delete leaves a
-- row here and a NOTIFY, and the module turns them into Matrix events.
-- It is a queue, not a log: the module deletes what it has handled.
-- seq is taken when the row is written, not when the silo's transaction
-- commits, so a consumer must not read it as a high-water mark.

CREATE TABLE silo_changes (
    seq          bigserial PRIMARY KEY,
    kind         text NOT NULL,
    message_id   text,              -- NULL: the trigger names a wrong column
    room_id      text,
    changed_at   timestamptz NOT NULL DEFAULT now(),
    old_values   jsonb,             -- {"body": .., "html": ..} before an edit
                                    -- in place, when the trigger is asked to
    CONSTRAINT silo_changes_kind CHECK (kind IN ('insert', 'update', 'delete'))
);

-- Runs in the silo application's sessions, on its write path, so it does
-- one conversion, one insert and one notification per row, nothing more.
--
--   CREATE TRIGGER matrix_feed
--       AFTER INSERT OR UPDATE OR DELETE ON chat.messages
--       FOR EACH ROW EXECUTE FUNCTION
--       matrix.silo_change_trigger('id', 'room_id' [, 'text', 'html']);
--
-- TG_ARGV[0] and [1] name the table's message id and room id columns; the
-- optional [2] and [3] name the columns the messages view takes body and
-- html from: an UPDATE that changes one of them then keeps their old
-- values, the only moment the original content of a message edited in
-- place still exists.  Columns are read by name through to_jsonb(), so
-- one function serves any table shape.  A column that does not exist
-- reads as NULL rather than failing the silo's own write.
--
-- search_path is fixed FROM CURRENT, the module schema at migration time,
-- because the silo's sessions have a search path of their own.  SECURITY
-- DEFINER: the silo's role needs no privilege on the module's tables.

CREATE FUNCTION silo_change_trigger() RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path FROM CURRENT
AS $fn$
DECLARE
    cur    jsonb;
    prev   jsonb;
    saved  jsonb;
    pos    bigint;
BEGIN
    IF TG_LEVEL <> 'ROW' OR TG_NARGS < 2 OR TG_NARGS > 4 THEN
        RAISE EXCEPTION 'silo_change_trigger(id_column, room_column'
                        '[, body_column[, html_column]]) must be a FOR EACH '
                        'ROW trigger, % has % arguments',
                        TG_NAME, TG_NARGS;
    END IF;

    IF TG_OP = 'DELETE' THEN
        cur := to_jsonb(OLD);
    ELSE
        cur := to_jsonb(NEW);
    END IF;

    IF TG_OP = 'UPDATE' AND TG_NARGS > 2 THEN
        prev := to_jsonb(OLD);

        IF prev -> TG_ARGV[2] IS DISTINCT FROM cur -> TG_ARGV[2]
           OR prev -> TG_ARGV[3] IS DISTINCT FROM cur -> TG_ARGV[3]
        THEN
            saved := jsonb_build_object('body', prev -> TG_ARGV[2],
                                        'html', prev -> TG_ARGV[3]);
        END IF;
    END IF;

    INSERT INTO silo_changes (kind, message_id, room_id, old_values)
        VALUES (lower(TG_OP), cur ->> TG_ARGV[0], cur ->> TG_ARGV[1], saved)
        RETURNING seq INTO pos;

    -- delivered at the silo's COMMIT; a hint, the table is the truth
    PERFORM pg_notify('matrix_silo_changes', pos::text);

    RETURN NULL;
END
$fn$;


-- Pinned Matrix localparts.  A silo user's Matrix ID is derived from the
-- silo's localpart the first time it is published, and then never
-- changes: a rename in the silo must not turn one Matrix user into
-- another, and a freed silo name must not hand an old Matrix ID (its
-- memberships, its signatures) to a new person.  Rows are never deleted.
-- The check is the spec's grammar for new user IDs.

CREATE TABLE silo_localparts (
    silo_user_id  text PRIMARY KEY,
    localpart     text NOT NULL UNIQUE,
    pinned_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT silo_localparts_grammar
        CHECK (localpart ~ '^[a-z0-9._=/+-]+$')
);


-- Other servers' signing keys, one row per key, as verify_keys (valid
-- until valid_until_ts) or old_verify_keys (valid for events before
-- expired_ts) of their key documents.  An event is checked against the
-- key valid at its origin_server_ts.

CREATE TABLE server_keys (
    server_name     text NOT NULL,
    key_id          text NOT NULL,      -- "ed25519:abc"
    verify_key      bytea NOT NULL,     -- the 32-byte public key
    valid_until_ts  bigint,
    expired_ts      bigint,
    fetched_ts      bigint NOT NULL,
    PRIMARY KEY (server_name, key_id),
    CONSTRAINT server_keys_size CHECK (octet_length(verify_key) = 32),
    CONSTRAINT server_keys_validity
        CHECK (valid_until_ts IS NOT NULL OR expired_ts IS NOT NULL)
);

-- The signed key documents themselves, exactly as received, one per
-- server and source (from_server is the server itself when fetched
-- directly, else the notary that answered): their signatures cover the
-- bytes, so a notary can only serve the original text, never one
-- rebuilt from server_keys.

CREATE TABLE server_key_json (
    server_name     text NOT NULL,
    from_server     text NOT NULL,
    key_json        text NOT NULL,
    valid_until_ts  bigint NOT NULL,
    fetched_ts      bigint NOT NULL,
    PRIMARY KEY (server_name, from_server)
);


-- Matrix rooms.  One per silo room projected into Matrix (silo_room_id
-- set); the silo's rooms view keeps the name, topic and members, this
-- keeps what Matrix adds: the room ID and the room version its events
-- are built, hashed and checked by.  room_nid is the short key events
-- use instead of repeating the room ID.

CREATE TABLE matrix_rooms (
    room_nid      serial PRIMARY KEY,
    room_id       text NOT NULL UNIQUE,
    silo_room_id  text UNIQUE,          -- NULL: a room not from the silo
    room_version  text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);


-- Events (PDUs).  A row is stored in one of two ways:
--
--  * pdu: the full event as canonical JSON, for every event this server
--    did not build (remote events: other servers' signatures, any keys).
--    The other columns are then an index into it.
--
--  * rebuilt: an event this server built and signed is exactly the
--    columns below plus its content.  The columns hold the redacted form
--    (all that the event ID and the signature cover); the content is
--    either stored (state events, the original of a message the silo
--    edited in place) or, for a message mirroring a silo row, rebuilt
--    from that row by the recipe numbered in "recipe".  content_hash is
--    the check: a rebuilt content that no longer hashes to it is not
--    served, the event is served redacted instead.
--
-- Events are stored after the events they cite (prev and auth), so the
-- nid arrays are complete and in the PDU's order.  nid is the insertion
-- order; it is not the commit order.  Fixed-size columns come first: no
-- alignment padding between them.

CREATE TABLE events (
    nid               bigserial PRIMARY KEY,
    depth             bigint NOT NULL,
    origin_server_ts  bigint NOT NULL,
    redacted_by       bigint,           -- nid of the redaction, when redacted
    room_nid          integer NOT NULL REFERENCES matrix_rooms,
    recipe            smallint,         -- how content is rebuilt from the
                                        -- silo row, NULL when not
    event_id          text NOT NULL UNIQUE,
    type              text NOT NULL,
    state_key         text,
    sender            text NOT NULL,
    silo_message_id   text,             -- the silo message it mirrors
    prev_nids         bigint[] NOT NULL,
    auth_nids         bigint[] NOT NULL,
    content_hash      bytea,            -- hashes.sha256, 32 bytes
    key_id            text,             -- the one signature: our key ...
    signature         bytea,            -- ... and its 64 bytes
    content           text,             -- canonical JSON
    pdu               text,             -- canonical JSON
    CONSTRAINT events_stored_or_rebuilt CHECK (
        (pdu IS NOT NULL AND content IS NULL AND content_hash IS NULL
         AND key_id IS NULL AND signature IS NULL AND recipe IS NULL)
        OR (pdu IS NULL AND coalesce(octet_length(content_hash), 0) = 32
            AND key_id IS NOT NULL
            AND coalesce(octet_length(signature), 0) = 64
            AND (content IS NOT NULL
                 OR (recipe IS NOT NULL AND silo_message_id IS NOT NULL)
                 OR redacted_by IS NOT NULL)))
);

-- the silo's message to its events (the original, then its edits and
-- its redaction): replies, edits and deletes arrive as silo IDs
CREATE INDEX events_silo_message ON events (silo_message_id)
    WHERE silo_message_id IS NOT NULL;


-- The current state of each room: (type, state_key) to the event that
-- holds it, for auth events of new events, joins and /state.

CREATE TABLE room_state (
    room_nid   integer NOT NULL REFERENCES matrix_rooms,
    type       text NOT NULL,
    state_key  text NOT NULL,
    event_nid  bigint NOT NULL REFERENCES events,
    PRIMARY KEY (room_nid, type, state_key)
);


-- The events of each room that no other event cites as a prev event yet:
-- the prev_events of the next event this server builds there.  An event
-- is stored after its prev events, so keeping it is "delete my prevs,
-- insert me", no search of the graph.

CREATE TABLE forward_extremities (
    room_nid   integer NOT NULL REFERENCES matrix_rooms,
    event_nid  bigint NOT NULL REFERENCES events,
    PRIMARY KEY (room_nid, event_nid)
);
