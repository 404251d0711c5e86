//! Charts as server-side SVG: a stacked bar chart per day and a budget gauge. Drawn with
//! presentation attributes only (no inline styles), so the page's strict
//! `Content-Security-Policy` holds and nothing is loaded to draw them.

use chrono::NaiveDate;
use maud::{Markup, html};

/// Colours of the series, in order; the last series of many ("other") wraps around.
const PALETTE: [&str; 8] = [
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#9c755f",
];

const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 240.0;
/// Room on the left for the axis labels and below for the dates.
const LEFT: f64 = 70.0;
const BOTTOM: f64 = 24.0;

/// One series of a stacked chart: its name and a value per day (same order as the days).
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub values: Vec<f64>,
}

/// A stacked bar per day: one `rect.bar` per day and series with a value above zero, each
/// with a tooltip. `format` writes a value for the axis and tooltips.
pub fn stacked_bars(
    days: &[NaiveDate],
    series: &[Series],
    format: &dyn Fn(f64) -> String,
) -> Markup {
    let totals: Vec<f64> = (0..days.len())
        .map(|d| {
            series
                .iter()
                .map(|s| s.values.get(d).copied().unwrap_or(0.0))
                .sum()
        })
        .collect();
    let max = totals.iter().copied().fold(0.0_f64, f64::max);
    let scale = if max > 0.0 {
        (HEIGHT - BOTTOM - 10.0) / max
    } else {
        0.0
    };
    #[allow(clippy::cast_precision_loss)]
    let slot = (WIDTH - LEFT) / days.len().max(1) as f64;
    let bar = (slot * 0.8).max(1.0);
    let base = HEIGHT - BOTTOM;
    // Each day's bars stacked from the axis up, in series order.
    let mut rects = Vec::new();
    for (d, day) in days.iter().enumerate() {
        #[allow(clippy::cast_precision_loss)]
        let x = LEFT + slot * d as f64 + (slot - bar) / 2.0;
        let mut top = base;
        for (i, s) in series.iter().enumerate() {
            let v = s.values.get(d).copied().unwrap_or(0.0);
            if v > 0.0 {
                let h = (v * scale).max(1.0);
                top -= h;
                rects.push((x, top, h, i, *day, v));
            }
        }
    }
    let label_every = days.len().div_ceil(6).max(1);
    html! {
        svg.chart xmlns="http://www.w3.org/2000/svg" viewBox={ "0 0 " (WIDTH) " " (HEIGHT) }
            role="img" {
            line x1=(LEFT) y1=(base) x2=(WIDTH) y2=(base) stroke="#999" {}
            text x=(LEFT - 6.0) y=(base) text-anchor="end" font-size="11" fill="#555" { "0" }
            text x=(LEFT - 6.0) y=(base - max * scale + 4.0) text-anchor="end" font-size="11"
                fill="#555" { (format(max)) }
            @for (x, top, h, i, day, v) in &rects {
                rect.bar x=(format!("{x:.1}")) y=(format!("{top:.1}")) width=(format!("{bar:.1}"))
                    height=(format!("{h:.1}")) fill=(PALETTE[i % PALETTE.len()])
                    data-series=(series[*i].name) data-day=(day) {
                    title { (day) " · " (series[*i].name) ": " (format(*v)) }
                }
            }
            @for (d, day) in days.iter().enumerate() {
                @if d.is_multiple_of(label_every) || d + 1 == days.len() {
                    @let x = LEFT + slot * (d as f64 + 0.5);
                    text x=(format!("{x:.1}")) y=(HEIGHT - 6.0) text-anchor="middle"
                        font-size="10" fill="#555" { (day.format("%m-%d")) }
                }
            }
        }
        ul.legend {
            @for (i, s) in series.iter().enumerate() {
                li {
                    svg width="12" height="12" xmlns="http://www.w3.org/2000/svg" {
                        rect width="12" height="12" fill=(PALETTE[i % PALETTE.len()]) {}
                    }
                    " " (s.name)
                }
            }
        }
    }
}

/// A horizontal gauge of `used` against `limit` (red from 90 %). Without a limit only
/// the use is shown.
pub fn gauge(used: i64, limit: Option<i64>) -> Markup {
    #[allow(clippy::cast_precision_loss)]
    let fraction = limit
        .filter(|l| *l > 0)
        .map(|l| (used as f64 / l as f64).clamp(0.0, 1.0));
    let fill = match fraction {
        Some(f) if f >= 0.9 => "#e15759",
        _ => "#59a14f",
    };
    html! {
        svg.gauge xmlns="http://www.w3.org/2000/svg" viewBox="0 0 200 14" width="200" height="14"
            role="img" {
            rect width="200" height="14" rx="3" fill="#e6e6e6" {}
            @if let Some(f) = fraction {
                rect.used width=(format!("{:.1}", 200.0 * f)) height="14" rx="3" fill=(fill) {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 12, d).expect("valid date")
    }

    #[test]
    fn a_stacked_chart_draws_one_bar_per_day_and_series_with_a_value() {
        let days = [day(1), day(2), day(3)];
        let series = [
            Series {
                name: "glm-4.6".into(),
                values: vec![10.0, 0.0, 5.0],
            },
            Series {
                name: "glm-5".into(),
                values: vec![1.0, 2.0, 0.0],
            },
        ];
        let svg = stacked_bars(&days, &series, &|v| format!("{v}")).into_string();
        assert_eq!(svg.matches("<rect class=\"bar\"").count(), 4, "{svg}");
        assert!(svg.contains("2026-12-02 · glm-5: 2"), "{svg}");
    }

    #[test]
    fn an_empty_chart_draws_no_bar() {
        let svg = stacked_bars(&[day(1)], &[], &|v| format!("{v}")).into_string();
        assert!(!svg.contains("class=\"bar\""), "{svg}");
    }

    #[test]
    fn a_gauge_without_a_limit_shows_no_fill() {
        assert!(!gauge(5, None).into_string().contains("used"));
        assert!(gauge(95, Some(100)).into_string().contains("#e15759"));
    }
}
