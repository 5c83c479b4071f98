//! The HTML of every page. maud escapes each `(value)` it splices, so ids, contexts,
//! keys, payloads and errors render as text; the diagram is the one markup spliced as
//! is, and it is drawn from the definition with escaped captions and links.

use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use fsm_core::diagram::{StateMark, svg_marked};
use fsm_core::{Definition, Error, format_duration};
use maud::{DOCTYPE, Markup, PreEscaped, html};

use crate::machine::{Dead, Instance, List, ListFilter, Overview};
use crate::time::utc;

/// The console's stylesheet, served at `style.css`.
pub(crate) const STYLE: &str = include_str!("style.css");

/// Rows a history or dead-letter table shows at most (the newest history, the oldest
/// dead letters); a note says how many more there are.
pub(crate) const MAX_ROWS: usize = 1_000;

/// Fill of a state where an instance is stuck.
const STUCK_FILL: u32 = 0xffd8a8;

fn layout(base: &str, title: &str, machine: Option<&str>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · fsm console" }
                link rel="stylesheet" href={ (base) "/style.css" };
            }
            body {
                header {
                    a.brand href={ (base) "/" } { "fsm console" }
                    @if let Some(machine) = machine {
                        nav {
                            a href={ (base) "/m/" (machine) } { (machine) }
                            a href={ (base) "/m/" (machine) "/instances" } { "Instances" }
                            a href={ (base) "/m/" (machine) "/dead" } { "Dead letters" }
                        }
                    }
                }
                main { h1 { (title) } (body) }
            }
        }
    }
}

/// An error page with `status`.
pub(crate) fn problem(status: StatusCode, title: &str, detail: &str) -> Response {
    let page = layout("", title, None, html! { p.error { (detail) } });
    (status, page).into_response()
}

/// The page for a store error: a bad request for an invalid query or id, 404 for an
/// unknown instance, 500 otherwise (logged).
pub(crate) fn store_error(err: &Error) -> Response {
    let status = match err {
        Error::NotFound { .. } => StatusCode::NOT_FOUND,
        Error::InvalidQuery { .. } | Error::InvalidId { .. } => StatusCode::BAD_REQUEST,
        _ => {
            tracing::error!(error = %err, "console page failed");
            StatusCode::INTERNAL_SERVER_ERROR
        }
    };
    let title = status.canonical_reason().unwrap_or("Error");
    problem(status, title, &err.to_string())
}

fn list_href(base: &str, machine: &str, state: Option<&str>) -> String {
    let mut href = format!("{base}/m/{machine}/instances");
    if let Some(state) = state {
        href.push_str("?state=");
        href.push_str(&encode(state));
    }
    href
}

fn instance_href(base: &str, machine: &str, id: &str) -> String {
    format!("{base}/m/{machine}/instance?id={}", encode(id))
}

/// Percent-encodes a query-string value (every byte but unreserved ones).
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The machine types.
pub(crate) fn index(base: &str, machines: &[(&str, u64)]) -> Markup {
    layout(
        base,
        "Machines",
        None,
        html! {
            table {
                thead { tr { th { "Machine" } th.num { "Instances" } } }
                tbody {
                    @for (name, total) in machines {
                        tr {
                            td { a href={ (base) "/m/" (name) } { (name) } }
                            td.num { (total) }
                        }
                    }
                }
            }
        },
    )
}

