//! Gateway configuration: command-line flags, optionally a TOML file with the same names.

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Command-line flags. Every flag may also be set in the `--config` TOML file under the
/// flag's own name (`--trusted-proxy` is `trusted-proxy = [...]`; docs/configuration.md lists
/// them all); flags given on the command line win. Relative paths in the file are relative to
/// the file's directory.
#[derive(Debug, Parser, Default, Deserialize)]
#[command(
    name = "ptth-gateway",
    version,
    about = "PTTH gateway: origins dial in, public clients reach them"
)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Cli {
    /// Public cleartext listener: HTTP/1.1 and HTTP/2 with prior knowledge (h2c). At least
    /// one of listen and listen-tls is required (default: none).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Public TLS listener (ALPN h2, http/1.1) and HTTP/3 on the same UDP port; certificates
    /// per host from `[[certificate]]` tables, else the gateway certificate (default: none).
    #[arg(long)]
    pub listen_tls: Option<SocketAddr>,
    /// Tunnel listener where origins connect (TLS; every TCP mechanism on one port; QUIC on
    /// the same UDP port). Required.
    #[arg(long)]
    pub tunnel: Option<SocketAddr>,
    /// The gateway's certificate chain (PEM): the tunnel's, and the public listeners' for
    /// hosts no `[[certificate]]` covers. Required unless --dev.
    #[arg(long)]
    pub cert: Option<PathBuf>,
    /// The private key of --cert (PEM). Required unless --dev.
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// A bearer token origins may present, for any host (repeatable). Only its hash is kept
    /// in memory. Prefer a `[[grant]]` with `token-sha256`: a flag shows in `ps` (default:
    /// none).
    #[arg(long = "token", env = "PTTH_TOKEN", hide_env_values = true)]
    #[serde(default, rename = "token", alias = "tokens")]
    pub tokens: Vec<String>,
    /// CA (PEM) whose client certificates origins may present (grants with `cert-san`,
    /// `cert-subject`); h2-reverse needs client certificates (default: none).
    #[arg(long)]
    pub client_ca: Option<PathBuf>,
    /// Also accept client certificates chaining to the WebPKI roots (default false).
    #[arg(long)]
    #[serde(default)]
    pub client_webpki: bool,
    /// Grants: who may serve which origins and paths (`[[grant]]` tables in the config file).
    #[arg(skip)]
    #[serde(default, rename = "grant")]
    pub grants: Vec<ptth_auth::GrantSpec>,
    /// Public certificates per host (`[[certificate]]` tables in the config file).
    #[arg(skip)]
    #[serde(default, rename = "certificate")]
    pub certificates: Vec<crate::tls::CertificateSpec>,
    /// Generate (or reuse) dev credentials in DIR: a CA, a localhost certificate, an origin
    /// client certificate and a token, and use them (default: none; for development only).
    #[arg(long)]
    pub dev: Option<PathBuf>,
    /// Read settings from a TOML file.
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Requests that may wait for a busy origin at once (default 1024).
    #[arg(long)]
    pub queue_limit: Option<usize>,
    /// Seconds a request may wait for a busy origin before 503 (default 10).
    #[arg(long)]
    pub queue_timeout: Option<f64>,
    /// Seconds an origin may take to send response headers before 504 (default 60).
    #[arg(long)]
    pub request_timeout: Option<f64>,
    /// Log format: human or json (default human).
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
    /// appended to (repeatable; config key `trusted-proxy = ["10.0.0.0/8"]`). From any
    /// other peer those fields are replaced by what the gateway saw. Default: none.
    #[arg(long = "trusted-proxy", value_name = "CIDR")]
    #[serde(default, rename = "trusted-proxy", alias = "trusted-proxies")]
    pub trusted_proxies: Vec<String>,
    /// Which forwarding fields origins get: `all` (default: `X-Forwarded-For`, `-Proto`,
    /// `-Host`, `X-Real-IP` and RFC 7239 `Forwarded`), `forwarded` (`Forwarded` only),
    /// `x-forwarded` (the `X-Forwarded-*` fields and `X-Real-IP` only) or `none`. The fields
    /// not chosen are removed from every request, a trusted proxy's too; a public client's
    /// values never pass. `ptth-client-port` goes with `X-Real-IP`, so origin routes with
    /// `proxy-protocol` need `all` or `x-forwarded`.
    #[arg(long, value_name = "all|forwarded|x-forwarded|none")]
    pub forwarding_fields: Option<String>,
    /// Requests for one host that may wait for a busy origin at once (default 256), so one
    /// slow tenant cannot fill the whole `--queue-limit` queue.
    #[arg(long)]
    pub queue_limit_per_host: Option<usize>,
    /// Whether a request on the cleartext listener may reach an `https://` origin when no
    /// `http://` origin serves it (default true: a TLS terminator in front of the cleartext
    /// listener, and development). Requests over TLS never reach `http://` origins.
    #[arg(long, value_name = "BOOL", action = clap::ArgAction::Set)]
    pub cleartext_https_fallback: Option<bool>,
    /// Seconds a stopping gateway (SIGTERM) gives requests in flight and its origin
    /// connections to finish before it exits anyway (default 30).
    #[arg(long)]
    pub shutdown_grace: Option<f64>,
    /// Seconds after start during which a request for a host with no origin yet waits
    /// (within the queue limits) for one to register instead of getting 503 (default 5).
    #[arg(long)]
    pub startup_grace: Option<f64>,
    /// Octets of a request body kept while the request is in flight to an origin, so a
    /// request the origin refused unprocessed (HTTP/2 GOAWAY above it or RST_STREAM
    /// REFUSED_STREAM, HTTP/3 H3_REQUEST_REJECTED) is sent once more on another connection
    /// (default 65536; 0 disables). A longer body is not replayed: 502.
    #[arg(long, value_name = "BYTES")]
    pub retry_body_limit: Option<usize>,
    /// Load and check the configuration (files readable, certificates and key parse, grants
    /// valid), print `config ok` or the error, and exit 0 or 1.
    #[arg(long)]
    #[serde(skip)]
    pub check_config: bool,
    /// Admin listener (HTTP/1.1; `/metrics`, `/healthz`, `/readyz`), e.g. `127.0.0.1:9090`.
    /// Off by default; never expose it publicly.
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<SocketAddr>,
    /// Access log: `on` (default; one line per request at target `ptth::access`), `off`, or
    /// `sample=N` (one request in N, and every 5xx).
    #[arg(long, value_name = "on|off|sample=N")]
    pub access_log: Option<String>,
    /// A host whose requests get their own `host` label in the metrics (repeatable; a list
    /// in the file: `metrics-host = ["app.example"]`). Others are counted as `other`.
    /// Default: none.
    #[arg(long = "metrics-host", value_name = "NAME")]
    #[serde(default, rename = "metrics-host")]
    pub metrics_hosts: Vec<String>,
    /// A TCP port mapping, `ADDR=GRANT/SERVICE` (repeatable; a list in the file, or
    /// `[[tcp]]` tables with `listen`, `grant`, `service`): each connection accepted on ADDR
    /// reaches SERVICE (named in GRANT's `services`) on an origin holding GRANT, over
    /// reverse CONNECT. Default: none.
    #[arg(long = "tcp-listen", value_name = "ADDR=GRANT/SERVICE")]
    #[serde(default, rename = "tcp-listen")]
    pub tcp_listen: Vec<String>,
    /// Port mappings as tables (`[[tcp]]` in the config file).
    #[arg(skip)]
    #[serde(default, rename = "tcp")]
    pub tcp: Vec<crate::tcp_listen::TcpMapping>,
    /// A UDP port mapping, `ADDR=GRANT/SERVICE` (repeatable; a list in the file, or
    /// `[[udp]]` tables with `listen`, `grant`, `service`): each client address sending to
    /// ADDR is one flow to SERVICE (a `udp` service in GRANT's `services`) on an origin
    /// holding GRANT, over reverse CONNECT; replies come back from ADDR. Default: none.
    #[arg(long = "udp-listen", value_name = "ADDR=GRANT/SERVICE")]
    #[serde(default, rename = "udp-listen")]
    pub udp_listen: Vec<String>,
    /// UDP port mappings as tables (`[[udp]]` in the config file).
    #[arg(skip)]
    #[serde(default, rename = "udp")]
    pub udp: Vec<crate::udp_listen::UdpMapping>,
    /// Seconds a mapped UDP flow may pass no datagram either way before it is closed and
    /// its client's next datagram makes a new flow (default 60, about what NATs keep a UDP
    /// mapping for).
    #[arg(long)]
    pub udp_idle_timeout: Option<f64>,
    /// Seconds from a mapped TCP connection's (or new UDP client's) arrival to its origin's
    /// accept; not accepted by then, the connection is closed (the UDP client's datagrams
    /// are dropped) (default 10).
    #[arg(long)]
    pub tcp_accept_timeout: Option<f64>,
    /// Seconds a mapped TCP flow may move no byte before it is closed (default 3600).
    #[arg(long)]
    pub tcp_idle_timeout: Option<f64>,
    /// Mapped TCP and UDP flows at once over one origin's control channel (default 1024).
    #[arg(long)]
    pub max_flows_per_origin: Option<usize>,
    /// Mapped flows at once through one port mapping: TCP connections, or UDP client
    /// addresses in a UDP mapping's flow table, whose new clients beyond it are dropped
    /// (default 1024).
    #[arg(long)]
    pub max_flows_per_listener: Option<usize>,
    /// Public clients of the CONNECT proxy (`[[proxy-user]]` tables in the config file:
    /// `name`, one of `password`/`password-sha256` (Basic) or `token`/`token-sha256`
    /// (Bearer), `reach = ["GRANT/SERVICE" or "GRANT/*"]`). Default: none, and then public
    /// CONNECT is refused as before.
    #[arg(skip)]
    #[serde(default, rename = "proxy-user")]
    pub proxy_users: Vec<ptth_auth::ProxyUserSpec>,
    /// Whether `--config` was already merged in (so [`Cli::resolve`] reads it once).
    #[arg(skip)]
    #[serde(skip)]
    file_merged: bool,
    /// What the config file said, for warnings once logging is up and for SIGHUP.
    #[arg(skip)]
    #[serde(skip)]
    file: Option<FileRead>,
}

