//! `crawl`: the I/O-bound lesson. Fetch pages, count the words of their visible text,
//! follow their links breadth-first, one task per page.
//!
//! A worker spends nearly all of a task waiting on the network, so a pool of many
//! more workers than cores pays off here, unlike the CPU-bound workloads. The
//! supervisor keeps the frontier and the visited set and adds tasks as results bring
//! links; workers only fetch and parse. With no `--urls`, the workload starts the demo site
//! (`crate::site`) on 127.0.0.1 and crawls it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use procpool_child::TaskId;
use procpool_supervisor::PoolReport;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Summary, TypedHandler, Workload};
use crate::site::SiteServer;

/// Options of `procpool run crawl`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Seed URLs, one per line (blank lines and `#` comments skipped) [default: start
    /// the demo site on 127.0.0.1 and crawl it from its front page]
    #[arg(long, value_name = "FILE")]
    pub urls: Option<PathBuf>,
    /// Fetch at most this many pages, failed fetches included.
    #[arg(long, default_value_t = 1000, value_parser = crate::parse::whole::<u64>(1, u64::MAX))]
    pub max_pages: u64,
    /// Give up on a request after this many seconds.
    #[arg(long, default_value = "10", value_parser = crate::parse::seconds)]
    pub timeout: Duration,
    /// Follow links to any host, not only to the hosts (and ports) of the seed URLs.
    #[arg(long)]
    pub any_host: bool,
    /// Demo site: milliseconds each response waits (simulated network latency).
    #[arg(long, default_value_t = 50, conflicts_with = "urls", value_parser = crate::parse::count)]
    pub delay_ms: u64,
    /// Demo site: number of pages.
    #[arg(long, default_value_t = 100, conflicts_with = "urls",
          value_parser = crate::parse::whole::<u32>(1, u32::MAX.into()))]
    pub site_pages: u32,
    /// Demo site: seed of its words and links.
    #[arg(long, default_value_t = 1, conflicts_with = "urls", value_parser = crate::parse::count)]
    pub site_seed: u64,
    /// Demo site: percent of links that point at missing pages (404s, failed tasks).
    #[arg(long, default_value_t = 0, conflicts_with = "urls",
          value_parser = crate::parse::whole::<u32>(0, 100))]
    pub site_broken: u32,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Input {
    url: String,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

/// What a worker answers for one page.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Output {
    url: String,
    status: u16,
    /// Words of the page's visible text.
    words: u64,
    /// The same words, counted by word.
    #[serde(default)]
    counts: HashMap<String, u64>,
    /// The page's links, resolved against its URL, in page order, without repeats.
    links: Vec<String>,
}

/// The frontier, the visited set, and the running totals.
pub struct Crawl {
    frontier: VecDeque<String>,
    /// Every URL ever queued, normalised (or as written, when it does not parse).
    seen: HashSet<String>,
    /// `host:port` of the seeds; `None` follows links anywhere.
    hosts: Option<HashSet<String>>,
    max_pages: u64,
    queued: u64,
    timeout: Duration,
    pages: u64,
    words: u64,
    counts: HashMap<String, u64>,
    /// Declared last: the demo site outlives everything else of the crawl.
    site: Option<SiteServer>,
}

impl Crawl {
    fn with_seeds(seeds: Vec<String>, args: &Args, site: Option<SiteServer>) -> Crawl {
        let hosts = (!args.any_host).then(|| {
            seeds
                .iter()
                .filter_map(|seed| HttpUrl::parse(seed).ok())
                .map(|url| url.origin())
                .collect()
        });
        let mut crawl = Crawl {
            frontier: VecDeque::new(),
            seen: HashSet::new(),
            hosts,
            max_pages: args.max_pages,
            queued: 0,
            timeout: args.timeout,
            pages: 0,
            words: 0,
            counts: HashMap::new(),
            site,
        };
        for seed in seeds {
            // A seed that does not parse still becomes a task: its worker says why.
            let key = HttpUrl::parse(&seed).map_or(seed, |url| url.to_string());
            crawl.visit(key);
        }
        crawl
    }

    /// Queues `url` unless it was seen or the page budget is spent.
    fn visit(&mut self, url: String) {
        if (self.seen.len() as u64) < self.max_pages && self.seen.insert(url.clone()) {
            self.frontier.push_back(url);
        }
    }

