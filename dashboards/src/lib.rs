//! Server-rendered pages (askama templates in `templates/`) and the JSON API,
//! reading through the store. Not built yet: the dashboards issue fills this
//! crate; today the binary serves only `/healthz` and `/readyz`.
