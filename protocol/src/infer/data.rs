//! [`TensorData`]: a tensor's elements in a typed buffer (4 bytes per FP32 element rather
//! than a 32-byte `serde_json::Value` each).

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};
use std::fmt;

/// A tensor's elements, row-major, stored by type. The v2 datatype maps to a variant:
/// `BOOL` → [`Bool`](TensorData::Bool); `INT8`..`INT64` → [`Int`](TensorData::Int);
/// `UINT8`..`UINT64` → [`Uint`](TensorData::Uint); `FP16`, `FP32` →
/// [`Fp32`](TensorData::Fp32); `FP64` → [`Fp64`](TensorData::Fp64); `BYTES` →
/// [`Bytes`](TensorData::Bytes). In JSON it is a flat array of its elements.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    /// `BOOL`.
    Bool(Vec<bool>),
    /// Signed integers.
    Int(Vec<i64>),
    /// Unsigned integers.
    Uint(Vec<u64>),
    /// `FP32` (and `FP16`, widened).
    Fp32(Vec<f32>),
    /// `FP64`.
    Fp64(Vec<f64>),
    /// `BYTES` (as UTF-8, lossily).
    Bytes(Vec<String>),
}

/// One element, borrowed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Elem<'a> {
    Bool(bool),
    I(i64),
    U(u64),
    F(f64),
    Str(&'a str),
}

impl fmt::Display for Elem<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Elem::Bool(b) => write!(f, "{b}"),
            Elem::I(n) => write!(f, "{n}"),
            Elem::U(n) => write!(f, "{n}"),
            Elem::F(x) => write!(f, "{}", serde_json::Value::from(*x)),
            Elem::Str(s) => write!(f, "{}", serde_json::Value::from(*s)),
        }
    }
}

impl Elem<'_> {
    pub(crate) fn as_f64(self) -> Option<f64> {
        match self {
            Elem::I(n) => Some(n as f64),
            Elem::U(n) => Some(n as f64),
            Elem::F(x) => Some(x),
            Elem::Bool(_) | Elem::Str(_) => None,
        }
    }
}

impl TensorData {
    /// An empty buffer for `datatype` with room for `cap` elements; `None` for an unknown
    /// datatype.
    pub fn with_capacity(datatype: &str, cap: usize) -> Option<TensorData> {
        Some(match datatype {
            "BOOL" => TensorData::Bool(Vec::with_capacity(cap)),
            "INT8" | "INT16" | "INT32" | "INT64" => TensorData::Int(Vec::with_capacity(cap)),
            "UINT8" | "UINT16" | "UINT32" | "UINT64" => TensorData::Uint(Vec::with_capacity(cap)),
            "FP16" | "FP32" => TensorData::Fp32(Vec::with_capacity(cap)),
            "FP64" => TensorData::Fp64(Vec::with_capacity(cap)),
            "BYTES" => TensorData::Bytes(Vec::with_capacity(cap)),
            _ => return None,
        })
    }

    /// Bytes one element of `datatype` takes in memory (`BYTES`: the string's header; its
    /// content comes on top); `None` for an unknown datatype.
    pub fn element_memory(datatype: &str) -> Option<usize> {
        Some(match TensorData::with_capacity(datatype, 0)? {
            TensorData::Bool(_) => 1,
            TensorData::Fp32(_) => 4,
            TensorData::Int(_) | TensorData::Uint(_) | TensorData::Fp64(_) => 8,
            TensorData::Bytes(_) => std::mem::size_of::<String>(),
        })
    }