/// Keys renamed to their flag's name; the old name still works, with a warning.
const RENAMED_KEYS: &[(&str, &str)] = &[("tokens", "token"), ("trusted-proxies", "trusted-proxy")];

/// Keys that are tables in the file (`[[grant]]`, `[[certificate]]`), not flags.
#[cfg(test)]
const TABLE_KEYS: &[&str] = &["grant", "certificate", "tcp", "udp", "proxy-user"];

/// Settings a SIGHUP cannot change: every key but the grants, the certificates and the
/// proxy users.
const RELOADED_KEYS: &[&str] = &["grant", "certificate", "proxy-user"];

/// The config file as read: its settings (for SIGHUP to compare) and the deprecation notes.
#[derive(Debug, Clone, Default)]
pub struct FileRead {
    /// The file's top-level settings, without the tables a SIGHUP reloads.
    settings: toml::Table,
    /// Renamed keys the file still uses.
    notes: Vec<String>,
}

/// Reads and parses a gateway config file: the settings (line and column on errors), with
/// relative paths made relative to the file's directory.
fn read_file(path: &std::path::Path) -> Result<(Cli, FileRead)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut file: Cli =
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let base = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    for p in [
        &mut file.cert,
        &mut file.key,
        &mut file.client_ca,
        &mut file.dev,
    ]
    .into_iter()
    .flatten()
    {
        if p.is_relative() {
            *p = base.join(&*p);
        }
    }
    for c in &mut file.certificates {
        c.rebase(base);
    }
    let mut settings: toml::Table = text
        .parse()
        .with_context(|| format!("parsing {}", path.display()))?;
    let name = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let notes = RENAMED_KEYS
        .iter()
        .filter(|(old, _)| settings.contains_key(*old))
        .map(|(old, new)| {
            format!("{name}: key {old} is deprecated; call it {new} (the flag's name)")
        })
        .collect();
    for (old, new) in RENAMED_KEYS {
        if let Some(v) = settings.remove(*old) {
            settings.insert((*new).to_string(), v);
        }
    }
    for k in RELOADED_KEYS {
        settings.remove(*k);
    }
    Ok((file, FileRead { settings, notes }))
}

