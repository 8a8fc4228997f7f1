//! `waybill demo`: a continuous distribution workload sent through the
//! OpenTelemetry SDK's OTLP exporter to a running Waybill.

/// Options of `waybill demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// OTLP/HTTP endpoint of the Waybill to send to.
    #[arg(long, default_value = "http://127.0.0.1:4318")]
    pub endpoint: String,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    anyhow::bail!("waybill demo is not written yet (endpoint {})", args.endpoint)
}
