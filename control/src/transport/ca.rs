//! The cluster certificate authority: created at `portico control init`, it issues the
//! certificates control nodes and edges present to each other on the QUIC transport.
//!
//! Identities live in reserved DNS names under [`IDENTITY_DOMAIN`]: a control node's certificate
//! names `node-{id}.portico.internal`, an edge's `edge-{id}.portico.internal` with its region in
//! the subject's organizational unit. [`peer_identity`] reads them back once rustls has verified
//! the chain.

use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;

/// The DNS suffix of identity names. Operators cannot put names under it into certificates.
pub const IDENTITY_DOMAIN: &str = "portico.internal";

/// How long the CA certificate is valid.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long node and edge certificates are valid.
pub const LEAF_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Certificates start this long before they are issued, to tolerate clock skew between hosts.
const BACKDATE: Duration = Duration::from_secs(3600);

const ORGANIZATION: &str = "portico";

/// The server name a control node's certificate carries, and the name peers dial it by.
pub fn node_dns_name(node_id: u64) -> String {
    format!("node-{node_id}.{IDENTITY_DOMAIN}")
}

/// The name every control node's certificate also carries: edges dial any control node by it
/// (they know addresses, not node ids).
pub const CONTROL_DNS_NAME: &str = portico_proto::sync::CONTROL_SERVER_NAME;

/// The name an edge's certificate carries.
pub fn edge_dns_name(edge_id: &str) -> String {
    format!("edge-{edge_id}.{IDENTITY_DOMAIN}")
}

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("cannot generate a serial number")]
    Random,
    #[error("the CA certificate is not valid: {0}")]
    InvalidCa(String),
    #[error("the CA key does not match the CA certificate")]
    KeyMismatch,
    #[error("{field}: {value:?} {reason}")]
    InvalidName {
        field: &'static str,
        value: String,
        reason: &'static str,
    },
}

/// A freshly issued certificate and its private key, both PEM.
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    /// The certificate's serial number, hex (for revocation lists).
    pub serial: String,
}

impl fmt::Debug for Issued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issued")
            .field("serial", &self.serial)
            .finish_non_exhaustive()
    }
}

/// Who is at the other end of a connection, as its certificate says.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PeerIdentity {
    Node(u64),
    /// No certificate: allowed only on protocols routed for it (edge enrolment).
    Anonymous,
    Edge {
        id: String,
        region: String,
    },
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerIdentity::Node(id) => write!(f, "node {id}"),
            PeerIdentity::Anonymous => f.write_str("anonymous peer"),
            PeerIdentity::Edge { id, region } => write!(f, "edge {id} (region {region})"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("the peer presented no certificate")]
    NoCertificate,
    #[error("the peer certificate cannot be parsed: {0}")]
    Unparsable(String),
    #[error("the peer certificate carries no portico identity")]
    Missing,
    #[error("the peer certificate carries more than one portico identity")]
    Ambiguous,
    #[error("the peer certificate carries a malformed identity {0:?}")]
    Malformed(String),
}

/// The cluster CA: its certificate and signing key.
pub struct ClusterCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    cert_der: CertificateDer<'static>,
}

impl fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterCa").finish_non_exhaustive()
    }
}

