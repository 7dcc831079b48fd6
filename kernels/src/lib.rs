//! # jigsaw-kernels
//!
//! Reserved for the executors of the data-plane issue: an `Executor` trait with a CPU
//! reference implementation and a cudarc implementation, model variants as layer graphs,
//! and safetensors weights. Nothing is implemented here yet; the planner does not depend
//! on this crate.
