//! Byte layouts of the state database's column families.
//!
//! - `latest`:  user key -> `Latest` (live keys only, without their values: a
//!   count or a page of keys walks only these small rows)
//! - `history`: revision(8) ++ sub(4) -> `Event` (every change, value included;
//!   serves values, old revisions and watch catch-up)
//! - `index`:   escaped user key ++ revision(8) -> sub(4) ++ tombstone(1) (finds a key's version at a revision)
//! - `meta`:    small named values (revision, compact revision, Raft applied state, members)
//! - `lease`:   `l` ++ id(8) -> `LeaseRecord`; `k` ++ id(8) ++ user key -> "" (the keys a lease holds)

use serde::{Deserialize, Serialize};

use super::types::{KeyValue, KvError};

/// A live key's metadata as `latest` keeps it; its value is in the history
/// row of its last change, (`mod_revision`, `sub`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Latest {
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub lease: i64,
    pub sub: u32,
}

impl Latest {
    /// The key-value without its value.
    pub fn into_kv(self, key: Vec<u8>) -> KeyValue {
        KeyValue {
            key,
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            value: Vec::new(),
            lease: self.lease,
        }
    }
}

/// A live key's value and metadata, without the key itself: what the command
/// being applied wrote (layout 1 kept it in `latest`, see `META_LAYOUT`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stored {
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub lease: i64,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
}

impl Stored {
    pub fn into_kv(self, key: Vec<u8>) -> KeyValue {
        KeyValue {
            key,
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            value: self.value,
            lease: self.lease,
        }
    }
}

/// One change in the history: the key's new state, or its deletion.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub kv: KeyValue,
    pub deleted: bool,
}

pub fn history_key(revision: i64, sub: u32) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..8].copy_from_slice(&(revision as u64).to_be_bytes());
    k[8..].copy_from_slice(&sub.to_be_bytes());
    k
}

/// A lease as the store keeps it: its granted TTL and, once checkpointed,
/// the TTL it had left then (what a restart resumes from).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub ttl: i64,
    pub remaining: Option<i64>,
}

pub const LEASE_PREFIX: &[u8] = b"l";
pub const LEASE_KEY_PREFIX: &[u8] = b"k";

pub fn lease_key(id: i64) -> Vec<u8> {
    [LEASE_PREFIX, &id.to_be_bytes()].concat()
}

/// A record of `what` that does not have the shape cairn writes.
fn corrupt(what: &str, raw: &[u8]) -> KvError {
    KvError::Internal(format!("corrupt record: {what} of {} bytes", raw.len()))
}

fn be_u64(bytes: Option<&[u8]>) -> Option<u64> {
    bytes?.try_into().ok().map(u64::from_be_bytes)
}

pub fn lease_id_of(lease_key: &[u8]) -> Result<i64, KvError> {
    be_u64(lease_key.get(1..9)).map(|id| id as i64).ok_or_else(|| corrupt("a lease key", lease_key))
}

/// Where the keys attached to lease `id` are listed.
pub fn lease_keys_prefix(id: i64) -> Vec<u8> {
    [LEASE_KEY_PREFIX, &id.to_be_bytes()].concat()
}

pub fn lease_attachment(id: i64, key: &[u8]) -> Vec<u8> {
    [LEASE_KEY_PREFIX, &id.to_be_bytes(), key].concat()
}

pub fn history_revision(history_key: &[u8]) -> Result<i64, KvError> {
    be_u64(history_key.get(..8)).map(|r| r as i64).ok_or_else(|| corrupt("a history key", history_key))
}

/// Escapes a user key so that it sorts like the key and no escaped key is a
/// prefix of another: 0x00 becomes 0x00 0xFF, and 0x00 0x01 terminates.
pub fn escape_key(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 2 + 8);
    for &b in key {
        out.push(b);
        if b == 0 {
            out.push(0xFF);
        }
    }
    out.extend_from_slice(&[0, 1]);
    out
}

pub fn index_key(key: &[u8], revision: i64) -> Vec<u8> {
    escaped_index_key(escape_key(key), revision)
}

/// The index key of an escaped user key's version at `revision`.
pub fn escaped_index_key(mut escaped: Vec<u8>, revision: i64) -> Vec<u8> {
    escaped.extend_from_slice(&(revision as u64).to_be_bytes());
    escaped
}

/// Sorts after every version of the escaped key and before the next key's.
pub fn past_versions(escaped: &[u8]) -> Vec<u8> {
    [escaped, &[0xFF; 8]].concat()
}

/// Splits an index key into the escaped user key and the revision.
pub fn split_index_key(k: &[u8]) -> Result<(&[u8], i64), KvError> {
    let split = k.len().checked_sub(8).ok_or_else(|| corrupt("an index key", k))?;
    let (esc, rev) = k.split_at(split);
    Ok((esc, be_u64(Some(rev)).ok_or_else(|| corrupt("an index key", k))? as i64))
}

