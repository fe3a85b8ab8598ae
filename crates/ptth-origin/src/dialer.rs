//! The [`Dialer`]: what every connection of one origin to one gateway shares, whichever
//! transport carries it. The TLS client config (for TCP and QUIC alike), the QUIC endpoint,
//! the gateway's addresses, the setup request's fields, the ORIGIN frame, the answer to the
//! gateway's authorisation request, and the [`Link`] that says when a connection is
//! registered. `dial` (TCP) and `quic` build on it; it knows neither.

use crate::serve::{AuthorizeSeen, Authorizer};
use crate::{OriginConfig, OriginStatus};
use anyhow::{anyhow, bail, Context, Result};
use ptth_core::{Mechanism, ProtocolId, SerializedOrigin, SetupRequestParams, SetupTokens};
use rustls::pki_types::ServerName;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::watch;
use tokio_rustls::TlsConnector;

/// Everything one dial to one gateway needs, shared by the slots of its pool.
pub(crate) struct Dialer {
    pub(crate) config: Arc<OriginConfig>,
    /// The gateway's URL as configured (log lines name it).
    pub(crate) gateway: http::Uri,
    /// Its position in [`OriginStatus::gateways`].
    pub(crate) index: usize,
    /// The read-out [`crate::Origin::status`] hands out.
    pub(crate) status: Arc<watch::Sender<OriginStatus>>,
    /// Connection counts and readiness, per configured gateway (`index` is this one's).
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
    pub(crate) connector: TlsConnector,
    pub(crate) server_name: ServerName<'static>,
    pub(crate) authority: http::uri::Authority,
    pub(crate) origins: Vec<SerializedOrigin>,
    pub(crate) tokens: SetupTokens,
    pub(crate) signing_key: Option<Arc<ptth_auth::Ed25519SigningKey>>,
    /// The QUIC endpoint, for mechanisms that dial over QUIC.
    pub(crate) quic: QuicClient,
}

impl Dialer {
    /// The gateway's addresses, resolved now (each dial re-resolves, so a changed DNS
    /// answer is followed), in the order slot `slot` tries them: see [`addresses_for_slot`].
    pub(crate) async fn addresses(&self, slot: usize) -> Result<Vec<SocketAddr>> {
        let host = self
            .authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = self.authority.port_u16().unwrap_or(443);
        let addrs: Vec<SocketAddr> = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::net::lookup_host((host, port)),
        )
        .await
        .map_err(|_| anyhow!("resolving {host} timed out"))?
        .with_context(|| format!("resolving {host}"))?
        .collect();
        let addrs = addresses_for_slot(addrs, slot);
        if addrs.is_empty() {
            bail!("{host} resolved to no address");
        }
        Ok(addrs)
    }

    /// The draft-bt ORIGIN frame: our serialized origins, or the test-only override.
    pub(crate) fn origin_frame(&self) -> Result<ptth_core::OriginFrame> {
        let entries = match &self.config.origin_frame_override {
            Some(texts) => texts
                .iter()
                .map(|t| ptth_core::OriginEntry::new(t))
                .collect::<Result<Vec<_>, _>>()?,
            None => self
                .origins
                .iter()
                .map(|o| ptth_core::OriginEntry::new(&o.to_string()))
                .collect::<Result<Vec<_>, _>>()?,
        };
        Ok(ptth_core::OriginFrame::new(entries)?)
    }

    pub(crate) fn params(&self, offered: Vec<ProtocolId>) -> SetupRequestParams {
        SetupRequestParams {
            gateway_authority: self.authority.clone(),
            origins: self.origins.clone(),
            offered,
            authorization: self.config.credential.as_ref().map(|c| c.header_value()),
        }
    }

    pub(crate) fn add_scope_fields(&self, req: &mut http::Request<()>) {
        if let Ok(v) = http::HeaderValue::from_str(&self.config.path_prefixes.join(", ")) {
            req.headers_mut().insert(ptth_auth::PATH_PREFIX_FIELD, v);
        }
    }

    /// What answers the gateway's authorisation request on one connection, bound to that
    /// connection's TLS exporter value.
    pub(crate) fn authorizer(&self, exporter: Option<[u8; 32]>) -> Authorizer {
        Authorizer {
            credential: self.config.credential.clone(),
            signing_key: self.signing_key.clone(),
            key_id: self.config.key_id.clone(),
            exporter,
            origins: self.origins.clone(),
            path_prefixes: self.config.path_prefixes.clone(),
            seen: Default::default(),
        }
    }
}

