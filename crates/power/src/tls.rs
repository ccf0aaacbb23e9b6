//! TLS to a Redfish BMC: the host's roots by default, a site CA, a pinned
//! certificate, or (lab gear) anything.

use crate::PowerError;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, ring};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// Hex of `bytes`, `:`-separated as certificate tools print fingerprints.
pub fn hex_colons(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

/// Accepts exactly the certificate whose SHA-256 is `pin` (or, with no
/// pin, any certificate), and checks the handshake's signatures with it.
#[derive(Debug)]
struct Pinned {
    pin: Option<[u8; 32]>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(pin) = self.pin else { return Ok(ServerCertVerified::assertion()) };
        let got: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if got == pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "the BMC's certificate has SHA-256 {}, not the pinned {}",
                hex_colons(&got),
                hex_colons(&pin)
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// How the BMC's certificate is judged.
pub enum Trust<'a> {
    /// Chains to this CA (PEM), for the address's name.
    Ca(&'a str),
    /// Is exactly this certificate.
    Pinned([u8; 32]),
    /// Anything (lab gear).
    Any,
}

/// A rustls client configuration for `trust`.
pub fn client_config(trust: Trust<'_>) -> Result<ClientConfig, PowerError> {
    let provider = Arc::new(ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| PowerError::Config(format!("TLS: {e}")))?;
    let config = match trust {
        Trust::Ca(pem) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let cert = cert.map_err(|e| PowerError::Config(format!("bmc.ca_pem is not a PEM certificate: {e}")))?;
                roots.add(cert).map_err(|e| PowerError::Config(format!("bmc.ca_pem: {e}")))?;
            }
            if roots.is_empty() {
                return Err(PowerError::Config("bmc.ca_pem holds no certificate".into()));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::Pinned(pin) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Pinned { pin: Some(pin), provider }))
            .with_no_client_auth(),
        Trust::Any => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Pinned { pin: None, provider }))
            .with_no_client_auth(),
    };
    Ok(config)
}
