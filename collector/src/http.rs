//! OTLP/HTTP receiver, per the OTLP specification ("OTLP/HTTP"):
//! `POST /v1/traces` and `/v1/logs` with `application/x-protobuf` or
//! `application/json` bodies (the OTLP/JSON mapping: hex ids, lowerCamelCase,
//! 64-bit integers as strings), optionally gzip- or zstd-compressed.
//!
//! Responses: 200 with an Export*ServiceResponse in the request's encoding;
//! 400 (not retryable) for bodies that do not decode; 413 past the body
//! limits; 415 for other content types or encodings; 429 / 503 with
//! `Retry-After` when the sink is busy or the store unavailable. Errors carry
//! a `google.rpc.Status` body, as the specification requires.

use std::io::Read;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use prost::Message;
use tracing::Instrument;

use crate::admission::Admission;
use crate::auth::Sources;
use crate::signal::{self, Signal};
use crate::{metrics, validate};
use crate::sink::{Sink, SinkError};
use crate::{ExportLogsServiceRequest, ExportTraceServiceRequest};

/// Limits of the OTLP/HTTP receiver.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Largest request body as sent (compressed or not).
    pub max_body_bytes: usize,
    /// Largest body after decompression.
    pub max_decompressed_bytes: usize,
    /// Attribute count and length limits.
    pub attributes: validate::AttributeLimits,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits { max_body_bytes: 16 << 20, max_decompressed_bytes: 64 << 20, attributes: Default::default() }
    }
}

struct Receiver<S> {
    sink: Arc<S>,
    limits: HttpLimits,
    sources: Sources,
    admission: Admission,
}

/// The OTLP/HTTP routes over `sink`, requiring one of `sources`' tokens if
/// any; each request's decompressed body is taken from `admission` before
/// it is decoded.
pub fn router<S: Sink>(sink: Arc<S>, limits: HttpLimits, sources: Sources, admission: Admission) -> Router {
    let receiver = Arc::new(Receiver { sink, limits, sources, admission });
    Router::new()
        .route("/v1/traces", post(export::<S, ExportTraceServiceRequest>))
        .route("/v1/logs", post(export::<S, ExportLogsServiceRequest>))
        .route("/v1/metrics", post(metrics))
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .with_state(receiver)
}

/// The two OTLP/HTTP encodings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Protobuf,
    Json,
}

impl Encoding {
    fn content_type(self) -> &'static str {
        match self {
            Encoding::Protobuf => "application/x-protobuf",
            Encoding::Json => "application/json",
        }
    }
}

/// A refusal, rendered as a `google.rpc.Status` in the request's encoding.
#[derive(Debug)]
pub struct Refusal {
    status: StatusCode,
    /// The metrics label for this refusal.
    reason: &'static str,
    message: String,
    encoding: Encoding,
    retry_after_seconds: Option<u64>,
}

impl Refusal {
    fn new(status: StatusCode, encoding: Encoding, message: impl Into<String>) -> Self {
        let reason = match status {
            StatusCode::BAD_REQUEST => "decode",
            StatusCode::PAYLOAD_TOO_LARGE => "too_large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "content_type",
            StatusCode::TOO_MANY_REQUESTS => "busy",
            StatusCode::SERVICE_UNAVAILABLE => "unavailable",
            StatusCode::UNAUTHORIZED => "unauthenticated",
            _ => "other",
        };
        Refusal { status, reason, message: message.into(), encoding, retry_after_seconds: None }
    }
}

