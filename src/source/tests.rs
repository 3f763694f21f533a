use super::*;
use crate::config::Encoding;

fn cfg(kind: SourceKind, enc: Encoding, delim: char) -> SourceConfig {
    SourceConfig {
        kind,
        path: PathBuf::from("/srv/hr/export"),
        key: "id".into(),
        delimiter: delim,
        encoding: enc,
    }
}

#[test]
fn csv_quotes_bom_and_newlines() {
    let data = "\u{feff}id,name,title\n1,\"Doe, John\",\"Line one\nline two\"\n2,Zoë,Dev\n";
    let e = parse(&cfg(SourceKind::Csv, Encoding::Utf8, ','), data.as_bytes()).unwrap();
    assert_eq!(e.header, vec!["id", "name", "title"]);
    assert_eq!(e.records.len(), 2);
    assert_eq!(e.records[0].fields["name"].as_ref(), "Doe, John");
    assert_eq!(e.records[0].fields["title"].as_ref(), "Line one\nline two");
    assert_eq!(e.records[1].line, 4);
    assert_eq!(e.records[1].fields["name"].as_ref(), "Zoë");
    assert!(e.quarantined.is_empty());
    assert!(!e.keys_uncertain);
}

#[test]
fn csv_semicolon_and_windows_1252() {
    let mut data = b"id;name\n1;Ren".to_vec();
    data.push(0xE9); // é in windows-1252
    data.extend_from_slice(b"e \x80\n");
    let e = parse(&cfg(SourceKind::Csv, Encoding::Windows1252, ';'), &data).unwrap();
    assert_eq!(e.records[0].fields["name"].as_ref(), "Renée €");
    let e = parse(&cfg(SourceKind::Csv, Encoding::Latin1, ';'), &data).unwrap();
    assert_eq!(e.records[0].fields["name"].as_ref(), "Renée \u{80}");
}

#[test]
fn csv_bad_rows_are_quarantined_with_lines() {
    let mut data = b"id,name\n1,Ann\n2,Bob,extra\n3,Bad".to_vec();
    data.push(0xFF);
    data.extend_from_slice(b"\n4,Dan\n4,Dup\n,NoKey\n");
    let e = parse(&cfg(SourceKind::Csv, Encoding::Utf8, ','), &data).unwrap();
    let keys: Vec<&str> = e.records.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(keys, vec!["1"]);
    let q: Vec<(Option<&str>, usize)> = e
        .quarantined
        .iter()
        .map(|q| (q.key.as_deref(), q.line))
        .collect();
    assert_eq!(
        q,
        vec![
            (None, 3),
            (Some("3"), 4),
            (Some("4"), 5),
            (Some("4"), 6),
            (None, 7)
        ]
    );
    assert!(e.quarantined[0]
        .reason
        .contains("has 3 fields, the header has 2"));
    assert!(e.quarantined[1].reason.contains("not valid UTF-8"));
    assert!(e.quarantined[2].reason.contains("duplicate key"));
    assert!(e.keys_uncertain);
    assert_eq!(
        e.quarantined_keys().into_iter().collect::<Vec<_>>(),
        vec!["3", "4"]
    );
}

#[test]
fn csv_a_character_split_across_two_fields_is_not_valid_text() {
    // The record's bytes are valid UTF-8 as a whole ("é" = C3 A9), but the first field ends in the
    // character's first byte and the second starts with its last: neither field is text.
    let mut data = b"id,a,b\n1,x".to_vec();
    data.push(0xC3);
    data.push(b',');
    data.push(0xA9);
    data.extend_from_slice("y\n2,Zoë,Ørsted\n".as_bytes());
    let e = parse(&cfg(SourceKind::Csv, Encoding::Utf8, ','), &data).unwrap();
    assert_eq!(e.records.len(), 1);
    assert_eq!(&*e.records[0].fields["b"], "Ørsted");
    assert_eq!(e.quarantined.len(), 1);
    assert_eq!(e.quarantined[0].key.as_deref(), Some("1"));
    assert!(
        e.quarantined[0].reason.contains("column \"a\""),
        "{}",
        e.quarantined[0].reason
    );
}

