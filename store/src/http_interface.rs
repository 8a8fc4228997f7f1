//! The subset of ClickHouse's HTTP interface that official clients use,
//! served over the embedded engine: queries in the URL or body, `database`,
//! `default_format`, settings and `param_*` in the URL, inserts with a data
//! body (plain or `decompress=1` native LZ4 blocks), errors as ClickHouse
//! reports them (status, `X-ClickHouse-Exception-Code`, message body).
//!
//! Two uses: the store's own client talks to it in-process, so embedded and
//! server mode run the same client code; and, read-only behind a token, it
//! lets Grafana or `clickhouse-client` read the embedded store.
//! Reference: <https://clickhouse.com/docs/interfaces/http>.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;

use crate::engine::{Engine, EngineError, EngineQuery, Priority, QueryOutput};
use crate::sql;

/// Who may do what on one instance of the interface.
#[derive(Debug, Clone)]
pub enum Access {
    /// The store's own in-process client: any statement.
    ReadWrite,
    /// The endpoint offered to users: one reading statement per request,
    /// executed with `readonly = 1`, and only with the token.
    ReadOnly { token: String },
}

/// Request header by which the store's own client asks for an interactive
/// turn on the engine (`Priority::Interactive`); ignored on the read-only
/// endpoint, whose users' queries wait their turn like background work.
pub const PRIORITY_HEADER: &str = "x-waybill-priority";

/// Largest request body the in-process client may send (one insert batch).
pub const READ_WRITE_BODY_LIMIT: usize = 1 << 30;
/// Largest request body on the read-only endpoint (queries only, no data).
pub const READ_ONLY_BODY_LIMIT: usize = 1 << 20;

#[derive(Clone)]
struct HttpState {
    engine: Engine,
    access: Arc<Access>,
    spool_dir: PathBuf,
    /// Read from the engine on the first read-only request.
    denied_table_functions: Arc<tokio::sync::OnceCell<HashSet<String>>>,
}

/// Numbers spool files; process-wide, since several routers share one engine.
static SPOOL_SEQ: AtomicU64 = AtomicU64::new(0);

/// The interface as an axum router with its state applied.
pub fn router(engine: Engine, access: Access) -> Router {
    let spool_dir = engine.data_dir().join("waybill-spool");
    let limit = match access {
        Access::ReadWrite => READ_WRITE_BODY_LIMIT,
        Access::ReadOnly { .. } => READ_ONLY_BODY_LIMIT,
    };
    let state = HttpState { engine, access: Arc::new(access), spool_dir, denied_table_functions: Default::default() };
    Router::new()
        .route("/ping", get(ping))
        .route("/", any(handle))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

async fn ping() -> &'static str {
    "Ok.\n"
}

/// A ClickHouse-style error: code, message, HTTP status derived from the code.
#[derive(Debug)]
struct ChError {
    code: u32,
    message: String,
}

impl ChError {
    fn new(code: u32, name: &str, text: impl std::fmt::Display) -> Self {
        ChError { code, message: format!("Code: {code}. DB::Exception: {text}. ({name})") }
    }
    fn readonly(text: impl std::fmt::Display) -> Self {
        Self::new(164, "READONLY", text)
    }
    fn syntax(text: impl std::fmt::Display) -> Self {
        Self::new(62, "SYNTAX_ERROR", text)
    }
    fn bad_arguments(text: impl std::fmt::Display) -> Self {
        Self::new(36, "BAD_ARGUMENTS", text)
    }
}

impl From<EngineError> for ChError {
    fn from(err: EngineError) -> Self {
        ChError { code: err.clickhouse_code(), message: err.to_string() }
    }
}

