//! The HTTP server role: accept request streams from the side allowed to send them,
//! refuse them after GOAWAY, and send responses.

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body::Body;
use quinn::VarInt;
use tokio::sync::mpsc;

use super::body::{decode_fields, send_body, write_headers, FieldsError, FrameReader};
use super::{stream_error, stream_id, Accepted, H3Connection, InFlight, Shared, REJECTED};
use super::{H3Stream, Protocol, RecvBody, RequestHandle};
use crate::error::{BoxError, Culprit, H3Error};
use crate::frame::{ProtocolError, H3_INTERNAL_ERROR, H3_MESSAGE_ERROR, H3_REQUEST_INCOMPLETE};
use crate::qpack;

/// Accepts the peer's bidirectional streams.
pub(crate) async fn accept_bi_loop(shared: Arc<Shared>, tx: mpsc::Sender<Accepted>) {
    while let Ok((mut send, mut recv)) = shared.conn.accept_bi().await {
        let id = stream_id(recv.id());
        if !shared.peer_sends_requests() {
            // RFC 9114 §6.1: "Clients MUST treat receipt of a server-initiated
            // bidirectional stream as a connection error of type H3_STREAM_CREATION_ERROR
            // unless such an extension has been negotiated." Generalised: a bidi stream
            // from the side that does not send requests in this direction.
            shared.fail(ProtocolError::StreamCreation(
                "request stream from the side that does not send requests",
            ));
            return;
        }
        let rejected = {
            let mut st = shared.state();
            let next = id.into_inner() + 4;
            st.next_peer_request = Some(st.next_peer_request.map_or(next, |n| n.max(next)));
            // RFC 9114 §5.2: "Once GOAWAY is sent, the server MUST reject requests sent on
            // streams with an identifier greater than or equal to the indicated stream
            // ID."
            st.sent_goaway.is_some_and(|g| id.into_inner() >= g)
        };
        if rejected {
            // RFC 9114 §4.1.1: H3_REQUEST_REJECTED tells the client it may retry.
            stream_error(Some(&mut send), Some(&mut recv), REJECTED);
            continue;
        }
        let guard = shared.in_flight();
        tokio::spawn(read_request(shared.clone(), send, recv, guard, tx.clone()));
    }
}

fn message_error(send: &mut quinn::SendStream, reader: &mut FrameReader, code: u64) {
    stream_error(Some(send), None, code);
    reader.stop(code);
}

async fn read_request(
    shared: Arc<Shared>,
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
    guard: InFlight,
    tx: mpsc::Sender<Accepted>,
) {
    let id = stream_id(send.id());
    let mut reader = FrameReader::new(shared.clone(), recv);
    let head = match shared.config.request_header_timeout {
        Some(limit) => match tokio::time::timeout(limit, reader.read_head(false)).await {
            Ok(head) => head,
            Err(_) => {
                // RFC 9114 §4.1.1: a request stream without a full request is
                // H3_REQUEST_INCOMPLETE; one that sends none in time gets the same answer.
                tracing::debug!(%id, ?limit, "no request HEADERS in time");
                message_error(&mut send, &mut reader, H3_REQUEST_INCOMPLETE);
                return;
            }
        },
        None => reader.read_head(false).await,
    };
    let block = match head {
        Ok(Some(block)) => block,
        Ok(None) => {
            // RFC 9114 §4.1.1: a stream that ends without a full request is
            // H3_REQUEST_INCOMPLETE.
            message_error(&mut send, &mut reader, H3_REQUEST_INCOMPLETE);
            return;
        }
        Err(_) => return,
    };
    let fields = match decode_fields(&shared, &block) {
        Ok(fields) => fields,
        Err(FieldsError::Connection(_)) => return,
        Err(FieldsError::Stream(code, _)) => {
            message_error(&mut send, &mut reader, code);
            return;
        }
    };
    let (parts, protocol) = match qpack::parse_request(fields) {
        Ok(p) => p,
        Err(e) => {
            tracing::debug!(%id, error = %e, "malformed request");
            message_error(&mut send, &mut reader, H3_MESSAGE_ERROR);
            return;
        }
    };
    // RFC 9220 §3 / RFC 8441 §4: ":protocol" without our SETTINGS_ENABLE_CONNECT_PROTOCOL
    // makes the request malformed.
    if protocol.is_some() && !shared.config.enable_connect_protocol {
        message_error(&mut send, &mut reader, H3_MESSAGE_ERROR);
        return;
    }
    let handle = RequestHandle::new(&shared, id);
    // For CONNECT the stream is the tunnel, not a body: the reader goes to the sender.
    let (body, tunnel) = if parts.method == Method::CONNECT {
        (RecvBody::empty(handle.clone()), Some(reader))
    } else {
        (RecvBody::new(reader, false, None, handle.clone()), None)
    };
    let mut request = Request::from_parts(parts, body);
    if let Some(p) = protocol {
        request.extensions_mut().insert(Protocol(p));
    }
    request.extensions_mut().insert(handle.clone());
    let sender = ResponseSender {
        shared,
        send: Some(send),
        tunnel,
        handle,
        guard: Some(guard),
    };
    if let Err(mpsc::error::SendError((_, mut sender))) = tx.send((request, sender)).await {
        // Nobody accepts requests any more: refuse it so the client can retry.
        if let Some(send) = sender.send.as_mut() {
            stream_error(Some(send), None, REJECTED);
        }
        sender.send = None;
    }
}

