//! Server-rendered SVG charts. Every text that goes into the markup is
//! escaped here, so templates may include the result as it is (`|safe`).

use std::fmt::Write as _;

/// `text` safe inside SVG/HTML text and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// A small line chart of `values` (oldest first, evenly spaced),
/// `width` × `height` px. `None` is a gap: the line breaks there rather
/// than joining its neighbours. Fewer than two values: a flat dash, so a
/// chart's place still shows.
pub fn sparkline(values: &[Option<f64>], width: u32, height: u32, label: &str) -> String {
    let mut svg = format!(r#"<svg class="sparkline" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="{}">"#, escape(label));
    let known: Vec<f64> = values.iter().flatten().copied().filter(|v| v.is_finite()).collect();
    if known.len() < 2 || values.len() < 2 {
        let _ = write!(svg, r#"<line x1="2" y1="{y}" x2="{x}" y2="{y}" class="empty"/>"#, y = height / 2, x = width - 2);
    } else {
        let (min, max) = known.iter().fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
        let span = if max > min { max - min } else { 1.0 };
        let step = f64::from(width - 4) / (values.len() - 1) as f64;
        let point = |i: usize, v: f64| format!("{:.1},{:.1}", 2.0 + i as f64 * step, f64::from(height - 2) - (v - min) / span * f64::from(height - 4));
        let mut segment: Vec<String> = Vec::new();
        let flush = |segment: &mut Vec<String>, svg: &mut String| {
            match segment.len() {
                0 => {}
                1 => {
                    let (x, y) = segment[0].split_once(',').unwrap_or(("0", "0"));
                    let _ = write!(svg, r#"<circle cx="{x}" cy="{y}" r="1.5"/>"#);
                }
                _ => {
                    let _ = write!(svg, r#"<polyline points="{}"/>"#, segment.join(" "));
                }
            }
            segment.clear();
        };
        for (i, value) in values.iter().enumerate() {
            match value.filter(|v| v.is_finite()) {
                Some(v) => segment.push(point(i, v)),
                None => flush(&mut segment, &mut svg),
            }
        }
        flush(&mut segment, &mut svg);
    }
    svg.push_str("</svg>");
    svg
}

/// One bar per `(label, value)`, horizontal, with the value written at the
/// bar's end (`format` turns a value into its text).
pub fn bars(items: &[(String, f64)], width: u32, format: impl Fn(f64) -> String, label: &str) -> String {
    let row = 22u32;
    let height = row * items.len().max(1) as u32 + 4;
    let label_width = 150u32;
    let max = items.iter().map(|(_, v)| *v).fold(0.0f64, f64::max).max(f64::MIN_POSITIVE);
    let mut svg = format!(r#"<svg class="bars" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="{}">"#, escape(label));
    for (i, (name, value)) in items.iter().enumerate() {
        let y = 2 + row * i as u32;
        let length = (value / max * f64::from(width - label_width - 80)).max(0.0);
        let _ = write!(
            svg,
            r#"<text x="0" y="{ty}" class="label">{name}</text><rect x="{label_width}" y="{y}" width="{length:.1}" height="{h}"/><text x="{vx:.1}" y="{ty}" class="value">{value}</text>"#,
            ty = y + 15,
            name = escape(name),
            h = row - 6,
            vx = f64::from(label_width) + length + 6.0,
            value = escape(&format(*value)),
        );
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_in_labels_is_escaped() {
        let svg = bars(&[("<script>alert(1)</script>".into(), 3.0)], 400, |v| v.to_string(), "a \"chart\"");
        assert!(!svg.contains("<script>"));
        assert!(svg.contains("&lt;script&gt;"));
        assert!(svg.contains("a &quot;chart&quot;"));
    }

    #[test]
    fn a_sparkline_spans_its_values() {
        let svg = sparkline(&[Some(1.0), Some(3.0), Some(2.0)], 100, 20, "trend");
        assert!(svg.contains("polyline"));
        assert!(svg.contains("2.0,18.0"), "{svg}");
        assert!(sparkline(&[], 100, 20, "trend").contains("class=\"empty\""));
        // A gap breaks the line; the points keep their places in time.
        let gapped = sparkline(&[Some(1.0), Some(2.0), None, Some(3.0), Some(1.0)], 100, 20, "trend");
        assert_eq!(gapped.matches("<polyline").count(), 2, "{gapped}");
        assert!(gapped.contains("74.0,2.0"), "the fourth of five points sits three quarters along: {gapped}");
    }
}