/// HTTP status for a ClickHouse error code, following the server's own
/// mapping (`exceptionCodeToHTTPStatus` in ClickHouse's HTTPHandler).
fn status_for_code(code: u32) -> StatusCode {
    match code {
        // UNKNOWN_USER, WRONG_PASSWORD, REQUIRED_PASSWORD, AUTHENTICATION_FAILED
        192 | 193 | 194 | 516 => StatusCode::UNAUTHORIZED,
        // READONLY, ACCESS_DENIED
        164 | 497 => StatusCode::FORBIDDEN,
        // UNKNOWN_FUNCTION, UNKNOWN_IDENTIFIER, UNKNOWN_TYPE, UNKNOWN_TABLE, UNKNOWN_DATABASE
        46 | 47 | 50 | 60 | 81 => StatusCode::NOT_FOUND,
        // CANNOT_PARSE_*, BAD_ARGUMENTS, SYNTAX_ERROR, UNKNOWN_FORMAT, UNKNOWN_SETTING, ...
        6 | 26 | 27 | 32 | 33 | 36 | 38 | 41 | 62 | 69 | 72 | 73 | 115 | 456 => StatusCode::BAD_REQUEST,
        // NOT_IMPLEMENTED
        48 => StatusCode::NOT_IMPLEMENTED,
        // NETWORK_ERROR: the engine is closed or not reachable
        210 => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for ChError {
    fn into_response(self) -> Response {
        let mut response = (status_for_code(self.code), format!("{}\n", self.message)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=UTF-8"));
        headers.insert("X-ClickHouse-Exception-Code", HeaderValue::from(self.code));
        if self.code == 516 {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"waybill\""));
        }
        response
    }
}

/// URL parameters that steer the protocol rather than set a query setting.
const PROTOCOL_PARAMS: &[&str] = &[
    "query", "database", "default_format", "compress", "decompress", "query_id", "session_id",
    "session_timeout", "session_check", "user", "password", "wait_end_of_query", "buffer_size",
    "send_progress_in_http_headers", "http_headers_progress_interval_ms",
    "enable_http_compression", "http_zlib_compression_level", "role",
];

/// A request, parsed from its URL, headers and body.
#[derive(Debug, Default)]
struct ParsedRequest {
    query: Option<String>,
    database: Option<String>,
    default_format: Option<String>,
    decompress: bool,
    password: Option<String>,
    params: Vec<(String, String)>,
    settings: Vec<(String, String)>,
}

fn parse_url(raw: Option<&str>) -> Result<ParsedRequest, ChError> {
    let mut parsed = ParsedRequest::default();
    let pairs: Vec<(String, String)> = match raw {
        Some(raw) => serde_urlencoded_pairs(raw)?,
        None => Vec::new(),
    };
    for (name, value) in pairs {
        if let Some(param) = name.strip_prefix("param_") {
            parsed.params.push((param.to_owned(), value));
            continue;
        }
        match name.as_str() {
            "query" => parsed.query = Some(value),
            "database" => parsed.database = Some(value),
            "default_format" => parsed.default_format = Some(value),
            "decompress" => parsed.decompress = value == "1",
            "compress" if value == "1" => {
                return Err(ChError::new(48, "NOT_IMPLEMENTED", "compress=1 (native block compression of responses) is not supported by this endpoint; use Accept-Encoding or no compression"))
            }
            "password" => parsed.password = Some(value),
            name if PROTOCOL_PARAMS.contains(&name) => {}
            _ => {
                if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                    return Err(ChError::new(115, "UNKNOWN_SETTING", format_args!("setting name {name:?} is not valid")));
                }
                parsed.settings.push((name, value));
            }
        }
    }
    Ok(parsed)
}

fn serde_urlencoded_pairs(raw: &str) -> Result<Vec<(String, String)>, ChError> {
    axum::extract::Query::<Vec<(String, String)>>::try_from_uri(
        &format!("/?{raw}").parse().map_err(|e| ChError::bad_arguments(format_args!("invalid URL: {e}")))?,
    )
    .map(|q| q.0)
    .map_err(|e| ChError::bad_arguments(format_args!("invalid URL parameters: {e}")))
}

