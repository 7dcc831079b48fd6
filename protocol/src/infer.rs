//! The inference API's request and response bodies: the KServe Open Inference Protocol v2
//! (`POST /v2/models/{app}/infer`), so existing v2 clients work.
//!
//! [`parse_infer_request`] validates a JSON body and names the offending field in its error
//! (`inputs[0].shape: ...`), which the HTTP layer returns as a 400 with
//! `{"error": "<message>"}`. Tensor data is accepted flat (row-major) or nested; nested data
//! is flattened and its element count checked against the shape.
//!
//! The binary tensor data extension (what `tritonclient`'s numpy helpers use by default):
//! the body is a JSON header of [`BINARY_HEADER`] bytes followed by raw tensor bytes; an
//! input with `"parameters": {"binary_data_size": n}` and no `data` takes the next `n`
//! bytes (little-endian elements; `BYTES` elements as 4-byte length + bytes). Outputs asked
//! for with `"parameters": {"binary_data": true}` (or every output, with the request-level
//! `"binary_data_output": true`) come back the same way ([`encode_infer_response`]).
//! [`parse_infer_request_binary`] parses both forms.
//!
//! Memory: no `serde_json::Value` is built for a request body. Each input's `data` is read
//! straight into a typed [`TensorData`] sized by its declared shape, and reading stops at
//! the first element past the shape's product; [`parse_infer_request_bounded`] also caps the
//! bytes the decoded tensors may take. Arrays of tensors and of dimensions are capped
//! ([`MAX_TENSORS`], [`MAX_DIMS`]).

mod data;
mod json;

use data::Elem;
pub use data::TensorData;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// v2 datatypes.
pub const DATATYPES: [&str; 13] =
    ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES"];

/// Largest element count accepted in one tensor.
pub const MAX_ELEMENTS: u64 = 64 * 1024 * 1024;

/// Most inputs, and most requested outputs, in one request.
pub const MAX_TENSORS: usize = 1024;

/// Most dimensions of one tensor's shape.
pub const MAX_DIMS: usize = 64;

/// One input or output tensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tensor {
    /// Tensor name.
    pub name: String,
    /// Shape.
    pub shape: Vec<u64>,
    /// v2 datatype (`FP32`, …).
    pub datatype: String,
    /// Row-major data, typed by `datatype` (a flat JSON array).
    pub data: TensorData,
}

/// A validated inference request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InferRequest {
    /// Client-chosen id, echoed in the response.
    pub id: Option<String>,
    /// Inputs.
    pub inputs: Vec<Tensor>,
    /// Requested output names (empty: all).
    pub outputs: Vec<String>,
}

/// A response body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InferResponse {
    /// The app (model) name.
    pub model_name: String,
    /// The request id, if one was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Outputs.
    pub outputs: Vec<Tensor>,
}

/// Why a request body is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InferError {
    /// Dotted path of the offending field (`inputs[0].datatype`), or `body`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

fn err(field: impl Into<String>, message: impl Into<String>) -> InferError {
    InferError { field: field.into(), message: message.into() }
}

/// The request and response header that gives the JSON part's length in bytes (binary data
/// extension).
pub const BINARY_HEADER: &str = "inference-header-content-length";

/// Which outputs a request wants as raw bytes after the JSON header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BinaryOutputs {
    /// The request-level `binary_data_output`: every output not asked for otherwise.
    pub all: bool,
    /// Outputs asked for with `binary_data: true`.
    pub binary: Vec<String>,
    /// Outputs asked for with `binary_data: false`.
    pub json: Vec<String>,
}

impl BinaryOutputs {
    /// Whether output `name` travels as raw bytes.
    pub fn wants(&self, name: &str) -> bool {
        self.binary.iter().any(|n| n == name) || (self.all && !self.json.iter().any(|n| n == name))
    }
}

/// Bytes per element of a fixed-size datatype (`None` for `BYTES`).
fn element_size(datatype: &str) -> Option<usize> {
    Some(match datatype {
        "BOOL" | "UINT8" | "INT8" => 1,
        "UINT16" | "INT16" | "FP16" => 2,
        "UINT32" | "INT32" | "FP32" => 4,
        "UINT64" | "INT64" | "FP64" => 8,
        _ => return None,
    })
}

