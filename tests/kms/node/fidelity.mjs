// Fidelity of tests/kms/aws_kms_server.py checked with a client nobody here wrote: the AWS SDK for
// JavaScript v3 (@aws-sdk/client-kms from npm, its own SigV4 signer and JSON 1.1 protocol code)
// drives GenerateDataKey, Encrypt, Decrypt, DescribeKey and ReEncrypt against the server, and a
// request whose signature is off by one byte (any of its 32 bytes, +1) must be rejected.
// Run by tests/kms/node/run.sh (which installs the SDK first).
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import assert from "node:assert/strict";
import {
  KMSClient, GenerateDataKeyCommand, EncryptCommand, DecryptCommand, DescribeKeyCommand,
  ReEncryptCommand,
} from "@aws-sdk/client-kms";

const HERE = dirname(fileURLToPath(import.meta.url));
const ACCESS = "AKIDREKEYTEST", SECRET = "rekey/test/secret/key+0123456789", REGION = "us-east-1";
const CTX = { rekey_key_id: "7" };

async function startServer() {
  const dir = mkdtempSync(join(tmpdir(), "rekey-kms-node-"));
  const portFile = join(dir, "port");
  const proc = spawn("/usr/bin/python3", [join(HERE, "..", "aws_kms_server.py"), "--port-file",
    portFile, "--key", "alias/rekey", "--key", "alias/other", "--access-key", ACCESS,
    "--secret-key", SECRET, "--region", REGION], { stdio: ["ignore", "inherit", "inherit"] });
  for (let i = 0; i < 400 && !existsSync(portFile); i++) await new Promise((r) => setTimeout(r, 50));
  if (!existsSync(portFile)) throw new Error("aws_kms_server.py did not start");
  const url = "http://127.0.0.1:" + readFileSync(portFile, "utf8").trim();
  return { url, stop: () => { proc.kill("SIGKILL"); rmSync(dir, { recursive: true, force: true }); } };
}

function client(url, credentials = { accessKeyId: ACCESS, secretAccessKey: SECRET }) {
  return new KMSClient({ region: REGION, endpoint: url, credentials, maxAttempts: 1 });
}

async function control(url, cmd) {
  const r = await fetch(url + "/__control", { method: "POST", body: JSON.stringify(cmd) });
  assert.equal(r.status, 200);
  return r.json();
}

async function expectError(name, promise) {
  try {
    await promise;
  } catch (e) {
    assert.equal(e.name, name, `expected ${name}, got ${e.name}: ${e.message}`);
    return e;
  }
  assert.fail(`expected ${name}, the call succeeded`);
}

// A client whose signed requests get signature byte `index` incremented by one (mod 256).
function tampered(url, index) {
  const kms = client(url);
  kms.middlewareStack.add((next) => async (args) => {
    const h = args.request.headers;
    const name = Object.keys(h).find((k) => k.toLowerCase() === "authorization");
    const m = /Signature=([0-9a-f]{64})$/.exec(h[name]);
    assert.ok(m, "no SigV4 signature in " + h[name]);
    const sig = Buffer.from(m[1], "hex");
    sig[index] = (sig[index] + 1) & 0xff;
    h[name] = h[name].slice(0, m.index) + "Signature=" + sig.toString("hex");
    return next(args);
  }, { step: "deserialize", priority: "low", name: "offByOneByte" });
  return kms;
}

