//! TLS servers' configuration (the API's HTTPS, TURN over TLS): rustls from the PEM files named
//! in `api.tls` or `turn.tls`.
//!
//! rustls with the *ring* provider, the one the API client (reqwest) already links, so the binary
//! carries one crypto library. Errors name the config key and the file, because they surface at
//! start or on a SIGHUP reload where the operator needs to know which file to fix.

use std::{path::Path, sync::Arc};

use anyhow::{Context, Result, bail};
use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};

use crate::config::TlsConfig;

/// Reads the certificate chain and key and builds the server configuration (TLS 1.2 and 1.3,
/// HTTP/2 and HTTP/1.1 offered by ALPN).
pub fn server_config(tls: &TlsConfig) -> Result<Arc<ServerConfig>> {
    files_config(tls, "api.tls", vec![b"h2".to_vec(), b"http/1.1".to_vec()])
}

/// The server configuration from the PEM files in `tls`, errors naming the config key
/// `section` (`api.tls`, `turn.tls`), offering `alpn` (none: whatever the client asks).
pub fn files_config(
    tls: &TlsConfig,
    section: &str,
    alpn: Vec<Vec<u8>>,
) -> Result<Arc<ServerConfig>> {
    let chain = certificates(&format!("{section}.cert"), &tls.cert)?;
    let key = private_key(&format!("{section}.key"), &tls.key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .with_context(|| {
            format!(
                "{section}: the key in {} does not fit the certificate in {}",
                tls.key.display(),
                tls.cert.display()
            )
        })?;
    config.alpn_protocols = alpn;
    Ok(Arc::new(config))
}

fn read(key: &str, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("{key}: reading {}", path.display()))
}

fn certificates(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = read(key, path)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{key}: {} is not valid PEM", path.display()))?;
    if chain.is_empty() {
        bail!("{key}: {} holds no CERTIFICATE block", path.display());
    }
    Ok(chain)
}

fn private_key(key: &str, path: &Path) -> Result<PrivateKeyDer<'static>> {
    let pem = read(key, path)?;
    PrivateKeyDer::from_pem_slice(&pem).with_context(|| {
        format!(
            "{key}: {} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)",
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str) -> TlsConfig {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let tls = TlsConfig {
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
        };
        std::fs::write(&tls.cert, cert.cert.pem()).unwrap();
        std::fs::write(&tls.key, cert.signing_key.serialize_pem()).unwrap();
        tls
    }

    #[test]
    fn a_certificate_and_its_key_load() {
        let dir = tempdir();
        let config = server_config(&write_pair(&dir, "a")).unwrap();
        assert_eq!(config.alpn_protocols[0], b"h2");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn bad_files_are_named_with_their_key() {
        let dir = tempdir();
        let a = write_pair(&dir, "a");
        let b = write_pair(&dir, "b");
        let missing = TlsConfig {
            cert: dir.join("nope.crt"),
            key: a.key.clone(),
        };
        let e = format!("{:#}", server_config(&missing).unwrap_err());
        assert!(e.starts_with("api.tls.cert: reading"), "{e}");

        let swapped = TlsConfig {
            cert: a.key.clone(),
            key: a.cert.clone(),
        };
        let e = format!("{:#}", server_config(&swapped).unwrap_err());
        assert!(
            e.contains("api.tls.cert") && e.contains("no CERTIFICATE"),
            "{e}"
        );

        let mut no_key = a.clone();
        no_key.key = a.cert.clone();
        let e = format!("{:#}", server_config(&no_key).unwrap_err());
        assert!(e.starts_with("api.tls.key:"), "{e}");

        let mismatched = TlsConfig {
            cert: a.cert.clone(),
            key: b.key.clone(),
        };
        let e = format!("{:#}", server_config(&mismatched).unwrap_err());
        assert!(e.contains("does not fit"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn tempdir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "relay-tls-{}-{:x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
