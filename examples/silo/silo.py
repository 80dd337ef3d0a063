#!/usr/bin/python3
"""The example silo: a small Gitter/Slack-like chat server.

It stands for "the chat app that already exists" in front of which
ngx_http_matrix_module is loaded.  Two HTTP APIs:

  /api/...               the app's own, for its users (login, rooms,
                         messages, edits, deletions, renames, a live
                         stream per room)
  /internal/matrix/...   the internal API of docs/silo-contract.md, by
                         which the module writes what Matrix users do;
                         bearer token protected, every write keyed by its
                         Matrix event ID

  python3 silo.py --dsn DSN --listen 127.0.0.1:8090 \\
      --internal-token-file FILE [--internal-listen 127.0.0.1:8091]

With --internal-listen the internal API is served only on that address
(keep it off the public listener); without it, on the main one.

Debian 12: apt-get install python3-aiohttp python3-asyncpg
python3-markdown python3-bleach
"""

import argparse
import asyncio
import base64
import datetime
import functools
import hashlib
import hmac
import html as htmllib
import json
import logging
import os
import re
import secrets
import sys

import asyncpg
import bleach
import markdown
from aiohttp import web

log = logging.getLogger("silo")

MAX_BODY_BYTES = 256 * 1024
MAX_TEXT = 32 * 1024
MAX_TS = 253402300800000            # ms, year 10000: what a datetime holds

USERNAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,31}$")
# room versions 1-3 "$opaque:server", later ones "$" + url-safe base64
EVENT_ID_RE = re.compile(r"^\$[\x21-\x7e]{1,254}$")
MATRIX_USER_RE = re.compile(r"^@[\x21-\x39\x3b-\x7e]+:[A-Za-z0-9.:\[\]-]+$")
ID_RE = re.compile(r"^[1-9][0-9]{0,17}$")

# what rendered HTML may keep: the Matrix spec's suggested subset
TAGS = ["a", "b", "blockquote", "br", "code", "del", "em", "h1", "h2",
        "h3", "h4", "h5", "h6", "hr", "i", "li", "ol", "p", "pre", "s",
        "span", "strike", "strong", "sub", "sup", "table", "tbody", "td",
        "th", "thead", "tr", "u", "ul"]
ATTRS = {"a": ["href", "title"], "code": ["class"], "ol": ["start"]}


# ------------------------------------------------------------- helpers

class Refused(Exception):
    """A 4xx answer: {"error": message}."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


def render_markdown(source):
    md = markdown.Markdown(extensions=["fenced_code", "sane_lists"])
    return sanitise(md.convert(source))


def sanitise(html):
    return bleach.clean(html, tags=TAGS, attributes=ATTRS,
                        protocols=["http", "https", "mailto"], strip=True)


def plain_to_html(text):
    return "<p>" + htmllib.escape(text).replace("\n", "<br />\n") + "</p>"


SCRYPT = (2 ** 14, 8, 1)


def hash_password(password, salt=None):
    n, r, p = SCRYPT
    salt = salt or os.urandom(16)
    h = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p,
                       maxmem=64 * 1024 * 1024, dklen=32)
    b64 = lambda b: base64.b64encode(b).decode()
    return f"scrypt${n}${r}${p}${b64(salt)}${b64(h)}"


def check_password(password, stored):
    try:
        kind, n, r, p, salt, want = stored.split("$")
        if kind != "scrypt":
            return False
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt),
                             n=int(n), r=int(r), p=int(p),
                             maxmem=64 * 1024 * 1024, dklen=32)
        return hmac.compare_digest(got, base64.b64decode(want))
    except (ValueError, TypeError):
        return False


# checked against when the user does not exist, so that the answer takes
# as long either way
DUMMY_HASH = hash_password("no such user", b"0123456789abcdef")


async def password_ok(password, stored):
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(
        None, check_password, password, stored or DUMMY_HASH)


def ts_of(ms):
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc)


def ms_of(t):
    return None if t is None else int(t.timestamp() * 1000)


async def json_body(request):
    try:
        body = await request.json(loads=json.loads)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise Refused(400, "body is not JSON (or nested too deep)")
    if not isinstance(body, dict):
        raise Refused(400, "body is not a JSON object")
    storable(body)
    return body


def storable(v):
    """Refuses what Postgres text cannot hold (NUL, lone surrogates): a
    request that would fail the same way every time is a 4xx, not a 500
    that the module would retry for ever."""
    if isinstance(v, str):
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            raise Refused(400, "a string holds a lone surrogate")
        if "\0" in v:
            raise Refused(400, "a string holds NUL")
    elif isinstance(v, dict):
        for k, x in v.items():
            storable(k)
            storable(x)
    elif isinstance(v, list):
        for x in v:
            storable(x)


def field(body, name, kind, required=True, maxlen=None):
    """body[name], of type kind; None when absent or null and optional."""
    v = body.get(name)
    if v is None:
        if required:
            raise Refused(400, f"missing '{name}'")
        return None
    if kind is int:
        ok = isinstance(v, int) and not isinstance(v, bool)
    else:
        ok = isinstance(v, kind)
    if not ok:
        raise Refused(400, f"'{name}' must be {kind.__name__}")
    if maxlen is not None and len(v) > maxlen:
        raise Refused(400, f"'{name}' is too long")
    return v


def silo_id(value, what):
    """A silo id from the API (a decimal string); unknown ids are 404."""
    if not isinstance(value, str) or not ID_RE.match(value):
        raise Refused(404, f"no such {what}")
    return int(value)


def message_json(row):
    return {
        "message_id": str(row["id"]),
        "room_id": str(row["room_id"]),
        "user_id": str(row["user_id"]),
        "username": row["username"],
        "display_name": row["display_name"],
        "matrix_user_id": row["matrix_user_id"],
        "text": None if row["deleted_at"] else row["source"],
        "html": None if row["deleted_at"] else row["html"],
        "created_at": ms_of(row["created_at"]),
        "edited_at": ms_of(row["edited_at"]),
        "deleted_at": ms_of(row["deleted_at"]),
        "reply_to": row["reply_to"] and str(row["reply_to"]),
        "thread_root": row["thread_root"] and str(row["thread_root"]),
    }


# taken by signups and renames, so that two cannot claim one name at once
NAMES_LOCK = "SELECT pg_advisory_xact_lock(hashtext('chat.users names'))"

MESSAGE_SELECT = """
    SELECT m.id, m.room_id, m.user_id, u.username, u.display_name,
           u.matrix_user_id, m.source, m.html, m.created_at, m.edited_at,
           m.deleted_at, m.reply_to, m.thread_root
      FROM chat.messages m JOIN chat.users u ON u.id = m.user_id
