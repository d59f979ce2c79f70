"""The fixtures of run_bench.py's `codecs` part: per codec, a seed table of N values in the codec's
own format, all under the codec's key 1 (its source key), and that key and its key 2 in the form
the application configures them with, for `rekey keys import --format ...`.

Every codec gets the same plaintexts' size (PLAINTEXT_BYTES of ASCII, so text formats carry them
as they are) and the same table shape (`id bigint PRIMARY KEY` and one value column), so rows/s
differ only by what the codec costs. Values are made with Debian's python3-cryptography in bulk,
with the format code of the codecs' own proofs (tests/lockbox/lockbox_app.py,
tests/rails/rails_app.py; Fernet with the library itself) and, for Tink and cloak, from
docs/FORMAT.md §1 and §15 (cloak checked against the library's tests/cloak/vectors.json first).
"""
import base64
import hashlib
import importlib.util
import json
import os
import struct

from cryptography.fernet import Fernet
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLAINTEXT_BYTES = 48  # what the anchors' fixture encrypts per row
RAILS_SALT = "qJ4vX0bQ2t5YB8uJr1Pp9w3KzE6mN7cA"  # tests/rails_pg_test.cpp's


def _load(path, name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_lockbox = _load("tests/lockbox/lockbox_app.py", "bench_lockbox_app")
_rails = _load("tests/rails/rails_app.py", "bench_rails_app")


def plaintext(i):
    """Row i's plaintext: PLAINTEXT_BYTES ASCII bytes, distinct per row."""
    return f"{i:012d}-{os.urandom(PLAINTEXT_BYTES // 2).hex()}"[:PLAINTEXT_BYTES].encode()


# --- cloak (FORMAT.md §15) -----------------------------------------------------------------------

def cloak_key_text(key):
    return "k1.aesgcm256." + base64.urlsafe_b64encode(key).decode()


def cloak_fingerprint(key_text):
    return hashlib.sha256(key_text.encode()).hexdigest()[:8]


def cloak_seal(key, fingerprint, clear, iv=None):
    iv = iv if iv is not None else os.urandom(12)
    sealed = AESGCM(key).encrypt(iv, clear, None)
    return (f"v1.aesgcm256.{fingerprint}."
            f"{base64.urlsafe_b64encode(iv).decode().rstrip('=')}."
            f"{base64.urlsafe_b64encode(sealed).decode()}")


def cloak_self_check():
    """The library's own strings (tests/cloak/vectors.json) re-made byte for byte with their IVs:
    the bench's values are what @47ng/cloak writes."""
    with open(os.path.join(REPO, "tests", "cloak", "vectors.json")) as f:
        vectors = json.load(f)
    for known in vectors["keys"]:
        if cloak_fingerprint(known["key"]) != known["fingerprint"]:
            raise RuntimeError(f"cloak fingerprint of {known['fingerprint']} does not match")
    checked = 0
    for v in vectors["values"]:
        parts = v["value"].split(".")
        if len(parts) != 5 or not v["key"].startswith("k1.aesgcm256."):
            continue
        key = base64.urlsafe_b64decode(v["key"][len("k1.aesgcm256."):])
        iv = base64.urlsafe_b64decode(parts[3] + "=" * (-len(parts[3]) % 4))
        if cloak_seal(key, parts[2], v["plaintext"].encode(), iv) != v["value"]:
            raise RuntimeError(f"cloak value {v['value']} is not reproduced")
        checked += 1
    if not checked:
        raise RuntimeError("tests/cloak/vectors.json holds no value to check against")


# --- the codecs ----------------------------------------------------------------------------------

class Codec:
    """name; column type; key_file(key, index) -> (file text, --format or None);
    sealer(key, table, column) -> a function plaintext -> stored text (COPY text form);
    key_id_column: the row names its key in an integer column `key_id` (raw)."""

    def __init__(self, name, column_type, key_file, sealer, key_id_column=False):
        self.name, self.column_type = name, column_type
        self.key_file, self.sealer, self.key_id_column = key_file, sealer, key_id_column


def _tink_sealer(key, _table, _column):
    aead = AESGCM(key)

    def seal(clear):
        iv = os.urandom(12)
        return "\\\\x" + (b"\x01" + struct.pack(">I", 1) + iv + aead.encrypt(iv, clear, None)).hex()
    return seal


def _raw_sealer(key, _table, _column):
    aead = AESGCM(key)

    def seal(clear):
        iv = os.urandom(12)
        return "\\\\x" + (iv + aead.encrypt(iv, clear, None)).hex()
    return seal


def _fernet_sealer(key, _table, _column):
    f = Fernet(base64.urlsafe_b64encode(key))
    return lambda clear: f.encrypt(clear).decode()


def _lockbox_sealer(key, table, column):
    attribute = _lockbox.attribute_key(key.hex(), table, column)
    return lambda clear: _lockbox.seal(attribute, clear)


def _rails_primary(index):
    return f"bench-rails-primary-key-{index}-0123456789"


def _rails_sealer(_key, _table, _column):
    derived = _rails.derive(_rails_primary(1), RAILS_SALT, "SHA256")
    return lambda clear: _rails.encrypt_one(derived, {"plaintext": clear.decode()})


def _cloak_sealer(key, _table, _column):
    fingerprint = cloak_fingerprint(cloak_key_text(key))
    return lambda clear: cloak_seal(key, fingerprint, clear)


def _rails_key_file(_key, index):
    return (f"active_record_encryption:\n  primary_key: {_rails_primary(index)}\n"
            f"  key_derivation_salt: {RAILS_SALT}\n  hash_digest_class: SHA256\n", "rails")


CODECS = {
    # Tink: the keyring's raw 32 bytes, imported as the Tink tests and the main bench do.
    "tink": Codec("tink", "bytea", lambda key, _i: (key, None), _tink_sealer),
    # raw: the same bytes without Tink's prefix, the key id in the row (FORMAT.md §2).
    "raw": Codec("raw", "bytea", lambda key, _i: (key, None), _raw_sealer, key_id_column=True),
    "fernet": Codec("fernet", "text",
                    lambda key, _i: (base64.urlsafe_b64encode(key).decode() + "\n", "fernet"),
                    _fernet_sealer),
    "rails": Codec("rails", "text", _rails_key_file, _rails_sealer),
    "lockbox": Codec("lockbox", "text", lambda key, _i: (key.hex() + "\n", "lockbox"),
                     _lockbox_sealer),
    "cloak": Codec("cloak", "text", lambda key, _i: (cloak_key_text(key) + "\n", "cloak"),
                   _cloak_sealer),
}


def copy_rows(codec, key, key_id, table, column, rows, chunk=50_000):
    """Yields COPY text chunks of rows (id, [key_id,] value) sealed under key (the codec's key 1,
    rekey's key_id)."""
    seal = codec.sealer(key, table, column)
    named = f"{key_id}\t" if codec.key_id_column else ""
    lines = []
    for i in range(1, rows + 1):
        lines.append(f"{i}\t{named}{seal(plaintext(i))}\n")
        if len(lines) == chunk or i == rows:
            yield "".join(lines)
            lines = []
