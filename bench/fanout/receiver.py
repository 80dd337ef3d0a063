#!/usr/bin/python3
"""bench/fanout/receiver.py: every d*.fan.test of bench/fanout, one process.

A TLS server on 127.0.0.1:PORT (certificate CERT/KEY for *.fan.test)
that answers PUT /_matrix/federation/v1/send/{txnId} with 200 {"pdus":
{}} at once, without checking anything, and writes a line to LOG for
each:
    TIME_NS HOST TXN_ID BYTES MARKS
MARKS: the words of the body that start with "fanout-probe-" (the
messages bench/fanout posts carry one), comma-separated, or "-".
Anything else is answered 404.  asyncio and ssl only.

  receiver.py PORT CERT KEY LOG
"""

import asyncio
import re
import ssl
import sys
import time

PROBE = re.compile(rb"fanout-probe-[0-9]+")


async def handle(reader, writer, log):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path = lines[0].split(" ")[:2]
            length, host = 0, "-"
            for h in lines[1:]:
                k, _, v = h.partition(":")
                k = k.strip().lower()
                if k == "content-length":
                    length = int(v)
                elif k == "host":
                    host = v.strip()
            body = await reader.readexactly(length) if length else b""
            if method == "PUT" and path.startswith(
                    "/_matrix/federation/v1/send/"):
                marks = sorted(set(m.decode() for m in PROBE.findall(body)))
                log.write("%d %s %s %d %s\n" % (
                    time.time_ns(), host, path.rsplit("/", 1)[1], len(body),
                    ",".join(marks) or "-"))
                log.flush()
                out, status = b'{"pdus":{}}', b"200 OK"
            else:
                out, status = b'{"errcode":"M_NOT_FOUND"}', b"404 Not Found"
            writer.write(b"HTTP/1.1 %s\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s"
                         % (status, len(out), out))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError,
            ValueError):
        pass
    finally:
        writer.close()


async def main(port, cert, key, logfile):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["http/1.1"])
    log = open(logfile, "a")
    server = await asyncio.start_server(
        lambda r, w: handle(r, w, log), "127.0.0.1", port, ssl=ctx,
        backlog=1024)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


asyncio.run(main(int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]))
