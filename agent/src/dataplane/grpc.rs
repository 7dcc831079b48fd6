//! The inference API over gRPC: KServe v2's `inference.GRPCInferenceService` (tonic), on
//! its own port (`[node.serve] grpc`), in front of the same [`Inference`] service as the
//! HTTP API.
//!
//! Served: `ServerLive`, `ServerReady`, `ModelReady`, `ServerMetadata`, `ModelMetadata`,
//! `ModelInfer`. Input tensors come in `contents` or in `raw_input_contents` (little-endian,
//! as tritonclient sends them); outputs go back in `raw_output_contents` (FP32 little-endian),
//! which is what Triton does and what v2 clients read. A request's deadline is the
//! `x-jigsaw-deadline-ms` metadata entry, else the app's latency SLO. Errors map to gRPC
//! codes: bad input → `INVALID_ARGUMENT` (the message names the field), unknown app →
//! `NOT_FOUND`, overloaded → `RESOURCE_EXHAUSTED`, drops and no instance → `UNAVAILABLE`,
//! deadline → `DEADLINE_EXCEEDED`, anything else → `INTERNAL`; the message starts with the
//! outcome (`early_drop: …`).
//!
//! Bearer tokens ([`serve_with`], [`super::auth`]): with a token file, `ModelReady`,
//! `ModelMetadata` and `ModelInfer` need the metadata entry `authorization: Bearer <token>`
//! and answer `UNAUTHENTICATED` without a valid one; `ServerLive`, `ServerReady` and
//! `ServerMetadata` stay open, as the HTTP health routes do.

use super::auth::{self, TokenFile};
use super::{Inference, ServeError};
use jigsaw_protocol::infer::{decode_elements, InferError, InferRequest, Tensor, TensorData, MAX_ELEMENTS};
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status};

/// The generated protocol types (`proto/kserve_v2.proto`).
#[allow(missing_docs, clippy::all)]
pub mod pb {
    tonic::include_proto!("inference");
}

use pb::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};

/// Largest gRPC message accepted, bytes (the HTTP API's body cap).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// The gRPC face of an [`Inference`] service.
pub struct GrpcApi {
    svc: Arc<dyn Inference>,
    tokens: Option<Arc<TokenFile>>,
}

impl GrpcApi {
    /// `UNAUTHENTICATED` unless tokens are off or `r` carries a valid bearer token.
    fn authorize<T>(&self, r: &Request<T>) -> Result<(), Status> {
        let Some(tokens) = &self.tokens else { return Ok(()) };
        let header = r.metadata().get("authorization").map(|v| v.as_bytes());
        auth::check(tokens, header)
            .map(|_| ())
            .map_err(|d| Status::unauthenticated(format!("unauthorized: {}", d.message())))
    }
}

fn status_of(e: &ServeError) -> Status {
    use tonic::Code;
    let code = match e {
        ServeError::BadInput(_) => Code::InvalidArgument,
        ServeError::UnknownApp(_) => Code::NotFound,
        ServeError::Overloaded(_) => Code::ResourceExhausted,
        ServeError::DeadlineExceeded { .. } => Code::DeadlineExceeded,
        ServeError::Failed(_) => Code::Internal,
        _ => Code::Unavailable,
    };
    Status::new(code, format!("{}: {e}", e.outcome()))
}

fn bad(field: String, message: impl Into<String>) -> Status {
    status_of(&ServeError::BadInput(InferError { field, message: message.into() }))
}

/// The elements of input `i`, from its `contents` or its raw bytes.
fn input_data(
    i: usize,
    t: &pb::model_infer_request::InferInputTensor,
    raw: Option<&Vec<u8>>,
    n: u64,
) -> Result<TensorData, Status> {
    let field = |k: &str| format!("inputs[{i}].{k}");
    if let Some(raw) = raw {
        return decode_elements(raw, &t.datatype, n, &field("raw_input_contents"))
            .map_err(|e| status_of(&ServeError::BadInput(e)));
    }
    let c = t.contents.as_ref().ok_or_else(|| bad(field("contents"), "is required (or raw_input_contents)"))?;
    let v = match t.datatype.as_str() {
        "BOOL" => TensorData::Bool(c.bool_contents.clone()),
        "INT8" | "INT16" | "INT32" => TensorData::Int(c.int_contents.iter().map(|x| i64::from(*x)).collect()),
        "INT64" => TensorData::Int(c.int64_contents.clone()),
        "UINT8" | "UINT16" | "UINT32" => TensorData::Uint(c.uint_contents.iter().map(|x| u64::from(*x)).collect()),
        "UINT64" => TensorData::Uint(c.uint64_contents.clone()),
        "FP32" => TensorData::Fp32(c.fp32_contents.clone()),
        "FP64" => TensorData::Fp64(c.fp64_contents.clone()),
        "BYTES" => {
            TensorData::Bytes(c.bytes_contents.iter().map(|x| String::from_utf8_lossy(x).into_owned()).collect())
        }
        other => return Err(bad(field("datatype"), format!("`{other}` is not supported"))),
    };
    if v.len() as u64 != n {
        return Err(bad(field("contents"), format!("has {} elements but the shape needs {n}", v.len())));
    }
    Ok(v)
}

