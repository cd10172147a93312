//! The sender task's connection: one `ProduceStream`, down, connecting
//! or up, and the events it reports.

use std::future::Future;
use std::pin::Pin;

use ferry_proto::v1;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::codec::Streaming;

/// How many produce requests may wait in the stream's send queue. Only a
/// buffer in front of HTTP/2 flow control; the in-flight limit is per
/// partition.
pub(super) const REQUEST_QUEUE_LEN: usize = 16;

type StreamResult = Result<tonic::Response<Streaming<v1::ProduceResponse>>, tonic::Status>;
pub(super) type ConnectFuture = Pin<Box<dyn Future<Output = StreamResult> + Send>>;

pub(super) enum Conn {
    /// No stream; reconnect at `retry_at` once there is work.
    Down { retry_at: Instant },
    /// The call is starting. Requests may queue already.
    Connecting {
        req_tx: mpsc::Sender<v1::ProduceRequest>,
        call: ConnectFuture,
    },
    Up {
        req_tx: mpsc::Sender<v1::ProduceRequest>,
        responses: Box<Streaming<v1::ProduceResponse>>,
    },
}

impl Conn {
    pub(super) fn req_tx(&self) -> Option<&mpsc::Sender<v1::ProduceRequest>> {
        match self {
            Conn::Down { .. } => None,
            Conn::Connecting { req_tx, .. } | Conn::Up { req_tx, .. } => Some(req_tx),
        }
    }
}

pub(super) enum ConnEvent {
    Connected(Result<Box<Streaming<v1::ProduceResponse>>, tonic::Status>),
    Response(Result<Option<v1::ProduceResponse>, tonic::Status>),
    /// The request queue has room again.
    Space,
}

/// Waits for the next thing the connection has to say. Pending forever
/// when there is no connection.
pub(super) async fn conn_event(conn: &mut Conn, want_space: bool) -> ConnEvent {
    match conn {
        Conn::Down { .. } => std::future::pending().await,
        Conn::Connecting { req_tx, call } => tokio::select! {
            r = call.as_mut() => ConnEvent::Connected(r.map(|r| Box::new(r.into_inner()))),
            _ = req_tx.reserve(), if want_space => ConnEvent::Space,
        },
        Conn::Up { req_tx, responses } => tokio::select! {
            r = responses.message() => ConnEvent::Response(r),
            _ = req_tx.reserve(), if want_space => ConnEvent::Space,
        },
    }
}
