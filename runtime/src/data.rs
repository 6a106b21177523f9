//! Datasets: loading IDX (MNIST; gzip or raw), CSV, inline literals, and generated 2-D toy sets
//! like TensorFlow Playground's. Every loader checks what it reads and names the file in its
//! errors. Values are stored as f32 rows; MNIST pixels are scaled to [0, 1].

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::Rng;

/// Where data comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum DataSource {
    /// Literal rows per input name: `(name, values row-major, shape)`; the first dimension
    /// counts examples.
    Inline(Vec<(String, Vec<f64>, Vec<usize>)>),
    /// MNIST IDX files in a directory: `train-images-idx3-ubyte` (or `train-10k-...`) and
    /// `t10k-...` for the test split, each optionally gzipped.
    Mnist {
        /// The directory.
        dir: String,
    },
    /// One IDX image file and one IDX label file.
    Idx {
        /// Image file.
        images: String,
        /// Label file.
        labels: String,
    },
    /// A CSV file with columns assigned to inputs: `(name, first column, one past last)`.
    Csv {
        /// The file.
        path: String,
        /// Column ranges per input name.
        columns: Vec<(String, usize, usize)>,
    },
    /// A generated 2-D toy dataset.
    Toy {
        /// `xor`, `circle`, `gauss` or `spiral`.
        kind: String,
        /// Number of points.
        n: usize,
        /// Noise, as in the Playground (0 to 0.5).
        noise: f64,
    },
}

/// One named column: `rows` examples of `row_len` values each.
#[derive(Clone, Debug, PartialEq)]
pub struct Column {
    /// The input it feeds.
    pub name: String,
    /// Values per example.
    pub row_len: usize,
    /// `rows * row_len` values.
    pub values: Vec<f32>,
}

/// Examples as named columns of equal length.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// The columns.
    pub columns: Vec<Column>,
    /// Number of examples.
    pub rows: usize,
    /// Where it came from, for error messages.
    pub origin: String,
}

impl Dataset {
    /// The column feeding `name`.
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// A data error: what is wrong, naming the file.
#[derive(Clone, Debug, PartialEq)]
pub struct DataError(pub String);

impl std::fmt::Display for DataError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DataError {}

/// Which split of a source with both (MNIST) to load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// Training examples.
    Train,
    /// Test examples.
    Test,
}

/// Loads `source`. Image/label sources feed `input` and `target`; relative paths are resolved
/// against `base` (the model file's directory) when the file is not found as given.
pub fn load(
    source: &DataSource,
    split: Split,
    input: &str,
    target: &str,
    base: &Path,
    seed: u64,
) -> Result<Dataset, DataError> {
    match source {
        DataSource::Inline(columns) => inline(columns),
        DataSource::Mnist { dir } => {
            let dir = resolve(dir, base);
            let prefixes: &[&str] = match split {
                Split::Train => &["train", "train-10k"],
                Split::Test => &["t10k"],
            };
            let find = |kind: &str| {
                prefixes
                    .iter()
                    .flat_map(|p| [format!("{p}-{kind}.gz"), format!("{p}-{kind}")])
                    .map(|name| dir.join(name))
                    .find(|p| p.exists())
                    .ok_or_else(|| DataError(format!("no MNIST {kind} file for the {split:?} split in `{}` (expected {}-{kind}[.gz])", dir.display(), prefixes[0]).to_lowercase().replace("mnist", "MNIST")))
            };
            idx_pair(
                &find("images-idx3-ubyte")?,
                &find("labels-idx1-ubyte")?,
                input,
                target,
            )
        }
        DataSource::Idx { images, labels } => idx_pair(
            &resolve(images, base),
            &resolve(labels, base),
            input,
            target,
        ),
        DataSource::Csv { path, columns } => csv(&resolve(path, base), columns),
        DataSource::Toy { kind, n, noise } => Ok(toy(kind, *n, *noise, input, target, seed)),
    }
}

fn resolve(path: &str, base: &Path) -> PathBuf {
    let p = PathBuf::from(path);
    if p.is_relative() && !p.exists() && base.join(&p).exists() {
        base.join(p)
    } else {
        p
    }
}

fn inline(columns: &[(String, Vec<f64>, Vec<usize>)]) -> Result<Dataset, DataError> {
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
        });
    }
    Ok(Dataset {
        columns: out,
        rows: rows.unwrap_or(0),
        origin: "inline data".into(),
    })
}

