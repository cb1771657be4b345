#!/usr/bin/env python3
"""Writes the seed corpus of every fuzz target into fuzz/corpus/NAME/.

Run from anywhere: `python3 fuzz/seeds.py` (needs the `cryptography`
package for the keys and signed tokens). The output is committed; rerun
only to change the seeds (keys are fresh each run, so files change).
"""
import base64, json, os, pathlib, re, hashlib, hmac

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, utils

FUZZ = pathlib.Path(__file__).resolve().parent
ROOT = FUZZ.parent
CORPUS = FUZZ / "corpus"


def put(target, name, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    (d / name).write_bytes(data)


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def int_bytes(n, size=None):
    size = size or (n.bit_length() + 7) // 8
    return n.to_bytes(size, "big")


# ---- config: the shipped configs, the README's examples, and small ones.
put("config", "proxy.toml", (ROOT / "proxy.toml").read_bytes())
for p in sorted((ROOT / "examples").glob("*.toml")):
    put("config", p.name, p.read_bytes())
md = (ROOT / "examples" / "nginx-migration.md").read_text()
for i, block in enumerate(re.findall(r"```toml\n(.*?)```", md, re.S)):
    put("config", f"nginx-migration-{i}.toml", block)
readme = (ROOT / "README.md").read_text()
for i, block in enumerate(re.findall(r"```toml\n(.*?)```", readme, re.S)):
    put("config", f"readme-{i}.toml", block)
MIN = '[[listener]]\nname = "http"\nbind = "127.0.0.1:8080"\n'
put("config", "minimal.toml", MIN)
put("config", "cors.toml", MIN + '''
[cors.web]
allow_origins = ["https://app.example.com", "http://localhost:3000"]
allow_methods = ["GET", "PUT"]
allow_headers = ["authorization"]
expose_headers = ["x-request-id"]
allow_credentials = true
max_age = "1h 30m"

[[route]]
name = "api"
match = { host = "api.example.com", path_prefix = "/v1/", methods = ["GET", "PUT"] }
strip_prefix = true
upstream = "api"
cors = "web"
timeout = "250ms"
retries = 0

[upstream.api]
servers = ["127.0.0.1:9001", { addr = "[::1]:9002", weight = 3 }]
protocol = "http2"
passive_eject = "10s"
health = { path = "/healthz", interval = "2s", timeout = "1s", healthy_threshold = 2, unhealthy_threshold = 3 }
tls = { ca = "ca.pem", server_name = "api.internal", client_cert = "c.pem", client_key = "k.pem" }
''')
put("config", "hmac.toml", '''[server]
request_id_header = "x-trace"
trust_request_id = false
access_log = "/var/log/portico.log"
access_log_format = "text"
shutdown_timeout = "5s"

[[listener]]
name = "tls"
bind = "[::]:8443"
protocols = ["http1", "http2", "http3"]
alt_svc_port = 443
tls = { cert = "s.crt", key = "s.key", client_ca = "ca.crt", min_version = "1.2", early_data = true }

[auth.internal]
type = "jwt"
algorithms = ["HS256", "HS512"]
secret_file = "secret.bin"
required_claims = []
forward_claims = { sub = "x-user" }

[auth.partners]
type = "jwt"
algorithms = ["RS256", "PS256", "ES384"]
keys = ["a.pem", "b.pem"]
jwks_file = "jwks.json"

[revocation]
store = "memory"
on_store_error = "allow"

[[route]]
name = "r"
listeners = ["tls"]
match.path_prefix = "/"
auth = "internal"
respond = { status = 204 }
''')
put("config", "bad-duration.toml", MIN + '[server]\nshutdown_timeout = "10 parsecs"\n')
put("config", "bad-ref.toml", MIN + '[[route]]\nname = "x"\nupstream = "nope"\n')

# ---- keys: PEM (jwt, pem targets) and JWKS.
rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
p256 = ec.generate_private_key(ec.SECP256R1())
p384 = ec.generate_private_key(ec.SECP384R1())
ed = ed25519.Ed25519PrivateKey.generate()
spki = serialization.PublicFormat.SubjectPublicKeyInfo
PEM = serialization.Encoding.PEM
pems = {
    "rsa": rsa_key.public_key().public_bytes(PEM, spki),
    "rsa-pkcs1": rsa_key.public_key().public_bytes(PEM, serialization.PublicFormat.PKCS1),
    "p256": p256.public_key().public_bytes(PEM, spki),
    "p384": p384.public_key().public_bytes(PEM, spki),
    "ed25519": ed.public_key().public_bytes(PEM, spki),
}
for name, pem in pems.items():
    put("pem", name + ".pem", pem)
put("pem", "two-keys.pem", pems["p256"] + pems["rsa-pkcs1"])
put("pem", "private.pem", p256.private_bytes(PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()))
put("pem", "garbage.pem", "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")

rn = rsa_key.public_key().public_numbers()
jwk_rsa = {"kty": "RSA", "n": b64(int_bytes(rn.n)), "e": b64(int_bytes(rn.e)), "kid": "rsa1"}


def ec_jwk(k, crv, size, kid):
    n = k.public_key().public_numbers()
    return {"kty": "EC", "crv": crv, "x": b64(int_bytes(n.x, size)),
            "y": b64(int_bytes(n.y, size)), "kid": kid}


jwk_p256 = ec_jwk(p256, "P-256", 32, "ec1")
jwk_p384 = ec_jwk(p384, "P-384", 48, "ec2")
raw_ed = ed.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
jwk_ed = {"kty": "OKP", "crv": "Ed25519", "x": b64(raw_ed), "kid": "ed1"}
put("jwks", "all.json", json.dumps({"keys": [jwk_rsa, jwk_p256, jwk_p384, jwk_ed]}))
put("jwks", "alg-use.json", json.dumps({"keys": [
    dict(jwk_rsa, alg="PS384", use="sig", key_ops=["verify"]),
    dict(jwk_p256, alg="ES256"),
    dict(jwk_rsa, use="enc"),
    {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
    {"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA"},
]}, indent=1))
put("jwks", "malformed.json", '{"keys": [{"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}]}')
put("jwks", "small-rsa.json", json.dumps({"keys": [{"kty": "RSA", "n": b64(b"\xc1" * 64), "e": "AQAB"}]}))
put("jwks", "empty.json", '{"keys": []}')
put("jwks", "not-jwks.json", '[{"kty": "RSA"}]')

# ---- jwt: real tokens of every family, and the classic forgeries.
now = 1_764_000_000
claims = {"sub": "alice", "iat": now, "exp": now + 3600, "nbf": now - 10, "jti": "a-1",
          "iss": "https://issuer.example", "aud": ["api", "web"], "scope": "read write"}


def token(header, payload, sign):
    si = b64(json.dumps(header, separators=(",", ":")).encode()) + "." + \
        b64(json.dumps(payload, separators=(",", ":")).encode())
    return si + "." + b64(sign(si.encode()))


def ecdsa(key, h, size):
    def sign(m):
        r, s = utils.decode_dss_signature(key.sign(m, ec.ECDSA(h)))
        return int_bytes(r, size) + int_bytes(s, size)
    return sign


secret = b"a-secret-of-at-least-32-bytes-long!!"
put("jwt", "hs256", token({"alg": "HS256", "typ": "JWT"}, claims,
                          lambda m: hmac.new(secret, m, hashlib.sha256).digest()))
put("jwt", "rs256", token({"alg": "RS256", "kid": "rsa1"}, claims,
                          lambda m: rsa_key.sign(m, padding.PKCS1v15(), hashes.SHA256())))
put("jwt", "ps512", token({"alg": "PS512", "kid": "rsa1"}, dict(claims, scp=["read"]),
                          lambda m: rsa_key.sign(m, padding.PSS(padding.MGF1(hashes.SHA512()),
                                                                hashes.SHA512().digest_size),
                                                 hashes.SHA512())))
put("jwt", "es256", token({"alg": "ES256", "kid": "ec1"}, claims, ecdsa(p256, hashes.SHA256(), 32)))
put("jwt", "es384", token({"alg": "ES384", "kid": "ec2"}, {"sub": "b", "exp": 1.5e9},
                          ecdsa(p384, hashes.SHA384(), 48)))
put("jwt", "eddsa", token({"alg": "EdDSA", "kid": "ed1"}, claims, ed.sign))
put("jwt", "none", b64(b'{"alg":"none"}') + "." + b64(json.dumps(claims).encode()) + ".")
put("jwt", "crit", token({"alg": "HS256", "crit": ["exp"]}, claims, lambda m: b"x"))
put("jwt", "dup-alg", b64(b'{"alg":"HS256","alg":"none"}') + ".e30.AAAA")
put("jwt", "claims-only", b64(json.dumps(claims).encode()))

# ---- h1_head: a client's whole side of one connection.
heads = {
    "get": b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    "pipelined": b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nHEAD /b HTTP/1.1\r\nHost: a\r\n\r\n"
                 b"POST /c HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET /d HTTP/1.1\r\nHost: a\r\n\r\n",
    "chunked": b"POST /u HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5;ext=1\r\nhello\r\n0\r\nTrailer: x\r\n\r\n",
    "cl-te": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nX",
    "te-cl-pipelined": b"GET / HTTP/1.1\r\nHost: a\r\n\r\nPOST / HTTP/1.1\r\nHost: a\r\n"
                       b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
    "obs-fold": b"GET / HTTP/1.1\r\nHost: a\r\nX-Long: one\r\n two\r\n\r\n",
    "http10": b"GET / HTTP/1.0\r\n\r\n",
    "expect": b"PUT /x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok",
    "bad-version": b"GET / HTTP/9.9\r\nHost: a\r\n\r\n",
    "garbage-after": b"GET / HTTP/1.1\r\nHost: a\r\n\r\n\x00\x01junk\r\n\r\n",
    "bare-lf": b"GET / HTTP/1.1\nHost: a\n\n",
    "partial": b"GET /slow HTTP/1.1\r\nHost: a\r\nX-A: b",
    "absolute-form": b"GET http://a.example:8080/p?q HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n",
    "h2-preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
}
for name, data in heads.items():
    put("h1_head", name, data)

# ---- h1_response: a server's side of one upstream connection.
answers = {
    "length": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello",
    "chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5;ext=1\r\nhello\r\n3\r\nabc\r\n0\r\nX-Trailer: t\r\n\r\n",
    "cl-te": b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nSMUGGLED",
    "te-gzip": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    "two-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    "length-list": b"HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\nabc",
    "eof-body": b"HTTP/1.0 200 OK\r\n\r\nuntil the close",
    "close": b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
    "interim": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
               b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    "no-content": b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello",
    "not-modified": b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
    "switching": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
    "extra-after": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    "short": b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this",
    "bare-lf": b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
    "bad-chunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\nx\r\n",
    "huge-length": b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
}
for name, data in answers.items():
    put("h1_response", name, data)

# ---- path: request targets a normaliser meets.
for i, p in enumerate(["/", "/a/b/../c", "/./a//b/", "//evil.example/x", "/a/%2e%2e/b",
                       "/a/%2F/b", "/a/..", "/../../etc/passwd", "/a/b/./", "/a?x=/../",
                       "/%2e/%2E%2e/", "/a\\..\\b", "/caf%C3%A9"]):
    put("path", f"p{i:02}", p)
# The attack paths of tests/edge_requests.rs, and the spellings normalize
# refuses outright.
for i, p in enumerate(["/%61dmin/x", "//admin/x", "/./admin/x", "/static/../admin/x",
                       "/static/..//%61dmin/./x/", "/open/caf%c3%a9%20x", "/open/a.b/%7Bc%7D",
                       "/%2e%2e/x", "/%2E%2E/admin/x", "/a/%2F/b", "/admin%2fx", "/a%5cb",
                       "/a%5Cb", "/a%00b", "/../x", "/open/../../x", "/a\\b", "/open/%zz",
                       "/x/../v1//%61b/./c", "/%76%32/a/../%62", "/static/../%61dmin//x", "*",
                       "", "/a/b/.%2e/", "/%2e/", "/a/..%2F"]):
    put("path", f"edge-{i:02}", p)
