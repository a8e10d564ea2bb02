//! What locks and elections share, as etcd's concurrency package does it: a
//! contender owns the key `name/<lease id in hex>`, held by its lease;
//! contenders are served in the order their keys were created, and one's
//! turn comes when every older key under the name is gone.

use std::sync::Arc;

use crate::auth::Caller;
use crate::server::Node;
use crate::store::types::{
    Command, Compare, CompareResult, CompareTarget, DeleteArgs, KeyValue, KvError, Op, OpResult, PutArgs, RangeArgs,
    SortOrder, SortTarget, TxnArgs,
};

/// The end of the range holding every key that starts with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0] // every key from `prefix` on
}

pub fn contender_key(name: &[u8], lease: i64) -> Vec<u8> {
    let mut key = name.to_vec();
    key.push(b'/');
    key.extend_from_slice(format!("{lease:x}").as_bytes());
    key
}

fn get(key: &[u8]) -> RangeArgs {
    RangeArgs { key: key.to_vec(), ..Default::default() }
}

/// The compare "`key` is the one created at `revision`" (0: `key` does not exist).
pub fn created_at(key: &[u8], revision: i64) -> Compare {
    Compare { result: CompareResult::Equal, target: CompareTarget::Create(revision), key: key.to_vec(), range_end: Vec::new() }
}

/// Every contender under `name`, the newest or oldest first as `order` says.
fn contenders(name: &[u8], order: SortOrder) -> RangeArgs {
    let mut prefix = name.to_vec();
    prefix.push(b'/');
    RangeArgs {
        range_end: prefix_end(&prefix),
        key: prefix,
        sort_order: order,
        sort_target: SortTarget::Create,
        ..Default::default()
    }
}

/// The key as the contender's own: created now (with `value`, held by
/// `lease`) unless it exists already. Returns its state and the revision.
pub async fn claim(node: &Node, caller: &Caller, key: &[u8], lease: i64, value: &[u8]) -> Result<(KeyValue, i64), KvError> {
    let put = PutArgs { key: key.to_vec(), value: value.to_vec(), lease, ..Default::default() };
    let txn = TxnArgs {
        compare: vec![created_at(key, 0)],
        success: vec![Op::Put(put), Op::Range(get(key))],
        failure: vec![Op::Range(get(key))],
    };
    let result = node.write_as(caller, Command::Write(Op::Txn(txn))).await?;
    let Ok(OpResult::Txn { responses, .. }) = result.outcome else {
        return Err(KvError::Internal("claim: unexpected txn result".into()));
    };
    match responses.into_iter().last() {
        Some(OpResult::Range(r)) if !r.kvs.is_empty() => Ok((r.kvs.into_iter().next().expect("non-empty"), result.revision)),
        _ => Err(KvError::Internal("claim: the key vanished".into())),
    }
}

/// The oldest contender under `name`, if any (linearizable).
pub async fn first_contender(node: &Node, caller: &Caller, name: &[u8]) -> Result<Option<KeyValue>, KvError> {
    let args = RangeArgs { limit: 1, ..contenders(name, SortOrder::Ascend) };
    Ok(node.range(caller, args, false).await?.0.kvs.into_iter().next())
}

/// Waits until no key under `name/` created before `revision` remains.
pub async fn wait_for_turn(node: &Node, caller: &Caller, name: &[u8], revision: i64) -> Result<(), KvError> {
    let newest_ahead = RangeArgs { max_create_revision: revision - 1, limit: 1, ..contenders(name, SortOrder::Descend) };
    loop {
        let args = newest_ahead.clone();
        let Some(ahead) = node.range(caller, args, false).await?.0.kvs.into_iter().next() else { return Ok(()) };
        wait_gone(node, caller, &ahead).await?;
    }
}

/// Waits until `kv`'s key is deleted (or replaced by a newer one).
async fn wait_gone(node: &Node, caller: &Caller, kv: &KeyValue) -> Result<(), KvError> {
    let mut applied = node.hub.subscribe();
    loop {
        let (now, _) = node.range(caller, get(&kv.key), true).await?;
        if now.kvs.first().is_none_or(|k| k.create_revision != kv.create_revision) {
            return Ok(());
        }
        applied.changed().await.map_err(|_| KvError::Stopped)?;
    }
}

/// True when `key` still exists as created at `create_revision`.
pub async fn still_held(node: &Node, caller: &Caller, key: &[u8], create_revision: i64) -> Result<bool, KvError> {
    let (now, _) = node.range(caller, get(key), false).await?;
    Ok(now.kvs.first().is_some_and(|k| k.create_revision == create_revision))
}

/// Deletes `key` if it is still the one created at `create_revision`;
/// returns the revision.
pub async fn release(node: &Node, caller: &Caller, key: &[u8], create_revision: Option<i64>) -> Result<i64, KvError> {
    let delete = Op::Delete(DeleteArgs { key: key.to_vec(), ..Default::default() });
    let op = match create_revision {
        None => delete,
        Some(rev) => Op::Txn(TxnArgs {
            compare: vec![created_at(key, rev)],
            success: vec![delete],
            failure: Vec::new(),
        }),
    };
    Ok(node.write_as(caller, Command::Write(op)).await?.revision)
}

/// Releases a claimed key if the request that claimed it is dropped (the
/// client gave up waiting), as etcd's lock and campaign do.
pub struct ReleaseOnDrop {
    pub node: Arc<Node>,
    pub caller: Caller,
    pub key: Option<(Vec<u8>, i64)>,
}

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        if let Some((key, rev)) = self.key.take() {
            let (node, caller) = (self.node.clone(), self.caller.clone());
            tokio::spawn(async move {
                let _ = release(&node, &caller, &key, Some(rev)).await;
            });
        }
    }
}
