#!/usr/bin/python3
"""Fidelity of tests/kms/vault_server.py, checked with a client nobody here wrote: Debian's hvac
(python3-hvac) drives token auth (lookup-self, renew-self, expiry), Kubernetes login, the Transit
engine (keys, rotation, min_decryption_version, encrypt, decrypt, datakey, rewrap, batch_input) and
the namespace header against the server, and every error must surface as hvac's own exception type
(Forbidden, InvalidRequest, InvalidPath, RateLimitExceeded, InternalServerError, VaultDown).
Run: /usr/bin/python3 tests/kms/hvac_fidelity_test.py
"""

import base64
import json
import os
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request

import hvac
import hvac.exceptions as hx

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = "s.hvac-fidelity-root"
JWT = "eyJhbGciOiJSUzI1NiJ9.fidelity.sig"


def b64(data):
    return base64.b64encode(data if isinstance(data, bytes) else data.encode()).decode()


def start_server(*extra):
    tmp = tempfile.mkdtemp(prefix="rekey-vault-")
    port_file = os.path.join(tmp, "port")
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "vault_server.py"),
                             "--port-file", port_file, "--root-token", ROOT, "--key", "rekey",
                             "--k8s-role", "rekey", "--k8s-jwt", JWT] + list(extra))
    deadline = time.time() + 30
    while not os.path.exists(port_file):
        if time.time() > deadline or proc.poll() is not None:
            raise RuntimeError("vault_server.py did not start")
        time.sleep(0.05)
    with open(port_file) as f:
        return proc, "http://127.0.0.1:" + f.read().strip()


class ServerTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.proc, cls.url = start_server()

    @classmethod
    def tearDownClass(cls):
        cls.proc.kill()
        cls.proc.wait(timeout=10)

    def setUp(self):
        self.control({"reset": True, "seed": 3})

    def control(self, cmd):
        req = urllib.request.Request(self.url + "/__control", data=json.dumps(cmd).encode(),
                                     method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def client(self, token=ROOT, **kwargs):
        return hvac.Client(url=self.url, token=token, **kwargs)


class TokenAuthTest(ServerTest):
    def test_lookup_self_of_the_root_token(self):
        data = self.client().auth.token.lookup_self()["data"]
        self.assertEqual(data["ttl"], 0)
        self.assertIn("root", data["policies"])
        self.assertTrue(self.client().is_authenticated())

    def test_renew_self_extends_a_renewable_token(self):
        token = self.control({"create_token": {"ttl": 5, "renewable": True}})["token"]
        c = self.client(token)
        self.assertLessEqual(c.auth.token.lookup_self()["data"]["ttl"], 5)
        auth = c.auth.token.renew_self(increment="1h")["auth"]
        self.assertEqual(auth["client_token"], token)
        self.assertGreater(auth["lease_duration"], 3000)
        self.assertTrue(auth["renewable"])
        self.assertGreater(c.auth.token.lookup_self()["data"]["ttl"], 3000)

    def test_non_renewable_token_cannot_be_renewed(self):
        token = self.control({"create_token": {"ttl": 60, "renewable": False}})["token"]
        with self.assertRaises(hx.InvalidRequest) as cm:
            self.client(token).auth.token.renew_self()
        self.assertIn("lease is not renewable", str(cm.exception))

    def test_expired_and_unknown_tokens_are_forbidden(self):
        token = self.control({"create_token": {"ttl": 60}})["token"]
        c = self.client(token)
        c.secrets.transit.read_key("rekey")
        self.control({"expire_tokens": True})
        with self.assertRaises(hx.Forbidden) as cm:
            c.secrets.transit.read_key("rekey")
        self.assertIn("permission denied", str(cm.exception))
        self.assertFalse(c.is_authenticated())
        with self.assertRaises(hx.Forbidden):
            self.client("hvs.nobody").auth.token.lookup_self()
        # The root token never expires.
        self.client().secrets.transit.read_key("rekey")

    def test_token_create(self):
        auth = self.client().auth.token.create(ttl="10m", renewable=True)["auth"]
        self.assertEqual(auth["lease_duration"], 600)
        self.assertTrue(self.client(auth["client_token"]).is_authenticated())


class KubernetesAuthTest(ServerTest):
    def test_login_sets_a_working_token_with_a_ttl(self):
        c = hvac.Client(url=self.url)
        resp = c.auth.kubernetes.login("rekey", JWT)
        self.assertEqual(c.token, resp["auth"]["client_token"])
        self.assertEqual(resp["auth"]["metadata"]["role"], "rekey")
        self.assertGreater(resp["auth"]["lease_duration"], 0)
        self.assertGreater(c.auth.token.lookup_self()["data"]["ttl"], 0)
        c.secrets.transit.read_key("rekey")
        with urllib.request.urlopen(self.url + "/__stats", timeout=10) as r:
            self.assertIn(JWT, json.loads(r.read())["jwts"])

    def test_wrong_jwt_is_forbidden_and_unknown_role_invalid(self):
        c = hvac.Client(url=self.url)
        with self.assertRaises(hx.Forbidden):
            c.auth.kubernetes.login("rekey", "eyJ.other.sig")
        with self.assertRaises(hx.InvalidRequest) as cm:
            c.auth.kubernetes.login("nobody", JWT)
        self.assertIn("invalid role name", str(cm.exception))

    def test_login_token_ttl_is_configurable_and_expires(self):
        self.control({"token_ttl": 1})
        c = hvac.Client(url=self.url)
        self.assertEqual(c.auth.kubernetes.login("rekey", JWT)["auth"]["lease_duration"], 1)
        time.sleep(1.2)
        with self.assertRaises(hx.Forbidden):
            c.secrets.transit.read_key("rekey")
        self.control({"token_ttl": 3600})


class TransitTest(ServerTest):
    CTX = b64("rekey_key_id=7")

    def test_keys_create_read_list_rotate(self):
        t = self.client().secrets.transit
        t.create_key("fidelity-a", derived=True)
        t.create_key("fidelity-b")
        a = t.read_key("fidelity-a")["data"]
        self.assertTrue(a["derived"])
        self.assertEqual(a["type"], "aes256-gcm96")
        self.assertEqual(a["latest_version"], 1)
        self.assertFalse(t.read_key("fidelity-b")["data"]["derived"])
        self.assertIn("fidelity-a", t.list_keys()["data"]["keys"])
        t.rotate_key("fidelity-a")
        self.assertEqual(sorted(t.read_key("fidelity-a")["data"]["keys"]), ["1", "2"])
        with self.assertRaises(hx.InvalidPath):
            t.read_key("no-such-key")

    def test_encrypt_decrypt_with_context(self):
        t = self.client().secrets.transit
        ct = t.encrypt_data("rekey", b64("4111-1111"), context=self.CTX)["data"]["ciphertext"]
        self.assertRegex(ct, r"^vault:v\d+:")
        pt = t.decrypt_data("rekey", ct, context=self.CTX)["data"]["plaintext"]
        self.assertEqual(base64.b64decode(pt), b"4111-1111")
        with self.assertRaises(hx.InvalidRequest) as cm:
            t.decrypt_data("rekey", ct, context=b64("rekey_key_id=8"))
        self.assertIn("cipher: message authentication failed", str(cm.exception))
        with self.assertRaises(hx.InvalidRequest) as cm:
            t.decrypt_data("rekey", ct)
        self.assertIn("missing 'context' for key derivation", str(cm.exception))
        with self.assertRaises(hx.InvalidRequest) as cm:
            t.decrypt_data("rekey", "not-a-ciphertext", context=self.CTX)
        self.assertIn("invalid ciphertext", str(cm.exception))
        with self.assertRaises(hx.InvalidRequest) as cm:
            t.decrypt_data("no-such-key", ct, context=self.CTX)
        self.assertIn("encryption key not found", str(cm.exception))

    def test_encrypt_upserts_a_derived_key_when_given_a_context(self):
        t = self.client().secrets.transit
        t.encrypt_data("upserted", b64("x"), context=self.CTX)
        self.assertTrue(t.read_key("upserted")["data"]["derived"])

    def test_datakey_wrapped_and_plaintext(self):
        t = self.client().secrets.transit
        wrapped = t.generate_data_key("rekey", key_type="wrapped", context=self.CTX, bits=256)
        self.assertNotIn("plaintext", wrapped["data"])
        key = base64.b64decode(
            t.decrypt_data("rekey", wrapped["data"]["ciphertext"], context=self.CTX)["data"][
                "plaintext"])
        self.assertEqual(len(key), 32)
        both = t.generate_data_key("rekey", key_type="plaintext", context=self.CTX, bits=512)
        self.assertEqual(len(base64.b64decode(both["data"]["plaintext"])), 64)
        again = t.decrypt_data("rekey", both["data"]["ciphertext"], context=self.CTX)
        self.assertEqual(again["data"]["plaintext"], both["data"]["plaintext"])
        # hvac refuses bad bits itself, so the request goes through its adapter as it is.
        with self.assertRaises(hx.InvalidRequest) as cm:
            self.client().adapter.post("/v1/transit/datakey/wrapped/rekey",
                                       json={"bits": 100, "context": self.CTX})
        self.assertIn("invalid bit length", str(cm.exception))

    def test_rewrap_after_rotation_and_min_decryption_version(self):
        t = self.client().secrets.transit
        t.create_key("rot", derived=True)
        ct1 = t.encrypt_data("rot", b64("secret"), context=self.CTX)["data"]["ciphertext"]
        self.assertTrue(ct1.startswith("vault:v1:"))
        t.rotate_key("rot")
        ct2 = t.rewrap_data("rot", ct1, context=self.CTX)["data"]["ciphertext"]
        self.assertTrue(ct2.startswith("vault:v2:"))
        t.update_key_configuration("rot", min_decryption_version=2)
        with self.assertRaises(hx.InvalidRequest) as cm:
            t.decrypt_data("rot", ct1, context=self.CTX)
        self.assertIn("too old", str(cm.exception))
        pt = t.decrypt_data("rot", ct2, context=self.CTX)["data"]["plaintext"]
        self.assertEqual(base64.b64decode(pt), b"secret")

    def test_batch_encrypt_decrypt_rewrap(self):
        t = self.client().secrets.transit
        items = [{"plaintext": b64("v%d" % i), "context": b64("rekey_key_id=%d" % i),
                  "reference": str(i)} for i in range(5)]
        enc = t.encrypt_data("rekey", "", batch_input=items)["data"]["batch_results"]
        self.assertEqual([r["reference"] for r in enc], [str(i) for i in range(5)])
        cts = [{"ciphertext": r["ciphertext"], "context": items[i]["context"]}
               for i, r in enumerate(enc)]
        t.rotate_key("rekey")
        re = t.rewrap_data("rekey", "", batch_input=cts)["data"]["batch_results"]
        latest = t.read_key("rekey")["data"]["latest_version"]
        self.assertTrue(all(r["ciphertext"].startswith("vault:v%d:" % latest) for r in re))
        dec = t.decrypt_data("rekey", "", batch_input=[
            {"ciphertext": r["ciphertext"], "context": cts[i]["context"]}
            for i, r in enumerate(re)])["data"]["batch_results"]
        self.assertEqual([base64.b64decode(r["plaintext"]) for r in dec],
                         [b"v%d" % i for i in range(5)])
        # One bad item: Vault answers 400 and hvac raises, the good items are still processed.
        bad = cts[:2] + [{"ciphertext": "vault:v1:AAAA", "context": cts[0]["context"]}]
        with self.assertRaises(hx.InvalidRequest):
            t.rewrap_data("rekey", "", batch_input=bad)
        adapter = self.client().adapter
        resp = adapter.post("/v1/transit/rewrap/rekey", json={"batch_input": bad},
                            raise_exception=False)
        self.assertEqual(resp.status_code, 400)
        results = resp.json()["data"]["batch_results"]
        self.assertIn("ciphertext", results[0])
        self.assertIn("ciphertext", results[1])
        self.assertIn("error", results[2])


class FaultTest(ServerTest):
    def test_faults_surface_as_hvac_exceptions(self):
        t = self.client().secrets.transit
        self.control({"rate_limit_ratio": 1.0})
        with self.assertRaises(hx.RateLimitExceeded):
            t.read_key("rekey")
        self.control({"rate_limit_ratio": 0.0, "error_5xx_ratio": 1.0})
        with self.assertRaises(hx.InternalServerError):
            t.read_key("rekey")
        self.control({"error_5xx_ratio": 0.0, "sealed": True})
        with self.assertRaises(hx.VaultDown):
            t.read_key("rekey")
        resp = self.client().adapter.get("/v1/sys/health", raise_exception=False)
        self.assertEqual(resp.status_code, 503)
        self.assertTrue(resp.json()["sealed"])
        self.control({"sealed": False, "permission_denied": True})
        token = self.control({"create_token": {"ttl": 60}})["token"]
        with self.assertRaises(hx.Forbidden):
            self.client(token).secrets.transit.read_key("rekey")
        self.control({"permission_denied": False})
        self.assertFalse(self.client().sys.read_health_status(method="GET")["sealed"])

    def test_outage_window_then_recovery(self):
        self.control({"outage_seconds": 60})
        with self.assertRaises(hx.VaultDown):
            self.client().secrets.transit.read_key("rekey")
        self.control({"outage_seconds": 0})  # the window ends now
        self.client().secrets.transit.read_key("rekey")


class NamespaceTest(unittest.TestCase):
    def test_namespace_header_routes_requests(self):
        proc, url = start_server("--namespace", "team-a")
        try:
            good = hvac.Client(url=url, token=ROOT, namespace="team-a")
            self.assertEqual(good.secrets.transit.read_key("rekey")["data"]["name"], "rekey")
            with self.assertRaises(hx.InvalidPath) as cm:
                hvac.Client(url=url, token=ROOT).secrets.transit.read_key("rekey")
            self.assertIn("no handler for route", str(cm.exception))
        finally:
            proc.kill()
            proc.wait(timeout=10)


if __name__ == "__main__":
    # hvac leaves its requests sessions open; their ResourceWarnings would bury the results.
    unittest.main(verbosity=2, warnings="ignore")