/// Reads a whole file, gunzipping it when it starts with the gzip magic bytes.
fn read_maybe_gz(path: &Path) -> Result<Vec<u8>, DataError> {
    let raw = std::fs::read(path)
        .map_err(|e| DataError(format!("cannot read `{}`: {e}", path.display())))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| {
                DataError(format!(
                    "`{}` is not a valid gzip file: {e}",
                    path.display()
                ))
            })?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Parses an IDX file of unsigned bytes: its dimensions and data.
fn idx(path: &Path, magic: u32) -> Result<(Vec<usize>, Vec<u8>), DataError> {
    let bytes = read_maybe_gz(path)?;
    let bad = |what: String| {
        DataError(format!(
            "`{}` is not a valid IDX file: {what}",
            path.display()
        ))
    };
    let word = |i: usize| -> Result<u32, DataError> {
        bytes
            .get(4 * i..4 * i + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(|| bad("it ends inside the header".into()))
    };
    let found = word(0)?;
    if found != magic {
        return Err(bad(format!("magic number {found} (expected {magic})")));
    }
    let rank = (magic & 0xff) as usize;
    let dims: Vec<usize> = (1..=rank)
        .map(|i| word(i).map(|d| d as usize))
        .collect::<Result<_, _>>()?;
    let header = 4 * (rank + 1);
    let len = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| bad("absurd dimensions".into()))?;
    if bytes.len() != header + len {
        return Err(bad(format!(
            "dimensions {dims:?} need {} data bytes, found {}",
            len,
            bytes.len() - header.min(bytes.len())
        )));
    }
    Ok((dims, bytes[header..].to_vec()))
}

fn idx_pair(images: &Path, labels: &Path, input: &str, target: &str) -> Result<Dataset, DataError> {
    let (image_dims, pixels) = idx(images, 2051)?;
    let (label_dims, label_bytes) = idx(labels, 2049)?;
    if image_dims[0] != label_dims[0] {
        return Err(DataError(format!(
            "`{}` has {} images but `{}` has {} labels",
            images.display(),
            image_dims[0],
            labels.display(),
            label_dims[0]
        )));
    }
    let rows = image_dims[0];
    let row_len = image_dims[1] * image_dims[2];
    Ok(Dataset {
        columns: vec![
            Column {
                name: input.to_string(),
                row_len,
                values: pixels.iter().map(|&p| p as f32 / 255.0).collect(),
            },
            Column {
                name: target.to_string(),
                row_len: 1,
                values: label_bytes.iter().map(|&l| l as f32).collect(),
            },
        ],
        rows,
        origin: format!("`{}`", labels.display()),
    })
}

fn csv(path: &Path, columns: &[(String, usize, usize)]) -> Result<Dataset, DataError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| DataError(format!("cannot read `{}`: {e}", path.display())))?;
    let mut out: Vec<Column> = columns
        .iter()
        .map(|(n, lo, hi)| Column {
            name: n.clone(),
            row_len: hi - lo,
            values: Vec::new(),
        })
        .collect();
    let mut rows = 0;
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let parsed: Result<Vec<f32>, _> = fields.iter().map(|f| f.parse::<f32>()).collect();
        let Ok(values) = parsed else {
            if rows == 0 && number == 0 {
                continue; // a header line
            }
            return Err(DataError(format!(
                "{}:{}: expected numbers separated by commas",
                path.display(),
                number + 1
            )));
        };
        for (column, (_, lo, hi)) in out.iter_mut().zip(columns) {
            if *hi > values.len() {
                return Err(DataError(format!(
                    "{}:{}: needs column {} but the line has {} columns",
                    path.display(),
                    number + 1,
                    hi - 1,
                    values.len()
                )));
            }
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
    })
}

