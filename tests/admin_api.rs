//! The HTTP admin API against the real broker binary: what it returns
//! matches what the CLI wrote and reads, its errors are JSON with the
//! stable error code's name and a 4xx status, and with a credentials file
//! it requires a login and respects the ACLs.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::{FERRY, ferry, json_lines, ok, python_with_requirements};
use ferry_testkit::BrokerProcess;
use serde_json::{Value, json};

struct Http {
    base: String,
    agent: ureq::Agent,
    auth: Option<String>,
}

impl Http {
    fn new(broker: &BrokerProcess) -> Http {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        Http {
            base: format!("http://{}", broker.http_addr().expect("HTTP listener on")),
            agent,
            auth: None,
        }
    }

    /// `(status, body as JSON or as text)`.
    fn call(&self, method: &str, path: &str, body: Option<(&str, &str)>) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        let mut req = ureq::http::Request::builder().method(method).uri(&url);
        if let Some(a) = &self.auth {
            req = req.header("authorization", a);
        }
        if let Some((kind, _)) = body {
            req = req.header("content-type", kind);
        }
        let req = req
            .body(body.map(|b| b.1.to_string()).unwrap_or_default())
            .unwrap();
        let mut resp = self.agent.run(req).expect("HTTP request");
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    fn get(&self, path: &str) -> (u16, Value) {
        self.call("GET", path, None)
    }

    fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        self.call("POST", path, Some(("application/json", &body.to_string())))
    }
}

