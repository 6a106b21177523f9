//! Parameters on disk in the safetensors format, under their model names (`w1`, `h2.w`), as
//! f32 little-endian tensors. Files are written atomically: to a temporary file beside the
//! target, flushed, then renamed over it, so an interrupted save never destroys the last one.

use std::io::Write;
use std::path::Path;

use safetensors::{Dtype, SafeTensors, tensor::TensorView};

/// A named tensor: its shape and values.
pub type Tensor = (String, Vec<usize>, Vec<f32>);

/// Writes `tensors` to `path` atomically.
pub fn save(path: &Path, tensors: &[Tensor]) -> Result<(), String> {
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
    let encoded = safetensors::serialize(views, None)
        .map_err(|e| format!("cannot encode the parameters: {e}"))?;
    write_atomically(path, &encoded)
}

/// Writes `bytes` to a temporary file in the same directory and renames it over `path`.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .ok_or_else(|| format!("`{}` is not a file path", path.display()))?;
    let temp = dir.join(format!(
        ".{}.tmp{}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&temp);
        format!("cannot write `{}`: {e}", path.display())
    })
}

/// Reads every tensor of a safetensors file as f32 (f32 and f64 files are accepted).
pub fn load(path: &Path) -> Result<Vec<Tensor>, String> {
    let bytes =
        std::fs::read(path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    let file = SafeTensors::deserialize(&bytes)
        .map_err(|e| format!("`{}` is not a valid safetensors file: {e}", path.display()))?;
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
        out.push((name, view.shape().to_vec(), values));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
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
        save(&path, &tensors).unwrap();
        assert_eq!(load(&path).unwrap(), tensors);
        save(&path, &tensors[1..]).unwrap();
        assert_eq!(load(&path).unwrap(), tensors[1..]);
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "no temporary file is left behind"
        );
        std::fs::write(&path, b"garbage").unwrap();
        assert!(
            load(&path)
                .unwrap_err()
                .contains("not a valid safetensors file")
        );
    }
}
