-- The example silo's own schema: a small Gitter/Slack-like chat.
--
-- Nothing here knows about Matrix except what any app that accepts
-- messages from another network needs: "virtual" users standing for
-- remote Matrix users (matrix_user_id), the Matrix event ID of a message
-- written through the internal API (matrix_event_id, unique: a retry
-- finds the first write), and the internal writes already applied
-- (matrix_writes).  The mapping to Matrix is in matrix.sql.
--
--   psql -v ON_ERROR_STOP=1 -d DB -f schema.sql

CREATE SCHEMA chat;

CREATE TABLE chat.users (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- the name people log in with and see; can be renamed
    username        text UNIQUE
                    CHECK (username ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$'),
    -- the username at signup, never changed and never reused: a rename
    -- changes username only (see the stable ID rule in
    -- docs/silo-contract.md)
    handle          text UNIQUE
                    CHECK (handle ~ '^[a-z0-9][a-z0-9._-]{0,31}$'),
    display_name    text NOT NULL,
    avatar_url      text,
    -- scrypt$N$r$p$salt$hash (base64), NULL for virtual users
    password_hash   text,
    -- set for the virtual user standing for a Matrix user (@x:server)
    matrix_user_id  text UNIQUE,
    created_at      timestamptz NOT NULL DEFAULT now(),
    deactivated_at  timestamptz,
    CHECK ((matrix_user_id IS NULL) = (handle IS NOT NULL)),
    CHECK ((matrix_user_id IS NULL) = (username IS NOT NULL))
);

CREATE TABLE chat.rooms (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    slug            text NOT NULL UNIQUE
                    CHECK (slug ~ '^[a-z0-9][a-z0-9_-]{0,63}$'),
    name            text NOT NULL,
    topic           text,
    visibility      text NOT NULL DEFAULT 'public'
                    CHECK (visibility IN ('public', 'private')),
    avatar_url      text,
    created_by      bigint REFERENCES chat.users,
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE chat.memberships (
    room_id         bigint NOT NULL REFERENCES chat.rooms ON DELETE CASCADE,
    user_id         bigint NOT NULL REFERENCES chat.users,
    role            text NOT NULL DEFAULT 'member'
                    CHECK (role IN ('owner', 'moderator', 'member')),
    joined_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (room_id, user_id)
);

CREATE INDEX ON chat.memberships (user_id);

CREATE TABLE chat.messages (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    room_id         bigint NOT NULL REFERENCES chat.rooms ON DELETE CASCADE,
    user_id         bigint NOT NULL REFERENCES chat.users,
    source          text NOT NULL,             -- markdown, as typed
    html            text,                      -- rendered and sanitised
    created_at      timestamptz NOT NULL DEFAULT now(),
    edited_at       timestamptz,
    deleted_at      timestamptz,
    deleted_by      bigint REFERENCES chat.users,
    reply_to        bigint REFERENCES chat.messages,
    thread_root     bigint REFERENCES chat.messages,
    matrix_event_id text UNIQUE
);

CREATE INDEX ON chat.messages (room_id, created_at);
CREATE INDEX ON chat.messages (thread_root) WHERE thread_root IS NOT NULL;

-- login sessions of the user-facing API: sha256 of the bearer token
CREATE TABLE chat.sessions (
    token_sha256    bytea PRIMARY KEY,
    user_id         bigint NOT NULL REFERENCES chat.users,
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- edits, deletions and memberships applied through the internal API, by
-- Matrix event ID: the same event again is answered, not applied again
CREATE TABLE chat.matrix_writes (
    event_id        text PRIMARY KEY,
    kind            text NOT NULL
                    CHECK (kind IN ('edit', 'deletion', 'membership',
                                    'unreaction')),
    room_id         bigint NOT NULL REFERENCES chat.rooms ON DELETE CASCADE,
    message_id      bigint REFERENCES chat.messages,
    applied_at      timestamptz NOT NULL DEFAULT now()
);

-- invites of silo users to rooms on other Matrix servers, by Matrix event
-- ID, until the user answers them
CREATE TABLE chat.matrix_invites (
    event_id        text PRIMARY KEY,
    user_id         bigint NOT NULL REFERENCES chat.users ON DELETE CASCADE,
    matrix_room_id  text NOT NULL,
    room_name       text,
    inviter         text NOT NULL,
    invited_at      timestamptz NOT NULL
);

-- reactions to messages, of the silo's users and of Matrix users; a
-- Matrix user's has the Matrix event ID it was written for.  A removed
-- one keeps its row (removed_at), so that the same event again does not
-- bring it back.  A user reacts with a key once at a time (Matrix users
-- excepted: their server decides).
CREATE TABLE chat.reactions (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id        text UNIQUE,
    message_id      bigint NOT NULL REFERENCES chat.messages ON DELETE CASCADE,
    user_id         bigint NOT NULL REFERENCES chat.users,
    key             text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    removed_at      timestamptz
);

CREATE INDEX ON chat.reactions (message_id);
CREATE UNIQUE INDEX ON chat.reactions (message_id, user_id, key)
    WHERE removed_at IS NULL AND event_id IS NULL;

-- the silo users a message mentions
CREATE TABLE chat.mentions (
    message_id      bigint NOT NULL REFERENCES chat.messages ON DELETE CASCADE,
    user_id         bigint NOT NULL REFERENCES chat.users,
    PRIMARY KEY (message_id, user_id)
);

-- who is typing where, until when; and how far each user has read
CREATE TABLE chat.typing (
    room_id         bigint NOT NULL REFERENCES chat.rooms ON DELETE CASCADE,
    user_id         bigint NOT NULL REFERENCES chat.users,
    until           timestamptz,               -- NULL: stopped
    PRIMARY KEY (room_id, user_id)
);

CREATE TABLE chat.read_markers (
    room_id         bigint NOT NULL REFERENCES chat.rooms ON DELETE CASCADE,
    user_id         bigint NOT NULL REFERENCES chat.users,
    message_id      bigint NOT NULL REFERENCES chat.messages ON DELETE CASCADE,
    read_at         timestamptz NOT NULL,
    PRIMARY KEY (room_id, user_id)
);
