//! The `state_machine!` language, without the proc-macro: `parse` (syntax tree keeping
//! spans) -> `model` (the graph, indexed, and its [`fsm_core::Definition`]) -> `validate`
//! (every check, errors accumulated in a [`ctxt::Ctxt`]).
//!
//! `fsm-macros` runs it on the macro's input and generates code; the `fsm` command runs
//! it on the macros it finds in source files, so both report the same errors.
#![forbid(unsafe_code)]
// The syntax tree and model fields are named as the DSL writes them; their types carry the docs.
#![allow(missing_docs)]

pub mod ctxt;
pub mod model;
pub mod parse;
pub mod validate;

pub use ctxt::Ctxt;
pub use model::Machine;
pub use parse::MachineInput;

/// Parses, models and checks one machine body (the tokens inside `state_machine! { }`).
///
/// Returns the model when the header parsed (even if the body has errors, for a fallback)
/// and every error recorded in `cx`.
pub fn analyze(input: proc_macro2::TokenStream, cx: &mut Ctxt) -> Option<Machine> {
    let input = parse::machine(input, cx)?;
    let machine = Machine::from_input(&input);
    validate::check(&machine, cx);
    Some(machine)
}
