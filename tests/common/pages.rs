//! Router tests of the pages: the web app as `waybill serve` builds it, over
//! a fresh store, driven with `tower::ServiceExt::oneshot` by a browser-like
//! client that keeps its session cookie; HTML is checked with CSS selectors.

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use scraper::{Html, Selector};
use tower::ServiceExt;
use waybill_alerts::{Alerts, AlertsConfig};
use waybill_dashboards::{Dashboards, DashboardsConfig};
use waybill_store::Store;

pub struct Pages {
    pub store: Store,
    pub dashboards: Dashboards,
    pub alerts: Alerts,
    app: Router,
}

impl Pages {
    /// The app over a fresh database `database`, with the `dashboards:`
    /// section `yaml` (empty: the defaults, sign-in off).
    pub async fn start(database: &str, yaml: &str) -> Pages {
        Self::start_with(database, yaml, AlertsConfig::default()).await
    }

    pub async fn start_with(database: &str, yaml: &str, alerts_config: AlertsConfig) -> Pages {
        let store = super::store(database).await;
        let config: DashboardsConfig = if yaml.trim().is_empty() { DashboardsConfig::default() } else { serde_yaml::from_str(yaml).expect("the test's dashboards config parses") };
        let alerts = Alerts::new(store.clone(), alerts_config).expect("the test's alert rules validate");
        let dashboards = Dashboards::new(store.clone(), alerts.clone(), config).expect("the test's dashboards config validates");
        let app = dashboards.app();
        Pages { store, dashboards, alerts, app }
    }

    /// A browser with no cookies yet.
    pub fn browser(&self) -> Browser {
        Browser { app: self.app.clone(), cookie: None, headers: Vec::new() }
    }
}

/// An alert rules file of its own for the test `name`, holding `text`.
pub fn rules_file(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("alert-rules.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Keeps the session cookie between requests, as a browser does.
pub struct Browser {
    app: Router,
    pub cookie: Option<String>,
    /// Sent with every request (e.g. a proxy's user header).
    pub headers: Vec<(String, String)>,
}

pub struct Page {
    pub status: StatusCode,
    pub location: Option<String>,
    pub content_type: String,
    pub body: String,
    pub html: Html,
}

impl Page {
    /// The text of every element matching `css`, whitespace collapsed.
    pub fn texts(&self, css: &str) -> Vec<String> {
        let selector = Selector::parse(css).unwrap_or_else(|e| panic!("bad selector {css}: {e:?}"));
        self.html.select(&selector).map(|e| e.text().collect::<Vec<_>>().join(" ").split_whitespace().collect::<Vec<_>>().join(" ")).collect()
    }

    pub fn text(&self, css: &str) -> String {
        self.texts(css).into_iter().next().unwrap_or_else(|| panic!("nothing matches {css} in:\n{}", self.body))
    }

    pub fn count(&self, css: &str) -> usize {
        self.texts(css).len()
    }

    /// The value of `attribute` of every element matching `css`.
    pub fn attrs(&self, css: &str, attribute: &str) -> Vec<String> {
        let selector = Selector::parse(css).unwrap_or_else(|e| panic!("bad selector {css}: {e:?}"));
        self.html.select(&selector).filter_map(|e| e.value().attr(attribute).map(str::to_owned)).collect()
    }

    /// The CSRF token of the page's first form.
    pub fn csrf(&self) -> String {
        self.attrs("input[name=csrf]", "value").into_iter().next().unwrap_or_else(|| panic!("no form with a CSRF token in:\n{}", self.body))
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", self.body))
    }
}

impl Browser {
    pub async fn get(&mut self, path: &str) -> Page {
        self.send("GET", path, None, Body::empty()).await
    }

    /// Submits a form (`application/x-www-form-urlencoded`).
    pub async fn post_form(&mut self, path: &str, fields: &[(&str, &str)]) -> Page {
        let body = serde_urlencoded::to_string(fields).unwrap();
        self.send("POST", path, Some("application/x-www-form-urlencoded"), Body::from(body)).await
    }

    pub async fn send(&mut self, method: &str, path: &str, content_type: Option<&str>, body: Body) -> Page {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(cookie) = &self.cookie {
            request = request.header(header::COOKIE, cookie);
        }
        if let Some(content_type) = content_type {
            request = request.header(header::CONTENT_TYPE, content_type);
        }
        for (name, value) in &self.headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let response = self.app.clone().oneshot(request.body(body).unwrap()).await.unwrap();
        if let Some(set) = response.headers().get(header::SET_COOKIE) {
            self.cookie = set.to_str().ok().and_then(|v| v.split(';').next()).map(str::to_owned);
        }
        let status = response.status();
        let location = response.headers().get(header::LOCATION).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let content_type = response.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body = String::from_utf8_lossy(&bytes).into_owned();
        let html = Html::parse_document(&body);
        Page { status, location, content_type, body, html }
    }
}
