//! The HTTP face of the Order machine: the router, its handlers, and how fsm's errors
//! become status codes and RFC 9457 `application/problem+json` bodies.
//!
//! | route | answers |
//! | --- | --- |
//! | `POST /orders` `{"id","total_cents"}` | 201 + `Location` (created), 200 (same id and body again), 409 (id taken with another total) |
//! | `POST /orders/{id}/events` + `Idempotency-Key` | 200 (applied), 200 + `Idempotent-Replayed: true` (retry: the first response again), 400, 404, 409, 422 |
//! | `GET /orders/{id}` | 200 snapshot `{id, state, version, context}`, 404 |
//! | `GET /orders/{id}/history` | 200 array of transitions (versions 1..n), 404 |
//! | `POST /orders/{id}/events` + `Prefer: respond-async` | 202 + `Location: /orders/{id}/intake/{key}` (recorded, applied later by the intake's worker; added by [`router_with_intake`]) |
//! | `GET /orders/{id}/intake/{key}` | 200 `{id, key, status: pending\|applied\|duplicate\|failed, ...}`, 404 (never submitted) |
//! | `GET /orders/diagram.svg` | 200 `image/svg+xml` |
//! | `GET /metrics` | 200 Prometheus text: fsm's `fsm_*` counters, histograms and gauges (added by [`with_metrics`]) |
//!
//! Status codes of `POST /orders/{id}/events` follow the IETF httpapi
//! `Idempotency-Key` draft:
//!
//! * no `Idempotency-Key`, or one that is not a valid key: **400**. The key is an
//!   RFC 8941 Structured Field string (`"abc"`, printable ASCII with `\"` and `\\`
//!   escaped); a bare sf-token (`abc`) is accepted too and means the same key; anything
//!   else (`a b`, `a"b`, `"unterminated`, `"bad\q"`, parameters) is 400, and so is an
//!   empty key or one over 255 bytes, which the store refuses;
//! * the key was used before with the same event: the original response, **same status
//!   and same body**, plus `Idempotent-Replayed: true`. The body is built from the
//!   recorded transition only (`{id, state, version, transition}`), never from the
//!   instance's current state, so a replay is byte-for-byte the first answer;
//! * the key was used before with another event ([`Error::KeyReused`]): **422**;
//! * a concurrent writer kept winning the compare-and-set ([`Error::Conflict`]): **409**
//!   with `Retry-After`;
//! * the event is not allowed in the current state ([`Error::IllegalTransition`]):
//!   **409**, the problem names `state`, `event` and `repeat` (true when the state is
//!   where the event leads, i.e. it most likely happened already);
//! * a guard refused the event ([`Error::GuardRejected`], e.g. a payment that does not
//!   match the total): **422**, because the state allows the event and what is wrong
//!   is the request's content; the problem lists the `guards`;
//! * unknown order: **404**; a body that is not JSON: **400**; JSON that is not an
//!   `OrderEvent` (unknown event, missing field): **422**; no JSON content type: **415**;
//! * stored data that does not parse: **500**; the database unreachable: **503**, with
//!   the backend's own error logged on stderr and not sent.
//!
//! Every error is `application/problem+json`, axum's own rejections included: an `{id}`
//! whose percent-encoding is not UTF-8 (`/orders/%FF`) is **400**, an unknown route
//! **404**, a method a route does not have **405** with `Allow`, a body over
//! [`BODY_LIMIT`] **413**, besides the 400/415/422 of bodies above. The handlers take
//! [`ProblemPath`] and [`ProblemJson`], which reject with a [`Problem`]; the router has a
//! `fallback` and a `method_not_allowed_fallback`. (Requests that hyper refuses before
//! the router sees them, such as a malformed request line or header, still get hyper's
//! bare answer.)
//!
//! With [`router_with_intake`], `POST /orders/{id}/events` with `Prefer: respond-async`
//! (RFC 7240) does not fire: it submits the keyed event to a buffered intake
//! ([`fsm::sqlx::Intake`]) and answers **202 Accepted** with `Preference-Applied:
//! respond-async` and a `Location` to poll, once the command is durable. The same key
//! again answers 202 with what is recorded now (and `Idempotent-Replayed: true`);
//! another event under it is 422, as for a synchronous fire. `GET` at the `Location`
//! answers 200 with the status: `pending` (with `Retry-After: 1`), `applied` or
//! `duplicate` with the transition, or `failed` with the problem the synchronous fire
//! would have answered (`problem`, e.g. a 409 `illegal-transition`). Without an intake
//! the preference is ignored and the event is fired at once, as RFC 7240 allows.
//!
//! An order whose id is `diagram.svg` can be created and fired at, but
//! `GET /orders/diagram.svg` is the diagram: a static segment wins over `{id}`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, FailedToBufferBody, JsonRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Request, State};
use axum::http::header::{CONTENT_TYPE, LOCATION, RETRY_AFTER};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use fsm::sqlx::Intake;
use fsm::sqlx::intake::{Status, Submission, Submitted};
use fsm::{
    Command, DurableStore, Error, IdempotencyKey, Snapshot, StateMachine, Store, Transition,
};

