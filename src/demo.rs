//! `waybill demo`: a continuous distribution workload sent through the
//! OpenTelemetry SDK's OTLP exporter to a running Waybill.
//!
//! Seven systems, each its own SDK provider and `service.name`, report one
//! order's journey over separate traces, as real integrations do:
//!
//! | system | record | business attributes |
//! | --- | --- | --- |
//! | portal | span `POST /orders` | `order`, `order.captured` |
//! | middleware | span `orders.inbound publish`, a child of the portal's | none |
//! | erp | a trace per intake wave, a span per order linked to the middleware's, and under it a call to a tax SaaS | `order`, `sales_order`, `order.accepted` (some rejected) |
//! | wms | log record, no trace context | `sales_order`, `shipment`, `shipment.dispatched` (some orders split) |
//! | carrier | span with a `delivered` event | `shipment`, `shipment.delivered` |
//! | billing | a trace per billing run, a span per invoiced sales order | `sales_order`, `invoice`, `invoice.posted` (some failing) |
//! | inventory, portal | spans | `sku`, `inventory.changed`, then `inventory.published` after a varying lag |
//!
//! A few orders are captured 20 minutes in the past (per
//! `biz.source_time_unix_nano`) and never accepted: past the default 15m
//! acceptance deadline, they are stuck as soon as Waybill resolves them;
//! about one live order in a hundred is lost in the middleware, stuck 15
//! minutes later.
//! Everything is drawn from one seeded generator in simulated ticks, so a
//! `--seed` repeats the same workload.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use opentelemetry::logs::{AnyValue, LogRecord as _, Logger as _, LoggerProvider as _, Severity};
use opentelemetry::trace::{Link, Span as _, SpanContext, SpanKind, Status, TraceContextExt as _, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::logs::{BatchLogProcessor, LogBatch, LogExporter, SdkLogger, SdkLoggerProvider};
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider, SpanData, SpanExporter};
use opentelemetry_sdk::Resource;

/// One step of simulated time.
const TICK: Duration = Duration::from_millis(100);
const TICKS_PER_SECOND: u64 = 10;
/// The ERP takes in captured orders in waves, every 3 s.
const WAVE_EVERY: u64 = 3 * TICKS_PER_SECOND;
/// Billing runs like a nightly batch, compressed to every 10 s.
const BILLING_EVERY: u64 = 10 * TICKS_PER_SECOND;
const PROGRESS_EVERY: u64 = 5 * TICKS_PER_SECOND;
/// How often each provider exports what it buffered: short, so lineage moves.
const EXPORT_DELAY: Duration = Duration::from_millis(500);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Orders sent backdated at start, past the default acceptance deadline (15m).
const STUCK_ORDERS: u64 = 3;
const SKUS: usize = 40;
const REJECTION_REASONS: [&str; 3] = ["credit limit exceeded", "unknown ship-to party", "material blocked for sales"];
const INVOICE_FAILURES: [&str; 3] = ["tax code missing for ship-to country", "posting period closed", "pricing incomplete"];
const WAREHOUSES: [&str; 2] = ["DC-NORTH", "DC-SOUTH"];

/// Options of `waybill demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// OTLP/HTTP endpoint of the Waybill to send to (protobuf; `/v1/traces`
    /// and `/v1/logs` are appended).
    #[arg(long, default_value = "http://127.0.0.1:4318")]
    pub endpoint: String,
    /// Portal orders captured per second, on average.
    #[arg(long, default_value_t = 2.0)]
    pub orders_per_second: f64,
    /// Stop after this long (e.g. 30s, 5m); without it, run until Ctrl-C.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Seed of the workload: the same seed sends the same orders, rejections,
    /// splits and delays. Without it, one is picked and printed.
    #[arg(long)]
    pub seed: Option<u64>,
}

