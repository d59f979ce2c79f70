#!/usr/bin/python3
"""Generates rekey's ciphertext test vectors with an implementation independent of the C++ code.

Uses Debian's python3-cryptography (AESGCM) and nothing from rekey, so a C++ bug cannot be copied
into the expected values. Deterministic: keys, IVs and plaintexts are derived from fixed labels, so
re-running it reproduces the committed files byte for byte.

    /usr/bin/python3 tests/vectors/generate.py      # rewrites tests/vectors/*.json

Formats (docs/FORMAT.md is normative):
  tink  : 0x01 || key_id (uint32 BE) || IV (12) || ciphertext || tag (16); AD = rendered template
  raw   : IV (12) || ciphertext || tag (16); key id in a separate column
  local : 0x01 || IV (12) || GCM(master, data key) (32) || tag (16);
          AD = b"rekey-local-wrap-v1" || rekey key id (uint32 BE)
"""

import base64
import hashlib
import json
import os
import re
import struct

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

HERE = os.path.dirname(os.path.abspath(__file__))

TINK_PREFIX_SIZE = 5
TINK_OVERHEAD = 33
RAW_OVERHEAD = 28
IV_SIZE = 12


def derive(label, size):
    """Deterministic pseudo-random bytes: SHA-256 in counter mode over a text label."""
    out = b""
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{label}#{counter}".encode()).digest()
        counter += 1
    return out[:size]


def key_for(key_id):
    return derive(f"rekey test data key {key_id}", 32)


def be32(v):
    return struct.pack(">I", v)


def seal_tink(key_id, key, iv, plaintext, ad):
    return b"\x01" + be32(key_id) + iv + AESGCM(key).encrypt(iv, plaintext, ad)


def seal_raw(key, iv, plaintext, ad):
    return iv + AESGCM(key).encrypt(iv, plaintext, ad)


def open_tink(value, keyring, ad):
    """Reference decoder with the normative status precedence; returns (status, plaintext)."""
    if len(value) == 0:
        return "empty", None
    if len(value) < TINK_PREFIX_SIZE:
        return "truncated", None
    if value[0] != 0x01:
        return "bad_prefix", None
    key_id = struct.unpack(">I", value[1:5])[0]
    if key_id not in keyring:
        return "unknown_key", None
    if len(value) < TINK_OVERHEAD:
        return "truncated", None
    try:
        return "ok", AESGCM(keyring[key_id]).decrypt(value[5:17], value[17:], ad)
    except Exception:  # cryptography.exceptions.InvalidTag
        return "auth_failed", None


def open_raw(value, key, ad):
    if len(value) == 0:
        return "empty", None
    if key is None:
        return "unknown_key", None
    if len(value) < RAW_OVERHEAD:
        return "truncated", None
    try:
        return "ok", AESGCM(key).decrypt(value[:12], value[12:], ad)
    except Exception:
        return "auth_failed", None


KEY_IDS = [0, 1, 0x7FFFFFFF, 0xFFFFFFFF]
PLAINTEXTS = {
    "empty": b"",
    "1byte": b"\x61",
    "64bytes": bytes(range(64)),
    "1KiB": derive("rekey test plaintext 1KiB", 1024),
}
AD_TEXT = b"public.payment_methods.token:42"
ADS = {"no_ad": b"", "with_ad": AD_TEXT}


def hexs(b):
    return b.hex()


def keyring_json(keyring):
    return [{"key_id": k, "key": hexs(v)} for k, v in sorted(keyring.items())]


