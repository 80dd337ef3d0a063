#!/usr/bin/python3
"""Checks a Matrix key document with independent implementations.

Reads the body of GET /_matrix/key/v2/server on stdin and checks it with
Debian's python3-signedjson and python3-canonicaljson, not with anything
from this project:

  - the body is exactly the canonical encoding of itself;
  - server_name is the expected one;
  - every key in verify_keys has signed the document;
  - valid_until_ts is more than an hour ahead.

Prints one line per finding, so a test can compare the output exactly.
Usage: check_key_doc.py SERVER_NAME
"""

import json
import sys
import time

import canonicaljson
import signedjson.key
import signedjson.sign


def main():
    server_name = sys.argv[1]
    body = sys.stdin.buffer.read()
    doc = json.loads(body)

    if canonicaljson.encode_canonical_json(doc) == body:
        print("canonical")
    else:
        print("NOT canonical")

    print("server_name %s" % doc.get("server_name"))
    if doc.get("server_name") != server_name:
        print("WRONG server_name, expected %s" % server_name)

    for key_id, entry in sorted(doc["verify_keys"].items()):
        algorithm, version = key_id.split(":", 1)
        verify_key = signedjson.key.decode_verify_key_bytes(
            key_id, signedjson.key.decode_base64(entry["key"]))
        try:
            signedjson.sign.verify_signed_json(doc, server_name, verify_key)
            print("verified %s" % key_id)
        except signedjson.sign.SignatureVerifyException as e:
            print("NOT verified %s: %s" % (key_id, e))

    for key_id, entry in sorted(doc.get("old_verify_keys", {}).items()):
        print("old %s %s %d" % (key_id, entry["key"], entry["expired_ts"]))

    ahead = doc["valid_until_ts"] - int(time.time() * 1000)
    if ahead > 3600 * 1000:
        print("valid for more than an hour")
    else:
        print("valid for only %d ms" % ahead)


if __name__ == "__main__":
    main()
