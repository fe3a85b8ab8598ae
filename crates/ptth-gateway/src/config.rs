//! Gateway configuration: command-line flags, optionally a TOML file with the same names.

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Command-line flags. Every flag may also be set in the `--config` TOML file (same names,
/// with `-` or `_`); flags given on the command line win.
#[derive(Debug, Parser, Default, Deserialize)]
#[command(
    name = "ptth-gateway",
    version,
    about = "PTTH gateway: origins dial in, public clients reach them"
)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Cli {
    /// Public cleartext listener: HTTP/1.1 and HTTP/2 with prior knowledge (h2c).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Public TLS listener (ALPN h2, http/1.1), with the gateway certificate.
    #[arg(long)]
    pub listen_tls: Option<SocketAddr>,
    /// Tunnel listener where origins connect (TLS; every TCP mechanism on one port).
    #[arg(long)]
    pub tunnel: Option<SocketAddr>,
    /// The gateway's certificate chain (PEM).
    #[arg(long)]
    pub cert: Option<PathBuf>,
    /// The gateway's private key (PEM).
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// A bearer token origins may present (repeatable). Only its hash is kept in memory.
    #[arg(long = "token", env = "PTTH_TOKEN")]
    #[serde(default, alias = "token")]
    pub tokens: Vec<String>,
    /// CA (PEM) whose client certificates origins may present (grants with `cert-san`,
    /// `cert-subject`); h2-reverse needs client certificates.
    #[arg(long)]
    pub client_ca: Option<PathBuf>,
    /// Also accept client certificates chaining to the WebPKI roots.
    #[arg(long)]
    #[serde(default)]
    pub client_webpki: bool,
    /// Grants: who may serve which origins and paths (`[[grant]]` tables in the config file).
    #[arg(skip)]
    #[serde(default, rename = "grant")]
    pub grants: Vec<ptth_auth::GrantSpec>,
    /// Generate (or reuse) dev credentials in DIR: a CA, a localhost certificate, an origin
    /// client certificate and a token, and use them.
    #[arg(long)]
    pub dev: Option<PathBuf>,
    /// Read settings from a TOML file.
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Requests that may wait for a busy origin at once.
    #[arg(long)]
    pub queue_limit: Option<usize>,
    /// Seconds a request may wait for a busy origin before 503.
    #[arg(long)]
    pub queue_timeout: Option<f64>,
    /// Seconds an origin may take to send response headers before 504.
    #[arg(long)]
    pub request_timeout: Option<f64>,
    /// Log format: human or json.
    #[arg(long)]
    pub log_format: Option<String>,
    /// Workers (default: one per CPU). Each is a thread with its own single-threaded
    /// runtime and its own socket on every TCP listener, so a connection and the work it
    /// causes stay on one thread, and requests prefer origin connections on their own
    /// worker. `--threads 1` runs the whole gateway on one thread; see docs/operations.md.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Seconds an origin connection may take from accept to registration: TLS or QUIC
    /// handshake, setup request, authorisation exchange and ORIGIN frame (default 10).
    /// A connection that has not been admitted by then is closed.
    #[arg(long)]
    pub setup_timeout: Option<f64>,
    /// Origin connections that may be in setup at once (default 512); more are closed at
    /// accept.
    #[arg(long)]
    pub max_pending_setups: Option<usize>,
    /// Origin connections in setup at once from one source address (default 32).
    #[arg(long)]
    pub max_pending_setups_per_ip: Option<usize>,
    /// Seconds a public client has to send a request's header section, counted from the
    /// connection's start or the end of its last exchange; so also how long a public
    /// connection may sit idle between requests (default 30).
    #[arg(long)]
    pub public_header_timeout: Option<f64>,
    /// A proxy in front of the gateway (CIDR, or one address) whose `X-Forwarded-For`,
    /// `Forwarded`, `X-Forwarded-Proto`, `X-Forwarded-Host` and `X-Real-IP` are kept and
    /// appended to (repeatable; config key `trusted-proxies = ["10.0.0.0/8"]`). From any
    /// other peer those fields are replaced by what the gateway saw. Default: none.
    #[arg(long = "trusted-proxy", value_name = "CIDR")]
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Requests for one host that may wait for a busy origin at once (default 256), so one
    /// slow tenant cannot fill the whole `--queue-limit` queue.
    #[arg(long)]
    pub queue_limit_per_host: Option<usize>,
    /// Whether a request on the cleartext listener may reach an `https://` origin when no
    /// `http://` origin serves it (default true: a TLS terminator in front of the cleartext
    /// listener, and development). Requests over TLS never reach `http://` origins.
    #[arg(long, value_name = "BOOL", action = clap::ArgAction::Set)]
    pub cleartext_https_fallback: Option<bool>,
    /// Admin listener (HTTP/1.1; `/metrics`, `/healthz`, `/readyz`), e.g. `127.0.0.1:9090`.
    /// Off by default; never expose it publicly.
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<SocketAddr>,
    /// Access log: `on` (default; one line per request at target `ptth::access`), `off`, or
    /// `sample=N` (one request in N, and every 5xx).
    #[arg(long, value_name = "on|off|sample=N")]
    pub access_log: Option<String>,
    /// A host whose requests get their own `host` label in the metrics (repeatable; config
    /// key `metrics-hosts = ["app.example"]`). Others are counted as `other`. Default: none.
    #[arg(long = "metrics-host", value_name = "NAME")]
    #[serde(default)]
    pub metrics_hosts: Vec<String>,
    /// Whether `--config` was already merged in (so [`Cli::resolve`] reads it once).
    #[arg(skip)]
    #[serde(skip)]
    file_merged: bool,
}

