#!/usr/bin/python3
"""An independent implementation of Matrix PDU hashing, signing, event IDs
and redaction, for the tests: written from the spec text, with nothing
of the module's C core. Only Debian's python3-canonicaljson and
python3-signedjson (and hashlib, base64); run it with /usr/bin/python3.

Sources (../shared/spec/matrix-spec/content):
  server-server-api.md  "Signing Events", "Validating hashes and signatures
                        on received events", "Calculating the reference
                        hash", "Calculating the content hash"
  rooms/fragments/v1-redactions.md, v6-redactions.md, rooms/v8.md,
  v9-redactions.md, v11-redactions.md     the redaction algorithm
  rooms/fragments/v1-event-ids.md, v4-event-ids.md, rooms/v3.md,
  rooms/v12.md                            event IDs, v12 room IDs
  rooms/v6.md (canonical JSON), rooms/fragments/v8-auth-rules.md
  (join_authorised_via_users_server must sign)

As a module:
  redact(event, room_version)            -> the redacted copy
  content_hash(event)                    -> sha256 digest (bytes)
  check_content_hash(event)              -> bool
  reference_hash(event, room_version)    -> sha256 digest (bytes)
  event_id(event, room_version)          -> "$..." (v1/v2: the event's own)
  room_id_of_create(event, room_version) -> v12: "!" + the create's hash
  sign_event(event, server_name, signing_key, room_version) -> a new event
  required_signers(event, room_version)  -> [server names]
  verify_event_signatures(event, room_version, keys) -> [errors]
  check_event(event, room_version, keys) -> {event_id, hash_ok,
      signatures_ok, redacted, required_servers, errors}
  json_value_errors(event, room_version) -> [errors] (v6+ integer rules)
  canonical(obj), canonical_text(text)   -> canonical JSON bytes
  keys: {server: {key_id: unpadded base64 verify key}}; signing_key: a
  signedjson SigningKey, or "ed25519 VERSION SEED" (a Synapse key line).

As a command (JSON on stdin, JSON or canonical JSON on stdout):
  mx_event.py redact       --room-version V
  mx_event.py content-hash
  mx_event.py event-id     --room-version V
  mx_event.py sign         --room-version V --server NAME --key "ed25519 V SEED"
  mx_event.py check        --room-version V [--keys JSON]
  mx_event.py serve        JSON lines: {"op": redact | content_hash |
                           event_id | room_id | sign | check | verify |
                           sign_json | canonical_text | strict_json_errors,
                           "room_version", "event", "server", "key", "keys",
                           "servers", "text", "json"}
                           -> {"result": ...} or {"error": "..."}
"""

import argparse
import base64
import copy
import hashlib
import json
import sys

import canonicaljson
import signedjson.key
import signedjson.sign

# ---------------------------------------------------------------- versions

KNOWN_VERSIONS = [str(v) for v in range(1, 13)]


def version_number(room_version):
    v = str(room_version)
    if v not in KNOWN_VERSIONS:
        raise ValueError("unknown room version %r" % room_version)
    return int(v)


# ---------------------------------------------------------------- redaction

# top-level keys kept (v1-redactions.md .. v9-redactions.md; v11 drops
# prev_state, origin and membership)
TOP_KEYS_V1 = frozenset([
    "event_id", "type", "room_id", "sender", "state_key", "content",
    "hashes", "signatures", "depth", "prev_events", "prev_state",
    "auth_events", "origin", "origin_server_ts", "membership"])
TOP_KEYS_V11 = TOP_KEYS_V1 - {"prev_state", "origin", "membership"}

POWER_LEVEL_KEYS = ["ban", "events", "events_default", "kick", "redact",
                    "state_default", "users", "users_default"]

ALL = object()    # every content key stays


