#!/usr/bin/env bash
# Build the packages: target/debian/dirbridge_*.deb (cargo-deb) and, when cargo-generate-rpm is
# installed, target/generate-rpm/dirbridge-*.rpm. The service is not enabled or started on install.
#
#   bash packaging/build.sh            # installs cargo-deb if missing (about 2 minutes, once)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-deb >/dev/null || cargo install --locked cargo-deb
cargo build --release --locked --bin dirbridge
mkdir -p target/pkg/man target/pkg/completions
for page in dirbridge.8 dirbridge.toml.5; do
    python3 scripts/man.py "docs/$page.md" | gzip -9n > "target/pkg/man/$page.gz"
done
target/release/dirbridge completions bash > target/pkg/completions/dirbridge.bash
target/release/dirbridge completions zsh > target/pkg/completions/_dirbridge
target/release/dirbridge completions fish > target/pkg/completions/dirbridge.fish
cargo deb --no-build
if command -v cargo-generate-rpm >/dev/null; then
    cargo generate-rpm
else
    echo "cargo-generate-rpm is not installed: no .rpm (cargo install --locked cargo-generate-rpm)"
fi
ls -l target/debian/*.deb target/generate-rpm/*.rpm 2>/dev/null || true
