//! Model weights in the safetensors format.
//!
//! Every weighted layer has two little-endian F32 tensors, named after its position:
//!
//! | layer | `….weight` | `….bias` |
//! |---|---|---|
//! | [`Layer::Conv2d`] | `[cout, cin, k, k]` | `[cout]` |
//! | [`Layer::Dense`] | `[dout, din]` | `[dout]` |
//!
//! The prefix is `layers.{i}` for layer `i` of [`Model::layers`], and
//! `layers.{i}.body.{j}` for layer `j` of the body of a [`Layer::Repeat`] at `i`. The
//! model's name is written to the header metadata as `jigsaw.model` (loading ignores it).
//! Weights are stored in the same row-major order as the layers hold them.

use crate::{KernelError, Layer, Model};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeSet, HashMap};

/// One weighted tensor of a model: its name, the shape its layer needs, and its slot.
struct Slot<'a> {
    name: String,
    shape: Vec<usize>,
    values: &'a mut Vec<f32>,
}

fn slots<'a>(layers: &'a mut [Layer], prefix: &str, out: &mut Vec<Slot<'a>>) {
    for (i, l) in layers.iter_mut().enumerate() {
        let p = format!("{prefix}.{i}");
        match l {
            Layer::Conv2d { cin, cout, k, w, b, .. } => {
                out.push(Slot { name: format!("{p}.weight"), shape: vec![*cout, *cin, *k, *k], values: w });
                out.push(Slot { name: format!("{p}.bias"), shape: vec![*cout], values: b });
            }
            Layer::Dense { din, dout, w, b } => {
                out.push(Slot { name: format!("{p}.weight"), shape: vec![*dout, *din], values: w });
                out.push(Slot { name: format!("{p}.bias"), shape: vec![*dout], values: b });
            }
            Layer::Repeat { body, .. } => slots(body, &format!("{p}.body"), out),
            Layer::Relu | Layer::MaxPool { .. } | Layer::GlobalAvgPool => {}
        }
    }
}

