-- 003_inbound: events other servers push to us (PUT /send/{txnId}).
--
-- A transaction is answered once: its answer is kept by (origin, txnId),
-- and the same transaction again gets the same answer and does nothing.
-- A received event that its own auth events allow but the room's current
-- state does not is soft-failed: stored (other events may name it), but
-- neither current state nor a forward extremity, and never told to the
-- silo.


CREATE TABLE received_transactions (
    origin       text NOT NULL,
    txn_id       text NOT NULL,
    response     jsonb NOT NULL,
    received_ts  bigint NOT NULL,
    PRIMARY KEY (origin, txn_id)
);

ALTER TABLE events ADD COLUMN soft_failed boolean NOT NULL DEFAULT false;

-- messages, their edits and redactions from Matrix, for the silo
ALTER TABLE silo_outbox DROP CONSTRAINT silo_outbox_kind;
ALTER TABLE silo_outbox ADD CONSTRAINT silo_outbox_kind
    CHECK (kind IN ('membership', 'invite', 'message', 'edit', 'deletion'));


-- What checking a received event needs from the room, as one JSON
-- document: is it stored already, how many of its prev_events the room
-- lacks, has p_server a user joined, and the events it cites as its auth
-- (those of the room, kept whole).

CREATE FUNCTION matrix_receive_check(p_room_nid integer, p_event_id text,
    p_prev jsonb, p_auth jsonb, p_server text)
RETURNS jsonb
LANGUAGE sql STABLE
AS $fn$
    SELECT jsonb_build_object(
        'known', EXISTS (SELECT 1 FROM events e
                          WHERE e.event_id = p_event_id),
        'missing', (SELECT count(*) FROM jsonb_array_elements_text(p_prev) p
                     WHERE NOT EXISTS (SELECT 1 FROM events e
                                        WHERE e.event_id = p.value
                                          AND e.room_nid = p_room_nid)),
        'joined', EXISTS (SELECT 1 FROM room_state s
                           WHERE s.room_nid = p_room_nid
                             AND s.membership = 'join'
                             AND substr(s.state_key,
                                        strpos(s.state_key, ':') + 1)
                                 = p_server),
        'cited', (SELECT coalesce(jsonb_agg(e.pdu), '[]')
                    FROM events e
                   WHERE e.room_nid = p_room_nid AND e.pdu IS NOT NULL
                     AND NOT e.soft_failed
                     AND e.event_id IN (SELECT jsonb_array_elements_text(
                                                   p_auth))))
$fn$;


-- Appends one received event (a matrix_append_events() record); a
-- soft-failed one is stored only: no state, no extremity, no outbox.
-- Returns its nid, NULL for an event refused.

CREATE FUNCTION matrix_append_received(p_room_nid integer, p_event jsonb,
    p_soft_failed boolean)
RETURNS bigint
LANGUAGE plpgsql
AS $fn$
DECLARE
    prev   bigint[];
    auth   bigint[];
    n      bigint;
