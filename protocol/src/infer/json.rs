//! The streaming JSON reader behind [`super::parse_infer_request_bounded`].
//!
//! No `serde_json::Value` is built for a request: small fields are read into their types,
//! anything ignored is skipped without allocating, and each input's `data` array goes
//! straight into a [`TensorData`] of its datatype. The shape is known before the data is
//! stored: when `shape` and `datatype` come before `data` in the object (as every client
//! writes them), in the same pass; otherwise the first pass skips `data` and a second pass
//! reads only the data arrays. Storing stops with an error at the first element past the
//! shape's product, and before a tensor's buffer is allocated its size is charged against
//! the request's decode budget, so what one body can make this process hold is bounded by
//! the shapes it declares and the budget, never by its element count.
//!
//! Errors name the field (`inputs[0].data: ...`). A visitor that finds a bad value records
//! the [`InferError`] in the shared [`Ctx`] and aborts the parse; the caller reports the
//! recorded error, or a JSON syntax error as `body: not valid JSON`.

use super::data::{Elem, TensorData};
use super::{err, InferError, DATATYPES, MAX_DIMS, MAX_ELEMENTS, MAX_TENSORS};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::cell::{Cell, RefCell};
use std::fmt;

/// Where an input's elements are.
#[derive(Debug)]
pub(crate) enum Source {
    /// Read from `data`.
    Json(TensorData),
    /// `data` came before `shape` or `datatype`: read in the second pass.
    Deferred,
    /// `parameters.binary_data_size` bytes after the JSON header.
    Binary(u64),
}

/// One input as read.
#[derive(Debug)]
pub(crate) struct Head {
    pub name: String,
    pub shape: Vec<u64>,
    pub datatype: String,
    /// Product of the shape.
    pub need: u64,
    pub source: Source,
}

/// One requested output.
#[derive(Debug)]
pub(crate) struct OutputSpec {
    pub name: String,
    /// Its `parameters.binary_data`, if a boolean.
    pub binary: Option<bool>,
}

/// The request as read.
#[derive(Debug)]
pub(crate) struct Envelope {
    pub id: Option<String>,
    pub inputs: Vec<Head>,
    pub outputs: Vec<OutputSpec>,
    /// The request-level `parameters.binary_data_output`.
    pub binary_data_output: bool,
}

/// State shared by the visitors of one parse.
pub(crate) struct Ctx {
    err: RefCell<Option<InferError>>,
    /// Bytes of decoded elements this request may still allocate.
    left: Cell<u64>,
    /// Length of the JSON text (no array in it holds more than `(len + 1) / 2` elements).
    text_len: usize,
}

impl Ctx {
    pub(crate) fn new(text_len: usize, budget: u64) -> Ctx {
        Ctx { err: RefCell::new(None), left: Cell::new(budget), text_len }
    }

    /// Record `field: message` (the first one wins) and return an error that aborts the parse.
    pub(crate) fn fail<E: de::Error>(&self, field: impl Into<String>, message: impl Into<String>) -> E {
        let mut e = self.err.borrow_mut();
        if e.is_none() {
            *e = Some(err(field, message));
        }
        E::custom("request rejected")
    }

    /// Take `bytes` from the decode budget.
    pub(crate) fn charge<E: de::Error>(&self, field: &str, bytes: u64) -> Result<(), E> {
        let left = self.left.get();
        if bytes > left {
            return Err(
                self.fail(field, format!("decodes to more than the {left} bytes of memory this request may still use"))
            );
        }
        self.left.set(left - bytes);
        Ok(())
    }

    /// The recorded error, else `e` as a syntax error of the body.
    pub(crate) fn error(&self, e: serde_json::Error) -> InferError {
        self.err.borrow_mut().take().unwrap_or_else(|| err("body", format!("not valid JSON: {e}")))
    }
}

