#!/usr/bin/python3
"""The application side of rekey's Fernet proof (tests/formats_pg_test.cpp): Debian's
python3-cryptography (cryptography.fernet.Fernet and MultiFernet), nothing of rekey's.

  fernet_app.py generate  stdout Fernet.generate_key(): a new key as applications configure it
  fernet_app.py encrypt   stdin {"key": K, "items": [{"id": I, "plaintext": P, "ts": T}]}
                          stdout {"I": token}: Fernet(K).encrypt_at_time(P, T)
  fernet_app.py read      stdin {"keys": [K2, K1], "tokens": {"I": token}}
                          stdout {"I": {"plaintext": P, "ts": T, "first_key_only": bool}}: what
                          MultiFernet(keys) decrypts (the application configured with the new key
                          first), the token's timestamp, and whether the first key alone opens it
                          (the token was rewritten under the new key)
Exits 77 (ctest: skipped) when python3-cryptography is not installed.
"""
import json
import sys

try:
    from cryptography.fernet import Fernet, InvalidToken, MultiFernet
except ImportError:
    print("SKIPPED: python3-cryptography is not installed (apt-get install python3-cryptography)",
          file=sys.stderr)
    sys.exit(77)


def generate(_request):
    return Fernet.generate_key().decode()


def encrypt(request):
    f = Fernet(request["key"])
    return {str(item["id"]): f.encrypt_at_time(item["plaintext"].encode(), item["ts"]).decode()
            for item in request["items"]}


def timestamp(fernets, data):
    # MultiFernet.extract_timestamp is newer than Debian 12's cryptography 38: the first key
    # whose HMAC verifies reads it, as MultiFernet would.
    for f in fernets:
        try:
            return f.extract_timestamp(data)
        except InvalidToken:
            pass
    raise InvalidToken


def read(request):
    fernets = [Fernet(k) for k in request["keys"]]
    multi = MultiFernet(fernets)
    out = {}
    for row_id, token in request["tokens"].items():
        data = token.encode()
        try:
            fernets[0].decrypt(data)
            first_key_only = True
        except InvalidToken:
            first_key_only = False
        out[row_id] = {"plaintext": multi.decrypt(data).decode(),
                       "ts": timestamp(fernets, data),
                       "first_key_only": first_key_only}
    return out


if __name__ == "__main__":
    verbs = {"generate": generate, "encrypt": encrypt, "read": read}
    if len(sys.argv) != 2 or sys.argv[1] not in verbs:
        sys.exit("usage: fernet_app.py generate|encrypt|read < request.json")
    request = json.load(sys.stdin) if sys.argv[1] != "generate" else None
    json.dump(verbs[sys.argv[1]](request), sys.stdout)
