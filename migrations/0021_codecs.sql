-- The application codecs of issue #18 (docs/FORMAT.md): one widening of the codec list, so the
-- codecs can land independently without each replacing the constraint.
--   cloak    @47ng/cloak strings (v1.aesgcm256.<fingerprint>.<iv>.<ciphertext>); the fingerprint
--            names the key
--   lockbox  Ruby Lockbox AES-GCM values (base64 text); opened by trial decryption
--   rails    ActiveRecord::Encryption JSON messages; named by the "i" header when Rails stores
--            key references, else opened by trial decryption
--   aws-kms  AWS KMS ciphertext blobs, rotated inside KMS by ReEncrypt (rekey never holds the
--            plaintext, as with vault-transit)
ALTER TABLE rekey.targets DROP CONSTRAINT targets_codec_check;
ALTER TABLE rekey.targets ADD CONSTRAINT targets_codec_check
  CHECK (codec IN ('tink', 'raw', 'vault-transit', 'fernet', 'cloak', 'lockbox', 'rails', 'aws-kms'));
