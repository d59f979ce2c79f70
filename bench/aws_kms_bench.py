"""The aws-kms codec in run_bench.py's `codecs` part: the loopback AWS KMS test server
(tests/kms/aws_kms_server.py) as a child of the bench, its seed table of KMS ciphertext blobs, the
environment that points `rekey` at it, and what the server itself spent.

The server makes its keys' material with os.urandom and exposes it to no one (no flag, no control
command), so the bench cannot seal blobs offline with the server's `seal`: every value is made by
the server's own Encrypt (its `seal`, so its blob format), called in parallel over SigV4-signed
HTTP as an application calls KMS. Its rows/s is a KMS round trip per value: what it measures is
that server and rekey's one call per value through its retry and breaker layer (bench/README.md).
"""
import base64
import datetime
import hashlib
import hmac
import http.client
import importlib.util
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import codec_fixture  # noqa: E402 (the same plaintexts as every other codec)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVER = os.path.join(REPO, "tests", "kms", "aws_kms_server.py")
# tests/aws_kms_support.h's: the server's defaults, so it needs no credential flags.
ACCESS_KEY = "AKIDREKEYTEST"
SECRET_KEY = "rekey/test/secret/key+0123456789"
REGION = "us-east-1"
SOURCE_KEY, TARGET_KEY = "alias/bench-kms-1", "alias/bench-kms-2"
# A constant context, as an application that binds one to its blobs passes (the codec test's).
CONTEXT = {"app": "bench"}
# The rotation lifts rekey's token bucket (REKEY_KMS_CALLS_PER_SECOND, default 100 calls/s per
# process) so that the figure is the round trip's, not the bucket's: with the default, 2 worker
# processes would be held at 200 rows/s whatever the KMS. Override to measure the bucket.
CALLS_PER_SECOND = os.environ.get("BENCH_AWS_KMS_CALLS_PER_SECOND", "1000000")
ENCRYPT_PROCESSES = 4  # the fixture's callers: more than the server's one GIL can serve


