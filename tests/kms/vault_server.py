#!/usr/bin/python3
"""A loopback HashiCorp Vault test server speaking Vault's real HTTP API (the subset rekey uses).

API (all under /v1/, JSON bodies, errors as {"errors": [...]} with Vault's own messages):
  sys/health                        GET/HEAD: 200 active, 503 sealed (faults below)
  auth/token/lookup-self            GET/POST: data {ttl, renewable, expire_time, policies, ...}
  auth/token/renew-self             POST {increment}: auth {client_token, lease_duration, ...};
                                    400 "lease is not renewable" for a non-renewable token
  auth/token/create                 POST {ttl, renewable, policies, explicit_max_ttl}
  auth/<k8s mount>/login            POST {role, jwt}: the jwt must equal the configured one
  transit/keys/<name>               POST create {type, derived}, GET read, DELETE (when
                                    deletion_allowed); LIST transit/keys (or GET ?list=true)
  transit/keys/<name>/rotate        POST: a new version
  transit/keys/<name>/config        POST {min_decryption_version, min_encryption_version,
                                    deletion_allowed}
  transit/encrypt/<name>            POST {plaintext, context, key_version, associated_data} or
                                    {batch_input: [...]}; creates the key on demand (upsert),
                                    derived iff a context is given, as Vault does
  transit/decrypt/<name>            POST {ciphertext, context, associated_data} or batch_input
  transit/rewrap/<name>             POST {ciphertext, context, key_version} or batch_input
  transit/datakey/<plaintext|wrapped>/<name>   POST {bits, context}

Every path except sys/health and the login needs X-Vault-Token: a token unknown, expired (TTLs are
real) or revoked is 403 {"errors": ["permission denied"]}. With --namespace NS, transit and token
paths answer 404 "no handler for route" unless X-Vault-Namespace is NS.

Keys: aes256-gcm96. Ciphertexts are "vault:v<version>:" + base64(nonce(12) || AES-GCM(ct || tag)),
as Vault's. A derived key's per-context key is HKDF-SHA256(version key, info=context).
In a batch, every item is processed; if any fails the status is 400 (Vault's default without
partial_failure_response_code) and data.batch_results still holds every item's result or error.

Control (no token): POST /__control with any of
  {"reset": true}    forget faults and counters (keys and tokens stay)
  {"seed": 1, "rate_limit_ratio": 0.5, "error_5xx_ratio": 0.1, "latency_ms": 20,
   "permission_denied": true (every transit call 403), "sealed": true (everything 503),
   "outage_seconds": 3 (every call 503 "Vault is sealed" for that long),
   "expire_tokens": true (every token but the root token expires now),
   "token_ttl": 60 (TTL of tokens from logins and renewals), "token_max_ttl": 0 (0 = none)}
  {"create_key": {"name": "x", "derived": true}}, {"rotate_key": "x"},
  {"create_token": {"ttl": 5, "renewable": true}} -> {"token": "..."}
and GET (or POST) /__stats -> {"calls": {"transit/decrypt": n, ...}, "errors": {"403": n},
"logins": n, "renewals": n, "jwts": [...], "namespaces": [...], "tokens_seen": n}.

Usage: vault_server.py --port-file PATH [--root-token T] [--key rekey] [--key plainkey:plain]
       [--k8s-role rekey --k8s-jwt JWT --k8s-mount kubernetes] [--namespace NS] [--tls-dir DIR]
The server writes its port to PATH once it listens (so tests can use port 0).
"""

import argparse
import base64
import binascii
import datetime
import json
import os
import random
import re
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.exceptions import InvalidTag

DERIVED_MISSING_CONTEXT = ("missing 'context' for key derivation; the key was created using a "
                           "derived key, which means additional, per-request information must be "
                           "included in order to perform operations with the key")


class VaultError(Exception):
    def __init__(self, status, *errors):
        super().__init__("; ".join(errors))
        self.status, self.errors = status, list(errors)


class UserError(Exception):
    """A per-item error (Vault's errutil.UserError): 400 alone, an error field in a batch."""


def now_iso(t):
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%S.%fZ")