// The Order machine, shared with examples/order_lifecycle.rs.
#[path = "../shared/order.rs"]
mod order;

pub(crate) use order::Order;
use order::{OrderData, OrderEvent, OrderState};

/// The request header carrying the idempotency key.
pub(crate) const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// Set to `true` on a response that replays the first answer to an idempotency key.
pub(crate) const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// The media type of every error body.
pub(crate) const PROBLEM_JSON: &str = "application/problem+json";

/// The largest request body read, in bytes; a larger one is 413. An order or an event
/// is well under a kilobyte.
pub(crate) const BODY_LIMIT: usize = 64 * 1024;

/// The request header asking for an asynchronous answer (RFC 7240).
pub(crate) const PREFER: HeaderName = HeaderName::from_static("prefer");

/// What every handler shares: the store, the diagram, rendered once, and the intake
/// that `Prefer: respond-async` submits to, if any.
struct App<S> {
    store: S,
    diagram: Bytes,
    intake: Option<Arc<dyn Buffer>>,
}

/// A future of the buffer's, boxed so that [`Buffer`] is object safe.
type Boxed<'a, T> = Pin<Box<dyn Future<Output = Result<T, Error>> + Send + 'a>>;

/// An [`Intake`] of orders on any backend, so the router stays generic over the store.
trait Buffer: Send + Sync {
    fn submit<'a>(&'a self, id: &'a str, command: Command<Order>) -> Boxed<'a, Submitted<Order>>;
    fn status<'a>(
        &'a self,
        id: &'a str,
        key: &'a IdempotencyKey,
    ) -> Boxed<'a, Option<Submission<Order>>>;
}

impl<D: fsm::sqlx::Dialect> Buffer for Intake<D, Order> {
    fn submit<'a>(&'a self, id: &'a str, command: Command<Order>) -> Boxed<'a, Submitted<Order>> {
        Box::pin(Intake::submit(self, id, command))
    }

    fn status<'a>(
        &'a self,
        id: &'a str,
        key: &'a IdempotencyKey,
    ) -> Boxed<'a, Option<Submission<Order>>> {
        Box::pin(Intake::status(self, id, key))
    }
}

type Shared<S> = State<Arc<App<S>>>;

/// The service's routes over `store`, which must be migrated already.
// The example serves with an intake; tests/http_service.rs also serves without one.
#[allow(dead_code)]
pub(crate) fn router<S: Store>(store: S) -> Router {
    routes(store, None)
}

/// [`router`] whose `POST /orders/{id}/events` answers `Prefer: respond-async` with 202
/// through `intake` (whose worker the caller runs), and `GET /orders/{id}/intake/{key}`.
pub(crate) fn router_with_intake<S: Store, D: fsm::sqlx::Dialect>(
    store: S,
    intake: Intake<D, Order>,
) -> Router {
    routes(store, Some(Arc::new(intake)))
}

