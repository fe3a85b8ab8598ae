//! `cargo xtask interop [--quick]`: every mechanism × public client × origin authentication
//! method through one gateway, then the request-smuggling battery; writes `docs/interop.md`.
//!
//! Builds the debug binaries, starts `ptth-gateway --dev` in a temp dir, one `--hello` origin
//! per (mechanism, authentication method) on `<mechanism>.localhost`, one method at a time,
//! and two proxy-mode origins (`upgrade-h1` and `rh2`) in front of counting upstreams for
//! the smuggling battery. Every TCP and QUIC mechanism is a row. Public clients are real
//! tools: curl (HTTP/1.1 cleartext and TLS, HTTP/2 over TLS, h2c prior knowledge), h2load
//! (h2c, HTTP/2 over TLS, HTTP/1.1) and our own `ptth-h3-client` (`get` and `load` over
//! HTTP/3 to the public UDP endpoint). Reverse CONNECT has a row per control-channel HTTP
//! version: an origin offering a TCP echo, reached through a `[[tcp]]` port mapping.
//! `--quick` runs rh2, upgrade-h1, connect-h2 and rh3 ×
//! curl HTTP/1.1, curl HTTP/2 and `ptth-h3-client get` plus the reverse CONNECT rows and the
//! whole smuggling battery, and writes nothing.

mod connect;
mod reverse_connect;
mod smuggle;

use crate::procs::{self, Children, Credential, Gateway, TempDir};
use anyhow::{bail, Context, Result};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// An origin authentication method: the interop matrix has one row per mechanism and method
/// that applies to it. Add a method here and every client runs against it.
#[derive(Debug)]
struct AuthMethod {
    /// The report's label.
    label: &'static str,
    credential: Credential,
    applies: fn(&str) -> bool,
}

const AUTH_METHODS: &[AuthMethod] = &[
    AuthMethod {
        label: "bearer token",
        credential: Credential::Bearer,
        // draft-bt requires a client certificate, so h2-reverse and h3-reverse have no
        // token-only row.
        applies: |m| !matches!(m, "h2-reverse" | "h3-reverse"),
    },
    AuthMethod {
        label: "client certificate",
        credential: Credential::ClientCert,
        applies: |_| true,
    },
    AuthMethod {
        label: "HTTP Basic",
        credential: Credential::Basic,
        // Sent wherever a token is: the setup request's `Authorization`, or the
        // `ptth-authorization` answer on rh1/rh2/rh3. draft-bt needs a certificate.
        applies: |m| !matches!(m, "h2-reverse" | "h3-reverse"),
    },
    AuthMethod {
        label: "Ed25519 signed challenge",
        credential: Credential::SigningKey,
        // The challenge is the ALPN-only mechanisms' authorisation request (Potato §5.2);
        // h2-reverse and h3-reverse need a certificate besides, which their own rows cover.
        applies: |m| matches!(m, "rh1" | "rh2" | "rh3"),
    },
];

/// A public client.
#[derive(Debug, Clone, Copy)]
enum Client {
    /// curl with `flag` (`--http1.1`, `--http2`, `--http2-prior-knowledge`), expecting
    /// `%{http_version}` to be `version`.
    Curl {
        tls: bool,
        flag: &'static str,
        version: &'static str,
    },
    /// h2load, HTTP/2 unless `h1`.
    H2load { tls: bool, h1: bool },
    /// `ptth-h3-client get`: HTTP/3 to the public UDP endpoint, checked like curl.
    H3Get,
    /// `ptth-h3-client load`: HTTP/3, counted like h2load.
    H3Load,
}

