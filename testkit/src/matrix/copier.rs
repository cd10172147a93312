//! The exactly-once copier: the client's `ExactlyOnce` loop, watched and crashed by an observer that records its history.

use super::*;

/// The exactly-once copier: the client's [`ExactlyOnce`] loop, copying
/// each value of the source topic to the same partition of the output
/// topic, watched by a [`CopierWatch`]. Its transactional id is shared
/// across incarnations.
pub(super) type Copier = ExactlyOnce<CopierWatch>;

/// What a copier is started as.
#[derive(Clone, Debug)]
pub(super) struct CopierSpec {
    /// The transactional id, shared by its incarnations.
    pub id: String,
    /// Its consumer's settings.
    pub consumer: ConsumerConfig,
    /// A member of the group (`subscribe`), not a manual assignment of
    /// every partition.
    pub member: bool,
    /// Input records per transaction, at most (a little more if one poll
    /// brings more).
    pub max_records: u64,
}

impl CopierSpec {
    /// The copier of a run without a group fault: the one instance, every
    /// partition assigned by hand, one poll per transaction.
    pub fn single() -> CopierSpec {
        CopierSpec {
            id: COPIER_ID.to_owned(),
            consumer: copier_consumer_config(),
            member: false,
            max_records: 1,
        }
    }
}

/// Records a copier incarnation's transactions in the histories and
/// injects its faults: a delivery of the source topic counts (its poll is
/// `ok` with the reads) once its transaction commits; the outputs are one
/// send op in the output topic's history. A transaction's polls are one
/// poll op. After each rebalance its deliveries are recorded under a new
/// process (see [`workload`](super::super::workload)'s group members).
pub(super) struct CopierWatch {
    history: History,
    out: History,
    /// The process the copier's committed deliveries are recorded under.
    process: ProcessId,
    /// The process its outputs are recorded under.
    out_process: ProcessId,
    /// The transaction in flight.
    txn: Option<CopierTxn>,
    /// Crash the next transaction here (the matrix's name for the point,
    /// and the loop's).
    crash: Option<(CrashPoint, EosPoint)>,
    /// A zombie stalls its next transaction after the sends, to be
    /// [resumed](ExactlyOnce::resume) once a new incarnation fenced it;
    /// its fenced transaction is then known to be aborted.
    zombie: bool,
    /// Per step: where it crashed.
    crashed: Option<CrashPoint>,
    /// Per step: whether a poll failed.
    poll_failed: bool,
    /// Per step: the values its committed transaction delivered.
    delivered: usize,
    /// Per step: whether its transaction's outcome is unknown (the
    /// incarnation is done).
    unknown: bool,
}

/// One copier transaction in flight: what it read and wrote.
struct CopierTxn {
    poll: Invocation,
    send: Invocation,
    reads: Vec<Read>,
    outputs: Vec<Mop>,
}

impl CopierWatch {
    fn new(history: &History, out: &History) -> CopierWatch {
        CopierWatch {
            history: history.clone(),
            out: out.clone(),
            process: history.process(),
            out_process: out.process(),
            txn: None,
            crash: None,
            zombie: false,
            crashed: None,
            poll_failed: false,
            delivered: 0,
            unknown: false,
        }
    }

    /// Before a step: what it should crash at, and a clean slate.
    fn arm(&mut self, crash: Option<(CrashPoint, EosPoint)>) {
        self.crash = crash;
        self.crashed = None;
        self.poll_failed = false;
        self.delivered = 0;
        self.unknown = false;
    }
}

impl EosObserver for CopierWatch {
    // The transaction's poll and sends are invoked at its first poll,
    // before anything is sent; later polls of the same transaction add to
    // them.
    fn polled(&mut self, records: &[ConsumerRecord]) {
        let reads = decode_reads(records);
        if let Some(txn) = self.txn.as_mut() {
            txn.outputs.extend(
                reads
                    .iter()
                    .map(|r| send_mop(&Tp::new(OUTPUT, r.tp.partition), r.value, None)),
            );
            txn.reads.extend(reads);
            return;
        }
        let poll = self.history.invoke(
            self.process,
            OpKind::Poll,
            Some(GROUP),
            vec![Mop::Poll { reads: Vec::new() }],
        );
        let outputs: Vec<Mop> = reads
            .iter()
            .map(|r| send_mop(&Tp::new(OUTPUT, r.tp.partition), r.value, None))
            .collect();
        let send = self
            .out
            .invoke(self.out_process, OpKind::Send, None, outputs.clone());
        self.txn = Some(CopierTxn {
            poll,
            send,
            reads,
            outputs,
        });
    }