/// One machine: the diagram with counts, and the counts as a table.
pub(crate) fn machine(
    base: &str,
    definition: &Definition,
    overview: &Overview,
    stuck_after: Duration,
) -> Markup {
    let machine = definition.name;
    let count = |name: &str| {
        overview
            .counts
            .iter()
            .find(|(state, _)| *state == name)
            .map_or(0, |(_, n)| *n)
    };
    let diagram = svg_marked(definition, |state| StateMark {
        caption: Some(count(state.name).to_string()),
        fill: overview.stuck.contains(state.name).then_some(STUCK_FILL),
        href: Some(list_href(base, machine, Some(state.name))),
    });
    // The SVG is a standalone document: drop its XML declaration to inline it.
    let diagram = diagram
        .find("<svg")
        .map_or(diagram.as_str(), |at| &diagram[at..]);
    layout(
        base,
        machine,
        Some(machine),
        html! {
            @if !definition.doc.is_empty() { p.doc { (definition.doc) } }
            figure.diagram { (PreEscaped(diagram)) }
            p.legend {
                span.swatch {} " an instance has been in this state for more than "
                (format_duration(stuck_after))
            }
            table {
                thead { tr { th { "State" } th.num { "Instances" } th { "" } } }
                tbody {
                    @for (state, n) in &overview.counts {
                        tr.stuck[overview.stuck.contains(state)] {
                            td { a href=(list_href(base, machine, Some(state))) { (state) } }
                            td.num { (n) }
                            td { @if overview.stuck.contains(state) { "stuck" } }
                        }
                    }
                }
            }
            @if !overview.unknown.is_empty() {
                h2 { "Stored states this definition does not know" }
                p { "These instances do not load; run " code { "verify" } " for details." }
                table {
                    tbody {
                        @for (name, n) in &overview.unknown {
                            tr { td { (name) } td.num { (n) } }
                        }
                    }
                }
            }
        },
    )
}

/// A page of instances, with the filter form and the link to the next page.
pub(crate) fn instances(
    base: &str,
    definition: &Definition,
    filter: &ListFilter,
    list: &List,
) -> Markup {
    let machine = definition.name;
    let title = match &filter.state {
        Some(state) => format!("{machine} in {state}"),
        None => format!("{machine} instances"),
    };
    let next = list.next.as_ref().map(|cursor| {
        let mut href = format!("{base}/m/{machine}/instances?after={}", encode(cursor));
        if let Some(state) = &filter.state {
            href.push_str(&format!("&state={}", encode(state)));
        }
        if let Some(prefix) = &filter.prefix {
            href.push_str(&format!("&prefix={}", encode(prefix)));
        }
        href
    });
    layout(
        base,
        &title,
        Some(machine),
        html! {
            form.filter method="get" action={ (base) "/m/" (machine) "/instances" } {
                label { "State "
                    select name="state" {
                        option value="" { "any" }
                        @for state in definition.states {
                            option value=(state.name)
                                selected[filter.state.as_deref() == Some(state.name)] { (state.name) }
                        }
                    }
                }
                label { " Id starts with "
                    input type="search" name="prefix" value=[filter.prefix.as_deref()];
                }
                " " button type="submit" { "Find" }
            }
            table.instances {
                thead { tr {
                    th { "Id" } th { "State" } th.num { "Version" }
                    th { "In state since" } th { "Updated" }
                } }
                tbody {
                    @for row in &list.rows {
                        tr {
                            td { a.id href=(instance_href(base, machine, &row.id)) { (row.id) } }
                            td { (row.state) }
                            td.num { (row.version) }
                            td { (utc(row.entered_at_ms)) }
                            td { (utc(row.updated_at_ms)) }
                        }
                    }
                }
            }
            @if list.rows.is_empty() { p { "No instance matches." } }
            @if !list.unreadable.is_empty() {
                h2 { "Rows this definition cannot read" }
                ul { @for (id, error) in &list.unreadable { li { code { (id) } ": " (error) } } }
            }
            @if let Some(next) = next { p { a.next href=(next) { "Next page →" } } }
        },
    )
}

