//! The verified-token cache: a client that reuses its token pays for the
//! signature check once.
//!
//! Guarantees:
//! - keyed by a 128-bit keyed hash of the token (SipHash-1-3 with its
//!   128-bit output, under a secret key drawn from the OS for each cache),
//!   never the token itself: the cache holds no bearer credential, and
//!   making another token hit a cached token's entry would take the secret
//!   key (with it unknown, a guess succeeds with odds of entries / 2^128).
//!   SipHash, not SHA-256: it is several times cheaper on the hot path, and
//!   one pass over the token gives all 128 bits;
//! - the map does not hash a key again: a key is already a secret-keyed
//!   hash, uniform and out of an attacker's control, so half of it picks
//!   the shard and the other half the bucket;
//! - only tokens that passed every check (signature, time, iss, aud,
//!   required claims) are stored; failures are never cached;
//! - an entry never outlives the token's `exp` (nor [`MAX_TTL`] seconds);
//!   a lookup at or after that time misses and removes it;
//! - bounded in entries and in bytes (each entry is charged its key, its
//!   value's own weight and a fixed overhead); inserting past a bound first
//!   drops expired entries, then the entries closest to expiry;
//! - revocation is not the cache's business: callers check the store on
//!   every request, hit or miss.
//!
//! The map is split into shards, each behind a `std::sync::Mutex` held only
//! for a lookup or an insert (never across an await).

use siphasher::sip128::{Hasher128, SipHasher13};
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher, RandomState};
use std::sync::{Arc, Mutex};

/// Entries live at most this long (seconds), even for tokens with a later
/// or no `exp`.
pub const MAX_TTL: i64 = 300;
/// Default bounds of one policy's cache.
pub const DEFAULT_MAX_ENTRIES: usize = 16_384;
pub const DEFAULT_MAX_BYTES: usize = 16 << 20;

const SHARDS: usize = 16;
/// Charged to every entry beyond its value: key, map slot, Arc header.
const ENTRY_OVERHEAD: usize = 96;

/// The cache key of a token: its 128-bit keyed hash, as two halves (the
/// first picks the shard, the second is the map's hash).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Key([u64; 2]);

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0[1]);
    }
}

/// The map's hasher: passes a [`Key`]'s half through.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        // Only `Key` is hashed here, through `write_u64`; fold anything
        // else rather than ignore it.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// SHA-256 of any bytes.
pub fn sha256(b: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, b);
    let mut k = [0u8; 32];
    k.copy_from_slice(d.as_ref());
    k
}

/// What a cached value reports about its own size.
pub trait Weigh {
    /// Heap bytes this value holds, roughly.
    fn weight(&self) -> usize;
}

struct Entry<T> {
    value: Arc<T>,
    expires_at: i64,
    bytes: usize,
}

struct Shard<T> {
    map: HashMap<Key, Entry<T>, BuildHasherDefault<KeyHasher>>,
    bytes: usize,
}

/// A bounded map from token hash to a verified token.
pub struct TokenCache<T> {
    shards: Box<[Mutex<Shard<T>>]>,
    max_entries: usize,
    max_bytes: usize,
    /// The SipHash key.
    secret: [u64; 2],
}

impl<T: Weigh> TokenCache<T> {
    /// A cache of at most `max_entries` entries and `max_bytes` bytes
    /// (each shard gets an even part of both).
    pub fn new(max_entries: usize, max_bytes: usize) -> TokenCache<T> {
        TokenCache {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        map: HashMap::default(),
                        bytes: 0,
                    })
                })
                .collect(),
            max_entries: (max_entries / SHARDS).max(1),
            max_bytes: (max_bytes / SHARDS).max(1),
            secret: {
                let r = random_u128();
                [r as u64, (r >> 64) as u64]
            },
        }
    }

    /// The cache key of a token (its bytes as sent: a hit needs the same
    /// bytes as a token that was verified, so they need no check of their
    /// own).
    pub fn key(&self, token: impl AsRef<[u8]>) -> Key {
        let mut h = SipHasher13::new_with_keys(self.secret[0], self.secret[1]);
        h.write(token.as_ref());
        let h = h.finish128();
        Key([h.h1, h.h2])
    }

    fn shard(&self, k: &Key) -> &Mutex<Shard<T>> {
        &self.shards[shard_of(k)]
    }

    /// The entry of `k`, if it is still live at `now` (seconds).
    pub fn get(&self, k: &Key, now: i64) -> Option<Arc<T>> {
        let mut s = self.shard(k).lock().unwrap_or_else(|p| p.into_inner());
        match s.map.get(k) {
            Some(e) if now < e.expires_at => Some(e.value.clone()),
            Some(_) => {
                if let Some(e) = s.map.remove(k) {
                    s.bytes -= e.bytes;
                }
                None
            }
            None => None,
        }
    }

    /// Stores `value` until `expires_at` (capped at now + [`MAX_TTL`]).
    /// A value already expired, or too big for a shard, is not stored.
    pub fn insert(&self, k: Key, value: Arc<T>, expires_at: i64, now: i64) {
        let expires_at = expires_at.min(now.saturating_add(MAX_TTL));
        if expires_at <= now {
            return;
        }
        let bytes = value.weight() + ENTRY_OVERHEAD;
        if bytes > self.max_bytes {
            return;
        }
        let mut guard = self.shard(&k).lock().unwrap_or_else(|p| p.into_inner());
        let s = &mut *guard;
        if let Some(old) = s.map.remove(&k) {
            s.bytes -= old.bytes;
        }
        if s.map.len() + 1 > self.max_entries || s.bytes + bytes > self.max_bytes {
            let before = s.map.len();
            s.map.retain(|_, e| e.expires_at > now);
            if s.map.len() != before {
                s.bytes = s.map.values().map(|e| e.bytes).sum();
            }
            while !s.map.is_empty()
                && (s.map.len() + 1 > self.max_entries || s.bytes + bytes > self.max_bytes)
            {
                let soonest = s
                    .map
                    .iter()
                    .min_by_key(|(_, e)| e.expires_at)
                    .map(|(k, _)| *k);
                match soonest.and_then(|k| s.map.remove(&k)) {
                    Some(e) => s.bytes -= e.bytes,
                    None => break,
                }
            }
        }
        s.bytes += bytes;
        s.map.insert(
            k,
            Entry {
                value,
                expires_at,
                bytes,
            },
        );
    }

    /// Entries and bytes held now (expired entries not yet dropped count).
    pub fn usage(&self) -> (usize, usize) {
        self.shards.iter().fold((0, 0), |(n, b), s| {
            let s = s.lock().unwrap_or_else(|p| p.into_inner());
            (n + s.map.len(), b + s.bytes)
        })
    }
}

