//! The cluster CA and node identities for mutual TLS.
//!
//! `jigsaw ca init --dir D --cluster NAME` writes `D/ca.pem`, `D/ca.key` (mode 0600) and
//! `D/ca.name`; `jigsaw ca issue NODE --dir D` writes `D/NODE.pem` (node certificate, then
//! the CA certificate) and `D/NODE.key`; `jigsaw ca issue --admin --dir D` the operator's
//! `D/admin.pem` and `D/admin.key`. Every QUIC endpoint requires its peer to present a
//! certificate chain to this CA, in both directions; TLS 1.3 only, ring as the crypto
//! provider.
//!
//! What a certificate says (see [`CertInfo`]):
//! * **who**: the subject common name. A node certificate's only DNS name is the same node
//!   id (extra names given with `--san` are for tools outside jigsaw and never identify
//!   anyone: dialing node `X` needs a server certificate *for* `X`, and a message naming
//!   node `X` is believed only from the certificate *for* `X`);
//! * **what it may do**: a SAN URI `jigsaw:role:node` or `jigsaw:role:admin`
//!   ([`Role::uri`]); a certificate without one is refused at the handshake. Node
//!   certificates carry both the server and client EKU, admin certificates client only (an
//!   admin certificate can never serve as a node);
//! * **until when**: `not_after` (`--days`, [`DEFAULT_NODE_DAYS`], [`DEFAULT_CA_DAYS`]);
//!   rustls refuses an expired or not-yet-valid peer certificate at the handshake.
//!
//! A [`DenyList`] (a file of certificate serials, `[node.tls] deny`) refuses those
//! certificates at the handshake in both directions and, through
//! [`crate::transport::net::QuicTransport::reload`], on connections already open.

use jigsaw_protocol::wire::Role;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Default validity of a node or admin certificate, days.
pub const DEFAULT_NODE_DAYS: u32 = 365;
/// Default validity of a cluster CA, days.
pub const DEFAULT_CA_DAYS: u32 = 3650;

/// Names a node may not take: the CA's own files (`ca.pem`, `ca.key`), the operator
/// certificate, and loopback (never a node identity).
pub const RESERVED_NAMES: &[&str] = &["ca", "admin", "localhost"];

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
    /// Refusing to overwrite an existing certificate or key without `--force`.
    #[error("{0} already exists: refusing to overwrite it (pass --force to replace it)")]
    WouldOverwrite(PathBuf),
    /// The name cannot be given to a certificate of this role.
    #[error("{0}")]
    Name(String),
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

/// Write `text` to `path`: mode 0600 when `private`; an existing file is an error unless
/// `replace`.
fn write_new(path: &Path, text: &str, private: bool, replace: bool) -> Result<(), TlsError> {
    use std::io::Write as _;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true);
    if replace {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    #[cfg(unix)]
    if private {
        opts.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut f = opts.open(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::AlreadyExists => TlsError::WouldOverwrite(path.to_path_buf()),
        _ => TlsError::Io { path: path.to_path_buf(), source },
    })?;
    f.write_all(text.as_bytes()).map_err(io(path))
}

fn datetime(t: SystemTime) -> time::OffsetDateTime {
    let secs = match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    };
    time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// Unix seconds as `YYYY-MM-DD HH:MM UTC`.
pub fn utc_time(t: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(t) {
        Ok(d) => {
            format!("{:04}-{:02}-{:02} {:02}:{:02} UTC", d.year(), u8::from(d.month()), d.day(), d.hour(), d.minute())
        }
        Err(_) => format!("@{t}"),
    }
}

fn ca_params(cluster: &str) -> Result<rcgen::CertificateParams, TlsError> {
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(gen)?;
    p.distinguished_name.push(rcgen::DnType::CommonName, format!("jigsaw cluster CA: {cluster}"));
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    Ok(p)
}

/// Create a cluster CA in `dir`, valid for [`DEFAULT_CA_DAYS`].
pub fn ca_init(dir: &Path, cluster: &str) -> Result<(), TlsError> {
    ca_init_for(dir, cluster, DEFAULT_CA_DAYS)
}

