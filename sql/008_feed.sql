-- 008_feed: a change that fails does not stall the change feed.
--
-- A change whose transaction fails (the database refuses its events, a
-- worker runs out of memory while signing) is rolled back and tried
-- again later, 1 s doubling to 5 min, while other rooms' changes go on
-- (a timeout or a deadlock waits the same, without counting);
-- the room's later changes wait for it, as the silo's order is the
-- room's.  A change that cannot make events at all (data the module
-- cannot turn into an event), or still fails after 10 attempts, is
-- given up on: it stays in the table with failed_at and last_error for
-- the operator, and the room's later changes go on without it.  To try
-- it again: UPDATE matrix.silo_changes SET failed_at = NULL, attempts = 0,
-- retry_at = NULL WHERE seq = ...
--
-- Also: received transactions are kept a day (a retry comes within
-- minutes), then pruned by the change feed's housekeeping.


ALTER TABLE silo_changes
    ADD COLUMN attempts    integer NOT NULL DEFAULT 0,
    ADD COLUMN retry_at    timestamptz,
    ADD COLUMN failed_at   timestamptz,
    ADD COLUMN last_error  text;

CREATE INDEX silo_changes_room ON silo_changes (room_id, seq)
    WHERE failed_at IS NULL;

CREATE INDEX received_transactions_ts ON received_transactions (received_ts);


-- matrix_feed_next() of 004, choosing among the changes that are due.

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
    LOOP
        -- the first change of its room (a room's changes go in the
        -- silo's order), due, not given up on, and held by no one else
        SELECT * INTO c FROM silo_changes s
         WHERE s.failed_at IS NULL
           AND (s.retry_at IS NULL OR s.retry_at <= now())
           AND NOT EXISTS (SELECT 1 FROM silo_changes e
                            WHERE e.room_id = s.room_id AND e.seq < s.seq
                              AND e.failed_at IS NULL)
         ORDER BY s.seq LIMIT 1 FOR UPDATE OF s SKIP LOCKED;

        IF NOT FOUND THEN
            RETURN NULL;
        END IF;

        SELECT * INTO r FROM matrix_rooms
         WHERE silo_room_id = c.room_id AND created_ts IS NOT NULL;

        EXIT WHEN FOUND AND c.message_id IS NOT NULL;

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


-- A change's transaction failed (rolled back by now) or its events could
-- not be made (p_final): its next attempt, or given up on.  p_count:
-- the change's own failure, an attempt; else passing trouble (a timeout,
-- a deadlock), waited out without counting.  Returns whether it was
-- given up on.

CREATE FUNCTION matrix_feed_failed(p_seq bigint, p_error text,
    p_final boolean, p_count boolean)
RETURNS boolean
LANGUAGE sql
AS $fn$
    UPDATE silo_changes c
       SET attempts = c.attempts + CASE WHEN p_count THEN 1 ELSE 0 END,
           retry_at = now() + least(interval '5 minutes',
                                    interval '1 second'
                                    * power(2, least(c.attempts, 20))),
           failed_at = CASE WHEN p_final
                              OR (p_count AND c.attempts + 1 >= 10)
                            THEN now() END,
           last_error = left(p_error, 1000)
     WHERE c.seq = p_seq
    RETURNING c.failed_at IS NOT NULL
$fn$;
