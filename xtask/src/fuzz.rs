//! `cargo xtask fuzz`: builds and runs the cargo-fuzz targets in `fuzz/` for a bounded time.
//!
//! The targets need nightly-only compiler flags (`-Zsanitizer=address`, sancov passes). On a
//! stable toolchain this sets `RUSTC_BOOTSTRAP=1`, which unlocks them; if the AddressSanitizer
//! build still fails it falls back to `--sanitizer none` (coverage-guided fuzzing still works,
//! only memory errors in unsafe dependencies go undetected) — except with `--sanitizer
//! address`, which `cargo xtask ci` passes: there a failed AddressSanitizer build fails the
//! run instead of quietly fuzzing without it.
//!
//! Seeds come from `tests/data/fuzz/<target>/`, which the ordinary test suite replays
//! (`tests/tests/fuzz_regressions.rs`). New corpus entries go to the git-ignored
//! `fuzz/corpus/<target>/`; a crashing input is copied next to the seeds so it stays a
//! regression test once the bug is fixed.

use anyhow::{bail, Context, Result};
use std::fmt::Write as _;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Every fuzz target: each file in `fuzz/fuzz_targets/`, by name. Discovered rather than
/// listed, so a new target cannot be left out of the run; each must also be declared as a
/// `[[bin]]` in `fuzz/Cargo.toml` (cargo-fuzz builds only those), or the run fails.
pub fn targets(root: &Path) -> Result<Vec<String>> {
    let dir = root.join("fuzz/fuzz_targets");
    let mut names = Vec::new();
    for entry in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "rs") {
            if let Some(stem) = path.file_stem().and_then(|s| s.to_str()) {
                names.push(stem.to_string());
            }
        }
    }
    names.sort();
    if names.is_empty() {
        bail!("no fuzz targets in {}", dir.display());
    }
    let manifest = fs::read_to_string(root.join("fuzz/Cargo.toml"))?;
    let undeclared: Vec<&String> = names
        .iter()
        .filter(|n| !manifest.contains(&format!("name = \"{n}\"\npath = \"fuzz_targets/{n}.rs\"")))
        .collect();
    if !undeclared.is_empty() {
        bail!(
            "fuzz targets without a [[bin]] (name and path) in fuzz/Cargo.toml, so cargo fuzz would never build them: {undeclared:?}"
        );
    }
    Ok(names)
}

const USAGE: &str =
    "usage: cargo xtask fuzz [TARGET] [--time SECONDS] [--sanitizer address|none]\n       \
                     cargo xtask fuzz --build";

/// Seconds each target runs when `--time` is not given.
const DEFAULT_SECONDS: u64 = 10;

/// libFuzzer's per-input limit: an input slower than this is reported as a hang.
const INPUT_TIMEOUT_SECONDS: u64 = 25;

struct Options {
    targets: Vec<String>,
    seconds: u64,
    build_only: bool,
    sanitizer: Option<String>,
}

/// One line of the summary table.
struct Outcome {
    target: String,
    elapsed: Duration,
    execs: Option<u64>,
    verdict: Verdict,
}

enum Verdict {
    Ok,
    /// libFuzzer wrote an artifact (crash, timeout, OOM, leak); it was kept at this path.
    Found {
        kind: String,
        kept: PathBuf,
    },
    /// The run failed without leaving an input behind.
    Failed(String),
}

pub fn run(root: &Path, args: &[String]) -> Result<()> {
    let all = targets(root)?;
    let opts = parse_args(args, &all)?;
    let fuzz_dir = root.join("fuzz");
    ensure_cargo_fuzz(&fuzz_dir)?;
    let bootstrap = needs_bootstrap(&fuzz_dir)?;
    if bootstrap {
        eprintln!("xtask fuzz: stable toolchain, building with RUSTC_BOOTSTRAP=1");
    }

    let sanitizer = build(&fuzz_dir, bootstrap, opts.sanitizer.as_deref())?;
    if opts.build_only {
        eprintln!(
            "xtask fuzz: built {} targets (sanitizer {sanitizer})",
            all.len()
        );
        return Ok(());
    }

    let mut outcomes = Vec::new();
    for target in &opts.targets {
        outcomes.push(run_target(
            root,
            &fuzz_dir,
            target,
            opts.seconds,
            bootstrap,
            &sanitizer,
        )?);
    }
    eprintln!("\n{}", summary(&outcomes, &sanitizer));

    let found: Vec<String> = outcomes
        .iter()
        .filter_map(|o| match &o.verdict {
            Verdict::Ok => None,
            Verdict::Found { kind, kept } => Some(format!(
                "{}: {kind}, input kept at {}\n    reproduce: cd fuzz && cargo fuzz run {} {}",
                o.target,
                kept.display(),
                o.target,
                kept.display()
            )),
            Verdict::Failed(why) => Some(format!("{}: {why}", o.target)),
        })
        .collect();
    if found.is_empty() {
        eprintln!("xtask fuzz: no crashes");
        Ok(())
    } else {
        bail!(
            "fuzzing found {} problem(s):\n  {}\nFix the parser, then `cargo test -p ptth-tests --test e2e fuzz_regressions` replays the kept inputs.",
            found.len(),
            found.join("\n  ")
        )
    }
}