impl ClusterCa {
    /// Creates a new CA (ECDSA P-256, valid for [`CA_VALIDITY`]) for the named cluster.
    pub fn generate(cluster_name: &str) -> Result<ClusterCa, CaError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(
            DnType::CommonName,
            format!("portico cluster CA {cluster_name}"),
        );
        params
            .distinguished_name
            .push(DnType::OrganizationName, ORGANIZATION);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, CA_VALIDITY);
        params.serial_number = Some(random_serial()?);
        let cert = params.self_signed(&key)?;
        Ok(ClusterCa {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Reloads a CA persisted with [`ClusterCa::cert_pem`] and [`ClusterCa::key_pem`]. Checks
    /// that the certificate is a CA and that the key is its key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<ClusterCa, CaError> {
        let key = KeyPair::from_pem(key_pem)?;
        let der = CertificateDer::from(
            pem_der(cert_pem).ok_or_else(|| CaError::InvalidCa("not a PEM certificate".into()))?,
        );
        {
            let (_, x509) = x509_parser::parse_x509_certificate(&der)
                .map_err(|e| CaError::InvalidCa(e.to_string()))?;
            if !x509.is_ca() {
                return Err(CaError::InvalidCa(
                    "basic constraints do not allow it to issue certificates".into(),
                ));
            }
            if x509.public_key().raw != key.subject_public_key_info().as_slice() {
                return Err(CaError::KeyMismatch);
            }
        }
        let issuer = Issuer::from_ca_cert_der(&der, key)?;
        Ok(ClusterCa {
            issuer,
            cert_pem: cert_pem.to_string(),
            cert_der: der,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The CA's private key, PEM: what `init` persists (mode 0600) beside the certificate.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Issues a control node's certificate: server and client authentication, for
    /// `node-{id}.portico.internal` and the given host names and IP addresses.
    pub fn issue_node(&self, node_id: u64, hosts: &[String]) -> Result<Issued, CaError> {
        let mut sans = vec![
            dns_san(node_dns_name(node_id))?,
            dns_san(CONTROL_DNS_NAME.to_string())?,
        ];
        for host in hosts {
            sans.push(host_san(host)?);
        }
        let mut params = leaf_params(format!("portico node {node_id}"), sans)?;
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.sign(params)
    }

    /// Issues an edge's certificate: client authentication only, for
    /// `edge-{id}.portico.internal`, with the region as the subject's organizational unit.
    pub fn issue_edge(&self, edge_id: &str, region: &str) -> Result<Issued, CaError> {
        self.sign(edge_params(edge_id, region)?)
    }

    /// Issues an edge's certificate (as [`ClusterCa::issue_edge`]) for the key in a PKCS#10
    /// request, whose signature proves the edge holds that key. Everything else in the request
    /// is ignored: the identity is the CA's to decide. Returns the certificate, PEM.
    pub fn issue_edge_for_csr(
        &self,
        edge_id: &str,
        region: &str,
        csr_der: &[u8],
    ) -> Result<Issued, CaError> {
        let der = rustls_pki_types::CertificateSigningRequestDer::from(csr_der);
        let csr = rcgen::CertificateSigningRequestParams::from_der(&der)?;
        let params = edge_params(edge_id, region)?;
        let serial = serial_hex(&params);
        let cert = params.signed_by(&csr.public_key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: String::new(),
            serial,
        })
    }

    /// SHA-256 of the CA certificate (DER): the pin in edge join tokens.
    pub fn fingerprint(&self) -> [u8; 32] {
        ca_fingerprint(&self.cert_der)
    }

    fn sign(&self, params: CertificateParams) -> Result<Issued, CaError> {
        let key = KeyPair::generate()?;
        let serial = serial_hex(&params);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            serial,
        })
    }
}

/// SHA-256 of a certificate (DER).
pub fn ca_fingerprint(cert_der: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, cert_der);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

fn serial_hex(params: &CertificateParams) -> String {
    params
        .serial_number
        .as_ref()
        .map(|s| hex(&s.to_bytes()))
        .unwrap_or_default()
}

/// An edge's certificate: client authentication only, for `edge-{id}.portico.internal`, with
/// the region as the subject's organizational unit.
fn edge_params(edge_id: &str, region: &str) -> Result<CertificateParams, CaError> {
    check_label("edge_id", edge_id)?;
    check_label("region", region)?;
    let sans = vec![dns_san(edge_dns_name(edge_id))?];
    let mut params = leaf_params(format!("portico edge {edge_id}"), sans)?;
    params
        .distinguished_name
        .push(DnType::OrganizationalUnitName, region);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    Ok(params)
}

fn leaf_params(common_name: String, sans: Vec<SanType>) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params
        .distinguished_name
        .push(DnType::OrganizationName, ORGANIZATION);
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, LEAF_VALIDITY);
    params.serial_number = Some(random_serial()?);
    Ok(params)
}

fn set_validity(params: &mut CertificateParams, validity: Duration) {
    let now = SystemTime::now();
    params.not_before = (now - BACKDATE).into();
    params.not_after = (now + validity).into();
}

/// 128 random bits, positive (the top bit clear) and never zero.
fn random_serial() -> Result<SerialNumber, CaError> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| CaError::Random)?;
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    Ok(SerialNumber::from_slice(&bytes))
}

fn dns_san(name: String) -> Result<SanType, CaError> {
    Ia5String::try_from(name.clone())
        .map(SanType::DnsName)
        .map_err(|_| CaError::InvalidName {
            field: "hosts",
            value: name,
            reason: "is not an ASCII DNS name",
        })
}

