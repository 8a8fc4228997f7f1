//! From decoded OTLP requests to stored rows: the sink the binary gives the
//! collector, and the writer behind it.
//!
//! Each request is converted to rows (as the OpenTelemetry Collector's
//! ClickHouse exporter writes them: span kind and status as `Server` /
//! `Error`, ids as lowercase hex, attribute values as pdata's `AsString`) and
//! queued; one writer task writes what is queued as one INSERT per table
//! (up to a row limit, lingering for more while requests arrive faster than
//! they are written), and each request is acknowledged only once its batch
//! is stored. At least once, without double counting:
//! - the queue is bounded in rows; a full queue answers Busy (429 /
//!   RESOURCE_EXHAUSTED) instead of growing;
//! - a failed batch is retried with the same deduplication token while its
//!   clients wait, so a write that did land is not stored twice; if the store
//!   stays down, clients get Unavailable and resend;
//! - requests stored recently are remembered by digest, so a client
//!   resending one whose answer it lost is acknowledged without a write, and
//!   a resend arriving while the original is still queued waits for it.
//!
//! Business extraction happens here too: each request's records go through
//! the lineage mapping rules on the way in, their business events are
//! written with the batch (`biz_events`), and the lineage resolver is told
//! which traces got new ones.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use prost::Message;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tracing::Instrument;
use waybill_collector::{Accepted, ExportLogsServiceRequest, ExportTraceServiceRequest, Sink, SinkError};
use waybill_lineage::{Extractor, Notifier};
use waybill_store::{BizEventRow, LogRow, SpanRow, Store};

/// How the writer batches and how much it may hold.
#[derive(Debug, Clone, Copy)]
pub struct PipelineConfig {
    /// A batch is written once it holds this many rows, or once nothing
    /// else is waiting...
    pub max_batch_rows: usize,
    /// ...or once its requests' encoded size reaches this many bytes...
    pub max_batch_bytes: usize,
    /// ...after lingering for more: with no other batch being written, a
    /// batch goes at the latest once its first request has waited this
    /// long in the queue (zero: never linger).
    pub flush_interval: Duration,
    /// Linger only while requests arrive during writes and batches stay
    /// small: the linger grows towards `flush_interval` while they do, and
    /// halves after each batch whose requests all came while nothing was
    /// being written (none after about four); a lingering batch also goes
    /// once no request came for twice the usual gap between them. An
    /// exporter sending alone, one request at a time, never sends during a
    /// write, so it does not make the writer linger; beside exporters that
    /// do, its requests wait with theirs. Off: always linger the whole
    /// `flush_interval`.
    pub adaptive_flush: bool,
    /// Rows queued or being written at most; beyond it requests get Busy.
    pub max_queued_rows: usize,
    /// How long a failed batch is retried before its clients get Unavailable.
    pub retry_for: Duration,
    /// How many stored request digests are remembered.
    pub remembered_requests: usize,
    /// Writers, each writing one batch at a time: while one waits for its
    /// INSERTs the next batch gathers, and with a second writer goes beside
    /// it once full. Faster under overload, and more memory.
    pub writers: usize,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            max_batch_rows: 20_000,
            max_batch_bytes: 32 << 20,
            flush_interval: Duration::from_millis(100),
            adaptive_flush: true,
            max_queued_rows: 200_000,
            retry_for: Duration::from_secs(10),
            remembered_requests: 100_000,
            writers: 1,
        }
    }
}

mod metrics {
    //! The pipeline's Prometheus metrics (default registry).
    use std::sync::LazyLock;

    use prometheus::{register_gauge, register_histogram, register_histogram_vec, register_int_counter_vec, register_int_gauge};
    use prometheus::{Gauge, Histogram, HistogramVec, IntCounterVec, IntGauge};

    pub static QUEUED_RECORDS: LazyLock<IntGauge> = LazyLock::new(|| {
        register_int_gauge!("waybill_pipeline_queued_records", "Records accepted into the queue and not yet stored")
            .expect("metric registers once")
    });
    pub static BATCH_RECORDS: LazyLock<Histogram> = LazyLock::new(|| {
        register_histogram!(
            "waybill_pipeline_batch_records",
            "Records per written batch",
            vec![1.0, 10.0, 100.0, 1_000.0, 5_000.0, 10_000.0, 20_000.0, 50_000.0, 100_000.0]
        )
        .expect("metric registers once")
    });
    pub static LINGER_SECONDS: LazyLock<Gauge> = LazyLock::new(|| {
        register_gauge!("waybill_pipeline_linger_seconds", "How long the writer now lingers for more requests before writing a batch")
            .expect("metric registers once")
    });
    pub static BATCH_BYTES: LazyLock<Histogram> = LazyLock::new(|| {
        register_histogram!(
            "waybill_pipeline_batch_bytes",
            "Encoded OTLP size of the requests in a written batch",
            prometheus::exponential_buckets(4096.0, 4.0, 9).expect("valid buckets")
        )
        .expect("metric registers once")
    });
    pub static INSERT_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
        register_histogram_vec!(
            "waybill_store_insert_duration_seconds",
            "Time of one batch INSERT, by table",
            &["table"],
            vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
        )
        .expect("metric registers once")
    });
    pub static FAILED_INSERTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
        register_int_counter_vec!("waybill_store_failed_inserts_total", "Batch INSERTs that failed (and were retried), by table", &["table"])
            .expect("metric registers once")
    });

    /// Makes every pipeline metric visible from the start.
    pub fn register() {
        LazyLock::force(&QUEUED_RECORDS);
        LazyLock::force(&BATCH_RECORDS);
        LazyLock::force(&BATCH_BYTES);
        LazyLock::force(&LINGER_SECONDS);
        LazyLock::force(&INSERT_SECONDS);
        LazyLock::force(&FAILED_INSERTS);
    }
}

pub use metrics::register as register_metrics;

const BUSY_RETRY_AFTER: Duration = Duration::from_secs(1);
const STORE_RETRY_AFTER: Duration = Duration::from_secs(5);

