#!/usr/bin/python3
"""What a new TCP connection per KMS call costs the loopback AWS KMS test server
(tests/kms/aws_kms_server.py): CALLS ReEncrypt from one caller on one kept-alive connection, then
on a new connection each (as rekey's transport makes them: a curl handle per request,
src/kms/http_transport.cpp), twice each way; prints calls/s and the server's CPU per call
(utime + stime of its process). bench/README.md, the aws-kms paragraph, quotes it.

usage: bench/aws_kms_connections.py [CALLS]   (default 2000)
"""
import base64
import http.client
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import aws_kms_bench as kms  # noqa: E402


def main():
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    work = tempfile.mkdtemp(prefix="rekey-kms-conn.")
    server = kms.KmsServer(work)
    host = f"127.0.0.1:{server.port}"
    try:
        conn = http.client.HTTPConnection(host)
        blobs = [kms.call(conn, host, "Encrypt", {
            "KeyId": kms.SOURCE_KEY, "EncryptionContext": kms.CONTEXT,
            "Plaintext": base64.b64encode(os.urandom(24).hex().encode()).decode()})["CiphertextBlob"]
            for _ in range(calls)]
        conn.close()
        for reuse in (True, False, True, False):
            cpu0, t = server.cpu_seconds(), time.monotonic()
            conn = http.client.HTTPConnection(host)
            for blob in blobs:
                if not reuse:
                    conn = http.client.HTTPConnection(host)
                kms.call(conn, host, "ReEncrypt", {
                    "CiphertextBlob": blob, "DestinationKeyId": kms.TARGET_KEY,
                    "SourceEncryptionContext": kms.CONTEXT,
                    "DestinationEncryptionContext": kms.CONTEXT})
                if not reuse:
                    conn.close()
            conn.close()
            seconds = time.monotonic() - t
            print(f"{'kept-alive connection' if reuse else 'new connection per call':<24} "
                  f"{calls / seconds:6.0f} calls/s, server CPU "
                  f"{(server.cpu_seconds() - cpu0) / calls * 1e6:4.0f} us per call")
    finally:
        server.stop()
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