/// The gateway's settled configuration.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Public cleartext listener, if any (at least one public listener is configured).
    pub listen: Option<SocketAddr>,
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
    /// Which forwarding fields origins get (`--forwarding-fields`).
    pub forwarding_fields: crate::forwarding::ForwardingFields,
    /// Wait-queue length per request host.
    pub queue_limit_per_host: usize,
    /// Whether cleartext requests may fall back to `https://` scopes.
    pub cleartext_https_fallback: bool,
    /// Worker threads, each with its own runtime and listening sockets (`--threads`;
    /// default one per CPU).
    pub workers: usize,
    /// Public certificates per host (`[[certificate]]`), reloaded on SIGHUP.
    pub certificates: Vec<crate::tls::CertificateSpec>,
    /// The config file's settings at start, so a SIGHUP can name those that changed but
    /// need a restart.
    pub file_settings: Option<toml::Table>,
    /// How long a stopping gateway waits for requests in flight and for its origin
    /// connections to close (`--shutdown-grace`).
    pub shutdown_grace: Duration,
    /// How long after start a request for a host with no origin waits for one
    /// (`--startup-grace`).
    pub startup_grace: Duration,
    /// How much of a request body is kept to replay a refused request
    /// (`--retry-body-limit`; 0: none is replayed).
    pub retry_body_limit: usize,
    /// The admin listener's address (`--admin`), if any.
    pub admin: Option<SocketAddr>,
    /// What the access log writes (`--access-log`).
    pub access_log: crate::access_log::AccessLogMode,
    /// Hosts with their own metrics label (`--metrics-host`).
    pub metrics_hosts: Vec<String>,
    /// TCP port mappings (`--tcp-listen`, `[[tcp]]`).
    pub tcp_mappings: Vec<crate::tcp_listen::TcpMapping>,
    /// Reverse CONNECT flow deadlines and limits.
    pub flows: crate::reverse::FlowSettings,
    /// UDP port mappings (`--udp-listen`, `[[udp]]`).
    pub udp_mappings: Vec<crate::udp_listen::UdpMapping>,
    /// UDP flow settings (`--udp-idle-timeout`).
    pub udp: crate::udp_listen::UdpSettings,
    /// Public clients of the CONNECT proxy (`[[proxy-user]]`); none: it is off.
    pub proxy_users: ptth_auth::ProxyUsers,
}

