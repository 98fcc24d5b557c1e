//! Bounded decoding depth: a `serde::Deserializer` wrapper that refuses a payload nesting
//! deeper than [`MAX_DEPTH`] levels.
//!
//! Decoders recurse once per nested value, so a payload type that can contain itself (an
//! expression tree, `struct Node { children: Vec<Node> }`) lets a small body recurse deep
//! enough to overflow the worker's stack, which aborts the process: it cannot be caught like a
//! panic. bincode has no depth limit of its own, so both codecs decode through this wrapper
//! and share one limit (serde_json's own, which counts only brackets, is turned off).
//!
//! A level is a value that holds other values: a sequence, tuple, map, struct, enum variant,
//! `Some` or newtype struct. The wrapper counts the levels open on the way down and refuses
//! the one past the limit before the inner decoder reads it, so a refused decode uses the
//! stack of [`MAX_DEPTH`] levels whatever the body holds.

use serde::de::{self, DeserializeSeed, Deserializer, Visitor};
use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;

/// Most levels a payload may nest (serde_json's default recursion limit, for both codecs).
pub(crate) const MAX_DEPTH: usize = 128;

/// One decode's limit, and whether the decode was refused for it. The refusal travels through
/// the inner decoder as its own error type, so the flag is what tells it apart.
pub(crate) struct DepthLimit {
    max: usize,
    exceeded: Cell<bool>,
}

impl DepthLimit {
    pub(crate) fn new(max: usize) -> Self {
        DepthLimit {
            max,
            exceeded: Cell::new(false),
        }
    }

    /// Whether the decode failed because the payload nests too deep.
    pub(crate) fn exceeded(&self) -> bool {
        self.exceeded.get()
    }

    /// The seed that decodes a `T` within the limit.
    pub(crate) fn seed<T>(&self) -> Bounded<'_, PhantomData<T>> {
        Bounded {
            inner: PhantomData,
            depth: 0,
            limit: self,
        }
    }

    /// The depth of a level opened below `depth`, or the error refusing it.
    fn enter<E: de::Error>(&self, depth: usize) -> Result<usize, E> {
        if depth < self.max {
            return Ok(depth + 1);
        }
        self.exceeded.set(true);
        Err(E::custom(format_args!(
            "the payload nests deeper than {} levels",
            self.max
        )))
    }
}

/// A deserializer, visitor, seed or access (sequence, map, enum, variant) `depth` levels
/// down; everything it hands to nested values is wrapped again, one level deeper.
pub(crate) struct Bounded<'l, T> {
    inner: T,
    depth: usize,
    limit: &'l DepthLimit,
}

impl<'l, T> Bounded<'l, T> {
    fn wrap<U>(&self, inner: U) -> Bounded<'l, U> {
        Bounded {
            inner,
            depth: self.depth,
            limit: self.limit,
        }
    }
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Bounded<'_, S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<S::Value, D::Error> {
        let deserializer = self.wrap(deserializer);
        self.inner.deserialize(deserializer)
    }
}

