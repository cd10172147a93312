//! Producer ids and transactions: InitProducerId, AddPartitionsToTxn,
//! AddOffsetsToTxn, TxnOffsetCommit, EndTxn, and the admin views
//! ListTransactions and DescribeTransactions.
//!
//! Kafka clients here speak transaction version 1 (EndTxn ≤ v4): they
//! keep their producer epoch across transactions, so their transactional
//! ids are initialised with `keep_epoch` (see `txn::state`).

use kafka_protocol::messages::add_offsets_to_txn_request::AddOffsetsToTxnRequest;
use kafka_protocol::messages::add_offsets_to_txn_response::AddOffsetsToTxnResponse;
use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnRequest;
use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnResponse, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::describe_transactions_request::DescribeTransactionsRequest;
use kafka_protocol::messages::describe_transactions_response::{
    DescribeTransactionsResponse, TopicData, TransactionState as DescribedTxn,
};
use kafka_protocol::messages::end_txn_request::EndTxnRequest;
use kafka_protocol::messages::end_txn_response::EndTxnResponse;
use kafka_protocol::messages::init_producer_id_request::InitProducerIdRequest;
use kafka_protocol::messages::init_producer_id_response::InitProducerIdResponse;
use kafka_protocol::messages::list_transactions_request::ListTransactionsRequest;
use kafka_protocol::messages::list_transactions_response::{
    ListTransactionsResponse, TransactionState as ListedTxn,
};
use kafka_protocol::messages::txn_offset_commit_request::TxnOffsetCommitRequest;
use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponse, TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::{ProducerId, TransactionalId};

use super::conn::Ctx;
use super::errors::code;
use super::metadata::{str, topic_name};
use crate::auth::actions::Action;
use crate::error::BrokerError;
use crate::group::CommitFence;
use crate::txn::{MAX_TXN_TIMEOUT_MS, TxnMeta, TxnState};

/// Kafka's name of a transaction state.
fn state_name(s: TxnState) -> &'static str {
    match s {
        TxnState::Empty => "Empty",
        TxnState::Ongoing => "Ongoing",
        TxnState::PrepareCommit => "PrepareCommit",
        TxnState::PrepareAbort => "PrepareAbort",
        TxnState::CompleteCommit => "CompleteCommit",
        TxnState::CompleteAbort => "CompleteAbort",
    }
}

pub(crate) async fn init_producer_id(
    cx: &Ctx<'_>,
    req: InitProducerIdRequest,
) -> InitProducerIdResponse {
    let mut resp = InitProducerIdResponse::default();
    let tid = req
        .transactional_id
        .as_ref()
        .map(|t| t.0.to_string())
        .filter(|t| !t.is_empty());
    if let Err(e) = cx.authorize(Action::InitProducer(tid.as_deref())) {
        resp.error_code = cx.code(&e);
        resp.producer_id = ProducerId(-1);
        resp.producer_epoch = -1;
        return resp;
    }
    let r = match tid {
        None => {
            // An idempotent producer, new or asking for a fresh epoch
            // after a lost sequence (KIP-360): a producer id never handed
            // out before serves both.
            let s = cx.state().clone();
            tokio::task::spawn_blocking(move || s.allocate_producer_id())
                .await
                .map_err(|e| BrokerError::InvalidRequest(format!("producer id: {e}")))
                .and_then(|r| r)
                .map(|id| (id, 0))
        }
        Some(_)
            if req.transaction_timeout_ms < 0
                || req.transaction_timeout_ms as u32 > MAX_TXN_TIMEOUT_MS =>
        {
            resp.error_code = cx.raw(code::INVALID_TRANSACTION_TIMEOUT);
            resp.producer_id = ProducerId(-1);
            resp.producer_epoch = -1;
            return resp;
        }
        Some(tid) => {
            let _busy = cx.state().enter();
            cx.state()
                .init_producer_id(&tid, req.transaction_timeout_ms as u32, true)
                .await
        }
    };
    match r {
        Ok((id, e)) => {
            resp.producer_id = ProducerId(id);
            resp.producer_epoch = e;
        }
        Err(e) => {
            resp.error_code = cx.code(&e);
            resp.producer_id = ProducerId(-1);
            resp.producer_epoch = -1;
        }
    }
    resp
}

