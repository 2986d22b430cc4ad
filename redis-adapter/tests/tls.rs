//! TLS on a real server, with a CA and certificates made here: `rediss://` with a given CA,
//! mutual TLS, an untrusted server certificate, and a plaintext client at the TLS port.

mod common;

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use backflow::core::RetrySchedule;
use backflow::{ErrorPolicy, Pipeline, stage};
use backflow_redis::{Consumer, ConsumerConfig, Entry, Error, Record, Tls, Writer, WriterConfig};
use common::{Server, keys};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use test_support::ServerTls;

/// Well under the default reconnect schedule's ~6 s: a TLS failure is not retried.
const QUICK: Duration = Duration::from_secs(2);

/// A CA of a test's own with a server certificate (for `127.0.0.1` and `localhost`) and a
/// client certificate it signed, as PEM files in a directory removed when dropped.
struct Pki {
    dir: PathBuf,
    ca_pem: String,
}

impl Pki {
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("backflow-tls-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.distinguished_name.push(DnType::CommonName, format!("backflow test CA {test}"));
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
        let leaf = |names: Vec<String>, usage: ExtendedKeyUsagePurpose, name: &str| {
            let mut params = CertificateParams::new(names).unwrap();
            params.distinguished_name.push(DnType::CommonName, name);
            params.extended_key_usages = vec![usage];
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &ca).unwrap();
            std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
            std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
        };
        let server_names = vec!["127.0.0.1".to_string(), "localhost".to_string()];
        leaf(server_names, ExtendedKeyUsagePurpose::ServerAuth, "server");
        leaf(Vec::new(), ExtendedKeyUsagePurpose::ClientAuth, "client");
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        Self { dir, ca_pem: ca.pem() }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// A server presenting this CA's server certificate.
    fn server(&self, auth_clients: bool) -> Server {
        let tls = ServerTls {
            cert: self.path("server.pem"),
            key: self.path("server.key"),
            ca: self.path("ca.pem"),
            auth_clients,
        };
        Server::with_tls(&tls, &[])
    }

