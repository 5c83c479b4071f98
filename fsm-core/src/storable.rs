//! serde_json writes values it cannot read back (non-finite floats become `null`, nesting
//! past its recursion limit is written but refused on read), so stored values are checked first.

use std::fmt::{self, Display};

use serde::Serialize;
use serde::ser::{self, Impossible};
use serde_json::Error;

/// The deepest nesting of arrays and objects that `serde_json::from_str` reads back.
///
/// serde_json's deserializer starts with a budget of 128 and refuses the input as soon as an
/// opening `[` or `{` brings it to zero, so 127 nested levels are read and 128 are not.
pub(crate) const MAX_DEPTH: usize = 127;

/// Checks that `value` can be stored as JSON and read back: every float is finite and no
/// array, map, struct, tuple or enum payload is nested deeper than [`MAX_DEPTH`].
///
/// Levels are counted as serde_json writes them: a sequence, tuple, map or struct is one
/// level, an enum variant with data is one more for its `{"Variant": ..}` wrapper, newtype
/// structs and `Some` add none. Map keys follow serde_json's rule (strings, chars, integers,
/// bools, finite floats, unit variants), and errors of the value's own `Serialize` impl are
/// returned unchanged, so `check_storable(v).is_ok()` implies `serde_json::to_string(v).is_ok()`.
///
/// The walk writes nothing and allocates nothing unless the check fails; the error then names
/// the problem and where it is, e.g. `non-finite float NaN at .total.items[3]`.
pub(crate) fn check_storable<T: Serialize + ?Sized>(value: &T) -> Result<(), Error> {
    let mut walker = Walker {
        depth: 0,
        problem: None,
        path: Vec::new(),
    };
    let result = value.serialize(&mut walker);
    match walker.problem.take() {
        Some(problem) => Err(problem.into_error(&walker.path)),
        None => result,
    }
}

/// The private struct names through which serde_json serializes its `RawValue` (feature
/// `raw_value`, enabled in this workspace by sqlx and axum) and arbitrary-precision numbers.
const RAW_VALUE_TOKEN: &str = "$serde_json::private::RawValue";
const NUMBER_TOKEN: &str = "$serde_json::private::Number";

/// What made a value unstorable.
enum Problem {
    NonFinite(f64),
    NonFiniteKey(f64),
    TooDeep,
    BadKey(&'static str),
    BadToken,
    Display,
}

/// One step of the path to a problem, recorded while the error unwinds.
enum Segment {
    Index(usize),
    Name(&'static str),
    /// A map key, as the string serde_json writes for it.
    Key(String),
    /// A map entry whose key could not be rendered.
    Entry(usize),
}

impl Problem {
    #[cold]
    fn into_error(self, path: &[Segment]) -> Error {
        let mut at = String::new();
        // Segments were pushed innermost first.
        for segment in path.iter().rev() {
            match segment {
                Segment::Index(index) => at.push_str(&format!("[{index}]")),
                Segment::Name(name) => push_name(&mut at, name),
                Segment::Key(key) => push_name(&mut at, key),
                Segment::Entry(index) => at.push_str(&format!("[<entry {index}>]")),
            }
        }
        if at.is_empty() {
            at.push_str("the top level");
        }
        let message = match self {
            Problem::NonFinite(value) => format!("non-finite float {value} at {at}"),
            Problem::NonFiniteKey(value) => {
                format!("non-finite float {value} as a map key at {at}")
            }
            Problem::TooDeep => format!("nested deeper than {MAX_DEPTH} levels at {at}"),
            Problem::BadKey(found) => {
                format!("map key must be a string, number, bool or char, not {found}, at {at}")
            }
            Problem::BadToken => format!("malformed serde_json raw value or number at {at}"),
            Problem::Display => format!("a Display impl returned an error at {at}"),
        };
        <Error as ser::Error>::custom(message)
    }
}

/// `.name` where that is unambiguous, `["name"]` otherwise.
fn push_name(at: &mut String, name: &str) {
    if is_identifier(name) {
        at.push('.');
        at.push_str(name);
    } else {
        at.push('[');
        at.push_str(&serde_json::Value::from(name).to_string());
        at.push(']');
    }
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|first| first.is_alphabetic() || first == '_')
        && chars.all(|c| c.is_alphanumeric() || c == '_')
}

/// A map key as serde_json writes it (always a JSON string), if it can be rendered.
#[cold]
fn key_segment<K: Serialize + ?Sized>(key: &K, entry: usize) -> Segment {
    match serde_json::to_value(key) {
        Ok(serde_json::Value::String(text)) => Segment::Key(text),
        Ok(other @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
            Segment::Key(other.to_string())
        }
        _ => Segment::Entry(entry),
    }
}

/// The serializer: walks the value, counting nesting, writing nothing.
struct Walker {
    depth: usize,
    problem: Option<Problem>,
    /// Filled only while a problem unwinds.
    path: Vec<Segment>,
}

impl Walker {
    /// Records `problem` (replacing one that a `Serialize` impl swallowed) and returns the
    /// error that unwinds to [`check_storable`].
    #[cold]
    fn fail(&mut self, problem: Problem) -> Error {
        self.problem = Some(problem);
        self.path.clear();
        <Error as ser::Error>::custom("value is not storable as JSON")
    }

