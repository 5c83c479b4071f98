//! The HTTP service example (`examples/http_service`), driven over real HTTP on
//! loopback: each test starts the router on an ephemeral port with its own SQLite file
//! store and talks to it with an HTTP client, as a checkout or a warehouse would.

#[path = "../examples/http_service/app.rs"]
mod app;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use reqwest::StatusCode;
use reqwest::header::CONTENT_TYPE;
use serde_json::{Value, json};
use tokio::sync::Barrier;

/// The app on `127.0.0.1:0` over a fresh SQLite file, and a client for it.
struct Service {
    base: String,
    http: reqwest::Client,
    dir: PathBuf,
    store: fsm::sqlx::SqliteStore,
    /// The intake `Prefer: respond-async` submits to, if the service has one; its
    /// worker runs only when a test says so.
    intake: Option<fsm::sqlx::Intake<sqlx::Sqlite, app::Order>>,
}

/// What came back: status, headers and the body as JSON (or text when not JSON).
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    text: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// Asserts an RFC 9457 problem with this status and returns its body.
    fn problem(&self, status: StatusCode) -> Value {
        assert_eq!(self.status, status, "{}", self.text);
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json")
        );
        let body = self.json();
        assert_eq!(body["status"], status.as_u16(), "{body}");
        for member in ["type", "title", "detail"] {
            assert!(body[member].is_string(), "problem without {member}: {body}");
        }
        body
    }
}

impl Service {
    async fn start() -> Service {
        Self::start_with(false).await
    }

    /// The service with a buffered intake behind `Prefer: respond-async`.
    async fn start_with_intake() -> Service {
        Self::start_with(true).await
    }