/// Generates the scalar `visit_*` methods of a visitor as calls to its `other()`;
/// `scalars_via_other!(but_unit)` leaves `visit_unit` (JSON `null`) to the visitor.
macro_rules! scalars_via_other {
    () => {
        scalars_via_other!(but_unit);
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            self.other()
        }
    };
    (but_unit) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            self.other()
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            self.other()
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            self.other()
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            self.other()
        }
        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
            self.other()
        }
    };
}

/// A JSON value read shallowly: scalars kept, arrays and objects skipped.
#[derive(Debug, Clone, PartialEq)]
enum Shallow {
    Null,
    Bool(bool),
    I(i64),
    U(u64),
    F(f64),
    Str(String),
    Seq,
    Map,
}

impl fmt::Display for Shallow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Shallow::Null => f.write_str("null"),
            Shallow::Bool(b) => write!(f, "{b}"),
            Shallow::I(n) => write!(f, "{n}"),
            Shallow::U(n) => write!(f, "{n}"),
            Shallow::F(x) => write!(f, "{}", serde_json::Value::from(*x)),
            Shallow::Str(s) => write!(f, "{}", serde_json::Value::from(s.as_str())),
            Shallow::Seq => f.write_str("[...]"),
            Shallow::Map => f.write_str("{...}"),
        }
    }
}

