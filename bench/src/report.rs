//! Writing a run's results: `results.json` (everything), `results.md` (one table per scenario,
//! targets side by side with the Aviary/peer ratio) and SVG charts (latency percentiles,
//! deliveries/s over time, server RSS over time).

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;
use serde::Serialize;

use crate::scenarios::{Outcome, Sizes};

/// Scenario ids in report order, with their headings.
const SCENARIOS: [(&str, &str); 5] = [
    ("idle", "1. Idle connections"),
    ("fanout", "2. Broadcast fan-out"),
    ("rooms", "3. Many rooms"),
    ("rest", "4. REST publish and token mint"),
    ("multinode", "5. Multi-node fan-out"),
];

#[derive(Serialize)]
struct Run<'a> {
    started_at: &'a str,
    sizes: &'a Sizes,
    outcomes: &'a [Outcome],
}

pub fn write(
    dir: &Path,
    charts_dir: &Path,
    started_at: &str,
    sizes: &Sizes,
    outcomes: &[Outcome],
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::create_dir_all(charts_dir)?;
    let json = serde_json::to_string_pretty(&Run { started_at, sizes, outcomes })?;
    std::fs::write(dir.join("results.json"), json)?;
    for (id, title) in SCENARIOS {
        let of: Vec<&Outcome> = outcomes.iter().filter(|o| o.scenario == id && !o.metrics.is_empty()).collect();
        if of.is_empty() {
            continue;
        }
        if of.iter().any(|o| o.latency.is_some()) && id != "rest" {
            latency_chart(&charts_dir.join(format!("{id}-latency.svg")), title, &of)?;
        }
        if of.iter().any(|o| o.series.iter().any(|s| s.deliveries_per_s > 0.0)) {
            series_chart(&charts_dir.join(format!("{id}-deliveries.svg")), title, "deliveries/s", &of, |s| {
                s.deliveries_per_s
            })?;
        }
        if id == "idle" && of.iter().any(|o| !o.series.is_empty()) {
            series_chart(&charts_dir.join("idle-rss.svg"), title, "server RSS (MiB)", &of, |s| {
                s.rss_kib as f64 / 1024.0
            })?;
        }
    }
    // After the charts: the markdown links only charts that exist.
    let md = markdown(outcomes, charts_dir, dir);
    std::fs::write(dir.join("results.md"), md)?;
    Ok(())
}

fn fmt_value(v: f64, unit: &str) -> String {
    let n = if v.abs() >= 100.0 || v.fract() == 0.0 {
        group_thousands(v.round() as i64)
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    };
    if unit.is_empty() { n } else { format!("{n} {unit}") }
}

fn group_thousands(v: i64) -> String {
    let s = v.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if v < 0 { format!("-{out}") } else { out }
}

