//! The pages as people meet them: the start page with and without data,
//! sign-in, roles and CSRF on every form, and markup in business keys
//! shown as text.

mod common;

use axum::http::StatusCode;
use common::pages::Pages;

#[tokio::test]
async fn an_empty_store_tells_a_newcomer_how_to_send_data() {
    let pages = Pages::start("t_pages_empty", "").await;
    let mut browser = pages.browser();
    let page = browser.get("/").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let empty = page.text(".empty-state");
    assert!(empty.contains("4317") && empty.contains("waybill demo"), "{empty}");
    assert_eq!(page.text("nav a.current"), "Search");
    assert_eq!(page.text(".auth-off"), "sign-in off");
    common::drop_database(&pages.store).await;
}

/// Sign-in on, with an operator, a viewer and an admin.
fn password_config() -> String {
    let hash = |password: &str| waybill_dashboards::auth::hash_password(password);
    format!(
        "auth:\n  mode: password\n  users:\n    - {{ name: olga, role: operator, password_hash: \"{}\" }}\n    - {{ name: vic, role: viewer, password_hash: \"{}\" }}\n    - {{ name: ada, role: admin, password_hash: \"{}\" }}\n",
        hash("olga-pass"),
        hash("vic-pass"),
        hash("ada-pass")
    )
}

async fn sign_in(browser: &mut common::pages::Browser, user: &str, password: &str) -> common::pages::Page {
    let form = browser.get("/login?next=%2Fboard").await;
    let csrf = form.csrf();
    browser.post_form("/login", &[("csrf", &csrf), ("user", user), ("password", password), ("next", "/board")]).await
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
}

#[tokio::test]
async fn with_sign_in_on_no_page_api_or_action_is_reachable_without_signing_in() {
    let pages = Pages::start("t_pages_auth_closed", &password_config()).await;
    let mut stranger = pages.browser();
    for path in ["/", "/board", "/exceptions", "/sla", "/flows", "/kpis", "/search?q=PO-1", "/transactions/x"] {
        let page = stranger.get(path).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{path}: {}", page.body);
        assert!(page.location.as_deref().unwrap_or_default().starts_with("/login?next="), "{path} → {:?}", page.location);
    }
    for path in ["/api/v1/transactions?state=stuck", "/api/v1/alerts", "/api/v1/silences"] {
        let page = stranger.get(path).await;
        assert_eq!(page.status, StatusCode::UNAUTHORIZED, "{path}");
        assert!(page.json()["error"].as_str().unwrap().contains("sign in"), "{}", page.body);
    }
    // Even with a token of its own session, a stranger cannot act.
    let csrf = stranger.get("/login").await.csrf();
    let refused = stranger.post_form("/api/v1/silences", &[("csrf", &csrf)]).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    // The sign-in form itself and the stylesheet are open.
    assert_eq!(stranger.get("/static/waybill.css").await.status, StatusCode::OK);
    common::drop_database(&pages.store).await;
}

#[tokio::test]
async fn an_operator_signs_in_to_the_page_they_asked_for_and_a_wrong_password_is_refused() {
    let pages = Pages::start("t_pages_sign_in", &password_config()).await;
    let mut browser = pages.browser();
    let wrong = sign_in(&mut browser, "olga", "guess").await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert_eq!(wrong.text("[role=alert]"), "the user name or password is wrong");
    let signed_in = sign_in(&mut browser, "olga", "olga-pass").await;
    assert_eq!(signed_in.status, StatusCode::SEE_OTHER, "{}", signed_in.body);
    assert_eq!(signed_in.location.as_deref(), Some("/board"));
    let home = browser.get("/").await;
    assert_eq!(home.status, StatusCode::OK);
    assert_eq!(home.text(".who .user"), "olga (operator)");
    // Signing out ends it.
    let csrf = home.csrf();
    let out = browser.post_form("/logout", &[("csrf", &csrf)]).await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert_eq!(browser.get("/").await.status, StatusCode::SEE_OTHER);
    common::drop_database(&pages.store).await;
}

