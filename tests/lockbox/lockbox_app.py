#!/usr/bin/python3
"""The application side of rekey's Lockbox proof (tests/lockbox_pg_test.cpp). Ruby and the
lockbox gem cannot run on rekey's machines, so this is Lockbox's rules re-implemented with Debian's
python3-cryptography (HKDF, AESGCM) from docs/FORMAT.md, "lockbox" -- nothing of rekey's -- and
checked against the vectors of Lockbox's own tests before every use (self_test below):

  * Lockbox::KeyGenerator#attribute_key (lib/lockbox/key_generator.rb): HKDF-SHA384, salt = the
    key table, info = 0xB4 x 32 + the key attribute, 32 bytes;
  * Lockbox::AES_GCM + Box (lib/lockbox/aes_gcm.rb, box.rb): nonce (12) + ciphertext + tag (16),
    no associated data; Encryptor (lib/lockbox/encryptor.rb): strict base64 on writing, the master
    key's box first and then each previous version's on reading.

  lockbox_app.py generate  stdout Lockbox.generate_key: 64 hex digits
  lockbox_app.py encrypt   stdin {"master_key": H, "table": T, "attribute": A,
                                  "items": [{"id": I, "plaintext": P}]}
                           stdout {"I": base64 value}
  lockbox_app.py read      stdin {"master_key": H, "previous_versions": [H, ...] | "initializer":
                                  the text of `rekey keys export --format lockbox`,
                                  "table": T, "attribute": A, "values": {"I": text}}
                           stdout {"I": {"plaintext": P, "master_key_only": bool}} -- or
                           {"I": {"error": "DecryptionError"}} when no key opens it
Exits 77 (ctest: skipped) when python3-cryptography is not installed, 1 if a vector fails.
"""
import base64
import binascii
import json
import os
import re
import sys

try:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF
except ImportError:
    print("SKIPPED: python3-cryptography is not installed (apt-get install python3-cryptography)",
          file=sys.stderr)
    sys.exit(77)

NONCE = 12
TAG = 16


def attribute_key(master_hex, table, attribute):
    if not table or not attribute:
        raise ValueError("Missing table or attribute for key generation")
    master = bytes.fromhex(master_hex)
    if len(master) != 32:
        raise ValueError("Key must be 32 bytes (64 hex digits)")
    return HKDF(algorithm=hashes.SHA384(), length=32, salt=table.encode(),
                info=b"\xb4" * 32 + attribute.encode()).derive(master)


def seal(key, plaintext):
    nonce = os.urandom(NONCE)
    return base64.b64encode(nonce + AESGCM(key).encrypt(nonce, plaintext, None)).decode()


def open_box(key, value):
    # AES_GCM#decrypt: a 12-byte nonce, a 16-byte tag and a non-empty ciphertext, or it fails.
    if len(value) < NONCE + 1 + TAG:
        raise InvalidTag()
    return AESGCM(key).decrypt(value[:NONCE], value[NONCE:], None)


def self_test():
    # test/lockbox_test.rb, test_attribute_key.
    got = attribute_key("0" * 64, "users", "license").hex()
    if got != "d96ffa3fe916b3a9b57d084f5781e95748333b877e32e6399e387d3d75b238a1":
        sys.exit("attribute_key vector of Lockbox's test_attribute_key fails: " + got)
    # test/lockbox_test.rb, test_decrypt_not_broken (the key itself, no derivation).
    value = base64.b64decode("4nz8vb+KROTD6l9DvxanuOqn9OJWy7LpLDTKHHoM9Ll0lx+FAg==")
    if open_box(bytes(32), value) != b"it works!":
        sys.exit("the value of Lockbox's test_decrypt_not_broken does not open")


def generate(_request):
    return os.urandom(32).hex()


def encrypt(request):
    key = attribute_key(request["master_key"], request["table"], request["attribute"])
    return {str(item["id"]): seal(key, item["plaintext"].encode()) for item in request["items"]}


def configuration(request):
    """The master key and previous versions, given as such or as the exported initializer."""
    if "initializer" in request:
        text = request["initializer"]
        master = re.search(r'^Lockbox\.master_key = "([0-9a-f]{64})"$', text, re.M)
        previous = re.search(r"^Lockbox\.default_options\[:previous_versions\] = \[(.*)\]$", text,
                             re.M)
        if not master or not previous:
            sys.exit("not a Lockbox initializer: " + repr(text[:80]))
        return master.group(1), re.findall(r'\{master_key: "([0-9a-f]{64})"\}', previous.group(1))
    return request["master_key"], request.get("previous_versions", [])


def read(request):
    master, previous = configuration(request)
    keys = [attribute_key(h, request["table"], request["attribute"]) for h in [master] + previous]
    out = {}
    for row_id, text in request["values"].items():
        if text == "":
            out[row_id] = {"plaintext": "", "master_key_only": True}  # stored as it is
            continue
        try:
            value = base64.b64decode(text)
        except binascii.Error:
            out[row_id] = {"error": "DecryptionError"}
            continue
        for i, key in enumerate(keys):  # Encryptor#decrypt: each box in turn
            try:
                out[row_id] = {"plaintext": open_box(key, value).decode(),
                               "master_key_only": i == 0}
                break
            except InvalidTag:
                continue
        else:
            out[row_id] = {"error": "DecryptionError"}
    return out


if __name__ == "__main__":
    verbs = {"generate": generate, "encrypt": encrypt, "read": read}
    if len(sys.argv) != 2 or sys.argv[1] not in verbs:
        sys.exit("usage: lockbox_app.py generate|encrypt|read < request.json")
    self_test()
    request = json.load(sys.stdin) if sys.argv[1] != "generate" else None
    json.dump(verbs[sys.argv[1]](request), sys.stdout)
