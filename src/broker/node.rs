//! `procpool node`: a local pool whose tasks come from a queue in Redis.
//!
//! One thread, like every supervisor here: Redis is asked without blocking, between
//! the pool's events and on its ticks (every [`POLL`] while idle), so restarts,
//! deadlines and SIGTERM wait on nothing but Redis's replies — except while Redis is
//! unreachable, when each call retries for up to `--broker-timeout` before the node
//! gives up. Task ends are acknowledged
//! in batches, each in one Lua script that checks the node still owns the task,
//! writes the end to the run's results, and removes the task; an end the node no
//! longer owns (its lease ran out and another node took the task) is dropped.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use procpool_child::TaskId;
use procpool_supervisor::{Event, Pool, PoolError, RunEnd, TaskOptions, TaskOutcome};
use serde_json::{json, Value};

use super::{
    ensure_group, entry_field, stream_entries, unix_now, Broker, BrokerArgs, Entry, Fields, Keys,
    GROUP, RESULTS_TTL_S,
};
use crate::cli::PoolArgs;
use crate::parse;
use crate::registry::{self, Registration, WorkerSide};
use crate::run::{self, UsageError};

/// Options of `procpool node`.
#[derive(Debug, clap::Args)]
pub struct NodeArgs {
    #[command(flatten)]
    pub pool: PoolArgs,
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// Seconds a task stays this node's without renewal; past it, another node takes
    /// it over (renewed every third of it while this node lives)
    #[arg(long, default_value = "5", value_parser = parse::positive_seconds)]
    pub lease: Duration,
    /// This node's name in the queue [default: HOST-PID]
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
}

/// How often an idle node asks the queue for tasks.
const POLL: Duration = Duration::from_millis(5);