impl<'de> de::Deserialize<'de> for Shallow {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Shallow, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Shallow;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Shallow, E> {
                Ok(Shallow::Bool(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Shallow, E> {
                Ok(Shallow::I(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Shallow, E> {
                Ok(Shallow::U(v))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Shallow, E> {
                Ok(Shallow::F(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Shallow, E> {
                Ok(Shallow::Str(v.to_string()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Shallow, E> {
                Ok(Shallow::Str(v))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Shallow, E> {
                Ok(Shallow::Null)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Shallow, A::Error> {
                while a.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Shallow::Seq)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Shallow, A::Error> {
                while a.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Shallow::Map)
            }
        }
        d.deserialize_any(V)
    }
}

/// The whole body (first pass).
pub(crate) struct Top<'c>(pub &'c Ctx);

impl<'de> DeserializeSeed<'de> for Top<'_> {
    type Value = Envelope;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Envelope, D::Error> {
        d.deserialize_any(self)
    }
}

impl Top<'_> {
    fn other<V, E: de::Error>(self) -> Result<V, E> {
        Err(self.0.fail("body", "must be a JSON object"))
    }
}

impl<'de> Visitor<'de> for Top<'_> {
    type Value = Envelope;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    scalars_via_other!();
    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<Envelope, A::Error> {
        self.other()
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Envelope, A::Error> {
        let ctx = self.0;
        let (mut id, mut inputs, mut outputs, mut binary_data_output) = (None, None, None, false);
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "id" => {
                    id = match map.next_value::<Shallow>()? {
                        Shallow::Null => None,
                        Shallow::Str(s) => Some(s),
                        _ => return Err(ctx.fail("id", "must be a string")),
                    }
                }
                "inputs" if inputs.is_some() => return Err(ctx.fail("inputs", "is given twice")),
                "inputs" => inputs = Some(map.next_value_seed(Inputs(ctx))?),
                "outputs" if outputs.is_some() => return Err(ctx.fail("outputs", "is given twice")),
                "outputs" => outputs = Some(map.next_value_seed(Outputs(ctx))?),
                "parameters" => {
                    if let Some(Shallow::Bool(b)) = map.next_value_seed(Param("binary_data_output"))? {
                        binary_data_output = b;
                    }
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let inputs: Vec<Head> = inputs.ok_or_else(|| ctx.fail::<A::Error>("inputs", "is required"))?;
        if inputs.is_empty() {
            return Err(ctx.fail("inputs", "needs at least one tensor"));
        }
        Ok(Envelope { id, inputs, outputs: outputs.flatten().unwrap_or_default(), binary_data_output })
    }
}

/// `inputs`.
struct Inputs<'c>(&'c Ctx);

impl<'de> DeserializeSeed<'de> for Inputs<'_> {
    type Value = Vec<Head>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<Head>, D::Error> {
        d.deserialize_any(self)
    }
}

impl Inputs<'_> {
    fn other<V, E: de::Error>(self) -> Result<V, E> {
        Err(self.0.fail("inputs", "must be an array"))
    }
}

impl<'de> Visitor<'de> for Inputs<'_> {
    type Value = Vec<Head>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of tensors")
    }
    scalars_via_other!();
    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<Vec<Head>, A::Error> {
        self.other()
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Head>, A::Error> {
        let mut heads: Vec<Head> = Vec::new();
        loop {
            if heads.len() == MAX_TENSORS {
                if seq.next_element::<IgnoredAny>()?.is_some() {
                    return Err(self.0.fail("inputs", format!("more than {MAX_TENSORS} tensors")));
                }
                return Ok(heads);
            }
            match seq.next_element_seed(Input { ctx: self.0, i: heads.len(), before: &heads })? {
                Some(h) => heads.push(h),
                None => return Ok(heads),
            }
        }
    }
}

/// `inputs[i]`.
struct Input<'c, 'h> {
    ctx: &'c Ctx,
    i: usize,
    /// The inputs before it (names must differ).
    before: &'h [Head],
}

impl<'de> DeserializeSeed<'de> for Input<'_, '_> {
    type Value = Head;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Head, D::Error> {
        d.deserialize_any(self)
    }
}

impl Input<'_, '_> {
    fn other<V, E: de::Error>(self) -> Result<V, E> {
        Err(self.ctx.fail(format!("inputs[{}]", self.i), "must be an object"))
    }
}

/// Element count of `shape`, within [`MAX_ELEMENTS`].
fn elements(shape: &[u64]) -> Option<u64> {
    shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d)).filter(|n| *n <= MAX_ELEMENTS)
}

impl<'de> Visitor<'de> for Input<'_, '_> {
    type Value = Head;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a tensor object")
    }
    scalars_via_other!();
    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<Head, A::Error> {
        self.other()
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Head, A::Error> {
        let ctx = self.ctx;
        let f = |k: &str| format!("inputs[{}].{k}", self.i);
        let (mut name, mut shape, mut datatype, mut binary, mut source) = (None, None, None, None, None);
        let need_of = |shape: &[u64]| {
            elements(shape)
                .ok_or_else(|| ctx.fail::<A::Error>(f("shape"), format!("more than {MAX_ELEMENTS} elements")))
        };
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "name" => match map.next_value::<Shallow>()? {
                    Shallow::Str(s) => name = Some(s),
                    _ => return Err(ctx.fail(f("name"), "is required (a string)")),
                },
                "shape" => shape = Some(map.next_value_seed(Shape { ctx, field: f("shape") })?),
                "datatype" => match map.next_value::<Shallow>()? {
                    Shallow::Str(s) if DATATYPES.contains(&s.as_str()) => datatype = Some(s),
                    Shallow::Str(s) => {
                        return Err(ctx.fail(f("datatype"), format!("`{s}` is not one of {}", DATATYPES.join(", "))))
                    }
                    _ => return Err(ctx.fail(f("datatype"), "is required (a string)")),
                },
                "parameters" => match map.next_value_seed(Param("binary_data_size"))? {
                    None => {}
                    Some(Shallow::U(n)) => binary = Some(n),
                    Some(_) => return Err(ctx.fail(f("parameters.binary_data_size"), "must be a byte count")),
                },
                "data" if source.is_some() => return Err(ctx.fail(f("data"), "is given twice")),
                "data" => match (&shape, &datatype) {
                    (Some(shape), Some(datatype)) => {
                        let need = need_of(shape)?;
                        let field = f("data");
                        let sink = Sink::new::<A::Error>(ctx, &field, datatype, shape, need)?;
                        source = Some(Source::Json(map.next_value_seed(sink)?));
                    }
                    _ => {
                        map.next_value::<IgnoredAny>()?;
                        source = Some(Source::Deferred);
                    }
                },
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let name = name.ok_or_else(|| ctx.fail::<A::Error>(f("name"), "is required (a string)"))?;
        if self.before.iter().any(|h| h.name == name) {
            return Err(ctx.fail(f("name"), format!("`{name}` is given twice")));
        }
        let shape =
            shape.ok_or_else(|| ctx.fail::<A::Error>(f("shape"), "is required (an array of non-negative integers)"))?;
        let datatype = datatype.ok_or_else(|| ctx.fail::<A::Error>(f("datatype"), "is required (a string)"))?;
        let need = need_of(&shape)?;
        let source = match (binary, source) {
            (Some(_), Some(_)) => return Err(ctx.fail(f("data"), "is given as well as parameters.binary_data_size")),
            (Some(n), None) => Source::Binary(n),
            (None, Some(s)) => s,
            (None, None) => return Err(ctx.fail(f("data"), "is required")),
        };
        Ok(Head { name, shape, datatype, need, source })
    }
}

/// A `shape` array.
struct Shape<'c> {
    ctx: &'c Ctx,
    field: String,
}

impl<'de> DeserializeSeed<'de> for Shape<'_> {
    type Value = Vec<u64>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<u64>, D::Error> {
        d.deserialize_any(self)
    }
}

impl Shape<'_> {
    fn other<V, E: de::Error>(self) -> Result<V, E> {
        Err(self.ctx.fail(self.field, "is required (an array of non-negative integers)"))
    }
}

impl<'de> Visitor<'de> for Shape<'_> {
    type Value = Vec<u64>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of dimensions")
    }
    scalars_via_other!();
    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<Vec<u64>, A::Error> {
        self.other()
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u64>, A::Error> {
        let mut dims = Vec::new();
        while let Some(d) = seq.next_element::<Shallow>()? {
            match d {
                Shallow::U(n) if dims.len() < MAX_DIMS => dims.push(n),
                Shallow::U(_) => return Err(self.ctx.fail(self.field, format!("more than {MAX_DIMS} dimensions"))),
                d => return Err(self.ctx.fail(self.field, format!("dimension {d} is not a non-negative integer"))),
            }
        }
        Ok(dims)
    }
}