/// The token a client presented, in any of the ways ClickHouse clients send
/// credentials: bearer token, basic auth password, `X-ClickHouse-Key`, or
/// the `password` URL parameter.
fn presented_token(headers: &HeaderMap, url_password: Option<&str>) -> Option<String> {
    if let Some(value) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        if let Some(token) = value.strip_prefix("Bearer ") {
            return Some(token.trim().to_owned());
        }
        if let Some(encoded) = value.strip_prefix("Basic ") {
            let decoded = decode_base64(encoded.trim())?;
            let text = String::from_utf8(decoded).ok()?;
            return text.split_once(':').map(|(_, password)| password.to_owned());
        }
    }
    if let Some(key) = headers.get("X-ClickHouse-Key").and_then(|v| v.to_str().ok()) {
        return Some(key.to_owned());
    }
    url_password.map(str::to_owned)
}

/// Standard base64 (RFC 4648 §4), padding optional.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut buffer = 0u32;
    let mut bits = 0;
    for c in text.bytes().filter(|&c| c != b'=') {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        buffer = (buffer << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
        }
    }
    Some(out)
}

/// Compares without an early exit, so timing does not leak the token.
fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Statements the read-only endpoint runs (first keyword).
const READING_STATEMENTS: &[&str] = &["SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXISTS", "EXPLAIN"];

/// Table functions that only generate or reshape data inside the engine;
/// every other table function reaches files, the network or other systems.
const SAFE_TABLE_FUNCTIONS: &[&str] =
    &["numbers", "numbers_mt", "zeros", "zeros_mt", "generate_series", "generateseries", "values", "null", "view", "merge"];

/// Scalar functions that read local files.
const DENIED_FUNCTIONS: &[&str] = &["file"];

/// The statement in ClickHouse's own canonical form (`formatQuery`): one
/// statement (multi-statements are a syntax error there), no comments, and
/// only plain quotes, so the checks below see what ClickHouse will run; a
/// private lexer alone missed heredocs (`$$...$$`) and Unicode quotes.
fn canonical_statement(engine: &Engine, text: &str) -> Result<String, ChError> {
    let params = [("q".to_owned(), text.to_owned())];
    let output = engine.query(EngineQuery {
        sql: "SELECT formatQuery({q:String})",
        format: "RawBLOB",
        database: None,
        params: &params,
    })?;
    String::from_utf8(output.data).map_err(|_| ChError::syntax("the query is not valid UTF-8"))
}

/// Names of the engine's table functions that the read-only endpoint refuses.
fn denied_table_functions(engine: &Engine) -> Result<HashSet<String>, ChError> {
    let output = engine.query(EngineQuery {
        sql: "SELECT name FROM system.table_functions",
        format: "TSVRaw",
        database: None,
        params: &[],
    })?;
    Ok(String::from_utf8_lossy(&output.data)
        .lines()
        .map(str::to_ascii_lowercase)
        .filter(|name| !name.is_empty() && !SAFE_TABLE_FUNCTIONS.contains(&name.as_str()))
        .collect())
}