fn routes<S: Store>(store: S, intake: Option<Arc<dyn Buffer>>) -> Router {
    let diagram = Bytes::from(fsm::diagram::svg(<Order as StateMachine>::DEFINITION));
    Router::new()
        .route("/orders", post(create_order::<S>))
        // A static segment wins over `{id}` in axum 0.8, whatever the order here.
        .route("/orders/diagram.svg", get(diagram_svg::<S>))
        .route("/orders/{id}", get(get_order::<S>))
        .route("/orders/{id}/events", post(fire_event::<S>))
        .route("/orders/{id}/history", get(get_history::<S>))
        .route("/orders/{id}/intake/{key}", get(get_submission::<S>))
        // Applies to the routes above, so it comes after them; axum adds `Allow`.
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(no_route)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(Arc::new(App {
            store,
            diagram,
            intake,
        }))
}

/// `router` with the operator console at `/console`: the Order diagram with counts,
/// instances, history and dead letters. Actions (requeue, discard) are on, since the
/// example listens on loopback; a real service mounts this behind its authentication.
pub(crate) fn with_console<S: DurableStore>(router: Router, store: S) -> Router {
    let console = fsm_console::router(store)
        .machine::<Order>()
        .with_actions(true);
    router
        .nest("/console", console.into_router())
        // axum's nest routes `/console`, not `/console/`: send the latter on.
        .route(
            "/console/",
            get(|| async { Redirect::permanent("/console") }),
        )
}

/// `router` with `GET /metrics`: what the recorder behind `handle` has gathered, as
/// Prometheus text.
pub(crate) fn with_metrics(
    router: Router,
    handle: metrics_exporter_prometheus::PrometheusHandle,
) -> Router {
    router.route(
        "/metrics",
        get(move || {
            let text = handle.render();
            async move { ([(CONTENT_TYPE, "text/plain; version=0.0.4")], text) }
        }),
    )
}

/// [`Path`], rejecting with a [`Problem`] (e.g. 400 for `/orders/%FF`).
#[derive(Debug)]
struct ProblemPath<T>(T);

impl<T, S> FromRequestParts<S> for ProblemPath<T>
where
    Path<T>: FromRequestParts<S, Rejection = PathRejection>,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        let Path(value) = Path::<T>::from_request_parts(parts, state).await?;
        Ok(ProblemPath(value))
    }
}

/// [`Json`] as a request body, rejecting with a [`Problem`] (400, 413, 415 or 422).
#[derive(Debug)]
struct ProblemJson<T>(T);

impl<T, S> FromRequest<S> for ProblemJson<T>
where
    Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<Self, Problem> {
        let Json(value) = Json::<T>::from_request(request, state).await?;
        Ok(ProblemJson(value))
    }
}

/// Body of `POST /orders`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewOrder {
    /// The business id; creating it again with the same total is a no-op.
    id: String,
    /// What the customer owes, in cents.
    total_cents: u64,
}

/// `POST /orders`: 201 the first time, 200 with the current snapshot when the same id and
/// total come again, 409 when the id exists with another total.
///
/// The store's `create` says whether it created the order, so of two racing first
/// requests exactly one answers 201.
async fn create_order<S: Store>(
    State(app): Shared<S>,
    ProblemJson(new): ProblemJson<NewOrder>,
) -> Result<Response, Problem> {
    let context = OrderData {
        total_cents: new.total_cents,
        ..OrderData::default()
    };
    let created = app.store.create::<Order>(&new.id, context).await?;
    let is_new = created.is_new();
    let snapshot = created.into_snapshot();
    if !is_new {
        return Ok(Json(snapshot).into_response());
    }
    let location = HeaderValue::try_from(format!("/orders/{}", encode_segment(&snapshot.id)))
        .map_err(|_| Problem::internal("the order's location is not a valid header"))?;
    Ok((StatusCode::CREATED, [(LOCATION, location)], Json(snapshot)).into_response())
}

/// `GET /orders/{id}`: the snapshot.
async fn get_order<S: Store>(
    State(app): Shared<S>,
    ProblemPath(id): ProblemPath<String>,
) -> Result<Json<Snapshot<Order>>, Problem> {
    Ok(Json(app.store.load::<Order>(&id).await?))
}

