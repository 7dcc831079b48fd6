//! The cluster CA and node identities for mutual TLS.
//!
//! `jigsaw ca init --dir D --cluster NAME` writes `D/ca.pem`, `D/ca.key` (mode 0600) and
//! `D/ca.name`; `jigsaw ca issue NODE --dir D` writes `D/NODE.pem` (node certificate, then
//! the CA certificate) and `D/NODE.key`, valid for the names `NODE` and `localhost` and the
//! address 127.0.0.1. Every QUIC endpoint requires its peer to present a certificate chain
//! to this CA, in both directions; TLS 1.3 only, ring as the crypto provider.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A TLS setup error, naming the file involved.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A PEM file is malformed or empty.
    #[error("{path}: {message}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Refusing to overwrite an existing CA.
    #[error("{0} already exists: refusing to overwrite a cluster CA (every node certificate depends on it)")]
    Exists(PathBuf),
    /// Certificate generation failed.
    #[error("certificate generation: {0}")]
    Gen(String),
    /// rustls rejected the configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io { path: path.to_path_buf(), source }
}

fn gen(e: rcgen::Error) -> TlsError {
    TlsError::Gen(e.to_string())
}

fn write_private(path: &Path, text: &str) -> Result<(), TlsError> {
    use std::io::Write as _;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts.open(path).map_err(io(path))?;
    f.write_all(text.as_bytes()).map_err(io(path))
}

fn ca_params(cluster: &str) -> Result<rcgen::CertificateParams, TlsError> {
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(gen)?;
    p.distinguished_name.push(rcgen::DnType::CommonName, format!("jigsaw cluster CA: {cluster}"));
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    Ok(p)
}

/// Create a cluster CA in `dir`.
pub fn ca_init(dir: &Path, cluster: &str) -> Result<(), TlsError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let ca_pem = dir.join("ca.pem");
    if ca_pem.exists() {
        return Err(TlsError::Exists(ca_pem));
    }
    let key = rcgen::KeyPair::generate().map_err(gen)?;
    let cert = ca_params(cluster)?.self_signed(&key).map_err(gen)?;
    write_private(&dir.join("ca.key"), &key.serialize_pem())?;
    std::fs::write(dir.join("ca.name"), cluster).map_err(io(&dir.join("ca.name")))?;
    std::fs::write(&ca_pem, cert.pem()).map_err(io(&ca_pem))
}

/// Issue a certificate for `node` from the CA in `dir`.
pub fn ca_issue(dir: &Path, node: &str) -> Result<(PathBuf, PathBuf), TlsError> {
    if node.is_empty() || !node.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.') {
        return Err(TlsError::Gen(format!("node name `{node}` must be non-empty ASCII letters, digits, `-` or `.`")));
    }
    let name_path = dir.join("ca.name");
    let cluster = std::fs::read_to_string(&name_path).map_err(io(&name_path))?;
    let key_path = dir.join("ca.key");
    let ca_key_pem = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
    let ca_key = rcgen::KeyPair::from_pem(&ca_key_pem)
        .map_err(|e| TlsError::Pem { path: key_path.clone(), message: e.to_string() })?;
    let ca_pem_path = dir.join("ca.pem");
    let ca_pem = std::fs::read_to_string(&ca_pem_path).map_err(io(&ca_pem_path))?;
    let issuer = rcgen::Issuer::new(ca_params(cluster.trim())?, ca_key);
    let mut params =
        rcgen::CertificateParams::new(vec![node.to_string(), "localhost".into(), "127.0.0.1".into()]).map_err(gen)?;
    params.distinguished_name.push(rcgen::DnType::CommonName, node);
    params.extended_key_usages =
        vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let key = rcgen::KeyPair::generate().map_err(gen)?;
    let cert = params.signed_by(&key, &issuer).map_err(gen)?;
    let (cert_path, key_out) = (dir.join(format!("{node}.pem")), dir.join(format!("{node}.key")));
    std::fs::write(&cert_path, format!("{}{}", cert.pem(), ca_pem)).map_err(io(&cert_path))?;
    write_private(&key_out, &key.serialize_pem())?;
    Ok((cert_path, key_out))
}

/// A node's TLS identity: its chain and key, and the cluster CA it trusts.
#[derive(Debug)]
pub struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: Arc<rustls::RootCertStore>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity { chain: self.chain.clone(), key: self.key.clone_key(), roots: self.roots.clone() }
    }
}