/// The gateway's settled configuration.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Public cleartext listener.
    pub listen: SocketAddr,
    /// Public TLS listener.
    pub listen_tls: Option<SocketAddr>,
    /// Tunnel listener.
    pub tunnel: SocketAddr,
    /// Certificate chain file.
    pub cert: PathBuf,
    /// Private key file.
    pub key: PathBuf,
    /// Client CA file, if any.
    pub client_ca: Option<PathBuf>,
    /// Whether client certificates may chain to the WebPKI roots.
    pub client_webpki: bool,
    /// Who may serve what.
    pub grants: ptth_auth::Grants,
    /// The config file, re-read on SIGHUP.
    pub config_file: Option<PathBuf>,
    /// Grants that came from flags (`--token`, `--dev`); a reload keeps them.
    pub flag_grants: Vec<ptth_auth::Grant>,
    /// Wait-queue length.
    pub queue_limit: usize,
    /// Wait-queue timeout.
    pub queue_timeout: Duration,
    /// Response-header timeout.
    pub request_timeout: Duration,
    /// From accept to registration of an origin connection: handshake, setup request,
    /// authorisation exchange, ORIGIN frame.
    pub setup_timeout: Duration,
    /// Origin connections in setup at once.
    pub max_pending_setups: usize,
    /// Origin connections in setup at once from one source address.
    pub max_pending_setups_per_ip: usize,
    /// How long a public client may take to send a request's headers, and how long a public
    /// connection may sit idle between requests.
    pub public_header_timeout: Duration,
    /// Pseudonym in `Via`.
    pub via_name: String,
    /// Proxies whose forwarding fields are kept (`--trusted-proxy`, `trusted-proxies`).
    pub trusted_proxies: crate::forwarding::TrustedProxies,
    /// Wait-queue length per request host.
    pub queue_limit_per_host: usize,
    /// Whether cleartext requests may fall back to `https://` scopes.
    pub cleartext_https_fallback: bool,
    /// Worker threads, each with its own runtime and listening sockets (`--threads`;
    /// default one per CPU).
    pub workers: usize,
    /// The admin listener's address (`--admin`), if any.
    pub admin: Option<SocketAddr>,
    /// What the access log writes (`--access-log`).
    pub access_log: crate::access_log::AccessLogMode,
    /// Hosts with their own metrics label (`--metrics-host`).
    pub metrics_hosts: Vec<String>,
}

