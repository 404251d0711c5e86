//! The page shell every console page shares (navigation, stylesheet, script) and the few
//! formatters the pages use for times, tokens and money.

use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};

use crate::queue::JobState;

/// Which navigation entry is current.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Overview,
    Jobs,
    Reviews,
    Spend,
}

/// A whole page: `title`, the navigation with `nav` current, and `body`.
pub fn page(title: &str, nav: Nav, body: &Markup) -> Markup {
    let entries = [
        (Nav::Overview, "/ui", "Overview"),
        (Nav::Jobs, "/ui/jobs", "Jobs"),
        (Nav::Reviews, "/ui/reviews", "Reviews"),
        (Nav::Spend, "/ui/spend", "Spend"),
    ];
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · reviewq" }
                link rel="stylesheet" href="/ui/assets/app.css";
                script src="/ui/assets/app.js" defer {}
            }
            body {
                header {
                    span.brand { "reviewq" }
                    nav {
                        @for (n, href, label) in entries {
                            a href=(href) class=[(n == nav).then_some("current")] { (label) }
                        }
                    }
                }
                main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// A job state as a coloured badge.
pub fn state_badge(state: JobState) -> Markup {
    html! { span class={ "badge " (state.as_str()) } { (state.as_str()) } }
}

/// A time as UTC, with how long ago in the tooltip.
pub fn time(at: DateTime<Utc>) -> Markup {
    html! { time datetime=(at.to_rfc3339()) title=(ago(at)) { (at.format("%Y-%m-%d %H:%M:%S")) } }
}

/// An optional time, or a dash.
pub fn maybe_time(at: Option<DateTime<Utc>>) -> Markup {
    match at {
        Some(at) => time(at),
        None => html! { "–" },
    }
}

/// "3 min ago", "in 20 s".
pub fn ago(at: DateTime<Utc>) -> String {
    let secs = (Utc::now() - at).num_seconds();
    if secs >= 0 {
        format!("{} ago", secs_text(secs))
    } else {
        format!("in {}", secs_text(-secs))
    }
}

/// A duration in the largest unit that keeps it readable.
pub fn secs_text(secs: i64) -> String {
    match secs {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h", s / 3600),
        s => format!("{} d", s / 86_400),
    }
}

/// Seconds with a precision that suits their size.
pub fn seconds(secs: f64) -> String {
    if secs < 1.0 {
        format!("{:.0} ms", secs * 1000.0)
    } else {
        format!("{secs:.1} s")
    }
}

/// A token count with thousands separators.
pub fn tokens(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if n < 0 {
        out.push('-');
    }
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A cost in USD, or a dash when no price is known.
pub fn usd(cost: Option<f64>) -> String {
    match cost {
        Some(c) if c.abs() < 0.01 && c != 0.0 => format!("${c:.4}"),
        Some(c) => format!("${c:.2}"),
        None => "–".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_counts_are_grouped_by_thousands() {
        assert_eq!(tokens(0), "0");
        assert_eq!(tokens(999), "999");
        assert_eq!(tokens(1000), "1,000");
        assert_eq!(tokens(1_234_567), "1,234,567");
        assert_eq!(tokens(-12_345), "-12,345");
    }

    #[test]
    fn small_costs_keep_their_digits_and_unknown_costs_show_a_dash() {
        assert_eq!(usd(Some(0.0012)), "$0.0012");
        assert_eq!(usd(Some(12.5)), "$12.50");
        assert_eq!(usd(None), "–");
    }
}
