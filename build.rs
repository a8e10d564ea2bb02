use std::path::PathBuf;
use std::process::Command;

const PROTOS: [&str; 4] = ["proto/peer.proto", "proto/v3lock.proto", "proto/v3election.proto", "proto/auth.proto"];

/// What the JSON gateway transcodes: every client-facing service, as a
/// descriptor set only (the KV, Watch, Lease, Cluster and Maintenance types
/// themselves come from the etcd-client crate).
const GATEWAY_PROTOS: [&str; 4] = ["proto/gateway/rpc.proto", "proto/auth.proto", "proto/v3lock.proto", "proto/v3election.proto"];

fn main() {
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // etcd's own messages come from the etcd-client crate.
        .extern_path(".etcdserverpb.ResponseHeader", "::etcd_client::proto::PbResponseHeader")
        .extern_path(".mvccpb.KeyValue", "::etcd_client::proto::PbKeyValue")
        .compile_protos(&PROTOS, &["proto"])
        .expect("compiling proto/*.proto (is protoc installed? apt-get install protobuf-compiler)");
    gateway_descriptors();
}

fn gateway_descriptors() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("gateway.bin");
    let protoc = std::env::var_os("PROTOC").unwrap_or_else(|| "protoc".into());
    let status = Command::new(protoc)
        .arg("-Iproto")
        .arg("--include_imports")
        .arg(format!("--descriptor_set_out={}", out.display()))
        .args(GATEWAY_PROTOS)
        .status()
        .expect("running protoc (apt-get install protobuf-compiler)");
    assert!(status.success(), "protoc could not build the gateway's descriptor set");
}
