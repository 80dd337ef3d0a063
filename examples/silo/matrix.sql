-- The mapping of the example silo to Matrix: the file an operator writes
-- (docs/silo-contract.md).  Four views in the schema the module reads
-- (and the optional fifth, reactions), the indexes they need, a read-only
-- role for the module, and the change feed on the message and reaction
-- tables.  The silo's own tables are not changed.
--
-- Run after the module's schema exists (matrix-tool migrate), as a role
-- that owns chat.* (here: the database owner):
--
--   psql -v ON_ERROR_STOP=1 -d DB -f matrix.sql

BEGIN;

CREATE SCHEMA matrix_silo;

-- Local people only: the virtual users that stand for Matrix users
-- (matrix_user_id set) already have a Matrix ID on their own server.
-- localpart is the handle, the username at signup: it never changes and
-- is never reused, so a rename in the silo keeps the Matrix ID.
CREATE VIEW matrix_silo.users AS
SELECT u.id::text                     AS user_id,
       u.handle                       AS localpart,
       u.display_name,
       u.avatar_url,
       u.deactivated_at IS NOT NULL   AS deactivated
  FROM chat.users u
 WHERE u.matrix_user_id IS NULL;

-- Private rooms get no alias: an alias is public by nature.
-- member_count counts what room_members lists (local people, no virtual
-- users); a silo this small counts on each read, a large one would keep
-- a counter column up to date and expose that.
CREATE VIEW matrix_silo.rooms AS
SELECT r.id::text                                       AS room_id,
       CASE WHEN r.visibility = 'public' THEN r.slug END AS alias,
       r.name,
       r.topic,
       r.visibility = 'public'                          AS is_public,
       r.created_at,
       r.avatar_url,
       (SELECT count(*)
          FROM chat.memberships m
          JOIN chat.users u ON u.id = m.user_id
         WHERE m.room_id = r.id AND u.matrix_user_id IS NULL)
                                                        AS member_count
  FROM chat.rooms r;

CREATE VIEW matrix_silo.room_members AS
SELECT m.room_id::text                 AS room_id,
       m.user_id::text                 AS user_id,
       CASE m.role WHEN 'owner'     THEN 'admin'
                   WHEN 'moderator' THEN 'moderator'
                   ELSE 'member' END   AS role,
       m.joined_at
  FROM chat.memberships m
  JOIN chat.users u ON u.id = m.user_id
 WHERE u.matrix_user_id IS NULL;

-- A deleted message keeps its row (deleted_at set) but not its text.
CREATE VIEW matrix_silo.messages AS
SELECT m.id::text                                        AS message_id,
       m.room_id::text                                   AS room_id,
       m.user_id::text                                   AS user_id,
       CASE WHEN m.deleted_at IS NULL THEN m.source ELSE '' END AS body,
       CASE WHEN m.deleted_at IS NULL THEN m.html END    AS html,
       m.created_at,
       m.edited_at,
       m.deleted_at,
       m.reply_to::text                                  AS reply_to,
       m.thread_root::text                               AS thread_root,
       m.matrix_event_id
  FROM chat.messages m;

-- Optional (the silo has reactions): every reaction, of local people and
-- of Matrix users (the module wrote those: matrix_event_id set).  A
-- removed one keeps its row, with removed_at.
CREATE VIEW matrix_silo.reactions AS
SELECT r.id::text          AS reaction_id,
       r.message_id::text  AS message_id,
       r.user_id::text     AS user_id,
       r.key,
       r.created_at,
       r.removed_at,
       r.event_id          AS matrix_event_id
  FROM chat.reactions r;

-- The module looks rows up by the views' text columns: "id::text = $1"
-- cannot use a bigint primary key, so each cast gets its own index
-- (the expressions must be written exactly as in the views).
CREATE INDEX matrix_users_id ON chat.users ((id::text));
CREATE INDEX matrix_rooms_id ON chat.rooms ((id::text));
CREATE INDEX matrix_rooms_alias ON chat.rooms
    ((CASE WHEN visibility = 'public' THEN slug END));
CREATE INDEX matrix_members ON chat.memberships
    ((room_id::text), (user_id::text));
CREATE INDEX matrix_messages_id ON chat.messages ((id::text));
CREATE INDEX matrix_messages_room ON chat.messages
    ((room_id::text), created_at);
CREATE INDEX matrix_reactions_id ON chat.reactions ((id::text));
-- localpart: chat.users.handle is UNIQUE already

-- The module's role reads the views and nothing else of the silo.  In
-- production create it first, with a password, and run matrix-tool
-- migrate as it, so that it owns its own schema "matrix".
DO $$
BEGIN
    CREATE ROLE matrix_module LOGIN;
EXCEPTION WHEN duplicate_object THEN
    NULL;
END
$$;

GRANT USAGE ON SCHEMA matrix_silo TO matrix_module;
GRANT SELECT ON ALL TABLES IN SCHEMA matrix_silo TO matrix_module;

-- The change feed: each insert, edit and deletion of a message is noted
-- in matrix.silo_changes and announced (NOTIFY matrix_silo_changes).
-- Arguments: the message id column, the room id column, and the columns
-- the view takes body and html from: edits here are in place, so the
-- feed keeps the text an edit replaces (the original Matrix event is
-- rebuilt from it).
CREATE TRIGGER matrix_feed
    AFTER INSERT OR UPDATE OR DELETE ON chat.messages
    FOR EACH ROW EXECUTE FUNCTION
    matrix.silo_change_trigger('id', 'room_id', 'source', 'html');

-- And of reactions: each one added or removed becomes a change too.
-- Arguments: the reaction id column and the message id column (the
-- module finds the room through the message).
CREATE TRIGGER matrix_feed
    AFTER INSERT OR UPDATE OR DELETE ON chat.reactions
    FOR EACH ROW EXECUTE FUNCTION
    matrix.silo_reaction_trigger('id', 'message_id');

COMMIT;