/// `google.rpc.Status` (google/rpc/status.proto) without details.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        // gRPC codes for the body: INVALID_ARGUMENT, RESOURCE_EXHAUSTED, UNAVAILABLE, ...
        let code = match self.status {
            StatusCode::BAD_REQUEST | StatusCode::UNSUPPORTED_MEDIA_TYPE => 3,
            StatusCode::PAYLOAD_TOO_LARGE | StatusCode::TOO_MANY_REQUESTS => 8,
            StatusCode::SERVICE_UNAVAILABLE => 14,
            StatusCode::NOT_FOUND => 12,
            StatusCode::UNAUTHORIZED => 16,
            _ => 2,
        };
        let body = match self.encoding {
            Encoding::Protobuf => RpcStatus { code, message: self.message.clone() }.encode_to_vec(),
            Encoding::Json => serde_json::json!({ "code": code, "message": self.message }).to_string().into_bytes(),
        };
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(self.encoding.content_type()));
        if let Some(seconds) = self.retry_after_seconds {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

fn refusal_from_sink(err: SinkError, encoding: Encoding) -> Refusal {
    let (status, retry_after) = match &err {
        SinkError::Busy { retry_after } => (StatusCode::TOO_MANY_REQUESTS, *retry_after),
        SinkError::Unavailable { retry_after, .. } => (StatusCode::SERVICE_UNAVAILABLE, *retry_after),
    };
    Refusal { retry_after_seconds: Some(retry_after.as_secs().max(1)), ..Refusal::new(status, encoding, err.to_string()) }
}

/// The encoding named by `Content-Type` (parameters such as charset ignored).
fn request_encoding(headers: &HeaderMap) -> Result<Encoding, Refusal> {
    let value = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let media = value.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match media.as_str() {
        "application/x-protobuf" => Ok(Encoding::Protobuf),
        "application/json" => Ok(Encoding::Json),
        _ => Err(Refusal::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Encoding::Json,
            format!("content type {value:?} is not supported; send application/x-protobuf or application/json"),
        )),
    }
}

/// The request's source, or 401 when tokens are required and none is valid.
fn identify(sources: &Sources, headers: &HeaderMap, encoding: Encoding) -> Result<String, Refusal> {
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    sources.identify(authorization).ok_or_else(|| {
        Refusal::new(StatusCode::UNAUTHORIZED, encoding, "a valid bearer token is required: send Authorization: Bearer <token>")
    })
}

/// The body after `Content-Encoding`, bounded by `max_decompressed_bytes`.
fn decoded_body(
    content_encoding: Option<&HeaderValue>,
    body: Bytes,
    limits: HttpLimits,
    encoding: Encoding,
) -> Result<Bytes, Refusal> {
    let content_encoding = content_encoding.and_then(|v| v.to_str().ok()).unwrap_or("identity");
    match content_encoding.trim().to_ascii_lowercase().as_str() {
        "" | "identity" => Ok(body),
        name @ ("gzip" | "zstd") => {
            let mut out = Vec::new();
            let limit = limits.max_decompressed_bytes as u64;
            let not_decompressed =
                |e: std::io::Error| Refusal::new(StatusCode::BAD_REQUEST, encoding, format!("{name} body does not decompress: {e}"));
            let decoder: Box<dyn Read> = if name == "gzip" {
                Box::new(flate2::read::MultiGzDecoder::new(&body[..]))
            } else {
                Box::new(zstd::stream::read::Decoder::new(&body[..]).map_err(not_decompressed)?)
            };
            decoder.take(limit + 1).read_to_end(&mut out).map_err(not_decompressed)?;
            if out.len() as u64 > limit {
                return Err(Refusal::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    encoding,
                    format!("body decompresses to more than {limit} bytes"),
                ));
            }
            Ok(out.into())
        }
        other => Err(Refusal {
            reason: "encoding",
            ..Refusal::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                encoding,
                format!("content encoding {other:?} is not supported; send gzip, zstd or no encoding"),
            )
        }),
    }
}

/// Decompresses a request body off the async executor (gzip and zstd of
/// large batches are CPU-heavy); an uncompressed body is returned as is.
async fn decompress(content_encoding: Option<HeaderValue>, body: Bytes, limits: HttpLimits, encoding: Encoding) -> Result<Bytes, Refusal> {
    let identity = content_encoding.as_ref().and_then(|v| v.to_str().ok()).is_none_or(|v| matches!(v.trim(), "" | "identity"));
    if identity {
        return decoded_body(None, body, limits, encoding);
    }
    crate::work::run(move || decoded_body(content_encoding.as_ref(), body, limits, encoding))
        .await
        .map_err(|e| Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, encoding, format!("decompressing task failed: {e}")))?
}

