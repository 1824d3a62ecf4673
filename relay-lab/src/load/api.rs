//! The relay's API as an application server uses it, many requests at once: sessions and
//! WireGuard pairs created and deleted in bulk (from the relay host, where the lab's API
//! listens).

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering::Relaxed},
};

use anyhow::Result;
use base64::{Engine, engine::general_purpose::STANDARD};
use tokio::sync::Semaphore;

use crate::scenario::LAB_TOKEN;

/// The lab's API.
const BASE: &str = "http://127.0.0.1:8080";

/// A client of the API.
#[derive(Clone)]
pub struct Api {
    client: reqwest::Client,
}

/// Two distinct public keys for pair `i` (the relay checks their form, not the curve).
fn pair_keys(i: u64) -> (String, String) {
    let key = |side: u8| {
        let mut k = [0u8; 32];
        k[0] = side;
        k[1..9].copy_from_slice(&i.to_le_bytes());
        k[31] = 0x40;
        STANDARD.encode(k)
    };
    (key(1), key(2))
}

impl Api {
    /// A client keeping up to `concurrency` connections.
    pub fn new(concurrency: usize) -> Result<Api> {
        Ok(Api {
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(concurrency)
                .build()?,
        })
    }

    /// Creates a session; its id.
    pub async fn create_session(&self) -> Result<u32> {
        let r = self
            .client
            .post(format!("{BASE}/v1/sessions"))
            .bearer_auth(LAB_TOKEN)
            .send()
            .await?
            .error_for_status()?;
        let v: serde_json::Value = r.json().await?;
        Ok(v["vni"].as_u64().unwrap_or(0) as u32)
    }

    /// Creates WireGuard pair number `i`; its id.
    pub async fn create_pair(&self, i: u64) -> Result<u32> {
        let (a, b) = pair_keys(i);
        let r = self
            .client
            .post(format!("{BASE}/v1/wireguard"))
            .bearer_auth(LAB_TOKEN)
            .json(&serde_json::json!({ "public_keys": { "a": a, "b": b } }))
            .send()
            .await?
            .error_for_status()?;
        let v: serde_json::Value = r.json().await?;
        Ok(v["id"].as_u64().unwrap_or(0) as u32)
    }

    /// Deletes session `vni`.
    pub async fn delete_session(&self, vni: u32) -> Result<()> {
        self.client
            .delete(format!("{BASE}/v1/sessions/{vni}"))
            .bearer_auth(LAB_TOKEN)
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }

    /// Deletes pair `id`.
    pub async fn delete_pair(&self, id: u32) -> Result<()> {
        self.client
            .delete(format!("{BASE}/v1/wireguard/{id}"))
            .bearer_auth(LAB_TOKEN)
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }
}

/// Runs `make(i)` for `i` in `range`, `concurrency` at a time; returns what succeeded and how
/// many failed.
pub async fn bulk<F, Fut>(
    range: std::ops::Range<u64>,
    concurrency: usize,
    make: F,
) -> (Vec<u32>, u64)
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = Result<u32>> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(concurrency));
    let failed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in range {
        let permit = permits.clone().acquire_owned().await.expect("never closed");
        let fut = make(i);
        let failed = failed.clone();
        tasks.push(tokio::spawn(async move {
            let r = fut.await;
            drop(permit);
            match r {
                Ok(id) => Some(id),
                Err(_) => {
                    failed.fetch_add(1, Relaxed);
                    None
                }
            }
        }));
    }
    let mut ids = Vec::with_capacity(tasks.len());
    for t in tasks {
        if let Ok(Some(id)) = t.await {
            ids.push(id);
        }
    }
    (ids, failed.load(Relaxed))
}