def _load_server():
    spec = importlib.util.spec_from_file_location("bench_aws_kms_server", SERVER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_server = _load_server()  # its SigV4 helpers sign the fixture's requests as it checks them


class KmsServer:
    """tests/kms/aws_kms_server.py with the codec's two keys, started as the C++ tests start it
    (tests/aws_kms_support.h): a port file, static credentials."""

    def __init__(self, work_dir):
        port_file = os.path.join(work_dir, "aws-kms.port")
        if os.path.exists(port_file):
            os.remove(port_file)  # an earlier server's port, which would be read as this one's
        self.log = open(os.path.join(work_dir, "aws-kms-server.log"), "w")
        self.proc = subprocess.Popen(["/usr/bin/python3", SERVER, "--port-file", port_file,
                                      "--key", SOURCE_KEY, "--key", TARGET_KEY],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while not os.path.exists(port_file):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{SERVER} did not start")
            time.sleep(0.05)
        with open(port_file) as f:
            self.port = int(f.read())
        self.url = f"http://127.0.0.1:{self.port}"

    def env(self):
        """What points `rekey` at the server (aws_kms_support.h's Env, without a keyring KMS key:
        the keyring stays the bench's local master key)."""
        return {"AWS_REGION": REGION, "AWS_ENDPOINT_URL_KMS": self.url,
                "AWS_ENDPOINT_URL_STS": self.url, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "REKEY_KMS_CALLS_PER_SECOND": CALLS_PER_SECOND}

    def cpu_seconds(self):
        """utime + stime of the server process (all its request threads)."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            s = f.read().rsplit(")", 1)[1].split()
        return (int(s[11]) + int(s[12])) / os.sysconf("SC_CLK_TCK")

    def stats(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.request("GET", "/__stats")
        return json.loads(conn.getresponse().read())

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait()
        self.log.close()


def call(conn, host, op, body):
    """One SigV4-signed KMS JSON 1.1 request on conn; returns the reply's JSON or raises."""
    payload = json.dumps(body).encode()
    now = datetime.datetime.now(datetime.timezone.utc)
    amz_date, date = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    headers = {"content-type": "application/x-amz-json-1.1", "host": host,
               "x-amz-date": amz_date, "x-amz-target": "TrentService." + op}
    signed = sorted(headers)
    creq = "\n".join(["POST", "/", "", "".join(f"{k}:{headers[k]}\n" for k in signed),
                      ";".join(signed), hashlib.sha256(payload).hexdigest()])
    scope = f"{date}/{REGION}/kms/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                         hashlib.sha256(creq.encode()).hexdigest()])
    signature = hmac.new(_server.signing_key(SECRET_KEY, date, REGION, "kms"), to_sign.encode(),
                         hashlib.sha256).hexdigest()
    headers["authorization"] = (f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/{scope}, "
                                f"SignedHeaders={';'.join(signed)}, Signature={signature}")
    conn.request("POST", "/", body=payload, headers=headers)
    # The server writes a reply's headers and body in two sends, and its Nagle holds the body
    # until the headers are acknowledged: a delayed ACK here costs 40 ms per call (22 calls/s).
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
    reply = conn.getresponse()
    data = reply.read()
    if reply.status != 200:
        raise RuntimeError(f"KMS {op} answered {reply.status}: {data[:300]!r}")
    return json.loads(data)


def _encrypt_range(job):
    """COPY text lines of rows lo..hi-1: each plaintext sealed by the server's Encrypt under
    the source key, on one kept-alive connection."""
    url, lo, hi = job
    host = urllib.parse.urlsplit(url).netloc
    conn = http.client.HTTPConnection(host, timeout=60)
    lines = []
    for i in range(lo, hi):
        reply = call(conn, host, "Encrypt", {
            "KeyId": SOURCE_KEY, "EncryptionContext": CONTEXT,
            "Plaintext": base64.b64encode(codec_fixture.plaintext(i)).decode()})
        blob = base64.b64decode(reply["CiphertextBlob"])
        lines.append(f"{i}\t\\\\x{blob.hex()}\n")
    conn.close()
    return "".join(lines)


def _caller_init():
    # The callers are forks of run_bench.py, whose signal handlers stop PostgreSQL and remove the
    # work directory: a caller ended by the pool must only end.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


def copy_rows(server, rows):
    """Yields COPY text chunks of rows (id, value): the values made by ENCRYPT_PROCESSES callers
    of the server's Encrypt at once, in id order."""
    chunk = max(100, min(2000, rows // (4 * ENCRYPT_PROCESSES)))  # every caller busy to the end
    jobs = [(server.url, lo, min(lo + chunk, rows + 1)) for lo in range(1, rows + 1, chunk)]
    pool = multiprocessing.Pool(ENCRYPT_PROCESSES, initializer=_caller_init)
    try:
        yield from pool.imap(_encrypt_range, jobs)
        pool.close()
    finally:
        pool.terminate()
        pool.join()


def key_id(server, alias):
    """The server's key id of alias (DescribeKey): its blobs carry it in clear."""
    host = urllib.parse.urlsplit(server.url).netloc
    conn = http.client.HTTPConnection(host, timeout=30)
    try:
        return call(conn, host, "DescribeKey", {"KeyId": alias})["KeyMetadata"]["KeyId"]
    finally:
        conn.close()


def count_under_keys_sql(table, column, source_id, target_id):
    """SQL counting the column's blobs under each key by the key id the test server's blobs carry
    in clear (`RKMS1 || key id (36 ASCII) || ...`). `rekey job verify` cannot tell which KMS key a
    blob is under (real blobs do not say; docs/kms.md, "Verify and gates"), so the bench counts
    with what only this server's format shows."""
    def under(key):
        return f"count(*) FILTER (WHERE substring({column} FROM 6 FOR 36) = '{key}'::bytea)"
    return (f"SELECT json_build_object('source', {under(source_id)}, 'target', {under(target_id)}, "
            f"'values', count({column})) FROM {table}")
