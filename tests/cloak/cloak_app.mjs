// The application's side of tests/cloak_pg_test.cpp, with the real @47ng/cloak (pinned in
// package-lock.json; what prisma-field-encryption encrypts fields with). JSON on stdin and stdout:
//   generate                                   -> "k1.aesgcm256...." (the library's generateKey)
//   fingerprint {"key"}                        -> "6f28c026"
//   encrypt {"key", "items": {id: plaintext}}  -> {id: cloak string}
//   read {"keys": [...], "values": {id: s}}    -> {id: {"plaintext", "fingerprint"} or {"error"}}
// `read` opens each string as prisma-field-encryption does: a keychain of the configured keys
// (makeKeychainSync), the key found by the string's fingerprint (findKeyForMessage), then
// decryptStringSync; a string it cannot open is reported with the library's own message.
import { createRequire } from 'node:module';
const require = createRequire(import.meta.url);
const cloak = require('@47ng/cloak');

const input = async () => {
  let text = '';
  for await (const chunk of process.stdin) text += chunk;
  return text ? JSON.parse(text) : {};
};

const command = process.argv[2];
const request = command === 'generate' ? {} : await input();
let out;
if (command === 'generate') {
  out = cloak.generateKey();
} else if (command === 'fingerprint') {
  out = cloak.parseKeySync(request.key).fingerprint;
} else if (command === 'encrypt') {
  const key = cloak.parseKeySync(request.key);
  out = {};
  for (const [id, plaintext] of Object.entries(request.items)) {
    out[id] = cloak.encryptStringSync(plaintext, key);
  }
} else if (command === 'read') {
  const keychain = cloak.makeKeychainSync(request.keys);
  out = {};
  for (const [id, value] of Object.entries(request.values)) {
    try {
      const key = cloak.findKeyForMessage(value, keychain);
      out[id] = {
        plaintext: cloak.decryptStringSync(value, key),
        fingerprint: cloak.getMessageKeyFingerprint(value),
      };
    } catch (e) {
      out[id] = { error: String(e.message).slice(0, 40) };
    }
  }
} else {
  console.error('usage: cloak_app.mjs generate|fingerprint|encrypt|read');
  process.exit(2);
}
process.stdout.write(JSON.stringify(out));