/// `GET /orders/{id}/history`: the applied transitions, version 1 first.
async fn get_history<S: Store>(
    State(app): Shared<S>,
    ProblemPath(id): ProblemPath<String>,
) -> Result<Json<Vec<Transition<Order>>>, Problem> {
    Ok(Json(app.store.history::<Order>(&id).await?))
}

/// `GET /orders/diagram.svg`: the machine as drawn from its definition.
async fn diagram_svg<S: Store>(State(app): Shared<S>) -> impl IntoResponse {
    (
        [(CONTENT_TYPE, HeaderValue::from_static("image/svg+xml"))],
        app.diagram.clone(),
    )
}

/// Body of a 200 from `POST /orders/{id}/events`: the recorded transition and where it
/// left the order. Built from the transition alone, so a replay is identical.
#[derive(Serialize)]
struct Fired<'a> {
    /// The order.
    id: &'a str,
    /// The state the transition led to.
    state: OrderState,
    /// The version the transition produced.
    version: u64,
    /// The history row.
    transition: &'a Transition<Order>,
}

/// `POST /orders/{id}/events`: fires the event in the body under the request's
/// `Idempotency-Key`.
async fn fire_event<S: Store>(
    State(app): Shared<S>,
    ProblemPath(id): ProblemPath<String>,
    headers: HeaderMap,
    // Taken as a `Result` so that a missing or invalid key is reported before the body.
    body: Result<ProblemJson<OrderEvent>, Problem>,
) -> Result<Response, Problem> {
    let key = idempotency_key(&headers)?;
    let ProblemJson(event) = body?;
    if let Some(intake) = app.intake.as_ref().filter(|_| prefers_async(&headers)) {
        return submit_event(&**intake, &id, key, event).await;
    }
    let outcome = app
        .store
        .fire::<Order>(&id, Command::new(event).with_key(key))
        .await?;
    let transition = outcome.transition();
    let body = Json(Fired {
        id: &id,
        state: transition.to,
        version: transition.version,
        transition,
    });
    let mut response = (StatusCode::OK, body).into_response();
    if outcome.is_duplicate() {
        response
            .headers_mut()
            .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// Whether `Prefer` (RFC 7240, a comma-separated list, possibly in several headers)
/// holds `respond-async`.
fn prefers_async(headers: &HeaderMap) -> bool {
    headers
        .get_all(PREFER)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|preference| {
            let name = preference.split(';').next().unwrap_or("").trim();
            name.eq_ignore_ascii_case("respond-async")
        })
}

/// `POST /orders/{id}/events` with `Prefer: respond-async`: 202 once the command is
/// recorded, `Location` where its status is read.
async fn submit_event(
    intake: &dyn Buffer,
    id: &str,
    key: String,
    event: OrderEvent,
) -> Result<Response, Problem> {
    let submitted = intake
        .submit(id, Command::new(event).with_key(key.clone()))
        .await?;
    let location = format!(
        "/orders/{}/intake/{}",
        encode_segment(id),
        encode_segment(&key)
    );
    let location = HeaderValue::try_from(location)
        .map_err(|_| Problem::internal("the submission's location is not a valid header"))?;
    let replayed = !submitted.is_new();
    let mut response = (
        StatusCode::ACCEPTED,
        [
            (LOCATION, location),
            (
                HeaderName::from_static("preference-applied"),
                HeaderValue::from_static("respond-async"),
            ),
        ],
        Json(SubmissionBody::of(submitted.submission())),
    )
        .into_response();
    if replayed {
        response
            .headers_mut()
            .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// `GET /orders/{id}/intake/{key}`: what the intake recorded under `key` (the key as
/// sent in `Idempotency-Key`, one path segment).
async fn get_submission<S: Store>(
    State(app): Shared<S>,
    ProblemPath((id, key)): ProblemPath<(String, String)>,
) -> Result<Response, Problem> {
    let no_submission = || {
        Problem::new(
            StatusCode::NOT_FOUND,
            "no-submission",
            "No such submission",
            format!("nothing was submitted for order {id} under key {key:?}"),
        )
    };
    let Some(intake) = &app.intake else {
        return Err(no_submission());
    };
    let Some(submission) = intake.status(&id, &IdempotencyKey::client(&key)).await? else {
        return Err(no_submission());
    };
    let mut response = Json(SubmissionBody::of(&submission)).into_response();
    if submission.status.is_pending() {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(1));
    }
    Ok(response)
}

/// A submission as JSON: where it is, and its outcome once it has one.
#[derive(Serialize)]
struct SubmissionBody<'a> {
    id: &'a str,
    key: &'a str,
    /// `pending`, `applied`, `duplicate` or `failed`.
    status: &'static str,
    submitted_at_ms: u64,
    attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<OrderState>,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    transition: Option<&'a Transition<Order>>,
    /// The problem a synchronous fire would have answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    problem: Option<ProblemBody>,
}

impl<'a> SubmissionBody<'a> {
    fn of(submission: &'a Submission<Order>) -> Self {
        let transition = submission.status.transition();
        SubmissionBody {
            id: &submission.id,
            key: &submission.key,
            status: match &submission.status {
                Status::Pending => "pending",
                Status::Applied(_) => "applied",
                Status::Duplicate(_) => "duplicate",
                Status::Failed(_) => "failed",
            },
            submitted_at_ms: submission.submitted_at_ms,
            attempts: submission.attempts,
            state: transition.map(|t| t.to),
            version: transition.map(|t| t.version),
            transition,
            problem: submission
                .status
                .error()
                .map(|err| Problem::from(clone_error(err)).body),
        }
    }
}

/// The recorded error again, for [`Problem::from`] (fsm's `Error` is not `Clone`: its
/// backend sources are not); a recorded failure is never a backend error.
fn clone_error(err: &Error) -> Error {
    match err {
        Error::IllegalTransition {
            machine,
            id,
            state,
            event,
            repeat,
        } => Error::IllegalTransition {
            machine,
            id: id.clone(),
            state: state.clone(),
            event: event.clone(),
            repeat: *repeat,
        },
        Error::GuardRejected {
            machine,
            id,
            state,
            event,
            guards,
        } => Error::GuardRejected {
            machine,
            id: id.clone(),
            state: state.clone(),
            event: event.clone(),
            guards: guards.clone(),
        },
        Error::KeyReused {
            machine,
            id,
            key,
            version,
        } => Error::KeyReused {
            machine,
            id: id.clone(),
            key: key.clone(),
            version: *version,
        },
        Error::NotFound { machine, id } => Error::NotFound {
            machine,
            id: id.clone(),
        },
        Error::InvalidToken { machine, id } => Error::InvalidToken {
            machine,
            id: id.clone(),
        },
        other => Error::Corrupt {
            table: "fsm_intake",
            machine: <Order as StateMachine>::DEFINITION.name,
            id: String::new(),
            detail: other.to_string(),
        },
    }
}

/// Reads `Idempotency-Key`, which the IETF draft defines as an RFC 8941 sf-string:
///
/// ```text
/// sf-string = DQUOTE *( unescaped / "\" ( DQUOTE / "\" ) ) DQUOTE
/// unescaped = %x20-21 / %x23-5B / %x5D-7E
/// ```
///
/// For convenience a bare sf-token is accepted too and is the same key as the quoted
/// string (`pay-1` is `"pay-1"`):
///
/// ```text
/// sf-token  = ( ALPHA / "*" ) *( tchar / ":" / "/" )
/// ```
///
/// Anything else is 400: a space or a `"` outside a string (`a b`, `a"b`), a missing
/// closing quote, an escape other than `\"` and `\\`, a byte outside 0x20-0x7E,
/// parameters or anything else after the closing quote. As in RFC 8941 parsing, spaces
/// around the value are ignored. Length is left to the store, which answers
/// [`Error::InvalidKey`].
fn idempotency_key(headers: &HeaderMap) -> Result<String, Problem> {
    let mut values = headers.get_all(IDEMPOTENCY_KEY).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "missing-idempotency-key",
            "Idempotency-Key required",
            "POST /orders/{id}/events needs exactly one Idempotency-Key header, \
             e.g. Idempotency-Key: \"8e03978e\"",
        ));
    };
    parse_key(value.as_bytes()).map_err(|why| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid-idempotency-key",
            "Invalid Idempotency-Key",
            format!(
                "Idempotency-Key {why}; send a Structured Field string, \
                 e.g. Idempotency-Key: \"8e03978e\""
            ),
        )
    })
}

