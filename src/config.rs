//! The config file (YAML) and its `WAYBILL_*` environment overrides.
//!
//! An override names a path in the file with `__` between levels:
//! `WAYBILL_STORE__RETENTION_DAYS=14` sets `store.retention_days`. Values are
//! read as YAML scalars (`14`, `true`, `server`), lists and maps in YAML flow
//! style (`[{name: sap-erp, token: ...}]`). `WAYBILL_CONFIG` names the file
//! itself.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use waybill_store::StoreConfig;

/// Everything `waybill` can be told. Every field has a default, so an empty
/// file (or none) runs an embedded store on `data/clickhouse`.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub http: HttpConfig,
    pub otlp: OtlpConfig,
    pub pipeline: PipelineSettings,
    pub sql_endpoint: SqlEndpointConfig,
    pub store: StoreConfig,
    pub log: LogConfig,
    pub telemetry: TelemetryConfig,
    pub lineage: waybill_lineage::LineageConfig,
    pub alerts: waybill_alerts::AlertsConfig,
    pub dashboards: waybill_dashboards::DashboardsConfig,
}

/// Waybill's own traces.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// OTLP/HTTP endpoint (e.g. `http://collector:4318`) for Waybill's own
    /// spans; unset (the default): not exported.
    pub otlp_endpoint: Option<String>,
}

/// The web server: health checks now, pages and the JSON API later.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address of the web server (`/healthz`, `/readyz`).
    pub listen: SocketAddr,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig { listen: SocketAddr::from(([127, 0, 0, 1], 8080)) }
    }
}

/// The OTLP receivers that exporters send to.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpConfig {
    /// OTLP/gRPC (TraceService, LogsService); the specification's port is 4317.
    pub grpc_listen: SocketAddr,
    /// OTLP/HTTP (`/v1/traces`, `/v1/logs`); the specification's port is 4318.
    pub http_listen: SocketAddr,
    /// Largest request body as sent, compressed or not (larger: 413).
    pub max_body_bytes: usize,
    /// Largest body after gzip or zstd decompression (larger: 413), and the largest
    /// gRPC message (larger: OUT_OF_RANGE).
    pub max_decompressed_bytes: usize,
    /// Attributes kept per record, resource, scope, event or link; the rest
    /// are dropped and counted in waybill_collector_truncated_attributes_total.
    pub max_attributes_per_record: usize,
    /// Longest attribute string value in bytes; longer ones are cut (counted).
    pub max_attribute_value_bytes: usize,
    /// Encoded (decompressed) bytes of the requests being decoded, converted
    /// and stored at once. A request in flight holds about ten times its
    /// encoded size, so this bounds the service's memory under overload;
    /// past it requests wait up to 0.5 s, then get 429 / RESOURCE_EXHAUSTED.
    pub max_inflight_bytes: usize,
    /// Sending systems and their bearer tokens. Empty (the default): no
    /// token is asked for. Otherwise every request needs one, and the
    /// source's name is stored on each row (column WaybillSource).
    pub sources: Vec<SourceToken>,
}

/// One sending system allowed to export to Waybill.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SourceToken {
    /// Name recorded on its rows, e.g. `sap-erp` or `wms-eu`.
    pub name: String,
    /// At least 16 characters; sent as `Authorization: Bearer <token>`.
    #[serde(deserialize_with = "waybill_store::config::lenient_string")]
    pub token: String,
}

impl Default for OtlpConfig {
    fn default() -> Self {
        OtlpConfig {
            grpc_listen: SocketAddr::from(([127, 0, 0, 1], 4317)),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 4318)),
            max_body_bytes: 16 << 20,
            max_decompressed_bytes: 64 << 20,
            max_attributes_per_record: 128,
            max_attribute_value_bytes: 8192,
            max_inflight_bytes: 12 << 20,
            sources: Vec::new(),
        }
    }
}

