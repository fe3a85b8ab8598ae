//! Architecture checks: the sans-IO core, downward-only layering, no import circle inside a
//! crate, and `//!` file headers.

mod circles;

use anyhow::{bail, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Crates `ptth-core` must never depend on, directly or transitively: async runtimes,
/// QUIC stacks, HTTP stacks that do I/O, and socket crates.
const FORBIDDEN_IN_CORE: &[&str] = &[
    "tokio",
    "async-std",
    "smol",
    "mio",
    "socket2",
    "quinn",
    "quinn-proto",
    "quinn-udp",
    "hyper",
    "h2",
    "rustls",
];

/// The layers, top to bottom. A crate may depend only on crates in lower layers.
const LAYERS: &[&[&str]] = &[
    &["ptth-gateway", "ptth-origin", "ptth-h3-client"],
    &["ptth-h1", "ptth-h2", "ptth-h3", "ptth-auth"],
    &["ptth-core"],
];

pub fn run(root: &Path) -> Result<()> {
    let mut problems = Vec::new();
    check_core_deps(root, &mut problems)?;
    check_layering(root, &mut problems)?;
    circles::check(root, &mut problems)?;
    check_headers(root, &mut problems)?;
    if problems.is_empty() {
        eprintln!("xtask tidy: ok");
        Ok(())
    } else {
        for p in &problems {
            eprintln!("tidy: {p}");
        }
        bail!("{} tidy problem(s)", problems.len())
    }
}

fn check_core_deps(root: &Path, problems: &mut Vec<String>) -> Result<()> {
    let out = Command::new("cargo")
        .args([
            "tree",
            "-p",
            "ptth-core",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .current_dir(root)
        .output()
        .context("running cargo tree")?;
    if !out.status.success() {
        bail!(
            "cargo tree failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        if FORBIDDEN_IN_CORE.contains(&name) {
            problems.push(format!(
                "ptth-core depends on `{name}`; the core must stay sans-IO"
            ));
        }
    }
    Ok(())
}

fn layer_of(name: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&name))
}

fn check_layering(root: &Path, problems: &mut Vec<String>) -> Result<()> {
    for entry in fs::read_dir(root.join("crates"))? {
        let dir = entry?.path();
        let name = dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let Some(own) = layer_of(&name) else {
            problems.push(format!("crates/{name} is in no layer of xtask/src/tidy.rs"));
            continue;
        };
        let manifest = fs::read_to_string(dir.join("Cargo.toml"))?;
        // Only [dependencies] matter for layering; dev-dependencies may reach anywhere.
        let mut in_deps = false;
        for line in manifest.lines() {
            let t = line.trim();
            if t.starts_with('[') {
                in_deps = t == "[dependencies]";
                continue;
            }
            if !in_deps {
                continue;
            }
            let dep = t.split(['.', '=', ' ']).next().unwrap_or_default();
            if let Some(theirs) = layer_of(dep) {
                if theirs <= own {
                    problems.push(format!(
                        "{name} depends on {dep}: arrows must point down the layers"
                    ));
                }
            }
        }
    }
    Ok(())
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if path.is_dir() {
            if name != "target" && !name.starts_with('.') {
                rust_files(&path, out)?;
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
    Ok(())
}

fn check_headers(root: &Path, problems: &mut Vec<String>) -> Result<()> {
    let mut files = Vec::new();
    for d in ["crates", "xtask", "tests", "fuzz/fuzz_targets"] {
        rust_files(&root.join(d), &mut files)?;
    }
    for f in files {
        let text = fs::read_to_string(&f)?;
        if !text.trim_start().starts_with("//!") {
            let shown = f.strip_prefix(root).unwrap_or(&f).display().to_string();
            problems.push(format!("{shown} does not open with a `//!` doc line"));
        }
    }
    Ok(())
}
