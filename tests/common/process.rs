//! Running the `waybill` binary from tests: a command with the test
//! engine library, a work directory, free ports, readiness waits.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

/// `waybill` in `dir`, quiet, with the engine library the tests use.
pub fn waybill(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_waybill"));
    // WAYBILL_* variables are config overrides: start from none of the caller's.
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("WAYBILL_")) {
        command.env_remove(name);
    }
    command
        .current_dir(dir)
        .env("WAYBILL_STORE__EMBEDDED__LIBRARY", super::library())
        .env("WAYBILL_LOG__LEVEL", "warn")
        // Every `serve` gets its own OTLP port unless the test names one.
        .env("WAYBILL_OTLP__HTTP_LISTEN", format!("127.0.0.1:{}", free_port()))
        .env("WAYBILL_OTLP__GRPC_LISTEN", format!("127.0.0.1:{}", free_port()));
    command
}

pub fn work_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Kills the child if the test fails before it is stopped.
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub async fn wait_for_status(port: u16, path: &str, want: u16, within: Duration) -> super::RawResponse {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let start = Instant::now();
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            let response = super::http(addr, "GET", path, &[], b"").await;
            if response.status == want {
                return response;
            }
        }
        assert!(start.elapsed() < within, "{path} did not answer {want} within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

