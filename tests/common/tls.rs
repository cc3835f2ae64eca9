//! Certificates made by the test (with the `openssl` command): a CA, a server certificate it
//! signed for 127.0.0.1 and localhost, one that expired, and another CA that signed nothing.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The test's public key infrastructure, in a temporary directory.
pub struct Pki {
    pub dir: tempfile::TempDir,
}

const SCRIPT: &str = r#"
set -euo pipefail
quiet() { "$@" >/dev/null 2>&1 || { echo "failed: $*" >&2; "$@"; exit 1; }; }
quiet openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 \
  -subj "/CN=kafka-stateful test CA"
quiet openssl req -x509 -newkey rsa:2048 -nodes -keyout other-ca.key -out other-ca.pem -days 2 \
  -subj "/CN=a CA nobody uses"
quiet openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj "/CN=localhost"
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >san.ext
quiet openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
  -out server.pem -days 2 -extfile san.ext
# An expired certificate: `openssl x509` cannot date one in the past, `openssl ca` can.
mkdir -p ca-db && : >ca-db/index.txt && echo 1000 >ca-db/serial
cat >ca.cnf <<'CNF'
[ca]
default_ca = test
[test]
database = ca-db/index.txt
serial = ca-db/serial
new_certs_dir = ca-db
default_md = sha256
policy = any
unique_subject = no
[any]
commonName = supplied
[server]
subjectAltName = DNS:localhost,IP:127.0.0.1
CNF
quiet openssl ca -batch -config ca.cnf -cert ca.pem -keyfile ca.key -in server.csr \
  -out expired.pem -startdate 20200101000000Z -enddate 20200102000000Z -extensions server -notext
"#;

impl Pki {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("bash")
            .args(["-c", SCRIPT])
            .current_dir(dir.path())
            .output()
            .expect("bash and openssl");
        assert!(
            out.status.success(),
            "making certificates: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `nisshi broker` arguments for a TLS-only listener with `cert` (a file of this PKI).
    pub fn broker_args(&self, cert: &str) -> Vec<String> {
        let arg = |p: &Path| p.to_string_lossy().into_owned();
        vec![
            "--cert".into(),
            arg(&self.path(cert)),
            "--key".into(),
            arg(&self.path("server.key")),
        ]
    }
}
