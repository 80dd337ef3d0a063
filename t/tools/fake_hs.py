#!/usr/bin/python3
"""A fake Matrix homeserver for the federation tests.

One process plays several Matrix servers ("remote.test", "notary.test",
...), told apart by the Host header (and by SNI for the certificate).
It serves, over real TLS with certificates from t/tools/make_test_ca.sh:

  GET  /.well-known/matrix/server          the configured delegation
  GET  /_matrix/key/v2/server[/KEY_ID]     a signed key document
  POST /_matrix/key/v2/query               as a notary, countersigned
  GET  /_matrix/key/v2/query/NAME[/KEY_ID]
  any  /_matrix/...                        a catch-all that checks
                                           X-Matrix and answers {}

Each of these can misbehave on demand (forged or expired documents,
errors, delays, oversized, truncated, malformed or chunked bodies, no
keep-alive, dropped connections). Every request is recorded (the
fields: t/lib/MatrixFakeHS.pm). A separate plain-HTTP control port
(127.0.0.1 only) configures it and reads the records:

  GET  /_fake/requests[?server=&endpoint=&method=&path=]
  POST /_fake/reset            clears the records (and with
                               {"config": true} the configuration)
  GET  /_fake/config           the whole configuration
  POST /_fake/config           {"name": NAME, FIELD: VALUE...} or
                               {"servers": {NAME: {...}}, "global": {...}}
  GET  /_fake/keys             every server's public keys
  POST /_fake/sign_request     an X-Matrix Authorization header (or, given
                               "uris", one for each)
  POST /_fake/sign_json        a JSON object signed by one of the servers
  POST /_fake/sign_event       {name, room_version, event[, forged]}: the
                               event hashed and signed by that server (all
                               its keys), as t/tools/mx_event.py does it:
                               {event, event_id}
  POST /_fake/check_event      {room_version, event[, keys]}: the event's
                               hashes, signatures and ID checked by
                               mx_event.py: {event_id, hash_ok,
                               signatures_ok, redacted, required_servers,
                               errors: [...]} (room_id for v12 create
                               events). keys, {SERVER: {KEY_ID: BASE64}},
                               are the verify keys to use for those
                               servers; the other servers that must sign
                               have the keys the fake uses for X-Matrix:
                               its own, or those of the global "keys"
                               (given, or fetched from the URL: a module's
                               GET /_matrix/key/v2/server)

Only Debian's packages: python3-aiohttp, python3-signedjson (and so
python3-nacl), python3-canonicaljson. Run it with /usr/bin/python3.
Prints one line on stdout when listening:
  fake_hs: ready {"control": PORT, "http": [...], "https": [PORT, ...]}
and logs to stderr. t/lib/MatrixFakeHS.pm wraps it for the tests;
CONFIG (below) lists the per-server knobs.
"""

import argparse
import asyncio
import copy
import io
import json
import os
import re
import signal
import socket
import ssl
import sys
import time
import urllib.parse

from aiohttp import ClientSession, ClientTimeout, TCPConnector, web
from aiohttp.abc import AbstractResolver
from aiohttp.resolver import DefaultResolver
import canonicaljson
import signedjson.key
import signedjson.sign

sys.dont_write_bytecode = True    # no __pycache__ in the source tree
import mx_event  # noqa: E402  (t/tools/mx_event.py, beside this file)

# ---------------------------------------------------------------- config

# Per-server fields of POST /_fake/config; a null value restores the
# default. "behaviour" maps a selector to a behaviour (BEHAVIOUR below).
CONFIG = {
    "aliases": "list of other host names this server answers as (the "
               "targets it delegates to, for Host and SNI)",
    "signing_key": "Synapse key file text 'ed25519 VERSION SEED' (one key "
                   "a line): replaces the keys; all are published and sign",
    "key_mode": "normal | forged | expired | wrong_server_name | unsigned",
    "valid_for_ms": "valid_until_ts = now + this (default 86400000)",
    "valid_until_ts": "a fixed valid_until_ts (overrides valid_for_ms)",
    "old_verify_keys": "{KEY_ID: {key, expired_ts}} published as is",
    "well_known": "JSON served at /.well-known/matrix/server (an object, "
                  "e.g. {\"m.server\": \"target.test:8448\"}); a string is "
                  "served raw (invalid JSON); absent or null: 404",
    "notary_mode": "normal | no_notary_signature | bad_notary_signature | "
                   "empty (answers no documents)",
    "notary_documents": "{SERVER_NAME: DOC or [DOC...]}: what the notary "
                        "relays for that name (countersigned) instead of "
                        "the hosted server's own document",
    "x_matrix_required": "catch-all answers 401 M_UNAUTHORIZED to a request "
                         "without a verified X-Matrix header (default true)",
    "behaviour": "{SELECTOR: BEHAVIOUR}; SELECTOR is an endpoint (key, "
                 "well_known, notary, federation, other), '*', or a path "
                 "prefix ('/_matrix/federation/v1/send/' or 'PUT /_ma...'); "
                 "'*', then the endpoint's, then the longest prefix's "
                 "fields apply, later ones winning",
    "tls_cert": "certificate file presented for this server's hosts",
    "tls_key": "its key file",
}

