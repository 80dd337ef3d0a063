-- 002_rooms: the silo's rooms as Matrix rooms.
--
-- A silo room gets a row in matrix_rooms (its Matrix room ID) the first
-- time another server looks at it, and its events the first time one
-- needs them (a join): created_ts says when.  Events are appended in
-- the order they are made, under the room's row lock, so nid order is a
-- topological order of the room's graph: every event comes after the
-- events it names.  The functions below keep the three derived tables
-- (room_state, forward_extremities, silo_outbox) in step with events, in
-- the caller's transaction.
--
-- Functions that read the silo's views (messages, rooms, ...) are
-- plpgsql: their queries are planned when first run, with the caller's
-- search_path, so they can be created before the operator's views exist.
-- Those that serve many events run without JIT: their estimates are
-- high, their work small, and compiling cost more than running.


ALTER TABLE matrix_rooms ADD COLUMN created_ts bigint;   -- NULL: no events yet

-- m.room.member only: the membership, so that "who is in the room" needs
-- no PDU parsing
ALTER TABLE room_state ADD COLUMN membership text;

CREATE INDEX events_room_order ON events (room_nid, nid);
CREATE INDEX events_state_order ON events (room_nid, type, state_key, nid)
    WHERE state_key IS NOT NULL;
CREATE INDEX room_state_joined ON room_state (room_nid, state_key)
    WHERE membership = 'join';


-- Invites of silo users to other servers' rooms, as this server signed
-- them: kept until the user answers (which needs client support), and
-- told to the silo.

CREATE TABLE invites (
    event_id           text PRIMARY KEY,
    room_id            text NOT NULL,
    room_version       text NOT NULL,
    invitee            text NOT NULL,     -- a user ID of this server's
    sender             text NOT NULL,
    pdu                text NOT NULL,     -- canonical, with our signature
    invite_room_state  jsonb NOT NULL DEFAULT '[]',
    received_ts        bigint NOT NULL
);

CREATE INDEX invites_invitee ON invites (invitee);


-- Writes owed to the silo's internal API (PUT memberships/..., invites/,
-- and later messages): queued in the transaction that stores the event,
-- so that an event the module has accepted is never lost on its way to
-- the silo.  Deleted once the silo has answered 2xx or refused it for
-- good.

CREATE TABLE silo_outbox (
    seq              bigserial PRIMARY KEY,
    event_id         text NOT NULL UNIQUE,
    room_nid         integer REFERENCES matrix_rooms,  -- NULL: an invite
    kind             text NOT NULL,
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_ts  bigint NOT NULL DEFAULT 0,
    last_error       text,
    CONSTRAINT silo_outbox_kind CHECK (kind IN ('membership', 'invite'))
);

CREATE INDEX silo_outbox_due ON silo_outbox (next_attempt_ts);


-- Appends events to a room, in order.  p_events is a JSON array of
--   {"event_id", "type", "state_key", "sender", "depth", "ts",
--    "prev": [event IDs], "auth": [event IDs], "membership",
--    and either "pdu" (the canonical PDU, for events kept whole)
--    or "hash", "key_id", "sig" (hex) with "content" (canonical JSON) or
--    "recipe" and "silo_message_id" (for events rebuilt from the silo),
--    "outbox": a silo_outbox kind, or absent}
-- Every event named must be in the room already (or earlier in the
-- array).  An event already stored is left as it is.  Returns the nids,
-- in the same order, NULL for an event refused (see below).

-- The nids of a JSON array of event IDs, in order; NULL for one that is
-- not this room's.  One lookup each by the unique event ID (the room is
-- checked on the row found, so that no plan walks the room's events
-- looking for the ID).

CREATE FUNCTION matrix_event_nids(p_room_nid integer, p_ids jsonb)
RETURNS bigint[]
LANGUAGE sql STABLE
AS $fn$
    SELECT ARRAY(SELECT (SELECT CASE WHEN ev.room_nid = p_room_nid
                                     THEN ev.nid END
                           FROM events ev WHERE ev.event_id = i.id)
                   FROM jsonb_array_elements_text(p_ids)
                        WITH ORDINALITY AS i(id, ord)
                  ORDER BY i.ord)
