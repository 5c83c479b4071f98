//! The main job: an order's life on a durable store, with the failures a real service
//! meets: a retried payment, an event out of order, and 16 racing double submits.
//!
//! ```text
//! cargo run --example order_lifecycle                      # embedded SQLite file
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test \
//!   cargo run --example order_lifecycle --features postgres
//! DATABASE_URL=mysql://root@127.0.0.1:3306/test \
//!   cargo run --example order_lifecycle --features mysql
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use fsm::{Command, Error, Outcome, StateMachine, Store};

#[path = "shared/order.rs"]
mod order;

use order::{Order, OrderData, OrderEvent, Payment, Tracking};

type Failure = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Failure> {
    let out = PathBuf::from("out").join("order_lifecycle");
    std::fs::create_dir_all(&out)?;
    match std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty()) {
        None => {
            let path = out.join("orders.db");
            println!("store: SQLite file {}", path.display());
            let store = fsm::sqlx::SqliteStore::open(&path).await?;
            store.migrate().await?;
            lifecycle(store, &out).await
        }
        Some(url) => open_server(&url, &out).await,
    }
}

async fn open_server(url: &str, out: &Path) -> Result<(), Failure> {
    if url.starts_with("postgres") {
        #[cfg(feature = "postgres")]
        {
            println!("store: PostgreSQL {url}");
            let store = fsm::sqlx::PgStore::connect(url).await?;
            store.migrate().await?;
            return lifecycle(store, out).await;
        }
    } else if url.starts_with("mysql") || url.starts_with("mariadb") {
        #[cfg(feature = "mysql")]
        {
            println!("store: MySQL {url}");
            let store = fsm::sqlx::MySqlStore::connect(url).await?;
            store.migrate().await?;
            return lifecycle(store, out).await;
        }
    } else if url.starts_with("sqlite") {
        println!("store: SQLite {url}");
        let store = fsm::sqlx::SqliteStore::connect(url).await?;
        store.migrate().await?;
        return lifecycle(store, out).await;
    }
    let _ = out;
    Err(format!(
        "DATABASE_URL={url}: unsupported, or its backend was not compiled in \
         (add --features postgres or --features mysql)"
    )
    .into())
}

async fn lifecycle<S: Store>(store: S, out: &Path) -> Result<(), Failure> {
    let store = Arc::new(store);
    let id = format!(
        "order-{}",
        SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis()
    );

    let order = store
        .create::<Order>(
            &id,
            OrderData {
                total_cents: 4_200,
                ..OrderData::default()
            },
        )
        .await?
        .into_snapshot();
    println!(
        "\ncreated {id}: state {} at version {}",
        order.state, order.version
    );

    // The warehouse is quicker than the payment: a typed error, nothing written.
    let early = Command::new(OrderEvent::Ship(Tracking("1Z999".into())));
    match store.fire(&id, early).await {
        Err(err @ Error::IllegalTransition { .. }) => {
            println!("ship before pay  -> rejected: {err}")
        }
        other => return Err(format!("shipping an unpaid order must fail, got {other:?}").into()),
    }

    // The checkout sends the payment with an idempotency key...
    let pay = || {
        Command::new(OrderEvent::Pay(Payment {
            amount_cents: 4_200,
        }))
        .with_key("checkout-7f3a")
    };
    let first = store.fire(&id, pay()).await?;
    report("pay (key checkout-7f3a)", &first);
    // ...and, after a timeout on its side, sends it again.
    let retry = store.fire(&id, pay()).await?;
    report("pay retried", &retry);
    assert!(
        retry.is_duplicate(),
        "a retried payment must not apply twice"
    );

    // Without a key, a second Pay is still caught: Paid is where Pay leads.
    if let Err(err) = store
        .fire(
            &id,
            Command::new(OrderEvent::Pay(Payment {
                amount_cents: 4_200,
            })),
        )
        .await
    {
        println!(
            "pay again, no key -> {err} (is_repeat: {})",
            err.is_repeat()
        );
    }

    // 16 warehouse workers pick the same parcel and each submit "shipped".
    let racers: Vec<_> = (0..16)
        .map(|_| {
            let (store, id) = (Arc::clone(&store), id.clone());
            tokio::spawn(async move {
                let ship =
                    Command::new(OrderEvent::Ship(Tracking("1Z999".into()))).with_key("pick-0042");
                store.fire(&id, ship).await
            })
        })
        .collect();
    let (mut applied, mut duplicates) = (0, 0);
    for racer in racers {
        match racer.await?? {
            Outcome::Applied(_) => applied += 1,
            Outcome::Duplicate(_) => duplicates += 1,
        }
    }
    println!("16 racers ship with key pick-0042 -> {applied} applied, {duplicates} duplicates");
    assert_eq!(applied, 1, "exactly one racer may apply");

    let delivered = store.fire(&id, Command::new(OrderEvent::Deliver)).await?;
    report("deliver", &delivered);

    let order = store.load::<Order>(&id).await?;
    println!(
        "\n{id} is {} at version {}, paid {} cents, tracking {:?}",
        order.state, order.version, order.context.paid_cents, order.context.tracking
    );

    println!("\nhistory:");
    println!("version  from      event    to        key");
    for t in store.history::<Order>(&id).await? {
        let event = t.event.event().map_or("timer", Order::event_name);
        println!(
            "{:>7}  {:<9} {:<8} {:<9} {}",
            t.version,
            t.from,
            event,
            t.to,
            t.key.as_deref().unwrap_or("-")
        );
    }

    let definition = <Order as StateMachine>::DEFINITION;
    std::fs::write(out.join("order.mmd"), fsm::diagram::mermaid(definition))?;
    std::fs::write(out.join("order.dot"), fsm::diagram::dot(definition))?;
    std::fs::write(out.join("order.svg"), fsm::diagram::svg(definition))?;
    println!(
        "\ndiagrams: order.mmd, order.dot, order.svg in {}",
        out.display()
    );
    Ok(())
}

fn report(what: &str, outcome: &Outcome<Order>) {
    let kind = if outcome.is_duplicate() {
        "Duplicate"
    } else {
        "Applied"
    };
    println!("{what:<24} -> {kind}: {}", outcome.transition());
}
