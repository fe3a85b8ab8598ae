//! Origin configuration: command-line flags, optionally a TOML file with the same names.

use crate::service::{HostPattern, Proxy, ProxyOptions, Route, Routes, UpstreamTls};
use crate::tcp_service::TcpService;
use crate::udp_service::UdpService;
use crate::OriginConfig;
use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// Command-line flags. Every flag may also be set in the `--config` TOML file under the
/// flag's own name (`--host` is `host = [...]`; docs/configuration.md lists them all); flags
/// given on the command line win. Relative paths in the file are relative to the file's
/// directory.
#[derive(Debug, Parser, Default, Deserialize)]
#[command(
    name = "ptth-origin",
    version,
    about = "PTTH origin: dial out to a gateway and serve the requests it sends back"
)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
// The field docs are clap's help text, shown as written: a URL there stays bare.
#[allow(rustdoc::bare_urls)]
pub struct Cli {
    /// The gateway's tunnel URL, e.g. https://gateway.example:4443 (required; repeatable:
    /// each gateway gets its own --connections; in a config file, a string or a list).
    #[arg(long = "gateway")]
    #[serde(default, deserialize_with = "one_or_many")]
    pub gateway: Vec<String>,
    /// Mechanism. Over TLS/TCP: rh1, rh2 (Potato), upgrade-h1, upgrade-h2 (PTTH Upgrade),
    /// connect-h2 (PTTH -01 extended CONNECT), h2-reverse (draft-bt), ptth10 (legacy
    /// PTTH/1.0). Over QUIC: rh3 (Potato), h3-reverse (draft-bt), options-h3 (PTTH -00
    /// OPTIONS), connect-h3 (PTTH -01 extended CONNECT over HTTP/3). Required.
    #[arg(long)]
    pub mechanism: Option<String>,
    /// Host name this origin serves (repeatable), optionally with :port; https unless given
    /// as an origin (`http://host[:port]`). Required.
    #[arg(long = "host")]
    #[serde(default, rename = "host", alias = "hosts")]
    pub hosts: Vec<String>,
    /// Path prefix this origin serves (repeatable; default /).
    #[arg(long = "path")]
    #[serde(default, rename = "path", alias = "paths")]
    pub paths: Vec<String>,
    /// Forward every request to this local service (proxy mode): http://host:port
    /// (HTTP/1.1), h2c://host:port (HTTP/2 cleartext), https://host:port (TLS, ALPN h2 or
    /// http/1.1), unix:/path or unix+h2c:/path. One-route shorthand for a `[[route]]`. This,
    /// `[[route]]` tables or --hello is required.
    #[arg(long, conflicts_with = "hello")]
    pub upstream: Option<String>,
    /// CA certificate (PEM) that signs an https:// upstream's certificate (default: the
    /// WebPKI roots).
    #[arg(long)]
    pub upstream_ca: Option<PathBuf>,
    /// Name checked against an https:// upstream's certificate and sent as SNI (default: the
    /// upstream URL's host).
    #[arg(long)]
    pub upstream_server_name: Option<String>,
    /// DANGEROUS: do not verify an https:// upstream's certificate at all (anyone who can
    /// answer on its address reads the requests); logged as a warning at start (default
    /// false).
    #[arg(long)]
    #[serde(default)]
    pub upstream_insecure: bool,
    /// Ingress routes, config file only: `[[route]]` tables with `host` (exact, `*.suffix`
    /// or absent for any), optional `path` prefix, `upstream`, `upstream-ca`,
    /// `upstream-server-name`, `upstream-insecure` and `proxy-protocol`; first match wins.
    #[arg(skip)]
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteConfig>,
    /// Serve the built-in demo service (default false).
    #[arg(long)]
    #[serde(default)]
    pub hello: bool,
    /// A TCP service offered to the gateway over reverse CONNECT, `NAME=HOST:PORT`
    /// (repeatable; a list in the file, or `[[service]]` tables with `name`,
    /// `protocol = "tcp"` and `address`): the gateway's grant must allow it as
    /// `NAME=tcp/PORT`. With services and no --host, the origin serves no HTTP (and needs
    /// no --mechanism). Default: none.
    #[arg(long = "tcp-service", value_name = "NAME=HOST:PORT")]
    #[serde(default, rename = "tcp-service")]
    pub tcp_services: Vec<String>,
    /// The HTTP version of the services' reverse CONNECT control channels: `h2` (extended
    /// CONNECT over TLS), `h3` (extended CONNECT over QUIC, the gateway's UDP port) or `h1`
    /// (Upgrade over TLS, a new connection per accepted flow). Default: `h3` when
    /// --mechanism runs over QUIC, else `h2`.
    #[arg(long, value_name = "h1|h2|h3")]
    pub service_transport: Option<String>,
    /// A UDP service offered to the gateway over reverse CONNECT, `NAME=HOST:PORT`
    /// (repeatable; a list in the file, or `[[service]]` tables with `protocol = "udp"`):
    /// the gateway's grant must allow it as `NAME=udp/PORT`. Each public client becomes
    /// its own flow, from its own local port on this host. Default: none.
    #[arg(long = "udp-service", value_name = "NAME=HOST:PORT")]
    #[serde(default, rename = "udp-service")]
    pub udp_services: Vec<String>,
    /// Services as tables (`[[service]]` in the config file).
    #[arg(skip)]
    #[serde(default, rename = "service")]
    pub services: Vec<ServiceConfig>,
    /// Bearer token presented to the gateway (prefer --token-file or PTTH_TOKEN: a flag
    /// shows in `ps`; default: none).
    #[arg(long, env = "PTTH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Read the token from a file (e.g. the gateway's dev DIR/token; default: none).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// HTTP Basic (RFC 7617) user name presented to the gateway instead of a token; needs
    /// --basic-password-file or --basic-password (default: none).
    #[arg(long)]
    pub basic_user: Option<String>,
    /// The HTTP Basic password (prefer --basic-password-file: a flag shows in `ps`; default:
    /// none).
    #[arg(long, env = "PTTH_BASIC_PASSWORD", hide_env_values = true)]
    pub basic_password: Option<String>,
    /// Read the HTTP Basic password from a file (trailing CR/LF removed; default: none).
    #[arg(long)]
    pub basic_password_file: Option<PathBuf>,
    /// Ed25519 key (PKCS#8 PEM) that signs the gateway's challenge on ALPN-only mechanisms
    /// (default: none).
    #[arg(long)]
    pub signing_key: Option<PathBuf>,
    /// The id the gateway's grant knows the signing key by (default origin).
    #[arg(long)]
    pub key_id: Option<String>,
    /// CA certificate (PEM) that signs the gateway's certificate (default: the WebPKI
    /// roots).
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Also require the gateway certificate's SPKI SHA-256 (hex) to be this. Always
    /// enforced, with --danger-accept-any-gateway too (default: none).
    #[arg(long)]
    pub gateway_pin: Option<String>,
    /// Do not verify the gateway's certificate chain, name or dates. Dangerous without
    /// --gateway-pin (which still holds): logged at start and on every connection (default
    /// false).
    #[arg(long)]
    #[serde(default)]
    pub danger_accept_any_gateway: bool,
    /// Client certificate chain (PEM) presented to the gateway (required by h2-reverse;
    /// default: none).
    #[arg(long)]
    pub cert: Option<PathBuf>,
    /// Private key of --cert (default: none).
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// Reversed connections kept open, and, with services, reverse CONNECT control
    /// channels (at most 16), each on its own connection (default 1).
    #[arg(long)]
    pub connections: Option<usize>,
    /// Potato ALPN token set: potato-00 (rh*), potato-01 (ph*), potato-02 (UTF-8 tokens)
    /// (default potato-00).
    #[arg(long)]
    pub alpn_set: Option<String>,
    /// SETTINGS_MAX_CONCURRENT_STREAMS on reversed HTTP/2 (default 256).
    #[arg(long)]
    pub max_concurrent_streams: Option<u32>,
    /// Seconds requests in flight may run after SIGTERM or Ctrl-C (default 30).
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
    /// Log format: human or json (default human).
    #[arg(long)]
    pub log_format: Option<String>,
    /// Worker threads the reversed connections are dealt out over, each with a runtime of
    /// its own (default: one per CPU). A connection's requests stay on its thread, so one
    /// connection uses at most one CPU: give --connections at least --threads to use them
    /// all; see docs/operations.md.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Admin listener (HTTP/1.1; `/metrics`, `/healthz`, `/readyz`), e.g. `127.0.0.1:9091`.
    /// Off by default.
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<std::net::SocketAddr>,
    /// When `/readyz` answers 200: `all` (default: a connection registered with every
    /// configured gateway) or `any` (with at least one).
    #[arg(long, value_name = "all|any")]
    pub ready_when: Option<String>,
    /// Whether `--config` was already merged in (so [`Cli::resolve`] reads it once).
    #[arg(skip)]
    #[serde(skip)]
    file_merged: bool,
    /// Renamed keys the config file still uses, warned about once logging is up.
    #[arg(skip)]
    #[serde(skip)]
    notes: Vec<String>,
}

