//! OTLP ingest end to end (gRPC and HTTP): the OpenTelemetry Python SDK's exporters
//! send to a running `waybill serve`; rows are read back through its
//! read-only SQL endpoint with the official ClickHouse client. Bad input
//! gets the specification's status and leaves the service healthy.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::process::{free_port, wait_for_server, wait_for_status, waybill, work_dir, Running};
use waybill_store::{LogRow, SpanRow};

const TOKEN: &str = "otlp-test-token-0123456789";

struct Service {
    _running: Running,
    http: u16,
    otlp: SocketAddr,
    grpc: SocketAddr,
    sql: SocketAddr,
}

async fn start(name: &str) -> Service {
    start_with(name, &[]).await
}

/// A running service with extra `WAYBILL_*` settings.
async fn start_with(name: &str, settings: &[(&str, &str)]) -> Service {
    let dir = work_dir(name);
    let (http, otlp, grpc, sql) = (free_port(), free_port(), free_port(), free_port());
    // What it logs is shown if it exits or never gets ready.
    let log = dir.join("serve.log");
    let child = waybill(&dir)
        .arg("serve")
        .env("WAYBILL_HTTP__LISTEN", format!("127.0.0.1:{http}"))
        .env("WAYBILL_OTLP__HTTP_LISTEN", format!("127.0.0.1:{otlp}"))
        .env("WAYBILL_OTLP__GRPC_LISTEN", format!("127.0.0.1:{grpc}"))
        .env("WAYBILL_OTLP__MAX_BODY_BYTES", "65536")
        .env("WAYBILL_OTLP__MAX_DECOMPRESSED_BYTES", "1048576")
        .env("WAYBILL_SQL_ENDPOINT__ENABLED", "true")
        .env("WAYBILL_SQL_ENDPOINT__LISTEN", format!("127.0.0.1:{sql}"))
        .env("WAYBILL_SQL_ENDPOINT__TOKEN", TOKEN)
        // Start-up steps too, should it be slow to get ready.
        .env("WAYBILL_LOG__LEVEL", "info")
        .envs(settings.iter().copied())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut service = Service {
        _running: Running(child),
        http,
        otlp: SocketAddr::from(([127, 0, 0, 1], otlp)),
        grpc: SocketAddr::from(([127, 0, 0, 1], grpc)),
        sql: SocketAddr::from(([127, 0, 0, 1], sql)),
    };
    wait_for_server(Some((&mut service._running, &log)), http, "/readyz", 200, Duration::from_secs(60)).await;
    service
}

impl Service {
    /// Stops the service with SIGTERM and waits for it to exit.
    async fn stop(mut self) -> std::process::ExitStatus {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self._running.0.id() as i32, libc::SIGTERM) };
        tokio::task::spawn_blocking(move || self._running.0.wait().unwrap()).await.unwrap()
    }

    fn sql_client(&self) -> clickhouse::Client {
        clickhouse::Client::default().with_url(format!("http://{}", self.sql)).with_database("waybill").with_password(TOKEN)
    }

    async fn post(&self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> common::RawResponse {
        common::http(self.otlp, "POST", path, headers, body).await
    }
}

/// The Python interpreter with the OpenTelemetry SDK, set up by scripts/test.sh.
fn python() -> PathBuf {
    let path = std::env::var_os("OTLP_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/python/bin/python"));
    assert!(path.exists(), "{} is missing: run scripts/test.sh, which installs tests/python/requirements.txt", path.display());
    path
}

/// The value of a sample in Prometheus text exposition with all of `labels`.
fn metric(exposition: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    exposition.lines().filter(|line| !line.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric_name, label_text) = series.split_once('{').unwrap_or((series, ""));
        let matches = metric_name == name && labels.iter().all(|(k, v)| label_text.contains(&format!("{k}=\"{v}\"")));
        matches.then(|| value.parse().ok()).flatten()
    })
}

fn map(pairs: &[(String, String)], key: &str) -> Option<String> {
    pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
}

#[tokio::test]
async fn python_sdk_over_http_is_stored_as_the_exporter_writes_it() {
    let service = start("otlp-python-http").await;
    python_export_is_stored(&service, service.otlp, "http").await;
}

#[tokio::test]
async fn python_sdk_over_grpc_is_stored_as_the_exporter_writes_it() {
    let service = start("otlp-python-grpc").await;
    python_export_is_stored(&service, service.grpc, "grpc").await;
}

