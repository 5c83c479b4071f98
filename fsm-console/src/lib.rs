//! An operator console for [fsm](https://docs.rs/fsm) that a service mounts: an axum
//! [`Router`] over any [`DurableStore`] (the sqlx stores and `MemoryStore` alike) and
//! the machine types it is given.
//!
//! * **Machines**: every registered type with its instance count.
//! * **A machine**: its diagram, each state showing how many instances are in it and
//!   linking to them; states where an instance has been longer than
//!   [`stuck_after`](Console::stuck_after) are highlighted.
//! * **Instances** by state or id prefix, a page at a time (keyset, never an offset).
//! * **An instance**: state, version, times, context as pretty JSON, its history as a
//!   timeline, its pending timers and its effects with status and attempts.
//! * **Dead letters**, with requeue and discard when actions are enabled.
//!
//! Pages are HTML rendered on the server with the CSS embedded: no JavaScript, no build
//! step, nothing fetched from elsewhere, so the console works offline. Every value from
//! the database or the request is escaped. The console is read-only unless
//! [`with_actions`](Console::with_actions) enables requeue and discard; an action is a
//! `POST` that must come from the console's own pages (same origin, and the console's
//! CSRF token), is idempotent (a dead letter requeued twice is requeued once) and is
//! logged with `tracing`. Mount it behind the service's own authentication.
//!
//! # Examples
//!
//! ```
//! use fsm_core::MemoryStore;
//! use fsm_core::testing::Order;
//!
//! let store = MemoryStore::new();
//! let app: axum::Router = axum::Router::new().nest(
//!     "/console",
//!     fsm_console::router(store).machine::<Order>().into_router(),
//! );
//! # let _ = app;
//! ```
#![forbid(unsafe_code)]

mod machine;
mod pages;
mod time;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Form, FromRequestParts, NestedPath, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use fsm_core::{DurableStore, EffectId, StateMachine};
use serde::Deserialize;

use machine::{MachinePages, Pages};

/// Builds a console over `store`; register machine types with
/// [`machine`](Console::machine), then mount [`into_router`](Console::into_router).
pub fn router<S: DurableStore>(store: S) -> Console<S> {
    Console::new(store)
}

/// A console under construction: the store, the machine types it shows, and whether
/// operators may act.
pub struct Console<S> {
    store: S,
    machines: Vec<Arc<dyn MachinePages<S>>>,
    actions: bool,
    stuck_after: Duration,
    page_size: usize,
}

impl<S> fmt::Debug for Console<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let machines: Vec<_> = self.machines.iter().map(|m| m.definition().name).collect();
        f.debug_struct("Console")
            .field("machines", &machines)
            .field("actions", &self.actions)
            .field("stuck_after", &self.stuck_after)
            .field("page_size", &self.page_size)
            .finish_non_exhaustive()
    }
}

impl<S: DurableStore> Console<S> {
    /// A read-only console showing no machine type yet; instances count as stuck after
    /// a day in a non-terminal state; lists show 50 instances a page.
    pub fn new(store: S) -> Self {
        Console {
            store,
            machines: Vec::new(),
            actions: false,
            stuck_after: Duration::from_secs(86_400),
            page_size: 50,
        }
    }

    /// Shows machine type `M` (registering one twice shows it once).
    #[must_use]
    pub fn machine<M: StateMachine>(mut self) -> Self {
        let name = M::DEFINITION.name;
        self.machines.retain(|m| m.definition().name != name);
        self.machines.push(Arc::new(Pages::<M>::new()));
        self
    }

    /// Enables (or disables) the operator actions: requeue and discard of dead letters.
    #[must_use]
    pub fn with_actions(mut self, enabled: bool) -> Self {
        self.actions = enabled;
        self
    }

    /// How long an instance may stay in a non-terminal state before its state is
    /// highlighted on the diagram.
    #[must_use]
    pub fn stuck_after(mut self, age: Duration) -> Self {
        self.stuck_after = age;
        self
    }

    /// Instances per list page (1 to 1,000).
    #[must_use]
    pub fn page_size(mut self, size: usize) -> Self {
        self.page_size = size.clamp(1, fsm_core::MAX_PAGE);
        self
    }

