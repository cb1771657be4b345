#!/usr/bin/env bash
# Prints a compact ES256 JWT: CLAIMS (a JSON object) signed with KEY (a
# P-256 private key in PEM), for the load scripts that send a token.
#
#   scripts/es256-jwt.sh KEY CLAIMS
#
# Needs openssl and python3. openssl signs ES256 as DER; a JWT carries
# r||s, 32 bytes each.
set -euo pipefail
[[ $# -eq 2 ]] || {
    echo "usage: $0 KEY CLAIMS" >&2
    exit 2
}
b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
header=$(printf '{"alg":"ES256","typ":"JWT"}' | b64url)
claims=$(printf '%s' "$2" | b64url)
sig=$(printf '%s.%s' "$header" "$claims" | openssl dgst -sha256 -sign "$1" |
    python3 -c 'import sys,base64
d=sys.stdin.buffer.read(); i=2+(d[1]==0x81)
def rd(i):
    n=d[i+1]; v=d[i+2:i+2+n]; return v.lstrip(b"\0").rjust(32,b"\0"), i+2+n
r,i=rd(i); s,_=rd(i)
print(base64.urlsafe_b64encode(r+s).decode().rstrip("="))')
printf '%s.%s.%s\n' "$header" "$claims" "$sig"