    fn poll_failed(&mut self, _: &ClientError) {
        self.poll_failed = true;
    }

    fn rebalanced(&mut self, _: &[ConsumerEvent]) {
        self.process = self.history.process();
    }

    fn at(&mut self, point: EosPoint) -> Control {
        if self.zombie {
            return match point {
                EosPoint::AfterSends => Control::Crash,
                _ => Control::Continue,
            };
        }
        match self.crash {
            Some((name, at)) if at == point => {
                self.crashed = Some(name);
                Control::Crash
            }
            _ => Control::Continue,
        }
    }

    fn ended(&mut self, outcome: TxnOutcome<'_>) {
        let Some(txn) = self.txn.take() else {
            return;
        };
        match outcome {
            TxnOutcome::Committed => {
                self.delivered = txn.reads.len();
                txn.poll.ok(vec![Mop::Poll { reads: txn.reads }]);
                txn.send.ok(txn.outputs);
            }
            TxnOutcome::Aborted(e) => txn.fail(e),
            // The successor that fenced a zombie aborted its transaction.
            TxnOutcome::Unknown(e) if self.zombie && is_fenced(e) => txn.fail(e),
            TxnOutcome::Unknown(e) => {
                self.unknown = true;
                txn.info(e);
            }
            TxnOutcome::Crashed(_) => match self.crashed {
                Some(point) => {
                    self.history.crashed(self.process, point);
                    txn.info("crashed");
                }
                // A zombie stalled: its transaction goes on when resumed.
                None => self.txn = Some(txn),
            },
        }
    }
}

impl CopierTxn {
    /// It certainly did not happen.
    fn fail(self, e: impl std::fmt::Display) {
        self.poll.fail(vec![Mop::Poll { reads: Vec::new() }], &e);
        self.send.fail(self.outputs, &e);
    }

    /// It may have happened.
    fn info(self, e: impl std::fmt::Display) {
        self.poll.info(vec![Mop::Poll { reads: Vec::new() }], &e);
        self.send.info(self.outputs, &e);
    }
}

/// A new copier incarnation: the producer first (fencing the previous one
/// and settling its transaction), then the consumer, which resumes from
/// the committed offsets.
pub(super) async fn start_copier(
    client: &Client,
    history: &History,
    out: &History,
    spec: &CopierSpec,
) -> Result<Copier, RunError> {
    let producer =
        patiently(|| TransactionalProducer::new(client.clone(), transactional_config(&spec.id)))
            .await?;
    let consumer = patiently(|| async {
        let mut c = Consumer::new(client.clone(), spec.consumer.clone()).await?;
        if spec.member {
            c.subscribe(SOURCE).await?;
        } else {
            c.assign_topic(SOURCE).await?;
        }
        Ok(c)
    })
    .await?;
    let config = ExactlyOnceConfig {
        max_records: spec.max_records,
        max_interval: POLL_WAIT,
        ..ExactlyOnceConfig::new(GROUP)
    };
    let watch = CopierWatch::new(history, out);
    Ok(ExactlyOnce::with_observer(
        consumer, producer, config, watch,
    )?)
}

/// The copier's processing: each value of the source topic to the same
/// partition of the output topic; foreign records produce nothing.
fn copy_value(record: &ConsumerRecord, out: &mut Vec<Output>) {
    if let Some(value) = record.value.as_deref().and_then(ValueGen::decode) {
        let payload = Bytes::from(ValueGen::encode(value));
        out.push(Output::to_partition(
            OUTPUT,
            record.partition,
            None,
            Some(payload),
        ));
    }
}