    /// The router, to [`nest`](Router::nest) under any prefix (or serve at the root).
    pub fn into_router(self) -> Router {
        let console = Arc::new(Shared {
            store: self.store,
            machines: self
                .machines
                .into_iter()
                .map(|m| (m.definition().name, m))
                .collect(),
            actions: self.actions,
            stuck_after: self.stuck_after,
            page_size: self.page_size,
            csrf: new_csrf_token(),
        });
        Router::new()
            .route("/", get(index::<S>))
            .route("/style.css", get(style))
            .route("/m/{machine}", get(machine_page::<S>))
            .route("/m/{machine}/instances", get(instances::<S>))
            .route("/m/{machine}/instance", get(instance::<S>))
            .route("/m/{machine}/dead", get(dead_letters::<S>))
            .route("/m/{machine}/dead/{action}", post(act::<S>))
            .with_state(console)
    }
}

impl<S: DurableStore> From<Console<S>> for Router {
    fn from(console: Console<S>) -> Router {
        console.into_router()
    }
}

/// What the handlers share.
struct Shared<S> {
    store: S,
    machines: HashMap<&'static str, Arc<dyn MachinePages<S>>>,
    actions: bool,
    stuck_after: Duration,
    page_size: usize,
    csrf: String,
}

/// The page for a machine type the console was not given.
fn no_such_machine(machine: &str) -> Response {
    pages::problem(StatusCode::NOT_FOUND, "No such machine type", machine)
}

/// 128 random bits as hex: forms carry it back, which a page of another origin cannot.
fn new_csrf_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where the console is mounted (`/console`, or empty at the root): links are absolute
/// under it, so they hold whatever the prefix and the trailing slash.
struct Base(String);

impl<T: Send + Sync> FromRequestParts<T> for Base {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &T) -> Result<Self, Self::Rejection> {
        let nested = parts.extensions.get::<NestedPath>();
        Ok(Base(
            nested
                .map_or("", |n| n.as_str().trim_end_matches('/'))
                .to_owned(),
        ))
    }
}

type Handle<S> = State<Arc<Shared<S>>>;

async fn style() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        pages::STYLE,
    )
}

async fn index<S: DurableStore>(State(console): Handle<S>, Base(base): Base) -> Response {
    let mut rows = Vec::new();
    let mut names: Vec<_> = console.machines.keys().copied().collect();
    names.sort_unstable();
    for name in names {
        let pages = &console.machines[name];
        match pages.total(&console.store).await {
            Ok(total) => rows.push((name, total)),
            Err(err) => return pages::store_error(&err),
        }
    }
    pages::index(&base, &rows).into_response()
}

async fn machine_page<S: DurableStore>(
    State(console): Handle<S>,
    Base(base): Base,
    Path(machine): Path<String>,
) -> Response {
    let Some(pages) = console.machines.get(machine.as_str()) else {
        return no_such_machine(&machine);
    };
    match pages.overview(&console.store, console.stuck_after).await {
        Ok(overview) => pages::machine(&base, pages.definition(), &overview, console.stuck_after)
            .into_response(),
        Err(err) => pages::store_error(&err),
    }
}

/// The list page's query string.
#[derive(Debug, Default, Deserialize)]
struct ListParams {
    state: Option<String>,
    prefix: Option<String>,
    after: Option<String>,
}

async fn instances<S: DurableStore>(
    State(console): Handle<S>,
    Base(base): Base,
    Path(machine): Path<String>,
    Query(params): Query<ListParams>,
) -> Response {
    let Some(pages) = console.machines.get(machine.as_str()) else {
        return no_such_machine(&machine);
    };
    let filter = machine::ListFilter {
        state: params.state.filter(|s| !s.is_empty()),
        prefix: params.prefix.filter(|s| !s.is_empty()),
        after: params.after.filter(|s| !s.is_empty()),
        limit: console.page_size,
    };
    match pages.list(&console.store, &filter).await {
        Ok(list) => pages::instances(&base, pages.definition(), &filter, &list).into_response(),
        Err(err) => pages::store_error(&err),
    }
}

