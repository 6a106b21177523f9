//! A metrics log read for its curves: line by line, each line kept as the few numbers a curve
//! needs, so that memory stays a fraction of the log's size however long the run was. Values
//! that are not finite (a run with `--allow-nonfinite`) cannot be drawn; they are counted and
//! left out, so that the picture can say what it does not show.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use nabla_runtime::train::any_f64;
use serde::Deserialize;

/// The report keys that curves are drawn from, in panel order: losses, then accuracies.
pub const KEYS: [&str; 6] = [
    "loss",
    "val_loss",
    "test_loss",
    "accuracy",
    "val_accuracy",
    "test_accuracy",
];

/// The longest line a metrics log may have (its lines are about 200 bytes).
const MAX_LINE: u64 = 1 << 16;

/// What a log holds for each key of [`KEYS`].
#[derive(Default)]
pub struct Metrics {
    /// `(epoch, value)` for every finite value, by key.
    pub points: [Vec<(f64, f64)>; 6],
    /// Values that are not finite, by key: how many, and the first epoch with one.
    pub left_out: [(usize, u64); 6],
    /// `(epoch, learning rate)` for every line that has a finite rate.
    pub lr: Vec<(f64, f64)>,
    /// The best epoch the last line names, when the run used early stopping.
    pub best_epoch: Option<u64>,
}

impl Metrics {
    /// What was left out, as a sentence part (`3 non-finite `loss` values (from epoch 7)`), or
    /// `None` when everything was drawn.
    pub fn left_out_note(&self) -> Option<String> {
        let parts: Vec<String> = KEYS
            .iter()
            .zip(&self.left_out)
            .filter(|(_, (n, _))| *n > 0)
            .map(|(key, (n, first))| {
                let values = if *n == 1 { "value" } else { "values" };
                format!("{n} non-finite `{key}` {values} (from epoch {first})")
            })
            .collect();
        (!parts.is_empty()).then(|| parts.join(", "))
    }

    /// Adds one line of a log (`at` names it in errors). Epoch 0, a single batch's loss, is
    /// not drawn.
    fn add(&mut self, line: &str, at: &str) -> Result<(), String> {
        let parsed: Line =
            serde_json::from_str(line).map_err(|e| format!("{at}: not a metrics line: {e}"))?;
        let epoch = parsed.epoch.ok_or_else(|| {
            format!("{at}: the line has no `epoch`; expected the lines `nabla train --log` writes")
        })?;
        if epoch == 0 {
            return Ok(());
        }
        let readings = [
            parsed.loss,
            parsed.val_loss,
            parsed.test_loss,
            parsed.accuracy,
            parsed.val_accuracy,
            parsed.test_accuracy,
        ];
        if let Some(Ok(lr)) = parsed.lr.value(false)
            && lr.is_finite()
        {
            self.lr.push((epoch as f64, lr));
        }
        if parsed.best_epoch.is_some() {
            self.best_epoch = parsed.best_epoch;
        }
        for (i, reading) in readings.into_iter().enumerate() {
            match reading.value(KEYS[i] == "loss") {
                None => {}
                Some(Ok(v)) if v.is_finite() => self.points[i].push((epoch as f64, v)),
                Some(Ok(_)) => {
                    let (n, first) = &mut self.left_out[i];
                    if *n == 0 {
                        *first = epoch;
                    }
                    *n += 1;
                }
                Some(Err(text)) => {
                    return Err(format!("{at}: `{}` is `{text}`, not a number", KEYS[i]));
                }
            }
        }
        Ok(())
    }
}

/// The fields of a log line that curves use; others are ignored.
#[derive(Deserialize)]
struct Line {
    epoch: Option<u64>,
    #[serde(default)]
    loss: Reading,
    #[serde(default)]
    val_loss: Reading,
    #[serde(default)]
    test_loss: Reading,
    #[serde(default)]
    accuracy: Reading,
    #[serde(default)]
    val_accuracy: Reading,
    #[serde(default)]
    test_accuracy: Reading,
    #[serde(default)]
    lr: Reading,
    best_epoch: Option<u64>,
}

/// A value as JSON output writes it: a number, the text of a non-finite one, or `null` for
/// one that is absent.
#[derive(Default, Deserialize)]
#[serde(untagged)]
enum Reading {
    Number(f64),
    Text(String),
    #[default]
    Null,
}

impl Reading {
    /// The value, if present: logs written before non-finite values were text have `null` in
    /// their place, so a `null` where a value is always present (`always`) is one.
    fn value(self, always: bool) -> Option<Result<f64, String>> {
        match self {
            Reading::Number(v) => Some(Ok(v)),
            Reading::Text(t) => Some(any_f64::from_text(&t).ok_or(t)),
            Reading::Null => always.then_some(Ok(f64::NAN)),
        }
    }
}

/// Reads a log from `reader` (`origin` names it in errors). A torn last line, of a run killed
/// while writing it, is left out.
pub fn read(origin: &Path, reader: impl Read) -> Result<Metrics, String> {
    let mut reader = BufReader::new(reader);
    let mut metrics = Metrics::default();
    let mut line = Vec::new();
    for number in 1.. {
        line.clear();
        let read = (&mut reader)
            .take(MAX_LINE + 1)
            .read_until(b'\n', &mut line)
            .map_err(|e| format!("cannot read `{}`: {e}", origin.display()))?;
        if read == 0 {
            break;
        }
        let at = format!("{}:{number}", origin.display());
        let complete = line.last() == Some(&b'\n');
        if !complete && line.len() as u64 > MAX_LINE {
            return Err(format!(
                "{at}: the line is longer than {MAX_LINE} bytes; expected the lines `nabla train --log` writes"
            ));
        }
        let text = String::from_utf8_lossy(&line);
        if text.trim().is_empty() {
            continue;
        }
        match metrics.add(&text, &at) {
            Ok(()) => {}
            Err(_) if !complete => break,
            Err(e) => return Err(e),
        }
    }
    Ok(metrics)
}

/// The metrics of reports already in memory (`train --plot`).
pub fn from_records(origin: &Path, records: &[serde_json::Value]) -> Result<Metrics, String> {
    let mut metrics = Metrics::default();
    for (i, record) in records.iter().enumerate() {
        metrics.add(
            &record.to_string(),
            &format!("{}:{}", origin.display(), i + 1),
        )?;
    }
    Ok(metrics)
}
