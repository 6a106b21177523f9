//! Data written in the model file itself, as literals.

use super::{Column, DataError, Dataset};

pub(super) fn inline(columns: &[(String, Vec<f64>, Vec<usize>)]) -> Result<Dataset, DataError> {
    let mut rows = None;
    let mut out = Vec::new();
    for (name, values, shape) in columns {
        let n = shape.first().copied().unwrap_or(1);
        if *rows.get_or_insert(n) != n {
            return Err(DataError(format!(
                "inline data: `{name}` has {n} rows, but another column has {}",
                rows.unwrap_or(0)
            )));
        }
        let row_len = shape.iter().skip(1).product();
        out.push(Column {
            name: name.clone(),
            row_len,
            values: values.iter().map(|&v| v as f32).collect(),
            source: None,
        });
    }
    Ok(Dataset {
        columns: out,
        rows: rows.unwrap_or(0),
        origin: "inline data".into(),
        vocabulary: None,
    })
}
