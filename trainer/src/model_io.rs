//! Models as safetensors files: one f32 tensor per parameter under its canonical name, and
//! the model shape in the file's metadata (`trellis.model`, JSON), so a file alone is enough
//! to rebuild the model.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use thiserror::Error;
use trellis_proto::ModelConfig;

use crate::model::{validate, Gpt, ModelError};

const CONFIG_KEY: &str = "trellis.model";
/// Largest model file read.
pub const MAX_MODEL_BYTES: u64 = 8 * 1024 * 1024 * 1024;

#[derive(Debug, Error)]
pub enum ModelFileError {
    #[error("model file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("model file {path} is not a valid safetensors file: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("model file {path} has no Trellis model shape in its metadata (was it written by trellis?)")]
    NoConfig { path: PathBuf },
    #[error("model file {path}: {source}")]
    Shape { path: PathBuf, source: ModelError },
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredConfig {
    vocab_size: u32,
    context_length: u32,
    width: u32,
    layers: u32,
    heads: u32,
}

/// Writes `model`'s weights to `path` as safetensors.
pub fn save(model: &Gpt, path: &Path) -> Result<(), ModelFileError> {
    let io = |source| ModelFileError::Io { path: path.to_path_buf(), source };
    let c = model.config();
    let stored = StoredConfig {
        vocab_size: c.vocab_size,
        context_length: c.context_length,
        width: c.width,
        layers: c.layers,
        heads: c.heads,
    };
    let metadata =
        HashMap::from([(CONFIG_KEY.to_string(), serde_json::to_string(&stored).expect("config serialises"))]);
    let buffers: Vec<(String, Vec<usize>, Vec<u8>)> = model
        .parameters()
        .iter()
        .map(|p| {
            let values = crate::model::flatten(std::iter::once(&p.tensor));
            let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            let shape = p.tensor.size().iter().map(|&d| d as usize).collect();
            (p.name.clone(), shape, bytes)
        })
        .collect();
    let views: Vec<(&str, TensorView<'_>)> = buffers
        .iter()
        .map(|(name, shape, bytes)| {
            (name.as_str(), TensorView::new(Dtype::F32, shape.clone(), bytes).expect("sizes match"))
        })
        .collect();
    let bytes = safetensors::serialize(views, Some(metadata))
        .map_err(|e| ModelFileError::Invalid { path: path.to_path_buf(), reason: e.to_string() })?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    std::fs::write(path, bytes).map_err(io)
}

/// Reads a model written by [`save`] onto `device`.
pub fn load(path: &Path, device: tch::Device) -> Result<Gpt, ModelFileError> {
    let io = |source| ModelFileError::Io { path: path.to_path_buf(), source };
    let invalid = |reason: String| ModelFileError::Invalid { path: path.to_path_buf(), reason };
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > MAX_MODEL_BYTES {
        return Err(invalid(format!("{len} bytes is over the limit of {MAX_MODEL_BYTES}")));
    }
    let bytes = std::fs::read(path).map_err(io)?;
    let (_, metadata) = SafeTensors::read_metadata(&bytes).map_err(|e| invalid(e.to_string()))?;
    let stored: StoredConfig = metadata
        .metadata()
        .as_ref()
        .and_then(|m| m.get(CONFIG_KEY))
        .and_then(|json| serde_json::from_str(json).ok())
        .ok_or_else(|| ModelFileError::NoConfig { path: path.to_path_buf() })?;
    let config = ModelConfig {
        vocab_size: stored.vocab_size,
        context_length: stored.context_length,
        width: stored.width,
        layers: stored.layers,
        heads: stored.heads,
    };
    validate(&config).map_err(|source| ModelFileError::Shape { path: path.to_path_buf(), source })?;
    let tensors = SafeTensors::deserialize(&bytes).map_err(|e| invalid(e.to_string()))?;
    let mut model =
        Gpt::new(&config, 0, device).map_err(|source| ModelFileError::Shape { path: path.to_path_buf(), source })?;
    let mut flat = Vec::with_capacity(model.numel());
    for parameter in model.parameters() {
        let view =
            tensors.tensor(&parameter.name).map_err(|_| invalid(format!("tensor {} is missing", parameter.name)))?;
        let shape: Vec<usize> = parameter.tensor.size().iter().map(|&d| d as usize).collect();
        if view.dtype() != Dtype::F32 || view.shape() != shape.as_slice() {
            return Err(invalid(format!(
                "tensor {} is {:?} {:?}, expected F32 {:?}",
                parameter.name,
                view.dtype(),
                view.shape(),
                shape
            )));
        }
        flat.extend(view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])));
    }
    model.set_flat_weights(&flat);
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Preset;

    #[test]
    fn save_and_load_round_trip() {
        let dir = std::env::temp_dir().join(format!("trellis-model-io-{}", std::process::id()));
        let path = dir.join("m.safetensors");
        let model = Gpt::new(&Preset::Nano.config(), 4, tch::Device::Cpu).unwrap();
        save(&model, &path).unwrap();
        let loaded = load(&path, tch::Device::Cpu).unwrap();
        assert_eq!(loaded.config(), model.config());
        assert_eq!(loaded.flat_weights(), model.flat_weights());
        std::fs::write(&path, b"not a model").unwrap();
        assert!(matches!(load(&path, tch::Device::Cpu), Err(ModelFileError::Invalid { .. })));
        assert!(matches!(load(&dir.join("missing"), tch::Device::Cpu), Err(ModelFileError::Io { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