/// One request's rows, waiting for its batch.
struct Submission {
    /// Identity of the request, remembered by the writer once stored, even
    /// when the client stopped waiting.
    digest: u128,
    /// The request's protobuf size, which bounds a batch's bytes.
    bytes: usize,
    spans: Vec<SpanRow>,
    logs: Vec<LogRow>,
    /// The business events of those records.
    business: Vec<BizEventRow>,
    /// Where the outcome goes: to the request and to any resend of it
    /// waiting meanwhile.
    ack: watch::Sender<Outcome>,
    /// Returned to the queue's budget when the submission is dropped.
    _permit: Option<OwnedSemaphorePermit>,
    /// When it was queued: the linger is counted from here.
    queued: Instant,
    /// Whether a batch was being written when it was queued: exporters
    /// send faster than batches are written, and lingering pays.
    during_write: bool,
}

impl Submission {
    fn rows(&self) -> usize {
        self.spans.len() + self.logs.len()
    }
}

/// A request's outcome once its batch is written; `None` until then.
type Outcome = Option<Result<(), SinkError>>;

/// Which requests are stored or being stored, by digest, under one lock so
/// a resend sees one or the other.
struct Ledger {
    stored: RecentDigests,
    /// Requests whose spans or logs are stored but whose business events
    /// are not (the two are written side by side, and only the latter
    /// failed): a resend writes only its business events.
    records_stored: RecentDigests,
    in_flight: HashMap<u128, watch::Receiver<Outcome>>,
}

/// Ends once every task has, or at once when one panics: that panic
/// fails the returned future, and the other tasks are aborted. A writer
/// that panicked leaves its clients unanswered (they get Unavailable and
/// resend) and may have left the shared gathering state half done, so the
/// service is better stopped whole, and said why, than kept on half its
/// writers, or none, until its shutdown.
async fn until_one_fails(mut tasks: tokio::task::JoinSet<()>) {
    while let Some(ended) = tasks.join_next().await {
        if let Err(err) = ended {
            if err.is_panic() {
                tasks.abort_all();
                std::panic::resume_unwind(err.into_panic());
            }
        }
    }
}

/// What the ledger knows of a request.
enum Seen {
    Stored,
    /// Its spans or logs are stored, its business events are not.
    RecordsStored,
    /// A copy is being stored: its outcome will be this request's.
    InFlight(watch::Receiver<Outcome>),
    New,
}

/// Waits for a request's outcome.
async fn outcome(mut receiver: watch::Receiver<Outcome>) -> Result<(), SinkError> {
    match receiver.wait_for(Option::is_some).await {
        Ok(outcome) => outcome.clone().unwrap_or(Ok(())),
        Err(_) => Err(unavailable("the writer has stopped")),
    }
}

/// How long a request waits for room in the queue before getting Busy.
const QUEUE_WAIT: Duration = Duration::from_millis(500);

/// The collector's sink: converts, queues, and waits for the batch.
pub struct Pipeline {
    queue: mpsc::UnboundedSender<Submission>,
    extractor: Arc<Extractor>,
    budget: Arc<Semaphore>,
    max_queued_rows: usize,
    ledger: Arc<Mutex<Ledger>>,
    /// How many batches the writers are writing.
    writing: Arc<AtomicUsize>,
}

impl Pipeline {
    /// Starts the writers; the task returned ends, after writing what is
    /// queued, once the pipeline is dropped, or at once if a writer panics.
    /// `extractor` finds the business events of each request; `resolver`,
    /// if any, is told the traces that got some.
    pub fn start(
        store: Store,
        config: PipelineConfig,
        extractor: Extractor,
        resolver: Option<Notifier>,
    ) -> (Arc<Pipeline>, tokio::task::JoinHandle<()>) {
        // The channel itself is unbounded; the row budget bounds it.
        let (queue, receiver) = mpsc::unbounded_channel();
        let max_queued_rows = config.max_queued_rows.clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
        let ledger = Arc::new(Mutex::new(Ledger {
            stored: RecentDigests::new(config.remembered_requests),
            records_stored: RecentDigests::new(config.remembered_requests),
            in_flight: HashMap::new(),
        }));
        let shared = Arc::new(Writers::new(receiver));
        let pipeline = Arc::new(Pipeline {
            queue,
            extractor: Arc::new(extractor),
            budget: Arc::new(Semaphore::new(max_queued_rows)),
            max_queued_rows,
            ledger: ledger.clone(),
            writing: shared.writing.clone(),
        });
        let mut writers = tokio::task::JoinSet::new();
        for _ in 0..config.writers.max(1) {
            writers.spawn(write_batches(store.clone(), shared.clone(), config, ledger.clone(), resolver.clone()));
        }
        (pipeline, tokio::spawn(until_one_fails(writers)))
    }

    /// Looks `digest` up; with `register`, records this request as being
    /// stored when no copy is stored or in flight, in the same step.
    fn seen(&self, digest: u128, register: Option<&watch::Receiver<Outcome>>) -> Seen {
        let mut ledger = self.ledger.lock().expect("ledger lock");
        if ledger.stored.contains(digest) {
            return Seen::Stored;
        }
        if let Some(original) = ledger.in_flight.get(&digest) {
            return Seen::InFlight(original.clone());
        }
        if let Some(receiver) = register {
            ledger.in_flight.insert(digest, receiver.clone());
        }
        if ledger.records_stored.contains(digest) {
            return Seen::RecordsStored;
        }
        Seen::New
    }

