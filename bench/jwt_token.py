"""An HS256 token for the benchmarks' jwt-auth consumer, valid for a day.

    python3 bench/jwt_token.py SECRET [KEY]     (KEY: the consumer's jwt-auth key, bench-key)
"""
import base64
import hashlib
import hmac
import json
import sys
import time

b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=")
head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
key = sys.argv[2] if len(sys.argv) > 2 else "bench-key"
body = b64(json.dumps({"key": key, "exp": int(time.time()) + 86400}).encode())
sig = b64(hmac.new(sys.argv[1].encode(), head + b"." + body, hashlib.sha256).digest())
print((head + b"." + body + b"." + sig).decode())
