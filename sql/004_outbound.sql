-- 004_outbound: silo -> Matrix, live.
--
-- The change feed's consumer (src/ngx_http_matrix_feed.c) turns each
-- silo_changes row into events of the room, in one transaction under the
-- room's lock: matrix_feed_next() claims a row and reads what the events
-- need, matrix_feed_apply() stores them and deletes the row.
--
-- The events this server makes are then owed to every other server with
-- a user joined in the room.  The cost of that must not grow with the
-- number of those servers: one federation_outbox row per event, and per
-- destination server one row with a cursor (the last outbox seq it has
-- been sent, or is past).  A destination's transaction is the events
-- after its cursor in the rooms it is joined to (room_state), in order.
--
-- Outbox seqs are handed out under a transaction-level advisory lock
-- held until commit, so they become visible in seq order: a cursor that
-- moves past a seq never skips an event that commits later.


CREATE SEQUENCE federation_outbox_seq;

CREATE TABLE federation_outbox (
    seq        bigint PRIMARY KEY,
    room_nid   integer NOT NULL REFERENCES matrix_rooms,
    event_nid  bigint NOT NULL
);

CREATE TABLE destinations (
    server_name  text PRIMARY KEY,
    last_sent    bigint NOT NULL DEFAULT 0,   -- outbox seq it is past
    txn_upto     bigint,            -- the transaction being sent: up to
                                    -- this seq (kept across retries, so
                                    -- that its txnId and PDUs stay the same)
    txn_nids     bigint[],          -- and its events, as first chosen
    failures     integer NOT NULL DEFAULT 0,
    retry_at     bigint NOT NULL DEFAULT 0,   -- ms
    lease_until  bigint NOT NULL DEFAULT 0,   -- ms: a sender has it
    last_error   text
);


-- The events of p_nids (NULLs skipped) owed to the other servers joined
-- to the room, in the caller's transaction.  p_server: this server.

CREATE FUNCTION matrix_federation_enqueue(p_room_nid integer,
    p_nids bigint[], p_server text)
RETURNS void
LANGUAGE plpgsql
AS $fn$
DECLARE
    n      bigint;
    first  bigint;
    s      bigint;
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
        s := nextval('federation_outbox_seq');
        first := coalesce(first, s);
        INSERT INTO federation_outbox (seq, room_nid, event_nid)
        VALUES (s, p_room_nid, n);
    END LOOP;

    IF first IS NULL THEN
        RETURN;
    END IF;

    -- a server seen for the first time starts here (it had the rest
    -- through its join); one that has a row already: a read, no write
    INSERT INTO destinations (server_name, last_sent)
    SELECT DISTINCT substr(r.state_key, strpos(r.state_key, ':') + 1),
           first - 1
      FROM room_state r
     WHERE r.room_nid = p_room_nid AND r.membership = 'join'
       AND substr(r.state_key, strpos(r.state_key, ':') + 1) <> p_server
    ON CONFLICT (server_name) DO NOTHING;

    PERFORM pg_notify('matrix_federation_out', '');
END
$fn$;


-- The events owed to a server after its cursor (up to p_upto, if given):
-- of the rooms it has a user joined to, at most p_per_room of each room
-- (the newest: after an outage the server catches up with the latest
-- and backfills the rest), the first p_batch of those, in order.

CREATE FUNCTION matrix_federation_pending(p_server text, p_after bigint,
    p_upto bigint, p_per_room integer, p_batch integer)
RETURNS TABLE (seq bigint, event_nid bigint)
LANGUAGE sql STABLE
AS $fn$
    SELECT x.seq, x.event_nid FROM (
        SELECT o.seq, o.event_nid,
               row_number() OVER (PARTITION BY o.room_nid
                                  ORDER BY o.seq DESC) AS rn
          FROM federation_outbox o
         WHERE o.seq > p_after
           AND (p_upto IS NULL OR o.seq <= p_upto)
           AND EXISTS (SELECT 1 FROM room_state r
                        WHERE r.room_nid = o.room_nid
                          AND r.membership = 'join'
                          AND substr(r.state_key,
                                     strpos(r.state_key, ':') + 1)
                              = p_server)) x
     WHERE x.rn <= p_per_room
     ORDER BY x.seq
     LIMIT p_batch
$fn$;


-- Leases up to p_limit destinations that are due and owed something
-- (SKIP LOCKED, then lease_until: never two senders on one destination),
-- each with its transaction: the txnId (from the cursor and the end of
-- the transaction, both kept until it is answered) and the events.

CREATE FUNCTION matrix_federation_claim(p_now bigint, p_lease bigint,
    p_limit integer, p_per_room integer, p_batch integer)