/// Takes over tasks idle past the lease, with how often each was delivered; returns
/// the next cursor and `[entry id, fields, deliveries]` for each.
const RECLAIM: &str = r"
local tasks, group, me = ARGV[1] .. ':tasks', ARGV[2], ARGV[3]
local claimed = redis.call('XAUTOCLAIM', tasks, group, me, ARGV[4], ARGV[5], 'COUNT', ARGV[6])
local out = {}
for i = 1, #claimed[2] do
  local entry = claimed[2][i]
  if entry and entry[2] then
    local pending = redis.call('XPENDING', tasks, group, entry[1], entry[1], 1)
    if #pending == 1 then
      out[#out + 1] = {entry[1], entry[2], pending[1][4]}
    end
  end
end
return {claimed[1], out}
";

/// Renews this node's claim on each (entry, run) it still owns; acknowledges those
/// whose run is gone (withdrawn, or its submitter died). Returns `{lost, withdrawn}`.
const RENEW: &str = r"
local prefix, group, me = ARGV[1], ARGV[2], ARGV[3]
local tasks = prefix .. ':tasks'
local lost, withdrawn = {}, {}
for i = 4, #ARGV, 2 do
  local entry, run = ARGV[i], ARGV[i + 1]
  local pending = redis.call('XPENDING', tasks, group, entry, entry, 1)
  local mine = #pending == 1 and pending[1][2] == me
  if redis.call('EXISTS', prefix .. ':run:' .. run) == 0 then
    if mine then
      redis.call('XACK', tasks, group, entry)
      redis.call('XDEL', tasks, entry)
    end
    withdrawn[#withdrawn + 1] = entry
  elseif not mine then
    lost[#lost + 1] = entry
  else
    redis.call('XCLAIM', tasks, group, me, 0, entry, 'JUSTID')
  end
end
return {lost, withdrawn}
";

/// Ends tasks this node owns: for each (entry, run, task id, end, dead-letter input
/// or ''), writes the end to the run's results (renewing their expiry) if its
/// submitter is still there,
/// dead-letters it if asked, and removes it from the stream. Returns how many were
/// no longer this node's (and so dropped).
const ACK: &str = r"
local prefix, group, me, results_ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local tasks = prefix .. ':tasks'
local stale = 0
for i = 5, #ARGV, 5 do
  local entry, run, id, ended, dead = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  local pending = redis.call('XPENDING', tasks, group, entry, entry, 1)
  if #pending == 1 and pending[1][2] == me then
    if redis.call('EXISTS', prefix .. ':run:' .. run) == 1 then
      redis.call('XADD', prefix .. ':results:' .. run, '*', 'id', id, 'end', ended)
      redis.call('EXPIRE', prefix .. ':results:' .. run, results_ttl)
    end
    if dead ~= '' then
      redis.call('XADD', prefix .. ':dead', '*', 'run', run, 'id', id, 'input', dead, 'end', ended)
    end
    redis.call('XACK', tasks, group, entry)
    redis.call('XDEL', tasks, entry)
  else
    stale = stale + 1
  end
end
return stale
";

/// Hands entries (with the delivery count to restore) that are still this node's
/// back to the group: idle past the lease, for the next reclaim. Returns how many.
const RELEASE: &str = r"
local tasks, group, me, idle = ARGV[1] .. ':tasks', ARGV[2], ARGV[3], ARGV[4]
local released = 0
for i = 5, #ARGV, 2 do
  local pending = redis.call('XPENDING', tasks, group, ARGV[i], ARGV[i], 1)
  if #pending == 1 and pending[1][2] == me then
    redis.call('XCLAIM', tasks, group, me, 0, ARGV[i], 'IDLE', idle, 'RETRYCOUNT', ARGV[i + 1], 'JUSTID')
    released = released + 1
  end
end
return released
";

/// A task this node read from the queue and has not ended.
struct Held {
    entry: String,
    run: String,
    /// The submitter's id for it.
    task: String,
    /// Times Redis has delivered it, this node's included.
    deliveries: u32,
}

/// A task end waiting for the next acknowledgement batch.
struct Ack {
    held: Held,
    end: Value,
    /// The input, when the task goes to the dead letters.
    dead: Option<String>,
}

pub fn node(args: NodeArgs) -> Result<ExitCode> {
    let (url, queue) = args.broker.required("node")?;
    let keys = Keys::new(queue);
    let mut broker = Broker::connect(&url, &args.broker)?;
    ensure_group(&mut broker, &keys)?;
    let name = args.name.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|host| host.trim().to_string())
            .unwrap_or_else(|_| "node".into());
        format!("{host}-{}", std::process::id())
    });
    let registration = match &args.pool.child {
        Some(_) => registry::find("tasks").expect("the tasks registration exists"),
        None => queue_workload(&mut broker, &keys, queue)?,
    };
    let procs = run::procs(&args.pool);
    let mut config = run::pool_config(&args.pool, procs, registration)?;
    config.tick = Some(POLL);
    let pool = Pool::start(config).context("starting the worker pool")?;
    eprintln!(
        "procpool node {name}: {procs} workers on queue {queue} at {} ({}); SIGTERM drains",
        broker.url(),
        registration.name
    );
    let mut node = Node {
        broker,
        keys,
        name,
        lease: args.lease,
        max_attempts: args.pool.max_attempts,
        window: procs * args.pool.prefetch as usize,
        held: HashMap::new(),
        acks: Vec::new(),
        done: 0,
        procs,
        reclaim_cursor: "0-0".into(),
        next_poll: Instant::now(),
        next_reclaim: Instant::now(),
        next_renewal: Instant::now(),
    };
    node.heartbeat()?;
    node.drive(pool)
}