/// The key an `Idempotency-Key` value spells (see [`idempotency_key`]), or why it spells
/// none.
fn parse_key(raw: &[u8]) -> Result<String, &'static str> {
    let start = raw.iter().position(|&b| b != b' ').unwrap_or(raw.len());
    let end = raw
        .iter()
        .rposition(|&b| b != b' ')
        .map_or(start, |i| i + 1);
    let raw = &raw[start..end];
    let Some(quoted) = raw.strip_prefix(b"\"") else {
        return match raw.split_first() {
            Some((first, rest))
                if (first.is_ascii_alphabetic() || *first == b'*')
                    && rest.iter().all(|&b| is_tchar(b) || b == b':' || b == b'/') =>
            {
                // All ASCII, checked just above.
                Ok(raw.iter().map(|&b| char::from(b)).collect())
            }
            _ => Err("is neither a quoted string nor a token"),
        };
    };
    let mut key = String::with_capacity(quoted.len());
    let mut bytes = quoted.iter();
    while let Some(&byte) = bytes.next() {
        match byte {
            b'\\' => match bytes.next() {
                Some(&escaped @ (b'"' | b'\\')) => key.push(char::from(escaped)),
                _ => return Err("has an escape other than \\\" or \\\\ in its quoted string"),
            },
            b'"' if bytes.as_slice().is_empty() => return Ok(key),
            b'"' => return Err("has something after its closing quote (an unescaped \"?)"),
            0x20..=0x7e => key.push(char::from(byte)),
            _ => return Err("has a character outside printable ASCII (0x20-0x7E)"),
        }
    }
    Err("has no closing quote")
}