/// Sends the workload until `--duration` passes or Ctrl-C, then flushes
/// every system's exporter. Fails if nothing listens at the endpoint, or if
/// exports failed on the way.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    if !(args.orders_per_second > 0.0 && args.orders_per_second <= 1000.0) {
        anyhow::bail!("--orders-per-second must be above 0 and at most 1000 (got {})", args.orders_per_second);
    }
    let endpoint = args.endpoint.trim_end_matches('/').to_owned();
    check_reachable(&endpoint).await?;
    let started_at = SystemTime::now();
    let seed = args.seed.unwrap_or_else(|| unix_nanos(started_at) as u64);
    let exports = Arc::new(Exports::default());
    let systems = Systems::new(&endpoint, &exports)?;

    eprintln!(
        "waybill demo: sending to {endpoint} (OTLP/HTTP protobuf), {} orders/s, {}, seed {seed} (repeat with --seed {seed})",
        args.orders_per_second,
        match args.duration {
            Some(duration) => format!("for {}", humantime::format_duration(duration)),
            None => "until Ctrl-C".to_owned(),
        },
    );
    eprintln!("systems: portal, middleware, erp (a wave every 3s), wms (log records), carrier, billing (a run every 10s), inventory");
    eprintln!("{STUCK_ORDERS} orders are sent captured 20 minutes ago and never accepted: they show as stuck");
    eprintln!("look at: curl 'http://127.0.0.1:8080/api/v1/transactions?state=stuck'");
    eprintln!("         curl 'http://127.0.0.1:8080/api/v1/transactions?state=in_flight'   (or state=failed, or key=<an order number>)");

    let mut workload = Workload::new(seed, run_tag(started_at), args.orders_per_second);
    workload.send_stuck_orders(&systems);
    let started = Instant::now();
    let mut ticks = tokio::time::interval(TICK);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = &mut ctrl_c => {
                eprintln!("interrupted: sending what is buffered");
                break;
            }
        }
        workload.step(&systems);
        if args.duration.is_some_and(|duration| started.elapsed() >= duration) {
            break;
        }
        if workload.tick.is_multiple_of(PROGRESS_EVERY) {
            eprintln!("{}", progress(&workload, &exports, started.elapsed()));
        }
    }
    systems.shutdown().await;
    eprintln!("{}", progress(&workload, &exports, started.elapsed()));
    let failed = exports.failed.load(Ordering::Relaxed);
    if failed > 0 {
        anyhow::bail!(
            "{failed} of {} exports to {endpoint} failed (last: {}): is Waybill running there, and is it its OTLP/HTTP port (4318), not gRPC (4317)?",
            failed + exports.succeeded.load(Ordering::Relaxed),
            exports.last_error(),
        );
    }
    Ok(())
}

/// Fails with a clear message when nothing listens at `endpoint`: the SDK's
/// exporters would only drop the data.
async fn check_reachable(endpoint: &str) -> anyhow::Result<()> {
    let Some(rest) = endpoint.strip_prefix("http://") else {
        anyhow::bail!("--endpoint {endpoint:?}: give an http:// URL of Waybill's OTLP/HTTP port, e.g. http://127.0.0.1:4318");
    };
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() {
        anyhow::bail!("--endpoint {endpoint:?} names no host: give e.g. http://127.0.0.1:4318");
    }
    // A port after the host, or after an IPv6 literal's closing bracket.
    let has_port = authority.rsplit_once(':').is_some_and(|(_, port)| !port.contains(']'));
    let address = if has_port { authority.to_owned() } else { format!("{authority}:80") };
    let why = match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(&address)).await {
        Ok(Ok(_)) => return Ok(()),
        Ok(Err(err)) => err.to_string(),
        Err(_) => format!("no answer within {CONNECT_TIMEOUT:?}"),
    };
    anyhow::bail!("cannot reach Waybill's OTLP/HTTP endpoint {endpoint} ({why}): start `waybill serve` or pass --endpoint")
}

/// A tag from the start time in every document number, so two runs sent
/// to one Waybill do not share keys (the seed still repeats the workload).
fn run_tag(started: SystemTime) -> String {
    let seconds = started.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    format!("{:04X}", seconds % 0x10000)
}

fn progress(workload: &Workload, exports: &Exports, elapsed: Duration) -> String {
    let c = &workload.counts;
    let mut line = format!(
        "demo {:>4}s: orders {} captured, {} accepted, {} rejected | shipments {} ({} split orders), {} delivered | \
         invoices {}, {} failed | stock {} changed, {} published | stuck {} backdated, {} lost",
        elapsed.as_secs_f64().round(),
        c.captured,
        c.accepted,
        c.rejected,
        c.shipments,
        c.split,
        c.delivered,
        c.invoices,
        c.invoices_failed,
        c.stock_changes,
        c.published,
        c.backdated,
        c.lost,
    );
    let failed = exports.failed.load(Ordering::Relaxed);
    if failed > 0 {
        line.push_str(&format!(" | {failed} exports failed (last: {})", exports.last_error()));
    }
    line
}

