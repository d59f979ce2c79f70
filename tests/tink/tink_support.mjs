// What the Tink scripts share: tink-crypto loaded under Node, Tink's own protobuf classes (its
// esm2015 build; tink-crypto does not export them), and the encrypted-keyset form.
globalThis.self = globalThis; // tink-crypto expects a browser's `self`
export const tink = await import("tink-crypto");
export const proto = await import("tink-crypto/esm2015/internal/proto.js");

export const hex = (u8) => Buffer.from(u8).toString("hex");

export function keysetOf(serialized) {
  return proto.PbKeyset.deserializeBinary(serialized);
}

export function aesGcmKeyOf(keyData) {
  return proto.PbAesGcmKey.deserializeBinary(keyData.getValue_asU8());
}

// EncryptedKeyset{encrypted_keyset = masterAead.encrypt(keyset, ""), keyset_info}, as Tink's
// KeysetHandle.write does in Java, C++, Go and Python.
export async function encryptedKeyset(serialized, masterAead) {
  const keyset = keysetOf(serialized);
  const info = new proto.PbKeysetInfo().setPrimaryKeyId(keyset.getPrimaryKeyId());
  for (const key of keyset.getKeyList()) {
    info.addKeyInfo(new proto.PbKeysetInfo.KeyInfo().setTypeUrl(key.getKeyData().getTypeUrl())
      .setStatus(key.getStatus()).setKeyId(key.getKeyId())
      .setOutputPrefixType(key.getOutputPrefixType()));
  }
  const encrypted = await masterAead.encrypt(serialized, new Uint8Array(0));
  return new proto.PbEncryptedKeyset().setEncryptedKeyset(encrypted).setKeysetInfo(info)
    .serializeBinary();
}

// KeysetHandle.read(reader, masterKeyAead) of Java, C++, Go and Python: the EncryptedKeyset
// parsed, its keyset decrypted with empty associated data, then read as a cleartext keyset.
export async function readEncrypted(serialized, masterAead) {
  const encrypted = proto.PbEncryptedKeyset.deserializeBinary(serialized);
  const keyset = await masterAead.decrypt(encrypted.getEncryptedKeyset_asU8(), new Uint8Array(0));
  return tink.binaryInsecure.deserializeKeyset(keyset);
}
