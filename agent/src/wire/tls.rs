//! TLS 1.3 between appliances, mutual, with pinned certificate
//! fingerprints instead of a CA: each side trusts exactly the SHA-256
//! digests in its config and logs the digest it saw when it refuses one.

use crate::config::format_fingerprint;
use crate::durable::{replace_file, FileMode};
use crate::io_failure::Doing;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, Error as TlsError, SignatureScheme};
use std::path::Path;
use std::sync::Arc;

type Result<T, E = TlsSetupError> = std::result::Result<T, E>;

/// The name the client asks for; identity comes from the pinned digest.
pub const PEER_SERVER_NAME: &str = "tidemark-peer";

pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Identity {
    /// Another copy (a TLS config takes its identity by value).
    pub fn duplicate(&self) -> Identity {
        Identity { chain: self.chain.clone(), key: self.key.clone_key() }
    }
}

/// Why TLS could not be set up: a key or certificate file could not be
/// read or is not one, or the TLS library refused the configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error(transparent)]
    Storage(#[from] crate::io_failure::IoFailure),
    #[error("{0}")]
    Invalid(String),
    #[error("{what}")]
    Tls {
        what: &'static str,
        #[source]
        source: rustls::Error,
    },
    #[error("{what}")]
    Certificate {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
    #[error("{what}")]
    Step {
        what: String,
        #[source]
        source: Box<TlsSetupError>,
    },
}

impl TlsSetupError {
    pub fn at(self, what: impl Into<String>) -> Self {
        TlsSetupError::Step { what: what.into(), source: Box::new(self) }
    }
}

pub fn load_identity(cert: &Path, key: &Path) -> Result<Identity> {
    let cert_pem = std::fs::read(cert).doing(|| format!("reading certificate {}", cert.display()))?;
    let chain = rustls_pemfile::certs(&mut &cert_pem[..])
        .collect::<Result<Vec<_>, _>>()
        .doing(|| format!("parsing certificate {}", cert.display()))?;
    if chain.is_empty() {
        return Err(TlsSetupError::Invalid(format!("{}: no certificate found", cert.display())));
    }
    let key_pem = std::fs::read(key).doing(|| format!("reading key {}", key.display()))?;
    let key = rustls_pemfile::private_key(&mut &key_pem[..])
        .doing(|| format!("parsing key {}", key.display()))?
        .ok_or_else(|| TlsSetupError::Invalid(format!("{}: no private key found", key.display())))?;
    Ok(Identity { chain, key })
}

pub fn fingerprint(cert: &CertificateDer<'_>) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
    digest.as_ref().try_into().expect("sha256 is 32 bytes")
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

#[derive(Debug)]
struct Pinned {
    allowed: Vec<[u8; 32]>,
    provider: Arc<CryptoProvider>,
}

impl Pinned {
    fn check(&self, end_entity: &CertificateDer<'_>, who: &str) -> Result<(), TlsError> {
        let seen = fingerprint(end_entity);
        // Constant time is not needed: fingerprints are public.
        if self.allowed.contains(&seen) {
            return Ok(());
        }
        let seen = format_fingerprint(&seen);
        tracing::warn!("refusing {who}: certificate {seen} is not pinned");
        Err(TlsError::General(format!("{who} certificate {seen} is not pinned")))
    }
}

/// The signature checks are the same on both sides of the link; rustls
/// asks for them through two traits, so one macro writes them into both.
macro_rules! signature_checks {
    () => {
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, TlsError> {
            Err(TlsError::General("TLS 1.2 is not allowed between appliances".into()))
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, TlsError> {
            verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.provider.signature_verification_algorithms.supported_schemes()
        }
    };
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        self.check(end_entity, "peer").map(|_| ServerCertVerified::assertion())
    }
    signature_checks!();
}

impl ClientCertVerifier for Pinned {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: UnixTime,
    ) -> Result<ClientCertVerified, TlsError> {
        self.check(end_entity, "client").map(|_| ClientCertVerified::assertion())
    }
    signature_checks!();
}

/// Server side (recovery appliance): requires a client certificate whose
/// digest is one of `allowed`.
pub fn server_config(identity: Identity, allowed: Vec<[u8; 32]>) -> Result<Arc<rustls::ServerConfig>> {
    let verifier = Arc::new(Pinned { allowed, provider: provider() });
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| TlsSetupError::Tls { what: "TLS 1.3 with ring", source })?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.chain, identity.key)
        .map_err(|source| TlsSetupError::Tls { what: "loading this appliance's certificate and key", source })?;
    Ok(Arc::new(config))
}

