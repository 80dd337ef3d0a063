#!/usr/bin/python3
"""bench/fed.py: the remote server's side of bench/join and bench/backfill.

remote.test is played by the fake homeserver (t/tools/fake_hs.py, started
by bench/xmatrix/peers.pl); this script asks it, through its control URL,
for the X-Matrix headers and the signed join events, and sends the
requests to the module itself, one at a time on one keep-alive
connection, timing only those requests (the fake's signing is left out).

  fed.py create NGINX CONTROL PREFIX ROOM...
      In each room the first make_join, which makes the room's events,
      timed, and its send_join (user @PREFIX0:remote.test).  Prints a
      line a room, and a summary line a room: "summary ROOM create_ms=MS".

  fed.py join NGINX CONTROL JOINS PREFIX ROOM...
      JOINS make_join + send_join pairs of new users @PREFIXn:remote.test
      (n from 1), the rooms in turn (user n joins each room, then user
      n+1).  Prints some of the joins, and last a summary line a room,
      "summary ROOM KEY=VALUE ...": make_join and send_join and pair medians and 90th percentiles (ms),
      the send_join answer's size (bytes, first and last join), its
      state's size and m.room.member events, and its auth chain's size
      (last join).

  fed.py sign CONTROL METHOD DESTINATION URIS OUT
      OUT: the Authorization header of each line of URIS, as remote.test
      signs it.

Any unexpected answer ends it with a message and exit status 1.
"""

import http.client
import json
import statistics
import sys
import time
import urllib.parse

DEST = "bench.test"
ORIGIN = "remote.test"


def die(msg):
    sys.stderr.write("bench/fed.py: %s\n" % msg)
    sys.exit(1)


class Conn:
    """one keep-alive HTTP connection to http://HOST:PORT"""

    def __init__(self, base):
        u = urllib.parse.urlsplit(base)
        self.host, self.port = u.hostname, u.port
        self.c = None

    def request(self, method, path, body=None, headers=None):
        for attempt in (0, 1):
            if self.c is None:
                self.c = http.client.HTTPConnection(self.host, self.port,
                                                    timeout=600)
            try:
                self.c.request(method, path, body=body, headers=headers or {})
                r = self.c.getresponse()
                return r.status, r.read()
            except (http.client.RemoteDisconnected, ConnectionError):
                # a keep-alive connection the server closed meanwhile
                self.c.close()
                self.c = None
                if attempt:
                    raise
        return None


def control(ctl, path, obj):
    status, body = ctl.request("POST", path, json.dumps(obj),
                               {"Content-Type": "application/json"})
    if status != 200:
        die("fake %s: %s %s" % (path, status, body[:300]))
    return json.loads(body)


def x_matrix(ctl, method, uri, content=None):
    obj = {"name": ORIGIN, "method": method, "uri": uri,
           "destination": DEST}
    if content is not None:
        obj["content"] = content
    return control(ctl, "/_fake/sign_request", obj)["authorization"]


def q(s):
    return urllib.parse.quote(s, safe="")


def timed(ngx, method, uri, auth, body=None):
    headers = {"Authorization": auth}
    if body is not None:
        headers["Content-Type"] = "application/json"
    t0 = time.perf_counter()
    status, out = ngx.request(method, uri, body, headers)
    return status, out, (time.perf_counter() - t0) * 1000


def make_join(ngx, ctl, room, user):
    uri = "/_matrix/federation/v1/make_join/%s/%s?ver=10" % (q(room), q(user))
    status, out, ms = timed(ngx, "GET", uri, x_matrix(ctl, "GET", uri))
    if status != 200:
        die("make_join %s %s: %s %s" % (room, user, status, out[:300]))
    return json.loads(out)["event"], ms


def send_join(ngx, ctl, room, template):
    signed = control(ctl, "/_fake/sign_event",
                     {"name": ORIGIN, "room_version": "10",
                      "event": template})
    ev, ev_id = signed["event"], signed["event_id"]
    uri = "/_matrix/federation/v2/send_join/%s/%s" % (q(room), q(ev_id))
    body = json.dumps(ev, separators=(",", ":"))
    status, out, ms = timed(ngx, "PUT", uri, x_matrix(ctl, "PUT", uri, ev),
                            body)
    if status != 200:
        die("send_join %s %s: %s %s" % (room, ev_id, status, out[:300]))
    return out, ms