impl GatewayConfig {
    /// A configuration with defaults around the required parts.
    pub fn new(
        listen: SocketAddr,
        tunnel: SocketAddr,
        cert: PathBuf,
        key: PathBuf,
        grants: ptth_auth::Grants,
    ) -> Self {
        Self {
            listen,
            listen_tls: None,
            tunnel,
            cert,
            key,
            client_ca: None,
            client_webpki: false,
            grants,
            config_file: None,
            flag_grants: Vec::new(),
            queue_limit: 1024,
            queue_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            setup_timeout: Duration::from_secs(10),
            max_pending_setups: 512,
            max_pending_setups_per_ip: 32,
            public_header_timeout: Duration::from_secs(30),
            via_name: "ptth".to_string(),
            trusted_proxies: crate::forwarding::TrustedProxies::default(),
            queue_limit_per_host: 256,
            cleartext_https_fallback: true,
            workers: std::thread::available_parallelism().map_or(1, usize::from),
            admin: None,
            access_log: crate::access_log::AccessLogMode::On,
            metrics_hosts: Vec::new(),
        }
    }
}

impl Cli {
    /// Merges the `--config` file under the flags and settles defaults. Returns the config
    /// and, in dev mode, the dev files (so the binary can print how to use them).
    pub fn resolve(self) -> Result<(GatewayConfig, Option<crate::dev::DevFiles>)> {
        let this = self.merge_file()?;
        if let Some(0) = this.threads {
            bail!("--threads must be at least 1");
        }
        this.resolve_merged()
    }

    /// Merges the `--config` file under the flags (once), so the binary sees the file's
    /// settings (`log-format`) before it resolves the rest.
    ///
    /// # Errors
    ///
    /// The file cannot be read or is not valid TOML for these settings.
    pub fn merge_file(self) -> Result<Cli> {
        if self.file_merged {
            return Ok(self);
        }
        let mut this = self;
        if let Some(path) = this.config.clone() {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            let file: Cli =
                toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
            this = this.or(file);
        }
        this.file_merged = true;
        Ok(this)
    }

    fn resolve_merged(mut self) -> Result<(GatewayConfig, Option<crate::dev::DevFiles>)> {
        let mut dev_files = None;
        let mut tokens = self.tokens.clone();
        let mut extra_grants = Vec::new();
        if let Some(dir) = &self.dev {
            let files = crate::dev::ensure(dir)?;
            self.cert.get_or_insert(files.cert.clone());
            self.key.get_or_insert(files.key.clone());
            self.client_ca.get_or_insert(files.ca.clone());
            let t = std::fs::read_to_string(&files.token)?;
            tokens.push(t.trim().to_string());
            extra_grants = crate::dev::grants(&files)?;
            dev_files = Some(files);
        }
        let Some(listen) = self.listen else {
            bail!("--listen is required (the public listener address)")
        };
        let Some(tunnel) = self.tunnel else {
            bail!("--tunnel is required (where origins connect)")
        };
        let (Some(cert), Some(key)) = (self.cert, self.key) else {
            bail!("--cert and --key are required (or --dev DIR to generate them)")
        };
        let tokens = tokens
            .into_iter()
            .map(|t| ptth_auth::BearerToken::new(t).map_err(|e| anyhow::anyhow!("--token: {e}")))
            .collect::<Result<Vec<_>>>()?;
        let mut flag_grants = ptth_auth::Grants::from_tokens(&tokens).grants().to_vec();
        flag_grants.extend(extra_grants);
        let grants = merge_grants(&flag_grants, self.grants)?;
        if grants.is_empty() {
            bail!("no origin credential is configured: give --token SECRET, [[grant]] tables in --config, or --dev DIR; the gateway never accepts unauthenticated origins");
        }
        let mut c = GatewayConfig::new(listen, tunnel, cert, key, grants);
        c.listen_tls = self.listen_tls;
        c.client_ca = self.client_ca;
        c.client_webpki = self.client_webpki;
        c.config_file = self.config;
        c.flag_grants = flag_grants;
        if let Some(n) = self.queue_limit {
            c.queue_limit = n;
        }
        if let Some(s) = self.queue_timeout {
            c.queue_timeout = secs(s, "--queue-timeout")?;
        }
        if let Some(s) = self.request_timeout {
            c.request_timeout = secs(s, "--request-timeout")?;
        }
        if let Some(s) = self.setup_timeout {
            c.setup_timeout = positive_secs(s, "--setup-timeout")?;
        }
        if let Some(n) = self.max_pending_setups {
            c.max_pending_setups = at_least_one(n, "--max-pending-setups")?;
        }
        if let Some(n) = self.max_pending_setups_per_ip {
            c.max_pending_setups_per_ip = at_least_one(n, "--max-pending-setups-per-ip")?;
        }
        if let Some(s) = self.public_header_timeout {
            c.public_header_timeout = positive_secs(s, "--public-header-timeout")?;
        }
        c.trusted_proxies = crate::forwarding::TrustedProxies::parse(&self.trusted_proxies)
            .map_err(|e| anyhow::anyhow!("--trusted-proxy (config key trusted-proxies): {e}"))?;
        if let Some(n) = self.queue_limit_per_host {
            c.queue_limit_per_host = n;
        }
        if let Some(b) = self.cleartext_https_fallback {
            c.cleartext_https_fallback = b;
        }
        if let Some(n) = self.threads {
            c.workers = at_least_one(n, "--threads")?;
        }
        c.admin = self.admin;
        if let Some(mode) = &self.access_log {
            c.access_log = mode
                .parse()
                .map_err(|e| anyhow::anyhow!("--access-log (config key access-log): {e}"))?;
        }
        c.metrics_hosts = self.metrics_hosts;
        Ok((c, dev_files))
    }