/// Runs tests/python/send_otlp.py against `endpoint` and checks every field
/// of the two spans and the log record it sends.
async fn python_export_is_stored(service: &Service, endpoint: SocketAddr, protocol: &'static str) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/send_otlp.py");
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python()).arg(script).arg(format!("http://{endpoint}")).arg(protocol).output().unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "python exporter failed: {stderr}");
    let ids: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let trace_id = ids["trace_id"].as_str().unwrap();
    let parent_id = ids["parent_span_id"].as_str().unwrap();
    let child_id = ids["child_span_id"].as_str().unwrap();

    let client = service.sql_client();
    let spans: Vec<SpanRow> = client
        .query("SELECT Timestamp, TraceId, SpanId, ParentSpanId, TraceState, SpanName, SpanKind, ServiceName, ResourceAttributes, ScopeName, ScopeVersion, SpanAttributes, Duration, StatusCode, StatusMessage, `Events.Timestamp`, `Events.Name`, `Events.Attributes`, `Links.TraceId`, `Links.SpanId`, `Links.TraceState`, `Links.Attributes`, WaybillSource FROM otel_traces ORDER BY Timestamp")
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let parent = &spans[0];
    let child = &spans[1];
    assert_eq!((parent.trace_id.as_str(), parent.span_id.as_str(), parent.parent_span_id.as_str()), (trace_id, parent_id, ""));
    assert_eq!((child.trace_id.as_str(), child.parent_span_id.as_str(), child.span_id.as_str()), (trace_id, parent_id, child_id));
    assert_eq!((parent.span_name.as_str(), parent.span_kind.as_str()), ("erp.sales_order.post", "Server"));
    assert_eq!((child.span_name.as_str(), child.span_kind.as_str()), ("wms.shipment.dispatch", "Client"));
    assert_eq!(parent.service_name, "sap-erp");
    assert_eq!(map(&parent.resource_attributes, "deployment.environment").as_deref(), Some("test"));
    assert_eq!(map(&parent.resource_attributes, "telemetry.sdk.language").as_deref(), Some("python"));
    assert_eq!((parent.scope_name.as_str(), parent.scope_version.as_str()), ("erp.posting", "2.1.0"));
    let attribute = |key| map(&parent.span_attributes, key);
    assert_eq!(attribute("biz.key.order").as_deref(), Some("PO-1001"));
    assert_eq!(attribute("erp.lines").as_deref(), Some("3"));
    assert_eq!(attribute("erp.amount").as_deref(), Some("1250.5"));
    assert_eq!(attribute("erp.priority").as_deref(), Some("true"));
    assert_eq!(attribute("erp.plants").as_deref(), Some(r#"["DE01","PL02"]"#));
    assert!(parent.duration_ns >= child.duration_ns && child.duration_ns > 0);
    assert_eq!((parent.status_code.as_str(), parent.status_message.as_str()), ("Unset", ""));
    assert_eq!((child.status_code.as_str(), child.status_message.as_str()), ("Error", "carrier rejected"));
    assert_eq!(parent.events_name, ["credit.checked"]);
    assert_eq!(parent.events_attributes, [vec![("biz.outcome".to_owned(), "ok".to_owned())]]);
    assert!(parent.events_timestamp_ns[0] >= parent.timestamp_ns);
    assert_eq!((child.links_trace_id.as_slice(), child.links_span_id.as_slice()), (&[trace_id.to_owned()][..], &[parent_id.to_owned()][..]));
    assert_eq!(child.links_attributes, [vec![("link.kind".to_owned(), "follows".to_owned())]]);

    let logs: Vec<LogRow> = client
        .query("SELECT Timestamp, TraceId, SpanId, TraceFlags, SeverityText, SeverityNumber, ServiceName, Body, ResourceSchemaUrl, ResourceAttributes, ScopeSchemaUrl, ScopeName, ScopeVersion, ScopeAttributes, LogAttributes, WaybillSource FROM otel_logs")
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(logs.len(), 1, "{logs:#?}");
    let record = &logs[0];
    let metrics = common::http(SocketAddr::from(([127, 0, 0, 1], service.http)), "GET", "/metrics", &[], b"").await;
    assert_eq!(metric(&metrics.text(), "waybill_collector_accepted_records_total", &[("signal", "traces"), ("protocol", protocol)]), Some(2.0));
    assert_eq!(metric(&metrics.text(), "waybill_collector_accepted_records_total", &[("signal", "logs"), ("protocol", protocol)]), Some(1.0));
    assert!(metric(&metrics.text(), "waybill_pipeline_batch_records_count", &[]).is_some_and(|batches| batches >= 1.0));
    // The writer's linger is on the page, within the configured 100 ms.
    assert!(metric(&metrics.text(), "waybill_pipeline_linger_seconds", &[]).is_some_and(|linger| (0.0..=0.1).contains(&linger)));
    // Lineage's failure counts are on the page before any failure, so Prometheus's increase() sees the first.
    for work in ["resolve", "catch_up", "deadlines", "progress"] {
        assert!(metric(&metrics.text(), "waybill_lineage_failed_steps_total", &[("work", work)]).is_some(), "{work}");
    }
    assert_eq!((record.trace_id.as_str(), record.span_id.as_str()), (trace_id, child_id));
    // W3C trace flags as sent: sampled (0x01), and the SDK may add random (0x02).
    assert_eq!(record.trace_flags & 0x01, 0x01, "flags {:#x}", record.trace_flags);
    assert_eq!((record.severity_text.as_str(), record.severity_number), ("WARN", 13));
    assert_eq!((record.service_name.as_str(), record.body.as_str()), ("sap-erp", "shipment SH-1 rejected by carrier"));
    assert_eq!(record.scope_name, "warehouse");
    assert_eq!(map(&record.log_attributes, "biz.key.shipment").as_deref(), Some("SH-1"));
}

/// OTLP/JSON as the specification spells it: hex ids, lowerCamelCase,
/// 64-bit integers as strings, enums as integers.
const JSON_TRACE: &str = r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"b2b-portal"}}]},
 "scopeSpans":[{"scope":{"name":"portal"},"spans":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174",
 "name":"POST /orders","kind":2,"startTimeUnixNano":"1790000000000000000","endTimeUnixNano":"1790000000250000000",
 "attributes":[{"key":"biz.key.order","value":{"stringValue":"PO-2002"}},{"key":"http.status_code","value":{"intValue":"201"}}],
 "status":{"code":1}}]}]}]}"#;

