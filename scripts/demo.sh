#!/usr/bin/env bash
# The demo: sync the shipped example (config/dirbridge.toml + config/hr-export.csv, 50 people with
# hard names, homonyms and managers) into a throwaway OpenLDAP on 127.0.0.1, then stop it.
#
#   bash scripts/demo.sh            # DEMO_PORT=20389 by default (and 20390 for ldaps://)
#
# Installs Debian's slapd, ldap-utils and openssl when they are missing (needs root or sudo).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
PORT=${DEMO_PORT:-20389}

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

bash scripts/need-packages.sh /usr/sbin/slapd=slapd ldapsearch=ldap-utils openssl=openssl

step "building dirbridge"
cargo build --quiet --bin dirbridge
BIN="$REPO/target/debug/dirbridge"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/dirbridge-demo.XXXXXX")
SLAPD_DIR="$WORK/slapd"
cleanup() {
    bash "$REPO/tests/support/slapd-down.sh" "$SLAPD_DIR" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

step "starting a throwaway slapd on 127.0.0.1:$PORT (ldaps on $((PORT + 1)))"
PW="demo-$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"
eval "$(SLAPD_DBNOSYNC=1 SLAPD_ROOTPW="$PW" SLAPD_WATCH_PID=$$ bash tests/support/slapd-up.sh "$SLAPD_DIR" "$PORT")"
printf '%s\n' "$PW" > "$WORK/bind.password"
chmod 600 "$WORK/bind.password"

# The shipped example, pointed at the throwaway server and at the sample export.
sed -e "s|^url = .*|url = \"$LDAPS_URI\"|" \
    -e "s|^bind-dn = .*|bind-dn = \"$LDAP_BIND_DN\"|" \
    -e "s|^password-file = .*|password-file = \"$WORK/bind.password\"|" \
    -e "s|^ca-file = .*|ca-file = \"$LDAP_CA\"|" \
    -e "s|^path = \"/srv/hr/export.csv\"|path = \"$REPO/config/hr-export.csv\"|" \
    -e "s|^path = \"/var/lib/dirbridge/mirror.db\"|path = \"$WORK/state/mirror.db\"|" \
    config/dirbridge.toml > "$WORK/dirbridge.toml"
CFG="$WORK/dirbridge.toml"
echo "configuration: $CFG (config/dirbridge.toml with the server's address and the sample export)"

step "dirbridge check-config --online"
"$BIN" -c "$CFG" check-config --online >/dev/null

step "dirbridge plan   (what would change; nothing is written)"
"$BIN" -c "$CFG" plan | sed -n '1,40p'
echo "   … (the plan has $("$BIN" -c "$CFG" plan --format json | grep -c '"op"') changes)"

step "dirbridge sync"
"$BIN" -c "$CFG" sync

step "dirbridge plan   (a second run has nothing to do)"
"$BIN" -c "$CFG" plan | tail -n 1

step "ldapsearch: some of the people dirbridge created"
ldapsearch -x -LLL -o ldif-wrap=no -H "$LDAP_URI" -D "$LDAP_BIND_DN" -w "$PW" \
    -b "ou=people,$LDAP_BASE_DN" '(|(sn=Smith)(employeeNumber=1002)(employeeNumber=1014)(employeeNumber=1012))' \
    uid cn mail title manager employeeNumber \
    | perl -MMIME::Base64 -pe 's/^(\w+):: (.*)$/"$1: ".decode_base64($2)/e'

step "ldapsearch: the groups the rules made (config/dirbridge.toml [[groups]])"
ldapsearch -x -LLL -o ldif-wrap=no -H "$LDAP_URI" -D "$LDAP_BIND_DN" -w "$PW" \
    -b "ou=groups,$LDAP_BASE_DN" '(cn=*engineering*)' member

step "dirbridge explain zorsted   (why she has each value and group)"
"$BIN" -c "$CFG" explain zorsted | sed -n '1,20p'

step "ldapsearch: $(ldapsearch -x -LLL -H "$LDAP_URI" -D "$LDAP_BIND_DN" -w "$PW" -b "ou=people,$LDAP_BASE_DN" '(employeeNumber=*)' dn | grep -c '^dn:') entries under ou=people; stopping slapd"
