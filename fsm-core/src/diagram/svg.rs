//! SVG, laid out in pure Rust by `layout-rs`.

use std::collections::HashMap;

use layout::backends::svg::SVGWriter;
use layout::core::base::Orientation;
use layout::core::color::Color;
use layout::core::geometry::Point;
use layout::core::style::{LineStyleKind, StyleAttr};
use layout::std_shapes::render::get_shape_size;
use layout::std_shapes::shapes::{Arrow, Element, LineEndKind, ShapeKind};
use layout::topo::layout::VisualGraph;

use super::{edge_label, state_actions};
use crate::definition::{Definition, On, StateInfo};

/// One font size for every text: `layout-rs` emits one CSS class per size in hash-map
/// order, so a single size keeps the output byte-for-byte reproducible. It is 15
/// because labels moved onto the layout's own filler nodes take their default, 15.
const FONT_SIZE: usize = 15;

/// Corner radius of a state's box, in pixels.
const ROUNDED: usize = 10;

/// Extra height of a state's shape over its text, in pixels.
const BOX_GROW: f64 = 10.;

/// Diameter of the start marker, in pixels.
const START_SIZE: f64 = 14.;

/// Renders a definition as a standalone SVG document, laid out left to right without
/// Graphviz.
///
/// The drawing matches [`dot`](super::dot()): states are rounded boxes, terminal states
/// have a double outline, a small filled circle leads into the initial state, edges are
/// labelled `Event [guard] / action`, and timer edges are dashed and labelled
/// `after 30 min`. The output is deterministic, so it can be committed next to the code
/// and diffed.
///
/// # Examples
///
/// ```
/// use fsm_core::{Definition, Edge, EventInfo, On, StateInfo};
///
/// static DOOR: Definition = Definition {
///     name: "Door",
///     doc: "",
///     context: "()",
///     effect: None,
///     states: &[
///         StateInfo { name: "Open", doc: "", initial: true, terminal: false, renamed_from: &[], entry: None, exit: None },
///         StateInfo { name: "Locked", doc: "", initial: false, terminal: true, renamed_from: &[], entry: None, exit: None },
///     ],
///     events: &[EventInfo { name: "Lock", doc: "", payload: None, renamed_from: &[] }],
///     edges: &[Edge {
///         from: "Open",
///         on: On::Event("Lock"),
///         guard: Some("is_closed"),
///         action: None,
///         to: "Locked",
///         from_wildcard: false,
///     }],
/// };
///
/// let svg = fsm_core::diagram::svg(&DOOR);
/// assert!(svg.contains("<svg"));
/// assert!(svg.contains("Lock [is_closed]"));
/// ```
pub fn svg(definition: &Definition) -> String {
    svg_marked(definition, |_| StateMark::default())
}

/// What [`svg_marked`] adds to one state: a caption under its name, a fill colour, a
/// link.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateMark {
    /// A second line under the state's name, e.g. how many instances are in it.
    pub caption: Option<String>,
    /// The fill colour as `0xRRGGBB` (white when `None`), e.g. to flag stuck instances.
    pub fill: Option<u32>,
    /// Where the state's label links to (escaped here).
    pub href: Option<String>,
}

