#!/usr/bin/python3
"""The application side of rekey's Rails proof (tests/rails_pg_test.cpp, src/crypto/rails_test.cpp).

Ruby cannot run here, so this is ActiveRecord::Encryption's message format written in Python from
docs/FORMAT.md, "rails" (itself cited line by line from the Rails source), with nothing of rekey's:
hashlib.pbkdf2_hmac for Key.derive_from, python3-cryptography's AESGCM for Cipher::Aes256Gcm, zlib
for the compression, json.dumps in Ruby's JSON.dump form. `selfcheck` proves it against the
vector of Rails' own test suite before anything else trusts it.

  rails_app.py selfcheck  exit 0 iff the Rails test vector decrypts and re-encrypts byte for byte
  rails_app.py derive     stdin {"primary_key": P, "salt": S, "digest": "SHA1"|"SHA256"}
                          stdout {"key_hex": hex of the derived key, "reference": Key#id}
  rails_app.py encrypt    stdin {"primary_key": P, "salt": S, "digest": D, "items": [{"id": I,
                          "plaintext": T, "deterministic": bool, "store_key_references": bool,
                          "envelope": bool}]}
                          stdout {"I": message}
  rails_app.py read       stdin {"primary_keys": [P1, P2], "salt": S, "digest": D,
                          "messages": {"I": message}}
                          stdout {"I": {"plaintext": T, "last_key_only": bool}}: what Rails
                          configured with that primary_key list decrypts (every key tried, or
                          those of "i"), and whether the last (encrypting) key alone opens it
Exits 77 (ctest: skipped) when python3-cryptography is not installed.
"""
import base64
import hashlib
import hmac
import json
import os
import sys
import zlib

try:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
except ImportError:
    print("SKIPPED: python3-cryptography is not installed (apt-get install python3-cryptography)",
          file=sys.stderr)
    sys.exit(77)

COMPRESSION_THRESHOLD = 140  # Encryptor::THRESHOLD_TO_JUSTIFY_COMPRESSION (bytes)


def b64(data):
    return base64.b64encode(data).decode()


def unb64(text):
    return base64.b64decode(text, validate=True)


def derive(primary_key, salt, digest):
    # Key.derive_from -> KeyGenerator#derive_key_from -> ActiveSupport::KeyGenerator#generate_key
    return hashlib.pbkdf2_hmac(digest.lower(), primary_key.encode(), salt.encode(), 2 ** 16, 32)


def reference(key):
    return hashlib.sha1(key).hexdigest()[:4]  # Key#id


def seal(key, clear, deterministic):
    # Cipher::Aes256Gcm#encrypt; headers in the order Rails adds them: iv, at
    if deterministic:
        iv = hmac.new(key, clear, hashlib.sha256).digest()[:12]
    else:
        iv = os.urandom(12)
    sealed = AESGCM(key).encrypt(iv, clear, b"")
    return {"p": b64(sealed[:-16]), "h": {"iv": b64(iv), "at": b64(sealed[-16:])}}


def open_sealed(key, message):
    h = message["h"]
    return AESGCM(key).decrypt(unb64(h["iv"]), unb64(message["p"]) + unb64(h["at"]), b"")


def dump(message):
    # Ruby's JSON.dump: no spaces, "/" not escaped, keys in insertion order
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False)


def encrypt_one(primary, item):
    clear = item["plaintext"].encode()
    compressed = len(clear) > COMPRESSION_THRESHOLD  # Encryptor#compress_if_worth_it
    if compressed:
        clear = zlib.compress(clear)
    if item.get("envelope"):
        data_key = os.urandom(32)  # EnvelopeEncryptionKeyProvider#encryption_key
        message = seal(data_key, clear, False)
        k = seal(primary, data_key, False)
        k["h"]["e"] = b64(b"ASCII-8BIT")  # Cipher#encrypt: a binary String's encoding name
        message["h"]["k"] = k
    else:
        message = seal(primary, clear, item.get("deterministic", False))
    if item.get("store_key_references"):
        message["h"]["i"] = b64(reference(primary).encode())
    if compressed:
        message["h"]["c"] = True
    return dump(message)


def decrypt(keys, text):
    """Returns (plaintext bytes, the index of the key that opened it); raises on failure."""
    message = json.loads(text)
    h = message["h"]
    candidates = list(enumerate(keys))
    if "i" in h:  # KeyProvider#decryption_keys
        ref = unb64(h["i"]).decode()
        candidates = [(n, k) for n, k in candidates if reference(k) == ref]
    for n, key in candidates:
        try:
            if "k" in h:
                data_key = open_sealed(key, h["k"])
                clear = open_sealed(data_key, message)
            else:
                clear = open_sealed(key, message)
        except InvalidTag:
            continue
        return (zlib.decompress(clear) if h.get("c") else clear), n
    raise ValueError("no key opens it")


def selfcheck(_request):
    # activerecord/test/cases/encryption/encryptable_record_test.rb, "deterministic ciphertexts
    # remain constant", under activerecord/test/cases/helper.rb's configuration (the framework
    # default digest, SHA1).
    vector = '{"p":"DIohhw==","h":{"iv":"wEPaDcJP3VNIxaiz","at":"X7+2xvvcu1k1if6Dy28Esw=="}}'
    key = derive("test deterministic key", "testing key derivation salt", "SHA1")
    clear, _ = decrypt([key], vector)
    assert clear == b"Dune", clear
    assert dump(seal(key, b"Dune", True)) == vector
    return "ok"


def derive_cmd(request):
    key = derive(request["primary_key"], request["salt"], request["digest"])
    return {"key_hex": key.hex(), "reference": reference(key)}


def encrypt(request):
    primary = derive(request["primary_key"], request["salt"], request["digest"])
    return {str(item["id"]): encrypt_one(primary, item) for item in request["items"]}


def read(request):
    keys = [derive(p, request["salt"], request["digest"]) for p in request["primary_keys"]]
    out = {}
    for row_id, text in request["messages"].items():
        clear, n = decrypt(keys, text)
        out[row_id] = {"plaintext": clear.decode(), "last_key_only": n == len(keys) - 1}
    return out


if __name__ == "__main__":
    verbs = {"selfcheck": selfcheck, "derive": derive_cmd, "encrypt": encrypt, "read": read}
    if len(sys.argv) != 2 or sys.argv[1] not in verbs:
        sys.exit("usage: rails_app.py selfcheck|derive|encrypt|read < request.json")
    request = json.load(sys.stdin) if sys.argv[1] != "selfcheck" else None
    json.dump(verbs[sys.argv[1]](request), sys.stdout)
