//! The console in a real browser: headless Chromium driven over WebDriver
//! (chromedriver) against the console served on 127.0.0.1 over SQLite.
//!
//! Needs Debian's `chromium` and `chromium-driver` (or `FSM_CHROMEDRIVER` and
//! `FSM_CHROMIUM`); without them the tests are skipped with a printed reason, or fail
//! when `CI` is set. Screenshots go to `target/console/`.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{SCRIPT_ID, serve};
use fantoccini::{Client, ClientBuilder, Locator};
use fsm_core::testing::{Order, OrderData, OrderEvent, Payment};
use fsm_core::{Command, DurableStore, Store};
use fsm_sqlx::SqliteStore;

/// `var`, or the first of `candidates` that exists.
fn program(var: &str, candidates: &[&str]) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(var).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    candidates.iter().map(PathBuf::from).find(|p| p.exists())
}

/// A chromedriver of this test's own, stopped on drop.
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

/// The browser, or `None` (a skip) when it is not installed.
///
/// # Panics
///
/// When it is missing and `CI` is set: CI installs it and must not skip.
async fn browser() -> Option<(Client, Driver)> {
    let driver = program("FSM_CHROMEDRIVER", &["/usr/bin/chromedriver"]);
    let chromium = program(
        "FSM_CHROMIUM",
        &["/usr/bin/chromium", "/usr/bin/chromium-browser"],
    );
    let (Some(driver), Some(chromium)) = (driver, chromium) else {
        let in_ci = std::env::var_os("CI").is_some_and(|ci| !ci.is_empty());
        assert!(
            !in_ci,
            "chromium and chromedriver are not installed, but CI is set: .ci/run installs them"
        );
        eprintln!("skipping: no chromium/chromedriver (apt-get install chromium chromium-driver)");
        return None;
    };
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let child = std::process::Command::new(&driver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", driver.display()));
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "chromedriver did not listen on {port}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", "--window-size=1500,1000", "--hide-scrollbars"],
        }),
    );
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .expect("a WebDriver session");
    Some((client, driver))
}

/// Where screenshots go: `target/console/`.
fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    );
    let dir = target.join("console");
    std::fs::create_dir_all(&dir).expect("target/console");
    dir
}

async fn screenshot(client: &Client, name: &str) {
    let png = client.screenshot().await.expect("a screenshot");
    let path = screenshot_dir().join(name);
    std::fs::write(&path, png).expect("write the screenshot");
    eprintln!("screenshot: {}", path.display());
}

async fn seeded_sqlite() -> (SqliteStore, fsm_core::EffectId) {
    let store = SqliteStore::memory().await.unwrap();
    store.migrate().await.unwrap();
    let dead = common::seed(&store).await;
    (store, dead)
}

async fn texts(client: &Client, css: &str) -> Vec<String> {
    let mut texts = Vec::new();
    for element in client.find_all(Locator::Css(css)).await.unwrap() {
        texts.push(element.text().await.unwrap());
    }
    texts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_a_state_on_the_diagram_to_its_instances_to_one_s_history() {
    let Some((client, _driver)) = browser().await else {
        return;
    };
    let (store, _) = seeded_sqlite().await;
    // A second later the seeded orders count as stuck; a fresh one and a delivery don't.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    store
        .fire("o-shipped", Command::new(OrderEvent::Deliver))
        .await
        .unwrap();
    let fresh = OrderData {
        total_cents: 900,
        ..OrderData::default()
    };
    store.create::<Order>("o-fresh", fresh).await.unwrap();
    store
        .fire(
            "o-fresh",
            Command::new(OrderEvent::Pay(Payment { amount_cents: 900 })),
        )
        .await
        .unwrap();
    store
        .fire("o-fresh", Command::new(OrderEvent::Ship))
        .await
        .unwrap();
    let console = fsm_console::router(store)
        .machine::<Order>()
        .stuck_after(Duration::from_secs(1));
    let served = serve(console.into_router()).await;

    client
        .goto(&format!("{}/m/Order", served.url))
        .await
        .unwrap();
    let title = client
        .find(Locator::Css("h1"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(title, "Order");
    let stuck = texts(&client, "tr.stuck td:first-child").await;
    assert_eq!(
        stuck,
        ["Created", "Paid"],
        "Shipped holds only the fresh order"
    );
    screenshot(&client, "order.png").await;

    client
        .find(Locator::Css(r#"figure.diagram a[href$="state=Paid"] text"#))
        .await
        .expect("Paid is a link on the diagram")
        .click()
        .await
        .unwrap();
    let url = client.current_url().await.unwrap();
    assert!(
        url.as_str()
            .ends_with("/console/m/Order/instances?state=Paid"),
        "{url}"
    );
    assert_eq!(texts(&client, "a.id").await, ["o-paid-1", "o-paid-2"]);

    client
        .find(Locator::LinkText("o-paid-1"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let rows = texts(&client, "table.history tbody tr").await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(rows[0].contains("Created") && rows[0].contains("Pay") && rows[0].contains("Paid"));
    assert!(rows[0].contains("pay-o-paid-1"), "the key: {rows:?}");
    assert!(rows[1].contains("Annotate") && rows[1].contains("<b>gift</b> wrap"));
    screenshot(&client, "instance.png").await;
    client.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requeued_dead_letter_leaves_the_list() {
    let Some((client, _driver)) = browser().await else {
        return;
    };
    let (store, dead) = seeded_sqlite().await;
    let console = fsm_console::router(store.clone())
        .machine::<Order>()
        .with_actions(true);
    let served = serve(console.into_router()).await;

    client
        .goto(&format!("{}/m/Order/dead", served.url))
        .await
        .unwrap();
    assert_eq!(
        texts(&client, "table.dead a.id").await,
        vec![dead.id.clone()]
    );
    client
        .find(Locator::Css("button.requeue"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let note = client
        .find(Locator::Css("main p"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(note, "No dead letter.");
    assert!(store.dead_letters::<Order>().await.unwrap().is_empty());
    let outbox = store.outbox::<Order>(&dead.id).await.unwrap();
    assert!(
        outbox
            .iter()
            .any(|e| e.id == dead && e.status == fsm_core::EffectStatus::Pending)
    );
    client.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_in_an_id_or_a_context_is_shown_as_text() {
    let Some((client, _driver)) = browser().await else {
        return;
    };
    let (store, _) = seeded_sqlite().await;
    let served = serve(fsm_console::router(store).machine::<Order>().into_router()).await;

    client
        .goto(&format!("{}/m/Order/instances?state=Created", served.url))
        .await
        .unwrap();
    assert!(texts(&client, "a.id").await.contains(&SCRIPT_ID.to_owned()));
    client
        .find(Locator::LinkText(SCRIPT_ID))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert!(
        client.get_alert_text().await.is_err(),
        "no script ran: there is no alert"
    );
    let id = client
        .find(Locator::Css("dd.id"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(id, SCRIPT_ID);
    let context = client
        .find(Locator::Css("pre.context"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        context.contains("<script>alert('context')</script>"),
        "{context}"
    );
    let scripts = client.find_all(Locator::Css("script")).await.unwrap();
    assert!(scripts.is_empty(), "the page holds no script element");
    client.close().await.unwrap();
}