    fn or(self, file: Cli) -> Cli {
        Cli {
            listen: self.listen.or(file.listen),
            listen_tls: self.listen_tls.or(file.listen_tls),
            tunnel: self.tunnel.or(file.tunnel),
            cert: self.cert.or(file.cert),
            key: self.key.or(file.key),
            tokens: if self.tokens.is_empty() {
                file.tokens
            } else {
                self.tokens
            },
            client_ca: self.client_ca.or(file.client_ca),
            client_webpki: self.client_webpki || file.client_webpki,
            grants: file.grants,
            dev: self.dev.or(file.dev),
            config: self.config,
            queue_limit: self.queue_limit.or(file.queue_limit),
            queue_timeout: self.queue_timeout.or(file.queue_timeout),
            request_timeout: self.request_timeout.or(file.request_timeout),
            log_format: self.log_format.or(file.log_format),
            threads: self.threads.or(file.threads),
            setup_timeout: self.setup_timeout.or(file.setup_timeout),
            max_pending_setups: self.max_pending_setups.or(file.max_pending_setups),
            max_pending_setups_per_ip: self
                .max_pending_setups_per_ip
                .or(file.max_pending_setups_per_ip),
            public_header_timeout: self.public_header_timeout.or(file.public_header_timeout),
            trusted_proxies: if self.trusted_proxies.is_empty() {
                file.trusted_proxies
            } else {
                self.trusted_proxies
            },
            queue_limit_per_host: self.queue_limit_per_host.or(file.queue_limit_per_host),
            cleartext_https_fallback: self
                .cleartext_https_fallback
                .or(file.cleartext_https_fallback),
            admin: self.admin.or(file.admin),
            access_log: self.access_log.or(file.access_log),
            metrics_hosts: if self.metrics_hosts.is_empty() {
                file.metrics_hosts
            } else {
                self.metrics_hosts
            },
            file_merged: self.file_merged,
        }
    }
}

/// Grants from flags (tokens, which may name any origin; dev credentials) and `[[grant]]`
/// tables, as one set.
fn merge_grants(
    from_flags: &[ptth_auth::Grant],
    specs: Vec<ptth_auth::GrantSpec>,
) -> Result<ptth_auth::Grants> {
    let mut all = from_flags.to_vec();
    all.extend(
        ptth_auth::Grants::from_specs(specs)
            .map_err(|e| anyhow::anyhow!("[[grant]]: {e}"))?
            .grants()
            .iter()
            .cloned(),
    );
    ptth_auth::Grants::new(all).map_err(|e| anyhow::anyhow!("grants: {e}"))
}