macro_rules! forward_deserialize {
    ($($method:ident($($arg:ident: $ty:ty),*);)*) => {$(
        fn $method<V: Visitor<'de>>(self, $($arg: $ty,)* visitor: V) -> Result<V::Value, D::Error> {
            let visitor = self.wrap(visitor);
            self.inner.$method($($arg,)* visitor)
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Bounded<'_, D> {
    type Error = D::Error;

    forward_deserialize! {
        deserialize_any(); deserialize_bool(); deserialize_i8(); deserialize_i16();
        deserialize_i32(); deserialize_i64(); deserialize_i128(); deserialize_u8();
        deserialize_u16(); deserialize_u32(); deserialize_u64(); deserialize_u128();
        deserialize_f32(); deserialize_f64(); deserialize_char(); deserialize_str();
        deserialize_string(); deserialize_bytes(); deserialize_byte_buf(); deserialize_option();
        deserialize_unit(); deserialize_unit_struct(name: &'static str);
        deserialize_newtype_struct(name: &'static str); deserialize_seq();
        deserialize_tuple(len: usize); deserialize_tuple_struct(name: &'static str, len: usize);
        deserialize_map(); deserialize_struct(name: &'static str, fields: &'static [&'static str]);
        deserialize_enum(name: &'static str, variants: &'static [&'static str]);
        deserialize_identifier(); deserialize_ignored_any();
    }

    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

macro_rules! forward_visit {
    ($($method:ident($ty:ty);)*) => {$(
        fn $method<E: de::Error>(self, v: $ty) -> Result<V::Value, E> {
            self.inner.$method(v)
        }
    )*};
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Bounded<'_, V> {
    type Value = V::Value;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        self.inner.expecting(formatter)
    }

    forward_visit! {
        visit_bool(bool); visit_i8(i8); visit_i16(i16); visit_i32(i32); visit_i64(i64);
        visit_i128(i128); visit_u8(u8); visit_u16(u16); visit_u32(u32); visit_u64(u64);
        visit_u128(u128); visit_f32(f32); visit_f64(f64); visit_char(char); visit_str(&str);
        visit_borrowed_str(&'de str); visit_string(String); visit_bytes(&[u8]);
        visit_borrowed_bytes(&'de [u8]); visit_byte_buf(Vec<u8>);
    }

    fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
        self.inner.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
        self.inner.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<V::Value, D::Error> {
        let nested = self.nested(deserializer)?;
        self.inner.visit_some(nested)
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<V::Value, D::Error> {
        let nested = self.nested(deserializer)?;
        self.inner.visit_newtype_struct(nested)
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        let nested = self.nested(seq)?;
        self.inner.visit_seq(nested)
    }

    fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        let nested = self.nested(map)?;
        self.inner.visit_map(nested)
    }

    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<V::Value, A::Error> {
        let nested = self.nested(data)?;
        self.inner.visit_enum(nested)
    }
}

impl<'l, V> Bounded<'l, V> {
    /// Wraps what a visitor is handed to read a nested value with, one level deeper.
    fn nested<U, E: de::Error>(&self, inner: U) -> Result<Bounded<'l, U>, E> {
        Ok(Bounded {
            inner,
            depth: self.limit.enter(self.depth)?,
            limit: self.limit,
        })
    }
}

impl<'de, A: de::SeqAccess<'de>> de::SeqAccess<'de> for Bounded<'_, A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, A::Error> {
        let seed = self.wrap(seed);
        self.inner.next_element_seed(seed)
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

impl<'de, A: de::MapAccess<'de>> de::MapAccess<'de> for Bounded<'_, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        let seed = self.wrap(seed);
        self.inner.next_key_seed(seed)
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, A::Error> {
        let seed = self.wrap(seed);
        self.inner.next_value_seed(seed)
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

impl<'l, 'de, A: de::EnumAccess<'de>> de::EnumAccess<'de> for Bounded<'l, A> {
    type Error = A::Error;
    type Variant = Bounded<'l, A::Variant>;

    fn variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<(T::Value, Self::Variant), A::Error> {
        let seed = self.wrap(seed);
        let (value, variant) = self.inner.variant_seed(seed)?;
        let variant = Bounded {
            inner: variant,
            depth: self.depth,
            limit: self.limit,
        };
        Ok((value, variant))
    }
}

impl<'de, A: de::VariantAccess<'de>> de::VariantAccess<'de> for Bounded<'_, A> {
    type Error = A::Error;

    fn unit_variant(self) -> Result<(), A::Error> {
        self.inner.unit_variant()
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, A::Error> {
        let seed = self.wrap(seed);
        self.inner.newtype_variant_seed(seed)
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        let visitor = self.wrap(visitor);
        self.inner.tuple_variant(len, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        let visitor = self.wrap(visitor);
        self.inner.struct_variant(fields, visitor)
    }
}
