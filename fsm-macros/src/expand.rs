//! The pipeline, and code generation for a machine that passed every check.
//!
//! Generated code names everything by absolute path (`::fsm::..`, `::core::..`) and
//! derives serde through `::fsm::__private::serde`, so a user crate needs neither
//! `use` statements nor its own serde dependency. Every generated item is documented,
//! so it compiles under `#![deny(missing_docs)]`.

use fsm_core::{Definition, On};
use proc_macro2::{Group, Literal, Span, TokenStream, TokenTree};
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::{Attribute, Ident};

use crate::ctxt::Ctxt;
use crate::fallback;
use crate::model::{Machine, Node, RuleKind, Site, Trigger, name, parameter_name, type_string};

/// `state_machine!`: parse, build the model, check it, then generate. On errors the
/// fallback items are emitted with the errors, so one mistake does not cascade.
pub(crate) fn state_machine(input: TokenStream) -> TokenStream {
    let mut cx = Ctxt::new();
    let Some(machine) = fsm_dsl::analyze(input, &mut cx) else {
        return cx
            .check()
            .err()
            .map(syn::Error::into_compile_error)
            .unwrap_or_default();
    };
    match cx.check() {
        Ok(()) => expand(&machine),
        Err(errors) => {
            let mut tokens = fallback::expand(&machine);
            tokens.extend(errors.into_compile_error());
            tokens
        }
    }
}

/// The generated type names: `Order`, `OrderState`, `OrderEvent`, `OrderEventKind`,
/// `OrderRules`.
pub(crate) struct Names {
    pub(crate) machine: Ident,
    pub(crate) state: Ident,
    pub(crate) event: Ident,
    pub(crate) kind: Ident,
    pub(crate) rules: Ident,
}

impl Names {
    pub(crate) fn of(m: &Machine) -> Names {
        let base = name(&m.name);
        let span = m.name.span();
        Names {
            machine: m.name.clone(),
            state: format_ident!("{}State", base, span = span),
            event: format_ident!("{}Event", base, span = span),
            kind: format_ident!("{}EventKind", base, span = span),
            rules: format_ident!("{}Rules", base, span = span),
        }
    }
}

/// A local variable of generated code. Hygiene alone does not stop a user's constant
/// named `context` from turning a binding into a constant pattern; the prefix does.
pub(crate) fn local(name: &str) -> Ident {
    Ident::new(&format!("__{name}"), Span::mixed_site())
}

fn edge_index(i: usize) -> Literal {
    Literal::u16_unsuffixed(u16::try_from(i).expect("validate caps edges at u16"))
}

fn expand(m: &Machine) -> TokenStream {
    let names = Names::of(m);
    let definition = m.definition();
    let doc = format!(
        "{}\n\n# Diagram\n\n{}\n\nMermaid source:\n\n```mermaid\n{}```",
        machine_doc(m),
        inline_svg(&definition),
        fsm_core::diagram::mermaid(&definition),
    );
    let state_enum = state_enum(m, &names);
    let event_enums = event_enums(m, &names);
    let marker = marker(m, &names, &doc);
    let rules = rules_trait(m, &names);
    let machine = &names.machine;
    let definition = definition_tokens(&definition);
    let state_machine = state_machine_impl(m, &names);
    quote! {
        #state_enum
        #event_enums
        #marker
        #rules
        #[automatically_derived]
        impl #machine {
            /// The machine's graph as data: states, events and edges in declaration order.
            pub const DEFINITION: &'static ::fsm::Definition = #definition;
        }
        #state_machine
    }
}

/// The machine's SVG diagram as an HTML block for rustdoc: no XML prolog, scaled down to
/// the page's width; rendered here at compile time, so the page needs no script.
fn inline_svg(definition: &Definition) -> String {
    let svg = fsm_core::diagram::svg(definition);
    let svg = match svg.find("<svg ") {
        Some(start) => &svg[start..],
        None => &svg[..],
    };
    svg.replacen(
        "<svg ",
        "<svg style=\"max-width: 100%; height: auto\" role=\"img\" ",
        1,
    )
    .trim_end()
    .to_owned()
}

