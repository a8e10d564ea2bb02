//! Certificates made the way etcd's installation guides make them: with
//! Debian's cfssl (the Kubernetes guide: a "kubernetes" profile for server
//! and client auth, RSA 2048, IP SANs) and with openssl (a SAN section).

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pair {
    pub fn cert(&self) -> &str {
        self.cert.to_str().unwrap()
    }

    pub fn key(&self) -> &str {
        self.key.to_str().unwrap()
    }
}

fn run(dir: &Path, program: &str, args: &[&str]) -> Vec<u8> {
    let out = Command::new(program)
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e} (scripts/setup-debian.sh installs golang-cfssl and openssl)"));
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// `cfssl gencert … | cfssljson -bare NAME`, in `dir`.
fn cfssl_bare(dir: &Path, name: &str, args: &[&str]) -> Pair {
    let json = run(dir, "cfssl", args);
    let mut child = Command::new("cfssljson")
        .current_dir(dir)
        .args(["-bare", name])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("cfssljson");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), &json).unwrap();
    assert!(child.wait().unwrap().success());
    Pair { cert: dir.join(format!("{name}.pem")), key: dir.join(format!("{name}-key.pem")) }
}

/// The guide's CA: `cfssl gencert -initca ca-csr.json | cfssljson -bare ca`,
/// with the ca-config.json whose "kubernetes" profile members are signed with.
pub fn cfssl_ca(dir: &Path) -> Pair {
    std::fs::write(
        dir.join("ca-config.json"),
        r#"{"signing":{"default":{"expiry":"8760h"},"profiles":{"kubernetes":{"usages":["signing","key encipherment","server auth","client auth"],"expiry":"8760h"}}}}"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("ca-csr.json"),
        r#"{"CN":"kubernetes","key":{"algo":"rsa","size":2048},"names":[{"C":"CN","ST":"BeiJing","L":"BeiJing","O":"k8s","OU":"System"}]}"#,
    )
    .unwrap();
    cfssl_bare(dir, "ca", &["gencert", "-initca", "ca-csr.json"])
}

/// The guide's etcd-csr.json for one node (hosts 127.0.0.1 and the node's
/// IP), signed with the "kubernetes" profile; files `<name>.pem`, `<name>-key.pem`.
pub fn cfssl_member(dir: &Path, ca: &Pair, name: &str, node_ip: &str) -> Pair {
    let csr = format!(
        r#"{{"CN":"etcd","hosts":["127.0.0.1","{node_ip}"],"key":{{"algo":"rsa","size":2048}},"names":[{{"C":"CN","ST":"BeiJing","L":"BeiJing","O":"k8s","OU":"System"}}]}}"#
    );
    let csr_file = format!("{name}-csr.json");
    std::fs::write(dir.join(&csr_file), csr).unwrap();
    let (ca_cert, ca_key) = (format!("-ca={}", ca.cert()), format!("-ca-key={}", ca.key()));
    let config = format!("-config={}", ca.cert.parent().unwrap().join("ca-config.json").display());
    cfssl_bare(dir, name, &["gencert", &ca_cert, &ca_key, &config, "-profile=kubernetes", &csr_file])
}

/// A self-signed openssl CA.
pub fn openssl_ca(dir: &Path, name: &str) -> Pair {
    let pair = Pair { cert: dir.join(format!("{name}.crt")), key: dir.join(format!("{name}.key")) };
    let subject = format!("/CN={name}");
    let args = ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "3650", "-subj", &subject];
    run(dir, "openssl", &[&args[..], &["-keyout", pair.key(), "-out", pair.cert()]].concat());
    pair
}

/// How an openssl certificate's key is made.
pub enum KeyKind {
    /// `openssl genrsa 2048`: PKCS#8 with OpenSSL 3.
    Rsa,
    /// `openssl ecparam -genkey`: a SEC1 "EC PRIVATE KEY".
    Ecdsa,
}

/// The seed's openssl commands: a key, a CSR with a SAN section, signed by
/// `ca` with the same SAN. `extra_ext` adds extensions (an intermediate CA's).
pub fn openssl_cert(dir: &Path, ca: &Pair, name: &str, cn: &str, san: &str, key: KeyKind, extra_ext: &str) -> Pair {
    let pair = Pair { cert: dir.join(format!("{name}.crt")), key: dir.join(format!("{name}.key")) };
    match key {
        KeyKind::Rsa => run(dir, "openssl", &["genrsa", "-out", pair.key(), "2048"]),
        KeyKind::Ecdsa => run(dir, "openssl", &["ecparam", "-genkey", "-name", "prime256v1", "-out", pair.key()]),
    };
    let ext = dir.join(format!("{name}.ext"));
    std::fs::write(&ext, format!("[SAN]\nsubjectAltName={san}\n{extra_ext}\n")).unwrap();
    let csr = dir.join(format!("{name}.csr"));
    let subject = format!("/C=CN/ST=BeiJing/O=Gmem Studio/CN={cn}");
    run(dir, "openssl", &["req", "-new", "-sha256", "-key", pair.key(), "-out", csr.to_str().unwrap(), "-subj", &subject]);
    run(dir, "openssl", &[
        "x509", "-req", "-sha256", "-in", csr.to_str().unwrap(), "-out", pair.cert(), "-CA", ca.cert(), "-CAkey", ca.key(),
        "-CAcreateserial", "-days", "3650", "-extensions", "SAN", "-extfile", ext.to_str().unwrap(),
    ]);
    pair
}