$fn$;


-- Its lookups are by key, one row each, and must stay so however the
-- planner sees the tables: while a room is made, thousands of events are
-- appended in one transaction to a table whose statistics say it is
-- empty, and a sequential scan per lookup would make that quadratic.

CREATE FUNCTION matrix_append_events(p_room_nid integer, p_events jsonb)
RETURNS SETOF bigint
LANGUAGE plpgsql
SET enable_seqscan = off
AS $fn$
DECLARE
    e      jsonb;
    prev   bigint[];
    auth   bigint[];
    deep   bigint;
    n      bigint;
BEGIN
    FOR e IN SELECT value FROM jsonb_array_elements(p_events) LOOP

        -- an event sent again (a retried send_join) is stored once
        SELECT ev.nid INTO n FROM events ev
         WHERE ev.event_id = e ->> 'event_id';

        IF FOUND THEN
            RETURN NEXT n;
            CONTINUE;
        END IF;

        prev := matrix_event_nids(p_room_nid, e -> 'prev');
        auth := matrix_event_nids(p_room_nid, e -> 'auth');

        SELECT max(ev.depth) INTO deep FROM events ev
         WHERE ev.nid = ANY (prev);

        -- refused (NULL, nothing stored): an event named that the room
        -- does not have, or a depth beyond its previous events' + 1,
        -- which would push every later event of the room out of range
        IF array_position(prev, NULL) IS NOT NULL
           OR array_position(auth, NULL) IS NOT NULL
           OR (e ->> 'depth')::bigint > coalesce(deep, 0) + 1
        THEN
            RETURN NEXT NULL;
            CONTINUE;
        END IF;

        INSERT INTO events (depth, origin_server_ts, room_nid, recipe,
                            event_id, type, state_key, sender,
                            silo_message_id, prev_nids, auth_nids,
                            content_hash, key_id, signature, content, pdu)
        VALUES ((e ->> 'depth')::bigint, (e ->> 'ts')::bigint, p_room_nid,
                (e ->> 'recipe')::smallint, e ->> 'event_id', e ->> 'type',
                e ->> 'state_key', e ->> 'sender', e ->> 'silo_message_id',
                prev, auth, decode(e ->> 'hash', 'hex'), e ->> 'key_id',
                decode(e ->> 'sig', 'hex'), e ->> 'content', e ->> 'pdu')
        RETURNING nid INTO n;

        IF e ? 'state_key' AND e ->> 'state_key' IS NOT NULL THEN
            INSERT INTO room_state (room_nid, type, state_key, event_nid,
                                    membership)
            VALUES (p_room_nid, e ->> 'type', e ->> 'state_key', n,
                    e ->> 'membership')
            ON CONFLICT (room_nid, type, state_key) DO UPDATE
               SET event_nid = EXCLUDED.event_nid,
                   membership = EXCLUDED.membership;
        END IF;

        DELETE FROM forward_extremities
         WHERE room_nid = p_room_nid AND event_nid = ANY (prev);
        INSERT INTO forward_extremities (room_nid, event_nid)
        VALUES (p_room_nid, n);

        IF e ->> 'outbox' IS NOT NULL THEN
            INSERT INTO silo_outbox (event_id, room_nid, kind)
            VALUES (e ->> 'event_id', p_room_nid, e ->> 'outbox');
        END IF;

        RETURN NEXT n;
    END LOOP;
END
$fn$;


-- What a new event of the room needs, as one JSON document: the forward
-- extremities (prev_events: the ten newest, which a new event merges),
-- the next depth, and the current state
-- events that can authorise it, whole (create, power levels, join rules,
-- server ACL, history visibility, and the members asked about: a JSON
-- array of user IDs).  With p_lock, the room's row is locked
-- until the caller's transaction ends: appends are serialised per room.

CREATE FUNCTION matrix_room_head(p_room_nid integer, p_members jsonb,
    p_lock boolean)
RETURNS jsonb
LANGUAGE plpgsql
AS $fn$
DECLARE
    r  jsonb;