/// How received records are batched into the store.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineSettings {
    /// A batch holds at most this many records; it is written as soon as
    /// nothing else is waiting...
    pub max_batch_rows: usize,
    /// ...or requests of this many bytes (their OTLP protobuf size)...
    pub max_batch_bytes: usize,
    /// ...or once its first request has waited this many milliseconds in
    /// the queue for more to join it (0: never linger). Batches grow with
    /// load either way, since the next one gathers while one is written;
    /// lingering makes fewer, larger INSERTs at moderate rates.
    pub flush_interval_ms: u64,
    /// Linger only while requests arrive during writes and batches stay
    /// small, up to `flush_interval_ms`, halving after each batch whose
    /// requests all came while nothing was being written (none after about
    /// four); a lingering batch also goes once no request came for twice
    /// the usual gap between them. An exporter sending alone, one request
    /// at a time, never sends during a write, so it is not held back;
    /// beside exporters that do, its requests wait with theirs. `false`:
    /// always linger the whole `flush_interval_ms`.
    pub adaptive_flush: bool,
    /// Records queued or being written at most; beyond it exporters get
    /// 429 / RESOURCE_EXHAUSTED and retry, instead of memory growing.
    pub max_queued_rows: usize,
    /// Seconds a failed batch is retried before exporters get 503 / UNAVAILABLE.
    pub retry_seconds: u64,
    /// Writers: with 2, a full batch is written beside the one being
    /// written, which is faster under overload and holds more memory.
    pub writers: usize,
}

impl Default for PipelineSettings {
    fn default() -> Self {
        let defaults = crate::pipeline::PipelineConfig::default();
        PipelineSettings {
            max_batch_rows: defaults.max_batch_rows,
            max_batch_bytes: defaults.max_batch_bytes,
            flush_interval_ms: defaults.flush_interval.as_millis() as u64,
            adaptive_flush: defaults.adaptive_flush,
            max_queued_rows: defaults.max_queued_rows,
            retry_seconds: defaults.retry_for.as_secs(),
            writers: defaults.writers,
        }
    }
}

impl OtlpConfig {
    pub fn sources(&self) -> waybill_collector::auth::Sources {
        waybill_collector::auth::Sources::new(self.sources.iter().map(|s| (s.name.clone(), s.token.clone())))
    }

    pub fn attribute_limits(&self) -> waybill_collector::validate::AttributeLimits {
        waybill_collector::validate::AttributeLimits {
            max_attributes: self.max_attributes_per_record,
            max_value_bytes: self.max_attribute_value_bytes,
        }
    }
}

impl PipelineSettings {
    pub fn settings(&self) -> crate::pipeline::PipelineConfig {
        crate::pipeline::PipelineConfig {
            max_batch_rows: self.max_batch_rows,
            max_batch_bytes: self.max_batch_bytes,
            flush_interval: std::time::Duration::from_millis(self.flush_interval_ms),
            adaptive_flush: self.adaptive_flush,
            max_queued_rows: self.max_queued_rows,
            retry_for: std::time::Duration::from_secs(self.retry_seconds),
            writers: self.writers,
            ..crate::pipeline::PipelineConfig::default()
        }
    }
}

/// A read-only ClickHouse HTTP endpoint over the embedded store, for
/// Grafana's ClickHouse data source or `clickhouse-client` over HTTP.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SqlEndpointConfig {
    /// Off by default.
    pub enabled: bool,
    pub listen: SocketAddr,
    /// Required when enabled, at least 16 characters. Clients send it as a
    /// bearer token, as the basic-auth password or as `X-ClickHouse-Key`.
    #[serde(deserialize_with = "waybill_store::config::lenient_optional_string")]
    pub token: Option<String>,
}

