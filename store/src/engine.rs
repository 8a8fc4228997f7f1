//! The embedded ClickHouse engine: chDB's C library (`libchdb.so`) loaded at
//! run time. One engine per process, on one data directory, with a few
//! connections to it: calls on different connections run in parallel, and
//! one connection is kept for the calls of a person waiting on a page
//! ([`Priority`]), so a page never queues behind ingest and lineage work.
//!
//! Each connection is a session of its own: the current database is
//! session state, so [`Engine::query`] switches it on the connection the
//! query runs on. Calls block; async callers go through
//! `tokio::task::spawn_blocking`.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};

/// The chDB release this build is tested with; `scripts/fetch-engine.sh`
/// fetches the same one.
pub const CHDB_VERSION: &str = include_str!("../chdb.version");

/// Where `scripts/fetch-engine.sh` puts the library: `$WAYBILL_CACHE_DIR`
/// (default `~/.cache/waybill`) + `/chdb/<version>/libchdb.so`.
pub fn default_library_path() -> PathBuf {
    let cache = std::env::var_os("WAYBILL_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/waybill")))
        .unwrap_or_else(|| PathBuf::from(".cache/waybill"));
    cache.join("chdb").join(CHDB_VERSION.trim()).join("libchdb.so")
}

/// Why the embedded engine could not be opened or answered.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(
        "the embedded ClickHouse engine (libchdb.so) was not found at {path}: run \
         `scripts/fetch-engine.sh` to fetch it from the npm registry package \
         @chdb/lib-linux-x64-gnu@{version}, or set store.embedded.library \
         (env WAYBILL_STORE__EMBEDDED__LIBRARY) to where libchdb.so is",
        version = CHDB_VERSION.trim()
    )]
    LibraryMissing { path: PathBuf },
    #[error("the embedded ClickHouse engine at {path} could not be loaded: {reason}; fetch it again with `scripts/fetch-engine.sh`")]
    LibraryUnusable { path: PathBuf, reason: String },
    #[error("the data directory {path} is not usable: {reason}; set store.embedded.path (env WAYBILL_STORE__EMBEDDED__PATH) to a writable directory")]
    DataDir { path: PathBuf, reason: String },
    #[error("the embedded engine is already open on {open} in this process and chDB allows one per process; use the same store.embedded.path ({requested} was asked for)")]
    AlreadyOpen { open: PathBuf, requested: PathBuf },
    #[error("the embedded engine refused to start on {path}: {reason}; is another waybill process using this data directory?")]
    Connect { path: PathBuf, reason: String },
    #[error("the embedded engine is closed")]
    Closed,
    /// An error reported by ClickHouse itself, with its numeric code.
    #[error("{message}")]
    Query { code: u32, message: String },
}

impl EngineError {
    /// The ClickHouse error code, as the server's HTTP interface would report it.
    pub fn clickhouse_code(&self) -> u32 {
        match self {
            EngineError::Query { code, .. } => *code,
            // 210 NETWORK_ERROR: the closest ClickHouse code for "cannot reach the engine"
            _ => 210,
        }
    }

    fn from_message(message: String) -> Self {
        let code = parse_error_code(&message).unwrap_or(1002);
        EngineError::Query { code, message }
    }
}

/// ClickHouse messages start with `Code: 60. DB::Exception: ...`.
pub(crate) fn parse_error_code(message: &str) -> Option<u32> {
    let rest = message.trim_start().strip_prefix("Code: ")?;
    let digits: &str = &rest[..rest.find(|c: char| !c.is_ascii_digit())?];
    digits.parse().ok()
}

/// What one call to the engine returned.
#[derive(Debug, Default)]
pub struct QueryOutput {
    pub data: Vec<u8>,
    pub rows_read: u64,
    pub bytes_read: u64,
    pub rows_written: u64,
    pub bytes_written: u64,
    pub elapsed_seconds: f64,
}

/// One query for the engine.
#[derive(Debug, Clone, Copy)]
pub struct EngineQuery<'a> {
    pub sql: &'a str,
    /// Output format used when the SQL has no FORMAT clause.
    pub format: &'a str,
    /// Database for unqualified names; `None` keeps the session's current one.
    pub database: Option<&'a str>,
    /// Query parameters bound to `{name:Type}` placeholders.
    pub params: &'a [(String, String)],
}