"""


# --------------------------------------------------------- live streams

class Hub:
    """What the silo's own clients are told, per room: every write, from
    its users or from Matrix, goes through here."""

    def __init__(self):
        self.rooms = {}

    def subscribe(self, room_id):
        q = asyncio.Queue(maxsize=256)
        self.rooms.setdefault(room_id, set()).add(q)
        return q

    def unsubscribe(self, room_id, q):
        subs = self.rooms.get(room_id)
        if subs:
            subs.discard(q)
            if not subs:
                del self.rooms[room_id]

    def publish(self, room_id, kind, message_id):
        for q in list(self.rooms.get(room_id, ())):
            try:
                q.put_nowait({"type": kind, "message_id": str(message_id)})
            except asyncio.QueueFull:      # a stalled reader: drop it
                self.unsubscribe(room_id, q)


# ------------------------------------------------------------ the app

class Silo:

    def __init__(self, pool, token):
        self.pool = pool
        self.token = token.encode()
        self.hub = Hub()

    # ---- the user-facing API

    async def healthz(self, request):
        async with self.pool.acquire() as conn:
            await conn.fetchval("SELECT 1")
        return web.json_response({"ok": True})

    async def user(self, request, conn):
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            raise Refused(401, "log in first")
        digest = hashlib.sha256(auth[7:].strip().encode()).digest()
        row = await conn.fetchrow(
            """SELECT u.* FROM chat.sessions s JOIN chat.users u
                 ON u.id = s.user_id
                WHERE s.token_sha256 = $1 AND u.deactivated_at IS NULL""",
            digest)
        if row is None:
            raise Refused(401, "unknown or expired token")
        return row

    async def room_for(self, conn, user, room_id, write=False):
        room = await conn.fetchrow(
            """SELECT r.*, m.role FROM chat.rooms r
                 LEFT JOIN chat.memberships m
                   ON m.room_id = r.id AND m.user_id = $2
                WHERE r.id = $1""", silo_id(room_id, "room"), user["id"])
        if room is None or (room["visibility"] == "private"
                            and room["role"] is None):
            raise Refused(404, "no such room")
        if write and room["role"] is None:
            # a public room: posting joins it, as on Gitter
            await conn.execute(
                """INSERT INTO chat.memberships (room_id, user_id)
                   VALUES ($1, $2) ON CONFLICT DO NOTHING""",
                room["id"], user["id"])
        return room

    async def signup(self, request):
        body = await json_body(request)
        username = field(body, "username", str, maxlen=32)
        password = field(body, "password", str, maxlen=1024)
        display = field(body, "display_name", str, False, 256) or username
        if not USERNAME_RE.match(username):
            raise Refused(400, "usernames are [a-z0-9._-], 1 to 32")
        if len(password) < 8:
            raise Refused(400, "passwords have at least 8 characters")
        loop = asyncio.get_running_loop()
        pwhash = await loop.run_in_executor(None, hash_password, password)
        async with self.pool.acquire() as conn, conn.transaction():
            # a name once taken, even if since renamed away, stays taken:
            # handles are never reused
            await conn.execute(NAMES_LOCK)
            if await conn.fetchval(
                    """SELECT 1 FROM chat.users
                        WHERE username = $1 OR handle = $1""", username):
                raise Refused(409, "username taken")
            uid = await conn.fetchval(
                """INSERT INTO chat.users
                          (username, handle, display_name, password_hash)
                   VALUES ($1, $1, $2, $3) RETURNING id""",
                username, display, pwhash)
        return web.json_response({"user_id": str(uid)})

    async def login(self, request):
        uid = await self.password_login(await json_body(request),
                                        "username", "username")
        token = secrets.token_urlsafe(32)
        async with self.pool.acquire() as conn:
            await conn.execute(
                """INSERT INTO chat.sessions (token_sha256, user_id)
                   VALUES ($1, $2)""",
                hashlib.sha256(token.encode()).digest(), uid)
        return web.json_response({"token": token, "user_id": str(uid)})

    async def password_login(self, body, key, column):
        """The id of the active user whose column ("username" or
        "handle") is body[key], if body["password"] is theirs; else 403."""
        name = field(body, key, str, maxlen=255)
        password = field(body, "password", str, maxlen=1024)
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(
                f"""SELECT id, password_hash FROM chat.users
                     WHERE {column} = $1 AND deactivated_at IS NULL""", name)
        # the hash is checked even for no user, so that both take as long
        ok = await password_ok(password, row and row["password_hash"])
        if row is None or not ok:
            raise Refused(403, f"wrong {key} or password")
        return row["id"]

    async def logout(self, request):
        async with self.pool.acquire() as conn:
            await self.user(request, conn)
            digest = hashlib.sha256(
                request.headers["Authorization"][7:].strip().encode()).digest()
            await conn.execute(
                "DELETE FROM chat.sessions WHERE token_sha256 = $1", digest)
        return web.json_response({})

    async def me(self, request):
        async with self.pool.acquire() as conn:
            u = await self.user(request, conn)
        return web.json_response({
            "user_id": str(u["id"]), "username": u["username"],
            "display_name": u["display_name"], "avatar_url": u["avatar_url"]})

    async def update_me(self, request):
        """Rename (username), display name, avatar."""
        body = await json_body(request)
        username = field(body, "username", str, False, 32)
        display = field(body, "display_name", str, False, 256)
        avatar = field(body, "avatar_url", str, False, 1024)
        if username is not None and not USERNAME_RE.match(username):
            raise Refused(400, "usernames are [a-z0-9._-], 1 to 32")
        async with self.pool.acquire() as conn, conn.transaction():
            u = await self.user(request, conn)
            if username is not None and username != u["username"]:
                await conn.execute(NAMES_LOCK)
                if await conn.fetchval(
                        """SELECT 1 FROM chat.users
                            WHERE id <> $2
                              AND (username = $1 OR handle = $1)""",
                        username, u["id"]):
                    raise Refused(409, "username taken")
            await conn.execute(
                """UPDATE chat.users
                      SET username = coalesce($2, username),
                          display_name = coalesce($3, display_name),
                          avatar_url = coalesce($4, avatar_url)
                    WHERE id = $1""", u["id"], username, display, avatar)
        return web.json_response({})

    async def rooms(self, request):
        async with self.pool.acquire() as conn:
            u = await self.user(request, conn)
            rows = await conn.fetch(
                """SELECT r.id, r.slug, r.name, r.topic, r.visibility,
                          m.role
                     FROM chat.rooms r LEFT JOIN chat.memberships m
                       ON m.room_id = r.id AND m.user_id = $1
                    WHERE r.visibility = 'public' OR m.role IS NOT NULL
                    ORDER BY r.id""", u["id"])
        return web.json_response([
            {"room_id": str(r["id"]), "slug": r["slug"], "name": r["name"],
             "topic": r["topic"], "visibility": r["visibility"],
             "role": r["role"]} for r in rows])

    async def join(self, request):
        async with self.pool.acquire() as conn:
            u = await self.user(request, conn)
            await self.room_for(conn, u, request.match_info["room"], True)
        return web.json_response({})

    async def leave(self, request):
        async with self.pool.acquire() as conn:
            u = await self.user(request, conn)
            room = await self.room_for(conn, u, request.match_info["room"])
            await conn.execute(
                """DELETE FROM chat.memberships
                    WHERE room_id = $1 AND user_id = $2""",
                room["id"], u["id"])
        return web.json_response({})

    async def messages(self, request):
        """Newest first; ?before=MESSAGE_ID&limit=N pages back."""
        q = request.query
        try:
            limit = min(max(int(q.get("limit", "50")), 1), 200)
        except ValueError:
            raise Refused(400, "limit is a number")
        before = silo_id(q["before"], "message") if "before" in q else None
        async with self.pool.acquire() as conn:
            u = await self.user(request, conn)
            room = await self.room_for(conn, u, request.match_info["room"])
            rows = await conn.fetch(
                MESSAGE_SELECT + """
                 WHERE m.room_id = $1 AND ($2::bigint IS NULL OR m.id < $2)
                 ORDER BY m.created_at DESC, m.id DESC LIMIT $3""",
                room["id"], before, limit)
        return web.json_response([message_json(r) for r in rows])

    async def post(self, request):
        body = await json_body(request)
        text = field(body, "text", str, maxlen=MAX_TEXT)
        reply_to = field(body, "reply_to", str, False)
        thread_root = field(body, "thread_root", str, False)
        if not text.strip():
            raise Refused(400, "empty message")
        html = render_markdown(text)
        async with self.pool.acquire() as conn, conn.transaction():
            u = await self.user(request, conn)
            room = await self.room_for(conn, u, request.match_info["room"],
                                       write=True)
            reply_to, thread_root = await self.relations(
                conn, room["id"], reply_to, thread_root)
            row = await conn.fetchrow(
                """INSERT INTO chat.messages (room_id, user_id, source, html,
                                             reply_to, thread_root)
                   VALUES ($1, $2, $3, $4, $5, $6) RETURNING id""",
                room["id"], u["id"], text, html, reply_to, thread_root)
            msg = await conn.fetchrow(MESSAGE_SELECT + " WHERE m.id = $1",
                                      row["id"])
        self.hub.publish(room["id"], "message", row["id"])
        return web.json_response(message_json(msg))

    # Typing and reading are not stored here; the Matrix module hears of
    # them through NOTIFY matrix_silo_ephemeral (docs/silo-contract.md,
    # "Typing and read receipts").
    async def typing(self, request):
        body = await json_body(request)
        typing = field(body, "typing", bool)
        async with self.pool.acquire() as conn:
            u = await self.user(request, conn)
            room = await self.room_for(conn, u, request.match_info["room"])
            await self.ephemeral(conn, {
                "type": "typing", "room_id": str(room["id"]),
                "user_id": str(u["id"]), "typing": typing})
        return web.json_response({})

    async def read(self, request):
        body = await json_body(request)
        message_id = silo_id(field(body, "message_id", str), "message")
        async with self.pool.acquire() as conn:
            u = await self.user(request, conn)
            room = await self.room_for(conn, u, request.match_info["room"])
            if await conn.fetchval(
                    """SELECT 1 FROM chat.messages
                        WHERE id = $1 AND room_id = $2""",
                    message_id, room["id"]) is None:
                raise Refused(404, "no such message in this room")
            await self.ephemeral(conn, {
                "type": "receipt", "room_id": str(room["id"]),
                "user_id": str(u["id"]), "message_id": str(message_id),
                "ts": ms_of(datetime.datetime.now(datetime.timezone.utc))})
        return web.json_response({})

    async def ephemeral(self, conn, notice):
        await conn.execute("SELECT pg_notify('matrix_silo_ephemeral', $1)",
                           json.dumps(notice))

    async def own_message(self, conn, user, message_id, deleting=False):
        m = await conn.fetchrow(
            """SELECT m.*, ms.role FROM chat.messages m
                 LEFT JOIN chat.memberships ms
                   ON ms.room_id = m.room_id AND ms.user_id = $2
                 JOIN chat.rooms r ON r.id = m.room_id
                WHERE m.id = $1
                  AND (r.visibility = 'public' OR ms.role IS NOT NULL)
                  FOR UPDATE OF m""",
            silo_id(message_id, "message"), user["id"])
        if m is None:
            raise Refused(404, "no such message")
        if m["deleted_at"] is not None:
            raise Refused(409, "message is deleted")
        if m["user_id"] != user["id"] and not (
                deleting and m["role"] in ("owner", "moderator")):
            raise Refused(403, "not your message")
        return m

    async def edit(self, request):
        body = await json_body(request)
        text = field(body, "text", str, maxlen=MAX_TEXT)
        if not text.strip():
            raise Refused(400, "empty message")
        async with self.pool.acquire() as conn, conn.transaction():
            u = await self.user(request, conn)
            m = await self.own_message(conn, u, request.match_info["message"])
            await conn.execute(
                """UPDATE chat.messages SET source = $2, html = $3,
                          edited_at = now() WHERE id = $1""",
                m["id"], text, render_markdown(text))
        self.hub.publish(m["room_id"], "edit", m["id"])
        return web.json_response({})

    async def delete(self, request):
        async with self.pool.acquire() as conn, conn.transaction():
            u = await self.user(request, conn)
            m = await self.own_message(conn, u, request.match_info["message"],
                                       deleting=True)
            await conn.execute(
                """UPDATE chat.messages SET deleted_at = now(),
                          deleted_by = $2 WHERE id = $1""", m["id"], u["id"])
        self.hub.publish(m["room_id"], "deletion", m["id"])
        return web.json_response({})

    async def react(self, request):
        """A reaction of the user to a message of a room they can see
        (reacting joins a public room, as posting does); the same key
        again is the same reaction."""
        key = await self.reaction_key(request)
        async with self.pool.acquire() as conn, conn.transaction():
            u = await self.user(request, conn)
            m = await self.seen_message(conn, u, request.match_info["message"])
            await self.room_for(conn, u, str(m["room_id"]), write=True)
            rid = await conn.fetchval(
                """INSERT INTO chat.reactions (message_id, user_id, key)
                   VALUES ($1, $2, $3)
                   ON CONFLICT (message_id, user_id, key)
                      WHERE removed_at IS NULL AND event_id IS NULL
                   DO NOTHING RETURNING id""", m["id"], u["id"], key)
            if rid is None:
                rid = await conn.fetchval(
                    """SELECT id FROM chat.reactions
                        WHERE message_id = $1 AND user_id = $2 AND key = $3
                          AND removed_at IS NULL AND event_id IS NULL""",
                    m["id"], u["id"], key)
        self.hub.publish(m["room_id"], "reaction", m["id"])
        return web.json_response({"reaction_id": str(rid)})

    async def unreact(self, request):
        """The user's own reaction with that key taken back."""
        key = await self.reaction_key(request)
        async with self.pool.acquire() as conn, conn.transaction():
            u = await self.user(request, conn)
            m = await self.seen_message(conn, u, request.match_info["message"])
            if await conn.fetchval(
                    """UPDATE chat.reactions SET removed_at = now()
                        WHERE message_id = $1 AND user_id = $2 AND key = $3
                          AND removed_at IS NULL AND event_id IS NULL
                    RETURNING id""", m["id"], u["id"], key) is None:
                raise Refused(404, "no such reaction")
        self.hub.publish(m["room_id"], "unreaction", m["id"])
        return web.json_response({})

    async def reaction_key(self, request):
        key = field(await json_body(request), "key", str, maxlen=255)
        if not key:
            raise Refused(400, "empty 'key'")
        return key

    async def seen_message(self, conn, user, message_id):
        """A message not deleted, in a room the user can see."""
        m = await conn.fetchrow(
            """SELECT m.id, m.room_id FROM chat.messages m
                 JOIN chat.rooms r ON r.id = m.room_id
                 LEFT JOIN chat.memberships ms
                   ON ms.room_id = m.room_id AND ms.user_id = $2
                WHERE m.id = $1 AND m.deleted_at IS NULL
                  AND (r.visibility = 'public' OR ms.role IS NOT NULL)""",
            silo_id(message_id, "message"), user["id"])
        if m is None:
            raise Refused(404, "no such message")
        return m

    async def stream(self, request):
        """Server-sent events: one line of JSON per write in the room."""
        async with self.pool.acquire() as conn:
            u = await self.user(request, conn)
            room = await self.room_for(conn, u, request.match_info["room"])
        resp = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        q = self.hub.subscribe(room["id"])
        try:
            await resp.write(b": ok\n\n")
            while True:
                try:
                    ev = await asyncio.wait_for(q.get(), 25)
                    await resp.write(
                        b"data: " + json.dumps(ev).encode() + b"\n\n")
                except asyncio.TimeoutError:
                    await resp.write(b": ping\n\n")
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.hub.unsubscribe(room["id"], q)
        return resp

    async def relations(self, conn, room_id, reply_to, thread_root):
        """Checks reply_to and thread_root (silo message ids) against the
        room; a thread's root is its first message (one level, as in
        Matrix): a reply in a thread names the root."""
        ids = []
        for what, v in (("reply_to", reply_to), ("thread_root", thread_root)):
            if v is None:
                ids.append(None)
                continue
            if not ID_RE.match(v):
                raise Refused(400, f"'{what}': no such message")
            m = await conn.fetchrow(
                "SELECT room_id, thread_root FROM chat.messages WHERE id = $1",
                int(v))
            if m is None or m["room_id"] != room_id:
                raise Refused(400, f"'{what}': no such message in this room")
            if what == "thread_root" and m["thread_root"] is not None:
                ids.append(m["thread_root"])
            else:
                ids.append(int(v))
        return ids

    # ---- the internal API (docs/silo-contract.md)

    def check_token(self, request):
        auth = request.headers.get("Authorization", "")
        given = auth[7:].strip().encode() if auth.startswith("Bearer ") \
            else b""
        if not given or not hmac.compare_digest(given, self.token):
            raise web.HTTPUnauthorized(
                text=json.dumps({"error": "missing or wrong token"}),
                content_type="application/json",
                headers={"WWW-Authenticate": 'Bearer realm="silo-internal"'})

    async def internal_write(self, request, *, kind, apply):
        """The frame of every write keyed by an event ID: the token, the
        fields all writes have, the answer to a replay, the room and the
        sender, one transaction.  apply(conn, w) does the rest and returns
        the answer; w.announce names the message the silo's own clients
        are told about."""
        self.check_token(request)
        w = Write()
        w.event_id = request.match_info["event_id"]
        if not EVENT_ID_RE.match(w.event_id):
            raise Refused(400, "not a Matrix event ID")
        w.body = await json_body(request)
        room_id = field(w.body, "room_id", str)
        sender = field(w.body, "sender", dict)
        w.ts = field(w.body, "ts", int)
        if not 0 <= w.ts < MAX_TS:
            raise Refused(400, "'ts' out of range")
        if not MATRIX_USER_RE.match(field(sender, "user_id", str,
                                          maxlen=255)):
            raise Refused(400, "'sender.user_id' is not a Matrix user ID")
        async with self.pool.acquire() as conn, conn.transaction():
            done = await self.prior_write(conn, w.event_id)
            if done is not None:
                return web.json_response(self.replay(done, kind))
            w.room_id = await self.room(conn, room_id)
            w.user_id = await self.virtual_user(conn, sender, w.ts)
            answer = await apply(conn, w)
        if w.announce is not None:
            self.hub.publish(w.room_id, kind, w.announce)
        return web.json_response(answer)

    async def prior_write(self, conn, eid):
        """(kind, message id) of the write already done under this event
        ID, if any."""
        mid = await conn.fetchval(
            "SELECT id FROM chat.messages WHERE matrix_event_id = $1", eid)
        if mid is not None:
            return "message", mid
        mid = await conn.fetchval(
            "SELECT message_id FROM chat.reactions WHERE event_id = $1", eid)
        if mid is not None:
            return "reaction", mid
        return await conn.fetchrow(
            """SELECT kind, message_id FROM chat.matrix_writes
                WHERE event_id = $1""", eid)

    def replay(self, done, kind):
        """The answer of the first time, or 409 for an event ID that was
        used by another kind of write."""
        if done[0] != kind:
            raise Refused(409, f"event ID already used by another write "
                               f"({done[0]})")
        return {"message_id": str(done[1])} if kind == "message" else {}

    async def apply_once(self, conn, w, kind, message_id, sql, *args):
        """Notes the write as done under its event ID, then runs sql;
        nothing when a concurrent request with the same event ID won."""
        if await conn.fetchval(
                """INSERT INTO chat.matrix_writes
                          (event_id, kind, room_id, message_id)
                   VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING
                   RETURNING true""",
                w.event_id, kind, w.room_id, message_id):
            await conn.execute(sql, *args)
            w.announce = message_id

    async def virtual_user(self, conn, sender, ts):
        """The silo user standing for a Matrix user, made on first sight;
        its name and avatar follow the sender's latest profile."""
        mxid = sender["user_id"]
        # a field left out keeps what the silo has; null clears it
        keep_display = "displayname" not in sender
        keep_avatar = "avatar_url" not in sender
        display = sender.get("displayname")
        if not isinstance(display, str) or not display.strip():
            display = mxid[1:].split(":", 1)[0]
        display = display[:256]
        avatar = sender.get("avatar_url")
        if not (isinstance(avatar, str) and len(avatar) <= 1024
                and re.match(r"^https?://", avatar)):
            avatar = None
        row = await conn.fetchrow(
            """INSERT INTO chat.users AS u (display_name, avatar_url,
                                           matrix_user_id, created_at)
               VALUES ($1, $2, $3, $4)
               ON CONFLICT (matrix_user_id) DO UPDATE
                  SET display_name = CASE WHEN $5 THEN u.display_name
                                          ELSE EXCLUDED.display_name END,
                      avatar_url = CASE WHEN $6 THEN u.avatar_url
                                        ELSE EXCLUDED.avatar_url END
                WHERE NOT (($5 OR u.display_name = EXCLUDED.display_name)
                           AND ($6 OR u.avatar_url
                                  IS NOT DISTINCT FROM EXCLUDED.avatar_url))
               RETURNING id, deactivated_at""",
            display, avatar, mxid, ts_of(ts), keep_display, keep_avatar)
        if row is None:
            row = await conn.fetchrow(
                """SELECT id, deactivated_at FROM chat.users
                    WHERE matrix_user_id = $1""", mxid)
        if row["deactivated_at"] is not None:
            raise Refused(403, "this Matrix user is banned here")
        return row["id"]

    async def room(self, conn, room_id):
        rid = silo_id(room_id, "room")
        if not await conn.fetchval(
                "SELECT 1 FROM chat.rooms WHERE id = $1", rid):
            raise Refused(404, "no such room")
        return rid

    async def room_message(self, conn, w):
        m = await conn.fetchrow(
            """SELECT id, user_id, deleted_at FROM chat.messages
                WHERE id = $1 AND room_id = $2 FOR UPDATE""",
            silo_id(field(w.body, "message_id", str), "message"), w.room_id)
        if m is None:
            raise Refused(404, "no such message in this room")
        return m

    def content(self, w):
        """body and html of a message or an edit: the html sanitised, or
        made from the plain text."""
        text = field(w.body, "body", str, maxlen=MAX_TEXT)
        html = field(w.body, "html", str, False, 4 * MAX_TEXT)
        return text, sanitise(html) if html is not None \
            else plain_to_html(text)

    async def new_message(self, conn, w):
        text, html = self.content(w)
        reply_to, thread_root = await self.relations(
            conn, w.room_id, field(w.body, "reply_to", str, False),
            field(w.body, "thread_root", str, False))
        mentions = field(w.body, "mentions", list, False) or []
        if len(mentions) > 50 or not all(isinstance(m, str) and ID_RE.match(m)
                                         for m in mentions):
            raise Refused(400, "'mentions' are at most 50 user IDs")
        await conn.execute(
            """INSERT INTO chat.memberships (room_id, user_id, joined_at)
               VALUES ($1, $2, $3) ON CONFLICT DO NOTHING""",
            w.room_id, w.user_id, ts_of(w.ts))
        mid = await conn.fetchval(
            """INSERT INTO chat.messages
                      (room_id, user_id, source, html, created_at,
                       reply_to, thread_root, matrix_event_id)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
               ON CONFLICT (matrix_event_id) DO NOTHING RETURNING id""",
            w.room_id, w.user_id, text, html, ts_of(w.ts), reply_to,
            thread_root, w.event_id)
        if mid is None:         # the same event, concurrently
            mid = await conn.fetchval(
                "SELECT id FROM chat.messages WHERE matrix_event_id = $1",
                w.event_id)
        else:
            w.announce = mid
            # the silo's own users only; an unknown ID is no mention
            await conn.execute(
                """INSERT INTO chat.mentions (message_id, user_id)
                   SELECT $1, u.id FROM chat.users u
                    WHERE u.id = ANY ($2::bigint[])
                      AND u.matrix_user_id IS NULL
                   ON CONFLICT DO NOTHING""",
                mid, [int(m) for m in mentions])
        return {"message_id": str(mid)}

    async def edit_message(self, conn, w):
        text, html = self.content(w)
        m = await self.room_message(conn, w)
        if m["user_id"] != w.user_id:
            raise Refused(403, "only the author edits a message")
        if m["deleted_at"] is not None:
            raise Refused(409, "message is deleted")
        await self.apply_once(
            conn, w, "edit", m["id"],
            """UPDATE chat.messages SET source = $2, html = $3,
                      edited_at = $4 WHERE id = $1""",
            m["id"], text, html, ts_of(w.ts))
        return {}

    async def delete_message(self, conn, w):
        m = await self.room_message(conn, w)
        await self.author_or_moderator(conn, w, m["user_id"])
        # a message deleted already keeps its first deletion
        await self.apply_once(
            conn, w, "deletion", m["id"],
            """UPDATE chat.messages SET deleted_at = $2, deleted_by = $3
                WHERE id = $1 AND deleted_at IS NULL""",
            m["id"], ts_of(w.ts), w.user_id)
        return {}

    async def new_reaction(self, conn, w):
        key = field(w.body, "key", str, maxlen=255)
        if not key:
            raise Refused(400, "empty 'key'")
        m = await self.room_message(conn, w)
        if m["deleted_at"] is not None:
            raise Refused(409, "message is deleted")
        if await conn.fetchval(
                """INSERT INTO chat.reactions (event_id, message_id, user_id,
                                              key, created_at)
                   VALUES ($1, $2, $3, $4, $5)
                   ON CONFLICT (event_id) DO NOTHING RETURNING true""",
                w.event_id, m["id"], w.user_id, key, ts_of(w.ts)):
            w.announce = m["id"]
        return {}

    async def remove_reaction(self, conn, w):
        """A reaction taken back, by its author or a moderator."""
        r = await conn.fetchrow(
            """SELECT r.message_id, r.user_id FROM chat.reactions r
                 JOIN chat.messages m ON m.id = r.message_id
                WHERE r.event_id = $1 AND m.room_id = $2 FOR UPDATE OF r""",
            field(w.body, "reaction_event_id", str, maxlen=255), w.room_id)
        if r is None:
            raise Refused(404, "no such reaction in this room")
        await self.author_or_moderator(conn, w, r["user_id"])
        await self.apply_once(
            conn, w, "unreaction", r["message_id"],
            """UPDATE chat.reactions SET removed_at = $2
                WHERE event_id = $1 AND removed_at IS NULL""",
            w.body["reaction_event_id"], ts_of(w.ts))
        return {}

    async def author_or_moderator(self, conn, w, author):
        """Who may take back what author wrote: the author, or a room
        owner or moderator."""
        if author != w.user_id and await conn.fetchval(
                """SELECT role FROM chat.memberships
                    WHERE room_id = $1 AND user_id = $2""",
                w.room_id, w.user_id) not in ("owner", "moderator"):
            raise Refused(403, "not the author nor a moderator")

    async def membership(self, conn, w):
        membership = field(w.body, "membership", str)
        if membership not in ("join", "leave"):
            raise Refused(400, "'membership' is join or leave")
        if membership == "join":
            sql, args = """INSERT INTO chat.memberships
                                  (room_id, user_id, joined_at)
                           VALUES ($1, $2, $3) ON CONFLICT DO NOTHING""", \
                (w.room_id, w.user_id, ts_of(w.ts))
        else:
            sql, args = """DELETE FROM chat.memberships
                            WHERE room_id = $1 AND user_id = $2""", \
                (w.room_id, w.user_id)
        await self.apply_once(conn, w, "membership", None, sql, *args)
        return {}

    async def i_invite(self, request):
        """PUT invites/{event_id}: a user of ours invited to a room on
        another Matrix server; kept until the user answers it."""
        self.check_token(request)
        event_id = request.match_info["event_id"]
        if not EVENT_ID_RE.match(event_id):
            raise Refused(400, "not a Matrix event ID")
        body = await json_body(request)
        storable(body)
        room_id = field(body, "room_id", str, maxlen=255)
        room_name = field(body, "room_name", str, required=False, maxlen=255)
        sender = field(body, "sender", dict)
        inviter = field(sender, "user_id", str, maxlen=255)
        uid = silo_id(field(body, "user_id", str), "user")
        ts = field(body, "ts", int)
        if not room_id.startswith("!") or not MATRIX_USER_RE.match(inviter):
            raise Refused(400, "'room_id' or 'sender.user_id' is malformed")
        if not 0 <= ts < MAX_TS:
            raise Refused(400, "'ts' out of range")
        async with self.pool.acquire() as conn:
            if not await conn.fetchval(
                    """SELECT 1 FROM chat.users
                        WHERE id = $1 AND matrix_user_id IS NULL""", uid):
                raise Refused(404, "no such user")
            await conn.execute(
                """INSERT INTO chat.matrix_invites (event_id, user_id,
                          matrix_room_id, room_name, inviter, invited_at)
                   VALUES ($1, $2, $3, $4, $5, $6)
                   ON CONFLICT (event_id) DO NOTHING""",
                event_id, uid, room_id, room_name, inviter, ts_of(ts))
        return web.json_response({})

    async def ephemeral_write(self, request, apply):
        """The frame of typing notices and read receipts: not keyed by
        an event ID (the latest one wins, and losing one is harmless);
        the room, the sender's virtual user, one transaction."""
        self.check_token(request)
        body = await json_body(request)
        sender = field(body, "sender", dict)
        if not MATRIX_USER_RE.match(field(sender, "user_id", str,
                                          maxlen=255)):
            raise Refused(400, "'sender.user_id' is not a Matrix user ID")
        now = int(datetime.datetime.now(datetime.timezone.utc).timestamp()
                  * 1000)
        async with self.pool.acquire() as conn, conn.transaction():
            room_id = await self.room(conn, field(body, "room_id", str))
            user_id = await self.virtual_user(conn, sender, now)
            await apply(conn, body, room_id, user_id)
        return web.json_response({})

    async def i_typing(self, request):
        """PUT typing: who is typing where, until the timeout."""
        async def apply(conn, body, room_id, user_id):
            typing = field(body, "typing", bool)
            timeout = field(body, "timeout", int)
            if not 0 < timeout <= 600000:
                raise Refused(400, "'timeout' out of range")
            await conn.execute(
                """INSERT INTO chat.typing AS t (room_id, user_id, until)
                   VALUES ($1, $2, CASE WHEN $3 THEN now()
                                        + $4 * interval '1 ms' END)
                   ON CONFLICT (room_id, user_id)
                   DO UPDATE SET until = EXCLUDED.until""",
                room_id, user_id, typing, timeout)
        return await self.ephemeral_write(request, apply)

    async def i_receipt(self, request):
        """PUT receipts: how far a Matrix user has read; never back."""
        async def apply(conn, body, room_id, user_id):
            mid = silo_id(field(body, "message_id", str), "message")
            ts = field(body, "ts", int)
            if not 0 <= ts < MAX_TS:
                raise Refused(400, "'ts' out of range")
            if not await conn.fetchval(
                    """SELECT 1 FROM chat.messages
                        WHERE id = $1 AND room_id = $2""", mid, room_id):
                raise Refused(404, "no such message in this room")
            await conn.execute(
                """INSERT INTO chat.read_markers AS r
                          (room_id, user_id, message_id, read_at)
                   VALUES ($1, $2, $3, $4)
                   ON CONFLICT (room_id, user_id)
                   DO UPDATE SET message_id = EXCLUDED.message_id,
                                 read_at = EXCLUDED.read_at
                   WHERE r.message_id <= EXCLUDED.message_id""",
                room_id, user_id, mid, ts_of(ts))
        return await self.ephemeral_write(request, apply)

    async def i_password(self, request):
        self.check_token(request)
        # matrix.sql maps localpart to the immutable handle
        uid = await self.password_login(await json_body(request),
                                        "localpart", "handle")
        return web.json_response({"user_id": str(uid)})


