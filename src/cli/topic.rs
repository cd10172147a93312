//! `ferry topic create|list|describe|delete`.

use std::process::ExitCode;

use clap::Subcommand;
use serde_json::json;

use super::{BrokerAddr, CliError};

#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    /// Create a topic.
    Create {
        /// Topic name: ASCII letters, digits, '.', '_' and '-'.
        name: String,
        /// Number of partitions.
        #[arg(long, default_value_t = 1)]
        partitions: u32,
        /// A topic setting as KEY=VALUE, by Kafka's names: cleanup.policy
        /// (delete, compact, compact,delete), segment.bytes,
        /// min.cleanable.dirty.ratio, delete.retention.ms. Repeatable.
        #[arg(long = "config", value_name = "KEY=VALUE", value_parser = parse_config)]
        configs: Vec<(String, String)>,
    },
    /// List topics, one per line: NAME<TAB>PARTITIONS.
    List,
    /// Describe a topic's partitions as JSON.
    Describe {
        /// Topic name.
        name: String,
    },
    /// Delete a topic and all its data.
    Delete {
        /// Topic name.
        name: String,
    },
}

fn parse_config(arg: &str) -> Result<(String, String), String> {
    ferry_broker::TopicConfig::split_pair(arg).map(|(k, v)| (k.to_string(), v.to_string()))
}

pub async fn run(command: TopicCommand, broker: BrokerAddr) -> Result<ExitCode, CliError> {
    let client = broker.connect().await?;
    match command {
        TopicCommand::Create {
            name,
            partitions,
            configs,
        } => {
            let pairs: Vec<(&str, &str)> = configs
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            client
                .create_topic_with_configs(&name, partitions, &pairs)
                .await?;
            println!("created topic {name} with {partitions} partition(s)");
        }
        TopicCommand::List => {
            for t in client.list_topics().await? {
                println!("{}\t{}", t.name, t.partitions);
            }
        }
        TopicCommand::Describe { name } => {
            let d = client.describe_topic(&name).await?;
            let partitions: Vec<_> = d
                .partitions
                .iter()
                .map(|p| {
                    json!({
                        "partition": p.partition,
                        "log_start_offset": p.log_start_offset,
                        "high_watermark": p.high_watermark,
                        "last_stable_offset": p.last_stable_offset,
                        "durable_watermark": p.durable_watermark,
                        "size_bytes": p.size_bytes,
                        "segments": p.segments,
                    })
                })
                .collect();
            println!(
                "{}",
                json!({ "name": d.name, "partitions": partitions, "configs": d.configs })
            );
        }
        TopicCommand::Delete { name } => {
            client.delete_topic(&name).await?;
            println!("deleted topic {name}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