#[tokio::test]
async fn a_form_without_a_valid_csrf_token_is_refused() {
    let pages = Pages::start("t_pages_csrf", &password_config()).await;
    let mut admin = pages.browser();
    sign_in(&mut admin, "ada", "ada-pass").await;
    let token = admin.get("/").await.csrf();
    let mut other = pages.browser();
    let foreign_token = other.get("/login").await.csrf();
    assert_ne!(token, foreign_token);
    for fields in [vec![], vec![("csrf", foreign_token.as_str())], vec![("csrf", "forged")]] {
        let refused = admin.post_form("/logout", &fields).await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN, "{fields:?}");
        assert!(refused.text(".error-message").contains("security token"), "{}", refused.body);
    }
    // A body another site could post from a form needs the token, also
    // on the API; in a header will do.
    let body = r#"{"matchers": {"rule": "invoice_failures"}, "duration": "1h"}"#;
    let forged = admin.send("POST", "/api/v1/silences", Some("text/plain"), body.into()).await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    admin.headers.push(("X-CSRF-Token".into(), token.clone()));
    let with = admin.send("POST", "/api/v1/silences", Some("text/plain"), body.into()).await;
    assert_eq!(with.status, StatusCode::BAD_REQUEST, "past the token check, the API wants JSON: {}", with.body);
    assert!(with.json()["error"].as_str().unwrap().contains("application/json"), "{}", with.body);
    admin.headers.clear();
    // A JSON body cannot come from another site without a CORS preflight,
    // which Waybill never grants: it needs no token.
    let json = admin.send("POST", "/api/v1/silences", Some("application/json"), body.into()).await;
    assert!(json.status.is_success(), "{} {}", json.status, json.body);
    // Created by who is signed in, whatever the body claims.
    let claimed = r#"{"matchers": {"rule": "x"}, "duration": "1h", "created_by": "someone-else"}"#;
    let created = admin.send("POST", "/api/v1/silences", Some("application/json"), claimed.into()).await;
    assert_eq!(created.json()["created_by"], "ada", "{}", created.body);
    // And the token still works for a form.
    assert_eq!(admin.post_form("/logout", &[("csrf", &token)]).await.status, StatusCode::SEE_OTHER);
    common::drop_database(&pages.store).await;
}

#[tokio::test]
async fn a_viewer_can_look_but_not_act_and_an_operator_cannot_silence() {
    let pages = Pages::start("t_pages_roles", &password_config()).await;
    let mut viewer = pages.browser();
    sign_in(&mut viewer, "vic", "vic-pass").await;
    let home = viewer.get("/").await;
    assert_eq!(home.status, StatusCode::OK);
    let csrf = home.csrf();
    let refused = viewer.post_form("/exceptions/T-1/acknowledge", &[("csrf", &csrf)]).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(refused.text(".error-message").contains("operator"), "{}", refused.body);
    // Signing out is not an action on the data: a viewer may.
    assert_eq!(viewer.post_form("/logout", &[("csrf", &csrf)]).await.status, StatusCode::SEE_OTHER);
    let mut operator = pages.browser();
    sign_in(&mut operator, "olga", "olga-pass").await;
    let csrf = operator.get("/").await.csrf();
    operator.headers.push(("X-CSRF-Token".into(), csrf));
    let silence = operator.send("POST", "/api/v1/silences", Some("application/json"), r#"{"matchers": {"rule": "x"}, "duration": "1h"}"#.into()).await;
    assert_eq!(silence.status, StatusCode::FORBIDDEN);
    assert!(silence.json()["error"].as_str().unwrap().contains("admin"));
    common::drop_database(&pages.store).await;
}

#[tokio::test]
async fn scripts_use_http_basic_and_a_trusted_proxy_names_the_user() {
    let pages = Pages::start("t_pages_basic", &password_config()).await;
    let mut script = pages.browser();
    script.headers.push(("Authorization".into(), basic("olga", "olga-pass")));
    let page = script.get("/api/v1/transactions?state=stuck").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert_eq!(page.json()["transactions"], serde_json::json!([]));
    // An API action with Basic needs no token (past the layer, the
    // transaction is unknown); a page's form still does.
    let api = script.post_form("/api/v1/exceptions/T-unknown/acknowledge", &[]).await;
    assert_eq!(api.status, StatusCode::NOT_FOUND, "{}", api.body);
    let form = script.post_form("/exceptions/T-unknown/acknowledge", &[]).await;
    assert_eq!(form.status, StatusCode::FORBIDDEN, "{}", form.body);
    let mut wrong = pages.browser();
    wrong.headers.push(("Authorization".into(), basic("olga", "nope")));
    assert_eq!(wrong.get("/api/v1/transactions?state=stuck").await.status, StatusCode::UNAUTHORIZED);
    common::drop_database(&pages.store).await;

    let proxied = Pages::start("t_pages_proxy", "auth:\n  mode: proxy\n  role_header: X-Forwarded-Role\n  users: [{ name: olga, role: operator }]\n").await;
    let mut anonymous = proxied.browser();
    assert_eq!(anonymous.get("/").await.status, StatusCode::UNAUTHORIZED);
    let mut olga = proxied.browser();
    olga.headers.push(("X-Forwarded-User".into(), "olga".into()));
    assert_eq!(olga.get("/").await.text(".who .user"), "olga (operator)");
    let mut stranger = proxied.browser();
    stranger.headers.push(("X-Forwarded-User".into(), "sam".into()));
    assert_eq!(stranger.get("/").await.text(".who .user"), "sam (viewer)");
    stranger.headers.push(("X-Forwarded-Role".into(), "admin".into()));
    assert_eq!(stranger.get("/").await.text(".who .user"), "sam (admin)");
    // Behind a proxy, an Authorization header proves nothing to Waybill:
    // a form still needs its token.
    stranger.headers.push(("Authorization".into(), basic("sam", "whatever")));
    let refused = stranger.post_form("/exceptions/T-1/acknowledge", &[]).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(refused.text(".error-message").contains("security token"), "{}", refused.body);
    common::drop_database(&proxied.store).await;
}
