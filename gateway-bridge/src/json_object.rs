//! `Object<T>`: a struct read from a JSON object only. serde's derived structs also accept a
//! JSON array of their fields in order (`"stat": []` would be an empty stat), which neither
//! protocol allows.

use core::fmt;
use core::marker::PhantomData;
use serde::de::{value::MapAccessDeserializer, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Object<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = T;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(V(PhantomData)).map(Object)
    }
}

impl<T: Serialize> Serialize for Object<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<T> Object<T> {
    pub fn into_inner(self) -> T {
        self.0
    }
}

/// For `deserialize_with` on an `Option<T>` field that must be an object or `null`.
pub fn optional<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    Ok(Option::<Object<T>>::deserialize(d)?.map(Object::into_inner))
}

/// For `deserialize_with` on a `Vec<T>` field whose elements must be objects.
pub fn list<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    Ok(Vec::<Object<T>>::deserialize(d)?
        .into_iter()
        .map(Object::into_inner)
        .collect())
}

/// For `deserialize_with` on an `Option<Vec<T>>` field whose elements must be objects.
pub fn optional_list<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Vec<T>>, D::Error> {
    Ok(Option::<Vec<Object<T>>>::deserialize(d)?
        .map(|v| v.into_iter().map(Object::into_inner).collect()))
}

/// For `deserialize_with` on a required `T` field that must be an object.
pub fn required<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    Object::<T>::deserialize(d).map(Object::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize, Debug, PartialEq, Default)]
    struct A {
        #[serde(default)]
        a: u32,
    }

    #[test]
    fn objects_only() {
        assert_eq!(
            serde_json::from_str::<Object<A>>(r#"{"a":1}"#).unwrap().0,
            A { a: 1 }
        );
        assert_eq!(
            serde_json::from_str::<Object<A>>("{}").unwrap().0,
            A { a: 0 }
        );
        assert!(
            serde_json::from_str::<A>("[]").is_ok(),
            "serde alone takes arrays"
        );
        for bad in ["[]", "[1]", "1", "null", "\"a\""] {
            assert!(serde_json::from_str::<Object<A>>(bad).is_err(), "{bad}");
        }
    }
}
