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