/// Decodes a (decompressed) request body off the async executor:
/// protobuf or JSON decoding of large batches is CPU-heavy.
async fn decode<T>(body: Bytes, encoding: Encoding, what: &'static str) -> Result<T, Refusal>
where
    T: Message + Default + serde::de::DeserializeOwned + Send + 'static,
{
    crate::work::run(move || decode_now(body, encoding, what))
        .await
        .map_err(|e| Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, encoding, format!("decoding task failed: {e}")))?
}

/// [`decode`] on the calling thread.
fn decode_now<T>(body: Bytes, encoding: Encoding, what: &'static str) -> Result<T, Refusal>
where
    T: Message + Default + serde::de::DeserializeOwned,
{
    match encoding {
        Encoding::Protobuf => T::decode(body).map_err(|e| format!("{what} protobuf does not decode: {e}")),
        Encoding::Json => serde_json::from_slice(&body).map_err(|e| format!("{what} JSON does not decode: {e}")),
    }
    .map_err(|message| Refusal::new(StatusCode::BAD_REQUEST, encoding, message))
}

fn success<T: Message + serde::Serialize>(response: T, encoding: Encoding) -> Response {
    let body = match encoding {
        Encoding::Protobuf => response.encode_to_vec(),
        Encoding::Json => serde_json::to_vec(&response).unwrap_or_else(|_| b"{}".to_vec()),
    };
    ([(header::CONTENT_TYPE, encoding.content_type())], body).into_response()
}

/// `POST /v1/traces` and `/v1/logs`: one handler per signal type.
async fn export<S: Sink, T: Signal>(
    State(receiver): State<Arc<Receiver<S>>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = async {
        let encoding = request_encoding(&headers)?;
        let source = identify(&receiver.sources, &headers, encoding)?;
        // Refused here rather than by axum, so the answer is a Status in the request's encoding.
        let body = body.map_err(|rejection| match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => Refusal::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                encoding,
                format!("the body is over the limit of {} bytes", receiver.limits.max_body_bytes),
            ),
            _ => Refusal::new(StatusCode::BAD_REQUEST, encoding, format!("the body could not be read: {}", rejection.body_text())),
        })?;
        let content_encoding = headers.get(header::CONTENT_ENCODING).cloned();
        // Held until the answer (`admitted`): the request's memory is bounded
        // from here on. The body as sent first, then what decompression added.
        let busy = |err: SinkError| {
            metrics::refused(T::NAME, "http", metrics::sink_reason(&err), 0);
            refusal_from_sink(err, encoding)
        };
        let mut admitted = receiver.admission.admit(body.len()).await.map_err(busy)?;
        let body = decompress(content_encoding, body, receiver.limits, encoding).await?;
        receiver.admission.grow(&mut admitted, body.len()).await.map_err(busy)?;
        let request: T = decode(body, encoding, T::NAME).await?;
        match signal::export(receiver.sink.as_ref(), request, source, &receiver.limits.attributes, "http").await {
            Ok(response) => Ok(success(response, encoding)),
            Err(err) => Err(refusal_from_sink(err, encoding)),
        }
    };
    let result = result.instrument(tracing::info_span!("otlp.export", signal = T::NAME, protocol = "http")).await;
    result.unwrap_or_else(|refusal| {
        // The sink's refusals were counted with their records by signal::export.
        if !matches!(refusal.reason, "busy" | "unavailable") {
            metrics::refused(T::NAME, "http", refusal.reason, 0);
        }
        refusal.into_response()
    })
}