fn shard_of(k: &Key) -> usize {
    (k.0[0] >> 32) as usize % SHARDS
}

/// 128 random bits from the OS (ring), or from std's per-process hash keys
/// should the OS source fail.
fn random_u128() -> u128 {
    let mut b = [0u8; 16];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).is_ok() {
        return u128::from_le_bytes(b);
    }
    let s = RandomState::new();
    (u128::from(s.hash_one(1u8)) << 64) | u128::from(s.hash_one(2u8))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct V(usize);
    impl Weigh for V {
        fn weight(&self) -> usize {
            self.0
        }
    }

    #[test]
    fn keys_differ_per_token_and_per_cache() {
        let c: TokenCache<V> = TokenCache::new(100, 1 << 20);
        let d: TokenCache<V> = TokenCache::new(100, 1 << 20);
        assert_eq!(c.key("a.b.c"), c.key("a.b.c"));
        assert_ne!(c.key("a.b.c"), c.key("a.b.d"));
        assert_ne!(c.key("a.b.c"), d.key("a.b.c"));
        assert_ne!(c.key("x").0[0], c.key("x").0[1]);
    }

    #[test]
    fn entries_expire_at_exp() {
        let c = TokenCache::new(100, 1 << 20);
        let k = c.key("t1");
        c.insert(k, Arc::new(V(1)), 1010, 1000);
        assert!(c.get(&k, 1009).is_some());
        assert!(c.get(&k, 1010).is_none());
        assert_eq!(c.usage().0, 0);
        c.insert(k, Arc::new(V(1)), 1000, 1000);
        assert!(c.get(&k, 1000).is_none());
        // Capped at MAX_TTL.
        c.insert(k, Arc::new(V(1)), i64::MAX, 1000);
        assert!(c.get(&k, 1000 + MAX_TTL - 1).is_some());
        assert!(c.get(&k, 1000 + MAX_TTL).is_none());
    }

    #[test]
    fn bounded_in_entries_and_bytes() {
        let c = TokenCache::new(SHARDS * 4, SHARDS * 10_000);
        for i in 0..1000 {
            c.insert(c.key(format!("t{i}")), Arc::new(V(10)), 2000 + i, 1000);
        }
        let (n, _) = c.usage();
        assert!(n <= SHARDS * 4, "{n}");
        let c = TokenCache::new(1 << 20, SHARDS * 1000);
        for i in 0..1000 {
            c.insert(c.key(format!("t{i}")), Arc::new(V(400)), 2000, 1000);
        }
        let (_, b) = c.usage();
        assert!(b <= SHARDS * 1000, "{b}");
        // Too big for any shard: not stored.
        let c = TokenCache::new(100, SHARDS * 100);
        c.insert(c.key("big"), Arc::new(V(1000)), 2000, 1000);
        assert!(c.get(&c.key("big"), 1001).is_none());
    }

    #[test]
    fn eviction_prefers_the_soonest_to_expire() {
        let c = TokenCache::new(SHARDS * 2, 1 << 20); // two entries per shard
                                                      // Three keys of one shard.
        let a = c.key("a");
        let mut same = (0..)
            .map(|i| c.key(format!("b{i}")))
            .filter(|k| shard_of(k) == shard_of(&a));
        let (b, d) = (same.next().unwrap(), same.next().unwrap());
        c.insert(a, Arc::new(V(1)), 1500, 1000);
        c.insert(b, Arc::new(V(1)), 1100, 1000);
        c.insert(d, Arc::new(V(1)), 1200, 1000);
        assert!(c.get(&a, 1001).is_some());
        assert!(c.get(&b, 1001).is_none());
        assert!(c.get(&d, 1001).is_some());
    }
}
