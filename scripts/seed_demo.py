#!/usr/bin/python3
"""Seeds a demo table of Tink-format AES-256-GCM values, written from docs/FORMAT.md alone with
Debian's python3-cryptography, as an application in another language would.

usage: seed_demo.py TABLE ROWS KEY_ID KEY_FILE
Connects through libpq's PG* variables. Prints the plaintext digest that `rekey job verify`
computes (docs/operations.md), so the demo can prove the rotation changed no plaintext.
"""
import hashlib
import io
import os
import struct
import sys

import psycopg2
from cryptography.hazmat.primitives.ciphers.aead import AESGCM


def tink_encrypt(aead, key_id, plaintext, ad=b""):
    iv = os.urandom(12)
    return b"\x01" + struct.pack(">I", key_id) + iv + aead.encrypt(iv, plaintext, ad or None)


def main():
    table, rows, key_id, key_file = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    with open(key_file, "rb") as f:
        aead = AESGCM(f.read())
    digest = hashlib.sha256()
    buf = io.StringIO()
    for i in range(1, rows + 1):
        plaintext = b"4111-1111-1111-%07d" % (1000000 + i)
        token = tink_encrypt(aead, key_id, plaintext)
        buf.write("%d\t%d\t%d\t\\\\x%s\t%s\n" % (i, i % 10, key_id, token.hex(), ("visa", "mc", "amex")[i % 3]))
        pk = str(i).encode()
        digest.update(pk + b"\0" + b"token" + b"\0" + struct.pack(">I", len(plaintext)) + plaintext)
    conn = psycopg2.connect("")
    with conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE %s (id bigint PRIMARY KEY, tenant_id int NOT NULL, key_id int NOT NULL,"
                    " token bytea, brand text)" % table)
        buf.seek(0)
        cur.copy_expert("COPY %s FROM STDIN" % table, buf)
        cur.execute("ANALYZE %s" % table)
    print(digest.hexdigest())


if __name__ == "__main__":
    main()
