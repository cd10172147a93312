//! The sender task: owns the `ProduceStream` and every sealed batch. It
//! sends at most `max_in_flight_per_partition` batches per partition,
//! matches responses by correlation id, completes batches, and carries out
//! [`decide`]'s verdict on each failed one: retry after a backoff, resend
//! behind its predecessor, renumber under the next epoch, or fail.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use ferry_proto::ErrorCode;
use ferry_proto::batch::restamp;
use ferry_proto::v1;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

use super::accumulator::{Command, SealedBatch, Shared};
use super::conn::{Conn, ConnEvent, ConnectFuture, REQUEST_QUEUE_LEN, conn_event};
use super::inflight::{PartitionKey, PartitionQueue, Tracker};
use crate::client::Client;
use crate::error::ClientError;
use crate::idempotence::{Action, ProducerMode, decide};

/// Most commands the sender task takes in one go before it looks at the
/// connection again.
const MAX_COMMANDS_PER_WAKEUP: usize = 256;
/// How often batches waiting for a retry or a response are checked
/// against their delivery timeout.
const EXPIRY_CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// The background task: owns the `ProduceStream` and every sealed batch.
pub(super) struct SenderTask {
    shared: Arc<Shared>,
    client: Client,
    acks: v1::Acks,
    /// How failed batches are decided (see [`decide`]).
    mode: ProducerMode,
    rx: mpsc::UnboundedReceiver<Command>,
    rx_open: bool,
    lingers: VecDeque<(Instant, Arc<str>, u32, u64)>,
    partitions: HashMap<PartitionKey, PartitionQueue>,
    in_flight: HashMap<u64, SealedBatch>,
    /// Correlation ids of requests still on the stream whose batches were
    /// taken back for renumbering or failed; their answers are ignored.
    abandoned: HashSet<u64>,
    tracker: Tracker,
    conn: Conn,
    conn_failures: u32,
    next_correlation_id: u64,
    /// The request queue was full on the last pump.
    blocked: bool,
    closers: Vec<oneshot::Sender<()>>,
    next_expiry_check: Instant,
}

impl SenderTask {
    pub(super) fn new(
        shared: Arc<Shared>,
        client: Client,
        rx: mpsc::UnboundedReceiver<Command>,
    ) -> SenderTask {
        let now = Instant::now();
        SenderTask {
            acks: shared.config.acks.to_proto(),
            mode: match (shared.producer.is_some(), shared.transactional) {
                (false, _) => ProducerMode::Plain,
                (true, false) => ProducerMode::Idempotent,
                (true, true) => ProducerMode::Transactional,
            },
            tracker: Tracker {
                shared: shared.clone(),
                outstanding: BTreeSet::new(),
                flushes: Vec::new(),
            },
            shared,
            client,
            rx,
            rx_open: true,
            lingers: VecDeque::new(),
            partitions: HashMap::new(),
            in_flight: HashMap::new(),
            abandoned: HashSet::new(),
            conn: Conn::Down { retry_at: now },
            conn_failures: 0,
            next_correlation_id: 0,
            blocked: false,
            closers: Vec::new(),
            next_expiry_check: now + EXPIRY_CHECK_INTERVAL,
        }
    }

    fn has_work(&self) -> bool {
        !self.tracker.outstanding.is_empty()
    }

    fn finished(&self) -> bool {
        (!self.rx_open || !self.closers.is_empty()) && !self.has_work()
    }