BEHAVIOUR = {
    "status": "HTTP status (an error body unless json/body is given)",
    "json": "the JSON body to send instead",
    "body": "the raw body to send instead (a string)",
    "content_type": "Content-Type (default application/json)",
    "headers": "{NAME: VALUE} extra response headers",
    "redirect": "a Location to redirect to (status 302 unless given)",
    "delay_ms": "wait this long before answering",
    "body_delay_ms": "send the headers, wait this long, then the body",
    "oversize": "pad the JSON body to at least this many bytes",
    "truncate": "cut the body to this many bytes (Content-Length agrees)",
    "malformed": "send a body that is not JSON",
    "close_after": "announce the whole body, send this many bytes, close",
    "drop": "close the connection without answering",
    "chunked": "Transfer-Encoding: chunked",
    "chunk_size": "bytes per chunk (default: the body in three chunks)",
    "keep_alive": "false: Connection: close after the answer",
}

GLOBAL = {
    "keys": "{SERVER_NAME: {KEY_ID: BASE64} or 'https://host:port'}: the "
            "verify keys of other servers for X-Matrix checks, given or "
            "fetched (GET URL/_matrix/key/v2/server, self-signature checked)",
    "fetch_cafile": "CA bundle for those fetches (default: no TLS check)",
    "resolve": "{HOST: ADDRESS} for those fetches, like curl --resolve "
               "(other names through the system's resolver)",
}

NUMBER = (int, float)
BEHAVIOUR_TYPES = {
    "status": int, "body": str, "content_type": str, "headers": dict,
    "redirect": str, "delay_ms": NUMBER, "body_delay_ms": NUMBER,
    "oversize": int, "truncate": int, "close_after": int, "chunk_size": int,
}
ENDPOINTS = {"*", "key", "well_known", "notary", "federation", "other"}

KEY_MODES = {"normal", "forged", "expired", "wrong_server_name", "unsigned"}
NOTARY_MODES = {"normal", "no_notary_signature", "bad_notary_signature",
                "empty"}

MAX_BODY = 64 * 1024 * 1024


def log(*args):
    print("fake_hs:", *args, file=sys.stderr, flush=True)


def now_ms():
    return int(time.time() * 1000)


def encode(obj):
    return canonicaljson.encode_canonical_json(obj)


def key_id(key):
    return "%s:%s" % (key.alg, key.version)


def public_key(key):
    return signedjson.key.encode_verify_key_base64(
        signedjson.key.get_verify_key(key))


def read_keys(text):
    keys = signedjson.key.read_signing_keys(io.StringIO(text))
    if not keys:
        raise ValueError("no key in the signing key text")
    return keys


def new_key():
    version = "fake_" + os.urandom(3).hex()
    return signedjson.key.generate_signing_key(version)


