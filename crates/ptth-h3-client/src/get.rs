//! `ptth-h3-client get`: one request, curl-style; the body streams to stdout or `-o FILE`
//! as it arrives, and `-w` appends `\n<status> 3`.

use crate::connect::{self, Target, Trust};
use anyhow::{anyhow, bail, Context, Result};
use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH};
use http::{Method, Request};
use http_body::{Frame, SizeHint};
use http_body_util::{BodyExt, Empty, Full};
use std::io::Write;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{ready, Context as TaskContext, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, ReadBuf};

/// What `get` was asked to do.
#[derive(Debug)]
pub struct GetArgs {
    pub url: String,
    pub trust: Trust,
    pub connect_to: Option<String>,
    pub method: Option<String>,
    pub headers: Vec<String>,
    pub data: Option<String>,
    pub output: Option<PathBuf>,
    pub write_status: bool,
    pub connect_timeout: Duration,
}

type ReqBody = http_body_util::combinators::BoxBody<Bytes, ptth_h3::BoxError>;

/// Runs the request; `Ok` on any HTTP response.
pub async fn run(args: GetArgs) -> Result<()> {
    let target = Target::resolve(&args.url, args.connect_to.as_deref()).await?;
    let (body, length) = request_body(args.data.as_deref()).await?;
    let method = match (&args.method, &args.data) {
        (Some(m), _) => Method::from_bytes(m.as_bytes()).with_context(|| format!("-X {m}"))?,
        (None, Some(_)) => Method::POST,
        (None, None) => Method::GET,
    };
    let mut req = Request::builder()
        .method(method)
        .uri(target.uri.clone())
        .body(body)
        .context("building the request")?;
    let headers = req.headers_mut();
    headers.insert(
        http::header::USER_AGENT,
        HeaderValue::from_static(concat!("ptth-h3-client/", env!("CARGO_PKG_VERSION"))),
    );
    headers.insert(http::header::ACCEPT, HeaderValue::from_static("*/*"));
    for h in &args.headers {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| anyhow!("-H {h:?}: expected 'name: value'"))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .with_context(|| format!("-H {h:?}: bad field name"))?;
        let value = HeaderValue::from_str(value.trim())
            .with_context(|| format!("-H {h:?}: bad field value"))?;
        headers.insert(name, value);
    }
    if let Some(n) = length {
        headers.entry(CONTENT_LENGTH).or_insert(n.into());
    }

    let config = connect::client_config(&args.trust, 100)?;
    let conn = connect::connect(&target, &config, args.connect_timeout).await?;
    let res = conn
        .h3
        .sender()
        .send_request(req)
        .await
        .map_err(|e| anyhow!("request to {} failed: {e}", target.uri))?;
    let status = res.status();
    // Plain blocking writes: one request, and tokio's stdout would need the io-std feature
    // for the whole workspace.
    let mut out: Box<dyn Write + Send> = match &args.output {
        Some(path) => Box::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        ),
        None => Box::new(std::io::stdout()),
    };
    let mut body = res.into_body();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| anyhow!("response body from {} failed: {e}", target.uri))?;
        if let Ok(data) = frame.into_data() {
            out.write_all(&data).context("writing the body")?;
        }
    }
    if args.write_status {
        // Like curl's -w "\n%{http_code} %{http_version}".
        let mut line = format!("\n{} 3", status.as_u16());
        if args.output.is_some() {
            // The status goes to stdout even when the body went to a file, as with curl.
            line.remove(0);
            let mut stdout = std::io::stdout();
            stdout.write_all(line.as_bytes())?;
            stdout.flush()?;
        } else {
            out.write_all(line.as_bytes())?;
        }
    }
    out.flush().context("writing the body")?;
    conn.close().await;
    Ok(())
}

/// The request body: none, `@FILE` streamed from the file, or the literal text. Returns its
/// length when known.
async fn request_body(data: Option<&str>) -> Result<(ReqBody, Option<u64>)> {
    Ok(match data {
        None => (Empty::new().map_err(|never| match never {}).boxed(), None),
        Some(d) => match d.strip_prefix('@') {
            Some(path) => {
                let file = tokio::fs::File::open(path)
                    .await
                    .with_context(|| format!("opening {path}"))?;
                let len = file
                    .metadata()
                    .await
                    .with_context(|| format!("reading {path}"))?
                    .len();
                let body = FileBody {
                    file,
                    buf: BytesMut::new(),
                    remaining: len,
                };
                (body.map_err(ptth_h3::BoxError::from).boxed(), Some(len))
            }
            None => {
                let bytes = Bytes::copy_from_slice(d.as_bytes());
                let len = bytes.len() as u64;
                (
                    Full::new(bytes).map_err(|never| match never {}).boxed(),
                    Some(len),
                )
            }
        },
    })
}

/// A file read in 64 KiB chunks as the request body is sent, so a large upload is never
/// held in memory.
struct FileBody {
    file: tokio::fs::File,
    buf: BytesMut,
    remaining: u64,
}

const CHUNK: usize = 64 * 1024;

impl http_body::Body for FileBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        let want = CHUNK.min(usize::try_from(this.remaining).unwrap_or(CHUNK));
        this.buf.resize(want, 0);
        let mut read = ReadBuf::new(&mut this.buf[..]);
        ready!(Pin::new(&mut this.file).poll_read(cx, &mut read))?;
        let n = read.filled().len();
        if n == 0 {
            return Poll::Ready(Some(Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the file got shorter while it was sent",
            ))));
        }
        this.remaining -= n as u64;
        let chunk = this.buf.split_to(n).freeze();
        this.buf.clear();
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// Checks a `--max-time`/`--connect-timeout` value.
pub fn seconds(flag: &str, secs: f64) -> Result<Duration> {
    if !(secs.is_finite() && secs > 0.0) {
        bail!("{flag} must be a positive number of seconds");
    }
    Ok(Duration::from_secs_f64(secs))
}