/// Create a cluster CA in `dir`, valid from an hour ago (clock skew) for `days` days. An
/// existing `ca.pem` or `ca.key` is never overwritten.
pub fn ca_init_for(dir: &Path, cluster: &str, days: u32) -> Result<(), TlsError> {
    if days == 0 {
        return Err(TlsError::Name("--days must be at least 1".into()));
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let (ca_pem, ca_key) = (dir.join("ca.pem"), dir.join("ca.key"));
    for p in [&ca_pem, &ca_key] {
        if p.exists() {
            return Err(TlsError::Exists(p.clone()));
        }
    }
    let key = rcgen::KeyPair::generate().map_err(gen)?;
    let mut params = ca_params(cluster)?;
    let now = SystemTime::now();
    params.not_before = datetime(now - Duration::from_secs(3600));
    params.not_after = datetime(now + Duration::from_secs(u64::from(days) * 86_400));
    let cert = params.self_signed(&key).map_err(gen)?;
    write_new(&ca_key, &key.serialize_pem(), true, false).map_err(|e| match e {
        TlsError::WouldOverwrite(p) => TlsError::Exists(p),
        e => e,
    })?;
    std::fs::write(dir.join("ca.name"), cluster).map_err(io(&dir.join("ca.name")))?;
    write_new(&ca_pem, &cert.pem(), false, false).map_err(|e| match e {
        TlsError::WouldOverwrite(p) => TlsError::Exists(p),
        e => e,
    })
}

/// What to issue: [`issue`]'s input.
#[derive(Debug, Clone)]
pub struct Issue {
    /// The certificate's name: a node id, or the operator's name (files `NAME.pem`,
    /// `NAME.key`).
    pub name: String,
    /// Its role.
    pub role: Role,
    /// Valid from.
    pub not_before: SystemTime,
    /// Valid until.
    pub not_after: SystemTime,
    /// Extra DNS names or IP addresses (node certificates only), e.g. `localhost` for a tool
    /// outside jigsaw that dials an agent by that name. Never a node identity.
    pub extra_names: Vec<String>,
    /// Replace existing `NAME.pem` / `NAME.key`.
    pub force: bool,
}

impl Issue {
    fn new(name: &str, role: Role) -> Issue {
        let now = SystemTime::now();
        Issue {
            name: name.to_string(),
            role,
            not_before: now - Duration::from_secs(3600),
            not_after: now + Duration::from_secs(u64::from(DEFAULT_NODE_DAYS) * 86_400),
            extra_names: Vec::new(),
            force: false,
        }
    }

    /// A node certificate, valid for [`DEFAULT_NODE_DAYS`].
    pub fn node(name: &str) -> Issue {
        Issue::new(name, Role::Node)
    }

    /// An operator (admin) certificate, valid for [`DEFAULT_NODE_DAYS`].
    pub fn admin(name: &str) -> Issue {
        Issue::new(name, Role::Admin)
    }

    /// Valid for `days` days from now (backdated an hour for clock skew).
    pub fn days(mut self, days: u32) -> Issue {
        let now = SystemTime::now();
        self.not_before = now - Duration::from_secs(3600);
        self.not_after = now + Duration::from_secs(u64::from(days) * 86_400);
        self
    }
}

/// What [`issue`] wrote.
#[derive(Debug, Clone)]
pub struct Issued {
    /// Certificate chain file (`NAME.pem`: the certificate, then the CA).
    pub cert: PathBuf,
    /// Key file (`NAME.key`, mode 0600).
    pub key: PathBuf,
    /// The certificate, as peers see it.
    pub info: CertInfo,
}

/// Check that `name` may be a node id (and so a node certificate's name): a DNS name of
/// ASCII letters, digits, `-` and `.`, not an IP address, not one of [`RESERVED_NAMES`].
pub fn check_node_name(name: &str) -> Result<(), TlsError> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.') {
        return Err(TlsError::Name(format!("node name `{name}` must be non-empty ASCII letters, digits, `-` or `.`")));
    }
    if name.parse::<std::net::IpAddr>().is_ok() {
        return Err(TlsError::Name(format!("node name `{name}` is an IP address; a node is named, not addressed")));
    }
    let lower = name.to_ascii_lowercase();
    if lower == "admin" {
        return Err(TlsError::Name(
            "node name `admin` is reserved for the operator certificate: issue that with `jigsaw ca issue --admin`"
                .into(),
        ));
    }
    if RESERVED_NAMES.contains(&lower.as_str()) || lower.ends_with(".localhost") {
        return Err(TlsError::Name(format!(
            "node name `{name}` is reserved ({}, and loopback names, cannot name a node)",
            RESERVED_NAMES.join(", ")
        )));
    }
    if rustls::pki_types::DnsName::try_from(name).is_err() {
        return Err(TlsError::Name(format!("node name `{name}` is not a valid DNS name")));
    }
    Ok(())
}

