//! The `fsm` command, run as built, on the repository's examples and UI cases.

use std::path::Path;
use std::process::{Command, Output};

// The example Order, compiled: its `DEFINITION` is what the command must render.
#[allow(dead_code)]
#[path = "../../examples/shared/order.rs"]
mod order;

fn repo(path: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
    path.to_str().expect("a UTF-8 path").to_owned()
}

fn fsm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fsm"))
        .args(args)
        .output()
        .expect("fsm runs")
}

fn empty_dir(name: &str) -> String {
    let dir = std::env::temp_dir().join(format!("fsm-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.to_str().expect("a UTF-8 path").to_owned()
}

/// `path:line:column: error: message` lines of a `fsm check`'s stderr.
fn errors(output: &Output) -> Vec<(String, usize, usize, String)> {
    String::from_utf8_lossy(&output.stderr)
        .lines()
        .filter_map(|line| {
            let (place, message) = line.split_once(": error: ")?;
            let mut parts = place.rsplitn(3, ':');
            let column = parts.next()?.parse().ok()?;
            let line = parts.next()?.parse().ok()?;
            Some((parts.next()?.to_owned(), line, column, message.to_owned()))
        })
        .collect()
}

#[test]
fn diagram_writes_what_the_runtime_renders_from_the_compiled_definition() {
    let out = empty_dir("order");
    let source = repo("examples/shared/order.rs");
    let output = fsm(&["diagram", &source, "-o", &out]);
    assert!(output.status.success(), "{output:?}");
    let definition = order::Order::DEFINITION;
    let expected = [
        ("Order.mmd", fsm::diagram::mermaid(definition)),
        ("Order.dot", fsm::diagram::dot(definition)),
        ("Order.svg", fsm::diagram::svg(definition)),
    ];
    let stdout = String::from_utf8_lossy(&output.stdout);
    for (file, rendered) in expected {
        let path = Path::new(&out).join(file);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), rendered, "{file}");
        assert!(
            stdout.contains(&format!("wrote {}", path.display())),
            "{stdout}"
        );
    }
}

#[test]
fn diagram_with_a_format_writes_only_that_file() {
    let out = empty_dir("format");
    let source = repo("examples/shared/order.rs");
    let output = fsm(&[
        "diagram",
        "--format",
        "mermaid",
        "--machine",
        "Order",
        "-o",
        &out,
        &source,
    ]);
    assert!(output.status.success(), "{output:?}");
    let written: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(written, ["Order.mmd"]);
}

#[test]
fn diagram_of_composite_states_draws_each_parent_as_a_block() {
    let out = empty_dir("composite");
    let source = repo("tests/ui/pass/composite-states.rs");
    let output = fsm(&["diagram", "--format", "mermaid", "-o", &out, &source]);
    assert!(output.status.success(), "{output:?}");
    let mermaid = std::fs::read_to_string(Path::new(&out).join("Order.mmd")).unwrap();
    assert!(
        mermaid.contains("    state Active {\n        [*] --> Paid\n        Paid\n"),
        "{mermaid}"
    );
    assert!(mermaid.contains("        state Shipping {\n"), "{mermaid}");
    assert!(
        mermaid.contains("    Created --> Active : Pay\n"),
        "{mermaid}"
    );
    assert!(
        mermaid.contains("    Active --> Cancelled : Cancel\n"),
        "{mermaid}"
    );
}

#[test]
fn diagram_of_an_unknown_machine_fails() {
    let out = empty_dir("unknown");
    let source = repo("examples/shared/order.rs");
    let output = fsm(&["diagram", &source, "--machine", "Nope", "-o", &out]);
    assert!(!output.status.success());
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0);
}

#[test]
fn check_of_the_examples_is_ok() {
    let source = repo("examples/shared/order.rs");
    let output = fsm(&["check", &source]);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "ok: 1 machines\n");
}

#[test]
fn check_of_a_broken_machine_prints_the_macros_error_at_its_token() {
    let source = repo("tests/ui/fail/duplicate-edge.rs");
    let output = fsm(&["check", &source]);
    assert_eq!(output.status.code(), Some(1));
    let errors = errors(&output);
    let message = "duplicate edge: `Open + Close => Closed` is already declared; remove this one";
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].0, source);
    assert_eq!((errors[0].1, errors[0].2), (5, 16));
    assert_eq!(errors[0].3, message);
}

#[test]
fn check_reports_every_error_the_ui_snapshots_show_at_the_same_place() {
    let mut checked = 0;
    for entry in std::fs::read_dir(repo("tests/ui/fail")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let stderr = std::fs::read_to_string(path.with_extension("stderr")).unwrap();
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let checked_file = fsm(&["check", path.to_str().unwrap()]);
        for (_, line, column, message) in errors(&checked_file) {
            let at = format!("--> tests/ui/fail/{file}:{line}:{column}\n");
            let reported = stderr
                .split("error: ")
                .any(|e| e.starts_with(&format!("{message}\n")) && e.contains(&at));
            assert!(
                reported,
                "{file}: `{message}` at {line}:{column} not in the snapshot"
            );
            checked += 1;
        }
    }
    assert!(checked > 20, "only {checked} errors compared");
}
