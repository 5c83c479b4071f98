//! SVG, laid out in pure Rust by `layout-rs`.

use std::collections::HashMap;

use layout::backends::svg::SVGWriter;
use layout::core::base::Orientation;
use layout::core::color::Color;
use layout::core::format::{ClipHandle, RenderBackend};
use layout::core::geometry::Point;
use layout::core::style::{LineStyleKind, StyleAttr};
use layout::std_shapes::render::get_shape_size;
use layout::std_shapes::shapes::{Arrow, Element, LineEndKind, ShapeKind};
use layout::topo::layout::VisualGraph;

use super::{children, edge_label, parent_actions, state_actions};
use crate::definition::{Definition, On, ParentInfo, StateInfo};

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

/// Blank space kept around the drawing, in pixels.
const MARGIN: f64 = 8.;

/// Gap between an edge and its label, in pixels.
const LABEL_GAP: f64 = 3.;

/// Space between a parent's frame and what it encloses, in pixels.
const FRAME_PAD: f64 = 10.;

/// Width of one character of a sans-serif font, as a share of the font size: what the
/// drawing's bounds allow for text (`layout-rs` reserves a whole font size per
/// character when it places nodes).
const CHAR_WIDTH: f64 = 0.6;

/// Renders a definition as a standalone SVG document, laid out left to right without
/// Graphviz.
///
/// The drawing matches [`dot`](super::dot()): states are rounded boxes, terminal states
/// have a double outline, a small filled circle leads into the initial state, edges are
/// labelled `Event [guard] / action` beside (never across) the edge, and timer edges
/// are dashed and labelled `after 30 min`. A parent (composite) state is a grey
/// rectangle, labelled with its name and actions, around its states; the layout knows
/// no clusters, so the frame is the box round its states as placed, and a parent's line
/// is one arrow per state it applies to, labelled `Cancel (Active)`. Text is sans-serif and the picture is cropped
/// to the drawing with a small margin; the document has no blank line, so it can be
/// inlined in Markdown (the rustdoc of a `state_machine!` type does). The output is deterministic, so it can be committed next to the code
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
///         StateInfo { name: "Open", doc: "", initial: true, terminal: false, renamed_from: &[], entry: None, exit: None, parent: None },
///         StateInfo { name: "Locked", doc: "", initial: false, terminal: true, renamed_from: &[], entry: None, exit: None, parent: None },
///     ],
///     parents: &[],
///     events: &[EventInfo { name: "Lock", doc: "", payload: None, renamed_from: &[] }],
///     edges: &[Edge {
///         from: "Open",
///         on: On::Event("Lock"),
///         guard: Some("is_closed"),
///         action: None,
///         to: "Locked",
///         from_wildcard: false,
///         from_parent: None,
///         to_parent: None,
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
/// #         StateInfo { name: "Open", doc: "", initial: true, terminal: false, renamed_from: &[], entry: None, exit: None, parent: None },
/// #         StateInfo { name: "Locked", doc: "", initial: false, terminal: true, renamed_from: &[], entry: None, exit: None, parent: None },
/// #     ],
/// #     parents: &[],
/// #     events: &[EventInfo { name: "Lock", doc: "", payload: None, renamed_from: &[] }],
/// #     edges: &[Edge { from: "Open", on: On::Event("Lock"), guard: None, action: None, to: "Locked", from_wildcard: false, from_parent: None, to_parent: None }],
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
        let mut label = edge_label(edge);
        if let Some(parent) = edge.from_parent {
            label.push_str(&format!(" ({parent})"));
        }
        graph.add_edge(arrow(line, &label, color), from, to);
    }

    let mut canvas = draw(&mut graph);
    let (_, top) = children(definition, None);
    for parent in top {
        frame(definition, parent, &graph, &states, &mut canvas);
    }
    let mut out = canvas.finish();
    for (text, href) in links {
        link_text(&mut out, &text, &href);
    }
    out
}

