-- 010_reactions_out: silo users' reactions, out to Matrix.
--
-- The operator attaches silo_reaction_trigger() to the silo's reactions
-- table (docs/silo-contract.md, "Reactions"); its changes go through the
-- change feed like those of messages: an added reaction becomes an
-- m.reaction (an m.annotation of the event mirroring the message), a
-- removed one the redaction of that event.  A silo whose reactions have
-- no trigger makes no such change, and nothing here reads its
-- "reactions" view.


-- what a change is about: a message (silo_change_trigger(), message_id
-- and room_id its own) or a reaction (silo_reaction_trigger():
-- reaction_id, and message_id the message it annotates).  A reactions
-- table rarely has a room column: room_id is NULL until the feed reads
-- it from the messages view (matrix_feed_place()), '' when there is none.

ALTER TABLE silo_changes
    ADD COLUMN about        text NOT NULL DEFAULT 'message',
    ADD COLUMN reaction_id  text,
    ADD CONSTRAINT silo_changes_about
        CHECK (about IN ('message', 'reaction'));

CREATE INDEX silo_changes_unplaced ON silo_changes (seq)
    WHERE room_id IS NULL AND about = 'reaction';


-- The m.reaction event of each silo reaction sent; its redaction is the
-- event's redacted_by.  Rows are never deleted: a silo reaction ID is
-- never reused.

CREATE TABLE silo_reactions (
    silo_reaction_id  text PRIMARY KEY,
    room_nid          integer NOT NULL REFERENCES matrix_rooms,
    event_nid         bigint NOT NULL REFERENCES events
);


-- Attached by the operator to the silo's reactions table:
--
--   CREATE TRIGGER matrix_feed
--       AFTER INSERT OR UPDATE OR DELETE ON chat.reactions
--       FOR EACH ROW EXECUTE FUNCTION
--       matrix.silo_reaction_trigger('id', 'message_id');
--
-- TG_ARGV[0] and [1] name the reaction id and message id columns.  The
-- same properties as silo_change_trigger() (001): one insert and one
-- notification on the silo's write path, columns read by name, a fixed
-- search_path, SECURITY DEFINER.

CREATE FUNCTION silo_reaction_trigger() RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path FROM CURRENT
AS $fn$
DECLARE
    cur  jsonb;
    pos  bigint;
BEGIN
    IF TG_LEVEL <> 'ROW' OR TG_NARGS <> 2 THEN
        RAISE EXCEPTION 'silo_reaction_trigger(id_column, message_column) '
                        'must be a FOR EACH ROW trigger, % has % arguments',
                        TG_NAME, TG_NARGS;
    END IF;

    IF TG_OP = 'DELETE' THEN
        cur := to_jsonb(OLD);
    ELSE
        cur := to_jsonb(NEW);
    END IF;

    INSERT INTO silo_changes (kind, about, reaction_id, message_id)
        VALUES (lower(TG_OP), 'reaction', cur ->> TG_ARGV[0],
                cur ->> TG_ARGV[1])
        RETURNING seq INTO pos;

    PERFORM pg_notify('matrix_silo_changes', pos::text);

    RETURN NULL;
END
$fn$;


-- Reaction changes not placed in a room yet get their room: the reacted
-- message's (the messages view), else the room their event was sent to
-- (the message is gone), else '' (nothing Matrix knows of: dropped as a
-- change of a room without events).  Rows another worker holds are left
-- to it.  Once placed, a reaction waits for the earlier changes of its
-- room like any change, so that its message has its event first.

CREATE FUNCTION matrix_feed_place()
RETURNS void
LANGUAGE plpgsql
AS $fn$
BEGIN
    UPDATE silo_changes s
       SET room_id = coalesce(
               (SELECT m.room_id FROM messages m
                 WHERE m.message_id = s.message_id),
               (SELECT r.silo_room_id FROM silo_reactions x
                  JOIN matrix_rooms r ON r.room_nid = x.room_nid
                 WHERE x.silo_reaction_id = s.reaction_id),
               '')
     WHERE s.seq IN (SELECT u.seq FROM silo_changes u
                      WHERE u.room_id IS NULL AND u.about = 'reaction'
                      ORDER BY u.seq LIMIT 100
                      FOR UPDATE SKIP LOCKED);
END
$fn$;


-- matrix_feed_next() of 008, for reactions too: a reaction's change
-- returns, instead of "message" and "original",
--   "reaction": the silo's row and its author, NULL once deleted, with
--               "target": the event of the message it annotates (the
--               first mirroring it, or the Matrix event it was written
--               for), NULL when there is none,
--   "original": the m.reaction sent for it, if any (event_id, sender,
--               redacted_by).