/// One copier step: a transaction if input came; with `crash`, the copier
/// crashes at that point of it instead (and a new incarnation takes over
/// on the next step). An incarnation whose transaction's outcome became
/// unknown is replaced too.
pub(super) async fn copier_step(
    client: &Client,
    history: &History,
    out: &History,
    spec: &CopierSpec,
    copier: &mut Option<Copier>,
    crash: Option<(CrashPoint, EosPoint)>,
) -> ConsumerStep {
    if copier.is_none() {
        *copier = start_copier(client, history, out, spec).await.ok();
    }
    let Some(c) = copier.as_mut() else {
        return ConsumerStep::Idle;
    };
    let before = c.consumer().positions();
    c.observer_mut().arm(crash);
    let step = c.step(copy_value).await;
    let watch = c.observer();
    if let Some(point) = watch.crashed {
        *copier = None;
        return ConsumerStep::Crashed(point);
    }
    match step {
        Ok(Step::Committed { .. }) => ConsumerStep::Delivered(watch.delivered),
        // Idle only if no poll failed and the position moved nowhere: a
        // poll that returned only aborted batches or markers still made
        // progress.
        Ok(Step::Idle) if !watch.poll_failed && c.consumer().positions() == before => {
            ConsumerStep::Idle
        }
        Err(_) if watch.unknown || c.producer().is_fatal() => {
            *copier = None;
            ConsumerStep::Delivered(0)
        }
        // Aborted and rewound, a failed poll, or progress over markers.
        _ => ConsumerStep::Delivered(0),
    }
}

/// The zombie copier: the instance stalls in a transaction with its
/// outputs sent, a new incarnation fences it, and the stalled one then
/// goes on to commit. Returns the note for the reader.
pub(super) async fn zombie_copier(
    client: &Client,
    history: &History,
    out: &History,
    spec: &CopierSpec,
    copier: &mut Option<Copier>,
) -> Option<String> {
    let mut zombie = copier.take()?;
    zombie.observer_mut().arm(None);
    zombie.observer_mut().zombie = true;
    let stalled = zombie.step(copy_value).await;
    let fresh = start_copier(client, history, out, spec).await;
    let note = match stalled {
        Ok(Step::Crashed(_)) => match zombie.resume().await {
            Ok(Step::Committed { .. }) => "zombie copier committed".to_string(),
            Err(e) if is_fenced(&e) => "zombie copier fenced".to_string(),
            Err(e) | Ok(Step::Aborted(e)) => format!("zombie copier: {e}"),
            Ok(step) => format!("zombie copier: {step:?}"),
        },
        _ => "copier had no input to hold open".to_string(),
    };
    *copier = fresh.ok();
    Some(note)
}

/// Pauses a copier in the middle of its next transaction, as a process
/// that stops (a long GC pause, a stalled disk) after sending its outputs
/// and before adding its offsets. Returns whether it holds a transaction
/// open (false: it had no input, and is only not polling).
pub(super) async fn pause_copier(copier: &mut Copier) -> bool {
    copier.observer_mut().arm(None);
    copier.observer_mut().zombie = true;
    let stalled = copier.step(copy_value).await;
    copier.observer_mut().zombie = false;
    matches!(stalled, Ok(Step::Crashed(EosPoint::AfterSends)))
}

/// Wakes a copier paused by [`pause_copier`] with a transaction open: it
/// adds its offsets and commits, which the group must refuse once its
/// partitions moved on. Returns the note for the reader, and whether the
/// copier can go on (it is replaced otherwise).
pub(super) async fn wake_copier(copier: &mut Copier) -> (String, bool) {
    copier.observer_mut().arm(None);
    match copier.resume().await {
        Ok(Step::Committed { .. }) => ("paused copier committed on waking".to_string(), true),
        Ok(Step::Aborted(e)) => (format!("paused copier's transaction refused: {e}"), true),
        Ok(step) => (format!("paused copier woke: {step:?}"), true),
        Err(e) => (format!("paused copier: {e}"), false),
    }
}