/// Draws the frame of `parent` round its states and nested frames, as laid out; returns
/// its corners (`None` for a parent with nothing inside).
fn frame(
    definition: &Definition,
    parent: &ParentInfo,
    graph: &VisualGraph,
    nodes: &HashMap<&str, layout::adt::dag::NodeHandle>,
    canvas: &mut Canvas,
) -> Option<(Point, Point)> {
    let (states, parents) = children(definition, Some(parent.name));
    let mut corners: Vec<(Point, Point)> = states
        .filter_map(|s| nodes.get(s.name))
        .map(|&node| graph.pos(node).bbox(false))
        .collect();
    let inner: Vec<&ParentInfo> = parents.collect();
    for inner in inner {
        corners.extend(frame(definition, inner, graph, nodes, canvas));
    }
    let lo = corners
        .iter()
        .map(|c| c.0)
        .reduce(|a, b| Point::new(a.x.min(b.x), a.y.min(b.y)))?;
    let hi = corners
        .iter()
        .map(|c| c.1)
        .reduce(|a, b| Point::new(a.x.max(b.x), a.y.max(b.y)))?;
    let mut label = parent.name.to_owned();
    for action in parent_actions(parent) {
        label.push('\n');
        label.push_str(&action);
    }
    let lines = label.lines().count() as f64;
    let font = FONT_SIZE as f64;
    // The label sits in a band at the top of the frame, above what it encloses.
    let band = lines * font + FRAME_PAD / 2.;
    let lo = Point::new(lo.x - FRAME_PAD, lo.y - FRAME_PAD - band);
    let hi = Point::new(hi.x + FRAME_PAD, hi.y + FRAME_PAD);
    let grey = Color::fast("gray");
    let look = StyleAttr::new(grey, 1, None, ROUNDED, FONT_SIZE);
    canvas.draw_rect(lo, hi.sub(lo), &look, None, None);
    // Top left, as UML names a composite state; `draw_text` centres on the point.
    let width = label.lines().map(|l| l.chars().count()).max().unwrap_or(0) as f64;
    let at = Point::new(
        lo.x + FRAME_PAD + width * font * CHAR_WIDTH / 2.,
        lo.y + FRAME_PAD / 2. + lines * font / 2.,
    );
    let text = StyleAttr::new(black(), 1, None, 0, FONT_SIZE);
    canvas.draw_text(at, &label, &text);
    Some((lo, hi))
}

/// Lays the graph out and draws it, labels still pending.
fn draw(graph: &mut VisualGraph) -> Canvas {
    let mut canvas = Canvas::default();
    graph.do_it(false, false, false, &mut canvas);
    canvas
}

/// `layout-rs`'s SVG writer, with three changes to its drawing: an edge's label sits
/// beside the edge instead of on it (the layout routes the edge through the label's
/// centre), the picture is cropped to what is drawn, and text is sans-serif.
#[derive(Default)]
struct Canvas {
    svg: SVGWriter,
    /// Whether the last call drew a state's shape, whose text comes next; any other
    /// text is an edge label.
    after_shape: bool,
    /// Edge labels, drawn last, once the edges through them are known.
    labels: Vec<Label>,
    /// Points along each edge drawn, for placing labels clear of them.
    edges: Vec<Vec<Point>>,
    /// Top-left and bottom-right corner of everything drawn so far.
    bounds: Option<(Point, Point)>,
}

struct Label {
    at: Point,
    text: String,
    look: StyleAttr,
}

impl Label {
    fn size(&self) -> Point {
        let lines = self.text.lines().count().max(1) as f64;
        let chars = self
            .text
            .lines()
            .map(|l| l.chars().count())
            .max()
            .unwrap_or(0) as f64;
        let font = self.look.font_size as f64;
        Point::new(chars * font * CHAR_WIDTH, lines * font)
    }
}

impl Canvas {
    fn include(&mut self, a: Point, b: Point) {
        let (lo, hi) = (
            Point::new(a.x.min(b.x), a.y.min(b.y)),
            Point::new(a.x.max(b.x), a.y.max(b.y)),
        );
        self.bounds = Some(match self.bounds {
            None => (lo, hi),
            Some((min, max)) => (
                Point::new(min.x.min(lo.x), min.y.min(lo.y)),
                Point::new(max.x.max(hi.x), max.y.max(hi.y)),
            ),
        });
    }

    /// Text centred on `at`, as far as the bounds go.
    fn include_text(&mut self, at: Point, size: Point) {
        let half = Point::new(size.x / 2., size.y / 2. + 2.);
        self.include(at.sub(half), at.add(half));
    }

    /// How far up `label` moves so that its own edge (the one drawn through its
    /// centre) passes under it across its whole width.
    fn lift(&self, label: &Label) -> f64 {
        let size = label.size();
        let at = label.at;
        let distance = |p: &Point| (p.x - at.x).hypot(p.y - at.y);
        let own = self.edges.iter().min_by(|a, b| {
            let near = |curve: &&Vec<Point>| curve.iter().map(distance).fold(f64::MAX, f64::min);
            near(a).total_cmp(&near(b))
        });
        let bottom = at.y + size.y / 2. + LABEL_GAP;
        let highest = own
            .into_iter()
            .flatten()
            .filter(|p| (p.x - at.x).abs() <= size.x / 2. + LABEL_GAP)
            .map(|p| p.y)
            .fold(at.y, f64::min);
        bottom - highest
    }

