//! TLS for the API. On first start Plinth creates its own certificate
//! authority in `<data-dir>/tls/` (`ca.pem`, and `ca-key.pem` with mode 0600)
//! and, at every start, a server certificate signed by it for the names the
//! server answers to. Clients (the CLI, agents) trust `ca.pem`. An operator
//! can bring their own certificate with `--tls-cert/--tls-key` instead.

use crate::auth::write_secret_file;
use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType};
use rustls::ServerConfig;
use rustls::crypto::ring;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// TLS set-up failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

fn file_err(path: &Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::File { path: path.to_owned(), message: e.to_string() }
}

fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "Plinth local CA");
    dn.push(DnType::OrganizationName, "Plinth");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    p.not_before = rcgen::date_time_ymd(2024, 1, 1);
    p.not_after = rcgen::date_time_ymd(2049, 1, 1);
    p
}

/// Paths of the generated material in a data dir.
pub struct TlsFiles {
    /// The CA certificate clients trust.
    pub ca_cert: PathBuf,
    /// The server certificate chain.
    pub cert: PathBuf,
    /// The server key.
    pub key: PathBuf,
}

/// Ensures the local CA exists and issues a fresh server certificate for
/// `names` (DNS names or IP addresses). Returns the file paths.
pub fn ensure_local_ca(data_dir: &Path, names: &[String]) -> Result<TlsFiles, TlsError> {
    let dir = data_dir.join("tls");
    // Owner-only, whatever the umask.
    plinth_secrets::ensure_dir(&dir, 0o700).map_err(|e| file_err(&dir, e))?;
    let ca_cert_path = dir.join("ca.pem");
    let ca_key_path = dir.join("ca-key.pem");
    let ca_key = if ca_key_path.exists() && ca_cert_path.exists() {
        // A CA key others could read would let them sign for this server.
        plinth_secrets::check_private(&ca_key_path).map_err(|e| file_err(&ca_key_path, e))?;
        let pem = std::fs::read_to_string(&ca_key_path).map_err(|e| file_err(&ca_key_path, e))?;
        KeyPair::from_pem(&pem).map_err(|e| file_err(&ca_key_path, e))?
    } else {
        let key = KeyPair::generate()?;
        let cert = ca_params().self_signed(&key)?;
        write_secret_file(&ca_key_path, &key.serialize_pem()).map_err(|e| file_err(&ca_key_path, e))?;
        std::fs::write(&ca_cert_path, cert.pem()).map_err(|e| file_err(&ca_cert_path, e))?;
        tracing::info!(path = %ca_cert_path.display(), "created the local certificate authority; clients trust this file");
        key
    };
    // Same name and key as the stored CA certificate, so what it signs
    // chains to that certificate.
    let issuer = ca_params().self_signed(&ca_key)?;

    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "Plinth API");
    params.distinguished_name = dn;
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2049, 1, 1);
    params.subject_alt_names = names
        .iter()
        .filter_map(|n| match n.parse::<std::net::IpAddr>() {
            Ok(ip) => Some(SanType::IpAddress(ip)),
            Err(_) => n.clone().try_into().ok().map(SanType::DnsName),
        })
        .collect();
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer, &ca_key)?;
    let cert_path = dir.join("server.pem");
    let key_path = dir.join("server-key.pem");
    let ca_pem = std::fs::read_to_string(&ca_cert_path).map_err(|e| file_err(&ca_cert_path, e))?;
    std::fs::write(&cert_path, format!("{}{}", cert.pem(), ca_pem)).map_err(|e| file_err(&cert_path, e))?;
    write_secret_file(&key_path, &key.serialize_pem()).map_err(|e| file_err(&key_path, e))?;
    Ok(TlsFiles { ca_cert: ca_cert_path, cert: cert_path, key: key_path })
}

/// A rustls server configuration (TLS 1.2 and 1.3, ring's default cipher
/// suites) from PEM files.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file_err(cert, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(cert, e))?;
    if certs.is_empty() {
        return Err(file_err(cert, "no certificate in the file"));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| file_err(key, e))?;
    let mut config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
