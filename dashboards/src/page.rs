//! What every page shares: the layout (navigation, who is signed in, the
//! CSRF token for forms), rendering a template into a response, the error
//! page, and formatting of times and durations.

use std::time::{Duration, UNIX_EPOCH};

use askama::Template;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};

use crate::auth::Viewer;

/// The parts of the base template every page fills.
#[derive(Debug, Clone)]
pub struct Layout {
    pub title: String,
    /// Which navigation entry is current: `search`, `board`, `exceptions`,
    /// `sla`, `flows`, `kpis`.
    pub nav: &'static str,
    pub viewer: Viewer,
}

impl Layout {
    pub fn new(title: impl Into<String>, nav: &'static str, viewer: &Viewer) -> Layout {
        Layout { title: title.into(), nav, viewer: viewer.clone() }
    }

    /// The `class` of a navigation link.
    pub fn current(&self, nav: &str) -> &'static str {
        if self.nav == nav {
            "current"
        } else {
            ""
        }
    }
}

/// `template` as an HTML response; a failed render is a 500 page.
pub fn render(template: &impl Template) -> Response {
    match template.render() {
        Ok(html) => Html(html).into_response(),
        Err(err) => {
            tracing::error!(error = %err, "a page failed to render");
            error_page(StatusCode::INTERNAL_SERVER_ERROR, "this page failed to render; the service log has the reason")
        }
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    status: u16,
    reason: &'a str,
    message: &'a str,
}

/// A page that says what went wrong.
pub fn error_page(status: StatusCode, message: &str) -> Response {
    let page = ErrorPage { status: status.as_u16(), reason: status.canonical_reason().unwrap_or(""), message };
    let html = page.render().unwrap_or_else(|_| message.to_owned());
    (status, Html(html)).into_response()
}

/// The store did not answer: a 503 page (`json_error` is the API twins' form).
pub fn store_error(err: impl std::fmt::Display) -> Response {
    error_page(StatusCode::SERVICE_UNAVAILABLE, &format!("the store did not answer: {err}"))
}

pub fn json_error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
}

pub async fn stylesheet() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8"), (header::CACHE_CONTROL, "max-age=3600")], include_str!("../../templates/static/waybill.css")).into_response()
}

/// Percent-encodes `text` for a query string value.
pub fn url_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(byte as char),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// `2026-11-27 06:12:03` (UTC) of nanoseconds since the epoch.
pub fn time(ns: i64) -> String {
    if ns <= 0 {
        return String::new();
    }
    let text = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_nanos(ns as u64)).to_string();
    text.trim_end_matches('Z').replacen('T', " ", 1)
}

/// `850 ms`, `12 s`, `4 min 10 s`, `3 h 5 min`, `2 d 4 h` of seconds.
pub fn duration(seconds: f64) -> String {
    if !seconds.is_finite() {
        return String::new();
    }
    let sign = if seconds < 0.0 { "-" } else { "" };
    let s = seconds.abs();
    let text = if s < 1.0 {
        format!("{:.0} ms", s * 1000.0)
    } else if s < 60.0 {
        format!("{s:.0} s")
    } else if s < 3600.0 {
        format!("{} min {} s", (s / 60.0) as u64, (s % 60.0) as u64)
    } else if s < 86_400.0 {
        format!("{} h {} min", (s / 3600.0) as u64, ((s % 3600.0) / 60.0) as u64)
    } else {
        format!("{} d {} h", (s / 86_400.0) as u64, ((s % 86_400.0) / 3600.0) as u64)
    };
    format!("{sign}{text}")
}

/// Nanoseconds since the epoch, now.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or_default()
}

/// Parses an RFC 3339 time (as the JSON API writes them) to nanoseconds.
pub fn parse_time(text: &str) -> Option<i64> {
    humantime::parse_rfc3339_weak(text).ok()?.duration_since(UNIX_EPOCH).ok().map(|d| d.as_nanos() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_a_person_would_say_them() {
        assert_eq!(duration(0.25), "250 ms");
        assert_eq!(duration(42.0), "42 s");
        assert_eq!(duration(250.0), "4 min 10 s");
        assert_eq!(duration(3.0 * 3600.0 + 300.0), "3 h 5 min");
        assert_eq!(duration(-90.0), "-1 min 30 s");
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(url_encode("/transactions/a b?x=<1>"), "%2Ftransactions%2Fa%20b%3Fx%3D%3C1%3E");
    }
}
