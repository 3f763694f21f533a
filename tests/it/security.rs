//! TLS verification, clear-text refusal, secrets never shown.

use crate::common::*;

#[test]
fn wrong_ca_exits_69_naming_ca_file() {
    let t = TestEnv::new("wrongca");
    t.write_export(&["1,Ann,,Boss,,,"]);
    // a CA that did not sign the server's certificate
    let other = t.dir.join("other-ca.pem");
    let st = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=other",
        ])
        .arg("-keyout")
        .arg(t.dir.join("other.key"))
        .arg("-out")
        .arg(&other)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    let cfg = t.default_config(&slapd().ldaps_uri).replace(
        &slapd().ca.display().to_string(),
        &other.display().to_string(),
    );
    t.write_config(&cfg);
    let r = t.run(&["sync"]);
    assert_eq!(r.code, 69, "{r:?}");
    assert!(
        r.stderr.contains("ca-file") && r.stderr.contains("other-ca.pem"),
        "{r:?}"
    );
    assert!(t.people().is_empty());
    // StartTLS is verified the same way
    let cfg = t
        .default_config(&slapd().ldap_uri)
        .replace(
            &slapd().ca.display().to_string(),
            &other.display().to_string(),
        )
        .replace("base-dn =", "starttls = true\nbase-dn =");
    t.write_config(&cfg);
    let r = t.run(&["plan"]);
    assert_eq!(r.code, 69, "{r:?}");
    assert!(r.stderr.contains("ca-file"), "{r:?}");
}

#[test]
fn plain_ldap_simple_bind_needs_opt_in() {
    let t = TestEnv::new("plain");
    t.write_export(&["1,Ann,,Boss,,,"]);
    let cfg = t.default_config(&slapd().ldap_uri);
    t.write_config(&cfg);
    let r = t.run(&["sync"]);
    assert_eq!(r.code, 78, "{r:?}");
    assert!(
        r.stderr.contains("clear text") && r.stderr.contains("allow-insecure"),
        "{r:?}"
    );
    assert!(t.people().is_empty());
    // with the explicit opt-in it works
    t.write_config(&cfg.replace("base-dn =", "allow-insecure = true\nbase-dn ="));
    t.sync_ok();
    assert_eq!(t.people().len(), 1);
}

#[test]
fn bind_password_never_appears() {
    let t = TestEnv::new("hiddenpw");
    t.write_export(&["1,Ann,,Boss,,ann@example.com,"]);
    // Every command, at the most verbose level, in every format (TestEnv::run checks the output).
    for args in [
        vec!["-vv", "check-config"],
        vec!["-vv", "check-config", "--online"],
        vec!["-vv", "plan"],
        vec!["-vv", "plan", "--format", "json"],
        vec!["-vv", "plan", "--format", "ldif"],
        vec!["-vv", "--log-format", "json", "sync", "--dry-run"],
        vec!["-vv", "sync"],
        vec!["-vv", "sync", "--format", "json"],
    ] {
        let r = t.run(&args);
        assert!(r.code == 0, "{args:?}: {r:?}");
    }
    // a wrong password: the error names the file, not the content
    std::fs::write(t.dir.join("bind.password"), "not-the-password\n").unwrap();
    let r = t.run(&["-vv", "sync"]);
    assert_eq!(r.code, 69, "{r:?}");
    assert!(
        r.stderr.contains("invalidCredentials (49)") && r.stderr.contains("bind.password"),
        "{r:?}"
    );
    assert!(!r.stderr.contains("not-the-password"), "{r:?}");
    // nor in the mirror
    let db = std::fs::read(t.dir.join("state/mirror.db")).unwrap();
    let needle = BIND_PW.as_bytes();
    assert!(!db.windows(needle.len()).any(|w| w == needle));
}

#[test]
fn credentials_directory_wins_over_password_file() {
    let t = TestEnv::new("creddir");
    t.write_export(&["1,Ann,,Boss,,,"]);
    std::fs::write(t.dir.join("bind.password"), "wrong\n").unwrap();
    let creds = t.dir.join("creds");
    std::fs::create_dir_all(&creds).unwrap();
    std::fs::write(creds.join("bind-password"), format!("{BIND_PW}\n")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dirbridge"))
        .arg("-c")
        .arg(&t.config)
        .arg("sync")
        .env("CREDENTIALS_DIRECTORY", &creds)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(t.people().len(), 1);
}
