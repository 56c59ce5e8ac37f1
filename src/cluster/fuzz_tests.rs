//! Property tests of the cluster message decoder: whatever bytes a peer sends, `decode`
//! returns an error or a message, never panics.

use std::collections::HashMap;

use proptest::prelude::*;

use super::{ClusterMsg, decode, encode};

fn heartbeat() -> Vec<u8> {
    encode(&ClusterMsg::Heartbeat {
        node_id: "ab".repeat(14),
        addr: "/ip4/127.0.0.1/tcp/1".to_string(),
        total: HashMap::from([("CPU".to_string(), 2.0)]),
        available: HashMap::from([("CPU".to_string(), 1.0)]),
        pending: Vec::new(),
        data: Some("127.0.0.1:2".to_string()),
        metrics: Box::default(),
    })
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..1024)) {
        let _ = decode(&data);
    }

    #[test]
    fn truncated_messages_are_errors(cut in 0usize..4096) {
        let full = heartbeat();
        prop_assert!(decode(&full).is_ok());
        let cut = cut % full.len();
        prop_assert!(decode(&full[..cut]).is_err());
    }

    #[test]
    fn corrupted_messages_never_panic(at in 0usize..4096, byte in any::<u8>()) {
        let mut m = heartbeat();
        let at = at % m.len();
        m[at] = byte;
        let _ = decode(&m);
    }

    #[test]
    fn oversized_length_prefixes_are_errors(n in 1u32 << 20..=u32::MAX) {
        // A map, an array and a string claiming far more entries than follow.
        for tag in [0xdfu8, 0xdd, 0xdb, 0xc6] {
            let mut m = vec![tag];
            m.extend_from_slice(&n.to_be_bytes());
            m.extend_from_slice(b"short");
            prop_assert!(decode(&m).is_err());
        }
    }
}