class Write:
    """One write of the internal API, as internal_write() hands it on."""
    event_id = body = ts = room_id = user_id = announce = None


# -------------------------------------------------------------- wiring

@web.middleware
async def errors(request, handler):
    """Every refusal is a JSON {"error": ...}; a database that cannot be
    reached is a 503 and any other failure a 500 (the module retries
    both)."""
    try:
        return await handler(request)
    except Refused as e:
        return web.json_response({"error": e.message}, status=e.status)
    except web.HTTPException as e:
        if e.content_type == "application/json":
            raise
        return web.json_response({"error": e.reason}, status=e.status,
                                 headers={k: v for k, v in e.headers.items()
                                          if k in ("Allow",)})
    except (OSError, asyncpg.exceptions.PostgresConnectionError,
            asyncpg.exceptions.InterfaceError,
            asyncpg.exceptions.CannotConnectNowError) as e:
        log.warning("%s %s: database unavailable: %s",
                    request.method, request.path, e)
        return web.json_response({"error": "try again later"}, status=503)
    except Exception:
        log.exception("%s %s", request.method, request.path)
        return web.json_response({"error": "internal error"}, status=500)


# the user API: method, path, Silo method
USER_ROUTES = """
    GET     /healthz                     healthz
    POST    /api/signup                  signup
    POST    /api/login                   login
    POST    /api/logout                  logout
    GET     /api/me                      me
    PATCH   /api/me                      update_me
    GET     /api/rooms                   rooms
    POST    /api/rooms/{room}/join       join
    POST    /api/rooms/{room}/leave      leave
    GET     /api/rooms/{room}/messages   messages
    POST    /api/rooms/{room}/messages   post
    GET     /api/rooms/{room}/stream     stream
    POST    /api/rooms/{room}/typing     typing
    POST    /api/rooms/{room}/read       read
    PATCH   /api/messages/{message}      edit
    DELETE  /api/messages/{message}      delete
    POST    /api/messages/{message}/reactions   react
    DELETE  /api/messages/{message}/reactions   unreact
"""