CREATE OR REPLACE FUNCTION matrix_feed_next(p_server text)
RETURNS jsonb
LANGUAGE plpgsql
AS $fn$
DECLARE
    c      record;
    r      record;
    m      jsonb;
    o      jsonb;
    i      integer := 0;
BEGIN
    PERFORM matrix_feed_place();

    LOOP
        -- the first change of its room (a room's changes go in the
        -- silo's order), due, not given up on, placed in a room, and
        -- held by no one else
        SELECT * INTO c FROM silo_changes s
         WHERE s.failed_at IS NULL
           AND (s.retry_at IS NULL OR s.retry_at <= now())
           AND (s.room_id IS NOT NULL OR s.about = 'message')
           AND NOT EXISTS (SELECT 1 FROM silo_changes e
                            WHERE e.room_id = s.room_id AND e.seq < s.seq
                              AND e.failed_at IS NULL)
         ORDER BY s.seq LIMIT 1 FOR UPDATE OF s SKIP LOCKED;

        IF NOT FOUND THEN
            RETURN NULL;
        END IF;

        SELECT * INTO r FROM matrix_rooms
         WHERE silo_room_id = c.room_id AND created_ts IS NOT NULL;

        EXIT WHEN FOUND AND c.message_id IS NOT NULL
                  AND (c.about = 'message' OR c.reaction_id IS NOT NULL);

        DELETE FROM silo_changes WHERE seq = c.seq;

        i := i + 1;
        IF i >= 100 THEN
            RETURN jsonb_build_object('seq', NULL);
        END IF;
    END LOOP;

    PERFORM 1 FROM matrix_rooms WHERE room_nid = r.room_nid FOR UPDATE;

    -- with the room's lock, a change of the same room before this one
    -- (another worker's, not done yet) goes first: the silo's order is
    -- the room's, and a reply must find the message it answers
    IF EXISTS (SELECT 1 FROM silo_changes s
                WHERE s.room_id = c.room_id AND s.seq < c.seq
                  AND s.failed_at IS NULL)
    THEN
        RETURN jsonb_build_object('seq', NULL);
    END IF;

    IF c.about = 'reaction' THEN
        RETURN matrix_feed_reaction(c.seq, c.kind, c.reaction_id,
                                    r.room_nid, p_server);
    END IF;

    SELECT jsonb_build_object(
               'id', ms.message_id, 'localpart', u.localpart,
               'user_id', '@' || u.localpart || ':' || p_server,
               'displayname', u.display_name, 'avatar_url', u.avatar_url,
               'body', ms.body, 'html', ms.html,
               'ts', (extract(epoch FROM ms.created_at) * 1000)::bigint,
               'deleted', ms.deleted_at IS NOT NULL,
               'mine', ms.matrix_event_id IS NOT NULL,
               'reply_event_id',
               (SELECT x.event_id FROM events x
                 WHERE x.silo_message_id = ms.reply_to
                   AND x.recipe IS NOT NULL AND x.room_nid = r.room_nid
                 ORDER BY x.nid LIMIT 1),
               'thread_event_id',
               (SELECT x.event_id FROM events x
                 WHERE x.silo_message_id = ms.thread_root
                   AND x.recipe IS NOT NULL AND x.room_nid = r.room_nid
                 ORDER BY x.nid LIMIT 1))
      INTO m
      FROM messages ms LEFT JOIN users u ON u.user_id = ms.user_id
     WHERE ms.message_id = c.message_id;

    SELECT to_jsonb(p) || jsonb_build_object('redacted_by', e.redacted_by,
                                             'stored', e.content IS NOT NULL,
                                             'nid_text', e.nid::text,
                                             'silo_message_id',
                                             e.silo_message_id)
      INTO o
      FROM events e, matrix_event_parts(ARRAY[e.nid]) p
     WHERE e.nid = (SELECT x.nid FROM events x
                     WHERE x.silo_message_id = c.message_id
                       AND x.recipe IS NOT NULL
                       AND x.room_nid = r.room_nid
                     ORDER BY x.nid LIMIT 1);

    RETURN jsonb_build_object(
        'seq', c.seq, 'kind', c.kind, 'room_nid', r.room_nid,
        'room_id', r.room_id, 'version', r.room_version,
        'old', c.old_values, 'message', m, 'original', o,
        'head', matrix_room_head(r.room_nid,
                    jsonb_build_array(m ->> 'user_id',
                                      o ->> 'sender',
                                      '@_matrix:' || p_server),
                    false));
END
$fn$;


-- What matrix_feed_next() returns for the change p_seq of the silo
-- reaction p_reaction, in the room p_room_nid.  Reads the silo's
-- reactions view, so only a silo with the reactions trigger gets here.

CREATE FUNCTION matrix_feed_reaction(p_seq bigint, p_kind text,
    p_reaction text, p_room_nid integer, p_server text)
RETURNS jsonb
LANGUAGE plpgsql
AS $fn$
DECLARE
    r  record;
    x  jsonb;
    o  jsonb;
BEGIN
    SELECT * INTO r FROM matrix_rooms WHERE room_nid = p_room_nid;

    SELECT jsonb_build_object(
               'id', rc.reaction_id, 'key', rc.key,
               'localpart', u.localpart,
               'user_id', '@' || u.localpart || ':' || p_server,
               'displayname', u.display_name, 'avatar_url', u.avatar_url,
               'ts', (extract(epoch FROM rc.created_at) * 1000)::bigint,
               'removed', rc.removed_at IS NOT NULL,
               'mine', rc.matrix_event_id IS NOT NULL,
               'target', coalesce(
                   (SELECT e.event_id FROM events e
                     WHERE e.silo_message_id = rc.message_id
                       AND e.recipe IS NOT NULL AND e.room_nid = r.room_nid
                     ORDER BY e.nid LIMIT 1),
                   -- a Matrix user's message, written by the module
                   (SELECT e.event_id FROM messages ms, events e
                     WHERE ms.message_id = rc.message_id
                       AND e.event_id = ms.matrix_event_id
                       AND e.room_nid = r.room_nid)))
      INTO x
      FROM reactions rc LEFT JOIN users u ON u.user_id = rc.user_id
     WHERE rc.reaction_id = p_reaction;

    SELECT jsonb_build_object('event_id', e.event_id, 'sender', e.sender,
                              'redacted_by', e.redacted_by)
      INTO o
      FROM silo_reactions s JOIN events e ON e.nid = s.event_nid
     WHERE s.silo_reaction_id = p_reaction AND s.room_nid = r.room_nid;

    RETURN jsonb_build_object(
        'seq', p_seq, 'kind', p_kind, 'about', 'reaction',
        'reaction_id', p_reaction,
        'room_nid', r.room_nid, 'room_id', r.room_id,
        'version', r.room_version, 'reaction', x, 'original', o,
        'head', matrix_room_head(r.room_nid,
                    jsonb_build_array(x ->> 'user_id',
                                      o ->> 'sender',
                                      '@_matrix:' || p_server),
                    false));
END
$fn$;


-- matrix_feed_apply() of 004, and p_reaction: the silo reaction the
-- events are for.  Its first m.reaction is recorded in silo_reactions;
-- for a reaction recorded already, the last event is its redaction.

DROP FUNCTION matrix_feed_apply(integer, bigint, text, jsonb, bigint, text,
                                text);

CREATE FUNCTION matrix_feed_apply(p_room_nid integer, p_seq bigint,
    p_server text, p_events jsonb, p_original bigint, p_content text,
    p_redact text, p_reaction text)
RETURNS bigint[]
LANGUAGE plpgsql
AS $fn$
DECLARE
    nids  bigint[];
    last  bigint;
    sent  bigint;
BEGIN
    nids := ARRAY(SELECT matrix_append_events(p_room_nid, p_events));
    last := nids[array_length(nids, 1)];

    IF p_content IS NOT NULL THEN
        UPDATE events SET content = p_content
         WHERE nid = p_original AND content IS NULL AND pdu IS NULL;
    END IF;

    IF p_redact IS NOT NULL AND last IS NOT NULL THEN
        UPDATE events SET redacted_by = last
         WHERE room_nid = p_room_nid AND silo_message_id = p_redact
           AND redacted_by IS NULL AND nid <> last;
    END IF;

    IF p_reaction IS NOT NULL AND last IS NOT NULL THEN
        SELECT s.event_nid INTO sent FROM silo_reactions s
         WHERE s.silo_reaction_id = p_reaction;

        IF sent IS NULL THEN
            INSERT INTO silo_reactions (silo_reaction_id, room_nid,
                                        event_nid)
            VALUES (p_reaction, p_room_nid, last);

        ELSE
            UPDATE events SET redacted_by = last
             WHERE nid = sent AND redacted_by IS NULL;
        END IF;
    END IF;

    IF array_length(nids, 1) > 0 THEN
        PERFORM matrix_federation_enqueue(p_room_nid, nids, p_server);
    END IF;

    DELETE FROM silo_changes WHERE seq = p_seq;

    RETURN nids;
END
$fn$;