BEGIN
    IF p_lock THEN
        PERFORM 1 FROM matrix_rooms WHERE room_nid = p_room_nid FOR UPDATE;
    END IF;

    SELECT jsonb_build_object(
        'prev', (SELECT coalesce(jsonb_agg(x.event_id ORDER BY x.nid), '[]')
                   FROM (SELECT ev.event_id, ev.nid
                           FROM forward_extremities f
                           JOIN events ev ON ev.nid = f.event_nid
                          WHERE f.room_nid = p_room_nid
                          ORDER BY ev.nid DESC LIMIT 10) x),
        'depth', (SELECT coalesce(max(x.depth), 0) + 1
                    FROM (SELECT ev.depth
                            FROM forward_extremities f
                            JOIN events ev ON ev.nid = f.event_nid
                           WHERE f.room_nid = p_room_nid
                           ORDER BY ev.nid DESC LIMIT 10) x),
        'state', (SELECT coalesce(jsonb_agg(ev.pdu ORDER BY ev.nid), '[]')
                    FROM room_state s
                    JOIN events ev ON ev.nid = s.event_nid
                   WHERE s.room_nid = p_room_nid
                     AND (s.type IN ('m.room.create', 'm.room.power_levels',
                                     'm.room.join_rules',
                                     'm.room.server_acl',
                                     'm.room.history_visibility')
                          OR (s.type = 'm.room.member'
                              AND s.state_key IN
                                  (SELECT jsonb_array_elements_text(
                                              p_members))))))
      INTO r;

    RETURN r;
END
$fn$;


-- The state of the room before an event (the event's own change left
-- out), as event nids.  Events are in nid order, so the latest state
-- event of each (type, state_key) before it is the one in force; the
-- keys are those of the current state (a key once set stays set).

CREATE FUNCTION matrix_state_before(p_room_nid integer, p_nid bigint)
RETURNS SETOF bigint
LANGUAGE sql STABLE
AS $fn$
    SELECT n FROM (
        SELECT (SELECT e.nid FROM events e
                 WHERE e.room_nid = p_room_nid AND e.type = k.type
                   AND e.state_key = k.state_key AND e.nid < p_nid
                 ORDER BY e.nid DESC LIMIT 1) AS n
          FROM room_state k
         WHERE k.room_nid = p_room_nid) s
     WHERE n IS NOT NULL
$fn$;


-- The auth chain of some events: every event their auth_events name,
-- and theirs, and so on (the events themselves not included).

CREATE FUNCTION matrix_auth_chain(p_nids bigint[])
RETURNS SETOF bigint
LANGUAGE sql STABLE
AS $fn$
    WITH RECURSIVE chain(nid) AS (
        SELECT unnest(auth_nids) FROM events WHERE nid = ANY (p_nids)
        UNION
        SELECT unnest((SELECT e.auth_nids FROM events e
                        WHERE e.nid = c.nid))
          FROM chain c
    )
    SELECT nid FROM chain
$fn$;


-- Everything needed to serve events, in the order of p_nids: the stored
-- PDU, or the parts of an event to rebuild, with the silo's current text
-- of the message it mirrors and the events its relations name.

CREATE FUNCTION matrix_event_parts(p_nids bigint[])
RETURNS TABLE (nid bigint, event_id text, pdu text, room_id text,
               type text, state_key text, sender text, depth bigint,
               origin_server_ts bigint, prev_ids jsonb, auth_ids jsonb,
               hash text, key_id text, sig text, content text,
               recipe smallint, body text, html text,
               reply_event_id text, thread_event_id text,
               redacted boolean)