/// Checks a canonical statement (see [`canonical_statement`]) for the
/// read-only endpoint and returns it with `readonly = 1` applied.
/// `readonly = 1` is not a sandbox on its own: the file function, table
/// functions, `SETTINGS` in a subquery and `INTO OUTFILE` all get past it.
fn read_only_statement(sql: &str, denied_table_functions: &HashSet<String>) -> Result<String, ChError> {
    let tokens = sql::scan(sql).map_err(ChError::syntax)?;
    if sql::statement_count(&tokens) != 1 {
        return Err(ChError::syntax("exactly one statement per request is accepted on the read-only endpoint"));
    }
    let keyword = sql::first_keyword(sql, &tokens).unwrap_or_default();
    if !READING_STATEMENTS.contains(&keyword.as_str()) {
        return Err(ChError::readonly(format_args!(
            "{keyword} is not allowed on the read-only endpoint; only {} are",
            READING_STATEMENTS.join(", ")
        )));
    }
    // A SETTINGS clause in a subquery overrides the outer `readonly = 1`
    // (ClickHouse applies it to the subquery's context), so none is accepted.
    if tokens.iter().any(|t| sql::word(sql, t).is_some_and(|w| w.eq_ignore_ascii_case("SETTINGS"))) {
        return Err(ChError::readonly("SETTINGS clauses are not allowed on the read-only endpoint"));
    }
    if sql::has_word_pair(sql, &tokens, "INTO", "OUTFILE") {
        return Err(ChError::readonly("INTO OUTFILE is not allowed on the read-only endpoint"));
    }
    for pair in tokens.windows(2) {
        let called = matches!(pair[1], sql::Token::Symbol { at } if sql.as_bytes()[at] == b'(');
        let Some(name) = sql::word(sql, &pair[0]).filter(|_| called).map(str::to_ascii_lowercase) else {
            continue;
        };
        if denied_table_functions.contains(&name) || DENIED_FUNCTIONS.contains(&name.as_str()) {
            return Err(ChError::readonly(format_args!(
                "{name}() reaches outside Waybill's data and is not allowed on the read-only endpoint"
            )));
        }
    }
    let end = match tokens.last() {
        Some(sql::Token::Semicolon { at }) => *at,
        _ => sql.len(),
    };
    Ok(format!("{}\nSETTINGS readonly = 1", &sql[..end]))
}

/// ` SETTINGS a = 1, b = 'x'`: the statement's own settings, then URL
/// settings (names were checked in `parse_url`, values are quoted).
fn settings_clause(own: Option<&str>, url_settings: &[(String, String)]) -> String {
    let list: Vec<String> = own
        .into_iter()
        .map(str::to_owned)
        .chain(url_settings.iter().map(|(n, v)| format!("{n} = {}", sql::quote_string(v))))
        .collect();
    if list.is_empty() {
        return String::new();
    }
    format!(" SETTINGS {}", list.join(", "))
}

/// The output format named by the statement's last `FORMAT name`, if any.
fn format_clause(sql: &str) -> Option<String> {
    let tokens = sql::scan(sql).ok()?;
    tokens.windows(2).rev().find_map(|pair| {
        let keyword = sql::word(sql, &pair[0])?;
        keyword.eq_ignore_ascii_case("FORMAT").then(|| sql::word(sql, &pair[1]).map(str::to_owned))?
    })
}

fn content_type_for(format: &str) -> &'static str {
    match format.to_ascii_lowercase().as_str() {
        f if f.starts_with("json") => "application/json; charset=UTF-8",
        "tabseparated" | "tsv" | "tabseparatedwithnames" | "tsvwithnames" | "tabseparatedwithnamesandtypes"
        | "tsvwithnamesandtypes" | "tabseparatedraw" | "tsvraw" => "text/tab-separated-values; charset=UTF-8",
        f if f.starts_with("csv") => "text/csv; charset=UTF-8; header=absent",
        "pretty" | "prettycompact" | "vertical" | "values" | "markdown" => "text/plain; charset=UTF-8",
        _ => "application/octet-stream",
    }
}

