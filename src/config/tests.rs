//! Config parsing and validation.

mod parsing {
    use super::super::*;

    const BASE: &str = r#"
[identity]
audiences = ["http://127.0.0.1:8080"]
[[identity.issuers]]
issuer = "http://127.0.0.1:9000"
[recording]
store = "file:///tmp/rec"
"#;

    #[test]
    fn plain_password_is_refused_with_position() {
        let text = format!(
            "{BASE}\n[[connections]]\nname = \"pg\"\nkind = \"postgres\"\nhost = \"h\"\ndatabase = \"d\"\nuser = \"u\"\npassword = \"hunter2\"\n"
        );
        let err = Config::parse("c.toml", &text).unwrap_err().to_string();
        assert!(err.contains("c.toml:15:12"), "{err}");
        assert!(err.contains("plain secret"), "{err}");
        assert!(
            !err.contains("hunter2"),
            "the refusal must not echo the secret: {err}"
        );
    }

    #[test]
    fn unknown_key_and_bad_member_are_located() {
        let err = Config::parse("c.toml", &format!("{BASE}\nbogus = 1\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("c.toml:9:1"), "{err}");
        let text = format!(
            "{BASE}\n[[connections]]\nname = \"pg\"\nkind = \"postgres\"\nhost = \"h\"\ndatabase = \"d\"\nuser = \"u\"\npassword = \"env:X\"\nallow = [\"alice@example.com\"]\n"
        );
        let err = Config::parse("c.toml", &text).unwrap_err().to_string();
        assert!(err.contains(":16:10:"), "{err}");
    }

    #[test]
    fn issuer_http_only_on_loopback() {
        assert!(check_issuer_url("http://127.0.0.1:9000").is_ok());
        assert!(check_issuer_url("http://localhost:9000/x").is_ok());
        assert!(check_issuer_url("https://accounts.google.com").is_ok());
        assert!(check_issuer_url("http://idp.example.com").is_err());
    }

    #[test]
    fn server_limits_and_trusted_proxies_are_checked() {
        let ok = format!("[server]\nstartup_timeout = \"5s\"\nheader_read_timeout = \"2s\"\ntrusted_proxies = [\"10.0.0.0/8\", \"::1\"]\n{BASE}");
        let c = Config::parse("c.toml", &ok).unwrap();
        assert_eq!(c.server.startup_timeout, Duration::from_secs(5));
        assert_eq!(c.server.header_read_timeout, Duration::from_secs(2));
        let bad = format!(
            "[server]\nstartup_timeout = \"0s\"\ntrusted_proxies = [\"10.0.0.0/33\"]\n{BASE}"
        );
        let err = Config::parse("c.toml", &bad).unwrap_err().to_string();
        assert!(
            err.contains("c.toml:3:20") && err.contains("\"10.0.0.0/33\""),
            "{err}"
        );
        assert!(
            err.contains("server.startup_timeout must be above zero"),
            "{err}"
        );
        let d = Config::parse("c.toml", BASE).unwrap().server;
        assert_eq!(
            (d.startup_timeout, d.header_read_timeout),
            (Duration::from_secs(30), Duration::from_secs(10))
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("512KiB").unwrap(), 512 << 10);
        assert_eq!(parse_size("100").unwrap(), 100);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("9999999999999999999GiB").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("soon").is_err());
    }
}

mod reachability {
    use super::super::*;

    #[test]
    fn unusable_settings_are_reported() {
        let text = "[identity]\naudiences = [\"a\"]\n[[identity.issuers]]\nissuer = \"https://i\"\n[[connections]]\nname = \"pg\"\nkind = \"postgres\"\nhost = \"h\"\ndatabase = \"d\"\nuser = \"u\"\npassword = \"env:P\"\nhost_key = \"ssh-ed25519 AAAA\"\n";
        let err = Config::parse("c.toml", text).unwrap_err().to_string();
        assert!(err.contains("empty allow list"), "{err}");
        assert!(err.contains("never uses host_key"), "{err}");
    }

