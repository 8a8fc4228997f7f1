//! The SLA and alerts page as people meet it: each rule's state, value per
//! group and trend after real evaluations over stored business events, the
//! history of transitions, silences created and expired by an admin and
//! refused to a viewer, the JSON twin, a refused reload and no rules at all.

mod common;

use common::{now_ns, rows};
use common::pages::rules_file;

use std::time::Duration;

use axum::http::StatusCode;
use common::pages::Pages;
use waybill_alerts::silence::{self, NewSilence};
use waybill_alerts::AlertsConfig;
use waybill_store::BizEventRow;

const SECOND: i64 = 1_000_000_000;

const RULES: &str = r#"
interval: 15s
rules:
  - name: invoice_failures
    sli: { kind: count, milestone: invoice.posted, outcome: failed }
    window: 1h
    group_by: [system]
    above: 0
    severity: critical
    annotations:
      summary: "{{ value }} invoices failed to post in {{ labels.system }}"
      runbook_url: https://runbooks.example.com/waybill/invoices
  - name: order_acceptance
    sli: { kind: ratio, numerator: order.accepted, denominator: order.captured }
    window: 1h
    below: 0.95
    severity: warning
"#;

async fn start(database: &str, yaml: &str) -> Pages {
    let config = AlertsConfig { rules_file: Some(rules_file(database, RULES)), ..AlertsConfig::default() };
    Pages::start_with(database, yaml, config).await
}

/// Three invoices failed to post in billing a few minutes ago; one posted.
fn invoice_events(now: i64) -> Vec<BizEventRow> {
    (0..4)
        .map(|i| {
            let outcome = if i < 3 { "failed" } else { "ok" };
            rows::biz_event(i, now - (5 * 60 - i as i64) * SECOND, "invoice.posted", "billing", outcome, ("invoice", &format!("INV-{}", 400 + i)))
        })
        .collect()
}

/// Stored failures, evaluated twice so the rule has a trend.
async fn breached(database: &str, yaml: &str) -> Pages {
    let pages = start(database, yaml).await;
    let now = now_ns();
    pages.store.insert("biz_events", &invoice_events(now)).await.unwrap();
    pages.alerts.evaluate(now).await.unwrap();
    pages.alerts.evaluate(now + SECOND).await.unwrap();
    pages
}

