//! Actions: get one, or many at once in batches.

use std::collections::HashMap;

use serde::Deserialize;

use super::types::{Action, ActionId};
use super::{Client, Error};

/// Ids per `GET /actions?id=..`: the Go client's batch, which keeps URLs short and fits the
/// API's default page of 25 entries, so one batch is one request. (The endpoint documents no
/// paging parameters since listing all actions was removed in 2025-01, so none are sent.)
pub const MAX_ACTIONS_PER_REQUEST: usize = 25;

#[derive(Deserialize)]
struct ActionEnvelope {
    action: Action,
}

#[derive(Deserialize)]
struct ActionsEnvelope {
    actions: Vec<Action>,
}

impl Client {
    /// `GET /actions/{id}`.
    pub async fn get_action(&self, id: ActionId) -> Result<Action, Error> {
        let envelope: ActionEnvelope = self.get(&format!("/actions/{id}"), &[]).await?;
        Ok(envelope.action)
    }

    /// `GET /actions?id=..&id=..` in batches of [`MAX_ACTIONS_PER_REQUEST`]; the answer is in the
    /// order of `ids`. An id the API does not return is an error.
    pub async fn get_actions(&self, ids: &[ActionId]) -> Result<Vec<Action>, Error> {
        let mut found: HashMap<ActionId, Action> = HashMap::new();
        for batch in ids.chunks(MAX_ACTIONS_PER_REQUEST) {
            let query: Vec<(&str, String)> =
                batch.iter().map(|id| ("id", id.to_string())).collect();
            let envelope: ActionsEnvelope = self.get("/actions", &query).await?;
            found.extend(
                envelope
                    .actions
                    .into_iter()
                    .map(|action| (action.id, action)),
            );
        }
        ids.iter()
            .map(|id| {
                found
                    .get(id)
                    .cloned()
                    .ok_or(Error::ActionMissing { id: *id })
            })
            .collect()
    }
}
