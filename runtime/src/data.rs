//! Datasets: loading IDX (MNIST; gzip or raw), CSV, inline literals, and generated 2-D toy sets
//! like TensorFlow Playground's. Every loader checks what it reads and names the file in its
//! errors. Values are stored as f32 rows; MNIST pixels are scaled to [0, 1].
//!
//! Reads are bounded: a data file must be a regular file of at most [`MAX_FILE_BYTES`], and an
//! IDX file's header is checked before its body, which is read (and, when gzipped, inflated)
//! only as far as the header's dimensions imply, so a gzip bomb costs nothing.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use crate::text::{self, Level, Vocabulary};
use crate::{Rng, files};

/// The largest data file nabla reads, and the largest IDX body (after gunzipping): 1 GiB.
pub const MAX_FILE_BYTES: u64 = 1 << 30;

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
        /// Whether the first row is a header; `None`: only when none of its fields is a number.
        header: Option<bool>,
    },
    /// A text as windows of tokens ([`crate::text::windows`]).
    Text {
        /// The file.
        path: String,
        /// Characters or words.
        level: Level,
        /// Tokens per window.
        seq: usize,
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
    /// For windows of a text: its vocabulary. The examples are then consecutive pieces of
    /// one text, and a held-out part is its tail.
    pub vocabulary: Option<Vocabulary>,
}

impl Dataset {
    /// The column feeding `name`.
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// The examples `rows`, in that order.
    pub fn select(&self, rows: &[usize], origin: String) -> Dataset {
        let columns = self
            .columns
            .iter()
            .map(|c| Column {
                name: c.name.clone(),
                row_len: c.row_len,
                values: rows
                    .iter()
                    .flat_map(|&r| &c.values[r * c.row_len..(r + 1) * c.row_len])
                    .copied()
                    .collect(),
            })
            .collect();
        Dataset {
            columns,
            rows: rows.len(),
            origin,
            vocabulary: self.vocabulary.clone(),
        }
    }

    /// Splits off a random `fraction` of the examples (chosen with `seed`, at least one) as a
    /// validation set: `(training, validation)`, each in the original order; for windows of a
    /// text, the last `fraction` of them (a contiguous part of the text, so no window straddles
    /// the split). An error when either part would be empty.
    pub fn hold_out(&self, fraction: f64, seed: u64) -> Result<(Dataset, Dataset), String> {
        let held = ((self.rows as f64 * fraction).round() as usize).max(1);
        if held >= self.rows {
            return Err(format!(
                "{} has {} example{}; holding out {fraction} of them for validation leaves none to train on",
                self.origin,
                self.rows,
                if self.rows == 1 { "" } else { "s" }
            ));
        }
        let mut order: Vec<usize> = (0..self.rows).collect();
        if self.vocabulary.is_some() {
            order.rotate_left(self.rows - held);
        } else {
            Rng::stream(seed, &[HOLD_OUT_STREAM]).shuffle(&mut order);
        }
        let (mut validation, mut training) = (order[..held].to_vec(), order[held..].to_vec());
        validation.sort_unstable();
        training.sort_unstable();
        Ok((
            self.select(&training, self.origin.clone()),
            self.select(
                &validation,
                format!("the validation part of {}", self.origin),
            ),
        ))
    }
}

/// The random stream that picks validation examples, apart from every epoch's shuffle.
const HOLD_OUT_STREAM: u64 = u64::MAX;

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
/// against `base` (the model file's directory), so a model finds its data from any working
/// directory.
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
                    .ok_or_else(|| {
                        let split = match split {
                            Split::Train => "training",
                            Split::Test => "test",
                        };
                        DataError(format!("no MNIST {kind} file for the {split} split in `{}` (expected {}-{kind}[.gz])", dir.display(), prefixes[0]))
                    })
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
        DataSource::Csv {
            path,
            columns,
            header,
        } => csv(&resolve(path, base), columns, *header),
        DataSource::Text { path, level, seq } => {
            text::windows(&resolve(path, base), *level, *seq, input, target)
        }
        DataSource::Toy { kind, n, noise } => Ok(toy(kind, *n, *noise, input, target, seed)),
    }
}

fn resolve(path: &str, base: &Path) -> PathBuf {
    base.join(path)
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
        vocabulary: None,
    })
}