class Key:
    def __init__(self, name, derived=False, key_type="aes256-gcm96"):
        if key_type not in ("aes256-gcm96",):
            raise VaultError(400, "unknown key type %s" % key_type)
        self.name, self.derived, self.type = name, derived, key_type
        self.versions = {}
        self.min_decryption_version = 1
        self.min_encryption_version = 0
        self.deletion_allowed = False
        self.rotate()

    def rotate(self):
        version = len(self.versions) + 1
        self.versions[version] = (os.urandom(32), int(time.time()))
        return version

    @property
    def latest(self):
        return len(self.versions)

    def info(self):
        return {"name": self.name, "type": self.type, "derived": self.derived,
                "kdf": "hkdf_sha256" if self.derived else None,
                "keys": {str(v): t for v, (_, t) in self.versions.items()},
                "latest_version": self.latest,
                "min_available_version": 0,
                "min_decryption_version": self.min_decryption_version,
                "min_encryption_version": self.min_encryption_version,
                "deletion_allowed": self.deletion_allowed, "exportable": False,
                "allow_plaintext_backup": False, "auto_rotate_period": 0,
                "convergent_encryption": False, "imported_key": False,
                "supports_encryption": True, "supports_decryption": True,
                "supports_derivation": True, "supports_signing": False}

    def _aead(self, version, context):
        material = self.versions[version][0]
        if self.derived:
            if not context:
                raise UserError(DERIVED_MISSING_CONTEXT)
            material = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                            info=context).derive(material)
        return AESGCM(material)

    def encrypt(self, plaintext, context, ad, key_version=0):
        version = key_version or self.latest
        if version > self.latest:
            raise UserError("requested version for encryption is higher than the latest key "
                            "version")
        if self.min_encryption_version and version < self.min_encryption_version:
            raise UserError("requested version for encryption is less than the minimum "
                            "encryption key version")
        nonce = os.urandom(12)
        blob = nonce + self._aead(version, context).encrypt(nonce, plaintext, ad or None)
        return "vault:v%d:%s" % (version, base64.b64encode(blob).decode()), version

    def decrypt(self, ciphertext, context, ad):
        if not isinstance(ciphertext, str) or not ciphertext.startswith("vault:v"):
            raise UserError("invalid ciphertext: no prefix")
        parts = ciphertext[len("vault:v"):].split(":", 1)
        if len(parts) != 2:
            raise UserError("invalid ciphertext: wrong number of fields")
        try:
            version = int(parts[0])
        except ValueError:
            raise UserError("invalid ciphertext: version number could not be decoded")
        if version > self.latest or version < 1:
            raise UserError("invalid ciphertext: version is too new")
        if version < self.min_decryption_version:
            raise UserError("ciphertext or signature version is disallowed by policy (too old)")
        try:
            blob = base64.b64decode(parts[1], validate=True)
        except (binascii.Error, ValueError):
            raise UserError("invalid ciphertext: could not decode base64")
        if len(blob) < 12 + 16:
            raise UserError("invalid ciphertext: unable to decrypt")
        try:
            return self._aead(version, context).decrypt(blob[:12], blob[12:], ad or None)
        except InvalidTag:
            raise UserError("cipher: message authentication failed")


class Token:
    def __init__(self, ttl, renewable, policies, max_ttl=0, meta=None):
        self.id = "hvs." + base64.urlsafe_b64encode(os.urandom(18)).decode().rstrip("=")
        self.accessor = uuid.uuid4().hex[:24]
        self.created = time.time()
        self.ttl, self.renewable, self.policies = ttl, renewable, policies
        self.expires_at = self.created + ttl if ttl else None
        self.max_expires_at = self.created + max_ttl if max_ttl else None
        self.meta = meta or {}

    def valid(self):
        return self.expires_at is None or time.time() < self.expires_at

    def remaining(self):
        return 0 if self.expires_at is None else max(0, int(self.expires_at - time.time()))

    def auth(self, lease_duration):
        return {"client_token": self.id, "accessor": self.accessor, "policies": self.policies,
                "token_policies": self.policies, "metadata": self.meta,
                "lease_duration": lease_duration, "renewable": self.renewable,
                "entity_id": "", "token_type": "service", "orphan": True,
                "mfa_requirement": None, "num_uses": 0}