/// SplitMix64: a few lines, enough for a workload that `--seed` repeats.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn chance(&mut self, probability: f64) -> bool {
        self.unit() < probability
    }

    /// Uniform in `low..=high`.
    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low + 1)
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.next() as usize % items.len()]
    }
}

/// What will happen to an order, drawn when it is captured.
#[derive(Debug, Clone, Copy)]
struct Fate {
    /// The middleware loses it: never accepted, stuck after the deadline.
    lost: bool,
    rejected: Option<&'static str>,
    split: bool,
    invoice_fails: Option<&'static str>,
}

/// A captured order waiting for the next ERP wave.
struct Captured {
    order: String,
    /// The middleware's publish span, which the ERP's consumer span links to.
    message: SpanContext,
    fate: Fate,
}

/// An accepted order waiting for the next billing run.
struct Billable {
    sales_order: String,
    fails: Option<&'static str>,
}

/// Something due at a later tick.
enum Task {
    Dispatch { sales_order: String, part: u32, parts: u32, fails: Option<&'static str> },
    Deliver { shipment: String },
    Publish { sku: usize, on_hand: i64 },
}

#[derive(Debug, Default)]
struct Counts {
    captured: u64,
    backdated: u64,
    lost: u64,
    accepted: u64,
    rejected: u64,
    shipments: u64,
    split: u64,
    delivered: u64,
    invoices: u64,
    invoices_failed: u64,
    stock_changes: u64,
    published: u64,
}

/// The simulated business: what each system does at each tick.
struct Workload {
    rng: Rng,
    tag: String,
    tick: u64,
    /// Mean ticks between two orders.
    order_gap: f64,
    next_order_at: f64,
    numbers: [u64; 4],
    captured: Vec<Captured>,
    billable: Vec<Billable>,
    agenda: BTreeMap<u64, Vec<Task>>,
    stock: Vec<i64>,
    waves: u64,
    runs: u64,
    counts: Counts,
}

#[derive(Clone, Copy)]
enum Document {
    Order = 0,
    SalesOrder = 1,
    Shipment = 2,
    Invoice = 3,
}

impl Workload {
    fn new(seed: u64, tag: String, orders_per_second: f64) -> Self {
        let mut rng = Rng(seed);
        let stock = (0..SKUS).map(|_| rng.between(50, 500) as i64).collect();
        Workload {
            rng,
            tag,
            tick: 0,
            order_gap: TICKS_PER_SECOND as f64 / orders_per_second,
            next_order_at: 1.0,
            numbers: [0; 4],
            captured: Vec::new(),
            billable: Vec::new(),
            agenda: BTreeMap::new(),
            stock,
            waves: 0,
            runs: 0,
            counts: Counts::default(),
        }
    }

    fn number(&mut self, document: Document) -> String {
        let prefix = match document {
            Document::Order => "PO",
            Document::SalesOrder => "SO",
            Document::Shipment => "SH",
            Document::Invoice => "INV",
        };
        let serial = &mut self.numbers[document as usize];
        *serial += 1;
        format!("{prefix}-{}-{:05}", self.tag, serial)
    }

    fn schedule(&mut self, after: u64, task: Task) {
        self.agenda.entry(self.tick + after.max(1)).or_default().push(task);
    }

    /// Orders the portal captured 18–25 minutes ago and the ERP never saw.
    fn send_stuck_orders(&mut self, systems: &Systems) {
        for _ in 0..STUCK_ORDERS {
            let order = self.number(Document::Order);
            let age = Duration::from_secs(self.rng.between(18 * 60, 25 * 60));
            systems.capture_order(&order, Some(SystemTime::now() - age));
            self.counts.captured += 1;
            self.counts.backdated += 1;
        }
    }