/// An error body: the status, and `error_code` and `message` present.
fn assert_error(got: (u16, Value), status: u16, code: &str) {
    assert_eq!(got.0, status, "{}", got.1);
    assert_eq!(got.1["error_code"], code, "{}", got.1);
    assert!(
        got.1["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{}",
        got.1
    );
}

#[test]
fn the_api_shows_what_the_cli_wrote_and_refuses_bad_requests_with_json_errors() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(FERRY, dir.path().join("data"), "127.0.0.1:0").unwrap();
    let addr = broker.addr().to_string();
    let http = Http::new(&broker);

    // Created over HTTP, written through the CLI, read over HTTP.
    let (status, created) = http.post_json(
        "/api/v1/topics",
        &json!({"name": "orders", "partitions": 2}),
    );
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["partitions"].as_array().unwrap().len(), 2);
    let input = "{\"sku\":1}\nplain text\n";
    let out = ferry(
        &addr,
        &["produce", "orders", "--partition", "1"],
        Some(input),
    );
    assert_eq!(json_lines(&ok(&out).stdout).pop().unwrap()["acked"], 2);

    let (status, topic) = http.get("/api/v1/topics/orders");
    assert_eq!(status, 200);
    let p1 = &topic["partitions"][1];
    assert_eq!(p1["high_watermark"], 2, "{topic}");
    assert_eq!(p1["last_stable_offset"], 2, "{topic}");
    assert_eq!(topic["partitions"][0]["high_watermark"], 0, "{topic}");
    // The CLI's describe agrees.
    let described = json_lines(&ok(&ferry(&addr, &["topic", "describe", "orders"], None)).stdout);
    assert_eq!(described[0]["partitions"][1]["high_watermark"], 2);
    assert_eq!(topic["configs"], described[0]["configs"], "{topic}");

    // Settings by Kafka's names; a bad one is a 400 and creates nothing.
    let (status, table) = http.post_json(
        "/api/v1/topics",
        &json!({"name": "table", "configs": {"cleanup.policy": "compact"}}),
    );
    assert_eq!(status, 201, "{table}");
    assert_eq!(table["configs"]["cleanup.policy"], "compact", "{table}");
    assert_error(
        http.post_json(
            "/api/v1/topics",
            &json!({"name": "bad", "configs": {"cleanup.policy": "often"}}),
        ),
        400,
        "invalid_config",
    );
    assert_eq!(http.get("/api/v1/topics/bad").0, 404);

    let (status, page) = http.get("/api/v1/topics/orders/partitions/1/records?limit=10");
    assert_eq!(status, 200, "{page}");
    let records = page["records"].as_array().unwrap();
    assert_eq!(records.len(), 2, "{page}");
    assert_eq!(records[0]["offset"], 0);
    assert_eq!(records[0]["value"]["text"], "{\"sku\":1}");
    assert_eq!(records[1]["value"]["text"], "plain text");
    assert_eq!(records[1]["value"]["base64"], "cGxhaW4gdGV4dA==");
    assert_eq!(page["next_offset"], 2);
    // One record from offset 1 on; the next page starts after it.
    let (_, page) = http.get("/api/v1/topics/orders/partitions/1/records?offset=1&limit=1");
    assert_eq!(page["records"].as_array().unwrap().len(), 1, "{page}");
    assert_eq!(page["records"][0]["offset"], 1);
    assert_eq!(page["next_offset"], 2);

    let (status, list) = http.get("/api/v1/topics");
    assert_eq!(status, 200);
    assert_eq!(list[0]["name"], "orders");
    assert_eq!(list[0]["high_watermark_sum"], 2);
    let (status, b) = http.get("/api/v1/broker");
    assert_eq!(status, 200);
    assert_eq!(b["grpc_listen"], addr);
    assert_eq!(b["fsync"], "always");
    assert_eq!(b["topics"], 2);

    // Errors: JSON, the error code's name, a 4xx status; nothing changes.
    assert_error(
        http.get("/api/v1/topics/missing"),
        404,
        "unknown_topic_or_partition",
    );
    assert_error(
        http.get("/api/v1/topics/orders/partitions/7/records"),
        404,
        "unknown_topic_or_partition",
    );
    assert_error(
        http.get("/api/v1/topics/orders/partitions/x/records"),
        400,
        "invalid_request",
    );
    assert_error(
        http.get("/api/v1/topics/orders/partitions/1/records?limit=many"),
        400,
        "invalid_request",
    );
    assert_error(
        http.get("/api/v1/topics/orders/partitions/1/records?offset=99"),
        400,
        "offset_out_of_range",
    );
    assert_error(
        http.post_json("/api/v1/topics", &json!({"name": "orders"})),
        409,
        "topic_already_exists",
    );
    assert_error(
        http.post_json("/api/v1/topics", &json!({"name": "bad/name"})),
        400,
        "invalid_topic",
    );
    assert_error(
        http.post_json("/api/v1/topics", &json!({"name": "t", "extra": 1})),
        400,
        "invalid_request",
    );
    assert_error(
        http.call(
            "POST",
            "/api/v1/topics",
            Some(("application/json", "{not json")),
        ),
        400,
        "invalid_request",
    );
    assert_error(
        http.call("POST", "/api/v1/topics", Some(("text/plain", "{}"))),
        415,
        "invalid_request",
    );
    let huge = format!(
        "{{\"name\":\"{}\"}}",
        "x".repeat(ferry_broker::MAX_HTTP_BODY_BYTES)
    );
    assert_error(
        http.call("POST", "/api/v1/topics", Some(("application/json", &huge))),
        413,
        "invalid_request",
    );
    assert_error(http.get("/api/v1/nothing"), 404, "not_found");
    // The console's pages answer bad input with an error page.
    let (status, page) = http.get("/topics/orders/partitions/0?isolation=bogus");
    assert_eq!(status, 400);
    assert!(page.as_str().unwrap().contains("invalid_request"), "{page}");
    let (status, page) = http.get("/topics/missing");
    assert_eq!(status, 404);
    assert!(
        page.as_str()
            .unwrap()
            .contains("unknown_topic_or_partition"),
        "{page}"
    );
    // A page on another site cannot make a browser change anything.
    let forged = http
        .agent
        .delete(format!("{}/api/v1/topics/orders", http.base))
        .header("origin", "https://evil.example")
        .call()
        .unwrap();
    assert_eq!(forged.status().as_u16(), 403);
    assert_error(http.get("/api/v1/groups/nobody"), 404, "group_id_not_found");
    let (_, list) = http.get("/api/v1/topics");
    assert_eq!(
        list.as_array().unwrap().len(),
        2,
        "a refused create made a topic: {list}"
    );

    // Groups: a reset through the API is what the CLI then describes.
    let (status, reset) = http.post_json(
        "/api/v1/groups/billing/reset-offsets",
        &json!({"topic": "orders", "to": "earliest"}),
    );
    assert_eq!(status, 200, "{reset}");
    assert_eq!(reset.as_array().unwrap().len(), 2);
    let (_, g) = http.get("/api/v1/groups/billing");
    let lag: u64 = g["offsets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["lag"].as_u64().unwrap())
        .sum();
    assert_eq!(lag, 2, "{g}");
    let described = json_lines(&ok(&ferry(&addr, &["group", "describe", "billing"], None)).stdout);
    assert_eq!(described[0]["offsets"].as_array().unwrap().len(), 2);
    assert_error(
        http.post_json(
            "/api/v1/groups/billing/reset-offsets",
            &json!({"topic": "orders", "to": "99"}),
        ),
        400,
        "invalid_request",
    );
    let (_, groups) = http.get("/api/v1/groups");
    assert_eq!(groups[0]["group"], "billing", "{groups}");
    assert_eq!(groups[0]["lag"], 2, "{groups}");

    // Deleting works once and then is a 404.
    assert_eq!(http.call("DELETE", "/api/v1/topics/orders", None).0, 204);
    assert_error(
        http.call("DELETE", "/api/v1/topics/orders", None),
        404,
        "unknown_topic_or_partition",
    );
    assert_eq!(http.get("/health"), (200, Value::String("ok\n".into())));
    let (status, metrics) = http.get("/metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.as_str().unwrap().contains("ferry_bytes_in_total"),
        "{metrics}"
    );
}

