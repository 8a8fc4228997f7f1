//! The read-only ClickHouse HTTP endpoint over the embedded store: what
//! Grafana or clickhouse-client may do with the token, and what is refused.

mod common;

use waybill_store::http_interface::{self, Access};

const TOKEN: &str = "grafana-token-0123456789";

/// The read-only endpoint over a database of its own holding 20 spans.
struct Endpoint {
    addr: std::net::SocketAddr,
    database: &'static str,
}

impl Endpoint {
    async fn start(database: &'static str) -> Endpoint {
        let store = common::store(database).await;
        store.insert_spans(&(0..20).map(common::rows::span).collect::<Vec<_>>()).await.unwrap();
        let addr = common::serve(http_interface::router(common::engine(), Access::ReadOnly { token: TOKEN.into() })).await;
        Endpoint { addr, database }
    }

    /// Sends `sql` in the body, with the database as Grafana sends it.
    async fn post(&self, sql: &str, headers: &[(&str, &str)]) -> common::RawResponse {
        common::http(self.addr, "POST", &format!("/?database={}", self.database), headers, sql.as_bytes()).await
    }

    async fn post_with_token(&self, sql: &str) -> common::RawResponse {
        self.post(sql, &[("Authorization", &format!("Bearer {TOKEN}"))]).await
    }

    async fn span_count(&self) -> String {
        self.post_with_token("SELECT count() FROM otel_traces").await.text()
    }
}

#[tokio::test]
async fn the_official_client_reads_with_the_token() {
    let endpoint = Endpoint::start("t_sql_client").await;
    let addr = endpoint.addr;
    // clickhouse-rs sends the password as X-ClickHouse-Key.
    let client = clickhouse::Client::default()
        .with_url(format!("http://{addr}"))
        .with_database("t_sql_client")
        .with_password(TOKEN);
    let services: Vec<String> = client
        .query("SELECT DISTINCT ServiceName FROM otel_traces ORDER BY ServiceName")
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(services, ["b2b-portal", "billing", "sap-erp", "warehouse"]);
    // Basic auth, as Grafana's data source sends it.
    let basic = endpoint.post("SELECT 1", &[("Authorization", "Basic dXNlcjpncmFmYW5hLXRva2VuLTAxMjM0NTY3ODk=")]).await;
    assert_eq!((basic.status, basic.text().as_str()), (200, "1\n"));
    assert_eq!(common::http(addr, "GET", "/ping", &[], b"").await.text(), "Ok.\n");
}

#[tokio::test]
async fn requests_without_the_right_token_are_refused() {
    let endpoint = Endpoint::start("t_sql_token").await;
    let addr = endpoint.addr;
    let none = endpoint.post("SELECT 1", &[]).await;
    assert_eq!((none.status, none.header("X-ClickHouse-Exception-Code")), (401, Some("516")));
    let wrong = endpoint.post("SELECT 1", &[("Authorization", "Bearer not-the-token-at-all")]).await;
    assert_eq!(wrong.status, 401);
    let client = clickhouse::Client::default().with_url(format!("http://{addr}")).with_password("wrong");
    let err = client.query("SELECT 1").fetch_one::<u8>().await.unwrap_err().to_string();
    assert!(err.contains("AUTHENTICATION_FAILED"), "{err}");
}

#[tokio::test]
async fn writes_and_escapes_are_refused_and_change_nothing() {
    let endpoint = Endpoint::start("t_sql_refusals").await;
    let addr = endpoint.addr;
    assert_eq!(endpoint.span_count().await, "20\n");
    let refused = [
        ("INSERT INTO otel_traces (TraceId) VALUES ('x')", 403, "164"),
        ("DROP TABLE otel_traces", 403, "164"),
        ("TRUNCATE TABLE otel_traces", 403, "164"),
        ("ALTER TABLE otel_traces DELETE WHERE 1", 403, "164"),
        ("SELECT 1; DROP TABLE otel_traces", 400, "62"),
        ("SELECT * FROM file('/etc/passwd', LineAsString)", 403, "164"),
        ("SELECT * FROM url('http://127.0.0.1:1/', LineAsString)", 403, "164"),
        ("SELECT 1 INTO OUTFILE '/tmp/waybill-outfile-test'", 403, "164"),
        ("SELECT file('/etc/hostname')", 403, "164"),
        ("DESC file('/etc/passwd', 'CSVWithNames')", 403, "164"),
        ("SELECT * FROM filesystem('/etc')", 403, "164"),
        // Heredocs and Unicode quotes hide a ' from a naive lexer.
        ("SELECT $$'$$; DROP TABLE otel_traces; SELECT $$'$$", 400, "62"),
        ("SELECT \u{2018}'\u{2019}; DROP TABLE otel_traces; SELECT \u{2018}'\u{2019}", 400, "62"),
        ("SELECT $$'$$; SET readonly = 1; SELECT $$'$$", 400, "62"),
        ("SELECT * FROM (SELECT $$'$$ AS q, * FROM file($$/etc/hostname$$, LineAsString) SETTINGS readonly = 0 /*'*/)", 403, "164"),
        ("SELECT $$'$$ INTO OUTFILE $$/tmp/waybill-outfile-test$$ /*'*/", 403, "164"),
        ("SELECT * FROM (SELECT * FROM file('/etc/passwd', LineAsString) SETTINGS readonly = 0)", 403, "164"),
    ];
    for (sql, status, code) in refused {
        let response = endpoint.post_with_token(sql).await;
        assert_eq!((response.status, response.header("X-ClickHouse-Exception-Code")), (status, Some(code)), "{sql}: {}", response.text());
    }
    let bearer = format!("Bearer {TOKEN}");
    let insert = common::http(
        addr,
        "POST",
        &format!("/?database=t_sql_refusals&query={}", common::encode("INSERT INTO otel_traces (TraceId) FORMAT TSV")),
        &[("Authorization", &bearer)],
        b"x\n",
    )
    .await;
    assert_eq!(insert.status, 403);
    let settings = common::http(addr, "POST", "/?readonly=0&max_threads=1", &[("Authorization", &bearer)], b"SELECT 1").await;
    assert_eq!(settings.status, 403, "{}", settings.text());
    assert!(!std::path::Path::new("/tmp/waybill-outfile-test").exists());
    assert_eq!(endpoint.span_count().await, "20\n");
    // The store's own writes still work: no session state was changed.
    let store = waybill_store::Store::embedded(common::engine(), common::target(endpoint.database));
    store.insert_spans(&[common::rows::span(99)]).await.unwrap();
    assert_eq!(endpoint.span_count().await, "21\n");
}