    /// Takes `levels` more levels of nesting, if the limit allows.
    #[inline]
    fn enter(&mut self, levels: usize) -> Result<(), Error> {
        if self.depth + levels > MAX_DEPTH {
            return Err(self.fail(Problem::TooDeep));
        }
        self.depth += levels;
        Ok(())
    }

    /// On the way out of a failed child: restores the depth it started at (in case the
    /// caller swallows the error and goes on) and, for our own problems, notes where it was.
    #[cold]
    fn unwind(&mut self, depth: usize, segment: Segment, error: Error) -> Error {
        self.depth = depth;
        if self.problem.is_some() {
            self.path.push(segment);
        }
        error
    }

    #[inline]
    fn float(&mut self, value: f64) -> Result<(), Error> {
        if value.is_finite() {
            Ok(())
        } else {
            Err(self.fail(Problem::NonFinite(value)))
        }
    }

    fn compound(
        &mut self,
        levels: usize,
        variant: Option<&'static str>,
    ) -> Result<Compound<'_>, Error> {
        self.enter(levels)?;
        Ok(Compound {
            walker: self,
            levels,
            index: 0,
            variant,
            token: None,
        })
    }
}

/// Runs a `Display` impl into nothing, as serde_json's `collect_str` would run it into the output.
fn display<T: Display + ?Sized>(walker: &mut Walker, value: &T) -> Result<(), Error> {
    struct Discard;
    impl fmt::Write for Discard {
        fn write_str(&mut self, _: &str) -> fmt::Result {
            Ok(())
        }
    }
    fmt::Write::write_fmt(&mut Discard, format_args!("{value}"))
        .map_err(|_| walker.fail(Problem::Display))
}

impl<'a> ser::Serializer for &'a mut Walker {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = Compound<'a>;
    type SerializeTuple = Compound<'a>;
    type SerializeTupleStruct = Compound<'a>;
    type SerializeTupleVariant = Compound<'a>;
    type SerializeMap = Compound<'a>;
    type SerializeStruct = Compound<'a>;
    type SerializeStructVariant = Compound<'a>;

    fn serialize_bool(self, _: bool) -> Result<(), Error> {
        Ok(())
    }

    fn serialize_i8(self, _: i8) -> Result<(), Error> {
        Ok(())
    }

    fn serialize_i16(self, _: i16) -> Result<(), Error> {
        Ok(())
    }

    fn serialize_i32(self, _: i32) -> Result<(), Error> {
        Ok(())
    }

    fn serialize_i64(self, _: i64) -> Result<(), Error> {
        Ok(())
    }

    fn serialize_i128(self, _: i128) -> Result<(), Error> {
        Ok(())
    }

    fn serialize_u8(self, _: u8) -> Result<(), Error> {
        Ok(())
    }

    fn serialize_u16(self, _: u16) -> Result<(), Error> {
        Ok(())
    }

    fn serialize_u32(self, _: u32) -> Result<(), Error> {
        Ok(())
    }

    fn serialize_u64(self, _: u64) -> Result<(), Error> {
        Ok(())
    }

    fn serialize_u128(self, _: u128) -> Result<(), Error> {
        Ok(())
    }

    fn serialize_f32(self, value: f32) -> Result<(), Error> {
        self.float(f64::from(value))
    }

    fn serialize_f64(self, value: f64) -> Result<(), Error> {
        self.float(value)
    }

    fn serialize_char(self, _: char) -> Result<(), Error> {
        Ok(())
    }

    fn serialize_str(self, _: &str) -> Result<(), Error> {
        Ok(())
    }

    /// serde_json writes bytes as an array of numbers: one level.
    fn serialize_bytes(self, _: &[u8]) -> Result<(), Error> {
        self.enter(1)?;
        self.depth -= 1;
        Ok(())
    }

    fn serialize_none(self) -> Result<(), Error> {
        Ok(())
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Error> {
        value.serialize(self)
    }

    fn serialize_unit(self) -> Result<(), Error> {
        Ok(())
    }

    fn serialize_unit_struct(self, _: &'static str) -> Result<(), Error> {
        Ok(())
    }

    fn serialize_unit_variant(self, _: &'static str, _: u32, _: &'static str) -> Result<(), Error> {
        Ok(())
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        value.serialize(self)
    }

    /// `{"Variant": value}`: one level for the wrapper.
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        self.enter(1)?;
        let depth = self.depth;
        value
            .serialize(&mut *self)
            .map_err(|error| self.unwind(depth, Segment::Name(variant), error))?;
        self.depth -= 1;
        Ok(())
    }

