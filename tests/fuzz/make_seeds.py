#!/usr/bin/env python3
"""Writes the seed inputs of the fuzz targets into tests/fuzz/<target>/corpus/seed-*.

Seeds are real inputs in each target's framing (see the comment at the top of each
tests/fuzz/<target>.cpp): the valid and invalid ciphertexts of tests/vectors, AWS KMS, STS and
Vault replies as the servers send them (tests/kms/*_server.py, the AWS and Vault API docs), and
valid job flags. Run once when a target's framing changes, then fuzz and minimise (docs/testing.md).
"""
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def write(target, name, data):
    d = os.path.join(HERE, target, "corpus")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def entry(status_index, body, header=False):
    """One scripted HTTP reply: status selector, 2-byte length, body."""
    if isinstance(body, str):
        body = body.encode()
    return bytes([status_index | (0x80 if header else 0)]) + struct.pack("<H", len(body)) + body


OK, S400, S403, S404, S429, S500, S503 = 0, 4, 6, 7, 9, 11, 13

# --- codec_fuzz: [mode][ad length][ad][value]
for codec, mode in (("tink", 0), ("raw", 1)):
    v = json.load(open(os.path.join(ROOT, "tests/vectors/%s_aes256gcm.json" % codec)))
    for i, case in enumerate(v["valid"][:12] + v.get("invalid", [])[:12]):
        ad = bytes.fromhex(case.get("ad", ""))[:255]
        value = bytes.fromhex(case.get("value", ""))
        write("codec_fuzz", "%s-%02d" % (codec, i), bytes([mode, len(ad)]) + ad + value)
ad = json.load(open(os.path.join(ROOT, "tests/vectors/associated_data.json")))
for i, case in enumerate(ad["valid"] + ad.get("invalid", [])):
    write("codec_fuzz", "template-%02d" % i, bytes([2, 0]) + case["template"].encode())
for i, text in enumerate(["vault:v3:AAAA", "vault:v12:bWFkZQ==", "tink", "raw", "vault-transit"]):
    write("codec_fuzz", "parsers-%02d" % i, bytes([3, 0]) + text.encode())

# --- aws_kms_fuzz: [operation][script]
ARN = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
PLAIN = "F3JTeKj9tUs7lOviLSHFuN7DPbFcFQaRpzIlpqt9dQM="
BLOB = "AQIDAHhBmE0qgRmlV5pbkBYYZbsH8qyVXnbN0aYZgPvz6lmVBwAAAH4wfAYJKoZIhvcN"
aws_ok = {
    0: {"CiphertextBlob": BLOB, "Plaintext": PLAIN, "KeyId": ARN},
    1: {"CiphertextBlob": BLOB, "KeyId": ARN, "EncryptionAlgorithm": "SYMMETRIC_DEFAULT"},
    2: {"Plaintext": PLAIN, "KeyId": ARN, "EncryptionAlgorithm": "SYMMETRIC_DEFAULT"},
    3: {"CiphertextBlob": BLOB, "SourceKeyId": ARN, "KeyId": ARN,
        "SourceEncryptionAlgorithm": "SYMMETRIC_DEFAULT",
        "DestinationEncryptionAlgorithm": "SYMMETRIC_DEFAULT"},
    4: {"KeyMetadata": {"AWSAccountId": "111122223333", "KeyId": "1234abcd", "Arn": ARN,
                        "CreationDate": 1700000000.0, "Enabled": False,
                        "KeyState": "PendingDeletion", "KeyUsage": "ENCRYPT_DECRYPT"}},
}
for op, body in aws_ok.items():
    write("aws_kms_fuzz", "ok-%d" % op, bytes([op]) + entry(OK, json.dumps(body)))
aws_errors = [
    (S400, {"__type": "com.amazonaws.kms#AccessDeniedException", "message": "not authorized"}),
    (S400, {"__type": "InvalidCiphertextException", "message": None}),
    (S400, {"__type": "ExpiredTokenException", "message": "The security token has expired"}),
    (S429, {"__type": "ThrottlingException", "Message": "Rate exceeded"}),
    (S500, {"__type": "KMSInternalException"}),
    (S400, {"__type": "ValidationException", "message": "1 validation error detected:\nKeyId"}),
]
for i, (status, body) in enumerate(aws_errors):
    write("aws_kms_fuzz", "error-%d" % i, bytes([i % 5]) + entry(status, json.dumps(body)))
write("aws_kms_fuzz", "error-header", bytes([2]) + entry(S400, "SignatureDoesNotMatch:x", True))
STS = ("<AssumeRoleWithWebIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">"
       "<AssumeRoleWithWebIdentityResult><Credentials><SessionToken>FQo&amp;GZ</SessionToken>"
       "<SecretAccessKey>wJalr&lt;XUt</SecretAccessKey><Expiration>2099-05-01T12:00:00.123Z"
       "</Expiration><AccessKeyId>ASIA1234</AccessKeyId></Credentials>"
       "</AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>")
STS_ERROR = ("<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error><Type>"
             "Sender</Type><Code>InvalidIdentityToken</Code><Message>bad token</Message></Error>"
             "</ErrorResponse>")