/// Metrics are not stored: say so rather than accept and drop them.
async fn metrics(headers: HeaderMap) -> Response {
    let encoding = request_encoding(&headers).unwrap_or(Encoding::Json);
    Refusal::new(StatusCode::NOT_FOUND, encoding, "Waybill does not accept OTLP metrics; send traces and logs").into_response()
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
    use opentelemetry_proto::tonic::trace::v1::{span::Event, ResourceSpans, ScopeSpans, Span};
    use proptest::prelude::*;

    use super::*;

    fn text_attribute() -> impl Strategy<Value = KeyValue> {
        ("\\PC{0,12}", prop_oneof![
            "\\PC{0,40}".prop_map(any_value::Value::StringValue),
            any::<i64>().prop_map(any_value::Value::IntValue),
            any::<bool>().prop_map(any_value::Value::BoolValue),
        ])
            .prop_map(|(key, value)| KeyValue { key, value: Some(AnyValue { value: Some(value) }), ..Default::default() })
    }

    fn span() -> impl Strategy<Value = Span> {
        (
            proptest::collection::vec(any::<u8>(), 16),
            proptest::collection::vec(any::<u8>(), 8),
            "\\PC{0,30}",
            any::<u64>(),
            any::<u64>(),
            proptest::collection::vec(text_attribute(), 0..4),
            "\\PC{0,10}",
        )
            .prop_map(|(trace_id, span_id, name, start, end, attributes, event)| Span {
                trace_id,
                span_id,
                name,
                start_time_unix_nano: start,
                end_time_unix_nano: end,
                attributes,
                events: vec![Event { name: event, time_unix_nano: start, ..Default::default() }],
                kind: 2,
                ..Default::default()
            })
    }

    fn request() -> impl Strategy<Value = ExportTraceServiceRequest> {
        proptest::collection::vec(span(), 0..5).prop_map(|spans| ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans { spans, ..Default::default() }],
                ..Default::default()
            }],
        })
    }

    fn decoded(body: Vec<u8>, encoding: Encoding) -> Result<ExportTraceServiceRequest, Refusal> {
        decode_now(body.into(), encoding, "trace export")
    }

    #[test]
    fn zstd_and_gzip_bodies_decode_and_bombs_are_refused() {
        let body = ExportTraceServiceRequest::default().encode_to_vec();
        let zstd_body = zstd::encode_all(&body[..], 3).unwrap();
        let zstd = HeaderValue::from_static("zstd");
        let decompressed = decoded_body(Some(&zstd), zstd_body.into(), HttpLimits::default(), Encoding::Protobuf).unwrap();
        let request: Result<ExportTraceServiceRequest, _> = decode_now(decompressed, Encoding::Protobuf, "t");
        assert!(request.is_ok());
        let bomb = zstd::encode_all(&vec![0u8; 1 << 20][..], 19).unwrap();
        let limits = HttpLimits { max_decompressed_bytes: 1 << 16, ..HttpLimits::default() };
        let refused = decoded_body(Some(&zstd), bomb.into(), limits, Encoding::Protobuf);
        assert_eq!(refused.unwrap_err().status, StatusCode::PAYLOAD_TOO_LARGE);
    }

    proptest! {
        /// Whatever the SDK encodes as protobuf decodes to the same request.
        #[test]
        fn protobuf_requests_round_trip(request in request()) {
            prop_assert_eq!(decoded(request.encode_to_vec(), Encoding::Protobuf).unwrap(), request);
        }

        /// The OTLP/JSON mapping (hex ids, 64-bit integers as strings) round-trips.
        #[test]
        fn json_requests_round_trip(request in request()) {
            let body = serde_json::to_vec(&request).unwrap();
            prop_assert_eq!(decoded(body, Encoding::Json).unwrap(), request);
        }

        /// Arbitrary bytes are refused with 400, never a panic.
        #[test]
        fn arbitrary_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            for encoding in [Encoding::Protobuf, Encoding::Json] {
                if let Err(refusal) = decoded(body.clone(), encoding) {
                    prop_assert_eq!(refusal.status, StatusCode::BAD_REQUEST);
                }
            }
        }
    }
}
