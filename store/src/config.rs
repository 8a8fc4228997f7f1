//! The `store:` section of the config file: which ClickHouse to use and how.

use std::path::PathBuf;

use serde::Deserialize;

use crate::error::StoreError;

/// Where Waybill keeps its data.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `embedded` (default): the ClickHouse engine inside the waybill process.
    /// `server`: a ClickHouse server, ClickHouse Cloud or cluster over HTTP.
    pub mode: StoreMode,
    /// Database holding every Waybill table. Never `default` or `system`.
    pub database: String,
    /// Days that traces and logs are kept; older rows are dropped by TTL.
    pub retention_days: u32,
    pub embedded: EmbeddedConfig,
    pub server: ServerConfig,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum StoreMode {
    #[default]
    Embedded,
    Server,
}

/// The embedded engine (chDB).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EmbeddedConfig {
    /// Directory of the engine's data; created if missing, kept across restarts.
    pub path: PathBuf,
    /// Path of `libchdb.so`; default: where `scripts/fetch-engine.sh` puts it.
    pub library: Option<PathBuf>,
    /// Connections to the engine. Calls on different connections run in
    /// parallel; one is kept for pages and the JSON API. 1: every call
    /// takes its turn on one connection.
    pub connections: usize,
}

/// A ClickHouse server reached over its HTTP interface.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// `http://host:8123` or `https://host:8443` (ClickHouse Cloud).
    pub url: String,
    pub user: String,
    #[serde(deserialize_with = "crate::config::lenient_string")]
    pub password: String,
    /// `lz4` (default) or `none`.
    pub compression: Compression,
    /// Cluster name from the servers' `remote_servers`: tables become
    /// `Replicated*MergeTree` plus `Distributed`, created `ON CLUSTER`.
    pub cluster: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    #[default]
    Lz4,
    None,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            mode: StoreMode::Embedded,
            database: "waybill".into(),
            retention_days: 30,
            embedded: EmbeddedConfig::default(),
            server: ServerConfig::default(),
        }
    }
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        EmbeddedConfig { path: PathBuf::from("data/clickhouse"), library: None, connections: crate::engine::DEFAULT_CONNECTIONS }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            url: "http://localhost:8123".into(),
            user: "default".into(),
            password: String::new(),
            compression: Compression::Lz4,
            cluster: None,
        }
    }
}

impl StoreConfig {
    /// Checks what serde cannot; messages say which setting to change.
    pub fn validate(&self) -> Result<(), StoreError> {
        let invalid = |msg: String| Err(StoreError::Config(msg));
        if !is_plain_identifier(&self.database) {
            return invalid(format!(
                "store.database {:?} must be letters, digits and underscores, not starting with a digit",
                self.database
            ));
        }
        if matches!(self.database.as_str(), "default" | "system" | "information_schema" | "INFORMATION_SCHEMA") {
            return invalid(format!(
                "store.database must not be {:?}: Waybill keeps its tables in a database of its own (e.g. waybill)",
                self.database
            ));
        }
        if !(1..=36_500).contains(&self.retention_days) {
            return invalid(format!("store.retention_days must be between 1 and 36500, got {}", self.retention_days));
        }
        if self.mode == StoreMode::Server {
            let url = &self.server.url;
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return invalid(format!(
                    "store.server.url {url:?} must start with http:// or https:// (ClickHouse's HTTP interface, port 8123 or 8443)"
                ));
            }
            if let Some(cluster) = &self.server.cluster {
                if !is_plain_identifier(cluster) {
                    return invalid(format!("store.server.cluster {cluster:?} must be a cluster name from remote_servers"));
                }
            }
        }
        if self.mode == StoreMode::Embedded && self.embedded.path.as_os_str().is_empty() {
            return invalid("store.embedded.path must not be empty".into());
        }
        if !(1..=64).contains(&self.embedded.connections) {
            return invalid(format!("store.embedded.connections must be between 1 and 64, got {}", self.embedded.connections));
        }
        Ok(())
    }

    /// The library path to load: the configured one, or the fetch script's.
    pub fn library_path(&self) -> PathBuf {
        self.embedded.library.clone().unwrap_or_else(crate::engine::default_library_path)
    }
}

fn is_plain_identifier(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// A YAML scalar read as text: lets a password or token of digits be given
/// through an environment variable, where it would otherwise parse as a number.
#[derive(Deserialize)]
#[serde(untagged)]
enum Scalar {
    Text(String),
    Int(i64),
    UInt(u64),
    Float(f64),
    Bool(bool),
}

impl From<Scalar> for String {
    fn from(scalar: Scalar) -> String {
        match scalar {
            Scalar::Text(s) => s,
            Scalar::Int(i) => i.to_string(),
            Scalar::UInt(u) => u.to_string(),
            Scalar::Float(f) => f.to_string(),
            Scalar::Bool(b) => b.to_string(),
        }
    }
}

/// Deserializes a string, accepting any scalar written where one belongs.
pub fn lenient_string<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    Scalar::deserialize(deserializer).map(String::from)
}

/// [`lenient_string`] for optional settings; `null` is `None`.
pub fn lenient_optional_string<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    Option::<Scalar>::deserialize(deserializer).map(|s| s.map(String::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_embedded() {
        let config = StoreConfig::default();
        config.validate().unwrap();
        assert_eq!(config.mode, StoreMode::Embedded);
        assert_eq!(config.database, "waybill");
    }

    #[test]
    fn invalid_settings_name_the_setting_to_fix() {
        let mut config = StoreConfig { database: "default".into(), ..StoreConfig::default() };
        assert!(config.validate().unwrap_err().to_string().contains("store.database"));
        config.database = "w-1".into();
        assert!(config.validate().unwrap_err().to_string().contains("store.database"));
        config.database = "w".into();
        config.retention_days = 0;
        assert!(config.validate().unwrap_err().to_string().contains("store.retention_days"));
        config.retention_days = 7;
        config.mode = StoreMode::Server;
        config.server.url = "localhost:8123".into();
        assert!(config.validate().unwrap_err().to_string().contains("store.server.url"));
    }
}
