//! Value encoding: MessagePack (rmp-serde) for every value that crosses a task, actor or process
//! boundary, plus the bookkeeping that finds the `ObjectRef`s nested inside a value while it is
//! encoded, so that they become dependencies and stay alive as long as the value does.

use std::cell::RefCell;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::RawRef;
use crate::error::Error;
use crate::ids::ObjectId;

thread_local! {
    static NESTED: RefCell<Option<Vec<RawRef>>> = const { RefCell::new(None) };
}

/// An encoded value and the object ids found inside it.
///
/// It holds a handle to every nested reference (`pins`), so the referenced objects stay alive
/// while the encoded value is on its way, even after the value it came from is dropped; whoever
/// stores it (the object table, a task's pins) takes references of its own first.
#[derive(Debug, Clone, Default)]
pub struct Encoded {
    /// The MessagePack bytes.
    pub data: Bytes,
    /// Ids of the `ObjectRef`s nested in the value, in encounter order.
    pub nested: Vec<ObjectId>,
    /// Handles keeping the nested objects alive until the value is stored.
    pub pins: Vec<RawRef>,
}

/// Encodes `value`, collecting the ids of `ObjectRef`s nested in it.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Encoded, Error> {
    let outer = NESTED.with(|n| n.borrow_mut().replace(Vec::new()));
    let mut w = crate::store::buffers::PooledWriter::default();
    let res = rmp_serde::encode::write(&mut w, value).map(|()| w.into_vec());
    let pins = NESTED.with(|n| {
        let mut slot = n.borrow_mut();
        let found = slot.take().unwrap_or_default();
        *slot = outer;
        found
    });
    let data = res.map_err(|e| Error::Serialization(e.to_string()))?;
    Ok(Encoded {
        data: Bytes::from(data),
        nested: pins.iter().map(RawRef::id).collect(),
        pins,
    })
}

/// Decodes a value encoded by [`encode`].
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    rmp_serde::from_slice(bytes).map_err(|e| Error::Serialization(e.to_string()))
}

/// Called by `ObjectRef`'s `Serialize` impl: records a nested reference if an [`encode`] is
/// running on this thread.
pub(crate) fn note_nested(r: &RawRef) {
    NESTED.with(|n| {
        if let Some(v) = n.borrow_mut().as_mut() {
            v.push(r.clone());
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_no_nested_for_plain_values() {
        let e = encode(&(1u32, "x".to_string(), vec![1.5f64])).expect("encode");
        assert!(e.nested.is_empty());
        let back: (u32, String, Vec<f64>) = decode(&e.data).expect("decode");
        assert_eq!(back, (1, "x".to_string(), vec![1.5]));
    }

    #[test]
    fn decode_garbage_is_an_error() {
        let r: Result<(u32, String), _> = decode(&[0xc1, 0xff, 0x00]);
        assert!(matches!(r, Err(Error::Serialization(_))));
    }
}
