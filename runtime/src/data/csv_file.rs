//! CSV files through the `csv` crate: named column ranges as inputs and targets, every field
//! checked, errors at the file's line and column.

use std::io::Read;
use std::path::Path;

use super::{Column, DataError, Dataset, MAX_FILE_BYTES};
use crate::files;

/// Reads a CSV file with the `csv` crate (quoting, a UTF-8 byte-order mark, `#` comment lines,
/// blank lines skipped). Every row must have exactly as many fields as the columns read reach,
/// and every field read must be a finite number. The first row is a header when `header` says
/// so, or, when it says nothing, when none of its fields is a number.
pub(super) fn csv(
    path: &Path,
    columns: &[(String, usize, usize)],
    header: Option<bool>,
) -> Result<Dataset, DataError> {
    let (file, _) = files::open_limited(path, "data file", MAX_FILE_BYTES).map_err(DataError)?;
    let width = columns.iter().map(|(_, _, hi)| *hi).max().unwrap_or(0);
    let mut out: Vec<Column> = columns
        .iter()
        .map(|(n, lo, hi)| Column {
            name: n.clone(),
            row_len: hi - lo,
            values: Vec::new(),
            source: None,
        })
        .collect();
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .comment(Some(b'#'))
        .trim(csv::Trim::All)
        .from_reader(file.take(MAX_FILE_BYTES));
    let mut rows = 0;
    let mut values = Vec::with_capacity(width);
    for (index, record) in reader.records().enumerate() {
        let record = record.map_err(|e| DataError(format!("{}: {e}", path.display())))?;
        let line = record.position().map_or(0, |p| p.line());
        let at = format!("{}:{line}", path.display());
        let is_number = |field: &str| field.parse::<f32>().is_ok();
        if index == 0 && header.unwrap_or_else(|| !record.iter().any(is_number)) {
            continue;
        }
        if record.len() != width {
            let names: Vec<String> = columns
                .iter()
                .map(|(n, lo, hi)| match hi - lo {
                    1 => format!("{n} = {lo}"),
                    _ => format!("{n} = {lo}..{hi}"),
                })
                .collect();
            return Err(DataError(format!(
                "{at}: the row has {} field{}, but the columns read ({}) need exactly {width}",
                record.len(),
                if record.len() == 1 { "" } else { "s" },
                names.join(", ")
            )));
        }
        values.clear();
        for (c, field) in record.iter().enumerate() {
            let value = field.parse::<f32>().map_err(|_| {
                let hint = if index == 0 && header.is_none() {
                    " (a header row must have no number at all, or say `header = true`)"
                } else {
                    ""
                };
                DataError(format!(
                    "{at}: column {c} is `{field}`, expected a number{hint}"
                ))
            })?;
            if !value.is_finite() {
                return Err(DataError(format!(
                    "{at}: column {c} is `{field}`, expected a finite number{}",
                    if field.parse::<f64>().is_ok_and(f64::is_finite) {
                        " (it is out of f32's range)"
                    } else {
                        ""
                    }
                )));
            }
            values.push(value);
        }
        for (column, (_, lo, hi)) in out.iter_mut().zip(columns) {
            column.values.extend_from_slice(&values[*lo..*hi]);
        }
        rows += 1;
    }
    if rows == 0 {
        return Err(DataError(format!("`{}` has no data rows", path.display())));
    }
    Ok(Dataset {
        columns: out,
        rows,
        origin: format!("`{}`", path.display()),
        vocabulary: None,
    })
}