def split_host(host):
    """'name:port', '[v6]:port', 'v4:port' or a bare host -> the host."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[:host.index("]") + 1] if "]" in host else host
    if host.count(":") == 1:
        return host.split(":")[0]
    return host


class ConfigError(Exception):
    pass


class Server:
    """One Matrix server played by the fake."""

    def __init__(self, name, keys=None):
        self.name = name
        self.keys = keys or [new_key()]
        self.config = {}

    def configure(self, fields):
        for field, value in fields.items():
            if field not in CONFIG:
                raise ConfigError("unknown field %r for %s (known: %s)"
                                  % (field, self.name,
                                     ", ".join(sorted(CONFIG))))
            if value is None:
                self.config.pop(field, None)
                continue
            check_field(field, value)
            if field == "signing_key":
                self.keys = read_keys(value)
            self.config[field] = copy.deepcopy(value)

    def hosts(self):
        return [self.name.lower()] + [a.lower() for a in
                                      self.config.get("aliases", [])]

    def key_document(self):
        mode = self.config.get("key_mode", "normal")
        valid = self.config.get("valid_until_ts",
                                now_ms() + self.config.get("valid_for_ms",
                                                           86400000))
        if mode == "expired":
            valid = now_ms() - 3600 * 1000
        doc = {
            "server_name": self.name,
            "valid_until_ts": valid,
            "verify_keys": {key_id(k): {"key": public_key(k)}
                            for k in self.keys},
            "old_verify_keys": copy.deepcopy(
                self.config.get("old_verify_keys", {})),
        }
        if mode == "unsigned":
            return doc
        for k in self.keys:
            if mode == "forged":
                # the same key ID, another key: a signature that fails
                k = signedjson.key.generate_signing_key(k.version)
            signedjson.sign.sign_json(doc, self.name, k)
        if mode == "wrong_server_name":
            # signed under the right name: the name is the only defect
            doc["server_name"] = "wrong.invalid"
        return doc

    def sign(self, obj, forged=False):
        for k in self.keys:
            if forged:
                k = signedjson.key.generate_signing_key(k.version)
            signedjson.sign.sign_json(obj, self.name, k)
        return obj


def check_field(field, value):
    def need(cond, what):
        if not cond:
            raise ConfigError("%s must be %s" % (field, what))

    if field == "aliases":
        need(isinstance(value, list) and all(isinstance(a, str)
                                             for a in value),
             "a list of host names")
    elif field == "key_mode":
        need(value in KEY_MODES, "one of " + ", ".join(sorted(KEY_MODES)))
    elif field == "notary_mode":
        need(value in NOTARY_MODES,
             "one of " + ", ".join(sorted(NOTARY_MODES)))
    elif field in ("valid_for_ms", "valid_until_ts"):
        need(isinstance(value, int), "an integer")
    elif field in ("old_verify_keys", "notary_documents"):
        need(isinstance(value, dict), "an object")
    elif field == "signing_key":
        need(isinstance(value, str), "key file text")
        try:
            read_keys(value)
        except Exception as e:
            raise ConfigError("signing_key: %s" % e)
    elif field in ("tls_cert", "tls_key"):
        need(isinstance(value, str) and os.path.isfile(value),
             "an existing file")
    elif field == "behaviour":
        need(isinstance(value, dict), "an object")
        for sel, beh in value.items():
            if sel not in ENDPOINTS and not re.match(r"([A-Z]+ )?/", sel):
                raise ConfigError("behaviour selector %r: not '*', %s, nor "
                                  "a path prefix ('/...' or 'METHOD /...')"
                                  % (sel, ", ".join(sorted(ENDPOINTS))))
            need(isinstance(beh, dict), "{SELECTOR: {FIELD: VALUE}}")
            for f, v in beh.items():
                if f not in BEHAVIOUR:
                    raise ConfigError("behaviour %r: unknown %r (known: %s)"
                                      % (sel, f, ", ".join(sorted(BEHAVIOUR))))
                want = BEHAVIOUR_TYPES.get(f, object)
                if not isinstance(v, want) or (want in (int, NUMBER) and
                                               isinstance(v, bool)):
                    raise ConfigError("behaviour %r: %s must be %s"
                                      % (sel, f, "a number" if want == NUMBER
                                         else want.__name__))


def check_global(field, value):
    ok = isinstance(value, dict)
    if field == "keys":
        ok = ok and all(
            isinstance(v, str) and re.match(r"https?://", v)
            or isinstance(v, dict) and all(
                re.match(r"ed25519:\w+$", k) and isinstance(b, str)
                for k, b in v.items())
            for v in value.values())
        for v in value.values() if ok else ():
            for kid, b64 in (v.items() if isinstance(v, dict) else ()):
                try:
                    signedjson.key.decode_verify_key_base64(
                        "ed25519", kid.split(":", 1)[1], b64)
                except Exception as e:
                    raise ConfigError("global keys: %s: %s" % (kid, e))
    elif field == "resolve":
        ok = ok and all(isinstance(v, str) for v in value.values())
    elif field == "fetch_cafile":
        ok = isinstance(value, str) and os.path.isfile(value)
    if not ok:
        raise ConfigError("global %s: %s" % (field, GLOBAL[field]))


class State:
    def __init__(self, args):
        self.args = args
        self.servers = {}
        self.global_config = {}
        self.requests = []
        self.fetched = {}        # server name -> {key id: VerifyKey}
        self.contexts = {}       # (cert, key, mtime) -> SSLContext
        self.initial = None

    # -- configuration

    def server(self, name, create=True):
        s = self.servers.get(name)
        if s is None and create:
            s = self.servers[name] = Server(name)
        return s

    def apply(self, body):
        """Applies all of a configuration change or none of it."""
        before = self.save()
        try:
            self._apply(body)
        except ConfigError:
            self.load(before)
            raise

    def _apply(self, body):
        if not isinstance(body, dict):
            raise ConfigError("the configuration is a JSON object")
        body = dict(body)
        if "name" in body:
            name = body.pop("name")
            if not isinstance(name, str) or not name:
                raise ConfigError("name must be a server name")
            body = {"servers": {name: body}}
        unknown = set(body) - {"servers", "global"}
        if unknown:
            raise ConfigError("unknown %s (known: name, servers, global)"
                              % ", ".join(sorted(unknown)))
        for part in ("servers", "global"):
            if not isinstance(body.get(part) or {}, dict):
                raise ConfigError("%s must be an object" % part)
        for name, fields in (body.get("servers") or {}).items():
            if not isinstance(fields, dict):
                raise ConfigError("servers.%s must be an object" % name)
            self.server(name).configure(fields)
        for field, value in (body.get("global") or {}).items():
            if field not in GLOBAL:
                raise ConfigError("unknown global field %r (known: %s)"
                                  % (field, ", ".join(sorted(GLOBAL))))
            if value is None:
                self.global_config.pop(field, None)
                continue
            check_global(field, value)
            self.global_config[field] = copy.deepcopy(value)
            if field == "keys":
                self.fetched.clear()

    def dump(self):
        return {
            "servers": {n: dict(s.config, keys={key_id(k): public_key(k)
                                                for k in s.keys})
                        for n, s in self.servers.items()},
            "global": self.global_config,
        }

    def save(self):
        return ({n: (list(s.keys), copy.deepcopy(s.config))
                 for n, s in self.servers.items()},
                copy.deepcopy(self.global_config))

    def load(self, saved):
        servers, glob = saved
        self.servers = {}
        for n, (keys, config) in servers.items():
            s = self.servers[n] = Server(n, list(keys))
            s.config = copy.deepcopy(config)
        self.global_config = copy.deepcopy(glob)

    # -- lookups

    def find(self, host):
        if not host:
            return None
        host = host.strip().lower()
        for s in self.servers.values():
            if host in s.hosts():
                return s
        bare = split_host(host)
        for s in self.servers.values():
            if bare in [split_host(h) for h in s.hosts()]:
                return s
        return None

    # -- TLS

    def context(self, cert, key):
        stamp = (cert, key, os.stat(cert).st_mtime_ns,
                 os.stat(key).st_mtime_ns)
        ctx = self.contexts.get(stamp)
        if ctx is None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(cert, key)
            ctx.set_alpn_protocols(["http/1.1"])
            self.contexts[stamp] = ctx
        return ctx

    def cert_for(self, sni):
        d = self.args.tls_dir
        if sni:
            s = self.find(sni)
            if s and s.config.get("tls_cert"):
                return s.config["tls_cert"], s.config.get(
                    "tls_key", s.config["tls_cert"])
            base = os.path.join(d, sni.lower())
            if os.path.isfile(base + ".crt") and os.path.isfile(base + ".key"):
                return base + ".crt", base + ".key"
        return os.path.join(d, "default.crt"), os.path.join(d, "default.key")

    def sni_callback(self, sslobj, sni, _ctx):
        sslobj.fake_sni = sni
        try:
            sslobj.context = self.context(*self.cert_for(sni))
        except Exception as e:
            log("no certificate for SNI %r: %s" % (sni, e))
            return ssl.ALERT_DESCRIPTION_INTERNAL_ERROR
        return None

    def base_context(self):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(*self.cert_for(None))
        ctx.set_alpn_protocols(["http/1.1"])
        ctx.sni_callback = self.sni_callback
        return ctx

    # -- keys of other servers, for X-Matrix

    async def verify_keys(self, name):
        """{key id: VerifyKey} of a server, and where they came from."""
        s = self.servers.get(name)
        if s:
            return {key_id(k): signedjson.key.get_verify_key(k)
                    for k in s.keys}, "hosted"
        given = self.global_config.get("keys", {}).get(name)
        if isinstance(given, dict):
            out = {}
            for kid, b64 in given.items():
                alg, version = kid.split(":", 1)
                out[kid] = signedjson.key.decode_verify_key_base64(
                    alg, version, b64)
            return out, "config"
        if isinstance(given, str):
            if name not in self.fetched:
                self.fetched[name] = await self.fetch_keys(name, given)
            return self.fetched[name], "fetched"
        return {}, "unknown"

    async def fetch_keys(self, name, base):
        cafile = self.global_config.get("fetch_cafile")
        ctx = (ssl.create_default_context(cafile=cafile) if cafile
               else False)
        url = base.rstrip("/") + "/_matrix/key/v2/server"
        resolver = StaticResolver(self.global_config.get("resolve", {}))
        async with ClientSession(
                timeout=ClientTimeout(total=10),
                connector=TCPConnector(ssl=ctx, resolver=resolver,
                                       force_close=True)) as session:
            async with session.get(url) as r:
                doc = json.loads(await r.read())
        if doc.get("server_name") != name:
            raise ValueError("%s names %r" % (url, doc.get("server_name")))
        keys = {}
        for kid, entry in doc.get("verify_keys", {}).items():
            alg, version = kid.split(":", 1)
            keys[kid] = signedjson.key.decode_verify_key_base64(
                alg, version, entry["key"])
            signedjson.sign.verify_signed_json(doc, name, keys[kid])
        return keys


class StaticResolver(AbstractResolver):
    """Names from a table, like curl --resolve; others as usual."""

    def __init__(self, table):
        self.table = {k.lower(): v for k, v in table.items()}
        self.default = DefaultResolver()

    async def resolve(self, host, port=0, family=socket.AF_INET):
        addr = self.table.get(host.lower())
        if addr is None:
            return await self.default.resolve(host, port, family)
        return [{"hostname": host, "host": addr, "port": port,
                 "family": socket.AF_INET6 if ":" in addr else socket.AF_INET,
                 "proto": 0, "flags": socket.AI_NUMERICHOST}]

    async def close(self):
        await self.default.close()


# ---------------------------------------------------------------- X-Matrix

def parse_x_matrix(value):
    """The parameters of an 'X-Matrix k=v,k="v"' header, or None."""
    m = re.match(r"\s*X-Matrix\s+", value, re.I)
    if not m:
        return None
    s, i, params = value, m.end(), {}
    while i < len(s):
        while i < len(s) and s[i] in " \t,":
            i += 1
        eq = s.find("=", i)
        if eq < 0:
            break
        name = s[i:eq].strip().lower()
        i = eq + 1
        if i < len(s) and s[i] == '"':
            i += 1
            val = []
            while i < len(s) and s[i] != '"':
                if s[i] == "\\" and i + 1 < len(s):
                    i += 1
                val.append(s[i])
                i += 1
            i += 1
            val = "".join(val)
        else:
            end = s.find(",", i)
            end = len(s) if end < 0 else end
            val = s[i:end].strip()
            i = end
        params[name] = val
    return params


def x_matrix_header(origin, destination, kid, sig):
    return 'X-Matrix origin="%s",destination="%s",key="%s",sig="%s"' % (
        origin, destination, kid, sig)


def request_json(method, uri, origin, destination, content):
    obj = {"method": method, "uri": uri, "origin": origin,
           "destination": destination}
    if content is not None:
        obj["content"] = content
    return obj


async def check_x_matrix(state, server, method, uri, value, content):
    p = parse_x_matrix(value)
    if p is None:
        return None
    r = {k: p.get(k) for k in ("origin", "destination", "key", "sig")}
    r["verified"] = False
    r["error"] = None
    if not (r["origin"] and r["key"] and r["sig"]):
        r["error"] = "origin, key and sig are required"
        return r
    if server is None:
        r["error"] = "no server for this Host"
        return r
    dest = r["destination"] if r["destination"] is not None else server.name
    if dest != server.name:
        r["error"] = "destination %r is not %r" % (dest, server.name)
        return r
    try:
        keys, r["key_source"] = await state.verify_keys(r["origin"])
    except Exception as e:
        r["error"] = "fetching the keys of %s: %s" % (r["origin"], e)
        return r
    if r["key"] not in keys:
        r["error"] = "no key %s of %s" % (r["key"], r["origin"])
        return r
    obj = request_json(method, uri, r["origin"], dest, content)
    obj["signatures"] = {r["origin"]: {r["key"]: r["sig"]}}
    try:
        signedjson.sign.verify_signed_json(obj, r["origin"], keys[r["key"]])
        r["verified"] = True
    except Exception as e:
        r["error"] = "signature: %s" % e
    return r


# ---------------------------------------------------------------- serving

def classify(method, path):
    if path == "/.well-known/matrix/server":
        return "well_known"
    if path == "/_matrix/key/v2/server" or path.startswith(
            "/_matrix/key/v2/server/"):
        return "key"
    if path.startswith("/_matrix/key/v2/query"):
        return "notary"
    if path.startswith("/_matrix/"):
        return "federation"
    return "other"


def pick_behaviour(server, endpoint, method, path):
    rules = server.config.get("behaviour", {}) if server else {}
    out = {}
    out.update(rules.get("*", {}))
    out.update(rules.get(endpoint, {}))
    best, best_rank = None, None
    for sel, beh in rules.items():
        want_method, _, prefix = sel.rpartition(" ")
        if not prefix.startswith("/"):
            continue
        if want_method and want_method.upper() != method:
            continue
        if path.startswith(prefix):
            rank = (len(prefix), bool(want_method))
            if best_rank is None or rank > best_rank:
                best, best_rank = beh, rank
    out.update(best or {})
    return out


def error(status, errcode, text):
    return status, encode({"errcode": errcode, "error": "fake_hs: " + text})


def notary_answer(state, notary, wanted):
    mode = notary.config.get("notary_mode", "normal")
    if mode == "empty":
        return []
    extra = notary.config.get("notary_documents", {})
    docs = []
    for name in wanted:
        if name in extra:
            got = extra[name]
            docs.extend(copy.deepcopy(got if isinstance(got, list)
                                      else [got]))
        elif name in state.servers:
            docs.append(state.servers[name].key_document())
    if mode != "no_notary_signature":
        for doc in docs:
            notary.sign(doc, forged=(mode == "bad_notary_signature"))
    return docs


async def endpoint_answer(state, server, endpoint, request, rec):
    """(status, body bytes) of the endpoint, before any misbehaviour."""
    method, path = request.method, rec["path"].split("?")[0]
    if server is None:
        return error(404, "M_NOT_FOUND",
                     "no server for Host %r" % rec["host"])
    if endpoint == "well_known":
        if method != "GET":
            return error(405, "M_UNRECOGNIZED", "method")
        wk = server.config.get("well_known")
        if wk is None:
            return error(404, "M_NOT_FOUND", "no .well-known configured")
        return 200, wk.encode() if isinstance(wk, str) else encode(wk)
    if endpoint == "key":
        if method != "GET":
            return error(405, "M_UNRECOGNIZED", "method")
        return 200, encode(server.key_document())
    if endpoint == "notary":
        parts = path[len("/_matrix/key/v2/query"):].split("/")
        if method == "POST" and parts == [""]:
            try:
                wanted = list(rec["json"]["server_keys"])
            except Exception:
                return error(400, "M_BAD_JSON", "need {server_keys: {...}}")
        elif method == "GET" and len(parts) in (2, 3) and parts[1]:
            wanted = [urllib.parse.unquote(parts[1])]
        else:
            return error(404, "M_UNRECOGNIZED", "no such notary route")
        return 200, encode({"server_keys": notary_answer(state, server,
                                                         wanted)})
    if endpoint == "federation":
        if (server.config.get("x_matrix_required", True)
                and not rec["verified"]):
            why = "; ".join(x["error"] or "?" for x in rec["x_matrix"])
            return error(401, "M_UNAUTHORIZED",
                         "X-Matrix not verified: " + (why or "no header"))
        return 200, b"{}"
    return error(404, "M_UNRECOGNIZED", "unknown path")


def apply_behaviour(beh, status, body):
    if "status" in beh:
        status = beh["status"]
        if status >= 400 and "json" not in beh and "body" not in beh:
            status, body = error(status, "M_UNKNOWN",
                                 "configured status %d" % status)
    if "json" in beh:
        body = encode(beh["json"])
    if "body" in beh:
        body = beh["body"].encode()
    if beh.get("malformed"):
        body = b'{"fake_hs": "malformed JSON",, '
    if beh.get("oversize") and len(body) < beh["oversize"]:
        try:
            obj = json.loads(body)
        except ValueError:
            obj = None
        if isinstance(obj, dict):
            obj["fake_padding"] = ""
            pad = beh["oversize"] - len(encode(obj))
            obj["fake_padding"] = "x" * max(pad, 0)
            body = encode(obj)
        else:
            body += b" " * (beh["oversize"] - len(body))
    if "truncate" in beh:
        body = body[:beh["truncate"]]
    return status, body


def make_app(state):
    seq = [0, 0]  # requests, connections
    live = {}     # id(protocol) -> (protocol, number), open connections

    def connection_number(protocol):
        """One number per TCP connection: kept ones show as repeats."""
        for key, (p, _) in list(live.items()):
            if p.transport is None:
                del live[key]
        if id(protocol) not in live:
            live[id(protocol)] = (protocol, seq[1] + 1)
            seq[1] += 1
        return live[id(protocol)][1]

    async def handle(request):
        raw = await request.read()
        ssl_obj = request.transport.get_extra_info("ssl_object") \
            if request.transport else None
        sockname = request.transport.get_extra_info("sockname") \
            if request.transport else None
        try:
            body_json = json.loads(raw) if raw else None
        except ValueError:
            body_json = None
        seq[0] += 1
        conn = connection_number(request.protocol)
        rec = {
            "n": seq[0],
            "connection": conn,
            "ts": now_ms(),
            "port": sockname[1] if sockname else None,
            "tls": ssl_obj is not None,
            "sni": getattr(ssl_obj, "fake_sni", None),
            "host": request.headers.get("Host"),
            "method": request.method,
            "path": request.raw_path,
            "headers": [[k.decode("latin-1"), v.decode("latin-1")]
                        for k, v in request.raw_headers],
            "body": raw.decode("utf-8", "replace"),
            "json": body_json,
            "x_matrix": [],
            "origin": None,
            "verified": False,
            "status": None,
        }
        server = state.find(rec["host"]) or (
            state.find(rec["sni"]) if rec["sni"] else None)
        rec["server"] = server.name if server else None
        path = rec["path"].split("?")[0]
        rec["endpoint"] = endpoint = classify(request.method, path)
        state.requests.append(rec)

        for value in request.headers.getall("Authorization", []):
            x = await check_x_matrix(state, server, request.method,
                                     rec["path"], value,
                                     body_json if raw else None)
            if x is not None:
                rec["x_matrix"].append(x)
        if rec["x_matrix"]:
            ok = [x for x in rec["x_matrix"] if x["verified"]]
            rec["verified"] = bool(ok)
            rec["origin"] = (ok or rec["x_matrix"])[0]["origin"]

        beh = pick_behaviour(server, endpoint, request.method, path)
        if beh.get("delay_ms"):
            await asyncio.sleep(beh["delay_ms"] / 1000)
        if beh.get("drop"):
            rec["status"] = "dropped"
            if request.transport:
                request.transport.abort()
            return web.Response()

        if "redirect" in beh:
            status, body = beh.get("status", 302), b""
        else:
            status, body = await endpoint_answer(state, server, endpoint,
                                                 request, rec)
            status, body = apply_behaviour(beh, status, body)
        rec["status"] = status

        resp = web.StreamResponse(status=status)
        try:
            await send(request, resp, rec, beh, body)
        except ConnectionError:
            rec["client_gone"] = True    # before the whole answer went
        return resp

    async def send(request, resp, rec, beh, body):
        resp.content_type = beh.get("content_type", "application/json")
        if "redirect" in beh:
            resp.headers["Location"] = beh["redirect"]
        for k, v in beh.get("headers", {}).items():
            resp.headers[k] = str(v)
        if not beh.get("keep_alive", True) or "close_after" in beh:
            resp.force_close()
        if beh.get("chunked"):
            resp.enable_chunked_encoding()
        else:
            resp.content_length = len(body)
        await resp.prepare(request)
        if beh.get("body_delay_ms"):
            await asyncio.sleep(beh["body_delay_ms"] / 1000)

        if "close_after" in beh:
            await resp.write(body[:beh["close_after"]])
            rec["status"] = "closed after %d bytes" % beh["close_after"]
            if request.transport:
                request.transport.close()
            return
        if beh.get("chunked") and body:
            size = beh.get("chunk_size") or max(1, -(-len(body) // 3))
            for i in range(0, len(body), size):
                await resp.write(body[i:i + size])
        elif body:
            await resp.write(body)
        await resp.write_eof()

    app = web.Application(client_max_size=MAX_BODY)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


# ---------------------------------------------------------------- control

def make_control_app(state):
    async def body_of(request):
        raw = await request.read()
        if not raw:
            return {}
        try:
            return json.loads(raw)
        except ValueError as e:
            raise web.HTTPBadRequest(text="bad JSON: %s\n" % e)

    def reply(obj, status=200):
        return web.Response(status=status, body=json.dumps(obj, indent=1),
                            content_type="application/json")

    async def requests(request):
        q = request.query
        out = []
        for r in state.requests:
            if "server" in q and r["server"] != q["server"]:
                continue
            if "endpoint" in q and r["endpoint"] != q["endpoint"]:
                continue
            if "method" in q and r["method"] != q["method"]:
                continue
            if "path" in q and not r["path"].startswith(q["path"]):
                continue
            out.append(r)
        return reply(out)

    async def reset(request):
        body = await body_of(request)
        state.requests.clear()
        state.fetched.clear()
        if body.get("config"):
            state.load(state.initial)
        return reply({"ok": True})

    async def config(request):
        if request.method == "POST":
            try:
                state.apply(await body_of(request))
            except ConfigError as e:
                return reply({"error": str(e)}, 400)
        return reply(state.dump())

    async def keys(_request):
        return reply({n: {"key_id": key_id(s.keys[0]),
                          "public_key": public_key(s.keys[0]),
                          "all": {key_id(k): public_key(k) for k in s.keys}}
                      for n, s in state.servers.items()})

    def signer(body):
        s = state.servers.get(body.get("name"))
        if s is None:
            raise web.HTTPBadRequest(text="unknown name %r\n"
                                     % body.get("name"))
        return s

    async def sign_request(request):
        b = await body_of(request)
        s = signer(b)
        if isinstance(b.get("uris"), list):
            # many requests at once (benchmarks): one header for each URI
            out = []
            for uri in b["uris"]:
                obj = request_json(b["method"], uri, s.name,
                                   b["destination"], b.get("content"))
                s.sign(obj)
                kid, sig = sorted(obj["signatures"][s.name].items())[0]
                out.append(x_matrix_header(s.name, b["destination"], kid,
                                           sig))
            return reply({"authorizations": out})
        try:
            obj = request_json(b["method"], b["uri"], s.name,
                               b["destination"], b.get("content"))
        except KeyError as e:
            raise web.HTTPBadRequest(text="missing %s\n" % e)
        s.sign(obj, forged=bool(b.get("forged")))
        headers = [x_matrix_header(s.name, b["destination"], kid, sig)
                   for kid, sig in sorted(obj["signatures"][s.name].items())]
        return reply({"authorization": headers[0], "all": headers})

    async def sign_json(request):
        b = await body_of(request)
        s = signer(b)
        if not isinstance(b.get("json"), dict):
            raise web.HTTPBadRequest(text="json must be an object\n")
        return reply(s.sign(b["json"], forged=bool(b.get("forged"))))

    def event_args(b):
        if not isinstance(b.get("event"), dict):
            raise web.HTTPBadRequest(text="event must be an object\n")
        if str(b.get("room_version")) not in mx_event.KNOWN_VERSIONS:
            raise web.HTTPBadRequest(text="room_version: one of %s\n"
                                     % ", ".join(mx_event.KNOWN_VERSIONS))
        return b["event"], str(b["room_version"])

    async def sign_event(request):
        b = await body_of(request)
        s = signer(b)
        event, rv = event_args(b)
        for k in s.keys:
            if b.get("forged"):
                k = signedjson.key.generate_signing_key(k.version)
            event = mx_event.sign_event(event, s.name, k, rv)
        return reply({"event": event,
                      "event_id": mx_event.event_id(event, rv)})

    async def check_event(request):
        b = await body_of(request)
        event, rv = event_args(b)
        given = b.get("keys") or {}
        if not isinstance(given, dict):
            raise web.HTTPBadRequest(text="keys: {server: {key_id: b64}}\n")
        keys, errors = dict(given), []
        try:
            needed = mx_event.required_signers(event, rv)
        except ValueError:
            needed = []    # check_event says why
        for name in needed:
            if name in keys:
                continue
            try:
                found, _ = await state.verify_keys(name)
            except Exception as e:
                errors.append("fetching the keys of %s: %s" % (name, e))
                continue
            keys[name] = {kid: signedjson.key.encode_verify_key_base64(vk)
                          for kid, vk in found.items()}
        try:
            out = mx_event.check_event(event, rv, keys)
        except Exception as e:
            raise web.HTTPBadRequest(text="check_event: %s\n" % e)
        out["errors"] = errors + out["errors"]
        return reply(out)

    app = web.Application(client_max_size=MAX_BODY)
    app.router.add_get("/_fake/requests", requests)
    app.router.add_post("/_fake/reset", reset)
    app.router.add_route("*", "/_fake/config", config)
    app.router.add_get("/_fake/keys", keys)
    app.router.add_post("/_fake/sign_request", sign_request)
    app.router.add_post("/_fake/sign_json", sign_json)
    app.router.add_post("/_fake/sign_event", sign_event)
    app.router.add_post("/_fake/check_event", check_event)
    return app


# ---------------------------------------------------------------- main

def listen_socket(spec):
    host, _, port = spec.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, int(port)))
    sock.listen(128)
    sock.setblocking(False)
    return sock


async def watch_parent(pid):
    while True:
        await asyncio.sleep(0.5)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            log("parent %d is gone, exiting" % pid)
            os._exit(0)


async def main_async(args):
    state = State(args)
    for spec in args.name:
        name, _, keyfile = spec.partition("=")
        keys = None
        if keyfile:
            with open(keyfile) as f:
                keys = read_keys(f.read())
        state.servers[name] = Server(name, keys)
    if args.config:
        with open(args.config) as f:
            state.apply(json.load(f))
    state.initial = state.save()

    ports = {"https": [], "http": [], "control": None}
    runners = []

    async def serve(app, socks, ctx=None):
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        runners.append(runner)
        for sock in socks:
            await web.SockSite(runner, sock, ssl_context=ctx).start()

    https = [listen_socket(s) for s in args.https or ["127.0.0.1:0"]]
    http = [listen_socket(s) for s in args.http]
    control = listen_socket(args.control)
    app = make_app(state)
    await serve(app, https, state.base_context())
    await serve(app, http)
    await serve(make_control_app(state), [control])

    ports["https"] = [s.getsockname()[1] for s in https]
    ports["http"] = [s.getsockname()[1] for s in http]
    ports["control"] = control.getsockname()[1]
    print("fake_hs: ready " + json.dumps(ports, sort_keys=True), flush=True)

    if args.parent:
        asyncio.ensure_future(watch_parent(args.parent))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for runner in runners:
        await runner.cleanup()


def main():
    ap = argparse.ArgumentParser(
        description="A fake Matrix homeserver for tests.",
        epilog="Per-server configuration fields: "
               + "; ".join("%s: %s" % kv for kv in CONFIG.items())
               + ". Behaviour fields: "
               + "; ".join("%s: %s" % kv for kv in BEHAVIOUR.items())
               + ". Global fields: "
               + "; ".join("%s: %s" % kv for kv in GLOBAL.items()))
    ap.add_argument("--tls-dir", required=True,
                    help="HOST.crt/HOST.key per SNI host, default.crt/.key "
                         "otherwise (t/tools/make_test_ca.sh)")
    ap.add_argument("--https", action="append", default=[],
                    metavar="ADDR:PORT", help="TLS listener (repeatable; "
                    "default 127.0.0.1:0, port 0 picks a free one)")
    ap.add_argument("--http", action="append", default=[],
                    metavar="ADDR:PORT", help="plain HTTP listener")
    ap.add_argument("--control", default="127.0.0.1:0", metavar="ADDR:PORT")
    ap.add_argument("--name", action="append", default=[],
                    metavar="NAME[=KEYFILE]",
                    help="a server to play, its Synapse key file or a new key")
    ap.add_argument("--config", help="JSON as for POST /_fake/config")
    ap.add_argument("--parent", type=int, help="exit when this pid is gone")
    args = ap.parse_args()
    try:
        asyncio.run(main_async(args))
    except (ConfigError, OSError, ValueError) as e:
        log(str(e))
        sys.exit(1)


if __name__ == "__main__":
    main()
