//! An in-process "network" for the `clickhouse` client: each connection is a
//! memory pipe served by the HTTP interface over the embedded engine, so the
//! store runs the same client code in embedded and server mode.

use std::future::{ready, Ready};
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::Router;
use hyper::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::io::DuplexStream;

/// Bytes buffered in each direction of one in-process connection.
const PIPE_CAPACITY: usize = 1 << 20;

/// Connects the HTTP client to `router` in memory.
#[derive(Clone)]
pub(crate) struct InProcessConnector {
    router: Router,
}

impl InProcessConnector {
    pub(crate) fn new(router: Router) -> Self {
        InProcessConnector { router }
    }

    /// A `clickhouse` client whose requests are served by the router.
    pub(crate) fn client(self) -> clickhouse::Client {
        let http = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(self);
        // The host is never resolved; it names the connection in logs.
        clickhouse::Client::with_http_client(http).with_url("http://embedded.waybill.invalid")
    }
}

impl tower_service::Service<Uri> for InProcessConnector {
    type Response = PipeConnection;
    type Error = std::io::Error;
    type Future = Ready<Result<PipeConnection, std::io::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let (client_end, server_end) = tokio::io::duplex(PIPE_CAPACITY);
        let service = TowerToHyperService::new(self.router.clone());
        tokio::spawn(async move {
            let served = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(server_end), service)
                .await;
            if let Err(err) = served {
                tracing::debug!(error = %err, "in-process store connection ended with an error");
            }
        });
        ready(Ok(PipeConnection(TokioIo::new(client_end))))
    }
}

/// The client's end of one in-process connection.
pub(crate) struct PipeConnection(TokioIo<DuplexStream>);

impl Connection for PipeConnection {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for PipeConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for PipeConnection {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
