//! How fast the console's pages answer for a machine with many instances on
//! PostgreSQL: each page fetched over HTTP from the console served on 127.0.0.1, best and
//! median of `--rounds` (default 20), after one warm-up fetch.
//!
//! ```text
//! cargo run --release -p fsm-console --example console_bench -- [--instances N] [--url URL]
//! ```
//!
//! Seeds a fresh schema (`--instances`, default 100,000 orders, with plain SQL; a few
//! through the store for history and dead letters) and drops it afterwards.

use std::time::{Duration, Instant};

use fsm_core::kit::Settlement;
use fsm_core::testing::{Order, OrderData, OrderEvent, Payment};
use fsm_core::{Command, DurableStore, Store};
use fsm_sqlx::PgStore;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let instances: i64 = flag("--instances").map_or(Ok(100_000), |n| n.parse())?;
    let rounds: usize = flag("--rounds").map_or(Ok(20), |n| n.parse())?;
    let url = flag("--url")
        .or_else(|| std::env::var("FSM_POSTGRES_URL").ok())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/test".to_owned());

    let schema = format!("fsm_console_bench_{}", std::process::id());
    let admin = sqlx::PgPool::connect(&url).await?;
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&admin)
        .await?;
    let scoped = format!(
        "{url}{}options=-c%20search_path%3D{schema}",
        if url.contains('?') { '&' } else { '?' }
    );
    let store = PgStore::connect(&scoped).await?;
    store.migrate().await?;

    let seeding = Instant::now();
    let day: i64 = 86_400_000;
    let now = fsm_core::kit::now_ms() as i64;
    sqlx::query(
        "INSERT INTO fsm_machines
           (machine_type, machine_id, state, version, context, init_fingerprint,
            created_at, updated_at, entered_at)
         SELECT 'Order', 'o-' || lpad(n::text, 7, '0'),
                (ARRAY['Delivered','Delivered','Delivered','Delivered','Shipped',
                       'Paid','Paid','Created','Cancelled','Expired'])[1 + n % 10],
                0, '{\"total_cents\":2500,\"paid_cents\":2500,\"notes\":[]}', '\\x00'::bytea,
                $1 - (n * 7919) % (30 * $2), $1 - (n * 7919) % (30 * $2) + n % $2,
                $1 - (n * 7919) % (30 * $2) + n % $2
         FROM generate_series(1, $3) AS n",
    )
    .bind(now)
    .bind(day)
    .bind(instances)
    .execute(store.pool())
    .await?;
    // One instance with a long history, and twenty dead letters.
    let order = OrderData {
        total_cents: 500,
        ..OrderData::default()
    };
    store.create::<Order>("busy", order.clone()).await?;
    store
        .fire(
            "busy",
            Command::new(OrderEvent::Pay(Payment { amount_cents: 500 })),
        )
        .await?;
    for n in 0..50 {
        let note = fsm_core::testing::Note(format!("note {n}"));
        store
            .fire("busy", Command::new(OrderEvent::Annotate(note)))
            .await?;
    }
    for n in 0..20 {
        let id = format!("refused-{n:02}");
        store.create::<Order>(&id, order.clone()).await?;
        store
            .fire(
                &id,
                Command::new(OrderEvent::Pay(Payment { amount_cents: 500 })),
            )
            .await?;
    }
    for row in store
        .claim_effects("Order", Duration::from_secs(60), 1000)
        .await?
    {
        let settlement = if row.machine_id.starts_with("refused") {
            Settlement::Dead {
                error: "card declined",
            }
        } else {
            Settlement::Done
        };
        store.settle_effect("Order", &row, settlement).await?;
    }
    sqlx::query("VACUUM ANALYZE").execute(store.pool()).await?;
    println!(
        "seeded {instances} instances in schema {schema} in {:.1} s",
        seeding.elapsed().as_secs_f64()
    );

    let console = fsm_console::router(store.clone())
        .machine::<Order>()
        .with_actions(true);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}/console", listener.local_addr()?);
    let app = axum::Router::new().nest("/console", console.into_router());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let http = reqwest::Client::builder().no_proxy().build()?;

    // A cursor 100 pages into Delivered, to show a deep page costs what the first does.
    let mut deep = format!("{base}/m/Order/instances?state=Delivered");
    for _ in 0..100 {
        let page = http.get(&deep).send().await?.text().await?;
        let Some(rest) = page.split(r#"<a class="next" href=""#).nth(1) else {
            break;
        };
        let next = rest[..rest.find('"').unwrap_or(0)].replace("&amp;", "&");
        deep = format!(
            "http://{}{next}",
            deep.split('/').nth(2).unwrap_or_default()
        );
    }

    println!(
        "\n{instances} instances; each page over HTTP, {rounds} rounds\n\n| page | best, ms | median, ms | bytes |\n|---|---:|---:|---:|"
    );
    let pages = [
        ("machines", base.clone()),
        (
            "machine (diagram, counts, stuck probes)",
            format!("{base}/m/Order"),
        ),
        (
            "instances in Paid, first page",
            format!("{base}/m/Order/instances?state=Paid"),
        ),
        ("instances in Delivered, page 101", deep),
        (
            "instances by id prefix o-00042",
            format!("{base}/m/Order/instances?prefix=o-00042"),
        ),
        (
            "every instance, first page",
            format!("{base}/m/Order/instances"),
        ),
        (
            "instance with 51 transitions",
            format!("{base}/m/Order/instance?id=busy"),
        ),
        (
            "instance o-0004242",
            format!("{base}/m/Order/instance?id=o-0004242"),
        ),
        ("20 dead letters", format!("{base}/m/Order/dead")),
    ];
    for (name, url) in pages {
        let response = http.get(&url).send().await?;
        let status = response.status();
        let body = response.text().await?;
        if !status.is_success() {
            println!("| {name} | {status}: {body} | | |");
            continue;
        }
        let bytes = body.len();
        let mut times = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let start = Instant::now();
            let body = http.get(&url).send().await?.bytes().await?;
            times.push(start.elapsed());
            assert_eq!(body.len(), bytes, "{name}: the page changed");
        }
        times.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "| {name} | {:.2} | {:.2} | {bytes} |",
            ms(times[0]),
            ms(times[times.len() / 2])
        );
    }

    store.pool().close().await;
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&admin)
        .await?;
    Ok(())
}