def user_routes(app, silo):
    for line in USER_ROUTES.strip().splitlines():
        method, path, name = line.split()
        app.router.add_route(method, path, getattr(silo, name))


def internal_routes(app, silo):
    p = "/internal/matrix/"
    r = app.router
    for path, kind, apply in (("messages", "message", silo.new_message),
                              ("edits", "edit", silo.edit_message),
                              ("deletions", "deletion", silo.delete_message),
                              ("memberships", "membership", silo.membership),
                              ("reactions", "reaction", silo.new_reaction),
                              ("unreactions", "unreaction",
                               silo.remove_reaction)):
        r.add_put(p + path + "/{event_id}",
                  functools.partial(silo.internal_write, kind=kind,
                                    apply=apply))
    r.add_put(p + "invites/{event_id}", silo.i_invite)
    r.add_put(p + "typing", silo.i_typing)
    r.add_put(p + "receipts", silo.i_receipt)
    r.add_post(p + "auth/password", silo.i_password)


def read_token(path):
    with open(path, encoding="utf-8") as f:
        token = f.read().strip()
    if len(token) < 16:
        sys.exit(f"silo: {path}: the token must have at least 16 characters")
    if os.stat(path).st_mode & 0o077:
        log.warning("%s: readable by other users", path)
    return token


