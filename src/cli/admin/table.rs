//! Aligned text tables: numbers right-aligned, two spaces between columns.

use std::fmt::Write;

/// A row: cells, or a server and a note that spans the other columns.
#[derive(Debug)]
enum Row {
    Cells(Vec<String>),
    Note(String, String),
}

#[derive(Debug)]
pub(crate) struct Table {
    header: Vec<&'static str>,
    rows: Vec<Row>,
}

fn is_number(s: &str) -> bool {
    let s = s.strip_suffix(" ms").unwrap_or(s);
    s == "-" || s.parse::<f64>().is_ok_and(f64::is_finite)
}

impl Table {
    pub(crate) fn new(header: &[&'static str]) -> Table {
        Table { header: header.to_vec(), rows: Vec::new() }
    }

    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(Row::Cells(cells));
    }

    pub(crate) fn note(&mut self, first: &str, text: String) {
        self.rows.push(Row::Note(first.to_string(), text));
    }

    pub(crate) fn render(&self) -> String {
        let n = self.header.len();
        let mut width: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        let mut numeric = vec![true; n];
        for r in &self.rows {
            match r {
                Row::Cells(c) => {
                    for (i, cell) in c.iter().enumerate().take(n) {
                        width[i] = width[i].max(cell.chars().count());
                        numeric[i] &= is_number(cell);
                    }
                }
                Row::Note(first, _) => width[0] = width[0].max(first.chars().count()),
            }
        }
        // Text columns stay left-aligned even when all their cells look numeric.
        numeric[0] = false;
        let mut out = String::new();
        let line = |out: &mut String, cells: &[String], numeric: &[bool]| {
            let mut s = String::new();
            for (i, cell) in cells.iter().enumerate() {
                let w = width.get(i).copied().unwrap_or(0);
                let last = i + 1 == cells.len();
                if i > 0 {
                    s.push_str("  ");
                }
                if numeric.get(i).copied().unwrap_or(false) {
                    let _ = write!(s, "{cell:>w$}");
                } else if last {
                    s.push_str(cell);
                } else {
                    let _ = write!(s, "{cell:<w$}");
                }
            }
            out.push_str(s.trim_end());
            out.push('\n');
        };
        let head: Vec<String> = self.header.iter().map(|h| h.to_string()).collect();
        line(&mut out, &head, &numeric);
        for r in &self.rows {
            match r {
                Row::Cells(c) => line(&mut out, c, &numeric),
                Row::Note(first, text) => {
                    let w = width[0];
                    let _ = writeln!(out, "{first:<w$}  {text}");
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned() {
        let mut t = Table::new(&["SERVER", "FUNCTION", "QUEUED"]);
        t.row(vec!["a:1".into(), "rev".into(), "12".into()]);
        t.row(vec!["bb:22".into(), "x".into(), "3".into()]);
        t.note("c:3", "down: refused".into());
        assert_eq!(
            t.render(),
            "SERVER  FUNCTION  QUEUED\na:1     rev           12\nbb:22   x              3\nc:3     down: refused\n"
        );
    }
}
