#!/usr/bin/python3
"""examples/demo-visit.py: another Matrix server visits the demo.

The visitor is the tests' fake homeserver (t/tools/fake_hs.py, started by
examples/demo-peer.pl as "localhost:PORT"): this script has it sign its
requests (X-Matrix) and its join event through its control port, sends
them to the demo's nginx over TLS (checked against the demo's CA), and
prints what comes back:

  1. query/directory: the room alias to a room ID
  2. make_join, then send_join of the event the visitor signed
  3. backfill: the latest messages, with their senders, each checked
     (content hash, signature, event ID) by t/tools/mx_event.py with the
     keys the demo's key server publishes

  examples/demo-visit.py --control URL --name NAME --server localhost:8448
                         --cafile CA --alias '#general:localhost:8448'
"""

import argparse
import http.client
import json
import ssl
import sys
import textwrap
import urllib.parse
import urllib.request


class Failed(Exception):
    pass


def control(base, path, body):
    req = urllib.request.Request(
        base + path, data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        raise Failed("the fake homeserver's %s: %s %s"
                     % (path, e.code, e.read().decode(errors="replace")))


class Visitor:
    def __init__(self, args):
        self.args = args
        host, _, port = args.server.rpartition(":")
        self.host, self.port = host, int(port)
        self.tls = ssl.create_default_context(cafile=args.cafile)

    def fed(self, method, uri, content=None):
        """A federation request, X-Matrix signed by the visitor."""
        auth = control(self.args.control, "/_fake/sign_request", dict(
            name=self.args.name, method=method, uri=uri,
            destination=self.args.server,
            **({"content": content} if content is not None else {})))
        headers = {"Authorization": auth["authorization"]}
        body = None
        if content is not None:
            body = json.dumps(content).encode()
            headers["Content-Type"] = "application/json"
        conn = http.client.HTTPSConnection(self.host, self.port,
                                           context=self.tls, timeout=30)
        try:
            conn.request(method, uri, body=body, headers=headers)
            r = conn.getresponse()
            text = r.read().decode(errors="replace")
        except (OSError, http.client.HTTPException) as e:
            raise Failed("%s %s: %s" % (method, uri, e))
        finally:
            conn.close()
        if r.status != 200:
            raise Failed("%s %s: %d %s" % (method, uri, r.status, text))
        return json.loads(text)


def q(s):
    return urllib.parse.quote(s, safe="")


def visit(args):
    v = Visitor(args)
    me = "@visitor:" + args.name

    print("== %s visits %s over federation (TLS, X-Matrix)"
          % (args.name, args.server))

    d = v.fed("GET", "/_matrix/federation/v1/query/directory?room_alias="
              + q(args.alias))
    room = d["room_id"]
    print("   query/directory  %s -> %s (servers: %s)"
          % (args.alias, room, ", ".join(d.get("servers", []))))

    vers = "&".join("ver=%d" % n for n in range(1, 13))
    mj = v.fed("GET", "/_matrix/federation/v1/make_join/%s/%s?%s"
               % (q(room), q(me), vers))
    rv = mj["room_version"]
    tpl = mj["event"]
    print("   make_join        a join template for %s, room version %s, "
          "depth %d" % (me, rv, tpl["depth"]))

    signed = control(args.control, "/_fake/sign_event",
                     {"name": args.name, "room_version": rv, "event": tpl})
    join, join_id = signed["event"], signed["event_id"]
    sj = v.fed("PUT", "/_matrix/federation/v2/send_join/%s/%s"
               % (q(room), q(join_id)), join)
    members = sum(1 for e in sj["state"] if e["type"] == "m.room.member")
    print("   send_join        joined as %s: %d state events (%d members), "
          "auth chain of %d" % (join_id, len(sj["state"]), members,
                                len(sj["auth_chain"])))

    bf = v.fed("GET", "/_matrix/federation/v1/backfill/%s?v=%s&limit=%d"
               % (q(room), q(join_id), args.limit))
    pdus = sorted(bf["pdus"], key=lambda e: e["depth"])
    texts = [e for e in pdus if e["type"] == "m.room.message"]
    print("   backfill         the latest %d events of the room (the join "
          "included), %d messages:" % (len(pdus), len(texts)))
    print()

    # the demo's keys as its key server publishes them, fetched by the
    # fake itself (checked against the demo's CA)
    control(args.control, "/_fake/config", {"global": {
        "keys": {args.server: "https://" + args.server},
        "fetch_cafile": args.cafile}})
    bad, others = 0, set()
    for e in pdus:
        c = control(args.control, "/_fake/check_event",
                    {"room_version": rv, "event": e})
        # an event another server signed too (a homeserver of yours that
        # joined): its hash is checked, its signatures only if the fake
        # can fetch that server's keys
        foreign = set(c["required_servers"]) - {args.server, args.name}
        others |= foreign
        ok = c["hash_ok"] and (foreign or (c["signatures_ok"]
                                           and not c["errors"]))
        if not ok:
            bad += 1
            print("   ! %s: %s" % (c.get("event_id"), json.dumps(c)))
    for e in texts:
        body = " ".join(str(e["content"].get("body", "")).split())
        print(textwrap.fill(body, width=76, initial_indent="   %s: "
                            % e["sender"], subsequent_indent="      ",
                            max_lines=3, placeholder=" ..."))
    print()
    if bad:
        raise Failed("%d of %d events did not check out" % (bad, len(pdus)))
    print("   each of the %d events checked by t/tools/mx_event.py: content "
          "hash,\n   event ID, and the signatures of %s (its key server's "
          "keys)" % (len(pdus), args.server))
    if others:
        print("   (events of %s: their signatures not checked here)"
              % ", ".join(sorted(others)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--control", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--server", required=True)
    ap.add_argument("--cafile", required=True)
    ap.add_argument("--alias", required=True)
    ap.add_argument("--limit", type=int, default=8)
    args = ap.parse_args()
    try:
        visit(args)
    except (Failed, KeyError, ValueError) as e:
        print("demo-visit: %s: %s" % (type(e).__name__, e), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
