//! The agent-to-worker pipe: the agent writes [`WorkerMessage::Job`] frames to a worker
//! process's stdin and reads [`WorkerMessage::Done`] frames from its stdout. Same envelope
//! as [`crate::wire`] (version, size cap, checked before the body is read) with its own
//! magic `JGWK`, so a pipe can never be mistaken for a peer connection.

use serde::{Deserialize, Serialize};

/// Frame magic of the worker pipe.
pub const WORKER_MAGIC: [u8; 4] = *b"JGWK";

/// A message on the worker pipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WorkerMessage {
    /// Worker → agent, once at start: the executor it runs (`timed`, `cpu`, `noop`, `cuda`).
    Ready {
        /// Executor name and what it computes.
        executor: String,
    },
    /// Agent → worker: run one batch.
    Job {
        /// Batch id (unique per worker process).
        batch: u64,
        /// One input per item.
        inputs: Vec<Vec<f32>>,
    },
    /// Worker → agent: a batch finished.
    Done {
        /// Batch id.
        batch: u64,
        /// One output per item, or why the batch failed.
        result: Result<Vec<Vec<f32>>, String>,
        /// Execution time, µs.
        exec_us: u64,
    },
}

/// Encode a worker frame.
pub fn encode(msg: &WorkerMessage) -> Result<Vec<u8>, crate::wire::FrameError> {
    crate::wire::encode_with(WORKER_MAGIC, msg)
}

/// Check a worker frame header; returns the body length.
pub fn decode_header(buf: &[u8]) -> Result<usize, crate::wire::FrameError> {
    crate::wire::decode_header_with(WORKER_MAGIC, buf)
}

/// Decode one worker frame from the front of `buf`.
pub fn decode(buf: &[u8]) -> Result<(WorkerMessage, usize), crate::wire::FrameError> {
    crate::wire::decode_with(WORKER_MAGIC, buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(batch in any::<u64>(), inputs in proptest::collection::vec(proptest::collection::vec(-1e6f32..1e6, 0..8), 0..4)) {
            let m = WorkerMessage::Job { batch, inputs };
            let f = encode(&m).expect("encodes");
            prop_assert_eq!(decode(&f).expect("decodes"), (m, f.len()));
        }

        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = decode(&bytes);
        }
    }

    #[test]
    fn a_wire_frame_is_not_a_worker_frame() {
        let f = crate::wire::encode_frame(&crate::wire::WireMessage::Error { message: "x".into(), retry: false })
            .expect("encodes");
        assert!(matches!(decode(&f), Err(crate::wire::FrameError::Magic { .. })));
    }
}
