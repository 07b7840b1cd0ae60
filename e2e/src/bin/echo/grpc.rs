//! The gRPC echo service (`keel.echo.v1.Echo`): answers with the workload's
//! name, version and host, the caller's address and the request metadata it
//! saw. Faults come from the request (`fail_code`, `delay_ms`), then from the
//! `x-echo-fail-percent`/`x-echo-delay-ms` metadata, then from the flags;
//! `--fail-percent` fails with UNAVAILABLE. It does not call downstream
//! services (only the HTTP handler does).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use keel_proto::keel::echo::v1::echo_server::Echo;
use keel_proto::keel::echo::v1::{EchoRequest, EchoResponse};
use tonic::metadata::MetadataMap;
use tonic::{Code, Request, Response, Status};
use tracing::debug;

use crate::http::{header_u64, headers_json};
use crate::{Peer, Shared};

/// How many answers `ServerStream` sends when the request's `count` is 0.
const DEFAULT_STREAM_COUNT: u32 = 3;

/// The `keel.echo.v1.Echo` implementation.
pub struct GrpcEcho {
    shared: Arc<Shared>,
}

impl GrpcEcho {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// Applies the delay, then the requested or random failure.
    async fn faults(&self, metadata: &MetadataMap, msg: &EchoRequest) -> Result<Duration, Status> {
        let config = &self.shared.config;
        let headers = metadata.as_ref();
        let delay = if msg.delay_ms > 0 {
            Duration::from_millis(u64::from(msg.delay_ms))
        } else {
            header_u64(headers, "x-echo-delay-ms")
                .map(Duration::from_millis)
                .unwrap_or(config.delay)
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if msg.fail_code != 0 {
            return Err(self.status(
                Code::from(msg.fail_code),
                format!("keel-echo: fail_code {} requested", msg.fail_code),
            ));
        }
        let fail_percent = headers
            .get("x-echo-fail-percent")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(config.fail_percent);
        if self.shared.roll(fail_percent) {
            return Err(self.status(
                Code::Unavailable,
                format!("keel-echo: injected failure ({fail_percent}% of requests)"),
            ));
        }
        Ok(delay)
    }

    /// A status carrying the workload's name and version as metadata, so a
    /// failed call still tells which backend answered.
    fn status(&self, code: Code, message: String) -> Status {
        let mut status = Status::new(code, message);
        self.tag(status.metadata_mut());
        status
    }

    fn tag(&self, metadata: &mut MetadataMap) {
        let config = &self.shared.config;
        if let Ok(v) = config.name.parse() {
            metadata.insert("x-echo-name", v);
        }
        if let Ok(v) = config.version.parse() {
            metadata.insert("x-echo-version", v);
        }
    }

    fn answer(
        &self,
        peer: Option<&Peer>,
        metadata: &MetadataMap,
        msg: &EchoRequest,
    ) -> EchoResponse {
        let config = &self.shared.config;
        let metadata = headers_json(metadata.as_ref())
            .into_iter()
            .map(|(k, v)| (k, v.as_str().unwrap_or_default().to_string()))
            .collect::<HashMap<_, _>>();
        EchoResponse {
            message: msg.message.clone(),
            name: config.name.clone(),
            version: config.version.clone(),
            hostname: config.hostname.clone(),
            peer: peer.map(|p| p.0.to_string()).unwrap_or_default(),
            metadata,
            index: 0,
        }
    }
}

type ServerStream = Pin<Box<dyn Stream<Item = Result<EchoResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Echo for GrpcEcho {
    async fn echo(&self, request: Request<EchoRequest>) -> Result<Response<EchoResponse>, Status> {
        let (metadata, extensions, msg) = request.into_parts();
        self.faults(&metadata, &msg).await?;
        let answer = self.answer(extensions.get::<Peer>(), &metadata, &msg);
        debug!(rpc = "Echo", peer = %answer.peer, "request");
        let mut response = Response::new(answer);
        self.tag(response.metadata_mut());
        Ok(response)
    }

    type ServerStreamStream = ServerStream;

    async fn server_stream(
        &self,
        request: Request<EchoRequest>,
    ) -> Result<Response<Self::ServerStreamStream>, Status> {
        let (metadata, extensions, msg) = request.into_parts();
        let delay = self.faults(&metadata, &msg).await?;
        let first = self.answer(extensions.get::<Peer>(), &metadata, &msg);
        debug!(rpc = "ServerStream", peer = %first.peer, "request");
        let count = if msg.count == 0 {
            DEFAULT_STREAM_COUNT
        } else {
            msg.count
        };
        let stream = futures::stream::unfold(0u32, move |index| {
            let mut answer = first.clone();
            async move {
                if index >= count {
                    return None;
                }
                if index > 0 && !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                answer.index = index;
                Some((Ok(answer), index + 1))
            }
        });
        let mut response = Response::new(Box::pin(stream) as ServerStream);
        self.tag(response.metadata_mut());
        Ok(response)
    }
}
