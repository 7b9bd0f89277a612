"""An HS256 token for the benchmarks' jwt-auth consumer (key `bench-key`), valid for a day.

    python3 bench/jwt_token.py SECRET
"""
import base64
import hashlib
import hmac
import json
import sys
import time

b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=")
head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
body = b64(json.dumps({"key": "bench-key", "exp": int(time.time()) + 86400}).encode())
sig = b64(hmac.new(sys.argv[1].encode(), head + b"." + body, hashlib.sha256).digest())
print((head + b"." + body + b"." + sig).decode())
