//! The web console: server-rendered pages over [`super::views`], with a
//! little JavaScript (`assets/console.js`) that refreshes each page's
//! content every two seconds, formats times, and asks before an abort.
//! Everything is embedded in the binary; the pages load nothing from
//! anywhere else.

use axum::Router;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use maud::{DOCTYPE, Markup, html};
use serde::Deserialize;

use super::Http;
use super::api::status_of;
use super::views::*;
use crate::BrokerError;
use crate::auth::acl::Caller;

const SCRIPT: &str = include_str!("assets/console.js");
const STYLE: &str = include_str!("assets/console.css");

pub(super) fn routes() -> Router<Http> {
    Router::new()
        .route("/", get(overview))
        .route("/topics", get(topics))
        .route("/topics/{name}", get(topic))
        .route("/topics/{name}/partitions/{partition}", get(browse))
        .route("/producers", get(producers))
        .route("/transactions", get(transactions))
        .route("/groups", get(groups))
        .route("/groups/{id}", get(group))
        .route("/assets/console.js", get(script))
        .route("/assets/console.css", get(style))
}

async fn script() -> Response {
    asset(SCRIPT, "text/javascript; charset=utf-8")
}

async fn style() -> Response {
    asset(STYLE, "text/css; charset=utf-8")
}

fn asset(body: &'static str, kind: &'static str) -> Response {
    let mut resp = body.into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    resp
}

const NAV: [(&str, &str); 5] = [
    ("/", "Overview"),
    ("/topics", "Topics"),
    ("/producers", "Producers"),
    ("/transactions", "Transactions"),
    ("/groups", "Groups"),
];

/// A whole page: navigation, then `body` in the refreshed `<main>`.
fn page(title: &str, section: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Ferry" }
                link rel="stylesheet" href="/assets/console.css";
                script src="/assets/console.js" defer {}
            }
            body {
                header {
                    a.brand href="/" { "Ferry" }
                    nav {
                        @for (href, name) in NAV {
                            a href=(href) class=[(section == href).then_some("active")] { (name) }
                        }
                    }
                }
                main data-refresh="2000" { (body) }
            }
        }
    }
}