async fn handle(
    State(state): State<HttpState>,
    method: Method,
    RawQuery(raw_query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match execute(&state, &method, raw_query.as_deref(), &headers, body).await {
        Ok(response) => response,
        Err(err) => err.into_response(),
    }
}

async fn execute(
    state: &HttpState,
    method: &Method,
    raw_query: Option<&str>,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, ChError> {
    let request = parse_url(raw_query)?;
    let read_only = match state.access.as_ref() {
        Access::ReadOnly { token } => {
            let presented = presented_token(headers, request.password.as_deref());
            if !presented.is_some_and(|p| same_token(&p, token)) {
                return Err(ChError::new(
                    516,
                    "AUTHENTICATION_FAILED",
                    "a valid token is required: send it as a bearer token, as the basic-auth password or as X-ClickHouse-Key",
                ));
            }
            if !request.settings.is_empty() {
                let names: Vec<&str> = request.settings.iter().map(|(n, _)| n.as_str()).collect();
                return Err(ChError::readonly(format_args!(
                    "settings cannot be changed on the read-only endpoint (got {})",
                    names.join(", ")
                )));
            }
            true
        }
        // ClickHouse treats GET as read-only: "GET implies readonly".
        Access::ReadWrite => method == Method::GET,
    };
    if method != Method::GET && method != Method::POST {
        return Err(ChError::bad_arguments(format_args!("method {method} is not supported; use GET or POST")));
    }
    let body = if method == Method::GET { Bytes::new() } else { body };

    // The statement is the `query` parameter followed by the body; for an
    // INSERT with a FORMAT clause, whatever follows the format name is data.
    let statement = match &request.query {
        Some(query) => match sql::insert_with_format(query.as_bytes()) {
            Some(_) if read_only => return Err(ChError::readonly("INSERT is not allowed on a read-only request")),
            Some(shape) => {
                // ClickHouse joins the query parameter and the body with a line break.
                let data = if shape.inline_data.is_empty() {
                    vec![decompress_body(&body, request.decompress)?]
                } else {
                    let inline = Bytes::copy_from_slice(shape.inline_data);
                    vec![inline, Bytes::from_static(b"\n"), decompress_body(&body, request.decompress)?]
                };
                Statement::Insert { head: shape.head.to_owned(), settings: shape.settings.map(str::to_owned), format: shape.format.to_owned(), data }
            }
            None if body.is_empty() => Statement::Other(query.clone()),
            None => Statement::Other(format!("{query}\n{}", utf8_query(&body)?)),
        },
        None => match sql::insert_with_format(&body) {
            Some(_) if read_only => return Err(ChError::readonly("INSERT is not allowed on a read-only request")),
            Some(shape) => Statement::Insert {
                head: shape.head.to_owned(),
                settings: shape.settings.map(str::to_owned),
                format: shape.format.to_owned(),
                data: vec![decompress_body(&body.slice_ref(shape.inline_data), request.decompress)?],
            },
            None => Statement::Other(utf8_query(&body)?.to_owned()),
        },
    };

    let (sql_text, format, spool) = match statement {
        Statement::Insert { head, settings, format, data } => {
            let path = state.spool_dir.join(format!(
                "insert-{}-{}.bin",
                std::process::id(),
                SPOOL_SEQ.fetch_add(1, Ordering::Relaxed)
            ));
            // ClickHouse's grammar: INSERT INTO t [(cols)] FROM INFILE 'f' [SETTINGS ...] FORMAT fmt.
            let sql_text = format!(
                "{head} FROM INFILE {}{} FORMAT {format}",
                sql::quote_string(&path.to_string_lossy()),
                settings_clause(settings.as_deref(), &request.settings)
            );
            (sql_text, format, Some((path, data)))
        }
        Statement::Other(text) => {
            if text.trim().is_empty() {
                return Err(ChError::syntax("empty query: send it in the `query` URL parameter or in the body"));
            }
            let text = if read_only { canonical_read_only(state, text).await? } else { text };
            let format = format_clause(&text)
                .or(request.default_format.clone())
                .unwrap_or_else(|| "TabSeparated".to_owned());
            let sql_text = if read_only {
                let denied = state.denied_table_functions.get_or_try_init(|| blocking(&state.engine, denied_table_functions)).await?;
                read_only_statement(&text, denied)?
            } else {
                format!("{text}{}", settings_clause(None, &request.settings))
            };
            (sql_text, format, None)
        }
    };

    let priority = priority_of(&state.access, headers);
    let database = request.database.clone().unwrap_or_else(|| "default".to_owned());
    let engine = state.engine.clone();
    let spool_dir = state.spool_dir.clone();
    let params = request.params;
    let engine_format = format.clone();
    let output = tokio::task::spawn_blocking(move || -> Result<QueryOutput, ChError> {
        if let Some((path, data)) = &spool {
            std::fs::create_dir_all(&spool_dir)
                .and_then(|()| write_parts(path, data))
                .map_err(|e| ChError::new(1001, "STD_EXCEPTION", format_args!("cannot spool insert data to {}: {e}", path.display())))?;
        }
        let result = engine.query_as(priority, EngineQuery {
            sql: &sql_text,
            format: &engine_format,
            database: Some(&database),
            params: &params,
        });
        if let Some((path, _)) = &spool {
            let _ = std::fs::remove_file(path);
        }
        result.map_err(ChError::from)
    })
    .await
    .map_err(|e| ChError::new(1001, "STD_EXCEPTION", format_args!("query task failed: {e}")))??;

    let summary = format!(
        "{{\"read_rows\":\"{}\",\"read_bytes\":\"{}\",\"written_rows\":\"{}\",\"written_bytes\":\"{}\",\"total_rows_to_read\":\"0\",\"result_rows\":\"0\",\"result_bytes\":\"{}\",\"elapsed_ns\":\"{}\"}}",
        output.rows_read,
        output.bytes_read,
        output.rows_written,
        output.bytes_written,
        output.data.len(),
        (output.elapsed_seconds * 1e9) as u64
    );
    let mut response = (StatusCode::OK, output.data).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type_for(&format)));
    if let Ok(value) = HeaderValue::from_str(&format) {
        headers.insert("X-ClickHouse-Format", value);
    }
    if let Ok(value) = HeaderValue::from_str(&summary) {
        headers.insert("X-ClickHouse-Summary", value);
    }
    Ok(response)
}