/// The machine's doc comment, or a sentence naming it.
pub(crate) fn machine_doc(m: &Machine) -> String {
    let doc = crate::model::doc_string(&m.docs);
    if doc.is_empty() {
        format!("The `{}` state machine.", name(&m.name))
    } else {
        doc
    }
}

/// The user's doc comments, or `default` so the item is documented either way.
fn docs_or(docs: &[Attribute], default: String) -> TokenStream {
    if docs.is_empty() {
        quote!(#[doc = #default])
    } else {
        quote!(#(#docs)*)
    }
}

/// The marker type that implements `StateMachine`.
pub(crate) fn marker(m: &Machine, names: &Names, doc: &str) -> TokenStream {
    let vis = &m.vis;
    let machine = &names.machine;
    quote! {
        #[doc = #doc]
        #[derive(
            ::core::fmt::Debug,
            ::core::clone::Clone,
            ::core::marker::Copy,
            ::core::default::Default
        )]
        #vis struct #machine;
    }
}

/// `OrderState`: one fieldless variant per state.
pub(crate) fn state_enum(m: &Machine, names: &Names) -> TokenStream {
    let machine = name(&m.name);
    let former = accepted_former(m.states.iter().map(|s| (&s.name, &s.renamed_from[..])));
    let variants: Vec<Variant> = m
        .states
        .iter()
        .zip(former)
        .map(|(s, renamed_from)| Variant {
            ident: &s.name,
            docs: docs_or(&s.docs, format!("The `{}` state.", name(&s.name))),
            renamed_from,
        })
        .collect();
    let doc = format!("A state of the [`{machine}`] machine.");
    let mut tokens = fieldless_enum(m, &names.state, &doc, &variants, "state");
    // The fallback defines `DEFINITION` only when there is a state.
    if !m.states.is_empty() {
        let (state, marker) = (&names.state, &names.machine);
        let parent_ = local("parent");
        tokens.extend(quote! {
            #[automatically_derived]
            impl #state {
                /// Whether this state is grouped under the parent (composite) state named
                /// `parent`, directly or through nested parents; see
                /// [`fsm::Definition::is_within`].
                pub fn is_within(self, #parent_: &str) -> bool {
                    #marker::DEFINITION.is_within(self.as_str(), #parent_)
                }
            }
        });
    }
    tokens
}

/// `OrderEvent` (variants carry payloads) and `OrderEventKind` (fieldless).
pub(crate) fn event_enums(m: &Machine, names: &Names) -> TokenStream {
    let machine = name(&m.name);
    let Names { event, kind, .. } = names;
    let vis = &m.vis;
    let docs: Vec<TokenStream> = m
        .events
        .iter()
        .map(|e| docs_or(&e.docs, format!("The `{}` event.", name(&e.name))))
        .collect();
    let former = accepted_former(m.events.iter().map(|e| (&e.name, &e.renamed_from[..])));
    let variants = m
        .events
        .iter()
        .zip(&docs)
        .zip(&former)
        .map(|((e, docs), former)| {
            let variant = &e.name;
            let aliases = serde_aliases(former);
            match e.payload() {
                Some(ty) => quote!(#docs #aliases #variant(#ty)),
                None => quote!(#docs #aliases #variant),
            }
        });
    let kind_arms = m.events.iter().map(|e| {
        let variant = &e.name;
        let pattern = match e.payload() {
            Some(_) => quote!(Self::#variant(..)),
            None => quote!(Self::#variant),
        };
        quote!(#pattern => #kind::#variant,)
    });
    let kinds: Vec<Variant> = m
        .events
        .iter()
        .zip(docs.iter().cloned())
        .zip(former.iter().cloned())
        .map(|((e, docs), renamed_from)| Variant {
            ident: &e.name,
            docs,
            renamed_from,
        })
        .collect();
    let event_doc = format!("An event of the [`{machine}`] machine, with its payload.");
    let kind_doc = format!("The kind of an [`{event}`]: its name, without the payload.");
    let kind_enum = fieldless_enum(m, kind, &kind_doc, &kinds, "event");
    quote! {
        #[doc = #event_doc]
        #[derive(
            ::core::fmt::Debug,
            ::core::clone::Clone,
            ::fsm::__private::serde::Serialize,
            ::fsm::__private::serde::Deserialize
        )]
        #[serde(crate = "::fsm::__private::serde")]
        #vis enum #event {
            #(#variants,)*
        }

        #[automatically_derived]
        impl #event {
            /// The event's kind: its name without the payload.
            pub const fn kind(&self) -> #kind {
                match *self {
                    #(#kind_arms)*
                }
            }

            /// The event's stable name.
            pub const fn as_str(&self) -> &'static str {
                self.kind().as_str()
            }
        }

        #kind_enum
    }
}