def tink_vectors():
    keyring = {k: key_for(k) for k in KEY_IDS}
    valid = []
    for key_id in KEY_IDS:
        for pname, pt in PLAINTEXTS.items():
            for aname, ad in ADS.items():
                name = f"key{key_id:#x}_{pname}_{aname}"
                iv = derive(f"rekey test iv tink {name}", IV_SIZE)
                value = seal_tink(key_id, keyring[key_id], iv, pt, ad)
                assert open_tink(value, keyring, ad) == ("ok", pt)
                assert len(value) == len(pt) + TINK_OVERHEAD
                valid.append({"name": name, "key_id": key_id, "key": hexs(keyring[key_id]),
                              "iv": hexs(iv), "plaintext": hexs(pt), "ad": hexs(ad),
                              "value": hexs(value)})

    base_iv = derive("rekey test iv tink invalid", IV_SIZE)
    base = seal_tink(1, keyring[1], base_iv, b"4111111111111111", AD_TEXT)  # 49 bytes
    base_no_ad = seal_tink(1, keyring[1], base_iv, b"4111111111111111", b"")
    invalid = []

    def add(name, value, ad, status, note):
        got, _ = open_tink(value, keyring, ad)
        assert got == status, (name, got, status)
        invalid.append({"name": name, "value": hexs(value), "ad": hexs(ad), "status": status,
                        "note": note})

    add("empty", b"", AD_TEXT, "empty", "a zero-length value")
    for n in [1, 2, 3, 4]:
        add(f"truncated_{n}", base[:n], AD_TEXT, "truncated", "shorter than the 5-byte prefix")
    for n in [5, 6, 16, 17, 32]:
        add(f"truncated_{n}", base[:n], AD_TEXT, "truncated",
            "prefix names a known key but the value is shorter than the 33-byte overhead")
    add("truncated_tail_48", base[:48], AD_TEXT, "auth_failed",
        "at least 33 bytes, so GCM runs and the shortened tag fails to authenticate")
    add("truncated_tail_33", base[:33], AD_TEXT, "auth_failed",
        "the bare overhead: empty ciphertext with the wrong tag")
    add("short_bad_prefix_4", b"\x00\x00\x00\x01", AD_TEXT, "truncated",
        "length is checked before the version byte")
    for b in [0x00, 0x02, 0x81, 0xFF]:
        add(f"bad_prefix_{b:02x}", bytes([b]) + base[1:], AD_TEXT, "bad_prefix",
            "first byte is not the Tink version byte 0x01")
    raw_value = seal_raw(keyring[1], bytes([0x9C]) + base_iv[1:], b"4111111111111111", AD_TEXT)
    add("raw_value_in_tink_column", raw_value, AD_TEXT, "bad_prefix",
        "a raw-codec value read as Tink: its first IV byte is not 0x01")
    add("tink_raw_prefix_0x00", b"\x00" + base[1:], AD_TEXT, "bad_prefix",
        "Tink's RAW/LEGACY output prefixes (0x00) are not accepted")
    add("unknown_key_2", b"\x01" + be32(2) + base[5:], AD_TEXT, "unknown_key",
        "key id 2 is not in the keyring")
    add("unknown_key_0x80000000", b"\x01" + be32(0x80000000) + base[5:], AD_TEXT,
        "unknown_key", "key id 0x80000000 is not in the keyring")
    add("unknown_key_short_5", b"\x01" + be32(2), AD_TEXT, "unknown_key",
        "the key is resolved before the length is checked against the overhead")
    add("unknown_key_short_20", (b"\x01" + be32(2) + base[5:])[:20], AD_TEXT, "unknown_key",
        "the key is resolved before the length is checked against the overhead")
    add("key_id_swapped", b"\x01" + be32(0) + base[5:], AD_TEXT, "auth_failed",
        "the prefix names another known key: GCM under key 0 fails")
    for i in [5, 16]:
        v = bytearray(base)
        v[i] ^= 0x01
        add(f"flipped_iv_byte_{i}", bytes(v), AD_TEXT, "auth_failed", "one IV bit flipped")
    for i in [17, 32]:
        v = bytearray(base)
        v[i] ^= 0x80
        add(f"flipped_ciphertext_byte_{i}", bytes(v), AD_TEXT, "auth_failed",
            "one ciphertext bit flipped")
    for i in [33, 48]:
        v = bytearray(base)
        v[i] ^= 0x01
        add(f"flipped_tag_byte_{i}", bytes(v), AD_TEXT, "auth_failed", "one tag bit flipped")
    add("wrong_ad", base, b"public.payment_methods.token:43", "auth_failed",
        "sealed for pk 42, opened as pk 43 (a value copied between rows)")
    add("missing_ad", base, b"", "auth_failed", "sealed with associated data, opened without")
    add("unexpected_ad", base_no_ad, AD_TEXT, "auth_failed",
        "sealed without associated data, opened with")
    add("appended_byte", base + b"\x00", AD_TEXT, "auth_failed", "one trailing byte added")

    return {
        "description": "rekey 'tink' codec: AES-256-GCM with Tink's TINK output prefix. "
                       "value = 0x01 || key_id (uint32 big-endian) || iv (12) || ciphertext || "
                       "tag (16); GCM associated data = ad (the prefix is not authenticated "
                       "as associated data). Invalid vectors are opened with 'keyring' and 'ad' "
                       "and must give 'status'. All byte fields are hex. Generated by "
                       "tests/vectors/generate.py.",
        "keyring": keyring_json(keyring),
        "valid": valid,
        "invalid": invalid,
    }


