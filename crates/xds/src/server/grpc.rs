//! The gRPC face of the ADS server: routes the two ADS methods to the
//! stream tasks of `sotw.rs` and `delta.rs` and writes their responses.
//!
//! tonic's generated server encodes every response of a stream into one
//! buffer that it keeps for the stream's lifetime, grown to about twice the
//! largest response; with thousands of proxies each holding a few-MB CDS
//! response that buffer dominated weftd's memory. Here the stream tasks
//! encode each response once, straight from the shared resources (no copy
//! of each `Any` into a response message first), into its own exact-size
//! gRPC frame ([`sotw_frame`], [`delta_frame`]) that HTTP/2 frees once
//! written. Requests are read by [`Requests`] (a large buffer is released
//! once drained, not kept per stream as tonic's `Streaming` does);
//! state-of-the-world ones decode into [`SotwRequest`] (resource names in
//! one buffer, not one `String` each).

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Any;
use http_body::Frame;
use tokio::sync::mpsc;
use tonic::codegen::{BoxFuture, http};
use tonic::server::NamedService;
use tonic::{Status, body::Body};

use super::request::SotwRequest;
use super::requests::Requests;
use super::{AdsServer, delta, sotw};

const SOTW: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// `envoy.service.discovery.v3.AggregatedDiscoveryService` for a tonic
/// `Server` ([`AdsServer::service`]).
#[derive(Clone, Debug)]
pub struct AdsService {
    server: AdsServer,
}

impl AdsService {
    pub(super) fn new(server: AdsServer) -> AdsService {
        AdsService { server }
    }
}

impl NamedService for AdsService {
    const NAME: &'static str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
}

/// A response body: the stream task's encoded frames, then the gRPC
/// status as trailers.
struct Responses {
    rx: mpsc::Receiver<Result<Bytes, Status>>,
    done: bool,
}

/// The gRPC frame (uncompressed flag, length, message) of `head` with
/// `extra` appended to its encoding: `extra_len` bytes written by `extra`.
fn frame(head: &impl prost::Message, extra_len: usize, extra: impl FnOnce(&mut Vec<u8>)) -> Bytes {
    let len = head.encoded_len() + extra_len;
    let mut buf = Vec::with_capacity(len + 5);
    buf.put_u8(0);
    buf.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    head.encode_raw(&mut buf);
    extra(&mut buf);
    debug_assert_eq!(buf.len(), len + 5);
    Bytes::from(buf)
}

/// `head` (a `DiscoveryResponse` without resources) with `resources` as
/// its field 2, encoded from the shared `Any`s without copying them first.
pub(super) fn sotw_frame(head: &DiscoveryResponse, resources: &[&Any]) -> Bytes {
    use prost::encoding::message;
    let extra: usize = resources.iter().map(|a| message::encoded_len(2, *a)).sum();
    frame(head, extra, |buf| {
        for a in resources {
            message::encode(2, *a, buf);
        }
    })
}

/// `head` (a `DeltaDiscoveryResponse` without resources) with one
/// `Resource { version, resource, name }` per entry as its field 2.
pub(super) fn delta_frame(
    head: &DeltaDiscoveryResponse,
    resources: &[(&str, &str, &Any)],
) -> Bytes {
    use prost::encoding::{
        WireType, encode_key, encode_varint, encoded_len_varint, message, string,
    };
    // proto3: empty strings are not written.
    let text = |tag: u32, v: &str| {
        if v.is_empty() {
            0
        } else {
            string::encoded_len(tag, &v.to_string())
        }
    };
    let inner = |(name, version, any): &(&str, &str, &Any)| {
        text(1, version) + message::encoded_len(2, *any) + text(3, name)
    };
    let extra: usize = resources
        .iter()
        .map(|r| {
            let n = inner(r);
            1 + encoded_len_varint(n as u64) + n
        })
        .sum();
    frame(head, extra, |buf| {
        for r in resources {
            encode_key(2, WireType::LengthDelimited, buf);
            encode_varint(inner(r) as u64, buf);
            if !r.1.is_empty() {
                string::encode(1, &r.1.to_string(), buf);
            }
            message::encode(2, r.2, buf);
            if !r.0.is_empty() {
                string::encode(3, &r.0.to_string(), buf);
            }
        }
    })
}

