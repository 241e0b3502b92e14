//! Encodings: MessagePack with field names in the journal and on NATS, JSON at
//! the HTTP edge, and the decoding of a named command from either.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, Visitor};
use serde::{Deserialize, Serialize};

/// A wire format of a command, input or reply body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// `application/json`
    Json,
    /// `application/msgpack`
    MsgPack,
}

impl Format {
    /// The format named by a `Content-Type` value; `None` for neither.
    pub fn from_content_type(value: &str) -> Option<Self> {
        let mime = value.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        match mime.as_str() {
            "application/json" | "text/json" => Some(Self::Json),
            "application/msgpack" | "application/x-msgpack" | "application/vnd.msgpack" => Some(Self::MsgPack),
            _ => None,
        }
    }
    /// The canonical `Content-Type` of this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Json => "application/json",
            Self::MsgPack => "application/msgpack",
        }
    }
}

/// An encoding or decoding failure, with the decoder's message (which names
/// the field and, for JSON, the line and column).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CodecError(pub String);

impl de::Error for CodecError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self(msg.to_string())
    }
}

impl From<serde_json::Error> for CodecError {
    fn from(e: serde_json::Error) -> Self {
        Self(e.to_string())
    }
}
impl From<rmp_serde::decode::Error> for CodecError {
    fn from(e: rmp_serde::decode::Error) -> Self {
        Self(e.to_string())
    }
}
impl From<rmp_serde::encode::Error> for CodecError {
    fn from(e: rmp_serde::encode::Error) -> Self {
        Self(e.to_string())
    }
}

/// MessagePack with field names kept, so stored bytes are self-describing.
pub fn to_msgpack<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    Ok(rmp_serde::to_vec_named(value)?)
}

/// The deepest nesting a MessagePack value may have (JSON's limit in
/// serde_json is the same): rmp-serde's own default, 1024, lets a hostile
/// 1 KiB body overflow a 1 MiB thread stack in a debug build (found by
/// `entities/tests/fuzz.rs`).
pub const MAX_DEPTH: usize = 128;

/// Decodes MessagePack (named or positional), at most [`MAX_DEPTH`] deep.
pub fn from_msgpack<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let mut d = rmp_serde::Deserializer::from_read_ref(bytes);
    d.set_max_depth(MAX_DEPTH);
    Ok(T::deserialize(&mut d)?)
}

/// Any MessagePack value as JSON, without knowing its Rust type.
pub fn msgpack_to_json(bytes: &[u8]) -> Result<serde_json::Value, CodecError> {
    from_msgpack(bytes)
}

/// Encodes `value` in `format`.
pub fn encode<T: Serialize + ?Sized>(value: &T, format: Format) -> Result<Vec<u8>, CodecError> {
    match format {
        Format::Json => Ok(serde_json::to_vec(value)?),
        Format::MsgPack => to_msgpack(value),
    }
}

/// Decodes `bytes` in `format`; an empty body reads as `null`.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], format: Format) -> Result<T, CodecError> {
    let bytes = non_empty(bytes, format, false);
    match format {
        Format::Json => Ok(serde_json::from_slice(bytes)?),
        Format::MsgPack => from_msgpack(bytes),
    }
}

/// Re-encodes a stored MessagePack value (e.g. a reply) in `format`.
pub fn transcode_msgpack(bytes: &[u8], format: Format) -> Result<Vec<u8>, CodecError> {
    match format {
        Format::MsgPack => Ok(bytes.to_vec()),
        Format::Json => Ok(serde_json::to_vec(&msgpack_to_json(bytes)?)?),
    }
}

/// The variant name of an externally tagged enum encoded as MessagePack
/// (`{"Variant": ...}` or `"Variant"`), if that is what `payload` holds.
pub fn variant_name(payload: &[u8]) -> Option<String> {
    let mut rd = payload;
    let marker = rmp::decode::read_marker(&mut rd).ok()?;
    use rmp::Marker;
    match marker {
        Marker::FixMap(1) => read_str(rd),
        Marker::Map16 | Marker::Map32 => {
            let mut rd = payload;
            if rmp::decode::read_map_len(&mut rd).ok()? == 1 { read_str(rd) } else { None }
        }
        Marker::FixStr(_) | Marker::Str8 | Marker::Str16 | Marker::Str32 => read_str(payload),
        _ => None,
    }
}

fn read_str(mut rd: &[u8]) -> Option<String> {
    let len = rmp::decode::read_str_len(&mut rd).ok()? as usize;
    rd.get(..len).and_then(|b| std::str::from_utf8(b).ok()).map(str::to_owned)
}

fn non_empty(body: &[u8], format: Format, as_map: bool) -> &[u8] {
    if !body.iter().all(u8::is_ascii_whitespace) {
        return body;
    }
    match (format, as_map) {
        (Format::Json, false) => b"null",
        (Format::Json, true) => b"{}",
        (Format::MsgPack, false) => &[0xc0],
        (Format::MsgPack, true) => &[0x80],
    }
}

/// The command names of a command enum `T` (its serde variant names).
/// Empty if `T` is not an enum.
pub fn command_names<T: DeserializeOwned>() -> Vec<&'static str> {
    let captured = Cell::new(None);
    let _ = T::deserialize(VariantCapture(&captured));
    captured.take().map(<[&str]>::to_vec).unwrap_or_default()
}

struct VariantCapture<'c>(&'c Cell<Option<&'static [&'static str]>>);

impl<'de> de::Deserializer<'de> for VariantCapture<'_> {
    type Error = CodecError;
    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, CodecError> {
        Err(CodecError("not an enum".into()))
    }
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, CodecError> {
        self.0.set(Some(variants));
        Err(CodecError("captured".into()))
    }
    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct identifier ignored_any
    }
}

