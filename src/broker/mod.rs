//! Many machines through Redis Streams: `procpool node` on each machine takes tasks
//! from a queue, `procpool run <workload> --broker URL --queue NAME` puts them there
//! and reads their ends back, `procpool status` shows the queue.
//!
//! Delivery is Redis's own: one stream of tasks per queue read through a consumer
//! group (`XREADGROUP`), each task owned by the node that read it until it is
//! acknowledged, renewed while the node lives (`XCLAIM ... JUSTID`), and taken over by
//! another node once it has been idle past the lease (`XAUTOCLAIM`), which counts the
//! delivery. Execution is at least once; the submitter counts each task's end once,
//! the first, by task id.
//!
//! Keys of queue `Q` (`procpool:Q:...`): `tasks` (the stream, group `nodes`; fields
//! `run`, `id`, `input`), `workload` (what the queue runs, set by its first
//! submitter), `run:R` (present while run `R`'s submitter is there, renewed as it
//! goes), `results:R` (run `R`'s task ends), `dead` (tasks dead-lettered after
//! `--max-attempts` deliveries), `nodes` (a hash of each node's last heartbeat).

pub mod node;
pub mod status;
pub mod submit;

use std::path::PathBuf;
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};

use crate::parse;
use crate::run::UsageError;

/// Where the queue is, for every command that reaches it.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Broker options")]
pub struct BrokerArgs {
    /// The Redis to go through: redis://[:PASSWORD@]HOST[:PORT][/DB] (or
    /// redis+unix:///PATH); with --queue alone, PROCPOOL_BROKER; the password is never
    /// printed
    #[arg(long, global = true, value_name = "URL")]
    pub broker: Option<String>,
    /// The queue's name (letters, digits, `.`, `_`, `-`; at most 64)
    #[arg(long, global = true, value_name = "NAME", value_parser = parse_queue)]
    pub queue: Option<String>,
    /// How long Redis may be unreachable mid-run before the run fails; retried with
    /// backoff meanwhile, in seconds
    #[arg(long, global = true, default_value = "30", value_parser = parse::positive_seconds)]
    pub broker_timeout: Duration,
    /// With rediss://: trust the Redis server's certificate if this CA (a PEM file)
    /// signed it [default: the system's trusted roots]
    #[arg(long, global = true, value_name = "PEM")]
    pub broker_ca: Option<PathBuf>,
}

impl BrokerArgs {
    /// The URL and queue, both needed once either is given; the URL from
    /// `PROCPOOL_BROKER` when only `--queue` is (so that the variable alone never
    /// turns a local run into a broker run).
    pub fn target(&self) -> Result<Option<(String, &str)>> {
        let from_env = || {
            std::env::var("PROCPOOL_BROKER")
                .ok()
                .filter(|url| !url.is_empty())
        };
        match (&self.broker, &self.queue) {
            (None, None) => Ok(None),
            (Some(url), Some(queue)) => Ok(Some((url.clone(), queue))),
            (Some(_), None) => Err(UsageError("--broker needs --queue NAME".into()).into()),
            (None, Some(queue)) => match from_env() {
                Some(url) => Ok(Some((url, queue))),
                None => Err(UsageError(
                    "--queue needs --broker URL (or PROCPOOL_BROKER in the environment)".into(),
                )
                .into()),
            },
        }
    }

    /// [`target`](BrokerArgs::target) for a command that has nothing to do without one.
    pub fn required(&self, command: &str) -> Result<(String, &str)> {
        self.target()?.ok_or_else(|| {
            UsageError(format!(
                "procpool {command} needs --broker URL (or PROCPOOL_BROKER) and --queue NAME"
            ))
            .into()
        })
    }
}

fn parse_queue(text: &str) -> Result<String, String> {
    let valid = (1..=64).contains(&text.len())
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    match valid {
        true => Ok(text.to_string()),
        false => Err(format!(
            "{text:?} is not a queue name: 1 to 64 letters, digits, '.', '_' or '-'"
        )),
    }
}

/// `url` with its password, if any, replaced by `***`, for messages: the one after
/// `user:` (`redis://:pw@host`, `redis://user:pw@host`) and a `password=` query
/// parameter (`redis+unix:///run/redis.sock?pass=pw`, `...?password=pw`).
pub fn redacted(url: &str) -> String {
    let (address, query) = match url.split_once('?') {
        Some((address, query)) => (address, Some(query)),
        None => (url, None),
    };
    let mut shown = match address.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((userinfo, host)) if userinfo.contains(':') => {
                let user = userinfo.split_once(':').map_or("", |(user, _)| user);
                format!("{scheme}://{user}:***@{host}")
            }
            _ => address.to_string(),
        },
        None => address.to_string(),
    };
    if let Some(query) = query {
        let parameters: Vec<String> = query
            .split('&')
            .map(|parameter| match parameter.split_once('=') {
                Some((name @ ("pass" | "password"), _)) => format!("{name}=***"),
                _ => parameter.to_string(),
            })
            .collect();
        shown = format!("{shown}?{}", parameters.join("&"));
    }
    shown
}