/// HTTPS for the manager and support (diagnostics on 4005): this
/// appliance's certificate, no client certificate (a bearer token
/// authorises instead), TLS 1.3, HTTP/1.1.
pub fn https_server_config(identity: Identity) -> Result<Arc<rustls::ServerConfig>> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| TlsSetupError::Tls { what: "TLS 1.3 with ring", source })?
        .with_no_client_auth()
        .with_single_cert(identity.chain, identity.key)
        .map_err(|source| TlsSetupError::Tls { what: "loading this appliance's certificate and key", source })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Client side (protected appliance): trusts only the pinned server digest.
pub fn client_config(identity: Identity, pinned: [u8; 32]) -> Result<Arc<rustls::ClientConfig>> {
    let verifier = Arc::new(Pinned { allowed: vec![pinned], provider: provider() });
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| TlsSetupError::Tls { what: "TLS 1.3 with ring", source })?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(identity.chain, identity.key)
        .map_err(|source| TlsSetupError::Tls { what: "loading this appliance's certificate and key", source })?;
    Ok(Arc::new(config))
}

/// HTTPS client (the CLI's `--server`): trusts only the pinned server
/// digest, TLS 1.3, no client certificate (the API authenticates users).
pub fn https_client_config(pinned: [u8; 32]) -> Result<Arc<rustls::ClientConfig>> {
    let verifier = Arc::new(Pinned { allowed: vec![pinned], provider: provider() });
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| TlsSetupError::Tls { what: "TLS 1.3 with ring", source })?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Writes a new P-256 key and self-signed certificate; returns the
/// certificate's fingerprint.
pub fn generate_identity(dir: &Path, common_name: &str, force: bool) -> Result<String> {
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    // A key without a readable certificate is a keygen cut short: its
    // fingerprint was never shown to anybody, so it is made again.
    if !force && fingerprint_of_file(&cert_path).is_ok() {
        return Err(TlsSetupError::Invalid(format!("{} already holds a certificate; pass --force to replace it (peers pinned to the old one will refuse this appliance)", dir.display())));
    }
    std::fs::create_dir_all(dir).doing(|| format!("creating {}", dir.display()))?;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|source| TlsSetupError::Certificate { what: "generating key", source })?;
    let mut params = rcgen::CertificateParams::new(vec![PEER_SERVER_NAME.to_string()])
        .map_err(|source| TlsSetupError::Certificate { what: "certificate parameters", source })?;
    params.distinguished_name.push(rcgen::DnType::CommonName, common_name);
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2124, 1, 1);
    let cert = params
        .self_signed(&key)
        .map_err(|source| TlsSetupError::Certificate { what: "signing certificate", source })?;
    // The key first, the certificate last: a crash in between leaves a key
    // without a certificate, which the next keygen replaces.
    replace_file(&key_path, key.serialize_pem().as_bytes(), FileMode::OwnerOnly)?;
    replace_file(&cert_path, cert.pem().as_bytes(), FileMode::Public)?;
    Ok(format_fingerprint(&fingerprint(cert.der())))
}

/// Fingerprint of the certificate in a PEM file.
pub fn fingerprint_of_file(cert: &Path) -> Result<String> {
    let pem = std::fs::read(cert).doing(|| format!("reading {}", cert.display()))?;
    let der = rustls_pemfile::certs(&mut &pem[..])
        .next()
        .ok_or_else(|| TlsSetupError::Invalid(format!("{}: no certificate", cert.display())))?
        .doing(|| format!("parsing {}", cert.display()))?;
    Ok(format_fingerprint(&fingerprint(&der)))
}
