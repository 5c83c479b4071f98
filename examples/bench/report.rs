//! The tables printed at the end (markdown, on stdout): the machine and the load it ran
//! under, the run's settings, the fsm-vs-baseline table, the hot-row table and the
//! dispatcher table; and the units they print in.

use std::time::Duration;

use crate::cli::{Config, Kind};
use crate::dispatch::DispatchRow;
use crate::group::GroupRow;
use crate::hot_row::{HotMode, HotRow};
use crate::latency::LatencyRow;
use crate::limit::{LimitRow, limit_name};
use crate::throughput::PairRow;

/// `nproc` and the CPU model (Linux).
fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    format!("{cpus} CPUs, {model}")
}

/// Milliseconds, as the tables print latencies.
pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Microseconds, as the tables print CPU time per fire; NaN when not measured.
pub(crate) fn us(d: Option<Duration>) -> f64 {
    d.map_or(f64::NAN, |d| d.as_secs_f64() * 1e6)
}

/// The `--group-commit` table.
pub(crate) fn report_grouped(cfg: &Config, rows: &[GroupRow]) {
    println!(
        "\n## {}: fsm `fire` alone and with group commit ({} s each, interleaved; {})\n",
        cfg.kind.name(),
        cfg.seconds,
        machine()
    );
    println!(
        "| clients | alone tx/s | alone p99 ms | grouped tx/s | grouped p99 ms | grouped / alone | batches | mean batch | p50 batch | max batch | load |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for row in rows {
        let (n, mean, p50, max) = row.batches;
        println!(
            "| {} | {:.0} | {:.1} | {:.0} | {:.1} | {:.2} | {n} | {mean:.1} | {p50:.0} | {max:.0} | {} |",
            row.clients,
            row.alone.tps,
            ms(row.alone.p99),
            row.grouped.tps,
            ms(row.grouped.p99),
            row.grouped.tps / row.alone.tps,
            row.grouped.load.map_or("-".into(), |l| format!("{l:.1}"))
        );
    }
}

/// The `--limit` table: fsm against the database's own client on the same statements.
pub(crate) fn report_limits(cfg: &Config, rows: &[LimitRow]) {
    println!(
        "\n## {}: fsm `fire`{} against {} on the same statements ({} s each, interleaved; {})\n",
        cfg.kind.name(),
        match cfg.grouped {
            Some(true) => " with group commit",
            Some(false) => " alone (without group commit)",
            None => " with the store's defaults",
        },
        limit_name(cfg.kind),
        cfg.seconds,
        machine()
    );
    println!(
        "| clients | limit tx/s | fsm tx/s | fsm / limit | fsm p50 ms | fsm p99 ms | fsm CPU us/fire | load |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for row in rows {
        let limit = row.limit.map_or("-".into(), |l| format!("{l:.0}"));
        let ratio = row
            .limit
            .map_or("-".into(), |l| format!("{:.2}", row.fsm.tps / l));
        println!(
            "| {} | {limit} | {:.0} | {ratio} | {:.3} | {:.3} | {:.0} | {} |",
            row.clients,
            row.fsm.tps,
            ms(row.fsm.p50),
            ms(row.fsm.p99),
            us(row.fsm.cpu_per_fire),
            row.load.map_or("-".into(), |l| format!("{l:.1}"))
        );
    }
}

/// The dispatcher table.
pub(crate) fn report_dispatch(cfg: &Config, rows: &[DispatchRow]) {
    println!(
        "\n## {}: outbox dispatcher (no-op handler, batch 32)\n",
        cfg.kind.name()
    );
    println!("| workers | effects | handled | seconds | effects/s | load |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for row in rows {
        println!(
            "| {} | {} | {} | {:.2} | {:.0} | {} |",
            row.workers,
            row.effects,
            row.handled,
            row.elapsed.as_secs_f64(),
            row.effects as f64 / row.elapsed.as_secs_f64(),
            row.load.map_or("-".into(), |l| format!("{l:.1}"))
        );
    }
}