    async fn submit(
        &self,
        (digest, bytes): (u128, usize),
        mut spans: Vec<SpanRow>,
        mut logs: Vec<LogRow>,
        business: Vec<BizEventRow>,
    ) -> Result<Accepted, SinkError> {
        let rows = spans.len() + logs.len();
        if rows == 0 {
            return Ok(Accepted::Stored);
        }
        // A resend of a stored request is done; of one being stored, waits for it.
        match self.seen(digest, None) {
            Seen::Stored => return Ok(Accepted::AlreadyStored),
            Seen::InFlight(original) => return outcome(original).await.map(|()| Accepted::AlreadyStored),
            Seen::RecordsStored | Seen::New => {}
        }
        // Wait briefly for room, so a large request is not refused forever
        // under steady load; a request larger than the whole budget takes all of it.
        let wanted = u32::try_from(rows.min(self.max_queued_rows)).unwrap_or(u32::MAX);
        let permit = tokio::time::timeout(QUEUE_WAIT, self.budget.clone().acquire_many_owned(wanted))
            .await
            .map_err(|_| SinkError::Busy { retry_after: BUSY_RETRY_AFTER })?
            .map_err(|_| unavailable("the writer has stopped"))?;
        let (ack, receiver) = watch::channel(None);
        // Another copy may have been stored or registered while this one waited for room.
        match self.seen(digest, Some(&receiver)) {
            Seen::Stored => return Ok(Accepted::AlreadyStored),
            Seen::InFlight(original) => return outcome(original).await.map(|()| Accepted::AlreadyStored),
            Seen::RecordsStored => {
                spans.clear();
                logs.clear();
            }
            Seen::New => {}
        }
        let during_write = self.writing.load(Ordering::Acquire) > 0;
        let submission =
            Submission { digest, bytes, spans, logs, business, ack, _permit: Some(permit), queued: Instant::now(), during_write };
        metrics::QUEUED_RECORDS.add(submission.rows() as i64);
        if self.queue.send(submission).is_err() {
            self.ledger.lock().expect("ledger lock").in_flight.remove(&digest);
            return Err(unavailable("the writer has stopped"));
        }
        outcome(receiver).await.map(|()| Accepted::Stored)
    }
}

fn unavailable(err: impl std::fmt::Display) -> SinkError {
    SinkError::Unavailable { reason: err.to_string(), retry_after: STORE_RETRY_AFTER }
}

/// A request's identity for recognizing a resend: CityHash128 of its
/// protobuf encoding (the same for every OTLP encoding of the same data)
/// and its source; with the size of that encoding.
fn digest(message: &impl Message, source: &str) -> (u128, usize) {
    let mut bytes = message.encode_to_vec();
    let size = bytes.len();
    bytes.extend_from_slice(source.as_bytes());
    (cityhash_rs::cityhash_102_128(&bytes), size)
}

impl Sink for Pipeline {
    async fn accept_traces(&self, request: ExportTraceServiceRequest, source: String) -> Result<Accepted, SinkError> {
        let extractor = self.extractor.clone();
        let (digest, rows, business) = waybill_collector::work::run(move || {
            let rows = span_rows(&request, &source);
            let business = extractor.spans(&rows);
            (digest(&request, &source), rows, business)
        })
        .await
        .map_err(unavailable)?;
        self.submit(digest, rows, Vec::new(), business).await
    }

    async fn accept_logs(&self, request: ExportLogsServiceRequest, source: String) -> Result<Accepted, SinkError> {
        let extractor = self.extractor.clone();
        let (digest, rows, business) = waybill_collector::work::run(move || {
            let rows = log_rows(&request, &source);
            let business = extractor.logs(&rows);
            (digest(&request, &source), rows, business)
        })
        .await
        .map_err(unavailable)?;
        self.submit(digest, Vec::new(), rows, business).await
    }
}

/// The last acknowledged request digests, oldest forgotten first.
struct RecentDigests {
    order: VecDeque<u128>,
    set: HashSet<u128>,
    capacity: usize,
}

impl RecentDigests {
    fn new(capacity: usize) -> Self {
        RecentDigests { order: VecDeque::new(), set: HashSet::new(), capacity }
    }

    fn contains(&self, digest: u128) -> bool {
        self.set.contains(&digest)
    }

    fn insert(&mut self, digest: u128) {
        if self.capacity == 0 || !self.set.insert(digest) {
            return;
        }
        self.order.push_back(digest);
        if self.order.len() > self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.set.remove(&oldest);
            }
        }
    }
}

/// What the writers share: the queue they take turns gathering from, and
/// how many of them are writing a batch (from gathering it to its INSERTs'
/// end; its clients are answered after).
struct Writers {
    queue: tokio::sync::Mutex<Gathering>,
    writing: Arc<AtomicUsize>,
    /// Signalled whenever a writer's INSERTs of a batch end (before its
    /// clients are answered).
    wrote: tokio::sync::Notify,
}

/// The queue and how long the writer gathering from it lingers now.
struct Gathering {
    queue: mpsc::UnboundedReceiver<Submission>,
    linger: Duration,
    /// The gaps between the last requests' arrivals, oldest first.
    gaps: VecDeque<Duration>,
    last_queued: Option<Instant>,
}

/// How many gaps between arrivals the adaptive linger remembers.
const REMEMBERED_GAPS: usize = 16;

impl Gathering {
    fn new(queue: mpsc::UnboundedReceiver<Submission>) -> Self {
        Gathering { queue, linger: Duration::ZERO, gaps: VecDeque::with_capacity(REMEMBERED_GAPS), last_queued: None }
    }

    fn arrived(&mut self, queued: Instant) {
        if let Some(last) = self.last_queued {
            if self.gaps.len() == REMEMBERED_GAPS {
                self.gaps.pop_front();
            }
            self.gaps.push_back(queued.saturating_duration_since(last));
        }
        self.last_queued = Some(self.last_queued.map_or(queued, |last| last.max(queued)));
    }

    /// How long a lingering batch waits for the next request: twice the
    /// median gap between recent arrivals, at least a 32nd of
    /// `flush_interval`. Exporters that each wait for their answer send
    /// again together, within a moment of each other, and then nothing
    /// comes until their answers: waiting on would only delay them.
    /// Independent exporters keep arriving at their usual pace.
    fn quiet(&self, config: &PipelineConfig) -> Duration {
        let mut gaps: Vec<Duration> = self.gaps.iter().copied().collect();
        let median = if gaps.is_empty() {
            config.flush_interval
        } else {
            let middle = gaps.len() / 2;
            *gaps.select_nth_unstable(middle).1
        };
        (median * 2).max(config.flush_interval / 32)
    }

