//! The embedded ClickHouse engine: chDB's C library (`libchdb.so`) loaded at
//! run time, one connection per process, one call at a time. Calls for a
//! person waiting on a page go before background calls that wait
//! ([`Priority`]).
//!
//! chDB keeps one session per process: the current database is session state,
//! so [`Engine::query`] switches it under the same lock as the query itself.
//! Calls block; async callers go through `tokio::task::spawn_blocking`.

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

/// The open connection and the session state that goes with it.
struct Session {
    conn: *mut *mut c_void,
    current_database: Option<String>,
}

// SAFETY: the connection pointer is only used under the `Engine::session`
// mutex, and chDB connections may be used from any thread.
unsafe impl Send for Session {}

/// A handle to the process's embedded engine. Cloning shares it.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<EngineInner>,
}

struct EngineInner {
    api: &'static Api,
    data_dir: PathBuf,
    turns: Turns,
    session: Mutex<Option<Session>>,
}

/// Whose call it is. The engine runs one call at a time, so a lookup
/// waits for the call running; interactive calls also go before the
/// background calls waiting with them, so a page does not queue behind a
/// backlog of ingest batches and resolve steps. After
/// [`INTERACTIVE_STREAK`] interactive turns in a row a waiting background
/// call has its turn, so busy pages cannot stall ingest.
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

/// The queue for the engine: who runs, and who waits.
#[derive(Default)]
struct Turns {
    state: Mutex<TurnState>,
    changed: Condvar,
}

#[derive(Default)]
struct TurnState {
    running: bool,
    interactive_waiting: usize,
    background_waiting: usize,
    /// Interactive turns since the last background one.
    interactive_streak: usize,
}

impl TurnState {
    /// Whether a call of this kind may run now.
    fn may_run(&self, interactive: bool) -> bool {
        if self.running {
            return false;
        }
        let background_owed = self.background_waiting > 0 && self.interactive_streak >= INTERACTIVE_STREAK;
        if interactive {
            !background_owed
        } else {
            self.interactive_waiting == 0 || background_owed
        }
    }
}

/// The right to call the engine, given back when dropped.
struct Turn<'a>(&'a Turns);

impl Turns {
    fn lock(&self) -> MutexGuard<'_, TurnState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until no call runs and, for a background call, no interactive
    /// call waits (or the interactive streak is over).
    fn take(&self, priority: Priority) -> Turn<'_> {
        let mut state = self.lock();
        let interactive = priority == Priority::Interactive;
        if interactive {
            state.interactive_waiting += 1;
        } else {
            state.background_waiting += 1;
        }
        while !state.may_run(interactive) {
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        if interactive {
            state.interactive_waiting -= 1;
            state.interactive_streak += 1;
        } else {
            state.background_waiting -= 1;
            state.interactive_streak = 0;
        }
        state.running = true;
        Turn(self)
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.0.lock().running = false;
        // Every waiter checks again: an interactive one may be among them.
        self.0.changed.notify_all();
    }
}

/// The one engine of this process, kept so a second `open` on the same
/// directory shares it, and so it is closed before the process exits.
static OPEN_ENGINE: Mutex<Option<Engine>> = Mutex::new(None);
static API: OnceLock<Api> = OnceLock::new();

impl Engine {
    /// Opens the engine on `data_dir` (created if missing), loading the
    /// library from `library`. A second call in the same process with the same
    /// directory returns the engine already open.
    pub fn open(library: &Path, data_dir: &Path) -> Result<Engine, EngineError> {
        let data_dir = prepare_data_dir(data_dir)?;
        let mut open = OPEN_ENGINE.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(engine) = open.as_ref() {
            if engine.inner.session.lock().unwrap_or_else(|e| e.into_inner()).is_some() {
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
        let conn = connect(api, &data_dir)?;
        let engine = Engine {
            inner: Arc::new(EngineInner {
                api,
                data_dir,
                turns: Turns::default(),
                session: Mutex::new(Some(Session { conn, current_database: None })),
            }),
        };
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
        let _turn = self.inner.turns.take(priority);
        let mut guard = self.inner.session.lock().unwrap_or_else(|e| e.into_inner());
        let session = guard.as_mut().ok_or(EngineError::Closed)?;
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
        let names: Vec<*const c_char> = params.iter().map(|(n, _)| n.as_ptr().cast()).collect();
        let name_lens: Vec<usize> = params.iter().map(|(n, _)| n.len()).collect();
        let values: Vec<*const c_char> = params.iter().map(|(_, v)| v.as_ptr().cast()).collect();
        let value_lens: Vec<usize> = params.iter().map(|(_, v)| v.len()).collect();
        // SAFETY: `session.conn` is open (checked by the caller under the lock);
        // every buffer outlives the call and is passed with its length.
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

    /// Closes the connection; later queries fail with [`EngineError::Closed`].
    /// Safe to call more than once. The engine may be opened again afterwards.
    pub fn close(&self) {
        let mut guard = self.inner.session.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(session) = guard.take() {
            // SAFETY: the connection is open and no call is running (we hold the lock).
            unsafe { (self.inner.api.close)(session.conn) };
        }
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
        Ok(open) => open.as_ref().is_some_and(|e| e.inner.session.try_lock().map_or(true, |s| s.is_some())),
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

    /// The order in which `calls` get their turns when they all wait, in
    /// this order, for a call that is running.
    fn turn_order(calls: &[(Priority, &str)]) -> Vec<String> {
        let turns = Arc::new(Turns::default());
        let order = Arc::new(Mutex::new(Vec::new()));
        let running = turns.take(Priority::Background);
        let mut threads = Vec::new();
        let (mut background, mut interactive) = (0, 0);
        for &(priority, name) in calls {
            let (waiter, order, name) = (turns.clone(), order.clone(), name.to_owned());
            threads.push(std::thread::spawn(move || {
                let _turn = waiter.take(priority);
                order.lock().unwrap().push(name);
            }));
            match priority {
                Priority::Background => background += 1,
                Priority::Interactive => interactive += 1,
            }
            // Wait until this call waits too.
            loop {
                let state = turns.lock();
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
