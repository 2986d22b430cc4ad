//! [`Tls`]: whom a `rediss://` connection trusts, and the certificate it shows for mutual TLS.

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::{InconsistentKeys, RootCertStore};

use crate::Error;
use crate::config::invalid;

/// PEM text, given as bytes or as the file to read them from (read when the config is
/// validated, and again by every connect of a new [`Consumer`](crate::Consumer) or
/// [`Writer`](crate::Writer), so a renewed file is picked up by the next process).
#[derive(Clone)]
enum Pem {
    File(PathBuf),
    Bytes(Vec<u8>),
}

/// The most a PEM file is read of (a large CA bundle is under 1 MiB).
const MAX_PEM_FILE: u64 = 16 << 20;

impl Pem {
    fn read(&self, field: &'static str) -> Result<Vec<u8>, Error> {
        match self {
            Self::File(path) => {
                let mut bytes = Vec::new();
                let file = File::open(path).map_err(|_| invalid(field, "a readable PEM file"))?;
                file.take(MAX_PEM_FILE + 1)
                    .read_to_end(&mut bytes)
                    .map_err(|_| invalid(field, "a readable PEM file"))?;
                if bytes.len() as u64 > MAX_PEM_FILE {
                    return Err(invalid(field, "a PEM file of at most 16 MiB"));
                }
                Ok(bytes)
            }
            Self::Bytes(bytes) => Ok(bytes.clone()),
        }
    }

    /// What `Debug` shows: the path of a file (not a secret), the size of bytes.
    fn describe(&self) -> String {
        match self {
            Self::File(path) => format!("file {}", path.display()),
            Self::Bytes(bytes) => format!("{} bytes of PEM", bytes.len()),
        }
    }
}

/// The TLS settings of a `rediss://` connection: the CA that signed the server's certificate
/// (the only one trusted), and optionally a client certificate and key for a server that
/// asks for one (mutual TLS, `tls-auth-clients yes`).
///
/// Without a `Tls` setting a `rediss://` URL trusts the system's root certificates; with
/// one, only its CA, so nothing on the machine needs to know the CA. The handshake is made
/// by rustls with the ring crypto provider (installed as the process default if the
/// application installed none). The server's certificate must name the URL's host (a DNS
/// name, or an IP address in its subject alternative names).
///
/// `Debug` shows file paths and sizes, never a key.
///
/// # Examples
///
/// ```
/// use backflow_redis::{ConsumerConfig, Tls};
///
/// let tls = Tls::ca_file("/etc/redis/ca.pem")
///     .client_cert_files("/etc/backflow/client.pem", "/etc/backflow/client.key");
/// let config = ConsumerConfig::new("rediss://redis.internal:6380/", "orders", "billing", "host-a")
///     .tls(tls);
/// // The files are read when the config is checked: here they do not exist.
/// assert!(config.validate().unwrap_err().to_string().contains("`tls.ca`"));
/// ```
#[derive(Clone)]
pub struct Tls {
    ca: Pem,
    client: Option<(Pem, Pem)>,
}

impl Tls {
    /// Trusts the CA certificate(s) in the PEM file at `path`.
    ///
    /// # Examples
    ///
    /// ```
    /// let tls = backflow_redis::Tls::ca_file("ca.pem");
    /// assert!(format!("{tls:?}").contains("ca.pem"));
    /// ```
    pub fn ca_file(path: impl Into<PathBuf>) -> Self {
        Self { ca: Pem::File(path.into()), client: None }
    }

    /// Trusts the CA certificate(s) in `pem` (PEM text, e.g. read from a secret store).
    ///
    /// # Examples
    ///
    /// ```
    /// let tls = backflow_redis::Tls::ca_pem("-----BEGIN CERTIFICATE-----\n…");
    /// assert!(format!("{tls:?}").contains("bytes of PEM"));
    /// ```
    pub fn ca_pem(pem: impl AsRef<[u8]>) -> Self {
        Self { ca: Pem::Bytes(pem.as_ref().to_vec()), client: None }
    }

    /// Shows the server the certificate (chain) in the PEM file `cert`, with its private key
    /// in the PEM file `key` (mutual TLS).
    ///
    /// # Examples
    ///
    /// ```
    /// let tls = backflow_redis::Tls::ca_file("ca.pem").client_cert_files("client.pem", "client.key");
    /// assert!(format!("{tls:?}").contains("client.key"));
    /// ```
    #[must_use]
    pub fn client_cert_files(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.client = Some((Pem::File(cert.into()), Pem::File(key.into())));
        self
    }

