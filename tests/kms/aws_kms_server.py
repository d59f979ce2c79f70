#!/usr/bin/python3
"""A loopback AWS KMS + STS test server speaking the real wire protocols.

KMS: JSON 1.1 (POST /, X-Amz-Target: TrentService.<Op>), operations GenerateDataKey, Encrypt,
Decrypt, DescribeKey, ReEncrypt. Every KMS request must carry a valid AWS Signature Version 4
(the server recomputes the canonical request, string to sign and signing key from the secret it
holds for the access key); a wrong signature is InvalidSignatureException (400), an x-amz-date
more than 5 minutes off is InvalidSignatureException "Signature expired" (400), an unknown access
key is UnrecognizedClientException (400), an expired session ExpiredTokenException (400).

STS: AssumeRoleWithWebIdentity (form-encoded query API, XML response), unsigned as on AWS. Issued
credentials last --sts-duration seconds and are accepted by the KMS side.

Ciphertext blobs: b"RKMS1" || key id (36 ASCII) || IV (12) || AES-256-GCM(ct || tag) with the
associated data key id || canonical JSON of the encryption context, so a blob only decrypts
under its key and with its exact context.

Control (unsigned, JSON): POST /__control with any of
  {"reset": true}                       forget faults and counters (keys stay)
  {"create_key": {"alias": "alias/x"}}  -> {"KeyId", "Arn"}
  {"key_state": {"key": "<id|alias|arn>", "state": "Disabled"|"Enabled"|"PendingDeletion"}}
  {"throttle_ratio": 0.5, "error_5xx_ratio": 0.1, "latency_ms": 20, "access_denied": true,
   "outage_seconds": 3 (fail every KMS call with 503 for that long), "seed": 1}
and GET (or POST) /__stats -> {"calls": {op: n}, "errors": {type: n}, "web_identity_tokens": [...],
"sts_calls": n}.

Usage: aws_kms_server.py --port-file PATH [--access-key ID --secret-key S] [--key alias/rekey]
The server writes its port to PATH once it listens (so tests can use port 0).
"""

import argparse
import base64
import datetime
import hashlib
import hmac
import json
import os
import random
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

ACCOUNT = "111122223333"
BLOB_MAGIC = b"RKMS1"
MAX_SKEW = datetime.timedelta(minutes=5)


class KmsError(Exception):
    def __init__(self, status, type_, message):
        super().__init__(message)
        self.status, self.type, self.message = status, type_, message


class State:
    def __init__(self, region):
        self.lock = threading.Lock()
        self.region = region
        self.keys = {}  # key id -> {"material", "state", "arn"}
        self.aliases = {}  # alias name -> key id
        self.credentials = {}  # access key -> (secret, session token or None, expiry or None)
        self.rng = random.Random()
        self.reset_faults()

    def reset_faults(self):
        self.faults = {"throttle_ratio": 0.0, "error_5xx_ratio": 0.0, "latency_ms": 0,
                       "access_denied": False, "outage_until": 0.0}
        self.calls = {}
        self.errors = {}
        self.tokens = []
        self.sts_calls = 0
        self.connections = 0  # TCP connections accepted: whether clients keep theirs alive

    def create_key(self, alias=None):
        key_id = str(uuid.uuid4())
        arn = "arn:aws:kms:%s:%s:key/%s" % (self.region, ACCOUNT, key_id)
        self.keys[key_id] = {"material": os.urandom(32), "state": "Enabled", "arn": arn}
        if alias:
            self.aliases[alias] = key_id
        return key_id, arn

    def resolve(self, ref):
        """Key id for a key id, key ARN, alias name or alias ARN; NotFoundException otherwise."""
        if not isinstance(ref, str) or not ref:
            raise KmsError(400, "ValidationException", "KeyId is required")
        if ref.startswith("arn:aws:kms:"):
            tail = ref.split(":", 5)[-1]
            if tail.startswith("key/"):
                ref = tail[4:]
            elif tail.startswith("alias/"):
                ref = tail
        if ref.startswith("alias/"):
            if ref not in self.aliases:
                raise KmsError(400, "NotFoundException", "Alias %s is not found." % ref)
            ref = self.aliases[ref]
        if ref not in self.keys:
            raise KmsError(400, "NotFoundException", "Key '%s' does not exist" % ref)
        return ref

    def usable(self, key_id):
        key = self.keys[key_id]
        if key["state"] == "Disabled":
            raise KmsError(400, "DisabledException", "%s is disabled." % key["arn"])
        if key["state"] != "Enabled":
            raise KmsError(400, "KMSInvalidStateException",
                           "%s is pending deletion." % key["arn"])
        return key