fn parse_args(args: &[String], all: &[String]) -> Result<Options> {
    let mut opts = Options {
        targets: all.to_vec(),
        seconds: DEFAULT_SECONDS,
        build_only: false,
        sanitizer: None,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let mut value = |name: &str| {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .with_context(|| format!("{name} needs a value\n{USAGE}"))
        };
        match flag {
            "--build" => opts.build_only = true,
            "--time" => {
                let v = value("--time")?;
                opts.seconds = v
                    .parse()
                    .ok()
                    .filter(|&s| s > 0)
                    .with_context(|| format!("--time wants whole seconds > 0, not {v:?}"))?;
            }
            "--sanitizer" | "-s" => opts.sanitizer = Some(value("--sanitizer")?),
            "-h" | "--help" => {
                eprintln!("{USAGE}\n\ntargets: {}", all.join(", "));
                std::process::exit(0);
            }
            name if !name.starts_with('-') => {
                let target = all.iter().find(|t| *t == name).with_context(|| {
                    format!("unknown fuzz target {name:?}; targets: {}", all.join(", "))
                })?;
                opts.targets = vec![target.clone()];
            }
            other => bail!("unknown option {other:?}\n{USAGE}"),
        }
    }
    Ok(opts)
}

fn ensure_cargo_fuzz(fuzz_dir: &Path) -> Result<()> {
    let installed = Command::new("cargo")
        .args(["fuzz", "--version"])
        .current_dir(fuzz_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !installed {
        eprintln!("xtask fuzz: cargo-fuzz is missing, installing it");
        crate::run(fuzz_dir, "cargo", &["install", "cargo-fuzz", "--locked"])?;
    }
    Ok(())
}

/// Whether the toolchain that builds `fuzz/` is not a nightly, so nightly flags need
/// `RUSTC_BOOTSTRAP=1`.
fn needs_bootstrap(fuzz_dir: &Path) -> Result<bool> {
    let out = Command::new("rustc")
        .arg("--version")
        .current_dir(fuzz_dir)
        .output()
        .context("running rustc --version")?;
    let version = String::from_utf8_lossy(&out.stdout);
    Ok(!version.contains("nightly") && !version.contains("-dev"))
}

fn cargo_fuzz(fuzz_dir: &Path, bootstrap: bool) -> Command {
    let mut cmd = Command::new("cargo");
    // The instrumented build keeps to `fuzz/target`: sharing the workspace's target dir
    // would make the two sets of RUSTFLAGS rebuild each other's artifacts.
    cmd.arg("fuzz")
        .current_dir(fuzz_dir)
        .env_remove("CARGO_TARGET_DIR");
    if bootstrap {
        cmd.env("RUSTC_BOOTSTRAP", "1");
    }
    cmd
}

/// Builds every target and returns the sanitizer that worked.
fn build(fuzz_dir: &Path, bootstrap: bool, sanitizer: Option<&str>) -> Result<String> {
    let candidates: Vec<&str> = match sanitizer {
        Some(s) => vec![s],
        None => vec!["address", "none"],
    };
    for (i, &s) in candidates.iter().enumerate() {
        let args = ["build", "--release", "--debug-assertions", "--sanitizer", s];
        eprintln!("$ cargo fuzz {}", args.join(" "));
        let status = cargo_fuzz(fuzz_dir, bootstrap)
            .args(args)
            .status()
            .context("could not start cargo fuzz")?;
        if status.success() {
            return Ok(s.to_string());
        }
        if let Some(next) = candidates.get(i + 1) {
            eprintln!("xtask fuzz: the build with sanitizer {s} failed; retrying with {next}");
        }
    }
    bail!("cargo fuzz build failed (sanitizers tried: {candidates:?})")
}

fn run_target(
    root: &Path,
    fuzz_dir: &Path,
    target: &str,
    seconds: u64,
    bootstrap: bool,
    sanitizer: &str,
) -> Result<Outcome> {
    // libFuzzer writes new inputs into the first corpus directory only, so the checked-in
    // seeds go second and stay untouched.
    let corpus = fuzz_dir.join("corpus").join(target);
    fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
    let seeds = root.join("tests/data/fuzz").join(target);
    let logs = fuzz_dir.join("target/xtask-fuzz");
    fs::create_dir_all(&logs)?;
    let log_path = logs.join(format!("{target}.log"));
    let log = File::create(&log_path)?;

    let mut cmd = cargo_fuzz(fuzz_dir, bootstrap);
    cmd.args([
        "run",
        "--release",
        "--debug-assertions",
        "--sanitizer",
        sanitizer,
        target,
    ])
    .arg(&corpus);
    if seeds.is_dir() {
        cmd.arg(&seeds);
    }
    cmd.arg("--").args([
        format!("-max_total_time={seconds}"),
        format!("-timeout={INPUT_TIMEOUT_SECONDS}"),
        "-print_final_stats=1".to_string(),
    ]);
    eprintln!(
        "xtask fuzz: {target} for {seconds}s (log: {})",
        log_path.display()
    );
    let started = Instant::now();
    let status = cmd
        .stdout(log.try_clone()?)
        .stderr(log)
        .status()
        .context("could not start cargo fuzz")?;
    let output = fs::read_to_string(&log_path).unwrap_or_default();
    // libFuzzer's own count leaves out the (re)build that `cargo fuzz run` may do first.
    let elapsed = parse_fuzz_seconds(&output)
        .map(Duration::from_secs)
        .unwrap_or_else(|| started.elapsed());
    let execs = parse_execs(&output);

    let verdict = if status.success() {
        Verdict::Ok
    } else {
        eprintln!("--- last lines of {} ---", log_path.display());
        let lines: Vec<&str> = output.lines().collect();
        for line in &lines[lines.len().saturating_sub(60)..] {
            eprintln!("{line}");
        }
        eprintln!("---");
        match parse_artifact(&output) {
            Some(artifact) => {
                let artifact = fuzz_dir.join(artifact);
                let name = artifact
                    .file_name()
                    .context("libFuzzer named an artifact without a file name")?;
                let kind = name
                    .to_string_lossy()
                    .split('-')
                    .next()
                    .unwrap_or("crash")
                    .to_string();
                fs::create_dir_all(&seeds)?;
                let kept = seeds.join(name);
                fs::copy(&artifact, &kept).with_context(|| {
                    format!("copying {} to {}", artifact.display(), kept.display())
                })?;
                Verdict::Found {
                    kind,
                    kept: kept.strip_prefix(root).unwrap_or(&kept).to_path_buf(),
                }
            }
            None => Verdict::Failed(format!(
                "cargo fuzz exited with {status} and left no input; see {}",
                log_path.display()
            )),
        }
    };
    Ok(Outcome {
        target: target.to_string(),
        elapsed,
        execs,
        verdict,
    })
}

/// The number of inputs libFuzzer executed: its final stats, else its `Done N runs` line,
/// else the last `#N` progress line.
fn parse_execs(output: &str) -> Option<u64> {
    let number = |s: &str| {
        s.trim()
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|n| n.parse().ok())
    };
    let stats = output
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
        .and_then(number);
    let done = || {
        output
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("Done "))
            .and_then(number)
    };
    let progress = || {
        output
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix('#'))
            .and_then(number)
    };
    stats.or_else(done).or_else(progress)
}