/// The v2 request of a gRPC `ModelInfer`.
fn to_request(r: &pb::ModelInferRequest) -> Result<InferRequest, Status> {
    if r.inputs.is_empty() {
        return Err(bad("inputs".into(), "needs at least one tensor"));
    }
    if !r.raw_input_contents.is_empty() && r.raw_input_contents.len() != r.inputs.len() {
        return Err(bad(
            "raw_input_contents".into(),
            format!("{} entries for {} inputs", r.raw_input_contents.len(), r.inputs.len()),
        ));
    }
    let mut inputs = Vec::with_capacity(r.inputs.len());
    for (i, t) in r.inputs.iter().enumerate() {
        let shape: Vec<u64> = t
            .shape
            .iter()
            .map(|&d| {
                u64::try_from(d).map_err(|_| bad(format!("inputs[{i}].shape"), format!("dimension {d} is negative")))
            })
            .collect::<Result<_, _>>()?;
        let n = shape
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .filter(|n| *n <= MAX_ELEMENTS)
            .ok_or_else(|| bad(format!("inputs[{i}].shape"), format!("more than {MAX_ELEMENTS} elements")))?;
        let data = input_data(i, t, r.raw_input_contents.get(i), n)?;
        inputs.push(Tensor { name: t.name.clone(), shape, datatype: t.datatype.clone(), data });
    }
    let id = (!r.id.is_empty()).then(|| r.id.clone());
    Ok(InferRequest { id, inputs, outputs: r.outputs.iter().map(|o| o.name.clone()).collect() })
}

fn deadline<T>(req: &Request<T>) -> Result<Option<Duration>, Status> {
    let Some(v) = req.metadata().get(super::http::DEADLINE_HEADER) else { return Ok(None) };
    let ms = v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok());
    match ms {
        Some(ms) if (1..=super::http::MAX_DEADLINE_MS).contains(&ms) => Ok(Some(Duration::from_millis(ms))),
        _ => Err(bad(
            super::http::DEADLINE_HEADER.into(),
            format!("not a whole number of milliseconds in 1..={}", super::http::MAX_DEADLINE_MS),
        )),
    }
}

#[tonic::async_trait]
impl GrpcInferenceService for GrpcApi {
    async fn server_live(&self, _: Request<pb::ServerLiveRequest>) -> Result<Response<pb::ServerLiveResponse>, Status> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<pb::ServerReadyRequest>,
    ) -> Result<Response<pb::ServerReadyResponse>, Status> {
        Ok(Response::new(pb::ServerReadyResponse { ready: self.svc.ready() }))
    }

    async fn model_ready(&self, r: Request<pb::ModelReadyRequest>) -> Result<Response<pb::ModelReadyResponse>, Status> {
        self.authorize(&r)?;
        let name = &r.get_ref().name;
        if self.svc.app(name).is_none() {
            return Err(status_of(&ServeError::UnknownApp(name.clone())));
        }
        Ok(Response::new(pb::ModelReadyResponse { ready: self.svc.ready() }))
    }

    async fn server_metadata(
        &self,
        _: Request<pb::ServerMetadataRequest>,
    ) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        Ok(Response::new(pb::ServerMetadataResponse {
            name: "jigsaw".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: vec![],
        }))
    }

    async fn model_metadata(
        &self,
        r: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        self.authorize(&r)?;
        let name = &r.get_ref().name;
        let meta = self.svc.app(name).ok_or_else(|| status_of(&ServeError::UnknownApp(name.clone())))?;
        let t = |m: &super::TensorMeta| pb::model_metadata_response::TensorMetadata {
            name: m.name.clone(),
            datatype: m.datatype.clone(),
            shape: m.shape.clone(),
        };
        Ok(Response::new(pb::ModelMetadataResponse {
            name: meta.name.clone(),
            versions: meta.versions.clone(),
            platform: "jigsaw".into(),
            inputs: meta.inputs.iter().map(t).collect(),
            outputs: meta.outputs.iter().map(t).collect(),
        }))
    }

    async fn model_infer(&self, r: Request<pb::ModelInferRequest>) -> Result<Response<pb::ModelInferResponse>, Status> {
        self.authorize(&r)?;
        let deadline = deadline(&r)?;
        let m = r.into_inner();
        let req = to_request(&m)?;
        let resp = self.svc.infer(&m.model_name, req, deadline).await.map_err(|e| status_of(&e))?;
        let mut raw = Vec::with_capacity(resp.outputs.len());
        let outputs = resp
            .outputs
            .iter()
            .map(|t| {
                let mut bytes = Vec::with_capacity(t.data.len() * 4);
                for i in 0..t.data.len() {
                    bytes.extend_from_slice(&(t.data.f64_at(i).unwrap_or(0.0) as f32).to_le_bytes());
                }
                raw.push(bytes);
                pb::model_infer_response::InferOutputTensor {
                    name: t.name.clone(),
                    datatype: "FP32".into(),
                    shape: t.shape.iter().map(|&d| d as i64).collect(),
                    parameters: Default::default(),
                    contents: None,
                }
            })
            .collect();
        Ok(Response::new(pb::ModelInferResponse {
            model_name: resp.model_name,
            model_version: m.model_version,
            id: resp.id.unwrap_or_default(),
            parameters: Default::default(),
            outputs,
            raw_output_contents: raw,
        }))
    }
}

/// Serve the v2 gRPC API on `listener` until `shutdown` completes (requests in flight are
/// drained), without authentication.
pub async fn serve(
    listener: tokio::net::TcpListener,
    svc: Arc<dyn Inference>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    serve_with(listener, svc, None, shutdown).await
}

/// [`serve`], with `tokens` required where the module docs say.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    svc: Arc<dyn Inference>,
    tokens: Option<Arc<TokenFile>>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let api = GrpcInferenceServiceServer::new(GrpcApi { svc, tokens })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    tonic::transport::Server::builder()
        .add_service(api)
        .serve_with_incoming_shutdown(tonic::transport::server::TcpIncoming::from(listener), shutdown)
        .await
}