class State:
    def __init__(self, args):
        self.lock = threading.Lock()
        self.rng = random.Random()
        self.keys = {}
        self.tokens = {}
        root = Token(0, False, ["root"])
        root.id = args.root_token
        self.root = root.id
        self.tokens[root.id] = root
        self.k8s_mount, self.k8s_role, self.k8s_jwt = args.k8s_mount, args.k8s_role, args.k8s_jwt
        self.namespace = args.namespace
        self.token_ttl, self.token_max_ttl = args.token_ttl, 0
        for spec in args.key:
            name, _, kind = spec.partition(":")
            self.keys[name] = Key(name, derived=(kind != "plain"))
        self.reset_faults()

    def reset_faults(self):
        self.faults = {"rate_limit_ratio": 0.0, "error_5xx_ratio": 0.0, "latency_ms": 0,
                       "permission_denied": False, "sealed": False, "outage_until": 0.0}
        self.calls, self.errors = {}, {}
        self.logins = self.renewals = 0
        self.jwts, self.namespaces = [], []

    def key(self, name):
        if name not in self.keys:
            raise VaultError(400, "encryption key not found")
        return self.keys[name]


def b64arg(body, field, required=False, what=None):
    value = body.get(field)
    if value in (None, ""):
        if required:
            raise UserError("missing %s to %s" % (field, what or "process"))
        return b""
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise UserError("failed to base64-decode %s" % field)


def batch(body, one):
    """Runs `one(item)` over body's batch_input, or over the body itself. Returns (status, data)."""
    items = body.get("batch_input")
    if items is None:
        try:
            return 200, one(body)
        except UserError as e:
            raise VaultError(400, str(e))
    if not isinstance(items, list) or not items:
        raise VaultError(400, "missing batch input to process")
    contexts = [bool(i.get("context")) for i in items if isinstance(i, dict)]
    if contexts and any(contexts) and not all(contexts):
        raise VaultError(400, "context should be set either in all the request blocks or in none")
    results, failed = [], False
    for item in items:
        result = {"reference": item.get("reference", "")} if isinstance(item, dict) else {}
        try:
            if not isinstance(item, dict):
                raise UserError("invalid batch item")
            result.update(one(item))
        except UserError as e:
            result["error"] = str(e)
            failed = True
        results.append(result)
    status = 200
    if failed:
        status = 400
        partial = body.get("partial_failure_response_code")
        if partial and any("error" not in r for r in results):
            status = int(partial)
    return status, {"batch_results": results}


# --- transit ------------------------------------------------------------------------------------

def transit_encrypt(state, name, body):
    if name not in state.keys:
        if body.get("type") not in (None, "aes256-gcm96"):
            raise VaultError(400, "unknown key type %s" % body.get("type"))
        first = body.get("batch_input", [body])
        derived = bool(first and isinstance(first[0], dict) and first[0].get("context"))
        state.keys[name] = Key(name, derived=derived)
    key = state.keys[name]

    def one(item):
        plaintext = b64arg(item, "plaintext", required=True, what="encrypt")
        ct, version = key.encrypt(plaintext, b64arg(item, "context"),
                                  b64arg(item, "associated_data"),
                                  int(item.get("key_version") or body.get("key_version") or 0))
        return {"ciphertext": ct, "key_version": version}
    if "plaintext" not in body and "batch_input" not in body:
        raise VaultError(400, "missing plaintext to encrypt")
    return batch(body, one)


def transit_decrypt(state, name, body):
    key = state.key(name)

    def one(item):
        if not item.get("ciphertext"):
            raise UserError("missing ciphertext to decrypt")
        plaintext = key.decrypt(item["ciphertext"], b64arg(item, "context"),
                                b64arg(item, "associated_data"))
        return {"plaintext": base64.b64encode(plaintext).decode()}
    return batch(body, one)


def transit_rewrap(state, name, body):
    key = state.key(name)

    def one(item):
        if not item.get("ciphertext"):
            raise UserError("missing ciphertext to decrypt")
        context = b64arg(item, "context")
        plaintext = key.decrypt(item["ciphertext"], context, b"")
        ct, version = key.encrypt(plaintext, context, b"",
                                  int(item.get("key_version") or body.get("key_version") or 0))
        return {"ciphertext": ct, "key_version": version}
    return batch(body, one)