impl Model {
    /// The weights as a safetensors buffer (see the [module docs](crate::weights) for the
    /// tensor names). Fails if a layer's weights do not match its size.
    pub fn to_safetensors(&self) -> Result<Vec<u8>, KernelError> {
        let mut copy = self.layers.clone();
        let mut all = Vec::new();
        slots(&mut copy, "layers", &mut all);
        let mut tensors = Vec::with_capacity(all.len());
        for s in &all {
            if s.values.len() != s.shape.iter().product::<usize>() {
                return Err(KernelError::TensorShape {
                    tensor: s.name.clone(),
                    expected: s.shape.clone(),
                    got: vec![s.values.len()],
                });
            }
            let bytes: Vec<u8> = s.values.iter().flat_map(|v| v.to_le_bytes()).collect();
            tensors.push((s.name.clone(), s.shape.clone(), bytes));
        }
        let views = tensors
            .iter()
            .map(|(name, shape, bytes)| TensorView::new(Dtype::F32, shape.clone(), bytes).map(|v| (name.clone(), v)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| KernelError::Safetensors(e.to_string()))?;
        let meta = HashMap::from([("jigsaw.model".to_string(), self.name.clone())]);
        safetensors::serialize(views, Some(meta)).map_err(|e| KernelError::Safetensors(e.to_string()))
    }

    /// Replace every weighted layer's weights with the tensors of a safetensors buffer.
    /// The model's layers (e.g. from [`Model::for_variant`]) fix the names and shapes it
    /// needs; a missing tensor, a dtype other than F32, a wrong shape or a tensor no layer
    /// uses is an error that names the tensor, and then the model is left unchanged.
    pub fn load_safetensors(&mut self, bytes: &[u8]) -> Result<(), KernelError> {
        let st = SafeTensors::deserialize(bytes).map_err(|e| KernelError::Safetensors(e.to_string()))?;
        let mut all = Vec::new();
        slots(&mut self.layers, "layers", &mut all);
        let expected: BTreeSet<&str> = all.iter().map(|s| s.name.as_str()).collect();
        if let Some(extra) = st.names().into_iter().filter(|n| !expected.contains(n)).min() {
            return Err(KernelError::UnexpectedTensor { tensor: extra.to_string() });
        }
        let mut loaded = Vec::with_capacity(all.len());
        for s in &all {
            let t = st.tensor(&s.name).map_err(|_| KernelError::MissingTensor { tensor: s.name.clone() })?;
            if t.dtype() != Dtype::F32 {
                return Err(KernelError::TensorDtype { tensor: s.name.clone(), dtype: format!("{:?}", t.dtype()) });
            }
            if t.shape() != s.shape.as_slice() {
                return Err(KernelError::TensorShape {
                    tensor: s.name.clone(),
                    expected: s.shape.clone(),
                    got: t.shape().to_vec(),
                });
            }
            let values: Vec<f32> =
                t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            loaded.push(values);
        }
        for (s, values) in all.into_iter().zip(loaded) {
            *s.values = values;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Arch, CpuExecutor, Executor};
    use jigsaw_protocol::app::ModelDesc;

    fn git() -> Model {
        let d = ModelDesc {
            family: "git".into(),
            gflops: 40.0,
            params_m: 1.0,
            activation_mb: 1.0,
            decode_steps: 3,
            kernels: None,
        };
        Model::for_variant("git-base", &d, (3, 32, 32), 1e-4, 5).expect("builds")
    }

    #[test]
    fn round_trip_restores_every_weight_and_the_outputs() {
        for m in [git(), Model::generated("cnn", Arch { cin: 3, width: 4, blocks: 2, classes: 5 }, 2)] {
            let bytes = m.to_safetensors().expect("writes");
            let st = SafeTensors::deserialize(&bytes).expect("valid safetensors");
            assert!(st.names().contains(&"layers.0.weight"), "{:?}", st.names());
            // Start from the same skeleton with zeroed weights, then load.
            let mut other = m.clone();
            let mut all = Vec::new();
            slots(&mut other.layers, "layers", &mut all);
            all.into_iter().for_each(|s| s.values.iter_mut().for_each(|v| *v = 0.0));
            assert_ne!(other, m);
            other.load_safetensors(&bytes).expect("loads");
            assert_eq!(other, m);
        }
        // Loading into a model built from another seed reproduces the original's outputs.
        let m = git();
        let mut other = {
            let d = ModelDesc {
                family: "git".into(),
                gflops: 40.0,
                params_m: 1.0,
                activation_mb: 1.0,
                decode_steps: 3,
                kernels: None,
            };
            Model::for_variant("git-base", &d, (3, 32, 32), 1e-4, 6).expect("builds")
        };
        assert_ne!(other, m);
        assert!(other.layers.iter().any(|l| matches!(l, Layer::Repeat { .. })), "covers repeat bodies");
        other.load_safetensors(&m.to_safetensors().expect("writes")).expect("loads");
        let x = vec![0.25f32; 3 * 32 * 32];
        assert_eq!(
            CpuExecutor.run(&other, &x, (1, 3, 32, 32)).expect("runs"),
            CpuExecutor.run(&m, &x, (1, 3, 32, 32)).expect("runs")
        );
    }

    /// A buffer with the tensors of `m`, `edit` applied to the (name, dtype, shape, bytes) list.
    fn with(m: &Model, edit: impl FnOnce(&mut Vec<(String, Dtype, Vec<usize>, Vec<u8>)>)) -> Vec<u8> {
        let bytes = m.to_safetensors().expect("writes");
        let st = SafeTensors::deserialize(&bytes).expect("valid");
        let mut t: Vec<_> =
            st.tensors().into_iter().map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec())).collect();
        edit(&mut t);
        let views: Vec<_> =
            t.iter().map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).expect("view"))).collect();
        safetensors::serialize(views, None).expect("serializes")
    }

    #[test]
    fn mismatches_are_typed_errors_that_name_the_tensor() {
        let m = Model::generated("cnn", Arch { cin: 3, width: 4, blocks: 2, classes: 5 }, 2);
        let mut target = m.clone();
        let missing = with(&m, |t| t.retain(|(n, ..)| n != "layers.3.bias"));
        assert_eq!(
            target.load_safetensors(&missing),
            Err(KernelError::MissingTensor { tensor: "layers.3.bias".into() })
        );
        let f64s = with(&m, |t| {
            let e = t.iter_mut().find(|(n, ..)| n == "layers.0.weight").expect("present");
            e.1 = Dtype::F64;
            e.2 = vec![2, 3, 3, 3]; // the same bytes read as half as many F64 values
        });
        let e = target.load_safetensors(&f64s).unwrap_err();
        assert_eq!(e, KernelError::TensorDtype { tensor: "layers.0.weight".into(), dtype: "F64".into() });
        assert!(e.to_string().contains("layers.0.weight"), "{e}");
        let reshaped = with(&m, |t| {
            let e = t.iter_mut().find(|(n, ..)| n == "layers.0.weight").expect("present");
            e.2 = vec![3, 4, 3, 3];
        });
        assert_eq!(
            target.load_safetensors(&reshaped),
            Err(KernelError::TensorShape {
                tensor: "layers.0.weight".into(),
                expected: vec![4, 3, 3, 3],
                got: vec![3, 4, 3, 3]
            })
        );
        let extra = with(&m, |t| t.push(("layers.9.weight".into(), Dtype::F32, vec![1], vec![0; 4])));
        assert_eq!(
            target.load_safetensors(&extra),
            Err(KernelError::UnexpectedTensor { tensor: "layers.9.weight".into() })
        );
        assert!(matches!(target.load_safetensors(b"not safetensors"), Err(KernelError::Safetensors(_))));
        assert_eq!(target, m, "failed loads leave the model unchanged");
        // Weights that do not fit their layer cannot be written.
        let mut broken = m.clone();
        if let Layer::Dense { b, .. } = broken.layers.last_mut().expect("dense head") {
            b.pop();
        }
        assert!(matches!(broken.to_safetensors(), Err(KernelError::TensorShape { .. })));
    }
}