write("aws_kms_fuzz", "sts-ok", bytes([0x45]) + entry(OK, STS))
write("aws_kms_fuzz", "sts-error", bytes([0x45]) + entry(S400, STS_ERROR))
write("aws_kms_fuzz", "sts-throttle", bytes([0x45]) + entry(S400, "<Code>Throttling</Code>"))
write("aws_kms_fuzz", "sts-then-expired", bytes([0x42]) + entry(OK, STS) +
      entry(S400, json.dumps({"__type": "ExpiredTokenException"})))
write("aws_kms_fuzz", "parsers", bytes([6]) + STS.encode())
write("aws_kms_fuzz", "throw", bytes([7, S403]) + json.dumps(aws_errors[0][1]).encode())

# --- vault_fuzz: [operation][clock step minutes][script]
CT = "vault:v2:bWFkZSB1cCBidXQgd2VsbC1mb3JtZWQ="
KEY = {"data": {"type": "aes256-gcm96", "derived": True, "latest_version": 2,
                "min_decryption_version": 1, "supports_encryption": True, "keys": {"1": 1, "2": 2}}}
LOOKUP = {"data": {"ttl": 2764800, "renewable": True, "policies": ["default", "rekey"]}}
LOGIN = {"auth": {"client_token": "hvs.CAESI", "accessor": "x", "policies": ["rekey"],
                  "lease_duration": 3600, "renewable": True}}
vault_ok = {
    0: [LOOKUP, KEY, {"data": {"ciphertext": CT}}, {"data": {"plaintext": PLAIN}}],
    1: [LOOKUP, KEY, {"data": {"ciphertext": CT, "key_version": 2}}],
    2: [LOOKUP, {"data": {"plaintext": PLAIN}}],
    3: [LOOKUP, {"data": {"ciphertext": CT, "key_version": 2}}],
    5: [LOOKUP, KEY],
    6: [LOOKUP, {"data": {"batch_results": [{"ciphertext": CT, "key_version": 2},
                                            {"error": "cipher: message authentication failed"}]}}],
    7: [LOOKUP, KEY],
}
for op, replies in vault_ok.items():
    write("vault_fuzz", "ok-%d" % op,
          bytes([op, 0]) + b"".join(entry(OK, json.dumps(r)) for r in replies))
write("vault_fuzz", "k8s-login", bytes([0x20 | 2, 50]) + entry(OK, json.dumps(LOGIN)))
write("vault_fuzz", "token-file-renew", bytes([0x10 | 5, 45]) + entry(OK, json.dumps(LOOKUP)))
vault_errors = [
    (S403, {"errors": ["1 error occurred:\n\t* permission denied\n\n"]}),
    (S400, {"errors": ["cipher: message authentication failed"]}),
    (S400, {"errors": ["encryption key not found"]}),
    (S404, {"errors": []}),
    (S503, {"errors": ["Vault is sealed"]}),
    (S429, {"errors": ["request path \"transit/decrypt/rekey\": rate limit quota exceeded"]}),
    (S400, {"errors": ["invalid ciphertext: version is too new"]}),
]
for i, (status, body) in enumerate(vault_errors):
    write("vault_fuzz", "error-%d" % i,
          bytes([[0, 2, 3, 5, 6, 7][i % 6], 0]) + entry(OK, json.dumps(LOOKUP)) +
          entry(status, json.dumps(body)))
write("vault_fuzz", "parsers", bytes([8, 0]) + json.dumps(vault_errors[0][1]).encode())

# --- job_fuzz: [parser][text]
job = [
    (0, "1:2"), (0, "3:7,4:8"), (0, "0:4294967295"),
    (1, "1,25,50,75,100"), (1, "0.5,10,100"),
    (2, "tenant_id=42"), (2, "region=eu=west"),
    (3, "250ms"), (3, "10s"), (3, "1.5"), (3, "2min"), (3, "1h"),
    (4, "transit/keys/rekey"), (4, "team/transit/keys/app-key.v2"),
    (5, "{schema}.{table}.{column}:{pk}"), (5, "{{literal}}:{pk}"),
    (6, "https://vault.example:8200\nrekey\ntransit\n\n\n\nhvs.token\neu-west-1\nalias/rekey\n"
        "AKIDEXAMPLE\nwJalrXUtnFEMI\n\n\n20"),
    (6, "http://127.0.0.1:8200/\nrekey\n/team/transit/\nrekey-role\nkubernetes/\n\n\n\n\n\n\n"
        "arn:aws:iam::111122223333:role/rekey\n/var/run/secrets/token\n5"),
    (7, "postgresql://alice:s3cr%40t@db:5432/app?sslmode=verify-full&sslrootcert=/ca.pem"),
    (7, "host=db port=5432 dbname=app user=alice password='p w\\'d' sslmode=require"),
    (7, "postgres://db/app?password=hunter2&sslmode=require"),
]
for i, (parser, text) in enumerate(job):
    write("job_fuzz", "%02d" % i, bytes([parser]) + text.encode())