impl GatewayConfig {
    /// A configuration with defaults around the required parts.
    pub fn new(
        listen: Option<SocketAddr>,
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
            forwarding_fields: crate::forwarding::ForwardingFields::All,
            queue_limit_per_host: 256,
            cleartext_https_fallback: true,
            workers: std::thread::available_parallelism().map_or(1, usize::from),
            certificates: Vec::new(),
            file_settings: None,
            shutdown_grace: Duration::from_secs(30),
            startup_grace: Duration::from_secs(5),
            retry_body_limit: 64 * 1024,
            admin: None,
            access_log: crate::access_log::AccessLogMode::On,
            metrics_hosts: Vec::new(),
            tcp_mappings: Vec::new(),
            flows: crate::reverse::FlowSettings::default(),
            udp_mappings: Vec::new(),
            udp: crate::udp_listen::UdpSettings::default(),
            proxy_users: ptth_auth::ProxyUsers::default(),
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
            let (file, read) = read_file(&path)?;
            this = this.or(file);
            this.file = Some(read);
        }
        this.file_merged = true;
        Ok(this)
    }

    fn resolve_merged(mut self) -> Result<(GatewayConfig, Option<crate::dev::DevFiles>)> {
        let file = self.file.take();
        for note in file.iter().flat_map(|f| &f.notes) {
            tracing::warn!("{note}");
        }
        // Name a setting as the operator gave it: the key when a file is in use.
        let in_file = self.config.is_some();
        // Keys `a` and `b` (flags --a, --b), or the flags alone without a file.
        let name = |keys: &[&str], joint: &str| {
            let flags: Vec<String> = keys.iter().map(|k| format!("--{k}")).collect();
            if in_file {
                format!("{} ({})", keys.join(joint), flags.join(", "))
            } else {
                flags.join(joint)
            }
        };
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
        // Every missing setting at once, so a first run needs one correction, not three.
        let mut missing = Vec::new();
        if self.listen.is_none() && self.listen_tls.is_none() {
            missing.push(format!(
                "{}: a public listener address",
                name(&["listen", "listen-tls"], " or ")
            ));
        }
        if self.tunnel.is_none() {
            missing.push(format!("{}: where origins connect", name(&["tunnel"], "")));
        }
        if self.cert.is_none() || self.key.is_none() {
            missing.push(format!(
                "{}: the gateway's certificate, or {} DIR to generate one",
                name(&["cert", "key"], " and "),
                name(&["dev"], "")
            ));
        }
        let (Some(tunnel), Some(cert), Some(key), true) =
            (self.tunnel, self.cert, self.key, missing.is_empty())
        else {
            bail!("missing settings: {}", missing.join("; "))
        };
        let listen = self.listen;
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
        c.certificates = self.certificates;
        c.file_settings = file.map(|f| f.settings);
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
            .map_err(|e| anyhow::anyhow!("--trusted-proxy (config key trusted-proxy): {e}"))?;
        if let Some(fields) = &self.forwarding_fields {
            c.forwarding_fields = fields.parse().map_err(|e| {
                anyhow::anyhow!("--forwarding-fields (config key forwarding-fields): {e}")
            })?;
        }
        if let Some(n) = self.queue_limit_per_host {
            c.queue_limit_per_host = n;
        }
        if let Some(b) = self.cleartext_https_fallback {
            c.cleartext_https_fallback = b;
        }
        if let Some(n) = self.threads {
            c.workers = at_least_one(n, "--threads")?;
        }
        if let Some(s) = self.shutdown_grace {
            c.shutdown_grace = secs(s, "--shutdown-grace")?;
        }
        if let Some(s) = self.startup_grace {
            c.startup_grace = secs(s, "--startup-grace")?;
        }
        if let Some(n) = self.retry_body_limit {
            c.retry_body_limit = n;
        }
        c.admin = self.admin;
        if let Some(mode) = &self.access_log {
            c.access_log = mode
                .parse()
                .map_err(|e| anyhow::anyhow!("--access-log (config key access-log): {e}"))?;
        }
        c.metrics_hosts = self.metrics_hosts;
        for m in &self.tcp_listen {
            c.tcp_mappings.push(
                m.parse()
                    .map_err(|e| anyhow::anyhow!("--tcp-listen (config key tcp-listen): {e}"))?,
            );
        }
        c.tcp_mappings.extend(self.tcp);
        for m in &self.udp_listen {
            c.udp_mappings.push(
                m.parse()
                    .map_err(|e| anyhow::anyhow!("--udp-listen (config key udp-listen): {e}"))?,
            );
        }
        c.udp_mappings.extend(self.udp);
        let tcp = c
            .tcp_mappings
            .iter()
            .map(|m| (m, ptth_core::IpProtocol::Tcp));
        let udp = c
            .udp_mappings
            .iter()
            .map(|m| (m, ptth_core::IpProtocol::Udp));
        for (m, protocol) in tcp.chain(udp) {
            if !ptth_auth::valid_service_name(&m.service) {
                bail!(
                    "[[{protocol}]] {m}: the service name must be lowercase letters, digits or '-'"
                );
            }
            match c.grants.get(&m.grant) {
                Some(g) if g.service(&m.service).is_some_and(|s| s.protocol == protocol) => {}
                Some(g) if g.service(&m.service).is_some() => bail!(
                    "port mapping {m}: grant {:?} offers {:?} but not as {protocol} (a --{protocol}-listen mapping needs a {protocol} service)",
                    m.grant,
                    m.service
                ),
                Some(_) => bail!(
                    "port mapping {m}: grant {:?} has no service named {:?} (add it to the grant's services)",
                    m.grant,
                    m.service
                ),
                None => bail!("port mapping {m}: no grant is named {:?}", m.grant),
            }
        }
        if let Some(s) = self.tcp_accept_timeout {
            c.flows.accept_timeout = positive_secs(s, "--tcp-accept-timeout")?;
        }
        if let Some(s) = self.tcp_idle_timeout {
            c.flows.idle_timeout = positive_secs(s, "--tcp-idle-timeout")?;
        }
        if let Some(s) = self.udp_idle_timeout {
            c.udp.idle_timeout = positive_secs(s, "--udp-idle-timeout")?;
        }
        if let Some(n) = self.max_flows_per_origin {
            c.flows.max_flows_per_origin = at_least_one(n, "--max-flows-per-origin")?;
        }
        if let Some(n) = self.max_flows_per_listener {
            c.flows.max_flows_per_listener = at_least_one(n, "--max-flows-per-listener")?;
        }
        c.proxy_users = checked_proxy_users(self.proxy_users, &c.grants)?;
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
            certificates: file.certificates,
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
            forwarding_fields: self.forwarding_fields.or(file.forwarding_fields),
            queue_limit_per_host: self.queue_limit_per_host.or(file.queue_limit_per_host),
            cleartext_https_fallback: self
                .cleartext_https_fallback
                .or(file.cleartext_https_fallback),
            shutdown_grace: self.shutdown_grace.or(file.shutdown_grace),
            startup_grace: self.startup_grace.or(file.startup_grace),
            retry_body_limit: self.retry_body_limit.or(file.retry_body_limit),
            check_config: self.check_config,
            admin: self.admin.or(file.admin),
            access_log: self.access_log.or(file.access_log),
            metrics_hosts: if self.metrics_hosts.is_empty() {
                file.metrics_hosts
            } else {
                self.metrics_hosts
            },
            tcp_listen: if self.tcp_listen.is_empty() {
                file.tcp_listen
            } else {
                self.tcp_listen
            },
            tcp: file.tcp,
            udp_listen: if self.udp_listen.is_empty() {
                file.udp_listen
            } else {
                self.udp_listen
            },
            udp: file.udp,
            udp_idle_timeout: self.udp_idle_timeout.or(file.udp_idle_timeout),
            tcp_accept_timeout: self.tcp_accept_timeout.or(file.tcp_accept_timeout),
            tcp_idle_timeout: self.tcp_idle_timeout.or(file.tcp_idle_timeout),
            max_flows_per_origin: self.max_flows_per_origin.or(file.max_flows_per_origin),
            max_flows_per_listener: self.max_flows_per_listener.or(file.max_flows_per_listener),
            proxy_users: file.proxy_users,
            file_merged: self.file_merged,
            file: self.file,
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
        let (file, _) = read_file(path)?;
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

/// The `[[proxy-user]]` tables as proxy users, each of whose reach names a grant in `grants`
/// and, for `GRANT/SERVICE`, one of its services.
pub fn checked_proxy_users(
    specs: Vec<ptth_auth::ProxyUserSpec>,
    grants: &ptth_auth::Grants,
) -> Result<ptth_auth::ProxyUsers> {
    let users = ptth_auth::ProxyUsers::from_specs(specs).map_err(anyhow::Error::msg)?;
    for u in users.users() {
        for r in &u.reach {
            let named = match r {
                ptth_auth::Reach::Service { grant, service } => {
                    grants.get(grant).map(|g| g.service(service).is_some())
                }
                ptth_auth::Reach::Grant(grant) => grants.get(grant).map(|_| true),
            };
            match named {
                Some(true) => {}
                Some(false) => bail!(
                    "[[proxy-user]] {:?}: grant {:?} has no service named in its reach {r:?}",
                    u.name,
                    r.grant()
                ),
                None => bail!(
                    "[[proxy-user]] {:?}: no grant is named {:?}",
                    u.name,
                    r.grant()
                ),
            }
        }
    }
    Ok(users)
}

/// What a SIGHUP re-reads besides the grants: the public certificates, the proxy users, and
/// the names of the settings that changed in the file but only take effect on a restart.
#[derive(Debug)]
pub struct Reread {
    /// The `[[certificate]]` tables now in the file (the ones from start without a file).
    pub certificates: Vec<crate::tls::CertificateSpec>,
    /// Lines to log at warn: `listen changed in gateway.toml; restart to apply`.
    pub restart_needed: Vec<String>,
    /// The `[[proxy-user]]` tables now in the file; `None` without a file (they stay).
    pub proxy_users: Option<Vec<ptth_auth::ProxyUserSpec>>,
}

/// Re-reads the config file (if any) for SIGHUP: see [`Reread`].
pub fn reread(config: &GatewayConfig) -> Result<Reread> {
    let Some(path) = &config.config_file else {
        return Ok(Reread {
            certificates: config.certificates.clone(),
            restart_needed: Vec::new(),
            proxy_users: None,
        });
    };
    let (file, read) = read_file(path)?;
    let name = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let before = config.file_settings.clone().unwrap_or_default();
    let mut keys: Vec<&String> = before.keys().chain(read.settings.keys()).collect();
    keys.sort();
    keys.dedup();
    let restart_needed = keys
        .into_iter()
        .filter(|k| before.get(*k) != read.settings.get(*k))
        .map(|k| format!("{k} changed in {name}; restart to apply"))
        .collect();
    Ok(Reread {
        certificates: file.certificates,
        restart_needed,
        proxy_users: Some(file.proxy_users),
    })
}

/// Warnings about settings that start but cannot work as the operator meant: grants that
/// authenticate by certificate with no CA to verify one, and granted `https` hosts the
/// public TLS listener has no certificate for. Logged at start and after every reload.
pub fn operator_warnings(
    config: &GatewayConfig,
    grants: &ptth_auth::Grants,
    certs: &crate::tls::PublicCerts,
) -> Vec<String> {
    use ptth_auth::{Identity, OriginPattern};
    let mut out = Vec::new();
    let verifies_chains = config.client_ca.is_some() || config.client_webpki;
    for g in grants.grants() {
        let key = match &g.identity {
            Identity::CertSan(_) => "cert-san",
            Identity::CertSubject(_) => "cert-subject",
            _ => continue,
        };
        if !verifies_chains {
            out.push(format!(
                "grant {:?} authenticates by client certificate ({key}) but no client-ca (--client-ca) or client-webpki is set, so no certificate can be verified and its origins will be refused; set client-ca to the CA that signs the origins' certificates",
                g.name
            ));
        }
    }
    if config.listen_tls.is_some() {
        let default_names = certs.default_names();
        let mut seen = std::collections::BTreeSet::new();
        for g in grants.grants() {
            for pattern in &g.origins {
                let host = match pattern {
                    OriginPattern::Exact(o) if o.scheme() == "https" => o.host().to_string(),
                    OriginPattern::Wildcard { scheme, parent, .. } if scheme == "https" => {
                        format!("*.{parent}")
                    }
                    _ => continue,
                };
                if !certs.covers(&host, &default_names) && seen.insert(host.clone()) {
                    out.push(format!(
                        "granted host {host} (grant {:?}) has no public certificate: public TLS and HTTP/3 clients will get the default certificate and fail to verify it; add a [[certificate]] that covers it",
                        g.name
                    ));
                }
            }
        }
    }
    out
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
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        // A log line that cannot be written is dropped. By default the formatter reports a
        // failed write with `eprintln!`, which panics when stderr itself is what failed (a
        // reader that went away: journald restarting, a closed pipe), and the panic kills
        // whichever task logged: a connection dropped without a word, mid-request.
        .log_internal_errors(false)
        .with_writer(std::io::stderr);
    match format.unwrap_or("human") {
        "human" => builder.init(),
        "json" => builder.json().init(),
        other => bail!("--log-format must be human or json, not {other:?}"),
    }
    // The access log writes the same lines itself, off the request path; a terminal keeps
    // the coloured events.
    use crate::access_log::{write_lines_directly, LineFormat};
    match format.unwrap_or("human") {
        "json" => write_lines_directly(LineFormat::Json)?,
        _ if !ansi => write_lines_directly(LineFormat::Human)?,
        _ => {}
    }
    Ok(())
}

/// The settings reference docs/configuration.md shows for this binary: one row per flag with
/// its config key and help, read from the flag definitions, so the page cannot drift from
/// the code (a unit test compares them).
pub fn reference() -> String {
    use clap::CommandFactory;
    let command = Cli::command();
    let mut out = String::from("| config key | flag | what it sets |\n|---|---|---|\n");
    for arg in command.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if arg.is_hide_set() || matches!(long, "help" | "version") {
            continue;
        }
        let key = if matches!(long, "config" | "check-config") {
            "(none)".to_string()
        } else {
            format!("`{long}`")
        };
        let value = match arg.get_action() {
            clap::ArgAction::Append => " …` (repeatable; a list in the file)",
            a if a.takes_values() => " …`",
            _ => "`",
        };
        let help = arg
            .get_long_help()
            .or(arg.get_help())
            .map(|h| h.to_string())
            .unwrap_or_default()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .replace('|', "\\|");
        out.push_str(&format!("| {key} | `--{long}{value} | {help} |\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The generated part of docs/configuration.md for this binary: between these lines.
    const DOC_START: &str = "<!-- generated: ptth-gateway settings (cargo test -p ptth-gateway reference; PTTH_BLESS_DOCS=1 rewrites) -->";
    const DOC_END: &str = "<!-- end of generated ptth-gateway settings -->";

    #[test]
    fn the_configuration_page_lists_every_flag_as_the_code_defines_it() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/configuration.md");
        let page = std::fs::read_to_string(&path).unwrap();
        let start = page.find(DOC_START).expect("the start marker") + DOC_START.len();
        let end = page.find(DOC_END).expect("the end marker");
        let shown = page[start..end].trim();
        let generated = reference();
        if std::env::var_os("PTTH_BLESS_DOCS").is_some() {
            let page = format!(
                "{}\n\n{}\n{}",
                &page[..start],
                generated.trim(),
                &page[end..]
            );
            std::fs::write(&path, page).unwrap();
            return;
        }
        assert_eq!(
            shown,
            generated.trim(),
            "docs/configuration.md is out of date: run PTTH_BLESS_DOCS=1 cargo test -p ptth-gateway reference"
        );
    }

    fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ptth-gw-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn either_public_listener_alone_is_enough_and_none_is_named_by_key() {
        let base = [
            "ptth-gateway",
            "--tunnel",
            "127.0.0.1:2",
            "--cert",
            "c",
            "--key",
            "k",
        ];
        let mut tls_only = base.to_vec();
        tls_only.extend(["--listen-tls", "127.0.0.1:3", "--token", "t0ken-tls-only"]);
        let (c, _) = Cli::try_parse_from(tls_only).unwrap().resolve().unwrap();
        assert_eq!(c.listen, None);
        assert_eq!(c.listen_tls, Some("127.0.0.1:3".parse().unwrap()));

        // Flags only: every missing one at once, as flags.
        let err = Cli::try_parse_from(["ptth-gateway", "--token", "t0ken-missing"])
            .unwrap()
            .resolve()
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "missing settings: --listen or --listen-tls: a public listener address; --tunnel: where origins connect; --cert and --key: the gateway's certificate, or --dev DIR to generate one"
        );
        // A config file in use: named by key, with the flag.
        let dir = temp_dir("keys");
        let file = dir.join("gateway.toml");
        std::fs::write(
            &file,
            "tunnel = \"127.0.0.1:2\"\ncert = \"c\"\nkey = \"k\"\ntoken = [\"t0ken-in-file\"]\n",
        )
        .unwrap();
        let err = Cli::try_parse_from(["ptth-gateway", "--config", file.to_str().unwrap()])
            .unwrap()
            .resolve()
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "missing settings: listen or listen-tls (--listen, --listen-tls): a public listener address"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn dev_mode_reports_every_missing_setting_at_once() {
        let dir = temp_dir("dev-missing");
        let err = Cli::try_parse_from(["ptth-gateway", "--dev", dir.to_str().unwrap()])
            .unwrap()
            .resolve()
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "missing settings: --listen or --listen-tls: a public listener address; --tunnel: where origins connect"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn paths_in_a_file_are_relative_to_it_and_renamed_keys_still_work() {
        let dir = temp_dir("relative");
        let file = dir.join("gateway.toml");
        std::fs::write(
            &file,
            r#"
listen-tls = "127.0.0.1:0"
tunnel = "127.0.0.1:0"
cert = "tls/gateway.pem"
key = "/abs/gateway.key"
client-ca = "ca.pem"
tokens = ["t0ken-old-key"]
trusted-proxies = ["10.0.0.0/8"]

[[certificate]]
cert = "public/app.crt"
key = "public/app.key"

[[certificate]]
dir = "public"
"#,
        )
        .unwrap();
        // Resolved from elsewhere: the working directory does not matter.
        let cli = Cli::try_parse_from(["ptth-gateway", "--config", file.to_str().unwrap()])
            .unwrap()
            .merge_file()
            .unwrap();
        let notes = cli.file.as_ref().unwrap().notes.clone();
        assert_eq!(
            notes,
            [
                "gateway.toml: key tokens is deprecated; call it token (the flag's name)",
                "gateway.toml: key trusted-proxies is deprecated; call it trusted-proxy (the flag's name)"
            ]
        );
        let (c, _) = cli.resolve().unwrap();
        assert_eq!(c.cert, dir.join("tls/gateway.pem"));
        assert_eq!(c.key, PathBuf::from("/abs/gateway.key"));
        assert_eq!(c.client_ca, Some(dir.join("ca.pem")));
        assert_eq!(c.certificates[0].cert, Some(dir.join("public/app.crt")));
        assert_eq!(c.certificates[1].dir, Some(dir.join("public")));
        assert_eq!(c.grants.len(), 1, "the old key tokens still counts");
        assert!(c.trusted_proxies.contains("10.1.2.3".parse().unwrap()));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_reread_names_the_settings_that_need_a_restart() {
        let dir = temp_dir("reread");
        let file = dir.join("gateway.toml");
        let first = "listen = \"127.0.0.1:1\"\ntunnel = \"127.0.0.1:2\"\ncert = \"c\"\nkey = \"k\"\ntoken = [\"t0ken-reread\"]\n";
        std::fs::write(&file, first).unwrap();
        let (c, _) = Cli::try_parse_from(["ptth-gateway", "--config", file.to_str().unwrap()])
            .unwrap()
            .resolve()
            .unwrap();
        assert!(reread(&c).unwrap().restart_needed.is_empty());
        // Grants and certificates reload; listen and queue-limit do not.
        std::fs::write(
            &file,
            format!("{}queue-limit = 5\n[[grant]]\nname = \"g\"\ntoken = \"t0ken-new-grant\"\norigins = [\"*\"]\n", first.replace("127.0.0.1:1", "127.0.0.1:9")),
        )
        .unwrap();
        assert_eq!(
            reread(&c).unwrap().restart_needed,
            [
                "listen changed in gateway.toml; restart to apply",
                "queue-limit changed in gateway.toml; restart to apply"
            ]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn certificate_grants_without_a_client_ca_and_uncovered_hosts_are_warned_about() {
        let dir = temp_dir("warnings");
        let dev = crate::dev::ensure(&dir.join("dev")).unwrap();
        let file = dir.join("gateway.toml");
        std::fs::write(
            &file,
            r#"
listen-tls = "127.0.0.1:0"
tunnel = "127.0.0.1:0"
cert = "dev/gateway.pem"
key = "dev/gateway.key"

[[grant]]
name = "by-cert"
cert-san = "origin.internal"
origins = ["https://app.localhost"]

[[grant]]
name = "by-token"
token-sha256 = "0000000000000000000000000000000000000000000000000000000000000001"
origins = ["https://app.example", "http://plain.example", "https://*.apps.example"]
"#,
        )
        .unwrap();
        let (c, _) = Cli::try_parse_from(["ptth-gateway", "--config", file.to_str().unwrap()])
            .unwrap()
            .resolve()
            .unwrap();
        let certs = crate::tls::PublicCerts::load(&c.cert, &c.key, &c.certificates).unwrap();
        let warnings = operator_warnings(&c, &c.grants, &certs);
        assert_eq!(warnings.len(), 3, "{warnings:#?}");
        assert!(
            warnings[0].starts_with(
                "grant \"by-cert\" authenticates by client certificate (cert-san) but no client-ca"
            ),
            "{}",
            warnings[0]
        );
        // app.localhost is in the dev certificate (*.localhost); plain.example is http.
        assert!(
            warnings[1].starts_with(
                "granted host app.example (grant \"by-token\") has no public certificate"
            ),
            "{}",
            warnings[1]
        );
        assert!(
            warnings[2].starts_with("granted host *.apps.example"),
            "{}",
            warnings[2]
        );
        let mut with_ca = c.clone();
        with_ca.client_ca = Some(dev.ca.clone());
        assert_eq!(operator_warnings(&with_ca, &c.grants, &certs).len(), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_port_mapping_must_name_a_service_of_its_own_protocol() {
        let dir = temp_dir("udp-mapping");
        let file = dir.join("gateway.toml");
        let base =
            "listen = \"127.0.0.1:1\"\ntunnel = \"127.0.0.1:2\"\ncert = \"c\"\nkey = \"k\"\n\
                    [[grant]]\nname = \"box\"\ntoken = \"t0ken-udp-mapping\"\n\
                    services = [\"dns=udp/53\", \"ssh=tcp/22\"]\n";
        // Top-level keys first, then the tables.
        let resolve = |top: &str, tables: &str| {
            std::fs::write(&file, format!("{top}{base}{tables}")).unwrap();
            Cli::try_parse_from(["ptth-gateway", "--config", file.to_str().unwrap()])
                .unwrap()
                .resolve()
        };
        let (c, _) = resolve(
            "udp-listen = [\"127.0.0.1:5353=box/dns\"]\nudp-idle-timeout = 5\n",
            "[[udp]]\nlisten = \"127.0.0.1:5354\"\ngrant = \"box\"\nservice = \"dns\"\n",
        )
        .unwrap();
        assert_eq!(c.udp_mappings.len(), 2);
        assert_eq!(c.udp.idle_timeout, Duration::from_secs(5));
        let err = resolve(
            "",
            "[[udp]]\nlisten = \"127.0.0.1:5354\"\ngrant = \"box\"\nservice = \"ssh\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("offers \"ssh\" but not as udp"), "{err}");
        let err = resolve("tcp-listen = [\"127.0.0.1:5353=box/dns\"]\n", "")
            .unwrap_err()
            .to_string();
        assert!(err.contains("offers \"dns\" but not as tcp"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_contrib_example_parses_and_shows_every_key() {
        use clap::CommandFactory;
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../contrib/gateway.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        read_file(&path).unwrap();
        for arg in Cli::command().get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if arg.is_hide_set() || matches!(long, "help" | "version" | "config" | "check-config") {
                continue;
            }
            assert!(
                text.lines()
                    .any(|l| l.trim_start_matches("# ").starts_with(&format!("{long} ="))),
                "contrib/gateway.toml does not show {long}"
            );
        }
        let (c, _) = Cli::try_parse_from(["ptth-gateway", "--config", path.to_str().unwrap()])
            .unwrap()
            .resolve()
            .unwrap();
        assert_eq!(c.grants.len(), 2);
        assert_eq!(c.certificates.len(), 2);
        assert_eq!(c.listen, None, "the example is TLS-only");
    }

    #[test]
    fn help_shows_every_default() {
        use clap::CommandFactory;
        for arg in Cli::command().get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if arg.is_hide_set() || matches!(long, "help" | "version" | "config" | "check-config") {
                continue;
            }
            let help = arg
                .get_long_help()
                .or(arg.get_help())
                .map(|h| h.to_string().to_lowercase())
                .unwrap_or_default();
            assert!(
                help.contains("default") || help.contains("required"),
                "--{long}'s help says neither its default nor that it is required: {help}"
            );
        }
    }

    #[test]
    fn every_flag_is_a_config_key_and_every_key_a_flag() {
        use clap::CommandFactory;
        let command = Cli::command();
        let flags: Vec<String> = command
            .get_arguments()
            .filter(|a| !a.is_hide_set())
            .filter_map(|a| a.get_long().map(str::to_string))
            .filter(|l| !matches!(l.as_str(), "help" | "version" | "config" | "check-config"))
            .collect();
        for flag in &flags {
            // A value of the wrong type is an error too, but never "unknown field".
            let err = toml::from_str::<Cli>(&format!("{flag} = 0\n"))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                !err.contains("unknown field"),
                "--{flag} has no config key {flag}: {err}"
            );
        }
        // serde lists the keys it knows in its unknown-field error.
        let err = toml::from_str::<Cli>("no-such-key = 0\n")
            .unwrap_err()
            .to_string();
        let known = err.split("expected one of").nth(1).expect("the key list");
        let keys: Vec<&str> = known
            .split(',')
            .map(|k| k.trim().trim_matches('`'))
            .map(|k| k.trim_end_matches('`'))
            .filter(|k| !k.is_empty())
            .map(|k| k.split('`').next().unwrap_or(k))
            .collect();
        for key in keys {
            if TABLE_KEYS.contains(&key) || RENAMED_KEYS.iter().any(|(old, _)| *old == key) {
                continue;
            }
            assert!(
                flags.iter().any(|f| f == key),
                "config key {key} has no flag --{key}"
            );
        }
    }

    #[test]
    fn proxy_users_must_reach_grants_and_services_that_exist() {
        let dir = temp_dir("proxy-users");
        let file = dir.join("gateway.toml");
        let base = "listen = \"127.0.0.1:1\"\ntunnel = \"127.0.0.1:2\"\ncert = \"c\"\nkey = \"k\"\n\
                    [[grant]]\nname = \"box\"\ntoken = \"t0ken-box-1\"\nservices = [\"ssh=tcp/22\"]\n";
        let resolve = |users: &str| {
            std::fs::write(&file, format!("{base}{users}")).unwrap();
            Cli::try_parse_from(["ptth-gateway", "--config", file.to_str().unwrap()])
                .unwrap()
                .resolve()
                .map(|(c, _)| c)
                .map_err(|e| e.to_string())
        };
        let user = |reach: &str| {
            format!(
                "[[proxy-user]]\nname = \"u\"\npassword = \"pw-secret\"\nreach = [\"{reach}\"]\n"
            )
        };
        let c = resolve(&user("box/ssh")).unwrap();
        assert_eq!(c.proxy_users.users().len(), 1);
        assert!(
            resolve("").unwrap().proxy_users.is_empty(),
            "off by default"
        );
        assert!(resolve(&user("box/*")).is_ok());
        let e = resolve(&user("nobox/ssh")).unwrap_err();
        assert!(e.contains("no grant is named \"nobox\""), "{e}");
        let e = resolve(&user("box/db")).unwrap_err();
        assert!(e.contains("grant \"box\" has no service"), "{e}");
        let e = resolve("[[proxy-user]]\nname = \"u\"\nreach = [\"box/ssh\"]\n").unwrap_err();
        assert!(e.contains("exactly one secret"), "{e}");
        assert!(!e.contains("pw-secret"));
        let _ = std::fs::remove_dir_all(&dir);
    }

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
        assert_eq!(
            c.listen,
            Some("127.0.0.1:9090".parse().unwrap()),
            "the flag wins"
        );
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
    fn forwarding_fields_come_from_the_flag_or_the_file_and_a_bad_value_names_the_key() {
        use crate::forwarding::ForwardingFields;
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
        assert_eq!(c.forwarding_fields, ForwardingFields::All, "the default");
        for (text, fields) in [
            ("all", ForwardingFields::All),
            ("forwarded", ForwardingFields::Forwarded),
            ("x-forwarded", ForwardingFields::XForwarded),
            ("none", ForwardingFields::None),
        ] {
            let mut args = base.to_vec();
            args.extend(["--forwarding-fields", text]);
            let (c, _) = Cli::try_parse_from(args).unwrap().resolve().unwrap();
            assert_eq!(c.forwarding_fields, fields, "{text}");
            assert_eq!(fields.to_string(), text);
        }
        // The file's value, and the flag over it.
        let file = || toml::from_str::<Cli>("forwarding-fields = \"forwarded\"\n").unwrap();
        let (c, _) = Cli::try_parse_from(base)
            .unwrap()
            .or(file())
            .resolve()
            .unwrap();
        assert_eq!(c.forwarding_fields, ForwardingFields::Forwarded);
        let mut args = base.to_vec();
        args.extend(["--forwarding-fields", "none"]);
        let (c, _) = Cli::try_parse_from(args)
            .unwrap()
            .or(file())
            .resolve()
            .unwrap();
        assert_eq!(c.forwarding_fields, ForwardingFields::None);

        for bad in ["All", "x-forwarded-for", "", "forwarded,x-forwarded"] {
            let mut args = base.to_vec();
            args.extend(["--forwarding-fields", bad]);
            let err = Cli::try_parse_from(args)
                .unwrap()
                .resolve()
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("--forwarding-fields (config key forwarding-fields)")
                    && err.contains("all, forwarded, x-forwarded or none"),
                "{bad:?}: {err}"
            );
        }
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
            err.contains("--trusted-proxy (config key trusted-proxy)")
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