impl Default for SqlEndpointConfig {
    fn default() -> Self {
        SqlEndpointConfig { enabled: false, listen: SocketAddr::from(([127, 0, 0, 1], 8124)), token: None }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A `tracing` filter: `info`, `debug`, `waybill_store=debug,info`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { level: "info".into() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config {origin}: {source}")]
    Parse { origin: String, source: serde_yaml::Error },
    #[error("environment variable {var}: {reason}")]
    Env { var: String, reason: String },
    #[error("invalid config: {0}")]
    Invalid(String),
}

const ENV_PREFIX: &str = "WAYBILL_";

/// Variables that configure the tooling, not the file's settings.
const ENV_NOT_SETTINGS: &[&str] = &["WAYBILL_CONFIG", "WAYBILL_CACHE_DIR"];

impl Config {
    /// Reads `path` (if any), applies `WAYBILL_*` overrides from `env`, and validates.
    pub fn load(path: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> Result<Config, ConfigError> {
        let (text, origin) = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
                (text, format!("file {}", path.display()))
            }
            None => (String::new(), "defaults".to_owned()),
        };
        let mut tree: serde_yaml::Value =
            serde_yaml::from_str(&text).map_err(|source| ConfigError::Parse { origin: origin.clone(), source })?;
        let empty_document = tree.is_null();
        if empty_document {
            tree = serde_yaml::Value::Mapping(Default::default());
        }
        let mut overridden = Vec::new();
        let mut env: Vec<(String, String)> = env.into_iter().filter(|(k, _)| k.starts_with(ENV_PREFIX)).collect();
        env.sort();
        for (var, value) in env {
            if ENV_NOT_SETTINGS.contains(&var.as_str()) {
                continue;
            }
            apply_override(&mut tree, &var, &value)?;
            overridden.push(var);
        }
        // Without overrides, parse the text itself so errors carry line numbers.
        let config: Config = if overridden.is_empty() && !empty_document {
            serde_yaml::from_str(&text)
        } else {
            serde_yaml::from_value(tree)
        }
        .map_err(|source| {
            let origin =
                if overridden.is_empty() { origin } else { format!("{origin} with {}", overridden.join(", ")) };
            ConfigError::Parse { origin, source }
        })?;
        config.validate()?;
        Ok(config)
    }

    /// A copy safe to print: secrets replaced by `<redacted>`.
    pub fn redacted(&self) -> Config {
        let mut config = self.clone();
        if let Some(token) = config.sql_endpoint.token.as_mut() {
            *token = "<redacted>".into();
        }
        for source in &mut config.otlp.sources {
            source.token = "<redacted>".into();
        }
        if !config.store.server.password.is_empty() {
            config.store.server.password = "<redacted>".into();
        }
        let auth = &mut config.dashboards.auth;
        if let Some(secret) = auth.session_secret.as_mut() {
            *secret = "<redacted>".into();
        }
        for user in &mut auth.users {
            if let Some(hash) = user.password_hash.as_mut() {
                *hash = "<redacted>".into();
            }
        }
        for target in config.dashboards.replay.values_mut() {
            target.headers.values_mut().for_each(|value| *value = "<redacted>".into());
        }
        config
    }

    /// Checks what serde cannot; messages say which setting to change.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.store.validate().map_err(|e| ConfigError::Invalid(e.to_string()))?;
        self.lineage.validate().map_err(ConfigError::Invalid)?;
        self.alerts.validate().map_err(ConfigError::Invalid)?;
        self.dashboards.validate().map_err(ConfigError::Invalid)?;
        if self.sql_endpoint.enabled {
            if self.store.mode != waybill_store::StoreMode::Embedded {
                return Err(ConfigError::Invalid(
                    "sql_endpoint serves the embedded store; with store.mode: server, point SQL clients at the ClickHouse server itself".into(),
                ));
            }
            match &self.sql_endpoint.token {
                Some(token) if token.chars().count() >= 16 => {}
                _ => {
                    return Err(ConfigError::Invalid(
                        "sql_endpoint.token must be set (at least 16 characters) when sql_endpoint.enabled is true".into(),
                    ))
                }
            }
        }
        if self.otlp.max_body_bytes == 0 || self.otlp.max_decompressed_bytes < self.otlp.max_body_bytes {
            return Err(ConfigError::Invalid(
                "otlp.max_body_bytes must be positive and otlp.max_decompressed_bytes at least as large".into(),
            ));
        }
        if self.otlp.max_inflight_bytes == 0 {
            return Err(ConfigError::Invalid("otlp.max_inflight_bytes must be positive".into()));
        }
        if self.otlp.max_attributes_per_record == 0 || self.otlp.max_attribute_value_bytes == 0 {
            return Err(ConfigError::Invalid(
                "otlp.max_attributes_per_record and otlp.max_attribute_value_bytes must be positive".into(),
            ));
        }
        for (i, source) in self.otlp.sources.iter().enumerate() {
            if source.name.trim().is_empty() || source.token.chars().count() < 16 {
                return Err(ConfigError::Invalid(format!(
                    "otlp.sources[{i}] needs a name and a token of at least 16 characters"
                )));
            }
            if self.otlp.sources[..i].iter().any(|other| other.token == source.token) {
                return Err(ConfigError::Invalid(format!(
                    "otlp.sources[{i}] ({}) reuses another source's token; give each source its own",
                    source.name
                )));
            }
        }
        if let Some(endpoint) = &self.telemetry.otlp_endpoint {
            if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                return Err(ConfigError::Invalid(format!(
                    "telemetry.otlp_endpoint {endpoint:?} must be an http:// or https:// URL of an OTLP/HTTP receiver"
                )));
            }
        }
        let p = &self.pipeline;
        if p.max_batch_rows == 0 || p.max_queued_rows < p.max_batch_rows || p.max_queued_rows > u32::MAX as usize {
            return Err(ConfigError::Invalid(
                "pipeline.max_batch_rows must be positive and pipeline.max_queued_rows at least as large (and below 4294967295)".into(),
            ));
        }
        if p.flush_interval_ms > 10_000 {
            return Err(ConfigError::Invalid(format!(
                "pipeline.flush_interval_ms must be at most 10000 (exporters time out after 10 s by default), got {}",
                p.flush_interval_ms
            )));
        }
        if !(1..=16).contains(&p.writers) {
            return Err(ConfigError::Invalid(format!("pipeline.writers must be between 1 and 16, got {}", p.writers)));
        }
        let mut listeners = vec![
            ("http.listen", self.http.listen),
            ("otlp.grpc_listen", self.otlp.grpc_listen),
            ("otlp.http_listen", self.otlp.http_listen),
        ];
        if self.sql_endpoint.enabled {
            listeners.push(("sql_endpoint.listen", self.sql_endpoint.listen));
        }
        for (i, (name, address)) in listeners.iter().enumerate() {
            if let Some((other, _)) = listeners[..i].iter().find(|(_, a)| a == address && address.port() != 0) {
                return Err(ConfigError::Invalid(format!(
                    "{name} and {other} are both {address}; give each server its own port"
                )));
            }
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .map_err(|e| ConfigError::Invalid(format!("log.level {:?} is not a valid filter: {e}", self.log.level)))?;
        Ok(())
    }
}

