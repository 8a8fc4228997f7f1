//! Waybill's own logs and traces. Logs go to stderr; with
//! `telemetry.otlp_endpoint` set (off by default), Waybill's spans (OTLP
//! exports received, batches written) are also exported over OTLP/HTTP to
//! that endpoint. Point it at another collector or Waybill: exporting to
//! itself would trace its own exports.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig};
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_subscriber::layer::{Layer as _, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::Config;

/// Keeps the exporter alive; [`Telemetry::shutdown`] flushes it.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

/// Installs the global subscriber. Call inside the Tokio runtime: the
/// span exporter runs on it.
pub fn init(config: &Config) -> anyhow::Result<Telemetry> {
    // log.level filters what is written to stderr, not which spans are exported.
    let filter = tracing_subscriber::EnvFilter::new(&config.log.level);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_filter(filter);
    let Some(endpoint) = config.telemetry.otlp_endpoint.as_deref() else {
        tracing_subscriber::registry().with(fmt).init();
        return Ok(Telemetry { provider: None });
    };
    let exporter = SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
        .build()?;
    let provider = SdkTracerProvider::builder()
        .with_span_processor(BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio).build())
        .with_resource(Resource::builder().with_service_name("waybill").build())
        .build();
    let layer = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("waybill"))
        .with_filter(tracing_subscriber::filter::LevelFilter::INFO);
    tracing_subscriber::registry().with(fmt).with(layer).init();
    Ok(Telemetry { provider: Some(provider) })
}

impl Telemetry {
    /// Exports what is buffered; call before the runtime stops.
    pub async fn shutdown(self) {
        if let Some(provider) = self.provider {
            let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        }
    }
}