def canonical_context(ctx):
    if ctx is None:
        ctx = {}
    if not isinstance(ctx, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                            for k, v in ctx.items()):
        raise KmsError(400, "ValidationException", "EncryptionContext must map strings to strings")
    return json.dumps(ctx, sort_keys=True, separators=(",", ":")).encode()


def seal(state, key_id, plaintext, ctx):
    key = state.usable(key_id)
    iv = os.urandom(12)
    ad = key_id.encode() + canonical_context(ctx)
    return BLOB_MAGIC + key_id.encode() + iv + AESGCM(key["material"]).encrypt(iv, plaintext, ad)


def open_blob(state, blob, ctx, expected_key_id=None):
    if len(blob) < len(BLOB_MAGIC) + 36 + 12 + 16 or not blob.startswith(BLOB_MAGIC):
        raise KmsError(400, "InvalidCiphertextException", "")
    key_id = blob[5:41].decode("ascii", "replace")
    if key_id not in state.keys:
        raise KmsError(400, "InvalidCiphertextException", "")
    if expected_key_id is not None and expected_key_id != key_id:
        raise KmsError(400, "IncorrectKeyException",
                       "The key ID in the request does not identify a CMK that can perform this "
                       "operation.")
    key = state.usable(key_id)
    try:
        plaintext = AESGCM(key["material"]).decrypt(blob[41:53], blob[53:],
                                                    key_id.encode() + canonical_context(ctx))
    except Exception:
        raise KmsError(400, "InvalidCiphertextException", "")
    return key_id, plaintext


def b64field(body, name):
    try:
        return base64.b64decode(body[name], validate=True)
    except Exception:
        raise KmsError(400, "ValidationException", "%s is not valid base64" % name)


# --- SigV4 ------------------------------------------------------------------------------------

def _hmac(key, msg):
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def signing_key(secret, date, region, service):
    k = _hmac(("AWS4" + secret).encode(), date)
    k = _hmac(k, region)
    k = _hmac(k, service)
    return _hmac(k, "aws4_request")


def uri_encode(s, encode_slash=True):
    safe = "-_.~" if encode_slash else "-_.~/"
    return urllib.parse.quote(s, safe=safe)


def canonical_request(method, raw_path, headers, signed_headers, payload):
    path, _, query = raw_path.partition("?")
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
    cquery = "&".join("%s=%s" % (uri_encode(k), uri_encode(v)) for k, v in sorted(pairs))
    cheaders = ""
    for name in signed_headers:
        values = headers.get_all(name) or []
        value = ",".join(" ".join(v.strip().split()) for v in values)
        cheaders += "%s:%s\n" % (name, value)
    return "\n".join([method, uri_encode(urllib.parse.unquote(path), False) or "/", cquery,
                      cheaders, ";".join(signed_headers), hashlib.sha256(payload).hexdigest()])


