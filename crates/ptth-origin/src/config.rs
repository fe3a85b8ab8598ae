//! Origin configuration: command-line flags, optionally a TOML file with the same names.

use crate::OriginConfig;
use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// Command-line flags. Every flag may also be set in the `--config` TOML file; flags given on
/// the command line win.
#[derive(Debug, Parser, Default, Deserialize)]
#[command(
    name = "ptth-origin",
    version,
    about = "PTTH origin: dial out to a gateway and serve the requests it sends back"
)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Cli {
    /// The gateway's tunnel URL, e.g. https://gateway.example:4443
    #[arg(long)]
    pub gateway: Option<String>,
    /// Mechanism. Over TLS/TCP: rh1, rh2 (Potato), upgrade-h1, upgrade-h2 (PTTH Upgrade),
    /// connect-h2 (PTTH -01 extended CONNECT), h2-reverse (draft-bt), ptth10 (legacy
    /// PTTH/1.0). Over QUIC: rh3 (Potato), h3-reverse (draft-bt), options-h3 (PTTH -00
    /// OPTIONS), connect-h3 (PTTH -01 extended CONNECT over HTTP/3).
    #[arg(long)]
    pub mechanism: Option<String>,
    /// Host name this origin serves (repeatable), optionally with :port.
    #[arg(long = "host")]
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Path prefix this origin serves (repeatable; default /).
    #[arg(long = "path")]
    #[serde(default)]
    pub paths: Vec<String>,
    /// Forward every request to this local HTTP service (proxy mode).
    #[arg(long, conflicts_with = "hello")]
    pub upstream: Option<String>,
    /// Serve the built-in demo service.
    #[arg(long)]
    #[serde(default)]
    pub hello: bool,
    /// Bearer token presented to the gateway.
    #[arg(long, env = "PTTH_TOKEN")]
    pub token: Option<String>,
    /// Read the token from a file (e.g. the gateway's dev DIR/token).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Ed25519 key (PKCS#8 PEM) that signs the gateway's challenge on ALPN-only mechanisms.
    #[arg(long)]
    pub signing_key: Option<PathBuf>,
    /// The id the gateway's grant knows the signing key by.
    #[arg(long)]
    pub key_id: Option<String>,
    /// CA certificate (PEM) that signs the gateway's certificate; WebPKI roots otherwise.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Also require the gateway certificate's SPKI SHA-256 (hex) to be this.
    #[arg(long)]
    pub gateway_pin: Option<String>,
    /// Do not verify the gateway's certificate at all. Dangerous: logged at start and on
    /// every connection.
    #[arg(long)]
    #[serde(default)]
    pub danger_accept_any_gateway: bool,
    /// Client certificate chain (PEM) presented to the gateway (required by h2-reverse).
    #[arg(long)]
    pub cert: Option<PathBuf>,
    /// Private key of --cert.
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// Reversed connections kept open.
    #[arg(long)]
    pub connections: Option<usize>,
    /// Potato ALPN token set: potato-00 (rh*), potato-01 (ph*), potato-02 (UTF-8 tokens).
    #[arg(long)]
    pub alpn_set: Option<String>,
    /// SETTINGS_MAX_CONCURRENT_STREAMS on reversed HTTP/2.
    #[arg(long)]
    pub max_concurrent_streams: Option<u32>,
    /// Seconds requests in flight may run after SIGTERM or Ctrl-C.
    #[arg(long)]
    pub shutdown_grace: Option<f64>,
    /// For tests only (hidden): send these entries in the draft-bt ORIGIN frame instead
    /// of the origins of --host (repeatable).
    #[arg(long = "origin-frame", hide = true)]
    #[serde(skip)]
    pub origin_frame: Vec<String>,
    /// Read settings from a TOML file.
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Log format: human or json.
    #[arg(long)]
    pub log_format: Option<String>,
}

/// What the origin serves.
#[derive(Debug, Clone)]
pub enum Serve {
    /// `--upstream URL`.
    Upstream(http::Uri),
    /// `--hello`.
    Hello,
}

