//! Shared test fixtures: the process's one embedded engine, a database per
//! test, and a minimal HTTP/1.1 client for checking raw responses.

#![allow(dead_code)]

pub mod pages;
pub mod process;
pub mod rows;
pub mod sdk;
pub mod service;

use std::path::PathBuf;
use std::sync::OnceLock;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use waybill_store::{Engine, SchemaTarget, Store};

/// Nanoseconds since the epoch, now.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i64
}

/// Where this test process keeps its engine data.
pub fn engine_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("engine-{}", std::process::id()))
}

/// The library the tests load: `WAYBILL_STORE__EMBEDDED__LIBRARY` or the
/// fetch script's location. Tests fail (never skip) when it is missing.
pub fn library() -> PathBuf {
    std::env::var_os("WAYBILL_STORE__EMBEDDED__LIBRARY")
        .map(PathBuf::from)
        .unwrap_or_else(waybill_store::engine::default_library_path)
}

/// The process's embedded engine, opened on first use. chDB allows one per
/// process, so tests share it and each works in its own database.
pub fn engine() -> Engine {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let dir = engine_dir();
        let _ = std::fs::remove_dir_all(&dir);
        dir
    });
    Engine::open(&library(), dir, waybill_store::engine::DEFAULT_CONNECTIONS).unwrap_or_else(|e| panic!("cannot open the embedded engine: {e}"))
}

pub fn target(database: &str) -> SchemaTarget {
    SchemaTarget { database: database.to_owned(), cluster: None, retention_days: 30 }
}

/// A migrated embedded store in a fresh database named `database`.
pub async fn store(database: &str) -> Store {
    let store = Store::embedded(engine(), target(database));
    drop_database(&store).await;
    store.migrate().await.unwrap();
    store
}

/// Drops the store's database, from outside it.
pub async fn drop_database(store: &Store) {
    let sql = format!("DROP DATABASE IF EXISTS {}", store.target().database);
    store.client().clone().with_database("default").query(&sql).execute().await.unwrap();
}

/// A raw HTTP response.
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends one HTTP/1.1 request with `Connection: close` and reads the whole
/// response; enough to check statuses and headers exactly as sent.
pub async fn http(addr: std::net::SocketAddr, method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> RawResponse {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut request = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("response head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':').map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned())))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers.iter().any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked")) {
        body = dechunk(&body);
    }
    RawResponse { status, headers, body }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n").unwrap();
        let size = usize::from_str_radix(std::str::from_utf8(&data[..line_end]).unwrap().trim(), 16).unwrap();
        data = &data[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// Serves `router` on a loopback port until the test ends.
pub async fn serve(router: axum::Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

/// Percent-encodes a query parameter value.
pub fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