LANGUAGE plpgsql STABLE
SET jit = off
AS $fn$
BEGIN
    RETURN QUERY
    SELECT e.nid, e.event_id, e.pdu, r.room_id, e.type, e.state_key,
           e.sender, e.depth, e.origin_server_ts,
           (SELECT coalesce(jsonb_agg(p.event_id ORDER BY i.ord), '[]')
              FROM unnest(e.prev_nids) WITH ORDINALITY AS i(n, ord)
              JOIN events p ON p.nid = i.n),
           (SELECT coalesce(jsonb_agg(a.event_id ORDER BY i.ord), '[]')
              FROM unnest(e.auth_nids) WITH ORDINALITY AS i(n, ord)
              JOIN events a ON a.nid = i.n),
           encode(e.content_hash, 'hex'), e.key_id,
           encode(e.signature, 'hex'), e.content, e.recipe,
           m.body, m.html,
           (SELECT x.event_id FROM events x
             WHERE x.silo_message_id = m.reply_to AND x.recipe IS NOT NULL
               AND x.room_nid = e.room_nid
             ORDER BY x.nid LIMIT 1),
           (SELECT x.event_id FROM events x
             WHERE x.silo_message_id = m.thread_root AND x.recipe IS NOT NULL
               AND x.room_nid = e.room_nid
             ORDER BY x.nid LIMIT 1),
           e.redacted_by IS NOT NULL OR m.deleted_at IS NOT NULL
      FROM unnest(p_nids) WITH ORDINALITY AS w(n, ord)
      JOIN events e ON e.nid = w.n
      JOIN matrix_rooms r ON r.room_nid = e.room_nid
      LEFT JOIN messages m ON e.recipe IS NOT NULL
                          AND m.message_id = e.silo_message_id
     ORDER BY w.ord;
END
$fn$;


-- A silo room, as one JSON document, for making its Matrix room: what
-- the rooms view says, its admins and moderators, and its most recent
-- p_history messages (deleted ones left out) with their authors, oldest
-- first.

CREATE FUNCTION matrix_silo_room(p_silo_room_id text, p_history integer)
RETURNS jsonb
LANGUAGE plpgsql STABLE
AS $fn$
DECLARE
    r  jsonb;
BEGIN
    SELECT jsonb_build_object(
        'name', ro.name, 'topic', ro.topic, 'is_public', ro.is_public,
        'created_ts', (extract(epoch FROM ro.created_at) * 1000)::bigint,
        'alias', ro.alias, 'avatar_url', ro.avatar_url,
        'admins', (SELECT coalesce(jsonb_agg(u.localpart ORDER BY u.localpart),
                                   '[]')
                     FROM room_members rm JOIN users u USING (user_id)
                    WHERE rm.room_id = ro.room_id AND rm.role = 'admin'),
        'moderators', (SELECT coalesce(jsonb_agg(u.localpart
                                                 ORDER BY u.localpart), '[]')
                         FROM room_members rm JOIN users u USING (user_id)
                        WHERE rm.room_id = ro.room_id
                          AND rm.role = 'moderator'),
        'messages', (SELECT coalesce(jsonb_agg(jsonb_build_object(
                                'id', h.message_id, 'localpart', u.localpart,
                                'displayname', u.display_name,
                                'avatar_url', u.avatar_url,
                                'body', h.body, 'html', h.html,
                                'ts', (extract(epoch FROM h.created_at)
                                       * 1000)::bigint,
                                'reply_to', h.reply_to,
                                'thread_root', h.thread_root)
                            ORDER BY h.created_at, h.message_id), '[]')
                       FROM (SELECT * FROM messages m
                              WHERE m.room_id = ro.room_id
                                AND m.deleted_at IS NULL
                                AND m.matrix_event_id IS NULL
                              ORDER BY m.created_at DESC, m.message_id DESC
                              LIMIT p_history) h
                       JOIN users u ON u.user_id = h.user_id))
      INTO r
      FROM rooms ro
     WHERE ro.room_id = p_silo_room_id;

    RETURN r;
END
$fn$;


-- What a server that joins is sent: the state of the room before its
-- join (part 0) and the auth chain of that state and of the join
-- (part 1), as matrix_event_parts() rows.

CREATE FUNCTION matrix_join_parts(p_room_nid integer, p_nid bigint)
RETURNS TABLE (nid bigint, event_id text, pdu text, room_id text,
               type text, state_key text, sender text, depth bigint,
               origin_server_ts bigint, prev_ids jsonb, auth_ids jsonb,
               hash text, key_id text, sig text, content text,
               recipe smallint, body text, html text,
               reply_event_id text, thread_event_id text,
               redacted boolean, part integer)