    /// Advances one tick: new orders, an ERP wave or billing run when due,
    /// stock movements, and whatever was scheduled for now.
    fn step(&mut self, systems: &Systems) {
        self.tick += 1;
        while self.next_order_at <= self.tick as f64 {
            // Exponential gaps: orders arrive at random, at the given mean rate.
            self.next_order_at += -(1.0 - self.rng.unit()).ln() * self.order_gap;
            self.capture(systems);
        }
        if self.tick.is_multiple_of(WAVE_EVERY) && !self.captured.is_empty() {
            self.erp_wave(systems);
        }
        if self.tick.is_multiple_of(BILLING_EVERY) && !self.billable.is_empty() {
            self.billing_run(systems);
        }
        // About one stock movement a second.
        if self.rng.chance(0.1) {
            self.move_stock(systems);
        }
        for task in self.agenda.remove(&self.tick).unwrap_or_default() {
            match task {
                Task::Dispatch { sales_order, part, parts, fails } => self.dispatch(systems, sales_order, part, parts, fails),
                Task::Deliver { shipment } => {
                    let scanned = SystemTime::now() - Duration::from_millis(self.rng.between(200, 3000));
                    systems.deliver(&shipment, scanned);
                    self.counts.delivered += 1;
                }
                Task::Publish { sku, on_hand } => {
                    systems.publish_stock(&sku_number(sku), on_hand);
                    self.counts.published += 1;
                }
            }
        }
    }

    fn capture(&mut self, systems: &Systems) {
        let order = self.number(Document::Order);
        let fate = Fate {
            lost: self.rng.chance(0.01),
            rejected: self.rng.chance(0.05).then(|| self.rng.pick(&REJECTION_REASONS)),
            split: self.rng.chance(0.15),
            invoice_fails: self.rng.chance(0.05).then(|| self.rng.pick(&INVOICE_FAILURES)),
        };
        let message = systems.capture_order(&order, None);
        self.counts.captured += 1;
        if fate.lost {
            self.counts.lost += 1;
        } else {
            self.captured.push(Captured { order, message, fate });
        }
    }

    /// The ERP takes in every order captured since the last wave, gives each
    /// its own sales order number, and rejects some.
    fn erp_wave(&mut self, systems: &Systems) {
        self.waves += 1;
        let mut wave = Vec::new();
        for captured in std::mem::take(&mut self.captured) {
            let sales_order = self.number(Document::SalesOrder);
            if captured.fate.rejected.is_some() {
                self.counts.rejected += 1;
            } else {
                self.counts.accepted += 1;
                let first = self.rng.between(2, 6) * TICKS_PER_SECOND;
                let parts = if captured.fate.split { 2 } else { 1 };
                self.schedule(first, Task::Dispatch { sales_order: sales_order.clone(), part: 1, parts, fails: captured.fate.invoice_fails });
                if captured.fate.split {
                    let second = first + self.rng.between(2, 8) * TICKS_PER_SECOND;
                    self.schedule(second, Task::Dispatch { sales_order: sales_order.clone(), part: 2, parts, fails: None });
                }
            }
            wave.push(Acceptance { order: captured.order, sales_order, message: captured.message, rejected: captured.fate.rejected });
        }
        systems.accept_wave(self.waves, &wave);
    }

    fn dispatch(&mut self, systems: &Systems, sales_order: String, part: u32, parts: u32, fails: Option<&'static str>) {
        let shipment = self.number(Document::Shipment);
        let warehouse = self.rng.pick(&WAREHOUSES);
        systems.dispatch(&sales_order, &shipment, part, parts, warehouse);
        self.counts.shipments += 1;
        self.counts.split += u64::from(part == 2);
        let delivery = self.rng.between(5, 20) * TICKS_PER_SECOND;
        self.schedule(delivery, Task::Deliver { shipment });
        // Billing invoices an order once its first shipment has left.
        if part == 1 {
            self.billable.push(Billable { sales_order, fails });
        }
    }

