#!/usr/bin/env bash
# Build the .deb and check it as an installer would see it: contents, conffile, modes, the
# packaged binary's check-config on the packaged example, the maintainer scripts (user, group,
# modes) in a scratch root, and the units (systemd-analyze verify and security).
set -euo pipefail
cd "$(dirname "$0")/.."
bash packaging/build.sh >/dev/null
DEB=$(ls -t target/debian/dirbridge_*.deb | head -n1)
ROOT=$(mktemp -d "${TMPDIR:-/tmp}/dirbridge-deb.XXXXXX")
trap 'rm -rf "$ROOT"' EXIT
fail() { echo "package test: $*" >&2; exit 1; }

dpkg-deb -x "$DEB" "$ROOT"
dpkg-deb -e "$DEB" "$ROOT/DEBIAN"
for f in usr/bin/dirbridge etc/dirbridge/dirbridge.toml usr/share/man/man8/dirbridge.8.gz \
         usr/share/man/man5/dirbridge.toml.5.gz usr/share/bash-completion/completions/dirbridge \
         usr/share/zsh/vendor-completions/_dirbridge usr/share/fish/vendor_completions.d/dirbridge.fish \
         usr/lib/sysusers.d/dirbridge.conf usr/lib/tmpfiles.d/dirbridge.conf \
         usr/share/doc/dirbridge/examples/hr-export.csv; do
    [ -e "$ROOT/$f" ] || fail "missing $f"
done
UNITDIR=$(dirname "$(find "$ROOT" -name dirbridge.service | head -n1)")
[ -f "$UNITDIR/dirbridge.service" ] && [ -f "$UNITDIR/dirbridge-sync.service" ] && [ -f "$UNITDIR/dirbridge-sync.timer" ] \
    || fail "units missing"
grep -qx /etc/dirbridge/dirbridge.toml "$ROOT/DEBIAN/conffiles" || fail "the configuration is not a conffile"
LISTING=$(dpkg-deb -c "$DEB")
grep -q -- '-rw-r----- .* ./etc/dirbridge/dirbridge.toml' <<<"$LISTING" || fail "the configuration is not mode 0640"
VERSION=$("$ROOT/usr/bin/dirbridge" --version)
grep -q "dirbridge .* (commit " <<<"$VERSION" || fail "--version"
MAN8=$(zcat "$ROOT/usr/share/man/man8/dirbridge.8.gz")
grep -q '^.SH SIGNALS' <<<"$MAN8" || fail "dirbridge(8) lacks SIGNALS"
# the service is not started on install: no start in the maintainer scripts
if grep -q 'deb-systemd-invoke start\|systemctl start' "$ROOT/DEBIAN/postinst"; then fail "postinst starts the service"; fi

# the packaged binary on the packaged example (its paths moved into the scratch root)
mkdir -p "$ROOT/srv/hr"
cp "$ROOT/usr/share/doc/dirbridge/examples/hr-export.csv" "$ROOT/srv/hr/export.csv"
echo "example-password" > "$ROOT/etc/dirbridge/bind.password"
chmod 600 "$ROOT/etc/dirbridge/bind.password"
sed -e "s|/srv/hr/|$ROOT/srv/hr/|; s|/etc/dirbridge/|$ROOT/etc/dirbridge/|g; s|/var/lib/dirbridge/|$ROOT/var/lib/dirbridge/|" \
    -e "s|^ca-file = .*|ca-file = \"$ROOT/etc/dirbridge/dirbridge.toml\"|" \
    "$ROOT/etc/dirbridge/dirbridge.toml" > "$ROOT/check.toml"
"$ROOT/usr/bin/dirbridge" -c "$ROOT/check.toml" check-config >/dev/null || fail "check-config on the packaged example"

# maintainer scripts in the scratch root: the user, the group, the modes
mkdir -p "$ROOT/etc"
for f in passwd group shadow gshadow; do cp "/etc/$f" "$ROOT/etc/$f" 2>/dev/null || touch "$ROOT/etc/$f"; done
DPKG_ROOT="$ROOT" sh "$ROOT/DEBIAN/postinst" configure >/dev/null
grep -q '^dirbridge:' "$ROOT/etc/passwd" || fail "postinst did not create the user"
GID=$(awk -F: '$1 == "dirbridge" { print $3 }' "$ROOT/etc/group")
[ -n "$GID" ] || fail "postinst did not create the group"
[ "$(stat -c %g "$ROOT/etc/dirbridge/dirbridge.toml")" = "$GID" ] || fail "the configuration's group is not dirbridge"
[ "$(stat -c %a "$ROOT/etc/dirbridge/dirbridge.toml")" = 640 ] || fail "the configuration is not 0640 after postinst"
[ "$(stat -c %a "$ROOT/var/lib/dirbridge")" = 750 ] || fail "the state directory is not 0750"

# the units: verify against the unpacked tree (so ExecStart exists), and the exposure score
mkdir -p "$ROOT/lib/systemd/system"
cp -rn /lib/systemd/system/. "$ROOT/lib/systemd/system/" 2>/dev/null || true
systemd-analyze verify --man=no --root="$ROOT" "$UNITDIR/dirbridge.service" "$UNITDIR/dirbridge-sync.service" "$UNITDIR/dirbridge-sync.timer" \
    || fail "systemd-analyze verify"
for u in dirbridge.service dirbridge-sync.service; do
    score=$(systemd-analyze security --offline=true "$UNITDIR/$u" 2>/dev/null | sed -n 's/.*Overall exposure level for .*: \([0-9.]*\).*/\1/p')
    awk -v s="$score" 'BEGIN { exit !(s != "" && s <= 1.5) }' || fail "$u exposure $score > 1.5"
    echo "$u: exposure $score"
done
echo "package test: ok ($(basename "$DEB"), $(du -h "$DEB" | cut -f1))"
