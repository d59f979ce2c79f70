#include "crypto/codec_rewriters.h"

#include "crypto/cloak_rewriter.h"
#include "crypto/fernet_rewriter.h"
#include "crypto/lockbox_rewriter.h"
#include "crypto/rails_rewriter.h"

#include "common/error.h"

namespace rekey::crypto {

OpeningKeys::OpeningKeys(std::function<Secret(uint32_t)> source) : source_(std::move(source)) {
  keys_.aead = [this](uint32_t id) { return Made(&aead_, id); };
  keys_.fernet = [this](uint32_t id) -> const FernetKey* { return Made(&fernet_, id); };
  keys_.rails = [this](uint32_t id) { return Made(&rails_, id); };
  keys_.material = source_;
}

template <typename Key>
Key* OpeningKeys::Made(std::unordered_map<uint32_t, std::unique_ptr<Key>>* made, uint32_t id) {
  auto it = made->find(id);
  if (it == made->end()) {
    std::unique_ptr<Key> key;
    try {
      key = std::make_unique<Key>(source_(id));
    } catch (const NoSuchKeyError&) {
      key = nullptr;
    }
    it = made->emplace(id, std::move(key)).first;
  }
  return it->second.get();
}

std::unique_ptr<ValueRewriter> MakeLocalRewriter(
    CodecKind codec, const std::map<uint32_t, uint32_t>* moves, const TableBinding& table,
    const std::map<std::string, LockboxKeyNames>& lockbox_names, const CodecKeys& keys) {
  switch (codec) {
    case CodecKind::kTink:
    case CodecKind::kRaw:
      return std::make_unique<AeadRewriter>(codec, table, KeyMoves{moves, keys.aead});
    case CodecKind::kFernet:
      return std::make_unique<FernetRewriter>(moves, keys.fernet);
    case CodecKind::kRails:
      return std::make_unique<RailsRewriter>(moves, keys.rails);
    case CodecKind::kLockbox:
      return std::make_unique<LockboxRewriter>(moves, lockbox_names, keys.material);
    case CodecKind::kCloak:
      return std::make_unique<CloakRewriter>(moves, keys.material);
    case CodecKind::kVaultTransit:
    case CodecKind::kAwsKms:
      return nullptr;
  }
  return nullptr;
}

}  // namespace rekey::crypto