BEGIN
    IF NOT p_soft_failed THEN
        SELECT a INTO n
          FROM matrix_append_events(p_room_nid, jsonb_build_array(p_event)) a;

        -- a redaction by a user of the server whose user sent the target
        -- applies now (a moderator's of another server would need the
        -- power levels at hand: left to the target's own server): the
        -- target is served redacted from then on
        IF n IS NOT NULL AND p_event ->> 'type' = 'm.room.redaction' THEN
            UPDATE events t SET redacted_by = n
             WHERE t.event_id = coalesce(
                       (p_event ->> 'pdu')::jsonb ->> 'redacts',
                       (p_event ->> 'pdu')::jsonb -> 'content' ->> 'redacts')
               AND t.room_nid = p_room_nid
               AND t.redacted_by IS NULL
               AND substr(t.sender, strpos(t.sender, ':') + 1)
                   = substr(p_event ->> 'sender',
                            strpos(p_event ->> 'sender', ':') + 1);
        END IF;

        RETURN n;
    END IF;

    SELECT ev.nid INTO n FROM events ev
     WHERE ev.event_id = p_event ->> 'event_id';

    IF FOUND THEN
        RETURN n;
    END IF;

    prev := matrix_event_nids(p_room_nid, p_event -> 'prev');
    auth := matrix_event_nids(p_room_nid, p_event -> 'auth');

    IF array_position(prev, NULL) IS NOT NULL
       OR array_position(auth, NULL) IS NOT NULL
    THEN
        RETURN NULL;
    END IF;

    INSERT INTO events (depth, origin_server_ts, room_nid, event_id, type,
                        state_key, sender, prev_nids, auth_nids, pdu,
                        soft_failed)
    VALUES ((p_event ->> 'depth')::bigint, (p_event ->> 'ts')::bigint,
            p_room_nid, p_event ->> 'event_id', p_event ->> 'type',
            p_event ->> 'state_key', p_event ->> 'sender', prev, auth,
            p_event ->> 'pdu', true)
    RETURNING nid INTO n;

    RETURN n;
END
$fn$;


-- The state before an event leaves soft-failed events out.

CREATE OR REPLACE FUNCTION matrix_state_before(p_room_nid integer,
    p_nid bigint)
RETURNS SETOF bigint
LANGUAGE sql STABLE
AS $fn$
    SELECT n FROM (
        SELECT (SELECT e.nid FROM events e
                 WHERE e.room_nid = p_room_nid AND e.type = k.type
                   AND e.state_key = k.state_key AND e.nid < p_nid
                   AND NOT e.soft_failed
                 ORDER BY e.nid DESC LIMIT 1) AS n
          FROM room_state k
         WHERE k.room_nid = p_room_nid) s
     WHERE n IS NOT NULL
$fn$;


-- The silo's message an event stands for: a silo message's own event,
-- or a message the module wrote through the silo's API (the silo keeps
-- the event ID in matrix_event_id).  NULL if none.

CREATE FUNCTION matrix_silo_message_of(p_event_id text)
RETURNS text
LANGUAGE plpgsql STABLE
AS $fn$
DECLARE
    id  text;
BEGIN
    IF p_event_id IS NULL THEN
        RETURN NULL;
    END IF;

    SELECT e.silo_message_id INTO id FROM events e
     WHERE e.event_id = p_event_id AND e.silo_message_id IS NOT NULL;

    IF id IS NULL THEN
        SELECT m.message_id INTO id FROM messages m
         WHERE m.matrix_event_id = p_event_id LIMIT 1;
    END IF;

    RETURN id;
END
$fn$;


-- What the silo's write of a received message, edit or redaction needs
-- besides the event: the sender's display name (its current member
-- event), and the silo messages that its relations name.

CREATE FUNCTION matrix_outbox_context(p_room_nid integer, p_pdu text)
RETURNS jsonb
LANGUAGE plpgsql STABLE
AS $fn$
DECLARE
    ev   jsonb;
    rel  jsonb;
BEGIN
    ev := p_pdu::jsonb;
    rel := ev -> 'content' -> 'm.relates_to';

    RETURN jsonb_build_object(
        'displayname',
            (SELECT e.pdu::jsonb -> 'content' ->> 'displayname'
               FROM room_state s JOIN events e ON e.nid = s.event_nid
              WHERE s.room_nid = p_room_nid AND s.type = 'm.room.member'
                AND s.state_key = ev ->> 'sender'),
        'reply_to',
            matrix_silo_message_of(CASE
                WHEN rel ->> 'rel_type' = 'm.thread'
                     AND (rel -> 'is_falling_back') = 'true'::jsonb
                THEN NULL
                ELSE rel -> 'm.in_reply_to' ->> 'event_id' END),
        'thread_root',
            matrix_silo_message_of(CASE WHEN rel ->> 'rel_type' = 'm.thread'
                                        THEN rel ->> 'event_id' END),
        'target',
            matrix_silo_message_of(CASE
                WHEN ev ->> 'type' = 'm.room.redaction'
                THEN coalesce(ev ->> 'redacts',
                              ev -> 'content' ->> 'redacts')
                WHEN rel ->> 'rel_type' = 'm.replace'
                THEN rel ->> 'event_id' END));
END
$fn$;
