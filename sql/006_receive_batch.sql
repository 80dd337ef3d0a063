-- 006_receive_batch: a transaction's PDUs of one room checked and stored
-- together, in one database transaction, instead of one by one.
--
-- The room is locked once, what the checks need is read once (below),
-- the checks run in the module, in the order the PDUs came, against the
-- room's state as the batch changes it, and the accepted PDUs are
-- appended by one statement.
--
-- Events are looked up one by one by their unique ID (a scalar or
-- LATERAL ... LIMIT 1 subquery each), never joined as sets: the planner,
-- guessing a hundred rows for each JSON array, would hash the room's
-- events, and each batch would read the whole room.


-- What checking a batch of received events needs from the room, as one
-- JSON document, the room locked until the caller's transaction ends:
-- matrix_room_head()'s (prev, depth, state: with the member events of
-- p_members), and
--   "known":  the events of p_ids stored already (in any room);
--   "newest": the nid of the room's latest event;
--   "cited":  {event ID: {"nid", "depth", "pdu"}} of the events of
--             p_cited that the room has, "pdu" (text) only for those
--             named in p_auth (an object, by its keys) that can
--             authorise (kept whole, not soft-failed);
--   "joined": {server: its users joined} of the servers of p_servers
--             that have any.

CREATE FUNCTION matrix_receive_batch(p_room_nid integer, p_members jsonb,
    p_ids jsonb, p_cited jsonb, p_auth jsonb, p_servers jsonb)
RETURNS jsonb
LANGUAGE plpgsql
AS $fn$
DECLARE
    r  jsonb;
BEGIN
    r := matrix_room_head(p_room_nid, p_members, true);

    RETURN r || jsonb_build_object(
        'known', (SELECT coalesce(jsonb_agg(x.id), '[]')
                    FROM jsonb_array_elements_text(p_ids) AS x(id)
                   WHERE (SELECT e.nid FROM events e
                           WHERE e.event_id = x.id) IS NOT NULL),
        'newest', (SELECT max(e.nid) FROM events e
                    WHERE e.room_nid = p_room_nid),
        'cited', (SELECT coalesce(jsonb_object_agg(e.event_id,
                         jsonb_build_object(
                             'nid', e.nid, 'depth', e.depth,
                             'pdu', CASE WHEN NOT e.soft_failed
                                          AND p_auth ? e.event_id
                                         THEN e.pdu END)), '{}')
                    FROM (SELECT DISTINCT jsonb_array_elements_text(p_cited)
                                          AS id) x
                   CROSS JOIN LATERAL (SELECT e.* FROM events e
                                        WHERE e.event_id = x.id
                                          AND e.room_nid = p_room_nid
                                        LIMIT 1) e),
        'joined', (SELECT coalesce(jsonb_object_agg(j.server, j.n), '{}')
                     FROM (SELECT substr(s.state_key,
                                         strpos(s.state_key, ':') + 1)
                                      AS server, count(*) AS n
                             FROM room_state s
                            WHERE s.room_nid = p_room_nid
                              AND s.membership = 'join'
                            GROUP BY 1) j
                    WHERE p_servers ? j.server));
END
$fn$;


-- Appends received events in order, as matrix_append_received() would
-- one after the other (records of matrix_append_events() with
-- "soft_failed"), and returns their nids as a JSON array, null for one
-- refused.  What the module appends has been checked under the room's
-- lock, so all of it goes in at once, a statement for each table: the
-- nids taken first, in order, so that an event can name one before it;
-- the state left by the last event of each key; the extremities are the
-- events no event after them names.  Should anything be refused (an
-- event stored already, one named that the room lacks, a depth out of
-- line), nothing is, and each event goes through
-- matrix_append_received() in turn instead.

CREATE FUNCTION matrix_append_received_batch(p_room_nid integer,
    p_events jsonb)
RETURNS jsonb
LANGUAGE plpgsql
AS $fn$
DECLARE
    e     jsonb;
    n     integer;
    nids  bigint[];
    r     jsonb := '[]';
