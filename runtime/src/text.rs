//! Text as token indices: a vocabulary (the sorted distinct characters or words of a text),
//! training windows cut from the token stream, and the way back from indices to text for
//! generation. The vocabulary travels with the weights (safetensors metadata under
//! [`VOCABULARY_KEY`]), so generation uses exactly the indices training used.

use std::collections::BTreeSet;
use std::path::Path;

use crate::data::{Column, DataError, Dataset, MAX_FILE_BYTES};
use crate::files;

/// The metadata key of a weights file's vocabulary.
pub const VOCABULARY_KEY: &str = "nabla.vocabulary";

/// What one token is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// One Unicode character.
    Char,
    /// One run of non-whitespace characters; text is rejoined with single spaces.
    Word,
}

/// The tokens of a text, sorted, each index standing for one.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Vocabulary {
    /// Characters or words.
    pub level: Level,
    /// The tokens, sorted; a token's index is its position.
    pub tokens: Vec<String>,
}

/// `text` cut into tokens at `level`, one at a time (a text of millions of tokens is never
/// held as a list of them).
pub fn tokens(text: &str, level: Level) -> Box<dyn Iterator<Item = &str> + '_> {
    match level {
        Level::Char => Box::new(text.char_indices().map(|(i, c)| &text[i..i + c.len_utf8()])),
        Level::Word => Box::new(text.split_whitespace()),
    }
}

impl Vocabulary {
    /// The distinct tokens of `text`, sorted.
    pub fn of(text: &str, level: Level) -> Vocabulary {
        // Inserted one by one: `collect` would first gather every token, then sort them.
        let mut distinct = BTreeSet::new();
        for token in tokens(text, level) {
            distinct.insert(token);
        }
        Vocabulary {
            level,
            tokens: distinct.into_iter().map(str::to_string).collect(),
        }
    }

    /// The index of every token of `text`, or an error naming the first token (and where it
    /// is) that the vocabulary lacks.
    pub fn encode(&self, text: &str) -> Result<Vec<usize>, String> {
        tokens(text, self.level)
            .enumerate()
            .map(|(at, token)| self.index(token, at))
            .collect()
    }

    /// The index of `token`, the `at`-th of its text, or an error naming it.
    fn index(&self, token: &str, at: usize) -> Result<usize, String> {
        self.tokens
            .binary_search_by(|t| t.as_str().cmp(token))
            .map_err(|_| {
                let what = match self.level {
                    Level::Char => "character",
                    Level::Word => "word",
                };
                format!(
                    "{what} {token:?} (token {at} of the text) is not in the model's vocabulary of {} {what}s",
                    self.tokens.len()
                )
            })
    }

    /// The text of a token index (empty for one outside the vocabulary, which a model never
    /// predicts).
    pub fn decode(&self, index: usize) -> &str {
        self.tokens.get(index).map_or("", String::as_str)
    }

    /// What goes between two decoded tokens.
    pub fn separator(&self) -> &'static str {
        match self.level {
            Level::Char => "",
            Level::Word => " ",
        }
    }

    /// As weights-file metadata.
    pub fn to_metadata(&self) -> String {
        serde_json::to_string(self).expect("a vocabulary serialises")
    }

    /// From weights-file metadata.
    pub fn from_metadata(value: &str) -> Result<Vocabulary, String> {
        let v: Vocabulary = serde_json::from_str(value)
            .map_err(|e| format!("its vocabulary is unreadable: {e}"))?;
        if v.tokens.windows(2).any(|w| w[0] >= w[1]) {
            return Err("its vocabulary is not sorted and distinct".into());
        }
        Ok(v)
    }
}

/// A text file as training windows: every `seq` consecutive tokens feed `input`, and the
/// tokens one further on are `target`'s classes (next-token prediction). Windows do not
/// overlap and keep the text's order, so a held-out tail is a contiguous part of the text.
///
/// Memory: the file's bytes, then 4 bytes of token index per token, then the two columns (4
/// bytes per token each) that training keeps: at most 9 bytes per token at once beside the
/// file, and 8 after loading.
pub fn windows(
    path: &Path,
    level: Level,
    seq: usize,
    input: &str,
    target: &str,
) -> Result<Dataset, DataError> {
    let bytes = files::read_limited(path, "text file", MAX_FILE_BYTES).map_err(DataError)?;
    let text = std::str::from_utf8(&bytes).map_err(|e| {
        DataError(format!(
            "`{}` is not UTF-8 text: invalid byte at offset {}",
            path.display(),
            e.valid_up_to()
        ))
    })?;
    let vocabulary = Vocabulary::of(text, level);
    // Allocations that a large text may not get are asked for, not assumed: no text makes the
    // process abort.
    let too_large = |what: &str, bytes: usize| {
        DataError(format!(
            "`{}` is too large for this machine's memory: its {what} need {} MB more than can be had",
            path.display(),
            bytes >> 20
        ))
    };
    let mut ids: Vec<u32> = Vec::new();
    let estimate = match level {
        Level::Char => text.len(),
        Level::Word => text.len() / 2 + 1,
    };
    ids.try_reserve(estimate)
        .map_err(|_| too_large("token indices", 4 * estimate))?;
    for (at, token) in tokens(text, level).enumerate() {
        let index = vocabulary.index(token, at).map_err(DataError)?;
        ids.push(index as u32);
    }
    drop(bytes);
    let rows = ids.len().saturating_sub(1) / seq.max(1);
    if rows == 0 {
        return Err(DataError(format!(
            "`{}` has {} tokens, too few for one window of {seq} tokens and the one after it",
            path.display(),
            ids.len()
        )));
    }
    let column = |name: &str, shift: usize| -> Result<Column, DataError> {
        let mut values = Vec::new();
        values
            .try_reserve_exact(rows * seq)
            .map_err(|_| too_large("training windows", 8 * rows * seq))?;
        values.extend((0..rows * seq).map(|i| ids[i + shift] as f32));
        Ok(Column {
            name: name.to_string(),
            row_len: seq,
            values,
            source: None,
        })
    };
    Ok(Dataset {
        columns: vec![column(input, 0)?, column(target, 1)?],
        rows,
        origin: format!("`{}`", path.display()),
        vocabulary: Some(vocabulary),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vocabulary_is_sorted_and_round_trips() {
        let v = Vocabulary::of("hello world", Level::Char);
        assert_eq!(v.tokens.concat(), " dehlorw");
        let ids = v.encode("held").unwrap();
        let text: String = ids.iter().map(|&i| v.decode(i)).collect();
        assert_eq!(text, "held");
        assert!(v.encode("help").unwrap_err().contains("\"p\" (token 3"));
        let back = Vocabulary::from_metadata(&v.to_metadata()).unwrap();
        assert_eq!(back, v);
        let words = Vocabulary::of("to be or not to be", Level::Word);
        assert_eq!(words.tokens, ["be", "not", "or", "to"]);
    }
}
