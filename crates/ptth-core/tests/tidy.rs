//! Tidy checks for ptth-core: it stays sans-IO and every source file documents itself.

// The checks read the crate's own files; the sans-IO rule is for the library, not this test.
#![allow(clippy::disallowed_methods)]

use std::path::Path;

const ALLOWED_DEPENDENCIES: &[&str] = &["bytes", "http", "thiserror"];

#[test]
fn dependencies_are_sans_io() {
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
            .expect("read Cargo.toml");
    let mut section = String::new();
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line.to_owned();
            continue;
        }
        if section != "[dependencies]" || line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name = line.split(['=', '.']).next().unwrap_or_default().trim();
        assert!(
            ALLOWED_DEPENDENCIES.contains(&name),
            "ptth-core must stay sans-IO; dependency {name:?} is not in {ALLOWED_DEPENDENCIES:?}"
        );
    }
}

#[test]
fn every_source_file_starts_with_a_module_doc() {
    let mut stack = vec![Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()];
    let mut seen = 0;
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("read source");
                assert!(
                    text.starts_with("//!"),
                    "{} must start with a //! line",
                    path.display()
                );
                seen += 1;
            }
        }
    }
    assert!(seen > 5);
}

#[test]
fn library_code_is_sans_io() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for entry in std::fs::read_dir(&src).expect("read src") {
        let path = entry.expect("dir entry").path();
        let text = std::fs::read_to_string(&path).expect("read source");
        for banned in [
            "tokio",
            "std::net::Tcp",
            "std::net::Udp",
            "Instant::now",
            "SystemTime::now",
            "thread::spawn",
            "std::fs",
        ] {
            assert!(
                !text.contains(banned),
                "{} mentions {banned}",
                path.display()
            );
        }
    }
}
