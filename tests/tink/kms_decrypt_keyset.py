#!/usr/bin/env python3
"""Opens an encrypted Tink keyset (JSON form) that rekey wrote through a KMS, without rekey: what
Tink's KMS Aead does on KeysetHandle.read, done by a client of the KMS itself.

  kms_decrypt_keyset.py aws   KEYSET_JSON OUT KEY_ID        boto3 KMS decrypt (endpoint, region
                                                            and credentials from AWS_* variables)
  kms_decrypt_keyset.py vault KEYSET_JSON OUT MOUNT/keys/NAME   Vault's HTTP API (VAULT_ADDR,
                                                            VAULT_TOKEN)

Writes the opened serialized Keyset (Tink's binary form) to OUT. Associated data is empty for
keysets, so no EncryptionContext (AWS) and no context (Vault) is sent, as in Tink.
"""
import base64
import json
import os
import sys
import urllib.request


def aws_decrypt(blob, key_id):
    import boto3
    client = boto3.client("kms", endpoint_url=os.environ["AWS_ENDPOINT_URL_KMS"],
                          region_name=os.environ["AWS_REGION"])
    reply = client.decrypt(CiphertextBlob=blob, KeyId=key_id)
    return reply["Plaintext"]


def vault_decrypt(blob, key_ref):
    mount, name = key_ref.rsplit("/keys/", 1)
    request = urllib.request.Request(
        os.environ["VAULT_ADDR"] + "/v1/" + mount + "/decrypt/" + name,
        data=json.dumps({"ciphertext": blob.decode()}).encode(),
        headers={"X-Vault-Token": os.environ["VAULT_TOKEN"]}, method="POST")
    with urllib.request.urlopen(request, timeout=30) as reply:
        return base64.b64decode(json.load(reply)["data"]["plaintext"])


def main():
    provider, keyset_path, out_path, key = sys.argv[1:5]
    with open(keyset_path) as f:
        blob = base64.b64decode(json.load(f)["encryptedKeyset"])
    opened = aws_decrypt(blob, key) if provider == "aws" else vault_decrypt(blob, key)
    with open(out_path, "wb") as f:
        f.write(opened)


if __name__ == "__main__":
    main()
