//! The two Cloud SQL Admin API calls a connector makes, on the gateway's
//! own HTTP stack: `connectSettings` (addresses, server CA, DNS name,
//! region) and `generateEphemeralCert` (a client certificate for a public
//! key). The JSON readers are pure, so the decisions are unit-tested.

use serde_json::Value;

use super::verify::ServerIdentity;
use super::CloudSqlError;
use crate::config::{InstanceName, IpType};

/// What connectSettings says about an instance, as the dial needs it.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The address (IP or, for PSC, the DNS name) of the server-side proxy.
    pub address: String,
    /// PEM of the instance's server CA (one or more certificates).
    pub server_ca_pem: String,
    pub identity: ServerIdentity,
    pub database_version: String,
}

/// Reads a connectSettings answer for `name`, picking the `ip_type` address.
pub fn parse_settings(
    name: &InstanceName,
    ip_type: IpType,
    body: &Value,
) -> Result<Settings, CloudSqlError> {
    let region = body["region"].as_str().unwrap_or_default();
    if !region.is_empty() && region != name.region {
        let fixed = InstanceName {
            region: region.to_string(),
            ..name.clone()
        };
        return Err(CloudSqlError::RegionMismatch {
            instance: name.to_string(),
            named: name.region.clone(),
            actual: region.to_string(),
            fixed: fixed.to_string(),
        });
    }
    let dns_name = body["dnsName"]
        .as_str()
        .filter(|d| !d.is_empty())
        .map(|d| d.trim_end_matches('.').to_string());
    let address = pick_address(name, ip_type, body, dns_name.as_deref())?;
    let server_ca_pem = body["serverCaCert"]["cert"]
        .as_str()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| admin(name, "connectSettings has no serverCaCert.cert".into()))?
        .to_string();
    let cas = matches!(
        body["serverCaMode"].as_str(),
        Some("GOOGLE_MANAGED_CAS_CA" | "CUSTOMER_MANAGED_CAS_CA")
    );
    let identity = match (cas, dns_name) {
        (true, Some(dns)) => ServerIdentity::Dns(dns),
        (true, None) => {
            return Err(admin(
                name,
                "the instance's server CA is CA-service-issued but connectSettings has no dnsName to verify".into(),
            ))
        }
        // The legacy per-instance CA names the server `project:instance`.
        (false, _) => ServerIdentity::CommonName(format!("{}:{}", name.project, name.instance)),
    };
    Ok(Settings {
        address,
        server_ca_pem,
        identity,
        database_version: body["databaseVersion"].as_str().unwrap_or_default().into(),
    })
}

fn pick_address(
    name: &InstanceName,
    ip_type: IpType,
    body: &Value,
    dns_name: Option<&str>,
) -> Result<String, CloudSqlError> {
    let ips: Vec<(&str, &str)> = body["ipAddresses"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|ip| Some((ip["type"].as_str()?, ip["ipAddress"].as_str()?)))
                .collect()
        })
        .unwrap_or_default();
    let want = match ip_type {
        IpType::Private => "PRIVATE",
        IpType::Public => "PRIMARY",
        IpType::Psc => "",
    };
    let found = if ip_type == IpType::Psc {
        dns_name
            .filter(|_| body["pscEnabled"].as_bool().unwrap_or(false))
            .map(str::to_string)
    } else {
        ips.iter()
            .find(|(t, _)| *t == want)
            .map(|(_, a)| a.to_string())
    };
    found.ok_or_else(|| {
        let mut has: Vec<&str> = ips
            .iter()
            .map(|(t, _)| match *t {
                "PRIVATE" => "private",
                "PRIMARY" => "public",
                other => other,
            })
            .collect();
        if body["pscEnabled"].as_bool().unwrap_or(false) {
            has.push("psc");
        }
        CloudSqlError::NoAddress {
            instance: name.to_string(),
            ip_type: format!("{ip_type:?}").to_lowercase(),
            has: if has.is_empty() {
                "none".into()
            } else {
                has.join(", ")
            },
        }
    })
}

fn admin(name: &InstanceName, why: String) -> CloudSqlError {
    CloudSqlError::Admin {
        instance: name.to_string(),
        why,
    }
}

/// An Admin API failure, named with its fix.
pub fn status_error(name: &InstanceName, status: u16, body: &str) -> CloudSqlError {
    let message = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_default();
    match status {
        404 => CloudSqlError::NotFound {
            instance: name.to_string(),
        },
        403 => CloudSqlError::Forbidden {
            instance: name.to_string(),
            message,
        },
        _ => admin(name, format!("HTTP {status} {message}")),
    }
}