RETURNS TABLE (server_name text, txn_id text, upto bigint, nids bigint[])
LANGUAGE plpgsql
AS $fn$
DECLARE
    d     record;
    top   bigint;
    a     bigint[];
    u     bigint;
BEGIN
    SELECT coalesce(max(o.seq), 0) INTO top FROM federation_outbox o;

    FOR d IN SELECT * FROM destinations t
              WHERE t.retry_at <= p_now AND t.lease_until <= p_now
                AND (t.last_sent < top OR t.txn_upto IS NOT NULL)
              ORDER BY t.retry_at, t.server_name
              LIMIT p_limit
              FOR UPDATE SKIP LOCKED
    LOOP
        IF d.txn_upto IS NOT NULL AND d.txn_nids IS NOT NULL THEN
            -- a retry: the very same events, whatever came since
            a := d.txn_nids;
            u := d.txn_upto;
        ELSE
            SELECT array_agg(p.event_nid ORDER BY p.seq), max(p.seq)
              INTO a, u
              FROM matrix_federation_pending(d.server_name, d.last_sent,
                                             d.txn_upto, p_per_room,
                                             p_batch) p;

            IF d.txn_upto IS NOT NULL THEN
                u := d.txn_upto;
            END IF;
        END IF;

        IF a IS NULL THEN
            -- nothing of its rooms: past it all
            UPDATE destinations t SET last_sent = greatest(t.last_sent,
                                                  coalesce(u, top)),
                   txn_upto = NULL, txn_nids = NULL
             WHERE t.server_name = d.server_name;
            CONTINUE;
        END IF;

        UPDATE destinations t SET txn_upto = u, txn_nids = a,
                                  lease_until = p_now + p_lease
         WHERE t.server_name = d.server_name;

        server_name := d.server_name;
        txn_id := d.last_sent || '-' || u;
        upto := u;
        nids := a;
        RETURN NEXT;
    END LOOP;
END
$fn$;


-- A transaction answered 200: the cursor moves past it, the back-off
-- ends, and what every destination is past is dropped.

CREATE FUNCTION matrix_federation_sent(p_server text, p_upto bigint)
RETURNS void
LANGUAGE plpgsql
AS $fn$
BEGIN
    UPDATE destinations t
       SET last_sent = greatest(t.last_sent, p_upto), txn_upto = NULL,
           txn_nids = NULL, failures = 0, retry_at = 0, lease_until = 0, last_error = NULL
     WHERE t.server_name = p_server AND t.txn_upto = p_upto;

    DELETE FROM federation_outbox o
     WHERE o.seq <= (SELECT min(t.last_sent) FROM destinations t);
END
$fn$;


-- Not answered, or not 200: the same transaction again after a back-off,
-- p_first ms doubling to p_max.

CREATE FUNCTION matrix_federation_failed(p_server text, p_upto bigint,
    p_now bigint, p_first bigint, p_max bigint, p_error text)
RETURNS void
LANGUAGE sql
AS $fn$
    UPDATE destinations t
       SET failures = t.failures + 1,
           retry_at = p_now + least(p_max,
                                    p_first * power(2, least(t.failures, 30))
                                    ::bigint),
           lease_until = 0, last_error = p_error
     WHERE t.server_name = p_server AND t.txn_upto = p_upto
$fn$;


-- The change feed: claims the first change (SKIP LOCKED), drops changes
-- of rooms that have no Matrix events yet (a room made later starts with
-- its history), locks the room, and returns what the events need:
--   {"seq", "kind", "room_nid", "room_id", "version", "old",
--    "message": the silo's row and author (NULL once deleted for good),
--    "original": the first event mirroring the message, as
--                matrix_event_parts() with "redacted_by",
--    "head": matrix_room_head() with the author and this server's user}
-- or NULL when there is nothing to do.  p_server: this server's name.

CREATE FUNCTION matrix_feed_next(p_server text)
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
        SELECT * INTO c FROM silo_changes
         ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED;

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
                WHERE s.room_id = c.room_id AND s.seq < c.seq)
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


-- The events made for a change (matrix_append_events() records), owed
-- to the other servers; the original's content kept before an edit in
-- place (p_content, for p_original), the message's events marked
-- redacted by the last event (p_redact: the silo message ID); the change
-- deleted.  Returns the nids.

CREATE FUNCTION matrix_feed_apply(p_room_nid integer, p_seq bigint,
    p_server text, p_events jsonb, p_original bigint, p_content text,
    p_redact text)
RETURNS bigint[]
LANGUAGE plpgsql
AS $fn$
DECLARE
    nids  bigint[];
    last  bigint;
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

    IF array_length(nids, 1) > 0 THEN
        PERFORM matrix_federation_enqueue(p_room_nid, nids, p_server);
    END IF;

    DELETE FROM silo_changes WHERE seq = p_seq;

    RETURN nids;
END
$fn$;
