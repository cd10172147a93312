//! The at-least-once consumer of a cell: a crashing group consumer that applies each delivery to its sink, then commits.

use super::*;

pub(super) async fn consume_at_least_once(
    shared: Shared<'_>,
    scenario: Scenario,
    mode: LabMode,
    mut sink: AloSink,
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
    let mut consumer = subscribe(client, names, mode, history, &schedule).await?;
    // Orders in SQLite also write a fulfilment event per delivery,
    // acknowledged before the offsets commit (the PostgreSQL baseline, as
    // the offsets-in-the-database mode it is compared with, does not).
    let fulfilments = match (scenario, mode) {
        (Scenario::Orders, LabMode::AtLeastOnceSink | LabMode::AtLeastOnce) => Some(
            patiently(|| Producer::new(client.clone(), producer_config(DeliveryMode::AtLeastOnce)))
                .await?,
        ),
        _ => None,
    };
    let mut progress = Progress::default();
    loop {
        let (sink_ref, progress_ref, out) = (&mut sink, &mut progress, &fulfilments);
        let step = consumer
            .step(POLL, move |reads: Vec<Read>, _| async move {
                let values: Vec<Value> = reads.iter().map(|r| r.value).collect();
                progress_ref.absorbed += sink_ref.apply_until_done(&values, config.records).await;
                progress_ref.effect(&values, sent_at);
                applied.store(progress_ref.delivered.len() as u64, Ordering::Release);
                if let Some(producer) = out {
                    send_fulfilments(producer, &names.output, &reads).await;
                }
            })
            .await;
        let step_idle = match step {
            Ok(ConsumerStep::Idle) => true,
            Ok(ConsumerStep::Crashed(_)) => {
                progress.crashes += 1;
                false
            }
            Ok(ConsumerStep::Delivered(_)) => false,
            Err(e) => {
                step_failed(e).await;
                false
            }
        };
        if progress.finished(step_idle, produced, config) {
            break;
        }
    }
    if let Some(p) = fulfilments {
        let _ = p.close().await;
    }
    Ok((progress, Some(sink)))
}

/// Sends a fulfilment per order and waits for every acknowledgement,
/// resending what failed (at least once: repeats are allowed downstream).
async fn send_fulfilments(producer: &Producer, topic: &str, reads: &[Read]) {
    let mut pending: Vec<&Read> = reads.iter().collect();
    for _ in 0..100 {
        let mut deliveries = Vec::new();
        for r in &pending {
            let value = ValueGen::encode(r.value);
            let key = r.value.to_string();
            match producer
                .send_to(topic, r.tp.partition, Some(key.as_bytes()), Some(&value))
                .await
            {
                Ok(d) => deliveries.push((*r, Some(d))),
                Err(_) => deliveries.push((*r, None)),
            }
        }
        let mut failed = Vec::new();
        for (r, d) in deliveries {
            let ok = match d {
                Some(d) => d.wait().await.is_ok(),
                None => false,
            };
            if !ok {
                failed.push(r);
            }
        }
        if failed.is_empty() {
            return;
        }
        pending = failed;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tracing::warn!(left = pending.len(), "fulfilments not acknowledged");
}