/// Tables per scenario: one row per metric, one column per target, then Aviary/peer ratios.
pub fn markdown(outcomes: &[Outcome], charts_dir: &Path, md_dir: &Path) -> String {
    let mut md = String::new();
    let rel = relative(charts_dir, md_dir);
    for (id, title) in SCENARIOS {
        let of: Vec<&Outcome> = outcomes.iter().filter(|o| o.scenario == id).collect();
        if of.is_empty() {
            continue;
        }
        let _ = writeln!(md, "### {title}\n");
        // Ratio columns: each Aviary target (its own protocol, Pusher's) over each peer.
        let aviaries: Vec<&Outcome> = of.iter().filter(|o| o.target.starts_with("Aviary")).copied().collect();
        let peers: Vec<&Outcome> = of.iter().filter(|o| !o.target.starts_with("Aviary")).copied().collect();
        let pairs: Vec<(&Outcome, &Outcome)> =
            aviaries.iter().flat_map(|a| peers.iter().map(move |p| (*a, *p))).collect();
        let mut header = String::from("| metric |");
        let mut rule = String::from("| --- |");
        for o in &of {
            let _ = write!(header, " {} |", o.target);
            rule.push_str(" ---: |");
        }
        for (a, p) in &pairs {
            let _ = write!(header, " {} / {} |", short_target(&a.target), short_target(&p.target));
            rule.push_str(" ---: |");
        }
        let _ = writeln!(md, "{header}\n{rule}");
        let mut rows: Vec<(&str, &str, Option<bool>)> = Vec::new();
        for o in &of {
            for metric in &o.metrics {
                if !rows.iter().any(|(n, _, _)| *n == metric.name) {
                    rows.push((metric.name, metric.unit, metric.higher_is_better));
                }
            }
            if id != "rest"
                && let Some(l) = &o.latency
            {
                for (name, _) in l.points() {
                    let label = latency_label(name);
                    if !rows.iter().any(|(n, _, _)| *n == label) {
                        rows.push((label, "ms", Some(false)));
                    }
                }
            }
        }
        for (name, unit, better) in rows {
            let value = |o: &Outcome| -> Option<f64> {
                o.metric(name).or_else(|| {
                    o.latency
                        .as_ref()
                        .and_then(|l| l.points().iter().find(|(p, _)| latency_label(p) == name).map(|(_, v)| *v))
                })
            };
            let mut line = format!("| {name} |");
            for o in &of {
                let cell = match value(o) {
                    Some(v) => fmt_value(v, unit),
                    None if o.error.is_some() && o.metrics.is_empty() => "failed".to_owned(),
                    None => "—".to_owned(),
                };
                let _ = write!(line, " {cell} |");
            }
            for (a, p) in &pairs {
                let cell = match (value(a), value(p), better) {
                    (Some(a), Some(b), Some(_)) if b != 0.0 => ratio(a / b),
                    _ => "—".to_owned(),
                };
                let _ = write!(line, " {cell} |");
            }
            let _ = writeln!(md, "{line}");
        }
        md.push('\n');
        for o in &of {
            if let Some(e) = &o.error {
                let _ = writeln!(md, "- {}: {}\n", o.target, e.replace('\n', " "));
            }
        }
        for chart in ["latency", "deliveries", "rss"] {
            let file = format!("{id}-{chart}.svg");
            if charts_dir.join(&file).exists() {
                let _ = writeln!(md, "![{title}: {chart}]({rel}{file})\n");
            }
        }
    }
    md
}

/// A target without the node count of the multi-node scenario (`Sockudo ×3 nodes (Redis)` →
/// `Sockudo`), for the ratio headers.
fn short_target(target: &str) -> &str {
    target.split_once(" ×").map_or(target, |(name, _)| name)
}

/// A ratio with enough digits to stay readable when it is far from 1.
fn ratio(r: f64) -> String {
    if r >= 0.095 { format!("{r:.2}×") } else { format!("{r:.1e}×") }
}

fn latency_label(p: &str) -> &'static str {
    match p {
        "p50" => "latency p50",
        "p90" => "latency p90",
        "p99" => "latency p99",
        "p99.9" => "latency p99.9",
        _ => "latency max",
    }
}

/// `charts_dir` as seen from `md_dir` when one is inside the other's parent (best effort).
fn relative(charts_dir: &Path, md_dir: &Path) -> String {
    match charts_dir.strip_prefix(md_dir) {
        Ok(p) if p.as_os_str().is_empty() => String::new(),
        Ok(p) => format!("{}/", p.display()),
        Err(_) => format!("{}/", charts_dir.display()),
    }
}

fn colour(i: usize) -> RGBColor {
    [RGBColor(0x1f, 0x77, 0xb4), RGBColor(0xff, 0x7f, 0x0e), RGBColor(0x2c, 0xa0, 0x2c), RGBColor(0xd6, 0x27, 0x28)]
        [i % 4]
}

fn chart_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("chart: {e:?}")
}

