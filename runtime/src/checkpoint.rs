//! Parameters on disk in the safetensors format, under their model names (`w1`, `h2.w`), as
//! f32 little-endian tensors. Files are written atomically ([`files::write_atomically`]), so an
//! interrupted save never destroys the last one. Loading refuses what would load wrong values
//! silently: duplicate names, non-finite values, and f64 values outside f32's range. The
//! header's free-form `__metadata__` strings carry what is not a tensor (a training run's
//! position, see [`crate::resume`]).

use std::collections::HashMap;
use std::path::Path;

use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};

use crate::files;

/// A named tensor: its shape and values.
pub type Tensor = (String, Vec<usize>, Vec<f32>);

/// What a safetensors file holds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Contents {
    /// Its tensors as f32, sorted by name.
    pub tensors: Vec<Tensor>,
    /// Each tensor's type in the file (`F32`, `F64`), in the same order.
    pub dtypes: Vec<String>,
    /// The header's metadata.
    pub metadata: HashMap<String, String>,
}

/// Writes `tensors` and `metadata` to `path` atomically.
pub fn save(
    path: &Path,
    tensors: &[Tensor],
    metadata: HashMap<String, String>,
) -> Result<(), String> {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), b)| {
            TensorView::new(Dtype::F32, shape.clone(), b).map(|v| (name.clone(), v))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("cannot encode the parameters: {e}"))?;
    let metadata = (!metadata.is_empty()).then_some(metadata);
    let encoded = safetensors::serialize(views, metadata)
        .map_err(|e| format!("cannot encode the parameters: {e}"))?;
    files::write_atomically(path, &encoded)
}

/// Reads every tensor of a safetensors file of at most `limit` bytes as f32 (f32 and f64 files
/// are accepted), with its metadata; `what` names the file's role in errors ("checkpoint").
pub fn load(path: &Path, what: &str, limit: u64) -> Result<Contents, String> {
    let bytes = files::read_limited(path, what, limit)?;
    let file = SafeTensors::deserialize(&bytes)
        .map_err(|e| format!("`{}` is not a valid safetensors file: {e}", path.display()))?;
    let header_len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let keys: HeaderKeys = serde_json::from_slice(&bytes[8..8 + header_len])
        .map_err(|e| format!("`{}` is not a valid safetensors file: {e}", path.display()))?;
    let mut names = keys.0;
    names.sort_unstable();
    if let Some(pair) = names.windows(2).find(|w| w[0] == w[1]) {
        return Err(format!(
            "`{}` names the tensor `{}` twice",
            path.display(),
            pair[0]
        ));
    }
    let metadata = SafeTensors::read_metadata(&bytes)
        .ok()
        .and_then(|(_, m)| m.metadata().clone())
        .unwrap_or_default();
    let mut out = Vec::new();
    for (name, view) in file.tensors() {
        let values: Vec<f32> = match view.dtype() {
            Dtype::F32 => view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F64 => view
                .data()
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
                .collect(),
            other => {
                return Err(format!(
                    "`{}`: tensor `{name}` has type {other:?}; expected F32 or F64",
                    path.display()
                ));
            }
        };
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(format!(
                "`{}`: tensor `{name}` element {i} is {}{}",
                path.display(),
                values[i],
                if view.dtype() == Dtype::F64 {
                    " in f32 (the f64 value is out of f32's range or not finite)"
                } else {
                    ""
                }
            ));
        }
        out.push((
            (name, view.shape().to_vec(), values),
            format!("{:?}", view.dtype()),
        ));
    }
    out.sort_by(|a, b| a.0.0.cmp(&b.0.0));
    let (tensors, dtypes) = out.into_iter().unzip();
    Ok(Contents {
        tensors,
        dtypes,
        metadata,
    })
}

/// The keys of a safetensors header in file order, duplicates kept (a JSON map would silently
/// keep the last of two equal keys).
struct HeaderKeys(Vec<String>);

impl<'de> Deserialize<'de> for HeaderKeys {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<HeaderKeys, D::Error> {
        struct Keys;
        impl<'de> Visitor<'de> for Keys {
            type Value = HeaderKeys;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<HeaderKeys, A::Error> {
                let mut keys = Vec::new();
                while let Some((key, IgnoredAny)) = map.next_entry::<String, IgnoredAny>()? {
                    if key != "__metadata__" {
                        keys.push(key);
                    }
                }
                Ok(HeaderKeys(keys))
            }
        }
        deserializer.deserialize_map(Keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_atomic_replace() {
        let dir = std::env::temp_dir().join(format!("nabla-ckpt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("w.safetensors");
        let tensors = vec![
            ("a.w".to_string(), vec![2, 2], vec![1.0, 2.0, 3.0, 4.5]),
            ("b".to_string(), vec![1], vec![-1.0]),
        ];
        let metadata = HashMap::from([("note".to_string(), "kept".to_string())]);
        save(&path, &tensors, metadata.clone()).unwrap();
        let loaded = load(&path, "weights file", 1 << 20).unwrap();
        assert_eq!(loaded.tensors, tensors);
        assert_eq!(loaded.dtypes, ["F32", "F32"]);
        assert_eq!(loaded.metadata, metadata);
        save(&path, &tensors[1..], HashMap::new()).unwrap();
        assert_eq!(
            load(&path, "weights file", 1 << 20).unwrap().tensors,
            tensors[1..]
        );
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "no temporary file is left behind"
        );
        std::fs::write(&path, b"garbage").unwrap();
        assert!(
            load(&path, "weights file", 1 << 20)
                .unwrap_err()
                .contains("not a valid safetensors file")
        );
    }

    /// A safetensors file written by hand: `header` JSON, then `data`.
    fn raw_file(path: &Path, header: &str, data: &[u8]) {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(data);
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn duplicate_names_and_non_finite_values_are_refused() {
        let dir = std::env::temp_dir().join(format!("nabla-ckpt-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.safetensors");
        let one = 1.0f32.to_le_bytes();
        raw_file(
            &path,
            r#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
            &one,
        );
        let err = load(&path, "weights file", 1 << 20).unwrap_err();
        assert!(err.contains("names the tensor `w` twice"), "{err}");
        save(
            &path,
            &[("w".into(), vec![2], vec![1.0, f32::NAN])],
            HashMap::new(),
        )
        .unwrap();
        let err = load(&path, "weights file", 1 << 20).unwrap_err();
        assert!(err.contains("tensor `w` element 1 is NaN"), "{err}");
        raw_file(
            &path,
            r#"{"w":{"dtype":"F64","shape":[1],"data_offsets":[0,8]}}"#,
            &1e300f64.to_le_bytes(),
        );
        let err = load(&path, "weights file", 1 << 20).unwrap_err();
        assert!(err.contains("element 0 is inf in f32"), "{err}");
        let err = load(&path, "weights file", 10).unwrap_err();
        assert!(err.contains("more than the 10 bytes"), "{err}");
    }
}
