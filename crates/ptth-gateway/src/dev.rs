//! `--dev DIR`: generated credentials so a demo needs no manual certificate work.
//!
//! Writes a private CA, a gateway certificate for `localhost`, `127.0.0.1` and `::1`, an origin
//! client certificate, and a random bearer token. When DIR already holds a complete set it is
//! reused, so origins started against an earlier run keep trusting a restarted gateway.

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use std::fs;
use std::path::{Path, PathBuf};

/// Paths of the dev credentials inside DIR.
#[derive(Debug, Clone)]
pub struct DevFiles {
    /// The private CA certificate origins trust (`ptth-origin --ca`).
    pub ca: PathBuf,
    /// The gateway's certificate chain.
    pub cert: PathBuf,
    /// The gateway's private key.
    pub key: PathBuf,
    /// An origin client certificate signed by the CA (for mechanisms that require one).
    pub origin_cert: PathBuf,
    /// Its private key.
    pub origin_key: PathBuf,
    /// The bearer token the gateway accepts.
    pub token: PathBuf,
    /// An Ed25519 key (PKCS#8 PEM) whose signatures the gateway accepts, key id `dev`.
    pub signing_key: PathBuf,
}

impl DevFiles {
    /// The file names inside `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            ca: dir.join("ca.pem"),
            cert: dir.join("gateway.pem"),
            key: dir.join("gateway.key"),
            origin_cert: dir.join("origin.pem"),
            origin_key: dir.join("origin.key"),
            token: dir.join("token"),
            signing_key: dir.join("origin-ed25519.pem"),
        }
    }

    fn all(&self) -> [&Path; 7] {
        [
            &self.signing_key,
            &self.ca,
            &self.cert,
            &self.key,
            &self.origin_cert,
            &self.origin_key,
            &self.token,
        ]
    }
}

/// Creates (or reuses) the dev credentials in `dir` and returns their paths.
pub fn ensure(dir: &Path) -> Result<DevFiles> {
    let files = DevFiles::in_dir(dir);
    if files.all().iter().all(|p| p.exists()) {
        return Ok(files);
    }
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;

    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "ptth dev CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = ca_params.self_signed(&ca_key)?;

    let gw_key = KeyPair::generate()?;
    // The public TLS listener serves the demo's `<mechanism>.localhost` hosts with the same
    // certificate; some TLS clients refuse a wildcard directly under a single label, so
    // the demo names are listed as well.
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
        "*.localhost".to_string(),
        "app.localhost".to_string(),
    ];
    names.extend(
        ptth_core::Mechanism::ALL
            .iter()
            .map(|m| format!("{}.localhost", m.name())),
    );
    let mut gw_params = CertificateParams::new(names)?;
    gw_params
        .distinguished_name
        .push(DnType::CommonName, "ptth dev gateway");
    gw_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let gw = gw_params.signed_by(&gw_key, &ca, &ca_key)?;

    let or_key = KeyPair::generate()?;
    let mut or_params =
        CertificateParams::new(vec!["localhost".to_string(), "*.localhost".to_string()])?;
    or_params
        .distinguished_name
        .push(DnType::CommonName, "ptth dev origin");
    or_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let or = or_params.signed_by(&or_key, &ca, &ca_key)?;

    let token = random_token();
    write(&files.ca, &ca.pem())?;
    write(&files.cert, &gw.pem())?;
    write_secret(&files.key, &gw_key.serialize_pem())?;
    write(&files.origin_cert, &or.pem())?;
    write_secret(&files.origin_key, &or_key.serialize_pem())?;
    write_secret(&files.token, &token)?;
    let pkcs8 = ptth_auth::generate_ed25519_pkcs8()?;
    write_secret(&files.signing_key, &ptth_auth::pkcs8_to_pem(&pkcs8))?;
    Ok(files)
}

/// The grants dev mode adds besides its token: the dev origin certificate (SAN
/// `*.localhost`) may serve `https://*.localhost`, and the dev Ed25519 key (key id `dev`)
/// may serve anything.
pub fn grants(files: &DevFiles) -> Result<Vec<ptth_auth::Grant>> {
    let pem = fs::read(&files.signing_key)?;
    let key = ptth_auth::Ed25519SigningKey::from_key_file(&pem)
        .map_err(|e| anyhow::anyhow!("{}: {e}", files.signing_key.display()))?;
    let any: ptth_auth::OriginPattern = "*".parse()?;
    let localhost: ptth_auth::OriginPattern = "https://*.localhost".parse()?;
    Ok(vec![
        ptth_auth::Grant {
            name: "dev-certificate".into(),
            identity: ptth_auth::Identity::CertSan("*.localhost".into()),
            origins: vec![localhost],
            path_prefixes: vec!["/".into()],
            services: Vec::new(),
        },
        ptth_auth::Grant {
            name: "dev-ed25519".into(),
            identity: ptth_auth::Identity::Ed25519Key {
                id: "dev".into(),
                public_key: key.public_key(),
            },
            origins: vec![any],
            path_prefixes: vec!["/".into()],
            services: Vec::new(),
        },
    ])
}

fn write(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn write_secret(path: &Path, text: &str) -> Result<()> {
    write(path, text)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

/// 32 random bytes from the operating system, hex-encoded.
fn random_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_once_and_reuses() {
        let dir = std::env::temp_dir().join(format!("ptth-dev-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let a = ensure(&dir).unwrap();
        let ca1 = fs::read_to_string(&a.ca).unwrap();
        let token = fs::read_to_string(&a.token).unwrap();
        assert_eq!(token.len(), 64);
        let b = ensure(&dir).unwrap();
        assert_eq!(fs::read_to_string(&b.ca).unwrap(), ca1);
        let _ = fs::remove_dir_all(&dir);
    }
}