/// An IEEE half as f32.
fn half_to_f32(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((h >> 10) & 0x1f);
    let frac = f32::from(h & 0x3ff);
    match exp {
        0 => sign * frac * 2f32.powi(-24),
        31 if frac == 0.0 => sign * f32::INFINITY,
        31 => f32::NAN,
        e => sign * (1.0 + frac / 1024.0) * 2f32.powi(e - 15),
    }
}

/// Decode `n` elements of `datatype` from raw little-endian bytes (`BYTES`: 4-byte length
/// and bytes per element), as the binary data extension and gRPC's raw contents carry them;
/// errors name `field`.
pub fn decode_elements(raw: &[u8], datatype: &str, n: u64, field: &str) -> Result<TensorData, InferError> {
    if let Some(size) = element_size(datatype) {
        let need = n.checked_mul(size as u64).filter(|b| *b == raw.len() as u64);
        if need.is_none() {
            return Err(err(field, format!("binary_data_size {} does not hold {n} {datatype} elements", raw.len())));
        }
        let c = raw.chunks_exact(size);
        let word = |c: &[u8]| {
            let mut b = [0u8; 8];
            b[..size].copy_from_slice(c);
            u64::from_le_bytes(b)
        };
        return Ok(match datatype {
            "BOOL" => TensorData::Bool(c.map(|c| c[0] != 0).collect()),
            "UINT8" | "UINT16" | "UINT32" | "UINT64" => TensorData::Uint(c.map(word).collect()),
            "INT8" => TensorData::Int(c.map(|c| i64::from(c[0] as i8)).collect()),
            "INT16" => TensorData::Int(c.map(|c| i64::from(i16::from_le_bytes([c[0], c[1]]))).collect()),
            "INT32" => TensorData::Int(c.map(|c| i64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]]))).collect()),
            "INT64" => TensorData::Int(c.map(|c| word(c) as i64).collect()),
            "FP16" => TensorData::Fp32(c.map(|c| half_to_f32(u16::from_le_bytes([c[0], c[1]]))).collect()),
            "FP32" => TensorData::Fp32(c.map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()),
            _ => TensorData::Fp64(c.map(|c| f64::from_bits(word(c))).collect()),
        });
    }
    // BYTES: each element a 4-byte little-endian length and that many bytes.
    let mut out = Vec::new();
    let mut rest = raw;
    while !rest.is_empty() {
        if rest.len() < 4 {
            return Err(err(field, "BYTES element length is cut off"));
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let Some(bytes) = rest.get(4..4 + len) else { return Err(err(field, "BYTES element is cut off")) };
        if out.len() as u64 == n {
            return Err(err(field, format!("binary data holds more than the {n} BYTES elements the shape needs")));
        }
        out.push(String::from_utf8_lossy(bytes).into_owned());
        rest = &rest[4 + len..];
    }
    if out.len() as u64 != n {
        return Err(err(field, format!("binary data holds {} BYTES elements but the shape needs {n}", out.len())));
    }
    Ok(TensorData::Bytes(out))
}

/// Parse and validate a v2 inference request body.
pub fn parse_infer_request(body: &[u8]) -> Result<InferRequest, InferError> {
    parse_infer_request_binary(body, None).map(|(r, _)| r)
}

/// Parse a request that may use the binary data extension: `json_len` is the
/// [`BINARY_HEADER`] value (`None`: the whole body is JSON). Returns the request and which
/// outputs it wants as raw bytes.
pub fn parse_infer_request_binary(
    body: &[u8],
    json_len: Option<usize>,
) -> Result<(InferRequest, BinaryOutputs), InferError> {
    parse_infer_request_bounded(body, json_len, u64::MAX)
}

