-- 007_edus: reactions from Matrix for the silo, the silo users a message
-- mentions, and what typing notices and read receipts from other servers
-- need to reach the silo.


-- a received m.reaction: the silo's PUT reactions/ (or, for a silo
-- without them, a message replying to the reacted one)
ALTER TABLE silo_outbox DROP CONSTRAINT silo_outbox_kind;
ALTER TABLE silo_outbox ADD CONSTRAINT silo_outbox_kind
    CHECK (kind IN ('membership', 'invite', 'message', 'edit', 'deletion',
                    'reaction'));


-- matrix_outbox_context(), and: the silo message a reaction annotates
-- ("target", as for an edit), the reaction a redaction takes back (its
-- event ID in "reaction" when the redacted event is an m.reaction of the
-- room), and the silo users of p_server that m.mentions names, at most
-- 50 ("mentions": their silo IDs).  A localpart pinned in silo_localparts
-- is that user's whatever the users view says now.

CREATE FUNCTION matrix_outbox_context(p_room_nid integer, p_pdu text,
    p_server text)
RETURNS jsonb
LANGUAGE plpgsql STABLE
AS $fn$
DECLARE
    ev        jsonb;
    rel       jsonb;
    ids       jsonb;
    ctx       jsonb;
    redacts   text;
BEGIN
    ev := p_pdu::jsonb;
    rel := ev -> 'content' -> 'm.relates_to';
    ctx := matrix_outbox_context(p_room_nid, p_pdu);

    IF ev ->> 'type' = 'm.reaction' THEN
        ctx := ctx || jsonb_build_object('target',
                   matrix_silo_message_of(CASE
                       WHEN rel ->> 'rel_type' = 'm.annotation'
                       THEN rel ->> 'event_id' END));
    END IF;

    IF ev ->> 'type' = 'm.room.redaction' THEN
        redacts := coalesce(ev ->> 'redacts', ev -> 'content' ->> 'redacts');

        ctx := ctx || jsonb_build_object('reaction',
                   (SELECT e.event_id FROM events e
                     WHERE e.event_id = redacts
                       AND e.room_nid = p_room_nid
                       AND e.type = 'm.reaction'));
    END IF;

    ids := ev -> 'content' -> 'm.mentions' -> 'user_ids';

    IF jsonb_typeof(ids) = 'array' THEN
        ctx := ctx || jsonb_build_object('mentions',
            (SELECT coalesce(jsonb_agg(DISTINCT s.user_id), '[]')
               FROM (SELECT m.value FROM jsonb_array_elements_text(ids)
                            WITH ORDINALITY AS m(value, ord)
                      WHERE m.ord <= 50
                        AND m.value LIKE '@%'
                        AND substr(m.value, strpos(m.value, ':') + 1)
                            = p_server) i,
                    LATERAL (SELECT coalesce(
                        (SELECT l.silo_user_id FROM silo_localparts l
                          WHERE l.localpart = substr(split_part(i.value, ':',
                                                                1), 2)),
                        (SELECT u.user_id FROM users u
                          WHERE u.localpart = substr(split_part(i.value, ':',
                                                                1), 2)
                            AND u.deactivated IS NOT TRUE
                            AND NOT EXISTS (SELECT 1 FROM silo_localparts l
                                             WHERE l.silo_user_id
                                                   = u.user_id)))
                        AS user_id) s
              WHERE s.user_id IS NOT NULL));
    END IF;

    RETURN ctx;
END
$fn$;


-- Typing notices and read receipts (p_items: a JSON array of
-- {"room_id", "user_id", and for a receipt "event_id"}, of users of the
-- server that sent them): one row for each whose room is a silo room in
-- which its user is joined (so that its server has a user joined),
-- with the silo's room, the room's server ACL content (the caller
-- applies it), the user's display name in the room, and the silo message
-- the event of a receipt stands for, when it is one of the room's.
-- (PL/pgSQL: the silo's views need not exist when this is created.)

CREATE FUNCTION matrix_edu_targets(p_items jsonb)
RETURNS TABLE (ord bigint, silo_room_id text, acl jsonb, displayname text,
               message_id text)
LANGUAGE plpgsql STABLE
AS $fn$
BEGIN
    RETURN QUERY
    SELECT i.ord, r.silo_room_id,
           (SELECT coalesce(e.pdu::jsonb -> 'content', e.content::jsonb)
              FROM room_state s JOIN events e ON e.nid = s.event_nid
             WHERE s.room_nid = r.room_nid
               AND s.type = 'm.room.server_acl' AND s.state_key = ''),
           (me.pdu::jsonb -> 'content' ->> 'displayname'),
           (SELECT coalesce(e.silo_message_id,
                            (SELECT m.message_id FROM messages m
                              WHERE m.matrix_event_id = e.event_id
                              LIMIT 1))
              FROM events e
             WHERE e.event_id = i.v ->> 'event_id'
               AND e.room_nid = r.room_nid)
      FROM jsonb_array_elements(p_items) WITH ORDINALITY AS i(v, ord)
      JOIN matrix_rooms r ON r.room_id = i.v ->> 'room_id'
      JOIN room_state ms ON ms.room_nid = r.room_nid
                        AND ms.type = 'm.room.member'
                        AND ms.state_key = i.v ->> 'user_id'
                        AND ms.membership = 'join'
      JOIN events me ON me.nid = ms.event_nid
     WHERE r.silo_room_id IS NOT NULL
     ORDER BY i.ord;
END
$fn$;