/// One key of a `parameters` object (anything else, and a `parameters` that is not an
/// object, is ignored).
struct Param(&'static str);

impl<'de> DeserializeSeed<'de> for Param {
    type Value = Option<Shallow>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<Shallow>, D::Error> {
        d.deserialize_any(self)
    }
}

impl Param {
    fn other<E: de::Error>(self) -> Result<Option<Shallow>, E> {
        Ok(None)
    }
}

impl<'de> Visitor<'de> for Param {
    type Value = Option<Shallow>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a parameters object")
    }
    scalars_via_other!();
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Option<Shallow>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<Shallow>, A::Error> {
        let mut found = None;
        while let Some(key) = map.next_key::<String>()? {
            if key == self.0 {
                found = Some(map.next_value::<Shallow>()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

/// `outputs` (`null`: none asked for).
struct Outputs<'c>(&'c Ctx);

impl<'de> DeserializeSeed<'de> for Outputs<'_> {
    type Value = Option<Vec<OutputSpec>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl Outputs<'_> {
    fn other<V, E: de::Error>(self) -> Result<V, E> {
        Err(self.0.fail("outputs", "must be an array"))
    }
}

impl<'de> Visitor<'de> for Outputs<'_> {
    type Value = Option<Vec<OutputSpec>>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of outputs")
    }
    scalars_via_other!(but_unit);
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
        self.other()
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        loop {
            if out.len() == MAX_TENSORS {
                if seq.next_element::<IgnoredAny>()?.is_some() {
                    return Err(self.0.fail("outputs", format!("more than {MAX_TENSORS} outputs")));
                }
                return Ok(Some(out));
            }
            match seq.next_element_seed(Output { ctx: self.0, i: out.len() })? {
                Some(o) => out.push(o),
                None => return Ok(Some(out)),
            }
        }
    }
}

