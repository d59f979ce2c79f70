// A Tink application, as tests/tink_keyset_pg_test.cpp drives it: Google's JavaScript Tink
// (tink-crypto) makes keysets, encrypts and decrypts values, and reads the keysets rekey exports.
// Nothing here knows rekey's formats: it uses Tink's own keyset serialization and Aead.
//   node tink_app.mjs keyset OUT                    two AES-256-GCM keys (TINK prefix), the second
//                                                   primary, as a rotated Tink keyset; binary
//   node tink_app.mjs encrypt KEYSET FORM [MASTER]  stdin [{plaintext, ad}] -> stdout [hex]
//   node tink_app.mjs decrypt KEYSET FORM [MASTER]  stdin [{ciphertext, ad}] -> stdout
//                                                   {primary, key_ids, plaintexts: [text|null]}
// FORM: cleartext-binary (binaryInsecure.deserializeKeyset), or encrypted-binary with MASTER, the
// hex of rekey's local master key, as an AES-256-GCM Aead (aeadSubtle.aesGcmFromRawKey) reading
// the EncryptedKeyset as Tink's KeysetHandle.read does (tink_support.mjs: readEncrypted).
import { readFileSync, writeFileSync } from "node:fs";
import { tink, keysetOf, readEncrypted } from "./tink_support.mjs";

const { aead, aeadSubtle, binaryInsecure, generateNewKeysetHandle } = tink;
aead.register();
const enc = new TextEncoder();
const dec = new TextDecoder("utf-8", { fatal: true });
const [command, keysetPath, form, masterHex] = process.argv.slice(2);

async function load() {
  const bytes = new Uint8Array(readFileSync(keysetPath));
  if (form === "cleartext-binary") return binaryInsecure.deserializeKeyset(bytes);
  if (form === "encrypted-binary") {
    const master = await aeadSubtle.aesGcmFromRawKey(new Uint8Array(Buffer.from(masterHex, "hex")));
    return readEncrypted(bytes, master);
  }
  throw new Error("unknown keyset form " + form);
}

const stdin = () => JSON.parse(readFileSync(0, "utf8"));

if (command === "keyset") {
  const older = keysetOf(binaryInsecure.serializeKeyset(await generateNewKeysetHandle(aead.aes256GcmKeyTemplate())));
  const newer = keysetOf(binaryInsecure.serializeKeyset(await generateNewKeysetHandle(aead.aes256GcmKeyTemplate())));
  const key = newer.getKeyList()[0];
  older.addKey(key);
  older.setPrimaryKeyId(key.getKeyId());
  writeFileSync(keysetPath, older.serializeBinary());
} else if (command === "encrypt") {
  const primitive = await (await load()).getPrimitive(aead.Aead);
  const out = [];
  for (const { plaintext, ad } of stdin()) {
    out.push(Buffer.from(await primitive.encrypt(enc.encode(plaintext), enc.encode(ad))).toString("hex"));
  }
  process.stdout.write(JSON.stringify(out));
} else if (command === "decrypt") {
  const handle = await load();
  const primitive = await handle.getPrimitive(aead.Aead);
  const plaintexts = [];
  for (const { ciphertext, ad } of stdin()) {
    try {
      plaintexts.push(dec.decode(await primitive.decrypt(Buffer.from(ciphertext, "hex"), enc.encode(ad))));
    } catch (e) {
      plaintexts.push(null);
    }
  }
  const keyset = handle.getKeyset();
  process.stdout.write(JSON.stringify({
    primary: keyset.getPrimaryKeyId() >>> 0,
    key_ids: keyset.getKeyList().map((k) => k.getKeyId() >>> 0),
    plaintexts,
  }));
} else {
  console.error("usage: tink_app.mjs keyset|encrypt|decrypt KEYSET [FORM [MASTER_HEX]]");
  process.exit(2);
}