type ConnectFn = unsafe extern "C" fn(c_int, *mut *mut c_char) -> *mut *mut c_void;
type CloseFn = unsafe extern "C" fn(*mut *mut c_void);
type QueryWithParamsFn = unsafe extern "C" fn(
    *mut c_void,
    *const c_char,
    usize,
    *const c_char,
    usize,
    *const *const c_char,
    *const usize,
    *const *const c_char,
    *const usize,
    usize,
) -> *mut c_void;
type ResultPtrFn = unsafe extern "C" fn(*mut c_void) -> *const c_char;
type ResultSizeFn = unsafe extern "C" fn(*mut c_void) -> usize;
type ResultU64Fn = unsafe extern "C" fn(*mut c_void) -> u64;
type ResultF64Fn = unsafe extern "C" fn(*mut c_void) -> f64;
type DestroyFn = unsafe extern "C" fn(*mut c_void);

/// The C functions we use, resolved once from the loaded library.
struct Api {
    connect: ConnectFn,
    close: CloseFn,
    query: QueryWithParamsFn,
    buffer: ResultPtrFn,
    length: ResultSizeFn,
    error: ResultPtrFn,
    rows_read: ResultU64Fn,
    bytes_read: ResultU64Fn,
    rows_written: ResultU64Fn,
    bytes_written: ResultU64Fn,
    elapsed: ResultF64Fn,
    destroy: DestroyFn,
    // Kept loaded for the life of the process: chDB cannot be unloaded safely.
    _library: libloading::Library,
}

impl Api {
    fn load(path: &Path) -> Result<Api, EngineError> {
        if !path.is_file() {
            return Err(EngineError::LibraryMissing { path: path.to_owned() });
        }
        let unusable = |reason: String| EngineError::LibraryUnusable { path: path.to_owned(), reason };
        // SAFETY: loading runs the library's initializers; libchdb.so is the
        // pinned chDB build whose initializers only set up ClickHouse globals.
        let library = unsafe { libloading::Library::new(path) }.map_err(|e| unusable(e.to_string()))?;
        macro_rules! symbol {
            ($name:literal) => {
                // SAFETY: the signatures above follow chdb.h of the pinned release.
                *unsafe { library.get(concat!($name, "\0").as_bytes()) }
                    .map_err(|e| unusable(format!("missing symbol {}: {e}", $name)))?
            };
        }
        Ok(Api {
            connect: symbol!("chdb_connect"),
            close: symbol!("chdb_close_conn"),
            query: symbol!("chdb_query_with_params_n"),
            buffer: symbol!("chdb_result_buffer"),
            length: symbol!("chdb_result_length"),
            error: symbol!("chdb_result_error"),
            rows_read: symbol!("chdb_result_rows_read"),
            bytes_read: symbol!("chdb_result_bytes_read"),
            rows_written: symbol!("chdb_result_rows_written"),
            bytes_written: symbol!("chdb_result_bytes_written"),
            elapsed: symbol!("chdb_result_elapsed"),
            destroy: symbol!("chdb_destroy_query_result"),
            _library: library,
        })
    }
}

/// An open connection and the session state that goes with it.
struct Session {
    conn: *mut *mut c_void,
    current_database: Option<String>,
}

// SAFETY: a connection is used by one call at a time (it is taken out of
// the pool for the call), and chDB connections may be used from any thread.
unsafe impl Send for Session {}

/// Connections the engine opens unless told otherwise
/// (`store.embedded.connections`).
pub const DEFAULT_CONNECTIONS: usize = 4;

/// chDB is reported not to keep query parameters apart between connections
/// that run at once (chdb-node's multi-connection change serializes them
/// for that reason), so calls with parameters (rare: the SQL endpoint's
/// checks and users' `param_*`) take turns among themselves.
static PARAMETERIZED: Mutex<()> = Mutex::new(());

/// A handle to the process's embedded engine. Cloning shares it.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<EngineInner>,
}

struct EngineInner {
    api: &'static Api,
    data_dir: PathBuf,
    pool: Pool,
}

/// Whose call it is. Background calls use all connections but one, which
/// is kept for interactive calls, so a page waits for another page at
/// most, never for ingest batches and resolve steps. Interactive calls
/// also go before the background calls waiting with them; after
/// [`INTERACTIVE_STREAK`] interactive turns in a row a waiting background
/// call has its turn, so busy pages cannot stall ingest. With one
/// connection every call takes its turn on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Priority {
    /// Ingest, lineage, alerts, migrations, and users' own SQL.
    #[default]
    Background,
    /// Waybill's pages and JSON API.
    Interactive,
}

