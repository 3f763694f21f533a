#!/usr/bin/env bash
# Start a throwaway OpenLDAP server (no systemd), for the integration tests, the demo and benchmarks.
# Adapted from the team's measured recipe.
#
#   tests/support/slapd-up.sh [DIR] [PORT]      # DIR default: mktemp -d, PORT default: 20389
#   eval "$(tests/support/slapd-up.sh /tmp/ldap-test 20389)"
#   tests/support/slapd-down.sh /tmp/ldap-test [--purge]
#
# SLAPD_WATCH_PID=PID: stop the server (and purge DIR) when process PID exits, so a test binary
# that dies never leaves a slapd behind.
#
# Listeners: ldap://127.0.0.1:PORT (StartTLS works), ldaps://127.0.0.1:PORT+1,
#            ldapi://DIR/ldapi (SASL EXTERNAL as the invoking Unix user = manage on cn=config and data)
# Data:      mdb, suffix dc=example,dc=com, rootdn cn=admin,dc=example,dc=com / secret,
#            schemas core cosine inetorgperson nis, overlays memberof refint syncprov,
#            entries dc=example,dc=com, ou=people, ou=groups.
# Optional:  SLAPD_PPOLICY=1  also loads the ppolicy overlay with default policy
#            cn=default,ou=policies,dc=example,dc=com (pwdLockout TRUE), so that
#            pwdAccountLockedTime can disable accounts.
#            SLAPD_DBNOSYNC=1 sets olcDbNoSync TRUE (faster, NOT crash safe; default off).
#            SLAPD_ROOTPW   the rootdn's password (default secret).
#            SLAPD_LOGLEVEL   olcLogLevel (default none; logs go to DIR/slapd.log).
# Only the KEY=value lines go to stdout; diagnostics go to stderr.
# Idempotent: if DIR already holds a running server it just prints the lines again;
# if DIR holds a stopped one it is restarted with its existing data.
set -euo pipefail

DIR=${1:-$(mktemp -d "${TMPDIR:-/tmp}/slapd.XXXXXX")}
PORT=${2:-20389}
TLS_PORT=$((PORT + 1))
SUFFIX="dc=example,dc=com"
ROOTDN="cn=admin,$SUFFIX"
ROOTPW="${SLAPD_ROOTPW:-secret}"
SLAPD=${SLAPD:-/usr/sbin/slapd}
SLAPADD=${SLAPADD:-/usr/sbin/slapadd}
MODULES=${SLAPD_MODULE_PATH:-/usr/lib/ldap}
SCHEMAS=${SLAPD_SCHEMA_DIR:-/etc/ldap/schema}

die() { echo "slapd-up: $*" >&2; exit 1; }
for t in "$SLAPD" "$SLAPADD" ldapsearch openssl; do
    command -v "$t" >/dev/null || die "missing $t (apt-get install slapd ldap-utils openssl)"
done

mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
PIDFILE="$DIR/slapd.pid"
# ldapi:// URLs carry the socket path percent-encoded ('/' -> %2F).
LDAPI_URI="ldapi://$(printf '%s' "$DIR/ldapi" | sed 's|%|%25|g; s|/|%2F|g')"

kv() {   # KEY=value, single-quoted only when the value needs it (so it also works as an env-file)
    case $2 in
        *[!A-Za-z0-9_./:%=,+@-]*) printf "%s='%s'\n" "$1" "$(printf '%s' "$2" | sed "s/'/'\\\\''/g")" ;;
        *) printf '%s=%s\n' "$1" "$2" ;;
    esac
}
print_env() {
    kv SLAPD_DIR "$DIR"
    kv SLAPD_PID "$(cat "$PIDFILE")"
    kv LDAP_URI "ldap://127.0.0.1:$PORT"
    kv LDAPS_URI "ldaps://127.0.0.1:$TLS_PORT"
    kv LDAPI_URI "$LDAPI_URI"
    kv LDAP_CA "$DIR/tls/ca.crt"
    kv LDAP_BASE_DN "$SUFFIX"
    kv LDAP_BIND_DN "$ROOTDN"
    kv LDAP_BIND_PW "$ROOTPW"
}

