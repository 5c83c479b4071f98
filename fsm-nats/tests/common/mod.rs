//! What the NATS tests share: where the server is, unique names, and streams that are
//! deleted at the end of a test, also when it fails.

// Each test crate includes this module and uses only part of it.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, stream};

/// The server URL in `FSM_NATS_URL`, or `None` when the tests should be skipped.
///
/// # Panics
///
/// When it is unset and `CI` is set: a CI run must not skip NATS silently.
pub(crate) fn server_url() -> Option<String> {
    const VAR: &str = "FSM_NATS_URL";
    if let Some(url) = std::env::var(VAR).ok().filter(|url| !url.is_empty()) {
        return Some(url);
    }
    let in_ci = std::env::var_os("CI").is_some_and(|ci| !ci.is_empty());
    assert!(
        !in_ci,
        "{VAR} is not set, but CI is: CI runs these tests against a server, so set {VAR}"
    );
    eprintln!("skipping: {VAR} is not set");
    None
}

/// A name no other test of any process uses, e.g. `fsm_t_4242_7_1763800000000000000`:
/// valid as a stream name, a consumer name and a subject token.
pub(crate) fn unique_name() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "fsm_t_{}_{}_{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A JetStream context on the test server.
pub(crate) async fn jetstream(url: &str) -> jetstream::Context {
    let client = async_nats::connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect to FSM_NATS_URL {url}: {e}"));
    jetstream::new(client)
}

/// A stream of the test's own capturing `{name}.>`, deleted by `delete` or, if the test
/// panicked, on drop.
pub(crate) struct TestStream {
    pub(crate) url: String,
    pub(crate) name: String,
    pub(crate) stream: stream::Stream,
    deleted: bool,
}

impl TestStream {
    /// A file-stored stream named `name` capturing `{name}.>` with this duplicate window.
    pub(crate) async fn create(
        url: &str,
        jetstream: &jetstream::Context,
        duplicate_window: Duration,
    ) -> Self {
        let name = unique_name();
        let stream = jetstream
            .create_stream(stream::Config {
                name: name.clone(),
                subjects: vec![format!("{name}.>")],
                duplicate_window,
                ..stream::Config::default()
            })
            .await
            .unwrap_or_else(|e| panic!("create stream {name}: {e}"));
        TestStream {
            url: url.to_owned(),
            name,
            stream,
            deleted: false,
        }
    }

    /// Every message in the stream, in sequence order.
    pub(crate) async fn messages(&mut self) -> Vec<jetstream::message::StreamMessage> {
        let last = self
            .stream
            .info()
            .await
            .expect("stream info")
            .state
            .last_sequence;
        let mut messages = Vec::new();
        for seq in 1..=last {
            match self.stream.get_raw_message(seq).await {
                Ok(message) => messages.push(message),
                Err(err) => panic!("stream {} message {seq}: {err}", self.name),
            }
        }
        messages
    }

    pub(crate) async fn delete(mut self, jetstream: &jetstream::Context) {
        jetstream
            .delete_stream(&self.name)
            .await
            .unwrap_or_else(|e| panic!("delete stream {}: {e}", self.name));
        self.deleted = true;
    }
}

impl Drop for TestStream {
    fn drop(&mut self) {
        if self.deleted {
            return;
        }
        let (url, name) = (self.url.clone(), self.name.clone());
        // A thread and runtime of its own: the test's runtime may be gone or busy.
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("cleanup runtime")
                .block_on(async move {
                    if let Ok(client) = async_nats::connect(url).await {
                        let _ = jetstream::new(client).delete_stream(&name).await;
                    }
                });
        })
        .join();
    }
}

/// The value of header `name`, if present.
pub(crate) fn header<'a>(
    message: &'a jetstream::message::StreamMessage,
    name: &str,
) -> Option<&'a str> {
    message.headers.get(name).map(|value| value.as_str())
}

/// A SQLite file store in a directory of its own, removed on drop. (Not
/// `SqliteStore::memory()`: its one connection is replaced when a task holding it is
/// aborted, and the in-memory database with it.)
pub(crate) struct SqliteFile {
    pub(crate) dir: std::path::PathBuf,
    pub(crate) path: std::path::PathBuf,
    pub(crate) store: fsm_sqlx::SqliteStore,
}

impl SqliteFile {
    pub(crate) async fn create() -> Self {
        let dir = std::env::temp_dir().join(unique_name());
        std::fs::create_dir_all(&dir).expect("create a temporary directory");
        let path = dir.join("fsm.db");
        let store = fsm_sqlx::SqliteStore::open(&path)
            .await
            .expect("open SQLite");
        store.migrate().await.expect("migrate");
        SqliteFile { dir, path, store }
    }
}

impl Drop for SqliteFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Shows warnings of the code under test in a failing test's output.
pub(crate) fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("warn")
        .with_test_writer()
        .try_init();
}
