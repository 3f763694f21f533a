#!/usr/bin/env bash
# The whole test suite: unit, golden and integration tests (against a real slapd the harness starts
# on 127.0.0.1), the demo as a smoke test of the shipped example, and format/lint checks.
#
#   bash scripts/test.sh
#
# Installs what the tests need when it is missing: Debian's slapd, ldap-utils, openssl, util-linux,
# curl, python3 with venv, Samba's AD DC packages (needs root or sudo), and the pinned SCIM 2.0
# test server from PyPI (scim2-server, into ~/.cache/dirbridge/scim-venv). The Active Directory
# tests start a Samba DC in a network namespace and must run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/need-packages.sh /usr/sbin/slapd=slapd ldapsearch=ldap-utils openssl=openssl flock=util-linux \
    curl=curl python3=python3
if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
fi
# Samba's AD DC for the Active Directory tests (run in a network namespace; needs root, as CI has).
ad_missing=""
for p in samba samba-dsdb-modules samba-vfs-modules samba-ad-provision iproute2; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || ad_missing="$ad_missing $p"
done
if [ -n "$ad_missing" ]; then
    echo "==> installing$ad_missing (Samba AD DC for the Active Directory tests)"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    # Keep the packages' scripts from starting Samba's services on this machine.
    made_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
        $SUDO chmod 755 /usr/sbin/policy-rc.d; made_policy=1
    fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $ad_missing >/dev/null
    [ $made_policy = 1 ] && $SUDO rm -f /usr/sbin/policy-rc.d
fi
echo "==> the SCIM 2.0 test server (PyPI scim2-server, pinned)"
bash tests/support/scim-up.sh --install

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy -- -D warnings"
cargo clippy --all-targets --quiet -- -D warnings

COUNTS=$(mktemp -d "${TMPDIR:-/tmp}/dirbridge-it-counts.XXXXXX")
trap 'rm -rf "$COUNTS"' EXIT
export DIRBRIDGE_IT_COUNT_DIR="$COUNTS"

echo "==> cargo test (unit, golden, integration)"
cargo test --all-targets

echo "==> demo (the shipped example against a throwaway slapd)"
bash scripts/demo.sh > "$COUNTS/demo.log" 2>&1 || { cat "$COUNTS/demo.log"; echo "the demo failed"; exit 1; }
grep -q "sync: .* applied; 0 failed; 0 quarantined; 50 records" "$COUNTS/demo.log" || { cat "$COUNTS/demo.log"; echo "the demo's sync did not apply cleanly"; exit 1; }
grep -q "50 entries under ou=people" "$COUNTS/demo.log" || { cat "$COUNTS/demo.log"; echo "the demo did not create the 50 sample people"; exit 1; }
grep -q "^0 add, 0 modify, 0 rename, 0 delete; 0 quarantined" "$COUNTS/demo.log" || { cat "$COUNTS/demo.log"; echo "the demo's second plan was not empty"; exit 1; }
echo "demo: ok"

echo "==> the .deb (contents, maintainer scripts, systemd-analyze verify and security)"
bash scripts/need-packages.sh systemd-analyze=systemd dpkg-deb=dpkg useradd=passwd
bash packaging/test-deb.sh

echo "==> integration tests per server"
total=0
for server in slapd scim samba-ad; do
    n=0
    [ -f "$COUNTS/$server" ] && n=$(sort -u "$COUNTS/$server" | wc -l)
    echo "integration tests against $server: $n"
    if [ "$n" -eq 0 ]; then
        echo "no integration test ran against $server: failing"
        exit 1
    fi
    total=$((total + n))
done
echo "all checks passed ($total integration tests against real servers)"