/// One instance: its state, context, history, timers and effects.
pub(crate) fn instance(base: &str, definition: &Definition, view: &Instance) -> Markup {
    let machine = definition.name;
    layout(
        base,
        &format!("{machine} {}", view.id),
        Some(machine),
        html! {
            dl.facts {
                dt { "Id" } dd.id { (view.id) }
                dt { "State" } dd.state { a href=(list_href(base, machine, Some(view.state))) { (view.state) } }
                dt { "Version" } dd { (view.version) }
                @if let Some(times) = &view.times {
                    dt { "Created" } dd { (utc(times.created_at_ms)) }
                    dt { "In state since" } dd { (utc(times.entered_at_ms)) }
                    dt { "Updated" } dd { (utc(times.updated_at_ms)) }
                }
            }
            h2 { "Context" }
            pre.context { (view.context) }
            h2 { "History" }
            @if view.history.len() > MAX_ROWS {
                p.note { "The newest " (MAX_ROWS) " of " (view.history.len()) " transitions." }
            }
            @if view.history.is_empty() { p { "No transition yet." } } @else {
                table.history {
                    thead { tr {
                        th.num { "Version" } th { "At" } th { "From" } th { "Event" }
                        th { "Payload" } th { "To" } th { "Key" }
                    } }
                    tbody {
                        @for step in &view.history[view.history.len().saturating_sub(MAX_ROWS)..] {
                            tr {
                                td.num { (step.version) }
                                td { (utc(step.at_ms)) }
                                td { (step.from) }
                                td { (step.event) }
                                td { @if !step.payload.is_empty() { pre { (step.payload) } } }
                                td { (step.to) }
                                td { @if let Some(key) = &step.key { code { (key) } } }
                            }
                        }
                    }
                }
            }
            h2 { "Pending timers" }
            @if view.timers.is_empty() { p { "None." } } @else {
                table.timers {
                    thead { tr {
                        th { "Armed in" } th { "After" } th.num { "At version" } th { "Due" } th { "" }
                    } }
                    tbody {
                        @for timer in &view.timers {
                            @let live = timer.version == view.version;
                            tr.stale[!live] {
                                td { (timer.state) } td { (timer.after) }
                                td.num { (timer.version) } td { (utc(timer.due_at_ms)) }
                                td { @if live { "fires" } @else { "the instance moved on: a no-op when due" } }
                            }
                        }
                    }
                }
            }
            h2 { "Effects" }
            @if view.effects.is_empty() { p { "None." } } @else {
                table.effects {
                    thead { tr {
                        th { "Effect" } th { "Status" } th.num { "Attempts" } th { "Last error" } th { "Payload" }
                    } }
                    tbody {
                        @for effect in &view.effects {
                            tr class=(effect.status) {
                                td { code { (machine) "/" (view.id) "/" (effect.version) "/" (effect.seq) } }
                                td { (effect.status) }
                                td.num { (effect.attempts) }
                                td { @if let Some(error) = &effect.last_error { (error) } }
                                td { pre { (effect.effect) } }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// The dead letters; with `csrf`, each with its requeue and discard forms.
pub(crate) fn dead_letters(
    base: &str,
    definition: &Definition,
    dead: &[Dead],
    csrf: Option<&str>,
) -> Markup {
    let machine = definition.name;
    let form = |action: &str, letter: &Dead, csrf: &str| {
        html! {
            form.action method="post" action={ (base) "/m/" (machine) "/dead/" (action) } {
                input type="hidden" name="id" value=(letter.id);
                input type="hidden" name="version" value=(letter.version);
                input type="hidden" name="seq" value=(letter.seq);
                input type="hidden" name="csrf" value=(csrf);
                button type="submit" class=(action) { (action) }
            }
        }
    };
    layout(
        base,
        &format!("{machine} dead letters"),
        Some(machine),
        html! {
            @if dead.len() > MAX_ROWS {
                p.note { "The oldest " (MAX_ROWS) " of " (dead.len()) " dead letters." }
            }
            @if dead.is_empty() { p { "No dead letter." } } @else {
                table.dead {
                    thead { tr {
                        th { "Effect" } th { "Instance" } th.num { "Attempts" } th { "Last error" }
                        th { "Payload" } @if csrf.is_some() { th { "" } }
                    } }
                    tbody {
                        @for letter in dead.iter().take(MAX_ROWS) {
                            tr {
                                td { code { (machine) "/" (letter.id) "/" (letter.version) "/" (letter.seq) } }
                                td { a.id href=(instance_href(base, machine, &letter.id)) { (letter.id) } }
                                td.num { (letter.attempts) }
                                td { @if let Some(error) = &letter.last_error { (error) } }
                                td { pre { (letter.effect) } }
                                @if let Some(csrf) = csrf {
                                    td.actions { (form("requeue", letter, csrf)) (form("discard", letter, csrf)) }
                                }
                            }
                        }
                    }
                }
            }
            @if csrf.is_none() { p.note { "Read-only: the service has not enabled actions." } }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::encode;

    #[test]
    fn query_values_are_percent_encoded_byte_by_byte() {
        assert_eq!(encode("o-1_a.b~"), "o-1_a.b~");
        assert_eq!(encode("a b&c=d/<é>"), "a%20b%26c%3Dd%2F%3C%C3%A9%3E");
    }
}
