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


-- matrix_feed_next() chooses among the changes that are due, the first
-- of their room, not given up on: in 010 (its last form).


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