/// Issue a node certificate for `node` from the CA in `dir` (defaults of [`Issue::node`]).
pub fn ca_issue(dir: &Path, node: &str) -> Result<(PathBuf, PathBuf), TlsError> {
    let i = issue(dir, &Issue::node(node))?;
    Ok((i.cert, i.key))
}

/// Issue the operator certificate `admin` from the CA in `dir` (defaults of
/// [`Issue::admin`]).
pub fn ca_issue_admin(dir: &Path) -> Result<(PathBuf, PathBuf), TlsError> {
    let i = issue(dir, &Issue::admin("admin"))?;
    Ok((i.cert, i.key))
}

/// Issue a certificate from the CA in `dir`. Refuses reserved or malformed names (an
/// admin certificate may be called `admin`, never `ca`), and existing files unless
/// `force`; the CA's own files are never written.
pub fn issue(dir: &Path, req: &Issue) -> Result<Issued, TlsError> {
    let name = req.name.as_str();
    match req.role {
        Role::Node => check_node_name(name)?,
        Role::Admin => {
            if name != "admin" {
                check_node_name(name)?;
            }
            if !req.extra_names.is_empty() {
                return Err(TlsError::Name("an admin certificate takes no extra names (--san)".into()));
            }
        }
    }
    if req.not_after <= req.not_before {
        return Err(TlsError::Name("the certificate would never be valid (not_after <= not_before)".into()));
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
    let dns: Vec<String> = match req.role {
        Role::Node => std::iter::once(name.to_string()).chain(req.extra_names.iter().cloned()).collect(),
        Role::Admin => Vec::new(),
    };
    let mut params = rcgen::CertificateParams::new(dns).map_err(gen)?;
    let uri = rcgen::string::Ia5String::try_from(req.role.uri()).map_err(gen)?;
    params.subject_alt_names.push(rcgen::SanType::URI(uri));
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    params.extended_key_usages = match req.role {
        Role::Node => vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth],
        Role::Admin => vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth],
    };
    params.not_before = datetime(req.not_before);
    params.not_after = datetime(req.not_after);
    let key = rcgen::KeyPair::generate().map_err(gen)?;
    let cert = params.signed_by(&key, &issuer).map_err(gen)?;
    let (cert_path, key_out) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
    if !req.force {
        for p in [&cert_path, &key_out] {
            if p.exists() {
                return Err(TlsError::WouldOverwrite(p.clone()));
            }
        }
    }
    let info = CertInfo::parse(cert.der()).map_err(TlsError::Gen)?;
    write_new(&key_out, &key.serialize_pem(), true, req.force)?;
    write_new(&cert_path, &format!("{}{}", cert.pem(), ca_pem), false, req.force)?;
    Ok(Issued { cert: cert_path, key: key_out, info })
}

/// What a jigsaw certificate says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The subject common name: the node id, or the operator's name.
    pub name: String,
    /// The role from the `jigsaw:role:*` SAN URI.
    pub role: Role,
    /// Serial number, lowercase hex without separators (what a [`DenyList`] lists).
    pub serial: String,
    /// DNS names and IP addresses it is valid for.
    pub dns_names: Vec<String>,
    /// Valid from (Unix seconds).
    pub not_before: i64,
    /// Valid until (Unix seconds).
    pub not_after: i64,
}

