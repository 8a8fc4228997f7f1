//! Server-rendered pages (askama templates in `templates/`) and their JSON
//! twins under `/api/v1/`, reading through the store and the alert state:
//! search and transaction view, operations board, exception queue with
//! replay, SLA and alerts, integration flows, executive KPIs.

pub mod auth;
pub mod config;
pub mod page;
pub mod svg;

mod board;
mod exceptions;
mod flows;
mod home;
mod kpis;
mod sla;
mod transaction;

use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;
use waybill_alerts::Alerts;
use waybill_store::Store;

pub use auth::Viewer;
pub use config::{DashboardsConfig, Role};

/// The pages' shared state.
#[derive(Clone)]
pub struct Dashboards {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    alerts: Alerts,
    config: DashboardsConfig,
    keys: auth::Keys,
    sender: waybill_alerts::notify::Sender,
}

impl Dashboards {
    pub fn new(store: Store, alerts: Alerts, config: DashboardsConfig) -> Result<Dashboards, String> {
        config.validate()?;
        let keys = auth::Keys::new(&config.auth);
        Ok(Dashboards { inner: Arc::new(Inner { store, alerts, config, keys, sender: Default::default() }) })
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn alerts(&self) -> &Alerts {
        &self.inner.alerts
    }

    pub fn config(&self) -> &DashboardsConfig {
        &self.inner.config
    }

    pub fn keys(&self) -> &auth::Keys {
        &self.inner.keys
    }

    pub fn sender(&self) -> &waybill_alerts::notify::Sender {
        &self.inner.sender
    }

    /// Every page and its JSON twin.
    pub fn routes(&self) -> Router {
        Router::new()
            .route("/", get(home::home))
            .route("/login", get(home::login_form).post(home::login))
            .route("/logout", post(home::logout))
            .route("/api/v1/", get(home::api_index))
            .route("/static/waybill.css", get(page::stylesheet))
            .merge(transaction::routes())
            .merge(board::routes())
            .merge(exceptions::routes())
            .merge(sla::routes())
            .merge(flows::routes())
            .merge(kpis::routes())
            .with_state(self.clone())
    }

    /// The pages and the whole JSON API (transactions, alerts, the pages'
    /// twins) behind sign-in, roles and CSRF checks: what the web server
    /// serves besides health and metrics.
    pub fn app(&self) -> Router {
        self.protect(self.routes().merge(waybill_lineage::api::router(self.store().clone())).merge(waybill_alerts::api::router(self.alerts().clone())))
    }

    /// `router` behind sign-in, roles and CSRF checks (see [`auth`]).
    pub fn protect(&self, router: Router) -> Router {
        router.layer(axum::middleware::from_fn_with_state(self.clone(), auth::authenticate))
    }
}