/// The Redis keys of one queue.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

/// A run's key expires this long after its submitter last renewed it: a submitter
/// killed outright stops receiving results after this.
pub const RUN_KEY_TTL_S: u64 = 60;
/// A run's results stream expires this long after it was last renewed or written.
pub const RESULTS_TTL_S: u64 = 2 * RUN_KEY_TTL_S;

/// The consumer group every node reads the task stream through.
pub const GROUP: &str = "nodes";

impl Keys {
    pub fn new(queue: &str) -> Keys {
        Keys {
            prefix: format!("procpool:{queue}"),
        }
    }
    /// What every key of the queue starts with (the Lua scripts build keys from it).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    pub fn tasks(&self) -> String {
        format!("{}:tasks", self.prefix)
    }
    pub fn workload(&self) -> String {
        format!("{}:workload", self.prefix)
    }
    pub fn run(&self, run: &str) -> String {
        format!("{}:run:{run}", self.prefix)
    }
    pub fn results(&self, run: &str) -> String {
        format!("{}:results:{run}", self.prefix)
    }
    pub fn dead(&self) -> String {
        format!("{}:dead", self.prefix)
    }
    pub fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }
}

/// A connection to Redis that survives Redis going away for a while: a command that
/// fails on the connection is retried on a new one, with backoff, for up to the
/// timeout, and the user is told once per outage.
pub struct Broker {
    client: redis::Client,
    connection: Option<redis::Connection>,
    url: String,
    timeout: Duration,
    /// Set after a reconnection, until the caller has asked: what was written before
    /// may be gone (a Redis restarted without persistence).
    reconnected: bool,
}

/// How long one connection attempt or reply may take.
/// Under the shortest sensible lease, so one slow reply does not cost a node its
/// leases.
const IO_TIMEOUT: Duration = Duration::from_secs(2);

impl Broker {
    /// Connects to `url` (TLS for rediss://, trusting `--broker-ca` or the system's
    /// roots), or says why not as a usage error (exit 2): a bad URL or CA file, or a
    /// Redis that cannot be reached or is too old for consumer-group streams.
    pub fn connect(url: &str, args: &BrokerArgs) -> Result<Broker> {
        let shown = redacted(url);
        let client = client(url, args.broker_ca.as_deref())
            .map_err(|err| UsageError(format!("--broker {shown}: {err}")))?;
        let mut broker = Broker {
            client,
            connection: None,
            url: shown.clone(),
            timeout: args.broker_timeout,
            reconnected: false,
        };
        let connection = broker.open().map_err(|err| {
            UsageError(format!(
                "cannot reach Redis at {shown}: {err}; is redis-server running there \
                 (and the password right)?"
            ))
        })?;
        broker.connection = Some(connection);
        let info: String = broker
            .call(|connection| redis::cmd("INFO").arg("server").query(connection))
            .unwrap_or_default();
        if let Some(version) = redis_version(&info) {
            if version < (6, 2) {
                return Err(UsageError(format!(
                    "Redis at {shown} is version {}.{}; procpool needs 6.2 or later (XAUTOCLAIM)",
                    version.0, version.1
                ))
                .into());
            }
        }
        Ok(broker)
    }

    fn open(&self) -> redis::RedisResult<redis::Connection> {
        let connection = self.client.get_connection_with_timeout(IO_TIMEOUT)?;
        connection.set_read_timeout(Some(IO_TIMEOUT))?;
        connection.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(connection)
    }

    /// The URL as messages show it.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether the connection was made again since the last call.
    pub fn take_reconnected(&mut self) -> bool {
        std::mem::take(&mut self.reconnected)
    }

