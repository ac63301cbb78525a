//! Completed non-INVITE server transactions over UDP (RFC 3261 §17.2.2): for
//! Timer J (64×T1, 32 s by default) they only answer retransmitted requests with the
//! final response. At thousands of requests per second that is most transactions,
//! so they leave the main table for this compact one: a 128-bit fingerprint of the
//! key, the response and where it went. Timer J is the same for all of them, so
//! expiry is a FIFO, not a heap.

use super::key::ServerKey;
use super::TxId;
use crate::sip::Remote;
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::time::Instant;

#[derive(Debug)]
pub(super) struct Entry {
    pub tx: TxId,
    pub response: Bytes,
    pub remote: Remote,
}

#[derive(Debug, Default)]
pub(super) struct Absorber {
    /// Two independently keyed hashers make the fingerprint (collisions ~2^-128).
    hashers: (RandomState, RandomState),
    map: HashMap<u128, Entry>,
    /// (Timer J deadline, fingerprint), in deadline order.
    fifo: VecDeque<(Instant, u128)>,
}

impl Absorber {
    pub fn fingerprint(&self, key: &ServerKey) -> u128 {
        let hi = self.hashers.0.hash_one(key);
        let lo = self.hashers.1.hash_one(key);
        (u128::from(hi) << 64) | u128::from(lo)
    }

    pub fn insert(&mut self, fingerprint: u128, until: Instant, entry: Entry) {
        self.map.insert(fingerprint, entry);
        self.fifo.push_back((until, fingerprint));
    }

    pub fn get(&self, fingerprint: u128) -> Option<&Entry> {
        self.map.get(&fingerprint)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether a transaction is here (a scan: for diagnostics and tests only).
    pub fn contains_tx(&self, tx: TxId) -> bool {
        self.map.values().any(|e| e.tx == tx)
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.fifo.front().map(|(at, _)| *at)
    }

    /// Removes every entry whose Timer J fired; returns their transaction ids.
    pub fn expire(&mut self, now: Instant) -> Vec<TxId> {
        let mut gone = Vec::new();
        while let Some(&(at, fp)) = self.fifo.front() {
            if at > now {
                break;
            }
            self.fifo.pop_front();
            if let Some(e) = self.map.remove(&fp) {
                gone.push(e.tx);
            }
        }
        // After a burst, give the room back (the tables never shrink by themselves).
        if self.map.capacity() > 4096 && self.map.len() < self.map.capacity() / 4 {
            self.map.shrink_to(self.map.len() * 2);
            self.fifo.shrink_to(self.fifo.len() * 2);
        }
        gone
    }
}