    /// One invoice per dispatched order, now and then one for two orders.
    fn billing_run(&mut self, systems: &Systems) {
        self.runs += 1;
        let mut pending = std::mem::take(&mut self.billable).into_iter().peekable();
        let mut invoices = Vec::new();
        while let Some(first) = pending.next() {
            let mut sales_orders = vec![first.sales_order];
            let mut failure = first.fails;
            if pending.peek().is_some() && self.rng.chance(0.1) {
                let second = pending.next().expect("peeked");
                sales_orders.push(second.sales_order);
                failure = failure.or(second.fails);
            }
            self.counts.invoices += 1;
            self.counts.invoices_failed += u64::from(failure.is_some());
            invoices.push(Invoice { number: self.number(Document::Invoice), sales_orders, failure });
        }
        systems.post_invoices(self.runs, &invoices);
    }

    /// A pick or a replenishment, reported a little after it happened, and
    /// published to the portal after a lag that is usually short.
    fn move_stock(&mut self, systems: &Systems) {
        let sku = self.rng.next() as usize % SKUS;
        let delta = if self.rng.chance(0.8) { -(self.rng.between(1, 12) as i64) } else { self.rng.between(50, 200) as i64 };
        self.stock[sku] = (self.stock[sku] + delta).max(0);
        let moved = SystemTime::now() - Duration::from_millis(self.rng.between(0, 3000));
        systems.change_stock(&sku_number(sku), delta, self.stock[sku], moved);
        self.counts.stock_changes += 1;
        let lag = match self.rng.unit() {
            u if u < 0.70 => self.rng.between(1, 5),
            u if u < 0.95 => self.rng.between(10, 40),
            _ => self.rng.between(60, 180),
        };
        self.schedule(lag * TICKS_PER_SECOND, Task::Publish { sku, on_hand: self.stock[sku] });
    }
}

fn sku_number(index: usize) -> String {
    format!("SKU-{}", 10_001 + index)
}

struct Acceptance {
    order: String,
    sales_order: String,
    message: SpanContext,
    rejected: Option<&'static str>,
}

struct Invoice {
    number: String,
    sales_orders: Vec<String>,
    failure: Option<&'static str>,
}

/// One OpenTelemetry SDK per system, each with its own resource and OTLP
/// exporter, as separate applications have.
struct Systems {
    portal: SdkTracer,
    middleware: SdkTracer,
    erp: SdkTracer,
    carrier: SdkTracer,
    billing: SdkTracer,
    inventory: SdkTracer,
    wms: SdkLogger,
    tracer_providers: Vec<SdkTracerProvider>,
    logger_provider: SdkLoggerProvider,
}

impl Systems {
    fn new(endpoint: &str, exports: &Arc<Exports>) -> anyhow::Result<Self> {
        let mut tracer_providers = Vec::new();
        let mut tracer = |service: &'static str| -> anyhow::Result<SdkTracer> {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .with_endpoint(format!("{endpoint}/v1/traces"))
                .build()
                .with_context(|| format!("cannot set up the {service} span exporter"))?;
            let config = opentelemetry_sdk::trace::BatchConfigBuilder::default().with_scheduled_delay(EXPORT_DELAY).build();
            let processor = BatchSpanProcessor::builder(Watched::new(exporter, exports), opentelemetry_sdk::runtime::Tokio)
                .with_batch_config(config)
                .build();
            let provider = SdkTracerProvider::builder().with_span_processor(processor).with_resource(resource(service)).build();
            let tracer = provider.tracer("waybill-demo");
            tracer_providers.push(provider);
            Ok(tracer)
        };
        let (portal, middleware, erp) = (tracer("portal")?, tracer("middleware")?, tracer("erp")?);
        let (carrier, billing, inventory) = (tracer("carrier")?, tracer("billing")?, tracer("inventory")?);

        let exporter = opentelemetry_otlp::LogExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(format!("{endpoint}/v1/logs"))
            .build()
            .context("cannot set up the wms log exporter")?;
        let config = opentelemetry_sdk::logs::BatchConfigBuilder::default().with_scheduled_delay(EXPORT_DELAY).build();
        let processor = BatchLogProcessor::builder(Watched::new(exporter, exports)).with_batch_config(config).build();
        let logger_provider = SdkLoggerProvider::builder().with_log_processor(processor).with_resource(resource("wms")).build();
        let wms = logger_provider.logger("waybill-demo");
        Ok(Systems { portal, middleware, erp, carrier, billing, inventory, wms, tracer_providers, logger_provider })
    }

