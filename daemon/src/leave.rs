//! Leaving a group: the departure is written, handed to the other members, and then this
//! device's copy of the group is destroyed unless the member asked to keep it.

use std::sync::Arc;
use std::time::Duration;

use hearth_protocol::api;
use hearth_protocol::ids::GroupId;

use crate::node::{Node, NodeError};

/// How long `leave` waits for another member's daemon to confirm it has the departure.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(15);

pub async fn leave(node: Arc<Node>, id: GroupId, keep_copy: bool) -> Result<api::Left, NodeError> {
    let worker = node.clone();
    let seq = tokio::task::spawn_blocking(move || worker.write_leave(&id))
        .await
        .map_err(|e| NodeError::Internal(format!("worker failed: {e}")))??;
    // Open sessions carry the departure; a member's daemon confirms it with its version
    // vector, or its head of our own log once it sees us gone.
    let mut acked = node.subscribe_acks();
    let delivered = tokio::time::timeout(DELIVERY_TIMEOUT, async {
        while node.acknowledged(&id) < seq {
            if acked.changed().await.is_err() {
                return false;
            }
        }
        true
    })
    .await
    .unwrap_or(false);
    if !delivered {
        // Debug only: the answer says so, and a log should not date a departure.
        tracing::debug!("no member confirmed the departure before the copy was handled");
    }
    if !keep_copy {
        let worker = node.clone();
        tokio::task::spawn_blocking(move || worker.forget_group(&id))
            .await
            .map_err(|e| NodeError::Internal(format!("worker failed: {e}")))??;
    }
    Ok(api::Left {
        delivered,
        kept_copy: keep_copy,
    })
}