/// An operator-supplied host: an IP address or a DNS name outside [`IDENTITY_DOMAIN`].
fn host_san(host: &str) -> Result<SanType, CaError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let invalid = |reason| CaError::InvalidName {
        field: "hosts",
        value: host.to_string(),
        reason,
    };
    let lower = host.to_ascii_lowercase();
    if lower == IDENTITY_DOMAIN || lower.ends_with(&format!(".{IDENTITY_DOMAIN}")) {
        return Err(invalid("is reserved for node and edge identities"));
    }
    let labels_ok = host.len() <= 253
        && host.split('.').enumerate().all(|(i, label)| {
            (i == 0 && label == "*")
                || (!label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !label.starts_with('-')
                    && !label.ends_with('-'))
        });
    if !labels_ok {
        return Err(invalid("is not a DNS name or an IP address"));
    }
    dns_san(host.to_string())
}

/// Edge ids and regions become DNS labels: 1 to 63 lowercase letters, digits or '-', not at
/// either end.
fn check_label(field: &'static str, value: &str) -> Result<(), CaError> {
    if is_label(value) {
        Ok(())
    } else {
        Err(CaError::InvalidName {
            field,
            value: value.to_string(),
            reason: "must be 1 to 63 lowercase letters, digits or '-' (not first or last)",
        })
    }
}

fn is_label(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-')
}

/// Reads the identity out of a peer's end-entity certificate. It does not verify the chain:
/// call it on certificates rustls has already verified against the cluster CA.
pub fn peer_identity(cert: &CertificateDer<'_>) -> Result<PeerIdentity, IdentityError> {
    let (_, x509) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| IdentityError::Unparsable(e.to_string()))?;
    let san = x509
        .subject_alternative_name()
        .map_err(|e| IdentityError::Unparsable(e.to_string()))?
        .ok_or(IdentityError::Missing)?;
    let suffix = format!(".{IDENTITY_DOMAIN}");
    let mut identities = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            // The shared control name is a role, not an identity.
            GeneralName::DNSName(dns) if *dns != CONTROL_DNS_NAME => {
                dns.strip_suffix(suffix.as_str())
            }
            _ => None,
        });
    let label = identities.next().ok_or(IdentityError::Missing)?;
    if identities.next().is_some() {
        return Err(IdentityError::Ambiguous);
    }
    let malformed = || IdentityError::Malformed(label.to_string());
    if let Some(id) = label.strip_prefix("node-") {
        let id: u64 = id.parse().map_err(|_| malformed())?;
        // One spelling per id: "node-01" is not node 1.
        if label != format!("node-{id}") {
            return Err(malformed());
        }
        return Ok(PeerIdentity::Node(id));
    }
    if let Some(id) = label.strip_prefix("edge-") {
        if !is_label(id) {
            return Err(malformed());
        }
        let mut units = x509.subject().iter_organizational_unit();
        let region = units
            .next()
            .and_then(|ou| ou.as_str().ok())
            .filter(|r| is_label(r))
            .ok_or_else(malformed)?;
        if units.next().is_some() {
            return Err(IdentityError::Ambiguous);
        }
        return Ok(PeerIdentity::Edge {
            id: id.to_string(),
            region: region.to_string(),
        });
    }
    Err(malformed())
}