/// `outputs[i]`.
struct Output<'c> {
    ctx: &'c Ctx,
    i: usize,
}

impl<'de> DeserializeSeed<'de> for Output<'_> {
    type Value = OutputSpec;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<OutputSpec, D::Error> {
        d.deserialize_any(self)
    }
}

impl Output<'_> {
    fn other<V, E: de::Error>(self) -> Result<V, E> {
        Err(self.ctx.fail(format!("outputs[{}].name", self.i), "is required (a string)"))
    }
}

impl<'de> Visitor<'de> for Output<'_> {
    type Value = OutputSpec;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an output object")
    }
    scalars_via_other!();
    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<OutputSpec, A::Error> {
        self.other()
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OutputSpec, A::Error> {
        let (mut name, mut binary) = (None, None);
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "name" => match map.next_value::<Shallow>()? {
                    Shallow::Str(s) => name = Some(s),
                    _ => return self.other(),
                },
                "parameters" => {
                    binary = match map.next_value_seed(Param("binary_data"))? {
                        Some(Shallow::Bool(b)) => Some(b),
                        _ => None,
                    }
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        match name {
            Some(name) => Ok(OutputSpec { name, binary }),
            None => self.other(),
        }
    }
}

/// Stores one input's `data` (flat or nested arrays, or a single scalar) into a typed
/// buffer, stopping at the first element past `need` or of the wrong type.
pub(crate) struct Sink<'c> {
    ctx: &'c Ctx,
    field: &'c str,
    datatype: &'c str,
    shape: &'c [u64],
    need: u64,
    buf: TensorData,
}

impl<'c> Sink<'c> {
    /// Charge the buffer against the budget and allocate it (room for `need` elements, or
    /// as many as the text can hold, whichever is fewer).
    pub(crate) fn new<E: de::Error>(
        ctx: &'c Ctx,
        field: &'c str,
        datatype: &'c str,
        shape: &'c [u64],
        need: u64,
    ) -> Result<Sink<'c>, E> {
        let per = TensorData::element_memory(datatype).unwrap_or(8) as u64;
        ctx.charge::<E>(field, need.saturating_mul(per))?;
        let cap = need.min(ctx.text_len.div_ceil(2) as u64) as usize;
        let buf = TensorData::with_capacity(datatype, cap)
            .ok_or_else(|| ctx.fail::<E>(field, format!("datatype `{datatype}` is not supported")))?;
        Ok(Sink { ctx, field, datatype, shape, need, buf })
    }

    fn push<E: de::Error>(&mut self, x: Elem<'_>) -> Result<(), E> {
        if self.buf.len() as u64 >= self.need {
            let (need, shape) = (self.need, self.shape);
            return Err(self
                .ctx
                .fail(self.field, format!("has more than {need} elements but shape {shape:?} needs {need}")));
        }
        let ok = match (&mut self.buf, x) {
            (TensorData::Bool(v), Elem::Bool(b)) => {
                v.push(b);
                true
            }
            (TensorData::Bytes(v), Elem::Str(s)) => {
                self.ctx.charge::<E>(self.field, s.len() as u64)?;
                v.push(s.to_string());
                true
            }
            (TensorData::Fp32(v), x) if x.as_f64().is_some() => {
                v.push(x.as_f64().unwrap_or(0.0) as f32);
                true
            }
            (TensorData::Fp64(v), x) if x.as_f64().is_some() => {
                v.push(x.as_f64().unwrap_or(0.0));
                true
            }
            (TensorData::Uint(v), Elem::U(n)) => {
                v.push(n);
                true
            }
            (TensorData::Int(v), Elem::I(n)) => {
                v.push(n);
                true
            }
            (TensorData::Int(v), Elem::U(n)) => match i64::try_from(n) {
                Ok(n) => {
                    v.push(n);
                    true
                }
                Err(_) => false,
            },
            _ => false,
        };
        if ok {
            Ok(())
        } else {
            Err(self.ctx.fail(self.field, format!("element {x} is not a valid {}", self.datatype)))
        }
    }

    fn finish<E: de::Error>(self) -> Result<TensorData, E> {
        if self.buf.len() as u64 != self.need {
            let (n, need, shape) = (self.buf.len(), self.need, self.shape);
            return Err(self.ctx.fail(self.field, format!("has {n} elements but shape {shape:?} needs {need}")));
        }
        Ok(self.buf)
    }
}