#[tokio::test]
async fn otlp_json_is_accepted_and_bad_input_is_refused_with_the_right_status() {
    let service = start("otlp-errors").await;
    let json = [("Content-Type", "application/json")];
    let protobuf = [("Content-Type", "application/x-protobuf")];

    // Recent timestamps: retention would drop the 2026-09 ones above at insert.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let body = JSON_TRACE
        .replace("1790000000000000000", &now.to_string())
        .replace("1790000000250000000", &(now + 250_000_000).to_string());
    let accepted = service.post("/v1/traces", &json, body.as_bytes()).await;
    assert_eq!(accepted.status, 200, "{}", accepted.text());
    assert_eq!(accepted.header("Content-Type"), Some("application/json"));

    let refusals: Vec<(&str, Vec<(&str, &str)>, Vec<u8>, u16)> = vec![
        ("/v1/traces", protobuf.to_vec(), vec![0x0a, 0xff, 0xff, 0x01], 400),
        // A span name that is not UTF-8: resource_spans / scope_spans / spans / name = 0xff.
        ("/v1/traces", protobuf.to_vec(), vec![0x0a, 0x07, 0x12, 0x05, 0x12, 0x03, 0x2a, 0x01, 0xff], 400),
        ("/v1/traces", json.to_vec(), br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"zz"}]}]}]}"#.to_vec(), 400),
        ("/v1/logs", json.to_vec(), b"{not json".to_vec(), 400),
        ("/v1/traces", vec![("Content-Type", "text/plain")], b"hello".to_vec(), 415),
        ("/v1/traces", vec![("Content-Type", "application/x-protobuf"), ("Content-Encoding", "br")], vec![], 415),
        ("/v1/traces", protobuf.to_vec(), vec![0u8; 70_000], 413),
        ("/v1/metrics", protobuf.to_vec(), vec![], 404),
    ];
    for (path, headers, body, status) in refusals {
        let response = service.post(path, &headers, &body).await;
        assert_eq!(response.status, status, "{path} {headers:?}: {}", response.text());
    }
    // An oversize body is answered with a Status in the request's encoding, like any refusal.
    let too_large = service.post("/v1/traces", &json, &vec![b' '; 70_000]).await;
    assert_eq!(too_large.header("Content-Type"), Some("application/json"));
    let status: serde_json::Value = serde_json::from_slice(&too_large.body).unwrap();
    assert_eq!(status["code"], 8, "{status}");
    assert!(status["message"].as_str().unwrap().contains("over the limit of 65536 bytes"), "{status}");

    // A gzip bomb: 8 MiB of zeros compressed to a few KiB, over the 1 MiB limit.
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut encoder, &vec![0u8; 8 << 20]).unwrap();
    let bomb = encoder.finish().unwrap();
    let response = service.post("/v1/traces", &[("Content-Type", "application/x-protobuf"), ("Content-Encoding", "gzip")], &bomb).await;
    assert_eq!(response.status, 413, "{}", response.text());

    // Gzip within limits is accepted; an empty request is valid.
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut encoder, body.replace("PO-2002", "PO-2003").as_bytes()).unwrap();
    let gzipped = encoder.finish().unwrap();
    let response = service.post("/v1/traces", &[("Content-Type", "application/json"), ("Content-Encoding", "gzip")], &gzipped).await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(service.post("/v1/logs", &protobuf, b"").await.status, 200);

    // One invalid span (a 2-byte trace id) is rejected, its neighbour stored.
    let two_spans = body.replace("PO-2002", "PO-2004").replace(
        r#"{"traceId":"5b8efff798038103d269b633813fc60c""#,
        r#"{"traceId":"abcd","spanId":"0000000000000bad","name":"bad"},{"traceId":"5b8efff798038103d269b633813fc60c""#,
    );
    let partial = service.post("/v1/traces", &json, two_spans.as_bytes()).await;
    assert_eq!(partial.status, 200, "{}", partial.text());
    let answer: serde_json::Value = serde_json::from_slice(&partial.body).unwrap();
    let rejected = &answer["partialSuccess"]["rejectedSpans"];
    assert!(rejected == 1 || rejected == "1", "{answer}");
    assert!(answer["partialSuccess"]["errorMessage"].as_str().unwrap().contains("trace_id must be 16 bytes, got 2"), "{answer}");

    wait_for_status(service.http, "/readyz", 200, Duration::from_secs(5)).await;
    let orders: Vec<String> = service
        .sql_client()
        .query("SELECT SpanAttributes['biz.key.order'] FROM otel_traces ORDER BY 1")
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(orders, ["PO-2002", "PO-2003", "PO-2004"]);
}

