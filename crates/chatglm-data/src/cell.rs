//! Cell values as a person sees them: `12` not `12.0`, dates as ISO text, booleans as text.

use calamine::{Data, ExcelDateTime};

/// The text of a spreadsheet cell.
///
/// - integers and whole floats print without a fraction (`12`); other floats are rounded to the
///   15 significant digits a spreadsheet displays, then printed in their shortest form
///   (`0.1 + 0.2` gives `0.3`);
/// - date cells give `YYYY-MM-DD`, date-times `YYYY-MM-DD HH:MM:SS` (`.mmm` when there are
///   milliseconds), times of day `HH:MM:SS`, durations `[h]:mm:ss`; ODS date-times (stored as
///   ISO text) print the same way;
/// - booleans give `TRUE` / `FALSE` as spreadsheets display them, error cells their code
///   (`#DIV/0!`), empty cells the empty string.
pub fn cell_text(cell: &Data) -> String {
    match cell {
        Data::Empty => String::new(),
        Data::String(s) => s.clone(),
        Data::Int(i) => i.to_string(),
        Data::Float(f) => number_text(*f),
        Data::Bool(true) => "TRUE".to_owned(),
        Data::Bool(false) => "FALSE".to_owned(),
        Data::DateTime(dt) => datetime_text(dt),
        Data::DateTimeIso(s) => iso_text(s),
        Data::DurationIso(s) => s.clone(),
        Data::Error(e) => e.to_string(),
    }
}

/// ODS stores date-times as ISO text (`2024-10-04T16:07:07`); print them like the other
/// formats' date-times (`2024-10-04 16:07:07`), dropping a zero fraction.
fn iso_text(s: &str) -> String {
    let b = s.as_bytes();
    if b.len() >= 19 && b[10] == b'T' && b[4] == b'-' && b[13] == b':' {
        let mut out = format!("{} {}", &s[..10], &s[11..]);
        if let Some(stripped) = out.strip_suffix(".000") {
            out = stripped.to_owned();
        }
        out
    } else {
        s.to_owned()
    }
}

/// `true` for an empty cell or one holding only whitespace text.
pub(crate) fn is_blank(cell: &Data) -> bool {
    match cell {
        Data::Empty => true,
        Data::String(s) => s.trim().is_empty(),
        _ => false,
    }
}

/// A float as a person sees it: whole numbers without `.0`, others at 15 significant digits.
pub fn number_text(f: f64) -> String {
    if !f.is_finite() {
        return f.to_string();
    }
    if f == f.trunc() && f.abs() < 1e15 {
        return format!("{}", f as i64);
    }
    // Round to 15 significant digits (what spreadsheets display), then print the shortest
    // representation of that value.
    let rounded: f64 = format!("{f:.14e}").parse().unwrap_or(f);
    if rounded == rounded.trunc() && rounded.abs() < 1e15 {
        return format!("{}", rounded as i64);
    }
    if rounded.abs() < 1e-5 || rounded.abs() >= 1e15 {
        format!("{rounded:e}")
    } else {
        format!("{rounded}")
    }
}

fn datetime_text(dt: &ExcelDateTime) -> String {
    if dt.is_duration() {
        let total_ms = (dt.as_f64() * 86_400_000.0).round() as i64;
        let sign = if total_ms < 0 { "-" } else { "" };
        let ms = total_ms.abs();
        let (h, m, s, milli) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
        return if milli == 0 {
            format!("{sign}{h}:{m:02}:{s:02}")
        } else {
            format!("{sign}{h}:{m:02}:{s:02}.{milli:03}")
        };
    }
    let (y, mo, d, h, mi, s, ms) = dt.to_ymd_hms_milli();
    let time = if ms == 0 {
        format!("{h:02}:{mi:02}:{s:02}")
    } else {
        format!("{h:02}:{mi:02}:{s:02}.{ms:03}")
    };
    let value = dt.as_f64();
    if (0.0..1.0).contains(&value) {
        time
    } else if (h, mi, s, ms) == (0, 0, 0, 0) {
        format!("{y:04}-{mo:02}-{d:02}")
    } else {
        format!("{y:04}-{mo:02}-{d:02} {time}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use calamine::{CellErrorType, ExcelDateTimeType};

    #[test]
    fn numbers() {
        assert_eq!(number_text(12.0), "12");
        assert_eq!(number_text(-3.0), "-3");
        assert_eq!(number_text(-0.0), "0");
        assert_eq!(number_text(0.1 + 0.2), "0.3");
        assert_eq!(number_text(3.25), "3.25");
        assert_eq!(number_text(1234567.891), "1234567.891");
        assert_eq!(number_text(1e-7), "1e-7");
        assert_eq!(cell_text(&Data::Int(42)), "42");
    }

    #[test]
    fn dates_and_others() {
        let dt = |v, t| Data::DateTime(ExcelDateTime::new(v, t, false));
        assert_eq!(
            cell_text(&dt(45569.0, ExcelDateTimeType::DateTime)),
            "2024-10-04"
        );
        assert_eq!(
            cell_text(&dt(45_569.671_608_796_3, ExcelDateTimeType::DateTime)),
            "2024-10-04 16:07:07"
        );
        assert_eq!(cell_text(&dt(0.5, ExcelDateTimeType::DateTime)), "12:00:00");
        assert_eq!(
            cell_text(&dt(1.25, ExcelDateTimeType::TimeDelta)),
            "30:00:00"
        );
        assert_eq!(
            cell_text(&Data::DateTimeIso("2024-10-04T16:07:07".into())),
            "2024-10-04 16:07:07"
        );
        assert_eq!(
            cell_text(&Data::DateTimeIso("2024-10-04".into())),
            "2024-10-04"
        );
        assert_eq!(cell_text(&Data::Bool(true)), "TRUE");
        assert_eq!(cell_text(&Data::Error(CellErrorType::Div0)), "#DIV/0!");
        assert_eq!(cell_text(&Data::Empty), "");
        assert!(is_blank(&Data::String(" \n".into())));
        assert!(!is_blank(&Data::Int(0)));
    }
}