/// Re-reads the grants for SIGHUP: the config file's `[[grant]]` tables plus the grants that
/// came from flags (`--token`, `--dev`), which a reload keeps.
pub fn reload_grants(config: &GatewayConfig) -> Result<ptth_auth::Grants> {
    let mut all = config.flag_grants.clone();
    if let Some(path) = &config.config_file {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let file: Cli =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        all.extend(
            ptth_auth::Grants::from_specs(file.grants)
                .map_err(|e| anyhow::anyhow!("[[grant]]: {e}"))?
                .grants()
                .iter()
                .cloned(),
        );
    }
    ptth_auth::Grants::new(all).map_err(|e| anyhow::anyhow!("grants: {e}"))
}

fn secs(s: f64, flag: &str) -> Result<Duration> {
    Duration::try_from_secs_f64(s)
        .map_err(|_| anyhow::anyhow!("{flag} must be a non-negative number of seconds"))
}

/// A timeout that must be longer than zero: a zero deadline would close every connection.
fn positive_secs(s: f64, flag: &str) -> Result<Duration> {
    match secs(s, flag)? {
        d if d.is_zero() => bail!("{flag} must be more than 0 seconds"),
        d => Ok(d),
    }
}

fn at_least_one(n: usize, flag: &str) -> Result<usize> {
    if n == 0 {
        bail!("{flag} must be at least 1");
    }
    Ok(n)
}

