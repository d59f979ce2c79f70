// The "aws-kms" KMS provider: data keys are generated and wrapped by AWS KMS (JSON 1.1 protocol,
// SigV4-signed POSTs through an HttpTransport).
//
// Configuration (AwsKmsConfigFromEnv):
//   REKEY_AWS_KMS_KEY_ID     the KMS key new data keys are wrapped under: key id, key ARN,
//                            alias name ("alias/rekey") or alias ARN (required)
//   AWS_REGION | AWS_DEFAULT_REGION   (required)
//   AWS_ENDPOINT_URL_KMS     endpoint override (VPC endpoints, test servers); default
//                            https://kms.<region>.amazonaws.com
//   AWS_CA_BUNDLE            PEM bundle of trusted CAs (optional)
//   credentials: see aws_credentials.h
//
// Wrapping: rekey.keys.wrapped_key holds the KMS CiphertextBlob as returned; kms_key_ref holds
// the ARN of the KMS key KMS reports (so an alias later repointed does not matter). Every call
// carries EncryptionContext {"rekey_key_id": "<decimal key id>"}, so a wrapped key moved to
// another row does not decrypt, and IAM policies can condition on it. Decrypt pins KeyId to
// kms_key_ref.
//
// Each method makes exactly one HTTP call (two if credentials must be refreshed first); retries,
// rate limiting and circuit breaking belong to ResilientKms (resilient_kms.h). Errors are mapped
// by ThrowAwsError (aws_errors.h), except ExpiredTokenException: with refreshable (web identity)
// credentials they are invalidated and the error is transient; with fixed ones (environment) it is
// a ConfigError, since a retry would send the same expired token. A response that cannot be
// parsed (malformed JSON, bad base64, wrong plaintext length) is a PermanentError, never a crash.
//
// Thread-safety: all methods are thread-safe if the transport and credentials provider are.
#pragma once

#include <memory>
#include <string>

#include "kms/aws_credentials.h"
#include "kms/http_transport.h"
#include "kms/kms_client.h"

namespace rekey::kms {

constexpr char kAwsKmsProvider[] = "aws-kms";
constexpr char kAwsKmsKeyIdEnv[] = "REKEY_AWS_KMS_KEY_ID";
constexpr char kRekeyKeyIdContext[] = "rekey_key_id";
// The EncryptionContext key of Tink's AwsKmsAead for its associated data.
constexpr char kTinkAssociatedDataContext[] = "associatedData";

struct AwsKmsConfig {
  std::string region;
  std::string endpoint;  // scheme://host[:port], no trailing slash
  std::string key_id;    // default KMS key (id, ARN or alias)
  std::string ca_bundle;
  std::chrono::milliseconds timeout{10000};
};

// Throws ConfigError naming the missing variable.
AwsKmsConfig AwsKmsConfigFromEnv(const GetenvFn& getenv);

// The result of ReEncrypt: the same data key wrapped under another KMS key.
struct ReWrappedKey {
  Bytes wrapped;
  std::string kms_key_ref;
};

// The result of ReEncrypt on an application's ciphertext blob (the aws-kms column codec,
// rotation/aws_kms_rewriter.h): either the blob under the destination key with the ARNs of both
// keys as KMS reports them, or KMS's refusal of this blob alone.
struct ReEncryptedBlob {
  Bytes blob;                  // CiphertextBlob under key_arn; empty iff refused
  std::string source_key_arn;  // SourceKeyId: the key the blob was under
  std::string key_arn;         // KeyId: the destination key
  // Non-empty iff KMS refused this blob (kBlobRefusals): "<exception>: <KMS's message>".
  std::string refusal;
};

// The KMS exceptions that concern one ciphertext blob and not the key, the credentials or the
// service: the blob is corrupt, forged, bound to another encryption context, or not under the
// key the request pins. ReEncryptBlob returns them instead of throwing.
constexpr const char* kBlobRefusals[] = {"InvalidCiphertextException", "IncorrectKeyException"};

class AwsKmsClient : public KmsClient {
 public:
  AwsKmsClient(AwsKmsConfig config, std::shared_ptr<HttpTransport> transport,
               std::shared_ptr<AwsCredentialsProvider> credentials);

  std::string provider() const override { return kAwsKmsProvider; }
  std::string default_key_ref() const override { return config_.key_id; }
  GeneratedDataKey GenerateDataKey(uint32_t key_id) override;
  GeneratedDataKey WrapDataKey(uint32_t key_id, const Secret& plaintext) override;
  Secret UnwrapDataKey(uint32_t key_id, const std::string& kms_key_ref,
                       const Bytes& wrapped) override;
  // DescribeKey on the default key: "aws-kms (key <arn>, <region>, Enabled, credentials from
  // ...)". Throws KeyError naming the key iff its KeyState is not Enabled.
  std::string Describe() override;
  // ReEncrypt: any destination key the caller may use, the plaintext never leaves KMS.
  GeneratedDataKey RewrapDataKey(uint32_t key_id, const std::string& source_key_ref,
                                 const Bytes& wrapped,
                                 const std::string& destination_key_ref) override;

  // Tink's AwsKmsAead (see KmsClient::EncryptBlob): Encrypt and Decrypt with KeyId `key_ref` and
  // EncryptionContext {"associatedData": lowercase hex(ad)} iff ad is non-empty. DecryptBlob
  // refuses (KeyError) a reply naming another key than `key_ref` when that is a key ARN, as Tink
  // does; for an alias or key id, the KeyId pinned in the request is what KMS enforces.
  Bytes EncryptBlob(const std::string& key_ref, const Secret& plaintext,
                    const Bytes& associated_data) override;
  Secret DecryptBlob(const std::string& key_ref, const Bytes& ciphertext,
                     const Bytes& associated_data) override;

  // DescribeKey on `key_ref`: its key ARN. Throws KeyError naming the key iff it is not Enabled.
  std::string CanonicalKeyRef(const std::string& key_ref) override;

  // Re-wraps data key `key_id` from `source_key_ref` to `destination_key_ref` inside KMS (the
  // plaintext never leaves it): for master-key rotation.
  ReWrappedKey ReEncrypt(uint32_t key_id, const std::string& source_key_ref, const Bytes& wrapped,
                         const std::string& destination_key_ref);

  // ReEncrypt of an application's ciphertext blob (KMS Encrypt's CiphertextBlob) to
  // `destination_key_ref`, the plaintext never leaving KMS. `context` is the encryption context
  // the application bound (a JSON object of strings; empty or {} for none), sent as both
  // SourceEncryptionContext and DestinationEncryptionContext, so the new blob decrypts with the
  // same context. `source_key_ref` ("" for none) pins the key the blob must be under (KMS answers
  // IncorrectKeyException otherwise). A refusal in kBlobRefusals is returned in `refusal`; any
  // other failure throws as every call does (a throttled KMS a TransientError for ResilientKms
  // to retry, a disabled key a KeyError).
  ReEncryptedBlob ReEncryptBlob(const Bytes& blob, const std::string& source_key_ref,
                                const std::string& destination_key_ref, const std::string& context);

 private:
  // POSTs `body` as TrentService.<operation>; returns the parsed 200 response or throws. With
  // `refusal` set, an error in kBlobRefusals is stored there ("<exception>: <message>") and ""
  // returned instead.
  std::string Call(const std::string& operation, const std::string& body,
                   const std::string& kms_key, const std::string& data_key_id,
                   std::string* refusal = nullptr);

  AwsKmsConfig config_;
  std::shared_ptr<HttpTransport> transport_;
  std::shared_ptr<AwsCredentialsProvider> credentials_;
};

}  // namespace rekey::kms
