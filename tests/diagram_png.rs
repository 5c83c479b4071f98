//! The order diagram's SVG renders as an image: rasterised with resvg (pure Rust) to
//! `order.png` (next to `order.svg`) in the target directory's `tmp/`, the drawing that
//! `docs/order.png` and `docs/order.svg` hold; and so does a machine with parent
//! (composite) states, to `composite.png`.

#[path = "../examples/shared/order.rs"]
#[allow(dead_code)]
mod order;

use order::Order;

/// Rasterises `svg` at twice its size; the pixmap and the size it had in the SVG.
fn rasterise(svg: &str) -> (resvg::tiny_skia::Pixmap, resvg::tiny_skia::Size) {
    let mut options = resvg::usvg::Options::default();
    let fonts = options.fontdb_mut();
    fonts.load_system_fonts();
    // `sans-serif` maps to Arial unless told otherwise; take what this system has.
    let family = fonts
        .faces()
        .find(|face| face.families.iter().any(|(name, _)| name == "DejaVu Sans"))
        .or_else(|| fonts.faces().next())
        .and_then(|face| face.families.first().map(|(name, _)| name.clone()));
    if let Some(family) = family {
        fonts.set_sans_serif_family(family);
    }
    let tree = resvg::usvg::Tree::from_str(svg, &options).expect("the SVG parses");
    let size = tree.size();
    let (width, height) = (size.width() * 2., size.height() * 2.);
    let mut pixmap = resvg::tiny_skia::Pixmap::new(width.ceil() as u32, height.ceil() as u32)
        .expect("a non-empty drawing");
    pixmap.fill(resvg::tiny_skia::Color::WHITE);
    resvg::render(
        &tree,
        resvg::tiny_skia::Transform::from_scale(2., 2.),
        &mut pixmap.as_mut(),
    );
    (pixmap, size)
}

#[test]
fn the_order_diagram_rasterises_to_a_png() {
    let svg = fsm::diagram::svg(<Order as fsm::StateMachine>::DEFINITION);
    let (pixmap, size) = rasterise(&svg);
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    std::fs::write(dir.join("order.svg"), &svg).expect("write the SVG");
    pixmap
        .save_png(dir.join("order.png"))
        .expect("write the PNG");
    assert!(size.width() > 100. && size.height() > 50., "{size:?}");
    let inked = pixmap.pixels().iter().filter(|p| p.red() < 128).count();
    assert!(inked > 1000, "only {inked} dark pixels: nothing drawn");
}

fsm::state_machine! {
    /// An order whose fulfilment is a parent state with a nested one.
    machine Fulfilment {
        states {
            #[entry(open_case)]
            #[exit(close_case)]
            Active {
                *Paid,
                Packing { *Picking, Packed }
                Shipped,
            }
        }
        *Cart + Checkout => Active,
        Cart + Abandon => Abandoned,
        Paid + Pack => Packing,
        Picking + Pick => Packed,
        Packed + Ship => Shipped,
        Shipped + Deliver => Delivered,
        Packing + Unpack => Paid,
        Active + Cancel => Cancelled,
    }
}

impl FulfilmentRules for () {
    fn open_case(&mut self, _: &mut fsm::Effects<()>) {}
    fn close_case(&mut self, _: &mut fsm::Effects<()>) {}
}

#[test]
fn a_diagram_with_parent_frames_rasterises_to_a_png() {
    let svg = fsm::diagram::svg(<Fulfilment as fsm::StateMachine>::DEFINITION);
    let (pixmap, size) = rasterise(&svg);
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    std::fs::write(dir.join("composite.svg"), &svg).expect("write the SVG");
    pixmap
        .save_png(dir.join("composite.png"))
        .expect("write the PNG");
    assert!(
        svg.contains(">Active</tspan>") && svg.contains(">Packing</tspan>"),
        "{svg}"
    );
    assert!(svg.contains(">entry / open_case</tspan>"), "{svg}");
    assert!(size.width() > 100. && size.height() > 50., "{size:?}");
}