    fn top_words(&self, n: usize) -> Vec<(&str, u64)> {
        let mut top: Vec<(&str, u64)> = self.counts.iter().map(|(w, c)| (w.as_str(), *c)).collect();
        top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        top.truncate(n);
        top
    }
}

impl Workload for Crawl {
    const NAME: &'static str = "crawl";
    const ABOUT: &'static str =
        "Fetch pages and count their words, following links breadth-first (http:// only)";
    type Args = Args;
    type Input = Input;
    type Output = Output;

    fn plan(args: &Args, _procs: usize) -> Result<Crawl> {
        ensure!(!args.timeout.is_zero(), "--timeout must be more than 0");
        let (seeds, site) = match &args.urls {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading --urls {}", path.display()))?;
                let seeds: Vec<String> = text
                    .lines()
                    .map(str::trim)
                    .filter(|line| !line.is_empty() && !line.starts_with('#'))
                    .map(String::from)
                    .collect();
                ensure!(!seeds.is_empty(), "{} holds no URLs", path.display());
                (seeds, None)
            }
            None => {
                let site = SiteServer::start(
                    args.site_pages,
                    args.site_seed,
                    args.delay_ms,
                    args.site_broken,
                )?;
                (vec![site.front.clone()], Some(site))
            }
        };
        Ok(Crawl::with_seeds(seeds, args, site))
    }

    fn next_input(&mut self) -> Option<Result<Input>> {
        let url = self.frontier.pop_front()?;
        self.queued += 1;
        Some(Ok(Input {
            url,
            timeout_ms: Some(self.timeout.as_millis() as u64),
        }))
    }

    fn reduce(&mut self, _id: TaskId, page: Output) -> Result<(), String> {
        // Every total is checked before any is changed, so a rejected page adds nothing.
        let overflows = |total: u64, count: u64| total.checked_add(count).is_none();
        if overflows(self.words, page.words)
            || page
                .counts
                .iter()
                .any(|(word, &count)| overflows(self.counts.get(word).copied().unwrap_or(0), count))
        {
            return Err(format!(
                "{} words on {}: the word totals would overflow",
                page.words, page.url
            ));
        }
        self.pages += 1;
        self.words += page.words;
        for (word, count) in page.counts {
            *self.counts.entry(word).or_default() += count;
        }
        // The worker resolved the links; normalise and filter them here anyway, so
        // the visited set does not depend on what a worker (maybe `--child`) wrote.
        for link in page.links {
            let Ok(url) = HttpUrl::parse(&link) else {
                continue;
            };
            if self
                .hosts
                .as_ref()
                .is_some_and(|h| !h.contains(&url.origin()))
            {
                continue;
            }
            self.visit(url.to_string());
        }
        Ok(())
    }

    fn summary(self, report: &PoolReport) -> Result<Summary> {
        // Failed pages are the tasks that errored or were quarantined.
        let errors = report.tasks_error + report.tasks_failed;
        let rate = self.pages as f64 / report.wall.as_secs_f64().max(1e-9);
        let top = self.top_words(5);
        let shown: Vec<String> = top.iter().map(|(w, n)| format!("{w} {n}")).collect();
        let mut headline = format!(
            "{} pages fetched, {} errors, {} words; top words: {}; {rate:.1} pages/s",
            self.pages,
            errors,
            self.words,
            if shown.is_empty() {
                "none".to_string()
            } else {
                shown.join(", ")
            }
        );
        if let Some(site) = &self.site {
            headline.push_str(&format!(" (demo site at {})", site.front));
        }
        Ok(Summary::new(
            headline,
            json!({
                "pages": self.pages,
                "errors": errors,
                "queued": self.queued,
                "words": self.words,
                "top": top.iter().map(|(w, n)| json!([w, n])).collect::<Vec<_>>(),
                "pages_per_s": rate,
                "site": self.site.as_ref().map(|s| s.front.clone()),
            }),
        ))
    }

    fn worker() -> Result<TypedHandler<Crawl>, String> {
        worker_side()
    }
}

/// Bodies larger than this fail the task instead of filling a worker's memory.
const MAX_BODY: u64 = 16 << 20;

/// One HTTP agent per worker, one page per task.
fn worker_side() -> Result<TypedHandler<Crawl>, String> {
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        // A connection per request. Kept-alive connections to the demo site (tiny_http)
        // measured an occasional request stalled until the client's timeout, and 40 ms
        // added to most responses (head and body written apart, Nagle against delayed
        // ACK); fresh loopback connections cost microseconds and show neither.
        .max_idle_connections(0)
        .timeout_global(Some(Duration::from_secs(10)))
        .build();
    let agent = ureq::Agent::new_with_config(config);
    Ok(Box::new(move |Input { url, timeout_ms }| {
        fetch(&agent, &url, timeout_ms.map(Duration::from_millis))
    }))
}

