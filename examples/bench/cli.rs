//! What to measure: the command line, its defaults and the usage text, parsed into a
//! [`Config`] that every run reads. Measures nothing itself.

/// What `--help` prints, and what a bad command line is answered with.
pub(crate) const USAGE: &str = "\
usage: bench --backend sqlite|postgres|mysql [options]

  --backend B        sqlite, postgres or mysql (required)
  --clients LIST     comma-separated client counts             [1,8,32]
  --seconds N        measured seconds per run                  [5]
  --warmup N         warm-up seconds per run                   [1]
  --url URL          server URL; default FSM_POSTGRES_URL / FSM_MYSQL_URL, else
                     postgres://postgres@127.0.0.1:5432/test, mysql://root@127.0.0.1:3306/test
                     (sqlite: a temporary file, --url ignored)
  --instances N      instances seeded per run, split between clients  [4096]
  --pool N           connections per pool              [8, as the stores' connect/open]
  --ping             pools ping on every acquire (sqlx's default `test_before_acquire`)
                     instead of the stores' `pool_options` (a ping only after 1 s idle)
  --rounds N         fsm/baseline pairs per client count, order alternating;
                     the median of each side is reported       [1]
  --hot-clients N    clients of the hot-row run                [32]
  --pessimistic      uncontended fsm runs use Concurrency::Pessimistic (the baseline
                     keeps the optimistic statements: an experiment, not a pair)
  --one-checkout     the baseline reads and writes on one pool checkout instead of
                     the store's two (an experiment: one acquire and release less)
  --only fsm|baseline  uncontended runs of one side only, no table (for `perf stat`)
  --no-hot           skip the hot-row runs
  --hot-only         only the hot-row runs
  --dispatch         also time the outbox dispatcher draining N effects with 1 and 4
                     workers (no-op handler)
  --dispatch-only    only the dispatcher runs
  --dispatch-effects N  effects written (through fsm) before each drain  [8000]
  --latency-only     only the dispatcher latency run: effects committed at --rate per
                     second for --seconds while Dispatcher::run hands them over
  --rate N           effects per second of the latency run     [1000]
  --remote-dispatcher  the latency run's dispatcher uses a second store over a pool
                     of its own on the same database, as another process would: no
                     in-process wake-up reaches it (PostgreSQL: LISTEN/NOTIFY does)
  --limit            fsm against what the database itself does with the same
                     statements, interleaved per client count: PostgreSQL: pgbench
                     (when on PATH) on benches/pgbench/fire.sql; SQLite: C SQLite
                     (rusqlite, bundled) on one connection; then fsm, same seconds
  --grouped          every fsm store uses group commit (with --limit, say); by
                     default a store does as its dialect does (SQLite and PostgreSQL
                     group, MySQL fires alone)
  --alone            every fsm store fires alone (without_group_commit)
  --group-commit     fsm without, then with, group commit (GroupCommit::new()) per
                     client count, same seconds: throughput, p99, batch sizes
  --intake-only      only the buffered intake: per client count, direct fires, then
                     Intake::submit of as many keyed commands (no worker running), then
                     2 IntakeWorkers draining the backlog for at most --seconds";

/// The backend a bench runs on (`--backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Sqlite,
    Postgres,
    Mysql,
}

impl Kind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Sqlite => "sqlite",
            Kind::Postgres => "postgres",
            Kind::Mysql => "mysql",
        }
    }
}

/// Which side of a pair a run measures: fsm's store, or the hand-written baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Fsm,
    Baseline,
}

/// What the command line asks for.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) kind: Kind,
    pub(crate) clients: Vec<usize>,
    pub(crate) seconds: f64,
    pub(crate) warmup: f64,
    pub(crate) url: Option<String>,
    pub(crate) instances: usize,
    pub(crate) pool: Option<u32>,
    pub(crate) ping: bool,
    pub(crate) pessimistic: bool,
    pub(crate) only: Option<Side>,
    pub(crate) one_checkout: bool,
    pub(crate) rounds: usize,
    pub(crate) hot_clients: usize,
    pub(crate) pairs: bool,
    pub(crate) hot: bool,
    pub(crate) dispatch: bool,
    pub(crate) dispatch_effects: usize,
    pub(crate) latency: bool,
    pub(crate) rate: u32,
    pub(crate) remote_dispatcher: bool,
    pub(crate) limit: bool,
    /// The run being measured uses group commit (set per run by `--group-commit`).
    pub(crate) grouped: Option<bool>,
    pub(crate) group_commit: bool,
    pub(crate) intake: bool,
}

impl Config {
    /// The server a run connects to: `--url`, else the environment variable `var`, else
    /// `default`.
    #[cfg(any(feature = "postgres", feature = "mysql"))]
    pub(crate) fn server_url(&self, var: &str, default: &str) -> String {
        self.url
            .clone()
            .or_else(|| std::env::var(var).ok())
            .unwrap_or_else(|| default.to_owned())
    }
}

