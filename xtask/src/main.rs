//! Project automation: `cargo xtask ci | tidy | demo | interop | fuzz | bench | hostile | chaos`.
//!
//! `cargo xtask ci` runs exactly what CI runs. Keep this crate dependency-light: it shells out
//! to cargo and to the binaries this workspace builds.

mod bench;
mod chaos;
mod demo;
mod fuzz;
mod hostile;
mod interop;
mod package;
mod procs;
mod tidy;

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let cmd = args.next().unwrap_or_else(|| "help".into());
    let rest: Vec<String> = args.collect();
    match cmd.as_str() {
        "ci" => ci(&rest),
        "tidy" => tidy::run(&project_root()),
        "demo" => demo::run(&project_root(), &rest),
        "fuzz" => fuzz::run(&project_root(), &rest),
        "interop" => interop::run(&project_root(), &rest),
        "bench" => bench::run(&project_root(), &rest),
        "hostile" => hostile::run(&project_root(), &rest),
        "chaos" => chaos::run(&project_root(), &rest),
        "package" => package::run(&project_root(), &rest),
        _ => {
            eprintln!(
                "usage: cargo xtask <command>\n\n\
                 commands:\n  \
                 ci     run exactly what CI runs: fmt --check, clippy -D warnings, tests, tidy,\n         \
                        package, interop --quick, fuzz --time 3, bench --smoke, hostile,\n         \
                        chaos --quick\n         \
                        (--tests-only: stop after tidy)\n  \
                 tidy   check the architecture rules (layering, sans-IO core, no import circle\n         \
                        inside a crate, //! headers)\n  \
                 demo   start a gateway with dev certificates and one origin per mechanism\n         \
                        (--once: print the table and exit)\n  \
                 fuzz   run the cargo-fuzz targets: fuzz [TARGET] [--time SECONDS] (default 10 each);\n         \
                        --build only builds them; crashing inputs go to tests/data/fuzz/<target>/\n  \
                 interop  every mechanism x public client x origin auth, and the request-smuggling\n           \
                          battery; writes docs/interop.md (--quick: a subset, writes nothing)\n  \
                 bench    ptth vs direct, nginx and rathole: req/s, latency, bulk, RSS, CPU, idle\n           \
                          connections; writes docs/benchmarks.md (--smoke: seconds, writes nothing)\n  \
                 hostile  the edge battery: what an attacker does to the public and tunnel ports,\n           \
                          against the release binaries (setup floods, slow headers, credential\n           \
                          probes, spoofed forwarding fields, scope floods, rotation, pins)\n  \
                 chaos    HAProxy, two gateways and three origins under load while origins and\n           \
                          gateways are rolled (SIGTERM) and killed (SIGKILL); ok / failed /\n           \
                          wrong per phase (--quick: seconds per phase, as CI runs it)\n  \
                 package  cargo package --no-verify for each library crate, and cargo check of\n           \
                          each crate alone (its own features only)"
            );
            if cmd == "help" || cmd == "--help" {
                Ok(())
            } else {
                bail!("unknown command {cmd:?}")
            }
        }
    }
}

/// The workspace root: the parent of this crate's manifest directory.
pub fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn ci(args: &[String]) -> Result<()> {
    let tests_only = match args {
        [] => false,
        [a] if a == "--tests-only" => true,
        _ => bail!("usage: cargo xtask ci [--tests-only]"),
    };
    let root = project_root();
    run(&root, "cargo", &["fmt", "--all", "--check"])?;
    run(
        &root,
        "cargo",
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    // Binaries are built first so the end-to-end tests can start them as real processes.
    run(&root, "cargo", &["build", "--workspace", "--bins"])?;
    run(&root, "cargo", &["test", "--workspace", "--no-fail-fast"])?;
    // The library crates' examples run to completion (each asserts what it prints), and their
    // docs build without a warning (missing docs, broken intra-doc links).
    let examples = [
        ("ptth-core", "setup"),
        ("ptth-core", "reverse_connect"),
        ("ptth-h1", "h1_duplex"),
        ("ptth-h2", "h2_duplex"),
        ("ptth-h3", "reversed_quic"),
        ("ptth-auth", "grants"),
        ("ptth-gateway", "axum_embed"),
    ];
    // Built in one cargo run, so they compile side by side rather than one by one, then run
    // from the target directory (`cargo run -p` of each would resolve features per package
    // and build them again).
    let mut build = vec!["build", "-q"];
    for (krate, example) in examples {
        build.extend(["-p", krate, "--example", example]);
    }
    run(&root, "cargo", &build)?;
    let dir = procs::target_dir(&root).join("debug").join("examples");
    for (_, example) in examples {
        let exe = dir.join(example);
        run(&root, &exe.to_string_lossy(), &[])?;
    }
    let mut doc = vec!["doc", "--no-deps"];
    for krate in package::LIBRARY_CRATES {
        doc.extend(["-p", krate]);
    }
    eprintln!("$ RUSTDOCFLAGS=\"-D warnings\" cargo {}", doc.join(" "));
    let status = Command::new("cargo")
        .args(&doc)
        .env("RUSTDOCFLAGS", "-D warnings")
        .current_dir(&root)
        .status()
        .context("could not start cargo")?;
    if !status.success() {
        bail!("cargo {} failed: {status}", doc.join(" "));
    }
    tidy::run(&root)?;
    if !tests_only {
        // Each library crate packages, and compiles with only the features it asks for.
        package::run(&root, &[])?;
        // The conformance matrix's quick subset: real curl, h2load and our HTTP/3 client
        // against real processes, and the request-smuggling battery.
        interop::run(&root, &["--quick".to_string()])?;
        // Every fuzz target (discovered from fuzz/fuzz_targets/), built with AddressSanitizer
        // (a failed sanitizer build fails the run), a few seconds each from its seeds.
        fuzz::run(
            &root,
            &["--time", "3", "--sanitizer", "address"].map(String::from),
        )?;
        // The benchmark harness, seconds long: every row still starts and measures.
        bench::run(&root, &["--smoke".to_string()])?;
        // The edge battery, on the release binaries the bench just built.
        hostile::run(&root, &[])?;
        // HAProxy, two gateways and three origins rolled and killed under load, for seconds
        // per phase: a rolled phase may lose nothing, no phase may give a wrong answer.
        chaos::run(&root, &["--quick".to_string()])?;
    }
    eprintln!("xtask ci: all green");
    Ok(())
}

/// Runs a command in `dir`, echoing it, and fails if it exits non-zero.
pub fn run(dir: &Path, program: &str, args: &[&str]) -> Result<()> {
    eprintln!("$ {program} {}", args.join(" "));
    let status = Command::new(program)
        .args(args)
        .current_dir(dir)
        .status()
        .with_context(|| format!("could not start {program}"))?;
    if !status.success() {
        bail!("{program} {} failed: {status}", args.join(" "));
    }
    Ok(())
}