    /// Element count.
    pub fn len(&self) -> usize {
        match self {
            TensorData::Bool(v) => v.len(),
            TensorData::Int(v) => v.len(),
            TensorData::Uint(v) => v.len(),
            TensorData::Fp32(v) => v.len(),
            TensorData::Fp64(v) => v.len(),
            TensorData::Bytes(v) => v.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn elem(&self, i: usize) -> Option<Elem<'_>> {
        Some(match self {
            TensorData::Bool(v) => Elem::Bool(*v.get(i)?),
            TensorData::Int(v) => Elem::I(*v.get(i)?),
            TensorData::Uint(v) => Elem::U(*v.get(i)?),
            TensorData::Fp32(v) => Elem::F(f64::from(*v.get(i)?)),
            TensorData::Fp64(v) => Elem::F(*v.get(i)?),
            TensorData::Bytes(v) => Elem::Str(v.get(i)?),
        })
    }

    /// Element `i` as a number (`None` past the end, or for booleans and strings).
    pub fn f64_at(&self, i: usize) -> Option<f64> {
        self.elem(i)?.as_f64()
    }

    /// The elements as `f32`, if they are numbers.
    pub fn to_f32(&self) -> Option<Vec<f32>> {
        Some(match self {
            TensorData::Fp32(v) => v.clone(),
            TensorData::Fp64(v) => v.iter().map(|x| *x as f32).collect(),
            TensorData::Int(v) => v.iter().map(|x| *x as f32).collect(),
            TensorData::Uint(v) => v.iter().map(|x| *x as f32).collect(),
            TensorData::Bool(_) | TensorData::Bytes(_) => return None,
        })
    }
}

impl From<Vec<f32>> for TensorData {
    fn from(v: Vec<f32>) -> TensorData {
        TensorData::Fp32(v)
    }
}

impl Serialize for TensorData {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.len()))?;
        match self {
            TensorData::Bool(v) => v.iter().try_for_each(|x| seq.serialize_element(x))?,
            TensorData::Int(v) => v.iter().try_for_each(|x| seq.serialize_element(x))?,
            TensorData::Uint(v) => v.iter().try_for_each(|x| seq.serialize_element(x))?,
            TensorData::Fp32(v) => v.iter().try_for_each(|x| seq.serialize_element(x))?,
            TensorData::Fp64(v) => v.iter().try_for_each(|x| seq.serialize_element(x))?,
            TensorData::Bytes(v) => v.iter().try_for_each(|x| seq.serialize_element(x))?,
        }
        seq.end()
    }
}

/// Reads a flat JSON array without knowing the datatype (a client reading a response):
/// booleans → `Bool`, strings → `Bytes`, integers → `Int` (or `Uint` past `i64::MAX`),
/// any float among numbers → `Fp64`. Mixed kinds are an error.
impl<'de> Deserialize<'de> for TensorData {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<TensorData, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TensorData;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a flat array of numbers, booleans or strings")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<TensorData, A::Error> {
                let mut out = TensorData::Int(Vec::new());
                while let Some(x) = seq.next_element::<serde_json::Value>()? {
                    out =
                        push_inferred(out, &x).ok_or_else(|| de::Error::custom(format!("element {x} does not fit")))?;
                }
                Ok(out)
            }
        }
        d.deserialize_seq(V)
    }
}

/// Push `x`, widening the buffer's type when needed (ints → floats); `None` if it cannot.
fn push_inferred(mut out: TensorData, x: &serde_json::Value) -> Option<TensorData> {
    use serde_json::Value;
    if out.is_empty() {
        out = match x {
            Value::Bool(_) => TensorData::Bool(Vec::new()),
            Value::String(_) => TensorData::Bytes(Vec::new()),
            Value::Number(n) if n.is_i64() => TensorData::Int(Vec::new()),
            Value::Number(n) if n.is_u64() => TensorData::Uint(Vec::new()),
            Value::Number(_) => TensorData::Fp64(Vec::new()),
            _ => return None,
        };
    }
    match (&mut out, x) {
        (TensorData::Bool(v), Value::Bool(b)) => v.push(*b),
        (TensorData::Bytes(v), Value::String(s)) => v.push(s.clone()),
        (TensorData::Int(v), Value::Number(n)) if n.is_i64() => v.push(n.as_i64()?),
        (TensorData::Uint(v), Value::Number(n)) if n.is_u64() => v.push(n.as_u64()?),
        (TensorData::Fp64(v), Value::Number(n)) => v.push(n.as_f64()?),
        (TensorData::Int(_) | TensorData::Uint(_), Value::Number(n)) => {
            let mut f: Vec<f64> = (0..out.len()).filter_map(|i| out.f64_at(i)).collect();
            f.push(n.as_f64()?);
            return Some(TensorData::Fp64(f));
        }
        _ => return None,
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trips_and_infers_the_type() {
        let cases = [
            ("[1.5,-2.0]", TensorData::Fp64(vec![1.5, -2.0])),
            ("[1,2,3]", TensorData::Int(vec![1, 2, 3])),
            ("[1,2.5]", TensorData::Fp64(vec![1.0, 2.5])),
            ("[18446744073709551615]", TensorData::Uint(vec![u64::MAX])),
            ("[true,false]", TensorData::Bool(vec![true, false])),
            (r#"["a","b"]"#, TensorData::Bytes(vec!["a".into(), "b".into()])),
        ];
        for (text, want) in cases {
            let got: TensorData = serde_json::from_str(text).expect(text);
            assert_eq!(got, want, "{text}");
        }
        assert!(serde_json::from_str::<TensorData>("[1,true]").is_err());
        assert_eq!(serde_json::to_string(&TensorData::Fp32(vec![0.1, 2.0])).expect("json"), "[0.1,2.0]");
        assert_eq!(TensorData::Int(vec![3]).to_f32(), Some(vec![3.0]));
        assert_eq!(TensorData::Bool(vec![true]).to_f32(), None);
    }
}
