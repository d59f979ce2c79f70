-- The aws-kms column codec (docs/kms.md, "Columns of AWS KMS ciphertext blobs").
--
-- Some applications call AWS KMS Encrypt on each small secret and store the CiphertextBlob, in a
-- bytea column or as base64 text. Such a column is rotated inside KMS with ReEncrypt: rekey never
-- sees a plaintext and holds no data key. An aws-kms job names two KMS keys by their key ARNs
-- (DescribeKey's, resolved when the job is created): the source key the values are under and the
-- destination key they move to; a rollback moves them back. In the value audit and a batch's
-- audit row, key 1 is the source key and key 2 the destination key. aws_kms_context is the
-- constant encryption context the application bound to every value (NULL for none); there is no
-- keyring key to promote (keys_promoted is true from the start).
ALTER TABLE rekey.jobs
  ADD COLUMN aws_kms_source_key_arn text
    CHECK (aws_kms_source_key_arn ~ '^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/[A-Za-z0-9-]+$'),
  ADD COLUMN aws_kms_key_arn text
    CHECK (aws_kms_key_arn ~ '^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/[A-Za-z0-9-]+$'),
  ADD COLUMN aws_kms_context jsonb CHECK (jsonb_typeof(aws_kms_context) = 'object'),
  ADD CONSTRAINT jobs_aws_kms_both_or_neither
    CHECK ((aws_kms_source_key_arn IS NULL) = (aws_kms_key_arn IS NULL)),
  ADD CONSTRAINT jobs_aws_kms_keys_differ CHECK (aws_kms_source_key_arn <> aws_kms_key_arn),
  ADD CONSTRAINT jobs_aws_kms_context_needs_keys
    CHECK (aws_kms_context IS NULL OR aws_kms_key_arn IS NOT NULL),
  ADD CONSTRAINT jobs_aws_kms_not_transit CHECK (aws_kms_key_arn IS NULL OR transit_key_ref IS NULL);