/// RFC 9110 `tchar`: the characters of a token.
fn is_tchar(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

/// Percent-encodes an id for use as one path segment.
fn encode_segment(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for byte in id.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Any path the router does not know.
async fn no_route(method: Method, uri: Uri) -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "no-route",
        "No such route",
        format!(
            "no route for {method} {}; see the routes in examples/http_service/app.rs",
            uri.path()
        ),
    )
}

/// A known path with a method it does not have; axum adds the `Allow` header.
async fn method_not_allowed(method: Method, uri: Uri) -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "Method not allowed",
        format!(
            "{} does not accept {method}; the Allow header lists what it does",
            uri.path()
        ),
    )
}

/// An RFC 9457 problem: `type`, `title`, `status`, `detail` and extension members,
/// sent as `application/problem+json`.
#[derive(Debug)]
pub(crate) struct Problem {
    status: StatusCode,
    body: ProblemBody,
    retry_after: Option<u32>,
}

/// The members of a problem, the standard ones first.
#[derive(Debug, Serialize)]
struct ProblemBody {
    #[serde(rename = "type")]
    kind: String,
    title: &'static str,
    status: u16,
    detail: String,
    #[serde(flatten)]
    extensions: Map<String, Value>,
}

impl Problem {
    /// A problem whose `type` is `urn:fsm:problem:{kind}`.
    fn new(status: StatusCode, kind: &str, title: &'static str, detail: impl Into<String>) -> Self {
        Problem {
            status,
            body: ProblemBody {
                kind: format!("urn:fsm:problem:{kind}"),
                title,
                status: status.as_u16(),
                detail: detail.into(),
                extensions: Map::new(),
            },
            retry_after: None,
        }
    }

