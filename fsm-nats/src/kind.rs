//! The kind of an effect: the name serde gives its enum variant.

use std::fmt;

use serde::Serialize;
use serde::ser::{self, Impossible, Serializer};

/// The serde name of the enum variant `effect` is (`#[serde(rename)]` honoured), or
/// `None` when it does not serialize as an externally tagged enum variant (a struct, or
/// an enum with `#[serde(tag = ..)]` or `untagged`). Newtype wrappers are seen through.
/// Only the variant is visited: the payload is not serialized.
///
/// # Examples
///
/// ```
/// use fsm_core::testing::OrderEffect;
/// use fsm_nats::effect_kind;
///
/// assert_eq!(effect_kind(&OrderEffect::Charge { cents: 500 }), Some("Charge"));
/// assert_eq!(effect_kind(&OrderEffect::Noted("gift".into())), Some("Noted"));
/// assert_eq!(effect_kind(&42), None);
/// ```
pub fn effect_kind<E: Serialize + ?Sized>(effect: &E) -> Option<&'static str> {
    match effect.serialize(VariantName) {
        Err(Found::Variant(name)) => Some(name),
        _ => None,
    }
}

/// How [`VariantName`] stops: with the variant, or at anything else.
#[derive(Debug)]
enum Found {
    Variant(&'static str),
    NotAVariant,
}

impl fmt::Display for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Found::Variant(name) => write!(f, "variant {name}"),
            Found::NotAVariant => f.write_str("not an enum variant"),
        }
    }
}

impl std::error::Error for Found {}

impl ser::Error for Found {
    fn custom<T: fmt::Display>(_: T) -> Self {
        Found::NotAVariant
    }
}

/// A serializer that stops at the first call, returning the variant name as its "error".
struct VariantName;

macro_rules! not_a_variant {
    ($($method:ident($ty:ty)),* $(,)?) => {
        $(fn $method(self, _: $ty) -> Result<(), Found> {
            Err(Found::NotAVariant)
        })*
    };
}

impl Serializer for VariantName {
    type Ok = ();
    type Error = Found;
    type SerializeSeq = Impossible<(), Found>;
    type SerializeTuple = Impossible<(), Found>;
    type SerializeTupleStruct = Impossible<(), Found>;
    type SerializeTupleVariant = Impossible<(), Found>;
    type SerializeMap = Impossible<(), Found>;
    type SerializeStruct = Impossible<(), Found>;
    type SerializeStructVariant = Impossible<(), Found>;

    not_a_variant! {
        serialize_bool(bool), serialize_i8(i8), serialize_i16(i16), serialize_i32(i32),
        serialize_i64(i64), serialize_u8(u8), serialize_u16(u16), serialize_u32(u32),
        serialize_u64(u64), serialize_f32(f32), serialize_f64(f64), serialize_char(char),
        serialize_str(&str), serialize_bytes(&[u8]), serialize_unit_struct(&'static str),
    }

    fn serialize_none(self) -> Result<(), Found> {
        Err(Found::NotAVariant)
    }

    fn serialize_some<T: ?Sized + Serialize>(self, _: &T) -> Result<(), Found> {
        Err(Found::NotAVariant)
    }

    fn serialize_unit(self) -> Result<(), Found> {
        Err(Found::NotAVariant)
    }

    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<(), Found> {
        Err(Found::Variant(variant))
    }

    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), Found> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: &T,
    ) -> Result<(), Found> {
        Err(Found::Variant(variant))
    }

    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, Found> {
        Err(Found::NotAVariant)
    }

    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, Found> {
        Err(Found::NotAVariant)
    }

    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, Found> {
        Err(Found::NotAVariant)
    }

    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, Found> {
        Err(Found::Variant(variant))
    }

    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, Found> {
        Err(Found::NotAVariant)
    }

    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeStruct, Found> {
        Err(Found::NotAVariant)
    }

    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, Found> {
        Err(Found::Variant(variant))
    }
}

#[cfg(test)]
mod tests {
    use super::effect_kind;
    use serde::Serialize;

    #[derive(Serialize)]
    enum Effect {
        #[serde(rename = "mail.sent")]
        Mail,
        Pair(u8, u8),
        Shape {
            _sides: u8,
        },
    }

    #[derive(Serialize)]
    struct Wrapped(Effect);

    #[derive(Serialize)]
    #[serde(tag = "type")]
    enum Tagged {
        Only,
    }

    #[test]
    fn every_variant_shape_names_its_variant() {
        assert_eq!(effect_kind(&Effect::Mail), Some("mail.sent"));
        assert_eq!(effect_kind(&Effect::Pair(1, 2)), Some("Pair"));
        assert_eq!(effect_kind(&Effect::Shape { _sides: 3 }), Some("Shape"));
        assert_eq!(effect_kind(&Wrapped(Effect::Mail)), Some("mail.sent"));
    }

    #[test]
    fn what_is_not_an_externally_tagged_variant_has_no_kind() {
        assert_eq!(effect_kind(&()), None);
        assert_eq!(effect_kind("Charge"), None);
        assert_eq!(effect_kind(&Tagged::Only), None);
    }
}
