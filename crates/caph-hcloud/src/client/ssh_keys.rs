//! SSH keys: create (safely retried), get, list, delete.

use reqwest::Method;
use serde::{Deserialize, Serialize};

use super::labels::check_labels;
use super::retry::Replay;
use super::types::{ErrorCode, Labels, SshKey, SshKeyId};
use super::{Client, Error, LabelSelector, decode, encode};

/// `POST /ssh_keys`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CreateSshKeyRequest {
    /// Unique name.
    pub name: String,
    /// The public key in OpenSSH format.
    pub public_key: String,
    /// Labels, checked against the label rules before sending.
    #[serde(skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
}

/// Filters of `GET /ssh_keys`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListSshKeysParams {
    /// Exact name.
    pub name: Option<String>,
    /// Exact fingerprint (MD5, colon hex).
    pub fingerprint: Option<String>,
    /// Label selector.
    pub label_selector: Option<LabelSelector>,
}

#[derive(Deserialize)]
struct SshKeyEnvelope {
    ssh_key: SshKey,
}

/// The key type and base64 blob of an OpenSSH public key, without the comment.
fn key_material(public_key: &str) -> Vec<&str> {
    public_key.split_whitespace().take(2).collect()
}

impl Client {
    /// `POST /ssh_keys`. Unlike other creates this one is retried after a lost answer: names and
    /// keys are unique, so a repeat cannot make a second key. When a repeat answers
    /// `uniqueness_error` after such a failure, the key the first attempt made is looked up by
    /// name and returned if it holds the same public key.
    pub async fn create_ssh_key(&self, request: &CreateSshKeyRequest) -> Result<SshKey, Error> {
        check_labels(&request.labels)?;
        let path = "/ssh_keys";
        let body = encode(&Method::POST, path, request)?;
        let outcome = self
            .call(Method::POST, path, &[], Some(body), Replay::UniqueName)
            .await;
        match outcome.result {
            Ok(answer) => {
                let envelope: SshKeyEnvelope = decode(&Method::POST, path, &answer)?;
                Ok(envelope.ssh_key)
            }
            Err(error)
                if outcome.ambiguous_before
                    && error.code() == Some(&ErrorCode::UniquenessError) =>
            {
                let params = ListSshKeysParams {
                    name: Some(request.name.clone()),
                    ..Default::default()
                };
                let existing = self.list_ssh_keys(&params).await?;
                let wanted = key_material(&request.public_key);
                match existing
                    .into_iter()
                    .find(|key| key.name == request.name && key_material(&key.public_key) == wanted)
                {
                    Some(key) => Ok(key),
                    None => Err(error),
                }
            }
            Err(error) => Err(error),
        }
    }

    /// `GET /ssh_keys/{id}`.
    pub async fn get_ssh_key(&self, id: SshKeyId) -> Result<SshKey, Error> {
        let envelope: SshKeyEnvelope = self.get(&format!("/ssh_keys/{id}"), &[]).await?;
        Ok(envelope.ssh_key)
    }

    /// `GET /ssh_keys`, every page.
    pub async fn list_ssh_keys(&self, params: &ListSshKeysParams) -> Result<Vec<SshKey>, Error> {
        let mut query = Vec::new();
        if let Some(name) = &params.name {
            query.push(("name", name.clone()));
        }
        if let Some(fingerprint) = &params.fingerprint {
            query.push(("fingerprint", fingerprint.clone()));
        }
        if let Some(selector) = params.label_selector.as_ref().filter(|s| !s.is_empty()) {
            query.push(("label_selector", selector.to_string()));
        }
        self.list_all("/ssh_keys", "ssh_keys", &query).await
    }

    /// `DELETE /ssh_keys/{id}`.
    pub async fn delete_ssh_key(&self, id: SshKeyId) -> Result<(), Error> {
        self.delete_raw(&format!("/ssh_keys/{id}")).await?;
        Ok(())
    }
}
