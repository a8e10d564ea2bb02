const PROTOS: [&str; 4] = ["proto/peer.proto", "proto/v3lock.proto", "proto/v3election.proto", "proto/auth.proto"];

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
}