/// The engine turn a request asks for: interactive only when the store's
/// own client says so.
fn priority_of(access: &Access, headers: &HeaderMap) -> Priority {
    match access {
        Access::ReadWrite if headers.get(PRIORITY_HEADER).is_some_and(|v| v == "interactive") => Priority::Interactive,
        _ => Priority::Background,
    }
}

/// Runs `work` with the engine on a blocking thread.
async fn blocking<T: Send + 'static>(
    engine: &Engine,
    work: impl FnOnce(&Engine) -> Result<T, ChError> + Send + 'static,
) -> Result<T, ChError> {
    let engine = engine.clone();
    tokio::task::spawn_blocking(move || work(&engine))
        .await
        .map_err(|e| ChError::new(1001, "STD_EXCEPTION", format_args!("query task failed: {e}")))?
}

async fn canonical_read_only(state: &HttpState, text: String) -> Result<String, ChError> {
    blocking(&state.engine, move |engine| canonical_statement(engine, &text)).await
}

/// A request's statement: an INSERT whose data came along, or anything else.
enum Statement {
    /// `data` is written in order: inline data from the query, then the body.
    Insert { head: String, settings: Option<String>, format: String, data: Vec<Bytes> },
    Other(String),
}

fn utf8_query(bytes: &[u8]) -> Result<&str, ChError> {
    std::str::from_utf8(bytes).map_err(|_| ChError::syntax("the query is not valid UTF-8"))
}

