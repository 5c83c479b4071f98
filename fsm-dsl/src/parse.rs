//! Parsing: macro input to a syntax tree that keeps the original syn nodes for spans.
//!
//! The body is split into items (transitions, `context:`/`effect:` keys, `states { }` /
//! `events { }` blocks) before parsing, so a mistake in one item is recorded and the
//! others still parse: a user sees every syntax error of the machine in one compile.

use proc_macro2::{Delimiter, Group, Spacing, Span, TokenStream, TokenTree};
use syn::parse::{ParseStream, Parser};
use syn::{
    Attribute, Ident, LitInt, Token, Type, Visibility, braced, bracketed, parenthesized, token,
};

use crate::ctxt::Ctxt;

/// `/// docs  vis machine Name { items }`.
#[derive(Debug)]
pub struct MachineInput {
    pub docs: Vec<Attribute>,
    pub vis: Visibility,
    pub name: Ident,
    pub items: Vec<Item>,
    /// Whether every item parsed; checks over the whole graph (reachability, the initial
    /// state, unused declarations) would report noise on a partial one.
    pub complete: bool,
}

/// One comma-separated item of the machine body.
#[derive(Debug)]
pub enum Item {
    /// `context: Type`
    Context(KeyValue),
    /// `effect: Type`
    Effect(KeyValue),
    /// `states { .. }`
    States(Block),
    /// `events { .. }`
    Events(Block),
    /// `*A | B + Event(Payload) [guard] / action => Target`
    Transition(Transition),
}

/// `key: Type`
#[derive(Debug, Clone)]
pub struct KeyValue {
    pub key: Ident,
    pub ty: Type,
}

/// `states { .. }` or `events { .. }`.
#[derive(Debug)]
pub struct Block {
    pub keyword: Ident,
    pub entries: Vec<Entry>,
}

/// `/// docs  #[terminal] #[renamed_from(Old)] Name` inside a block, or in `states { }` a
/// parent grouping states: `/// docs  #[entry(a)] #[exit(b)] Active { *Paid, Shipped }`.
#[derive(Debug)]
pub struct Entry {
    /// `*` before a child: the parent's initial child.
    pub initial: Option<Token![*]>,
    /// The children of a parent, in order (never empty: `Active { }` is an error and
    /// reads as a plain state).
    pub children: Option<Vec<Entry>>,
    pub docs: Vec<Attribute>,
    /// `#[terminal]`, only accepted in `states { }`.
    pub terminal: Option<Attribute>,
    /// The names of every `#[renamed_from(A, B)]`, in order.
    pub renamed_from: Vec<Ident>,
    /// Every `#[entry(action)]`, in order; only accepted in `states { }`.
    pub entry: Vec<StateAction>,
    /// Every `#[exit(action)]`, in order; only accepted in `states { }`.
    pub exit: Vec<StateAction>,
    pub name: Ident,
}

/// `#[entry(action)]` or `#[exit(action)]` on a state.
#[derive(Debug, Clone)]
pub struct StateAction {
    pub attr: Attribute,
    pub action: Ident,
}

/// One transition line.
#[derive(Debug)]
pub struct Transition {
    pub initial: Option<Token![*]>,
    /// `_ + Event => Target`: every state without its own edge on the event. `sources`
    /// is then empty.
    pub wildcard: Option<Token![_]>,
    pub sources: Vec<Ident>,
    pub trigger: Trigger,
    pub guard: Option<Ident>,
    pub action: Option<Ident>,
    pub target: Ident,
}

/// What fires a transition.
#[derive(Debug)]
pub enum Trigger {
    /// `Event` or `Event(Payload)`.
    Event {
        name: Ident,
        payload: Option<Box<Type>>,
    },
    /// `after(30 min)`.
    After(Timer),
}

/// `after(<amount> <unit>)`.
#[derive(Debug, Clone)]
pub struct Timer {
    pub keyword: Ident,
    pub millis: u64,
}

const UNITS: &str = "`ms`, `s`, `sec`, `min`, `h` or `d`";