    fn serialize_seq(self, _: Option<usize>) -> Result<Compound<'a>, Error> {
        self.compound(1, None)
    }

    fn serialize_tuple(self, _: usize) -> Result<Compound<'a>, Error> {
        self.compound(1, None)
    }

    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Compound<'a>, Error> {
        self.compound(1, None)
    }

    /// `{"Variant": [..]}`: two levels.
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Compound<'a>, Error> {
        self.compound(2, Some(variant))
    }

    fn serialize_map(self, _: Option<usize>) -> Result<Compound<'a>, Error> {
        self.compound(1, None)
    }

    fn serialize_struct(self, name: &'static str, _: usize) -> Result<Compound<'a>, Error> {
        let token = match name {
            RAW_VALUE_TOKEN => Token::RawValue,
            NUMBER_TOKEN => Token::Number,
            _ => return self.compound(1, None),
        };
        Ok(Compound {
            walker: self,
            levels: 0,
            index: 0,
            variant: None,
            token: Some(token),
        })
    }

    /// `{"Variant": {..}}`: two levels.
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Compound<'a>, Error> {
        self.compound(2, Some(variant))
    }

    fn collect_str<T: Display + ?Sized>(self, value: &T) -> Result<(), Error> {
        display(self, value)
    }
}

/// serde_json's private structs, written as the JSON text (or number) they carry.
#[derive(Clone, Copy)]
enum Token {
    RawValue,
    Number,
}

/// An array, object or variant being walked.
struct Compound<'a> {
    walker: &'a mut Walker,
    /// Levels taken on entry, given back at `end`.
    levels: usize,
    /// Elements or entries walked so far.
    index: usize,
    /// The variant of a tuple or struct variant: the key of its wrapping object.
    variant: Option<&'static str>,
    token: Option<Token>,
}

impl Compound<'_> {
    #[inline]
    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        let depth = self.walker.depth;
        let index = self.index;
        value.serialize(&mut *self.walker).map_err(|error| {
            let error = self.walker.unwind(depth, Segment::Index(index), error);
            self.in_variant(error)
        })?;
        self.index += 1;
        Ok(())
    }

    #[inline]
    fn field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Result<(), Error> {
        if let Some(token) = self.token {
            return self.token_field(token, key, value);
        }
        let depth = self.walker.depth;
        value.serialize(&mut *self.walker).map_err(|error| {
            let error = self.walker.unwind(depth, Segment::Name(key), error);
            self.in_variant(error)
        })
    }

    /// A failure inside a tuple or struct variant is also inside its `{"Variant": ..}`.
    #[cold]
    fn in_variant(&mut self, error: Error) -> Error {
        match self.variant {
            Some(variant) => {
                let depth = self.walker.depth;
                self.walker.unwind(depth, Segment::Name(variant), error)
            }
            None => error,
        }
    }

    #[cold]
    fn token_field<T: Serialize + ?Sized>(
        &mut self,
        token: Token,
        key: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        let expected = match token {
            Token::RawValue => RAW_VALUE_TOKEN,
            Token::Number => NUMBER_TOKEN,
        };
        if key != expected {
            return Err(self.walker.fail(Problem::BadToken));
        }
        value.serialize(TokenText {
            walker: &mut *self.walker,
            token,
        })
    }

    #[inline]
    fn end(self) -> Result<(), Error> {
        self.walker.depth -= self.levels;
        Ok(())
    }
}

impl ser::SerializeSeq for Compound<'_> {
    type Ok = ();
    type Error = Error;

    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.element(value)
    }

    fn end(self) -> Result<(), Error> {
        Compound::end(self)
    }
}

impl ser::SerializeTuple for Compound<'_> {
    type Ok = ();
    type Error = Error;

    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.element(value)
    }

    fn end(self) -> Result<(), Error> {
        Compound::end(self)
    }
}

impl ser::SerializeTupleStruct for Compound<'_> {
    type Ok = ();
    type Error = Error;

    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.element(value)
    }

    fn end(self) -> Result<(), Error> {
        Compound::end(self)
    }
}

impl ser::SerializeTupleVariant for Compound<'_> {
    type Ok = ();
    type Error = Error;

    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.element(value)
    }

    fn end(self) -> Result<(), Error> {
        Compound::end(self)
    }
}