def verify_sigv4(state, method, raw_path, headers, payload, service):
    """Returns the access key id; raises KmsError exactly as AWS would."""
    auth = headers.get("Authorization")
    if not auth:
        raise KmsError(400, "MissingAuthenticationTokenException", "Missing Authentication Token")
    if not auth.startswith("AWS4-HMAC-SHA256 "):
        raise KmsError(400, "IncompleteSignatureException", "Unsupported signature algorithm")
    fields = {}
    for part in auth[len("AWS4-HMAC-SHA256 "):].split(","):
        k, _, v = part.strip().partition("=")
        fields[k] = v
    try:
        access_key, date, region, svc, terminator = fields["Credential"].split("/")
        signed_headers = fields["SignedHeaders"].split(";")
        signature = fields["Signature"]
    except (KeyError, ValueError):
        raise KmsError(400, "IncompleteSignatureException", "Authorization header is malformed")
    amz_date = headers.get("X-Amz-Date", "")
    try:
        when = datetime.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(
            tzinfo=datetime.timezone.utc)
    except ValueError:
        raise KmsError(400, "IncompleteSignatureException", "X-Amz-Date is missing or malformed")
    now = datetime.datetime.now(datetime.timezone.utc)
    if abs(now - when) > MAX_SKEW:
        raise KmsError(400, "InvalidSignatureException",
                       "Signature expired: %s is now earlier than %s (%s - 5 min.)" % (
                           amz_date, (now - MAX_SKEW).strftime("%Y%m%dT%H%M%SZ"),
                           now.strftime("%Y%m%dT%H%M%SZ")))
    if "host" not in signed_headers or "x-amz-date" not in signed_headers:
        raise KmsError(400, "InvalidSignatureException", "host and x-amz-date must be signed")
    if region != state.region or svc != service or terminator != "aws4_request" or \
            date != amz_date[:8]:
        raise KmsError(400, "InvalidSignatureException",
                       "Credential should be scoped to a valid region/service")
    with state.lock:
        cred = state.credentials.get(access_key)
    if cred is None:
        raise KmsError(400, "UnrecognizedClientException",
                       "The security token included in the request is invalid.")
    secret, token, expiry = cred
    if token is not None:
        if headers.get("X-Amz-Security-Token") != token:
            raise KmsError(400, "UnrecognizedClientException",
                           "The security token included in the request is invalid.")
        if expiry is not None and time.time() >= expiry:
            raise KmsError(400, "ExpiredTokenException",
                           "The security token included in the request is expired")
    creq = canonical_request(method, raw_path, headers, signed_headers, payload)
    scope = "/".join([date, region, svc, "aws4_request"])
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                         hashlib.sha256(creq.encode()).hexdigest()])
    expected = hmac.new(signing_key(secret, date, region, svc), to_sign.encode(),
                        hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, signature):
        raise KmsError(400, "InvalidSignatureException",
                       "The request signature we calculated does not match the signature you "
                       "provided.")
    return access_key


# --- operations -------------------------------------------------------------------------------

def op_generate_data_key(state, body):
    key_id = state.resolve(body.get("KeyId"))
    spec, n = body.get("KeySpec"), body.get("NumberOfBytes")
    size = {"AES_256": 32, "AES_128": 16}.get(spec) if spec else n
    if not isinstance(size, int) or not 1 <= size <= 1024:
        raise KmsError(400, "ValidationException", "KeySpec or NumberOfBytes is required")
    plaintext = os.urandom(size)
    blob = seal(state, key_id, plaintext, body.get("EncryptionContext"))
    return {"CiphertextBlob": base64.b64encode(blob).decode(),
            "Plaintext": base64.b64encode(plaintext).decode(),
            "KeyId": state.keys[key_id]["arn"]}


def op_encrypt(state, body):
    key_id = state.resolve(body.get("KeyId"))
    plaintext = b64field(body, "Plaintext")
    blob = seal(state, key_id, plaintext, body.get("EncryptionContext"))
    return {"CiphertextBlob": base64.b64encode(blob).decode(), "KeyId": state.keys[key_id]["arn"],
            "EncryptionAlgorithm": "SYMMETRIC_DEFAULT"}


def op_decrypt(state, body):
    expected = state.resolve(body["KeyId"]) if body.get("KeyId") else None
    key_id, plaintext = open_blob(state, b64field(body, "CiphertextBlob"),
                                  body.get("EncryptionContext"), expected)
    return {"Plaintext": base64.b64encode(plaintext).decode(), "KeyId": state.keys[key_id]["arn"],
            "EncryptionAlgorithm": "SYMMETRIC_DEFAULT"}


def op_describe_key(state, body):
    key_id = state.resolve(body.get("KeyId"))
    key = state.keys[key_id]
    return {"KeyMetadata": {"AWSAccountId": ACCOUNT, "KeyId": key_id, "Arn": key["arn"],
                            "CreationDate": 1700000000.0, "Enabled": key["state"] == "Enabled",
                            "KeyState": key["state"], "KeyUsage": "ENCRYPT_DECRYPT",
                            "KeySpec": "SYMMETRIC_DEFAULT", "KeyManager": "CUSTOMER",
                            "Origin": "AWS_KMS", "Description": ""}}