/// [`parse_infer_request_binary`], with the decoded tensors allowed at most
/// `max_decoded_bytes` of memory in all (4 bytes per `FP32` element, 8 per 64-bit one,
/// string headers and contents for `BYTES`). The budget is charged from the declared shapes
/// before any buffer is allocated; a request over it is rejected naming the input.
pub fn parse_infer_request_bounded(
    body: &[u8],
    json_len: Option<usize>,
    max_decoded_bytes: u64,
) -> Result<(InferRequest, BinaryOutputs), InferError> {
    use serde::de::DeserializeSeed;
    let (json, mut binary) = match json_len {
        None => (body, &[][..]),
        Some(n) if n <= body.len() => body.split_at(n),
        Some(n) => {
            return Err(err(BINARY_HEADER, format!("{n} is longer than the {}-byte body", body.len())));
        }
    };
    let ctx = json::Ctx::new(json.len(), max_decoded_bytes);
    let mut de = serde_json::Deserializer::from_slice(json);
    let mut env = json::Top(&ctx).deserialize(&mut de).and_then(|e| de.end().map(|()| e)).map_err(|e| ctx.error(e))?;
    if env.inputs.iter().any(|h| matches!(h.source, json::Source::Deferred)) {
        // Some `data` came before its shape or datatype: read those arrays now.
        let mut de = serde_json::Deserializer::from_slice(json);
        json::Deferred { ctx: &ctx, heads: &mut env.inputs }.deserialize(&mut de).map_err(|e| ctx.error(e))?;
    }
    let mut tensors = Vec::with_capacity(env.inputs.len());
    for (i, h) in env.inputs.into_iter().enumerate() {
        let f = |k: &str| format!("inputs[{i}].{k}");
        let data = match h.source {
            json::Source::Json(d) => d,
            json::Source::Binary(n) => {
                let field = f("parameters.binary_data_size");
                if json_len.is_none() {
                    return Err(err(field, format!("needs the {BINARY_HEADER} header")));
                }
                let n = usize::try_from(n)
                    .ok()
                    .filter(|n| *n <= binary.len())
                    .ok_or_else(|| err(&field, format!("{n} is more than the {} bytes left", binary.len())))?;
                let (raw, rest) = binary.split_at(n);
                binary = rest;
                let per = TensorData::element_memory(&h.datatype).unwrap_or(8) as u64;
                ctx.charge::<serde_json::Error>(&field, h.need.saturating_mul(per).saturating_add(raw.len() as u64))
                    .map_err(|e| ctx.error(e))?;
                decode_elements(raw, &h.datatype, h.need, &field)?
            }
            // The second pass read every deferred array that has a `data` key.
            json::Source::Deferred => return Err(err(f("data"), "is required")),
        };
        tensors.push(Tensor { name: h.name, shape: h.shape, datatype: h.datatype, data });
    }
    if !binary.is_empty() {
        return Err(err("body", format!("{} bytes of binary data belong to no input", binary.len())));
    }
    let mut bin = BinaryOutputs { all: env.binary_data_output, ..BinaryOutputs::default() };
    let mut outputs = Vec::with_capacity(env.outputs.len());
    for o in env.outputs {
        match o.binary {
            Some(true) => bin.binary.push(o.name.clone()),
            Some(false) => bin.json.push(o.name.clone()),
            None => {}
        }
        outputs.push(o.name);
    }
    Ok((InferRequest { id: env.id, inputs: tensors, outputs }, bin))
}

