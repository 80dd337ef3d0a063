#!/usr/bin/python3
"""bench/send/send.py: remote.test's transactions for bench/send.

  send.py build CONTROL OUT TXNS ROOM PREV DEPTH CREATE PL JOIN
      TXNS transactions of 50 m.room.message PDUs of @s0:remote.test in
      ROOM, one chain: the first PDU on PREV at DEPTH, each next one on
      the one before, depth + 1; auth events CREATE, PL, JOIN (the
      sender's join).  Each PDU hashed and signed by the fake homeserver,
      each transaction's X-Matrix header signed over its body.  OUT: one
      line a transaction, "URI<TAB>AUTHORIZATION<TAB>BODY".

  send.py run NGINX OUT
      The transactions of OUT, one after the other on one keep-alive
      connection (each needs the one before committed: its first PDU's
      prev event is the last of the one before).  Each answer must be 200
      with {} for each of its 50 PDUs.  Prints
      "summary pdus=N seconds=S rate=PDUS_PER_S txn_med_ms=M txn_p90_ms=P".
"""

import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from fed import Conn, control, die, pct  # noqa: E402

ORIGIN = "remote.test"
DEST = "bench.test"
SENDER = "@s0:remote.test"
PER_TXN = 50


def build(ctl_url, out, txns, room, prev, depth, create, pl, join):
    ctl = Conn(ctl_url)
    depth = int(depth)
    ts = int(time.time() * 1000)
    n = 0
    with open(out, "w") as f:
        for t in range(txns):
            pdus = []
            for _ in range(PER_TXN):
                n += 1
                ev = {"type": "m.room.message", "room_id": room,
                      "sender": SENDER, "origin": ORIGIN,
                      "origin_server_ts": ts + n, "depth": depth,
                      "prev_events": [prev],
                      "auth_events": [create, pl, join],
                      "content": {"msgtype": "m.text",
                                  "body": "bench message %d: some words, as "
                                          "a chat line has them." % n}}
                s = control(ctl, "/_fake/sign_event",
                            {"name": ORIGIN, "room_version": "10",
                             "event": ev})
                pdus.append(s["event"])
                prev, depth = s["event_id"], depth + 1
            body = {"origin": ORIGIN, "origin_server_ts": ts + n,
                    "pdus": pdus}
            uri = "/_matrix/federation/v1/send/bench-%d-%d" % (ts, t)
            auth = control(ctl, "/_fake/sign_request",
                           {"name": ORIGIN, "method": "PUT", "uri": uri,
                            "destination": DEST,
                            "content": body})["authorization"]
            f.write("%s\t%s\t%s\n" % (uri, auth,
                                      json.dumps(body, separators=(",", ":"))))


def run(base, out):
    ngx = Conn(base)
    with open(out) as f:
        txns = [l.rstrip("\n").split("\t", 2) for l in f if l.strip()]
    times = []
    pdus = 0
    t0 = time.perf_counter()
    for uri, auth, body in txns:
        t1 = time.perf_counter()
        status, answer = ngx.request("PUT", uri, body.encode(),
                                     {"Authorization": auth,
                                      "Content-Type": "application/json"})
        times.append((time.perf_counter() - t1) * 1000)
        if status != 200:
            die("PUT %s: %s %s" % (uri, status, answer[:300]))
        got = json.loads(answer).get("pdus", {})
        bad = {k: v for k, v in got.items() if v != {}}
        if len(got) != PER_TXN or bad:
            die("PUT %s: %d PDUs answered, not accepted: %s"
                % (uri, len(got), json.dumps(bad)[:300]))
        pdus += len(got)
    secs = time.perf_counter() - t0
    print("summary pdus=%d seconds=%.3f rate=%.0f txn_med_ms=%.2f "
          "txn_p90_ms=%.2f" % (pdus, secs, pdus / secs,
                               statistics.median(times), pct(times, 90)))


def main(argv):
    if len(argv) == 10 and argv[0] == "build":
        build(argv[1], argv[2], int(argv[3]), *argv[4:])
    elif len(argv) == 3 and argv[0] == "run":
        run(argv[1], argv[2])
    else:
        die("usage: send.py build CONTROL OUT TXNS ROOM PREV DEPTH CREATE "
            "PL JOIN\n       send.py run NGINX OUT")


if __name__ == "__main__":
    main(sys.argv[1:])