    /// The finished document: labels drawn, cropped to the drawing, sans-serif.
    fn finish(mut self) -> String {
        for label in std::mem::take(&mut self.labels) {
            let at = Point::new(label.at.x, label.at.y - self.lift(&label));
            self.include_text(at, label.size());
            self.svg.draw_text(at, &label.text, &label.look);
        }
        let out = self.svg.finalize();
        let (min, max) = self.bounds.unwrap_or((Point::zero(), Point::zero()));
        let (x, y) = (min.x - MARGIN, min.y - MARGIN);
        let (w, h) = (max.x - min.x + 2. * MARGIN, max.y - min.y + 2. * MARGIN);
        let header = format!(
            "<svg width=\"{w}\" height=\"{h}\" viewBox=\"{x} {y} {w} {h}\" \
             xmlns=\"http://www.w3.org/2000/svg\">"
        );
        let mut out = match (
            out.find("<svg "),
            out.find(" xmlns=\"http://www.w3.org/2000/svg\">"),
        ) {
            (Some(start), Some(end)) => {
                let end = end + " xmlns=\"http://www.w3.org/2000/svg\">".len();
                format!("{}{header}{}", &out[..start], &out[end..])
            }
            _ => out,
        };
        out = out.replace("font-family: Times, serif;", "font-family: sans-serif;");
        // No blank lines: Markdown (a rustdoc page) ends an inline HTML block at one.
        out.lines()
            .filter(|l| !l.trim().is_empty())
            .collect::<Vec<_>>()
            .join("\n")
            + "\n"
    }
}

impl RenderBackend for Canvas {
    fn draw_rect(
        &mut self,
        xy: Point,
        size: Point,
        look: &StyleAttr,
        properties: Option<String>,
        clip: Option<ClipHandle>,
    ) {
        self.include(xy, xy.add(size));
        self.after_shape = true;
        self.svg.draw_rect(xy, size, look, properties, clip);
    }

    fn draw_line(
        &mut self,
        start: Point,
        stop: Point,
        look: &StyleAttr,
        properties: Option<String>,
    ) {
        self.include(start, stop);
        self.after_shape = false;
        self.svg.draw_line(start, stop, look, properties);
    }

    fn draw_circle(
        &mut self,
        xy: Point,
        size: Point,
        look: &StyleAttr,
        properties: Option<String>,
    ) {
        let half = Point::new(size.x / 2., size.y / 2.);
        self.include(xy.sub(half), xy.add(half));
        self.after_shape = true;
        self.svg.draw_circle(xy, size, look, properties);
    }

    fn draw_text(&mut self, xy: Point, text: &str, look: &StyleAttr) {
        if std::mem::take(&mut self.after_shape) {
            let lines = text.lines().count().max(1) as f64;
            let chars = text.lines().map(|l| l.chars().count()).max().unwrap_or(0) as f64;
            let font = look.font_size as f64;
            self.include_text(xy, Point::new(chars * font * CHAR_WIDTH, lines * font));
            self.svg.draw_text(xy, text, look);
            return;
        }
        self.labels.push(Label {
            at: xy,
            text: text.to_owned(),
            look: look.clone(),
        });
    }

    fn draw_arrow(
        &mut self,
        path: &[(Point, Point)],
        dashed: bool,
        head: (bool, bool),
        look: &StyleAttr,
        properties: Option<String>,
        text: &str,
    ) {
        let curve = sample_curve(path);
        for &point in &curve {
            self.include(point, point);
        }
        self.edges.push(curve);
        self.after_shape = false;
        self.svg
            .draw_arrow(path, dashed, head, look, properties, text);
    }

    fn create_clip(&mut self, xy: Point, size: Point, rounded_px: usize) -> ClipHandle {
        self.svg.create_clip(xy, size, rounded_px)
    }
}