/// Latency percentiles (log scale) per target.
fn latency_chart(path: &Path, title: &str, outcomes: &[&Outcome]) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (720, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(chart_err)?;
    let max = outcomes.iter().filter_map(|o| o.latency.as_ref()).map(|l| l.max_ms).fold(1.0f64, f64::max);
    let min =
        outcomes.iter().filter_map(|o| o.latency.as_ref()).map(|l| l.p50_ms).fold(f64::MAX, f64::min).clamp(0.001, 1.0);
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("{title}: publish-to-deliver latency"), ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.2f64..4.2f64, (min / 2.0..max * 2.0).log_scale())
        .map_err(chart_err)?;
    let labels = ["p50", "p90", "p99", "p99.9", "max"];
    chart
        .configure_mesh()
        .x_labels(5)
        .x_label_formatter(&|x| labels.get(x.round() as usize).map_or(String::new(), |l| (*l).to_owned()))
        .y_desc("ms (log scale)")
        .draw()
        .map_err(chart_err)?;
    for (i, o) in outcomes.iter().enumerate() {
        let Some(l) = &o.latency else { continue };
        let pts: Vec<(f64, f64)> = l.points().iter().enumerate().map(|(x, (_, v))| (x as f64, v.max(0.001))).collect();
        let c = colour(i);
        chart
            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
            .map_err(chart_err)?
            .label(o.target.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2)));
        chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, c.filled()))).map_err(chart_err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(chart_err)?;
    root.present().map_err(chart_err)?;
    Ok(())
}

/// A time series per target.
fn series_chart(
    path: &Path,
    title: &str,
    what: &str,
    outcomes: &[&Outcome],
    value: impl Fn(&crate::stats::Sample) -> f64,
) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (720, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(chart_err)?;
    let t_max = outcomes.iter().flat_map(|o| o.series.iter().map(|s| s.t_s)).fold(1.0f64, f64::max);
    let y_max = outcomes.iter().flat_map(|o| o.series.iter().map(&value)).fold(1.0f64, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("{title}: {what}"), ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..t_max, 0f64..y_max)
        .map_err(chart_err)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc(what)
        .y_label_formatter(&|v| group_thousands(v.round() as i64))
        .draw()
        .map_err(chart_err)?;
    for (i, o) in outcomes.iter().enumerate() {
        let c = colour(i);
        chart
            .draw_series(LineSeries::new(o.series.iter().map(|s| (s.t_s, value(s))), c.stroke_width(2)))
            .map_err(chart_err)?
            .label(o.target.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(chart_err)?;
    root.present().map_err(chart_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(group_thousands(1_234_567), "1,234,567");
        assert_eq!(group_thousands(999), "999");
        assert_eq!(fmt_value(4.256, "ms"), "4.26 ms");
    }

    fn outcome(scenario: &'static str, target: String, delivered: f64) -> Outcome {
        Outcome {
            scenario,
            target,
            metrics: vec![crate::scenarios::Metric {
                name: "deliveries/s",
                value: delivered,
                unit: "msg/s",
                higher_is_better: Some(true),
            }],
            latency: None,
            series: Vec::new(),
            error: None,
        }
    }

    #[test]
    fn multinode_table_has_a_ratio_column_per_peer() {
        use crate::client::Kind;
        use crate::scenarios::multinode_target;
        let outcomes: Vec<Outcome> = [(Kind::Aviary, 400.0), (Kind::Sockudo, 200.0), (Kind::Socketio, 100.0)]
            .into_iter()
            .map(|(k, v)| outcome("multinode", multinode_target(k, 3), v))
            .collect();
        let dir = std::env::temp_dir().join("aviary-bench-no-charts");
        let md = markdown(&outcomes, &dir, &dir);
        assert!(md.contains("### 5. Multi-node fan-out"), "{md}");
        assert!(
            md.contains(
                "| metric | Aviary ×3 nodes (Redis) | Sockudo ×3 nodes (Redis) | Socket.io ×3 nodes (Redis) \
                 | Aviary / Sockudo | Aviary / Socket.io |"
            ),
            "{md}"
        );
        assert!(md.contains("| deliveries/s | 400 msg/s | 200 msg/s | 100 msg/s | 2.00× | 4.00× |"), "{md}");
    }
}