const CLIENTS: &[(&str, Client)] = &[
    (
        "curl h1",
        Client::Curl {
            tls: false,
            flag: "--http1.1",
            version: "1.1",
        },
    ),
    (
        "curl h1 TLS",
        Client::Curl {
            tls: true,
            flag: "--http1.1",
            version: "1.1",
        },
    ),
    (
        "curl h2 TLS",
        Client::Curl {
            tls: true,
            flag: "--http2",
            version: "2",
        },
    ),
    (
        "curl h2c",
        Client::Curl {
            tls: false,
            flag: "--http2-prior-knowledge",
            version: "2",
        },
    ),
    (
        "h2load h2c",
        Client::H2load {
            tls: false,
            h1: false,
        },
    ),
    (
        "h2load h2 TLS",
        Client::H2load {
            tls: true,
            h1: false,
        },
    ),
    (
        "h2load h1",
        Client::H2load {
            tls: false,
            h1: true,
        },
    ),
    ("ptth-h3-client get", Client::H3Get),
    ("ptth-h3-client load", Client::H3Load),
];

const QUICK_MECHANISMS: &[&str] = &["rh2", "upgrade-h1", "connect-h2", "rh3"];
const QUICK_CLIENTS: &[&str] = &["curl h1", "curl h2 TLS", "ptth-h3-client get"];

/// The POST /echo body size.
const ECHO_BYTES: usize = 300 * 1024;
/// h2load: requests, clients, streams per client.
const H2LOAD_N: usize = 200;
const H2LOAD_C: usize = 4;
const H2LOAD_M: usize = 8;

/// Smuggling-battery failures known today: (case, via mechanism, why). They are shown in the
/// report but do not fail the run. The list may only shrink: a listed case that passes fails
/// the run until its entry is removed.
const KNOWN_FAILURES: &[(&str, &str, &str)] = &[];

/// Everything a cell needs.
#[derive(Debug)]
struct Env {
    gw: Gateway,
    bin: PathBuf,
    ca: PathBuf,
    body: PathBuf,
    body_sha: String,
}