    /// The portal's `POST /orders`, and under it (as an HTTP call with
    /// `traceparent` would put it) the middleware's publish, which carries no
    /// business attributes. Returns the publish span's context.
    fn capture_order(&self, order: &str, backdated: Option<SystemTime>) -> SpanContext {
        let end = SystemTime::now();
        let start = end - Duration::from_millis(180);
        let mut attributes = vec![
            KeyValue::new("http.request.method", "POST"),
            KeyValue::new("http.route", "/orders"),
            KeyValue::new("http.response.status_code", 201_i64),
            KeyValue::new("biz.key.order", order.to_owned()),
            KeyValue::new("biz.milestone", "order.captured"),
        ];
        if let Some(captured) = backdated {
            attributes.push(KeyValue::new("biz.source_time_unix_nano", unix_nanos(captured)));
        }
        let mut request = self
            .portal
            .span_builder("POST /orders")
            .with_kind(SpanKind::Server)
            .with_start_time(start)
            .with_attributes(attributes)
            .start(&self.portal);
        let parent = Context::new().with_remote_span_context(request.span_context().clone());
        let mut publish = self
            .middleware
            .span_builder("orders.inbound publish")
            .with_kind(SpanKind::Producer)
            .with_start_time(start + Duration::from_millis(60))
            .with_attributes([
                KeyValue::new("messaging.system", "rabbitmq"),
                KeyValue::new("messaging.operation.type", "publish"),
                KeyValue::new("messaging.destination.name", "orders.inbound"),
            ])
            .start_with_context(&self.middleware, &parent);
        publish.end_with_timestamp(end - Duration::from_millis(30));
        request.end_with_timestamp(end);
        publish.span_context().clone()
    }

    /// One ERP intake trace: a span per order, linked to the message it consumed.
    fn accept_wave(&self, wave: u64, orders: &[Acceptance]) {
        let root = self
            .erp
            .span_builder("sales order intake")
            .with_attributes([KeyValue::new("erp.wave", wave as i64), KeyValue::new("erp.orders", orders.len() as i64)])
            .start(&self.erp);
        let cx = Context::new().with_span(root);
        for acceptance in orders {
            let mut attributes = vec![
                KeyValue::new("messaging.operation.type", "process"),
                KeyValue::new("messaging.destination.name", "orders.inbound"),
                KeyValue::new("biz.key.order", acceptance.order.clone()),
                KeyValue::new("biz.key.sales_order", acceptance.sales_order.clone()),
                KeyValue::new("biz.milestone", "order.accepted"),
            ];
            if let Some(reason) = acceptance.rejected {
                attributes.push(KeyValue::new("biz.outcome", "rejected"));
                attributes.push(KeyValue::new("erp.rejection_reason", reason));
            }
            let mut span = self
                .erp
                .span_builder("orders.inbound process")
                .with_kind(SpanKind::Consumer)
                .with_links(vec![Link::with_context(acceptance.message.clone())])
                .with_attributes(attributes)
                .start_with_context(&self.erp, &cx);
            if let Some(reason) = acceptance.rejected {
                span.set_status(Status::error(format!("sales order rejected: {reason}")));
            } else {
                self.quote_tax(&cx.with_remote_span_context(span.span_context().clone()), &acceptance.order);
            }
            span.end();
        }
        cx.span().end();
    }

    /// The ERP's call to a tax SaaS for an accepted order; about one in
    /// twenty-five times out.
    fn quote_tax(&self, parent: &Context, order: &str) {
        let mut call = self
            .erp
            .span_builder("POST /v1/tax/quote")
            .with_kind(SpanKind::Client)
            .with_attributes([
                KeyValue::new("peer.service", "tax-saas"),
                KeyValue::new("server.address", "api.tax-saas.example"),
                KeyValue::new("http.request.method", "POST"),
            ])
            .start_with_context(&self.erp, parent);
        if order.bytes().map(u32::from).sum::<u32>() % 25 == 0 {
            call.set_status(Status::error("tax quote timed out"));
        }
        call.end();
    }

