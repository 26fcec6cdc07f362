//! A self-contained log–log line chart in SVG (no plotting dependency).
//!
//! Invariant: pure string building; the same series give the same bytes.

use std::fmt::Write as _;

pub struct Series {
    pub name: String,
    /// (x, y) points, x and y > 0.
    pub points: Vec<(f64, f64)>,
    pub dashed: bool,
}

const COLORS: &[&str] = &[
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

const W: f64 = 760.0;
const H: f64 = 480.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 250.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;

fn decades(lo: f64, hi: f64) -> (i32, i32) {
    (lo.log10().floor() as i32, hi.log10().ceil() as i32)
}

fn label(v: f64) -> String {
    if v >= 1000.0 {
        format!("{}k", v / 1000.0)
    } else if v >= 1.0 {
        format!("{v}")
    } else {
        format!("{v:.2}")
    }
}

/// A chart of `series` with logarithmic axes.
pub fn chart(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> String {
    let f = Frame::fit(series);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{title}</text>"#,
        LEFT + f.pw / 2.0
    );
    x_grid(&mut s, &f);
    y_grid(&mut s, &f);
    axes(&mut s, &f, x_label, y_label);
    lines(&mut s, &f, series);
    s.push_str("</svg>\n");
    s
}

/// The plot area: whole decades on both axes covering every point, and
/// the mapping of values to pixels.
struct Frame {
    x0: i32,
    x1: i32,
    y0: i32,
    y1: i32,
    pw: f64,
    ph: f64,
}

impl Frame {
    fn fit(series: &[Series]) -> Frame {
        let all = || series.iter().flat_map(|s| s.points.iter());
        let fold = |f: fn(&(f64, f64)) -> f64, min: bool| {
            all()
                .map(f)
                .filter(|v| *v > 0.0)
                .fold(if min { f64::MAX } else { 0.0 }, |a, b| {
                    if min { a.min(b) } else { a.max(b) }
                })
        };
        let (x0, x1) = decades(
            fold(|p| p.0, true).min(10.0),
            fold(|p| p.0, false).max(100.0),
        );
        let (y0, y1) = decades(fold(|p| p.1, true).min(1.0), fold(|p| p.1, false).max(10.0));
        Frame {
            x0,
            x1: x1.max(x0 + 1),
            y0,
            y1: y1.max(y0 + 1),
            pw: W - LEFT - RIGHT,
            ph: H - TOP - BOTTOM,
        }
    }

    fn sx(&self, x: f64) -> f64 {
        LEFT + (x.log10() - f64::from(self.x0)) / f64::from(self.x1 - self.x0) * self.pw
    }

    fn sy(&self, y: f64) -> f64 {
        TOP + self.ph - (y.log10() - f64::from(self.y0)) / f64::from(self.y1 - self.y0) * self.ph
    }
}

/// Vertical grid lines and x ticks: each decade, with 2 and 5 as minor lines.
fn x_grid(s: &mut String, f: &Frame) {
    for d in f.x0..=f.x1 {
        for m in [1.0, 2.0, 5.0] {
            let v = m * 10f64.powi(d);
            if d == f.x1 && m > 1.0 {
                continue;
            }
            let x = f.sx(v);
            let (stroke, w) = if m == 1.0 {
                ("#bbb", 1.0)
            } else {
                ("#eee", 0.7)
            };
            let _ = writeln!(
                s,
                r#"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="{stroke}" stroke-width="{w}"/>"#,
                TOP + f.ph
            );
            if m == 1.0 {
                let _ = writeln!(
                    s,
                    r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                    TOP + f.ph + 16.0,
                    label(v)
                );
            }
        }
    }
}

/// Horizontal grid lines and y ticks, as [`x_grid`].
fn y_grid(s: &mut String, f: &Frame) {
    for d in f.y0..=f.y1 {
        for m in [1.0, 2.0, 5.0] {
            let v = m * 10f64.powi(d);
            if d == f.y1 && m > 1.0 {
                continue;
            }
            let y = f.sy(v);
            let (stroke, w) = if m == 1.0 {
                ("#bbb", 1.0)
            } else {
                ("#eee", 0.7)
            };
            let _ = writeln!(
                s,
                r#"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{stroke}" stroke-width="{w}"/>"#,
                LEFT + f.pw
            );
            if m == 1.0 {
                let _ = writeln!(
                    s,
                    r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                    LEFT - 6.0,
                    y + 4.0,
                    label(v)
                );
            }
        }
    }
}

/// The plot's border and the axis labels.
fn axes(s: &mut String, f: &Frame, x_label: &str, y_label: &str) {
    let _ = writeln!(
        s,
        r##"<rect x="{LEFT}" y="{TOP}" width="{}" height="{}" fill="none" stroke="#333"/>"##,
        f.pw, f.ph
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{x_label}</text>"#,
        LEFT + f.pw / 2.0,
        H - 12.0
    );
    let _ = writeln!(
        s,
        r#"<text x="16" y="{:.1}" text-anchor="middle" transform="rotate(-90 16 {:.1})">{y_label}</text>"#,
        TOP + f.ph / 2.0,
        TOP + f.ph / 2.0
    );
}

/// Each series as a line with its points, and its legend entry.
fn lines(s: &mut String, f: &Frame, series: &[Series]) {
    for (i, ser) in series.iter().enumerate() {
        let color = COLORS.get(i % COLORS.len()).copied().unwrap_or("#000");
        let dash = if ser.dashed {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        let pts: Vec<String> = ser
            .points
            .iter()
            .filter(|(x, y)| *x > 0.0 && *y > 0.0)
            .map(|(x, y)| format!("{:.1},{:.1}", f.sx(*x), f.sy(*y)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"{dash}/>"#,
            pts.join(" ")
        );
        for (x, y) in ser.points.iter().filter(|(x, y)| *x > 0.0 && *y > 0.0) {
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{color}"><title>{}: N={x} {y:.1}</title></circle>"#,
                f.sx(*x),
                f.sy(*y),
                ser.name
            );
        }
        let ly = TOP + 10.0 + 20.0 * i as f64;
        let lx = LEFT + f.pw + 15.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{color}" stroke-width="2"{dash}/>"#,
            lx + 24.0
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
            lx + 30.0,
            ly + 4.0,
            ser.name
        );
    }
}
