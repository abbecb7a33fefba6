//! A stand-in Cloud SQL: the Admin API's two connector calls (axum), a
//! metadata server handing out a service account's token, and the
//! instance's server-side proxy (TLS 1.3 on 127.x.y.z:3307 requiring a
//! client certificate from the instance CA) in front of the real PostgreSQL.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Json;
use rsa::pkcs1::EncodeRsaPublicKey;
use rsa::pkcs8::DecodePublicKey;
use serde_json::{json, Value};

pub const PROJECT: &str = "test-project";
pub const REGION: &str = "us-central1";
pub const INSTANCE: &str = "prod-db";
/// The token the metadata stand-in hands out: the IAM role's password.
pub const IAM_TOKEN: &str = "ya29.stand-in-token-5c1e";
pub const SA_EMAIL: &str = "custody@test-project.iam.gserviceaccount.com";
pub const IAM_USER: &str = "custody@test-project.iam";

/// What the Admin API stand-in answers, changeable during a test.
pub struct Behaviour {
    /// 200, or the HTTP status both calls answer (403, 404).
    pub status: u16,
    pub region: String,
    /// Lifetime of issued client certificates.
    pub cert_life: Duration,
    pub cert_calls: usize,
    pub settings_calls: usize,
    /// The `access_token` of the last generateEphemeralCert request.
    pub last_access_token: Option<String>,
    /// Which address types connectSettings lists.
    pub private: bool,
    /// serverCaMode GOOGLE_MANAGED_CAS_CA with this dnsName; else the legacy CA.
    pub cas_dns: Option<String>,
}

pub struct CloudSql {
    pub admin_url: String,
    pub metadata_host: String,
    pub behaviour: Arc<Mutex<Behaviour>>,
    /// The proxy's loopback address (its port is 3307).
    pub ip: String,
    /// TLS handshakes the proxy completed.
    pub handshakes: Arc<Mutex<usize>>,
}

struct Ca {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pem: String,
}

fn ca() -> Ca {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        "Google Cloud SQL Server CA (stand-in)",
    );
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        issuer: rcgen::Issuer::new(params, key),
    }
}

/// An RSA public key as submitted (SPKI PEM), for rcgen to sign.
struct SubmittedKey(Vec<u8>);

impl rcgen::PublicKeyData for SubmittedKey {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_RSA_SHA256
    }
}

#[derive(Clone)]
struct AppState {
    behaviour: Arc<Mutex<Behaviour>>,
    ca: Arc<Ca>,
    ip: String,
}

fn refusal(status: u16) -> (StatusCode, Json<Value>) {
    let code = StatusCode::from_u16(status).unwrap();
    let message = match status {
        403 => "The client is not authorized to make this request.",
        404 => "The Cloud SQL instance does not exist.",
        _ => "error",
    };
    (
        code,
        Json(json!({"error": {"code": status, "message": message}})),
    )
}

async fn connect_settings(
    State(s): State<AppState>,
    Path((project, instance)): Path<(String, String)>,
) -> (StatusCode, Json<Value>) {
    let mut b = s.behaviour.lock().unwrap();
    b.settings_calls += 1;
    if b.status != 200 || project != PROJECT || instance != INSTANCE {
        return refusal(if b.status != 200 { b.status } else { 404 });
    }
    let mut ips = vec![json!({"type": "PRIMARY", "ipAddress": "192.0.2.1"})];
    if b.private {
        ips.push(json!({"type": "PRIVATE", "ipAddress": s.ip}));
    }
    (
        StatusCode::OK,
        Json(json!({
            "kind": "sql#connectSettings",
            "serverCaCert": {"kind": "sql#sslCert", "cert": s.ca.pem},
            "ipAddresses": ips,
            "region": b.region,
            "databaseVersion": "POSTGRES_15",
            "backendType": "SECOND_GEN",
            "pscEnabled": false,
            "dnsName": b.cas_dns.clone().unwrap_or_default(),
            "serverCaMode": if b.cas_dns.is_some() { "GOOGLE_MANAGED_CAS_CA" } else { "GOOGLE_MANAGED_INTERNAL_CA" }
        })),
    )
}

async fn generate_cert(
    State(s): State<AppState>,
    Path((project, instance)): Path<(String, String)>,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let mut b = s.behaviour.lock().unwrap();
    b.cert_calls += 1;
    let Some(instance) = instance.strip_suffix(":generateEphemeralCert") else {
        return refusal(404);
    };
    if b.status != 200 || project != PROJECT || instance != INSTANCE {
        return refusal(if b.status != 200 { b.status } else { 404 });
    }
    b.last_access_token = body["access_token"].as_str().map(str::to_string);
    let pem = body["public_key"].as_str().unwrap_or_default();
    let Ok(key) = rsa::RsaPublicKey::from_public_key_pem(pem) else {
        return refusal(400);
    };
    let key = SubmittedKey(key.to_pkcs1_der().unwrap().as_bytes().to_vec());
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "custody-ephemeral");
    let now = SystemTime::now();
    params.not_before = (now - Duration::from_secs(1)).into();
    params.not_after = (now + b.cert_life).into();
    let cert = params.signed_by(&key, &s.ca.issuer).unwrap();
    (
        StatusCode::OK,
        Json(json!({"ephemeralCert": {"kind": "sql#sslCert", "cert": cert.pem()}})),
    )
}

