//! A real OpenSSH server on loopback (sshd from Debian's openssh-server),
//! and the real `ssh`/`scp` clients going through `custody connect --stdio`.

use super::*;

/// The upstream account the gateway logs in as.
pub const SSH_USER: &str = "custodytest";

pub struct Sshd {
    pub port: u16,
    pub dir: PathBuf,
    /// The server's host key as a known_hosts line ("ssh-ed25519 AAAA...").
    pub host_pub: String,
    /// The gateway's private key for the upstream (authorized there).
    pub gw_key: PathBuf,
    _child: Child,
}

static SSHD: OnceLock<Sshd> = OnceLock::new();

pub fn sshd() -> &'static Sshd {
    SSHD.get_or_init(start_sshd)
}

pub fn keygen(path: &Path) {
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "custody-test", "-f"])
        .arg(path)
        .status()
        .expect("ssh-keygen (openssh-client)");
    assert!(st.success(), "ssh-keygen failed");
}

fn ensure_user() {
    let known = Command::new("id")
        .arg(SSH_USER)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !known {
        let st = Command::new("useradd")
            .args(["-m", "-s", "/bin/bash", SSH_USER])
            .status()
            .expect("useradd");
        assert!(
            st.success(),
            "useradd {SSH_USER} failed (tests run as root)"
        );
    }
    // Without PAM, sshd treats a locked password ("!") as a locked account.
    let _ = Command::new("usermod").args(["-p", "*", SSH_USER]).status();
}

fn start_sshd() -> Sshd {
    ensure_user();
    let dir = tempfile::Builder::new()
        .prefix("custody-sshd-")
        .tempdir()
        .unwrap()
        .keep();
    let host = dir.join("host_ed25519");
    let gw_key = dir.join("gateway_key");
    keygen(&host);
    keygen(&gw_key);
    std::fs::copy(gw_key.with_extension("pub"), dir.join("authorized_keys")).unwrap();
    // sshd reads authorized_keys as the target user.
    for p in [dir.clone(), dir.join("authorized_keys")] {
        Command::new("chmod").arg("a+rX").arg(&p).status().unwrap();
    }
    let port = free_port();
    let conf = dir.join("sshd_config");
    std::fs::write(
        &conf,
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {host}\nAuthorizedKeysFile {keys}\nPidFile {dir}/sshd.pid\nUsePAM no\nStrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nAcceptEnv LANG LC_* CUSTODY_AUDIT_ID TRACEPARENT\nSubsystem sftp internal-sftp\nSubsystem custody-echo /bin/cat\nAllowTcpForwarding yes\nLogLevel VERBOSE\n",
            host = host.display(),
            keys = dir.join("authorized_keys").display(),
            dir = dir.display(),
        ),
    )
    .unwrap();
    std::fs::create_dir_all("/run/sshd").unwrap();
    let child = spawn_tied(
        &format!("/usr/sbin/sshd -D -e -f '{}'", conf.display()),
        &dir.join("sshd.log"),
        &format!("rm -rf '{}'", dir.display()),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "sshd did not start: {}",
            std::fs::read_to_string(dir.join("sshd.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let host_pub = std::fs::read_to_string(host.with_extension("pub")).unwrap();
    Sshd {
        port,
        dir,
        host_pub: host_pub.trim().to_string(),
        gw_key,
        _child: child,
    }
}

impl Sshd {
    /// A `[[connections]]` entry of kind ssh for this server.
    pub fn connection(&self, name: &str, extra: &str) -> String {
        format!(
            "\n[[connections]]\nname = \"{name}\"\nkind = \"ssh\"\nhost = \"127.0.0.1\"\nport = {port}\nuser = \"{SSH_USER}\"\nprivate_key = \"file:{key}\"\nhost_key = \"{host}\"\nallow = [\"user:alice@example.com\"]\n{extra}\n",
            port = self.port,
            key = self.gw_key.display(),
            host = self.host_pub,
        )
    }
}

/// `ssh`/`scp` through `custody connect --stdio` as `token`'s owner.
pub fn ssh_client(program: &str, gw: &Gateway, token: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.args([
        "-F",
        "/dev/null",
        "-o",
        &format!(
            "ProxyCommand={} connect --stdio %n --gateway {}",
            bin(),
            gw.url
        ),
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "BatchMode=yes",
    ]);
    cmd.env("CUSTODY_TOKEN", token);
    cmd
}

/// Runs a command with a deadline: (exit code, stdout, stderr).
pub fn run(mut cmd: Command, stdin: Option<&str>, limit: Duration) -> (i32, String, String) {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    if let (Some(text), Some(mut sin)) = (stdin, child.stdin.take()) {
        let text = text.to_string();
        std::thread::spawn(move || {
            use std::io::Write;
            for line in text.split_inclusive('\n') {
                let _ = sin.write_all(line.as_bytes());
                let _ = sin.flush();
                std::thread::sleep(Duration::from_millis(300));
            }
        });
    }
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "command did not finish within {limit:?}: stdout {:?} stderr {:?}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The audit id `custody connect --stdio` printed on stderr.
pub fn audit_of(stderr: &str) -> String {
    stderr
        .split("custody: session ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no audit id in {stderr:?}"))
        .to_string()
}
