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
    /// The gateway's tunnel URL, e.g. https://gateway.example:4443 (repeatable: each
    /// gateway gets its own --connections; in a config file, a string or a list).
    #[arg(long = "gateway")]
    #[serde(default, deserialize_with = "one_or_many")]
    pub gateway: Vec<String>,
    /// Mechanism. Over TLS/TCP: rh1, rh2 (Potato), upgrade-h1, upgrade-h2 (PTTH Upgrade),
    /// connect-h2 (PTTH -01 extended CONNECT), h2-reverse (draft-bt), ptth10 (legacy
    /// PTTH/1.0). Over QUIC: rh3 (Potato), h3-reverse (draft-bt), options-h3 (PTTH -00
    /// OPTIONS), connect-h3 (PTTH -01 extended CONNECT over HTTP/3).
    #[arg(long)]
    pub mechanism: Option<String>,
    /// Host name this origin serves (repeatable), optionally with :port; https unless given
    /// as an origin (`http://host[:port]`).
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
    /// HTTP Basic (RFC 7617) user name presented to the gateway instead of a token; needs
    /// --basic-password-file or --basic-password.
    #[arg(long)]
    pub basic_user: Option<String>,
    /// The HTTP Basic password (prefer --basic-password-file: a flag shows in `ps`).
    #[arg(long, env = "PTTH_BASIC_PASSWORD", hide_env_values = true)]
    pub basic_password: Option<String>,
    /// Read the HTTP Basic password from a file (trailing CR/LF removed).
    #[arg(long)]
    pub basic_password_file: Option<PathBuf>,
    /// Ed25519 key (PKCS#8 PEM) that signs the gateway's challenge on ALPN-only mechanisms.
    #[arg(long)]
    pub signing_key: Option<PathBuf>,
    /// The id the gateway's grant knows the signing key by.
    #[arg(long)]
    pub key_id: Option<String>,
    /// CA certificate (PEM) that signs the gateway's certificate; WebPKI roots otherwise.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Also require the gateway certificate's SPKI SHA-256 (hex) to be this. Always
    /// enforced, with --danger-accept-any-gateway too.
    #[arg(long)]
    pub gateway_pin: Option<String>,
    /// Do not verify the gateway's certificate chain, name or dates. Dangerous without
    /// --gateway-pin (which still holds): logged at start and on every connection.
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
    /// Worker threads of the binary's runtime (default: one per CPU). On a machine whose
    /// CPUs are shared with the application or the gateway, fewer threads mean fewer
    /// cross-thread wake-ups; see docs/operations.md.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Whether `--config` was already merged in (so [`Cli::resolve`] reads it once).
    #[arg(skip)]
    #[serde(skip)]
    file_merged: bool,
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
    /// Merges the `--config` file under the flags (once); the binary reads `threads` from
    /// the result before it builds its runtime.
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

    /// Merges the `--config` file under the flags and checks everything.
    pub fn resolve(self) -> Result<(OriginConfig, Serve)> {
        let this = self.merge_file()?;
        if let Some(0) = this.threads {
            bail!("--threads must be at least 1");
        }
        this.resolve_merged()
    }

    fn resolve_merged(self) -> Result<(OriginConfig, Serve)> {
        let mut gateways = self.gateway.iter().map(|g| {
            g.parse::<http::Uri>()
                .with_context(|| format!("--gateway {g:?} is not a URL"))
        });
        let gateway = gateways
            .next()
            .ok_or_else(|| anyhow!("--gateway URL is required"))??;
        let more_gateways = gateways.collect::<Result<Vec<_>>>()?;
        let mechanism = self
            .mechanism
            .ok_or_else(|| anyhow!("--mechanism is required"))?
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
        let serve = match (self.upstream, self.hello) {
            (Some(u), false) => Serve::Upstream(u.parse().context("--upstream is not a URL")?),
            (None, true) => Serve::Hello,
            _ => bail!("give exactly one of --upstream URL or --hello"),
        };
        let mut c = OriginConfig::new(gateway, mechanism, self.hosts, None);
        c.more_gateways = more_gateways;
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
            hello: self.hello || f.hello,
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
            file_merged: self.file_merged,
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