    /// The warehouse reports a shipment as a log record without trace context.
    fn dispatch(&self, sales_order: &str, shipment: &str, part: u32, parts: u32, warehouse: &'static str) {
        let now = SystemTime::now();
        let mut record = self.wms.create_log_record();
        record.set_timestamp(now);
        record.set_observed_timestamp(now);
        record.set_severity_number(Severity::Info);
        record.set_severity_text("INFO");
        record.set_body(AnyValue::from(format!("shipment {shipment} dispatched from {warehouse} for {sales_order} ({part} of {parts})")));
        record.add_attribute("biz.key.sales_order", sales_order.to_owned());
        record.add_attribute("biz.key.shipment", shipment.to_owned());
        record.add_attribute("biz.milestone", "shipment.dispatched");
        record.add_attribute("wms.warehouse", warehouse);
        record.add_attribute("wms.shipment_part", i64::from(part));
        record.add_attribute("wms.shipment_parts", i64::from(parts));
        self.wms.emit(record);
    }

    /// The carrier's tracking webhook; the delivery scan is a span event.
    fn deliver(&self, shipment: &str, scanned: SystemTime) {
        let mut span = self
            .carrier
            .span_builder("POST /tracking-events")
            .with_kind(SpanKind::Server)
            .with_attributes([
                KeyValue::new("http.request.method", "POST"),
                KeyValue::new("http.route", "/tracking-events"),
                KeyValue::new("biz.key.shipment", shipment.to_owned()),
            ])
            .start(&self.carrier);
        span.add_event_with_timestamp("out_for_delivery", scanned - Duration::from_secs(2), Vec::new());
        span.add_event_with_timestamp("delivered", scanned, vec![KeyValue::new("biz.milestone", "shipment.delivered")]);
        span.end();
    }

    /// One billing run: a span per invoiced sales order, failing invoices
    /// with an error status.
    fn post_invoices(&self, run: u64, invoices: &[Invoice]) {
        let root = self
            .billing
            .span_builder("billing run")
            .with_attributes([KeyValue::new("billing.run", run as i64), KeyValue::new("billing.invoices", invoices.len() as i64)])
            .start(&self.billing);
        let cx = Context::new().with_span(root);
        for invoice in invoices {
            for sales_order in &invoice.sales_orders {
                let mut span = self
                    .billing
                    .span_builder("post invoice")
                    .with_attributes([
                        KeyValue::new("biz.key.invoice", invoice.number.clone()),
                        KeyValue::new("biz.key.sales_order", sales_order.clone()),
                        KeyValue::new("biz.milestone", "invoice.posted"),
                    ])
                    .start_with_context(&self.billing, &cx);
                if let Some(failure) = invoice.failure {
                    span.set_status(Status::error(format!("invoice not posted: {failure}")));
                }
                span.end();
            }
        }
        if invoices.iter().any(|invoice| invoice.failure.is_some()) {
            cx.span().set_status(Status::error("some invoices were not posted"));
        }
        cx.span().end();
    }

    /// A stock movement, with when it happened per the warehouse scanner.
    fn change_stock(&self, sku: &str, delta: i64, on_hand: i64, moved: SystemTime) {
        let mut span = self
            .inventory
            .span_builder("stock movement")
            .with_attributes([
                KeyValue::new("biz.key.sku", sku.to_owned()),
                KeyValue::new("biz.milestone", "inventory.changed"),
                KeyValue::new("biz.source_time_unix_nano", unix_nanos(moved)),
                KeyValue::new("inventory.delta", delta),
                KeyValue::new("inventory.on_hand", on_hand),
            ])
            .start(&self.inventory);
        span.end();
    }

    /// The portal publishing a stock level to its catalog.
    fn publish_stock(&self, sku: &str, on_hand: i64) {
        let mut span = self
            .portal
            .span_builder("PUT /catalog/stock/{sku}")
            .with_kind(SpanKind::Server)
            .with_attributes([
                KeyValue::new("http.request.method", "PUT"),
                KeyValue::new("http.route", "/catalog/stock/{sku}"),
                KeyValue::new("biz.key.sku", sku.to_owned()),
                KeyValue::new("biz.milestone", "inventory.published"),
                KeyValue::new("inventory.on_hand", on_hand),
            ])
            .start(&self.portal);
        span.end();
    }