fn fetch(agent: &ureq::Agent, url: &str, timeout: Option<Duration>) -> Result<Output, String> {
    let parsed = HttpUrl::parse(url).map_err(|err| format!("{url:?}: {err}"))?;
    let mut request = agent.get(parsed.to_string());
    if let Some(timeout) = timeout {
        request = request.config().timeout_global(Some(timeout)).build();
    }
    let mut response = request.call().map_err(|err| format!("{parsed}: {err}"))?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("{parsed}: HTTP {status}"));
    }
    // After redirects, links resolve against where the page really is.
    let at = ureq::ResponseExt::get_uri(&response).to_string();
    let base = HttpUrl::parse(&at).unwrap_or(parsed);
    let body = response
        .body_mut()
        .with_config()
        .limit(MAX_BODY)
        .read_to_string()
        .map_err(|err| format!("{base}: reading the body: {err}"))?;
    let text = Html::parse(&body);
    let mut counts: HashMap<String, u64> = HashMap::new();
    let mut words = 0;
    for word in count_words(&text.visible) {
        words += 1;
        *counts.entry(word).or_default() += 1;
    }
    let mut links = Vec::new();
    let mut seen = HashSet::new();
    for href in &text.hrefs {
        if let Some(link) = base.join(href) {
            let link = link.to_string();
            if seen.insert(link.clone()) {
                links.push(link);
            }
        }
    }
    Ok(Output {
        url: base.to_string(),
        status: status.as_u16(),
        words,
        counts,
        links,
    })
}

/// The classic `count_words`: maximal runs of letters and digits, lowercased.
pub fn count_words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty())
        .map(str::to_lowercase)
}

/// What the crawl needs of a page: its visible text (everything outside tags, less
/// comments, `<script>` and `<style>`; character references read as spaces) and the
/// `href` of its `<a>` tags. A forgiving scan, not an HTML5 parser.
#[derive(Debug, Default, PartialEq)]
pub struct Html {
    pub visible: String,
    pub hrefs: Vec<String>,
}

impl Html {
    pub fn parse(html: &str) -> Html {
        let mut out = Html::default();
        let mut rest = html;
        while let Some(open) = rest.find(['<', '&']) {
            out.visible.push_str(&rest[..open]);
            out.visible.push(' ');
            rest = &rest[open..];
            if rest.starts_with('&') {
                // `&amp;`, `&#39;`: a separator, not a word.
                let end = rest[1..]
                    .find(|c: char| !c.is_ascii_alphanumeric() && c != '#')
                    .map_or(rest.len(), |i| i + 1);
                rest = rest[end..].strip_prefix(';').unwrap_or(&rest[end..]);
                continue;
            }
            if let Some(comment) = rest.strip_prefix("<!--") {
                rest = comment.find("-->").map_or("", |end| &comment[end + 3..]);
                continue;
            }
            let end = tag_end(rest);
            let tag = &rest[1..end];
            rest = rest.get(end + 1..).unwrap_or("");
            let name: String = tag
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect::<String>()
                .to_ascii_lowercase();
            match name.as_str() {
                "a" => out.hrefs.extend(attribute(tag, "href")),
                "script" | "style" => {
                    let close = format!("</{name}");
                    rest = find_ignore_case(rest, &close)
                        .map_or("", |at| &rest[at..])
                        .split_once('>')
                        .map_or("", |(_, after)| after);
                }
                _ => {}
            }
        }
        out.visible.push_str(rest);
        out
    }
}

/// The index of the `>` closing the tag that starts `text` (quotes respected).
fn tag_end(text: &str) -> usize {
    let mut quote = None;
    for (i, c) in text.char_indices().skip(1) {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '>') => return i,
            _ => {}
        }
    }
    text.len()
}

fn find_ignore_case(haystack: &str, needle: &str) -> Option<usize> {
    haystack
        .to_ascii_lowercase()
        .find(&needle.to_ascii_lowercase())
}