def host_port(s):
    host, _, port = s.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError("expected HOST:PORT")
    return host.strip("[]"), int(port)


def connect_args(dsn):
    """asyncpg takes URIs; libpq's "key=value ..." form is turned into
    keyword arguments."""
    if re.match(r"^postgres(ql)?://", dsn):
        return {"dsn": dsn}
    names = {"host": "host", "hostaddr": "host", "port": "port",
             "dbname": "database", "user": "user", "password": "password",
             "sslmode": "ssl", "application_name": None,
             "connect_timeout": "timeout"}
    kw = {}
    for m in re.finditer(r"\s*(\w+)\s*=\s*('((?:[^'\\]|\\.)*)'|\S+)", dsn):
        key = m.group(1)
        value = m.group(3) if m.group(3) is not None else m.group(2)
        value = re.sub(r"\\(.)", r"\1", value)
        if key not in names:
            raise SystemExit(f"silo: --dsn: unknown key '{key}'")
        if names[key] == "port" or names[key] == "timeout":
            value = int(value)
        if names[key]:
            kw[names[key]] = value
    return kw


async def main(args):
    token = read_token(args.internal_token_file)
    pool = await asyncpg.create_pool(**connect_args(args.dsn),
                                     min_size=1, max_size=10)
    silo = Silo(pool, token)

    apps = []
    app = web.Application(middlewares=[errors], client_max_size=MAX_BODY_BYTES)
    app["silo"] = silo
    user_routes(app, silo)
    if args.internal_listen:
        iapp = web.Application(middlewares=[errors],
                               client_max_size=MAX_BODY_BYTES)
        iapp["silo"] = silo
        internal_routes(iapp, silo)
        apps.append((iapp, args.internal_listen))
    else:
        internal_routes(app, silo)
    apps.insert(0, (app, args.listen))

    runners = []
    for a, (host, port) in apps:
        runner = web.AppRunner(a, access_log=log if args.verbose else None)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        runners.append(runner)
        log.info("listening on %s:%d", host, port)
    print("silo: ready", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        for runner in runners:
            await runner.cleanup()
        await pool.close()


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dsn", required=True,
                   help="Postgres DSN (postgresql://... or key=value)")
    p.add_argument("--listen", type=host_port, default=("127.0.0.1", 8090),
                   help="HOST:PORT of the user API (127.0.0.1:8090)")
    p.add_argument("--internal-listen", type=host_port,
                   help="HOST:PORT of the internal API alone")
    p.add_argument("--internal-token-file", required=True,
                   help="file holding the internal API's bearer token")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    logging.basicConfig(level=logging.INFO if args.verbose else
                        logging.WARNING, format="silo: %(message)s")
    try:
        asyncio.run(main(args))
    except KeyboardInterrupt:
        pass
