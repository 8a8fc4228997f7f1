//! `waybill serve`: opens the store, migrates it (retrying while a server is
//! unreachable), serves the web port (health, metrics, the lineage and
//! alerts APIs), the OTLP receivers and the optional SQL endpoint, runs the
//! lineage resolver and the alert evaluator (SIGHUP reloads the rules), and
//! on SIGTERM or Ctrl-C stops accepting, finishes requests (each
//! acknowledged only once written), lets the resolver see the last batches
//! and closes the store.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;
use waybill_collector::http::HttpLimits;
use waybill_store::http_interface::{self, Access};
use waybill_lineage::Resolver;
use waybill_store::Store;

use crate::config::Config;
use crate::pipeline::Pipeline;

/// What the web handlers share.
#[derive(Clone)]
struct AppState {
    store: Store,
    migrated: Arc<AtomicBool>,
    alerts: waybill_alerts::Alerts,
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    let store = Store::open(&config.store).await.context("cannot open the store")?;
    let migrated = Arc::new(AtomicBool::new(false));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);

    let (schema_ready, schema_ready_rx) = watch::channel(false);
    let migration = tokio::spawn(migrate_until_done(store.clone(), migrated.clone(), schema_ready, shutdown_rx.clone()));

    let alerts = waybill_alerts::Alerts::new(store.clone(), config.alerts.clone()).map_err(anyhow::Error::msg)?;
    let state = AppState { store: store.clone(), migrated, alerts: alerts.clone() };
    waybill_collector::metrics::register();
    crate::pipeline::register_metrics();
    waybill_lineage::resolve::register_metrics();
    waybill_alerts::evaluator::register_metrics();
    // People wait on pages and the JSON API: their queries go first.
    let dashboards = waybill_dashboards::Dashboards::new(store.interactive(), alerts.clone(), config.dashboards.clone()).map_err(anyhow::Error::msg)?;
    // Pages and the JSON API sit behind sign-in; health and metrics do not.
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
        .merge(dashboards.app());
    let listener = TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("cannot listen on {} (http.listen)", config.http.listen))?;
    tracing::info!(address = %listener.local_addr()?, "web server listening (/healthz, /readyz, /metrics, /api/v1/...)");
    let mut servers = Servers::new();
    servers.spawn("web server", serve_until(listener, app, shutdown_rx.clone()));

    let limits = HttpLimits {
        max_body_bytes: config.otlp.max_body_bytes,
        max_decompressed_bytes: config.otlp.max_decompressed_bytes,
        attributes: config.otlp.attribute_limits(),
    };
    // The resolver outlives the writer, so it sees the last batches too.
    // It runs apart at a lower priority, with a store of its own (the
    // same engine or server).
    let resolver_store = Store::open(&config.store).await.context("cannot open the store for the lineage resolver")?;
    let resolver = Resolver::new(resolver_store, config.lineage.clone()).map_err(anyhow::Error::msg)?;
    let (notifier, notifications) = tokio::sync::mpsc::unbounded_channel();
    let (resolver_stop, resolver_stopped) = watch::channel(false);
    // It starts once the schema is ready, since migrating may rebuild a
    // table it writes; the pipeline's notices wait for it meanwhile.
    let resolver = tokio::spawn(async move {
        let mut ready = schema_ready_rx;
        let mut stop = resolver_stopped.clone();
        // A migration that gives up (a schema too new) never readies it.
        let ready = tokio::select! {
            ready = ready.wait_for(|ready| *ready) => ready.is_ok(),
            _ = stop.wait_for(|stop| *stop) => false,
        };
        if !ready {
            return Ok(());
        }
        match resolver.run_apart(notifications, resolver_stopped) {
            Ok(running) => running.await,
            Err(err) => {
                tracing::error!(error = %err, "the lineage resolver could not start");
                Err(format!("the lineage resolver could not start: {err}"))
            }
        }
    });
    let extractor = waybill_lineage::Extractor::new(&config.lineage);
    give_back_freed_memory();
    let (sink, writer) = Pipeline::start(store.clone(), config.pipeline.settings(), extractor, Some(notifier));
    servers.spawn("alert evaluator", {
        let alerts = alerts.clone();
        let shutdown = shutdown_rx.clone();
        async move {
            alerts.run(shutdown).await;
            Ok(())
        }
    });
    #[cfg(unix)]
    servers.spawn("SIGHUP handler", reload_on_sighup(alerts.clone(), shutdown_rx.clone()));
    let sources = config.otlp.sources();
    // One memory budget for both receivers.
    let admission = waybill_collector::admission::Admission::new(config.otlp.max_inflight_bytes);
    let otlp = waybill_collector::http::router(sink.clone(), limits, sources.clone(), admission.clone());
    let listener = TcpListener::bind(config.otlp.http_listen)
        .await
        .with_context(|| format!("cannot listen on {} (otlp.http_listen)", config.otlp.http_listen))?;
    tracing::info!(address = %listener.local_addr()?, "OTLP/HTTP receiver listening (/v1/traces, /v1/logs)");
    servers.spawn("OTLP/HTTP receiver", serve_until(listener, otlp, shutdown_rx.clone()));

    let listener = TcpListener::bind(config.otlp.grpc_listen)
        .await
        .with_context(|| format!("cannot listen on {} (otlp.grpc_listen)", config.otlp.grpc_listen))?;
    tracing::info!(address = %listener.local_addr()?, "OTLP/gRPC receiver listening");
    let mut grpc_shutdown = shutdown_rx.clone();
    let max_message_bytes = config.otlp.max_decompressed_bytes;
    let grpc_sink = sink.clone();
    servers.spawn("OTLP/gRPC receiver", async move {
        let shutdown = async move {
            let _ = grpc_shutdown.wait_for(|stop| *stop).await;
        };
        waybill_collector::grpc::serve(listener, grpc_sink, max_message_bytes, limits.attributes, sources, admission, shutdown).await.context("OTLP/gRPC receiver failed")
    });

    if config.sql_endpoint.enabled {
        let engine = store.engine().cloned().context("the SQL endpoint needs the embedded store")?;
        let token = config.sql_endpoint.token.clone().unwrap_or_default();
        let router = http_interface::router(engine, Access::ReadOnly { token });
        let listener = TcpListener::bind(config.sql_endpoint.listen)
            .await
            .with_context(|| format!("cannot listen on {} (sql_endpoint.listen)", config.sql_endpoint.listen))?;
        tracing::info!(address = %listener.local_addr()?, "read-only ClickHouse HTTP endpoint listening");
        servers.spawn("SQL endpoint", serve_until(listener, router, shutdown_rx.clone()));
    }

    // Runs until asked to stop, or until a server, the writer or the
    // resolver stops by itself: then the service is not whole (requests
    // would get 503 until a restart, or lineage would go stale), so it
    // stops cleanly and says why.
    let (mut writer, mut resolver) = (writer, resolver);
    let (mut writer_ended, mut resolver_ended) = (None, None);
    let mut first_error = tokio::select! {
        () = shutdown_signal() => None,
        name = servers.first_stopped() => {
            tracing::error!(server = name, "stopped unexpectedly; shutting down");
            Some(anyhow::anyhow!("the {name} stopped unexpectedly"))
        }
        ended = &mut writer => {
            tracing::error!("the ingest writer stopped unexpectedly; shutting down");
            writer_ended = Some(ended);
            Some(anyhow::anyhow!("the ingest writer stopped unexpectedly"))
        }
        ended = &mut resolver => {
            tracing::error!("the lineage resolver stopped unexpectedly; shutting down");
            resolver_ended = Some(ended);
            Some(anyhow::anyhow!("the lineage resolver stopped unexpectedly"))
        }
    };
    tracing::info!("shutting down: finishing requests");
    let _ = shutdown_tx.send(true);
    // Wait for every server, even if one failed, so nothing is cut short.
    for result in servers.join().await {
        if let Err(err) = result {
            tracing::error!(error = %format!("{err:#}"), "server stopped with an error");
            first_error = Some(first_error.unwrap_or(err));
        }
    }
    // The receivers are gone; the writer stores what is queued, then ends.
    drop(sink);
    let written = match writer_ended {
        Some(ended) => ended,
        None => writer.await,
    };
    let _ = resolver_stop.send(true);
    let resolved = match resolver_ended {
        Some(ended) => ended,
        None => resolver.await,
    };
    let ended = [
        written.context("the ingest writer failed"),
        resolved.context("the lineage resolver task failed").and_then(|resolved| resolved.map_err(anyhow::Error::msg)),
    ];
    for err in ended.into_iter().filter_map(Result::err) {
        tracing::error!(error = %format!("{err:#}"), "stopped with an error");
        first_error = Some(first_error.unwrap_or(err));
    }
    migration.abort();
    store.close().await;
    tracing::info!("stopped");
    first_error.map_or(Ok(()), Err)
}