def raw_vectors():
    keyring = {k: key_for(k) for k in KEY_IDS}
    valid = []
    for key_id in KEY_IDS:
        for pname, pt in PLAINTEXTS.items():
            for aname, ad in ADS.items():
                name = f"key{key_id:#x}_{pname}_{aname}"
                iv = derive(f"rekey test iv raw {name}", IV_SIZE)
                value = seal_raw(keyring[key_id], iv, pt, ad)
                assert open_raw(value, keyring[key_id], ad) == ("ok", pt)
                assert len(value) == len(pt) + RAW_OVERHEAD
                valid.append({"name": name, "key_id": key_id, "key": hexs(keyring[key_id]),
                              "iv": hexs(iv), "plaintext": hexs(pt), "ad": hexs(ad),
                              "value": hexs(value)})

    base_iv = derive("rekey test iv raw invalid", IV_SIZE)
    base = seal_raw(keyring[1], base_iv, b"4111111111111111", AD_TEXT)  # 44 bytes
    invalid = []

    def add(name, value, key_id, ad, status, note):
        got, _ = open_raw(value, keyring.get(key_id), ad)
        assert got == status, (name, got, status)
        invalid.append({"name": name, "value": hexs(value), "key_id": key_id, "ad": hexs(ad),
                        "status": status, "note": note})

    add("empty", b"", 1, AD_TEXT, "empty", "a zero-length value")
    add("empty_unknown_key", b"", 2, AD_TEXT, "empty", "emptiness is checked before the key")
    for n in [1, 11, 12, 27]:
        add(f"truncated_{n}", base[:n], 1, AD_TEXT, "truncated",
            "shorter than the 28-byte overhead")
    add("truncated_tail_43", base[:43], 1, AD_TEXT, "auth_failed",
        "at least 28 bytes, so GCM runs and fails")
    add("truncated_tail_28", base[:28], 1, AD_TEXT, "auth_failed",
        "the bare overhead: empty ciphertext with the wrong tag")
    add("unknown_key", base, 2, AD_TEXT, "unknown_key", "the row's key id is not in the keyring")
    add("unknown_key_short", base[:3], 2, AD_TEXT, "unknown_key",
        "the key is resolved before the length is checked")
    add("wrong_key", base, 0, AD_TEXT, "auth_failed", "the row's key id names another key")
    for i in [0, 11, 12, 27, 28, 43]:
        v = bytearray(base)
        v[i] ^= 0x01
        add(f"flipped_byte_{i}", bytes(v), 1, AD_TEXT, "auth_failed", "one bit flipped")
    add("wrong_ad", base, 1, b"public.payment_methods.token:43", "auth_failed",
        "sealed for pk 42, opened as pk 43")
    add("missing_ad", base, 1, b"", "auth_failed", "sealed with associated data, opened without")
    tink_value = seal_tink(1, keyring[1], base_iv, b"4111111111111111", AD_TEXT)
    add("tink_value_in_raw_column", tink_value, 1, AD_TEXT, "auth_failed",
        "a Tink value read as raw: the prefix is taken as IV bytes")

    return {
        "description": "rekey 'raw' codec: value = iv (12) || ciphertext || tag (16), "
                       "AES-256-GCM, GCM associated data = ad; the key id is stored in a separate "
                       "integer column of the row. Invalid vectors are opened with the keyring's "
                       "key for 'key_id' (absent from the keyring = no key) and must give "
                       "'status'. All byte fields are hex. Generated by tests/vectors/generate.py.",
        "keyring": keyring_json(keyring),
        "valid": valid,
        "invalid": invalid,
    }


WRAP_AD_LABEL = b"rekey-local-wrap-v1"


def wrap_ad(key_id):
    return WRAP_AD_LABEL + be32(key_id)


def wrap(master, key_id, iv, data_key):
    assert len(master) == 32 and len(data_key) == 32
    return b"\x01" + iv + AESGCM(master).encrypt(iv, data_key, wrap_ad(key_id))