/// Keys that are tables in the file, not flags.
#[cfg(test)]
const TABLE_KEYS: &[&str] = &["route", "service"];

/// A `[[service]]` table: one service offered over reverse CONNECT.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ServiceConfig {
    /// Its name (the gateway's grant names it too).
    pub name: String,
    /// `tcp` or `udp`.
    pub protocol: String,
    /// `HOST:PORT` where the origin reaches it.
    pub address: String,
}

/// Keys renamed to their flag's name; the old name still works, with a warning.
const RENAMED_KEYS: &[(&str, &str)] = &[("hosts", "host"), ("paths", "path")];

/// Reads and parses an origin config file (line and column on errors), with relative paths
/// made relative to the file's directory; also returns notes on renamed keys it uses.
fn read_file(path: &std::path::Path) -> Result<(Cli, Vec<String>)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut file: Cli =
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let base = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    for p in [
        &mut file.token_file,
        &mut file.basic_password_file,
        &mut file.signing_key,
        &mut file.ca,
        &mut file.cert,
        &mut file.key,
        &mut file.upstream_ca,
    ]
    .into_iter()
    .chain(file.routes.iter_mut().map(|r| &mut r.upstream_ca))
    .flatten()
    {
        if p.is_relative() {
            *p = base.join(&*p);
        }
    }
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("parsing {}", path.display()))?;
    let name = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let notes = RENAMED_KEYS
        .iter()
        .filter(|(old, _)| table.contains_key(*old))
        .map(|(old, new)| {
            format!("{name}: key {old} is deprecated; call it {new} (the flag's name)")
        })
        .collect();
    Ok((file, notes))
}

