//! The shipped example configuration and the man pages stay true to the code.

use crate::common::repo;

#[test]
fn example_configuration_is_valid() {
    let dir = std::env::temp_dir().join(format!("dirbridge-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("bind.password"), "x\n").unwrap();
    let example = std::fs::read_to_string(repo().join("config/dirbridge.toml")).unwrap();
    let cfg = example
        .replace(
            "/srv/hr/export.csv",
            &repo().join("config/hr-export.csv").display().to_string(),
        )
        .replace(
            "/etc/dirbridge/bind.password",
            &dir.join("bind.password").display().to_string(),
        )
        .replace(
            "/etc/dirbridge/ca.pem",
            &repo().join("config/dirbridge.toml").display().to_string(),
        )
        .replace(
            "/var/lib/dirbridge/mirror.db",
            &dir.join("mirror.db").display().to_string(),
        );
    assert_eq!(cfg.lines().count(), example.lines().count());
    std::fs::write(dir.join("dirbridge.toml"), cfg).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dirbridge"))
        .arg("-c")
        .arg(dir.join("dirbridge.toml"))
        .arg("check-config")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("configuration OK (8 columns in the export, 9 attribute templates)"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn man_pages_cover_every_key_and_command() {
    let example = std::fs::read_to_string(repo().join("config/dirbridge.toml")).unwrap();
    let man5 = std::fs::read_to_string(repo().join("docs/dirbridge.toml.5.md")).unwrap();
    let mut section = String::new();
    for line in example.lines() {
        let l = line.trim();
        if l.starts_with('[') {
            section = l.trim_matches(|c| c == '[' || c == ']').to_string();
            assert!(
                man5.contains(&format!("## [{section}]"))
                    || man5.contains(&format!("## [[{section}]]")),
                "dirbridge.toml.5.md lacks [{section}]"
            );
            continue;
        }
        if l.starts_with('#') || !l.contains(" = ") || section.starts_with("users.") {
            continue;
        }
        let key = l.split(" = ").next().unwrap();
        assert!(
            man5.contains(&format!("`{key}`")),
            "dirbridge.toml.5.md does not document {section}.{key}"
        );
    }
    let man8 = std::fs::read_to_string(repo().join("docs/dirbridge.8.md")).unwrap();
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_dirbridge"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout).to_string();
    let commands: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    assert!(commands.contains(&"sync"), "{help}");
    for c in commands {
        assert!(
            man8.contains(&format!("`{c}`")),
            "dirbridge.8.md does not document {c}"
        );
    }
    for code in [
        "| 0 |", "| 3 |", "| 4 |", "| 66 |", "| 69 |", "| 75 |", "| 78 |", "| 2 |",
    ] {
        assert!(man8.contains(code), "dirbridge.8.md lacks exit code {code}");
    }
}
