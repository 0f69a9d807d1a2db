//! The demo web site that `procpool run crawl` crawls when given no URLs: a generated,
//! deterministic site served on 127.0.0.1 by a separate process
//! (`procpool serve-site`, hidden), with a per-request delay to stand in for the
//! network.
//!
//! The server is a process, not a thread of the supervisor, because the supervisor
//! stays single-threaded (that is what keeps `--start fork` safe). It lives exactly as
//! long as the run: it exits when its stdin reaches EOF, which happens when the
//! supervisor closes the pipe or dies in any way, `kill -9` included; [`SiteServer`]'s
//! drop also kills and reaps it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use serde_json::json;

use crate::splitmix::SplitMix64;
use crate::stdout::outln;

/// Options of the hidden `procpool serve-site`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Pages in the site (the front page `/` is page 0).
    #[arg(long, default_value_t = 100)]
    pub pages: u32,
    /// Seed of the generated words and links.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Milliseconds each response waits before it is sent (simulated latency).
    #[arg(long, default_value_t = 50)]
    pub delay_ms: u64,
    /// Percent of links that point at missing pages (answered 404).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=100))]
    pub broken: u32,
    /// Print what a crawl from the front page must find (pages, broken links, words,
    /// top words) as JSON, computed from the generator, and exit without serving.
    #[arg(long)]
    pub describe: bool,
}

/// Requests served at once; each mostly sleeps for `--delay-ms`.
const SERVER_THREADS: usize = 64;

/// `procpool serve-site`: prints `http://127.0.0.1:PORT/` on stdout, serves until stdin
/// reaches EOF.
pub fn serve(args: &ServeArgs) -> Result<()> {
    ensure!(args.pages >= 1, "--pages must be at least 1");
    let site = Site {
        pages: args.pages,
        seed: args.seed,
        broken: args.broken,
    };
    if args.describe {
        outln!("{}", site.describe());
        return Ok(());
    }
    let server = tiny_http::Server::http("127.0.0.1:0")
        .map_err(|err| anyhow::anyhow!("binding 127.0.0.1:0: {err}"))?;
    let address = server
        .server_addr()
        .to_ip()
        .context("the server has no IP address")?;
    let base = format!("http://{address}");
    let server = Arc::new(server);
    let delay = Duration::from_millis(args.delay_ms);
    for _ in 0..SERVER_THREADS {
        let server = Arc::clone(&server);
        let base = base.clone();
        std::thread::spawn(move || {
            while let Ok(request) = server.recv() {
                std::thread::sleep(delay);
                let (code, body) = match site.page_number(request.url()) {
                    Some(number) => (200, site.page(number).html(&base)),
                    None => (404, format!("<h1>{} not found</h1>\n", request.url())),
                };
                let response = tiny_http::Response::from_string(body)
                    .with_status_code(code)
                    .with_header(
                        tiny_http::Header::from_bytes("Content-Type", "text/html; charset=utf-8")
                            .expect("a valid header"),
                    );
                // A client that went away (its timeout) is its own business.
                let _ = request.respond(response);
            }
        });
    }
    let mut stdout = std::io::stdout();
    writeln!(stdout, "{base}/")?;
    stdout.flush()?;
    // The parent holds our stdin open for as long as it wants the site served.
    let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
    std::process::exit(0);
}

/// A running `procpool serve-site`, owned by the crawl workload: dropping it ends the server.
pub struct SiteServer {
    child: Child,
    /// Held open for the server's lifetime: EOF tells it to exit.
    stdin: Option<ChildStdin>,
    /// The front page, `http://127.0.0.1:PORT/`.
    pub front: String,
}