impl CertInfo {
    /// Parse a DER certificate; an error says what is missing (no common name, no or two
    /// roles, a node certificate whose DNS names do not include its name).
    pub fn parse(der: &[u8]) -> Result<CertInfo, String> {
        use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
        let name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .ok_or("the certificate has no subject common name")?
            .to_string();
        let mut roles = Vec::new();
        let mut dns_names = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for n in &san.value.general_names {
                match n {
                    GeneralName::URI(u) if u.starts_with("jigsaw:role:") => match Role::from_uri(u) {
                        Some(r) => roles.push(r),
                        None => return Err(format!("unknown role `{u}`")),
                    },
                    GeneralName::DNSName(d) => dns_names.push(d.to_string()),
                    GeneralName::IPAddress(b) => {
                        if let Ok(v4) = <[u8; 4]>::try_from(*b) {
                            dns_names.push(std::net::IpAddr::from(v4).to_string());
                        } else if let Ok(v6) = <[u8; 16]>::try_from(*b) {
                            dns_names.push(std::net::IpAddr::from(v6).to_string());
                        }
                    }
                    _ => {}
                }
            }
        }
        let role = match roles.as_slice() {
            [r] => *r,
            [] => {
                return Err(format!(
                    "certificate `{name}` carries no jigsaw role (SAN URI jigsaw:role:node or jigsaw:role:admin); \
                     reissue it with `jigsaw ca issue`"
                ))
            }
            _ => return Err(format!("certificate `{name}` carries more than one jigsaw role")),
        };
        if role == Role::Node && !dns_names.iter().any(|d| d == &name) {
            return Err(format!("node certificate `{name}` is not valid for its own name"));
        }
        let serial = cert.raw_serial().iter().map(|b| format!("{b:02x}")).collect::<String>();
        let serial = serial.trim_start_matches('0').to_string();
        Ok(CertInfo {
            name,
            role,
            serial: if serial.is_empty() { "0".into() } else { serial },
            dns_names,
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
        })
    }

    /// Parse the first certificate of a PEM file.
    pub fn from_pem_file(path: &Path) -> Result<CertInfo, TlsError> {
        let der = CertificateDer::from_pem_file(path)
            .map_err(|e| TlsError::Pem { path: path.to_path_buf(), message: e.to_string() })?;
        CertInfo::parse(&der).map_err(|message| TlsError::Pem { path: path.to_path_buf(), message })
    }
}

/// Normalise a serial as an operator may write it (`0A:1b:...`, `0x0a1b`): lowercase hex,
/// no separators, no leading zeros.
fn normalise_serial(s: &str) -> Option<String> {
    let s = s.trim();
    let s = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")).unwrap_or(s);
    let hex: String = s.chars().filter(|c| *c != ':' && *c != '-' && !c.is_whitespace()).collect();
    if hex.is_empty() || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let t = hex.to_ascii_lowercase().trim_start_matches('0').to_string();
    Some(if t.is_empty() { "0".into() } else { t })
}

/// Certificate serials this node refuses (revoked certificates), from a text file: one
/// serial per line in hex (`jigsaw ca issue` and `jigsaw ca show` print it; colons and a
/// `0x` prefix are fine), `#` starts a comment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DenyList {
    serials: BTreeSet<String>,
}

impl DenyList {
    /// Read a deny-list file; a line that is not a serial is an error naming the line.
    pub fn load(path: &Path) -> Result<DenyList, TlsError> {
        let text = std::fs::read_to_string(path).map_err(io(path))?;
        let mut serials = BTreeSet::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let s = normalise_serial(line).ok_or_else(|| TlsError::Pem {
                path: path.to_path_buf(),
                message: format!("line {}: `{line}` is not a hex certificate serial", i + 1),
            })?;
            serials.insert(s);
        }
        Ok(DenyList { serials })
    }

    /// A deny list of these serials.
    pub fn of<S: AsRef<str>>(serials: impl IntoIterator<Item = S>) -> DenyList {
        DenyList { serials: serials.into_iter().filter_map(|s| normalise_serial(s.as_ref())).collect() }
    }

    /// Whether `serial` (as in [`CertInfo::serial`]) is denied.
    pub fn denies(&self, serial: &str) -> bool {
        normalise_serial(serial).is_some_and(|s| self.serials.contains(&s))
    }

    /// Number of serials.
    pub fn len(&self) -> usize {
        self.serials.len()
    }

    /// No serial.
    pub fn is_empty(&self) -> bool {
        self.serials.is_empty()
    }
}

