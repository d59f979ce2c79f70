#!/usr/bin/python3
"""A live application of a rekey scope, written from docs/applications.md alone (and the codec of
docs/FORMAT.md, section 8), as a team in any language would write theirs.

It reads and re-saves random rows of a table of Tink-format values while rekey rotates them:
  - keys come from the view rekey.application_keys and are unwrapped here, with the
    application's own KMS access (local master key, AWS KMS through boto3, Vault Transit over
    its HTTP API);
  - LISTEN rekey_keys tells it of every key change; it re-reads the view on each notification;
  - it reports as a reader (rekey.reader_heartbeat) after every change of the keys it holds,
    and every --heartbeat-interval seconds;
  - a read decrypts a row's value; a write re-saves the row's plaintext encrypted under the
    scope's primary key (so plaintext digests stay comparable), writing the key-id column too.

usage: demo_app.py --table public.payment_methods [--key-id-column key_id] [--scope default]
                   [--reader NAME] [--load-delay S] [--heartbeat-interval S] [--rate OPS]
                   [--write-ratio R] [--duration S] [--stats-file F] [--log-reads-failing N]
Connects through --db, else DATABASE_URL, else libpq's PG* variables. KMS credentials as for
rekey itself: REKEY_MASTER_KEY_FILE / REKEY_MASTER_KEY (local), AWS_* (aws-kms), VAULT_ADDR and
VAULT_TOKEN (vault-transit). Stops on SIGTERM or SIGINT (or after --duration), prints
"app: reads=... writes=... failed_reads=..." and exits 0 iff no read failed.

--load-delay S makes keys it hears of through NOTIFY load S seconds late (a primary key at once):
a slow configuration rollout, which the demo uses to show a job waiting for its readers.
"""
import argparse
import base64
import hashlib
import json
import os
import random
import re
import select
import signal
import socket
import struct
import sys
import time
import urllib.request

import psycopg2
import psycopg2.extensions
from cryptography.hazmat.primitives.ciphers.aead import AESGCM


def log(msg):
    print("app: " + msg, flush=True)


# ----------------------------------------------------------------------------------------------
# The codec (docs/FORMAT.md, section 8)
# ----------------------------------------------------------------------------------------------

def render_ad(template, schema, table, column, pk_text):
    values = {"schema": schema, "table": table, "column": column, "pk": pk_text}

    def sub(m):
        tok = m.group(0)
        if tok in ("{{", "}}"):
            return tok[0]
        if tok[1:-1] in values:
            return values[tok[1:-1]]
        raise ValueError(f"bad associated-data template at {tok!r}")
    return re.sub(r"\{\{|\}\}|\{[^}]*\}|[{}]", sub, template or "").encode("utf-8")


def seal_tink(key_id, key, plaintext, ad=b""):
    iv = os.urandom(12)
    return b"\x01" + struct.pack(">I", key_id) + iv + AESGCM(key).encrypt(iv, plaintext, ad)


def open_tink(value, keys, ad=b""):
    if len(value) == 0: return "empty", None
    if len(value) < 5: return "truncated", None
    if value[0] != 0x01: return "bad_prefix", None
    key_id = struct.unpack(">I", value[1:5])[0]
    if key_id not in keys: return "unknown_key", None
    if len(value) < 33: return "truncated", None
    try:
        return "ok", AESGCM(keys[key_id]).decrypt(value[5:17], value[17:], ad)
    except Exception:  # cryptography.exceptions.InvalidTag
        return "auth_failed", None


# ----------------------------------------------------------------------------------------------
# Unwrapping, one function per KMS provider (docs/applications.md, "Unwrapping a key")
# ----------------------------------------------------------------------------------------------

def local_master_key():
    path = os.environ.get("REKEY_MASTER_KEY_FILE")
    if path:
        with open(path, "rb") as f:
            raw = f.read()
        return raw if len(raw) == 32 else base64.b64decode(raw.strip())
    return base64.b64decode(os.environ["REKEY_MASTER_KEY"].strip())


def unwrap_local(key_id, kms_key_ref, wrapped):
    master = local_master_key()
    ref = "local:" + hashlib.sha256(master).digest()[:8].hex()
    if ref != kms_key_ref:
        raise RuntimeError(f"key {key_id} is wrapped by master key {kms_key_ref}, ours is {ref}")
    if len(wrapped) != 61 or wrapped[0] != 0x01:
        raise RuntimeError(f"key {key_id}: not a rekey local-wrap v1 value")
    ad = b"rekey-local-wrap-v1" + struct.pack(">I", key_id)
    return AESGCM(master).decrypt(wrapped[1:13], wrapped[13:], ad)