/// The value of attribute `name` in a tag's inside (`a class="x" href='y'`).
fn attribute(tag: &str, name: &str) -> Option<String> {
    let mut rest = tag;
    loop {
        let at = find_ignore_case(rest, name)?;
        let before = rest[..at].chars().next_back();
        let after = rest[at + name.len()..].trim_start();
        rest = &rest[at + name.len()..];
        if !before.is_some_and(char::is_whitespace) {
            continue;
        }
        let Some(value) = after.strip_prefix('=') else {
            continue;
        };
        let value = value.trim_start();
        let found = match value.chars().next() {
            Some(q @ ('"' | '\'')) => value[1..].split(q).next().unwrap_or(""),
            _ => value.split(char::is_whitespace).next().unwrap_or(""),
        };
        return Some(found.trim().to_string());
    }
}

/// An absolute `http://` URL, normalised: scheme and host lowercased, the default
/// port dropped, no fragment, an empty path as `/`, `.` and `..` segments resolved.
/// Two spellings of the same page compare equal as strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    host: String,
    port: u16,
    /// Path and query, starting with `/`.
    path: String,
}

impl HttpUrl {
    pub fn parse(text: &str) -> Result<HttpUrl, String> {
        let text = text.trim();
        let text = text.split('#').next().unwrap_or("");
        let Some((scheme, rest)) = text.split_once("://") else {
            return Err("not an absolute http:// URL".into());
        };
        if !scheme.eq_ignore_ascii_case("http") {
            return Err(format!("only http:// URLs are crawled, not {scheme}://"));
        }
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(split);
        if authority.contains('@') {
            return Err("URLs with credentials are not crawled".into());
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !port.contains(']') => {
                let port = if port.is_empty() {
                    80
                } else {
                    port.parse()
                        .map_err(|_| format!("{port:?} is not a port number"))?
                };
                (host, port)
            }
            _ => (authority, 80),
        };
        let valid = |c: char| c.is_ascii_alphanumeric() || "-._[]:".contains(c);
        if host.is_empty() || !host.chars().all(valid) {
            return Err(format!("{host:?} is not a host name"));
        }
        let (path, query) = match path.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (path, None),
        };
        let mut path = remove_dot_segments(path);
        if let Some(query) = query {
            path.push('?');
            path.push_str(query);
        }
        Ok(HttpUrl {
            host: host.to_ascii_lowercase(),
            port,
            path,
        })
    }

    /// `host:port`: what "the same host" means for `--any-host`.
    pub fn origin(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// Resolves a link found on this page (RFC 3986 §5.2, for the forms pages use).
    /// `None` for links that go nowhere a crawl goes: other schemes, bad URLs, and
    /// links to a place in this same page.
    pub fn join(&self, href: &str) -> Option<HttpUrl> {
        let href = href.trim();
        if href.is_empty() || href.starts_with('#') {
            return None;
        }
        let scheme_end = href.find(':');
        let first_delimiter = href.find(['/', '?', '#']).unwrap_or(href.len());
        let absolute = match scheme_end {
            Some(colon) if colon < first_delimiter => href.to_string(),
            _ if href.starts_with("//") => format!("http:{href}"),
            _ if href.starts_with('/') => format!("http://{}{href}", self.authority()),
            _ if href.starts_with('?') => {
                let path = self.path.split('?').next().unwrap_or("/");
                format!("http://{}{path}{href}", self.authority())
            }
            _ => {
                let path = self.path.split('?').next().unwrap_or("/");
                let folder = &path[..path.rfind('/').map_or(0, |i| i + 1)];
                format!("http://{}{folder}{href}", self.authority())
            }
        };
        HttpUrl::parse(&absolute).ok()
    }

    fn authority(&self) -> String {
        if self.port == 80 {
            self.host.clone()
        } else {
            self.origin()
        }
    }
}

impl std::fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}{}", self.authority(), self.path)
    }
}