impl Identity {
    /// Load `cert` (chain PEM), `key` (PEM) and the trusted CA `ca` (PEM).
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<Identity, TlsError> {
        fn pem_err(path: &Path) -> impl Fn(rustls::pki_types::pem::Error) -> TlsError + '_ {
            move |e| TlsError::Pem { path: path.to_path_buf(), message: e.to_string() }
        }
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .map_err(pem_err(cert))?
            .collect::<Result<_, _>>()
            .map_err(pem_err(cert))?;
        if chain.is_empty() {
            return Err(TlsError::Pem { path: cert.to_path_buf(), message: "no certificate in file".into() });
        }
        let key_der = PrivateKeyDer::from_pem_file(key).map_err(pem_err(key))?;
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(ca).map_err(pem_err(ca))? {
            roots
                .add(c.map_err(pem_err(ca))?)
                .map_err(|e| TlsError::Pem { path: ca.to_path_buf(), message: e.to_string() })?;
        }
        if roots.is_empty() {
            return Err(TlsError::Pem { path: ca.to_path_buf(), message: "no CA certificate in file".into() });
        }
        Ok(Identity { chain, key: key_der, roots: Arc::new(roots) })
    }

    /// An identity from in-memory parts (tests, and self-signed peers in tests).
    pub fn from_parts(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        roots: rustls::RootCertStore,
    ) -> Identity {
        Identity { chain, key, roots: Arc::new(roots) }
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// QUIC server config: requires a client certificate from the CA.
    pub fn server_config(&self) -> Result<quinn::ServerConfig, TlsError> {
        let cfg = |e: rustls::Error| TlsError::Config(e.to_string());
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(self.roots.clone(), Self::provider())
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?;
        let mut tls = rustls::ServerConfig::builder_with_provider(Self::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(cfg)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(cfg)?;
        tls.alpn_protocols = vec![super::ALPN.to_vec()];
        let crypto =
            quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(|e| TlsError::Config(e.to_string()))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        server.transport_config(transport());
        Ok(server)
    }

    /// QUIC client config: presents this identity, trusts only the CA.
    pub fn client_config(&self) -> Result<quinn::ClientConfig, TlsError> {
        let cfg = |e: rustls::Error| TlsError::Config(e.to_string());
        let mut tls = rustls::ClientConfig::builder_with_provider(Self::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(cfg)?
            .with_root_certificates(self.roots.clone())
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(cfg)?;
        tls.alpn_protocols = vec![super::ALPN.to_vec()];
        let crypto =
            quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| TlsError::Config(e.to_string()))?;
        let mut client = quinn::ClientConfig::new(Arc::new(crypto));
        client.transport_config(transport());
        Ok(client)
    }
}

/// Idle timeout of agent-to-agent connections: a crashed peer's connection is closed (and
/// no longer reused) this long after its last packet.
pub const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Concurrent bidirectional streams (requests) one peer may have open on a connection. A
/// data-plane frontend opens one per stage item in flight; more wait for stream credit
/// (bounded by their deadlines) rather than each holding a receive buffer on the peer.
pub const MAX_STREAMS: u32 = 256;

/// Unread bytes one stream may have in flight to the receiver, bytes (QUIC flow control).
pub const STREAM_WINDOW: u32 = 2 * 1024 * 1024;

/// Unread bytes one connection may have in flight to the receiver, over all its streams,
/// bytes: what one peer can make the receiver's QUIC stack buffer. Bytes the receiver has
/// read count against its per-connection budget of partial frames instead
/// ([`super::RECV_BUDGET`]).
pub const CONNECTION_WINDOW: u32 = 8 * 1024 * 1024;

/// QUIC settings for agent-to-agent connections: [`MAX_STREAMS`] concurrent request streams
/// per peer (quinn's default of 100 would make a busy frontend wait for stream credit; the
/// 4096 used before let one peer open thousands of streams, each announcing a frame), no
/// unidirectional streams, bounded receive windows ([`STREAM_WINDOW`], [`CONNECTION_WINDOW`];
/// quinn's default connection window is unbounded), keep-alives every second so a live but
/// idle connection never times out, and a short idle timeout ([`IDLE_TIMEOUT`]) so a dead
/// peer's connection is given up in seconds rather than quinn's default 30 s.
fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(MAX_STREAMS.into());
    t.max_concurrent_uni_streams(0u32.into());
    t.stream_receive_window(STREAM_WINDOW.into());
    t.receive_window(CONNECTION_WINDOW.into());
    t.keep_alive_interval(Some(std::time::Duration::from_secs(1)));
    t.max_idle_timeout(quinn::IdleTimeout::try_from(IDLE_TIMEOUT).ok());
    Arc::new(t)
}