/// Interactive turns in a row before a waiting background call goes.
pub const INTERACTIVE_STREAK: usize = 4;

/// The engine's connections: which are free, who runs, and who waits.
struct Pool {
    state: Mutex<PoolState>,
    changed: Condvar,
}

struct PoolState {
    /// Connections not in a call.
    idle: Vec<Session>,
    /// Connections open, idle or in a call.
    open: usize,
    running_background: usize,
    interactive_waiting: usize,
    background_waiting: usize,
    /// Interactive turns since the last background one.
    interactive_streak: usize,
    /// Set by [`Engine::close`]: no call starts any more.
    closed: bool,
}

impl PoolState {
    fn new(sessions: Vec<Session>) -> Self {
        PoolState {
            open: sessions.len(),
            idle: sessions,
            running_background: 0,
            interactive_waiting: 0,
            background_waiting: 0,
            interactive_streak: 0,
            closed: false,
        }
    }

    /// Whether a background call would find a connection it may use.
    fn background_may_start(&self) -> bool {
        let background_connections = self.open.saturating_sub(1).max(1);
        !self.idle.is_empty() && self.running_background < background_connections
    }

    /// Whether a call of this kind may run now.
    fn may_run(&self, interactive: bool) -> bool {
        if self.idle.is_empty() {
            return false;
        }
        let background_owed =
            self.background_waiting > 0 && self.interactive_streak >= INTERACTIVE_STREAK && self.background_may_start();
        if interactive {
            !background_owed
        } else {
            self.background_may_start() && (self.interactive_waiting == 0 || background_owed)
        }
    }
}

/// A connection taken for one call, given back when dropped.
struct Turn<'a> {
    pool: &'a Pool,
    session: Option<Session>,
    interactive: bool,
}

impl Pool {
    fn new(sessions: Vec<Session>) -> Self {
        Pool { state: Mutex::new(PoolState::new(sessions)), changed: Condvar::new() }
    }

    fn lock(&self) -> MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for a connection this call may use and, for a background call,
    /// until no interactive call waits (or the interactive streak is over).
    fn take(&self, priority: Priority) -> Result<Turn<'_>, EngineError> {
        let mut state = self.lock();
        let interactive = priority == Priority::Interactive;
        if interactive {
            state.interactive_waiting += 1;
        } else {
            state.background_waiting += 1;
        }
        while !state.closed && !state.may_run(interactive) {
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        if interactive {
            state.interactive_waiting -= 1;
        } else {
            state.background_waiting -= 1;
        }
        if state.closed {
            return Err(EngineError::Closed);
        }
        if interactive {
            state.interactive_streak += 1;
        } else {
            state.interactive_streak = 0;
            state.running_background += 1;
        }
        let session = state.idle.pop().expect("may_run checked for an idle connection");
        Ok(Turn { pool: self, session: Some(session), interactive })
    }
}

impl Turn<'_> {
    fn session(&mut self) -> &mut Session {
        self.session.as_mut().expect("a turn holds its connection until dropped")
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut state = self.pool.lock();
        if !self.interactive {
            state.running_background -= 1;
        }
        state.idle.extend(self.session.take());
        drop(state);
        // Every waiter checks again: an interactive one may be among them.
        self.pool.changed.notify_all();
    }
}

/// The one engine of this process, kept so a second `open` on the same
/// directory shares it, and so it is closed before the process exits.
static OPEN_ENGINE: Mutex<Option<Engine>> = Mutex::new(None);
static API: OnceLock<Api> = OnceLock::new();