def unwrap(master, key_id, wrapped):
    if len(wrapped) != 61 or wrapped[0] != 0x01:
        return None
    try:
        return AESGCM(master).decrypt(wrapped[1:13], wrapped[13:], wrap_ad(key_id))
    except Exception:
        return None


def key_ref(master):
    return "local:" + hashlib.sha256(master).digest()[:8].hex()


def local_wrap_vectors():
    masters = {"m1": derive("rekey test master key 1", 32),
               "m2": derive("rekey test master key 2", 32)}
    valid = []
    for mname, master in masters.items():
        for key_id in [1, 2, 0x7FFFFFFF, 0xFFFFFFFF]:
            name = f"{mname}_key{key_id:#x}"
            data_key = derive(f"rekey test wrapped data key {name}", 32)
            iv = derive(f"rekey test iv wrap {name}", IV_SIZE)
            wrapped = wrap(master, key_id, iv, data_key)
            assert len(wrapped) == 61 and unwrap(master, key_id, wrapped) == data_key
            valid.append({"name": name, "master_key": hexs(master),
                          "master_key_base64": base64.b64encode(master).decode(),
                          "kms_key_ref": key_ref(master), "key_id": key_id, "iv": hexs(iv),
                          "data_key": hexs(data_key), "ad": hexs(wrap_ad(key_id)),
                          "wrapped": hexs(wrapped)})

    master = masters["m1"]
    data_key = derive("rekey test wrapped data key invalid", 32)
    iv = derive("rekey test iv wrap invalid", IV_SIZE)
    good = wrap(master, 7, iv, data_key)
    invalid = []

    def add(name, m, key_id, wrapped, note):
        assert unwrap(m, key_id, wrapped) is None, name
        invalid.append({"name": name, "master_key": hexs(m), "key_id": key_id,
                        "wrapped": hexs(wrapped), "note": note})

    add("wrong_master_key", masters["m2"], 7, good, "unwrapped with another master key")
    add("wrong_key_id", master, 8, good,
        "a wrapped key copied to another keyring row: the key id is in the associated data")
    add("bad_version", master, 7, b"\x02" + good[1:], "version byte is not 0x01")
    add("truncated_60", master, 7, good[:60], "not 61 bytes")
    add("extended_62", master, 7, good + b"\x00", "not 61 bytes")
    add("empty", master, 7, b"", "not 61 bytes")
    for i in [1, 13, 44, 45, 60]:
        v = bytearray(good)
        v[i] ^= 0x01
        add(f"flipped_byte_{i}", master, 7, bytes(v), "one bit flipped")

    return {
        "description": "rekey local KMS wrapping of a 32-byte data key under a 32-byte master "
                       "key: wrapped = 0x01 (version) || iv (12) || ciphertext (32) || tag (16) "
                       "(61 bytes), AES-256-GCM with associated data = ASCII "
                       "'rekey-local-wrap-v1' || key_id (uint32 big-endian). kms_key_ref = "
                       "'local:' || hex(SHA-256(master key)[0:8]). Every invalid vector must "
                       "fail to unwrap. All byte fields are hex. Generated by "
                       "tests/vectors/generate.py.",
        "valid": valid,
        "invalid": invalid,
    }


PLACEHOLDER_NAMES = ("schema", "table", "column", "pk")


def compile_template(text):
    """Reference parser of the associated-data template grammar; raises ValueError."""
    parts = []  # ("lit", str) | ("var", name)
    i = 0
    lit = ""
    while i < len(text):
        c = text[i]
        if c == "{" and text.startswith("{{", i):
            lit += "{"
            i += 2
        elif c == "}" and text.startswith("}}", i):
            lit += "}"
            i += 2
        elif c == "{":
            end = text.find("}", i + 1)
            if end < 0:
                raise ValueError("unterminated placeholder")
            name = text[i + 1:end]
            if name not in PLACEHOLDER_NAMES:
                raise ValueError(f"unknown placeholder {{{name}}}")
            if lit:
                parts.append(("lit", lit))
                lit = ""
            parts.append(("var", name))
            i = end + 1
        elif c == "}":
            raise ValueError("unmatched }")
        else:
            lit += c
            i += 1
    if lit:
        parts.append(("lit", lit))
    return parts


def render_template(parts, values):
    return "".join(p if kind == "lit" else values[p] for kind, p in parts)