/// Sends the response to one accepted request.
#[derive(Debug)]
pub struct ResponseSender {
    shared: Arc<Shared>,
    send: Option<quinn::SendStream>,
    tunnel: Option<FrameReader>,
    handle: RequestHandle,
    guard: Option<InFlight>,
}

impl ResponseSender {
    /// The request stream's handle (stream ID, datagrams).
    pub fn request_handle(&self) -> &RequestHandle {
        &self.handle
    }

    /// Sends the response head, streams its body as DATA frames and its trailers as a
    /// final HEADERS frame, then finishes the stream.
    pub async fn send_response<B>(mut self, response: Response<B>) -> Result<(), H3Error>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        let Some(mut send) = self.send.take() else {
            return Err(H3Error::Body("response already sent".into()));
        };
        let (parts, body) = response.into_parts();
        let result = async {
            write_headers(&self.shared, &mut send, &qpack::response_fields(&parts)).await?;
            send_body(&self.shared, &mut send, body).await
        }
        .await;
        if let Err(e) = result {
            if e.raised_by() != Some(Culprit::Peer) {
                stream_error(Some(&mut send), None, H3_INTERNAL_ERROR);
            }
            return Err(e);
        }
        let _ = send.finish();
        // Count the request in flight until the peer has the whole response, so a
        // graceful shutdown does not close the connection under it.
        let stopped = send.stopped();
        let guard = self.guard.take();
        tokio::spawn(async move {
            let _ = stopped.await;
            drop(guard);
        });
        Ok(())
    }

    /// Answers a CONNECT or extended CONNECT request and returns the tunnel. The stream
    /// stays open for the tunnel when the status is 2xx; otherwise it is finished.
    pub async fn send_connect_response(
        mut self,
        response: Response<()>,
    ) -> Result<H3Stream, H3Error> {
        let (Some(mut send), Some(reader)) = (self.send.take(), self.tunnel.take()) else {
            return Err(H3Error::NotNegotiated(
                "send_connect_response on a non-CONNECT request",
            ));
        };
        let (parts, ()) = response.into_parts();
        write_headers(&self.shared, &mut send, &qpack::response_fields(&parts)).await?;
        if !parts.status.is_success() {
            let _ = send.finish();
        }
        let guard = self.guard.take().unwrap_or_else(|| self.shared.in_flight());
        Ok(H3Stream::new(
            reader,
            send,
            false,
            self.handle.clone(),
            guard,
        ))
    }

    /// Refuses the request with a stream error code (for example H3_REQUEST_REJECTED).
    pub fn reset(mut self, code: u64) {
        if let Some(send) = self.send.as_mut() {
            let _ = send.reset(VarInt::from_u64(code).unwrap_or(VarInt::MAX));
        }
        self.send = None;
        if let Some(reader) = self.tunnel.as_mut() {
            reader.stop(code);
        }
    }
}

impl Drop for ResponseSender {
    fn drop(&mut self) {
        // Dropped without a response: tell the client rather than leave it hanging.
        if let Some(send) = self.send.as_mut() {
            stream_error(Some(send), None, H3_INTERNAL_ERROR);
        }
    }
}

/// Runs a hyper-style service for every request accepted on `conn`, each in its own
/// task, until the connection stops delivering requests.
pub async fn serve<S, B>(conn: &H3Connection, service: S)
where
    S: hyper::service::Service<Request<RecvBody>, Response = Response<B>> + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let service = Arc::new(service);
    while let Some((request, sender)) = conn.accept().await {
        let service = service.clone();
        tokio::spawn(async move {
            let result: Result<_, BoxError> = service.call(request).await.map_err(Into::into);
            match result {
                Ok(response) => {
                    if let Err(e) = sender.send_response(response).await {
                        tracing::debug!(error = %e, "sending response failed");
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "service failed");
                    sender.reset(H3_INTERNAL_ERROR);
                }
            }
        });
    }
}