/// What the queue runs, as its first submitter set it; waited for when no submitter
/// has come yet (the node is not in `status` until it knows, and a signal ends the
/// wait as it would any program: the pool's handling starts with the pool).
fn queue_workload(broker: &mut Broker, keys: &Keys, queue: &str) -> Result<&'static Registration> {
    let mut said = false;
    loop {
        let name: Option<String> =
            broker.call(|connection| redis::cmd("GET").arg(keys.workload()).query(connection))?;
        match name.as_deref().map(|name| (name, registry::find(name))) {
            Some((_, Some(found))) if matches!(found.worker, WorkerSide::ChildOnly { .. }) => {
                return Err(UsageError(format!(
                    "queue {queue} runs `{}`, which has no built-in worker: give the node \
                     --child CMD",
                    found.name
                ))
                .into())
            }
            Some((_, Some(found))) => return Ok(found),
            Some((name, None)) => {
                return Err(UsageError(format!(
                    "queue {queue} runs workload {name:?}, which this procpool does not know; \
                     is it an older or newer version than the submitter's?"
                ))
                .into())
            }
            None if !said => {
                eprintln!("procpool node: queue {queue} has no workload yet; waiting for a run");
                said = true;
            }
            None => {}
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

struct Node {
    broker: Broker,
    keys: Keys,
    name: String,
    lease: Duration,
    max_attempts: u32,
    /// Tasks this node holds at most (in the pool, running or waiting).
    window: usize,
    held: HashMap<TaskId, Held>,
    acks: Vec<Ack>,
    done: u64,
    procs: usize,
    reclaim_cursor: String,
    next_poll: Instant,
    next_reclaim: Instant,
    next_renewal: Instant,
}

impl Node {
    fn drive(mut self, mut pool: Pool) -> Result<ExitCode> {
        // Never written: passed as the pool's input so that its wait goes on (with
        // ticks) while the queue is empty, instead of ending as a joined queue.
        let (never_readable, _write_end): (OwnedFd, OwnedFd) =
            nix::unistd::pipe().context("making the node's idle pipe")?;
        let mut failure = None;
        loop {
            match self.talk_to_redis(&mut pool) {
                Ok(()) => {}
                // Redis restarted without its data: the group is made again; the
                // tasks held are gone with it (their submitter puts them in again).
                Err(err) if err.to_string().contains("NOGROUP") => {
                    eprintln!(
                        "procpool node {}: the queue's consumer group is gone (Redis restarted \
                         without its data?); making it again",
                        self.name
                    );
                    if let Err(err) = ensure_group(&mut self.broker, &self.keys) {
                        failure = Some(err);
                        break;
                    }
                }
                Err(err) => {
                    failure = Some(err);
                    pool.interrupt();
                    pool.interrupt();
                    break;
                }
            }
            let event = match pool.next_event_or_input(Some(never_readable.as_fd())) {
                Ok(Some(event)) => event,
                Ok(None) => break,
                Err(PoolError::Aborted(reason)) => {
                    failure = Some(anyhow::anyhow!("the pool gave up: {reason}"));
                    break;
                }
                Err(err) => return Err(err.into()),
            };
            match event {
                Event::Task {
                    id,
                    attempts,
                    outcome,
                    ..
                } => self.ended(id, attempts, outcome),
                Event::WorkerDied { crash, .. } => eprintln!("procpool node: {crash}"),
                Event::Interrupted { again: false } => {
                    let waiting = self.release_waiting(&mut pool);
                    eprintln!(
                        "procpool node {}: draining: finishing {} tasks, taking no more, \
                         {waiting} not started handed back",
                        self.name,
                        self.held.len()
                    );
                }
                _ => {}
            }
        }
        let report = pool.shutdown();
        if failure.is_none() {
            failure = self.flush().err();
        }
        let released = self.release_unfinished();
        let _ = self.broker.call(|connection| {
            redis::cmd("HDEL")
                .arg(self.keys.nodes())
                .arg(&self.name)
                .query::<()>(connection)
        });
        eprintln!(
            "procpool node {}: {} tasks done, {} ok, {} error, {} failed; {released} handed back",
            self.name, self.done, report.tasks_ok, report.tasks_error, report.tasks_failed
        );
        match (failure, &report.end) {
            (Some(err), _) => Err(err),
            (None, RunEnd::Aborted(reason)) => {
                Err(anyhow::anyhow!("the node's pool gave up: {reason}"))
            }
            (None, _) => Ok(ExitCode::SUCCESS),
        }
    }

    /// Everything the node says to Redis between two pool events, each when due:
    /// acknowledgements, lease renewal, the heartbeat, new and abandoned tasks.
    fn talk_to_redis(&mut self, pool: &mut Pool) -> Result<()> {
        if !pool.has_events() {
            self.flush()?;
        }
        let now = Instant::now();
        if now >= self.next_renewal {
            self.renew(pool)?;
            self.heartbeat()?;
            self.next_renewal = now + self.lease / 3;
        }
        if pool.interrupted() || pool.unfinished() >= self.window {
            return Ok(());
        }
        if now >= self.next_reclaim {
            self.reclaim(pool)?;
            self.next_reclaim = now + (self.lease / 4).min(Duration::from_millis(500));
        }
        // Reclaimed tasks may have filled the window (and COUNT 0 would mean all).
        let room = self.window.saturating_sub(pool.unfinished());
        if now >= self.next_poll && room > 0 {
            let entries = self.read_new(room)?;
            // An empty queue is asked again after a poll interval; a busy one at once.
            if entries.is_empty() {
                self.next_poll = now + POLL;
            }
            for entry in entries {
                self.take(pool, entry, 1);
            }
        }
        Ok(())
    }

    /// A call of one of the Lua scripts above, with the arguments each starts with:
    /// the queue's key prefix, the group, and this node's name.
    fn script(&self, source: &str) -> redis::Cmd {
        let mut script = redis::cmd("EVAL");
        script
            .arg(source)
            .arg(0)
            .arg(self.keys.prefix())
            .arg(GROUP)
            .arg(&self.name);
        script
    }

    fn read_new(&mut self, count: usize) -> Result<Vec<Entry>> {
        let reply = self.broker.call(|connection| {
            redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(GROUP)
                .arg(&self.name)
                .arg("COUNT")
                .arg(count)
                .arg("STREAMS")
                .arg(self.keys.tasks())
                .arg(">")
                .query(connection)
        })?;
        Ok(stream_entries(reply))
    }

    fn reclaim(&mut self, pool: &mut Pool) -> Result<()> {
        let room = self.window - pool.unfinished();
        let mut script = self.script(RECLAIM);
        script
            .arg(self.lease.as_millis() as u64)
            .arg(&self.reclaim_cursor)
            .arg(room);
        let (cursor, claimed): (String, Vec<(String, Fields, u32)>) =
            self.broker.call(|connection| script.query(connection))?;
        self.reclaim_cursor = cursor;
        for (entry, fields, deliveries) in claimed {
            self.take(pool, (entry, fields), deliveries);
        }
        Ok(())
    }

    /// Puts one entry on the pool, or ends it at once: dead-lettered when it has been
    /// delivered more than `--max-attempts` times (each earlier holder died or lost
    /// it), an error when it is not a task.
    fn take(&mut self, pool: &mut Pool, (entry, fields): Entry, deliveries: u32) {
        let held = Held {
            entry,
            run: entry_field(&fields, "run").unwrap_or("").to_string(),
            task: entry_field(&fields, "id").unwrap_or("").to_string(),
            deliveries,
        };
        let input_text = entry_field(&fields, "input").unwrap_or("");
        if deliveries > self.max_attempts {
            let message = format!(
                "dead-lettered after {} deliveries: each node that held it died or lost its lease",
                deliveries - 1
            );
            return self.acks.push(Ack {
                held,
                end: json!({"failed": message, "attempts": deliveries - 1}),
                dead: Some(input_text.to_string()),
            });
        }
        let input: Value = match serde_json::from_str(input_text) {
            Ok(input) => input,
            Err(err) => {
                return self.acks.push(Ack {
                    held,
                    end: json!({"error": format!("not a task: its input is not JSON ({err})"), "attempts": 0}),
                    dead: None,
                })
            }
        };
        // Attempts already spent on other nodes count against the task here.
        let options = TaskOptions {
            timeout: None,
            max_attempts: Some(self.max_attempts - (deliveries - 1)),
        };
        let id = pool.put_with(Arc::new(input), options);
        self.held.insert(id, held);
    }

    fn ended(&mut self, id: TaskId, attempts: u32, outcome: TaskOutcome) {
        // Absent: its lease was lost and another node has it now.
        let Some(held) = self.held.remove(&id) else {
            return;
        };
        self.done += 1;
        let end = match outcome {
            TaskOutcome::Output(output) => json!({"output": output, "attempts": attempts}),
            TaskOutcome::Error(message) => json!({"error": message, "attempts": attempts}),
            TaskOutcome::Failed(crashes) => json!({
                "failed": TaskOutcome::Failed(crashes.clone()).failure_message(attempts),
                "crashes": crashes,
                "attempts": attempts,
            }),
            other => json!({"error": format!("{other:?}"), "attempts": attempts}),
        };
        self.acks.push(Ack {
            held,
            end,
            dead: None,
        });
    }

    /// Acknowledges the batch of ended tasks in one script call.
    fn flush(&mut self) -> Result<()> {
        if self.acks.is_empty() {
            return Ok(());
        }
        let acks = std::mem::take(&mut self.acks);
        let mut script = self.script(ACK);
        script.arg(RESULTS_TTL_S);
        for ack in &acks {
            script
                .arg(&ack.held.entry)
                .arg(&ack.held.run)
                .arg(&ack.held.task)
                .arg(ack.end.to_string())
                .arg(ack.dead.as_deref().unwrap_or(""));
        }
        let stale: u64 = self.broker.call(|connection| script.query(connection))?;
        if stale > 0 {
            eprintln!(
                "procpool node {}: {stale} task ends dropped: their lease ran out and another \
                 node took them over",
                self.name
            );
        }
        Ok(())
    }

    /// Renews the lease on every task held. Those another node has taken since are no
    /// longer trusted, and those whose run is gone are not wanted: either way they are
    /// withdrawn if still waiting, and their ends dropped.
    fn renew(&mut self, pool: &mut Pool) -> Result<()> {
        if self.held.is_empty() {
            return Ok(());
        }
        let mut script = self.script(RENEW);
        for held in self.held.values() {
            script.arg(&held.entry).arg(&held.run);
        }
        let (lost, withdrawn): (Vec<String>, Vec<String>) =
            self.broker.call(|connection| script.query(connection))?;
        for (entries, why) in [
            (
                lost,
                "lost the lease on {} tasks (another node has them now)",
            ),
            (withdrawn, "dropped {} tasks whose run was withdrawn"),
        ] {
            if entries.is_empty() {
                continue;
            }
            let ids: Vec<TaskId> = self
                .held
                .iter()
                .filter(|(_, held)| entries.contains(&held.entry))
                .map(|(id, _)| *id)
                .collect();
            for id in ids {
                self.held.remove(&id);
                pool.cancel(id);
            }
            eprintln!(
                "procpool node {}: {}",
                self.name,
                why.replace("{}", &entries.len().to_string())
            );
        }
        Ok(())
    }

    fn heartbeat(&mut self) -> Result<()> {
        let beat = json!({
            "heartbeat": unix_now(),
            "lease_s": self.lease.as_secs_f64(),
            "procs": self.procs,
            "pid": std::process::id(),
            "holding": self.held.len(),
            "done": self.done,
        });
        self.broker.call(|connection| {
            redis::cmd("HSET")
                .arg(self.keys.nodes())
                .arg(&self.name)
                .arg(beat.to_string())
                .query::<()>(connection)
        })
    }

    /// Withdraws from the pool the tasks no worker has started, and hands them back
    /// to the queue for other nodes at once.
    fn release_waiting(&mut self, pool: &mut Pool) -> usize {
        let waiting: Vec<TaskId> = self
            .held
            .keys()
            .copied()
            .filter(|&id| pool.cancel(id))
            .collect();
        let released: Vec<Held> = waiting
            .iter()
            .filter_map(|id| self.held.remove(id))
            .collect();
        self.release(&released)
    }

    /// Hands the tasks still held (those the drain's grace cut short) back at the end.
    fn release_unfinished(&mut self) -> usize {
        let held: Vec<Held> = self.held.drain().map(|(_, held)| held).collect();
        self.release(&held)
    }

    /// Hands `tasks` back to the queue: each still this node's is marked idle past the
    /// lease, so the next node's reclaim takes it at once, with its delivery count
    /// put back as it was before this node (a hand-back is not an attempt).
    fn release(&mut self, tasks: &[Held]) -> usize {
        if tasks.is_empty() {
            return 0;
        }
        let mut script = self.script(RELEASE);
        script.arg(self.lease.as_millis() as u64 * 2);
        for held in tasks {
            script
                .arg(&held.entry)
                .arg(held.deliveries.saturating_sub(1));
        }
        self.broker
            .call(|connection| script.query::<usize>(connection))
            .unwrap_or(0)
    }
}
