//! Cloud SQL instance connection names (`project:region:instance`), parsed
//! once here so `config check` and the connector read them alike.

use serde::Deserialize;

/// Which of the instance's addresses the gateway dials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum IpType {
    /// The VPC address (`PRIVATE` in connectSettings).
    #[default]
    Private,
    /// The public address (`PRIMARY` in connectSettings).
    Public,
    /// Private Service Connect: the instance's DNS name.
    Psc,
}

/// `[cloud_sql]`: where the Cloud SQL Admin API lives.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudSqlConfig {
    /// Admin API root; plain-http loopback endpoints get no token (tests, emulators).
    #[serde(default = "default_admin")]
    pub admin_endpoint: toml::Spanned<String>,
}

impl Default for CloudSqlConfig {
    fn default() -> Self {
        CloudSqlConfig {
            admin_endpoint: default_admin(),
        }
    }
}

fn default_admin() -> toml::Spanned<String> {
    toml::Spanned::new(0..0, "https://sqladmin.googleapis.com".into())
}

/// A parsed instance connection name. `project` keeps a domain prefix
/// (`example.com:my-project`), as the Admin API's path and the server
/// certificate's legacy common name both spell it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InstanceName {
    pub project: String,
    pub region: String,
    pub instance: String,
}

impl std::fmt::Display for InstanceName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.project, self.region, self.instance)
    }
}

impl std::str::FromStr for InstanceName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!("instance {s:?} is not an instance connection name: use PROJECT:REGION:INSTANCE (e.g. \"my-project:us-central1:prod-db\"; a domain-scoped project is \"example.com:my-project:us-central1:prod-db\"), as `gcloud sql instances describe INSTANCE --format='value(connectionName)'` prints it")
        };
        let parts: Vec<&str> = s.split(':').collect();
        let (project, region, instance) = match parts.as_slice() {
            [p, r, i] => (p.to_string(), *r, *i),
            [d, p, r, i] if is_domain(d) => (format!("{d}:{p}"), *r, *i),
            _ => return Err(bad()),
        };
        let id = |v: &str| {
            !v.is_empty()
                && v.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        };
        let bare = project.rsplit(':').next().unwrap_or_default();
        if !id(bare) || !id(region) || !id(instance) {
            return Err(bad());
        }
        Ok(InstanceName {
            project,
            region: region.into(),
            instance: instance.into(),
        })
    }
}

fn is_domain(d: &str) -> bool {
    d.contains('.')
        && d.split('.')
            .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_connection_names() {
        let n: InstanceName = "my-project:us-central1:prod-db".parse().unwrap();
        assert_eq!(
            (n.project.as_str(), n.region.as_str(), n.instance.as_str()),
            ("my-project", "us-central1", "prod-db")
        );
        let d: InstanceName = "example.com:my-project:europe-west1:db".parse().unwrap();
        assert_eq!(d.project, "example.com:my-project");
        assert_eq!(d.to_string(), "example.com:my-project:europe-west1:db");
        for bad in [
            "",
            "prod-db",
            "p:r",
            "p::i",
            "p:r:i:x",
            "example:p:r:i",
            "P:r:i",
            "p:r:i/x",
            "p r:r:i",
        ] {
            assert!(bad.parse::<InstanceName>().is_err(), "{bad:?} refused");
        }
    }
}