const tests = {
  async generateDataKeyThenDecrypt(url) {
    const kms = client(url);
    const out = await kms.send(new GenerateDataKeyCommand({ KeyId: "alias/rekey", KeySpec: "AES_256",
      EncryptionContext: CTX }));
    assert.equal(out.Plaintext.length, 32);
    assert.match(out.KeyId, /^arn:aws:kms:us-east-1:\d+:key\//);
    const back = await kms.send(new DecryptCommand({ CiphertextBlob: out.CiphertextBlob,
      KeyId: out.KeyId, EncryptionContext: CTX }));
    assert.deepEqual(Buffer.from(back.Plaintext), Buffer.from(out.Plaintext));
    await expectError("InvalidCiphertextException", kms.send(new DecryptCommand({
      CiphertextBlob: out.CiphertextBlob, EncryptionContext: { rekey_key_id: "8" } })));
  },
  async encryptDecryptAndPinnedKey(url) {
    const kms = client(url);
    const pt = Buffer.alloc(32, 9);
    const enc = await kms.send(new EncryptCommand({ KeyId: "alias/rekey", Plaintext: pt,
      EncryptionContext: CTX }));
    const dec = await kms.send(new DecryptCommand({ CiphertextBlob: enc.CiphertextBlob,
      KeyId: "alias/rekey", EncryptionContext: CTX }));
    assert.deepEqual(Buffer.from(dec.Plaintext), pt);
    await expectError("IncorrectKeyException", kms.send(new DecryptCommand({
      CiphertextBlob: enc.CiphertextBlob, KeyId: "alias/other", EncryptionContext: CTX })));
  },
  async describeKeyAndDisabledKey(url) {
    const kms = client(url);
    const meta = (await kms.send(new DescribeKeyCommand({ KeyId: "alias/rekey" }))).KeyMetadata;
    assert.equal(meta.KeyState, "Enabled");
    assert.equal(meta.Enabled, true);
    await control(url, { key_state: { key: meta.Arn, state: "Disabled" } });
    try {
      await expectError("DisabledException", kms.send(new GenerateDataKeyCommand({
        KeyId: "alias/rekey", KeySpec: "AES_256" })));
    } finally {
      await control(url, { key_state: { key: meta.Arn, state: "Enabled" } });
    }
    await expectError("NotFoundException", kms.send(new DescribeKeyCommand({ KeyId: "alias/nope" })));
  },
  async reEncrypt(url) {
    const kms = client(url);
    const out = await kms.send(new GenerateDataKeyCommand({ KeyId: "alias/rekey", KeySpec: "AES_256",
      EncryptionContext: CTX }));
    const re = await kms.send(new ReEncryptCommand({ CiphertextBlob: out.CiphertextBlob,
      SourceKeyId: "alias/rekey", SourceEncryptionContext: CTX, DestinationKeyId: "alias/other",
      DestinationEncryptionContext: CTX }));
    assert.equal(re.SourceKeyId, out.KeyId);
    assert.notEqual(re.KeyId, out.KeyId);
    const back = await kms.send(new DecryptCommand({ CiphertextBlob: re.CiphertextBlob,
      KeyId: re.KeyId, EncryptionContext: CTX }));
    assert.deepEqual(Buffer.from(back.Plaintext), Buffer.from(out.Plaintext));
  },
  async faults(url) {
    const kms = client(url);
    await control(url, { throttle_ratio: 1.0 });
    await expectError("ThrottlingException", kms.send(new DescribeKeyCommand({ KeyId: "alias/rekey" })));
    await control(url, { throttle_ratio: 0.0, access_denied: true });
    await expectError("AccessDeniedException", kms.send(new DescribeKeyCommand({ KeyId: "alias/rekey" })));
    await control(url, { access_denied: false });
  },
  async wrongSecretAndUnknownAccessKey(url) {
    await expectError("InvalidSignatureException", client(url, { accessKeyId: ACCESS,
      secretAccessKey: "wrong" }).send(new DescribeKeyCommand({ KeyId: "alias/rekey" })));
    await expectError("UnrecognizedClientException", client(url, { accessKeyId: "AKIDNOBODY",
      secretAccessKey: SECRET }).send(new DescribeKeyCommand({ KeyId: "alias/rekey" })));
  },
  async signatureOffByOneByteIsRejected(url) {
    // The same middleware with no change would pass: the tampering is the only difference.
    const control_ = client(url);
    await control_.send(new DescribeKeyCommand({ KeyId: "alias/rekey" }));
    for (let i = 0; i < 32; i++) {
      const e = await expectError("InvalidSignatureException",
        tampered(url, i).send(new DescribeKeyCommand({ KeyId: "alias/rekey" })));
      assert.equal(e.$metadata.httpStatusCode, 400);
    }
  },
};

const server = await startServer();
let failed = 0;
try {
  for (const [name, fn] of Object.entries(tests)) {
    await control(server.url, { reset: true });
    try {
      await fn(server.url);
      console.error(`ok   ${name}`);
    } catch (e) {
      failed++;
      console.error(`FAIL ${name}: ${e.stack || e}`);
    }
  }
} finally {
  server.stop();
}
console.error(failed ? `FAILED (${failed})` : `OK (${Object.keys(tests).length} tests)`);
process.exit(failed ? 1 : 0);
