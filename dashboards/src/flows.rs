//! Integration flows: which system calls which, discovered from the spans of
//! a window (an SVG map and a table), and the API routes and versions in use.
//!
//! A call is seen from the caller's client or producer span when it names its
//! peer (`peer.service`, else `server.address`, else
//! `messaging.destination.name`; OpenTelemetry semantic conventions), and
//! from the callee's server or consumer span when its parent span belongs to
//! another service of the same trace. A call seen from both sides counts
//! once: the client span, named after the callee's own service when the
//! callee's span was found.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use askama::Template;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use clickhouse::Row;
use serde::{Deserialize, Serialize};
use waybill_store::{Store, StoreError};

use crate::auth::Viewer;
use crate::page::{self, Layout};
use crate::svg;
use crate::Dashboards;

/// The windows offered, and their length in seconds.
const WINDOWS: &[(&str, i64)] = &[("15m", 900), ("1h", 3600), ("6h", 6 * 3600), ("24h", 24 * 3600), ("7d", 7 * 24 * 3600)];
const DEFAULT_WINDOW: &str = "1h";
/// At most this many edges and routes are read: a map of more is unreadable.
const MAX_EDGES: usize = 300;
const MAX_ROUTES: usize = 300;
/// An edge failing more often than this is drawn in red.
const BAD_ERROR_SHARE: f64 = 0.05;

pub fn routes() -> Router<Dashboards> {
    Router::new().route("/flows", get(flows_page)).route("/api/v1/flows", get(flows_json))
}

#[derive(Debug, Deserialize)]
pub struct FlowsQuery {
    #[serde(default)]
    window: Option<String>,
}

/// A call relation between two systems over the window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Edge {
    pub from: String,
    pub to: String,
    pub calls: u64,
    pub rate_per_second: f64,
    pub p95_seconds: f64,
    pub error_share: f64,
}

/// A system on the map; `traced` is false for a peer that sends no spans
/// of its own (a SaaS API such as tax or freight).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Node {
    pub name: String,
    /// Column on the map: the longest chain of calls from a system nobody calls.
    pub depth: usize,
    pub traced: bool,
}

/// An API route a service serves, with the version it names.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ApiRoute {
    pub service: String,
    pub route: String,
    pub version: Option<String>,
    pub calls: u64,
    pub error_share: f64,
    pub p95_seconds: f64,
}

/// What the page and its JSON twin show.
#[derive(Debug, Serialize)]
pub struct FlowMap {
    pub window: String,
    pub from: String,
    pub to: String,
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
    pub routes: Vec<ApiRoute>,
}

#[derive(Debug, Row, Deserialize)]
struct EdgeStat {
    caller: String,
    callee: String,
    traced: u8,
    calls: u64,
    errors: u64,
    p95_ns: f64,
}

#[derive(Debug, Row, Deserialize)]
struct RouteStat {
    service: String,
    route: String,
    version: String,
    calls: u64,
    errors: u64,
    p95_ns: f64,
}

fn window_seconds(window: &str) -> Option<i64> {
    WINDOWS.iter().find(|(name, _)| *name == window).map(|(_, seconds)| *seconds)
}

/// The peer a client or producer span names (semantic conventions: the
/// logical service name, else the host it called, else the queue or topic).
const PEER: &str = "multiIf(SpanAttributes['peer.service'] != '', SpanAttributes['peer.service'], \
    SpanAttributes['server.address'] != '', SpanAttributes['server.address'], SpanAttributes['messaging.destination.name'])";

