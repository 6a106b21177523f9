//! Datasets: the [`Dataset`] type, held-out splits, and loading from a [`DataSource`]: IDX
//! (MNIST; gzip or raw, [`idx`]), CSV ([`csv_file`]), inline literals ([`inline`]), generated
//! 2-D toy sets like TensorFlow Playground's ([`toy`]) and texts ([`crate::text`]). Every loader checks what it reads and names the file in its
//! errors. Values are stored as f32 rows; MNIST pixels are scaled to [0, 1].
//!
//! Reads are bounded: a data file must be a regular file of at most [`MAX_FILE_BYTES`], and an
//! IDX file's header is checked before its body, which is read (and, when gzipped, inflated)
//! only as far as the header's dimensions imply, so a gzip bomb costs nothing.

use std::path::{Path, PathBuf};

use crate::Rng;
use crate::text::{self, Level, Vocabulary};

mod csv_file;
mod idx;
mod inline;
mod toy;

use csv_file::csv;
use idx::idx_pair;
use inline::inline;
use toy::toy;

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
    /// The file these values came from, where the dataset's columns come from different files
    /// (MNIST's images and labels); otherwise `None`, and the dataset's origin says.
    pub source: Option<String>,
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

    /// Where `column`'s values came from, for error messages.
    pub fn origin_of<'a>(&'a self, column: &'a Column) -> &'a str {
        column.source.as_deref().unwrap_or(&self.origin)
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
                source: c.source.clone(),
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
    /// the split), cut off in place so that a large text is not copied. An error when either
    /// part would be empty.
    pub fn hold_out(mut self, fraction: f64, seed: u64) -> Result<(Dataset, Dataset), String> {
        let held = ((self.rows as f64 * fraction).round() as usize).max(1);
        if held >= self.rows {
            return Err(format!(
                "{} has {} example{}; holding out {fraction} of them for validation leaves none to train on",
                self.origin,
                self.rows,
                if self.rows == 1 { "" } else { "s" }
            ));
        }
        let validation_origin = format!("the validation part of {}", self.origin);
        if self.vocabulary.is_some() {
            let kept = self.rows - held;
            let tail = Dataset {
                columns: self
                    .columns
                    .iter_mut()
                    .map(|c| {
                        let values = c.values.split_off(kept * c.row_len);
                        c.values.shrink_to_fit();
                        Column {
                            name: c.name.clone(),
                            row_len: c.row_len,
                            values,
                            source: c.source.clone(),
                        }
                    })
                    .collect(),
                rows: held,
                origin: validation_origin,
                vocabulary: self.vocabulary.clone(),
            };
            self.rows = kept;
            return Ok((self, tail));
        }
        let mut order: Vec<usize> = (0..self.rows).collect();
        Rng::stream(seed, &[HOLD_OUT_STREAM]).shuffle(&mut order);
        let (mut validation, mut training) = (order[..held].to_vec(), order[held..].to_vec());
        validation.sort_unstable();
        training.sort_unstable();
        Ok((
            self.select(&training, self.origin.clone()),
            self.select(&validation, validation_origin),
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
        let err = idx::parse(&bomb, 2051).unwrap_err().0;
        assert!(err.contains("need 3136 data bytes, found more"), "{err}");
        // An honest gzipped file loads.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&idx_bytes(2049, &[3], &[1, 2, 3])).unwrap();
        let ok = write("ok.gz", &gz.finish().unwrap());
        assert_eq!(idx::parse(&ok, 2049).unwrap(), (vec![3], vec![1, 2, 3]));
        // A header promising more than nabla reads is refused before any body is read.
        let huge = write(
            "huge.idx",
            &idx_bytes(2051, &[1 << 20, 1 << 10, 1 << 10], &[]),
        );
        assert!(
            idx::parse(&huge, 2051)
                .unwrap_err()
                .0
                .contains("more than the")
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