    /// Runs `query` on the connection; when Redis is unreachable, on new connections
    /// with backoff until `--broker-timeout`. An error Redis itself answered is
    /// returned at once.
    pub fn call<T>(
        &mut self,
        mut query: impl FnMut(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T> {
        let mut lost_since: Option<Instant> = None;
        let mut backoff = Duration::from_millis(50);
        loop {
            let outcome = match &mut self.connection {
                Some(connection) => query(connection),
                None => self.open().and_then(|mut connection| {
                    let outcome = query(&mut connection);
                    self.connection = Some(connection);
                    self.reconnected = true;
                    outcome
                }),
            };
            let err = match outcome {
                Ok(value) => {
                    if lost_since.is_some() {
                        eprintln!("procpool: Redis at {} is back", self.url);
                    }
                    return Ok(value);
                }
                // A signal cut a read short (Ctrl-C, say): the reply may still come,
                // so the connection is dropped, but Redis is not lost.
                Err(err) if is_interrupted(&err) => {
                    self.connection = None;
                    continue;
                }
                Err(err) if is_connection_error(&err) => err,
                Err(err) => return Err(anyhow!("Redis at {}: {err}", self.url)),
            };
            self.connection = None;
            let since = *lost_since.get_or_insert_with(|| {
                eprintln!(
                    "procpool: lost Redis at {} ({err}); retrying for up to {:?}",
                    self.url, self.timeout
                );
                Instant::now()
            });
            if since.elapsed() >= self.timeout {
                return Err(anyhow!(
                    "Redis at {} unreachable for {:?} ({err}); giving up (--broker-timeout)",
                    self.url,
                    self.timeout
                ));
            }
            sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }
}

fn client(url: &str, ca: Option<&std::path::Path>) -> Result<redis::Client> {
    if url.starts_with("rediss://") {
        // ring, not aws-lc-rs: a small C build on 2-core CI machines. rustls 0.23.48
        // deprecates ring's provider for lacking post-quantum key exchange, which a
        // Redis connection does without. Installed once per process (a second call
        // finds it there, which is fine).
        #[allow(deprecated)]
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    Ok(match ca {
        None => redis::Client::open(url)?,
        Some(path) => {
            let root_cert = std::fs::read(path)
                .map_err(|err| anyhow!("--broker-ca {}: {err}", path.display()))?;
            let certificates = redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(root_cert),
            };
            redis::Client::build_with_tls(url, certificates)?
        }
    })
}

fn is_interrupted(err: &redis::RedisError) -> bool {
    // The crate keeps its I/O error behind an `Arc` of its own.
    type Shared = std::sync::Arc<dyn std::error::Error + Send + Sync>;
    std::error::Error::source(err)
        .and_then(|source| source.downcast_ref::<Shared>())
        .and_then(|shared| shared.downcast_ref::<std::io::Error>())
        .is_some_and(|io| io.kind() == std::io::ErrorKind::Interrupted)
}

fn is_connection_error(err: &redis::RedisError) -> bool {
    err.is_io_error()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || err.is_timeout()
        // A Redis still loading its data after a restart.
        || err.code() == Some("LOADING")
}

fn redis_version(info: &str) -> Option<(u32, u32)> {
    let version = info
        .lines()
        .find_map(|line| line.strip_prefix("redis_version:"))?;
    let mut parts = version.trim().split('.').map(|part| part.parse().ok());
    Some((parts.next()??, parts.next()??))
}

/// Creates the queue's consumer group (and stream) if it does not exist yet.
pub fn ensure_group(broker: &mut Broker, keys: &Keys) -> Result<()> {
    let created = broker.call(|connection| {
        redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(keys.tasks())
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query::<()>(connection)
    });
    match created {
        Err(err) if err.to_string().contains("BUSYGROUP") => Ok(()),
        other => other,
    }
}

/// A stream entry's fields by name.
pub fn entry_field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(field, _)| field == name)
        .map(|(_, value)| value.as_str())
}

/// A stream entry's fields, in order.
pub type Fields = Vec<(String, String)>;

/// A stream entry as `XREADGROUP`, `XREAD` and `XRANGE` return it.
pub type Entry = (String, Fields);

/// The entries of one stream in an `XREAD`/`XREADGROUP` reply (nil when none).
pub fn stream_entries(reply: Option<Vec<(String, Vec<Entry>)>>) -> Vec<Entry> {
    reply
        .into_iter()
        .flatten()
        .flat_map(|(_, entries)| entries)
        .collect()
}

/// Seconds since the Unix epoch, for heartbeats.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |since| since.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_never_shown() {
        assert_eq!(
            redacted("redis://:hunter2@db:6379/0"),
            "redis://:***@db:6379/0"
        );
        assert_eq!(
            redacted("redis://alice:p@ss@db/1"),
            "redis://alice:***@db/1"
        );
        assert_eq!(redacted("redis://db:6379"), "redis://db:6379");
        assert_eq!(redacted("redis://alice@db"), "redis://alice@db");
        assert_eq!(
            redacted("redis+unix:///run/redis.sock?db=1&pass=hunter2"),
            "redis+unix:///run/redis.sock?db=1&pass=***"
        );
        assert_eq!(
            redacted("rediss://:pw@db/0?password=pw"),
            "rediss://:***@db/0?password=***"
        );
    }

    #[test]
    fn queue_names_are_checked() {
        assert!(parse_queue("primes-1.a_b").is_ok());
        for bad in ["", "a b", "a:b", "q*", &"x".repeat(65)] {
            assert!(parse_queue(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_version_is_read_from_info() {
        assert_eq!(
            redis_version("# Server\r\nredis_version:7.0.15\r\n"),
            Some((7, 0))
        );
        assert_eq!(redis_version("nothing"), None);
    }
}
