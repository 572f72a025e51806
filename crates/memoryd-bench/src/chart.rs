//! A small SVG line chart with a logarithmic x axis, for the growth curves.

use std::fmt::Write;

const W: f64 = 640.0;
const H: f64 = 360.0;
const PAD: f64 = 60.0;
const COLORS: [&str; 3] = ["#1f77b4", "#d62728", "#2ca02c"];

pub fn growth(path: &str, title: &str, series: &[(&str, Vec<(f64, f64)>)], unit: &str) -> anyhow::Result<()> {
    let points: Vec<(f64, f64)> = series.iter().flat_map(|(_, p)| p.iter().copied()).collect();
    if points.is_empty() {
        return Ok(());
    }
    let (x_min, x_max) = points.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0.log10()), b.max(p.0.log10())));
    let y_max = points.iter().map(|p| p.1).fold(0.0, f64::max) * 1.1;
    let x = |v: f64| PAD + (v.log10() - x_min) / (x_max - x_min).max(1e-9) * (W - 2.0 * PAD);
    let y = |v: f64| H - PAD - v / y_max.max(1e-9) * (H - 2.0 * PAD);
    let mut svg = String::new();
    let _ = write!(
        svg,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" font-family=\"sans-serif\" font-size=\"12\">\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\
         <text x=\"{}\" y=\"24\" text-anchor=\"middle\" font-size=\"14\">{title}</text>\
         <line x1=\"{PAD}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\
         <line x1=\"{PAD}\" y1=\"{PAD}\" x2=\"{PAD}\" y2=\"{}\" stroke=\"black\"/>\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{unit} (log scale)</text>\
         <text x=\"{PAD}\" y=\"{}\" text-anchor=\"end\">0</text>\
         <text x=\"{}\" y=\"{}\" text-anchor=\"end\">{:.0} µs</text>",
        W / 2.0,
        H - PAD,
        W - PAD,
        H - PAD,
        H - PAD,
        W / 2.0,
        H - 15.0,
        H - PAD + 4.0,
        PAD - 4.0,
        PAD + 4.0,
        y_max
    );
    let mut ticks: Vec<f64> = points.iter().map(|p| p.0).collect();
    ticks.sort_by(f64::total_cmp);
    ticks.dedup();
    for t in ticks {
        let _ = write!(svg, "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{t}</text>", x(t), H - PAD + 16.0);
    }
    for (i, (name, pts)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let line: Vec<String> = pts.iter().map(|p| format!("{:.1},{:.1}", x(p.0), y(p.1))).collect();
        let _ = write!(
            svg,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>",
            line.join(" ")
        );
        for p in pts {
            let _ = write!(svg, "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{color}\"/>", x(p.0), y(p.1));
        }
        let _ = write!(
            svg,
            "<text x=\"{}\" y=\"{}\" fill=\"{color}\">{name}</text>",
            W - PAD - 170.0,
            PAD + 16.0 * i as f64
        );
    }
    svg.push_str("</svg>\n");
    std::fs::create_dir_all("docs")?;
    std::fs::write(path, svg)?;
    Ok(())
}