fn respond(status: StatusCode, markup: Markup) -> Response {
    let mut resp = (status, markup.into_string()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    resp
}

fn ok(title: &str, section: &str, body: Markup) -> Response {
    respond(StatusCode::OK, page(title, section, body))
}

fn failed(section: &str, e: BrokerError) -> Response {
    let code = e.code();
    respond(
        status_of(code),
        page(
            "Error",
            section,
            html! {
                h1 { "Error" }
                p.error { code class="code" { (code.name()) } " " (e.to_string()) }
            },
        ),
    )
}

pub(super) fn not_found(path: &str) -> Response {
    respond(
        StatusCode::NOT_FOUND,
        page(
            "Not found",
            "",
            html! { h1 { "Not found" } p.error { "Nothing here: " code { (path) } } },
        ),
    )
}

/// A number of bytes, for a person.
fn bytes(n: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{v:.0} {}", UNITS[unit])
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// A time, formatted in the browser's zone by the script.
fn time(ms: i64) -> Markup {
    html! { time data-ms=(ms) { (ms) } }
}

/// One line of a chart: its name, its CSS class, its (ms, value) points.
type Series<'a> = (&'a str, &'a str, Vec<(i64, f64)>);

/// A line chart of `series` as inline SVG.
fn chart(label: &str, unit: &str, series: &[Series<'_>]) -> Markup {
    const W: f64 = 720.0;
    const H: f64 = 160.0;
    let all = series.iter().flat_map(|s| s.2.iter());
    let (mut t0, mut t1, mut max) = (i64::MAX, i64::MIN, 0f64);
    for &(t, v) in all {
        t0 = t0.min(t);
        t1 = t1.max(t);
        max = max.max(v);
    }
    if t0 > t1 {
        (t0, t1) = (0, 0);
    }
    let span = t1.saturating_sub(t0).max(1) as f64;
    let top = if max > 0.0 { max * 1.1 } else { 1.0 };
    let line = |pts: &[(i64, f64)]| {
        pts.iter()
            .map(|&(t, v)| {
                let x = (t - t0) as f64 / span * W;
                let y = H - v / top * H;
                format!("{x:.1},{y:.1}")
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    html! {
        figure.chart {
            figcaption {
                (label) " — peak " (if unit == "B/s" { format!("{}/s", bytes(max)) } else { format!("{max:.0} {unit}") })
                @for (name, class, _) in series { " " span class=(format!("key {class}")) { (name) } }
            }
            @if series.iter().all(|s| s.2.len() < 2) {
                p.muted { "Collecting data…" }
            } @else {
                svg viewBox=(format!("0 0 {W} {H}")) preserveAspectRatio="none" role="img" aria-label=(label) {
                    @for (_, class, pts) in series {
                        polyline class=(*class) points=(line(pts)) {}
                    }
                }
            }
        }
    }
}

fn dl(rows: &[(&str, Markup)]) -> Markup {
    html! { dl.facts { @for (k, v) in rows { dt { (k) } dd { (v) } } } }
}

async fn overview(State(http): State<Http>, Extension(who): Extension<Caller>) -> Response {
    let b = match http.broker(&who) {
        Ok(b) => b,
        Err(e) => return failed("/", e),
    };
    let points = |f: fn(&ThroughputPoint) -> f64| -> Vec<(i64, f64)> {
        b.throughput.iter().map(|p| (p.at_ms, f(p))).collect()
    };
    let listen = |a: &Option<String>| html! { @match a { Some(a) => code { (a) }, None => span.muted { "off" } } };
    ok(
        "Overview",
        "/",
        html! {
            h1 { "Overview" }
            (dl(&[
                ("Version", html! { (b.version) }),
                ("Uptime", html! { span data-duration-ms=(b.uptime_ms) { (b.uptime_ms / 1000) " s" } }),
                ("gRPC", listen(&b.grpc_listen)),
                ("Kafka", listen(&b.kafka_listen)),
                ("HTTP", listen(&b.http_listen)),
                ("Fsync", html! { code { (b.fsync) } }),
                ("Data dir", html! { code { (b.data_dir) } }),
                ("Log bytes", html! { (bytes(b.log_bytes as f64)) }),
                ("Disk", html! {
                    @match (b.disk_free_bytes, b.disk_total_bytes) {
                        (Some(free), Some(total)) => { (bytes(free as f64)) " free of " (bytes(total as f64)) },
                        _ => span.muted { "unknown" },
                    }
                }),
                ("Topics", html! { a href="/topics" { (b.topics) } }),
                ("Authentication", html! { (if b.authentication { "on" } else { "off" }) }),
            ]))
            (chart("Throughput", "B/s", &[
                ("produce", "produce", points(|p| p.produce_bytes_per_sec)),
                ("fetch", "fetch", points(|p| p.fetch_bytes_per_sec)),
            ]))
        },
    )
}

async fn topics(State(http): State<Http>, Extension(who): Extension<Caller>) -> Response {
    let list = http.topics(&who);
    ok(
        "Topics",
        "/topics",
        html! {
            h1 { "Topics" }
            @if list.is_empty() { p.muted { "No topics." } } @else {
                table id="topics" {
                    thead { tr { th { "Topic" } th.num { "Partitions" } th.num { "High watermarks" } th.num { "Size" } th.num { "Produce" } th.num { "Fetch" } } }
                    tbody {
                        @for t in &list {
                            tr data-topic=(t.name) {
                                td { a href=(format!("/topics/{}", urlencode(&t.name))) { (t.name) } }
                                td.num { (t.partitions) }
                                td.num { (t.high_watermark_sum) }
                                td.num { (bytes(t.size_bytes as f64)) }
                                td.num { (bytes(t.produce_bytes_per_sec)) "/s" }
                                td.num { (bytes(t.fetch_bytes_per_sec)) "/s" }
                            }
                        }
                    }
                }
            }
        },
    )
}

async fn topic(
    State(http): State<Http>,
    Extension(who): Extension<Caller>,
    Path(name): Path<String>,
) -> Response {
    let t = match http.topic(&who, &name) {
        Ok(t) => t,
        Err(e) => return failed("/topics", e),
    };
    let rates = http.throughput(Some(&name));
    ok(
        &t.name,
        "/topics",
        html! {
            h1 { "Topic " code { (t.name) } }
            p { "Produce " (bytes(t.produce_bytes_per_sec)) "/s (" (format!("{:.0}", t.produce_records_per_sec)) " offsets/s), fetch " (bytes(t.fetch_bytes_per_sec)) "/s" }
            table id="partitions" {
                thead { tr {
                    th.num { "Partition" } th.num { "Log start" } th.num { "High watermark" }
                    th.num { "Durable" } th.num { "LSO" } th.num { "Size" } th.num { "Segments" } th.num { "Producers" } th {}
                } }
                tbody {
                    @for p in &t.partitions {
                        tr data-partition=(p.partition) {
                            td.num { (p.partition) }
                            td.num.log-start { (p.log_start_offset) }
                            td.num.high-watermark { (p.high_watermark) }
                            td.num.durable { (p.durable_watermark) }
                            td.num.lso { (p.last_stable_offset) }
                            td.num { (bytes(p.size_bytes as f64)) }
                            td.num { (p.segments) }
                            td.num { (p.producers) }
                            td { a href=(format!("/topics/{}/partitions/{}", urlencode(&t.name), p.partition)) { "Browse records" } }
                        }
                    }
                }
            }
            (chart("Throughput", "B/s", &[
                ("produce", "produce", rates.iter().map(|p| (p.at_ms, p.produce_bytes_per_sec)).collect()),
                ("fetch", "fetch", rates.iter().map(|p| (p.at_ms, p.fetch_bytes_per_sec)).collect()),
            ]))
            h2 { "Settings" }
            table id="configs" {
                thead { tr { th { "Name" } th { "Value" } } }
                tbody {
                    @for (k, v) in &t.configs {
                        tr data-config=(k) { td { code { (k) } } td.value { (v) } }
                    }
                }
            }
        },
    )
}

/// How the record browser shows keys and values.
#[derive(Debug, Default, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Format {
    #[default]
    Text,
    Json,
    Hex,
}

#[derive(Debug, Default, Deserialize)]
struct BrowseForm {
    offset: Option<String>,
    timestamp_ms: Option<String>,
    isolation: Option<IsolationParam>,
    format: Option<Format>,
    limit: Option<String>,
}

/// An empty form field is an absent one.
fn field<T: std::str::FromStr>(v: &Option<String>, name: &str) -> Result<Option<T>, BrokerError> {
    match v.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(s) => s.parse().map(Some).map_err(|_| {
            BrokerError::InvalidRequest(format!("{name} must be a whole number, not {s:?}"))
        }),
    }
}

fn show(b: &Option<BytesView>, format: Format) -> Markup {
    use base64::Engine;
    let Some(b) = b else {
        return html! { span.muted { "null" } };
    };
    let raw = base64::engine::general_purpose::STANDARD
        .decode(&b.base64)
        .unwrap_or_default();
    match (format, &b.text) {
        (Format::Hex, _) | (_, None) => html! { code.hex { (hex(&raw)) } },
        (Format::Json, Some(t)) => match serde_json::from_str::<serde_json::Value>(t) {
            Ok(v) => html! { pre.json { (serde_json::to_string_pretty(&v).unwrap_or_default()) } },
            Err(_) => html! { code { (t) } },
        },
        (Format::Text, Some(t)) => html! { code { (t) } },
    }
}

fn hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

async fn browse(
    State(http): State<Http>,
    Extension(who): Extension<Caller>,
    path: Result<Path<(String, u32)>, PathRejection>,
    form: Result<Query<BrowseForm>, QueryRejection>,
) -> Response {
    let (Path((name, partition)), Query(form)) = match (path, form) {
        (Ok(p), Ok(f)) => (p, f),
        (Err(e), _) => return failed("/topics", BrokerError::InvalidRequest(e.body_text())),
        (_, Err(e)) => return failed("/topics", BrokerError::InvalidRequest(e.body_text())),
    };
    let query = (|| {
        Ok::<_, BrokerError>(BrowseQuery {
            offset: field(&form.offset, "offset")?,
            timestamp_ms: field(&form.timestamp_ms, "timestamp_ms")?,
            isolation: form.isolation,
            limit: field(&form.limit, "limit")?,
        })
    })();
    let page_data = match query {
        Ok(q) => http.records(&who, &name, partition, &q).await,
        Err(e) => Err(e),
    };
    let r = match page_data {
        Ok(r) => r,
        Err(e) => return failed("/topics", e),
    };
    let format = form.format.unwrap_or_default();
    let topic_href = format!("/topics/{}", urlencode(&name));
    let isolation = r.isolation;
    let next = format!(
        "?offset={}&isolation={}&format={}&limit={}",
        r.next_offset,
        if isolation == IsolationParam::ReadCommitted {
            "read_committed"
        } else {
            "read_uncommitted"
        },
        match format {
            Format::Text => "text",
            Format::Json => "json",
            Format::Hex => "hex",
        },
        form.limit.as_deref().unwrap_or(""),
    );
    ok(
        &format!("{name}/{partition}"),
        "/topics",
        html! {
            h1 { "Records of " a href=(topic_href) { code { (name) } } " partition " (partition) }
            form.browse method="get" {
                label { "Offset " input type="number" name="offset" min="0" value=[form.offset.as_deref()]; }
                label { "or time (ms) " input type="number" name="timestamp_ms" value=[form.timestamp_ms.as_deref()]; }
                label { "Isolation "
                    select name="isolation" {
                        option value="read_committed" selected[isolation == IsolationParam::ReadCommitted] { "read_committed" }
                        option value="read_uncommitted" selected[isolation == IsolationParam::ReadUncommitted] { "read_uncommitted" }
                    }
                }
                label { "Show as "
                    select name="format" {
                        option value="text" selected[format == Format::Text] { "text" }
                        option value="json" selected[format == Format::Json] { "JSON" }
                        option value="hex" selected[format == Format::Hex] { "hex" }
                    }
                }
                label { "Limit " input type="number" name="limit" min="1" max=(MAX_BROWSE_RECORDS) value=[form.limit.as_deref()]; }
                button type="submit" { "Read" }
            }
            p.muted { "Log " (r.log_start_offset) "…" (r.high_watermark) ", LSO " (r.last_stable_offset) "; from offset " (r.from_offset) }
            @if r.records.is_empty() { p.muted id="no-records" { "No records from here." } } @else {
                table id="records" {
                    thead { tr { th.num { "Offset" } th { "Time" } th { "Key" } th { "Value" } th { "Headers" } th { "Batch" } } }
                    tbody {
                        @for rec in &r.records {
                            tr data-offset=(rec.offset) {
                                td.num { (rec.offset) }
                                td { (time(rec.timestamp_ms)) }
                                td.key { (show(&rec.key, format)) }
                                td.value { (show(&rec.value, format)) }
                                td { @for h in &rec.headers { div { code { (h.key) } ": " (show(&h.value, format)) } } }
                                td.batch {
                                    "pid " (rec.batch.producer_id) ", epoch " (rec.batch.producer_epoch)
                                    ", seq " (rec.batch.base_sequence)
                                    @if rec.batch.transactional { ", " span.tag { "transactional" } }
                                    @if rec.batch.compression != "none" { ", " (rec.batch.compression) }
                                }
                            }
                        }
                    }
                }
                p { a href=(next) { "Next page →" } }
            }
        },
    )
}

async fn producers(State(http): State<Http>, Extension(who): Extension<Caller>) -> Response {
    let list = http.producers(&who);
    ok(
        "Producers",
        "/producers",
        html! {
            h1 { "Producers" }
            @if list.is_empty() { p.muted { "No idempotent or transactional producers." } } @else {
                table id="producers" {
                    thead { tr { th.num { "Producer id" } th.num { "Epoch" } th { "Partition" } th.num { "Last sequence" } th.num { "Last offset" } th.num { "Remembered" } th { "Open transaction" } th { "Last seen" } } }
                    tbody {
                        @for p in &list {
                            @for (i, part) in p.partitions.iter().enumerate() {
                                tr data-producer=(p.producer_id) {
                                    @if i == 0 {
                                        td.num rowspan=(p.partitions.len()) { (p.producer_id) }
                                        td.num rowspan=(p.partitions.len()) { (p.epoch) }
                                    }
                                    td { a href=(format!("/topics/{}", urlencode(&part.topic))) { (part.topic) } "/" (part.partition) }
                                    td.num { @match part.last_sequence { Some(s) => (s), None => "–" } }
                                    td.num { @match part.last_offset { Some(o) => (o), None => "–" } }
                                    td.num { (part.batches_remembered) }
                                    td { @match part.open_transaction_first_offset { Some(o) => { "from offset " (o) }, None => span.muted { "none" } } }
                                    td { (time(part.last_seen_ms)) }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

async fn transactions(State(http): State<Http>, Extension(who): Extension<Caller>) -> Response {
    let list = http.transactions(&who);
    ok(
        "Transactions",
        "/transactions",
        html! {
            h1 { "Transactions" }
            @if list.is_empty() { p.muted id="no-transactions" { "No transactional ids." } } @else {
                table id="transactions" {
                    thead { tr { th { "Transactional id" } th.num { "Producer" } th { "State" } th { "Partitions" } th { "Groups" } th { "Age" } th.num { "Timeout" } th {} } }
                    tbody {
                        @for t in &list {
                            tr data-transactional-id=(t.transactional_id) data-state=(t.state) class=[t.hanging.then_some("hanging")] {
                                td { code { (t.transactional_id) } @if t.hanging { " " span.tag.warn { "hanging" } } }
                                td.num { (t.producer_id) "/" (t.producer_epoch) }
                                td.state { (t.state) }
                                td { @for p in &t.partitions { a href=(format!("/topics/{}", urlencode(&p.topic))) { (p.topic) "/" (p.partition) } " " } }
                                td { @for g in &t.groups { a href=(format!("/groups/{}", urlencode(g))) { (g) } " " } }
                                td { @match t.age_ms { Some(a) => span data-duration-ms=(a) { (a) " ms" }, None => span.muted { "–" } } }
                                td.num { (t.timeout_ms) " ms" }
                                td { @if t.state == "Ongoing" {
                                    button.abort type="button" data-abort=(t.transactional_id) { "Abort" }
                                } }
                            }
                        }
                    }
                }
            }
        },
    )
}

async fn groups(State(http): State<Http>, Extension(who): Extension<Caller>) -> Response {
    let list = http.groups(&who).await;
    ok(
        "Groups",
        "/groups",
        html! {
            h1 { "Consumer groups" }
            @if list.is_empty() { p.muted { "No groups." } } @else {
                table id="groups" {
                    thead { tr { th { "Group" } th { "State" } th.num { "Members" } th.num { "Lag" } } }
                    tbody {
                        @for g in &list {
                            tr data-group=(g.group) {
                                td { a href=(format!("/groups/{}", urlencode(&g.group))) { (g.group) } }
                                td { (g.state) }
                                td.num { (g.members) }
                                td.num.lag { (g.lag) }
                            }
                        }
                    }
                }
            }
        },
    )
}

async fn group(
    State(http): State<Http>,
    Extension(who): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    let g = match http.group(&who, &id).await {
        Ok(g) => g,
        Err(e) => return failed("/groups", e),
    };
    let total: u64 = g.offsets.iter().map(|o| o.lag).sum();
    let lag: Vec<(i64, f64)> = g
        .lag_history
        .iter()
        .map(|p| (p.at_ms, p.lag as f64))
        .collect();
    ok(
        &g.group,
        "/groups",
        html! {
            h1 { "Group " code { (g.group) } }
            (dl(&[
                ("State", html! { span id="group-state" { (g.state) } }),
                ("Generation", html! { (g.generation) }),
                ("Protocol", html! { (g.protocol_type) " " (g.protocol) }),
                ("Leader", html! { code { (g.leader) } }),
                ("Total lag", html! { span id="total-lag" { (total) } }),
            ]))
            h2 { "Members" }
            @if g.members.is_empty() { p.muted { "No members." } } @else {
                table id="members" {
                    thead { tr { th { "Member" } th { "Client" } th { "Host" } th { "Assignment" } } }
                    tbody {
                        @for m in &g.members {
                            tr {
                                td { code { (m.member_id) } @if !m.instance_id.is_empty() { " (" (m.instance_id) ")" } }
                                td { (m.client_id) }
                                td { (m.host) }
                                td {
                                    @if m.assignment_undecodable { span.muted { "not a consumer assignment" } }
                                    @for a in &m.assignment {
                                        a href=(format!("/topics/{}", urlencode(&a.topic))) { (a.topic) }
                                        " " (a.partitions.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")) br;
                                    }
                                }
                            }
                        }
                    }
                }
            }
            h2 { "Offsets" }
            @if g.offsets.is_empty() { p.muted { "No committed offsets." } } @else {
                table id="offsets" {
                    thead { tr { th { "Partition" } th.num { "Committed" } th.num { "Log end" } th.num { "Lag" } } }
                    tbody {
                        @for o in &g.offsets {
                            tr data-topic=(o.topic) data-partition=(o.partition) {
                                td { a href=(format!("/topics/{}", urlencode(&o.topic))) { (o.topic) } "/" (o.partition) }
                                td.num { (o.committed) }
                                td.num { (o.log_end) }
                                td.num.lag { (o.lag) }
                            }
                        }
                    }
                }
            }
            (chart("Lag", "records", &[("lag", "lag", lag)]))
        },
    )
}

/// `s` as one URL path segment.
fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_escaped_in_a_path_and_in_the_page() {
        assert_eq!(urlencode("a b/c"), "a%20b%2Fc");
        let m = html! { td { ("<script>") } };
        assert_eq!(m.into_string(), "<td>&lt;script&gt;</td>");
    }

    #[test]
    fn a_chart_with_no_points_says_so() {
        let m = chart("Lag", "records", &[("lag", "lag", vec![])]).into_string();
        assert!(m.contains("Collecting data"), "{m}");
        let m = chart(
            "Lag",
            "records",
            &[("lag", "lag", vec![(1, 2.0), (2, 0.0)])],
        )
        .into_string();
        assert!(m.contains("<polyline"), "{m}");
    }

    #[test]
    fn bytes_read_as_a_person_would_say_them() {
        assert_eq!(bytes(512.0), "512 B");
        assert_eq!(bytes(1536.0), "1.5 KiB");
        assert_eq!(bytes(3.0 * 1024.0 * 1024.0), "3.0 MiB");
    }
}
