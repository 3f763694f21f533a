#!/usr/bin/env bash
# Install the Debian packages whose commands are missing (needs root or sudo).
#   bash scripts/need-packages.sh /usr/sbin/slapd=slapd ldapsearch=ldap-utils …
set -euo pipefail
need=()
for pair in "$@"; do
    command -v "${pair%%=*}" >/dev/null || need+=("${pair#*=}")
done
[ ${#need[@]} -gt 0 ] || exit 0
echo "==> installing ${need[*]} (Debian packages)"
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