/// How a connection that did not fail ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// It ended cleanly: the gateway closed it, or we did on shutdown.
    Ended,
    /// The gateway closed it right after the answer to its authorisation request: a
    /// refusal, or a gateway that is stopping (the dial loop tells which).
    Refused,
}

/// The order in which slot `slot` of a pool tries a gateway's addresses: IPv4 before IPv6
/// (a gateway bound to `127.0.0.1` is not reachable on `::1`, and QUIC learns that only by
/// timing out), duplicates removed, and the slots spread over the addresses of the first
/// family: slot `i` starts at the `i`-th of them, so a name resolving to several gateways
/// behind one name gets connections to each, and a slot whose address fails tries the
/// next ones.
pub(crate) fn addresses_for_slot(mut addrs: Vec<SocketAddr>, slot: usize) -> Vec<SocketAddr> {
    let mut seen = std::collections::HashSet::new();
    addrs.retain(|a| seen.insert(*a));
    addrs.sort_by_key(SocketAddr::is_ipv6);
    let v4 = addrs.iter().filter(|a| a.is_ipv4()).count();
    let first_family = if v4 > 0 { v4 } else { addrs.len() };
    if first_family > 0 {
        addrs[..first_family].rotate_left(slot % first_family);
    }
    addrs
}

/// One connection of a slot, from dial to end: where it went, and whether the gateway
/// registered it. Registration is the event the origin's status counts and the log line
/// `reversed connection up` marks; it is undone when the link is dropped.
pub(crate) struct Link<'a> {
    dialer: &'a Dialer,
    pub(crate) slot: usize,
    /// The address the connection reached.
    pub(crate) addr: std::sync::Mutex<Option<SocketAddr>>,
    registered: std::sync::atomic::AtomicBool,
}

impl<'a> Link<'a> {
    pub(crate) fn new(dialer: &'a Dialer, slot: usize) -> Self {
        Self {
            dialer,
            slot,
            addr: Default::default(),
            registered: Default::default(),
        }
    }

    /// The connection reached `addr`.
    pub(crate) fn reached(&self, addr: SocketAddr) {
        if let Ok(mut a) = self.addr.lock() {
            *a = Some(addr);
        }
    }

    /// The address, for log lines (`-` before the connection reached one).
    pub(crate) fn addr(&self) -> String {
        match self.addr.lock().ok().and_then(|a| *a) {
            Some(a) => a.to_string(),
            None => "-".to_string(),
        }
    }

    /// The gateway admitted this connection: logged once, and counted in the status.
    pub(crate) fn registered(&self, mechanism: Mechanism, how: &str) {
        use std::sync::atomic::Ordering::SeqCst;
        if self.registered.swap(true, SeqCst) {
            return;
        }
        self.dialer.status.send_modify(|s| {
            if let Some(g) = s.gateways.get_mut(self.dialer.index) {
                g.registered += 1;
            }
        });
        self.dialer.metrics.slot(
            self.dialer.index,
            self.slot,
            crate::metrics::SlotState::Registered,
        );
        tracing::info!(
            slot = self.slot,
            gateway = %self.dialer.gateway,
            addr = %self.addr(),
            %mechanism,
            "{how}"
        );
    }

    /// Whether the gateway admitted this connection.
    pub(crate) fn is_registered(&self) -> bool {
        self.registered.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for Link<'_> {
    fn drop(&mut self) {
        if self.is_registered() {
            self.dialer.status.send_modify(|s| {
                if let Some(g) = s.gateways.get_mut(self.dialer.index) {
                    g.registered = g.registered.saturating_sub(1);
                }
            });
        }
    }
}

/// On ALPN-only mechanisms nothing tells the origin it was admitted: the gateway asks for
/// the authorisation answer (Potato §5.2) and then either sends requests or closes the
/// connection at once. So a connection counts as registered when a request other than the
/// authorisation request arrives, or when it has stayed open this long since it came up or
/// answered, whichever was later.
pub(crate) const ADMISSION_QUIET: Duration = Duration::from_millis(500);

/// Serves `serving` and marks `link` registered per [`ADMISSION_QUIET`]; returns what
/// `serving` returns.
pub(crate) async fn serve_and_watch_admission<F: std::future::Future>(
    serving: F,
    seen: &AuthorizeSeen,
    link: &Link<'_>,
    mechanism: Mechanism,
    how: &str,
) -> F::Output {
    let mut serving = std::pin::pin!(serving);
    let admitted = async {
        loop {
            let changed = seen.changed();
            let mut changed = std::pin::pin!(changed);
            changed.as_mut().enable();
            if seen.any_other_request() {
                return;
            }
            if tokio::time::timeout(ADMISSION_QUIET, changed)
                .await
                .is_err()
            {
                return;
            }
        }
    };
    tokio::select! {
        r = serving.as_mut() => return r,
        () = admitted => link.registered(mechanism, how),
    }
    serving.await
}

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dialer")
            .field("gateway", &self.gateway)
            .field("mechanism", &self.config.mechanism)
            .field("origins", &self.origins)
            .finish()
    }
}