impl Cli {
    /// Merges the `--config` file under the flags and checks everything.
    pub fn resolve(mut self) -> Result<(OriginConfig, Serve)> {
        if let Some(path) = self.config.clone() {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            let file: Cli =
                toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
            self = self.or(file);
        }
        let gateway = self
            .gateway
            .ok_or_else(|| anyhow!("--gateway URL is required"))?
            .parse::<http::Uri>()
            .context("--gateway is not a URL")?;
        let mechanism = self
            .mechanism
            .ok_or_else(|| anyhow!("--mechanism is required"))?
            .parse()
            .map_err(|e| anyhow!("--mechanism: {e}"))?;
        let token = match (self.token, self.token_file) {
            (Some(t), _) => Some(t),
            (None, Some(f)) => Some(
                std::fs::read_to_string(&f)
                    .with_context(|| format!("reading {}", f.display()))?
                    .trim()
                    .to_string(),
            ),
            (None, None) => None,
        };
        let token = token
            .map(|t| ptth_auth::BearerToken::new(t).map_err(|e| anyhow!("--token: {e}")))
            .transpose()?;
        if token.is_none() && self.signing_key.is_none() && self.cert.is_none() {
            bail!("give a credential the gateway accepts: --token, --signing-key or --cert/--key");
        }
        let serve = match (self.upstream, self.hello) {
            (Some(u), false) => Serve::Upstream(u.parse().context("--upstream is not a URL")?),
            (None, true) => Serve::Hello,
            _ => bail!("give exactly one of --upstream URL or --hello"),
        };
        let mut c = OriginConfig::new(gateway, mechanism, self.hosts, token);
        c.signing_key = self.signing_key;
        if let Some(id) = self.key_id {
            c.key_id = id;
        }
        c.danger_accept_any_gateway = self.danger_accept_any_gateway;
        if let Some(pin) = self.gateway_pin {
            c.gateway_pin = Some(parse_pin(&pin)?);
        }
        if !self.paths.is_empty() {
            c.path_prefixes = self.paths;
        }
        if let Some(s) = self.alpn_set {
            c.alpn_set = s.parse().map_err(|e| anyhow!("--alpn-set: {e}"))?;
        }
        c.ca = self.ca;
        c.client_cert = self.cert;
        c.client_key = self.key;
        if let Some(n) = self.connections {
            if n == 0 {
                bail!("--connections must be at least 1");
            }
            c.connections = n;
        }
        if let Some(n) = self.max_concurrent_streams {
            c.max_concurrent_streams = n;
        }
        if let Some(s) = self.shutdown_grace {
            c.shutdown_grace = Duration::try_from_secs_f64(s)
                .map_err(|_| anyhow!("--shutdown-grace must be a non-negative number"))?;
        }
        if !self.origin_frame.is_empty() {
            c.origin_frame_override = Some(self.origin_frame);
        }
        Ok((c, serve))
    }

    fn or(self, f: Cli) -> Cli {
        Cli {
            gateway: self.gateway.or(f.gateway),
            mechanism: self.mechanism.or(f.mechanism),
            hosts: if self.hosts.is_empty() {
                f.hosts
            } else {
                self.hosts
            },
            paths: if self.paths.is_empty() {
                f.paths
            } else {
                self.paths
            },
            upstream: self.upstream.or(f.upstream),
            hello: self.hello || f.hello,
            token: self.token.or(f.token),
            token_file: self.token_file.or(f.token_file),
            ca: self.ca.or(f.ca),
            signing_key: self.signing_key.or(f.signing_key),
            key_id: self.key_id.or(f.key_id),
            gateway_pin: self.gateway_pin.or(f.gateway_pin),
            danger_accept_any_gateway: self.danger_accept_any_gateway
                || f.danger_accept_any_gateway,
            cert: self.cert.or(f.cert),
            key: self.key.or(f.key),
            connections: self.connections.or(f.connections),
            alpn_set: self.alpn_set.or(f.alpn_set),
            max_concurrent_streams: self.max_concurrent_streams.or(f.max_concurrent_streams),
            shutdown_grace: self.shutdown_grace.or(f.shutdown_grace),
            origin_frame: self.origin_frame,
            config: self.config,
            log_format: self.log_format.or(f.log_format),
        }
    }
}

/// Parses a SHA-256 pin written as 64 hex digits (colons allowed).
fn parse_pin(text: &str) -> Result<[u8; 32]> {
    let hex: String = text.chars().filter(|c| *c != ':').collect();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("--gateway-pin must be 64 hex digits (SHA-256 of the SubjectPublicKeyInfo)");
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)?;
    }
    Ok(out)
}

/// Sets up `tracing` output: human-readable by default, JSON lines with `json`.
pub fn init_logging(format: Option<&str>) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format.unwrap_or("human") {
        "human" => builder.init(),
        "json" => builder.json().init(),
        other => bail!("--log-format must be human or json, not {other:?}"),
    }
    Ok(())
}