    /// Trusts this CA (from its file) and shows the client certificate.
    fn mutual(&self) -> Tls {
        Tls::ca_file(self.path("ca.pem"))
            .client_cert_files(self.path("client.pem"), self.path("client.key"))
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Squares every entry of `keys.0` into `keys.2` over `url` with `tls`, until idle.
fn square_all(url: &str, keys: &(String, String, String), tls: &Tls) -> Result<u64, Error> {
    let writer = Writer::new(WriterConfig::new(url, &keys.2).tls(tls.clone()))?;
    let pipeline = Pipeline::<Entry>::builder()
        .stage("square", || {
            |entry: Entry| {
                let n: u64 = entry.get_str("n").and_then(|n| n.parse().ok()).unwrap_or(0);
                Record::new().field("square", (n * n).to_string()).settles(entry.receipt())
            }
        })
        .stage("batch", || stage::batches(NonZeroUsize::new(32).unwrap()))
        .flush_every(Duration::from_millis(10))
        .stage("store", move || writer.stage())
        .on_error(ErrorPolicy::FailFast)
        .sink(|_ids| {})
        .build()
        .unwrap();
    let config = ConsumerConfig::new(url, &keys.0, &keys.1, "c")
        .tls(tls.clone())
        .block(Duration::from_millis(20))
        .stop_when_idle(Duration::from_millis(300));
    let summary = Consumer::connect(config)?.run(pipeline)?;
    Ok(summary.acknowledged)
}

#[test]
fn a_consumer_and_a_writer_over_tls_process_every_entry() {
    const ENTRIES: u64 = 500;
    let pki = Pki::new("plain");
    let server = pki.server(false);
    let keys = keys("tls");
    server.fill(&keys.0, 0, ENTRIES);
    // The CA as PEM bytes (from a secret store, say); no client certificate.
    let acknowledged = square_all(&server.tls_url(), &keys, &Tls::ca_pem(&pki.ca_pem)).unwrap();
    assert_eq!(acknowledged, ENTRIES);
    assert_eq!(server.entries(&keys.2).len() as u64, ENTRIES, "every entry written over TLS");
    assert_eq!(server.pending(&keys.0, &keys.1), 0);
}

#[test]
fn mutual_tls_needs_the_client_certificate_and_works_with_it() {
    const ENTRIES: u64 = 100;
    let pki = Pki::new("mutual");
    let server = pki.server(true);
    let keys = keys("mtls");
    server.fill(&keys.0, 0, ENTRIES);

    let started = Instant::now();
    let without = ConsumerConfig::new(server.tls_url(), &keys.0, &keys.1, "c")
        .tls(Tls::ca_file(pki.path("ca.pem")));
    let error = Consumer::connect(without).unwrap_err();
    assert!(started.elapsed() < QUICK, "retried for {:?}", started.elapsed());
    assert!(matches!(error, Error::Tls { .. }), "{error:?}");

    let acknowledged = square_all(&server.tls_url(), &keys, &pki.mutual()).unwrap();
    assert_eq!(acknowledged, ENTRIES);
    assert_eq!(server.entries(&keys.2).len() as u64, ENTRIES);
}

#[test]
fn an_untrusted_server_certificate_is_a_typed_tls_error_at_once() {
    let pki = Pki::new("trusted");
    let other = Pki::new("other");
    let server = pki.server(false);
    let keys = keys("untrusted");
    let started = Instant::now();
    let config = ConsumerConfig::new(server.tls_url(), &keys.0, &keys.1, "c")
        .tls(Tls::ca_file(other.path("ca.pem")));
    let error = Consumer::connect(config).unwrap_err();
    assert!(started.elapsed() < QUICK, "retried for {:?}", started.elapsed());
    match &error {
        Error::Tls { detail } => assert!(detail.contains("certificate"), "{detail}"),
        other => panic!("{other:?}"),
    }
    // Nothing reached the server: no group, no stream.
    assert!(server.try_group_info(&keys.0, &keys.1).is_none());

    // The writer's first batch fails the same way, and is not written.
    let config = WriterConfig::new(server.tls_url(), &keys.2).tls(Tls::ca_pem(&other.ca_pem));
    let mut stage = Writer::new(config).unwrap().stage();
    let written =
        backflow::Stage::process(&mut stage, vec![Record::new().field("n", "1")], &mut |_: Vec<
            String,
        >| {});
    assert!(matches!(written, Err(Error::Tls { .. })), "{written:?}");
    assert!(server.entries(&keys.2).is_empty());
}

#[test]
fn a_plaintext_client_at_the_tls_port_gets_an_error_without_hanging() {
    let pki = Pki::new("plaintext");
    let server = pki.server(false);
    let keys = keys("plaintext");
    let port = server.tls_url().rsplit(':').next().unwrap().trim_end_matches('/').to_string();
    let schedule =
        RetrySchedule::new(Duration::from_millis(10), Duration::from_millis(10), 3).unwrap();
    let config = ConsumerConfig::new(format!("redis://127.0.0.1:{port}/"), &keys.0, &keys.1, "c")
        .reconnect(schedule);
    let started = Instant::now();
    let error = Consumer::connect(config).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    assert!(matches!(error, Error::Connection { attempts: 4, .. }), "{error:?}");
}

#[test]
fn tls_settings_that_cannot_work_are_config_errors_naming_the_field() {
    let pki = Pki::new("config");
    let url = "rediss://127.0.0.1:1/";
    let check = |tls: Tls| {
        ConsumerConfig::new(url, "s", "g", "c").tls(tls).validate().unwrap_err().to_string()
    };
    assert!(check(Tls::ca_file(pki.path("missing.pem"))).contains("`tls.ca`"));
    assert!(check(Tls::ca_pem("not PEM")).contains("`tls.ca`"));
    // A file that never ends is read up to a bound, not until memory runs out.
    #[cfg(unix)]
    assert!(check(Tls::ca_file("/dev/zero")).contains("`tls.ca`"));
    let no_cert = Tls::ca_pem(&pki.ca_pem)
        .client_cert_pem("", std::fs::read(pki.path("client.key")).unwrap());
    assert!(check(no_cert).contains("`tls.client_cert`"));
    let no_key =
        Tls::ca_pem(&pki.ca_pem).client_cert_files(pki.path("client.pem"), pki.path("ca.pem"));
    assert!(check(no_key).contains("`tls.client_key`"));
    // PEM blocks of the right kind whose contents are not what they say.
    let garbage = |label: &str| format!("-----BEGIN {label}-----\nAAAA\n-----END {label}-----\n");
    let (client_pem, client_key) = (pki.path("client.pem"), pki.path("client.key"));
    let (client_pem, client_key) =
        (std::fs::read(client_pem).unwrap(), std::fs::read(client_key).unwrap());
    assert!(check(Tls::ca_pem(garbage("CERTIFICATE"))).contains("`tls.ca`"));
    let bad_cert = Tls::ca_pem(&pki.ca_pem).client_cert_pem(garbage("CERTIFICATE"), &client_key);
    assert!(check(bad_cert).contains("`tls.client_cert`"));
    let bad_key = Tls::ca_pem(&pki.ca_pem).client_cert_pem(&client_pem, garbage("PRIVATE KEY"));
    assert!(check(bad_key).contains("`tls.client_key`"));
    // The server's key with the client's certificate.
    let other_key = std::fs::read(pki.path("server.key")).unwrap();
    let mismatched = Tls::ca_pem(&pki.ca_pem).client_cert_pem(&client_pem, other_key);
    assert!(check(mismatched).contains("`tls.client_key`"));
    assert!(ConsumerConfig::new(url, "s", "g", "c").tls(pki.mutual()).validate().is_ok());
}
