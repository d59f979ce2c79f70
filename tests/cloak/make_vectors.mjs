// Prints vectors for src/crypto/cloak_test.cpp from the real @47ng/cloak (package-lock.json pins
// it): keys with their fingerprints, and strings it encrypted. Run: ./run.sh make_vectors.mjs
import { createRequire } from 'node:module';
const require = createRequire(import.meta.url);
const cloak = require('@47ng/cloak');
const keyA = 'k1.aesgcm256.DL2G9PQeZ9r65J59pph6dy9Sk4fBLEZ3CTQZsandgYE='; // the library's README
const keyB = 'k1.aesgcm256.' + Buffer.from(new Uint8Array(32).map((_, i) => i)).toString('base64url') + '=';
const out = { library: '@47ng/cloak ' + require('@47ng/cloak/package.json').version, keys: [], values: [] };
for (const k of [keyA, keyB]) out.keys.push({ key: k, fingerprint: cloak.parseKeySync(k).fingerprint });
for (const [k, text] of [[keyA, 'hello, world'], [keyB, ''], [keyB, 'unicode: é 🔑']]) {
  const v = cloak.encryptStringSync(text, k);
  if (cloak.decryptStringSync(v, k) !== text) throw new Error('round trip');
  out.values.push({ key: k, plaintext: text, value: v });
}
console.log(JSON.stringify(out, null, 1));