    /// Exports what every provider buffered. Shutting down blocks on the
    /// exporters, so it runs off the executor.
    async fn shutdown(self) {
        let mut waits = Vec::new();
        for provider in self.tracer_providers {
            waits.push(tokio::task::spawn_blocking(move || provider.shutdown()));
        }
        let logger_provider = self.logger_provider;
        waits.push(tokio::task::spawn_blocking(move || logger_provider.shutdown()));
        for wait in waits {
            let _ = wait.await;
        }
    }
}

fn resource(service: &'static str) -> Resource {
    Resource::builder()
        .with_service_name(service)
        .with_attribute(KeyValue::new("deployment.environment.name", "waybill-demo"))
        .build()
}

fn unix_nanos(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |since| i64::try_from(since.as_nanos()).unwrap_or(i64::MAX))
}

/// Export outcomes across all systems, for the progress line: the SDK
/// reports failed exports nowhere a demo user would look.
#[derive(Debug, Default)]
struct Exports {
    succeeded: AtomicU64,
    failed: AtomicU64,
    last_error: Mutex<String>,
}

impl Exports {
    fn record(&self, result: &OTelSdkResult) {
        match result {
            Ok(()) => {
                self.succeeded.fetch_add(1, Ordering::Relaxed);
            }
            Err(err) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                *self.last_error.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = err.to_string();
            }
        }
    }

    fn last_error(&self) -> String {
        self.last_error.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }
}

/// An OTLP exporter whose outcomes are counted in [`Exports`].
#[derive(Debug)]
struct Watched<E> {
    inner: E,
    exports: Arc<Exports>,
    runtime: tokio::runtime::Handle,
}

impl<E> Watched<E> {
    /// Call inside the Tokio runtime the exporter's HTTP client is to use.
    fn new(inner: E, exports: &Arc<Exports>) -> Self {
        Watched { inner, exports: exports.clone(), runtime: tokio::runtime::Handle::current() }
    }
}

impl<E: SpanExporter> SpanExporter for Watched<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let result = self.inner.export(batch).await;
        self.exports.record(&result);
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

impl<E: LogExporter> LogExporter for Watched<E> {
    fn export(&self, batch: LogBatch<'_>) -> impl Future<Output = OTelSdkResult> + Send {
        // The SDK's batch log processor exports from a thread of its own,
        // outside Tokio, but the OTLP exporter's hyper client needs Tokio's
        // reactor and timers: each poll runs inside the demo's runtime.
        let mut export = Box::pin(self.inner.export(batch));
        async move {
            let result = std::future::poll_fn(|cx| {
                let _entered = self.runtime.enter();
                export.as_mut().poll(cx)
            })
            .await;
            self.exports.record(&result);
            result
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_draws_the_same_numbers_and_another_does_not() {
        let draw = |seed| {
            let mut rng = Rng(seed);
            (0..8).map(|_| rng.next()).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn draws_stay_in_their_ranges_and_chances_come_out_near_their_rate() {
        let mut rng = Rng(1);
        for _ in 0..1000 {
            let value = rng.between(3, 5);
            assert!((3..=5).contains(&value), "{value}");
            assert!((0.0..1.0).contains(&rng.unit()));
        }
        let hits = (0..10_000).filter(|_| rng.chance(0.05)).count();
        assert!((350..650).contains(&hits), "5% of 10000 came out as {hits}");
    }

    #[test]
    fn document_numbers_count_per_kind_and_carry_the_run_tag() {
        let mut workload = Workload::new(1, "00AB".into(), 2.0);
        assert_eq!(workload.number(Document::Order), "PO-00AB-00001");
        assert_eq!(workload.number(Document::Order), "PO-00AB-00002");
        assert_eq!(workload.number(Document::SalesOrder), "SO-00AB-00001");
        assert_eq!(workload.number(Document::Invoice), "INV-00AB-00001");
    }

    #[tokio::test]
    async fn an_endpoint_without_a_listener_or_with_another_scheme_is_refused_clearly() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let err = check_reachable(&format!("http://127.0.0.1:{port}")).await.unwrap_err().to_string();
        assert!(err.contains("cannot reach") && err.contains("waybill serve"), "{err}");
        let err = check_reachable("https://127.0.0.1:4318").await.unwrap_err().to_string();
        assert!(err.contains("http://"), "{err}");
    }
}
