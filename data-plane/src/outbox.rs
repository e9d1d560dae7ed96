//! A connection's outbound queue: bounded, many producers (the fan-out, the session's
//! replies), one consumer (the transport's writer task).
//!
//! A publication to a channel with 10,000 local subscribers pushes into 10,000 of these, so
//! the producer side is kept to one short, almost always uncontended lock and at most one
//! wake: the writer parks its waker only when it finds the queue empty, and the first push
//! after that takes and wakes it. A busy writer is never woken again per frame. The writer
//! takes everything queued in one swap of buffers and writes it as one burst, so a backlog
//! costs the producers nothing more and the socket one flush.
//!
//! A full queue is the consumer's fault: [`Outbox::try_push`] reports it and the fan-out
//! closes that connection (slow consumer) instead of waiting or dropping silently. Replies use
//! [`Outbox::push`], which waits for room: a client that floods commands without reading its
//! replies is slowed down, not disconnected.
//!
//! The queue allocates nothing until the first push and gives back a large buffer after a
//! burst, so an idle connection costs only the struct itself.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::outbound::Outbound;

/// Buffers above this many slots are released after a burst instead of being reused.
const KEEP_SLOTS: usize = 64;

/// Why a push did not queue the item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The queue holds its capacity: the consumer is not keeping up.
    Full,
    /// The connection is closing; nothing more will be written.
    Closed,
}

#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    capacity: usize,
    /// Signalled when the writer takes items and a producer is waiting for room.
    room: Notify,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Outbound>,
    /// The writer's waker, present only while it waits on an empty queue.
    waker: Option<Waker>,
    /// A producer waits in [`Outbox::push`] for room.
    waiting: bool,
    closed: bool,
}

impl Outbox {
    /// A queue holding at most `capacity` items (at least one).
    pub fn new(capacity: usize) -> Self {
        Outbox { state: Mutex::new(State::default()), capacity: capacity.max(1), room: Notify::new() }
    }

    /// Queues `item` without waiting.
    pub fn try_push(&self, item: Outbound) -> Result<(), PushError> {
        self.push_or_return(item, false).map_err(|(e, _)| e)
    }

