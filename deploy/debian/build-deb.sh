#!/usr/bin/env bash
# Builds target/debian/portico_<version>_<arch>.deb: the release binary, the
# man page and shell completions generated from it, the Type=notify unit,
# the socket unit and a default /etc/portico/proxy.toml
# ([package.metadata.deb] in Cargo.toml). Needs `cargo install cargo-deb`.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --locked --bin portico
bin=target/release/portico
mkdir -p target/assets
"$bin" manpage | gzip -9n > target/assets/portico.1.gz
"$bin" completions bash > target/assets/portico.bash
"$bin" completions zsh > target/assets/_portico
"$bin" completions fish > target/assets/portico.fish
cargo deb --no-build "$@"