/// One `[[route]]` table of the config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RouteConfig {
    /// The hosts it takes: a name, `*.suffix`, or `*`/absent for any.
    pub host: Option<String>,
    /// The path prefix it takes (segment-wise); every path when absent.
    pub path: Option<String>,
    /// Where its requests go (any `--upstream` form).
    pub upstream: String,
    /// As `--upstream-ca`, for this route.
    pub upstream_ca: Option<PathBuf>,
    /// As `--upstream-server-name`, for this route.
    pub upstream_server_name: Option<String>,
    /// As `--upstream-insecure` (DANGEROUS), for this route.
    #[serde(default)]
    pub upstream_insecure: bool,
    /// Start each upstream connection with a PROXY protocol v2 header naming the public
    /// client; such connections are not pooled.
    #[serde(default)]
    pub proxy_protocol: bool,
}

impl RouteConfig {
    /// The route this table describes.
    ///
    /// # Errors
    ///
    /// The host pattern, path or upstream is not valid.
    pub fn build(&self) -> Result<Route> {
        let host = match &self.host {
            Some(host) => HostPattern::parse(host).map_err(|e| anyhow!(e))?,
            None => HostPattern::Any,
        };
        if let Some(path) = &self.path {
            if !path.starts_with('/') {
                bail!("route path {path:?} must start with /");
            }
        }
        let options = ProxyOptions {
            tls: UpstreamTls {
                ca: self.upstream_ca.clone(),
                server_name: self.upstream_server_name.clone(),
                insecure: self.upstream_insecure,
            },
            proxy_protocol: self.proxy_protocol,
        };
        Ok(Route {
            host,
            path: self.path.clone(),
            proxy: Proxy::with_options(&self.upstream, &options)?,
        })
    }
}

/// What the origin serves.
#[derive(Debug, Clone)]
pub enum Serve {
    /// `--upstream URL` (one catch-all route) or `[[route]]` tables.
    Upstream(Routes),
    /// `--hello`.
    Hello,
}

