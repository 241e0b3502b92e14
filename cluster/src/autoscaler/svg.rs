//! A small SVG line chart of a simulation: load, nodes and latency.

use super::simulate::Run;

const W: f64 = 960.0;
const PANEL: f64 = 180.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;

fn polyline(points: impl Iterator<Item = (f64, f64)>, color: &str, width: f64) -> String {
    let pts: Vec<String> = points.map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
    format!(r#"<polyline fill="none" stroke="{color}" stroke-width="{width}" points="{}"/>"#, pts.join(" "))
}

struct Panel<'a> {
    top: f64,
    title: &'a str,
    max: f64,
    end: f64,
}

impl Panel<'_> {
    fn x(&self, t: f64) -> f64 {
        LEFT + (W - LEFT - RIGHT) * t / self.end.max(1.0)
    }
    fn y(&self, v: f64) -> f64 {
        self.top + 20.0 + (PANEL - 40.0) * (1.0 - (v / self.max.max(1e-9)).clamp(0.0, 1.0))
    }
    fn frame(&self) -> String {
        let (x0, x1, y0, y1) = (LEFT, W - RIGHT, self.y(self.max), self.y(0.0));
        format!(
            r##"<rect x="{x0}" y="{y0}" width="{}" height="{}" fill="none" stroke="#999"/><text x="{x0}" y="{}" font-size="13" font-family="sans-serif">{}</text><text x="{}" y="{}" font-size="11" text-anchor="end" font-family="sans-serif">{:.0}</text><text x="{}" y="{}" font-size="11" text-anchor="end" font-family="sans-serif">0</text>"##,
            x1 - x0,
            y1 - y0,
            y0 - 6.0,
            self.title,
            x0 - 4.0,
            y0 + 10.0,
            self.max,
            x0 - 4.0,
            y1
        )
    }
}

/// The chart: three stacked panels over time.
pub(crate) fn plot(name: &str, tessera: &Run, naive: &Run, kpa: &Run) -> String {
    let end = tessera.ticks.last().map_or(1.0, |t| t.t as f64);
    let max_rate = tessera.ticks.iter().map(|t| t.request_rate).fold(1.0, f64::max);
    let max_nodes =
        tessera.ticks.iter().chain(&naive.ticks).chain(&kpa.ticks).map(|t| t.nodes).max().unwrap_or(1) as f64 + 1.0;
    let target = tessera.summary.latency_target_ms;
    let max_lat = target * 4.0;
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{}" viewBox="0 0 {W} {}"><rect width="100%" height="100%" fill="white"/><text x="{LEFT}" y="18" font-size="15" font-family="sans-serif">{name}: Tessera policy (blue) vs naive proportional (orange) vs Knative KPA (green); x = seconds 0–{end}</text>"#,
        PANEL * 3.0 + 40.0,
        PANEL * 3.0 + 40.0
    );
    let rate = Panel { top: 30.0, title: "request rate (req/s)", max: max_rate, end };
    s += &rate.frame();
    s += &polyline(tessera.ticks.iter().map(|t| (rate.x(t.t as f64), rate.y(t.request_rate))), "#333", 1.2);
    let nodes = Panel { top: 30.0 + PANEL, title: "nodes provisioned", max: max_nodes, end };
    s += &nodes.frame();
    s += &polyline(naive.ticks.iter().map(|t| (nodes.x(t.t as f64), nodes.y(t.nodes as f64))), "#e8871e", 1.5);
    s += &polyline(kpa.ticks.iter().map(|t| (nodes.x(t.t as f64), nodes.y(t.nodes as f64))), "#2a9d4b", 1.5);
    s += &polyline(tessera.ticks.iter().map(|t| (nodes.x(t.t as f64), nodes.y(t.nodes as f64))), "#1f6fd1", 2.0);
    let title = format!("mean latency (ms, clipped at {max_lat:.0}; dashed: objective {target:.0} ms)");
    let lat = Panel { top: 30.0 + 2.0 * PANEL, title: &title, max: max_lat, end };
    s += &lat.frame();
    s += &format!(
        r##"<line x1="{LEFT}" x2="{}" y1="{y}" y2="{y}" stroke="#c00" stroke-dasharray="4 4"/>"##,
        W - RIGHT,
        y = lat.y(target)
    );
    s += &polyline(naive.ticks.iter().map(|t| (lat.x(t.t as f64), lat.y(t.latency_ms))), "#e8871e", 1.2);
    s += &polyline(kpa.ticks.iter().map(|t| (lat.x(t.t as f64), lat.y(t.latency_ms))), "#2a9d4b", 1.2);
    s += &polyline(tessera.ticks.iter().map(|t| (lat.x(t.t as f64), lat.y(t.latency_ms))), "#1f6fd1", 1.5);
    s += "</svg>\n";
    s
}