/// Parses the whole macro input. `None` when not even the machine's header parsed; item
/// errors are recorded in `cx` and the item left out.
pub fn machine(input: TokenStream, cx: &mut Ctxt) -> Option<MachineInput> {
    let (docs, vis, name, body) = match header.parse2(input) {
        Ok(header) => header,
        Err(error) => {
            cx.syn_error(error);
            return None;
        }
    };
    let mut complete = true;
    let mut items = Vec::new();
    for tokens in split_items(body, cx, &mut complete) {
        match (|input: ParseStream| item(input, cx)).parse2(scoped(tokens)) {
            Ok(item) => items.push(item),
            Err(error) => {
                cx.syn_error(error);
                complete = false;
            }
        }
    }
    Some(MachineInput {
        docs,
        vis,
        name,
        items,
        complete,
    })
}

/// Wraps an item in a group spanning its last token, so an item that ends too early is
/// reported there (syn reports the end of a top-level stream at the whole macro call).
fn scoped(tokens: TokenStream) -> TokenStream {
    let span = tokens
        .clone()
        .into_iter()
        .last()
        .map_or_else(Span::call_site, |t| t.span());
    let mut group = Group::new(Delimiter::Parenthesis, tokens);
    group.set_span(span);
    TokenTree::Group(group).into()
}

fn header(input: ParseStream) -> syn::Result<(Vec<Attribute>, Visibility, Ident, TokenStream)> {
    let attrs = input.call(Attribute::parse_outer)?;
    if let Some(attr) = attrs.iter().find(|a| !a.path().is_ident("doc")) {
        return Err(syn::Error::new_spanned(
            attr,
            "only doc comments are supported on a machine",
        ));
    }
    let vis: Visibility = input.parse()?;
    let keyword: Ident = input.parse().map_err(|e| {
        syn::Error::new(
            e.span(),
            "expected `machine`, as in `pub machine Order { *Created + Pay => Paid }`",
        )
    })?;
    if keyword != "machine" {
        return Err(syn::Error::new_spanned(
            keyword,
            "expected `machine`, as in `pub machine Order { *Created + Pay => Paid }`",
        ));
    }
    let name: Ident = input.parse().map_err(|e| {
        let span = if input.is_empty() {
            keyword.span()
        } else {
            e.span()
        };
        syn::Error::new(span, "expected the machine's name after `machine`")
    })?;
    if !input.peek(token::Brace) {
        let message = "expected `{` and the machine's transitions after its name";
        if input.is_empty() {
            return Err(syn::Error::new(name.span(), message));
        }
        return Err(input.error(message));
    }
    let body;
    braced!(body in input);
    let body: TokenStream = body.parse()?;
    if !input.is_empty() {
        return Err(input.error(
            "unexpected tokens after the machine; one `state_machine!` declares one machine",
        ));
    }
    Ok((attrs, vis, name, body))
}

/// Splits the body at top-level commas; a `keyword { .. }` block ends an item by itself.
/// Commas inside `<..>` belong to a type such as `HashMap<K, V>`.
fn split_items(body: TokenStream, cx: &mut Ctxt, complete: &mut bool) -> Vec<TokenStream> {
    let mut items = Vec::new();
    let mut current: Vec<TokenTree> = Vec::new();
    let mut angle_depth = 0usize;
    let mut after_block = false;
    let mut previous_joint: Option<char> = None;
    for tree in body {
        match &tree {
            TokenTree::Punct(p) if p.as_char() == ',' && angle_depth == 0 => {
                if !current.is_empty() {
                    items.push(current.drain(..).collect());
                } else if !after_block {
                    cx.error_spanned_by(p, "unexpected `,`; expected a transition or a key");
                    *complete = false;
                }
                after_block = false;
                previous_joint = None;
                continue;
            }
            TokenTree::Group(g)
                if g.delimiter() == Delimiter::Brace
                    && current.len() == 1
                    && matches!(current[0], TokenTree::Ident(_)) =>
            {
                current.push(tree);
                items.push(current.drain(..).collect());
                after_block = true;
                previous_joint = None;
                continue;
            }
            TokenTree::Punct(p) if p.as_char() == '<' => angle_depth += 1,
            // `=>` and `->` are arrows, not closing angle brackets.
            TokenTree::Punct(p)
                if p.as_char() == '>' && !matches!(previous_joint, Some('=' | '-')) =>
            {
                angle_depth = angle_depth.saturating_sub(1);
            }
            _ => {}
        }
        previous_joint = match &tree {
            TokenTree::Punct(p) if p.spacing() == Spacing::Joint => Some(p.as_char()),
            _ => None,
        };
        after_block = false;
        current.push(tree);
    }
    if !current.is_empty() {
        items.push(current.into_iter().collect());
    }
    items
}

