//! The alerts API (contract in docs/alerts.md):
//!
//! - `GET /api/v1/rules` → `{"rules": [...], "reload_error": null}`
//! - `GET /api/v1/alerts` → `{"alerts": [{"rule","state","severity","labels","annotations","value","since"}]}`
//! - `POST /api/v1/silences`, `GET /api/v1/silences`, `DELETE /api/v1/silences/ID`

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};

use crate::evaluator::Alerts;
use crate::now_ns;
use crate::silence::{self, NewSilence};

/// Who is signed in, when a sign-in layer in front of the API knows: a
/// silence is then created by them, whatever the request body says.
#[derive(Debug, Clone)]
pub struct SignedIn(pub String);

pub fn router(alerts: Alerts) -> Router {
    Router::new()
        .route("/api/v1/rules", get(rules))
        .route("/api/v1/alerts", get(list))
        .route("/api/v1/silences", get(silences).post(create_silence))
        .route("/api/v1/silences/{id}", delete(expire_silence))
        .with_state(alerts)
}

async fn rules(State(alerts): State<Alerts>) -> Response {
    let (rules, reload_error) = alerts.rules();
    Json(serde_json::json!({ "rules": rules, "reload_error": reload_error })).into_response()
}

async fn list(State(alerts): State<Alerts>) -> Response {
    Json(serde_json::json!({ "alerts": alerts.alerts() })).into_response()
}

async fn silences(State(alerts): State<Alerts>) -> Response {
    match silence::active(alerts.store(), now_ns()).await {
        Ok(silences) => Json(serde_json::json!({ "silences": silences })).into_response(),
        Err(err) => error(StatusCode::SERVICE_UNAVAILABLE, &format!("the store did not answer: {err}")),
    }
}

async fn create_silence(
    State(alerts): State<Alerts>,
    signed_in: Option<axum::Extension<SignedIn>>,
    body: Result<Json<NewSilence>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(mut request) = match body {
        Ok(body) => body,
        Err(rejection) => return error(StatusCode::BAD_REQUEST, &format!("the silence is malformed: {}", rejection.body_text())),
    };
    if let Some(axum::Extension(SignedIn(user))) = signed_in {
        request.created_by = user;
    }
    match silence::create(alerts.store(), request, now_ns()).await {
        Ok(Ok(created)) => (StatusCode::CREATED, Json(created)).into_response(),
        Ok(Err(message)) => error(StatusCode::BAD_REQUEST, &message),
        Err(err) => error(StatusCode::SERVICE_UNAVAILABLE, &format!("the store did not answer: {err}")),
    }
}

async fn expire_silence(State(alerts): State<Alerts>, Path(id): Path<String>) -> Response {
    match silence::expire(alerts.store(), &id, now_ns()).await {
        Ok(Some(expired)) => Json(expired).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, &format!("no silence with id {id:?}")),
        Err(err) => error(StatusCode::SERVICE_UNAVAILABLE, &format!("the store did not answer: {err}")),
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}