/// RFC 3986 §5.2.4, on a path without its query; the result starts with `/`.
fn remove_dot_segments(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    let parts: Vec<&str> = path.split('/').skip(1).collect();
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        match *part {
            "." if last => segments.push(""),
            "." => {}
            ".." => {
                segments.pop();
                if last {
                    segments.push("");
                }
            }
            part => segments.push(part),
        }
    }
    format!("/{}", segments.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str) -> HttpUrl {
        HttpUrl::parse(text).unwrap()
    }

    #[test]
    fn urls_normalise_to_one_spelling() {
        for same in [
            "http://Example.com",
            "HTTP://example.com:80/",
            "http://example.com/#top",
            "http://example.com/a/../",
            "http://example.com/./",
        ] {
            assert_eq!(url(same).to_string(), "http://example.com/", "{same}");
        }
        assert_eq!(
            url("http://127.0.0.1:8080/a/b/../c?q=1#f").to_string(),
            "http://127.0.0.1:8080/a/c?q=1"
        );
        assert_eq!(url("http://h:81/").origin(), "h:81");
        assert!(HttpUrl::parse("https://example.com/").is_err());
        assert!(HttpUrl::parse("not a url").is_err());
        assert!(HttpUrl::parse("http://user:pw@host/").is_err());
        assert!(HttpUrl::parse("http://host:99999/").is_err());
        assert!(HttpUrl::parse("http:///path").is_err());
    }

    #[test]
    fn links_resolve_against_the_page() {
        let page = url("http://h:8000/page/3.html?x=1");
        let join = |href: &str| page.join(href).map(|u| u.to_string());
        assert_eq!(join("4.html").unwrap(), "http://h:8000/page/4.html");
        assert_eq!(join("../page/5.html").unwrap(), "http://h:8000/page/5.html");
        assert_eq!(join("/").unwrap(), "http://h:8000/");
        assert_eq!(join("../").unwrap(), "http://h:8000/");
        assert_eq!(join("/a#b").unwrap(), "http://h:8000/a");
        assert_eq!(join("?y=2").unwrap(), "http://h:8000/page/3.html?y=2");
        assert_eq!(join("//other/x").unwrap(), "http://other/x");
        assert_eq!(join("http://other:9/").unwrap(), "http://other:9/");
        assert_eq!(join("#top"), None);
        assert_eq!(join("mailto:a@b.c"), None);
        assert_eq!(join("https://h/"), None);
        assert_eq!(join("javascript:void(0)"), None);
        let root = url("http://h/");
        assert_eq!(
            root.join("./page/1.html").unwrap().to_string(),
            "http://h/page/1.html"
        );
    }

    #[test]
    fn the_frontier_stays_on_the_seed_hosts_and_within_max_pages() {
        let args = Args {
            urls: None,
            max_pages: 4,
            timeout: Duration::from_secs(1),
            any_host: false,
            delay_ms: 0,
            site_pages: 1,
            site_seed: 1,
            site_broken: 0,
        };
        let seeds = vec!["http://a:81/".to_string(), "bad".to_string()];
        let mut crawl = Crawl::with_seeds(seeds.clone(), &args, None);
        let page: Output = serde_json::from_value(json!({"url": "http://a:81/", "status": 200,
            "words": 2, "counts": {"x": 2}, "links": ["http://a:81/", "http://a:82/",
            "http://b:81/", "http://A:81/p#f", "http://a:81/q", "http://a:81/r"]}))
        .unwrap();
        crawl.reduce(0, page.clone()).unwrap();
        let queued: Vec<&str> = crawl.frontier.iter().map(String::as_str).collect();
        assert_eq!(
            queued,
            ["http://a:81/", "bad", "http://a:81/p", "http://a:81/q"]
        );
        let mut anywhere = Crawl::with_seeds(
            seeds,
            &Args {
                any_host: true,
                max_pages: 9,
                ..args
            },
            None,
        );
        anywhere.reduce(0, page.clone()).unwrap();
        assert_eq!(anywhere.frontier.len(), 7);
        assert_eq!(anywhere.words, 2);
        // A page whose counts would overflow the totals changes nothing.
        let mut greedy = page;
        greedy.counts.insert("x".into(), u64::MAX);
        assert!(anywhere.reduce(1, greedy).is_err());
        assert_eq!((anywhere.words, anywhere.counts["x"]), (2, 2));
    }

    #[test]
    fn visible_text_and_links() {
        let html = r#"<!DOCTYPE html><html><head><title>The Title</title>
            <style>p { color: red }</style><script type="x">var no = "words";</script></head>
            <body><!-- not <b>shown</b> --><p>Fish&amp;chips, fish!</p>
            <a class='x' href="/one">One</a><A HREF=two.html>two</A><a name="n">three</a>
            <img alt="a > b" src="x.png">four</body></html>"#;
        let parsed = Html::parse(html);
        let words: Vec<String> = count_words(&parsed.visible).collect();
        assert_eq!(
            words,
            ["the", "title", "fish", "chips", "fish", "one", "two", "three", "four"]
        );
        assert_eq!(parsed.hrefs, ["/one", "two.html"]);
        assert_eq!(count_words(&Html::parse("a<b>c").visible).count(), 2);
    }
}