impl Cli {
    /// Merges the `--config` file under the flags (once).
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
            let (file, notes) = read_file(&path)?;
            this = this.or(file);
            this.notes = notes;
        }
        this.file_merged = true;
        Ok(this)
    }

    /// Merges the `--config` file under the flags and checks everything.
    pub fn resolve(self) -> Result<(OriginConfig, Serve)> {
        let this = self.merge_file()?;
        if let Some(0) = this.threads {
            bail!("--threads must be at least 1");
        }
        this.resolve_merged()
    }

    fn resolve_merged(self) -> Result<(OriginConfig, Serve)> {
        for note in &self.notes {
            tracing::warn!("{note}");
        }
        let mut gateways = self.gateway.iter().map(|g| {
            g.parse::<http::Uri>()
                .with_context(|| format!("--gateway {g:?} is not a URL"))
        });
        let gateway = gateways
            .next()
            .ok_or_else(|| anyhow!("--gateway URL is required"))??;
        let more_gateways = gateways.collect::<Result<Vec<_>>>()?;
        let mut tcp_services = self
            .tcp_services
            .iter()
            .map(|s| {
                s.parse::<TcpService>()
                    .map_err(|e| anyhow!("--tcp-service {e}"))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut udp_services = self
            .udp_services
            .iter()
            .map(|s| {
                s.parse::<UdpService>()
                    .map_err(|e| anyhow!("--udp-service {e}"))
            })
            .collect::<Result<Vec<_>>>()?;
        for s in &self.services {
            match s.protocol.as_str() {
                "tcp" => tcp_services.push(
                    TcpService::new(&s.name, &s.address)
                        .map_err(|e| anyhow!("[[service]]: {e}"))?,
                ),
                "udp" => udp_services.push(
                    UdpService::new(&s.name, &s.address)
                        .map_err(|e| anyhow!("[[service]]: {e}"))?,
                ),
                _ => bail!(
                    "[[service]] {:?}: protocol must be \"tcp\" or \"udp\"",
                    s.name
                ),
            }
        }
        crate::tcp_service::check_services(&tcp_services)?;
        crate::udp_service::check_services(
            tcp_services.iter().map(|s| s.name.as_str()),
            &udp_services,
        )?;
        // An origin that only offers services serves no HTTP: no host, nothing to reverse.
        let services_only = !(tcp_services.is_empty() && udp_services.is_empty())
            && self.hosts.is_empty()
            && self.upstream.is_none()
            && self.routes.is_empty()
            && !self.hello;
        let mechanism = match self.mechanism {
            Some(m) => m,
            None if services_only => "connect-h2".to_string(),
            None => bail!("--mechanism is required"),
        }
        .parse()
        .map_err(|e| anyhow!("--mechanism: {e}"))?;
        let credential = credential(
            self.token,
            self.token_file,
            self.basic_user,
            self.basic_password,
            self.basic_password_file,
        )?;
        if credential.is_none() && self.signing_key.is_none() && self.cert.is_none() {
            bail!("give a credential the gateway accepts: --token, --basic-user, --signing-key or --cert/--key");
        }
        let serve = match (self.upstream, self.routes.is_empty(), self.hello) {
            (Some(upstream), true, false) => {
                let shorthand = RouteConfig {
                    upstream,
                    upstream_ca: self.upstream_ca,
                    upstream_server_name: self.upstream_server_name,
                    upstream_insecure: self.upstream_insecure,
                    ..RouteConfig::default()
                };
                Serve::Upstream(Routes::new(vec![shorthand
                    .build()
                    .context("--upstream")?]))
            }
            (None, false, false) => {
                let routes = self
                    .routes
                    .iter()
                    .enumerate()
                    .map(|(i, route)| {
                        route
                            .build()
                            .with_context(|| format!("[[route]] {}", i + 1))
                    })
                    .collect::<Result<Vec<_>>>()?;
                Serve::Upstream(Routes::new(routes))
            }
            (None, true, true) => Serve::Hello,
            // Nothing is served over HTTP: no host is registered, so no request comes.
            (None, true, false) if services_only => Serve::Hello,
            _ => bail!("give exactly one of --upstream URL, [[route]] tables or --hello"),
        };
        // The origin asks the gateway for every host it names and every host a route takes.
        let mut hosts = self.hosts;
        if let Serve::Upstream(routes) = &serve {
            for host in routes.hosts() {
                if !hosts.contains(&host) {
                    hosts.push(host);
                }
            }
        }
        let mut c = OriginConfig::new(gateway, mechanism, hosts, None);
        // The binary's services (hello, the proxy, routes) take their tunnels through
        // `on_upgrade`, which works on either HTTP/2 server: the lighter one serves.
        c.hyper_upgrades = false;
        c.workers = Some(self.threads.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        }));
        c.more_gateways = more_gateways;
        c.tcp_services = tcp_services;
        if let Some(t) = &self.service_transport {
            c.service_transport = t.parse().map_err(|e: String| anyhow!("{e}"))?;
        }
        c.udp_services = udp_services;
        c.credential = credential;
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
        c.admin = self.admin;
        if let Some(w) = &self.ready_when {
            c.ready_when = w.parse().map_err(|e: String| anyhow!("{e}"))?;
        }
        Ok((c, serve))
    }

    fn or(self, f: Cli) -> Cli {
        // The credential is one setting: a token on the command line (or in PTTH_TOKEN)
        // replaces whatever credential the file has; Basic flags replace the file's token,
        // and a password from the command line or PTTH_BASIC_PASSWORD may complete the
        // file's basic-user. Giving both kinds on the command line is refused in resolve.
        let flag_token = self.token.is_some() || self.token_file.is_some();
        let flag_password = self.basic_password.is_some() || self.basic_password_file.is_some();
        let flag_basic = self.basic_user.is_some() || flag_password;
        let (token, token_file, basic_user, basic_password, basic_password_file) =
            match (flag_token, flag_basic) {
                (false, false) => (
                    f.token,
                    f.token_file,
                    f.basic_user,
                    f.basic_password,
                    f.basic_password_file,
                ),
                (true, false) => (self.token, self.token_file, None, None, None),
                (false, true) => {
                    let (password, password_file) = if flag_password {
                        (self.basic_password, self.basic_password_file)
                    } else {
                        (f.basic_password, f.basic_password_file)
                    };
                    (
                        None,
                        None,
                        self.basic_user.or(f.basic_user),
                        password,
                        password_file,
                    )
                }
                (true, true) => (
                    self.token,
                    self.token_file,
                    self.basic_user,
                    self.basic_password,
                    self.basic_password_file,
                ),
            };
        Cli {
            gateway: if self.gateway.is_empty() {
                f.gateway
            } else {
                self.gateway
            },
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
            upstream_ca: self.upstream_ca.or(f.upstream_ca),
            upstream_server_name: self.upstream_server_name.or(f.upstream_server_name),
            upstream_insecure: self.upstream_insecure || f.upstream_insecure,
            routes: if self.routes.is_empty() {
                f.routes
            } else {
                self.routes
            },
            hello: self.hello || f.hello,
            tcp_services: if self.tcp_services.is_empty() {
                f.tcp_services
            } else {
                self.tcp_services
            },
            udp_services: if self.udp_services.is_empty() {
                f.udp_services
            } else {
                self.udp_services
            },
            services: f.services,
            service_transport: self.service_transport.or(f.service_transport),
            token,
            token_file,
            basic_user,
            basic_password,
            basic_password_file,
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
            threads: self.threads.or(f.threads),
            admin: self.admin.or(f.admin),
            ready_when: self.ready_when.or(f.ready_when),
            file_merged: self.file_merged,
            notes: self.notes,
        }
    }
}