/// An `openssl ca` set-up for `ca` in `dir/<name>-ca`: its database and config.
fn ca_database(dir: &Path, name: &str) -> PathBuf {
    let db = dir.join(format!("{name}-ca"));
    std::fs::create_dir_all(&db).unwrap();
    std::fs::write(db.join("index.txt"), "").unwrap();
    std::fs::write(db.join("serial"), "1000\n").unwrap();
    let config = db.join("ca.cnf");
    std::fs::write(
        &config,
        format!(
            "[ca]\ndefault_ca=own\n[own]\ndir={}\ndatabase=$dir/index.txt\nnew_certs_dir=$dir\nserial=$dir/serial\n\
             default_md=sha256\ndefault_crl_days=30\npolicy=any\nx509_extensions=v3\n[any]\ncommonName=supplied\n\
             [v3]\nbasicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
            db.display()
        ),
    )
    .unwrap();
    config
}

/// A certificate from `ca` that expired in 2020 (`openssl ca` with fixed dates).
pub fn openssl_expired(dir: &Path, ca: &Pair, name: &str) -> Pair {
    let pair = Pair { cert: dir.join(format!("{name}.crt")), key: dir.join(format!("{name}.key")) };
    run(dir, "openssl", &["genrsa", "-out", pair.key(), "2048"]);
    let csr = dir.join(format!("{name}.csr"));
    run(dir, "openssl", &["req", "-new", "-key", pair.key(), "-out", csr.to_str().unwrap(), "-subj", &format!("/CN={name}")]);
    let config = ca_database(dir, name);
    run(dir, "openssl", &[
        "ca", "-batch", "-notext", "-config", config.to_str().unwrap(), "-cert", ca.cert(), "-keyfile", ca.key(),
        "-in", csr.to_str().unwrap(), "-out", pair.cert(), "-startdate", "20200101000000Z", "-enddate", "20200102000000Z",
    ]);
    pair
}

/// A CRL from `ca` (written to `path`) that revokes `revoked`, as
/// `openssl ca -revoke` and `-gencrl` make it.
pub fn openssl_crl(dir: &Path, ca: &Pair, revoked: &[&Pair], path: &Path) {
    let name = path.file_stem().unwrap().to_str().unwrap();
    let config = ca_database(dir, name);
    let ca_flags = ["-config", config.to_str().unwrap(), "-cert", ca.cert(), "-keyfile", ca.key()];
    for pair in revoked {
        run(dir, "openssl", &[&["ca"][..], &ca_flags, &["-revoke", pair.cert()]].concat());
    }
    run(dir, "openssl", &[&["ca"][..], &ca_flags, &["-gencrl", "-out", path.to_str().unwrap()]].concat());
}

/// The extensions that make an openssl certificate an intermediate CA.
pub const INTERMEDIATE_CA: &str = "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign";

/// etcdctl's TLS flags for a client certificate.
pub fn client_flags(ca: &Pair, client: &Pair) -> Vec<String> {
    vec![format!("--cacert={}", ca.cert()), format!("--cert={}", client.cert()), format!("--key={}", client.key())]
}

/// A member of its own one-member cluster whose client (and, with
/// `peer_tls`, peer) URL is https, serving `server`'s certificate.
pub fn tls_member(dir: &Path, name: &str, server: &Pair, extra: &[String], peer_tls: bool) -> (super::Member, String) {
    let (client, peer) = (super::free_port(), super::free_port());
    let scheme = if peer_tls { "https" } else { "http" };
    let peer_url = format!("{scheme}://127.0.0.1:{peer}");
    let client_url = format!("https://127.0.0.1:{client}");
    let mut member = super::Member::clustered(dir, name, client, peer, &format!("{name}=http://127.0.0.1:{peer}"));
    member.add_args(&[
        &format!("--listen-client-urls={client_url}"),
        &format!("--advertise-client-urls={client_url}"),
        &format!("--listen-peer-urls={peer_url}"),
        &format!("--initial-advertise-peer-urls={peer_url}"),
        &format!("--initial-cluster={name}={peer_url}"),
        &format!("--cert-file={}", server.cert()),
        &format!("--key-file={}", server.key()),
    ]);
    member.add_args(&extra.iter().map(String::as_str).collect::<Vec<_>>());
    member.client_url = client_url.clone();
    member.start();
    (member, client_url)
}
