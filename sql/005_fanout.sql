-- 005_fanout: the send queue without a write per destination.
--
-- 004 wrote each destination's row twice per transaction (claimed, then
-- sent), so what a message cost grew with the servers in its room.  Now
-- one sender at a time sends for the whole cluster: the one holding the
-- session advisory lock (28025, 2) on a connection it keeps
-- (src/ngx_http_matrix_sender.c).  It keeps the destinations' cursors and
-- transactions in memory, and persists lazily:
--
--   federation_floor: one outbox seq every destination without a row is
--   past (a new owner resends from there: receivers drop PDUs they have
--   by event ID);
--
--   destinations: a row only for a destination that deviates: written
--   when a transaction to it fails (bounded by the back-off), and when it
--   recovers (deleted once it is past the floor again).  One that has
--   failed for long is given up on: it no longer holds the outbox, and
--   when it answers again it is sent its rooms' latest events (it
--   backfills the rest).
--
-- The outbox is trimmed below the floor and the cursors of the rows not
-- given up on.


CREATE TABLE federation_floor (
    one   boolean PRIMARY KEY DEFAULT true CHECK (one),
    seq   bigint NOT NULL
);

-- 004's healthy destinations are past their last_sent: the floor is the
-- least of those; those in back-off keep their row and cursor
INSERT INTO federation_floor (seq)
SELECT coalesce((SELECT min(last_sent) FROM destinations WHERE failures = 0),
                (SELECT max(seq) FROM federation_outbox), 0);

DELETE FROM destinations WHERE failures = 0;

ALTER TABLE destinations
    DROP COLUMN txn_upto,
    DROP COLUMN txn_nids,
    DROP COLUMN lease_until,
    ADD COLUMN failing_since bigint NOT NULL DEFAULT 0,   -- ms; 0: not
    ADD COLUMN given_up boolean NOT NULL DEFAULT false;

UPDATE destinations
   SET failing_since = (extract(epoch FROM now()) * 1000)::bigint;

DROP FUNCTION matrix_federation_claim(bigint, bigint, integer, integer,
                                      integer);
DROP FUNCTION matrix_federation_sent(text, bigint);
DROP FUNCTION matrix_federation_failed(text, bigint, bigint, bigint, bigint,
                                       text);


-- As in 004, without the destinations' rows: the sender finds who is
-- owed the events by reading the rooms' joined servers.

CREATE OR REPLACE FUNCTION matrix_federation_enqueue(p_room_nid integer,
    p_nids bigint[], p_server text)
RETURNS void
LANGUAGE plpgsql
AS $fn$
DECLARE
    n      bigint;
    queued boolean := false;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM room_state r
                    WHERE r.room_nid = p_room_nid AND r.membership = 'join'
                      AND substr(r.state_key, strpos(r.state_key, ':') + 1)
                          <> p_server)
    THEN
        RETURN;
    END IF;

    PERFORM pg_advisory_xact_lock(28025, 1);

    FOREACH n IN ARRAY p_nids LOOP
        CONTINUE WHEN n IS NULL;
        INSERT INTO federation_outbox (seq, room_nid, event_nid)
        VALUES (nextval('federation_outbox_seq'), p_room_nid, n);
        queued := true;
    END LOOP;

    IF queued THEN
        PERFORM pg_notify('matrix_federation_out', '');
    END IF;
END
$fn$;


-- The servers owed the outbox rows after p_after (the first p_limit of
-- them), each with the last of those rows' seq; a row with a NULL server
-- too, so that the seq is known when nobody is owed them.

CREATE FUNCTION matrix_federation_scan(p_after bigint, p_server text,
    p_limit integer)
RETURNS TABLE (server_name text, top bigint)
LANGUAGE sql STABLE
AS $fn$
    WITH o AS (SELECT f.seq, f.room_nid FROM federation_outbox f
                WHERE f.seq > p_after ORDER BY f.seq LIMIT p_limit),
         t AS (SELECT max(o.seq) AS top FROM o)
    SELECT NULL::text, t.top FROM t WHERE t.top IS NOT NULL
    UNION ALL
    SELECT DISTINCT substr(r.state_key, strpos(r.state_key, ':') + 1), t.top
      FROM (SELECT DISTINCT o.room_nid FROM o) x
      JOIN room_state r ON r.room_nid = x.room_nid AND r.membership = 'join',
           t
     WHERE substr(r.state_key, strpos(r.state_key, ':') + 1) <> p_server
$fn$;


-- The next transaction of each of p_servers: the events after its cursor
-- (p_afters) up to p_upto, as matrix_federation_pending() chooses them,
-- with their number and last seq; for a server given up on (a NULL
-- cursor), the latest event this server (p_self) made in each room it
-- shares with it.  A server owed nothing has no row.

