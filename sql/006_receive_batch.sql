-- 006_receive_batch: a transaction's PDUs of one room checked and stored
-- together, in one database transaction, instead of one by one.
--
-- The room is locked once, what the checks need is read once (below),
-- the checks run in the module, in the order the PDUs came, against the
-- room's state as the batch changes it, and the accepted PDUs are
-- appended by one statement.


-- What checking a batch of received events needs from the room, as one
-- JSON document, the room locked until the caller's transaction ends:
-- matrix_room_head()'s (prev, depth, state: with the member events of
-- p_members), and
--   "known":  the events of p_ids stored already (in any room);
--   "cited":  {event ID: {"depth", "pdu"}} of the events of p_cited that
--             the room has, "pdu" (text) only for those of p_auth that
--             can authorise (kept whole, not soft-failed);
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
        'known', (SELECT coalesce(jsonb_agg(e.event_id), '[]')
                    FROM events e
                   WHERE e.event_id IN (SELECT jsonb_array_elements_text(
                                                   p_ids))),
        'cited', (SELECT coalesce(jsonb_object_agg(e.event_id,
                         jsonb_build_object(
                             'depth', e.depth,
                             'pdu', CASE WHEN NOT e.soft_failed
                                          AND p_auth ? e.event_id
                                         THEN e.pdu END)), '{}')
                    FROM events e
                   WHERE e.event_id IN (SELECT jsonb_array_elements_text(
                                                   p_cited))
                     AND e.room_nid = p_room_nid),
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


-- Appends received events in order (matrix_append_received() each:
-- records of matrix_append_events() with "soft_failed"), as a JSON array
-- of their nids, null for one refused.

CREATE FUNCTION matrix_append_received_batch(p_room_nid integer,
    p_events jsonb)
RETURNS jsonb
LANGUAGE plpgsql
AS $fn$
DECLARE
    e     jsonb;
    nids  jsonb := '[]';
BEGIN
    FOR e IN SELECT value FROM jsonb_array_elements(p_events) LOOP
        nids := nids || jsonb_build_array(matrix_append_received(
                    p_room_nid, e, coalesce((e ->> 'soft_failed')::boolean,
                                            false)));
    END LOOP;

    RETURN nids;
END
$fn$;