impl ser::SerializeMap for Compound<'_> {
    type Ok = ();
    type Error = Error;

    /// A bad key is reported at the map itself.
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Error> {
        key.serialize(KeyCheck(&mut *self.walker))
    }

    /// Without the key at hand (it was given to `serialize_key`), the path names the entry.
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        let depth = self.walker.depth;
        let index = self.index;
        value
            .serialize(&mut *self.walker)
            .map_err(|error| self.walker.unwind(depth, Segment::Entry(index), error))?;
        self.index += 1;
        Ok(())
    }

    fn serialize_entry<K: Serialize + ?Sized, V: Serialize + ?Sized>(
        &mut self,
        key: &K,
        value: &V,
    ) -> Result<(), Error> {
        key.serialize(KeyCheck(&mut *self.walker))?;
        let depth = self.walker.depth;
        let index = self.index;
        value.serialize(&mut *self.walker).map_err(|error| {
            let segment = key_segment(key, index);
            self.walker.unwind(depth, segment, error)
        })?;
        self.index += 1;
        Ok(())
    }

    fn end(self) -> Result<(), Error> {
        Compound::end(self)
    }
}

impl ser::SerializeStruct for Compound<'_> {
    type Ok = ();
    type Error = Error;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        self.field(key, value)
    }

    fn end(self) -> Result<(), Error> {
        Compound::end(self)
    }
}

impl ser::SerializeStructVariant for Compound<'_> {
    type Ok = ();
    type Error = Error;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        self.field(key, value)
    }

    fn end(self) -> Result<(), Error> {
        Compound::end(self)
    }
}

/// A map key, accepted where serde_json's key serializer accepts it; keys are strings in the
/// output, so they add no nesting.
struct KeyCheck<'a>(&'a mut Walker);

impl KeyCheck<'_> {
    #[cold]
    fn bad(self, found: &'static str) -> Error {
        self.0.fail(Problem::BadKey(found))
    }

    #[inline]
    fn float(self, value: f64) -> Result<(), Error> {
        if value.is_finite() {
            Ok(())
        } else {
            Err(self.0.fail(Problem::NonFiniteKey(value)))
        }
    }
}

impl ser::Serializer for KeyCheck<'_> {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = Impossible<(), Error>;
    type SerializeTuple = Impossible<(), Error>;
    type SerializeTupleStruct = Impossible<(), Error>;
    type SerializeTupleVariant = Impossible<(), Error>;
    type SerializeMap = Impossible<(), Error>;
    type SerializeStruct = Impossible<(), Error>;
    type SerializeStructVariant = Impossible<(), Error>;

    fn serialize_bool(self, _: bool) -> Result<(), Error> {
        Ok(())
    }

    fn serialize_i8(self, _: i8) -> Result<(), Error> {
        Ok(())
    }

    fn serialize_i16(self, _: i16) -> Result<(), Error> {
        Ok(())
    }

    fn serialize_i32(self, _: i32) -> Result<(), Error> {
        Ok(())
    }

    fn serialize_i64(self, _: i64) -> Result<(), Error> {
        Ok(())
    }

    fn serialize_i128(self, _: i128) -> Result<(), Error> {
        Ok(())
    }

    fn serialize_u8(self, _: u8) -> Result<(), Error> {
        Ok(())
    }

    fn serialize_u16(self, _: u16) -> Result<(), Error> {
        Ok(())
    }

    fn serialize_u32(self, _: u32) -> Result<(), Error> {
        Ok(())
    }

    fn serialize_u64(self, _: u64) -> Result<(), Error> {
        Ok(())
    }

    fn serialize_u128(self, _: u128) -> Result<(), Error> {
        Ok(())
    }

    fn serialize_f32(self, value: f32) -> Result<(), Error> {
        self.float(f64::from(value))
    }

    fn serialize_f64(self, value: f64) -> Result<(), Error> {
        self.float(value)
    }

    fn serialize_char(self, _: char) -> Result<(), Error> {
        Ok(())
    }

    fn serialize_str(self, _: &str) -> Result<(), Error> {
        Ok(())
    }

    fn serialize_bytes(self, _: &[u8]) -> Result<(), Error> {
        Err(self.bad("bytes"))
    }

    fn serialize_none(self) -> Result<(), Error> {
        Err(self.bad("None"))
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Error> {
        value.serialize(self)
    }

    fn serialize_unit(self) -> Result<(), Error> {
        Err(self.bad("a unit"))
    }

    fn serialize_unit_struct(self, _: &'static str) -> Result<(), Error> {
        Err(self.bad("a unit struct"))
    }

    fn serialize_unit_variant(self, _: &'static str, _: u32, _: &'static str) -> Result<(), Error> {
        Ok(())
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<(), Error> {
        Err(self.bad("a newtype variant"))
    }

    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, Error> {
        Err(self.bad("a sequence"))
    }

    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, Error> {
        Err(self.bad("a tuple"))
    }

    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, Error> {
        Err(self.bad("a tuple struct"))
    }

    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, Error> {
        Err(self.bad("a tuple variant"))
    }

    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, Error> {
        Err(self.bad("a map"))
    }

    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeStruct, Error> {
        Err(self.bad("a struct"))
    }

    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, Error> {
        Err(self.bad("a struct variant"))
    }

    fn collect_str<T: Display + ?Sized>(self, value: &T) -> Result<(), Error> {
        display(self.0, value)
    }
}

/// The one field of serde_json's private structs: a string of JSON text or of a number.
/// Raw JSON text was validated when it was made; only its nesting adds to the depth.
struct TokenText<'a> {
    walker: &'a mut Walker,
    token: Token,
}