    /// The adaptive linger after a batch: it grows (doubling from an eighth
    /// of `flush_interval`, up to all of it) while requests arrive during
    /// writes and batches stay under half their bounds, and halves (to none
    /// below that eighth) after a batch none of whose requests did. The
    /// same idea as ClickHouse's adaptive busy timeout for asynchronous
    /// inserts (`async_insert_use_adaptive_busy_timeout`), with the floor at
    /// zero so that a lone exporter, whose next request comes only after
    /// its answer, never waits for company that cannot come.
    fn adapt(&mut self, config: &PipelineConfig, arrived_while_writing: bool, rows: usize, bytes: usize) {
        let step = config.flush_interval / 8;
        if !arrived_while_writing {
            self.linger /= 2;
            if self.linger < step {
                self.linger = Duration::ZERO;
            }
        } else if rows < config.max_batch_rows / 2 && bytes < config.max_batch_bytes / 2 {
            self.linger = (self.linger * 2).max(step).min(config.flush_interval);
        }
    }
}

impl Writers {
    fn new(queue: mpsc::UnboundedReceiver<Submission>) -> Self {
        Writers {
            queue: tokio::sync::Mutex::new(Gathering::new(queue)),
            writing: Arc::new(AtomicUsize::new(0)),
            wrote: tokio::sync::Notify::new(),
        }
    }

    /// Takes what is waiting, as one batch, and counts its writer as
    /// writing. While another batch is being written the next one gathers
    /// until that write ends or the batch is full, so batches grow with
    /// load, and a second batch goes beside the first only when a full one
    /// is waiting. With no write running it lingers for more until its
    /// first request has waited the linger, or, adaptively, until no
    /// request came for the quiet time (`PipelineConfig::adaptive_flush`
    /// says how long those are). `None` once the pipeline is dropped and
    /// everything queued is taken.
    async fn gather(&self, config: &PipelineConfig) -> Option<(Vec<Submission>, usize, usize)> {
        let mut gathering = self.queue.lock().await;
        let first = gathering.queue.recv().await?;
        gathering.arrived(first.queued);
        let linger = if config.adaptive_flush { gathering.linger } else { config.flush_interval };
        let deadline = first.queued + linger;
        let mut rows = first.rows();
        let mut bytes = first.bytes;
        let mut batch = vec![first];
        while rows < config.max_batch_rows && bytes < config.max_batch_bytes {
            let next = match gathering.queue.try_recv() {
                Ok(next) => next,
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {
                    let wrote = self.wrote.notified();
                    tokio::pin!(wrote);
                    // Registered before the check, so a write ending after it wakes us.
                    wrote.as_mut().enable();
                    if self.writing.load(Ordering::Acquire) > 0 {
                        tokio::select! {
                            next = gathering.queue.recv() => match next {
                                Some(next) => next,
                                None => break,
                            },
                            _ = wrote => continue,
                        }
                    } else if linger.is_zero() {
                        break;
                    } else {
                        let until = match (config.adaptive_flush, gathering.last_queued) {
                            (true, Some(last)) => deadline.min(last + gathering.quiet(config)),
                            _ => deadline,
                        };
                        match tokio::time::timeout_at(until, gathering.queue.recv()).await {
                            Ok(Some(next)) => next,
                            Ok(None) | Err(_) => break,
                        }
                    }
                }
            };
            gathering.arrived(next.queued);
            rows += next.rows();
            bytes += next.bytes;
            batch.push(next);
        }
        if config.adaptive_flush {
            let arrived_while_writing = batch.iter().any(|submission| submission.during_write);
            gathering.adapt(config, arrived_while_writing, rows, bytes);
        }
        metrics::LINGER_SECONDS.set(if config.adaptive_flush { gathering.linger } else { linger }.as_secs_f64());
        self.writing.fetch_add(1, Ordering::AcqRel);
        Some((batch, rows, bytes))
    }

    fn wrote_batch(&self) {
        self.writing.fetch_sub(1, Ordering::AcqRel);
        self.wrote.notify_waiters();
    }
}

/// What a submission brings to its batch.
#[derive(Clone, Copy)]
struct Carried {
    spans: bool,
    logs: bool,
    business: bool,
}

impl Carried {
    fn of(submission: &Submission) -> Self {
        Carried { spans: !submission.spans.is_empty(), logs: !submission.logs.is_empty(), business: !submission.business.is_empty() }
    }
}

/// A writer: gathers submissions into batches and writes each batch. The
/// writers take turns gathering from one queue.
async fn write_batches(store: Store, writers: Arc<Writers>, config: PipelineConfig, ledger: Arc<Mutex<Ledger>>, resolver: Option<Notifier>) {
    static BATCH: AtomicU64 = AtomicU64::new(0);
    // Tokens must not repeat across restarts within the dedup window.
    let run = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    while let Some((mut batch, rows, bytes)) = writers.gather(&config).await {
        let token = format!("waybill-{run:x}-{}", BATCH.fetch_add(1, Ordering::Relaxed));
        metrics::BATCH_RECORDS.observe(rows as f64);
        metrics::BATCH_BYTES.observe(bytes as f64);
        let carried: Vec<Carried> = batch.iter().map(Carried::of).collect();
        let spans: Vec<SpanRow> = batch.iter_mut().flat_map(|s| std::mem::take(&mut s.spans)).collect();
        let logs: Vec<LogRow> = batch.iter_mut().flat_map(|s| std::mem::take(&mut s.logs)).collect();
        let business: Vec<BizEventRow> = batch.iter_mut().flat_map(|s| std::mem::take(&mut s.business)).collect();
        // The business events and the raw records go to the engine side by
        // side, each table on its own connection; a trace client's answer
        // depends on its spans and its business events.
        let span = tracing::info_span!("write_batch", requests = batch.len(), rows);
        let (business_result, (spans_result, logs_result)) = async {
            let business_token = format!("{token}-biz");
            let records = async {
                let spans_result = write_table(&store, "otel_traces", &spans, &format!("{token}-spans"), config.retry_for).await;
                let logs_result = write_table(&store, "otel_logs", &logs, &format!("{token}-logs"), config.retry_for).await;
                (spans_result, logs_result)
            };
            tokio::join!(write_table(&store, "biz_events", &business, &business_token, config.retry_for), records)
        }
        .instrument(span)
        .await;
        // Written: requests queued from now on did not arrive during a write.
        writers.wrote_batch();
        if let (Ok(()), Some(resolver)) = (&business_result, &resolver) {
            let traces: BTreeSet<&str> = business.iter().map(|row| row.trace_id.as_str()).collect();
            if !traces.is_empty() {
                // The resolver may have stopped (shutdown); it catches up on start.
                let _ = resolver.send(traces.into_iter().map(str::to_owned).collect());
            }
        }
        metrics::QUEUED_RECORDS.sub(rows as i64);
        let mut ledger = ledger.lock().expect("ledger lock");
        for (submission, carried) in batch.into_iter().zip(carried) {
            // A submission is one request, so one signal: logs, or else spans.
            let records_result = match carried {
                Carried { logs: true, .. } => logs_result.clone(),
                Carried { spans: true, .. } => spans_result.clone(),
                _ => Ok(()),
            };
            let records_stored = records_result.is_ok() && (carried.spans || carried.logs);
            let result = match records_result {
                Ok(()) if carried.business => business_result.clone(),
                records_result => records_result,
            };
            match &result {
                Ok(()) => ledger.stored.insert(submission.digest),
                // Its records are stored: a resend must not store them again.
                // (Failed records need no note: business events are kept
                // once per record however often they are written.)
                Err(_) if records_stored => ledger.records_stored.insert(submission.digest),
                Err(_) => {}
            }
            ledger.in_flight.remove(&submission.digest);
            // Nobody may be waiting any more (the client gave up); that is fine.
            let _ = submission.ack.send(Some(result));
        }
    }
}

