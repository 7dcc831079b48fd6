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

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// v2 datatypes.
pub const DATATYPES: [&str; 13] =
    ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES"];

/// Largest element count accepted in one tensor.
pub const MAX_ELEMENTS: u64 = 64 * 1024 * 1024;

/// One input or output tensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tensor {
    /// Tensor name.
    pub name: String,
    /// Shape.
    pub shape: Vec<u64>,
    /// v2 datatype (`FP32`, …).
    pub datatype: String,
    /// Row-major data (numbers, booleans or strings for `BYTES`).
    pub data: Vec<Value>,
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

fn flatten(v: &Value, out: &mut Vec<Value>, field: &str) -> Result<(), InferError> {
    match v {
        Value::Array(items) => {
            for x in items {
                flatten(x, out, field)?;
                if out.len() as u64 > MAX_ELEMENTS {
                    return Err(err(field, format!("more than {MAX_ELEMENTS} elements")));
                }
            }
            Ok(())
        }
        Value::Object(_) | Value::Null => Err(err(field, "elements must be numbers, booleans or strings")),
        x => {
            out.push(x.clone());
            Ok(())
        }
    }
}

fn check_element(x: &Value, datatype: &str, field: &str) -> Result<(), InferError> {
    let ok = match datatype {
        "BOOL" => x.is_boolean(),
        "BYTES" => x.is_string(),
        "FP16" | "FP32" | "FP64" => x.is_number(),
        t if t.starts_with("UINT") => x.is_u64(),
        _ => x.is_i64() || x.is_u64(),
    };
    if ok {
        Ok(())
    } else {
        Err(err(field, format!("element {x} is not a valid {datatype}")))
    }
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
pub fn decode_elements(raw: &[u8], datatype: &str, n: u64, field: &str) -> Result<Vec<Value>, InferError> {
    if let Some(size) = element_size(datatype) {
        let need = n.checked_mul(size as u64).filter(|b| *b == raw.len() as u64);
        if need.is_none() {
            return Err(err(field, format!("binary_data_size {} does not hold {n} {datatype} elements", raw.len())));
        }
        let v = raw.chunks_exact(size).map(|c| {
            let mut b = [0u8; 8];
            b[..size].copy_from_slice(c);
            match datatype {
                "BOOL" => Value::from(c[0] != 0),
                "UINT8" | "UINT16" | "UINT32" | "UINT64" => Value::from(u64::from_le_bytes(b)),
                "INT8" => Value::from(i64::from(c[0] as i8)),
                "INT16" => Value::from(i64::from(i16::from_le_bytes([c[0], c[1]]))),
                "INT32" => Value::from(i64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
                "INT64" => Value::from(i64::from_le_bytes(b)),
                "FP16" => Value::from(f64::from(half_to_f32(u16::from_le_bytes([c[0], c[1]])))),
                "FP32" => Value::from(f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
                _ => Value::from(f64::from_le_bytes(b)),
            }
        });
        return Ok(v.collect());
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
        out.push(Value::from(String::from_utf8_lossy(bytes).into_owned()));
        rest = &rest[4 + len..];
    }
    if out.len() as u64 != n {
        return Err(err(field, format!("binary data holds {} BYTES elements but the shape needs {n}", out.len())));
    }
    Ok(out)
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
    let (json, mut binary) = match json_len {
        None => (body, &[][..]),
        Some(n) if n <= body.len() => body.split_at(n),
        Some(n) => {
            return Err(err(BINARY_HEADER, format!("{n} is longer than the {}-byte body", body.len())));
        }
    };
    let v: Value = serde_json::from_slice(json).map_err(|e| err("body", format!("not valid JSON: {e}")))?;
    let obj = v.as_object().ok_or_else(|| err("body", "must be a JSON object"))?;
    let id = match obj.get("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(err("id", "must be a string")),
    };
    let inputs = obj.get("inputs").ok_or_else(|| err("inputs", "is required"))?;
    let inputs = inputs.as_array().ok_or_else(|| err("inputs", "must be an array"))?;
    if inputs.is_empty() {
        return Err(err("inputs", "needs at least one tensor"));
    }
    let mut tensors: Vec<Tensor> = Vec::new();
    for (i, t) in inputs.iter().enumerate() {
        let f = |k: &str| format!("inputs[{i}].{k}");
        let t = t.as_object().ok_or_else(|| err(format!("inputs[{i}]"), "must be an object"))?;
        let name = t.get("name").and_then(Value::as_str).ok_or_else(|| err(f("name"), "is required (a string)"))?;
        if tensors.iter().any(|x| x.name == name) {
            return Err(err(f("name"), format!("`{name}` is given twice")));
        }
        let shape = t
            .get("shape")
            .and_then(Value::as_array)
            .ok_or_else(|| err(f("shape"), "is required (an array of non-negative integers)"))?;
        let shape: Vec<u64> = shape
            .iter()
            .map(|d| d.as_u64().ok_or_else(|| err(f("shape"), format!("dimension {d} is not a non-negative integer"))))
            .collect::<Result<_, _>>()?;
        let datatype =
            t.get("datatype").and_then(Value::as_str).ok_or_else(|| err(f("datatype"), "is required (a string)"))?;
        if !DATATYPES.contains(&datatype) {
            return Err(err(f("datatype"), format!("`{datatype}` is not one of {}", DATATYPES.join(", "))));
        }
        let need = shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d)).filter(|n| *n <= MAX_ELEMENTS);
        let need = need.ok_or_else(|| err(f("shape"), format!("more than {MAX_ELEMENTS} elements")))?;
        let binary_size = match t.get("parameters").and_then(|p| p.get("binary_data_size")) {
            None => None,
            Some(n) => Some(n.as_u64().ok_or_else(|| err(f("parameters.binary_data_size"), "must be a byte count"))?),
        };
        let mut flat = Vec::new();
        match (binary_size, t.get("data")) {
            (Some(_), Some(_)) => return Err(err(f("data"), "is given as well as parameters.binary_data_size")),
            (Some(n), None) => {
                if json_len.is_none() {
                    return Err(err(f("parameters.binary_data_size"), format!("needs the {BINARY_HEADER} header")));
                }
                let n = usize::try_from(n).ok().filter(|n| *n <= binary.len()).ok_or_else(|| {
                    err(f("parameters.binary_data_size"), format!("{n} is more than the {} bytes left", binary.len()))
                })?;
                let (raw, rest) = binary.split_at(n);
                binary = rest;
                flat = decode_elements(raw, datatype, need, &f("parameters.binary_data_size"))?;
            }
            (None, Some(data)) => flatten(data, &mut flat, &f("data"))?,
            (None, None) => return Err(err(f("data"), "is required")),
        }
        if flat.len() as u64 != need {
            return Err(err(f("data"), format!("has {} elements but shape {shape:?} needs {need}", flat.len())));
        }
        for x in &flat {
            check_element(x, datatype, &f("data"))?;
        }
        tensors.push(Tensor { name: name.to_string(), shape, datatype: datatype.to_string(), data: flat });
    }
    if !binary.is_empty() {
        return Err(err("body", format!("{} bytes of binary data belong to no input", binary.len())));
    }
    let mut bin = BinaryOutputs {
        all: obj.get("parameters").and_then(|p| p.get("binary_data_output")).and_then(Value::as_bool).unwrap_or(false),
        ..BinaryOutputs::default()
    };
    let outputs = match obj.get("outputs") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(o)) => o
            .iter()
            .enumerate()
            .map(|(i, x)| {
                let name = x
                    .get("name")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .ok_or_else(|| err(format!("outputs[{i}].name"), "is required (a string)"))?;
                match x.get("parameters").and_then(|p| p.get("binary_data")).and_then(Value::as_bool) {
                    Some(true) => bin.binary.push(name.clone()),
                    Some(false) => bin.json.push(name.clone()),
                    None => {}
                }
                Ok(name)
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(err("outputs", "must be an array")),
    };
    Ok((InferRequest { id, inputs: tensors, outputs }, bin))
}

/// Encode one element of `datatype` as little-endian bytes (binary data extension).
fn encode_element(x: &Value, datatype: &str, out: &mut Vec<u8>) {
    let f = x.as_f64().unwrap_or(0.0);
    match datatype {
        "BOOL" => out.push(u8::from(x.as_bool().unwrap_or(false))),
        "UINT8" | "INT8" => out.push(x.as_i64().unwrap_or(0) as u8),
        "UINT16" | "INT16" => out.extend_from_slice(&(x.as_i64().unwrap_or(0) as u16).to_le_bytes()),
        "UINT32" | "INT32" => out.extend_from_slice(&(x.as_i64().unwrap_or(0) as u32).to_le_bytes()),
        "UINT64" => out.extend_from_slice(&x.as_u64().unwrap_or(0).to_le_bytes()),
        "INT64" => out.extend_from_slice(&x.as_i64().unwrap_or(0).to_le_bytes()),
        "FP64" => out.extend_from_slice(&f.to_le_bytes()),
        "BYTES" => {
            let s = x.as_str().map_or_else(|| x.to_string(), str::to_string);
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
                for x in &t.data {
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
        assert_eq!(r.inputs[0].data, vec![Value::from(1.5), Value::from(-2.0), Value::from(0.25)]);
        assert_eq!(r.inputs[1].data, vec![Value::from("ab"), Value::from("cde")]);
        assert!(bin.wants("y") && !bin.wants("z"));
        let resp = InferResponse {
            model_name: "m".into(),
            id: Some("7".into()),
            outputs: vec![
                Tensor {
                    name: "y".into(),
                    shape: vec![2],
                    datatype: "FP32".into(),
                    data: vec![1.0.into(), 2.5.into()],
                },
                Tensor { name: "z".into(), shape: vec![1], datatype: "FP32".into(), data: vec![3.0.into()] },
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
}