/// The service's servers: each runs until shutdown, and one that ends
/// before it is reported.
struct Servers {
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
    stopped_tx: tokio::sync::mpsc::UnboundedSender<&'static str>,
    stopped: tokio::sync::mpsc::UnboundedReceiver<&'static str>,
}

impl Servers {
    fn new() -> Self {
        let (stopped_tx, stopped) = tokio::sync::mpsc::unbounded_channel();
        Servers { tasks: Vec::new(), stopped_tx, stopped }
    }

    fn spawn(&mut self, name: &'static str, server: impl Future<Output = anyhow::Result<()>> + Send + 'static) {
        let stopped = self.stopped_tx.clone();
        self.tasks.push(tokio::spawn(async move {
            let result = server.await;
            let _ = stopped.send(name);
            result.with_context(|| format!("{name} failed"))
        }));
    }

    /// The name of the first server to end.
    async fn first_stopped(&mut self) -> &'static str {
        self.stopped.recv().await.unwrap_or("server")
    }

    /// Waits for every server and returns how each ended.
    async fn join(self) -> Vec<anyhow::Result<()>> {
        let mut results = Vec::new();
        for task in self.tasks {
            results.push(task.await.context("a server task panicked").and_then(|served| served));
        }
        results
    }
}

async fn serve_until(listener: TcpListener, app: Router, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        })
        .await
        .context("web server failed")
}

