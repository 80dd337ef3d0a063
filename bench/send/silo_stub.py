#!/usr/bin/python3
"""bench/send/silo_stub.py: a silo internal API that answers at once.

Every PUT .../messages/{event_id} is answered 200 {"message_id": "N"}
(N counting up, the same N for an event ID seen before), every other
request 200 {}.  Nothing is stored: the silo's own speed is not what
bench/send measures.  GET /_stub/count answers "MESSAGES OTHER PUTS
SECONDS": distinct message event IDs, other requests, then the PUTs since
the last GET /_stub/reset and the seconds from the first of them to the
last.

  silo_stub.py PORT            (plain HTTP on 127.0.0.1, asyncio only)
  silo_stub.py put PORT N      (the baseline: N PUTs of a message, one
                                after the other on one connection, as
                                fast as the stub answers; prints PUTs/s)
"""

import asyncio
import http.client
import json
import sys
import time

ids = {}
other = 0
puts = [0, 0.0, 0.0]        # since the reset: count, first, last


async def handle(reader, writer):
    global other
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path = lines[0].split(" ")[:2]
            length = 0
            for h in lines[1:]:
                if h.lower().startswith("content-length:"):
                    length = int(h.split(":", 1)[1])
            if length:
                await reader.readexactly(length)
            if method == "PUT":
                now = time.monotonic()
                if puts[0] == 0:
                    puts[1] = now
                puts[0] += 1
                puts[2] = now
            if path == "/_stub/count":
                out = b"%d %d %d %.3f" % (len(ids), other, puts[0],
                                          puts[2] - puts[1])
            elif path == "/_stub/reset":
                puts[:] = [0, 0.0, 0.0]
                out = b"{}"
            elif method == "PUT" and "/messages/" in path:
                ev = path.rsplit("/", 1)[1]
                n = ids.setdefault(ev, len(ids) + 1)
                out = b'{"message_id": "stub%d"}' % n
            else:
                other += 1
                out = b"{}"
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json"
                         b"\r\nContent-Length: %d\r\n\r\n%s" % (len(out), out))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main(port):
    server = await asyncio.start_server(handle, "127.0.0.1", port)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


def put(port, n):
    body = json.dumps({"room_id": "1", "sender": {"user_id": "@s0:remote.test"},
                       "body": "baseline", "ts": 0}).encode()
    c = http.client.HTTPConnection("127.0.0.1", port)
    t0 = time.monotonic()
    for i in range(n):
        c.request("PUT", "/internal/matrix/messages/$baseline%d" % i, body,
                  {"Content-Type": "application/json"})
        r = c.getresponse()
        r.read()
        if r.status != 200:
            sys.exit("the stub answered %d" % r.status)
    print("%d" % (n / (time.monotonic() - t0)))


if sys.argv[1] == "put":
    put(int(sys.argv[2]), int(sys.argv[3]))
else:
    asyncio.run(main(int(sys.argv[1])))
