//! The Order machine behind HTTP, with `Idempotency-Key` handled the way the IETF
//! httpapi draft describes: a retried request gets the first response back, once applied.
//!
//! ```text
//! cargo run --example http_service                          # SQLite file out/http_service/orders.db
//! cargo run --example http_service -- --db /tmp/o.db --addr 127.0.0.1:8080
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test \
//!   cargo run --example http_service --features postgres
//! ```
//!
//! Then, from another shell:
//!
//! ```text
//! curl -i -X POST localhost:3000/orders -H 'content-type: application/json' \
//!      -d '{"id":"o-1","total_cents":4200}'                             # 201, again: 200
//! curl -i -X POST localhost:3000/orders/o-1/events -H 'content-type: application/json' \
//!      -H 'Idempotency-Key: "pay-1"' -d '{"Pay":{"amount_cents":4200}}' # 200, again: replayed
//! curl -i -X POST localhost:3000/orders/o-1/events -H 'content-type: application/json' \
//!      -H 'Idempotency-Key: "deliver-1"' -d '"Deliver"'                  # 409 problem+json
//! curl -i -X POST localhost:3000/orders/o-1/events -H 'content-type: application/json' \
//!      -H 'Prefer: respond-async' -H 'Idempotency-Key: "ship-1"' -d '"Ship"'
//!                                   # 202, Location: /orders/o-1/intake/ship-1
//! curl localhost:3000/orders/o-1/intake/ship-1   # {"status":"applied",...} once the worker ran
//! curl -i -X DELETE localhost:3000/orders/o-1           # 405 problem+json, Allow: GET,HEAD
//! curl -i localhost:3000/orders/%FF                      # 400 problem+json (not UTF-8)
//! curl localhost:3000/orders/o-1
//! curl localhost:3000/orders/o-1/history
//! curl -o order.svg localhost:3000/orders/diagram.svg
//! curl localhost:3000/metrics | grep fsm_transitions_total
//! ```
//!
//! and open <http://localhost:3000/console/> for the operator console.
//!
//! Routes and status codes are listed in `app.rs`; every error, axum's own rejections
//! (bad path, unknown route, wrong method, body too large, bad JSON) included, is an
//! RFC 9457 `application/problem+json` body. Ctrl-C (or SIGTERM) stops accepting,
//! lets requests in flight finish, and exits.

mod app;

use std::net::SocketAddr;
use std::path::PathBuf;

use fsm::sqlx::{Dialect, SqlStore};
use tokio_util::sync::CancellationToken;

type Failure = Box<dyn std::error::Error + Send + Sync>;

const USAGE: &str = "usage: http_service [--db PATH] [--addr HOST:PORT]
  --db PATH          SQLite file (default out/http_service/orders.db); ignored when
                     DATABASE_URL is set (postgres://, mysql://, sqlite:)
  --addr HOST:PORT   where to listen (default 127.0.0.1:3000)";

/// Command-line options.
#[derive(Debug)]
struct Args {
    db: PathBuf,
    addr: SocketAddr,
}

impl Args {
    fn parse() -> Result<Self, Failure> {
        let mut args = Args {
            db: PathBuf::from("out").join("http_service").join("orders.db"),
            addr: SocketAddr::from(([127, 0, 0, 1], 3000)),
        };
        let mut argv = std::env::args().skip(1);
        while let Some(flag) = argv.next() {
            let mut value = || argv.next().ok_or(format!("{flag} needs a value\n{USAGE}"));
            match flag.as_str() {
                "--db" => args.db = PathBuf::from(value()?),
                "--addr" => {
                    let addr = value()?;
                    args.addr = addr.parse().map_err(|e| format!("--addr {addr}: {e}"))?;
                }
                "-h" | "--help" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                other => return Err(format!("unknown argument {other}\n{USAGE}").into()),
            }
        }
        Ok(args)
    }
}

#[tokio::main]
async fn main() -> Result<(), Failure> {
    let args = Args::parse()?;
    // Logs, fsm's spans included: RUST_LOG=fsm=debug for every operation.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty()) {
        None => {
            if let Some(dir) = args.db.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            println!("store: SQLite file {}", args.db.display());
            let store = fsm::sqlx::SqliteStore::open(&args.db).await?;
            store.migrate().await?;
            serve(store, args.addr).await
        }
        Some(url) => open_server(&url, args.addr).await,
    }
}

/// Opens the store `DATABASE_URL` names, if its backend was compiled in.
async fn open_server(url: &str, addr: SocketAddr) -> Result<(), Failure> {
    if url.starts_with("postgres") {
        #[cfg(feature = "postgres")]
        {
            println!("store: PostgreSQL {url}");
            let store = fsm::sqlx::PgStore::connect(url).await?;
            store.migrate().await?;
            return serve(store, addr).await;
        }
    } else if url.starts_with("mysql") || url.starts_with("mariadb") {
        #[cfg(feature = "mysql")]
        {
            println!("store: MySQL {url}");
            let store = fsm::sqlx::MySqlStore::connect(url).await?;
            store.migrate().await?;
            return serve(store, addr).await;
        }
    } else if url.starts_with("sqlite") {
        println!("store: SQLite {url}");
        let store = fsm::sqlx::SqliteStore::connect(url).await?;
        store.migrate().await?;
        return serve(store, addr).await;
    }
    let _ = addr;
    Err(format!(
        "DATABASE_URL={url}: unsupported, or its backend was not compiled in \
         (add --features postgres or --features mysql)"
    )
    .into())
}

/// Listens on `addr` until Ctrl-C or SIGTERM, then drains requests in flight; an intake
/// worker applies what `Prefer: respond-async` requests submit.
async fn serve<D: Dialect>(store: SqlStore<D>, addr: SocketAddr) -> Result<(), Failure> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let url = format!("http://{}", listener.local_addr()?);
    println!("listening on {url}");
    println!("  POST {url}/orders                  {{\"id\":\"o-1\",\"total_cents\":4200}}");
    println!("  POST {url}/orders/{{id}}/events     Idempotency-Key + {{\"Pay\":{{...}}}}");
    println!(
        "  POST {url}/orders/{{id}}/events     + Prefer: respond-async: 202, Location to poll"
    );
    println!("  GET  {url}/orders/{{id}}  {url}/orders/{{id}}/history  {url}/orders/diagram.svg");
    println!("  GET  {url}/metrics                 Prometheus text");
    println!("  GET  {url}/console/                the operator console");
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
    let intake = store.intake::<app::Order>();
    let stop_worker = CancellationToken::new();
    let worker = tokio::spawn(intake.worker().run(stop_worker.clone()));
    let router = app::with_console(app::router_with_intake(store.clone(), intake), store);
    axum::serve(listener, app::with_metrics(router, metrics))
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    stop_worker.cancel();
    worker.await??;
    println!("stopped");
    Ok(())
}

/// Completes on Ctrl-C, or on SIGTERM where there is one.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            eprintln!("cannot listen for Ctrl-C: {err}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                eprintln!("cannot listen for SIGTERM: {err}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    println!("shutting down: finishing requests in flight");
}