/// The Rust SDK's OTLP exporters, one per protocol the issue names.
#[derive(Debug, Clone, Copy)]
enum RustProtocol {
    Grpc,
    HttpProtobuf,
    HttpJson,
}

/// Sends one server span and one log record inside it with the Rust
/// `opentelemetry-otlp` exporter, then checks both rows.
async fn rust_export_is_stored(protocol: RustProtocol) {
    use opentelemetry::logs::{AnyValue, LogRecord as _, Logger as _, LoggerProvider as _, Severity};
    use opentelemetry::trace::{SpanKind, TraceContextExt, Tracer as _, TracerProvider as _};
    use opentelemetry::KeyValue;
    use opentelemetry_otlp::{LogExporter, Protocol, SpanExporter, WithExportConfig};
    use opentelemetry_sdk::logs::SdkLoggerProvider;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use opentelemetry_sdk::Resource;

    let service = start(&format!("otlp-rust-{protocol:?}").to_lowercase()).await;
    let (spans, logs) = match protocol {
        RustProtocol::Grpc => {
            let endpoint = format!("http://{}", service.grpc);
            (
                SpanExporter::builder().with_tonic().with_endpoint(&endpoint).build().unwrap(),
                LogExporter::builder().with_tonic().with_endpoint(&endpoint).build().unwrap(),
            )
        }
        RustProtocol::HttpProtobuf | RustProtocol::HttpJson => {
            let wire = if matches!(protocol, RustProtocol::HttpJson) { Protocol::HttpJson } else { Protocol::HttpBinary };
            let base = format!("http://{}", service.otlp);
            (
                SpanExporter::builder().with_http().with_protocol(wire).with_endpoint(format!("{base}/v1/traces")).build().unwrap(),
                LogExporter::builder().with_http().with_protocol(wire).with_endpoint(format!("{base}/v1/logs")).build().unwrap(),
            )
        }
    };
    let resource = Resource::builder().with_service_name("b2b-portal").build();
    let tracer_provider = SdkTracerProvider::builder().with_simple_exporter(spans).with_resource(resource.clone()).build();
    let logger_provider = SdkLoggerProvider::builder().with_simple_exporter(logs).with_resource(resource).build();

    let order = format!("PO-{protocol:?}");
    let (trace_id, span_id) = tokio::task::spawn_blocking({
        let order = order.clone();
        let tracer_provider = tracer_provider.clone();
        let logger_provider = logger_provider.clone();
        move || {
            let tracer = tracer_provider.tracer("portal");
            let logger = logger_provider.logger("portal");
            tracer.in_span_with_builder(
                tracer.span_builder("POST /orders").with_kind(SpanKind::Server).with_attributes([
                    KeyValue::new("biz.key.order", order.clone()),
                    KeyValue::new("order.lines", 4_i64),
                ]),
                |cx| {
                    let mut record = logger.create_log_record();
                    record.set_severity_number(Severity::Info);
                    record.set_severity_text("INFO");
                    record.set_body(AnyValue::from(format!("order {order} captured")));
                    record.add_attribute("biz.key.order", order.clone());
                    logger.emit(record);
                    let span = cx.span();
                    let context = span.span_context();
                    (context.trace_id().to_string(), context.span_id().to_string())
                },
            )
        }
    })
    .await
    .unwrap();
    tokio::task::spawn_blocking(move || {
        tracer_provider.shutdown().unwrap();
        logger_provider.shutdown().unwrap();
    })
    .await
    .unwrap();

    let client = service.sql_client();
    let spans: Vec<(String, String, String, String, String, String)> = client
        .query("SELECT TraceId, SpanId, SpanName, SpanKind, ServiceName, SpanAttributes['order.lines'] FROM otel_traces WHERE SpanAttributes['biz.key.order'] = ?")
        .bind(&order)
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(
        spans,
        [(trace_id.clone(), span_id.clone(), "POST /orders".into(), "Server".into(), "b2b-portal".into(), "4".into())],
        "{protocol:?}"
    );
    let logs: Vec<(String, String, String, u8, String)> = client
        .query("SELECT TraceId, SpanId, Body, SeverityNumber, SeverityText FROM otel_logs WHERE LogAttributes['biz.key.order'] = ?")
        .bind(&order)
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(logs, [(trace_id, span_id, format!("order {order} captured"), 9, "INFO".into())], "{protocol:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_sdk_over_grpc_is_stored() {
    rust_export_is_stored(RustProtocol::Grpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_sdk_over_http_protobuf_is_stored() {
    rust_export_is_stored(RustProtocol::HttpProtobuf).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_sdk_over_http_json_is_stored() {
    rust_export_is_stored(RustProtocol::HttpJson).await;
}

/// One span of OTLP/JSON for order `order`, timestamped now.
fn json_span(order: &str, span_id: &str) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    JSON_TRACE
        .replace("1790000000000000000", &now.to_string())
        .replace("1790000000250000000", &(now + 250_000_000).to_string())
        .replace("PO-2002", order)
        .replace("eee19b7ec3c1b174", span_id)
}

/// A service in server mode whose store (a ClickHouse HTTP endpoint on
/// `store_port`) is not there until [`Outage::store_returns`].
struct Outage {
    _running: Running,
    http: u16,
    otlp: SocketAddr,
    store_port: u16,
}

async fn start_without_store(name: &str, database: &str, settings: &[(&str, &str)]) -> Outage {
    let store_port = free_port();
    let dir = work_dir(name);
    let (http, otlp) = (free_port(), free_port());
    let log = dir.join("serve.log");
    let child = waybill(&dir)
        .arg("serve")
        .env("WAYBILL_HTTP__LISTEN", format!("127.0.0.1:{http}"))
        .env("WAYBILL_OTLP__HTTP_LISTEN", format!("127.0.0.1:{otlp}"))
        .env("WAYBILL_STORE__MODE", "server")
        .env("WAYBILL_STORE__SERVER__URL", format!("http://127.0.0.1:{store_port}"))
        .env("WAYBILL_STORE__DATABASE", database)
        .env("WAYBILL_PIPELINE__RETRY_SECONDS", "3")
        .envs(settings.iter().copied())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut running = Running(child);
    wait_for_server(Some((&mut running, &log)), http, "/healthz", 200, Duration::from_secs(60)).await;
    Outage { _running: running, http, otlp: SocketAddr::from(([127, 0, 0, 1], otlp)), store_port }
}

impl Outage {
    /// Serves the store on its address, backed by the test's engine.
    async fn store_returns(&self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.store_port)).await.unwrap();
        let router = waybill_store::http_interface::router(common::engine(), waybill_store::http_interface::Access::ReadWrite);
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        wait_for_status(self.http, "/readyz", 200, Duration::from_secs(60)).await;
    }
}

/// Memory is bounded at the door: while one request holds the whole
/// in-flight budget (its store write is being retried), another is refused
/// with 429 and a retry hint before it is decoded, and once the first is
/// answered the budget is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_past_the_inflight_budget_are_refused_as_busy_until_it_frees() {
    let first = json_span("PO-INFLIGHT", "00000000000000c1");
    let budget = first.len().to_string();
    let outage = start_without_store("otlp-inflight", "t_inflight", &[("WAYBILL_OTLP__MAX_INFLIGHT_BYTES", &budget)]).await;
    let json = [("Content-Type", "application/json")];
    let otlp = outage.otlp;
    let pending = tokio::spawn({
        let body = first.clone();
        async move { common::http(otlp, "POST", "/v1/traces", &json, body.as_bytes()).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let metrics_address = SocketAddr::from(([127, 0, 0, 1], outage.http));
    let metrics = common::http(metrics_address, "GET", "/metrics", &[], b"").await.text();
    assert_eq!(metric(&metrics, "waybill_collector_inflight_bytes", &[]), Some(first.len() as f64));
    let second = json_span("PO-SECOND", "00000000000000c2");
    let busy = common::http(otlp, "POST", "/v1/traces", &json, second.as_bytes()).await;
    assert_eq!(busy.status, 429, "{}", busy.text());
    assert_eq!(busy.header("Retry-After"), Some("1"));
    let metrics = common::http(metrics_address, "GET", "/metrics", &[], b"").await.text();
    assert_eq!(metric(&metrics, "waybill_collector_refused_requests_total", &[("protocol", "http"), ("reason", "busy")]), Some(1.0));
    assert_eq!(pending.await.unwrap().status, 503);

    outage.store_returns().await;
    let metrics = common::http(metrics_address, "GET", "/metrics", &[], b"").await.text();
    assert_eq!(metric(&metrics, "waybill_collector_inflight_bytes", &[]), Some(0.0));
    for body in [&first, &second] {
        let response = common::http(otlp, "POST", "/v1/traces", &json, body.as_bytes()).await;
        assert_eq!(response.status, 200, "{}", response.text());
    }
}

/// At least once without double counting: while the store is unreachable
/// the queue stays bounded (429) and clients are told to retry (503); once
/// it is back, the retried request is stored, and a resend of an already
/// acknowledged request is not stored again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_store_loses_nothing_and_stores_resends_once() {
    let outage = start_without_store(
        "otlp-outage",
        "t_outage",
        &[("WAYBILL_PIPELINE__MAX_BATCH_ROWS", "1"), ("WAYBILL_PIPELINE__MAX_QUEUED_ROWS", "1")],
    )
    .await;
    let (http, otlp) = (outage.http, outage.otlp);
    let json = [("Content-Type", "application/json")];
    let first = json_span("PO-OUTAGE", "00000000000000a1");

    let pending = tokio::spawn({
        let body = first.clone();
        async move { common::http(otlp, "POST", "/v1/traces", &json, body.as_bytes()).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let busy = common::http(otlp, "POST", "/v1/traces", &json, json_span("PO-BUSY", "00000000000000b1").as_bytes()).await;
    assert_eq!(busy.status, 429, "{}", busy.text());
    assert_eq!(busy.header("Retry-After"), Some("1"));
    let metrics = common::http(SocketAddr::from(([127, 0, 0, 1], http)), "GET", "/metrics", &[], b"").await.text();
    assert_eq!(metric(&metrics, "waybill_collector_refused_requests_total", &[("protocol", "http"), ("reason", "busy")]), Some(1.0));
    // The same request again while the original is queued: it takes no room
    // (no 429) and shares the original's outcome instead of being stored twice.
    let resend = common::http(otlp, "POST", "/v1/traces", &json, first.as_bytes()).await;
    assert_eq!(resend.status, 503, "{}", resend.text());
    let unavailable = pending.await.unwrap();
    assert_eq!(unavailable.status, 503, "{}", unavailable.text());
    assert!(unavailable.header("Retry-After").is_some());

    // The store comes back on the same address.
    outage.store_returns().await;

    for attempt in ["retry after 503", "resend after a lost answer"] {
        let response = common::http(otlp, "POST", "/v1/traces", &json, first.as_bytes()).await;
        assert_eq!(response.status, 200, "{attempt}: {}", response.text());
    }
    let store = waybill_store::Store::embedded(common::engine(), common::target("t_outage"));
    let orders: Vec<(String, u64)> = store
        .fetch_all("SELECT SpanAttributes['biz.key.order'] AS o, count() FROM otel_traces GROUP BY o ORDER BY o")
        .await
        .unwrap();
    assert_eq!(orders, [("PO-OUTAGE".to_owned(), 1)]);
}

#[tokio::test]
async fn attribute_limits_drop_and_shorten_and_are_counted() {
    let service = start_with(
        "otlp-limits",
        &[("WAYBILL_OTLP__MAX_ATTRIBUTES_PER_RECORD", "2"), ("WAYBILL_OTLP__MAX_ATTRIBUTE_VALUE_BYTES", "6")],
    )
    .await;
    let body = json_span("PO-LIMITS-1234", "00000000000000c1").replace(
        r#"{"key":"http.status_code","value":{"intValue":"201"}}"#,
        r#"{"key":"http.status_code","value":{"intValue":"201"}},{"key":"extra","value":{"stringValue":"x"}}"#,
    );
    let response = service.post("/v1/traces", &[("Content-Type", "application/json")], body.as_bytes()).await;
    assert_eq!(response.status, 200, "{}", response.text());
    let stored: Vec<String> =
        service.sql_client().query("SELECT toJSONString(SpanAttributes) FROM otel_traces").fetch_all().await.unwrap();
    assert_eq!(stored, [r#"{"biz.key.order":"PO-LIM","http.status_code":"201"}"#]);
    let metrics = common::http(SocketAddr::from(([127, 0, 0, 1], service.http)), "GET", "/metrics", &[], b"").await.text();
    let count = |kind| metric(&metrics, "waybill_collector_truncated_attributes_total", &[("signal", "traces"), ("protocol", "http"), ("kind", kind)]);
    // Shortened: the order key, and the resource's service.name "b2b-portal".
    assert_eq!((count("dropped"), count("shortened")), (Some(1.0), Some(2.0)));
}

/// With sources configured, requests need a token and rows name their source.
#[tokio::test]
async fn tokens_identify_the_source_and_requests_without_one_are_refused() {
    let service = start_with(
        "otlp-tokens",
        &[("WAYBILL_OTLP__SOURCES", "[{name: sap-erp, token: erp-token-0123456789}, {name: wms, token: wms-token-0123456789}]")],
    )
    .await;
    let body = json_span("PO-TOKEN", "00000000000000d1");
    let json = ("Content-Type", "application/json");
    let missing = service.post("/v1/traces", &[json], body.as_bytes()).await;
    assert_eq!(missing.status, 401, "{}", missing.text());
    let wrong = service.post("/v1/traces", &[json, ("Authorization", "Bearer not-a-token-at-all")], body.as_bytes()).await;
    assert_eq!(wrong.status, 401);
    let ok = service.post("/v1/traces", &[json, ("Authorization", "Bearer erp-token-0123456789")], body.as_bytes()).await;
    assert_eq!(ok.status, 200, "{}", ok.text());

    // gRPC: the Python exporter sends the token as metadata.
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/send_otlp.py");
    let grpc = service.grpc;
    let run = move |headers: &'static str| {
        let script = script.clone();
        move || {
            std::process::Command::new(python())
                .arg(script)
                .arg(format!("http://{grpc}"))
                .arg("grpc")
                .env("OTEL_EXPORTER_OTLP_HEADERS", headers)
                .output()
                .unwrap()
        }
    };
    tokio::task::spawn_blocking(run("authorization=Bearer%20nope")).await.unwrap();
    let sent = tokio::task::spawn_blocking(run("authorization=Bearer%20wms-token-0123456789")).await.unwrap();
    assert!(sent.status.success(), "{}", String::from_utf8_lossy(&sent.stderr));

    let sources: Vec<(String, u64)> = service
        .sql_client()
        .query("SELECT WaybillSource, count() FROM otel_traces GROUP BY WaybillSource ORDER BY WaybillSource")
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(sources, [("sap-erp".to_owned(), 1), ("wms".to_owned(), 2)]);
    let logs: Vec<String> = service.sql_client().query("SELECT WaybillSource FROM otel_logs").fetch_all().await.unwrap();
    assert_eq!(logs, ["wms"]);
    let metrics = common::http(SocketAddr::from(([127, 0, 0, 1], service.http)), "GET", "/metrics", &[], b"").await.text();
    assert_eq!(metric(&metrics, "waybill_collector_refused_requests_total", &[("protocol", "http"), ("reason", "unauthenticated")]), Some(2.0));
    assert!(metric(&metrics, "waybill_collector_refused_requests_total", &[("protocol", "grpc"), ("reason", "unauthenticated")]).is_some_and(|n| n >= 1.0));
}

/// A real Prometheus server scrapes `/metrics` and sees the ingest counters;
/// the process's memory is there too.
#[tokio::test]
async fn prometheus_scrapes_the_ingest_metrics() {
    let service = start("otlp-prometheus").await;
    let body = json_span("PO-PROM", "00000000000000e1");
    let response = service.post("/v1/traces", &[("Content-Type", "application/json")], body.as_bytes()).await;
    assert_eq!(response.status, 200, "{}", response.text());

    let (_prometheus, api) = common::process::prometheus("prometheus", &format!("127.0.0.1:{}", service.http));
    common::process::wait_for_prometheus(api, r#"waybill_collector_accepted_records_total{job="waybill",signal="traces",protocol="http"}"#, "1").await;

    // The process's memory: all of it, and Waybill's own heap within it.
    let exposition = common::http(SocketAddr::from(([127, 0, 0, 1], service.http)), "GET", "/metrics", &[], b"").await.text();
    let resident = metric(&exposition, "waybill_resident_memory_bytes", &[]).expect("resident memory on /metrics");
    let heap = metric(&exposition, "waybill_heap_in_use_bytes", &[]).expect("heap in use on /metrics");
    assert!(heap > 0.0 && resident > heap, "resident {resident}, heap {heap}");
}

/// With `telemetry.otlp_endpoint` set, Waybill exports its own spans there
/// (here: to a second Waybill) and flushes them on shutdown.
#[tokio::test]
async fn waybill_exports_its_own_traces_when_asked() {
    // At shutdown the traced service flushes all its spans in one request,
    // its start-up statements included: more than this file's 64 KiB limit.
    let receiver = start_with("otlp-self-receiver", &[("WAYBILL_OTLP__MAX_BODY_BYTES", "1048576")]).await;
    let endpoint = format!("http://{}", receiver.otlp);
    let traced = start_with("otlp-self-traced", &[("WAYBILL_TELEMETRY__OTLP_ENDPOINT", endpoint.as_str())]).await;
    let body = json_span("PO-SELF", "00000000000000f1");
    let response = traced.post("/v1/traces", &[("Content-Type", "application/json")], body.as_bytes()).await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert!(traced.stop().await.success());

    let names: Vec<String> = receiver
        .sql_client()
        .query("SELECT DISTINCT SpanName FROM otel_traces WHERE ServiceName = 'waybill' ORDER BY SpanName")
        .fetch_all()
        .await
        .unwrap();
    assert!(names.contains(&"otlp.export".to_owned()) && names.contains(&"write_batch".to_owned()), "{names:?}");
}

/// Refusals tonic makes before our receiver sees the request are counted
/// too: an oversize message and a metrics export.
#[tokio::test]
async fn grpc_refusals_made_by_the_codec_are_counted() {
    use opentelemetry_proto::tonic::collector::metrics::v1::{metrics_service_client::MetricsServiceClient, ExportMetricsServiceRequest};
    use opentelemetry_proto::tonic::collector::trace::v1::{trace_service_client::TraceServiceClient, ExportTraceServiceRequest};
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    let service = start("otlp-grpc-refusals").await;
    let endpoint = format!("http://{}", service.grpc);
    let span = Span { trace_id: vec![1; 16], span_id: vec![2; 8], name: "x".repeat(2 << 20), ..Default::default() };
    let oversize = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans { scope_spans: vec![ScopeSpans { spans: vec![span], ..Default::default() }], ..Default::default() }],
    };
    let mut traces = TraceServiceClient::connect(endpoint.clone()).await.unwrap();
    let refused = traces.export(oversize).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::OutOfRange, "{refused:?}");
    let mut metrics = MetricsServiceClient::connect(endpoint).await.unwrap();
    let refused = metrics.export(ExportMetricsServiceRequest::default()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unimplemented, "{refused:?}");

    let exposition = common::http(SocketAddr::from(([127, 0, 0, 1], service.http)), "GET", "/metrics", &[], b"").await.text();
    let name = "waybill_collector_refused_requests_total";
    assert_eq!(metric(&exposition, name, &[("signal", "traces"), ("protocol", "grpc"), ("reason", "too_large")]), Some(1.0));
    assert_eq!(metric(&exposition, name, &[("signal", "metrics"), ("protocol", "grpc"), ("reason", "unsupported")]), Some(1.0));
}
