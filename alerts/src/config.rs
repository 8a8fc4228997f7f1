//! The `alerts:` section of the config file: where the rules are and where
//! alerts go.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::notify::WebhookConfig;

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// The rules file (see docs/alerts.md); unset: no rules.
    pub rules_file: Option<PathBuf>,
    /// Waybill's address as people reach it, for links in alerts.
    pub external_url: String,
    /// Prometheus Alertmanager, e.g. `http://alertmanager:9093`; unset: none.
    pub alertmanager_url: Option<String>,
    /// JSON or Slack-compatible webhooks.
    pub webhooks: Vec<WebhookConfig>,
    /// How often webhooks hear again of an alert that keeps firing.
    pub repeat_interval: String,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            rules_file: None,
            external_url: "http://127.0.0.1:8080".to_owned(),
            alertmanager_url: None,
            webhooks: Vec::new(),
            repeat_interval: "4h".to_owned(),
        }
    }
}

impl AlertsConfig {
    pub fn validate(&self) -> Result<(), String> {
        humantime::parse_duration(&self.repeat_interval)
            .map_err(|err| format!("alerts.repeat_interval {:?} is not a duration like 4h: {err}", self.repeat_interval))?;
        let url = |setting: &str, url: &str| {
            if url.starts_with("http://") || url.starts_with("https://") {
                Ok(())
            } else {
                Err(format!("{setting} {url:?} must be an http:// or https:// URL"))
            }
        };
        url("alerts.external_url", &self.external_url)?;
        if let Some(alertmanager) = &self.alertmanager_url {
            url("alerts.alertmanager_url", alertmanager)?;
        }
        for (i, webhook) in self.webhooks.iter().enumerate() {
            if webhook.name.is_empty() {
                return Err(format!("alerts.webhooks[{i}] needs a name"));
            }
            url(&format!("alerts.webhooks[{i}].url"), &webhook.url)?;
        }
        if let Some(path) = &self.rules_file {
            crate::rules::RulesFile::load(path).map_err(|err| format!("alerts.rules_file: {err}"))?;
        }
        Ok(())
    }

    pub fn repeat_interval(&self) -> Duration {
        humantime::parse_duration(&self.repeat_interval).unwrap_or(Duration::from_secs(4 * 3600))
    }
}
