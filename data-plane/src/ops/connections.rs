//! Acting on a user's open connections: a backend terminating every connection of a user
//! (Pusher's `terminate_connections`), whatever protocol each connection speaks.

use super::{Principal, counted};
use crate::NodeState;
use crate::error::{Error, Result};
use crate::protocol::{CloseReason, close};
use crate::signals::{self, Signal};

/// Closes every connection of the principal's app whose user is `client_id` (an Aviary
/// connection's token `sub`, a Pusher connection's signed-in user id) with
/// [`close::REVOKED`]: the client does not reconnect by itself. Only a backend may ask.
///
/// This node's connections close at once; every node (this one again, harmlessly) gets a
/// [`Signal::TerminateUser`] through the broker and closes its own. Returns how many this node
/// closed.
pub async fn terminate_user(node: &NodeState, principal: Principal<'_>, client_id: &str) -> Result<usize> {
    counted(
        principal,
        async {
            if let Principal::Client(_) = principal {
                return Err(Error::Forbidden("only a backend may terminate connections".into()));
            }
            let app = principal.app(node)?;
            let closed = close_user(node, &app.app_id, client_id);
            let signal = Signal::TerminateUser { app_id: app.app_id.clone(), client_id: client_id.to_owned() };
            signals::send(node.broker.as_ref(), &signal).await?;
            Ok(closed)
        }
        .await,
    )
}

/// Closes this node's connections of `client_id` in `app_id`; returns how many.
pub(crate) fn close_user(node: &NodeState, app_id: &str, client_id: &str) -> usize {
    let reason = CloseReason::new(close::REVOKED, "connections terminated by the app's backend");
    let mut closed = 0;
    for s in node.sessions.iter() {
        if s.value().identity().is_some_and(|id| id.app_id == app_id && id.client_id == client_id)
            && s.value().close(reason.clone())
        {
            closed += 1;
        }
    }
    closed
}
