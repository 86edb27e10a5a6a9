"""The bare boto3 uploader the S3 bench compares against: read each file, put_object it, nothing else.

    bare_upload.py TREE ENDPOINT BUCKET PREFIX THREADS

Same keys as kmrl-sync would use (`<prefix>/sha256/ab/<digest>`, so it hashes each file too), the
same number of uploads in flight as the content store (THREADS), one PUT per object, no HEAD, no
Redis: what any uploader has to pay at least.
"""

from __future__ import annotations

import hashlib
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import boto3
import botocore.config


def main() -> None:
    tree, endpoint, bucket, prefix, threads = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="bench",
                          aws_secret_access_key="bench-secret",
                          config=botocore.config.Config(max_pool_connections=threads + 2,
                                                        s3={"addressing_style": "path"}))

    def put(path: str) -> None:
        with open(path, "rb") as f:
            data = f.read()
        digest = hashlib.sha256(data).hexdigest()
        client.put_object(Bucket=bucket, Key=f"{prefix}/sha256/{digest[:2]}/{digest}", Body=data)

    paths = [os.path.join(folder, name) for folder, _dirs, files in os.walk(tree) for name in files]
    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(put, paths):
            pass
    print(f"uploaded {len(paths)}")


if __name__ == "__main__":
    main()
