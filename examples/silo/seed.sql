-- The example silo's data: seven users, three rooms, 355 messages, with
-- threads, replies, edits and two deleted messages.  Deterministic: fixed
-- ids, timestamps and password salts, so a test can name any row.
--
-- Logins (user API: POST /api/login): alice / alice-password, bob /
-- bob-password, ... ; grace is deactivated.  Roles: alice owns general
-- and staff, bob moderates general and owns random; staff is private
-- (alice, bob, carol).
--
--   psql -v ON_ERROR_STOP=1 -d DB -f seed.sql       (after schema.sql)

BEGIN;

INSERT INTO chat.users (id, username, handle, display_name, password_hash,
                        created_at)
OVERRIDING SYSTEM VALUE VALUES
    (1, 'alice', 'alice', 'Alice Liddell', 'scrypt$16384$8$1$dj740HAM1L6nhA3qu2YZmg==$+1KuzJ+dJa8T+6wpZE10/J2+tKmiDmQ84wNNYn/uvLU=',
     timestamptz '2024-01-01 10:00:00+00'),
    (2, 'bob', 'bob', 'Bob Marley', 'scrypt$16384$8$1$mwI66YwNgJ+nt96DOcs7SQ==$okdBkKF8FFpljo0mgIHlhFdAHMHMZUQ1gKh4uKhbtWQ=',
     timestamptz '2024-01-02 10:00:00+00'),
    (3, 'carol', 'carol', 'Carol Danvers', 'scrypt$16384$8$1$UNzO1TIvVr5M7BvVBTrC0w==$Xgt6yKcQku3HVpT84zNdp2T0SDwWrTNPZGKWf40zvYI=',
     timestamptz '2024-01-03 10:00:00+00'),
    (4, 'dave', 'dave', 'Dave Lister', 'scrypt$16384$8$1$G9Xh2OtPMQHtpbu4xuaChg==$40yTRrmktgQKejMHjvMvk4uCCbB/ctnf1U3+si8N1AA=',
     timestamptz '2024-01-04 10:00:00+00'),
    (5, 'erin', 'erin', 'Erin Brockovich', 'scrypt$16384$8$1$2KfAA7drV8gd0TUBgRnnPQ==$KI8IaQnxeuLEunye/nxWkIYJuBkWh+JmMibRGxQFuvo=',
     timestamptz '2024-01-05 10:00:00+00'),
    (6, 'frank', 'frank', 'Frank Poole', 'scrypt$16384$8$1$VG3y9/LSTMF7O36A226+aw==$VRQnupUBPih0ykOZs53gWeocEZsHDaxcw8SdnJwrhwU=',
     timestamptz '2024-01-06 10:00:00+00'),
    (7, 'grace', 'grace', 'Grace Hopper', 'scrypt$16384$8$1$Kt3ZFZDyRAjgVtK2xHZUVg==$kXqsW6RsjOPczlyY92LyEktBpn051p87g1aKfWlGg7k=',
     timestamptz '2024-01-07 10:00:00+00');

UPDATE chat.users SET deactivated_at = '2024-02-01 12:00:00+00'
 WHERE username = 'grace';

INSERT INTO chat.rooms (id, slug, name, topic, visibility, created_by,
                        created_at)
OVERRIDING SYSTEM VALUE VALUES
    (1, 'general', 'General', 'Everything about the project: questions, '
        'help, announcements', 'public', 1, '2024-01-10 08:00:00+00'),
    (2, 'random', 'Random', 'Off-topic, lunch and coffee', 'public', 2,
        '2024-01-10 08:05:00+00'),
    (3, 'staff', 'Staff', 'Maintainers only', 'private', 1,
        '2024-01-10 08:10:00+00');

INSERT INTO chat.memberships (room_id, user_id, role, joined_at)
SELECT r, u, role, timestamptz '2024-01-10 09:00:00+00'
                   + (r * 10 + u) * interval '1 minute'
  FROM (VALUES (1, 1, 'owner'), (1, 2, 'moderator'), (1, 3, 'member'),
               (1, 4, 'member'), (1, 5, 'member'), (1, 6, 'member'),
               (1, 7, 'member'),
               (2, 2, 'owner'), (2, 1, 'member'), (2, 4, 'member'),
               (2, 5, 'member'), (2, 6, 'member'),
               (3, 1, 'owner'), (3, 2, 'moderator'), (3, 3, 'member'))
       AS m (r, u, role);