def transit_datakey(state, kind, name, body):
    if kind not in ("plaintext", "wrapped"):
        raise VaultError(400, "Invalid path, must be 'plaintext' or 'wrapped'")
    key = state.key(name)
    bits = int(body.get("bits") or 256)
    if bits not in (128, 256, 512):
        raise VaultError(400, "invalid bit length")
    material = os.urandom(bits // 8)
    try:
        ct, version = key.encrypt(material, b64arg(body, "context"), b"",
                                  int(body.get("key_version") or 0))
    except UserError as e:
        raise VaultError(400, str(e))
    data = {"ciphertext": ct, "key_version": version}
    if kind == "plaintext":
        data["plaintext"] = base64.b64encode(material).decode()
    return 200, data


# --- HTTP ----------------------------------------------------------------------------------------

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Keep-alive clients (rekey reuses its connections) would otherwise wait out a delayed ACK
    # on every reply, whose headers and body go out in two writes: 44 ms a call. Real
    # servers set TCP_NODELAY too.
    disable_nagle_algorithm = True
    server_version = "vault-test-server"

    def log_message(self, fmt, *args):
        if self.server.verbose:
            super().log_message(fmt, *args)

    def reply(self, status, obj=None):
        data = b"" if obj is None else json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def envelope(self, data=None, auth=None, warnings=None):
        return {"request_id": str(uuid.uuid4()), "lease_id": "", "renewable": False,
                "lease_duration": 0, "data": data, "wrap_info": None, "warnings": warnings,
                "auth": auth, "mount_type": ""}

    def do_HEAD(self):
        self.handle_any("HEAD")

    def do_GET(self):
        self.handle_any("GET")

    def do_POST(self):
        self.handle_any("POST")

    def do_PUT(self):
        self.handle_any("POST")

    def do_DELETE(self):
        self.handle_any("DELETE")

    def do_LIST(self):
        self.handle_any("LIST")

    def handle_any(self, method):
        state = self.server.state
        length = int(self.headers.get("Content-Length") or 0)
        payload = self.rfile.read(length) if length else b""
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        if url.path == "/__control":
            return self.control(json.loads(payload or b"{}"))
        if url.path == "/__stats":
            with state.lock:
                return self.reply(200, {"calls": state.calls, "errors": state.errors,
                                        "logins": state.logins, "renewals": state.renewals,
                                        "jwts": state.jwts, "namespaces": state.namespaces,
                                        "keys": {n: k.latest for n, k in state.keys.items()}})
        if not url.path.startswith("/v1/"):
            return self.reply(404, {"errors": []})
        path = url.path[len("/v1/"):].strip("/")
        if method == "GET" and query.get("list") == "true":
            method = "LIST"
        try:
            try:
                body = json.loads(payload) if payload.strip() else {}
            except ValueError:
                raise VaultError(400, "error parsing JSON")
            if not isinstance(body, dict):
                raise VaultError(400, "error parsing JSON")
            status, result = self.route(state, method, path, body)
            self.reply(status, result)
        except VaultError as e:
            with state.lock:
                state.errors[str(e.status)] = state.errors.get(str(e.status), 0) + 1
            self.reply(e.status, {"errors": e.errors})

    def route(self, state, method, path, body):
        with state.lock:
            faults = dict(state.faults)
            roll = state.rng.random()
            op = re.sub(r"^(transit/(?:keys|encrypt|decrypt|rewrap|datakey/\w+))/.*$", r"\1", path)
            state.calls[op] = state.calls.get(op, 0) + 1
            ns = self.headers.get("X-Vault-Namespace")
            if ns is not None and ns not in state.namespaces:
                state.namespaces.append(ns)
        if faults["latency_ms"]:
            time.sleep(faults["latency_ms"] / 1000.0)
        if faults["sealed"] or time.time() < faults["outage_until"]:
            if path == "sys/health":
                return 503, self.health(sealed=True)
            raise VaultError(503, "Vault is sealed")
        if path == "sys/health":
            return 200, self.health(sealed=False)
        if state.namespace and self.headers.get("X-Vault-Namespace", "").strip("/") != \
                state.namespace:
            raise VaultError(404, "no handler for route \"%s\". route entry not found." % path)
        if roll < faults["rate_limit_ratio"]:
            raise VaultError(429, "request path \"%s\": rate limit quota exceeded" % path)
        if roll < faults["rate_limit_ratio"] + faults["error_5xx_ratio"]:
            raise VaultError(500, "internal error")
        if path == "auth/%s/login" % state.k8s_mount and method == "POST":
            return self.k8s_login(state, body)
        with state.lock:
            token = self.token(state)
            if path == "auth/token/lookup-self" and method in ("GET", "POST"):
                return 200, self.envelope(self.lookup(state, token))
            if path == "auth/token/renew-self" and method == "POST":
                return self.renew(state, token, body)
            if path == "auth/token/create" and method == "POST":
                t = Token(self.duration(body.get("ttl")) or state.token_ttl,
                          body.get("renewable", True), body.get("policies") or ["default"],
                          self.duration(body.get("explicit_max_ttl")))
                state.tokens[t.id] = t
                return 200, self.envelope(auth=t.auth(t.ttl))
            if not path.startswith("transit/"):
                raise VaultError(404, "no handler for route \"%s\". route entry not found." % path)
            if faults["permission_denied"] and token.id != state.root:
                raise VaultError(403, "permission denied")
            return self.transit(state, method, path[len("transit/"):], body)

    @staticmethod
    def duration(value):
        if value in (None, "", 0):
            return 0
        if isinstance(value, int):
            return value
        m = re.fullmatch(r"(\d+)([smh]?)", str(value))
        if not m:
            raise VaultError(400, "error parsing duration %r" % value)
        return int(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]

    def health(self, sealed):
        return {"initialized": True, "sealed": sealed, "standby": False,
                "performance_standby": False, "replication_performance_mode": "disabled",
                "replication_dr_mode": "disabled", "server_time_utc": int(time.time()),
                "version": "1.15.6+rekey-test", "cluster_name": "vault-cluster-rekey-test",
                "cluster_id": "00000000-0000-0000-0000-000000000000"}

    def token(self, state):
        value = self.headers.get("X-Vault-Token")
        if not value:
            auth = self.headers.get("Authorization", "")
            value = auth[len("Bearer "):] if auth.startswith("Bearer ") else ""
        token = state.tokens.get(value)
        if token is None or not token.valid():
            raise VaultError(403, "permission denied")
        return token

    def lookup(self, state, token):
        return {"accessor": token.accessor, "creation_time": int(token.created),
                "creation_ttl": token.ttl, "display_name": token.meta.get("display", "token"),
                "entity_id": "", "expire_time": now_iso(token.expires_at)
                if token.expires_at else None, "explicit_max_ttl": 0, "id": token.id,
                "issue_time": now_iso(token.created), "meta": token.meta, "num_uses": 0,
                "orphan": True, "path": "auth/token/create", "policies": token.policies,
                "renewable": token.renewable, "ttl": token.remaining(), "type": "service"}

    def renew(self, state, token, body):
        if not token.renewable:
            raise VaultError(400, "lease is not renewable")
        increment = self.duration(body.get("increment")) or state.token_ttl or token.ttl
        expires = time.time() + increment
        warnings = None
        max_at = token.max_expires_at
        if state.token_max_ttl:
            max_at = min(max_at or float("inf"), token.created + state.token_max_ttl)
        if max_at is not None and expires > max_at:
            expires = max_at
            warnings = ["TTL of %ds exceeded the effective max_ttl; TTL value is capped "
                        "accordingly" % increment]
        token.expires_at = expires
        state.renewals += 1
        return 200, self.envelope(auth=token.auth(max(0, int(expires - time.time()))),
                                  warnings=warnings)

    def k8s_login(self, state, body):
        role, jwt = body.get("role"), body.get("jwt")
        with state.lock:
            state.jwts.append(jwt)
            if not role:
                raise VaultError(400, "missing role")
            if not jwt:
                raise VaultError(400, "missing jwt")
            if role != state.k8s_role:
                raise VaultError(400, "invalid role name \"%s\"" % role)
            if state.k8s_jwt is not None and jwt != state.k8s_jwt:
                raise VaultError(403, "permission denied")
            meta = {"role": role, "service_account_name": "rekey",
                    "service_account_namespace": "rekey",
                    "service_account_secret_name": "",
                    "service_account_uid": "1b2c3d4e-0000-0000-0000-000000000000"}
            t = Token(state.token_ttl, True, ["default", "rekey"], state.token_max_ttl, meta)
            state.tokens[t.id] = t
            state.logins += 1
            return 200, self.envelope(auth=t.auth(t.ttl))

    def transit(self, state, method, rest, body):
        parts = rest.split("/")
        if parts[0] == "keys":
            if len(parts) == 1 and method == "LIST":
                if not state.keys:
                    raise VaultError(404)
                return 200, self.envelope({"keys": sorted(state.keys)})
            name = parts[1] if len(parts) > 1 else ""
            if len(parts) == 2:
                if method == "POST":
                    if name not in state.keys:
                        state.keys[name] = Key(name, bool(body.get("derived")),
                                               body.get("type") or "aes256-gcm96")
                    return 200, self.envelope(state.keys[name].info())
                if method == "GET":
                    if name not in state.keys:
                        raise VaultError(404)
                    return 200, self.envelope(state.keys[name].info())
                if method == "DELETE":
                    key = state.key(name)
                    if not key.deletion_allowed:
                        raise VaultError(400, "deletion is not allowed for this key")
                    del state.keys[name]
                    return 204, None
            if len(parts) == 3 and method == "POST":
                key = state.key(name)
                if parts[2] == "rotate":
                    key.rotate()
                    return 200, self.envelope(key.info())
                if parts[2] == "config":
                    for field in ("min_decryption_version", "min_encryption_version"):
                        if field in body:
                            v = int(body[field])
                            if v > key.latest:
                                raise VaultError(400, "cannot set %s to a value greater than "
                                                      "the latest version" % field)
                            setattr(key, field, max(1, v) if field.startswith("min_dec") else v)
                    if "deletion_allowed" in body:
                        key.deletion_allowed = bool(body["deletion_allowed"])
                    return 200, self.envelope(key.info())
        elif method == "POST" and len(parts) == 2 and parts[0] in ("encrypt", "decrypt",
                                                                   "rewrap"):
            fn = {"encrypt": transit_encrypt, "decrypt": transit_decrypt,
                  "rewrap": transit_rewrap}[parts[0]]
            status, data = fn(state, parts[1], body)
            return status, self.envelope(data)
        elif method == "POST" and len(parts) == 3 and parts[0] == "datakey":
            status, data = transit_datakey(state, parts[1], parts[2], body)
            return status, self.envelope(data)
        raise VaultError(405, "unsupported operation")

    def control(self, cmd):
        state = self.server.state
        out = {}
        with state.lock:
            if cmd.get("reset"):
                state.reset_faults()
            if "seed" in cmd:
                state.rng.seed(cmd["seed"])
            for k in ("rate_limit_ratio", "error_5xx_ratio", "latency_ms", "permission_denied",
                      "sealed"):
                if k in cmd:
                    state.faults[k] = cmd[k]
            if "outage_seconds" in cmd:
                state.faults["outage_until"] = time.time() + float(cmd["outage_seconds"])
            if "token_ttl" in cmd:
                state.token_ttl = int(cmd["token_ttl"])
            if "token_max_ttl" in cmd:
                state.token_max_ttl = int(cmd["token_max_ttl"])
            if cmd.get("expire_tokens"):
                for t in state.tokens.values():
                    if t.id != state.root:
                        t.expires_at = time.time() - 1
            if "create_key" in cmd:
                c = cmd["create_key"]
                state.keys[c["name"]] = Key(c["name"], derived=c.get("derived", True))
            if "rotate_key" in cmd:
                out["version"] = state.key(cmd["rotate_key"]).rotate()
            if "create_token" in cmd:
                c = cmd["create_token"]
                t = Token(int(c.get("ttl", 0)), bool(c.get("renewable", True)),
                          c.get("policies", ["rekey"]), int(c.get("max_ttl", 0)))
                state.tokens[t.id] = t
                out["token"] = t.id
        self.reply(200, out)


def tls_context(directory):
    """A server TLS context with a new self-signed certificate for 127.0.0.1 (also in
    directory/ca.pem, the CA bundle clients need)."""
    import ipaddress
    import ssl
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rekey test vault")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = os.path.join(directory, "ca.pem"), os.path.join(directory, "key.pem")
    with open(key_file, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    with open(cert_file, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_file, key_file)
    return ctx


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file")
    parser.add_argument("--root-token", default="s.rekey-test-root")
    parser.add_argument("--key", action="append", default=[],
                        help="Transit key to create at start: name (derived) or name:plain")
    parser.add_argument("--k8s-mount", default="kubernetes")
    parser.add_argument("--k8s-role", default="rekey")
    parser.add_argument("--k8s-jwt", default=None,
                        help="the only service-account JWT the Kubernetes login accepts")
    parser.add_argument("--token-ttl", type=int, default=3600,
                        help="TTL of tokens issued by logins and renewals, in seconds")
    parser.add_argument("--namespace", default=None)
    parser.add_argument("--tls-dir", default=None,
                        help="serve HTTPS with a fresh self-signed certificate for 127.0.0.1, "
                             "written to TLS_DIR/ca.pem for clients to trust")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()

    state = State(args)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    server.state, server.verbose = state, args.verbose
    if args.tls_dir:
        server.socket = tls_context(args.tls_dir).wrap_socket(server.socket, server_side=True)
    port = server.server_address[1]
    if args.port_file:
        tmp = args.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(str(port))
        os.rename(tmp, args.port_file)
    else:
        print(port, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