#[test]
fn csv_missing_closing_quote_stops_deletes() {
    let data = "id,name\n1,Ann\n2,\"Bob\n3,Cy\n";
    let e = parse(&cfg(SourceKind::Csv, Encoding::Utf8, ','), data.as_bytes()).unwrap();
    assert_eq!(e.records.len(), 1);
    assert!(e.keys_uncertain);
}

#[test]
fn json_array_with_lines() {
    let data =
        "[\n {\"id\": \"1\", \"name\": \"Ann\", \"age\": 3},\n {\"id\": 2, \"name\": null},\n 7\n]";
    let e = parse(&cfg(SourceKind::Json, Encoding::Utf8, ','), data.as_bytes()).unwrap();
    assert_eq!(e.records.len(), 2);
    assert_eq!(e.records[0].fields["age"].as_ref(), "3");
    assert_eq!(e.records[1].key, "2");
    assert_eq!(e.records[1].line, 3);
    assert!(!e.records[1].fields.contains_key("name"));
    assert_eq!(e.quarantined[0].line, 4);
    assert!(e.keys_uncertain);
    assert_eq!(e.header, vec!["age", "id", "name"]);
}

#[test]
fn json_syntax_error_is_fatal_with_position() {
    let err = parse(
        &cfg(SourceKind::Json, Encoding::Utf8, ','),
        b"[{\"id\": 1},\n{\"id\": }]",
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(msg.starts_with("/srv/hr/export:2:"), "{msg}");
}

#[test]
fn jsonl_bad_line() {
    let data = "{\"id\":\"1\"}\n{oops\n\n{\"id\":\"3\"}\n";
    let e = parse(
        &cfg(SourceKind::Jsonl, Encoding::Utf8, ','),
        data.as_bytes(),
    )
    .unwrap();
    assert_eq!(
        e.records.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(),
        vec!["1", "3"]
    );
    assert_eq!(e.quarantined[0].line, 2);
    assert!(e.keys_uncertain);
}

#[test]
fn the_csv_header_is_read_from_the_start_of_the_file_only() {
    /// A header with a BOM and a quoted newline, then 1 MiB of rows, counting what is read.
    struct Endless {
        head: &'static [u8],
        sent: usize,
    }
    impl std::io::Read for Endless {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(64).min((1 << 20) - self.sent);
            for (i, b) in buf[..n].iter_mut().enumerate() {
                let at = self.sent + i;
                *b = match self.head.get(at) {
                    Some(h) => *h,
                    None => b"7,Ann,Dev\n"[(at - self.head.len()) % 10],
                };
            }
            self.sent += n;
            Ok(n)
        }
    }
    let mut file = Endless {
        head: "\u{feff}id,\"full\nname\",title\n".as_bytes(),
        sent: 0,
    };
    let cols = csv::header(&cfg(SourceKind::Csv, Encoding::Utf8, ','), &mut file).unwrap();
    assert_eq!(cols, vec!["id", "full\nname", "title"]);
    assert!(file.sent < 64 * 1024, "read {} bytes", file.sent);
    // and from a file: what the configuration's check of the columns reads
    let dir = std::env::temp_dir().join(format!("dirbridge-header-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut c = cfg(SourceKind::Csv, Encoding::Utf8, ',');
    c.path = dir.join("export.csv");
    std::fs::write(&c.path, "\u{feff}id,name\n1,Ann\n").unwrap();
    assert_eq!(read_header(&c).unwrap(), vec!["id", "name"]);
    std::fs::write(&c.path, "").unwrap();
    let err = read_header(&c).unwrap_err().to_string();
    assert!(
        err.contains("export.csv") && err.contains("header row"),
        "{err}"
    );
    std::fs::remove_file(&c.path).unwrap();
    let err = read_header(&c).unwrap_err().to_string();
    assert!(err.contains("export.csv"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
