//! The exactly-once consumer of a cell: the client's `ExactlyOnce` loop, watched and crashed by an observer.

use super::*;

/// The lab's exactly-once loop: the producer first (it settles what an
/// earlier instance left open), then the consumer, from the group's
/// committed offsets; one poll per transaction.
async fn exactly_once<O: EosObserver>(
    client: &Client,
    names: &Names,
    watch: O,
) -> Result<ExactlyOnce<O>, LabError> {
    let producer = patiently(|| {
        let mut config = TransactionalConfig::new(names.transactional_id.clone());
        config.transaction_timeout = Duration::from_secs(20);
        config.producer = producer_config(DeliveryMode::ExactlyOnce);
        TransactionalProducer::new(client.clone(), config)
    })
    .await?;
    let consumer = patiently(|| async {
        let mut c = Consumer::new(
            client.clone(),
            consumer_config(&names.group, LabMode::ExactlyOnce),
        )
        .await?;
        c.assign_topic(&names.input).await?;
        Ok(c)
    })
    .await?;
    let config = ExactlyOnceConfig {
        max_records: 1,
        max_interval: POLL,
        ..ExactlyOnceConfig::new(names.group.clone())
    };
    Ok(ExactlyOnce::with_observer(
        consumer, producer, config, watch,
    )?)
}

/// The fulfilment of each order, to the partition it came from.
fn fulfilment(topic: &str, record: &ConsumerRecord, out: &mut Vec<Output>) {
    if let Some(v) = record.value.as_deref().and_then(ValueGen::decode) {
        out.push(Output::to_partition(
            topic,
            record.partition,
            Some(Bytes::from(v.to_string())),
            Some(Bytes::from(ValueGen::encode(v))),
        ));
    }
}

/// Watches the exactly-once loop across its instances: records each poll
/// that reached the processing as a delivery, crashes on the schedule
/// just before a commit, and measures what committed.
struct EosWatch<'a> {
    history: &'a History,
    group: &'a str,
    /// The consumer's process: a new one whenever it goes back to
    /// re-read (a crash, an abort, a lost instance).
    process: ProcessId,
    schedule: CrashSchedule,
    /// Steps that polled records (the step numbers the schedule counts).
    steps: u64,
    /// The reads of the transaction in flight.
    batch: Vec<Read>,
    /// Whether the instance is lost (crashed, or its transaction's outcome
    /// unknown) and a new one must take over.
    lost: bool,
    progress: Progress,
    applied: &'a AtomicU64,
    sent_at: &'a Mutex<HashMap<Value, Instant>>,
}

impl EosObserver for EosWatch<'_> {
    // One poll per transaction (`max_records` 1).
    fn polled(&mut self, records: &[ConsumerRecord]) {
        self.steps += 1;
        let reads = decode_reads(records);
        self.history
            .invoke(
                self.process,
                OpKind::Poll,
                Some(self.group),
                vec![Mop::Poll { reads: Vec::new() }],
            )
            .ok(vec![Mop::Poll {
                reads: reads.clone(),
            }]);
        self.batch = reads;
    }

    fn at(&mut self, point: EosPoint) -> Control {
        if point == EosPoint::BeforeCommit
            && self.schedule.crashes(self.steps, CrashPoint::BeforeCommit)
        {
            Control::Crash
        } else {
            Control::Continue
        }
    }

    fn ended(&mut self, outcome: TxnOutcome<'_>) {
        let batch = std::mem::take(&mut self.batch);
        match outcome {
            TxnOutcome::Committed => {
                let values: Vec<Value> = batch.iter().map(|r| r.value).collect();
                self.progress.effect(&values, self.sent_at);
                self.applied
                    .store(self.progress.delivered.len() as u64, Ordering::Release);
                return;
            }
            TxnOutcome::Aborted(e) => {
                tracing::debug!(%e, "transaction aborted; the consumer rewinds");
            }
            TxnOutcome::Unknown(e) => {
                tracing::debug!(%e, "transaction outcome unknown; a new instance settles it");
                self.lost = true;
            }
            TxnOutcome::Crashed(_) => {
                // The process dies with its transaction open: a new
                // instance's producer fences it and aborts the transaction.
                self.history.crashed(self.process, CrashPoint::BeforeCommit);
                self.progress.crashes += 1;
                self.lost = true;
            }
        }
        self.progress.absorbed += batch.len() as u64;
        self.process = self.history.process();
    }
}

pub(super) async fn consume_exactly_once(
    shared: Shared<'_>,
) -> Result<(Progress, Option<AloSink>), LabError> {
    let Shared {
        client,
        names,
        history,
        schedule,
        produced,
        applied,
        sent_at,
        config,
    } = shared;
    let mut watch = EosWatch {
        history,
        group: &names.group,
        process: history.process(),
        schedule,
        steps: 0,
        batch: Vec::new(),
        lost: false,
        progress: Progress::default(),
        applied,
        sent_at,
    };
    let mut eos = exactly_once(client, names, &mut watch).await?;
    loop {
        let step = eos
            .step(|record, out| fulfilment(&names.output, record, out))
            .await;
        let step_idle = matches!(step, Ok(Step::Idle));
        let lost = eos.observer().lost || eos.producer().is_fatal();
        match step {
            Err(e) if !lost => step_failed(e).await,
            _ => {}
        }
        if lost {
            drop(eos);
            watch.lost = false;
            eos = exactly_once(client, names, &mut watch).await?;
        }
        if eos
            .observer_mut()
            .progress
            .finished(step_idle, produced, config)
        {
            break;
        }
    }
    drop(eos);
    Ok((watch.progress, None))
}
