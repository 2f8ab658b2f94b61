//! The timeline chart, written by hand: one strip of probes (green
//! succeeded, red failed), the fault, the budget and the recovery as
//! vertical lines, and converge's events as labelled dots below, on one
//! time axis in seconds from the fault. Plain SVG 1.1, no script, so it
//! shows in a browser, a Git forge's Markdown view, or an image viewer.

use std::fmt::Write as _;

use super::report::Report;

const WIDTH: f64 = 960.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 30.0;
const PROBES_Y: f64 = 50.0;
const PROBES_H: f64 = 30.0;
const EVENTS_Y: f64 = 115.0;
const ROW: f64 = 16.0;
const ROWS: usize = 6;

/// The chart of `r`.
pub fn chart(r: &Report) -> String {
    let axis_y = EVENTS_Y + ROW * ROWS as f64 + 10.0;
    let height = axis_y + 40.0;
    let (lo, hi) = span(r);
    let x = |t: i64| LEFT + (t - lo) as f64 / (hi - lo) as f64 * (WIDTH - LEFT - RIGHT);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" \
         viewBox=\"0 0 {WIDTH} {height}\" font-family=\"sans-serif\" font-size=\"11\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    let rto = r
        .rto_ms
        .map_or("not recovered".into(), |v| format!("RTO {v} ms"));
    let _ = writeln!(
        s,
        "<text x=\"{LEFT}\" y=\"20\" font-size=\"14\" font-weight=\"bold\">{}: {}, {rto} (budget {} ms)</text>",
        esc(&r.scenario),
        r.verdict.as_str(),
        r.budget_ms
    );
    let _ = writeln!(s, "<text x=\"4\" y=\"{}\">probes</text>", PROBES_Y + 19.0);
    let _ = writeln!(s, "<text x=\"4\" y=\"{}\">converge</text>", EVENTS_Y + 12.0);
    let budget_end = x(i64::try_from(r.budget_ms).unwrap_or(i64::MAX).min(hi));
    let _ = writeln!(
        s,
        "<rect x=\"{:.1}\" y=\"{}\" width=\"{:.1}\" height=\"{}\" fill=\"#e3f2fd\"/>",
        x(0),
        PROBES_Y - 8.0,
        (budget_end - x(0)).max(0.0),
        axis_y - PROBES_Y + 8.0
    );
    probes(r, &x, &mut s);
    marker(&mut s, x(0), axis_y, "#000", "fault", "");
    marker(
        &mut s,
        budget_end,
        axis_y,
        "#ef6c00",
        "budget",
        " stroke-dasharray=\"5,3\"",
    );
    if let Some(rec) = r.recovered_unix_ms() {
        marker(&mut s, x(r.t(rec)), axis_y, "#1565c0", "recovered", "");
    }
    events(r, &x, &mut s);
    axis(&mut s, lo, hi, &x, axis_y);
    s += "</svg>\n";
    s
}

/// The time span shown: every probe and event, the fault and the budget.
fn span(r: &Report) -> (i64, i64) {
    let times = r
        .baseline
        .iter()
        .chain(&r.samples)
        .map(|p| r.t(p.unix_ms) + i64::try_from(p.latency_ms).unwrap_or(0))
        .chain(r.baseline.first().map(|p| r.t(p.unix_ms)))
        .chain(r.events.iter().map(|e| r.t(e.unix_ms)))
        .chain([0, i64::try_from(r.budget_ms).unwrap_or(0)]);
    let (lo, hi) = times.fold((0, 1), |(lo, hi), t| (lo.min(t), hi.max(t)));
    (lo, hi.max(lo + 1))
}

fn probes(r: &Report, x: &impl Fn(i64) -> f64, s: &mut String) {
    let width = (x(i64::try_from(r.interval_ms).unwrap_or(1)) - x(0)).max(1.0);
    for p in r.baseline.iter().chain(&r.samples) {
        let fill = if p.ok { "#2e7d32" } else { "#c62828" };
        let _ = writeln!(
            s,
            "<rect x=\"{:.1}\" y=\"{PROBES_Y}\" width=\"{width:.1}\" height=\"{PROBES_H}\" fill=\"{fill}\"><title>{:+} ms: {}</title></rect>",
            x(r.t(p.unix_ms)),
            r.t(p.unix_ms),
            esc(&p.detail)
        );
    }
}

/// A vertical line with its label beside it (before it near the right
/// edge, so the label stays inside the picture).
fn marker(s: &mut String, at: f64, bottom: f64, color: &str, label: &str, dash: &str) {
    let (text_x, anchor) = if at > WIDTH - RIGHT - 80.0 {
        (at - 3.0, "end")
    } else {
        (at + 3.0, "start")
    };
    let _ = writeln!(
        s,
        "<line x1=\"{at:.1}\" y1=\"{}\" x2=\"{at:.1}\" y2=\"{bottom}\" stroke=\"{color}\" stroke-width=\"2\"{dash}/>\
         <text x=\"{text_x:.1}\" y=\"{}\" fill=\"{color}\" text-anchor=\"{anchor}\">{label}</text>",
        PROBES_Y - 12.0,
        PROBES_Y - 14.0
    );
}

/// Events as dots with labels, each on the first row whose last label
/// ends before it starts, so labels do not overlap while rows last.
fn events(r: &Report, x: &impl Fn(i64) -> f64, s: &mut String) {
    let mut row_end = [f64::MIN; ROWS];
    for e in &r.events {
        let at = x(r.t(e.unix_ms));
        let kind = e.kind.name();
        let label_width = kind.len() as f64 * 6.0 + 8.0;
        let row = row_end.iter().position(|end| *end < at).unwrap_or(ROWS - 1);
        row_end[row] = at + label_width;
        let y = EVENTS_Y + ROW * row as f64;
        let _ = writeln!(
            s,
            "<circle cx=\"{at:.1}\" cy=\"{y}\" r=\"4\" fill=\"#6a1b9a\"><title>{:+} ms: {kind} {}</title></circle>\
             <text x=\"{:.1}\" y=\"{}\">{kind}</text>",
            r.t(e.unix_ms),
            esc(&e.detail),
            at + 6.0,
            y + 4.0
        );
    }
}

/// A time axis with round steps, labelled in seconds from the fault.
fn axis(s: &mut String, lo: i64, hi: i64, x: &impl Fn(i64) -> f64, y: f64) {
    let span = hi - lo;
    let step = [
        50, 100, 200, 500, 1000, 2000, 5000, 10_000, 20_000, 60_000, 120_000, 300_000,
    ]
    .into_iter()
    .find(|step| span / step <= 10)
    .unwrap_or(600_000);
    let _ = writeln!(
        s,
        "<line x1=\"{LEFT}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"#555\"/>",
        WIDTH - RIGHT
    );
    let mut t = lo.div_euclid(step) * step;
    while t <= hi {
        if t >= lo {
            let _ = writeln!(
                s,
                "<line x1=\"{0:.1}\" y1=\"{y}\" x2=\"{0:.1}\" y2=\"{1}\" stroke=\"#555\"/>\
                 <text x=\"{0:.1}\" y=\"{2}\" text-anchor=\"middle\">{3:+.1}s</text>",
                x(t),
                y + 5.0,
                y + 18.0,
                t as f64 / 1000.0
            );
        }
        t += step;
    }
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"end\" fill=\"#555\">time from the fault</text>",
        WIDTH - RIGHT,
        y + 34.0
    );
}

/// XML text escaping.
fn esc(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
