//! The buffered intake (`fsm_sqlx::intake`) as specifications, one suite run on SQLite
//! and, when `FSM_POSTGRES_URL` / `FSM_MYSQL_URL` are set, on PostgreSQL and MySQL (a
//! schema or database of each test's own; skipped with a reason when unset, failing
//! when `CI` is set).

#[macro_use]
mod common;

/// The suite, on the fixture `$make` yields (`None`: skip).
macro_rules! intake_suite {
    ($make:expr) => {
        use std::collections::HashSet;
        use std::time::Duration;

        use fsm_core::testing::{Fixture, Note, Order, OrderData, OrderEvent, OrderState, Payment};
        use fsm_core::{Command, Error, IdempotencyKey, Store};
        use fsm_sqlx::intake::{Intake, IntakeReport, Status, Submitted};

        fn note(text: &str) -> Command<Order> {
            Command::new(OrderEvent::Annotate(Note(text.to_owned())))
        }

        fn key(k: &str) -> IdempotencyKey {
            IdempotencyKey::client(k)
        }

        /// Runs passes until nothing is pending; the sum of their reports.
        async fn drain<D: fsm_sqlx::Dialect>(intake: &Intake<D, Order>) -> IntakeReport {
            let worker = intake.worker();
            let mut total = IntakeReport::default();
            for _ in 0..1000 {
                let report = worker.run_once().await.expect("a worker pass");
                total.claimed += report.claimed;
                total.applied += report.applied;
                total.duplicate += report.duplicate;
                total.failed += report.failed;
                total.deferred += report.deferred;
                total.waiting += report.waiting;
                if report.claimed == 0 && intake.pending().await.unwrap() == 0 {
                    return total;
                }
            }
            panic!("the intake did not drain: {total:?}");
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn submit_returns_at_once_pending_and_the_worker_applies_it() {
            let Some(fixture) = ($make) else { return };
            let store = fixture.store();
            store.create::<Order>("o-1", OrderData::default()).await.unwrap();
            let intake = store.intake::<Order>();

            let submitted = intake.submit("o-1", note("a").with_key("k-1")).await.unwrap();
            assert!(submitted.is_new());
            let submission = submitted.submission();
            assert!(submission.status.is_pending(), "{submission:?}");
            assert_eq!((submission.id.as_str(), submission.key.as_str()), ("o-1", "k-1"));
            assert!(store.history::<Order>("o-1").await.unwrap().is_empty(), "not applied yet");
            assert_eq!(intake.pending().await.unwrap(), 1);

            let report = drain(&intake).await;
            assert_eq!((report.applied, report.failed), (1, 0));
            let history = store.history::<Order>("o-1").await.unwrap();
            assert_eq!(history.len(), 1);
            assert_eq!(history[0].key.as_deref(), Some("k-1"));
            let status = intake.status("o-1", &key("k-1")).await.unwrap().expect("recorded");
            match &status.status {
                Status::Applied(t) => assert_eq!((t.version, t.to), (1, OrderState::Created)),
                other => panic!("expected Applied, got {other:?}"),
            }
            assert_eq!(status.attempts, 1);
            assert!(status.settled_at_ms.is_some());
            assert!(intake.status("o-1", &key("never")).await.unwrap().is_none());
            fixture.cleanup().await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn resubmitting_a_recorded_key_returns_the_recorded_status() {
            let Some(fixture) = ($make) else { return };
            let store = fixture.store();
            store.create::<Order>("o-1", OrderData::default()).await.unwrap();
            let intake = store.intake::<Order>();
            let cancel = Command::<Order>::new(OrderEvent::Cancel).with_key("c-1");

            intake.submit("o-1", cancel.clone()).await.unwrap();
            let again = intake.submit("o-1", cancel.clone()).await.unwrap();
            assert!(matches!(&again, Submitted::Recorded(s) if s.status.is_pending()), "{again:?}");

            drain(&intake).await;
            let after = intake.submit("o-1", cancel).await.unwrap();
            assert!(!after.is_new());
            match &after.submission().status {
                Status::Applied(t) => assert_eq!(t.to, OrderState::Cancelled),
                other => panic!("expected Applied, got {other:?}"),
            }
            assert_eq!(store.history::<Order>("o-1").await.unwrap().len(), 1);
            assert_eq!(intake.pending().await.unwrap(), 0, "a resubmit records nothing");
            fixture.cleanup().await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn the_same_key_with_another_event_is_key_reused_and_another_instance_is_another_key() {
            let Some(fixture) = ($make) else { return };
            let store = fixture.store();
            let intake = store.intake::<Order>();
            intake.submit("o-1", note("a").with_key("k")).await.unwrap();

            let err = intake.submit("o-1", note("b").with_key("k")).await.unwrap_err();
            assert!(
                matches!(&err, Error::KeyReused { id, key, version: 0, .. } if id == "o-1" && key == "k"),
                "{err:?}"
            );
            // Keys are scoped to an instance, as for fire.
            assert!(intake.submit("o-2", note("b").with_key("k")).await.unwrap().is_new());
            fixture.cleanup().await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_keyless_command_an_oversized_key_and_a_bad_id_are_typed_errors() {
            let Some(fixture) = ($make) else { return };
            let store = fixture.store();
            let intake = store.intake::<Order>();
            let keyless = intake.submit("o-1", note("a")).await.unwrap_err();
            assert!(matches!(keyless, Error::InvalidKey { len: 0, .. }), "{keyless:?}");
            let long = "k".repeat(256);
            let oversized = intake.submit("o-1", note("a").with_key(long.clone())).await.unwrap_err();
            assert!(matches!(oversized, Error::InvalidKey { len: 256, .. }), "{oversized:?}");
            let bad_id = intake.submit("", note("a").with_key("k")).await.unwrap_err();
            assert!(matches!(bad_id, Error::InvalidId { .. }), "{bad_id:?}");
            assert!(matches!(
                intake.status("o-1", &key(&long)).await,
                Err(Error::InvalidKey { .. })
            ));
            assert_eq!(intake.pending().await.unwrap(), 0);
            fixture.cleanup().await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn each_instance_applies_its_submissions_in_order_across_batches() {
            let Some(fixture) = ($make) else { return };
            let store = fixture.store();
            for id in ["o-1", "o-2", "o-3"] {
                store.create::<Order>(id, OrderData::default()).await.unwrap();
            }
            // Small claims, so an instance's rows span several batches.
            let intake = store.intake::<Order>().with_options(fsm_sqlx::intake::IntakeOptions {
                claim_batch: 7,
                ..Default::default()
            });
            for n in 0..30 {
                for id in ["o-1", "o-2", "o-3"] {
                    let text = format!("{id}-{n:02}");
                    intake.submit(id, note(&text).with_key(text.clone())).await.unwrap();
                }
            }
            let report = drain(&intake).await;
            assert_eq!(report.applied, 90, "{report:?}");
            for id in ["o-1", "o-2", "o-3"] {
                let order = store.load::<Order>(id).await.unwrap();
                let expected: Vec<String> = (0..30).map(|n| format!("{id}-{n:02}")).collect();
                assert_eq!(order.context.notes, expected, "{id} applied out of order");
            }
            fixture.cleanup().await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_failed_command_is_recorded_with_its_typed_error_and_the_next_one_applies() {
            let Some(fixture) = ($make) else { return };
            let store = fixture.store();
            let total = OrderData { total_cents: 500, ..OrderData::default() };
            store.create::<Order>("o-1", total).await.unwrap();
            let intake = store.intake::<Order>();
            let wrong_amount = OrderEvent::Pay(Payment { amount_cents: 1 });
            intake.submit("o-1", Command::new(OrderEvent::Ship).with_key("ship")).await.unwrap();
            intake.submit("o-1", Command::new(wrong_amount).with_key("pay-1")).await.unwrap();
            intake.submit("o-9", Command::new(OrderEvent::Cancel).with_key("gone")).await.unwrap();
            intake.submit("o-1", note("after").with_key("note")).await.unwrap();

            let report = drain(&intake).await;
            assert_eq!((report.failed, report.applied), (3, 1), "{report:?}");
            let status = |k: &'static str, id: &'static str| {
                let intake = intake.clone();
                async move { intake.status(id, &key(k)).await.unwrap().expect("recorded").status }
            };
            let illegal = status("ship", "o-1").await;
            assert!(
                matches!(illegal.error(), Some(Error::IllegalTransition { state, event, .. }) if state == "Created" && event == "Ship"),
                "{illegal:?}"
            );
            let guarded = status("pay-1", "o-1").await;
            assert!(
                matches!(guarded.error(), Some(Error::GuardRejected { guards, .. }) if guards == &["amount_matches"]),
                "{guarded:?}"
            );
            let missing = status("gone", "o-9").await;
            assert!(matches!(missing.error(), Some(Error::NotFound { id, .. }) if id == "o-9"), "{missing:?}");
            assert!(matches!(status("note", "o-1").await, Status::Applied(_)));
            assert_eq!(store.history::<Order>("o-1").await.unwrap().len(), 1);
            fixture.cleanup().await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_poison_row_is_recorded_failed_and_does_not_stop_the_worker() {
            let Some(fixture) = ($make) else { return };
            let store = fixture.store();
            store.create::<Order>("o-1", OrderData::default()).await.unwrap();
            let intake = store.intake::<Order>();
            intake.submit("o-1", note("bad").with_key("bad")).await.unwrap();
            intake.submit("o-1", note("good").with_key("good")).await.unwrap();
            // An event no definition knows, as if written by another version.
            sqlx::query("UPDATE fsm_intake SET event = '{\"Teleport\":1}' WHERE idem_key = 'bad'")
                .execute(store.pool())
                .await
                .unwrap();

            let report = drain(&intake).await;
            assert_eq!((report.failed, report.applied), (1, 1), "{report:?}");
            let poison = intake.status("o-1", &key("bad")).await.unwrap().unwrap().status;
            assert!(
                matches!(poison.error(), Some(Error::Corrupt { table: "fsm_intake", .. })),
                "{poison:?}"
            );
            assert_eq!(store.load::<Order>("o-1").await.unwrap().context.notes, ["good"]);
            fixture.cleanup().await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_key_fired_directly_before_is_recorded_duplicate() {
            let Some(fixture) = ($make) else { return };
            let store = fixture.store();
            store.create::<Order>("o-1", OrderData::default()).await.unwrap();
            store.fire("o-1", note("a").with_key("k")).await.unwrap();
            let intake = store.intake::<Order>();
            intake.submit("o-1", note("a").with_key("k")).await.unwrap();

            let report = drain(&intake).await;
            assert_eq!(report.duplicate, 1, "{report:?}");
            let status = intake.status("o-1", &key("k")).await.unwrap().unwrap().status;
            assert!(matches!(&status, Status::Duplicate(t) if t.version == 1), "{status:?}");
            assert_eq!(store.history::<Order>("o-1").await.unwrap().len(), 1);
            fixture.cleanup().await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_worker_killed_after_its_fire_committed_leaves_it_applied_once() {
            let Some(fixture) = ($make) else { return };
            let store = fixture.store();
            store.create::<Order>("o-1", OrderData::default()).await.unwrap();
            let intake = store.intake::<Order>();
            intake.submit("o-1", note("a").with_key("k")).await.unwrap();
            // The crash window by hand: a worker claimed the row and its fire committed,
            // then it died before recording the outcome; its lease has expired.
            store.fire("o-1", note("a").with_key("k")).await.unwrap();
            sqlx::query("UPDATE fsm_intake SET attempts = 1, claims = 1, lease_until = 0")
                .execute(store.pool())
                .await
                .unwrap();

            let report = drain(&intake).await;
            assert_eq!((report.applied, report.duplicate), (1, 0), "{report:?}");
            let status = intake.status("o-1", &key("k")).await.unwrap().unwrap();
            assert!(matches!(&status.status, Status::Applied(t) if t.version == 1), "{status:?}");
            assert_eq!(status.attempts, 2);
            assert_eq!(store.history::<Order>("o-1").await.unwrap().len(), 1);
            fixture.cleanup().await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_transient_failure_is_never_recorded_and_the_command_applies_later() {
            let Some(fixture) = ($make) else { return };
            let store = fixture.store();
            store.create::<Order>("o-1", OrderData::default()).await.unwrap();
            let intake = store.intake::<Order>().with_options(fsm_sqlx::intake::IntakeOptions {
                retry_delay: Duration::from_millis(50),
                ..Default::default()
            });
            intake.submit("o-1", note("a").with_key("k-1")).await.unwrap();
            intake.submit("o-1", note("b").with_key("k-2")).await.unwrap();
            // The database fails every fire (as when it restarts): a backend error.
            sqlx::query("ALTER TABLE fsm_machines RENAME TO fsm_machines_away")
                .execute(store.pool())
                .await
                .unwrap();
            let report = intake.worker().run_once().await.unwrap();
            sqlx::query("ALTER TABLE fsm_machines_away RENAME TO fsm_machines")
                .execute(store.pool())
                .await
                .unwrap();
            assert_eq!((report.deferred, report.failed, report.applied), (2, 0, 0), "{report:?}");
            for k in ["k-1", "k-2"] {
                let status = intake.status("o-1", &key(k)).await.unwrap().unwrap();
                assert!(status.status.is_pending(), "{k}: {status:?}");
            }

            tokio::time::sleep(Duration::from_millis(60)).await;
            let report = drain(&intake).await;
            assert_eq!(report.applied, 2, "{report:?}");
            assert_eq!(store.load::<Order>("o-1").await.unwrap().context.notes, ["a", "b"]);
            fixture.cleanup().await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn pruning_forgets_settled_submissions_and_a_resubmit_then_applies_nothing_twice() {
            let Some(fixture) = ($make) else { return };
            let store = fixture.store();
            store.create::<Order>("o-1", OrderData::default()).await.unwrap();
            let intake = store.intake::<Order>();
            intake.submit("o-1", note("a").with_key("k-1")).await.unwrap();
            drain(&intake).await;
            intake.submit("o-1", note("b").with_key("k-2")).await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;

            let pruned = intake.prune_settled(Duration::ZERO, 100).await.unwrap();
            assert_eq!(pruned, 1, "the settled row only, never a pending one");
            assert!(intake.status("o-1", &key("k-1")).await.unwrap().is_none());
            assert!(intake.status("o-1", &key("k-2")).await.unwrap().unwrap().status.is_pending());

            assert!(intake.submit("o-1", note("a").with_key("k-1")).await.unwrap().is_new());
            let report = drain(&intake).await;
            assert_eq!((report.applied, report.duplicate), (1, 1), "{report:?}");
            let status = intake.status("o-1", &key("k-1")).await.unwrap().unwrap().status;
            assert!(matches!(&status, Status::Duplicate(t) if t.version == 1), "{status:?}");
            assert_eq!(store.load::<Order>("o-1").await.unwrap().context.notes, ["a", "b"]);
            fixture.cleanup().await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn two_workers_racing_apply_each_submission_once_and_in_order() {
            let Some(fixture) = ($make) else { return };
            let store = fixture.store();
            let ids: Vec<String> = (0..8).map(|i| format!("o-{i}")).collect();
            for id in &ids {
                store.create::<Order>(id, OrderData::default()).await.unwrap();
            }
            let intake = store.intake::<Order>().with_options(fsm_sqlx::intake::IntakeOptions {
                claim_batch: 16,
                ..Default::default()
            });
            let shutdown = tokio_util::sync::CancellationToken::new();
            let workers: Vec<_> = (0..2)
                .map(|_| tokio::spawn(intake.worker().run(shutdown.clone())))
                .collect();
            for n in 0..25 {
                for id in &ids {
                    let text = format!("{id}-{n:02}");
                    intake.submit(id, note(&text).with_key(text.clone())).await.unwrap();
                }
            }
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while intake.pending().await.unwrap() > 0 {
                assert!(std::time::Instant::now() < deadline, "not drained");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            shutdown.cancel();
            for worker in workers {
                worker.await.unwrap().unwrap();
            }
            for id in &ids {
                let history = store.history::<Order>(id).await.unwrap();
                assert_eq!(history.len(), 25, "{id}: each submission applied once");
                let keys: HashSet<_> = history.iter().map(|t| t.key.clone()).collect();
                assert_eq!(keys.len(), 25);
                let expected: Vec<String> = (0..25).map(|n| format!("{id}-{n:02}")).collect();
                assert_eq!(store.load::<Order>(id).await.unwrap().context.notes, expected);
                for n in 0..25 {
                    let k = format!("{id}-{n:02}");
                    let status = intake.status(id, &key(&k)).await.unwrap().unwrap().status;
                    assert!(matches!(status, Status::Applied(_)), "{k}: {status:?}");
                }
            }
            fixture.cleanup().await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn concurrent_submits_are_batched_each_caller_getting_its_own_answer() {
            let Some(fixture) = ($make) else { return };
            let store = fixture.store();
            let intake = store.intake::<Order>();
            let mut tasks = Vec::new();
            for n in 0..200u32 {
                let intake = intake.clone();
                tasks.push(tokio::spawn(async move {
                    // Every 10th key is submitted by two callers at once.
                    let base = if n % 10 == 1 { n - 1 } else { n };
                    let (k, id) = (format!("k-{base}"), format!("o-{}", base % 7));
                    (k.clone(), intake.submit(&id, note(&k).with_key(k.clone())).await)
                }));
            }
            // Callers that give up midway change nobody else's answer.
            let mut kept = Vec::new();
            for n in 0..50u32 {
                let intake = intake.clone();
                let task = tokio::spawn(async move {
                    intake.submit("o-x", note("x").with_key(format!("dropped-{n}"))).await
                });
                if n % 2 == 0 {
                    task.abort();
                } else {
                    kept.push(task);
                }
            }
            for task in kept {
                assert!(task.await.unwrap().unwrap().is_new());
            }
            let mut new = 0;
            for task in tasks {
                let (k, submitted) = task.await.unwrap();
                let submitted = submitted.unwrap_or_else(|e| panic!("{k}: {e}"));
                assert_eq!(submitted.submission().key, k);
                new += usize::from(submitted.is_new());
            }
            assert_eq!(new, 180, "one new submission per distinct key");
            let pending = intake.pending().await.unwrap();
            assert!((180 + 25..=180 + 50).contains(&pending), "{pending}");
            fixture.cleanup().await;
        }
    };
}

#[cfg(feature = "sqlite")]
mod sqlite {
    intake_suite!(Some(crate::common::sqlite::SqliteFile::new().await));
}

#[cfg(feature = "postgres")]
mod postgres {
    intake_suite!(match crate::common::server_url("FSM_POSTGRES_URL") {
        Some(url) =>
            Some(crate::common::pg::PgSchema::new(url, fsm_sqlx::Concurrency::default()).await),
        None => None,
    });
}

#[cfg(feature = "mysql")]
mod mysql {
    intake_suite!(match crate::common::server_url("FSM_MYSQL_URL") {
        Some(url) => Some(
            crate::common::mysql::MySqlDatabase::new(url, fsm_sqlx::Concurrency::default()).await
        ),
        None => None,
    });
}
