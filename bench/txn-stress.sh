#!/usr/bin/env bash
# Stress LDAP transactions (directory.transaction-size) against a throwaway slapd: each round, two
# dirbridge runs write at once into their own subtrees (the first with transactions, the second
# with or without), while ldapsearch reads; about 15% of the records have no surname (the commit
# of their transaction fails: objectClassViolation) and 10% a non-ASCII mail (refused when
# queued). After each round: is slapd alive, and can every entry be read? It stops at the first
# crash or unreadable entry.
#
#   bench/txn-stress.sh [ROUNDS]        # default 30
#   TXN2=0 bench/txn-stress.sh          # the second writer without transactions (default 5)
#   WRITERS=1 bench/txn-stress.sh       # only the first writer (and the reads)
#   READS=0 bench/txn-stress.sh         # no ldapsearch beside the writers
#   FAILING=0 bench/txn-stress.sh       # no failing record
#   PORT=26789 DIRBRIDGE=target/release/dirbridge bench/txn-stress.sh
#
# What it found (docs/performance.md): Debian's slapd 2.5.13 crashed within 6 to 8 rounds when
# the requests of a transaction were pipelined; dirbridge queues them one at a time.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-30}
PORT=${PORT:-26789}
TXN1=${TXN1:-5}
TXN2=${TXN2:-5}
WRITERS=${WRITERS:-2}
READS=${READS:-5}
FAILING=${FAILING:-1}
BIN=${DIRBRIDGE:-}
if [ -z "$BIN" ]; then
    for b in target/release/dirbridge target/debug/dirbridge; do
        [ -x "$b" ] && BIN=$PWD/$b && break
    done
fi
[ -n "$BIN" ] || { echo "txn-stress: build dirbridge first (cargo build --release)" >&2; exit 2; }
WORK=$(mktemp -d "${TMPDIR:-/tmp}/txn-stress.XXXXXX")
eval "$(tests/support/slapd-up.sh "$WORK/slapd" "$PORT")"
trap 'tests/support/slapd-down.sh "$WORK/slapd" --purge >/dev/null 2>&1 || true; rm -rf "$WORK"' EXIT
AUTH=(-x -H "$LDAP_URI" -D "$LDAP_BIND_DN" -w "$LDAP_BIND_PW")
printf '%s\n' "$LDAP_BIND_PW" >"$WORK/bind.password"
chmod 600 "$WORK/bind.password"

writer() {   # writer DIR BASE TXN
    mkdir -p "$1"
    cp "$WORK/bind.password" "$1/"
    cat >"$1/dirbridge.toml" <<TOML
[source]
kind = "csv"
path = "export.csv"
key = "employee_id"

[directory]
url = "$LDAP_URI"
bind-dn = "$LDAP_BIND_DN"
password-file = "bind.password"
base-dn = "$2"
allow-insecure = true
transaction-size = $3

[state]
path = "state/mirror.db"

[users]
base = "ou=people,$2"
rdn = "uid"
object-classes = ["inetOrgPerson"]
anchor = "employeeNumber"

[users.attributes]
uid = "{{ (given_name[:1] ~ surname) | ascii | lower }}{{ n }}"
cn = "{{ given_name }} {{ surname }}"
sn = "{{ surname }}"
mail = "{{ email }}"
title = "{{ title }}"
manager = "{{ manager_id | person_dn }}"

[users.unique]
uid = true

[[groups]]
dn = "cn=dept-{{ department | slug }},ou=groups,$2"
for-each = "department"
TOML
    python3 - "$1/export.csv" "$FAILING" <<'PY'
import random, sys
rows = ["employee_id,given_name,surname,title,email,manager_id,department"]
failing = sys.argv[2] != "0"
for k in range(1, 41):
    sn = "" if failing and random.random() < 0.15 else f"S{k}"
    mail = "bé@exämple.com" if failing and random.random() < 0.1 else f"p{k}@example.com"
    rows.append(f"{k},G{k},{sn},T{k},{mail},{1 if k > 1 else ''},D{k % 3}")
open(sys.argv[1], "w").write("\n".join(rows) + "\n")
PY
    ldapmodify "${AUTH[@]}" >/dev/null <<LDIF
dn: $2
changetype: add
objectClass: organizationalUnit
ou: $(sed 's/^ou=\([^,]*\),.*/\1/' <<<"$2")

dn: ou=people,$2
changetype: add
objectClass: organizationalUnit
ou: people

dn: ou=groups,$2
changetype: add
objectClass: organizationalUnit
ou: groups
LDIF
}

for i in $(seq 1 "$ROUNDS"); do
    writer "$WORK/r$i-a" "ou=r$i-a,$LDAP_BASE_DN" "$TXN1"
    writer "$WORK/r$i-b" "ou=r$i-b,$LDAP_BASE_DN" "$TXN2"
    (cd "$WORK/r$i-a" && timeout 120 "$BIN" -c dirbridge.toml sync >run.log 2>&1; echo "exit $?" >>run.log) &
    if [ "$WRITERS" -gt 1 ]; then
        (cd "$WORK/r$i-b" && timeout 120 "$BIN" -c dirbridge.toml sync >run.log 2>&1; echo "exit $?" >>run.log) &
    fi
    for _ in $(seq 1 "$READS"); do timeout 60 ldapsearch "${AUTH[@]}" -b "$LDAP_BASE_DN" '(objectClass=*)' >/dev/null 2>&1 || true; done
    wait
    if grep -q "^exit 124" "$WORK/r$i-a/run.log" "$WORK/r$i-b/run.log" 2>/dev/null; then
        echo "round $i: a sync got no answer within 120 s (slapd stalled)"
        exit 1
    fi
    st=$(ps -o stat= -p "$SLAPD_PID" 2>/dev/null || true)
    if [ -z "$st" ] || [ "${st#Z}" != "$st" ]; then
        echo "round $i: slapd died (transaction-size $TXN1 and $TXN2; see dmesg for a segfault)"
        exit 1
    fi
    rc=0
    out=$(timeout 60 ldapsearch "${AUTH[@]}" -b "$LDAP_BASE_DN" '(objectClass=*)' 2>&1) || rc=$?
    if [ "$rc" != 0 ] || grep -q "internal error" <<<"$out"; then
        echo "round $i: the directory cannot be read whole (ldapsearch exit $rc; 255: no answer): $(grep -i -A1 'error\|result:\|contact' <<<"$out" | tail -3)"
        exit 1
    fi
    if [ "$TXN1" -gt 1 ] && ! grep -q "LDAP transaction" "$WORK/r$i-a/run.log"; then
        echo "round $i: the first writer committed no transaction:" >&2
        cat "$WORK/r$i-a/run.log" >&2
        exit 2
    fi
done
echo "$ROUNDS rounds: slapd alive, every entry readable ($WRITERS writer(s), transaction-size $TXN1 and $TXN2)"
