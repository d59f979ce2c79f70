#!/usr/bin/python3
"""Fidelity of tests/kms/aws_kms_server.py, checked with clients nobody here wrote: Debian's boto3
(botocore's own SigV4 signer and JSON 1.1 / query-XML parsers) drives every KMS operation and STS
AssumeRoleWithWebIdentity against the server, and hand-tampered botocore-signed requests must be
rejected. Run: /usr/bin/python3 tests/kms/boto3_fidelity_test.py
"""

import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.error
import urllib.parse
import urllib.request
from unittest import mock

import boto3
import botocore.auth
import botocore.awsrequest
import botocore.config
import botocore.credentials
from botocore.exceptions import ClientError

HERE = os.path.dirname(os.path.abspath(__file__))
ACCESS, SECRET, REGION = "AKIDREKEYTEST", "rekey/test/secret/key+0123456789", "us-east-1"


class ServerTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="rekey-kms-")
        port_file = os.path.join(cls.tmp, "port")
        cls.proc = subprocess.Popen([sys.executable, os.path.join(HERE, "aws_kms_server.py"),
                                     "--port-file", port_file, "--key", "alias/rekey",
                                     "--key", "alias/other", "--access-key", ACCESS,
                                     "--secret-key", SECRET, "--region", REGION])
        deadline = time.time() + 20
        while not os.path.exists(port_file):
            if time.time() > deadline or cls.proc.poll() is not None:
                raise RuntimeError("aws_kms_server.py did not start")
            time.sleep(0.05)
        with open(port_file) as f:
            cls.url = "http://127.0.0.1:" + f.read().strip()

    @classmethod
    def tearDownClass(cls):
        cls.proc.kill()
        cls.proc.wait(timeout=10)

    def setUp(self):
        self.control({"reset": True})
        self.control({"key_state": {"key": "alias/rekey", "state": "Enabled"}})

    def control(self, cmd):
        req = urllib.request.Request(self.url + "/__control", data=json.dumps(cmd).encode(),
                                     method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def kms(self, **creds):
        creds = creds or {"aws_access_key_id": ACCESS, "aws_secret_access_key": SECRET}
        return boto3.session.Session(region_name=REGION).client(
            "kms", endpoint_url=self.url,
            config=botocore.config.Config(retries={"max_attempts": 1}), **creds)

    def assertKmsError(self, type_, fn, *args, **kwargs):
        with self.assertRaises(ClientError) as cm:
            fn(*args, **kwargs)
        self.assertEqual(cm.exception.response["Error"]["Code"], type_)
        return cm.exception


class Boto3KmsTest(ServerTest):
    CTX = {"rekey_key_id": "7"}

    def test_generate_data_key_then_decrypt(self):
        kms = self.kms()
        out = kms.generate_data_key(KeyId="alias/rekey", KeySpec="AES_256", EncryptionContext=self.CTX)
        self.assertEqual(len(out["Plaintext"]), 32)
        self.assertTrue(out["KeyId"].startswith("arn:aws:kms:us-east-1:"))
        back = kms.decrypt(CiphertextBlob=out["CiphertextBlob"], KeyId=out["KeyId"],
                           EncryptionContext=self.CTX)
        self.assertEqual(back["Plaintext"], out["Plaintext"])
        # Without KeyId, as AWS allows for symmetric keys.
        self.assertEqual(kms.decrypt(CiphertextBlob=out["CiphertextBlob"],
                                     EncryptionContext=self.CTX)["Plaintext"], out["Plaintext"])

    def test_encryption_context_is_bound(self):
        kms = self.kms()
        out = kms.generate_data_key(KeyId="alias/rekey", KeySpec="AES_256", EncryptionContext=self.CTX)
        for ctx in ({"rekey_key_id": "8"}, {}, {"rekey_key_id": "7", "x": "y"}):
            self.assertKmsError("InvalidCiphertextException", kms.decrypt,
                                CiphertextBlob=out["CiphertextBlob"], EncryptionContext=ctx)

    def test_every_byte_of_the_blob_is_authenticated(self):
        kms = self.kms()
        blob = kms.encrypt(KeyId="alias/rekey", Plaintext=b"k" * 32, EncryptionContext=self.CTX)[
            "CiphertextBlob"]
        for i in range(0, len(blob), 7):
            bad = bytearray(blob)
            bad[i] ^= 0x01
            with self.assertRaises(ClientError) as cm:
                kms.decrypt(CiphertextBlob=bytes(bad), EncryptionContext=self.CTX)
            self.assertIn(cm.exception.response["Error"]["Code"],
                          ("InvalidCiphertextException", "IncorrectKeyException"))

    def test_encrypt_and_pinned_key(self):
        kms = self.kms()
        blob = kms.encrypt(KeyId="alias/rekey", Plaintext=b"\x01" * 32, EncryptionContext=self.CTX)[
            "CiphertextBlob"]
        self.assertEqual(kms.decrypt(CiphertextBlob=blob, KeyId="alias/rekey",
                                     EncryptionContext=self.CTX)["Plaintext"], b"\x01" * 32)
        self.assertKmsError("IncorrectKeyException", kms.decrypt, CiphertextBlob=blob,
                            KeyId="alias/other", EncryptionContext=self.CTX)

    def test_describe_key_and_disabled_key(self):
        kms = self.kms()
        meta = kms.describe_key(KeyId="alias/rekey")["KeyMetadata"]
        self.assertEqual(meta["KeyState"], "Enabled")
        self.assertTrue(meta["Enabled"])
        blob = kms.encrypt(KeyId="alias/rekey", Plaintext=b"\x02" * 32, EncryptionContext=self.CTX)[
            "CiphertextBlob"]
        self.control({"key_state": {"key": meta["Arn"], "state": "Disabled"}})
        self.assertEqual(kms.describe_key(KeyId=meta["KeyId"])["KeyMetadata"]["KeyState"], "Disabled")
        self.assertKmsError("DisabledException", kms.decrypt, CiphertextBlob=blob,
                            EncryptionContext=self.CTX)
        self.assertKmsError("DisabledException", kms.generate_data_key, KeyId="alias/rekey",
                            KeySpec="AES_256")
        self.assertKmsError("NotFoundException", kms.describe_key, KeyId="alias/nope")

    def test_re_encrypt(self):
        kms = self.kms()
        out = kms.generate_data_key(KeyId="alias/rekey", KeySpec="AES_256", EncryptionContext=self.CTX)
        re = kms.re_encrypt(CiphertextBlob=out["CiphertextBlob"], SourceKeyId="alias/rekey",
                            SourceEncryptionContext=self.CTX, DestinationKeyId="alias/other",
                            DestinationEncryptionContext=self.CTX)
        self.assertEqual(re["SourceKeyId"], out["KeyId"])
        self.assertNotEqual(re["KeyId"], out["KeyId"])
        self.assertEqual(kms.decrypt(CiphertextBlob=re["CiphertextBlob"], KeyId=re["KeyId"],
                                     EncryptionContext=self.CTX)["Plaintext"], out["Plaintext"])

    def test_faults(self):
        kms = self.kms()
        self.control({"throttle_ratio": 1.0})
        self.assertKmsError("ThrottlingException", kms.describe_key, KeyId="alias/rekey")
        self.control({"throttle_ratio": 0.0, "error_5xx_ratio": 1.0})
        err = self.assertKmsError("KMSInternalException", kms.describe_key, KeyId="alias/rekey")
        self.assertEqual(err.response["ResponseMetadata"]["HTTPStatusCode"], 500)
        self.control({"error_5xx_ratio": 0.0, "access_denied": True})
        self.assertKmsError("AccessDeniedException", kms.describe_key, KeyId="alias/rekey")
        self.control({"access_denied": False, "outage_seconds": 30})
        self.assertKmsError("ServiceUnavailableException", kms.describe_key, KeyId="alias/rekey")
        self.control({"outage_seconds": 0})
        kms.describe_key(KeyId="alias/rekey")

    def test_wrong_secret_and_unknown_access_key(self):
        self.assertKmsError("InvalidSignatureException",
                            self.kms(aws_access_key_id=ACCESS, aws_secret_access_key="wrong").describe_key,
                            KeyId="alias/rekey")
        self.assertKmsError("UnrecognizedClientException",
                            self.kms(aws_access_key_id="AKIDNOBODY", aws_secret_access_key=SECRET).describe_key,
                            KeyId="alias/rekey")


class TamperedSignatureTest(ServerTest):
    def signed(self, body, when=None):
        req = botocore.awsrequest.AWSRequest(
            method="POST", url=self.url + "/", data=body,
            headers={"Content-Type": "application/x-amz-json-1.1",
                     "X-Amz-Target": "TrentService.DescribeKey"})
        signer = botocore.auth.SigV4Auth(botocore.credentials.Credentials(ACCESS, SECRET), "kms", REGION)
        if when is None:
            signer.add_auth(req)
        else:
            if hasattr(botocore.auth, "get_current_datetime"):  # botocore >= 1.34
                with mock.patch("botocore.auth.get_current_datetime", return_value=when):
                    signer.add_auth(req)
            else:
                with mock.patch("botocore.auth.datetime") as dt:
                    dt.datetime.utcnow.return_value = when
                    signer.add_auth(req)
        return req

    def send(self, req, body=None):
        r = urllib.request.Request(req.url, data=body or req.body, method="POST",
                                   headers=dict(req.headers.items()))
        try:
            with urllib.request.urlopen(r, timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def test_untampered_request_passes(self):
        status, body = self.send(self.signed(b'{"KeyId": "alias/rekey"}'))
        self.assertEqual(status, 200, body)

    def test_every_signature_character_off_by_one_is_rejected(self):
        req = self.signed(b'{"KeyId": "alias/rekey"}')
        auth = req.headers["Authorization"]
        sig_at = auth.index("Signature=") + len("Signature=")
        for i in range(sig_at, len(auth)):
            bad = auth[:i] + ("0" if auth[i] != "0" else "1") + auth[i + 1:]
            req.headers.replace_header("Authorization", bad)
            status, body = self.send(req)
            self.assertEqual((status, body["__type"]), (400, "InvalidSignatureException"))

    def test_signature_off_by_one_byte_is_rejected(self):
        # Each of the 32 bytes of the HMAC-SHA256 signature in turn, incremented by one.
        req = self.signed(b'{"KeyId": "alias/rekey"}')
        auth = req.headers["Authorization"]
        head, sig = auth.rsplit("Signature=", 1)
        raw = bytes.fromhex(sig)
        self.assertEqual(len(raw), 32)
        for i in range(len(raw)):
            bad = bytearray(raw)
            bad[i] = (bad[i] + 1) % 256
            req.headers.replace_header("Authorization", head + "Signature=" + bad.hex())
            status, body = self.send(req)
            self.assertEqual((status, body["__type"]), (400, "InvalidSignatureException"), i)
        req.headers.replace_header("Authorization", auth)
        self.assertEqual(self.send(req)[0], 200)

    def test_body_changed_after_signing_is_rejected(self):
        req = self.signed(b'{"KeyId": "alias/rekey"}')
        status, body = self.send(req, body=b'{"KeyId": "alias/other"}')
        self.assertEqual((status, body["__type"]), (400, "InvalidSignatureException"))

    def test_stale_date_is_rejected(self):
        old = datetime.datetime.utcnow() - datetime.timedelta(minutes=6)
        status, body = self.send(self.signed(b'{"KeyId": "alias/rekey"}', when=old))
        self.assertEqual((status, body["__type"]), (400, "InvalidSignatureException"))
        self.assertIn("Signature expired", body["message"])
        recent = datetime.datetime.utcnow() - datetime.timedelta(minutes=4)
        status, body = self.send(self.signed(b'{"KeyId": "alias/rekey"}', when=recent))
        self.assertEqual(status, 200, body)


class Boto3StsTest(ServerTest):
    def test_web_identity_credentials_work_for_kms(self):
        sts = boto3.session.Session(region_name=REGION).client(
            "sts", endpoint_url=self.url, aws_access_key_id="unused", aws_secret_access_key="unused")
        out = sts.assume_role_with_web_identity(RoleArn="arn:aws:iam::111122223333:role/rekey",
                                                RoleSessionName="rekey", WebIdentityToken="jwt-1")
        c = out["Credentials"]
        self.assertTrue(c["AccessKeyId"].startswith("ASIA"))
        self.assertGreater(c["Expiration"], datetime.datetime.now(datetime.timezone.utc))
        kms = self.kms(aws_access_key_id=c["AccessKeyId"], aws_secret_access_key=c["SecretAccessKey"],
                       aws_session_token=c["SessionToken"])
        self.assertEqual(kms.describe_key(KeyId="alias/rekey")["KeyMetadata"]["KeyState"], "Enabled")
        # The session token is checked, not just present.
        bad = self.kms(aws_access_key_id=c["AccessKeyId"], aws_secret_access_key=c["SecretAccessKey"],
                       aws_session_token="not-the-token")
        self.assertKmsError("UnrecognizedClientException", bad.describe_key, KeyId="alias/rekey")

    def test_empty_token_is_refused(self):
        # botocore refuses an empty token itself, so this request is written by hand.
        form = urllib.parse.urlencode({"Action": "AssumeRoleWithWebIdentity", "Version": "2011-06-15",
                                       "RoleArn": "arn:aws:iam::111122223333:role/rekey",
                                       "RoleSessionName": "rekey", "WebIdentityToken": ""})
        req = urllib.request.Request(self.url + "/", data=form.encode(), method="POST")
        with self.assertRaises(urllib.error.HTTPError) as cm:
            urllib.request.urlopen(req, timeout=10)
        self.assertEqual(cm.exception.code, 400)
        self.assertIn(b"<Code>InvalidIdentityToken</Code>", cm.exception.read())


if __name__ == "__main__":
    unittest.main(verbosity=2)