    #[test]
    fn ssh_subsystems_are_names_and_only_on_ssh() {
        let conn = |kind: &str, subs: &str| {
            format!("[identity]\naudiences = [\"a\"]\n[[identity.issuers]]\nissuer = \"https://i\"\n[[connections]]\nname = \"c\"\nkind = \"{kind}\"\nhost = \"h\"\nuser = \"u\"\nprivate_key = \"env:K\"\nhost_key = \"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGm9n+7wGfXNXhcz6kCzH3sNDX0P3G1cvbtpXIGsq1bb\"\nallow = [\"user:a@example.com\"]\nsubsystems = {subs}\n")
        };
        assert!(Config::parse("c.toml", &conn("ssh", "[\"netconf\"]")).is_ok());
        let err = Config::parse("c.toml", &conn("ssh", "[\"net conf\", \"sftp\"]"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not a subsystem name"), "{err}");
        assert!(err.contains("sftp is always allowed"), "{err}");
    }
}

mod cloud_sql {
    use super::super::*;

    const BASE: &str = "[identity]\naudiences = [\"a\"]\n[[identity.issuers]]\nissuer = \"https://i\"\n[[connections]]\nname = \"pg\"\nkind = \"postgres\"\ndatabase = \"d\"\nallow = [\"user:a@example.com\"]\n";

    fn check(extra: &str) -> String {
        match Config::parse("c.toml", &format!("{BASE}{extra}")) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn instance_replaces_host_and_iam_replaces_password() {
        assert_eq!(
            check("instance = \"p:us-central1:db\"\nuser = \"u\"\npassword = \"env:P\"\n"),
            ""
        );
        assert_eq!(
            check(
                "instance = \"example.com:p:us-central1:db\"\nip_type = \"psc\"\niam_auth = true\n"
            ),
            ""
        );
        let c = Config::parse(
            "c.toml",
            &format!("[cloud_sql]\nadmin_endpoint = \"http://127.0.0.1:9/\"\n{BASE}instance = \"p:r:i\"\niam_auth = true\n"),
        )
        .unwrap();
        assert_eq!(c.connections[0].cloud_sql_admin, "http://127.0.0.1:9");
        assert_eq!(c.connections[0].cloud_sql().unwrap().instance, "i");
        let err = check("user = \"u\"\npassword = \"env:P\"\n");
        assert!(err.contains("needs `host`"), "{err}");
    }

    #[test]
    fn conflicts_are_located() {
        for field in [
            "host = \"h\"",
            "port = 5432",
            "tls = \"require\"",
            "ca_file = \"/ca.pem\"",
        ] {
            let err = check(&format!(
                "instance = \"p:r:i\"\n{field}\nuser = \"u\"\npassword = \"env:P\"\n"
            ));
            let key = field.split(' ').next().unwrap();
            assert!(err.contains("c.toml:10:12:"), "{err}");
            assert!(
                err.contains(&format!("instance together with {key}")),
                "{err}"
            );
        }
        let err = check("instance = \"p:us-central1\"\nuser = \"u\"\npassword = \"env:P\"\n");
        assert!(
            err.contains("c.toml:10:12:") && err.contains("PROJECT:REGION:INSTANCE"),
            "{err}"
        );
        let err = check("instance = \"p:r:i\"\niam_auth = true\npassword = \"env:P\"\n");
        assert!(
            err.contains("c.toml:12:12:") && err.contains("iam_auth together with password"),
            "{err}"
        );
        let err = check("host = \"h\"\nuser = \"u\"\npassword = \"env:P\"\niam_auth = true\n");
        assert!(
            err.contains("c.toml:13:12:") && err.contains("without `instance`"),
            "{err}"
        );
        let err = Config::parse(
            "c.toml",
            &format!("[cloud_sql]\nadmin_endpoint = \"http://sqladmin.example\"\n{BASE}host = \"h\"\nuser = \"u\"\npassword = \"env:P\"\n"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("c.toml:2:18:") && err.contains("cloud_sql.admin_endpoint"),
            "{err}"
        );
    }
}
