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

/// The keys come from the configuration structs themselves: an unknown key in each section makes
/// serde list the section's fields, and every one must be documented.
#[test]
fn man_page_documents_every_key_of_the_structs() {
    let man5 = std::fs::read_to_string(repo().join("docs/dirbridge.toml.5.md")).unwrap();
    let dir = std::env::temp_dir().join(format!("dirbridge-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("export.csv"), "id,name\n1,A\n").unwrap();
    let base = r#"
[source]
kind = "csv"
path = "export.csv"
key = "id"
[directory]
url = "ldapi://%2Ftmp%2Fx"
base-dn = "dc=example,dc=com"
[state]
path = "m.db"
[users]
base = "ou=people,dc=example,dc=com"
rdn = "uid"
object-classes = ["inetOrgPerson"]
anchor = "employeeNumber"
[users.attributes]
uid = "{{ name }}"
"#;
    let sections = [
        ("", "zz-unknown = 1\n"),
        ("[source]", "[source]\nzz-unknown = 1\n"),
        ("[directory]", "[directory]\nzz-unknown = 1\n"),
        ("[state]", "[state]\nzz-unknown = 1\n"),
        ("[users]", "[users]\nzz-unknown = 1\n"),
        ("[users.posix]", "[users.posix]\nzz-unknown = 1\n"),
        (
            "[[users.placement]]",
            "[[users.placement]]\nzz-unknown = 1\n",
        ),
        ("[[groups]]", "[[groups]]\nzz-unknown = 1\n"),
        ("[lifecycle]", "[lifecycle]\nzz-unknown = 1\n"),
        ("[daemon]", "[daemon]\nzz-unknown = 1\n"),
        ("[safety]", "[safety]\nzz-unknown = 1\n"),
        (
            "[[apps]]",
            "[[apps]]\nname = \"x\"\nkind = \"command\"\nzz-unknown = 1\n",
        ),
    ];
    let mut checked = 0;
    for (name, snippet) in sections {
        // put the snippet where its section is: merge into the base text
        let text = if name.is_empty() {
            format!("{snippet}{base}")
        } else if base.contains(&format!("{name}\n")) {
            base.replace(&format!("{name}\n"), snippet)
        } else {
            format!("{base}{snippet}")
        };
        std::fs::write(dir.join("c.toml"), &text).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_dirbridge"))
            .arg("-c")
            .arg(dir.join("c.toml"))
            .arg("check-config")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        let line = err
            .lines()
            .find(|l| l.contains("unknown field `zz-unknown`"))
            .unwrap_or_else(|| panic!("{name}: {err}"));
        let expected = line
            .split("expected")
            .nth(1)
            .unwrap_or_else(|| panic!("{line}"));
        let keys: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
        assert!(!keys.is_empty(), "{line}");
        for k in keys {
            if name.is_empty() {
                assert!(
                    man5.contains(&format!("[{k}]")) || man5.contains(&format!("[[{k}]]")),
                    "dirbridge.toml.5.md lacks the section {k}"
                );
            } else {
                // a sub-table is documented by its own section (`## [users.unique]`)
                assert!(
                    man5.contains(&format!("`{k}`")) || man5.contains(&format!(".{k}]")),
                    "dirbridge.toml.5.md does not document {name} {k}"
                );
            }
            checked += 1;
        }
    }
    assert!(checked > 60, "only {checked} keys found");
    let _ = std::fs::remove_dir_all(dir);
}