    pub(super) async fn run(mut self) {
        loop {
            if self.finished() {
                break;
            }
            let now = Instant::now();
            self.maybe_connect(now);
            self.pump(now);
            let deadline = self.next_deadline(now);
            enum Event {
                Command(Option<Command>),
                Timer,
                Conn(ConnEvent),
            }
            let event = tokio::select! {
                c = self.rx.recv(), if self.rx_open => Event::Command(c),
                _ = tokio::time::sleep_until(deadline) => Event::Timer,
                e = conn_event(&mut self.conn, self.blocked) => Event::Conn(e),
            };
            match event {
                Event::Command(Some(c)) => {
                    self.handle_command(c);
                    // Take what else queued up without a trip through the
                    // select, bounded so responses are never starved.
                    for _ in 0..MAX_COMMANDS_PER_WAKEUP {
                        let Ok(c) = self.rx.try_recv() else { break };
                        self.handle_command(c);
                    }
                }
                Event::Command(None) => self.rx_open = false,
                Event::Timer => {}
                Event::Conn(ConnEvent::Space) => self.blocked = false,
                Event::Conn(ConnEvent::Connected(Ok(response))) => {
                    if let Conn::Connecting { req_tx, .. } =
                        std::mem::replace(&mut self.conn, Conn::Down { retry_at: now })
                    {
                        self.conn = Conn::Up {
                            req_tx,
                            responses: response,
                        };
                    }
                }
                Event::Conn(ConnEvent::Connected(Err(status))) => self.broken(&status.into()),
                Event::Conn(ConnEvent::Response(Ok(Some(r)))) => self.handle_response(r),
                Event::Conn(ConnEvent::Response(Ok(None))) => self.broken(&ClientError::broker(
                    ErrorCode::NetworkError,
                    "the broker closed the produce stream",
                )),
                Event::Conn(ConnEvent::Response(Err(status))) => self.broken(&status.into()),
            }
            let now = Instant::now();
            self.seal_lingered(now);
            if now >= self.next_expiry_check {
                self.expire(now);
                self.next_expiry_check = now + EXPIRY_CHECK_INTERVAL;
            }
        }
        for tx in self.closers.drain(..) {
            let _ = tx.send(());
        }
    }

    fn handle_command(&mut self, command: Command) {
        match command {
            Command::Opened {
                topic,
                partition,
                seq,
                deadline,
            } => self.lingers.push_back((deadline, topic, partition, seq)),
            Command::Sealed(batch) => {
                self.tracker.outstanding.insert(batch.seq);
                let key = (batch.topic.clone(), batch.partition);
                let q = self.partitions.entry(key).or_default();
                match &q.fatal {
                    Some(error) => self.tracker.complete(batch, Err(error.clone())),
                    None => q.requeue(batch),
                }
            }
            Command::Flush(tx) => self.tracker.add_flush(tx),
            // The loop ends once nothing is outstanding; nothing new can
            // arrive because the producer is marked closed.
            Command::Close(tx) => self.closers.push(tx),
            Command::Restart => {
                for q in self.partitions.values_mut() {
                    q.fatal = None;
                    q.retry_at = None;
                }
            }
        }
    }

    /// Seals batches whose linger ran out. Linger is one constant, so
    /// deadlines arrive in order and a queue suffices.
    fn seal_lingered(&mut self, now: Instant) {
        if self.lingers.front().is_none_or(|(d, ..)| *d > now) {
            return;
        }
        let mut sealed = Vec::new();
        {
            let mut state = self.shared.state.lock();
            // Batches the application sealed before now are in the channel;
            // take them first so each partition's batches stay in order.
            while let Ok(c) = self.rx.try_recv() {
                sealed.push(c);
            }
            while let Some((deadline, ..)) = self.lingers.front() {
                if *deadline > now {
                    break;
                }
                let Some((_, topic, partition, seq)) = self.lingers.pop_front() else {
                    break;
                };
                if let Some(i) = state.topics.position(&topic) {
                    let ts = &mut state.topics[i];
                    let still_open = ts.partitions[partition as usize]
                        .open
                        .as_ref()
                        .is_some_and(|o| o.seq == seq);
                    if still_open {
                        self.shared.seal(ts, partition, &mut |c| sealed.push(c));
                    }
                }
            }
        }
        for c in sealed {
            self.handle_command(c);
        }
    }