def content_keys(event_type, v):
    """The content keys a redaction keeps for EVENT_TYPE in version V."""
    if event_type == "m.room.member":
        keys = ["membership"]
        if v >= 9:
            keys.append("join_authorised_via_users_server")
        return keys
    if event_type == "m.room.create":
        return ALL if v >= 11 else ["creator"]
    if event_type == "m.room.join_rules":
        return ["join_rule", "allow"] if v >= 8 else ["join_rule"]
    if event_type == "m.room.power_levels":
        return POWER_LEVEL_KEYS + (["invite"] if v >= 11 else [])
    if event_type == "m.room.history_visibility":
        return ["history_visibility"]
    if event_type == "m.room.aliases":
        return ["aliases"] if v <= 5 else []
    if event_type == "m.room.redaction":
        return ["redacts"] if v >= 11 else []
    return []


def redact(event, room_version):
    v = version_number(room_version)
    top = TOP_KEYS_V11 if v >= 11 else TOP_KEYS_V1
    out = {k: copy.deepcopy(val) for k, val in event.items() if k in top}
    content = event.get("content")
    if not isinstance(content, dict):
        content = {}
    keep = content_keys(event.get("type"), v)
    if keep is ALL:
        new = copy.deepcopy(content)
    else:
        new = {k: copy.deepcopy(content[k]) for k in keep if k in content}
    if v >= 11 and event.get("type") == "m.room.member":
        # "the signed key of the third_party_invite key": an object stays,
        # with only "signed" in it
        tpi = content.get("third_party_invite")
        if isinstance(tpi, dict):
            new["third_party_invite"] = (
                {"signed": copy.deepcopy(tpi["signed"])}
                if "signed" in tpi else {})
    # the redacted copy always has a content object
    out["content"] = new
    return out


# ---------------------------------------------------------------- hashes

def canonical(obj):
    return canonicaljson.encode_canonical_json(obj)


def _integral_float(text):
    f = float(text)
    return int(f) if f.is_integer() else f


def canonical_text(text):
    """Canonical JSON of JSON text; numbers written 1e10 or -0 become
    integers when they are whole (the appendices' examples)."""
    return canonical(json.loads(text, parse_float=_integral_float))


def b64(raw):
    return base64.b64encode(raw).decode("ascii").rstrip("=")


def b64_urlsafe(raw):
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def b64_decode(text):
    text = text.replace("-", "+").replace("_", "/")
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def content_hash(event):
    stripped = {k: v for k, v in event.items()
                if k not in ("unsigned", "signatures", "hashes")}
    return hashlib.sha256(canonical(stripped)).digest()


def check_content_hash(event):
    try:
        got = b64_decode(event["hashes"]["sha256"])
    except (KeyError, TypeError, ValueError, AttributeError):
        return False
    return got == content_hash(event)


def reference_hash(event, room_version):
    red = redact(event, room_version)
    red.pop("signatures", None)
    red.pop("unsigned", None)
    return hashlib.sha256(canonical(red)).digest()


def event_id(event, room_version):
    v = version_number(room_version)
    if v <= 2:
        if "event_id" not in event:
            raise ValueError("room version %d events carry their event_id"
                             % v)
        return event["event_id"]
    h = reference_hash(event, room_version)
    return "$" + (b64(h) if v == 3 else b64_urlsafe(h))


def room_id_of_create(event, room_version):
    """v12: the room ID is the create event's ID with "!" for "$"."""
    if version_number(room_version) < 12:
        raise ValueError("room IDs derive from the create event from v12 on")
    return "!" + event_id(event, room_version)[1:]


# ---------------------------------------------------------------- signing

def server_of(user_id):
    if not isinstance(user_id, str) or ":" not in user_id:
        raise ValueError("not a user ID: %r" % (user_id,))
    return user_id.split(":", 1)[1]


def signing_key_of(key):
    if isinstance(key, str):
        alg, version, seed = key.split()
        return signedjson.key.decode_signing_key_base64(alg, version, seed)
    return key


