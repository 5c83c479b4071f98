//! Finding `state_machine!` calls in a Rust source file, without compiling it.

use std::path::{Path, PathBuf};

use fsm_dsl::{Ctxt, Machine};
use proc_macro2::Span;
use syn::visit::Visit;

/// One `state_machine!` call and what the macro's own pipeline made of it.
pub(crate) struct Invocation {
    /// The model, when the machine's header parsed.
    pub(crate) machine: Option<Machine>,
    /// Every error the macro would report, in its order.
    pub(crate) errors: Vec<Located>,
}

/// An error message at `file:line:column`, as rustc prints it (both 1-based).
pub(crate) struct Located {
    pub(crate) file: PathBuf,
    pub(crate) line: usize,
    pub(crate) column: usize,
    pub(crate) message: String,
}

impl std::fmt::Display for Located {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Located {
            file,
            line,
            column,
            message,
        } = self;
        write!(f, "{}:{line}:{column}: error: {message}", file.display())
    }
}

impl Located {
    /// Where `span` starts; `fallback` for a span with no place in the file (the macro's
    /// call site, where rustc would underline the whole call).
    fn at(file: &Path, span: Span, fallback: Span, message: String) -> Located {
        let start = span.start();
        let start = if start.line == 0 {
            fallback.start()
        } else {
            start
        };
        Located {
            file: file.to_path_buf(),
            line: start.line,
            column: start.column + 1,
            message,
        }
    }
}

/// Every `state_machine!` call in `file`, in source order, each run through parse ->
/// model -> validate. `Err` when the file cannot be read or is not Rust.
pub(crate) fn invocations(file: &Path) -> Result<Vec<Invocation>, Located> {
    let text = std::fs::read_to_string(file).map_err(|e| Located {
        file: file.to_path_buf(),
        line: 1,
        column: 1,
        message: format!("cannot read: {e}"),
    })?;
    let ast = syn::parse_file(&text)
        .map_err(|e| Located::at(file, e.span(), Span::call_site(), e.to_string()))?;
    let mut calls = Calls(Vec::new());
    calls.visit_file(&ast);
    Ok(calls
        .0
        .into_iter()
        .map(|mac| {
            let mut cx = Ctxt::new();
            let machine = fsm_dsl::analyze(mac.tokens.clone(), &mut cx);
            let call = mac
                .path
                .segments
                .last()
                .map_or_else(Span::call_site, |s| s.ident.span());
            let errors = match cx.check() {
                Ok(()) => Vec::new(),
                Err(errors) => errors
                    .into_iter()
                    .map(|e| Located::at(file, e.span(), call, e.to_string()))
                    .collect(),
            };
            Invocation { machine, errors }
        })
        .collect())
}

/// Collects macro calls whose path ends in `state_machine`: `state_machine!`,
/// `fsm::state_machine!`, in items, modules, function bodies and expressions.
struct Calls(Vec<syn::Macro>);

impl<'ast> Visit<'ast> for Calls {
    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        if mac
            .path
            .segments
            .last()
            .is_some_and(|s| s.ident == "state_machine")
        {
            self.0.push(mac.clone());
        }
        syn::visit::visit_macro(self, mac);
    }
}