def unwrap_aws_kms(key_id, kms_key_ref, wrapped):
    import boto3  # Debian: python3-boto3
    kms = boto3.client("kms", endpoint_url=os.environ.get("AWS_ENDPOINT_URL_KMS"))
    reply = kms.decrypt(CiphertextBlob=wrapped, KeyId=kms_key_ref,
                        EncryptionContext={"rekey_key_id": str(key_id)})
    return reply["Plaintext"]


def unwrap_vault_transit(key_id, kms_key_ref, wrapped):
    mount, name = kms_key_ref.rsplit("/keys/", 1)
    body = json.dumps({
        "ciphertext": wrapped.decode("ascii"),
        "context": base64.b64encode(b"rekey_key_id=%d" % key_id).decode("ascii"),
    }).encode()
    req = urllib.request.Request(f"{os.environ['VAULT_ADDR']}/v1/{mount}/decrypt/{name}",
                                 data=body, method="POST",
                                 headers={"X-Vault-Token": os.environ["VAULT_TOKEN"],
                                          "Content-Type": "application/json"})
    if os.environ.get("VAULT_NAMESPACE"):
        req.add_header("X-Vault-Namespace", os.environ["VAULT_NAMESPACE"])
    with urllib.request.urlopen(req, timeout=10) as reply:
        return base64.b64decode(json.load(reply)["data"]["plaintext"])


UNWRAP = {"local": unwrap_local, "aws-kms": unwrap_aws_kms,
          "vault-transit": unwrap_vault_transit}


# ----------------------------------------------------------------------------------------------
# The contract: keys, notifications, heartbeats
# ----------------------------------------------------------------------------------------------

class ScopeKeys:
    """The data keys of one scope as this instance holds them."""

    def __init__(self, dsn, scope, reader, load_delay, heartbeat_interval):
        self.dsn, self.scope, self.reader = dsn, scope, reader
        self.load_delay, self.heartbeat_interval = load_delay, heartbeat_interval
        self.keys = {}          # key_id -> 32-byte data key: what this instance can decrypt
        self.primary = None     # the key id new values are encrypted under
        self.heard_at = {}      # key_id -> when a NOTIFY first announced it (for --load-delay)
        self.next_due = None    # when the next delayed key is due, if one waits
        self.listen = None
        self.last_heartbeat = 0.0
        self.heartbeats = 0

    def connect(self):
        # LISTEN before reading the view: a change committed in between is then never missed.
        self.listen = psycopg2.connect(self.dsn)
        self.listen.set_isolation_level(psycopg2.extensions.ISOLATION_LEVEL_AUTOCOMMIT)
        self.listen.cursor().execute("LISTEN rekey_keys")

    def reload(self, conn, startup=False):
        """Re-reads the view; loads the keys it lacks (late ones once their delay is over)."""
        with conn.cursor() as cur:
            cur.execute("SELECT key_id, status, is_primary, kms_provider, kms_key_ref, wrapped_key"
                        "  FROM rekey.application_keys WHERE scope = %s ORDER BY key_id",
                        (self.scope,))
            rows = cur.fetchall()
        conn.commit()
        now = time.monotonic()
        listed = set()
        changed = False
        primary = None
        self.next_due = None
        for key_id, status, is_primary, provider, ref, wrapped in rows:
            listed.add(key_id)
            if is_primary:
                primary = key_id
            if key_id in self.keys:
                continue
            due = self.heard_at.get(key_id, now) + self.load_delay
            if not (startup or is_primary or now >= due):
                self.next_due = due if self.next_due is None else min(self.next_due, due)
                continue
            self.keys[key_id] = UNWRAP[provider](key_id, ref, bytes(wrapped))
            changed = True
            log(f"loaded key {key_id} ({status}, {provider})")
        # A key gone from the view (retired, destroyed) is dropped: no value may be under it.
        for key_id in set(self.keys) - listed:
            del self.keys[key_id]
            changed = True
            log(f"dropped key {key_id}")
        if primary != self.primary:
            log(f"primary key is now {primary} (was {self.primary})")
            self.primary = primary
        if changed:
            self.heartbeat(conn)  # report at once: a job may be waiting for this very key

    def poll(self, conn):
        """Handles the notifications that arrived; heartbeats when due."""
        if select.select([self.listen], [], [], 0)[0]:
            self.listen.poll()
        notified = False
        while self.listen.notifies:
            n = self.listen.notifies.pop(0)
            event = json.loads(n.payload)
            if event["scope"] != self.scope:
                continue
            notified = True
            log(f"NOTIFY key {event['key_id']} {event['event']} "
                f"({event['previous_status'] or 'new'} -> {event['status']})")
            if event["event"] == "added":
                self.heard_at[event["key_id"]] = time.monotonic()
        if notified or (self.next_due is not None and time.monotonic() >= self.next_due):
            self.reload(conn)
        if time.monotonic() - self.last_heartbeat >= self.heartbeat_interval:
            self.heartbeat(conn)

    def heartbeat(self, conn):
        with conn.cursor() as cur:
            cur.execute("SELECT rekey.reader_heartbeat(%s, %s, %s::bigint[])",
                        (self.reader, self.scope, sorted(self.keys)))
        conn.commit()
        self.last_heartbeat = time.monotonic()
        self.heartbeats += 1
        if self.heartbeats == 1 or self.heartbeats % 20 == 0:
            log(f"reported as reader {self.reader}: keys {sorted(self.keys)}")