/// One variant of a generated enum of names.
struct Variant<'a> {
    ident: &'a Ident,
    docs: TokenStream,
    /// Former names, still read by serde and `FromStr`.
    renamed_from: Vec<String>,
}

/// `#[serde(alias = "Old")]` for each former name.
fn serde_aliases(renamed_from: &[String]) -> TokenStream {
    quote!(#(#[serde(alias = #renamed_from)])*)
}

/// The former names of each entry that read as it: a name clashing with a current name
/// or an earlier former name is a compile error already, and is left out here so that
/// the error is not joined by unreachable-pattern warnings.
fn accepted_former<'a>(
    entries: impl Iterator<Item = (&'a Ident, &'a [Ident])> + Clone,
) -> Vec<Vec<String>> {
    let mut taken: Vec<String> = entries.clone().map(|(n, _)| name(n)).collect();
    entries
        .map(|(_, former)| {
            let mut accepted = Vec::new();
            for old in former.iter().map(name) {
                if !taken.contains(&old) {
                    taken.push(old.clone());
                    accepted.push(old);
                }
            }
            accepted
        })
        .collect()
}

/// A fieldless enum of names with `ALL`, `as_str`, `Display` and `FromStr`.
fn fieldless_enum(
    m: &Machine,
    ty: &Ident,
    doc: &str,
    variants: &[Variant<'_>],
    kind: &str,
) -> TokenStream {
    let vis = &m.vis;
    let machine = name(&m.name);
    let idents: Vec<&Ident> = variants.iter().map(|v| v.ident).collect();
    let docs = variants.iter().map(|v| {
        let (docs, aliases) = (&v.docs, serde_aliases(&v.renamed_from));
        quote!(#docs #aliases)
    });
    let names: Vec<String> = idents.iter().map(|v| name(v)).collect();
    let former = variants.iter().flat_map(|v| {
        let ident = v.ident;
        v.renamed_from
            .iter()
            .map(move |old| quote!(#old => ::core::result::Result::Ok(Self::#ident),))
    });
    let count = idents.len();
    let all_doc = format!("Every {kind}, in order of first appearance in the machine.");
    let as_str_doc = format!("The {kind}'s stable name, as stored and as `FromStr` reads it.");
    let from_str = local("s");
    quote! {
        #[doc = #doc]
        #[derive(
            ::core::fmt::Debug,
            ::core::clone::Clone,
            ::core::marker::Copy,
            ::core::cmp::PartialEq,
            ::core::cmp::Eq,
            ::core::hash::Hash,
            ::core::cmp::PartialOrd,
            ::core::cmp::Ord,
            ::fsm::__private::serde::Serialize,
            ::fsm::__private::serde::Deserialize
        )]
        #[serde(crate = "::fsm::__private::serde")]
        #vis enum #ty {
            #(#docs #idents,)*
        }

        #[automatically_derived]
        impl #ty {
            #[doc = #all_doc]
            pub const ALL: [Self; #count] = [#(Self::#idents),*];

            #[doc = #as_str_doc]
            pub const fn as_str(self) -> &'static str {
                match self {
                    #(Self::#idents => #names,)*
                }
            }
        }

        #[automatically_derived]
        impl ::core::fmt::Display for #ty {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                f.pad(self.as_str())
            }
        }

        #[automatically_derived]
        impl ::core::str::FromStr for #ty {
            type Err = ::fsm::UnknownName;

            fn from_str(#from_str: &str) -> ::core::result::Result<Self, Self::Err> {
                match #from_str {
                    #(#names => ::core::result::Result::Ok(Self::#idents),)*
                    #(#former)*
                    _ => ::core::result::Result::Err(::fsm::UnknownName {
                        machine: #machine,
                        kind: #kind,
                        name: ::std::string::String::from(#from_str),
                    }),
                }
            }
        }
    }
}

