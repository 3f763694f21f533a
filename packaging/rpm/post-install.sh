# dirbridge: the service user and the configuration's group (the service is not started).
systemd-sysusers /usr/lib/sysusers.d/dirbridge.conf >/dev/null 2>&1 || true
systemd-tmpfiles --create /usr/lib/tmpfiles.d/dirbridge.conf >/dev/null 2>&1 || true
chown root:dirbridge /etc/dirbridge /etc/dirbridge/dirbridge.toml 2>/dev/null || true
chmod 0750 /etc/dirbridge; chmod 0640 /etc/dirbridge/dirbridge.toml
