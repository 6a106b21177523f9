//! IDX files (MNIST), gzipped or raw: the header checked before the body, which is read (and
//! inflated) only as far as the header's dimensions imply, so a gzip bomb costs nothing; pixels
//! scaled to [0, 1].

use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use super::{Column, DataError, Dataset, MAX_FILE_BYTES};
use crate::files;

/// Parses an IDX file of unsigned bytes (gzipped or not): its dimensions and data. The header
/// is read first; the body is read only as far as the dimensions imply, plus one byte to tell
/// whether the file has more.
pub(super) fn parse(path: &Path, magic: u32) -> Result<(Vec<usize>, Vec<u8>), DataError> {
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

pub(super) fn idx_pair(
    images: &Path,
    labels: &Path,
    input: &str,
    target: &str,
) -> Result<Dataset, DataError> {
    let (image_dims, pixels) = parse(images, 2051)?;
    let (label_dims, label_bytes) = parse(labels, 2049)?;
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
                source: Some(format!("`{}`", images.display())),
            },
            Column {
                name: target.to_string(),
                row_len: 1,
                values: label_bytes.iter().map(|&l| l as f32).collect(),
                source: Some(format!("`{}`", labels.display())),
            },
        ],
        rows,
        origin: format!("`{}` and `{}`", images.display(), labels.display()),
        vocabulary: None,
    })
}