/// The instance page's query string.
#[derive(Debug, Deserialize)]
struct InstanceParams {
    id: String,
}

async fn instance<S: DurableStore>(
    State(console): Handle<S>,
    Base(base): Base,
    Path(machine): Path<String>,
    Query(params): Query<InstanceParams>,
) -> Response {
    let Some(pages) = console.machines.get(machine.as_str()) else {
        return no_such_machine(&machine);
    };
    match pages.instance(&console.store, &params.id).await {
        Ok(view) => pages::instance(&base, pages.definition(), &view).into_response(),
        Err(err) => pages::store_error(&err),
    }
}

async fn dead_letters<S: DurableStore>(
    State(console): Handle<S>,
    Base(base): Base,
    Path(machine): Path<String>,
) -> Response {
    let Some(pages) = console.machines.get(machine.as_str()) else {
        return no_such_machine(&machine);
    };
    let csrf = console.actions.then_some(console.csrf.as_str());
    match pages.dead_letters(&console.store).await {
        Ok(dead) => pages::dead_letters(&base, pages.definition(), &dead, csrf).into_response(),
        Err(err) => pages::store_error(&err),
    }
}

/// A requeue or discard form.
#[derive(Debug, Deserialize)]
struct ActionForm {
    id: String,
    version: u64,
    seq: u32,
    csrf: String,
}

async fn act<S: DurableStore>(
    State(console): Handle<S>,
    Base(base): Base,
    Path((machine, action)): Path<(String, String)>,
    headers: HeaderMap,
    Form(form): Form<ActionForm>,
) -> Response {
    if !console.actions {
        return pages::problem(
            StatusCode::FORBIDDEN,
            "Actions are disabled",
            "this console is read-only",
        );
    }
    if let Err(why) = same_origin(&headers) {
        tracing::warn!(machine, action, why, "console action refused");
        return pages::problem(StatusCode::FORBIDDEN, "Cross-origin request refused", why);
    }
    if !constant_time_eq(form.csrf.as_bytes(), console.csrf.as_bytes()) {
        tracing::warn!(machine, action, "console action refused: bad CSRF token");
        return pages::problem(
            StatusCode::FORBIDDEN,
            "Stale or forged form",
            "reload the page and try again",
        );
    }
    let Some(pages) = console.machines.get(machine.as_str()) else {
        return no_such_machine(&machine);
    };
    let effect = EffectId {
        machine: pages.definition().name,
        id: form.id,
        version: form.version,
        seq: form.seq,
    };
    let result = match action.as_str() {
        "requeue" => console.store.requeue(&effect).await,
        "discard" => console.store.discard(&effect).await,
        _ => return pages::problem(StatusCode::NOT_FOUND, "No such action", &action),
    };
    match result {
        Ok(changed) => {
            // `changed` is false when the row was no longer a dead letter: an action
            // repeated (a double submit, a second operator) is done once.
            tracing::info!(machine, action, effect = %effect, changed, "console action");
            Redirect::to(&format!("{base}/m/{machine}/dead")).into_response()
        }
        Err(err) => pages::store_error(&err),
    }
}

/// A `POST` from a page of this console: a browser sends `Origin` (and
/// `Sec-Fetch-Site`) on every form submission, and it must name this host, as the
/// request's `Host` or, behind a reverse proxy, its `X-Forwarded-Host` says.
fn same_origin(headers: &HeaderMap) -> Result<(), &'static str> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = text("sec-fetch-site")
        && site != "same-origin"
    {
        return Err("the form was not submitted from this console");
    }
    let Some(origin) = text("origin") else {
        // Clients that are not browsers send no Origin; the CSRF token still binds the
        // request to a page of this console.
        return Ok(());
    };
    let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
    let forwarded = text("x-forwarded-host").and_then(|h| h.split(',').next());
    let hosts = [text("host"), forwarded.map(str::trim)];
    if hosts
        .into_iter()
        .flatten()
        .any(|host| origin_host.eq_ignore_ascii_case(host))
    {
        Ok(())
    } else {
        Err("the Origin header names another site")
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
