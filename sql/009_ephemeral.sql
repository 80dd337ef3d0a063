-- 009_ephemeral: silo users' typing notices and read receipts, for the
-- other servers in their rooms (src/ngx_http_matrix_ephemeral.c).
--
-- One row per other server with a user joined to the room, when the silo
-- room has Matrix events and the silo user is joined to it on Matrix;
-- none otherwise.  event_id: the event of p_message (a receipt's): the
-- first event mirroring it, or the Matrix event it was written for; NULL
-- when there is none.  p_server: this server's name.

CREATE FUNCTION matrix_ephemeral_resolve(p_server text, p_room text,
    p_user text, p_message text)
RETURNS TABLE (room_id text, user_id text, event_id text, server text)
LANGUAGE plpgsql STABLE
AS $fn$
BEGIN
    -- plpgsql: the silo's views (users, messages) are found at run time,
    -- on the module's search path
    RETURN QUERY
    WITH r AS (
        SELECT m.room_nid, m.room_id,
               '@' || u.localpart || ':' || p_server AS user_id
          FROM matrix_rooms m, users u
         WHERE m.silo_room_id = p_room AND m.created_ts IS NOT NULL
           AND u.user_id = p_user
    )
    SELECT r.room_id, r.user_id,
           coalesce((SELECT x.event_id FROM events x
                      WHERE x.silo_message_id = p_message
                        AND x.recipe IS NOT NULL
                        AND x.room_nid = r.room_nid
                      ORDER BY x.nid LIMIT 1),
                    -- a Matrix user's message, written by the module
                    (SELECT x.event_id FROM messages ms, events x
                      WHERE ms.message_id = p_message
                        AND x.event_id = ms.matrix_event_id
                        AND x.room_nid = r.room_nid)),
           d.server
      FROM r,
           LATERAL (SELECT DISTINCT substr(s.state_key,
                                           strpos(s.state_key, ':') + 1)
                                    AS server
                      FROM room_state s
                     WHERE s.room_nid = r.room_nid AND s.membership = 'join')
           d
     WHERE d.server <> p_server
       AND EXISTS (SELECT 1 FROM room_state s
                    WHERE s.room_nid = r.room_nid AND s.membership = 'join'
                      AND s.type = 'm.room.member'
                      AND s.state_key = r.user_id)
     ORDER BY d.server;
END
$fn$;
