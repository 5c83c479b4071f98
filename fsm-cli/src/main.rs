//! `fsm`: the diagrams and the checks of `state_machine!` declarations, read from Rust
//! source with the macro's own parser and checks, without compiling the crate.
//!
//! ```text
//! fsm diagram <file.rs>... [--machine NAME] [--format mermaid|dot|svg] [-o DIR]
//! fsm check <file.rs>...
//! ```
#![forbid(unsafe_code)]

mod source;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use source::{Invocation, Located};

const USAGE: &str = "\
usage: fsm diagram <file.rs>... [--machine NAME] [--format mermaid|dot|svg] [-o DIR]
       fsm check <file.rs>...

diagram  writes NAME.mmd, NAME.dot and NAME.svg (or only --format) of every machine
         into DIR (default: the current directory)
check    prints every error state_machine! would report, as file:line:column";

/// A diagram file format: one of the runtime's renderers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Mermaid,
    Dot,
    Svg,
}

impl Format {
    const ALL: [Format; 3] = [Format::Mermaid, Format::Dot, Format::Svg];

    fn parse(name: &str) -> Option<Format> {
        Format::ALL.into_iter().find(|f| f.name() == name)
    }

    fn name(self) -> &'static str {
        match self {
            Format::Mermaid => "mermaid",
            Format::Dot => "dot",
            Format::Svg => "svg",
        }
    }

    fn extension(self) -> &'static str {
        match self {
            Format::Mermaid => "mmd",
            Format::Dot => "dot",
            Format::Svg => "svg",
        }
    }

    fn render(self, definition: &fsm_core::Definition) -> String {
        match self {
            Format::Mermaid => fsm_core::diagram::mermaid(definition),
            Format::Dot => fsm_core::diagram::dot(definition),
            Format::Svg => fsm_core::diagram::svg(definition),
        }
    }
}

/// What the command line asks for.
#[derive(Debug)]
enum Command {
    Diagram {
        files: Vec<PathBuf>,
        machine: Option<String>,
        formats: Vec<Format>,
        out: PathBuf,
    },
    Check {
        files: Vec<PathBuf>,
    },
    Help,
}

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Command, String> {
    let mut args = args.into_iter();
    let command = args.next().ok_or("no command")?;
    let mut files = Vec::new();
    let mut machine = None;
    let mut format = None;
    let mut out = None;
    while let Some(arg) = args.next() {
        let mut value = |flag: &str| args.next().ok_or(format!("{flag} needs a value"));
        match arg.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "--machine" if command == "diagram" => machine = Some(value("--machine")?),
            "--format" if command == "diagram" => {
                let name = value("--format")?;
                format = Some(
                    Format::parse(&name)
                        .ok_or(format!("unknown format `{name}`; use mermaid, dot or svg"))?,
                );
            }
            "-o" | "--out" if command == "diagram" => out = Some(PathBuf::from(value("-o")?)),
            flag if flag.starts_with('-') => return Err(format!("unknown option `{flag}`")),
            file => files.push(PathBuf::from(file)),
        }
    }
    if files.is_empty() && matches!(command.as_str(), "diagram" | "check") {
        return Err("no source file given".into());
    }
    match command.as_str() {
        "diagram" => Ok(Command::Diagram {
            files,
            machine,
            formats: format.map_or(Format::ALL.to_vec(), |f| vec![f]),
            out: out.unwrap_or_else(|| PathBuf::from(".")),
        }),
        "check" => Ok(Command::Check { files }),
        "-h" | "--help" | "help" => Ok(Command::Help),
        other => Err(format!("unknown command `{other}`")),
    }
}

fn main() -> ExitCode {
    match parse_args(std::env::args().skip(1)) {
        Ok(Command::Help) => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Ok(Command::Check { files }) => check(&files),
        Ok(Command::Diagram {
            files,
            machine,
            formats,
            out,
        }) => diagram(&files, machine.as_deref(), &formats, &out),
        Err(message) => {
            eprintln!("fsm: {message}\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

/// Every invocation of every file, with the errors of unreadable files.
fn read_all(files: &[PathBuf]) -> (Vec<Invocation>, Vec<Located>) {
    let mut invocations = Vec::new();
    let mut unreadable = Vec::new();
    for file in files {
        match source::invocations(file) {
            Ok(found) => invocations.extend(found),
            Err(error) => unreadable.push(error),
        }
    }
    (invocations, unreadable)
}

/// `fsm check`: every error of every machine, then `ok: N machines` if there is none.
fn check(files: &[PathBuf]) -> ExitCode {
    let (invocations, unreadable) = read_all(files);
    let errors: Vec<&Located> = unreadable
        .iter()
        .chain(invocations.iter().flat_map(|i| &i.errors))
        .collect();
    for error in &errors {
        eprintln!("{error}");
    }
    if errors.is_empty() {
        println!("ok: {} machines", invocations.len());
        ExitCode::SUCCESS
    } else {
        eprintln!("{} errors", errors.len());
        ExitCode::FAILURE
    }
}

/// `fsm diagram`: the files of every machine without errors (or only `--machine`).
fn diagram(files: &[PathBuf], only: Option<&str>, formats: &[Format], out: &Path) -> ExitCode {
    let (invocations, unreadable) = read_all(files);
    let mut failed = !unreadable.is_empty();
    for error in &unreadable {
        eprintln!("{error}");
    }
    let mut written = 0;
    for invocation in &invocations {
        let Some(machine) = &invocation.machine else {
            invocation.errors.iter().for_each(|e| eprintln!("{e}"));
            failed = true;
            continue;
        };
        let name = fsm_dsl::model::name(&machine.name);
        if only.is_some_and(|only| only != name) {
            continue;
        }
        if !invocation.errors.is_empty() {
            invocation.errors.iter().for_each(|e| eprintln!("{e}"));
            failed = true;
            continue;
        }
        let definition = machine.definition();
        for format in formats {
            let path = out.join(format!("{name}.{}", format.extension()));
            if let Err(e) = std::fs::write(&path, format.render(&definition)) {
                eprintln!("{}: error: cannot write: {e}", path.display());
                failed = true;
                continue;
            }
            println!("wrote {}", path.display());
            written += 1;
        }
    }
    if let (Some(only), 0) = (only, written) {
        eprintln!("fsm: no machine `{only}` without errors in the given files");
        failed = true;
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Result<Command, String> {
        parse_args(line.split_whitespace().map(String::from))
    }

    #[test]
    fn diagram_writes_every_format_to_the_current_directory_by_default() {
        let Ok(Command::Diagram { formats, out, .. }) = args("diagram a.rs") else {
            panic!("not a diagram command");
        };
        assert_eq!(formats, Format::ALL);
        assert_eq!(out, PathBuf::from("."));
    }

    #[test]
    fn diagram_takes_machine_format_and_directory() {
        let Ok(Command::Diagram {
            files,
            machine,
            formats,
            out,
        }) = args("diagram a.rs --machine Order --format dot -o out b.rs")
        else {
            panic!("not a diagram command");
        };
        assert_eq!(files, [PathBuf::from("a.rs"), PathBuf::from("b.rs")]);
        assert_eq!(machine.as_deref(), Some("Order"));
        assert_eq!(formats, [Format::Dot]);
        assert_eq!(out, PathBuf::from("out"));
    }

    #[test]
    fn unknown_format_command_or_option_is_a_usage_error() {
        assert!(args("diagram a.rs --format png").is_err());
        assert!(args("draw a.rs").is_err());
        assert!(args("check a.rs --machine Order").is_err());
        assert!(args("check").is_err());
    }
}