/// Undoes ClickHouse's native block compression (`decompress=1`): blocks of
/// 16-byte CityHash128 checksum, method byte, compressed and uncompressed
/// sizes, then the payload. Method 0x82 is LZ4, 0x02 is none.
fn decompress_body(body: &Bytes, compressed: bool) -> Result<Bytes, ChError> {
    if !compressed {
        return Ok(body.clone());
    }
    let corrupt = |text: String| ChError::new(271, "CANNOT_DECOMPRESS", text);
    let mut out = Vec::new();
    let mut rest: &[u8] = body;
    while !rest.is_empty() {
        if rest.len() < 25 {
            return Err(corrupt(format!("truncated compressed block header ({} bytes)", rest.len())));
        }
        let checksum = u128::from_le_bytes(rest[..16].try_into().expect("16 bytes"));
        let method = rest[16];
        let compressed_size = u32::from_le_bytes(rest[17..21].try_into().expect("4 bytes")) as usize;
        let plain_size = u32::from_le_bytes(rest[21..25].try_into().expect("4 bytes")) as usize;
        if compressed_size < 9 || rest.len() < 16 + compressed_size {
            return Err(corrupt(format!("compressed block of {compressed_size} bytes overruns the body")));
        }
        // LZ4 expands at most ~255x; a larger claim is a forged header that
        // would only make us allocate.
        if plain_size > (compressed_size - 9) * 255 + 64 {
            return Err(corrupt(format!("block claims {plain_size} bytes from {compressed_size}, more than LZ4 can expand to")));
        }
        if out.len() + plain_size > READ_WRITE_BODY_LIMIT {
            return Err(ChError::new(
                307,
                "TOO_MANY_BYTES",
                format_args!("decompressed data exceeds {READ_WRITE_BODY_LIMIT} bytes"),
            ));
        }
        let block = &rest[16..16 + compressed_size];
        if cityhash_rs::cityhash_102_128(block).rotate_right(64) != checksum {
            return Err(corrupt("checksum mismatch in compressed block".into()));
        }
        let payload = &block[9..];
        match method {
            0x82 => {
                let start = out.len();
                out.reserve_exact(plain_size);
                out.resize(start + plain_size, 0);
                let written = lz4_flex::block::decompress_into(payload, &mut out[start..])
                    .map_err(|e| corrupt(format!("LZ4 block: {e}")))?;
                if written != plain_size {
                    return Err(corrupt(format!("LZ4 block gave {written} bytes, header said {plain_size}")));
                }
            }
            0x02 if payload.len() == plain_size => out.extend_from_slice(payload),
            0x02 => return Err(corrupt(format!("uncompressed block holds {} bytes, header said {plain_size}", payload.len()))),
            other => return Err(corrupt(format!("compression method 0x{other:02x} is not supported; use LZ4"))),
        }
        rest = &rest[16 + compressed_size..];
    }
    Ok(out.into())
}

