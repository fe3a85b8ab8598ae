//! A real browser through the gateway (issue 12 item 0): headless Chromium opens the
//! `--hello` origin's `/app` page over `http://` (HTTP/1.1) and `https://` (HTTP/2 over TLS,
//! the dev certificate trusted by its SPKI hash) through rh1, rh2, upgrade-h1, connect-h2
//! and rh3. The page fetches, reads three server-sent events and echoes a WebSocket message
//! (over `https://` Chromium opens it with RFC 8441 extended CONNECT), writing each result
//! into the page; the test reads them back over the DevTools protocol.
//!
//! Chromium is Debian's `chromium` package (`.ci/run` installs it). The test is skipped only
//! when `PTTH_SKIP_BROWSER=1`; otherwise a missing Chromium fails it.

use futures_util::{SinkExt, StreamExt};
use ptth_tests::*;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

const MECHANISMS: &[&str] = &["rh1", "rh2", "upgrade-h1", "connect-h2", "rh3"];

/// How long one page may take to finish its checks (each check has 15 s of its own).
const PAGE: Duration = Duration::from_secs(60);

/// The standard base64 alphabet (RFC 4648 §4), which Chromium's SPKI list uses.
fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The base64 SHA-256 of the gateway certificate's SubjectPublicKeyInfo, for
/// `--ignore-certificate-errors-spki-list`.
fn gateway_spki(dev: &Path) -> String {
    let pem = std::fs::read(dev.join("gateway.pem")).unwrap();
    let cert = rustls_pemfile::certs(&mut pem.as_slice())
        .next()
        .expect("a certificate in gateway.pem")
        .unwrap();
    base64(&ptth_auth::spki_sha256(&cert).unwrap())
}

/// A headless Chromium with its DevTools endpoint, killed when dropped.
struct Chromium {
    child: tokio::process::Child,
    devtools: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_id: u64,
    _profile: TempDir,
}

impl Chromium {
    async fn start(spki: &str) -> Self {
        let profile = TempDir::new("chromium");
        let child = tokio::process::Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--disable-extensions",
                "--disable-background-networking",
                "--remote-debugging-port=0",
                // Every host name is the gateway's loopback address.
                "--host-resolver-rules=MAP * 127.0.0.1",
            ])
            .arg(format!("--user-data-dir={}", profile.0.display()))
            .arg(format!("--ignore-certificate-errors-spki-list={spki}"))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run chromium ({e}): install Debian's chromium package, or set PTTH_SKIP_BROWSER=1 to skip this test")
            });
        // Chromium writes its DevTools port and browser path here once it listens.
        let file = profile.0.join("DevToolsActivePort");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let text = loop {
            if let Ok(text) = std::fs::read_to_string(&file) {
                if text.lines().count() >= 2 {
                    break text;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "chromium did not open its DevTools endpoint within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let mut lines = text.lines();
        let port = lines.next().unwrap().trim();
        let path = lines.next().unwrap().trim();
        let (devtools, _) =
            tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}{path}"))
                .await
                .unwrap();
        Self {
            child,
            devtools,
            next_id: 0,
            _profile: profile,
        }
    }

    /// Sends one DevTools command and returns its answer (the raw JSON text).
    async fn call(&mut self, session: Option<&str>, method: &str, params: &str) -> String {
        self.next_id += 1;
        let id = self.next_id;
        let session = session
            .map(|s| format!(",\"sessionId\":\"{s}\""))
            .unwrap_or_default();
        let msg = format!("{{\"id\":{id},\"method\":\"{method}\",\"params\":{params}{session}}}");
        self.devtools.send(Message::text(msg)).await.unwrap();
        let wanted = format!("\"id\":{id},");
        tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let msg = self.devtools.next().await.unwrap().unwrap();
                if let Message::Text(text) = msg {
                    if text.contains(&wanted) {
                        return text.to_string();
                    }
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no DevTools answer to {method}"))
    }

    /// Opens `url` in a new tab and returns the page's results once its script is done.
    async fn results(&mut self, url: &str) -> String {
        let created = self
            .call(
                None,
                "Target.createTarget",
                &format!("{{\"url\":\"{url}\"}}"),
            )
            .await;
        let target = field(&created, "targetId").unwrap_or_else(|| panic!("{created}"));
        let attached = self
            .call(
                None,
                "Target.attachToTarget",
                &format!("{{\"targetId\":\"{target}\",\"flatten\":true}}"),
            )
            .await;
        let session = field(&attached, "sessionId").unwrap_or_else(|| panic!("{attached}"));
        let expression = "(() => { const t = id => (document.getElementById(id) || {}).textContent; \
             return t('done') === 'done' ? ['fetch', 'sse', 'ws', 'proto'].map(id => id + '=' + t(id)).join(';') : ''; })()";
        let params = format!("{{\"expression\":\"{expression}\",\"returnByValue\":true}}");
        let deadline = tokio::time::Instant::now() + PAGE;
        let out = loop {
            let answer = self.call(Some(&session), "Runtime.evaluate", &params).await;
            match field(&answer, "value") {
                Some(v) if !v.is_empty() => break v,
                _ => {}
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{url}: the page did not finish within {PAGE:?}: {answer}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        self.call(
            None,
            "Target.closeTarget",
            &format!("{{\"targetId\":\"{target}\"}}"),
        )
        .await;
        out
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// The string value of the first `"name":"..."` in a DevTools answer (values here carry no
/// quotes or escapes).
fn field(json: &str, name: &str) -> Option<String> {
    let start = json.find(&format!("\"{name}\":\""))? + name.len() + 4;
    let end = json[start..].find('"')? + start;
    Some(json[start..end].to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_fetches_reads_sse_and_echoes_a_websocket_through_every_mechanism() {
    if std::env::var("PTTH_SKIP_BROWSER").as_deref() == Ok("1") {
        eprintln!("skipped: PTTH_SKIP_BROWSER=1");
        return;
    }
    let fleet = Fleet::start("browser", MECHANISMS).await.unwrap();
    let gw = &fleet.gateway;
    let mut chromium = Chromium::start(&gateway_spki(&gw.dev)).await;
    for m in MECHANISMS {
        for (scheme, port, protocol) in [
            ("http", gw.listen.port(), "http/1.1"),
            ("https", gw.listen_tls.port(), "h2"),
        ] {
            let url = format!("{scheme}://{m}.localhost:{port}/app");
            let results = chromium.results(&url).await;
            let expected = format!(
                "fetch=status 200 bytes 1000 last 246;\
                 sse=events event 0|event 1|event 2;\
                 ws=echo ping from the browser;\
                 proto={protocol}"
            );
            assert_eq!(results, expected, "{url}");
        }
    }
}
