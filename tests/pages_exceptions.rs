//! The exception queue as operators work it: failed and stuck transactions
//! as work items, acknowledged, assigned, commented and resolved with an
//! audit trail, and a failed step replayed to a real HTTP receiver once,
//! again only when confirmed, its failures recorded.

mod common;

use common::now_ns;

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use common::pages::{Browser, Pages};
use waybill_store::TransactionRow;

const MIN: i64 = 60 * 1_000_000_000;
const HOUR: i64 = 60 * MIN;

fn id(n: u32) -> String {
    format!("{n:032x}")
}

fn span(n: u32, i: usize) -> String {
    format!("{:016x}", n as usize * 100 + i)
}

/// A transaction rooted at order `root` through `milestones` (name,
/// system, age, outcome); keys: the order, a sales order and an invoice.
fn tx(n: u32, root: &str, state: &str, milestones: &[(&str, &str, i64, &str)], overdue: &[(&str, i64)], now: i64) -> TransactionRow {
    let mut systems: Vec<String> = Vec::new();
    for m in milestones {
        if !systems.iter().any(|s| s == m.1) {
            systems.push(m.1.to_owned());
        }
    }
    TransactionRow {
        id: id(n),
        root_kind: "order".into(),
        root_value: root.into(),
        state: state.into(),
        key_kinds: vec!["order".into(), "sales_order".into(), "invoice".into()],
        key_values: vec![root.into(), format!("SO-{n}"), format!("INV-{n}")],
        systems,
        milestone_names: milestones.iter().map(|m| m.0.to_owned()).collect(),
        milestone_systems: milestones.iter().map(|m| m.1.to_owned()).collect(),
        milestone_times_ns: milestones.iter().map(|m| now - m.2).collect(),
        milestone_outcomes: milestones.iter().map(|m| m.3.to_owned()).collect(),
        milestone_trace_ids: milestones.iter().map(|_| format!("{n:032x}").replace('0', "a")).collect(),
        milestone_span_ids: (0..milestones.len()).map(|i| span(n, i)).collect(),
        overdue_milestones: overdue.iter().map(|o| o.0.to_owned()).collect(),
        overdue_due_ns: overdue.iter().map(|o| now - o.1).collect(),
        next_due_ns: 0,
        started_ns: now - milestones.iter().map(|m| m.2).max().unwrap_or(0),
        updated_ns: now - MIN,
        version: 1,
    }
}

/// PO-1 failed at the ERP 1 h ago; PO-2 stuck (shipment due 3 h ago,
/// waiting at the warehouse); PO-3 failed at billing 30 min ago (no replay
/// target there); PO-4 completed.
async fn seed(pages: &Pages, now: i64) {
    let rows = [
        tx(1, "PO-1", "failed", &[("order.captured", "portal", 2 * HOUR, "ok"), ("order.accepted", "erp", 90 * MIN, "ok"), ("invoice.posted", "erp", HOUR, "failed")], &[], now),
        tx(2, "PO-2", "stuck", &[("order.captured", "portal", 5 * HOUR, "ok"), ("order.accepted", "warehouse", 4 * HOUR, "ok")], &[("shipment.dispatched", 3 * HOUR)], now),
        tx(3, "PO-3", "failed", &[("order.captured", "portal", HOUR, "ok"), ("invoice.posted", "billing", 30 * MIN, "rejected")], &[], now),
        tx(4, "PO-4", "completed", &[("order.captured", "portal", HOUR, "ok"), ("invoice.posted", "erp", 10 * MIN, "ok")], &[], now),
    ];
    pages.store.insert("transactions", &rows).await.unwrap();
}

/// Sign-in through a trusted proxy: olga operates, vic looks.
fn proxy_config(replay: &str) -> String {
    format!("auth:\n  mode: proxy\n  users:\n    - {{ name: olga, role: operator }}\n    - {{ name: vic, role: viewer }}\n{replay}")
}

fn as_user(pages: &Pages, user: &str) -> Browser {
    let mut browser = pages.browser();
    browser.headers.push(("X-Forwarded-User".into(), user.into()));
    browser
}

/// Posts `action` on the item with the page's CSRF token.
async fn act(browser: &mut Browser, item: &str, action: &str, fields: &[(&str, &str)]) -> common::pages::Page {
    let csrf = browser.get(&format!("/exceptions/{item}")).await.csrf();
    let mut form = vec![("csrf", csrf.as_str())];
    form.extend_from_slice(fields);
    browser.post_form(&format!("/exceptions/{item}/{action}"), &form).await
}