/// Encode one element as `datatype`'s little-endian bytes (binary data extension).
fn encode_element(x: Elem<'_>, datatype: &str, out: &mut Vec<u8>) {
    let f = x.as_f64().unwrap_or(0.0);
    let i = match x {
        Elem::I(n) => n,
        Elem::U(n) => n as i64,
        Elem::Bool(b) => i64::from(b),
        _ => f as i64,
    };
    match datatype {
        "BOOL" => out.push(u8::from(matches!(x, Elem::Bool(true)) || f != 0.0)),
        "UINT8" | "INT8" => out.push(i as u8),
        "UINT16" | "INT16" => out.extend_from_slice(&(i as u16).to_le_bytes()),
        "UINT32" | "INT32" => out.extend_from_slice(&(i as u32).to_le_bytes()),
        "UINT64" => out.extend_from_slice(&(if let Elem::U(n) = x { n } else { i as u64 }).to_le_bytes()),
        "INT64" => out.extend_from_slice(&i.to_le_bytes()),
        "FP64" => out.extend_from_slice(&f.to_le_bytes()),
        "BYTES" => {
            let s = match x {
                Elem::Str(s) => s.to_string(),
                other => other.to_string(),
            };
            out.extend_from_slice(&(s.len() as u32).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        // FP32, and FP16 sent as FP32 is not a thing: jigsaw's outputs are FP32.
        _ => out.extend_from_slice(&(f as f32).to_le_bytes()),
    }
}

/// Encode a response: plain JSON when no output is wanted as raw bytes (`None`), else the
/// JSON header followed by the outputs' bytes and the header's length for
/// [`BINARY_HEADER`].
pub fn encode_infer_response(resp: &InferResponse, bin: &BinaryOutputs) -> (Vec<u8>, Option<usize>) {
    if !resp.outputs.iter().any(|t| bin.wants(&t.name)) {
        return (serde_json::to_vec(resp).unwrap_or_default(), None);
    }
    let mut raw = Vec::new();
    let outputs: Vec<Value> = resp
        .outputs
        .iter()
        .map(|t| {
            if bin.wants(&t.name) {
                let before = raw.len();
                for x in (0..t.data.len()).filter_map(|i| t.data.elem(i)) {
                    encode_element(x, &t.datatype, &mut raw);
                }
                serde_json::json!({
                    "name": t.name, "shape": t.shape, "datatype": t.datatype,
                    "parameters": {"binary_data_size": raw.len() - before},
                })
            } else {
                serde_json::json!({"name": t.name, "shape": t.shape, "datatype": t.datatype, "data": t.data})
            }
        })
        .collect();
    let mut header = serde_json::json!({"model_name": resp.model_name, "outputs": outputs});
    if let Some(id) = &resp.id {
        header["id"] = Value::from(id.clone());
    }
    let mut body = serde_json::to_vec(&header).unwrap_or_default();
    let json_len = body.len();
    body.extend_from_slice(&raw);
    (body, Some(json_len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_requests_parse_and_nested_data_flattens() {
        let body =
            br#"{"id":"r1","inputs":[{"name":"image","shape":[1,2,2],"datatype":"FP32","data":[[[1,2],[3,4.5]]]}],
                        "outputs":[{"name":"labels"}]}"#;
        let r = parse_infer_request(body).expect("valid");
        assert_eq!(r.id.as_deref(), Some("r1"));
        assert_eq!(r.inputs[0].shape, vec![1, 2, 2]);
        assert_eq!(r.inputs[0].data.len(), 4);
        assert_eq!(r.outputs, vec!["labels".to_string()]);
    }

    #[test]
    fn binary_inputs_and_outputs_round_trip() {
        let header = br#"{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","parameters":{"binary_data_size":12}},
            {"name":"t","shape":[2],"datatype":"BYTES","parameters":{"binary_data_size":13}}],
            "outputs":[{"name":"y","parameters":{"binary_data":true}},{"name":"z"}]}"#;
        let mut body = header.to_vec();
        for v in [1.5f32, -2.0, 0.25] {
            body.extend_from_slice(&v.to_le_bytes());
        }
        for s in ["ab", "cde"] {
            body.extend_from_slice(&(s.len() as u32).to_le_bytes());
            body.extend_from_slice(s.as_bytes());
        }
        let (r, bin) = parse_infer_request_binary(&body, Some(header.len())).expect("valid");
        assert_eq!(r.inputs[0].data, TensorData::Fp32(vec![1.5, -2.0, 0.25]));
        assert_eq!(r.inputs[1].data, TensorData::Bytes(vec!["ab".into(), "cde".into()]));
        assert!(bin.wants("y") && !bin.wants("z"));
        let resp = InferResponse {
            model_name: "m".into(),
            id: Some("7".into()),
            outputs: vec![
                Tensor {
                    name: "y".into(),
                    shape: vec![2],
                    datatype: "FP32".into(),
                    data: TensorData::Fp32(vec![1.0, 2.5]),
                },
                Tensor { name: "z".into(), shape: vec![1], datatype: "FP32".into(), data: TensorData::Fp32(vec![3.0]) },
            ],
        };
        let (bytes, json_len) = encode_infer_response(&resp, &bin);
        let n = json_len.expect("binary");
        let head: Value = serde_json::from_slice(&bytes[..n]).expect("json header");
        assert_eq!(head["outputs"][0]["parameters"]["binary_data_size"], 8);
        assert_eq!(head["outputs"][1]["data"][0], 3.0);
        assert_eq!(&bytes[n..n + 4], &1.0f32.to_le_bytes());
        assert_eq!(&bytes[n + 4..], &2.5f32.to_le_bytes());
        // Without binary outputs the response is plain JSON.
        let (plain, none) = encode_infer_response(&resp, &BinaryOutputs::default());
        assert!(none.is_none() && serde_json::from_slice::<InferResponse>(&plain).is_ok());
    }

    #[test]
    fn binary_errors_name_the_field() {
        let h = br#"{"inputs":[{"name":"x","shape":[2],"datatype":"FP32","parameters":{"binary_data_size":8}}]}"#;
        let mut body = h.to_vec();
        body.extend_from_slice(&[0u8; 8]);
        assert!(parse_infer_request_binary(&body, Some(h.len())).is_ok());
        let e = parse_infer_request(h).unwrap_err();
        assert_eq!(e.field, "inputs[0].parameters.binary_data_size", "{e}");
        let e = parse_infer_request_binary(&body[..body.len() - 2], Some(h.len())).unwrap_err();
        assert_eq!(e.field, "inputs[0].parameters.binary_data_size", "{e}");
        let e = parse_infer_request_binary(&body, Some(body.len() + 1)).unwrap_err();
        assert_eq!(e.field, BINARY_HEADER, "{e}");
        let mut extra = body.clone();
        extra.push(1);
        assert_eq!(parse_infer_request_binary(&extra, Some(h.len())).unwrap_err().field, "body");
        let odd = br#"{"inputs":[{"name":"x","shape":[2],"datatype":"FP32","parameters":{"binary_data_size":7}}]}"#;
        let mut b = odd.to_vec();
        b.extend_from_slice(&[0u8; 7]);
        assert!(parse_infer_request_binary(&b, Some(odd.len())).unwrap_err().message.contains("does not hold"));
    }

    #[test]
    fn errors_name_the_field() {
        let cases: [(&[u8], &str); 10] = [
            (b"nope", "body"),
            (b"[]", "body"),
            (br#"{}"#, "inputs"),
            (br#"{"inputs":[]}"#, "inputs"),
            (br#"{"inputs":[{"shape":[1],"datatype":"FP32","data":[1]}]}"#, "inputs[0].name"),
            (br#"{"inputs":[{"name":"a","shape":[-1],"datatype":"FP32","data":[1]}]}"#, "inputs[0].shape"),
            (br#"{"inputs":[{"name":"a","shape":[1],"datatype":"FLOAT","data":[1]}]}"#, "inputs[0].datatype"),
            (br#"{"inputs":[{"name":"a","shape":[2],"datatype":"FP32","data":[1]}]}"#, "inputs[0].data"),
            (br#"{"inputs":[{"name":"a","shape":[1],"datatype":"INT32","data":[1.5]}]}"#, "inputs[0].data"),
            (
                br#"{"inputs":[{"name":"a","shape":[1],"datatype":"BOOL","data":[true]},
                              {"name":"a","shape":[1],"datatype":"BOOL","data":[false]}]}"#,
                "inputs[1].name",
            ),
        ];
        for (body, field) in cases {
            let e = parse_infer_request(body).unwrap_err();
            assert_eq!(e.field, field, "{}: {e}", String::from_utf8_lossy(body));
        }
        let huge = br#"{"inputs":[{"name":"a","shape":[4294967296,4294967296],"datatype":"FP32","data":[]}]}"#;
        assert!(parse_infer_request(huge).unwrap_err().message.contains("elements"));
    }

    #[test]
    fn data_is_typed_and_may_come_before_the_shape() {
        let r = parse_infer_request(
            br#"{"inputs":[{"data":[[1,2],[3,4]],"name":"a","datatype":"INT64","shape":[2,2]},
                           {"name":"b","shape":[2],"datatype":"FP32","data":[0.5,2]},
                           {"name":"c","datatype":"BOOL","data":[true],"shape":[1]}]}"#,
        )
        .expect("valid");
        assert_eq!(r.inputs[0].data, TensorData::Int(vec![1, 2, 3, 4]));
        assert_eq!(r.inputs[1].data, TensorData::Fp32(vec![0.5, 2.0]));
        assert_eq!(r.inputs[2].data, TensorData::Bool(vec![true]));
        // Unknown fields are skipped, whatever they hold.
        let r = parse_infer_request(
            br#"{"pad":[[1,{"x":[]}]],"inputs":[{"name":"a","shape":[1],"datatype":"FP32","data":[1],"extra":{}}]}"#,
        )
        .expect("valid");
        assert_eq!(r.inputs[0].data.len(), 1);
    }

    #[test]
    fn data_past_the_shape_is_rejected_naming_the_input() {
        // A million elements against a shape of 4: rejected at the fifth, in either field order.
        let zeros = vec!["0"; 1_000_000].join(",");
        for body in [
            format!(r#"{{"inputs":[{{"name":"a","shape":[1,4],"datatype":"FP32","data":[{zeros}]}}]}}"#),
            format!(r#"{{"inputs":[{{"name":"a","data":[{zeros}],"shape":[1,4],"datatype":"FP32"}}]}}"#),
        ] {
            let e = parse_infer_request(body.as_bytes()).unwrap_err();
            assert_eq!(e.field, "inputs[0].data", "{e}");
            assert!(e.message.contains("more than 4 elements"), "{e}");
        }
    }

    #[test]
    fn the_decode_budget_is_charged_from_the_shape_before_allocating() {
        let body = br#"{"inputs":[{"name":"a","shape":[1000],"datatype":"FP64","data":[0]},
                                   {"name":"b","shape":[1],"datatype":"FP32","data":[0]}]}"#;
        // 8000 bytes for `a`: over a budget of 7999 before a single element is read.
        let e = parse_infer_request_bounded(body, None, 7_999).unwrap_err();
        assert_eq!(e.field, "inputs[0].data", "{e}");
        assert!(e.message.contains("memory"), "{e}");
        // Within 8004 both fit, and the count mismatch of `a` is what is wrong.
        let e = parse_infer_request_bounded(body, None, 8_004).unwrap_err();
        assert!(e.message.contains("has 1 elements"), "{e}");
        // Strings are charged by their length too.
        let s =
            format!(r#"{{"inputs":[{{"name":"a","shape":[1],"datatype":"BYTES","data":["{}"]}}]}}"#, "x".repeat(100));
        assert!(parse_infer_request_bounded(s.as_bytes(), None, 24 + 100).is_ok());
        assert!(parse_infer_request_bounded(s.as_bytes(), None, 24 + 99).is_err());
    }

    #[test]
    fn too_many_tensors_or_dimensions_are_rejected() {
        let one = r#"{"name":"a","shape":[1],"datatype":"FP32","data":[0]}"#;
        let many: Vec<String> = (0..=MAX_TENSORS)
            .map(|i| format!(r#"{{"name":"t{i}","shape":[1],"datatype":"FP32","data":[0]}}"#))
            .collect();
        let e = parse_infer_request(format!(r#"{{"inputs":[{}]}}"#, many.join(",")).as_bytes()).unwrap_err();
        assert_eq!(e.field, "inputs", "{e}");
        let dims = vec!["1"; MAX_DIMS + 1].join(",");
        let body = format!(r#"{{"inputs":[{{"name":"a","shape":[{dims}],"datatype":"FP32","data":[0]}}]}}"#);
        let e = parse_infer_request(body.as_bytes()).unwrap_err();
        assert!(e.field == "inputs[0].shape" && e.message.contains("dimensions"), "{e}");
        let outs = vec![r#"{"name":"y"}"#; MAX_TENSORS + 1].join(",");
        let body = format!(r#"{{"inputs":[{one}],"outputs":[{outs}]}}"#);
        assert_eq!(parse_infer_request(body.as_bytes()).unwrap_err().field, "outputs");
    }
}
