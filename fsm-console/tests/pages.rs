//! The console's pages and actions over HTTP, as a service mounts it, on `MemoryStore`
//! and SQLite.

mod common;

use std::time::Duration;

use common::{SCRIPT_ID, Served, serve};
use fsm_core::testing::Order;
use fsm_core::{DurableStore, EffectId};

/// Every check of this file, on one store.
async fn pages_and_actions<S: DurableStore>(store: S, dead: EffectId) {
    let console = fsm_console::router(store.clone())
        .machine::<Order>()
        .with_actions(true)
        .stuck_after(Duration::ZERO)
        .page_size(2);
    let served = serve(console.into_router()).await;

    machines_are_listed_with_their_counts(&served).await;
    the_diagram_counts_and_links_every_state(&served).await;
    lists_page_by_state_with_a_cursor(&served).await;
    an_instance_shows_its_history_timers_and_effects(&served).await;
    stored_values_render_as_text(&served).await;
    unknown_things_are_clear_errors(&served).await;
    actions_need_the_console_s_own_form(&served, &dead).await;
    requeue_twice_is_requeue_once(&served, &store, &dead).await;
}

async fn machines_are_listed_with_their_counts(served: &Served) {
    let index = served.page("", 200).await;
    assert!(
        index.contains(r#"<a href="/console/m/Order">Order</a>"#),
        "{index}"
    );
    assert!(index.contains(r#"<td class="num">7</td>"#), "{index}");
    let css = served.page("/style.css", 200).await;
    assert!(css.contains("figure.diagram"));
}

async fn the_diagram_counts_and_links_every_state(served: &Served) {
    let page = served.page("/m/Order", 200).await;
    assert!(page.contains("<svg"), "{page}");
    assert!(!page.contains("<?xml"), "the SVG is inlined");
    for (state, count) in [
        ("Created", 3),
        ("Paid", 2),
        ("Shipped", 1),
        ("Cancelled", 1),
        ("Delivered", 0),
    ] {
        let link = format!(r#"<a href="/console/m/Order/instances?state={state}"><text "#);
        let at = page
            .find(&link)
            .unwrap_or_else(|| panic!("{state} is not linked: {page}"));
        let label = &page[at..at + page[at..].find("</a>").unwrap()];
        assert!(
            label.contains(&format!(">{count}</tspan>")),
            "{state}: {label}"
        );
    }
    // stuck_after(0): every non-terminal state holding an instance is flagged.
    assert_eq!(page.matches(r#"<tr class="stuck">"#).count(), 3, "{page}");
    assert!(page.contains("#ffd8a8ff"), "stuck states are filled");
}

async fn lists_page_by_state_with_a_cursor(served: &Served) {
    let first = served.page("/m/Order/instances?state=Created", 200).await;
    let ids = |page: &str| -> Vec<String> {
        page.split(r#"<a class="id" href=""#)
            .skip(1)
            .map(|rest| {
                let text = &rest[rest.find('>').unwrap() + 1..];
                text[..text.find("</a>").unwrap()].to_owned()
            })
            .collect()
    };
    assert_eq!(ids(&first).len(), 2, "page_size(2)");
    let next = first
        .split(r#"<a class="next" href=""#)
        .nth(1)
        .map(|rest| rest[..rest.find('"').unwrap()].replace("&amp;", "&"))
        .expect("a next page");
    let path = next.strip_prefix("/console").unwrap();
    let second = served.page(path, 200).await;
    let mut all = ids(&first);
    all.extend(ids(&second));
    all.sort();
    let mut expected = vec![
        "o-created-1".to_owned(),
        "o-created-2".to_owned(),
        "&lt;script&gt;alert('id')&lt;/script&gt;".to_owned(),
    ];
    expected.sort();
    assert_eq!(all, expected);
    assert!(
        !second.contains(r#"class="next""#),
        "the last page has no next"
    );

    let by_prefix = served.page("/m/Order/instances?prefix=o-paid", 200).await;
    assert_eq!(ids(&by_prefix), ["o-paid-1", "o-paid-2"]);
}

async fn an_instance_shows_its_history_timers_and_effects(served: &Served) {
    let page = served.page("/m/Order/instance?id=o-paid-1", 200).await;
    let history = &page[page.find(r#"<table class="history">"#).expect("history")..];
    let history = &history[..history.find("</table>").unwrap()];
    assert_eq!(
        history.matches("<tr>").count(),
        3,
        "a header and two rows: {history}"
    );
    assert!(history.contains("<td>Pay</td>") && history.contains("<td>Annotate</td>"));
    assert!(history.contains("<code>pay-o-paid-1</code>"), "{history}");
    assert!(
        history.contains("&quot;amount_cents&quot;: 500"),
        "payload as JSON"
    );
    assert!(
        page.contains(r#"<tr class="done">"#),
        "the charge was handled"
    );
    assert!(page.contains("&quot;paid_cents&quot;: 500"), "the context");

    let created = served.page("/m/Order/instance?id=o-created-1", 200).await;
    let timers = &created[created.find(r#"<table class="timers">"#).expect("timers")..];
    let armed = format!(
        "<td>Created</td><td>{}</td><td class=\"num\">0</td>",
        fsm_core::format_duration(fsm_core::testing::EXPIRY)
    );
    assert!(timers.contains(&armed), "{armed} in {timers}");
    assert!(
        timers.contains("<td>fires</td>"),
        "the live timer: {timers}"
    );
}

async fn stored_values_render_as_text(served: &Served) {
    let path = format!("/m/Order/instance?id={}", urlencode(SCRIPT_ID));
    let page = served.page(&path, 200).await;
    assert!(!page.contains("<script>"), "{page}");
    assert!(page.contains("&lt;script&gt;alert('id')&lt;/script&gt;"));
    assert!(page.contains("&lt;script&gt;alert('context')&lt;/script&gt;"));
    let paid = served.page("/m/Order/instance?id=o-paid-1", 200).await;
    assert!(paid.contains("&lt;b&gt;gift&lt;/b&gt; wrap") && !paid.contains("<b>gift"));
    let dead = served.page("/m/Order/dead", 200).await;
    assert!(
        dead.contains("&lt;i&gt;processor&lt;/i&gt; refused") && !dead.contains("<i>processor")
    );
}

async fn unknown_things_are_clear_errors(served: &Served) {
    served.page("/m/Invoice", 404).await;
    served.page("/m/Order/instance?id=nobody", 404).await;
    let bad_state = served.page("/m/Order/instances?state=Lost", 400).await;
    assert!(
        bad_state.contains("&quot;Lost&quot; is not a state of Order"),
        "{bad_state}"
    );
    served.page("/m/Order/instances?after=zz", 400).await;
}

async fn post(
    served: &Served,
    action: &str,
    fields: &[(&str, String)],
    origin: Option<&str>,
) -> u16 {
    let mut request = served
        .http
        .post(format!("{}/m/Order/dead/{action}", served.url))
        .form(fields);
    if let Some(origin) = origin {
        request = request.header("origin", origin);
    }
    request.send().await.unwrap().status().as_u16()
}

fn form(dead: &EffectId, csrf: &str) -> Vec<(&'static str, String)> {
    vec![
        ("id", dead.id.clone()),
        ("version", dead.version.to_string()),
        ("seq", dead.seq.to_string()),
        ("csrf", csrf.to_owned()),
    ]
}

async fn csrf_of(served: &Served) -> String {
    let page = served.page("/m/Order/dead", 200).await;
    let rest = page
        .split(r#"name="csrf" value=""#)
        .nth(1)
        .expect("an action form");
    rest[..rest.find('"').unwrap()].to_owned()
}

async fn actions_need_the_console_s_own_form(served: &Served, dead: &EffectId) {
    let csrf = csrf_of(served).await;
    assert_eq!(
        post(served, "requeue", &form(dead, "forged"), None).await,
        403
    );
    assert_eq!(
        post(
            served,
            "requeue",
            &form(dead, &csrf),
            Some("http://evil.example")
        )
        .await,
        403
    );
    assert_eq!(post(served, "explode", &form(dead, &csrf), None).await, 404);
    // Behind a reverse proxy the browser's Origin is the proxy's host.
    let elsewhere = EffectId {
        version: 99,
        ..dead.clone()
    };
    let proxied = |forwarded: &'static str| {
        served
            .http
            .post(format!("{}/m/Order/dead/discard", served.url))
            .header("origin", "https://console.example")
            .header("x-forwarded-host", forwarded)
            .form(&form(&elsewhere, &csrf))
            .send()
    };
    assert_eq!(
        proxied("console.example").await.unwrap().status().as_u16(),
        303
    );
    assert_eq!(
        proxied("evil.example").await.unwrap().status().as_u16(),
        403
    );
    let page = served.page("/m/Order/dead", 200).await;
    assert!(page.contains("o-refunded"), "nothing was requeued");
}

async fn requeue_twice_is_requeue_once<S: DurableStore>(
    served: &Served,
    store: &S,
    dead: &EffectId,
) {
    let csrf = csrf_of(served).await;
    let origin = Some(served.origin.as_str());
    assert_eq!(
        post(served, "requeue", &form(dead, &csrf), origin).await,
        303
    );
    assert_eq!(
        post(served, "requeue", &form(dead, &csrf), origin).await,
        303
    );
    assert!(store.dead_letters::<Order>().await.unwrap().is_empty());
    let outbox = store.outbox::<Order>("o-refunded").await.unwrap();
    let refund = outbox.iter().find(|e| e.id == *dead).unwrap();
    assert_eq!(
        (refund.status, refund.attempts),
        (fsm_core::EffectStatus::Pending, 0),
        "requeued once, with a fresh attempt count"
    );
    let page = served.page("/m/Order/dead", 200).await;
    assert!(page.contains("No dead letter."), "{page}");
    assert_eq!(
        post(served, "discard", &form(dead, &csrf), origin).await,
        303
    );
    assert!(
        store
            .outbox::<Order>("o-refunded")
            .await
            .unwrap()
            .iter()
            .any(|e| e.id == *dead),
        "a pending row is never discarded"
    );
}

fn urlencode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_and_actions_on_memory_store() {
    let (store, dead) = common::memory().await;
    pages_and_actions(store, dead).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_and_actions_on_sqlite() {
    let store = fsm_sqlx::SqliteStore::memory().await.unwrap();
    store.migrate().await.unwrap();
    let dead = common::seed(&store).await;
    pages_and_actions(store, dead).await;
}

#[tokio::test]
async fn a_read_only_console_shows_no_form_and_refuses_actions() {
    let (store, dead) = common::memory().await;
    let served = serve(
        fsm_console::router(store.clone())
            .machine::<Order>()
            .into_router(),
    )
    .await;
    let page = served.page("/m/Order/dead", 200).await;
    assert!(!page.contains("<form class=\"action\""), "{page}");
    assert!(page.contains("Read-only"));
    assert_eq!(
        post(&served, "requeue", &form(&dead, "any"), None).await,
        403
    );
    assert_eq!(store.dead_letters::<Order>().await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_and_actions_on_postgres() {
    let Some(url) = common::server_url("FSM_POSTGRES_URL") else {
        return;
    };
    let (store, schema) = common::postgres(&url).await;
    let dead = common::seed(&store).await;
    pages_and_actions(store.clone(), dead).await;
    store.pool().close().await;
    common::drop_schema(&url, &schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_and_actions_on_mysql() {
    let Some(url) = common::server_url("FSM_MYSQL_URL") else {
        return;
    };
    let (store, database) = common::mysql(&url).await;
    let dead = common::seed(&store).await;
    pages_and_actions(store.clone(), dead).await;
    store.pool().close().await;
    common::drop_database(&url, &database).await;
}