fn item(input: ParseStream, cx: &mut Ctxt) -> syn::Result<Item> {
    let content;
    parenthesized!(content in input);
    let input = &content;
    if input.peek(Ident) && input.peek2(token::Brace) {
        return block(input, cx);
    }
    if input.peek(Ident) && input.peek2(Token![:]) && !input.peek2(Token![::]) {
        return key_value(input);
    }
    transition(input).map(Item::Transition)
}

fn unknown_keyword(keyword: &Ident) -> syn::Error {
    syn::Error::new_spanned(
        keyword,
        format!(
            "unknown keyword `{keyword}`; expected `context`, `effect`, `states`, `events` or a transition"
        ),
    )
}

fn key_value(input: ParseStream) -> syn::Result<Item> {
    let key: Ident = input.parse()?;
    if key != "context" && key != "effect" {
        return Err(unknown_keyword(&key));
    }
    input.parse::<Token![:]>()?;
    let ty: Type = input.parse()?;
    if !input.is_empty() {
        return Err(input.error(format!("expected `,` after the {key} type")));
    }
    let kv = KeyValue { key, ty };
    Ok(if kv.key == "context" {
        Item::Context(kv)
    } else {
        Item::Effect(kv)
    })
}

fn block(input: ParseStream, cx: &mut Ctxt) -> syn::Result<Item> {
    let keyword: Ident = input.parse()?;
    let states = keyword == "states";
    if !states && keyword != "events" {
        return Err(unknown_keyword(&keyword));
    }
    let content;
    braced!(content in input);
    let entries = entries(&content, cx, states, false)?;
    let block = Block { keyword, entries };
    Ok(if states {
        Item::States(block)
    } else {
        Item::Events(block)
    })
}

/// Comma-separated entries of a block or of a parent's braces; the comma after a
/// parent's `}` is optional.
fn entries(
    input: ParseStream,
    cx: &mut Ctxt,
    states: bool,
    in_parent: bool,
) -> syn::Result<Vec<Entry>> {
    let mut entries = Vec::new();
    while !input.is_empty() {
        let entry = entry(input, cx, states, in_parent)?;
        let parent = entry.children.is_some();
        entries.push(entry);
        if input.is_empty() {
            break;
        }
        if parent && !input.peek(Token![,]) {
            continue;
        }
        input.parse::<Token![,]>()?;
    }
    Ok(entries)
}

