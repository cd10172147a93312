//! The web console in a real browser: Debian's chromium, headless, driven
//! through chromedriver (WebDriver) by fantoccini. The test starts the
//! broker binary, writes through the CLI and the client, and checks what
//! the pages show: a topic's watermarks, an open transaction that is
//! aborted from the page and leaves the open list, and a group's lag that
//! falls to 0 once its consumer catches up, on a page that refreshes by
//! itself. Screenshots go to `target/console-screenshots/`.
//!
//! Without chromium and chromedriver (`apt-get install chromium
//! chromium-driver`) the test says so and passes, except under CI
//! (`CI` set), where `.ci/run` installs them and their absence fails.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{FERRY, create_topic, ferry, json_lines, ok};
use fantoccini::{Client, ClientBuilder, Locator};
use ferry_client::{ProducerConfig, TransactionalConfig, TransactionalProducer};
use ferry_testkit::BrokerProcess;
use serde_json::json;

/// How long a page may take to show what the test waits for.
const PAGE_WAIT: Duration = Duration::from_secs(20);

fn find_binary(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    names.iter().find_map(|name| {
        std::env::split_paths(&path)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// A chromedriver process, killed on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_driver(chromedriver: &Path) -> Driver {
    let port = free_port();
    let child = Command::new(chromedriver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    Driver { child, url }
}

async fn browser(driver: &Driver, chromium: &Path, profile: &Path) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": [
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--window-size=1280,900",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("open a chromium session")
}

/// Waits until the text of the first element matching `css` satisfies
/// `want`, without reloading: the page's own refresh must bring it.
async fn wait_for_text(c: &Client, css: &str, what: &str, want: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + PAGE_WAIT;
    let mut last = String::new();
    loop {
        if let Ok(el) = c.find(Locator::Css(css)).await
            && let Ok(text) = el.text().await
        {
            if want(text.trim()) {
                return text.trim().to_string();
            }
            last = text;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {css} still shows {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until no element matches `css`.
async fn wait_for_absence(c: &Client, css: &str, what: &str) {
    let deadline = Instant::now() + PAGE_WAIT;
    while c.find(Locator::Css(css)).await.is_ok() {
        assert!(Instant::now() < deadline, "{what}: {css} is still there");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn screenshot(c: &Client, name: &str) {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    let png = c.screenshot().await.expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    let path = dir.join(format!("{name}.png"));
    std::fs::write(&path, png).unwrap();
    eprintln!("screenshot: {}", path.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_watermarks_aborts_a_transaction_and_shows_lag_falling_to_zero() {
    let (Some(chromium), Some(chromedriver)) = (
        find_binary(&["chromium", "chromium-browser", "google-chrome"]),
        find_binary(&["chromedriver"]),
    ) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium and chromedriver must be installed under CI"
        );
        eprintln!(
            "skipped: no chromium and chromedriver (apt-get install chromium chromium-driver)"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(FERRY, dir.path().join("data"), "127.0.0.1:0").unwrap();
    let addr = broker.addr().to_string();
    let console = format!("http://{}", broker.http_addr().unwrap());
    create_topic(&addr, "orders", 1);
    let input: String = (0..5).map(|i| format!("{{\"order\":{i}}}\n")).collect();
    let out = ferry(
        &addr,
        &["produce", "orders", "--partition", "0"],
        Some(&input),
    );
    assert_eq!(json_lines(&ok(&out).stdout).pop().unwrap()["acked"], 5);

    let driver = start_driver(&chromedriver);
    let c = browser(&driver, &chromium, &dir.path().join("profile")).await;

    // The topic and its watermarks.
    c.goto(&format!("{console}/topics/orders")).await.unwrap();
    let row = "#partitions tr[data-partition='0']";
    wait_for_text(
        &c,
        &format!("{row} td.high-watermark"),
        "high watermark",
        |t| t == "5",
    )
    .await;
    wait_for_text(&c, &format!("{row} td.lso"), "last stable offset", |t| {
        t == "5"
    })
    .await;
    wait_for_text(&c, &format!("{row} td.durable"), "durable watermark", |t| {
        t == "5"
    })
    .await;
    screenshot(&c, "topic").await;
    // A topic's own settings.
    ok(&ferry(
        &addr,
        &[
            "topic",
            "create",
            "table",
            "--config",
            "cleanup.policy=compact",
        ],
        None,
    ));
    c.goto(&format!("{console}/topics/table")).await.unwrap();
    wait_for_text(
        &c,
        "#configs tr[data-config='cleanup.policy'] td.value",
        "cleanup.policy",
        |t| t == "compact",
    )
    .await;
    // The record browser shows the values as JSON.
    c.goto(&format!("{console}/topics/orders/partitions/0?format=json"))
        .await
        .unwrap();
    let value = wait_for_text(
        &c,
        "#records tr[data-offset='4'] td.value",
        "record 4",
        |t| t.contains("\"order\": 4"),
    )
    .await;
    assert!(value.contains('{'), "{value}");
    screenshot(&c, "records").await;

    // An open transaction appears, is aborted from the page, and leaves.
    let client = ferry_client::Client::connect(&addr).await.unwrap();
    let mut txn = TransactionalProducer::new(
        client.clone(),
        TransactionalConfig {
            producer: ProducerConfig {
                linger: Duration::from_millis(1),
                ..ProducerConfig::default()
            },
            ..TransactionalConfig::new("checkout")
        },
    )
    .await
    .unwrap();
    txn.begin().unwrap();
    let mut pending = Vec::new();
    for i in 0..2 {
        let v = format!("pending-{i}");
        pending.push(
            txn.send_to("orders", 0, None, Some(v.as_bytes()))
                .await
                .unwrap(),
        );
    }
    for d in pending {
        d.wait().await.unwrap();
    }
    c.goto(&format!("{console}/transactions")).await.unwrap();
    let open = "#transactions tr[data-transactional-id='checkout'][data-state='Ongoing']";
    wait_for_text(&c, &format!("{open} td.state"), "open transaction", |t| {
        t == "Ongoing"
    })
    .await;
    screenshot(&c, "transactions").await;
    let abort = c
        .find(Locator::Css(&format!("{open} button[data-abort]")))
        .await
        .expect("an abort button");
    abort.click().await.unwrap();
    c.accept_alert().await.expect("the confirmation");
    wait_for_absence(&c, open, "aborted transaction").await;
    wait_for_text(
        &c,
        "#transactions tr[data-transactional-id='checkout'] td.state",
        "aborted state",
        |t| t == "CompleteAbort",
    )
    .await;
    // The broker agrees: the aborted records are invisible to
    // read_committed, and the last stable offset moved past them.
    let records = common::consume_from_earliest(&addr, "orders", &[]);
    assert_eq!(records.len(), 5, "{records:?}");
    c.goto(&format!("{console}/topics/orders")).await.unwrap();
    wait_for_text(
        &c,
        &format!("{row} td.lso"),
        "last stable offset after the abort",
        |t| t == "8",
    )
    .await;
    // The record browser drops the aborted records under read_committed,
    // as a consumer does, and shows them under read_uncommitted.
    for (isolation, rows) in [("read_committed", 5), ("read_uncommitted", 7)] {
        c.goto(&format!(
            "{console}/topics/orders/partitions/0?isolation={isolation}&limit=50"
        ))
        .await
        .unwrap();
        let shown = c.find_all(Locator::Css("#records tbody tr")).await.unwrap();
        assert_eq!(shown.len(), rows, "{isolation}");
    }
    drop(txn);

    // A group with lag, which falls to 0 as its consumer catches up; the
    // page is not reloaded, its refresh shows the change.
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
    c.goto(&format!("{console}/groups/billing")).await.unwrap();
    wait_for_text(&c, "#total-lag", "lag before consuming", |t| t == "8").await;
    screenshot(&c, "group-lagging").await;
    let consumed = ferry(
        &addr,
        &[
            "consume",
            "orders",
            "--group",
            "billing",
            "--exit-at-end",
            "--session-timeout-ms",
            "6000",
        ],
        None,
    );
    assert_eq!(json_lines(&ok(&consumed).stdout).len(), 5);
    wait_for_text(&c, "#total-lag", "lag after consuming", |t| t == "0").await;
    wait_for_text(
        &c,
        "#offsets tr[data-topic='orders'][data-partition='0'] td.lag",
        "partition lag",
        |t| t == "0",
    )
    .await;
    screenshot(&c, "group").await;

    // The overview, for the docs.
    c.goto(&format!("{console}/")).await.unwrap();
    wait_for_text(&c, "dl.facts", "overview", |t| t.contains(&addr)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    screenshot(&c, "overview").await;
    c.close().await.unwrap();
}
