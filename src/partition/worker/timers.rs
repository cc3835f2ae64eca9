//! Firing due timers (the handler's, window closes, TTL sweeps) and sending the output
//! records of a record or timer.

use super::*;

impl<KC, VC, H> Worker<KC, VC, H>
where
    KC: Codec,
    VC: Codec,
    H: Handler<KC::Item, VC::Item>,
{
    /// Fires every timer of `kind` due at `now`, earliest first (see [`crate::timer`]).
    pub(super) async fn fire_timers(
        &mut self,
        kind: TimeKind,
        now: i64,
        ctx: &mut PartitionContext,
    ) -> Result<(), Error> {
        while let Some(entry) = ctx.state().and_then(|s| s.next_timer(kind, now)) {
            ctx.stage_timer(false, entry.clone())?;
            let (_, at, owner, key) = entry.clone();
            let mut closing = None;
            let outcome = match owner {
                Owner::Handler => {
                    let timer = Timer { kind, at, key };
                    let call = self.shared.handler.on_timer(timer, ctx);
                    match std::panic::AssertUnwindSafe(call).catch_unwind().await {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(payload) => {
                            Err(format!("panicked: {}", panic_message(payload.as_ref())))
                        }
                    }
                }
                Owner::Window => {
                    let (outcome, closed) = self.close_window(&key, at, ctx).await;
                    closing = closed;
                    outcome
                }
                Owner::Expiry => {
                    let now = match kind {
                        TimeKind::Stream => ctx.stream_time(),
                        _ => ctx.wall_now(),
                    };
                    match ctx.state_mut().map(|s| s.sweep_expired(&key, now)) {
                        Some(Ok(expired)) => {
                            tracing::debug!(topic = %self.topic, partition = self.partition,
                                store = %String::from_utf8_lossy(&key), expired, "expired entries deleted");
                            Ok(())
                        }
                        Some(Err(e)) => Err(e.to_string()),
                        None => Ok(()),
                    }
                }
            };
            let outcome = match outcome {
                Ok(()) => self.send_outbox(ctx).await.map_err(|e| e.to_string()),
                failed => failed,
            };
            match outcome {
                Ok(()) => {
                    ctx.commit_staged();
                }
                Err(message) => {
                    ctx.discard_staged();
                    if matches!(self.shared.config.error_policy, ErrorPolicy::Fail) {
                        return Err(Error::Timer {
                            topic: self.topic.to_string(),
                            partition: self.partition,
                            at,
                            message,
                        });
                    }
                    tracing::warn!(topic = %self.topic, partition = self.partition, at, %message,
                        "timer failed; dropping it");
                    ctx.stage_timer(false, entry)?;
                    // A dropped close still deletes what it closes: a session or sliding
                    // record left behind would never close again.
                    if let (Some(closing), Some(state)) = (&closing, ctx.state_mut()) {
                        closing.retire(state);
                    }
                    ctx.commit_staged();
                }
            }
        }
        Ok(())
    }

    /// Closes a window whose close timer fired: the handler's callback with its final
    /// entries, and the deletion of what the close retires (staged with the callback's
    /// writes). Returns what to retire even when the callback fails, for a dropped timer.
    async fn close_window(
        &self,
        key: &[u8],
        at: i64,
        ctx: &mut PartitionContext,
    ) -> (Result<(), String>, Option<crate::window::Closing>) {
        let closing = match ctx
            .state()
            .map(|state| crate::window::closing(state, key, at))
        {
            Some(Ok(closing)) => closing,
            Some(Err(e)) => return (Err(e.to_string()), None),
            None => None,
        };
        let Some(mut closing) = closing else {
            return (Ok(()), None); // the window store is no longer declared
        };
        let outcome = match closing.closed.take() {
            // Tumbling and hopping windows' entries stay in the store until the next flush
            // deletes every closed window by range; reads treat them as absent from now on.
            Some(closed) => {
                let call = self.shared.handler.on_window_closed(closed, ctx);
                match std::panic::AssertUnwindSafe(call).catch_unwind().await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(payload) => Err(format!("panicked: {}", panic_message(payload.as_ref()))),
                }
            }
            None => Ok(()),
        };
        if let Some(state) = ctx.state_mut() {
            closing.retire(state);
        }
        (outcome, Some(closing))
    }
}