    async fn start_with(with_intake: bool) -> Service {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "http_service-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let store = fsm::sqlx::SqliteStore::open(dir.join("orders.db"))
            .await
            .unwrap();
        store.migrate().await.unwrap();

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        // One recorder per process: every service of this test binary reports to it.
        static METRICS: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
            std::sync::OnceLock::new();
        let metrics = METRICS.get_or_init(|| {
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .install_recorder()
                .expect("the test binary's only recorder")
        });
        let intake = with_intake.then(|| store.intake::<app::Order>());
        let routes = match &intake {
            Some(intake) => app::router_with_intake(store.clone(), intake.clone()),
            None => app::router(store.clone()),
        };
        let router = app::with_console(routes, store.clone());
        let router = app::with_metrics(router, metrics.clone());
        tokio::spawn(async move { axum::serve(listener, router).await });
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        Service {
            base,
            http,
            dir,
            store,
            intake,
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        let response = request.send().await.unwrap();
        Reply {
            status: response.status(),
            headers: response.headers().clone(),
            text: response.text().await.unwrap(),
        }
    }

    async fn get(&self, path: &str) -> Reply {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    async fn create(&self, id: &str, total_cents: u64) -> Reply {
        let body = json!({ "id": id, "total_cents": total_cents });
        self.send(self.http.post(format!("{}/orders", self.base)).json(&body))
            .await
    }

    /// `POST /orders/{id}/events` with `event` as JSON and, if given, the key.
    async fn fire(&self, id: &str, key: Option<&str>, event: Value) -> Reply {
        let mut request = self
            .http
            .post(format!("{}/orders/{id}/events", self.base))
            .json(&event);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        self.send(request).await
    }

    /// `POST /orders/{id}/events` with `Prefer: respond-async` and the key.
    async fn submit(&self, id: &str, key: &str, event: Value) -> Reply {
        let request = self
            .http
            .post(format!("{}/orders/{id}/events", self.base))
            .header("Prefer", "respond-async")
            .header("Idempotency-Key", key)
            .json(&event);
        self.send(request).await
    }

    /// One pass of the intake's worker.
    async fn apply_submissions(&self) {
        let intake = self.intake.as_ref().expect("a service with an intake");
        intake.worker().run_once().await.unwrap();
    }

    /// An order of 42.00 that is already created.
    async fn order(&self, id: &str) {
        assert_eq!(self.create(id, 4_200).await.status, StatusCode::CREATED);
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn pay(cents: u64) -> Value {
    json!({ "Pay": { "amount_cents": cents } })
}

#[tokio::test]
async fn creating_an_order_is_201_then_200_with_the_same_body_then_409_for_another_total() {
    let service = Service::start().await;

    let first = service.create("o-1", 4_200).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(first.header("location"), Some("/orders/o-1"));
    assert_eq!(
        first.json(),
        json!({
            "id": "o-1",
            "state": "Created",
            "version": 0,
            "context": { "total_cents": 4200, "paid_cents": 0, "tracking": null }
        })
    );

    let again = service.create("o-1", 4_200).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.text, first.text);

    let other = service
        .create("o-1", 9_900)
        .await
        .problem(StatusCode::CONFLICT);
    assert_eq!(other["type"], "urn:fsm:problem:already-exists");
    assert_eq!(other["state"], "Created");
    assert_eq!(service.get("/orders/o-1").await.text, first.text);
}

#[tokio::test]
async fn an_event_without_an_idempotency_key_is_400_and_changes_nothing() {
    let service = Service::start().await;
    service.order("o-1").await;

    let reply = service.fire("o-1", None, pay(4_200)).await;

    let problem = reply.problem(StatusCode::BAD_REQUEST);
    assert_eq!(problem["type"], "urn:fsm:problem:missing-idempotency-key");
    assert_eq!(service.get("/orders/o-1").await.json()["version"], 0);
}

#[tokio::test]
async fn an_idempotency_key_that_is_empty_too_long_or_badly_quoted_is_400() {
    let service = Service::start().await;
    service.order("o-1").await;

    let too_long = "k".repeat(256);
    for key in [
        "\"\"",
        too_long.as_str(),
        "\"unterminated",
        "\"bad\\escape\"",
    ] {
        let reply = service.fire("o-1", Some(key), pay(4_200)).await;
        let problem = reply.problem(StatusCode::BAD_REQUEST);
        assert_eq!(
            problem["type"], "urn:fsm:problem:invalid-idempotency-key",
            "{key}"
        );
    }
    assert_eq!(service.get("/orders/o-1").await.json()["version"], 0);
}

#[tokio::test]
async fn paying_applies_once_and_a_retry_replays_the_first_response() {
    let service = Service::start().await;
    service.order("o-1").await;

    let first = service.fire("o-1", Some("\"pay-1\""), pay(4_200)).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text);
    assert_eq!(first.header("content-type"), Some("application/json"));
    assert_eq!(first.header("idempotent-replayed"), None);
    let body = first.json();
    assert_eq!(body["id"], "o-1");
    assert_eq!(body["state"], "Paid");
    assert_eq!(body["version"], 1);
    assert_eq!(body["transition"]["from"], "Created");
    assert_eq!(body["transition"]["to"], "Paid");
    assert_eq!(body["transition"]["key"], "pay-1");
    assert_eq!(
        body["transition"]["event"],
        json!({ "event": { "Pay": { "amount_cents": 4200 } } })
    );

    let retry = service.fire("o-1", Some("\"pay-1\""), pay(4_200)).await;
    assert_eq!(retry.status, first.status);
    assert_eq!(retry.text, first.text);
    assert_eq!(retry.header("idempotent-replayed"), Some("true"));

    // A bare token is the same key as the quoted string.
    let bare = service.fire("o-1", Some("pay-1"), pay(4_200)).await;
    assert_eq!(bare.text, first.text);
    assert_eq!(bare.header("idempotent-replayed"), Some("true"));

    let order = service.get("/orders/o-1").await.json();
    assert_eq!(
        (order["state"].clone(), order["version"].clone()),
        (json!("Paid"), json!(1))
    );
    assert_eq!(order["context"]["paid_cents"], 4200);
}

#[tokio::test]
async fn a_replay_still_answers_as_the_first_time_after_the_order_moved_on() {
    let service = Service::start().await;
    service.order("o-1").await;
    let first = service.fire("o-1", Some("pay-1"), pay(4_200)).await;
    let ship = json!({ "Ship": "1Z999" });
    assert_eq!(
        service.fire("o-1", Some("ship-1"), ship).await.status,
        StatusCode::OK
    );

    let late_retry = service.fire("o-1", Some("pay-1"), pay(4_200)).await;

    assert_eq!(late_retry.status, StatusCode::OK);
    assert_eq!(late_retry.text, first.text);
    assert_eq!(late_retry.json()["state"], "Paid");
}

#[tokio::test]
async fn the_same_key_with_another_payload_is_422() {
    let service = Service::start().await;
    service.order("o-1").await;
    assert_eq!(
        service.fire("o-1", Some("pay-1"), pay(4_200)).await.status,
        StatusCode::OK
    );

    let reply = service.fire("o-1", Some("pay-1"), pay(100)).await;

    let problem = reply.problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem["type"], "urn:fsm:problem:idempotency-key-reused");
    assert_eq!(problem["key"], "pay-1");
    assert_eq!(problem["version"], 1);
}

#[tokio::test]
async fn shipping_before_paying_is_409_naming_the_state_and_the_event() {
    let service = Service::start().await;
    service.order("o-1").await;
    service.order("o-2").await;
    assert_eq!(
        service.fire("o-1", Some("pay-1"), pay(4_200)).await.status,
        StatusCode::OK
    );

    let reply = service
        .fire("o-2", Some("ship-1"), json!({ "Ship": "1Z999" }))
        .await;

    let problem = reply.problem(StatusCode::CONFLICT);
    assert_eq!(problem["type"], "urn:fsm:problem:illegal-transition");
    assert_eq!(problem["state"], "Created");
    assert_eq!(problem["event"], "Ship");
    assert_eq!(problem["repeat"], false);
    assert_eq!(
        problem["detail"],
        "Order o-2: event Ship is not allowed in state Created"
    );
    assert_eq!(service.get("/orders/o-2").await.json()["version"], 0);
}

#[tokio::test]
async fn paying_again_under_a_new_key_is_409_with_repeat_true() {
    let service = Service::start().await;
    service.order("o-1").await;
    assert_eq!(
        service.fire("o-1", Some("pay-1"), pay(4_200)).await.status,
        StatusCode::OK
    );

    let reply = service.fire("o-1", Some("pay-2"), pay(4_200)).await;

    let problem = reply.problem(StatusCode::CONFLICT);
    assert_eq!(
        (problem["state"].clone(), problem["event"].clone()),
        (json!("Paid"), json!("Pay"))
    );
    assert_eq!(problem["repeat"], true);
}

#[tokio::test]
async fn a_payment_that_does_not_match_the_total_is_422_from_the_guard() {
    let service = Service::start().await;
    service.order("o-1").await;

    let reply = service.fire("o-1", Some("pay-1"), pay(100)).await;

    let problem = reply.problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem["type"], "urn:fsm:problem:guard-rejected");
    assert_eq!(problem["guards"], json!(["amount_matches"]));
    assert_eq!(problem["state"], "Created");
    // Nothing was recorded under the key: the right amount may use it.
    assert_eq!(
        service.fire("o-1", Some("pay-1"), pay(4_200)).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn an_unknown_order_is_404_on_every_route() {
    let service = Service::start().await;

    for reply in [
        service.get("/orders/nope").await,
        service.get("/orders/nope/history").await,
        service.fire("nope", Some("pay-1"), pay(4_200)).await,
    ] {
        let problem = reply.problem(StatusCode::NOT_FOUND);
        assert_eq!(problem["type"], "urn:fsm:problem:not-found");
        assert_eq!(problem["id"], "nope");
    }
}

#[tokio::test]
async fn a_body_that_is_not_json_is_400_and_one_that_is_no_event_is_422() {
    let service = Service::start().await;
    service.order("o-1").await;
    let url = format!("{}/orders/o-1/events", service.base);
    let raw = |body: &'static str| {
        service
            .http
            .post(&url)
            .header("Idempotency-Key", "k-1")
            .header(CONTENT_TYPE, "application/json")
            .body(body)
    };

    let malformed = service.send(raw("{\"Pay\": {")).await;
    let problem = malformed.problem(StatusCode::BAD_REQUEST);
    assert_eq!(problem["type"], "urn:fsm:problem:malformed-json");

    let unknown = service.send(raw("{\"Teleport\": {}}")).await;
    let problem = unknown.problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem["type"], "urn:fsm:problem:unexpected-body");