/// Sets the value at the path named by `var` (`WAYBILL_A__B_C` → `a.b_c`).
fn apply_override(tree: &mut serde_yaml::Value, var: &str, value: &str) -> Result<(), ConfigError> {
    let env_error = |reason: String| ConfigError::Env { var: var.to_owned(), reason };
    let path: Vec<String> = var[ENV_PREFIX.len()..].split("__").map(str::to_ascii_lowercase).collect();
    if path.iter().any(String::is_empty) {
        return Err(env_error("name a setting, e.g. WAYBILL_STORE__RETENTION_DAYS for store.retention_days".into()));
    }
    // A typed scalar only when it reads back as the same text: a token of 20
    // digits or `0x1f` stays text instead of becoming a rounded number.
    // Lists and maps are given in YAML flow style: `[{name: a, token: b}]`.
    let parsed: serde_yaml::Value = serde_yaml::from_str(value)
        .ok()
        .filter(|v: &serde_yaml::Value| {
            if v.is_mapping() || v.is_sequence() {
                value.trim_start().starts_with(['[', '{'])
            } else {
                serde_yaml::to_string(v).is_ok_and(|text| text.trim_end() == value)
            }
        })
        .unwrap_or_else(|| serde_yaml::Value::String(value.to_owned()));
    let mut node = tree;
    for (i, key) in path.iter().enumerate() {
        let map = match node {
            serde_yaml::Value::Mapping(map) => map,
            serde_yaml::Value::Null => {
                *node = serde_yaml::Value::Mapping(Default::default());
                node.as_mapping_mut().expect("just set")
            }
            _ => return Err(env_error(format!("{} is not a section", path[..i].join(".")))),
        };
        let key = serde_yaml::Value::String(key.clone());
        if i + 1 == path.len() {
            map.insert(key, parsed);
            return Ok(());
        }
        node = map.entry(key).or_insert(serde_yaml::Value::Null);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn no_file_gives_an_embedded_store_and_local_ports() {
        let config = Config::load(None, env(&[])).unwrap();
        assert_eq!(config, Config::default());
        assert_eq!(config.http.listen.port(), 8080);
        assert!(!config.sql_endpoint.enabled);
    }

    #[test]
    fn environment_overrides_nested_settings_with_typed_values() {
        let config = Config::load(
            None,
            env(&[
                ("WAYBILL_STORE__RETENTION_DAYS", "14"),
                ("WAYBILL_STORE__MODE", "server"),
                ("WAYBILL_STORE__SERVER__PASSWORD", "12345"),
                ("WAYBILL_CONFIG", "ignored.yaml"),
                ("OTHER", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(config.store.retention_days, 14);
        assert_eq!(config.store.mode, waybill_store::StoreMode::Server);
        assert_eq!(config.store.server.password, "12345");

        let config = Config::load(
            None,
            env(&[
                ("WAYBILL_SQL_ENDPOINT__ENABLED", "true"),
                ("WAYBILL_SQL_ENDPOINT__TOKEN", "12345678901234567890"),
                ("WAYBILL_STORE__SERVER__PASSWORD", "0x1f"),
            ]),
        )
        .unwrap();
        assert_eq!(config.sql_endpoint.token.as_deref(), Some("12345678901234567890"));
        assert_eq!(config.store.server.password, "0x1f");

        let config = Config::load(
            None,
            env(&[("WAYBILL_OTLP__SOURCES", "[{name: sap-erp, token: erp-token-0123456789}]")]),
        )
        .unwrap();
        assert_eq!(config.otlp.sources, [SourceToken { name: "sap-erp".into(), token: "erp-token-0123456789".into() }]);
        assert!(format!("{:?}", config.redacted()).contains("<redacted>"));
        let err = Config::load(None, env(&[("WAYBILL_OTLP__SOURCES", "[{name: x, token: short}]")])).unwrap_err();
        assert!(err.to_string().contains("otlp.sources[0]"), "{err}");
    }

    #[test]
    fn the_writers_linger_is_set_from_the_environment_and_bounded_by_exporter_timeouts() {
        let config = Config::load(
            None,
            env(&[("WAYBILL_PIPELINE__FLUSH_INTERVAL_MS", "50"), ("WAYBILL_PIPELINE__ADAPTIVE_FLUSH", "false")]),
        )
        .unwrap();
        let settings = config.pipeline.settings();
        assert_eq!((settings.flush_interval, settings.adaptive_flush), (std::time::Duration::from_millis(50), false));
        let default = Config::default().pipeline.settings();
        assert_eq!((default.flush_interval, default.adaptive_flush), (std::time::Duration::from_millis(100), true));
        let err = Config::load(None, env(&[("WAYBILL_PIPELINE__FLUSH_INTERVAL_MS", "60000")])).unwrap_err().to_string();
        assert!(err.contains("pipeline.flush_interval_ms must be at most 10000"), "{err}");
    }

    #[test]
    fn unknown_settings_are_refused_with_their_name() {
        let err = Config::load(None, env(&[("WAYBILL_STORE__DATABSE", "x")])).unwrap_err().to_string();
        assert!(err.contains("databse") && err.contains("WAYBILL_STORE__DATABSE"), "{err}");
        let dir = std::env::temp_dir().join(format!("waybill-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("waybill.yaml");
        std::fs::write(&file, "store:\n  retention_dayz: 3\n").unwrap();
        let err = Config::load(Some(&file), env(&[])).unwrap_err().to_string();
        assert!(err.contains("retention_dayz") && err.contains("line 2"), "{err}");
    }

    #[test]
    fn the_documented_example_config_is_exactly_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/waybill.yaml");
        assert_eq!(Config::load(Some(&path), env(&[])).unwrap(), Config::default());
        let cluster = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/clickhouse-cluster/waybill-cluster.yaml");
        let config = Config::load(Some(&cluster), env(&[])).unwrap();
        assert_eq!(config.store.server.cluster.as_deref(), Some("waybill_cluster"));
    }

    #[test]
    fn a_file_of_only_comments_gives_the_defaults() {
        let dir = std::env::temp_dir().join(format!("waybill-config-comments-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("waybill.yaml");
        std::fs::write(&file, "# nothing set yet\n").unwrap();
        assert_eq!(Config::load(Some(&file), env(&[])).unwrap(), Config::default());
    }

    #[test]
    fn sql_endpoint_needs_a_long_token() {
        let err = Config::load(None, env(&[("WAYBILL_SQL_ENDPOINT__ENABLED", "true")])).unwrap_err().to_string();
        assert!(err.contains("sql_endpoint.token"), "{err}");
        let config = Config::load(
            None,
            env(&[("WAYBILL_SQL_ENDPOINT__ENABLED", "true"), ("WAYBILL_SQL_ENDPOINT__TOKEN", "0123456789abcdef")]),
        )
        .unwrap();
        assert_eq!(config.sql_endpoint.token.as_deref(), Some("0123456789abcdef"));
    }
}