pub fn run(root: &Path, args: &[String]) -> Result<()> {
    let quick = args.iter().any(|a| a == "--quick");
    if let Some(a) = args.iter().find(|a| *a != "--quick") {
        bail!("unknown argument {a:?}; usage: cargo xtask interop [--quick]");
    }
    procs::require_tool("curl", "apt-get install curl")?;
    procs::require_tool("h2load", "apt-get install nghttp2-client")?;
    crate::run(root, "cargo", &["build", "--workspace", "--bins"])?;
    // Timed from here: the build is not part of the run.
    let started = Instant::now();
    let bin = procs::target_dir(root).join("debug");
    let tmp = TempDir::new("interop")?;
    let dev = tmp.0.join("dev");
    let mut children = Children::default();
    // `--dev` grants the token, certificate and signing key; HTTP Basic needs a grant.
    let basic_config = procs::write_basic_grant(&tmp.0, &dev)?;
    let gw = procs::start_gateway(
        &mut children,
        &bin,
        &dev,
        "127.0.0.1:0",
        &["--config", &basic_config.to_string_lossy()],
    )?;

    let mechanisms: Vec<&'static str> = if quick {
        QUICK_MECHANISMS.to_vec()
    } else {
        procs::MECHANISMS
            .iter()
            .chain(procs::QUIC_MECHANISMS)
            .copied()
            .collect()
    };
    let clients: Vec<(&str, Client)> = CLIENTS
        .iter()
        .copied()
        .filter(|(name, _)| !quick || QUICK_CLIENTS.contains(name))
        .collect();
    // The smuggling battery's origins: proxy mode in front of counting upstreams, one over
    // reversed HTTP/1.1 (where a framing mistake would smuggle) and one over HTTP/2.
    let mut smuggle_targets = Vec::new();
    for m in ["upgrade-h1", "rh2"] {
        let counter = smuggle::Counter::start()?;
        let host = format!("smuggle-{m}.localhost");
        let mut cmd =
            procs::origin_command(&bin, &gw, &dev, m, &host, procs::default_credential(m));
        cmd.args(["--upstream", &format!("http://{}", counter.addr)]);
        children.spawn(&format!("origin {host}"), &mut cmd)?;
        smuggle_targets.push((m, host, counter));
    }

    for (_, host, _) in &smuggle_targets {
        procs::wait_ready(gw.listen, host, Duration::from_secs(30))
            .with_context(|| format!("exited: {:?}", children.exited()))?;
    }

    let body = tmp.0.join("body.bin");
    std::fs::write(&body, procs::pseudo_random(ECHO_BYTES, 0x5eed))?;
    let body_sha = procs::output(Command::new("sha256sum").arg(&body))?
        .split_whitespace()
        .next()
        .context("sha256sum output")?
        .to_string();
    let env = Env {
        gw,
        bin: bin.clone(),
        ca: dev.join("ca.pem"),
        body,
        body_sha,
    };

    // The matrix.
    let mut failures = Vec::new();
    let mut table = String::new();
    let _ = write!(table, "| mechanism | origin auth |");
    for (name, _) in &clients {
        let _ = write!(table, " {name} |");
    }
    let _ = write!(table, "\n|---|---|");
    for _ in &clients {
        let _ = write!(table, "---|");
    }
    table.push('\n');
    // One authentication method at a time, so every origin can use `<mechanism>.localhost`
    // (the dev certificate names those; its `*.localhost` entry does not verify in OpenSSL,
    // which wants two labels after a wildcard) and each row proves its own method.
    for auth in AUTH_METHODS {
        let rows: Vec<&str> = mechanisms
            .iter()
            .copied()
            .filter(|m| (auth.applies)(m))
            .collect();
        let mut pids = Vec::new();
        for m in &rows {
            let host = format!("{m}.localhost");
            let mut cmd = procs::origin_command(&bin, &env.gw, &dev, m, &host, auth.credential);
            cmd.arg("--hello");
            if procs::is_h1(m) {
                cmd.args(["--connections", &H2LOAD_C.to_string()]);
            }
            pids.push(children.spawn(&format!("origin {host} ({})", auth.label), &mut cmd)?);
        }
        for m in &rows {
            let ready = procs::wait_ready(
                env.gw.listen,
                &format!("{m}.localhost"),
                Duration::from_secs(20),
            );
            let _ = write!(table, "| {m} | {} |", auth.label);
            for (name, client) in &clients {
                let result = match &ready {
                    Ok(()) => run_cell(&env, &format!("{m}.localhost"), *client),
                    Err(e) => Err(anyhow::anyhow!("the origin never served: {e:#}")),
                };
                let cell = match result {
                    Ok(()) => "ok",
                    Err(e) => {
                        failures.push(format!("{m} / {} / {name}: {e:#}", auth.label));
                        "**FAIL**"
                    }
                };
                let _ = write!(table, " {cell} |");
            }
            table.push('\n');
        }
        // SIGTERM, so the QUIC origins close their connections instead of leaving them
        // registered until the gateway's idle timeout while the next method's origins serve
        // the same hosts.
        for pid in pids {
            children.terminate(pid);
        }
    }
    // Reverse CONNECT: one origin per control-channel HTTP version, a TCP echo each.
    let (rc_table, rc_failures) = reverse_connect::run(&bin, &mut children)?;
    failures.extend(rc_failures);
    println!("\nInterop matrix (each curl and ptth-h3-client get cell: GET / and POST /echo of {} KiB with its SHA-256; each h2load and ptth-h3-client load cell: {H2LOAD_N} requests all 2xx)\n", ECHO_BYTES / 1024);
    println!("{table}");

    // The smuggling battery.
    let mut known_failures = Vec::new();
    let mut smuggle_table = String::new();
    let _ = write!(
        smuggle_table,
        "| case | sent from a public client | expected |"
    );
    for (m, _, _) in &smuggle_targets {
        let _ = write!(smuggle_table, " via {m}: answer, forwarded |");
    }
    let _ = write!(smuggle_table, "\n|---|---|---|");
    for _ in &smuggle_targets {
        let _ = write!(smuggle_table, "---|");
    }
    smuggle_table.push('\n');
    for case in smuggle::CASES {
        let _ = write!(
            smuggle_table,
            "| `{}` | {} | {} |",
            case.id,
            case.what,
            smuggle::expectation(case)
        );
        for (m, host, counter) in &smuggle_targets {
            let r = smuggle::run_case(case, env.gw.listen, host, counter);
            let known = KNOWN_FAILURES
                .iter()
                .find(|(id, via, _)| *id == case.id && via == m);
            let mark = match (r.problems.is_empty(), known) {
                (true, None) => "ok",
                (true, Some(_)) => {
                    failures.push(format!(
                        "smuggling {} via {m} passes now: remove it from KNOWN_FAILURES in \
                         xtask/src/interop.rs",
                        case.id
                    ));
                    "ok (listed as known)"
                }
                (false, Some((_, _, why))) => {
                    known_failures.push(format!(
                        "`{}` via {m}: {}. Why: {why}",
                        case.id,
                        r.problems.join("; ")
                    ));
                    "**known failure**"
                }
                (false, None) => {
                    for p in &r.problems {
                        failures.push(format!("smuggling {} via {m}: {p}", case.id));
                    }
                    "**FAIL**"
                }
            };
            let _ = write!(smuggle_table, " {mark}: {}, {} |", r.answer, r.forwarded);
        }
        smuggle_table.push('\n');
    }
    println!("Reverse CONNECT (draft-rosomakho-masque-reverse-connect): TCP services\n");
    println!("{rc_table}");
    println!("Request-smuggling battery (raw TCP to the cleartext listener; forwarded = requests the counting upstream received)\n");
    println!("{smuggle_table}");

    // Public CONNECT: proxy clients reach a TCP service behind an origin.
    let connect_table = connect::rows(&bin, &mut failures)?;
    println!(
        "Public CONNECT (a TCP service behind an origin, reached through the gateway as a proxy)\n"
    );
    println!("{connect_table}");

    for k in &known_failures {
        eprintln!("KNOWN {k}");
    }
    let exited = children.exited();
    if !exited.is_empty() {
        failures.push(format!("processes exited during the run: {exited:?}"));
    }
    let elapsed = started.elapsed();
    if quick {
        eprintln!("(--quick: docs/interop.md not written)");
    } else {
        let tables = Tables {
            matrix: &table,
            reverse_connect: &rc_table,
            smuggle: &smuggle_table,
            connect: &connect_table,
        };
        let doc = render(&tables, &failures, &known_failures, &clients, elapsed);
        std::fs::write(root.join("docs").join("interop.md"), doc)
            .context("writing docs/interop.md")?;
        eprintln!("wrote docs/interop.md");
    }
    eprintln!("interop took {:.1} s", elapsed.as_secs_f64());
    if !failures.is_empty() {
        for f in &failures {
            eprintln!("FAIL {f}");
        }
        bail!("{} interop failure(s)", failures.len());
    }
    eprintln!("xtask interop: all green");
    Ok(())
}