def sign_event(event, server_name, signing_key, room_version):
    """A copy of EVENT with hashes.sha256 set and SERVER_NAME's signature
    of its redacted form added (others' signatures are kept)."""
    key = signing_key_of(signing_key)
    out = copy.deepcopy(event)
    out["hashes"] = {"sha256": b64(content_hash(out))}
    red = redact(out, room_version)
    red.pop("signatures", None)
    signed = signedjson.sign.sign_json(red, server_name, key)
    out.setdefault("signatures", {}).setdefault(server_name, {}).update(
        signed["signatures"][server_name])
    return out


def required_signers(event, room_version):
    """The servers whose signatures the event needs."""
    v = version_number(room_version)
    servers = [server_of(event.get("sender"))]
    if v <= 2 and isinstance(event.get("event_id"), str) \
            and ":" in event["event_id"]:
        servers.append(event["event_id"].split(":", 1)[1])
    content = event.get("content")
    if v >= 8 and event.get("type") == "m.room.member" \
            and isinstance(content, dict) \
            and "join_authorised_via_users_server" in content:
        servers.append(server_of(content["join_authorised_via_users_server"]))
    return sorted(set(servers))


def verify_keys_of(keys):
    out = {}
    for server, kids in (keys or {}).items():
        for kid, b64key in kids.items():
            alg, version = kid.split(":", 1)
            out.setdefault(server, {})[kid] = \
                signedjson.key.decode_verify_key_base64(alg, version, b64key)
    return out


def verify_event_signatures(event, room_version, keys, servers=None):
    """[] when every required server (or each of SERVERS) signed the
    redacted event with a key of KEYS and each such signature holds; else
    what is wrong. Signatures by keys not in KEYS are skipped, as the
    spec says."""
    errors = []
    vkeys = verify_keys_of(keys)
    try:
        needed = servers or required_signers(event, room_version)
    except ValueError as e:
        return [str(e)]
    red = redact(event, room_version)
    sigs = event.get("signatures", {})
    if not isinstance(sigs, dict):
        return ["signatures is not an object"]
    for server in needed:
        mine = sigs.get(server)
        if not isinstance(mine, dict) or not mine:
            errors.append("no signature by %s" % server)
            continue
        known = [kid for kid in sorted(mine) if kid in vkeys.get(server, {})]
        if not known:
            errors.append("no signature of %s by a known key (signed with "
                          "%s; known: %s)" % (server, ", ".join(sorted(mine)),
                                              ", ".join(sorted(vkeys.get(
                                                  server, {}))) or "none"))
            continue
        for kid in known:
            one = dict(red, signatures={server: {kid: mine[kid]}})
            try:
                signedjson.sign.verify_signed_json(one, server,
                                                   vkeys[server][kid])
            except Exception as e:
                errors.append("signature of %s with %s: %s" % (server, kid, e))
    return errors


# ---------------------------------------------------------------- checks

MAX_SAFE = 2 ** 53 - 1