/// `OrderRules`: one method per guard and action, implemented by the user on the
/// context type. Nothing when the machine has neither.
pub(crate) fn rules_trait(m: &Machine, names: &Names) -> TokenStream {
    if m.rules.is_empty() {
        return TokenStream::new();
    }
    let vis = &m.vis;
    let rules = &names.rules;
    let effect = m.effect();
    let context = m
        .contexts
        .first()
        .map_or_else(|| "()".to_owned(), |kv| type_string(&kv.ty));
    let doc = format!(
        "Guards and actions of the [`{}`] machine; implement it on the context type \
         `{context}`.\n\nGuards are pure: they read the context and the event's payload. \
         Actions are deterministic: they change the context and may emit effects. Neither \
         does I/O; effects are dispatched after the transition commits.",
        name(&m.name),
    );
    let methods = m.rules.iter().map(|rule| {
        let method = &rule.name;
        // rustc's "missing `method` from trait" then points at the name in the DSL.
        let span = method.span();
        let edges: String = rule
            .uses
            .iter()
            .map(|u| match u.site {
                Site::Edge(_) => format!("\n* `{}`", m.describe_site(u.site)),
                Site::Entry(s) => format!(
                    "\n* on entering `{}` from another state",
                    name(&m.states[s].name)
                ),
                Site::Exit(s) => format!(
                    "\n* on leaving `{}` for another state",
                    name(&m.states[s].name)
                ),
                Site::ParentEntry(p) => format!(
                    "\n* on entering parent `{}` from a state outside it",
                    name(&m.parents[p].name)
                ),
                Site::ParentExit(p) => format!(
                    "\n* on leaving parent `{}` for a state outside it",
                    name(&m.parents[p].name)
                ),
            })
            .collect();
        let payload = m.rule_payload(rule).map(|ty| {
            let param = Ident::new(&parameter_name(ty), span);
            let ty = respan(ty.to_token_stream(), span);
            quote_spanned!(span=> #param: &#ty,)
        });
        match rule.kind {
            RuleKind::Guard => {
                let doc = format!("Guard `{method}`: whether these edges may be taken:\n{edges}");
                quote_spanned! {span=>
                    #[doc = #doc]
                    fn #method(&self, #payload) -> bool;
                }
            }
            RuleKind::Action => {
                let doc = format!("Action `{method}`, run when one of these is taken:\n{edges}");
                quote_spanned! {span=>
                    #[doc = #doc]
                    fn #method(&mut self, #payload effects: &mut ::fsm::Effects<#effect>);
                }
            }
        }
    });
    quote! {
        #[doc = #doc]
        #vis trait #rules {
            #(#methods)*
        }
    }
}

/// `tokens` with every span set to `span`, so that rustc's notes about a generated
/// signature point at one place in the DSL rather than across it.
fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut tree| {
            if let TokenTree::Group(group) = &tree {
                let mut inner = Group::new(group.delimiter(), respan(group.stream(), span));
                inner.set_span(span);
                tree = TokenTree::Group(inner);
            } else {
                tree.set_span(span);
            }
            tree
        })
        .collect()
}