/// Runs one client against `host`.
fn run_cell(env: &Env, host: &str, client: Client) -> Result<()> {
    match client {
        Client::Curl { tls, flag, version } => {
            let (code, got_version, _) = curl(env, host, tls, flag, "/", None)?;
            if code != 200 || got_version != version {
                bail!("GET /: {code} over HTTP/{got_version}");
            }
            let (code, got_version, body) = curl(env, host, tls, flag, "/echo", Some(&env.body))?;
            if code != 200 || got_version != version {
                bail!("POST /echo: {code} over HTTP/{got_version}");
            }
            let want = format!("\"bytes\":{ECHO_BYTES},\"sha256\":\"{}\"", env.body_sha);
            if !body.contains(&want) {
                bail!("POST /echo: the origin saw {}", body.trim());
            }
            Ok(())
        }
        Client::H3Get => {
            let (code, _) = h3_get(env, host, "/", None)?;
            if code != 200 {
                bail!("GET /: {code} over HTTP/3");
            }
            let (code, body) = h3_get(env, host, "/echo", Some(&env.body))?;
            if code != 200 {
                bail!("POST /echo: {code} over HTTP/3");
            }
            let want = format!("\"bytes\":{ECHO_BYTES},\"sha256\":\"{}\"", env.body_sha);
            if !body.contains(&want) {
                bail!("POST /echo: the origin saw {}", body.trim());
            }
            Ok(())
        }
        Client::H2load { .. } | Client::H3Load => {
            let out = match client {
                Client::H2load { tls, h1 } => h2load(env, host, tls, h1)?,
                _ => h3_load(env, host)?,
            };
            let succeeded = number_before(&out, "requests:", " succeeded");
            let two_xx = number_before(&out, "status codes:", " 2xx");
            if succeeded != Some(H2LOAD_N) || two_xx != Some(H2LOAD_N) {
                let summary: Vec<&str> = out
                    .lines()
                    .filter(|l| l.starts_with("requests:") || l.starts_with("status codes:"))
                    .collect();
                bail!("load: {}", summary.join("; "));
            }
            Ok(())
        }
    }
}