def json_value_errors(value, room_version, where=""):
    """Room v6+ (rooms/fragments/v6-canonical-json.md): integers within
    [-(2^53)+1, 2^53-1], no floats."""
    if version_number(room_version) < 6:
        return []
    errors = []
    if isinstance(value, bool) or value is None or isinstance(value, str):
        pass
    elif isinstance(value, int):
        if not -MAX_SAFE <= value <= MAX_SAFE:
            errors.append("%s: integer out of range" % (where or "/"))
    elif isinstance(value, float):
        errors.append("%s: not an integer" % (where or "/"))
    elif isinstance(value, dict):
        for k, v in value.items():
            errors += json_value_errors(v, room_version, "%s/%s" % (where, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            errors += json_value_errors(v, room_version, "%s/%d" % (where, i))
    return errors


def strict_json_errors(text, room_version):
    """json_value_errors of JSON text, which also sees -0 and 1e5."""
    def number(s):
        if s in ("-0",) or any(c in s for c in ".eE"):
            return float(s)
        return int(s)
    try:
        value = json.loads(text, parse_int=number, parse_float=number)
    except ValueError as e:
        return ["not JSON: %s" % e]
    return json_value_errors(value, room_version)


def check_event(event, room_version, keys):
    """Everything a receiving server checks of one PDU's crypto."""
    errors = []
    out = {"event_id": None, "hash_ok": False, "signatures_ok": False,
           "redacted": None, "required_servers": [], "errors": errors}
    if not isinstance(event, dict):
        errors.append("the event is not an object")
        return out
    v = version_number(room_version)
    out["redacted"] = redact(event, room_version)
    try:
        out["event_id"] = event_id(event, room_version)
    except ValueError as e:
        errors.append(str(e))
    if v >= 12 and event.get("type") == "m.room.create" \
            and event.get("state_key") == "":
        out["room_id"] = room_id_of_create(event, room_version)
        if "room_id" in event:
            errors.append("a v12 create event has no room_id")
    try:
        out["required_servers"] = required_signers(event, room_version)
    except ValueError as e:
        errors.append(str(e))
    sig_errors = verify_event_signatures(event, room_version, keys)
    out["signatures_ok"] = not sig_errors
    errors += sig_errors
    out["hash_ok"] = check_content_hash(event)
    if not out["hash_ok"]:
        errors.append("content hash does not match hashes.sha256")
    errors += json_value_errors(event, room_version)
    return out


# ---------------------------------------------------------------- command

def run_op(req):
    op = req.get("op")
    rv = req.get("room_version")
    ev = req.get("event")
    if op == "redact":
        return redact(ev, rv)
    if op == "content_hash":
        return b64(content_hash(ev))
    if op == "event_id":
        return event_id(ev, rv)
    if op == "room_id":
        return room_id_of_create(ev, rv)
    if op == "sign":
        return sign_event(ev, req["server"], req["key"], rv)
    if op == "check":
        return check_event(ev, rv, req.get("keys") or {})
    if op == "verify":
        return verify_event_signatures(ev, rv, req.get("keys") or {},
                                       req.get("servers"))
    if op == "sign_json":
        return signedjson.sign.sign_json(copy.deepcopy(req["json"]),
                                         req["server"],
                                         signing_key_of(req["key"]))
    if op == "canonical_text":
        return canonical_text(req["text"]).decode("utf-8")
    if op == "strict_json_errors":
        return strict_json_errors(req["text"], rv)
    raise ValueError("unknown op %r" % (op,))


def serve():
    for line in sys.stdin.buffer:
        if not line.strip():
            continue
        try:
            out = {"result": run_op(json.loads(line.decode("utf-8")))}
        except Exception as e:
            out = {"error": "%s: %s" % (type(e).__name__, e)}
        sys.stdout.write(json.dumps(out, ensure_ascii=True) + "\n")
        sys.stdout.flush()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("command", choices=["redact", "content-hash", "event-id",
                                        "sign", "check", "serve"])
    ap.add_argument("--room-version")
    ap.add_argument("--server")
    ap.add_argument("--key", help='"ed25519 VERSION SEED"')
    ap.add_argument("--keys", help="{server: {key_id: base64}}")
    args = ap.parse_args()
    if args.command == "serve":
        serve()
        return
    req = {"op": args.command.replace("-", "_"), "event": json.load(sys.stdin),
           "room_version": args.room_version, "server": args.server,
           "key": args.key, "keys": json.loads(args.keys or "{}")}
    try:
        out = run_op(req)
    except Exception as e:
        sys.stderr.write("mx_event: %s\n" % e)
        sys.exit(2)
    if isinstance(out, str):
        sys.stdout.write(out + "\n")
    else:
        sys.stdout.buffer.write(canonical(out))
    if args.command == "check" and out["errors"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
