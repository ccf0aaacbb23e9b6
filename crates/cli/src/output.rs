//! Table, JSON and YAML output.

use plinth_model::Kind;
use serde_json::Value;
use std::fmt::Write;

/// Output format chosen with `-o`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

impl Format {
    /// Parses `-o`'s value (validated by clap already).
    pub fn parse(s: &str) -> Format {
        match s {
            "json" => Format::Json,
            "yaml" => Format::Yaml,
            _ => Format::Table,
        }
    }
}

/// A cell: strings bare, arrays comma-joined, objects as compact JSON.
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join(","),
        Value::Object(m) if m.is_empty() => String::new(),
        Value::Object(m) if m.values().all(|v| !v.is_object() && !v.is_array()) => {
            m.values().map(cell).filter(|s| !s.is_empty()).collect::<Vec<_>>().join("-")
        }
        other => other.to_string(),
    }
}

fn render_table(headers: &[String], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, c) in row.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: &[String], out: &mut String| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                let _ = write!(l, "{c:<w$}  ", w = widths[i]);
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(headers, &mut out);
    for r in rows {
        line(r, &mut out);
    }
    out
}

/// A param source (`{"layer": "profile", "name": "site", "via": [...]}`) as text.
pub fn layer(v: &Value) -> String {
    let kind = v["layer"].as_str().unwrap_or("?");
    match (v["name"].as_str(), v["via"].as_array().filter(|a| !a.is_empty())) {
        (Some(n), Some(via)) => format!("{kind}:{n} (via {})", cell(&Value::Array(via.clone()))),
        (Some(n), None) => format!("{kind}:{n}"),
        (None, Some(via)) => format!("{kind} (via {})", cell(&Value::Array(via.clone()))),
        (None, None) => kind.to_owned(),
    }
}

/// Renders objects as a table of the given top-level fields.
pub fn table(columns: &[&str], items: &[Value]) -> String {
    let headers: Vec<String> = columns.iter().map(|c| c.to_uppercase()).collect();
    let rows: Vec<Vec<String>> = items.iter().map(|o| columns.iter().map(|c| cell(&o[*c])).collect()).collect();
    render_table(&headers, &rows)
}

/// Renders a list of objects of `kind`.
pub fn list(kind: Kind, items: &[Value], format: Format) -> String {
    match format {
        Format::Json => serde_json::to_string_pretty(items).unwrap_or_default() + "\n",
        Format::Yaml => serde_yaml_ng::to_string(items).unwrap_or_default(),
        Format::Table => table(kind.table_columns(), items),
    }
}

/// Renders one object (or any JSON value).
pub fn one(value: &Value, format: Format) -> String {
    match (format, value) {
        (Format::Json, _) => serde_json::to_string_pretty(value).unwrap_or_default() + "\n",
        (Format::Yaml, _) => serde_yaml_ng::to_string(value).unwrap_or_default(),
        (Format::Table, Value::Object(map)) => {
            let headers = vec!["FIELD".to_owned(), "VALUE".to_owned()];
            let rows: Vec<Vec<String>> = map.iter().map(|(k, v)| vec![k.clone(), cell(v)]).collect();
            render_table(&headers, &rows)
        }
        (Format::Table, other) => cell(other) + "\n",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_align_columns_and_flatten_values() {
        let items = vec![
            json!({"name": "debian-12", "os": {"name": "debian", "version": "12"}, "kernel": "vmlinuz", "description": "Debian"}),
            json!({"name": "local", "os": {}, "kernel": null, "description": ""}),
        ];
        let t = list(Kind::BootEnv, &items, Format::Table);
        assert_eq!(t, "NAME       OS         KERNEL   DESCRIPTION\ndebian-12  debian-12  vmlinuz  Debian\nlocal\n");
    }
}