/// Sets up `tracing` output: human-readable by default, JSON lines with `json`.
pub fn init_logging(format: Option<&str>) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only for a person at a terminal: journald and log files get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format.unwrap_or("human") {
        "human" => builder.init(),
        "json" => builder.json().init(),
        other => bail!("--log-format must be human or json, not {other:?}"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_file_sets_what_flags_do_and_flags_win() {
        let dir = std::env::temp_dir().join(format!("ptth-gw-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("gateway.toml");
        std::fs::write(
            &file,
            r#"
listen = "127.0.0.1:8080"
tunnel = "127.0.0.1:4443"
cert = "/etc/ptth/gateway.pem"
key = "/etc/ptth/gateway.key"
tokens = ["from-file"]
queue-limit = 7
request-timeout = 2.5
threads = 3
setup-timeout = 4
max-pending-setups = 100
max-pending-setups-per-ip = 5
public-header-timeout = 12.5
"#,
        )
        .unwrap();
        let cli = Cli::try_parse_from([
            "ptth-gateway",
            "--config",
            file.to_str().unwrap(),
            "--listen",
            "127.0.0.1:9090",
        ])
        .unwrap();
        let cli = cli.merge_file().unwrap();
        assert_eq!(
            cli.threads,
            Some(3),
            "the binary reads threads before resolving"
        );
        let (c, dev) = cli.resolve().unwrap();
        assert!(dev.is_none());
        assert_eq!(c.listen, "127.0.0.1:9090".parse().unwrap(), "the flag wins");
        assert_eq!(c.tunnel, "127.0.0.1:4443".parse().unwrap());
        assert_eq!(c.queue_limit, 7);
        assert_eq!(c.workers, 3, "threads = 3 means three workers");
        assert_eq!(c.request_timeout, Duration::from_millis(2500));
        assert_eq!(c.setup_timeout, Duration::from_secs(4));
        assert_eq!(c.max_pending_setups, 100);
        assert_eq!(c.max_pending_setups_per_ip, 5);
        assert_eq!(c.public_header_timeout, Duration::from_millis(12500));
        assert_eq!(c.grants.len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn setup_and_header_limits_default_and_refuse_zero() {
        let base = [
            "ptth-gateway",
            "--listen",
            "127.0.0.1:1",
            "--tunnel",
            "127.0.0.1:2",
            "--cert",
            "c",
            "--key",
            "k",
            "--token",
            "t",
        ];
        let (c, _) = Cli::try_parse_from(base).unwrap().resolve().unwrap();
        assert_eq!(c.setup_timeout, Duration::from_secs(10));
        assert_eq!(c.max_pending_setups, 512);
        assert_eq!(c.max_pending_setups_per_ip, 32);
        assert_eq!(c.public_header_timeout, Duration::from_secs(30));
        for (flag, value, error) in [
            (
                "--setup-timeout",
                "0",
                "--setup-timeout must be more than 0 seconds",
            ),
            (
                "--max-pending-setups",
                "0",
                "--max-pending-setups must be at least 1",
            ),
            (
                "--max-pending-setups-per-ip",
                "0",
                "--max-pending-setups-per-ip must be at least 1",
            ),
            (
                "--public-header-timeout",
                "0",
                "--public-header-timeout must be more than 0 seconds",
            ),
        ] {
            let mut args = base.to_vec();
            args.extend([flag, value]);
            let err = Cli::try_parse_from(args).unwrap().resolve().unwrap_err();
            assert_eq!(err.to_string(), error);
        }
    }

    #[test]
    fn unknown_keys_and_missing_credentials_are_errors() {
        let bad: Result<Cli, _> = toml::from_str("listen = \"127.0.0.1:1\"\nlisten_tls_typo = 1\n");
        assert!(
            bad.is_err(),
            "a typo in the config file is reported, not ignored"
        );
        let cli = Cli::try_parse_from([
            "ptth-gateway",
            "--listen",
            "127.0.0.1:1",
            "--tunnel",
            "127.0.0.1:2",
            "--cert",
            "c",
            "--key",
            "k",
        ])
        .unwrap();
        let err = cli.resolve().unwrap_err().to_string();
        assert!(
            err.contains("never accepts unauthenticated origins"),
            "{err}"
        );
    }

    #[test]
    fn trusted_proxies_come_from_flags_or_the_file_and_bad_cidrs_name_the_key() {
        let base = [
            "ptth-gateway",
            "--listen",
            "127.0.0.1:1",
            "--tunnel",
            "127.0.0.1:2",
            "--cert",
            "c",
            "--key",
            "k",
            "--token",
            "t",
        ];
        let (c, _) = Cli::try_parse_from(base).unwrap().resolve().unwrap();
        assert!(
            c.trusted_proxies.cidrs().is_empty(),
            "nobody is trusted by default"
        );

        let mut args = base.to_vec();
        args.extend(["--trusted-proxy", "10.0.0.0/8", "--trusted-proxy", "::1"]);
        let (c, _) = Cli::try_parse_from(args).unwrap().resolve().unwrap();
        let shown: Vec<String> = c
            .trusted_proxies
            .cidrs()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(shown, ["10.0.0.0/8", "::1/128"]);

        let file: Cli = toml::from_str("trusted-proxies = [\"192.0.2.0/24\"]\n").unwrap();
        let (c, _) = Cli::try_parse_from(base)
            .unwrap()
            .or(file)
            .resolve()
            .unwrap();
        assert!(c.trusted_proxies.contains("192.0.2.9".parse().unwrap()));

        let mut args = base.to_vec();
        args.extend(["--trusted-proxy", "10.0.0.1/8"]);
        let err = Cli::try_parse_from(args)
            .unwrap()
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--trusted-proxy (config key trusted-proxies)")
                && err.contains("host bits")
                && err.contains("10.0.0.0/8"),
            "{err}"
        );
    }

    #[test]
    fn routing_keys_default_and_parse() {
        let base = [
            "ptth-gateway",
            "--listen",
            "127.0.0.1:1",
            "--tunnel",
            "127.0.0.1:2",
            "--cert",
            "c",
            "--key",
            "k",
            "--token",
            "t0ken-for-routing-keys",
        ];
        let (c, _) = Cli::try_parse_from(base).unwrap().resolve().unwrap();
        assert_eq!(c.queue_limit_per_host, 256);
        assert!(c.cleartext_https_fallback);
        let mut args = base.to_vec();
        args.extend([
            "--queue-limit-per-host",
            "3",
            "--cleartext-https-fallback",
            "false",
        ]);
        let (c, _) = Cli::try_parse_from(args).unwrap().resolve().unwrap();
        assert_eq!(c.queue_limit_per_host, 3);
        assert!(!c.cleartext_https_fallback);
        let file: Cli =
            toml::from_str("queue-limit-per-host = 9\ncleartext-https-fallback = false\n").unwrap();
        assert_eq!(file.queue_limit_per_host, Some(9));
        assert_eq!(file.cleartext_https_fallback, Some(false));
    }
}