impl<'de> DeserializeSeed<'de> for Sink<'_> {
    type Value = TensorData;
    fn deserialize<D: Deserializer<'de>>(mut self, d: D) -> Result<TensorData, D::Error> {
        d.deserialize_any(Level(&mut self))?;
        self.finish()
    }
}

/// One nesting level of a `data` array.
struct Level<'s, 'c>(&'s mut Sink<'c>);

impl<'de> DeserializeSeed<'de> for Level<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl Level<'_, '_> {
    fn not_an_element<E: de::Error>(self) -> Result<(), E> {
        Err(self.0.ctx.fail(self.0.field, "elements must be numbers, booleans or strings"))
    }
}

impl<'de> Visitor<'de> for Level<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("tensor elements")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.0.push(Elem::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.0.push(Elem::I(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.0.push(Elem::U(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.0.push(Elem::F(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.0.push(Elem::Str(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.not_an_element()
    }
    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        self.not_an_element()
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Level(&mut *self.0))?.is_some() {}
        Ok(())
    }
}

/// The second pass: reads the `data` of every [`Source::Deferred`] input.
pub(crate) struct Deferred<'c, 'h> {
    pub ctx: &'c Ctx,
    pub heads: &'h mut [Head],
}

impl<'de> DeserializeSeed<'de> for Deferred<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Deferred<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut heads = Some(self.heads);
        while let Some(key) = map.next_key::<String>()? {
            match (key.as_str(), heads.take()) {
                ("inputs", Some(h)) => map.next_value_seed(DeferredInputs { ctx: self.ctx, heads: h })?,
                (_, h) => {
                    heads = h;
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

struct DeferredInputs<'c, 'h> {
    ctx: &'c Ctx,
    heads: &'h mut [Head],
}

impl<'de> DeserializeSeed<'de> for DeferredInputs<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for DeferredInputs<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of tensors")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0;
        let ctx = self.ctx;
        let heads = self.heads;
        loop {
            let head = heads.get_mut(i);
            if seq.next_element_seed(DeferredInput { ctx, i, head })?.is_none() {
                return Ok(());
            }
            i += 1;
        }
    }
}

struct DeferredInput<'c, 'h> {
    ctx: &'c Ctx,
    i: usize,
    head: Option<&'h mut Head>,
}

impl<'de> DeserializeSeed<'de> for DeferredInput<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        if self.head.as_ref().is_some_and(|h| matches!(h.source, Source::Deferred)) {
            d.deserialize_map(self)
        } else {
            d.deserialize_ignored_any(IgnoredAny).map(|_| ())
        }
    }
}

impl<'de> Visitor<'de> for DeferredInput<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a tensor object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Some(head) = self.head else { return Ok(()) };
        let field = format!("inputs[{}].data", self.i);
        while let Some(key) = map.next_key::<String>()? {
            if key == "data" {
                let sink = Sink::new::<A::Error>(self.ctx, &field, &head.datatype, &head.shape, head.need)?;
                let data = map.next_value_seed(sink)?;
                head.source = Source::Json(data);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
}