LANGUAGE plpgsql STABLE
SET jit = off
AS $fn$
DECLARE
    state  bigint[];
BEGIN
    state := ARRAY(SELECT matrix_state_before(p_room_nid, p_nid));

    RETURN QUERY
    SELECT p.*, 0 FROM matrix_event_parts(state) p
    UNION ALL
    SELECT p.*, 1
      FROM matrix_event_parts(ARRAY(SELECT matrix_auth_chain(
                                               state || p_nid))) p;
END
$fn$;


-- May server see the room's events?  Its rooms' history is "shared": a
-- server with a user joined now sees all of it.  The server ACL, when the
-- room has one, is returned for the caller to apply.

CREATE FUNCTION matrix_server_access(p_room_nid integer, p_server text)
RETURNS jsonb
LANGUAGE sql STABLE
AS $fn$
    SELECT jsonb_build_object(
        'joined', EXISTS (SELECT 1 FROM room_state s
                           WHERE s.room_nid = p_room_nid
                             AND s.membership = 'join'
                             AND substr(s.state_key,
                                        strpos(s.state_key, ':') + 1)
                                 = p_server),
        'acl', (SELECT e.pdu FROM room_state s JOIN events e
                    ON e.nid = s.event_nid
                 WHERE s.room_nid = p_room_nid
                   AND s.type = 'm.room.server_acl' AND s.state_key = ''))
$fn$;


-- backfill: from the latest of the events named (those of the room),
-- going back, at most p_limit events, the newest first.

CREATE FUNCTION matrix_backfill(p_room_nid integer, p_from jsonb,
    p_limit integer)
RETURNS SETOF bigint
LANGUAGE sql STABLE
AS $fn$
    SELECT e.nid FROM events e
     WHERE e.room_nid = p_room_nid
       AND e.nid <= (SELECT max(f.nid) FROM events f
                      WHERE f.room_nid = p_room_nid
                        AND f.event_id IN (SELECT jsonb_array_elements_text(
                                                      p_from)))
     ORDER BY e.nid DESC
     LIMIT p_limit
$fn$;


-- get_missing_events: the events after the latest of p_earliest and
-- before the latest of p_latest (both of the room), at least
-- p_min_depth deep, the p_limit most recent of them, oldest first.

CREATE FUNCTION matrix_missing_events(p_room_nid integer, p_earliest jsonb,
    p_latest jsonb, p_limit integer, p_min_depth bigint)
RETURNS SETOF bigint
LANGUAGE sql STABLE
AS $fn$
    SELECT nid FROM (
        SELECT e.nid FROM events e
         WHERE e.room_nid = p_room_nid
           AND e.depth >= p_min_depth
           AND e.nid > coalesce((SELECT max(f.nid) FROM events f
                                  WHERE f.room_nid = p_room_nid
                                    AND f.event_id IN
                                        (SELECT jsonb_array_elements_text(
                                                    p_earliest))), 0)
           AND e.nid < (SELECT max(l.nid) FROM events l
                         WHERE l.room_nid = p_room_nid
                           AND l.event_id IN
                               (SELECT jsonb_array_elements_text(p_latest)))
         ORDER BY e.nid DESC
         LIMIT p_limit) m
     ORDER BY nid
$fn$;


-- An invite received and signed, and the silo owed it, at once; the same
-- invite again changes nothing.

CREATE FUNCTION matrix_store_invite(p_event_id text, p_room_id text,
    p_room_version text, p_invitee text, p_sender text, p_pdu text,
    p_state jsonb, p_ts bigint)
RETURNS void
LANGUAGE sql
AS $fn$
    WITH i AS (
        INSERT INTO invites (event_id, room_id, room_version, invitee,
                             sender, pdu, invite_room_state, received_ts)
        VALUES (p_event_id, p_room_id, p_room_version, p_invitee, p_sender,
                p_pdu, p_state, p_ts)
        ON CONFLICT (event_id) DO NOTHING
        RETURNING event_id)
    INSERT INTO silo_outbox (event_id, kind)
    SELECT event_id, 'invite' FROM i
$fn$;