CREATE FUNCTION matrix_federation_txns(p_servers text[], p_afters bigint[],
    p_upto bigint, p_self text, p_per_room integer, p_batch integer)
RETURNS TABLE (server_name text, n integer, upto bigint, nids bigint[])
LANGUAGE sql STABLE
AS $fn$
    SELECT d.s, count(*)::integer, max(p.seq),
           array_agg(p.event_nid ORDER BY p.seq)
      FROM unnest(p_servers, p_afters) d(s, a),
           matrix_federation_pending(d.s, d.a, p_upto, p_per_room,
                                     p_batch) p
     WHERE d.a IS NOT NULL
     GROUP BY d.s
    UNION ALL
    SELECT d.s, count(*)::integer, p_upto, array_agg(x.nid ORDER BY x.nid)
      FROM unnest(p_servers, p_afters) d(s, a),
           LATERAL (SELECT (SELECT max(e.nid) FROM events e
                             WHERE e.room_nid = r.room_nid
                               AND substr(e.sender,
                                          strpos(e.sender, ':') + 1)
                                   = p_self) AS nid
                      FROM room_state r
                     WHERE r.membership = 'join'
                       AND substr(r.state_key, strpos(r.state_key, ':') + 1)
                           = d.s
                     GROUP BY r.room_nid
                     LIMIT p_batch) x
     WHERE d.a IS NULL AND x.nid IS NOT NULL
     GROUP BY d.s
$fn$;


-- A transaction to p_server failed: its row keeps its cursor (p_after;
-- NULL: as it is) and back-off; it is given up on once it has failed
-- for p_give_up ms.  Returns whether it is.

CREATE FUNCTION matrix_federation_failed(p_server text, p_after bigint,
    p_failures integer, p_retry_at bigint, p_now bigint, p_give_up bigint,
    p_error text)
RETURNS boolean
LANGUAGE plpgsql
AS $fn$
DECLARE
    was   boolean;
    now_  boolean;
BEGIN
    SELECT d.given_up INTO was FROM destinations d
     WHERE d.server_name = p_server;

    INSERT INTO destinations AS d (server_name, last_sent, failures,
                                   retry_at, last_error, failing_since)
    VALUES (p_server, coalesce(p_after, 0), p_failures, p_retry_at, p_error,
            p_now)
    ON CONFLICT (server_name) DO UPDATE
       SET last_sent = coalesce(p_after, d.last_sent),
           failures = p_failures, retry_at = p_retry_at,
           last_error = p_error,
           failing_since = CASE WHEN d.failing_since = 0 THEN p_now
                                ELSE d.failing_since END,
           given_up = d.given_up
                      OR (d.failing_since > 0
                          AND p_now - d.failing_since >= p_give_up)
    RETURNING d.given_up INTO now_;

    IF now_ AND NOT coalesce(was, false) THEN
        -- it holds the outbox no longer
        PERFORM matrix_federation_trim();
    END IF;

    RETURN now_;
END
$fn$;


-- p_server answered: its row goes once its cursor (p_after) is past the
-- floor, else it keeps the cursor with no back-off.  Returns whether the
-- row is gone.

CREATE FUNCTION matrix_federation_recovered(p_server text, p_after bigint)
RETURNS boolean
LANGUAGE plpgsql
AS $fn$
BEGIN
    IF p_after >= (SELECT f.seq FROM federation_floor f) THEN
        DELETE FROM destinations WHERE server_name = p_server;
        PERFORM matrix_federation_trim();
        RETURN true;
    END IF;

    UPDATE destinations
       SET last_sent = p_after, failures = 0, retry_at = 0,
           failing_since = 0, given_up = false, last_error = NULL
     WHERE server_name = p_server;

    PERFORM matrix_federation_trim();
    RETURN false;
END
$fn$;


-- What no destination still needs goes: below the floor and the cursors
-- of the rows not given up on.

CREATE FUNCTION matrix_federation_trim()
RETURNS void
LANGUAGE sql
AS $fn$
    DELETE FROM federation_outbox o
     WHERE o.seq <= least((SELECT f.seq FROM federation_floor f),
                          (SELECT min(d.last_sent) FROM destinations d
                            WHERE NOT d.given_up));
$fn$;


-- Every destination without a row is past p_floor.

CREATE FUNCTION matrix_federation_floor(p_floor bigint)
RETURNS void
LANGUAGE sql
AS $fn$
    UPDATE federation_floor SET seq = p_floor WHERE seq < p_floor;
    SELECT matrix_federation_trim();
$fn$;