/// The latency table: from commit to handler start, lower and upper bounds.
pub(crate) fn report_latency(cfg: &Config, rows: &[LatencyRow]) {
    println!(
        "\n## {}: commit to handler start, Dispatcher::run with default options on {} ({} s)\n",
        cfg.kind.name(),
        match cfg.remote_dispatcher {
            true => "a second store over a pool of its own",
            false => "the firing store",
        },
        cfg.seconds
    );
    println!(
        "| effects/s | effects | p50 after commit, ms | p99 | max | p50 from fire start, ms | p99 | max | load |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let ms = |d: Duration| format!("{:.2}", d.as_secs_f64() * 1e3);
    for row in rows {
        let [a50, a99, amax] = row.after_commit;
        let [f50, f99, fmax] = row.from_fire;
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            row.rate,
            row.effects,
            ms(a50),
            ms(a99),
            ms(amax),
            ms(f50),
            ms(f99),
            ms(fmax),
            row.load.map_or("-".into(), |l| format!("{l:.1}"))
        );
    }
}

/// The machine line, the settings, the fsm-vs-baseline table and the hot-row table.
pub(crate) fn report(cfg: &Config, pairs: &[PairRow], hot: &[HotRow]) {
    if pairs.is_empty() && hot.is_empty() {
        return;
    }
    let name = cfg.kind.name();
    let loads: Vec<f64> = pairs
        .iter()
        .flat_map(|p| p.loads.iter().copied())
        .chain(hot.iter().filter_map(|h| h.stats.load))
        .collect();
    let (low, high) = loads
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), x| {
            (l.min(*x), h.max(*x))
        });
    println!(
        "\nMachine: {}; 1-minute load average at the end of the runs: {low:.1} to {high:.1}",
        machine()
    );
    println!(
        "\n### {name}: {} s measured after {} s warm-up, {} instances, pool {}{}, {} round(s)\n",
        cfg.seconds,
        cfg.warmup,
        cfg.instances,
        match (cfg.kind, cfg.pool) {
            (Kind::Sqlite, None) if !cfg.ping => "8 (SqliteStore::open)".to_owned(),
            (_, pool) => pool.unwrap_or(8).to_string(),
        },
        [
            (cfg.ping, " with sqlx's ping on every acquire"),
            (cfg.pessimistic, "; fsm side PESSIMISTIC (experiment)"),
            (
                cfg.one_checkout,
                "; baseline on ONE checkout per fire (experiment)"
            ),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, note)| *note)
        .collect::<String>(),
        cfg.rounds
    );
    if !pairs.is_empty() {
        println!(
            "| clients | fsm tx/s | fsm p50 ms | fsm p99 ms | baseline tx/s | baseline p50 ms | baseline p99 ms | fsm/baseline | goal >= 0.8 | bench-process CPU us/fire, fsm / baseline |"
        );
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|:---:|---:|");
        for row in pairs {
            let ratio = row.fsm.tps / row.baseline.tps;
            let rounds = if row.ratios.len() > 1 {
                let each: Vec<String> = row.ratios.iter().map(|r| format!("{r:.2}")).collect();
                format!(" ({})", each.join(", "))
            } else {
                String::new()
            };
            println!(
                "| {} | {:.0} | {:.3} | {:.3} | {:.0} | {:.3} | {:.3} | {ratio:.2}{rounds} | {} | {:.0} / {:.0} |",
                row.clients,
                row.fsm.tps,
                ms(row.fsm.p50),
                ms(row.fsm.p99),
                row.baseline.tps,
                ms(row.baseline.p50),
                ms(row.baseline.p99),
                if ratio >= 0.8 { "yes" } else { "**no**" },
                us(row.fsm.cpu_per_fire),
                us(row.baseline.cpu_per_fire)
            );
        }
    }
    if !hot.is_empty() {
        println!(
            "\n| hot row ({name}) | clients | tx/s | p50 ms | p99 ms | applied | gave up | CAS retries | retries per applied | lost updates | history gapless | final context bytes |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|---:|");
        for row in hot {
            let (retries, per) = match row.retries {
                Some(r) => (
                    r.to_string(),
                    format!("{:.2}", r as f64 / row.applied.max(1) as f64),
                ),
                None => ("(not observable)".to_owned(), "-".to_owned()),
            };
            println!(
                "| {} | {} | {:.0} | {:.3} | {:.3} | {} | {} | {retries} | {per} | {} | {} | {} |",
                match row.mode {
                    HotMode::StorePolicy => "store retries (default policy)",
                    HotMode::Counted => "client retries (NONE + default policy), counted",
                    HotMode::Pessimistic => "pessimistic (row lock, default policy)",
                },
                row.clients,
                row.stats.tps,
                ms(row.stats.p50),
                ms(row.stats.p99),
                row.applied,
                row.gave_up,
                row.lost,
                if row.gapless { "yes" } else { "**no**" },
                row.context_bytes
            );
            debug_assert!(row.final_version as i64 + row.lost == row.applied as i64);
        }
    }
}
