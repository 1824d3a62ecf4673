//! A client of the relay's allocation API.

use std::path::Path;

use anyhow::{Context, Result, bail};
use reqwest::{Response, StatusCode};

use crate::api::types::{
    CreatePair, CreateSession, ErrorDocument, PairDetails, SessionDetails, SessionList,
};

/// Talks to one relay's API with one token.
pub struct ApiClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

async fn check(response: Response) -> Result<Response> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let text = response.text().await.unwrap_or_default();
    match serde_json::from_str::<ErrorDocument>(&text) {
        Ok(e) => bail!("relay API: {status}: {}: {}", e.error, e.reason),
        Err(_) => bail!("relay API: {status}: {text}"),
    }
}

/// Refuses to send a token in clear text anywhere but to this host: `http://` only to a
/// loopback address or `localhost`.
fn check_scheme(base: &str) -> Result<()> {
    let url = reqwest::Url::parse(base).with_context(|| format!("{base:?} is not a URL"))?;
    match url.scheme() {
        "https" => Ok(()),
        "http" => {
            let local = match url.host() {
                Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
                None => false,
            };
            if local {
                Ok(())
            } else {
                bail!(
                    "refusing to send the API token in clear text to {base}: use https:// \
                     (plain http:// only reaches a relay on this host)"
                )
            }
        }
        other => bail!("{base}: unsupported scheme {other:?} (use https:// or http://)"),
    }
}

impl ApiClient {
    /// A client of the API at `base` (e.g. `https://relay.example.net:8443`, or
    /// `http://127.0.0.1:8080` on the relay itself). The server certificate must chain to the
    /// public web roots built into the binary (Mozilla's, as webpki-roots carries them) or to
    /// the PEM certificate(s) in `ca_cert`.
    pub fn new(base: &str, token: &str, ca_cert: Option<&Path>) -> Result<ApiClient> {
        check_scheme(base)?;
        let mut http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .https_only(base.starts_with("https:"));
        if let Some(path) = ca_cert {
            let pem = std::fs::read(path)
                .with_context(|| format!("--ca-cert: reading {}", path.display()))?;
            let certificates = reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("--ca-cert: {} is not PEM", path.display()))?;
            if certificates.is_empty() {
                bail!("--ca-cert: {} holds no certificate", path.display());
            }
            for certificate in certificates {
                http = http.add_root_certificate(certificate);
            }
        }
        Ok(ApiClient {
            base: base.trim_end_matches('/').to_string(),
            token: token.to_string(),
            http: http.build().context("building the HTTP client")?,
        })
    }

    /// Allocates a session.
    pub async fn create(&self, request: &CreateSession) -> Result<SessionDetails> {
        self.send(self.http.post(self.url("/v1/sessions")).json(request))
            .await
    }

    /// One session, with its tickets.
    pub async fn get(&self, vni: u32) -> Result<SessionDetails> {
        self.send(self.http.get(self.url(&format!("/v1/sessions/{vni}"))))
            .await
    }

    /// The token's sessions.
    pub async fn list(&self) -> Result<SessionList> {
        self.send(self.http.get(self.url("/v1/sessions"))).await
    }

    /// Allocates a stock WireGuard pair.
    pub async fn create_pair(&self, request: &CreatePair) -> Result<PairDetails> {
        self.send(self.http.post(self.url("/v1/wireguard")).json(request))
            .await
    }

    /// One WireGuard pair, with its snippets.
    pub async fn get_pair(&self, id: u32) -> Result<PairDetails> {
        self.send(self.http.get(self.url(&format!("/v1/wireguard/{id}"))))
            .await
    }

    /// The relay's drain state and what is left on it.
    pub async fn drain_state(&self) -> Result<crate::api::fleet::DrainState> {
        self.send(self.http.get(self.url("/v1/drain"))).await
    }

    /// Starts (`true`) or ends draining (an admin token).
    pub async fn set_draining(&self, on: bool) -> Result<crate::api::fleet::DrainState> {
        let url = self.url("/v1/drain");
        let request = if on {
            self.http.put(url)
        } else {
            self.http.delete(url)
        };
        self.send(request).await
    }

    /// `/readyz` (no token): whether this relay takes new sessions, and how full it is.
    pub async fn readiness(&self) -> Result<crate::api::fleet::Readiness> {
        let response = self
            .http
            .get(self.url("/readyz"))
            .send()
            .await
            .with_context(|| format!("reaching the relay API at {}", self.base))?;
        // 503 carries the same document, with the reasons.
        Ok(response.json().await?)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends `request` with the token and decodes the JSON answer (or the API's error).
    async fn send<T: serde::de::DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<T> {
        let response = request
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("reaching the relay API at {}", self.base))?;
        Ok(check(response).await?.json().await?)
    }

    /// Deletes a session.
    pub async fn delete(&self, vni: u32) -> Result<()> {
        self.delete_at(&self.url(&format!("/v1/sessions/{vni}")))
            .await
    }

    /// Deletes a WireGuard pair.
    pub async fn delete_pair(&self, id: u32) -> Result<()> {
        self.delete_at(&self.url(&format!("/v1/wireguard/{id}")))
            .await
    }

    async fn delete_at(&self, url: &str) -> Result<()> {
        let response = self
            .http
            .delete(url)
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("reaching the relay API at {}", self.base))?;
        let response = check(response).await?;
        if response.status() != StatusCode::NO_CONTENT {
            bail!("relay API: unexpected {}", response.status());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_travel_in_clear_text_only_to_this_host() {
        for ok in [
            "https://relay.example.net:8443",
            "https://198.51.100.7",
            "http://127.0.0.1:8080",
            "http://[::1]:8080/",
            "http://localhost:8080",
        ] {
            check_scheme(ok).unwrap();
            ApiClient::new(ok, "t", None).unwrap();
        }
        for refused in [
            "http://198.51.100.7:8080",
            "http://relay.example.net",
            "http://[2001:db8::1]",
        ] {
            let e = ApiClient::new(refused, "t", None)
                .err()
                .unwrap()
                .to_string();
            assert!(e.contains("clear text"), "{e}");
        }
        assert!(check_scheme("ftp://127.0.0.1").is_err());
        assert!(check_scheme("127.0.0.1:8080").is_err());
    }

    #[test]
    fn a_ca_file_without_certificates_is_an_error() {
        let path = std::env::temp_dir().join(format!("relay-ca-{}.pem", std::process::id()));
        std::fs::write(&path, "not a certificate\n").unwrap();
        let e = ApiClient::new("https://127.0.0.1:1", "t", Some(&path))
            .err()
            .unwrap();
        assert!(format!("{e:#}").contains("--ca-cert"), "{e:#}");
        std::fs::remove_file(path).unwrap();
    }
}
