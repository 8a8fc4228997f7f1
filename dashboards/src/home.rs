//! The start page (search box, transaction counts, or how to send data when
//! there is none), the sign-in form and signing out.

use askama::Template;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Form};
use clickhouse::Row;
use serde::Deserialize;

use crate::auth::{self, LoginForm, Viewer};
use crate::page::{self, Layout};
use crate::Dashboards;

pub struct Tile {
    pub state: &'static str,
    pub label: &'static str,
    pub count: u64,
}

#[derive(Template)]
#[template(path = "home.html")]
struct Home {
    layout: Layout,
    total: u64,
    tiles: Vec<Tile>,
}

#[derive(Debug, Row, Deserialize)]
struct StateCount {
    state: String,
    count: u64,
}

/// Transactions per state, as last computed.
pub async fn state_counts(dashboards: &Dashboards) -> Result<Vec<Tile>, waybill_store::StoreError> {
    let rows: Vec<StateCount> = dashboards.store().fetch_all("SELECT State AS state, count() AS count FROM transactions FINAL GROUP BY State").await?;
    let count = |state: &str| rows.iter().find(|r| r.state == state).map_or(0, |r| r.count);
    Ok([("in_flight", "in flight"), ("stuck", "stuck"), ("failed", "failed"), ("completed", "completed")]
        .into_iter()
        .map(|(state, label)| Tile { state, label, count: count(state) })
        .collect())
}

pub async fn home(State(dashboards): State<Dashboards>, Extension(viewer): Extension<Viewer>) -> Response {
    match state_counts(&dashboards).await {
        Ok(tiles) => {
            let total = tiles.iter().map(|t| t.count).sum();
            page::render(&Home { layout: Layout::new("Where is it?", "search", &viewer), total, tiles })
        }
        Err(err) => page::store_error(err),
    }
}

#[derive(Template)]
#[template(path = "login.html")]
struct Login {
    csrf: String,
    next: String,
    problem: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct LoginQuery {
    #[serde(default)]
    next: String,
}

/// The sign-in form. Public: the layer lets everyone reach it, and gives
/// the browser a session (and so a CSRF token) first.
pub async fn login_form(State(dashboards): State<Dashboards>, Query(query): Query<LoginQuery>, request_csrf: CsrfOfRequest) -> Response {
    if dashboards.config().auth.mode != crate::config::AuthMode::Password {
        return axum::response::Redirect::to("/").into_response();
    }
    page::render(&Login { csrf: request_csrf.0, next: query.next, problem: None })
}

pub async fn login(State(dashboards): State<Dashboards>, headers: axum::http::HeaderMap, request_csrf: CsrfOfRequest, Form(form): Form<LoginForm>) -> Response {
    let next = form.next.clone();
    match auth::sign_in(&dashboards, form, auth::is_https(&headers)).await {
        Ok(response) => response,
        Err(problem) => {
            let mut response = page::render(&Login { csrf: request_csrf.0, next, problem: Some(problem.to_owned()) });
            *response.status_mut() = StatusCode::UNAUTHORIZED;
            response
        }
    }
}

pub async fn logout(State(dashboards): State<Dashboards>, headers: axum::http::HeaderMap) -> Response {
    auth::sign_out(&dashboards, auth::is_https(&headers))
}

/// The CSRF token of the request's session, also for people not signed in.
pub struct CsrfOfRequest(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for CsrfOfRequest {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(CsrfOfRequest(parts.extensions.get::<auth::Csrf>().map(|c| c.0.clone()).unwrap_or_default()))
    }
}

/// `GET /api/v1/`: what the JSON API offers (docs/dashboards.md,
/// docs/lineage.md and docs/alerts.md describe each answer).
pub async fn api_index() -> Response {
    axum::Json(serde_json::json!({
        "endpoints": {
            "/api/v1/search?q=KEY": "transactions with this business key",
            "/api/v1/transactions?key=KEY[&kind=KIND] | ?state=STATE[&limit=N]": "transactions by key or state",
            "/api/v1/transactions/ID": "one transaction",
            "/api/v1/transactions/ID/detail": "one transaction with its key graph, traces, logs and alerts",
            "/api/v1/board": "the operations board (filters: channel, partner, system, from, to, state)",
            "/api/v1/exceptions[?status=...]": "the exception queue; /api/v1/exceptions/ID for one item and its audit trail",
            "/api/v1/sla": "every rule's value per group, trend, history and silences",
            "/api/v1/rules": "the alert rules and their health",
            "/api/v1/alerts": "pending and firing alerts",
            "/api/v1/silences": "silences (POST to create, DELETE /api/v1/silences/ID to expire)",
            "/api/v1/flows?window=1h": "calls between systems and the API routes in use",
            "/api/v1/kpis?period=7d": "the executive KPIs against the previous period",
        }
    }))
    .into_response()
}
