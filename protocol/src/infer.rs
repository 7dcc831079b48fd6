//! The inference API's request and response bodies: the KServe Open Inference Protocol v2
//! (`POST /v2/models/{app}/infer`), so existing v2 clients work.
//!
//! [`parse_infer_request`] validates a JSON body and names the offending field in its error
//! (`inputs[0].shape: ...`), which the HTTP layer returns as a 400 with
//! `{"error": "<message>"}`. Tensor data is accepted flat (row-major) or nested; nested data
//! is flattened and its element count checked against the shape.

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

/// Parse and validate a v2 inference request body.
pub fn parse_infer_request(body: &[u8]) -> Result<InferRequest, InferError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| err("body", format!("not valid JSON: {e}")))?;
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
        let data = t.get("data").ok_or_else(|| err(f("data"), "is required"))?;
        let mut flat = Vec::new();
        flatten(data, &mut flat, &f("data"))?;
        let need = shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d)).filter(|n| *n <= MAX_ELEMENTS);
        let need = need.ok_or_else(|| err(f("shape"), format!("more than {MAX_ELEMENTS} elements")))?;
        if flat.len() as u64 != need {
            return Err(err(f("data"), format!("has {} elements but shape {shape:?} needs {need}", flat.len())));
        }
        for x in &flat {
            check_element(x, datatype, &f("data"))?;
        }
        tensors.push(Tensor { name: name.to_string(), shape, datatype: datatype.to_string(), data: flat });
    }
    let outputs = match obj.get("outputs") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(o)) => o
            .iter()
            .enumerate()
            .map(|(i, x)| {
                x.get("name")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .ok_or_else(|| err(format!("outputs[{i}].name"), "is required (a string)"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(err("outputs", "must be an array")),
    };
    Ok(InferRequest { id, inputs: tensors, outputs })
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
