#!/usr/bin/python3
"""The application side of tests/aws_kms_codec_kms_test.cpp: boto3 (Debian's python3-boto3, not
rekey's client) calls AWS KMS as an application that encrypts each small secret does.

  kms_app.py encrypt KEY CONTEXT   stdin {"<id>": "<plaintext>"}
                                   -> stdout {"key_arn": ARN, "blobs": {"<id>": "<base64 blob>"}}
  kms_app.py decrypt CONTEXT       stdin {"<id>": "<base64 blob>"}
                                   -> stdout {"<id>": {"plaintext": P, "key_arn": ARN}}
                                      or {"<id>": {"error": "<exception>"}}

CONTEXT is the encryption context as JSON ({} for none). The endpoint, region and credentials are
the environment's (AWS_ENDPOINT_URL_KMS, AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY).
"""

import base64
import json
import os
import sys

import boto3
from botocore.exceptions import ClientError


def client():
    return boto3.client("kms", endpoint_url=os.environ["AWS_ENDPOINT_URL_KMS"],
                        region_name=os.environ["AWS_REGION"],
                        aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"])


def main():
    kms = client()
    request = json.load(sys.stdin)
    if sys.argv[1] == "encrypt":
        key, context = sys.argv[2], json.loads(sys.argv[3])
        out = {"blobs": {}}
        for ident, plaintext in request.items():
            reply = kms.encrypt(KeyId=key, Plaintext=plaintext.encode(), EncryptionContext=context)
            out["blobs"][ident] = base64.b64encode(reply["CiphertextBlob"]).decode()
            out["key_arn"] = reply["KeyId"]
    elif sys.argv[1] == "decrypt":
        context = json.loads(sys.argv[2])
        out = {}
        for ident, blob in request.items():
            try:
                reply = kms.decrypt(CiphertextBlob=base64.b64decode(blob),
                                    EncryptionContext=context)
                out[ident] = {"plaintext": reply["Plaintext"].decode(), "key_arn": reply["KeyId"]}
            except ClientError as e:
                out[ident] = {"error": e.response["Error"]["Code"]}
    else:
        sys.exit("usage: kms_app.py encrypt KEY CONTEXT | decrypt CONTEXT")
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