/// The flags in `args` (the program name left out); `Err` with an empty message for
/// `--help`.
pub(crate) fn parse_args(args: &[String]) -> Result<Config, String> {
    let mut cfg = Config {
        kind: Kind::Sqlite,
        clients: vec![1, 8, 32],
        seconds: 5.0,
        warmup: 1.0,
        url: None,
        instances: 4096,
        pool: None,
        ping: false,
        pessimistic: false,
        only: None,
        one_checkout: false,
        rounds: 1,
        hot_clients: 32,
        pairs: true,
        hot: true,
        dispatch: false,
        dispatch_effects: 8000,
        latency: false,
        rate: 1000,
        remote_dispatcher: false,
        limit: false,
        grouped: None,
        group_commit: false,
        intake: false,
    };
    let mut kind = None;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--backend" => {
                kind = Some(match value()?.as_str() {
                    "sqlite" => Kind::Sqlite,
                    "postgres" | "postgresql" | "pg" => Kind::Postgres,
                    "mysql" | "mariadb" => Kind::Mysql,
                    other => return Err(format!("unknown backend {other:?}")),
                })
            }
            "--clients" => {
                cfg.clients = value()?
                    .split(',')
                    .map(|c| positive::<usize>("--clients", c))
                    .collect::<Result<_, _>>()?;
            }
            "--seconds" => cfg.seconds = positive_f64("--seconds", &value()?)?,
            "--warmup" => {
                let v = value()?;
                cfg.warmup = v
                    .parse::<f64>()
                    .ok()
                    .filter(|w| *w >= 0.0 && w.is_finite())
                    .ok_or_else(|| format!("--warmup: {v:?} is not a number >= 0"))?;
            }
            "--url" => cfg.url = Some(value()?),
            "--instances" => cfg.instances = positive("--instances", &value()?)?,
            "--pool" => cfg.pool = Some(positive("--pool", &value()?)?),
            "--ping" => cfg.ping = true,
            "--pessimistic" => cfg.pessimistic = true,
            "--one-checkout" => cfg.one_checkout = true,
            "--only" => {
                cfg.only = Some(match value()?.as_str() {
                    "fsm" => Side::Fsm,
                    "baseline" => Side::Baseline,
                    other => return Err(format!("--only: {other:?} is neither fsm nor baseline")),
                })
            }
            "--rounds" => cfg.rounds = positive("--rounds", &value()?)?,
            "--hot-clients" => cfg.hot_clients = positive("--hot-clients", &value()?)?,
            "--no-hot" => cfg.hot = false,
            "--hot-only" => cfg.pairs = false,
            "--dispatch" => cfg.dispatch = true,
            "--dispatch-only" => {
                cfg.dispatch = true;
                cfg.pairs = false;
                cfg.hot = false;
            }
            "--dispatch-effects" => {
                cfg.dispatch_effects = positive("--dispatch-effects", &value()?)?
            }
            "--latency-only" => {
                cfg.latency = true;
                cfg.pairs = false;
                cfg.hot = false;
            }
            "--rate" => cfg.rate = positive("--rate", &value()?)?,
            "--remote-dispatcher" => cfg.remote_dispatcher = true,
            "--grouped" => cfg.grouped = Some(true),
            "--alone" => cfg.grouped = Some(false),
            "--group-commit" => {
                cfg.group_commit = true;
                cfg.pairs = false;
                cfg.hot = false;
            }
            "--limit" => {
                cfg.limit = true;
                cfg.pairs = false;
                cfg.hot = false;
            }
            "--intake-only" => {
                cfg.intake = true;
                cfg.pairs = false;
                cfg.hot = false;
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    cfg.kind = kind.ok_or("--backend is required")?;
    if !cfg.pairs
        && !cfg.hot
        && !cfg.dispatch
        && !cfg.latency
        && !cfg.limit
        && !cfg.group_commit
        && !cfg.intake
    {
        return Err("--no-hot and --hot-only leave nothing to run".into());
    }
    Ok(cfg)
}

fn positive<T: std::str::FromStr + PartialOrd + Default>(flag: &str, v: &str) -> Result<T, String> {
    v.trim()
        .parse::<T>()
        .ok()
        .filter(|n| *n > T::default())
        .ok_or_else(|| format!("{flag}: {v:?} is not a positive integer"))
}

fn positive_f64(flag: &str, v: &str) -> Result<f64, String> {
    v.parse::<f64>()
        .ok()
        .filter(|n| *n > 0.0 && n.is_finite())
        .ok_or_else(|| format!("{flag}: {v:?} is not a positive number"))
}