pub(crate) async fn add_partitions_to_txn(
    cx: &Ctx<'_>,
    req: AddPartitionsToTxnRequest,
) -> AddPartitionsToTxnResponse {
    let tid = req.v3_and_below_transactional_id.0.to_string();
    let mut parts = Vec::new();
    for t in &req.v3_and_below_topics {
        for p in &t.partitions {
            parts.push((t.name.0.to_string(), *p));
        }
    }
    // The producer must be allowed the transactional id and a write to
    // every topic; every partition must exist: a transaction never
    // registers one that cannot be written.
    let denied = cx
        .authorize(Action::UseTransaction(&tid))
        .and_then(|()| {
            parts.iter().try_for_each(|(topic, _)| {
                cx.authorize(Action::Produce {
                    topic,
                    transactional_id: Some(&tid),
                })
            })
        })
        .err();
    let unknown = denied.or_else(|| {
        parts.iter().find_map(|(t, p)| {
            u32::try_from(*p)
                .ok()
                .and_then(|pi| cx.state().partition(t, pi).ok())
                .is_none()
                .then(|| BrokerError::UnknownTopicOrPartition {
                    topic: t.clone(),
                    partition: (*p).max(0) as u32,
                })
        })
    });
    let _busy = cx.state().enter();
    let r = match unknown {
        Some(e) => Err(e),
        None => {
            let named: Vec<(String, u32)> =
                parts.iter().map(|(t, p)| (t.clone(), *p as u32)).collect();
            cx.state()
                .add_partitions_to_txn(
                    &tid,
                    req.v3_and_below_producer_id.0,
                    req.v3_and_below_producer_epoch,
                    &named,
                )
                .await
        }
    };
    let error = cx.code_of(&r);
    let mut resp = AddPartitionsToTxnResponse::default();
    resp.results_by_topic_v3_and_below = req
        .v3_and_below_topics
        .iter()
        .map(|t| {
            let mut tr = AddPartitionsToTxnTopicResult::default();
            tr.name = t.name.clone();
            tr.results_by_partition = t
                .partitions
                .iter()
                .map(|p| {
                    let mut pr = AddPartitionsToTxnPartitionResult::default();
                    pr.partition_index = *p;
                    pr.partition_error_code = error;
                    pr
                })
                .collect();
            tr
        })
        .collect();
    resp
}

pub(crate) async fn add_offsets_to_txn(
    cx: &Ctx<'_>,
    req: AddOffsetsToTxnRequest,
) -> AddOffsetsToTxnResponse {
    let _busy = cx.state().enter();
    let allowed = cx
        .authorize(Action::UseTransaction(req.transactional_id.0.as_str()))
        .and_then(|()| cx.authorize(Action::UseGroup(req.group_id.0.as_str())));
    if let Err(e) = allowed {
        let mut resp = AddOffsetsToTxnResponse::default();
        resp.error_code = cx.code(&e);
        return resp;
    }
    let r = cx
        .state()
        .add_offsets_to_txn(
            req.transactional_id.0.as_str(),
            req.producer_id.0,
            req.producer_epoch,
            req.group_id.0.as_str(),
        )
        .await;
    let mut resp = AddOffsetsToTxnResponse::default();
    resp.error_code = cx.code_of(&r);
    resp
}

pub(crate) async fn txn_offset_commit(
    cx: &Ctx<'_>,
    req: TxnOffsetCommitRequest,
) -> TxnOffsetCommitResponse {
    let mut offsets = Vec::new();
    let mut bad = None;
    for t in &req.topics {
        for p in &t.partitions {
            match (
                u32::try_from(p.partition_index),
                u64::try_from(p.committed_offset),
            ) {
                (Ok(pi), Ok(o)) => offsets.push((t.name.0.to_string(), pi, o)),
                _ => {
                    bad = Some(BrokerError::InvalidRequest(format!(
                        "offset {} for {}/{} is out of range",
                        p.committed_offset, t.name.0, p.partition_index
                    )))
                }
            }
        }
    }
    // v3 (KIP-447) carries the member's generation and id, and is fenced
    // by the group; before it, only the producer epoch fences.
    let fence = if cx.version >= 3 {
        CommitFence {
            generation: req.generation_id,
            member_id: req.member_id.to_string(),
            instance_id: req
                .group_instance_id
                .as_ref()
                .map(|s| s.to_string())
                .unwrap_or_default(),
        }
    } else {
        CommitFence {
            generation: -1,
            member_id: String::new(),
            instance_id: String::new(),
        }
    };
    let _busy = cx.state().enter();
    let denied = cx
        .authorize(Action::UseTransaction(req.transactional_id.0.as_str()))
        .and_then(|()| cx.authorize(Action::UseGroup(req.group_id.0.as_str())))
        .and_then(|()| {
            req.topics
                .iter()
                .try_for_each(|t| cx.authorize(Action::CommitTopic(t.name.0.as_str())))
        })
        .err();
    let r = match denied.or(bad) {
        Some(e) => Err(e),
        None => {
            cx.state()
                .txn_offset_commit(
                    req.transactional_id.0.as_str(),
                    req.producer_id.0,
                    req.producer_epoch,
                    req.group_id.0.as_str(),
                    &offsets,
                    &fence,
                )
                .await
        }
    };
    let error = cx.code_of(&r);
    let mut resp = TxnOffsetCommitResponse::default();
    resp.topics = req
        .topics
        .iter()
        .map(|t| {
            let mut tr = TxnOffsetCommitResponseTopic::default();
            tr.name = t.name.clone();
            tr.partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let mut pr = TxnOffsetCommitResponsePartition::default();
                    pr.partition_index = p.partition_index;
                    pr.error_code = error;
                    pr
                })
                .collect();
            tr
        })
        .collect();
    resp
}

