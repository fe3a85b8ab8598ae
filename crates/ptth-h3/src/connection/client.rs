//! The HTTP client role: open request streams in this endpoint's direction, send the
//! request head, body and trailers, and read the response.

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;

use super::body::{decode_fields, send_body, write_headers, FieldsError, FrameReader};
use super::{stream_error, stream_id, InFlight, Shared};
use super::{H3Stream, Protocol, RecvBody, RequestHandle};
use crate::error::{BoxError, Culprit, H3Error};
use crate::frame::{H3_MESSAGE_ERROR, H3_REQUEST_CANCELLED};
use crate::qpack;

/// Sends requests on a connection; cheap to clone.
#[derive(Debug, Clone)]
pub struct SendRequest {
    shared: Arc<Shared>,
}

struct Opened {
    send: quinn::SendStream,
    reader: FrameReader,
    handle: RequestHandle,
    guard: InFlight,
}

impl SendRequest {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// Opens a request stream and sends the request head.
    async fn open(
        &self,
        parts: &http::request::Parts,
        protocol: Option<&str>,
    ) -> Result<Opened, H3Error> {
        let shared = &self.shared;
        shared.check_may_send()?;
        if protocol.is_some() {
            // RFC 9220 §3 (RFC 8441 §4): a client must not send :protocol before it has
            // received SETTINGS_ENABLE_CONNECT_PROTOCOL = 1.
            let settings = shared.peer_settings().await?;
            if !settings.enable_connect_protocol {
                return Err(H3Error::NotNegotiated("extended CONNECT"));
            }
        }
        let (mut send, mut recv) = shared
            .conn
            .open_bi()
            .await
            .map_err(|e| shared.conn_error(&e))?;
        let id = stream_id(send.id());
        // RFC 9114 §5.2: requests on streams at or above a received GOAWAY ID will not be
        // processed; do not send them (the caller may retry elsewhere).
        if shared.beyond_goaway(id) {
            stream_error(Some(&mut send), Some(&mut recv), H3_REQUEST_CANCELLED);
            return Err(H3Error::GoingAway);
        }
        let guard = shared.in_flight();
        let handle = RequestHandle::new(shared, id);
        let fields = qpack::request_fields(parts, protocol);
        if let Err(e) = write_headers(shared, &mut send, &fields).await {
            stream_error(Some(&mut send), Some(&mut recv), H3_REQUEST_CANCELLED);
            return Err(e);
        }
        Ok(Opened {
            send,
            reader: FrameReader::new(shared.clone(), recv),
            handle,
            guard,
        })
    }

    /// Reads the final response head, skipping interim (1xx) responses.
    async fn read_response(
        &self,
        reader: &mut FrameReader,
    ) -> Result<http::response::Parts, H3Error> {
        loop {
            let Some(block) = reader.read_head(true).await? else {
                return Err(H3Error::Stream {
                    raised_by: Culprit::Local,
                    code: H3_MESSAGE_ERROR,
                    reason: "response stream ended before HEADERS".into(),
                });
            };
            let fields = match decode_fields(&self.shared, &block) {
                Ok(fields) => fields,
                Err(FieldsError::Connection(e)) => return Err(e),
                Err(FieldsError::Stream(code, reason)) => {
                    reader.stop(code);
                    return Err(H3Error::Stream {
                        raised_by: Culprit::Local,
                        code,
                        reason,
                    });
                }
            };
            match qpack::parse_response(fields) {
                // RFC 9114 §4.1: "an HTTP response ... zero or more interim responses
                // followed by one final response".
                Ok(parts) if parts.status.is_informational() => continue,
                Ok(parts) => return Ok(parts),
                Err(e) => {
                    // RFC 9114 §4.1.2: malformed response, stream error H3_MESSAGE_ERROR.
                    reader.stop(H3_MESSAGE_ERROR);
                    return Err(H3Error::Stream {
                        raised_by: Culprit::Local,
                        code: H3_MESSAGE_ERROR,
                        reason: e.to_string(),
                    });
                }
            }
        }
    }

    /// Sends a request and waits for the response head. The request body is streamed as
    /// DATA frames (concurrently with reading the response) and its trailers as a final
    /// HEADERS frame. A [`Protocol`] extension is sent as `:protocol`.
    pub async fn send_request<B>(&self, request: Request<B>) -> Result<Response<RecvBody>, H3Error>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let (parts, body) = request.into_parts();
        let protocol = parts.extensions.get::<Protocol>().map(|p| p.0.clone());
        let Opened {
            mut send,
            mut reader,
            handle,
            guard,
        } = self.open(&parts, protocol.as_deref()).await?;
        if body.is_end_stream() {
            let _ = send.finish();
        } else {
            let shared = self.shared.clone();
            tokio::spawn(async move {
                match send_body(&shared, &mut send, body).await {
                    Ok(()) => {
                        let _ = send.finish();
                    }
                    // The peer stopped reading (for example it answered early): nothing to do.
                    Err(H3Error::Stream {
                        raised_by: Culprit::Peer,
                        ..
                    }) => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "request body failed");
                        stream_error(Some(&mut send), None, H3_REQUEST_CANCELLED);
                    }
                }
            });
        }
        let parts = self.read_response(&mut reader).await?;
        let body = RecvBody::new(reader, true, Some(guard), handle.clone());
        let mut response = Response::from_parts(parts, body);
        response.extensions_mut().insert(handle);
        Ok(response)
    }

    /// Sends a CONNECT or extended CONNECT request (RFC 9114 §4.4, RFC 9220) and returns
    /// the response head and the stream as a byte stream. Put a [`Protocol`] in the
    /// request's extensions for extended CONNECT. The caller checks the status.
    pub async fn send_connect(
        &self,
        request: Request<()>,
    ) -> Result<(Response<()>, H3Stream), H3Error> {
        let (parts, ()) = request.into_parts();
        let protocol = parts.extensions.get::<Protocol>().map(|p| p.0.clone());
        let Opened {
            send,
            mut reader,
            handle,
            guard,
        } = self.open(&parts, protocol.as_deref()).await?;
        let parts = self.read_response(&mut reader).await?;
        let mut response = Response::from_parts(parts, ());
        response.extensions_mut().insert(handle.clone());
        Ok((response, H3Stream::new(reader, send, true, handle, guard)))
    }
}
