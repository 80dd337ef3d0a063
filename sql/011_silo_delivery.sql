-- 011_silo_delivery: the silo's writes (silo_outbox) claimed a room's run
-- at a time, without reading the whole queue (src/ngx_http_matrix_silo_api.c).
--
-- A room's writes go in order: its first row (the lowest seq) is its
-- head, and only a worker that holds the head may send the room's rows.
-- The index lets a claim find each room's head by a skip-scan over the
-- rooms (one index probe per room with rows queued), and a room's run
-- by a range of it, however long the queue is.

CREATE INDEX silo_outbox_room ON silo_outbox (room_nid, seq);


-- Claims up to p_rooms runs of due writes, leased together until
-- p_now + p_lease: of each room whose head is due and not being claimed
-- by another transaction (SKIP LOCKED), the head and the rows after it,
-- at most p_run, up to the first that is not due (a row still leased by
-- a run that ended badly: none after it may overtake it); an invite (no
-- room) is a run of its own.  attempts counts the claim; a row given back
-- unsent has it taken back (matrix_silo_settle).  head: the seq of the
-- run's first row, which names the run.

CREATE FUNCTION matrix_silo_claim(p_now bigint, p_rooms integer,
    p_run integer, p_lease integer)
RETURNS TABLE (seq bigint, head bigint, event_id text, room_nid integer,
               kind text, attempts integer)
LANGUAGE sql
AS $fn$
    WITH RECURSIVE rooms (nid) AS (
        (SELECT o.room_nid FROM silo_outbox o
          WHERE o.room_nid IS NOT NULL
          ORDER BY o.room_nid LIMIT 1)
        UNION ALL
        SELECT (SELECT o.room_nid FROM silo_outbox o
                 WHERE o.room_nid > r.nid
                 ORDER BY o.room_nid LIMIT 1)
          FROM rooms r
         WHERE r.nid IS NOT NULL
    ),
    heads AS (
        SELECT h.seq
          FROM rooms r,
               LATERAL (SELECT o.seq, o.next_attempt_ts FROM silo_outbox o
                         WHERE o.room_nid = r.nid
                         ORDER BY o.seq LIMIT 1) h
         WHERE h.next_attempt_ts <= p_now
        UNION ALL
        (SELECT o.seq FROM silo_outbox o
          WHERE o.room_nid IS NULL AND o.next_attempt_ts <= p_now
          ORDER BY o.seq LIMIT p_rooms)
    ),
    locked AS (
        -- one probe by key per head, the oldest first, until p_rooms are
        -- held: a head is locked only when it is taken
        SELECT o.seq, o.room_nid
          FROM (SELECT heads.seq FROM heads ORDER BY heads.seq) h,
               LATERAL (SELECT o.seq, o.room_nid FROM silo_outbox o
                         WHERE o.seq = h.seq AND o.next_attempt_ts <= p_now
                           FOR UPDATE SKIP LOCKED) o
         LIMIT p_rooms
    ),
    run AS (
        SELECT x.seq, l.seq AS head
          FROM locked l,
               LATERAL (SELECT y.seq,
                               bool_and(y.next_attempt_ts <= p_now)
                                   OVER (ORDER BY y.seq) AS due
                          FROM (SELECT o.seq, o.next_attempt_ts
                                  FROM silo_outbox o
                                 WHERE o.room_nid = l.room_nid
                                   AND o.seq >= l.seq
                                 ORDER BY o.seq LIMIT p_run) y) x
         WHERE l.room_nid IS NOT NULL AND x.due
        UNION ALL
        SELECT l.seq, l.seq FROM locked l WHERE l.room_nid IS NULL
    )
    UPDATE silo_outbox o
       SET next_attempt_ts = p_now + p_lease, attempts = o.attempts + 1
      FROM run
     WHERE o.seq = run.seq
    RETURNING o.seq, run.head, o.event_id, o.room_nid, o.kind, o.attempts
$fn$;


-- The end of a run, in one statement: the rows answered (or refused for
-- good) go, the one that failed waits until p_next, and those after it,
-- not sent, are given back: due again at once (behind the failed one,
-- which holds the room), their claim not counted as an attempt.

CREATE FUNCTION matrix_silo_settle(p_done bigint[], p_failed bigint,
    p_next bigint, p_error text, p_rest bigint[])
RETURNS void
LANGUAGE sql
AS $fn$
    DELETE FROM silo_outbox WHERE seq = ANY (p_done);

    UPDATE silo_outbox SET next_attempt_ts = p_next, last_error = p_error
     WHERE seq = p_failed;

    UPDATE silo_outbox
       SET next_attempt_ts = 0, attempts = greatest(attempts - 1, 0)
     WHERE seq = ANY (p_rest);
$fn$;