/// [`svg`], with each state marked as `mark` says: an operator console draws the
/// machine with each state's count, flags the states where instances are stuck, and
/// links each state to its instances.
///
/// # Examples
///
/// ```
/// use fsm_core::diagram::{StateMark, svg_marked};
/// # use fsm_core::{Definition, Edge, EventInfo, On, StateInfo};
/// # static DOOR: Definition = Definition {
/// #     name: "Door", doc: "", context: "()", effect: None,
/// #     states: &[
/// #         StateInfo { name: "Open", doc: "", initial: true, terminal: false, renamed_from: &[], entry: None, exit: None },
/// #         StateInfo { name: "Locked", doc: "", initial: false, terminal: true, renamed_from: &[], entry: None, exit: None },
/// #     ],
/// #     events: &[EventInfo { name: "Lock", doc: "", payload: None, renamed_from: &[] }],
/// #     edges: &[Edge { from: "Open", on: On::Event("Lock"), guard: None, action: None, to: "Locked", from_wildcard: false }],
/// # };
///
/// let svg = svg_marked(&DOOR, |state| StateMark {
///     caption: Some(format!("{} doors", state.name.len())),
///     fill: (state.name == "Open").then_some(0xffe4b5),
///     href: Some(format!("?state={}&x=<y>", state.name)),
/// });
/// assert!(svg.contains(r#"<a href="?state=Open&amp;x=&lt;y&gt;">"#));
/// assert!(svg.contains(">4 doors<"));
/// ```
pub fn svg_marked(definition: &Definition, mark: impl Fn(&StateInfo) -> StateMark) -> String {
    let dir = Orientation::LeftToRight;
    let mut graph = VisualGraph::new(dir);

    let mut states = HashMap::new();
    let mut links = Vec::new();
    for state in definition.states {
        let StateMark {
            caption,
            fill,
            href,
        } = mark(state);
        let mut label = state.name.to_owned();
        for action in state_actions(state) {
            label.push('\n');
            label.push_str(&action);
        }
        if let Some(caption) = &caption {
            // One line: a caption cannot add lines of its own.
            label.push('\n');
            label.push_str(&caption.replace(['\n', '\r'], " "));
        }
        if let Some(href) = href {
            links.push((label_text(&label), href));
        }
        // A double ellipse rather than Graphviz's double circle: a circle round a long
        // name would dwarf the rest of the diagram.
        let (shape, rounded) = if state.terminal {
            (ShapeKind::new_double_circle(&label), 0)
        } else {
            (ShapeKind::new_box(&label), ROUNDED)
        };
        let size = get_shape_size(dir, &shape, FONT_SIZE, false).add(Point::new(0., BOX_GROW));
        let fill = fill.map_or_else(|| Color::fast("white"), |rgb| Color::new((rgb << 8) | 0xff));
        let look = StyleAttr::new(black(), 1, Some(fill), rounded, FONT_SIZE);
        let node = graph.add_node(Element::create(shape, look, dir, size));
        states.insert(state.name, node);
    }

    let start_look = StyleAttr::new(black(), 1, Some(black()), 0, FONT_SIZE);
    let start_shape = ShapeKind::new_circle("");
    let start_size = Point::splat(START_SIZE);
    let start = graph.add_node(Element::create(start_shape, start_look, dir, start_size));
    for state in definition.states.iter().filter(|s| s.initial) {
        graph.add_edge(
            arrow(LineStyleKind::Normal, "", black()),
            start,
            states[state.name],
        );
    }

    for edge in definition.edges {
        // Only a hand-written definition can name a state it does not declare.
        let (Some(&from), Some(&to)) = (states.get(edge.from), states.get(edge.to)) else {
            continue;
        };
        let line = match edge.on {
            On::Event(_) => LineStyleKind::Normal,
            On::After(_) => LineStyleKind::Dashed,
        };
        // A wildcard line's edges are grey: one group, set apart from the explicit edges.
        let color = if edge.from_wildcard {
            Color::fast("gray")
        } else {
            black()
        };
        graph.add_edge(arrow(line, &edge_label(edge), color), from, to);
    }

    let mut writer = SVGWriter::new();
    graph.do_it(false, false, false, &mut writer);
    let mut out = writer.finalize();
    for (text, href) in links {
        link_text(&mut out, &text, &href);
    }
    out
}

/// The lines of `label` as `layout-rs` writes them, escaped.
fn label_text(label: &str) -> Vec<String> {
    label.lines().map(escape).collect()
}

/// Wraps the first `<text>` element whose `<tspan>` lines are `lines` (states are drawn
/// before edges) in a link to `href`.
fn link_text(svg: &mut String, lines: &[String], href: &str) {
    let mut from = 0;
    while let Some(offset) = svg[from..].find("<text ") {
        let start = from + offset;
        let Some(len) = svg[start..].find("</text>") else {
            return;
        };
        let end = start + len + "</text>".len();
        let spans: Vec<&str> = svg[start..end]
            .split("</tspan>")
            .filter_map(|part| part.rsplit_once("dy=\"1.0em\">").map(|(_, line)| line))
            .collect();
        if spans.len() == lines.len() && spans.iter().zip(lines).all(|(a, b)| *a == b) {
            svg.insert_str(end, "</a>");
            svg.insert_str(start, &format!("<a href=\"{}\">", escape(href)));
            return;
        }
        from = end;
    }
}

/// Text as XML character data or an attribute value, as `layout-rs` escapes labels.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

fn black() -> Color {
    Color::fast("black")
}

