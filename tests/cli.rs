//! The `waybill` binary as an operator runs it: config errors, a missing
//! engine, `migrate`, and `serve` with health checks and graceful shutdown.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::process::{free_port, text, wait_for_status, waybill, work_dir, Running};

#[test]
fn a_missing_engine_library_says_how_to_fetch_it() {
    let dir = work_dir("missing-library");
    let output = waybill(&dir).arg("migrate").env("WAYBILL_STORE__EMBEDDED__LIBRARY", "/nonexistent/libchdb.so").output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let text = text(&output);
    assert!(text.contains("/nonexistent/libchdb.so") && text.contains("scripts/fetch-engine.sh"), "{text}");
}

#[test]
fn config_mistakes_are_reported_with_the_setting_to_fix() {
    let dir = work_dir("config");
    std::fs::write(dir.join("waybill.yaml"), "store:\n  mode: embedded\n  retention_days: 0\n").unwrap();
    let output = waybill(&dir).args(["--config", "waybill.yaml", "check-config"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output).contains("store.retention_days must be between 1 and 36500"), "{}", text(&output));

    std::fs::write(dir.join("typo.yaml"), "stor:\n  mode: embedded\n").unwrap();
    let output = waybill(&dir).args(["--config", "typo.yaml", "check-config"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output).contains("unknown field `stor`"), "{}", text(&output));

    let output = waybill(&dir).arg("check-config").env("WAYBILL_STORE__MODE", "cloud").output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output).contains("WAYBILL_STORE__MODE"), "{}", text(&output));

    let output = waybill(&dir)
        .arg("check-config")
        .env("WAYBILL_SQL_ENDPOINT__ENABLED", "true")
        .env("WAYBILL_SQL_ENDPOINT__TOKEN", "secret-token-0123456789")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output));
    assert!(text(&output).contains("<redacted>") && !text(&output).contains("secret-token"), "{}", text(&output));

    let output = waybill(&dir).args(["--config", "missing.yaml", "check-config"]).output().unwrap();
    assert!(text(&output).contains("cannot read config file missing.yaml"), "{}", text(&output));
}

#[tokio::test]
async fn serve_becomes_ready_serves_sql_and_stops_cleanly_on_sigterm() {
    let dir = work_dir("serve");
    let (http_port, sql_port) = (free_port(), free_port());
    let token = "operator-token-0123456789";
    let child = waybill(&dir)
        .arg("serve")
        .env("WAYBILL_HTTP__LISTEN", format!("127.0.0.1:{http_port}"))
        .env("WAYBILL_SQL_ENDPOINT__ENABLED", "true")
        .env("WAYBILL_SQL_ENDPOINT__LISTEN", format!("127.0.0.1:{sql_port}"))
        .env("WAYBILL_SQL_ENDPOINT__TOKEN", token)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut running = Running(child);

    let healthz = wait_for_status(http_port, "/healthz", 200, Duration::from_secs(60)).await;
    assert_eq!(healthz.text(), "ok\n");
    let ready = wait_for_status(http_port, "/readyz", 200, Duration::from_secs(60)).await;
    assert_eq!(ready.text(), "ready\n");

    let sql = common::http(
        std::net::SocketAddr::from(([127, 0, 0, 1], sql_port)),
        "POST",
        "/?database=waybill",
        &[("X-ClickHouse-Key", token)],
        b"SELECT max(Version) FROM waybill_schema_migrations",
    )
    .await;
    assert_eq!((sql.status, sql.text()), (200, format!("{}\n", waybill_store::migrate::latest_version())));

    // SAFETY: sending SIGTERM to our own child process.
    unsafe { libc::kill(running.0.id() as i32, libc::SIGTERM) };
    let start = Instant::now();
    let status = loop {
        if let Some(status) = running.0.try_wait().unwrap() {
            break status;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "waybill did not stop within 30 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(running.0.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "exit {status}: {stderr}");

    // The data directory kept the schema: a second run has nothing to apply.
    let output = waybill(&dir).arg("migrate").output().unwrap();
    assert!(output.status.success(), "{}", text(&output));
    let expected = format!("schema is at version {}; nothing to apply", waybill_store::migrate::latest_version());
    assert!(text(&output).contains(&expected), "{}", text(&output));
}

/// Two `waybill migrate` processes at once against one server (here the
/// HTTP interface over this test's engine) converge on one schema.
#[tokio::test]
async fn two_processes_migrating_at_once_converge() {
    let addr = common::serve(waybill_store::http_interface::router(
        common::engine(),
        waybill_store::http_interface::Access::ReadWrite,
    ))
    .await;
    let dir = work_dir("two-migrations");
    let spawn = || {
        waybill(&dir)
            .arg("migrate")
            .env("WAYBILL_STORE__MODE", "server")
            .env("WAYBILL_STORE__SERVER__URL", format!("http://{addr}"))
            .env("WAYBILL_STORE__DATABASE", "t_two_processes")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (first, second) = (spawn(), spawn());
    let outputs = tokio::task::spawn_blocking(move || [first.wait_with_output().unwrap(), second.wait_with_output().unwrap()])
        .await
        .unwrap();
    for output in &outputs {
        assert!(output.status.success(), "{}", text(output));
    }
    let store = waybill_store::Store::embedded(common::engine(), common::target("t_two_processes"));
    assert_eq!(store.schema_version().await.unwrap(), waybill_store::migrate::latest_version());
    let recorded: Vec<u32> = store.fetch_all("SELECT Version FROM waybill_schema_migrations FINAL ORDER BY Version").await.unwrap();
    let expected: Vec<u32> = waybill_store::migrate::MIGRATIONS.iter().map(|m| m.version).collect();
    assert_eq!(recorded, expected);
}

/// With the server unreachable, the service is alive but not ready, and says why.
#[tokio::test]
async fn serve_is_not_ready_while_the_server_is_unreachable() {
    let dir = work_dir("unreachable");
    let (http_port, dead_port) = (free_port(), free_port());
    let child = waybill(&dir)
        .arg("serve")
        .env("WAYBILL_HTTP__LISTEN", format!("127.0.0.1:{http_port}"))
        .env("WAYBILL_STORE__MODE", "server")
        .env("WAYBILL_STORE__SERVER__URL", format!("http://127.0.0.1:{dead_port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _running = Running(child);
    wait_for_status(http_port, "/healthz", 200, Duration::from_secs(60)).await;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], http_port));
    let readyz = common::http(addr, "GET", "/readyz", &[], b"").await;
    assert_eq!(readyz.status, 503);
    assert!(readyz.text().starts_with("not ready"), "{}", readyz.text());
}