BEGIN
    n := jsonb_array_length(p_events);

    IF n = 0 THEN
        RETURN r;
    END IF;

    nids := ARRAY(SELECT s.nid
                    FROM (SELECT nextval(pg_get_serial_sequence('events',
                                                                'nid'))
                                 AS nid
                            FROM generate_series(1, n)) s
                   ORDER BY s.nid);

    WITH b AS (
        SELECT i.ord, i.e, i.e ->> 'event_id' AS id, nids[i.ord] AS nid,
               coalesce((i.e ->> 'soft_failed')::boolean, false) AS soft
          FROM jsonb_array_elements(p_events) WITH ORDINALITY AS i(e, ord)
    ),
    -- every event named, found in the room or earlier in the batch
    t AS (
        SELECT b.ord, k.kind, x.o,
               coalesce(ev.nid, b2.nid) AS nid,
               coalesce(ev.depth, (b2.e ->> 'depth')::bigint) AS depth
          FROM b
         CROSS JOIN (VALUES ('prev'), ('auth')) AS k(kind)
         CROSS JOIN LATERAL jsonb_array_elements_text(b.e -> k.kind)
                    WITH ORDINALITY AS x(id, o)
          LEFT JOIN LATERAL (SELECT ev.nid, ev.depth FROM events ev
                              WHERE ev.event_id = x.id
                                AND ev.room_nid = p_room_nid
                              LIMIT 1) ev ON true
          LEFT JOIN b b2 ON b2.id = x.id AND b2.ord < b.ord
    ),
    v AS (
        SELECT t.ord,
               array_agg(t.nid ORDER BY t.o)
                   FILTER (WHERE t.kind = 'prev') AS prev,
               array_agg(t.nid ORDER BY t.o)
                   FILTER (WHERE t.kind = 'auth') AS auth,
               bool_and(t.nid IS NOT NULL) AS found,
               max(t.depth) FILTER (WHERE t.kind = 'prev') AS deep
          FROM t
         GROUP BY t.ord
    ),
    w AS (
        SELECT b.ord, b.e, b.id, b.nid, b.soft,
               coalesce(v.prev, '{}') AS prev, coalesce(v.auth, '{}') AS auth,
               coalesce(v.found, true)
               AND (b.soft OR (b.e ->> 'depth')::bigint
                              <= coalesce(v.deep, 0) + 1)
               AND (SELECT ev.nid FROM events ev
                     WHERE ev.event_id = b.id) IS NULL
               AND NOT EXISTS (SELECT 1 FROM b b2
                                WHERE b2.id = b.id AND b2.ord < b.ord)
               AS ok
          FROM b LEFT JOIN v ON v.ord = b.ord
    )
    INSERT INTO events (nid, depth, origin_server_ts, room_nid, event_id,
                        type, state_key, sender, prev_nids, auth_nids, pdu,
                        soft_failed)
    SELECT w.nid, (w.e ->> 'depth')::bigint, (w.e ->> 'ts')::bigint,
           p_room_nid, w.id, w.e ->> 'type', w.e ->> 'state_key',
           w.e ->> 'sender', w.prev, w.auth, w.e ->> 'pdu', w.soft
      FROM w
     WHERE (SELECT bool_and(w2.ok) FROM w w2)
     ORDER BY w.ord;

    IF NOT FOUND THEN
        FOR e IN SELECT value FROM jsonb_array_elements(p_events) LOOP
            r := r || jsonb_build_array(matrix_append_received(
                     p_room_nid, e, coalesce((e ->> 'soft_failed')::boolean,
                                             false)));
        END LOOP;

        RETURN r;
    END IF;

    -- what the events that are not soft-failed change: the state (by
    -- the last of each key), the extremities, the silo's writes (in
    -- order), and the redactions their servers may make
    INSERT INTO room_state (room_nid, type, state_key, event_nid, membership)
    SELECT DISTINCT ON (ev.type, ev.state_key)
           p_room_nid, ev.type, ev.state_key, ev.nid,
           p_events -> (ord - 1)::integer ->> 'membership'
      FROM unnest(nids) WITH ORDINALITY AS w(nid, ord)
      JOIN events ev ON ev.nid = w.nid
     WHERE ev.state_key IS NOT NULL AND NOT ev.soft_failed
     ORDER BY ev.type, ev.state_key, ev.nid DESC
    ON CONFLICT (room_nid, type, state_key) DO UPDATE
       SET event_nid = EXCLUDED.event_nid,
           membership = EXCLUDED.membership;

    DELETE FROM forward_extremities f
     WHERE f.room_nid = p_room_nid
       AND f.event_nid IN (SELECT unnest(ev.prev_nids) FROM events ev
                            WHERE ev.nid = ANY (nids)
                              AND NOT ev.soft_failed);

    INSERT INTO forward_extremities (room_nid, event_nid)
    SELECT p_room_nid, ev.nid FROM events ev
     WHERE ev.nid = ANY (nids) AND NOT ev.soft_failed
       AND NOT EXISTS (SELECT 1 FROM events l
                        WHERE l.nid = ANY (nids) AND NOT l.soft_failed
                          AND ev.nid = ANY (l.prev_nids));

    INSERT INTO silo_outbox (event_id, room_nid, kind)
    SELECT i.e ->> 'event_id', p_room_nid, i.e ->> 'outbox'
      FROM jsonb_array_elements(p_events) WITH ORDINALITY AS i(e, ord)
     WHERE i.e ->> 'outbox' IS NOT NULL
       AND NOT coalesce((i.e ->> 'soft_failed')::boolean, false)
     ORDER BY i.ord;

    UPDATE events t SET redacted_by = x.nid
      FROM (SELECT DISTINCT ON (g.nid) g.nid AS target, ev.nid
              FROM events ev
              JOIN events g
                ON g.event_id = coalesce(ev.pdu::jsonb ->> 'redacts',
                                         ev.pdu::jsonb -> 'content'
                                                       ->> 'redacts')
               AND g.room_nid = p_room_nid AND g.nid < ev.nid
               AND g.redacted_by IS NULL
               AND substr(g.sender, strpos(g.sender, ':') + 1)
                   = substr(ev.sender, strpos(ev.sender, ':') + 1)
             WHERE ev.nid = ANY (nids) AND NOT ev.soft_failed
               AND ev.type = 'm.room.redaction'
             ORDER BY g.nid, ev.nid) x
     WHERE t.nid = x.target;

    RETURN to_jsonb(nids);