pub(crate) async fn end_txn(cx: &Ctx<'_>, req: EndTxnRequest) -> EndTxnResponse {
    let _busy = cx.state().enter();
    let id = req.transactional_id.0.as_str();
    let r = match cx.authorize(Action::UseTransaction(id)) {
        Ok(()) => {
            cx.state()
                .end_txn(id, req.producer_id.0, req.producer_epoch, req.committed)
                .await
        }
        Err(e) => Err(e),
    };
    let mut resp = EndTxnResponse::default();
    resp.error_code = cx.code_of(&r);
    resp
}

pub(crate) async fn list_transactions(
    cx: &Ctx<'_>,
    req: ListTransactionsRequest,
) -> ListTransactionsResponse {
    let mut resp = ListTransactionsResponse::default();
    let states: Vec<String> = req.state_filters.iter().map(|s| s.to_string()).collect();
    let now = ferry_proto::now_ms();
    resp.unknown_state_filters = req
        .state_filters
        .iter()
        .filter(|s| {
            ![
                TxnState::Empty,
                TxnState::Ongoing,
                TxnState::PrepareCommit,
                TxnState::PrepareAbort,
                TxnState::CompleteCommit,
                TxnState::CompleteAbort,
            ]
            .iter()
            .any(|t| state_name(*t) == s.as_str())
        })
        .cloned()
        .collect();
    let caller = cx.caller();
    let keep = |m: &TxnMeta| {
        cx.state()
            .may(&caller, Action::DescribeTransaction(&m.transactional_id))
            && (states.is_empty() || states.iter().any(|s| s == state_name(m.state)))
            && (req.producer_id_filters.is_empty()
                || req.producer_id_filters.iter().any(|p| p.0 == m.producer_id))
            && (cx.version < 1
                || req.duration_filter < 0
                || (m.state == TxnState::Ongoing
                    && now.saturating_sub(m.started_ms) >= req.duration_filter))
    };
    resp.transaction_states = cx
        .state()
        .list_transactions()
        .into_iter()
        .filter(keep)
        .map(|m| {
            let mut t = ListedTxn::default();
            t.transactional_id = TransactionalId(str(&m.transactional_id));
            t.producer_id = ProducerId(m.producer_id);
            t.transaction_state = str(state_name(m.state));
            t
        })
        .collect();
    resp
}

pub(crate) async fn describe_transactions(
    cx: &Ctx<'_>,
    req: DescribeTransactionsRequest,
) -> DescribeTransactionsResponse {
    let all = cx.state().list_transactions();
    let mut resp = DescribeTransactionsResponse::default();
    resp.transaction_states = req
        .transactional_ids
        .iter()
        .map(|id| {
            let mut d = DescribedTxn::default();
            d.transactional_id = id.clone();
            if let Err(e) = cx.authorize(Action::DescribeTransaction(id.0.as_str())) {
                d.error_code = cx.code(&e);
                return d;
            }
            match all.iter().find(|m| m.transactional_id == id.0.as_str()) {
                None => d.error_code = cx.raw(code::TRANSACTIONAL_ID_NOT_FOUND),
                Some(m) => {
                    d.transaction_state = str(state_name(m.state));
                    d.transaction_timeout_ms = m.timeout_ms as i32;
                    d.transaction_start_time_ms = if m.state == TxnState::Ongoing {
                        m.started_ms
                    } else {
                        -1
                    };
                    d.producer_id = ProducerId(m.producer_id);
                    d.producer_epoch = m.epoch;
                    let mut topics: Vec<TopicData> = Vec::new();
                    for (topic, p) in &m.partitions {
                        match topics.iter_mut().find(|t| t.topic.0.as_str() == topic) {
                            Some(t) => t.partitions.push(*p as i32),
                            None => {
                                let mut t = TopicData::default();
                                t.topic = topic_name(topic);
                                t.partitions.push(*p as i32);
                                topics.push(t);
                            }
                        }
                    }
                    d.topics = topics;
                }
            }
            d
        })
        .collect();
    resp
}