running() { [ -s "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }
answers() { ldapsearch -x -LLL -H "ldap://127.0.0.1:$PORT" -s base -b "" namingContexts >/dev/null 2>&1; }
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if running; then
    answers || die "pid $(cat "$PIDFILE") from $DIR is alive but ldap://127.0.0.1:$PORT does not answer (other port?)"
    print_env
    exit 0
fi
rm -f "$PIDFILE" "$DIR/ldapi"
for p in "$PORT" "$TLS_PORT"; do
    port_busy "$p" && die "port $p on 127.0.0.1 is already in use"
done

# --- TLS: self-signed CA + server certificate for 127.0.0.1/localhost (only once per DIR) ---
# (libldap checks ldap[s]://localhost against the machine's hostname, hence DNS:$(uname -n))
if [ ! -s "$DIR/tls/server.crt" ]; then
    mkdir -p "$DIR/tls"
    (
        cd "$DIR/tls"
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
            -subj "/CN=slapd-test CA" -keyout ca.key -out ca.crt \
            -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
        openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
            -subj "/CN=localhost" -keyout server.key -out server.csr
        printf '%s\n' "basicConstraints=critical,CA:FALSE" \
            "keyUsage=critical,digitalSignature,keyEncipherment" \
            "extendedKeyUsage=serverAuth" \
            "subjectAltName=DNS:localhost,DNS:$(uname -n),IP:127.0.0.1,IP:::1" > server.ext
        openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
            -days 3650 -extfile server.ext -out server.crt
        chmod 600 ca.key server.key
    ) 2>"$DIR/openssl.log" || { cat "$DIR/openssl.log" >&2; die "openssl failed"; }
fi

# --- cn=config + base entries (only once per DIR) ---
if [ ! -d "$DIR/slapd.d/cn=config" ]; then
    rm -rf "$DIR/slapd.d" "$DIR/data"
    mkdir -p "$DIR/slapd.d" "$DIR/data"
    PEER="gidNumber=$(id -g)+uidNumber=$(id -u),cn=peercred,cn=external,cn=auth"
    PPOLICY_MODULE="" PPOLICY_OVERLAY="" PPOLICY_ENTRIES=""
    if [ "${SLAPD_PPOLICY:-0}" = 1 ]; then
        PPOLICY_MODULE="olcModuleLoad: ppolicy"
        PPOLICY_OVERLAY="
dn: olcOverlay=ppolicy,olcDatabase={1}mdb,cn=config
objectClass: olcOverlayConfig
objectClass: olcPPolicyConfig
olcOverlay: ppolicy
olcPPolicyDefault: cn=default,ou=policies,$SUFFIX
"
        PPOLICY_ENTRIES="
dn: ou=policies,$SUFFIX
objectClass: organizationalUnit
ou: policies

dn: cn=default,ou=policies,$SUFFIX
objectClass: organizationalRole
objectClass: pwdPolicy
cn: default
pwdAttribute: userPassword
pwdLockout: TRUE
"
    fi
    cat > "$DIR/config.ldif" <<EOF
dn: cn=config
objectClass: olcGlobal
cn: config
olcPidFile: $PIDFILE
olcArgsFile: $DIR/slapd.args
olcLogLevel: ${SLAPD_LOGLEVEL:-none}
olcTLSCACertificateFile: $DIR/tls/ca.crt
olcTLSCertificateFile: $DIR/tls/server.crt
olcTLSCertificateKeyFile: $DIR/tls/server.key

dn: cn=module{0},cn=config
objectClass: olcModuleList
cn: module{0}
olcModulePath: $MODULES
olcModuleLoad: back_mdb
olcModuleLoad: memberof
olcModuleLoad: refint
olcModuleLoad: syncprov
$PPOLICY_MODULE

dn: cn=schema,cn=config
objectClass: olcSchemaConfig
cn: schema

include: file://$SCHEMAS/core.ldif
include: file://$SCHEMAS/cosine.ldif
include: file://$SCHEMAS/inetorgperson.ldif
include: file://$SCHEMAS/nis.ldif

dn: olcDatabase={-1}frontend,cn=config
objectClass: olcDatabaseConfig
objectClass: olcFrontendConfig
olcDatabase: {-1}frontend
olcAccess: {0}to * by dn.exact="$PEER" manage by * break
olcAccess: {1}to dn.exact="" by * read
olcAccess: {2}to dn.base="cn=Subschema" by * read

dn: olcDatabase={0}config,cn=config
objectClass: olcDatabaseConfig
olcDatabase: {0}config
olcAccess: {0}to * by dn.exact="$PEER" manage by * break

dn: olcDatabase={1}mdb,cn=config
objectClass: olcDatabaseConfig
objectClass: olcMdbConfig
olcDatabase: {1}mdb
olcSuffix: $SUFFIX
olcRootDN: $ROOTDN
olcRootPW: $(/usr/sbin/slappasswd -s "$ROOTPW")
olcDbDirectory: $DIR/data
olcDbMaxSize: 4294967296
olcDbNoSync: $([ "${SLAPD_DBNOSYNC:-0}" = 1 ] && echo TRUE || echo FALSE)
olcDbCheckpoint: 512 30
olcDbIndex: objectClass eq
olcDbIndex: entryCSN,entryUUID eq
olcDbIndex: uid,mail,employeeNumber eq
olcDbIndex: cn,sn,givenName eq,sub
olcDbIndex: member,memberUid,memberOf,manager eq
olcAccess: {0}to attrs=userPassword by self write by anonymous auth by * none
olcAccess: {1}to * by self read by users read by * none

dn: olcOverlay={0}memberof,olcDatabase={1}mdb,cn=config
objectClass: olcOverlayConfig
objectClass: olcMemberOfConfig
olcOverlay: {0}memberof
olcMemberOfGroupOC: groupOfNames
olcMemberOfMemberAD: member
olcMemberOfMemberOfAD: memberOf
olcMemberOfRefInt: TRUE

dn: olcOverlay={1}refint,olcDatabase={1}mdb,cn=config
objectClass: olcOverlayConfig
objectClass: olcRefintConfig
olcOverlay: {1}refint
olcRefintAttribute: member
olcRefintAttribute: manager
olcRefintAttribute: owner

dn: olcOverlay={2}syncprov,olcDatabase={1}mdb,cn=config
objectClass: olcOverlayConfig
objectClass: olcSyncProvConfig
olcOverlay: {2}syncprov
olcSpCheckpoint: 100 10
olcSpSessionLog: 10000
$PPOLICY_OVERLAY
EOF
    "$SLAPADD" -n0 -F "$DIR/slapd.d" -l "$DIR/config.ldif" >"$DIR/slapadd.log" 2>&1 \
        || { cat "$DIR/slapadd.log" >&2; die "slapadd of cn=config failed"; }
    cat > "$DIR/base.ldif" <<EOF
dn: $SUFFIX
objectClass: dcObject
objectClass: organization
dc: example
o: Example

dn: ou=people,$SUFFIX
objectClass: organizationalUnit
ou: people

dn: ou=groups,$SUFFIX
objectClass: organizationalUnit
ou: groups
$PPOLICY_ENTRIES
EOF
    "$SLAPADD" -F "$DIR/slapd.d" -b "$SUFFIX" -l "$DIR/base.ldif" >>"$DIR/slapadd.log" 2>&1 \
        || { cat "$DIR/slapadd.log" >&2; die "slapadd of base entries failed"; }
fi

# --- start: foreground mode (-d 0) in the background, so start-up errors land in slapd.log ---
setsid "$SLAPD" -d 0 -F "$DIR/slapd.d" \
    -h "ldap://127.0.0.1:$PORT/ ldaps://127.0.0.1:$TLS_PORT/ $LDAPI_URI" \
    </dev/null >>"$DIR/slapd.log" 2>&1 &
STARTED=$!

for _ in $(seq 1 200); do                       # up to ~10 s
    if ! kill -0 "$STARTED" 2>/dev/null; then
        tail -n 20 "$DIR/slapd.log" >&2; die "slapd exited during start-up (see $DIR/slapd.log)"
    fi
    if [ -s "$PIDFILE" ] && answers; then
        if [ -n "${SLAPD_WATCH_PID:-}" ]; then
            HERE=$(cd "$(dirname "$0")" && pwd)
            # only when the watched process is gone: a slapd stopped on purpose (and perhaps
            # started again in the same DIR) is left alone
            setsid sh -c 'while kill -0 "$1" 2>/dev/null && kill -0 "$2" 2>/dev/null; do sleep 0.5; done; kill -0 "$1" 2>/dev/null || "$3/slapd-down.sh" "$4" --purge' \
                _ "$SLAPD_WATCH_PID" "$STARTED" "$HERE" "$DIR" </dev/null >/dev/null 2>&1 &
        fi
        print_env
        exit 0
    fi
    sleep 0.05
done
kill "$STARTED" 2>/dev/null || true
tail -n 20 "$DIR/slapd.log" >&2
die "slapd did not answer on ldap://127.0.0.1:$PORT within 10 s"
