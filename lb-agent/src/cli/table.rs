//! Aligned text columns, with free text lines between rows.

enum Row {
    Cells(Vec<String>),
    Text(String),
}

/// Rows of cells: the first `left` columns are left-aligned, the others (numbers)
/// right-aligned; every column is as wide as its widest cell over all rows.
pub struct Table {
    rows: Vec<Row>,
    left: usize,
    indent: &'static str,
}

impl Table {
    pub fn new(left: usize, indent: &'static str) -> Table {
        Table { rows: Vec::new(), left, indent }
    }

    pub fn cells<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) {
        self.rows.push(Row::Cells(cells.into_iter().map(Into::into).collect()));
    }

    /// A line printed as it is, outside the columns.
    pub fn text(&mut self, line: impl Into<String>) {
        self.rows.push(Row::Text(line.into()));
    }

    fn widths(&self) -> Vec<usize> {
        let mut widths: Vec<usize> = Vec::new();
        for row in &self.rows {
            let Row::Cells(cells) = row else { continue };
            for (i, c) in cells.iter().enumerate() {
                if widths.len() <= i {
                    widths.push(0);
                }
                widths[i] = widths[i].max(c.chars().count());
            }
        }
        widths
    }

    pub fn render(&self) -> String {
        let widths = self.widths();
        let mut out = String::new();
        for row in &self.rows {
            match row {
                Row::Text(line) => out += line,
                Row::Cells(cells) => {
                    let mut line = String::from(self.indent);
                    for (i, c) in cells.iter().enumerate() {
                        let w = widths[i];
                        if i > 0 {
                            line += "  ";
                        }
                        line += &if i < self.left { format!("{c:<w$}") } else { format!("{c:>w$}") };
                    }
                    out += line.trim_end();
                }
            }
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::Table;

    #[test]
    fn aligns_text_left_and_numbers_right() {
        let mut t = Table::new(1, "  ");
        t.text("title");
        t.cells(["NAME", "N"]);
        t.cells(["a", "1000"]);
        t.cells(["bbb", "2"]);
        assert_eq!(t.render(), "title\n  NAME     N\n  a     1000\n  bbb      2\n");
    }
}