#[tokio::test]
async fn a_breached_rule_shows_firing_with_its_value_trend_and_history_and_the_json_twin_agrees() {
    let pages = breached("t_pages_sla_rules", "").await;
    let mut browser = pages.browser();
    let page = browser.get("/sla").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert_eq!(page.text("nav a.current"), "SLA & alerts");
    assert_eq!(page.count(".reload-error"), 0);

    let failing = "#rule-invoice_failures";
    assert_eq!(page.text(&format!("{failing} .rule-state")), "firing");
    assert_eq!(page.text(&format!("{failing} .severity")), "critical");
    assert_eq!(page.text(&format!("{failing} .sli .kind")), "count");
    assert_eq!(page.text(&format!("{failing} .window")), "1h");
    assert_eq!(page.text(&format!("{failing} .threshold")), "above 0");
    assert_eq!(page.texts(&format!("{failing} tr.group td.labels")), vec!["system=billing"]);
    assert_eq!(page.text(&format!("{failing} tr.group td.value")), "3");
    assert_eq!(page.text(&format!("{failing} tr.group td.samples")), "3");
    assert_eq!(page.text(&format!("{failing} tr.group .state")), "firing");
    assert_eq!(page.attrs(&format!("{failing} a.runbook"), "href"), vec!["https://runbooks.example.com/waybill/invoices"]);
    // Two evaluations: a line, not the empty chart's dash.
    assert_eq!(page.count(&format!("{failing} svg.sparkline polyline")), 1);

    let other = "#rule-order_acceptance";
    assert_eq!(page.text(&format!("{other} .rule-state")), "ok");
    assert_eq!(page.text(&format!("{other} .threshold")), "below 0.95");
    assert_eq!(page.count(&format!("{other} tr.group")), 0);
    assert_eq!(page.count(&format!("{other} .rule-health")), 0);

    // The firing transition, newest first, with the rule linking to it.
    let history = page.texts("table.history tbody tr");
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!(page.text("table.history td.rule"), "invoice_failures");
    assert_eq!(page.text("table.history td.event"), "firing");
    assert_eq!(page.text("table.history td.labels"), "system=billing");
    assert_eq!(page.text("table.history td.value"), "3");
    assert_eq!(page.attrs("table.history td.rule a", "href"), vec!["#rule-invoice_failures"]);
    let filtered = browser.get("/sla?rule=order_acceptance").await;
    assert_eq!(filtered.count("table.history tbody tr"), 0);
    assert!(filtered.text(".no-history").contains("order_acceptance"));
    assert_eq!(filtered.attrs("select[name=rule] option[selected]", "value"), vec!["order_acceptance"]);
    // A quote in the filter is a value, not SQL.
    let odd = browser.get("/sla?rule=x%27%20OR%201%3D1%20--").await;
    assert_eq!(odd.status, StatusCode::OK, "{}", odd.body);
    assert_eq!(odd.count("table.history tbody tr"), 0);

    let json = browser.get("/api/v1/sla").await.json();
    let rules = json["rules"].as_array().unwrap();
    let rule = rules.iter().find(|r| r["name"] == "invoice_failures").unwrap();
    assert_eq!(rule["kind"], "count");
    assert_eq!(rule["window"], "1h");
    assert_eq!(rule["threshold"], 0.0);
    assert_eq!(rule["direction"], "above");
    assert_eq!(rule["state"], "firing");
    assert_eq!(rule["severity"], "critical");
    assert_eq!(rule["health"], "ok");
    assert_eq!(rule["groups"], serde_json::json!([{"labels": {"system": "billing"}, "value": 3.0, "samples": 3, "state": "firing", "silenced": false}]));
    let trend = rule["trend"].as_array().unwrap();
    assert_eq!(trend.len(), 2);
    assert!(trend.iter().all(|p| p["value"] == 3.0 && p["time"].as_str().unwrap().ends_with('Z')), "{trend:?}");
    let other = rules.iter().find(|r| r["name"] == "order_acceptance").unwrap();
    assert_eq!((other["state"].as_str(), other["direction"].as_str(), other["groups"].as_array().unwrap().len()), (Some("ok"), Some("below"), 0));
    assert_eq!(json["history"].as_array().unwrap().len(), 1);
    assert_eq!(json["history"][0]["event"], "firing");
    assert_eq!(json["history"][0]["labels"]["system"], "billing");
    assert_eq!(json["silences"], serde_json::json!([]));
    common::drop_database(&pages.store).await;
}

#[tokio::test]
async fn an_admin_silences_an_alert_and_expires_it_and_bad_input_says_what_to_fix() {
    let pages = breached("t_pages_sla_silences", "").await;
    let mut browser = pages.browser();
    let page = browser.get("/sla").await;
    assert_eq!(page.count(".no-silences"), 1);
    assert_eq!(page.count("form.silence-form"), 1);
    let csrf = page.csrf();

    let refused = browser.post_form("/sla/silences", &[("csrf", &csrf), ("matchers", "alertname=invoice_failures"), ("duration", "soon"), ("comment", "")]).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert!(refused.text(".silence-form .problem").contains("\"soon\""), "{}", refused.text(".silence-form .problem"));
    // What was typed stays in the form.
    assert_eq!(refused.text(".silence-form textarea[name=matchers]"), "alertname=invoice_failures");
    let refused = browser.post_form("/sla/silences", &[("csrf", &csrf), ("matchers", "  \n"), ("duration", "2h"), ("comment", "")]).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert!(refused.text(".silence-form .problem").contains("at least one matcher"));
    assert_eq!(browser.get("/sla").await.count("tr.silence"), 0);

    let created = browser
        .post_form("/sla/silences", &[("csrf", &csrf), ("matchers", "alertname=invoice_failures\nsystem=billing"), ("duration", "2h"), ("comment", "billing maintenance")])
        .await;
    assert_eq!(created.status, StatusCode::SEE_OTHER, "{}", created.body);
    assert_eq!(created.location.as_deref(), Some("/sla#silences"));
    let page = browser.get("/sla").await;
    assert_eq!(page.count("tr.silence"), 1);
    assert_eq!(page.text("tr.silence .matchers"), "alertname=invoice_failures, system=billing");
    assert_eq!(page.text("tr.silence .creator"), "anonymous");
    assert_eq!(page.text("tr.silence .comment"), "billing maintenance");
    assert_eq!(page.text("#rule-invoice_failures tr.group .silenced"), "silenced");
    assert!(!page.text("tr.silence .ends").is_empty());
    let json = browser.get("/api/v1/sla").await.json();
    assert_eq!(json["silences"][0]["matchers"], serde_json::json!({"alertname": "invoice_failures", "system": "billing"}));
    assert_eq!(json["silences"][0]["created_by"], "anonymous");

    let expire = page.attrs("tr.silence form.expire", "action");
    assert_eq!(expire.len(), 1);
    let expired = browser.post_form(&expire[0], &[("csrf", &csrf)]).await;
    assert_eq!(expired.status, StatusCode::SEE_OTHER, "{}", expired.body);
    let page = browser.get("/sla").await;
    assert_eq!(page.count("tr.silence"), 0);
    assert_eq!(page.count(".no-silences"), 1);
    assert_eq!(page.count("#rule-invoice_failures tr.group .silenced"), 0);
    assert_eq!(browser.post_form("/sla/silences/0000000000000000/expire", &[("csrf", &csrf)]).await.status, StatusCode::NOT_FOUND);
    common::drop_database(&pages.store).await;
}