    let untyped = service
        .send(
            service
                .http
                .post(&url)
                .header("Idempotency-Key", "k-1")
                .body("\"Deliver\""),
        )
        .await;
    untyped.problem(StatusCode::UNSUPPORTED_MEDIA_TYPE);

    let bad_create = service
        .send(
            service
                .http
                .post(format!("{}/orders", service.base))
                .header(CONTENT_TYPE, "application/json")
                .body("not json"),
        )
        .await;
    bad_create.problem(StatusCode::BAD_REQUEST);
    assert_eq!(service.get("/orders/o-1").await.json()["version"], 0);
}

#[tokio::test]
async fn every_rejection_is_problem_json() {
    let service = Service::start().await;
    let http = &service.http;
    let url = |path: &str| format!("{}{path}", service.base);
    let json_body = |path: &str, body: String| {
        http.post(url(path))
            .header(CONTENT_TYPE, "application/json")
            .header("Idempotency-Key", "\"k-1\"")
            .body(body)
    };
    let over_limit = format!(
        r#"{{"id":"{}","total_cents":1}}"#,
        "x".repeat(app::BODY_LIMIT)
    );

    // (what, request, status, problem type, Allow)
    let cases = [
        (
            "bad percent-encoding in {id}",
            http.get(url("/orders/%FF")),
            StatusCode::BAD_REQUEST,
            "invalid-path",
            None,
        ),
        (
            "bad percent-encoding in {id}/history",
            http.get(url("/orders/%FF/history")),
            StatusCode::BAD_REQUEST,
            "invalid-path",
            None,
        ),
        (
            "bad percent-encoding in {id}/events",
            json_body("/orders/%C3%28/events", pay(4_200).to_string()),
            StatusCode::BAD_REQUEST,
            "invalid-path",
            None,
        ),
        (
            "DELETE on /orders/{id}",
            http.delete(url("/orders/o-1")),
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            Some("GET,HEAD"),
        ),
        (
            "GET on /orders",
            http.get(url("/orders")),
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            Some("POST"),
        ),
        (
            "an unknown route",
            http.get(url("/customers/c-1")),
            StatusCode::NOT_FOUND,
            "no-route",
            None,
        ),
        (
            "a body over the limit",
            json_body("/orders", over_limit),
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            None,
        ),
        (
            "malformed JSON",
            json_body("/orders", "{\"id\": ".into()),
            StatusCode::BAD_REQUEST,
            "malformed-json",
            None,
        ),
        (
            "JSON of the wrong shape",
            json_body("/orders", r#"{"id":"o-1","total_cents":"lots"}"#.into()),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unexpected-body",
            None,
        ),
        (
            "a wrong content type",
            http.post(url("/orders"))
                .header(CONTENT_TYPE, "text/plain")
                .body(r#"{"id":"o-1","total_cents":1}"#),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            None,
        ),
    ];

    let mut failures = Vec::new();
    for (what, request, status, kind, allow) in cases {
        let reply = service.send(request).await;
        let problem_json = reply.header("content-type") == Some("application/problem+json");
        let body: Option<Value> = serde_json::from_str(&reply.text).ok();
        let member = |name: &str| body.as_ref().map(|b| b[name].clone());
        let ok = reply.status == status
            && problem_json
            && member("type") == Some(json!(format!("urn:fsm:problem:{kind}")))
            && member("title").is_some_and(|t| t.is_string())
            && member("status") == Some(json!(status.as_u16()))
            && member("detail").is_some_and(|d| d.is_string())
            && reply.header("allow") == allow;
        if !ok {
            failures.push(format!(
                "{what}: expected {status} {kind} allow={allow:?}, got {} {:?} allow={:?}: {}",
                reply.status,
                reply.header("content-type"),
                reply.header("allow"),
                reply.text
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[tokio::test]
async fn idempotency_keys_that_are_not_structured_field_strings_are_400() {
    let service = Service::start().await;
    service.order("o-1").await;

    // A payment of the wrong amount: a key that is accepted reaches the guard (422) and
    // records nothing, so every key below is judged on its own.
    let mut accepted = Vec::new();
    for key in [
        "a b",            // a space outside a quoted string
        "a\"b",           // a quote inside a token
        "\"unterminated", // no closing quote
        "\"bad\\q\"",     // only \" and \\ are escapes
        "\"a\"b\"",       // an unescaped quote inside the string
        "\"abc\"x",       // something after the closing quote
        "\"abc\";p=1",    // parameters: the key is a bare sf-string
        "\"tab\there\"",  // HTAB is not in 0x20-0x7E
        "\"trailing\\\"", // the escape eats the closing quote
        "1abc",           // a token starts with ALPHA or `*`
        "a,b",            // `,` is no tchar
        "(abc)",
    ] {
        let reply = service.fire("o-1", Some(key), pay(100)).await;
        let is_400_problem = reply.status == StatusCode::BAD_REQUEST
            && reply.header("content-type") == Some("application/problem+json")
            && reply.json()["type"] == "urn:fsm:problem:invalid-idempotency-key";
        if !is_400_problem {
            accepted.push(format!("{key}: {} {}", reply.status, reply.text));
        }
    }
    assert!(
        accepted.is_empty(),
        "not rejected as invalid keys:\n{}",
        accepted.join("\n")
    );
    assert_eq!(service.get("/orders/o-1").await.json()["version"], 0);

    // What is a string (or a token) is the key it spells, escapes undone.
    let quoted = service.fire("o-1", Some("\"abc\""), pay(4_200)).await;
    assert_eq!(quoted.status, StatusCode::OK, "{}", quoted.text);
    assert_eq!(quoted.json()["transition"]["key"], "abc");
    let token = service.fire("o-1", Some("abc"), pay(4_200)).await;
    assert_eq!(token.header("idempotent-replayed"), Some("true"));
    assert_eq!(token.text, quoted.text);

    service.order("o-2").await;
    let escaped = service
        .fire("o-2", Some(r#""a \"b\" \\ c~""#), pay(4_200))
        .await;
    assert_eq!(escaped.status, StatusCode::OK, "{}", escaped.text);
    assert_eq!(escaped.json()["transition"]["key"], r#"a "b" \ c~"#);
}

#[tokio::test]
async fn the_diagram_is_an_svg_drawn_from_the_definition() {
    let service = Service::start().await;

    let reply = service.get("/orders/diagram.svg").await;

    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("content-type"), Some("image/svg+xml"));
    assert!(reply.text.contains("<svg"), "{}", reply.text);
    for state in [
        "Created",
        "Paid",
        "Shipped",
        "Delivered",
        "Cancelled",
        "Expired",
    ] {
        assert!(reply.text.contains(state), "diagram lacks {state}");
    }
}

#[tokio::test]
async fn history_lists_every_applied_transition_from_version_1() {
    let service = Service::start().await;
    service.order("o-1").await;
    assert!(
        service
            .get("/orders/o-1/history")
            .await
            .json()
            .as_array()
            .unwrap()
            .is_empty()
    );

    for (key, event) in [
        ("pay-1", pay(4_200)),
        ("ship-1", json!({ "Ship": "1Z999" })),
        ("pay-1", pay(4_200)), // a late retry: replayed, not recorded again
        ("deliver-1", json!("Deliver")),
    ] {
        assert_eq!(
            service.fire("o-1", Some(key), event).await.status,
            StatusCode::OK
        );
    }

    let history = service.get("/orders/o-1/history").await;
    assert_eq!(history.status, StatusCode::OK);
    let rows: Vec<(u64, String, String, String)> = history
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["version"].as_u64().unwrap(),
                t["from"].as_str().unwrap().to_owned(),
                t["to"].as_str().unwrap().to_owned(),
                t["key"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let row = |v, from: &str, to: &str, key: &str| (v, from.into(), to.into(), key.into());
    assert_eq!(
        rows,
        [
            row(1, "Created", "Paid", "pay-1"),
            row(2, "Paid", "Shipped", "ship-1"),
            row(3, "Shipped", "Delivered", "deliver-1"),
        ]
    );
    let order = service.get("/orders/o-1").await.json();
    assert_eq!(order["state"], "Delivered");
    assert_eq!(order["context"]["tracking"], "1Z999");
}

#[tokio::test]
async fn a_database_that_is_gone_is_503_without_the_backends_message() {
    let service = Service::start().await;
    service.order("o-1").await;
    service.store.pool().close().await;

    for reply in [
        service.get("/orders/o-1").await,
        service.fire("o-1", Some("pay-1"), pay(4_200)).await,
    ] {
        let problem = reply.problem(StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(problem["type"], "urn:fsm:problem:database-unavailable");
        assert_eq!(reply.header("retry-after"), Some("1"));
        let detail = problem["detail"].as_str().unwrap();
        assert!(!detail.contains("pool"), "backend detail leaked: {detail}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_posts_with_one_key_apply_exactly_once() {
    let service = Arc::new(Service::start().await);
    service.order("o-1").await;

    // 50 tasks released together: a double click, retries and a resend, all at once.
    let start = Arc::new(Barrier::new(50));
    let racers: Vec<_> = (0..50)
        .map(|_| {
            let (service, start) = (Arc::clone(&service), Arc::clone(&start));
            tokio::spawn(async move {
                start.wait().await;
                service
                    .fire("o-1", Some("\"double-click\""), pay(4_200))
                    .await
            })
        })
        .collect();
    let mut replies = Vec::new();
    for racer in racers {
        replies.push(racer.await.unwrap());
    }

    for reply in &replies {
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    }
    let applied: Vec<&Reply> = replies
        .iter()
        .filter(|r| r.header("idempotent-replayed").is_none())
        .collect();
    assert_eq!(applied.len(), 1, "exactly one request applies");
    for reply in &replies {
        assert_eq!(
            reply.text, applied[0].text,
            "every retry gets the first body"
        );
    }
    let history = service.get("/orders/o-1/history").await.json();
    assert_eq!(history.as_array().unwrap().len(), 1, "{history}");
    let order = service.get("/orders/o-1").await.json();
    assert_eq!(
        (order["state"].clone(), order["version"].clone()),
        (json!("Paid"), json!(1))
    );
    assert_eq!(order["context"]["paid_cents"], 4200, "charged once");
}

/// The value of the sample `name{labels}` in Prometheus text, 0 if absent.
fn sample(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name_and_labels)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_count_the_transitions_it_applies() {
    let service = Service::start().await;
    service.order("o-metrics").await;
    let applied = r#"fsm_transitions_total{machine="Order",event="Pay",outcome="applied"}"#;
    let illegal = r#"fsm_transitions_total{machine="Order",event="Deliver",outcome="illegal"}"#;
    let before = service.get("/metrics").await;
    assert_eq!(before.status, StatusCode::OK);
    let paid = service.fire("o-metrics", Some("\"m-1\""), pay(4_200)).await;
    assert_eq!(paid.status, StatusCode::OK, "{paid:?}");
    let deliver = service
        .fire("o-metrics", Some("\"m-2\""), json!("Deliver"))
        .await;
    assert_eq!(deliver.status, StatusCode::CONFLICT);
    let after = service.get("/metrics").await;
    assert!(
        sample(&after.text, applied) >= sample(&before.text, applied) + 1.0,
        "{}",
        after.text
    );
    assert!(sample(&after.text, illegal) >= sample(&before.text, illegal) + 1.0);
    assert!(after.text.contains("fsm_fire_duration_seconds"));
}

#[tokio::test]
async fn the_console_is_mounted_at_slash_console() {
    let service = Service::start().await;
    service.order("o-console").await;
    // `/console/` is sent on to `/console` (the client follows the redirect).
    let index = service.get("/console/").await;
    assert_eq!(index.status, StatusCode::OK, "{index:?}");
    assert!(
        index
            .text
            .contains(r#"<a href="/console/m/Order">Order</a>"#),
        "{}",
        index.text
    );
    let machine = service.get("/console/m/Order").await;
    assert_eq!(machine.status, StatusCode::OK);
    assert!(machine.text.contains("<svg"));
    let instance = service.get("/console/m/Order/instance?id=o-console").await;
    assert_eq!(instance.status, StatusCode::OK);
    assert!(instance.text.contains("o-console"));
}

#[tokio::test]
async fn prefer_respond_async_is_202_with_a_location_that_reads_pending_then_applied() {
    let service = Service::start_with_intake().await;
    service.order("o-1").await;

    let accepted = service.submit("o-1", "pay-1", pay(4_200)).await;
    assert_eq!(accepted.status, StatusCode::ACCEPTED, "{}", accepted.text);
    assert_eq!(
        accepted.header("location"),
        Some("/orders/o-1/intake/pay-1")
    );
    assert_eq!(accepted.header("preference-applied"), Some("respond-async"));
    assert_eq!(accepted.json()["status"], "pending");
    assert_eq!(
        service.get("/orders/o-1").await.json()["state"],
        "Created",
        "202 applies nothing yet"
    );

    let pending = service.get("/orders/o-1/intake/pay-1").await;
    assert_eq!(pending.status, StatusCode::OK);
    assert_eq!(pending.header("retry-after"), Some("1"));
    assert_eq!(pending.json()["status"], "pending");

    service.apply_submissions().await;
    let applied = service.get("/orders/o-1/intake/pay-1").await;
    assert_eq!(applied.status, StatusCode::OK);
    assert_eq!(applied.header("retry-after"), None);
    let body = applied.json();
    assert_eq!(
        (
            &body["status"],
            &body["state"],
            &body["version"],
            &body["key"]
        ),
        (
            &json!("applied"),
            &json!("Paid"),
            &json!(1),
            &json!("pay-1")
        ),
        "{body}"
    );
    assert_eq!(body["transition"]["to"], "Paid");
    assert_eq!(service.get("/orders/o-1").await.json()["state"], "Paid");
}

#[tokio::test]
async fn a_resubmitted_key_is_202_with_what_is_recorded_and_another_event_under_it_is_422() {
    let service = Service::start_with_intake().await;
    service.order("o-1").await;
    service.submit("o-1", "pay-1", pay(4_200)).await;
    service.apply_submissions().await;

    let again = service.submit("o-1", "pay-1", pay(4_200)).await;
    assert_eq!(again.status, StatusCode::ACCEPTED);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.json()["status"], "applied");

    let other = service.submit("o-1", "pay-1", pay(1)).await;
    let problem = other.problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem["type"], "urn:fsm:problem:idempotency-key-reused");
    assert_eq!(
        service
            .get("/orders/o-1/history")
            .await
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn a_submission_that_fails_reads_back_as_the_problem_a_fire_would_answer() {
    let service = Service::start_with_intake().await;
    service.order("o-1").await;
    assert_eq!(
        service
            .submit("o-1", "deliver-1", json!("Deliver"))
            .await
            .status,
        StatusCode::ACCEPTED
    );
    service.apply_submissions().await;

    let failed = service.get("/orders/o-1/intake/deliver-1").await.json();
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(failed["problem"]["status"], 409);
    assert_eq!(
        failed["problem"]["type"],
        "urn:fsm:problem:illegal-transition"
    );
    assert_eq!(failed["problem"]["state"], "Created");
    assert_eq!(failed["problem"]["event"], "Deliver");
}

#[tokio::test]
async fn an_unknown_submission_is_404_and_without_an_intake_respond_async_is_answered_at_once() {
    let service = Service::start_with_intake().await;
    let unknown = service.get("/orders/o-1/intake/never").await;
    assert_eq!(
        unknown.problem(StatusCode::NOT_FOUND)["type"],
        "urn:fsm:problem:no-submission"
    );

    // RFC 7240: a preference the server cannot honour is ignored.
    let plain = Service::start().await;
    plain.order("o-1").await;
    let fired = plain.submit("o-1", "pay-1", pay(4_200)).await;
    assert_eq!(fired.status, StatusCode::OK, "{}", fired.text);
    assert_eq!(fired.json()["state"], "Paid");
}