impl Engine {
    /// Opens the engine on `data_dir` (created if missing) with `connections`
    /// connections (at least one), loading the library from `library`. A
    /// second call in the same process with the same directory returns the
    /// engine already open, with the connections it has.
    pub fn open(library: &Path, data_dir: &Path, connections: usize) -> Result<Engine, EngineError> {
        let data_dir = prepare_data_dir(data_dir)?;
        let mut open = OPEN_ENGINE.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(engine) = open.as_ref() {
            if !engine.inner.pool.lock().closed {
                if engine.inner.data_dir == data_dir {
                    return Ok(engine.clone());
                }
                return Err(EngineError::AlreadyOpen {
                    open: engine.inner.data_dir.clone(),
                    requested: data_dir,
                });
            }
        }
        let api = match API.get() {
            Some(api) => api,
            None => {
                let api = Api::load(library)?;
                API.get_or_init(|| api)
            }
        };
        let mut sessions = Vec::new();
        for _ in 0..connections.max(1) {
            match connect(api, &data_dir) {
                Ok(conn) => sessions.push(Session { conn, current_database: None }),
                Err(err) => {
                    for session in sessions {
                        // SAFETY: opened just above and used by no call.
                        unsafe { (api.close)(session.conn) };
                    }
                    return Err(err);
                }
            }
        }
        let engine = Engine { inner: Arc::new(EngineInner { api, data_dir, pool: Pool::new(sessions) }) };
        if open.is_none() {
            // SAFETY: registering a plain extern "C" function with glibc's on_exit.
            unsafe { on_exit(exit_without_engine_destructors, std::ptr::null_mut()) };
        }
        *open = Some(engine.clone());
        Ok(engine)
    }

    /// The directory holding the engine's data.
    pub fn data_dir(&self) -> &Path {
        &self.inner.data_dir
    }

    /// Runs one query and returns its whole output, as background work.
    /// Blocks the calling thread.
    pub fn query(&self, query: EngineQuery<'_>) -> Result<QueryOutput, EngineError> {
        self.query_as(Priority::Background, query)
    }

    /// Runs one query in its turn for `priority` and returns its whole
    /// output. Blocks the calling thread.
    pub fn query_as(&self, priority: Priority, query: EngineQuery<'_>) -> Result<QueryOutput, EngineError> {
        let mut turn = self.inner.pool.take(priority)?;
        let session = turn.session();
        if let Some(database) = query.database {
            if session.current_database.as_deref() != Some(database) {
                let use_sql = format!("USE {}", crate::sql::quote_identifier(database));
                self.call(session, &use_sql, "TabSeparated", &[])?;
                session.current_database = Some(database.to_owned());
            }
        }
        self.call(session, query.sql, query.format, query.params)
    }

    fn call(
        &self,
        session: &Session,
        sql: &str,
        format: &str,
        params: &[(String, String)],
    ) -> Result<QueryOutput, EngineError> {
        let api = self.inner.api;
        let _parameterized = (!params.is_empty()).then(|| PARAMETERIZED.lock().unwrap_or_else(|e| e.into_inner()));
        let names: Vec<*const c_char> = params.iter().map(|(n, _)| n.as_ptr().cast()).collect();
        let name_lens: Vec<usize> = params.iter().map(|(n, _)| n.len()).collect();
        let values: Vec<*const c_char> = params.iter().map(|(_, v)| v.as_ptr().cast()).collect();
        let value_lens: Vec<usize> = params.iter().map(|(_, v)| v.len()).collect();
        // SAFETY: `session.conn` is open (the pool hands out open connections
        // only) and used by this call alone; every buffer outlives the call
        // and is passed with its length.
        let result = unsafe {
            (api.query)(
                *session.conn,
                sql.as_ptr().cast(),
                sql.len(),
                format.as_ptr().cast(),
                format.len(),
                if params.is_empty() { std::ptr::null() } else { names.as_ptr() },
                if params.is_empty() { std::ptr::null() } else { name_lens.as_ptr() },
                if params.is_empty() { std::ptr::null() } else { values.as_ptr() },
                if params.is_empty() { std::ptr::null() } else { value_lens.as_ptr() },
                params.len(),
            )
        };
        if result.is_null() {
            return Err(EngineError::from_message("the embedded engine returned no result".into()));
        }
        // SAFETY: `result` is a live chdb_result until destroyed below; the
        // buffer is copied out before that.
        let output = unsafe {
            let error = (api.error)(result);
            if !error.is_null() {
                let message = CStr::from_ptr(error).to_string_lossy().trim_end().to_owned();
                Err(EngineError::from_message(message))
            } else {
                let length = (api.length)(result);
                let buffer = (api.buffer)(result);
                let data = if length == 0 || buffer.is_null() {
                    Vec::new()
                } else {
                    std::slice::from_raw_parts(buffer.cast::<u8>(), length).to_vec()
                };
                Ok(QueryOutput {
                    data,
                    rows_read: (api.rows_read)(result),
                    bytes_read: (api.bytes_read)(result),
                    rows_written: (api.rows_written)(result),
                    bytes_written: (api.bytes_written)(result),
                    elapsed_seconds: (api.elapsed)(result),
                })
            }
        };
        // SAFETY: destroyed exactly once, after the last use above.
        unsafe { (api.destroy)(result) };
        output
    }