/// How long libFuzzer fuzzed, from its `Done N runs in S second(s)` line.
fn parse_fuzz_seconds(output: &str) -> Option<u64> {
    let line = output.lines().rev().find(|l| l.starts_with("Done "))?;
    let (_, tail) = line.split_once(" runs in ")?;
    tail.split_whitespace().next()?.parse().ok()
}

/// The input libFuzzer saved: `... Test unit written to <path>`.
fn parse_artifact(output: &str) -> Option<PathBuf> {
    output.lines().rev().find_map(|l| {
        l.split_once("Test unit written to ")
            .map(|(_, path)| PathBuf::from(path.trim()))
    })
}

fn summary(outcomes: &[Outcome], sanitizer: &str) -> String {
    let mut s = format!("fuzz summary (sanitizer {sanitizer})\n");
    let _ = writeln!(
        s,
        "{:<18} {:>8} {:>12} {:>10}  result",
        "target", "seconds", "execs", "execs/s"
    );
    for o in outcomes {
        let secs = o.elapsed.as_secs_f64();
        let (execs, rate) = match o.execs {
            Some(n) => (n.to_string(), format!("{:.0}", n as f64 / secs.max(0.001))),
            None => ("?".into(), "?".into()),
        };
        let result = match &o.verdict {
            Verdict::Ok => "ok".to_string(),
            Verdict::Found { kind, kept } => {
                format!("{} -> {}", kind.to_uppercase(), kept.display())
            }
            Verdict::Failed(_) => "FAILED".to_string(),
        };
        let _ = writeln!(
            s,
            "{:<18} {:>8.1} {:>12} {:>10}  {result}",
            o.target, secs, execs, rate
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_execs_and_artifacts_from_libfuzzer_output() {
        let ok = "#65536\tpulse  cov: 10\nDone 67620 runs in 6 second(s)\nstat::number_of_executed_units: 67620\n";
        assert_eq!(parse_execs(ok), Some(67620));
        assert_eq!(parse_fuzz_seconds(ok), Some(6));
        let crash = "#1024\tNEW    cov: 5\n#2048\tpulse\n==1== ERROR: libFuzzer: deadly signal\n\
                     artifact_prefix='/f/artifacts/t/'; Test unit written to /f/artifacts/t/crash-abc\n";
        assert_eq!(parse_execs(crash), Some(2048));
        assert_eq!(
            parse_artifact(crash),
            Some(PathBuf::from("/f/artifacts/t/crash-abc"))
        );
        assert_eq!(parse_artifact(ok), None);
        assert_eq!(parse_fuzz_seconds(crash), None);
    }

    #[test]
    fn parses_arguments() {
        let all = targets(&crate::project_root()).unwrap();
        let args =
            |a: &[&str]| parse_args(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>(), &all);
        let o = args(&["origin_frame", "--time", "20"]).unwrap();
        assert_eq!(o.targets, vec!["origin_frame"]);
        assert_eq!(o.seconds, 20);
        let o = args(&["--time=3", "--build"]).unwrap();
        assert_eq!(
            (o.seconds, o.build_only, o.targets.len()),
            (3, true, all.len())
        );
        assert!(args(&["nope"]).is_err());
        assert!(args(&["--time", "0"]).is_err());
        assert!(args(&["--time"]).is_err());
    }

    #[test]
    fn targets_are_discovered_and_declared() {
        let all = targets(&crate::project_root()).unwrap();
        for t in ["origin_frame", "h3_frames", "setup_request"] {
            assert!(all.iter().any(|a| a == t), "{t} not discovered in {all:?}");
        }
        // A file without a [[bin]] is an error, not a target that silently never runs.
        let dir = std::env::temp_dir().join(format!("ptth-fuzz-discover-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("fuzz/fuzz_targets")).unwrap();
        fs::write(dir.join("fuzz/fuzz_targets/declared.rs"), "").unwrap();
        fs::write(dir.join("fuzz/fuzz_targets/forgotten.rs"), "").unwrap();
        fs::write(
            dir.join("fuzz/Cargo.toml"),
            "[[bin]]\nname = \"declared\"\npath = \"fuzz_targets/declared.rs\"\n",
        )
        .unwrap();
        let err = targets(&dir).unwrap_err().to_string();
        assert!(
            err.contains("forgotten") && !err.contains("\"declared\""),
            "{err}"
        );
        fs::remove_file(dir.join("fuzz/fuzz_targets/forgotten.rs")).unwrap();
        assert_eq!(targets(&dir).unwrap(), vec!["declared".to_string()]);
        let _ = fs::remove_dir_all(&dir);
    }
}
