//! Reading a stream's gRPC request messages from the HTTP/2 body.
//!
//! tonic's `Streaming` keeps one buffer per stream that grows to the
//! largest message and keeps that capacity for the stream's life. A
//! state-of-the-world ACK repeats the proxy's whole subscription (about
//! 1.5 MB at 10,000 services), so every connected proxy pinned that much.
//! [`Requests`] decodes the same framing (1-byte compression flag, 4-byte
//! big-endian length, message) and lets a large buffer go once it is
//! (nearly) drained; small messages keep reusing a small one.

use std::marker::PhantomData;
use std::pin::Pin;

use bytes::{Buf, BytesMut};
use http_body::Body as _;
use tonic::Status;
use tonic::body::Body;

/// Buffer capacity kept between messages; larger ones are released.
const KEEP: usize = 64 * 1024;
/// The gRPC message prefix: compression flag and length.
const PREFIX: usize = 5;

/// The request messages of one stream.
pub(crate) struct Requests<T> {
    body: Body,
    buf: BytesMut,
    max: usize,
    ended: bool,
    _message: PhantomData<fn() -> T>,
}

impl<T: prost::Message + Default> Requests<T> {
    /// Messages of `body`, each at most `max` bytes.
    pub(crate) fn new(body: Body, max: usize) -> Requests<T> {
        Requests {
            body,
            buf: BytesMut::new(),
            max,
            ended: false,
            _message: PhantomData,
        }
    }

    /// The next message; `None` when the client closed its side.
    pub(crate) async fn message(&mut self) -> Result<Option<T>, Status> {
        loop {
            if let Some(msg) = self.decode()? {
                return Ok(Some(msg));
            }
            if self.ended {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(Status::internal(
                        "request stream ended inside a gRPC message",
                    ))
                };
            }
            match std::future::poll_fn(|cx| Pin::new(&mut self.body).poll_frame(cx)).await {
                None => self.ended = true,
                Some(Err(status)) => return Err(status),
                Some(Ok(frame)) => {
                    // Trailers carry nothing for us.
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }

    /// Decodes a message if the buffer holds a whole one.
    fn decode(&mut self) -> Result<Option<T>, Status> {
        if self.buf.len() < PREFIX {
            return Ok(None);
        }
        if self.buf[0] != 0 {
            return Err(Status::unimplemented(
                "compressed gRPC requests are not supported (no grpc-encoding was offered)",
            ));
        }
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > self.max {
            return Err(Status::out_of_range(format!(
                "request message of {len} bytes is over the limit of {} bytes",
                self.max
            )));
        }
        if self.buf.len() < PREFIX + len {
            self.buf.reserve(PREFIX + len - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(PREFIX);
        let message = self.buf.split_to(len);
        let decoded = T::decode(message);
        if self.buf.capacity() > KEEP && self.buf.len() <= KEEP / 2 {
            // (Nearly) drained: move what is left of the next message to a
            // small buffer and release the large one (a large message
            // allocates what it needs when it comes).
            self.buf = BytesMut::from(&self.buf[..]);
        }
        decoded
            .map(Some)
            .map_err(|e| Status::internal(format!("cannot decode the request message: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
    use prost::Message as _;

    fn framed(m: &DiscoveryRequest) -> Vec<u8> {
        let body = m.encode_to_vec();
        let mut out = vec![0];
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// A request body of these data frames.
    struct Chunks(std::collections::VecDeque<Vec<u8>>);

    impl http_body::Body for Chunks {
        type Data = Bytes;
        type Error = Status;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
            let next = self.0.pop_front();
            std::task::Poll::Ready(next.map(|c| Ok(http_body::Frame::data(Bytes::from(c)))))
        }
    }

    fn body(chunks: Vec<Vec<u8>>) -> Body {
        Body::new(Chunks(chunks.into()))
    }

    #[tokio::test]
    async fn messages_split_across_frames_and_large_buffers_released() {
        let small = DiscoveryRequest {
            type_url: "t".into(),
            ..Default::default()
        };
        let large = DiscoveryRequest {
            type_url: "t".into(),
            resource_names: (0..20_000)
                .map(|i| format!("outbound|80||svc-{i}"))
                .collect(),
            ..Default::default()
        };
        let mut wire = framed(&small);
        wire.extend(framed(&large));
        wire.extend(framed(&small));
        // Frames of odd sizes, cutting prefixes and messages.
        let chunks: Vec<Vec<u8>> = wire.chunks(7919).map(<[u8]>::to_vec).collect();
        let mut r = Requests::<DiscoveryRequest>::new(body(chunks), 16 << 20);
        assert_eq!(r.message().await.unwrap(), Some(small.clone()));
        assert_eq!(r.message().await.unwrap(), Some(large));
        assert!(r.buf.capacity() <= KEEP, "{} kept", r.buf.capacity());
        assert_eq!(r.message().await.unwrap(), Some(small));
        assert_eq!(r.message().await.unwrap(), None);
    }

    #[tokio::test]
    async fn oversized_truncated_and_compressed_messages_fail() {
        let m = DiscoveryRequest {
            type_url: "type.googleapis.com/x".into(),
            ..Default::default()
        };
        let mut r = Requests::<DiscoveryRequest>::new(body(vec![framed(&m)]), 4);
        assert_eq!(
            r.message().await.unwrap_err().code(),
            tonic::Code::OutOfRange
        );
        let mut cut = framed(&m);
        cut.pop();
        let mut r = Requests::<DiscoveryRequest>::new(body(vec![cut]), 1024);
        assert_eq!(r.message().await.unwrap_err().code(), tonic::Code::Internal);
        let mut zipped = framed(&m);
        zipped[0] = 1;
        let mut r = Requests::<DiscoveryRequest>::new(body(vec![zipped]), 1024);
        assert_eq!(
            r.message().await.unwrap_err().code(),
            tonic::Code::Unimplemented
        );
    }
}
