// Writes vectors.json: Tink keysets and ciphertexts produced by Google's JavaScript Tink
// (tink-crypto, pinned in package-lock.json), read by src/keyring/tink_keyset_test.cpp. Keys are
// random, so a re-run writes new vectors; commit the file it writes.
// Run: ./run.sh make_vectors.mjs  (installs tink-crypto first)
import { writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { tink, proto, hex, keysetOf, aesGcmKeyOf, encryptedKeyset } from "./tink_support.mjs";

const { aead, aeadSubtle, binaryInsecure, generateNewKeysetHandle } = tink;
const enc = new TextEncoder();

async function generate(template) {
  return binaryInsecure.serializeKeyset(await generateNewKeysetHandle(template));
}

// A vector for one serialized keyset: its bytes, each key's id and material, and a ciphertext of
// each AES-GCM key made by Tink's own Aead (so the test proves rekey's wire format on them).
async function describe(name, serialized, note) {
  const keyset = keysetOf(serialized);
  const keys = [];
  for (const key of keyset.getKeyList()) {
    const data = key.getKeyData();
    const entry = { key_id: key.getKeyId() >>> 0, type_url: data.getTypeUrl(),
                    status: key.getStatus(), output_prefix_type: key.getOutputPrefixType() };
    if (data.getTypeUrl().endsWith("AesGcmKey")) entry.key_hex = hex(aesGcmKeyOf(data).getKeyValue_asU8());
    keys.push(entry);
  }
  return { name, note, keyset_hex: hex(serialized), primary_key_id: keyset.getPrimaryKeyId() >>> 0, keys };
}

async function ciphertexts(serialized, items) {
  const primitive = await binaryInsecure.deserializeKeyset(serialized).getPrimitive(aead.Aead);
  const out = [];
  for (const [plaintext, ad] of items) {
    const ct = await primitive.encrypt(enc.encode(plaintext), enc.encode(ad));
    out.push({ plaintext, ad, ciphertext_hex: hex(ct) });
  }
  return out;
}

aead.register();
const vectors = [];

const single = await generate(aead.aes256GcmKeyTemplate());
const v1 = await describe("aes256_gcm_single", single, "generateNewKeysetHandle(aes256GcmKeyTemplate())");
v1.ciphertexts = await ciphertexts(single, [["hello", "public.cards.token:1"], ["", ""]]);
vectors.push(v1);

// Two AES-256-GCM keys, the second primary, as a keyset rotated in Tink looks; Tink itself must
// accept the combined keyset and decrypt a value of each key through it.
const older = await generate(aead.aes256GcmKeyTemplate());
const newer = await generate(aead.aes256GcmKeyTemplate());
const olderCts = await ciphertexts(older, [["old value", "ad-old"]]);
const newerCts = await ciphertexts(newer, [["new value", "ad-new"]]);
const combined = keysetOf(older);
const newerKey = keysetOf(newer).getKeyList()[0];
combined.addKey(newerKey);
combined.setPrimaryKeyId(newerKey.getKeyId());
const two = combined.serializeBinary();
const check = await binaryInsecure.deserializeKeyset(two).getPrimitive(aead.Aead);
for (const c of [...olderCts, ...newerCts]) {
  const pt = await check.decrypt(Buffer.from(c.ciphertext_hex, "hex"), enc.encode(c.ad));
  if (new TextDecoder().decode(pt) !== c.plaintext) throw new Error("combined keyset does not decrypt");
}
const v2 = await describe("aes256_gcm_two_keys", two, "two generated keysets combined; the second key primary");
v2.ciphertexts = [...olderCts, ...newerCts];
vectors.push(v2);

vectors.push(await describe("aes128_gcm", await generate(aead.aes128GcmKeyTemplate()),
                            "unsupported: a 16-byte key"));
vectors.push(await describe("aes256_gcm_raw_prefix", await generate(aead.aes256GcmNoPrefixKeyTemplate()),
                            "unsupported: RAW output prefix (no key id in the ciphertext)"));
vectors.push(await describe("aes256_ctr_hmac", await generate(aead.aes256CtrHmacSha256KeyTemplate()),
                            "unsupported: another key type"));
const disabled = keysetOf(single);
disabled.getKeyList()[0].setStatus(proto.PbKeyStatusType.DISABLED);
vectors.push(await describe("aes256_gcm_disabled", disabled.serializeBinary(), "unsupported: a DISABLED key"));

// An encrypted keyset as Tink's KeysetHandle.write(writer, masterKeyAead) writes it in Java, C++,
// Go and Python (tink-crypto 0.1.1 leaves write/read unimplemented, so it is assembled here from
// Tink's own EncryptedKeyset proto and AES-GCM Aead): the serialized keyset encrypted with empty
// associated data by the master key as a raw AES-256-GCM Aead (aesGcmFromRawKey).
const master = new Uint8Array(32);
globalThis.crypto.getRandomValues(master);
const masterAead = await aeadSubtle.aesGcmFromRawKey(master);
vectors.push({ name: "encrypted_two_keys", note: "EncryptedKeyset of aes256_gcm_two_keys",
               master_key_hex: hex(master), keyset_hex: v2.keyset_hex,
               encrypted_keyset_hex: hex(await encryptedKeyset(two, masterAead)) });

const here = dirname(fileURLToPath(import.meta.url));
writeFileSync(join(here, "vectors.json"), JSON.stringify({
  generator: "tests/tink/make_vectors.mjs with tink-crypto 0.1.1",
  enums: { status: { ENABLED: 1, DISABLED: 2, DESTROYED: 3 },
           output_prefix_type: { TINK: 1, LEGACY: 2, RAW: 3, CRUNCHY: 4 } },
  vectors }, null, 2) + "\n");
