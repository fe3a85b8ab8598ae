//! `cargo xtask package`: each library crate can be taken on its own (issue 15 item 5).
//!
//! Two checks, both cheap enough for CI:
//! - `cargo package --no-verify` for every library crate: the manifest is complete (versions
//!   on the workspace's path dependencies, license, description) and the files a build needs
//!   are inside the crate's directory. `--no-verify` because verifying would resolve
//!   `ptth-core` from the public registry, where an unrelated crate holds the name; the
//!   lockfile is left out for the same reason.
//! - `cargo check -p NAME` for each crate alone: with resolver 2 a package selected alone
//!   gets only the features it asks for, so a crate that compiles only because a sibling
//!   turned a dependency's feature on fails here. Artifacts are keyed by their features, so
//!   the workspace's target directory serves: a dependency is checked again only where a
//!   crate alone asks for a different feature set than the whole workspace did.

use anyhow::Result;
use std::path::Path;

/// The crates people take as dependencies, in dependency order.
pub const LIBRARY_CRATES: [&str; 7] = [
    "ptth-core",
    "ptth-h1",
    "ptth-h2",
    "ptth-h3",
    "ptth-auth",
    "ptth-gateway",
    "ptth-origin",
];

/// Packages and checks every library crate on its own; the first failure stops the run.
pub fn run(root: &Path, args: &[String]) -> Result<()> {
    if !args.is_empty() {
        anyhow::bail!("usage: cargo xtask package");
    }
    for krate in LIBRARY_CRATES {
        crate::run(
            root,
            "cargo",
            &[
                "package",
                "--no-verify",
                "--exclude-lockfile",
                "--allow-dirty",
                "--quiet",
                "-p",
                krate,
            ],
        )?;
    }
    for krate in LIBRARY_CRATES {
        crate::run(root, "cargo", &["check", "--quiet", "-p", krate])?;
    }
    eprintln!(
        "xtask package: {} crates packaged and checked alone",
        LIBRARY_CRATES.len()
    );
    Ok(())
}
