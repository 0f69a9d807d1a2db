//! `procpool status --broker URL --queue NAME`: what a queue holds and who serves it.

use std::process::ExitCode;

use anyhow::Result;
use serde_json::{json, Value};

use super::{unix_now, Broker, BrokerArgs, Keys, GROUP};

/// Options of `procpool status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// A node is alive while its last heartbeat is younger than this many of its leases
/// (it beats every third of one).
const ALIVE_LEASES: f64 = 2.0;

pub fn status(args: &StatusArgs) -> Result<ExitCode> {
    let (url, queue) = args.broker.required("status")?;
    let keys = Keys::new(queue);
    let mut broker = Broker::connect(&url, &args.broker)?;
    let report = queue_report(&mut broker, &keys, queue)?;
    if args.json {
        println!("{report}");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "queue {queue} at {} ({}): {} tasks waiting, {} in flight, {} dead-lettered",
        broker.url(),
        report["workload"].as_str().unwrap_or("no workload yet"),
        report["waiting"],
        report["in_flight"],
        report["dead_lettered"],
    );
    for node in report["nodes"].as_array().into_iter().flatten() {
        println!(
            "  node {}: {}, {} workers, holding {}, {} done, last heartbeat {:.1}s ago",
            node["name"].as_str().unwrap_or("?"),
            if node["alive"] == true {
                "alive"
            } else {
                "silent"
            },
            node["procs"],
            node["holding"],
            node["done"],
            node["heartbeat_age_s"].as_f64().unwrap_or(f64::NAN),
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn queue_report(broker: &mut Broker, keys: &Keys, queue: &str) -> Result<Value> {
    let (workload, length, dead, beats): (Option<String>, u64, u64, Vec<(String, String)>) = broker
        .call(|connection| {
            redis::pipe()
                .cmd("GET")
                .arg(keys.workload())
                .cmd("XLEN")
                .arg(keys.tasks())
                .cmd("XLEN")
                .arg(keys.dead())
                .cmd("HGETALL")
                .arg(keys.nodes())
                .query(connection)
        })?;
    // In flight: delivered to a node and not acknowledged (no group yet: none).
    let in_flight = broker
        .call(|connection| {
            redis::cmd("XPENDING")
                .arg(keys.tasks())
                .arg(GROUP)
                .query::<(u64, redis::Value, redis::Value, redis::Value)>(connection)
        })
        .map_or(0, |(count, ..)| count);
    let nodes: Vec<Value> = beats
        .iter()
        .map(|(name, beat)| node_entry(name, beat))
        .collect();
    Ok(json!({
        "queue": queue,
        "workload": workload,
        "waiting": length.saturating_sub(in_flight),
        "in_flight": in_flight,
        "dead_lettered": dead,
        "nodes": nodes,
    }))
}

/// A node's heartbeat as `status` shows it, with its age and whether it is alive.
fn node_entry(name: &str, beat: &str) -> Value {
    let mut node: Value = serde_json::from_str(beat).unwrap_or_else(|_| json!({}));
    let age = unix_now() - node["heartbeat"].as_f64().unwrap_or(0.0);
    let lease = node["lease_s"].as_f64().unwrap_or(5.0);
    node["name"] = json!(name);
    node["heartbeat_age_s"] = json!(age);
    node["alive"] = json!(age < lease * ALIVE_LEASES);
    node
}

/// How many nodes have a live heartbeat.
pub fn live_nodes(broker: &mut Broker, keys: &Keys) -> Result<usize> {
    let beats: Vec<(String, String)> =
        broker.call(|connection| redis::cmd("HGETALL").arg(keys.nodes()).query(connection))?;
    Ok(beats
        .iter()
        .filter(|(name, beat)| node_entry(name, beat)["alive"] == true)
        .count())
}