/// The edges of the window `[from_ns, to_ns]`: one query over the spans of
/// the window only (parents and linked spans outside it are not looked
/// for). A call is seen from its caller (a client or producer span naming
/// its peer), from its callee (a span whose parent is another service's),
/// or through a span link (a consumer linked to another service's
/// producer, as messaging integrations report; a link to its own parent is
/// the parent's call, counted once). The joins' hashed sides
/// hold only spans that are some other span's parent or link.
fn edges_sql(from_ns: i64, to_ns: i64) -> String {
    let window = format!("Timestamp >= fromUnixTimestamp64Nano({from_ns}) AND Timestamp <= fromUnixTimestamp64Nano({to_ns})");
    let servers = format!(
        "SELECT TraceId, ParentSpanId, ServiceName, StatusCode, Duration FROM otel_traces \
         WHERE {window} AND ParentSpanId != ''"
    );
    let linked = format!(
        "SELECT TraceId, ParentSpanId, ServiceName, StatusCode, Duration, LinkTraceId, LinkSpanId FROM otel_traces \
         ARRAY JOIN Links.TraceId AS LinkTraceId, Links.SpanId AS LinkSpanId \
         WHERE {window} AND notEmpty(Links.TraceId)"
    );
    format!(
        "SELECT caller, callee, max(traced) AS traced, count() AS calls, countIf(failed) AS errors, \
                toFloat64(quantile(0.95)(duration)) AS p95_ns FROM ( \
           SELECT c.ServiceName AS caller, \
                  if(s.ServiceName != '' AND s.ServiceName != c.ServiceName, s.ServiceName, c.peer) AS callee, \
                  toUInt8(s.ServiceName != '' AND s.ServiceName != c.ServiceName) AS traced, \
                  toUInt8(c.StatusCode = 'Error') AS failed, c.Duration AS duration \
           FROM (SELECT TraceId, SpanId, ServiceName, StatusCode, Duration, {PEER} AS peer FROM otel_traces \
                 WHERE {window} AND SpanKind IN ('Client', 'Producer') AND peer != '') AS c \
           LEFT JOIN ({servers}) AS s ON s.TraceId = c.TraceId AND s.ParentSpanId = c.SpanId \
           UNION ALL \
           SELECT p.ServiceName AS caller, s.ServiceName AS callee, toUInt8(1) AS traced, \
                  toUInt8(s.StatusCode = 'Error') AS failed, s.Duration AS duration \
           FROM ({servers}) AS s \
           INNER JOIN (SELECT TraceId, SpanId, ServiceName FROM otel_traces \
                       WHERE {window} AND NOT (SpanKind IN ('Client', 'Producer') AND {PEER} != '') \
                         AND SpanId IN (SELECT ParentSpanId FROM ({servers}))) AS p \
             ON p.TraceId = s.TraceId AND p.SpanId = s.ParentSpanId \
           WHERE p.ServiceName != s.ServiceName \
           UNION ALL \
           SELECT p.ServiceName AS caller, l.ServiceName AS callee, toUInt8(1) AS traced, \
                  toUInt8(l.StatusCode = 'Error') AS failed, l.Duration AS duration \
           FROM ({linked}) AS l \
           INNER JOIN (SELECT TraceId, SpanId, ServiceName FROM otel_traces \
                       WHERE {window} AND SpanId IN (SELECT LinkSpanId FROM ({linked}))) AS p \
             ON p.TraceId = l.LinkTraceId AND p.SpanId = l.LinkSpanId \
           WHERE p.ServiceName != l.ServiceName AND NOT (l.TraceId = p.TraceId AND l.ParentSpanId = p.SpanId)) \
         WHERE caller != '' AND callee != '' AND caller != callee \
         GROUP BY caller, callee ORDER BY calls DESC, caller, callee LIMIT {MAX_EDGES}"
    )
}