END
$fn$;


-- The state after each event of p_ids (of the room), as far as the auth
-- rules of the events received after it look (create, power levels, join
-- rules, the member events of p_members): {event ID: [PDU text, ...]}.
-- Events are in nid order, so it is the latest event of each key up to
-- it, soft-failed ones left out, as in matrix_state_before().  The state
-- before a received event is that after its latest prev event.

CREATE FUNCTION matrix_state_after(p_room_nid integer, p_ids jsonb,
    p_members jsonb)
RETURNS jsonb
LANGUAGE sql STABLE
AS $fn$
    SELECT coalesce(jsonb_object_agg(p.event_id, (
               SELECT coalesce(jsonb_agg(s.pdu)
                               FILTER (WHERE s.pdu IS NOT NULL), '[]')
                 FROM (SELECT 'm.room.create' AS type, '' AS state_key
                       UNION ALL SELECT 'm.room.power_levels', ''
                       UNION ALL SELECT 'm.room.join_rules', ''
                       UNION SELECT 'm.room.member', m.id
                               FROM jsonb_array_elements_text(p_members)
                                    AS m(id)) k
                CROSS JOIN LATERAL (SELECT e.pdu FROM events e
                                     WHERE e.room_nid = p_room_nid
                                       AND e.type = k.type
                                       AND e.state_key = k.state_key
                                       AND e.nid <= p.nid
                                       AND NOT e.soft_failed
                                     ORDER BY e.nid DESC
                                     LIMIT 1) s)), '{}')
      FROM (SELECT DISTINCT x.id FROM jsonb_array_elements_text(p_ids)
                                      AS x(id)) i
     CROSS JOIN LATERAL (SELECT ev.event_id, ev.nid FROM events ev
                          WHERE ev.event_id = i.id
                            AND ev.room_nid = p_room_nid
                          LIMIT 1) p
$fn$;