/// The origin's QUIC client config, made on first use and shared by every slot of one
/// origin, and its QUIC endpoints: one per thread that runs a current-thread runtime (the
/// origin's workers, `OriginConfig::workers`, and each reverse CONNECT channel's thread), so
/// that a connection's datagrams are read and written by the thread that drives it. With
/// one endpoint for all, its socket was read on the thread that dialled first, and every
/// datagram of a connection on another worker crossed threads twice (the endpoint's driver,
/// then the connection's). The threads of a multi-thread runtime (a library origin's
/// default) share one endpoint, as they share one reactor.
#[derive(Debug, Default)]
pub(crate) struct QuicClient {
    client: OnceLock<quinn::ClientConfig>,
    /// By thread (`None`: shared by a multi-thread runtime's threads). At most one per
    /// thread the origin runs connections on, all made at start-up or on first dial.
    endpoints:
        std::sync::Mutex<std::collections::HashMap<Option<std::thread::ThreadId>, quinn::Endpoint>>,
}

impl QuicClient {
    /// The endpoint for the calling thread and the client config, each made on first use.
    /// Call it from the runtime that will drive the connection: a new endpoint's socket and
    /// driver belong to the calling runtime.
    pub(crate) fn get(
        &self,
        config: &OriginConfig,
    ) -> Result<(quinn::Endpoint, quinn::ClientConfig)> {
        let client = match self.client.get() {
            Some(c) => c.clone(),
            None => {
                let mut tls = tls_config(config)?;
                // RFC 9001 §4.6.1: no early data from us.
                tls.enable_early_data = false;
                let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls))
                    .map_err(|e| anyhow!("TLS config unusable for QUIC: {e}"))?;
                let mut client = quinn::ClientConfig::new(Arc::new(crypto));
                client.transport_config(Arc::new(ptth_h3::transport::tunnel_transport_config()));
                self.client.get_or_init(|| client).clone()
            }
        };
        let key = crate::own_reactor::current_thread_runtime();
        let mut endpoints = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(endpoint) = endpoints.get(&key) {
            return Ok((endpoint.clone(), client));
        }
        // A dual-stack socket reaches IPv4 and IPv6 gateways alike; fall back to IPv4.
        let endpoint = quinn::Endpoint::client(SocketAddr::from(([0u16; 8], 0)))
            .or_else(|_| quinn::Endpoint::client(SocketAddr::from(([0u8; 4], 0))))
            .context("binding a UDP socket for QUIC")?;
        endpoints.insert(key, endpoint.clone());
        Ok((endpoint, client))
    }
}

/// On an ALPN-only connection, a gateway that refuses the authorisation answer closes the
/// connection without a reason. This says whether that is what this connection looked
/// like: the answer went out, nothing else was asked, and the connection ended before it
/// counted as registered, not because we were stopping. A gateway that is itself stopping
/// can look the same once; the dial loop tells the two apart by asking again.
pub(crate) fn looks_refused(
    link: &Link<'_>,
    seen: &AuthorizeSeen,
    stopping: &watch::Receiver<bool>,
) -> bool {
    seen.only_the_authorisation_request() && !link.is_registered() && !*stopping.borrow()
}

/// What the origin logs when the gateway refused the answer to its authorisation request.
pub(crate) const REFUSED: &str = "the gateway closed the connection right after our answer to its authorisation request: it refused this origin's credential or the origins and paths it claims (the gateway's log says which)";