/// Server spans per service, route and version. (No `?` in the SQL: the
/// client takes it for a bind parameter.)
fn routes_sql(from_ns: i64, to_ns: i64) -> String {
    format!(
        "SELECT service, route, version, count() AS calls, countIf(StatusCode = 'Error') AS errors, \
                toFloat64(quantile(0.95)(Duration)) AS p95_ns FROM ( \
           SELECT ServiceName AS service, \
                  if(SpanAttributes['http.route'] != '', SpanAttributes['http.route'], SpanName) AS route, \
                  if(SpanAttributes['api.version'] != '', SpanAttributes['api.version'], \
                     extract(concat(route, ' ', SpanAttributes['url.path'], ' ', SpanAttributes['http.target']), '/(v[0-9]+)([^0-9A-Za-z_.-]|$)')) AS version, \
                  StatusCode, Duration \
           FROM otel_traces WHERE Timestamp >= fromUnixTimestamp64Nano({from_ns}) AND Timestamp <= fromUnixTimestamp64Nano({to_ns}) \
             AND SpanKind = 'Server') \
         GROUP BY service, route, version ORDER BY service, calls DESC, route LIMIT {MAX_ROUTES}"
    )
}

fn share(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// Reads the map of the `window` ending at `to_ns`.
pub async fn flow_map(store: &Store, window: &str, to_ns: i64) -> Result<FlowMap, StoreError> {
    let seconds = window_seconds(window).unwrap_or(3600);
    let from_ns = to_ns - seconds * 1_000_000_000;
    let stats: Vec<EdgeStat> = store.fetch_all(&edges_sql(from_ns, to_ns)).await?;
    let route_stats: Vec<RouteStat> = store.fetch_all(&routes_sql(from_ns, to_ns)).await?;
    let edges: Vec<Edge> = stats
        .iter()
        .map(|s| Edge {
            from: s.caller.clone(),
            to: s.callee.clone(),
            calls: s.calls,
            rate_per_second: s.calls as f64 / seconds as f64,
            p95_seconds: s.p95_ns / 1e9,
            error_share: share(s.errors, s.calls),
        })
        .collect();
    let mut traced: BTreeSet<&str> = stats.iter().map(|s| s.caller.as_str()).collect();
    traced.extend(stats.iter().filter(|s| s.traced != 0).map(|s| s.callee.as_str()));
    let depths = depths(&edges);
    let nodes = depths.into_iter().map(|(name, depth)| Node { traced: traced.contains(name.as_str()), name, depth }).collect();
    let routes = route_stats
        .into_iter()
        .map(|r| ApiRoute {
            service: r.service,
            route: r.route,
            version: Some(r.version).filter(|v| !v.is_empty()),
            calls: r.calls,
            error_share: share(r.errors, r.calls),
            p95_seconds: r.p95_ns / 1e9,
        })
        .collect();
    Ok(FlowMap {
        window: window.to_owned(),
        from: waybill_lineage::api::rfc3339(from_ns),
        to: waybill_lineage::api::rfc3339(to_ns),
        nodes,
        edges,
        routes,
    })
}

/// Every node's column: the longest chain of calls leading to it from a
/// system nobody calls. Calls that close a cycle are left out of the count
/// (found by a depth-first walk from those systems, then from the rest).
fn depths(edges: &[Edge]) -> BTreeMap<String, usize> {
    let mut out: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut called: BTreeSet<&str> = BTreeSet::new();
    for edge in edges {
        out.entry(edge.from.as_str()).or_default().push(edge.to.as_str());
        out.entry(edge.to.as_str()).or_default();
        called.insert(edge.to.as_str());
    }
    for targets in out.values_mut() {
        targets.sort_unstable();
        targets.dedup();
    }
    // Depth-first: post-order gives a reverse topological order of the
    // graph without its back edges.
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    let mut mark: BTreeMap<&str, Mark> = out.keys().map(|k| (*k, Mark::New)).collect();
    let mut kept: Vec<(&str, &str)> = Vec::new();
    let mut post: Vec<&str> = Vec::new();
    let roots: Vec<&str> = out.keys().copied().filter(|n| !called.contains(n)).chain(out.keys().copied().filter(|n| called.contains(n))).collect();
    for root in roots {
        if mark[root] != Mark::New {
            continue;
        }
        let mut stack: Vec<(&str, usize)> = vec![(root, 0)];
        mark.insert(root, Mark::Open);
        while let Some((node, next)) = stack.pop() {
            match out[node].get(next) {
                Some(&target) => {
                    stack.push((node, next + 1));
                    match mark[target] {
                        Mark::New => {
                            kept.push((node, target));
                            mark.insert(target, Mark::Open);
                            stack.push((target, 0));
                        }
                        Mark::Done => kept.push((node, target)),
                        Mark::Open => {} // a back edge: it closes a cycle
                    }
                }
                None => {
                    mark.insert(node, Mark::Done);
                    post.push(node);
                }
            }
        }
    }
    let mut depth: BTreeMap<&str, usize> = out.keys().map(|k| (*k, 0)).collect();
    for node in post.iter().rev() {
        let d = depth[node];
        for (_, target) in kept.iter().filter(|(from, _)| from == node) {
            if depth[target] < d + 1 {
                depth.insert(target, d + 1);
            }
        }
    }
    depth.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

/// Columns leave room between the boxes for an arrow's two-line label.
const COLUMN_WIDTH: f64 = 300.0;
const NODE_WIDTH: f64 = 140.0;
const NODE_HEIGHT: f64 = 34.0;
const ROW_HEIGHT: f64 = 90.0;
const MARGIN: f64 = 16.0;

/// `12.5%` of a share.
pub fn percent(share: f64) -> String {
    let p = share * 100.0;
    if p > 0.0 && p < 0.1 {
        "<0.1%".to_owned()
    } else {
        format!("{p:.1}%")
    }
}

/// `3.2/s` of a rate per second.
pub fn rate(per_second: f64) -> String {
    if per_second >= 10.0 {
        format!("{per_second:.0}/s")
    } else if per_second >= 0.01 || per_second == 0.0 {
        format!("{per_second:.2}/s")
    } else {
        format!("{:.1}/h", per_second * 3600.0)
    }
}

/// The map: nodes in columns by depth, arrows labelled with rate, p95 and
/// error share; an edge failing more than 5 % in red.
pub fn map_svg(nodes: &[Node], edges: &[Edge]) -> String {
    let mut position: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
    let mut rows: BTreeMap<usize, usize> = BTreeMap::new();
    for node in nodes {
        let row = rows.entry(node.depth).or_default();
        position.insert(node.name.as_str(), (MARGIN + node.depth as f64 * COLUMN_WIDTH, MARGIN + 14.0 + *row as f64 * ROW_HEIGHT));
        *row += 1;
    }
    let columns = rows.keys().max().map_or(1, |d| d + 1) as f64;
    let most_rows = rows.values().copied().max().unwrap_or(1) as f64;
    let width = 2.0 * MARGIN + (columns - 1.0) * COLUMN_WIDTH + NODE_WIDTH;
    // Room below the last row for a loop drawn under the boxes.
    let height = 2.0 * MARGIN + 14.0 + (most_rows - 1.0) * ROW_HEIGHT + NODE_HEIGHT + 56.0;
    let mut out = format!(
        r#"<svg class="flow-map" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" role="img" aria-label="Calls between systems">"#
    );
    out.push_str(
        r#"<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="6" markerHeight="6" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z"/></marker><marker id="arrow-bad" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="6" markerHeight="6" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z"/></marker></defs>"#,
    );
    for edge in edges {
        let (Some(&(ax, ay)), Some(&(bx, by))) = (position.get(edge.from.as_str()), position.get(edge.to.as_str())) else {
            continue;
        };
        let bad = edge.error_share > BAD_ERROR_SHARE;
        let (path, lx, ly) = if bx > ax {
            let (x1, y1, x2, y2) = (ax + NODE_WIDTH, ay + NODE_HEIGHT / 2.0, bx, by + NODE_HEIGHT / 2.0);
            let bend = (x2 - x1) / 2.0;
            (format!("M {x1:.1} {y1:.1} C {:.1} {y1:.1}, {:.1} {y2:.1}, {x2:.1} {y2:.1}", x1 + bend, x2 - bend), (x1 + x2) / 2.0, (y1 + y2) / 2.0 - 19.0)
        } else {
            // Back or sideways: a loop under the boxes.
            let (x1, y1, x2, y2) = (ax + NODE_WIDTH / 2.0, ay + NODE_HEIGHT, bx + NODE_WIDTH / 2.0 + 12.0, by + NODE_HEIGHT);
            let low = y1.max(y2) + 34.0;
            (format!("M {x1:.1} {y1:.1} C {x1:.1} {low:.1}, {x2:.1} {low:.1}, {x2:.1} {y2:.1}"), (x1 + x2) / 2.0, low - 12.0)
        };
        let first = format!("{} · p95 {}", rate(edge.rate_per_second), page::duration(edge.p95_seconds));
        let second = format!("{} err", percent(edge.error_share));
        let _ = write!(
            out,
            r#"<g class="edge{}" data-from="{}" data-to="{}"><title>{} → {}: {} calls</title><path d="{path}" marker-end="url(#{})"/><text x="{lx:.1}" y="{ly:.1}" text-anchor="middle" class="edge-label"><tspan x="{lx:.1}">{}</tspan><tspan x="{lx:.1}" dy="13">{}</tspan></text></g>"#,
            if bad { " bad" } else { "" },
            svg::escape(&edge.from),
            svg::escape(&edge.to),
            svg::escape(&edge.from),
            svg::escape(&edge.to),
            edge.calls,
            if bad { "arrow-bad" } else { "arrow" },
            svg::escape(&first),
            svg::escape(&second),
        );
    }
    for node in nodes {
        let (x, y) = position[node.name.as_str()];
        let shown: String = if node.name.chars().count() > 20 { node.name.chars().take(19).chain(['…']).collect() } else { node.name.clone() };
        let _ = write!(
            out,
            r#"<g class="node{}" data-name="{}"><title>{}</title><rect x="{x:.1}" y="{y:.1}" width="{NODE_WIDTH}" height="{NODE_HEIGHT}" rx="5"/><text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text></g>"#,
            if node.traced { "" } else { " external" },
            svg::escape(&node.name),
            svg::escape(&node.name),
            x + NODE_WIDTH / 2.0,
            y + NODE_HEIGHT / 2.0 + 4.0,
            svg::escape(&shown),
        );
    }
    out.push_str("</svg>");
    out
}

struct WindowOption {
    value: &'static str,
    selected: bool,
}

struct EdgeView {
    from: String,
    to: String,
    calls: u64,
    rate: String,
    p95: String,
    errors: String,
    bad: bool,
}

struct RouteView {
    service: String,
    route: String,
    version: String,
    calls: u64,
    errors: String,
    p95: String,
    bad: bool,
}

#[derive(Template)]
#[template(path = "flows.html")]
struct FlowsPage {
    layout: Layout,
    window: String,
    windows: Vec<WindowOption>,
    from: String,
    to: String,
    map: String,
    edges: Vec<EdgeView>,
    routes: Vec<RouteView>,
}

/// The window asked for, the default when none is.
fn chosen_window(query: &FlowsQuery) -> Result<String, String> {
    match query.window.as_deref().map(str::trim).filter(|w| !w.is_empty()) {
        None => Ok(DEFAULT_WINDOW.to_owned()),
        Some(window) if window_seconds(window).is_some() => Ok(window.to_owned()),
        Some(_) => Err(format!("the window must be one of {}", WINDOWS.iter().map(|(w, _)| *w).collect::<Vec<_>>().join(", "))),
    }
}

async fn flows_page(State(dashboards): State<Dashboards>, Extension(viewer): Extension<Viewer>, Query(query): Query<FlowsQuery>) -> Response {
    let window = match chosen_window(&query) {
        Ok(window) => window,
        Err(message) => return page::error_page(StatusCode::BAD_REQUEST, &message),
    };
    let to_ns = page::now_ns();
    let map = match flow_map(dashboards.store(), &window, to_ns).await {
        Ok(map) => map,
        Err(err) => return page::store_error(err),
    };
    let seconds = window_seconds(&window).unwrap_or(3600);
    let edges = map
        .edges
        .iter()
        .map(|e| EdgeView {
            from: e.from.clone(),
            to: e.to.clone(),
            calls: e.calls,
            rate: rate(e.rate_per_second),
            p95: page::duration(e.p95_seconds),
            errors: percent(e.error_share),
            bad: e.error_share > BAD_ERROR_SHARE,
        })
        .collect();
    let routes = map
        .routes
        .iter()
        .map(|r| RouteView {
            service: r.service.clone(),
            route: r.route.clone(),
            version: r.version.clone().unwrap_or_else(|| "—".to_owned()),
            calls: r.calls,
            errors: percent(r.error_share),
            p95: page::duration(r.p95_seconds),
            bad: r.error_share > BAD_ERROR_SHARE,
        })
        .collect();
    page::render(&FlowsPage {
        layout: Layout::new("Integration flows", "flows", &viewer),
        windows: WINDOWS.iter().map(|(w, _)| WindowOption { value: w, selected: *w == window }).collect(),
        from: page::time(to_ns - seconds * 1_000_000_000),
        to: page::time(to_ns),
        map: if map.edges.is_empty() { String::new() } else { map_svg(&map.nodes, &map.edges) },
        edges,
        routes,
        window,
    })
}

async fn flows_json(State(dashboards): State<Dashboards>, Query(query): Query<FlowsQuery>) -> Response {
    let window = match chosen_window(&query) {
        Ok(window) => window,
        Err(message) => return page::json_error(StatusCode::BAD_REQUEST, &message),
    };
    match flow_map(dashboards.store(), &window, page::now_ns()).await {
        Ok(map) => Json(map).into_response(),
        Err(err) => page::json_error(StatusCode::SERVICE_UNAVAILABLE, &format!("the store did not answer: {err}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(from: &str, to: &str) -> Edge {
        Edge { from: from.into(), to: to.into(), calls: 1, rate_per_second: 1.0, p95_seconds: 0.1, error_share: 0.0 }
    }

    #[test]
    fn columns_follow_the_longest_chain_from_systems_nobody_calls() {
        let edges = [edge("portal", "middleware"), edge("middleware", "erp"), edge("portal", "erp"), edge("erp", "warehouse"), edge("warehouse", "erp")];
        let depths = depths(&edges);
        assert_eq!(depths["portal"], 0);
        assert_eq!(depths["middleware"], 1);
        assert_eq!(depths["erp"], 2);
        assert_eq!(depths["warehouse"], 3, "the call back to erp closes a cycle and is not counted");
    }

    #[test]
    fn a_cycle_without_a_start_still_gets_columns() {
        let depths = depths(&[edge("a", "b"), edge("b", "a")]);
        assert_eq!((depths["a"], depths["b"]), (0, 1));
    }

    #[test]
    fn names_in_the_map_are_escaped_and_failing_edges_red() {
        let mut bad = edge("<portal>", "tax\"saas");
        bad.error_share = 0.2;
        let nodes = [Node { name: "<portal>".into(), depth: 0, traced: true }, Node { name: "tax\"saas".into(), depth: 1, traced: false }];
        let svg = map_svg(&nodes, &[bad]);
        assert!(!svg.contains("<portal>") && svg.contains("&lt;portal&gt;"), "{svg}");
        assert!(svg.contains(r#"class="edge bad""#) && svg.contains(r#"class="node external""#), "{svg}");
        assert!(svg.contains("20.0% err"), "{svg}");
    }

    #[test]
    fn rates_and_shares_read_plainly() {
        assert_eq!(rate(0.5), "0.50/s");
        assert_eq!(rate(25.0), "25/s");
        assert_eq!(rate(1.0 / 3600.0), "1.0/h");
        assert_eq!(percent(0.25), "25.0%");
        assert_eq!(percent(0.0), "0.0%");
    }
}
