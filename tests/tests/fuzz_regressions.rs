//! Replays the checked-in fuzz inputs (`tests/data/fuzz/<target>/*`) through the harness
//! functions the `fuzz/` targets call, so seeds and past crashes run in ordinary `cargo test`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

/// A harness function: arbitrary bytes in, a panic on a broken invariant.
type Harness = fn(&[u8]);

/// Each fuzz target (`fuzz/fuzz_targets/<name>.rs`) and the harness function it calls.
const TARGETS: &[(&str, Harness)] = &[
    ("alpn_header", ptth_core::fuzz_harness::fuzz_alpn),
    ("setup_request", ptth_core::fuzz_harness::fuzz_setup_request),
    (
        "setup_response",
        ptth_core::fuzz_harness::fuzz_setup_response,
    ),
    ("well_known_uri", ptth_core::fuzz_harness::fuzz_well_known),
    ("quarter_stream_id", ptth_core::fuzz_harness::fuzz_qsid),
    ("capsule_stream", ptth_core::fuzz_harness::fuzz_capsules),
    (
        "reverse_connect_capsule",
        ptth_core::fuzz_harness::fuzz_reverse_connect_capsule,
    ),
    (
        "reverse_connect_setup",
        ptth_core::fuzz_harness::fuzz_reverse_setup,
    ),
    ("origin_frame", ptth_h2::fuzz_harness::fuzz_origin_frame),
    (
        "authorize_claim",
        ptth_auth::fuzz_harness::fuzz_authorize_claim,
    ),
    ("bearer_token", ptth_auth::fuzz_harness::fuzz_bearer_token),
    (
        "challenge_answer",
        ptth_auth::fuzz_harness::fuzz_challenge_answer,
    ),
    ("grants_toml", ptth_auth::fuzz_harness::fuzz_grants_toml),
    (
        "qpack_field_section",
        ptth_h3::qpack::fuzz_harness::fuzz_qpack,
    ),
    ("h3_frames", ptth_h3::frame::fuzz_harness::fuzz_frames),
];

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/fuzz")
}

fn inputs(target: &str) -> Vec<PathBuf> {
    let dir = data_dir().join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_fuzz_input_replays_without_panicking() {
    let mut failures = Vec::new();
    for &(target, harness) in TARGETS {
        let files = inputs(target);
        assert!(
            !files.is_empty(),
            "tests/data/fuzz/{target}/ has no inputs; seed it so this test is not vacuous"
        );
        for file in files {
            let data = std::fs::read(&file).unwrap();
            if catch_unwind(AssertUnwindSafe(|| harness(&data))).is_err() {
                failures.push(file.display().to_string());
            }
        }
    }
    assert!(failures.is_empty(), "fuzz inputs that panic: {failures:#?}");
}

#[test]
fn every_data_directory_names_a_target() {
    for entry in std::fs::read_dir(data_dir()).unwrap() {
        let name = entry.unwrap().file_name();
        let name = name.to_string_lossy();
        assert!(
            TARGETS.iter().any(|&(t, _)| t == name),
            "tests/data/fuzz/{name}/ matches no fuzz target"
        );
    }
}

#[test]
fn every_target_has_a_fuzz_target_file() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/fuzz_targets");
    for &(target, _) in TARGETS {
        let file = dir.join(format!("{target}.rs"));
        assert!(file.is_file(), "{} is missing", file.display());
    }
}