impl TokenText<'_> {
    #[cold]
    fn bad(self) -> Error {
        self.walker.fail(Problem::BadToken)
    }
}

/// The deepest nesting of arrays and objects in JSON text.
fn text_depth(json: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &byte in json.as_bytes() {
        if in_string {
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

impl ser::Serializer for TokenText<'_> {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = Impossible<(), Error>;
    type SerializeTuple = Impossible<(), Error>;
    type SerializeTupleStruct = Impossible<(), Error>;
    type SerializeTupleVariant = Impossible<(), Error>;
    type SerializeMap = Impossible<(), Error>;
    type SerializeStruct = Impossible<(), Error>;
    type SerializeStructVariant = Impossible<(), Error>;

    fn serialize_str(self, text: &str) -> Result<(), Error> {
        match self.token {
            Token::Number => Ok(()),
            Token::RawValue => {
                let levels = text_depth(text);
                self.walker.enter(levels)?;
                self.walker.depth -= levels;
                Ok(())
            }
        }
    }

    fn serialize_bool(self, _: bool) -> Result<(), Error> {
        Err(self.bad())
    }

    fn serialize_i8(self, _: i8) -> Result<(), Error> {
        Err(self.bad())
    }

    fn serialize_i16(self, _: i16) -> Result<(), Error> {
        Err(self.bad())
    }

    fn serialize_i32(self, _: i32) -> Result<(), Error> {
        Err(self.bad())
    }

    fn serialize_i64(self, _: i64) -> Result<(), Error> {
        Err(self.bad())
    }

    fn serialize_u8(self, _: u8) -> Result<(), Error> {
        Err(self.bad())
    }

    fn serialize_u16(self, _: u16) -> Result<(), Error> {
        Err(self.bad())
    }

    fn serialize_u32(self, _: u32) -> Result<(), Error> {
        Err(self.bad())
    }

    fn serialize_u64(self, _: u64) -> Result<(), Error> {
        Err(self.bad())
    }

    fn serialize_f32(self, _: f32) -> Result<(), Error> {
        Err(self.bad())
    }

    fn serialize_f64(self, _: f64) -> Result<(), Error> {
        Err(self.bad())
    }

    fn serialize_char(self, _: char) -> Result<(), Error> {
        Err(self.bad())
    }

    fn serialize_bytes(self, _: &[u8]) -> Result<(), Error> {
        Err(self.bad())
    }

    fn serialize_none(self) -> Result<(), Error> {
        Err(self.bad())
    }

    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<(), Error> {
        Err(self.bad())
    }

    fn serialize_unit(self) -> Result<(), Error> {
        Err(self.bad())
    }

    fn serialize_unit_struct(self, _: &'static str) -> Result<(), Error> {
        Err(self.bad())
    }

    fn serialize_unit_variant(self, _: &'static str, _: u32, _: &'static str) -> Result<(), Error> {
        Err(self.bad())
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: &T,
    ) -> Result<(), Error> {
        Err(self.bad())
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<(), Error> {
        Err(self.bad())
    }

    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, Error> {
        Err(self.bad())
    }

    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, Error> {
        Err(self.bad())
    }

    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, Error> {
        Err(self.bad())
    }

    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, Error> {
        Err(self.bad())
    }

    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, Error> {
        Err(self.bad())
    }

    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeStruct, Error> {
        Err(self.bad())
    }

    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, Error> {
        Err(self.bad())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use serde::de::DeserializeOwned;
    use serde::ser::{Error as _, SerializeSeq as _, SerializeStruct as _};
    use serde::{Deserialize, Serializer};
    use serde_json::{Value, json};

    use super::*;

    fn message<T: Serialize + ?Sized>(value: &T) -> String {
        check_storable(value).unwrap_err().to_string()
    }

    /// Storable, written by serde_json and read back.
    fn assert_storable<T: Serialize + ?Sized>(value: &T) {
        check_storable(value).unwrap();
        let written = serde_json::to_string(value).unwrap();
        serde_json::from_str::<Value>(&written).unwrap();
    }

    fn reads_back<T: Serialize + DeserializeOwned>(value: &T) -> bool {
        serde_json::from_str::<T>(&serde_json::to_string(value).unwrap()).is_ok()
    }

    #[derive(Serialize)]
    struct Order {
        id: u64,
        total: Total,
    }

    #[derive(Serialize)]
    struct Total {
        items: Vec<f64>,
        by_currency: BTreeMap<String, f64>,
        discount: Option<f32>,
    }

    fn order(items: Vec<f64>, eur: f64, discount: Option<f32>) -> Order {
        Order {
            id: 7,
            total: Total {
                items,
                by_currency: BTreeMap::from([("eur".to_owned(), eur), ("usd".to_owned(), 1.0)]),
                discount,
            },
        }
    }

    #[derive(Serialize)]
    enum Shape {
        Empty,
        Scale(f64),
        Rect(f64, f64),
        Circle { radius: f64 },
    }

    #[test]
    fn finite_floats_and_ordinary_values_pass() {
        for float in [
            0.0,
            -0.0,
            1.5,
            f64::MAX,
            f64::MIN,
            f64::MIN_POSITIVE,
            5e-324,
        ] {
            assert_storable(&float);
        }
        assert_storable(&f32::MAX);
        assert_storable(&(u128::MAX, i128::MIN, true, 'c', "text", ()));
        assert_storable(&None::<f64>);
        assert_storable(&Some(2.5));
        assert_storable(&vec![Some(1), None]);
        assert_storable(&order(vec![1.0, 2.0, 3.0, 4.0], 9.5, Some(0.25)));
        assert_storable(&[Shape::Empty, Shape::Scale(2.0), Shape::Rect(1.0, 2.0)]);
        assert_storable(&Shape::Circle { radius: 1.0 });
        assert_storable(&HashMap::from([(1u32, vec![1.0]), (2, vec![])]));
        assert_storable(&json!({"a": [1, 2.5, null, {"b": "c"}], "d": {}}));
    }

    #[test]
    fn nan_and_infinities_are_refused_wherever_they_are() {
        // The reason: serde_json writes them as `null`, which does not read back as a float,
        // and which makes `Some(NAN)` indistinguishable from `None`.
        assert_eq!(serde_json::to_string(&f64::NAN).unwrap(), "null");
        assert_eq!(
            serde_json::to_string(&Some(f64::NAN)).unwrap(),
            serde_json::to_string(&None::<f64>).unwrap()
        );

        assert_eq!(message(&f64::NAN), "non-finite float NaN at the top level");
        assert_eq!(
            message(&f64::INFINITY),
            "non-finite float inf at the top level"
        );
        assert_eq!(
            message(&f32::NEG_INFINITY),
            "non-finite float -inf at the top level"
        );
        assert_eq!(message(&f32::NAN), "non-finite float NaN at the top level");
        assert_eq!(
            message(&vec![1.0, f64::INFINITY]),
            "non-finite float inf at [1]"
        );
        assert_eq!(
            message(&Some(f64::NAN)),
            "non-finite float NaN at the top level"
        );
        assert_eq!(
            message(&(1, [0.0, f64::NAN])),
            "non-finite float NaN at [1][1]"
        );
        assert_eq!(
            message(&order(vec![1.0, 2.0, 3.0, f64::NAN], 1.0, None)),
            "non-finite float NaN at .total.items[3]"
        );
        assert_eq!(
            message(&order(vec![], f64::NEG_INFINITY, None)),
            "non-finite float -inf at .total.by_currency.eur"
        );
        assert_eq!(
            message(&order(vec![], 1.0, Some(f32::NAN))),
            "non-finite float NaN at .total.discount"
        );
        assert_eq!(
            message(&HashMap::from([(7u32, f64::NAN)])),
            r#"non-finite float NaN at ["7"]"#
        );
        assert_eq!(
            message(&Shape::Scale(f64::NAN)),
            "non-finite float NaN at .Scale"
        );
        assert_eq!(
            message(&Shape::Rect(1.0, f64::INFINITY)),
            "non-finite float inf at .Rect[1]"
        );
        assert_eq!(
            message(&vec![Shape::Empty, Shape::Circle { radius: f64::NAN }]),
            "non-finite float NaN at [1].Circle.radius"
        );
    }

    fn nested_arrays(depth: usize) -> Value {
        (1..depth).fold(json!([]), |inner, _| Value::Array(vec![inner]))
    }

    fn nested_objects(depth: usize) -> Value {
        (1..depth).fold(json!({}), |inner, _| json!({ "a": inner }))
    }

    #[derive(Serialize, Deserialize)]
    enum Tree {
        Leaf,
        /// `{"Node": ..}`: one level.
        Node(Box<Tree>),
        /// `{"Pair": [.., n]}`: two levels.
        Pair(Box<Tree>, u8),
        /// `{"Branch": {"child": ..}}`: two levels.
        Branch {
            child: Box<Tree>,
        },
        /// A newtype struct in a newtype variant: one level.
        Wrapped(Wrap),
    }

    #[derive(Serialize, Deserialize)]
    struct Wrap(Box<Tree>);

    /// A tree whose JSON nests exactly `depth` levels, using every kind of variant.
    fn tree(depth: usize) -> Tree {
        let mut tree = Tree::Leaf;
        let mut levels = 0;
        while levels < depth {
            let child = Box::new(tree);
            let (next, added) = match (levels % 4, depth - levels) {
                (0, 2..) => (Tree::Pair(child, 1), 2),
                (1, 2..) => (Tree::Branch { child }, 2),
                (2, _) => (Tree::Wrapped(Wrap(child)), 1),
                _ => (Tree::Node(child), 1),
            };
            tree = next;
            levels += added;
        }
        tree
    }

    fn json_depth(value: &Value) -> usize {
        match value {
            Value::Array(items) => 1 + items.iter().map(json_depth).max().unwrap_or(0),
            Value::Object(entries) => 1 + entries.values().map(json_depth).max().unwrap_or(0),
            _ => 0,
        }
    }

    #[test]
    fn accepts_exactly_the_depth_serde_json_reads_back() {
        assert!(reads_back(&nested_arrays(MAX_DEPTH)));
        assert!(!reads_back(&nested_arrays(MAX_DEPTH + 1)));
        check_storable(&nested_arrays(MAX_DEPTH)).unwrap();
        assert_eq!(
            message(&nested_arrays(MAX_DEPTH + 1)),
            format!(
                "nested deeper than 127 levels at {}",
                "[0]".repeat(MAX_DEPTH)
            )
        );
        assert_eq!(
            message(&nested_objects(MAX_DEPTH + 1)),
            format!(
                "nested deeper than 127 levels at {}",
                ".a".repeat(MAX_DEPTH)
            )
        );

        for depth in 1..=140 {
            let arrays = nested_arrays(depth);
            let objects = nested_objects(depth);
            let tree = tree(depth);
            assert_eq!(json_depth(&serde_json::to_value(&tree).unwrap()), depth);
            for (what, storable, read) in [
                (
                    "arrays",
                    check_storable(&arrays).is_ok(),
                    reads_back(&arrays),
                ),
                (
                    "objects",
                    check_storable(&objects).is_ok(),
                    reads_back(&objects),
                ),
                ("tree", check_storable(&tree).is_ok(), reads_back(&tree)),
            ] {
                assert_eq!(storable, read, "{what} {depth} levels deep");
                assert_eq!(storable, depth <= MAX_DEPTH, "{what} {depth} levels deep");
            }
        }
    }

    #[test]
    fn empty_containers_and_bytes_count_as_levels() {
        struct Bytes;
        impl Serialize for Bytes {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_bytes(&[1, 2])
            }
        }
        let arrays = nested_arrays(MAX_DEPTH);
        // 127 levels of arrays: fine; one more empty array or object around them is not.
        check_storable(&arrays).unwrap();
        assert!(check_storable(&[&arrays]).is_err());
        assert!(check_storable(&json!({ "a": arrays })).is_err());
        assert!(check_storable(&[[(); 0]]).is_ok());
        // Bytes are written as an array of numbers: one level, under 126 or 127 sequences.
        struct Nest(usize);
        impl Serialize for Nest {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                if self.0 == 0 {
                    return Bytes.serialize(serializer);
                }
                let mut seq = serializer.serialize_seq(Some(1))?;
                seq.serialize_element(&Nest(self.0 - 1))?;
                seq.end()
            }
        }
        check_storable(&Nest(MAX_DEPTH - 1)).unwrap();
        assert!(reads_back_as_value(&Nest(MAX_DEPTH - 1)));
        assert!(check_storable(&Nest(MAX_DEPTH)).is_err());
        assert!(!reads_back_as_value(&Nest(MAX_DEPTH)));
    }

    fn reads_back_as_value<T: Serialize>(value: &T) -> bool {
        serde_json::from_str::<Value>(&serde_json::to_string(value).unwrap()).is_ok()
    }

    struct Failing;

    impl Serialize for Failing {
        fn serialize<S: Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(S::Error::custom("Failing cannot be serialized"))
        }
    }

    #[test]
    fn a_failing_serialize_impl_is_an_error() {
        assert_eq!(message(&Failing), "Failing cannot be serialized");
        // Unchanged, as serde_json reports it.
        let nested = (1, vec![Some(Failing)]);
        assert_eq!(
            message(&nested),
            serde_json::to_string(&nested).unwrap_err().to_string()
        );
    }

    #[test]
    fn a_problem_the_serialize_impl_swallows_is_still_an_error() {
        struct Swallowing;
        impl Serialize for Swallowing {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let mut seq = serializer.serialize_seq(Some(2))?;
                let _ = seq.serialize_element(&f64::NAN);
                seq.serialize_element(&1.0)?;
                seq.end()
            }
        }
        assert_eq!(message(&Swallowing), "non-finite float NaN at [0]");
    }

    /// A map with keys of any type, serialized like `HashMap` (through `collect_map`).
    struct Entries<K>(Vec<(K, u8)>);

    impl<K: Serialize> Serialize for Entries<K> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            serializer.collect_map(self.0.iter().map(|(key, value)| (key, value)))
        }
    }

    fn key_is_storable<K: Serialize>(key: K) -> bool {
        let map = Entries(vec![(key, 1)]);
        let storable = check_storable(&map).is_ok();
        assert_eq!(storable, serde_json::to_string(&map).is_ok());
        storable
    }

    #[test]
    fn non_string_map_keys_follow_serde_json() {
        #[derive(Serialize)]
        struct Id(u32);
        #[derive(Serialize)]
        struct Name<'a>(&'a str);
        #[derive(Serialize)]
        struct Unit;
        #[derive(Serialize)]
        struct Point {
            x: i32,
        }
        #[derive(Serialize)]
        enum Key {
            Plain,
            Newtype(u8),
            Tuple(u8, u8),
            Struct { x: u8 },
        }
        struct Bytes;
        impl Serialize for Bytes {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_bytes(b"k")
            }
        }

        assert!(key_is_storable("text"));
        assert!(key_is_storable('c'));
        assert!(key_is_storable(-1i8));
        assert!(key_is_storable(u64::MAX));
        assert!(key_is_storable(i128::MIN));
        assert!(key_is_storable(u128::MAX));
        assert!(key_is_storable(true));
        assert!(key_is_storable(Key::Plain));
        assert!(key_is_storable(Id(3)));
        assert!(key_is_storable(Name("n")));
        assert!(key_is_storable(Some(1)));
        // Finite floats are keys for serde_json 1.0.154 (written as strings); others are not.
        assert!(key_is_storable(1.5f64));
        assert!(key_is_storable(2.5f32));
        assert!(!key_is_storable(f64::NAN));
        assert!(!key_is_storable(f32::INFINITY));
        assert!(!key_is_storable(None::<u8>));
        assert!(!key_is_storable(()));
        assert!(!key_is_storable(Unit));
        assert!(!key_is_storable(Bytes));
        assert!(!key_is_storable((1, 2)));
        assert!(!key_is_storable(vec![1]));
        assert!(!key_is_storable(BTreeMap::from([(1, 2)])));
        assert!(!key_is_storable(Point { x: 1 }));
        assert!(!key_is_storable(Key::Newtype(1)));
        assert!(!key_is_storable(Key::Tuple(1, 2)));
        assert!(!key_is_storable(Key::Struct { x: 1 }));

        assert_eq!(
            message(&Entries(vec![(Point { x: 1 }, 1)])),
            "map key must be a string, number, bool or char, not a struct, at the top level"
        );
        assert_eq!(
            message(&BTreeMap::from([("prices", Entries(vec![(f64::NAN, 1)]))])),
            "non-finite float NaN as a map key at .prices"
        );
    }

    /// Stands in for `serde_json::value::RawValue`, which only exists with serde_json's
    /// `raw_value` feature: the same private struct name and field.
    struct Raw(&'static str);

    impl Serialize for Raw {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            let mut raw = serializer.serialize_struct(RAW_VALUE_TOKEN, 1)?;
            raw.serialize_field(RAW_VALUE_TOKEN, self.0)?;
            raw.end()
        }
    }

    #[test]
    fn raw_json_counts_the_levels_it_contains() {
        assert_eq!(text_depth(r#"[1, {"a": "]]}[[{"}, [[]]]"#), 3);
        assert_eq!(text_depth(r#""\"[""#), 0);
        let raw = Raw(r#"[{"a": "[[["}]"#);
        check_storable(&raw).unwrap();
        struct Around<'a>(usize, &'a Raw);
        impl Serialize for Around<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                if self.0 == 0 {
                    return self.1.serialize(serializer);
                }
                let mut seq = serializer.serialize_seq(Some(1))?;
                seq.serialize_element(&Around(self.0 - 1, self.1))?;
                seq.end()
            }
        }
        check_storable(&Around(MAX_DEPTH - 2, &raw)).unwrap();
        assert_eq!(
            message(&Around(MAX_DEPTH - 1, &raw)),
            format!(
                "nested deeper than 127 levels at {}",
                "[0]".repeat(MAX_DEPTH - 1)
            )
        );
    }
}