#[tokio::test]
async fn an_operator_works_an_item_from_open_to_resolved_and_the_trail_says_who_did_what_when() {
    let pages = Pages::start("t_pages_exceptions_lifecycle", &proxy_config("")).await;
    let now = now_ns();
    seed(&pages, now).await;
    let mut olga = as_user(&pages, "olga");
    let item = id(1);

    let queue = olga.get("/exceptions").await;
    assert_eq!(queue.status, StatusCode::OK, "{}", queue.body);
    assert_eq!(queue.text("nav a.current"), "Exceptions");
    // Newest problem first: PO-3 (30 min), PO-1 (1 h), PO-2 (due 3 h ago).
    assert_eq!(queue.texts("table.exceptions td.root a"), ["PO-3", "PO-1", "PO-2"]);
    assert_eq!(queue.texts("table.exceptions td.status"), ["open", "open", "open"]);
    assert_eq!(queue.texts("table.exceptions td.step")[1], "invoice.posted failed at erp");
    assert_eq!(queue.texts("table.exceptions td.step")[2], "shipment.dispatched overdue (waiting at warehouse)");

    // A viewer sees the item but no buttons.
    let mut vic = as_user(&pages, "vic");
    let seen = vic.get(&format!("/exceptions/{item}")).await;
    assert_eq!(seen.status, StatusCode::OK);
    assert_eq!(seen.text(".step-text"), "invoice.posted failed at erp");
    assert_eq!(seen.count("section.actions"), 0);
    assert_eq!(seen.count("form[action^='/exceptions/']"), 0);

    let page = olga.get(&format!("/exceptions/{item}")).await;
    assert_eq!(page.text(".empty-trail"), "Nobody has acted on this yet.");
    assert!(page.text(".payload").contains(&span(1, 2)), "the failed step's span is its payload reference: {}", page.body);

    let done = act(&mut olga, &item, "acknowledge", &[]).await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
    assert_eq!(done.location.as_deref(), Some(format!("/exceptions/{item}?done=acknowledge").as_str()));
    let page = olga.get(&format!("/exceptions/{item}?done=acknowledge")).await;
    assert_eq!(page.text(".summary .status"), "acknowledged");
    assert_eq!(page.text(".action-notice"), "Acknowledged.");

    // Input is checked: a name to assign to, text to comment.
    let refused = act(&mut olga, &item, "assign", &[("assignee", "  ")]).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert!(refused.text(".error-message").contains("assign needs a name"), "{}", refused.body);
    let refused = act(&mut olga, &item, "comment", &[("comment", "")]).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert!(refused.text(".error-message").contains("a comment needs text"), "{}", refused.body);

    assert_eq!(act(&mut olga, &item, "assign", &[("assignee", "kim")]).await.status, StatusCode::SEE_OTHER);
    assert_eq!(act(&mut olga, &item, "comment", &[("comment", "ERP rejected the tax code <b>7</b>")]).await.status, StatusCode::SEE_OTHER);
    let page = olga.get(&format!("/exceptions/{item}")).await;
    assert_eq!(page.text(".summary .status"), "assigned to kim");
    let queue = olga.get("/exceptions").await;
    assert_eq!(queue.texts("table.exceptions td.status"), ["open", "assigned to kim", "open"]);

    assert_eq!(act(&mut olga, &item, "resolve", &[("note", "tax code fixed in ERP, reposted")]).await.status, StatusCode::SEE_OTHER);
    let page = olga.get(&format!("/exceptions/{item}")).await;
    assert_eq!(page.text(".summary .status"), "resolved");
    // Newest first, each with its actor and time.
    assert_eq!(page.texts("table.audit td.action"), ["resolve", "comment", "assign", "acknowledge"]);
    assert_eq!(page.texts("table.audit td.actor"), ["olga"; 4]);
    assert_eq!(page.texts("table.audit td.what"), ["resolved: tax code fixed in ERP, reposted", "ERP rejected the tax code <b>7</b>", "assigned to kim", "acknowledged"]);
    assert_eq!(page.count("table.audit b"), 0, "markup in a comment is text");
    let times = page.texts("table.audit td.time");
    let when = |t: &String| waybill_dashboards::page::parse_time(&format!("{}Z", t.replacen(' ', "T", 1))).unwrap();
    assert!(times.iter().all(|t| when(t) >= now - 1_000_000_000 && when(t) <= now_ns()), "acted just now: {times:?}");

    // Resolved items leave the default queue, and show under `resolved`.
    let queue = olga.get("/exceptions").await;
    assert_eq!(queue.texts("table.exceptions td.root a"), ["PO-3", "PO-2"]);
    let resolved = olga.get("/exceptions?status=resolved").await;
    assert_eq!(resolved.texts("table.exceptions td.root a"), ["PO-1"]);
    assert_eq!(olga.get("/exceptions?status=open").await.texts("table.exceptions td.root a"), ["PO-3", "PO-2"]);

    // The JSON twins, and an action answered as JSON for a script.
    let json = olga.get(&format!("/api/v1/exceptions/{item}")).await.json();
    assert_eq!(json["item"]["status"], "resolved");
    assert_eq!(json["item"]["step"]["milestone"], "invoice.posted");
    let trail: Vec<(&str, &str)> = json["trail"].as_array().unwrap().iter().map(|a| (a["actor"].as_str().unwrap(), a["action"].as_str().unwrap())).collect();
    assert_eq!(trail, [("olga", "acknowledge"), ("olga", "assign"), ("olga", "comment"), ("olga", "resolve")]);
    assert_eq!(json["trail"][1]["assignee"], "kim");
    let listed = olga.get("/api/v1/exceptions?status=all").await.json();
    let ids: Vec<&str> = listed["items"].as_array().unwrap().iter().map(|i| i["root"]["value"].as_str().unwrap()).collect();
    assert_eq!(ids, ["PO-3", "PO-1", "PO-2"]);

    olga.headers.push(("Accept".into(), "application/json".into()));
    let answer = act(&mut olga, &id(2), "assign", &[("assignee", "lee")]).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let answer = answer.json();
    assert_eq!((answer["status"].as_str(), answer["assignee"].as_str(), answer["actor"].as_str()), (Some("assigned"), Some("lee"), Some("olga")));
    let refused = act(&mut olga, &id(2), "comment", &[]).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert!(refused.json()["error"].as_str().unwrap().contains("needs text"));

    // A viewer's action is refused by the sign-in layer.
    let csrf = vic.get(&format!("/exceptions/{item}")).await.csrf();
    let refused = vic.post_form(&format!("/exceptions/{item}/acknowledge"), &[("csrf", &csrf)]).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    common::drop_database(&pages.store).await;
}