def op_re_encrypt(state, body):
    expected = state.resolve(body["SourceKeyId"]) if body.get("SourceKeyId") else None
    src, plaintext = open_blob(state, b64field(body, "CiphertextBlob"),
                               body.get("SourceEncryptionContext"), expected)
    dst = state.resolve(body.get("DestinationKeyId"))
    blob = seal(state, dst, plaintext, body.get("DestinationEncryptionContext"))
    return {"CiphertextBlob": base64.b64encode(blob).decode(), "SourceKeyId": state.keys[src]["arn"],
            "KeyId": state.keys[dst]["arn"], "SourceEncryptionAlgorithm": "SYMMETRIC_DEFAULT",
            "DestinationEncryptionAlgorithm": "SYMMETRIC_DEFAULT"}


OPERATIONS = {"GenerateDataKey": op_generate_data_key, "Encrypt": op_encrypt,
              "Decrypt": op_decrypt, "DescribeKey": op_describe_key, "ReEncrypt": op_re_encrypt}


def sts_assume_role_with_web_identity(state, params, duration):
    token = params.get("WebIdentityToken", "")
    role = params.get("RoleArn", "")
    session = params.get("RoleSessionName", "")
    if not token or not role.startswith("arn:aws:iam::") or not session:
        return 400, sts_error("Sender", "InvalidIdentityToken" if not token else "ValidationError",
                              "missing or invalid WebIdentityToken, RoleArn or RoleSessionName")
    access_key = "ASIA" + uuid.uuid4().hex[:16].upper()
    secret = base64.b64encode(os.urandom(30)).decode()
    session_token = base64.b64encode(os.urandom(60)).decode()
    expiry = time.time() + duration
    with state.lock:
        state.credentials[access_key] = (secret, session_token, expiry)
        state.tokens.append(token)
        state.sts_calls += 1
    expiration = datetime.datetime.fromtimestamp(expiry, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ")
    role_name = role.rsplit("/", 1)[-1]
    return 200, f"""<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult>
    <SubjectFromWebIdentityToken>system:serviceaccount:rekey:rekey</SubjectFromWebIdentityToken>
    <Audience>sts.amazonaws.com</Audience>
    <AssumedRoleUser>
      <Arn>arn:aws:sts::{ACCOUNT}:assumed-role/{role_name}/{session}</Arn>
      <AssumedRoleId>AROA{uuid.uuid4().hex[:16].upper()}:{session}</AssumedRoleId>
    </AssumedRoleUser>
    <Credentials>
      <SessionToken>{session_token}</SessionToken>
      <SecretAccessKey>{secret}</SecretAccessKey>
      <Expiration>{expiration}</Expiration>
      <AccessKeyId>{access_key}</AccessKeyId>
    </Credentials>
    <Provider>oidc.eks.amazonaws.com</Provider>
  </AssumeRoleWithWebIdentityResult>
  <ResponseMetadata><RequestId>{uuid.uuid4()}</RequestId></ResponseMetadata>
</AssumeRoleWithWebIdentityResponse>
"""


def sts_error(type_, code, message):
    return (f"<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error>"
            f"<Type>{type_}</Type><Code>{code}</Code><Message>{message}</Message></Error>"
            f"<RequestId>{uuid.uuid4()}</RequestId></ErrorResponse>")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Keep-alive clients (rekey reuses its connections) would otherwise wait out a delayed ACK
    # on every reply, whose headers and body go out in two writes: 44 ms a call. Real
    # servers set TCP_NODELAY too.
    disable_nagle_algorithm = True
    server_version = "aws-kms-test-server"

    def setup(self):
        super().setup()
        with self.server.state.lock:
            self.server.state.connections += 1

    def log_message(self, fmt, *args):
        if self.server.verbose:
            super().log_message(fmt, *args)

    def reply(self, status, body, content_type):
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
        self.end_headers()
        self.wfile.write(data)

    def reply_json(self, status, obj):
        self.reply(status, json.dumps(obj), "application/x-amz-json-1.1")

    def do_GET(self):
        state = self.server.state
        if self.path == "/__stats":
            with state.lock:
                self.reply_json(200, {"calls": state.calls, "errors": state.errors,
                                      "web_identity_tokens": state.tokens,
                                      "sts_calls": state.sts_calls,
                                      "connections": state.connections})
        else:
            self.reply_json(404, {"__type": "UnknownOperationException"})

    def do_POST(self):
        state = self.server.state
        length = int(self.headers.get("Content-Length") or 0)
        payload = self.rfile.read(length)
        if self.path == "/__control":
            return self.control(json.loads(payload or b"{}"))
        if self.path == "/__stats":
            return self.do_GET()
        target = self.headers.get("X-Amz-Target")
        if target is None:
            params = dict(urllib.parse.parse_qsl(payload.decode()))
            if params.get("Action") == "AssumeRoleWithWebIdentity":
                status, body = sts_assume_role_with_web_identity(state, params,
                                                                 self.server.sts_duration)
            else:
                status, body = 400, sts_error("Sender", "InvalidAction",
                                              "Could not find operation %s" % params.get("Action"))
            return self.reply(status, body, "text/xml")
        op = target[len("TrentService."):] if target.startswith("TrentService.") else None
        try:
            if op not in OPERATIONS:
                raise KmsError(400, "UnknownOperationException", "")
            verify_sigv4(state, "POST", self.path, self.headers, payload, "kms")
            with state.lock:
                state.calls[op] = state.calls.get(op, 0) + 1
                faults = dict(state.faults)
                roll = state.rng.random()
            if faults["latency_ms"]:
                time.sleep(faults["latency_ms"] / 1000.0)
            if time.time() < faults["outage_until"]:
                raise KmsError(503, "ServiceUnavailableException", "Service Unavailable")
            if roll < faults["throttle_ratio"]:
                raise KmsError(400, "ThrottlingException", "Rate exceeded")
            if roll < faults["throttle_ratio"] + faults["error_5xx_ratio"]:
                raise KmsError(500, "KMSInternalException", "An internal error occurred")
            try:
                body = json.loads(payload)
            except ValueError:
                raise KmsError(400, "SerializationException", "Start of structure or map found where not expected.")
            if faults["access_denied"]:
                ref = body.get("KeyId") or body.get("SourceKeyId") or "*"
                raise KmsError(400, "AccessDeniedException",
                               "User: arn:aws:sts::%s:assumed-role/rekey/rekey is not authorized "
                               "to perform: kms:%s on resource: %s because no identity-based "
                               "policy allows the kms:%s action" % (ACCOUNT, op, ref, op))
            with state.lock:
                result = OPERATIONS[op](state, body)
            self.reply_json(200, result)
        except KmsError as e:
            with state.lock:
                state.errors[e.type] = state.errors.get(e.type, 0) + 1
            self.send_response(e.status)
            data = json.dumps({"__type": e.type, "message": e.message}).encode()
            self.send_header("Content-Type", "application/x-amz-json-1.1")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("x-amzn-ErrorType", e.type + ":")
            self.end_headers()
            self.wfile.write(data)

    def control(self, cmd):
        state = self.server.state
        out = {}
        with state.lock:
            if cmd.get("reset"):
                state.reset_faults()
            if "seed" in cmd:
                state.rng.seed(cmd["seed"])
            for k in ("throttle_ratio", "error_5xx_ratio", "latency_ms", "access_denied"):
                if k in cmd:
                    state.faults[k] = cmd[k]
            if "outage_seconds" in cmd:
                state.faults["outage_until"] = time.time() + float(cmd["outage_seconds"])
            if "create_key" in cmd:
                out["KeyId"], out["Arn"] = state.create_key((cmd["create_key"] or {}).get("alias"))
            if "key_state" in cmd:
                try:
                    key_id = state.resolve(cmd["key_state"]["key"])
                except KmsError as e:
                    return self.reply_json(404, {"error": e.message})
                state.keys[key_id]["state"] = cmd["key_state"]["state"]
            if "add_credentials" in cmd:
                c = cmd["add_credentials"]
                state.credentials[c["access_key"]] = (c["secret_key"], c.get("session_token"),
                                                      c.get("expires_at"))
        self.reply_json(200, out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file")
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument("--access-key", default="AKIDREKEYTEST")
    parser.add_argument("--secret-key", default="rekey/test/secret/key+0123456789")
    parser.add_argument("--key", action="append", default=[],
                        help="alias of a key to create at start (repeatable)")
    parser.add_argument("--sts-duration", type=int, default=3600)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()

    state = State(args.region)
    state.credentials[args.access_key] = (args.secret_key, None, None)
    for alias in args.key:
        state.create_key(alias)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    server.state, server.sts_duration, server.verbose = state, args.sts_duration, args.verbose
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