def pct(xs, p):
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def create(base, ctl_url, prefix, rooms):
    ngx, ctl = Conn(base), Conn(ctl_url)

    # remote.test's keys fetched (once per nginx worker) before anything
    # is timed: a signed request about a room that does not exist
    uri = "/_matrix/federation/v1/make_join/%s/%s?ver=10" % (
        q("!nope:" + DEST), q("@%s0:%s" % (prefix, ORIGIN)))
    status, out, _ = timed(ngx, "GET", uri, x_matrix(ctl, "GET", uri))
    if status != 404:
        die("warming make_join: %s %s (expected 404)" % (status, out[:300]))

    # the first make_join makes a room: the one-time cost, alone
    for room in rooms:
        tpl, ms = make_join(ngx, ctl, room, "@%s0:%s" % (prefix, ORIGIN))
        print("%s: created by the first make_join in %.1f ms" % (room, ms),
              flush=True)
        send_join(ngx, ctl, room, tpl)
        print("summary %s create_ms=%.1f" % (room, ms))


def join(base, ctl_url, joins, prefix, rooms):
    ngx, ctl = Conn(base), Conn(ctl_url)

    # the joins, the rooms in turn: each sees the same warmth
    t = {room: {"mj": [], "sj": [], "pair": [], "size": []} for room in rooms}
    for i in range(1, joins + 1):
        user = "@%s%d:%s" % (prefix, i, ORIGIN)
        for room in rooms:
            tpl, a = make_join(ngx, ctl, room, user)
            out, b = send_join(ngx, ctl, room, tpl)
            res = json.loads(out)
            state, chain = res.get("state"), res.get("auth_chain")
            if not isinstance(state, list) or not isinstance(chain, list):
                die("send_join %s to %s: no state or auth_chain"
                    % (user, room))
            members = [e for e in state if e.get("type") == "m.room.member"]
            if any(e.get("state_key") == user for e in members):
                die("send_join %s to %s: the state is not the one before "
                    "the join" % (user, room))
            r = t[room]
            r["mj"].append(a)
            r["sj"].append(b)
            r["pair"].append(a + b)
            r["size"].append(len(out))
            r["last"] = (len(state), len(members), len(chain))
            if i == 1 or i == joins or i % 10 == 0:
                print("%s: join %d: make_join %.1f ms, send_join %.1f ms, "
                      "%d bytes, state %d (%d m.room.member), auth chain %d"
                      % (room, i, a, b, len(out), len(state), len(members),
                         len(chain)), flush=True)

    for room in rooms:
        r = t[room]
        print("summary %s mj_med=%.2f mj_p90=%.2f "
              "sj_med=%.2f sj_p90=%.2f pair_med=%.2f pair_p90=%.2f "
              "bytes_first=%d bytes_last=%d state=%d members=%d chain=%d"
              % ((room, statistics.median(r["mj"]),
                  pct(r["mj"], 90), statistics.median(r["sj"]),
                  pct(r["sj"], 90), statistics.median(r["pair"]),
                  pct(r["pair"], 90), r["size"][0], r["size"][-1])
                 + r["last"]))


def sign(ctl_url, method, dest, uris_file, out_file):
    ctl = Conn(ctl_url)
    with open(uris_file) as f:
        uris = [l.rstrip("\n") for l in f if l.strip()]
    headers = []
    for i in range(0, len(uris), 1000):
        headers += control(ctl, "/_fake/sign_request",
                           {"name": ORIGIN, "method": method,
                            "destination": dest,
                            "uris": uris[i:i + 1000]})["authorizations"]
    if len(headers) != len(uris):
        die("signed %d of %d URIs" % (len(headers), len(uris)))
    with open(out_file, "w") as f:
        f.writelines(h + "\n" for h in headers)


def main(argv):
    if len(argv) >= 5 and argv[0] == "create":
        create(argv[1], argv[2], argv[3], argv[4:])
    elif len(argv) >= 6 and argv[0] == "join":
        join(argv[1], argv[2], int(argv[3]), argv[4], argv[5:])
    elif len(argv) == 6 and argv[0] == "sign":
        sign(*argv[1:])
    else:
        die("usage: fed.py create NGINX CONTROL PREFIX ROOM...\n"
            "       fed.py join NGINX CONTROL JOINS PREFIX ROOM...\n"
            "       fed.py sign CONTROL METHOD DESTINATION URIS OUT")


if __name__ == "__main__":
    main(sys.argv[1:])