def associated_data_vectors():
    cases = [
        ("canonical", "{schema}.{table}.{column}:{pk}", "public", "payment_methods", "token",
         "42", "bigint"),
        ("uuid_pk", "{schema}.{table}.{column}:{pk}", "public", "users", "ssn",
         "8f14e45f-ceea-467f-a0e6-0d3c5a3b1b2e", "uuid"),
        ("text_pk", "{table}/{pk}", "billing", "accounts", "iban", "acct-0001", "text"),
        ("empty_template", "", "public", "t", "c", "1", "bigint"),
        ("no_placeholders", "constant context", "public", "t", "c", "1", "bigint"),
        ("only_pk", "{pk}", "public", "t", "c", "-9223372036854775808", "bigint"),
        ("repeated", "{pk}-{pk}-{table}{table}", "s", "t", "c", "7", "bigint"),
        ("escaped_braces", "{{{schema}}}.{{literal}}", "public", "t", "c", "1", "bigint"),
        ("close_escape_first", "}}{{", "public", "t", "c", "1", "bigint"),
        ("escape_after_placeholder", "{pk}}}", "public", "t", "c", "5", "bigint"),
        ("mixed_case_identifiers", "{schema}.{table}.{column}", "Sales", "Order Items",
         "Card Number", "1", "bigint"),
        ("pk_contains_placeholder_text", "{table}:{pk}", "public", "notes", "body",
         "{table}{{", "text"),
        ("empty_pk", "{column}={pk};", "public", "t", "secret", "", "text"),
        ("utf8", "{schema}.{table}.{column}:{pk} \u2713", "\u00e9t\u00e9", "caf\u00e9",
         "\u5bc6\u7801", "\u00fc-1", "text"),
        ("quote_chars", "'{table}'\"{column}\"", "public", "t", "c", "1", "bigint"),
    ]
    valid = []
    for name, tmpl, schema, table, column, pk, pk_type in cases:
        parts = compile_template(tmpl)
        values = {"schema": schema, "table": table, "column": column, "pk": pk}
        expected = render_template(parts, values)
        # Cross-check with Python's own brace formatting, whose {{ }} rules are the same.
        assert expected == tmpl.format(**values), name
        valid.append({"name": name, "template": tmpl, "schema": schema, "table": table,
                      "column": column, "pk": pk, "pk_type": pk_type,
                      "uses_pk": any(k == "var" and p == "pk" for k, p in parts),
                      "expected": expected,
                      "expected_hex": hexs(expected.encode("utf-8"))})
    invalid_templates = [
        ("lone_open", "{"),
        ("lone_close", "}"),
        ("unknown_name", "{foo}"),
        ("empty_name", "{}"),
        ("case_sensitive", "{Schema}"),
        ("space_in_name", "{ table}"),
        ("unterminated", "{schema}.{table"),
        ("trailing_close", "abc}"),
        ("escaped_open_then_close", "{{pk}"),
        ("placeholder_then_close", "{pk}}"),
        ("escape_then_lone_close", "{{}"),
        ("nested", "{a{pk}}"),
        ("format_spec", "{pk:>10}"),
        ("conversion", "{pk!r}"),
        ("positional", "{0}"),
        ("odd_close_run", "}}}"),
    ]
    invalid = []
    for name, tmpl in invalid_templates:
        try:
            compile_template(tmpl)
        except ValueError as e:
            invalid.append({"name": name, "template": tmpl, "error": str(e)})
        else:
            raise AssertionError(f"{name}: {tmpl!r} should not compile")
    return {
        "description": "rekey associated-data templates. Placeholders {schema} {table} {column} "
                       "{pk}; '{{' and '}}' are literal braces; anything else in braces, or an "
                       "unmatched brace, is an error at compile time. The rendered string's "
                       "UTF-8 bytes (expected_hex) are the GCM associated data. Generated by "
                       "tests/vectors/generate.py.",
        "valid": valid,
        "invalid": invalid,
    }


def write(name, doc):
    path = os.path.join(HERE, name)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {path}")


def main():
    write("tink_aes256gcm.json", tink_vectors())
    write("raw_aes256gcm.json", raw_vectors())
    write("local_wrap.json", local_wrap_vectors())
    write("associated_data.json", associated_data_vectors())


if __name__ == "__main__":
    main()