-- what people say, markdown source and the HTML silo.py renders for it
CREATE TEMP TABLE canned (n int PRIMARY KEY, source text, html text)
    ON COMMIT DROP;

INSERT INTO canned VALUES
    (1, 'Good morning everyone!',
         '<p>Good morning everyone!</p>'),
    (2, 'Has anyone tried the new release yet?',
         '<p>Has anyone tried the new release yet?</p>'),
    (3, 'Yes, upgraded this morning, no problems so far.',
         '<p>Yes, upgraded this morning, no problems so far.</p>'),
    (4, 'I get a **segfault** on startup with the default config :(',
         '<p>I get a <strong>segfault</strong> on startup with the default config :(</p>'),
    (5, 'Can you paste the backtrace? Use a code block please.',
         '<p>Can you paste the backtrace? Use a code block please.</p>'),
    (6, E'```\n#0  0x00007f3a in parse_config (path=0x0) at config.c:212\n#1  0x00007f3b in main (argc=1, argv=...) at main.c:40\n```',
         E'<pre><code>#0  0x00007f3a in parse_config (path=0x0) at config.c:212\n#1  0x00007f3b in main (argc=1, argv=...) at main.c:40\n</code></pre>'),
    (7, 'Looks like `path` is NULL, are you running it without `--config`?',
         '<p>Looks like <code>path</code> is NULL, are you running it without <code>--config</code>?</p>'),
    (8, 'Oh. Yes I was. Thanks!',
         '<p>Oh. Yes I was. Thanks!</p>'),
    (9, 'That should not crash though, I''ll open an issue.',
         '<p>That should not crash though, I''ll open an issue.</p>'),
    (10, 'Issue is here: https://example.org/tracker/1234',
         '<p>Issue is here: https://example.org/tracker/1234</p>'),
    (11, 'Lunch anyone? 🍜',
         '<p>Lunch anyone? 🍜</p>'),
    (12, 'The docs for the *plugin API* are out of date, the `init` hook takes two arguments now.',
         '<p>The docs for the <em>plugin API</em> are out of date, the <code>init</code> hook takes two arguments now.</p>'),
    (13, 'PR welcome 😉',
         '<p>PR welcome 😉</p>'),
    (14, E'Steps to reproduce:\n\n1. start the server\n2. create a room\n3. rename it twice',
         E'<p>Steps to reproduce:</p>\n<ol>\n<li>start the server</li>\n<li>create a room</li>\n<li>rename it twice</li>\n</ol>'),
    (15, 'Which database version are you on?',
         '<p>Which database version are you on?</p>'),
    (16, 'Postgres 15, from the Debian packages.',
         '<p>Postgres 15, from the Debian packages.</p>'),
    (17, 'Same here, can''t reproduce on 15.4.',
         '<p>Same here, can''t reproduce on 15.4.</p>'),
    (18, 'I think it''s the locale, my cluster is `sv_SE.UTF-8`.',
         '<p>I think it''s the locale, my cluster is <code>sv_SE.UTF-8</code>.</p>'),
    (19, 'Ah, collation again. Good catch!',
         '<p>Ah, collation again. Good catch!</p>'),
    (20, E'> the build fails on arm64\n\nIt builds fine for me on a Raspberry Pi 4.',
         E'<blockquote>\n<p>the build fails on arm64</p>\n</blockquote>\n<p>It builds fine for me on a Raspberry Pi 4.</p>'),
    (21, 'Meeting notes are in the wiki, see [this page](https://example.org/wiki/meetings/2024-01).',
         '<p>Meeting notes are in the wiki, see <a href="https://example.org/wiki/meetings/2024-01">this page</a>.</p>'),
    (22, 'Who is on call this weekend?',
         '<p>Who is on call this weekend?</p>'),
    (23, 'Me, ping me if anything breaks.',
         '<p>Me, ping me if anything breaks.</p>'),
    (24, 'Benchmarks: 12% faster on writes, ~3% on reads.',
         '<p>Benchmarks: 12% faster on writes, ~3% on reads.</p>'),
    (25, 'Nice! What changed?',
         '<p>Nice! What changed?</p>'),
    (26, 'Mostly batching the fsyncs, plus a smaller index on `(room_id, created_at)`.',
         '<p>Mostly batching the fsyncs, plus a smaller index on <code>(room_id, created_at)</code>.</p>'),
    (27, 'Can we get a release out before Friday?',
         '<p>Can we get a release out before Friday?</p>'),
    (28, 'I''d rather wait for the migration fix.',
         '<p>I''d rather wait for the migration fix.</p>'),
    (29, 'Agreed, let''s not rush it.',
         '<p>Agreed, let''s not rush it.</p>'),
    (30, 'Coffee break ☕',
         '<p>Coffee break ☕</p>'),
    (31, 'Welcome to the new folks who joined today! 👋',
         '<p>Welcome to the new folks who joined today! 👋</p>'),
    (32, 'Thanks! Happy to be here.',
         '<p>Thanks! Happy to be here.</p>'),
    (33, 'Where should newcomers start? Is there a list of good first issues?',
         '<p>Where should newcomers start? Is there a list of good first issues?</p>'),
    (34, 'Look for the `good-first-issue` label, and ask here anytime.',
         '<p>Look for the <code>good-first-issue</code> label, and ask here anytime.</p>'),
    (35, 'Please keep discussions about the roadmap in the *roadmap* thread.',
         '<p>Please keep discussions about the roadmap in the <em>roadmap</em> thread.</p>'),
    (36, '+1',
         '<p>+1</p>'),
    (37, 'Done, the fix is merged.',
         '<p>Done, the fix is merged.</p>'),
    (38, 'Rebased and force-pushed, CI is green now ✅',
         '<p>Rebased and force-pushed, CI is green now ✅</p>'),
    (39, 'Let''s continue this in a thread.',
         '<p>Let''s continue this in a thread.</p>'),
    (40, 'Sure.',
         '<p>Sure.</p>');

