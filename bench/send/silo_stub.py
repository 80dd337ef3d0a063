#!/usr/bin/python3
"""bench/send/silo_stub.py: a silo internal API that answers at once.

Every PUT .../messages/{event_id} is answered 200 {"message_id": "N"}
(N counting up, the same N for an event ID seen before), every other
request 200 {}.  Nothing is stored: the silo's own speed is not what
bench/send measures.  GET /_stub/count answers "MESSAGES OTHER".

  silo_stub.py PORT            (plain HTTP on 127.0.0.1, asyncio only)
"""

import asyncio
import sys

ids = {}
other = 0


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
            if path == "/_stub/count":
                out = b"%d %d" % (len(ids), other)
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


asyncio.run(main(int(sys.argv[1])))
