//! The I/O-bound lesson: `procpool run crawl` against the generated demo site, served on
//! 127.0.0.1 by `procpool serve-site`. No test reaches any other address.

mod util;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::{json, Value};
use util::{assert_no_orphans, is_alive, processes, wait_until, Procpool};

/// What the generator says a crawl of the site from its front page must find,
/// computed from the pages it generates, not from their HTML.
fn describe(site: &[&str]) -> Value {
    let mut args = vec!["serve-site", "--describe"];
    args.extend_from_slice(site);
    Procpool::new(&args).run(0).json()
}

/// `procpool run crawl <extra> --json --quiet`, asserting the exit code.
fn crawl(extra: &[&str], code: i32) -> (Value, util::Output) {
    let mut args = vec!["run", "crawl", "--json", "--quiet"];
    args.extend_from_slice(extra);
    let output = Procpool::new(&args).run(code);
    (output.json(), output)
}

#[test]
fn a_crawl_finds_every_reachable_page_word_and_broken_link() {
    let expected = describe(&["--pages", "60", "--seed", "3", "--broken", "10"]);
    assert!(expected["broken"].as_u64().unwrap() > 0, "{expected}");
    for start in ["spawn", "fork"] {
        let (report, output) = crawl(
            &[
                "--site-pages",
                "60",
                "--site-seed",
                "3",
                "--site-broken",
                "10",
                "--delay-ms",
                "5",
                "--procs",
                "4",
                "--start",
                start,
            ],
            // 404s are failed tasks: reported, and the run exits 1 like any task error.
            1,
        );
        let result = &report["result"];
        assert_eq!(result["pages"], expected["pages"], "{start}\n{output}");
        assert_eq!(result["words"], expected["words"], "{start}\n{output}");
        assert_eq!(result["top"], expected["top"], "{start}\n{output}");
        assert_eq!(result["errors"], expected["broken"], "{start}\n{output}");
        assert_eq!(report["tasks_ok"], expected["pages"]);
        assert_eq!(report["tasks_error"], expected["broken"]);
        assert_eq!(report["tasks_failed"], 0);
        assert!(output.stderr.contains("HTTP 404 Not Found"), "{output}");
    }
}

#[test]
fn a_site_without_broken_links_exits_0() {
    let expected = describe(&["--pages", "25"]);
    let (report, output) = crawl(
        &["--site-pages", "25", "--delay-ms", "1", "--procs", "2"],
        0,
    );
    assert_eq!(report["result"]["pages"], expected["pages"], "{output}");
    assert_eq!(report["result"]["words"], expected["words"], "{output}");
    assert_eq!(report["tasks_error"], 0);
}

#[test]
fn max_pages_is_honoured_exactly() {
    for max in ["1", "7", "30"] {
        let (report, output) = crawl(
            &[
                "--site-pages",
                "80",
                "--delay-ms",
                "1",
                "--procs",
                "4",
                "--max-pages",
                max,
            ],
            0,
        );
        let max: u64 = max.parse().unwrap();
        assert_eq!(report["tasks_total"], max, "{output}");
        assert_eq!(report["result"]["pages"], max, "{output}");
    }
}

/// A demo site the test serves itself, for `--urls` crawls; it exits when dropped
/// (its stdin closes).
struct Site {
    child: Child,
    front: String,
}

impl Site {
    fn start(pages: &str) -> Site {
        let mut child = Command::new(env!("CARGO_BIN_EXE_procpool"))
            .args(["serve-site", "--pages", pages, "--delay-ms", "1"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting serve-site");
        let mut front = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut front)
            .unwrap();
        assert!(front.starts_with("http://127.0.0.1:"), "{front:?}");
        Site {
            child,
            front: front.trim().to_string(),
        }
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

#[test]
fn bad_urls_are_failed_tasks_and_good_ones_are_crawled() {
    let site = Site::start("5");
    // A port nobody listens on: bound, then released.
    let refused = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let urls = format!(
        "# seeds\nhttp://{refused}/\nnot a url\n\n{front}\n{front}#again\nhttps://127.0.0.1:1/\n",
        front = site.front
    );
    let output = Procpool::new(["run", "crawl", "--urls", "urls.txt", "--json", "--quiet"])
        .write("urls.txt", &urls)
        .run(1);
    let report = output.json();
    assert_eq!(
        report["result"]["pages"], 5,
        "the site's 5 pages once each\n{output}"
    );
    assert_eq!(report["tasks_error"], 3, "{output}");
    assert_eq!(report["tasks_total"], 8, "{output}");
    for message in [
        format!("http://{refused}/: io: Connection refused"),
        "\"not a url\": not an absolute http:// URL".to_string(),
        "only http:// URLs are crawled, not https://".to_string(),
    ] {
        assert!(output.stderr.contains(&message), "{message}\n{output}");
    }
    let expected = describe(&["--pages", "5"]);
    assert_eq!(report["result"]["words"], expected["words"]);
}

#[test]
fn several_seeds_are_crawled_each_in_its_own_site() {
    // Two sites on two ports; which links are followed (hosts and ports of the seeds)
    // is unit-tested in src/workloads/crawl.rs.
    let (a, b) = (Site::start("4"), Site::start("6"));
    let output = Procpool::new(["run", "crawl", "--urls", "urls.txt", "--json", "--quiet"])
        .write("urls.txt", format!("{}\n{}\n", a.front, b.front))
        .run(0);
    assert_eq!(output.json()["result"]["pages"], json!(10), "{output}");
}

/// The pid of the `serve-site` process started by the supervisor `pid`.
fn site_server_of(pid: i32) -> i32 {
    let mut server = None;
    let found = wait_until(Duration::from_secs(20), || {
        server = processes().into_iter().find(|p| {
            p.ppid == pid
                && p.is_live()
                && std::fs::read(format!("/proc/{}/cmdline", p.pid))
                    .is_ok_and(|c| c.split(|&b| b == 0).any(|arg| arg == b"serve-site"))
        });
        server.is_some()
    });
    assert!(found, "no serve-site process under pid {pid}");
    server.unwrap().pid
}

#[test]
fn the_site_server_ends_with_the_run() {
    let running = Procpool::new([
        "run",
        "crawl",
        "--site-pages",
        "30",
        "--delay-ms",
        "20",
        "--procs",
        "2",
        "--quiet",
    ])
    .spawn();
    let supervisor = running.pid();
    let server = site_server_of(supervisor);
    let output = running.wait(0);
    assert!(output.stdout.contains("30 pages fetched"), "{output}");
    assert!(!is_alive(server), "serve-site {server} outlived the run");
    assert_no_orphans(&[supervisor, server], Duration::from_secs(5));
}

#[test]
fn the_site_server_ends_when_the_supervisor_is_killed() {
    let running = Procpool::new([
        "run",
        "crawl",
        "--site-pages",
        "500",
        "--delay-ms",
        "200",
        "--procs",
        "2",
        "--quiet",
    ])
    .spawn();
    let supervisor = running.pid();
    let server = site_server_of(supervisor);
    running.busy_workers(2);
    running.signal(Signal::SIGKILL);
    let output = running.finish();
    assert_eq!(output.code, None, "killed\n{output}");
    // Its stdin pipe closed with the supervisor: EOF tells it to go.
    assert_no_orphans(&[supervisor, server], Duration::from_secs(10));
}