pub fn index_value(sub: u32, tombstone: bool) -> [u8; 5] {
    let mut v = [0u8; 5];
    v[..4].copy_from_slice(&sub.to_be_bytes());
    v[4] = tombstone as u8;
    v
}

pub fn parse_index_value(v: &[u8]) -> Result<(u32, bool), KvError> {
    match v {
        [a, b, c, d, tombstone] => Ok((u32::from_be_bytes([*a, *b, *c, *d]), *tombstone == 1)),
        _ => Err(corrupt("an index entry", v)),
    }
}

/// A revision record: eight bytes, or it is corrupt.
pub fn decode_i64(raw: &[u8]) -> Result<i64, KvError> {
    raw.try_into().map(i64::from_be_bytes).map_err(|_| corrupt("a revision", raw))
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).expect("in-memory serialization cannot fail")
}

pub const META_REVISION: &[u8] = b"revision";
/// How the column families are laid out: absent in a store of layout 1,
/// whose `latest` rows held values (`Stored`); `LAYOUT` since.
pub const META_LAYOUT: &[u8] = b"layout";
pub const LAYOUT: i64 = 2;
pub const META_COMPACT_REVISION: &[u8] = b"compact_revision";
/// The compact revision whose unreachable versions are all removed.
pub const META_PHYSICALLY_COMPACTED: &[u8] = b"physically_compacted";
pub const META_RAFT_APPLIED: &[u8] = b"raft_applied";
pub const META_ENTRY_PROGRESS: &[u8] = b"entry_progress";
pub const META_IDENTITY: &[u8] = b"identity";
/// The new cluster a restored data dir forms on its first start.
pub const META_RESTORED_MEMBERS: &[u8] = b"restored_members";
/// Present while a snapshot from the leader replaces the state.
pub const META_INSTALLING: &[u8] = b"installing_snapshot";
pub const MEMBER_PREFIX: &[u8] = b"member/";
/// The auth state (users, roles, whether auth is on), as one record: it is
/// small, and every change to it is rare.
pub const META_AUTH: &[u8] = b"auth";

/// Members added as voters that serve as learners until they catch up.
pub const PENDING_VOTER_PREFIX: &[u8] = b"pending_voter/";
/// Raised alarms: `alarm/` ++ type(1) ++ member id(8).
pub const ALARM_PREFIX: &[u8] = b"alarm/";

pub fn alarm_key(member_id: u64, alarm: u8) -> Vec<u8> {
    id_key(&[ALARM_PREFIX, &[alarm]].concat(), member_id)
}

/// Members removed from the cluster: their ids never come back.
pub const REMOVED_PREFIX: &[u8] = b"removed/";

fn id_key(prefix: &[u8], id: u64) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

pub fn member_key(id: u64) -> Vec<u8> {
    id_key(MEMBER_PREFIX, id)
}

pub fn pending_voter_key(id: u64) -> Vec<u8> {
    id_key(PENDING_VOTER_PREFIX, id)
}

pub fn removed_key(id: u64) -> Vec<u8> {
    id_key(REMOVED_PREFIX, id)
}

/// The member id at the end of a key made by `id_key`.
pub fn id_of_key(k: &[u8]) -> u64 {
    k.len().checked_sub(8).and_then(|at| k[at..].try_into().ok()).map_or(0, u64::from_be_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

fn unescape_key(esc: &[u8]) -> Vec<u8> {
    let body = &esc[..esc.len() - 2];
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        out.push(body[i]);
        i += if body[i] == 0 { 2 } else { 1 };
    }
    out
}


    #[test]
    fn malformed_records_are_errors_not_panics() {
        for bad in [&b""[..], b"\x01", b"1234567"] {
            assert!(split_index_key(bad).is_err());
            assert!(history_revision(bad).is_err());
            assert!(lease_id_of(bad).is_err());
            assert!(parse_index_value(bad).is_err());
        }
        assert!(parse_index_value(b"123456").is_err());
        assert_eq!(parse_index_value(&index_value(7, true)).unwrap(), (7, true));
        assert_eq!(lease_id_of(&lease_key(-5)).unwrap(), -5);
        assert!(split_index_key(b"12345678").unwrap().0.is_empty());
    }

    #[test]
    fn escaping_preserves_order_and_is_prefix_free() {
        let keys: Vec<&[u8]> = vec![b"", b"\0", b"\0\0", b"\0\x01", b"a", b"a\0", b"a\0b", b"a\x01", b"ab", b"b"];
        for w in keys.windows(2) {
            assert!(escape_key(w[0]) < escape_key(w[1]), "{:?} < {:?}", w[0], w[1]);
            assert!(index_key(w[0], i64::MAX) < index_key(w[1], 0));
            let past = past_versions(&escape_key(w[0]));
            assert!(index_key(w[0], i64::MAX) < past && past < index_key(w[1], 0));
        }
        for k in keys {
            assert_eq!(unescape_key(&escape_key(k)), k);
            let ik = index_key(k, 42);
            let (esc, rev) = split_index_key(&ik).unwrap();
            assert_eq!((unescape_key(esc).as_slice(), rev), (k, 42));
        }
    }
}
