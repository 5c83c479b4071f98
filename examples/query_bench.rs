//! What the operator queries cost on PostgreSQL at scale: listings by state, by time in
//! state and by id prefix (first page and a page deep into the keyset), counts per
//! state, and `verify`, over `--instances N` order instances (default 1,000,000).
//!
//! ```text
//! cargo run --release --example query_bench --features postgres -- [--instances N] [--url URL]
//! ```
//!
//! It seeds a fresh schema with plain SQL (fsm's own tables, migrated by the store), so
//! seeding 1M rows takes seconds; the queries then run through `PgStore`. The plans are
//! in `benches/queries/explain.sql` (run it with `psql` against the schema this prints).

#[cfg(feature = "postgres")]
#[path = "shared/order.rs"]
#[allow(dead_code)]
mod order;

#[cfg(not(feature = "postgres"))]
fn main() {
    eprintln!("query_bench needs --features postgres");
}

#[cfg(feature = "postgres")]
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    use std::time::{Duration, Instant};

    use fsm::sqlx::PgStore;
    use fsm::{Query, Store};
    use order::{Order, OrderState};

    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let instances: i64 = flag("--instances").map_or(Ok(1_000_000), |n| n.parse())?;
    let url = flag("--url")
        .or_else(|| std::env::var("FSM_POSTGRES_URL").ok())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let keep = args.iter().any(|a| a == "--keep");

    let schema = format!("fsm_query_bench_{}", std::process::id());
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

    // States spread as a busy shop's: most delivered, some waiting, few stuck; creation
    // times over 30 days, entering the state up to a day later.
    let seeding = Instant::now();
    let day: i64 = 86_400_000;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    sqlx::query(
        "INSERT INTO fsm_machines
           (machine_type, machine_id, state, version, context, init_fingerprint,
            created_at, updated_at, entered_at)
         SELECT 'Order', 'o-' || lpad(n::text, 7, '0'),
                (ARRAY['Delivered','Delivered','Delivered','Delivered','Shipped',
                       'Paid','Paid','Created','Cancelled','Delivered'])[1 + n % 10],
                1 + n % 4, '{\"total_cents\":2500,\"paid_cents\":0}', '\\x00'::bytea,
                $1 - (n * 7919) % (30 * $2), $1 - (n * 7919) % (30 * $2) + n % $2,
                $1 - (n * 7919) % (30 * $2) + n % $2
         FROM generate_series(1, $3) AS n",
    )
    .bind(now)
    .bind(day)
    .bind(instances)
    .execute(store.pool())
    .await?;
    sqlx::query("VACUUM ANALYZE fsm_machines")
        .execute(store.pool())
        .await?;
    println!(
        "seeded {instances} instances in schema {schema} in {:.1} s",
        seeding.elapsed().as_secs_f64()
    );

    async fn time<T>(
        what: &str,
        rounds: u32,
        mut run: impl AsyncFnMut() -> Result<T, fsm::Error>,
    ) -> Result<T, fsm::Error> {
        let mut best = Duration::MAX;
        let mut last = None;
        for _ in 0..rounds {
            let start = Instant::now();
            last = Some(run().await?);
            best = best.min(start.elapsed());
        }
        println!("| {what} | {:.2} |", best.as_secs_f64() * 1e3);
        Ok(last.expect("rounds >= 1"))
    }

    let paid = Query::<Order>::new().in_state(OrderState::Paid);
    let stuck = Query::<Order>::new()
        .in_state(OrderState::Paid)
        .stuck_for(Duration::from_secs(86_400 * 20));
    let prefix = Query::<Order>::new().id_prefix("o-00042");
    let all = Query::<Order>::new().newest_first();
    println!("\n| query (page of 50) | best of 5, ms |\n|---|---:|");
    for (name, query) in [
        ("in state Paid, oldest first", &paid),
        ("in state Paid for more than 20 days", &stuck),
        ("id prefix `o-00042`", &prefix),
        ("every instance, newest first", &all),
        (
            "in state Paid or Shipped, newest first",
            &Query::<Order>::new()
                .in_states([OrderState::Paid, OrderState::Shipped])
                .newest_first(),
        ),
    ] {
        let first = time(&format!("{name}: first page"), 5, async || {
            store.list(query).await
        })
        .await?;
        // 100 pages in: the keyset makes a deep page cost what the first does.
        let mut cursor = first.next.clone();
        for _ in 0..100 {
            let Some(at) = cursor.take() else { break };
            cursor = store.list(&query.clone().after(at)).await?.next;
        }
        if let Some(at) = cursor {
            let deep = query.clone().after(at);
            time(&format!("{name}: page 102"), 5, async || {
                store.list(&deep).await
            })
            .await?;
        }
    }
    let counts = time("count per state (all instances)", 3, async || {
        store.count_by_state::<Order>().await
    })
    .await?;
    println!("\ncounts: {:?}", counts.states);
    let report = time("verify", 1, async || store.verify::<Order>().await).await?;
    println!("{report}");

    if keep {
        println!("kept schema {schema}");
    } else {
        sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
            .execute(&admin)
            .await?;
    }
    Ok(())
}