    fn next_deadline(&self, now: Instant) -> Instant {
        let mut deadline = now + Duration::from_secs(3600);
        if let Some((d, ..)) = self.lingers.front() {
            deadline = deadline.min(*d);
        }
        if self.has_work() {
            deadline = deadline.min(self.next_expiry_check);
            if let Conn::Down { retry_at } = &self.conn {
                deadline = deadline.min(*retry_at);
            }
            // Past retry times are due at the next pump; counting them here
            // would spin while the connection is down.
            for q in self.partitions.values() {
                if let Some(t) = q.retry_at.filter(|t| *t > now && !q.pending.is_empty()) {
                    deadline = deadline.min(t);
                }
            }
        }
        deadline.max(now)
    }

    fn maybe_connect(&mut self, now: Instant) {
        let Conn::Down { retry_at } = &self.conn else {
            return;
        };
        if !self.has_work() || *retry_at > now {
            return;
        }
        let (req_tx, req_rx) = mpsc::channel(REQUEST_QUEUE_LEN);
        let mut raw = self.client.raw();
        let call: ConnectFuture =
            Box::pin(async move { raw.produce_stream(ReceiverStream::new(req_rx)).await });
        self.conn = Conn::Connecting { req_tx, call };
        self.blocked = false;
    }

    /// Sends every batch that may go now, until the request queue is full.
    fn pump(&mut self, now: Instant) {
        let Some(req_tx) = self.conn.req_tx() else {
            return;
        };
        if self.blocked {
            return;
        }
        let max_in_flight = self.shared.config.max_in_flight_per_partition;
        let acks_none = self.acks == v1::Acks::None;
        let mut closed = false;
        'partitions: for q in self.partitions.values_mut() {
            if q.retry_at.is_some_and(|t| t > now) {
                continue;
            }
            q.retry_at = None;
            while !q.pending.is_empty() && q.in_flight.len() < max_in_flight {
                let permit = match req_tx.try_reserve() {
                    Ok(permit) => permit,
                    Err(mpsc::error::TrySendError::Full(())) => {
                        self.blocked = true;
                        break 'partitions;
                    }
                    Err(mpsc::error::TrySendError::Closed(())) => {
                        closed = true;
                        break 'partitions;
                    }
                };
                let Some(mut batch) = q.pending.pop_front() else {
                    break;
                };
                let correlation_id = self.next_correlation_id;
                self.next_correlation_id += 1;
                batch.attempts += 1;
                permit.send(v1::ProduceRequest {
                    correlation_id,
                    topic: batch.topic.to_string(),
                    partition: batch.partition,
                    acks: self.acks as i32,
                    batch: batch.bytes.clone(),
                });
                if acks_none {
                    self.tracker.complete(batch, Ok(None));
                } else {
                    q.in_flight.push_back(correlation_id);
                    self.in_flight.insert(correlation_id, batch);
                }
            }
        }
        if closed {
            self.broken(&ClientError::broker(
                ErrorCode::NetworkError,
                "the produce stream closed",
            ));
        }
    }

    fn handle_response(&mut self, r: v1::ProduceResponse) {
        self.conn_failures = 0;
        let Some(batch) = self.take_answered(&r) else {
            return;
        };
        if r.error_code == 0 {
            self.tracker.complete(batch, Ok(Some(r.base_offset)));
            return;
        }
        let code = ErrorCode::from_u32(r.error_code);
        let error = ClientError::broker(code, r.error_message);
        let key = (batch.topic.clone(), batch.partition);
        let q = self.partitions.entry(key.clone()).or_default();
        let earlier = q.has_unresolved_before(batch.seq, &self.in_flight);
        let action = decide(code, self.mode, earlier);
        self.act(action, batch, error, &key);
    }

    /// The in-flight batch `r` answers, taken out of the in-flight
    /// tracking; `None` if the answer is to be ignored (its batch was taken
    /// back, already reported as sent, or timed out).
    fn take_answered(&mut self, r: &v1::ProduceResponse) -> Option<SealedBatch> {
        if self.abandoned.remove(&r.correlation_id) {
            return None;
        }
        let Some(batch) = self.in_flight.remove(&r.correlation_id) else {
            if r.error_code != 0 {
                // Acks::None batches, or batches that already timed out.
                tracing::warn!(
                    correlation_id = r.correlation_id,
                    code = %ErrorCode::from_u32(r.error_code),
                    message = %r.error_message,
                    "produce failed for a batch already reported as sent"
                );
            }
            return None;
        };
        let q = self
            .partitions
            .entry((batch.topic.clone(), batch.partition))
            .or_default();
        if let Some(i) = q.in_flight.iter().position(|c| *c == r.correlation_id) {
            q.in_flight.remove(i);
        }
        Some(batch)
    }

    /// Carries out the decision for a batch that failed with `error`.
    fn act(&mut self, action: Action, batch: SealedBatch, error: ClientError, key: &PartitionKey) {
        let now = Instant::now();
        let timeout = self.shared.config.delivery_timeout;
        let q = self.partitions.entry(key.clone()).or_default();
        match action {
            Action::Retry | Action::AwaitPredecessor | Action::Renumber
                if now.duration_since(batch.sealed_at) >= timeout =>
            {
                self.tracker.complete(batch, Err(delivery_timeout(timeout)));
            }
            Action::Retry => {
                tracing::debug!(
                    topic = %batch.topic,
                    partition = batch.partition,
                    epoch = batch.stamp.producer_epoch,
                    sequence = batch.stamp.base_sequence,
                    %error,
                    "retrying batch"
                );
                q.retry_at =
                    Some(now + self.shared.config.backoff(batch.attempts.saturating_sub(1)));
                q.requeue(batch);
            }
            Action::AwaitPredecessor => {
                tracing::debug!(
                    topic = %batch.topic,
                    partition = batch.partition,
                    %error,
                    "batch arrived before its predecessor; resending after it"
                );
                q.requeue(batch);
            }
            Action::Fail => self.tracker.complete(batch, Err(error)),
            Action::Renumber => {
                tracing::warn!(
                    topic = %batch.topic,
                    partition = batch.partition,
                    %error,
                    "the broker does not know this producer here; bumping the epoch and renumbering"
                );
                q.requeue(batch);
                if let Err(e) = self.renumber(key) {
                    self.fail_partition(key, None, e);
                }
            }
            Action::FailAndRenumber => {
                self.tracker.complete(batch, Err(error));
                if let Err(e) = self.renumber(key) {
                    self.fail_partition(key, None, e);
                }
            }
            Action::FailPartition => self.fail_partition(key, Some(batch), error),
        }
    }

    /// Fails `batch` and every other unresolved batch of the partition with
    /// `error`, and marks the partition so later batches fail too. Used
    /// when the idempotent sequence cannot be repaired; it is logged as an
    /// error and every affected delivery reports it.
    fn fail_partition(
        &mut self,
        key: &PartitionKey,
        batch: Option<SealedBatch>,
        error: ClientError,
    ) {
        tracing::error!(
            topic = %key.0,
            partition = key.1,
            %error,
            "idempotent sequence broken; failing this and every later batch of the partition"
        );
        if let Some(batch) = batch {
            self.tracker.complete(batch, Err(error.clone()));
        }
        // Batches sealed but still in the channel fail on arrival, through
        // `fatal`.
        let q = self.partitions.entry(key.clone()).or_default();
        for c in q.in_flight.drain(..) {
            if let Some(b) = self.in_flight.remove(&c) {
                self.abandoned.insert(c);
                self.tracker.complete(b, Err(error.clone()));
            }
        }
        for b in q.pending.drain(..) {
            self.tracker.complete(b, Err(error.clone()));
        }
        q.retry_at = None;
        q.fatal = Some(error);
    }

    /// Moves the partition to its next epoch and renumbers its unresolved
    /// batches from sequence 0, in seal order. Batches in flight are taken
    /// back first: the broker refuses them (their sequence does not follow
    /// anything it stored), so their answers are ignored and they are sent
    /// again with their new numbers.
    fn renumber(&mut self, key: &PartitionKey) -> Result<(), ClientError> {
        let Some((producer_id, _)) = self.shared.producer else {
            return Ok(());
        };
        let shared = self.shared.clone();
        // Under the state lock nothing new is sealed, and every batch
        // sealed so far is in the channel or already here.
        let mut state = shared.state.lock();
        while let Ok(c) = self.rx.try_recv() {
            self.handle_command(c);
        }
        let q = self.partitions.entry(key.clone()).or_default();
        if q.fatal.is_some() {
            return Ok(());
        }
        for c in std::mem::take(&mut q.in_flight) {
            if let Some(b) = self.in_flight.remove(&c) {
                self.abandoned.insert(c);
                q.requeue(b);
            }
        }
        let acc = state
            .topics
            .position(&key.0)
            .and_then(|i| state.topics[i].partitions.get_mut(key.1 as usize))
            .expect("a partition with batches has an accumulator");
        acc.seq.bump()?;
        for b in &mut q.pending {
            let stamp = acc.seq.stamp(producer_id, b.records);
            b.bytes = restamp(&b.bytes, stamp);
            b.stamp = stamp;
        }
        tracing::info!(
            topic = %key.0,
            partition = key.1,
            epoch = acc.seq.epoch,
            batches = q.pending.len(),
            "renumbered the partition's unacked batches under a new epoch"
        );
        Ok(())
    }

    /// The stream failed: every in-flight batch goes back to its queue in
    /// order, and a new stream opens after a backoff.
    fn broken(&mut self, error: &ClientError) {
        if self.has_work() {
            tracing::warn!(%error, "produce stream broke; reconnecting");
        } else {
            tracing::debug!(%error, "idle produce stream closed");
        }
        let now = Instant::now();
        let backoff = self.shared.config.backoff(self.conn_failures);
        self.conn_failures = self.conn_failures.saturating_add(1);
        self.conn = Conn::Down {
            retry_at: now + backoff,
        };
        self.blocked = false;
        // Nothing more arrives on the old stream.
        self.abandoned.clear();
        let timeout = self.shared.config.delivery_timeout;
        for (_, batch) in self.in_flight.drain() {
            let key = (batch.topic.clone(), batch.partition);
            let q = self.partitions.entry(key).or_default();
            q.in_flight.clear();
            if now.duration_since(batch.sealed_at) >= timeout {
                self.tracker.complete(batch, Err(delivery_timeout(timeout)));
            } else {
                q.requeue(batch);
            }
        }
    }

    /// Fails batches past their delivery timeout, waiting or in flight.
    /// Batches of a partition were sealed in `seq` order, so only the front
    /// of each queue needs a look.
    fn expire(&mut self, now: Instant) {
        let timeout = self.shared.config.delivery_timeout;
        let expired = |b: &SealedBatch| now.duration_since(b.sealed_at) >= timeout;
        for q in self.partitions.values_mut() {
            while q.pending.front().is_some_and(expired) {
                if let Some(batch) = q.pending.pop_front() {
                    self.tracker.complete(batch, Err(delivery_timeout(timeout)));
                }
            }
            while let Some(&c) = q.in_flight.front() {
                if !self.in_flight.get(&c).is_some_and(expired) {
                    break;
                }
                if let Some(batch) = self.in_flight.remove(&c) {
                    self.tracker.complete(batch, Err(delivery_timeout(timeout)));
                }
                q.in_flight.pop_front();
            }
        }
    }
}

/// The error of a batch whose delivery timeout ran out.
fn delivery_timeout(timeout: Duration) -> ClientError {
    ClientError::Timeout {
        what: "delivery",
        after_ms: timeout.as_millis() as u64,
    }
}
