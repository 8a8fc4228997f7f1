//! The `dashboards:` section of the config file: who may sign in and how,
//! where failed steps are replayed, and what the executive KPIs measure.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DashboardsConfig {
    pub auth: AuthConfig,
    /// Per system, where an operator's replay of a failed step is sent.
    pub replay: BTreeMap<String, ReplayTarget>,
    pub kpis: KpiConfig,
}

/// How people sign in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// `none` (the default: everyone may look and act, and the pages say
    /// so), `password` (the users below sign in with a form, scripts with
    /// HTTP Basic) or `proxy` (a trusted reverse proxy names the user in
    /// `user_header`).
    pub mode: AuthMode,
    /// Users and their roles; with `password`, each has a `password_hash`
    /// from `waybill hash-password`.
    pub users: Vec<User>,
    /// The header a trusted reverse proxy sets to the signed-in user.
    pub user_header: String,
    /// The header that may carry the role (`viewer`, `operator`, `admin`);
    /// else a user's role is the one listed in `users`, else `default_role`.
    pub role_header: Option<String>,
    pub default_role: Role,
    /// Signs session cookies and CSRF tokens; unset: a random key per
    /// start, so people sign in again after a restart.
    pub session_secret: Option<String>,
    /// How long a sign-in lasts, e.g. `12h`.
    #[serde(with = "humantime_serde_text")]
    pub session_ttl: std::time::Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            mode: AuthMode::None,
            users: Vec::new(),
            user_header: "X-Forwarded-User".to_owned(),
            role_header: None,
            default_role: Role::Viewer,
            session_secret: None,
            session_ttl: std::time::Duration::from_secs(12 * 3600),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    None,
    Password,
    Proxy,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: String,
    pub role: Role,
    #[serde(default)]
    pub password_hash: Option<String>,
}

/// What a person may do: viewers look; operators also work exceptions and
/// replay failed steps; admins also silence alerts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        match text.trim().to_ascii_lowercase().as_str() {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// Where a system's failed steps are replayed: Waybill POSTs the step's
/// payload reference as JSON with an `Idempotency-Key` header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayTarget {
    pub url: String,
    /// Extra headers, e.g. an API key.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// What the executive KPIs measure; the defaults follow the demo's and the
/// docs' milestone names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KpiConfig {
    /// Inventory sync latency: from this milestone...
    pub inventory_from: String,
    /// ...to this one, of the same key of kind `inventory_key`.
    pub inventory_to: String,
    pub inventory_key: String,
    /// Shipment visibility: a shipment (`shipment_milestone`) is visible
    /// when a carrier event (`carrier_milestone`) of the same
    /// `shipment_key` follows within `visibility_within`.
    pub shipment_milestone: String,
    pub carrier_milestone: String,
    pub shipment_key: String,
    #[serde(with = "humantime_serde_text")]
    pub visibility_within: std::time::Duration,
    /// Invoice posting success: this milestone's share of `ok` outcomes.
    pub invoice_milestone: String,
}

impl Default for KpiConfig {
    fn default() -> Self {
        KpiConfig {
            inventory_from: "inventory.changed".to_owned(),
            inventory_to: "inventory.published".to_owned(),
            inventory_key: "sku".to_owned(),
            shipment_milestone: "shipment.dispatched".to_owned(),
            carrier_milestone: "shipment.delivered".to_owned(),
            shipment_key: "shipment".to_owned(),
            visibility_within: std::time::Duration::from_secs(4 * 3600),
            invoice_milestone: "invoice.posted".to_owned(),
        }
    }
}

impl DashboardsConfig {
    /// What is wrong with the section, said so it can be fixed.
    pub fn validate(&self) -> Result<(), String> {
        let auth = &self.auth;
        if auth.mode == AuthMode::Password {
            if auth.users.is_empty() {
                return Err("dashboards.auth.mode is password but dashboards.auth.users is empty: add a user with a password_hash from `waybill hash-password`".to_owned());
            }
            for user in &auth.users {
                match &user.password_hash {
                    None => return Err(format!("dashboards.auth.users: {} has no password_hash: make one with `waybill hash-password`", user.name)),
                    Some(hash) if !crate::auth::is_password_hash(hash) => {
                        return Err(format!("dashboards.auth.users: the password_hash of {} is not one `waybill hash-password` makes", user.name));
                    }
                    Some(_) => {}
                }
            }
        }
        if auth.mode == AuthMode::Proxy && auth.user_header.trim().is_empty() {
            return Err("dashboards.auth.user_header is empty: name the header your proxy sets, e.g. X-Forwarded-User".to_owned());
        }
        if auth.session_secret.as_ref().is_some_and(|s| s.len() < 16) {
            return Err("dashboards.auth.session_secret is shorter than 16 characters: use a long random string".to_owned());
        }
        for (system, target) in &self.replay {
            if !(target.url.starts_with("http://") || target.url.starts_with("https://")) {
                return Err(format!("dashboards.replay.{system}.url must start with http:// or https://"));
            }
        }
        Ok(())
    }
}

/// Durations as `12h`, `30m` (humantime) in the config file.
mod humantime_serde_text {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| serde::de::Error::custom(format!("{text:?} is not a duration like 12h or 30m: {e}")))
    }
}
