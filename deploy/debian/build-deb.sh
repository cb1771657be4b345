#!/usr/bin/env bash
# Builds target/debian/portico_<version>_<arch>.deb: the PGO release binary
# (scripts/build-pgo.sh, target/dist/portico), the man page and shell
# completions generated from it, the Type=notify unit, the socket unit and a
# default /etc/portico/proxy.toml ([package.metadata.deb] in Cargo.toml).
# Needs `cargo install cargo-deb`, and what build-pgo.sh needs.
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/build-pgo.sh
bin=target/dist/portico
mkdir -p target/assets
"$bin" manpage | gzip -9n > target/assets/portico.1.gz
"$bin" completions bash > target/assets/portico.bash
"$bin" completions zsh > target/assets/_portico
"$bin" completions fish > target/assets/portico.fish
# --profile dist: cargo-deb reads the binary asset (target/release/portico
# in Cargo.toml) from target/dist/ and strips it as a cargo-built binary.
cargo deb --no-build --profile dist "$@"
