//! Delivery: Prometheus Alertmanager (API v2), generic JSON webhooks signed
//! with HMAC-SHA256, and Slack-compatible incoming webhooks. Each delivery
//! is retried with backoff; failures are counted and written to the alert
//! history.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};

/// Where alerts go (the `alerts:` section of the config file).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub name: String,
    pub url: String,
    /// Signs each body: header `X-Waybill-Signature: sha256=<hex HMAC>`.
    #[serde(default)]
    pub secret: Option<String>,
    #[serde(default)]
    pub format: WebhookFormat,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WebhookFormat {
    /// `{"receiver", "status", "alerts": [...]}`.
    #[default]
    Json,
    /// `{"text": "..."}` for Slack (and compatible) incoming webhooks.
    Slack,
}

/// An alert as receivers and the API see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertView {
    pub rule: String,
    /// `pending`, `firing` or `resolved`.
    pub state: String,
    pub severity: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub value: f64,
    /// When it entered its state (RFC 3339).
    pub since: String,
}

/// Attempts per delivery, and the first wait between them (doubling).
const ATTEMPTS: u32 = 6;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const TIMEOUT: Duration = Duration::from_secs(10);

type HttpsClient = Client<hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>, Full<Bytes>>;

/// Sends to one URL; every receiver shares it.
#[derive(Clone)]
pub struct Sender {
    client: HttpsClient,
}

impl Default for Sender {
    fn default() -> Self {
        let connector = hyper_rustls::HttpsConnectorBuilder::new().with_webpki_roots().https_or_http().enable_http1().build();
        Sender { client: Client::builder(TokioExecutor::new()).build(connector) }
    }
}

impl Sender {
    /// POSTs `body` as JSON, retrying with backoff; the last error if every
    /// attempt failed, with how many were made.
    pub async fn post(&self, url: &str, body: Vec<u8>, headers: &[(&str, String)]) -> Result<u32, String> {
        let mut backoff = FIRST_BACKOFF;
        let mut last_error = String::new();
        for attempt in 1..=ATTEMPTS {
            match self.post_once(url, body.clone(), headers).await {
                Ok(()) => return Ok(attempt),
                Err(err) => last_error = err,
            }
            if attempt < ATTEMPTS {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(8));
            }
        }
        Err(format!("{last_error} (after {ATTEMPTS} attempts)"))
    }

    async fn post_once(&self, url: &str, body: Vec<u8>, headers: &[(&str, String)]) -> Result<(), String> {
        let mut request = hyper::Request::post(url).header("Content-Type", "application/json");
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let request = request.body(Full::new(Bytes::from(body))).map_err(|err| format!("bad request to {url}: {err}"))?;
        let response = tokio::time::timeout(TIMEOUT, self.client.request(request))
            .await
            .map_err(|_| format!("{url} did not answer within {TIMEOUT:?}"))?
            .map_err(|err| format!("cannot reach {url}: {err}"))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let body = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        Err(format!("{url} answered {status}: {}", String::from_utf8_lossy(&body).chars().take(200).collect::<String>()))
    }
}

/// Alertmanager's `POST /api/v2/alerts` body for `alerts`: `startsAt` when
/// it began firing; `endsAt` now for a resolved alert, else `expires_ns`
/// (so Alertmanager resolves it if Waybill stops sending).
pub fn alertmanager_body(alerts: &[(AlertView, i64)], expires_ns: i64, resolved_ns: i64, generator_url: &str) -> Vec<u8> {
    let alerts: Vec<serde_json::Value> = alerts
        .iter()
        .map(|(alert, starts_ns)| {
            let ends_ns = if alert.state == "resolved" { resolved_ns } else { expires_ns };
            serde_json::json!({
                "labels": alert.labels,
                "annotations": alert.annotations,
                "startsAt": crate::rfc3339(*starts_ns),
                "endsAt": crate::rfc3339(ends_ns),
                "generatorURL": format!("{generator_url}/api/v1/alerts?rule={}", alert.rule),
            })
        })
        .collect();
    serde_json::to_vec(&alerts).unwrap_or_default()
}

/// A webhook's body for `alerts`.
pub fn webhook_body(webhook: &WebhookConfig, alerts: &[AlertView], sent_ns: i64) -> Vec<u8> {
    let status = if alerts.iter().any(|a| a.state == "firing") { "firing" } else { "resolved" };
    let body = match webhook.format {
        WebhookFormat::Json => serde_json::json!({
            "receiver": webhook.name,
            "status": status,
            "alerts": alerts,
            "sent_at": crate::rfc3339(sent_ns),
        }),
        WebhookFormat::Slack => {
            let lines: Vec<String> = alerts
                .iter()
                .map(|a| {
                    let summary = a.annotations.get("summary").cloned().unwrap_or_else(|| format!("value {}", a.value));
                    let runbook = a.annotations.get("runbook_url").map(|u| format!(" <{u}|runbook>")).unwrap_or_default();
                    format!("[{}] *{}* ({}) {}{runbook}", a.state.to_uppercase(), a.rule, a.severity, summary)
                })
                .collect();
            serde_json::json!({ "text": lines.join("\n") })
        }
    };
    serde_json::to_vec(&body).unwrap_or_default()
}

/// `sha256=<hex>` HMAC-SHA256 of `body` with `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = ring::hmac::sign(&key, body);
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_rfc4231_hmac_sha256() {
        // RFC 4231 test case 2.
        let signed = signature("Jefe", b"what do ya want for nothing?");
        assert_eq!(signed, "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }

    #[test]
    fn slack_gets_one_line_per_alert() {
        let webhook = WebhookConfig { name: "ops".into(), url: "http://x".into(), secret: None, format: WebhookFormat::Slack };
        let alert = AlertView {
            rule: "invoice_failures".into(),
            state: "firing".into(),
            severity: "critical".into(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::from([("summary".to_string(), "3 invoices failed".to_string())]),
            value: 3.0,
            since: String::new(),
        };
        let body: serde_json::Value = serde_json::from_slice(&webhook_body(&webhook, &[alert], 0)).unwrap();
        assert_eq!(body["text"], "[FIRING] *invoice_failures* (critical) 3 invoices failed");
    }
}
