//! Task events to containerd: published in the order they happen, by one thread, off the
//! request path (a Create or Start does not wait for containerd to take its event, as with
//! containerd's own shims). The connection is opened for an event and closed after
//! [`EVENTS_LINGER`] without one: an idle ttrpc client is not idle (its receiver thread polls
//! every 10 ms), which a thousand sleeping shims turn into two busy cores; while a task
//! starts or ends, its few events share one connection.

use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::protos::ttrpc::context::Context;
use containerd_shim::publisher::RemotePublisher;
use log::warn;

/// How long the events connection stays open without events.
const EVENTS_LINGER: Duration = Duration::from_secs(1);

enum Msg {
    Publish(String, Box<dyn MessageDyn>),
    /// Answered once everything queued before it was published (or given up on).
    Flush(Sender<()>),
}

/// The queue of events to publish; the thread behind it ends when this is dropped.
pub(crate) struct Events {
    tx: Sender<Msg>,
}

impl Events {
    /// Starts the publishing thread. `address` is containerd's ttrpc address, connected to
    /// for the first event (on that thread: a new pod's `start` does not wait for it);
    /// `namespace` the containerd namespace of the tasks.
    pub(crate) fn start(address: String, namespace: String) -> std::io::Result<Events> {
        let (tx, rx) = channel();
        std::thread::Builder::new().name("events".into()).spawn(move || forward(rx, None, &address, &namespace))?;
        Ok(Events { tx })
    }

    /// Queues `event` under `topic`; it is published after every event queued before it.
    pub(crate) fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        // The thread only ends when `self` is dropped.
        let _ = self.tx.send(Msg::Publish(topic.to_string(), event));
    }

    /// Waits, at most `within`, until every event queued so far was published. Returns
    /// whether that happened in time.
    pub(crate) fn flush(&self, within: Duration) -> bool {
        let (done, wait) = channel();
        self.tx.send(Msg::Flush(done)).is_ok() && wait.recv_timeout(within).is_ok()
    }
}

fn forward(rx: Receiver<Msg>, mut publisher: Option<RemotePublisher>, address: &str, namespace: &str) {
    loop {
        let msg = if publisher.is_some() {
            match rx.recv_timeout(EVENTS_LINGER) {
                Ok(m) => m,
                Err(RecvTimeoutError::Timeout) => {
                    publisher = None;
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return,
            }
        } else {
            match rx.recv() {
                Ok(m) => m,
                Err(_) => return,
            }
        };
        match msg {
            Msg::Flush(done) => {
                let _ = done.send(());
            }
            Msg::Publish(topic, event) => publisher = publish_one(publisher, address, namespace, &topic, event),
        }
    }
}

/// Publishes one event; returns the connection to keep (none if it failed).
fn publish_one(mut publisher: Option<RemotePublisher>, address: &str, namespace: &str, topic: &str, event: Box<dyn MessageDyn>) -> Option<RemotePublisher> {
    let mut errors = Vec::new();
    // A connection kept from an earlier event may be dead (containerd restarted): then a
    // new one, to the same address, gets the event.
    for _ in 0..2 {
        let p = match publisher.take() {
            Some(p) => p,
            None => match RemotePublisher::new(address) {
                Ok(p) => p,
                Err(e) => {
                    errors.push(format!("connect {address}: {e}"));
                    continue;
                }
            },
        };
        match p.publish(Context::default(), topic, namespace, event.clone_box()) {
            Ok(()) => return Some(p),
            // Dropped: the connection is closed.
            Err(e) => errors.push(e.to_string()),
        }
    }
    warn!(topic, errors:% = errors.join("; "); "publish failed");
    None
}
