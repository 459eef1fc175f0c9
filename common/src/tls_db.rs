//! TLS towards a database server (the LB's Postgres registry), with libpq's `sslmode` levels:
//! `require` encrypts without checking the server's certificate (libpq does the same unless it is
//! given a root certificate), `verify-ca` checks that a trusted CA signed it, `verify-full` also
//! that it names the host dialled. The trusted CAs come from a PEM file (`sslrootcert`): the
//! images are FROM scratch and carry no system store.

use std::path::Path;
use std::sync::Arc;

use rustls::DigitallySignedStruct;
use rustls::client::ClientConfig;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::{CertificateError, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::tls::{TlsError, provider, read_certs};

/// How much of the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbVerify {
    /// Encrypt only (`sslmode=require` without a root certificate).
    Nothing,
    /// Signed by a CA of the root file, whatever host it names (`verify-ca`).
    Ca,
    /// Signed by a CA of the root file and naming the host dialled (`verify-full`).
    Full,
}

/// The client config for a database connection; `roots` is the PEM file of trusted CAs (needed
/// for [`DbVerify::Ca`] and [`DbVerify::Full`]).
pub fn database_client_config(verify: DbVerify, roots: Option<&Path>) -> Result<ClientConfig, TlsError> {
    let provider = provider();
    let webpki = match (verify, roots) {
        (DbVerify::Nothing, _) => None,
        (_, Some(path)) => {
            let mut store = RootCertStore::empty();
            for ca in read_certs("database root", path)? {
                store.add(ca).map_err(|source| TlsError::BadCa {
                    path: path.to_owned(),
                    source,
                })?;
            }
            let built = WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider.clone())
                .build()
                .map_err(|e| TlsError::ServerVerifier {
                    path: path.to_owned(),
                    source: e,
                })?;
            Some(built)
        }
        (_, None) => return Err(TlsError::NoDbRoots),
    };
    let verifier = Arc::new(DbVerifier {
        verify,
        webpki,
        provider: provider.clone(),
    });
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Protocol)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// The certificate check of one [`DbVerify`] level; the handshake's signatures are always checked.
#[derive(Debug)]
struct DbVerifier {
    verify: DbVerify,
    /// The web-PKI check against the root file (`None` for [`DbVerify::Nothing`]).
    webpki: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for DbVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(webpki) = &self.webpki else {
            return Ok(ServerCertVerified::assertion());
        };
        match webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            // verify-ca: a trusted CA signed it, whatever host it names.
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if self.verify == DbVerify::Ca => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