/// The tunnel's crypto: *ring*'s, with the AES-128-GCM suites offered first.
///
/// A gateway keeps to the client's order (rustls's default, `ignore_client_order` off), so
/// this decides the tunnel's cipher. *ring* lists AES-256-GCM first; AES-128-GCM has four
/// rounds fewer per block and the same GHASH, and a reverse CONNECT flow is sealed and
/// opened once at each end for every octet it carries (about 16 % more octets per second on
/// this machine's AES-NI, `openssl speed`: 5.9 against 5.1 GB/s; performance.md finding
/// 10). Both are TLS 1.3's mandatory-to-implement and recommended suites (RFC 8446 §9.1,
/// RFC 9325 §4.2), so no peer is refused for it: the set is the same, only the order moves.
pub(crate) fn tunnel_provider() -> rustls::crypto::CryptoProvider {
    use rustls::CipherSuite::{
        TLS13_AES_128_GCM_SHA256, TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    };
    let mut provider = rustls::crypto::ring::default_provider();
    // A stable sort: each version's other suites keep *ring*'s order behind.
    provider.cipher_suites.sort_by_key(|s| {
        !matches!(
            s.suite(),
            TLS13_AES_128_GCM_SHA256
                | TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                | TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
        )
    });
    provider
}

/// Builds the TLS client config: WebPKI roots by default, or a private CA.
pub(crate) fn tls_config(config: &OriginConfig) -> Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    match &config.ca {
        Some(path) => {
            let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            for c in rustls_pemfile::certs(&mut pem.as_slice()) {
                roots.add(c.with_context(|| format!("parsing {}", path.display()))?)?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(tunnel_provider());
    // draft-thomson-ptth-potato §6: the origin "MUST NOT answer" a gateway it cannot
    // establish as authoritative, so the gateway's chain is always checked unless the
    // operator explicitly opted out, and a pin always holds: with the opt-out it is the one
    // check left. TCP and QUIC mechanisms both build their TLS from here.
    let verifier = match (config.danger_accept_any_gateway, config.gateway_pin) {
        (true, Some(pin)) => ptth_auth::pinned_gateway_verifier(pin),
        (true, None) => ptth_auth::danger_accept_any_gateway(),
        (false, pin) => ptth_auth::gateway_verifier(roots, pin)?,
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut tls = match (&config.client_cert, &config.client_key) {
        (Some(cert), Some(key)) => {
            let pem = std::fs::read(cert).with_context(|| format!("reading {}", cert.display()))?;
            let chain =
                rustls_pemfile::certs(&mut pem.as_slice()).collect::<Result<Vec<_>, _>>()?;
            let pem = std::fs::read(key).with_context(|| format!("reading {}", key.display()))?;
            let key = rustls_pemfile::private_key(&mut pem.as_slice())?
                .ok_or_else(|| anyhow!("{} holds no private key", key.display()))?;
            builder.with_client_auth_cert(chain, key)?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => bail!("--cert and --key go together"),
    };
    tls.alpn_protocols = vec![config.mechanism.tls_alpn(config.alpn_set).to_vec()];
    Ok(tls)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The local port of the endpoint `get` hands the calling thread.
    fn endpoint_port(quic: &QuicClient, config: &OriginConfig) -> u16 {
        quic.get(config).unwrap().0.local_addr().unwrap().port()
    }

    #[test]
    fn each_current_thread_runtime_gets_its_own_quic_endpoint_and_a_multi_thread_one_shares_one() {
        let config = OriginConfig::new(
            "https://gateway.example".parse().unwrap(),
            "rh3".parse().unwrap(),
            vec!["app.example".into()],
            None,
        );
        let quic = Arc::new(QuicClient::default());
        // Two worker-like threads, each with a current-thread runtime, asking twice.
        let on_thread = |quic: Arc<QuicClient>, config: OriginConfig| {
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    let first = endpoint_port(&quic, &config);
                    assert_eq!(
                        endpoint_port(&quic, &config),
                        first,
                        "the same thread, the same endpoint"
                    );
                    first
                })
            })
        };
        let a = on_thread(quic.clone(), config.clone()).join().unwrap();
        let b = on_thread(quic.clone(), config.clone()).join().unwrap();
        assert_ne!(a, b, "each worker thread reads a socket of its own");
        // The threads of one multi-thread runtime share one.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let ports: Vec<u16> = rt.block_on(async {
            let mut ports = Vec::new();
            for _ in 0..4 {
                let (quic, config) = (quic.clone(), config.clone());
                ports.push(
                    tokio::spawn(async move { endpoint_port(&quic, &config) })
                        .await
                        .unwrap(),
                );
            }
            ports
        });
        assert!(ports.iter().all(|&p| p == ports[0]), "{ports:?}");
        assert!(ports[0] != a && ports[0] != b);
    }

    /// Runs the origin's TLS config against a gateway-like server (*ring*'s default
    /// provider, rustls's default order handling) in memory; returns the suite they agreed.
    fn negotiated_suite(client: rustls::ClientConfig) -> rustls::CipherSuite {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["gateway.test".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
        let mut c =
            rustls::ClientConnection::new(Arc::new(client), "gateway.test".try_into().unwrap())
                .unwrap();
        let mut s = rustls::ServerConnection::new(Arc::new(server)).unwrap();
        while c.is_handshaking() || s.is_handshaking() {
            let mut wire = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut wire).unwrap();
            }
            let mut rd = &wire[..];
            while !rd.is_empty() {
                s.read_tls(&mut rd).unwrap();
                s.process_new_packets().unwrap();
            }
            let mut wire = Vec::new();
            while s.wants_write() {
                s.write_tls(&mut wire).unwrap();
            }
            let mut rd = &wire[..];
            while !rd.is_empty() {
                c.read_tls(&mut rd).unwrap();
                c.process_new_packets().unwrap();
            }
        }
        let (ours, theirs) = (
            c.negotiated_cipher_suite().unwrap().suite(),
            s.negotiated_cipher_suite().unwrap().suite(),
        );
        assert_eq!(ours, theirs);
        ours
    }

    #[test]
    fn the_tunnel_agrees_on_aes_128_gcm_with_a_gateway_and_offers_the_same_suites() {
        let mut config = OriginConfig::new(
            "https://gateway.test".parse().unwrap(),
            "rh2".parse().unwrap(),
            vec!["app.example".into()],
            None,
        );
        config.danger_accept_any_gateway = true;
        assert_eq!(
            negotiated_suite(tls_config(&config).unwrap()),
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
        );
        // *ring*'s default order alone would have given AES-256: the order is what moved.
        let plain = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(ptth_auth::danger_accept_any_gateway())
        .with_no_client_auth();
        assert_eq!(
            negotiated_suite(plain),
            rustls::CipherSuite::TLS13_AES_256_GCM_SHA384
        );
        // The same suites are offered, none added or dropped.
        let suites = |p: &rustls::crypto::CryptoProvider| {
            let mut v: Vec<u16> = p.cipher_suites.iter().map(|s| s.suite().into()).collect();
            v.sort_unstable();
            v
        };
        assert_eq!(
            suites(&tunnel_provider()),
            suites(&rustls::crypto::ring::default_provider())
        );
    }

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn slots_spread_over_the_addresses_of_the_first_family() {
        let addrs = vec![
            a("[::1]:443"),
            a("10.0.0.1:443"),
            a("10.0.0.2:443"),
            a("10.0.0.1:443"),
            a("10.0.0.3:443"),
        ];
        let firsts: Vec<SocketAddr> = (0..6)
            .map(|slot| addresses_for_slot(addrs.clone(), slot)[0])
            .collect();
        assert_eq!(
            firsts,
            [
                a("10.0.0.1:443"),
                a("10.0.0.2:443"),
                a("10.0.0.3:443"),
                a("10.0.0.1:443"),
                a("10.0.0.2:443"),
                a("10.0.0.3:443"),
            ]
        );
        // Every slot can fall back to every address, IPv6 last, each once.
        let order = addresses_for_slot(addrs.clone(), 1);
        assert_eq!(
            order,
            [
                a("10.0.0.2:443"),
                a("10.0.0.3:443"),
                a("10.0.0.1:443"),
                a("[::1]:443"),
            ]
        );
        // A name with only IPv6 addresses spreads over those.
        let v6 = vec![a("[::1]:443"), a("[::2]:443")];
        assert_eq!(addresses_for_slot(v6.clone(), 1)[0], a("[::2]:443"));
        assert!(addresses_for_slot(Vec::new(), 3).is_empty());
    }
}