impl SiteServer {
    pub fn start(pages: u32, seed: u64, delay_ms: u64, broken: u32) -> Result<SiteServer> {
        let exe = std::env::current_exe().context("finding the procpool executable")?;
        let mut command = Command::new(exe);
        command
            .arg("serve-site")
            .args(["--pages", &pages.to_string()])
            .args(["--seed", &seed.to_string()])
            .args(["--delay-ms", &delay_ms.to_string()])
            .args(["--broken", &broken.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        // Its own process group, like the workers: Ctrl-C reaches the supervisor alone,
        // which then ends the run (and this server) in order.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut child = command.spawn().context("starting the demo site server")?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped");
        let mut server = SiteServer {
            child,
            stdin,
            front: String::new(),
        };
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .context("reading the demo site's address")?;
        if !line.starts_with("http://") {
            bail!("the demo site server did not start (it printed {line:?})");
        }
        server.front = line.trim().to_string();
        Ok(server)
    }
}

impl Drop for SiteServer {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The generated site: `pages` pages, page 0 at `/`, page N at `/page/N.html`.
#[derive(Debug, Clone, Copy)]
pub struct Site {
    pub pages: u32,
    pub seed: u64,
    /// Percent of links that point at a missing page.
    pub broken: u32,
}

/// Where a link of a page goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Target {
    Page(u32),
    /// `/missing/<page>-<link>.html`: answered 404.
    Missing(u32, u32),
}

/// How a link is written in the HTML: the crawler must resolve every form to the
/// same URL.
#[derive(Debug, Clone, Copy)]
enum Form {
    AbsolutePath,
    Relative,
    WithFragment,
    Full,
}

struct Link {
    target: Target,
    form: Form,
    anchor: Vec<&'static str>,
}

/// One page as generated, before it is written as HTML.
pub struct Page {
    number: u32,
    title: Vec<&'static str>,
    paragraphs: Vec<Vec<&'static str>>,
    links: Vec<Link>,
}

impl Site {
    /// The page a request path names, if it exists.
    fn page_number(&self, url: &str) -> Option<u32> {
        let path = url.split(['?', '#']).next().unwrap_or("");
        if path == "/" {
            return Some(0);
        }
        let number: u32 = path
            .strip_prefix("/page/")?
            .strip_suffix(".html")?
            .parse()
            .ok()?;
        // "/page/007.html" is not page 7: one spelling per page.
        (number > 0 && number < self.pages && path == page_path(number)).then_some(number)
    }

    pub fn page(&self, number: u32) -> Page {
        let mut rng =
            SplitMix64::new(self.seed ^ (u64::from(number) + 1).wrapping_mul(0x9E37_79B9));
        let words = |rng: &mut SplitMix64, lo: u64, hi: u64| -> Vec<&'static str> {
            let n = lo + rng.below(hi - lo + 1);
            (0..n).map(|_| word(rng)).collect()
        };
        let title = words(&mut rng, 2, 4);
        let paragraphs = (0..1 + rng.below(4))
            .map(|_| words(&mut rng, 10, 60))
            .collect();
        let mut links = Vec::new();
        // The next page first, so every page is reachable from the front page.
        if number + 1 < self.pages {
            links.push(Target::Page(number + 1));
        }
        for link in 0..2 + rng.below(5) as u32 {
            if rng.below(100) < u64::from(self.broken) {
                links.push(Target::Missing(number, link));
            } else {
                links.push(Target::Page(rng.below(u64::from(self.pages)) as u32));
            }
        }
        let links = links
            .into_iter()
            .map(|target| Link {
                target,
                form: [
                    Form::AbsolutePath,
                    Form::Relative,
                    Form::WithFragment,
                    Form::Full,
                ][rng.below(4) as usize],
                anchor: words(&mut rng, 1, 3),
            })
            .collect();
        Page {
            number,
            title,
            paragraphs,
            links,
        }
    }

    /// Breadth-first from the front page over the generated links: what a crawl with
    /// no page limit must find.
    pub fn describe(&self) -> serde_json::Value {
        let mut seen = BTreeSet::from([Target::Page(0)]);
        let mut queue = VecDeque::from([0u32]);
        let (mut pages, mut words) = (0u64, 0u64);
        let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
        while let Some(number) = queue.pop_front() {
            let page = self.page(number);
            pages += 1;
            for word in page.words() {
                words += 1;
                *counts.entry(word).or_default() += 1;
            }
            for link in &page.links {
                if seen.insert(link.target) {
                    if let Target::Page(next) = link.target {
                        queue.push_back(next);
                    }
                }
            }
        }
        let broken = seen
            .iter()
            .filter(|t| matches!(t, Target::Missing(..)))
            .count();
        let mut top: Vec<(&str, u64)> = counts.into_iter().collect();
        top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        top.truncate(5);
        json!({"pages": pages, "broken": broken, "words": words,
               "top": top.iter().map(|(w, n)| json!([w, n])).collect::<Vec<_>>()})
    }
}

impl Page {
    /// The visible words, in the order the HTML shows them (the title twice: in
    /// `<title>` and in `<h1>`).
    fn words(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.title
            .iter()
            .chain(&self.title)
            .chain(self.paragraphs.iter().flatten())
            .chain(self.links.iter().flat_map(|l| &l.anchor))
            .copied()
    }