-- general: messages 1-300, one every five minutes or so from
-- 2024-01-15 09:00 UTC; random: 301-340; staff: 341-355
INSERT INTO chat.messages (id, room_id, user_id, source, html, created_at)
OVERRIDING SYSTEM VALUE
SELECT i,
       CASE WHEN i <= 300 THEN 1 WHEN i <= 340 THEN 2 ELSE 3 END,
       CASE WHEN i <= 300 THEN (ARRAY[1, 2, 3, 4, 5, 6, 1, 2, 3, 7])
                                [1 + (i * 7) % 10]
            WHEN i <= 340 THEN (ARRAY[2, 1, 4, 5, 6])[1 + (i * 3) % 5]
            ELSE (ARRAY[1, 2, 3])[1 + i % 3] END,
       c.source, c.html,
       timestamptz '2024-01-15 09:00:00+00'
           + (i - 1) * interval '5 minutes'
           + (i * 37 % 60) * interval '1 second'
  FROM generate_series(1, 355) AS i
  JOIN canned c ON c.n = 1 + (i * 13) % 40
 ORDER BY i;

-- threads in general: a root every 30 messages (10, 40, ... 280), three
-- messages of each thread follow it in time
UPDATE chat.messages SET thread_root = id - (id % 30 - 10)
 WHERE room_id = 1 AND id % 30 IN (11, 13, 14);

-- replies (quoting an earlier message, outside threads)
UPDATE chat.messages SET reply_to = id - 2
 WHERE id % 23 = 0 AND thread_root IS NULL AND id > 2;

-- edits in place: the text became the next canned line
UPDATE chat.messages m
   SET source = c.source, html = c.html,
       edited_at = m.created_at + interval '90 seconds'
  FROM canned c
 WHERE m.id % 50 = 20 AND c.n = 1 + (m.id * 13 + 1) % 40;

-- one message deleted by its author, one by a moderator (bob)
UPDATE chat.messages SET deleted_at = created_at + interval '30 seconds',
                         deleted_by = user_id
 WHERE id = 150;
UPDATE chat.messages SET deleted_at = created_at + interval '10 minutes',
                         deleted_by = 2
 WHERE id = 251;

-- new rows get ids after the seed's
ALTER TABLE chat.users ALTER COLUMN id RESTART WITH 101;
ALTER TABLE chat.rooms ALTER COLUMN id RESTART WITH 101;
ALTER TABLE chat.messages ALTER COLUMN id RESTART WITH 1001;

COMMIT;