/// Migrates, retrying with backoff while the store cannot be reached; a
/// schema newer than this build is fatal to readiness and says so.
async fn migrate_until_done(store: Store, migrated: Arc<AtomicBool>, ready: watch::Sender<bool>, mut shutdown: watch::Receiver<bool>) {
    let mut delay = Duration::from_millis(500);
    loop {
        match store.migrate().await {
            Ok(report) => {
                tracing::info!(version = report.version, applied = ?report.applied, rebuilt = ?report.rebuilt, "schema ready");
                migrated.store(true, Ordering::SeqCst);
                let _ = ready.send(true);
                return;
            }
            Err(err @ waybill_store::StoreError::SchemaTooNew { .. }) => {
                tracing::error!(error = %err, "not ready");
                return;
            }
            Err(err) => tracing::warn!(error = %err, retry_in = ?delay, "migration failed; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

/// Prometheus text exposition of the process's metrics and the SLIs of
/// the alert rules (whose labels vary by rule, so they are written apart).
async fn metrics(State(state): State<AppState>) -> ([(axum::http::HeaderName, &'static str); 1], Vec<u8>) {
    let mut body = Vec::new();
    let encoder = prometheus::TextEncoder::new();
    if let Err(err) = prometheus::Encoder::encode(&encoder, &prometheus::gather(), &mut body) {
        tracing::warn!(error = %err, "metrics could not be encoded");
    }
    body.extend_from_slice(state.alerts.exposition().as_bytes());
    ([(axum::http::header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], body)
}

/// Reloads the alert rules on every SIGHUP until shutdown.
#[cfg(unix)]
async fn reload_on_sighup(alerts: waybill_alerts::Alerts, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).context("cannot listen for SIGHUP")?;
    loop {
        tokio::select! {
            _ = hangups.recv() => {
                tracing::info!("SIGHUP: reloading the alert rules");
                alerts.reload();
            }
            _ = shutdown.wait_for(|stop| *stop) => return Ok(()),
        }
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready when the schema is migrated and the store answers now.
async fn readyz(State(state): State<AppState>) -> (StatusCode, String) {
    if !state.migrated.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "not ready: schema not migrated yet\n".into());
    }
    match state.store.ping(Duration::from_secs(2)).await {
        Ok(()) => (StatusCode::OK, "ready\n".into()),
        Err(err) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {err}\n")),
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}

/// glibc keeps memory freed by decoded requests and written batches in its
/// arenas instead of returning it, so resident memory would climb over a
/// long overload while the live heap does not. A thread hands it back
/// every 2 s, and each time puts the process's memory on `/metrics`.
fn give_back_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let gauge = |name: &str, help: &str| prometheus::register_int_gauge!(name, help).expect("metric registers once");
        let resident = gauge("waybill_resident_memory_bytes", "Resident memory of the process, the embedded engine included (every 2 s)");
        // The embedded engine allocates with its own jemalloc, not through glibc.
        let heap = gauge("waybill_heap_in_use_bytes", "Bytes handed out by glibc's malloc and not freed: Waybill's own heap, not the engine's (every 2 s)");
        if let Err(err) = std::thread::Builder::new().name("memory-trim".into()).spawn(move || loop {
            // SAFETY: malloc_trim takes the arenas' locks itself and only
            // returns free pages; mallinfo2 only reads the arenas' counters.
            let info = unsafe {
                libc::malloc_trim(0);
                libc::mallinfo2()
            };
            heap.set((info.uordblks + info.hblkhd) as i64);
            if let Some(bytes) = resident_bytes() {
                resident.set(bytes as i64);
            }
            std::thread::sleep(Duration::from_secs(2));
        }) {
            tracing::warn!(error = %err, "freed memory will not be handed back nor the memory gauges updated");
        }
    }
}

/// The process's resident memory, from /proc/self/statm (in pages).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page_size).ok()?)
}