/// Writes the insert data to the spool file the INSERT will read.
fn write_parts(path: &std::path::Path, parts: &[Bytes]) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::File::create(path)?;
    for part in parts {
        file.write_all(part)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn denied() -> HashSet<String> {
        ["file", "url", "remote", "filesystem", "executable"].iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn only_the_stores_own_client_gets_interactive_turns() {
        let mut asking = HeaderMap::new();
        asking.insert(PRIORITY_HEADER, HeaderValue::from_static("interactive"));
        let read_only = Access::ReadOnly { token: "t".repeat(16) };
        assert_eq!(priority_of(&Access::ReadWrite, &asking), Priority::Interactive);
        assert_eq!(priority_of(&Access::ReadWrite, &HeaderMap::new()), Priority::Background);
        assert_eq!(priority_of(&read_only, &asking), Priority::Background);
    }

    #[test]
    fn read_only_statements_get_readonly_setting() {
        assert_eq!(read_only_statement("SELECT 1;", &denied()).unwrap(), "SELECT 1\nSETTINGS readonly = 1");
        assert_eq!(read_only_statement("SHOW TABLES", &denied()).unwrap(), "SHOW TABLES\nSETTINGS readonly = 1");
        assert!(read_only_statement("SELECT count() FROM numbers(10)", &denied()).is_ok());
        assert!(read_only_statement("SELECT `settings`, profile FROM t", &denied()).is_ok());
    }

    #[test]
    fn read_only_refuses_writes_multi_statements_and_escapes() {
        let refused = |sql: &str| read_only_statement(sql, &denied()).unwrap_err().code;
        assert_eq!(refused("INSERT INTO t VALUES (1)"), 164);
        assert_eq!(refused("DROP TABLE t"), 164);
        assert_eq!(refused("SELECT 1; DROP TABLE t"), 62);
        assert_eq!(refused("SELECT 1 INTO OUTFILE 'x'"), 164);
        assert_eq!(refused("SELECT 'unterminated"), 62);
        assert_eq!(refused("SELECT * FROM (SELECT * FROM file('/etc/passwd') settings readonly = 0)"), 164);
        assert_eq!(refused("SELECT FILE('/etc/passwd')"), 164);
        assert_eq!(refused("DESCRIBE TABLE url('http://x', 'CSV')"), 164);
        assert_eq!(refused("SELECT * FROM filesystem('/')"), 164);
    }

    #[test]
    fn error_codes_map_to_clickhouse_http_statuses() {
        assert_eq!(status_for_code(60), StatusCode::NOT_FOUND);
        assert_eq!(status_for_code(62), StatusCode::BAD_REQUEST);
        assert_eq!(status_for_code(164), StatusCode::FORBIDDEN);
        assert_eq!(status_for_code(516), StatusCode::UNAUTHORIZED);
        assert_eq!(status_for_code(999), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn url_parameters_split_into_protocol_params_and_settings() {
        let parsed = parse_url(Some("query=SELECT%201&database=w&param_id=7&max_threads=2&query_id=x")).unwrap();
        assert_eq!(parsed.query.as_deref(), Some("SELECT 1"));
        assert_eq!(parsed.database.as_deref(), Some("w"));
        assert_eq!(parsed.params, vec![("id".to_owned(), "7".to_owned())]);
        assert_eq!(parsed.settings, vec![("max_threads".to_owned(), "2".to_owned())]);
        assert_eq!(parse_url(Some("bad%20name=1")).unwrap_err().code, 115);
    }

    #[test]
    fn tokens_are_read_from_every_credential_form() {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer abc"));
        assert_eq!(presented_token(&headers, None).as_deref(), Some("abc"));
        // "grafana:s3cret"
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic Z3JhZmFuYTpzM2NyZXQ="));
        assert_eq!(presented_token(&headers, None).as_deref(), Some("s3cret"));
        let mut headers = HeaderMap::new();
        headers.insert("X-ClickHouse-Key", HeaderValue::from_static("k"));
        assert_eq!(presented_token(&headers, None).as_deref(), Some("k"));
        assert_eq!(presented_token(&HeaderMap::new(), Some("p")).as_deref(), Some("p"));
        assert!(same_token("abc", "abc") && !same_token("abc", "abd") && !same_token("abc", "ab"));
    }

    #[test]
    fn native_lz4_blocks_round_trip_and_corruption_is_refused() {
        let plain: Vec<u8> = (0..10_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        let block = clickhouse::_priv::lz4_compress(&plain).unwrap();
        let mut two = block.to_vec();
        two.extend_from_slice(&block);
        let out = decompress_body(&Bytes::from(two), true).unwrap();
        assert_eq!(out.len(), plain.len() * 2);
        assert_eq!(&out[..plain.len()], &plain[..]);

        let mut corrupt = block.to_vec();
        let last = corrupt.len() - 1;
        corrupt[last] ^= 0xff;
        assert_eq!(decompress_body(&Bytes::from(corrupt), true).unwrap_err().code, 271);
        assert_eq!(decompress_body(&block.slice(..20), true).unwrap_err().code, 271);

        // A header claiming 1 GiB from a few bytes is refused before allocating.
        let mut forged = block.to_vec();
        forged[21..25].copy_from_slice(&(1u32 << 30).to_le_bytes());
        assert_eq!(decompress_body(&Bytes::from(forged), true).unwrap_err().code, 271);
    }

    #[test]
    fn format_clause_is_found_after_settings_and_in_any_case() {
        assert_eq!(format_clause("SELECT 1 format JSON").as_deref(), Some("JSON"));
        assert_eq!(format_clause("SELECT 'FORMAT CSV'"), None);
        assert_eq!(content_type_for("JSONEachRow"), "application/json; charset=UTF-8");
        assert_eq!(content_type_for("RowBinary"), "application/octet-stream");
    }

    proptest::proptest! {
        #[test]
        fn decompressing_arbitrary_bytes_never_panics(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048)) {
            let _ = decompress_body(&Bytes::from(data), true);
        }

        #[test]
        fn read_only_checks_never_panic(sql in "\\PC*") {
            let _ = read_only_statement(&sql, &denied());
        }
    }
}