fn entry(input: ParseStream, cx: &mut Ctxt, states: bool, in_parent: bool) -> syn::Result<Entry> {
    let kind = if states { "state" } else { "event" };
    let attrs = input.call(Attribute::parse_outer)?;
    let initial: Option<Token![*]> = if states { input.parse()? } else { None };
    if let (Some(star), false) = (&initial, in_parent) {
        cx.error_spanned_by(
            star,
            "`*` in `states { }` marks a parent's initial child, as in `Active { *Paid, \
             Shipped }`; mark the machine's initial state on a transition: `*Created + Pay => Paid`",
        );
    }
    let name: Ident = input
        .parse()
        .map_err(|e| syn::Error::new(e.span(), format!("expected a {kind} name")))?;
    let mut children = None;
    if states && input.peek(token::Brace) {
        let content;
        braced!(content in input);
        let inner = entries(&content, cx, states, true)?;
        if inner.is_empty() {
            cx.error_spanned_by(
                &name,
                format!(
                    "`{name} {{ }}` groups no state; list its children, as in \
                     `{name} {{ *Paid, Shipped }}`, or remove the braces"
                ),
            );
        } else {
            children = Some(inner);
        }
    }
    let parent = children.is_some();
    let mut docs = Vec::new();
    let mut terminal = None;
    let mut renamed_from = Vec::new();
    let (mut entry, mut exit) = (Vec::new(), Vec::new());
    for attr in attrs {
        let parent_only = ["terminal", "renamed_from"]
            .into_iter()
            .find(|k| attr.path().is_ident(k));
        if let (true, Some(which)) = (parent, parent_only) {
            let why = if which == "terminal" {
                "a parent is not a state an instance can rest in; mark its states `#[terminal]`"
            } else {
                "a parent is never stored; rename the states inside it instead"
            };
            cx.error_spanned_by(
                &attr,
                format!("`#[{which}]` does not apply to parent `{name}`: {why}"),
            );
            continue;
        }
        let action_kind = ["entry", "exit"]
            .into_iter()
            .find(|k| attr.path().is_ident(k));
        if attr.path().is_ident("doc") {
            docs.push(attr);
        } else if let Some(which) = action_kind {
            if !states {
                cx.error_spanned_by(
                    &attr,
                    format!(
                        "`#[{which}(..)]` names a state's {which} action; an event has none, \
                         remove it"
                    ),
                );
                continue;
            }
            match attr.parse_args::<Ident>() {
                Ok(action) => {
                    let list = if which == "entry" {
                        &mut entry
                    } else {
                        &mut exit
                    };
                    list.push(StateAction { attr, action });
                }
                Err(_) => cx.error_spanned_by(
                    &attr,
                    format!(
                        "`#[{which}(..)]` names one action method, as in \
                         `#[{which}(notify_customer)]`"
                    ),
                ),
            }
        } else if attr.path().is_ident("renamed_from") {
            let names = attr.parse_args_with(
                syn::punctuated::Punctuated::<Ident, Token![,]>::parse_separated_nonempty,
            );
            match names {
                Ok(names) => renamed_from.extend(names),
                Err(_) => cx.error_spanned_by(
                    &attr,
                    format!(
                        "`#[renamed_from(..)]` lists the names this {kind} was stored under \
                         before, e.g. `#[renamed_from(Old)]`"
                    ),
                ),
            }
        } else if attr.path().is_ident("terminal") && states {
            if attr.meta.require_path_only().is_err() {
                cx.error_spanned_by(&attr, "`#[terminal]` takes no arguments");
            }
            terminal = Some(attr);
        } else if attr.path().is_ident("terminal") {
            cx.error_spanned_by(
                &attr,
                "`#[terminal]` marks states; an event cannot be terminal, remove it",
            );
        } else {
            let allowed = if states {
                "doc comments, `#[terminal]`, `#[entry(action)]`, `#[exit(action)]` and \
                 `#[renamed_from(..)]`"
            } else {
                "doc comments and `#[renamed_from(..)]`"
            };
            cx.error_spanned_by(
                &attr,
                format!("unsupported attribute; a {kind} in this block takes {allowed}"),
            );
        }
    }
    Ok(Entry {
        initial,
        children,
        docs,
        terminal,
        renamed_from,
        entry,
        exit,
        name,
    })
}

fn name(input: ParseStream, what: &str) -> syn::Result<Ident> {
    input
        .parse()
        .map_err(|e| syn::Error::new(e.span(), format!("expected {what}")))
}

