//! Identifiers for everything the runtime names: objects, tasks, actors, nodes, jobs, workers
//! and placement groups.
//!
//! Every id is a 128-bit [`uuid::Uuid`]. New ids are cheap: a random 64-bit prefix chosen once per
//! process followed by a 64-bit counter, so two processes (or two nodes) never mint the same id
//! and minting one costs an atomic increment, not a system call.

use std::fmt;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

static PREFIX: OnceLock<u64> = OnceLock::new();
static COUNTER: AtomicU64 = AtomicU64::new(1);

fn fresh() -> Uuid {
    let prefix = *PREFIX.get_or_init(|| {
        // Version-4 bits so the ids look like ordinary random UUIDs to other tools.
        let r = Uuid::new_v4().as_u64_pair().0;
        (r & !0xf000) | 0x4000
    });
    Uuid::from_u64_pair(prefix, COUNTER.fetch_add(1, Ordering::Relaxed))
}

macro_rules! id_type {
    ($(#[$m:meta])* $name:ident, $short:literal) => {
        $(#[$m])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A new id, unique across processes.
            pub fn new() -> Self {
                Self(fresh())
            }
            /// The nil id (all zeros), used as "none" on the wire.
            pub const fn nil() -> Self {
                Self(Uuid::nil())
            }
            /// The id as 32 lowercase hex digits.
            pub fn hex(&self) -> String {
                self.0.simple().to_string()
            }
            /// Parses 32 hex digits (with or without dashes).
            pub fn parse(s: &str) -> Option<Self> {
                Uuid::parse_str(s).ok().map(Self)
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0.simple())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let s = self.0.simple().to_string();
                write!(f, concat!($short, "({})"), &s[s.len() - 12..])
            }
        }
    };
}

id_type!(
    /// Names one object in the object store: a task's return value or a `put`.
    ObjectId,
    "Object"
);
id_type!(
    /// Names one task (one submission; retries keep the id).
    TaskId,
    "Task"
);
id_type!(
    /// Names one actor for its whole life, across restarts.
    ActorId,
    "Actor"
);
id_type!(
    /// Names one node (one raylet and object store).
    NodeId,
    "Node"
);
id_type!(
    /// Names one job (one driver program).
    JobId,
    "Job"
);
id_type!(
    /// Names one worker (a thread or a process that runs user code).
    WorkerId,
    "Worker"
);
id_type!(
    /// Names one placement group.
    PlacementGroupId,
    "Pg"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_round_trip() {
        let a = ObjectId::new();
        let b = ObjectId::new();
        assert_ne!(a, b);
        assert_eq!(ObjectId::parse(&a.hex()), Some(a));
        let bytes = rmp_serde::to_vec(&a).expect("encode");
        let back: ObjectId = rmp_serde::from_slice(&bytes).expect("decode");
        assert_eq!(a, back);
    }
}