/// TensorFlow Playground's 2-D classification sets, labels 0/1, seeded.
fn toy(kind: &str, n: usize, noise: f64, input: &str, target: &str, seed: u64) -> Dataset {
    let mut rng = Rng::seeded(seed ^ 0x746f79);
    let mut points = Vec::with_capacity(2 * n);
    let mut labels = Vec::with_capacity(n);
    let mut push = |x: f64, y: f64, label: bool| {
        points.extend([x as f32, y as f32]);
        labels.push(if label { 1.0 } else { 0.0 });
    };
    for i in 0..n {
        match kind {
            "circle" => {
                let label = i % 2 == 0;
                let r = if label {
                    rng.uniform(0.0, 2.5)
                } else {
                    rng.uniform(3.5, 5.0)
                };
                let a = rng.uniform(0.0, std::f64::consts::TAU);
                let (x, y) = (r * a.cos(), r * a.sin());
                push(
                    x + rng.uniform(-5.0, 5.0) * noise,
                    y + rng.uniform(-5.0, 5.0) * noise,
                    label,
                );
            }
            "gauss" => {
                let label = i % 2 == 0;
                let c = if label { 2.0 } else { -2.0 };
                let spread = 0.5 + 3.5 * noise;
                push(rng.normal(c, spread), rng.normal(c, spread), label);
            }
            "spiral" => {
                let label = i % 2 == 0;
                let t = (i / 2) as f64 / (n / 2).max(1) as f64 * 5.0;
                let a = 1.75 * t * std::f64::consts::TAU / 5.0
                    + if label { 0.0 } else { std::f64::consts::PI };
                push(
                    t * a.sin() + rng.uniform(-1.0, 1.0) * noise,
                    t * a.cos() + rng.uniform(-1.0, 1.0) * noise,
                    label,
                );
            }
            _ => {
                let pad = 0.3;
                let mut c = || {
                    let v = rng.uniform(-5.0, 5.0);
                    if v > 0.0 { v + pad } else { v - pad }
                };
                let (x, y) = (c(), c());
                let label = x * y >= 0.0;
                push(
                    x + rng.uniform(-5.0, 5.0) * noise,
                    y + rng.uniform(-5.0, 5.0) * noise,
                    label,
                );
            }
        }
    }
    Dataset {
        columns: vec![
            Column {
                name: input.to_string(),
                row_len: 2,
                values: points,
            },
            Column {
                name: target.to_string(),
                row_len: 1,
                values: labels,
            },
        ],
        rows: n,
        origin: format!("{kind}({n})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, bytes: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("nabla-data-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    fn idx_bytes(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut b = magic.to_be_bytes().to_vec();
        for d in dims {
            b.extend(d.to_be_bytes());
        }
        b.extend_from_slice(data);
        b
    }

    #[test]
    fn idx_files_load_and_bad_ones_are_named() {
        let images = write("i.idx", &idx_bytes(2051, &[2, 1, 2], &[0, 255, 51, 102]));
        let labels = write("l.idx", &idx_bytes(2049, &[2], &[3, 7]));
        let d = idx_pair(&images, &labels, "x", "y").unwrap();
        assert_eq!(d.rows, 2);
        assert_eq!(d.column("x").unwrap().values, vec![0.0, 1.0, 0.2, 0.4]);
        assert_eq!(d.column("y").unwrap().values, vec![3.0, 7.0]);
        let truncated = write("t.idx", &idx_bytes(2051, &[2, 1, 2], &[0, 255]));
        let err = idx_pair(&truncated, &labels, "x", "y").unwrap_err();
        assert!(
            err.0.contains("t.idx") && err.0.contains("need 4 data bytes, found 2"),
            "{err}"
        );
        let wrong = write("w.idx", &idx_bytes(2049, &[2], &[1, 2]));
        assert!(
            idx_pair(&wrong, &labels, "x", "y")
                .unwrap_err()
                .0
                .contains("magic number 2049")
        );
    }

    #[test]
    fn csv_reads_columns_and_locates_errors() {
        let p = write("d.csv", b"a,b,c\n1,2,3\n4,5,6\n");
        let d = csv(&p, &[("x".into(), 0, 2), ("y".into(), 2, 3)]).unwrap();
        assert_eq!(
            (d.rows, d.column("x").unwrap().values.clone()),
            (2, vec![1.0, 2.0, 4.0, 5.0])
        );
        let bad = write("e.csv", b"1,2,3\n4,x,6\n");
        assert!(
            csv(&bad, &[("x".into(), 0, 2)])
                .unwrap_err()
                .0
                .ends_with("e.csv:2: expected numbers separated by commas")
        );
    }

    #[test]
    fn toy_sets_are_seeded_and_balanced() {
        for kind in ["xor", "circle", "gauss", "spiral"] {
            let a = toy(kind, 100, 0.1, "x", "y", 1);
            assert_eq!(a, toy(kind, 100, 0.1, "x", "y", 1));
            let ones = a
                .column("y")
                .unwrap()
                .values
                .iter()
                .filter(|&&v| v == 1.0)
                .count();
            assert!((30..=70).contains(&ones), "{kind}: {ones}");
        }
    }
}