fn transition(input: ParseStream) -> syn::Result<Transition> {
    let initial: Option<Token![*]> = input.parse()?;
    let wildcard: Option<Token![_]> = input.parse()?;
    if let (Some(star), Some(_)) = (&initial, &wildcard) {
        return Err(syn::Error::new_spanned(
            star,
            "`*` marks one named initial state; a wildcard `_` cannot be initial",
        ));
    }
    let mut sources = Vec::new();
    if wildcard.is_none() {
        sources.push(name(
            input,
            "a source state, as in `*Created + Pay => Paid`",
        )?);
    } else if input.peek(Token![|]) {
        return Err(input.error(
            "`_` already stands for every state without its own edge; write `_ + Event` alone",
        ));
    }
    while input.peek(Token![|]) {
        input.parse::<Token![|]>()?;
        if input.peek(Token![*]) {
            let star: Token![*] = input.parse()?;
            return Err(syn::Error::new_spanned(
                star,
                "`*` goes before the first source state of a line: `*A | B + Event => C`",
            ));
        }
        sources.push(name(input, "a source state after `|`")?);
    }
    if !input.peek(Token![+]) {
        return Err(input.error(
            "expected `+` and an event after the source state, as in `Created + Pay => Paid`",
        ));
    }
    input.parse::<Token![+]>()?;
    let trigger = trigger(input)?;
    if let (Some(underscore), Trigger::After(_)) = (&wildcard, &trigger) {
        return Err(syn::Error::new_spanned(
            underscore,
            "a wildcard `_` takes an event, not a timer; write the timer on each state",
        ));
    }
    let guard = if input.peek(token::Bracket) {
        let content;
        let brackets = bracketed!(content in input);
        if content.is_empty() {
            return Err(syn::Error::new(
                brackets.span.join(),
                "expected a guard name inside `[ ]`, or remove the brackets",
            ));
        }
        let guard = name(&content, "a guard name, as in `[amount_matches]`")?;
        if !content.is_empty() {
            return Err(content.error(
                "a guard is one method name, as in `[amount_matches]`; combine conditions inside that method",
            ));
        }
        Some(guard)
    } else {
        None
    };
    let action = if input.peek(Token![/]) {
        input.parse::<Token![/]>()?;
        Some(name(
            input,
            "an action name after `/`, as in `/ record_payment`",
        )?)
    } else {
        None
    };
    if !input.peek(Token![=>]) {
        let expected = match (&guard, &action) {
            (_, Some(_)) => "expected `=>` and the target state",
            (Some(_), None) => "expected `/ action` or `=>` and the target state",
            (None, None) => "expected `[guard]`, `/ action` or `=>` and the target state",
        };
        return Err(input.error(expected));
    }
    input.parse::<Token![=>]>()?;
    let target = name(input, "the target state after `=>`")?;
    if !input.is_empty() {
        return Err(input.error("expected `,` after the target state"));
    }
    Ok(Transition {
        initial,
        wildcard,
        sources,
        trigger,
        guard,
        action,
        target,
    })
}

fn trigger(input: ParseStream) -> syn::Result<Trigger> {
    let name = name(input, "an event name or `after(..)` after `+`")?;
    if name == "after" && input.peek(token::Paren) {
        return timer(input, name).map(Trigger::After);
    }
    let payload = if input.peek(token::Paren) {
        let content;
        let parens = parenthesized!(content in input);
        if content.is_empty() {
            return Err(syn::Error::new(
                parens.span.join(),
                format!("write `{name}` for an event without payload, or its type inside `( )`"),
            ));
        }
        let ty: Type = content.parse()?;
        if content.peek(Token![,]) {
            return Err(content.error(
                "an event carries one payload type; use a tuple `Event((A, B))` or a struct",
            ));
        }
        if !content.is_empty() {
            return Err(content.error("expected `)` after the payload type"));
        }
        Some(Box::new(ty))
    } else {
        None
    };
    Ok(Trigger::Event { name, payload })
}

fn timer(input: ParseStream, keyword: Ident) -> syn::Result<Timer> {
    let content;
    parenthesized!(content in input);
    let amount: LitInt = content.parse().map_err(|e| {
        syn::Error::new(
            e.span(),
            "expected a delay as a whole number and a unit, as in `after(30 min)`",
        )
    })?;
    let unit = if amount.suffix().is_empty() {
        let unit: Ident = content.parse().map_err(|e| {
            syn::Error::new(
                e.span(),
                format!("expected a time unit after the number: {UNITS}"),
            )
        })?;
        (unit.to_string(), unit.span())
    } else {
        (amount.suffix().to_owned(), amount.span())
    };
    let unit_millis: u64 = match unit.0.as_str() {
        "ms" => 1,
        "s" | "sec" => 1_000,
        "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        other => {
            return Err(syn::Error::new(
                unit.1,
                format!("unknown time unit `{other}`; use {UNITS}"),
            ));
        }
    };
    if !content.is_empty() {
        return Err(content.error("expected `)` after the delay, as in `after(30 min)`"));
    }
    let digits = amount.base10_digits();
    let millis = digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit_millis))
        .ok_or_else(|| syn::Error::new(amount.span(), "this delay is too long for a timer"))?;
    if millis == 0 {
        return Err(syn::Error::new(
            amount.span(),
            "a timer needs a positive delay; write at least `after(1 ms)`",
        ));
    }
    Ok(Timer { keyword, millis })
}

#[cfg(test)]
mod tests {
    use quote::quote;

    use super::*;

    fn parse(tokens: TokenStream) -> (Option<MachineInput>, Vec<String>) {
        let mut cx = Ctxt::new();
        let machine = machine(tokens, &mut cx);
        let errors = match cx.check() {
            Ok(()) => Vec::new(),
            Err(e) => e.into_iter().map(|e| e.to_string()).collect(),
        };
        (machine, errors)
    }