    /// The page as HTML; `base` is `http://127.0.0.1:PORT` (for links in full form).
    pub fn html(&self, base: &str) -> String {
        let title = self.title.join(" ");
        let mut html = format!(
            "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title>\n\
             <style>body {{ font-family: serif; max-width: 40em; }}</style></head>\n\
             <body><h1 class=\"title\">{title}</h1>\n<!-- generated page {} -->\n",
            self.number
        );
        for paragraph in &self.paragraphs {
            html.push_str(&format!("<p>{}</p>\n", paragraph.join(" ")));
        }
        html.push_str("<ul>\n");
        for link in &self.links {
            let href = self.href(link, base);
            html.push_str(&format!(
                "<li><a class=\"link\" href=\"{href}\">{}</a></li>\n",
                link.anchor.join(" ")
            ));
        }
        html.push_str("</ul>\n<script>var hidden = \"script text is not counted\";</script>\n");
        html.push_str("</body></html>\n");
        html
    }

    fn href(&self, link: &Link, base: &str) -> String {
        let path = match link.target {
            Target::Page(number) => page_path(number),
            Target::Missing(page, index) => format!("/missing/{page}-{index}.html"),
        };
        match link.form {
            Form::AbsolutePath => path,
            Form::WithFragment => format!("{path}#section-2"),
            Form::Full => format!("{base}{path}"),
            // Relative to this page's folder: "/" for the front page, "/page/" otherwise.
            Form::Relative if self.number == 0 => format!(".{path}"),
            Form::Relative => format!("..{path}"),
        }
    }
}

fn page_path(number: u32) -> String {
    if number == 0 {
        "/".to_string()
    } else {
        format!("/page/{number}.html")
    }
}

/// Words of the generated text, drawn with a skew so that a few are common (a top five
/// worth reporting) and most are rare.
const VOCABULARY: [&str; 64] = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "process",
    "worker",
    "pool",
    "task",
    "queue",
    "pipe",
    "signal",
    "fork",
    "memory",
    "shared",
    "result",
    "error",
    "crash",
    "restart",
    "supervisor",
    "deadline",
    "retry",
    "kernel",
    "thread",
    "socket",
    "page",
    "link",
    "crawl",
    "word",
    "count",
    "network",
    "latency",
    "server",
    "client",
    "request",
    "response",
    "header",
    "body",
    "byte",
    "buffer",
    "stream",
    "event",
    "loop",
    "poll",
    "timer",
    "child",
    "parent",
    "group",
    "session",
    "terminal",
    "exit",
    "status",
    "code",
    "report",
    "summary",
    "table",
    "chart",
    "speed",
    "scale",
    "core",
    "cache",
    "disk",
    "file",
    "line",
];

/// A word of the vocabulary, common words far more often than rare ones.
fn word(rng: &mut SplitMix64) -> &'static str {
    let u = rng.unit();
    VOCABULARY[((u * u * u) * VOCABULARY.len() as f64) as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_deterministic_and_reachable() {
        let site = Site {
            pages: 30,
            seed: 7,
            broken: 20,
        };
        assert_eq!(site.page(5).html("http://h"), site.page(5).html("http://h"));
        let described = site.describe();
        assert_eq!(described["pages"], 30, "page N links to N+1");
        assert!(described["broken"].as_u64().unwrap() > 0);
        assert_eq!(site.page_number("/"), Some(0));
        assert_eq!(site.page_number("/page/29.html?x=1"), Some(29));
        assert_eq!(site.page_number("/page/30.html"), None);
        assert_eq!(site.page_number("/page/07.html"), None);
        assert_eq!(site.page_number("/missing/1-2.html"), None);
    }

    #[test]
    fn the_html_holds_the_described_words() {
        let site = Site {
            pages: 3,
            seed: 1,
            broken: 0,
        };
        let page = site.page(1);
        let html = page.html("http://127.0.0.1:1");
        for word in page.words() {
            assert!(html.contains(word));
        }
        let mut skew = [0u32; 64];
        let mut rng = SplitMix64::new(3);
        for _ in 0..10_000 {
            let word = word(&mut rng);
            skew[VOCABULARY.iter().position(|w| *w == word).unwrap()] += 1;
        }
        assert!(skew[0] > 10 * skew[63]);
    }
}
