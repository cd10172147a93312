//! [`TransactionalSink`]: output records and consumer offsets in one
//! broker transaction.

use std::future::Future;

use crate::eos::Output;
use crate::error::ClientError;
use crate::transactional::TransactionalProducer;

use super::{Sink, SinkError, Written};

/// Writes results to output topics inside a [`TransactionalProducer`]'s
/// transaction, and commits them together with the consumer's offsets:
/// exactly-once consume → process → produce.
///
/// [`write`](Sink::write) opens a transaction if none is open and sends
/// the records into it; they stay invisible to `read_committed` readers.
/// [`commit`](TransactionalSink::commit) adds the offsets (the next offset
/// to read per partition) and commits: outputs and offsets become visible
/// together, or, after a crash or an abort, neither does. A consumer that
/// restarts from the group's committed offsets therefore re-reads exactly
/// the input whose outputs were discarded, and each input's outputs are
/// committed once. Repeats that a crash causes are absorbed by the
/// aborted transaction, not by a lookup.
///
/// This is the step-by-step form of [`ExactlyOnce`](crate::ExactlyOnce),
/// for loops that drive their own polls. As there, the consumer must read
/// `read_committed` and commit nothing itself, and on an error the caller
/// rewinds it to the offsets of the last commit (or restarts it from the
/// group's committed offsets). A fatal error (the producer was fenced by
/// a newer instance with the same transactional id) means this instance
/// must stop.
///
/// Effects outside the broker (a database row, an email) are not part of
/// the transaction: a crash before the commit repeats them. Keep them
/// idempotent, or move them downstream of the output topic.
///
/// ```no_run
/// use std::time::Duration;
/// use ferry_client::sink::{Sink, TransactionalSink};
/// use ferry_client::{
///     Client, CommitMode, Consumer, ConsumerConfig, Output, TransactionalConfig,
///     TransactionalProducer,
/// };
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let client = Client::connect("127.0.0.1:7400").await?;
/// // The producer first: it settles what a previous instance left open.
/// let producer = TransactionalProducer::new(client.clone(), TransactionalConfig::new("fulfil-1")).await?;
/// let mut sink = TransactionalSink::new(producer, "fulfil")?;
/// let mut consumer = Consumer::new(client, ConsumerConfig {
///     group: Some("fulfil".into()),
///     commit_mode: CommitMode::None, // the offsets commit in the transaction
///     ..ConsumerConfig::default()   // read_committed, from the committed offsets
/// }).await?;
/// consumer.subscribe("orders").await?;
/// loop {
///     let rewind = consumer.positions();
///     let records = consumer.poll(Duration::from_millis(100)).await?;
///     if records.is_empty() {
///         continue;
///     }
///     let outputs: Vec<Output> = records
///         .iter()
///         .map(|r| Output::new("fulfilments", r.key.clone(), r.value.clone()))
///         .collect();
///     let result = match sink.write(&outputs).await {
///         Ok(_) => sink.commit(&consumer.positions()).await,
///         Err(e) => Err(e),
///     };
///     if let Err(e) = result {
///         if sink.producer().is_fatal() {
///             return Err(e.into()); // fenced: another instance took over
///         }
///         sink.abort().await?;
///         for (topic, partition, offset) in rewind {
///             consumer.seek(&topic, partition, offset);
///         }
///     }
/// }
/// # }
/// ```
#[derive(Debug)]
pub struct TransactionalSink {
    producer: TransactionalProducer,
    group: String,
}

impl TransactionalSink {
    /// A sink whose commits carry `group`'s offsets.
    pub fn new(
        producer: TransactionalProducer,
        group: impl Into<String>,
    ) -> Result<TransactionalSink, ClientError> {
        let group = group.into();
        if group.is_empty() {
            return Err(ClientError::InvalidArgument(
                "the consumer group name is empty".into(),
            ));
        }
        Ok(TransactionalSink { producer, group })
    }

    /// The producer.
    pub fn producer(&self) -> &TransactionalProducer {
        &self.producer
    }

    /// The consumer group whose offsets commit.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// Whether a transaction is open.
    pub fn in_transaction(&self) -> bool {
        self.producer.in_transaction()
    }

    /// Takes the sink apart.
    pub fn into_producer(self) -> TransactionalProducer {
        self.producer
    }

    /// Adds `offsets` (`(topic, partition, next offset to read)`) to the
    /// open transaction and commits it. Without an open transaction, one
    /// is opened for the offsets alone (nothing is done if `offsets` is
    /// empty too). On an error that is not fatal the transaction is
    /// aborted here; the caller rewinds its consumer.
    pub async fn commit(&mut self, offsets: &[(String, u32, u64)]) -> Result<(), SinkError> {
        if !self.producer.in_transaction() {
            if offsets.is_empty() {
                return Ok(());
            }
            self.producer.begin()?;
        }
        let result = match self.producer.send_offsets(&self.group, offsets).await {
            Ok(()) => self.producer.commit().await,
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            if !self.producer.is_fatal() {
                self.producer.abort().await?;
            }
            return Err(e.into());
        }
        Ok(())
    }

    /// Aborts the open transaction, if any: none of its records or
    /// offsets ever become visible.
    pub async fn abort(&mut self) -> Result<(), SinkError> {
        Ok(self.producer.abort().await?)
    }

    async fn send_all(&mut self, items: &[Output]) -> Result<Written, SinkError> {
        if !self.producer.in_transaction() {
            self.producer.begin()?;
        }
        for out in items {
            let (key, value) = (out.key.as_deref(), out.value.as_deref());
            match out.partition {
                Some(p) => self.producer.send_to(&out.topic, p, key, value).await?,
                None => self.producer.send(&out.topic, key, value).await?,
            };
        }
        Ok(Written {
            applied: items.len() as u64,
            absorbed: 0,
        })
    }
}

impl Sink for TransactionalSink {
    type Item = Output;

    /// Sends `items` inside the open transaction (opening one if needed).
    /// `applied` counts records sent, visible only once
    /// [`commit`](TransactionalSink::commit) succeeds. A failed send makes
    /// the transaction abortable: [`abort`](TransactionalSink::abort) and
    /// rewind.
    fn write(
        &mut self,
        items: &[Output],
    ) -> impl Future<Output = Result<Written, SinkError>> + Send {
        self.send_all(items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Client;

    #[tokio::test]
    async fn the_group_must_be_named_and_an_empty_commit_does_nothing() {
        let client = Client::connect_lazy("127.0.0.1:1").unwrap();
        let producer = || TransactionalProducer::offline_for_tests(client.clone());
        assert!(TransactionalSink::new(producer(), "").is_err());
        let mut sink = TransactionalSink::new(producer(), "g").unwrap();
        assert_eq!(sink.group(), "g");
        sink.commit(&[]).await.unwrap();
        assert!(!sink.in_transaction());
        sink.abort().await.unwrap();
    }
}