/// The checks every jigsaw peer certificate passes on top of the CA chain and validity
/// (done by webpki): a single known role, a name, not denied.
fn check_peer(end_entity: &CertificateDer<'_>, deny: &DenyList) -> Result<CertInfo, rustls::Error> {
    let info = CertInfo::parse(end_entity).map_err(|m| {
        rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(PeerCertError(m)))))
    })?;
    if deny.denies(&info.serial) {
        return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
    }
    Ok(info)
}

#[derive(Debug)]
struct PeerCertError(String);

impl std::fmt::Display for PeerCertError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PeerCertError {}

/// Server side: webpki's client verification, then [`check_peer`].
#[derive(Debug)]
struct ClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    deny: Arc<DenyList>,
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner.verify_client_cert(end_entity, intermediates, now)?;
        check_peer(end_entity, &self.deny)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Client side: webpki's server verification (chain, validity, DNS name), then
/// [`check_peer`], and the server must be the *node* it was dialed as (its certificate's
/// name, not merely one of its DNS names).
#[derive(Debug)]
struct ServerVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    deny: Arc<DenyList>,
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
        let info = check_peer(end_entity, &self.deny)?;
        let named = match server_name {
            ServerName::DnsName(d) => d.as_ref().eq_ignore_ascii_case(&info.name),
            _ => false,
        };
        if info.role != Role::Node || !named {
            return Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForName));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A node's TLS identity: its chain and key, the cluster CA(s) it trusts (a bundle may
/// hold the old and the new CA during a rotation), and the serials it refuses.
#[derive(Debug)]
pub struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: Arc<rustls::RootCertStore>,
    deny: Arc<DenyList>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            roots: self.roots.clone(),
            deny: self.deny.clone(),
        }
    }
}

impl Identity {
    /// Load `cert` (chain PEM), `key` (PEM) and the trusted CA bundle `ca` (PEM, one or more
    /// CA certificates).
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
        Ok(Identity { chain, key: key_der, roots: Arc::new(roots), deny: Arc::new(DenyList::default()) })
    }

    /// An identity from in-memory parts (tests, and self-signed peers in tests).
    pub fn from_parts(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        roots: rustls::RootCertStore,
    ) -> Identity {
        Identity { chain, key, roots: Arc::new(roots), deny: Arc::new(DenyList::default()) }
    }

    /// The same identity refusing the serials of `deny`.
    pub fn with_deny(mut self, deny: DenyList) -> Identity {
        self.deny = Arc::new(deny);
        self
    }

    /// The serials refused.
    pub fn deny(&self) -> &Arc<DenyList> {
        &self.deny
    }

    /// What this identity's own certificate says (None if it is not a jigsaw certificate,
    /// e.g. a test's self-signed one).
    pub fn info(&self) -> Option<CertInfo> {
        CertInfo::parse(self.chain.first()?).ok()
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// QUIC server config: requires a client certificate from the CA, with a jigsaw role
    /// and not denied.
    pub fn server_config(&self) -> Result<quinn::ServerConfig, TlsError> {
        let cfg = |e: rustls::Error| TlsError::Config(e.to_string());
        let inner = rustls::server::WebPkiClientVerifier::builder_with_provider(self.roots.clone(), Self::provider())
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let verifier = Arc::new(ClientVerifier { inner, deny: self.deny.clone() });
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

    /// QUIC client config: presents this identity, trusts only the CA, and accepts only a
    /// node certificate for the node dialed, not denied.
    pub fn client_config(&self) -> Result<quinn::ClientConfig, TlsError> {
        let cfg = |e: rustls::Error| TlsError::Config(e.to_string());
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(self.roots.clone(), Self::provider())
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let verifier = Arc::new(ServerVerifier { inner, deny: self.deny.clone() });
        let mut tls = rustls::ClientConfig::builder_with_provider(Self::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(cfg)?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
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