    /// Shows the server the certificate (chain) `cert` with its private key `key`, both PEM
    /// text (mutual TLS). The key is never printed.
    ///
    /// # Examples
    ///
    /// ```
    /// let tls = backflow_redis::Tls::ca_pem("…").client_cert_pem("cert", "-----BEGIN PRIVATE KEY-----\nsecret");
    /// assert!(!format!("{tls:?}").contains("secret"));
    /// ```
    #[must_use]
    pub fn client_cert_pem(mut self, cert: impl AsRef<[u8]>, key: impl AsRef<[u8]>) -> Self {
        let (cert, key) = (cert.as_ref().to_vec(), key.as_ref().to_vec());
        self.client = Some((Pem::Bytes(cert), Pem::Bytes(key)));
        self
    }

    /// Reads and checks every PEM, into what the redis client takes: the CA certificates
    /// parse as trust anchors, the client's key loads and is the key of its certificate.
    pub(crate) fn certificates(&self) -> Result<redis::TlsCertificates, Error> {
        let ca = self.ca.read("tls.ca")?;
        let anchors = CertificateDer::pem_slice_iter(&ca).collect::<Result<Vec<_>, _>>();
        let mut roots = RootCertStore::empty();
        // As a system bundle may, a bundle can hold a certificate webpki does not take: the
        // others are trusted.
        roots.add_parsable_certificates(anchors.unwrap_or_default());
        if roots.is_empty() {
            return Err(invalid("tls.ca", "PEM holding at least one CA certificate"));
        }
        let client_tls = match &self.client {
            None => None,
            Some((cert, key)) => {
                let (cert, key) = (cert.read("tls.client_cert")?, key.read("tls.client_key")?);
                check_client_key(&cert, &key)?;
                Some(redis::ClientTlsConfig { client_cert: cert, client_key: key })
            }
        };
        Ok(redis::TlsCertificates { client_tls, root_cert: Some(ca) })
    }
}

/// Checks that `cert` holds a certificate chain and `key` the private key of its first
/// certificate, in a form the crypto provider can sign with.
fn check_client_key(cert: &[u8], key: &[u8]) -> Result<(), Error> {
    let chain = CertificateDer::pem_slice_iter(cert).collect::<Result<Vec<_>, _>>();
    let chain = chain.ok().filter(|chain| !chain.is_empty());
    let chain = chain.ok_or_else(|| invalid("tls.client_cert", "PEM holding a certificate"))?;
    let key = PrivateKeyDer::from_pem_slice(key)
        .map_err(|_| invalid("tls.client_key", "PEM holding a private key"))?;
    install_crypto_provider();
    let provider = CryptoProvider::get_default()
        .map_or_else(|| Arc::new(rustls::crypto::ring::default_provider()), Arc::clone);
    let key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|_| invalid("tls.client_key", "a private key the TLS provider can sign with"))?;
    match CertifiedKey::new(chain, key).keys_match() {
        // `Unknown`: the provider cannot tell the key's public half; the handshake will.
        Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => Ok(()),
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => Err(invalid(
            "tls.client_key",
            "the private key of the certificate in `tls.client_cert`",
        )),
        Err(_) => Err(invalid("tls.client_cert", "PEM holding a certificate")),
    }
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("Tls");
        debug.field("ca", &self.ca.describe());
        if let Some((cert, key)) = &self.client {
            debug.field("client_cert", &cert.describe());
            match key {
                Pem::File(_) => debug.field("client_key", &key.describe()),
                Pem::Bytes(_) => debug.field("client_key", &"***"),
            };
        }
        debug.finish()
    }
}

/// Installs ring as rustls's process-wide crypto provider unless one is installed already
/// (rustls cannot pick one by itself when a build enables two).
pub(crate) fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Another thread may install one in between: either way, one is installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// The TLS failure inside `error`, if it is one: the server's certificate is not trusted,
/// does not name the host, the server refused the client's certificate, and so on.
pub(crate) fn failure(error: &redis::RedisError) -> Option<String> {
    std::error::Error::source(error).and_then(rustls_error).map(ToString::to_string)
}

/// The rustls error in `error` or in what it wraps (an I/O error, a shared error).
fn rustls_error<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    if let Some(tls) = error.downcast_ref::<rustls::Error>() {
        return Some(tls);
    }
    if let Some(io) = error.downcast_ref::<std::io::Error>() {
        return io.get_ref().and_then(|inner| rustls_error(inner));
    }
    if let Some(shared) = error.downcast_ref::<Arc<dyn std::error::Error + Send + Sync>>() {
        return rustls_error(&**shared);
    }
    error.source().and_then(rustls_error)
}