/// The DER of the first `CERTIFICATE` block of a PEM document.
pub(crate) fn pem_der(pem: &str) -> Option<Vec<u8>> {
    use rustls_pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .ok()
        .map(|c| c.to_vec())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier;
    use rustls_pki_types::pem::PemObject;

    fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).expect("PEM certificate")
    }

    #[test]
    fn node_certificate_names_its_node() {
        let ca = ClusterCa::generate("test").unwrap();
        let issued = ca
            .issue_node(7, &["10.0.0.7".into(), "control-7.example.com".into()])
            .unwrap();
        let cert = der(&issued.cert_pem);
        assert_eq!(peer_identity(&cert).unwrap(), PeerIdentity::Node(7));

        let (_, x509) = x509_parser::parse_x509_certificate(&cert).unwrap();
        let san = x509.subject_alternative_name().unwrap().unwrap();
        let names = &san.value.general_names;
        assert!(
            names.contains(&GeneralName::DNSName("node-7.portico.internal")),
            "{names:?}"
        );
        assert!(
            names.contains(&GeneralName::DNSName("control-7.example.com")),
            "{names:?}"
        );
        assert!(
            names.contains(&GeneralName::IPAddress(&[10, 0, 0, 7])),
            "{names:?}"
        );
        let cn: Vec<&str> = x509
            .subject()
            .iter_common_name()
            .map(|c| c.as_str().unwrap())
            .collect();
        assert_eq!(cn, vec!["portico node 7"]);
        let eku = x509.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        let validity =
            x509.validity().not_after.timestamp() - x509.validity().not_before.timestamp();
        assert!(
            (365 * 86400..=366 * 86400).contains(&validity),
            "{validity}"
        );
        assert!(!issued.serial.is_empty());
        assert_eq!(hex(x509.raw_serial()), issued.serial);
    }

    #[test]
    fn edge_certificate_names_its_edge_and_region() {
        let ca = ClusterCa::generate("test").unwrap();
        let issued = ca.issue_edge("e1", "eu-west").unwrap();
        let cert = der(&issued.cert_pem);
        assert_eq!(
            peer_identity(&cert).unwrap(),
            PeerIdentity::Edge {
                id: "e1".into(),
                region: "eu-west".into()
            }
        );
        let (_, x509) = x509_parser::parse_x509_certificate(&cert).unwrap();
        let eku = x509.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
    }

    #[test]
    fn bad_names_are_refused() {
        let ca = ClusterCa::generate("test").unwrap();
        for host in ["node-1.portico.internal", "x y", "", "-a.example.com"] {
            assert!(
                matches!(
                    ca.issue_node(1, &[host.to_string()]),
                    Err(CaError::InvalidName { .. })
                ),
                "{host:?}"
            );
        }
        assert!(ca.issue_edge("E1", "eu").is_err());
        assert!(ca.issue_edge("e1", "eu.west").is_err());
        assert!(ca.issue_edge("", "eu").is_err());
    }

    #[test]
    fn certificates_without_identity_are_refused() {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec!["example.com".to_string()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert!(matches!(
            peer_identity(cert.der()),
            Err(IdentityError::Missing)
        ));
        let params = CertificateParams::new(vec!["node-01.portico.internal".to_string()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert!(matches!(
            peer_identity(cert.der()),
            Err(IdentityError::Malformed(_))
        ));
        assert!(matches!(
            peer_identity(&CertificateDer::from(vec![1, 2, 3])),
            Err(IdentityError::Unparsable(_))
        ));
    }

    #[test]
    fn reloaded_ca_issues_certificates_the_original_chain_validates() {
        crate::transport::test_support::install_crypto();
        let original = ClusterCa::generate("test").unwrap();
        let reloaded = ClusterCa::from_pem(original.cert_pem(), &original.key_pem()).unwrap();
        assert_eq!(reloaded.cert_der(), original.cert_der());
        let issued = reloaded.issue_node(3, &[]).unwrap();

        // Verify with webpki against a root store holding only the original CA.
        let mut roots = rustls::RootCertStore::empty();
        roots.add(original.cert_der().clone()).unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder(roots.into())
            .build()
            .unwrap();
        let leaf = der(&issued.cert_pem);
        let name = rustls_pki_types::ServerName::try_from(node_dns_name(3)).unwrap();
        verifier
            .verify_server_cert(&leaf, &[], &name, &[], rustls_pki_types::UnixTime::now())
            .expect("the original CA validates a certificate issued by the reloaded one");

        // A certificate from another CA does not validate.
        let other = ClusterCa::generate("other").unwrap();
        let foreign = der(&other.issue_node(3, &[]).unwrap().cert_pem);
        assert!(
            verifier
                .verify_server_cert(&foreign, &[], &name, &[], rustls_pki_types::UnixTime::now())
                .is_err()
        );
    }

    #[test]
    fn from_pem_refuses_a_mismatched_key_or_a_leaf() {
        let a = ClusterCa::generate("a").unwrap();
        let b = ClusterCa::generate("b").unwrap();
        assert!(matches!(
            ClusterCa::from_pem(a.cert_pem(), &b.key_pem()),
            Err(CaError::KeyMismatch)
        ));
        let leaf = a.issue_node(1, &[]).unwrap();
        assert!(matches!(
            ClusterCa::from_pem(&leaf.cert_pem, &leaf.key_pem),
            Err(CaError::InvalidCa(_))
        ));
    }
}
