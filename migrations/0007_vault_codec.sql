-- The vault-transit column codec (docs/kms.md, "Columns encrypted by Transit itself").
--
-- Some applications encrypt through Vault Transit themselves and store its ciphertext,
-- "vault:v<N>:<base64>", in a text column. Such a column is rotated inside Vault with rewrap:
-- rekey never sees a plaintext and holds no data key. A transit job's "keys" are versions of one
-- Transit key (jobs.transit_key_ref, "<mount>/keys/<name>"): every value whose version is below
-- jobs.transit_min_version is rewrapped to the key's latest version. There is no keyring to
-- promote (keys_promoted is true from the start) and no rollback (Transit cannot encrypt under an
-- old version). Stages, gates and sweeps work as for any job; a gate checks the sampled values'
-- versions.

ALTER TABLE rekey.targets DROP CONSTRAINT targets_codec_check;
ALTER TABLE rekey.targets ADD CONSTRAINT targets_codec_check
  CHECK (codec IN ('tink', 'raw', 'vault-transit'));

ALTER TABLE rekey.jobs
  ADD COLUMN transit_key_ref text
    CHECK (transit_key_ref ~ '^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*/keys/[A-Za-z0-9_.-]+$'),
  ADD COLUMN transit_min_version integer CHECK (transit_min_version >= 1),
  ADD CONSTRAINT jobs_transit_both_or_neither
    CHECK ((transit_key_ref IS NULL) = (transit_min_version IS NULL));

-- Vault's reason for a value it refused (e.g. "v1: cipher: message authentication failed");
-- NULL for values rekey's own codecs could not open.
ALTER TABLE rekey.row_failures ADD COLUMN detail text;