/// `ferry user add NAME --mechanism M --credentials FILE`, the password
/// (if any) on standard input; returns standard output.
fn add_user(file: &std::path::Path, name: &str, mechanism: &str, password: Option<&str>) -> String {
    let mut child = Command::new(FERRY)
        .args([
            "user",
            "add",
            name,
            "--mechanism",
            mechanism,
            "--credentials",
        ])
        .arg(file)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(p) = password {
        writeln!(child.stdin.take().unwrap(), "{p}").unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn with_credentials_the_console_and_api_require_a_login_and_respect_the_acls() {
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("credentials.toml");
    let admin_out = add_user(&creds, "admin", "token", None);
    let admin_token = admin_out
        .split_whitespace()
        .find(|w| w.starts_with("ferry_"))
        .unwrap_or_else(|| panic!("no token in {admin_out:?}"))
        .to_string();
    add_user(&creds, "reader", "scram-sha-256", Some("reader-secret"));
    let acls = dir.path().join("acls.toml");
    let broker = BrokerProcess::start_with_args(
        FERRY,
        dir.path().join("data"),
        "127.0.0.1:0",
        [
            "--credentials".into(),
            creds.clone().into_os_string(),
            "--acls".into(),
            acls.clone().into_os_string(),
            "--super-user".into(),
            "admin".into(),
        ],
    )
    .unwrap();
    let admin = |args: &[&str]| {
        let mut full = args.to_vec();
        full.extend(["--token", &admin_token]);
        ok(&ferry(broker.addr(), &full, None)).stdout.clone()
    };
    admin(&["topic", "create", "public", "--partitions", "1"]);
    admin(&["topic", "create", "secret", "--partitions", "1"]);
    let out = Command::new(FERRY)
        .args(["acl", "add", "--acls"])
        .arg(&acls)
        .args([
            "--principal",
            "reader",
            "--topic",
            "public",
            "--operation",
            "describe",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pid = broker.pid();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );

    let mut http = Http::new(&broker);
    // No credential, a wrong one: 401 with a challenge, for page and API.
    assert_error(http.get("/api/v1/topics"), 401, "authentication_failed");
    assert_eq!(http.get("/").0, 401);
    http.auth = Some("Bearer ferry_not-a-token".into());
    assert_error(http.get("/api/v1/topics"), 401, "authentication_failed");
    http.auth = Some(basic("reader", "wrong"));
    assert_error(http.get("/api/v1/topics"), 401, "authentication_failed");
    // Probes stay open.
    http.auth = None;
    assert_eq!(http.get("/health").0, 200);

    // The reader sees the topic it may describe, and only that one. The
    // ACL file reloads on SIGHUP; wait for it.
    http.auth = Some(basic("reader", "reader-secret"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let names = loop {
        let (status, list) = http.get("/api/v1/topics");
        assert_eq!(status, 200, "{list}");
        let names: Vec<String> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_string())
            .collect();
        if !names.is_empty() || std::time::Instant::now() > deadline {
            break names;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(names, vec!["public".to_string()]);
    assert_error(
        http.get("/api/v1/topics/secret"),
        403,
        "authorization_failed",
    );
    assert_error(
        http.call("DELETE", "/api/v1/topics/public", None),
        403,
        "authorization_failed",
    );
    assert_error(
        http.get("/api/v1/topics/public/partitions/0/records"),
        403,
        "authorization_failed",
    );
    assert_eq!(http.get("/topics/secret").0, 403);
    // The super user, by token, may do all of it.
    http.auth = Some(format!("Bearer {admin_token}"));
    assert_eq!(http.get("/api/v1/topics").1.as_array().unwrap().len(), 2);
    assert_eq!(http.call("DELETE", "/api/v1/topics/secret", None).0, 204);
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// Schemathesis (PyPI) generates requests from the API's own OpenAPI
/// document, valid and invalid, and runs them against a broker holding a
/// topic with records and a group with offsets: no response may be a 5xx,
/// and every response must match the document (status, content type,
/// schema). The seed is fixed, so a failure reproduces; the report names
/// the request.
#[test]
fn the_api_conforms_to_its_openapi_document_under_schemathesis() {
    let dir = tempfile::tempdir().unwrap();
    // Small segments: it creates topics of up to the partition limit, each
    // partition with a preallocated segment.
    let broker = BrokerProcess::start_with_args(
        FERRY,
        dir.path().join("data"),
        "127.0.0.1:0",
        [
            "--segment-bytes",
            &ferry_storage::MIN_SEGMENT_BYTES.to_string(),
        ],
    )
    .unwrap();
    let addr = broker.addr().to_string();
    common::create_topic(&addr, "orders", 2);
    let out = ferry(
        &addr,
        &["produce", "orders", "--partition", "0"],
        Some("a\nb\nc\n"),
    );
    ok(&out);
    let reset = ferry(
        &addr,
        &[
            "group",
            "reset-offsets",
            "billing",
            "--topic",
            "orders",
            "--to",
            "earliest",
        ],
        None,
    );
    ok(&reset);
    let python = python_with_requirements();
    let schemathesis = python.with_file_name("schemathesis");
    let seed = "20261203";
    eprintln!("schemathesis seed {seed}");
    let out = Command::new(&schemathesis)
        .arg("run")
        .arg(format!("http://{}/api/v1/openapi.json", broker.http_addr().unwrap()))
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            "--max-examples",
            "25",
            "--workers",
            "1",
            "--seed",
            seed,
            "--no-color",
        ])
        .current_dir(dir.path())
        .output()
        .expect("run schemathesis");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found problems (seed {seed}):\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // It did test every operation.
    assert!(stdout.contains("Tested: 12"), "{stdout}");
}
