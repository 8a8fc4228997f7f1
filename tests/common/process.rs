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

/// A loopback port for a server the test starts later, held back from
/// every other taker until then. A port that is merely free when picked
/// can be handed out again before the server binds it (to another
/// `bind(0)`, or as the local port of any outgoing connection, even one to
/// itself), and the server then fails to start. So the port is left with a
/// closed connection in TIME_WAIT: for a minute the kernel gives it to no
/// `bind(0)` or `connect`, while a server binding it by number with
/// SO_REUSEADDR (Rust's and Go's listeners set it) still gets it.
pub fn free_port() -> u16 {
    use std::net::{TcpListener, TcpStream};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let client = TcpStream::connect(address).unwrap();
    let (accepted, _) = listener.accept().unwrap();
    // The side that closes first waits in TIME_WAIT: the one on our port.
    drop(accepted);
    drop(client);
    address.port()
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
    wait_for_server(None, port, path, want, within).await
}

/// Waits for `path` on `port` to answer `want`. With `server` (a process
/// the test started, and the file its stderr goes to) it fails at once if
/// the process exits first, and either failure shows what it logged.
pub async fn wait_for_server(mut server: Option<(&mut Running, &Path)>, port: u16, path: &str, want: u16, within: Duration) -> super::RawResponse {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let start = Instant::now();
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            let response = super::http(addr, "GET", path, &[], b"").await;
            if response.status == want {
                return response;
            }
        }
        let logged = match &mut server {
            Some((running, log)) => {
                let logged = format!("; it logged:\n{}", std::fs::read_to_string(log).unwrap_or_default());
                if let Some(status) = running.0.try_wait().unwrap() {
                    panic!("the server exited with {status} before {path} answered {want}{logged}");
                }
                logged
            }
            None => String::new(),
        };
        assert!(start.elapsed() < within, "{path} did not answer {want} within {within:?}{logged}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A program on PATH; the message says which Debian package brings it.
pub fn which(program: &str) -> std::path::PathBuf {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|dir| PathBuf::from(dir).join(program))
        .find(|path| path.is_file())
        .unwrap_or_else(|| panic!("{program} is missing: scripts/test.sh installs it (Debian package {program})"))
}

/// A real Prometheus server scraping `target` (host:port) every second;
/// returns it and its API address.
pub fn prometheus(name: &str, target: &str) -> (Running, std::net::SocketAddr) {
    let dir = work_dir(name);
    let config = format!("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: waybill\n    static_configs:\n      - targets: ['{target}']\n");
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let port = free_port();
    let child = Command::new(which("prometheus"))
        .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    (Running(child), std::net::SocketAddr::from(([127, 0, 0, 1], port)))
}

/// Waits until Prometheus at `api` answers `query` with `value` (60 s at most).
pub async fn wait_for_prometheus(api: std::net::SocketAddr, query: &str, value: &str) {
    let target = format!("/api/v1/query?query={}", super::encode(query));
    let start = Instant::now();
    loop {
        if tokio::net::TcpStream::connect(api).await.is_ok() {
            let answer = super::http(api, "GET", &target, &[], b"").await;
            let json: serde_json::Value = serde_json::from_slice(&answer.body).unwrap_or_default();
            if json["data"]["result"][0]["value"][1] == value {
                return;
            }
        }
        assert!(start.elapsed() < Duration::from_secs(60), "Prometheus did not see {query} = {value} within 60 s");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