/// What the test's replay endpoint saw: every request's headers and body.
#[derive(Default)]
struct Receiver {
    fail: bool,
    requests: Vec<(HeaderMap, serde_json::Value)>,
}

async fn receive(State(receiver): State<Arc<Mutex<Receiver>>>, headers: HeaderMap, body: axum::body::Bytes) -> (StatusCode, &'static str) {
    let mut receiver = receiver.lock().unwrap();
    receiver.requests.push((headers, serde_json::from_slice(&body).unwrap_or_default()));
    if receiver.fail {
        (StatusCode::SERVICE_UNAVAILABLE, "replay queue is full")
    } else {
        (StatusCode::ACCEPTED, "queued")
    }
}

async fn replay_receiver(fail: bool) -> (Arc<Mutex<Receiver>>, std::net::SocketAddr) {
    let receiver = Arc::new(Mutex::new(Receiver { fail, ..Default::default() }));
    let router = axum::Router::new().route("/replay", axum::routing::post(receive)).with_state(receiver.clone());
    (receiver, common::serve(router).await)
}

fn seen(receiver: &Arc<Mutex<Receiver>>) -> Vec<(HeaderMap, serde_json::Value)> {
    receiver.lock().unwrap().requests.clone()
}

#[tokio::test]
async fn a_replay_is_sent_once_again_only_when_confirmed_and_a_failing_receiver_is_recorded() {
    let (erp, erp_addr) = replay_receiver(false).await;
    let (warehouse, warehouse_addr) = replay_receiver(true).await;
    let replay = format!(
        "replay:\n  erp: {{ url: \"http://{erp_addr}/replay\", headers: {{ X-Api-Key: erp-key-1 }} }}\n  warehouse: {{ url: \"http://{warehouse_addr}/replay\" }}\n"
    );
    let pages = Pages::start("t_pages_exceptions_replay", &proxy_config(&replay)).await;
    let now = now_ns();
    seed(&pages, now).await;
    let mut olga = as_user(&pages, "olga");
    let item = id(1);

    let page = olga.get(&format!("/exceptions/{item}")).await;
    assert_eq!(page.count("form.action-replay"), 1, "{}", page.body);
    let done = act(&mut olga, &item, "replay", &[]).await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
    let requests = seen(&erp);
    assert_eq!(requests.len(), 1);
    let (headers, body) = &requests[0];
    let key = headers["idempotency-key"].to_str().unwrap().to_owned();
    assert_eq!(headers["x-api-key"], "erp-key-1");
    assert_eq!(body["idempotency_key"], key.as_str());
    assert_eq!(body["transaction_id"], item.as_str());
    assert_eq!(body["milestone"], "invoice.posted");
    assert_eq!(body["system"], "erp");
    assert_eq!(body["span_id"], span(1, 2).as_str());
    assert_eq!(body["trace_id"].as_str().unwrap().len(), 32);
    assert_eq!(body["keys"]["order"], serde_json::json!(["PO-1"]));
    assert_eq!(body["keys"]["invoice"], serde_json::json!(["INV-1"]));
    assert_eq!(body["requested_by"], "olga");

    let page = olga.get(&format!("/exceptions/{item}?done=replay")).await;
    assert_eq!(page.text(".action-notice"), "Replay attempt 1 delivered to erp.");
    assert_eq!(page.texts("table.audit tr.action-replay td.outcome").iter().map(|o| o.split(' ').next().unwrap().to_owned()).collect::<Vec<_>>(), ["delivered", "started"]);
    assert_eq!(page.texts("table.audit tr.action-replay td.actor"), ["olga", "olga"]);
    assert_eq!(page.count("form.action-replay"), 0, "the plain button is gone once replayed");
    assert!(page.text(".replay-last").contains("by olga: delivered"), "{}", page.body);

    // A second plain replay (a stale page, a double click) is refused.
    let csrf = page.csrf();
    let refused = olga.post_form(&format!("/exceptions/{item}/replay"), &[("csrf", &csrf)]).await;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{}", refused.body);
    let message = refused.text(".refusal");
    assert!(message.contains("replayed at") && message.contains("by olga") && message.contains("again=yes"), "{message}");
    assert_eq!(seen(&erp).len(), 1, "the receiver saw one request");

    // Confirmed: attempt 2 with a new key; the same confirmation twice
    // sends nothing more.
    let again = olga.post_form(&format!("/exceptions/{item}/replay"), &[("csrf", &csrf), ("again", "yes"), ("attempt", "2")]).await;
    assert_eq!(again.status, StatusCode::SEE_OTHER, "{}", again.body);
    let requests = seen(&erp);
    assert_eq!(requests.len(), 2);
    let second_key = requests[1].0["idempotency-key"].to_str().unwrap().to_owned();
    assert_ne!(second_key, key);
    assert_eq!(requests[1].1["idempotency_key"], second_key.as_str());
    let twice = olga.post_form(&format!("/exceptions/{item}/replay"), &[("csrf", &csrf), ("again", "yes"), ("attempt", "2")]).await;
    assert_eq!(twice.status, StatusCode::CONFLICT);
    assert_eq!(seen(&erp).len(), 2);
    let json = olga.get(&format!("/api/v1/exceptions/{item}")).await.json();
    assert_eq!(json["replay"]["attempts"], 2);
    let keys: Vec<&str> = json["trail"].as_array().unwrap().iter().filter(|a| a["outcome"] == "delivered").map(|a| a["replay_key"].as_str().unwrap()).collect();
    assert_eq!(keys, [key.as_str(), second_key.as_str()]);

    // A system without a replay endpoint: no button, and the POST names
    // the config key to set.
    let page = olga.get(&format!("/exceptions/{}", id(3))).await;
    assert_eq!(page.count("form.action-replay"), 0);
    assert!(page.text(".replay-missing").contains("dashboards.replay.billing.url"));
    olga.headers.push(("Accept".into(), "application/json".into()));
    let refused = act(&mut olga, &id(3), "replay", &[]).await;
    assert_eq!(refused.status, StatusCode::CONFLICT);
    assert!(refused.json()["error"].as_str().unwrap().contains("dashboards.replay.billing.url"), "{}", refused.body);

    // A receiver that keeps failing: retried with the same key, then the
    // failure is recorded with what it answered.
    let failed = act(&mut olga, &id(2), "replay", &[]).await;
    assert_eq!(failed.status, StatusCode::BAD_GATEWAY, "{}", failed.body);
    let answer = failed.json();
    assert_eq!(answer["outcome"], "failed");
    assert!(answer["detail"].as_str().unwrap().contains("503"), "{answer}");
    let requests = seen(&warehouse);
    assert!(requests.len() > 1, "the sender retries");
    assert!(requests.iter().all(|(h, _)| h["idempotency-key"] == requests[0].0["idempotency-key"]), "every retry carries the same key");
    assert_eq!(requests[0].1["milestone"], "order.accepted", "a stuck transaction replays the last milestone reached");
    assert_eq!(requests[0].1["system"], "warehouse");
    olga.headers.pop();
    let page = olga.get(&format!("/exceptions/{}", id(2))).await;
    let outcomes = page.texts("table.audit tr.action-replay td.outcome");
    assert!(outcomes[0].starts_with("failed"), "{outcomes:?}");
    assert!(page.texts("table.audit tr.action-replay td.what")[0].contains("replay queue is full"), "{}", page.body);
    common::drop_database(&pages.store).await;
}
