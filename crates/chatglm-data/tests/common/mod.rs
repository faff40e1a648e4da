//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use rust_xlsxwriter::{ExcelDateTime, Format, Workbook};

/// A fixture file of this crate.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// One cell of a generated sheet.
#[derive(Debug, Clone)]
pub enum Cell {
    Text(&'static str),
    Owned(String),
    Number(f64),
    Bool(bool),
    Date(u16, u8, u8),
    DateTime(u16, u8, u8, u16, u8, u8),
    Empty,
}

/// Writes a workbook with the given sheets, each a list of rows (the first row is the header).
pub fn workbook(path: &Path, sheets: &[(&str, Vec<Vec<Cell>>)]) {
    let mut wb = Workbook::new();
    let date = Format::new().set_num_format("yyyy-mm-dd");
    let datetime = Format::new().set_num_format("yyyy-mm-dd hh:mm:ss");
    for (name, rows) in sheets {
        let ws = wb.add_worksheet();
        ws.set_name(*name).unwrap();
        for (r, row) in rows.iter().enumerate() {
            for (c, cell) in row.iter().enumerate() {
                let (r, c) = (r as u32, c as u16);
                match cell {
                    Cell::Text(s) => {
                        ws.write_string(r, c, *s).unwrap();
                    }
                    Cell::Owned(s) => {
                        ws.write_string(r, c, s).unwrap();
                    }
                    Cell::Number(n) => {
                        ws.write_number(r, c, *n).unwrap();
                    }
                    Cell::Bool(b) => {
                        ws.write_boolean(r, c, *b).unwrap();
                    }
                    Cell::Date(y, m, d) => {
                        let dt = ExcelDateTime::from_ymd(*y, *m, *d).unwrap();
                        ws.write_datetime_with_format(r, c, &dt, &date).unwrap();
                    }
                    Cell::DateTime(y, m, d, h, mi, s) => {
                        let dt = ExcelDateTime::from_ymd(*y, *m, *d)
                            .unwrap()
                            .and_hms(*h, *mi, *s)
                            .unwrap();
                        ws.write_datetime_with_format(r, c, &dt, &datetime).unwrap();
                    }
                    Cell::Empty => {}
                }
            }
        }
    }
    wb.save(path).unwrap();
}

/// Parses a JSON lines file into values.
pub fn parse_jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
