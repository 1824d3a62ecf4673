//! A client of the relay's allocation API.

use anyhow::{Context, Result, bail};
use reqwest::{Response, StatusCode};

use crate::api::types::{CreateSession, ErrorDocument, SessionDetails, SessionList};

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

impl ApiClient {
    /// A client of the API at `base` (e.g. `http://127.0.0.1:8080`).
    pub fn new(base: &str, token: &str) -> Result<ApiClient> {
        Ok(ApiClient {
            base: base.trim_end_matches('/').to_string(),
            token: token.to_string(),
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(10))
                .build()
                .context("building the HTTP client")?,
        })
    }

    /// Allocates a session.
    pub async fn create(&self, request: &CreateSession) -> Result<SessionDetails> {
        let response = self
            .http
            .post(format!("{}/v1/sessions", self.base))
            .bearer_auth(&self.token)
            .json(request)
            .send()
            .await
            .with_context(|| format!("reaching the relay API at {}", self.base))?;
        Ok(check(response).await?.json().await?)
    }

    /// One session, with its tickets.
    pub async fn get(&self, vni: u32) -> Result<SessionDetails> {
        let response = self
            .http
            .get(format!("{}/v1/sessions/{vni}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("reaching the relay API at {}", self.base))?;
        Ok(check(response).await?.json().await?)
    }

    /// The token's sessions.
    pub async fn list(&self) -> Result<SessionList> {
        let response = self
            .http
            .get(format!("{}/v1/sessions", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("reaching the relay API at {}", self.base))?;
        Ok(check(response).await?.json().await?)
    }

    /// Deletes a session.
    pub async fn delete(&self, vni: u32) -> Result<()> {
        let response = self
            .http
            .delete(format!("{}/v1/sessions/{vni}", self.base))
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