/// A `Definition` value as a constant expression.
fn definition_tokens(d: &Definition) -> TokenStream {
    fn option(value: Option<&str>) -> TokenStream {
        match value {
            Some(s) => quote!(::core::option::Option::Some(#s)),
            None => quote!(::core::option::Option::None),
        }
    }
    let states = d.states.iter().map(|s| {
        let (name, doc, initial, terminal) = (s.name, s.doc, s.initial, s.terminal);
        let (renamed_from, entry, exit) = (s.renamed_from, option(s.entry), option(s.exit));
        let parent = option(s.parent);
        quote! {
            ::fsm::StateInfo {
                name: #name,
                doc: #doc,
                initial: #initial,
                terminal: #terminal,
                renamed_from: &[#(#renamed_from),*],
                entry: #entry,
                exit: #exit,
                parent: #parent,
            }
        }
    });
    let parents = d.parents.iter().map(|p| {
        let (name, doc, parent, initial) = (p.name, p.doc, option(p.parent), option(p.initial));
        let (entry, exit) = (option(p.entry), option(p.exit));
        quote! {
            ::fsm::ParentInfo {
                name: #name,
                doc: #doc,
                parent: #parent,
                initial: #initial,
                entry: #entry,
                exit: #exit,
            }
        }
    });
    let events = d.events.iter().map(|e| {
        let (name, doc, payload) = (e.name, e.doc, option(e.payload));
        let renamed_from = e.renamed_from;
        quote! {
            ::fsm::EventInfo {
                name: #name,
                doc: #doc,
                payload: #payload,
                renamed_from: &[#(#renamed_from),*],
            }
        }
    });
    let edges = d.edges.iter().map(|e| {
        let on = match e.on {
            On::Event(event) => quote!(::fsm::On::Event(#event)),
            On::After(delay) => {
                let millis = u64::try_from(delay.as_millis()).expect("parsed from a u64");
                quote!(::fsm::On::After(::core::time::Duration::from_millis(#millis)))
            }
        };
        let (from, to, guard, action) = (e.from, e.to, option(e.guard), option(e.action));
        let from_wildcard = e.from_wildcard;
        let (from_parent, to_parent) = (option(e.from_parent), option(e.to_parent));
        quote! {
            ::fsm::Edge {
                from: #from,
                on: #on,
                guard: #guard,
                action: #action,
                to: #to,
                from_wildcard: #from_wildcard,
                from_parent: #from_parent,
                to_parent: #to_parent,
            }
        }
    });
    let (name, doc, context, effect) = (d.name, d.doc, d.context, option(d.effect));
    quote! {
        &::fsm::Definition {
            name: #name,
            doc: #doc,
            context: #context,
            effect: #effect,
            states: &[#(#states),*],
            parents: &[#(#parents),*],
            events: &[#(#events),*],
            edges: &[#(#edges),*],
        }
    }
}

/// `impl StateMachine`: the graph as `match` tables.
fn state_machine_impl(m: &Machine, names: &Names) -> TokenStream {
    let Names {
        machine,
        state,
        event,
        kind,
        rules,
    } = names;
    let context = m.context();
    let effect = m.effect();
    let initial = &m.states[m.initial().expect("validated: one initial state")].name;
    let [edge_, context_, event_, effects_, payload_, state_, name_] = [
        "edge", "context", "event", "effects", "payload", "state", "name",
    ]
    .map(local);

    // (state, event) -> event edges, in declaration order.
    let mut by_event: Vec<((usize, usize), Vec<Literal>)> = Vec::new();
    let mut by_state: Vec<(usize, Vec<Literal>)> = Vec::new();
    for (i, e) in m.edges.iter().enumerate() {
        match &e.on {
            Trigger::Event { event, .. } => {
                match by_event.iter_mut().find(|(k, _)| *k == (e.from, *event)) {
                    Some((_, edges)) => edges.push(edge_index(i)),
                    None => by_event.push(((e.from, *event), vec![edge_index(i)])),
                }
            }
            Trigger::After(_) => match by_state.iter_mut().find(|(k, _)| *k == e.from) {
                Some((_, edges)) => edges.push(edge_index(i)),
                None => by_state.push((e.from, vec![edge_index(i)])),
            },
        }
    }
    let edges_body = if m.events.is_empty() {
        quote!(match *#event_ {})
    } else {
        let arms = by_event.iter().map(|((s, e), edges)| {
            let (s, e) = (&m.states[*s].name, &m.events[*e].name);
            quote!((#state::#s, #kind::#e) => &[#(#edges),*],)
        });
        quote! {
            match (#state_, #event_.kind()) {
                #(#arms)*
                _ => &[],
            }
        }
    };
    let timer_arms = by_state.iter().map(|(s, edges)| {
        let s = &m.states[*s].name;
        quote!(#state::#s => &[#(#edges),*],)
    });
    let targets = m.edges.iter().map(|e| {
        let to = &m.states[e.to].name;
        quote!(#state::#to)
    });
    let edge_count = m.edges.len();

    // For a payload event, the guard or action reads the payload out of the event.
    let call = |i: usize, rule: &Ident, extra: &TokenStream, guard: bool| {
        let e = &m.edges[i];
        match (&e.on, m.payload_of(i)) {
            (Trigger::Event { event: index, .. }, Some(_)) => {
                let variant = &m.events[*index].name;
                let pattern = quote!(::core::option::Option::Some(#event::#variant(#payload_)));
                let call = quote!(<#context as #rules>::#rule(#context_, #payload_ #extra));
                if guard {
                    quote!(match #event_ { #pattern => #call, _ => false })
                } else {
                    quote!(if let #pattern = #event_ { #call })
                }
            }
            _ => quote!(<#context as #rules>::#rule(#context_ #extra)),
        }
    };
    let no_extra = TokenStream::new();
    let guard_arms: Vec<TokenStream> = m
        .edges
        .iter()
        .enumerate()
        .filter_map(|(i, e)| {
            let call = call(i, e.guard.as_ref()?, &no_extra, true);
            let i = edge_index(i);
            Some(quote!(#i => #call,))
        })
        .collect();
    let with_effects = quote!(, #effects_);
    let action_arms: Vec<TokenStream> = m
        .edges
        .iter()
        .enumerate()
        .filter_map(|(i, e)| {
            let call = call(i, e.action.as_ref()?, &with_effects, false);
            let i = edge_index(i);
            Some(quote!(#i => { #call }))
        })
        .collect();

    // Entry and exit actions: `match` over the states that have one; the trait's
    // default (nothing) when none has.
    let state_actions = |which: &str, action: fn(&crate::model::State) -> Option<&Ident>| {
        let arms: Vec<TokenStream> = m
            .states
            .iter()
            .filter_map(|s| {
                let (variant, action) = (&s.name, action(s)?);
                Some(quote!(#state::#variant => <#context as #rules>::#action(#context_, #effects_),))
            })
            .collect();
        if arms.is_empty() {
            return TokenStream::new();
        }
        let method = Ident::new(which, Span::call_site());
        quote! {
            #[allow(unreachable_patterns)]
            fn #method(
                #state_: #state,
                #context_: &mut #context,
                #effects_: &mut ::fsm::Effects<#effect>,
            ) {
                match #state_ {
                    #(#arms)*
                    _ => {}
                }
            }
        }
    };
    let exit_fn = state_actions("exit", crate::model::State::exit);
    let enter_fn = state_actions("enter", crate::model::State::entry);
    let parent_fns = parent_tables(m, names);

    quote! {
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

            #[allow(unreachable_patterns)]
            fn edges(#state_: #state, #event_: &#event) -> &'static [::fsm::EdgeIndex] {
                #edges_body
            }

            #[allow(unreachable_patterns)]
            fn timer_edges(#state_: #state) -> &'static [::fsm::EdgeIndex] {
                match #state_ {
                    #(#timer_arms)*
                    _ => &[],
                }
            }

            fn target(#edge_: ::fsm::EdgeIndex) -> #state {
                // Edge indices come only from `edges` and `timer_edges`.
                const TARGETS: [#state; #edge_count] = [#(#targets),*];
                TARGETS[::core::primitive::usize::from(#edge_)]
            }

            #[allow(unused_variables, unreachable_patterns)]
            fn guard(
                #edge_: ::fsm::EdgeIndex,
                #context_: &#context,
                #event_: ::core::option::Option<&#event>,
            ) -> bool {
                match #edge_ {
                    #(#guard_arms)*
                    _ => true,
                }
            }

            #[allow(unused_variables, unreachable_patterns)]
            fn act(
                #edge_: ::fsm::EdgeIndex,
                #context_: &mut #context,
                #event_: ::core::option::Option<&#event>,
                #effects_: &mut ::fsm::Effects<#effect>,
            ) {
                match #edge_ {
                    #(#action_arms)*
                    _ => {}
                }
            }

            #exit_fn
            #enter_fn
            #parent_fns
        }
    }
}

/// The hierarchy for `step`: each leaf's parents, nearest first, and the parents' entry
/// and exit actions. Nothing (the trait's defaults) for a machine without parents.
fn parent_tables(m: &Machine, names: &Names) -> TokenStream {
    if m.parents.is_empty() {
        return TokenStream::new();
    }
    let Names { state, rules, .. } = names;
    let context = m.context();
    let effect = m.effect();
    let [state_, parent_, context_, effects_] =
        ["state", "parent", "context", "effects"].map(local);
    let ancestor_arms = m.states.iter().enumerate().filter_map(|(i, s)| {
        let ancestors = m.ancestors(Node::State(i));
        if ancestors.is_empty() {
            return None;
        }
        let (variant, indices) = (&s.name, ancestors.into_iter().map(parent_index));
        Some(quote!(#state::#variant => &[#(#indices),*],))
    });
    let parent_actions = |which: &str, action: fn(&crate::model::Parent) -> Option<&Ident>| {
        let arms: Vec<TokenStream> = m
            .parents
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                let (i, action) = (parent_index(i), action(p)?);
                Some(quote!(#i => <#context as #rules>::#action(#context_, #effects_),))
            })
            .collect();
        if arms.is_empty() {
            return TokenStream::new();
        }
        let method = Ident::new(which, Span::call_site());
        quote! {
            fn #method(
                #parent_: ::fsm::ParentIndex,
                #context_: &mut #context,
                #effects_: &mut ::fsm::Effects<#effect>,
            ) {
                match #parent_ {
                    #(#arms)*
                    _ => {}
                }
            }
        }
    };
    let exit_parent = parent_actions("exit_parent", crate::model::Parent::exit);
    let enter_parent = parent_actions("enter_parent", crate::model::Parent::entry);
    quote! {
        #[allow(unreachable_patterns)]
        fn ancestors(#state_: #state) -> &'static [::fsm::ParentIndex] {
            match #state_ {
                #(#ancestor_arms)*
                _ => &[],
            }
        }
        #exit_parent
        #enter_parent
    }
}

fn parent_index(i: usize) -> Literal {
    Literal::u16_unsuffixed(u16::try_from(i).expect("validate caps parents at u16"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand_str(tokens: TokenStream) -> String {
        state_machine(tokens).to_string()
    }

    #[test]
    fn a_valid_machine_expands_to_every_item() {
        let out = expand_str(quote! {
            /// An order.
            pub machine Order {
                context: OrderData,
                effect: OrderEffect,
                *Created + Pay(Payment) [amount_matches] / record_payment => Paid,
                Paid + Ship => Shipped,
                Created + after(30 min) [unpaid] / notify => Expired,
            }
        });
        assert!(!out.contains("compile_error"), "{out}");
        for item in [
            "pub enum OrderState",
            "pub enum OrderEvent",
            "pub enum OrderEventKind",
            "pub struct Order",
            "pub trait OrderRules",
            "impl :: fsm :: StateMachine for Order",
            "impl :: fsm :: MachineEvent for OrderEvent { type Machine = Order ; }",
            "fn amount_matches (& self , payment : & Payment ,) -> bool",
            "fn record_payment (& mut self , payment : & Payment , effects : & mut :: fsm :: Effects < OrderEffect >)",
            "fn unpaid (& self ,) -> bool",
            "fn notify (& mut self , effects : & mut :: fsm :: Effects < OrderEffect >)",
            "```mermaid",
            "Created --> Paid : Pay [amount_matches] / record_payment",
            "# Diagram\\n\\n<svg style=\\\"max-width: 100%; height: auto\\\" role=\\\"img\\\" ",
            ">Pay [amount_matches] / record_payment<",
            ":: core :: time :: Duration :: from_millis (1800000u64)",
        ] {
            assert!(out.contains(item), "missing {item:?} in {out}");
        }
    }

    #[test]
    fn entry_and_exit_actions_are_rules_and_state_matches() {
        let out = expand_str(quote! {
            machine Order {
                effect: E,
                states { #[entry(notify_shipped)] #[exit(stop_clock)] Shipped }
                *Paid + Ship => Shipped,
                Shipped + Deliver => Delivered,
            }
        });
        assert!(!out.contains("compile_error"), "{out}");
        for item in [
            "fn notify_shipped (& mut self , effects : & mut :: fsm :: Effects < E >)",
            "fn stop_clock (& mut self , effects : & mut :: fsm :: Effects < E >)",
            "fn enter (",
            "fn exit (",
            "OrderState :: Shipped => < () as OrderRules > :: notify_shipped (",
            "entry : :: core :: option :: Option :: Some (\"notify_shipped\")",
            "Shipped : entry / notify_shipped",
        ] {
            assert!(out.contains(item), "missing {item:?} in {out}");
        }
    }

    #[test]
    fn parents_are_tables_for_step_not_state_variants() {
        let out = expand_str(quote! {
            machine Order {
                states { #[entry(open_case)] Active { *Paid, Packing { *Picking } } }
                *Created + Pay => Active,
                Paid + Pack => Packing,
                Active + Cancel => Cancelled,
            }
        });
        assert!(!out.contains("compile_error"), "{out}");
        for item in [
            "enum OrderState { # [doc = \"The `Paid` state.\"] Paid ,",
            "OrderState :: Picking => & [1 , 0] ,",
            "OrderState :: Paid => & [0] ,",
            "fn enter_parent (",
            "0 => < () as OrderRules > :: open_case (",
            "pub fn is_within (self ,",
            "parent : :: core :: option :: Option :: Some (\"Packing\")",
            "from_parent : :: core :: option :: Option :: Some (\"Active\")",
        ] {
            assert!(out.contains(item), "missing {item:?} in {out}");
        }
        assert!(!out.contains("fn exit_parent"), "{out}");
        assert!(!out.contains("OrderState :: Active"), "{out}");
    }

    #[test]
    fn a_machine_without_guards_or_actions_has_no_rules_trait() {
        let out =
            expand_str(quote!(machine Door { *Open + Close => Closed, Closed + Open => Open }));
        assert!(!out.contains("compile_error"), "{out}");
        assert!(!out.contains("trait"), "{out}");
    }

    #[test]
    fn errors_come_with_the_fallback_enums() {
        let out = expand_str(quote!(machine Door { Open + Close => Closed }));
        assert!(out.contains("compile_error"), "{out}");
        assert!(out.contains("enum DoorState"), "{out}");
        assert!(out.contains("enum DoorEvent"), "{out}");
        assert!(out.contains("enum DoorEventKind"), "{out}");
    }

    #[test]
    fn a_broken_header_gives_only_the_error() {
        let out = expand_str(quote!(pub Door { *Open + Close => Closed }));
        assert!(out.starts_with(":: core :: compile_error !"), "{out}");
        assert!(!out.contains("enum"), "{out}");
    }
}