fn instance_url(endpoint: &str, name: &InstanceName) -> String {
    format!(
        "{endpoint}/sql/v1beta4/projects/{}/instances/{}",
        name.project, name.instance
    )
}

/// `GET …/connectSettings`.
pub async fn connect_settings(
    http: &reqwest::Client,
    endpoint: &str,
    name: &InstanceName,
    token: Option<&str>,
) -> Result<Value, CloudSqlError> {
    let mut req = http.get(format!("{}/connectSettings", instance_url(endpoint, name)));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    send(name, req).await
}

/// `POST …:generateEphemeralCert`; returns the certificate's PEM.
pub async fn ephemeral_cert(
    http: &reqwest::Client,
    endpoint: &str,
    name: &InstanceName,
    public_key_pem: &str,
    login_token: Option<&str>,
    token: Option<&str>,
) -> Result<String, CloudSqlError> {
    let mut body = serde_json::json!({ "public_key": public_key_pem });
    if let Some(t) = login_token {
        body["access_token"] = Value::String(t.to_string());
    }
    let mut req = http
        .post(format!(
            "{}:generateEphemeralCert",
            instance_url(endpoint, name)
        ))
        .json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let answer = send(name, req).await?;
    answer["ephemeralCert"]["cert"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| {
            admin(
                name,
                "generateEphemeralCert answered without ephemeralCert.cert".into(),
            )
        })
}

async fn send(name: &InstanceName, req: reqwest::RequestBuilder) -> Result<Value, CloudSqlError> {
    let resp = req.send().await.map_err(|e| admin(name, e.to_string()))?;
    let status = resp.status().as_u16();
    let text = resp.text().await.map_err(|e| admin(name, e.to_string()))?;
    if !(200..300).contains(&status) {
        return Err(status_error(name, status, &text));
    }
    serde_json::from_str(&text).map_err(|e| admin(name, format!("answer is not JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn name() -> InstanceName {
        "p:us-central1:db".parse().unwrap()
    }

    fn body() -> Value {
        json!({
            "kind": "sql#connectSettings",
            "serverCaCert": {"cert": "-----BEGIN CERTIFICATE-----\n"},
            "ipAddresses": [
                {"type": "PRIMARY", "ipAddress": "34.1.2.3"},
                {"type": "PRIVATE", "ipAddress": "10.0.0.3"}
            ],
            "region": "us-central1",
            "databaseVersion": "POSTGRES_16",
            "backendType": "SECOND_GEN",
            "dnsName": "abc.us-central1.sql.goog.",
            "pscEnabled": false,
            "serverCaMode": "GOOGLE_MANAGED_INTERNAL_CA"
        })
    }

    #[test]
    fn picks_the_address_and_identity() {
        let s = parse_settings(&name(), IpType::Private, &body()).unwrap();
        assert_eq!(s.address, "10.0.0.3");
        assert_eq!(s.identity, ServerIdentity::CommonName("p:db".into()));
        assert_eq!(s.database_version, "POSTGRES_16");
        let s = parse_settings(&name(), IpType::Public, &body()).unwrap();
        assert_eq!(s.address, "34.1.2.3");
        let mut cas = body();
        cas["serverCaMode"] = json!("GOOGLE_MANAGED_CAS_CA");
        let s = parse_settings(&name(), IpType::Private, &cas).unwrap();
        assert_eq!(
            s.identity,
            ServerIdentity::Dns("abc.us-central1.sql.goog".into())
        );
        cas["pscEnabled"] = json!(true);
        let s = parse_settings(&name(), IpType::Psc, &cas).unwrap();
        assert_eq!(s.address, "abc.us-central1.sql.goog");
    }

    #[test]
    fn names_what_is_wrong() {
        let e = parse_settings(&name(), IpType::Psc, &body())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no psc address") && e.contains("public, private"),
            "{e}"
        );
        let mut b = body();
        b["ipAddresses"] = json!([{"type": "PRIMARY", "ipAddress": "34.1.2.3"}]);
        let e = parse_settings(&name(), IpType::Private, &b)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no private address") && e.contains("it has: public"),
            "{e}"
        );
        b["region"] = json!("europe-west1");
        let e = parse_settings(&name(), IpType::Public, &b)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("europe-west1") && e.contains("p:europe-west1:db"),
            "{e}"
        );
        let e = status_error(&name(), 403, r#"{"error":{"message":"denied"}}"#).to_string();
        assert!(
            e.contains("roles/cloudsql.client") && e.contains("denied"),
            "{e}"
        );
        let e = status_error(&name(), 404, "").to_string();
        assert!(e.contains("does not exist"), "{e}");
    }
}