    fn transitions(machine: &MachineInput) -> Vec<&Transition> {
        machine
            .items
            .iter()
            .filter_map(|i| match i {
                Item::Transition(t) => Some(t),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn parses_a_full_machine() {
        let (machine, errors) = parse(quote! {
            /// An order.
            pub machine Order {
                context: std::collections::HashMap<String, Vec<u8>>,
                effect: OrderEffect,
                states {
                    /// Waiting.
                    Created,
                    #[terminal] Delivered,
                }
                events { Pay }
                *Created + Pay(Payment) [amount_matches] / record_payment => Paid,
                Created | Paid + Cancel(Reason) / refund => Cancelled,
                Paid + Deliver => Delivered,
                Created + after(30 min) => Expired,
            }
        });
        assert!(errors.is_empty(), "{errors:?}");
        let machine = machine.unwrap();
        assert!(machine.complete);
        assert_eq!(machine.name, "Order");
        assert_eq!(machine.docs.len(), 1);
        assert_eq!(machine.items.len(), 8);
        let lines = transitions(&machine);
        assert!(lines[0].initial.is_some());
        assert_eq!(lines[0].guard.as_ref().unwrap(), "amount_matches");
        assert_eq!(lines[0].action.as_ref().unwrap(), "record_payment");
        assert_eq!(lines[1].sources.len(), 2);
        assert!(matches!(&lines[3].trigger, Trigger::After(t) if t.millis == 30 * 60_000));
        let Item::States(states) = &machine.items[2] else {
            panic!("states block")
        };
        assert_eq!(states.entries.len(), 2);
        assert!(states.entries[1].terminal.is_some());
        assert_eq!(states.entries[0].docs.len(), 1);
    }

    #[test]
    fn commas_inside_generic_types_do_not_split_items() {
        let (machine, errors) = parse(quote! {
            machine M { context: Map<K, V>, *A + E => B }
        });
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(machine.unwrap().items.len(), 2);
    }

    #[test]
    fn timer_units_and_suffixes() {
        for (delay, millis) in [
            (quote!(250 ms), 250),
            (quote!(2 s), 2_000),
            (quote!(3 sec), 3_000),
            (quote!(30 min), 1_800_000),
            (quote!(2 h), 7_200_000),
            (quote!(1 d), 86_400_000),
            (quote!(30min), 1_800_000),
        ] {
            let (machine, errors) = parse(quote!(machine M { *A + after(#delay) => B }));
            assert!(errors.is_empty(), "{errors:?}");
            let machine = machine.unwrap();
            let Trigger::After(timer) = &transitions(&machine)[0].trigger else {
                panic!()
            };
            assert_eq!(timer.millis, millis);
        }
    }

    #[test]
    fn bad_timers_are_reported() {
        let (_, errors) =
            parse(quote!(machine M { *A + after(3 weeks) => B, A + after(0 s) => C }));
        assert_eq!(
            errors,
            [
                "unknown time unit `weeks`; use `ms`, `s`, `sec`, `min`, `h` or `d`",
                "a timer needs a positive delay; write at least `after(1 ms)`",
            ]
        );
    }

    #[test]
    fn unknown_keyword_is_reported_and_the_rest_still_parses() {
        let (machine, errors) = parse(quote! {
            machine M { contxt: Foo, *A + E => B, stats { A } }
        });
        assert_eq!(
            errors,
            [
                "unknown keyword `contxt`; expected `context`, `effect`, `states`, `events` or a transition",
                "unknown keyword `stats`; expected `context`, `effect`, `states`, `events` or a transition",
            ]
        );
        let machine = machine.unwrap();
        assert!(!machine.complete);
        assert_eq!(machine.items.len(), 1);
    }

    #[test]
    fn every_broken_line_is_reported() {
        let (_, errors) = parse(quote! {
            machine M {
                *A => B,
                A + E [a b] => C,
                A + E(X, Y) => C,
                A + E() => C,
                A | *B + E => C,
                A + E => C D,
            }
        });
        assert_eq!(errors.len(), 6, "{errors:?}");
        assert!(errors[0].starts_with("expected `+` and an event"));
        assert!(errors[1].starts_with("a guard is one method name"));
        assert!(errors[2].starts_with("an event carries one payload type"));
        assert!(errors[3].starts_with("write `E` for an event without payload"));
        assert!(errors[4].starts_with("`*` goes before the first source state"));
        assert_eq!(errors[5], "expected `,` after the target state");
    }

    #[test]
    fn block_attributes_are_checked() {
        let (machine, errors) = parse(quote! {
            machine M {
                states { #[derive(Debug)] A, #[terminal(x)] B }
                events { #[terminal] E }
                *A + E => B,
            }
        });
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(machine.unwrap().complete);
    }

    #[test]
    fn a_wildcard_source_parses_alone() {
        let (machine, errors) = parse(quote! {
            machine M { *A + E => B, _ + Cancel [ok] / refund => C }
        });
        assert!(errors.is_empty(), "{errors:?}");
        let machine = machine.unwrap();
        let line = transitions(&machine)[1];
        assert!(line.wildcard.is_some() && line.sources.is_empty());
        let (_, errors) = parse(quote! {
            machine M { *_ + E => B, _ | A + E => B, _ + after(1 s) => B }
        });
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[0].starts_with("`*` marks one named initial state"));
        assert!(errors[1].starts_with("`_` already stands for every state"));
        assert!(errors[2].starts_with("a wildcard `_` takes an event"));
    }

    #[test]
    fn states_carry_entry_and_exit_actions() {
        let (machine, errors) = parse(quote! {
            machine M {
                states { #[entry(notify)] #[exit(stop_clock)] B, #[entry] C, #[exit(a, b)] D }
                events { #[entry(x)] E }
                *A + E => B,
            }
        });
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[0].starts_with("`#[entry(..)]` names one action method"));
        assert!(errors[1].starts_with("`#[exit(..)]` names one action method"));
        assert!(errors[2].starts_with("`#[entry(..)]` names a state's entry action"));
        let machine = machine.unwrap();
        let Item::States(states) = &machine.items[0] else {
            panic!("states block")
        };
        assert_eq!(states.entries[0].entry[0].action, "notify");
        assert_eq!(states.entries[0].exit[0].action, "stop_clock");
    }

    #[test]
    fn parents_group_states_and_mark_their_initial_child() {
        let (machine, errors) = parse(quote! {
            machine M {
                states {
                    Created,
                    /// Paid for.
                    #[entry(open)] Active { *Paid, Shipping { *Packed, Sent } }
                    Done,
                }
                *Created + Pay => Active,
            }
        });
        assert!(errors.is_empty(), "{errors:?}");
        let machine = machine.unwrap();
        let Item::States(states) = &machine.items[0] else {
            panic!("states block")
        };
        let names: Vec<String> = states.entries.iter().map(|e| e.name.to_string()).collect();
        assert_eq!(names, ["Created", "Active", "Done"]);
        let active = &states.entries[1];
        assert_eq!(active.entry[0].action, "open");
        let children = active.children.as_ref().unwrap();
        assert!(children[0].initial.is_some() && children[1].initial.is_none());
        assert_eq!(children[1].children.as_ref().unwrap().len(), 2);
    }

    #[test]
    fn parent_misuse_is_reported_at_the_token() {
        let (_, errors) = parse(quote! {
            machine M {
                states { *A, Empty { }, #[terminal] #[renamed_from(X)] P { B } }
                *A + E => B,
            }
        });
        assert_eq!(errors.len(), 4, "{errors:?}");
        assert!(errors[0].starts_with("`*` in `states { }` marks a parent's initial child"));
        assert!(errors[1].starts_with("`Empty { }` groups no state"));
        assert!(errors[2].starts_with("`#[terminal]` does not apply to parent `P`"));
        assert!(errors[3].starts_with("`#[renamed_from]` does not apply to parent `P`"));
    }

    #[test]
    fn header_errors_stop_parsing() {
        let (machine, errors) = parse(quote!(pub Order { *A + E => B }));
        assert!(machine.is_none());
        assert_eq!(
            errors,
            ["expected `machine`, as in `pub machine Order { *Created + Pay => Paid }`"]
        );
        let (machine, errors) = parse(quote!(#[derive(Debug)] machine M { *A + E => B }));
        assert!(machine.is_none());
        assert_eq!(errors, ["only doc comments are supported on a machine"]);
    }
}