    /// Closes the connections once the calls running have returned; later
    /// queries fail with [`EngineError::Closed`]. Safe to call more than
    /// once. The engine may be opened again afterwards.
    pub fn close(&self) {
        let pool = &self.inner.pool;
        let mut state = pool.lock();
        state.closed = true;
        pool.changed.notify_all();
        while state.idle.len() < state.open {
            state = pool.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        for session in state.idle.drain(..) {
            // SAFETY: the connection is open and back in the pool, so no call uses it.
            unsafe { (self.inner.api.close)(session.conn) };
        }
        state.open = 0;
    }
}

fn prepare_data_dir(path: &Path) -> Result<PathBuf, EngineError> {
    let fail = |reason: String| EngineError::DataDir { path: path.to_owned(), reason };
    std::fs::create_dir_all(path).map_err(|e| fail(e.to_string()))?;
    let path = path.canonicalize().map_err(|e| fail(e.to_string()))?;
    let probe = path.join(".waybill-write-check");
    std::fs::write(&probe, b"ok").map_err(|e| fail(format!("cannot write in it: {e}")))?;
    let _ = std::fs::remove_file(&probe);
    Ok(path)
}

fn connect(api: &Api, data_dir: &Path) -> Result<*mut *mut c_void, EngineError> {
    let mut path_arg = b"--path=".to_vec();
    path_arg.extend_from_slice(data_dir.as_os_str().as_bytes());
    let connect_error = |reason: &str| EngineError::Connect { path: data_dir.to_owned(), reason: reason.to_owned() };
    let args = [
        CString::new("clickhouse").expect("no NUL"),
        CString::new(path_arg).map_err(|_| connect_error("the path contains a NUL byte"))?,
    ];
    let mut argv: Vec<*mut c_char> = args.iter().map(|a| a.as_ptr().cast_mut()).collect();
    // SAFETY: argv holds valid NUL-terminated strings that outlive the call.
    let conn = unsafe { (api.connect)(argv.len() as c_int, argv.as_mut_ptr()) };
    // SAFETY: chdb_connect returns a pointer to the connection slot, or null.
    if conn.is_null() || unsafe { (*conn).is_null() } {
        return Err(connect_error("chdb_connect returned no connection"));
    }
    Ok(conn)
}

extern "C" {
    /// glibc: like `atexit`, but the handler receives the exit status.
    fn on_exit(function: extern "C" fn(c_int, *mut c_void), arg: *mut c_void) -> c_int;
}

/// Runs at `exit` while an engine may still be open (code paths that did
/// not call [`Engine::close`], such as a test harness). chDB's static
/// destructors abort or crash when a connection is open, and closing it
/// this late crashes too, since destructors registered after this handler
/// have already run. Every acknowledged insert is already on disk, so flush
/// C stdio and leave with the same status, skipping those destructors.
extern "C" fn exit_without_engine_destructors(status: c_int, _arg: *mut c_void) {
    let still_open = match OPEN_ENGINE.try_lock() {
        Ok(open) => open.as_ref().is_some_and(|e| e.inner.pool.state.try_lock().map_or(true, |s| !s.closed)),
        Err(_) => true,
    };
    if still_open {
        // Rust's stdout was flushed when main returned; flushing it here could
        // wait forever on a lock held by a thread that called `exit`.
        // SAFETY: flushing C stdio and leaving the process; nothing runs after.
        unsafe {
            libc::fflush(std::ptr::null_mut());
            libc::_exit(status);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_are_read_from_clickhouse_messages() {
        assert_eq!(parse_error_code("Code: 60. DB::Exception: Unknown table"), Some(60));
        assert_eq!(parse_error_code("Code: 164. DB::Exception: readonly"), Some(164));
        assert_eq!(parse_error_code("something else"), None);
        assert_eq!(parse_error_code("Code: x."), None);
    }

    #[test]
    fn a_missing_library_names_the_fetch_script() {
        let err = Api::load(Path::new("/nonexistent/libchdb.so")).err().expect("must fail");
        let text = err.to_string();
        assert!(text.contains("scripts/fetch-engine.sh"), "{text}");
        assert!(text.contains("/nonexistent/libchdb.so"), "{text}");
        assert!(text.contains(CHDB_VERSION.trim()), "{text}");
    }

    /// A pool of `n` connections that are never called.
    fn pool_of(n: usize) -> Pool {
        Pool::new((0..n).map(|_| Session { conn: std::ptr::null_mut(), current_database: None }).collect())
    }

    /// The order in which `calls` get their turns when they all wait, in
    /// this order, for a call that is running on the only connection.
    fn turn_order(calls: &[(Priority, &str)]) -> Vec<String> {
        let pool = Arc::new(pool_of(1));
        let order = Arc::new(Mutex::new(Vec::new()));
        let running = pool.take(Priority::Background).unwrap();
        let mut threads = Vec::new();
        let (mut background, mut interactive) = (0, 0);
        for &(priority, name) in calls {
            let (waiter, order, name) = (pool.clone(), order.clone(), name.to_owned());
            threads.push(std::thread::spawn(move || {
                let _turn = waiter.take(priority).unwrap();
                order.lock().unwrap().push(name);
            }));
            match priority {
                Priority::Background => background += 1,
                Priority::Interactive => interactive += 1,
            }
            // Wait until this call waits too.
            loop {
                let state = pool.lock();
                if state.background_waiting == background && state.interactive_waiting == interactive {
                    break;
                }
                drop(state);
                std::thread::yield_now();
            }
        }
        drop(running);
        for thread in threads {
            thread.join().unwrap();
        }
        let order = order.lock().unwrap().clone();
        order
    }

    #[test]
    fn background_calls_leave_one_connection_to_pages() {
        let pool = pool_of(4);
        let background: Vec<Turn> = (0..3).map(|_| pool.take(Priority::Background).unwrap()).collect();
        assert!(!pool.lock().may_run(false), "a fourth background call waits");
        assert!(pool.lock().may_run(true), "a page runs beside them");
        let page = pool.take(Priority::Interactive).unwrap();
        assert!(!pool.lock().may_run(true), "every connection is in use");
        drop(page);
        drop(background);
        assert_eq!(pool.lock().idle.len(), 4);
        assert_eq!(pool.lock().running_background, 0);
    }

    #[test]
    fn with_one_connection_every_call_takes_its_turn_on_it() {
        let pool = pool_of(1);
        let batch = pool.take(Priority::Background).unwrap();
        assert!(!pool.lock().may_run(true) && !pool.lock().may_run(false));
        drop(batch);
        assert!(pool.lock().may_run(false), "a background call may use the only connection");
    }

    #[test]
    fn a_closed_engine_refuses_the_calls_that_wait_for_it() {
        let pool = Arc::new(pool_of(1));
        let running = pool.take(Priority::Background).unwrap();
        let waiter = std::thread::spawn({
            let pool = pool.clone();
            move || pool.take(Priority::Interactive).err().map(|e| e.to_string())
        });
        while pool.lock().interactive_waiting == 0 {
            std::thread::yield_now();
        }
        pool.lock().closed = true;
        pool.changed.notify_all();
        assert_eq!(waiter.join().unwrap().as_deref(), Some("the embedded engine is closed"));
        drop(running);
    }

    #[test]
    fn an_interactive_call_goes_before_the_background_calls_waiting_with_it() {
        let mut calls: Vec<(Priority, &str)> = ["b1", "b2", "b3", "b4", "b5", "b6"].iter().map(|n| (Priority::Background, *n)).collect();
        calls.push((Priority::Interactive, "page"));
        let order = turn_order(&calls);
        assert_eq!(order.len(), 7);
        assert_eq!(order[0], "page", "{order:?}");
    }

    #[test]
    fn a_background_call_goes_after_a_streak_of_interactive_turns() {
        let mut calls = vec![(Priority::Background, "batch")];
        calls.extend(["p1", "p2", "p3", "p4", "p5", "p6"].iter().map(|n| (Priority::Interactive, *n)));
        let order = turn_order(&calls);
        // The pages may go in any order among themselves; the batch goes fifth.
        assert_eq!(order.iter().position(|n| n == "batch"), Some(INTERACTIVE_STREAK), "{order:?}");
    }

    #[test]
    fn an_unwritable_data_dir_is_refused_with_the_setting_to_change() {
        let err = prepare_data_dir(Path::new("/proc/waybill-data")).expect_err("must fail");
        assert!(err.to_string().contains("store.embedded.path"), "{err}");
    }
}