fn trailers(status: &Status) -> http::HeaderMap {
    let mut map = http::HeaderMap::new();
    if status.add_header(&mut map).is_err() {
        map.insert("grpc-status", http::HeaderValue::from(status.code() as i32));
    }
    map
}

impl http_body::Body for Responses {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(Frame::data(frame)))),
            Poll::Ready(Some(Err(status))) => {
                self.done = true;
                Poll::Ready(Some(Ok(Frame::trailers(trailers(&status)))))
            }
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(Some(Ok(Frame::trailers(trailers(&Status::ok(""))))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

fn grpc_response(rx: mpsc::Receiver<Result<Bytes, Status>>) -> http::Response<Body> {
    let mut response = http::Response::new(Body::new(Responses { rx, done: false }));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    response
}

fn error_response(status: &Status) -> http::Response<Body> {
    let mut response = http::Response::new(Body::empty());
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    response.headers_mut().extend(trailers(status));
    response
}

impl tonic::codegen::Service<http::Request<Body>> for AdsService {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let shared = self.server.shared.clone();
        let path = req.uri().path().to_string();
        Box::pin(async move {
            if *shared.closed.borrow() {
                return Ok(error_response(&Status::unavailable(
                    "xDS server is shutting down",
                )));
            }
            let max = shared.options.max_request_bytes;
            let buffer = shared.options.response_buffer;
            Ok(match path.as_str() {
                SOTW => {
                    // Requests keep their resource names in one buffer.
                    let requests = Requests::<SotwRequest>::new(req.into_body(), max);
                    let (tx, rx) = mpsc::channel(buffer);
                    tokio::spawn(sotw::run(shared, requests, tx));
                    grpc_response(rx)
                }
                DELTA => {
                    let requests = Requests::<DeltaDiscoveryRequest>::new(req.into_body(), max);
                    let (tx, rx) = mpsc::channel(buffer);
                    tokio::spawn(delta::run(shared, requests, tx));
                    grpc_response(rx)
                }
                other => error_response(&Status::unimplemented(format!(
                    "{other}: not a method of {}",
                    AdsService::NAME
                ))),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::service::discovery::v3::Resource as DeltaResource;
    use prost::Message as _;

    fn any(v: &[u8]) -> Any {
        Any {
            type_url: "type.googleapis.com/x.Y".into(),
            value: v.to_vec(),
        }
    }

    /// Frames decode to the same messages as encoding whole responses.
    #[test]
    fn frames_equal_whole_message_encoding() {
        let (a, b) = (any(b"abc"), any(&[7u8; 300]));
        let head = DiscoveryResponse {
            version_info: "v1".into(),
            type_url: "t".into(),
            nonce: "n/1".into(),
            ..Default::default()
        };
        let bytes = sotw_frame(&head, &[&a, &b]);
        assert_eq!(bytes[0], 0);
        let len = u32::from_be_bytes(bytes[1..5].try_into().unwrap()) as usize;
        assert_eq!(len, bytes.len() - 5);
        let got = DiscoveryResponse::decode(&bytes[5..]).unwrap();
        let mut want = head.clone();
        want.resources = vec![a.clone(), b.clone()];
        assert_eq!(got, want);

        let head = DeltaDiscoveryResponse {
            system_version_info: "s".into(),
            type_url: "t".into(),
            removed_resources: vec!["gone".into()],
            nonce: "n/2".into(),
            ..Default::default()
        };
        let bytes = delta_frame(&head, &[("x", "1", &a), ("y", "", &b)]);
        let len = u32::from_be_bytes(bytes[1..5].try_into().unwrap()) as usize;
        assert_eq!(len, bytes.len() - 5);
        let got = DeltaDiscoveryResponse::decode(&bytes[5..]).unwrap();
        let mut want = head.clone();
        want.resources = vec![
            DeltaResource {
                name: "x".into(),
                version: "1".into(),
                resource: Some(a),
                ..Default::default()
            },
            DeltaResource {
                name: "y".into(),
                resource: Some(b),
                ..Default::default()
            },
        ];
        assert_eq!(got, want);
    }
}
