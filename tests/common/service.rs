//! A running `waybill serve` for end-to-end tests: free ports, a config
//! file in its work directory, a fast lineage resolver, JSON API helpers.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::process::{free_port, wait_for_server, waybill, work_dir, Running};
use super::sdk::Systems;

/// A running service with a fast resolver.
pub struct Service {
    pub running: Running,
    pub dir: std::path::PathBuf,
    pub http: SocketAddr,
    pub otlp: SocketAddr,
}

impl Service {
    pub async fn start(name: &str, config: &str) -> Service {
        let dir = work_dir(name);
        std::fs::write(dir.join("waybill.yaml"), config).unwrap();
        Service::start_in(dir).await
    }

    pub async fn start_in(dir: std::path::PathBuf) -> Service {
        let (http, otlp) = (free_port(), free_port());
        // What it logs (warnings and errors) is shown if it never gets ready.
        let log = dir.join("serve.log");
        let child = waybill(&dir)
            .args(["--config", "waybill.yaml", "serve"])
            .env("WAYBILL_HTTP__LISTEN", format!("127.0.0.1:{http}"))
            .env("WAYBILL_OTLP__HTTP_LISTEN", format!("127.0.0.1:{otlp}"))
            .env("WAYBILL_LINEAGE__RESOLVE_INTERVAL_MS", "100")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut service = Service {
            running: Running(child),
            dir,
            http: SocketAddr::from(([127, 0, 0, 1], http)),
            otlp: SocketAddr::from(([127, 0, 0, 1], otlp)),
        };
        wait_for_server(Some((&mut service.running, &log)), http, "/readyz", 200, Duration::from_secs(60)).await;
        service
    }

    /// Stops the service with SIGTERM, as an operator would.
    pub async fn stop(mut self) -> std::path::PathBuf {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.running.0.id() as i32, libc::SIGTERM) };
        let (status, service) = tokio::task::spawn_blocking(move || (self.running.0.wait().unwrap(), self)).await.unwrap();
        assert!(status.success(), "serve exited with {status}");
        service.dir.clone()
    }

    pub fn systems(&self) -> Systems {
        Systems { endpoint: format!("http://{}", self.otlp) }
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = super::http(self.http, "GET", path, &[], b"").await;
        (response.status, serde_json::from_slice(&response.body).unwrap_or(Value::Null))
    }

    /// The transactions with key `value`, once `done` holds for them (30 s at most).
    pub async fn transactions_when(&self, value: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let start = Instant::now();
        loop {
            let (status, body) = self.get(&format!("/api/v1/transactions?key={}", super::encode(value))).await;
            assert_eq!(status, 200, "{body}");
            let found = body["transactions"].as_array().cloned().unwrap_or_default();
            if done(&found) {
                return found;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "transactions with key {value} never got there; last: {found:#?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The one transaction with key `value`, once it holds `keys` keys and is in `state`.
    pub async fn transaction(&self, value: &str, keys: usize, state: &str) -> Value {
        let found = self
            .transactions_when(value, |found| found.len() == 1 && found[0]["keys"].as_array().map_or(0, Vec::len) == keys && found[0]["state"] == state)
            .await;
        found[0].clone()
    }
}

