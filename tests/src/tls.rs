//! A throw-away certificate authority made at test time, and leaf
//! certificates for `localhost` / `127.0.0.1` signed by it, so test servers
//! can talk TLS to each other (federation) without any system trust store.
//!
//! Everything is written as PEM files, which is what server configs take:
//! `ca.pem` (the CA certificate, to trust), `<stem>.crt.pem` (leaf then CA:
//! the chain a server presents) and `<stem>.key.pem` (the leaf's PKCS#8
//! private key).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A test certificate authority: its key stays in memory, its certificate
/// is in `ca.pem`.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    ca_pem: String,
    ca_pem_path: PathBuf,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa")
            .field("ca_pem_path", &self.ca_pem_path)
            .finish_non_exhaustive()
    }
}

/// A leaf certificate's files.
#[derive(Clone, Debug)]
pub struct LeafCert {
    /// `<stem>.crt.pem`: the leaf certificate followed by the CA certificate.
    pub cert_path: PathBuf,
    /// `<stem>.key.pem`: the leaf's private key, PKCS#8 PEM.
    pub key_path: PathBuf,
}

fn write(path: &Path, contents: &str) -> Result<()> {
    std::fs::write(path, contents).with_context(|| format!("cannot write {}", path.display()))
}

impl TestCa {
    /// A fresh CA; writes `ca.pem` into `dir`.
    pub fn generate(dir: &Path) -> Result<TestCa> {
        let mut params =
            CertificateParams::new(Vec::<String>::new()).context("CA certificate parameters")?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "Bellwire tests throw-away CA");
        params
            .distinguished_name
            .push(DnType::OrganizationName, "bellwire-tests");
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
        ];
        let key = KeyPair::generate().context("generating the CA key")?;
        let cert = params
            .self_signed(&key)
            .context("self-signing the CA certificate")?;
        let ca_pem = cert.pem();
        let ca_pem_path = dir.join("ca.pem");
        write(&ca_pem_path, &ca_pem)?;
        Ok(TestCa {
            issuer: Issuer::new(params, key),
            ca_pem,
            ca_pem_path,
        })
    }

    /// Where the CA certificate is (`<dir>/ca.pem`).
    pub fn ca_pem_path(&self) -> PathBuf {
        self.ca_pem_path.clone()
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A leaf certificate signed by this CA for the DNS name "localhost" and
    /// IP 127.0.0.1, written as `<stem>.crt.pem` (leaf then CA, a chain) and
    /// `<stem>.key.pem` (PKCS#8) in `dir`.
    pub fn issue_localhost(&self, dir: &Path, stem: &str) -> Result<LeafCert> {
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .context("leaf certificate parameters")?;
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().context("generating a leaf key")?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .context("signing the leaf certificate")?;
        let cert_path = dir.join(format!("{stem}.crt.pem"));
        let key_path = dir.join(format!("{stem}.key.pem"));
        write(&cert_path, &format!("{}{}", cert.pem(), self.ca_pem))?;
        write(&key_path, &key.serialize_pem())?;
        Ok(LeafCert {
            cert_path,
            key_path,
        })
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0,
/// read back, released). Another process may take it before it is used, so
/// use it at once.
pub fn free_port() -> u16 {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").expect("cannot bind 127.0.0.1:0 for a port");
    listener.local_addr().expect("bound socket address").port()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_pem_and_the_chain_is_leaf_then_ca() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::generate(dir.path()).unwrap();
        let ca_pem = std::fs::read_to_string(ca.ca_pem_path()).unwrap();
        assert!(
            ca_pem.starts_with("-----BEGIN CERTIFICATE-----"),
            "{ca_pem}"
        );
        assert_eq!(ca_pem.matches("BEGIN CERTIFICATE").count(), 1);
        reqwest::Certificate::from_pem(ca_pem.as_bytes()).expect("CA certificate parses");

        let leaf = ca.issue_localhost(dir.path(), "hs1").unwrap();
        assert_eq!(leaf.cert_path, dir.path().join("hs1.crt.pem"));
        assert_eq!(leaf.key_path, dir.path().join("hs1.key.pem"));
        let chain = std::fs::read_to_string(&leaf.cert_path).unwrap();
        let certs = reqwest::Certificate::from_pem_bundle(chain.as_bytes()).unwrap();
        assert_eq!(certs.len(), 2, "leaf then CA: {chain}");
        assert!(chain.ends_with(&ca_pem), "the chain must end with the CA");
        let key = std::fs::read_to_string(&leaf.key_path).unwrap();
        assert!(
            key.starts_with("-----BEGIN PRIVATE KEY-----"),
            "PKCS#8: {key}"
        );
        KeyPair::from_pem(&key).expect("the key parses back");
    }

    /// A real handshake: a rustls server presenting the chain, a reqwest
    /// client trusting only the test CA, over `localhost` and `127.0.0.1`.
    #[tokio::test]
    async fn a_client_trusting_the_ca_completes_a_handshake() {
        use std::sync::Arc;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tokio_rustls::rustls::{
            ServerConfig,
            pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
        };

        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::generate(dir.path()).unwrap();
        let leaf = ca.issue_localhost(dir.path(), "srv").unwrap();
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&leaf.cert_path)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(&leaf.key_path).unwrap();
        let config = ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            for _ in 0..2 {
                let (tcp, _) = listener.accept().await.unwrap();
                let mut tls = acceptor.accept(tcp).await.unwrap();
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = tls.read(&mut buf).await.unwrap();
                    assert!(n > 0, "client closed early");
                    got.extend_from_slice(&buf[..n]);
                }
                tls.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                )
                .await
                .unwrap();
                tls.shutdown().await.unwrap();
            }
        });

        let ca_cert = reqwest::Certificate::from_pem(ca.ca_pem().as_bytes()).unwrap();
        let client = reqwest::Client::builder()
            .tls_certs_only([ca_cert])
            .timeout(crate::WAIT)
            .build()
            .unwrap();
        for host in ["localhost", "127.0.0.1"] {
            let body = client
                .get(format!("https://{host}:{port}/"))
                .send()
                .await
                .unwrap_or_else(|e| panic!("TLS to {host}: {e:?}"))
                .text()
                .await
                .unwrap();
            assert_eq!(body, "ok");
        }
        tokio::time::timeout(crate::WAIT, server)
            .await
            .unwrap()
            .unwrap();
    }

    #[test]
    fn free_ports_can_be_bound() {
        let port = free_port();
        assert_ne!(port, 0);
        std::net::TcpListener::bind(("127.0.0.1", port)).expect("the port is free");
    }
}
