//! `snapshot restore` and `snapshot status` on a file that `etcdctl snapshot
//! save` fetched from cairn (etcdutl's commands, for cairn's format).

use std::path::{Path, PathBuf};

use serde_json::json;

use super::output::{human_bytes, table};
use super::{CtlResult, WriteOut};
use crate::bootstrap::InitialCluster;
use crate::config::urls_parse_list;
use crate::store::backup::{backup_status, restore_backup, RestoredMembers};
use crate::store::log::LogDb;
use crate::store::memory::MemberBudget;

pub fn status(file: &str, write_out: WriteOut) -> CtlResult {
    let s = backup_status(Path::new(file))?;
    match write_out {
        WriteOut::Simple => println!("{:x}, {}, {}, {}", s.hash, s.revision, s.total_keys, human_bytes(s.total_size)),
        WriteOut::Table => print!(
            "{}",
            table(
                &["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"],
                &[vec![format!("{:x}", s.hash), s.revision.to_string(), s.total_keys.to_string(), human_bytes(s.total_size)]]
            )
        ),
        WriteOut::Json => println!(
            "{}",
            json!({"hash": s.hash, "revision": s.revision, "totalKey": s.total_keys, "totalSize": s.total_size})
        ),
    }
    Ok(())
}

/// etcd's restore flags, with etcdctl's defaults.
pub struct RestoreOptions {
    pub name: Option<String>,
    pub data_dir: Option<String>,
    pub wal_dir: Option<String>,
    pub initial_cluster: Option<String>,
    pub initial_cluster_token: Option<String>,
    pub initial_advertise_peer_urls: Option<String>,
}

/// Builds a fresh data dir holding the snapshot's keys, leases and
/// revisions, for a member of a new cluster that forms on its first start.
pub fn restore(file: &str, o: RestoreOptions) -> CtlResult {
    let name = o.name.unwrap_or_else(|| "default".into());
    let data_dir = PathBuf::from(o.data_dir.unwrap_or_else(|| format!("{name}.etcd")));
    if data_dir.exists() {
        return Err(format!("data-dir {:?} exists", data_dir.display().to_string()));
    }
    let peer_urls = urls_parse_list(&o.initial_advertise_peer_urls.unwrap_or_else(|| "http://localhost:2380".into()))
        .map_err(|e| format!("--initial-advertise-peer-urls: {e}"))?;
    let spec = o.initial_cluster.unwrap_or_else(|| "default=http://localhost:2380".into());
    let token = o.initial_cluster_token.unwrap_or_else(|| "etcd-cluster".into());
    let cluster = InitialCluster::from_static(&spec, &token).map_err(|e| e.to_string())?;
    let me = cluster.member(&name, &peer_urls).map_err(|e| e.to_string())?.id;

    let member_dir = data_dir.join("member");
    let wal_dir = o.wal_dir.map(PathBuf::from).unwrap_or_else(|| member_dir.join("wal"));
    let snap_dir = member_dir.join("snap");
    for dir in [&snap_dir, &wal_dir] {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let restored = restore_backup(Path::new(file), &snap_dir.join("db")).and_then(|(store, status)| {
        let members: RestoredMembers =
            cluster.members.iter().map(|m| (m.id, m.name.clone(), m.peer_urls.clone())).collect();
        store.set_restored_members(&members).map_err(|e| e.to_string())?;
        store.set_identity(me, cluster.cluster_id).map_err(|e| e.to_string())?;
        LogDb::open(&wal_dir, &MemberBudget::default().log).map_err(|e| format!("raft log in {}: {e}", wal_dir.display()))?;
        Ok(status)
    });
    let status = match restored {
        Ok(status) => status,
        Err(e) => {
            // Leave nothing half made behind.
            let _ = std::fs::remove_dir_all(&data_dir);
            return Err(e);
        }
    };
    println!(
        "restored snapshot {file} (revision {}, {} keys) into {}: member {name} ({me:x}) of a new cluster {:x}",
        status.revision,
        status.total_keys,
        data_dir.display(),
        cluster.cluster_id
    );
    Ok(())
}