# ----------------------------------------------------------------------------------------------
# The workload
# ----------------------------------------------------------------------------------------------

def quote_table(name):
    return ".".join('"' + p.replace('"', '""') + '"' for p in name.split("."))


def verify_all(conn, keys, args, schema, table, qt, pk, col):
    """Decrypts every value of the column once, in primary-key order; prints the counts and the
    plaintext digest `rekey job verify` prints (docs/operations.md, "Verifying a rotation").
    Returns the exit code: 0 iff every value decrypted."""
    digest = hashlib.sha256()
    by_key, failures, n = {}, {}, 0
    with conn.cursor(name="verify_all") as cur:
        cur.itersize = 5000
        # ORDER BY the table's column, not the text output column of the same name.
        cur.execute(f"SELECT t.{pk}::text AS pk_text, t.{col} FROM {qt} t"
                    f" WHERE t.{col} IS NOT NULL ORDER BY t.{pk}")
        for pk_text, value in cur:
            value = bytes(value)
            ad = render_ad(args.ad_template, schema, table, args.column, pk_text)
            status, plaintext = open_tink(value, keys.keys, ad)
            n += 1
            if status != "ok":
                failures[status] = failures.get(status, 0) + 1
                continue
            key_id = str(struct.unpack(">I", value[1:5])[0])
            by_key[key_id] = by_key.get(key_id, 0) + 1
            digest.update(pk_text.encode() + b"\0" + args.column.encode() + b"\0" +
                          struct.pack(">I", len(plaintext)) + plaintext)
    conn.commit()
    result = {"values": n, "values_by_key": by_key, "failures": failures,
              "plaintext_sha256": digest.hexdigest()}
    log("verified " + json.dumps(result, sort_keys=True))
    if args.stats_file:
        with open(args.stats_file, "w") as f:
            json.dump(result, f)
    return 1 if failures else 0


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--db", default=os.environ.get("DATABASE_URL", ""))
    p.add_argument("--table", required=True)
    p.add_argument("--pk-column", default="id")
    p.add_argument("--column", default="token")
    p.add_argument("--key-id-column", default=None)
    p.add_argument("--ad-template", default=None)
    p.add_argument("--scope", default="default")
    p.add_argument("--reader", default=f"demo-app@{socket.gethostname()}:{os.getpid()}")
    p.add_argument("--load-delay", type=float, default=0.0)
    p.add_argument("--heartbeat-interval", type=float, default=60.0)
    p.add_argument("--rate", type=float, default=100.0, help="operations per second")
    p.add_argument("--write-ratio", type=float, default=0.3)
    p.add_argument("--duration", type=float, default=0.0, help="0: until SIGTERM")
    p.add_argument("--stats-file", default=None)
    p.add_argument("--ready-file", default=None, help="written once keys are loaded and reported")
    p.add_argument("--verify-all", action="store_true",
                   help="decrypt every row once, print the plaintext digest, and exit")
    args = p.parse_args()

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))

    schema, table = args.table.split(".") if "." in args.table else ("public", args.table)
    qt, pk, col = quote_table(args.table), quote_table(args.pk_column), quote_table(args.column)
    kcol = quote_table(args.key_id_column) if args.key_id_column else None
    stats = {"reads": 0, "writes": 0, "failed_reads": 0, "skipped_writes": 0, "reconnects": 0,
             "failures": {}, "reads_by_key": {}, "writes_by_key": {}}

    keys = ScopeKeys(args.db, args.scope, args.reader, args.load_delay, args.heartbeat_interval)
    keys.connect()
    conn = psycopg2.connect(args.db)
    keys.reload(conn, startup=True)
    keys.heartbeat(conn)
    if args.verify_all:
        sys.exit(verify_all(conn, keys, args, schema, table, qt, pk, col))
    with conn.cursor() as cur:
        cur.execute(f"SELECT min({pk}), max({pk}) FROM {qt}")
        lo, hi = cur.fetchone()
    conn.commit()
    log(f"reader {args.reader}: scope {args.scope}, keys {sorted(keys.keys)}, primary "
        f"{keys.primary}; rows {lo}..{hi} of {args.table}")
    if args.ready_file:
        with open(args.ready_file, "w") as f:
            f.write("ready\n")

    def operate():
        """One read of a random row, and maybe a write of it."""
        keys.poll(conn)
        row_id = random.randint(lo, hi)
        ad = render_ad(args.ad_template, schema, table, args.column, str(row_id))
        with conn.cursor() as cur:
            cur.execute(f"SELECT {col} FROM {qt} WHERE {pk} = %s", (row_id,))
            row = cur.fetchone()
        if row is None or row[0] is None:
            conn.commit()
            return
        value = bytes(row[0])
        status, plaintext = open_tink(value, keys.keys, ad)
        key_id = struct.unpack(">I", value[1:5])[0] if len(value) >= 5 else None
        stats["reads"] += 1
        stats["reads_by_key"][str(key_id)] = stats["reads_by_key"].get(str(key_id), 0) + 1
        if status != "ok":
            stats["failed_reads"] += 1
            stats["failures"][status] = stats["failures"].get(status, 0) + 1
            log(f"FAILED READ of row {row_id}: {status} (key {key_id}; we hold {sorted(keys.keys)})")
            conn.commit()
        elif keys.primary is not None and random.random() < args.write_ratio:
            # Re-save the row's plaintext under the primary key, unless someone (rekey) changed
            # the value since it was read: an application write never overwrites blindly either.
            new = seal_tink(keys.primary, keys.keys[keys.primary], plaintext, ad)
            sets = f"{col} = %s" + (f", {kcol} = %s" if kcol else "")
            params = [new] + ([keys.primary] if kcol else []) + [row_id, value]
            with conn.cursor() as cur:
                cur.execute(f"UPDATE {qt} SET {sets} WHERE {pk} = %s AND {col} = %s", params)
                written = cur.rowcount
            conn.commit()
            if written:
                stats["writes"] += 1
                w = stats["writes_by_key"]
                w[str(keys.primary)] = w.get(str(keys.primary), 0) + 1
            else:
                stats["skipped_writes"] += 1  # rekey moved the row since it was read
        else:
            conn.commit()

    started = time.monotonic()
    while not stop and not (args.duration and time.monotonic() - started >= args.duration):
        try:
            operate()
        except (psycopg2.OperationalError, psycopg2.InterfaceError) as e:
            # Notifications sent while a connection was down are lost: LISTEN again, then
            # re-read the view (docs/applications.md, section 4).
            log(f"connection lost ({(str(e).strip().splitlines() or ['?'])[0]}); reconnecting")
            stats["reconnects"] += 1
            for c in (conn, keys.listen):
                c.close()
            while not stop:
                try:
                    keys.connect()
                    conn = psycopg2.connect(args.db)
                    keys.reload(conn)
                    keys.heartbeat(conn)
                    break
                except psycopg2.OperationalError:
                    time.sleep(0.5)
        time.sleep(1.0 / args.rate)

    summary = (f"reads={stats['reads']} writes={stats['writes']} "
               f"failed_reads={stats['failed_reads']} skipped_writes={stats['skipped_writes']} "
               f"reconnects={stats['reconnects']} "
               f"reads_by_key={json.dumps(stats['reads_by_key'], sort_keys=True)} "
               f"writes_by_key={json.dumps(stats['writes_by_key'], sort_keys=True)}")
    if stats["failures"]:
        summary += f" failures={json.dumps(stats['failures'], sort_keys=True)}"
    log(summary)
    if args.stats_file:
        with open(args.stats_file, "w") as f:
            json.dump(stats, f)
    sys.exit(1 if stats["failed_reads"] else 0)


if __name__ == "__main__":
    main()