/// The gateway port and URL for `host`.
fn url(env: &Env, host: &str, tls: bool, path: &str) -> (u16, String) {
    let (scheme, port) = if tls {
        ("https", env.gw.listen_tls.port())
    } else {
        ("http", env.gw.listen.port())
    };
    (port, format!("{scheme}://{host}:{port}{path}"))
}

/// Runs curl; returns the status, the HTTP version and the body.
fn curl(
    env: &Env,
    host: &str,
    tls: bool,
    flag: &str,
    path: &str,
    post: Option<&Path>,
) -> Result<(u16, String, String)> {
    let (port, url) = url(env, host, tls, path);
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "30", flag])
        .args(["--resolve", &format!("{host}:{port}:127.0.0.1")])
        .arg("--cacert")
        .arg(&env.ca)
        .args(["-w", "\n%{http_code} %{http_version}"]);
    if let Some(file) = post {
        cmd.args(["-H", "content-type: application/octet-stream"])
            .arg("--data-binary")
            .arg(format!("@{}", file.display()));
    }
    let out = procs::output(cmd.arg(url))?;
    let (body, last) = out.rsplit_once('\n').unwrap_or(("", &out));
    let mut parts = last.split_whitespace();
    let code = parts.next().and_then(|c| c.parse().ok()).unwrap_or(0);
    let version = parts.next().unwrap_or("").to_string();
    Ok((code, version, body.to_string()))
}

/// Runs h2load; returns its output.
fn h2load(env: &Env, host: &str, tls: bool, h1: bool) -> Result<String> {
    let (port, url) = url(env, host, tls, "/");
    let mut cmd = Command::new("h2load");
    cmd.args([
        "-n",
        &H2LOAD_N.to_string(),
        "-c",
        &H2LOAD_C.to_string(),
        "-m",
        &if h1 { 1 } else { H2LOAD_M }.to_string(),
        "-T",
        "30",
    ])
    .args(["--connect-to", &format!("127.0.0.1:{port}")]);
    if h1 {
        cmd.arg("--h1");
    }
    procs::output(cmd.arg(url))
}

/// `https://HOST:TLS/path` and the `--cacert`/`--connect-to` arguments of ptth-h3-client.
fn h3_command(env: &Env, host: &str, subcommand: &str, path: &str) -> Command {
    let (port, url) = url(env, host, true, path);
    let mut cmd = Command::new(env.bin.join("ptth-h3-client"));
    cmd.args([subcommand, &url])
        .arg("--cacert")
        .arg(&env.ca)
        .args(["--connect-to", &format!("127.0.0.1:{port}")]);
    cmd
}

/// Runs `ptth-h3-client get -w`; returns the status and the body.
fn h3_get(env: &Env, host: &str, path: &str, post: Option<&Path>) -> Result<(u16, String)> {
    let mut cmd = h3_command(env, host, "get", path);
    cmd.args(["--max-time", "30", "-w"]);
    if let Some(file) = post {
        cmd.args(["-H", "content-type: application/octet-stream"])
            .arg("--data-binary")
            .arg(format!("@{}", file.display()));
    }
    let out = procs::output(&mut cmd)?;
    let (body, last) = out.rsplit_once('\n').unwrap_or(("", &out));
    let mut parts = last.split_whitespace();
    let code = parts.next().and_then(|c| c.parse().ok()).unwrap_or(0);
    if parts.next() != Some("3") {
        bail!("ptth-h3-client did not report HTTP/3: {last:?}");
    }
    Ok((code, body.to_string()))
}