#[tokio::test]
async fn a_viewer_sees_silences_but_no_forms_and_may_not_create_or_expire_one() {
    let pages = breached("t_pages_sla_viewer", "auth:\n  mode: proxy\n  default_role: viewer\n").await;
    let silence = silence::create(
        &pages.store,
        NewSilence {
            matchers: [("alertname".to_string(), "invoice_failures".to_string())].into(),
            duration: Some("1h".into()),
            ends_at: None,
            created_by: "ada".into(),
            comment: "planned".into(),
        },
        now_ns(),
    )
    .await
    .unwrap()
    .unwrap();
    let mut browser = pages.browser();
    browser.headers.push(("X-Forwarded-User".into(), "vera".into()));
    let page = browser.get("/sla").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert_eq!(page.text(".who .user"), "vera (viewer)");
    assert_eq!(page.text("tr.silence .creator"), "ada");
    assert_eq!(page.count("form.silence-form"), 0);
    assert_eq!(page.count("form.expire"), 0);
    assert_eq!(page.text("#rule-invoice_failures .rule-state"), "firing");

    let csrf = page.csrf();
    let refused = browser.post_form("/sla/silences", &[("csrf", &csrf), ("matchers", "alertname=invoice_failures"), ("duration", "2h")]).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    let refused = browser.post_form(&format!("/sla/silences/{}/expire", silence.id), &[("csrf", &csrf)]).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(browser.get("/sla").await.count("tr.silence"), 1);
    common::drop_database(&pages.store).await;
}

#[tokio::test]
async fn a_refused_reload_shows_as_a_notice_above_the_rules_still_in_force() {
    let pages = start("t_pages_sla_reload", "").await;
    let path = pages.alerts.rules_file().unwrap().to_owned();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(pages.alerts.clone().run(stopped));
    std::fs::write(&path, "rules:\n  - name: broken\n    window: 1h\n    sli: { kind: nonsense }\n").unwrap();
    pages.alerts.reload();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while pages.alerts.rules().1.is_none() {
        assert!(tokio::time::Instant::now() < deadline, "the broken rules file was not refused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let page = pages.browser().get("/sla").await;
    let notice = page.text(".notice.reload-error");
    assert!(notice.contains("not reloaded") && notice.contains("alert-rules.yaml"), "{notice}");
    assert_eq!(page.count("article.sla-rule"), 2);
    assert_eq!(pages.browser().get("/api/v1/sla").await.json()["reload_error"].as_str(), pages.alerts.rules().1.as_deref());
    stop.send(true).unwrap();
    running.await.unwrap();
    common::drop_database(&pages.store).await;
}

#[tokio::test]
async fn without_a_rules_file_the_page_says_how_to_set_one_up() {
    let pages = Pages::start("t_pages_sla_none", "").await;
    let page = pages.browser().get("/sla").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let empty = page.text(".empty-state.no-rules");
    assert!(empty.contains("alerts.rules_file") && empty.contains("deploy/alert-rules.yaml") && empty.contains("docs/alerts.md"), "{empty}");
    assert_eq!(page.count("article.sla-rule"), 0);
    assert_eq!(page.count(".no-history"), 1);
    assert_eq!(pages.browser().get("/api/v1/sla").await.json()["rules"], serde_json::json!([]));
    common::drop_database(&pages.store).await;
}