/// The token or Basic credentials, from flags, environment or file; never both kinds.
fn credential(
    token: Option<String>,
    token_file: Option<PathBuf>,
    basic_user: Option<String>,
    basic_password: Option<String>,
    basic_password_file: Option<PathBuf>,
) -> Result<Option<ptth_auth::OriginCredential>> {
    let gives_token = token.is_some() || token_file.is_some();
    let gives_basic =
        basic_user.is_some() || basic_password.is_some() || basic_password_file.is_some();
    if gives_token && gives_basic {
        bail!("give a token (--token, --token-file, PTTH_TOKEN) or Basic credentials (--basic-user with --basic-password-file, --basic-password or PTTH_BASIC_PASSWORD), not both");
    }
    if gives_basic {
        let user = basic_user.ok_or_else(|| {
            anyhow!("--basic-password and --basic-password-file need --basic-user")
        })?;
        let password = match (basic_password, basic_password_file) {
            (Some(p), None) => p,
            (None, Some(f)) => std::fs::read_to_string(&f)
                .with_context(|| format!("reading {}", f.display()))?
                .trim_end_matches(['\r', '\n'])
                .to_string(),
            (None, None) => bail!("--basic-user needs --basic-password-file (or --basic-password, PTTH_BASIC_PASSWORD)"),
            (Some(_), Some(_)) => {
                bail!("give --basic-password (or PTTH_BASIC_PASSWORD) or --basic-password-file, not both")
            }
        };
        return ptth_auth::OriginCredential::basic(user, password)
            .map(Some)
            .map_err(|e| anyhow!("--basic-user/--basic-password: {e}"));
    }
    let token = match (token, token_file) {
        (Some(t), _) => Some(t),
        (None, Some(f)) => Some(
            std::fs::read_to_string(&f)
                .with_context(|| format!("reading {}", f.display()))?
                .trim()
                .to_string(),
        ),
        (None, None) => None,
    };
    token
        .map(|t| {
            ptth_auth::BearerToken::new(t)
                .map(ptth_auth::OriginCredential::Bearer)
                .map_err(|e| anyhow!("--token: {e}"))
        })
        .transpose()
}