fn arrow(line: LineStyleKind, label: &str, color: Color) -> Arrow {
    let look = StyleAttr::new(color, 1, None, 0, FONT_SIZE);
    Arrow::new(
        LineEndKind::None,
        LineEndKind::Arrow,
        line,
        label,
        &look,
        &None,
        &None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::{Edge, StateInfo};
    use crate::diagram::fixture::ORDER;

    #[test]
    fn svg_is_a_standalone_document() {
        let out = svg(&ORDER);
        assert!(out.starts_with("<?xml"), "{out}");
        assert!(out.contains("<svg "));
        assert!(out.trim_end().ends_with("</svg>"));
    }

    #[test]
    fn marked_states_carry_their_caption_fill_and_link() {
        let out = svg_marked(&ORDER, |state| StateMark {
            caption: Some(format!("{} orders", state.name.len())),
            fill: (state.name == "Paid").then_some(0xffcccc),
            href: Some(format!("list?state={}&page=1", state.name)),
        });
        assert_eq!(out.matches("<a href=").count(), ORDER.states.len());
        for state in ORDER.states {
            let open = format!("<a href=\"list?state={}&amp;page=1\"><text ", state.name);
            let at = out
                .find(&open)
                .unwrap_or_else(|| panic!("{} has no link", state.name));
            let linked = &out[at..at + out[at..].find("</a>").unwrap()];
            assert!(
                linked.contains(&format!(">{}</tspan>", state.name)),
                "{linked}"
            );
            let caption = format!(">{} orders</tspan>", state.name.len());
            assert!(linked.contains(&caption), "{linked}");
        }
        assert_eq!(out.matches("fill=\"#ffccccff\"").count(), 1);
    }

    #[test]
    fn svg_shows_every_state_by_name() {
        let out = svg(&ORDER);
        for state in ORDER.states {
            assert!(
                out.contains(&format!(">{}<", state.name)),
                "{} missing",
                state.name
            );
        }
    }

    #[test]
    fn svg_labels_edges_with_event_guard_and_action() {
        let out = svg(&ORDER);
        assert!(out.contains(">Pay [amount_matches] / record_payment<"));
        assert_eq!(out.matches(">Cancel / refund_if_paid<").count(), 2);
        assert!(out.contains(">Deliver<"));
    }

    #[test]
    fn svg_labels_and_dashes_timer_edges() {
        let out = svg(&ORDER);
        assert!(out.contains(">after 30 min<"));
        assert!(out.contains("stroke-dasharray"));
    }

    #[test]
    fn svg_draws_terminal_states_with_a_double_outline() {
        // A double circle is two ellipses; the start marker is one more.
        let out = svg(&ORDER);
        let terminals = ORDER.states.iter().filter(|s| s.terminal).count();
        assert_eq!(out.matches("<ellipse").count(), 2 * terminals + 1);
    }

    #[test]
    fn svg_lays_out_cycles_and_self_loops() {
        static TOGGLE: Definition = Definition {
            name: "Toggle",
            doc: "",
            context: "()",
            effect: None,
            states: &[
                StateInfo {
                    name: "Off",
                    doc: "",
                    initial: true,
                    terminal: false,
                    renamed_from: &[],
                    entry: None,
                    exit: None,
                },
                StateInfo {
                    name: "On",
                    doc: "",
                    initial: false,
                    terminal: false,
                    renamed_from: &[],
                    entry: None,
                    exit: None,
                },
            ],
            events: &[],
            edges: &[
                Edge {
                    from: "Off",
                    on: On::Event("Flip"),
                    guard: None,
                    action: None,
                    to: "On",
                    from_wildcard: false,
                },
                Edge {
                    from: "On",
                    on: On::Event("Flip"),
                    guard: None,
                    action: None,
                    to: "Off",
                    from_wildcard: false,
                },
                Edge {
                    from: "On",
                    on: On::Event("Dim"),
                    guard: None,
                    action: None,
                    to: "On",
                    from_wildcard: false,
                },
            ],
        };
        let out = svg(&TOGGLE);
        assert_eq!(out.matches(">Flip<").count(), 2);
        assert!(out.contains(">Dim<"));
    }

    #[test]
    fn svg_lists_entry_and_exit_actions_under_the_state_name() {
        let out = svg(&crate::diagram::fixture::SHIP);
        assert!(out.contains(">entry / notify_shipped<"), "{out}");
        assert!(out.contains(">exit / stop_clock<"), "{out}");
    }

    #[test]
    fn svg_labels_wildcard_edges_as_any() {
        let out = svg(&crate::diagram::fixture::WILDCARD);
        assert_eq!(out.matches(">Cancel (any) / refund<").count(), 2);
    }

    #[test]
    fn svg_output_is_reproducible() {
        assert_eq!(svg(&ORDER), svg(&ORDER));
    }
}