/// Writes `rows` to `table`, retrying with the same token until `retry_for` passes.
async fn write_table<T>(store: &Store, table: &'static str, rows: &[T], token: &str, retry_for: Duration) -> Result<(), SinkError>
where
    T: clickhouse::RowOwned + clickhouse::RowWrite,
{
    if rows.is_empty() {
        return Ok(());
    }
    let give_up = Instant::now() + retry_for;
    let mut delay = Duration::from_millis(100);
    loop {
        if timed_insert(store, table, rows, token).await {
            return Ok(());
        }
        if Instant::now() + delay > give_up {
            return Err(unavailable(format!("the store did not take the {table} batch")));
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

/// One INSERT, measured; whether it was stored.
async fn timed_insert<T>(store: &Store, table: &'static str, rows: &[T], token: &str) -> bool
where
    T: clickhouse::RowOwned + clickhouse::RowWrite,
{
    let timer = metrics::INSERT_SECONDS.with_label_values(&[table]).start_timer();
    match store.insert_once(table, rows, Some(token)).await {
        Ok(()) => {
            timer.observe_duration();
            true
        }
        Err(err) => {
            timer.stop_and_discard();
            metrics::FAILED_INSERTS.with_label_values(&[table]).inc();
            tracing::warn!(error = %err, table, rows = rows.len(), "batch not written; retrying");
            false
        }
    }
}

/// Lowercase hex of an id; empty when the id is empty or all zero bytes.
fn hex_id(bytes: &[u8]) -> String {
    if bytes.iter().all(|&b| b == 0) {
        return String::new();
    }
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut hex = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        hex.push(DIGITS[usize::from(b >> 4)] as char);
        hex.push(DIGITS[usize::from(b & 15)] as char);
    }
    hex
}

/// The exporter's `SpanKindStr` / pdata `SpanKind.String()`.
fn span_kind(kind: i32) -> &'static str {
    match kind {
        1 => "Internal",
        2 => "Server",
        3 => "Client",
        4 => "Producer",
        5 => "Consumer",
        0 => "Unspecified",
        // The exporter writes an empty string for kinds it does not know.
        _ => "",
    }
}

fn status_code(code: i32) -> &'static str {
    match code {
        0 => "Unset",
        1 => "Ok",
        2 => "Error",
        _ => "",
    }
}

/// pdata's `Value.AsString`: strings as they are, numbers and bools in
/// JSON's spelling, bytes as base64, arrays and maps as JSON.
fn value_string(value: Option<&AnyValue>) -> String {
    use any_value::Value;
    match value.and_then(|v| v.value.as_ref()) {
        None => String::new(),
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => float_string(*d),
        Some(Value::BytesValue(bytes)) => base64(bytes),
        Some(Value::ArrayValue(_)) | Some(Value::KvlistValue(_)) => raw_json(value).to_string(),
        Some(Value::StringValueStrindex(_)) => String::new(),
    }
}

/// A value as pdata's `AsRaw` would marshal it to JSON (map keys sorted).
fn raw_json(value: Option<&AnyValue>) -> serde_json::Value {
    use any_value::Value;
    match value.and_then(|v| v.value.as_ref()) {
        None | Some(Value::StringValueStrindex(_)) => serde_json::Value::Null,
        Some(Value::StringValue(s)) => s.clone().into(),
        Some(Value::BoolValue(b)) => (*b).into(),
        Some(Value::IntValue(i)) => (*i).into(),
        Some(Value::DoubleValue(d)) => serde_json::Number::from_f64(*d).map_or(serde_json::Value::Null, Into::into),
        Some(Value::BytesValue(bytes)) => base64(bytes).into(),
        Some(Value::ArrayValue(array)) => array.values.iter().map(|v| raw_json(Some(v))).collect(),
        Some(Value::KvlistValue(list)) => list
            .values
            .iter()
            .map(|kv| (kv.key.clone(), raw_json(kv.value.as_ref())))
            .collect::<BTreeMap<_, _>>()
            .into_iter()
            .collect(),
    }
}

/// Go's JSON float spelling (ES6 number to string), as pdata uses it.
fn float_string(f: f64) -> String {
    if !f.is_finite() {
        let go = if f.is_nan() { "NaN" } else if f > 0.0 { "+Inf" } else { "-Inf" };
        return format!("json: unsupported value: {go}");
    }
    let abs = f.abs();
    if abs != 0.0 && !(1e-6..1e21).contains(&abs) {
        let text = format!("{f:e}");
        // Rust writes 1e21 and 1e-7; Go writes 1e+21 and 1e-7.
        match text.split_once('e') {
            Some((mantissa, exponent)) if !exponent.starts_with('-') => format!("{mantissa}e+{exponent}"),
            _ => text,
        }
    } else {
        format!("{f}")
    }
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, &b)| acc | (u32::from(b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn attributes(list: &[KeyValue]) -> Vec<(String, String)> {
    list.iter().map(|kv| (kv.key.clone(), value_string(kv.value.as_ref()))).collect()
}

/// `service.name` of a resource, when it is a string.
fn service_name(attributes: &[KeyValue]) -> String {
    attributes
        .iter()
        .find(|kv| kv.key == "service.name")
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some(s.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

fn nanos(unix_nano: u64) -> i64 {
    i64::try_from(unix_nano).unwrap_or(i64::MAX)
}

/// One row per span.
pub fn span_rows(request: &ExportTraceServiceRequest, source: &str) -> Vec<SpanRow> {
    let spans = request.resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum();
    let mut rows = Vec::with_capacity(spans);
    for resource_spans in &request.resource_spans {
        let resource = resource_spans.resource.as_ref().map(|r| r.attributes.as_slice()).unwrap_or_default();
        let resource_attributes = attributes(resource);
        let service = service_name(resource);
        for scope_spans in &resource_spans.scope_spans {
            let (scope_name, scope_version) = scope_spans
                .scope
                .as_ref()
                .map(|s| (s.name.clone(), s.version.clone()))
                .unwrap_or_default();
            for span in &scope_spans.spans {
                let status = span.status.as_ref();
                rows.push(SpanRow {
                    timestamp_ns: nanos(span.start_time_unix_nano),
                    trace_id: hex_id(&span.trace_id),
                    span_id: hex_id(&span.span_id),
                    parent_span_id: hex_id(&span.parent_span_id),
                    trace_state: span.trace_state.clone(),
                    span_name: span.name.clone(),
                    span_kind: span_kind(span.kind).to_owned(),
                    service_name: service.clone(),
                    resource_attributes: resource_attributes.clone(),
                    scope_name: scope_name.clone(),
                    scope_version: scope_version.clone(),
                    span_attributes: attributes(&span.attributes),
                    duration_ns: span.end_time_unix_nano.saturating_sub(span.start_time_unix_nano),
                    status_code: status_code(status.map_or(0, |s| s.code)).to_owned(),
                    status_message: status.map(|s| s.message.clone()).unwrap_or_default(),
                    events_timestamp_ns: span.events.iter().map(|e| nanos(e.time_unix_nano)).collect(),
                    events_name: span.events.iter().map(|e| e.name.clone()).collect(),
                    events_attributes: span.events.iter().map(|e| attributes(&e.attributes)).collect(),
                    links_trace_id: span.links.iter().map(|l| hex_id(&l.trace_id)).collect(),
                    links_span_id: span.links.iter().map(|l| hex_id(&l.span_id)).collect(),
                    links_trace_state: span.links.iter().map(|l| l.trace_state.clone()).collect(),
                    links_attributes: span.links.iter().map(|l| attributes(&l.attributes)).collect(),
                    source: source.to_owned(),
                });
            }
        }
    }
    rows
}

/// One row per log record; the observed time stands in for a missing time.
pub fn log_rows(request: &ExportLogsServiceRequest, source: &str) -> Vec<LogRow> {
    let mut rows = Vec::new();
    for resource_logs in &request.resource_logs {
        let resource = resource_logs.resource.as_ref().map(|r| r.attributes.as_slice()).unwrap_or_default();
        let resource_attributes = attributes(resource);
        let service = service_name(resource);
        for scope_logs in &resource_logs.scope_logs {
            let scope = scope_logs.scope.as_ref();
            for record in &scope_logs.log_records {
                let time = if record.time_unix_nano == 0 { record.observed_time_unix_nano } else { record.time_unix_nano };
                rows.push(LogRow {
                    timestamp_ns: nanos(time),
                    trace_id: hex_id(&record.trace_id),
                    span_id: hex_id(&record.span_id),
                    trace_flags: (record.flags & 0xff) as u8,
                    severity_text: record.severity_text.clone(),
                    // The exporter converts with Go's uint8(), which wraps.
                    severity_number: record.severity_number as u8,
                    service_name: service.clone(),
                    body: value_string(record.body.as_ref()),
                    resource_schema_url: resource_logs.schema_url.clone(),
                    resource_attributes: resource_attributes.clone(),
                    scope_schema_url: scope_logs.schema_url.clone(),
                    scope_name: scope.map(|s| s.name.clone()).unwrap_or_default(),
                    scope_version: scope.map(|s| s.version.clone()).unwrap_or_default(),
                    scope_attributes: scope.map(|s| attributes(&s.attributes)).unwrap_or_default(),
                    log_attributes: attributes(&record.attributes),
                    source: source.to_owned(),
                });
            }
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{ArrayValue as Array, KeyValueList};

    fn any(value: any_value::Value) -> AnyValue {
        AnyValue { value: Some(value) }
    }

    fn submission(spans: usize) -> Submission {
        Submission {
            digest: 0,
            bytes: spans * 100,
            spans: vec![SpanRow::default(); spans],
            logs: Vec::new(),
            business: Vec::new(),
            ack: watch::channel(None).0,
            _permit: None,
            queued: Instant::now(),
            during_write: false,
        }
    }

    fn queued_during_a_write(spans: usize) -> Submission {
        Submission { during_write: true, ..submission(spans) }
    }

    fn writers() -> (mpsc::UnboundedSender<Submission>, Arc<Writers>) {
        let (queue, receiver) = mpsc::unbounded_channel();
        (queue, Arc::new(Writers::new(receiver)))
    }

    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_batch_gathers_while_another_is_written_and_goes_when_that_write_ends() {
        let config = PipelineConfig { max_batch_rows: 100, ..PipelineConfig::default() };
        let (queue, writers) = writers();
        let first = writers.gather(&config);
        queue.send(submission(10)).ok().unwrap();
        let (batch, rows, _) = first.await.unwrap();
        assert_eq!((batch.len(), rows), (1, 10), "with no write running, what waits goes at once");

        queue.send(submission(10)).ok().unwrap();
        let next = tokio::spawn({
            let (writers, config) = (writers.clone(), config);
            async move { writers.gather(&config).await.map(|(batch, rows, _)| (batch.len(), rows)) }
        });
        settle().await;
        assert!(!next.is_finished(), "the next batch waits while one is written");
        queue.send(submission(20)).ok().unwrap();
        settle().await;
        assert!(!next.is_finished());
        writers.wrote_batch();
        assert_eq!(next.await.unwrap(), Some((2, 30)), "it goes with all that gathered once the write ends");
        assert_eq!(writers.writing.load(Ordering::Acquire), 1);
    }

    #[tokio::test]
    async fn a_full_batch_goes_beside_the_one_being_written() {
        let config = PipelineConfig { max_batch_rows: 100, ..PipelineConfig::default() };
        let (queue, writers) = writers();
        writers.writing.store(1, Ordering::Release);
        for _ in 0..4 {
            queue.send(submission(30)).ok().unwrap();
        }
        let (batch, rows, _) = writers.gather(&config).await.unwrap();
        assert_eq!((batch.len(), rows), (4, 120));
        assert_eq!(writers.writing.load(Ordering::Acquire), 2, "two batches are being written");
    }

    /// Far longer than any test waits: a batch that lingers is ended by its row bound.
    const LONG: Duration = Duration::from_secs(600);

    fn adaptive() -> PipelineConfig {
        PipelineConfig { max_batch_rows: 100, flush_interval: LONG, adaptive_flush: true, ..PipelineConfig::default() }
    }

    async fn linger(writers: &Writers) -> Duration {
        writers.queue.lock().await.linger
    }

    /// Gathers with a 10-row request arriving once the writer waits for it,
    /// as an exporter's request does when the writer is idle. Returns the
    /// batch's requests, or `None` if it still lingered once settled (then
    /// a 100-row request ends it).
    async fn gather_arriving(queue: &mpsc::UnboundedSender<Submission>, writers: &Arc<Writers>) -> Option<usize> {
        gather_arriving_with(adaptive(), queue, writers).await
    }

    async fn gather_arriving_with(config: PipelineConfig, queue: &mpsc::UnboundedSender<Submission>, writers: &Arc<Writers>) -> Option<usize> {
        let next = tokio::spawn({
            let writers = writers.clone();
            async move { writers.gather(&config).await.map(|(batch, _, _)| batch.len()) }
        });
        settle().await;
        queue.send(submission(10)).ok().unwrap();
        settle().await;
        let gathered = if next.is_finished() {
            Some(next.await.unwrap().unwrap())
        } else {
            queue.send(submission(100)).ok().unwrap();
            assert_eq!(next.await.unwrap(), Some(2), "the row bound ends a lingering batch");
            None
        };
        writers.wrote_batch();
        gathered
    }

    #[tokio::test]
    async fn an_exporter_sending_alone_one_request_at_a_time_stops_the_linger_within_four_batches() {
        let (queue, writers) = writers();
        // Grown by others who have stopped sending.
        writers.queue.lock().await.linger = LONG;
        for expected in [LONG / 2, LONG / 4, LONG / 8, Duration::ZERO] {
            assert_eq!(gather_arriving(&queue, &writers).await, None, "a grown linger holds the batch");
            assert_eq!(linger(&writers).await, expected);
        }
        for _ in 0..5 {
            assert_eq!(gather_arriving(&queue, &writers).await, Some(1), "then each request goes at once");
        }
        assert_eq!(linger(&writers).await, Duration::ZERO);
    }

    #[tokio::test]
    async fn a_fixed_linger_holds_every_batch() {
        let (queue, writers) = writers();
        let fixed = PipelineConfig { adaptive_flush: false, ..adaptive() };
        for _ in 0..3 {
            assert_eq!(gather_arriving_with(fixed, &queue, &writers).await, None, "the batch lingers");
        }
    }

    #[test]
    fn the_linger_grows_while_requests_arrive_during_writes_and_halves_when_they_stop() {
        let config = adaptive();
        let mut gathering = Gathering::new(mpsc::unbounded_channel().1);
        let mut lingers = Vec::new();
        for _ in 0..5 {
            gathering.adapt(&config, true, 10, 1000);
            lingers.push(gathering.linger);
        }
        assert_eq!(lingers, [LONG / 8, LONG / 4, LONG / 2, LONG, LONG]);
        gathering.adapt(&config, true, 50, 1000);
        assert_eq!(gathering.linger, LONG, "a batch half full neither grows nor shortens it");
        lingers.clear();
        for _ in 0..5 {
            gathering.adapt(&config, false, 10, 1000);
            lingers.push(gathering.linger);
        }
        assert_eq!(lingers, [LONG / 2, LONG / 4, LONG / 8, Duration::ZERO, Duration::ZERO], "none below an eighth");
    }

    #[test]
    fn a_lingering_batch_waits_twice_the_median_gap_between_arrivals_for_the_next() {
        let config = PipelineConfig { flush_interval: Duration::from_millis(320), ..adaptive() };
        let mut gathering = Gathering::new(mpsc::unbounded_channel().1);
        assert_eq!(gathering.quiet(&config), Duration::from_millis(640), "with nothing seen yet, the linger decides");
        let start = Instant::now();
        let ms = Duration::from_millis;
        // Exporters that wait for their answers: a burst, then a write's time of nothing.
        for at in [0, 1, 2, 3, 40, 41, 42, 43] {
            gathering.arrived(start + ms(at));
        }
        assert_eq!(gathering.quiet(&config), ms(10), "twice 1 ms, raised to a 32nd of the flush interval");
        // Independent exporters, each at its own pace.
        for at in [60, 90, 110, 140, 165, 185, 215, 240, 270, 290, 315, 340, 370, 390, 415, 440] {
            gathering.arrived(start + ms(at));
        }
        assert_eq!(gathering.quiet(&config), ms(50));
        // A request queued before one received earlier counts as no gap.
        gathering.arrived(start + ms(430));
        assert_eq!(gathering.gaps.back(), Some(&Duration::ZERO));
        assert_eq!(gathering.last_queued, Some(start + ms(440)));
    }

    #[tokio::test]
    async fn a_lingering_batch_goes_once_no_request_came_for_the_quiet_time() {
        let (queue, writers) = writers();
        // Requests so far came together; the linger alone would hold the batch for 600 s.
        let config = PipelineConfig { flush_interval: Duration::from_millis(32), ..adaptive() };
        writers.queue.lock().await.linger = LONG;
        for _ in 0..3 {
            queue.send(submission(10)).ok().unwrap();
        }
        let gathered = tokio::time::timeout(Duration::from_secs(60), writers.gather(&config)).await;
        let (batch, _, _) = gathered.expect("the batch waited out its linger although nothing came").unwrap();
        assert_eq!(batch.len(), 3);
    }

    #[tokio::test]
    async fn a_request_queued_during_a_write_makes_the_next_batch_linger() {
        let (queue, writers) = writers();
        queue.send(submission(10)).ok().unwrap();
        writers.gather(&adaptive()).await.unwrap();
        writers.wrote_batch();
        assert_eq!(linger(&writers).await, Duration::ZERO, "a request queued while no batch was written");
        queue.send(queued_during_a_write(10)).ok().unwrap();
        let (batch, _, _) = writers.gather(&adaptive()).await.unwrap();
        assert_eq!(batch.len(), 1, "what waits goes at once");
        writers.wrote_batch();
        assert_eq!(linger(&writers).await, LONG / 8);
        assert_eq!(gather_arriving(&queue, &writers).await, None, "the next batch lingers for more");
        assert_eq!(linger(&writers).await, Duration::ZERO, "and its request came to an idle writer");
        assert_eq!(gather_arriving(&queue, &writers).await, Some(1));
    }

    #[tokio::test]
    async fn batches_already_half_full_do_not_make_the_writer_linger() {
        let (queue, writers) = writers();
        for _ in 0..3 {
            queue.send(queued_during_a_write(60)).ok().unwrap();
            let (batch, rows, _) = writers.gather(&adaptive()).await.unwrap();
            assert_eq!((batch.len(), rows), (1, 60));
            writers.wrote_batch();
        }
        assert_eq!(linger(&writers).await, Duration::ZERO);
    }

    #[test]
    fn values_are_spelled_as_pdata_as_string() {
        use any_value::Value::*;
        assert_eq!(value_string(Some(&any(StringValue("PO-1001".into())))), "PO-1001");
        assert_eq!(value_string(Some(&any(IntValue(-42)))), "-42");
        assert_eq!(value_string(Some(&any(BoolValue(true)))), "true");
        assert_eq!(value_string(Some(&any(DoubleValue(1.5)))), "1.5");
        assert_eq!(value_string(Some(&any(DoubleValue(100.0)))), "100");
        assert_eq!(value_string(Some(&any(DoubleValue(1e21)))), "1e+21");
        assert_eq!(value_string(Some(&any(DoubleValue(1e-7)))), "1e-7");
        assert_eq!(value_string(Some(&any(DoubleValue(f64::NAN)))), "json: unsupported value: NaN");
        assert_eq!(value_string(Some(&any(BytesValue(b"any carnal pleas".to_vec())))), "YW55IGNhcm5hbCBwbGVhcw==");
        assert_eq!(value_string(Some(&any(BytesValue(b"ab".to_vec())))), "YWI=");
        let array = Array { values: vec![any(IntValue(1)), any(StringValue("x".into()))] };
        assert_eq!(value_string(Some(&any(ArrayValue(array)))), r#"[1,"x"]"#);
        let map = KeyValueList {
            values: vec![
                KeyValue { key: "z".into(), value: Some(any(BoolValue(false))), ..Default::default() },
                KeyValue { key: "a".into(), value: Some(any(DoubleValue(2.5))), ..Default::default() },
            ],
        };
        assert_eq!(value_string(Some(&any(KvlistValue(map)))), r#"{"a":2.5,"z":false}"#);
        assert_eq!(value_string(None), "");
    }

    #[tokio::test]
    async fn a_writer_that_panics_ends_the_writers_task_at_once_and_stops_the_others() {
        let (_still_writing, writing) = tokio::sync::oneshot::channel::<()>();
        let (aborted_tx, aborted) = tokio::sync::oneshot::channel::<()>();
        let mut writers = tokio::task::JoinSet::new();
        writers.spawn(async move {
            // Dropped, closing `aborted`, only when this writer is stopped.
            let _aborted_tx = aborted_tx;
            let _ = writing.await;
        });
        writers.spawn(async { panic!("a writer's bug") });
        let ended = tokio::time::timeout(Duration::from_secs(10), tokio::spawn(until_one_fails(writers)))
            .await
            .expect("the task ends without waiting for the writer still writing");
        assert!(ended.expect_err("the panic fails the task").is_panic());
        let stopped = tokio::time::timeout(Duration::from_secs(10), aborted).await.expect("the writer still writing is stopped");
        assert!(stopped.is_err(), "it is stopped, not finished");
    }

    #[tokio::test]
    async fn writers_that_end_normally_end_the_writers_task_normally() {
        let mut writers = tokio::task::JoinSet::new();
        writers.spawn(async {});
        writers.spawn(tokio::time::sleep(Duration::from_millis(10)));
        tokio::spawn(until_one_fails(writers)).await.expect("no writer panicked");
    }

    #[test]
    fn recent_digests_forget_the_oldest_first() {
        let mut recent = RecentDigests::new(2);
        recent.insert(1);
        recent.insert(2);
        recent.insert(2);
        assert!(recent.contains(1) && recent.contains(2));
        recent.insert(3);
        assert!(!recent.contains(1) && recent.contains(2) && recent.contains(3));
    }

    #[test]
    fn ids_are_lowercase_hex_and_empty_when_zero() {
        assert_eq!(hex_id(&[0xAB, 0x01]), "ab01");
        assert_eq!(hex_id(&[0x01, 0x23, 0x45, 0x67, 0x89, 0xAB, 0xCD, 0xEF]), "0123456789abcdef");
        assert_eq!(hex_id(&[0; 8]), "");
        assert_eq!(hex_id(&[]), "");
        assert_eq!(span_kind(2), "Server");
        assert_eq!(status_code(2), "Error");
    }
}
