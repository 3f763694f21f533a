//! check-config: every problem at once, with file:line:col; --online checks the server's schema.

use crate::common::*;

#[test]
fn reports_several_errors_with_lines() {
    let t = TestEnv::new("checkcfg");
    t.write_export(&["1,Ann,,Boss,,,"]);
    let cfg = t
        .default_config(&slapd().ldaps_uri)
        .replace("title = \"{{ title }}\"", "title = \"{{ titel }}\"")
        .replace(
            "sn = \"{{ surname }}\"",
            "sn = \"{{ surname | nosuchfilter }}\"",
        )
        .replace(
            "password-file = \"bind.password\"",
            "password-file = \"missing.password\"",
        )
        .replace(
            "key = \"employee_id\"",
            "key = \"employee_id\"\nencoding = \"ebcdic\"",
        )
        + "\n[[apps]]\nname = \"wiki\"\nkind = \"scim\"\n";
    t.write_config(&cfg);
    let line_of = |needle: &str| cfg.lines().position(|l| l.contains(needle)).unwrap() + 1;
    let r = t.run(&["check-config"]);
    assert_eq!(r.code, 78, "{r:?}");
    let file = t.config.display().to_string();
    for (needle, msg) in [
        ("titel", "unknown variable `titel` (did you mean `title`?)"),
        ("nosuchfilter", "unknown filter"),
        ("missing.password", "cannot read password file"),
        ("ebcdic", "source.encoding = \"ebcdic\""),
        ("[[apps]]", "apps.wiki: kind = \"scim\" needs url"),
        ("[[apps]]", "apps.wiki: kind = \"scim\" needs token-file"),
    ] {
        let prefix = format!("{file}:{}:", line_of(needle));
        let hit = r
            .stderr
            .lines()
            .any(|l| l.starts_with(&prefix) && l.contains(msg));
        assert!(hit, "expected `{prefix}… {msg}` in:\n{}", r.stderr);
    }
    assert!(r.stderr.contains("7 errors in"), "{r:?}");
    // plan and sync refuse the same configuration with the same code
    assert_eq!(t.run(&["plan"]).code, 78);
}

#[test]
fn unknown_keys_are_errors_with_position() {
    let t = TestEnv::new("unknownkey");
    t.write_export(&["1,Ann,,Boss,,,"]);
    let cfg = t
        .default_config(&slapd().ldaps_uri)
        .replace("[state]", "[state]\npaht = \"x\"");
    t.write_config(&cfg);
    let r = t.run(&["check-config"]);
    assert_eq!(r.code, 78, "{r:?}");
    let line = cfg.lines().position(|l| l.starts_with("paht")).unwrap() + 1;
    assert!(
        r.stderr
            .contains(&format!(":{line}:1: error: unknown field `paht`")),
        "{r:?}"
    );
}

#[test]
fn online_check_finds_attributes_missing_from_the_schema() {
    let t = TestEnv::new("online");
    t.write_export(&["1,Ann,,Boss,,,"]);
    let r = t.run(&["check-config", "--online"]);
    assert_eq!(r.code, 0, "{r:?}");
    let cfg = t
        .default_config(&slapd().ldaps_uri)
        .replace("title = ", "jobTitle = ");
    t.write_config(&cfg);
    let r = t.run(&["check-config", "--online"]);
    assert_eq!(r.code, 78, "{r:?}");
    assert!(
        r.stderr.contains("does not define: attribute jobTitle"),
        "{r:?}"
    );
    // the same check runs before the first write of a sync
    let r = t.run(&["sync"]);
    assert_eq!(r.code, 78, "{r:?}");
    assert!(t.people().is_empty());
}

#[test]
fn usage_errors_exit_2() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dirbridge"))
        .args(["plan", "--format", "yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dirbridge"))
        .args(["-c", "/nonexistent/dirbridge.toml", "check-config"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/dirbridge.toml"));
}