/// Runs `ptth-h3-client load`; returns its h2load-style output.
fn h3_load(env: &Env, host: &str) -> Result<String> {
    let mut cmd = h3_command(env, host, "load", "/");
    cmd.args([
        "-n",
        &H2LOAD_N.to_string(),
        "-c",
        &H2LOAD_C.to_string(),
        "-m",
        &H2LOAD_M.to_string(),
        "-T",
        "30",
    ]);
    procs::output(&mut cmd)
}

/// The number just before `suffix` on the line starting with `line_prefix`.
fn number_before(out: &str, line_prefix: &str, suffix: &str) -> Option<usize> {
    let line = out
        .lines()
        .find(|l| l.trim_start().starts_with(line_prefix))?;
    let before = &line[..line.find(suffix)?];
    before.split_whitespace().last()?.parse().ok()
}

/// The tables of one run, each already rendered as Markdown.
struct Tables<'a> {
    matrix: &'a str,
    reverse_connect: &'a str,
    smuggle: &'a str,
    connect: &'a str,
}

fn render(
    tables: &Tables<'_>,
    failures: &[String],
    known_failures: &[String],
    clients: &[(&str, Client)],
    elapsed: Duration,
) -> String {
    let Tables {
        matrix: table,
        reverse_connect: rc_table,
        smuggle: smuggle_table,
        connect: connect_table,
    } = *tables;
    let mut doc = String::new();
    let _ = writeln!(
        doc,
        "<!-- Generated by `cargo xtask interop`; do not edit by hand. -->\n\n\
         # Interoperability\n\n\
         Generated {} by `cargo xtask interop` in {:.0} s ({}, {}).\n",
        procs::today(),
        elapsed.as_secs_f64(),
        tool_version("curl", "--version"),
        tool_version("h2load", "--version"),
    );
    let _ = writeln!(
        doc,
        "One `ptth-gateway --dev DIR` (debug build), one `ptth-origin --hello` per mechanism \
         and origin authentication method on `<mechanism>.localhost`, one method at a time \
         (the credentials `--dev` writes and grants: token, origin certificate, Ed25519 key \
         `dev`; and HTTP Basic, `--basic-user {user} --basic-password-file DIR/basic-password`, \
         granted by a `[[grant]]` with `basic-user`/`basic-password` in the gateway's \
         `--config`); HTTP/1.1 mechanisms with `--connections {H2LOAD_C}`; all on loopback. \
         Origins are stopped with SIGTERM between methods, so QUIC connections close \
         instead of idling out. Bearer and Basic credentials travel in the setup request's \
         `Authorization` or, on rh1, rh2 and rh3, in the answer to the gateway's \
         authorisation request; h2-reverse and h3-reverse (draft-bt) need a client \
         certificate, so they have only that row. Every cell is a real public client:\n",
        user = procs::BASIC_USER,
    );
    let _ = writeln!(doc, "| client | command (per cell) |\n|---|---|");
    for (name, client) in clients {
        let cmd = match client {
            Client::Curl { tls, flag, .. } => {
                let (scheme, port) = if *tls {
                    ("https", "TLS")
                } else {
                    ("http", "PORT")
                };
                format!(
                    "`curl {flag} --cacert DIR/ca.pem --resolve HOST:{port}:127.0.0.1 {scheme}://HOST:{port}/` → 200; \
                     the same with `--data-binary @body` (300 KiB) to `/echo` → the origin's SHA-256 matches"
                )
            }
            Client::H2load { tls, h1 } => {
                let (scheme, port) = if *tls {
                    ("https", "TLS")
                } else {
                    ("http", "PORT")
                };
                let (m, flag) = if *h1 { (1, " --h1") } else { (H2LOAD_M, "") };
                format!(
                    "`h2load -n {H2LOAD_N} -c {H2LOAD_C} -m {m}{flag} --connect-to 127.0.0.1:{port} {scheme}://HOST:{port}/` → {H2LOAD_N} succeeded, {H2LOAD_N} 2xx"
                )
            }
            Client::H3Get => "`ptth-h3-client get --cacert DIR/ca.pem --connect-to 127.0.0.1:TLS -w https://HOST:TLS/` (HTTP/3 over UDP) → `200 3`; \
                 the same with `--data-binary @body` (300 KiB) to `/echo` → the origin's SHA-256 matches"
                .to_string(),
            Client::H3Load => format!(
                "`ptth-h3-client load -n {H2LOAD_N} -c {H2LOAD_C} -m {H2LOAD_M} --cacert DIR/ca.pem --connect-to 127.0.0.1:TLS https://HOST:TLS/` (HTTP/3 over UDP) → {H2LOAD_N} succeeded, {H2LOAD_N} 2xx"
            ),
        };
        let _ = writeln!(doc, "| {name} | {cmd} |");
    }
    let _ = writeln!(
        doc,
        "\n(h2load does not verify the gateway certificate; curl and ptth-h3-client verify it against the dev CA.)\n"
    );
    let _ = writeln!(doc, "## Matrix\n\n{table}");
    let _ = writeln!(
        doc,
        "## Reverse CONNECT: TCP services\n\n\
         A second `ptth-gateway --dev` with a `[[grant]]` that allows three services and a \
         `[[tcp]]` port mapping for each; one `ptth-origin --tcp-service echo-V=…` per \
         control-channel HTTP version V (`--service-transport V`), each in front of its own \
         TCP echo. A plain TCP client sends {} KiB through the mapping and checks every byte \
         comes back.\n\n{rc_table}",
        reverse_connect::ECHO_BYTES / 1024
    );
    let _ = writeln!(
        doc,
        "## Request smuggling\n\n\
         Each case is written byte for byte on a raw TCP connection to the public cleartext \
         listener (HTTP/2 cases as hand-built frames after the h2c preface; header blocks are \
         HPACK literals without Huffman, so every byte reaches the gateway as written). The \
         target host is served by a proxy-mode origin (`ptth-origin --upstream`) in front of \
         a counting HTTP/1.1 server run by xtask; *forwarded* is how many request heads that \
         server received. A case passes when the answer matches the expectation (rejected = \
         a 4xx, RST_STREAM, GOAWAY or close, never a 2xx), forwarded ≤ the expected number, \
         no `/smuggled/…` request and no bare CR, bare LF or folded line reached the \
         upstream. *AtMostOne* cases are those where RFC 9112 lets a recipient repair the \
         message (obs-fold, bare CR → SP; bare LF as a line end; Content-Length with \
         Transfer-Encoding processed as chunked and the connection closed) or where a body \
         error can only show after the head was forwarded.\n\n{smuggle_table}"
    );
    let _ = writeln!(
        doc,
        "## Public CONNECT\n\n\
         A gateway of its own with a `[[proxy-user]]` and a grant offering `hello=tcp/PORT`, an \
         origin with `--tcp-service hello=127.0.0.1:PORT` (reverse CONNECT), and a TCP service \
         run by xtask that answers any HTTP/1.1 request with a fixed body. curl opens a proxy \
         tunnel (`CONNECT svc:PORT` with `Proxy-Authorization: Basic`) through the gateway's \
         public listener and sends its request inside; a row passes when curl prints the \
         service's body.\n\n{connect_table}"
    );
    if !known_failures.is_empty() {
        let _ = writeln!(
            doc,
            "## Known failures\n\n\
             Listed in `KNOWN_FAILURES` (`xtask/src/interop.rs`); reported, not fatal. The \
             list may only shrink.\n"
        );
        for k in known_failures {
            let _ = writeln!(doc, "- {k}");
        }
        doc.push('\n');
    }
    if failures.is_empty() {
        let _ = writeln!(doc, "All other cells and cases passed.");
    } else {
        let _ = writeln!(doc, "## Failures\n");
        for f in failures {
            let _ = writeln!(doc, "- {f}");
        }
    }
    doc
}

/// The first line of `tool --version`, or `tool (version unknown)`.
fn tool_version(tool: &str, flag: &str) -> String {
    procs::output(Command::new(tool).arg(flag))
        .ok()
        .and_then(|o| o.lines().next().map(str::to_string))
        .map(|l| l.split(" (").next().unwrap_or(&l).to_string())
        .unwrap_or_else(|| format!("{tool} (version unknown)"))
}