    /// A 500 whose detail says what went wrong in this service, not in the store.
    fn internal(detail: &str) -> Self {
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal error",
            detail,
        )
    }

    /// Adds an extension member.
    fn with(mut self, name: &str, value: impl Serialize) -> Self {
        self.body.extensions.insert(
            name.into(),
            serde_json::to_value(value).unwrap_or(Value::Null),
        );
        self
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body)).into_response();
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(seconds) = self.retry_after {
            headers.insert(RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl From<JsonRejection> for Problem {
    fn from(rejection: JsonRejection) -> Self {
        let (kind, title) = match &rejection {
            JsonRejection::JsonSyntaxError(_) => ("malformed-json", "Malformed JSON body"),
            JsonRejection::JsonDataError(_) => {
                ("unexpected-body", "Body does not have the expected shape")
            }
            JsonRejection::MissingJsonContentType(_) => (
                "unsupported-media-type",
                "Expected Content-Type: application/json",
            ),
            JsonRejection::BytesRejection(BytesRejection::FailedToBufferBody(
                FailedToBufferBody::LengthLimitError(_),
            )) => {
                return Problem::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body-too-large",
                    "Body too large",
                    format!("the body is over the limit of {BODY_LIMIT} bytes"),
                )
                .with("limit", BODY_LIMIT);
            }
            _ => ("unreadable-body", "Body could not be read"),
        };
        Problem::new(rejection.status(), kind, title, rejection.body_text())
    }
}

impl From<PathRejection> for Problem {
    fn from(rejection: PathRejection) -> Self {
        let status = rejection.status();
        if status.is_server_error() {
            // The route and its handler disagree on the parameters: this service's bug.
            eprintln!("error: {}", rejection.body_text());
            return Problem::internal("the route's path parameters do not fit its handler");
        }
        Problem::new(
            status,
            "invalid-path",
            "Invalid path segment",
            rejection.body_text(),
        )
    }
}

impl From<Error> for Problem {
    fn from(err: Error) -> Self {
        let detail = err.to_string();
        match err {
            Error::IllegalTransition {
                state,
                event,
                repeat,
                ..
            } => Problem::new(
                StatusCode::CONFLICT,
                "illegal-transition",
                "Event not allowed in the current state",
                detail,
            )
            .with("state", state)
            .with("event", event)
            .with("repeat", repeat),
            Error::GuardRejected {
                state,
                event,
                guards,
                ..
            } => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "guard-rejected",
                "Event rejected by the order's rules",
                detail,
            )
            .with("state", state)
            .with("event", event)
            .with("guards", guards),
            Error::KeyReused { key, version, .. } => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency-key-reused",
                "Idempotency-Key already used for another request",
                detail,
            )
            .with("key", key)
            .with("version", version),
            Error::InvalidKey { len, .. } => Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid-idempotency-key",
                "Invalid Idempotency-Key",
                detail,
            )
            .with("length", len),
            Error::InvalidId { len, .. } => Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid-id",
                "Invalid order id",
                detail,
            )
            .with("length", len),
            Error::InvalidToken { .. } => Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid-token",
                "Invalid token",
                detail,
            ),
            Error::Conflict { version, .. } => Problem {
                retry_after: Some(1),
                ..Problem::new(
                    StatusCode::CONFLICT,
                    "conflict",
                    "Concurrent update, retry",
                    detail,
                )
                .with("version", version)
            },
            Error::NotFound { id, .. } => {
                Problem::new(StatusCode::NOT_FOUND, "not-found", "No such order", detail)
                    .with("id", id)
            }
            Error::AlreadyExists { state, version, .. } => Problem::new(
                StatusCode::CONFLICT,
                "already-exists",
                "Order exists with another total",
                detail,
            )
            .with("state", state)
            .with("version", version),
            Error::Corrupt { .. } | Error::Serialization { .. } => {
                eprintln!("error: {err}");
                Problem::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "corrupt",
                    "Stored data could not be read",
                    detail,
                )
            }
            Error::Database { operation, source } => {
                eprintln!("error: {operation}: database error: {source}");
                Problem {
                    retry_after: Some(1),
                    ..Problem::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "database-unavailable",
                        "Database unavailable",
                        format!("{operation}: the database did not answer; retry later"),
                    )
                }
            }
            _ => {
                eprintln!("error: {err}");
                Problem::internal("unexpected store error")
            }
        }
    }
}