/// Parses a SHA-256 pin written as 64 hex digits (colons allowed).
/// A config key that takes one string or a list of them (`gateway = "https://a"` or
/// `gateway = ["https://a", "https://b"]`).
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

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
    // Colour only for a person at a terminal: journald and log files get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
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
        let key = if long == "config" {
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
    const DOC_START: &str = "<!-- generated: ptth-origin settings (cargo test -p ptth-origin reference; PTTH_BLESS_DOCS=1 rewrites) -->";
    const DOC_END: &str = "<!-- end of generated ptth-origin settings -->";

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
            "docs/configuration.md is out of date: run PTTH_BLESS_DOCS=1 cargo test -p ptth-origin reference"
        );
    }

    #[test]
    fn the_contrib_example_parses_and_shows_every_key() {
        use clap::CommandFactory;
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../contrib/origin.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        read_file(&path).unwrap();
        for arg in Cli::command().get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if arg.is_hide_set() || matches!(long, "help" | "version" | "config") {
                continue;
            }
            assert!(
                text.lines()
                    .any(|l| l.trim_start_matches("# ").starts_with(&format!("{long} ="))),
                "contrib/origin.toml does not show {long}"
            );
        }
    }

    #[test]
    fn help_shows_every_default() {
        use clap::CommandFactory;
        for arg in Cli::command().get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if arg.is_hide_set() || matches!(long, "help" | "version" | "config") {
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
            .filter(|l| !matches!(l.as_str(), "help" | "version" | "config"))
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

    fn dir(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("ptth-origin-config-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn resolve(args: &[&str]) -> Result<OriginConfig> {
        let mut all = vec![
            "ptth-origin",
            "--gateway",
            "https://gw.example:4443",
            "--mechanism",
            "rh2",
            "--host",
            "app.example.com",
            "--hello",
        ];
        all.extend_from_slice(args);
        Cli::try_parse_from(all)?.resolve().map(|(c, _)| c)
    }

    fn authorization(c: &OriginConfig) -> String {
        c.credential
            .as_ref()
            .unwrap()
            .header_value()
            .to_str()
            .unwrap()
            .to_string()
    }

    #[test]
    fn basic_credentials_from_flags_and_files() {
        let c = resolve(&["--basic-user", "Aladdin", "--basic-password", "open sesame"]).unwrap();
        assert_eq!(authorization(&c), "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==");
        let d = dir("pwfile");
        let pw = d.join("password");
        std::fs::write(&pw, "open sesame\r\n").unwrap();
        let c = resolve(&[
            "--basic-user",
            "Aladdin",
            "--basic-password-file",
            pw.to_str().unwrap(),
        ])
        .unwrap();
        assert_eq!(authorization(&c), "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==");
        assert!(!format!("{c:?}").contains("open sesame"));
        let c = resolve(&["--token", "t0ken"]).unwrap();
        assert_eq!(authorization(&c), "Bearer t0ken");
    }

    #[test]
    fn basic_and_token_are_exclusive_and_basic_must_be_complete() {
        let both = resolve(&["--token", "t", "--basic-user", "u", "--basic-password", "p"]);
        assert!(both.unwrap_err().to_string().contains("not both"));
        let no_pw = resolve(&["--basic-user", "u"]).unwrap_err().to_string();
        assert!(no_pw.contains("--basic-password-file"), "{no_pw}");
        let no_user = resolve(&["--basic-password", "p"]).unwrap_err().to_string();
        assert!(no_user.contains("--basic-user"), "{no_user}");
        let colon = resolve(&["--basic-user", "a:b", "--basic-password", "p"]);
        assert!(colon.unwrap_err().to_string().contains("':'"));
        let d = dir("twopw");
        let pw = d.join("password");
        std::fs::write(&pw, "p").unwrap();
        let two = resolve(&[
            "--basic-user",
            "u",
            "--basic-password",
            "p",
            "--basic-password-file",
            pw.to_str().unwrap(),
        ]);
        assert!(two.unwrap_err().to_string().contains("not both"));
    }

    #[test]
    fn toml_keys_and_command_line_precedence() {
        let d = dir("toml");
        let pw = d.join("password");
        std::fs::write(&pw, "from-file\n").unwrap();
        let config = d.join("origin.toml");
        std::fs::write(
            &config,
            format!(
                "basic-user = \"ops\"\nbasic-password-file = {:?}\n",
                pw.to_str().unwrap()
            ),
        )
        .unwrap();
        let cfg = config.to_str().unwrap();
        let c = resolve(&["--config", cfg]).unwrap();
        assert_eq!(
            authorization(&c),
            ptth_auth::OriginCredential::basic("ops", "from-file")
                .unwrap()
                .header_value()
        );
        // A password on the command line completes the file's user...
        let c = resolve(&["--config", cfg, "--basic-password", "flag"]).unwrap();
        assert_eq!(
            authorization(&c),
            ptth_auth::OriginCredential::basic("ops", "flag")
                .unwrap()
                .header_value()
        );
        // ...and a token on the command line replaces the file's Basic credentials.
        let c = resolve(&["--config", cfg, "--token", "t0ken"]).unwrap();
        assert_eq!(authorization(&c), "Bearer t0ken");
        // Both kinds in one file are refused.
        std::fs::write(
            &config,
            "basic-user = \"ops\"\nbasic-password = \"pw\"\ntoken = \"t0ken\"\n",
        )
        .unwrap();
        let e = resolve(&["--config", cfg]).unwrap_err().to_string();
        assert!(e.contains("not both"), "{e}");
    }

    #[test]
    fn a_gateway_pin_survives_danger_accept_any_gateway_from_flags_and_file() {
        let pin = "ab".repeat(32);
        let c = resolve(&[
            "--token",
            "t",
            "--danger-accept-any-gateway",
            "--gateway-pin",
            &pin,
        ])
        .unwrap();
        assert!(c.danger_accept_any_gateway);
        assert_eq!(
            c.gateway_pin,
            Some([0xab; 32]),
            "the pin is kept, not dropped"
        );

        let d = dir("pin");
        let config = d.join("origin.toml");
        std::fs::write(
            &config,
            format!("token = \"t\"\ndanger-accept-any-gateway = true\ngateway-pin = \"{pin}\"\n"),
        )
        .unwrap();
        let c = resolve(&["--config", config.to_str().unwrap()]).unwrap();
        assert!(c.danger_accept_any_gateway);
        assert_eq!(c.gateway_pin, Some([0xab; 32]));
        // The TLS config builds with both: the pinned verifier, not an error.
        crate::dialer::tls_config(&c).unwrap();

        let e = resolve(&["--token", "t", "--gateway-pin", "abc"]).unwrap_err();
        assert!(e.to_string().contains("64 hex digits"), "{e}");
    }

    #[test]
    fn gateway_is_repeatable_and_a_string_or_a_list_in_the_file() {
        let c = resolve(&["--token", "t", "--gateway", "https://b.example:4443"]).unwrap();
        assert_eq!(c.gateway, "https://gw.example:4443");
        assert_eq!(c.more_gateways, ["https://b.example:4443"]);
        for (text, want) in [
            (
                "gateway = \"https://a.example\"",
                vec!["https://a.example/"],
            ),
            (
                "gateway = [\"https://a.example\", \"https://b.example\"]",
                vec!["https://a.example/", "https://b.example/"],
            ),
        ] {
            let d = dir("gateways");
            let config = d.join("origin.toml");
            std::fs::write(&config, format!("{text}\ntoken = \"t\"\n")).unwrap();
            let cli = Cli::try_parse_from([
                "ptth-origin",
                "--config",
                config.to_str().unwrap(),
                "--mechanism",
                "rh2",
                "--host",
                "a.localhost",
                "--hello",
            ])
            .unwrap();
            let (c, _) = cli.resolve().unwrap();
            let got: Vec<String> = c.gateways().map(ToString::to_string).collect();
            assert_eq!(got, want, "{text}");
        }
        let e = resolve(&["--token", "t", "--gateway", "not a url"]).unwrap_err();
        assert!(format!("{e:#}").contains("not a URL"), "{e:#}");
    }

    #[test]
    fn threads_come_from_the_file_before_the_runtime_and_zero_is_refused() {
        let d = dir("threads");
        let config = d.join("origin.toml");
        std::fs::write(
            &config,
            "threads = 2
",
        )
        .unwrap();
        let cli = Cli::try_parse_from(["ptth-origin", "--config", config.to_str().unwrap()])
            .unwrap()
            .merge_file()
            .unwrap();
        assert_eq!(cli.threads, Some(2));
        let cli = Cli::try_parse_from([
            "ptth-origin",
            "--gateway",
            "https://gw.example:4443",
            "--mechanism",
            "rh2",
            "--host",
            "a.example",
            "--token",
            "t",
            "--hello",
            "--threads",
            "0",
        ])
        .unwrap();
        let e = cli.resolve().unwrap_err().to_string();
        assert!(e.contains("--threads"), "{e}");
    }

    #[test]
    fn routes_from_the_file_register_their_hosts_and_exclude_upstream_and_hello() {
        let d = dir("routes");
        let config = d.join("origin.toml");
        std::fs::write(
            &config,
            "token = \"t\"\n\
             [[route]]\nhost = \"api.example.com\"\npath = \"/v2\"\nupstream = \"h2c://127.0.0.1:50051\"\n\
             [[route]]\nhost = \"*.apps.example.com\"\nupstream = \"unix:/run/apps.sock\"\nproxy-protocol = true\n\
             [[route]]\nhost = \"app.example.com\"\nupstream = \"http://127.0.0.1:3000\"\n",
        )
        .unwrap();
        let cfg = config.to_str().unwrap();
        let base = [
            "ptth-origin",
            "--gateway",
            "https://gw.example:4443",
            "--mechanism",
            "rh2",
            "--host",
            "app.example.com",
            "--config",
            cfg,
        ];
        let (c, serve) = Cli::try_parse_from(base).unwrap().resolve().unwrap();
        assert_eq!(
            c.hosts,
            ["app.example.com", "api.example.com", "*.apps.example.com"]
        );
        let Serve::Upstream(routes) = serve else {
            panic!("routes serve upstreams")
        };
        let upstream = |host: &str, path: &str| {
            routes
                .route(host, path)
                .map(|r| r.proxy.upstream().text.clone())
        };
        assert_eq!(
            upstream("api.example.com", "/v2/x").unwrap(),
            "h2c://127.0.0.1:50051"
        );
        assert_eq!(upstream("api.example.com", "/v1"), None);
        assert_eq!(
            upstream("x.apps.example.com", "/").unwrap(),
            "unix:/run/apps.sock"
        );

        let mut with_upstream = base.to_vec();
        with_upstream.extend(["--upstream", "http://127.0.0.1:1"]);
        let e = Cli::try_parse_from(with_upstream)
            .unwrap()
            .resolve()
            .unwrap_err();
        assert!(e.to_string().contains("exactly one of"), "{e}");
        let mut with_hello = base.to_vec();
        with_hello.push("--hello");
        let e = Cli::try_parse_from(with_hello)
            .unwrap()
            .resolve()
            .unwrap_err();
        assert!(e.to_string().contains("exactly one of"), "{e}");

        std::fs::write(
            &config,
            "token = \"t\"\n[[route]]\npath = \"v2\"\nupstream = \"http://127.0.0.1:1\"\n",
        )
        .unwrap();
        let e = Cli::try_parse_from(base).unwrap().resolve().unwrap_err();
        assert!(format!("{e:#}").contains("must start with /"), "{e:#}");
        std::fs::write(
            &config,
            "token = \"t\"\n[[route]]\nupstream = \"ftp://127.0.0.1:1\"\n",
        )
        .unwrap();
        let e = Cli::try_parse_from(base).unwrap().resolve().unwrap_err();
        assert!(format!("{e:#}").contains("[[route]] 1"), "{e:#}");
    }

    #[test]
    fn upstream_tls_flags_reach_the_shorthand_route() {
        let all = [
            "ptth-origin",
            "--gateway",
            "https://gw.example:4443",
            "--mechanism",
            "rh2",
            "--host",
            "app.example.com",
            "--token",
            "t",
            "--upstream",
            "https://127.0.0.1:8443",
            "--upstream-ca",
            "/nonexistent/upstream-ca.pem",
        ];
        let e = Cli::try_parse_from(all).unwrap().resolve().unwrap_err();
        assert!(
            format!("{e:#}").contains("/nonexistent/upstream-ca.pem"),
            "{e:#}"
        );
    }
}
