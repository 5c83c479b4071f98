//! What a machine with errors still expands to, next to the errors: the enums, the
//! marker type and the rules trait as far as the input defines them, and a
//! `StateMachine` impl with stub bodies. Code that uses the machine then compiles, and
//! the user sees the machine's own errors rather than twenty about missing items.

use proc_macro2::TokenStream;
use quote::quote;

use crate::expand::{self, Names};
use crate::model::{Machine, name};

pub(crate) fn expand(m: &Machine) -> TokenStream {
    let names = Names::of(m);
    let state_enum = expand::state_enum(m, &names);
    let event_enums = expand::event_enums(m, &names);
    let marker = expand::marker(m, &names, &expand::machine_doc(m));
    let rules = expand::rules_trait(m, &names);
    let state_machine = stub_impl(m, &names);
    quote! {
        #state_enum
        #event_enums
        #marker
        #rules
        #state_machine
    }
}

/// A `StateMachine` impl whose tables are never reached: the crate does not compile.
fn stub_impl(m: &Machine, names: &Names) -> TokenStream {
    // Without any state there is no `INITIAL` to name.
    let Some(initial) = m
        .initial()
        .or(if m.states.is_empty() { None } else { Some(0) })
    else {
        return TokenStream::new();
    };
    let Names {
        machine,
        state,
        event,
        ..
    } = names;
    let initial = &m.states[initial].name;
    let context = m.context();
    let effect = m.effect();
    let machine_name = name(&m.name);
    let [state_, name_, event_] = ["state", "name", "event"].map(expand::local);
    quote! {
        #[automatically_derived]
        impl #machine {
            /// The machine's graph as data (empty: the machine has errors).
            pub const DEFINITION: &'static ::fsm::Definition = &::fsm::Definition {
                name: #machine_name,
                doc: "",
                context: "()",
                effect: ::core::option::Option::None,
                states: &[],
                parents: &[],
                events: &[],
                edges: &[],
            };
        }

        #[automatically_derived]
        impl ::fsm::MachineEvent for #event {
            type Machine = #machine;
        }

        #[automatically_derived]
        impl ::fsm::StateMachine for #machine {
            type State = #state;
            type Event = #event;
            type Context = #context;
            type Effect = #effect;

            const DEFINITION: &'static ::fsm::Definition = #machine::DEFINITION;
            const INITIAL: #state = #state::#initial;

            fn state_name(#state_: #state) -> &'static str {
                #state_.as_str()
            }

            fn parse_state(#name_: &str) -> ::core::option::Option<#state> {
                <#state as ::core::str::FromStr>::from_str(#name_).ok()
            }

            fn event_name(#event_: &#event) -> &'static str {
                #event_.as_str()
            }

            fn edges(_: #state, _: &#event) -> &'static [::fsm::EdgeIndex] {
                ::core::unreachable!()
            }

            fn timer_edges(_: #state) -> &'static [::fsm::EdgeIndex] {
                ::core::unreachable!()
            }

            fn target(_: ::fsm::EdgeIndex) -> #state {
                ::core::unreachable!()
            }

            fn guard(_: ::fsm::EdgeIndex, _: &#context, _: ::core::option::Option<&#event>) -> bool {
                ::core::unreachable!()
            }

            fn act(
                _: ::fsm::EdgeIndex,
                _: &mut #context,
                _: ::core::option::Option<&#event>,
                _: &mut ::fsm::Effects<#effect>,
            ) {
                ::core::unreachable!()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use quote::quote;

    use crate::ctxt::Ctxt;
    use crate::model::Machine;

    fn fallback(tokens: proc_macro2::TokenStream) -> String {
        let mut cx = Ctxt::new();
        let input = fsm_dsl::parse::machine(tokens, &mut cx).unwrap();
        super::expand(&Machine::from_input(&input)).to_string()
    }

    #[test]
    fn fallback_keeps_the_first_payload_and_a_stub_impl() {
        let out = fallback(quote!(machine M { *A + E(X) [g] => B, B + E(Y) [g] => A }));
        assert!(out.contains("E (X)"), "{out}");
        assert!(!out.contains("E (Y)"), "{out}");
        assert!(out.contains("fn g (& self , x : & X ,) -> bool"), "{out}");
        assert!(
            out.contains("const INITIAL : MState = MState :: A"),
            "{out}"
        );
    }

    #[test]
    fn fallback_without_states_has_no_impl() {
        let out = fallback(quote!(machine M { contxt: X }));
        assert!(out.contains("enum MState { }"), "{out}");
        assert!(!out.contains("StateMachine"), "{out}");
    }
}