/// Decodes the command `name` with `body` into the command enum `T`: the
/// variant is chosen by name and its content read from the body
/// (`restock` + `{"qty":5}` is `Command::Restock { qty: 5 }`). An empty body
/// reads as `{}` for struct commands and nothing for unit commands.
pub fn decode_command<T: DeserializeOwned>(name: &str, body: &[u8], format: Format) -> Result<T, CodecError> {
    T::deserialize(NamedCommand { name, body, format })
}

struct NamedCommand<'a> {
    name: &'a str,
    body: &'a [u8],
    format: Format,
}

impl<'de> de::Deserializer<'de> for NamedCommand<'de> {
    type Error = CodecError;
    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, CodecError> {
        visitor.visit_enum(self)
    }
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, CodecError> {
        visitor.visit_enum(self)
    }
    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct identifier ignored_any
    }
}

impl<'de> de::EnumAccess<'de> for NamedCommand<'de> {
    type Error = CodecError;
    type Variant = Self;
    fn variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<(S::Value, Self), CodecError> {
        let de: de::value::StrDeserializer<'_, CodecError> = self.name.into_deserializer();
        let v = seed.deserialize(de)?;
        Ok((v, self))
    }
}

/// Runs `$body` with `$de` bound to a deserializer of the command body in its
/// format, and checks that nothing trails the value.
macro_rules! with_body {
    ($self:ident, $as_map:expr, |$de:ident| $body:expr) => {{
        let bytes = non_empty($self.body, $self.format, $as_map);
        match $self.format {
            Format::Json => {
                let mut d = serde_json::Deserializer::from_slice(bytes);
                let value = {
                    let $de = &mut d;
                    $body.map_err(CodecError::from)?
                };
                d.end()?;
                Ok(value)
            }
            Format::MsgPack => {
                let mut d = rmp_serde::Deserializer::new(bytes);
                d.set_max_depth(MAX_DEPTH);
                let value = {
                    let $de = &mut d;
                    $body.map_err(CodecError::from)?
                };
                if d.get_ref().is_empty() {
                    Ok(value)
                } else {
                    Err(CodecError("trailing bytes after the MessagePack value".into()))
                }
            }
        }
    }};
}

impl<'de> de::VariantAccess<'de> for NamedCommand<'de> {
    type Error = CodecError;
    fn unit_variant(self) -> Result<(), CodecError> {
        with_body!(self, false, |d| de::IgnoredAny::deserialize(d)).map(|_| ())
    }
    fn newtype_variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<S::Value, CodecError> {
        with_body!(self, false, |d| seed.deserialize(d))
    }
    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, CodecError> {
        with_body!(self, false, |d| de::Deserializer::deserialize_tuple(d, len, visitor))
    }
    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, CodecError> {
        with_body!(self, true, |d| de::Deserializer::deserialize_struct(d, "command", fields, visitor))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Deserialize, Serialize)]
    #[serde(rename_all = "snake_case")]
    enum Cmd {
        Restock {
            qty: u32,
        },
        Ping,
        Set(i64),
        Opt {
            #[serde(default)]
            n: u8,
        },
    }

    #[test]
    fn names_are_captured() {
        assert_eq!(command_names::<Cmd>(), vec!["restock", "ping", "set", "opt"]);
        assert!(command_names::<u32>().is_empty());
    }

    #[test]
    fn decodes_each_variant_shape() {
        let c: Cmd = decode_command("restock", br#"{"qty":5}"#, Format::Json).unwrap();
        assert_eq!(c, Cmd::Restock { qty: 5 });
        assert_eq!(decode_command::<Cmd>("ping", b"", Format::Json).unwrap(), Cmd::Ping);
        assert_eq!(decode_command::<Cmd>("set", b"-3", Format::Json).unwrap(), Cmd::Set(-3));
        assert_eq!(decode_command::<Cmd>("opt", b" ", Format::Json).unwrap(), Cmd::Opt { n: 0 });
        let mp = to_msgpack(&serde_json::json!({"qty": 7})).unwrap();
        assert_eq!(decode_command::<Cmd>("restock", &mp, Format::MsgPack).unwrap(), Cmd::Restock { qty: 7 });
    }

    #[test]
    fn malformed_bodies_say_why() {
        let e = decode_command::<Cmd>("restock", br#"{"qty":"x"}"#, Format::Json).unwrap_err();
        assert!(e.0.contains("invalid type"), "{e}");
        let e = decode_command::<Cmd>("restock", br#"{"qty":1} junk"#, Format::Json).unwrap_err();
        assert!(e.0.contains("trailing"), "{e}");
        let e = decode_command::<Cmd>("restock", &[0xc1, 0x00], Format::MsgPack).unwrap_err();
        assert!(!e.0.is_empty());
        let e = decode_command::<Cmd>("nope", b"{}", Format::Json).unwrap_err();
        assert!(e.0.contains("unknown variant"), "{e}");
    }

    #[test]
    fn variant_names_from_payloads() {
        let p = to_msgpack(&Cmd::Restock { qty: 1 }).unwrap();
        assert_eq!(variant_name(&p).as_deref(), Some("restock"));
        let p = to_msgpack(&Cmd::Ping).unwrap();
        assert_eq!(variant_name(&p).as_deref(), Some("ping"));
        assert_eq!(variant_name(&to_msgpack(&5u8).unwrap()), None);
    }

    #[test]
    fn content_types() {
        assert_eq!(Format::from_content_type("application/json; charset=utf-8"), Some(Format::Json));
        assert_eq!(Format::from_content_type("application/msgpack"), Some(Format::MsgPack));
        assert_eq!(Format::from_content_type("text/plain"), None);
    }
}
