//! Not built yet: its page and JSON twin come next.

use axum::Router;

use crate::Dashboards;

pub fn routes() -> Router<Dashboards> {
    Router::new()
}