/// A metadata-server stand-in: the default service account's email and token.
fn metadata() -> String {
    let router = axum::Router::new()
        .route(
            "/computeMetadata/v1/instance/service-accounts/default/email",
            get(|| async { SA_EMAIL }),
        )
        .route(
            "/computeMetadata/v1/instance/service-accounts/default/token",
            get(|| async {
                Json(json!({"access_token": IAM_TOKEN, "expires_in": 3599, "token_type": "Bearer"}))
            }),
        );
    super::serve_router(router)
}

impl CloudSql {
    /// Starts the stand-ins; the proxy presents `server_cn` (the legacy
    /// identity is "test-project:prod-db").
    pub fn start(server_cn: &str) -> CloudSql {
        CloudSql::start_with(server_cn, None)
    }

    /// As `start`, for a CA-service-issued server certificate: connectSettings
    /// says GOOGLE_MANAGED_CAS_CA with `dns` as dnsName, and the proxy's
    /// certificate carries `san` as its DNS name.
    pub fn start_cas(dns: &str, san: &str) -> CloudSql {
        let sql = CloudSql::start_with("not-the-instance-name", Some(san));
        sql.set(|b| b.cas_dns = Some(dns.into()));
        sql
    }

    fn start_with(server_cn: &str, san: Option<&str>) -> CloudSql {
        let ca = Arc::new(ca());
        let ip = format!(
            "127.{}.{}.{}",
            1 + rand_byte() % 250,
            rand_byte(),
            1 + rand_byte() % 250
        );
        let behaviour = Arc::new(Mutex::new(Behaviour {
            status: 200,
            region: REGION.into(),
            cert_life: Duration::from_secs(3600),
            cert_calls: 0,
            settings_calls: 0,
            last_access_token: None,
            private: true,
            cas_dns: None,
        }));
        let state = AppState {
            behaviour: behaviour.clone(),
            ca: ca.clone(),
            ip: ip.clone(),
        };
        let router = axum::Router::new()
            .route(
                "/sql/v1beta4/projects/{project}/instances/{instance}/connectSettings",
                get(connect_settings),
            )
            .route(
                "/sql/v1beta4/projects/{project}/instances/{instance}",
                post(generate_cert),
            )
            .with_state(state);
        let admin_url = format!("http://{}", super::serve_router(router));
        let handshakes = Arc::new(Mutex::new(0));
        proxy(&ca, &ip, server_cn, san, handshakes.clone());
        CloudSql {
            admin_url,
            metadata_host: metadata(),
            behaviour,
            ip,
            handshakes,
        }
    }

    pub fn name(&self) -> String {
        format!("{PROJECT}:{REGION}:{INSTANCE}")
    }

    pub fn set(&self, f: impl FnOnce(&mut Behaviour)) {
        f(&mut self.behaviour.lock().unwrap());
    }

    pub fn cert_calls(&self) -> usize {
        self.behaviour.lock().unwrap().cert_calls
    }
}

fn rand_byte() -> u8 {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    ((nanos ^ (n.wrapping_mul(2_654_435_761)) ^ std::process::id()) >> (n % 3 * 8)) as u8
}

/// The server-side proxy: TLS 1.3 only, a client certificate from the
/// instance CA required, then bytes to and from PostgreSQL.
fn proxy(ca: &Ca, ip: &str, server_cn: &str, san: Option<&str>, handshakes: Arc<Mutex<usize>>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let sans: Vec<String> = san.into_iter().map(str::to_string).collect();
    let mut params = rcgen::CertificateParams::new(sans).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, server_cn);
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    let ca_der = rustls_pemfile::certs(&mut ca.pem.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca_der).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let key_der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![cert.der().clone()], key_der)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = std::net::TcpListener::bind((ip, 3307)).unwrap();
    let pg_port = super::pg().port;
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            listener.set_nonblocking(true).unwrap();
            let l = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((tcp, _)) = l.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let handshakes = handshakes.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    *handshakes.lock().unwrap() += 1;
                    let Ok(mut up) = tokio::net::TcpStream::connect(("127.0.0.1", pg_port)).await
                    else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
                });
            }
        });
    });
}