/// Points along an edge as `layout-rs` draws it: `M p0 C c0, c1, p1 S c2, p2 ...`, the
/// first pair being a point and its control point, each later pair a control point and
/// a point.
fn sample_curve(path: &[(Point, Point)]) -> Vec<Point> {
    const STEPS: usize = 16;
    let mut points = Vec::new();
    let Some(&(mut start, mut control)) = path.first() else {
        return points;
    };
    points.push(start);
    for (i, &(c2, end)) in path.iter().enumerate().skip(1) {
        // An `S` segment's first control point mirrors the last one about the start.
        let c1 = if i == 1 {
            control
        } else {
            start.add(start.sub(control))
        };
        for step in 1..=STEPS {
            let t = step as f64 / STEPS as f64;
            let u = 1. - t;
            let at = |a: f64, b: f64, c: f64, d: f64| {
                u * u * u * a + 3. * u * u * t * b + 3. * u * t * t * c + t * t * t * d
            };
            points.push(Point::new(
                at(start.x, c1.x, c2.x, end.x),
                at(start.y, c1.y, c2.y, end.y),
            ));
        }
        (start, control) = (end, c2);
    }
    points
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
                    parent: None,
                },
                StateInfo {
                    name: "On",
                    doc: "",
                    initial: false,
                    terminal: false,
                    renamed_from: &[],
                    entry: None,
                    exit: None,
                    parent: None,
                },
            ],
            parents: &[],
            events: &[],
            edges: &[
                Edge {
                    from: "Off",
                    on: On::Event("Flip"),
                    guard: None,
                    action: None,
                    to: "On",
                    from_wildcard: false,
                    from_parent: None,
                    to_parent: None,
                },
                Edge {
                    from: "On",
                    on: On::Event("Flip"),
                    guard: None,
                    action: None,
                    to: "Off",
                    from_wildcard: false,
                    from_parent: None,
                    to_parent: None,
                },
                Edge {
                    from: "On",
                    on: On::Event("Dim"),
                    guard: None,
                    action: None,
                    to: "On",
                    from_wildcard: false,
                    from_parent: None,
                    to_parent: None,
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
    fn svg_frames_each_parent_round_its_states() {
        let out = svg(&crate::diagram::fixture::COMPOSITE);
        assert!(out.contains(">Active</tspan>"), "{out}");
        assert!(out.contains(">entry / open_case</tspan>"), "{out}");
        assert!(out.contains(">Packing</tspan>"), "{out}");
        // Two frames and five state boxes; a parent's line is one arrow per state.
        assert_eq!(out.matches("stroke=\"#808080ff\"").count(), 2, "{out}");
        assert_eq!(out.matches(">Cancel (Active)<").count(), 3, "{out}");
    }

    #[test]
    fn svg_text_is_sans_serif_and_has_no_blank_line() {
        let out = svg(&ORDER);
        assert!(out.contains("font-family: sans-serif;"), "{out}");
        assert!(!out.contains("Times"), "{out}");
        assert!(out.lines().all(|l| !l.trim().is_empty()), "{out}");
    }

    #[test]
    fn svg_is_cropped_to_the_drawing() {
        let out = svg(&ORDER);
        let view_box: Vec<f64> = out
            .split("viewBox=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap()
            .split(' ')
            .map(|n| n.parse().unwrap())
            .collect();
        // The start marker is the leftmost shape: a circle of START_SIZE at (cx, cy).
        let marker = out.split("<ellipse cx=\"").last().unwrap();
        let cx: f64 = marker.split('"').next().unwrap().parse().unwrap();
        assert_eq!(cx - START_SIZE / 2. - MARGIN, view_box[0], "{out}");
        let header = format!("width=\"{}\" height=\"{}\"", view_box[2], view_box[3]);
        assert!(out.contains(&header), "{out}");
    }

    #[test]
    fn edge_labels_sit_clear_of_their_own_edge() {
        let mut graph = VisualGraph::new(Orientation::LeftToRight);
        let look = StyleAttr::new(black(), 1, Some(Color::fast("white")), 0, FONT_SIZE);
        let node = |graph: &mut VisualGraph, name: &str| {
            let shape = ShapeKind::new_box(name);
            let size = get_shape_size(Orientation::LeftToRight, &shape, FONT_SIZE, false);
            graph.add_node(Element::create(
                shape,
                look.clone(),
                Orientation::LeftToRight,
                size,
            ))
        };
        let (a, b, c) = (
            node(&mut graph, "A"),
            node(&mut graph, "B"),
            node(&mut graph, "C"),
        );
        for (from, to, label) in [
            (a, b, "a long label on a sloped edge"),
            (a, c, "x"),
            (b, c, "y"),
        ] {
            graph.add_edge(arrow(LineStyleKind::Normal, label, black()), from, to);
        }
        let canvas = draw(&mut graph);
        assert_eq!(canvas.labels.len(), 3);
        for label in &canvas.labels {
            let size = label.size();
            let centre = label.at.y - canvas.lift(label);
            let own = canvas
                .edges
                .iter()
                .find(|curve| {
                    curve
                        .iter()
                        .any(|p| (p.x - label.at.x).abs() < 40. && (p.y - label.at.y).abs() < 40.)
                })
                .expect("the edge through the label");
            for p in own
                .iter()
                .filter(|p| (p.x - label.at.x).abs() <= size.x / 2.)
            {
                assert!(
                    p.y >= centre + size.y / 2.,
                    "{:?} crosses label {:?} at {centre}",
                    p,
                    label.text
                );
            }
        }
    }

    #[test]
    fn svg_output_is_reproducible() {
        assert_eq!(svg(&ORDER), svg(&ORDER));
    }
}