    /// Queues `item` if there is room; on a full queue, `wait` records (under the same lock as
    /// the check, so the wake-up cannot be missed) that a producer waits for room.
    fn push_or_return(&self, item: Outbound, wait: bool) -> Result<(), (PushError, Outbound)> {
        let waker = {
            let mut state = self.state.lock();
            if state.closed {
                return Err((PushError::Closed, item));
            }
            if state.queue.len() >= self.capacity {
                state.waiting |= wait;
                return Err((PushError::Full, item));
            }
            state.queue.push_back(item);
            state.waker.take()
        };
        // Wake outside the lock: the writer's first act is to take it.
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    /// Queues `item`, waiting for room while the queue is full. Fails only once the queue is
    /// closed (the item is dropped then: nothing will be written any more).
    pub async fn push(&self, mut item: Outbound) -> Result<(), PushError> {
        loop {
            // Register for the wake-up before looking, so a take between the look and the
            // wait is not missed.
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match self.push_or_return(item, true) {
                Ok(()) => return Ok(()),
                Err((PushError::Closed, _)) => return Err(PushError::Closed),
                Err((PushError::Full, returned)) => item = returned,
            }
            room.await;
        }
    }

    /// Moves everything queued into `into` (which must be empty), or registers the writer to
    /// be woken by the next push. Ready with `false` once the queue is closed and empty.
    pub fn poll_take(&self, cx: &mut Context<'_>, into: &mut VecDeque<Outbound>) -> Poll<bool> {
        debug_assert!(into.is_empty(), "take into a non-empty buffer");
        let mut state = self.state.lock();
        if !state.queue.is_empty() {
            // Swap buffers: the writer gets the items, the queue gets the writer's (empty,
            // already allocated) buffer back, trimmed if a backlog had grown it.
            if into.capacity() > KEEP_SLOTS {
                *into = VecDeque::new();
            }
            std::mem::swap(&mut state.queue, into);
            let waiting = std::mem::take(&mut state.waiting);
            drop(state);
            if waiting {
                self.room.notify_waiters();
            }
            return Poll::Ready(true);
        }
        if state.closed {
            return Poll::Ready(false);
        }
        match &mut state.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Waits for items and moves all of them into `into`; `false` once closed.
    pub async fn take(&self, into: &mut VecDeque<Outbound>) -> bool {
        poll_fn(|cx| self.poll_take(cx, into)).await
    }

    /// Closes the queue: what is queued is dropped, later pushes fail, waiting producers and
    /// the writer return.
    pub fn close(&self) {
        let (dropped, waker) = {
            let mut state = self.state.lock();
            state.closed = true;
            state.waiting = false;
            (std::mem::take(&mut state.queue), state.waker.take())
        };
        drop(dropped);
        if let Some(waker) = waker {
            waker.wake();
        }
        self.room.notify_waiters();
    }

    /// Whether nothing is queued right now.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.state.lock().queue.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::protocol::Text;

    fn frame(s: &'static str) -> Outbound {
        Outbound::Frame(Text::from(s))
    }

    fn text(item: &Outbound) -> &str {
        match item {
            Outbound::Frame(f) => f.as_str(),
            _ => unreachable!(),
        }
    }

    #[tokio::test]
    async fn takes_everything_queued_in_order_and_refuses_past_capacity() {
        let outbox = Outbox::new(3);
        for s in ["a", "b", "c"] {
            outbox.try_push(frame(s)).unwrap();
        }
        assert_eq!(outbox.try_push(frame("d")), Err(PushError::Full));
        let mut buf = VecDeque::new();
        assert!(outbox.take(&mut buf).await);
        assert_eq!(buf.iter().map(text).collect::<Vec<_>>(), ["a", "b", "c"]);
        assert!(outbox.is_empty());
        buf.clear();
        outbox.try_push(frame("d")).unwrap();
        assert!(outbox.take(&mut buf).await);
        assert_eq!(buf.iter().map(text).collect::<Vec<_>>(), ["d"]);
    }

    #[tokio::test]
    async fn a_waiting_writer_is_woken_by_a_push_from_another_task() {
        let outbox = Arc::new(Outbox::new(8));
        let writer = tokio::spawn({
            let outbox = outbox.clone();
            async move {
                let mut seen = Vec::new();
                let mut buf = VecDeque::new();
                while outbox.take(&mut buf).await {
                    seen.extend(buf.drain(..).map(|i| text(&i).to_owned()));
                }
                seen
            }
        });
        for s in ["1", "2", "3", "4", "5"] {
            tokio::time::sleep(Duration::from_millis(5)).await;
            outbox.try_push(frame(s)).unwrap();
        }
        // Let the writer take the last one before closing (close drops what is queued).
        tokio::time::timeout(Duration::from_secs(5), async {
            while !outbox.is_empty() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap();
        outbox.close();
        assert_eq!(writer.await.unwrap(), ["1", "2", "3", "4", "5"]);
    }

    #[tokio::test]
    async fn push_waits_for_room_and_close_releases_waiters() {
        let outbox = Arc::new(Outbox::new(1));
        outbox.try_push(frame("first")).unwrap();
        let pusher = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.push(frame("second")).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!pusher.is_finished(), "push must wait while the queue is full");
        let mut buf = VecDeque::new();
        assert!(outbox.take(&mut buf).await);
        assert_eq!(tokio::time::timeout(Duration::from_secs(5), pusher).await.unwrap().unwrap(), Ok(()));
        buf.clear();
        assert!(outbox.take(&mut buf).await);
        assert_eq!(text(&buf[0]), "second");

        // A producer waiting on a full queue returns when the connection closes.
        buf.clear();
        outbox.try_push(frame("third")).unwrap();
        let stuck = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.push(frame("fourth")).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        outbox.close();
        assert_eq!(tokio::time::timeout(Duration::from_secs(5), stuck).await.unwrap().unwrap(), Err(PushError::Closed));
        assert!(!outbox.take(&mut buf).await, "a closed queue yields nothing");
        assert_eq!(outbox.try_push(frame("late")), Err(PushError::Closed));
    }
}