/// Parses an IDX file of unsigned bytes (gzipped or not): its dimensions and data. The header
/// is read first; the body is read only as far as the dimensions imply, plus one byte to tell
/// whether the file has more.
fn idx(path: &Path, magic: u32) -> Result<(Vec<usize>, Vec<u8>), DataError> {
    let (file, _) = files::open_limited(path, "data file", MAX_FILE_BYTES).map_err(DataError)?;
    let cannot = |e: std::io::Error| DataError(format!("cannot read `{}`: {e}", path.display()));
    let mut buffered = BufReader::new(file);
    let gzipped = buffered
        .fill_buf()
        .map_err(cannot)?
        .starts_with(&[0x1f, 0x8b]);
    let mut reader: Box<dyn Read> = if gzipped {
        Box::new(flate2::read::GzDecoder::new(buffered))
    } else {
        Box::new(buffered)
    };
    let bad = |what: String| {
        DataError(format!(
            "`{}` is not a valid IDX file: {what}",
            path.display()
        ))
    };
    let mut word = || -> Result<u32, DataError> {
        let mut b = [0; 4];
        reader.read_exact(&mut b).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => bad("it ends inside the header".into()),
            _ => bad(e.to_string()),
        })?;
        Ok(u32::from_be_bytes(b))
    };
    let found = word()?;
    if found != magic {
        return Err(bad(format!("magic number {found} (expected {magic})")));
    }
    let rank = (magic & 0xff) as usize;
    let dims: Vec<usize> = (0..rank)
        .map(|_| word().map(|d| d as usize))
        .collect::<Result<_, _>>()?;
    let len = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n as u64 <= MAX_FILE_BYTES)
        .ok_or_else(|| {
            bad(format!(
                "dimensions {dims:?} are more than the {MAX_FILE_BYTES} bytes nabla reads"
            ))
        })?;
    let mut body = Vec::new();
    reader
        .take(len as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| bad(e.to_string()))?;
    if body.len() != len {
        let found = if body.len() > len {
            "more".to_string()
        } else {
            body.len().to_string()
        };
        return Err(bad(format!(
            "dimensions {dims:?} need {len} data bytes, found {found}"
        )));
    }
    Ok((dims, body))
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
        vocabulary: None,
    })
}

/// Reads a CSV file with the `csv` crate (quoting, a UTF-8 byte-order mark, `#` comment lines,
/// blank lines skipped). Every row must have exactly as many fields as the columns read reach,
/// and every field read must be a finite number. The first row is a header when `header` says
/// so, or, when it says nothing, when none of its fields is a number.
fn csv(
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
        vocabulary: None,
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
        let xy = [("x".to_string(), 0, 2), ("y".to_string(), 2, 3)];
        let read = |name: &str, text: &str, header: Option<bool>| {
            csv(&write(name, text.as_bytes()), &xy, header)
        };
        let d = read("d.csv", "a,b,c\n1,2,3\n# a comment\n\n4, 5 ,6\n", None).unwrap();
        assert_eq!(
            (d.rows, d.column("x").unwrap().values.clone()),
            (2, vec![1.0, 2.0, 4.0, 5.0])
        );
        // A byte-order mark is not a header, and no row is lost to it.
        let d = read("bom.csv", "\u{feff}1,2,3\n4,5,6\n", None).unwrap();
        assert_eq!(d.column("y").unwrap().values, vec![3.0, 6.0]);
        // Quoted fields are fields.
        let d = read("q.csv", "\"1\",2,\"3\"\n", None).unwrap();
        assert_eq!(d.rows, 1);
        // Explicit header rules.
        assert_eq!(read("h.csv", "7,8,9\n1,2,3\n", Some(true)).unwrap().rows, 1);
        let errors = [
            (
                "n.csv",
                "a,b,c\n1,2,3\n",
                Some(false),
                "n.csv:1: column 0 is `a`, expected a number",
            ),
            // A typo in the first row is an error, not a silently skipped header.
            (
                "t.csv",
                "1,2x,3\n4,5,6\n",
                None,
                "t.csv:1: column 1 is `2x`, expected a number (a header row must have no number at all, or say `header = true`)",
            ),
            (
                "e.csv",
                "1,2,3\n4,x,6\n",
                None,
                "e.csv:2: column 1 is `x`, expected a number",
            ),
            (
                "w.csv",
                "1,2,3\n4,5,6,7\n",
                None,
                "w.csv:2: the row has 4 fields, but the columns read (x = 0..2, y = 2) need exactly 3",
            ),
        ];
        for (name, text, header, expected) in errors {
            let err = read(name, text, header).unwrap_err().0;
            assert!(err.ends_with(expected), "{err}");
        }
        let err = read("m.csv", "1,2\n", None).unwrap_err().0;
        assert!(err.contains("m.csv:1: the row has 2 fields"), "{err}");
        for bad in ["NaN", "inf", "-inf", "1e39"] {
            let err = read("f.csv", &format!("1,2,3\n4,{bad},6\n"), None)
                .unwrap_err()
                .0;
            assert!(
                err.contains(&format!(
                    "f.csv:2: column 1 is `{bad}`, expected a finite number"
                )),
                "{err}"
            );
        }
    }

    #[test]
    fn a_gzip_bomb_is_refused_without_inflating_it() {
        use std::io::Write;
        // A header for 4 images of 28x28 and 64 MiB of zeros behind it: the header is believed,
        // so inflation stops one byte after the 3,136 bytes it implies.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&idx_bytes(2051, &[4, 28, 28], &[])).unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..64 {
            gz.write_all(&zeros).unwrap();
        }
        let bomb = write("bomb.gz", &gz.finish().unwrap());
        let err = idx(&bomb, 2051).unwrap_err().0;
        assert!(err.contains("need 3136 data bytes, found more"), "{err}");
        // An honest gzipped file loads.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&idx_bytes(2049, &[3], &[1, 2, 3])).unwrap();
        let ok = write("ok.gz", &gz.finish().unwrap());
        assert_eq!(idx(&ok, 2049).unwrap(), (vec![3], vec![1, 2, 3]));
        // A header promising more than nabla reads is refused before any body is read.
        let huge = write(
            "huge.idx",
            &idx_bytes(2051, &[1 << 20, 1 << 10, 1 << 10], &[]),
        );
        assert!(idx(&huge, 2051).unwrap_err().0.contains("more than the"));
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
